//! The verifier: configuration, and the `verify` pipeline.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::alg::Algorithm;
use crate::cache::{DEFAULT_CACHE_BYTES, DEFAULT_CACHE_ENTRIES, MandateCache};
use crate::claims::parse_payload;
use crate::clock::{Clock, SharedClock, SystemClock};
use crate::error::{AnchorKind, AuthError, CodeSpelling, ConfigError, InvalidReason};
use crate::jwks::{
    DEFAULT_FETCH_TIMEOUT, DEFAULT_MAX_JWKS_BYTES, HttpFetcher, JwksFetcher, KeyCache,
    KeyCacheConfig,
};
use crate::mandate::{Claims, Mandate, MandateInner};
use crate::replay::{DEFAULT_REPLAY_CAPACITY, MemoryReplayGuard, ReplayGuard};
use crate::requirements::Requirements;
use crate::revocation::{Anchor, RevocationSet, fingerprint};
use crate::token::{self, HeaderAlg};

/// The default clock leeway (60 s).
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
/// The default token size cap (16 KiB): room for real mandates, which list every
/// granted resource in both `aud` and `target` (40–60 UUID resources make 9–12 KB
/// tokens; a ten-hop chain with UUID ids is about 4 KB).
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 16 * 1024;
/// The longest a verified mandate stays in the cache, whatever its `exp`.
const MAX_CACHE_TTL_SECS: u64 = 24 * 3600;

/// The default JWKS cache TTL (5 min).
pub const DEFAULT_JWKS_TTL: Duration = Duration::from_secs(300);
/// The default maximum age of the last good keyset while refreshes fail (30 min).
pub const DEFAULT_JWKS_MAX_STALENESS: Duration = Duration::from_secs(1800);
/// The default minimum interval between JWKS fetch attempts (2 s).
pub const DEFAULT_JWKS_COOLDOWN: Duration = Duration::from_secs(2);

/// The verification policy a mandate was verified under. A [`MandateLayer`]
/// reuses a mandate from the request extensions only when it carries its own
/// verifier's policy.
///
/// The policy is everything that decides whether a token is accepted: issuer,
/// audience, zone, `use`, leeway, size cap, algorithms, key source and revocation
/// set. `build` gives each verifier a new id, and clones share it. Separately built
/// verifiers never share one, even with equal settings: each has its own key
/// cache, so their key sources are not the same object, and treating them as
/// different is the safe answer.
///
/// [`MandateLayer`]: crate::layer::MandateLayer
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PolicyId(u64);

impl PolicyId {
    pub(crate) fn fresh() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        PolicyId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

pub(crate) struct Inner {
    policy: PolicyId,
    pub(crate) issuer: String,
    pub(crate) audience: String,
    pub(crate) zone: String,
    token_use: String,
    leeway: u64,
    max_token_bytes: usize,
    algorithms: Vec<Algorithm>,
    keys: Arc<KeyCache>,
    pub(crate) revocations: RevocationSet,
    cache: Option<MandateCache>,
    pub(crate) replay: Arc<dyn ReplayGuard>,
    pub(crate) clock: SharedClock,
    code_spelling: CodeSpelling,
    #[cfg(feature = "redis")]
    feed: Option<crate::redis::FeedHandle>,
}

/// Verifies Caracal mandates for one issuer, audience and zone. Cheap to clone.
///
/// ```
/// use caracal_verifier::{Requirements, Verifier};
/// use caracal_verifier::testing::TestIssuer;
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let sts = TestIssuer::start("zone-1").await?;
/// let verifier = Verifier::builder()
///     .issuer(sts.issuer_url())
///     .audience("resource://api")
///     .zone("zone-1")
///     .build()?;
/// let token = sts.mandate().scopes(["tickets:read"]).sign();
/// let mandate = verifier.verify(&token, &Requirements::new().scopes(["tickets:read"])).await?;
/// assert_eq!(mandate.zone_id(), "zone-1");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Verifier {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.inner.issuer)
            .field("audience", &self.inner.audience)
            .field("zone", &self.inner.zone)
            .field("algorithms", &self.inner.algorithms)
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

/// Readiness, for `/readyz`-style probes.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// Signing keys are held and within the maximum staleness.
    pub keys: bool,
    /// The revocation set is current (no feed attached, or the feed is fresh).
    pub revocation: bool,
}

