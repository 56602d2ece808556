//! gRPC: protect a `tonic` server with mandates, method by method.
//!
//! [`GrpcMandateLayer`] goes on `tonic::transport::Server::builder().layer(…)`. It
//! reads the bearer mandate from the `authorization` metadata, verifies it against
//! the [`Requirements`] of the called method (keyed by the gRPC path,
//! `/package.Service/Method`), and hands the verified [`Mandate`](crate::Mandate) to the method
//! through the request extensions: `request.extensions().get::<Mandate>()` on the
//! `tonic::Request`.
//!
//! ```no_run
//! use caracal_verifier::grpc::GrpcMandateLayer;
//! use caracal_verifier::{Mandate, Requirements, Verifier};
//!
//! # async fn serve(routes: tonic::service::Routes) -> Result<(), Box<dyn std::error::Error>> {
//! let verifier = Verifier::from_env()?;
//! let layer = GrpcMandateLayer::new(verifier)
//!     .method("/caracal.demo.v1.Tickets/List", Requirements::new().scopes(["tickets:read"]))
//!     .method(
//!         "/caracal.demo.v1.Tickets/Create",
//!         Requirements::new().scopes(["tickets:write"]).agent(),
//!     )
//!     .unprotected_service("grpc.health.v1.Health");
//! tonic::transport::Server::builder()
//!     .layer(layer)
//!     .add_routes(routes)
//!     .serve("127.0.0.1:50051".parse()?)
//!     .await?;
//! # Ok(()) }
//! // In a method: `let mandate = request.extensions().get::<Mandate>();`
//! ```
//!
//! # Which methods need what
//!
//! A call is checked against, in order: its method's requirements
//! ([`method`](GrpcMandateLayer::method)), its service's
//! ([`service`](GrpcMandateLayer::service)), then the default. **By default an
//! unlisted method is denied** (`PERMISSION_DENIED`) before any credential is read:
//! a method added to a service later is closed until someone decides what it needs.
//! [`default_requirements`](GrpcMandateLayer::default_requirements) opens unlisted
//! methods to any mandate meeting the given requirements instead. Services listed
//! with [`unprotected_service`](GrpcMandateLayer::unprotected_service) (the health
//! service, reflection) are passed through with no check and no [`Mandate`](crate::Mandate).
//!
//! # Denials
//!
//! A denial is a gRPC status in a trailers-only response: HTTP 200,
//! `content-type: application/grpc`, and, as metadata:
//!
//! | mandate check | `grpc-status` |
//! | --- | --- |
//! | 401 (`missing_token`, `invalid_token`, `session_revoked`, …) | `UNAUTHENTICATED` (16) |
//! | 403 (`scope_insufficient`, `agent_identity_required`, …) | `PERMISSION_DENIED` (7) |
//! | 413 `payload_too_large` | `RESOURCE_EXHAUSTED` (8) |
//! | 503 (`sts_unavailable`, `revocation_unavailable`) | `UNAVAILABLE` (14) |
//!
//! - `grpc-message`: the error's description, percent-encoded as the gRPC spec asks;
//! - `caracal-error`: the Caracal code, in the verifier's
//!   [`code_spelling`](crate::VerifierBuilder::code_spelling);
//! - `x-request-id`: the incoming one when sane, otherwise a random one;
//! - `www-authenticate`: the RFC 6750 challenge, as [`MandateLayer`] sends it on 401
//!   and on 403 `scope_insufficient`; `retry-after: 5` on `UNAVAILABLE`.
//!
//! An unlisted method's denial carries `grpc-status: 7`, a `grpc-message` and an
//! `x-request-id`, and no `caracal-error`: no mandate was checked.
//!
//! The token never appears in a status, in metadata or in a trace event. Tracing,
//! statistics, audit records and stacking behave as with [`MandateLayer`] (one
//! decision event per checked call; an action record's status is the HTTP status of
//! the mandate check, as above, not the gRPC one).
//!
//! The layer needs only `http` types: it works on any Tower service whose response
//! body is `Default` (an empty body), as `tonic::body::Body` is.
//!
//! [`MandateLayer`]: crate::layer::MandateLayer

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::{AuthError, CodeSpelling};
use crate::layer::{MandateLayer, MandateService, ResponseFuture};
use crate::requirements::Requirements;
use crate::verifier::Verifier;

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const CARACAL_ERROR: HeaderName = HeaderName::from_static("caracal-error");
const APPLICATION_GRPC: HeaderValue = HeaderValue::from_static("application/grpc");

