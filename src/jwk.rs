//! Turning a JWKS document into verification keys, skipping every unusable key.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use aws_lc_rs::signature::{self, ParsedPublicKey, RsaPublicKeyComponents};
use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use serde::de::DeserializeSeed;
use serde_json::Value;

use crate::alg::Algorithm;
use crate::b64::B64;
use crate::json::StrictValue;

enum Material {
    Parsed(ParsedPublicKey),
    Rsa { n: Vec<u8>, e: Vec<u8> },
}

/// One usable verification key. Its algorithm is fixed by the key, never by a token.
pub(crate) struct VerifyKey {
    kid: Box<str>,
    alg: Algorithm,
    material: Material,
    /// The public key bytes, to tell a re-published key from a replaced one.
    public: Box<[u8]>,
    /// Set when the key leaves the keyset; cached mandates verified under it die with it.
    retired: AtomicBool,
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("retired", &self.is_retired())
            .finish_non_exhaustive()
    }
}

impl VerifyKey {
    pub(crate) fn kid(&self) -> &str {
        &self.kid
    }

    pub(crate) fn alg(&self) -> Algorithm {
        self.alg
    }

    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    pub(crate) fn same_material(&self, other: &VerifyKey) -> bool {
        self.alg == other.alg && self.public == other.public
    }

    /// Verify `sig` over `message`. The caller has checked the signature length.
    pub(crate) fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        match &self.material {
            Material::Parsed(key) => key.verify_sig(message, sig).is_ok(),
            Material::Rsa { n, e } => {
                let params: &'static signature::RsaParameters = match self.alg {
                    Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                    _ => &signature::RSA_PKCS1_2048_8192_SHA256,
                };
                if sig.len() != n.len() {
                    return false;
                }
                RsaPublicKeyComponents { n, e }
                    .verify(params, message, sig)
                    .is_ok()
            }
        }
    }

    fn new(kid: &str, alg: Algorithm, material: Material, public: &[u8]) -> Self {
        Self {
            kid: kid.into(),
            alg,
            material,
            public: public.into(),
            retired: AtomicBool::new(false),
        }
    }
}

/// Why a JWKS document was refused as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JwksError {
    Json,
    NoKeysArray,
    NoUsableKey,
}

impl JwksError {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            JwksError::Json => "jwks is not a JSON object",
            JwksError::NoKeysArray => "jwks has no keys array",
            JwksError::NoUsableKey => "jwks has no usable key",
        }
    }
}

/// Why one key was skipped, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SkipReason {
    NotAJwk,
    NoKid,
    Use,
    KeyOps,
    Algorithm,
    Curve,
    Point,
    DuplicateKid,
}

/// Usable keys by `kid`. Built from the issuer's keyset only (a request's `kid` is
/// looked up, never inserted), so a fast seeded hash is enough.
pub(crate) type KeyMap = HashMap<Box<str>, Arc<VerifyKey>, foldhash::fast::RandomState>;

/// Parse a JWKS document. Returns the usable keys by kid and why each other key was
/// skipped.
pub(crate) fn parse_jwks(
    body: &[u8],
    accepted: &[Algorithm],
) -> Result<(KeyMap, Vec<SkipReason>), JwksError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let doc = StrictValue
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|_| JwksError::Json)?;
    let Some(Value::Array(entries)) = doc.get("keys") else {
        return Err(JwksError::NoKeysArray);
    };
    // A kid published more than once could select either key: trust neither,
    // whether or not the twin is itself usable.
    let mut kid_counts: HashMap<&str, usize> = HashMap::new();
    for kid in entries
        .iter()
        .filter_map(|e| e.get("kid").and_then(Value::as_str))
    {
        *kid_counts.entry(kid).or_default() += 1;
    }
    let mut skipped = Vec::new();
    let mut keys = KeyMap::default();
    for entry in entries {
        let kid = entry.get("kid").and_then(Value::as_str);
        if kid.is_some_and(|k| kid_counts.get(k).copied().unwrap_or(0) > 1) {
            skipped.push(SkipReason::DuplicateKid);
            continue;
        }
        match parse_key(entry, accepted) {
            Ok(key) => {
                keys.insert(key.kid.clone(), Arc::new(key));
            }
            Err(reason) => skipped.push(reason),
        }
    }
    if keys.is_empty() {
        return Err(JwksError::NoUsableKey);
    }
    Ok((keys, skipped))
}

