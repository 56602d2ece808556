//! The hostile-writer suite: the Redis revocation feed against an attacker who can
//! write to Redis but does not hold `STREAMS_HMAC_KEY`, plus floods and a full
//! revocation set.
//!
//! Each test names one attack. Whatever the attacker does, a user sees one of two
//! things: the victim's revoked mandate is refused (401 `session_revoked`, or
//! `delegation_stale` for an epoch), or the service fails closed (503
//! `revocation_unavailable`). Afterwards it recovers on its own: an innocent mandate
//! verifies again and the feed reports itself fresh.
//!
//! Each test starts its own `redis-server` (see `redis_common`) and never sleeps to
//! wait for the feed: it polls for the end state with `eventually`.
//!
//! Run with `cargo test --all-features --test redis_hostile`.
#![cfg(feature = "redis")]

mod redis_common;

use std::time::Duration;

use caracal_verifier::redis::RedisRevocations;
use caracal_verifier::revocation::{
    DELEGATIONS_INVALIDATE_STREAM, FeedStatus, RevocationSet, SESSIONS_REVOKE_STREAM, sign_fields,
};
use caracal_verifier::testing::TestIssuer;
use caracal_verifier::{AuthError, ManualClock, Requirements, Verifier};
use redis_common::modes::connections_received;
use redis_common::{
    Publisher, RedisServer, eventually, feed, now_ms, ready_verifier, resident_bytes, stream_key,
    verifier,
};
use tokio::sync::{RwLock, RwLockReadGuard};

/// An id no honest publisher reaches for millennia: the largest 14-digit millisecond
/// time, in the year 5138.
const FAR_FUTURE_ID: &str = "99999999999999-0";

/// The memory test measures this process's resident memory, which every test of
/// this binary shares: it holds this lock alone, every other test holds it shared.
static MEMORY_MEASUREMENT: RwLock<()> = RwLock::const_new(());

async fn shared_process() -> RwLockReadGuard<'static, ()> {
    MEMORY_MEASUREMENT.read().await
}

async fn issuer() -> TestIssuer {
    TestIssuer::start("zone-1")
        .await
        .expect("start the test issuer")
}

async fn check(v: &Verifier, token: &str) -> Result<(), AuthError> {
    v.verify(token, &Requirements::new()).await.map(drop)
}

fn status(v: &Verifier) -> FeedStatus {
    v.revocation_feed()
        .expect("the verifier runs a feed")
        .status()
        .feed
        .expect("a revocation feed reports its status")
}

fn is_revoked(answer: &Result<(), AuthError>) -> bool {
    matches!(answer, Err(AuthError::SessionRevoked { .. }))
}

fn is_unavailable(answer: &Result<(), AuthError>) -> bool {
    answer == &Err(AuthError::RevocationUnavailable)
}

/// The answer a user gets for a revoked mandate: 401 `session_revoked`.
fn assert_session_revoked(answer: Result<(), AuthError>) {
    let err = answer.expect_err("a revoked mandate is refused");
    assert!(matches!(err, AuthError::SessionRevoked { .. }), "{err:?}");
    assert_eq!(err.status().as_u16(), 401);
    assert_eq!(err.code().as_str(), "session_revoked");
}

/// Poll until `token` is refused as revoked, then check the user's answer.
async fn eventually_revoked(v: &Verifier, token: &str, what: &str) {
    eventually(what, async || is_revoked(&check(v, token).await)).await;
    assert_session_revoked(check(v, token).await);
}

/// The feed recovered by itself: fresh again, and a new innocent mandate verifies.
async fn eventually_recovers(v: &Verifier, sts: &TestIssuer) {
    let innocent = sts.mandate().sign();
    eventually(
        "the feed is fresh again and an innocent mandate verifies",
        async || status(v).fresh && check(v, &innocent).await.is_ok(),
    )
    .await;
}

