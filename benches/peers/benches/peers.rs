//! Goal 6: caracal-verifier against peer JWT layers, in one criterion run, on the
//! same P-256 key, the same token shape and the same checks: `iss`, `aud`, `exp`,
//! the algorithm pinned to ES256, and one scope (`tickets:read`).
//!
//! Run: `cargo bench --manifest-path benches/peers/Cargo.toml`
//!
//! Contenders (each Tower layer wraps the same in-memory inner service, which
//! answers an empty axum 0.7 body, the response type jwt-authorizer requires):
//!
//! - `ours_layer`: `MandateLayer` (mandate cache on, the default); `ours_verify`:
//!   bare `Verifier::verify()`. `…_cache_off` variants disable the mandate cache.
//!   Ours checks more than the peers (`zone_id`, `use`, `nbf`/`iat`, revocation of
//!   `sid` and `root_sid` against an empty set).
//! - `jwt_authorizer`: jwt-authorizer 0.15 (jsonwebtoken 9 inside) from a static JWKS
//!   (`from_jwks_text`, the `TestIssuer` key), `iss` and `aud` validation, the
//!   algorithm pinned by the JWK's `alg` (ES256), the scope checked with `check()`.
//! - `aliri_tower`: aliri_tower 0.6 `jwt_layer` (an `aliri_oauth2::Authority` with
//!   the key as an aliri `Jwks`, a `CoreValidator` approving ES256 only, requiring
//!   the issuer and audience) plus `scope_layer` with a one-scope policy; aliri
//!   verifies EC signatures with OpenSSL.
//! - `jsonwebtoken_decode`: bare `jsonwebtoken::decode` 11 (aws_lc_rs) with
//!   `Validation::new(ES256)`, issuer and audience, then the scope check.
//! - `raw_aws_lc_es256_verify` (cold only): the signature check alone, the floor.
//!
//! Groups:
//!
//! - `peers_cold`: a token never seen before on every iteration, minted outside
//!   the timed loop (`iter_custom`), so the pool is always larger than the
//!   iteration count.
//! - `peers_repeated`: the same token on every iteration.
//! - `ours_checks`: our revocation check (100k revoked anchors vs an empty set) and
//!   our replay check (`single_use()` with the in-memory guard vs off) priced by
//!   running with them on and off. Single use is priced on cold tokens only: a
//!   repeated single-use token is rejected as replayed.

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use aliri::jwa;
use aliri::jwt::{self, CoreValidator};
use aliri_oauth2::{Authority, ScopePolicy};
use aliri_tower::Oauth2Authorizer;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, ParsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use caracal_verifier::layer::MandateLayer;
use caracal_verifier::testing::TestIssuer;
use caracal_verifier::{Requirements, Verifier};
use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkGroup, Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Empty;
use jwt_authorizer::{IntoLayer, JwtAuthorizer};
use serde::Deserialize;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

/// The raw ES256 signature check with aws-lc-rs, and nothing else: the floor.
struct Floor {
    key: ParsedPublicKey,
}

impl Floor {
    fn verify(&self, token: &str) -> bool {
        let (input, sig) = token.rsplit_once('.').unwrap();
        let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        self.key.verify_sig(input.as_bytes(), &sig).is_ok()
    }
}

/// Drive a future that completes without waiting (warm keys, no I/O).
fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("benchmark future was not ready: keys not warm?"),
    }
}

type Req = Request<Empty<Bytes>>;
type Res = Response<axum07::body::Body>;

const AUD: &str = "resource://api";
const SCOPE: &str = "tickets:read";

/// The inner service of every layer: 200 with an empty body.
fn inner()
-> impl Service<Req, Response = Res, Error = Infallible, Future = impl Future + Send> + Clone + Send
{
    tower::service_fn(|_req: Req| async {
        Ok::<_, Infallible>(Response::new(axum07::body::Body::empty()))
    })
}

fn request(token: &str) -> Req {
    Request::get("/tickets")
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::new())
        .unwrap()
}

/// `ready().call()`, both futures polled once; returns the status.
fn call<S: Service<Req, Response = Res>>(svc: &mut S, req: Req) -> http::StatusCode
where
    S::Error: std::fmt::Debug,
{
    now(svc.ready()).unwrap();
    now(svc.call(req)).unwrap().status()
}

/// What the peers deserialize: the claims a handler would use.
#[derive(Clone, Debug, Deserialize)]
#[allow(dead_code)]
struct PeerClaims {
    sub: String,
    exp: u64,
    scope: String,
}

fn has_scope(c: &PeerClaims) -> bool {
    c.scope.split(' ').any(|s| s == SCOPE)
}

struct World {
    rt: tokio::runtime::Runtime,
    sts: TestIssuer,
}

