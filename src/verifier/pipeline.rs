//! The `verify` pipeline. Read top to bottom, it is the order of the checks: the
//! entry points first (`verify`, `authenticate`, `authorize`), then each step in the
//! order `verify` takes it: size and cache, token and signature, times, registered
//! claims and zone, the route, revocation, and the single-use record.

use std::time::Instant;

use tracing::Instrument as _;
use tracing::field::Empty;

use super::Verifier;
use crate::claims::parse_payload;
use crate::error::{AnchorKind, AuthError, InvalidReason};
use crate::mandate::{Claims, Mandate, MandateInner, effective_hops};
use crate::requirements::Requirements;
use crate::revocation::{Anchor, fingerprint};
use crate::stats::{self, Sample};
use crate::token::{self, HeaderAlg};

/// The tracing target of the per-verification span.
const SPAN_TARGET: &str = "caracal_verifier::verify";

/// The longest a verified mandate stays in the cache, whatever its `exp`.
const MAX_CACHE_TTL_SECS: u64 = 24 * 3600;

/// `verify`'s checks in order, counted for the metrics, as a `(result, cache_hit)`
/// pair: a macro so `verify` runs them in its own future (one level of `async` less
/// on the warm path than a helper function).
macro_rules! observed_checks {
    ($v:expr, $token:expr, $reqs:expr) => {{
        let v: &Verifier = $v;
        let reqs: &Requirements = $reqs;
        // A warm verification is timed only when sampled (one in 128, when a metrics
        // publisher reads this verifier's latency); a cold one is timed around the
        // signature check.
        let started = (v.inner.sample_latency && stats::sample_warm()).then(Instant::now);
        let mut cache_hit = None;
        // One clock read for the whole decision; the times were just checked by
        // `authenticate_at`, so only the route and revocation remain.
        let now = v.inner.clock.now().as_secs();
        let result = match v.authenticate_at($token, now, &mut cache_hit).await {
            Ok(m) => match v.route_and_revocation(&m, reqs, now) {
                Ok(()) if reqs.is_single_use() => v.consume(&m).await.map(|()| m),
                Ok(()) => Ok(m),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        stats::record(result.as_ref().map(drop), cache_hit);
        if let (Some(t0), Some(true)) = (started, cache_hit) {
            stats::sample(Sample {
                cold: false,
                elapsed: t0.elapsed(),
            });
        }
        (result, cache_hit)
    }};
}

impl Verifier {
    /// Verify a mandate and check it against a route's requirements.
    ///
    /// The checks run in Caracal's order, and the first failure is the answer:
    ///
    /// 1. the token: size (413 `payload_too_large`), structure, header, key and
    ///    signature (401 `invalid_token`);
    /// 2. registered claims: `exp` (no leeway), `nbf` and `iat` (with the leeway),
    ///    `iss`, `aud`, then `use` (401 `invalid_token`);
    /// 3. `zone_id` (401 `zone_invalid`, also when it is missing or not a string);
    /// 4. the route: its [`min_remaining`](Requirements::min_remaining) window, if
    ///    any (401 `invalid_token`, reason `expiring`), then
    ///    [`Requirements::check`]: scopes (403 `scope_insufficient`),
    ///    agent session, delegation, chain contents, hop limit, then targets
    ///    (401 `invalid_token`, reason `target`);
    /// 5. revocation anchors (401 `session_revoked`, or 503 when the feed is not
    ///    current), then the delegation epoch (401 `delegation_stale`);
    /// 6. for single-use routes, the replay guard.
    ///
    /// So a mandate lacking both a required scope and a target is 403
    /// `scope_insufficient`, and a revoked mandate that also fails the route gets
    /// the route's answer, as from Caracal's own guard.
    ///
    /// Each call is one `tracing` span, `caracal.verify` (target
    /// `caracal_verifier::verify`, level `DEBUG`), with the decision, `error.type`
    /// (the code), the reason, the zone, the client, the hop count, whether the cache
    /// answered, and the duration; never the token, its `jti` or its signature.
    pub async fn verify(&self, token: &str, reqs: &Requirements) -> Result<Mandate, AuthError> {
        // The span's future is boxed so that, when nobody listens, `verify` carries
        // nothing of it; the checks themselves run in this future, not a nested one.
        if tracing::enabled!(target: SPAN_TARGET, tracing::Level::DEBUG) {
            return Box::pin(self.verify_traced(token, reqs)).await;
        }
        observed_checks!(self, token, reqs).0
    }

    /// `verify` in its `caracal.verify` span, which gets the outcome's fields.
    async fn verify_traced(&self, token: &str, reqs: &Requirements) -> Result<Mandate, AuthError> {
        let span = tracing::debug_span!(
            target: SPAN_TARGET,
            "caracal.verify",
            caracal.decision = Empty,
            error.type = Empty,
            caracal.reason = Empty,
            caracal.zone = self.zone(),
            caracal.client_id = Empty,
            caracal.hop_count = Empty,
            caracal.cache_hit = Empty,
            caracal.duration_us = Empty,
        );
        let started = Instant::now();
        let (result, cache_hit) = self
            .verify_observed(token, reqs)
            .instrument(span.clone())
            .await;
        match &result {
            Ok(m) => {
                span.record("caracal.decision", "allow");
                span.record("caracal.client_id", m.client_id());
                span.record("caracal.hop_count", m.hops());
            }
            Err(e) => {
                span.record("caracal.decision", "deny");
                span.record("error.type", e.code().as_str());
                if let Some(r) = e.reason() {
                    span.record("caracal.reason", r.as_str());
                }
            }
        }
        if let Some(hit) = cache_hit {
            span.record("caracal.cache_hit", hit);
        }
        span.record(
            "caracal.duration_us",
            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        );
        result
    }

    /// [`verify`](Self::verify), when it can decide at once: the token is cached,
    /// its key is in use and the keyset needs no refresh, the route is not single
    /// use and no `caracal.verify` span is wanted. Then it decides exactly as
    /// `verify` would (same checks, same counts), without a future; otherwise
    /// `None`, and the caller runs `verify`.
    ///
    /// A layer uses it to answer a repeated token without copying the token or
    /// boxing a verification future.
    ///
    /// `token` is bytes whose characters have not been checked: only a token that
    /// verified can match a cache entry, and every such token is base64url segments
    /// and dots, so a match has the characters a bearer token needs (see
    /// `layer::bearer`). Anything else misses and goes through the full checks.
    pub(crate) fn verify_warm(
        &self,
        token: &[u8],
        reqs: &Requirements,
    ) -> Option<Result<Mandate, AuthError>> {
        let inner = &*self.inner;
        let cache = inner.cache.as_ref()?;
        if token.is_empty()
            || token.len() > inner.max_token_bytes
            || reqs.is_single_use()
            || !inner.keys.within_ttl()
            || tracing::enabled!(target: SPAN_TARGET, tracing::Level::DEBUG)
        {
            return None;
        }
        let now = inner.clock.now().as_secs();
        let hit = cache.get_at(cache.slot(token), token, now)?;
        if hit.0.key.is_retired() {
            // `verify` drops the entry and verifies afresh.
            return None;
        }
        let started = (inner.sample_latency && stats::sample_warm()).then(Instant::now);
        // As in `authenticate_at`: a cached mandate past its times is refused before
        // the cache counts as having answered.
        if let Err(e) = self.check_times(&hit.0.claims, now) {
            stats::record(Err(&e), None);
            return Some(Err(e));
        }
        let result = self.route_and_revocation(&hit, reqs, now).map(|()| hit);
        stats::record(result.as_ref().map(drop), Some(true));
        if let Some(t0) = started {
            stats::sample(Sample {
                cold: false,
                elapsed: t0.elapsed(),
            });
        }
        Some(result)
    }

    /// `verify`'s checks, counted for the metrics; also says whether the cache
    /// answered.
    async fn verify_observed(
        &self,
        token: &str,
        reqs: &Requirements,
    ) -> (Result<Mandate, AuthError>, Option<bool>) {
        observed_checks!(self, token, reqs)
    }

    /// Verify a mandate's signature and claims (no route requirements, no revocation).
    pub async fn authenticate(&self, token: &str) -> Result<Mandate, AuthError> {
        self.authenticate_at(token, self.inner.clock.now().as_secs(), &mut None)
            .await
    }

    /// Check a verified mandate against a route's requirements and revocation, in
    /// [`verify`](Self::verify)'s order. Synchronous and cheap: one read lock and a few hash probes.
    pub fn authorize(&self, mandate: &Mandate, reqs: &Requirements) -> Result<(), AuthError> {
        let now = self.inner.clock.now().as_secs();
        // A mandate from the extensions may come from another layer: re-check expiry.
        let result = self
            .check_times(&mandate.0.claims, now)
            .and_then(|()| self.route_and_revocation(mandate, reqs, now));
        stats::record(result.as_ref().copied(), None);
        result
    }

    /// The size cap, then the mandate cache; on a miss, the signature and claims.
    /// `cache_hit` says which answered, once a token got that far.
    async fn authenticate_at(
        &self,
        token: &str,
        now: u64,
        cache_hit: &mut Option<bool>,
    ) -> Result<Mandate, AuthError> {
        let inner = &*self.inner;
        if token.is_empty() {
            return Err(AuthError::MissingToken);
        }
        if token.len() > inner.max_token_bytes {
            return Err(AuthError::PayloadTooLarge {
                size: token.len(),
                limit: inner.max_token_bytes,
            });
        }
        // The token is hashed once for the lookup and the insert or removal after it.
        let cached = inner.cache.as_ref().map(|c| (c, c.slot(token.as_bytes())));
        if let Some((cache, slot)) = cached
            && let Some(hit) = cache.get_at(slot, token.as_bytes(), now)
        {
            let key = &hit.0.key;
            if !key.is_retired() {
                self.check_times(&hit.0.claims, now)?;
                inner.keys.ensure_fresh().await?;
                // The refresh that may just have run can have retired the key.
                if !key.is_retired() {
                    *cache_hit = Some(true);
                    return Ok(hit);
                }
            }
            cache.remove_at(slot, token);
        }
        *cache_hit = Some(false);
        let started = self.inner.sample_latency.then(Instant::now);
        let verified = self.verify_cold(token, now).await;
        if let Some(t0) = started {
            stats::sample(Sample {
                cold: true,
                elapsed: t0.elapsed(),
            });
        }
        let mandate = verified?;
        if let Some((cache, slot)) = cached {
            let c = &mandate.0.claims;
            // A mandate is dead at `exp` (no leeway), so the entry goes then. `exp` is
            // attacker-influenced only within a valid signature, but an STS bug could
            // still send a far-future value: never keep an entry longer than a day
            // (expiry is checked on every hit regardless).
            let expires_at = c.exp.min(now.saturating_add(MAX_CACHE_TTL_SECS));
            cache.insert_at(slot, token, mandate.clone(), expires_at, now);
        }
        Ok(mandate)
    }

    async fn verify_cold(&self, token: &str, now: u64) -> Result<Mandate, AuthError> {
        let inner = &*self.inner;
        let parts = token::split(token)?;
        let header = token::parse_header_memo(parts.header)?;
        let alg = match header.alg {
            HeaderAlg::Known(a) if inner.algorithms.contains(&a) => a,
            _ => return Err(AuthError::invalid(InvalidReason::Algorithm)),
        };
        let key = inner.keys.key_for(&header.kid).await?;
        // The key pins the algorithm; the header must agree with it.
        if key.alg() != alg {
            return Err(AuthError::invalid(InvalidReason::Algorithm));
        }
        let mut buf = [0u8; 1024];
        let sig = token::decode_into(parts.signature, &mut buf)?;
        if alg.signature_len().is_some_and(|n| n != sig.len()) {
            return Err(AuthError::invalid(InvalidReason::Signature));
        }
        if !key.verify(parts.signing_input.as_bytes(), sig) {
            return Err(AuthError::invalid(InvalidReason::Signature));
        }
        let claims = parse_payload(parts.payload)?;
        self.check_claims(&claims, now)?;
        let anchors = anchors_of(&claims);
        Ok(Mandate::new(MandateInner {
            hops: effective_hops(&claims),
            claims,
            key,
            alg,
            anchors,
            policy: inner.policy,
        }))
    }

    /// `exp` is exact: a mandate is dead at `exp`, as Caracal re-checks active
    /// authority with no leeway. The leeway covers `nbf` and `iat` only.
    fn check_times(&self, c: &Claims, now: u64) -> Result<(), AuthError> {
        let leeway = self.inner.leeway;
        if now >= c.exp {
            return Err(AuthError::invalid(InvalidReason::Expired));
        }
        if c.nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
            return Err(AuthError::invalid(InvalidReason::NotYetValid));
        }
        if c.iat > now.saturating_add(leeway) {
            return Err(AuthError::invalid(InvalidReason::IssuedInFuture));
        }
        Ok(())
    }

    fn check_claims(&self, c: &Claims, now: u64) -> Result<(), AuthError> {
        let inner = &*self.inner;
        self.check_times(c, now)?;
        if c.iss() != inner.issuer {
            return Err(AuthError::invalid(InvalidReason::Issuer));
        }
        if !c.aud().contains(&inner.audience) {
            return Err(AuthError::invalid(InvalidReason::Audience));
        }
        if c.token_use() != inner.token_use {
            return Err(AuthError::invalid(InvalidReason::Use));
        }
        if c.zone_id() != inner.zone {
            return Err(AuthError::ZoneInvalid);
        }
        Ok(())
    }

    /// The route's requirements, then revocation: Caracal checks revocation last.
    fn route_and_revocation(
        &self,
        mandate: &Mandate,
        reqs: &Requirements,
        now: u64,
    ) -> Result<(), AuthError> {
        reqs.check_remaining(mandate, now)?;
        reqs.check(mandate)?;
        self.inner.revocations.check(
            &mandate.0.anchors,
            mandate.zone_id(),
            mandate.delegation_graph_epoch(),
            now,
        )
    }

    /// Record a single-use mandate's use. The second call for the same `iss` and
    /// `jti` is 401 `invalid_token` (`replayed`); a guard failure is 503.
    pub async fn consume(&self, mandate: &Mandate) -> Result<(), AuthError> {
        // The mandate dies at `exp`; the use is kept a leeway longer so replicas
        // sharing a guard, whose clocks may lag this one, still see it.
        let until = mandate.expires_at().saturating_add(self.inner.leeway);
        match self
            .inner
            .replay
            .first_use(mandate.issuer(), mandate.jti(), until)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(AuthError::invalid(InvalidReason::Replayed)),
            Err(e) => {
                tracing::error!(error = %e, "replay guard unavailable; failing closed");
                Err(AuthError::RevocationUnavailable)
            }
        }
    }
}