impl Readiness {
    /// Everything is ready.
    pub fn is_ready(&self) -> bool {
        self.keys && self.revocation
    }
}

impl Verifier {
    /// Settings for a verifier.
    pub fn builder() -> VerifierBuilder {
        VerifierBuilder::default()
    }

    /// A verifier configured from the environment; see [`VerifierBuilder::from_env`].
    pub fn from_env() -> Result<Verifier, ConfigError> {
        VerifierBuilder::from_env()?.build()
    }

    /// The configured issuer.
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// The configured zone.
    pub fn zone(&self) -> &str {
        &self.inner.zone
    }

    /// The configured audience.
    pub fn audience(&self) -> &str {
        &self.inner.audience
    }

    /// How a [`MandateLayer`](crate::layer::MandateLayer)'s default JSON body spells
    /// denials; see [`VerifierBuilder::code_spelling`].
    pub fn code_spelling(&self) -> CodeSpelling {
        self.inner.code_spelling
    }

    /// The revocation set this verifier checks. Apply events to it directly for
    /// single-process deployments, webhooks and tests.
    pub fn revocations(&self) -> &RevocationSet {
        &self.inner.revocations
    }

    /// Fetch the zone keyset now. Call at startup so the first request does not wait;
    /// an `Err` (503 `sts_unavailable`) is not fatal, later requests retry.
    pub async fn warm_up(&self) -> Result<(), AuthError> {
        self.inner.keys.warm_up().await
    }

    /// Whether keys have been fetched and the revocation feed (if any) is current.
    pub fn readiness(&self) -> Readiness {
        Readiness {
            keys: self.inner.keys.is_ready(),
            revocation: self.inner.revocations.is_current(),
        }
    }

    /// Shorthand for `readiness().is_ready()`.
    pub fn is_ready(&self) -> bool {
        self.readiness().is_ready()
    }

    /// The Redis revocation feed started by the builder, if any: its status, and
    /// graceful shutdown.
    #[cfg(feature = "redis")]
    pub fn revocation_feed(&self) -> Option<&crate::redis::FeedHandle> {
        self.inner.feed.as_ref()
    }

    /// How many JWKS fetches this verifier has started.
    pub fn jwks_fetches(&self) -> u64 {
        self.inner.keys.fetch_count()
    }

    /// Age of the cached keyset, if any.
    pub fn jwks_age(&self) -> Option<Duration> {
        self.inner.keys.age()
    }

    /// How many JWKS fetch attempts this verifier has finished, whatever their
    /// outcome: a keyset installed, a failure (a refused answer or document, a
    /// transport error), or a fetch abandoned at the
    /// [fetch deadline](VerifierBuilder::jwks_fetch_timeout). The first fetch and
    /// [`warm_up`](Self::warm_up) count too; [`jwks_fetches`](Self::jwks_fetches)
    /// counts the attempts started.
    ///
    /// An attempt is counted once its outcome is in place: a fetched keyset is
    /// installed and the keys that left it are retired (with the mandates cached
    /// under them), or a failure has left the last good keys as they were. A fetch
    /// made in line by a request that is cancelled before the fetch ends never
    /// finishes, and is not counted.
    pub fn jwks_refreshes(&self) -> u64 {
        self.inner.keys.finished_count()
    }

    /// Wait until more than `n` JWKS fetch attempts have finished (see
    /// [`jwks_refreshes`](Self::jwks_refreshes)); ready at once if they already
    /// have.
    ///
    /// Read `n` from `jwks_refreshes` before whatever starts the fetch (a request
    /// past the keyset's TTL, an unknown `kid`, a warm-up), then await this to know
    /// that fetch has completed and its outcome is in place, for example in a
    /// readiness or integration test, instead of sleeping. It waits for as long as
    /// no attempt finishes, so bound it with a timeout.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// use caracal_verifier::{BoxFuture, FetchError, JwksFetcher, Verifier};
    ///
    /// /// A keyset endpoint that is down.
    /// #[derive(Debug)]
    /// struct Down;
    ///
    /// impl JwksFetcher for Down {
    ///     fn fetch<'a>(
    ///         &'a self,
    ///         _url: &'a str,
    ///         _max_bytes: usize,
    ///     ) -> BoxFuture<'a, Result<Vec<u8>, FetchError>> {
    ///         Box::pin(async { Err(FetchError::new("connect failed")) })
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let verifier = Verifier::builder()
    ///     .issuer("https://sts.example.com")
    ///     .audience("resource://api")
    ///     .zone("zone-1")
    ///     .jwks_fetcher(Down)
    ///     .build()
    ///     .unwrap();
    /// let before = verifier.jwks_refreshes();
    /// // A fetch started elsewhere: here a warm-up on another task.
    /// let v = verifier.clone();
    /// tokio::spawn(async move {
    ///     let _ = v.warm_up().await;
    /// });
    /// tokio::time::timeout(Duration::from_secs(5), verifier.jwks_refreshed_since(before))
    ///     .await
    ///     .expect("the fetch finished");
    /// // It failed, and that is settled: still no keys.
    /// assert_eq!(verifier.jwks_refreshes(), before + 1);
    /// assert!(!verifier.readiness().keys);
    /// # }
    /// ```
    pub async fn jwks_refreshed_since(&self, n: u64) {
        self.inner.keys.finished_since(n).await
    }

