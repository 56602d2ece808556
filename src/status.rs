//! The verifier's status document, for troubleshooting bundles and debug endpoints.
//!
//! [`Verifier::status`] gathers, in one [`Status`], what an operator asks first when
//! mandates are refused: the configuration that decides acceptance (issuer, zone,
//! audience, `use`, algorithms, leeway, size caps, key cache settings), the keyset
//! (kids held, age, fetches, the last fetch error), the revocation set and its feed,
//! the [sources](crate::source), the mandate cache, the replay guard, readiness, the
//! crate version and the [manifest](crate::manifest) digest.
//!
//! It is safe to hand out:
//!
//! - **No secrets.** No key material, no stream key, no URL but the issuer (which
//!   `build` refuses with credentials, a query or a fragment), nothing a source or a
//!   fetcher prints in `Debug`. A failed key fetch is a short category
//!   (`fetch_failed`, `deadline_exceeded`, `no_usable_key`, …), never text from the
//!   network.
//! - **Nothing per request.** No token, `jti`, `sid` or other id a request carried:
//!   the revocation set and the caches show counts only.
//! - **Bounded.** Every number is a fixed-size integer; the lists from outside are
//!   capped (at most [`MAX_KIDS`] kids, each at most [`MAX_NAME_CHARS`] characters,
//!   as are source names).
//!
//! Taking it costs a few locks (one read lock per cache shard, the revocation set's
//! read lock) and nothing on the request path: the mandate cache keeps no hit or
//! miss counters.
//!
//! [`Verifier::status_json`] is the document as pretty-printed JSON, its keys in the
//! order of the fields below, so two snapshots diff cleanly.
//!
//! ```
//! use caracal_verifier::Verifier;
//!
//! let verifier = Verifier::builder()
//!     .issuer("https://sts.example.com")
//!     .audience("resource://api")
//!     .zone("zone-1")
//!     .build()?;
//! let status = verifier.status();
//! assert_eq!(status.config.zone, "zone-1");
//! assert_eq!(status.config.algorithms, ["ES256"]);
//! // Nothing fetched yet: not ready.
//! assert!(!status.ready);
//! assert_eq!(status.keys.fetches_started, 0);
//! assert_eq!(status.manifest_sha, verifier.manifest_sha());
//!
//! let json: serde_json::Value = serde_json::from_slice(&verifier.status_json())?;
//! assert_eq!(json["keys"]["ready"], false);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::time::Duration;

use serde::Serialize;

use crate::error::CodeSpelling;
use crate::revocation::FeedStatus;
use crate::source::SourceHandle;
use crate::verifier::Verifier;

/// The most kids a status lists (the first ones in byte order); `keys.kid_count`
/// has them all.
pub const MAX_KIDS: usize = 16;

/// The longest kid or source name a status shows, in characters; longer ones are
/// cut and end with `…`.
pub const MAX_NAME_CHARS: usize = 64;

/// A snapshot of a verifier; see the [module docs](self).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// This crate's name, `caracal-verifier`.
    pub name: &'static str,
    /// This crate's version.
    pub version: &'static str,
    /// [`Verifier::manifest_sha`] now.
    pub manifest_sha: String,
    /// [`Verifier::is_ready`].
    pub ready: bool,
    /// [`Verifier::readiness`], part by part.
    pub readiness: ReadinessStatus,
    /// The settings that decide what is accepted.
    pub config: ConfigSummary,
    /// The zone keyset.
    pub keys: KeysStatus,
    /// The revocation set and its feed.
    pub revocation: RevocationStatus,
    /// The started sources, in the order they were added.
    pub sources: Vec<SourceSummary>,
    /// The verified-mandate cache.
    pub mandate_cache: MandateCacheStatus,
    /// The single-use (replay) guard.
    pub replay: ReplayStatus,
}

/// [`Readiness`](crate::Readiness), part by part.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadinessStatus {
    /// Signing keys are held and within the maximum staleness.
    pub keys: bool,
    /// The revocation set is current and within its capacity.
    pub revocation: bool,
    /// Every source is ready.
    pub sources: bool,
}

