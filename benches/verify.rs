//! Engine benchmarks: the cold path against the raw ES256 verify, the warm path,
//! rejection paths, and revocation lookups against large revoked sets.
//!
//! Run: `cargo bench --all-features --bench verify`
//! Quote medians and ratios from one run: the machines are noisy.

use std::time::{Duration, Instant};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, ParsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use caracal_verifier::{Mandate, Requirements};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::Value;

mod common;
use common::*;

/// Revoked anchors in the cold-path verifiers, so the revocation lookup probes a
/// populated set (an empty set is skipped).
const COLD_REVOKED: usize = 10_000;

/// Tokens cycled by the cache-resident new-token pairing.
const HOT_POOL: usize = 1024;

/// Goal 1: a new token through `verify()` against the raw ES256 check of the same
/// token(s).
///
/// Two pairings, both "the same token". ECDSA verification time depends on the
/// signature (its scalar recodings steer branches), and a benchmark that verifies one
/// signature over and over lets the branch predictor learn it:
/// - `*_same_token`: one token, verified repeatedly (cache off, so every call does the
///   full work) against the raw check of that one signature;
/// - `*_new_tokens`: each iteration takes the next token of a pool larger than the
///   iteration count, through the default verifier (cache on: every token is new to
///   it), against the raw check cycling through the same pool.
fn cold_path(c: &mut Criterion) {
    let s = setup(1);
    let v_nocache = verifier(&s, false);
    let v_cache = verifier(&s, true);
    for i in 0..COLD_REVOKED {
        let id = format!("revoked-{i:06}");
        v_nocache.revocations().revoke(&id);
        v_cache.revocations().revoke(&id);
    }
    let tok = token(&s);
    let (input, sig_b64) = tok.rsplit_once('.').unwrap();
    let sig = URL_SAFE_NO_PAD.decode(sig_b64).unwrap();
    let point = s.sts.public_key_uncompressed(&s.sts.signing_kid());
    let raw_key = ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point).unwrap();
    let jwk = s.sts.public_jwk(&s.sts.signing_kid());
    let jwt_key = jsonwebtoken::DecodingKey::from_ec_components(
        jwk["x"].as_str().unwrap(),
        jwk["y"].as_str().unwrap(),
    )
    .unwrap();
    let mut jwt_validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    jwt_validation.set_issuer(&[s.sts.issuer_url()]);
    jwt_validation.set_audience(&["resource://api"]);

    // Distinct tokens, more than the iterations of one benchmark including its warm-up
    // (about 125,000 at 40 us), so each call sees a token its verifier has not seen:
    // a token seen twice would be admitted to the cache, and that insert is not the
    // cold path. The raw check gets them pre-split and pre-decoded.
    let pool: Vec<String> = (0..200_000).map(|_| token(&s)).collect();
    let raw_pool: Vec<(&str, Vec<u8>)> = pool
        .iter()
        .map(|t| {
            let (input, sig) = t.rsplit_once('.').unwrap();
            (input, URL_SAFE_NO_PAD.decode(sig).unwrap())
        })
        .collect();

    // Routes build their requirements once, not per request.
    let route = reqs();
    let mut g = c.benchmark_group("cold");
    g.measurement_time(Duration::from_secs(4));
    g.warm_up_time(Duration::from_secs(1));
    g.bench_function("raw_aws_lc_es256_verify_same_token", |b| {
        b.iter(|| raw_key.verify_sig(input.as_bytes(), &sig).unwrap())
    });
    g.bench_function("verify_same_token_cache_off", |b| {
        b.iter(|| now(v_nocache.verify(&tok, &route)).unwrap())
    });
    let mut r = 0usize;
    g.bench_function("raw_aws_lc_es256_verify_new_tokens", |b| {
        b.iter(|| {
            r = (r + 1) % raw_pool.len();
            let (input, sig) = &raw_pool[r];
            raw_key.verify_sig(input.as_bytes(), sig).unwrap()
        })
    });
    let mut i = 0usize;
    g.bench_function("verify_new_tokens", |b| {
        b.iter(|| {
            i = (i + 1) % pool.len();
            now(v_cache.verify(&pool[i], &route)).unwrap()
        })
    });
    // The same pairing over 1,024 tokens that stay in the CPU caches (as a token just
    // read off a socket does), cache off so each call does the full work.
    let mut r = 0usize;
    g.bench_function("raw_aws_lc_es256_verify_1024_tokens", |b| {
        b.iter(|| {
            r = (r + 1) % HOT_POOL;
            let (input, sig) = &raw_pool[r];
            raw_key.verify_sig(input.as_bytes(), sig).unwrap()
        })
    });
    let mut i = 0usize;
    g.bench_function("verify_1024_tokens_cache_off", |b| {
        b.iter(|| {
            i = (i + 1) % HOT_POOL;
            now(v_nocache.verify(&pool[i], &route)).unwrap()
        })
    });
    g.bench_function("jsonwebtoken_decode_same_token", |b| {
        b.iter(|| jsonwebtoken::decode::<Value>(&tok, &jwt_key, &jwt_validation).unwrap())
    });
    g.finish();

    // The same comparisons, paired: each iteration times the raw check and then
    // `verify()` back to back and records only the difference, so the drift between
    // benchmarks (a few percent on these machines) cancels. The reported time is our
    // overhead per token; divide by the raw check's median for the ratio.
    let mut g = c.benchmark_group("cold_overhead");
    g.measurement_time(Duration::from_secs(5));
    g.warm_up_time(Duration::from_secs(1));
    g.bench_function("same_token_cache_off", |b| {
        b.iter_custom(|iters| {
            paired(iters, |_| {
                let t0 = Instant::now();
                raw_key.verify_sig(input.as_bytes(), &sig).unwrap();
                let t1 = Instant::now();
                now(v_nocache.verify(&tok, &route)).unwrap();
                (t1 - t0, t1.elapsed())
            })
        })
    });
    // Raw and verify take different tokens of the pool, so neither runs on a signature
    // the other just primed the branch predictor with. A verifier of its own, so every
    // token is new to its cache (the pool outnumbers the iterations).
    let v_fresh = verifier(&s, true);
    for i in 0..COLD_REVOKED {
        v_fresh.revocations().revoke(&format!("revoked-{i:06}"));
    }
    let half = pool.len() / 2;
    let mut i = 0usize;
    g.bench_function("new_tokens", |b| {
        b.iter_custom(|iters| {
            paired(iters, |_| {
                i = (i + 1) % pool.len();
                let (input, sig) = &raw_pool[(i + half) % pool.len()];
                let t0 = Instant::now();
                raw_key.verify_sig(input.as_bytes(), sig).unwrap();
                let t1 = Instant::now();
                now(v_fresh.verify(&pool[i], &route)).unwrap();
                (t1 - t0, t1.elapsed())
            })
        })
    });
    g.finish();
}

