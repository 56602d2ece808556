//! Goal 5: revocation propagation. From the `XADD` of a signed revocation to the
//! first rejected verification on each of two replicas; goal p99 ≤ 10 ms on loopback.
//!
//! Run (needs `redis-server` on `PATH`):
//!
//! ```text
//! cargo bench --all-features --bench propagation
//! ```
//!
//! It starts its own `redis-server` on an ephemeral loopback port (no persistence),
//! a `TestIssuer`, and two `Verifier` replicas, each with its own `RedisRevocations`
//! feed (signed events, `StreamKey`), keys fetched and feeds caught up. Then, N times
//! (`CARACAL_PROPAGATION_N`, default 300): mint a mandate with a fresh `sid`, verify
//! it on both replicas, start one checker thread per replica that calls `verify()`
//! back to back (yielding the CPU between calls), record t0, `XADD` a signed
//! revocation of the `sid`, and record when each checker first sees
//! `session_revoked`. Prints p50/p90/p99/max per replica.
//!
//! Without `--bench` (e.g. `cargo test --benches`) it runs 10 rounds as a smoke test;
//! other criterion-style arguments are ignored.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use caracal_verifier::redis::RedisRevocations;
use caracal_verifier::revocation::{SESSIONS_REVOKE_STREAM, sign_fields};
use caracal_verifier::testing::TestIssuer;
use caracal_verifier::{ErrorCode, Requirements, Verifier};

mod common;
use common::{ms, now, percentile};

// The Redis tests' helpers: a real `redis-server` on a free loopback port, killed on
// drop, and the stream key.
#[path = "../tests/redis_common/mod.rs"]
mod redis_common;
use redis_common::{RedisServer, stream_key};

/// The longest a checker waits for the revocation before the run fails.
const DEADLINE: Duration = Duration::from_secs(10);

/// Verify until the mandate is rejected as revoked; returns when that happened.
fn until_revoked(v: &Verifier, token: &str, reqs: &Requirements, start: &Barrier) -> Instant {
    // The first call happens before the barrier: the mandate is cached and accepted.
    now(v.verify(token, reqs)).expect("accepted before the revocation");
    start.wait();
    let began = Instant::now();
    loop {
        match now(v.verify(token, reqs)) {
            Ok(_) => {}
            Err(e) if e.code() == ErrorCode::SessionRevoked => return Instant::now(),
            Err(e) => panic!("unexpected rejection while waiting for the revocation: {e}"),
        }
        assert!(
            began.elapsed() < DEADLINE,
            "the revocation did not arrive within {DEADLINE:?}"
        );
        std::thread::yield_now();
    }
}

fn main() {
    let Some((_, n)) = common::rounds("CARACAL_PROPAGATION_N", 300, 10) else {
        return;
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let key = stream_key();
    let (_redis, sts, replicas, mut conn) = rt.block_on(async {
        let redis = RedisServer::start().await;
        let sts = TestIssuer::start("zone-1")
            .await
            .expect("start the test issuer");
        let mut replicas = Vec::new();
        for _ in 0..2 {
            let v = Verifier::builder()
                .issuer(sts.issuer_url())
                .audience("resource://api")
                .zone("zone-1")
                .redis_revocations(RedisRevocations::new(redis.url()).stream_key(key.clone()))
                .build()
                .expect("verifier settings");
            v.warm_up().await.expect("JWKS from the test issuer");
            let started = Instant::now();
            while !v.is_ready() {
                assert!(
                    started.elapsed() < DEADLINE,
                    "the revocation feed never became ready"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            replicas.push(v);
        }
        let conn = redis::Client::open(redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis-server");
        (redis, sts, replicas, conn)
    });

    let reqs = Requirements::new().scopes(["tickets:read"]);
    let mut latencies: [Vec<Duration>; 2] = [Vec::with_capacity(n), Vec::with_capacity(n)];
    for i in 0..n {
        let sid = format!("prop-sid-{i}-{}", std::process::id());
        let token = sts
            .mandate()
            .sid(sid.as_str())
            .scopes(["tickets:read"])
            .ttl(3600)
            .sign();
        let mut fields = vec![
            ("zone_id".to_owned(), "zone-1".to_owned()),
            ("sid".to_owned(), sid.clone()),
            ("reason".to_owned(), "bench".to_owned()),
        ];
        let sig = sign_fields(&key, SESSIONS_REVOKE_STREAM, &fields);
        fields.push(("_sig".to_owned(), sig));
        let mut xadd = redis::cmd("XADD");
        xadd.arg(SESSIONS_REVOKE_STREAM).arg("*");
        for (k, v) in &fields {
            xadd.arg(k).arg(v);
        }

        let start = Barrier::new(replicas.len() + 1);
        let (t0, seen) = std::thread::scope(|scope| {
            let checkers: Vec<_> = replicas
                .iter()
                .map(|v| scope.spawn(|| until_revoked(v, &token, &reqs, &start)))
                .collect();
            start.wait();
            let t0 = Instant::now();
            let _: String = rt.block_on(xadd.query_async(&mut conn)).expect("XADD");
            let seen: Vec<Instant> = checkers.into_iter().map(|h| h.join().unwrap()).collect();
            (t0, seen)
        });
        for (r, at) in seen.into_iter().enumerate() {
            latencies[r].push(at.saturating_duration_since(t0));
        }
    }

    println!("propagation: {n} revocations, XADD -> first rejected verify(), 2 replicas");
    println!("replica      p50 ms    p90 ms    p99 ms    max ms");
    let mut worst_p99 = Duration::ZERO;
    for (r, lat) in latencies.iter_mut().enumerate() {
        lat.sort();
        let p99 = percentile(lat, 99.0);
        worst_p99 = worst_p99.max(p99);
        println!(
            "replica {}  {:>8.3}  {:>8.3}  {:>8.3}  {:>8.3}",
            r + 1,
            ms(percentile(lat, 50.0)),
            ms(percentile(lat, 90.0)),
            ms(p99),
            ms(*lat.last().unwrap())
        );
    }
    println!("worst p99 = {:.3} ms (goal <= 10 ms)", ms(worst_p99));
    for v in &replicas {
        if let Some(feed) = v.revocation_feed() {
            rt.block_on(feed.shutdown());
        }
    }
}
