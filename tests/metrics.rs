//! The metrics publisher against a real Prometheus recorder
//! (`metrics-exporter-prometheus`), read back as the text a scrape returns.
//!
//! One recorder per process, so this file is its own test binary and holds one test.
#![cfg(feature = "metrics")]

use std::time::Duration;

use axum::body::Body;
use axum::{Router, routing::get};
use std::sync::{Arc, Mutex};

use caracal_verifier::layer::MandateLayer;
use caracal_verifier::metrics::MetricsPublisher;
use caracal_verifier::revocation::DropReason;
use caracal_verifier::source::{FeedPolicy, FeedReporter, Running, Source, SourceContext};
use caracal_verifier::testing::TestIssuer;
use caracal_verifier::{BoxFuture, ConfigError, Requirements, Verifier};

/// A revocation feed the test drives through its reporter.
struct Feed(Arc<Mutex<Option<FeedReporter>>>);

#[derive(Debug)]
struct Idle;

impl Running for Idle {
    fn name(&self) -> &str {
        "test-feed"
    }
    fn is_running(&self) -> bool {
        true
    }
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    fn counters(&self) -> Vec<(&'static str, u64)> {
        // Published as caracal_verifier_<name>; a malformed name is skipped.
        vec![
            ("test_widgets_total", 7),
            ("test_queue_depth", 3),
            ("Bad-Name", 1),
        ]
    }
}

impl Source for Feed {
    fn start(
        self: Box<Self>,
        ctx: &mut SourceContext<'_>,
    ) -> Result<Box<dyn Running>, ConfigError> {
        let reporter = ctx.attach_revocation_feed(FeedPolicy::default())?;
        *self.0.lock().unwrap() = Some(reporter);
        Ok(Box::new(Idle))
    }
}
use http::Request;
use tower::ServiceExt;

