//! [`MandateLayer`], [`MandateService`] and their [`ResponseFuture`].

use std::fmt;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Level;

use super::bearer::{self, bearer};
use super::reject::{self, Rejecter, Renderer, SpelledJson};
use crate::action::{ActionResult, ActionSink};
use crate::context::{RequestContext, incoming_trace_id};
use crate::error::AuthError;
use crate::mandate::Mandate;
use crate::replay::ReplayGuard;
use crate::requirements::Requirements;
use crate::verifier::Verifier;

/// The tracing target of the one event emitted per decision.
const DECISION_TARGET: &str = "caracal_verifier::decision";

/// A Tower layer that verifies the request's bearer mandate against a route's
/// [`Requirements`] and hands the verified [`Mandate`] to the inner service through
/// the request extensions.
///
/// Denials are answered by the layer itself, as `Ok` responses (see
/// [`Renderer`]); the inner service is called only for allowed requests.
///
/// The layer holds configuration only; cloning it, and each [`MandateService`] it
/// makes, is an `Arc` clone.
///
/// # Stacking
///
/// When the request already carries a [`Mandate`] verified under this layer's
/// policy (put there by an outer `MandateLayer` built with the same [`Verifier`]
/// or a clone of it), the token is not verified again: the mandate is only
/// re-checked for expiry and revocation and checked against this layer's
/// requirements. A mandate from a separately built verifier is never reused, even
/// with the same issuer, audience and zone, since its `use`, algorithms, key
/// source or revocation set may differ: the token is verified again. A router-wide layer can carry the
/// zone and issuer checks while route layers add scopes, agent, delegation and
/// chain requirements.
///
/// ```
/// use axum::{Router, routing::get};
/// use caracal_verifier::{Mandate, Requirements, Verifier};
/// use caracal_verifier::layer::MandateLayer;
///
/// # fn app(verifier: Verifier) -> Router {
/// Router::new()
///     .route("/tickets", get(|m: Mandate| async move { m.subject().to_owned() }))
///     .route_layer(MandateLayer::new(verifier.clone(), Requirements::new().scopes(["tickets:read"])))
///     .layer(MandateLayer::new(verifier, Requirements::new()))
/// # }
/// ```
#[derive(Clone)]
#[must_use]
pub struct MandateLayer {
    config: Arc<Config>,
}

/// Everything a [`MandateService`] needs, shared by all its clones.
#[derive(Clone)]
pub(crate) struct Config {
    verifier: Verifier,
    reqs: Requirements,
    optional: bool,
    pub(crate) rejecter: Rejecter,
}

impl fmt::Debug for MandateLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &*self.config;
        f.debug_struct("MandateLayer")
            .field("verifier", &c.verifier)
            .field("requirements", &c.reqs)
            .field("optional", &c.optional)
            .field("realm", &c.rejecter.realm)
            .finish_non_exhaustive()
    }
}

impl MandateLayer {
    /// Require a valid mandate that meets `reqs`.
    ///
    /// Defaults: credentials are required (see [`optional`](Self::optional)),
    /// denials are rendered as [`JsonRenderer`] renders them, in the verifier's
    /// [`code_spelling`](crate::VerifierBuilder::code_spelling), and the challenge
    /// realm is the verifier's audience (see [`realm`](Self::realm)).
    ///
    /// [`JsonRenderer`]: super::JsonRenderer
    pub fn new(verifier: Verifier, reqs: Requirements) -> Self {
        let realm = reject::sanitize(verifier.audience());
        let renderer = Arc::new(SpelledJson(verifier.code_spelling()));
        Self {
            config: Arc::new(Config {
                verifier,
                reqs,
                optional: false,
                rejecter: Rejecter {
                    renderer,
                    realm,
                    params: String::new(),
                },
            }),
        }
    }

    /// Let requests without credentials through, with no [`Mandate`] in their
    /// extensions, so handlers can serve anonymous callers differently (take an
    /// `Option<Mandate>`). Default off.
    ///
    /// Only the absence of credentials is tolerated: a request with no
    /// `Authorization` header or with another scheme passes, while a bearer token
    /// that fails verification or the route's requirements is still denied.
    pub fn optional(mut self) -> Self {
        Arc::make_mut(&mut self.config).optional = true;
        self
    }

