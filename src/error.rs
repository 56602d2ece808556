//! Denials and configuration errors.
//!
//! Every denial is an [`AuthError`]. It knows its stable wire [`code`](AuthError::code),
//! its HTTP [`status`](AuthError::status), a description, a hint for the caller and
//! structured [`details`](AuthError::details). None of them ever contains the token.
//!
//! ```
//! use caracal_verifier::{AuthError, ErrorCode};
//!
//! let err = AuthError::MissingToken;
//! assert_eq!(err.code(), ErrorCode::MissingToken);
//! assert_eq!(err.code().as_str(), "missing_token");
//! assert_eq!(err.status().as_u16(), 401);
//! ```

use std::fmt;

use http::StatusCode;
use serde_json::{Map, Value, json};

/// The stable wire codes of denials.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 401: no bearer token was presented.
    MissingToken,
    /// 401: the token is malformed, badly signed, expired or otherwise invalid.
    InvalidToken,
    /// 401: the token's `zone_id` is not the configured zone.
    ZoneInvalid,
    /// 401: an anchor of the mandate has been revoked.
    SessionRevoked,
    /// 401: the mandate predates the zone's current delegation graph epoch.
    DelegationStale,
    /// 403: a scope the route requires is missing.
    ScopeInsufficient,
    /// 403: the route requires an agent session.
    AgentIdentityRequired,
    /// 403: the route requires delegated authority.
    DelegationRequired,
    /// 403: the delegation chain lacks a required application or is inconsistent.
    ChainMismatch,
    /// 403: the delegation chain is longer than the route allows.
    HopCountExceeded,
    /// 413: the token is larger than the configured cap.
    PayloadTooLarge,
    /// 503: the zone's signing keys cannot be obtained from the STS.
    StsUnavailable,
    /// 503: the revocation feed is not fresh, so revocation cannot be checked.
    RevocationUnavailable,
}

