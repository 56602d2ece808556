//! Background sources: the seam through which a revocation feed plugs into a
//! [`Verifier`](crate::Verifier).
//!
//! A [`Source`] is started once, by [`VerifierBuilder::build`](crate::VerifierBuilder::build),
//! and runs beside the request path for the verifier's life: the Redis revocation feed
//! (feature `redis`) is one, and a feed of your own (a webhook receiver, another
//! broker) plugs in the same way through [`VerifierBuilder::source`](crate::VerifierBuilder::source).
//! The seam is not specific to revocation: an audit emitter attaches an
//! [`ActionSink`] through the same [`SourceContext`], and a source that needs
//! nothing from the verifier just starts and reports its status.
//!
//! The verifier owns each started source as a [`SourceHandle`], which gives its
//! [`status`](SourceHandle::status), its part of the [`Readiness`](crate::Readiness)
//! and its [`shutdown`](SourceHandle::shutdown).
//!
//! # A revocation feed
//!
//! A source that keeps the verifier's [`RevocationSet`] current asks the
//! [`SourceContext`] to attach a feed, under a [`FeedPolicy`] (how long the set may
//! go without a successful read), and reports through the [`FeedReporter`] it gets
//! back. The freshness rule lives in the verifier, not in the source: from the moment
//! a feed is attached, every check answers 503 `revocation_unavailable` until the
//! source reports it is connected, has caught up and has read within the maximum
//! staleness; and once the source is shut down or dropped, the set counts as stale
//! again. A source cannot widen authority by forgetting to report.
//!
//! ```
//! use std::time::Duration;
//! use caracal_verifier::source::{
//!     FeedPolicy, Running, Source, SourceContext,
//! };
//! use caracal_verifier::{BoxFuture, ConfigError, Verifier};
//!
//! /// A feed that receives revocations from somewhere else (here: nowhere).
//! struct MyFeed;
//!
//! #[derive(Debug)]
//! struct MyFeedTask;
//!
//! impl Running for MyFeedTask {
//!     fn name(&self) -> &str {
//!         "my-feed"
//!     }
//!     fn is_running(&self) -> bool {
//!         true
//!     }
//!     fn shutdown(&self) -> BoxFuture<'_, ()> {
//!         Box::pin(async {})
//!     }
//! }
//!
//! impl Source for MyFeed {
//!     fn start(self: Box<Self>, ctx: &mut SourceContext<'_>) -> Result<Box<dyn Running>, ConfigError> {
//!         let reporter = ctx.attach_revocation_feed(FeedPolicy::new(Duration::from_secs(30)))?;
//!         let set = ctx.revocations().clone();
//!         // A real feed hands `set` and `reporter` to its own task, which applies
//!         // events with `set.apply(..)` and reports each successful read.
//!         set.revoke("session-1");
//!         reporter.mark_read_ok();
//!         reporter.set_caught_up(true);
//!         Ok(Box::new(MyFeedTask))
//!     }
//! }
//!
//! let verifier = Verifier::builder()
//!     .issuer("https://sts.example.com")
//!     .audience("resource://api")
//!     .zone("zone-1")
//!     .source(MyFeed)
//!     .build()?;
//! let feed = verifier.revocation_feed().expect("attached");
//! assert_eq!(feed.name(), "my-feed");
//! assert!(feed.status().feed.expect("a revocation feed").fresh);
//! assert!(verifier.readiness().revocation);
//! # Ok::<(), ConfigError>(())
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::action::ActionSink;
use crate::clock::{Clock, SharedClock};
use crate::error::ConfigError;
use crate::future::BoxFuture;
use crate::jwks::KeyCache;
use crate::revocation::{DEFAULT_MAX_STALENESS, DropReason, FeedHealth, FeedStatus, RevocationSet};

/// Something that runs beside the request path for a verifier's life: started once
/// by [`VerifierBuilder::build`](crate::VerifierBuilder::build).
///
/// `start` must not wait on the network: spawn the work (a thread, or a task on a
/// runtime you own) and return. `build` needs no runtime, so `start` cannot rely on
/// one being current. A `start` that fails fails `build`.
pub trait Source: Send + 'static {
    /// Start the source. `ctx` gives what the verifier shares with its sources.
    fn start(self: Box<Self>, ctx: &mut SourceContext<'_>)
    -> Result<Box<dyn Running>, ConfigError>;
}

