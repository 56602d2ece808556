//! The compact JWS form: three canonical base64url segments and a strict JOSE header.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};

use crate::alg::Algorithm;
use crate::b64::SIMD_B64;
use crate::error::{AuthError, InvalidReason};
use crate::json::{Key, SeenKeys, StrictValue};

/// Token material in `Debug` output: its length only, never its bytes.
pub(crate) struct Redacted<'a>(pub(crate) &'a str);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted {} bytes>", self.0.len())
    }
}

/// A compact JWS split into its parts. Borrowed from the token; its `Debug` shows
/// only the parts' lengths.
#[derive(Clone, Copy)]
pub(crate) struct Compact<'t> {
    pub(crate) header: &'t str,
    pub(crate) payload: &'t str,
    pub(crate) signature: &'t str,
    /// `header.payload`, the bytes the signature covers.
    pub(crate) signing_input: &'t str,
}

impl fmt::Debug for Compact<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compact")
            .field("header", &Redacted(self.header))
            .field("payload", &Redacted(self.payload))
            .field("signature", &Redacted(self.signature))
            .finish_non_exhaustive()
    }
}

pub(crate) fn split(token: &str) -> Result<Compact<'_>, AuthError> {
    let malformed = AuthError::invalid(InvalidReason::Malformed);
    let (signing_input, signature) = token.rsplit_once('.').ok_or(malformed.clone())?;
    let (header, payload) = signing_input.split_once('.').ok_or(malformed.clone())?;
    if payload.contains('.') || header.is_empty() || payload.is_empty() || signature.is_empty() {
        return Err(malformed);
    }
    Ok(Compact {
        header,
        payload,
        signature,
        signing_input,
    })
}

pub(crate) fn decode_segment(segment: &str) -> Result<Vec<u8>, AuthError> {
    SIMD_B64
        .decode_to_vec(segment)
        .map_err(|_| AuthError::invalid(InvalidReason::Malformed))
}

/// Decode a segment into a caller buffer (the signature), so the hot path does not allocate.
pub(crate) fn decode_into<'b>(segment: &str, buf: &'b mut [u8]) -> Result<&'b [u8], AuthError> {
    // Reject before decoding when the length cannot match the buffer, which also
    // stops a giant segment from being decoded at all.
    let n = SIMD_B64
        .decoded_length(segment.as_bytes())
        .map_err(|_| AuthError::invalid(InvalidReason::Malformed))?;
    let Some(out) = buf.get_mut(..n) else {
        return Err(AuthError::invalid(InvalidReason::Signature));
    };
    SIMD_B64
        .decode(segment.as_bytes(), base64_simd::Out::from_slice(out))
        .map(|d| &*d)
        .map_err(|_| AuthError::invalid(InvalidReason::Malformed))
}

/// The JOSE header fields the verifier uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) alg: HeaderAlg,
    pub(crate) kid: String,
}

/// The `alg` header value: accepted algorithms, or anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderAlg {
    Known(Algorithm),
    /// `none`, HMAC, or an unknown name. Always rejected.
    Other,
}

/// Headers longer than this are parsed every time rather than remembered.
const MEMO_MAX_HEADER: usize = 256;

thread_local! {
    /// The last header segment this thread parsed successfully, and its parse.
    static LAST_HEADER: std::cell::RefCell<Option<(Box<str>, Header)>> =
        const { std::cell::RefCell::new(None) };
}

/// [`parse_header`], remembering the last successful parse per thread.
///
/// Every mandate from one STS key carries the same header segment, so the hot path
/// compares bytes instead of decoding and parsing JSON. Parsing is a pure function of
/// the segment and the memo matches on the whole segment, so a hit returns exactly
/// what a fresh parse would; failed parses are never remembered.
pub(crate) fn parse_header_memo(segment: &str) -> Result<Header, AuthError> {
    let hit = LAST_HEADER.with_borrow(|last| match last {
        Some((seg, h)) if **seg == *segment => Some(h.clone()),
        _ => None,
    });
    if let Some(h) = hit {
        return Ok(h);
    }
    let h = parse_header(segment)?;
    if segment.len() <= MEMO_MAX_HEADER {
        LAST_HEADER.set(Some((segment.into(), h.clone())));
    }
    Ok(h)
}