/// `grpc-status` of a denial of an unlisted method.
const PERMISSION_DENIED: u16 = 7;

/// The gRPC status code of a mandate check's HTTP status.
fn grpc_code(status: StatusCode) -> u16 {
    match status {
        StatusCode::UNAUTHORIZED => 16,
        StatusCode::FORBIDDEN => PERMISSION_DENIED,
        StatusCode::PAYLOAD_TOO_LARGE => 8,
        StatusCode::SERVICE_UNAVAILABLE => 14,
        // No other status comes out of a check; INTERNAL if one ever does.
        _ => 13,
    }
}

/// Percent-encode a `grpc-message` as the gRPC HTTP/2 spec asks: every byte outside
/// visible ASCII and space, and `%` itself.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Renders a denial as gRPC metadata. The HTTP status stays the check's, so the
/// layer adds the challenge headers; [`GrpcResponseFuture`] then answers 200.
#[derive(Debug, Clone, Copy)]
struct GrpcRenderer(CodeSpelling);

impl crate::layer::Renderer for GrpcRenderer {
    fn render(&self, err: &AuthError, _request_id: &str) -> Response<Bytes> {
        let mut response = Response::new(Bytes::new());
        *response.status_mut() = err.status();
        let h = response.headers_mut();
        h.insert(CONTENT_TYPE, APPLICATION_GRPC);
        h.insert(GRPC_STATUS, HeaderValue::from(grpc_code(err.status())));
        if let Ok(v) = HeaderValue::from_str(&percent_encode(&err.description())) {
            h.insert(GRPC_MESSAGE, v);
        }
        h.insert(
            CARACAL_ERROR,
            HeaderValue::from_static(self.0.code(err.code())),
        );
        response
    }
}

/// What a call to one method is checked against.
#[derive(Clone)]
enum Rule {
    Check(MandateLayer),
    Unprotected,
}

/// A Tower layer for gRPC servers: per-method [`Requirements`], denials as gRPC
/// statuses, the verified [`Mandate`](crate::Mandate) in the request extensions. See the
/// [module docs](self).
///
/// The layer holds configuration only; cloning it, and each service it makes, is an
/// `Arc` clone.
#[derive(Clone)]
#[must_use]
pub struct GrpcMandateLayer {
    policy: Arc<Policy>,
}

#[derive(Clone)]
struct Policy {
    verifier: Verifier,
    realm: Option<String>,
    /// Keyed by `/package.Service/Method`, or `/package.Service/` for a service.
    rules: HashMap<String, Rule>,
    /// `Rule::Check` when unlisted methods are open; `None` denies them.
    default: Option<Rule>,
}

impl fmt::Debug for GrpcMandateLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &*self.policy;
        let mut keys: Vec<&str> = p.rules.keys().map(String::as_str).collect();
        keys.sort_unstable();
        f.debug_struct("GrpcMandateLayer")
            .field("verifier", &p.verifier)
            .field("rules", &keys)
            .field(
                "default",
                &match &p.default {
                    Some(Rule::Check(layer)) => Some(layer.requirements()),
                    _ => None,
                },
            )
            .finish_non_exhaustive()
    }
}

