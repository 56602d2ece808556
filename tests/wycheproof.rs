//! Wycheproof ECDSA P-256/SHA-256 (IEEE P1363) vectors through the verifier's own
//! signature path, the invalid special-value signatures transplanted into JWTs, and
//! the invalid-JWK catalogue served by a real JWKS endpoint.
//!
//! Run: `cargo test --all-features --test wycheproof`. The raw-vector test needs the
//! `__internals` feature (it calls `caracal_verifier::internals::verify_es256`).

mod hostile;

use std::time::Duration;

use caracal_verifier::Requirements;
use hostile::{Case, Outcome, b64, check, env, invalid, ok};
use serde_json::json;
use wycheproof::TestResult;
use wycheproof::ecdsa::{TestName, TestSet};

fn p1363() -> TestSet {
    TestSet::load(TestName::EcdsaSecp256r1Sha256P1363).expect("load the P-256 P1363 vectors")
}

/// Every vector, valid and invalid, must come out exactly as Wycheproof says.
///
/// `acceptable` vectors (none in this file today) would be allowed either way and
/// are counted; the verifier's choice for them is whatever aws-lc decides, since
/// they are policy cases (e.g. weak hashes), not forgeries.
#[cfg(feature = "__internals")]
#[test]
fn p1363_vectors_through_the_verifier_path() {
    use caracal_verifier::internals::verify_es256;

    let set = p1363();
    let (mut valid, mut invalid, mut acceptable) = (0, 0, 0);
    let mut failures = Vec::new();
    for group in &set.test_groups {
        let point: &[u8] = &group.key.key;
        assert_eq!(point.len(), 65, "uncompressed P-256 point");
        for test in &group.tests {
            let got = verify_es256(point, &test.msg, &test.sig);
            match test.result {
                TestResult::Valid => {
                    valid += 1;
                    if !got {
                        failures.push(format!("tc {} ({}) rejected", test.tc_id, test.comment));
                    }
                }
                TestResult::Invalid => {
                    invalid += 1;
                    if got {
                        failures.push(format!("tc {} ({}) accepted", test.tc_id, test.comment));
                    }
                }
                TestResult::Acceptable => acceptable += 1,
            }
        }
    }
    eprintln!(
        "wycheproof p1363: {} vectors ({valid} valid, {invalid} invalid, {acceptable} acceptable)",
        set.number_of_tests
    );
    assert_eq!(valid + invalid + acceptable, set.number_of_tests);
    assert!(
        valid > 100 && invalid > 50,
        "the vector file shrank unexpectedly"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The P1363 invalid vectors whose signature is the right length (64 bytes) are the
/// special values (r or s = 0, 1, n, p, …) and modified signatures. Published under a
/// fresh kid, each one attached to a JWT is `invalid_token`/`signature`: the length
/// check lets it through, the signature check must not.
#[tokio::test]
async fn invalid_special_value_signatures_transplanted_into_jwts() {
    let e = env().await;
    let set = p1363();
    let payload = serde_json::to_vec(&e.sts.mandate().claims()).expect("json");
    let mut cases = Vec::new();
    for (i, group) in set.test_groups.iter().enumerate() {
        let point: &[u8] = &group.key.key;
        let kid = format!("wycheproof-{i}");
        e.sts.publish_raw_key(
            hostile::ZONE,
            json!({
                "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                "x": b64(&point[1..33]), "y": b64(&point[33..]),
            }),
        );
        let header =
            serde_json::to_vec(&json!({"alg": "ES256", "typ": "JWT", "kid": kid})).expect("json");
        let input = format!("{}.{}", b64(&header), b64(&payload));
        for test in &group.tests {
            if test.result == TestResult::Invalid && test.sig.len() == 64 {
                cases.push(Case::new(
                    format!("tc {} ({})", test.tc_id, test.comment),
                    format!("{input}.{}", b64(&test.sig[..])),
                    invalid("signature"),
                ));
            }
        }
    }
    assert!(
        cases.len() >= 60,
        "only {} transplantable vectors",
        cases.len()
    );
    // Past the cooldown, the first unknown kid refetches and picks up every vector key.
    e.clock.advance(Duration::from_secs(3));
    check("wycheproof transplant", &e.verifier, &cases).await;
}

/// Invalid JWKs served next to a good key by a real JWKS endpoint: each is dropped
/// (its kid is `unknown_key`), the document is not refused as a whole, and the good
/// keys, old and new, keep working.
#[tokio::test]
async fn invalid_jwks_are_dropped_and_good_keys_keep_working() {
    let e = env().await;
    // A real key we can sign with, published only in another zone.
    let other_kid = e.sts.add_zone("zone-other");
    let other = e.sts.public_jwk(&other_kid);
    let bad = hostile::invalid_jwks(&other);
    for (_, jwk) in &bad {
        e.sts.publish_raw_key(hostile::ZONE, jwk.clone());
    }
    for jwk in hostile::duplicate_kid_pair(&e.sts.public_jwk("key-1"), &other, "dup") {
        e.sts.publish_raw_key(hostile::ZONE, jwk);
    }
    for garbage in [
        json!("not an object"),
        json!(null),
        json!(42),
        json!([]),
        json!({}),
        json!({"kid": "bad-no-kty"}),
        json!({"kty": "EC", "crv": "P-256", "x": other["x"], "y": other["y"]}),
        json!({"kty": "EC", "crv": "P-256", "kid": "", "x": other["x"], "y": other["y"]}),
    ] {
        e.sts.publish_raw_key(hostile::ZONE, garbage);
    }
    // The same key, correctly published under a new kid, is the positive control.
    let mut good_new = other.clone();
    good_new["kid"] = json!("good-new");
    e.sts.publish_raw_key(hostile::ZONE, good_new);

    e.clock.advance(Duration::from_secs(3));
    let by = |kid: &str| {
        e.sts
            .mandate()
            .signing_key(&other_kid)
            .header("kid", json!(kid))
            .sign()
    };
    let mut cases = vec![
        Case::new("good-new (same material, valid JWK)", by("good-new"), ok()),
        Case::new("key-1 keeps working", e.good(), ok()),
        Case::new("duplicate kid", by("dup"), invalid("unknown_key")),
        Case::new(
            "duplicate kid, signed by the twin that is the zone key",
            e.sts.mandate().header("kid", json!("dup")).sign(),
            invalid("unknown_key"),
        ),
    ];
    for (kid, _) in &bad {
        cases.push(Case::new(kid.clone(), by(kid), invalid("unknown_key")));
    }
    check("invalid JWKs", &e.verifier, &cases).await;
    assert!(e.verifier.is_ready());
}

/// A kid published twice is trusted for neither key, even when one twin is the key
/// the zone has been using: after a refresh, its tokens are `unknown_key`.
#[tokio::test]
async fn duplicating_a_live_kid_disables_it() {
    let e = env().await;
    let good = e.good();
    let reqs = Requirements::new();
    assert_eq!(Outcome::of(&e.verifier.verify(&good, &reqs).await), ok());
    let (_, twin) = hostile::attacker_key("key-1");
    e.sts.publish_raw_key(hostile::ZONE, twin);
    let kid2 = e.sts.rotate_key();
    // Past the TTL, a verification triggers a background refresh; a new kid forces
    // one in the foreground.
    e.clock.advance(Duration::from_secs(301));
    let fresh = e.sts.mandate().kid(&kid2).sign();
    assert_eq!(Outcome::of(&e.verifier.verify(&fresh, &reqs).await), ok());
    let again = e.sts.mandate().kid("key-1").sign();
    assert_eq!(
        Outcome::of(&e.verifier.verify(&again, &reqs).await),
        invalid("unknown_key")
    );
    // The mandate cached under key-1 died with it (it is not expired yet).
    assert_eq!(
        Outcome::of(&e.verifier.verify(&good, &reqs).await),
        invalid("unknown_key")
    );
}

/// The same catalogue through the JWKS parser alone: one good key plus any one bad
/// key leaves exactly one usable key.
#[cfg(feature = "__internals")]
#[tokio::test]
async fn invalid_jwks_through_the_parser() {
    use caracal_verifier::internals::parse_jwks;

    let e = env().await;
    let good = e.sts.public_jwk("key-1");
    let other_kid = e.sts.add_zone("zone-other");
    let other = e.sts.public_jwk(&other_kid);
    let doc =
        |keys: Vec<serde_json::Value>| serde_json::to_vec(&json!({ "keys": keys })).expect("json");
    assert_eq!(parse_jwks(&doc(vec![good.clone()])), 1);
    for (kid, jwk) in hostile::invalid_jwks(&other) {
        assert_eq!(
            parse_jwks(&doc(vec![good.clone(), jwk.clone()])),
            1,
            "{kid}"
        );
        assert_eq!(parse_jwks(&doc(vec![jwk])), 0, "{kid} alone");
    }
    let [a, b] = hostile::duplicate_kid_pair(&good, &other, "dup");
    assert_eq!(parse_jwks(&doc(vec![a, b, other.clone()])), 1);
    assert_eq!(parse_jwks(b"{\"keys\":[]}"), 0);
    assert_eq!(parse_jwks(b"{\"keys\":{}}"), 0);
    assert_eq!(parse_jwks(b"[]"), 0);
    assert_eq!(parse_jwks(b""), 0);
}
