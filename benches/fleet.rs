//! Issue 15, fleet scale: many replicas on one Redis, and the cold-start catch-up.
//!
//! Run (needs `redis-server` on `PATH`):
//!
//! ```text
//! cargo bench --bench fleet --features redis
//! ```
//!
//! It starts its own `redis-server` on an ephemeral loopback port (no persistence)
//! and a `TestIssuer`, then measures, in one run:
//!
//! 1. **Fleet propagation.** `FLEET_REPLICAS` (default 256) `Verifier`s, each with
//!    its own `RedisRevocations` feed: its own connection, its own thread and
//!    single-threaded runtime, its own `RevocationSet`, default settings (signed
//!    events, 1 s block timeout). Keys are fetched and every feed is fresh before
//!    the first event. Then, `FLEET_EVENTS` times (default 300): wait until every
//!    feed is back in its blocking `XREAD` (`INFO clients`, `blocked_clients`), take
//!    t0 just before sending a signed `XADD` of a fresh `sid`, and poll every
//!    replica's set from this thread (yielding between passes, the `XADD` reply read
//!    only afterwards) until the last of them holds the `sid`. Prints p50/p99/max of the delay to the first, the median and the last
//!    replica. After the last event, `verify()` of a mandate with that `sid` is
//!    checked to answer `session_revoked` on every replica.
//! 2. **Redis cost.** `INFO cpu` (`used_cpu_sys` + `used_cpu_user`), `INFO stats`
//!    (`total_net_output_bytes`) and `INFO commandstats` before and after the events,
//!    divided by the events; and the same over an idle window as long as the event
//!    phase (the feeds' 1 s block timeouts are what the fleet costs at rest).
//! 3. **Memory.** A counting global allocator (live heap bytes) and the resident
//!    set (`/proc/self/statm`): the growth from starting the replicas, divided by
//!    them, next to the same for verifiers without a feed.
//! 4. **Cold start.** After the fleet is shut down and Redis flushed,
//!    `FLEET_COLD_EVENTS` (default 1,000,000) signed revocations are written with
//!    pipelined `XADD`s; then one verifier with a feed is built and timed until its
//!    revocation set is current (`readiness().revocation`), with the heap and
//!    resident set it grew by and their peaks.
//!
//! `FLEET_COLD_EVENTS=0` skips the cold start. Without `--bench` (e.g. `cargo test --benches`) it runs a smoke version: 8
//! replicas, 20 events, 20,000 retained events.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use caracal_verifier::redis::RedisRevocations;
use caracal_verifier::revocation::{SESSIONS_REVOKE_STREAM, StreamKey, sign_fields};
use caracal_verifier::testing::TestIssuer;
use caracal_verifier::{ErrorCode, Requirements, Verifier};

mod common;
use common::{ms, now, percentile};

#[path = "../tests/redis_common/mod.rs"]
mod redis_common;
use redis_common::{RedisServer, RssSampler, resident_bytes, stream_key};

