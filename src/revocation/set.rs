//! The in-process revocation mirror: revoked anchors with a TTL, and per-zone epochs.
//!
//! Reads take no lock and write no shared memory: a check loads the current probe
//! table and the epoch map through `arc-swap` (whose loads write only to the reading
//! thread's own slot) and probes the table with atomic loads. Writers serialise on
//! a mutex, update the table in place, and publish a new table only when it must
//! grow or shed expired slots. Every write is in the table before `revoke()`
//! returns, so a check that starts after it sees it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::clock::{Clock, SharedClock, SystemClock};
use crate::error::{AnchorKind, AuthError};
use crate::revocation::event::RevocationEvent;
use crate::revocation::feed::{FeedHealth, FeedStatus};

/// Anchor ids are stored as 64-bit keyed fingerprints. The key is random per process,
/// so ids cannot be chosen to collide; a collision could only over-revoke.
fn anchor_key() -> &'static foldhash::quality::RandomState {
    static KEY: OnceLock<foldhash::quality::RandomState> = OnceLock::new();
    KEY.get_or_init(foldhash::quality::RandomState::default)
}

/// Never [`EMPTY`]: the one fingerprint in 2^64 that would be is folded onto 1 (a
/// collision, which could only over-revoke).
pub(crate) fn fingerprint(id: &str) -> u64 {
    anchor_key().hash_one(id).max(1)
}

/// One anchor of a mandate, fingerprinted once when the token is first verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Anchor {
    pub(crate) fp: u64,
    pub(crate) kind: AnchorKind,
}

/// The fingerprint of a slot never used.
const EMPTY: u64 = 0;

/// The `until` of a slot whose anchor is not held (expired and removed).
const GONE: u32 = 0;

/// Fewest slots in a table.
const MIN_SLOTS: usize = 64;

/// One slot of the probe table. Its fingerprint is written once, from [`EMPTY`];
/// only its `until` changes afterwards, and only under the writer lock.
struct Slot {
    fp: AtomicU64,
    /// Expiry, seconds since the Unix epoch; [`GONE`] once removed.
    until: AtomicU32,
}

/// An open-addressing table of fingerprints, linear probing, read without a lock.
///
/// Slots are never emptied or moved while the table is published, so a probe
/// cannot miss an anchor by racing a writer; removed anchors keep their slot
/// (`until` = [`GONE`]) until the writer publishes a compacted table.
struct Table {
    slots: Box<[Slot]>,
    mask: usize,
}

impl Table {
    fn new(slots: usize) -> Table {
        let n = slots.max(MIN_SLOTS).next_power_of_two();
        Table {
            slots: (0..n)
                .map(|_| Slot {
                    fp: AtomicU64::new(EMPTY),
                    until: AtomicU32::new(GONE),
                })
                .collect(),
            mask: n - 1,
        }
    }

    /// The slot holding `fp`, or the empty slot where it would go. The writer keeps
    /// a quarter of the slots empty, so the probe ends.
    fn probe(&self, fp: u64) -> (&Slot, bool) {
        let mut i = (fp as usize) & self.mask;
        loop {
            let slot = &self.slots[i];
            match slot.fp.load(Ordering::Acquire) {
                f if f == fp => return (slot, true),
                EMPTY => return (slot, false),
                _ => i = (i + 1) & self.mask,
            }
        }
    }

    /// When `fp`'s revocation expires, if it is held.
    fn until(&self, fp: u64) -> Option<u32> {
        match self.probe(fp) {
            (slot, true) => Some(slot.until.load(Ordering::Acquire)),
            _ => None,
        }
    }

    /// Whether the table can take `more` new slots and keep a quarter empty.
    fn has_room(&self, used: usize, more: usize) -> bool {
        used.saturating_add(more) <= self.slots.len() / 4 * 3
    }
}

/// Anchors still to expire, bucketed by their expiry second. An anchor whose expiry
/// was extended stays in its old bucket too; expiry skips such stale entries.
type ExpiryQueue = BTreeMap<u32, Vec<u64>>;

/// The most expired anchors one revocation or check removes: expiry is incremental,
/// so no request and no event pays for an O(n) pass under the lock.
const EXPIRE_STEP: usize = 256;

/// Zone → delegation epoch, replaced whole on a raise (zones are few, raises rare).
type Epochs = HashMap<Box<str>, u64>;

/// What only writers touch, under the writer lock.
struct Writer {
    expiry: ExpiryQueue,
    /// Slots of the published table with a fingerprint, held or removed.
    used: usize,
}

