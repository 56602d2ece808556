//! `baggage` (W3C Baggage): strict parsing with Caracal's caps, and the encoding of
//! Caracal's envelope (values percent-escaped, members in sorted key order).

use super::traceparent::trim_ows;

/// Caracal's cap on a `baggage` header, in bytes (`_MAX_BAGGAGE_BYTES` in its envelope
/// codec); also the W3C Baggage propagation limit.
pub const MAX_BAGGAGE_BYTES: usize = 8192;

/// Caracal's cap on `baggage` list-members (`_MAX_BAGGAGE_MEMBERS`); also the W3C
/// Baggage propagation limit.
pub const MAX_BAGGAGE_MEMBERS: usize = 64;

/// The namespace reserved for entries this crate derives from the verified mandate.
pub(crate) const CARACAL_PREFIX: &str = "caracal.";

/// The incoming `baggage`, as far as it is passed on.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    /// Valid third-party members, decoded, sorted by key, one per key (the last wins).
    pub(crate) entries: Vec<(String, String)>,
    /// `caracal.*` members dropped as forged.
    pub(crate) forged: usize,
    /// Members dropped as malformed.
    pub(crate) malformed: usize,
    /// The whole header was dropped for exceeding a cap.
    pub(crate) oversized: bool,
}

/// Parses the combined `baggage` (fields joined with `,`).
///
/// - Over [`MAX_BAGGAGE_BYTES`] bytes, or more than [`MAX_BAGGAGE_MEMBERS`]
///   comma-separated pieces (empty ones included): the whole header is dropped, as
///   Caracal's `parse_baggage` does.
/// - Otherwise each member stands alone: one that does not match the W3C grammar
///   (`key OWS "=" OWS value *( OWS ";" OWS property )`, key a `token`, value
///   `baggage-octet`s), has a bad percent-escape, does not decode to UTF-8, or
///   decodes to a control character is dropped, and the others are kept.
/// - Properties are checked against the grammar, then dropped: Caracal's codec keeps
///   only the value and its encoder cannot emit them.
/// - A key in the `caracal.` namespace (ASCII case-insensitively) is dropped as
///   forged: those values come from the verified mandate only.
/// - A repeated key: the last one wins, as in Caracal's codec (a dict).
pub(crate) fn parse(value: &[u8]) -> Parsed {
    let mut out = Parsed::default();
    if value.is_empty() {
        return out;
    }
    if value.len() > MAX_BAGGAGE_BYTES
        || value.iter().filter(|&&b| b == b',').count() >= MAX_BAGGAGE_MEMBERS
    {
        out.oversized = true;
        return out;
    }
    let mut entries: Vec<(String, String)> = Vec::new();
    for piece in value.split(|&b| b == b',') {
        match member(piece) {
            Some((key, _)) if is_caracal(&key) => out.forged += 1,
            Some((key, val)) => match entries.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = val,
                None => entries.push((key, val)),
            },
            None if forged_key(piece) => out.forged += 1,
            None => out.malformed += 1,
        }
    }
    entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    out.entries = entries;
    out
}

/// Whether `key` is in the reserved `caracal.` namespace, in any letter case.
pub(crate) fn is_caracal(key: &str) -> bool {
    key.len() >= CARACAL_PREFIX.len()
        && key.as_bytes()[..CARACAL_PREFIX.len()].eq_ignore_ascii_case(CARACAL_PREFIX.as_bytes())
}

/// A malformed member whose key still claims the reserved namespace.
fn forged_key(piece: &[u8]) -> bool {
    let piece = trim_ows(piece);
    piece.len() >= CARACAL_PREFIX.len()
        && piece[..CARACAL_PREFIX.len()].eq_ignore_ascii_case(CARACAL_PREFIX.as_bytes())
}

/// One list-member: the key and the decoded value, properties dropped.
fn member(piece: &[u8]) -> Option<(String, String)> {
    let mut parts = piece.split(|&b| b == b';');
    let (key, raw) = key_value(parts.next()?)?;
    for property in parts {
        let property = trim_ows(property);
        if property.contains(&b'=') {
            key_value(property)?;
        } else if !is_token(property) {
            return None;
        }
    }
    let value = percent_decode(raw)?;
    if value.chars().any(char::is_control) {
        return None;
    }
    // A token is ASCII.
    Some((String::from_utf8(key.to_vec()).ok()?, value))
}

/// `key OWS "=" OWS value`, surrounded by optional white space.
fn key_value(kv: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = kv.iter().position(|&b| b == b'=')?;
    let key = trim_ows(&kv[..eq]);
    let value = trim_ows(&kv[eq + 1..]);
    (is_token(key) && value.iter().all(|&b| is_baggage_octet(b))).then_some((key, value))
}

