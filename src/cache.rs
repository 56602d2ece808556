//! The verified-mandate cache: a token seen before skips the signature check and
//! parsing, but never the expiry, key, revocation and route checks.
//!
//! Entries are found by a keyed hash of the token's last bytes (inside the
//! signature) and then compared on the **whole** token, so a hash collision can only
//! miss, never return another token's mandate. An entry does not keep the payload
//! twice: when the mandate's claims hold the decoded payload (every token an STS
//! mints), the entry keeps the header and signature segments, and the payload
//! segment is compared by decoding it against the claims. Decoding is strict and
//! canonical, so that comparison holds for exactly one payload segment. Only tokens that passed full
//! verification are inserted, so an attacker cannot fill the cache or steer its
//! buckets. The cache is bounded in entries and bytes, entries never outlive `exp`,
//! and they die with the key that verified them.
//!
//! It is a sharded map rather than a general-purpose cache: a lookup is one read
//! lock and one probe, and an insert is one write lock. When a shard is full, its
//! expired entries go first; if none have expired the shard is emptied, and its
//! tokens are verified afresh when next seen.
//!
//! In front of the shards, each thread keeps a small direct-mapped table of the
//! entries it was last served, each with a [`Mandate`] handle of its own. A
//! repeated token is then answered from the thread's table: no lock, and no
//! reference count that another thread writes, so threads serving the same hot
//! token do not bounce a cache line between cores. An entry there is checked like
//! a shared one (the whole token, `exp`); the key that verified it is checked by the
//! caller on every hit, and a removal clears the calling thread's entry.
//!
//! A token is admitted on its **second** sighting: a small direct-mapped table of
//! hashes remembers tokens seen once. Mandates used once (most cold traffic) then
//! cost nothing to cache, and a repeated token is verified in full twice before it
//! is served from the cache.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::hash::BuildIdentity;
use crate::mandate::Mandate;

/// Default entry cap of the verified-mandate cache.
pub const DEFAULT_CACHE_ENTRIES: u64 = 100_000;
/// Default byte cap of the verified-mandate cache.
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

const SHARDS: usize = 16;
/// Bytes of the token's tail that are hashed: all inside an ES256 signature.
const HASHED_TAIL: usize = 64;

/// How an entry recognises its token.
enum TokenKey {
    /// The header and signature segments, back to back: the payload segment is
    /// compared against the mandate's claims, which hold the decoded payload.
    Split {
        ends: Box<str>,
        header_len: u32,
        payload_len: u32,
    },
    /// The whole token, when the claims do not hold the decoded payload (the strict
    /// parser lays claims out afresh).
    Whole(Box<str>),
}

impl TokenKey {
    fn new(token: &str, payload: &[u8]) -> TokenKey {
        if let Ok(parts) = crate::token::split(token)
            && let (Ok(header_len), Ok(payload_len)) = (
                u32::try_from(parts.header.len()),
                u32::try_from(parts.payload.len()),
            )
            && payload_is(parts.payload.as_bytes(), payload)
        {
            let mut ends = String::with_capacity(parts.header.len() + parts.signature.len());
            ends.push_str(parts.header);
            ends.push_str(parts.signature);
            return TokenKey::Split {
                ends: ends.into(),
                header_len,
                payload_len,
            };
        }
        TokenKey::Whole(token.into())
    }

    /// Whether `token` is exactly the token this key was made from; `payload` is the
    /// mandate's decoded payload.
    ///
    /// Bytes, not `str`: the layer probes the cache with the header's bytes before
    /// checking their characters, since only a verified token can match.
    fn matches(&self, token: &[u8], payload: &[u8]) -> bool {
        match self {
            TokenKey::Whole(t) => *t.as_bytes() == *token,
            TokenKey::Split {
                ends,
                header_len,
                payload_len,
            } => {
                let (h, p) = (*header_len as usize, *payload_len as usize);
                let (header, signature) = ends.split_at(h);
                let b = token;
                b.len() == ends.len() + p + 2
                    && b[h] == b'.'
                    && b[h + 1 + p] == b'.'
                    && token[..h] == *header.as_bytes()
                    && token[h + 2 + p..] == *signature.as_bytes()
                    // Decoded last: the costly part, on tokens that matched so far.
                    && payload_is(&token[h + 1..h + 1 + p], payload)
            }
        }
    }

    /// The bytes this key keeps.
    fn len(&self) -> usize {
        match self {
            TokenKey::Split { ends, .. } => ends.len(),
            TokenKey::Whole(t) => t.len(),
        }
    }
}

