//! `traceparent` (W3C Trace Context level 1, §3.2): strict parsing, formatting and
//! fresh ids.

/// The flags this crate propagates: `sampled` (level 1) and `random` (level 2).
/// Level 1 §3.2.2.5 reserves the other bits and requires vendors to send them as zero.
pub(crate) const KNOWN_FLAGS: u8 = 0x03;

/// The flags of a trace this service starts: `sampled`, as Caracal's envelope codec
/// does (`format_traceparent` defaults the flags to `01`).
pub(crate) const NEW_TRACE_FLAGS: u8 = 0x01;

/// Length of a version-00 `traceparent`: `vv-<32>-<16>-ff`.
const LEN_V00: usize = 55;

/// A valid incoming `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceParent {
    pub(crate) trace_id: [u8; 16],
    pub(crate) parent_id: [u8; 8],
    pub(crate) flags: u8,
}

/// Parses one `traceparent` field value.
///
/// - Leading and trailing `SP`/`HTAB` are not part of a field value (RFC 9110 §5.5)
///   and are skipped; anything else must match exactly.
/// - Version `00`: exactly 55 characters, lowercase hex, `-` separators.
/// - Version `ff` is invalid. A higher version (`01`..`fe`) is parsed as the spec
///   says (§3.2.4 "Versioning of traceparent"): at least 55 characters, the first 55
///   in the version-00 layout, and after them either the end or a `-`.
/// - An all-zero trace id or parent id is invalid.
///
/// Only the first 56 bytes are ever looked at, so the work is constant.
pub(crate) fn parse(value: &[u8]) -> Option<TraceParent> {
    let v = trim_ows(value);
    if v.len() < LEN_V00 {
        return None;
    }
    let version = hex_u8(&v[0..2])?;
    match version {
        0xff => return None,
        0x00 if v.len() != LEN_V00 => return None,
        0x00 => {}
        _ if v.len() > LEN_V00 && v[LEN_V00] != b'-' => return None,
        _ => {}
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut parent_id = [0u8; 8];
    hex_into(&v[3..35], &mut trace_id)?;
    hex_into(&v[36..52], &mut parent_id)?;
    let flags = hex_u8(&v[53..55])?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        flags,
    })
}

/// `00-<trace id>-<span id>-<flags>`.
pub(crate) fn format(trace_id: &[u8; 16], span_id: &[u8; 8], flags: u8) -> String {
    let mut out = String::with_capacity(LEN_V00);
    out.push_str("00-");
    push_hex(&mut out, trace_id);
    out.push('-');
    push_hex(&mut out, span_id);
    out.push('-');
    push_hex(&mut out, &[flags]);
    out
}

/// A random non-zero trace id.
pub(crate) fn new_trace_id() -> [u8; 16] {
    random_nonzero()
}

/// A random non-zero span id.
pub(crate) fn new_span_id() -> [u8; 8] {
    random_nonzero()
}

/// Random bytes drawn from the CSPRNG in blocks: one `fill` per 4 KiB instead of one
/// per id, which cost a request two generator calls (about 2,300 instructions each).
/// Each thread has its own block; bytes are used once.
struct Pool {
    bytes: [u8; POOL_BYTES],
    used: usize,
}

const POOL_BYTES: usize = 4096;

thread_local! {
    static POOL: std::cell::RefCell<Pool> = const {
        std::cell::RefCell::new(Pool { bytes: [0; POOL_BYTES], used: POOL_BYTES })
    };
}

/// `N` bytes from the system CSPRNG, never all zero (an all-zero id is invalid).
fn random_nonzero<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    for _ in 0..4 {
        let filled = POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.used + N > POOL_BYTES {
                // The system generator does not fail in practice; a failure leaves
                // the block spent, so no byte is ever handed out twice.
                if aws_lc_rs::rand::fill(&mut pool.bytes).is_err() {
                    pool.used = POOL_BYTES;
                    return false;
                }
                pool.used = 0;
            }
            let at = pool.used;
            bytes.copy_from_slice(&pool.bytes[at..at + N]);
            // Wipe what was handed out.
            pool.bytes[at..at + N].fill(0);
            pool.used += N;
            true
        });
        if filled && bytes.iter().any(|&b| b != 0) {
            return bytes;
        }
    }
    bytes[N - 1] = 1;
    bytes
}

pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
}

/// `N` bytes as `2 × N` lowercase hex digits, kept inline: the ids of every
/// request's context, with no allocation.
#[derive(Clone, Copy)]
pub(crate) struct HexId<const M: usize>([u8; M]);

impl<const M: usize> HexId<M> {
    /// `bytes` in hex; `bytes` must be `M / 2` long.
    pub(crate) fn of(bytes: &[u8]) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        debug_assert_eq!(bytes.len() * 2, M);
        let mut out = [b'0'; M];
        for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 0x0f)];
        }
        HexId(out)
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only hex digits are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

pub(crate) fn trim_ows(v: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !is_ows(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !is_ows(b)).map_or(start, |i| i + 1);
    &v[start..end]
}

/// One lowercase hex digit (`HEXDIGLC`).
fn lc_hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn hex_u8(two: &[u8]) -> Option<u8> {
    match two {
        [hi, lo] => Some(lc_hex(*hi)? << 4 | lc_hex(*lo)?),
        _ => None,
    }
}

fn hex_into(src: &[u8], dst: &mut [u8]) -> Option<()> {
    if src.len() != dst.len() * 2 {
        return None;
    }
    for (d, pair) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = hex_u8(pair)?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_spec_example() {
        let tp = parse(VALID.as_bytes()).expect("valid");
        assert_eq!(hex(&tp.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&tp.parent_id), "00f067aa0ba902b7");
        assert_eq!(tp.flags, 0x01);
        assert_eq!(format(&tp.trace_id, &tp.parent_id, tp.flags), VALID);
        assert_eq!(
            HexId::<32>::of(&tp.trace_id).as_str(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(HexId::<16>::of(&tp.parent_id).as_str(), "00f067aa0ba902b7");
    }

    #[test]
    fn inline_hex_matches_the_string_form_for_every_byte() {
        let bytes: Vec<u8> = (0..=255).collect();
        for pair in bytes.chunks_exact(8) {
            assert_eq!(HexId::<16>::of(pair).as_str(), hex(pair));
        }
    }

    #[test]
    fn surrounding_ows_is_not_part_of_the_value() {
        assert!(parse(format!(" \t{VALID}\t ").as_bytes()).is_some());
        assert!(parse(format!("\n{VALID}").as_bytes()).is_none());
    }

    #[test]
    fn rejects_malformed_version_00() {
        let bad = [
            "",
            "00",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
            "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-701",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ];
        for v in bad {
            assert_eq!(parse(v.as_bytes()), None, "{v:?}");
        }
    }

    #[test]
    fn future_versions_parse_the_version_00_prefix() {
        let v = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09";
        assert_eq!(parse(v.as_bytes()).expect("same length").flags, 0x09);
        let longer = format!("{v}-what-the-future-holds");
        assert!(parse(longer.as_bytes()).is_some());
        // After the first 55 characters, only the end or a dash.
        assert_eq!(parse(format!("{v}x").as_bytes()), None);
        // Still lowercase hex and non-zero ids.
        assert_eq!(
            parse(b"01-00000000000000000000000000000000-00f067aa0ba902b7-01-x"),
            None
        );
        assert_eq!(
            parse(b"01-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            None
        );
    }

    #[test]
    fn fresh_ids_are_random_and_non_zero() {
        let a = new_trace_id();
        let b = new_trace_id();
        assert_ne!(a, [0; 16]);
        assert_ne!(a, b);
        assert_ne!(new_span_id(), [0; 8]);
        assert_ne!(new_span_id(), new_span_id());
    }

    #[test]
    fn trim_handles_all_whitespace() {
        assert_eq!(trim_ows(b"   "), b"");
        assert_eq!(trim_ows(b""), b"");
        assert_eq!(trim_ows(b" a b "), b"a b");
    }
}
