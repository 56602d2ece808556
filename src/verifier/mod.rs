//! The verifier: what it holds, and its public face.
//!
//! - [`pipeline`](self::pipeline): the checks of `verify`, top to bottom in their order;
//! - `builder`: [`VerifierBuilder`], its defaults and their validation;
//! - `env`: the builder's settings from the environment.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::action::ActionSink;
use crate::alg::Algorithm;
use crate::cache::MandateCache;
use crate::clock::SharedClock;
use crate::error::{AuthError, CodeSpelling, ConfigError};
use crate::jwks::KeyCache;
use crate::mandate::Mandate;
use crate::replay::ReplayGuard;
use crate::revocation::RevocationSet;
use crate::source::SourceHandle;

mod builder;
mod env;
mod pipeline;

pub use builder::{
    DEFAULT_JWKS_COOLDOWN, DEFAULT_JWKS_MAX_STALENESS, DEFAULT_JWKS_TTL, DEFAULT_LEEWAY,
    DEFAULT_MAX_TOKEN_BYTES, VerifierBuilder,
};

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
    pub(crate) token_use: String,
    pub(crate) leeway: u64,
    pub(crate) max_token_bytes: usize,
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) keys: Arc<KeyCache>,
    pub(crate) revocations: RevocationSet,
    pub(crate) cache: Option<MandateCache>,
    pub(crate) replay: Arc<dyn ReplayGuard>,
    pub(crate) clock: SharedClock,
    code_spelling: CodeSpelling,
    /// Started by `build`; dropped (and so stopped) with the last clone.
    sources: Vec<SourceHandle>,
    /// Where a layer sends its action results, when a source attached a sink.
    pub(crate) actions: Option<Arc<dyn ActionSink>>,
    /// Whether verifications are timed for a metrics publisher.
    pub(crate) sample_latency: bool,
    /// The manifest's SHA-256, computed on first use (action results carry it).
    pub(crate) manifest_sha: std::sync::OnceLock<Arc<str>>,
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
    /// The revocation set is current (no feed attached, or the feed is fresh) and
    /// within its capacity.
    pub revocation: bool,
    /// Every [source](crate::source) started with the verifier is ready.
    pub sources: bool,
}

impl Readiness {
    /// Everything is ready.
    pub fn is_ready(&self) -> bool {
        self.keys && self.revocation && self.sources
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
            sources: self.inner.sources.iter().all(SourceHandle::is_ready),
        }
    }

    /// Shorthand for `readiness().is_ready()`.
    pub fn is_ready(&self) -> bool {
        self.readiness().is_ready()
    }

    /// The [sources](crate::source) started by the builder, in the order they were
    /// added: their status, and graceful shutdown.
    pub fn sources(&self) -> &[SourceHandle] {
        &self.inner.sources
    }

    /// The source that keeps the revocation set current (such as the Redis feed),
    /// if one was started: its [`status`](SourceHandle::status) carries the feed's
    /// freshness, lag and counts.
    pub fn revocation_feed(&self) -> Option<&SourceHandle> {
        self.inner.sources.iter().find(|s| s.is_revocation_feed())
    }

    /// Stop every source and wait for them, in reverse order of starting. Call it
    /// when the server is shutting down, after it stopped accepting requests: a
    /// stopped revocation feed is stale, so verification then fails closed.
    pub async fn shutdown(&self) {
        for source in self.inner.sources.iter().rev() {
            source.shutdown().await;
        }
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
                sources: Vec::new(),
                actions: i.actions.clone(),
                sample_latency: i.sample_latency,
                manifest_sha: std::sync::OnceLock::new(),
            }),
        }
    }
}
