//! The Tower layer end to end: real axum and hyper servers on loopback, a
//! `TestIssuer` for keys and mandates, and a reqwest client, asserting what a caller
//! sees on the wire.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::{MethodRouter, get};
use axum::{Json, Router};
use bytes::Bytes;
use caracal_verifier::layer::MandateLayer;
use caracal_verifier::testing::TestIssuer;
use caracal_verifier::{
    AuthError, BoxFuture, CodeSpelling, FetchError, JwksFetcher, Mandate, ManualClock,
    Requirements, Verifier, VerifierBuilder,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;

const AUDIENCE: &str = "resource://api";
const ZONE: &str = "zone-1";

fn verifier(sts: &TestIssuer) -> Verifier {
    Verifier::builder()
        .issuer(sts.issuer_url())
        .audience(AUDIENCE)
        .zone(ZONE)
        .build()
        .expect("valid verifier settings")
}

async fn principal(m: Mandate) -> Json<Value> {
    Json(json!({
        "sub": m.subject(),
        "client_id": m.client_id(),
        "sid": m.sid(),
        "scopes": m.scopes().collect::<Vec<_>>(),
    }))
}

async fn maybe(m: Option<Mandate>) -> String {
    m.map_or_else(|| "anonymous".to_owned(), |m| m.subject().to_owned())
}

fn guarded(verifier: &Verifier, reqs: Requirements) -> MethodRouter {
    get(principal).route_layer(MandateLayer::new(verifier.clone(), reqs))
}

/// Serve `router` on an ephemeral loopback port.
async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        axum::serve(listener, router).await.expect("serve");
    });
    addr
}

/// A resource server: a router-wide layer checks the mandate, route layers add
/// requirements; plus routes behind an optional layer and one with no layer.
struct App {
    sts: TestIssuer,
    verifier: Verifier,
    base: String,
    http: reqwest::Client,
}

impl App {
    async fn start() -> App {
        let sts = TestIssuer::start(ZONE).await.expect("start issuer");
        let verifier = verifier(&sts);
        let v = &verifier;
        let required = Router::new()
            .route("/any", get(principal))
            .route(
                "/scoped",
                guarded(
                    v,
                    Requirements::new().scopes(["tickets:read", "tickets:write"]),
                ),
            )
            .route("/agent", guarded(v, Requirements::new().agent()))
            .route("/delegated", guarded(v, Requirements::new().delegation()))
            .route(
                "/chain",
                guarded(v, Requirements::new().chain_contains(["app-orchestrator"])),
            )
            .route("/hops", guarded(v, Requirements::new().max_hops(2)))
            .route(
                "/target",
                guarded(v, Requirements::new().targets(["resource://billing"])),
            )
            .route("/once", guarded(v, Requirements::new().single_use()))
            .layer(MandateLayer::new(verifier.clone(), Requirements::new()));
        let optional = Router::new()
            .route("/maybe", get(maybe))
            .route("/maybe-strict", get(principal))
            .layer(MandateLayer::new(verifier.clone(), Requirements::new()).optional());
        let unguarded = Router::new().route("/unguarded", get(principal));
        let addr = serve(required.merge(optional).merge(unguarded)).await;
        App {
            sts,
            verifier,
            base: format!("http://{addr}"),
            http: client(),
        }
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("{}{path}", self.base))
    }

    async fn call(&self, path: &str, token: &str) -> Reply {
        Reply::of(self.get(path).bearer_auth(token)).await
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("reqwest client")
}

/// A response, read whole.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: Value,
}

impl Reply {
    async fn of(req: reqwest::RequestBuilder) -> Reply {
        let res = req.send().await.expect("request reaches the server");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let bytes = res.bytes().await.expect("read body");
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Reply {
            status,
            headers,
            body,
        }
    }

    fn code(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header"))
    }

    #[track_caller]
    fn assert_denied(&self, status: u16, code: &str) {
        assert_eq!((self.status, self.code()), (status, code), "{self:#?}");
        assert_eq!(self.header("content-type"), Some("application/json"));
        assert_eq!(
            self.header("x-request-id"),
            self.body["requestId"].as_str(),
            "the request id header matches the body"
        );
    }
}

#[tokio::test]
async fn an_allowed_request_reaches_the_handler_with_its_mandate() {
    let app = App::start().await;
    let token = app
        .sts
        .mandate()
        .subject("alice")
        .sid("sid-alice")
        .scopes(["tickets:read", "tickets:write"])
        .sign();
    let reply = app.call("/scoped", &token).await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(reply.body["sub"], "alice");
    assert_eq!(reply.body["sid"], "sid-alice");
    assert_eq!(
        reply.body["scopes"],
        json!(["tickets:read", "tickets:write"])
    );
    assert!(reply.header("www-authenticate").is_none());
}

