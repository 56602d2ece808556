//! The action-result audit emitter (`caracal_verifier::audit`) against a real
//! `redis-server` and a real axum `MandateLayer`.
//!
//! Each test starts its own server (see `redis_common`). Nothing sleeps for a
//! fixed time: tests poll for end states with `eventually`.
//!
//! Run with `cargo test --all-features --test audit`.
#![cfg(feature = "audit")]

mod redis_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lc_rs::hmac;
use axum::body::Body;
use axum::{Router, routing::get};
use caracal_verifier::audit::{AuditEmitter, AuditKey, AuditStats};
use caracal_verifier::layer::MandateLayer;
use caracal_verifier::testing::TestIssuer;
use caracal_verifier::{ConfigError, Requirements, Verifier};
use http::{Request, StatusCode};
use redis_common::{RedisServer, audited_verifier, eventually};
use serde_json::Value;
use tower::ServiceExt;

const AUDIT_KEY_HEX: &str = "9c1f0e2d3b4a59687766554433221100aabbccddeeff00112233445566778899";
const STREAM: &str = "caracal.audit.events";
const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn key() -> AuditKey {
    AuditKey::from_hex(AUDIT_KEY_HEX).unwrap()
}

/// An emitter for `server` that reconnects quickly.
fn emitter(server: &RedisServer) -> AuditEmitter {
    AuditEmitter::new(server.url())
        .key(key())
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .io_timeout(Duration::from_millis(500))
}

/// A fresh directory under the system temp dir, unique to this test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("caracal-audit-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn app(v: &Verifier) -> Router {
    Router::new()
        .route("/ok", get(|| async { "ok" }))
        .layer(MandateLayer::new(
            v.clone(),
            Requirements::new().scopes(["tickets:read"]),
        ))
}

fn request(token: Option<&str>, request_id: &str) -> Request<Body> {
    let mut b = Request::get("/ok")
        .header("traceparent", TP)
        .header("x-request-id", request_id);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(Body::empty()).unwrap()
}

/// Send `n` allowed requests; each must complete (whatever Redis does) within a
/// generous bound.
async fn send_allowed(app: &Router, token: &str, n: usize) {
    for i in 0..n {
        let resp = tokio::time::timeout(
            Duration::from_secs(10),
            app.clone()
                .oneshot(request(Some(token), &format!("req-{i}"))),
        )
        .await
        .expect("a request never waits on the audit sink")
        .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
}

/// The stream's entries as (id, fields).
async fn entries(server: &RedisServer) -> Vec<(String, Vec<(String, String)>)> {
    let mut conn = server.connection().await;
    let raw: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(STREAM)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("XRANGE");
    raw.into_iter()
        .map(|(id, flat)| {
            let pairs = flat
                .chunks(2)
                .map(|p| (p[0].clone(), p[1].clone()))
                .collect();
            (id, pairs)
        })
        .collect()
}

async fn stream_len(server: &RedisServer) -> usize {
    let mut conn = server.connection().await;
    redis::cmd("XLEN")
        .arg(STREAM)
        .query_async(&mut conn)
        .await
        .unwrap_or(0)
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no field {name} in {fields:?}"))
}

/// Verify `sig` over `data` with the test key, independently of the crate.
fn signature_ok(data: &str, sig: &str) -> bool {
    let raw: Vec<u8> = (0..AUDIT_KEY_HEX.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&AUDIT_KEY_HEX[i..i + 2], 16).unwrap())
        .collect();
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &raw), data.as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    hex == sig
}

fn spill_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    read.filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "ndjson"))
        .map(|p| {
            let len = std::fs::metadata(&p).unwrap().len();
            (p, len)
        })
        .collect()
}

async fn wait_sent(stats: &AuditStats, n: u64) {
    eventually(&format!("{n} events are sent"), async || {
        stats.snapshot().sent >= n
    })
    .await;
}

