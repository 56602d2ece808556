//! The zone keyset: fetched from `{issuer}/.well-known/jwks.json?zone_id={zone}`,
//! cached, refreshed in the background, and refetched once for an unknown `kid`.
//!
//! Fetches are single-flight (a burst on a cold cache makes one request) and
//! rate-limited by a cooldown (a flood of random kids makes at most one request per
//! cooldown). When refreshes keep failing, the last good keys serve until the
//! maximum staleness, then verification answers 503 `sts_unavailable`.
//!
//! `fetch` gets a document; `cache` decides when to get one and which keys to
//! use meanwhile.

mod cache;
mod fetch;

pub(crate) use cache::{KeyCache, KeyCacheConfig};
pub use fetch::{
    DEFAULT_FETCH_TIMEOUT, DEFAULT_MAX_JWKS_BYTES, FetchError, HttpFetcher, HttpFetcherBuilder,
    JwksFetcher,
};
