//! The axum extractor for [`RequestContext`] (feature `axum`).

use std::convert::Infallible;
use std::fmt;

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;

use super::RequestContext;
use crate::MissingMandate;
use crate::mandate::Mandate;

/// Takes the [`RequestContext`] of the verified request from the request extensions,
/// where [`MandateLayer`](crate::layer::MandateLayer) puts it after verifying.
///
/// Without one, the rejection is [`MissingRequestContext`]: the same 401
/// `missing_token` as the [`Mandate`] extractor when no mandate was verified, and 500
/// when a mandate was verified but nothing put its context into the extensions.
impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
    type Rejection = MissingRequestContext;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(ctx) = parts.extensions.get::<RequestContext>() {
            return Ok(ctx.clone());
        }
        if parts.extensions.get::<Mandate>().is_some() {
            tracing::error!(
                target: "caracal_verifier::context",
                "a mandate was verified but no RequestContext was put into the request extensions"
            );
            return Err(MissingRequestContext(Kind::NotAttached));
        }
        match <Mandate as FromRequestParts<S>>::from_request_parts(parts, state).await {
            Err(missing) => Err(MissingRequestContext(Kind::NoMandate(missing))),
            // Not reached: checked above. Answer as a wiring fault, never a panic.
            Ok(_) => Err(MissingRequestContext(Kind::NotAttached)),
        }
    }
}

/// `Option<RequestContext>`: `None` when the request has no context.
impl<S: Send + Sync> OptionalFromRequestParts<S> for RequestContext {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<RequestContext>().cloned())
    }
}

/// The rejection of the [`RequestContext`] extractor.
///
/// - No verified mandate (no layer in front of the handler, or an anonymous request
///   let through by an optional layer): the [`Mandate`] extractor's own rejection,
///   401 `missing_token`.
/// - A verified mandate but no context in the extensions: 500, a wiring fault of
///   the service (like axum's `Extension` rejection), logged at `ERROR`.
pub struct MissingRequestContext(Kind);

enum Kind {
    NoMandate(MissingMandate),
    NotAttached,
}

impl MissingRequestContext {
    /// The response status: 401 or 500.
    pub fn status(&self) -> StatusCode {
        match &self.0 {
            Kind::NoMandate(m) => m.status(),
            Kind::NotAttached => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl fmt::Debug for MissingRequestContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MissingRequestContext")
            .field("status", &self.status())
            .finish()
    }
}

impl fmt::Display for MissingRequestContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::NoMandate(m) => m.fmt(f),
            Kind::NotAttached => f.write_str("no request context for the verified mandate"),
        }
    }
}

impl std::error::Error for MissingRequestContext {}

impl IntoResponse for MissingRequestContext {
    fn into_response(self) -> Response {
        match self.0 {
            Kind::NoMandate(m) => m.into_response(),
            Kind::NotAttached => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "request context not attached to the verified request",
            )
                .into_response(),
        }
    }
}