impl GrpcMandateLayer {
    /// A layer verifying with `verifier` that, until methods are listed, denies
    /// every call (see [`default_requirements`](Self::default_requirements)).
    pub fn new(verifier: Verifier) -> Self {
        Self {
            policy: Arc::new(Policy {
                verifier,
                realm: None,
                rules: HashMap::new(),
                default: None,
            }),
        }
    }

    fn check(&self, reqs: Requirements) -> MandateLayer {
        let p = &self.policy;
        let layer = MandateLayer::new(p.verifier.clone(), reqs)
            .renderer(GrpcRenderer(p.verifier.code_spelling()));
        match &p.realm {
            Some(realm) => layer.realm(realm),
            None => layer,
        }
    }

    /// Calls to `path`, `/package.Service/Method` as on the wire (for example
    /// `/caracal.demo.v1.Tickets/List`), need a mandate meeting `reqs`. A method's
    /// entry wins over its service's. A path that matches no call is never used, so
    /// a misspelled one leaves the method denied by default.
    pub fn method(mut self, path: impl Into<String>, reqs: Requirements) -> Self {
        let rule = Rule::Check(self.check(reqs));
        Arc::make_mut(&mut self.policy)
            .rules
            .insert(path.into(), rule);
        self
    }

    /// Every method of `service` (`package.Service`, without slashes) without its
    /// own [`method`](Self::method) entry needs a mandate meeting `reqs`.
    pub fn service(mut self, service: impl AsRef<str>, reqs: Requirements) -> Self {
        let rule = Rule::Check(self.check(reqs));
        let key = format!("/{}/", service.as_ref());
        Arc::make_mut(&mut self.policy).rules.insert(key, rule);
        self
    }

    /// Pass every call to `service` (`package.Service`, say `grpc.health.v1.Health`)
    /// through with no check: no credential is read and no [`Mandate`](crate::Mandate) is handed
    /// on. Its methods' own [`method`](Self::method) entries still apply. Meant for
    /// health checks and server reflection, which load balancers and tools call
    /// without credentials; never for a service that acts on a principal's behalf.
    pub fn unprotected_service(mut self, service: impl AsRef<str>) -> Self {
        let key = format!("/{}/", service.as_ref());
        Arc::make_mut(&mut self.policy)
            .rules
            .insert(key, Rule::Unprotected);
        self
    }

    /// Open methods with no [`method`](Self::method) or
    /// [`service`](Self::service) entry to mandates meeting `reqs`. Default: such
    /// methods are denied (`PERMISSION_DENIED`) without reading the credential.
    /// Turning this on means a method added to the server later is reachable with
    /// any mandate meeting `reqs`, before anyone decided what it should need.
    pub fn default_requirements(mut self, reqs: Requirements) -> Self {
        let rule = Rule::Check(self.check(reqs));
        Arc::make_mut(&mut self.policy).default = Some(rule);
        self
    }

    /// The `realm` of `www-authenticate` challenges, for every method. Default: the
    /// verifier's audience. Sanitized as [`MandateLayer::realm`] does.
    pub fn realm(mut self, realm: impl Into<String>) -> Self {
        let policy = Arc::make_mut(&mut self.policy);
        let realm = realm.into();
        for rule in policy.rules.values_mut().chain(policy.default.as_mut()) {
            if let Rule::Check(layer) = rule {
                *layer = layer.clone().realm(&realm);
            }
        }
        policy.realm = Some(realm);
        self
    }

    /// The requirements a call to `path` is checked against: `None` when it is
    /// denied without a check (unlisted, with no default) or passed through
    /// unchecked (an [unprotected](Self::unprotected_service) service).
    pub fn requirements_for(&self, path: &str) -> Option<&Requirements> {
        match self.policy.rule(path)? {
            Rule::Check(layer) => Some(layer.requirements()),
            Rule::Unprotected => None,
        }
    }
}

