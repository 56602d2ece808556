//! Strict parsing of the mandate payload, per `caracal-jwt-claims-2026-05-21`.
//!
//! Every key is checked for duplicates, required claims must be present, optional
//! strings must be strings (not `null`), integers must be non-negative integers, and
//! delegation chain hops accept only their three fields.
//!
//! The claims themselves (names, kinds, which are required) are declared once, in the
//! table of [`schema`], which generates [`Claims`] and both parsers' dispatch.
//!
//! Two parsers share that contract:
//!
//! - the **fast path** ([`fast`]) reads the payload as an STS mints it (only the
//!   contract's claims, no string escapes) in one pass over the bytes, without
//!   allocating: every string becomes a span of the decoded payload, which the
//!   parsed claims keep;
//! - the **strict parser** (serde_json with visitors that reject duplicates at every
//!   depth) handles everything else, and alone decides every rejection.
//!
//! One exception, to answer as Caracal does: a payload whose only fault is its
//! `zone_id` (missing, not a string, or empty) parses with an empty `zone_id`, which
//! the verifier then refuses as `zone_invalid` after the checks Caracal runs first.
//!
//! The fast path only ever accepts: on any input it does not handle, or that is
//! invalid, it steps aside and the strict parser runs. What it accepts, it must parse
//! exactly as the strict parser does; the unit tests and the `claims_json` fuzz target
//! compare the two on every input.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Map;

use crate::error::{AuthError, InvalidReason};
use crate::json::{Key, SeenKeys, StrictValue, StringList, non_empty};
use crate::mandate::{Items, Span};
use crate::token::decode_segment;

mod schema;

pub(crate) use schema::Claims;
use schema::{Claim, Found, Scanned};

/// A chain longer than this is refused outright, whatever the hop limit: it bounds the
/// revocation anchors checked per request.
pub(crate) const MAX_CHAIN_LEN: usize = 256;

/// Spans are 32-bit; payloads are capped far below this by the token size limit.
const MAX_PAYLOAD: usize = 1 << 30;

fn claims_error() -> AuthError {
    AuthError::invalid(InvalidReason::Claims)
}

pub(crate) fn parse_payload(segment: &str) -> Result<Claims, AuthError> {
    claims_from_json(decode_segment(segment)?)
}

/// The claims parser on JSON bytes (the verifier decodes into [`parse_payload`]).
#[cfg(any(test, feature = "__internals"))]
pub(crate) fn parse_claims_json(bytes: &[u8]) -> Result<Claims, AuthError> {
    claims_from_json(bytes.to_vec())
}

fn claims_from_json(bytes: Vec<u8>) -> Result<Claims, AuthError> {
    // Both parsers refuse a payload over `MAX_PAYLOAD`.
    // Validate UTF-8 once, up front (word-at-a-time for ASCII), instead of per string.
    let text = String::from_utf8(bytes).map_err(|_| claims_error())?;
    match fast::parse(text) {
        Ok(claims) => Ok(claims),
        Err(text) => parse_strict(&text).or_else(|err| parse_zone_fault(&text).ok_or(err)),
    }
}

/// The strict parser alone (the fallback of [`parse_claims_json`]).
pub(crate) fn parse_strict(text: &str) -> Result<Claims, AuthError> {
    strict(text, ZoneMode::Strict).map_err(|()| claims_error())
}

/// A payload the strict parser refused, when `zone_id` (missing, not a string, or
/// empty) is its only fault: the claims, with an empty `zone_id`.
///
/// Caracal checks `zone_id` after the registered claims and `use`, and answers a
/// bad one with `zone_invalid`. An empty `zone_id` never equals a configured zone
/// (a verifier's zone is never empty), so the verifier's own checks then answer
/// `expired`, `issuer`, `audience` or `use` first, and `zone_invalid` otherwise.
/// Every other fault, a duplicated `zone_id` included, stays `invalid_token`
/// (`claims`): this parse differs from the strict one only in accepting any JSON
/// value, or none, for `zone_id`.
fn parse_zone_fault(text: &str) -> Option<Claims> {
    strict(text, ZoneMode::Fault).ok()
}

