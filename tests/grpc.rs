//! `grpc::GrpcMandateLayer` on a real tonic server over loopback, built as
//! `examples/grpc_service.rs` builds it, called by a real tonic client.
//!
//! Hostile cases first: each denial class with its gRPC status and metadata, an
//! unlisted method, then the allowed calls, the stream and the open health service.
//! Last, the checked-in generated code is compared with a fresh generation.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use caracal_verifier::source::{FeedPolicy, Running, Source, SourceContext};
use caracal_verifier::testing::TestIssuer;
use caracal_verifier::{BoxFuture, ConfigError, Verifier, VerifierBuilder};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Status};

#[allow(
    dead_code,
    unreachable_pub,
    reason = "the example's `main` is not run here"
)]
#[path = "../examples/grpc_service.rs"]
mod example;

use example::pb;
use example::pb::tickets_client::TicketsClient;

const AUDIENCE: &str = "resource://api";
const ZONE: &str = "zone-1";

fn builder(sts: &TestIssuer) -> VerifierBuilder {
    Verifier::builder()
        .issuer(sts.issuer_url())
        .audience(AUDIENCE)
        .zone(ZONE)
}

struct App {
    sts: TestIssuer,
    verifier: Verifier,
    channel: Channel,
}

impl App {
    async fn start() -> App {
        let sts = TestIssuer::start(ZONE).await.expect("issuer");
        let verifier = builder(&sts).build().expect("verifier");
        App::with(sts, verifier).await
    }

    async fn with(sts: TestIssuer, verifier: Verifier) -> App {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(example::serve(
            verifier.clone(),
            listener,
            std::future::pending(),
        ));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .expect("connect");
        App {
            sts,
            verifier,
            channel,
        }
    }

    fn client(&self) -> TicketsClient<Channel> {
        TicketsClient::new(self.channel.clone())
    }
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn meta<'a>(status: &'a Status, key: &str) -> Option<&'a str> {
    status.metadata().get(key).map(|v| v.to_str().unwrap())
}

/// A denial as a client sees it: the code, the Caracal code, a request id, and
/// never the token.
fn assert_denied(status: &Status, code: Code, caracal: &str, token: Option<&str>) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(meta(status, "caracal-error"), Some(caracal), "{status:?}");
    assert!(meta(status, "x-request-id").is_some_and(|id| !id.is_empty()));
    assert!(!status.message().is_empty());
    if let Some(token) = token {
        let headers = status.metadata().clone().into_headers();
        for value in headers.values() {
            assert!(
                !String::from_utf8_lossy(value.as_bytes()).contains(token),
                "token leaked into metadata"
            );
        }
        assert!(!status.message().contains(token));
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn missing_token_is_unauthenticated_with_a_challenge() {
    let app = App::start().await;
    let status = app
        .client()
        .list(pb::ListRequest {})
        .await
        .expect_err("denied");
    assert_denied(&status, Code::Unauthenticated, "missing_token", None);
    assert_eq!(
        meta(&status, "www-authenticate"),
        Some("Bearer realm=\"resource://api\"")
    );
}

#[tokio::test]
async fn a_garbage_token_is_unauthenticated_invalid_token() {
    let app = App::start().await;
    let status = app
        .client()
        .list(with_token(pb::ListRequest {}, "not.a.jwt"))
        .await
        .expect_err("denied");
    assert_denied(
        &status,
        Code::Unauthenticated,
        "invalid_token",
        Some("not.a.jwt"),
    );
    assert!(
        meta(&status, "www-authenticate")
            .unwrap()
            .contains("error=\"invalid_token\"")
    );
}

#[tokio::test]
async fn missing_scope_is_permission_denied() {
    let app = App::start().await;
    let token = app.sts.mandate().scopes(["tickets:write"]).sign();
    let status = app
        .client()
        .list(with_token(pb::ListRequest {}, &token))
        .await
        .expect_err("denied");
    assert_denied(
        &status,
        Code::PermissionDenied,
        "scope_insufficient",
        Some(&token),
    );
    let challenge = meta(&status, "www-authenticate").unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\"") && challenge.contains("tickets:read"),
        "{challenge}"
    );
}

#[tokio::test]
async fn create_without_an_agent_identity_is_permission_denied() {
    let app = App::start().await;
    let token = app.sts.mandate().scopes(["tickets:write"]).sign();
    let request = pb::CreateRequest { title: "t".into() };
    let status = app
        .client()
        .create(with_token(request, &token))
        .await
        .expect_err("denied");
    assert_denied(
        &status,
        Code::PermissionDenied,
        "agent_identity_required",
        Some(&token),
    );
}