/// `XADD stream <id> fields… _sig`, signed with the real key.
async fn xadd_signed(p: &mut Publisher, stream: &str, id: &str, fields: &[(&str, &str)]) {
    let sig = sign_fields(&stream_key(), stream, fields);
    let mut all = fields.to_vec();
    all.push(("_sig", &sig));
    p.raw(stream, id, &all).await;
}

/// Send a command that may take Redis a while (building or storing megabytes) on a
/// connection of its own, without the default 500 ms response timeout that a
/// loaded machine could exceed.
async fn query_patiently(server: &RedisServer, cmd: &redis::Cmd) {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect to the test redis-server");
    let _: redis::Value = cmd.query_async(&mut conn).await.expect("redis command");
}

/// `EVAL script 1 key args…`: lets Redis build entries the test never holds.
async fn eval(server: &RedisServer, script: &str, key: &str, args: &[&str]) {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(1).arg(key).arg(args);
    query_patiently(server, &cmd).await;
}

/// This process's peak resident memory (`VmHWM`), in bytes.
fn peak_resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Reset `VmHWM` to the current resident memory (Linux `clear_refs`, value 5).
/// Returns whether it worked; without it only sampled readings count.
fn reset_peak_resident() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Attack: push a stream's cursor to the end of time with one unsigned entry, then
/// delete the stream, so every honest id that follows sorts below the cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_pushed_ahead_then_stream_deleted() {
    let _shared = shared_process().await;
    let server = RedisServer::start().await;
    let sts = issuer().await;
    let v = ready_verifier(&sts, feed(&server)).await;
    let mut p = server.publisher().await;
    let victim = sts.mandate().sid("victim-ahead").sign();
    check(&v, &victim)
        .await
        .expect("valid before any revocation");

    let dropped = status(&v).dropped;
    p.raw(SESSIONS_REVOKE_STREAM, FAR_FUTURE_ID, &[("junk", "x")])
        .await;
    eventually("the feed has seen the far-future junk", async || {
        status(&v).dropped > dropped
    })
    .await;
    p.query(redis::cmd("DEL").arg(SESSIONS_REVOKE_STREAM)).await;
    p.revoke("sid", "victim-ahead").await;

    eventually_revoked(&v, &victim, "the revocation after the DEL is enforced").await;
    eventually_recovers(&v, &sts).await;
}

/// Attack: the same cursor push and delete on the delegation-epoch stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epoch_cursor_pushed_ahead_then_stream_deleted() {
    let _shared = shared_process().await;
    let server = RedisServer::start().await;
    let sts = issuer().await;
    let v = ready_verifier(&sts, feed(&server)).await;
    let mut p = server.publisher().await;
    let stale = sts.mandate().epoch(3).sign();
    check(&v, &stale).await.expect("valid before any epoch");

    let dropped = status(&v).dropped;
    p.raw(
        DELEGATIONS_INVALIDATE_STREAM,
        FAR_FUTURE_ID,
        &[("junk", "x")],
    )
    .await;
    eventually("the feed has seen the far-future junk", async || {
        status(&v).dropped > dropped
    })
    .await;
    p.query(redis::cmd("DEL").arg(DELEGATIONS_INVALIDATE_STREAM))
        .await;
    p.epoch(5).await;

    eventually("the epoch after the DEL is enforced", async || {
        matches!(
            check(&v, &stale).await,
            Err(AuthError::DelegationStale {
                token: 3,
                current: 5,
                ..
            })
        )
    })
    .await;
    let err = check(&v, &stale).await.unwrap_err();
    assert_eq!(err.status().as_u16(), 401);
    assert_eq!(err.code().as_str(), "delegation_stale");
    check(&v, &sts.mandate().epoch(5).sign())
        .await
        .expect("a mandate at the current epoch verifies");
    eventually_recovers(&v, &sts).await;
}

