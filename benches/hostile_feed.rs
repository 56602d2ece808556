//! The revocation feed under a hostile Redis writer (issue "fail closed for real").
//!
//! Run (needs `redis-server` on `PATH`):
//!
//! ```text
//! cargo bench --all-features --bench hostile_feed
//! ```
//!
//! It starts its own `redis-server` on an ephemeral loopback port, a `TestIssuer` and
//! a `Verifier` with a signed Redis feed, then measures, in one run:
//!
//! 1. **Reset to enforcement.** N times (`CARACAL_HOSTILE_N`, default 200): the
//!    stream is deleted and a signed revocation of a fresh `sid` is added; the time
//!    from that `XADD` until `verify()` first answers `session_revoked`. Two variants:
//!    a plain `DEL`, and the attack of the issue, where an unsigned entry with a
//!    far-future id (`99999999999999-0`) was added and seen first.
//! 2. **Request latency with a huge unsigned entry.** `verify()` of a cached mandate,
//!    timed call by call (20,000 calls), first with an empty stream, then from the
//!    moment a 100 MiB unsigned entry is added (built inside Redis by `EVAL`, so this
//!    process never holds it) until the feed has dropped it and 20,000 calls were made.
//! 3. **Resident memory.** Sampled every 2 ms: the baseline, the peak during (2), and
//!    the peak while a second verifier starts and catches up past four 100 MiB
//!    entries.
//!
//! Without `--bench` (e.g. `cargo test --benches`) it runs a smoke version with
//! 4 MiB entries and a few rounds.

use std::time::{Duration, Instant};

use caracal_verifier::redis::RedisRevocations;
use caracal_verifier::revocation::{SESSIONS_REVOKE_STREAM, sign_fields};
use caracal_verifier::testing::TestIssuer;
use caracal_verifier::{ErrorCode, Requirements, Verifier};

mod common;
use common::{ms, now, percentile};

#[path = "../tests/redis_common/mod.rs"]
mod redis_common;
use redis_common::{RedisServer, RssSampler, ready_verifier as ready, resident_bytes, stream_key};

const DEADLINE: Duration = Duration::from_secs(20);

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn summary(label: &str, lat: &mut [Duration], unit: fn(Duration) -> f64, name: &str) {
    lat.sort();
    println!(
        "{label:<44} n={:<6} p50={:>9.3} {name}  p99={:>9.3} {name}  max={:>9.3} {name}",
        lat.len(),
        unit(percentile(lat, 50.0)),
        unit(percentile(lat, 99.0)),
        unit(*lat.last().unwrap())
    );
}

