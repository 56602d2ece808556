//! The per-zone keyset cache: when to use, refresh, wait for or refuse the keys
//! (TTL, maximum staleness, cooldown, single flight), and how a fetched keyset
//! replaces the last one.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::fetch::JwksFetcher;
use crate::alg::Algorithm;
use crate::clock::SharedClock;
use crate::error::{AuthError, InvalidReason};
use crate::jwk::{KeyMap, VerifyKey, parse_jwks};

/// Cache settings, set through [`VerifierBuilder`](crate::VerifierBuilder).
#[derive(Debug, Clone)]
pub(crate) struct KeyCacheConfig {
    pub(crate) ttl: Duration,
    pub(crate) max_staleness: Duration,
    pub(crate) cooldown: Duration,
    pub(crate) fetch_timeout: Duration,
    pub(crate) max_bytes: usize,
    pub(crate) algorithms: Vec<Algorithm>,
}

struct KeySet {
    keys: KeyMap,
    fetched_at_ms: u64,
    /// Sequence number of the attempt that produced it.
    seq: u64,
}

#[derive(Default)]
struct Attempts {
    /// Attempts finished so far.
    done: u64,
    /// When the last attempt started (ms since epoch, by the verifier clock).
    last_start_ms: Option<u64>,
    /// The outcome of the last attempt.
    last_error: Option<&'static str>,
}

/// The value of [`KeyCache::current_fetched_ms`] before the first keyset.
const NO_KEYS: u64 = u64::MAX;

/// Per issuer-and-zone keyset cache.
pub(crate) struct KeyCache {
    url: String,
    fetcher: Arc<dyn JwksFetcher>,
    cfg: KeyCacheConfig,
    clock: SharedClock,
    current: RwLock<Option<Arc<KeySet>>>,
    /// `fetched_at_ms` of `current`, or [`NO_KEYS`]: lets a cache hit check freshness
    /// with one atomic load instead of the lock every worker shares.
    current_fetched_ms: AtomicU64,
    attempts: Mutex<Attempts>,
    /// Serialises fetches: the single flight.
    flight: tokio::sync::Mutex<()>,
    refreshing: AtomicBool,
    fetch_count: AtomicU64,
    /// Fetch attempts that ended without installing a keyset.
    failures: AtomicU64,
    /// Attempts finished so far, published once each attempt's outcome is in place
    /// (its keyset installed, or its error recorded): the "refresh completed" signal.
    finished: tokio::sync::watch::Sender<u64>,
}

impl fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyCache")
            .field("url", &self.url)
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

/// Why a refresh produced no keyset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefreshError {
    Cooldown,
    Failed(&'static str),
}

impl KeyCache {
    pub(crate) fn new(
        url: String,
        fetcher: Arc<dyn JwksFetcher>,
        cfg: KeyCacheConfig,
        clock: SharedClock,
    ) -> Self {
        Self {
            url,
            fetcher,
            cfg,
            clock,
            current: RwLock::new(None),
            current_fetched_ms: AtomicU64::new(NO_KEYS),
            attempts: Mutex::new(Attempts::default()),
            flight: tokio::sync::Mutex::new(()),
            refreshing: AtomicBool::new(false),
            fetch_count: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            finished: tokio::sync::watch::Sender::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.now().as_millis()).unwrap_or(u64::MAX)
    }

    fn snapshot(&self) -> Option<Arc<KeySet>> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn attempts(&self) -> std::sync::MutexGuard<'_, Attempts> {
        self.attempts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keys have been fetched at least once and are within the maximum staleness.
    pub(crate) fn is_ready(&self) -> bool {
        self.snapshot().is_some_and(|s| {
            self.now_ms().saturating_sub(s.fetched_at_ms) <= duration_ms(self.cfg.max_staleness)
        })
    }

    /// How many fetches were started.
    pub(crate) fn fetch_count(&self) -> u64 {
        self.fetch_count.load(Ordering::Relaxed)
    }

    /// How many fetch attempts failed (no keyset installed).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn failure_count(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// How many fetch attempts have finished, whatever their outcome.
    pub(crate) fn finished_count(&self) -> u64 {
        *self.finished.borrow()
    }

    /// Wait until more than `n` fetch attempts have finished.
    pub(crate) async fn finished_since(&self, n: u64) {
        let mut finished = self.finished.subscribe();
        // `self` holds the sender, so the channel cannot close while this waits.
        let _ = finished.wait_for(|&done| done > n).await;
    }

    /// The kids of the keyset held, if any, sorted.
    pub(crate) fn kids(&self) -> Vec<Box<str>> {
        let mut kids: Vec<Box<str>> = self
            .snapshot()
            .map(|s| s.keys.keys().cloned().collect())
            .unwrap_or_default();
        kids.sort_unstable();
        kids
    }