/// Attack: delete a stream the feed has consumed and recreate it with a signed
/// entry numbered below the feed's cursor (a replayed or re-sent revocation), while
/// the feed's connection stays healthy, so no reconnect prompts a re-read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_recreated_with_smaller_ids() {
    let _shared = shared_process().await;
    let server = RedisServer::start().await;
    let sts = issuer().await;
    let v = ready_verifier(&sts, feed(&server)).await;
    let mut p = server.publisher().await;
    let victim = sts.mandate().sid("victim-smaller").sign();
    let consumed = sts.mandate().sid("consumed-2").sign();

    p.revoke("sid", "consumed-1").await;
    p.revoke("sid", "consumed-2").await;
    eventually_revoked(&v, &consumed, "the normal events are consumed").await;
    check(&v, &victim)
        .await
        .expect("valid before any revocation");

    p.query(redis::cmd("DEL").arg(SESSIONS_REVOKE_STREAM)).await;
    let minute_ago = format!("{}-0", now_ms() - 60_000);
    xadd_signed(
        &mut p,
        SESSIONS_REVOKE_STREAM,
        &minute_ago,
        &[
            ("zone_id", "zone-1"),
            ("sid", "victim-smaller"),
            ("reason", "test"),
        ],
    )
    .await;

    eventually_revoked(&v, &victim, "the entry below the cursor is enforced").await;
    eventually_recovers(&v, &sts).await;
}

/// Attack (or an unlucky publisher): delete a stream and recreate it within the same
/// millisecond, so the new entry gets the very id the feed stopped at. No id
/// comparison tells the two apart; the feed must notice the entry was replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_recreated_with_the_same_id() {
    let _shared = shared_process().await;
    let server = RedisServer::start().await;
    let sts = issuer().await;
    let v = ready_verifier(&sts, feed(&server)).await;
    let mut p = server.publisher().await;
    let victim = sts.mandate().sid("victim-same-id").sign();
    let consumed = sts.mandate().sid("consumed-same-id").sign();
    let id = format!("{}-0", now_ms() - 1_000);
    xadd_signed(
        &mut p,
        SESSIONS_REVOKE_STREAM,
        &id,
        &[
            ("zone_id", "zone-1"),
            ("sid", "consumed-same-id"),
            ("reason", "test"),
        ],
    )
    .await;
    eventually_revoked(&v, &consumed, "the first entry is consumed").await;
    check(&v, &victim)
        .await
        .expect("valid before any revocation");

    p.query(redis::cmd("DEL").arg(SESSIONS_REVOKE_STREAM)).await;
    xadd_signed(
        &mut p,
        SESSIONS_REVOKE_STREAM,
        &id,
        &[
            ("zone_id", "zone-1"),
            ("sid", "victim-same-id"),
            ("reason", "test"),
        ],
    )
    .await;
    eventually_revoked(&v, &victim, "the entry that took the same id is enforced").await;
    assert!(status(&v).resets >= 1, "{:?}", status(&v));
    eventually_recovers(&v, &sts).await;
}

/// Attack: one unsigned entry with 120,000 fields (about 1.3 MB), costly to take
/// apart, ahead of a real revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_field_unsigned_entry_does_not_stall_requests() {
    let _shared = shared_process().await;
    let server = RedisServer::start().await;
    let sts = issuer().await;
    // Staleness well above any scheduling hiccup of a loaded machine: only a real
    // stall of the feed turns the innocent mandate away.
    let slack = feed(&server).max_staleness(Duration::from_secs(5));
    let v = ready_verifier(&sts, slack).await;
    let mut p = server.publisher().await;
    let victim = sts.mandate().sid("victim-fields").sign();
    let innocent = sts.mandate().sign();
    check(&v, &victim)
        .await
        .expect("valid before any revocation");

    let dropped = status(&v).dropped;
    let mut xadd = redis::cmd("XADD");
    xadd.arg(SESSIONS_REVOKE_STREAM).arg("*");
    for i in 0..120_000 {
        xadd.arg(format!("f{i}")).arg("x");
    }
    query_patiently(&server, &xadd).await;
    p.revoke("sid", "victim-fields").await;

    eventually("the revocation behind the junk is enforced", async || {
        let answer = check(&v, &innocent).await;
        assert!(
            answer.is_ok(),
            "the innocent mandate was refused while the junk sat in the stream: {answer:?}"
        );
        is_revoked(&check(&v, &victim).await)
    })
    .await;
    assert_session_revoked(check(&v, &victim).await);
    eventually_recovers(&v, &sts).await;
    assert!(status(&v).dropped > dropped, "{:?}", status(&v));
}

