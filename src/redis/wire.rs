//! A borrowing reader of RESP2 replies, for the bulk catch-up reads.
//!
//! Catch-up of a long retained history is dominated by turning each reply into the
//! `redis` crate's owned `Value` tree: one allocation per field, per entry. This
//! reader instead checks that a buffer holds exactly one complete, well-formed
//! reply ([`Frame`], resumable as bytes arrive, with no allocation and a fixed
//! nesting bound), then reads the entries out of it as slices of the buffer.
//!
//! Everything here reads bytes a hostile party may have shaped (stream field values
//! are the writer's). Lengths are checked against what is in the buffer before
//! they are used, counts only ever decrease, and nesting past [`MAX_DEPTH`] is
//! refused, so any input costs time linear in its size and a fixed amount of memory.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::connect::Transport;
use super::reply::{RawEntry, StreamId, Unexpected};

/// The deepest nesting a reply the feed reads may have (`XREAD`: streams, stream,
/// entries, entry, fields).
pub(crate) const MAX_DEPTH: usize = 8;
/// The longest header line (`$<len>`, `*<count>`, `:<int>`) or simple string.
const MAX_LINE: usize = 4096;

/// Why bytes are not a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed;

/// The encoding of `args` as a RESP command (an array of bulk strings).
pub(crate) fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    out.push(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for a in args {
        out.push(b'$');
        out.extend_from_slice(a.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The line starting at `at` (without its CRLF) and where the next one starts;
/// `Ok(None)` while the CRLF has not arrived.
fn line(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, Malformed> {
    let rest = &buf[at.min(buf.len())..];
    let window = &rest[..rest.len().min(MAX_LINE + 1)];
    match window.iter().position(|&b| b == b'\r') {
        Some(i) => match rest.get(i + 1) {
            Some(b'\n') => Ok(Some((&rest[..i], at + i + 2))),
            Some(_) => Err(Malformed),
            // A CR as the last byte read: the LF may follow.
            None => Ok(None),
        },
        None if window.len() > MAX_LINE => Err(Malformed),
        None => Ok(None),
    }
}

/// A length or count: `-1` (nil) or a decimal without sign or leading zeros.
fn length(digits: &[u8]) -> Result<Option<usize>, Malformed> {
    if digits == b"-1" {
        return Ok(None);
    }
    if digits.is_empty()
        || digits.len() > 19
        || (digits.len() > 1 && digits[0] == b'0')
        || !digits.iter().all(u8::is_ascii_digit)
    {
        return Err(Malformed);
    }
    let mut n: usize = 0;
    for &d in digits {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(usize::from(d - b'0')))
            .ok_or(Malformed)?;
    }
    Ok(Some(n))
}

fn integer(digits: &[u8]) -> Result<(), Malformed> {
    let d = digits.strip_prefix(b"-").unwrap_or(digits);
    if d.is_empty() || d.len() > 19 || !d.iter().all(u8::is_ascii_digit) {
        return Err(Malformed);
    }
    Ok(())
}

/// The resumable check that a buffer holds one complete reply. Call
/// [`Frame::advance`] with the whole buffer each time more bytes arrive; it picks up
/// where it stopped.
#[derive(Debug, Default)]
pub(crate) struct Frame {
    /// Where the next value starts.
    at: usize,
    /// Elements still to come in each open array, outermost first.
    open: [usize; MAX_DEPTH],
    depth: usize,
    started: bool,
}

impl Frame {
    /// `Ok(Some(len))` once `buf[..len]` is one complete reply; `Ok(None)` while more
    /// bytes are needed.
    pub(crate) fn advance(&mut self, buf: &[u8]) -> Result<Option<usize>, Malformed> {
        loop {
            if self.started && self.depth == 0 {
                return Ok(Some(self.at));
            }
            if self.at >= buf.len() {
                return Ok(None);
            }
            let Some((head, next)) = line(buf, self.at + 1)? else {
                return Ok(None);
            };
            let complete = match buf[self.at] {
                b'$' => match length(head)? {
                    None => {
                        self.at = next;
                        true
                    }
                    Some(n) => {
                        let end = next.checked_add(n).ok_or(Malformed)?;
                        if buf.len() < end.saturating_add(2) {
                            return Ok(None);
                        }
                        if &buf[end..end + 2] != b"\r\n" {
                            return Err(Malformed);
                        }
                        self.at = end + 2;
                        true
                    }
                },
                b'*' => {
                    self.at = next;
                    match length(head)? {
                        None | Some(0) => true,
                        Some(n) => {
                            if self.depth == MAX_DEPTH {
                                return Err(Malformed);
                            }
                            self.open[self.depth] = n;
                            self.depth += 1;
                            self.started = true;
                            false
                        }
                    }
                }
                b':' => {
                    integer(head)?;
                    self.at = next;
                    true
                }
                b'+' | b'-' => {
                    self.at = next;
                    true
                }
                _ => return Err(Malformed),
            };
            self.started = true;
            if complete {
                // A value ended: it may end the arrays it closes.
                while self.depth > 0 {
                    let top = &mut self.open[self.depth - 1];
                    *top -= 1;
                    if *top > 0 {
                        break;
                    }
                    self.depth -= 1;
                }
            }
        }
    }
}

/// One value read from a complete reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item<'a> {
    Bulk(&'a [u8]),
    Nil,
    /// An array of this many elements; they follow.
    Array(usize),
    Error(&'a [u8]),
    /// A simple string or an integer.
    Other,
}

/// Reads the values of a reply that [`Frame`] found complete, in order.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn next(&mut self) -> Result<Item<'a>, Malformed> {
        let kind = *self.buf.get(self.at).ok_or(Malformed)?;
        let (head, next) = line(self.buf, self.at + 1)?.ok_or(Malformed)?;
        self.at = next;
        Ok(match kind {
            b'$' => match length(head)? {
                None => Item::Nil,
                Some(n) => {
                    let end = next.checked_add(n).ok_or(Malformed)?;
                    let bytes = self.buf.get(next..end).ok_or(Malformed)?;
                    self.at = end + 2;
                    Item::Bulk(bytes)
                }
            },
            b'*' => match length(head)? {
                None => Item::Nil,
                Some(n) => Item::Array(n),
            },
            b'-' => Item::Error(head),
            b'+' | b':' => Item::Other,
            _ => return Err(Malformed),
        })
    }

    fn array(&mut self) -> Result<Option<usize>, Malformed> {
        match self.next()? {
            Item::Array(n) => Ok(Some(n)),
            Item::Nil => Ok(None),
            _ => Err(Malformed),
        }
    }

    fn bulk(&mut self) -> Result<&'a [u8], Malformed> {
        match self.next()? {
            Item::Bulk(b) => Ok(b),
            _ => Err(Malformed),
        }
    }
}

/// The entries of one stream, from a complete RESP2 reply to
/// `XREAD COUNT n STREAMS <stream> <id>`. Every field of every entry is a slice of
/// `reply`; `fields` holds them all, and each entry names its run of it.
pub(crate) fn xread_one<'a>(
    reply: &'a [u8],
    stream: &str,
    fields: &'a mut Vec<&'a [u8]>,
) -> Result<Vec<RawEntry<'a>>, Unexpected> {
    const CMD: Unexpected = Unexpected("XREAD");
    let mut r = Reader { buf: reply, at: 0 };
    // (id, where its fields start in `fields`, how many; None for a nil list)
    let mut spans: Vec<(StreamId, Option<(usize, usize)>)> = Vec::new();
    match r.array().map_err(|_| CMD)? {
        None | Some(0) => return Ok(Vec::new()),
        Some(1) => {}
        Some(_) => return Err(CMD),
    }
    if r.array().map_err(|_| CMD)? != Some(2) || r.bulk().map_err(|_| CMD)? != stream.as_bytes() {
        return Err(CMD);
    }
    let n = r.array().map_err(|_| CMD)?.unwrap_or(0);
    for _ in 0..n {
        if r.array().map_err(|_| CMD)? != Some(2) {
            return Err(CMD);
        }
        let id = std::str::from_utf8(r.bulk().map_err(|_| CMD)?)
            .ok()
            .and_then(StreamId::parse)
            .ok_or(CMD)?;
        let span = match r.array().map_err(|_| CMD)? {
            None => None,
            Some(k) => {
                let start = fields.len();
                for _ in 0..k {
                    fields.push(r.bulk().map_err(|_| CMD)?);
                }
                Some((start, k))
            }
        };
        spans.push((id, span));
    }
    if r.at != reply.len() {
        return Err(CMD);
    }
    let all: &'a [&'a [u8]] = fields;
    Ok(spans
        .into_iter()
        .map(|(id, span)| RawEntry {
            id,
            fields: super::reply::FieldList::Wire(span.map(|(s, k)| &all[s..s + k])),
        })
        .collect())
}

