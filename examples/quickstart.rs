//! Quickstart: a mandate-protected axum server and every outcome, in one command.
//!
//! ```sh
//! cargo run --example quickstart
//! ```
//!
//! Self-contained, no network beyond loopback. It starts:
//!
//! 1. a fake Caracal STS (`TestIssuer`) serving zone `zone-1`'s JWKS on `127.0.0.1`;
//! 2. an axum resource server on `127.0.0.1`, protected in two tiers: a router-wide
//!    `MandateLayer` checks signature, issuer, audience, zone, expiry and revocation;
//!    per-route `route_layer`s add each route's requirements (scopes, agent identity,
//!    delegation, target, chain, hop limit).
//!
//! Then it mints mandates, sends real HTTP requests, and prints one row per request:
//! the request, the outcome it expects, the outcome the server answered, and `ok` or
//! `MISMATCH`. It exits 0 only when every row matched.
//!
//! Denials are JSON, for example:
//!
//! ```text
//! HTTP/1.1 403 Forbidden
//! www-authenticate: Bearer realm="resource://api", error="insufficient_scope", scope="tickets:read"
//! x-request-id: 6f1c…
//! {"error":"scope_insufficient","error_description":"missing scope tickets:read", …}
//! ```
//!
//! Set `RUST_LOG=caracal_verifier::decision=debug` to see the one tracing event the
//! layer emits per decision.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::{get, post};
use axum::{Json, Router};
use caracal_verifier::action::{ActionResult, ActionSink};
use caracal_verifier::audit::{AuditEmitter, AuditKey};
use caracal_verifier::layer::MandateLayer;
use caracal_verifier::metrics::MetricsPublisher;
use caracal_verifier::source::{Running, Source, SourceContext};
use caracal_verifier::testing::TestIssuer;
use caracal_verifier::{BoxFuture, ConfigError, ErrorCode, Mandate, Requirements, Verifier};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::net::TcpListener;

const ZONE: &str = "zone-1";
const AUDIENCE: &str = "resource://api";

/// Keeps the layer's action results in memory. With Redis, `AuditEmitter` is this
/// sink (`.audit(AuditEmitter::new(url).key(key))`), writing each to Caracal's
/// `caracal.audit.events` stream; the quickstart needs no Redis, so it keeps them and
/// shows the entry the emitter would write.
#[derive(Debug, Default)]
struct Kept(Mutex<Vec<ActionResult>>);

impl ActionSink for Kept {
    fn record(&self, result: ActionResult) {
        if let Ok(mut kept) = self.0.lock() {
            kept.push(result);
        }
    }
}

/// A source that only attaches the sink.
struct Keep(Arc<Kept>);

#[derive(Debug)]
struct Keeping;

