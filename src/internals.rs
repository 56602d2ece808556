//! Internal entry points for fuzzing and test vectors. Not a stable API.
//!
//! Compiled only with the `__internals` feature. Each function wraps a crate-private
//! parser exactly as the verifier calls it, so fuzz targets and vector tests exercise
//! the production code path rather than a copy of it.
//!
//! ```
//! use caracal_verifier::internals::split_and_parse;
//!
//! assert!(split_and_parse("not-a-token").is_err());
//! ```

use serde_json::json;

use crate::alg::Algorithm;
use crate::b64::B64;
use crate::error::AuthError;
use crate::jwk::parse_jwks as parse_jwks_document;
use crate::revocation::{DELEGATIONS_INVALIDATE_STREAM, EventError, RevocationEvent, StreamKey};
use crate::token::{parse_header, split};

/// Split a compact token and parse its header and claims, without any signature
/// check: split → header → payload, in the verifier's order.
///
/// Returns the first parse denial (`malformed`, `header` or `claims`), as
/// `Verifier::verify` reports it; `verify` also checks the algorithm, key and
/// signature between the header and the payload.
pub fn split_and_parse(token: &str) -> Result<(), AuthError> {
    let parts = split(token)?;
    parse_header(parts.header)?;
    zone_checked(crate::claims::parse_payload(parts.payload)?)
}

/// Strictly parse a decoded claims object (the JSON of a mandate's payload).
///
/// A payload whose only fault is a missing or unusable `zone_id` is `zone_invalid`,
/// as `Verifier::verify` answers it once the earlier claim checks pass; every other
/// fault is `invalid_token` (`claims`).
pub fn parse_claims_json(bytes: &[u8]) -> Result<(), AuthError> {
    zone_checked(crate::claims::parse_claims_json(bytes)?)
}

fn zone_checked(claims: crate::mandate::Claims) -> Result<(), AuthError> {
    if claims.zone_id().is_empty() {
        return Err(AuthError::ZoneInvalid);
    }
    Ok(())
}

/// Run the claims fast path and the strict parser on the same bytes and report how
/// they relate. Panics if the fast path accepts what the strict parser refuses, or
/// parses it differently: that would make the fast path a second, laxer judge.
pub fn claims_fast_path_agrees(bytes: &[u8]) -> FastPath {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return FastPath::Declined;
    };
    if crate::claims::fast_path_agrees(text) {
        FastPath::Agreed
    } else {
        FastPath::Declined
    }
}

/// What [`claims_fast_path_agrees`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastPath {
    /// The fast path left the input to the strict parser.
    Declined,
    /// The fast path accepted the input, and the strict parser parsed it the same way.
    Agreed,
}

/// Parse a JWKS document accepting only ES256, as the default verifier does.
/// Returns how many usable keys it holds; `0` when the document is refused as a whole.
pub fn parse_jwks(body: &[u8]) -> usize {
    parse_jwks_document(body, &[Algorithm::ES256]).map_or(0, |(keys, _)| keys.len())
}

/// Verify an ES256 signature through the verifier's own path.
///
/// `uncompressed_point` is the SEC1 point `04 || X || Y`. The key is built the way a
/// fetched keyset builds it (a P-256 JWK run through the JWKS parser, which checks the
/// point), then the signature length is checked against
/// `Algorithm::ES256.signature_len()` and the signature verified with the key, exactly
/// as `Verifier::verify` does. Returns `false` when the key is unusable.
pub fn verify_es256(uncompressed_point: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    let Some(coordinates) = uncompressed_point.strip_prefix(&[0x04]) else {
        return false;
    };
    if coordinates.len() % 2 != 0 {
        return false;
    }
    let (x, y) = coordinates.split_at(coordinates.len() / 2);
    let jwk = json!({
        "kty": "EC",
        "crv": "P-256",
        "x": base64::Engine::encode(&B64, x),
        "y": base64::Engine::encode(&B64, y),
        "kid": "vector",
    });
    let Ok(body) = serde_json::to_vec(&json!({ "keys": [jwk] })) else {
        return false;
    };
    let Ok((keys, _)) = parse_jwks_document(&body, &[Algorithm::ES256]) else {
        return false;
    };
    let Some(key) = keys.get("vector") else {
        return false;
    };
    if Algorithm::ES256
        .signature_len()
        .is_some_and(|n| n != sig.len())
    {
        return false;
    }
    key.verify(msg, sig)
}

/// Parse a stream message as the revocation consumer does: `stream` names the stream
/// (the delegation-epoch stream parses an epoch event, any other a revocation), and
/// with `key_hex` the message must carry a valid `_sig`.
///
/// A `key_hex` that is not a usable stream key verifies nothing and yields
/// `Err(EventError::BadSignature)`.
pub fn parse_event(
    stream: &str,
    fields: &[(String, String)],
    key_hex: Option<&str>,
) -> Result<RevocationEvent, EventError> {
    let key = match key_hex.map(StreamKey::from_hex) {
        None => None,
        Some(Ok(key)) => Some(key),
        Some(Err(_)) => return Err(EventError::BadSignature),
    };
    if stream == DELEGATIONS_INVALIDATE_STREAM {
        RevocationEvent::parse_epoch(stream, fields, key.as_ref())
    } else {
        RevocationEvent::parse_revocation(stream, fields, key.as_ref())
    }
}

/// Extract the bearer token from request headers exactly as
/// [`MandateLayer`](crate::layer::MandateLayer) does.
pub fn bearer(headers: &http::HeaderMap) -> Result<&str, AuthError> {
    crate::layer::bearer(headers)
}