#[tokio::test]
async fn every_route_denial_has_its_code_and_status() {
    let app = App::start().await;
    let sts = &app.sts;
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("garbage", "/any", "not-a-jwt".into(), 401, "invalid_token"),
        (
            "expired",
            "/any",
            sts.mandate().expires_at(1_000).issued_at(900).sign(),
            401,
            "invalid_token",
        ),
        (
            "other zone",
            "/any",
            sts.mandate().zone("zone-2").sign(),
            401,
            "zone_invalid",
        ),
        (
            "one of two scopes",
            "/scoped",
            sts.mandate().scopes(["tickets:read"]).sign(),
            403,
            "scope_insufficient",
        ),
        (
            "no agent session",
            "/agent",
            sts.mandate().sign(),
            403,
            "agent_identity_required",
        ),
        (
            "no delegation",
            "/delegated",
            sts.mandate().agent_session("session-1").sign(),
            403,
            "delegation_required",
        ),
        (
            "chain without the orchestrator",
            "/chain",
            sts.mandate().delegation(1).sign(),
            403,
            "chain_mismatch",
        ),
        (
            "three hops over two",
            "/hops",
            sts.mandate().delegation(3).sign(),
            403,
            "hop_count_exceeded",
        ),
        (
            "untargeted",
            "/target",
            sts.mandate().sign(),
            401,
            "invalid_token",
        ),
        (
            "over 16 KiB",
            "/any",
            sts.mandate()
                .claim("pad", json!("x".repeat(17 * 1024)))
                .sign(),
            413,
            "payload_too_large",
        ),
    ];
    for (name, path, token, status, code) in cases {
        let reply = app.call(path, &token).await;
        assert_eq!(
            (reply.status, reply.code()),
            (status, code),
            "{name}: {reply:#?}"
        );
        reply.assert_denied(status, code);
    }

    let missing = Reply::of(app.get("/any")).await;
    missing.assert_denied(401, "missing_token");

    // The same kinds of mandate pass where the requirement is met.
    for (path, token) in [
        ("/agent", sts.mandate().agent_session("s-1").sign()),
        ("/delegated", sts.mandate().delegation(1).sign()),
        ("/hops", sts.mandate().delegation(2).sign()),
        (
            "/chain",
            sts.mandate()
                .client_id("app-orchestrator")
                .delegation(1)
                .sign(),
        ),
        (
            "/target",
            sts.mandate().targets(["resource://billing"]).sign(),
        ),
    ] {
        assert_eq!(app.call(path, &token).await.status, 200, "{path}");
    }
}

#[tokio::test]
async fn invalid_token_details_name_the_reason() {
    let app = App::start().await;
    let expired = app.sts.mandate().expires_at(1_000).issued_at(900).sign();
    let reply = app.call("/any", &expired).await;
    assert_eq!(reply.body["details"]["reason"], "expired");
    let untargeted = app.sts.mandate().sign();
    let reply = app.call("/target", &untargeted).await;
    assert_eq!(reply.body["details"]["reason"], "target");
    let big = app
        .sts
        .mandate()
        .claim("pad", json!("x".repeat(17 * 1024)))
        .sign();
    let reply = app.call("/any", &big).await;
    assert_eq!(reply.body["details"]["limit"], 16384);
}

#[tokio::test]
async fn revoking_the_sid_denies_the_next_request() {
    let app = App::start().await;
    let token = app.sts.mandate().sid("sid-to-revoke").sign();
    assert_eq!(app.call("/any", &token).await.status, 200);
    app.verifier.revocations().revoke("sid-to-revoke");
    let reply = app.call("/any", &token).await;
    reply.assert_denied(401, "session_revoked");
    assert_eq!(reply.body["details"]["anchor"], "sid");
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Bearer realm=\"resource://api\", error=\"invalid_token\"")
    );
}

#[tokio::test]
async fn a_raised_delegation_epoch_makes_older_mandates_stale() {
    let app = App::start().await;
    let token = app.sts.mandate().epoch(3).sign();
    assert_eq!(app.call("/any", &token).await.status, 200);
    app.verifier.revocations().raise_epoch(ZONE, 4);
    let reply = app.call("/any", &token).await;
    reply.assert_denied(401, "delegation_stale");
    assert_eq!(reply.body["details"]["current_epoch"], 4);
    let fresh = app.sts.mandate().epoch(4).sign();
    assert_eq!(app.call("/any", &fresh).await.status, 200);
}

#[tokio::test]
async fn an_unreachable_issuer_is_503_with_retry_after() {
    let sts = TestIssuer::start(ZONE).await.unwrap();
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let verifier = Verifier::builder()
        .issuer(format!("http://{closed}"))
        .audience(AUDIENCE)
        .zone(ZONE)
        .build()
        .unwrap();
    let router = Router::new()
        .route("/any", get(principal))
        .layer(MandateLayer::new(verifier, Requirements::new()));
    let addr = serve(router).await;
    let token = sts
        .mandate()
        .claim("iss", json!(format!("http://{closed}")))
        .sign();
    let reply = Reply::of(
        client()
            .get(format!("http://{addr}/any"))
            .bearer_auth(token),
    )
    .await;
    reply.assert_denied(503, "sts_unavailable");
    assert_eq!(reply.header("retry-after"), Some("5"));
    assert!(reply.header("www-authenticate").is_none());
}

#[tokio::test]
async fn the_body_has_exactly_the_documented_fields() {
    let app = App::start().await;
    let token = app.sts.mandate().scopes(["tickets:read"]).sign();
    let reply = app.call("/scoped", &token).await;
    reply.assert_denied(403, "scope_insufficient");
    let Value::Object(body) = &reply.body else {
        panic!("not an object: {reply:#?}")
    };
    let mut keys: Vec<&str> = body.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["details", "error", "error_description", "hint", "requestId"]
    );
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    assert_eq!(body["details"]["missing_scope"], "tickets:write");
    assert_eq!(
        body["details"]["required_scopes"],
        json!(["tickets:read", "tickets:write"])
    );
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let app = App::start().await;
    let echoed = Reply::of(app.get("/any").header("x-request-id", "trace-42")).await;
    echoed.assert_denied(401, "missing_token");
    assert_eq!(echoed.body["requestId"], "trace-42");
    assert_eq!(echoed.header("x-request-id"), Some("trace-42"));

    let generated = Reply::of(app.get("/any")).await;
    let id = generated.body["requestId"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(generated.header("x-request-id"), Some(id.as_str()));
    let again = Reply::of(app.get("/any")).await;
    assert_ne!(again.body["requestId"], id.as_str());

    for insane in ["a".repeat(129), "two words".to_owned(), String::new()] {
        let reply = Reply::of(app.get("/any").header("x-request-id", insane.as_str())).await;
        let id = reply.body["requestId"].as_str().unwrap();
        assert_ne!(id, insane);
        assert_eq!(id.len(), 32, "replaced by a generated id");
        assert_eq!(reply.header("x-request-id"), Some(id));
    }
}

