//! Single-use mandates: a guard that accepts each (`iss`, `jti`) once until expiry.
//!
//! The guard keys on the issuer and token id, never on the token bytes: an ECDSA
//! signature can be re-encoded (`s` → `n − s`) into a different token that still
//! verifies, and it must still count as the same mandate.
//!
//! ```
//! use caracal_verifier::replay::{MemoryReplayGuard, ReplayGuard};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let guard = MemoryReplayGuard::new(100_000);
//! let exp = u64::MAX / 2;
//! assert!(guard.first_use("https://sts.example.com", "jti-1", exp).await.unwrap());
//! assert!(!guard.first_use("https://sts.example.com", "jti-1", exp).await.unwrap());
//! # }
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::clock::{Clock, SharedClock, SystemClock};
use crate::future::BoxFuture;

/// The default capacity of the in-memory replay guard (1,000,000 live mandates).
pub const DEFAULT_REPLAY_CAPACITY: u64 = 1_000_000;

/// The guard's store could not answer; single-use routes then fail closed (503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("replay guard unavailable: {0}")]
pub struct ReplayError(pub(crate) String);

impl ReplayError {
    /// An error with a short description.
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

/// Records mandate uses.
pub trait ReplayGuard: Send + Sync + fmt::Debug + 'static {
    /// Record a use of (`issuer`, `jti`), remembered until `until` (seconds since the
    /// Unix epoch). Returns `true` the first time and `false` on every later call.
    ///
    /// A guard that cannot remember a new use (its store is down, or full) must
    /// return an error, never `true`: the verifier then answers 503.
    fn first_use<'a>(
        &'a self,
        issuer: &'a str,
        jti: &'a str,
        until: u64,
    ) -> BoxFuture<'a, Result<bool, ReplayError>>;

    /// How full the guard is, for [`Verifier::status`](crate::Verifier::status).
    /// Must be cheap and must not wait on the network. Default `None` (unknown):
    /// right for a shared store, whose size would cost a round trip.
    fn usage(&self) -> Option<ReplayUsage> {
        None
    }
}

/// How full a [`ReplayGuard`] is: the uses it holds and the most it can hold.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayUsage {
    /// Recorded uses, including expired ones not yet dropped.
    pub recorded: u64,
    /// The most live uses the guard records, if it has a bound.
    pub capacity: Option<u64>,
}

impl ReplayUsage {
    /// A guard holding `recorded` uses, of at most `capacity` if it has a bound.
    pub fn new(recorded: u64, capacity: Option<u64>) -> Self {
        Self { recorded, capacity }
    }
}

const SHARDS: usize = 16;
/// Expired entries dropped per shard visit, at most. More than the one entry an
/// insert adds, so a backlog of expired entries drains while no call pays for all
/// of it.
const EXPIRE_BATCH: usize = 4;

/// An in-memory guard, for a single replica.
///
/// A recorded (`iss`, `jti`) is never forgotten before its `until` (the mandate's
/// `exp` plus the verifier's leeway), as read from the guard's clock: there is no
/// eviction of live entries. When `capacity` live mandates are recorded, a new one
/// is refused with a [`ReplayError`] (the verifier answers 503
/// `revocation_unavailable` with `Retry-After`) until older ones expire. Expired
/// entries are dropped a few at a time by later calls, so no call scans the store.
///
/// Memory grows with use up to about 200 bytes per live mandate (more for long
/// issuer or `jti` values): the default capacity of 1,000,000 can hold about
/// 200 MB. Size it above (single-use requests per second × mandate lifetime).
///
/// Each replica has its own guard, so a mandate can be used once **per replica**;
/// share uses across replicas with a shared store (`RedisReplayGuard`, feature
/// `redis`). Clones share one store.
#[derive(Clone)]
pub struct MemoryReplayGuard {
    store: Arc<Store>,
}

struct Store {
    shards: Box<[Mutex<Shard>]>,
    /// Entries in all shards (live, or expired and not yet dropped).
    len: AtomicUsize,
    capacity: usize,
    hasher: foldhash::fast::RandomState,
    clock: SharedClock,
}

/// One shard: the recorded uses, and a min-heap of their expiry times.
///
/// Every map entry has one heap entry with the same `until`. A heap entry whose
/// `until` no longer matches the map (its key expired and was recorded again) is
/// stale and is dropped when it reaches the top.
#[derive(Default)]
struct Shard {
    until: HashMap<Arc<str>, u64>,
    queue: BinaryHeap<Reverse<(u64, Arc<str>)>>,
}