fn dropped(v: &Verifier) -> u64 {
    v.revocation_feed()
        .and_then(|f| f.status().feed)
        .map_or(0, |s| s.dropped)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(
            started.elapsed() < DEADLINE,
            "timed out waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn main() {
    let Some((full, rounds)) = common::rounds("CARACAL_HOSTILE_N", 200, 5) else {
        return;
    };
    let huge: usize = if full { 100 << 20 } else { 4 << 20 };
    let calls = if full { 20_000 } else { 1_000 };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let key = stream_key();
    let feed = |url: String| RedisRevocations::new(url).stream_key(stream_key());
    let (redis, sts, v, mut conn) = rt.block_on(async {
        let redis = RedisServer::start().await;
        let sts = TestIssuer::start("zone-1")
            .await
            .expect("start the test issuer");
        let v = ready(&sts, feed(redis.url())).await;
        // No response timeout: Redis takes a while to build a 100 MiB entry.
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        let conn = redis::Client::open(redis.url())
            .unwrap()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("connect to redis-server");
        (redis, sts, v, conn)
    });
    let reqs = Requirements::new().scopes(["tickets:read"]);
    let mut query = |cmd: &redis::Cmd| -> redis::Value {
        rt.block_on(cmd.query_async(&mut conn))
            .expect("redis command")
    };
    let baseline = resident_bytes().unwrap_or(0);

    // 1. Reset to enforcement.
    for junk_first in [false, true] {
        let mut lat = Vec::with_capacity(rounds);
        for i in 0..rounds {
            if junk_first {
                let seen = dropped(&v);
                let mut junk = redis::cmd("XADD");
                // A new id each round: the feed reports an entry ahead of the clock
                // once per id it has not seen.
                junk.arg(SESSIONS_REVOKE_STREAM)
                    .arg(format!("99999999999999-{i}"))
                    .arg("junk")
                    .arg("x");
                query(&junk);
                wait_until("the far-future entry is seen", || dropped(&v) > seen);
            }
            query(redis::cmd("DEL").arg(SESSIONS_REVOKE_STREAM));
            let sid = format!("reset-{junk_first}-{i}");
            let token = sts
                .mandate()
                .sid(sid.as_str())
                .scopes(["tickets:read"])
                .ttl(3600)
                .sign();
            // Accepted before the revocation (a 503 while the feed re-reads the
            // deleted stream is failing closed; wait it out).
            wait_until("the mandate is accepted", || {
                now(v.verify(&token, &reqs)).is_ok()
            });
            let fields = [
                ("zone_id", "zone-1"),
                ("sid", sid.as_str()),
                ("reason", "bench"),
            ];
            let sig = sign_fields(&key, SESSIONS_REVOKE_STREAM, &fields);
            let mut xadd = redis::cmd("XADD");
            xadd.arg(SESSIONS_REVOKE_STREAM).arg("*");
            for (k, val) in fields.iter().chain([&("_sig", sig.as_str())]) {
                xadd.arg(*k).arg(*val);
            }
            let t0 = Instant::now();
            query(&xadd);
            loop {
                match now(v.verify(&token, &reqs)) {
                    Ok(_) => {}
                    Err(e) if e.code() == ErrorCode::SessionRevoked => break,
                    // Briefly not fresh while re-reading: fail closed, keep waiting.
                    Err(e) if e.code() == ErrorCode::RevocationUnavailable => {}
                    Err(e) => panic!("unexpected rejection: {e}"),
                }
                assert!(t0.elapsed() < DEADLINE, "the revocation was never enforced");
                std::thread::yield_now();
            }
            lat.push(t0.elapsed());
        }
        let label = if junk_first {
            "reset: far-future junk, DEL, signed XADD"
        } else {
            "reset: DEL, signed XADD"
        };
        summary(label, &mut lat, ms, "ms");
    }
    query(redis::cmd("DEL").arg(SESSIONS_REVOKE_STREAM));

    // 2. Request latency, empty stream, then with a huge unsigned entry.
    let token = sts.mandate().scopes(["tickets:read"]).ttl(3600).sign();
    now(v.verify(&token, &reqs)).expect("a valid mandate");
    // Samples go into a buffer allocated and touched up front, so recording them
    // does not show up as resident memory.
    let cap = if full { 8_000_000 } else { 1_000_000 };
    let mut samples = vec![Duration::ZERO; cap];
    let timed = |samples: &mut [Duration], n: usize, until: &dyn Fn() -> bool| {
        let (mut i, mut refused) = (0usize, 0u64);
        while i < n || !until() {
            let t = Instant::now();
            if now(v.verify(&token, &reqs)).is_err() {
                refused += 1;
            }
            samples[i.min(cap - 1)] = t.elapsed();
            i += 1;
        }
        assert!(i <= cap, "more calls ({i}) than the sample buffer holds");
        (i, refused)
    };
    let (n, refused_empty) = timed(&mut samples, calls, &|| true);
    let mut empty = samples[..n].to_vec();
    let before = dropped(&v);
    let big = redis::cmd("EVAL")
        .arg("return redis.call('XADD', KEYS[1], '*', 'junk', string.rep('x', tonumber(ARGV[1])))")
        .arg(1)
        .arg(SESSIONS_REVOKE_STREAM)
        .arg(huge)
        .clone();
    let base_live = resident_bytes().unwrap_or(0);
    let sampler = RssSampler::start(Duration::from_millis(2));
    query(&big);
    let (n, refused_huge) = timed(&mut samples, calls, &|| dropped(&v) > before);
    let peak_live = sampler.finish();
    let mut with_huge = samples[..n].to_vec();
    summary("verify() warm, empty stream", &mut empty, us, "us");
    summary(
        &format!("verify() warm, {} MiB unsigned entry added", huge >> 20),
        &mut with_huge,
        us,
        "us",
    );
    println!(
        "ratio p50 {:.2}, p99 {:.2}; refused: {refused_empty} (empty), {refused_huge} (huge)",
        us(percentile(&with_huge, 50.0)) / us(percentile(&empty, 50.0)),
        us(percentile(&with_huge, 99.0)) / us(percentile(&empty, 99.0)),
    );
    drop((empty, with_huge, samples));

    // 3. A second verifier catches up past four huge entries.
    for _ in 0..3 {
        query(&big);
    }
    let base_catch_up = resident_bytes().unwrap_or(0);
    let sampler = RssSampler::start(Duration::from_millis(2));
    let started = Instant::now();
    let v2 = rt.block_on(ready(&sts, feed(redis.url())));
    let caught_up = started.elapsed();
    let peak_catch_up = sampler.finish();
    println!(
        "resident memory: process baseline {:.1} MiB; a live {} MiB entry: {:.1} -> peak {:.1} MiB (+{:.1}); \
         a new feed catching up past four: {:.1} -> peak {:.1} MiB (+{:.1})",
        mib(baseline),
        huge >> 20,
        mib(base_live),
        mib(peak_live),
        mib(peak_live.saturating_sub(base_live)),
        mib(base_catch_up),
        mib(peak_catch_up),
        mib(peak_catch_up.saturating_sub(base_catch_up)),
    );
    println!(
        "new feed ready after {:.0} ms (keys and catch-up), dropped {}",
        ms(caught_up),
        dropped(&v2)
    );
    for v in [&v, &v2] {
        if let Some(f) = v.revocation_feed() {
            rt.block_on(f.shutdown());
        }
    }
    drop(redis);
}
