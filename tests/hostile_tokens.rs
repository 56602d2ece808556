//! The hostile-token catalogue: every class of malformed, forged or abusive mandate,
//! each row an input and the exact denial (`code` and `details.reason`) it must get
//! from the public `Verifier::verify` API, against a real loopback `TestIssuer`.
//!
//! Run: `cargo test --all-features --test hostile_tokens`. Each class is its own test,
//! so one failing row names its class; every row of a class is checked before the
//! class fails, and the failure lists all mismatches.
//!
//! `dump_fuzz_seeds` (ignored) writes the rows as fuzzing seeds:
//! `cargo test --all-features --test hostile_tokens -- --ignored dump_fuzz_seeds`.

mod hostile;

use std::time::Duration;

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE;
use caracal_verifier::Requirements;
use hostile::{
    AUD, Case, Env, LEEWAY, Outcome, P256_N, T0, ZONE, attacker_key, b64, check, code,
    der_signature, env, header_json, int32, invalid, n_minus_1, ok, pem, rs, sign_segments,
    sign_with, signature_of, spki_der, sub_be, with_signature,
};
use serde_json::{Value, json};

/// A verifier that lets multi-megabyte tokens reach the parsers.
const BIG: usize = 4 << 20;

fn segments(token: &str) -> (String, String, String) {
    let mut it = token.split('.');
    let h = it.next().expect("header").to_owned();
    let p = it.next().expect("payload").to_owned();
    let s = it.next().expect("signature").to_owned();
    (h, p, s)
}

/// Pad JSON with trailing spaces (still valid JSON) until its length is not a
/// multiple of 3, so its base64url encoding has trailing bits.
fn unaligned(mut json: Vec<u8>) -> Vec<u8> {
    while json.len().is_multiple_of(3) {
        json.push(b' ');
    }
    json
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Set the lowest (unused) bit of a segment's last character: the same bytes,
/// non-canonically encoded.
fn set_trailing_bit(segment: &str) -> String {
    assert_ne!(segment.len() % 4, 0, "the segment must have trailing bits");
    let last = *segment.as_bytes().last().expect("non-empty");
    let v = ALPHABET.iter().position(|&c| c == last).expect("base64url");
    assert_eq!(v & 1, 0, "canonical encodings have zero trailing bits");
    let mut out = segment[..segment.len() - 1].to_owned();
    out.push(char::from(ALPHABET[v | 1]));
    out
}

/// base64url → standard alphabet.
fn to_standard_alphabet(segment: &str) -> String {
    segment.replace('-', "+").replace('_', "/")
}

fn padded(bytes: &[u8]) -> String {
    URL_SAFE.encode(bytes)
}

fn json_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("json")
}

fn replace_once(haystack: &[u8], needle: &str, with: &[u8]) -> Vec<u8> {
    let s = haystack;
    let pos = s
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .unwrap_or_else(|| panic!("{needle} not found"));
    let mut out = s[..pos].to_vec();
    out.extend_from_slice(with);
    out.extend_from_slice(&s[pos + needle.len()..]);
    out
}

// ---------------------------------------------------------------------------------
// Structure
// ---------------------------------------------------------------------------------