fn parse_key(entry: &Value, accepted: &[Algorithm]) -> Result<VerifyKey, SkipReason> {
    let jwk: Jwk = serde_json::from_value(entry.clone()).map_err(|_| SkipReason::NotAJwk)?;
    let kid = jwk
        .common
        .key_id
        .as_deref()
        .filter(|k| !k.is_empty())
        .ok_or(SkipReason::NoKid)?;
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return Err(SkipReason::Use);
    }
    if jwk
        .common
        .key_operations
        .as_ref()
        .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return Err(SkipReason::KeyOps);
    }
    // A private key must never be published; treat one as a misconfigured keyset entry.
    if entry.get("d").is_some() {
        return Err(SkipReason::NotAJwk);
    }
    let declared = match jwk.common.key_algorithm {
        Some(a) => Some(Algorithm::from_key_algorithm(a).ok_or(SkipReason::Algorithm)?),
        None => None,
    };
    let (alg, material, public) = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(ec) => {
            let (alg, len, verify_alg): (_, _, &'static dyn signature::VerificationAlgorithm) =
                match ec.curve {
                    EllipticCurve::P256 => {
                        (Algorithm::ES256, 32, &signature::ECDSA_P256_SHA256_FIXED)
                    }
                    EllipticCurve::P384 => {
                        (Algorithm::ES384, 48, &signature::ECDSA_P384_SHA384_FIXED)
                    }
                    _ => return Err(SkipReason::Curve),
                };
            let x = coordinate(&ec.x, len)?;
            let y = coordinate(&ec.y, len)?;
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            // Parsing checks the point is on the curve and not the identity.
            let parsed = ParsedPublicKey::new(verify_alg, &point).map_err(|_| SkipReason::Point)?;
            (alg, Material::Parsed(parsed), point)
        }
        AlgorithmParameters::OctetKeyPair(okp) => {
            if okp.curve != EllipticCurve::Ed25519 {
                return Err(SkipReason::Curve);
            }
            let x = coordinate(&okp.x, 32)?;
            let parsed =
                ParsedPublicKey::new(&signature::ED25519, &x).map_err(|_| SkipReason::Point)?;
            (Algorithm::EdDSA, Material::Parsed(parsed), x)
        }
        AlgorithmParameters::RSA(rsa) => {
            // An RSA key serves two algorithms; it must say which one.
            let alg = declared.ok_or(SkipReason::Algorithm)?;
            if !matches!(alg, Algorithm::RS256 | Algorithm::PS256) {
                return Err(SkipReason::Algorithm);
            }
            let n = B64.decode(&rsa.n).map_err(|_| SkipReason::Point)?;
            let e = B64.decode(&rsa.e).map_err(|_| SkipReason::Point)?;
            if n.len() < 256 || n.first() == Some(&0) || e.is_empty() || e.len() > 4 {
                return Err(SkipReason::Point);
            }
            let mut public = n.clone();
            public.extend_from_slice(&e);
            (alg, Material::Rsa { n, e }, public)
        }
        _ => return Err(SkipReason::Algorithm),
    };
    if declared.is_some_and(|d| d != alg) || !accepted.contains(&alg) {
        return Err(SkipReason::Algorithm);
    }
    Ok(VerifyKey::new(kid, alg, material, &public))
}

fn coordinate(b64: &str, len: usize) -> Result<Vec<u8>, SkipReason> {
    let bytes = B64.decode(b64).map_err(|_| SkipReason::Point)?;
    if bytes.len() != len {
        return Err(SkipReason::Point);
    }
    Ok(bytes)
}

