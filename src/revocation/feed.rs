//! Health of the revocation feed that keeps a [`RevocationSet`](super::RevocationSet) current.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::SharedClock;
use crate::error::AuthError;

/// The default maximum feed staleness (30 s).
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(30);

/// Why a feed dropped a message: the dropped-by-reason counts of [`FeedStatus`].
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Unsigned, while a stream key is configured.
    Unsigned,
    /// The `_sig` does not verify.
    BadSignature,
    /// Over the entry bounds (fields, bytes).
    Oversized,
    /// Anything else: malformed, duplicated fields, no anchor, no zone, a bad epoch.
    Malformed,
}

impl DropReason {
    /// The label used in logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::Unsigned => "unsigned",
            DropReason::BadSignature => "bad_signature",
            DropReason::Oversized => "oversized",
            DropReason::Malformed => "malformed",
        }
    }

    const fn index(self) -> usize {
        match self {
            DropReason::Unsigned => 0,
            DropReason::BadSignature => 1,
            DropReason::Oversized => 2,
            DropReason::Malformed => 3,
        }
    }
}

/// The most propagation delays kept between two reads by a metrics publisher.
const MAX_LAGS: usize = 4096;

/// Shared health of a revocation feed. The feed task updates it; the verifier reads it
/// on every request and fails closed (503 `revocation_unavailable`) while it is stale.
pub(crate) struct FeedHealth {
    clock: SharedClock,
    max_staleness: Duration,
    fail_open: bool,
    connected: AtomicBool,
    caught_up: AtomicBool,
    /// Set when the source was shut down or dropped; never cleared.
    closed: AtomicBool,
    last_ok_ms: AtomicU64,
    last_event_ms: AtomicU64,
    applied: AtomicU64,
    dropped: AtomicU64,
    gaps: AtomicU64,
    resets: AtomicU64,
    /// Milliseconds between an event's stream id time and when it was applied.
    lag_ms: AtomicU64,
    /// Drops by [`DropReason`].
    dropped_by: [AtomicU64; 4],
    /// Propagation delays (ms) of live events not yet read by a publisher.
    lags: std::sync::Mutex<Vec<u64>>,
}

impl fmt::Debug for FeedHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.status(), f)
    }
}

/// A snapshot of the revocation feed's health, for readiness probes and metrics.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedStatus {
    /// Connected, caught up, and read successfully within the maximum staleness.
    pub fresh: bool,
    /// Whether the consumer holds a live connection.
    pub connected: bool,
    /// Whether the retained history was replayed.
    pub caught_up: bool,
    /// Time since the last successful read.
    pub since_last_read: Option<Duration>,
    /// Time since the last applied event.
    pub since_last_event: Option<Duration>,
    /// Lag of the last applied event behind its publication (stream id time).
    pub lag: Duration,
    /// Events applied.
    pub applied: u64,
    /// Messages dropped (unsigned, forged, malformed, over the entry bounds).
    pub dropped: u64,
    /// Times stream history was deleted (trimmed, `XDEL`, emptied) before the feed
    /// read it. Each gap may have lost revocations; the feed failed closed until it
    /// had read the retained history again.
    pub gaps: u64,
    /// Times a stream was found deleted, recreated or with ids gone backwards (or the
    /// server restarted), and was read again from the catch-up start.
    pub resets: u64,
    /// Of `dropped`: unsigned messages while a key is configured.
    pub unsigned: u64,
    /// Of `dropped`: messages whose `_sig` does not verify.
    pub invalid_signatures: u64,
    /// Of `dropped`: messages over the entry bounds.
    pub oversized: u64,
    /// Of `dropped`: otherwise malformed messages.
    pub malformed: u64,
}

