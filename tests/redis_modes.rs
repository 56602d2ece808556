//! Redis over TLS, behind Sentinel, and as a Cluster: the harness in
//! `redis_common::modes` checked against real `redis-server` processes.
//!
//! These tests show the harness does what it says (a TLS handshake with the made
//! certificates, a failover that keeps replicated data, cluster redirections), so
//! the feed's tests can rely on it.
//!
//! Run with `cargo test --all-features --test redis_modes`.
#![cfg(feature = "redis")]

mod redis_common;

use std::path::Path;

use caracal_verifier::audit::AUDIT_STREAM;
use caracal_verifier::revocation::{DELEGATIONS_INVALIDATE_STREAM, SESSIONS_REVOKE_STREAM};
use redis::RedisResult;
use redis_common::modes::{
    RedisCluster, SentinelSet, TlsOptions, TlsRedis, node_connection, query_node,
};

/// `redis-cli --tls … PING` against `port`: what it printed, trimmed.
async fn tls_ping(port: u16, ca: &Path, client: Option<(&Path, &Path)>) -> String {
    let mut cmd = tokio::process::Command::new("redis-cli");
    cmd.args(["--tls", "-h", "127.0.0.1", "-p", &port.to_string()])
        .arg("--cacert")
        .arg(ca);
    if let Some((cert, key)) = client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    let out = cmd.arg("PING").output().await.expect("run redis-cli");
    format!(
        "{} {}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
    .trim()
    .to_owned()
}

#[tokio::test]
async fn tls_port_accepts_a_client_that_trusts_the_ca() {
    let server = TlsRedis::start(TlsOptions::default()).await;
    assert_ne!(server.tls_port(), server.plain_port());
    assert_eq!(
        server.tls_url(),
        format!("rediss://127.0.0.1:{}", server.tls_port())
    );

    let answer = tls_ping(server.tls_port(), server.ca_pem(), None).await;
    assert_eq!(answer, "PONG");

    // A client that trusts only an unrelated CA refuses the server's certificate.
    let answer = tls_ping(server.tls_port(), server.other_ca_pem(), None).await;
    assert_ne!(answer, "PONG");
    assert!(answer.contains("certificate verify failed"), "{answer}");

    // The plain port serves the test's publisher.
    let mut publisher = server.publisher().await;
    publisher.revoke("session_id", "s-1").await;
    let len: i64 = query_node(
        server.plain_port(),
        redis::cmd("XLEN").arg(SESSIONS_REVOKE_STREAM),
    )
    .await
    .expect("XLEN");
    assert_eq!(len, 1);
}

#[tokio::test]
async fn tls_port_requires_a_client_certificate_when_told() {
    let mut server = TlsRedis::start(TlsOptions {
        require_client_cert: true,
    })
    .await;
    let client = (server.client_cert_pem(), server.client_key_pem());
    let other = (
        server.other_client_cert_pem(),
        server.other_client_key_pem(),
    );

    assert_eq!(
        tls_ping(server.tls_port(), server.ca_pem(), Some(client)).await,
        "PONG"
    );
    assert_ne!(
        tls_ping(server.tls_port(), server.ca_pem(), None).await,
        "PONG"
    );
    assert_ne!(
        tls_ping(server.tls_port(), server.ca_pem(), Some(other)).await,
        "PONG"
    );

    // A restart keeps the ports and the certificates.
    let (tls_port, plain_port) = (server.tls_port(), server.plain_port());
    server.restart().await;
    assert_eq!(
        (server.tls_port(), server.plain_port()),
        (tls_port, plain_port)
    );
    let client = (server.client_cert_pem(), server.client_key_pem());
    assert_eq!(
        tls_ping(server.tls_port(), server.ca_pem(), Some(client)).await,
        "PONG"
    );
}

/// `XLEN stream` on the node on `port`.
async fn xlen(port: u16, stream: &str) -> RedisResult<i64> {
    query_node(port, redis::cmd("XLEN").arg(stream)).await
}

/// The redirection a node answered with: `(MOVED|ASK, port)`.
fn redirect(answer: RedisResult<i64>) -> (String, u16) {
    let err = answer.expect_err("a redirection, not an answer");
    let code = err.code().unwrap_or_default().to_owned();
    let (addr, _slot) = err.redirect_node().expect("a redirection to a node");
    let port = addr
        .strip_prefix("127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("a redirection to a loopback node, not {addr}"));
    (code, port)
}

#[tokio::test]
async fn failover_moves_the_primary_and_keeps_replicated_data() {
    let set = SentinelSet::start().await;
    assert_eq!(set.sentinel_addrs().len(), 3);
    assert_eq!(set.master_name(), "caracal");
    let old = set.primary_port().await;

    let mut publisher = set.publisher().await;
    let id = publisher.revoke("session_id", "s-1").await;
    set.wait_replicated_by(&mut publisher).await;

    let new = set.failover().await;
    assert_ne!(new, old);
    assert_eq!(set.primary_port().await, new);

    // The entry written before the failover is on the new primary, under its id.
    let ids: Vec<(String, Vec<(String, String)>)> = query_node(
        new,
        redis::cmd("XRANGE")
            .arg(SESSIONS_REVOKE_STREAM)
            .arg("-")
            .arg("+"),
    )
    .await
    .expect("XRANGE on the new primary");
    assert_eq!(
        ids.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
        [id.as_str()]
    );

    // The old primary is a replica now: it refuses writes.
    let refused: RedisResult<String> = query_node(
        old,
        redis::cmd("XADD")
            .arg(SESSIONS_REVOKE_STREAM)
            .arg("*")
            .arg("k")
            .arg("v"),
    )
    .await;
    assert_eq!(
        refused.expect_err("a replica refuses writes").code(),
        Some("READONLY")
    );

    // A new publisher writes to the new primary, and the old one replicates it.
    set.publisher().await.revoke("session_id", "s-2").await;
    set.wait_replicated().await;
    assert_eq!(xlen(old, SESSIONS_REVOKE_STREAM).await.unwrap(), 2);
}

#[tokio::test]
async fn killing_the_primary_promotes_the_replica() {
    let mut set = SentinelSet::start().await;
    let old = set.primary_port().await;
    set.publisher().await.epoch(7).await;
    set.wait_replicated().await;

    let new = set.kill_primary().await;
    assert_ne!(new, old);
    assert_eq!(xlen(new, DELEGATIONS_INVALIDATE_STREAM).await.unwrap(), 1);

    // The old primary comes back empty and is made a replica of the new one.
    set.restart_node(old).await;
    set.wait_replicated().await;
    assert_eq!(xlen(old, DELEGATIONS_INVALIDATE_STREAM).await.unwrap(), 1);
}

#[tokio::test]
async fn caracal_streams_hash_to_different_slots_and_nodes() {
    let cluster = RedisCluster::start().await;
    let mut slots = Vec::new();
    for stream in [
        SESSIONS_REVOKE_STREAM,
        DELEGATIONS_INVALIDATE_STREAM,
        AUDIT_STREAM,
    ] {
        let slot = cluster.slot_of(stream).await;
        let node = cluster.node_for_key(stream).await;
        let index = cluster.ports().iter().position(|p| *p == node).unwrap();
        println!("{stream}: slot {slot}, primary #{index} ({node})");
        slots.push((slot, index));
    }
    // CRC16 of the names, modulo 16384; ranges as `redis-cli --cluster create`
    // splits them: #0 0-5460, #1 5461-10922, #2 10923-16383.
    assert_eq!(slots, [(13713, 2), (3525, 0), (16099, 2)]);
}

#[tokio::test]
async fn a_node_answers_moved_for_a_slot_it_does_not_own() {
    let mut cluster = RedisCluster::start().await;
    let owner = cluster.node_for_key(SESSIONS_REVOKE_STREAM).await;
    cluster
        .publisher_for(SESSIONS_REVOKE_STREAM)
        .await
        .revoke("session_id", "s-1")
        .await;
    assert_eq!(xlen(owner, SESSIONS_REVOKE_STREAM).await.unwrap(), 1);

    let other = cluster.ports().into_iter().find(|p| *p != owner).unwrap();
    let answer = xlen(other, SESSIONS_REVOKE_STREAM).await;
    assert_eq!(redirect(answer), ("MOVED".to_owned(), owner));

    // Moving the slot moves the stream, and the redirection follows.
    cluster.move_slot_of(SESSIONS_REVOKE_STREAM, other).await;
    assert_eq!(cluster.node_for_key(SESSIONS_REVOKE_STREAM).await, other);
    assert_eq!(xlen(other, SESSIONS_REVOKE_STREAM).await.unwrap(), 1);
    let answer = xlen(owner, SESSIONS_REVOKE_STREAM).await;
    assert_eq!(redirect(answer), ("MOVED".to_owned(), other));
}

#[tokio::test]
async fn a_half_done_migration_answers_ask() {
    let mut cluster = RedisCluster::start().await;
    let stream = DELEGATIONS_INVALIDATE_STREAM;
    let from = cluster.node_for_key(stream).await;
    cluster.publisher_for(stream).await.epoch(1).await;
    let to = cluster.ports().into_iter().find(|p| *p != from).unwrap();

    let slot = cluster.start_migration_of(stream, to).await;
    assert_eq!(slot, cluster.slot_of(stream).await);
    // The source still owns the slot, but the stream has left it.
    assert_eq!(cluster.node_for_key(stream).await, from);
    assert_eq!(redirect(xlen(from, stream).await), ("ASK".to_owned(), to));
    // The target serves the slot only to a client that says ASKING.
    assert_eq!(redirect(xlen(to, stream).await), ("MOVED".to_owned(), from));
    let mut conn = node_connection(to).await;
    let (len,): (i64,) = redis::pipe()
        .cmd("ASKING")
        .ignore()
        .cmd("XLEN")
        .arg(stream)
        .query_async(&mut conn)
        .await
        .expect("ASKING then XLEN on the target");
    assert_eq!(len, 1);

    cluster.finish_migration().await;
    assert_eq!(cluster.node_for_key(stream).await, to);
    assert_eq!(xlen(to, stream).await.unwrap(), 1);
    assert_eq!(redirect(xlen(from, stream).await), ("MOVED".to_owned(), to));
}