#[tokio::test]
async fn www_authenticate_follows_rfc_6750() {
    let app = App::start().await;
    let missing = Reply::of(app.get("/any")).await;
    assert_eq!(
        missing.header("www-authenticate"),
        Some("Bearer realm=\"resource://api\"")
    );
    let invalid = app.call("/any", "a.b.c").await;
    assert_eq!(
        invalid.header("www-authenticate"),
        Some("Bearer realm=\"resource://api\", error=\"invalid_token\"")
    );
    let zone = app
        .call("/any", &app.sts.mandate().zone("zone-2").sign())
        .await;
    assert_eq!(
        zone.header("www-authenticate"),
        Some("Bearer realm=\"resource://api\", error=\"invalid_token\"")
    );
    let scope = app
        .call(
            "/scoped",
            &app.sts.mandate().scopes(["tickets:read"]).sign(),
        )
        .await;
    assert_eq!(
        scope.header("www-authenticate"),
        Some(
            "Bearer realm=\"resource://api\", error=\"insufficient_scope\", \
             scope=\"tickets:read tickets:write\""
        )
    );
    let agent = app.call("/agent", &app.sts.mandate().sign()).await;
    assert_eq!(agent.status, 403);
    assert!(agent.header("www-authenticate").is_none());
    let big = app
        .call(
            "/any",
            &app.sts
                .mandate()
                .claim("pad", json!("x".repeat(17 * 1024)))
                .sign(),
        )
        .await;
    assert_eq!(big.status, 413);
    assert!(big.header("www-authenticate").is_none());
}

#[tokio::test]
async fn the_realm_is_configurable_and_sanitized() {
    let sts = TestIssuer::start(ZONE).await.unwrap();
    let router = Router::new()
        .route("/any", get(principal))
        .layer(MandateLayer::new(verifier(&sts), Requirements::new()).realm("tick\"ets\\ api"));
    let addr = serve(router).await;
    let reply = Reply::of(client().get(format!("http://{addr}/any"))).await;
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Bearer realm=\"ticketsapi\"")
    );
}

#[tokio::test]
async fn bearer_parsing_follows_rfc_6750() {
    let app = App::start().await;
    let token = app.sts.mandate().sign();
    for value in [
        format!("Bearer {token}"),
        format!("bearer {token}"),
        format!("BEARER   {token}"),
    ] {
        let reply = Reply::of(app.get("/any").header("authorization", value.as_str())).await;
        assert_eq!(reply.status, 200, "{value:.12}: {reply:#?}");
    }

    let basic = Reply::of(
        app.get("/any")
            .header("authorization", "Basic dXNlcjpwYXNz"),
    )
    .await;
    basic.assert_denied(401, "missing_token");
    assert_eq!(
        basic.header("www-authenticate"),
        Some("Bearer realm=\"resource://api\"")
    );

    let empty = Reply::of(app.get("/any").header("authorization", "Bearer ")).await;
    assert_eq!(empty.status, 401);
}

/// The layer looks a repeated token up in the mandate cache before scanning its
/// characters. A cached token with a byte added, or split by a space, must still be
/// refused as malformed, never matched to the cached mandate.
#[tokio::test]
async fn a_cached_token_with_stray_bytes_is_malformed_not_a_cache_hit() {
    let app = App::start().await;
    let token = app.sts.mandate().sign();
    for _ in 0..3 {
        let reply = Reply::of(app.get("/any").bearer_auth(&token)).await;
        assert_eq!(reply.status, 200, "{reply:#?}");
    }
    let (head, tail) = token.split_at(token.len() / 2);
    let mut obs_text = format!("Bearer {token}").into_bytes();
    obs_text.push(0xff);
    for value in [
        reqwest::header::HeaderValue::from_bytes(&obs_text).unwrap(),
        reqwest::header::HeaderValue::from_str(&format!("Bearer {head} {tail}")).unwrap(),
        reqwest::header::HeaderValue::from_str(&format!("Bearer {head}\t{tail}")).unwrap(),
    ] {
        let reply = Reply::of(app.get("/any").header("authorization", value)).await;
        reply.assert_denied(401, "invalid_token");
        assert_eq!(reply.body["details"]["reason"], "malformed");
    }
    // Trailing whitespace is not part of the token (RFC 7230 OWS): still the
    // cached mandate.
    let reply = Reply::of(
        app.get("/any")
            .header("authorization", format!("Bearer {token}\t ")),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:#?}");
}

#[tokio::test]
async fn two_authorization_headers_are_rejected_never_first_wins() {
    let app = App::start().await;
    let token = app.sts.mandate().sign();
    let reply = Reply::of(
        app.get("/any")
            .header("authorization", format!("Bearer {token}"))
            .header("authorization", format!("Bearer {token}")),
    )
    .await;
    reply.assert_denied(401, "invalid_token");
    assert_eq!(reply.body["details"]["reason"], "malformed");
    // Also on an optional layer: credentials are present, just ambiguous.
    let reply = Reply::of(
        app.get("/maybe")
            .header("authorization", format!("Bearer {token}"))
            .header("authorization", "Basic dXNlcjpwYXNz"),
    )
    .await;
    reply.assert_denied(401, "invalid_token");
}

#[tokio::test]
async fn a_token_in_the_query_string_is_never_read() {
    let app = App::start().await;
    let token = app.sts.mandate().sign();
    let reply = Reply::of(app.get(&format!("/any?access_token={token}"))).await;
    reply.assert_denied(401, "missing_token");
}

#[tokio::test]
async fn extractors_get_the_mandate() {
    let app = App::start().await;
    let token = app.sts.mandate().subject("carol").sign();

    // `Option<Mandate>` behind an optional layer.
    let anonymous = Reply::of(app.get("/maybe")).await;
    assert_eq!(
        (anonymous.status, anonymous.body.as_str()),
        (200, Some("anonymous"))
    );
    let known = app.call("/maybe", &token).await;
    assert_eq!((known.status, known.body.as_str()), (200, Some("carol")));
    // Bad credentials are still denied by an optional layer.
    app.call("/maybe", "x.y.z")
        .await
        .assert_denied(401, "invalid_token");

    // `Mandate` behind an optional layer: anonymous callers get the layer's 401.
    let strict = Reply::of(app.get("/maybe-strict").header("x-request-id", "r-7")).await;
    strict.assert_denied(401, "missing_token");
    assert_eq!(strict.body["requestId"], "r-7");
    assert_eq!(
        strict.header("www-authenticate"),
        Some("Bearer realm=\"resource://api\"")
    );
    assert_eq!(app.call("/maybe-strict", &token).await.body["sub"], "carol");

    // `Mandate` with no layer at all: denied, never a panic or a 500.
    let unguarded = app.call("/unguarded", &token).await;
    unguarded.assert_denied(401, "missing_token");
    assert_eq!(unguarded.header("www-authenticate"), Some("Bearer"));
}

/// A fetcher that counts calls and always fails.
#[derive(Debug, Clone, Default)]
struct DeadFetcher(Arc<AtomicUsize>);

impl JwksFetcher for DeadFetcher {
    fn fetch<'a>(&'a self, _: &'a str, _: usize) -> BoxFuture<'a, Result<Vec<u8>, FetchError>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Err(FetchError::new("this verifier must not fetch")) })
    }
}

