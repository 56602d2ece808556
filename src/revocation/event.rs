//! Revocation and delegation-epoch events, and the `_sig` stream signature.
//!
//! Caracal publishes flat field maps on Redis Streams. Each message may carry `_sig`:
//! the lowercase hex HMAC-SHA256, under `STREAMS_HMAC_KEY`, of the canonical form
//! `"{stream}\n"` followed by `"{field}={value}\n"` for every field except `_sig`,
//! sorted by field name.
//!
//! ```
//! use caracal_verifier::revocation::{RevocationEvent, StreamKey, sign_fields};
//!
//! let key = StreamKey::from_hex(&"01".repeat(32)).unwrap();
//! let mut fields = vec![
//!     ("zone_id".to_string(), "zone-1".to_string()),
//!     ("session_id".to_string(), "authority-record-1".to_string()),
//!     ("reason".to_string(), "grant_revoked".to_string()),
//! ];
//! let sig = sign_fields(&key, "caracal.sessions.revoke", &fields);
//! fields.push(("_sig".to_string(), sig));
//! let event = RevocationEvent::parse_revocation("caracal.sessions.revoke", &fields, Some(&key)).unwrap();
//! assert_eq!(event.anchors(), ["authority-record-1".to_string()]);
//! ```

use std::fmt;

use aws_lc_rs::hmac;

use crate::error::ConfigError;

/// The default revocation stream.
pub const SESSIONS_REVOKE_STREAM: &str = "caracal.sessions.revoke";
/// The default delegation-epoch stream.
pub const DELEGATIONS_INVALIDATE_STREAM: &str = "caracal.delegations.invalidate";

/// The event fields that name a revocation anchor.
pub const ANCHOR_FIELDS: [&str; 5] = [
    "session_id",
    "sid",
    "root_sid",
    "agent_session_id",
    "delegation_edge_id",
];

/// The HMAC key that signs stream messages (`STREAMS_HMAC_KEY`). Its `Debug` is redacted.
#[derive(Clone)]
pub struct StreamKey {
    key: hmac::Key,
}

impl fmt::Debug for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StreamKey(<redacted>)")
    }
}

impl StreamKey {
    /// The minimum key length, in bytes.
    pub const MIN_LEN: usize = 32;