/// The verifier's settings, secrets excluded.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigSummary {
    /// The issuer (`iss`, and the base of the keyset URL). Never carries
    /// credentials, a query or a fragment: `build` refuses those.
    pub issuer: String,
    /// The zone (`zone_id`, and the keyset selected).
    pub zone: String,
    /// The audience `aud` must contain.
    pub audience: String,
    /// The accepted `use`.
    pub token_use: String,
    /// The accepted algorithms, as JOSE names.
    pub algorithms: Vec<&'static str>,
    /// Clock leeway on `nbf` and `iat`, in seconds.
    pub leeway_secs: u64,
    /// The token size cap, in bytes.
    pub max_token_bytes: u64,
    /// How a layer spells denial codes: `documented` or `caracal_sdk`.
    pub code_spelling: &'static str,
    /// How long a fetched keyset is fresh, in milliseconds.
    pub jwks_ttl_ms: u64,
    /// How long the last good keyset serves while refreshes fail, in milliseconds.
    pub jwks_max_staleness_ms: u64,
    /// The minimum time between fetch attempts, in milliseconds.
    pub jwks_cooldown_ms: u64,
    /// The deadline of one fetch, in milliseconds.
    pub jwks_fetch_timeout_ms: u64,
    /// The keyset document size cap, in bytes.
    pub max_jwks_bytes: u64,
    /// Whether verified mandates are cached.
    pub mandate_cache: bool,
    /// Whether an action sink is attached (action results are recorded).
    pub action_sink: bool,
}

/// The zone keyset.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeysStatus {
    /// Keys are held and within the maximum staleness.
    pub ready: bool,
    /// How many keys the keyset holds.
    pub kid_count: u64,
    /// Their kids, in byte order: at most [`MAX_KIDS`], each cut to
    /// [`MAX_NAME_CHARS`] characters.
    pub kids: Vec<String>,
    /// Age of the keyset held, in milliseconds; `None` before the first keyset.
    pub age_ms: Option<u64>,
    /// Fetch attempts started ([`Verifier::jwks_fetches`]).
    pub fetches_started: u64,
    /// Fetch attempts finished, whatever their outcome ([`Verifier::jwks_refreshes`]).
    pub fetches_finished: u64,
    /// Why the last finished attempt failed, as a short category; `None` if it
    /// succeeded or none finished. One of `fetch_failed` (transport, status,
    /// redirect, size while reading), `deadline_exceeded`, `too_large`,
    /// `not_json`, `no_keys_array`, `no_usable_key`, `no_runtime`, `other`.
    pub last_fetch_error: Option<&'static str>,
}

/// The revocation set and the feed that keeps it current.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RevocationStatus {
    /// The set may be trusted: no feed, or a fresh one, and within capacity.
    pub current: bool,
    /// Anchors held (expired ones included until swept).
    pub anchors: u64,
    /// The set's capacity; above it, checks fail closed.
    pub capacity: u64,
    /// Zones with a recorded delegation epoch.
    pub zones_with_epoch: u64,
    /// The feed that keeps the set current, if one is attached.
    pub feed: Option<FeedSummary>,
}

/// A revocation feed's health ([`FeedStatus`]), durations in milliseconds.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FeedSummary {
    /// The name of the source that runs the feed, when this verifier started it
    /// (`None` for a feed another verifier sharing the set started).
    pub source: Option<String>,
    /// Connected, caught up, and read within the maximum staleness.
    pub fresh: bool,
    /// The consumer holds a live connection.
    pub connected: bool,
    /// The retained history was replayed.
    pub caught_up: bool,
    /// Time since the last successful read.
    pub since_last_read_ms: Option<u64>,
    /// Time since the last applied event.
    pub since_last_event_ms: Option<u64>,
    /// Lag of the last applied event behind its publication.
    pub lag_ms: u64,
    /// Events applied.
    pub applied: u64,
    /// Messages dropped (unsigned, forged, malformed, over a bound).
    pub dropped: u64,
    /// Times history was deleted before the feed read it.
    pub gaps: u64,
    /// Times the stream was found reset and read again.
    pub resets: u64,
}

