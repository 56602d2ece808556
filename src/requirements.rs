//! What a route requires of a mandate, beyond a valid signature and claims.
//!
//! ```
//! use caracal_verifier::Requirements;
//!
//! let payouts = Requirements::new()
//!     .scopes(["billing:payout"])
//!     .targets(["resource://billing"])
//!     .delegation();
//! let orchestrate = Requirements::new()
//!     .scopes(["agents:run"])
//!     .chain_contains(["app-orchestrator"])
//!     .max_hops(2);
//! # let _ = (payouts, orchestrate);
//! ```

use std::time::Duration;

use crate::error::{AuthError, ChainFault, InvalidReason};
use crate::mandate::Mandate;

/// The delegation depth limit when a route sets none: Caracal's Coordinator `MAX_DEPTH`.
pub const DEFAULT_MAX_HOPS: u32 = 10;

/// A route's requirements. The default requires nothing beyond a valid mandate and
/// the default hop limit of 10.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Requirements {
    scopes: Vec<String>,
    targets: Vec<String>,
    agent: bool,
    delegation: bool,
    chain_contains: Vec<String>,
    max_hops: u32,
    single_use: bool,
    /// Seconds, rounded up; 0 is off.
    min_remaining: u64,
}

impl Default for Requirements {
    fn default() -> Self {
        Self::new()
    }
}

impl Requirements {
    /// No route-specific requirements.
    pub fn new() -> Self {
        Self {
            scopes: Vec::new(),
            targets: Vec::new(),
            agent: false,
            delegation: false,
            chain_contains: Vec::new(),
            max_hops: DEFAULT_MAX_HOPS,
            single_use: false,
            min_remaining: 0,
        }
    }