/// Every anchor of a mandate, fingerprinted and de-duplicated: the mandate's own
/// identities, then every upstream identity (chain hops, `delegation_path` edges,
/// `source_session_id`). An id found twice keeps the kind it was first found as.
fn anchors_of(c: &Claims) -> Vec<Anchor> {
    let mut out: Vec<Anchor> =
        Vec::with_capacity(5 + 2 * c.chain().map_or(0, |h| h.len()) + c.delegation_path().len());
    let mut push = |id: Option<&str>, kind: AnchorKind| {
        if let Some(id) = id {
            let fp = fingerprint(id);
            if !out.iter().any(|a| a.fp == fp) {
                out.push(Anchor { fp, kind });
            }
        }
    };
    push(Some(c.sid()), AnchorKind::Sid);
    push(Some(c.root_sid()), AnchorKind::RootSid);
    push(c.agent_session_id(), AnchorKind::AgentSession);
    push(c.delegation_edge_id(), AnchorKind::DelegationEdge);
    for hop in c.chain().into_iter().flatten() {
        push(hop.agent_session_id(), AnchorKind::ChainSession);
        push(hop.delegation_edge_id(), AnchorKind::ChainEdge);
    }
    for edge in c.delegation_path().iter() {
        push(Some(edge), AnchorKind::PathEdge);
    }
    push(c.source_session_id(), AnchorKind::SourceSession);
    // Kept as allocated: shrinking to fit would reallocate on most mandates.
    out
}