impl FeedHealth {
    pub(crate) fn new(clock: SharedClock, max_staleness: Duration, fail_open: bool) -> Arc<Self> {
        Arc::new(Self {
            clock,
            max_staleness,
            fail_open,
            connected: AtomicBool::new(false),
            caught_up: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            last_ok_ms: AtomicU64::new(0),
            last_event_ms: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            lag_ms: AtomicU64::new(0),
            dropped_by: std::array::from_fn(|_| AtomicU64::new(0)),
            lags: std::sync::Mutex::new(Vec::new()),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.now().as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn mark_read_ok(&self) {
        self.connected.store(true, Ordering::Release);
        self.last_ok_ms.store(self.now_ms(), Ordering::Release);
    }

    pub(crate) fn mark_disconnected(&self) {
        self.connected.store(false, Ordering::Release);
    }

    /// The source was shut down or dropped: the set is stale for good, whatever
    /// the source's leftover work still reports.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.connected.store(false, Ordering::Release);
    }

    /// Whether the feed has read everything retained since its position. A feed
    /// behind (after a reset or a gap) is not fresh.
    pub(crate) fn set_caught_up(&self, caught_up: bool) {
        self.caught_up.store(caught_up, Ordering::Release);
    }

    pub(crate) fn record_gap(&self) {
        self.gaps.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_reset(&self) {
        self.resets.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_applied(&self, published_ms: Option<u64>) {
        let now = self.now_ms();
        self.applied.fetch_add(1, Ordering::Relaxed);
        self.last_event_ms.store(now, Ordering::Release);
        if let Some(p) = published_ms {
            let lag = now.saturating_sub(p);
            self.lag_ms.store(lag, Ordering::Relaxed);
            let mut lags = self.lags.lock().unwrap_or_else(|e| e.into_inner());
            if lags.len() < MAX_LAGS {
                lags.push(lag);
            }
        }
    }

    pub(crate) fn record_dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_dropped_for(&self, reason: DropReason) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.dropped_by[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The propagation delays (ms) recorded since the last call, at most 4,096.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn drain_lags(&self) -> Vec<u64> {
        std::mem::take(&mut *self.lags.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn is_fresh(&self) -> bool {
        let last = self.last_ok_ms.load(Ordering::Acquire);
        self.connected.load(Ordering::Acquire)
            && !self.closed.load(Ordering::Acquire)
            && self.caught_up.load(Ordering::Acquire)
            && last != 0
            && self.now_ms().saturating_sub(last)
                <= u64::try_from(self.max_staleness.as_millis()).unwrap_or(u64::MAX)
    }

    /// The per-request gate.
    pub(crate) fn check(&self) -> Result<(), AuthError> {
        if self.is_fresh() {
            return Ok(());
        }
        if self.fail_open {
            tracing::warn!("revocation feed is stale; failing open as configured");
            return Ok(());
        }
        Err(AuthError::RevocationUnavailable)
    }

    pub(crate) fn status(&self) -> FeedStatus {
        let now = self.now_ms();
        let since = |ms: u64| (ms != 0).then(|| Duration::from_millis(now.saturating_sub(ms)));
        FeedStatus {
            fresh: self.is_fresh(),
            connected: self.connected.load(Ordering::Acquire)
                && !self.closed.load(Ordering::Acquire),
            caught_up: self.caught_up.load(Ordering::Acquire),
            since_last_read: since(self.last_ok_ms.load(Ordering::Acquire)),
            since_last_event: since(self.last_event_ms.load(Ordering::Acquire)),
            lag: Duration::from_millis(self.lag_ms.load(Ordering::Relaxed)),
            applied: self.applied.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            gaps: self.gaps.load(Ordering::Relaxed),
            resets: self.resets.load(Ordering::Relaxed),
            unsigned: self.dropped_by[0].load(Ordering::Relaxed),
            invalid_signatures: self.dropped_by[1].load(Ordering::Relaxed),
            oversized: self.dropped_by[2].load(Ordering::Relaxed),
            malformed: self.dropped_by[3].load(Ordering::Relaxed),
        }
    }
}