/// Live heap bytes of this process, and their peak since the last [`reset_peak`].
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let live = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    if live > PEAK.load(Ordering::Relaxed) {
        PEAK.fetch_max(live, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counters
// only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live_heap() -> usize {
    LIVE.load(Ordering::Relaxed)
}

fn reset_peak() {
    PEAK.store(live_heap(), Ordering::Relaxed);
}

fn peak_heap() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// The longest any one wait may take before the run fails.
const DEADLINE: Duration = Duration::from_secs(60);

fn kib(b: f64) -> f64 {
    b / 1024.0
}

fn mib(b: f64) -> f64 {
    b / (1024.0 * 1024.0)
}

fn env_or(var: &str, full: bool, full_default: usize, smoke: usize) -> usize {
    if !full {
        return smoke;
    }
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(full_default)
}

/// `XADD` of a signed revocation of `sid`, shaped like Caracal's (zone, anchor,
/// reason, grant and outbox ids, `_sig`): about 230 bytes of fields.
fn revocation(key: &StreamKey, sid: &str, n: usize) -> redis::Cmd {
    let grant = format!("grant-{n:012}-4c1e-9a7b-2f0d3e8c5a61");
    let outbox = format!("outbox-{n:012}-7d2a-41f3-b6e0-93c4d1a8");
    let mut fields = vec![
        ("zone_id", "zone-1"),
        ("sid", sid),
        ("reason", "grant_revoked"),
        ("grant_id", grant.as_str()),
        ("outbox_id", outbox.as_str()),
    ];
    let sig = sign_fields(key, SESSIONS_REVOKE_STREAM, &fields);
    fields.push(("_sig", sig.as_str()));
    let mut cmd = redis::cmd("XADD");
    cmd.arg(SESSIONS_REVOKE_STREAM).arg("*");
    for (k, v) in &fields {
        cmd.arg(*k).arg(*v);
    }
    cmd
}

/// The fields of an `INFO` section as numbers, by name.
fn info(conn: &mut redis::Connection, section: &str) -> BTreeMap<String, String> {
    let text: String = redis::cmd("INFO").arg(section).query(conn).expect("INFO");
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

fn number(map: &BTreeMap<String, String>, key: &str) -> f64 {
    map.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("INFO has no number {key}"))
}

/// Redis's own counters at one moment.
#[derive(Debug, Clone)]
struct RedisCost {
    at: Instant,
    /// `used_cpu_sys + used_cpu_user`, seconds.
    cpu: f64,
    net_out: f64,
    net_in: f64,
    /// `cmdstat_<name>` → (calls, usec).
    commands: BTreeMap<String, (f64, f64)>,
}

impl RedisCost {
    fn read(conn: &mut redis::Connection) -> Self {
        let cpu = info(conn, "cpu");
        let stats = info(conn, "stats");
        let commands = info(conn, "commandstats")
            .into_iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix("cmdstat_")?.to_owned();
                let field = |f: &str| -> f64 {
                    v.split(',')
                        .find_map(|kv| kv.strip_prefix(f)?.strip_prefix('='))
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0.0)
                };
                Some((name, (field("calls"), field("usec"))))
            })
            .collect();
        Self {
            at: Instant::now(),
            cpu: number(&cpu, "used_cpu_sys") + number(&cpu, "used_cpu_user"),
            net_out: number(&stats, "total_net_output_bytes"),
            net_in: number(&stats, "total_net_input_bytes"),
            commands,
        }
    }

    /// What happened between `self` and `later`.
    fn delta(&self, later: &Self) -> RedisDelta {
        let commands = later
            .commands
            .iter()
            .map(|(k, &(calls, usec))| {
                let (c0, u0) = self.commands.get(k).copied().unwrap_or((0.0, 0.0));
                (k.clone(), (calls - c0, usec - u0))
            })
            .filter(|(_, (calls, _))| *calls > 0.0)
            .collect();
        RedisDelta {
            wall: later.at - self.at,
            cpu: later.cpu - self.cpu,
            net_out: later.net_out - self.net_out,
            net_in: later.net_in - self.net_in,
            commands,
        }
    }
}

struct RedisDelta {
    wall: Duration,
    cpu: f64,
    net_out: f64,
    net_in: f64,
    commands: BTreeMap<String, (f64, f64)>,
}

impl RedisDelta {
    /// Calls of the commands the feeds send (not this bench's `INFO` and `XADD`).
    fn feed_calls(&self) -> f64 {
        self.commands
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "info" | "xadd" | "flushall"))
            .map(|(_, (c, _))| c)
            .sum()
    }
}

