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
    pub(crate) id: StreamId,
    pub(crate) fields: FieldList<'a>,
}

/// An entry's field list, as the `redis` crate parsed it or as slices of a reply
/// read by [`super::wire`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum FieldList<'a> {
    Value(&'a Value),
    /// Names and values alternating; `None` for a nil list (a deleted entry).
    Wire(Option<&'a [&'a [u8]]>),
}

/// A list of `[id, fields]` entries, as `XRANGE`, `XREAD` and the screening script
/// return them.
pub(crate) fn entries(v: &Value) -> Result<Vec<RawEntry<'_>>, Unexpected> {
    const CMD: Unexpected = Unexpected("stream entries");
    if matches!(v, Value::Nil) {
        return Ok(Vec::new());
    }
    array(v)
        .ok_or(CMD)?
        .iter()
        .map(|e| match array(e) {
            Some([id, fields]) => Ok(RawEntry {
                // Redis generates well-formed ids; anything else is not a stream reply.
                id: text(id).and_then(StreamId::parse).ok_or(CMD)?,
                fields: FieldList::Value(fields),
            }),
            _ => Err(CMD),
        })
        .collect()
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
        .map(|(name, list)| Ok((text(name).ok_or(CMD)?, entries(list).map_err(|_| CMD)?)))
        .collect()
}

/// Why an entry's field list was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldsError {
    /// Not an even list of strings (or a deleted entry's nil).
    Malformed,
    /// A name or value is not UTF-8.
    NotUtf8,
    /// More fields than the bound.
    TooManyFields,
    /// More bytes than the bound, or stripped as such by the screening script.
    TooLarge,
}

impl FieldsError {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            FieldsError::Malformed => "malformed entry",
            FieldsError::NotUtf8 => "non-utf-8 field",
            FieldsError::TooManyFields => "too many fields",
            FieldsError::TooLarge => "entry too large",
        }
    }
}

/// The marker the screening script leaves in place of an oversized entry's fields.
pub(crate) const OVERSIZE_MARKER: &str = "oversize";

/// An entry's fields as `(name, value)` strings, in stream order, if the entry holds
/// at most `max_fields` fields and `max_bytes` bytes of names and values. The bounds
/// are checked before anything is built, and each step is linear.
pub(crate) fn fields<'a>(
    list: FieldList<'a>,
    max_fields: usize,
    max_bytes: usize,
) -> Result<Vec<(&'a str, &'a str)>, FieldsError> {
    match list {
        FieldList::Value(v) => value_fields(v, max_fields, max_bytes),
        FieldList::Wire(None) => Err(FieldsError::Malformed),
        // The screening script's marker never comes this way: only plain reads do.
        FieldList::Wire(Some(raw)) => checked_fields(
            raw.iter().map(|f| Some(*f)),
            raw.len(),
            max_fields,
            max_bytes,
        ),
    }
}

fn value_fields(
    v: &Value,
    max_fields: usize,
    max_bytes: usize,
) -> Result<Vec<(&str, &str)>, FieldsError> {
    /// A string's bytes; `None` for anything that is not a string.
    fn bytes(x: &Value) -> Option<&[u8]> {
        match x {
            Value::BulkString(b) => Some(b),
            Value::SimpleString(s) | Value::VerbatimString { text: s, .. } => Some(s.as_bytes()),
            Value::Okay => Some(b"OK"),
            _ => None,
        }
    }
    if text(v) == Some(OVERSIZE_MARKER) {
        return Err(FieldsError::TooLarge);
    }
    match v {
        Value::Attribute { .. } => value_fields(strip(v), max_fields, max_bytes),
        Value::Map(m) => checked_fields(
            m.iter().flat_map(|(k, x)| [k, x]).map(bytes),
            m.len() * 2,
            max_fields,
            max_bytes,
        ),
        _ => {
            let items = array(v).ok_or(FieldsError::Malformed)?;
            checked_fields(items.iter().map(bytes), items.len(), max_fields, max_bytes)
        }
    }
}