/// A started [`Source`], as the verifier holds it.
///
/// Dropping it (with the last clone of the verifier) must tell the work to stop.
pub trait Running: Send + Sync + fmt::Debug + 'static {
    /// A short, stable name for logs and status (`redis-revocations`).
    fn name(&self) -> &str;
    /// Whether the work is still running.
    fn is_running(&self) -> bool;
    /// Whether the verifier can rely on the source. Default: while it runs. A
    /// revocation feed's freshness is judged by the verifier on top of this (see the
    /// [module docs](self)), so a feed need not repeat it here.
    fn is_ready(&self) -> bool {
        self.is_running()
    }
    /// Stop the work and wait for it to finish. Must be idempotent.
    fn shutdown(&self) -> BoxFuture<'_, ()>;

    /// Named counts for the status document and the metrics publisher, such as an
    /// audit emitter's queue (`audit_queue_depth`, `audit_dropped_total`). A name
    /// ending in `_total` is a counter, any other a gauge; names are
    /// `[a-z0-9_]` and are published as `caracal_verifier_<name>`. Default: none.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// The started sources of one verifier, as its metrics publisher reads them.
pub(crate) type Siblings = Arc<std::sync::Mutex<Vec<std::sync::Weak<dyn Running>>>>;

/// What a verifier shares with the sources it starts.
pub struct SourceContext<'a> {
    revocations: &'a RevocationSet,
    clock: &'a SharedClock,
    /// The verifier's keyset, for the crate's own metrics publisher.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) keys: &'a Arc<KeyCache>,
    zone: &'a str,
    audience: &'a str,
    feed: Option<FeedReporter>,
    actions: &'a mut Option<Arc<dyn ActionSink>>,
    /// Set by the crate's metrics publisher: time this verifier's verifications.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) sample_latency: &'a mut bool,
    /// Every source of the verifier, as started so far (and later ones too).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) siblings: Siblings,
    /// The verifier's single-use guard.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) replay: &'a Arc<dyn crate::replay::ReplayGuard>,
}

impl fmt::Debug for SourceContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceContext")
            .field("feed_attached", &self.feed.is_some())
            .finish_non_exhaustive()
    }
}

impl<'a> SourceContext<'a> {
    fn new(
        verifier: VerifierIdentity<'a>,
        actions: &'a mut Option<Arc<dyn ActionSink>>,
        sample_latency: &'a mut bool,
        siblings: Siblings,
    ) -> Self {
        Self {
            revocations: verifier.revocations,
            clock: verifier.clock,
            keys: verifier.keys,
            zone: verifier.zone,
            audience: verifier.audience,
            feed: None,
            actions,
            sample_latency,
            siblings,
            replay: verifier.replay,
        }
    }

    /// The revocation set the verifier checks on every request.
    pub fn revocations(&self) -> &RevocationSet {
        self.revocations
    }

    /// The verifier's clock; a feed's staleness is measured on it.
    pub fn clock(&self) -> Arc<dyn Clock> {
        Arc::clone(self.clock)
    }

    /// The zone the verifier accepts mandates of: what an audit record names when
    /// the request carried no verified mandate.
    pub fn zone(&self) -> &str {
        self.zone
    }

    /// The verifier's audience: the resource it protects.
    pub fn audience(&self) -> &str {
        self.audience
    }

    /// Declare that this source keeps the revocation set current. From now on the
    /// set's checks fail closed (503 `revocation_unavailable`) unless the returned
    /// reporter says the feed is connected, caught up and read within
    /// [`FeedPolicy`]'s maximum staleness.
    ///
    /// A set is kept current by one feed: a second attachment (by another source, or
    /// by another verifier sharing the set) is refused.
    pub fn attach_revocation_feed(
        &mut self,
        policy: FeedPolicy,
    ) -> Result<FeedReporter, ConfigError> {
        let health = FeedHealth::new(self.clock.clone(), policy.max_staleness, policy.fail_open);
        self.revocations.attach_feed(health.clone()).map_err(|_| {
            ConfigError::invalid(
                "revocations",
                "this revocation set is already kept current by another feed",
            )
        })?;
        let reporter = FeedReporter(health);
        self.feed = Some(reporter.clone());
        Ok(reporter)
    }