    /// A key from raw bytes; at least 32 of them.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ConfigError> {
        if bytes.len() < Self::MIN_LEN {
            return Err(ConfigError::invalid(
                "stream_key",
                format!("must be at least {} bytes", Self::MIN_LEN),
            ));
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        })
    }

    /// A key from hex, as `STREAMS_HMAC_KEY` holds it.
    pub fn from_hex(hex: &str) -> Result<Self, ConfigError> {
        let bytes =
            decode_hex(hex.trim()).ok_or_else(|| ConfigError::invalid("stream_key", "not hex"))?;
        Self::from_bytes(&bytes)
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

/// The canonical signing form of a message: the stream name and each field except
/// `_sig`, sorted by name. Fields whose value is `None` (JSON `null` at the
/// publisher) are skipped.
pub fn canonical_form<K: AsRef<str>, V: AsRef<str>>(
    stream: &str,
    fields: &[(K, Option<V>)],
) -> String {
    let mut sorted: Vec<(&str, &str)> = fields
        .iter()
        .filter_map(|(k, v)| Some((k.as_ref(), v.as_ref()?.as_ref())))
        .filter(|(k, _)| *k != "_sig")
        .collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut out = String::with_capacity(
        stream.len()
            + 1
            + sorted
                .iter()
                .map(|(k, v)| k.len() + v.len() + 2)
                .sum::<usize>(),
    );
    out.push_str(stream);
    out.push('\n');
    for (k, v) in sorted {
        out.push_str(k);
        out.push('=');
        out.push_str(v);
        out.push('\n');
    }
    out
}

fn present<K: AsRef<str>, V: AsRef<str>>(fields: &[(K, V)]) -> Vec<(&str, Option<&str>)> {
    fields
        .iter()
        .map(|(k, v)| (k.as_ref(), Some(v.as_ref())))
        .collect()
}

/// Sign a message's fields: the hex `_sig` value a publisher attaches.
pub fn sign_fields<K: AsRef<str>, V: AsRef<str>>(
    key: &StreamKey,
    stream: &str,
    fields: &[(K, V)],
) -> String {
    let tag = hmac::sign(
        &key.key,
        canonical_form(stream, &present(fields)).as_bytes(),
    );
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Check a message's `_sig` in constant time.
pub fn verify_fields<K: AsRef<str>, V: AsRef<str>>(
    key: &StreamKey,
    stream: &str,
    fields: &[(K, V)],
) -> Result<(), EventError> {
    let sig = fields
        .iter()
        .find(|(k, _)| k.as_ref() == "_sig")
        .map(|(_, v)| v.as_ref())
        .ok_or(EventError::Unsigned)?;
    // The schema fixes lowercase hex.
    if sig.bytes().any(|c| !matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(EventError::BadSignature);
    }
    let tag = decode_hex(sig).ok_or(EventError::BadSignature)?;
    hmac::verify(
        &key.key,
        canonical_form(stream, &present(fields)).as_bytes(),
        &tag,
    )
    .map_err(|_| EventError::BadSignature)
}

/// Why a stream message was dropped.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// A stream key is configured and the message has no `_sig`.
    #[error("unsigned message")]
    Unsigned,
    /// `_sig` does not match.
    #[error("signature mismatch")]
    BadSignature,
    /// A field name appears twice.
    #[error("duplicate field")]
    DuplicateField,
    /// No `zone_id`.
    #[error("missing zone_id")]
    MissingZone,
    /// A revocation with no anchor field.
    #[error("no revocation anchor")]
    NoAnchor,
    /// An epoch that is not a decimal integer.
    #[error("malformed epoch")]
    BadEpoch,
    /// A field name outside the contract's character set (`[A-Za-z0-9_.-]`, 1 to 64
    /// bytes). `=` or a line break in a name would let the canonical form be re-split.
    #[error("field name outside the contract's character set")]
    BadFieldName,
    /// A field value containing `\r` or `\n`, which would let the canonical form be
    /// re-split into other fields.
    #[error("line break in a field value")]
    LineBreakInValue,
    /// More fields than the feed's bound.
    #[error("too many fields")]
    TooManyFields,
    /// More bytes (names and values together) than the feed's bound.
    #[error("entry too large")]
    TooLarge,
}

/// The longest field name accepted.
pub const MAX_FIELD_NAME_BYTES: usize = 64;

/// Whether `name` is in the contract's field-name character set: 1 to 64 bytes of
/// `[A-Za-z0-9_.-]`. Every contract field (`zone_id`, `session_id`, `_sig`, …) is.
pub fn is_valid_field_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_FIELD_NAME_BYTES
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Reject a field list whose canonical form could be read as other fields: a name
/// outside the character set, a value with a line break, or a repeated name. Linear
/// in the number of fields.
fn check_shape<K: AsRef<str>, V: AsRef<str>>(fields: &[(K, V)]) -> Result<(), EventError> {
    for (k, v) in fields {
        if !is_valid_field_name(k.as_ref()) {
            return Err(EventError::BadFieldName);
        }
        if v.as_ref().bytes().any(|c| c == b'\r' || c == b'\n') {
            return Err(EventError::LineBreakInValue);
        }
    }
    if fields.len() <= 16 {
        for (i, (k, _)) in fields.iter().enumerate() {
            if fields[..i].iter().any(|(o, _)| o.as_ref() == k.as_ref()) {
                return Err(EventError::DuplicateField);
            }
        }
    } else {
        let mut seen = std::collections::HashSet::with_capacity(fields.len());
        if !fields.iter().all(|(k, _)| seen.insert(k.as_ref())) {
            return Err(EventError::DuplicateField);
        }
    }
    Ok(())
}

/// A parsed, authenticated event.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevocationEvent {
    /// Anchors revoked (`caracal.sessions.revoke`).
    Revoke {
        /// The zone.
        zone_id: String,
        /// Every anchor id named by the event.
        anchors: Vec<String>,
        /// The reason, when given.
        reason: Option<String>,
    },
    /// A zone's delegation graph moved to a new epoch (`caracal.delegations.invalidate`).
    Epoch {
        /// The zone.
        zone_id: String,
        /// The new epoch.
        epoch: u64,
        /// The edge that changed, when given.
        edge_id: Option<String>,
    },
}

