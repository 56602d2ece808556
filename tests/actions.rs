//! Action results: one record per request a `MandateLayer` decides, handed to the
//! sink a source attached (`caracal_verifier::action`).

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::{Router, routing::get};
use caracal_verifier::action::{ActionResult, ActionSink};
use caracal_verifier::layer::MandateLayer;
use caracal_verifier::source::{Running, Source, SourceContext};
use caracal_verifier::testing::TestIssuer;
use caracal_verifier::{BoxFuture, ConfigError, ErrorCode, Requirements, Verifier};
use http::{Request, StatusCode};
use tower::ServiceExt;

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[derive(Debug, Default)]
struct Collect(Mutex<Vec<ActionResult>>);

impl ActionSink for Collect {
    fn record(&self, result: ActionResult) {
        self.0.lock().unwrap().push(result);
    }
}

/// A source that only attaches the sink.
struct Sink(Arc<Collect>);

#[derive(Debug)]
struct Idle;

impl Running for Idle {
    fn name(&self) -> &str {
        "collect"
    }
    fn is_running(&self) -> bool {
        true
    }
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

impl Source for Sink {
    fn start(
        self: Box<Self>,
        ctx: &mut SourceContext<'_>,
    ) -> Result<Box<dyn Running>, ConfigError> {
        ctx.attach_action_sink(self.0)?;
        Ok(Box::new(Idle))
    }
}

async fn setup() -> (TestIssuer, Verifier, Arc<Collect>) {
    let sts = TestIssuer::start("zone-1").await.unwrap();
    let sink = Arc::new(Collect::default());
    let verifier = Verifier::builder()
        .issuer(sts.issuer_url())
        .audience("resource://api")
        .zone("zone-1")
        .source(Sink(sink.clone()))
        .build()
        .unwrap();
    (sts, verifier, sink)
}

fn app(v: &Verifier) -> Router {
    Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route(
            "/fails",
            get(|| async { (StatusCode::BAD_GATEWAY, "upstream down") }),
        )
        .layer(MandateLayer::new(
            v.clone(),
            Requirements::new().scopes(["tickets:read"]),
        ))
}

fn get_with(path: &str, token: Option<&str>) -> Request<Body> {
    let mut b = Request::get(path).header("traceparent", TP);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(Body::empty()).unwrap()
}

fn take(sink: &Collect) -> Vec<ActionResult> {
    std::mem::take(&mut *sink.0.lock().unwrap())
}

#[tokio::test]
async fn denials_are_recorded_with_their_code_and_without_the_token() {
    let (sts, v, sink) = setup().await;
    let app = app(&v);

    // No credentials.
    let resp = app.clone().oneshot(get_with("/ok", None)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // A forged token, and a valid one lacking the scope.
    let forged = format!("{}x", sts.mandate().scopes(["tickets:read"]).sign());
    let weak = sts.mandate().scopes(["tickets:write"]).sign();
    for t in [&forged, &weak] {
        app.clone().oneshot(get_with("/ok", Some(t))).await.unwrap();
    }
    let records = take(&sink);
    assert_eq!(records.len(), 3);
    let codes: Vec<_> = records
        .iter()
        .map(|r| r.denial.as_ref().map(|e| e.code()))
        .collect();
    assert_eq!(
        codes,
        [
            Some(ErrorCode::MissingToken),
            Some(ErrorCode::InvalidToken),
            Some(ErrorCode::ScopeInsufficient)
        ]
    );
    assert_eq!(
        records.iter().map(|r| r.status).collect::<Vec<_>>(),
        [401, 401, 403]
    );
    assert!(records.iter().all(|r| !r.is_allowed()));
    assert!(records[0].subject_fingerprint.is_none());
    for (r, token) in records[1..].iter().zip([&forged, &weak]) {
        let fp = r.subject_fingerprint.as_deref().unwrap();
        assert_eq!(fp.len(), 16);
        assert!(!token.contains(fp), "a digest, not a piece of the token");
        let shown = format!("{r:?}");
        assert!(!shown.contains(token.as_str()), "{shown}");
        // Denied before a context was built: the incoming trace id still names it.
        assert_eq!(
            r.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }
    // Every record has a request id; distinct requests, distinct ids.
    assert!(records.iter().all(|r| r.request_id.len() >= 16));
    assert_ne!(records[0].request_id, records[1].request_id);
}

#[tokio::test]
async fn a_denials_record_carries_the_request_id_the_client_saw() {
    let (sts, v, sink) = setup().await;
    let token = sts.mandate().scopes(["tickets:write"]).sign();
    let resp = app(&v)
        .oneshot(get_with("/ok", Some(&token)))
        .await
        .unwrap();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let records = take(&sink);
    assert_eq!(json["requestId"], records[0].request_id.as_str());

    let req = Request::get("/ok")
        .header("x-request-id", "req-from-the-client")
        .body(Body::empty())
        .unwrap();
    app(&v).oneshot(req).await.unwrap();
    assert_eq!(take(&sink)[0].request_id, "req-from-the-client");
}

#[tokio::test]
async fn allowed_requests_are_recorded_after_the_inner_service_answers() {
    let (sts, v, sink) = setup().await;
    let token = sts
        .mandate()
        .sid("authority-record-1")
        .scopes(["tickets:read"])
        .sign();
    let app = app(&v);
    for (path, status) in [("/ok", 200), ("/fails", 502)] {
        let resp = app
            .clone()
            .oneshot(get_with(path, Some(&token)))
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status);
    }
    let records = take(&sink);
    assert_eq!(records.len(), 2);
    for (r, status) in records.iter().zip([200, 502]) {
        assert!(r.is_allowed());
        assert_eq!(r.status, status);
        assert_eq!(r.method, http::Method::GET);
        assert_eq!(r.mandate.as_ref().unwrap().sid(), "authority-record-1");
        assert_eq!(
            r.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert!(!r.revocation_interrupted());
        assert_eq!(r.manifest_sha.as_deref(), Some(v.manifest_sha().as_str()));
    }
}

#[tokio::test]
async fn a_revoked_mandate_is_recorded_as_interrupted() {
    let (sts, v, sink) = setup().await;
    let token = sts.mandate().sid("s-9").scopes(["tickets:read"]).sign();
    v.revocations().revoke("s-9");
    let resp = app(&v)
        .oneshot(get_with("/ok", Some(&token)))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let r = &take(&sink)[0];
    assert_eq!(r.denial.as_ref().unwrap().code(), ErrorCode::SessionRevoked);
    assert!(r.revocation_interrupted());
}

#[tokio::test]
async fn one_sink_per_verifier() {
    let sts = TestIssuer::start("zone-1").await.unwrap();
    let err = Verifier::builder()
        .issuer(sts.issuer_url())
        .audience("resource://api")
        .zone("zone-1")
        .source(Sink(Arc::default()))
        .source(Sink(Arc::default()))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("another sink"), "{err}");
}

#[tokio::test]
async fn without_a_sink_nothing_is_recorded_and_requests_pass() {
    let sts = TestIssuer::start("zone-1").await.unwrap();
    let v = Verifier::builder()
        .issuer(sts.issuer_url())
        .audience("resource://api")
        .zone("zone-1")
        .build()
        .unwrap();
    let token = sts.mandate().scopes(["tickets:read"]).sign();
    let resp = app(&v)
        .oneshot(get_with("/ok", Some(&token)))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}
