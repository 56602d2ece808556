//! Strict parsing of the mandate payload, per `caracal-jwt-claims-2026-05-21`.
//!
//! One pass over the JSON builds the typed claims. Every key is checked for
//! duplicates, required claims must be present, optional strings must be strings
//! (not `null`), integers must be non-negative integers, and delegation chain hops
//! accept only their three fields.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Map;

use crate::error::{AuthError, InvalidReason};
use crate::json::{Key, SeenKeys, StrictValue, StringList, non_empty};
use crate::mandate::{ChainHop, Claims, SubjectType};
use crate::token::decode_segment;

/// A chain longer than this is refused outright, whatever the hop limit: it bounds the
/// revocation anchors checked per request.
pub(crate) const MAX_CHAIN_LEN: usize = 256;

pub(crate) fn parse_payload(segment: &str) -> Result<Claims, AuthError> {
    let bytes = decode_segment(segment)?;
    parse_claims_json(&bytes)
}

pub(crate) fn parse_claims_json(bytes: &[u8]) -> Result<Claims, AuthError> {
    // Validate UTF-8 once, up front (word-at-a-time for ASCII), instead of per string.
    let text = std::str::from_utf8(bytes).map_err(|_| AuthError::invalid(InvalidReason::Claims))?;
    let mut de = serde_json::Deserializer::from_str(text);
    ClaimsSeed
        .deserialize(&mut de)
        .and_then(|c| de.end().map(|()| c))
        .map_err(|_| AuthError::invalid(InvalidReason::Claims))
}