#[tokio::test]
async fn stacked_layers_with_one_verifier_verify_once() {
    let sts = TestIssuer::start(ZONE).await.unwrap();
    let v = verifier(&sts);
    let once = Requirements::new().single_use();
    let router = Router::new()
        .route(
            "/scoped",
            get(principal).route_layer(MandateLayer::new(
                v.clone(),
                Requirements::new().scopes(["tickets:write"]),
            )),
        )
        .route(
            "/once",
            get(principal).route_layer(MandateLayer::new(v.clone(), once.clone())),
        )
        .layer(MandateLayer::new(v.clone(), once));
    let addr = serve(router).await;
    let http = client();
    let call = |path: &str, token: &str| {
        Reply::of(http.get(format!("http://{addr}{path}")).bearer_auth(token))
    };

    let writer = sts.mandate().scopes(["tickets:write"]).sign();
    assert_eq!(call("/scoped", &writer).await.status, 200);
    // Valid for the outer layer, short of the inner requirement: the inner 403.
    let reader = sts.mandate().scopes(["tickets:read"]).sign();
    call("/scoped", &reader)
        .await
        .assert_denied(403, "scope_insufficient");
    // Both layers are single-use with one verifier: the use is recorded once, so
    // the inner layer does not see its own outer layer's use as a replay.
    let fresh = sts.mandate().sign();
    assert_eq!(call("/once", &fresh).await.status, 200);
    let replay = call("/once", &fresh).await;
    replay.assert_denied(401, "invalid_token");
    assert_eq!(replay.body["details"]["reason"], "replayed");
    assert_eq!(v.jwks_fetches(), 1);
    assert_eq!(sts.jwks_requests(), 1);
}

#[tokio::test]
async fn an_inner_layer_with_another_key_source_verifies_again() {
    let sts = TestIssuer::start(ZONE).await.unwrap();
    let outer = verifier(&sts);
    // Same issuer, audience and zone, but its key source cannot fetch keys: reusing
    // the outer layer's mandate would accept a token this verifier cannot check.
    let dead = DeadFetcher::default();
    let inner = Verifier::builder()
        .issuer(sts.issuer_url())
        .audience(AUDIENCE)
        .zone(ZONE)
        .jwks_fetcher(dead.clone())
        .build()
        .unwrap();
    let router = Router::new()
        .route(
            "/scoped",
            get(principal).route_layer(MandateLayer::new(inner, Requirements::new())),
        )
        .layer(MandateLayer::new(outer, Requirements::new()));
    let addr = serve(router).await;
    let token = sts.mandate().sign();
    let reply = Reply::of(
        client()
            .get(format!("http://{addr}/scoped"))
            .bearer_auth(&token),
    )
    .await;
    reply.assert_denied(503, "sts_unavailable");
    assert!(
        dead.0.load(Ordering::SeqCst) >= 1,
        "the inner layer verified"
    );
}

/// An outer layer built for `outer_b`, an inner layer built for `inner_b`, both on
/// `sts`'s issuer, audience and zone; `path` is served by both.
async fn stacked(
    sts: &TestIssuer,
    outer_b: impl FnOnce(caracal_verifier::VerifierBuilder) -> caracal_verifier::VerifierBuilder,
    inner_b: impl FnOnce(caracal_verifier::VerifierBuilder) -> caracal_verifier::VerifierBuilder,
) -> String {
    let base = || {
        Verifier::builder()
            .issuer(sts.issuer_url())
            .audience(AUDIENCE)
            .zone(ZONE)
    };
    let outer = outer_b(base()).build().unwrap();
    let inner = inner_b(base()).build().unwrap();
    let router = Router::new()
        .route(
            "/stacked",
            get(principal).route_layer(MandateLayer::new(inner, Requirements::new())),
        )
        .layer(MandateLayer::new(outer, Requirements::new()));
    format!("http://{}/stacked", serve(router).await)
}