    /// Render denials with `renderer` instead of the default JSON body.
    /// The layer still adds the protocol headers (see [`Renderer`]).
    pub fn renderer(mut self, renderer: impl Renderer) -> Self {
        Arc::make_mut(&mut self.config).rejecter.renderer = Arc::new(renderer);
        self
    }

    /// The `realm` of `WWW-Authenticate` challenges. Default: the verifier's
    /// audience. Characters not allowed in a quoted value (anything but visible
    /// ASCII, `"` and `\`) are dropped.
    pub fn realm(mut self, realm: impl AsRef<str>) -> Self {
        Arc::make_mut(&mut self.config).rejecter.realm = reject::sanitize(realm.as_ref());
        self
    }

    /// Add the attribute `name="value"` to every `WWW-Authenticate` challenge the
    /// layer sends, after the realm. Default: none. For MCP (RFC 9728 §5.1),
    /// `challenge_param("resource_metadata", url)` tells clients where the
    /// Protected Resource Metadata is; `mcp::McpLayer::resource_metadata` does it.
    ///
    /// `name` keeps only ASCII letters, digits, `_` and `-`; in `value`, characters
    /// not allowed in a quoted value are dropped, as for [`realm`](Self::realm).
    pub fn challenge_param(mut self, name: &str, value: &str) -> Self {
        Arc::make_mut(&mut self.config)
            .rejecter
            .add_param(name, value);
        self
    }

    /// How this layer renders denials and challenges.
    #[cfg(feature = "mcp")]
    pub(crate) fn rejecter(&self) -> &Rejecter {
        &self.config.rejecter
    }

    /// The requirements this layer enforces.
    pub fn requirements(&self) -> &Requirements {
        &self.config.reqs
    }
}

impl<S> Layer<S> for MandateLayer {
    type Service = MandateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MandateService {
            inner,
            config: Arc::clone(&self.config),
        }
    }
}

/// The service made by [`MandateLayer`]: verifies, then calls `S` with the
/// [`Mandate`] in the request extensions, or answers the denial itself.
#[derive(Clone)]
pub struct MandateService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S: fmt::Debug> fmt::Debug for MandateService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MandateService")
            .field("inner", &self.inner)
            .field("requirements", &self.config.reqs)
            .field("optional", &self.config.optional)
            .finish_non_exhaustive()
    }
}

impl<S> MandateService<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwrap the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// The single uses recorded during this request: which replay guard recorded
/// which mandate. A stacked single-use layer skips recording only when its own
/// guard already recorded this mandate (counting it twice would deny it as
/// replayed); a layer with another guard, say a shared store behind an in-memory
/// one, still records it in its own.
#[derive(Clone, Default)]
struct Consumed(Vec<(Arc<dyn ReplayGuard>, Mandate)>);

impl Consumed {
    fn by(&self, guard: &Arc<dyn ReplayGuard>, m: &Mandate) -> bool {
        self.0
            .iter()
            .any(|(g, c)| Arc::ptr_eq(g, guard) && c.issuer() == m.issuer() && c.jti() == m.jti())
    }
}

/// Left in the extensions of a request an optional layer let through without
/// credentials, so the `Mandate` extractor can deny it like the layer would have.
#[cfg(feature = "axum")]
#[derive(Clone)]
pub(crate) struct Anonymous {
    pub(crate) config: Arc<Config>,
}

type VerifyFuture = Pin<Box<dyn Future<Output = Result<Mandate, AuthError>> + Send>>;

/// How the decision starts: settled at once, or waiting for verification.
enum Start {
    /// `Ok(None)`: an anonymous request an optional layer lets through.
    Decided(Result<Option<Mandate>, (AuthError, Option<Mandate>)>),
    Pending(VerifyFuture),
}

