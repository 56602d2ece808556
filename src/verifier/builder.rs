//! [`VerifierBuilder`]: every setting, its secure default, and `build`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::{Inner, PolicyId, Verifier};
use crate::alg::Algorithm;
use crate::cache::{DEFAULT_CACHE_BYTES, DEFAULT_CACHE_ENTRIES, MandateCache};
use crate::clock::{Clock, SharedClock, SystemClock};
use crate::error::{CodeSpelling, ConfigError};
use crate::jwks::{
    DEFAULT_FETCH_TIMEOUT, DEFAULT_MAX_JWKS_BYTES, HttpFetcher, JwksFetcher, KeyCache,
    KeyCacheConfig,
};
use crate::replay::{DEFAULT_REPLAY_CAPACITY, MemoryReplayGuard, ReplayGuard};
use crate::revocation::RevocationSet;
use crate::source::{self, Source};

/// The default clock leeway (60 s).
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
/// The default token size cap (16 KiB): room for real mandates, which list every
/// granted resource in both `aud` and `target` (40–60 UUID resources make 9–12 KB
/// tokens; a ten-hop chain with UUID ids is about 4 KB).
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The default JWKS cache TTL (5 min).
pub const DEFAULT_JWKS_TTL: Duration = Duration::from_secs(300);
/// The default maximum age of the last good keyset while refreshes fail (30 min).
pub const DEFAULT_JWKS_MAX_STALENESS: Duration = Duration::from_secs(1800);
/// The default minimum interval between JWKS fetch attempts (2 s).
pub const DEFAULT_JWKS_COOLDOWN: Duration = Duration::from_secs(2);

/// Settings for a [`Verifier`]. `issuer`, `audience` and `zone` are required; every
/// other setting has a secure default, stated on its setter.
#[must_use]
pub struct VerifierBuilder {
    issuer: Option<String>,
    audience: Option<String>,
    /// Read by the environment tests.
    pub(super) zone: Option<String>,
    token_use: String,
    leeway: Duration,
    max_token_bytes: usize,
    algorithms: Vec<Algorithm>,
    jwks_ttl: Duration,
    jwks_max_staleness: Duration,
    jwks_cooldown: Duration,
    fetch_timeout: Duration,
    max_jwks_bytes: usize,
    fetcher: Option<Arc<dyn JwksFetcher>>,
    clock: SharedClock,
    revocations: Option<RevocationSet>,
    cache: bool,
    cache_entries: u64,
    cache_bytes: u64,
    replay: Option<Arc<dyn ReplayGuard>>,
    replay_capacity: Option<u64>,
    pub(super) code_spelling: CodeSpelling,
    sources: Vec<Box<dyn Source>>,
}

impl fmt::Debug for VerifierBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifierBuilder")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("zone", &self.zone)
            .finish_non_exhaustive()
    }
}

impl Default for VerifierBuilder {
    fn default() -> Self {
        Self {
            issuer: None,
            audience: None,
            zone: None,
            token_use: "resource".into(),
            leeway: DEFAULT_LEEWAY,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            algorithms: vec![Algorithm::ES256],
            jwks_ttl: DEFAULT_JWKS_TTL,
            jwks_max_staleness: DEFAULT_JWKS_MAX_STALENESS,
            jwks_cooldown: DEFAULT_JWKS_COOLDOWN,
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
            max_jwks_bytes: DEFAULT_MAX_JWKS_BYTES,
            fetcher: None,
            clock: Arc::new(SystemClock),
            revocations: None,
            cache: true,
            cache_entries: DEFAULT_CACHE_ENTRIES,
            cache_bytes: DEFAULT_CACHE_BYTES,
            replay: None,
            replay_capacity: None,
            code_spelling: CodeSpelling::Documented,
            sources: Vec::new(),
        }
    }
}