/// CPU seconds of this process's threads whose name starts with `prefix`
/// (`/proc/self/task/*/stat`, 100 Hz ticks).
fn thread_cpu(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    let mut ticks = 0u64;
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with(prefix) {
            continue;
        }
        // After the name: state is field 3; utime and stime are fields 14 and 15.
        let rest: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        ticks += rest
            .get(11)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        ticks += rest
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    ticks as f64 / 100.0
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// Wait until every feed sits in its blocking `XREAD`: the fleet is at rest.
fn at_rest(conn: &mut redis::Connection, replicas: usize) -> usize {
    let started = Instant::now();
    let mut polls = 0;
    loop {
        polls += 1;
        if number(&info(conn, "clients"), "blocked_clients") as usize >= replicas {
            return polls;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the feeds did not all return to XREAD BLOCK"
        );
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn builder(sts: &TestIssuer) -> caracal_verifier::VerifierBuilder {
    Verifier::builder()
        .issuer(sts.issuer_url())
        .audience("resource://api")
        .zone("zone-1")
}

fn feed(redis: &RedisServer) -> RedisRevocations {
    RedisRevocations::new(redis.url()).stream_key(stream_key())
}

/// Poll `done` every millisecond until it holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < DEADLINE,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn main() {
    let Some((full, events)) = common::rounds("FLEET_EVENTS", 300, 20) else {
        return;
    };
    let replicas = env_or("FLEET_REPLICAS", full, 256, 8);
    let cold_events = env_or("FLEET_COLD_EVENTS", full, 1_000_000, 20_000);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let key = stream_key();
    let (redis, sts) = rt.block_on(async {
        let redis = RedisServer::start().await;
        let sts = TestIssuer::start("zone-1")
            .await
            .expect("start the test issuer");
        (redis, sts)
    });
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .expect("connect to redis-server");

    // Once-per-process state (TLS roots, the HTTP client's globals, this issuer's
    // first connections) is set up before anything is measured.
    rt.block_on(async {
        for _ in 0..2 {
            let v = builder(&sts).build().expect("verifier settings");
            v.warm_up().await.expect("JWKS from the test issuer");
        }
    });

    // Verifiers without a feed, for comparison: what a replica costs anyway. Keys
    // are fetched only after the memory is read (the loopback issuer's side of each
    // HTTP connection lives in this process too).
    let (heap0, rss0) = (live_heap(), resident_bytes().unwrap_or(0));
    let bare: Vec<Verifier> = (0..replicas)
        .map(|_| builder(&sts).build().expect("verifier settings"))
        .collect();
    let bare_heap = live_heap().saturating_sub(heap0) as f64 / replicas as f64;
    let bare_rss = resident_bytes().unwrap_or(0).saturating_sub(rss0) as f64 / replicas as f64;
    drop(bare);

    // The fleet.
    let (heap0, rss0, threads0) = (live_heap(), resident_bytes().unwrap_or(0), threads());
    let started = Instant::now();
    let fleet: Vec<Verifier> = (0..replicas)
        .map(|_| {
            builder(&sts)
                .redis_revocations(feed(&redis))
                .build()
                .expect("verifier settings")
        })
        .collect();
    rt.block_on(until("every feed is fresh", || {
        fleet.iter().all(|v| v.readiness().revocation)
    }));
    let startup = started.elapsed();
    at_rest(&mut conn, replicas);
    let fleet_heap = live_heap().saturating_sub(heap0) as f64 / replicas as f64;
    let fleet_rss = resident_bytes().unwrap_or(0).saturating_sub(rss0) as f64 / replicas as f64;
    let fleet_threads = threads() - threads0;
    rt.block_on(async {
        for v in &fleet {
            v.warm_up().await.expect("JWKS from the test issuer");
        }
    });
    let keys_heap = live_heap().saturating_sub(heap0) as f64 / replicas as f64 - fleet_heap;

    let sets: Vec<_> = fleet.iter().map(|v| v.revocations().clone()).collect();
    let pid = std::process::id();
    let mut first = Vec::with_capacity(events);
    let mut median = Vec::with_capacity(events);
    let mut last = Vec::with_capacity(events);
    let mut polls = 0;
    let feed_cpu0 = thread_cpu("caracal-revocat");
    let before = RedisCost::read(&mut conn);
    let mut arrival = vec![Duration::ZERO; replicas];
    let mut sid = String::new();
    for e in 0..events {
        polls += at_rest(&mut conn, replicas);
        sid = format!("fleet-sid-{pid}-{e}");
        let xadd = revocation(&key, &sid, e).get_packed_command();
        let mut pending: Vec<usize> = (0..replicas).collect();
        // The reply is read only after the last replica holds the event: this thread
        // starts polling at once rather than behind 256 replicas' wake-ups.
        let t0 = Instant::now();
        conn.send_packed_command(&xadd).expect("XADD");
        while !pending.is_empty() {
            pending.retain(|&r| {
                if sets[r].is_revoked(&sid) {
                    arrival[r] = t0.elapsed();
                    false
                } else {
                    true
                }
            });
            assert!(
                t0.elapsed() < DEADLINE,
                "event {e} did not reach {} replicas within {DEADLINE:?}",
                pending.len()
            );
            std::thread::yield_now();
        }
        if let redis::Value::ServerError(e) = conn.recv_response().expect("XADD") {
            panic!("XADD failed: {e:?}");
        }
        arrival.sort();
        first.push(arrival[0]);
        median.push(arrival[replicas / 2]);
        last.push(arrival[replicas - 1]);
    }
    polls += at_rest(&mut conn, replicas);
    let after = RedisCost::read(&mut conn);
    let feed_cpu = thread_cpu("caracal-revocat") - feed_cpu0;
    let busy = before.delta(&after);

    // Every replica enforces the last revocation through `verify()`.
    let token = sts
        .mandate()
        .sid(sid.as_str())
        .scopes(["tickets:read"])
        .ttl(3600)
        .sign();
    let reqs = Requirements::new().scopes(["tickets:read"]);
    for (r, v) in fleet.iter().enumerate() {
        match now(v.verify(&token, &reqs)) {
            Err(e) if e.code() == ErrorCode::SessionRevoked => {}
            other => panic!("replica {r} does not enforce the revocation: {other:?}"),
        }
    }

    // The same wall time with no events.
    let idle_cpu0 = thread_cpu("caracal-revocat");
    let idle0 = RedisCost::read(&mut conn);
    std::thread::sleep(busy.wall);
    let idle1 = RedisCost::read(&mut conn);
    let idle_feed_cpu = thread_cpu("caracal-revocat") - idle_cpu0;
    let idle = idle0.delta(&idle1);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    println!(
        "fleet: {replicas} replicas (one connection, thread and set each), {events} events, \
         ready in {:.0} ms",
        ms(startup)
    );
    println!("delay from XADD until the set holds the sid   p50 ms    p99 ms    max ms");
    for (label, lat) in [
        ("first replica", &mut first),
        ("median replica", &mut median),
        ("last replica (every replica enforces)", &mut last),
    ] {
        lat.sort();
        println!(
            "{label:<44} {:>8.3}  {:>8.3}  {:>8.3}",
            ms(percentile(lat, 50.0)),
            ms(percentile(lat, 99.0)),
            ms(*lat.last().unwrap())
        );
    }
    println!(
        "last replica p99 = {:.3} ms (goal <= 10 ms)",
        ms(percentile(&last, 99.0))
    );
    let n = events as f64;
    let per_replica = n * replicas as f64;
    println!(
        "redis, events phase ({:.1} s): cpu {:.3} s = {:.1} us/event ({:.2} us/event/replica); \
         out {:.0} B/event ({:.0} B/event/replica); in {:.0} B/event/replica; \
         {:.1} feed commands/event/replica; this bench's INFO polls: {polls}",
        busy.wall.as_secs_f64(),
        busy.cpu,
        busy.cpu / n * 1e6,
        busy.cpu / per_replica * 1e6,
        busy.net_out / n,
        busy.net_out / per_replica,
        busy.net_in / per_replica,
        busy.feed_calls() / per_replica,
    );
    println!(
        "redis, idle over the same wall time ({:.1} s): cpu {:.3} s ({:.1} us/s); out {:.0} B/s; \
         {:.0} feed commands/s ({:.2} per replica per s)",
        idle.wall.as_secs_f64(),
        idle.cpu,
        idle.cpu / idle.wall.as_secs_f64() * 1e6,
        idle.net_out / idle.wall.as_secs_f64(),
        idle.feed_calls() / idle.wall.as_secs_f64(),
        idle.feed_calls() / idle.wall.as_secs_f64() / replicas as f64,
    );
    println!(
        "redis, net of idle: cpu {:.1} us/event, out {:.0} B/event",
        (busy.cpu - idle.cpu) / n * 1e6,
        (busy.net_out - idle.net_out) / n
    );
    println!("commands per event per replica (events phase) and per replica per s (idle):");
    for (name, (calls, usec)) in &busy.commands {
        let idle_calls = idle.commands.get(name).map_or(0.0, |c| c.0);
        println!(
            "  {name:<16} {:>7.2}/event  {:>6.2} us/call   idle {:>6.2}/s",
            calls / per_replica,
            usec / calls,
            idle_calls / idle.wall.as_secs_f64() / replicas as f64
        );
    }
    println!(
        "feed threads' cpu: {:.1} us/event/replica busy, {:.1} us/s/replica idle (100 Hz ticks)",
        (feed_cpu - idle_feed_cpu) / per_replica * 1e6,
        idle_feed_cpu / idle.wall.as_secs_f64() / replicas as f64 * 1e6,
    );
    println!(
        "memory per replica, fresh feed, before keys: heap {:.1} KiB (a verifier without \
         a feed: {:.1} KiB), resident {:.1} KiB (without a feed: {:.1} KiB); keys and the \
         JWKS connection add {:.1} KiB of heap (both ends, the issuer is in-process); \
         {fleet_threads} threads started; thread stacks are mapped outside the heap and \
         count only in resident memory, as far as touched",
        kib(fleet_heap),
        kib(bare_heap),
        kib(fleet_rss),
        kib(bare_rss),
        kib(keys_heap),
    );
    println!("loadavg at the end: {}", load.trim());

    rt.block_on(async {
        for v in &fleet {
            v.shutdown().await;
        }
    });
    drop(sets);
    drop(fleet);

    if cold_events > 0 {
        cold_start(&rt, &redis, &sts, &mut conn, &key, cold_events);
    }
}

/// Write `events` retained revocations, then time one replica from build to a
/// current revocation set.
fn cold_start(
    rt: &tokio::runtime::Runtime,
    redis: &RedisServer,
    sts: &TestIssuer,
    conn: &mut redis::Connection,
    key: &StreamKey,
    events: usize,
) {
    let _: () = redis::cmd("FLUSHALL").query(conn).expect("FLUSHALL");
    let mem0 = number(&info(conn, "memory"), "used_memory");
    let started = Instant::now();
    let pid = std::process::id();
    let batch = 10_000;
    for start in (0..events).step_by(batch) {
        let mut pipe = redis::pipe();
        for n in start..(start + batch).min(events) {
            pipe.add_command(revocation(key, &format!("cold-sid-{pid}-{n}"), n))
                .ignore();
        }
        let _: () = pipe.query(conn).expect("pipelined XADD");
    }
    let written = started.elapsed();
    let stream_bytes = number(&info(conn, "memory"), "used_memory") - mem0;
    println!(
        "cold start: {events} signed revocations written in {:.1} s ({:.0}/s), \
         {:.1} MiB in Redis",
        written.as_secs_f64(),
        events as f64 / written.as_secs_f64(),
        mib(stream_bytes)
    );

    let (heap0, rss0) = (live_heap(), resident_bytes().unwrap_or(0));
    reset_peak();
    let sampler = RssSampler::start(Duration::from_millis(5));
    let before = RedisCost::read(conn);
    let feed_cpu0 = thread_cpu("caracal-revocat");
    let started = Instant::now();
    let v = builder(sts)
        .redis_revocations(feed(redis))
        .build()
        .expect("verifier settings");
    rt.block_on(until(
        "the cold replica's revocation set is current",
        || v.readiness().revocation,
    ));
    let ready = started.elapsed();
    let feed_cpu = thread_cpu("caracal-revocat") - feed_cpu0;
    let after = RedisCost::read(conn);
    let rss_peak = sampler.finish();
    let cost = before.delta(&after);
    let set = v.revocations();
    let applied = v
        .revocation_feed()
        .and_then(|f| f.status().feed)
        .map_or(0, |s| s.applied);
    assert_eq!(set.len(), events, "every retained revocation is held");
    assert!(set.is_revoked(&format!("cold-sid-{pid}-0")));
    assert!(set.is_revoked(&format!("cold-sid-{pid}-{}", events - 1)));
    println!(
        "cold start: current after {:.3} s (goal <= 5 s); applied {applied}; \
         set holds {} anchors",
        ready.as_secs_f64(),
        set.len()
    );
    println!(
        "cold start memory: heap +{:.1} MiB (peak +{:.1} MiB), resident +{:.1} MiB \
         (peak +{:.1} MiB)",
        mib(live_heap().saturating_sub(heap0) as f64),
        mib(peak_heap().saturating_sub(heap0) as f64),
        mib(resident_bytes().unwrap_or(0).saturating_sub(rss0) as f64),
        mib(rss_peak.saturating_sub(rss0) as f64),
    );
    let reads: f64 = ["xread", "eval"]
        .iter()
        .filter_map(|c| cost.commands.get(*c))
        .map(|c| c.0)
        .sum();
    println!(
        "cold start cpu: the feed's thread {feed_cpu:.2} s, redis {:.3} s; redis sent \
         {:.1} MiB in {reads:.0} page reads",
        cost.cpu,
        mib(cost.net_out)
    );
    rt.block_on(v.shutdown());
}
