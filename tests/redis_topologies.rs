//! The revocation feed and the replay guard on Redis as users run it: over TLS,
//! behind Sentinel (with a forced and a hard failover) and on a three-primary
//! Cluster (with the two streams on different nodes, a moved slot and a migration
//! half done), and Sentinel and Cluster over TLS as well. Every server is a real
//! `redis-server` process on loopback (see `redis_common::modes`); nothing here
//! waits a fixed time.
//!
//! Run with `cargo test --all-features --test redis_topologies`.
#![cfg(feature = "redis")]

mod redis_common;

use std::time::Duration;

use caracal_verifier::redis::{RedisEndpoint, RedisReplayGuard, RedisRevocations};
use caracal_verifier::revocation::{
    DELEGATIONS_INVALIDATE_STREAM, SESSIONS_REVOKE_STREAM, sign_fields,
};
use caracal_verifier::testing::TestIssuer;
use caracal_verifier::{AnchorKind, AuthError, InvalidReason, Requirements, Verifier};
use redis::Value;
use redis_common::modes::{
    RedisCluster, SentinelSet, TlsOptions, TlsRedis, connections_received, node_connection,
    query_node,
};
use redis_common::{Publisher, eventually, init_tracing, stream_key, verifier};

async fn check(v: &Verifier, token: &str) -> Result<(), AuthError> {
    v.verify(token, &Requirements::new()).await.map(drop)
}

fn revoked(answer: &Result<(), AuthError>) -> bool {
    matches!(
        answer,
        Err(AuthError::SessionRevoked {
            anchor: AnchorKind::Sid,
            ..
        })
    )
}

fn stale_epoch(answer: &Result<(), AuthError>) -> bool {
    matches!(answer, Err(AuthError::DelegationStale { .. }))
}

fn unavailable(answer: &Result<(), AuthError>) -> bool {
    matches!(answer, Err(AuthError::RevocationUnavailable))
}

async fn issuer() -> TestIssuer {
    TestIssuer::start("zone-1")
        .await
        .expect("start the test issuer")
}

/// The feed settings of these tests: signed events, short timeouts.
fn feed_on(endpoint: RedisEndpoint) -> RedisRevocations {
    RedisRevocations::on(endpoint)
        .stream_key(stream_key())
        .max_staleness(Duration::from_secs(3))
        .block_timeout(Duration::from_millis(250))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(250))
}

/// Wait until `sid` is revoked through the verifier.
async fn until_revoked(v: &Verifier, sts: &TestIssuer, sid: &str) {
    let token = sts.mandate().sid(sid).sign();
    eventually(&format!("{sid} is revoked"), async || {
        revoked(&check(v, &token).await)
    })
    .await;
}

/// Wait until the server on `plain_port` has accepted `n` more connections than
/// `before`: the feed has tried (and, for a refused handshake, failed) that often.
async fn attempts(plain_port: u16, before: u64, n: u64) {
    eventually("the feed tries to connect", async || {
        connections_received(plain_port).await >= before + n
    })
    .await;
}

/// A feed on `endpoint`, whose server (plain port `plain_port`) presents a
/// certificate the endpoint must not trust, or asks for one it does not have: three
/// handshakes fail (the feed retries with backoff), the verifier is never ready and
/// answers 503, and the replay guard on the same endpoint refuses at once. Returns
/// the verifier for more checks; shut it down when done.
async fn refused(sts: &TestIssuer, endpoint: &RedisEndpoint, plain_port: u16) -> Verifier {
    let before = connections_received(plain_port).await;
    let v = verifier(sts, feed_on(endpoint.clone())).await;
    attempts(plain_port, before, 3).await;
    assert!(!v.is_ready());
    let answer = check(&v, &sts.mandate().sid("sid-1").sign()).await;
    assert!(unavailable(&answer), "{answer:?}");
    assert!(RedisReplayGuard::connect_to(endpoint).await.is_err());
    v
}

/// A verifier whose feed on `endpoint` reads the history [`junk`] and one
/// revocation of `sid-before-start` wrote, in pages of 128 entries (so in bulk),
/// once it is ready: the revocation is enforced and the 1,000 junk entries were
/// dropped.
async fn ready_after_history(sts: &TestIssuer, endpoint: RedisEndpoint, what: &str) -> Verifier {
    let v = verifier(sts, feed_on(endpoint).max_reply_bytes(SMALL_PAGES)).await;
    eventually(what, async || v.is_ready()).await;
    assert!(revoked(
        &check(&v, &sts.mandate().sid("sid-before-start").sign()).await
    ));
    let status = v.revocation_feed().unwrap().status().feed.unwrap();
    assert_eq!(status.dropped, 1000, "{status:?}");
    v
}

/// `127.0.0.1:p1,127.0.0.1:p2,…`: the hosts of a Sentinel or Cluster URL.
fn seeds(ports: &[u16]) -> String {
    let seeds: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    seeds.join(",")
}