/// Why a [`WireConn`] read failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WireError {
    /// The connection failed or closed, or a step took too long.
    Io,
    /// The bytes are not one RESP2 reply.
    Malformed,
    /// The server answered with an error (`-NOPERM`, `-MOVED`, …).
    Server,
    /// The reply passed the budget before it ended.
    OverBudget,
}

impl From<std::io::Error> for WireError {
    fn from(_: std::io::Error) -> Self {
        WireError::Io
    }
}

impl From<Malformed> for WireError {
    fn from(_: Malformed) -> Self {
        WireError::Malformed
    }
}

/// One command at a time on a connection of its own, each reply read whole into
/// a buffer it keeps, within a byte budget. Dropped at the first failure.
pub(crate) struct WireConn {
    io: Transport,
    buf: Vec<u8>,
}

impl WireConn {
    pub(crate) fn new(io: Transport) -> Self {
        Self {
            io,
            buf: Vec::new(),
        }
    }

    /// Send `cmd` and read its reply, of at most `budget` bytes. A server error is
    /// [`WireError::Server`].
    pub(crate) async fn query(&mut self, cmd: &[u8], budget: usize) -> Result<(), WireError> {
        self.send(cmd).await?;
        let reply = self.receive(budget).await?;
        self.recycle(reply);
        Ok(())
    }

