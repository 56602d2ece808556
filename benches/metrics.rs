//! What publishing metrics costs a verification: a verifier with a
//! `MetricsPublisher` and a Prometheus recorder installed, against one without,
//! timed back to back in every iteration so the drift between benchmarks cancels.
//!
//! Run: `cargo bench --all-features --bench metrics`
//!
//! Each iteration times the plain verifier, then the published one (the warm pair on
//! the same repeated token each; the cold pair on two new tokens of a pool), and the
//! reported time is the difference per verification. Divide by the plain path's time
//! for the ratio: the goals are at most 3% warm and 1% cold.

use std::time::{Duration, Instant};

use caracal_verifier::metrics::MetricsPublisher;
use criterion::{Criterion, criterion_group, criterion_main};

mod common;
use common::*;

/// Fewest pairs per sample, so per-signature variation of the ECDSA check averages out.
const MIN_PAIRS: u64 = 64;

/// Sums `published - plain` over the pairs `f` times; scaled back to `iters`.
fn paired(iters: u64, mut f: impl FnMut() -> (Duration, Duration)) -> Duration {
    let runs = iters.max(MIN_PAIRS);
    let mut diff: i128 = 0;
    for _ in 0..runs {
        let (plain, published) = f();
        diff += published.as_nanos() as i128 - plain.as_nanos() as i128;
    }
    let per_iter = (diff / i128::from(runs)).max(1);
    Duration::from_nanos(u64::try_from(per_iter * i128::from(iters)).unwrap_or(u64::MAX))
}

fn overhead(c: &mut Criterion) {
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("the bench's recorder");
    let s = setup(1);
    let plain = verifier(&s, true);
    let published = warm(
        &s,
        builder(&s).source(MetricsPublisher::new().interval(Duration::from_millis(100))),
    );
    let r = reqs();
    let tok = token(&s);
    now(plain.verify(&tok, &r)).unwrap();
    now(published.verify(&tok, &r)).unwrap();
    // Admitted to both caches (the doorkeeper admits a token seen twice).
    now(plain.verify(&tok, &r)).unwrap();
    now(published.verify(&tok, &r)).unwrap();

    let mut g = c.benchmark_group("metrics");
    g.bench_function("warm_plain", |b| {
        b.iter(|| now(plain.verify(&tok, &r)).unwrap())
    });
    g.bench_function("warm_published", |b| {
        b.iter(|| now(published.verify(&tok, &r)).unwrap())
    });
    g.bench_function("warm_overhead_paired", |b| {
        b.iter_custom(|iters| {
            paired(iters, || {
                let t0 = Instant::now();
                now(plain.verify(&tok, &r)).unwrap();
                let t1 = Instant::now();
                now(published.verify(&tok, &r)).unwrap();
                (t1 - t0, t1.elapsed())
            })
        })
    });
    g.measurement_time(Duration::from_secs(5));
    let pool: Vec<String> = (0..240_000).map(|_| token(&s)).collect();
    let mut i = 0usize;
    // A verifier of its own, so the paired run's tokens are new to `plain`.
    let plain_alone = verifier(&s, true);
    let mut k = 0usize;
    g.bench_function("cold_plain", |b| {
        b.iter(|| {
            k = (k + 1) % pool.len();
            now(plain_alone.verify(&pool[k], &r)).unwrap()
        })
    });
    let half = pool.len() / 2;
    g.bench_function("cold_overhead_paired", |b| {
        b.iter_custom(|iters| {
            paired(iters, || {
                i = (i + 1) % half;
                let t0 = Instant::now();
                now(plain.verify(&pool[i], &r)).unwrap();
                let t1 = Instant::now();
                now(published.verify(&pool[half + i], &r)).unwrap();
                (t1 - t0, t1.elapsed())
            })
        })
    });
    g.finish();
    // The scrape is real: the publisher ran throughout.
    assert!(
        prometheus
            .render()
            .contains("caracal_verifier_decisions_total")
    );
}

criterion_group!(benches, overhead);
criterion_main!(benches);
