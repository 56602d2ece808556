//! A real loopback JWKS server that misbehaves on command (`TestIssuer::set_fault`),
//! and what the verifier makes of it: every row of the fault table.
//!
//! | fault | expected |
//! | --- | --- |
//! | hung connect, headers never come, trickled body | deadline: 503, other zones fine |
//! | 100 MB body, endless chunked body | abort at the size cap |
//! | 3xx to another host, to `http://`, to 169.254.169.254 | not followed |
//! | non-200, empty 200, bad JSON, `keys` not an array or `[]` | last good keys, never empty |
//! | a garbage key among good ones | only that key is skipped |
//! | rotation | a new kid after one refetch; a removed kid rejected after refresh |
//! | 1,000 concurrent requests on a cold cache | exactly one GET |
//! | a refresh that finishes late | never overwrites a newer keyset |
//!
//! Run: `cargo test --all-features --test jwks_faults`. No test asserts on time; the
//! deadlines are short only so the suite is quick.

mod hostile;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use caracal_verifier::testing::{JwksFault, TestIssuer};
use caracal_verifier::{
    BoxFuture, FetchError, HttpFetcher, JwksFetcher, ManualClock, Requirements, Verifier,
    VerifierBuilder,
};
use hostile::{AUD, Outcome, T0, ZONE, builder, env_with, invalid, ok};
use serde_json::json;

const DEADLINE: Duration = Duration::from_millis(500);

fn sts_unavailable(reason: &str) -> Outcome {
    Outcome {
        code: "sts_unavailable".into(),
        reason: Some(reason.into()),
    }
}

async fn verify(v: &Verifier, token: &str) -> Outcome {
    Outcome::of(&v.verify(token, &Requirements::new()).await)
}

/// A started issuer and a verifier that has not fetched yet (cold cache).
async fn cold(
    f: impl FnOnce(VerifierBuilder) -> VerifierBuilder,
) -> (TestIssuer, ManualClock, Verifier) {
    let sts = TestIssuer::start(ZONE).await.expect("start");
    let clock = ManualClock::new(Duration::from_secs(T0));
    sts.set_clock(clock.clone());
    let v = f(builder(&sts, &clock)).build().expect("build");
    (sts, clock, v)
}