    /// Send the verifier's [action results](crate::action) to `sink`: a
    /// [`MandateLayer`](crate::layer::MandateLayer) over this verifier then records
    /// one per request it decides. One sink per verifier; a second is refused.
    pub fn attach_action_sink(&mut self, sink: Arc<dyn ActionSink>) -> Result<(), ConfigError> {
        if self.actions.is_some() {
            return Err(ConfigError::invalid(
                "action_sink",
                "this verifier already sends its action results to another sink",
            ));
        }
        *self.actions = Some(sink);
        Ok(())
    }

    pub(crate) fn into_feed(self) -> Option<FeedReporter> {
        self.feed
    }
}

/// How a revocation feed's freshness is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct FeedPolicy {
    max_staleness: Duration,
    fail_open: bool,
}

impl Default for FeedPolicy {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_STALENESS)
    }
}

impl FeedPolicy {
    /// Fail closed once the last successful read is older than `max_staleness`.
    pub fn new(max_staleness: Duration) -> Self {
        Self {
            max_staleness,
            fail_open: false,
        }
    }

    /// Accept mandates unchecked against revocations while the feed is stale: a
    /// revoked mandate is then accepted during an outage. Logged at `warn` on every
    /// such check.
    pub fn dangerous_fail_open(mut self) -> Self {
        self.fail_open = true;
        self
    }

    /// The maximum staleness.
    pub fn max_staleness(&self) -> Duration {
        self.max_staleness
    }

    /// Whether the feed fails open.
    pub fn fails_open(&self) -> bool {
        self.fail_open
    }
}

/// How a revocation feed tells the verifier about its health; from
/// [`SourceContext::attach_revocation_feed`]. Cheap to clone; every method is a few
/// atomic operations.
#[derive(Clone)]
pub struct FeedReporter(Arc<FeedHealth>);

impl fmt::Debug for FeedReporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl FeedReporter {
    /// A read succeeded (an idle blocking read that timed out counts): the feed is
    /// connected, and its staleness restarts.
    pub fn mark_read_ok(&self) {
        self.0.mark_read_ok();
    }

    /// The connection is lost: the set is stale at once.
    pub fn mark_disconnected(&self) {
        self.0.mark_disconnected();
    }

    /// Whether the feed has read everything retained up to its position. A feed
    /// that is behind (at start, after a reset or a gap) is not fresh.
    pub fn set_caught_up(&self, caught_up: bool) {
        self.0.set_caught_up(caught_up);
    }

    /// An event was applied; `published_ms` is its publication time in
    /// milliseconds since the Unix epoch, when known (for the lag).
    pub fn record_applied(&self, published_ms: Option<u64>) {
        self.0.record_applied(published_ms);
    }

    /// A message was dropped (unsigned, forged, malformed, over a bound), for a
    /// reason not told apart; prefer [`record_dropped_for`](Self::record_dropped_for).
    pub fn record_dropped(&self) {
        self.0.record_dropped();
    }

    /// A message was dropped for `reason`.
    pub fn record_dropped_for(&self, reason: DropReason) {
        self.0.record_dropped_for(reason);
    }

    /// History was lost before the feed read it; the caller also sets
    /// [`set_caught_up(false)`](Self::set_caught_up) until it has re-read.
    pub fn record_gap(&self) {
        self.0.record_gap();
    }

    /// The source was found reset (deleted, recreated, rewound) and is re-read.
    pub fn record_reset(&self) {
        self.0.record_reset();
    }

    /// The feed's health as the verifier sees it.
    pub fn status(&self) -> FeedStatus {
        self.0.status()
    }

    /// Whether the set may be trusted now.
    pub fn is_fresh(&self) -> bool {
        self.0.is_fresh()
    }
}

/// A started source, owned by the verifier; see [`Verifier::sources`](crate::Verifier::sources).
///
/// Dropping it (that is, the last clone of the verifier) stops the source. If it kept
/// the revocation set current, the set counts as stale from then on, for good: a
/// verifier sharing the set fails closed rather than trust a feed that no longer
/// runs, and reports from the source's leftover work are ignored.
pub struct SourceHandle {
    running: Arc<dyn Running>,
    feed: Option<FeedReporter>,
}