    /// Send one command. Its reply is read by the next [`WireConn::receive`], so at
    /// most one command may be outstanding.
    pub(crate) async fn send(&mut self, cmd: &[u8]) -> Result<(), WireError> {
        self.io.write_all(cmd).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Read the reply to the command sent last, of at most `budget` bytes, whole.
    /// A server error is [`WireError::Server`]. Hand the buffer back with
    /// [`WireConn::recycle`] to reuse it.
    pub(crate) async fn receive(&mut self, budget: usize) -> Result<Vec<u8>, WireError> {
        self.buf.clear();
        let mut frame = Frame::default();
        loop {
            if self.buf.len() > budget {
                return Err(WireError::OverBudget);
            }
            if let Some(len) = frame.advance(&self.buf)? {
                // One command, one reply: anything after it is not ours to read.
                if len != self.buf.len() {
                    return Err(WireError::Malformed);
                }
                if self.buf.first() == Some(&b'-') {
                    return Err(WireError::Server);
                }
                return Ok(std::mem::take(&mut self.buf));
            }
            self.buf
                .reserve(READ_CHUNK.min((budget - self.buf.len()).saturating_add(1)));
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(WireError::Io);
            }
        }
    }

    /// Give back a buffer [`WireConn::receive`] returned, to read the next reply into.
    pub(crate) fn recycle(&mut self, buf: Vec<u8>) {
        if buf.capacity() > self.buf.capacity() {
            self.buf = buf;
        }
    }
}