impl ErrorCode {
    /// Every code, in documentation order. A slice, so that a new code is not a
    /// breaking change.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::MissingToken,
        ErrorCode::InvalidToken,
        ErrorCode::ZoneInvalid,
        ErrorCode::SessionRevoked,
        ErrorCode::DelegationStale,
        ErrorCode::ScopeInsufficient,
        ErrorCode::AgentIdentityRequired,
        ErrorCode::DelegationRequired,
        ErrorCode::ChainMismatch,
        ErrorCode::HopCountExceeded,
        ErrorCode::PayloadTooLarge,
        ErrorCode::StsUnavailable,
        ErrorCode::RevocationUnavailable,
    ];

    /// The wire string, e.g. `"scope_insufficient"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MissingToken => "missing_token",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::ZoneInvalid => "zone_invalid",
            ErrorCode::SessionRevoked => "session_revoked",
            ErrorCode::DelegationStale => "delegation_stale",
            ErrorCode::ScopeInsufficient => "scope_insufficient",
            ErrorCode::AgentIdentityRequired => "agent_identity_required",
            ErrorCode::DelegationRequired => "delegation_required",
            ErrorCode::ChainMismatch => "chain_mismatch",
            ErrorCode::HopCountExceeded => "hop_count_exceeded",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::StsUnavailable => "sts_unavailable",
            ErrorCode::RevocationUnavailable => "revocation_unavailable",
        }
    }

    /// The HTTP status that goes with the code.
    pub const fn status(self) -> StatusCode {
        match self {
            ErrorCode::MissingToken
            | ErrorCode::InvalidToken
            | ErrorCode::ZoneInvalid
            | ErrorCode::SessionRevoked
            | ErrorCode::DelegationStale => StatusCode::UNAUTHORIZED,
            ErrorCode::ScopeInsufficient
            | ErrorCode::AgentIdentityRequired
            | ErrorCode::DelegationRequired
            | ErrorCode::ChainMismatch
            | ErrorCode::HopCountExceeded => StatusCode::FORBIDDEN,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::StsUnavailable | ErrorCode::RevocationUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// What the caller should do about it.
    pub const fn hint(self) -> &'static str {
        match self {
            ErrorCode::MissingToken => "send the mandate as `Authorization: Bearer <mandate>`",
            ErrorCode::InvalidToken => {
                "obtain a fresh mandate from the STS and check the system clock"
            }
            ErrorCode::ZoneInvalid => "request a mandate for the zone this service trusts",
            ErrorCode::SessionRevoked => "re-authenticate to obtain a new session",
            ErrorCode::DelegationStale => {
                "re-obtain the mandate; the delegation graph changed since it was issued"
            }
            ErrorCode::ScopeInsufficient => "request a mandate that carries the required scope",
            ErrorCode::AgentIdentityRequired => "call from an agent session",
            ErrorCode::DelegationRequired => "obtain the mandate through the delegation flow",
            ErrorCode::ChainMismatch => {
                "re-obtain the mandate through a chain that includes the required application"
            }
            ErrorCode::HopCountExceeded => "reduce the delegation depth",
            ErrorCode::PayloadTooLarge => "send a smaller mandate",
            ErrorCode::StsUnavailable => "retry with backoff; the STS keyset is unreachable",
            ErrorCode::RevocationUnavailable => {
                "retry with backoff; the revocation feed is not current"
            }
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the layer's JSON body spells denials: the `error` value and the hint key.
///
/// [`AuthError::code`] and [`ErrorCode::as_str`] always give the documented codes;
/// a spelling changes only the body the default renderer writes. The
/// `WWW-Authenticate` header's RFC 6750 `error=` values (`invalid_token`,
/// `insufficient_scope`) are the same under every spelling.
///
/// ```
/// use caracal_verifier::{AuthError, CodeSpelling};
///
/// let err = AuthError::AgentIdentityRequired;
/// let body = err.to_json_spelled("req-1", CodeSpelling::CaracalSdk);
/// assert_eq!(body["error"], "session_required");
/// assert!(body["error_hint"].is_string());
/// assert_eq!(err.to_json("req-1")["error"], "agent_identity_required");
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CodeSpelling {
    /// The documented codes (Caracal's "Error Codes" page), with the hint under
    /// `hint`. The default.
    #[default]
    Documented,
    /// As Caracal's TypeScript, Go and Python verifier packages answer, for clients
    /// built on them: `invalid_zone` for `zone_invalid`, `insufficient_scope` for
    /// `scope_insufficient`, `session_required` for `agent_identity_required`, and
    /// the hint under `error_hint` (on every denial). Other codes are unchanged.
    CaracalSdk,
}

impl CodeSpelling {
    /// The `error` value for `code` in this spelling.
    pub const fn code(self, code: ErrorCode) -> &'static str {
        match (self, code) {
            (CodeSpelling::CaracalSdk, ErrorCode::ZoneInvalid) => "invalid_zone",
            (CodeSpelling::CaracalSdk, ErrorCode::ScopeInsufficient) => "insufficient_scope",
            (CodeSpelling::CaracalSdk, ErrorCode::AgentIdentityRequired) => "session_required",
            _ => code.as_str(),
        }
    }

    /// The JSON key of the hint: `hint`, or `error_hint` for Caracal's SDKs.
    pub const fn hint_key(self) -> &'static str {
        match self {
            CodeSpelling::Documented => "hint",
            CodeSpelling::CaracalSdk => "error_hint",
        }
    }
}

/// Why a token was `invalid_token`. Sent as `details.reason`.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvalidReason {
    /// Not a compact JWS of three canonical base64url segments.
    Malformed,
    /// The JOSE header is invalid, carries `crit`/`b64`, or lacks `kid`.
    Header,
    /// The algorithm is not accepted or does not match the key.
    Algorithm,
    /// No usable key in the zone's keyset has the token's `kid`.
    UnknownKey,
    /// The signature does not verify.
    Signature,
    /// `exp` has passed (`now >= exp`; no leeway applies to `exp`).
    Expired,
    /// `nbf` is in the future, beyond leeway.
    NotYetValid,
    /// `iat` is in the future, beyond leeway.
    IssuedInFuture,
    /// `iss` is not the configured issuer.
    Issuer,
    /// `aud` does not contain the configured audience.
    Audience,
    /// `use` is not the accepted token use.
    Use,
    /// A claim is missing, duplicated or of the wrong type.
    Claims,
    /// A target the route requires is not in `target`.
    Target,
    /// A single-use mandate was presented again.
    Replayed,
    /// The mandate expires sooner than the route's
    /// [`min_remaining`](crate::Requirements::min_remaining) window (the Gateway's
    /// `denials_expiring`).
    Expiring,
}