    /// Verify a mandate and check it against a route's requirements.
    ///
    /// The checks run in Caracal's order, and the first failure is the answer:
    ///
    /// 1. the token: size (413 `payload_too_large`), structure, header, key and
    ///    signature (401 `invalid_token`);
    /// 2. registered claims: `exp` (no leeway), `nbf` and `iat` (with the leeway),
    ///    `iss`, `aud`, then `use` (401 `invalid_token`);
    /// 3. `zone_id` (401 `zone_invalid`, also when it is missing or not a string);
    /// 4. the route: its [`min_remaining`](Requirements::min_remaining) window, if
    ///    any (401 `invalid_token`, reason `expiring`), then
    ///    [`Requirements::check`]: scopes (403 `scope_insufficient`),
    ///    agent session, delegation, chain contents, hop limit, then targets
    ///    (401 `invalid_token`, reason `target`);
    /// 5. revocation anchors (401 `session_revoked`, or 503 when the feed is not
    ///    current), then the delegation epoch (401 `delegation_stale`);
    /// 6. for single-use routes, the replay guard.
    ///
    /// So a mandate lacking both a required scope and a target is 403
    /// `scope_insufficient`, and a revoked mandate that also fails the route gets
    /// the route's answer, as from Caracal's own guard.
    pub async fn verify(&self, token: &str, reqs: &Requirements) -> Result<Mandate, AuthError> {
        // One clock read for the whole decision; the times were just checked by
        // `authenticate_at`, so only the route and revocation remain.
        let now = self.inner.clock.now().as_secs();
        let mandate = self.authenticate_at(token, now).await?;
        self.route_and_revocation(&mandate, reqs, now)?;
        if reqs.is_single_use() {
            self.consume(&mandate).await?;
        }
        Ok(mandate)
    }

    /// Verify a mandate's signature and claims (no route requirements, no revocation).
    pub async fn authenticate(&self, token: &str) -> Result<Mandate, AuthError> {
        self.authenticate_at(token, self.inner.clock.now().as_secs())
            .await
    }

    async fn authenticate_at(&self, token: &str, now: u64) -> Result<Mandate, AuthError> {
        let inner = &*self.inner;
        if token.is_empty() {
            return Err(AuthError::MissingToken);
        }
        if token.len() > inner.max_token_bytes {
            return Err(AuthError::PayloadTooLarge {
                size: token.len(),
                limit: inner.max_token_bytes,
            });
        }
        // The token is hashed once for the lookup and the insert or removal after it.
        let cached = inner.cache.as_ref().map(|c| (c, c.slot(token)));
        if let Some((cache, slot)) = cached
            && let Some(hit) = cache.get_at(slot, token, now)
        {
            let key = &hit.0.key;
            if !key.is_retired() {
                self.check_times(&hit.0.claims, now)?;
                inner.keys.ensure_fresh().await?;
                // The refresh that may just have run can have retired the key.
                if !key.is_retired() {
                    return Ok(hit);
                }
            }
            cache.remove_at(slot, token);
        }
        let mandate = self.verify_cold(token, now).await?;
        if let Some((cache, slot)) = cached {
            let c = &mandate.0.claims;
            // A mandate is dead at `exp` (no leeway), so the entry goes then. `exp` is
            // attacker-influenced only within a valid signature, but an STS bug could
            // still send a far-future value: never keep an entry longer than a day
            // (expiry is checked on every hit regardless).
            let expires_at = c.exp.min(now.saturating_add(MAX_CACHE_TTL_SECS));
            cache.insert_at(slot, token, mandate.clone(), expires_at, now);
        }
        Ok(mandate)
    }