impl Running for Keeping {
    fn name(&self) -> &str {
        "kept-action-results"
    }
    fn is_running(&self) -> bool {
        true
    }
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

impl Source for Keep {
    fn start(
        self: Box<Self>,
        ctx: &mut SourceContext<'_>,
    ) -> Result<Box<dyn Running>, ConfigError> {
        ctx.attach_action_sink(self.0)?;
        Ok(Box::new(Keeping))
    }
}

/// The handler of every protected route: the principal the layer verified.
async fn principal(m: Mandate) -> Json<Value> {
    Json(json!({
        "sub": m.subject(),
        "client_id": m.client_id(),
        "scopes": m.scopes().collect::<Vec<_>>(),
        "agent_session_id": m.agent_session_id(),
        "hop_count": m.hops(),
    }))
}

fn app(verifier: &Verifier) -> Router {
    let route = |reqs: Requirements| MandateLayer::new(verifier.clone(), reqs);
    Router::new()
        .route(
            "/tickets",
            get(principal)
                .route_layer(route(Requirements::new().scopes(["tickets:read"])))
                .merge(
                    post(principal)
                        .route_layer(route(Requirements::new().scopes(["tickets:write"]).agent())),
                ),
        )
        .route(
            "/payouts",
            post(principal).route_layer(route(
                Requirements::new()
                    .scopes(["billing:payout"])
                    .targets(["resource://billing"])
                    .delegation(),
            )),
        )
        .route(
            "/orchestrate",
            post(principal).route_layer(route(
                Requirements::new()
                    .scopes(["agents:run"])
                    .chain_contains(["app-orchestrator"])
                    .max_hops(2),
            )),
        )
        // Router-wide: every route needs a valid mandate of this zone.
        .layer(MandateLayer::new(verifier.clone(), Requirements::new()))
}

/// One request of the tour.
struct Row {
    request: String,
    expected: String,
    actual: String,
}

struct Tour {
    http: reqwest::Client,
    base: String,
    rows: Vec<Row>,
}

impl Tour {
    /// Send `method path` with `token` and record the outcome against `expected`:
    /// `"allowed"` (a 200) or an error code, which implies its status.
    async fn check(
        &mut self,
        method: Method,
        path: &str,
        what: &str,
        token: Option<&str>,
        expected: &'static str,
    ) {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let actual = match req.send().await {
            Ok(res) => {
                let status = res.status().as_u16();
                let body: Value = res
                    .bytes()
                    .await
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or(Value::Null);
                match body["error"].as_str() {
                    _ if status == 200 => "200 allowed".to_owned(),
                    Some(code) => format!("{status} {code}"),
                    None => format!("{status} (no error code)"),
                }
            }
            Err(e) => format!("request failed: {e}"),
        };
        let expected = match ErrorCode::ALL.iter().find(|c| c.as_str() == expected) {
            Some(code) => format!("{} {expected}", code.status().as_u16()),
            None => format!("200 {expected}"),
        };
        self.rows.push(Row {
            request: format!("{method} {path} {what}"),
            expected,
            actual,
        });
    }

    /// Print the table; true when every row matched.
    fn report(&self) -> bool {
        let width = self.rows.iter().map(|r| r.request.len()).max().unwrap_or(0);
        println!(
            "{:<width$}  {:<28}  {:<28}  result",
            "request", "expected", "actual"
        );
        println!("{}", "-".repeat(width + 68));
        let mut all = true;
        for row in &self.rows {
            let ok = row.actual == row.expected;
            all &= ok;
            println!(
                "{:<width$}  {:<28}  {:<28}  {}",
                row.request,
                row.expected,
                row.actual,
                if ok { "ok" } else { "MISMATCH" }
            );
        }
        println!();
        all
    }
}

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();

    // 1. A fake STS on loopback, and a verifier trusting its zone, with its metrics
    //    published into a Prometheus recorder (what a `/metrics` route would serve).
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let sts = TestIssuer::start(ZONE).await?;
    let kept = Arc::new(Kept::default());
    let verifier = Verifier::builder()
        .issuer(sts.issuer_url())
        .audience(AUDIENCE)
        .zone(ZONE)
        .source(MetricsPublisher::new().interval(Duration::from_millis(50)))
        .source(Keep(kept.clone()))
        .build()?;

    // 2. The resource server.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = app(&verifier);
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    println!(
        "STS at {}, resource server at http://{addr}\n",
        sts.issuer_url()
    );

