//! axum extractors for the verified [`Mandate`] (feature `axum`).
//!
//! A handler behind a [`MandateLayer`](crate::layer::MandateLayer) takes the mandate
//! the layer verified as `Mandate`, or as `Option<Mandate>` behind an
//! [optional](crate::layer::MandateLayer::optional) layer.
//!
//! ```
//! use axum::{Router, body::Body, routing::get};
//! use caracal_verifier::{Mandate, Requirements, Verifier};
//! use caracal_verifier::layer::MandateLayer;
//! use caracal_verifier::testing::TestIssuer;
//! use tower::ServiceExt;
//!
//! async fn whoami(mandate: Option<Mandate>) -> String {
//!     match mandate {
//!         Some(m) => format!("hello {}", m.subject()),
//!         None => "hello stranger".to_owned(),
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let sts = TestIssuer::start("zone-1").await?;
//! let verifier = Verifier::builder()
//!     .issuer(sts.issuer_url())
//!     .audience("resource://api")
//!     .zone("zone-1")
//!     .build()?;
//! let app = Router::new()
//!     .route("/whoami", get(whoami))
//!     .layer(MandateLayer::new(verifier, Requirements::new()).optional());
//!
//! let response = app.oneshot(http::Request::get("/whoami").body(Body::empty())?).await?;
//! assert_eq!(response.status(), 200);
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::fmt;

use axum_core::body::Body;
use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use bytes::Bytes;
use http::HeaderValue;
use http::header::WWW_AUTHENTICATE;
use http::request::Parts;

use crate::error::AuthError;
use crate::layer::{Anonymous, JsonRenderer, Renderer, request_id};
use crate::mandate::Mandate;

/// Takes the mandate a [`MandateLayer`](crate::layer::MandateLayer) verified. Without
/// one (no layer in front of the handler, or an anonymous request let through by an
/// optional layer) the request is denied with 401 `missing_token`.
impl<S: Send + Sync> FromRequestParts<S> for Mandate {
    type Rejection = MissingMandate;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Mandate>() {
            Some(m) => Ok(m.clone()),
            None => Err(MissingMandate::new(parts)),
        }
    }
}

/// `Option<Mandate>`: `None` when no layer verified a mandate for this request.
impl<S: Send + Sync> OptionalFromRequestParts<S> for Mandate {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Mandate>().cloned())
    }
}

/// The rejection of the [`Mandate`] extractor: 401 `missing_token`, rendered like the
/// layer's own denials (same renderer, realm and request id) when an optional layer
/// let the request through.
pub struct MissingMandate {
    response: http::Response<Bytes>,
}

impl MissingMandate {
    fn new(parts: &Parts) -> Self {
        let err = AuthError::MissingToken;
        let id = request_id(&parts.headers);
        if let Some(anonymous) = parts.extensions.get::<Anonymous>() {
            tracing::info!(
                target: "caracal_verifier::decision",
                decision = "deny",
                code = err.code().as_str(),
                status = err.status().as_u16(),
                request_id = id,
                "handler requires a mandate; request had no credentials"
            );
            return Self {
                response: anonymous.config.rejecter.reject(&err, &id),
            };
        }
        tracing::warn!(
            target: "caracal_verifier::decision",
            decision = "deny",
            code = err.code().as_str(),
            status = err.status().as_u16(),
            request_id = id,
            "no MandateLayer in front of a handler that takes a Mandate"
        );
        let mut response = JsonRenderer.render(&err, &id);
        let headers = response.headers_mut();
        headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        if let Ok(v) = HeaderValue::from_str(&id) {
            headers.insert("x-request-id", v);
        }
        Self { response }
    }

    /// The response status (401).
    pub fn status(&self) -> http::StatusCode {
        self.response.status()
    }
}

impl fmt::Debug for MissingMandate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MissingMandate")
            .field("status", &self.response.status())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for MissingMandate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no verified mandate for this request")
    }
}

impl std::error::Error for MissingMandate {}

impl IntoResponse for MissingMandate {
    fn into_response(self) -> Response {
        self.response.map(Body::from)
    }
}
