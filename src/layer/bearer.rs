//! Bearer token extraction from the `Authorization` header (RFC 6750 §2.1, RFC 7235).

use http::HeaderMap;
use http::header::AUTHORIZATION;

use crate::error::{AuthError, InvalidReason};

/// The bearer token of a request.
///
/// - No `Authorization` header, or a scheme other than `Bearer`, is
///   [`AuthError::MissingToken`]: the request carries no credentials of ours.
/// - More than one `Authorization` header is `invalid_token` (`malformed`): picking
///   one would let an intermediary and this service disagree on who is calling.
/// - The scheme matches case-insensitively and may be followed by one or more
///   spaces. The token itself must be non-empty visible ASCII with no inner
///   whitespace (trailing spaces are ignored); anything else, including non-UTF-8
///   bytes, is `invalid_token` (`malformed`).
///
/// Pure: it reads nothing but the headers, and never the query string.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<&str, AuthError> {
    checked(candidate(headers)?)
}

/// The bearer credential's bytes, scheme and surrounding spaces removed, with its
/// characters not yet checked: [`bearer`] without [`checked`].
///
/// For a lookup that only a valid token can satisfy (the mandate cache holds
/// verified tokens only, all base64url and dots), so the per-byte scan runs only
/// when the lookup misses.
pub(crate) fn candidate(headers: &HeaderMap) -> Result<&[u8], AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(AuthError::MissingToken);
    };
    if values.next().is_some() {
        return Err(malformed());
    }
    let bytes = value.as_bytes();
    let scheme_end = bytes.iter().position(|&b| b == b' ').unwrap_or(bytes.len());
    let (scheme, rest) = bytes.split_at(scheme_end);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(AuthError::MissingToken);
    }
    Ok(rest.trim_ascii_start().trim_ascii_end())
}

/// The rest of [`bearer`]'s checks on a [`candidate`]: non-empty, visible ASCII only.
pub(crate) fn checked(token: &[u8]) -> Result<&str, AuthError> {
    if token.is_empty() || !all_visible_ascii(token) {
        return Err(malformed());
    }
    // All bytes are visible ASCII, so this cannot fail.
    std::str::from_utf8(token).map_err(|_| malformed())
}

/// Every byte is visible ASCII (0x21..=0x7E). A fold without early exit, so the
/// compiler vectorises it: this runs on every request, over the whole token.
fn all_visible_ascii(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .fold(true, |ok, &b| ok & (b.wrapping_sub(0x21) < 0x5e))
}

const fn malformed() -> AuthError {
    AuthError::InvalidToken {
        reason: InvalidReason::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        }
        map
    }

    fn extract(values: &[&[u8]]) -> Result<String, AuthError> {
        bearer(&headers(values)).map(str::to_owned)
    }

    #[test]
    fn accepts_any_scheme_case_and_spaces() {
        for v in [
            &b"Bearer abc.def.ghi"[..],
            b"bearer abc.def.ghi",
            b"BEARER abc.def.ghi",
            b"bEaReR    abc.def.ghi",
            b"Bearer abc.def.ghi  ",
        ] {
            assert_eq!(extract(&[v]).as_deref(), Ok("abc.def.ghi"), "{v:?}");
        }
    }

    #[test]
    fn missing_or_foreign_scheme_is_missing_token() {
        assert_eq!(extract(&[]), Err(AuthError::MissingToken));
        for v in [
            &b"Basic dXNlcjpwYXNz"[..],
            b"Bearerabc",
            b"Bearer\tabc",
            b"Token abc",
            b"",
        ] {
            assert_eq!(extract(&[v]), Err(AuthError::MissingToken), "{v:?}");
        }
    }

    #[test]
    fn two_headers_are_rejected_not_first_wins() {
        assert_eq!(
            extract(&[b"Bearer a.b.c", b"Bearer d.e.f"]),
            Err(malformed())
        );
        assert_eq!(extract(&[b"Bearer a.b.c", b"Basic x"]), Err(malformed()));
    }

    #[test]
    fn empty_or_odd_tokens_are_malformed() {
        for v in [
            &b"Bearer"[..],
            b"Bearer ",
            b"Bearer    ",
            b"Bearer a b",
            b"Bearer a\tb",
            b"Bearer \xff\xfe",
            b"Bearer abc\x80",
        ] {
            assert_eq!(extract(&[v]), Err(malformed()), "{v:?}");
        }
    }

    #[test]
    fn visible_ascii_bounds() {
        assert!(all_visible_ascii(b"!~azAZ09-._"));
        for bad in [b' ', 0x7f, 0x20, 0x00, 0x80, 0xff] {
            assert!(!all_visible_ascii(&[b'a', bad, b'b']), "{bad:#x}");
        }
        assert!(all_visible_ascii(&[b'a'; 4096]));
    }
}