/// A started source.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceSummary {
    /// Its name, cut to [`MAX_NAME_CHARS`] characters.
    pub name: String,
    /// It still runs.
    pub running: bool,
    /// The verifier can rely on it.
    pub ready: bool,
    /// It keeps the revocation set current.
    pub revocation_feed: bool,
    /// Its own counts ([`Running::counters`](crate::source::Running::counters)),
    /// such as an audit emitter's queue: at most 32, names cut like `name`.
    pub counters: std::collections::BTreeMap<String, u64>,
}

/// The verified-mandate cache.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MandateCacheStatus {
    /// Whether it is on.
    pub enabled: bool,
    /// Entries held.
    pub entries: u64,
    /// Their estimated size, in bytes.
    pub bytes: u64,
    /// The entry bound.
    pub max_entries: u64,
    /// The byte bound.
    pub max_bytes: u64,
    /// Cache hits of every verifier in the process (the metrics' counter).
    pub process_hits: u64,
    /// Cache misses (signature checks) of every verifier in the process.
    pub process_misses: u64,
}

/// The single-use guard, as far as it tells ([`ReplayGuard::usage`](crate::replay::ReplayGuard::usage)).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayStatus {
    /// Recorded uses; `None` when the guard does not tell (a shared store).
    pub recorded: Option<u64>,
    /// Its bound, when it has one and tells it.
    pub capacity: Option<u64>,
}

impl Verifier {
    /// A snapshot of this verifier; see the [module docs](crate::status).
    pub fn status(&self) -> Status {
        let inner = &*self.inner;
        let readiness = self.readiness();
        let cfg = inner.keys.config();
        let kids = inner.keys.kids();
        let (cache_entries, cache_bytes, cache_max_entries, cache_max_bytes) = match &inner.cache {
            Some(cache) => {
                let (entries, bytes) = cache.usage();
                let (max_entries, max_bytes) = cache.limits();
                (entries, bytes, max_entries, max_bytes)
            }
            None => (0, 0, 0, 0),
        };
        let replay = inner.replay.usage();
        let feed_source = self.revocation_feed().map(|s| bounded(s.name()));
        let (hits, misses) = crate::stats::totals().cache();
        Status {
            name: env!("CARGO_PKG_NAME"),
            version: env!("CARGO_PKG_VERSION"),
            manifest_sha: self.manifest_sha(),
            ready: readiness.is_ready(),
            readiness: ReadinessStatus {
                keys: readiness.keys,
                revocation: readiness.revocation,
                sources: readiness.sources,
            },
            config: ConfigSummary {
                issuer: inner.issuer.clone(),
                zone: inner.zone.clone(),
                audience: inner.audience.clone(),
                token_use: inner.token_use.clone(),
                algorithms: inner.algorithms.iter().map(|a| a.as_str()).collect(),
                leeway_secs: inner.leeway,
                max_token_bytes: count(inner.max_token_bytes),
                code_spelling: match self.code_spelling() {
                    CodeSpelling::CaracalSdk => "caracal_sdk",
                    _ => "documented",
                },
                jwks_ttl_ms: millis(cfg.ttl),
                jwks_max_staleness_ms: millis(cfg.max_staleness),
                jwks_cooldown_ms: millis(cfg.cooldown),
                jwks_fetch_timeout_ms: millis(cfg.fetch_timeout),
                max_jwks_bytes: count(cfg.max_bytes),
                mandate_cache: inner.cache.is_some(),
                action_sink: inner.actions.is_some(),
            },
            keys: KeysStatus {
                ready: readiness.keys,
                kid_count: count(kids.len()),
                kids: kids.iter().take(MAX_KIDS).map(|k| bounded(k)).collect(),
                age_ms: self.jwks_age().map(millis),
                fetches_started: self.jwks_fetches(),
                fetches_finished: self.jwks_refreshes(),
                last_fetch_error: inner.keys.last_error().map(fetch_error_category),
            },
            revocation: RevocationStatus {
                current: inner.revocations.is_current(),
                anchors: count(inner.revocations.len()),
                capacity: count(inner.revocations.capacity()),
                zones_with_epoch: count(inner.revocations.zones()),
                feed: inner
                    .revocations
                    .feed_status()
                    .map(|f| feed_summary(f, feed_source)),
            },
            sources: self.sources().iter().map(source_summary).collect(),
            mandate_cache: MandateCacheStatus {
                enabled: inner.cache.is_some(),
                entries: count(cache_entries),
                bytes: count(cache_bytes),
                max_entries: count(cache_max_entries),
                max_bytes: count(cache_max_bytes),
                process_hits: hits,
                process_misses: misses,
            },
            replay: ReplayStatus {
                recorded: replay.map(|u| u.recorded),
                capacity: replay.and_then(|u| u.capacity),
            },
        }
    }

