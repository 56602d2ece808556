//! The Redis revocation feed and replay guard against a real `redis-server`.
//!
//! Each test starts its own server on an ephemeral loopback port (see
//! `redis_common`). When `redis-server` is not installed the tests fail with a
//! message saying how to install it; they are never skipped.
//!
//! Run with `cargo test --all-features --test redis`.
#![cfg(feature = "redis")]

mod redis_common;

use std::time::Duration;

use caracal_verifier::redis::{RedisReplayGuard, RedisRevocations};
use caracal_verifier::revocation::{
    DELEGATIONS_INVALIDATE_STREAM, SESSIONS_REVOKE_STREAM, StreamKey, sign_fields,
};
use caracal_verifier::testing::{ChainHop, TestIssuer};
use caracal_verifier::{AnchorKind, AuthError, InvalidReason, ManualClock, Requirements, Verifier};
use redis_common::{
    RedisServer, eventually, feed, now_ms, ready_verifier, stream_key, verifier, verifier_with,
};
use serde_json::json;

async fn check(v: &Verifier, token: &str) -> Result<(), AuthError> {
    v.verify(token, &Requirements::new()).await.map(drop)
}

async fn check_single_use(v: &Verifier, token: &str) -> Result<(), AuthError> {
    v.verify(token, &Requirements::new().single_use())
        .await
        .map(drop)
}

/// Whether `answer` is a denial as revoked by the `anchor` kind.
fn revoked(answer: &Result<(), AuthError>, anchor: AnchorKind) -> bool {
    matches!(answer, Err(AuthError::SessionRevoked { anchor: a, .. }) if *a == anchor)
}

/// Whether `answer` is a denial for a delegation epoch `token` below `current`.
fn stale(answer: &Result<(), AuthError>, token: u64, current: u64) -> bool {
    matches!(
        answer,
        Err(AuthError::DelegationStale { token: t, current: c, .. }) if (*t, *c) == (token, current)
    )
}

/// Whether `answer` is a denial of a replayed single-use mandate.
fn replayed(answer: &Result<(), AuthError>) -> bool {
    matches!(
        answer,
        Err(AuthError::InvalidToken {
            reason: InvalidReason::Replayed,
            ..
        })
    )
}