pub(crate) fn parse_header(segment: &str) -> Result<Header, AuthError> {
    let bytes = decode_segment(segment)?;
    let text =
        std::str::from_utf8(&bytes).map_err(|_| AuthError::invalid(InvalidReason::Header))?;
    let mut de = serde_json::Deserializer::from_str(text);
    HeaderSeed
        .deserialize(&mut de)
        .and_then(|h| de.end().map(|()| h))
        .map_err(|_| AuthError::invalid(InvalidReason::Header))?
}

struct HeaderSeed;

impl<'de> DeserializeSeed<'de> for HeaderSeed {
    type Value = Result<Header, AuthError>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for HeaderSeed {
    type Value = Result<Header, AuthError>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JOSE header object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = SeenKeys::default();
        let mut alg: Option<HeaderAlg> = None;
        let mut kid: Option<String> = None;
        let mut verdict: Option<AuthError> = None;
        while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
            match &*k {
                "alg" => {
                    let name: String = map.next_value()?;
                    alg = Some(
                        Algorithm::from_name(&name).map_or(HeaderAlg::Other, HeaderAlg::Known),
                    );
                }
                "kid" => kid = Some(map.next_value()?),
                // RFC 7515 §4.1.11: a recipient must reject `crit` entries it does not
                // understand, and this verifier understands none. `b64` (RFC 7797)
                // changes what the signature covers.
                "crit" | "b64" => {
                    map.next_value_seed(StrictValue)?;
                    verdict.get_or_insert(AuthError::invalid(InvalidReason::Header));
                }
                // `jwk`, `jku`, `x5u`, `x5c` and the rest are read for well-formedness and
                // ignored: keys come only from the configured zone's keyset.
                _ => {
                    map.next_value_seed(StrictValue)?;
                }
            }
            seen.insert::<A::Error>(k)?;
        }
        if let Some(err) = verdict {
            return Ok(Err(err));
        }
        let alg = alg.ok_or_else(|| de::Error::missing_field("alg"))?;
        let Some(kid) = kid else {
            return Ok(Err(AuthError::invalid(InvalidReason::Header)));
        };
        Ok(Ok(Header { alg, kid }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::b64::B64;
    use base64::Engine as _;

    fn enc(s: &str) -> String {
        B64.encode(s)
    }

    #[test]
    fn debug_of_a_split_token_shows_no_token_bytes() {
        let token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz";
        let parts = split(token).unwrap();
        let out = format!("{parts:?} {parts:#?}");
        for segment in token.split('.') {
            assert!(!out.contains(segment), "{out}");
        }
        assert!(out.contains("<redacted 20 bytes>"), "{out}");
    }

    #[test]
    fn split_requires_three_non_empty_segments() {
        for bad in [
            "",
            "a",
            "a.b",
            "a.b.c.d",
            "a.b.c.d.e",
            ".b.c",
            "a..c",
            "a.b.",
        ] {
            assert_eq!(
                split(bad).unwrap_err().reason(),
                Some(InvalidReason::Malformed),
                "{bad:?}"
            );
        }
        let c = split("h.p.s").unwrap();
        assert_eq!(
            (c.header, c.payload, c.signature, c.signing_input),
            ("h", "p", "s", "h.p")
        );
    }

    /// The SIMD decoder against the `base64` crate's strict engine: every string of
    /// up to five symbols over an alphabet of edge cases, and longer strings that
    /// exercise the vector loop with one byte changed.
    #[test]
    fn simd_decoder_agrees_with_the_strict_engine() {
        let alpha = b"AQgw-_+/=. \x00\xffBa9";
        let mut n = 0;
        let mut buf = [0u8; 64];
        for len in 0..=5u32 {
            for mut k in 0..alpha.len().pow(len) {
                let mut v = Vec::new();
                for _ in 0..len {
                    v.push(alpha[k % alpha.len()]);
                    k /= alpha.len();
                }
                let Ok(s) = std::str::from_utf8(&v) else {
                    continue;
                };
                let want = B64.decode(s).ok();
                assert_eq!(decode_segment(s).ok(), want, "{s:?}");
                assert_eq!(decode_into(s, &mut buf).ok().map(<[u8]>::to_vec), want);
                n += 1;
            }
        }
        assert!(n > 500_000, "{n}");
        let data: Vec<u8> = (0..=255u8).cycle().take(1500).collect();
        for len in [0, 1, 2, 3, 31, 32, 33, 47, 48, 64, 95, 96, 97, 737, 1000] {
            let enc = B64.encode(&data[..len]);
            assert_eq!(decode_segment(&enc).unwrap(), &data[..len]);
            for i in 0..enc.len() {
                for c in [b'=', b'+', b'/', b'.', b' ', b'A', b'_'] {
                    let mut e = enc.clone().into_bytes();
                    e[i] = c;
                    let e = String::from_utf8(e).unwrap();
                    assert_eq!(decode_segment(&e).ok(), B64.decode(&e).ok(), "{e}");
                }
            }
        }
    }

    #[test]
    fn signature_buffer_bounds_the_decode() {
        let mut buf = [0u8; 64];
        assert_eq!(
            decode_into(&B64.encode([7u8; 64]), &mut buf).unwrap(),
            [7u8; 64]
        );
        assert_eq!(
            decode_into(&B64.encode([7u8; 65]), &mut buf)
                .unwrap_err()
                .reason(),
            Some(InvalidReason::Signature)
        );
    }

    #[test]
    fn header_parses_alg_and_kid() {
        let h = parse_header(&enc(r#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#)).unwrap();
        assert_eq!(h.alg, HeaderAlg::Known(Algorithm::ES256));
        assert_eq!(h.kid, "k1");
        let h = parse_header(&enc(r#"{"alg":"HS256","kid":"k1"}"#)).unwrap();
        assert_eq!(h.alg, HeaderAlg::Other);
        let h = parse_header(&enc(r#"{"alg":"nOnE","kid":"k1"}"#)).unwrap();
        assert_eq!(h.alg, HeaderAlg::Other);
    }

    #[test]
    fn header_memo_matches_a_fresh_parse() {
        let a = enc(r#"{"alg":"ES256","kid":"k1"}"#);
        let b = enc(r#"{"alg":"ES256","kid":"k2"}"#);
        let bad = enc(r#"{"alg":"ES256","kid":"k1","crit":[]}"#);
        for seg in [&a, &a, &b, &a, &bad, &bad, &b, &b] {
            assert_eq!(parse_header_memo(seg), parse_header(seg), "{seg}");
        }
        assert_eq!(parse_header_memo(&b).unwrap().kid, "k2");
        // A failure is not remembered in place of the last good header.
        assert!(parse_header_memo(&bad).is_err());
        assert_eq!(parse_header_memo(&b).unwrap().kid, "k2");
    }

    #[test]
    fn header_rejections() {
        for bad in [
            r#"{"alg":"ES256","kid":"k","crit":["exp"]}"#,
            r#"{"alg":"ES256","kid":"k","crit":[]}"#,
            r#"{"alg":"ES256","kid":"k","b64":false}"#,
            r#"{"alg":"ES256","alg":"ES256","kid":"k"}"#,
            r#"{"alg":"ES256","kid":"k","x":1,"x":2}"#,
            r#"{"alg":"ES256"}"#,
            r#"{"kid":"k"}"#,
            r#"{"alg":null,"kid":"k"}"#,
            r#"{"alg":256,"kid":"k"}"#,
            r#"{"alg":["ES256"],"kid":"k"}"#,
            r#"{"alg":"ES256","kid":7}"#,
            r#"["alg"]"#,
            "null",
            r#"{"alg":"ES256","kid":"k"} x"#,
        ] {
            assert_eq!(
                parse_header(&enc(bad)).unwrap_err().reason(),
                Some(InvalidReason::Header),
                "{bad}"
            );
        }
        assert!(
            parse_header(&B64.encode([0xff, 0xfe])).is_err(),
            "invalid utf-8"
        );
    }
}
