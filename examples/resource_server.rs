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

use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use caracal_verifier::layer::MandateLayer;
use caracal_verifier::{DEFAULT_JWKS_TTL, Mandate, Requirements, Verifier, VerifierBuilder};
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

fn app(verifier: Verifier) -> Router {
    let guard = |reqs: Requirements| MandateLayer::new(verifier.clone(), reqs);
    let ready = verifier.clone();
    Router::new()
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

    // Inside the runtime: with `CARACAL_REDIS_URL` set, `build` starts the feed.
    let verifier = VerifierBuilder::from_env()?.build()?;
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
    axum::serve(listener, app(verifier))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}
