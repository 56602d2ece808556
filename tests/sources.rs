//! The source seam (`caracal_verifier::source`): a revocation feed of one's own,
//! plugged into the verifier the way the Redis feed is.
//!
//! The hostile cases come first: a feed that never reports, goes quiet, falls behind,
//! is stopped or dropped, fails to start, or tries to share a set with another feed.
//! Staleness is measured on the verifier's injected clock, so nothing here waits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use caracal_verifier::revocation::RevocationSet;
use caracal_verifier::source::{FeedPolicy, FeedReporter, Running, Source, SourceContext};
use caracal_verifier::testing::TestIssuer;
use caracal_verifier::{
    BoxFuture, ConfigError, ErrorCode, ManualClock, Requirements, Verifier, VerifierBuilder,
};

const ZONE: &str = "zone-1";
const AUD: &str = "resource://api";
const T0: u64 = 1_800_000_000;
const MAX_STALENESS: Duration = Duration::from_secs(30);

/// What a test holds of a started feed: the set it keeps and its reporter.
#[derive(Clone, Default)]
struct Probe {
    started: Arc<Mutex<Option<(RevocationSet, FeedReporter)>>>,
    /// Set when the running part is dropped (the verifier let it go).
    dropped: Arc<AtomicBool>,
    /// Set by `shutdown`.
    stopped: Arc<AtomicBool>,
}

impl Probe {
    fn reporter(&self) -> FeedReporter {
        self.started
            .lock()
            .unwrap()
            .as_ref()
            .expect("started")
            .1
            .clone()
    }
    fn set(&self) -> RevocationSet {
        self.started
            .lock()
            .unwrap()
            .as_ref()
            .expect("started")
            .0
            .clone()
    }
    /// The feed has read everything and is connected.
    fn fresh(&self) {
        let r = self.reporter();
        r.mark_read_ok();
        r.set_caught_up(true);
    }
}

/// A revocation feed driven by the test through its [`Probe`].
struct TestFeed {
    probe: Probe,
    policy: FeedPolicy,
    /// Fail `start` after attaching, as a source whose connection setup fails.
    fail_after_attach: bool,
}

impl TestFeed {
    fn new(probe: &Probe) -> Self {
        Self {
            probe: probe.clone(),
            policy: FeedPolicy::new(MAX_STALENESS),
            fail_after_attach: false,
        }
    }
}

#[derive(Debug)]
struct TestTask {
    dropped: Arc<AtomicBool>,
    stopped: Arc<AtomicBool>,
    ready: bool,
}

impl Running for TestTask {
    fn name(&self) -> &str {
        "test-feed"
    }
    fn is_running(&self) -> bool {
        !self.stopped.load(Ordering::SeqCst)
    }
    fn is_ready(&self) -> bool {
        self.ready && self.is_running()
    }
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        self.stopped.store(true, Ordering::SeqCst);
        Box::pin(async {})
    }
}

impl Drop for TestTask {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

impl Source for TestFeed {
    fn start(
        self: Box<Self>,
        ctx: &mut SourceContext<'_>,
    ) -> Result<Box<dyn Running>, ConfigError> {
        let reporter = ctx.attach_revocation_feed(self.policy)?;
        if self.fail_after_attach {
            return Err(ConfigError::Invalid {
                setting: "test_feed",
                reason: "cannot connect".into(),
            });
        }
        *self.probe.started.lock().unwrap() = Some((ctx.revocations().clone(), reporter));
        Ok(Box::new(TestTask {
            dropped: self.probe.dropped.clone(),
            stopped: self.probe.stopped.clone(),
            ready: true,
        }))
    }
}

/// A source that keeps no feed: an emitter, say, that reports itself not ready.
struct Sidecar {
    ready: bool,
    dropped: Arc<AtomicBool>,
}

impl Source for Sidecar {
    fn start(
        self: Box<Self>,
        _ctx: &mut SourceContext<'_>,
    ) -> Result<Box<dyn Running>, ConfigError> {
        Ok(Box::new(TestTask {
            dropped: self.dropped,
            stopped: Arc::new(AtomicBool::new(false)),
            ready: self.ready,
        }))
    }
}

struct Env {
    sts: TestIssuer,
    clock: ManualClock,
}

impl Env {
    async fn new() -> Self {
        let sts = TestIssuer::start(ZONE).await.expect("start issuer");
        let clock = ManualClock::new(Duration::from_secs(T0));
        sts.set_clock(clock.clone());
        Self { sts, clock }
    }

