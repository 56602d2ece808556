//! The compact JWS form: three canonical base64url segments and a strict JOSE header.

use std::fmt;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};

use crate::error::{AuthError, InvalidReason};
use crate::json::{Key, SeenKeys, StrictValue};
use crate::jwk::Algorithm;

/// Unpadded base64url that rejects padding, the standard alphabet and
/// non-zero trailing bits, so each byte string has exactly one encoding.
pub(crate) const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(false),
);

/// A compact JWS split into its parts. Borrowed from the token.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Compact<'t> {
    pub(crate) header: &'t str,
    pub(crate) payload: &'t str,
    pub(crate) signature: &'t str,
    /// `header.payload`, the bytes the signature covers.
    pub(crate) signing_input: &'t str,
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
    let mut out = vec![0u8; decoded_len(segment.len()).ok_or(MALFORMED)?];
    decode_b64url(segment.as_bytes(), &mut out)?;
    Ok(out)
}

/// Decode a segment into a caller buffer (the signature), so the hot path does not allocate.
pub(crate) fn decode_into<'b>(segment: &str, buf: &'b mut [u8]) -> Result<&'b [u8], AuthError> {
    let n = decoded_len(segment.len()).ok_or(MALFORMED)?;
    // A segment that cannot fit the buffer is refused before any decoding.
    let out = buf
        .get_mut(..n)
        .ok_or(AuthError::invalid(InvalidReason::Signature))?;
    decode_b64url(segment.as_bytes(), out)?;
    Ok(out)
}

const MALFORMED: AuthError = AuthError::invalid(InvalidReason::Malformed);

/// The base64url alphabet's values; 0xff marks every other byte.
const B64URL_VALUES: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut i = 0;
    while i < 64 {
        t[alphabet[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Decoded length of an unpadded base64url string, or `None` for an impossible length.
fn decoded_len(len: usize) -> Option<usize> {
    match len % 4 {
        0 => Some(len / 4 * 3),
        2 => Some(len / 4 * 3 + 1),
        3 => Some(len / 4 * 3 + 2),
        _ => None,
    }
}

/// Strict unpadded base64url (RFC 7515 §2): the URL-safe alphabet only, no padding,
/// no whitespace, and zero trailing bits, so each byte string has exactly one
/// encoding. `out` must be exactly `decoded_len(input.len())` long. Table-driven,
/// four characters at a time: this runs over every token on the cold path.
fn decode_b64url(input: &[u8], out: &mut [u8]) -> Result<(), AuthError> {
    let v = |c: u8| u32::from(B64URL_VALUES[c as usize]);
    let mut chunks = input.chunks_exact(4);
    let mut o = out.chunks_exact_mut(3);
    let mut bad = 0u32;
    for (c, dst) in chunks.by_ref().zip(o.by_ref()) {
        let (a, b, cc, d) = (v(c[0]), v(c[1]), v(c[2]), v(c[3]));
        bad |= a | b | cc | d;
        let n = (a << 18) | (b << 12) | (cc << 6) | d;
        dst[0] = (n >> 16) as u8;
        dst[1] = (n >> 8) as u8;
        dst[2] = n as u8;
    }
    let rest = o.into_remainder();
    match *chunks.remainder() {
        [] => {}
        [a, b] => {
            let (a, b) = (v(a), v(b));
            // Two characters carry one byte; the last four bits must be zero.
            bad |= a | b | ((b & 0x0f) << 8);
            rest[0] = ((a << 2) | (b >> 4)) as u8;
        }
        [a, b, c] => {
            let (a, b, c) = (v(a), v(b), v(c));
            // Three characters carry two bytes; the last two bits must be zero.
            bad |= a | b | c | ((c & 0x03) << 8);
            rest[0] = ((a << 2) | (b >> 4)) as u8;
            rest[1] = ((b << 4) | (c >> 2)) as u8;
        }
        _ => return Err(MALFORMED),
    }
    // Any invalid character set 0xff's high bit; any stray trailing bit set bit 8+.
    if bad & !0x3f != 0 {
        return Err(MALFORMED);
    }
    Ok(())
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
    use base64::Engine as _;

    fn enc(s: &str) -> String {
        B64.encode(s)
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

    #[test]
    fn table_decoder_agrees_with_the_base64_crate() {
        // Every length 0..=64, random bytes, plus every single-character mutation of
        // a few encodings: both decoders must accept and reject exactly the same.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for len in 0..=64usize {
            for _ in 0..20 {
                let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                let enc = B64.encode(&bytes);
                assert_eq!(decode_segment(&enc).ok(), Some(bytes.clone()), "{enc}");
                let mut chars = enc.into_bytes();
                if chars.is_empty() {
                    continue;
                }
                for _ in 0..8 {
                    let i = (next() as usize) % chars.len();
                    let old = chars[i];
                    chars[i] = next() as u8;
                    if let Ok(s) = std::str::from_utf8(&chars) {
                        assert_eq!(decode_segment(s).ok(), B64.decode(s).ok(), "{s:?}");
                    }
                    chars[i] = old;
                }
            }
        }
        for bad in ["A", "AAAAA", "QR", "QQ=", "QQ==", "Q Q", "+/", "AB\n"] {
            assert!(decode_segment(bad).is_err(), "{bad:?}");
        }
        let mut buf = [0u8; 4];
        assert!(
            decode_into("AAAAAAAA", &mut buf).is_err(),
            "six bytes do not fit four"
        );
        assert_eq!(decode_into("AAAA", &mut buf).unwrap(), [0, 0, 0]);
    }

    #[test]
    fn base64_is_canonical() {
        assert_eq!(B64.decode("QQ").unwrap(), b"A");
        assert!(B64.decode("QR").is_err(), "non-zero trailing bits");
        assert!(B64.decode("QQ==").is_err(), "padding");
        assert!(B64.decode("+/").is_err(), "standard alphabet");
        assert!(B64.decode("Q Q").is_err(), "whitespace");
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