/// The checks every field list gets, whichever reader read it, in this order: at
/// most `max_fields` pairs, an even list, at most `max_bytes` of names and values,
/// then each name and value a UTF-8 string. `items` yields the list's `len`
/// elements: a string's bytes, or `None` for anything else. The bounds are checked
/// before anything is built, and each step is linear.
fn checked_fields<'a>(
    items: impl Iterator<Item = Option<&'a [u8]>> + Clone,
    len: usize,
    max_fields: usize,
    max_bytes: usize,
) -> Result<Vec<(&'a str, &'a str)>, FieldsError> {
    if len / 2 > max_fields {
        return Err(FieldsError::TooManyFields);
    }
    if !len.is_multiple_of(2) {
        return Err(FieldsError::Malformed);
    }
    let mut bytes = 0usize;
    for f in items.clone() {
        bytes = bytes.saturating_add(f.map_or(0, <[u8]>::len));
        if bytes > max_bytes {
            return Err(FieldsError::TooLarge);
        }
    }
    let text = |f: Option<&'a [u8]>| {
        std::str::from_utf8(f.ok_or(FieldsError::Malformed)?).map_err(|_| FieldsError::NotUtf8)
    };
    let mut out = Vec::with_capacity(len / 2);
    let mut items = items;
    while let (Some(name), Some(value)) = (items.next(), items.next()) {
        out.push((text(name)?, text(value)?));
    }
    Ok(out)
}

fn strip(v: &Value) -> &Value {
    match v {
        Value::Attribute { data, .. } => strip(data),
        _ => v,
    }
}

/// A keyed digest of an entry's raw field list (names and values, length-prefixed).
/// A list read by either path gives the same digest.
pub(crate) fn digest(key: &foldhash::quality::RandomState, fields: FieldList<'_>) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    fn feed(h: &mut impl Hasher, v: &Value) {
        match v {
            Value::BulkString(b) => {
                h.write_usize(b.len());
                h.write(b);
            }
            Value::SimpleString(s) | Value::VerbatimString { text: s, .. } => {
                h.write_usize(s.len());
                h.write(s.as_bytes());
            }
            Value::Array(items) | Value::Set(items) => {
                h.write_usize(items.len());
                items.iter().for_each(|x| feed(h, x));
            }
            Value::Map(m) => {
                // As the flat list of names and values it stands for.
                h.write_usize(m.len() * 2);
                m.iter().for_each(|(k, x)| {
                    feed(h, k);
                    feed(h, x);
                });
            }
            Value::Attribute { data, .. } => feed(h, data),
            // Not part of a well-formed entry; any fixed value will do.
            _ => h.write_u8(0xff),
        }
    }
    let mut h = key.build_hasher();
    match fields {
        FieldList::Value(v) => feed(&mut h, v),
        FieldList::Wire(None) => h.write_u8(0xff),
        FieldList::Wire(Some(raw)) => {
            h.write_usize(raw.len());
            for f in raw {
                h.write_usize(f.len());
                h.write(f);
            }
        }
    }
    h.finish()
}

/// What the feed needs to know of a stream, from `XINFO STREAM` (or the screening
/// script that returns only these fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamMeta {
    pub(crate) last_generated: StreamId,
    /// The largest id ever deleted (trimmed or `XDEL`ed); Redis 7.0 and later.
    pub(crate) max_deleted: Option<StreamId>,
    /// How many entries were ever added to this stream; Redis 7.0 and later.
    pub(crate) entries_added: Option<u64>,
}