    /// [`status`](Self::status) as pretty-printed JSON (UTF-8), keys in field order.
    pub fn status_json(&self) -> Vec<u8> {
        // Plain structs of strings, integers and booleans always serialize.
        serde_json::to_vec_pretty(&self.status()).unwrap_or_default()
    }
}

fn feed_summary(f: FeedStatus, source: Option<String>) -> FeedSummary {
    FeedSummary {
        source,
        fresh: f.fresh,
        connected: f.connected,
        caught_up: f.caught_up,
        since_last_read_ms: f.since_last_read.map(millis),
        since_last_event_ms: f.since_last_event.map(millis),
        lag_ms: millis(f.lag),
        applied: f.applied,
        dropped: f.dropped,
        gaps: f.gaps,
        resets: f.resets,
    }
}

fn source_summary(s: &SourceHandle) -> SourceSummary {
    let status = s.status();
    SourceSummary {
        name: bounded(s.name()),
        running: status.running,
        ready: status.ready,
        revocation_feed: s.is_revocation_feed(),
        counters: status
            .counters
            .iter()
            .take(32)
            .map(|(name, n)| (bounded(name), *n))
            .collect(),
    }
}

/// The key cache's failure descriptions (fixed strings of this crate, never text
/// from the network) as short categories.
fn fetch_error_category(e: &'static str) -> &'static str {
    match e {
        "fetch failed" => "fetch_failed",
        "fetch deadline exceeded" => "deadline_exceeded",
        "body exceeds size cap" => "too_large",
        "no tokio runtime to fetch keys on" => "no_runtime",
        "jwks is not a JSON object" => "not_json",
        "jwks has no keys array" => "no_keys_array",
        "jwks has no usable key" => "no_usable_key",
        _ => "other",
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// At most [`MAX_NAME_CHARS`] characters: a longer name is cut and ends with `…`.
fn bounded(s: &str) -> String {
    match s.char_indices().nth(MAX_NAME_CHARS) {
        None => s.to_owned(),
        Some(_) => {
            let cut = s
                .char_indices()
                .nth(MAX_NAME_CHARS - 1)
                .map_or(s.len(), |(i, _)| i);
            format!("{}…", &s[..cut])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwk::JwksError;

    #[test]
    fn every_fetch_failure_has_a_category() {
        for e in [
            JwksError::Json,
            JwksError::NoKeysArray,
            JwksError::NoUsableKey,
        ] {
            assert_ne!(fetch_error_category(e.as_str()), "other", "{e:?}");
        }
        assert_eq!(fetch_error_category("anything else"), "other");
    }

    #[test]
    fn names_are_bounded_in_characters() {
        assert_eq!(bounded("kid-1"), "kid-1");
        let exact = "k".repeat(MAX_NAME_CHARS);
        assert_eq!(bounded(&exact), exact);
        let long = "é".repeat(MAX_NAME_CHARS + 1);
        let cut = bounded(&long);
        assert_eq!(cut.chars().count(), MAX_NAME_CHARS);
        assert!(cut.ends_with('…'));
        assert!(cut.starts_with("éé"));
    }
}