#[tokio::test]
async fn events_are_signed_over_data_and_carry_the_contract_fields() {
    let server = RedisServer::start().await;
    let sts = TestIssuer::start("zone-1").await.unwrap();
    let emitter = emitter(&server).manifest_sha("sha256:feed");
    let stats = emitter.stats();
    let v = audited_verifier(&sts, emitter).await;
    let app = app(&v);
    let token = sts
        .mandate()
        .client_id("app-7")
        .subject("user-secret-subject")
        .scopes(["tickets:read"])
        .sign();
    send_allowed(&app, &token, 1).await;
    let denied = app
        .clone()
        .oneshot(request(None, "req-denied"))
        .await
        .unwrap();
    assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
    wait_sent(&stats, 2).await;
    // The emitter's counts reach the verifier's status (and so the metrics).
    let audit = v
        .sources()
        .iter()
        .find(|s| s.name() == "redis-audit")
        .expect("the emitter runs as a source");
    let counters = audit.status().counters;
    assert!(counters.contains(&("audit_sent_total", 2)), "{counters:?}");
    assert!(
        counters.contains(&("audit_dropped_total", 0)),
        "{counters:?}"
    );
    let status: Value = serde_json::from_slice(&v.status_json()).unwrap();
    let listed = status.to_string();
    assert!(listed.contains("\"audit_sent_total\":2"), "{listed}");

    let entries = entries(&server).await;
    assert_eq!(entries.len(), 2);
    let mut by_request = std::collections::HashMap::new();
    for (_, fields) in &entries {
        let data = field(fields, "data");
        assert!(signature_ok(data, field(fields, "sig")), "sig over data");
        assert!(!data.contains(&token), "the token is never written");
        assert!(!data.contains("user-secret-subject"), "nor the raw subject");
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["id"], field(fields, "id"));
        by_request.insert(v["request_id"].as_str().unwrap().to_owned(), v);
    }

    let allow = &by_request["req-0"];
    for required in [
        "id",
        "zone_id",
        "event_type",
        "request_id",
        "decision",
        "evaluation_status",
        "determining_policies_json",
        "diagnostics_json",
        "occurred_at",
    ] {
        assert!(allow.get(required).is_some(), "{required} in {allow}");
    }
    let id = allow["id"].as_str().unwrap();
    assert_eq!(id.len(), 36);
    assert_eq!(&id[14..15], "7", "a UUIDv7: {id}");
    assert_eq!(allow["zone_id"], "zone-1");
    assert_eq!(allow["event_type"], "verifier_resource_request");
    assert_eq!(allow["decision"], "allow");
    assert_eq!(allow["evaluation_status"], "executed");
    assert_eq!(allow["manifest_sha"], "sha256:feed");
    assert_eq!(allow["determining_policies_json"], serde_json::json!([]));
    assert_eq!(allow["diagnostics_json"], serde_json::json!([]));
    let occurred = allow["occurred_at"].as_str().unwrap();
    assert!(
        occurred.ends_with('Z') && occurred.as_bytes()[10] == b'T',
        "{occurred}"
    );
    let m = &allow["metadata_json"];
    assert_eq!(m["application_id"], "app-7");
    assert_eq!(m["resource"], "resource://api");
    assert_eq!(m["method"], "GET");
    assert_eq!(m["status"], 200);
    assert_eq!(m["result_class"], "success");
    assert_eq!(m["subject_kind"], "user");
    assert_eq!(m["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(m["latency_ms"].is_u64());
    assert_eq!(m["subject_fingerprint"].as_str().unwrap().len(), 16);
    assert!(m.get("error_kind").is_none());

    let deny = &by_request["req-denied"];
    assert_eq!(deny["decision"], "deny");
    assert_eq!(deny["evaluation_status"], "denied");
    assert_eq!(deny["zone_id"], "zone-1");
    assert_eq!(deny["diagnostics_json"][0]["code"], "missing_token");
    assert_eq!(deny["metadata_json"]["status"], 401);
    assert_eq!(deny["metadata_json"]["error_kind"], "missing_token");
    assert!(deny["metadata_json"].get("application_id").is_none());
    assert!(deny["metadata_json"].get("result_class").is_none());
    v.shutdown().await;
}

#[tokio::test]
async fn redis_down_spills_private_files_which_the_next_start_drains() {
    let mut server = RedisServer::start().await;
    let sts = TestIssuer::start("zone-1").await.unwrap();
    let token = sts.mandate().scopes(["tickets:read"]).sign();
    let dir = temp_dir("drain");

    let first = emitter(&server).replay_dir(&dir);
    let stats = first.stats();
    let v = audited_verifier(&sts, first).await;
    server.kill();
    send_allowed(&app(&v), &token, 5).await;
    // Shutdown flushes the queue: into the replay directory, Redis being down.
    v.shutdown().await;
    let c = stats.snapshot();
    assert_eq!((c.persisted, c.lost, c.sent), (5, 0, 0), "{c:?}");
    assert!(c.sink_errors > 0);
    let files = spill_files(&dir);
    assert!(!files.is_empty());
    #[cfg(unix)]
    for (path, _) in &files {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", path.display());
    }
    drop(v);

    server.restart().await;
    let second = emitter(&server).replay_dir(&dir);
    let stats = second.stats();
    let v = audited_verifier(&sts, second).await;
    eventually("the replay files are drained", async || {
        stats.snapshot().drained == 5 && spill_files(&dir).is_empty()
    })
    .await;
    let entries = entries(&server).await;
    assert_eq!(entries.len(), 5);
    let mut ids: Vec<String> = Vec::new();
    for (_, fields) in &entries {
        let data = field(fields, "data");
        assert!(signature_ok(data, field(fields, "sig")));
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["id"], field(fields, "id"));
        ids.push(v["request_id"].as_str().unwrap().to_owned());
    }
    ids.sort();
    assert_eq!(ids, ["req-0", "req-1", "req-2", "req-3", "req-4"]);
    v.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_and_the_requests_still_succeed() {
    let server = RedisServer::start().await;
    let sts = TestIssuer::start("zone-1").await.unwrap();
    let token = sts.mandate().scopes(["tickets:read"]).sign();
    // The writer stays stuck on a frozen Redis for the whole test.
    let emitter = emitter(&server)
        .queue_capacity(2)
        .batch_size(1)
        .io_timeout(Duration::from_secs(60));
    let stats = emitter.stats();
    let v = audited_verifier(&sts, emitter).await;
    wait_sent(&stats, 0).await;
    server.pause();
    send_allowed(&app(&v), &token, 40).await;
    let c = stats.snapshot();
    assert!(c.dropped > 0, "{c:?}");
    assert!(c.queue_depth <= 2, "{c:?}");
    // Every event is accounted for: queued, in the stuck batch, or dropped.
    assert!(
        c.dropped + c.queue_depth <= 40 && c.dropped >= 40 - 3,
        "{c:?}"
    );
    server.resume();
    eventually("the queued events reach Redis", async || {
        let c = stats.snapshot();
        c.queue_depth == 0 && c.sent + c.dropped == 40
    })
    .await;
    v.shutdown().await;
}

#[tokio::test]
async fn responses_never_wait_on_a_frozen_redis() {
    let server = RedisServer::start().await;
    let sts = TestIssuer::start("zone-1").await.unwrap();
    let token = sts.mandate().scopes(["tickets:read"]).sign();
    let emitter = emitter(&server).io_timeout(Duration::from_secs(60));
    let stats = emitter.stats();
    let v = audited_verifier(&sts, emitter).await;
    let app = app(&v);
    // A first event makes the connection, so the next batch is stuck on it.
    send_allowed(&app, &token, 1).await;
    wait_sent(&stats, 1).await;
    server.pause();
    send_allowed(&app, &token, 20).await;
    let denied = tokio::time::timeout(
        Duration::from_secs(10),
        app.clone().oneshot(request(None, "req-denied")),
    )
    .await
    .expect("a denial never waits on the audit sink either")
    .unwrap();
    assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(stats.snapshot().dropped, 0);
    server.resume();
    eventually("every event reaches Redis", async || {
        stream_len(&server).await == 22
    })
    .await;
    v.shutdown().await;
}

#[tokio::test]
async fn the_spill_cap_bounds_the_disk_and_counts_the_loss() {
    let mut server = RedisServer::start().await;
    let sts = TestIssuer::start("zone-1").await.unwrap();
    let token = sts.mandate().scopes(["tickets:read"]).sign();
    let dir = temp_dir("cap");
    let cap_bytes = 4096;
    let emitter = emitter(&server)
        .replay_dir(&dir)
        .max_spill(cap_bytes, 3)
        .batch_size(5);
    let stats = emitter.stats();
    let v = audited_verifier(&sts, emitter).await;
    server.kill();
    send_allowed(&app(&v), &token, 60).await;
    v.shutdown().await;
    let c = stats.snapshot();
    assert_eq!(c.persisted + c.lost, 60, "{c:?}");
    assert!(c.lost > 0 && c.persisted > 0, "{c:?}");
    let files = spill_files(&dir);
    assert!(files.len() <= 3, "{files:?}");
    let bytes: u64 = files.iter().map(|(_, len)| len).sum();
    assert!(bytes <= cap_bytes, "{bytes} bytes on disk");
    assert_eq!((c.spill_files, c.spill_bytes), (files.len() as u64, bytes));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_missing_or_bad_key_fails_the_build_and_debug_hides_it() {
    let sts = TestIssuer::start("zone-1").await.unwrap();
    let build = |e: AuditEmitter| {
        Verifier::builder()
            .issuer(sts.issuer_url())
            .audience("resource://api")
            .zone("zone-1")
            .audit(e)
            .build()
    };
    let err = build(AuditEmitter::new("redis://127.0.0.1:1")).unwrap_err();
    assert!(matches!(err, ConfigError::Missing("audit_key")), "{err:?}");
    for bad in ["", "abcd", &"zz".repeat(32)] {
        assert!(AuditKey::from_hex(bad).is_err(), "{bad:?}");
    }
    let err = build(AuditEmitter::new("nonsense://user:hunter2@host").key(key())).unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");

    // Opting out is explicit, and then the build succeeds.
    assert!(build(AuditEmitter::new("redis://127.0.0.1:1").dangerous_unsigned()).is_ok());

    let e = AuditEmitter::new("redis://:hunter2@127.0.0.1:1").key(key());
    let dbg = format!("{e:?}");
    assert!(
        !dbg.contains(AUDIT_KEY_HEX) && !dbg.contains("hunter2"),
        "{dbg}"
    );
}