#[tokio::test]
async fn an_inner_layer_with_another_token_use_denies_what_the_outer_accepts() {
    let sts = TestIssuer::start(ZONE).await.unwrap();
    let url = stacked(&sts, |b| b, |b| b.token_use("gateway")).await;
    // A resource mandate: good for the outer layer, not for the inner one.
    let reply = Reply::of(client().get(&url).bearer_auth(sts.mandate().sign())).await;
    reply.assert_denied(401, "invalid_token");
    assert_eq!(reply.body["details"]["reason"], "use");
    let gateway = sts.mandate().claim("use", json!("gateway")).sign();
    let reply = Reply::of(client().get(&url).bearer_auth(gateway)).await;
    assert_eq!(
        reply.status, 401,
        "and the outer layer denies a gateway mandate"
    );
}

#[tokio::test]
async fn an_inner_layer_with_other_algorithms_denies_what_the_outer_accepts() {
    let sts = TestIssuer::start(ZONE).await.unwrap();
    let url = stacked(
        &sts,
        |b| b,
        |b| b.algorithms([caracal_verifier::Algorithm::EdDSA]),
    )
    .await;
    let reply = Reply::of(client().get(&url).bearer_auth(sts.mandate().sign())).await;
    reply.assert_denied(401, "invalid_token");
    assert_eq!(reply.body["details"]["reason"], "algorithm");
}

#[tokio::test]
async fn an_inner_single_use_layer_with_its_own_guard_records_the_use() {
    let sts = TestIssuer::start(ZONE).await.unwrap();
    // The outer layer keeps uses in its verifier's memory; the inner layer's
    // verifier has its own guard, and also protects `/direct` on its own (as
    // another replica sharing its store would).
    let outer = verifier(&sts);
    let inner = verifier(&sts);
    let once = Requirements::new().single_use();
    let router = Router::new()
        .route(
            "/stacked",
            get(principal)
                .route_layer(MandateLayer::new(inner.clone(), once.clone()))
                .route_layer(MandateLayer::new(outer, once.clone())),
        )
        .route(
            "/direct",
            get(principal).route_layer(MandateLayer::new(inner, once)),
        );
    let addr = serve(router).await;
    let http = client();
    let token = sts.mandate().sign();
    let first = Reply::of(
        http.get(format!("http://{addr}/stacked"))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(first.status, 200, "{first:#?}");
    let replay = Reply::of(
        http.get(format!("http://{addr}/direct"))
            .bearer_auth(&token),
    )
    .await;
    replay.assert_denied(401, "invalid_token");
    assert_eq!(
        replay.body["details"]["reason"], "replayed",
        "the inner guard recorded the use made through the stacked route"
    );
}

#[tokio::test]
async fn a_custom_renderer_replaces_the_body_but_keeps_protocol_headers() {
    let sts = TestIssuer::start(ZONE).await.unwrap();
    let json_rpc = |err: &AuthError, request_id: &str| {
        let body = json!({
            "jsonrpc": "2.0",
            "id": null,
            "error": { "code": -32001, "message": err.code().as_str(), "data": { "requestId": request_id } },
        });
        http::Response::builder()
            .status(err.status())
            .header("content-type", "application/json-rpc")
            .body(Bytes::from(body.to_string()))
            .unwrap()
    };
    let router = Router::new()
        .route("/mcp", get(principal))
        .layer(MandateLayer::new(verifier(&sts), Requirements::new()).renderer(json_rpc));
    let addr = serve(router).await;
    let reply = Reply::of(
        client()
            .get(format!("http://{addr}/mcp"))
            .header("x-request-id", "rpc-1"),
    )
    .await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.header("content-type"), Some("application/json-rpc"));
    assert_eq!(reply.body["error"]["message"], "missing_token");
    assert_eq!(reply.body["error"]["data"]["requestId"], "rpc-1");
    assert_eq!(reply.header("x-request-id"), Some("rpc-1"));
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Bearer realm=\"resource://api\"")
    );
}

#[tokio::test]
async fn a_single_use_mandate_is_accepted_once() {
    let app = App::start().await;
    let token = app.sts.mandate().sign();
    assert_eq!(app.call("/once", &token).await.status, 200);
    let replay = app.call("/once", &token).await;
    replay.assert_denied(401, "invalid_token");
    assert_eq!(replay.body["details"]["reason"], "replayed");
    // Other routes are not single-use.
    assert_eq!(app.call("/any", &token).await.status, 200);
}

#[tokio::test]
async fn a_bare_hyper_service_is_protected() {
    use http_body_util::Full;
    use hyper::server::conn::http1;
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    use tower::ServiceBuilder;

    let sts = TestIssuer::start(ZONE).await.unwrap();
    let svc = ServiceBuilder::new()
        .layer(MandateLayer::new(
            verifier(&sts),
            Requirements::new().scopes(["tickets:read"]),
        ))
        .service_fn(|req: http::Request<hyper::body::Incoming>| async move {
            let m = req.extensions().get::<Mandate>().cloned();
            let who = m.map_or_else(String::new, |m| m.subject().to_owned());
            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(who))))
        });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let svc = TowerToHyperService::new(svc.clone());
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), svc));
        }
    });
    let url = format!("http://{addr}/");
    let http = client();
    let token = sts
        .mandate()
        .subject("dave")
        .scopes(["tickets:read"])
        .sign();
    let ok = Reply::of(http.get(&url).bearer_auth(&token)).await;
    assert_eq!((ok.status, ok.body.as_str()), (200, Some("dave")));
    Reply::of(http.get(&url))
        .await
        .assert_denied(401, "missing_token");
    let weak = sts.mandate().sign();
    Reply::of(http.get(&url).bearer_auth(&weak))
        .await
        .assert_denied(403, "scope_insufficient");
}