#[tokio::test]
async fn a_revoked_session_is_unauthenticated() {
    let app = App::start().await;
    let token = app
        .sts
        .mandate()
        .scopes(["tickets:read"])
        .sid("sid-gone")
        .sign();
    app.verifier.revocations().revoke("sid-gone");
    let status = app
        .client()
        .list(with_token(pb::ListRequest {}, &token))
        .await
        .expect_err("denied");
    assert_denied(
        &status,
        Code::Unauthenticated,
        "session_revoked",
        Some(&token),
    );
}

#[tokio::test]
async fn an_expired_mandate_is_unauthenticated() {
    let app = App::start().await;
    let t = now();
    let token = app
        .sts
        .mandate()
        .scopes(["tickets:read"])
        .issued_at(t - 7200)
        .not_before(t - 7200)
        .expires_at(t - 3600)
        .sign();
    let status = app
        .client()
        .list(with_token(pb::ListRequest {}, &token))
        .await
        .expect_err("denied");
    assert_denied(
        &status,
        Code::Unauthenticated,
        "invalid_token",
        Some(&token),
    );
}

#[tokio::test]
async fn an_oversized_token_is_resource_exhausted() {
    let sts = TestIssuer::start(ZONE).await.unwrap();
    let verifier = builder(&sts).max_token_bytes(1024).build().unwrap();
    let app = App::with(sts, verifier).await;
    let token = "a".repeat(4096);
    let status = app
        .client()
        .list(with_token(pb::ListRequest {}, &token))
        .await
        .expect_err("denied");
    assert_denied(
        &status,
        Code::ResourceExhausted,
        "payload_too_large",
        Some(&token),
    );
}

/// A revocation feed that attaches and never reports: the set is never current.
struct SilentFeed;

#[derive(Debug)]
struct SilentTask;

impl Running for SilentTask {
    fn name(&self) -> &str {
        "silent-feed"
    }
    fn is_running(&self) -> bool {
        true
    }
    fn is_ready(&self) -> bool {
        false
    }
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

impl Source for SilentFeed {
    fn start(
        self: Box<Self>,
        ctx: &mut SourceContext<'_>,
    ) -> Result<Box<dyn Running>, ConfigError> {
        let _reporter = ctx.attach_revocation_feed(FeedPolicy::new(Duration::from_secs(30)))?;
        Ok(Box::new(SilentTask))
    }
}

#[tokio::test]
async fn a_stale_revocation_feed_is_unavailable() {
    let sts = TestIssuer::start(ZONE).await.unwrap();
    let verifier = builder(&sts).source(SilentFeed).build().unwrap();
    let app = App::with(sts, verifier).await;
    let token = app.sts.mandate().scopes(["tickets:read"]).sign();
    let status = app
        .client()
        .list(with_token(pb::ListRequest {}, &token))
        .await
        .expect_err("denied");
    assert_denied(
        &status,
        Code::Unavailable,
        "revocation_unavailable",
        Some(&token),
    );
    assert_eq!(meta(&status, "retry-after"), Some("5"));
}

#[tokio::test]
async fn an_unlisted_method_is_denied_by_default_even_with_a_mandate() {
    let app = App::start().await;
    let token = app
        .sts
        .mandate()
        .scopes(["tickets:read", "tickets:write", "tickets:admin"])
        .agent_session("s")
        .sign();
    let status = app
        .client()
        .purge(with_token(pb::PurgeRequest {}, &token))
        .await
        .expect_err("denied");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        meta(&status, "caracal-error"),
        None,
        "no mandate was checked"
    );
    assert!(meta(&status, "x-request-id").is_some());
}

#[tokio::test]
async fn a_stream_is_denied_without_a_token() {
    let app = App::start().await;
    let status = app
        .client()
        .watch(pb::WatchRequest { count: 3 })
        .await
        .expect_err("denied");
    assert_denied(&status, Code::Unauthenticated, "missing_token", None);
}

#[tokio::test]
async fn the_request_id_is_echoed() {
    let app = App::start().await;
    let mut request = tonic::Request::new(pb::ListRequest {});
    request
        .metadata_mut()
        .insert("x-request-id", "req-42".parse().unwrap());
    let status = app.client().list(request).await.expect_err("denied");
    assert_eq!(meta(&status, "x-request-id"), Some("req-42"));
}