struct Inner {
    table: ArcSwap<Table>,
    epochs: ArcSwap<Epochs>,
    /// Anchors held (removed ones excluded), written under the writer lock.
    held: AtomicUsize,
    writer: Mutex<Writer>,
    clock: SharedClock,
    ttl: Duration,
    max_anchors: usize,
    /// The feed that keeps this set current, once one is attached.
    feed: OnceLock<Arc<FeedHealth>>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Writer> {
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remove up to `budget` expired anchors, oldest first. Returns how many were
    /// removed from the set.
    fn expire(&self, w: &mut Writer, now: u64, mut budget: usize) -> usize {
        let table = self.table.load();
        let mut removed = 0;
        while budget > 0 {
            let Some(mut bucket) = w.expiry.first_entry() else {
                break;
            };
            let until = *bucket.key();
            if u64::from(until) > now {
                break;
            }
            let fps = bucket.get_mut();
            while budget > 0 {
                let Some(fp) = fps.pop() else { break };
                budget -= 1;
                // Revoked again for longer: the entry lives on (its newer bucket
                // will expire it).
                if let (slot, true) = table.probe(fp)
                    && slot.until.load(Ordering::Relaxed) == until
                {
                    slot.until.store(GONE, Ordering::Release);
                    removed += 1;
                }
            }
            if fps.is_empty() {
                bucket.remove();
            }
        }
        self.held.fetch_sub(removed, Ordering::AcqRel);
        removed
    }

    /// Make room for `more` new fingerprints: publish a table sized for the anchors
    /// held plus `more`, without the removed ones, when the current one is too full.
    fn reserve(&self, w: &mut Writer, more: usize) {
        let old = self.table.load();
        if old.has_room(w.used, more) {
            return;
        }
        let held = self.held.load(Ordering::Relaxed);
        let table = Table::new(held.saturating_add(more).saturating_mul(2));
        let mut used = 0;
        for slot in old.slots.iter() {
            let until = slot.until.load(Ordering::Relaxed);
            if until != GONE {
                let (new, _) = table.probe(slot.fp.load(Ordering::Relaxed));
                new.until.store(until, Ordering::Relaxed);
                new.fp
                    .store(slot.fp.load(Ordering::Relaxed), Ordering::Relaxed);
                used += 1;
            }
        }
        w.used = used;
        // Published with a release store: a check that loads it sees every slot.
        self.table.store(Arc::new(table));
    }
}

/// The revocation set: a cheap, cloneable handle shared by the verifier, the
/// Redis consumer and anyone else who learns of revocations (webhooks, tests).
///
/// ```
/// use caracal_verifier::revocation::RevocationSet;
///
/// let set = RevocationSet::new();
/// set.revoke("authority-record-1");
/// assert!(set.is_revoked("authority-record-1"));
/// assert!(set.raise_epoch("zone-1", 7));
/// assert!(!set.raise_epoch("zone-1", 6), "epochs never go down");
/// assert_eq!(set.epoch("zone-1"), Some(7));
/// ```
#[derive(Clone)]
pub struct RevocationSet {
    inner: Arc<Inner>,
}

impl fmt::Debug for RevocationSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = self.len();
        f.debug_struct("RevocationSet")
            .field("anchors", &held)
            .field("zones", &self.zones())
            .field("ttl", &self.inner.ttl)
            .field("over_capacity", &(held > self.inner.max_anchors))
            .finish()
    }
}

impl Default for RevocationSet {
    fn default() -> Self {
        Self::new()
    }
}

/// Settings for a [`RevocationSet`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RevocationSetBuilder {
    ttl: Duration,
    max_anchors: usize,
    clock: SharedClock,
}

impl RevocationSetBuilder {
    /// How long a revocation is remembered. Default 24 h, Caracal's revocation TTL:
    /// mandates live minutes, so a day covers every token an anchor could appear in.
    /// Shorter values forget revocations sooner.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The capacity: how many anchors the set holds before it fails closed. Default
    /// 4,000,000 (about 150 MB). It is a soft bound: a revocation that arrives when
    /// the set is full is still recorded, because forgetting it would widen authority.
    /// While the set holds more anchors than this, every check fails closed with 503
    /// `revocation_unavailable`, until enough entries expire (expiry is incremental,
    /// a bounded number per event or check). Memory therefore grows past the bound
    /// only by what signed events add beyond it.
    pub fn max_anchors(mut self, max: usize) -> Self {
        self.max_anchors = max.max(1);
        self
    }