fn check_and_get<'a, K: AsRef<str>, V: AsRef<str>>(
    stream: &str,
    fields: &'a [(K, V)],
    key: Option<&StreamKey>,
) -> Result<impl Fn(&str) -> Option<&'a str>, EventError> {
    check_shape(fields)?;
    if let Some(key) = key {
        verify_fields(key, stream, fields)?;
    }
    Ok(move |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k.as_ref() == name)
            .map(|(_, v)| v.as_ref())
            .filter(|v| !v.is_empty())
    })
}

impl RevocationEvent {
    /// Parse a revocation message. With `key`, the message must carry a valid `_sig`.
    pub fn parse_revocation<K: AsRef<str>, V: AsRef<str>>(
        stream: &str,
        fields: &[(K, V)],
        key: Option<&StreamKey>,
    ) -> Result<Self, EventError> {
        let get = check_and_get(stream, fields, key)?;
        let zone_id = get("zone_id").ok_or(EventError::MissingZone)?.to_owned();
        let mut anchors: Vec<String> = Vec::new();
        for name in ANCHOR_FIELDS {
            if let Some(v) = get(name).filter(|v| !anchors.iter().any(|a| a == v)) {
                anchors.push(v.to_owned());
            }
        }
        if anchors.is_empty() {
            return Err(EventError::NoAnchor);
        }
        Ok(RevocationEvent::Revoke {
            zone_id,
            anchors,
            reason: get("reason").map(str::to_owned),
        })
    }

    /// Parse a delegation-epoch message. With `key`, the message must carry a valid `_sig`.
    pub fn parse_epoch<K: AsRef<str>, V: AsRef<str>>(
        stream: &str,
        fields: &[(K, V)],
        key: Option<&StreamKey>,
    ) -> Result<Self, EventError> {
        let get = check_and_get(stream, fields, key)?;
        let zone_id = get("zone_id").ok_or(EventError::MissingZone)?.to_owned();
        let raw = get("epoch").ok_or(EventError::BadEpoch)?;
        if raw.len() > 20 || !raw.bytes().all(|c| c.is_ascii_digit()) {
            return Err(EventError::BadEpoch);
        }
        let epoch = raw.parse::<u64>().map_err(|_| EventError::BadEpoch)?;
        Ok(RevocationEvent::Epoch {
            zone_id,
            epoch,
            edge_id: get("edge_id").map(str::to_owned),
        })
    }

    /// The anchors a revocation names (empty for an epoch event).
    pub fn anchors(&self) -> &[String] {
        match self {
            RevocationEvent::Revoke { anchors, .. } => anchors,
            RevocationEvent::Epoch { .. } => &[],
        }
    }