/// Captures formatted tracing output.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn each_decision_emits_one_event_without_the_token() {
    // A global subscriber: scoped ones miss events whose callsites other tests in
    // this process hit concurrently. Lines are told apart by request id.
    let capture = Capture::default();
    let sink = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("caracal_verifier::decision=debug")
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("only this test sets it");

    let app = App::start().await;
    let token = app.sts.mandate().sid("sid-traced").sign();
    let weak = app.sts.mandate().sid("sid-weak").sign();
    let id = |name: &str| format!("decision-test-{name}");
    let allowed = app
        .get("/any")
        .bearer_auth(&token)
        .header("x-request-id", id("allowed"));
    assert_eq!(Reply::of(allowed).await.status, 200);
    let agent = app
        .get("/agent")
        .bearer_auth(&weak)
        .header("x-request-id", id("agent"));
    assert_eq!(Reply::of(agent).await.status, 403);
    let missing = app.get("/any").header("x-request-id", id("missing"));
    assert_eq!(Reply::of(missing).await.status, 401);

    // Without an incoming id, a denial generates one; the allow before it logs none.
    let unnamed = app.sts.mandate().sid("sid-unnamed").sign();
    let reply = Reply::of(app.get("/agent").bearer_auth(&unnamed)).await;
    assert_eq!(reply.status, 403);
    let generated = reply.body["requestId"].as_str().unwrap().to_owned();

    let out = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let unnamed: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("sid=\"sid-unnamed\""))
        .collect();
    assert_eq!(unnamed.len(), 2, "{out}");
    assert!(unnamed[0].contains("decision=\"allow\"") && !unnamed[0].contains("request_id="));
    assert!(
        unnamed[1].contains(&format!("request_id=\"{generated}\"")),
        "{}",
        unnamed[1]
    );
    let events = |name: &str| -> Vec<String> {
        let tag = format!("request_id=\"{}\"", id(name));
        out.lines()
            .filter(|l| l.contains(&tag))
            .map(str::to_owned)
            .collect()
    };
    // One event per layer that decided: `/any` has one layer; on `/agent` the outer
    // layer verifies (allow) and the route layer denies.
    let allowed = events("allowed");
    assert_eq!(allowed.len(), 1, "{out}");
    assert!(allowed[0].contains("decision=\"allow\""));
    assert!(
        allowed[0].contains("sid=\"sid-traced\"") && allowed[0].contains("client_id=\"app-1\"")
    );
    let agent = events("agent");
    assert_eq!(agent.len(), 2, "{out}");
    assert!(agent[0].contains("decision=\"allow\""));
    assert!(agent[1].contains("decision=\"deny\""));
    assert!(
        agent[1].contains("code=\"agent_identity_required\"")
            && agent[1].contains("sid=\"sid-weak\"")
    );
    let missing = events("missing");
    assert_eq!(missing.len(), 1, "{out}");
    assert!(
        missing[0].contains("code=\"missing_token\"") && missing[0].contains("zone=\"zone-1\"")
    );
    for t in [&token, &weak] {
        let signature = t.rsplit('.').next().unwrap();
        assert!(!out.contains(signature), "a token leaked into the logs");
    }
    assert!(!out.to_ascii_lowercase().contains("authorization"));
}

#[tokio::test]
async fn a_full_replay_guard_is_503_with_retry_after_over_http() {
    let sts = TestIssuer::start(ZONE).await.expect("start issuer");
    let verifier = Verifier::builder()
        .issuer(sts.issuer_url())
        .audience(AUDIENCE)
        .zone(ZONE)
        .replay_capacity(1)
        .build()
        .expect("valid verifier settings");
    let addr = serve(Router::new().route(
        "/once",
        guarded(&verifier, Requirements::new().single_use()),
    ))
    .await;
    let http = client();
    let call =
        |token: String| Reply::of(http.get(format!("http://{addr}/once")).bearer_auth(token));
    let first = sts.mandate().sign();
    assert_eq!(call(first.clone()).await.status, 200);
    let full = call(sts.mandate().sign()).await;
    full.assert_denied(503, "revocation_unavailable");
    assert_eq!(full.header("retry-after"), Some("5"));
    // The recorded mandate was not evicted to make room.
    let replay = call(first).await;
    replay.assert_denied(401, "invalid_token");
    assert_eq!(replay.body["details"]["reason"], "replayed");
}