/// Whether the base64url `segment` decodes (strictly) to exactly `payload`.
/// Decodes in chunks on the stack, stopping at the first difference.
fn payload_is(segment: &[u8], payload: &[u8]) -> bool {
    /// Characters per chunk: whole 4-character groups, so chunks decode alone.
    const CHUNK: usize = 1024;
    let mut buf = [0u8; CHUNK / 4 * 3];
    let mut rest = payload;
    for chunk in segment.chunks(CHUNK) {
        let Ok(n) = crate::b64::SIMD_B64.decoded_length(chunk) else {
            return false;
        };
        if n > rest.len() {
            return false;
        }
        let Ok(decoded) =
            crate::b64::SIMD_B64.decode(chunk, base64_simd::Out::from_slice(&mut buf[..n]))
        else {
            return false;
        };
        let (head, tail) = rest.split_at(n);
        if *decoded != *head {
            return false;
        }
        rest = tail;
    }
    rest.is_empty()
}

pub(crate) struct Cached {
    key: TokenKey,
    mandate: Mandate,
    /// Drop the entry at this time (seconds since the Unix epoch).
    expires_at: u64,
}

impl Cached {
    fn is_for(&self, token: &[u8]) -> bool {
        self.key
            .matches(token, self.mandate.0.claims.text.as_bytes())
    }

    /// Rough heap cost: the token's parts kept, the parsed claims and bookkeeping.
    fn bytes(&self) -> usize {
        self.key.len() + self.mandate.0.claims.text.len() + ENTRY_OVERHEAD
    }
}

/// The token shows as its length only.
impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = match &self.key {
            TokenKey::Split { ends, .. } | TokenKey::Whole(ends) => ends,
        };
        f.debug_struct("Cached")
            .field("token", &crate::token::Redacted(kept))
            .field("mandate", &self.mandate)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

#[derive(Default)]
struct Shard {
    map: HashMap<u64, Cached, BuildIdentity>,
    bytes: usize,
}

/// A token's hash: it picks the shard, the map key and the doorkeeper slot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot(u64);

/// Entries of a thread's own table ([`Near`]).
const NEAR_SLOTS: usize = 64;

/// A shared entry as one thread last used it, with that thread's own handle and
/// its own copy of the token (compared byte for byte, no decoding).
struct NearEntry {
    /// [`MandateCache::id`] of the cache it came from.
    cache: u64,
    hash: u64,
    token: Box<[u8]>,
    expires_at: u64,
    mandate: Mandate,
}

/// A thread's table of the entries it was last served, direct-mapped by hash.
struct Near(Box<[Option<NearEntry>]>);

thread_local! {
    static NEAR: RefCell<Near> = RefCell::new(Near(
        std::iter::repeat_with(|| None).take(NEAR_SLOTS).collect(),
    ));
}

/// Where a hash sits in a thread's table: bits the shard index does not use.
fn near_index(h: u64) -> usize {
    (h as usize >> 8) % NEAR_SLOTS
}

/// Cache ids, so a thread's table never answers for another cache.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) struct MandateCache {
    /// Unique per cache in the process.
    id: u64,
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

