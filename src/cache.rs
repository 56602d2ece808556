//! The verified-mandate cache: a token seen before skips the signature check and
//! parsing, but never the expiry, key, revocation and route checks.
//!
//! Entries are found by a keyed hash of the token's last bytes (inside the
//! signature) and then compared on the **whole** token, so a hash collision can only
//! miss, never return another token's mandate. Only tokens that passed full
//! verification are inserted, so an attacker cannot fill the cache or steer its
//! buckets. The cache is bounded in entries and bytes, entries never outlive `exp`,
//! and they die with the key that verified them.
//!
//! It is a sharded map rather than a general-purpose cache: a lookup is one
//! uncontended read lock and one probe, and an insert is one write lock. When a
//! shard is full, its expired entries go first; if none have expired the shard is
//! emptied, and its tokens are verified afresh when next seen.
//!
//! A token is admitted on its **second** sighting: a small direct-mapped table of
//! hashes remembers tokens seen once. Mandates used once (most cold traffic) then
//! cost nothing to cache, and a repeated token is verified in full twice before it
//! is served from the cache.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::hash::BuildIdentity;
use crate::mandate::Mandate;

/// Default entry cap of the verified-mandate cache.
pub const DEFAULT_CACHE_ENTRIES: u64 = 100_000;
/// Default byte cap of the verified-mandate cache.
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

const SHARDS: usize = 16;
/// Bytes of the token's tail that are hashed: all inside an ES256 signature.
const HASHED_TAIL: usize = 64;

pub(crate) struct Cached {
    token: Box<str>,
    mandate: Mandate,
    /// Drop the entry at this time (seconds since the Unix epoch).
    expires_at: u64,
}

/// The token shows as its length only.
impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached")
            .field("token", &crate::token::Redacted(&self.token))
            .field("mandate", &self.mandate)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

#[derive(Default)]
struct Shard {
    map: HashMap<u64, Arc<Cached>, BuildIdentity>,
    bytes: usize,
}

/// A token's hash: it picks the shard, the map key and the doorkeeper slot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot(u64);

pub(crate) struct MandateCache {
    shards: Box<[RwLock<Shard>]>,
    /// Hashes of tokens seen once (direct-mapped; a collision only delays admission).
    seen_once: Box<[AtomicU64]>,
    hasher: foldhash::fast::RandomState,
    max_entries: usize,
    max_bytes: usize,
}

impl std::fmt::Debug for MandateCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MandateCache")
            .field("max_entries", &(self.max_entries * SHARDS))
            .field("max_bytes", &(self.max_bytes * SHARDS))
            .finish_non_exhaustive()
    }
}

/// Rough heap cost of one entry: the token, the parsed claims and bookkeeping.
fn entry_bytes(token: &str) -> usize {
    token.len() * 2 + 512
}

