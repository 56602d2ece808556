//! Stream ids and the shapes of the Redis replies the feed reads (RESP2 and RESP3).

use std::fmt;

use ::redis::Value;

/// A stream entry id, `<ms>-<seq>`. Ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct StreamId {
    pub(crate) ms: u64,
    pub(crate) seq: u64,
}

impl StreamId {
    pub(crate) const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    /// The first id of millisecond `ms`.
    pub(crate) const fn at(ms: u64) -> Self {
        StreamId { ms, seq: 0 }
    }

    /// Parse `<ms>-<seq>` (a bare `<ms>` means sequence 0).
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return None;
        }
        Some(StreamId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// A reply that is not the shape the command documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unexpected(pub(crate) &'static str);

impl fmt::Display for Unexpected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unexpected reply to {}", self.0)
    }
}

/// A string-like value (bulk, simple, verbatim), if it is UTF-8.
pub(crate) fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        Value::VerbatimString { text, .. } => Some(text),
        Value::Okay => Some("OK"),
        Value::Attribute { data, .. } => text(data),
        _ => None,
    }
}

/// An integer, or a string holding one.
pub(crate) fn integer(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => text(v)?.parse().ok(),
    }
}

fn array(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(items) | Value::Set(items) => Some(items),
        Value::Attribute { data, .. } => array(data),
        _ => None,
    }
}

/// Key/value pairs: a RESP3 map, or a RESP2 flat array of alternating keys and values.
pub(crate) fn pairs(v: &Value) -> Option<Vec<(&Value, &Value)>> {
    match v {
        Value::Map(m) => Some(m.iter().map(|(k, v)| (k, v)).collect()),
        Value::Attribute { data, .. } => pairs(data),
        _ => {
            let items = array(v)?;
            if items.len() % 2 != 0 {
                return None;
            }
            Some(items.chunks_exact(2).map(|p| (&p[0], &p[1])).collect())
        }
    }
}

/// One stream entry as XREAD returns it: its id and its raw field list.
pub(crate) struct RawEntry<'a> {
    pub(crate) id: Option<StreamId>,
    pub(crate) fields: &'a Value,
}

/// The reply to `XREAD`: for each stream with entries, its name and entries. A nil
/// reply (nothing new before the block timeout) is an empty list.
pub(crate) fn xread(v: &Value) -> Result<Vec<(&str, Vec<RawEntry<'_>>)>, Unexpected> {
    const CMD: Unexpected = Unexpected("XREAD");
    let streams: Vec<(&Value, &Value)> = match v {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
        _ => array(v)
            .ok_or(CMD)?
            .iter()
            .map(|s| match array(s) {
                Some([name, entries]) => Ok((name, entries)),
                _ => Err(CMD),
            })
            .collect::<Result<_, _>>()?,
    };
    streams
        .into_iter()
        .map(|(name, entries)| {
            let name = text(name).ok_or(CMD)?;
            let entries = array(entries)
                .ok_or(CMD)?
                .iter()
                .map(|e| match array(e) {
                    Some([id, fields]) => Ok(RawEntry {
                        id: text(id).and_then(StreamId::parse),
                        fields,
                    }),
                    _ => Err(CMD),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((name, entries))
        })
        .collect()
}

/// Why an entry's field list could not be read as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldsError {
    /// Not an even list of strings (or a deleted entry's nil).
    Malformed,
    /// A name or value is not UTF-8.
    NotUtf8,
}

impl FieldsError {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            FieldsError::Malformed => "malformed entry",
            FieldsError::NotUtf8 => "non-utf-8 field",
        }
    }
}

/// An entry's fields as `(name, value)` strings, in stream order.
pub(crate) fn fields(v: &Value) -> Result<Vec<(&str, &str)>, FieldsError> {
    fn field(x: &Value) -> Result<&str, FieldsError> {
        match x {
            Value::BulkString(_)
            | Value::SimpleString(_)
            | Value::VerbatimString { .. }
            | Value::Okay => text(x).ok_or(FieldsError::NotUtf8),
            _ => Err(FieldsError::Malformed),
        }
    }
    pairs(v)
        .ok_or(FieldsError::Malformed)?
        .into_iter()
        .map(|(k, v)| Ok((field(k)?, field(v)?)))
        .collect()
}