fn strict(text: &str, zone: ZoneMode) -> Result<Claims, ()> {
    if text.len() > MAX_PAYLOAD {
        return Err(());
    }
    let mut de = serde_json::Deserializer::from_str(text);
    ClaimsSeed { zone }
        .deserialize(&mut de)
        .and_then(|c| de.end().map(|()| c))
        .map_err(|_| ())
}

/// How the strict parser reads `zone_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ZoneMode {
    /// A required, non-empty string.
    Strict,
    /// Any JSON value, or none, read as the empty string: the retry that tells a
    /// bad `zone_id` from other faults ([`parse_zone_fault`]).
    Fault,
}

/// The fast path's contract on one input: it declines (`false`), or it accepts and
/// the strict parser accepts with equal claims (`true`). Panics otherwise: the fast
/// path would then be a second, laxer judge.
#[cfg(any(test, feature = "__internals"))]
pub(crate) fn fast_path_agrees(text: &str) -> bool {
    let Ok(fast) = fast::parse(text.to_owned()) else {
        return false;
    };
    match parse_strict(text) {
        Ok(strict) => assert_eq!(strict, fast, "fast path parsed differently: {text}"),
        Err(e) => panic!("fast path accepted what the strict parser refuses: {e}"),
    }
    true
}

/// The fast path: one pass over the bytes of an STS-minted payload.
pub(crate) mod fast {
    use super::*;

    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;

    /// Marks the bytes of `w` equal to zero; exact for the lowest marked byte.
    #[inline]
    fn zero_bytes(w: u64) -> u64 {
        w.wrapping_sub(LO) & !w & HI
    }

    /// The index of the `"` closing a string whose contents start at `i`, or `None`
    /// if a `\\`, a control character or the end of input comes first.
    ///
    /// Eight bytes at a time: a byte is marked when it is `"` or `\\` or below 0x20.
    /// Borrows only run upward, so the lowest marked byte is always a real one.
    #[inline]
    fn string_end(b: &[u8], mut i: usize) -> Option<usize> {
        while let Some(chunk) = b.get(i..i + 8) {
            let w = u64::from_le_bytes(chunk.try_into().ok()?);
            let m = zero_bytes(w ^ (LO * u64::from(b'"')))
                | zero_bytes(w ^ (LO * u64::from(b'\\')))
                | (w.wrapping_sub(LO * 0x20) & !w & HI);
            if m != 0 {
                let j = i + (m.trailing_zeros() / 8) as usize;
                return (b[j] == b'"').then_some(j);
            }
            i += 8;
        }
        let n = b[i..]
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        (b[i + n] == b'"').then_some(i + n)
    }