impl Policy {
    fn rule(&self, path: &str) -> Option<&Rule> {
        if let Some(rule) = self.rules.get(path) {
            return Some(rule);
        }
        // `/package.Service/Method`: the service's key keeps the trailing slash.
        let service = path
            .strip_prefix('/')
            .and_then(|rest| rest.find('/').map(|i| &path[..i + 2]));
        if let Some(rule) = service.and_then(|s| self.rules.get(s)) {
            return Some(rule);
        }
        self.default.as_ref()
    }
}

impl<S> Layer<S> for GrpcMandateLayer {
    type Service = GrpcMandateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMandateService {
            inner,
            policy: Arc::clone(&self.policy),
        }
    }
}

/// The service made by [`GrpcMandateLayer`].
#[derive(Clone)]
pub struct GrpcMandateService<S> {
    inner: S,
    policy: Arc<Policy>,
}

impl<S: fmt::Debug> fmt::Debug for GrpcMandateService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcMandateService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The inner service as the [`MandateService`] sees it: its whole response travels
/// in the body, so the gRPC future can tell a denial from an answer.
#[derive(Clone)]
struct Carry<S>(S);

/// The body of a response through [`Carry`]: the inner service's response, or a
/// denial the layer rendered (its head is the response).
enum Carried<R> {
    Answer(R),
    Denied,
}

impl<R> From<Bytes> for Carried<R> {
    fn from(_: Bytes) -> Self {
        // Denials are trailers-only: the rendered body (empty) is dropped.
        Carried::Denied
    }
}

impl<S, ReqB> Service<Request<ReqB>> for Carry<S>
where
    S: Service<Request<ReqB>>,
{
    type Response = Response<Carried<S::Response>>;
    type Error = S::Error;
    type Future = CarryFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        CarryFuture {
            fut: self.0.call(req),
        }
    }
}

pin_project! {
    struct CarryFuture<F> {
        #[pin]
        fut: F,
    }
}

impl<F, R, E> Future for CarryFuture<F>
where
    F: Future<Output = Result<R, E>>,
{
    type Output = Result<Response<Carried<R>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = ready!(self.project().fut.poll(cx))?;
        // An audit record of an answered call reads this carrier's status: 200, as
        // gRPC answers are (the outcome is in `grpc-status`).
        Poll::Ready(Ok(Response::new(Carried::Answer(response))))
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for GrpcMandateService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    ResB: Default,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = GrpcResponseFuture<S, ReqB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // `self.inner` is the instance `poll_ready` made ready: it takes this request.
        let clone = self.inner.clone();
        let mut inner = mem::replace(&mut self.inner, clone);
        let state = match self.policy.rule(req.uri().path()) {
            Some(Rule::Unprotected) => GrpcState::Unprotected {
                fut: inner.call(req),
            },
            Some(Rule::Check(layer)) => {
                let mut service: MandateService<Carry<S>> = layer.layer(Carry(inner));
                GrpcState::Checked {
                    fut: service.call(req),
                }
            }
            None => GrpcState::Unlisted {
                head: Some(unlisted(&req)),
            },
        };
        GrpcResponseFuture { state }
    }
}

/// The denial of a method with no rule: checked before any credential is read.
fn unlisted<B>(req: &Request<B>) -> HeaderMap {
    let request_id = crate::layer::incoming_request_id(req.headers())
        .map_or_else(crate::layer::generate_request_id, str::to_owned);
    tracing::info!(
        target: "caracal_verifier::decision",
        decision = "deny",
        status = 403,
        reason = "unlisted_method",
        request_id,
        "gRPC method {} has no mandate requirements; denied by default",
        req.uri().path(),
    );
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, APPLICATION_GRPC);
    h.insert(GRPC_STATUS, HeaderValue::from(PERMISSION_DENIED));
    h.insert(
        GRPC_MESSAGE,
        HeaderValue::from_static("method not open to mandates on this server"),
    );
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert(crate::layer::X_REQUEST_ID, v);
    }
    h
}