/// Attack: unsigned entries of 32 MiB each, already in the stream when the verifier
/// starts and added while it runs. The feed must never hold a whole one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_unsigned_entries_are_dropped_within_a_memory_bound() {
    const HUGE: &str = "33554432";
    const BOUND: u64 = 96 * 1024 * 1024;
    const XADD_HUGE: &str =
        "return redis.call('XADD', KEYS[1], '*', 'junk', string.rep('x', tonumber(ARGV[1])))";
    // No other test of this binary allocates while this one measures.
    let _alone = MEMORY_MEASUREMENT.write().await;
    let server = RedisServer::start().await;
    let sts = issuer().await;
    let mut p = server.publisher().await;
    for _ in 0..4 {
        eval(&server, XADD_HUGE, SESSIONS_REVOKE_STREAM, &[HUGE]).await;
    }
    let victim = sts.mandate().sid("victim-huge").sign();

    let peak_resettable = reset_peak_resident();
    let baseline = resident_bytes().expect("resident memory from /proc/self/statm");
    let mut peak = baseline;
    let mut sample = || {
        peak = peak.max(resident_bytes().unwrap_or(0));
        if peak_resettable {
            peak = peak.max(peak_resident_bytes().unwrap_or(0));
        }
    };

    let v = verifier(&sts, feed(&server).max_staleness(Duration::from_secs(5))).await;
    eventually("the feed catches up past the huge entries", async || {
        sample();
        v.is_ready()
    })
    .await;
    eval(&server, XADD_HUGE, SESSIONS_REVOKE_STREAM, &[HUGE]).await;
    p.revoke("sid", "victim-huge").await;
    eventually(
        "the revocation behind the huge entries is enforced",
        async || {
            sample();
            is_revoked(&check(&v, &victim).await)
        },
    )
    .await;
    assert_session_revoked(check(&v, &victim).await);
    eventually_recovers(&v, &sts).await;
    sample();
    assert!(status(&v).dropped >= 5, "{:?}", status(&v));
    let growth = peak.saturating_sub(baseline);
    assert!(
        growth < BOUND,
        "resident memory grew by {} MiB reading past 32 MiB junk entries (bound {} MiB)",
        growth / (1024 * 1024),
        BOUND / (1024 * 1024)
    );
}

