//! The verified mandate handed to handlers.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::alg::Algorithm;
pub(crate) use crate::claims::Claims;

/// Whether the mandate's subject is a user or an application (`sub_type`).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubjectType {
    /// A human user.
    User,
    /// An application acting for itself.
    Application,
}

impl SubjectType {
    /// The wire value.
    pub const fn as_str(self) -> &'static str {
        match self {
            SubjectType::User => "user",
            SubjectType::Application => "application",
        }
    }
}

/// Where a string claim sits in [`Claims::text`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: u32,
    pub(crate) len: u32,
}

impl Span {
    /// Marks an absent optional string inside a chain hop.
    pub(crate) const NONE: Span = Span {
        start: u32::MAX,
        len: 0,
    };
}

/// A run of [`Claims::items`]: the strings of one list claim, or three spans per
/// delegation hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Items {
    pub(crate) start: u32,
    pub(crate) end: u32,
}

/// A list claim (`aud`, `target`, `delegation_path`): borrowed strings, in order.
///
/// Like a slice: [`len`](Self::len), [`get`](Self::get), [`iter`](Self::iter),
/// [`contains`](Self::contains), and it compares equal to arrays and slices of `&str`.
///
/// ```
/// # #[tokio::main] async fn main() {
/// # use caracal_verifier::{Requirements, Verifier, testing::TestIssuer};
/// # let sts = TestIssuer::start("zone-1").await.unwrap();
/// # let v = Verifier::builder().issuer(sts.issuer_url()).audience("resource://api")
/// #     .zone("zone-1").build().unwrap();
/// let token = sts.mandate().targets(["resource://api", "resource://files"]).sign();
/// let m = v.verify(&token, &Requirements::new()).await.unwrap();
/// assert_eq!(m.targets(), ["resource://api", "resource://files"]);
/// assert!(m.targets().contains("resource://files"));
/// assert_eq!(m.targets().iter().last(), Some("resource://files"));
/// # }
/// ```
#[derive(Clone, Copy)]
pub struct StrList<'a> {
    text: &'a str,
    spans: &'a [Span],
}

impl<'a> StrList<'a> {
    pub(crate) fn new(text: &'a str, spans: &'a [Span]) -> Self {
        StrList { text, spans }
    }
    /// Number of items.
    pub fn len(&self) -> usize {
        self.spans.len()
    }
    /// Whether there are no items.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
    /// The item at `index`.
    pub fn get(&self, index: usize) -> Option<&'a str> {
        self.spans.get(index).map(|&sp| span_str(self.text, sp))
    }
    /// Whether some item is exactly `item`.
    pub fn contains(&self, item: &str) -> bool {
        self.iter().any(|s| s == item)
    }
    /// The items, in order.
    pub fn iter(&self) -> StrIter<'a> {
        StrIter {
            text: self.text,
            spans: self.spans.iter(),
        }
    }
}

impl<'a> IntoIterator for StrList<'a> {
    type Item = &'a str;
    type IntoIter = StrIter<'a>;
    fn into_iter(self) -> StrIter<'a> {
        self.iter()
    }
}

impl fmt::Debug for StrList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl PartialEq for StrList<'_> {
    fn eq(&self, o: &Self) -> bool {
        self.len() == o.len() && self.iter().eq(o.iter())
    }
}

impl Eq for StrList<'_> {}

impl<S: AsRef<str>> PartialEq<[S]> for StrList<'_> {
    fn eq(&self, o: &[S]) -> bool {
        self.len() == o.len() && self.iter().zip(o).all(|(a, b)| a == b.as_ref())
    }
}

impl<S: AsRef<str>, const N: usize> PartialEq<[S; N]> for StrList<'_> {
    fn eq(&self, o: &[S; N]) -> bool {
        *self == o[..]
    }
}

impl<S: AsRef<str>> PartialEq<Vec<S>> for StrList<'_> {
    fn eq(&self, o: &Vec<S>) -> bool {
        *self == o[..]
    }
}

/// Iterator over a [`StrList`].
#[derive(Clone)]
pub struct StrIter<'a> {
    text: &'a str,
    spans: std::slice::Iter<'a, Span>,
}

impl<'a> Iterator for StrIter<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        self.spans.next().map(|&sp| span_str(self.text, sp))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.spans.size_hint()
    }
}

impl DoubleEndedIterator for StrIter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.spans.next_back().map(|&sp| span_str(self.text, sp))
    }
}

impl ExactSizeIterator for StrIter<'_> {}

impl fmt::Debug for StrIter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.clone()).finish()
    }
}