    async fn verify_cold(&self, token: &str, now: u64) -> Result<Mandate, AuthError> {
        let inner = &*self.inner;
        let parts = token::split(token)?;
        let header = token::parse_header_memo(parts.header)?;
        let alg = match header.alg {
            HeaderAlg::Known(a) if inner.algorithms.contains(&a) => a,
            _ => return Err(AuthError::invalid(InvalidReason::Algorithm)),
        };
        let key = inner.keys.key_for(&header.kid).await?;
        // The key pins the algorithm; the header must agree with it.
        if key.alg() != alg {
            return Err(AuthError::invalid(InvalidReason::Algorithm));
        }
        let mut buf = [0u8; 1024];
        let sig = token::decode_into(parts.signature, &mut buf)?;
        if alg.signature_len().is_some_and(|n| n != sig.len()) {
            return Err(AuthError::invalid(InvalidReason::Signature));
        }
        if !key.verify(parts.signing_input.as_bytes(), sig) {
            return Err(AuthError::invalid(InvalidReason::Signature));
        }
        let claims = parse_payload(parts.payload)?;
        self.check_claims(&claims, now)?;
        let anchors = anchors_of(&claims);
        Ok(Mandate(Arc::new(MandateInner {
            claims,
            key,
            alg,
            anchors,
            policy: inner.policy,
        })))
    }

    /// `exp` is exact: a mandate is dead at `exp`, as Caracal re-checks active
    /// authority with no leeway. The leeway covers `nbf` and `iat` only.
    fn check_times(&self, c: &Claims, now: u64) -> Result<(), AuthError> {
        let leeway = self.inner.leeway;
        if now >= c.exp {
            return Err(AuthError::invalid(InvalidReason::Expired));
        }
        if c.nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
            return Err(AuthError::invalid(InvalidReason::NotYetValid));
        }
        if c.iat > now.saturating_add(leeway) {
            return Err(AuthError::invalid(InvalidReason::IssuedInFuture));
        }
        Ok(())
    }

    fn check_claims(&self, c: &Claims, now: u64) -> Result<(), AuthError> {
        let inner = &*self.inner;
        self.check_times(c, now)?;
        if c.iss() != inner.issuer {
            return Err(AuthError::invalid(InvalidReason::Issuer));
        }
        if !c.aud().contains(&inner.audience) {
            return Err(AuthError::invalid(InvalidReason::Audience));
        }
        if c.token_use() != inner.token_use {
            return Err(AuthError::invalid(InvalidReason::Use));
        }
        if c.zone_id() != inner.zone {
            return Err(AuthError::ZoneInvalid);
        }
        Ok(())
    }

    /// Whether `mandate` was verified under this verifier's policy (by this verifier
    /// or a clone of it), so a stacked layer may reuse it without verifying again.
    pub(crate) fn verified_here(&self, mandate: &Mandate) -> bool {
        mandate.0.policy == self.inner.policy
    }

    /// A verifier with the same policy and another replay guard: two layers that
    /// share a policy but record single uses in different stores.
    #[cfg(test)]
    pub(crate) fn with_replay_guard_for_tests(&self, guard: impl ReplayGuard) -> Verifier {
        let i = &*self.inner;
        Verifier {
            inner: Arc::new(Inner {
                policy: i.policy,
                issuer: i.issuer.clone(),
                audience: i.audience.clone(),
                zone: i.zone.clone(),
                token_use: i.token_use.clone(),
                leeway: i.leeway,
                max_token_bytes: i.max_token_bytes,
                algorithms: i.algorithms.clone(),
                keys: Arc::clone(&i.keys),
                revocations: i.revocations.clone(),
                cache: None,
                replay: Arc::new(guard),
                clock: Arc::clone(&i.clock),
                code_spelling: i.code_spelling,
                #[cfg(feature = "redis")]
                feed: None,
            }),
        }
    }

    /// Check a verified mandate against a route's requirements and revocation, in
    /// [`verify`](Self::verify)'s order. Synchronous and cheap: one read lock and a few hash probes.
    pub fn authorize(&self, mandate: &Mandate, reqs: &Requirements) -> Result<(), AuthError> {
        let now = self.inner.clock.now().as_secs();
        // A mandate from the extensions may come from another layer: re-check expiry.
        self.check_times(&mandate.0.claims, now)?;
        self.route_and_revocation(mandate, reqs, now)
    }

    /// The route's requirements, then revocation: Caracal checks revocation last.
    fn route_and_revocation(
        &self,
        mandate: &Mandate,
        reqs: &Requirements,
        now: u64,
    ) -> Result<(), AuthError> {
        reqs.check_remaining(mandate, now)?;
        reqs.check(mandate)?;
        self.inner.revocations.check(
            &mandate.0.anchors,
            mandate.zone_id(),
            mandate.delegation_graph_epoch(),
            now,
        )
    }

    /// Record a single-use mandate's use. The second call for the same `iss` and
    /// `jti` is 401 `invalid_token` (`replayed`); a guard failure is 503.
    pub async fn consume(&self, mandate: &Mandate) -> Result<(), AuthError> {
        // The mandate dies at `exp`; the use is kept a leeway longer so replicas
        // sharing a guard, whose clocks may lag this one, still see it.
        let until = mandate.expires_at().saturating_add(self.inner.leeway);
        match self
            .inner
            .replay
            .first_use(mandate.issuer(), mandate.jti(), until)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(AuthError::invalid(InvalidReason::Replayed)),
            Err(e) => {
                tracing::error!(error = %e, "replay guard unavailable; failing closed");
                Err(AuthError::RevocationUnavailable)
            }
        }
    }
}

