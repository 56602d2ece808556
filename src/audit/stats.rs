//! [`AuditStats`]: the emitter's counters, readable while it runs.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The counters the emitter and its sink update.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) sent: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) lost: AtomicU64,
    pub(crate) sink_errors: AtomicU64,
    pub(crate) persisted: AtomicU64,
    pub(crate) drained: AtomicU64,
    pub(crate) queued: AtomicU64,
    pub(crate) spill_files: AtomicU64,
    pub(crate) spill_bytes: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> AuditCounts {
        AuditCounts {
            sent: self.sent.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            lost: self.lost.load(Relaxed),
            sink_errors: self.sink_errors.load(Relaxed),
            persisted: self.persisted.load(Relaxed),
            drained: self.drained.load(Relaxed),
            queue_depth: self.queued.load(Relaxed),
            spill_files: self.spill_files.load(Relaxed),
            spill_bytes: self.spill_bytes.load(Relaxed),
        }
    }
}

/// A handle on an [`AuditEmitter`](super::AuditEmitter)'s counters: take it with
/// [`AuditEmitter::stats`](super::AuditEmitter::stats) before handing the emitter
/// to the builder. Cheap to clone; reading is a few atomic loads.
///
/// The counters are Caracal's audit metrics (`audit_dropped`, `audit_sink_errors`,
/// `audit_queue_depth`, `audit_persisted`, `audit_drained`); export them under your
/// own metric names.
#[derive(Clone, Default)]
pub struct AuditStats(pub(crate) Arc<Counters>);

impl fmt::Debug for AuditStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.snapshot(), f)
    }
}

impl AuditStats {
    /// The counters now.
    pub fn snapshot(&self) -> AuditCounts {
        self.0.snapshot()
    }
}

/// A snapshot of [`AuditStats`]. Counts are totals since the emitter was made,
/// except `queue_depth`, `spill_files` and `spill_bytes`, which are current.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditCounts {
    /// Events written to the stream (live and drained).
    pub sent: u64,
    /// Events dropped on the request path because the queue was full.
    pub dropped: u64,
    /// Events that reached neither Redis nor the replay directory: no directory is
    /// set, the spill cap was reached, a spill file could not be written, or a
    /// spilled line was unreadable when drained. Caracal's `audit_dropped` is
    /// `dropped + lost`.
    pub lost: u64,
    /// Attempts to reach Redis that failed (a connection that could not be made,
    /// or a batch of `XADD`s that failed or timed out).
    pub sink_errors: u64,
    /// Events written to the replay directory because Redis could not take them.
    pub persisted: u64,
    /// Events read back from the replay directory and written to the stream.
    pub drained: u64,
    /// Events waiting in the queue.
    pub queue_depth: u64,
    /// Replay files waiting in the replay directory, as last seen by the emitter.
    pub spill_files: u64,
    /// Bytes of those files.
    pub spill_bytes: u64,
}

impl AuditCounts {
    /// Events lost for good: `dropped + lost`.
    pub fn evidence_lost(&self) -> u64 {
        self.dropped.saturating_add(self.lost)
    }
}
