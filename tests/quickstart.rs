//! The examples, run the way users run them: `examples/quickstart.rs` (the README's
//! first command) must exit 0 with every outcome row matched, and
//! `examples/resource_server.rs` must keep its fixed contract.
//!
//! `cargo test` builds the examples next to this test binary; when only this test was
//! built (`cargo test --test quickstart`), the examples are built first.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use caracal_verifier::testing::TestIssuer;
use serde_json::{Value, json};

#[cfg(feature = "audit")]
mod redis_common;

fn example_binary(example: &str) -> PathBuf {
    let name = format!("{example}{}", std::env::consts::EXE_SUFFIX);
    // This test runs from target/<profile>/deps/; examples sit in target/<profile>/examples/.
    let exe = std::env::current_exe().expect("current exe");
    let find = || {
        exe.ancestors()
            .map(|dir| dir.join("examples").join(&name))
            .find(|p| p.is_file())
    };
    if let Some(path) = find() {
        return path;
    }
    let status = Command::new(env!("CARGO"))
        .args(["build", "--example", example])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building the {example} example failed");
    find().unwrap_or_else(|| panic!("the {example} example binary after building it"))
}

#[test]
fn quickstart_runs_and_every_outcome_matches() {
    let output = Command::new(example_binary("quickstart"))
        .env_remove("RUST_LOG")
        .output()
        .expect("run the quickstart example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "quickstart failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    for outcome in [
        "200 allowed",
        "403 scope_insufficient",
        "403 agent_identity_required",
        "403 delegation_required",
        "403 chain_mismatch",
        "403 hop_count_exceeded",
        "401 session_revoked",
        "401 missing_token",
    ] {
        let row = stdout
            .lines()
            .find(|l| l.contains(outcome))
            .unwrap_or_else(|| panic!("no row for {outcome}:\n{stdout}"));
        assert!(row.ends_with(" ok"), "row did not match: {row}");
    }
    assert!(!stdout.contains("MISMATCH"), "{stdout}");
    assert!(stdout.contains("outcomes matched"), "{stdout}");
    // The denial's metrics lines.
    assert!(
        stdout.contains("caracal_verifier_denials_missing_auth_total 1"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            r#"caracal_verifier_decisions_total{outcome="deny",code="missing_token",reason=""} 1"#
        ),
        "{stdout}"
    );
}

/// The resource server example as a child process; killed on drop.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    async fn start(issuer: &str) -> Server {
        Self::start_with(issuer, &[]).await
    }

    /// With more environment variables (the audit emitter's, say).
    async fn start_with(issuer: &str, env: &[(&str, &str)]) -> Server {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
            l.local_addr().expect("local addr").port()
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = Command::new(example_binary("resource_server"))
            .env("CARACAL_STS_URL", issuer)
            .env("CARACAL_ZONE_ID", "zone-1")
            .env("CARACAL_AUDIENCE", "resource://api")
            .env("BIND_ADDR", addr.to_string())
            .env("RUST_LOG", "warn")
            .env_remove("CARACAL_REDIS_URL")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the resource server");
        let server = Server {
            child,
            base: format!("http://{addr}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while get(&format!("{}/healthz", server.base), None).await.0 != 200 {
            assert!(Instant::now() < deadline, "resource server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    /// Poll `/readyz` until it answers 200 (keys fetched, feeds caught up).
    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.send(reqwest::Method::GET, "/readyz", None).await.0 != 200 {
            assert!(Instant::now() < deadline, "never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str, token: Option<&str>) -> (u16, Value) {
        send(method, &format!("{}{path}", self.base), token).await
    }
}

async fn get(url: &str, token: Option<&str>) -> (u16, Value) {
    send(reqwest::Method::GET, url, token).await
}

async fn send(method: reqwest::Method, url: &str, token: Option<&str>) -> (u16, Value) {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut req = http.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    match req.send().await {
        Ok(res) => {
            let status = res.status().as_u16();
            let bytes = res.bytes().await.unwrap_or_default();
            (
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            )
        }
        Err(_) => (0, Value::Null),
    }
}

#[tokio::test]
async fn resource_server_keeps_its_contract() {
    use reqwest::Method;

    let sts = TestIssuer::start("zone-1").await.unwrap();
    let server = Server::start(&sts.issuer_url()).await;

    server.wait_ready().await;

    let read = sts.mandate().sid("sid-1").scopes(["tickets:read"]).sign();
    let (status, body) = server.send(Method::GET, "/tickets", Some(&read)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sub"], "user-1");
    assert_eq!(body["client_id"], "app-1");
    assert_eq!(body["zone_id"], "zone-1");
    assert_eq!(body["sid"], "sid-1");
    assert_eq!(body["agent_session_id"], Value::Null);
    assert_eq!(body["delegation_edge_id"], Value::Null);
    assert_eq!(body["scopes"], json!(["tickets:read"]));
    assert_eq!(body["hop_count"], 0);

    let (status, body) = server.send(Method::GET, "/tickets", None).await;
    assert_eq!((status, &body["error"]), (401, &json!("missing_token")));

    let write = sts.mandate().scopes(["tickets:write"]).sign();
    let (status, body) = server.send(Method::POST, "/tickets", Some(&write)).await;
    assert_eq!(
        (status, &body["error"]),
        (403, &json!("agent_identity_required"))
    );
    let agent = sts
        .mandate()
        .scopes(["tickets:write"])
        .agent_session("s-9")
        .sign();
    let (status, body) = server.send(Method::POST, "/tickets", Some(&agent)).await;
    assert_eq!((status, &body["agent_session_id"]), (200, &json!("s-9")));

    let payout = sts
        .mandate()
        .scopes(["billing:payout"])
        .targets(["resource://billing"])
        .delegation(1)
        .sign();
    let (status, body) = server.send(Method::POST, "/payouts", Some(&payout)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["delegation_edge_id"], "edge-1");
    assert_eq!(body["hop_count"], 1);
    let untargeted = sts
        .mandate()
        .scopes(["billing:payout"])
        .delegation(1)
        .sign();
    let (status, body) = server
        .send(Method::POST, "/payouts", Some(&untargeted))
        .await;
    assert_eq!(
        (status, &body["details"]["reason"]),
        (401, &json!("target"))
    );

    let orchestrate = |hops| {
        sts.mandate()
            .scopes(["agents:run"])
            .client_id("app-orchestrator")
            .delegation(hops)
            .sign()
    };
    let (status, body) = server
        .send(Method::POST, "/orchestrate", Some(&orchestrate(2)))
        .await;
    assert_eq!((status, &body["hop_count"]), (200, &json!(2)));
    let (status, body) = server
        .send(Method::POST, "/orchestrate", Some(&orchestrate(3)))
        .await;
    assert_eq!(
        (status, &body["error"]),
        (403, &json!("hop_count_exceeded"))
    );
}

/// The observability routes: metrics, status, manifest and what an outbound call
/// would propagate.
#[tokio::test]
async fn resource_server_serves_metrics_status_manifest_and_propagation() {
    let sts = TestIssuer::start("zone-1").await.unwrap();
    let server = Server::start(&sts.issuer_url()).await;
    server.wait_ready().await;
    let read = sts.mandate().sid("sid-7").scopes(["tickets:read"]).sign();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    // /propagation: the incoming trace continues; the baggage's caracal entries come
    // from the mandate, not from the forged incoming member.
    let res = http
        .get(format!("{}/propagation", server.base))
        .bearer_auth(&read)
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("baggage", "caracal.session=forged,tenant=acme")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    let tp = body["traceparent"].as_str().unwrap();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );
    assert!(!tp.contains("00f067aa0ba902b7"), "a new span id: {tp}");
    let baggage = body["baggage"].as_str().unwrap();
    assert!(baggage.contains("caracal.session=sid-7"), "{baggage}");
    assert!(baggage.contains("tenant=acme") && !baggage.contains("forged"));
    let (status, _) = server
        .send(reqwest::Method::GET, "/propagation", None)
        .await;
    assert_eq!(status, 401);

    // /caracal/manifest and /caracal/status: JSON, no token.
    let (status, manifest) = server
        .send(reqwest::Method::GET, "/caracal/manifest", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(manifest["schema_version"], "2026-05-21", "{manifest}");
    let (status, doc) = server
        .send(reqwest::Method::GET, "/caracal/status", None)
        .await;
    assert_eq!(status, 200);
    assert!(doc.is_object(), "{doc}");
    assert!(!doc.to_string().contains(&read));

    // /metrics: the decisions above, published within a second or two.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = http
            .get(format!("{}/metrics", server.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("caracal_verifier_denials_missing_auth_total 1")
            && text.contains(r#"caracal_verifier_decisions_total{outcome="allow""#)
        {
            assert!(!text.contains(&read));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never published:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn resource_server_starts_without_the_issuer() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let server = Server::start(&format!("http://{closed}")).await;
    let (status, body) = server.send(reqwest::Method::GET, "/readyz", None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["keys"], false);
    let (status, _) = server.send(reqwest::Method::GET, "/healthz", None).await;
    assert_eq!(status, 200);
}

/// With `CARACAL_AUDIT=on`, `CARACAL_REDIS_URL` and `AUDIT_HMAC_KEY`, the reference
/// server records one signed action result per decided request on
/// `caracal.audit.events`, and shows the emitter among its sources.
#[cfg(feature = "audit")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_server_records_audit_events_when_configured() {
    use redis_common::{KEY_HEX, RedisServer};

    let redis = RedisServer::start().await;
    let sts = TestIssuer::start("zone-1").await.unwrap();
    let audit_key = "5f".repeat(32);
    let server = Server::start_with(
        &sts.issuer_url(),
        &[
            ("CARACAL_REDIS_URL", &redis.url()),
            ("STREAMS_HMAC_KEY", KEY_HEX),
            ("CARACAL_AUDIT", "on"),
            ("AUDIT_HMAC_KEY", &audit_key),
        ],
    )
    .await;
    server.wait_ready().await;
    let read = sts.mandate().scopes(["tickets:read"]).sign();
    let (status, _) = server
        .send(reqwest::Method::GET, "/tickets", Some(&read))
        .await;
    assert_eq!(status, 200);
    let (status, _) = server.send(reqwest::Method::GET, "/tickets", None).await;
    assert_eq!(status, 401);

    let mut conn = redis.connection().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let entries: Vec<(String, Vec<(String, String)>)> = loop {
        let reply: redis::Value = redis::cmd("XRANGE")
            .arg("caracal.audit.events")
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        let entries: Vec<(String, Vec<(String, String)>)> =
            redis::from_redis_value(reply).unwrap_or_default();
        if entries.len() >= 2 {
            break entries;
        }
        assert!(Instant::now() < deadline, "no audit events: {entries:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut decisions = Vec::new();
    for (_, fields) in &entries {
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        let data = get("data");
        assert!(!data.contains(&read), "the token is never written");
        let key = aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            &(0..32)
                .map(|i| u8::from_str_radix(&audit_key[2 * i..2 * i + 2], 16).unwrap())
                .collect::<Vec<u8>>(),
        );
        let tag = aws_lc_rs::hmac::sign(&key, data.as_bytes());
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(get("sig"), hex, "sig is the HMAC of data");
        let event: Value = serde_json::from_str(&data).unwrap();
        decisions.push(event["decision"].as_str().unwrap().to_owned());
    }
    assert_eq!(decisions, ["allow", "deny"]);
    let (_, status) = server
        .send(reqwest::Method::GET, "/caracal/status", None)
        .await;
    assert!(status.to_string().contains("redis-audit"), "{status}");
    let (_, manifest) = server
        .send(reqwest::Method::GET, "/caracal/manifest", None)
        .await;
    assert_eq!(
        manifest["audit"]["action_result_emitter"], true,
        "{manifest}"
    );
}