    /// Why the last finished fetch attempt failed (a fixed, short description that
    /// never holds text from the network), or `None` if it succeeded or none has
    /// finished.
    pub(crate) fn last_error(&self) -> Option<&'static str> {
        self.attempts().last_error
    }

    /// The cache settings.
    pub(crate) fn config(&self) -> &KeyCacheConfig {
        &self.cfg
    }

    /// The age of the keyset, if any.
    pub(crate) fn age(&self) -> Option<Duration> {
        self.snapshot()
            .map(|s| Duration::from_millis(self.now_ms().saturating_sub(s.fetched_at_ms)))
    }

    /// Fetch now, ignoring the cooldown (startup warm-up).
    pub(crate) async fn warm_up(&self) -> Result<(), AuthError> {
        self.refresh(true, None)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    /// The hot path of [`key_for`](Self::key_for): the keyset is within its TTL (no
    /// refresh due) and holds `kid`. Looked up under the read lock, without taking a
    /// reference to the keyset.
    fn fresh_key(&self, kid: &str) -> Option<Arc<VerifyKey>> {
        let now = self.now_ms();
        let current = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let set = current.as_ref()?;
        if now.saturating_sub(set.fetched_at_ms) > self.fresh_ms() {
            return None;
        }
        set.keys.get(kid).cloned()
    }

    /// The age below which keys need no refresh and are never too stale.
    fn fresh_ms(&self) -> u64 {
        duration_ms(self.cfg.ttl.min(self.cfg.max_staleness))
    }

    /// Whether the keyset is within its TTL (no refresh due, nothing to refuse):
    /// one atomic load and a clock read, no lock.
    pub(crate) fn within_ttl(&self) -> bool {
        let at = self.current_fetched_ms.load(Ordering::Acquire);
        at != NO_KEYS && self.now_ms().saturating_sub(at) <= self.fresh_ms()
    }

    /// The key for `kid`, fetching or refreshing as the cache state requires.
    pub(crate) async fn key_for(self: &Arc<Self>, kid: &str) -> Result<Arc<VerifyKey>, AuthError> {
        if let Some(key) = self.fresh_key(kid) {
            return Ok(key);
        }
        let set = self.current().await?;
        if let Some(key) = set.keys.get(kid) {
            return Ok(key.clone());
        }
        // Unknown kid: perhaps the issuer rotated. One refetch, unless in cooldown.
        match self.refresh(false, Some(set.seq)).await {
            Ok(set) => set
                .keys
                .get(kid)
                .cloned()
                .ok_or(AuthError::invalid(InvalidReason::UnknownKey)),
            Err(_) => Err(AuthError::invalid(InvalidReason::UnknownKey)),
        }
    }

    /// Check the keyset is usable, for a mandate verified earlier under one of its
    /// keys: the same freshness rules as a lookup, without the lookup. A cached
    /// mandate must not outlive the keyset's maximum staleness, and a stream of cache
    /// hits must still drive the TTL refresh that notices removed keys.
    pub(crate) async fn ensure_fresh(self: &Arc<Self>) -> Result<(), AuthError> {
        if self.within_ttl() {
            return Ok(());
        }
        self.current().await.map(|_| ())
    }

    /// The keyset to use now: fetched if there is none, refreshed in the background
    /// past the TTL, refreshed in line (or refused) past the maximum staleness.
    async fn current(self: &Arc<Self>) -> Result<Arc<KeySet>, AuthError> {
        let now = self.now_ms();
        let set = match self.snapshot() {
            None => self.refresh(false, None).await.map_err(unavailable)?,
            Some(set) => {
                let age = now.saturating_sub(set.fetched_at_ms);
                if age > duration_ms(self.cfg.max_staleness) {
                    // Refreshes kept failing: the keys are too old to trust.
                    self.refresh(false, Some(set.seq))
                        .await
                        .map_err(|e| match e {
                            RefreshError::Cooldown | RefreshError::Failed(_) => {
                                AuthError::StsUnavailable {
                                    reason: "keys too stale",
                                }
                            }
                        })?
                } else {
                    if age > duration_ms(self.cfg.ttl) {
                        self.spawn_refresh(set.seq);
                    }
                    set
                }
            }
        };
        Ok(set)
    }

    fn spawn_refresh(self: &Arc<Self>, observed: u64) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    let _ = this.refresh(false, Some(observed)).await;
                    this.refreshing.store(false, Ordering::Release);
                });
            }
            Err(_) => self.refreshing.store(false, Ordering::Release),
        }
    }

    /// One single-flight refresh. `observed` is the keyset (by sequence number) the
    /// caller found wanting, or `None` when it found none. A keyset installed since
    /// then is returned as is; a caller that queued behind an attempt takes that
    /// attempt's outcome; otherwise, outside the cooldown, it fetches.
    async fn refresh(
        &self,
        ignore_cooldown: bool,
        observed: Option<u64>,
    ) -> Result<Arc<KeySet>, RefreshError> {
        let seen = self.attempts().done;
        let _flight = self.flight.lock().await;
        // Another request may have installed keys between the caller's look and
        // here (even before `seen` was read): use them rather than hit the cooldown.
        if let Some(cur) = self.snapshot()
            && Some(cur.seq) != observed
        {
            return Ok(cur);
        }
        {
            let a = self.attempts();
            if a.done != seen {
                return match (a.last_error, self.snapshot()) {
                    (None, Some(set)) => Ok(set),
                    (Some(e), _) => Err(RefreshError::Failed(e)),
                    (None, None) => Err(RefreshError::Failed("no keys")),
                };
            }
        }
        let start = self.now_ms();
        {
            let mut a = self.attempts();
            if !ignore_cooldown
                && a.last_start_ms
                    .is_some_and(|t| start.saturating_sub(t) < duration_ms(self.cfg.cooldown))
            {
                return Err(RefreshError::Cooldown);
            }
            a.last_start_ms = Some(start);
        }
        self.fetch_count.fetch_add(1, Ordering::Relaxed);
        let outcome = self.fetch_and_parse().await;
        let mut a = self.attempts();
        a.done += 1;
        let seq = a.done;
        let result = match outcome {
            Ok(keys) => {
                a.last_error = None;
                drop(a);
                let set = self.install(keys, start, seq);
                Ok(set)
            }
            Err(e) => {
                a.last_error = Some(e);
                self.failures.fetch_add(1, Ordering::Relaxed);
                drop(a);
                tracing::warn!(url = %self.url, error = e, "jwks refresh failed; keeping last good keys");
                Err(RefreshError::Failed(e))
            }
        };
        // The outcome is in place: a later trigger may start the next background
        // refresh (clearing this before the signal, so a waiter that triggers one at
        // once is not ignored; a queued duplicate finds the keyset fresh and returns).
        self.refreshing.store(false, Ordering::Release);
        // Attempts are serialised by the flight lock, so `seq` only grows; `max` keeps
        // the published count monotonic regardless.
        self.finished.send_if_modified(|done| {
            let grew = seq > *done;
            *done = (*done).max(seq);
            grew
        });
        result
    }

    async fn fetch_and_parse(&self) -> Result<KeyMap, &'static str> {
        // The deadline needs Tokio's timer. Outside a Tokio runtime, fail closed
        // (503) instead of panicking.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err("no tokio runtime to fetch keys on");
        }
        let body = tokio::time::timeout(
            self.cfg.fetch_timeout,
            self.fetcher.fetch(&self.url, self.cfg.max_bytes),
        )
        .await
        .map_err(|_| "fetch deadline exceeded")?
        .map_err(|e| {
            tracing::debug!(error = %e, "jwks fetch error");
            "fetch failed"
        })?;
        if body.len() > self.cfg.max_bytes {
            return Err("body exceeds size cap");
        }
        let (keys, skipped) = parse_jwks(&body, &self.cfg.algorithms).map_err(|e| e.as_str())?;
        if !skipped.is_empty() {
            tracing::warn!(url = %self.url, skipped = ?skipped, "jwks keys skipped as unusable");
        }
        Ok(keys)
    }

    /// Install a fetched keyset unless a newer one is already in place. Keys that
    /// left the set (or changed material under the same kid) are retired, which also
    /// kills cached mandates verified under them.
    fn install(&self, mut keys: KeyMap, started_ms: u64, seq: u64) -> Arc<KeySet> {
        let mut cur = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(old) = cur.as_ref() {
            if old.seq > seq {
                return old.clone();
            }
            for (kid, old_key) in &old.keys {
                match keys.get(kid) {
                    Some(new_key) if new_key.same_material(old_key) => {
                        // Keep the same handle so mandates cached under it stay valid.
                        keys.insert(kid.clone(), old_key.clone());
                    }
                    _ => old_key.retire(),
                }
            }
        }
        let set = Arc::new(KeySet {
            keys,
            fetched_at_ms: started_ms,
            seq,
        });
        *cur = Some(set.clone());
        self.current_fetched_ms
            .store(started_ms.min(NO_KEYS - 1), Ordering::Release);
        set
    }
}

fn unavailable(e: RefreshError) -> AuthError {
    AuthError::StsUnavailable {
        reason: match e {
            RefreshError::Cooldown => "no keys yet; retrying after cooldown",
            RefreshError::Failed(_) => "keyset fetch failed",
        },
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