/// Attack: re-split the signed canonical form. `_sig` covers `"{stream}\n"` and
/// sorted `"{name}={value}\n"` lines, so a `\n` or `=` inside a name or value lets
/// the same bytes be read as other fields (`reason="x\nsid=victim"` signs exactly
/// what `reason="x"`, `sid="victim"` signs). The verifier must refuse such
/// ambiguous messages even when they carry a valid signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resplit_sig_messages_are_dropped() {
    let _shared = shared_process().await;
    let server = RedisServer::start().await;
    let sts = issuer().await;
    let v = ready_verifier(&sts, feed(&server)).await;
    let mut p = server.publisher().await;
    let victim_sid = "victim-resplit";
    let victim = sts.mandate().sid(victim_sid).sign();

    let dropped = status(&v).dropped;
    // Each message also names a carrier anchor: applying the message would revoke it.
    let newline_in_value = format!("x\nsid={victim_sid}");
    let newline_in_name = format!("sid={victim_sid}\nzone_id");
    // (case, carrier anchor, the ambiguous field)
    let cases: [(&str, &str, (&str, &str)); 4] = [
        (
            "a: `\\n` in a value",
            "carrier-value-newline",
            ("reason", newline_in_value.as_str()),
        ),
        (
            "b: `=` and `\\n` in a name",
            "carrier-name-newline",
            (newline_in_name.as_str(), "zone-1"),
        ),
        ("b: `=` in a name", "carrier-name-equals", ("reason=x", "y")),
        ("c: `\\r` in a value", "carrier-value-cr", ("reason", "x\r")),
    ];
    for (_, carrier, ambiguous) in cases {
        let fields = [("zone_id", "zone-1"), ("sid", carrier), ambiguous];
        xadd_signed(&mut p, SESSIONS_REVOKE_STREAM, "*", &fields).await;
    }
    // A plain revocation behind them: the stream did not stall.
    let after = sts.mandate().sid("after-resplit").sign();
    p.revoke("sid", "after-resplit").await;
    eventually_revoked(&v, &after, "the revocation behind the messages is enforced").await;

    let mut applied = Vec::new();
    for (case, carrier, _) in cases {
        let answer = check(&v, &sts.mandate().sid(carrier).sign()).await;
        if is_revoked(&answer) {
            applied.push(format!("{case} ({answer:?})"));
        }
    }
    assert!(
        applied.is_empty(),
        "ambiguous signed messages were applied: {applied:?}"
    );
    check(&v, &victim)
        .await
        .expect("the victim named only inside another field is not revoked");
    assert_eq!(status(&v).dropped, dropped + 4, "{:?}", status(&v));
    eventually_recovers(&v, &sts).await;
}

/// Attack: fill the revocation set past its capacity. No revocation may be
/// forgotten: every victim stays refused, and while the set is over capacity every
/// request fails closed. Once entries expire, service resumes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_revocation_set_never_loses_a_revocation() {
    let _shared = shared_process().await;
    let server = RedisServer::start().await;
    let sts = issuer().await;
    let clock = ManualClock::starting_now();
    sts.set_clock(clock.clone());
    // Longer than a victim's lifetime plus the 60 s leeway: each revocation outlives
    // every mandate it refuses.
    let set = RevocationSet::builder()
        .max_anchors(3)
        .ttl(Duration::from_secs(600))
        .clock(clock.clone())
        .build();
    let v = Verifier::builder()
        .issuer(sts.issuer_url())
        .audience("resource://api")
        .zone("zone-1")
        .clock(clock.clone())
        .revocations(set)
        .redis_revocations(feed(&server))
        .build()
        .expect("valid verifier settings");
    v.warm_up().await.expect("JWKS from the test issuer");
    eventually("the verifier becomes ready", async || v.is_ready()).await;

    let sids = ["full-v1", "full-v2", "full-v3", "full-v4", "full-v5"];
    let victims: Vec<String> = sids
        .iter()
        .map(|sid| sts.mandate().sid(*sid).ttl(30).sign())
        .collect();
    let innocent = sts.mandate().sign();
    for victim in &victims {
        check(&v, victim)
            .await
            .expect("valid before any revocation");
    }
    let mut p = server.publisher().await;
    for sid in sids {
        p.revoke("sid", sid).await;
    }

    eventually(
        "an innocent mandate fails closed over capacity",
        async || is_unavailable(&check(&v, &innocent).await),
    )
    .await;
    let err = check(&v, &innocent).await.unwrap_err();
    assert_eq!(err.status().as_u16(), 503);
    assert_eq!(err.code().as_str(), "revocation_unavailable");
    for (sid, victim) in sids.iter().zip(&victims) {
        let answer = check(&v, victim).await;
        assert!(
            is_revoked(&answer) || is_unavailable(&answer),
            "{sid}: {answer:?}"
        );
    }

    // Past the revocations' TTL: the victims have long expired, the set has room.
    clock.advance(Duration::from_secs(601));
    let innocent = sts.mandate().sign();
    eventually(
        "an innocent mandate verifies once entries expire",
        async || check(&v, &innocent).await.is_ok(),
    )
    .await;
    for (sid, victim) in sids.iter().zip(&victims) {
        assert!(check(&v, victim).await.is_err(), "{sid} verified");
    }
    assert!(status(&v).fresh, "{:?}", status(&v));
}