/// The most a single socket read asks for.
const READ_CHUNK: usize = 256 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::reply::FieldList;

    fn frame(buf: &[u8]) -> Result<Option<usize>, Malformed> {
        Frame::default().advance(buf)
    }

    /// The error message, when the reply is an error (`-ERR …`, `-MOVED …`).
    fn error(reply: &[u8]) -> Option<&[u8]> {
        match (Reader { buf: reply, at: 0 }).next() {
            Ok(Item::Error(msg)) => Some(msg),
            _ => None,
        }
    }

    #[test]
    fn complete_replies_are_recognised_whole_and_in_pieces() {
        let replies: [&[u8]; 8] = [
            b"+OK\r\n",
            b"-ERR no\r\n",
            b":-42\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"$5\r\nab\r\nc\r\n",
            b"*0\r\n",
            b"*2\r\n*2\r\n$1\r\na\r\n:1\r\n*1\r\n$0\r\n\r\n",
        ];
        for r in replies {
            assert_eq!(
                frame(r),
                Ok(Some(r.len())),
                "{:?}",
                String::from_utf8_lossy(r)
            );
            // Byte by byte, resuming: incomplete until the last byte.
            let mut f = Frame::default();
            for end in 0..r.len() {
                assert_eq!(f.advance(&r[..end]), Ok(None));
            }
            assert_eq!(f.advance(r), Ok(Some(r.len())));
            // Every strict prefix on its own is incomplete, never malformed.
            for end in 0..r.len() {
                assert_eq!(frame(&r[..end]), Ok(None));
            }
        }
    }

    #[test]
    fn hostile_framing_is_refused_without_allocating() {
        for bad in [
            &b"$3\r\nabcd\r\n"[..],
            b"$-2\r\n",
            b"$01\r\na\r\n",
            b"$+1\r\na\r\n",
            b"$99999999999999999999\r\n",
            b"*1\r\n?x\r\n",
            b":1a\r\n",
            b"$1\ra",
            b"%1\r\n",
        ] {
            assert_eq!(
                frame(bad),
                Err(Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Nesting past the bound.
        let deep = b"*1\r\n".repeat(MAX_DEPTH + 1);
        assert_eq!(frame(&deep), Err(Malformed));
        assert_eq!(frame(&b"*1\r\n".repeat(MAX_DEPTH)), Ok(None));
        // A huge count only waits for bytes; nothing is reserved for it.
        assert_eq!(frame(b"*9223372036854775807\r\n:1\r\n"), Ok(None));
        // A header line that never ends is refused once it passes the bound.
        let long = [b"$".as_slice(), &[b'1'; MAX_LINE + 8]].concat();
        assert_eq!(frame(&long), Err(Malformed));
    }

    fn xread_reply(stream: &str, entries: &[(&str, Option<&[&str]>)]) -> Vec<u8> {
        let bulk = |s: &[u8]| [format!("${}\r\n", s.len()).as_bytes(), s, b"\r\n"].concat();
        let mut out = b"*1\r\n*2\r\n".to_vec();
        out.extend(bulk(stream.as_bytes()));
        out.extend(format!("*{}\r\n", entries.len()).as_bytes());
        for (id, fields) in entries {
            out.extend(b"*2\r\n");
            out.extend(bulk(id.as_bytes()));
            match fields {
                None => out.extend(b"*-1\r\n"),
                Some(f) => {
                    out.extend(format!("*{}\r\n", f.len()).as_bytes());
                    for x in *f {
                        out.extend(bulk(x.as_bytes()));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn xread_entries_are_slices_of_the_reply() {
        let reply = xread_reply(
            "s",
            &[
                ("1-1", Some(&["zone_id", "z", "sid", "a\r\nb"])),
                ("2-0", None),
                ("3-7", Some(&[])),
            ],
        );
        assert_eq!(frame(&reply), Ok(Some(reply.len())));
        let mut store = Vec::new();
        let entries = xread_one(&reply, "s", &mut store).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].id, StreamId { ms: 1, seq: 1 });
        let FieldList::Wire(Some(f)) = entries[0].fields else {
            panic!("fields")
        };
        assert_eq!(f, [&b"zone_id"[..], b"z", b"sid", b"a\r\nb"]);
        assert!(matches!(entries[1].fields, FieldList::Wire(None)));
        assert!(matches!(entries[2].fields, FieldList::Wire(Some([]))));
        assert_eq!(entries[2].id, StreamId { ms: 3, seq: 7 });

        let mut store = Vec::new();
        assert!(xread_one(b"*-1\r\n", "s", &mut store).unwrap().is_empty());
        // Another stream's name, a bad id, a non-bulk field, trailing bytes.
        let mut store = Vec::new();
        assert!(xread_one(&reply, "t", &mut store).is_err());
        let bad_id = xread_reply("s", &[("x-1", Some(&[]))]);
        assert!(xread_one(&bad_id, "s", &mut Vec::new()).is_err());
        let int_field = b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n:1\r\n:2\r\n";
        assert_eq!(frame(int_field), Ok(Some(int_field.len())));
        assert!(xread_one(int_field, "s", &mut Vec::new()).is_err());
        let mut trailing = reply.clone();
        trailing.extend(b"+OK\r\n");
        assert!(xread_one(&trailing, "s", &mut Vec::new()).is_err());
        assert_eq!(error(b"-MOVED 1 h:2\r\n"), Some(&b"MOVED 1 h:2"[..]));
        assert_eq!(error(&reply), None);
    }

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }
    }

    /// Bytes a writer might store: RESP lookalikes, CR and LF, non-UTF-8.
    fn value_bytes(rng: &mut Rng) -> Vec<u8> {
        const PIECES: [&[u8]; 8] = [b"\r\n", b"$-1", b"*2", b":1", b"\xff", b"a", b"-ERR", b""];
        (0..rng.below(6))
            .flat_map(|_| PIECES[rng.below(8) as usize].iter().copied())
            .collect()
    }

    fn bulk_of(b: &[u8]) -> Vec<u8> {
        [format!("${}\r\n", b.len()).as_bytes(), b, b"\r\n"].concat()
    }

    /// A random XREAD reply of one stream and its expected entries.
    /// An entry's id and its fields (`None`: a nil list), owned.
    type Expected = (StreamId, Option<Vec<Vec<u8>>>);

    fn random_xread(rng: &mut Rng) -> (Vec<u8>, Vec<Expected>) {
        let mut out = b"*1\r\n*2\r\n".to_vec();
        out.extend(bulk_of(b"s"));
        let n = rng.below(5) as usize;
        out.extend(format!("*{n}\r\n").as_bytes());
        let mut want = Vec::new();
        for k in 0..n {
            let id = StreamId {
                ms: k as u64 + 1,
                seq: rng.below(3),
            };
            out.extend(b"*2\r\n");
            out.extend(bulk_of(id.to_string().as_bytes()));
            if rng.below(6) == 0 {
                out.extend(b"*-1\r\n");
                want.push((id, None));
            } else {
                let fields: Vec<Vec<u8>> =
                    (0..rng.below(5) * 2).map(|_| value_bytes(rng)).collect();
                out.extend(format!("*{}\r\n", fields.len()).as_bytes());
                fields.iter().for_each(|f| out.extend(bulk_of(f)));
                want.push((id, Some(fields)));
            }
        }
        (out, want)
    }

    /// Against the `redis` crate's parser as the reference: every reply it reads,
    /// this reader finds complete at the same length with the same entries, and no
    /// mutation of one makes either reader claim bytes that are not there or panic.
    #[test]
    fn agrees_with_the_redis_crate_and_survives_mutations() {
        use crate::redis::reply::digest;
        let key = foldhash::quality::RandomState::default();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..3_000 {
            let (reply, want) = random_xread(&mut rng);
            assert_eq!(frame(&reply), Ok(Some(reply.len())));
            let mut store = Vec::new();
            let ours = xread_one(&reply, "s", &mut store).unwrap();
            let got: Vec<_> = ours
                .iter()
                .map(|e| match e.fields {
                    FieldList::Wire(f) => (e.id, f.map(|f| f.iter().map(|x| x.to_vec()).collect())),
                    FieldList::Value(_) => unreachable!(),
                })
                .collect();
            assert_eq!(got, want);
            let value = ::redis::parse_redis_value(&reply).expect("the reference reads it");
            let reference = crate::redis::reply::xread(&value).expect("an XREAD reply");
            let [(name, theirs)] = &reference[..] else {
                panic!("one stream")
            };
            assert_eq!(*name, "s");
            assert_eq!(theirs.len(), ours.len());
            for (a, b) in theirs.iter().zip(&ours) {
                assert_eq!(a.id, b.id);
                assert_eq!(digest(&key, a.fields), digest(&key, b.fields));
            }

            let mut bad = reply.clone();
            match rng.below(3) {
                0 => {
                    let i = rng.below(bad.len() as u64) as usize;
                    bad[i] = b"\r\n$*:-+01x\xff"[rng.below(11) as usize];
                }
                1 => bad.truncate(rng.below(bad.len() as u64) as usize),
                _ => {
                    let i = rng.below(bad.len() as u64) as usize;
                    bad.insert(i, b"\r\n*$"[rng.below(4) as usize]);
                }
            }
            if let Ok(Some(n)) = frame(&bad) {
                assert!(n <= bad.len());
                let _ = xread_one(&bad[..n], "s", &mut Vec::new());
            }
        }
    }

    #[test]
    fn commands_are_bulk_arrays() {
        assert_eq!(
            command(&[b"XREAD", b"COUNT", b"10"]),
            b"*3\r\n$5\r\nXREAD\r\n$5\r\nCOUNT\r\n$2\r\n10\r\n"
        );
    }
}