/// Runs `f` (which returns the raw check's time and `verify()`'s) and returns the
/// summed difference for `iters` iterations. Each sample runs at least
/// [`MIN_PAIRS`] pairs (scaled back to `iters`), so per-signature variation of the
/// ECDSA check averages out; a sample whose sum is not positive counts as 1 ns per
/// iteration (rounding against us).
fn paired(iters: u64, mut f: impl FnMut(u64) -> (Duration, Duration)) -> Duration {
    let runs = iters.max(MIN_PAIRS);
    let mut diff: i128 = 0;
    for k in 0..runs {
        let (raw, ours) = f(k);
        diff += ours.as_nanos() as i128 - raw.as_nanos() as i128;
    }
    let per_iter = (diff / i128::from(runs)).max(1);
    Duration::from_nanos(u64::try_from(per_iter * i128::from(iters)).unwrap_or(u64::MAX))
}

/// Fewest raw/verify pairs timed per sample by [`paired`].
const MIN_PAIRS: u64 = 64;

fn warm_path(c: &mut Criterion) {
    let s = setup(1);
    let v = verifier(&s, true);
    let tok = token(&s);
    let r = reqs();
    now(v.verify(&tok, &r)).unwrap();
    let mut g = c.benchmark_group("warm");
    g.bench_function("verify_repeated_token", |b| {
        b.iter(|| now(v.verify(&tok, &r)).unwrap())
    });
    let m: Mandate = now(v.verify(&tok, &r)).unwrap();
    g.bench_function("authorize_only", |b| {
        b.iter(|| v.authorize(&m, &r).unwrap())
    });
    g.finish();
}

