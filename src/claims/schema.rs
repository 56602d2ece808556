//! The claim schema of `caracal-jwt-claims-2026-05-21`, written once.
//!
//! The table below holds one line per claim: its wire name, the
//! field and accessor of [`Claims`] that keep it, its [`Kind`] (JSON type and rules)
//! and whether it is `required` or `optional`. The `schema!` macro generates from it:
//!
//! - [`Claims`]: a field per claim, an accessor per claim, `PartialEq` and `Debug`;
//! - [`Claim`]: the name → claim dispatch both parsers use, each claim's bit in their
//!   duplicate mask, and a compile-time bound on the number of claims;
//! - [`Scanned`] and [`Found`]: the slots of the fast path and of the strict parser,
//!   each with the `match` reading a claim's value into its slot, and the `finish`
//!   that refuses a missing required claim.
//!
//! What a kind accepts, how each parser reads it and what its accessor returns is
//! written once per kind, in its [`Kind`] impl. Adding a claim of an existing kind is
//! one line in the table. The two parsers cannot disagree on which claims exist, on
//! their types or on which are required: both read them through the same table.
//!
//! Special cases stay by hand in `claims.rs`: `zone_id`'s fault mode in the strict
//! parser, and in this file the kinds with their own shape (`aud`'s string or array,
//! the chain's nested hops, `sub_type`'s enumeration).

use std::fmt;

use serde::de::{self, MapAccess};
use serde_json::{Map, Value};

use super::fast::Scan;
use super::{Arena, AudienceSeed, ChainSeed, ParsedHop, opt_string, positive};
use crate::json::{Key, StringList, non_empty};
use crate::mandate::{Chain, Items, Span, StrList, SubjectType, span_str};

/// The 2026-05-21 claims, one per line, in the order `Debug` prints them:
///
/// `wire name => field and accessor: kind, presence;`
///
/// The kind is a [`Kind`] below; the presence is `required` (a payload without the
/// claim is refused) or `optional` (the kind's absent value), and the compiler holds
/// it to the kind ([`Required`], [`Optional`]). Hands the table to `$then`.
macro_rules! claim_table {
    ($then:ident) => {
        $then! {
            b"iss" => iss: NonEmpty, required;
            b"sub" => sub: NonEmpty, required;
            b"aud" => aud: Audience, required;
            b"exp" => exp: Positive, required;
            b"iat" => iat: Positive, required;
            b"nbf" => nbf: OptU64, optional;
            b"jti" => jti: NonEmpty, required;
            // In the strict parser's fault mode, any value or none (see `claims.rs`).
            b"zone_id" => zone_id: NonEmpty, required;
            b"client_id" => client_id: NonEmpty, required;
            b"sid" => sid: NonEmpty, required;
            b"root_sid" => root_sid: NonEmpty, required;
            b"use" => token_use: Str, required;
            b"sub_type" => sub_type: SubType, required;
            // Split into scopes by `Mandate::scopes`.
            b"scope" => scope: OptStr, optional;
            b"target" => target: UniqueList, optional;
            b"agent_session_id" => agent_session_id: Anchor, optional;
            b"delegation_edge_id" => delegation_edge_id: Anchor, optional;
            b"source_session_id" => source_session_id: Anchor, optional;
            b"target_session_id" => target_session_id: Anchor, optional;
            b"delegation_path" => delegation_path: List, optional;
            b"delegation_chain" => chain: DelegationChain, optional;
            b"hop_count" => hop_count: OptU64, optional;
            b"delegation_graph_epoch" => delegation_graph_epoch: OptU64, optional;
        }
    };
}