    /// The fast path's cursor; the claim kinds ([`schema`]) read values with it.
    pub(crate) struct Scan<'a> {
        b: &'a [u8],
        i: usize,
        items: Vec<Span>,
    }

    impl Scan<'_> {
        #[inline]
        fn ws(&mut self) {
            while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(self.i) {
                self.i += 1;
            }
        }

        #[inline]
        fn eat(&mut self, c: u8) -> bool {
            self.ws();
            if self.b.get(self.i) == Some(&c) {
                self.i += 1;
                true
            } else {
                false
            }
        }

        #[inline]
        pub(crate) fn bytes(&self, sp: Span) -> &[u8] {
            &self.b[sp.start as usize..sp.start as usize + sp.len as usize]
        }

        /// A string without escapes or control characters: the span of its contents.
        #[inline]
        pub(crate) fn string(&mut self) -> Option<Span> {
            if !self.eat(b'"') {
                return None;
            }
            let start = self.i;
            let end = string_end(self.b, start)?;
            self.i = end + 1;
            Some(Span {
                start: start as u32,
                len: (end - start) as u32,
            })
        }

        pub(crate) fn non_empty(&mut self) -> Option<Span> {
            self.string().filter(|sp| sp.len > 0)
        }

        /// An optional anchor: a string, absent when empty.
        pub(crate) fn opt_string(&mut self) -> Option<Option<Span>> {
            self.string().map(|sp| (sp.len > 0).then_some(sp))
        }

        /// A non-negative integer that fits in `u64`, in JSON's canonical form.
        pub(crate) fn uint(&mut self) -> Option<u64> {
            self.ws();
            let d = &self.b[self.i..];
            let mut v = match d.first()? {
                c @ b'0'..=b'9' => u64::from(c - b'0'),
                _ => return None,
            };
            let mut n = 1;
            if v != 0 {
                while let Some(&c @ b'0'..=b'9') = d.get(n) {
                    v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
                    n += 1;
                }
            }
            // A leading zero, a fraction or an exponent: not for the fast path.
            if let Some(b'0'..=b'9' | b'.' | b'e' | b'E') = d.get(n) {
                return None;
            }
            self.i += n;
            Some(v)
        }

        /// Items of an array of non-empty strings, appended to `items`.
        pub(crate) fn list(&mut self, unique: bool) -> Option<Items> {
            if !self.eat(b'[') {
                return None;
            }
            let start = self.items.len();
            if !self.eat(b']') {
                loop {
                    let sp = self.non_empty()?;
                    if unique
                        && self.items[start..]
                            .iter()
                            .any(|&o| self.bytes(o) == self.bytes(sp))
                    {
                        return None;
                    }
                    self.items.push(sp);
                    if self.eat(b',') {
                        continue;
                    }
                    if self.eat(b']') {
                        break;
                    }
                    return None;
                }
            }
            Some(Items {
                start: start as u32,
                end: self.items.len() as u32,
            })
        }

        /// `aud`: one non-empty string, or a non-empty array of unique ones.
        pub(crate) fn audience(&mut self) -> Option<Items> {
            self.ws();
            if self.b.get(self.i) == Some(&b'"') {
                let sp = self.non_empty()?;
                let start = self.items.len() as u32;
                self.items.push(sp);
                return Some(Items {
                    start,
                    end: start + 1,
                });
            }
            self.list(true).filter(|r| r.end > r.start)
        }

        /// One delegation hop: three spans appended to `items`.
        fn hop(&mut self) -> Option<()> {
            if !self.eat(b'{') {
                return None;
            }
            let (mut app, mut session, mut edge) = (None, None, None);
            let mut seen = 0u8;
            loop {
                let k = self.string()?;
                if !self.eat(b':') {
                    return None;
                }
                let bit = match self.bytes(k) {
                    b"application_id" => {
                        app = Some(self.non_empty()?);
                        0
                    }
                    b"agent_session_id" => {
                        session = self.opt_string()?;
                        1
                    }
                    b"delegation_edge_id" => {
                        edge = self.opt_string()?;
                        2
                    }
                    _ => return None,
                };
                if seen & (1 << bit) != 0 {
                    return None;
                }
                seen |= 1 << bit;
                if self.eat(b',') {
                    continue;
                }
                if self.eat(b'}') {
                    break;
                }
                return None;
            }
            self.items.extend([
                app?,
                session.unwrap_or(Span::NONE),
                edge.unwrap_or(Span::NONE),
            ]);
            Some(())
        }

        pub(crate) fn chain(&mut self) -> Option<Items> {
            if !self.eat(b'[') {
                return None;
            }
            let start = self.items.len();
            if !self.eat(b']') {
                loop {
                    if self.items.len() - start == 3 * MAX_CHAIN_LEN {
                        return None;
                    }
                    self.hop()?;
                    if self.eat(b',') {
                        continue;
                    }
                    if self.eat(b']') {
                        break;
                    }
                    return None;
                }
            }
            Some(Items {
                start: start as u32,
                end: self.items.len() as u32,
            })
        }
    }

    /// Parse `text` if it is a payload the fast path handles; the claims keep `text`
    /// as their buffer. `Err` hands `text` back and means "ask the strict parser",
    /// never "invalid".
    pub(crate) fn parse(text: String) -> Result<Claims, String> {
        match scan(&text) {
            Some(mut claims) => {
                claims.text = text;
                Ok(claims)
            }
            None => Err(text),
        }
    }

    /// The claims with an empty buffer: spans refer to `text`.
    fn scan(text: &str) -> Option<Claims> {
        if text.len() > MAX_PAYLOAD {
            return None;
        }
        let mut s = Scan {
            b: text.as_bytes(),
            i: 0,
            items: Vec::with_capacity(16),
        };
        let mut found = Scanned::default();

        if !s.eat(b'{') || s.eat(b'}') {
            return None;
        }
        let mut known: u32 = 0;
        loop {
            let k = s.string()?;
            if !s.eat(b':') {
                return None;
            }
            // Claims outside the contract go to the strict parser.
            let claim = Claim::from_name(s.bytes(k))?;
            if known & claim.bit() != 0 {
                return None;
            }
            found.read(claim, &mut s)?;
            known |= claim.bit();
            if s.eat(b',') {
                continue;
            }
            if s.eat(b'}') {
                break;
            }
            return None;
        }
        s.ws();
        if s.i != s.b.len() {
            return None;
        }
        found.finish(s.items)
    }
}