/// On the wire a denial is a trailers-only response: HTTP 200, `application/grpc`,
/// the status in the headers and no body.
#[tokio::test]
async fn a_denial_is_trailers_only_on_the_wire() {
    use http_body_util::BodyExt;
    use tower::{Layer, ServiceExt};

    let sts = TestIssuer::start(ZONE).await.unwrap();
    let verifier = builder(&sts).build().unwrap();
    let routes = tonic::service::Routes::new(pb::tickets_server::TicketsServer::new(
        example::TicketService::default(),
    ));
    let service = example::layer(verifier).layer(routes);
    let request = http::Request::post("/caracal.demo.v1.Tickets/List")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::empty())
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let h = response.headers();
    assert_eq!(h["content-type"], "application/grpc");
    assert_eq!(h["grpc-status"], "16");
    assert_eq!(h["caracal-error"], "missing_token");
    let message = h["grpc-message"].to_str().unwrap();
    assert!(!message.is_empty() && message.is_ascii(), "{message}");
    let body = response.into_body().collect().await.unwrap();
    assert!(body.trailers().is_none());
    assert!(body.to_bytes().is_empty());
}

#[tokio::test]
async fn an_allowed_unary_call_sees_the_mandate() {
    let app = App::start().await;
    let token = app
        .sts
        .mandate()
        .subject("user-7")
        .scopes(["tickets:read"])
        .sign();
    let response = app
        .client()
        .list(with_token(pb::ListRequest {}, &token))
        .await
        .expect("allowed");
    assert_eq!(response.get_ref().subject, "user-7");
}

#[tokio::test]
async fn create_with_an_agent_identity_is_allowed() {
    let app = App::start().await;
    let token = app
        .sts
        .mandate()
        .subject("user-8")
        .scopes(["tickets:write"])
        .agent_session("s")
        .sign();
    let request = pb::CreateRequest {
        title: "printer on fire".into(),
    };
    let ticket = app
        .client()
        .create(with_token(request, &token))
        .await
        .expect("allowed")
        .into_inner();
    assert_eq!(ticket.title, "printer on fire");
    assert_eq!(ticket.created_by, "user-8");
}

#[tokio::test]
async fn a_server_stream_is_served_to_an_allowed_caller() {
    let app = App::start().await;
    let token = app
        .sts
        .mandate()
        .subject("user-9")
        .scopes(["tickets:read"])
        .sign();
    let stream = app
        .client()
        .watch(with_token(pb::WatchRequest { count: 3 }, &token))
        .await
        .expect("allowed")
        .into_inner();
    let tickets: Vec<pb::Ticket> = stream.map(|t| t.expect("item")).collect().await;
    assert_eq!(tickets.len(), 3);
    assert!(tickets.iter().all(|t| t.created_by == "user-9"));
}

#[tokio::test]
async fn health_checks_need_no_mandate() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let app = App::start().await;
    let mut health = HealthClient::new(app.channel.clone());
    let reply = health
        .check(HealthCheckRequest {
            service: "caracal.demo.v1.Tickets".into(),
        })
        .await
        .expect("health is open")
        .into_inner();
    assert_eq!(reply.status(), ServingStatus::Serving);
}

/// The generated code in `proto/gen` is what the `.proto` gives today. Regenerate
/// with `CARACAL_REGENERATE_PROTO=1 cargo test --features grpc --test grpc
/// generated_code`: protox compiles the `.proto` in Rust, so no `protoc` is needed.
#[test]
fn generated_code_is_current() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("caracal-grpc-gen-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let fds = protox::compile(["caracal/demo/v1/tickets.proto"], [root.join("proto")])
        .expect("compile the .proto");
    tonic_prost_build::configure()
        .out_dir(&out)
        .emit_rerun_if_changed(false)
        .compile_fds(fds)
        .expect("generate");
    let fresh = std::fs::read_to_string(out.join("caracal.demo.v1.rs")).unwrap();
    std::fs::remove_dir_all(&out).ok();
    let checked_in = root.join("proto/gen/caracal.demo.v1.rs");
    if std::env::var_os("CARACAL_REGENERATE_PROTO").is_some() {
        std::fs::write(&checked_in, &fresh).unwrap();
        return;
    }
    assert!(
        std::fs::read_to_string(&checked_in).unwrap() == fresh,
        "proto/gen/caracal.demo.v1.rs is stale: rerun with CARACAL_REGENERATE_PROTO=1"
    );
}