#[tokio::test]
async fn handlers_see_the_authorization_header_marked_sensitive() {
    let sts = TestIssuer::start(ZONE).await.unwrap();
    let v = verifier(&sts);
    let router = Router::new().route(
        "/headers",
        get(|headers: http::HeaderMap| async move {
            let auth = &headers["authorization"];
            format!("sensitive={}", auth.is_sensitive())
        })
        .route_layer(MandateLayer::new(v, Requirements::new())),
    );
    let addr = serve(router).await;
    let reply = Reply::of(
        client()
            .get(format!("http://{addr}/headers"))
            .bearer_auth(sts.mandate().sign()),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(reply.body, "sensitive=true");
}

// ---------------------------------------------------------------------------
// Deciding as Caracal decides (issue #11): what a client sees over HTTP.

/// The clock start for the parity server.
const T0: u64 = 1_790_000_100;

/// A resource server on a manual clock, with one route per decision of issue #11.
struct Parity {
    sts: TestIssuer,
    clock: ManualClock,
    verifier: Verifier,
    base: String,
    http: reqwest::Client,
}

impl Parity {
    async fn start() -> Parity {
        Parity::start_with(|b| b).await
    }

    async fn start_with(f: impl FnOnce(VerifierBuilder) -> VerifierBuilder) -> Parity {
        let sts = TestIssuer::start(ZONE).await.expect("start issuer");
        let clock = ManualClock::new(Duration::from_secs(T0));
        sts.set_clock(clock.clone());
        let builder = Verifier::builder()
            .issuer(sts.issuer_url())
            .audience(AUDIENCE)
            .zone(ZONE)
            .clock(clock.clone());
        let v = f(builder).build().expect("valid verifier settings");
        // One layer per route: each decision is one layer's, in Caracal's order
        // (a router-wide layer in front would decide revocation on its own first).
        let router = Router::new()
            .route("/any", guarded(&v, Requirements::new()))
            .route(
                "/chain",
                guarded(&v, Requirements::new().chain_contains(["app-orchestrator"])),
            )
            .route(
                "/scoped",
                guarded(&v, Requirements::new().scopes(["tickets:read"])),
            )
            .route("/agent", guarded(&v, Requirements::new().agent()))
            .route(
                "/fresh",
                guarded(
                    &v,
                    Requirements::new().min_remaining(Duration::from_secs(60)),
                ),
            )
            .route(
                "/scoped-target",
                guarded(
                    &v,
                    Requirements::new()
                        .scopes(["tickets:read"])
                        .targets(["resource://billing"]),
                ),
            );
        let addr = serve(router).await;
        Parity {
            sts,
            clock,
            verifier: v,
            base: format!("http://{addr}"),
            http: client(),
        }
    }

    async fn call(&self, path: &str, token: &str) -> Reply {
        Reply::of(
            self.http
                .get(format!("{}{path}", self.base))
                .bearer_auth(token),
        )
        .await
    }
}

#[tokio::test]
async fn over_http_a_mandate_is_refused_from_its_exp_on() {
    let app = Parity::start().await;
    let exp = T0 + 100;
    let token = app.sts.mandate().issued_at(T0).expires_at(exp).sign();
    assert_eq!(app.call("/any", &token).await.status, 200);
    app.clock.set(Duration::from_secs(exp - 1));
    assert_eq!(app.call("/any", &token).await.status, 200, "exp-1");
    for at in [exp, exp + 59] {
        app.clock.set(Duration::from_secs(at));
        let reply = app.call("/any", &token).await;
        reply.assert_denied(401, "invalid_token");
        assert_eq!(
            reply.body["details"]["reason"],
            "expired",
            "exp+{}",
            at - exp
        );
    }
}

#[tokio::test]
async fn over_http_a_bare_client_id_is_not_in_the_chain() {
    let app = Parity::start().await;
    let direct = app.sts.mandate().client_id("app-orchestrator").sign();
    let reply = app.call("/chain", &direct).await;
    reply.assert_denied(403, "chain_mismatch");
    assert_eq!(reply.body["details"]["application_id"], "app-orchestrator");
    let delegated = app
        .sts
        .mandate()
        .client_id("app-orchestrator")
        .delegation(1)
        .sign();
    assert_eq!(app.call("/chain", &delegated).await.status, 200);
}

#[tokio::test]
async fn over_http_scopes_split_on_any_unicode_white_space() {
    let app = Parity::start().await;
    let separators = [
        '\t', '\n', '\u{0B}', '\u{0C}', '\r', ' ', '\u{85}', '\u{A0}', '\u{1680}', '\u{2000}',
        '\u{2005}', '\u{200A}', '\u{2028}', '\u{2029}', '\u{202F}', '\u{205F}', '\u{3000}',
    ];
    for sep in separators {
        let scope = format!("agents:run{sep}tickets:read");
        let token = app.sts.mandate().claim("scope", json!(scope)).sign();
        let reply = app.call("/scoped", &token).await;
        assert_eq!(reply.status, 200, "U+{:04X}: {reply:#?}", u32::from(sep));
        assert_eq!(reply.body["scopes"], json!(["agents:run", "tickets:read"]));
    }
    for sep in ['\u{200B}', '\u{FEFF}'] {
        let scope = format!("agents:run{sep}tickets:read");
        let token = app.sts.mandate().claim("scope", json!(scope)).sign();
        let reply = app.call("/scoped", &token).await;
        reply.assert_denied(403, "scope_insufficient");
        assert_eq!(reply.body["details"]["missing_scope"], "tickets:read");
    }
}

#[tokio::test]
async fn over_http_checks_run_in_caracal_order() {
    let app = Parity::start().await;
    // Lacking both the route's scope and its target: 403 `scope_insufficient`.
    let bare = app.sts.mandate().sid("sid-order").sign();
    let reply = app.call("/scoped-target", &bare).await;
    reply.assert_denied(403, "scope_insufficient");
    assert_eq!(
        reply.header("www-authenticate"),
        Some(
            "Bearer realm=\"resource://api\", error=\"insufficient_scope\", scope=\"tickets:read\""
        )
    );
    // The scope alone: the target answers, 401 `invalid_token`.
    let scoped = app.sts.mandate().scopes(["tickets:read"]).sign();
    let reply = app.call("/scoped-target", &scoped).await;
    reply.assert_denied(401, "invalid_token");
    assert_eq!(reply.body["details"]["reason"], "target");
    // Revocation runs after the route.
    app.verifier.revocations().revoke("sid-order");
    app.call("/scoped-target", &bare)
        .await
        .assert_denied(403, "scope_insufficient");
    app.call("/any", &bare)
        .await
        .assert_denied(401, "session_revoked");
}

#[tokio::test]
async fn over_http_a_missing_or_non_string_zone_id_is_zone_invalid() {
    let app = Parity::start().await;
    for token in [
        app.sts.mandate().remove_claim("zone_id").sign(),
        app.sts.mandate().claim("zone_id", json!(42)).sign(),
        app.sts.mandate().claim("zone_id", Value::Null).sign(),
    ] {
        let reply = app.call("/scoped", &token).await;
        reply.assert_denied(401, "zone_invalid");
        assert_eq!(
            reply.header("www-authenticate"),
            Some("Bearer realm=\"resource://api\", error=\"invalid_token\"")
        );
    }
    // Another missing claim stays `invalid_token`.
    let no_sub = app.sts.mandate().remove_claim("sub").sign();
    let reply = app.call("/any", &no_sub).await;
    reply.assert_denied(401, "invalid_token");
    assert_eq!(reply.body["details"]["reason"], "claims");
}

/// A mandate as Caracal's STS mints it for `n` granted UUID resources: each listed
/// in both `aud` and `target`, with a ten-hop chain.
fn with_resources(sts: &TestIssuer, n: usize) -> String {
    let resources: Vec<String> = (0..n)
        .map(|i| {
            format!("resource://7d1c2a9e-4b3f-4c8e-9a1d-{i:012x}/0f6b9c3e-2d4a-4e7b-8c5f-{i:012x}")
        })
        .collect();
    let mut aud = vec![AUDIENCE.to_owned()];
    aud.extend(resources.iter().cloned());
    sts.mandate()
        .claim("aud", json!(aud))
        .targets(resources)
        .delegation(10)
        .sign()
}

/// The 16 KiB default cap fits real mandates, and axum's HTTP/1 server (hyper, a
/// read buffer of about 408 KiB) passes such an `Authorization` header through:
/// sent with a plain hyper client.
#[tokio::test]
async fn over_http_a_fifteen_kib_mandate_is_accepted_and_one_over_the_cap_is_413() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let app = Parity::start().await;
    let http = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let send = |token: String| {
        let http = http.clone();
        let uri = format!("{}/any", app.base);
        async move {
            let req = http::Request::get(uri)
                .header("authorization", format!("Bearer {token}"))
                .body(Empty::new())
                .unwrap();
            let res = http.request(req).await.expect("request reaches the server");
            let status = res.status().as_u16();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (status, serde_json::from_slice::<Value>(&body).unwrap())
        }
    };
    let fits = with_resources(&app.sts, 60);
    assert!(
        (14 * 1024..=16 * 1024).contains(&fits.len()),
        "{} bytes",
        fits.len()
    );
    let (status, body) = send(fits).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sub"], "user-1");

    let over = with_resources(&app.sts, 70);
    assert!(over.len() > 16 * 1024);
    let (status, body) = send(over).await;
    assert_eq!((status, &body["error"]), (413, &json!("payload_too_large")));
    assert_eq!(body["details"]["limit"], 16384);
}