pub(crate) fn span_str(text: &str, sp: Span) -> &str {
    &text[sp.start as usize..sp.start as usize + sp.len as usize]
}

fn opt_span_str(text: &str, sp: Span) -> Option<&str> {
    (sp != Span::NONE).then(|| span_str(text, sp))
}

/// One hop of a delegation chain (`delegation_chain[i]`), borrowed from its mandate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHop<'a> {
    application_id: &'a str,
    agent_session_id: Option<&'a str>,
    delegation_edge_id: Option<&'a str>,
}

impl<'a> ChainHop<'a> {
    /// The application at this hop.
    pub fn application_id(&self) -> &'a str {
        self.application_id
    }
    /// The governed agent session at this hop, if any.
    pub fn agent_session_id(&self) -> Option<&'a str> {
        self.agent_session_id
    }
    /// The delegation edge leaving this hop, if any.
    pub fn delegation_edge_id(&self) -> Option<&'a str> {
        self.delegation_edge_id
    }
}

/// A mandate's delegation chain, root first: like a slice of [`ChainHop`]s.
#[derive(Clone, Copy)]
pub struct Chain<'a> {
    text: &'a str,
    /// Three per hop.
    spans: &'a [Span],
}

/// The chain of a mandate without `delegation_chain`.
const NO_CHAIN: Chain<'static> = Chain {
    text: "",
    spans: &[],
};

impl<'a> Chain<'a> {
    /// `spans` holds three per hop.
    pub(crate) fn new(text: &'a str, spans: &'a [Span]) -> Self {
        Chain { text, spans }
    }
    /// Number of hops.
    pub fn len(&self) -> usize {
        self.spans.len() / 3
    }
    /// Whether the chain has no hops.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
    /// The hop at `index` (0 is the root).
    pub fn get(&self, index: usize) -> Option<ChainHop<'a>> {
        let at = index.checked_mul(3)?;
        self.spans.get(at..at + 3).map(|h| hop(self.text, h))
    }
    /// The last hop: the presenting application.
    pub fn last(&self) -> Option<ChainHop<'a>> {
        self.len().checked_sub(1).and_then(|i| self.get(i))
    }
    /// The hops, root first.
    pub fn iter(&self) -> ChainIter<'a> {
        ChainIter {
            text: self.text,
            hops: self.spans.chunks_exact(3),
        }
    }
}

fn hop<'a>(text: &'a str, h: &[Span]) -> ChainHop<'a> {
    ChainHop {
        application_id: span_str(text, h[0]),
        agent_session_id: opt_span_str(text, h[1]),
        delegation_edge_id: opt_span_str(text, h[2]),
    }
}

impl<'a> IntoIterator for Chain<'a> {
    type Item = ChainHop<'a>;
    type IntoIter = ChainIter<'a>;
    fn into_iter(self) -> ChainIter<'a> {
        self.iter()
    }
}

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl PartialEq for Chain<'_> {
    fn eq(&self, o: &Self) -> bool {
        self.len() == o.len() && self.iter().eq(o.iter())
    }
}

impl Eq for Chain<'_> {}

/// Iterator over a [`Chain`].
#[derive(Clone)]
pub struct ChainIter<'a> {
    text: &'a str,
    hops: std::slice::ChunksExact<'a, Span>,
}

impl<'a> Iterator for ChainIter<'a> {
    type Item = ChainHop<'a>;
    fn next(&mut self) -> Option<ChainHop<'a>> {
        self.hops.next().map(|h| hop(self.text, h))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.hops.size_hint()
    }
}

impl DoubleEndedIterator for ChainIter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.hops.next_back().map(|h| hop(self.text, h))
    }
}

impl ExactSizeIterator for ChainIter<'_> {}

impl fmt::Debug for ChainIter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.clone()).finish()
    }
}

pub(crate) struct MandateInner {
    pub(crate) claims: Claims,
    /// The key that verified the signature: a mandate dies with it (cache hits check
    /// that it was not retired from the keyset).
    pub(crate) key: Arc<crate::jwk::VerifyKey>,
    pub(crate) alg: Algorithm,
    /// Keyed fingerprints of every revocation anchor, computed once per token.
    pub(crate) anchors: Vec<crate::revocation::Anchor>,
    /// The policy it was verified under: stacked layers reuse it only under the same.
    pub(crate) policy: crate::verifier::PolicyId,
    /// [`Mandate::hops`], counted once: the route's hop limit and the request
    /// context read it on every request.
    pub(crate) hops: u64,
}

