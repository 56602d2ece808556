//! Shared helpers of the hostile-input suites: a verifier wired to a real loopback
//! [`TestIssuer`], the case table runner, P-256 constants and byte-level helpers
//! (big-endian subtraction, DER and SPKI encoding) written out here so the tests do
//! not trust the code under test to build their inputs.
#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses a different subset of these helpers"
)]

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use caracal_verifier::testing::TestIssuer;
use caracal_verifier::{AuthError, Mandate, ManualClock, Requirements, Verifier, VerifierBuilder};
use serde_json::{Value, json};

/// The test epoch: every suite starts its [`ManualClock`] here.
pub const T0: u64 = 1_790_000_000;
/// The audience every verifier is configured with (the `TestIssuer` default `aud`).
pub const AUD: &str = "resource://api";
/// The default zone.
pub const ZONE: &str = "zone-1";
/// The default leeway, in seconds.
pub const LEEWAY: u64 = 60;

/// The order of the P-256 group.
pub const P256_N: [u8; 32] =
    hex32("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551");
/// The P-256 field prime.
pub const P256_P: [u8; 32] =
    hex32("FFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF");

/// 64 hex digits to 32 bytes, at compile time.
pub const fn hex32(s: &str) -> [u8; 32] {
    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => panic!("not hex"),
        }
    }
    let b = s.as_bytes();
    assert!(b.len() == 64);
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = nibble(b[2 * i]) << 4 | nibble(b[2 * i + 1]);
        i += 1;
    }
    out
}

/// Any even-length hex string to bytes.
pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// `a − b` on 256-bit big-endian integers. Panics if `b > a`.
pub fn sub_be(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut d = i16::from(a[i]) - i16::from(b[i]) - borrow;
        borrow = 0;
        if d < 0 {
            d += 256;
            borrow = 1;
        }
        out[i] = u8::try_from(d).expect("a digit");
    }
    assert_eq!(borrow, 0, "sub_be: b > a");
    out
}

/// `n − 1`.
pub fn n_minus_1() -> [u8; 32] {
    let mut one = [0u8; 32];
    one[31] = 1;
    sub_be(&P256_N, &one)
}

/// A 32-byte big-endian integer with value `v`.
pub fn int32(v: u8) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[31] = v;
    out
}

/// `r || s`.
pub fn rs(r: &[u8; 32], s: &[u8; 32]) -> Vec<u8> {
    let mut out = r.to_vec();
    out.extend_from_slice(s);
    out
}

/// The ASN.1 DER `ECDSA-Sig-Value` of a fixed-width `r || s` signature.
pub fn der_signature(fixed: &[u8]) -> Vec<u8> {
    fn integer(mut v: &[u8]) -> Vec<u8> {
        while v.len() > 1 && v[0] == 0 {
            v = &v[1..];
        }
        let mut digits = Vec::with_capacity(v.len() + 1);
        if v[0] & 0x80 != 0 {
            digits.push(0);
        }
        digits.extend_from_slice(v);
        let mut out = vec![0x02, u8::try_from(digits.len()).expect("short")];
        out.extend(digits);
        out
    }
    let (r, s) = fixed.split_at(fixed.len() / 2);
    let mut body = integer(r);
    body.extend(integer(s));
    let mut out = vec![0x30, u8::try_from(body.len()).expect("short")];
    out.extend(body);
    out
}

/// The SubjectPublicKeyInfo DER of an uncompressed P-256 point.
pub fn spki_der(point: &[u8]) -> Vec<u8> {
    let mut out = unhex("3059301306072a8648ce3d020106082a8648ce3d030107034200");
    out.extend_from_slice(point);
    out
}

/// A `PUBLIC KEY` PEM block of a DER SubjectPublicKeyInfo.
pub fn pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("ascii"));
        out.push('\n');
    }
    out.push_str("-----END PUBLIC KEY-----\n");
    out
}

/// Unpadded base64url.
pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Unpadded base64url decoding (panics on bad input: test data only).
pub fn unb64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).expect("base64url")
}

