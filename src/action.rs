//! Action results: what a [`MandateLayer`](crate::layer::MandateLayer) hands to an
//! audit sink once a request is answered, allowed or denied.
//!
//! Caracal's console pairs each request's authorization decision (the STS's) with an
//! action result (the service's). A verifier with an [`ActionSink`], attached by a
//! [source](crate::source) such as the `audit` feature's Redis emitter, gets one
//! [`ActionResult`] per request the layer decided: after the inner service answered,
//! or after the layer denied the request itself.
//!
//! The sink is called on the request path and must not block or fail the request:
//! queue the event and return.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::error::AuthError;
use crate::mandate::Mandate;

/// One answered request, as the layer saw it. Holds no token.
#[non_exhaustive]
#[derive(Clone)]
pub struct ActionResult {
    /// The request id: the incoming `x-request-id`, or the one the layer generated.
    pub request_id: String,
    /// When the request arrived, on the verifier's clock.
    pub occurred_at: SystemTime,
    /// The W3C trace id of the request, when known.
    pub trace_id: Option<String>,
    /// The HTTP method.
    pub method: http::Method,
    /// The status the client got.
    pub status: u16,
    /// From the request's arrival at the layer to the response head.
    pub latency: Duration,
    /// The verified mandate, for allowed requests (and for denials of a verified
    /// mandate by a stacked layer's route requirements).
    pub mandate: Option<Mandate>,
    /// The denial, when the layer denied the request.
    pub denial: Option<AuthError>,
    /// A short fingerprint of the bearer token (the first 8 bytes of its SHA-256, in
    /// hex, as Caracal's Gateway records it), when the request carried one. Never
    /// the token.
    pub subject_fingerprint: Option<String>,
    /// The SHA-256 of the verifier's manifest
    /// ([`Verifier::manifest_sha`](crate::Verifier::manifest_sha)), which audit
    /// events carry as `manifest_sha`.
    pub manifest_sha: Option<std::sync::Arc<str>>,
}

impl fmt::Debug for ActionResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActionResult")
            .field("request_id", &self.request_id)
            .field("trace_id", &self.trace_id)
            .field("method", &self.method)
            .field("status", &self.status)
            .field("latency", &self.latency)
            .field("mandate", &self.mandate)
            .field("denial", &self.denial.as_ref().map(AuthError::code))
            .finish_non_exhaustive()
    }
}

impl ActionResult {
    /// Whether the layer allowed the request (the inner service answered).
    pub fn is_allowed(&self) -> bool {
        self.denial.is_none()
    }

    /// Whether the request was denied because an anchor of its mandate was revoked
    /// or its delegation epoch is stale: authority ended before the request.
    pub fn revocation_interrupted(&self) -> bool {
        matches!(
            self.denial,
            Some(AuthError::SessionRevoked { .. } | AuthError::DelegationStale { .. })
        )
    }
}

/// Where action results go. Called on the request path: must return at once.
pub trait ActionSink: Send + Sync + fmt::Debug + 'static {
    /// Take one action result. Must not block; dropping the event (and counting
    /// it) is the answer to a full queue.
    fn record(&self, result: ActionResult);
}