impl fmt::Debug for SourceHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceHandle")
            .field("name", &self.name())
            .field("running", &self.running)
            .field("status", &self.status())
            .finish()
    }
}

impl SourceHandle {
    pub(crate) fn new(running: Arc<dyn Running>, feed: Option<FeedReporter>) -> Self {
        Self { running, feed }
    }

    /// The source's name.
    pub fn name(&self) -> &str {
        self.running.name()
    }

    /// Whether the source is still running.
    pub fn is_running(&self) -> bool {
        self.running.is_running()
    }

    /// Whether the verifier can rely on the source: it says it is ready and, for a
    /// revocation feed, the feed is fresh.
    pub fn is_ready(&self) -> bool {
        self.running.is_ready() && self.feed.as_ref().is_none_or(FeedReporter::is_fresh)
    }

    /// Whether this source keeps the verifier's revocation set current.
    pub fn is_revocation_feed(&self) -> bool {
        self.feed.is_some()
    }

    /// A snapshot for readiness probes and metrics.
    pub fn status(&self) -> SourceStatus {
        SourceStatus {
            running: self.is_running(),
            ready: self.is_ready(),
            feed: self.feed.as_ref().map(FeedReporter::status),
            counters: self.running.counters(),
        }
    }

    /// Stop the source and wait for it to finish. Idempotent. A revocation feed is
    /// stale afterwards, so verification fails closed (503 `revocation_unavailable`)
    /// unless its policy fails open: call it when the server is shutting down, after
    /// it stopped accepting requests.
    pub async fn shutdown(&self) {
        self.running.shutdown().await;
        if let Some(feed) = &self.feed {
            feed.0.close();
        }
    }
}

impl Drop for SourceHandle {
    fn drop(&mut self) {
        // The set may outlive the verifier: it must not keep looking current, even
        // if work the source left behind still reports reads.
        if let Some(feed) = &self.feed {
            feed.0.close();
        }
    }
}

/// A snapshot of a started source.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceStatus {
    /// Whether the source is still running.
    pub running: bool,
    /// Whether the verifier can rely on it ([`SourceHandle::is_ready`]).
    pub ready: bool,
    /// For a revocation feed, its health: freshness, lag, counts.
    pub feed: Option<FeedStatus>,
    /// The source's own counts ([`Running::counters`]).
    pub counters: Vec<(&'static str, u64)>,
}

/// What `start_all` started: the handles, and the action sink one of them attached.
pub(crate) struct Started {
    pub(crate) handles: Vec<SourceHandle>,
    pub(crate) actions: Option<Arc<dyn ActionSink>>,
    pub(crate) sample_latency: bool,
}

/// What the verifier shares with the sources it starts: its zone and audience, and
/// the parts sources read (the revocation set, the clock, the keyset, the replay
/// guard).
#[derive(Clone, Copy)]
pub(crate) struct VerifierIdentity<'a> {
    pub(crate) zone: &'a str,
    pub(crate) audience: &'a str,
    pub(crate) revocations: &'a RevocationSet,
    pub(crate) clock: &'a SharedClock,
    pub(crate) keys: &'a Arc<KeyCache>,
    pub(crate) replay: &'a Arc<dyn crate::replay::ReplayGuard>,
}

/// Start every source in order; on a failure, the sources already started are
/// dropped, which stops them.
pub(crate) fn start_all(
    sources: Vec<Box<dyn Source>>,
    verifier: VerifierIdentity<'_>,
) -> Result<Started, ConfigError> {
    let mut handles = Vec::with_capacity(sources.len());
    let mut actions = None;
    let mut sample_latency = false;
    let siblings: Siblings = Arc::default();
    for source in sources {
        let mut ctx = SourceContext::new(
            verifier,
            &mut actions,
            &mut sample_latency,
            Arc::clone(&siblings),
        );
        let running: Arc<dyn Running> = Arc::from(source.start(&mut ctx)?);
        let feed = ctx.into_feed();
        if let Ok(mut list) = siblings.lock() {
            list.push(Arc::downgrade(&running));
        }
        handles.push(SourceHandle::new(running, feed));
    }
    Ok(Started {
        handles,
        actions,
        sample_latency,
    })
}