/// A throwaway ES256 key for unit tests of other modules.
#[cfg(test)]
pub(crate) fn test_key() -> Arc<VerifyKey> {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .expect("generate");
    let kp =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).expect("parse");
    let point = kp.public_key().as_ref();
    let parsed = ParsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point).expect("point");
    Arc::new(VerifyKey::new(
        "test",
        Algorithm::ES256,
        Material::Parsed(parsed),
        point,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    use serde_json::json;

    fn p256() -> (EcdsaKeyPair, Value) {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let kp =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let pubk = kp.public_key().as_ref().to_vec();
        let jwk = json!({"kty":"EC","crv":"P-256","x":B64.encode(&pubk[1..33]),"y":B64.encode(&pubk[33..]),"use":"sig","alg":"ES256"});
        (kp, jwk)
    }

    fn with(
        mut jwk: Value,
        kid: &str,
        f: impl FnOnce(&mut serde_json::Map<String, Value>),
    ) -> Value {
        let m = jwk.as_object_mut().unwrap();
        m.insert("kid".into(), json!(kid));
        f(m);
        jwk
    }

    fn doc(keys: Vec<Value>) -> Vec<u8> {
        serde_json::to_vec(&json!({ "keys": keys })).unwrap()
    }

    #[test]
    fn good_key_parses_and_verifies() {
        let (kp, jwk) = p256();
        let (keys, skipped) =
            parse_jwks(&doc(vec![with(jwk, "k1", |_| {})]), &[Algorithm::ES256]).unwrap();
        assert!(skipped.is_empty());
        let key = &keys["k1"];
        assert_eq!(key.alg(), Algorithm::ES256);
        let sig = kp.sign(&SystemRandom::new(), b"msg").unwrap();
        assert!(key.verify(b"msg", sig.as_ref()));
        assert!(!key.verify(b"msh", sig.as_ref()));
    }

    #[test]
    fn unusable_keys_are_skipped_and_good_keys_kept() {
        let (_, good) = p256();
        let (_, other) = p256();
        let bad =
            |kid: &str, f: fn(&mut serde_json::Map<String, Value>)| with(other.clone(), kid, f);
        let keys = vec![
            with(good.clone(), "good", |_| {}),
            bad("enc", |m| drop(m.insert("use".into(), json!("enc")))),
            bad("ops", |m| drop(m.insert("key_ops".into(), json!(["sign"])))),
            bad("hs", |m| drop(m.insert("alg".into(), json!("HS256")))),
            bad("es384-on-p256", |m| {
                drop(m.insert("alg".into(), json!("ES384")))
            }),
            bad("curve", |m| drop(m.insert("crv".into(), json!("P-521")))),
            bad("offcurve", |m| {
                drop(m.insert("y".into(), json!(B64.encode([7u8; 32]))))
            }),
            bad("zero", |m| {
                m.insert("x".into(), json!(B64.encode([0u8; 32])));
                m.insert("y".into(), json!(B64.encode([0u8; 32])));
            }),
            bad("ge-p", |m| {
                drop(m.insert("x".into(), json!(B64.encode([0xffu8; 32]))))
            }),
            bad("short", |m| {
                drop(m.insert("x".into(), json!(B64.encode([1u8; 31]))))
            }),
            bad("long", |m| {
                drop(m.insert("x".into(), json!(B64.encode([1u8; 33]))))
            }),
            bad("private", |m| {
                drop(m.insert("d".into(), json!(B64.encode([1u8; 32]))))
            }),
            json!({"kty":"oct","k":"c2VjcmV0","kid":"oct"}),
            json!("not an object"),
            with(other.clone(), "dup", |_| {}),
            with(good.clone(), "dup", |_| {}),
        ];
        let (parsed, skipped) = parse_jwks(&doc(keys), &[Algorithm::ES256]).unwrap();
        assert_eq!(
            parsed.keys().map(|k| &**k).collect::<Vec<_>>(),
            vec!["good"]
        );
        assert_eq!(skipped.len(), 15);
        assert!(skipped.contains(&SkipReason::DuplicateKid));
    }

    #[test]
    fn documents_without_usable_keys_fail() {
        assert_eq!(
            parse_jwks(b"[]", &[Algorithm::ES256]).unwrap_err(),
            JwksError::NoKeysArray
        );
        assert_eq!(
            parse_jwks(b"{\"keys\":{}}", &[Algorithm::ES256]).unwrap_err(),
            JwksError::NoKeysArray
        );
        assert_eq!(
            parse_jwks(b"{\"keys\":[]}", &[Algorithm::ES256]).unwrap_err(),
            JwksError::NoUsableKey
        );
        assert_eq!(
            parse_jwks(b"nope", &[Algorithm::ES256]).unwrap_err(),
            JwksError::Json
        );
        assert_eq!(
            parse_jwks(b"{\"keys\":[],\"keys\":[]}", &[Algorithm::ES256]).unwrap_err(),
            JwksError::Json
        );
    }

    #[test]
    fn es256_key_not_accepted_when_only_eddsa_allowed() {
        let (_, jwk) = p256();
        let err = parse_jwks(&doc(vec![with(jwk, "k", |_| {})]), &[Algorithm::EdDSA]).unwrap_err();
        assert_eq!(err, JwksError::NoUsableKey);
    }
}