impl Shard {
    /// Drop up to `max` entries whose time is up (`until <= now`); returns how many
    /// entries left the map.
    fn expire(&mut self, now: u64, max: usize) -> usize {
        let mut dropped = 0;
        while dropped < max {
            match self.queue.peek() {
                Some(Reverse((until, _))) if *until <= now => {}
                _ => break,
            }
            let Some(Reverse((until, key))) = self.queue.pop() else {
                break;
            };
            if self.until.get(&key) == Some(&until) {
                self.until.remove(&key);
                dropped += 1;
            }
        }
        dropped
    }
}

impl fmt::Debug for MemoryReplayGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryReplayGuard")
            .field("entries", &self.store.len.load(Ordering::Relaxed))
            .field("capacity", &self.store.capacity)
            .finish()
    }
}

/// The outcome of one attempt on a shard.
enum Attempt {
    Decided(bool),
    Full,
}

impl MemoryReplayGuard {
    /// A guard holding up to `capacity` live mandates, on the system clock. A
    /// capacity of 0 refuses every use.
    pub fn new(capacity: u64) -> Self {
        Self::with_clock(capacity, SystemClock)
    }

    /// A guard with an injected clock: entries expire by this clock only.
    pub fn with_clock(capacity: u64, clock: impl Clock) -> Self {
        Self::with_clock_shared(capacity, Arc::new(clock))
    }

    pub(crate) fn with_clock_shared(capacity: u64, clock: SharedClock) -> Self {
        Self {
            store: Arc::new(Store {
                shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
                len: AtomicUsize::new(0),
                capacity: usize::try_from(capacity).unwrap_or(usize::MAX),
                hasher: foldhash::fast::RandomState::default(),
                clock,
            }),
        }
    }

    /// Recorded uses, including expired ones not yet dropped.
    pub fn len(&self) -> usize {
        self.store.len.load(Ordering::Relaxed)
    }

    /// Whether no use is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most live mandates this guard records.
    pub fn capacity(&self) -> u64 {
        self.store.capacity as u64
    }

    fn record(&self, issuer: &str, jti: &str, until: u64) -> Result<bool, ReplayError> {
        let store = &*self.store;
        let now = store.clock.now().as_secs();
        if until <= now {
            // Nothing to remember: the mandate's time is already up by this clock.
            return Ok(true);
        }
        // Length-prefixed, so no (issuer, jti) pair can spell another's key.
        let key = format!("{}:{issuer}{jti}", issuer.len());
        let home = (store.hasher.hash_one(key.as_str()) as usize) % SHARDS;
        for _ in 0..2 {
            match store.attempt(home, &key, until, now) {
                Attempt::Decided(first) => return Ok(first),
                // Full: drop expired entries from every shard, one lock at a time,
                // then try once more.
                Attempt::Full => store.reclaim(now),
            }
        }
        Err(ReplayError::new(format!(
            "in-memory replay guard is full ({} live mandates)",
            store.capacity
        )))
    }
}

impl Store {
    fn lock(&self, i: usize) -> MutexGuard<'_, Shard> {
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn expire(&self, shard: &mut Shard, now: u64, max: usize) {
        let dropped = shard.expire(now, max);
        if dropped > 0 {
            self.len.fetch_sub(dropped, Ordering::Relaxed);
        }
    }

    fn attempt(&self, home: usize, key: &str, until: u64, now: u64) -> Attempt {
        let mut shard = self.lock(home);
        self.expire(&mut shard, now, EXPIRE_BATCH);
        if let Some((k, u)) = shard.until.get_key_value(key) {
            if *u > now {
                return Attempt::Decided(false);
            }
            // Expired but not yet dropped: a fresh use of the same slot.
            let k = Arc::clone(k);
            shard.until.insert(Arc::clone(&k), until);
            shard.queue.push(Reverse((until, k)));
            return Attempt::Decided(true);
        }
        let reserved = self
            .len
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .is_ok();
        if !reserved {
            return Attempt::Full;
        }
        let k: Arc<str> = Arc::from(key);
        shard.until.insert(Arc::clone(&k), until);
        shard.queue.push(Reverse((until, k)));
        Attempt::Decided(true)
    }

    fn reclaim(&self, now: u64) {
        for i in 0..SHARDS {
            let mut shard = self.lock(i);
            self.expire(&mut shard, now, EXPIRE_BATCH);
        }
    }
}