    /// The clock for expiry. Default: the system clock.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    pub(crate) fn shared_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Build the set.
    pub fn build(self) -> RevocationSet {
        RevocationSet {
            inner: Arc::new(Inner {
                table: ArcSwap::from_pointee(Table::new(MIN_SLOTS)),
                epochs: ArcSwap::from_pointee(Epochs::new()),
                held: AtomicUsize::new(0),
                writer: Mutex::new(Writer {
                    expiry: ExpiryQueue::new(),
                    used: 0,
                }),
                clock: self.clock,
                ttl: self.ttl,
                max_anchors: self.max_anchors,
                feed: OnceLock::new(),
            }),
        }
    }
}

/// The default revocation TTL (24 h).
pub const DEFAULT_REVOCATION_TTL: Duration = Duration::from_secs(24 * 3600);

impl RevocationSet {
    /// An empty set with the defaults: 24 h TTL, 4,000,000 anchors, system clock.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Settings for a set.
    pub fn builder() -> RevocationSetBuilder {
        RevocationSetBuilder {
            ttl: DEFAULT_REVOCATION_TTL,
            max_anchors: 4_000_000,
            clock: Arc::new(SystemClock),
        }
    }

    fn now_secs(&self) -> u64 {
        self.inner.clock.now().as_secs()
    }

    /// Revoke an anchor id (`sid`, `root_sid`, `agent_session_id` or
    /// `delegation_edge_id`) for the set's TTL.
    pub fn revoke(&self, anchor_id: &str) {
        self.revoke_for(anchor_id, self.inner.ttl);
    }

    /// Revoke an anchor id for `ttl`.
    pub fn revoke_for(&self, anchor_id: &str, ttl: Duration) {
        self.revoke_fingerprints(&[fingerprint(anchor_id)], ttl);
    }

    fn revoke_fingerprints(&self, fps: &[u64], ttl: Duration) {
        let now = self.now_secs();
        let until =
            u32::try_from(now.saturating_add(ttl.as_secs()).max(now + 1)).unwrap_or(u32::MAX);
        let max = self.inner.max_anchors;
        let inner = &*self.inner;
        let mut w = inner.lock();
        // Reclaim a bounded batch of expired entries per event, first, so their
        // slots can be shed if the table has to grow.
        inner.expire(&mut w, now, EXPIRE_STEP.max(2 * fps.len()));
        inner.reserve(&mut w, fps.len());
        let table = inner.table.load();
        let mut added = 0;
        for &fp in fps {
            let (slot, found) = table.probe(fp);
            let cur = slot.until.load(Ordering::Relaxed);
            if cur >= until {
                continue;
            }
            if cur == GONE {
                added += 1;
            }
            // A new slot: its expiry before its fingerprint, so a probe that finds
            // the fingerprint reads the expiry with it.
            slot.until.store(until, Ordering::Release);
            if !found {
                slot.fp.store(fp, Ordering::Release);
                w.used += 1;
            }
            w.expiry.entry(until).or_default().push(fp);
        }
        let held = inner.held.fetch_add(added, Ordering::AcqRel) + added;
        if held > max {
            tracing::error!(
                anchors = held,
                max_anchors = max,
                "revocation set is over capacity; failing closed until entries expire"
            );
        }
    }

    /// Drop every expired entry now; returns how many. Lookups ignore expired entries
    /// anyway, and expiry also runs incrementally with each event, so this only
    /// reclaims memory sooner. It costs O(expired), not O(len).
    pub fn sweep(&self) -> usize {
        let now = self.now_secs();
        let inner = &*self.inner;
        let mut w = inner.lock();
        inner.expire(&mut w, now, usize::MAX)
    }

    /// Whether an anchor id is currently revoked.
    pub fn is_revoked(&self, anchor_id: &str) -> bool {
        let now = self.now_secs();
        self.inner
            .table
            .load()
            .until(fingerprint(anchor_id))
            .is_some_and(|until| u64::from(until) > now)
    }

    /// Raise a zone's delegation epoch. Returns whether it rose; it never goes down.
    pub fn raise_epoch(&self, zone_id: &str, epoch: u64) -> bool {
        let inner = &*self.inner;
        let _w = inner.lock();
        let current = inner.epochs.load();
        if current.get(zone_id).is_some_and(|&cur| cur >= epoch) {
            return false;
        }
        let mut next = Epochs::clone(&current);
        next.insert(zone_id.into(), epoch);
        // Published before this returns: a check that starts after it sees it.
        inner.epochs.store(Arc::new(next));
        true
    }

