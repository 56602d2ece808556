//! The verified-mandate cache: a token seen before skips the signature check and
//! parsing, but never the expiry, key, revocation and route checks.
//!
//! Entries are keyed by the whole token (a fast keyed hash, then a full compare, so
//! a hash collision can never return another token's mandate), are bounded in
//! entries and bytes, never outlive `exp`, and die with the key that verified them.

use std::sync::Arc;
use std::time::Duration;

use crate::jwk::VerifyKey;
use crate::mandate::Mandate;

#[derive(Debug)]
pub(crate) struct Cached {
    pub(crate) mandate: Mandate,
    pub(crate) key: Arc<VerifyKey>,
    pub(crate) ttl: Duration,
}

/// Default entry cap of the verified-mandate cache.
pub const DEFAULT_CACHE_ENTRIES: u64 = 100_000;
/// Default byte cap of the verified-mandate cache.
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Clone)]
pub(crate) struct MandateCache {
    cache: moka::sync::Cache<Arc<str>, Arc<Cached>, foldhash::fast::RandomState>,
}

impl std::fmt::Debug for MandateCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MandateCache")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

struct ToExp;

impl moka::Expiry<Arc<str>, Arc<Cached>> for ToExp {
    fn expire_after_create(
        &self,
        _k: &Arc<str>,
        v: &Arc<Cached>,
        _at: std::time::Instant,
    ) -> Option<Duration> {
        Some(v.ttl)
    }
}

/// Rough heap cost of one entry: the token, the claims and bookkeeping.
fn entry_bytes(token: &str) -> u64 {
    // Claims decode to about three quarters of the token; add map and Arc overhead.
    (token.len() as u64) * 2 + 512
}

impl MandateCache {
    pub(crate) fn new(max_entries: u64, max_bytes: u64) -> Self {
        // Weigh each entry by its bytes, but at least max_bytes / max_entries, so the
        // single weight bound enforces both caps.
        let floor = (max_bytes / max_entries.max(1)).max(1);
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(move |k: &Arc<str>, _v: &Arc<Cached>| {
                u32::try_from(entry_bytes(k).max(floor)).unwrap_or(u32::MAX)
            })
            .expire_after(ToExp)
            .build_with_hasher(foldhash::fast::RandomState::default());
        Self { cache }
    }

    pub(crate) fn get(&self, token: &str) -> Option<Arc<Cached>> {
        self.cache.get(token)
    }

    pub(crate) fn insert(&self, token: &str, value: Cached) {
        self.cache.insert(Arc::from(token), Arc::new(value));
    }

    pub(crate) fn remove(&self, token: &str) {
        self.cache.invalidate(token);
    }
}
