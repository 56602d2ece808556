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

use std::future::Future;
use std::net::TcpListener;
use std::pin::pin;
use std::process::{Child, Command, Stdio};
use std::sync::Barrier;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use caracal_verifier::redis::RedisRevocations;
use caracal_verifier::revocation::{SESSIONS_REVOKE_STREAM, StreamKey, sign_fields};
use caracal_verifier::testing::TestIssuer;
use caracal_verifier::{ErrorCode, Requirements, Verifier};

const KEY_HEX: &str = "4a7f1c0e9b2d38a65f0c1e7d92b4a3c8d5e6f70819a2b3c4d5e6f708192a3b4c";

/// The longest a checker waits for the revocation before the run fails.
const DEADLINE: Duration = Duration::from_secs(10);

const INSTALL_HINT: &str = "redis-server is not on PATH. The propagation benchmark runs a real \
     server: install it (Debian/Ubuntu: `apt-get install redis-server`, macOS: \
     `brew install redis`) and run it again";

/// Drive a future that completes without waiting (warm keys, no I/O).
fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("verification suspended: keys not warm?"),
    }
}

/// A `redis-server` child process on a loopback port, killed on drop.
struct RedisServer {
    port: u16,
    child: Child,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

impl RedisServer {
    /// Start a server on a free port, retrying when another process takes it first.
    async fn start() -> Self {
        for _ in 0..10 {
            let port = free_port();
            if let Some(child) = spawn_on(port).await {
                return RedisServer { port, child };
            }
        }
        panic!("redis-server failed to start on 10 different ports");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// Spawn `redis-server` on `port` and wait until that very process answers.
async fn spawn_on(port: u16) -> Option<Child> {
    let spawned = Command::new("redis-server")
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(["--daemonize", "no"])
        .args(["--loglevel", "warning"])
        .arg("--dir")
        .arg(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{INSTALL_HINT}"),
        Err(e) => panic!("cannot run redis-server: {e}"),
    };
    let url = format!("redis://127.0.0.1:{port}");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        if child.try_wait().ok().flatten().is_some() {
            return None; // It exited: most likely the port was taken.
        }
        if let Some(pid) = server_pid(&url).await {
            if pid == child.id() {
                return Some(child);
            }
            break; // Someone else's server answers on this port.
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

async fn server_pid(url: &str) -> Option<u32> {
    let client = redis::Client::open(url).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

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
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let full = args.iter().any(|a| a == "--bench");
    let n: usize = if full {
        std::env::var("CARACAL_PROPAGATION_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300)
    } else {
        10
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let key = StreamKey::from_hex(KEY_HEX).unwrap();
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