/// One delegation hop, as the strict parser reads it.
pub(crate) struct ParsedHop {
    application_id: String,
    agent_session_id: Option<String>,
    delegation_edge_id: Option<String>,
}

/// Builds the span buffer of the strict parser's claims.
#[derive(Default)]
pub(crate) struct Arena {
    text: String,
    items: Vec<Span>,
}

impl Arena {
    pub(crate) fn put(&mut self, s: &str) -> Span {
        let sp = Span {
            start: self.text.len() as u32,
            len: s.len() as u32,
        };
        self.text.push_str(s);
        sp
    }
    pub(crate) fn opt(&mut self, s: Option<&str>) -> Option<Span> {
        s.map(|s| self.put(s))
    }
    pub(crate) fn list(&mut self, list: &[String]) -> Items {
        let start = self.items.len() as u32;
        for s in list {
            let sp = self.put(s);
            self.items.push(sp);
        }
        Items {
            start,
            end: self.items.len() as u32,
        }
    }
}

struct ClaimsSeed {
    zone: ZoneMode,
}

impl<'de> DeserializeSeed<'de> for ClaimsSeed {
    type Value = Claims;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Claims, D::Error> {
        d.deserialize_map(self)
    }
}

fn opt_string(s: String) -> Option<String> {
    // An empty optional anchor means "absent", as in Caracal's reference verifiers.
    if s.is_empty() { None } else { Some(s) }
}

fn positive<E: de::Error>(v: u64, what: &'static str) -> Result<u64, E> {
    if v == 0 {
        Err(E::custom(format_args!("{what} must be at least 1")))
    } else {
        Ok(v)
    }
}

impl<'de> Visitor<'de> for ClaimsSeed {
    type Value = Claims;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a claims object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Claims, A::Error> {
        let mut seen = SeenKeys::default();
        let mut found = Found::default();
        let mut extra = Map::new();

        // Known claims are tracked by bit, so only unknown ones need the key list.
        let mut known: u32 = 0;
        while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
            let Some(claim) = Claim::from_name(k.as_bytes()) else {
                let v = map.next_value_seed(StrictValue)?;
                let name = k.clone().into_owned();
                seen.insert::<A::Error>(k)?;
                extra.insert(name, v);
                continue;
            };
            if claim == Claim::zone_id && self.zone == ZoneMode::Fault {
                // Any value, read as the empty string below.
                map.next_value_seed(StrictValue)?;
            } else {
                found.read(claim, &mut map)?;
            }
            if known & claim.bit() != 0 {
                return Err(de::Error::custom("duplicate claim"));
            }
            known |= claim.bit();
        }
        if self.zone == ZoneMode::Fault {
            found.zone_id = Some(String::new());
        }
        found.finish(extra)
    }
}

/// `aud`: a non-empty string, or a non-empty array of unique non-empty strings.
struct AudienceSeed;

