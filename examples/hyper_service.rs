//! A bare hyper 1 server (no framework) protected by `MandateLayer`.
//!
//! ```sh
//! cargo run --example hyper_service
//! ```
//!
//! It starts a fake STS (`TestIssuer`) on loopback, wraps a plain `service_fn` with
//! `tower::ServiceBuilder` and the layer, adapts it with
//! `hyper_util::service::TowerToHyperService`, and serves HTTP/1 on `BIND_ADDR`
//! (default `127.0.0.1:3000`). It then prints a mandate valid for an hour, to try:
//!
//! ```sh
//! curl -i http://127.0.0.1:3000/                                   # 401 missing_token
//! curl -i -H "Authorization: Bearer $MANDATE" http://127.0.0.1:3000/ # 200 hello user-1
//! curl -i -H "Authorization: Bearer nope" http://127.0.0.1:3000/     # 401 invalid_token
//! ```
//!
//! The handler reads the verified `Mandate` from the request extensions. The route
//! requires scope `hello:read`; the printed mandate carries it. Ctrl-C stops it.

use std::convert::Infallible;

use bytes::Bytes;
use caracal_verifier::layer::MandateLayer;
use caracal_verifier::testing::TestIssuer;
use caracal_verifier::{Mandate, Requirements, Verifier};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceBuilder;

/// The protected handler: plain hyper types, the mandate from the extensions.
async fn hello(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let who = req
        .extensions()
        .get::<Mandate>()
        .map_or("nobody", Mandate::subject)
        .to_owned();
    Ok(Response::new(Full::new(Bytes::from(format!(
        "hello {who}\n"
    )))))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "caracal_verifier::decision=debug".into()),
        )
        .init();

    let sts = TestIssuer::start("zone-1").await?;
    let verifier = Verifier::builder()
        .issuer(sts.issuer_url())
        .audience("resource://api")
        .zone("zone-1")
        .build()?;
    verifier.warm_up().await?;

    let service = ServiceBuilder::new()
        .layer(MandateLayer::new(
            verifier,
            Requirements::new().scopes(["hello:read"]),
        ))
        .service_fn(hello);

    let bind = std::env::var("BIND_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = TcpListener::bind(&bind).await?;
    let addr = listener.local_addr()?;
    let token = sts.mandate().scopes(["hello:read"]).ttl(3600).sign();
    println!("listening on http://{addr}\n");
    println!("export MANDATE={token}\n");
    println!("curl -i http://{addr}/");
    println!("curl -i -H \"Authorization: Bearer $MANDATE\" http://{addr}/\n");

    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => break,
        };
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    println!("bye");
    Ok(())
}