/// RFC 9110 `token`: one or more `tchar`.
fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `baggage-octet = %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E`.
fn is_baggage_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
}

/// `%XX` (either case) to bytes, then UTF-8. A `%` not followed by two hex digits,
/// or bytes that are not UTF-8, fail.
fn percent_decode(raw: &[u8]) -> Option<String> {
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hi = char::from(*raw.get(i + 1)?).to_digit(16)?;
            let lo = char::from(*raw.get(i + 2)?).to_digit(16)?;
            bytes.push((hi << 4 | lo) as u8);
            i += 3;
        } else {
            bytes.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8(bytes).ok()
}

/// Whether Python's `urllib.parse.quote(v, safe="")` leaves `b` as it is: RFC 3986
/// unreserved characters.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The length of `key=<escaped value>`.
fn member_len(key: &str, value: &str) -> usize {
    let escaped: usize = value
        .bytes()
        .map(|b| if is_unreserved(b) { 1 } else { 3 })
        .sum();
    key.len() + 1 + escaped
}

fn push_member(out: &mut String, key: &str, value: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if !out.is_empty() {
        out.push(',');
    }
    out.push_str(key);
    out.push('=');
    for b in value.bytes() {
        if is_unreserved(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
}

/// The outbound `baggage`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Encoded {
    /// The header value; `None` when there is nothing to send or the `caracal.*`
    /// entries alone exceed the cap.
    pub(crate) header: Option<String>,
    /// Pass-through members left out to stay within the caps.
    pub(crate) dropped: usize,
}

/// Encodes `caracal` (reserved entries, never dropped) and `pass` (third-party
/// entries, sorted by key) as Caracal's `encode_baggage` does: `key=quote(value)`,
/// members sorted by key, empty values skipped. Within [`MAX_BAGGAGE_BYTES`] and
/// [`MAX_BAGGAGE_MEMBERS`]: the `caracal.*` entries are placed first, then the
/// pass-through entries in key order, each taken only if it still fits; a member is
/// never cut. When the `caracal.*` entries alone do not fit, no header is produced:
/// every Caracal parser would drop it whole anyway.
pub(crate) fn encode(caracal: &[(&str, &str)], pass: &[(String, String)]) -> Encoded {
    let caracal: Vec<(&str, &str)> = caracal
        .iter()
        .copied()
        .filter(|(_, v)| !v.is_empty())
        .collect();
    let sep = |n: usize| usize::from(n > 0);
    let mut bytes = 0;
    for (i, (k, v)) in caracal.iter().enumerate() {
        bytes += sep(i) + member_len(k, v);
    }
    if bytes > MAX_BAGGAGE_BYTES {
        return Encoded {
            header: None,
            dropped: pass.len(),
        };
    }
    let mut count = caracal.len();
    let mut chosen: Vec<(&str, &str)> = caracal;
    let mut dropped = 0;
    for (k, v) in pass {
        if v.is_empty() || is_caracal(k) {
            continue;
        }
        let len = sep(count) + member_len(k, v);
        if count < MAX_BAGGAGE_MEMBERS && bytes + len <= MAX_BAGGAGE_BYTES {
            bytes += len;
            count += 1;
            chosen.push((k, v));
        } else {
            dropped += 1;
        }
    }
    chosen.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut out = String::with_capacity(bytes);
    for (k, v) in chosen {
        push_member(&mut out, k, v);
    }
    Encoded {
        header: (!out.is_empty()).then_some(out),
        dropped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(s: &str) -> Vec<(String, String)> {
        let p = parse(s.as_bytes());
        assert!(!p.oversized);
        p.entries
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn parses_members_with_ows_properties_and_escapes() {
        assert_eq!(
            entries(" b = x%20y ;p1;p2 = v , a=1,c=a+b,d=%E2%9C%93,e="),
            kv(&[
                ("a", "1"),
                ("b", "x y"),
                ("c", "a+b"),
                ("d", "✓"),
                ("e", "")
            ])
        );
    }

    #[test]
    fn malformed_members_are_dropped_alone() {
        let p = parse(b"ok=1,=v,k,k v=1,q=\"x\",r=a b,s=%zz,t=%E2%9C,u=%0A,v=%7F,w=1;;,x=1;a=\"");
        assert_eq!(p.entries, kv(&[("ok", "1")]));
        assert_eq!(p.malformed, 11);
        assert_eq!(p.forged, 0);
        assert!(parse(b"k=%").entries.is_empty());
        assert!(parse(b"k=%4").entries.is_empty());
        assert!(parse(b"k=%C3%28").entries.is_empty(), "invalid UTF-8");
        assert!(parse(b"k=%C2%85").entries.is_empty(), "C1 control");
        assert!(parse("k=é".as_bytes()).entries.is_empty(), "raw non-ASCII");
    }

    #[test]
    fn caracal_namespace_is_forged_in_any_case() {
        let p = parse(b"caracal.session=evil,CARACAL.hop=9,Caracal.x=1,caracal.bad=a b,tenant=t");
        assert_eq!(p.entries, kv(&[("tenant", "t")]));
        assert_eq!(p.forged, 4);
        assert!(!is_caracal("caracal"));
        assert!(is_caracal("caracal."));
        assert!(!is_caracal("xcaracal.session"));
    }

    #[test]
    fn the_last_duplicate_wins() {
        assert_eq!(entries("k=1,j=0,k=2"), kv(&[("j", "0"), ("k", "2")]));
    }

    #[test]
    fn caps_drop_the_whole_header() {
        let members = |n: usize| (0..n).map(|i| format!("k{i}=v")).collect::<Vec<_>>();
        assert_eq!(parse(members(64).join(",").as_bytes()).entries.len(), 64);
        let p = parse(members(65).join(",").as_bytes());
        assert!(p.oversized && p.entries.is_empty());
        // 64 commas are 65 pieces, even when some are empty.
        assert!(parse(format!("a=1{}", ",".repeat(64)).as_bytes()).oversized);
        let max = format!("k={}", "v".repeat(MAX_BAGGAGE_BYTES - 2));
        assert_eq!(parse(max.as_bytes()).entries.len(), 1);
        assert!(parse(format!("{max}v").as_bytes()).oversized);
        assert!(!parse(b"").oversized);
    }

    #[test]
    fn encodes_like_caracal() {
        let e = encode(
            &[
                ("caracal.session", "s 1"),
                ("caracal.hop", "0"),
                ("caracal.agent_session", ""),
            ],
            &kv(&[
                ("tenant", "a/b,c"),
                ("empty", ""),
                ("caracal.x", "forged"),
                ("a", "~-._"),
            ]),
        );
        assert_eq!(
            e.header.as_deref(),
            Some("a=~-._,caracal.hop=0,caracal.session=s%201,tenant=a%2Fb%2Cc")
        );
        assert_eq!(e.dropped, 0);
        assert_eq!(encode(&[], &[]).header, None);
        assert_eq!(
            encode(&[("k", "✓")], &[]).header.as_deref(),
            Some("k=%E2%9C%93")
        );
    }

    #[test]
    fn encode_drops_pass_through_first() {
        let pass: Vec<(String, String)> = (0..64)
            .map(|i| (format!("k{i:02}"), "v".to_owned()))
            .collect();
        let e = encode(&[("caracal.session", "s"), ("caracal.hop", "1")], &pass);
        let header = e.header.expect("header");
        assert_eq!(header.split(',').count(), 64);
        assert!(header.contains("caracal.session=s") && header.contains("caracal.hop=1"));
        assert_eq!(e.dropped, 2);

        let big = "x".repeat(MAX_BAGGAGE_BYTES / 2);
        let pass = kv(&[("a", &big), ("b", &big), ("c", "small")]);
        let e = encode(&[("caracal.session", "s")], &pass);
        let header = e.header.expect("header");
        assert!(header.len() <= MAX_BAGGAGE_BYTES);
        assert!(header.starts_with("a=x") && header.ends_with(",c=small,caracal.session=s"));
        assert!(!header.contains("b="));
        assert_eq!(e.dropped, 1);

        let huge = "s".repeat(MAX_BAGGAGE_BYTES);
        let e = encode(&[("caracal.session", &huge)], &kv(&[("t", "1")]));
        assert_eq!(
            e,
            Encoded {
                header: None,
                dropped: 1
            }
        );
    }

    #[test]
    fn escaping_grows_within_the_cap() {
        // 2,000 raw '!' are legal baggage octets and triple when re-escaped.
        let v = "!".repeat(2000);
        let p = parse(format!("k={v}").as_bytes());
        let e = encode(&[("caracal.session", "s")], &p.entries);
        assert_eq!(
            e.header.expect("header").len(),
            "caracal.session=s,k=".len() + 6000
        );
        let v = "!".repeat(3000);
        let p = parse(format!("k={v}").as_bytes());
        let e = encode(&[("caracal.session", "s")], &p.entries);
        assert_eq!(e.header.as_deref(), Some("caracal.session=s"));
        assert_eq!(e.dropped, 1);
    }
}
