//! The base64url engines: one canonical encoding per byte string.

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// Unpadded base64url that rejects padding, the standard alphabet and
/// non-zero trailing bits, so each byte string has exactly one encoding.
pub(crate) const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(false),
);

/// The decoder of the token path: SIMD, with the same strict rules as [`B64`]
/// (the token unit tests compare the two).
pub(crate) const SIMD_B64: base64_simd::Base64 = base64_simd::URL_SAFE_NO_PAD;

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn base64_is_canonical() {
        assert_eq!(B64.decode("QQ").unwrap(), b"A");
        assert!(B64.decode("QR").is_err(), "non-zero trailing bits");
        assert!(B64.decode("QQ==").is_err(), "padding");
        assert!(B64.decode("+/").is_err(), "standard alphabet");
        assert!(B64.decode("Q Q").is_err(), "whitespace");
    }
}