pin_project! {
    /// The response future of [`GrpcMandateService`].
    pub struct GrpcResponseFuture<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        #[pin]
        state: GrpcState<S, ReqB>,
    }
}

pin_project! {
    #[project = GrpcStateProj]
    enum GrpcState<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        Checked {
            #[pin]
            fut: ResponseFuture<Carry<S>, ReqB>,
        },
        Unprotected {
            #[pin]
            fut: S::Future,
        },
        Unlisted {
            head: Option<HeaderMap>,
        },
    }
}

impl<S, ReqB> fmt::Debug for GrpcResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            GrpcState::Checked { .. } => "Checked",
            GrpcState::Unprotected { .. } => "Unprotected",
            GrpcState::Unlisted { .. } => "Unlisted",
        };
        f.debug_struct("GrpcResponseFuture")
            .field("state", &state)
            .finish()
    }
}

/// A trailers-only gRPC response: HTTP 200 with the status in `headers`.
fn trailers_only<B: Default>(headers: HeaderMap) -> Response<B> {
    let mut response = Response::new(B::default());
    *response.headers_mut() = headers;
    response
}

impl<S, ReqB, ResB> Future for GrpcResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Default,
{
    type Output = Result<Response<ResB>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            GrpcStateProj::Checked { fut } => {
                let response = ready!(fut.poll(cx))?;
                let (parts, body) = response.into_parts();
                Poll::Ready(Ok(match body {
                    Carried::Answer(response) => response,
                    Carried::Denied => trailers_only(parts.headers),
                }))
            }
            GrpcStateProj::Unprotected { fut } => fut.poll(cx),
            GrpcStateProj::Unlisted { head } => Poll::Ready(Ok(trailers_only(
                head.take()
                    .expect("GrpcResponseFuture polled after completion"),
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode("plain text: ok"), "plain text: ok");
        assert_eq!(percent_encode("100% sure"), "100%25 sure");
        assert_eq!(percent_encode("a\nb"), "a%0Ab");
        assert_eq!(percent_encode("zoné"), "zon%C3%A9");
    }

    #[tokio::test]
    async fn a_method_entry_wins_over_its_service_then_the_default() {
        let sts = crate::testing::TestIssuer::start("zone-1").await.unwrap();
        let verifier = Verifier::builder()
            .issuer(sts.issuer_url())
            .audience("resource://api")
            .zone("zone-1")
            .build()
            .unwrap();
        let read = Requirements::new().scopes(["a:read"]);
        let write = Requirements::new().scopes(["a:write"]);
        let layer = GrpcMandateLayer::new(verifier)
            .service("pkg.A", read.clone())
            .method("/pkg.A/Write", write.clone())
            .unprotected_service("grpc.health.v1.Health");
        assert_eq!(layer.requirements_for("/pkg.A/List"), Some(&read));
        assert_eq!(layer.requirements_for("/pkg.A/Write"), Some(&write));
        assert_eq!(layer.requirements_for("/grpc.health.v1.Health/Check"), None);
        assert_eq!(layer.requirements_for("/pkg.B/List"), None);
        assert_eq!(layer.requirements_for("/pkg.A"), None);
        assert_eq!(layer.requirements_for(""), None);
        let open = layer.default_requirements(Requirements::new());
        assert_eq!(
            open.requirements_for("/pkg.B/List"),
            Some(&Requirements::new())
        );
        assert_eq!(open.requirements_for("/grpc.health.v1.Health/Check"), None);
    }

    #[test]
    fn statuses_map_to_grpc_codes() {
        assert_eq!(grpc_code(StatusCode::UNAUTHORIZED), 16);
        assert_eq!(grpc_code(StatusCode::FORBIDDEN), 7);
        assert_eq!(grpc_code(StatusCode::PAYLOAD_TOO_LARGE), 8);
        assert_eq!(grpc_code(StatusCode::SERVICE_UNAVAILABLE), 14);
    }
}