/// Parse the reply to `XINFO STREAM` (RESP2 or RESP3), or the metadata script's.
pub(crate) fn stream_meta(v: &Value) -> Option<StreamMeta> {
    let mut last_generated = None;
    let mut max_deleted = None;
    let mut entries_added = None;
    for (k, v) in pairs(v)? {
        match text(k) {
            Some("last-generated-id") => last_generated = StreamId::parse(text(v)?),
            Some("max-deleted-entry-id") => max_deleted = StreamId::parse(text(v)?),
            Some("entries-added") => entries_added = integer(v),
            _ => {}
        }
    }
    Some(StreamMeta {
        last_generated: last_generated?,
        max_deleted,
        entries_added,
    })
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
            assert_eq!(e.id, StreamId { ms: 1, seq: 1 });
            assert_eq!(
                fields(e.fields, 64, 1024).unwrap(),
                [("zone_id", "z"), ("sid", "s")]
            );
        }
        assert!(xread(&Value::Nil).unwrap().is_empty());
        assert!(xread(&Value::Int(3)).is_err());
        let bad_id = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![Value::Array(vec![bulk("x-1"), Value::Array(vec![])])]),
        ])]);
        assert!(xread(&bad_id).is_err());
    }

    #[test]
    fn odd_or_binary_fields_are_refused() {
        let f = |v: &Value| fields(FieldList::Value(v), 64, 1024).map(|f| f.len());
        assert_eq!(
            f(&Value::Array(vec![bulk("a")])),
            Err(FieldsError::Malformed)
        );
        assert_eq!(f(&Value::Nil), Err(FieldsError::Malformed));
        assert_eq!(
            f(&Value::Array(vec![
                bulk("a"),
                Value::BulkString(vec![0xff])
            ])),
            Err(FieldsError::NotUtf8)
        );
        assert_eq!(f(&bulk(OVERSIZE_MARKER)), Err(FieldsError::TooLarge));
    }

    #[test]
    fn entry_bounds_are_checked_before_building() {
        let many = Value::Array((0..130).map(|i| bulk(&i.to_string())).collect());
        let many = FieldList::Value(&many);
        assert_eq!(fields(many, 64, 1 << 20), Err(FieldsError::TooManyFields));
        assert_eq!(fields(many, 65, 1 << 20).unwrap().len(), 65);
        let big = Value::Array(vec![bulk("k"), bulk(&"v".repeat(2000))]);
        let big = FieldList::Value(&big);
        assert_eq!(fields(big, 64, 2000), Err(FieldsError::TooLarge));
        assert_eq!(fields(big, 64, 2001).unwrap().len(), 1);
    }

    #[test]
    fn both_readers_judge_and_digest_an_entry_alike() {
        let key = foldhash::quality::RandomState::default();
        let big = "v".repeat(300);
        let many: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        let cases: Vec<Option<Vec<&[u8]>>> = vec![
            Some(vec![b"zone_id", b"z", b"sid", b"s"]),
            Some(vec![]),
            Some(vec![b"a"]),
            Some(vec![OVERSIZE_MARKER.as_bytes()]),
            Some(vec![b"k", big.as_bytes()]),
            Some(many.iter().map(|s| s.as_bytes()).collect()),
            Some(vec![b"k", &[0xff, 0xfe]]),
            Some(vec![b"", b""]),
            None,
        ];
        for case in &cases {
            let value = match case {
                None => Value::Nil,
                Some(list) => {
                    Value::Array(list.iter().map(|b| Value::BulkString(b.to_vec())).collect())
                }
            };
            let parsed = FieldList::Value(&value);
            let wire = FieldList::Wire(case.as_deref());
            assert_eq!(fields(parsed, 4, 256), fields(wire, 4, 256), "{case:?}");
            assert_eq!(digest(&key, parsed), digest(&key, wire), "{case:?}");
        }
        // A digest tells field lists apart even when their bytes concatenate alike.
        let a: [&[u8]; 2] = [b"ab", b"c"];
        let b: [&[u8]; 2] = [b"a", b"bc"];
        assert_ne!(
            digest(&key, FieldList::Wire(Some(&a))),
            digest(&key, FieldList::Wire(Some(&b)))
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
        assert_eq!(
            stream_meta(&xinfo),
            Some(StreamMeta {
                last_generated: StreamId { ms: 9, seq: 2 },
                max_deleted: None,
                entries_added: None,
            })
        );
        let xinfo7 = Value::Map(vec![
            (bulk("last-generated-id"), bulk("9-2")),
            (bulk("max-deleted-entry-id"), bulk("5-0")),
            (bulk("entries-added"), Value::Int(12)),
            (bulk("first-entry"), Value::Nil),
        ]);
        assert_eq!(
            stream_meta(&xinfo7),
            Some(StreamMeta {
                last_generated: StreamId { ms: 9, seq: 2 },
                max_deleted: Some(StreamId { ms: 5, seq: 0 }),
                entries_added: Some(12),
            })
        );
    }
}
