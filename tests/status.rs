//! `Verifier::status`: the troubleshooting snapshot.
//!
//! Hostile cases first: what must never be in it (a Redis URL's password, the
//! stream key, a token just verified and its ids, key material, text a failing
//! keyset endpoint or fetcher sent), and that lists from outside stay bounded.
//! Then that it follows the verifier: a key rotation and a failed fetch (waited for
//! with `jwks_refreshed_since`, on an injected clock: nothing sleeps), a revocation
//! feed of one's own, the caches and the replay guard; and that its JSON is valid
//! and keeps its key order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use caracal_verifier::revocation::{FeedStatus, RevocationSet};
use caracal_verifier::source::{FeedPolicy, FeedReporter, Running, Source, SourceContext};
use caracal_verifier::status::{MAX_KIDS, MAX_NAME_CHARS, Status};
use caracal_verifier::testing::{JwksFault, TestIssuer};
use caracal_verifier::{
    BoxFuture, ConfigError, FetchError, JwksFetcher, ManualClock, Requirements, Verifier,
    VerifierBuilder,
};
use serde_json::Value;

const ZONE: &str = "zone-1";
const AUD: &str = "resource://api";
const T0: u64 = 1_800_000_000;
const TTL: Duration = Duration::from_secs(300);

async fn issuer() -> (TestIssuer, ManualClock) {
    let sts = TestIssuer::start(ZONE).await.expect("start");
    let clock = ManualClock::new(Duration::from_secs(T0));
    sts.set_clock(clock.clone());
    (sts, clock)
}

fn builder(sts: &TestIssuer, clock: &ManualClock) -> VerifierBuilder {
    Verifier::builder()
        .issuer(sts.issuer_url())
        .audience(AUD)
        .zone(ZONE)
        .clock(clock.clone())
        .jwks_ttl(TTL)
}

fn json_of(v: &Verifier) -> String {
    let bytes = v.status_json();
    let text = String::from_utf8(bytes).expect("UTF-8");
    let _: Value = serde_json::from_str(&text).expect("valid JSON");
    text
}

/// Neither the JSON nor the `Debug` of the status holds any of `secrets`.
fn assert_absent(v: &Verifier, secrets: &[&str]) {
    let json = json_of(v);
    let debug = format!("{:?}", v.status());
    for secret in secrets {
        assert!(!secret.is_empty());
        assert!(
            !json.contains(secret),
            "{secret:?} in the status JSON:\n{json}"
        );
        assert!(!debug.contains(secret), "{secret:?} in the status Debug");
    }
}

/// Wait (at most 5 s) until more than `n` JWKS fetches have finished.
async fn refreshed_since(v: &Verifier, n: u64) {
    tokio::time::timeout(Duration::from_secs(5), v.jwks_refreshed_since(n))
        .await
        .expect("a JWKS fetch finished within 5 s");
}

