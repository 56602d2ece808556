//! How verification cost grows with token size, delegation chain length, the
//! number of revoked anchors and concurrency.
//!
//! Run: `cargo bench --all-features --bench scaling`
//!
//! - `size/{cold,warm,layer_warm}/<pad bytes>`: a mandate padded with an extra
//!   `pad` claim of 0, 512, 1024, 2048, 4096 and 8192 bytes (the resulting token
//!   lengths are printed). Cold = mandate cache off; warm = the same token again
//!   with the cache on (the cache hashes and compares the whole token).
//! - `chain/{cold,warm}/<hops>`: 0, 1, 3 and 10 delegation hops.
//! - `revoked/{cold,warm}/<anchors>`: 1k, 100k and 1M revoked anchors in the set
//!   (none of them the mandate's own).
//! - `concurrency/{warm,cold}/<in flight>`: total throughput with 1, 2, 16 and 256
//!   verifications in flight on a multi-thread Tokio runtime with 2 workers. Each
//!   in-flight slot is a spawned task verifying its share of the iterations
//!   back to back; criterion reports the time per verification and elements/s.
//!   Cold = mandate cache off (every verification checks the signature).
//! - `threads/warm/<threads>`: the same warm verification on 1 and 2 plain OS
//!   threads, each polling `verify()` of the repeated token to completion in a
//!   loop. This prices contention inside the verifier alone: the Tokio variant
//!   above also measures where the scheduler places two tasks on two workers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use caracal_verifier::layer::MandateLayer;
use caracal_verifier::{Requirements, Verifier};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{Empty, Full};
use std::convert::Infallible;
use tower::{Layer, Service, ServiceExt};

mod common;
use common::{Setup, now, reqs, warm};

/// Verifiers with room for the 8 KiB pad.
fn verifier(s: &Setup, cache: bool) -> Verifier {
    warm(
        s,
        common::builder(s)
            .max_token_bytes(32 * 1024)
            .mandate_cache(cache),
    )
}

fn base(s: &Setup) -> caracal_verifier::testing::MandateBuilder {
    s.sts
        .mandate()
        .scopes(["tickets:read"])
        .targets(["resource://api"])
        .ttl(3600)
}

/// Cold (cache off) and warm (cache on, repeated token) `verify()` of `tok`.
fn cold_and_warm<P: std::fmt::Display + Copy>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    param: P,
    tok: &str,
    cold: &Verifier,
    warm: &Verifier,
    r: &Requirements,
) {
    now(cold.verify(tok, r)).unwrap();
    now(warm.verify(tok, r)).unwrap();
    g.bench_with_input(BenchmarkId::new("cold", param), &param, |b, _| {
        b.iter(|| now(cold.verify(tok, r)).unwrap())
    });
    g.bench_with_input(BenchmarkId::new("warm", param), &param, |b, _| {
        b.iter(|| now(warm.verify(tok, r)).unwrap())
    });
}

type Req = Request<Empty<Bytes>>;