impl Config {
    fn start(self: &Arc<Self>, extensions: &http::Extensions, headers: &http::HeaderMap) -> Start {
        let verifier = &self.verifier;
        if let Some(m) = extensions.get::<Mandate>()
            && verifier.verified_here(m)
        {
            let m = m.clone();
            if let Err(e) = verifier.authorize(&m, &self.reqs) {
                return Start::Decided(Err((e, Some(m))));
            }
            let consumed = extensions
                .get::<Consumed>()
                .is_some_and(|c| c.by(&verifier.inner.replay, &m));
            if self.reqs.is_single_use() && !consumed {
                let config = Arc::clone(self);
                return Start::Pending(Box::pin(async move {
                    config.verifier.consume(&m).await.map(|()| m)
                }));
            }
            return Start::Decided(Ok(Some(m)));
        }
        match bearer::candidate(headers) {
            Ok(raw) => {
                // A cached token is decided here, with no copy of it and no future,
                // and with no scan of its characters: only a verified token can hit.
                if let Some(result) = verifier.verify_warm(raw, &self.reqs) {
                    return Start::Decided(result.map(Some).map_err(|e| (e, None)));
                }
                let token = match bearer::checked(raw) {
                    Ok(token) => token.to_owned(),
                    Err(e) => {
                        crate::stats::record(Err(&e), None);
                        return Start::Decided(Err((e, None)));
                    }
                };
                let config = Arc::clone(self);
                Start::Pending(Box::pin(async move {
                    config.verifier.verify(&token, &config.reqs).await
                }))
            }
            Err(AuthError::MissingToken) if self.optional => Start::Decided(Ok(None)),
            Err(e) => {
                // Refused before `verify`, which counts every other decision.
                crate::stats::record(Err(&e), None);
                Start::Decided(Err((e, None)))
            }
        }
    }

    /// Record an allowed request and hand it on: the mandate (or, for an anonymous
    /// request, the denial context) goes into the extensions.
    fn admit<B>(
        self: &Arc<Self>,
        req: &mut Request<B>,
        mandate: Option<Mandate>,
        audit: Option<&mut Audit>,
    ) {
        // Looked up only for a record that will be kept: the allowed path stays cheap.
        let wanted = audit.is_some() || tracing::enabled!(target: DECISION_TARGET, Level::DEBUG);
        let id = if wanted {
            request_id(req.headers(), audit.as_deref())
        } else {
            None
        };
        record(self, id, Ok(mandate.as_ref()));
        match mandate {
            Some(m) => {
                // The request's trace context, from the verified claims; a stacked
                // layer keeps the one the outer layer built (and its span).
                let ext = req.extensions();
                if ext.get::<RequestContext>().is_none() {
                    let ctx = RequestContext::from_request(req.headers(), &m);
                    req.extensions_mut().insert(ctx);
                }
                if let Some(a) = audit {
                    a.trace_id = req
                        .extensions()
                        .get::<RequestContext>()
                        .map(|c| c.trace_id().to_owned());
                    a.mandate = Some(m.clone());
                }
                if self.reqs.is_single_use() {
                    let guard = Arc::clone(&self.verifier.inner.replay);
                    let ext = req.extensions_mut();
                    match ext.get_mut::<Consumed>() {
                        Some(c) => c.0.push((guard, m.clone())),
                        None => {
                            ext.insert(Consumed(vec![(guard, m.clone())]));
                        }
                    }
                }
                req.extensions_mut().insert(m);
            }
            None => {
                #[cfg(feature = "axum")]
                req.extensions_mut().insert(Anonymous {
                    config: Arc::clone(self),
                });
            }
        }
    }

    /// Record a denial and render it.
    fn deny(
        &self,
        err: &AuthError,
        mandate: Option<&Mandate>,
        request_id: Option<&str>,
    ) -> Response<Bytes> {
        let request_id = request_id.map_or_else(reject::generate_request_id, str::to_owned);
        record(self, Some(&request_id), Err((err, mandate)));
        self.rejecter.reject(err, &request_id)
    }
}

/// The id of this request's records and denial: the action record's when there is
/// one (so both name the same id), otherwise the caller's `x-request-id`.
fn request_id<'a>(headers: &'a http::HeaderMap, audit: Option<&'a Audit>) -> Option<&'a str> {
    audit
        .map(|a| a.request_id.as_str())
        .or_else(|| reject::incoming_request_id(headers))
}