/// Every anchor of a mandate, fingerprinted and de-duplicated: the mandate's own
/// identities, then every upstream identity (chain hops, `delegation_path` edges,
/// `source_session_id`). An id found twice keeps the kind it was first found as.
fn anchors_of(c: &Claims) -> Vec<Anchor> {
    let mut out: Vec<Anchor> =
        Vec::with_capacity(5 + 2 * c.chain().map_or(0, |h| h.len()) + c.delegation_path().len());
    let mut push = |id: Option<&str>, kind: AnchorKind| {
        if let Some(id) = id {
            let fp = fingerprint(id);
            if !out.iter().any(|a| a.fp == fp) {
                out.push(Anchor { fp, kind });
            }
        }
    };
    push(Some(c.sid()), AnchorKind::Sid);
    push(Some(c.root_sid()), AnchorKind::RootSid);
    push(c.agent_session_id(), AnchorKind::AgentSession);
    push(c.delegation_edge_id(), AnchorKind::DelegationEdge);
    for hop in c.chain().into_iter().flatten() {
        push(hop.agent_session_id(), AnchorKind::ChainSession);
        push(hop.delegation_edge_id(), AnchorKind::ChainEdge);
    }
    for edge in c.delegation_path().iter() {
        push(Some(edge), AnchorKind::PathEdge);
    }
    push(c.source_session_id(), AnchorKind::SourceSession);
    // Kept as allocated: shrinking to fit would reallocate on most mandates.
    out
}

/// Settings for a [`Verifier`]. `issuer`, `audience` and `zone` are required; every
/// other setting has a secure default, stated on its setter.
#[must_use]
pub struct VerifierBuilder {
    issuer: Option<String>,
    audience: Option<String>,
    zone: Option<String>,
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
    code_spelling: CodeSpelling,
    #[cfg(feature = "redis")]
    redis: Option<crate::redis::RedisRevocations>,
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
            #[cfg(feature = "redis")]
            redis: None,
        }
    }
}

/// Variables that configure the Redis revocation feed: set in a build without the
/// `redis` feature, they are refused rather than ignored.
#[cfg(not(feature = "redis"))]
const REDIS_VARS: [&str; 2] = ["CARACAL_REDIS_URL", "STREAMS_HMAC_KEY"];

fn env_parse<T: std::str::FromStr>(
    get: &dyn Fn(&str) -> Option<String>,
    var: &'static str,
) -> Result<Option<T>, ConfigError> {
    match get(var) {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| ConfigError::Env {
            var,
            reason: "not a valid number".into(),
        }),
    }
}