// ---------------------------------------------------------------------------------
// What must never be in it
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_verified_token_and_its_ids_never_appear() {
    let (sts, clock) = issuer().await;
    let v = builder(&sts, &clock).build().unwrap();
    let token = sts
        .mandate()
        .jti("jti-secret-0001")
        .sid("sid-secret-0002")
        .root_sid("root-secret-0003")
        .agent_session("agent-secret-0004")
        .subject("subject-secret-0005")
        .client_id("client-secret-0006")
        .scopes(["scope-secret-0007"])
        .sign();
    let single_use = Requirements::new().single_use();
    // Verified three times: admitted to the cache on the second sighting, then a
    // hit; recorded once by the single-use guard.
    v.verify(&token, &single_use).await.unwrap();
    for _ in 0..2 {
        v.verify(&token, &Requirements::new()).await.unwrap();
    }
    let status = v.status();
    assert_eq!(status.mandate_cache.entries, 1, "{status:#?}");
    assert_eq!(status.replay.recorded, Some(1));
    let mut parts = token.split('.');
    let (header, payload, signature) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    // The header is the public `{"alg","kid","typ"}`; the rest identifies the token.
    assert!(!header.is_empty());
    let kid = sts.signing_kid();
    let jwk = sts.public_jwk(&kid);
    assert_absent(
        &v,
        &[
            &token,
            payload,
            signature,
            &signature[..16],
            "jti-secret-0001",
            "sid-secret-0002",
            "root-secret-0003",
            "agent-secret-0004",
            "subject-secret-0005",
            "client-secret-0006",
            "scope-secret-0007",
            // Key material: only the kid is shown.
            jwk["x"].as_str().unwrap(),
            jwk["y"].as_str().unwrap(),
        ],
    );
    assert!(json_of(&v).contains(&kid));
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn a_redis_url_password_and_the_stream_key_never_appear() {
    use caracal_verifier::redis::RedisRevocations;
    use caracal_verifier::revocation::StreamKey;

    const KEY_HEX: &str = "5ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e7aaaa";
    let (sts, clock) = issuer().await;
    // Nothing listens on port 1: the feed never connects, which is fine here.
    let feed = RedisRevocations::new("redis://feed-user:hunter2-redis-pw@127.0.0.1:1/3")
        .stream_key(StreamKey::from_hex(KEY_HEX).unwrap());
    let v = builder(&sts, &clock)
        .redis_revocations(feed)
        .build()
        .unwrap();
    let status = v.status();
    let feed = status.revocation.feed.as_ref().expect("a feed is attached");
    assert_eq!(feed.source.as_deref(), Some("redis-revocations"));
    assert!(!feed.fresh);
    assert!(!status.revocation.current);
    assert_eq!(status.sources.len(), 1);
    assert!(status.sources[0].revocation_feed);
    assert_absent(
        &v,
        &[
            "hunter2-redis-pw",
            "feed-user",
            "127.0.0.1:1",
            "redis://",
            KEY_HEX,
            &KEY_HEX[..16],
        ],
    );
    v.shutdown().await;
}

/// A fetcher whose errors carry text that must not travel.
#[derive(Debug)]
struct Leaky;

impl JwksFetcher for Leaky {
    fn fetch<'a>(
        &'a self,
        _url: &'a str,
        _max_bytes: usize,
    ) -> BoxFuture<'a, Result<Vec<u8>, FetchError>> {
        Box::pin(async {
            Err(FetchError::new(
                "proxy https://proxy-user:proxy-secret-pw@proxy.internal refused",
            ))
        })
    }
}