/// Attack: add a signed revocation and trim it away in one transaction, so the feed
/// never reads it. The lost history must be reported as a gap, and the feed must
/// fail closed until it has re-read what is retained, then recover by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimmed_stream_is_reported_as_a_gap() {
    let _shared = shared_process().await;
    let server = RedisServer::start().await;
    let sts = issuer().await;
    let v = ready_verifier(&sts, feed(&server)).await;
    let mut p = server.publisher().await;

    let fields = [
        ("zone_id", "zone-1"),
        ("sid", "victim-trimmed"),
        ("reason", "test"),
    ];
    let sig = sign_fields(&stream_key(), SESSIONS_REVOKE_STREAM, &fields);
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("XADD")
        .arg(SESSIONS_REVOKE_STREAM)
        .arg("*")
        .arg(&fields[..])
        .arg("_sig")
        .arg(&sig)
        .ignore()
        .cmd("XTRIM")
        .arg(SESSIONS_REVOKE_STREAM)
        .arg("MAXLEN")
        .arg(0)
        .ignore();
    let () = pipe.query_async(&mut p.conn).await.expect("MULTI/EXEC");

    // Redis 7.0 leaves `max-deleted-entry-id` at 0-0 after XTRIM; what betrays the
    // loss is `last-generated-id` beyond the cursor with nothing left to read.
    eventually("the lost entry is counted as a gap", async || {
        status(&v).gaps >= 1
    })
    .await;
    eventually_recovers(&v, &sts).await;
}

/// Attack: add a signed revocation and `XDEL` it in one script, so the feed never
/// reads it. Same expectation as a trim; here XINFO's `max-deleted-entry-id` moves
/// beyond the feed's cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_entry_is_reported_as_a_gap() {
    const ADD_AND_DELETE: &str = "local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV)) \
         redis.call('XDEL', KEYS[1], id) return id";
    let _shared = shared_process().await;
    let server = RedisServer::start().await;
    let sts = issuer().await;
    let v = ready_verifier(&sts, feed(&server)).await;
    let mut p = server.publisher().await;
    // An entry the feed did read, so the stream lives on after the deletion.
    let consumed = sts.mandate().sid("consumed-before-xdel").sign();
    p.revoke("sid", "consumed-before-xdel").await;
    eventually_revoked(&v, &consumed, "the first revocation is enforced").await;

    let fields = [
        ("zone_id", "zone-1"),
        ("sid", "victim-deleted"),
        ("reason", "test"),
    ];
    let sig = sign_fields(&stream_key(), SESSIONS_REVOKE_STREAM, &fields);
    let mut args: Vec<&str> = fields.iter().flat_map(|(k, v)| [*k, *v]).collect();
    args.extend(["_sig", &sig]);
    eval(&server, ADD_AND_DELETE, SESSIONS_REVOKE_STREAM, &args).await;

    eventually("the deleted entry is counted as a gap", async || {
        status(&v).gaps >= 1
    })
    .await;
    eventually_recovers(&v, &sts).await;
}

/// Attack: revoke an upstream delegation edge of a mandate that names its path only
/// in `delegation_path`, without a `delegation_chain`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_only_mandate_dies_when_an_upstream_edge_is_revoked() {
    let _shared = shared_process().await;
    let server = RedisServer::start().await;
    let sts = issuer().await;
    let v = ready_verifier(&sts, feed(&server)).await;
    let mut p = server.publisher().await;
    let path_only = |path: [&str; 2]| sts.mandate().delegation_path(path).sign();
    let victim = path_only(["edge-root", "edge-mid"]);
    let innocent = path_only(["edge-other", "edge-mid"]);
    check(&v, &victim)
        .await
        .expect("valid before any revocation");

    p.revoke("delegation_edge_id", "edge-root").await;
    eventually("the edge revocation is applied", async || {
        v.revocations().is_revoked("edge-root")
    })
    .await;
    assert_session_revoked(check(&v, &victim).await);
    check(&v, &innocent)
        .await
        .expect("a path without the revoked edge verifies");
    eventually_recovers(&v, &sts).await;
}