/// How one claim is read, kept and handed out.
pub(crate) trait Kind {
    /// How [`Claims`] keeps the claim; for an optional kind, absence included.
    type Stored: Copy;
    /// The strict parser's value, laid into the claims' buffer once parsing succeeds.
    type Owned;
    /// What the accessor returns.
    type View<'a>: PartialEq + fmt::Debug;
    /// The fast path: the value at the cursor, or `None` to decline the payload.
    fn scan(s: &mut Scan<'_>) -> Option<Self::Stored>;
    /// The strict parser: the value, or its refusal.
    fn strict<'de, A: MapAccess<'de>>(
        map: &mut A,
        name: &'static str,
    ) -> Result<Self::Owned, A::Error>;
    /// The strict parser's value, laid into the claims' buffer.
    fn lay_out(v: Self::Owned, a: &mut Arena) -> Self::Stored;
    /// The accessor.
    fn view<'a>(v: Self::Stored, text: &'a str, items: &'a [Span]) -> Self::View<'a>;
}

/// A kind a claim may omit, and what [`Claims`] keeps then.
pub(crate) trait Optional: Kind {
    const ABSENT: Self::Stored;
}

/// A kind whose claim must be present.
pub(crate) trait Required: Kind {}

/// The table's `required`: a missing claim (`None`) stays missing, and is refused.
#[inline]
fn required<K: Required>(v: Option<K::Stored>) -> Option<K::Stored> {
    v
}

/// The table's `optional`: a missing claim is the kind's absent value.
#[inline]
fn optional<K: Optional>(v: Option<K::Stored>) -> Option<K::Stored> {
    Some(v.unwrap_or(K::ABSENT))
}

/// A claim name of the table as text (the table spells names as bytes, for the
/// dispatch `match`).
const fn wire(name: &'static [u8]) -> &'static str {
    match std::str::from_utf8(name) {
        Ok(s) => s,
        Err(_) => panic!("claim names are UTF-8"),
    }
}

/// A non-empty string.
pub(crate) struct NonEmpty;

impl Kind for NonEmpty {
    type Stored = Span;
    type Owned = String;
    type View<'a> = &'a str;
    #[inline]
    fn scan(s: &mut Scan<'_>) -> Option<Span> {
        s.non_empty()
    }
    fn strict<'de, A: MapAccess<'de>>(map: &mut A, name: &'static str) -> Result<String, A::Error> {
        non_empty(map.next_value()?, name)
    }
    fn lay_out(v: String, a: &mut Arena) -> Span {
        a.put(&v)
    }
    #[inline]
    fn view<'a>(v: Span, text: &'a str, _: &'a [Span]) -> &'a str {
        span_str(text, v)
    }
}

impl Required for NonEmpty {}

/// A string, empty or not.
pub(crate) struct Str;

impl Kind for Str {
    type Stored = Span;
    type Owned = String;
    type View<'a> = &'a str;
    #[inline]
    fn scan(s: &mut Scan<'_>) -> Option<Span> {
        s.string()
    }
    fn strict<'de, A: MapAccess<'de>>(map: &mut A, _: &'static str) -> Result<String, A::Error> {
        map.next_value()
    }
    fn lay_out(v: String, a: &mut Arena) -> Span {
        a.put(&v)
    }
    #[inline]
    fn view<'a>(v: Span, text: &'a str, _: &'a [Span]) -> &'a str {
        span_str(text, v)
    }
}

impl Required for Str {}

/// An optional string, empty or not (an empty one is present).
pub(crate) struct OptStr;

impl Kind for OptStr {
    type Stored = Option<Span>;
    type Owned = String;
    type View<'a> = Option<&'a str>;
    #[inline]
    fn scan(s: &mut Scan<'_>) -> Option<Option<Span>> {
        s.string().map(Some)
    }
    fn strict<'de, A: MapAccess<'de>>(map: &mut A, _: &'static str) -> Result<String, A::Error> {
        map.next_value()
    }
    fn lay_out(v: String, a: &mut Arena) -> Option<Span> {
        Some(a.put(&v))
    }
    #[inline]
    fn view<'a>(v: Option<Span>, text: &'a str, _: &'a [Span]) -> Option<&'a str> {
        v.map(|sp| span_str(text, sp))
    }
}

impl Optional for OptStr {
    const ABSENT: Option<Span> = None;
}

/// An optional anchor: a string, absent when empty, as in Caracal's reference
/// verifiers.
pub(crate) struct Anchor;

impl Kind for Anchor {
    type Stored = Option<Span>;
    type Owned = Option<String>;
    type View<'a> = Option<&'a str>;
    #[inline]
    fn scan(s: &mut Scan<'_>) -> Option<Option<Span>> {
        s.opt_string()
    }
    fn strict<'de, A: MapAccess<'de>>(
        map: &mut A,
        _: &'static str,
    ) -> Result<Option<String>, A::Error> {
        Ok(opt_string(map.next_value()?))
    }
    fn lay_out(v: Option<String>, a: &mut Arena) -> Option<Span> {
        a.opt(v.as_deref())
    }
    #[inline]
    fn view<'a>(v: Option<Span>, text: &'a str, _: &'a [Span]) -> Option<&'a str> {
        v.map(|sp| span_str(text, sp))
    }
}

impl Optional for Anchor {
    const ABSENT: Option<Span> = None;
}

/// A positive integer (seconds since the epoch: `exp`, `iat`).
pub(crate) struct Positive;

impl Kind for Positive {
    type Stored = u64;
    type Owned = u64;
    type View<'a> = u64;
    #[inline]
    fn scan(s: &mut Scan<'_>) -> Option<u64> {
        s.uint().filter(|&v| v > 0)
    }
    fn strict<'de, A: MapAccess<'de>>(map: &mut A, name: &'static str) -> Result<u64, A::Error> {
        positive(map.next_value()?, name)
    }
    fn lay_out(v: u64, _: &mut Arena) -> u64 {
        v
    }
    #[inline]
    fn view<'a>(v: u64, _: &'a str, _: &'a [Span]) -> u64 {
        v
    }
}

impl Required for Positive {}

/// An optional non-negative integer.
pub(crate) struct OptU64;

impl Kind for OptU64 {
    type Stored = Option<u64>;
    type Owned = u64;
    type View<'a> = Option<u64>;
    #[inline]
    fn scan(s: &mut Scan<'_>) -> Option<Option<u64>> {
        s.uint().map(Some)
    }
    fn strict<'de, A: MapAccess<'de>>(map: &mut A, _: &'static str) -> Result<u64, A::Error> {
        map.next_value()
    }
    fn lay_out(v: u64, _: &mut Arena) -> Option<u64> {
        Some(v)
    }
    #[inline]
    fn view<'a>(v: Option<u64>, _: &'a str, _: &'a [Span]) -> Option<u64> {
        v
    }
}