#[tokio::test]
async fn fetch_failures_are_categories_never_text_from_outside() {
    let (sts, clock) = issuer().await;
    let leaky = builder(&sts, &clock).jwks_fetcher(Leaky).build().unwrap();
    assert!(leaky.warm_up().await.is_err());
    assert_eq!(leaky.status().keys.last_fetch_error, Some("fetch_failed"));
    assert_absent(&leaky, &["proxy-secret-pw", "proxy-user", "proxy.internal"]);

    let v = builder(&sts, &clock).build().unwrap();
    for (fault, category, text) in [
        (
            JwksFault::Body(b"password=body-secret-text".to_vec()),
            "not_json",
            "body-secret-text",
        ),
        (
            JwksFault::Body(br#"{"keys":"keys-secret-text"}"#.to_vec()),
            "no_keys_array",
            "keys-secret-text",
        ),
        (
            JwksFault::Body(br#"{"keys":[{"kid":"kid-secret-text"}]}"#.to_vec()),
            "no_usable_key",
            "kid-secret-text",
        ),
        (JwksFault::Status(500), "fetch_failed", "500"),
    ] {
        sts.set_fault(Some(fault));
        assert!(v.warm_up().await.is_err());
        assert_eq!(
            v.status().keys.last_fetch_error,
            Some(category),
            "{category}"
        );
        assert!(!v.status().keys.ready);
        if category != "fetch_failed" {
            assert_absent(&v, &[text]);
        }
    }
}

#[tokio::test]
async fn kids_from_the_keyset_are_bounded_in_number_and_length() {
    let (sts, clock) = issuer().await;
    for _ in 0..MAX_KIDS + 4 {
        sts.rotate_key();
    }
    // A usable key under a very long kid (sorted first).
    let long_kid = "0".repeat(10_000);
    let mut jwk = sts.public_jwk(&sts.signing_kid());
    jwk["kid"] = Value::String(long_kid.clone());
    sts.publish_raw_key(ZONE, jwk);
    let v = builder(&sts, &clock).build().unwrap();
    v.warm_up().await.unwrap();
    let keys = v.status().keys;
    assert_eq!(keys.kid_count, (MAX_KIDS + 6) as u64);
    assert_eq!(keys.kids.len(), MAX_KIDS);
    assert!(keys.kids.windows(2).all(|w| w[0] < w[1]), "sorted");
    assert!(
        keys.kids
            .iter()
            .all(|k| k.chars().count() <= MAX_NAME_CHARS)
    );
    let cut = keys
        .kids
        .iter()
        .find(|k| k.starts_with("0000"))
        .expect("the long kid");
    assert!(cut.ends_with('…'));
    assert!(json_of(&v).len() < 16 * 1024, "the document stays small");
}

// ---------------------------------------------------------------------------------
// It follows the verifier
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_follows_a_key_rotation_and_a_failed_refresh() {
    let (sts, clock) = issuer().await;
    let v = builder(&sts, &clock).build().unwrap();
    let first = sts.signing_kid();
    v.warm_up().await.unwrap();
    let s = v.status();
    assert_eq!(s.keys.kids, [first.as_str()]);
    assert_eq!((s.keys.fetches_started, s.keys.fetches_finished), (1, 1));
    assert_eq!(s.keys.age_ms, Some(0));
    assert_eq!(s.keys.last_fetch_error, None);
    assert!(s.ready && s.readiness.keys);

    // Rotation: the new key is published and the old one withdrawn. Past the TTL a
    // request is served from the cached keys and starts a background refresh.
    let old_token = sts.mandate().ttl(3600).sign();
    let second = sts.rotate_key();
    sts.remove_key(&first);
    clock.advance(TTL + Duration::from_secs(1));
    assert_eq!(v.status().keys.age_ms, Some(301_000));
    let n = v.jwks_refreshes();
    v.verify(&old_token, &Requirements::new()).await.unwrap();
    refreshed_since(&v, n).await;
    let s = v.status();
    assert_eq!(s.keys.kids, [second.as_str()]);
    assert_eq!(s.keys.age_ms, Some(0));
    assert_eq!((s.keys.fetches_started, s.keys.fetches_finished), (2, 2));
    assert_eq!(s.keys.last_fetch_error, None);

    // A failed refresh (here the refetch for a kid the cache does not hold yet): the
    // last good keys stay, the verifier stays ready within the maximum staleness,
    // and the status says why the refresh failed.
    sts.set_fault(Some(JwksFault::Status(503)));
    let third = sts.rotate_key();
    clock.advance(Duration::from_secs(5));
    let n = v.jwks_refreshes();
    let token = sts.mandate().ttl(3600).sign();
    assert!(v.verify(&token, &Requirements::new()).await.is_err());
    refreshed_since(&v, n).await;
    let s = v.status();
    assert_eq!(s.keys.kids, [second.as_str()]);
    assert_eq!(s.keys.last_fetch_error, Some("fetch_failed"));
    assert_eq!(s.keys.age_ms, Some(5_000));
    assert_eq!((s.keys.fetches_started, s.keys.fetches_finished), (3, 3));
    assert!(s.keys.ready && s.ready);

    // The next refresh succeeds, and that clears the error.
    sts.set_fault(None);
    clock.advance(Duration::from_secs(5));
    let n = v.jwks_refreshes();
    v.verify(&token, &Requirements::new()).await.unwrap();
    refreshed_since(&v, n).await;
    let s = v.status();
    let mut both = [second, third];
    both.sort();
    assert_eq!(s.keys.kids, both);
    assert_eq!(s.keys.last_fetch_error, None);
    assert_eq!(s.keys.age_ms, Some(0));
    assert_eq!((s.keys.fetches_started, s.keys.fetches_finished), (4, 4));
}

/// What a test holds of a started feed.
#[derive(Clone, Default)]
struct Probe {
    started: Arc<Mutex<Option<(RevocationSet, FeedReporter)>>>,
    stopped: Arc<AtomicBool>,
}

impl Probe {
    fn get(&self) -> (RevocationSet, FeedReporter) {
        self.started.lock().unwrap().clone().expect("started")
    }
}

struct MyFeed(Probe);

#[derive(Debug)]
struct MyFeedTask(Arc<AtomicBool>);

impl Running for MyFeedTask {
    fn name(&self) -> &str {
        "webhook-revocations"
    }
    fn is_running(&self) -> bool {
        !self.0.load(Ordering::SeqCst)
    }
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        self.0.store(true, Ordering::SeqCst);
        Box::pin(async {})
    }
}

impl Source for MyFeed {
    fn start(
        self: Box<Self>,
        ctx: &mut SourceContext<'_>,
    ) -> Result<Box<dyn Running>, ConfigError> {
        let reporter = ctx.attach_revocation_feed(FeedPolicy::new(Duration::from_secs(30)))?;
        *self.0.started.lock().unwrap() = Some((ctx.revocations().clone(), reporter));
        Ok(Box::new(MyFeedTask(self.0.stopped.clone())))
    }
}

#[tokio::test]
async fn a_revocation_feed_of_ones_own_shows_in_status() {
    let (sts, clock) = issuer().await;
    let probe = Probe::default();
    let v = builder(&sts, &clock)
        .source(MyFeed(probe.clone()))
        .build()
        .unwrap();
    v.warm_up().await.unwrap();

    // Attached, not yet reporting: stale, and the verifier is not ready.
    let s = v.status();
    let feed = s.revocation.feed.clone().expect("feed");
    assert_eq!(feed.source.as_deref(), Some("webhook-revocations"));
    assert!(!feed.fresh && !feed.connected && !feed.caught_up);
    assert_eq!(feed.since_last_read_ms, None);
    assert!(!s.revocation.current && !s.readiness.revocation && !s.ready);
    assert_eq!(s.sources.len(), 1);
    let src = &s.sources[0];
    assert_eq!(src.name, "webhook-revocations");
    assert!(src.running && !src.ready && src.revocation_feed);

    // It reads, catches up and applies an event.
    let (set, reporter) = probe.get();
    reporter.mark_read_ok();
    reporter.set_caught_up(true);
    set.revoke("revoked-sid-secret");
    reporter.record_applied(Some(T0 * 1000 - 250));
    clock.advance(Duration::from_secs(2));
    let s = v.status();
    let feed = s.revocation.feed.clone().expect("feed");
    assert!(feed.fresh && feed.connected && feed.caught_up);
    assert_eq!(feed.applied, 1);
    assert_eq!(feed.lag_ms, 250);
    assert_eq!(feed.since_last_read_ms, Some(2_000));
    assert_eq!(feed.since_last_event_ms, Some(2_000));
    assert_eq!(s.revocation.anchors, 1);
    assert!(s.revocation.current && s.ready && s.sources[0].ready);
    // The feed's own snapshot and the status agree.
    let own: FeedStatus = v.revocation_feed().unwrap().status().feed.unwrap();
    assert_eq!((own.applied, own.fresh), (feed.applied, feed.fresh));
    assert_absent(&v, &["revoked-sid-secret"]);

    // Past its staleness it is stale again; after shutdown, stopped for good.
    clock.advance(Duration::from_secs(31));
    assert!(!v.status().revocation.feed.unwrap().fresh);
    v.shutdown().await;
    let s = v.status();
    assert!(!s.sources[0].running && !s.sources[0].ready);
    assert!(!s.revocation.feed.unwrap().connected);
}

#[tokio::test]
async fn configuration_and_caches_are_reported() {
    let (sts, clock) = issuer().await;
    let v = builder(&sts, &clock)
        .leeway(Duration::from_secs(30))
        .max_token_bytes(12_000)
        .mandate_cache(false)
        .replay_capacity(500)
        .build()
        .unwrap();
    let s: Status = v.status();
    assert_eq!(s.name, "caracal-verifier");
    assert_eq!(s.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(s.manifest_sha, v.manifest_sha());
    assert_eq!(s.config.issuer, sts.issuer_url());
    assert_eq!(s.config.zone, ZONE);
    assert_eq!(s.config.audience, AUD);
    assert_eq!(s.config.token_use, "resource");
    assert_eq!(s.config.algorithms, ["ES256"]);
    assert_eq!(s.config.leeway_secs, 30);
    assert_eq!(s.config.max_token_bytes, 12_000);
    assert_eq!(s.config.code_spelling, "documented");
    assert_eq!(s.config.jwks_ttl_ms, 300_000);
    assert!(!s.config.mandate_cache && !s.mandate_cache.enabled);
    assert!(!s.config.action_sink);
    assert_eq!(s.replay.capacity, Some(500));
    assert_eq!(s.replay.recorded, Some(0));
    assert!(s.revocation.feed.is_none());
    assert!(s.revocation.current);
    assert_eq!(s.revocation.capacity, 4_000_000);
    assert!(s.sources.is_empty());

    let cached = builder(&sts, &clock).build().unwrap();
    let s = cached.status();
    assert!(s.mandate_cache.enabled);
    assert_eq!(s.mandate_cache.entries, 0);
    assert!(s.mandate_cache.max_entries >= 100_000);
}

// ---------------------------------------------------------------------------------
// The JSON
// ---------------------------------------------------------------------------------

/// The keys of the top-level object, in the order the pretty JSON lists them.
fn top_level_keys(json: &str) -> Vec<String> {
    json.lines()
        .filter_map(|l| l.strip_prefix("  \""))
        .filter_map(|l| l.split_once('"').map(|(k, _)| k.to_owned()))
        .collect()
}

#[tokio::test]
async fn the_json_is_valid_and_stable_in_key_order() {
    let (sts, clock) = issuer().await;
    let v = builder(&sts, &clock).build().unwrap();
    v.warm_up().await.unwrap();
    let a = json_of(&v);
    let b = json_of(&v);
    assert_eq!(a, b, "nothing changed, nothing differs");
    assert_eq!(
        top_level_keys(&a),
        [
            "name",
            "version",
            "manifest_sha",
            "ready",
            "readiness",
            "config",
            "keys",
            "revocation",
            "sources",
            "mandate_cache",
            "replay"
        ]
    );
    // The typed status and the JSON agree.
    let parsed: Value = serde_json::from_str(&a).unwrap();
    assert_eq!(parsed, serde_json::to_value(v.status()).unwrap());
    assert_eq!(parsed["keys"]["kids"][0], sts.signing_kid());
    assert_eq!(parsed["revocation"]["feed"], Value::Null);
    // Every number is an unsigned integer.
    fn numbers_are_u64(v: &Value) -> bool {
        match v {
            Value::Number(n) => n.is_u64(),
            Value::Array(a) => a.iter().all(numbers_are_u64),
            Value::Object(m) => m.values().all(numbers_are_u64),
            _ => true,
        }
    }
    assert!(numbers_are_u64(&parsed));
}
