//! Setup shared by the benchmarks: a loopback issuer, warm verifiers, a typical
//! mandate, and a way to drive futures that never wait.

// Each benchmark uses part of this module.
#![allow(dead_code)]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use caracal_verifier::testing::TestIssuer;
use caracal_verifier::{Requirements, Verifier, VerifierBuilder};

/// Drive a future that completes without waiting (warm keys, no I/O).
pub fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("benchmark future was not ready: keys not warm?"),
    }
}

pub struct Setup {
    pub rt: tokio::runtime::Runtime,
    pub sts: TestIssuer,
}

/// A runtime with `workers` threads and a loopback issuer for `zone-1`.
pub fn setup(workers: usize) -> Setup {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap();
    let sts = rt.block_on(TestIssuer::start("zone-1")).unwrap();
    Setup { rt, sts }
}

/// A verifier for the setup's issuer. The long cooldown keeps unknown-kid
/// rejections in their steady state (in cooldown, no fetch) for a whole measurement.
pub fn builder(s: &Setup) -> VerifierBuilder {
    Verifier::builder()
        .issuer(s.sts.issuer_url())
        .audience("resource://api")
        .zone("zone-1")
        .jwks_cooldown(Duration::from_secs(3600))
}

/// Build and fetch keys.
pub fn warm(s: &Setup, b: VerifierBuilder) -> Verifier {
    let v = b.build().unwrap();
    s.rt.block_on(v.warm_up()).unwrap();
    v
}

pub fn verifier(s: &Setup, cache: bool) -> Verifier {
    warm(s, builder(s).mandate_cache(cache))
}

/// A typical mandate: one scope, a target, an agent session, a one-hop chain.
pub fn token(s: &Setup) -> String {
    s.sts
        .mandate()
        .scopes(["tickets:read"])
        .targets(["resource://api"])
        .agent_session("session-child")
        .delegation(1)
        .ttl(3600)
        .sign()
}

pub fn reqs() -> Requirements {
    Requirements::new().scopes(["tickets:read"])
}

/// The `p`th percentile of sorted samples (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

/// Milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// For the harness-less benches: `None` under `--list`; otherwise whether this is a
/// full run (`--bench`) and the round count: `var` or `full` rounds in a full run,
/// `smoke` rounds under `cargo test --benches`.
pub fn rounds(var: &str, full: usize, smoke: usize) -> Option<(bool, usize)> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        return None;
    }
    if !args.iter().any(|a| a == "--bench") {
        return Some((false, smoke));
    }
    let n = std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(full);
    Some((true, n))
}