    /// A zone's recorded delegation epoch.
    pub fn epoch(&self, zone_id: &str) -> Option<u64> {
        self.inner.epochs.load().get(zone_id).copied()
    }

    /// The number of anchors held (expired ones included until swept).
    pub fn len(&self) -> usize {
        self.inner.held.load(Ordering::Acquire)
    }

    /// The capacity ([`RevocationSetBuilder::max_anchors`]).
    pub(crate) fn capacity(&self) -> usize {
        self.inner.max_anchors
    }

    /// How many zones have a recorded delegation epoch.
    pub(crate) fn zones(&self) -> usize {
        self.inner.epochs.load().len()
    }

    /// Whether no anchor is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Apply an authenticated event.
    pub fn apply(&self, event: &RevocationEvent) {
        match event {
            RevocationEvent::Revoke { anchors, .. } => {
                let fps: Vec<u64> = anchors.iter().map(|a| fingerprint(a)).collect();
                self.revoke_fingerprints(&fps, self.inner.ttl);
            }
            RevocationEvent::Epoch { zone_id, epoch, .. } => {
                self.raise_epoch(zone_id, *epoch);
            }
        }
    }

    /// Attach the health of the feed that keeps this set current. Once attached,
    /// checks fail closed while the feed is stale. Only one feed can be attached.
    pub(crate) fn attach_feed(&self, feed: Arc<FeedHealth>) -> Result<(), Arc<FeedHealth>> {
        self.inner.feed.set(feed)
    }