fn structure_cases(e: &Env) -> Vec<Case> {
    let good = e.good();
    let (h, p, s) = segments(&good);
    let claims = json_bytes(&e.sts.mandate().claims());
    let header = header_json("key-1");
    let mut cases = vec![
        Case::new("0 segments: empty string", "", code("missing_token")),
        Case::new("0 segments: only dots", "..", invalid("malformed")),
        Case::new("1 segment: header only", h.clone(), invalid("malformed")),
        Case::new("1 segment: opaque string", "abc", invalid("malformed")),
        Case::new("2 segments", format!("{h}.{p}"), invalid("malformed")),
        Case::new(
            "2 segments + empty signature (alg none shape)",
            format!("{h}.{p}."),
            invalid("malformed"),
        ),
        Case::new("4 segments", format!("{good}.{s}"), invalid("malformed")),
        Case::new(
            "4 segments: trailing dot",
            format!("{good}."),
            invalid("malformed"),
        ),
        Case::new(
            "4 segments: leading dot",
            format!(".{good}"),
            invalid("malformed"),
        ),
        Case::new(
            "4 segments: doubled payload",
            format!("{h}.{p}.{p}.{s}"),
            invalid("malformed"),
        ),
        Case::new(
            "5 segments: JWE shape",
            format!("{h}.{p}.{s}.{p}.{s}"),
            invalid("malformed"),
        ),
        Case::new("5 segments: dots only", "....", invalid("malformed")),
        Case::new("empty header", format!(".{p}.{s}"), invalid("malformed")),
        Case::new("empty payload", format!("{h}..{s}"), invalid("malformed")),
        Case::new(
            "empty payload, re-signed",
            sign_segments(&e.sts, "key-1", &h, ""),
            invalid("malformed"),
        ),
        Case::new(
            "JWS JSON serialization (general)",
            json!({"payload": p, "signatures": [{"protected": h, "signature": s}]}).to_string(),
            invalid("malformed"),
        ),
        Case::new(
            "JWS JSON serialization (flattened)",
            json!({"protected": h, "payload": p, "signature": s}).to_string(),
            invalid("malformed"),
        ),
        Case::new(
            "JWS JSON serialization with dotted members",
            json!({"protected": format!("{h}.{p}"), "payload": p, "signature": s}).to_string(),
            invalid("malformed"),
        ),
        // base64url canonicality: padding.
        Case::new(
            "padding on the header",
            sign_segments(&e.sts, "key-1", &padded(&unaligned(header.clone())), &p),
            invalid("malformed"),
        ),
        Case::new(
            "padding on the payload (re-signed)",
            sign_segments(&e.sts, "key-1", &h, &padded(&unaligned(claims.clone()))),
            invalid("malformed"),
        ),
        Case::new(
            "padding on the signature",
            format!("{good}=="),
            invalid("malformed"),
        ),
        Case::new(
            "single = on the signature",
            format!("{good}="),
            invalid("malformed"),
        ),
        // Whitespace anywhere.
        Case::new("leading space", format!(" {good}"), invalid("malformed")),
        Case::new("trailing space", format!("{good} "), invalid("malformed")),
        Case::new(
            "trailing newline",
            format!("{good}\n"),
            invalid("malformed"),
        ),
        Case::new("trailing CRLF", format!("{good}\r\n"), invalid("malformed")),
        Case::new(
            "space inside the header",
            format!("{} {}.{p}.{s}", &h[..4], &h[4..]),
            invalid("malformed"),
        ),
        Case::new(
            "tab inside the payload (re-signed)",
            sign_segments(&e.sts, "key-1", &h, &format!("{}\t{}", &p[..4], &p[4..])),
            invalid("malformed"),
        ),
        Case::new(
            "space before the signature",
            format!("{h}.{p}. {s}"),
            invalid("malformed"),
        ),
        Case::new(
            "newline inside the signature",
            format!("{h}.{p}.{}\n{}", &s[..40], &s[40..]),
            invalid("malformed"),
        ),
        // Non-canonical trailing bits.
        Case::new(
            "header with non-zero trailing bits",
            {
                let hs = b64(unaligned(header.clone()));
                sign_segments(&e.sts, "key-1", &set_trailing_bit(&hs), &p)
            },
            invalid("malformed"),
        ),
        Case::new(
            "payload with non-zero trailing bits (re-signed)",
            {
                let ps = b64(unaligned(claims.clone()));
                sign_segments(&e.sts, "key-1", &h, &set_trailing_bit(&ps))
            },
            invalid("malformed"),
        ),
        Case::new(
            "signature with non-zero trailing bits",
            format!("{h}.{p}.{}", set_trailing_bit(&s)),
            invalid("malformed"),
        ),
    ];

    // Standard-alphabet `+` and `/`: find encodings that contain `-` or `_`.
    let filler = "??????>>>>>>";
    let header_std = json_bytes(&json!({"alg": "ES256", "kid": "key-1", "x": filler}));
    let hs = b64(&header_std);
    assert!(hs.contains(['-', '_']));
    cases.push(Case::new(
        "header in the standard alphabet (+ /)",
        sign_segments(&e.sts, "key-1", &to_standard_alphabet(&hs), &p),
        invalid("malformed"),
    ));
    let payload_std = e.claims_with(|m| {
        m.insert("x".into(), json!(filler));
    });
    let ps = b64(json_bytes(&payload_std));
    assert!(ps.contains(['-', '_']));
    cases.push(Case::new(
        "payload in the standard alphabet (+ /), re-signed",
        sign_segments(&e.sts, "key-1", &h, &to_standard_alphabet(&ps)),
        invalid("malformed"),
    ));
    let signed_with_url_chars = (0..200)
        .map(|_| e.good())
        .find(|t| segments(t).2.contains(['-', '_']))
        .expect("some signature encodes with - or _");
    let (h2, p2, s2) = segments(&signed_with_url_chars);
    cases.push(Case::new(
        "signature in the standard alphabet (+ /)",
        format!("{h2}.{p2}.{}", to_standard_alphabet(&s2)),
        invalid("malformed"),
    ));

    // Header or payload that is not a JSON object.
    for (name, bytes) in [
        ("array", b"[]".to_vec()),
        (
            "array of the header",
            json_bytes(&json!([{"alg": "ES256", "kid": "key-1"}])),
        ),
        ("null", b"null".to_vec()),
        ("string", b"\"ES256\"".to_vec()),
        ("number", b"1".to_vec()),
        ("bool", b"true".to_vec()),
        ("whitespace only", b"  ".to_vec()),
        ("trailing junk", [header.clone(), b" x".to_vec()].concat()),
        ("two objects", [header.clone(), b"{}".to_vec()].concat()),
        ("unterminated", header[..header.len() - 1].to_vec()),
        (
            "byte-order mark",
            [b"\xEF\xBB\xBF".to_vec(), header.clone()].concat(),
        ),
        ("invalid UTF-8 byte", b"\xff\xfe".to_vec()),
        (
            "invalid UTF-8 in a string",
            b"{\"alg\":\"ES256\",\"kid\":\"key-1\",\"x\":\"\xC3\x28\"}".to_vec(),
        ),
        (
            "raw invalid UTF-8 in the kid",
            b"{\"alg\":\"ES256\",\"kid\":\"key-1\xff\"}".to_vec(),
        ),
        (
            "lone surrogate in the kid",
            br#"{"alg":"ES256","kid":"\ud800"}"#.to_vec(),
        ),
        (
            "lone low surrogate in an ignored member",
            br#"{"alg":"ES256","kid":"key-1","x":"\udc00"}"#.to_vec(),
        ),
        (
            "truncated surrogate pair",
            br#"{"alg":"ES256","kid":"key-1","x":"\ud83d\u0041"}"#.to_vec(),
        ),
        ("comment", br#"{"alg":"ES256",/*c*/"kid":"key-1"}"#.to_vec()),
        (
            "single quotes",
            br#"{'alg':'ES256','kid':'key-1'}"#.to_vec(),
        ),
        (
            "trailing comma",
            br#"{"alg":"ES256","kid":"key-1",}"#.to_vec(),
        ),
        (
            "NaN member",
            br#"{"alg":"ES256","kid":"key-1","x":NaN}"#.to_vec(),
        ),
    ] {
        cases.push(Case::new(
            format!("header: {name}"),
            e.raw_header(&bytes),
            invalid("header"),
        ));
    }
    for (name, bytes) in [
        ("array", b"[]".to_vec()),
        (
            "array of the claims",
            [b"[".to_vec(), claims.clone(), b"]".to_vec()].concat(),
        ),
        ("null", b"null".to_vec()),
        ("string", b"\"claims\"".to_vec()),
        ("number", b"1790000000".to_vec()),
        ("whitespace only", b"  ".to_vec()),
        ("trailing junk", [claims.clone(), b" x".to_vec()].concat()),
        ("two objects", [claims.clone(), b"{}".to_vec()].concat()),
        (
            "extra closing brace",
            [claims.clone(), b"}".to_vec()].concat(),
        ),
        ("unterminated", claims[..claims.len() - 1].to_vec()),
        (
            "byte-order mark",
            [b"\xEF\xBB\xBF".to_vec(), claims.clone()].concat(),
        ),
        ("invalid UTF-8 bytes", b"\xff\xfe\xfd".to_vec()),
        (
            "invalid UTF-8 in sub",
            replace_once(&claims, "\"user-1\"", b"\"user-\xff\""),
        ),
        (
            "overlong UTF-8 in sub",
            replace_once(&claims, "\"user-1\"", b"\"user-\xc0\xb1\""),
        ),
        (
            "lone surrogate in sub",
            replace_once(&claims, "\"user-1\"", br#""\ud800""#),
        ),
        (
            "lone surrogate in an extra claim",
            replace_once(&claims, "{", br#"{"x":"\udfff","#),
        ),
    ] {
        cases.push(Case::new(
            format!("payload: {name}"),
            e.raw_payload(&bytes),
            invalid("claims"),
        ));
    }
    cases.push(Case::new(
        "payload: a valid surrogate pair is fine",
        e.raw_payload(&replace_once(&claims, "{", br#"{"x":"\ud83d\ude00","#)),
        ok(),
    ));

    // Duplicate keys.
    for (name, bytes) in [
        (
            "alg twice",
            br#"{"alg":"ES256","alg":"ES256","kid":"key-1"}"#.to_vec(),
        ),
        (
            "alg twice, different",
            br#"{"alg":"none","kid":"key-1","alg":"ES256"}"#.to_vec(),
        ),
        (
            "kid twice",
            br#"{"alg":"ES256","kid":"key-1","kid":"key-1"}"#.to_vec(),
        ),
        (
            "kid twice, different",
            br#"{"alg":"ES256","kid":"nope","kid":"key-1"}"#.to_vec(),
        ),
        (
            "escaped duplicate kid",
            br#"{"alg":"ES256","kid":"key-1","\u006bid":"key-1"}"#.to_vec(),
        ),
        (
            "typ twice",
            br#"{"alg":"ES256","typ":"JWT","typ":"JWT","kid":"key-1"}"#.to_vec(),
        ),
        (
            "duplicate inside a jwk member",
            br#"{"alg":"ES256","kid":"key-1","jwk":{"x":"a","x":"b"}}"#.to_vec(),
        ),
    ] {
        cases.push(Case::new(
            format!("header duplicate: {name}"),
            e.raw_header(&bytes),
            invalid("header"),
        ));
    }
    for (name, bytes) in [
        (
            "sid twice",
            replace_once(&claims, "{", br#"{"sid":"other","#),
        ),
        (
            "iss twice",
            replace_once(&claims, "{", br#"{"iss":"https://evil.example","#),
        ),
        (
            "exp twice",
            replace_once(&claims, "{", br#"{"exp":99999999999,"#),
        ),
        (
            "zone_id twice",
            replace_once(&claims, "{", br#"{"zone_id":"zone-1","#),
        ),
        (
            "escaped duplicate aud",
            replace_once(&claims, "{", br#"{"\u0061ud":"resource://api","#),
        ),
        (
            "extra claim twice",
            replace_once(&claims, "{", br#"{"x":1,"x":2,"#),
        ),
        (
            "nested duplicate in an extra claim",
            replace_once(&claims, "{", br#"{"x":{"a":1,"a":2},"#),
        ),
        (
            "duplicate inside a delegation hop",
            replace_once(
                &claims,
                "{",
                br#"{"delegation_chain":[{"application_id":"app-1","application_id":"app-1"}],"#,
            ),
        ),
    ] {
        cases.push(Case::new(
            format!("payload duplicate: {name}"),
            e.raw_payload(&bytes),
            invalid("claims"),
        ));
    }
    cases
}

#[tokio::test]
async fn structure() {
    let e = env().await;
    check("structure", &e.verifier, &structure_cases(&e)).await;
}

// ---------------------------------------------------------------------------------
// Algorithm
// ---------------------------------------------------------------------------------

fn hmac_token(alg: &str, hmac_alg: hmac::Algorithm, secret: &[u8], header_extra: Value) -> String {
    let mut header = json!({"alg": alg, "typ": "JWT", "kid": "key-1"});
    if let (Some(h), Value::Object(extra)) = (header.as_object_mut(), header_extra) {
        h.extend(extra);
    }
    let now = T0;
    let claims = json!({
        "iss": "placeholder", "sub": "user-1", "aud": AUD, "exp": now + 300, "iat": now,
        "jti": "hs-jti", "zone_id": ZONE, "client_id": "app-1", "sid": "sid-hs",
        "root_sid": "root-hs", "use": "resource", "sub_type": "user",
    });
    hmac_over(&header, &claims, hmac_alg, secret)
}

fn hmac_over(header: &Value, claims: &Value, alg: hmac::Algorithm, secret: &[u8]) -> String {
    let input = format!("{}.{}", b64(json_bytes(header)), b64(json_bytes(claims)));
    let tag = hmac::sign(&hmac::Key::new(alg, secret), input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}

fn algorithm_cases(e: &Env) -> Vec<Case> {
    let mut cases = Vec::new();
    let claims = e.sts.mandate().claims();
    let payload = json_bytes(&claims);
    for alg in ["none", "None", "NONE", "nOnE", "NoNe", "none ", "\u{0}none"] {
        let header = json_bytes(&json!({"alg": alg, "typ": "JWT", "kid": "key-1"}));
        let unsigned = format!("{}.{}.", b64(&header), b64(&payload));
        cases.push(Case::new(
            format!("alg {alg:?} with an empty signature"),
            unsigned,
            invalid("malformed"),
        ));
        cases.push(Case::new(
            format!("alg {alg:?} with a signature"),
            e.raw(&header, &payload),
            invalid("algorithm"),
        ));
    }

    // HS256 keyed with the zone's public key, in every form an HMAC confusion attack
    // would try.
    let jwk = e.sts.public_jwk("key-1");
    let point = e.sts.public_key_uncompressed("key-1");
    let der = spki_der(&point);
    let pem_text = pem(&der);
    let forms: Vec<(&str, Vec<u8>)> = vec![
        ("JWK JSON", json_bytes(&jwk)),
        (
            "JWK JSON, pretty",
            serde_json::to_vec_pretty(&jwk).expect("json"),
        ),
        ("JWKS document", json_bytes(&json!({"keys": [jwk.clone()]}))),
        ("PEM", pem_text.clone().into_bytes()),
        (
            "PEM without final newline",
            pem_text.trim_end().as_bytes().to_vec(),
        ),
        ("SPKI DER", der.clone()),
        ("04||X||Y", point.clone()),
        ("X||Y", point[1..].to_vec()),
        ("X", point[1..33].to_vec()),
        (
            "base64url x",
            jwk["x"].as_str().expect("x").as_bytes().to_vec(),
        ),
    ];
    let hs_claims = {
        let mut c = claims.clone();
        c["jti"] = json!("hs-jti");
        c
    };
    for (form, secret) in &forms {
        for (alg, hmac_alg) in [
            ("HS256", hmac::HMAC_SHA256),
            ("HS384", hmac::HMAC_SHA384),
            ("HS512", hmac::HMAC_SHA512),
        ] {
            let header = json!({"alg": alg, "typ": "JWT", "kid": "key-1"});
            cases.push(Case::new(
                format!("{alg} keyed with the public key as {form}"),
                hmac_over(&header, &hs_claims, hmac_alg, secret),
                invalid("algorithm"),
            ));
        }
        // The same MAC under an ES256 header is 32 bytes long: wrong length.
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": "key-1"});
        cases.push(Case::new(
            format!("HMAC over an ES256 header, keyed with {form}"),
            hmac_over(&header, &hs_claims, hmac::HMAC_SHA256, secret),
            invalid("signature"),
        ));
    }
    cases.push(Case::new(
        "HS256 without a kid",
        hmac_over(
            &json!({"alg": "HS256"}),
            &hs_claims,
            hmac::HMAC_SHA256,
            &point,
        ),
        invalid("header"),
    ));
    cases.push(Case::new(
        "HS256 with an ignored-looking extra header",
        hmac_token("HS256", hmac::HMAC_SHA256, &der, json!({"typ": "at+jwt"})),
        invalid("algorithm"),
    ));

    // Every algorithm other than the accepted one (ES256), signed with the zone key.
    for alg in [
        "ES384",
        "ES512",
        "ES256K",
        "EdDSA",
        "Ed25519",
        "Ed448",
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "HS256",
        "HS384",
        "HS512",
        "RSA-OAEP",
        "dir",
        "A256GCM",
        "ML-DSA-44",
        "es256",
        "Es256",
        "eS256",
        "ES256 ",
        " ES256",
        "ES256\u{0}",
        "ES-256",
        "ES2560",
        "ＥＳ256",
        "",
    ] {
        let header = json_bytes(&json!({"alg": alg, "typ": "JWT", "kid": "key-1"}));
        cases.push(Case::new(
            format!("alg {alg:?}"),
            e.raw(&header, &payload),
            invalid("algorithm"),
        ));
    }
    for (name, header) in [
        ("alg missing", json!({"typ": "JWT", "kid": "key-1"})),
        ("alg null", json!({"alg": null, "kid": "key-1"})),
        ("alg number", json!({"alg": 256, "kid": "key-1"})),
        ("alg float", json!({"alg": 256.0, "kid": "key-1"})),
        ("alg bool", json!({"alg": true, "kid": "key-1"})),
        ("alg array", json!({"alg": ["ES256"], "kid": "key-1"})),
        ("alg empty array", json!({"alg": [], "kid": "key-1"})),
        (
            "alg object",
            json!({"alg": {"name": "ES256"}, "kid": "key-1"}),
        ),
    ] {
        cases.push(Case::new(
            name,
            e.raw(&json_bytes(&header), &payload),
            invalid("header"),
        ));
    }
    cases
}

#[tokio::test]
async fn algorithm() {
    let e = env().await;
    check("algorithm", &e.verifier, &algorithm_cases(&e)).await;
}

#[tokio::test]
async fn algorithm_pinned_by_the_key_not_the_header() {
    // A verifier that accepts ES256 and ES384 still refuses an ES384 header on an
    // ES256 key: the key's algorithm wins.
    let e = env().await;
    let v = e
        .verifier_with(|b| {
            b.algorithms([
                caracal_verifier::Algorithm::ES256,
                caracal_verifier::Algorithm::ES384,
            ])
        })
        .await;
    let payload = json_bytes(&e.sts.mandate().claims());
    let es384 = e.raw(
        &json_bytes(&json!({"alg": "ES384", "kid": "key-1"})),
        &payload,
    );
    let cases = vec![
        Case::new("ES384 header on an ES256 key", es384, invalid("algorithm")),
        Case::new("ES256 header on an ES256 key", e.good(), ok()),
    ];
    check("algorithm pinning", &v, &cases).await;
}

// ---------------------------------------------------------------------------------
// Key injection
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn key_injection_headers_are_ignored_and_fetch_nothing() {
    let e = env().await;
    // The attacker runs their own "STS": its key-1 collides with the zone's kid.
    let evil = caracal_verifier::testing::TestIssuer::start(ZONE)
        .await
        .expect("start");
    let (attacker, attacker_jwk) = attacker_key("key-1");
    let claims = e.sts.mandate().claims();
    let evil_x5c = base64::engine::general_purpose::STANDARD
        .encode(spki_der(&evil.public_key_uncompressed("key-1")));
    let header = |extra: Value| {
        let mut h = json!({"alg": "ES256", "typ": "JWT", "kid": "key-1"});
        h.as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        h
    };
    let evil_signed = |extra: Value| {
        let h = json_bytes(&header(extra));
        evil.sign_compact("key-1", &h, &json_bytes(&claims))
    };
    let cases = vec![
        Case::new(
            "jwk header with the attacker key under kid key-1",
            sign_with(&attacker, &header(json!({"jwk": attacker_jwk})), &claims),
            invalid("signature"),
        ),
        Case::new(
            "jwk header with the zone's own public key, attacker signature",
            sign_with(
                &attacker,
                &header(json!({"jwk": e.sts.public_jwk("key-1")})),
                &claims,
            ),
            invalid("signature"),
        ),
        Case::new(
            "jku pointing at the attacker's JWKS",
            evil_signed(json!({"jku": evil.jwks_url(ZONE)})),
            invalid("signature"),
        ),
        Case::new(
            "x5u pointing at the attacker's host",
            evil_signed(json!({"x5u": format!("{}/cert.pem", evil.issuer_url())})),
            invalid("signature"),
        ),
        Case::new(
            "x5c with the attacker's key",
            evil_signed(json!({"x5c": [evil_x5c]})),
            invalid("signature"),
        ),
        Case::new(
            "jwk + jku + x5u + x5c at once",
            evil_signed(json!({
                "jwk": evil.public_jwk("key-1"),
                "jku": evil.jwks_url(ZONE),
                "x5u": evil.issuer_url(),
                "x5c": [evil_x5c],
                "x5t": "AAAA",
                "x5t#S256": "AAAA",
            })),
            invalid("signature"),
        ),
        Case::new(
            "jku pointing at the real STS, attacker key",
            evil_signed(json!({"jku": e.sts.jwks_url(ZONE)})),
            invalid("signature"),
        ),
        Case::new(
            "jku to 169.254.169.254",
            evil_signed(json!({"jku": "http://169.254.169.254/latest/meta-data/"})),
            invalid("signature"),
        ),
        Case::new(
            "jku without kid",
            {
                let h = json_bytes(&json!({"alg": "ES256", "jku": evil.jwks_url(ZONE)}));
                evil.sign_compact("key-1", &h, &json_bytes(&claims))
            },
            invalid("header"),
        ),
        Case::new(
            "jwk header malformed (not an object)",
            evil_signed(json!({"jwk": "not a key"})),
            invalid("signature"),
        ),
    ];
    let before = e.sts.jwks_requests();
    check("key injection", &e.verifier, &cases).await;
    assert_eq!(
        e.sts.jwks_requests(),
        before,
        "a colliding kid must not cause any JWKS request"
    );
    assert_eq!(evil.jwks_requests(), 0, "the attacker's host was contacted");
    // Even an unknown kid with a jku never goes to the jku.
    let unknown = Case::new(
        "unknown kid with a jku",
        {
            let h =
                json_bytes(&json!({"alg": "ES256", "kid": "evil-kid", "jku": evil.jwks_url(ZONE)}));
            evil.sign_compact("key-1", &h, &json_bytes(&claims))
        },
        invalid("unknown_key"),
    );
    e.clock.advance(Duration::from_secs(3));
    check("key injection (unknown kid)", &e.verifier, &[unknown]).await;
    assert_eq!(evil.jwks_requests(), 0, "the attacker's host was contacted");
    assert!(
        e.sts.jwks_requests() <= before + 1,
        "at most one refetch from the configured STS"
    );
}

fn hostile_kid_cases(e: &Env) -> Vec<Case> {
    let payload = json_bytes(&e.sts.mandate().claims());
    let with_kid = |kid: Value| {
        let h = json_bytes(&json!({"alg": "ES256", "typ": "JWT", "kid": kid}));
        e.raw(&h, &payload)
    };
    let mut cases = Vec::new();
    for kid in [
        "../../../../etc/passwd",
        "/.well-known/jwks.json?zone_id=zone-2",
        "key-1/../key-1",
        "..%2F..%2Fkey-1",
        "key-1' OR '1'='1",
        "'; DROP TABLE keys; --",
        "key-1\u{0}",
        "\u{0}",
        "key-1%00",
        "",
        " ",
        "KEY-1",
        "key-1 ",
        " key-1",
        "key\u{2010}1",
        "key-1\n",
        "${jndi:ldap://evil/a}",
        "http://127.0.0.1:1/jwks.json",
    ] {
        cases.push(Case::new(
            format!("kid {kid:?}"),
            with_kid(json!(kid)),
            invalid("unknown_key"),
        ));
    }
    cases.push(Case::new(
        "kid of 4 KiB",
        with_kid(json!("k".repeat(4096))),
        invalid("unknown_key"),
    ));
    cases.push(Case::new(
        "kid of 1 MiB",
        with_kid(json!("k".repeat(1 << 20))),
        code("payload_too_large"),
    ));
    for (name, kid) in [
        ("number", json!(1)),
        ("null", Value::Null),
        ("bool", json!(true)),
        ("array", json!(["key-1"])),
        ("object", json!({"kid": "key-1"})),
    ] {
        cases.push(Case::new(
            format!("kid as {name}"),
            with_kid(kid),
            invalid("header"),
        ));
    }
    cases
}

#[tokio::test]
async fn hostile_kids() {
    let e = env().await;
    let before = e.sts.jwks_requests();
    check("hostile kid", &e.verifier, &hostile_kid_cases(&e)).await;
    // A flood of unknown kids inside one cooldown makes at most one refetch.
    assert!(e.sts.jwks_requests() <= before + 1);

    // With a cap large enough to reach the parser, a 1 MiB kid is just unknown.
    let big = e.verifier_with(|b| b.max_token_bytes(BIG)).await;
    let payload = json_bytes(&e.sts.mandate().claims());
    let h = json_bytes(&json!({"alg": "ES256", "kid": "k".repeat(1 << 20)}));
    let cases = [Case::new(
        "kid of 1 MiB under a 4 MiB cap",
        e.raw(&h, &payload),
        invalid("unknown_key"),
    )];
    check("hostile kid (big cap)", &big, &cases).await;
}

// ---------------------------------------------------------------------------------
// crit
// ---------------------------------------------------------------------------------

fn crit_cases(e: &Env) -> Vec<Case> {
    let payload = json_bytes(&e.sts.mandate().claims());
    let mut cases = Vec::new();
    for (name, extra) in [
        ("crit [\"exp\"]", json!({"crit": ["exp"]})),
        (
            "crit unknown extension",
            json!({"crit": ["urn:x-custom"], "urn:x-custom": 1}),
        ),
        ("crit []", json!({"crit": []})),
        ("crit [\"alg\"]", json!({"crit": ["alg"]})),
        ("crit [\"kid\"]", json!({"crit": ["kid"]})),
        ("crit not an array (string)", json!({"crit": "alg"})),
        ("crit not an array (object)", json!({"crit": {"alg": true}})),
        ("crit null", json!({"crit": null})),
        ("crit number", json!({"crit": 1})),
        (
            "crit with b64 false",
            json!({"crit": ["b64"], "b64": false}),
        ),
        ("b64 false without crit", json!({"b64": false})),
        ("b64 true", json!({"b64": true})),
        ("b64 string", json!({"b64": "false"})),
    ] {
        let mut header = json!({"alg": "ES256", "typ": "JWT", "kid": "key-1"});
        header
            .as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        cases.push(Case::new(
            name,
            e.raw(&json_bytes(&header), &payload),
            invalid("header"),
        ));
    }
    // b64:false would make the signature cover the raw payload: sign it that way too.
    let header =
        json_bytes(&json!({"alg": "ES256", "kid": "key-1", "b64": false, "crit": ["b64"]}));
    let input = format!("{}.{}", b64(&header), String::from_utf8_lossy(&payload));
    let sig = e.sts.sign_bytes("key-1", input.as_bytes());
    cases.push(Case::new(
        "b64:false with a detached-style raw payload",
        format!("{}.{}.{}", b64(&header), b64(&payload), b64(sig)),
        invalid("header"),
    ));
    cases
}

#[tokio::test]
async fn crit() {
    let e = env().await;
    check("crit", &e.verifier, &crit_cases(&e)).await;
}

// ---------------------------------------------------------------------------------
// Signature
// ---------------------------------------------------------------------------------

fn signature_cases(e: &Env, other_zone_kid: &str) -> Vec<Case> {
    let good = e.good();
    let sig = signature_of(&good);
    let mut cases = Vec::new();
    let n = P256_N;
    let values: [(&str, [u8; 32]); 4] = [
        ("0", [0u8; 32]),
        ("1", int32(1)),
        ("n-1", n_minus_1()),
        ("n", n),
    ];
    for (rn, r) in &values {
        for (sn, s) in &values {
            cases.push(Case::new(
                format!("r={rn}, s={sn}"),
                with_signature(&good, &rs(r, s)),
                invalid("signature"),
            ));
        }
    }
    let r: [u8; 32] = sig[..32].try_into().expect("r");
    let s: [u8; 32] = sig[32..].try_into().expect("s");
    cases.push(Case::new(
        "r = real r, s = 0",
        with_signature(&good, &rs(&r, &[0; 32])),
        invalid("signature"),
    ));
    cases.push(Case::new(
        "r = 0, s = real s",
        with_signature(&good, &rs(&[0; 32], &s)),
        invalid("signature"),
    ));
    cases.push(Case::new(
        "r = s = 2^256 - 1",
        with_signature(&good, &[0xff; 64]),
        invalid("signature"),
    ));
    cases.push(Case::new(
        "r + n (overflowing r) with the real s",
        with_signature(&good, &rs(&[0xff; 32], &s)),
        invalid("signature"),
    ));
    cases.push(Case::new(
        "DER-encoded valid signature",
        with_signature(&good, &der_signature(&sig)),
        invalid("signature"),
    ));
    cases.push(Case::new(
        "DER-encoded r=s=0",
        with_signature(&good, &der_signature(&[0u8; 64])),
        invalid("signature"),
    ));
    for (name, bytes) in [
        ("63 bytes (truncated)", sig[..63].to_vec()),
        ("65 bytes (zero appended)", [sig.clone(), vec![0]].concat()),
        ("65 bytes (zero prepended)", [vec![0], sig.clone()].concat()),
        ("66 bytes", [vec![0], sig.clone(), vec![0]].concat()),
        ("32 bytes (r only)", sig[..32].to_vec()),
        ("1 byte", vec![0]),
        (
            "96 bytes (ES384 length)",
            [sig.clone(), sig[..32].to_vec()].concat(),
        ),
        ("128 bytes (doubled)", [sig.clone(), sig.clone()].concat()),
        ("1,023 bytes", vec![7u8; 1023]),
        ("2,000 bytes", vec![7u8; 2000]),
    ] {
        cases.push(Case::new(
            format!("signature of {name}"),
            with_signature(&good, &bytes),
            invalid("signature"),
        ));
    }
    let mut flipped = sig.clone();
    flipped[10] ^= 1;
    cases.push(Case::new(
        "one bit flipped",
        with_signature(&good, &flipped),
        invalid("signature"),
    ));
    let (h, _, s64) = segments(&good);
    let other = e.good();
    cases.push(Case::new(
        "signature of another token",
        with_signature(&good, &signature_of(&other)),
        invalid("signature"),
    ));
    let tampered_payload = b64(json_bytes(&e.claims_with(|m| {
        m.insert("scope".into(), json!("admin"));
    })));
    cases.push(Case::new(
        "payload swapped under a valid signature",
        format!("{h}.{tampered_payload}.{s64}"),
        invalid("signature"),
    ));
    cases.push(Case::new(
        "signed by another zone's key, header names the zone key",
        e.sts.mandate().signing_key(other_zone_kid).sign(),
        invalid("signature"),
    ));
    cases.push(Case::new(
        "signed by another zone's key under its own kid",
        e.sts.mandate().kid(other_zone_kid).sign(),
        invalid("unknown_key"),
    ));
    cases.push(Case::new(
        "a whole mandate of another zone (its zone never selects keys)",
        e.sts.mandate().zone("zone-2").kid(other_zone_kid).sign(),
        invalid("unknown_key"),
    ));
    cases.push(Case::new("control: the untouched token", good, ok()));
    cases
}

#[tokio::test]
async fn signature() {
    let e = env().await;
    let zone2 = e.sts.add_zone("zone-2");
    // Let the unknown-kid refetch happen (it must still not find zone-2's key).
    e.clock.advance(Duration::from_secs(3));
    check("signature", &e.verifier, &signature_cases(&e, &zone2)).await;
}

// ---------------------------------------------------------------------------------
// Claims
// ---------------------------------------------------------------------------------

fn time_cases(e: &Env) -> Vec<Case> {
    let now = T0;
    let m = || e.sts.mandate();
    vec![
        Case::new(
            "exp = now + 1 (just inside)",
            m().issued_at(now - 600).expires_at(now + 1).sign(),
            ok(),
        ),
        Case::new(
            "exp = now (boundary: expired, exp has no leeway)",
            m().issued_at(now - 600).expires_at(now).sign(),
            invalid("expired"),
        ),
        Case::new(
            "exp = now - leeway + 1 (inside the nbf/iat leeway: still expired)",
            m().issued_at(now - 600).expires_at(now - LEEWAY + 1).sign(),
            invalid("expired"),
        ),
        Case::new(
            "exp = now - leeway",
            m().issued_at(now - 600).expires_at(now - LEEWAY).sign(),
            invalid("expired"),
        ),
        Case::new(
            "exp far in the past",
            m().issued_at(1).expires_at(2).sign(),
            invalid("expired"),
        ),
        Case::new(
            "nbf = now + leeway (just inside)",
            m().not_before(now + LEEWAY).sign(),
            ok(),
        ),
        Case::new(
            "nbf = now + leeway + 1 (just outside)",
            m().not_before(now + LEEWAY + 1).sign(),
            invalid("not_yet_valid"),
        ),
        Case::new("nbf = 0", m().not_before(0).sign(), ok()),
        Case::new(
            "iat = now + leeway (just inside)",
            m().issued_at(now + LEEWAY).sign(),
            ok(),
        ),
        Case::new(
            "iat = now + leeway + 1 (just outside)",
            m().issued_at(now + LEEWAY + 1).sign(),
            invalid("issued_in_future"),
        ),
        Case::new(
            "iat = 0",
            m().claim("iat", json!(0)).sign(),
            invalid("claims"),
        ),
        Case::new(
            "iat missing",
            m().remove_claim("iat").sign(),
            invalid("claims"),
        ),
        Case::new(
            "exp missing",
            m().remove_claim("exp").sign(),
            invalid("claims"),
        ),
    ]
}

#[tokio::test]
async fn claims_times() {
    let e = env().await;
    check("claims: times", &e.verifier, &time_cases(&e)).await;
}

#[tokio::test]
async fn claims_expiry_boundary_on_the_cached_path() {
    let e = env().await;
    let token = e.sts.mandate().expires_at(T0 + 10).sign();
    let reqs = Requirements::new();
    assert!(e.verifier.verify(&token, &reqs).await.is_ok());
    // Now served from the verified-mandate cache: expiry is still checked on each
    // hit, at `exp` exactly (no leeway on `exp`).
    e.clock.set(Duration::from_secs(T0 + 9));
    assert_eq!(Outcome::of(&e.verifier.verify(&token, &reqs).await), ok());
    for at in [T0 + 10, T0 + 10 + LEEWAY - 1] {
        e.clock.set(Duration::from_secs(at));
        assert_eq!(
            Outcome::of(&e.verifier.verify(&token, &reqs).await),
            invalid("expired")
        );
    }
}

fn exp_type_cases(e: &Env) -> Vec<Case> {
    let mut cases = Vec::new();
    for (name, v) in [
        ("string", json!((T0 + 300).to_string())),
        ("null", Value::Null),
        ("true", json!(true)),
        ("false", json!(false)),
        ("negative", json!(-1)),
        ("very negative", json!(i64::MIN)),
        ("1e300", json!(1e300)),
        ("fractional", json!(T0 as f64 + 300.5)),
        ("float with integral value", json!(T0 as f64 + 300.0)),
        ("zero", json!(0)),
        ("array", json!([T0 + 300])),
        ("object", json!({"$date": T0 + 300})),
    ] {
        cases.push(Case::new(
            format!("exp as {name}"),
            e.sts.mandate().claim("exp", v).sign(),
            invalid("claims"),
        ));
    }
    let claims = json_bytes(&e.sts.mandate().expires_at(4_242_424_242).claims());
    for (name, raw) in [
        ("2^64", "18446744073709551616"),
        ("2^64 + 1", "18446744073709551617"),
        ("1e300 literal", "1e300"),
        ("exponent form of a valid time", "1.7900003e9"),
        ("leading zero", "04242424242"),
        ("plus sign", "+4242424242"),
        ("hex", "0x1"),
        ("Infinity", "Infinity"),
    ] {
        cases.push(Case::new(
            format!("exp as {name}"),
            e.raw_payload(&replace_once(&claims, "4242424242", raw.as_bytes())),
            invalid("claims"),
        ));
    }
    for (claim, v) in [
        ("iat", json!("1790000000")),
        ("iat", json!(-5)),
        ("nbf", json!(null)),
        ("nbf", json!("0")),
        ("nbf", json!(1.5)),
    ] {
        cases.push(Case::new(
            format!("{claim} as {v}"),
            e.sts.mandate().claim(claim, v).sign(),
            invalid("claims"),
        ));
    }
    cases
}

#[tokio::test]
async fn claims_exp_types() {
    let e = env().await;
    check("claims: exp types", &e.verifier, &exp_type_cases(&e)).await;
}

/// A far-future `exp` is a policy matter for the STS; the verifier must not crash on
/// it. Regression: `exp = u64::MAX` overflowed `exp + leeway` in the mandate-cache
/// TTL, a panic in debug builds (fixed in 82e46fd).
#[tokio::test]
async fn claims_far_future_exp_does_not_crash() {
    let e = env().await;
    let cases = vec![
        Case::new(
            "exp = 10^15",
            e.sts.mandate().expires_at(1_000_000_000_000_000).sign(),
            ok(),
        ),
        Case::new(
            "exp = 2^63",
            e.sts.mandate().expires_at(1 << 63).sign(),
            ok(),
        ),
        Case::new(
            "exp = u64::MAX - leeway",
            e.sts.mandate().expires_at(u64::MAX - LEEWAY).sign(),
            ok(),
        ),
        Case::new(
            "exp = u64::MAX",
            e.sts.mandate().expires_at(u64::MAX).sign(),
            ok(),
        ),
    ];
    check("claims: far-future exp", &e.verifier, &cases).await;
}

fn iss_aud_cases(e: &Env) -> Vec<Case> {
    let iss = e.sts.issuer_url();
    let m = || e.sts.mandate();
    let mut cases = vec![
        Case::new(
            "iss prefix",
            m().claim("iss", json!(&iss[..iss.len() - 1])).sign(),
            invalid("issuer"),
        ),
        Case::new(
            "iss suffix",
            m().claim("iss", json!(format!("{iss}0"))).sign(),
            invalid("issuer"),
        ),
        Case::new(
            "iss path suffix",
            m().claim("iss", json!(format!("{iss}/evil"))).sign(),
            invalid("issuer"),
        ),
        Case::new(
            "iss trailing slash",
            m().claim("iss", json!(format!("{iss}/"))).sign(),
            invalid("issuer"),
        ),
        Case::new(
            "iss upper-case scheme",
            m().claim("iss", json!(iss.replace("http://", "HTTP://")))
                .sign(),
            invalid("issuer"),
        ),
        Case::new(
            "iss https instead of http",
            m().claim("iss", json!(iss.replace("http://", "https://")))
                .sign(),
            invalid("issuer"),
        ),
        Case::new(
            "iss localhost for 127.0.0.1",
            m().claim("iss", json!(iss.replace("127.0.0.1", "localhost")))
                .sign(),
            invalid("issuer"),
        ),
        Case::new(
            "iss leading space",
            m().claim("iss", json!(format!(" {iss}"))).sign(),
            invalid("issuer"),
        ),
        Case::new(
            "iss with NUL",
            m().claim("iss", json!(format!("{iss}\u{0}"))).sign(),
            invalid("issuer"),
        ),
        Case::new(
            "iss as array",
            m().claim("iss", json!([iss])).sign(),
            invalid("claims"),
        ),
        Case::new(
            "iss as number",
            m().claim("iss", json!(7)).sign(),
            invalid("claims"),
        ),
        Case::new(
            "iss null",
            m().claim("iss", Value::Null).sign(),
            invalid("claims"),
        ),
        Case::new(
            "iss empty",
            m().claim("iss", json!("")).sign(),
            invalid("claims"),
        ),
        Case::new(
            "iss missing",
            m().remove_claim("iss").sign(),
            invalid("claims"),
        ),
        Case::new(
            "aud []",
            m().claim("aud", json!([])).sign(),
            invalid("claims"),
        ),
        Case::new(
            "aud number",
            m().claim("aud", json!(5)).sign(),
            invalid("claims"),
        ),
        Case::new(
            "aud [null]",
            m().claim("aud", json!([null])).sign(),
            invalid("claims"),
        ),
        Case::new(
            "aud null",
            m().claim("aud", Value::Null).sign(),
            invalid("claims"),
        ),
        Case::new(
            "aud empty string",
            m().claim("aud", json!("")).sign(),
            invalid("claims"),
        ),
        Case::new(
            "aud object",
            m().claim("aud", json!({"aud": AUD})).sign(),
            invalid("claims"),
        ),
        Case::new(
            "aud duplicated in the array",
            m().claim("aud", json!([AUD, AUD])).sign(),
            invalid("claims"),
        ),
        Case::new(
            "aud [AUD, 1]",
            m().claim("aud", json!([AUD, 1])).sign(),
            invalid("claims"),
        ),
        Case::new(
            "aud substring",
            m().audience("resource://ap").sign(),
            invalid("audience"),
        ),
        Case::new(
            "aud superstring",
            m().audience("resource://api/admin").sign(),
            invalid("audience"),
        ),
        Case::new(
            "aud case change",
            m().audience("RESOURCE://api").sign(),
            invalid("audience"),
        ),
        Case::new(
            "aud with trailing slash",
            m().audience("resource://api/").sign(),
            invalid("audience"),
        ),
        Case::new(
            "aud array without ours",
            m().claim("aud", json!(["resource://other", "resource://apix"]))
                .sign(),
            invalid("audience"),
        ),
        Case::new(
            "aud space-joined list",
            m().audience(format!("resource://other {AUD}")).sign(),
            invalid("audience"),
        ),
        Case::new(
            "aud missing",
            m().remove_claim("aud").sign(),
            invalid("claims"),
        ),
        Case::new(
            "control: aud array containing ours",
            m().claim("aud", json!(["resource://other", AUD])).sign(),
            ok(),
        ),
        Case::new(
            "use session",
            m().claim("use", json!("session")).sign(),
            invalid("use"),
        ),
        Case::new(
            "use Resource",
            m().claim("use", json!("Resource")).sign(),
            invalid("use"),
        ),
        Case::new(
            "use empty",
            m().claim("use", json!("")).sign(),
            invalid("use"),
        ),
        Case::new(
            "use as array",
            m().claim("use", json!(["resource"])).sign(),
            invalid("claims"),
        ),
    ];
    for name in ["sub", "jti", "client_id", "sid", "root_sid", "sub_type"] {
        cases.push(Case::new(
            format!("{name} missing"),
            m().remove_claim(name).sign(),
            invalid("claims"),
        ));
    }
    // Caracal answers a missing zone_id as it answers a wrong one.
    cases.push(Case::new(
        "zone_id missing",
        m().remove_claim("zone_id").sign(),
        code("zone_invalid"),
    ));
    cases
}

#[tokio::test]
async fn claims_iss_aud_use() {
    let e = env().await;
    check("claims: iss/aud/use", &e.verifier, &iss_aud_cases(&e)).await;
}

fn zone_cases(e: &Env) -> Vec<Case> {
    let m = || e.sts.mandate();
    let mut cases = Vec::new();
    for zone in [
        "zone-1&zone_id=zone-1",
        "zone-2&zone_id=zone-1",
        "../zone-1",
        "zone-1/..",
        "zone-1/../zone-1",
        "zone-1%00",
        "zone-1\u{0}",
        "zone-1 ",
        "ZONE-1",
        "zone-1\n",
        "zone%2D1",
        "zone-2",
        "*",
    ] {
        cases.push(Case::new(
            format!("zone_id {zone:?}"),
            m().zone(zone).sign(),
            code("zone_invalid"),
        ));
    }
    cases.push(Case::new(
        "zone_id of 17 KB (default cap)",
        m().zone("z".repeat(17 * 1024)).sign(),
        code("payload_too_large"),
    ));
    // Not a usable zone: `zone_invalid`, as Caracal answers (was invalid_token/claims).
    for (name, v) in [
        ("array", json!([ZONE])),
        ("null", Value::Null),
        ("number", json!(1)),
        ("empty", json!("")),
    ] {
        cases.push(Case::new(
            format!("zone_id as {name}"),
            m().claim("zone_id", v).sign(),
            code("zone_invalid"),
        ));
    }
    cases
}

#[tokio::test]
async fn claims_zone_id() {
    let e = env().await;
    let before = e.sts.jwks_requests();
    check("claims: zone_id", &e.verifier, &zone_cases(&e)).await;
    assert_eq!(
        e.sts.jwks_requests(),
        before,
        "the token's zone never selects (or fetches) a keyset"
    );
    let big = e.verifier_with(|b| b.max_token_bytes(BIG)).await;
    let cases = [Case::new(
        "zone_id of 17 KB (4 MiB cap)",
        e.sts.mandate().zone("z".repeat(17 * 1024)).sign(),
        code("zone_invalid"),
    )];
    check("claims: zone_id (big cap)", &big, &cases).await;
}

fn scope_cases(e: &Env) -> Vec<Case> {
    let m = |scope: &str| e.sts.mandate().claim("scope", json!(scope)).sign();
    let needs = |s: &str| Requirements::new().scopes([s]);
    let si = || code("scope_insufficient");
    vec![
        Case::new("admin for admin:read", m("admin"), si()).reqs(needs("admin:read")),
        Case::new("admin:read for admin", m("admin:read"), si()).reqs(needs("admin")),
        Case::new("Admin:read for admin:read", m("Admin:read"), si()).reqs(needs("admin:read")),
        Case::new("ADMIN for admin", m("ADMIN"), si()).reqs(needs("admin")),
        Case::new("admin:rea", m("admin:rea"), si()).reqs(needs("admin:read")),
        Case::new("admin:readx", m("admin:readx"), si()).reqs(needs("admin:read")),
        // Caracal splits scope on Unicode White_Space (Go's strings.Fields), so these
        // trailing separators are delimiters; U+200B and U+FEFF are not White_Space.
        Case::new("admin:read with tab", m("admin:read\t"), ok()).reqs(needs("admin:read")),
        Case::new("admin:read with NBSP", m("admin:read\u{a0}"), ok()).reqs(needs("admin:read")),
        Case::new("admin:read with newline", m("admin:read\n"), ok()).reqs(needs("admin:read")),
        Case::new("admin:read with ZWSP", m("admin:read\u{200b}"), si()).reqs(needs("admin:read")),
        Case::new("admin:read with BOM", m("admin:read\u{feff}"), si()).reqs(needs("admin:read")),
        Case::new("ZWSP-joined", m("read\u{200b}admin:read"), si()).reqs(needs("admin:read")),
        Case::new("comma-joined", m("read,admin:read"), si()).reqs(needs("admin:read")),
        Case::new("plus-joined", m("read+admin:read"), si()).reqs(needs("admin:read")),
        Case::new("wildcard", m("*"), si()).reqs(needs("admin:read")),
        Case::new("admin:* ", m("admin:*"), si()).reqs(needs("admin:read")),
        Case::new("empty scope", m(""), si()).reqs(needs("admin")),
        Case::new("only spaces", m("   "), si()).reqs(needs("admin")),
        Case::new("scope absent", e.sts.mandate().sign(), si()).reqs(needs("admin")),
        Case::new(
            "route scope with trailing space never matches",
            m("admin"),
            si(),
        )
        .reqs(needs("admin ")),
        Case::new("two required, one present", m("admin:read"), si())
            .reqs(Requirements::new().scopes(["admin:read", "admin:write"])),
        Case::new(
            "scope as array",
            e.sts.mandate().claim("scope", json!(["admin"])).sign(),
            invalid("claims"),
        )
        .reqs(needs("admin")),
        Case::new(
            "scope null",
            e.sts.mandate().claim("scope", Value::Null).sign(),
            invalid("claims"),
        )
        .reqs(needs("admin")),
        Case::new(
            "control: trailing ASCII space is a delimiter",
            m("admin "),
            ok(),
        )
        .reqs(needs("admin")),
        Case::new("control: among others", m("read admin:read  write"), ok())
            .reqs(needs("admin:read")),
    ]
}

#[tokio::test]
async fn claims_scope_near_misses() {
    let e = env().await;
    check("claims: scope", &e.verifier, &scope_cases(&e)).await;
}

/// `edges` hops that each carry a delegation edge, then the client's own hop.
fn edged_chain(edges: usize) -> Value {
    let hops = (0..edges).map(|i| {
        json!({
            "application_id": format!("app-{i}"),
            "delegation_edge_id": format!("e-{i}"),
        })
    });
    Value::Array(hops.chain([json!({"application_id": "app-1"})]).collect())
}

fn nested_arrays(depth: usize) -> String {
    "[".repeat(depth) + &"]".repeat(depth)
}

fn chain_cases(e: &Env) -> Vec<Case> {
    let m = || e.sts.mandate();
    let claims = json_bytes(&m().claims());
    let with_raw_chain = |raw: &str| {
        e.raw_payload(&replace_once(
            &claims,
            "{",
            format!("{{\"delegation_chain\":{raw},").as_bytes(),
        ))
    };
    let mut cases = vec![
        Case::new(
            "chain as object",
            m().claim("delegation_chain", json!({"application_id": "app-1"}))
                .sign(),
            invalid("claims"),
        ),
        Case::new(
            "chain as string",
            m().claim("delegation_chain", json!("app-1")).sign(),
            invalid("claims"),
        ),
        Case::new(
            "chain as number",
            m().claim("delegation_chain", json!(1)).sign(),
            invalid("claims"),
        ),
        Case::new(
            "chain null",
            m().claim("delegation_chain", Value::Null).sign(),
            invalid("claims"),
        ),
        Case::new(
            "hop without application_id",
            m().claim("delegation_chain", json!([{"agent_session_id": "s"}]))
                .sign(),
            invalid("claims"),
        ),
        Case::new(
            "hop with application_id null",
            m().claim("delegation_chain", json!([{"application_id": null}]))
                .sign(),
            invalid("claims"),
        ),
        Case::new(
            "hop with empty application_id",
            m().claim("delegation_chain", json!([{"application_id": ""}]))
                .sign(),
            invalid("claims"),
        ),
        Case::new(
            "hop with numeric application_id",
            m().claim("delegation_chain", json!([{"application_id": 1}]))
                .sign(),
            invalid("claims"),
        ),
        Case::new(
            "hop with an unknown field",
            m().claim(
                "delegation_chain",
                json!([{"application_id": "app-1", "admin": true}]),
            )
            .sign(),
            invalid("claims"),
        ),
        Case::new(
            "hop as a string",
            m().claim("delegation_chain", json!(["app-1"])).sign(),
            invalid("claims"),
        ),
        Case::new(
            "hop as an array",
            m().claim("delegation_chain", json!([["app-1"]])).sign(),
            invalid("claims"),
        ),
        Case::new(
            "hop null",
            m().claim("delegation_chain", json!([null])).sign(),
            invalid("claims"),
        ),
        Case::new(
            "hop session null",
            m().claim(
                "delegation_chain",
                json!([{"application_id": "app-1", "agent_session_id": null}]),
            )
            .sign(),
            invalid("claims"),
        ),
        Case::new(
            "chain nested 100 deep",
            with_raw_chain(&nested_arrays(100)),
            invalid("claims"),
        ),
        Case::new(
            "last hop is not the client",
            m().delegation(1)
                .client_id("app-1")
                .chain(vec![caracal_verifier::testing::ChainHop {
                    application_id: "app-evil".into(),
                    agent_session_id: None,
                    delegation_edge_id: Some("edge-1".into()),
                }])
                .sign(),
            Outcome {
                code: "chain_mismatch".into(),
                reason: Some("last_hop_client".into()),
            },
        ),
        Case::new(
            "12 edges against the default limit of 10",
            m().delegation(12).sign(),
            code("hop_count_exceeded"),
        ),
        Case::new(
            "hop_count understated: edges in the chain count",
            m().delegation(12).hop_count(1).sign(),
            code("hop_count_exceeded"),
        ),
        Case::new("control: 2 hops", m().delegation(2).sign(), ok()),
    ];
    cases.push(Case::new(
        "chain of 256 hops with edges",
        m().claim("delegation_chain", edged_chain(255)).sign(),
        code("payload_too_large"),
    ));
    cases
}

#[tokio::test]
async fn claims_delegation_chain() {
    let e = env().await;
    check("claims: delegation_chain", &e.verifier, &chain_cases(&e)).await;

    // Shapes that need a large token cap to reach the parser at all.
    let big = e.verifier_with(|b| b.max_token_bytes(BIG)).await;
    let m = || e.sts.mandate();
    let claims = json_bytes(&m().claims());
    let with_raw = |name: &str, raw: &str| {
        e.raw_payload(&replace_once(
            &claims,
            "{",
            format!("{{\"{name}\":{raw},").as_bytes(),
        ))
    };
    let deep_objects = {
        let mut s = String::new();
        for _ in 0..5000 {
            s.push_str("{\"a\":");
        }
        s.push('1');
        s.push_str(&"}".repeat(5000));
        s
    };
    let hops_10k: Vec<Value> = (0..10_000)
        .map(|i| json!({"application_id": format!("app-{i}")}))
        .collect();
    let cases = vec![
        Case::new(
            "chain nested 5,000 deep",
            with_raw("delegation_chain", &nested_arrays(5000)),
            invalid("claims"),
        ),
        Case::new(
            "hop nested 5,000 objects deep",
            with_raw(
                "delegation_chain",
                &format!("[{{\"application_id\":{deep_objects}}}]"),
            ),
            invalid("claims"),
        ),
        Case::new(
            "extra claim nested 5,000 deep",
            with_raw("x", &nested_arrays(5000)),
            invalid("claims"),
        ),
        Case::new(
            "extra claim nested 5,000 objects deep",
            with_raw("x", &deep_objects),
            invalid("claims"),
        ),
        Case::new(
            "delegation_path nested 5,000 deep",
            with_raw("delegation_path", &nested_arrays(5000)),
            invalid("claims"),
        ),
        Case::new(
            "10,000 hops",
            m().claim("delegation_chain", Value::Array(hops_10k)).sign(),
            invalid("claims"),
        ),
        Case::new(
            "257 hops (over the hard cap)",
            m().claim(
                "delegation_chain",
                Value::Array(vec![json!({"application_id": "app-1"}); 257]),
            )
            .sign(),
            invalid("claims"),
        ),
        Case::new(
            "10,000 malformed hops",
            with_raw("delegation_chain", &format!("[{}1]", "{},".repeat(10_000))),
            invalid("claims"),
        ),
        Case::new(
            "256 hops with edges (at the hard cap)",
            m().claim("delegation_chain", edged_chain(255)).sign(),
            code("hop_count_exceeded"),
        ),
        Case::new(
            "100,000 scopes",
            m().claim("scope", json!("s ".repeat(100_000))).sign(),
            ok(),
        ),
        Case::new(
            "10,000 targets",
            m().claim(
                "target",
                json!((0..10_000).map(|i| format!("t{i}")).collect::<Vec<_>>()),
            )
            .sign(),
            ok(),
        ),
        Case::new(
            "10,000 duplicate targets",
            m().claim("target", json!(vec!["t"; 10_000])).sign(),
            invalid("claims"),
        ),
        Case::new(
            "20,000 distinct extra claims",
            {
                let mut c = m().claims();
                let map = c.as_object_mut().expect("object");
                for i in 0..20_000 {
                    map.insert(format!("x{i}"), json!(i));
                }
                e.raw_payload(&json_bytes(&c))
            },
            ok(),
        ),
    ];
    check("claims: delegation_chain (big cap)", &big, &cases).await;
}

// ---------------------------------------------------------------------------------
// Size
// ---------------------------------------------------------------------------------

/// A token of exactly `len` bytes, signed, by padding an extra claim and the header.
fn token_of_len(e: &Env, len: usize) -> String {
    let make = |filler: usize, spaces: usize| {
        let mut header = header_json("key-1");
        header.extend(std::iter::repeat_n(b' ', spaces));
        let claims = e.claims_with(|m| {
            m.insert("pad".into(), json!("p".repeat(filler)));
        });
        e.raw(&header, &json_bytes(&claims))
    };
    let base = make(0, 0).len();
    let start = (len.saturating_sub(base) * 3 / 4).saturating_sub(8);
    for filler in start..start + 64 {
        for spaces in 0..4 {
            let token = make(filler, spaces);
            if token.len() == len {
                return token;
            }
        }
    }
    panic!("no token of {len} bytes");
}

#[tokio::test]
async fn size() {
    let e = env().await;
    let good = e.good();
    let (h, p, s) = segments(&good);
    let payload = json_bytes(&e.sts.mandate().claims());
    let huge_header =
        json_bytes(&json!({"alg": "ES256", "kid": "key-1", "x": "h".repeat(256 << 10)}));
    let nested_header = format!(
        "{{\"alg\":\"ES256\",\"kid\":\"key-1\",\"x\":{}}}",
        nested_arrays(128 << 10)
    );
    let kid_header = json_bytes(&json!({"alg": "ES256", "kid": "k".repeat(256 << 10)}));
    let megabyte = "a".repeat(1 << 20);
    let dots = ".".repeat(100_000);
    let default_cases = vec![
        Case::new(
            "1 MiB token",
            format!("{h}.{megabyte}.{s}"),
            code("payload_too_large"),
        ),
        Case::new(
            "1 MiB of one character",
            megabyte.clone(),
            code("payload_too_large"),
        ),
        Case::new("100k dots", dots.clone(), code("payload_too_large")),
        Case::new(
            "256 KiB header",
            e.raw(&huge_header, &payload),
            code("payload_too_large"),
        ),
        Case::new("exactly the 16 KiB cap", token_of_len(&e, 16384), ok()),
        Case::new(
            "one byte over the cap",
            token_of_len(&e, 16385),
            code("payload_too_large"),
        ),
    ];
    check("size (default cap)", &e.verifier, &default_cases).await;
    for case in &default_cases {
        if case.expect.code == "payload_too_large" {
            let err = e
                .verifier
                .verify(&case.token, &Requirements::new())
                .await
                .unwrap_err();
            assert_eq!(err.details()["limit"], json!(16384), "{}", case.name);
            assert_eq!(
                err.details()["size"],
                json!(case.token.len()),
                "{}",
                case.name
            );
        }
    }

    // Past the cap, every size attack still fails closed in its parser.
    let big = e.verifier_with(|b| b.max_token_bytes(BIG)).await;
    let big_cases = vec![
        Case::new(
            "1 MiB payload segment",
            format!("{h}.{megabyte}.{s}"),
            invalid("signature"),
        ),
        Case::new(
            "1 MiB signature segment",
            format!("{h}.{p}.{megabyte}"),
            invalid("signature"),
        ),
        Case::new(
            "1 MiB header segment",
            format!("{megabyte}.{p}.{s}"),
            invalid("header"),
        ),
        Case::new("1 MiB without dots", megabyte.clone(), invalid("malformed")),
        Case::new("100k dots", dots.clone(), invalid("malformed")),
        Case::new(
            "100k dots around a token",
            format!("{dots}{good}{dots}"),
            invalid("malformed"),
        ),
        Case::new(
            "256 KiB header, nested arrays",
            e.raw(nested_header.as_bytes(), &payload),
            invalid("header"),
        ),
        Case::new(
            "256 KiB kid",
            e.raw(&kid_header, &payload),
            invalid("unknown_key"),
        ),
        Case::new(
            "256 KiB header, ignored member (validly signed)",
            e.raw(&huge_header, &payload),
            ok(),
        ),
        Case::new(
            "1 MiB payload of nested arrays",
            e.raw_payload(&replace_once(
                &payload,
                "{",
                format!("{{\"x\":{},", nested_arrays(512 << 10)).as_bytes(),
            )),
            invalid("claims"),
        ),
    ];
    check("size (4 MiB cap)", &big, &big_cases).await;
}

// ---------------------------------------------------------------------------------
// Malleability
// ---------------------------------------------------------------------------------

/// `(r, s)` → `(r, n − s)`: the other valid ECDSA signature of the same message.
fn malleate(token: &str) -> String {
    let sig = signature_of(token);
    let r: [u8; 32] = sig[..32].try_into().expect("r");
    let s: [u8; 32] = sig[32..].try_into().expect("s");
    let s2 = sub_be(&P256_N, &s);
    assert_ne!(s, s2);
    with_signature(token, &rs(&r, &s2))
}

#[tokio::test]
async fn malleated_signature_still_revoked_and_replay_guarded() {
    let e = env().await;
    let reqs = Requirements::new();

    // 1. It verifies: ECDSA has no canonical s, and the backend does not force low-s.
    let original = e.sts.mandate().sid("sid-malleable").sign();
    let malleated = malleate(&original);
    assert_ne!(original, malleated);
    assert_eq!(
        Outcome::of(&e.verifier.verify(&original, &reqs).await),
        ok()
    );
    let m = e.verifier.verify(&malleated, &reqs).await;
    assert_eq!(
        Outcome::of(&m),
        ok(),
        "the malleated token is a distinct token (a cache miss) that verifies"
    );
    assert_eq!(m.expect("ok").sid(), "sid-malleable");

    // 2. Revocation keys on anchors, not bytes: both die together.
    e.verifier.revocations().revoke("sid-malleable");
    for t in [&original, &malleated] {
        assert_eq!(
            Outcome::of(&e.verifier.verify(t, &reqs).await),
            code("session_revoked")
        );
    }
    // Malleating a token never seen before does not dodge it either.
    let fresh = e.sts.mandate().sid("sid-malleable").sign();
    assert_eq!(
        Outcome::of(&e.verifier.verify(&malleate(&fresh), &reqs).await),
        code("session_revoked")
    );

    // 3. The replay guard keys on (iss, jti): a malleated replay is a replay.
    let once = Requirements::new().single_use();
    let token = e.sts.mandate().sign();
    assert_eq!(Outcome::of(&e.verifier.verify(&token, &once).await), ok());
    assert_eq!(
        Outcome::of(&e.verifier.verify(&malleate(&token), &once).await),
        invalid("replayed")
    );
    // And the other way round: malleated first, original second.
    let token = e.sts.mandate().sign();
    assert_eq!(
        Outcome::of(&e.verifier.verify(&malleate(&token), &once).await),
        ok()
    );
    assert_eq!(
        Outcome::of(&e.verifier.verify(&token, &once).await),
        invalid("replayed")
    );
}

// ---------------------------------------------------------------------------------
// The same table through the HTTP layer: a real axum server, a real HTTP client
// ---------------------------------------------------------------------------------

/// Serve one route per distinct `Requirements` of `cases`, each behind
/// `MandateLayer`, on a loopback port. Returns the base URL and the route of each case.
async fn serve(verifier: &caracal_verifier::Verifier, cases: &[Case]) -> (String, Vec<String>) {
    use axum::Router;
    use axum::routing::get;
    use caracal_verifier::layer::MandateLayer;

    let mut distinct: Vec<Requirements> = Vec::new();
    let mut routes = Vec::new();
    for case in cases {
        let i = match distinct.iter().position(|r| *r == case.reqs) {
            Some(i) => i,
            None => {
                distinct.push(case.reqs.clone());
                distinct.len() - 1
            }
        };
        routes.push(format!("/r{i}"));
    }
    let mut app = Router::new();
    for (i, reqs) in distinct.into_iter().enumerate() {
        app = app.route(
            &format!("/r{i}"),
            get(|| async { "ok" }).route_layer(MandateLayer::new(verifier.clone(), reqs)),
        );
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    (base, routes)
}

/// What the HTTP layer answered, as an [`Outcome`], after checking that the status
/// matches the code and the body is the documented JSON error.
async fn http_outcome(resp: reqwest::Response) -> Outcome {
    let status = resp.status().as_u16();
    let body = resp.text().await.expect("body");
    if status == 200 {
        assert_eq!(body, "ok");
        return ok();
    }
    let json: Value = serde_json::from_str(&body).expect("a JSON error body");
    let code = json["error"].as_str().expect("error").to_owned();
    let expected_status = caracal_verifier::ErrorCode::ALL
        .iter()
        .find(|c| c.as_str() == code)
        .expect("a documented code")
        .status()
        .as_u16();
    assert_eq!(status, expected_status, "{code}");
    assert!(json["requestId"].is_string());
    Outcome {
        code,
        reason: json["details"]["reason"].as_str().map(str::to_owned),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_layer_pass() {
    let e = env().await;
    let zone2 = e.sts.add_zone("zone-2");
    let mut cases: Vec<Case> = Vec::new();
    cases.extend(structure_cases(&e));
    cases.extend(algorithm_cases(&e));
    cases.extend(hostile_kid_cases(&e));
    cases.extend(crit_cases(&e));
    cases.extend(signature_cases(&e, &zone2));
    cases.extend(time_cases(&e));
    cases.extend(exp_type_cases(&e));
    cases.extend(iss_aud_cases(&e));
    cases.extend(zone_cases(&e));
    cases.extend(scope_cases(&e));
    cases.extend(chain_cases(&e));
    // A header value carries visible ASCII only, and HTTP trims surrounding spaces;
    // those rows are about the token parser and are covered above. Oversized rows
    // beyond the server's header limit are covered by the 100 KB row below.
    cases.retain(|c| {
        !c.token.is_empty()
            && c.token.len() <= 16 * 1024
            && c.token.bytes().all(|b| b.is_ascii_graphic())
    });
    let big = ".".repeat(100_000);
    cases.push(Case::new("100 KB of dots", big, code("payload_too_large")));
    let once = e.sts.mandate().sign();
    cases.push(
        Case::new("single use: first", once.clone(), ok()).reqs(Requirements::new().single_use()),
    );
    cases.push(
        Case::new(
            "single use: malleated replay",
            malleate(&once),
            invalid("replayed"),
        )
        .reqs(Requirements::new().single_use()),
    );

    let (base, routes) = serve(&e.verifier, &cases).await;
    let client = reqwest::Client::new();
    let mut failures = Vec::new();
    for (case, route) in cases.iter().zip(&routes) {
        let resp = client
            .get(format!("{base}{route}"))
            .header("authorization", format!("Bearer {}", case.token))
            .send()
            .await
            .expect("request");
        let got = http_outcome(resp).await;
        if got != case.expect {
            failures.push(format!(
                "  {}: expected {:?}, got {:?}",
                case.name, case.expect, got
            ));
        }
    }
    // Credentials problems only the HTTP layer can have.
    let route = &routes[0];
    let get = |auth: Vec<&str>| {
        let mut req = client.get(format!("{base}{route}"));
        for a in auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    let good = format!("Bearer {}", e.good());
    let good = good.as_str();
    for (name, auth, expect) in [
        ("no Authorization header", vec![], code("missing_token")),
        (
            "Basic scheme",
            vec!["Basic dXNlcjpwYXNz"],
            code("missing_token"),
        ),
        (
            "Bearer without a token",
            vec!["Bearer"],
            invalid("malformed"),
        ),
        (
            "two Authorization headers",
            vec![good, good],
            invalid("malformed"),
        ),
        ("control: one good header", vec![good], ok()),
    ] {
        let got = http_outcome(get(auth).await.expect("request")).await;
        if got != expect {
            failures.push(format!("  {name}: expected {expect:?}, got {got:?}"));
        }
    }
    eprintln!("http layer: {} cases", cases.len() + 5);
    assert!(failures.is_empty(), "http layer:\n{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------
// Inputs found by fuzzing
// ---------------------------------------------------------------------------------

/// The fuzzer found no library crash. It did find a hole in a harness property ("no
/// error text contains the input"): the input below is a substring of the fixed
/// message. Kept to pin the actual guarantee: the message is fixed vocabulary.
#[tokio::test]
async fn fuzz_findings() {
    let e = env().await;
    let input = "id token: malformed";
    let err = e
        .verifier
        .verify(input, &Requirements::new())
        .await
        .expect_err("not a token");
    assert_eq!(Outcome::of(&Err(err.clone())), invalid("malformed"));
    assert_eq!(err.to_string(), "invalid token: malformed");
}

// ---------------------------------------------------------------------------------
// Seeds
// ---------------------------------------------------------------------------------

/// Writes the catalogue as fuzzing seeds under `fuzz/seeds/<target>/`.
#[tokio::test]
#[ignore = "writes files; run on demand to refresh the fuzzing seeds"]
async fn dump_fuzz_seeds() {
    use std::collections::BTreeMap;
    let e = env().await;
    let zone2 = e.sts.add_zone("zone-2");
    let mut all: Vec<Case> = Vec::new();
    all.extend(structure_cases(&e));
    all.extend(algorithm_cases(&e));
    all.extend(hostile_kid_cases(&e));
    all.extend(crit_cases(&e));
    all.extend(signature_cases(&e, &zone2));
    all.extend(time_cases(&e));
    all.extend(exp_type_cases(&e));
    all.extend(iss_aud_cases(&e));
    all.extend(zone_cases(&e));
    all.extend(scope_cases(&e));
    all.extend(chain_cases(&e));
    all.push(Case::new(
        "delegation",
        e.sts.mandate().delegation(3).sign(),
        ok(),
    ));

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let mut files: BTreeMap<(String, String), Vec<u8>> = BTreeMap::new();
    let slug = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect::<String>()
            .split('-')
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join("-")
            .chars()
            .take(60)
            .collect()
    };
    const MAX_SEED: usize = 8 * 1024;
    for case in &all {
        if case.token.len() <= MAX_SEED {
            files.insert(
                ("compact_token".into(), slug(&case.name)),
                case.token.clone().into_bytes(),
            );
        }
        let mut parts = case.token.split('.');
        if let (Some(_), Some(p)) = (parts.next(), parts.next())
            && let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p)
            && bytes.len() <= MAX_SEED
            && !bytes.is_empty()
        {
            files.insert(("claims_json".into(), slug(&case.name)), bytes);
        }
    }
    // JWKS documents: the real one, the invalid-JWK catalogue and broken documents.
    let good = e.sts.public_jwk("key-1");
    let other = e.sts.public_jwk(&zone2);
    files.insert(
        ("jwks_document".into(), "good".into()),
        json_bytes(&json!({"keys": [good.clone()]})),
    );
    for (kid, jwk) in hostile::invalid_jwks(&other) {
        files.insert(
            ("jwks_document".into(), slug(&kid)),
            json_bytes(&json!({"keys": [good.clone(), jwk]})),
        );
    }
    files.insert(
        ("jwks_document".into(), "duplicate-kid".into()),
        json_bytes(&json!({"keys": hostile::duplicate_kid_pair(&good, &other, "dup")})),
    );
    for (name, body) in [
        ("empty-keys", "{\"keys\":[]}"),
        ("keys-object", "{\"keys\":{}}"),
        ("array", "[]"),
        ("dup-keys", "{\"keys\":[],\"keys\":[]}"),
        ("not-json", "nope"),
        (
            "rsa",
            &json!({"keys": [{"kty": "RSA", "kid": "r", "alg": "RS256", "n": "AQAB", "e": "AQAB"}]})
                .to_string(),
        ),
        (
            "okp",
            &json!({"keys": [{
                "kty": "OKP", "crv": "Ed25519", "kid": "o",
                "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
            }]})
            .to_string(),
        ),
    ] {
        files.insert(
            ("jwks_document".into(), name.into()),
            body.as_bytes().to_vec(),
        );
    }
    // Revocation events, in the fuzz target's format: a flags byte (bits 0-1 pick the
    // stream, bit 2 means "check `_sig`"), then `key=value` lines; `_sig=SIGN` is
    // replaced by a valid signature.
    for (name, flags, body) in [
        (
            "revoke-signed",
            0b100u8,
            "zone_id=zone-1\nsession_id=authority-record-1\nreason=grant_revoked\n_sig=SIGN",
        ),
        (
            "revoke-unsigned",
            0b000,
            "zone_id=zone-1\nsid=s\nroot_sid=r\nagent_session_id=a\ndelegation_edge_id=d",
        ),
        (
            "revoke-bad-sig",
            0b100,
            "zone_id=zone-1\nsid=s\n_sig=0123456789abcdef",
        ),
        ("revoke-dup", 0b000, "zone_id=z\nsid=s\nsid=t"),
        ("revoke-no-anchor", 0b000, "zone_id=z\nreason=x"),
        (
            "epoch-signed",
            0b101,
            "zone_id=zone-1\nepoch=42\nevent=edge_revoked\nedge_id=e\n_sig=SIGN",
        ),
        (
            "epoch-bad",
            0b001,
            "zone_id=z\nepoch=99999999999999999999999",
        ),
        ("epoch-unsigned-keyed", 0b101, "zone_id=z\nepoch=1"),
        (
            "other-stream",
            0b110,
            "action=transfer\namount=100\n_sig=SIGN",
        ),
    ] {
        let mut bytes = vec![flags];
        bytes.extend_from_slice(body.as_bytes());
        files.insert(("revocation_event".into(), name.into()), bytes);
    }
    let mut written = BTreeMap::<String, usize>::new();
    for ((target, name), bytes) in &files {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("create seed dir");
        std::fs::write(dir.join(name), bytes).expect("write seed");
        *written.entry(target.clone()).or_default() += 1;
    }
    eprintln!("seeds written: {written:?}");
}
