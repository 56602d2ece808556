//! [`AuditKey`]: the `AUDIT_HMAC_KEY` that signs each event's `data`.

use std::fmt;

use aws_lc_rs::hmac;

use crate::error::ConfigError;

/// The key that signs audit events (`AUDIT_HMAC_KEY`): each entry's `sig` is the
/// lowercase hex HMAC-SHA256 of its exact `data` bytes, which Caracal's Audit service
/// checks before it stores the event. Never printed: `Debug` shows `AuditKey(<redacted>)`.
///
/// ```
/// use caracal_verifier::audit::AuditKey;
///
/// let key = AuditKey::from_hex(&"5e".repeat(32)).unwrap();
/// assert_eq!(format!("{key:?}"), "AuditKey(<redacted>)");
/// assert!(AuditKey::from_hex("abcd").is_err()); // under 32 bytes
/// ```
#[derive(Clone)]
pub struct AuditKey {
    key: hmac::Key,
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditKey(<redacted>)")
    }
}

impl AuditKey {
    /// The minimum key length, in bytes, as Caracal's services require.
    pub const MIN_LEN: usize = 32;

    /// A key from raw bytes; at least 32 of them.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ConfigError> {
        if bytes.len() < Self::MIN_LEN {
            return Err(ConfigError::invalid(
                "audit_key",
                format!("must be at least {} bytes", Self::MIN_LEN),
            ));
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        })
    }

    /// A key from hex, as `AUDIT_HMAC_KEY` holds it (Caracal decodes it as hex).
    /// Surrounding whitespace is ignored.
    pub fn from_hex(hex: &str) -> Result<Self, ConfigError> {
        let bytes =
            decode_hex(hex.trim()).ok_or_else(|| ConfigError::invalid("audit_key", "not hex"))?;
        Self::from_bytes(&bytes)
    }

    /// Lowercase hex HMAC-SHA256 of `data`.
    pub(crate) fn sign(&self, data: &[u8]) -> String {
        let tag = hmac::sign(&self.key, data);
        let mut out = String::with_capacity(64);
        for b in tag.as_ref() {
            super::wire::push_hex(&mut out, *b);
        }
        out
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_like_hmac_sha256_hex() {
        // RFC 4231 test case 2 uses a short key; this one checks the encoding of a
        // 32-byte key against an independent computation.
        let raw = [0x0bu8; 32];
        let key = AuditKey::from_bytes(&raw).unwrap();
        let expect = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &raw), b"{}");
        let hex: String = expect.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(key.sign(b"{}"), hex);
        assert_eq!(
            AuditKey::from_hex(&"0B".repeat(32)).unwrap().sign(b"{}"),
            hex
        );
    }

    #[test]
    fn short_or_non_hex_keys_are_refused_without_echo() {
        for bad in ["", "abc", &"zz".repeat(32), &"ab".repeat(31)] {
            let err = AuditKey::from_hex(bad).unwrap_err();
            assert!(bad.is_empty() || !err.to_string().contains(bad), "{err}");
        }
    }
}
