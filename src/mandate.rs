//! The verified mandate handed to handlers.

use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::jwk::Algorithm;

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

/// One hop of a delegation chain (`delegation_chain[i]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHop {
    pub(crate) application_id: String,
    pub(crate) agent_session_id: Option<String>,
    pub(crate) delegation_edge_id: Option<String>,
}

impl ChainHop {
    /// The application at this hop.
    pub fn application_id(&self) -> &str {
        &self.application_id
    }
    /// The governed agent session at this hop, if any.
    pub fn agent_session_id(&self) -> Option<&str> {
        self.agent_session_id.as_deref()
    }
    /// The delegation edge leaving this hop, if any.
    pub fn delegation_edge_id(&self) -> Option<&str> {
        self.delegation_edge_id.as_deref()
    }
}

/// The claims of a mandate, as parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claims {
    pub(crate) iss: String,
    pub(crate) sub: String,
    pub(crate) aud: Vec<String>,
    pub(crate) exp: u64,
    pub(crate) iat: u64,
    pub(crate) nbf: Option<u64>,
    pub(crate) jti: String,
    pub(crate) zone_id: String,
    pub(crate) client_id: String,
    pub(crate) sid: String,
    pub(crate) root_sid: String,
    pub(crate) token_use: String,
    pub(crate) sub_type: SubjectType,
    pub(crate) scope: Option<String>,
    pub(crate) target: Vec<String>,
    pub(crate) agent_session_id: Option<String>,
    pub(crate) delegation_edge_id: Option<String>,
    pub(crate) source_session_id: Option<String>,
    pub(crate) target_session_id: Option<String>,
    pub(crate) delegation_path: Vec<String>,
    pub(crate) delegation_chain: Option<Vec<ChainHop>>,
    pub(crate) hop_count: Option<u64>,
    pub(crate) delegation_graph_epoch: Option<u64>,
    pub(crate) extra: Map<String, Value>,
}

pub(crate) struct MandateInner {
    pub(crate) claims: Claims,
    pub(crate) kid: String,
    pub(crate) alg: Algorithm,
    /// Keyed fingerprints of every revocation anchor, computed once per token.
    pub(crate) anchors: Box<[crate::revocation::Anchor]>,
}

/// A verified mandate. Only the verifier constructs one; cloning is cheap.
///
/// Accessors follow the claim names of the Caracal contract: the authority record
/// is [`sid`](Self::sid), its root [`root_sid`](Self::root_sid), the governed agent
/// session [`agent_session_id`](Self::agent_session_id) and the delegation
/// [`delegation_edge_id`](Self::delegation_edge_id).
#[derive(Clone)]
pub struct Mandate(pub(crate) Arc<MandateInner>);

impl fmt::Debug for Mandate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.0.claims;
        f.debug_struct("Mandate")
            .field("sub", &c.sub)
            .field("client_id", &c.client_id)
            .field("zone_id", &c.zone_id)
            .field("sid", &c.sid)
            .field("jti", &c.jti)
            .field("exp", &c.exp)
            .field("scope", &c.scope)
            .field("agent_session_id", &c.agent_session_id)
            .field("delegation_edge_id", &c.delegation_edge_id)
            .field("hop_count", &self.hops())
            .finish_non_exhaustive()
    }
}

impl Mandate {
    fn c(&self) -> &Claims {
        &self.0.claims
    }
    /// `iss`: the issuing STS.
    pub fn issuer(&self) -> &str {
        &self.c().iss
    }
    /// `sub`: the subject.
    pub fn subject(&self) -> &str {
        &self.c().sub
    }
    /// `sub_type`.
    pub fn subject_type(&self) -> SubjectType {
        self.c().sub_type
    }
    /// `aud`, always as a list.
    pub fn audience(&self) -> &[String] {
        &self.c().aud
    }
    /// `exp`, seconds since the Unix epoch.
    pub fn expires_at(&self) -> u64 {
        self.c().exp
    }
    /// `iat`, seconds since the Unix epoch.
    pub fn issued_at(&self) -> u64 {
        self.c().iat
    }
    /// `nbf`, when present.
    pub fn not_before(&self) -> Option<u64> {
        self.c().nbf
    }
    /// `jti`: the token id.
    pub fn jti(&self) -> &str {
        &self.c().jti
    }
    /// `zone_id`.
    pub fn zone_id(&self) -> &str {
        &self.c().zone_id
    }
    /// `client_id`: the application presenting the mandate.
    pub fn client_id(&self) -> &str {
        &self.c().client_id
    }
    /// `sid`: the authority record id of this STS exchange.
    pub fn sid(&self) -> &str {
        &self.c().sid
    }
    /// `root_sid`: the root authority record of the exchange ancestry.
    pub fn root_sid(&self) -> &str {
        &self.c().root_sid
    }
    /// `use`.
    pub fn token_use(&self) -> &str {
        &self.c().token_use
    }
    /// The raw `scope` string, when present.
    pub fn scope(&self) -> Option<&str> {
        self.c().scope.as_deref()
    }
    /// The scope tokens (RFC 6749 §3.3, space separated).
    pub fn scopes(&self) -> impl Iterator<Item = &str> + '_ {
        self.c()
            .scope
            .as_deref()
            .unwrap_or("")
            .split(' ')
            .filter(|s| !s.is_empty())
    }
    /// Whether the mandate carries `scope` exactly.
    pub fn has_scope(&self, scope: &str) -> bool {
        !scope.is_empty() && self.scopes().any(|s| s == scope)
    }
    /// `target`: the resources the mandate is bound to.
    pub fn targets(&self) -> &[String] {
        &self.c().target
    }
    /// `agent_session_id`: the governed agent session, when non-empty.
    pub fn agent_session_id(&self) -> Option<&str> {
        self.c().agent_session_id.as_deref()
    }
    /// `delegation_edge_id`: the delegation, when non-empty.
    pub fn delegation_edge_id(&self) -> Option<&str> {
        self.c().delegation_edge_id.as_deref()
    }
    /// `source_session_id`.
    pub fn source_session_id(&self) -> Option<&str> {
        self.c().source_session_id.as_deref()
    }
    /// `target_session_id`.
    pub fn target_session_id(&self) -> Option<&str> {
        self.c().target_session_id.as_deref()
    }
    /// `delegation_path`: delegation edge ids from the root.
    pub fn delegation_path(&self) -> &[String] {
        &self.c().delegation_path
    }
    /// `delegation_chain`, empty when absent.
    pub fn delegation_chain(&self) -> &[ChainHop] {
        self.c().delegation_chain.as_deref().unwrap_or(&[])
    }
    /// `hop_count` as sent.
    pub fn hop_count(&self) -> Option<u64> {
        self.c().hop_count
    }
    /// Effective hops: the larger of `hop_count` and the delegation edges in the chain.
    pub fn hops(&self) -> u64 {
        let edges = self
            .delegation_chain()
            .iter()
            .filter(|h| h.delegation_edge_id.is_some())
            .count() as u64;
        self.c().hop_count.unwrap_or(0).max(edges)
    }
    /// `delegation_graph_epoch`.
    pub fn delegation_graph_epoch(&self) -> Option<u64> {
        self.c().delegation_graph_epoch
    }
    /// A claim outside the contract, as JSON.
    pub fn extra_claim(&self, name: &str) -> Option<&Value> {
        self.c().extra.get(name)
    }
    /// The `kid` of the key that verified the signature.
    pub fn key_id(&self) -> &str {
        &self.0.kid
    }
    /// The algorithm that verified the signature.
    pub fn algorithm(&self) -> Algorithm {
        self.0.alg
    }
}