    fn builder(&self) -> VerifierBuilder {
        Verifier::builder()
            .issuer(self.sts.issuer_url())
            .audience(AUD)
            .zone(ZONE)
            .clock(self.clock.clone())
    }

    async fn code(&self, v: &Verifier) -> Option<ErrorCode> {
        let token = self.sts.mandate().sid("session-1").sign();
        v.verify(&token, &Requirements::new())
            .await
            .err()
            .map(|e| e.code())
    }
}

#[tokio::test]
async fn a_feed_that_never_reports_fails_closed() {
    let e = Env::new().await;
    let probe = Probe::default();
    let v = e.builder().source(TestFeed::new(&probe)).build().unwrap();
    v.warm_up().await.unwrap();
    assert_eq!(e.code(&v).await, Some(ErrorCode::RevocationUnavailable));
    let ready = v.readiness();
    assert!(
        ready.keys && !ready.revocation && !ready.sources,
        "{ready:?}"
    );
    let status = v.revocation_feed().expect("attached").status();
    assert!(status.running && !status.ready, "{status:?}");
    assert!(!status.feed.expect("a feed").fresh);
}

#[tokio::test]
async fn a_feed_that_goes_quiet_is_stale_on_the_verifier_clock() {
    let e = Env::new().await;
    let probe = Probe::default();
    let v = e.builder().source(TestFeed::new(&probe)).build().unwrap();
    probe.fresh();
    assert_eq!(e.code(&v).await, None);
    e.clock.advance(MAX_STALENESS);
    assert_eq!(e.code(&v).await, None, "at the bound, still fresh");
    e.clock.advance(Duration::from_secs(1));
    assert_eq!(e.code(&v).await, Some(ErrorCode::RevocationUnavailable));
    assert!(!v.is_ready());
    probe.reporter().mark_read_ok();
    assert_eq!(e.code(&v).await, None);
    assert!(v.is_ready());
}

#[tokio::test]
async fn a_feed_behind_or_disconnected_fails_closed() {
    let e = Env::new().await;
    let probe = Probe::default();
    let v = e.builder().source(TestFeed::new(&probe)).build().unwrap();
    probe.fresh();
    assert_eq!(e.code(&v).await, None);
    // A gap or a reset: the feed re-reads, and is not trusted meanwhile.
    probe.reporter().record_gap();
    probe.reporter().set_caught_up(false);
    assert_eq!(e.code(&v).await, Some(ErrorCode::RevocationUnavailable));
    probe.reporter().set_caught_up(true);
    assert_eq!(e.code(&v).await, None);
    probe.reporter().mark_disconnected();
    assert_eq!(e.code(&v).await, Some(ErrorCode::RevocationUnavailable));
    let feed = v.revocation_feed().unwrap().status().feed.unwrap();
    assert_eq!((feed.gaps, feed.connected), (1, false));
}

#[tokio::test]
async fn a_set_is_kept_by_one_feed_only() {
    let e = Env::new().await;
    let (a, b) = (Probe::default(), Probe::default());
    let err = e
        .builder()
        .source(TestFeed::new(&a))
        .source(TestFeed::new(&b))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("another feed"), "{err}");
    // The first feed, already started, was let go with the failed build.
    assert!(a.dropped.load(Ordering::SeqCst));

    // Two verifiers sharing a set cannot each attach a feed to it.
    let set = RevocationSet::new();
    let (c, d) = (Probe::default(), Probe::default());
    let _first = e
        .builder()
        .revocations(set.clone())
        .source(TestFeed::new(&c))
        .build()
        .unwrap();
    let err = e
        .builder()
        .revocations(set)
        .source(TestFeed::new(&d))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("another feed"), "{err}");
}