impl Optional for OptU64 {
    const ABSENT: Option<u64> = None;
}

/// `sub_type`: `"user"` or `"application"`.
pub(crate) struct SubType;

impl Kind for SubType {
    type Stored = SubjectType;
    type Owned = SubjectType;
    type View<'a> = SubjectType;
    #[inline]
    fn scan(s: &mut Scan<'_>) -> Option<SubjectType> {
        let v = s.string()?;
        Some(match s.bytes(v) {
            b"user" => SubjectType::User,
            b"application" => SubjectType::Application,
            _ => return None,
        })
    }
    fn strict<'de, A: MapAccess<'de>>(
        map: &mut A,
        _: &'static str,
    ) -> Result<SubjectType, A::Error> {
        Ok(match &*map.next_value::<Key<'de>>()?.0 {
            "user" => SubjectType::User,
            "application" => SubjectType::Application,
            _ => return Err(de::Error::custom("unknown sub_type")),
        })
    }
    fn lay_out(v: SubjectType, _: &mut Arena) -> SubjectType {
        v
    }
    #[inline]
    fn view<'a>(v: SubjectType, _: &'a str, _: &'a [Span]) -> SubjectType {
        v
    }
}

impl Required for SubType {}

/// `aud`: one non-empty string, or a non-empty array of unique ones; always a list.
pub(crate) struct Audience;

impl Kind for Audience {
    type Stored = Items;
    type Owned = Vec<String>;
    type View<'a> = StrList<'a>;
    #[inline]
    fn scan(s: &mut Scan<'_>) -> Option<Items> {
        s.audience()
    }
    fn strict<'de, A: MapAccess<'de>>(
        map: &mut A,
        _: &'static str,
    ) -> Result<Vec<String>, A::Error> {
        map.next_value_seed(AudienceSeed)
    }
    fn lay_out(v: Vec<String>, a: &mut Arena) -> Items {
        a.list(&v)
    }
    #[inline]
    fn view<'a>(v: Items, text: &'a str, items: &'a [Span]) -> StrList<'a> {
        StrList::new(text, &items[v.start as usize..v.end as usize])
    }
}

impl Required for Audience {}

/// An array of non-empty strings, unique when `UNIQUE`; empty when absent.
pub(crate) struct Strings<const UNIQUE: bool>;

/// An array of unique non-empty strings (`target`).
pub(crate) type UniqueList = Strings<true>;

/// An array of non-empty strings (`delegation_path`).
pub(crate) type List = Strings<false>;

impl<const UNIQUE: bool> Kind for Strings<UNIQUE> {
    type Stored = Items;
    type Owned = Vec<String>;
    type View<'a> = StrList<'a>;
    #[inline]
    fn scan(s: &mut Scan<'_>) -> Option<Items> {
        s.list(UNIQUE)
    }
    fn strict<'de, A: MapAccess<'de>>(
        map: &mut A,
        _: &'static str,
    ) -> Result<Vec<String>, A::Error> {
        map.next_value_seed(StringList { unique: UNIQUE })
    }
    fn lay_out(v: Vec<String>, a: &mut Arena) -> Items {
        a.list(&v)
    }
    #[inline]
    fn view<'a>(v: Items, text: &'a str, items: &'a [Span]) -> StrList<'a> {
        StrList::new(text, &items[v.start as usize..v.end as usize])
    }
}