// ---------------------------------------------------------------------------------
// Deadlines
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_server_and_trickled_body_fail_closed_at_the_deadline() {
    // Another zone on another STS, healthy throughout.
    let other = TestIssuer::start("zone-2").await.expect("start");
    let clock = ManualClock::new(Duration::from_secs(T0));
    other.set_clock(clock.clone());
    let other_v = Verifier::builder()
        .issuer(other.issuer_url())
        .audience(AUD)
        .zone("zone-2")
        .clock(clock.clone())
        .build()
        .expect("build");
    let other_token = other.mandate().sign();

    for (name, fault) in [
        ("headers never come", JwksFault::Hang),
        (
            "body trickled byte by byte",
            JwksFault::Trickle(Duration::from_millis(50)),
        ),
        (
            "response delayed past the deadline",
            JwksFault::Delay(Duration::from_secs(30)),
        ),
    ] {
        let (sts, _clock, v) = cold(|b| b.jwks_fetch_timeout(DEADLINE)).await;
        sts.set_fault(Some(fault));
        let token = sts.mandate().sign();
        let (hung, healthy) = tokio::join!(verify(&v, &token), verify(&other_v, &other_token));
        assert_eq!(hung, sts_unavailable("keyset fetch failed"), "{name}");
        assert_eq!(healthy, ok(), "{name}: another zone is unaffected");
        assert!(!v.is_ready(), "{name}");
        assert_eq!(v.jwks_fetches(), 1, "{name}");
        // Within the cooldown, later requests fail fast instead of queueing fetches.
        assert_eq!(
            verify(&v, &token).await,
            sts_unavailable("no keys yet; retrying after cooldown"),
            "{name}"
        );
        assert_eq!(v.jwks_fetches(), 1, "{name}");
    }
    assert_eq!(verify(&other_v, &other_token).await, ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_connect_and_refused_connect_fail_closed() {
    // A socket that is bound and listening but never accepts: the kernel completes
    // the handshake into its backlog and nothing ever answers. (A connect that hangs
    // in SYN_SENT cannot be staged on loopback; this is the closest.)
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_url = format!("http://{}", silent.local_addr().expect("addr"));
    // A port with nothing on it: connection refused.
    let refused_url = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", l.local_addr().expect("addr"))
    };
    let sts = TestIssuer::start(ZONE).await.expect("start");
    let token = sts.mandate().sign();
    for url in [silent_url, refused_url] {
        let v = Verifier::builder()
            .issuer(&url)
            .audience(AUD)
            .zone(ZONE)
            .jwks_fetch_timeout(DEADLINE)
            .build()
            .expect("build");
        assert_eq!(
            verify(&v, &token).await,
            sts_unavailable("keyset fetch failed"),
            "{url}"
        );
    }
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_cache_rides_out_a_hung_refresh() {
    let e = env_with(|b| b.jwks_fetch_timeout(DEADLINE)).await;
    e.sts.set_fault(Some(JwksFault::Hang));
    e.clock.advance(Duration::from_secs(301));
    // Past the TTL: served from the last good keys while the refresh hangs and dies.
    for _ in 0..3 {
        assert_eq!(verify(&e.verifier, &e.good()).await, ok());
    }
}

// ---------------------------------------------------------------------------------
// Size cap
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn huge_and_endless_bodies_abort_at_the_size_cap() {
    let sts = TestIssuer::start(ZONE).await.expect("start");
    let url = sts.jwks_url(ZONE);
    let fetcher = HttpFetcher::builder().build().expect("fetcher");
    let cap = caracal_verifier::DEFAULT_MAX_JWKS_BYTES;
    for (name, fault) in [
        ("100 MB chunked body", JwksFault::Huge(100 << 20)),
        ("endless chunked body", JwksFault::Huge(usize::MAX)),
    ] {
        sts.set_fault(Some(fault.clone()));
        // The transport itself stops reading at the cap.
        let err = fetcher.fetch(&url, cap).await.expect_err(name);
        assert_eq!(
            err.to_string(),
            "jwks fetch failed: body exceeds size cap",
            "{name}"
        );
        // The verifier fails closed. Its deadline is far away, so only the cap can
        // end an endless body.
        let (cold_sts, _clock, v) = cold(|b| b.jwks_fetch_timeout(Duration::from_secs(600))).await;
        cold_sts.set_fault(Some(fault));
        assert_eq!(
            verify(&v, &cold_sts.mandate().sign()).await,
            sts_unavailable("keyset fetch failed"),
            "{name}"
        );
    }

    // A valid document one byte over the cap is refused; under a larger cap it is used.
    let (sts, _clock, small) = cold(|b| b).await;
    let doc = json!({"keys": [sts.public_jwk("key-1")]}).to_string();
    let padded = format!("{doc}{}", " ".repeat(cap + 1 - doc.len()));
    assert_eq!(padded.len(), cap + 1);
    sts.set_fault(Some(JwksFault::Body(padded.into_bytes())));
    let err = fetcher
        .fetch(&sts.jwks_url(ZONE), cap)
        .await
        .expect_err("over the cap");
    assert_eq!(err.to_string(), "jwks fetch failed: body exceeds size cap");
    let token = sts.mandate().sign();
    assert_eq!(
        verify(&small, &token).await,
        sts_unavailable("keyset fetch failed")
    );
    let clock = ManualClock::new(Duration::from_secs(T0));
    let large = builder(&sts, &clock)
        .max_jwks_bytes(2 * cap)
        .build()
        .expect("build");
    assert_eq!(verify(&large, &token).await, ok());
}

// ---------------------------------------------------------------------------------
// Redirects
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn redirects_are_never_followed() {
    // The redirect target serves a perfectly good keyset of its own: following the
    // redirect would make its keys verify the attacker's token.
    let target = TestIssuer::start(ZONE).await.expect("start");
    let target_port = target.addr().port();
    let fetcher = HttpFetcher::builder().build().expect("fetcher");
    for (name, location) in [
        ("another host", target.jwks_url(ZONE)),
        (
            "plain http on another name",
            format!("http://localhost:{target_port}/.well-known/jwks.json?zone_id={ZONE}"),
        ),
        (
            "cloud metadata",
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/".to_owned(),
        ),
        (
            "https elsewhere",
            "https://evil.example/jwks.json".to_owned(),
        ),
        (
            "relative, same host",
            format!("/.well-known/jwks.json?zone_id={ZONE}"),
        ),
    ] {
        let (sts, _clock, v) = cold(|b| b.jwks_fetch_timeout(DEADLINE)).await;
        sts.set_fault(Some(JwksFault::Redirect(location)));
        let forged = target
            .mandate()
            .claim("iss", json!(sts.issuer_url()))
            .sign();
        assert_eq!(
            verify(&v, &forged).await,
            sts_unavailable("keyset fetch failed"),
            "{name}"
        );
        assert_eq!(sts.jwks_requests(), 1, "{name}: not followed, not retried");
        let err = fetcher
            .fetch(&sts.jwks_url(ZONE), 1 << 20)
            .await
            .expect_err(name);
        assert_eq!(err.to_string(), "jwks fetch failed: status 302", "{name}");
    }
    assert_eq!(
        target.jwks_requests(),
        0,
        "the redirect target was contacted"
    );
}

// ---------------------------------------------------------------------------------
// Bad answers: keep the last good keys up to max staleness, never cache empty
// ---------------------------------------------------------------------------------

/// Wait (at most 5 s) until more than `n` of the verifier's JWKS fetches have
/// finished: succeeded, failed, or been abandoned at the deadline.
async fn refreshed_since(v: &Verifier, n: u64) {
    tokio::time::timeout(Duration::from_secs(5), v.jwks_refreshed_since(n))
        .await
        .expect("a JWKS fetch finished within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_answers_keep_the_last_good_keys_until_max_staleness() {
    let garbage_only =
        json!({"keys": [{"kty": "EC", "kid": "g", "crv": "P-256", "x": "!", "y": "?"}]});
    let faults: Vec<(&str, JwksFault)> = vec![
        ("500", JwksFault::Status(500)),
        ("503", JwksFault::Status(503)),
        ("404", JwksFault::Status(404)),
        ("429", JwksFault::Status(429)),
        ("204", JwksFault::Status(204)),
        ("304", JwksFault::Status(304)),
        ("empty 200", JwksFault::Body(Vec::new())),
        ("invalid JSON", JwksFault::Body(b"not json".to_vec())),
        ("truncated JSON", JwksFault::Body(b"{\"keys\":[".to_vec())),
        (
            "keys is an object",
            JwksFault::Body(b"{\"keys\":{}}".to_vec()),
        ),
        (
            "keys is a string",
            JwksFault::Body(b"{\"keys\":\"key-1\"}".to_vec()),
        ),
        ("keys is null", JwksFault::Body(b"{\"keys\":null}".to_vec())),
        ("no keys member", JwksFault::Body(b"{}".to_vec())),
        ("a bare array", JwksFault::Body(b"[]".to_vec())),
        ("keys: []", JwksFault::Body(b"{\"keys\":[]}".to_vec())),
        (
            "only garbage keys",
            JwksFault::Body(garbage_only.to_string().into_bytes()),
        ),
        (
            "duplicate keys member",
            JwksFault::Body(b"{\"keys\":[],\"keys\":[]}".to_vec()),
        ),
    ];
    for (name, fault) in faults {
        let e = env_with(|b| b).await;
        assert_eq!(verify(&e.verifier, &e.good()).await, ok(), "{name}");
        e.sts.set_fault(Some(fault));

        // Past the TTL: the refresh fails in the background; the old keys keep serving.
        let before = e.verifier.jwks_refreshes();
        e.clock.advance(Duration::from_secs(301));
        assert_eq!(verify(&e.verifier, &e.good()).await, ok(), "{name}");
        refreshed_since(&e.verifier, before).await;
        assert_eq!(e.sts.jwks_requests(), 2, "{name}: one refresh");
        // The refresh has failed and installed nothing: the keys are the warm-up's.
        assert_eq!(
            e.verifier.jwks_age(),
            Some(Duration::from_secs(301)),
            "{name}"
        );
        for _ in 0..3 {
            assert_eq!(
                verify(&e.verifier, &e.good()).await,
                ok(),
                "{name}: the failed refresh must not empty the keyset"
            );
        }
        assert!(e.verifier.is_ready(), "{name}");

        // Past the maximum staleness (30 min after the last good fetch): fail closed.
        e.clock.set(Duration::from_secs(T0 + 1801));
        assert_eq!(
            verify(&e.verifier, &e.good()).await,
            sts_unavailable("keys too stale"),
            "{name}"
        );
        assert!(!e.verifier.is_ready(), "{name}");

        // Recovery: the next good answer after the cooldown is used at once.
        e.sts.set_fault(None);
        e.clock.advance(Duration::from_secs(3));
        assert_eq!(verify(&e.verifier, &e.good()).await, ok(), "{name}");
        assert!(e.verifier.is_ready(), "{name}");
    }
}

/// A verified-mandate cache hit must not outlive the keyset's maximum staleness:
/// once fresh tokens get 503 `sts_unavailable`, so must a token verified earlier.
///
/// Regression: cache hits used to skip the keyset's age checks (fixed in 81cc290).
#[tokio::test]
async fn cached_mandates_do_not_outlive_max_staleness() {
    let e = env_with(|b| {
        b.jwks_ttl(Duration::from_secs(10))
            .jwks_max_staleness(Duration::from_secs(60))
    })
    .await;
    let cached = e.good();
    assert_eq!(verify(&e.verifier, &cached).await, ok());
    e.sts.set_fault(Some(JwksFault::Status(503)));
    e.clock.advance(Duration::from_secs(61));
    assert_eq!(
        verify(&e.verifier, &e.good()).await,
        sts_unavailable("keys too stale")
    );
    assert!(!e.verifier.is_ready());
    assert_eq!(
        verify(&e.verifier, &cached).await,
        sts_unavailable("keys too stale"),
        "a cached mandate was accepted on keys past their maximum staleness"
    );
}

#[tokio::test]
async fn a_garbage_key_among_good_ones_is_the_only_one_skipped() {
    let e = env_with(|b| b).await;
    for garbage in [
        json!({"kty": "EC", "kid": "garbage", "crv": "P-256", "x": "!!!", "y": "???"}),
        json!(["not", "a", "key"]),
        json!({"kid": "garbage-2"}),
    ] {
        e.sts.publish_raw_key(ZONE, garbage);
    }
    let kid2 = e.sts.rotate_key();
    e.clock.advance(Duration::from_secs(3));
    assert_eq!(verify(&e.verifier, &e.sts.mandate().sign()).await, ok());
    assert_eq!(e.sts.mandate().claims()["iss"], json!(e.sts.issuer_url()));
    assert_eq!(
        verify(&e.verifier, &e.sts.mandate().kid("key-1").sign()).await,
        ok()
    );
    assert_eq!(e.verifier.jwks_fetches(), 2, "one refetch for {kid2}");
    let forged = e
        .sts
        .mandate()
        .kid("key-1")
        .header("kid", json!("garbage"))
        .sign();
    assert_eq!(verify(&e.verifier, &forged).await, invalid("unknown_key"));
}

// ---------------------------------------------------------------------------------
// Rotation
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn rotation_new_kid_after_one_refetch_removed_kid_after_refresh() {
    let e = env_with(|b| {
        b.jwks_ttl(Duration::from_secs(60))
            .jwks_cooldown(Duration::from_secs(1))
    })
    .await;
    let old = e.sts.mandate().kid("key-1").sign();
    assert_eq!(verify(&e.verifier, &old).await, ok());
    assert_eq!((e.verifier.jwks_fetches(), e.sts.jwks_requests()), (1, 1));

    // A new kid is accepted after exactly one refetch.
    let kid2 = e.sts.rotate_key();
    e.clock.advance(Duration::from_secs(2));
    let new = e.sts.mandate().sign();
    assert_eq!(verify(&e.verifier, &new).await, ok(), "{kid2}");
    assert_eq!((e.verifier.jwks_fetches(), e.sts.jwks_requests()), (2, 2));

    // A removed kid still verifies until the keyset is refreshed...
    e.sts.remove_key("key-1");
    assert_eq!(verify(&e.verifier, &old).await, ok());
    // ...then it is rejected, and so is the mandate cached under it.
    e.clock.advance(Duration::from_secs(2));
    let probe = e.sts.mandate().header("kid", json!("not-published")).sign();
    assert_eq!(verify(&e.verifier, &probe).await, invalid("unknown_key"));
    assert_eq!(e.verifier.jwks_fetches(), 3);
    assert_eq!(verify(&e.verifier, &old).await, invalid("unknown_key"));
    let fresh_old = e.sts.mandate().kid("key-1").sign();
    assert_eq!(
        verify(&e.verifier, &fresh_old).await,
        invalid("unknown_key")
    );
    assert_eq!(verify(&e.verifier, &new).await, ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_kid_rejected_after_a_background_refresh() {
    let e = env_with(|b| {
        b.jwks_ttl(Duration::from_secs(60))
            .jwks_cooldown(Duration::from_secs(1))
    })
    .await;
    let old = e.sts.mandate().kid("key-1").sign();
    assert_eq!(verify(&e.verifier, &old).await, ok());
    let _kid2 = e.sts.rotate_key();
    e.sts.remove_key("key-1");
    // Past the TTL: a request on the cold path is served from the stale set and
    // starts a background refresh.
    e.clock.advance(Duration::from_secs(61));
    let trigger = e.sts.mandate().kid("key-1").sign();
    let before = e.verifier.jwks_refreshes();
    assert_eq!(verify(&e.verifier, &trigger).await, ok());
    refreshed_since(&e.verifier, before).await;
    assert_eq!(e.verifier.jwks_fetches(), 2);
    assert_eq!(verify(&e.verifier, &old).await, invalid("unknown_key"));
    assert_eq!(verify(&e.verifier, &e.sts.mandate().sign()).await, ok());
}

/// Traffic made only of cache hits still notices a removed key: past the TTL a hit
/// starts the background refresh, and the refresh retires the key and its mandates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hits_alone_drive_the_ttl_refresh() {
    let e = env_with(|b| {
        b.jwks_ttl(Duration::from_secs(60))
            .jwks_cooldown(Duration::from_secs(1))
    })
    .await;
    let old = e.sts.mandate().kid("key-1").sign();
    assert_eq!(verify(&e.verifier, &old).await, ok());
    let _kid2 = e.sts.rotate_key();
    e.sts.remove_key("key-1");
    e.clock.advance(Duration::from_secs(61));
    // The hit past the TTL is still served from the old keys, and starts the refresh.
    let before = e.verifier.jwks_refreshes();
    assert_eq!(verify(&e.verifier, &old).await, ok());
    refreshed_since(&e.verifier, before).await;
    assert_eq!(verify(&e.verifier, &old).await, invalid("unknown_key"));
    assert_eq!(e.verifier.jwks_fetches(), 2);
}

/// Background refreshes back to back: once a refresh has been awaited as completed,
/// the next trigger starts the next one (the "in progress" flag is down before the
/// completion is announced, so no trigger falls between the two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_background_refresh_starts_right_after_one_completes() {
    let e = env_with(|b| {
        b.jwks_ttl(Duration::from_secs(60))
            .jwks_cooldown(Duration::from_secs(1))
    })
    .await;
    assert_eq!(verify(&e.verifier, &e.sts.mandate().sign()).await, ok());
    for round in 0..20u64 {
        e.clock.advance(Duration::from_secs(61));
        let before = e.verifier.jwks_refreshes();
        assert_eq!(verify(&e.verifier, &e.sts.mandate().sign()).await, ok());
        refreshed_since(&e.verifier, before).await;
        assert_eq!(e.verifier.jwks_fetches(), round + 2, "round {round}");
    }
}

// ---------------------------------------------------------------------------------
// Single flight
// ---------------------------------------------------------------------------------

async fn burst(v: &Verifier, tokens: Vec<String>) -> Vec<Outcome> {
    let tasks: Vec<_> = tokens
        .into_iter()
        .map(|t| {
            let v = v.clone();
            tokio::spawn(async move { verify(&v, &t).await })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_on_a_cold_cache_make_one_get() {
    for delay in [Some(Duration::from_millis(200)), None] {
        let (sts, _clock, v) = cold(|b| b).await;
        if let Some(d) = delay {
            // Hold the one fetch in flight while the whole burst queues behind it.
            sts.set_fault(Some(JwksFault::Delay(d)));
        }
        let tokens: Vec<String> = (0..1000).map(|_| sts.mandate().sign()).collect();
        let outcomes = burst(&v, tokens).await;
        let bad: Vec<_> = outcomes.iter().filter(|o| **o != ok()).collect();
        assert!(
            bad.is_empty(),
            "delay {delay:?}: {} denied, e.g. {:?}",
            bad.len(),
            bad[0]
        );
        assert_eq!(sts.jwks_requests(), 1, "delay {delay:?}");
        assert_eq!(v.jwks_fetches(), 1, "delay {delay:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_during_a_slow_background_refresh_make_no_second_get() {
    let e = env_with(|b| b).await;
    let before = e.verifier.jwks_refreshes();
    e.sts
        .set_fault(Some(JwksFault::Delay(Duration::from_millis(300))));
    e.clock.advance(Duration::from_secs(301));
    let tokens: Vec<String> = (0..200).map(|_| e.good()).collect();
    let outcomes = burst(&e.verifier, tokens).await;
    assert!(outcomes.iter().all(|o| *o == ok()));
    // Every request of the burst has been answered; once the refresh they started
    // has completed, any second fetch would have been started too.
    refreshed_since(&e.verifier, before).await;
    assert_eq!(e.sts.jwks_requests(), 2);
    assert_eq!(e.verifier.jwks_fetches(), 2);
    assert_eq!(e.verifier.jwks_refreshes(), 2);
}

// ---------------------------------------------------------------------------------
// A refresh that finishes late
// ---------------------------------------------------------------------------------

/// A fetcher that plays back a script of (delay, body) answers and records how many
/// fetches started, finished, were abandoned, and overlapped.
#[derive(Debug, Default)]
struct Script {
    answers: Mutex<VecDeque<(Duration, Vec<u8>)>>,
    started: AtomicUsize,
    finished: AtomicUsize,
    abandoned: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

#[derive(Debug, Clone)]
struct Scripted(Arc<Script>);

struct Flight<'a>(&'a Script, bool);

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !self.1 {
            self.0.abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl JwksFetcher for Scripted {
    fn fetch<'a>(
        &'a self,
        _url: &'a str,
        _max: usize,
    ) -> BoxFuture<'a, Result<Vec<u8>, FetchError>> {
        Box::pin(async move {
            let s = &*self.0;
            s.started.fetch_add(1, Ordering::SeqCst);
            let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            s.max_in_flight.fetch_max(now, Ordering::SeqCst);
            let mut flight = Flight(s, false);
            let next = s.answers.lock().expect("lock").pop_front();
            let (delay, body) = next.ok_or_else(|| FetchError::new("script exhausted"))?;
            tokio::time::sleep(delay).await;
            s.finished.fetch_add(1, Ordering::SeqCst);
            flight.1 = true;
            Ok(body)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_refresh_never_overwrites_a_newer_keyset() {
    let sts = TestIssuer::start(ZONE).await.expect("start");
    let kid2 = sts.rotate_key();
    let old = json!({"keys": [sts.public_jwk("key-1")]})
        .to_string()
        .into_bytes();
    let new = json!({"keys": [sts.public_jwk("key-1"), sts.public_jwk(&kid2)]})
        .to_string()
        .into_bytes();
    let script = Arc::new(Script::default());
    script.answers.lock().expect("lock").extend([
        (Duration::ZERO, old.clone()),
        // The slow one: it would deliver the *old* document long after the deadline.
        (Duration::from_secs(5), old),
        (Duration::ZERO, new.clone()),
        // A slow answer inside the deadline.
        (Duration::from_millis(300), new),
    ]);
    let clock = ManualClock::new(Duration::from_secs(T0));
    sts.set_clock(clock.clone());
    let v = builder(&sts, &clock)
        .jwks_fetcher(Scripted(script.clone()))
        .jwks_fetch_timeout(DEADLINE)
        .jwks_ttl(Duration::from_secs(60))
        .jwks_cooldown(Duration::from_secs(1))
        .build()
        .expect("build");
    v.warm_up().await.expect("warm up");
    let with_key2 = || sts.mandate().sign();
    let with_key1 = || sts.mandate().kid("key-1").sign();

    // 1. The background refresh past the TTL gets the slow answer; the deadline
    //    abandons it. Once that attempt has completed, its fetch (and the old
    //    document it would have answered with) has been dropped, not left running:
    //    it can never complete and install that document.
    clock.advance(Duration::from_secs(61));
    let before = v.jwks_refreshes();
    assert_eq!(verify(&v, &with_key1()).await, ok());
    refreshed_since(&v, before).await;
    assert_eq!(script.abandoned.load(Ordering::SeqCst), 1);
    assert_eq!(script.in_flight.load(Ordering::SeqCst), 0);
    assert_eq!(script.finished.load(Ordering::SeqCst), 1);

    // 2. The next fetch gets the new document.
    clock.advance(Duration::from_secs(2));
    assert_eq!(verify(&v, &with_key2()).await, ok());
    assert_eq!(script.finished.load(Ordering::SeqCst), 2);

    // 3. No late answer is pending (nothing is in flight, and the abandoned fetch
    //    no longer exists), so the new keyset stands.
    assert_eq!(script.in_flight.load(Ordering::SeqCst), 0);
    assert_eq!(verify(&v, &with_key2()).await, ok());
    assert_eq!(script.abandoned.load(Ordering::SeqCst), 1);
    assert_eq!(script.finished.load(Ordering::SeqCst), 2);

    // 4. A slow refresh inside the deadline: requests arriving meanwhile are served
    //    from the current keys, no second fetch starts or overlaps it, and whatever it
    //    installs is the newest fetch *started*, so nothing older can land after it.
    clock.advance(Duration::from_secs(61));
    let before = v.jwks_refreshes();
    let during = burst(&v, (0..20).map(|_| with_key2()).collect()).await;
    assert!(during.iter().all(|o| *o == ok()), "{during:?}");
    refreshed_since(&v, before).await;
    assert_eq!(script.finished.load(Ordering::SeqCst), 3);
    assert_eq!(
        script.max_in_flight.load(Ordering::SeqCst),
        1,
        "fetches never overlap"
    );
    assert_eq!(script.started.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_failing_zone_does_not_affect_a_verifier_of_another_zone_on_the_same_sts() {
    let e = env_with(|b| b).await;
    let kid = e.sts.add_zone("zone-2");
    let v2 = builder(&e.sts, &e.clock)
        .zone("zone-2")
        .build()
        .expect("build");
    let t2 = e.sts.mandate().zone("zone-2").kid(&kid).sign();
    assert_eq!(verify(&v2, &t2).await, ok());
    assert_eq!(verify(&e.verifier, &t2).await, invalid("unknown_key"));
    assert_eq!(verify(&e.verifier, &e.good()).await, ok());
}