impl InvalidReason {
    /// The wire string, e.g. `"expired"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            InvalidReason::Malformed => "malformed",
            InvalidReason::Header => "header",
            InvalidReason::Algorithm => "algorithm",
            InvalidReason::UnknownKey => "unknown_key",
            InvalidReason::Signature => "signature",
            InvalidReason::Expired => "expired",
            InvalidReason::NotYetValid => "not_yet_valid",
            InvalidReason::IssuedInFuture => "issued_in_future",
            InvalidReason::Issuer => "issuer",
            InvalidReason::Audience => "audience",
            InvalidReason::Use => "use",
            InvalidReason::Claims => "claims",
            InvalidReason::Target => "target",
            InvalidReason::Replayed => "replayed",
            InvalidReason::Expiring => "expiring",
        }
    }
}

impl fmt::Display for InvalidReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which part of a delegation chain failed.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainFault {
    /// The route requires this application and the chain does not contain it.
    MissingApplication(String),
    /// The last hop's `application_id` is not the mandate's `client_id`.
    LastHopClient,
    /// The last hop's `agent_session_id` is not the mandate's `agent_session_id`.
    LastHopSession,
    /// The mandate's `delegation_edge_id` does not appear in the chain.
    EdgeNotInChain,
}

impl fmt::Display for ChainFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainFault::MissingApplication(app) => write!(f, "chain lacks application {app}"),
            ChainFault::LastHopClient => f.write_str("last hop is not the client"),
            ChainFault::LastHopSession => f.write_str("last hop is not the agent session"),
            ChainFault::EdgeNotInChain => f.write_str("delegation edge is not in the chain"),
        }
    }
}

/// The revocation anchor that matched.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AnchorKind {
    /// The authority record (`sid`).
    Sid,
    /// The root authority record (`root_sid`).
    RootSid,
    /// The governed agent session (`agent_session_id`).
    AgentSession,
    /// The delegation edge (`delegation_edge_id`).
    DelegationEdge,
    /// An agent session of an upstream chain hop.
    ChainSession,
    /// A delegation edge of an upstream chain hop.
    ChainEdge,
    /// A delegation edge listed in `delegation_path` (the edges from the root),
    /// including mandates that carry a path but no chain.
    PathEdge,
    /// The delegating parent session (`source_session_id`).
    SourceSession,
}

impl AnchorKind {
    /// The claim name the anchor comes from.
    pub const fn as_str(self) -> &'static str {
        match self {
            AnchorKind::Sid => "sid",
            AnchorKind::RootSid => "root_sid",
            AnchorKind::AgentSession => "agent_session_id",
            AnchorKind::DelegationEdge => "delegation_edge_id",
            AnchorKind::ChainSession => "delegation_chain.agent_session_id",
            AnchorKind::ChainEdge => "delegation_chain.delegation_edge_id",
            AnchorKind::PathEdge => "delegation_path",
            AnchorKind::SourceSession => "source_session_id",
        }
    }
}