impl<const UNIQUE: bool> Optional for Strings<UNIQUE> {
    const ABSENT: Items = Items { start: 0, end: 0 };
}

/// `delegation_chain`: hops of `application_id` (required, non-empty) and the
/// optional anchors `agent_session_id` and `delegation_edge_id`. Three spans per hop;
/// an empty chain is present, unlike an absent one.
pub(crate) struct DelegationChain;

impl Kind for DelegationChain {
    type Stored = Option<Items>;
    type Owned = Vec<ParsedHop>;
    type View<'a> = Option<Chain<'a>>;
    #[inline]
    fn scan(s: &mut Scan<'_>) -> Option<Option<Items>> {
        s.chain().map(Some)
    }
    fn strict<'de, A: MapAccess<'de>>(
        map: &mut A,
        _: &'static str,
    ) -> Result<Vec<ParsedHop>, A::Error> {
        map.next_value_seed(ChainSeed)
    }
    fn lay_out(hops: Vec<ParsedHop>, a: &mut Arena) -> Option<Items> {
        let start = a.items.len() as u32;
        for h in &hops {
            let app = a.put(&h.application_id);
            let session = a.opt(h.agent_session_id.as_deref());
            let edge = a.opt(h.delegation_edge_id.as_deref());
            a.items.extend([
                app,
                session.unwrap_or(Span::NONE),
                edge.unwrap_or(Span::NONE),
            ]);
        }
        Some(Items {
            start,
            end: a.items.len() as u32,
        })
    }
    #[inline]
    fn view<'a>(v: Option<Items>, text: &'a str, items: &'a [Span]) -> Option<Chain<'a>> {
        v.map(|r| Chain::new(text, &items[r.start as usize..r.end as usize]))
    }
}

impl Optional for DelegationChain {
    const ABSENT: Option<Items> = None;
}

