//! The reference resource server: the contract external conformance checks drive.
//!
//! ```sh
//! CARACAL_STS_URL=https://sts.example.com \
//! CARACAL_ZONE_ID=zone-1 \
//! CARACAL_AUDIENCE=resource://api \
//! cargo run --release --all-features --example resource_server
//! ```
//!
//! # Configuration (environment)
//!
//! - `CARACAL_STS_URL` (issuer), `CARACAL_ZONE_ID`, `CARACAL_AUDIENCE`: required;
//!   every other verifier setting of `VerifierBuilder::from_env` applies too.
//! - `BIND_ADDR`: the listen address, default `127.0.0.1:8080`.
//! - With the `redis` feature: `CARACAL_REDIS_URL` starts the revocation feed;
//!   `STREAMS_HMAC_KEY` (hex) requires signed events;
//!   `CARACAL_REVOCATION_MAX_STALENESS_SECS` bounds how stale the feed may be.
//! - `RUST_LOG`: log filter, default `info` (decisions log at `debug` when
//!   allowed, `info` when denied, under `caracal_verifier::decision`).
//!
//! Startup does not need the issuer: keys are fetched in the background, and
//! `/readyz` answers 503 until they are (and until the revocation feed, when one is
//! configured, has caught up). Ctrl-C or SIGTERM stops it gracefully.
//!
//! # Routes
//!
//! | route | requires |
//! | --- | --- |
//! | `GET /healthz` | nothing: 200 while the process runs |
//! | `GET /readyz` | nothing: 200 when ready, else 503 |
//! | `GET /tickets` | scope `tickets:read` |
//! | `POST /tickets` | scope `tickets:write` and an agent identity |
//! | `POST /payouts` | scope `billing:payout`, delegation, target `resource://billing` |
//! | `POST /orchestrate` | scope `agents:run`, `app-orchestrator` in the chain, at most 2 hops |
//! | `GET /metrics` | nothing: the verifier's metrics, Prometheus text |
//! | `GET /caracal/status` | nothing: the status document (no secrets) |
//! | `GET /caracal/manifest` | nothing: the resource verifier manifest |
//! | `GET /propagation` | scope `tickets:read`: the `traceparent`, `tracestate` and `baggage` an outbound call made for this request would carry |
//!
//! A protected route answers 200 with the principal:
//!
//! ```sh
//! curl -s -H "Authorization: Bearer $MANDATE" http://127.0.0.1:8080/tickets
//! # {"sub":"user-1","client_id":"app-1","zone_id":"zone-1","sid":"…",
//! #  "agent_session_id":null,"delegation_edge_id":null,"scopes":["tickets:read"],"hop_count":0}
//! curl -si http://127.0.0.1:8080/tickets        # 401 missing_token
//! curl -si http://127.0.0.1:8080/readyz         # 200 {"ready":true,…} or 503
//! ```
//!
//! Denials are `{"error", "error_description", "hint", "requestId", "details"}` with
//! the code's status, `WWW-Authenticate` on 401 and `Retry-After` on 503.

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use caracal_verifier::context::RequestContext;
use caracal_verifier::layer::MandateLayer;
use caracal_verifier::metrics::MetricsPublisher;
use caracal_verifier::{DEFAULT_JWKS_TTL, Mandate, Requirements, Verifier, VerifierBuilder};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};
use tokio::net::TcpListener;

const DEFAULT_BIND_ADDR: &str = "127.0.0.1:8080";

/// The verified principal, for every protected route.
async fn principal(m: Mandate) -> Json<Value> {
    Json(json!({
        "sub": m.subject(),
        "client_id": m.client_id(),
        "zone_id": m.zone_id(),
        "sid": m.sid(),
        "agent_session_id": m.agent_session_id(),
        "delegation_edge_id": m.delegation_edge_id(),
        "scopes": m.scopes().collect::<Vec<_>>(),
        "hop_count": m.hops(),
    }))
}