impl World {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let sts = rt.block_on(TestIssuer::start("zone-1")).unwrap();
        World { rt, sts }
    }

    fn token(&self) -> String {
        self.sts.mandate().scopes([SCOPE]).ttl(3600).sign()
    }

    fn tokens(&self, n: u64) -> Vec<String> {
        (0..n).map(|_| self.token()).collect()
    }

    fn jwk(&self) -> serde_json::Value {
        self.sts.public_jwk(&self.sts.signing_kid())
    }

    fn jwks_text(&self) -> String {
        serde_json::json!({ "keys": [self.jwk()] }).to_string()
    }

    fn ours(&self, cache: bool) -> Verifier {
        let v = Verifier::builder()
            .issuer(self.sts.issuer_url())
            .audience(AUD)
            .zone("zone-1")
            .mandate_cache(cache)
            .build()
            .unwrap();
        self.rt.block_on(v.warm_up()).unwrap();
        v
    }

    fn jsonwebtoken(&self) -> (jsonwebtoken::DecodingKey, jsonwebtoken::Validation) {
        let jwk = self.jwk();
        let key = jsonwebtoken::DecodingKey::from_ec_components(
            jwk["x"].as_str().unwrap(),
            jwk["y"].as_str().unwrap(),
        )
        .unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.set_issuer(&[self.sts.issuer_url()]);
        validation.set_audience(&[AUD]);
        (key, validation)
    }

    fn floor(&self) -> Floor {
        let point = self.sts.public_key_uncompressed(&self.sts.signing_kid());
        Floor {
            key: ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point).unwrap(),
        }
    }

    fn jwt_authorizer(&self) -> jwt_authorizer::layer::AuthorizationLayer<PeerClaims> {
        let validation = jwt_authorizer::Validation::new()
            .iss(&[self.sts.issuer_url()])
            .aud(&[AUD]);
        let auth = self
            .rt
            .block_on(
                JwtAuthorizer::<PeerClaims>::from_jwks_text(&self.jwks_text())
                    .validation(validation)
                    .check(has_scope)
                    .build(),
            )
            .expect("jwt-authorizer from a static JWKS");
        auth.into_layer()
    }

    fn aliri_authority(&self) -> Authority {
        let jwks: aliri::Jwks = serde_json::from_str(&self.jwks_text()).expect("an aliri JWKS");
        let validator = CoreValidator::default()
            .add_approved_algorithm(jwa::Algorithm::ES256)
            .add_allowed_audience(jwt::Audience::from_static(AUD))
            .require_issuer(jwt::Issuer::new(self.sts.issuer_url()));
        Authority::new(jwks, validator)
    }
}

/// The contenders that are Tower layers, and the unprotected inner service.
struct Layers<A, B, C, D, E> {
    baseline: A,
    ours: B,
    ours_cache_off: C,
    jwt_authorizer: D,
    aliri: E,
}

macro_rules! layers {
    ($w:expr) => {{
        let w: &World = $w;
        let authorizer = Oauth2Authorizer::new().with_terse_error_handler::<axum07::body::Body>();
        let aliri = ServiceBuilder::new()
            .layer(authorizer.jwt_layer::<Empty<Bytes>>(w.aliri_authority()))
            .layer(
                authorizer.scope_layer::<Empty<Bytes>>(ScopePolicy::allow_one_from_static(SCOPE)),
            )
            .service(inner());
        Layers {
            baseline: inner(),
            ours: MandateLayer::new(w.ours(true), Requirements::new().scopes([SCOPE]))
                .layer(inner()),
            ours_cache_off: MandateLayer::new(w.ours(false), Requirements::new().scopes([SCOPE]))
                .layer(inner()),
            jwt_authorizer: w.jwt_authorizer().layer(inner()),
            aliri,
        }
    }};
}

/// Time `iters` calls of `f` on tokens never seen before (minted untimed).
fn cold_iter(w: &World, iters: u64, mut f: impl FnMut(&str)) -> Duration {
    let pool = w.tokens(iters);
    let start = Instant::now();
    for t in &pool {
        f(t);
    }
    start.elapsed()
}

/// Like [`cold_iter`], for a service: requests are built untimed.
fn cold_calls<S: Service<Req, Response = Res>>(w: &World, svc: &mut S, iters: u64) -> Duration
where
    S::Error: std::fmt::Debug,
{
    let reqs: Vec<Req> = w.tokens(iters).iter().map(|t| request(t)).collect();
    let mut statuses = Vec::with_capacity(reqs.len());
    let start = Instant::now();
    for req in reqs {
        statuses.push(call(svc, req));
    }
    let elapsed = start.elapsed();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "a cold request was denied"
    );
    elapsed
}

fn repeated_calls<S: Service<Req, Response = Res>>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    token: &str,
    svc: &mut S,
) where
    S::Error: std::fmt::Debug,
{
    assert_eq!(call(svc, request(token)), 200, "{name} denied the token");
    g.bench_function(name, |b| {
        b.iter_batched(
            || request(token),
            |req| call(svc, req),
            BatchSize::SmallInput,
        )
    });
}

