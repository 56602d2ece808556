//! An MCP server (the official Rust SDK, `rmcp`, over streamable HTTP) whose tools
//! require Caracal mandates: per-tool requirements with `mcp::McpLayer`, and the
//! RFC 9728 Protected Resource Metadata MCP clients discover it by.
//!
//! ```sh
//! CARACAL_STS_URL=https://sts.example.com \
//! CARACAL_ZONE_ID=zone-1 \
//! CARACAL_AUDIENCE=resource://api \
//! cargo run --features mcp,axum --example mcp_server
//! ```
//!
//! # Configuration (environment)
//!
//! - `CARACAL_STS_URL` (issuer), `CARACAL_ZONE_ID`, `CARACAL_AUDIENCE`: required;
//!   every other verifier setting of `VerifierBuilder::from_env` applies too.
//! - `BIND_ADDR`: the listen address, default `127.0.0.1:8080`.
//! - `MCP_RESOURCE_URL`: the resource identifier published in the metadata,
//!   default `http://<BIND_ADDR>/mcp`.
//!
//! rmcp's default `Host` check stays on (DNS-rebinding protection): it accepts
//! `localhost`, `127.0.0.1` and `::1`; behind a real host name, set
//! `StreamableHttpServerConfig::with_allowed_hosts`.
//!
//! # Routes and tools
//!
//! | route / tool | requires |
//! | --- | --- |
//! | `POST /mcp` (`initialize`, `tools/list`, notifications) | a valid mandate |
//! | tool `list_tickets` | scope `tickets:read` |
//! | tool `create_payout` | scope `billing:payout`, delegation, target `resource://billing` |
//! | any other tool | denied |
//! | `GET /.well-known/oauth-protected-resource[/mcp]` | nothing: the metadata document |
//!
//! ```sh
//! curl -s http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp
//! curl -si -X POST http://127.0.0.1:8080/mcp      # 401, WWW-Authenticate: Bearer …, resource_metadata="…"
//! curl -si -X POST http://127.0.0.1:8080/mcp \
//!   -H "Authorization: Bearer $MANDATE" -H 'accept: application/json, text/event-stream' \
//!   -H 'content-type: application/json' \
//!   -d '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"create_payout"}}'
//! # 403, WWW-Authenticate: Bearer …, error="insufficient_scope", scope="billing:payout"
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;
use caracal_verifier::mcp::{McpLayer, ProtectedResourceMetadata};
use caracal_verifier::{ConfigError, Mandate, Requirements, Verifier, VerifierBuilder};
use rmcp::handler::server::tool::Extension;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, tool, tool_router};
use tokio::net::TcpListener;
use tower::ServiceBuilder;

const DEFAULT_BIND_ADDR: &str = "127.0.0.1:8080";

/// The MCP server's tools. Each reads the verified mandate from the HTTP request
/// parts rmcp hands to tools.
#[derive(Debug, Clone, Default)]
pub struct Desk;

fn mandate(parts: &http::request::Parts) -> Result<&Mandate, ErrorData> {
    parts
        .extensions
        .get::<Mandate>()
        .ok_or_else(|| ErrorData::internal_error("no verified mandate", None))
}

#[tool_router(server_handler)]
impl Desk {
    /// Needs `tickets:read`.
    #[tool(description = "List the caller's open tickets")]
    async fn list_tickets(
        &self,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<String, ErrorData> {
        let m = mandate(&parts)?;
        Ok(serde_json::json!({ "owner": m.subject(), "tickets": ["T-1", "T-2"] }).to_string())
    }

    /// Needs `billing:payout`, delegated authority and target `resource://billing`.
    #[tool(description = "Create a payout on the caller's behalf")]
    async fn create_payout(
        &self,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<String, ErrorData> {
        let m = mandate(&parts)?;
        Ok(serde_json::json!({ "payout": "P-1", "by": m.subject(), "hops": m.hops() }).to_string())
    }
}

/// The application: `/mcp` behind the per-tool layer, and the metadata document.
pub fn app(verifier: Verifier, resource: &str) -> Result<Router, ConfigError> {
    let meta = ProtectedResourceMetadata::builder(resource)
        .authorization_server(verifier.issuer())
        .scopes_supported(["tickets:read", "billing:payout"])
        .build()?;
    let layer = McpLayer::new(verifier)
        .tool("list_tickets", Requirements::new().scopes(["tickets:read"]))
        .tool(
            "create_payout",
            Requirements::new()
                .scopes(["billing:payout"])
                .delegation()
                .targets(["resource://billing"]),
        )
        .resource_metadata(&meta);
    let mcp = StreamableHttpService::new(
        || Ok(Desk),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    // rmcp's response body becomes axum's, which the layer can answer denials in.
    let mcp = ServiceBuilder::new()
        .layer(layer)
        .map_response(IntoResponse::into_response)
        .service(mcp);
    let mut app = Router::new().route_service("/mcp", mcp);
    for path in meta.paths() {
        let meta = meta.clone();
        app = app.route(
            path,
            get(move || async move { meta.response().map(axum::body::Body::from) }),
        );
    }
    Ok(app)
}

#[allow(dead_code, reason = "tests/mcp.rs includes this file for `app`")]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let verifier = VerifierBuilder::from_env()?.build()?;
    let bind: SocketAddr = std::env::var("BIND_ADDR")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_BIND_ADDR.to_owned())
        .parse()
        .map_err(|e| format!("BIND_ADDR: {e}"))?;
    let resource =
        std::env::var("MCP_RESOURCE_URL").unwrap_or_else(|_| format!("http://{bind}/mcp"));
    let app = app(verifier, &resource)?;
    let listener = TcpListener::bind(bind).await?;
    println!("MCP server on http://{bind}/mcp, metadata for {resource}");
    axum::serve(listener, app).await?;
    Ok(())
}