/// Mark every `Authorization` value sensitive, so tracing and debug layers further
/// in do not record the credential.
fn mark_authorization_sensitive(headers: &mut http::HeaderMap) {
    use http::header::{AUTHORIZATION, Entry};
    match headers.try_entry(AUTHORIZATION) {
        Ok(Entry::Occupied(mut auth)) => {
            for value in auth.iter_mut() {
                value.set_sensitive(true);
            }
        }
        Ok(Entry::Vacant(_)) => {}
        // A map at its maximum size: walk it instead (`entry` would panic).
        Err(_) => {
            for (name, value) in headers.iter_mut() {
                if name == AUTHORIZATION {
                    value.set_sensitive(true);
                }
            }
        }
    }
}

/// The one tracing event of a decision. Never includes the token.
fn record(
    config: &Config,
    request_id: Option<&str>,
    outcome: Result<Option<&Mandate>, (&AuthError, Option<&Mandate>)>,
) {
    let zone = config.verifier.zone();
    match outcome {
        Ok(Some(m)) => tracing::debug!(
            target: DECISION_TARGET,
            decision = "allow",
            zone = m.zone_id(),
            client_id = m.client_id(),
            sid = m.sid(),
            request_id,
            "mandate accepted"
        ),
        Ok(None) => tracing::debug!(
            target: DECISION_TARGET,
            decision = "anonymous",
            zone,
            request_id,
            "no credentials; optional layer lets the request through"
        ),
        Err((err, m)) => {
            let code = err.code().as_str();
            let status = err.status().as_u16();
            let reason = err.reason().map(|r| r.as_str());
            let client_id = m.map(Mandate::client_id);
            let sid = m.map(Mandate::sid);
            if err.status().is_server_error() {
                tracing::warn!(
                    target: DECISION_TARGET,
                    decision = "deny", code, status, reason, zone, client_id, sid, request_id,
                    "mandate check unavailable: {err}"
                );
            } else {
                tracing::info!(
                    target: DECISION_TARGET,
                    decision = "deny", code, status, reason, zone, client_id, sid, request_id,
                    "mandate denied: {err}"
                );
            }
        }
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for MandateService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    ResB: From<Bytes>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        // `self.inner` is the instance `poll_ready` made ready: it takes this request,
        // and a clone stays behind for the next one.
        let clone = self.inner.clone();
        let mut inner = mem::replace(&mut self.inner, clone);
        let config = &self.config;
        mark_authorization_sensitive(req.headers_mut());
        // Generated only when a denial or an action record needs one: allowed
        // requests without an audit sink stay cheap.
        let mut audit = config.verifier.inner.actions.as_ref().map(|sink| {
            let id = reject::incoming_request_id(req.headers())
                .map_or_else(reject::generate_request_id, str::to_owned);
            Box::new(Audit::start(sink, &config.verifier, &req, id))
        });
        let state = match config.start(req.extensions(), req.headers()) {
            Start::Decided(Ok(mandate)) => {
                config.admit(&mut req, mandate, audit.as_deref_mut());
                State::Inner {
                    fut: inner.call(req),
                }
            }
            Start::Decided(Err((err, m))) => {
                let id = request_id(req.headers(), audit.as_deref());
                let response = config.deny(&err, m.as_ref(), id);
                if let Some(a) = audit.as_deref_mut() {
                    a.denied(&err, m.as_ref());
                }
                State::Rejected {
                    response: Some(response),
                }
            }
            Start::Pending(verify) => State::Verify {
                verify,
                pending: Some(Pending {
                    inner,
                    req,
                    config: Arc::clone(config),
                }),
            },
        };
        ResponseFuture { state, audit }
    }
}

/// An action record in the making: what the layer learns of a request, handed to
/// the verifier's [`ActionSink`] once the response head is ready.
struct Audit {
    sink: Arc<dyn ActionSink>,
    arrived: Instant,
    occurred_at: std::time::SystemTime,
    request_id: String,
    method: http::Method,
    subject_fingerprint: Option<String>,
    trace_id: Option<String>,
    mandate: Option<Mandate>,
    denial: Option<AuthError>,
    manifest_sha: Arc<str>,
}