/// `n` unsigned entries in the sessions stream, written by Redis itself: history a
/// feed reads in bulk and drops.
async fn junk(publisher: &mut Publisher, n: usize) {
    const JUNK: &str = "for i = 1, tonumber(ARGV[1]) do \
        redis.call('XADD', KEYS[1], '*', 'zone_id', 'zone-1', 'sid', 'junk-' .. i) end";
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(JUNK).arg(1).arg(SESSIONS_REVOKE_STREAM).arg(n);
    publisher.query(&cmd).await;
}

/// One unsigned entry of 2 MiB in the sessions stream, as a writer without the key
/// could add.
async fn huge_entry(publisher: &mut Publisher) {
    let huge = "x".repeat(2 * 1024 * 1024);
    publisher
        .raw(
            SESSIONS_REVOKE_STREAM,
            "*",
            &[("zone_id", "zone-1"), ("sid", &huge)],
        )
        .await;
}

/// Catch-up pages of 128 entries (the smallest): a few hundred retained entries
/// make the feed read in bulk.
const SMALL_PAGES: usize = 128 * 1024;

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refuses_a_server_whose_certificate_another_ca_signed() {
    init_tracing();
    let server = TlsRedis::start(TlsOptions::default()).await;
    let sts = issuer().await;
    let endpoint = RedisEndpoint::new(server.tls_url()).tls_ca_file(server.other_ca_pem());
    // The verifier never trusted the set meanwhile.
    let v = refused(&sts, &endpoint, server.plain_port()).await;
    assert!(
        !v.revocation_feed()
            .unwrap()
            .status()
            .feed
            .unwrap()
            .connected
    );
    // The system roots do not vouch for a test CA either.
    let system = RedisEndpoint::new(server.tls_url());
    assert!(RedisReplayGuard::connect_to(&system).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_presents_the_client_certificate_a_server_requires() {
    init_tracing();
    let server = TlsRedis::start(TlsOptions {
        require_client_cert: true,
    })
    .await;
    let sts = issuer().await;
    let trusted = || RedisEndpoint::new(server.tls_url()).tls_ca_file(server.ca_pem());

    // Hostile first: no certificate, then one signed by another CA.
    for endpoint in [
        trusted(),
        trusted().tls_client_identity_files(
            server.other_client_cert_pem(),
            server.other_client_key_pem(),
        ),
    ] {
        refused(&sts, &endpoint, server.plain_port())
            .await
            .shutdown()
            .await;
    }

    let endpoint =
        trusted().tls_client_identity_files(server.client_cert_pem(), server.client_key_pem());
    let mut publisher = server.publisher().await;
    publisher.revoke("sid", "sid-before").await;
    let v = verifier(&sts, feed_on(endpoint.clone())).await;
    eventually("the feed is ready over TLS", async || v.is_ready()).await;
    assert!(revoked(
        &check(&v, &sts.mandate().sid("sid-before").sign()).await
    ));
    publisher.revoke("sid", "sid-after").await;
    until_revoked(&v, &sts, "sid-after").await;
    check(&v, &sts.mandate().sid("sid-other").sign())
        .await
        .expect("not revoked");

    // The replay guard over the same endpoint keeps a mandate single-use.
    let guard = RedisReplayGuard::connect_to(&endpoint)
        .await
        .expect("replay guard over TLS");
    let single = Verifier::builder()
        .issuer(sts.issuer_url())
        .audience("resource://api")
        .zone("zone-1")
        .replay_guard(guard)
        .build()
        .unwrap();
    single.warm_up().await.unwrap();
    let token = sts.mandate().jti("jti-tls").sign();
    let once = Requirements::new().single_use();
    single.verify(&token, &once).await.expect("first use");
    let again = single.verify(&token, &once).await.map(drop);
    assert!(
        matches!(
            again,
            Err(AuthError::InvalidToken {
                reason: InvalidReason::Replayed,
                ..
            })
        ),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_keeps_the_reply_size_bound() {
    init_tracing();
    let server = TlsRedis::start(TlsOptions::default()).await;
    let sts = issuer().await;
    let endpoint = RedisEndpoint::new(server.tls_url()).tls_ca_file(server.ca_pem());
    let v = verifier(&sts, feed_on(endpoint).max_reply_bytes(64 * 1024)).await;
    eventually("the feed is ready over TLS", async || v.is_ready()).await;
    let mut publisher = server.publisher().await;
    // A writer without the key adds a 2 MiB entry, then a real event follows.
    huge_entry(&mut publisher).await;
    publisher.revoke("sid", "sid-after-huge").await;
    until_revoked(&v, &sts, "sid-after-huge").await;
    let status = v.revocation_feed().unwrap().status().feed.unwrap();
    assert!(status.dropped >= 1, "{status:?}");
}

/// A retained history of many pages, which the feed reads on its second (bulk)
/// connection, over TLS, with a 2 MiB unsigned entry in the middle. The bulk read
/// passes the reply bound there; the feed reconnects and reads through the
/// screening script. Every revocation before and after the junk is enforced once the
/// verifier is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_bulk_catch_up_keeps_the_reply_size_bound() {
    init_tracing();
    let server = TlsRedis::start(TlsOptions::default()).await;
    let sts = issuer().await;
    let mut publisher = server.publisher().await;
    junk(&mut publisher, 1500).await;
    publisher.revoke("sid", "sid-early").await;
    junk(&mut publisher, 1500).await;
    huge_entry(&mut publisher).await;
    junk(&mut publisher, 1500).await;
    publisher.revoke("sid", "sid-late").await;

    let before = connections_received(server.plain_port()).await;
    let endpoint = RedisEndpoint::new(server.tls_url()).tls_ca_file(server.ca_pem());
    // 256 KiB replies: catch-up pages of 256 entries.
    let v = verifier(&sts, feed_on(endpoint).max_reply_bytes(256 * 1024)).await;
    eventually("the feed is ready over TLS", async || v.is_ready()).await;
    for sid in ["sid-early", "sid-late"] {
        let answer = check(&v, &sts.mandate().sid(sid).sign()).await;
        assert!(revoked(&answer), "{sid}: {answer:?}");
    }
    check(&v, &sts.mandate().sid("sid-other").sign())
        .await
        .expect("not revoked");
    let status = v.revocation_feed().unwrap().status().feed.unwrap();
    assert_eq!(status.dropped, 4_501, "{status:?}");
    assert_eq!(status.applied, 2, "{status:?}");
    // The first connection, the bulk one that met the oversized entry, the one
    // that read through the script, and this query's own.
    let after = connections_received(server.plain_port()).await;
    assert!(after >= before + 4, "{before} -> {after} connections");
}

// ---------------------------------------------------------------------------
// Sentinel
// ---------------------------------------------------------------------------

/// `scheme://` the sentinels on `ports` `/` the primary's service name.
fn sentinel_url(scheme: &str, ports: &[u16], set: &SentinelSet) -> String {
    format!("{scheme}://{}/{}", seeds(ports), set.master_name())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_keeps_every_revocation() {
    init_tracing();
    let set = SentinelSet::start().await;
    let sts = issuer().await;
    let mut publisher = set.publisher().await;
    // History of many pages: read in bulk at start and again after the failover.
    junk(&mut publisher, 1000).await;
    publisher.revoke("sid", "sid-before-start").await;
    set.wait_replicated().await;

    let endpoint = RedisEndpoint::new(sentinel_url("redis+sentinel", &set.sentinel_ports(), &set));
    let v = ready_after_history(&sts, endpoint.clone(), "the feed is ready through Sentinel").await;
    publisher.revoke("sid", "sid-before-failover").await;
    until_revoked(&v, &sts, "sid-before-failover").await;
    set.wait_replicated().await;
    let resets = v.revocation_feed().unwrap().status().feed.unwrap().resets;

    let old = set.primary_port().await;
    let new = set.failover().await;
    assert_ne!(old, new);
    let mut publisher = set.publisher().await;
    publisher.revoke("sid", "sid-after-failover").await;
    publisher.epoch(9).await;
    until_revoked(&v, &sts, "sid-after-failover").await;
    eventually("the epoch is enforced", async || {
        stale_epoch(&check(&v, &sts.mandate().epoch(8).sign()).await)
    })
    .await;
    for sid in ["sid-before-start", "sid-before-failover"] {
        assert!(revoked(&check(&v, &sts.mandate().sid(sid).sign()).await));
    }
    // The new primary is another server: the feed re-read the retained history.
    let status = v.revocation_feed().unwrap().status().feed.unwrap();
    assert!(status.resets > resets, "{status:?}");
    eventually("the feed is ready again", async || v.is_ready()).await;

    // The replay guard follows the failover too.
    let guard = RedisReplayGuard::connect_to(&endpoint)
        .await
        .expect("replay guard through Sentinel");
    assert!(first_use(&guard, "jti-s").await);
    assert!(!first_use(&guard, "jti-s").await);
}

/// With `min_replicas(1)` a use counts only once the replica acknowledged it, so a
/// failover cannot forget it. Hostile first: a guard asking for more replicas than
/// exist never counts a use, and with the replica stopped a first use fails closed;
/// either way the use stays recorded, so the same mandate is then a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_guard_with_min_replicas_counts_a_use_only_once_replicated() {
    init_tracing();
    let mut set = SentinelSet::start().await;
    let endpoint = RedisEndpoint::new(sentinel_url("redis+sentinel", &set.sentinel_ports(), &set));
    let connect = async |n| {
        RedisReplayGuard::connect_to(&endpoint)
            .await
            .expect("replay guard through Sentinel")
            .min_replicas(n)
            .timeout(Duration::from_millis(400))
    };

    let too_many = connect(2).await;
    assert!(unanswered(&too_many, "jti-on-one-replica").await);
    assert!(
        !first_use(&too_many, "jti-on-one-replica").await,
        "replayed"
    );

    let guard = connect(1).await;
    let primary = set.primary_port().await;
    let replica = *set
        .node_ports()
        .iter()
        .find(|p| **p != primary)
        .expect("a replica");
    set.pause_node(replica);
    assert!(unanswered(&guard, "jti-while-paused").await);
    assert!(!first_use(&guard, "jti-while-paused").await, "replayed");
    set.resume_node(replica);
    set.wait_replicated().await;
    assert!(first_use(&guard, "jti-replicated").await);
    assert!(!first_use(&guard, "jti-replicated").await, "replayed");
    // The replica holds the use: a failover now keeps it. The guard fails closed
    // until it finds the new primary; its first answer must be "used".
    let new = set.failover().await;
    assert_eq!(new, replica);
    let mut answer = None;
    eventually("the guard answers from the new primary", async || {
        use caracal_verifier::replay::ReplayGuard;
        answer = guard
            .first_use("https://sts.example.com", "jti-replicated", u64::MAX / 4000)
            .await
            .ok();
        answer.is_some()
    })
    .await;
    assert_eq!(answer, Some(false), "replayed after the failover");
}

/// Sentinel over TLS (`rediss+sentinel://`): the feed asks the sentinels on their
/// TLS ports, which name the primary by its TLS port, and follows a failover there.
/// Hostile first: a feed that trusts another CA refuses the sentinels and never
/// becomes ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_over_tls_finds_the_primary_and_follows_a_failover() {
    init_tracing();
    let set = SentinelSet::start_tls().await;
    let sts = issuer().await;
    let tls_url = |ports: &[u16]| sentinel_url("rediss+sentinel", ports, &set);

    let sentinel = set.sentinel_ports()[0];
    let untrusted =
        RedisEndpoint::new(tls_url(&set.sentinel_tls_ports()[..1])).tls_ca_file(set.other_ca_pem());
    refused(&sts, &untrusted, sentinel).await.shutdown().await;

    // The sentinels name the primary by a port that speaks only TLS.
    let named: Vec<String> = query_node(
        sentinel,
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(set.master_name()),
    )
    .await
    .expect("SENTINEL get-master-addr-by-name");
    let named: u16 = named[1].parse().expect("a port");
    assert!(
        !set.node_ports().contains(&named),
        "{named} is a plain port"
    );

    // History of many pages: read in bulk over TLS, at start and after the failover.
    let mut publisher = set.publisher().await;
    junk(&mut publisher, 1000).await;
    publisher.revoke("sid", "sid-before-start").await;
    set.wait_replicated().await;
    let endpoint = RedisEndpoint::new(tls_url(&set.sentinel_tls_ports())).tls_ca_file(set.ca_pem());
    let what = "the feed is ready through Sentinel over TLS";
    let v = ready_after_history(&sts, endpoint.clone(), what).await;
    publisher.revoke("sid", "sid-before-failover").await;
    until_revoked(&v, &sts, "sid-before-failover").await;
    set.wait_replicated().await;

    let old = set.primary_port().await;
    let new = set.failover().await;
    assert_ne!(old, new);
    set.publisher()
        .await
        .revoke("sid", "sid-after-failover")
        .await;
    until_revoked(&v, &sts, "sid-after-failover").await;
    eventually("the feed is ready again", async || v.is_ready()).await;
    for sid in ["sid-before-start", "sid-before-failover"] {
        assert!(revoked(&check(&v, &sts.mandate().sid(sid).sign()).await));
    }

    let guard = RedisReplayGuard::connect_to(&endpoint)
        .await
        .expect("replay guard through Sentinel over TLS");
    assert!(first_use(&guard, "jti-tls").await);
    assert!(!first_use(&guard, "jti-tls").await);
}

/// Record `jti` through `guard` and say whether it was the first use.
async fn first_use(guard: &RedisReplayGuard, jti: &str) -> bool {
    use caracal_verifier::replay::ReplayGuard;
    guard
        .first_use("https://sts.example.com", jti, u64::MAX / 4000)
        .await
        .expect("the replay guard answers")
}

/// The new primary lacks an entry the feed read from the old one (replication is
/// asynchronous), and then takes an entry numbered *below* the feed's read
/// position. The run id tells the feed it is another server: it re-reads the
/// retained history, so that entry is enforced, and the lost one stays enforced
/// from memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_hard_failover_to_a_replica_that_missed_entries() {
    init_tracing();
    let mut set = SentinelSet::start().await;
    let sts = issuer().await;
    let mut publisher = set.publisher().await;
    let first = publisher.revoke("sid", "sid-replicated").await;
    set.wait_replicated().await;
    let v = verifier(
        &sts,
        feed_on(RedisEndpoint::new(sentinel_url(
            "redis+sentinel",
            &set.sentinel_ports(),
            &set,
        ))),
    )
    .await;
    eventually("the feed is ready through Sentinel", async || v.is_ready()).await;

    // The replica stops; the primary takes one more event, which the feed reads.
    let primary = set.primary_port().await;
    let replica = *set
        .node_ports()
        .iter()
        .find(|p| **p != primary)
        .expect("a replica");
    set.pause_node(replica);
    // Cut the replication link too, or the event would wait in the stopped
    // replica's socket buffer and reach it on resume.
    let killed: i64 = query_node(
        primary,
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("replica"),
    )
    .await
    .expect("CLIENT KILL TYPE replica");
    assert_eq!(killed, 1);
    let lost = publisher.revoke("sid", "sid-lost-in-failover").await;
    until_revoked(&v, &sts, "sid-lost-in-failover").await;
    // The primary dies before the replica saw that event; the replica takes over.
    set.kill_node(primary);
    set.resume_node(replica);
    let new = set.wait_new_primary(primary).await;
    assert_eq!(new, replica);

    // An event numbered between the two the feed read: below its read position.
    let ms = |id: &str| id.split('-').next().unwrap().parse::<u64>().unwrap();
    let between = format!("{}-0", (ms(&first) + ms(&lost)) / 2);
    assert!(ms(&lost) >= ms(&first) + 2, "{first} {lost}");
    let mut publisher = set.publisher().await;
    let fields = [("zone_id", "zone-1"), ("sid", "sid-below-position")];
    let sig = sign_fields(&stream_key(), SESSIONS_REVOKE_STREAM, &fields);
    let written = publisher
        .raw(
            SESSIONS_REVOKE_STREAM,
            &between,
            &[fields[0], fields[1], ("_sig", &sig)],
        )
        .await;
    assert_eq!(written, between);
    until_revoked(&v, &sts, "sid-below-position").await;
    for sid in ["sid-replicated", "sid-lost-in-failover"] {
        assert!(revoked(&check(&v, &sts.mandate().sid(sid).sign()).await));
    }
}

// ---------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------

fn cluster_url(cluster: &RedisCluster) -> String {
    format!("redis+cluster://{}", seeds(&cluster.ports()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_reads_each_stream_from_its_own_node_and_follows_moves() {
    init_tracing();
    let mut cluster = RedisCluster::start().await;
    let sts = issuer().await;
    let revoke_node = cluster.node_for_key(SESSIONS_REVOKE_STREAM).await;
    let epoch_node = cluster.node_for_key(DELEGATIONS_INVALIDATE_STREAM).await;
    assert_ne!(revoke_node, epoch_node, "the streams share a node");
    let mut publisher = cluster.publisher_for(SESSIONS_REVOKE_STREAM).await;
    // History of many pages: read in bulk from the owner, and again from each
    // node the slot moves to.
    junk(&mut publisher, 1000).await;
    publisher.revoke("sid", "sid-before-start").await;

    let endpoint = RedisEndpoint::new(cluster_url(&cluster));
    let v = ready_after_history(&sts, endpoint, "the feed is ready on the Cluster").await;
    cluster
        .publisher_for(SESSIONS_REVOKE_STREAM)
        .await
        .revoke("sid", "sid-live")
        .await;
    cluster
        .publisher_for(DELEGATIONS_INVALIDATE_STREAM)
        .await
        .epoch(5)
        .await;
    until_revoked(&v, &sts, "sid-live").await;
    eventually("the epoch is enforced", async || {
        stale_epoch(&check(&v, &sts.mandate().epoch(4).sign()).await)
    })
    .await;

    // The revoke stream's slot moves under the feed (MOVED).
    let third = *cluster
        .ports()
        .iter()
        .find(|p| **p != revoke_node && **p != epoch_node)
        .expect("a third primary");
    cluster.move_slot_of(SESSIONS_REVOKE_STREAM, third).await;
    cluster
        .publisher_for(SESSIONS_REVOKE_STREAM)
        .await
        .revoke("sid", "sid-after-move")
        .await;
    until_revoked(&v, &sts, "sid-after-move").await;

    // Half-way through the next migration the key sits on the target, which serves
    // it only after ASKING; the old owner answers -ASK.
    cluster
        .start_migration_of(SESSIONS_REVOKE_STREAM, revoke_node)
        .await;
    xadd_after_asking(
        revoke_node,
        SESSIONS_REVOKE_STREAM,
        &[("zone_id", "zone-1"), ("sid", "sid-during-migration")],
    )
    .await;
    until_revoked(&v, &sts, "sid-during-migration").await;
    cluster.finish_migration().await;
    cluster
        .publisher_for(SESSIONS_REVOKE_STREAM)
        .await
        .revoke("sid", "sid-after-migration")
        .await;
    until_revoked(&v, &sts, "sid-after-migration").await;
    eventually("the feed is ready again", async || v.is_ready()).await;
    for sid in ["sid-before-start", "sid-live", "sid-after-move"] {
        assert!(revoked(&check(&v, &sts.mandate().sid(sid).sign()).await));
    }
}

/// A signed `XADD` to the node on `port` after `ASKING`: how a client writes a key
/// of a slot that node is importing.
async fn xadd_after_asking(port: u16, stream: &str, fields: &[(&str, &str)]) {
    let sig = sign_fields(&stream_key(), stream, fields);
    let mut pipe = redis::pipe();
    pipe.cmd("ASKING").ignore();
    let xadd = pipe.cmd("XADD").arg(stream).arg("*");
    for (name, value) in fields {
        xadd.arg(*name).arg(*value);
    }
    xadd.arg("_sig").arg(&sig);
    let _: Vec<Value> = pipe
        .query_async(&mut node_connection(port).await)
        .await
        .expect("XADD after ASKING");
}

/// A slot half-way through a migration while its stream does not exist yet (no
/// epoch was ever invalidated): the old owner answers `-ASK` and the new owner,
/// after `ASKING`, that there is no such key. That is an empty stream, not a
/// refusal, so the feed is ready, and reads the stream once it appears on the new
/// owner and after the migration ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_reads_a_stream_not_yet_written_through_a_migration() {
    init_tracing();
    let mut cluster = RedisCluster::start().await;
    let sts = issuer().await;
    let owner = cluster.node_for_key(DELEGATIONS_INVALIDATE_STREAM).await;
    let target = *cluster
        .ports()
        .iter()
        .find(|p| **p != owner)
        .expect("another primary");
    cluster
        .start_migration_of(DELEGATIONS_INVALIDATE_STREAM, target)
        .await;

    let v = verifier(&sts, feed_on(RedisEndpoint::new(cluster_url(&cluster)))).await;
    eventually("the feed is ready while the slot migrates", async || {
        v.is_ready()
    })
    .await;
    cluster
        .publisher_for(SESSIONS_REVOKE_STREAM)
        .await
        .revoke("sid", "sid-during-migration")
        .await;
    until_revoked(&v, &sts, "sid-during-migration").await;
    let epoch_5 = [
        ("zone_id", "zone-1"),
        ("epoch", "5"),
        ("event", "edge_revoked"),
    ];
    xadd_after_asking(target, DELEGATIONS_INVALIDATE_STREAM, &epoch_5).await;
    eventually(
        "the epoch written on the new owner is enforced",
        async || stale_epoch(&check(&v, &sts.mandate().epoch(4).sign()).await),
    )
    .await;
    assert!(v.is_ready(), "{:?}", v.revocation_feed().unwrap().status());

    cluster.finish_migration().await;
    cluster
        .publisher_for(DELEGATIONS_INVALIDATE_STREAM)
        .await
        .epoch(7)
        .await;
    eventually(
        "the epoch written after the migration is enforced",
        async || stale_epoch(&check(&v, &sts.mandate().epoch(6).sign()).await),
    )
    .await;
    eventually("the feed is ready after the migration", async || {
        v.is_ready()
    })
    .await;
}

/// The Cluster over TLS (`rediss+cluster://`, seeds on the TLS ports, a private
/// CA). The nodes name their TLS ports to a client on TLS, in `CLUSTER SLOTS`, `-ASK`
/// and `-MOVED`, and the feed and the replay guard verify each node's certificate
/// there. A feed that trusts another CA never connects and answers 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_over_tls_discovers_and_follows_moves_on_tls_ports() {
    init_tracing();
    let mut cluster = RedisCluster::start_tls().await;
    let sts = issuer().await;
    let tls_url = |ports: &[u16]| format!("rediss+cluster://{}", seeds(ports));

    // Hostile first: a node whose certificate another CA signed.
    let first = cluster.ports()[0];
    let untrusted = RedisEndpoint::new(tls_url(&[cluster.tls_port_of(first)]))
        .tls_ca_file(cluster.other_ca_pem());
    refused(&sts, &untrusted, first).await.shutdown().await;

    let revoke_node = cluster.node_for_key(SESSIONS_REVOKE_STREAM).await;
    let epoch_node = cluster.node_for_key(DELEGATIONS_INVALIDATE_STREAM).await;
    assert_ne!(revoke_node, epoch_node, "the streams share a node");
    // History of many pages: read in bulk over TLS from the stream's node.
    let mut publisher = cluster.publisher_for(SESSIONS_REVOKE_STREAM).await;
    junk(&mut publisher, 1000).await;
    publisher.revoke("sid", "sid-before-start").await;
    let endpoint = RedisEndpoint::new(tls_url(&cluster.tls_ports())).tls_ca_file(cluster.ca_pem());
    let v = ready_after_history(
        &sts,
        endpoint.clone(),
        "the feed is ready on the TLS Cluster",
    )
    .await;
    cluster
        .publisher_for(SESSIONS_REVOKE_STREAM)
        .await
        .revoke("sid", "sid-live")
        .await;
    until_revoked(&v, &sts, "sid-live").await;

    // The epoch stream's slot (no epoch written yet, so no key to migrate) starts
    // moving to the third node while the feed reads it. The old owner answers
    // -ASK naming the target's TLS port; the feed follows it with ASKING there.
    let third = *cluster
        .ports()
        .iter()
        .find(|p| **p != revoke_node && **p != epoch_node)
        .expect("a third primary");
    cluster
        .start_migration_of(DELEGATIONS_INVALIDATE_STREAM, third)
        .await;
    let epoch_5 = [
        ("zone_id", "zone-1"),
        ("epoch", "5"),
        ("event", "edge_revoked"),
    ];
    xadd_after_asking(third, DELEGATIONS_INVALIDATE_STREAM, &epoch_5).await;
    eventually("the epoch on the importing node is enforced", async || {
        stale_epoch(&check(&v, &sts.mandate().epoch(4).sign()).await)
    })
    .await;
    eventually("the feed is ready during the migration", async || {
        v.is_ready()
    })
    .await;

    // The migration ends: -MOVED names the new owner's TLS port.
    cluster.finish_migration().await;
    cluster
        .publisher_for(DELEGATIONS_INVALIDATE_STREAM)
        .await
        .epoch(7)
        .await;
    eventually("the epoch on the slot's new node is enforced", async || {
        stale_epoch(&check(&v, &sts.mandate().epoch(6).sign()).await)
    })
    .await;
    eventually("the feed is ready after the move", async || v.is_ready()).await;
    assert!(revoked(
        &check(&v, &sts.mandate().sid("sid-live").sign()).await
    ));

    // The replay guard, on the same endpoint, reaches every node over TLS.
    let guard = RedisReplayGuard::connect_to(&endpoint)
        .await
        .expect("replay guard on the TLS Cluster");
    let mut nodes = std::collections::BTreeSet::new();
    for i in 0..24 {
        let jti = format!("jti-tls-{i}");
        nodes.insert(
            cluster
                .node_for_key(&guard.key_for("https://sts.example.com", &jti))
                .await,
        );
        assert!(first_use(&guard, &jti).await, "{jti}");
        assert!(!first_use(&guard, &jti).await, "{jti} replayed");
    }
    assert_eq!(nodes.len(), 3, "the keys span every primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_replay_guard_routes_each_key_to_its_slot() {
    init_tracing();
    let mut cluster = RedisCluster::start().await;
    let endpoint = RedisEndpoint::new(cluster_url(&cluster));
    let guard = RedisReplayGuard::connect_to(&endpoint)
        .await
        .expect("replay guard on the Cluster");
    // Enough ids that every primary holds some.
    let jtis: Vec<String> = (0..24).map(|i| format!("jti-{i}")).collect();
    let mut nodes = std::collections::BTreeSet::new();
    for jti in &jtis {
        let key = guard.key_for("https://sts.example.com", jti);
        nodes.insert(cluster.node_for_key(&key).await);
        assert!(first_use(&guard, jti).await, "{jti}");
        assert!(!first_use(&guard, jti).await, "{jti} replayed");
    }
    assert_eq!(nodes.len(), 3, "the keys span every primary");

    // A key's slot moves: the guard follows MOVED and still sees the first use.
    let key = guard.key_for("https://sts.example.com", &jtis[0]);
    let from = cluster.node_for_key(&key).await;
    let to = *cluster.ports().iter().find(|p| **p != from).unwrap();
    cluster.move_slot_of(&key, to).await;
    assert!(
        !first_use(&guard, &jtis[0]).await,
        "replayed after the move"
    );
}

/// 64 token ids, by the primary their replay keys live on; each primary holds at
/// least four. The first id of each is used once, so the guard holds a connection
/// to every primary.
async fn jtis_used_on_every_node(
    cluster: &RedisCluster,
    guard: &RedisReplayGuard,
) -> std::collections::BTreeMap<u16, Vec<String>> {
    let mut by_node = std::collections::BTreeMap::<u16, Vec<String>>::new();
    for i in 0..64 {
        let jti = format!("jti-{i}");
        let node = cluster
            .node_for_key(&guard.key_for("https://sts.example.com", &jti))
            .await;
        by_node.entry(node).or_default().push(jti);
    }
    assert_eq!(by_node.len(), 3, "the keys span every primary");
    assert!(by_node.values().all(|jtis| jtis.len() >= 4), "{by_node:?}");
    for jtis in by_node.values() {
        assert!(first_use(guard, &jtis[0]).await, "{}", jtis[0]);
    }
    by_node
}

/// Whether the guard failed closed for `jti` (an error, which the verifier turns
/// into 503).
async fn unanswered(guard: &RedisReplayGuard, jti: &str) -> bool {
    use caracal_verifier::replay::ReplayGuard;
    guard
        .first_use("https://sts.example.com", jti, u64::MAX / 4000)
        .await
        .is_err()
}

/// A primary that stops answering (SIGSTOP: its sockets stay open, so commands
/// and connections hang instead of being refused) holds back only its own keys.
/// Each check on it fails closed at the deadline; the other primaries keep
/// answering first uses and refusing replays throughout, though the hung node is
/// still in the slot map and among the seeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_replay_guard_fails_closed_only_for_a_hung_nodes_keys() {
    init_tracing();
    let mut cluster = RedisCluster::start().await;
    let ports = cluster.ports();
    let hung = ports[0];
    // The hung node is a seed, and not the first: a discovery that starts at the
    // seed after the one asked last meets it.
    let order = [ports[1], hung, ports[2]];
    let endpoint = RedisEndpoint::new(format!("redis+cluster://{}", seeds(&order)));
    let guard = RedisReplayGuard::connect_to(&endpoint)
        .await
        .expect("replay guard on the Cluster")
        .timeout(Duration::from_millis(300));
    let by_node = jtis_used_on_every_node(&cluster, &guard).await;

    cluster.pause_node(hung);
    // The hung command, a connection or discovery that hangs, then a fast refusal.
    for round in 1..4 {
        assert!(
            unanswered(&guard, &by_node[&hung][round]).await,
            "round {round}: use on a hung node"
        );
        for (node, jtis) in by_node.iter().filter(|(n, _)| **n != hung) {
            let jti = &jtis[round];
            assert!(first_use(&guard, jti).await, "round {round}, {node}: {jti}");
            assert!(
                !first_use(&guard, jti).await,
                "round {round}, {node}: {jti} replayed"
            );
        }
    }
    cluster.resume_node(hung);
    eventually("the resumed node answers again", async || {
        !unanswered(&guard, &by_node[&hung][0]).await
    })
    .await;
    assert!(
        !first_use(&guard, &by_node[&hung][0]).await,
        "a use recorded before the pause is replayed"
    );
}

/// A dead primary holds back only the single-use mandates whose keys its slots
/// hold. The guard fails closed for those, again after its reconnect fails, and
/// keeps answering for every other key meanwhile, replays included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_replay_guard_fails_closed_only_for_a_dead_nodes_keys() {
    init_tracing();
    let mut cluster = RedisCluster::start().await;
    let endpoint = RedisEndpoint::new(cluster_url(&cluster));
    let guard = RedisReplayGuard::connect_to(&endpoint)
        .await
        .expect("replay guard on the Cluster");
    let by_node = jtis_used_on_every_node(&cluster, &guard).await;

    let dead = cluster.ports()[0];
    cluster.kill_node(dead);
    // The broken connection, then a failed reconnect: both fail closed.
    assert!(
        unanswered(&guard, &by_node[&dead][1]).await,
        "use on a dead node"
    );
    assert!(
        unanswered(&guard, &by_node[&dead][2]).await,
        "use on a dead node"
    );
    for (node, jtis) in by_node.iter().filter(|(n, _)| **n != dead) {
        assert!(
            !first_use(&guard, &jtis[0]).await,
            "{node}: replay accepted"
        );
        for jti in &jtis[1..4] {
            assert!(first_use(&guard, jti).await, "{node}: {jti}");
            assert!(!first_use(&guard, jti).await, "{node}: {jti} replayed");
        }
    }
    assert!(
        unanswered(&guard, &by_node[&dead][0]).await,
        "replay on a dead node"
    );
}

// ---------------------------------------------------------------------------
// The audit emitter on the same endpoints
// ---------------------------------------------------------------------------

#[cfg(feature = "audit")]
mod audit {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use caracal_verifier::audit::{AuditEmitter, AuditKey};
    use caracal_verifier::layer::MandateLayer;
    use http::{Request, StatusCode};
    use tower::ServiceExt;

    const AUDIT_STREAM: &str = "caracal.audit.events";

    /// Send one allowed and one denied request through a layer whose verifier
    /// audits to `endpoint`, and wait until both events are sent.
    async fn audit_two_requests(endpoint: RedisEndpoint) {
        let sts = issuer().await;
        let emitter = AuditEmitter::on(endpoint)
            .key(AuditKey::from_hex(&"5a".repeat(32)).unwrap())
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200));
        let stats = emitter.stats();
        let v = redis_common::audited_verifier(&sts, emitter).await;
        let app = Router::new()
            .route("/ok", get(|| async { "ok" }))
            .layer(MandateLayer::new(v.clone(), Requirements::new()));
        let token = sts.mandate().sign();
        let allowed = Request::get("/ok")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            app.clone().oneshot(allowed).await.unwrap().status(),
            StatusCode::OK
        );
        let denied = Request::get("/ok").body(Body::empty()).unwrap();
        assert_eq!(
            app.oneshot(denied).await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
        eventually("both audit events are sent", async || {
            stats.snapshot().sent >= 2
        })
        .await;
        v.shutdown().await;
    }

    async fn stream_len(port: u16) -> u64 {
        query_node(port, redis::cmd("XLEN").arg(AUDIT_STREAM))
            .await
            .expect("XLEN")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn audit_events_go_over_mutual_tls() {
        init_tracing();
        let server = TlsRedis::start(TlsOptions {
            require_client_cert: true,
        })
        .await;
        let endpoint = RedisEndpoint::new(server.tls_url())
            .tls_ca_file(server.ca_pem())
            .tls_client_identity_files(server.client_cert_pem(), server.client_key_pem());
        audit_two_requests(endpoint).await;
        assert_eq!(stream_len(server.plain_port()).await, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn audit_events_reach_the_cluster_node_that_owns_the_stream() {
        init_tracing();
        let cluster = RedisCluster::start().await;
        let owner = cluster.node_for_key(AUDIT_STREAM).await;
        // Seeded with the other nodes only: the emitter must find the owner.
        let seeds: Vec<String> = cluster
            .ports()
            .into_iter()
            .filter(|p| *p != owner)
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        audit_two_requests(RedisEndpoint::new(format!(
            "redis+cluster://{}",
            seeds.join(",")
        )))
        .await;
        assert_eq!(stream_len(owner).await, 2);
    }
}