/// A denial. Its [`code`](Self::code) is stable; its message is for people.
///
/// The token never appears in `Display` or `Debug`.
///
/// Variants with fields are `#[non_exhaustive]`, so a field can be added without a
/// breaking change: match them with `..`, and read their context with
/// [`code`](Self::code), [`reason`](Self::reason) or [`details`](Self::details).
///
/// ```
/// use caracal_verifier::{AuthError, InvalidReason};
///
/// fn is_replay(err: &AuthError) -> bool {
///     matches!(err, AuthError::InvalidToken { reason: InvalidReason::Replayed, .. })
/// }
/// assert!(!is_replay(&AuthError::MissingToken));
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No bearer token was presented.
    #[error("missing bearer token")]
    MissingToken,
    /// The token is invalid; `reason` says how.
    #[error("invalid token: {reason}")]
    #[non_exhaustive]
    InvalidToken {
        /// The failed check.
        reason: InvalidReason,
    },
    /// The token's `zone_id` is not the configured zone.
    #[error("zone mismatch")]
    ZoneInvalid,
    /// An anchor of the mandate is revoked.
    #[error("session revoked ({})", anchor.as_str())]
    #[non_exhaustive]
    SessionRevoked {
        /// Which anchor matched.
        anchor: AnchorKind,
    },
    /// The mandate's delegation graph epoch is below the zone's recorded epoch.
    #[error("delegation epoch {token} is below {current}")]
    #[non_exhaustive]
    DelegationStale {
        /// The mandate's `delegation_graph_epoch`.
        token: u64,
        /// The zone's recorded epoch.
        current: u64,
    },
    /// A required scope is missing.
    #[error("missing scope {missing}")]
    #[non_exhaustive]
    ScopeInsufficient {
        /// The first required scope the mandate lacks.
        missing: String,
        /// Every scope the route requires.
        required: Vec<String>,
    },
    /// The route requires an agent session.
    #[error("agent identity required")]
    AgentIdentityRequired,
    /// The route requires delegated authority.
    #[error("delegation required")]
    DelegationRequired,
    /// The chain lacks a required application or is inconsistent.
    #[error("delegation chain mismatch: {fault}")]
    #[non_exhaustive]
    ChainMismatch {
        /// What was wrong.
        fault: ChainFault,
    },
    /// The delegation chain has more hops than allowed.
    #[error("{hops} delegation hops exceed the limit of {limit}")]
    #[non_exhaustive]
    HopCountExceeded {
        /// Hops in the mandate: max(`hop_count`, edges in the chain).
        hops: u64,
        /// The route's limit.
        limit: u64,
    },
    /// The token exceeds the size cap.
    #[error("token of {size} bytes exceeds the {limit} byte limit")]
    #[non_exhaustive]
    PayloadTooLarge {
        /// The token's size in bytes.
        size: usize,
        /// The configured cap.
        limit: usize,
    },
    /// The zone's keyset cannot be obtained.
    #[error("sts unavailable: {reason}")]
    #[non_exhaustive]
    StsUnavailable {
        /// Why, e.g. `"no keys fetched yet"`. Never contains secrets.
        reason: &'static str,
    },
    /// The revocation feed is not fresh.
    #[error("revocation feed unavailable")]
    RevocationUnavailable,
}

impl AuthError {
    pub(crate) const fn invalid(reason: InvalidReason) -> Self {
        AuthError::InvalidToken { reason }
    }

    /// The stable wire code.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::MissingToken => ErrorCode::MissingToken,
            AuthError::InvalidToken { .. } => ErrorCode::InvalidToken,
            AuthError::ZoneInvalid => ErrorCode::ZoneInvalid,
            AuthError::SessionRevoked { .. } => ErrorCode::SessionRevoked,
            AuthError::DelegationStale { .. } => ErrorCode::DelegationStale,
            AuthError::ScopeInsufficient { .. } => ErrorCode::ScopeInsufficient,
            AuthError::AgentIdentityRequired => ErrorCode::AgentIdentityRequired,
            AuthError::DelegationRequired => ErrorCode::DelegationRequired,
            AuthError::ChainMismatch { .. } => ErrorCode::ChainMismatch,
            AuthError::HopCountExceeded { .. } => ErrorCode::HopCountExceeded,
            AuthError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            AuthError::StsUnavailable { .. } => ErrorCode::StsUnavailable,
            AuthError::RevocationUnavailable => ErrorCode::RevocationUnavailable,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.code().status()
    }

    /// A human-readable description (the `Display` text).
    pub fn description(&self) -> String {
        self.to_string()
    }

    /// What the caller should do.
    pub fn hint(&self) -> &'static str {
        self.code().hint()
    }

    /// The `invalid_token` reason, if this is one.
    pub fn reason(&self) -> Option<InvalidReason> {
        match self {
            AuthError::InvalidToken { reason } => Some(*reason),
            _ => None,
        }
    }

    /// Structured context for the response's `details` object. Values come from the
    /// route configuration or from fixed vocabularies, never from the raw token.
    pub fn details(&self) -> Map<String, Value> {
        let value = match self {
            AuthError::InvalidToken { reason } => json!({ "reason": reason.as_str() }),
            AuthError::SessionRevoked { anchor } => json!({ "anchor": anchor.as_str() }),
            AuthError::DelegationStale { token, current } => {
                json!({ "token_epoch": token, "current_epoch": current })
            }
            AuthError::ScopeInsufficient { missing, required } => {
                json!({ "missing_scope": missing, "required_scopes": required })
            }
            AuthError::ChainMismatch { fault } => match fault {
                ChainFault::MissingApplication(app) => {
                    json!({ "reason": "missing_application", "application_id": app })
                }
                ChainFault::LastHopClient => json!({ "reason": "last_hop_client" }),
                ChainFault::LastHopSession => json!({ "reason": "last_hop_session" }),
                ChainFault::EdgeNotInChain => json!({ "reason": "edge_not_in_chain" }),
            },
            AuthError::HopCountExceeded { hops, limit } => {
                json!({ "hops": hops, "max_hops": limit })
            }
            AuthError::PayloadTooLarge { size, limit } => {
                json!({ "size": size, "limit": limit })
            }
            AuthError::StsUnavailable { reason } => json!({ "reason": reason }),
            _ => json!({}),
        };
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    /// The JSON error body: `{"error", "error_description", "hint", "requestId",
    /// "details"}`, with the documented codes.
    pub fn to_json(&self, request_id: &str) -> Value {
        self.to_json_spelled(request_id, CodeSpelling::Documented)
    }

    /// The JSON error body in `spelling`: the `error` value and the hint's key
    /// follow it; everything else is as in [`to_json`](Self::to_json).
    pub fn to_json_spelled(&self, request_id: &str, spelling: CodeSpelling) -> Value {
        let mut body = Map::new();
        body.insert("error".into(), spelling.code(self.code()).into());
        body.insert("error_description".into(), self.description().into());
        body.insert(spelling.hint_key().into(), self.hint().into());
        body.insert("requestId".into(), request_id.into());
        body.insert("details".into(), Value::Object(self.details()));
        Value::Object(body)
    }
}