/// Generates the claims, their dispatch and both parsers' slots from the table.
macro_rules! schema {
    ($($wire:literal => $name:ident: $kind:ty, $presence:ident;)*) => {
        /// The claims of a mandate, as parsed.
        ///
        /// Strings are spans into one buffer, and list items and chain hops are runs
        /// of one span table, so a parsed mandate costs two allocations however many
        /// claims it has. On the fast path the buffer is the decoded payload itself.
        #[derive(Clone)]
        pub(crate) struct Claims {
            pub(crate) text: String,
            pub(crate) items: Vec<Span>,
            $(pub(crate) $name: <$kind as Kind>::Stored,)*
            pub(crate) extra: Map<String, Value>,
        }

        impl Claims {
            $(
                #[inline]
                pub(crate) fn $name(&self) -> <$kind as Kind>::View<'_> {
                    <$kind>::view(self.$name, &self.text, &self.items)
                }
            )*
        }

        /// Claims are equal when every claim is: the layout of the buffer does not
        /// matter.
        impl PartialEq for Claims {
            fn eq(&self, o: &Self) -> bool {
                $(self.$name() == o.$name() &&)* self.extra == o.extra
            }
        }

        impl Eq for Claims {}

        impl fmt::Debug for Claims {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct("Claims")
                    $(.field(Claim::$name.name(), &self.$name()))*
                    .field("extra", &self.extra)
                    .finish()
            }
        }

        /// The claims of the contract, by name. Both parsers dispatch on it, and a
        /// claim's discriminant is its bit in their duplicate mask.
        #[expect(non_camel_case_types, reason = "variants are named by the table's accessors")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Claim {
            $($name,)*
        }

        impl Claim {
            /// Every claim, in table order.
            pub(crate) const ALL: &[Claim] = &[$(Claim::$name),*];

            /// How many claims the contract has.
            pub(crate) const COUNT: usize = Claim::ALL.len();

            #[inline]
            pub(crate) fn from_name(name: &[u8]) -> Option<Claim> {
                Some(match name {
                    $($wire => Claim::$name,)*
                    _ => return None,
                })
            }

            /// The wire name.
            pub(crate) fn name(self) -> &'static str {
                match self {
                    $(Claim::$name => const { wire($wire) },)*
                }
            }

            /// Whether both parsers refuse a payload without this claim.
            #[cfg(test)]
            pub(crate) fn is_required(self) -> bool {
                match self {
                    $(Claim::$name => $presence::<$kind>(None).is_none(),)*
                }
            }
        }

        /// The fast path's slots: each claim's value, once seen.
        #[derive(Default)]
        pub(crate) struct Scanned {
            $($name: Option<<$kind as Kind>::Stored>,)*
        }

        impl Scanned {
            /// Reads `claim`'s value at the cursor; `None` declines the payload.
            #[inline]
            pub(crate) fn read(&mut self, claim: Claim, s: &mut Scan<'_>) -> Option<()> {
                match claim {
                    $(Claim::$name => self.$name = Some(<$kind>::scan(s)?),)*
                }
                Some(())
            }

            /// The claims with an empty buffer, or `None` if a required one is missing.
            #[inline]
            pub(crate) fn finish(self, items: Vec<Span>) -> Option<Claims> {
                Some(Claims {
                    text: String::new(),
                    items,
                    $($name: $presence::<$kind>(self.$name)?,)*
                    extra: Map::new(),
                })
            }
        }

        /// The strict parser's slots: each claim's owned value, once seen.
        #[derive(Default)]
        pub(crate) struct Found {
            $(pub(crate) $name: Option<<$kind as Kind>::Owned>,)*
        }

        impl Found {
            /// Reads `claim`'s value, or refuses it.
            pub(crate) fn read<'de, A: MapAccess<'de>>(
                &mut self,
                claim: Claim,
                map: &mut A,
            ) -> Result<(), A::Error> {
                match claim {
                    $(Claim::$name => {
                        self.$name = Some(<$kind>::strict(map, const { wire($wire) })?);
                    })*
                }
                Ok(())
            }

            /// The claims, laid into one buffer, or the first missing required claim.
            pub(crate) fn finish<E: de::Error>(
                self,
                extra: Map<String, Value>,
            ) -> Result<Claims, E> {
                let mut arena = Arena::default();
                $(
                    let $name = match self.$name {
                        Some(v) => <$kind>::lay_out(v, &mut arena),
                        None => $presence::<$kind>(None)
                            .ok_or_else(|| E::missing_field(Claim::$name.name()))?,
                    };
                )*
                Ok(Claims {
                    text: arena.text,
                    items: arena.items,
                    $($name,)*
                    extra,
                })
            }
        }
    };
}

claim_table!(schema);

// Each claim is a bit of the parsers' `u32` duplicate mask.
const _: () = assert!(
    Claim::COUNT <= u32::BITS as usize,
    "more claims than bits in the duplicate mask"
);

impl Claim {
    /// The claim's bit in the parsers' duplicate mask.
    #[inline]
    pub(crate) fn bit(self) -> u32 {
        1 << self as u32
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::claims::tests::fixture;
    use crate::claims::{fast_path_agrees, parse_claims_json};

    #[test]
    fn every_name_dispatches_to_its_own_claim_and_bit() {
        let mut bits = 0u32;
        for &c in Claim::ALL {
            assert_eq!(Claim::from_name(c.name().as_bytes()), Some(c));
            assert_eq!(bits & c.bit(), 0, "{c:?}");
            bits |= c.bit();
        }
        assert_eq!(bits.count_ones() as usize, Claim::COUNT);
    }

    /// Both parsers honour the table's `required` / `optional` for every claim.
    #[test]
    fn a_missing_claim_is_refused_exactly_when_the_table_requires_it() {
        let mut full = fixture();
        full["nbf"] = json!(1790000000u64);
        for &c in Claim::ALL {
            let mut v = full.clone();
            let map = v.as_object_mut().unwrap();
            assert!(map.remove(c.name()).is_some(), "no {} to remove", c.name());
            let text = serde_json::to_string(&v).unwrap();
            let fast = fast_path_agrees(&text);
            let parsed = parse_claims_json(text.as_bytes());
            if c == Claim::zone_id {
                // The strict parser's fault mode: parsed, with an empty zone.
                assert!(!fast);
                assert_eq!(parsed.unwrap().zone_id(), "");
            } else if c.is_required() {
                assert!(!fast, "{}", c.name());
                assert!(parsed.is_err(), "{}", c.name());
            } else {
                assert!(fast, "{}", c.name());
                assert!(parsed.is_ok(), "{}", c.name());
            }
        }
    }
}