    /// The event's zone.
    pub fn zone_id(&self) -> &str {
        match self {
            RevocationEvent::Revoke { zone_id, .. } | RevocationEvent::Epoch { zone_id, .. } => {
                zone_id
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// The contract's `stream-sig-canonicalize.vectors.json`, restated.
    #[test]
    fn canonical_vectors() {
        let key = StreamKey::from_hex(KEY).unwrap();
        type Fields<'a> = &'a [(&'a str, Option<&'a str>)];
        let cases: [(Fields<'_>, &str, &str); 4] = [
            (
                &[("action", Some("transfer")), ("amount", Some("100"))],
                "audit:events\naction=transfer\namount=100\n",
                "c06ccc579e026c31a97a04f203981b236a3c88041712e9b46242e8762da23d75",
            ),
            (
                &[("action", Some("transfer")), ("metadata", None)],
                "audit:events\naction=transfer\n",
                "93c82e377fc1ff7f1430549aa20cd20971150173b5996308ab84cb48d6f2683d",
            ),
            (
                &[("action", Some("transfer")), ("_sig", Some("deadbeef"))],
                "audit:events\naction=transfer\n",
                "93c82e377fc1ff7f1430549aa20cd20971150173b5996308ab84cb48d6f2683d",
            ),
            (
                &[
                    ("active", Some("true")),
                    ("count", Some("0")),
                    ("name", Some("")),
                ],
                "audit:events\nactive=true\ncount=0\nname=\n",
                "dd36b85d880107b52155410569f95436acd8b5a656bba83e37c4b0196fb32ae1",
            ),
        ];
        for (fields, canonical, sig) in cases {
            assert_eq!(canonical_form("audit:events", fields), canonical);
            let tag = hmac::sign(&key.key, canonical.as_bytes());
            let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, sig);
            let present: Vec<(&str, &str)> = fields
                .iter()
                .filter_map(|(k, v)| Some((*k, (*v)?)))
                .filter(|(k, _)| *k != "_sig")
                .chain([("_sig", sig)])
                .collect();
            verify_fields(&key, "audit:events", &present).unwrap();
        }
    }

    fn fixture() -> Vec<(String, String)> {
        [
            ("zone_id", "zone-1"),
            ("session_id", "authority-record-1"),
            ("reason", "grant_revoked"),
            ("grant_id", "grant-1"),
            ("outbox_id", "outbox-1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn signed_revocation_round_trips_and_tampering_fails() {
        let key = StreamKey::from_hex(KEY).unwrap();
        let mut f = fixture();
        let sig = sign_fields(&key, SESSIONS_REVOKE_STREAM, &f);
        f.push(("_sig".into(), sig));
        let ev = RevocationEvent::parse_revocation(SESSIONS_REVOKE_STREAM, &f, Some(&key)).unwrap();
        assert_eq!(ev.anchors(), ["authority-record-1"]);
        assert_eq!(ev.zone_id(), "zone-1");

        let mut tampered = f.clone();
        tampered[1].1 = "authority-record-2".into();
        assert_eq!(
            RevocationEvent::parse_revocation(SESSIONS_REVOKE_STREAM, &tampered, Some(&key)),
            Err(EventError::BadSignature)
        );
        // Signed for another stream.
        assert_eq!(
            RevocationEvent::parse_revocation("other", &f, Some(&key)),
            Err(EventError::BadSignature)
        );
        let mut upper = f.clone();
        upper.last_mut().unwrap().1 = upper.last().unwrap().1.to_uppercase();
        assert_eq!(
            RevocationEvent::parse_revocation(SESSIONS_REVOKE_STREAM, &upper, Some(&key)),
            Err(EventError::BadSignature)
        );
        // The contract fixture's placeholder `_sig` does not verify.
        let mut placeholder = fixture();
        placeholder.push(("_sig".into(), "0123456789abcdef".into()));
        assert_eq!(
            RevocationEvent::parse_revocation(SESSIONS_REVOKE_STREAM, &placeholder, Some(&key)),
            Err(EventError::BadSignature)
        );
        assert_eq!(
            RevocationEvent::parse_revocation(SESSIONS_REVOKE_STREAM, &fixture(), Some(&key)),
            Err(EventError::Unsigned)
        );
    }

    #[test]
    fn anchors_and_epochs() {
        let f = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let ev = RevocationEvent::parse_revocation(
            SESSIONS_REVOKE_STREAM,
            &f(&[
                ("zone_id", "z"),
                ("sid", "s"),
                ("root_sid", "r"),
                ("agent_session_id", "a"),
                ("delegation_edge_id", "d"),
                ("session_id", "s"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(ev.anchors(), ["s", "r", "a", "d"]);
        assert_eq!(
            RevocationEvent::parse_revocation(
                SESSIONS_REVOKE_STREAM,
                &f(&[("zone_id", "z"), ("reason", "x")]),
                None
            ),
            Err(EventError::NoAnchor)
        );
        assert_eq!(
            RevocationEvent::parse_revocation(SESSIONS_REVOKE_STREAM, &f(&[("sid", "s")]), None),
            Err(EventError::MissingZone)
        );
        assert_eq!(
            RevocationEvent::parse_revocation(
                SESSIONS_REVOKE_STREAM,
                &f(&[("zone_id", "z"), ("sid", "s"), ("sid", "t")]),
                None
            ),
            Err(EventError::DuplicateField)
        );
        let ep = RevocationEvent::parse_epoch(
            DELEGATIONS_INVALIDATE_STREAM,
            &f(&[
                ("zone_id", "z"),
                ("epoch", "42"),
                ("event", "edge_revoked"),
                ("edge_id", "e"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(
            ep,
            RevocationEvent::Epoch {
                zone_id: "z".into(),
                epoch: 42,
                edge_id: Some("e".into())
            }
        );
        for bad in [
            "",
            "-1",
            "+1",
            "1.0",
            "1e3",
            " 1",
            "99999999999999999999999",
        ] {
            assert_eq!(
                RevocationEvent::parse_epoch(
                    DELEGATIONS_INVALIDATE_STREAM,
                    &f(&[("zone_id", "z"), ("epoch", bad)]),
                    None
                ),
                Err(EventError::BadEpoch),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn messages_that_could_be_re_split_are_dropped_even_when_signed() {
        let key = StreamKey::from_hex(KEY).unwrap();
        let signed = |pairs: &[(&str, &str)]| {
            let mut f: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let sig = sign_fields(&key, SESSIONS_REVOKE_STREAM, &f);
            f.push(("_sig".into(), sig));
            RevocationEvent::parse_revocation(SESSIONS_REVOKE_STREAM, &f, Some(&key))
        };
        // A value with a line break reads, once canonicalised, as extra fields.
        assert_eq!(
            signed(&[("zone_id", "z"), ("sid", "s"), ("reason", "x\nsid=victim")]),
            Err(EventError::LineBreakInValue)
        );
        assert_eq!(
            signed(&[("zone_id", "z"), ("sid", "s\r")]),
            Err(EventError::LineBreakInValue)
        );
        for name in [
            "sid=victim",
            "a\nb",
            "",
            "caf\u{e9}",
            "a b",
            &"n".repeat(65),
        ] {
            assert_eq!(
                signed(&[("zone_id", "z"), ("sid", "s"), (name, "v")]),
                Err(EventError::BadFieldName),
                "{name:?}"
            );
        }
        assert!(signed(&[("zone_id", "z"), ("sid", "s"), ("x-Trace.id_2", "v")]).is_ok());
        // Without a key the same shapes are refused too.
        assert_eq!(
            RevocationEvent::parse_revocation(
                SESSIONS_REVOKE_STREAM,
                &[("zone_id", "z"), ("sid", "s\nroot_sid=r")],
                None
            ),
            Err(EventError::LineBreakInValue)
        );
    }

    #[test]
    fn duplicate_detection_is_linear_for_long_field_lists() {
        let names: Vec<String> = (0..10_000).map(|i| format!("f{i}")).collect();
        let mut fields: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        fields.push(("zone_id", "z"));
        fields.push(("sid", "s"));
        assert!(RevocationEvent::parse_revocation(SESSIONS_REVOKE_STREAM, &fields, None).is_ok());
        fields.push(("f9999", "again"));
        assert_eq!(
            RevocationEvent::parse_revocation(SESSIONS_REVOKE_STREAM, &fields, None),
            Err(EventError::DuplicateField)
        );
    }

    #[test]
    fn short_or_bad_keys_are_refused() {
        assert!(StreamKey::from_hex(&"ab".repeat(31)).is_err());
        assert!(StreamKey::from_hex("zz").is_err());
        assert!(StreamKey::from_hex(&"ab".repeat(32)).is_ok());
        assert_eq!(
            format!("{:?}", StreamKey::from_hex(KEY).unwrap()),
            "StreamKey(<redacted>)"
        );
    }
}
