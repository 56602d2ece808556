//! The Tower layer: protect axum routers and hyper services with mandates.
//!
//! [`MandateLayer`] reads the bearer token from the `Authorization` header, verifies
//! it with a [`Verifier`](crate::Verifier) against the route's
//! [`Requirements`](crate::Requirements), and puts the verified
//! [`Mandate`](crate::Mandate) into the request extensions. With the `axum` feature,
//! handlers take it as an extractor (`Mandate`, or `Option<Mandate>` behind an
//! [optional](MandateLayer::optional) layer).
//!
//! ```
//! use axum::{Router, body::Body, routing::get};
//! use caracal_verifier::{Mandate, Requirements, Verifier};
//! use caracal_verifier::layer::MandateLayer;
//! use caracal_verifier::testing::TestIssuer;
//! use tower::ServiceExt;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let sts = TestIssuer::start("zone-1").await?;
//! let verifier = Verifier::builder()
//!     .issuer(sts.issuer_url())
//!     .audience("resource://api")
//!     .zone("zone-1")
//!     .build()?;
//!
//! let app = Router::new()
//!     .route("/tickets", get(|m: Mandate| async move { m.subject().to_owned() }))
//!     .layer(MandateLayer::new(verifier, Requirements::new().scopes(["tickets:read"])));
//!
//! let token = sts.mandate().scopes(["tickets:read"]).sign();
//! let request = http::Request::get("/tickets")
//!     .header("authorization", format!("Bearer {token}"))
//!     .body(Body::empty())?;
//! assert_eq!(app.clone().oneshot(request).await?.status(), 200);
//!
//! let anonymous = http::Request::get("/tickets").body(Body::empty())?;
//! let denied = app.oneshot(anonymous).await?;
//! assert_eq!(denied.status(), 401);
//! assert_eq!(denied.headers()["www-authenticate"], "Bearer realm=\"resource://api\"");
//! # Ok(()) }
//! ```
//!
//! # Credentials
//!
//! Only `Authorization: Bearer <token>` is read (RFC 6750 §2.1): the scheme is
//! case-insensitive and may be followed by several spaces. A token in the query
//! string or a form body is never read. No header, or another scheme, is
//! `missing_token`; two `Authorization` headers are `invalid_token`, never "first
//! wins".
//!
//! # Denials
//!
//! Every denial is an `Ok` response; the inner service's error type is never used.
//! By default ([`JsonRenderer`]) the body is
//! `{"error", "error_description", "hint", "requestId", "details"}` as
//! `application/json`, with the error's status. The layer adds:
//!
//! - `x-request-id`: the incoming one when it is 1 to 128 visible ASCII characters,
//!   otherwise a random one; it is also the body's `requestId`;
//! - on 401, `WWW-Authenticate: Bearer realm="…"`, plus `error="invalid_token"`
//!   unless the request had no credentials;
//! - on 403 `scope_insufficient`, `WWW-Authenticate: Bearer realm="…",
//!   error="insufficient_scope", scope="…"` listing the route's scopes;
//! - on 503, `Retry-After: 5`.
//!
//! [`MandateLayer::challenge_param`] adds attributes to every challenge (for MCP,
//! `resource_metadata="…"`, RFC 9728 §5.1).
//!
//! Attribute values come from configuration, sanitized, never from the request.
//! Replace the body with a [`Renderer`].
//!
//! For clients built on Caracal's TypeScript, Go or Python verifier packages,
//! [`VerifierBuilder::code_spelling`](crate::VerifierBuilder::code_spelling)
//! (`CARACAL_CODE_SPELLING=sdk`) makes the default body answer `invalid_zone`,
//! `insufficient_scope` and `session_required`, with the hint under `error_hint`.
//! Statuses and headers do not change.
//!
//! # Tracing
//!
//! Each decision emits one event with target `caracal_verifier::decision`: `decision`
//! (`allow`, `deny` or `anonymous`), `code`, `status`, `reason`, `zone`, `client_id`,
//! `sid` and `request_id`. Allowed requests log at `DEBUG`, denials at `INFO`, 503s
//! at `WARN`. `request_id` is the incoming `x-request-id`; without one, denials
//! generate it and allowed requests log none. When layers stack, each layer that
//! decides emits its own event (the outer layer's `allow`, then the route layer's
//! verdict). The token and the `Authorization` header are never recorded, and the
//! layer opens no span. The layer marks every `Authorization` value sensitive
//! ([`HeaderValue::set_sensitive`](http::HeaderValue::set_sensitive)) before
//! passing the request on, so the inner service, and any tracing or logging layer
//! inside this one, sees it redacted in `Debug`.
//!
//! # Stacking
//!
//! A router-wide layer can carry the zone and issuer checks while route layers
//! (`Router::route_layer`, `MethodRouter::route_layer`) add scopes, agent, delegation
//! and chain requirements. Give them the same [`Verifier`](crate::Verifier) (or
//! clones of it) and the token is verified once: an inner layer reuses the
//! [`Mandate`](crate::Mandate) an outer layer verified under the same policy,
//! re-checking only expiry, revocation and its own requirements. A layer with a
//! separately built verifier verifies the token again under its own policy (`use`,
//! algorithms, key source, revocation set). A single-use mandate is recorded once
//! per replay guard per request, however many layers require it: layers sharing a
//! verifier record it once, and a layer with another guard records it in its own.
//!
//! Each layer decides with its own requirements, in
//! [`Verifier::verify`](crate::Verifier::verify)'s order (route requirements, then
//! revocation). Stacked, the outer layer decides first: behind a router-wide layer, a
//! revoked mandate is 401 `session_revoked` even on a route whose layer would have
//! answered 403 `scope_insufficient`. Caracal's guard checks a route's requirements
//! before revocation; to get its answer in every case, give each route one layer
//! carrying all of its requirements.

mod bearer;
mod builder_ext;
mod reject;
mod service;

pub use builder_ext::MandateServiceBuilderExt;
pub use reject::{JsonRenderer, Renderer};
pub use service::{MandateLayer, MandateService, ResponseFuture};

#[allow(
    unused_imports,
    reason = "the fuzzing entry point in `internals` calls it"
)]
pub(crate) use bearer::bearer;
#[cfg(feature = "mcp")]
pub(crate) use reject::Rejecter;
#[cfg(feature = "grpc")]
pub(crate) use reject::X_REQUEST_ID;
#[cfg(feature = "axum")]
pub(crate) use reject::request_id;
#[cfg(any(feature = "grpc", feature = "mcp"))]
pub(crate) use reject::{generate_request_id, incoming_request_id};
#[cfg(feature = "axum")]
pub(crate) use service::Anonymous;