struct ClaimsSeed;

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
        let mut iss = None;
        let mut sub = None;
        let mut aud = None;
        let mut exp = None;
        let mut iat = None;
        let mut nbf = None;
        let mut jti = None;
        let mut zone_id = None;
        let mut client_id = None;
        let mut sid = None;
        let mut root_sid = None;
        let mut token_use = None;
        let mut sub_type = None;
        let mut scope = None;
        let mut target = Vec::new();
        let mut agent_session_id = None;
        let mut delegation_edge_id = None;
        let mut source_session_id = None;
        let mut target_session_id = None;
        let mut delegation_path = Vec::new();
        let mut delegation_chain = None;
        let mut hop_count = None;
        let mut delegation_graph_epoch = None;
        let mut extra = Map::new();

        // Known claims are tracked by bit, so only unknown ones need the key list.
        let mut known: u32 = 0;
        while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
            let bit = match &*k {
                "iss" => {
                    iss = Some(non_empty(map.next_value()?, "iss")?);
                    0
                }
                "sub" => {
                    sub = Some(non_empty(map.next_value()?, "sub")?);
                    1
                }
                "aud" => {
                    aud = Some(map.next_value_seed(AudienceSeed)?);
                    2
                }
                "exp" => {
                    exp = Some(positive(map.next_value()?, "exp")?);
                    3
                }
                "iat" => {
                    iat = Some(positive(map.next_value()?, "iat")?);
                    4
                }
                "nbf" => {
                    nbf = Some(map.next_value::<u64>()?);
                    5
                }
                "jti" => {
                    jti = Some(non_empty(map.next_value()?, "jti")?);
                    6
                }
                "zone_id" => {
                    zone_id = Some(non_empty(map.next_value()?, "zone_id")?);
                    7
                }
                "client_id" => {
                    client_id = Some(non_empty(map.next_value()?, "client_id")?);
                    8
                }
                "sid" => {
                    sid = Some(non_empty(map.next_value()?, "sid")?);
                    9
                }
                "root_sid" => {
                    root_sid = Some(non_empty(map.next_value()?, "root_sid")?);
                    10
                }
                "use" => {
                    token_use = Some(map.next_value::<String>()?);
                    11
                }
                "sub_type" => {
                    sub_type = Some(match &*map.next_value::<Key<'de>>()?.0 {
                        "user" => SubjectType::User,
                        "application" => SubjectType::Application,
                        _ => return Err(de::Error::custom("unknown sub_type")),
                    });
                    12
                }
                "scope" => {
                    scope = Some(map.next_value::<String>()?);
                    13
                }
                "target" => {
                    target = map.next_value_seed(StringList { unique: true })?;
                    14
                }
                "agent_session_id" => {
                    agent_session_id = opt_string(map.next_value()?);
                    15
                }
                "delegation_edge_id" => {
                    delegation_edge_id = opt_string(map.next_value()?);
                    16
                }
                "source_session_id" => {
                    source_session_id = opt_string(map.next_value()?);
                    17
                }
                "target_session_id" => {
                    target_session_id = opt_string(map.next_value()?);
                    18
                }
                "delegation_path" => {
                    delegation_path = map.next_value_seed(StringList { unique: false })?;
                    19
                }
                "delegation_chain" => {
                    delegation_chain = Some(map.next_value_seed(ChainSeed)?);
                    20
                }
                "hop_count" => {
                    hop_count = Some(map.next_value::<u64>()?);
                    21
                }
                "delegation_graph_epoch" => {
                    delegation_graph_epoch = Some(map.next_value::<u64>()?);
                    22
                }
                _ => {
                    let v = map.next_value_seed(StrictValue)?;
                    let name = k.clone().into_owned();
                    seen.insert::<A::Error>(k)?;
                    extra.insert(name, v);
                    continue;
                }
            };
            if known & (1 << bit) != 0 {
                return Err(de::Error::custom("duplicate claim"));
            }
            known |= 1 << bit;
        }

        fn req<T, E: de::Error>(v: Option<T>, name: &'static str) -> Result<T, E> {
            v.ok_or_else(|| E::missing_field(name))
        }
        Ok(Claims {
            iss: req(iss, "iss")?,
            sub: req(sub, "sub")?,
            aud: req(aud, "aud")?,
            exp: req(exp, "exp")?,
            iat: req(iat, "iat")?,
            nbf,
            jti: req(jti, "jti")?,
            zone_id: req(zone_id, "zone_id")?,
            client_id: req(client_id, "client_id")?,
            sid: req(sid, "sid")?,
            root_sid: req(root_sid, "root_sid")?,
            token_use: req(token_use, "use")?,
            sub_type: req(sub_type, "sub_type")?,
            scope,
            target,
            agent_session_id,
            delegation_edge_id,
            source_session_id,
            target_session_id,
            delegation_path,
            delegation_chain,
            hop_count,
            delegation_graph_epoch,
            extra,
        })
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
    type Value = Vec<ChainHop>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<ChainHop>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ChainSeed {
    type Value = Vec<ChainHop>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of delegation hops")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<ChainHop>, A::Error> {
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
    type Value = ChainHop;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ChainHop, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for HopSeed {
    type Value = ChainHop;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a delegation hop object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ChainHop, A::Error> {
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
        Ok(ChainHop {
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
    use serde_json::{Value, json};

    /// The contract's valid resource mandate (caracal-contracts fixture
    /// `jwt-claims.resource.valid.json`), restated here.
    pub(crate) fn fixture() -> Value {
        json!({
            "iss": "https://sts.example.com", "sub": "user-1", "aud": "resource://api",
            "exp": 1790000300u64, "iat": 1790000000u64,
            "jti": "018f7d6a-8f4a-7d9f-9a54-5e4fd7df0001", "zone_id": "zone-1",
            "client_id": "app-1", "scope": "read write", "sid": "authority-record-1",
            "root_sid": "authority-record-root", "use": "resource", "sub_type": "user",
            "target": ["resource://api"], "agent_session_id": "session-child",
            "delegation_edge_id": "delegation-1", "source_session_id": "session-parent",
            "target_session_id": "session-child", "delegation_path": ["delegation-1"],
            "delegation_chain": [
                {"application_id": "app-parent", "agent_session_id": "session-parent",
                 "delegation_edge_id": "delegation-1"},
                {"application_id": "app-1", "agent_session_id": "session-child"}
            ],
            "hop_count": 1, "delegation_graph_epoch": 7
        })
    }

    fn parse(v: &Value) -> Result<Claims, AuthError> {
        parse_claims_json(&serde_json::to_vec(v).unwrap())
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
        assert_eq!(c.sid, "authority-record-1");
        assert_eq!(c.aud, vec!["resource://api"]);
        assert_eq!(c.delegation_chain.as_ref().unwrap().len(), 2);
        assert_eq!(
            c.delegation_chain.as_ref().unwrap()[0]
                .delegation_edge_id
                .as_deref(),
            Some("delegation-1")
        );
        assert_eq!(c.hop_count, Some(1));
        assert_eq!(c.delegation_graph_epoch, Some(7));
        assert_eq!(c.sub_type, SubjectType::User);
        assert!(c.extra.is_empty());
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
            "zone_id",
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
        assert_eq!(c.agent_session_id, None);
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
    fn not_an_object() {
        for bad in ["[]", "null", "1", "\"x\"", "{} {}", "{"] {
            assert!(parse_claims_json(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