/// Effective hops: the largest of `hop_count`, the delegation edges in the chain
/// and the edges in `delegation_path`.
pub(crate) fn effective_hops(c: &Claims) -> u64 {
    let edges = c
        .chain()
        .unwrap_or(NO_CHAIN)
        .iter()
        .filter(|h| h.delegation_edge_id().is_some())
        .count() as u64;
    let path = c.delegation_path().len() as u64;
    c.hop_count().unwrap_or(0).max(edges).max(path)
}

/// A handle on a verified mandate, with a reference count of its own.
///
/// The verified data is shared by every handle; a handle is what a [`Mandate`]
/// counts. The mandate cache gives each thread its own handle on a hot mandate, so
/// threads answering the same token from the cache never write the same reference
/// count (one cache line bouncing between cores would undo the point of a cache).
pub(crate) struct Handle(Arc<MandateInner>);

impl std::ops::Deref for Handle {
    type Target = MandateInner;
    #[inline]
    fn deref(&self) -> &MandateInner {
        &self.0
    }
}

/// A verified mandate. Only the verifier constructs one; cloning is cheap.
///
/// Accessors follow the claim names of the Caracal contract: the authority record
/// is [`sid`](Self::sid), its root [`root_sid`](Self::root_sid), the governed agent
/// session [`agent_session_id`](Self::agent_session_id) and the delegation
/// [`delegation_edge_id`](Self::delegation_edge_id).
#[derive(Clone)]
pub struct Mandate(pub(crate) Arc<Handle>);

impl fmt::Debug for Mandate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.0.claims;
        f.debug_struct("Mandate")
            .field("sub", &c.sub())
            .field("client_id", &c.client_id())
            .field("zone_id", &c.zone_id())
            .field("sid", &c.sid())
            .field("jti", &c.jti())
            .field("exp", &c.exp())
            .field("scope", &c.scope())
            .field("agent_session_id", &c.agent_session_id())
            .field("delegation_edge_id", &c.delegation_edge_id())
            .field("hop_count", &self.hops())
            .finish_non_exhaustive()
    }
}

impl Mandate {
    /// A mandate, verified just now.
    pub(crate) fn new(inner: MandateInner) -> Mandate {
        Mandate(Arc::new(Handle(Arc::new(inner))))
    }

    /// The same mandate through a new handle, whose reference count no other
    /// handle shares.
    pub(crate) fn new_handle(&self) -> Mandate {
        Mandate(Arc::new(Handle(Arc::clone(&self.0.0))))
    }