/// The header `TestIssuer` mints, for `kid`.
pub fn header_json(kid: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"alg": "ES256", "typ": "JWT", "kid": kid})).expect("json")
}

/// Sign `header_seg.payload_seg` (already encoded, possibly non-canonically) with
/// `kid` and attach the canonical signature.
pub fn sign_segments(sts: &TestIssuer, kid: &str, header_seg: &str, payload_seg: &str) -> String {
    let input = format!("{header_seg}.{payload_seg}");
    let sig = sts.sign_bytes(kid, input.as_bytes());
    format!("{input}.{}", b64(sig))
}

/// Replace a token's signature segment with these raw signature bytes.
pub fn with_signature(token: &str, sig: &[u8]) -> String {
    let (input, _) = token.rsplit_once('.').expect("a compact token");
    format!("{input}.{}", b64(sig))
}

/// The raw signature bytes of a token.
pub fn signature_of(token: &str) -> Vec<u8> {
    unb64(token.rsplit_once('.').expect("a compact token").1)
}

/// A verifier, its issuer and the shared manual clock.
pub struct Env {
    pub sts: TestIssuer,
    pub clock: ManualClock,
    pub verifier: Verifier,
}

/// The builder every suite starts from: issuer, audience, zone and the clock.
pub fn builder(sts: &TestIssuer, clock: &ManualClock) -> VerifierBuilder {
    Verifier::builder()
        .issuer(sts.issuer_url())
        .audience(AUD)
        .zone(ZONE)
        .clock(clock.clone())
}

/// A started issuer for [`ZONE`] and a warmed-up default verifier at [`T0`].
pub async fn env() -> Env {
    env_with(|b| b).await
}

/// Like [`env`], with extra verifier settings.
pub async fn env_with(f: impl FnOnce(VerifierBuilder) -> VerifierBuilder) -> Env {
    let sts = TestIssuer::start(ZONE)
        .await
        .expect("start the test issuer");
    let clock = ManualClock::new(Duration::from_secs(T0));
    sts.set_clock(clock.clone());
    let verifier = f(builder(&sts, &clock))
        .build()
        .expect("build the verifier");
    verifier.warm_up().await.expect("warm up");
    Env {
        sts,
        clock,
        verifier,
    }
}

impl Env {
    /// Another verifier on the same issuer and clock, warmed up.
    pub async fn verifier_with(
        &self,
        f: impl FnOnce(VerifierBuilder) -> VerifierBuilder,
    ) -> Verifier {
        let v = f(builder(&self.sts, &self.clock)).build().expect("build");
        v.warm_up().await.expect("warm up");
        v
    }

    /// A valid token with the default claims.
    pub fn good(&self) -> String {
        self.sts.mandate().sign()
    }

    /// The default claims with `edit` applied, as a JSON object.
    pub fn claims_with(&self, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
        let mut claims = self.sts.mandate().claims();
        edit(claims.as_object_mut().expect("claims object"));
        claims
    }

    /// A token over exactly these header and payload bytes, signed by `key-1`.
    pub fn raw(&self, header: &[u8], payload: &[u8]) -> String {
        self.sts.sign_compact("key-1", header, payload)
    }

    /// A token with the default header over exactly these payload bytes.
    pub fn raw_payload(&self, payload: &[u8]) -> String {
        self.raw(&header_json("key-1"), payload)
    }

    /// A token with these header bytes over the default claims.
    pub fn raw_header(&self, header: &[u8]) -> String {
        let payload = serde_json::to_vec(&self.sts.mandate().claims()).expect("json");
        self.raw(header, &payload)
    }
}

/// What a verification came to, at the wire level: the error code (or `ok`) and
/// `details.reason` when there is one.
#[derive(Clone, PartialEq, Eq)]
pub struct Outcome {
    pub code: String,
    pub reason: Option<String>,
}

impl fmt::Debug for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            Some(r) => write!(f, "{}/{r}", self.code),
            None => f.write_str(&self.code),
        }
    }
}

