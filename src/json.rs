//! Strict JSON helpers shared by the header and claims parsers.
//!
//! serde_json keeps the last of duplicate object keys. Two parsers that disagree on
//! which duplicate wins are a classic source of authority confusion, so every object
//! the verifier reads (at any depth) rejects duplicate keys. serde_json's recursion
//! limit (128) bounds nesting, so deep input fails instead of overflowing the stack.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// An object key, borrowed from the input when it has no escapes.
pub(crate) struct Key<'de>(pub(crate) Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Remembers the keys seen in one object and rejects a repeat.
///
/// Small objects use a linear scan; larger ones switch to a hash set so a hostile
/// object with thousands of keys stays linear.
#[derive(Default)]
pub(crate) struct SeenKeys<'de> {
    small: Vec<Cow<'de, str>>,
    large: Option<std::collections::HashSet<Cow<'de, str>>>,
}

impl<'de> SeenKeys<'de> {
    pub(crate) fn insert<E: de::Error>(&mut self, key: Cow<'de, str>) -> Result<(), E> {
        if let Some(set) = &mut self.large {
            if !set.insert(key) {
                return Err(E::custom("duplicate key"));
            }
            return Ok(());
        }
        if self.small.contains(&key) {
            return Err(E::custom("duplicate key"));
        }
        self.small.push(key);
        if self.small.len() > 16 {
            self.large = Some(self.small.drain(..).collect());
        }
        Ok(())
    }
}

/// Deserializes any JSON value into a [`Value`], rejecting duplicate keys at every depth.
pub(crate) struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictValue)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut seen = SeenKeys::default();
        let mut out = Map::new();
        while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
            let owned = k.clone().into_owned();
            seen.insert::<A::Error>(k)?;
            let v = map.next_value_seed(StrictValue)?;
            out.insert(owned, v);
        }
        Ok(Value::Object(out))
    }
}

/// A non-empty string.
pub(crate) fn non_empty<E: de::Error>(s: String, what: &'static str) -> Result<String, E> {
    if s.is_empty() {
        Err(E::custom(format_args!("{what} is empty")))
    } else {
        Ok(s)
    }
}

/// A sequence of non-empty strings, optionally unique.
pub(crate) struct StringList {
    pub(crate) unique: bool,
}

impl<'de> DeserializeSeed<'de> for StringList {
    type Value = Vec<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<String>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for StringList {
    type Value = Vec<String>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of non-empty strings")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut out: Vec<String> = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(16));
        while let Some(s) = seq.next_element::<String>()? {
            if s.is_empty() {
                return Err(de::Error::custom("empty string in array"));
            }
            if self.unique && out.contains(&s) {
                return Err(de::Error::custom("duplicate array item"));
            }
            out.push(s);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict(s: &str) -> Result<Value, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(s);
        let v = StrictValue.deserialize(&mut de)?;
        de.end()?;
        Ok(v)
    }

    #[test]
    fn duplicates_rejected_at_every_depth() {
        assert!(strict(r#"{"a":1,"a":2}"#).is_err());
        assert!(strict(r#"{"x":[{"a":1,"a":2}]}"#).is_err());
        assert!(
            strict(r#"{"a":1,"\u0061":2}"#).is_err(),
            "escaped duplicate"
        );
        assert_eq!(
            strict(r#"{"a":1,"b":[1,{"c":null}]}"#).unwrap()["b"][1]["c"],
            Value::Null
        );
    }

    #[test]
    fn many_keys_switch_to_hash_set() {
        let mut s = String::from("{");
        for i in 0..100 {
            s.push_str(&format!("\"k{i}\":{i},"));
        }
        s.push_str("\"k42\":0}");
        assert!(strict(&s).is_err());
    }

    #[test]
    fn deep_nesting_fails_without_overflow() {
        let s = "[".repeat(5000) + &"]".repeat(5000);
        assert!(strict(&s).is_err());
    }
}