    /// The propagation delays (ms) of live events applied since the last call.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn drain_feed_lags(&self) -> Vec<u64> {
        self.inner
            .feed
            .get()
            .map(|f| f.drain_lags())
            .unwrap_or_default()
    }

    /// The attached feed's health, if a feed is attached.
    pub fn feed_status(&self) -> Option<FeedStatus> {
        self.inner.feed.get().map(|f| f.status())
    }

    /// Whether the set can be trusted: no feed is attached, or the feed is fresh.
    pub fn is_current(&self) -> bool {
        self.inner.feed.get().is_none_or(|f| f.is_fresh()) && !self.over_capacity()
    }

    /// Whether the set holds more anchors than its capacity, after expiring a bounded
    /// batch of old entries.
    fn over_capacity(&self) -> bool {
        let inner = &*self.inner;
        let max = inner.max_anchors;
        if inner.held.load(Ordering::Acquire) <= max {
            return false;
        }
        let now = self.now_secs();
        let mut w = inner.lock();
        inner.expire(&mut w, now, EXPIRE_STEP);
        inner.held.load(Ordering::Acquire) > max
    }

    /// Check a mandate's anchors and epoch: no lock, one probe per anchor. Only a set
    /// over its capacity takes the writer lock, to expire a batch of entries.
    pub(crate) fn check(
        &self,
        anchors: &[Anchor],
        zone_id: &str,
        epoch: Option<u64>,
        now_secs: u64,
    ) -> Result<(), AuthError> {
        if let Some(feed) = self.inner.feed.get() {
            feed.check()?;
        }
        let inner = &*self.inner;
        let held = inner.held.load(Ordering::Acquire);
        if held > inner.max_anchors && self.over_capacity() {
            return Err(AuthError::RevocationUnavailable);
        }
        if held != 0 {
            let table = inner.table.load();
            for a in anchors {
                if table
                    .until(a.fp)
                    .is_some_and(|until| u64::from(until) > now_secs)
                {
                    return Err(AuthError::SessionRevoked { anchor: a.kind });
                }
            }
        }
        if let Some(token) = epoch
            && let Some(&current) = inner.epochs.load().get(zone_id)
            && token < current
        {
            return Err(AuthError::DelegationStale { token, current });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn anchors(ids: &[(&str, AnchorKind)]) -> Vec<Anchor> {
        ids.iter()
            .map(|(id, kind)| Anchor {
                fp: fingerprint(id),
                kind: *kind,
            })
            .collect()
    }

    #[test]
    fn revoked_anchor_is_reported_with_its_kind() {
        let set = RevocationSet::new();
        let a = anchors(&[("s1", AnchorKind::Sid), ("e1", AnchorKind::ChainEdge)]);
        let now = SystemClock.now().as_secs();
        assert!(set.check(&a, "z", None, now).is_ok());
        set.revoke("e1");
        assert_eq!(
            set.check(&a, "z", None, now),
            Err(AuthError::SessionRevoked {
                anchor: AnchorKind::ChainEdge
            })
        );
    }

    #[test]
    fn ttl_expiry_without_sleeping() {
        let clock = ManualClock::new(Duration::from_secs(1_000_000));
        let set = RevocationSet::builder()
            .ttl(Duration::from_secs(60))
            .clock(clock.clone())
            .build();
        set.revoke("s1");
        assert!(set.is_revoked("s1"));
        clock.advance(Duration::from_secs(59));
        assert!(set.is_revoked("s1"));
        clock.advance(Duration::from_secs(2));
        assert!(!set.is_revoked("s1"));
        assert_eq!(set.sweep(), 1);
        assert!(set.is_empty());
    }

    #[test]
    fn epoch_only_rises_and_gates_old_mandates() {
        let set = RevocationSet::new();
        assert!(set.raise_epoch("z", 5));
        assert!(!set.raise_epoch("z", 3));
        assert!(!set.raise_epoch("z", 5));
        assert_eq!(set.epoch("z"), Some(5));
        assert_eq!(
            set.check(&[], "z", Some(4), 0),
            Err(AuthError::DelegationStale {
                token: 4,
                current: 5
            })
        );
        assert!(set.check(&[], "z", Some(5), 0).is_ok());
        assert!(set.check(&[], "z", None, 0).is_ok());
        assert!(set.check(&[], "other", Some(0), 0).is_ok());
    }

    #[test]
    fn a_full_set_keeps_every_revocation_and_fails_closed_until_entries_expire() {
        let clock = ManualClock::new(Duration::from_secs(1_000_000));
        let set = RevocationSet::builder()
            .max_anchors(2)
            .ttl(Duration::from_secs(10))
            .clock(clock.clone())
            .build();
        set.revoke_for("a", Duration::from_secs(5));
        set.revoke_for("b", Duration::from_secs(5));
        let now = || clock.now().as_secs();
        assert!(set.check(&[], "z", None, now()).is_ok());
        assert!(set.is_current());
        // Over capacity: the revocation is still recorded, and checks fail closed.
        set.revoke("c");
        assert!(set.is_revoked("c"));
        assert_eq!(set.len(), 3);
        assert!(!set.is_current());
        assert_eq!(
            set.check(&[], "z", None, now()),
            Err(AuthError::RevocationUnavailable)
        );
        // `a` and `b` expire; `c` is still enforced and the set is usable again.
        clock.advance(Duration::from_secs(6));
        assert!(set.check(&[], "z", None, now()).is_ok());
        assert!(set.is_current());
        assert!(set.is_revoked("c"));
        assert_eq!(
            set.check(&anchors(&[("c", AnchorKind::Sid)]), "z", None, now()),
            Err(AuthError::SessionRevoked {
                anchor: AnchorKind::Sid
            })
        );
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn expiry_is_incremental_and_skips_extended_entries() {
        let clock = ManualClock::new(Duration::from_secs(1_000_000));
        let set = RevocationSet::builder()
            .ttl(Duration::from_secs(10))
            .clock(clock.clone())
            .build();
        for i in 0..(3 * EXPIRE_STEP) {
            set.revoke(&format!("old-{i}"));
        }
        set.revoke_for("kept", Duration::from_secs(10));
        set.revoke_for("kept", Duration::from_secs(100));
        clock.advance(Duration::from_secs(11));
        // One event reclaims a bounded batch, not everything.
        set.revoke("new");
        let left = set.len();
        assert!(left > EXPIRE_STEP, "{left}");
        assert!(left < 3 * EXPIRE_STEP + 2, "{left}");
        // A full sweep removes the rest; the extended entry survives its old bucket.
        set.sweep();
        assert_eq!(set.len(), 2);
        assert!(set.is_revoked("kept"));
        assert!(set.is_revoked("new"));
    }

    #[test]
    fn revoking_again_extends_never_shortens() {
        let clock = ManualClock::new(Duration::from_secs(1_000_000));
        let set = RevocationSet::builder().clock(clock.clone()).build();
        set.revoke_for("a", Duration::from_secs(100));
        set.revoke_for("a", Duration::from_secs(10));
        clock.advance(Duration::from_secs(50));
        assert!(set.is_revoked("a"));
    }
}
