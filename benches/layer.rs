//! The full Tower service call: `MandateService` around an in-memory inner service,
//! against the same inner service unprotected (the baseline).
//!
//! Run: `cargo bench --all-features --bench layer`
//!
//! - `layer/unprotected_baseline`: the inner `service_fn` alone.
//! - `layer/verify_repeated_token`: bare `Verifier::verify()` of the same token, so
//!   one run prices the layer's own glue: `warm_repeated_token` against this plus
//!   `unprotected_baseline` (goal ≤ 1.3×).
//! - `layer/warm_repeated_token`: the same token every call (mandate cache hit);
//!   goal ≤ 1 µs median. `…_with_request_id` sends an `x-request-id`, so the layer
//!   reuses it instead of generating one.
//! - `layer/cold_new_token_cache_on`: a token never seen before on every call
//!   (minted outside the timed loop), so every call verifies the signature and
//!   inserts into the cache.
//! - `layer/cold_cache_off`: the same token with the mandate cache disabled.
//!
//! Requests are built outside the timed region (`iter_batched`/`iter_custom`); the
//! call, the inner service and dropping the request are timed. Futures are polled
//! once with a no-op waker: with warm keys nothing suspends.

use std::convert::Infallible;
use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use caracal_verifier::layer::MandateLayer;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{Empty, Full};
use tower::{Layer, Service, ServiceExt};

mod common;
use common::*;

type Req = Request<Empty<Bytes>>;
type Res = Response<Full<Bytes>>;

/// The in-memory inner service: answers 200 with a static body.
fn inner() -> impl Service<Req, Response = Res, Error = Infallible, Future = impl Future> + Clone {
    tower::service_fn(|_req: Req| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    })
}

/// `ready().call()` on the service, both futures polled once.
fn call<S: Service<Req, Response = Res>>(svc: &mut S, req: Req) -> Res
where
    S::Error: std::fmt::Debug,
{
    now(svc.ready()).unwrap();
    now(svc.call(req)).unwrap()
}

fn request(token: &str, request_id: bool) -> Req {
    let mut b = Request::get("/tickets").header("authorization", format!("Bearer {token}"));
    if request_id {
        b = b.header("x-request-id", "bench-request-0001");
    }
    b.body(Empty::new()).unwrap()
}

fn layer(c: &mut Criterion) {
    let s = setup(1);
    let tok = token(&s);

    let mut g = c.benchmark_group("layer");

    let mut bare = inner();
    g.bench_function("unprotected_baseline", |b| {
        b.iter_batched(
            || request(&tok, false),
            |req| call(&mut bare, req),
            BatchSize::SmallInput,
        )
    });

    let v = verifier(&s, true);
    let r = reqs();
    now(v.verify(&tok, &r)).unwrap();
    now(v.verify(&tok, &r)).unwrap();
    g.bench_function("verify_repeated_token", |b| {
        b.iter(|| now(v.verify(&tok, &r)).unwrap())
    });

    let mut warm = MandateLayer::new(verifier(&s, true), reqs()).layer(inner());
    assert_eq!(call(&mut warm, request(&tok, false)).status(), 200);
    g.bench_function("warm_repeated_token", |b| {
        b.iter_batched(
            || request(&tok, false),
            |req| call(&mut warm, req),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("warm_repeated_token_with_request_id", |b| {
        b.iter_batched(
            || request(&tok, true),
            |req| call(&mut warm, req),
            BatchSize::SmallInput,
        )
    });

    // `oneshot` on a clone, as a router does per request.
    let oneshot_svc = warm.clone();
    g.bench_function("warm_repeated_token_oneshot_clone", |b| {
        b.iter_batched(
            || request(&tok, false),
            |req| now(oneshot_svc.clone().oneshot(req)).unwrap(),
            BatchSize::SmallInput,
        )
    });

    let mut cold_off = MandateLayer::new(verifier(&s, false), reqs()).layer(inner());
    assert_eq!(call(&mut cold_off, request(&tok, false)).status(), 200);
    g.bench_function("cold_cache_off", |b| {
        b.iter_batched(
            || request(&tok, false),
            |req| call(&mut cold_off, req),
            BatchSize::SmallInput,
        )
    });

    // Every call gets a token this verifier has never seen: minted per sample,
    // outside the timed loop, so the pool is always larger than the iteration count.
    let mut cold_on = MandateLayer::new(verifier(&s, true), reqs()).layer(inner());
    g.bench_function("cold_new_token_cache_on", |b| {
        b.iter_custom(|iters| {
            let reqs: Vec<Req> = (0..iters).map(|_| request(&token(&s), false)).collect();
            let mut out = Vec::with_capacity(reqs.len());
            let start = Instant::now();
            for req in reqs {
                out.push(call(&mut cold_on, req));
            }
            let elapsed = start.elapsed();
            assert!(out.iter().all(|r| r.status() == 200));
            elapsed
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5));
    targets = layer
}
criterion_main!(benches);