impl Audit {
    fn start<B>(
        sink: &Arc<dyn ActionSink>,
        verifier: &Verifier,
        req: &Request<B>,
        request_id: String,
    ) -> Self {
        let now = verifier.inner.clock.now();
        Audit {
            sink: Arc::clone(sink),
            arrived: Instant::now(),
            occurred_at: std::time::UNIX_EPOCH + now,
            request_id,
            method: req.method().clone(),
            subject_fingerprint: bearer(req.headers()).ok().map(fingerprint),
            trace_id: incoming_trace_id(req.headers()),
            mandate: None,
            denial: None,
            manifest_sha: Arc::clone(
                verifier
                    .inner
                    .manifest_sha
                    .get_or_init(|| verifier.manifest_sha().into()),
            ),
        }
    }

    fn denied(&mut self, err: &AuthError, mandate: Option<&Mandate>) {
        self.denial = Some(err.clone());
        if mandate.is_some() {
            self.mandate = mandate.cloned();
        }
    }

    /// Hand the record to the sink; `status` is what the client got.
    fn finish(self, status: u16) {
        let Audit {
            sink,
            arrived,
            occurred_at,
            request_id,
            method,
            subject_fingerprint,
            trace_id,
            mandate,
            denial,
            manifest_sha,
        } = self;
        sink.record(ActionResult {
            request_id,
            occurred_at,
            trace_id,
            method,
            status,
            latency: arrived.elapsed(),
            mandate,
            denial,
            subject_fingerprint,
            manifest_sha: Some(manifest_sha),
        });
    }
}

/// The first 8 bytes of the token's SHA-256, in hex: how Caracal's Gateway names a
/// bearer in its action results without recording it.
fn fingerprint(token: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = String::with_capacity(16);
    for b in &digest.as_ref()[..8] {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
    }
    out
}

/// What the future holds while verification runs.
struct Pending<S, ReqB> {
    inner: S,
    req: Request<ReqB>,
    config: Arc<Config>,
}

pin_project! {
    /// The response future of [`MandateService`]: verification, then the inner
    /// service's future, or the rendered denial.
    pub struct ResponseFuture<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        #[pin]
        state: State<S, ReqB>,
        audit: Option<Box<Audit>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        Verify {
            verify: VerifyFuture,
            pending: Option<Pending<S, ReqB>>,
        },
        Inner {
            #[pin]
            fut: S::Future,
        },
        Rejected {
            response: Option<Response<Bytes>>,
        },
    }
}