/// The value of the series whose line starts with `series` (name and labels).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_categories_latency_and_keyset_reach_the_recorder_without_secrets() {
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder of this process");
    let sts = TestIssuer::start("zone-m").await.unwrap();
    let verifier = Verifier::builder()
        .issuer(sts.issuer_url())
        .audience("resource://api")
        .zone("zone-m")
        .source(MetricsPublisher::new().interval(Duration::from_millis(10)))
        .build()
        .unwrap();
    verifier.warm_up().await.unwrap();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(MandateLayer::new(
            verifier.clone(),
            Requirements::new().scopes(["tickets:read"]),
        ));
    let good = sts
        .mandate()
        .sid("sid-secret-1")
        .jti("jti-secret-1")
        .scopes(["tickets:read"])
        .sign();
    let weak = sts.mandate().scopes(["tickets:write"]).sign();
    let signed = sts.mandate().scopes(["tickets:read"]).sign();
    let forged = format!("{}.{}", signed.rsplit_once('.').unwrap().0, "A".repeat(86));
    let call = |token: Option<&str>| {
        let mut b = Request::get("/");
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        app.clone().oneshot(b.body(Body::empty()).unwrap())
    };
    // One cold and 99 warm allows, then one of each denial.
    for _ in 0..100 {
        assert_eq!(call(Some(&good)).await.unwrap().status(), 200);
    }
    assert_eq!(call(None).await.unwrap().status(), 401);
    assert_eq!(call(Some(&weak)).await.unwrap().status(), 403);
    assert_eq!(call(Some(&forged)).await.unwrap().status(), 401);

    // The publisher copies the counts every 10 ms: poll the scrape for them.
    let mut text = String::new();
    for _ in 0..500 {
        text = prometheus.render();
        // Every series asserted below, in one render: the render is not atomic
        // against the publisher's task, which writes them one by one.
        if value(&text, "caracal_verifier_denials_signature_total") >= Some(1.0)
            && value(&text, "caracal_verifier_denials_route_total") >= Some(1.0)
            && value(&text, "caracal_verifier_denials_missing_auth_total") >= Some(1.0)
            && value(&text, "caracal_verifier_requests_total") >= Some(103.0)
            && value(&text, "caracal_verifier_requests_denied_total") >= Some(3.0)
            && value(&text, "caracal_verifier_mandate_cache_hits_total") >= Some(98.0)
            && value(&text, "caracal_verifier_mandate_cache_misses_total") >= Some(3.0)
            && value(&text, r#"caracal_verifier_jwks_ready{zone="zone-m"}"#) == Some(1.0)
            && value(
                &text,
                r#"caracal_verifier_jwks_fetches_total{zone="zone-m"}"#,
            ) >= Some(1.0)
            && value(
                &text,
                r#"caracal_verifier_verification_duration_seconds_count{path="cold"}"#,
            ) >= Some(3.0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        value(
            &text,
            r#"caracal_verifier_decisions_total{outcome="allow",code="",reason=""}"#
        ) >= Some(100.0),
        "{text}"
    );
    assert!(
        value(
            &text,
            r#"caracal_verifier_decisions_total{outcome="deny",code="scope_insufficient",reason=""}"#
        ) >= Some(1.0),
        "{text}"
    );
    assert!(
        value(
            &text,
            r#"caracal_verifier_decisions_total{outcome="deny",code="invalid_token",reason="signature"}"#
        ) >= Some(1.0),
        "{text}"
    );
    // The Gateway's series, so its dashboards apply.
    assert!(value(&text, "caracal_verifier_requests_total") >= Some(103.0));
    assert!(value(&text, "caracal_verifier_requests_denied_total") >= Some(3.0));
    // The cache admits a token once it has been seen twice (its doorkeeper), so the
    // first two uses of the good token are misses.
    let hits = value(&text, "caracal_verifier_mandate_cache_hits_total").unwrap();
    let misses = value(&text, "caracal_verifier_mandate_cache_misses_total").unwrap();
    assert!(hits >= 98.0 && misses >= 3.0, "{text}");
    // Every cold verification is timed; warm ones are sampled.
    assert!(
        value(
            &text,
            r#"caracal_verifier_verification_duration_seconds_count{path="cold"}"#
        ) >= Some(3.0),
        "{text}"
    );
    assert!(value(&text, r#"caracal_verifier_jwks_ready{zone="zone-m"}"#) == Some(1.0));
    assert!(
        value(
            &text,
            r#"caracal_verifier_jwks_fetches_total{zone="zone-m"}"#
        ) >= Some(1.0)
    );
    // Names and labels only: never a token, a jti, a sid or a subject.
    for secret in [&good, &weak, "jti-secret-1", "sid-secret-1"] {
        assert!(!text.contains(secret), "{secret} leaked into the metrics");
    }
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(line.starts_with("caracal_verifier_"), "{line}");
    }

    // A revocation feed's health and drops by reason, and the propagation delay of
    // live events (their stream id time to applied).
    let reporter = Arc::new(Mutex::new(None));
    let with_feed = Verifier::builder()
        .issuer(sts.issuer_url())
        .audience("resource://api")
        .zone("zone-f")
        .source(Feed(reporter.clone()))
        .source(MetricsPublisher::new().interval(Duration::from_millis(10)))
        .build()
        .unwrap();
    {
        let r = reporter.lock().unwrap().clone().unwrap();
        r.mark_read_ok();
        r.set_caught_up(true);
        r.record_dropped_for(DropReason::BadSignature);
        r.record_dropped_for(DropReason::Unsigned);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        r.record_applied(Some(now_ms - 250));
    }
    // The publisher writes these one by one on its own task, and may run before the
    // reports above: wait until one render holds the end state of every series.
    let settled = [
        (
            r#"caracal_verifier_revocation_feed_fresh{zone="zone-f"}"#,
            1.0,
        ),
        (
            r#"caracal_verifier_revocation_invalid_signatures_total{zone="zone-f"}"#,
            1.0,
        ),
        (
            r#"caracal_verifier_revocation_events_dropped_total{zone="zone-f",reason="unsigned"}"#,
            1.0,
        ),
        (
            r#"caracal_verifier_revocation_events_applied_total{zone="zone-f"}"#,
            1.0,
        ),
        (
            r#"caracal_verifier_revocation_propagation_seconds_count{zone="zone-f"}"#,
            1.0,
        ),
        (r#"caracal_verifier_test_widgets_total{zone="zone-f"}"#, 7.0),
        (r#"caracal_verifier_test_queue_depth{zone="zone-f"}"#, 3.0),
        (
            r#"caracal_verifier_replay_guard_capacity{zone="zone-f"}"#,
            1_000_000.0,
        ),
    ];
    for _ in 0..500 {
        text = prometheus.render();
        if settled
            .iter()
            .all(|(series, v)| value(&text, series) == Some(*v))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let feed_value = |series: &str| value(&text, series);
    assert_eq!(
        feed_value(r#"caracal_verifier_revocation_feed_fresh{zone="zone-f"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        feed_value(r#"caracal_verifier_revocation_invalid_signatures_total{zone="zone-f"}"#),
        Some(1.0)
    );
    assert_eq!(
        feed_value(
            r#"caracal_verifier_revocation_events_dropped_total{zone="zone-f",reason="unsigned"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        feed_value(r#"caracal_verifier_revocation_events_applied_total{zone="zone-f"}"#),
        Some(1.0)
    );
    assert_eq!(
        feed_value(r#"caracal_verifier_test_widgets_total{zone="zone-f"}"#),
        Some(7.0)
    );
    assert_eq!(
        feed_value(r#"caracal_verifier_test_queue_depth{zone="zone-f"}"#),
        Some(3.0)
    );
    assert!(!text.contains("Bad-Name"));
    assert_eq!(
        feed_value(r#"caracal_verifier_replay_guard_capacity{zone="zone-f"}"#),
        Some(1_000_000.0)
    );
    let lag = feed_value(r#"caracal_verifier_revocation_propagation_seconds_sum{zone="zone-f"}"#)
        .unwrap();
    assert!(lag >= 0.25, "{lag}");
    drop(with_feed);

    // Shutting the verifier's sources down stops the publisher.
    let publisher = &verifier.sources()[0];
    assert!(publisher.is_running());
    verifier.shutdown().await;
    assert!(!publisher.is_running());
}
