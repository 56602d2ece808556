//! `tracestate` (W3C Trace Context level 1, §3.3): strict parsing into a normalized
//! list.

/// At most 32 list-members (§3.3.1.1).
pub(crate) const MAX_MEMBERS: usize = 32;

/// Bound on the combined incoming `tracestate`, in bytes. The grammar's longest
/// header without optional white space is 32 × (256 + 1 + 256) + 31 = 16,447 bytes;
/// the spec asks vendors to propagate at least 512 characters (§3.3.1.5). 8,192 bytes,
/// Caracal's baggage bound, keeps every realistic vendor state and bounds the work.
pub(crate) const MAX_BYTES: usize = 8192;

/// Parses the combined `tracestate` (fields joined with `,`, RFC 9110 §5.3) and
/// returns it normalized: members joined with `,`, without optional white space and
/// empty members. `None` (the header is dropped, §3.3.1.1: "if the header is invalid
/// ... vendors MUST discard it") when:
///
/// - it is longer than [`MAX_BYTES`];
/// - a member does not match `key "=" value`;
/// - there are more than [`MAX_MEMBERS`] members;
/// - a key appears twice;
/// - it has no member at all (an empty header carries nothing to pass on).
pub(crate) fn parse(value: &[u8]) -> Option<String> {
    if value.len() > MAX_BYTES {
        return None;
    }
    let mut keys: Vec<&[u8]> = Vec::new();
    let mut out = String::with_capacity(value.len());
    for member in value.split(|&b| b == b',') {
        let member = super::traceparent::trim_ows(member);
        if member.is_empty() {
            continue;
        }
        let eq = member.iter().position(|&b| b == b'=')?;
        let (key, val) = (&member[..eq], &member[eq + 1..]);
        if !valid_key(key) || !valid_value(val) || keys.len() == MAX_MEMBERS {
            return None;
        }
        if keys.contains(&key) {
            return None;
        }
        keys.push(key);
        if !out.is_empty() {
            out.push(',');
        }
        // Checked above: every byte is visible ASCII or a space.
        out.push_str(std::str::from_utf8(member).ok()?);
    }
    (!out.is_empty()).then_some(out)
}

/// `lcalpha / DIGIT / "_" / "-" / "*" / "/"`.
fn key_char(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/')
}

/// `simple-key = lcalpha 0*255( keychar )`, or
/// `multi-tenant-key = tenant-id "@" system-id` with
/// `tenant-id = ( lcalpha / DIGIT ) 0*240( keychar )` and
/// `system-id = lcalpha 0*13( keychar )`.
fn valid_key(key: &[u8]) -> bool {
    match key.iter().position(|&b| b == b'@') {
        None => {
            (1..=256).contains(&key.len())
                && key[0].is_ascii_lowercase()
                && key.iter().all(|&b| key_char(b))
        }
        Some(at) => {
            let (tenant, system) = (&key[..at], &key[at + 1..]);
            (1..=241).contains(&tenant.len())
                && (tenant[0].is_ascii_lowercase() || tenant[0].is_ascii_digit())
                && tenant.iter().all(|&b| key_char(b))
                && (1..=14).contains(&system.len())
                && system[0].is_ascii_lowercase()
                && system.iter().all(|&b| key_char(b))
        }
    }
}

/// `value = 0*255( chr ) nblk-chr`, `nblk-chr = %x21-2B / %x2D-3C / %x3E-7E`,
/// `chr = %x20 / nblk-chr`.
fn valid_value(val: &[u8]) -> bool {
    let nblk = |b: u8| matches!(b, 0x21..=0x2B | 0x2D..=0x3C | 0x3E..=0x7E);
    match val.split_last() {
        Some((&last, rest)) => {
            val.len() <= 256 && nblk(last) && rest.iter().all(|&b| b == b' ' || nblk(b))
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<String> {
        parse(s.as_bytes())
    }

    #[test]
    fn accepts_the_spec_examples_and_normalizes() {
        assert_eq!(p("vendor=value").as_deref(), Some("vendor=value"));
        assert_eq!(
            p("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE").as_deref(),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
        );
        assert_eq!(p(" a=1 ,\t, b@sys=x y ,").as_deref(), Some("a=1,b@sys=x y"));
        assert_eq!(p("a=1=2").as_deref(), None, "= is not a value character");
    }

    #[test]
    fn rejects_bad_keys() {
        for key in ["A", "1a", "_a", "a.b", "a@", "@s", "a@1s", "a@sys@x", "é"] {
            assert_eq!(p(&format!("{key}=v")), None, "{key:?}");
        }
        assert!(p(&format!("{}=v", "a".repeat(256))).is_some());
        assert_eq!(p(&format!("{}=v", "a".repeat(257))), None);
        assert!(p(&format!("{}@{}=v", "1".repeat(241), "s".repeat(14))).is_some());
        assert_eq!(p(&format!("{}@s=v", "1".repeat(242))), None);
        assert_eq!(p(&format!("t@{}=v", "s".repeat(15))), None);
    }

    #[test]
    fn rejects_bad_values() {
        for v in ["", "a,b", "tab\there", "x\u{7f}", "é", "a=b"] {
            assert_eq!(p(&format!("k={v}")), None, "{v:?}");
        }
        assert!(p(&format!("k={}", "v".repeat(256))).is_some());
        assert_eq!(p(&format!("k={}", "v".repeat(257))), None);
        assert_eq!(p("novalue"), None);
        // Inner spaces belong to the value; trailing ones are list white space.
        assert_eq!(p("k= a b ").as_deref(), Some("k= a b"));
    }

    #[test]
    fn at_most_32_members_and_no_duplicates() {
        let members = |n: usize| (0..n).map(|i| format!("k{i}=v")).collect::<Vec<_>>();
        assert!(p(&members(32).join(",")).is_some());
        assert_eq!(p(&members(33).join(",")), None);
        assert_eq!(p("a=1,b=2,a=3"), None);
        // Empty members do not count.
        assert!(p(&format!("{},,,,", members(32).join(","))).is_some());
    }

    #[test]
    fn bounded_and_empty() {
        assert_eq!(p(""), None);
        assert_eq!(p(" , "), None);
        let long = format!("k={}", "v".repeat(200)).repeat(1) + &",".repeat(MAX_BYTES);
        assert_eq!(p(&long), None);
    }
}