impl VerifierBuilder {
    /// The STS issuer URL. Required. Compared exactly with `iss`, and the base of
    /// the JWKS URL. Must be `https`, except for loopback hosts (development).
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// This resource's audience. Required. `aud` must be it or contain it.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// The trust anchor. Required. It selects the keyset and must equal `zone_id`;
    /// the token's own zone never selects keys.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// The accepted `use` claim. Default `resource`: session and gateway mandates
    /// are refused by resource servers.
    pub fn token_use(mut self, token_use: impl Into<String>) -> Self {
        self.token_use = token_use.into();
        self
    }

    /// Clock skew tolerated on `nbf` and `iat`. Default 60 s, Caracal's.
    ///
    /// `exp` gets no leeway: a mandate is refused from the second of its `exp` on
    /// (`now >= exp`, 401 `invalid_token`, reason `expired`), as Caracal's own
    /// verifiers re-check active authority with none. The leeway only lets a
    /// mandate minted by an STS whose clock runs ahead be used at once. Larger
    /// values accept mandates whose `nbf` or `iat` lie further in the future.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// The largest token accepted. Default 16 KiB ([`DEFAULT_MAX_TOKEN_BYTES`]);
    /// larger tokens are 413 `payload_too_large` before any decoding.
    ///
    /// Caracal's STS lists every granted resource in both `aud` and `target`, with no
    /// cap on their number: 40–60 UUID resources make 9–12 KB mandates, and a
    /// ten-hop chain with UUID ids about 4 KB. Caracal's own verifiers set no cap.
    /// Raise it if your STS grants more resources per mandate; the cap bounds the
    /// work an unauthenticated request can cause (one base64 decode and one
    /// signature check per token, before any cache).
    ///
    /// Everything in front must pass an `Authorization` header this large too.
    /// hyper's HTTP/1 server (axum's default) buffers up to about 408 KiB of request
    /// head, so it does. hyper's HTTP/2 server advertises a 16 KiB header list by
    /// default (names, values and 32 bytes per field), which a token near the cap
    /// exceeds: raise `max_header_list_size` there, and check proxies (nginx's
    /// default `large_client_header_buffers 4 8k` refuses any header over 8 KiB).
    pub fn max_token_bytes(mut self, bytes: usize) -> Self {
        self.max_token_bytes = bytes;
        self
    }

    /// The accepted algorithms. Default `[ES256]`, the only one Caracal signs with.
    /// Each key is usable only for its own algorithm.
    pub fn algorithms(mut self, algs: impl IntoIterator<Item = Algorithm>) -> Self {
        self.algorithms = algs.into_iter().collect();
        self
    }

    /// How long a fetched keyset is fresh. Default 5 min; after it, the cached keys
    /// still serve while one background refresh runs.
    pub fn jwks_ttl(mut self, ttl: Duration) -> Self {
        self.jwks_ttl = ttl;
        self
    }

    /// How long the last good keyset serves while refreshes fail. Default 30 min;
    /// after it, verification answers 503 `sts_unavailable`. Longer values ride out
    /// longer STS outages but delay noticing a withdrawn key.
    pub fn jwks_max_staleness(mut self, max: Duration) -> Self {
        self.jwks_max_staleness = max;
        self
    }

    /// The minimum time between fetch attempts (unknown `kid`, cold cache, failed
    /// refresh). Default 2 s. Shorter values let random kids drive more fetches.
    pub fn jwks_cooldown(mut self, cooldown: Duration) -> Self {
        self.jwks_cooldown = cooldown;
        self
    }