fn rejections(c: &mut Criterion) {
    let s = setup(1);
    let v = verifier(&s, true);
    let good = token(&s);
    let (input, _) = good.rsplit_once('.').unwrap();
    let bad_sig = format!("{input}.{}", URL_SAFE_NO_PAD.encode([7u8; 64]));
    let expired = s
        .sts
        .mandate()
        .issued_at(1_000_000)
        .expires_at(1_000_300)
        .sign();
    let unknown_kid = s
        .sts
        .mandate()
        .header("kid", serde_json::json!("nope"))
        .sign();
    // Prime the unknown-kid cooldown so the bench measures the steady state.
    let _ = s.rt.block_on(v.verify(&unknown_kid, &reqs()));
    let need_more = Requirements::new().scopes(["billing:payout"]);
    now(v.verify(&good, &reqs())).unwrap();

    let route = reqs();
    let mut g = c.benchmark_group("reject");
    g.bench_function("bad_signature", |b| {
        b.iter(|| now(v.verify(&bad_sig, &route)).unwrap_err())
    });
    g.bench_function("expired", |b| {
        b.iter(|| now(v.verify(&expired, &route)).unwrap_err())
    });
    g.bench_function("insufficient_scope_cached", |b| {
        b.iter(|| now(v.verify(&good, &need_more)).unwrap_err())
    });
    g.bench_function("unknown_kid_in_cooldown", |b| {
        b.iter(|| now(v.verify(&unknown_kid, &route)).unwrap_err())
    });
    g.finish();
}

/// Counts live heap bytes, so memory per anchor and per cached mandate can be read
/// directly (RSS deltas hide reuse of memory the allocator already holds).
struct Counting;

static LIVE: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

// SAFETY: forwards to the system allocator and only counts sizes.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as i64, std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        LIVE.fetch_sub(l.size() as i64, std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(
            n as i64 - l.size() as i64,
            std::sync::atomic::Ordering::Relaxed,
        );
        unsafe { std::alloc::System.realloc(p, l, n) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live_bytes() -> u64 {
    LIVE.load(std::sync::atomic::Ordering::Relaxed).max(0) as u64
}

fn revocation_lookup(c: &mut Criterion) {
    let s = setup(1);
    let mut g = c.benchmark_group("revocation_lookup");
    for n in [1_000usize, 100_000, 1_000_000] {
        let v = verifier(&s, true);
        let before = live_bytes();
        for i in 0..n {
            v.revocations().revoke(&format!("anchor-{i:08}"));
        }
        let after = live_bytes();
        if n == 1_000_000 {
            eprintln!(
                "revocation set: {} anchors, heap +{:.1} MiB, {:.1} bytes/anchor",
                n,
                (after - before) as f64 / 1048576.0,
                (after - before) as f64 / n as f64
            );
        }
        // Nine anchors: sid, root_sid, agent session, edge, and a 3-edge chain.
        let tok = s.sts.mandate().delegation(3).ttl(3600).sign();
        let m = now(v.verify(&tok, &Requirements::new())).unwrap();
        let r = Requirements::new();
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::new("authorize_9_anchors", n), &n, |b, _| {
            b.iter(|| v.authorize(&m, &r).unwrap())
        });
    }
    g.finish();
}

fn cache_memory(_c: &mut Criterion) {
    let s = setup(1);
    // Limits high enough that no entry is evicted, so every token is counted.
    let v = warm(&s, builder(&s).mandate_cache_limits(100_000, 1 << 30));
    let pool: Vec<String> = (0..50_000).map(|_| token(&s)).collect();
    let before = live_bytes();
    // Tokens are admitted to the cache on their second sighting; back to back, so no
    // other token can take the token's doorkeeper slot in between.
    for t in &pool {
        now(v.verify(t, &reqs())).unwrap();
        now(v.verify(t, &reqs())).unwrap();
    }
    let after = live_bytes();
    eprintln!(
        "mandate cache: {} tokens of {} bytes, heap +{:.1} MiB, {:.0} bytes/entry (token included)",
        pool.len(),
        pool[0].len(),
        (after - before) as f64 / 1048576.0,
        (after - before) as f64 / pool.len() as f64
    );
}

criterion_group!(
    benches,
    cold_path,
    warm_path,
    rejections,
    revocation_lookup,
    cache_memory
);
criterion_main!(benches);