impl VerifierBuilder {
    /// Settings from the environment:
    ///
    /// | variable | setting | default |
    /// | --- | --- | --- |
    /// | `CARACAL_STS_URL` | [`issuer`](Self::issuer) | required |
    /// | `CARACAL_ZONE_ID` | [`zone`](Self::zone) | required |
    /// | `CARACAL_AUDIENCE` | [`audience`](Self::audience) | required |
    /// | `CARACAL_TOKEN_USE` | [`token_use`](Self::token_use) | `resource` |
    /// | `CARACAL_LEEWAY_SECS` | [`leeway`](Self::leeway) | 60 |
    /// | `CARACAL_MAX_TOKEN_BYTES` | [`max_token_bytes`](Self::max_token_bytes) | 16384 |
    /// | `CARACAL_JWKS_TTL_SECS` | [`jwks_ttl`](Self::jwks_ttl) | 300 |
    /// | `CARACAL_JWKS_MAX_STALENESS_SECS` | [`jwks_max_staleness`](Self::jwks_max_staleness) | 1800 |
    /// | `CARACAL_JWKS_COOLDOWN_SECS` | [`jwks_cooldown`](Self::jwks_cooldown) | 2 |
    /// | `CARACAL_MANDATE_CACHE` | [`mandate_cache`](Self::mandate_cache) (`on`/`off`) | `on` |
    /// | `CARACAL_CODE_SPELLING` | [`code_spelling`](Self::code_spelling) (`documented`/`sdk`) | `documented` |
    ///
    /// With the `redis` feature, `CARACAL_REDIS_URL` and the variables next to it
    /// attach the Redis revocation feed (see `RedisRevocations::from_lookup`). Without
    /// the feature, a non-empty `CARACAL_REDIS_URL` or `STREAMS_HMAC_KEY` is an error
    /// ([`ConfigError::Env`] naming it) rather than a verifier that silently runs
    /// without the revocation feed it was configured for.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&|k| std::env::var(k).ok())
    }

    /// Like [`from_env`](Self::from_env), reading variables through `get`.
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let required = |var: &'static str| {
            get(var)
                .filter(|v| !v.trim().is_empty())
                .ok_or(ConfigError::Env {
                    var,
                    reason: "not set".into(),
                })
        };
        let mut b = Self::default()
            .issuer(required("CARACAL_STS_URL")?)
            .zone(required("CARACAL_ZONE_ID")?)
            .audience(required("CARACAL_AUDIENCE")?);
        if let Some(u) = get("CARACAL_TOKEN_USE").filter(|v| !v.is_empty()) {
            b = b.token_use(u);
        }
        if let Some(s) = env_parse::<u64>(get, "CARACAL_LEEWAY_SECS")? {
            b = b.leeway(Duration::from_secs(s));
        }
        if let Some(n) = env_parse::<usize>(get, "CARACAL_MAX_TOKEN_BYTES")? {
            b = b.max_token_bytes(n);
        }
        if let Some(s) = env_parse::<u64>(get, "CARACAL_JWKS_TTL_SECS")? {
            b = b.jwks_ttl(Duration::from_secs(s));
        }
        if let Some(s) = env_parse::<u64>(get, "CARACAL_JWKS_MAX_STALENESS_SECS")? {
            b = b.jwks_max_staleness(Duration::from_secs(s));
        }
        if let Some(s) = env_parse::<u64>(get, "CARACAL_JWKS_COOLDOWN_SECS")? {
            b = b.jwks_cooldown(Duration::from_secs(s));
        }
        match get("CARACAL_MANDATE_CACHE").as_deref().map(str::trim) {
            None | Some("") | Some("on") | Some("true") | Some("1") => {}
            Some("off") | Some("false") | Some("0") => b = b.mandate_cache(false),
            Some(_) => {
                return Err(ConfigError::Env {
                    var: "CARACAL_MANDATE_CACHE",
                    reason: "expected on or off".into(),
                });
            }
        }
        match get("CARACAL_CODE_SPELLING").as_deref().map(str::trim) {
            None | Some("") | Some("documented") => {}
            Some("sdk") => b = b.code_spelling(CodeSpelling::CaracalSdk),
            Some(_) => {
                return Err(ConfigError::Env {
                    var: "CARACAL_CODE_SPELLING",
                    reason: "expected documented or sdk".into(),
                });
            }
        }
        #[cfg(feature = "redis")]
        if let Some(redis) = crate::redis::RedisRevocations::from_lookup(get)? {
            b = b.redis_revocations(redis);
        }
        #[cfg(not(feature = "redis"))]
        for var in REDIS_VARS {
            if get(var).is_some_and(|v| !v.trim().is_empty()) {
                return Err(ConfigError::Env {
                    var,
                    reason: "set, but caracal-verifier was built without the `redis` \
                             feature, so the revocation feed would not run; enable the \
                             feature or unset the variable"
                        .into(),
                });
            }
        }
        Ok(b)
    }

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

    /// The store for [`Requirements::single_use`]. Default: a
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
    /// changes only the body: [`AuthError::code`], the status, the trace events and
    /// the `WWW-Authenticate` header (RFC 6750's own `invalid_token` and
    /// `insufficient_scope`) are the same under both. A custom
    /// [`Renderer`](crate::layer::Renderer) can read it with
    /// [`Verifier::code_spelling`] and [`AuthError::to_json_spelled`].
    pub fn code_spelling(mut self, spelling: CodeSpelling) -> Self {
        self.code_spelling = spelling;
        self
    }

    /// Keep the revocation set current from Caracal's Redis Streams. `build` then
    /// starts the consumer on its own thread and runtime. Default: no
    /// feed (revocations come only through [`Verifier::revocations`]).
    #[cfg(feature = "redis")]
    pub fn redis_revocations(mut self, feed: crate::redis::RedisRevocations) -> Self {
        self.redis = Some(feed);
        self
    }

    /// Build the verifier. Fetches no keys (call [`Verifier::warm_up`] for that) and
    /// does not wait on the network; with a Redis feed it starts the feed's thread,
    /// which connects and catches up in the background.
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
        #[cfg(feature = "redis")]
        let feed = match self.redis {
            Some(cfg) => Some(cfg.spawn(revocations.clone(), self.clock.clone())?),
            None => None,
        };
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
                #[cfg(feature = "redis")]
                feed,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    const BASE: [(&str, &str); 3] = [
        ("CARACAL_STS_URL", "https://sts.example.com"),
        ("CARACAL_ZONE_ID", "zone-1"),
        ("CARACAL_AUDIENCE", "resource://api"),
    ];

    #[test]
    fn from_lookup_reads_the_base_settings() {
        let b = VerifierBuilder::from_lookup(&lookup(&BASE)).unwrap();
        assert_eq!(b.zone.as_deref(), Some("zone-1"));
        // Empty values count as unset.
        let mut vars = BASE.to_vec();
        vars.push(("CARACAL_REDIS_URL", " "));
        vars.push(("STREAMS_HMAC_KEY", ""));
        assert!(VerifierBuilder::from_lookup(&lookup(&vars)).is_ok());
    }

    #[test]
    fn from_lookup_reads_the_code_spelling() {
        let spelling = |value: &str| {
            let mut vars = BASE.to_vec();
            vars.push(("CARACAL_CODE_SPELLING", value));
            VerifierBuilder::from_lookup(&lookup(&vars)).map(|b| b.code_spelling)
        };
        assert_eq!(
            VerifierBuilder::from_lookup(&lookup(&BASE))
                .unwrap()
                .code_spelling,
            CodeSpelling::Documented
        );
        assert_eq!(spelling("sdk"), Ok(CodeSpelling::CaracalSdk));
        assert_eq!(spelling(" sdk "), Ok(CodeSpelling::CaracalSdk));
        assert_eq!(spelling("documented"), Ok(CodeSpelling::Documented));
        assert_eq!(spelling(""), Ok(CodeSpelling::Documented));
        let err = spelling("SDKs").unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Env {
                    var: "CARACAL_CODE_SPELLING",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[cfg(not(feature = "redis"))]
    #[test]
    fn redis_settings_without_the_redis_feature_are_refused() {
        for (var, value) in [
            ("CARACAL_REDIS_URL", "redis://redis.internal:6379"),
            ("STREAMS_HMAC_KEY", "c2VjcmV0"),
        ] {
            let mut vars = BASE.to_vec();
            vars.push((var, value));
            let err = VerifierBuilder::from_lookup(&lookup(&vars)).unwrap_err();
            let ConfigError::Env { var: named, reason } = &err else {
                panic!("expected an Env error, got {err:?}");
            };
            assert_eq!(*named, var);
            assert!(reason.contains("without the `redis` feature"), "{reason}");
            assert!(!err.to_string().contains(value), "the value is not echoed");
        }
    }
}
