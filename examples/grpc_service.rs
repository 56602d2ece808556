//! A gRPC service behind `caracal_verifier::grpc::GrpcMandateLayer`: the demo
//! `caracal.demo.v1.Tickets` service (`proto/caracal/demo/v1/tickets.proto`) and the
//! standard health service, on tonic.
//!
//! ```sh
//! CARACAL_STS_URL=https://sts.example.com \
//! CARACAL_ZONE_ID=zone-1 \
//! CARACAL_AUDIENCE=resource://api \
//! cargo run --features grpc --example grpc_service
//! ```
//!
//! # Configuration (environment)
//!
//! - `CARACAL_STS_URL` (issuer), `CARACAL_ZONE_ID`, `CARACAL_AUDIENCE`: required;
//!   every other setting of `VerifierBuilder::from_env` applies too, as in
//!   `examples/resource_server.rs`.
//! - `BIND_ADDR`: the listen address, default `127.0.0.1:50051`.
//! - `RUST_LOG`: log filter, default `info`.
//!
//! # Methods
//!
//! | method | requires |
//! | --- | --- |
//! | `/caracal.demo.v1.Tickets/List` | scope `tickets:read` |
//! | `/caracal.demo.v1.Tickets/Create` | scope `tickets:write` and an agent identity |
//! | `/caracal.demo.v1.Tickets/Watch` (server stream) | scope `tickets:read` |
//! | `/caracal.demo.v1.Tickets/Purge` | listed nowhere: `PERMISSION_DENIED` by default |
//! | `/grpc.health.v1.Health/*` | nothing |
//!
//! ```sh
//! grpcurl -plaintext -import-path proto -proto caracal/demo/v1/tickets.proto \
//!   -H "authorization: Bearer $MANDATE" 127.0.0.1:50051 caracal.demo.v1.Tickets/List
//! grpcurl -plaintext -import-path proto -proto caracal/demo/v1/tickets.proto \
//!   127.0.0.1:50051 caracal.demo.v1.Tickets/List
//! # ERROR: Code: Unauthenticated, Message: no bearer token …
//! #   (metadata: caracal-error: missing_token, www-authenticate, x-request-id)
//! ```
//!
//! The Rust code of the service is generated from the `.proto` and checked in
//! (`proto/gen/caracal.demo.v1.rs`); `tests/grpc.rs` regenerates it with the pure-Rust
//! `protox` compiler, so no `protoc` is needed anywhere.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use caracal_verifier::grpc::GrpcMandateLayer;
use caracal_verifier::{Mandate, Requirements, Verifier, VerifierBuilder};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// The generated messages, client and server of `caracal.demo.v1`.
pub mod pb {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    include!("../proto/gen/caracal.demo.v1.rs");
}

use pb::tickets_server::{Tickets, TicketsServer};

const DEFAULT_BIND_ADDR: &str = "127.0.0.1:50051";

/// The demo service: tickets in memory.
#[derive(Debug, Default)]
pub struct TicketService {
    tickets: Mutex<Vec<pb::Ticket>>,
}

/// The verified mandate the layer put into the request. A method reached without
/// one is misconfigured (the layer is missing): refuse rather than serve.
fn mandate<T>(request: &Request<T>) -> Result<&Mandate, Status> {
    request
        .extensions()
        .get::<Mandate>()
        .ok_or_else(|| Status::internal("no verified mandate"))
}

#[tonic::async_trait]
impl Tickets for TicketService {
    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let subject = mandate(&request)?.subject().to_owned();
        let tickets = self.tickets.lock().expect("tickets lock").clone();
        Ok(Response::new(pb::ListResponse { tickets, subject }))
    }

    async fn create(
        &self,
        request: Request<pb::CreateRequest>,
    ) -> Result<Response<pb::Ticket>, Status> {
        let created_by = mandate(&request)?.subject().to_owned();
        let mut tickets = self.tickets.lock().expect("tickets lock");
        let ticket = pb::Ticket {
            id: format!("t-{}", tickets.len() + 1),
            title: request.into_inner().title,
            created_by,
        };
        tickets.push(ticket.clone());
        Ok(Response::new(ticket))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::Ticket, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let created_by = mandate(&request)?.subject().to_owned();
        let count = request.into_inner().count.min(100);
        let stream = tokio_stream::iter((1..=count).map(move |i| {
            Ok(pb::Ticket {
                id: format!("w-{i}"),
                title: format!("update {i}"),
                created_by: created_by.clone(),
            })
        }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn purge(
        &self,
        _request: Request<pb::PurgeRequest>,
    ) -> Result<Response<pb::PurgeResponse>, Status> {
        // Never reached: the layer denies unlisted methods.
        self.tickets.lock().expect("tickets lock").clear();
        Ok(Response::new(pb::PurgeResponse {}))
    }
}

/// The policy: one entry a method; the health service open; everything else denied.
pub fn layer(verifier: Verifier) -> GrpcMandateLayer {
    GrpcMandateLayer::new(verifier)
        .method(
            "/caracal.demo.v1.Tickets/List",
            Requirements::new().scopes(["tickets:read"]),
        )
        .method(
            "/caracal.demo.v1.Tickets/Create",
            Requirements::new().scopes(["tickets:write"]).agent(),
        )
        .method(
            "/caracal.demo.v1.Tickets/Watch",
            Requirements::new().scopes(["tickets:read"]),
        )
        .unprotected_service("grpc.health.v1.Health")
}

/// Serve the tickets and health services on `listener` behind the layer, until
/// `shutdown` completes.
pub async fn serve(
    verifier: Verifier,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<TicketsServer<TicketService>>().await;
    tonic::transport::Server::builder()
        .layer(layer(verifier))
        .add_service(health_service)
        .add_service(TicketsServer::new(TicketService::default()))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await
}

#[allow(
    dead_code,
    reason = "tests/grpc.rs includes this file and runs `serve`"
)]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let verifier = VerifierBuilder::from_env()?.build()?;
    let bind: SocketAddr = std::env::var("BIND_ADDR")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_BIND_ADDR.to_owned())
        .trim()
        .parse()
        .map_err(|e| format!("BIND_ADDR: {e}"))?;

    // Fetch keys in the background: the issuer need not be up for us to start.
    let warm = verifier.clone();
    tokio::spawn(async move {
        while let Err(e) = warm.warm_up().await {
            tracing::warn!(error = %e, "zone keys not fetched yet");
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        tracing::info!("zone keys fetched");
    });

    let listener = tokio::net::TcpListener::bind(bind).await?;
    tracing::info!(addr = %listener.local_addr()?, zone = verifier.zone(), "gRPC server listening");
    serve(verifier, listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