/// What an outbound call made while serving this request would carry.
async fn propagation(ctx: RequestContext) -> Json<Value> {
    let mut headers = http::HeaderMap::new();
    ctx.inject(&mut headers);
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    Json(json!({
        "traceparent": get("traceparent"),
        "tracestate": get("tracestate"),
        "baggage": get("baggage"),
    }))
}

fn json_bytes(body: Vec<u8>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], body)
}

fn app(verifier: Verifier, prometheus: PrometheusHandle) -> Router {
    let guard = |reqs: Requirements| MandateLayer::new(verifier.clone(), reqs);
    let ready = verifier.clone();
    let status = verifier.clone();
    let manifest = verifier.clone();
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let text = prometheus.render();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text) }
            }),
        )
        .route(
            "/caracal/status",
            get(move || {
                let body = status.status_json();
                async move { json_bytes(body) }
            }),
        )
        .route(
            "/caracal/manifest",
            get(move || {
                let body = manifest.manifest_json();
                async move { json_bytes(body) }
            }),
        )
        .route(
            "/propagation",
            get(propagation).route_layer(guard(Requirements::new().scopes(["tickets:read"]))),
        )
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route(
            "/readyz",
            get(move || {
                let r = ready.readiness();
                let status = if r.is_ready() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                let body =
                    json!({ "ready": r.is_ready(), "keys": r.keys, "revocation": r.revocation });
                async move { (status, Json(body)) }
            }),
        )
        .route(
            "/tickets",
            get(principal)
                .route_layer(guard(Requirements::new().scopes(["tickets:read"])))
                .merge(
                    post(principal)
                        .route_layer(guard(Requirements::new().scopes(["tickets:write"]).agent())),
                ),
        )
        .route(
            "/payouts",
            post(principal).route_layer(guard(
                Requirements::new()
                    .scopes(["billing:payout"])
                    .delegation()
                    .targets(["resource://billing"]),
            )),
        )
        .route(
            "/orchestrate",
            post(principal).route_layer(guard(
                Requirements::new()
                    .scopes(["agents:run"])
                    .chain_contains(["app-orchestrator"])
                    .max_hops(2),
            )),
        )
}

/// Fetch the zone keys until it works (with backoff), then keep them fresh even
/// when no traffic triggers a refresh, so `/readyz` reflects the issuer's reachability.
async fn keep_keys_warm(verifier: Verifier) {
    const CHECK_EVERY: Duration = Duration::from_secs(30);
    let mut backoff = Duration::from_secs(1);
    loop {
        let fresh = verifier
            .jwks_age()
            .is_some_and(|age| age < DEFAULT_JWKS_TTL);
        if !fresh {
            if let Err(e) = verifier.warm_up().await {
                tracing::warn!(error = %e, retry_in = ?backoff, "zone keys not fetched yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(CHECK_EVERY);
                continue;
            }
            tracing::info!("zone keys fetched");
            backoff = Duration::from_secs(1);
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

/// Resolves on Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    // Metrics: a Prometheus recorder for /metrics, fed by the verifier's publisher.
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    // With `CARACAL_REDIS_URL` set, `build` starts the feed on its own thread.
    let verifier = VerifierBuilder::from_env()?
        .source(MetricsPublisher::new())
        .build()?;
    let bind: SocketAddr = std::env::var("BIND_ADDR")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_BIND_ADDR.to_owned())
        .trim()
        .parse()
        .map_err(|e| format!("BIND_ADDR: {e}"))?;

    // Fetch keys in the background: the issuer need not be up for us to start.
    tokio::spawn(keep_keys_warm(verifier.clone()));

    let listener = TcpListener::bind(bind).await?;
    tracing::info!(
        addr = %listener.local_addr()?,
        issuer = verifier.issuer(),
        zone = verifier.zone(),
        audience = verifier.audience(),
        "resource server listening"
    );
    axum::serve(listener, app(verifier.clone(), prometheus))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    // Stop the sources (feed, metrics, audit) once no request is served any more.
    verifier.shutdown().await;
    Ok(())
}