fn peers_cold(c: &mut Criterion) {
    let w = World::new();
    let mut l = layers!(&w);
    let ours = w.ours(true);
    let ours_off = w.ours(false);
    let (key, validation) = w.jsonwebtoken();
    let floor = w.floor();
    let r = Requirements::new().scopes([SCOPE]);

    // Every contender accepts the token and rejects a missing scope.
    let probe = w.token();
    assert!(floor.verify(&probe));
    for status in [
        call(&mut l.ours, request(&probe)),
        call(&mut l.ours_cache_off, request(&probe)),
        call(&mut l.jwt_authorizer, request(&probe)),
        call(&mut l.aliri, request(&probe)),
    ] {
        assert_eq!(status, 200);
    }
    let no_scope = w.sts.mandate().scopes(["other"]).ttl(3600).sign();
    for status in [
        call(&mut l.ours, request(&no_scope)),
        call(&mut l.jwt_authorizer, request(&no_scope)),
        call(&mut l.aliri, request(&no_scope)),
    ] {
        assert_eq!(status, 403, "a token without the scope must be denied");
    }
    let d = jsonwebtoken::decode::<PeerClaims>(&no_scope, &key, &validation).unwrap();
    assert!(!has_scope(&d.claims));

    let mut g = c.benchmark_group("peers_cold");
    g.bench_function("raw_aws_lc_es256_verify", |b| {
        b.iter_custom(|n| cold_iter(&w, n, |t| assert!(floor.verify(t))))
    });
    g.bench_function("jsonwebtoken_decode", |b| {
        b.iter_custom(|n| {
            cold_iter(&w, n, |t| {
                let d = jsonwebtoken::decode::<PeerClaims>(t, &key, &validation).unwrap();
                assert!(has_scope(&d.claims));
            })
        })
    });
    g.bench_function("ours_verify", |b| {
        b.iter_custom(|n| cold_iter(&w, n, |t| drop(now(ours.verify(t, &r)).unwrap())))
    });
    g.bench_function("ours_verify_cache_off", |b| {
        b.iter_custom(|n| cold_iter(&w, n, |t| drop(now(ours_off.verify(t, &r)).unwrap())))
    });
    g.bench_function("ours_layer", |b| {
        b.iter_custom(|n| cold_calls(&w, &mut l.ours, n))
    });
    g.bench_function("ours_layer_cache_off", |b| {
        b.iter_custom(|n| cold_calls(&w, &mut l.ours_cache_off, n))
    });
    g.bench_function("jwt_authorizer", |b| {
        b.iter_custom(|n| cold_calls(&w, &mut l.jwt_authorizer, n))
    });
    g.bench_function("aliri_tower", |b| {
        b.iter_custom(|n| cold_calls(&w, &mut l.aliri, n))
    });
    g.finish();
}

fn peers_repeated(c: &mut Criterion) {
    let w = World::new();
    let mut l = layers!(&w);
    let ours = w.ours(true);
    let (key, validation) = w.jsonwebtoken();
    let r = Requirements::new().scopes([SCOPE]);
    let tok = w.token();

    let mut g = c.benchmark_group("peers_repeated");
    repeated_calls(&mut g, "unprotected_baseline", &tok, &mut l.baseline);
    repeated_calls(&mut g, "ours_layer", &tok, &mut l.ours);
    now(ours.verify(&tok, &r)).unwrap();
    g.bench_function("ours_verify", |b| {
        b.iter(|| now(ours.verify(&tok, &r)).unwrap())
    });
    repeated_calls(&mut g, "jwt_authorizer", &tok, &mut l.jwt_authorizer);
    repeated_calls(&mut g, "aliri_tower", &tok, &mut l.aliri);
    g.bench_function("jsonwebtoken_decode", |b| {
        b.iter(|| {
            let d = jsonwebtoken::decode::<PeerClaims>(&tok, &key, &validation).unwrap();
            assert!(has_scope(&d.claims));
            d
        })
    });
    g.finish();
}

fn ours_checks(c: &mut Criterion) {
    let w = World::new();
    let r = Requirements::new().scopes([SCOPE]);
    let single = r.clone().single_use();
    let empty = w.ours(true);
    let revoked = w.ours(true);
    for i in 0..100_000 {
        revoked.revocations().revoke(&format!("anchor-{i:08}"));
    }
    let tok = w.token();

    let mut g = c.benchmark_group("ours_checks");
    for (name, v) in [("revocation_empty", &empty), ("revocation_100k", &revoked)] {
        g.bench_function(format!("cold_{name}"), |b| {
            b.iter_custom(|n| cold_iter(&w, n, |t| drop(now(v.verify(t, &r)).unwrap())))
        });
        now(v.verify(&tok, &r)).unwrap();
        g.bench_function(format!("repeated_{name}"), |b| {
            b.iter(|| now(v.verify(&tok, &r)).unwrap())
        });
    }
    let replay = w.ours(true);
    g.bench_function("cold_single_use_off", |b| {
        b.iter_custom(|n| cold_iter(&w, n, |t| drop(now(replay.verify(t, &r)).unwrap())))
    });
    g.bench_function("cold_single_use_on", |b| {
        b.iter_custom(|n| cold_iter(&w, n, |t| drop(now(replay.verify(t, &single)).unwrap())))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5));
    targets = peers_cold, peers_repeated, ours_checks
}
criterion_main!(benches);