/// `run_id` from the reply to `INFO server`.
pub(crate) fn run_id(v: &Value) -> Option<&str> {
    text(v)?
        .lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(str::trim)
        .filter(|id| !id.is_empty())
}

/// Milliseconds since the Unix epoch from the reply to `TIME`.
pub(crate) fn time_ms(v: &Value) -> Option<u64> {
    match array(v)? {
        [secs, micros] => Some(
            integer(secs)?
                .checked_mul(1000)?
                .checked_add(integer(micros)? / 1000)?,
        ),
        _ => None,
    }
}

/// `last-generated-id` from the reply to `XINFO STREAM`.
pub(crate) fn last_generated_id(v: &Value) -> Option<StreamId> {
    pairs(v)?
        .into_iter()
        .find(|(k, _)| text(k) == Some("last-generated-id"))
        .and_then(|(_, v)| StreamId::parse(text(v)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn stream_ids_parse_and_order() {
        assert_eq!(
            StreamId::parse("1700000000000-3"),
            Some(StreamId {
                ms: 1_700_000_000_000,
                seq: 3
            })
        );
        assert_eq!(StreamId::parse("5"), Some(StreamId::at(5)));
        for bad in ["", "-", "1-", "-1", "a-1", "1-b", "1-2-3", "+1-0"] {
            assert_eq!(StreamId::parse(bad), None, "{bad:?}");
        }
        assert!(StreamId { ms: 2, seq: 0 } > StreamId { ms: 1, seq: 9 });
        assert!(StreamId { ms: 2, seq: 1 } > StreamId { ms: 2, seq: 0 });
        assert_eq!(StreamId { ms: 7, seq: 1 }.to_string(), "7-1");
    }

    #[test]
    fn xread_resp2_and_resp3_shapes() {
        let entry = Value::Array(vec![
            bulk("1-1"),
            Value::Array(vec![bulk("zone_id"), bulk("z"), bulk("sid"), bulk("s")]),
        ]);
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk("caracal.sessions.revoke"),
            Value::Array(vec![entry.clone()]),
        ])]);
        let resp3 = Value::Map(vec![(
            bulk("caracal.sessions.revoke"),
            Value::Array(vec![entry]),
        )]);
        for reply in [resp2, resp3] {
            let streams = xread(&reply).unwrap();
            assert_eq!(streams.len(), 1);
            assert_eq!(streams[0].0, "caracal.sessions.revoke");
            let e = &streams[0].1[0];
            assert_eq!(e.id, Some(StreamId { ms: 1, seq: 1 }));
            assert_eq!(fields(e.fields).unwrap(), [("zone_id", "z"), ("sid", "s")]);
        }
        assert!(xread(&Value::Nil).unwrap().is_empty());
        assert!(xread(&Value::Int(3)).is_err());
    }

    #[test]
    fn odd_or_binary_fields_are_refused() {
        assert_eq!(
            fields(&Value::Array(vec![bulk("a")])),
            Err(FieldsError::Malformed)
        );
        assert_eq!(fields(&Value::Nil), Err(FieldsError::Malformed));
        assert_eq!(
            fields(&Value::Array(vec![
                bulk("a"),
                Value::BulkString(vec![0xff])
            ])),
            Err(FieldsError::NotUtf8)
        );
    }

    #[test]
    fn info_time_and_xinfo() {
        let info = bulk("# Server\r\nredis_version:7.0.15\r\nrun_id:abc123\r\ntcp_port:6379\r\n");
        assert_eq!(run_id(&info), Some("abc123"));
        assert_eq!(
            time_ms(&Value::Array(vec![bulk("1700000000"), bulk("123456")])),
            Some(1_700_000_000_123)
        );
        let xinfo = Value::Array(vec![
            bulk("length"),
            Value::Int(2),
            bulk("last-generated-id"),
            bulk("9-2"),
        ]);
        assert_eq!(last_generated_id(&xinfo), Some(StreamId { ms: 9, seq: 2 }));
    }
}