/// A setting was missing or wrong when building a verifier.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A required setting was not given.
    #[error("missing setting `{0}`")]
    Missing(&'static str),
    /// A setting has an unusable value.
    #[error("invalid setting `{setting}`: {reason}")]
    Invalid {
        /// The setting's name.
        setting: &'static str,
        /// Why it is unusable.
        reason: String,
    },
    /// An environment variable is missing or unusable.
    #[error("environment variable `{var}`: {reason}")]
    Env {
        /// The variable's name.
        var: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(setting: &'static str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            setting,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_documented_statuses() {
        let expect = [
            ("missing_token", 401),
            ("invalid_token", 401),
            ("zone_invalid", 401),
            ("session_revoked", 401),
            ("delegation_stale", 401),
            ("scope_insufficient", 403),
            ("agent_identity_required", 403),
            ("delegation_required", 403),
            ("chain_mismatch", 403),
            ("hop_count_exceeded", 403),
            ("payload_too_large", 413),
            ("sts_unavailable", 503),
            ("revocation_unavailable", 503),
        ];
        for (code, (name, status)) in ErrorCode::ALL.iter().zip(expect) {
            assert_eq!(code.as_str(), name);
            assert_eq!(code.status().as_u16(), status, "{name}");
        }
    }

    #[test]
    fn the_sdk_spelling_renames_three_codes_and_the_hint() {
        let sdk = CodeSpelling::CaracalSdk;
        let renamed = [
            (ErrorCode::ZoneInvalid, "invalid_zone"),
            (ErrorCode::ScopeInsufficient, "insufficient_scope"),
            (ErrorCode::AgentIdentityRequired, "session_required"),
        ];
        for &code in ErrorCode::ALL {
            let want = renamed
                .iter()
                .find(|(c, _)| *c == code)
                .map_or(code.as_str(), |(_, s)| s);
            assert_eq!(sdk.code(code), want);
            assert_eq!(CodeSpelling::Documented.code(code), code.as_str());
        }
        let body = AuthError::ZoneInvalid.to_json_spelled("r", sdk);
        assert_eq!(body["error"], "invalid_zone");
        assert_eq!(body["error_hint"], ErrorCode::ZoneInvalid.hint());
        assert!(body.get("hint").is_none());
        let body = AuthError::ZoneInvalid.to_json("r");
        assert_eq!(body["error"], "zone_invalid");
        assert!(body.get("error_hint").is_none());
        assert_eq!(AuthError::ZoneInvalid.code().as_str(), "zone_invalid");
    }

    #[test]
    fn details_name_missing_scope() {
        let err = AuthError::ScopeInsufficient {
            missing: "billing:payout".into(),
            required: vec!["billing:payout".into()],
        };
        let body = err.to_json("req-1");
        assert_eq!(body["error"], "scope_insufficient");
        assert_eq!(body["requestId"], "req-1");
        assert_eq!(body["details"]["missing_scope"], "billing:payout");
    }
}