impl Outcome {
    /// From a `verify` result. Also checks that `reason()` and `details.reason` agree.
    pub fn of(result: &Result<Mandate, AuthError>) -> Self {
        match result {
            Ok(_) => ok(),
            Err(err) => {
                let details = err.details();
                let reason = details
                    .get("reason")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                if let Some(r) = err.reason() {
                    assert_eq!(
                        Some(r.as_str()),
                        reason.as_deref(),
                        "reason() and details.reason disagree"
                    );
                }
                assert_eq!(err.status(), err.code().status());
                Outcome {
                    code: err.code().as_str().to_owned(),
                    reason,
                }
            }
        }
    }
}

/// Accepted.
pub fn ok() -> Outcome {
    Outcome {
        code: "ok".into(),
        reason: None,
    }
}

/// `invalid_token` with this `details.reason`.
pub fn invalid(reason: &str) -> Outcome {
    Outcome {
        code: "invalid_token".into(),
        reason: Some(reason.into()),
    }
}

/// Another code, without a `details.reason`.
pub fn code(code: &str) -> Outcome {
    Outcome {
        code: code.into(),
        reason: None,
    }
}

/// One row of a table: a named input, the route's requirements and the outcome.
pub struct Case {
    pub name: String,
    pub token: String,
    pub reqs: Requirements,
    pub expect: Outcome,
}

impl Case {
    pub fn new(name: impl Into<String>, token: impl Into<String>, expect: Outcome) -> Self {
        Self {
            name: name.into(),
            token: token.into(),
            reqs: Requirements::new(),
            expect,
        }
    }

    #[must_use]
    pub fn reqs(mut self, reqs: Requirements) -> Self {
        self.reqs = reqs;
        self
    }
}