fn token_size(c: &mut Criterion) {
    let s = common::setup(2);
    let cold = verifier(&s, false);
    let warm_v = verifier(&s, true);
    let r = reqs();
    let mut svc =
        MandateLayer::new(warm_v.clone(), reqs()).layer(tower::service_fn(|_: Req| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }));
    let mut g = c.benchmark_group("size");
    for pad in [0usize, 512, 1024, 2048, 4096, 8192] {
        let mut m = base(&s);
        if pad > 0 {
            m = m.claim("pad", serde_json::json!("x".repeat(pad)));
        }
        let tok = m.sign();
        eprintln!("size: pad {pad} B -> token {} B", tok.len());
        cold_and_warm(&mut g, pad, &tok, &cold, &warm_v, &r);
        g.bench_with_input(BenchmarkId::new("layer_warm", pad), &pad, |b, _| {
            b.iter_batched(
                || {
                    Request::get("/")
                        .header("authorization", format!("Bearer {tok}"))
                        .body(Empty::new())
                        .unwrap()
                },
                |req| {
                    now(svc.ready()).unwrap();
                    now(svc.call(req)).unwrap()
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn chain_length(c: &mut Criterion) {
    let s = common::setup(2);
    let cold = verifier(&s, false);
    let warm_v = verifier(&s, true);
    let r = reqs();
    let mut g = c.benchmark_group("chain");
    for hops in [0usize, 1, 3, 10] {
        let tok = base(&s)
            .agent_session("session-child")
            .delegation(hops)
            .sign();
        eprintln!("chain: {hops} hops -> token {} B", tok.len());
        cold_and_warm(&mut g, hops, &tok, &cold, &warm_v, &r);
    }
    g.finish();
}

fn revoked_anchors(c: &mut Criterion) {
    let s = common::setup(2);
    let r = reqs();
    // Nine anchors: sid, root_sid, agent session, edge, and a 3-edge chain.
    let tok = base(&s).agent_session("session-child").delegation(3).sign();
    let mut g = c.benchmark_group("revoked");
    for n in [1_000usize, 100_000, 1_000_000] {
        let cold = verifier(&s, false);
        let warm_v = verifier(&s, true);
        for i in 0..n {
            let id = format!("anchor-{i:08}");
            cold.revocations().revoke(&id);
            warm_v.revocations().revoke(&id);
        }
        cold_and_warm(&mut g, n, &tok, &cold, &warm_v, &r);
    }
    g.finish();
}

/// `iters` verifications spread over `in_flight` spawned tasks; returns the wall time
/// from the first spawn to the last completion.
fn run_in_flight(
    s: &Setup,
    v: &Verifier,
    tok: &Arc<str>,
    r: &Arc<Requirements>,
    in_flight: u64,
    iters: u64,
) -> Duration {
    s.rt.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = (0..in_flight)
            .map(|k| {
                let share = iters / in_flight + u64::from(k < iters % in_flight);
                let (v, tok, r) = (v.clone(), Arc::clone(tok), Arc::clone(r));
                tokio::spawn(async move {
                    for _ in 0..share {
                        v.verify(&tok, &r).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        start.elapsed()
    })
}

fn concurrency(c: &mut Criterion) {
    let s = common::setup(2);
    let r = Arc::new(reqs());
    let tok: Arc<str> = base(&s)
        .agent_session("session-child")
        .delegation(1)
        .sign()
        .into();
    let mut g = c.benchmark_group("concurrency");
    g.throughput(Throughput::Elements(1));
    for (name, cache) in [("warm", true), ("cold", false)] {
        let v = verifier(&s, cache);
        now(v.verify(&tok, &r)).unwrap();
        for in_flight in [1u64, 2, 16, 256] {
            g.bench_with_input(BenchmarkId::new(name, in_flight), &in_flight, |b, &k| {
                b.iter_custom(|iters| run_in_flight(&s, &v, &tok, &r, k, iters))
            });
        }
    }
    g.finish();
}

/// `iters` warm verifications of `tok` split over `threads` OS threads; the
/// elapsed time from the first thread's start to the last one's end.
fn run_on_threads(v: &Verifier, tok: &str, r: &Requirements, threads: u64, iters: u64) -> Duration {
    let start = std::sync::Barrier::new(usize::try_from(threads).unwrap_or(1) + 1);
    std::thread::scope(|scope| {
        for k in 0..threads {
            let share = iters / threads + u64::from(k < iters % threads);
            let (v, start) = (v.clone(), &start);
            scope.spawn(move || {
                start.wait();
                for _ in 0..share {
                    std::hint::black_box(now(v.verify(tok, r)).unwrap());
                }
            });
        }
        start.wait();
        let t0 = Instant::now();
        // The scope joins every thread before it returns.
        t0
    })
    .elapsed()
}

fn threads(c: &mut Criterion) {
    let s = common::setup(2);
    let r = reqs();
    let tok = base(&s).agent_session("session-child").delegation(1).sign();
    let v = verifier(&s, true);
    now(v.verify(&tok, &r)).unwrap();
    let mut g = c.benchmark_group("threads");
    g.throughput(Throughput::Elements(1));
    for n in [1u64, 2] {
        g.bench_with_input(BenchmarkId::new("warm", n), &n, |b, &n| {
            b.iter_custom(|iters| run_on_threads(&v, &tok, &r, n, iters))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = token_size, chain_length, revoked_anchors, concurrency, threads
}
criterion_main!(benches);
