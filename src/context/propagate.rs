//! [`PropagateLayer`]: inject the [`RequestContext`] an outbound request carries.

use std::task::{Context, Poll};

use http::Request;
use tower_layer::Layer;
use tower_service::Service;

use super::RequestContext;

/// Layer for outbound HTTP clients: before a request is sent, writes the
/// [`RequestContext`] found in its extensions onto its headers with
/// [`RequestContext::inject`] (new span id per request). A request without one
/// passes through untouched.
///
/// Put the context into the outbound request's extensions yourself, from the
/// inbound request's context (in axum, the [`RequestContext`] extractor):
/// `request.extensions_mut().insert(ctx.clone())`.
///
/// ```
/// use std::convert::Infallible;
/// use caracal_verifier::context::{PropagateLayer, RequestContext};
/// use caracal_verifier::{Requirements, Verifier, testing::TestIssuer};
/// use http::{HeaderMap, Request, Response};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let sts = TestIssuer::start("zone-1").await?;
/// # let verifier = Verifier::builder().issuer(sts.issuer_url())
/// #     .audience("resource://api").zone("zone-1").build()?;
/// # let mandate = verifier.verify(&sts.mandate().sid("sid-1").sign(), &Requirements::new()).await?;
/// // In a handler: the context of the request being served.
/// let ctx = RequestContext::from_request(&HeaderMap::new(), &mandate);
///
/// // An outbound client (here a stand-in that echoes the headers it was sent).
/// let client = ServiceBuilder::new().layer(PropagateLayer::new()).service(service_fn(
///     |req: Request<()>| async move { Ok::<_, Infallible>(Response::new(req.headers().clone())) },
/// ));
///
/// let mut request = Request::get("http://downstream.internal/").body(())?;
/// request.extensions_mut().insert(ctx.clone());
/// let sent = client.oneshot(request).await?.into_body();
/// assert!(sent["traceparent"].to_str()?.contains(ctx.trace_id()));
/// assert_eq!(sent["baggage"], "caracal.hop=0,caracal.session=sid-1");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct PropagateLayer {
    _priv: (),
}

impl PropagateLayer {
    /// A new layer.
    pub fn new() -> Self {
        PropagateLayer { _priv: () }
    }
}

impl<S> Layer<S> for PropagateLayer {
    type Service = PropagateService<S>;

    fn layer(&self, inner: S) -> PropagateService<S> {
        PropagateService { inner }
    }
}

/// The service of a [`PropagateLayer`].
#[derive(Debug, Clone)]
pub struct PropagateService<S> {
    inner: S,
}

impl<S> PropagateService<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        PropagateService { inner }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for PropagateService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        // Synchronous, so the request goes to the instance that was polled ready.
        if let Some(ctx) = req.extensions().get::<RequestContext>().cloned() {
            ctx.inject(req.headers_mut());
        }
        self.inner.call(req)
    }
}