    fn c(&self) -> &Claims {
        &self.0.claims
    }
    /// `iss`: the issuing STS.
    pub fn issuer(&self) -> &str {
        self.c().iss()
    }
    /// `sub`: the subject.
    pub fn subject(&self) -> &str {
        self.c().sub()
    }
    /// `sub_type`.
    pub fn subject_type(&self) -> SubjectType {
        self.c().sub_type()
    }
    /// `aud`, always as a list.
    pub fn audience(&self) -> StrList<'_> {
        self.c().aud()
    }
    /// `exp`, seconds since the Unix epoch.
    pub fn expires_at(&self) -> u64 {
        self.c().exp()
    }
    /// `iat`, seconds since the Unix epoch.
    pub fn issued_at(&self) -> u64 {
        self.c().iat()
    }
    /// `nbf`, when present.
    pub fn not_before(&self) -> Option<u64> {
        self.c().nbf()
    }
    /// `jti`: the token id.
    pub fn jti(&self) -> &str {
        self.c().jti()
    }
    /// `zone_id`.
    pub fn zone_id(&self) -> &str {
        self.c().zone_id()
    }
    /// `client_id`: the application presenting the mandate.
    pub fn client_id(&self) -> &str {
        self.c().client_id()
    }
    /// `sid`: the authority record id of this STS exchange.
    pub fn sid(&self) -> &str {
        self.c().sid()
    }
    /// `root_sid`: the root authority record of the exchange ancestry.
    pub fn root_sid(&self) -> &str {
        self.c().root_sid()
    }
    /// `use`.
    pub fn token_use(&self) -> &str {
        self.c().token_use()
    }
    /// The raw `scope` string, when present.
    pub fn scope(&self) -> Option<&str> {
        self.c().scope()
    }
    /// The scope tokens: `scope` split on runs of Unicode `White_Space`, as every
    /// Caracal component splits it (Go's `strings.Fields`).
    ///
    /// RFC 6749 §3.3 separates scopes with U+0020, but Caracal's STS copies the
    /// requested scope string into the mandate as sent, and its own verifiers and
    /// policy split on any white space: tab, line feed, NBSP, U+3000 and the rest.
    /// Splitting on U+0020 alone would deny mandates Caracal's policy allowed.
    /// Characters without the property, such as U+200B ZERO WIDTH SPACE and U+FEFF,
    /// stay part of a token. Each token still matches exactly.
    pub fn scopes(&self) -> impl Iterator<Item = &str> + '_ {
        scope_tokens(self.c().scope().unwrap_or(""))
    }
    /// Whether the mandate carries `scope` exactly.
    pub fn has_scope(&self, scope: &str) -> bool {
        !scope.is_empty() && self.scopes().any(|s| s == scope)
    }
    /// `target`: the resources the mandate is bound to.
    pub fn targets(&self) -> StrList<'_> {
        self.c().target()
    }
    /// `agent_session_id`: the governed agent session, when non-empty.
    pub fn agent_session_id(&self) -> Option<&str> {
        self.c().agent_session_id()
    }
    /// `delegation_edge_id`: the delegation, when non-empty.
    pub fn delegation_edge_id(&self) -> Option<&str> {
        self.c().delegation_edge_id()
    }
    /// `source_session_id`.
    pub fn source_session_id(&self) -> Option<&str> {
        self.c().source_session_id()
    }
    /// `target_session_id`.
    pub fn target_session_id(&self) -> Option<&str> {
        self.c().target_session_id()
    }
    /// `delegation_path`: delegation edge ids from the root.
    pub fn delegation_path(&self) -> StrList<'_> {
        self.c().delegation_path()
    }
    /// `delegation_chain`, empty when absent.
    pub fn delegation_chain(&self) -> Chain<'_> {
        self.c().chain().unwrap_or(NO_CHAIN)
    }
    /// `hop_count` as sent.
    pub fn hop_count(&self) -> Option<u64> {
        self.c().hop_count()
    }
    /// Effective hops: the largest of `hop_count`, the delegation edges in the
    /// chain and the edges in `delegation_path`, so no claim can understate the
    /// depth.
    pub fn hops(&self) -> u64 {
        self.0.hops
    }
    /// `delegation_graph_epoch`.
    pub fn delegation_graph_epoch(&self) -> Option<u64> {
        self.c().delegation_graph_epoch()
    }
    /// A claim outside the contract, as JSON.
    pub fn extra_claim(&self, name: &str) -> Option<&Value> {
        self.c().extra.get(name)
    }
    /// The `kid` of the key that verified the signature.
    pub fn key_id(&self) -> &str {
        self.0.key.kid()
    }
    /// The algorithm that verified the signature.
    pub fn algorithm(&self) -> Algorithm {
        self.0.alg
    }
}

/// Split a `scope` string as Go's `strings.Fields` does: on runs of characters with
/// the Unicode `White_Space` property (`char::is_whitespace`), dropping empty tokens.
pub(crate) fn scope_tokens(scope: &str) -> std::str::SplitWhitespace<'_> {
    scope.split_whitespace()
}

#[cfg(test)]
mod tests {
    use super::scope_tokens;

    /// Go's `unicode.IsSpace`, which `strings.Fields` splits on: the Unicode
    /// `White_Space` property, listed out.
    const GO_SPACE: &[(u32, u32)] = &[
        (0x09, 0x0D),
        (0x20, 0x20),
        (0x85, 0x85),
        (0xA0, 0xA0),
        (0x1680, 0x1680),
        (0x2000, 0x200A),
        (0x2028, 0x2029),
        (0x202F, 0x202F),
        (0x205F, 0x205F),
        (0x3000, 0x3000),
    ];

    #[test]
    fn scope_separators_are_exactly_gos_white_space() {
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            let go = GO_SPACE
                .iter()
                .any(|&(lo, hi)| (lo..=hi).contains(&u32::from(c)));
            let scope = format!("a{c}b");
            let tokens: Vec<&str> = scope_tokens(&scope).collect();
            if go {
                assert_eq!(tokens, ["a", "b"], "U+{:04X} separates", u32::from(c));
            } else {
                assert_eq!(tokens, [scope.as_str()], "U+{:04X} does not", u32::from(c));
            }
        }
        for c in ['\u{200B}', '\u{FEFF}', '\u{180E}', '\u{2060}'] {
            assert_eq!(scope_tokens(&format!("a{c}b")).count(), 1);
        }
        assert_eq!(
            scope_tokens(" \t a \u{3000}\u{A0} b\n").collect::<Vec<_>>(),
            ["a", "b"]
        );
    }
}