impl MandateCache {
    pub(crate) fn new(max_entries: u64, max_bytes: u64) -> Self {
        let per = |n: u64| {
            usize::try_from(n.div_ceil(SHARDS as u64))
                .unwrap_or(usize::MAX)
                .max(1)
        };
        let doorkeeper = usize::try_from(max_entries)
            .unwrap_or(usize::MAX)
            .clamp(1024, 1 << 16)
            .next_power_of_two();
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
            seen_once: (0..doorkeeper).map(|_| AtomicU64::new(0)).collect(),
            hasher: foldhash::fast::RandomState::default(),
            max_entries: per(max_entries),
            max_bytes: per(max_bytes),
        }
    }

    /// Where `token` sits: hashed once per request, then used by the lookup and by
    /// the insert or removal that follows it.
    pub(crate) fn slot(&self, token: &str) -> Slot {
        let tail = &token.as_bytes()[token.len().saturating_sub(HASHED_TAIL)..];
        Slot(self.hasher.hash_one(tail))
    }

    fn shard(&self, Slot(h): Slot) -> &RwLock<Shard> {
        &self.shards[(h >> 60) as usize % SHARDS]
    }

    /// The mandate for exactly this token, if it is cached and not past its lifetime.
    ///
    /// Only the mandate's reference count is touched: a hit on a popular token is one
    /// shared read lock and one atomic increment.
    pub(crate) fn get_at(&self, slot: Slot, token: &str, now: u64) -> Option<Mandate> {
        let Slot(h) = slot;
        let s = self
            .shard(slot)
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let hit = s
            .map
            .get(&h)
            .filter(|c| *c.token == *token && c.expires_at > now)
            .map(|c| c.mandate.clone());
        if hit.is_none() {
            // A miss is followed, once the token verifies, by an insert that reads this
            // token's doorkeeper slot. Touch it now: the load overlaps the signature
            // check instead of stalling the insert on a cache miss.
            std::hint::black_box(self.doorkeeper(h).load(Ordering::Relaxed));
        }
        hit
    }

    fn doorkeeper(&self, h: u64) -> &AtomicU64 {
        &self.seen_once[(h as usize) & (self.seen_once.len() - 1)]
    }

    pub(crate) fn insert_at(
        &self,
        slot: Slot,
        token: &str,
        mandate: Mandate,
        expires_at: u64,
        now: u64,
    ) {
        let size = entry_bytes(token);
        if size > self.max_bytes {
            return;
        }
        let Slot(h) = slot;
        // Admit on the second sighting only.
        if self.doorkeeper(h).swap(h, Ordering::Relaxed) != h {
            return;
        }
        let entry = Arc::new(Cached {
            token: token.into(),
            mandate,
            expires_at,
        });
        let mut s = self
            .shard(slot)
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if s.map.len() >= self.max_entries || s.bytes + size > self.max_bytes {
            s.map
                .retain(|_, c| c.expires_at > now && !c.mandate.0.key.is_retired());
            if s.map.len() >= self.max_entries || s.bytes + size > self.max_bytes {
                s.map.clear();
            }
            s.bytes = s.map.values().map(|c| entry_bytes(&c.token)).sum();
        }
        if let Some(old) = s.map.insert(h, entry) {
            s.bytes -= entry_bytes(&old.token);
        }
        s.bytes += size;
    }

    pub(crate) fn remove_at(&self, slot: Slot, token: &str) {
        let Slot(h) = slot;
        let mut s = self
            .shard(slot)
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if s.map.get(&h).is_some_and(|c| *c.token == *token)
            && let Some(old) = s.map.remove(&h)
        {
            s.bytes -= entry_bytes(&old.token);
        }
    }

    #[cfg(test)]
    fn get(&self, token: &str, now: u64) -> Option<Mandate> {
        self.get_at(self.slot(token), token, now)
    }

    #[cfg(test)]
    fn insert(&self, token: &str, mandate: Mandate, expires_at: u64, now: u64) {
        self.insert_at(self.slot(token), token, mandate, expires_at, now)
    }

    #[cfg(test)]
    fn remove(&self, token: &str) {
        self.remove_at(self.slot(token), token)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.usage().0
    }

    /// Entries held and their estimated bytes, summed over the shards (one read
    /// lock each, taken in turn): for status documents, never on the request path.
    pub(crate) fn usage(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(entries, bytes), s| {
            let s = s.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            (entries + s.map.len(), bytes + s.bytes)
        })
    }

    /// The bounds as enforced: the per-shard caps times the shard count.
    pub(crate) fn limits(&self) -> (usize, usize) {
        (
            self.max_entries.saturating_mul(SHARDS),
            self.max_bytes.saturating_mul(SHARDS),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alg::Algorithm;
    use crate::mandate::MandateInner;

    fn mandate() -> Mandate {
        let claims = crate::claims::parse_claims_json(
            br#"{"iss":"i","sub":"s","aud":"a","exp":10,"iat":1,"jti":"j","zone_id":"z",
                "client_id":"c","sid":"s","root_sid":"r","use":"resource","sub_type":"user"}"#,
        )
        .unwrap();
        Mandate(Arc::new(MandateInner {
            claims,
            key: crate::jwk::test_key(),
            alg: Algorithm::ES256,
            anchors: Vec::new(),
            policy: crate::verifier::PolicyId::fresh(),
        }))
    }

    #[test]
    fn debug_of_an_entry_shows_no_token_bytes() {
        let token = format!("header.payload.{}", "S".repeat(86));
        let entry = Cached {
            token: token.as_str().into(),
            mandate: mandate(),
            expires_at: 100,
        };
        let out = format!("{entry:?} {entry:#?}");
        assert!(!out.contains(&token), "{out}");
        assert!(!out.contains("SSSSSSSS"), "{out}");
        assert!(!out.contains("payload"), "{out}");
        assert!(out.contains("<redacted 101 bytes>"), "{out}");
    }

    #[test]
    fn hit_needs_the_whole_token_and_a_live_entry() {
        let c = MandateCache::new(100, 1 << 20);
        let tail = "S".repeat(86);
        let a = format!("aaa.bbb.{tail}");
        let b = format!("aab.bbb.{tail}");
        c.insert(&a, mandate(), 100, 0);
        assert!(
            c.get(&a, 50).is_none(),
            "admitted on the second sighting only"
        );
        c.insert(&a, mandate(), 100, 0);
        assert!(c.get(&a, 50).is_some());
        assert!(
            c.get(&b, 50).is_none(),
            "same tail, same hash, other token: a miss"
        );
        assert!(c.get(&a, 100).is_none(), "past its lifetime");
        c.remove(&b);
        assert!(
            c.get(&a, 50).is_some(),
            "removing another token keeps this one"
        );
        c.remove(&a);
        assert!(c.get(&a, 50).is_none());
    }

    #[test]
    fn bounded_in_entries_and_bytes() {
        let c = MandateCache::new(64, 1 << 30);
        for i in 0..10_000 {
            for _ in 0..2 {
                c.insert(&format!("t.{i}.sig{i:060}"), mandate(), 100, 0);
            }
        }
        assert!(c.len() <= 64 + SHARDS, "{}", c.len());
        let c = MandateCache::new(1_000_000, 64 * 1024);
        for i in 0..10_000 {
            for _ in 0..2 {
                c.insert(&format!("t.{i}.sig{i:060}"), mandate(), 100, 0);
            }
        }
        let bytes: usize = c.shards.iter().map(|s| s.read().unwrap().bytes).sum();
        assert!(bytes <= 64 * 1024 + SHARDS * 1024, "{bytes}");
        assert!(c.len() > 0);
    }

    #[test]
    fn full_shard_drops_expired_entries_first() {
        let c = MandateCache::new(SHARDS as u64 * 2, 1 << 30);
        for i in 0..200 {
            for _ in 0..2 {
                c.insert(&format!("old.{i}.{i:064}"), mandate(), 10, 0);
            }
        }
        c.insert("new.x.yyyy", mandate(), 1000, 20);
        c.insert("new.x.yyyy", mandate(), 1000, 20);
        assert!(c.get("new.x.yyyy", 30).is_some());
    }
}