impl<'de> DeserializeSeed<'de> for AudienceSeed {
    type Value = Vec<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<String>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for AudienceSeed {
    type Value = Vec<String>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or an array of strings")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<String>, E> {
        Ok(vec![non_empty(v.to_owned(), "aud")?])
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Vec<String>, A::Error> {
        let list = StringList { unique: true }.visit_seq(seq)?;
        if list.is_empty() {
            return Err(de::Error::custom("aud is empty"));
        }
        Ok(list)
    }
}

struct ChainSeed;

impl<'de> DeserializeSeed<'de> for ChainSeed {
    type Value = Vec<ParsedHop>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<ParsedHop>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ChainSeed {
    type Value = Vec<ParsedHop>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of delegation hops")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<ParsedHop>, A::Error> {
        let mut out = Vec::new();
        while let Some(hop) = seq.next_element_seed(HopSeed)? {
            if out.len() == MAX_CHAIN_LEN {
                return Err(de::Error::custom("delegation chain too long"));
            }
            out.push(hop);
        }
        Ok(out)
    }
}

struct HopSeed;

impl<'de> DeserializeSeed<'de> for HopSeed {
    type Value = ParsedHop;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ParsedHop, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for HopSeed {
    type Value = ParsedHop;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a delegation hop object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ParsedHop, A::Error> {
        let mut application_id = None;
        let mut agent_session_id = None;
        let mut delegation_edge_id = None;
        let mut seen = SeenKeys::default();
        while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
            match &*k {
                "application_id" => {
                    application_id = Some(non_empty(map.next_value()?, "application_id")?)
                }
                "agent_session_id" => agent_session_id = opt_string(map.next_value()?),
                "delegation_edge_id" => delegation_edge_id = opt_string(map.next_value()?),
                _ => return Err(de::Error::custom("unknown delegation hop field")),
            }
            seen.insert::<A::Error>(k)?;
        }
        Ok(ParsedHop {
            application_id: application_id
                .ok_or_else(|| de::Error::missing_field("application_id"))?,
            agent_session_id,
            delegation_edge_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mandate::SubjectType;
    use serde_json::{Value, json};

    /// The contract's valid resource mandate (caracal-contracts fixture
    /// `jwt-claims.resource.valid.json`), shared with `tests/engine.rs`.
    pub(crate) fn fixture() -> Value {
        serde_json::from_str(include_str!("../tests/data/jwt-claims.resource.valid.json"))
            .expect("the contract fixture is JSON")
    }

    /// Parse as the verifier does, after checking the fast path agrees with the
    /// strict parser on this input.
    fn parse(v: &Value) -> Result<Claims, AuthError> {
        let text = serde_json::to_string(v).unwrap();
        fast_path_agrees(&text);
        parse_claims_json(text.as_bytes())
    }

    fn with(name: &str, value: Value) -> Value {
        let mut v = fixture();
        v[name] = value;
        v
    }

    fn without(name: &str) -> Value {
        let mut v = fixture();
        v.as_object_mut().unwrap().remove(name);
        v
    }

    #[test]
    fn fixture_parses_completely() {
        let c = parse(&fixture()).unwrap();
        assert_eq!(c.sid(), "authority-record-1");
        assert_eq!(c.aud(), ["resource://api"]);
        let chain = c.chain().unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(
            chain.get(0).unwrap().delegation_edge_id(),
            Some("delegation-1")
        );
        assert_eq!(chain.get(1).unwrap().delegation_edge_id(), None);
        assert_eq!(chain.last().unwrap().application_id(), "app-1");
        assert_eq!(c.hop_count, Some(1));
        assert_eq!(c.delegation_graph_epoch, Some(7));
        assert_eq!(c.sub_type, SubjectType::User);
        assert!(c.extra.is_empty());
        // The fixture is what an STS mints: it takes the fast path, and the buffer
        // is the payload itself.
        let text = serde_json::to_string(&fixture()).unwrap();
        assert_eq!(parse_strict(&text).unwrap(), c);
        let fast = fast::parse(text.clone()).expect("fast path");
        assert_eq!(fast, c);
        assert_eq!(fast.text, text);
    }

    #[test]
    fn every_required_claim_is_required() {
        for name in [
            "iss",
            "sub",
            "aud",
            "exp",
            "iat",
            "jti",
            "client_id",
            "sid",
            "root_sid",
            "use",
            "sub_type",
        ] {
            assert_eq!(
                parse(&without(name)).unwrap_err().reason(),
                Some(InvalidReason::Claims),
                "{name}"
            );
        }
    }

    /// A missing or unusable `zone_id` alone parses with an empty zone (the verifier
    /// answers `zone_invalid` after its earlier checks); with any other fault, or
    /// duplicated, it stays a claims error.
    #[test]
    fn a_bad_zone_id_alone_parses_with_an_empty_zone() {
        let mut bad = vec![without("zone_id")];
        for v in [
            json!(null),
            json!(1),
            json!(""),
            json!(["zone-1"]),
            json!({}),
        ] {
            bad.push(with("zone_id", v));
        }
        for v in &bad {
            let c = parse(v).unwrap_or_else(|e| panic!("{v}: {e}"));
            assert_eq!(c.zone_id(), "", "{v}");
            assert_eq!(c.sid(), "authority-record-1");
            assert!(
                parse_strict(&v.to_string()).is_err(),
                "strict alone refuses"
            );
            let mut also_bad = v.clone();
            also_bad["exp"] = json!("soon");
            assert_eq!(
                parse(&also_bad).unwrap_err().reason(),
                Some(InvalidReason::Claims)
            );
        }
        let text = serde_json::to_string(&fixture()).unwrap();
        let twice = text.replacen('{', r#"{"zone_id":"zone-1","#, 1);
        assert!(parse_claims_json(twice.as_bytes()).is_err());
        let nested = text.replacen('{', r#"{"zone_id":{"a":1,"a":2},"#, 1);
        assert!(parse_claims_json(nested.as_bytes()).is_err());
    }

    #[test]
    fn wrong_types_are_rejected() {
        let cases: Vec<(&str, Value)> = vec![
            ("exp", json!("1790000300")),
            ("exp", Value::Null),
            ("exp", json!(true)),
            ("exp", json!(-1)),
            ("exp", json!(1e300)),
            ("exp", json!(1790000300.5)),
            ("exp", json!(0)),
            ("iat", json!(0)),
            ("iss", json!(["https://sts.example.com"])),
            ("iss", json!(7)),
            ("aud", json!([])),
            ("aud", json!(5)),
            ("aud", json!([null])),
            ("aud", json!("")),
            ("aud", json!(["a", "a"])),
            ("scope", Value::Null),
            ("scope", json!(["read"])),
            ("agent_session_id", Value::Null),
            ("agent_session_id", json!(3)),
            ("hop_count", json!(-1)),
            ("hop_count", json!(1.5)),
            ("delegation_graph_epoch", json!("7")),
            ("target", json!("resource://api")),
            ("target", json!([""])),
            ("delegation_path", json!([1])),
            ("delegation_chain", json!({"application_id": "a"})),
            ("delegation_chain", json!([{"agent_session_id": "s"}])),
            ("delegation_chain", json!([{"application_id": ""}])),
            (
                "delegation_chain",
                json!([{"application_id": "a", "extra": 1}]),
            ),
            (
                "delegation_chain",
                json!([{"application_id": "a", "agent_session_id": null}]),
            ),
            ("sub_type", json!("robot")),
            ("sid", json!("")),
        ];
        for (name, value) in cases {
            assert_eq!(
                parse(&with(name, value.clone())).unwrap_err().reason(),
                Some(InvalidReason::Claims),
                "{name} = {value}"
            );
        }
    }

    #[test]
    fn two_to_the_64_is_rejected() {
        let mut s = serde_json::to_string(&fixture()).unwrap();
        s = s.replace("1790000300", "18446744073709551616");
        assert!(parse_claims_json(s.as_bytes()).is_err());
    }

    #[test]
    fn duplicate_claims_are_rejected() {
        let s = serde_json::to_string(&fixture()).unwrap();
        let dup_known = s.replacen('{', r#"{"sid":"other","#, 1);
        assert!(parse_claims_json(dup_known.as_bytes()).is_err());
        let dup_extra = s.replacen('{', r#"{"x":1,"x":2,"#, 1);
        assert!(parse_claims_json(dup_extra.as_bytes()).is_err());
        let dup_in_hop = s.replacen(
            r#""application_id":"app-parent""#,
            r#""application_id":"app-parent","application_id":"app-1""#,
            1,
        );
        assert!(parse_claims_json(dup_in_hop.as_bytes()).is_err());
    }

    #[test]
    fn empty_optional_anchor_is_absent_and_extras_are_kept() {
        let mut v = with("agent_session_id", json!(""));
        v["tenant"] = json!({"a": 1});
        let c = parse(&v).unwrap();
        assert_eq!(c.agent_session_id(), None);
        assert_eq!(c.extra["tenant"]["a"], 1);
    }

    #[test]
    fn chain_length_is_bounded() {
        let hops: Vec<Value> = (0..=MAX_CHAIN_LEN)
            .map(|i| json!({"application_id": format!("a{i}")}))
            .collect();
        assert!(parse(&with("delegation_chain", Value::Array(hops))).is_err());
    }

    #[test]
    fn fast_path_takes_what_an_sts_mints() {
        let mut variants = vec![
            fixture(),
            without("delegation_chain"),
            with("aud", json!(["resource://api", "resource://other"])),
            with("nbf", json!(0)),
            with("delegation_chain", json!([])),
            with("agent_session_id", json!("")),
            with("scope", json!("")),
            with("sub_type", json!("application")),
            with("exp", json!(u64::MAX)),
        ];
        let mut minimal = fixture();
        for k in [
            "scope",
            "target",
            "agent_session_id",
            "delegation_edge_id",
            "source_session_id",
            "target_session_id",
            "delegation_path",
            "delegation_chain",
            "hop_count",
            "delegation_graph_epoch",
        ] {
            minimal.as_object_mut().unwrap().remove(k);
        }
        variants.push(minimal);
        for v in &variants {
            for text in [
                serde_json::to_string(v).unwrap(),
                serde_json::to_string_pretty(v).unwrap(),
                format!(" \r\n\t{}\n ", serde_json::to_string(v).unwrap()),
            ] {
                assert!(fast_path_agrees(&text), "fast path declined {text}");
            }
        }
    }

    #[test]
    fn fast_path_declines_what_it_does_not_handle() {
        let s = serde_json::to_string(&fixture()).unwrap();
        // Escapes and claims outside the contract: valid, parsed by the strict parser.
        for text in [
            s.replace("user-1", "user\\u002d1"),
            s.replacen('{', r#"{"tenant":"t","#, 1),
        ] {
            assert!(!fast_path_agrees(&text), "{text}");
            assert!(parse_claims_json(text.as_bytes()).is_ok(), "{text}");
        }
        // Numbers that are not plain integers: the strict parser refuses them.
        for text in [
            s.replace("1790000300", "1.7900003e9"),
            s.replace("1790000300", "1790000300.0"),
            s.replace("1790000300", "01790000300"),
            s.replace("1790000300", "-0"),
        ] {
            assert!(!fast_path_agrees(&text), "{text}");
            assert!(parse_claims_json(text.as_bytes()).is_err(), "{text}");
        }
        let escaped = s.replace("user-1", "user\\u002d1");
        assert_eq!(
            parse_claims_json(escaped.as_bytes()).unwrap().sub(),
            "user-1"
        );
    }

    /// Every single-byte edit of the fixture (replace, insert, delete with a byte that
    /// matters to JSON) must leave the fast path agreeing with the strict parser.
    #[test]
    fn fast_path_agrees_with_the_strict_parser_on_every_edit() {
        let edits: &[u8] = b"\"\\,:{}[]01-9.eE+ \n\tax\x1f\x7f";
        let (mut accepted, mut declined) = (0, 0);
        for base in [
            serde_json::to_string(&fixture()).unwrap(),
            serde_json::to_string_pretty(&with("aud", json!(["a", "b"]))).unwrap(),
        ] {
            let b = base.as_bytes();
            for i in 0..b.len() {
                let mut candidates = vec![[&b[..i], &b[i + 1..]].concat()];
                for &e in edits {
                    candidates.push([&b[..i], &[e], &b[i + 1..]].concat());
                    candidates.push([&b[..i], &[e], &b[i..]].concat());
                }
                for c in candidates {
                    let Ok(text) = std::str::from_utf8(&c) else {
                        continue;
                    };
                    if fast_path_agrees(text) {
                        accepted += 1;
                    } else {
                        declined += 1;
                    }
                }
            }
        }
        // Both outcomes occur, so the comparison above was exercised.
        assert!(
            accepted > 1000 && declined > 1000,
            "{accepted} / {declined}"
        );
    }

    #[test]
    fn not_an_object() {
        for bad in ["[]", "null", "1", "\"x\"", "{} {}", "{", "{}", ""] {
            assert!(!fast_path_agrees(bad), "{bad}");
            assert!(parse_claims_json(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