#[tokio::test]
async fn a_source_that_fails_to_start_fails_the_build_and_closes_its_set() {
    let e = Env::new().await;
    let sidecar_dropped = Arc::new(AtomicBool::new(false));
    let set = RevocationSet::new();
    let probe = Probe::default();
    let mut failing = TestFeed::new(&probe);
    failing.fail_after_attach = true;
    let err = e
        .builder()
        .revocations(set.clone())
        .source(Sidecar {
            ready: true,
            dropped: sidecar_dropped.clone(),
        })
        .source(failing)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("cannot connect"), "{err}");
    assert!(
        sidecar_dropped.load(Ordering::SeqCst),
        "started sources stop"
    );
    // The set was attached before the failure: another verifier on it fails closed
    // rather than trust a feed that never ran.
    assert!(!set.is_current());
    let other = e.builder().revocations(set).build().unwrap();
    assert_eq!(e.code(&other).await, Some(ErrorCode::RevocationUnavailable));
}

#[tokio::test]
async fn a_stopped_or_dropped_feed_leaves_a_shared_set_stale() {
    let e = Env::new().await;
    for stop_by_drop in [false, true] {
        let set = RevocationSet::new();
        let probe = Probe::default();
        let with_feed = e
            .builder()
            .revocations(set.clone())
            .source(TestFeed::new(&probe))
            .build()
            .unwrap();
        let sharing = e.builder().revocations(set.clone()).build().unwrap();
        probe.fresh();
        assert_eq!(e.code(&sharing).await, None);
        if stop_by_drop {
            drop(with_feed);
            assert!(probe.dropped.load(Ordering::SeqCst));
        } else {
            with_feed.shutdown().await;
            assert!(probe.stopped.load(Ordering::SeqCst));
            assert!(!with_feed.revocation_feed().unwrap().is_running());
        }
        assert_eq!(
            e.code(&sharing).await,
            Some(ErrorCode::RevocationUnavailable),
            "stop_by_drop={stop_by_drop}"
        );
        // A late report from the stopped feed's leftover work cannot revive it.
        probe.fresh();
        assert!(!set.is_current());
        assert_eq!(
            e.code(&sharing).await,
            Some(ErrorCode::RevocationUnavailable)
        );
    }
}

#[tokio::test]
async fn a_fail_open_feed_is_stale_but_lets_mandates_through() {
    let e = Env::new().await;
    let probe = Probe::default();
    let mut feed = TestFeed::new(&probe);
    feed.policy = FeedPolicy::new(MAX_STALENESS).dangerous_fail_open();
    assert!(feed.policy.fails_open());
    let v = e.builder().source(feed).build().unwrap();
    assert_eq!(e.code(&v).await, None);
    assert!(!v.readiness().revocation, "stale, and readiness says so");
}

#[tokio::test]
async fn a_source_without_a_feed_counts_for_readiness_only() {
    let e = Env::new().await;
    let v = e
        .builder()
        .source(Sidecar {
            ready: false,
            dropped: Arc::new(AtomicBool::new(false)),
        })
        .build()
        .unwrap();
    v.warm_up().await.unwrap();
    assert!(v.revocation_feed().is_none());
    assert_eq!(v.sources().len(), 1);
    let ready = v.readiness();
    assert!(
        ready.keys && ready.revocation && !ready.sources,
        "{ready:?}"
    );
    assert!(!v.is_ready());
    // It does not gate verification: that is the revocation feed's job.
    assert_eq!(e.code(&v).await, None);
}

#[tokio::test]
async fn a_custom_feed_revokes_through_the_seam() {
    let e = Env::new().await;
    let probe = Probe::default();
    let v = e.builder().source(TestFeed::new(&probe)).build().unwrap();
    v.warm_up().await.unwrap();
    probe.fresh();
    assert!(v.is_ready());
    assert_eq!(e.code(&v).await, None);
    probe.set().revoke("session-1");
    probe.reporter().record_applied(None);
    assert_eq!(e.code(&v).await, Some(ErrorCode::SessionRevoked));
    let feed = v.revocation_feed().unwrap();
    assert_eq!(feed.name(), "test-feed");
    let status = feed.status();
    assert!(status.running && status.ready);
    assert_eq!(status.feed.unwrap().applied, 1);
    assert!(format!("{feed:?}").contains("test-feed"));
    v.shutdown().await;
    assert_eq!(e.code(&v).await, Some(ErrorCode::RevocationUnavailable));
}