    /// The total deadline of one fetch. Default 5 s.
    pub fn jwks_fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = timeout;
        self
    }

    /// The JWKS document size cap, enforced while reading. Default 256 KiB.
    pub fn max_jwks_bytes(mut self, bytes: usize) -> Self {
        self.max_jwks_bytes = bytes;
        self
    }

    /// Fetch keys with this fetcher, e.g. an [`HttpFetcher`] with a private CA,
    /// a client certificate or a proxy. Default: `HttpFetcher` with system roots.
    pub fn jwks_fetcher(mut self, fetcher: impl JwksFetcher) -> Self {
        self.fetcher = Some(Arc::new(fetcher));
        self
    }

    /// The clock. Default: the system clock.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Check this revocation set. Default: a new, empty set with a 24 h TTL.
    pub fn revocations(mut self, set: RevocationSet) -> Self {
        self.revocations = Some(set);
        self
    }

    /// Cache verified mandates, so a repeated token skips the signature check.
    /// Default on. Expiry, key removal, revocation and route checks still run on
    /// every hit.
    pub fn mandate_cache(mut self, enabled: bool) -> Self {
        self.cache = enabled;
        self
    }

    /// Bounds of the mandate cache. Default 100,000 entries and 64 MiB.
    pub fn mandate_cache_limits(mut self, max_entries: u64, max_bytes: u64) -> Self {
        self.cache_entries = max_entries.max(1);
        self.cache_bytes = max_bytes.max(1);
        self
    }

    /// The store for [`Requirements::single_use`](crate::Requirements::single_use). Default: a
    /// [`MemoryReplayGuard`] of [`replay_capacity`](Self::replay_capacity) on this
    /// verifier's clock, which remembers uses for one replica only; use a shared
    /// store (`RedisReplayGuard`, feature `redis`) when several replicas serve a
    /// single-use route.
    pub fn replay_guard(mut self, guard: impl ReplayGuard) -> Self {
        self.replay = Some(Arc::new(guard));
        self
    }

    /// How many live single-use mandates the default in-memory guard records.
    /// Default 1,000,000.
    ///
    /// A recorded mandate is kept until its `exp` plus the leeway, never evicted
    /// earlier; when the guard is full, new single-use mandates are refused with 503
    /// `revocation_unavailable` (and `Retry-After`) until recorded ones expire. Each
    /// live entry costs about 200 bytes, so the default can grow to about 200 MB;
    /// size it above (single-use requests per second × mandate lifetime). Must be
    /// positive, and cannot be combined with [`replay_guard`](Self::replay_guard)
    /// (size that guard yourself).
    pub fn replay_capacity(mut self, capacity: u64) -> Self {
        self.replay_capacity = Some(capacity);
        self
    }

    /// How a [`MandateLayer`](crate::layer::MandateLayer) spells denials in its
    /// default JSON body. Default [`CodeSpelling::Documented`]: the documented codes
    /// (`zone_invalid`, `scope_insufficient`, `agent_identity_required`) and `hint`.
    ///
    /// [`CodeSpelling::CaracalSdk`] answers as Caracal's TypeScript, Go and Python
    /// verifier packages do (`invalid_zone`, `insufficient_scope`,
    /// `session_required`, and `error_hint`), for clients written against them. It
    /// changes only the body: [`AuthError::code`](crate::AuthError::code), the status, the trace events and
    /// the `WWW-Authenticate` header (RFC 6750's own `invalid_token` and
    /// `insufficient_scope`) are the same under both. A custom
    /// [`Renderer`](crate::layer::Renderer) can read it with
    /// [`Verifier::code_spelling`] and [`AuthError::to_json_spelled`](crate::AuthError::to_json_spelled).
    pub fn code_spelling(mut self, spelling: CodeSpelling) -> Self {
        self.code_spelling = spelling;
        self
    }

    /// Start `source` with the verifier: a revocation feed of your own, or any other
    /// work that runs beside the request path (see [`source`](crate::source)). May be
    /// called more than once; sources start in the order they were added, and only
    /// one of them may keep the revocation set current. The Redis feed (feature
    /// `redis`) is added with `redis_revocations`, or by
    /// [`from_env`](Self::from_env).
    pub fn source(mut self, source: impl Source) -> Self {
        self.sources.push(Box::new(source));
        self
    }

    /// Build the verifier. Fetches no keys (call [`Verifier::warm_up`] for that),
    /// waits on no network and needs no runtime. It starts each
    /// [source](Self::source), such as the Redis feed's thread, which connects and
    /// catches up in the background.
    pub fn build(self) -> Result<Verifier, ConfigError> {
        let issuer = self.issuer.ok_or(ConfigError::Missing("issuer"))?;
        let audience = self.audience.ok_or(ConfigError::Missing("audience"))?;
        let zone = self.zone.ok_or(ConfigError::Missing("zone"))?;
        if audience.is_empty() {
            return Err(ConfigError::invalid("audience", "must not be empty"));
        }
        if zone.is_empty() {
            return Err(ConfigError::invalid("zone", "must not be empty"));
        }
        if self.token_use.is_empty() {
            return Err(ConfigError::invalid("token_use", "must not be empty"));
        }
        if self.algorithms.is_empty() {
            return Err(ConfigError::invalid(
                "algorithms",
                "at least one is required",
            ));
        }
        if self.max_token_bytes == 0 {
            return Err(ConfigError::invalid("max_token_bytes", "must be positive"));
        }
        if self.jwks_max_staleness < self.jwks_ttl {
            return Err(ConfigError::invalid(
                "jwks_max_staleness",
                "must be at least jwks_ttl",
            ));
        }
        let url = jwks_url(&issuer, &zone)?;
        let fetcher: Arc<dyn JwksFetcher> = match self.fetcher {
            Some(f) => f,
            None => Arc::new(HttpFetcher::builder().timeout(self.fetch_timeout).build()?),
        };
        let keys = Arc::new(KeyCache::new(
            url,
            fetcher,
            KeyCacheConfig {
                ttl: self.jwks_ttl,
                max_staleness: self.jwks_max_staleness,
                cooldown: self.jwks_cooldown,
                fetch_timeout: self.fetch_timeout,
                max_bytes: self.max_jwks_bytes,
                algorithms: self.algorithms.clone(),
            },
            self.clock.clone(),
        ));
        let revocations = self.revocations.unwrap_or_else(|| {
            RevocationSet::builder()
                .shared_clock(self.clock.clone())
                .build()
        });
        let replay: Arc<dyn ReplayGuard> = match (self.replay, self.replay_capacity) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "replay_capacity",
                    "applies only to the default in-memory guard, not to one set with replay_guard",
                ));
            }
            (_, Some(0)) => {
                return Err(ConfigError::invalid("replay_capacity", "must be positive"));
            }
            (Some(guard), None) => guard,
            (None, capacity) => Arc::new(MemoryReplayGuard::with_clock_shared(
                capacity.unwrap_or(DEFAULT_REPLAY_CAPACITY),
                self.clock.clone(),
            )),
        };
        let started = source::start_all(
            self.sources,
            source::VerifierIdentity {
                zone: &zone,
                audience: &audience,
                revocations: &revocations,
                clock: &self.clock,
                keys: &keys,
                replay: &replay,
            },
        )?;
        Ok(Verifier {
            inner: Arc::new(Inner {
                policy: PolicyId::fresh(),
                issuer,
                audience,
                zone,
                token_use: self.token_use,
                leeway: self.leeway.as_secs(),
                max_token_bytes: self.max_token_bytes,
                algorithms: self.algorithms,
                keys,
                revocations,
                cache: self
                    .cache
                    .then(|| MandateCache::new(self.cache_entries, self.cache_bytes)),
                replay,
                clock: self.clock,
                code_spelling: self.code_spelling,
                sources: started.handles,
                actions: started.actions,
                sample_latency: started.sample_latency,
                manifest_sha: std::sync::OnceLock::new(),
            }),
        })
    }
}

/// Validate the issuer and build `{issuer}/.well-known/jwks.json?zone_id={zone}`.
fn jwks_url(issuer: &str, zone: &str) -> Result<String, ConfigError> {
    let bad = |reason: &str| ConfigError::invalid("issuer", reason);
    let parsed = reqwest::Url::parse(issuer).map_err(|_| bad("not a URL"))?;
    let loopback = match parsed.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => return Err(bad("has no host")),
    };
    match parsed.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(bad(
                "must use https (plain http is allowed only for loopback hosts)",
            ));
        }
        _ => return Err(bad("must be an https URL")),
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("must not have a query or fragment"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("must not carry credentials"));
    }
    let mut url = reqwest::Url::parse(&format!(
        "{}/.well-known/jwks.json",
        issuer.trim_end_matches('/')
    ))
    .map_err(|_| bad("not a URL"))?;
    url.query_pairs_mut().append_pair("zone_id", zone);
    Ok(url.into())
}