#[tokio::test]
async fn over_http_a_mandate_expiring_within_the_window_is_refused() {
    let app = Parity::start().await;
    let exp = T0 + 100;
    let token = app.sts.mandate().issued_at(T0).expires_at(exp).sign();
    assert_eq!(app.call("/fresh", &token).await.status, 200);
    app.clock.set(Duration::from_secs(exp - 60));
    assert_eq!(app.call("/fresh", &token).await.status, 200, "60 s left");
    app.clock.set(Duration::from_secs(exp - 59));
    let reply = app.call("/fresh", &token).await;
    reply.assert_denied(401, "invalid_token");
    assert_eq!(reply.body["details"]["reason"], "expiring");
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Bearer realm=\"resource://api\", error=\"invalid_token\"")
    );
    assert_eq!(app.call("/any", &token).await.status, 200, "other routes");
}

#[tokio::test]
async fn the_sdk_code_spelling_changes_the_body_a_client_reads() {
    let app = Parity::start_with(|b| b.code_spelling(CodeSpelling::CaracalSdk)).await;
    let sts = &app.sts;
    let reply = app.call("/scoped", &sts.mandate().sign()).await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.body["error"], "insufficient_scope");
    assert!(reply.body["error_hint"].is_string(), "{reply:#?}");
    assert!(reply.body.get("hint").is_none());
    assert_eq!(reply.body["details"]["missing_scope"], "tickets:read");
    // RFC 6750's own values in the challenge are untouched.
    assert_eq!(
        reply.header("www-authenticate"),
        Some(
            "Bearer realm=\"resource://api\", error=\"insufficient_scope\", scope=\"tickets:read\""
        )
    );
    for (path, token, status, error) in [
        (
            "/any",
            sts.mandate().zone("zone-2").sign(),
            401,
            "invalid_zone",
        ),
        ("/agent", sts.mandate().sign(), 403, "session_required"),
        ("/chain", sts.mandate().sign(), 403, "chain_mismatch"),
        ("/any", "not-a-jwt".to_owned(), 401, "invalid_token"),
    ] {
        let reply = app.call(path, &token).await;
        assert_eq!((reply.status, reply.code()), (status, error), "{reply:#?}");
        assert!(reply.body["error_hint"].is_string());
    }

    // The default spelling is unchanged.
    let documented = Parity::start().await;
    let reply = documented
        .call("/scoped", &documented.sts.mandate().sign())
        .await;
    reply.assert_denied(403, "scope_insufficient");
    assert!(reply.body["hint"].is_string());
    assert!(reply.body.get("error_hint").is_none());
    let reply = documented
        .call("/agent", &documented.sts.mandate().sign())
        .await;
    reply.assert_denied(403, "agent_identity_required");
}
