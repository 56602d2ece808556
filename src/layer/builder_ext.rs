//! `ServiceBuilder` integration: `ServiceBuilder::new().require_mandate(verifier, reqs)`.

use tower::ServiceBuilder;
use tower_layer::Stack;

use super::MandateLayer;
use crate::{Requirements, Verifier};

/// Adds [`MandateLayer`] to a [`ServiceBuilder`] stack.
///
/// ```
/// use caracal_verifier::layer::MandateServiceBuilderExt;
/// use caracal_verifier::{Requirements, Verifier};
/// use tower::ServiceBuilder;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let verifier = Verifier::builder()
///     .issuer("https://sts.example.com")
///     .audience("resource://api")
///     .zone("zone-1")
///     .build()?;
/// let stack = ServiceBuilder::new()
///     .require_mandate(verifier.clone(), Requirements::new())
///     .require_mandate(verifier, Requirements::new().scopes(["tickets:write"]).agent());
/// # let _ = stack;
/// # Ok(()) }
/// ```
pub trait MandateServiceBuilderExt<L>: sealed::Sealed {
    /// Require a verified mandate that meets `reqs`. Stacked calls verify the token
    /// once; each adds its own requirements.
    fn require_mandate(
        self,
        verifier: Verifier,
        reqs: Requirements,
    ) -> ServiceBuilder<Stack<MandateLayer, L>>;
}

impl<L> MandateServiceBuilderExt<L> for ServiceBuilder<L> {
    fn require_mandate(
        self,
        verifier: Verifier,
        reqs: Requirements,
    ) -> ServiceBuilder<Stack<MandateLayer, L>> {
        self.layer(MandateLayer::new(verifier, reqs))
    }
}

mod sealed {
    pub trait Sealed {}
    impl<L> Sealed for tower::ServiceBuilder<L> {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestIssuer;
    use bytes::Bytes;
    use http_body_util::Full;
    use tower::ServiceExt;

    #[tokio::test]
    async fn stacked_builder_layers_apply_both_requirements() {
        let sts = TestIssuer::start("zone-1").await.unwrap();
        let verifier = Verifier::builder()
            .issuer(sts.issuer_url())
            .audience("resource://api")
            .zone("zone-1")
            .build()
            .unwrap();
        let svc = ServiceBuilder::new()
            .require_mandate(verifier.clone(), Requirements::new().scopes(["a"]))
            .require_mandate(verifier, Requirements::new().agent())
            .service_fn(|_req: http::Request<()>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from("ok"))))
            });
        let call = |token: String| {
            let svc = svc.clone();
            async move {
                let req = http::Request::get("/")
                    .header("authorization", format!("Bearer {token}"))
                    .body(())
                    .unwrap();
                svc.oneshot(req).await.unwrap().status().as_u16()
            }
        };
        assert_eq!(
            call(sts.mandate().scopes(["a"]).agent_session("s").sign()).await,
            200
        );
        assert_eq!(
            call(sts.mandate().scopes(["a"]).sign()).await,
            403,
            "inner: agent"
        );
        assert_eq!(
            call(sts.mandate().agent_session("s").sign()).await,
            403,
            "outer: scope"
        );
    }
}