    // 3. The tour.
    let mut tour = Tour {
        http: reqwest::Client::builder().no_proxy().build()?,
        base: format!("http://{addr}"),
        rows: Vec::new(),
    };
    let reader = sts
        .mandate()
        .sid("sid-reader")
        .scopes(["tickets:read"])
        .sign();
    tour.check(
        Method::GET,
        "/tickets",
        "with tickets:read",
        Some(&reader),
        "allowed",
    )
    .await;
    let profile = sts.mandate().scopes(["profile:read"]).sign();
    tour.check(
        Method::GET,
        "/tickets",
        "with only profile:read",
        Some(&profile),
        "scope_insufficient",
    )
    .await;
    let user_writer = sts.mandate().scopes(["tickets:write"]).sign();
    tour.check(
        Method::POST,
        "/tickets",
        "as a user, not an agent",
        Some(&user_writer),
        "agent_identity_required",
    )
    .await;
    let agent_writer = sts
        .mandate()
        .scopes(["tickets:write"])
        .agent_session("session-42")
        .sign();
    tour.check(
        Method::POST,
        "/tickets",
        "from an agent session",
        Some(&agent_writer),
        "allowed",
    )
    .await;
    let undelegated = sts
        .mandate()
        .scopes(["billing:payout"])
        .targets(["resource://billing"])
        .agent_session("session-42")
        .sign();
    tour.check(
        Method::POST,
        "/payouts",
        "without delegation",
        Some(&undelegated),
        "delegation_required",
    )
    .await;
    let delegated = sts
        .mandate()
        .scopes(["billing:payout"])
        .targets(["resource://billing"])
        .delegation(1)
        .sign();
    tour.check(
        Method::POST,
        "/payouts",
        "delegated, 1 hop",
        Some(&delegated),
        "allowed",
    )
    .await;
    let outsider_chain = sts.mandate().scopes(["agents:run"]).delegation(1).sign();
    tour.check(
        Method::POST,
        "/orchestrate",
        "chain lacks app-orchestrator",
        Some(&outsider_chain),
        "chain_mismatch",
    )
    .await;
    let deep = sts
        .mandate()
        .scopes(["agents:run"])
        .client_id("app-orchestrator")
        .delegation(3)
        .sign();
    tour.check(
        Method::POST,
        "/orchestrate",
        "3 hops, limit 2",
        Some(&deep),
        "hop_count_exceeded",
    )
    .await;
    let orchestrated = sts
        .mandate()
        .scopes(["agents:run"])
        .client_id("app-orchestrator")
        .delegation(2)
        .sign();
    tour.check(
        Method::POST,
        "/orchestrate",
        "2 hops via app-orchestrator",
        Some(&orchestrated),
        "allowed",
    )
    .await;
    // Revocation through the in-process handle (a webhook or the Redis feed in production).
    verifier.revocations().revoke("sid-reader");
    tour.check(
        Method::GET,
        "/tickets",
        "after revoking sid-reader",
        Some(&reader),
        "session_revoked",
    )
    .await;
    tour.check(
        Method::GET,
        "/tickets",
        "with no token",
        None,
        "missing_token",
    )
    .await;

    let all = tour.report();

    // 4. One denial as an operator sees it: the request without a token above, in
    //    the metrics (the decision, and the Gateway's category for its dashboards).
    println!("\nThe missing_token denial in /metrics:");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = prometheus.render();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.starts_with("caracal_verifier_denials_missing_auth_total")
                    || l.contains(r#"code="missing_token""#)
            })
            .collect();
        if lines.len() >= 2 || std::time::Instant::now() > deadline {
            for l in lines {
                println!("  {l}");
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // ... and the audit event the action-result emitter writes for it.
    let denial = kept.0.lock().ok().and_then(|k| {
        k.iter()
            .find(|r| r.denial.as_ref().map(|e| e.code()) == Some(ErrorCode::MissingToken))
            .cloned()
    });
    if let Some(result) = denial {
        let key = AuditKey::from_hex(&"2a".repeat(32))?;
        let entry = AuditEmitter::new("redis://127.0.0.1:6379")
            .key(key)
            .entry_for(ZONE, AUDIENCE, &result);
        println!("\nIts audit event (XADD caracal.audit.events * id … data … sig …):");
        println!("  id   {}", entry.id);
        println!("  data {}", entry.data);
        println!("  sig  {}", entry.sig.unwrap_or_default());
    }
    server.abort();
    if all {
        println!("all {} outcomes matched", tour.rows.len());
        Ok(ExitCode::SUCCESS)
    } else {
        println!("some outcomes did not match");
        Ok(ExitCode::FAILURE)
    }
}