/// Run every case through `verify` and fail once, listing every mismatch.
pub async fn check(class: &str, verifier: &Verifier, cases: &[Case]) {
    let mut failures = Vec::new();
    for case in cases {
        let got = Outcome::of(&verifier.verify(&case.token, &case.reqs).await);
        if got != case.expect {
            failures.push(format!(
                "  {}: expected {:?}, got {:?}",
                case.name, case.expect, got
            ));
        }
    }
    eprintln!("{class}: {} cases", cases.len());
    assert!(
        failures.is_empty(),
        "{class}: {} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The invalid-JWK catalogue, each a variant of `good` (a P-256 JWK of another key)
/// under its own kid, paired with why it must be dropped. The duplicate-kid pair is
/// returned separately by [`duplicate_kid_pair`].
pub fn invalid_jwks(good: &Value) -> Vec<(String, Value)> {
    let variant = |kid: &str, edit: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut jwk = good.clone();
        let map = jwk.as_object_mut().expect("jwk object");
        map.insert("kid".into(), json!(kid));
        edit(map);
        (kid.to_owned(), jwk)
    };
    let y_plus_1 = {
        // (x, y+1) is not on the curve for any valid (x, y).
        let mut y = unb64(good["y"].as_str().expect("y"));
        let last = y.last_mut().expect("32 bytes");
        *last = last.wrapping_add(1);
        b64(y)
    };
    vec![
        variant("bad-off-curve", &|m| {
            m.insert("y".into(), json!(y_plus_1.clone()));
        }),
        variant("bad-zero-point", &|m| {
            m.insert("x".into(), json!(b64([0u8; 32])));
            m.insert("y".into(), json!(b64([0u8; 32])));
        }),
        variant("bad-x-eq-p", &|m| {
            m.insert("x".into(), json!(b64(P256_P)));
        }),
        variant("bad-y-eq-p", &|m| {
            m.insert("y".into(), json!(b64(P256_P)));
        }),
        variant("bad-x-all-ff", &|m| {
            m.insert("x".into(), json!(b64([0xffu8; 32])));
        }),
        variant("bad-x-31-bytes", &|m| {
            let x = unb64(good["x"].as_str().expect("x"));
            m.insert("x".into(), json!(b64(&x[1..])));
        }),
        variant("bad-x-33-bytes", &|m| {
            let mut x = vec![0u8];
            x.extend(unb64(good["x"].as_str().expect("x")));
            m.insert("x".into(), json!(b64(x)));
        }),
        variant("bad-y-31-bytes", &|m| {
            let y = unb64(good["y"].as_str().expect("y"));
            m.insert("y".into(), json!(b64(&y[1..])));
        }),
        variant("bad-y-33-bytes", &|m| {
            let mut y = vec![0u8];
            y.extend(unb64(good["y"].as_str().expect("y")));
            m.insert("y".into(), json!(b64(y)));
        }),
        variant("bad-crv-p384", &|m| {
            m.insert("crv".into(), json!("P-384"));
        }),
        variant("bad-crv-secp256k1", &|m| {
            m.insert("crv".into(), json!("secp256k1"));
        }),
        variant("bad-crv-missing", &|m| {
            m.remove("crv");
        }),
        variant("bad-kty-rsa", &|m| {
            m.insert("kty".into(), json!("RSA"));
        }),
        variant("bad-kty-oct", &|m| {
            m.insert("kty".into(), json!("oct"));
            m.insert("k".into(), json!(b64(b"secret")));
        }),
        variant("bad-use-enc", &|m| {
            m.insert("use".into(), json!("enc"));
        }),
        variant("bad-use-number", &|m| {
            m.insert("use".into(), json!(1));
        }),
        variant("bad-key-ops-sign", &|m| {
            m.insert("key_ops".into(), json!(["sign"]));
        }),
        variant("bad-key-ops-encrypt", &|m| {
            m.insert("key_ops".into(), json!(["encrypt"]));
        }),
        variant("bad-key-ops-empty", &|m| {
            m.insert("key_ops".into(), json!([]));
        }),
        variant("bad-alg-hs256", &|m| {
            m.insert("alg".into(), json!("HS256"));
        }),
        variant("bad-alg-es384", &|m| {
            m.insert("alg".into(), json!("ES384"));
        }),
        variant("bad-alg-none", &|m| {
            m.insert("alg".into(), json!("none"));
        }),
        variant("bad-alg-rs256", &|m| {
            m.insert("alg".into(), json!("RS256"));
        }),
        variant("bad-private-d", &|m| {
            m.insert("d".into(), json!(b64([1u8; 32])));
        }),
        variant("bad-x-padded", &|m| {
            let x = unb64(good["x"].as_str().expect("x"));
            m.insert("x".into(), json!(STANDARD.encode(x)));
        }),
        variant("bad-x-number", &|m| {
            m.insert("x".into(), json!(7));
        }),
    ]
}

/// Two JWKs under one kid: the good key and another. Neither may be used.
pub fn duplicate_kid_pair(good: &Value, other: &Value, kid: &str) -> [Value; 2] {
    let mut a = good.clone();
    a["kid"] = json!(kid);
    let mut b = other.clone();
    b["kid"] = json!(kid);
    [a, b]
}

/// A fresh P-256 key pair (the attacker's), with its public JWK under `kid`.
pub fn attacker_key(kid: &str) -> (aws_lc_rs::signature::EcdsaKeyPair, Value) {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("keygen");
    let point = pair.public_key().as_ref().to_vec();
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
        "x": b64(&point[1..33]), "y": b64(&point[33..]),
    });
    (pair, jwk)
}

/// Sign `header.payload` JSON with a raw key pair.
pub fn sign_with(
    pair: &aws_lc_rs::signature::EcdsaKeyPair,
    header: &Value,
    payload: &Value,
) -> String {
    let input = format!(
        "{}.{}",
        b64(serde_json::to_vec(header).expect("json")),
        b64(serde_json::to_vec(payload).expect("json"))
    );
    let sig = pair
        .sign(&aws_lc_rs::rand::SystemRandom::new(), input.as_bytes())
        .expect("sign");
    format!("{input}.{}", b64(sig.as_ref()))
}