/// Attack: 20,000 small unsigned entries ahead of a real revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_flood_of_small_entries_keeps_answering() {
    const FLOOD: &str =
        "for i = 1, tonumber(ARGV[1]) do redis.call('XADD', KEYS[1], '*', 'junk', i) end";
    let _shared = shared_process().await;
    let server = RedisServer::start().await;
    let sts = issuer().await;
    let v = ready_verifier(&sts, feed(&server)).await;
    let mut p = server.publisher().await;
    let victim = sts.mandate().sid("victim-flood").sign();
    let innocent = sts.mandate().sign();
    check(&v, &victim)
        .await
        .expect("valid before any revocation");

    let dropped = status(&v).dropped;
    eval(&server, FLOOD, SESSIONS_REVOKE_STREAM, &["20000"]).await;
    p.revoke("sid", "victim-flood").await;

    eventually("the revocation behind the flood is enforced", async || {
        let answer = check(&v, &innocent).await;
        assert!(
            answer.is_ok() || is_unavailable(&answer),
            "the innocent mandate got {answer:?}"
        );
        is_revoked(&check(&v, &victim).await)
    })
    .await;
    // From here on the victim never verifies again, while the feed settles.
    eventually(
        "the feed is fresh again and an innocent mandate verifies",
        async || {
            assert_session_revoked(check(&v, &victim).await);
            status(&v).fresh && check(&v, &innocent).await.is_ok()
        },
    )
    .await;
    assert!(status(&v).dropped >= dropped + 20_000, "{:?}", status(&v));
}

/// Attack: a retained history long enough that the feed reads it in bulk (on a
/// second connection, through its own reply reader), salted with entries built to
/// confuse a RESP reader: values that hold CRLF and RESP headers, a nil marker,
/// bytes that are not UTF-8, empty names. The feed logs in as a user with the
/// README's ACL, so the bulk connection must authenticate too. Every signed
/// revocation in the history is enforced once the verifier is ready, and every junk
/// entry is dropped and counted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_history_of_resp_lookalikes_is_read_exactly() {
    const JUNK: &str = r"
for i = 1, tonumber(ARGV[1]) do
  local k = i % 4
  if k == 0 then
    redis.call('XADD', KEYS[1], '*', 'sid', '\r\n$3\r\nsid\r\n*2\r\n' .. i, 'zone_id', 'zone-1')
  elseif k == 1 then
    redis.call('XADD', KEYS[1], '*', 'zone_id', '\255\254', 'sid', 'x' .. i)
  elseif k == 2 then
    redis.call('XADD', KEYS[1], '*', '*-1\r\n', '$-1\r\n', '', '')
  else
    redis.call('XADD', KEYS[1], '*', 'zone_id', 'zone-1', 'sid', 'victim-junk-' .. i, '_sig', 'AAAA')
  end
end";
    const ROUNDS: usize = 12;
    const PER_ROUND: usize = 1_000;
    let _shared = shared_process().await;
    let server = RedisServer::start().await;
    let sts = issuer().await;
    let mut p = server.publisher().await;
    for round in 0..ROUNDS {
        eval(
            &server,
            JUNK,
            SESSIONS_REVOKE_STREAM,
            &[&PER_ROUND.to_string()],
        )
        .await;
        p.revoke("sid", &format!("victim-bulk-{round}")).await;
    }
    let bulk_feed = feed_as(&server, "bulk", README_ACL).await;
    let before = connections_received(server.port()).await;

    let v = ready_verifier(&sts, bulk_feed).await;
    // Ready means caught up: every revocation is in force at once.
    for round in 0..ROUNDS {
        let victim = sts.mandate().sid(format!("victim-bulk-{round}")).sign();
        assert_session_revoked(check(&v, &victim).await);
    }
    let forged = sts.mandate().sid("victim-junk-3").sign();
    check(&v, &forged)
        .await
        .expect("a revocation with a forged signature is not enforced");
    check(&v, &sts.mandate().sign())
        .await
        .expect("an innocent mandate verifies");
    let feed = status(&v);
    assert_eq!(feed.dropped, (ROUNDS * PER_ROUND) as u64, "{feed:?}");
    assert_eq!(feed.applied, ROUNDS as u64, "{feed:?}");
    // The history took more than one page: the feed opened its bulk connection
    // beside its main one (and the INFO query's own connections count too).
    let after = connections_received(server.port()).await;
    assert!(
        after >= before + 3,
        "the feed read its history on one connection ({before} -> {after} connections)"
    );
}