impl ReplayGuard for MemoryReplayGuard {
    fn first_use<'a>(
        &'a self,
        issuer: &'a str,
        jti: &'a str,
        until: u64,
    ) -> BoxFuture<'a, Result<bool, ReplayError>> {
        let result = self.record(issuer, jti, until);
        Box::pin(async move { result })
    }

    fn usage(&self) -> Option<ReplayUsage> {
        Some(ReplayUsage::new(self.len() as u64, Some(self.capacity())))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::ManualClock;

    const T0: u64 = 1_790_000_000;

    fn guard(capacity: u64) -> (MemoryReplayGuard, ManualClock) {
        let clock = ManualClock::new(Duration::from_secs(T0));
        (
            MemoryReplayGuard::with_clock(capacity, clock.clone()),
            clock,
        )
    }

    fn use_(g: &MemoryReplayGuard, jti: &str, until: u64) -> Result<bool, ReplayError> {
        g.record("https://sts.example.com", jti, until)
    }

    #[test]
    fn full_of_live_entries_refuses_new_keys_and_forgets_none() {
        let (g, clock) = guard(2);
        assert_eq!(use_(&g, "a", T0 + 100), Ok(true));
        assert_eq!(use_(&g, "b", T0 + 200), Ok(true));
        for _ in 0..3 {
            assert!(
                use_(&g, "c", T0 + 100).is_err(),
                "full: a new key is refused"
            );
            assert_eq!(use_(&g, "a", T0 + 100), Ok(false), "a live key stays");
            assert_eq!(use_(&g, "b", T0 + 200), Ok(false), "a live key stays");
        }
        clock.advance(Duration::from_secs(100));
        assert_eq!(
            use_(&g, "c", T0 + 300),
            Ok(true),
            "a expired, its slot is free"
        );
        assert_eq!(use_(&g, "b", T0 + 200), Ok(false));
        assert_eq!(use_(&g, "c", T0 + 300), Ok(false));
        assert!(use_(&g, "d", T0 + 300).is_err());
        assert_eq!(g.len(), 2);
    }

    #[test]
    fn expiry_follows_the_injected_clock_only() {
        let (g, clock) = guard(10);
        assert_eq!(use_(&g, "a", T0 + 10), Ok(true));
        clock.advance(Duration::from_secs(9));
        assert_eq!(use_(&g, "a", T0 + 10), Ok(false), "one second left");
        clock.advance(Duration::from_secs(1));
        assert_eq!(use_(&g, "a", T0 + 20), Ok(true), "time is up: a fresh use");
        assert_eq!(use_(&g, "a", T0 + 20), Ok(false));
        clock.advance(Duration::from_secs(9));
        assert_eq!(
            use_(&g, "a", T0 + 20),
            Ok(false),
            "the stale expiry of the first use does not drop the second"
        );
    }

    #[test]
    fn keys_are_issuer_and_jti_without_ambiguity() {
        let (g, _) = guard(10);
        assert_eq!(g.record("ab", "c", T0 + 10), Ok(true));
        assert_eq!(g.record("a", "bc", T0 + 10), Ok(true));
        assert_eq!(g.record("ab", "c", T0 + 10), Ok(false));
        assert_eq!(g.record("other", "c", T0 + 10), Ok(true));
    }

    #[test]
    fn expired_entries_drain_without_a_full_scan() {
        let (g, clock) = guard(10_000);
        for i in 0..10_000 {
            assert_eq!(use_(&g, &format!("old-{i}"), T0 + 10), Ok(true));
        }
        assert!(use_(&g, "new", T0 + 100).is_err());
        clock.advance(Duration::from_secs(10));
        // Each call drops a bounded batch; the backlog drains as calls come.
        assert_eq!(use_(&g, "new", T0 + 100), Ok(true));
        assert!(g.len() > 9_000, "no call dropped everything: {}", g.len());
        for i in 0..5_000 {
            assert_eq!(use_(&g, &format!("next-{i}"), T0 + 100), Ok(true));
        }
        assert!(g.len() < 10_000, "{}", g.len());
        assert_eq!(use_(&g, "new", T0 + 100), Ok(false));
    }

    #[test]
    fn racing_uses_admit_one_and_never_exceed_capacity() {
        let (g, _) = guard(100);
        let firsts = AtomicUsize::new(0);
        let accepted = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..8 {
                let (g, firsts, accepted) = (&g, &firsts, &accepted);
                s.spawn(move || {
                    for _ in 0..50 {
                        if use_(g, "same", T0 + 100) == Ok(true) {
                            firsts.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    for i in 0..50 {
                        if use_(g, &format!("t{t}-{i}"), T0 + 100) == Ok(true) {
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(firsts.load(Ordering::Relaxed), 1);
        assert_eq!(accepted.load(Ordering::Relaxed), 99, "100 slots, one taken");
        assert_eq!(g.len(), 100);
    }

    #[test]
    fn zero_capacity_refuses_every_use() {
        let (g, _) = guard(0);
        assert!(use_(&g, "a", T0 + 10).is_err());
    }
}