impl<S, ReqB> fmt::Debug for ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Verify { .. } => "Verify",
            State::Inner { .. } => "Inner",
            State::Rejected { .. } => "Rejected",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, ReqB, ResB> Future for ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: From<Bytes>,
{
    type Output = Result<Response<ResB>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let this = self.as_mut().project();
            match this.state.project() {
                StateProj::Verify { verify, pending } => {
                    let result = ready!(verify.as_mut().poll(cx));
                    let Pending {
                        mut inner,
                        mut req,
                        config,
                    } = pending
                        .take()
                        .expect("ResponseFuture polled after completion");
                    match result {
                        Ok(mandate) => {
                            config.admit(&mut req, Some(mandate), this.audit.as_deref_mut());
                            let fut = inner.call(req);
                            self.as_mut().project().state.set(State::Inner { fut });
                        }
                        Err(err) => {
                            let id = request_id(req.headers(), this.audit.as_deref());
                            let response = config.deny(&err, None, id);
                            if let Some(mut a) = this.audit.take() {
                                a.denied(&err, None);
                                (*a).finish(response.status().as_u16());
                            }
                            self.as_mut()
                                .project()
                                .state
                                .set(State::Rejected { response: None });
                            return Poll::Ready(Ok(response.map(ResB::from)));
                        }
                    }
                }
                StateProj::Inner { fut } => {
                    let result = ready!(fut.poll(cx));
                    if let Some(a) = this.audit.take() {
                        // An error from the inner service is answered by the server
                        // (axum's are `Infallible`); count it as a server error.
                        (*a).finish(result.as_ref().map_or(500, |r| r.status().as_u16()));
                    }
                    return Poll::Ready(result);
                }
                StateProj::Rejected { response } => {
                    let response = response
                        .take()
                        .expect("ResponseFuture polled after completion");
                    if let Some(a) = this.audit.take() {
                        (*a).finish(response.status().as_u16());
                    }
                    return Poll::Ready(Ok(response.map(ResB::from)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tower::{ServiceBuilder, ServiceExt};

    use super::*;
    use crate::replay::MemoryReplayGuard;
    use crate::testing::TestIssuer;

    type Body = http_body_util::Full<Bytes>;

    async fn setup() -> (TestIssuer, Verifier) {
        let sts = TestIssuer::start("zone-1").await.unwrap();
        let verifier = Verifier::builder()
            .issuer(sts.issuer_url())
            .audience("resource://api")
            .zone("zone-1")
            .build()
            .unwrap();
        (sts, verifier)
    }

    fn get(token: Option<&str>) -> Request<Body> {
        let mut req = Request::get("/").body(Body::default()).unwrap();
        if let Some(t) = token {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        req
    }

    /// An inner service that answers with the mandate's subject (or "anonymous").
    fn echo()
    -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future = impl Send>
    + Clone {
        tower::service_fn(|req: Request<Body>| async move {
            let who = req
                .extensions()
                .get::<Mandate>()
                .map_or("anonymous".to_owned(), |m| m.subject().to_owned());
            Ok::<_, Infallible>(Response::new(Body::from(who)))
        })
    }

    async fn body(res: Response<Body>) -> String {
        use http_body_util::BodyExt;
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// Fails unless the instance that `poll_ready` readied is the one called.
    struct Strict {
        ready: bool,
        calls: Arc<AtomicUsize>,
    }

    impl Clone for Strict {
        fn clone(&self) -> Self {
            Strict {
                ready: false,
                calls: Arc::clone(&self.calls),
            }
        }
    }

    impl Service<Request<Body>> for Strict {
        type Response = Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            self.ready = true;
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<Body>) -> Self::Future {
            assert!(self.ready, "called an instance that was not made ready");
            self.calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok(Response::new(Body::default())))
        }
    }

    #[tokio::test]
    async fn the_ready_instance_gets_the_request() {
        let (sts, verifier) = setup().await;
        let calls = Arc::new(AtomicUsize::new(0));
        let strict = Strict {
            ready: false,
            calls: Arc::clone(&calls),
        };
        let layer = MandateLayer::new(verifier, Requirements::new()).optional();
        let mut svc = layer.layer(strict);
        // Synchronous path (anonymous) and verification path (token).
        let res = svc.ready().await.unwrap().call(get(None)).await.unwrap();
        assert_eq!(res.status(), 200);
        let token = sts.mandate().sign();
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(get(Some(&token)))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_denial_is_a_response_and_skips_the_inner_service() {
        let (_sts, verifier) = setup().await;
        let failing = tower::service_fn(|_: Request<Body>| async {
            Err::<Response<Body>, &'static str>("inner service must not be called")
        });
        let svc = MandateLayer::new(verifier, Requirements::new()).layer(failing);
        let res = svc.oneshot(get(Some("not-a-jwt"))).await.unwrap();
        assert_eq!(res.status(), 401);
        assert_eq!(res.headers()["content-type"], "application/json");
        let json: serde_json::Value = serde_json::from_str(&body(res).await).unwrap();
        assert_eq!(json["error"], "invalid_token");
        assert_eq!(json["details"]["reason"], "malformed");
    }

    #[tokio::test]
    async fn the_inner_service_sees_authorization_marked_sensitive() {
        let (sts, verifier) = setup().await;
        let sensitive = tower::service_fn(|req: Request<Body>| async move {
            let all: Vec<bool> = req
                .headers()
                .get_all("authorization")
                .iter()
                .map(http::HeaderValue::is_sensitive)
                .collect();
            Ok::<_, Infallible>(Response::new(Body::from(format!("{all:?}"))))
        });
        let svc = MandateLayer::new(verifier, Requirements::new())
            .optional()
            .layer(sensitive);
        let token = sts.mandate().sign();
        let req = get(Some(&token));
        assert!(!req.headers()["authorization"].is_sensitive());
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(body(res).await, "[true]");
        // An optional layer lets other schemes through, marked too.
        let mut basic = get(None);
        basic
            .headers_mut()
            .insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
        assert_eq!(body(svc.oneshot(basic).await.unwrap()).await, "[true]");
    }

    #[tokio::test]
    async fn allowed_requests_carry_the_mandate() {
        let (sts, verifier) = setup().await;
        let svc = MandateLayer::new(verifier, Requirements::new().scopes(["a"])).layer(echo());
        let token = sts.mandate().subject("alice").scopes(["a"]).sign();
        let res = svc.oneshot(get(Some(&token))).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(body(res).await, "alice");
    }

    #[tokio::test]
    async fn optional_tolerates_absence_not_bad_credentials() {
        let (_sts, verifier) = setup().await;
        let svc = MandateLayer::new(verifier, Requirements::new())
            .optional()
            .layer(echo());
        let res = svc.clone().oneshot(get(None)).await.unwrap();
        assert_eq!(body(res).await, "anonymous");
        let mut basic = get(None);
        basic
            .headers_mut()
            .insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
        assert_eq!(svc.clone().oneshot(basic).await.unwrap().status(), 200);
        let res = svc.oneshot(get(Some("a.b.c"))).await.unwrap();
        assert_eq!(res.status(), 401);
    }

    #[tokio::test]
    async fn stacked_layers_verify_once_and_consume_once() {
        let (sts, verifier) = setup().await;
        let single = Requirements::new().single_use();
        let svc = ServiceBuilder::new()
            .layer(MandateLayer::new(verifier.clone(), single.clone()))
            .layer(MandateLayer::new(verifier.clone(), single.scopes(["b"])))
            .service(echo());
        let token = sts.mandate().subject("bob").scopes(["b"]).sign();
        let res = svc.clone().oneshot(get(Some(&token))).await.unwrap();
        assert_eq!(res.status(), 200, "the inner layer must not see a replay");
        assert_eq!(body(res).await, "bob");
        let res = svc.oneshot(get(Some(&token))).await.unwrap();
        assert_eq!(res.status(), 401);
        let json: serde_json::Value = serde_json::from_str(&body(res).await).unwrap();
        assert_eq!(json["details"]["reason"], "replayed");
        assert_eq!(verifier.jwks_fetches(), 1);
    }

    #[tokio::test]
    async fn a_layer_with_another_guard_records_the_use_in_its_own() {
        let (sts, verifier) = setup().await;
        // Same policy, another store: as if the inner layer shared uses across
        // replicas while the outer one kept them in memory.
        let shared = verifier.with_replay_guard_for_tests(MemoryReplayGuard::new(100));
        let single = Requirements::new().single_use();
        let stacked = ServiceBuilder::new()
            .layer(MandateLayer::new(verifier.clone(), single.clone()))
            .layer(MandateLayer::new(shared.clone(), single.clone()))
            .service(echo());
        let token = sts.mandate().subject("carol").sign();
        let res = stacked.oneshot(get(Some(&token))).await.unwrap();
        assert_eq!(res.status(), 200);
        // Another replica behind the shared store only: the use was recorded there.
        let replica = MandateLayer::new(shared, single).layer(echo());
        let res = replica.oneshot(get(Some(&token))).await.unwrap();
        assert_eq!(res.status(), 401, "a replay through the shared store");
        let json: serde_json::Value = serde_json::from_str(&body(res).await).unwrap();
        assert_eq!(json["details"]["reason"], "replayed");
    }

    #[tokio::test]
    async fn a_mandate_for_another_audience_is_verified_again() {
        let (sts, verifier) = setup().await;
        let other = Verifier::builder()
            .issuer(sts.issuer_url())
            .audience("resource://other")
            .zone("zone-1")
            .build()
            .unwrap();
        let svc = ServiceBuilder::new()
            .layer(MandateLayer::new(verifier, Requirements::new()))
            .layer(MandateLayer::new(other, Requirements::new()))
            .service(echo());
        let token = sts.mandate().sign();
        let res = svc.oneshot(get(Some(&token))).await.unwrap();
        assert_eq!(res.status(), 401);
        let json: serde_json::Value = serde_json::from_str(&body(res).await).unwrap();
        assert_eq!(json["details"]["reason"], "audience");
    }

    #[test]
    fn layer_and_service_are_send_sync_and_debug() {
        fn check<T: Send + Sync + Clone + fmt::Debug>() {}
        check::<MandateLayer>();
        check::<
            MandateService<
                tower::util::BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>,
            >,
        >();
    }
}