/// The ACL the README gives the feed's user, as one `ACL SETUSER` argument list.
const README_ACL: &[&str] = &[
    "on",
    ">feed-password",
    "~caracal.sessions.revoke",
    "~caracal.delegations.invalidate",
    "+xread",
    "+xrange",
    "+xinfo|stream",
    "+time",
    "+info",
    "+eval",
    "+ping",
    "+hello",
    "+auth",
    "+select",
];

/// A feed that logs in as `user`, given `rules`, with the suite's usual settings.
async fn feed_as(server: &RedisServer, user: &str, rules: &[&str]) -> RedisRevocations {
    let mut p = server.publisher().await;
    p.query(redis::cmd("ACL").arg("SETUSER").arg(user).arg(rules))
        .await;
    let url = format!("redis://{user}:feed-password@127.0.0.1:{}", server.port());
    RedisRevocations::new(url)
        .stream_key(stream_key())
        .max_staleness(Duration::from_secs(2))
        .block_timeout(Duration::from_millis(250))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(250))
}

/// The README's ACL is enough: the feed becomes ready, enforces a revocation, and
/// reads past an oversized entry (which needs `EVAL`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_acl_is_enough_for_the_feed() {
    let _shared = shared_process().await;
    let server = RedisServer::start().await;
    let sts = issuer().await;
    let v = ready_verifier(&sts, feed_as(&server, "feed", README_ACL).await).await;
    let victim = sts.mandate().sid("victim-acl").sign();
    eval(
        &server,
        "return redis.call('XADD', KEYS[1], '*', 'junk', string.rep('x', 2097152))",
        SESSIONS_REVOKE_STREAM,
        &[],
    )
    .await;
    server.publisher().await.revoke("sid", "victim-acl").await;
    eventually_revoked(
        &v,
        &victim,
        "the revocation behind the oversized entry is enforced",
    )
    .await;
    eventually_recovers(&v, &sts).await;
}

/// A user that may read the streams but not run `XINFO STREAM` cannot detect lost
/// history: the feed must say so and stay not ready (503), not run blind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_without_xinfo_keeps_the_feed_not_ready() {
    let _shared = shared_process().await;
    let server = RedisServer::start().await;
    let sts = issuer().await;
    let rules: Vec<&str> = README_ACL
        .iter()
        .copied()
        .filter(|r| *r != "+xinfo|stream")
        .collect();
    let v = verifier(&sts, feed_as(&server, "blind", &rules).await).await;
    let mut p = server.publisher().await;
    // Wait until the server has refused the feed's XINFO at least twice (so the feed
    // had a whole retry to get past it), as its ACL log records.
    eventually("the server refuses the feed's XINFO", async || {
        let log = p.query(redis::cmd("ACL").arg("LOG")).await;
        format!("{log:?}").matches("xinfo").count() >= 1
            && matches!(&log, redis::Value::Array(entries) if !entries.is_empty())
    })
    .await;
    assert!(!v.is_ready(), "{:?}", v.readiness());
    assert!(!status(&v).fresh, "{:?}", status(&v));
    let answer = check(&v, &sts.mandate().sign()).await;
    assert!(is_unavailable(&answer), "{answer:?}");
}