/// Heap bytes of an entry besides its strings: the claims' fields and tables, the
/// revocation anchors, the handles and the map slot.
const ENTRY_OVERHEAD: usize = 512;

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
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
            seen_once: (0..doorkeeper).map(|_| AtomicU64::new(0)).collect(),
            hasher: foldhash::fast::RandomState::default(),
            max_entries: per(max_entries),
            max_bytes: per(max_bytes),
        }
    }

    /// Where `token` sits: hashed once per request, then used by the lookup and by
    /// the insert or removal that follows it.
    pub(crate) fn slot(&self, token: &[u8]) -> Slot {
        let tail = &token[token.len().saturating_sub(HASHED_TAIL)..];
        Slot(self.hasher.hash_one(tail))
    }

    fn shard(&self, Slot(h): Slot) -> &RwLock<Shard> {
        &self.shards[(h >> 60) as usize % SHARDS]
    }

    /// The mandate for exactly this token, if it is cached and not past its lifetime.
    ///
    /// A token this thread was served before is answered from the thread's own
    /// table, touching nothing another thread writes. Otherwise: one shared read
    /// lock and one probe, and the entry goes into the thread's table with a new
    /// handle.
    pub(crate) fn get_at(&self, slot: Slot, token: &[u8], now: u64) -> Option<Mandate> {
        let Slot(h) = slot;
        let near = NEAR.try_with(|near| {
            let near = near.borrow();
            match &near.0[near_index(h)] {
                Some(n)
                    if n.cache == self.id
                        && n.hash == h
                        && n.expires_at > now
                        && *n.token == *token =>
                {
                    Some(n.mandate.clone())
                }
                _ => None,
            }
        });
        if let Ok(Some(m)) = near {
            return Some(m);
        }
        let s = self
            .shard(slot)
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let hit = s
            .map
            .get(&h)
            .filter(|c| c.expires_at > now && c.is_for(token))
            .map(|c| (c.mandate.new_handle(), c.expires_at));
        drop(s);
        let Some((mandate, expires_at)) = hit else {
            // A miss is followed, once the token verifies, by an insert that reads this
            // token's doorkeeper slot. Touch it now: the load overlaps the signature
            // check instead of stalling the insert on a cache miss.
            std::hint::black_box(self.doorkeeper(h).load(Ordering::Relaxed));
            return None;
        };
        // During thread teardown the table may be gone: the hit is still served.
        let _ = NEAR.try_with(|near| {
            near.borrow_mut().0[near_index(h)] = Some(NearEntry {
                cache: self.id,
                hash: h,
                token: token.into(),
                expires_at,
                mandate: mandate.clone(),
            });
        });
        Some(mandate)
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
        let Slot(h) = slot;
        // Admit on the second sighting only.
        if self.doorkeeper(h).swap(h, Ordering::Relaxed) != h {
            return;
        }
        let entry = Cached {
            key: TokenKey::new(token, mandate.0.claims.text.as_bytes()),
            mandate,
            expires_at,
        };
        let size = entry.bytes();
        if size > self.max_bytes {
            return;
        }
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
            s.bytes = s.map.values().map(Cached::bytes).sum();
        }
        if let Some(old) = s.map.insert(h, entry) {
            s.bytes -= old.bytes();
        }
        s.bytes += size;
    }

    pub(crate) fn remove_at(&self, slot: Slot, token: &str) {
        let Slot(h) = slot;
        let _ = NEAR.try_with(|near| {
            let mut near = near.borrow_mut();
            let e = &mut near.0[near_index(h)];
            if e.as_ref()
                .is_some_and(|n| n.cache == self.id && n.hash == h)
            {
                *e = None;
            }
        });
        let mut s = self
            .shard(slot)
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if s.map.get(&h).is_some_and(|c| c.is_for(token.as_bytes()))
            && let Some(old) = s.map.remove(&h)
        {
            s.bytes -= old.bytes();
        }
    }

    #[cfg(test)]
    fn get(&self, token: &str, now: u64) -> Option<Mandate> {
        self.get_at(self.slot(token.as_bytes()), token.as_bytes(), now)
    }

    #[cfg(test)]
    fn insert(&self, token: &str, mandate: Mandate, expires_at: u64, now: u64) {
        self.insert_at(self.slot(token.as_bytes()), token, mandate, expires_at, now)
    }

    #[cfg(test)]
    fn remove(&self, token: &str) {
        self.remove_at(self.slot(token.as_bytes()), token)
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
        Mandate::new(MandateInner {
            hops: crate::mandate::effective_hops(&claims),
            claims,
            key: crate::jwk::test_key(),
            alg: Algorithm::ES256,
            anchors: Vec::new(),
            policy: crate::verifier::PolicyId::fresh(),
        })
    }

    #[test]
    fn debug_of_an_entry_shows_no_token_bytes() {
        let token = format!("header.payload.{}", "S".repeat(86));
        let entry = Cached {
            key: TokenKey::new(&token, b"not the payload"),
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

    /// A token whose payload segment is the claims' buffer, encoded, as an STS
    /// mints it: the entry keeps only the header and signature segments.
    fn minted(m: &Mandate, header: &str, sig: &str) -> String {
        let payload = crate::b64::SIMD_B64.encode_to_string(m.0.claims.text.as_bytes());
        format!("{header}.{payload}.{sig}")
    }

    #[test]
    fn an_entry_keeps_the_payload_once_and_still_matches_only_its_token() {
        let m = mandate();
        let sig = "S".repeat(86);
        let token = minted(&m, "eyJhbGciOiJFUzI1NiJ9", &sig);
        let key = TokenKey::new(&token, m.0.claims.text.as_bytes());
        assert!(matches!(key, TokenKey::Split { .. }));
        let text = m.0.claims.text.as_bytes();
        assert!(key.matches(token.as_bytes(), text));
        let (h, rest) = token.split_once('.').unwrap();
        let (p, s) = rest.split_once('.').unwrap();
        assert_eq!(key.len(), h.len() + s.len());
        // Any other token misses: each segment changed, a dot moved, a byte added,
        // and a payload segment that decodes to the same bytes only non-canonically.
        let last = p.as_bytes()[p.len() - 1];
        let twin = char::from(if last % 2 == 0 { last + 1 } else { last - 1 });
        let noncanonical = format!("{h}.{}{twin}.{s}", &p[..p.len() - 1]);
        for other in [
            format!("x{token}"),
            format!("{token}x"),
            format!("{h}x.{p}.{s}"),
            format!("{h}.{p}.{}", "T".repeat(86)),
            format!("{h}.A{}.{s}", &p[1..]),
            format!("{h}{p}..{s}"),
            noncanonical,
        ] {
            assert!(!key.matches(other.as_bytes(), text), "{other}");
        }
        // Through the cache: admitted on the second sighting, served, removed.
        let c = MandateCache::new(100, 1 << 20);
        c.insert(&token, m.clone(), 100, 0);
        c.insert(&token, m.clone(), 100, 0);
        assert!(c.get(&token, 50).is_some());
        assert!(c.get(&format!("{h}x.{p}.{s}"), 50).is_none());
        c.remove(&token);
        assert!(c.get(&token, 50).is_none());
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