    /// Every listed scope must be in the mandate's `scope` (exact, case-sensitive
    /// token match; tokens are split on any Unicode white space, as Caracal splits
    /// them, see [`Mandate::scopes`]). Denial: 403 `scope_insufficient`, naming the
    /// missing scope.
    pub fn scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes.extend(scopes.into_iter().map(Into::into));
        self
    }

    /// Every listed resource must be in the mandate's `target`. Denial: 401
    /// `invalid_token` with reason `target`, as Caracal's verifiers answer. Checked
    /// after every other requirement, as Caracal's guard does, so a mandate that also
    /// lacks a required scope is 403 `scope_insufficient`.
    pub fn targets<I, S>(mut self, targets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.targets.extend(targets.into_iter().map(Into::into));
        self
    }

    /// Require an agent identity: a non-empty `agent_session_id`.
    /// Denial: 403 `agent_identity_required`.
    pub fn agent(mut self) -> Self {
        self.agent = true;
        self
    }

    /// Require delegated authority: a non-empty `delegation_edge_id`.
    /// Denial: 403 `delegation_required`.
    pub fn delegation(mut self) -> Self {
        self.delegation = true;
        self
    }

    /// Each listed application must be the `application_id` of a hop in the
    /// mandate's `delegation_chain`. Denial: 403 `chain_mismatch`.
    ///
    /// Only chain hops count, as in Caracal's route guard: a mandate minted directly
    /// for the application (its `client_id`) with no chain does not satisfy it, since
    /// accepting it would let an application's own authority stand in for a
    /// delegation through it. A chain's last hop is the presenting client, so a
    /// delegated mandate does count its `client_id`.
    pub fn chain_contains<I, S>(mut self, apps: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.chain_contains.extend(apps.into_iter().map(Into::into));
        self
    }

    /// The most delegation hops allowed, counted as [`Mandate::hops`]: the largest
    /// of `hop_count`, the edges in `delegation_chain` and the edges in
    /// `delegation_path`. Default 10. Denial: 403 `hop_count_exceeded`.
    pub fn max_hops(mut self, hops: u32) -> Self {
        self.max_hops = hops;
        self
    }

    /// Accept each mandate (`iss` + `jti`) once until it expires. A second
    /// presentation is 401 `invalid_token` with reason `replayed`.
    ///
    /// Uses are recorded by the verifier's replay guard
    /// ([`VerifierBuilder::replay_guard`](crate::VerifierBuilder::replay_guard)) and
    /// kept until the mandate's `exp` plus the leeway, by the verifier's clock. The
    /// default guard is in memory and **per replica**: behind several replicas a
    /// mandate can be used once on each, unless they share a `RedisReplayGuard`
    /// (feature `redis`). The in-memory guard never forgets a live use to make room:
    /// when it holds [`replay_capacity`](crate::VerifierBuilder::replay_capacity)
    /// live mandates, new single-use mandates are refused with 503
    /// `revocation_unavailable` and `Retry-After`. Any guard failure fails closed the
    /// same way.
    pub fn single_use(mut self) -> Self {
        self.single_use = true;
        self
    }

    /// Refuse a mandate that expires within `window`: one with less than `window`
    /// left before its `exp`, by the verifier's clock, is 401 `invalid_token` with
    /// reason `expiring`, as Caracal's Gateway refuses it (`denials_expiring`).
    /// A mandate with exactly `window` left is accepted. Default off (zero): a
    /// mandate is accepted until its `exp`.
    ///
    /// Use it for routes that start work outliving the request (a long upload, a
    /// job that calls on with the same mandate), so the work does not begin on
    /// authority that is about to lapse. Sub-second parts round up to the next
    /// second. It is checked by [`Verifier::verify`](crate::Verifier::verify) and
    /// [`Verifier::authorize`](crate::Verifier::authorize) right after the token's
    /// own times, before the other route checks; [`check`](Self::check) has no
    /// clock and does not apply it.
    pub fn min_remaining(mut self, window: Duration) -> Self {
        self.min_remaining = window
            .as_secs()
            .saturating_add(u64::from(window.subsec_nanos() > 0));
        self
    }

    /// The [`min_remaining`](Self::min_remaining) window, if set.
    pub fn min_remaining_window(&self) -> Option<Duration> {
        (self.min_remaining > 0).then(|| Duration::from_secs(self.min_remaining))
    }

    /// Refuse `m` if it expires within the [`min_remaining`](Self::min_remaining)
    /// window of `now` (seconds since the epoch).
    pub(crate) fn check_remaining(&self, m: &Mandate, now: u64) -> Result<(), AuthError> {
        if self.min_remaining > 0 && m.expires_at().saturating_sub(now) < self.min_remaining {
            return Err(AuthError::invalid(InvalidReason::Expiring));
        }
        Ok(())
    }

    /// The required scopes.
    pub fn required_scopes(&self) -> &[String] {
        &self.scopes
    }

    /// Whether the route is single-use.
    pub fn is_single_use(&self) -> bool {
        self.single_use
    }

    /// Merge another set of requirements into this one (both must hold).
    pub fn and(mut self, other: &Requirements) -> Self {
        self.scopes.extend(other.scopes.iter().cloned());
        self.targets.extend(other.targets.iter().cloned());
        self.agent |= other.agent;
        self.delegation |= other.delegation;
        self.chain_contains
            .extend(other.chain_contains.iter().cloned());
        self.max_hops = self.max_hops.min(other.max_hops);
        self.single_use |= other.single_use;
        self.min_remaining = self.min_remaining.max(other.min_remaining);
        self
    }

    /// Check a verified mandate, in the order Caracal's route guard runs: scopes,
    /// agent session, delegation (and the chain's consistency), required chain
    /// members, the hop limit, then targets. The first failure is the answer, so a
    /// mandate lacking both a required scope and a target is 403
    /// `scope_insufficient`, as Caracal answers it.
    pub fn check(&self, m: &Mandate) -> Result<(), AuthError> {
        if let Some(missing) = self.scopes.iter().find(|s| !m.has_scope(s)) {
            return Err(AuthError::ScopeInsufficient {
                missing: missing.clone(),
                required: self.scopes.clone(),
            });
        }
        if self.agent && m.agent_session_id().is_none() {
            return Err(AuthError::AgentIdentityRequired);
        }
        if self.delegation && m.delegation_edge_id().is_none() {
            return Err(AuthError::DelegationRequired);
        }
        check_chain_consistency(m)?;
        for app in &self.chain_contains {
            let present = m
                .delegation_chain()
                .iter()
                .any(|h| h.application_id() == app);
            if !present {
                return Err(AuthError::ChainMismatch {
                    fault: ChainFault::MissingApplication(app.clone()),
                });
            }
        }
        let hops = m.hops();
        if hops > u64::from(self.max_hops) {
            return Err(AuthError::HopCountExceeded {
                hops,
                limit: u64::from(self.max_hops),
            });
        }
        if !self
            .targets
            .iter()
            .all(|t| m.targets().iter().any(|x| x == t))
        {
            return Err(AuthError::invalid(InvalidReason::Target));
        }
        Ok(())
    }
}

/// A chain, when present, must end at the presenting client and its agent session,
/// and must contain the mandate's delegation edge.
pub(crate) fn check_chain_consistency(m: &Mandate) -> Result<(), AuthError> {
    let chain = m.delegation_chain();
    let Some(last) = chain.last() else {
        return Ok(());
    };
    let fault = if last.application_id() != m.client_id() {
        Some(ChainFault::LastHopClient)
    } else if matches!((last.agent_session_id(), m.agent_session_id()), (Some(a), Some(b)) if a != b)
    {
        Some(ChainFault::LastHopSession)
    } else if m
        .delegation_edge_id()
        .is_some_and(|e| !chain.iter().any(|h| h.delegation_edge_id() == Some(e)))
    {
        Some(ChainFault::EdgeNotInChain)
    } else {
        None
    };
    match fault {
        Some(fault) => Err(AuthError::ChainMismatch { fault }),
        None => Ok(()),
    }
}
