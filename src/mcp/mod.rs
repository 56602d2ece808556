//! MCP authorization for protected resources: per-tool requirements on an MCP
//! server's JSON-RPC calls, and the RFC 9728 Protected Resource Metadata that tells
//! MCP clients where to get a mandate.
//!
//! ```
//! use axum::{Router, routing::{get, post}};
//! use caracal_verifier::mcp::{McpLayer, ProtectedResourceMetadata};
//! use caracal_verifier::{Requirements, Verifier};
//!
//! # fn app(verifier: Verifier, mcp: Router) -> Result<Router, caracal_verifier::ConfigError> {
//! let meta = ProtectedResourceMetadata::builder("https://api.example.com/mcp")
//!     .authorization_server(verifier.issuer())
//!     .scopes_supported(["tickets:read"])
//!     .build()?;
//! let layer = McpLayer::new(verifier)
//!     .tool("list_tickets", Requirements::new().scopes(["tickets:read"]))
//!     .resource_metadata(&meta);
//! let mut app = Router::new().nest_service("/mcp", mcp.layer(layer));
//! for path in meta.paths() {
//!     let meta = meta.clone();
//!     app = app.route(path, get(move || async move { meta.response().map(axum::body::Body::from) }));
//! }
//! # Ok(app) }
//! ```
//!
//! # Answers
//!
//! | request | status | body | `WWW-Authenticate` |
//! | --- | --- | --- | --- |
//! | no or bad mandate | 401 | the layer's JSON denial | `Bearer realm=…, resource_metadata="…"[, error="invalid_token"]` |
//! | a call missing a scope | 403 | JSON-RPC error, `id` of the call | `…, error="insufficient_scope", scope="<the call's scopes>"` |
//! | another requirement unmet | its status (403, 401, 503) | JSON-RPC error | on 401 as above |
//! | a tool, resource or prompt with no entry | 403 | JSON-RPC error, `data.error = "not_configured"` | none |
//! | body over the cap | 413 | JSON-RPC error `-32600`, `id: null` | none |
//! | malformed JSON | 400 | JSON-RPC error `-32700`, `id: null` | none |
//! | a call without `params.name`/`params.uri` | 400 | JSON-RPC error `-32602` | none |
//!
//! A denied call's error has code [`DENIED_CODE`], the Caracal description as
//! `message`, and the Caracal JSON denial (`error`, `error_description`, `hint`,
//! `requestId`, `details`) as `data`.
//!
//! A batch runs only if every call in it passes. Otherwise nothing runs, and the
//! answer (with the first denial's status and challenge) is an array with an error
//! for each request in the batch: its own denial, or `data.error = "batch_denied"`.
//!
//! # Bounds
//!
//! The body is read at most [`max_body_bytes`](McpLayer::max_body_bytes) far,
//! batches hold at most [`max_batch`](McpLayer::max_batch) messages, and JSON
//! nesting is capped by serde_json's recursion limit (128).
//!
//! Not done: `tools/list` is passed through unfiltered; it lists tools the mandate
//! may not call.

mod layer;
mod metadata;

pub use layer::{DEFAULT_MAX_BATCH, DEFAULT_MAX_BODY_BYTES, DENIED_CODE, McpLayer, McpService};
pub use metadata::{ProtectedResourceMetadata, ProtectedResourceMetadataBuilder};