async fn issuer() -> TestIssuer {
    TestIssuer::start("zone-1")
        .await
        .expect("start the test issuer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_events_revoke_each_anchor_type() {
    let server = RedisServer::start().await;
    let sts = issuer().await;
    let v = ready_verifier(&sts, feed(&server)).await;
    let mut publisher = server.publisher().await;

    // An upstream hop with its own session and edge, then this agent's hop.
    let chain = vec![
        ChainHop {
            application_id: "app-up".into(),
            agent_session_id: Some("session-up".into()),
            delegation_edge_id: Some("edge-up".into()),
        },
        ChainHop {
            application_id: "app-1".into(),
            agent_session_id: Some("agent-z".into()),
            delegation_edge_id: None,
        },
    ];
    let cases: Vec<(&str, &str, String, AnchorKind)> = vec![
        (
            "sid",
            "sid-a",
            sts.mandate().sid("sid-a").sign(),
            AnchorKind::Sid,
        ),
        // `session_id` names the authority record, the mandate's `sid`.
        (
            "session_id",
            "sid-b",
            sts.mandate().sid("sid-b").sign(),
            AnchorKind::Sid,
        ),
        (
            "root_sid",
            "root-c",
            sts.mandate().root_sid("root-c").sign(),
            AnchorKind::RootSid,
        ),
        (
            "agent_session_id",
            "agent-d",
            sts.mandate().agent_session("agent-d").sign(),
            AnchorKind::AgentSession,
        ),
        (
            "delegation_edge_id",
            "edge-solo",
            sts.mandate()
                .claim("delegation_edge_id", json!("edge-solo"))
                .sign(),
            AnchorKind::DelegationEdge,
        ),
        // The upstream hop's session of a hand-built chain.
        (
            "agent_session_id",
            "session-up",
            sts.mandate()
                .agent_session("agent-z")
                .chain(chain)
                .claim("delegation_edge_id", json!("edge-up"))
                .sign(),
            AnchorKind::ChainSession,
        ),
        // `delegation(2)`: edges edge-1 → edge-2; edge-1 leaves the first, upstream hop.
        (
            "delegation_edge_id",
            "edge-1",
            sts.mandate().delegation(2).sign(),
            AnchorKind::ChainEdge,
        ),
    ];
    for (_, _, token, _) in &cases {
        check(&v, token).await.expect("valid before any revocation");
    }
    for (field, anchor, token, kind) in &cases {
        publisher.revoke(field, anchor).await;
        eventually(&format!("{field}={anchor} is enforced"), async || {
            revoked(&check(&v, token).await, *kind)
        })
        .await;
        let err = check(&v, token).await.unwrap_err();
        assert_eq!(err.status().as_u16(), 401);
        assert_eq!(err.code().as_str(), "session_revoked");
    }
    let status = v.revocation_feed().unwrap().status().feed.unwrap();
    assert_eq!(status.applied, cases.len() as u64);
    assert_eq!(status.dropped, 0);
    assert!(status.fresh && status.connected && status.caught_up);
    assert!(status.since_last_event.is_some());
    // Unrelated mandates still pass.
    check(&v, &sts.mandate().sign()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epochs_only_rise_under_out_of_order_events() {
    let server = RedisServer::start().await;
    let sts = issuer().await;
    let v = ready_verifier(&sts, feed(&server)).await;
    let mut publisher = server.publisher().await;

    publisher.epoch(10).await;
    publisher.epoch(5).await;
    let feed = v.revocation_feed().unwrap();
    eventually("both epoch events are applied", async || {
        feed.status().feed.unwrap().applied == 2
    })
    .await;
    assert_eq!(v.revocations().epoch("zone-1"), Some(10));
    let answer = check(&v, &sts.mandate().epoch(9).sign()).await;
    assert!(stale(&answer, 9, 10), "{answer:?}");
    check(&v, &sts.mandate().epoch(10).sign()).await.unwrap();
    check(&v, &sts.mandate().epoch(11).sign()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_published_before_start_is_enforced_from_the_first_request() {
    let server = RedisServer::start().await;
    let sts = issuer().await;
    let mut publisher = server.publisher().await;

    // Older than the 24 h catch-up window: its mandates are long expired.
    let ancient = format!("{}-0", now_ms() - 25 * 3600 * 1000);
    let fields = [("zone_id", "zone-1"), ("sid", "sid-ancient")];
    let sig = sign_fields(&stream_key(), SESSIONS_REVOKE_STREAM, &fields);
    publisher
        .raw(
            SESSIONS_REVOKE_STREAM,
            &ancient,
            &[fields[0], fields[1], ("_sig", &sig)],
        )
        .await;
    publisher.revoke("sid", "sid-early").await;
    publisher.epoch(7).await;
    // More than two pages of history.
    let mut pipe = redis::pipe();
    for i in 0..2500 {
        let anchor = format!("bulk-{i}");
        let fields = [("zone_id", "zone-1"), ("agent_session_id", anchor.as_str())];
        let sig = sign_fields(&stream_key(), SESSIONS_REVOKE_STREAM, &fields);
        pipe.cmd("XADD")
            .arg(SESSIONS_REVOKE_STREAM)
            .arg("*")
            .arg(fields[0].0)
            .arg(fields[0].1)
            .arg(fields[1].0)
            .arg(fields[1].1)
            .arg("_sig")
            .arg(sig)
            .ignore();
    }
    let () = pipe.query_async(&mut publisher.conn).await.unwrap();

    let v = verifier(&sts, feed(&server)).await;
    eventually("the verifier becomes ready", async || v.is_ready()).await;
    // No polling from here: readiness means the history is applied.
    let answer = check(&v, &sts.mandate().sid("sid-early").sign()).await;
    assert!(revoked(&answer, AnchorKind::Sid), "{answer:?}");
    let answer = check(&v, &sts.mandate().epoch(6).sign()).await;
    assert!(stale(&answer, 6, 7), "{answer:?}");
    let answer = check(&v, &sts.mandate().agent_session("bulk-2499").sign()).await;
    assert!(revoked(&answer, AnchorKind::AgentSession), "{answer:?}");
    assert!(v.revocations().is_revoked("bulk-0"));
    check(&v, &sts.mandate().sid("sid-ancient").sign())
        .await
        .expect("outside the catch-up window");
    let status = v.revocation_feed().unwrap().status().feed.unwrap();
    assert_eq!(status.applied, 2502);
    assert_eq!(status.dropped, 0);
    // Replayed history does not count as lag.
    assert_eq!(status.lag, Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dropped_and_never_stall_the_stream() {
    let server = RedisServer::start().await;
    let sts = issuer().await;
    let v = ready_verifier(&sts, feed(&server)).await;
    let mut p = server.publisher().await;
    let other_key = StreamKey::from_hex(&"ee".repeat(32)).unwrap();

    // Unsigned.
    p.raw(
        SESSIONS_REVOKE_STREAM,
        "*",
        &[("zone_id", "zone-1"), ("sid", "poison-unsigned")],
    )
    .await;
    p.revoke("sid", "good-1").await;
    // Forged: signed with another key.
    let fields = [("zone_id", "zone-1"), ("sid", "poison-forged")];
    let forged = sign_fields(&other_key, SESSIONS_REVOKE_STREAM, &fields);
    p.raw(
        SESSIONS_REVOKE_STREAM,
        "*",
        &[fields[0], fields[1], ("_sig", &forged)],
    )
    .await;
    p.revoke("sid", "good-2").await;
    // Tampered: a valid signature for another anchor.
    let sig = sign_fields(
        &stream_key(),
        SESSIONS_REVOKE_STREAM,
        &[("zone_id", "zone-1"), ("sid", "innocent")],
    );
    p.raw(
        SESSIONS_REVOKE_STREAM,
        "*",
        &[
            ("zone_id", "zone-1"),
            ("sid", "poison-tampered"),
            ("_sig", &sig),
        ],
    )
    .await;
    p.revoke("sid", "good-3").await;
    // Signed, but no anchor.
    p.signed(
        SESSIONS_REVOKE_STREAM,
        &[("zone_id", "zone-1"), ("reason", "no anchor")],
    )
    .await;
    p.revoke("sid", "good-4").await;
    // Signed, malformed epoch.
    p.signed(
        DELEGATIONS_INVALIDATE_STREAM,
        &[("zone_id", "zone-1"), ("epoch", "12abc")],
    )
    .await;
    p.epoch(3).await;
    // Signed, but a field appears twice.
    let dup = [
        ("zone_id", "zone-1"),
        ("sid", "poison-dup-a"),
        ("sid", "poison-dup-b"),
    ];
    let sig = sign_fields(&stream_key(), SESSIONS_REVOKE_STREAM, &dup);
    p.raw(
        SESSIONS_REVOKE_STREAM,
        "*",
        &[dup[0], dup[1], dup[2], ("_sig", &sig)],
    )
    .await;
    p.revoke("sid", "good-5").await;
    // Not UTF-8.
    let _: String = redis::cmd("XADD")
        .arg(SESSIONS_REVOKE_STREAM)
        .arg("*")
        .arg("zone_id")
        .arg("zone-1")
        .arg("sid")
        .arg(&b"\xff\xfe"[..])
        .query_async(&mut p.conn)
        .await
        .unwrap();
    p.revoke("sid", "good-6").await;

    eventually("the last good event is applied", async || {
        v.revocations().is_revoked("good-6")
    })
    .await;
    for good in ["good-1", "good-2", "good-3", "good-4", "good-5"] {
        assert!(v.revocations().is_revoked(good), "{good}");
    }
    assert_eq!(v.revocations().epoch("zone-1"), Some(3));
    for poison in [
        "poison-unsigned",
        "poison-forged",
        "poison-tampered",
        "innocent",
        "poison-dup-a",
        "poison-dup-b",
    ] {
        assert!(!v.revocations().is_revoked(poison), "{poison}");
    }
    let status = v.revocation_feed().unwrap().status().feed.unwrap();
    assert_eq!(status.dropped, 7, "{status:?}");
    assert_eq!(status.applied, 7, "{status:?}");
    assert!(status.fresh);
    check(&v, &sts.mandate().sid("poison-unsigned").sign())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_events_apply_only_when_opted_in() {
    let server = RedisServer::start().await;
    let sts = issuer().await;
    let feed = RedisRevocations::new(server.url())
        .dangerous_accept_unsigned()
        .max_staleness(Duration::from_secs(2));
    let v = ready_verifier(&sts, feed).await;
    let mut p = server.publisher().await;
    p.raw(
        SESSIONS_REVOKE_STREAM,
        "*",
        &[("zone_id", "zone-1"), ("sid", "unsigned-ok")],
    )
    .await;
    eventually("the unsigned event is applied", async || {
        v.revocations().is_revoked("unsigned-ok")
    })
    .await;

    // Without a key or the opt-in, the builder refuses.
    let err = Verifier::builder()
        .issuer(sts.issuer_url())
        .audience("resource://api")
        .zone("zone-1")
        .redis_revocations(RedisRevocations::new(server.url()))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("stream_key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_empty_data_then_new_revocations_are_enforced() {
    let mut server = RedisServer::start().await;
    let sts = issuer().await;
    let v = ready_verifier(&sts, feed(&server)).await;
    let before = sts.mandate().sid("sid-before").sign();
    let after = sts.mandate().sid("sid-after").sign();
    server.publisher().await.revoke("sid", "sid-before").await;
    eventually("the first revocation is enforced", async || {
        revoked(&check(&v, &before).await, AnchorKind::Sid)
    })
    .await;

    server.kill();
    eventually("the feed notices the lost server", async || {
        !v.readiness().revocation
    })
    .await;
    server.restart().await;
    eventually("the verifier is ready again", async || v.is_ready()).await;

    check(&v, &after).await.unwrap();
    server.publisher().await.revoke("sid", "sid-after").await;
    eventually("a revocation on the new server is enforced", async || {
        revoked(&check(&v, &after).await, AnchorKind::Sid)
    })
    .await;
    // The mirror keeps what it learned before the restart.
    let answer = check(&v, &before).await;
    assert!(revoked(&answer, AnchorKind::Sid), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_going_backwards_after_data_loss_are_detected() {
    let mut server = RedisServer::start().await;
    let sts = issuer().await;
    let v = ready_verifier(&sts, feed(&server)).await;

    // An entry numbered an hour ahead (a publisher's clock, or a lost primary's)
    // moves the cursor past every id the new server will generate for a while.
    let future = format!("{}-0", now_ms() + 3600 * 1000);
    let fields = [("zone_id", "zone-1"), ("sid", "sid-future")];
    let sig = sign_fields(&stream_key(), SESSIONS_REVOKE_STREAM, &fields);
    server
        .publisher()
        .await
        .raw(
            SESSIONS_REVOKE_STREAM,
            &future,
            &[fields[0], fields[1], ("_sig", &sig)],
        )
        .await;
    eventually("the future-numbered event is applied", async || {
        v.revocations().is_revoked("sid-future")
    })
    .await;

    // Same server (same run id): the stream is deleted and the consumer's connection
    // dropped. XINFO reveals the stream no longer reaches the cursor.
    {
        let mut p = server.publisher().await;
        p.query(redis::cmd("DEL").arg(SESSIONS_REVOKE_STREAM)).await;
        p.query(
            redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("normal")
                .arg("SKIPME")
                .arg("yes"),
        )
        .await;
    }
    let token = sts.mandate().sid("sid-same-server").sign();
    let mut p = server.publisher().await;
    p.revoke("sid", "sid-same-server").await;
    eventually(
        "an event numbered below the old cursor is enforced",
        async || revoked(&check(&v, &token).await, AnchorKind::Sid),
    )
    .await;

    // A restart that lost everything: the run id changes.
    let fields = [("zone_id", "zone-1"), ("sid", "sid-future-2")];
    let sig = sign_fields(&stream_key(), SESSIONS_REVOKE_STREAM, &fields);
    p.raw(
        SESSIONS_REVOKE_STREAM,
        &format!("{}-0", now_ms() + 3600 * 1000),
        &[fields[0], fields[1], ("_sig", &sig)],
    )
    .await;
    eventually("the second future-numbered event is applied", async || {
        v.revocations().is_revoked("sid-future-2")
    })
    .await;
    server.restart().await;
    let token = sts.mandate().sid("sid-new-server").sign();
    server
        .publisher()
        .await
        .revoke("sid", "sid-new-server")
        .await;
    eventually("an event on the emptied server is enforced", async || {
        revoked(&check(&v, &token).await, AnchorKind::Sid)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_is_detected_even_when_the_new_ids_look_continuous() {
    let mut server = RedisServer::start().await;
    let sts = issuer().await;
    // A slow reconnect leaves time to refill the new server before the feed returns.
    let slow = feed(&server).reconnect_backoff(Duration::from_secs(2), Duration::from_secs(2));
    let v = ready_verifier(&sts, slow).await;
    let far = now_ms() + 3600 * 1000;
    let signed = |sid: &str| {
        let fields = [("zone_id", "zone-1"), ("sid", sid)];
        let sig = sign_fields(&stream_key(), SESSIONS_REVOKE_STREAM, &fields);
        (sid.to_owned(), sig)
    };
    let (sid, sig) = signed("sid-old-server");
    server
        .publisher()
        .await
        .raw(
            SESSIONS_REVOKE_STREAM,
            &format!("{far}-0"),
            &[("zone_id", "zone-1"), ("sid", &sid), ("_sig", &sig)],
        )
        .await;
    eventually("the old server's event is applied", async || {
        v.revocations().is_revoked("sid-old-server")
    })
    .await;

    server.restart().await;
    // The feed polls while an entry ahead of the clock sits in its stream, so it may
    // take a poll interval to notice the lost connection.
    eventually("the feed notices the lost connection", async || {
        !v.revocation_feed()
            .unwrap()
            .status()
            .feed
            .unwrap()
            .connected
    })
    .await;
    // The new server's stream ends beyond the feed's cursor, so only the changed run
    // id reveals that the entry below the cursor is new.
    let mut p = server.publisher().await;
    p.revoke("sid", "sid-below-cursor").await;
    let (sid, sig) = signed("sid-beyond-cursor");
    p.raw(
        SESSIONS_REVOKE_STREAM,
        &format!("{}-0", far + 1000),
        &[("zone_id", "zone-1"), ("sid", &sid), ("_sig", &sig)],
    )
    .await;
    assert!(
        !v.readiness().revocation,
        "the feed reconnected before the new server was refilled; the test cannot tell"
    );
    eventually("both events on the new server are applied", async || {
        v.revocations().is_revoked("sid-beyond-cursor")
            && v.revocations().is_revoked("sid-below-cursor")
    })
    .await;
}

/// Staleness is measured on the verifier's clock: the test moves it past the
/// maximum staleness instead of waiting for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_longer_than_max_staleness_fails_closed_then_recovers() {
    let mut server = RedisServer::start().await;
    let sts = issuer().await;
    let clock = ManualClock::new(Duration::from_millis(now_ms()));
    let max_staleness = Duration::from_secs(2);
    let v = verifier_with(&sts, feed(&server).max_staleness(max_staleness), |b| {
        b.clock(clock.clone())
    })
    .await;
    eventually("the verifier becomes ready", async || v.is_ready()).await;
    let token = sts.mandate().sign();
    check(&v, &token).await.unwrap();

    // Connected, but no read within the bound: stale, and closed. The feed's idle
    // reads (every block timeout) re-mark it read at the clock's time, so each
    // attempt moves the clock past the bound and checks at once.
    let mut stale = None;
    eventually("a silent feed is stale and closed", async || {
        clock.advance(max_staleness + Duration::from_millis(1));
        let err = check(&v, &token).await.err();
        let ready = v.readiness();
        let status = v.revocation_feed().unwrap().status().feed.unwrap();
        let closed = err == Some(AuthError::RevocationUnavailable)
            && !ready.revocation
            && status.connected
            && !status.fresh;
        if closed {
            stale = Some((err.unwrap(), status));
        }
        closed
    })
    .await;
    let (err, status) = stale.unwrap();
    assert_eq!(err.status().as_u16(), 503);
    assert_eq!(err.code().as_str(), "revocation_unavailable");
    assert!(
        status.since_last_read.unwrap() > max_staleness,
        "{status:?}"
    );
    // The next idle read makes it fresh again.
    eventually("the feed's next read makes it fresh", async || {
        check(&v, &token).await.is_ok()
    })
    .await;

    // Down: closed at once, whatever the clock says.
    server.kill();
    eventually("requests fail closed", async || {
        check(&v, &token).await == Err(AuthError::RevocationUnavailable)
    })
    .await;
    let status = v.revocation_feed().unwrap().status().feed.unwrap();
    assert!(!status.fresh && !status.connected, "{status:?}");

    server.restart().await;
    eventually("requests pass again", async || {
        check(&v, &token).await.is_ok()
    })
    .await;
    assert!(v.is_ready());
}

/// A live event's lag is the verifier's clock minus its stream id's time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_events_lag_is_measured_from_its_stream_id() {
    let server = RedisServer::start().await;
    let sts = issuer().await;
    let clock = ManualClock::new(Duration::from_millis(now_ms()));
    let v = verifier_with(&sts, feed(&server), |b| b.clock(clock.clone())).await;
    eventually("the verifier becomes ready", async || v.is_ready()).await;
    let mut p = server.publisher().await;
    // A first live event puts the read position on an id at or before now.
    p.revoke("sid", "sid-first").await;
    eventually("the first event is applied", async || {
        v.revocations().is_revoked("sid-first")
    })
    .await;
    // The second carries an explicit id at a known time, no later than the server's
    // clock; the verifier's clock stands 1,234 ms after it.
    let published = now_ms();
    clock.set(Duration::from_millis(published + 1234));
    let fields = [("zone_id", "zone-1"), ("sid", "sid-second")];
    let sig = sign_fields(&stream_key(), SESSIONS_REVOKE_STREAM, &fields);
    p.raw(
        SESSIONS_REVOKE_STREAM,
        &format!("{published}-*"),
        &[fields[0], fields[1], ("_sig", &sig)],
    )
    .await;
    eventually("the second event is applied", async || {
        v.revocations().is_revoked("sid-second")
    })
    .await;
    let status = v.revocation_feed().unwrap().status().feed.unwrap();
    assert_eq!(status.lag, Duration::from_millis(1234), "{status:?}");
    assert_eq!(status.since_last_event, Some(Duration::ZERO));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_lets_requests_through_while_stale() {
    let mut server = RedisServer::start().await;
    let sts = issuer().await;
    let v = ready_verifier(&sts, feed(&server).dangerous_fail_open()).await;
    let token = sts.mandate().sign();
    server.kill();
    eventually("the feed is stale", async || !v.readiness().revocation).await;
    check(&v, &token)
        .await
        .expect("fail-open serves while stale");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_each_enforce_one_xadd() {
    let server = RedisServer::start().await;
    let sts = issuer().await;
    let replica_a = ready_verifier(&sts, feed(&server)).await;
    let replica_b = ready_verifier(&sts, feed(&server)).await;
    let token = sts.mandate().agent_session("agent-shared").sign();
    check(&replica_a, &token).await.unwrap();
    check(&replica_b, &token).await.unwrap();

    server
        .publisher()
        .await
        .revoke("agent_session_id", "agent-shared")
        .await;
    for (name, v) in [("a", &replica_a), ("b", &replica_b)] {
        eventually(&format!("replica {name} enforces the XADD"), async || {
            revoked(&check(v, &token).await, AnchorKind::AgentSession)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_the_feed_and_fails_closed() {
    let server = RedisServer::start().await;
    let sts = issuer().await;
    let v = ready_verifier(&sts, feed(&server)).await;
    let feed = v.revocation_feed().unwrap();
    assert!(feed.is_running());
    tokio::time::timeout(Duration::from_secs(5), feed.shutdown())
        .await
        .expect("shutdown is prompt");
    assert!(!feed.is_running());
    assert!(!feed.status().feed.unwrap().connected);
    assert_eq!(
        check(&v, &sts.mandate().sign()).await,
        Err(AuthError::RevocationUnavailable)
    );
    // Idempotent.
    feed.shutdown().await;
}

/// Scale, not speed (timing belongs to the benchmarks): a million revocations
/// published before start are all replayed, a thousand pages of them, before the
/// verifier turns ready. Prints the growth of resident memory per anchor, an upper
/// bound of the mirror's cost. Run with
/// `cargo test --release --all-features --test redis -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "publishes a million events; run on demand"]
async fn catch_up_of_a_million_anchors() {
    const N: usize = 1_000_000;
    let server = RedisServer::start().await;
    let sts = issuer().await;
    let mut publisher = server.publisher().await;
    let key = stream_key();
    for chunk in (0..N).step_by(10_000) {
        let mut pipe = redis::pipe();
        for i in chunk..chunk + 10_000 {
            let anchor = format!("anchor-{i}");
            let fields = [("zone_id", "zone-1"), ("sid", anchor.as_str())];
            let sig = sign_fields(&key, SESSIONS_REVOKE_STREAM, &fields);
            pipe.cmd("XADD")
                .arg(SESSIONS_REVOKE_STREAM)
                .arg("*")
                .arg("zone_id")
                .arg("zone-1")
                .arg("sid")
                .arg(anchor)
                .arg("_sig")
                .arg(sig)
                .ignore();
        }
        let () = pipe.query_async(&mut publisher.conn).await.unwrap();
    }

    let before = redis_common::resident_bytes();
    let v = verifier(&sts, feed(&server).max_staleness(Duration::from_secs(30))).await;
    redis_common::eventually_within(
        Duration::from_secs(600),
        "a million events are replayed",
        async || v.is_ready(),
    )
    .await;
    let after = redis_common::resident_bytes();
    let status = v.revocation_feed().unwrap().status().feed.unwrap();
    assert_eq!(status.applied, N as u64);
    assert_eq!(v.revocations().len(), N);
    assert!(v.revocations().is_revoked("anchor-0"));
    assert!(v.revocations().is_revoked("anchor-999999"));
    let answer = check(&v, &sts.mandate().sid("anchor-123456").sign()).await;
    assert!(revoked(&answer, AnchorKind::Sid), "{answer:?}");
    if let (Some(before), Some(after)) = (before, after) {
        println!(
            "{N} anchors: resident memory grew by {:.1} bytes per anchor",
            after.saturating_sub(before) as f64 / N as f64
        );
    }
}

fn plain_verifier(sts: &TestIssuer) -> caracal_verifier::VerifierBuilder {
    Verifier::builder()
        .issuer(sts.issuer_url())
        .audience("resource://api")
        .zone("zone-1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_replay_guard_accepts_each_mandate_once() {
    let sts = issuer().await;
    let v = plain_verifier(&sts).build().unwrap();
    let token = sts.mandate().sign();
    check_single_use(&v, &token).await.unwrap();
    let err = check_single_use(&v, &token).await.unwrap_err();
    assert_eq!(err.reason(), Some(InvalidReason::Replayed), "{err:?}");
    assert_eq!(err.status().as_u16(), 401);
    assert_eq!(err.details()["reason"], "replayed");
    // Routes without the requirement are unaffected.
    check(&v, &token).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_replay_guard_is_shared_by_replicas() {
    let server = RedisServer::start().await;
    let sts = issuer().await;
    let replica_a = plain_verifier(&sts)
        .replay_guard(RedisReplayGuard::connect(&server.url()).await.unwrap())
        .build()
        .unwrap();
    let replica_b = plain_verifier(&sts)
        .replay_guard(RedisReplayGuard::new(&server.url()).unwrap())
        .build()
        .unwrap();
    let token = sts.mandate().jti("jti-shared").sign();
    check_single_use(&replica_a, &token).await.unwrap();
    assert!(replayed(&check_single_use(&replica_b, &token).await));
    assert!(replayed(&check_single_use(&replica_a, &token).await));

    // Keyed on iss + jti, not on the token bytes: a re-signed copy is the same mandate.
    let again = sts.mandate().jti("jti-shared").sign();
    assert_ne!(again, token);
    assert!(replayed(&check_single_use(&replica_b, &again).await));

    let other = sts.mandate().jti("jti-other").sign();
    check_single_use(&replica_b, &other).await.unwrap();

    // One key per mandate, expiring at exp + leeway.
    let key = RedisReplayGuard::new(&server.url())
        .unwrap()
        .key_for(&sts.issuer_url(), "jti-shared");
    let mut conn = server.connection().await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl > 0 && pttl <= 360_000, "{pttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_replay_guard_fails_closed_when_redis_is_down() {
    let mut server = RedisServer::start().await;
    let sts = issuer().await;
    let v = plain_verifier(&sts)
        .replay_guard(RedisReplayGuard::connect(&server.url()).await.unwrap())
        .build()
        .unwrap();
    check_single_use(&v, &sts.mandate().sign()).await.unwrap();

    server.kill();
    let err = check_single_use(&v, &sts.mandate().sign())
        .await
        .unwrap_err();
    assert_eq!(err, AuthError::RevocationUnavailable);
    assert_eq!(err.status().as_u16(), 503);
    // Plain routes do not depend on the guard.
    check(&v, &sts.mandate().sign()).await.unwrap();

    server.restart().await;
    eventually("the guard reconnects", async || {
        check_single_use(&v, &sts.mandate().sign()).await.is_ok()
    })
    .await;
}

#[test]
fn redis_server_is_installed() {
    // The other tests panic with the same hint; this one names the problem directly.
    let found = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "redis-server is not on PATH: install it (Debian/Ubuntu: `apt-get install redis-server`, \
         macOS: `brew install redis`)"
    );
}
