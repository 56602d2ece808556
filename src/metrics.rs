//! Prometheus-style metrics on the [`metrics`](https://docs.rs/metrics) facade
//! (feature `metrics`).
//!
//! Add a [`MetricsPublisher`] to the verifier as a [source](crate::source). Every
//! [`interval`](MetricsPublisher::interval) (1 s by default) its own thread copies
//! the verifier's counters into whatever recorder the process installed (for
//! example `metrics-exporter-prometheus`): nothing on the request path calls the
//! recorder. The request path only counts, per thread, into memory no other core
//! writes; latency is sampled (every cold verification, one warm one in 128) only
//! while a publisher runs. Without a recorder the facade drops what the publisher
//! hands it.
//!
//! Names start with `caracal_verifier_`; counters end in `_total`. Labels are low
//! cardinality by construction: outcome, code, reason, path, zone; never an id. The
//! README's *Metrics* table documents each one.
//!
//! ```no_run
//! use caracal_verifier::Verifier;
//! use caracal_verifier::metrics::MetricsPublisher;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
//! let verifier = Verifier::builder()
//!     .issuer("https://sts.example.com")
//!     .audience("resource://api")
//!     .zone("zone-1")
//!     .source(MetricsPublisher::new())
//!     .build()?;
//! // Serve `prometheus.render()` on /metrics.
//! # let _ = (verifier, prometheus.render());
//! # Ok(()) }
//! ```
//!
//! Decision, cache and latency figures are process-wide (all verifiers of the
//! process count together); the keyset and revocation gauges carry the verifier's
//! `zone`. Run one publisher per verifier.

use std::fmt;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use tokio::sync::watch;

use crate::error::{ConfigError, ErrorCode, InvalidReason};
use crate::future::BoxFuture;
use crate::jwks::KeyCache;
use crate::replay::ReplayGuard;
use crate::revocation::{DropReason, RevocationSet};
use crate::source::{Running, Siblings, Source, SourceContext};
use crate::stats::{self, Totals};

/// The default publishing interval (1 s).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// Publishes a verifier's metrics through the `metrics` facade; a
/// [`Source`] for [`VerifierBuilder::source`](crate::VerifierBuilder::source).
#[derive(Debug, Clone)]
#[must_use]
pub struct MetricsPublisher {
    interval: Duration,
}

impl Default for MetricsPublisher {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricsPublisher {
    /// A publisher with the default interval.
    pub fn new() -> Self {
        Self {
            interval: DEFAULT_INTERVAL,
        }
    }

    /// How often the counters are copied into the recorder. Default 1 s; at least
    /// 10 ms.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(10));
        self
    }
}

impl Source for MetricsPublisher {
    fn start(
        self: Box<Self>,
        ctx: &mut SourceContext<'_>,
    ) -> Result<Box<dyn Running>, ConfigError> {
        let view = View {
            keys: Arc::clone(ctx.keys),
            set: ctx.revocations().clone(),
            zone: ctx.zone().to_owned(),
            siblings: Arc::clone(&ctx.siblings),
            replay: Arc::clone(ctx.replay),
        };
        let (stop, stopped) = mpsc::channel::<()>();
        let (done, finished) = watch::channel(false);
        let interval = self.interval;
        *ctx.sample_latency = true;
        std::thread::Builder::new()
            .name("caracal-metrics".into())
            .spawn(move || {
                let _done = Done(done);
                loop {
                    view.publish();
                    match stopped.recv_timeout(interval) {
                        Err(RecvTimeoutError::Timeout) => {}
                        // Stopped, or the handle is gone: publish once more, then end.
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                            view.publish();
                            return;
                        }
                    }
                }
            })
            .map_err(|_| ConfigError::invalid("metrics", "cannot start the publisher's thread"))?;
        Ok(Box::new(Publishing {
            stop: std::sync::Mutex::new(Some(stop)),
            finished,
        }))
    }
}

/// Signals the end of the thread however it ends.
struct Done(watch::Sender<bool>);

impl Drop for Done {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

/// The running publisher.
struct Publishing {
    stop: std::sync::Mutex<Option<mpsc::Sender<()>>>,
    finished: watch::Receiver<bool>,
}

impl fmt::Debug for Publishing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsPublisher")
            .field("running", &self.is_running())
            .finish()
    }
}

impl Publishing {
    fn signal_stop(&self) {
        let mut stop = self.stop.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = stop.take() {
            let _ = tx.send(());
        }
    }
}

impl Running for Publishing {
    fn name(&self) -> &str {
        "metrics"
    }

    fn is_running(&self) -> bool {
        !*self.finished.borrow()
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.signal_stop();
            let mut finished = self.finished.clone();
            let _ = finished.wait_for(|done| *done).await;
        })
    }
}

impl Drop for Publishing {
    fn drop(&mut self) {
        self.signal_stop();
    }
}

/// What the publisher reads of its verifier.
struct View {
    keys: Arc<KeyCache>,
    set: RevocationSet,
    zone: String,
    siblings: Siblings,
    replay: Arc<dyn ReplayGuard>,
}

impl View {
    fn publish(&self) {
        publish_decisions(&stats::totals());
        for s in stats::drain_samples() {
            let path = if s.cold { "cold" } else { "warm" };
            histogram!("caracal_verifier_verification_duration_seconds", "path" => path)
                .record(s.elapsed.as_secs_f64());
        }
        let zone = self.zone.clone();
        counter!("caracal_verifier_jwks_fetches_total", "zone" => zone.clone())
            .absolute(self.keys.fetch_count());
        counter!("caracal_verifier_jwks_fetches_finished_total", "zone" => zone.clone())
            .absolute(self.keys.finished_count());
        counter!("caracal_verifier_jwks_fetch_failures_total", "zone" => zone.clone())
            .absolute(self.keys.failure_count());
        gauge!("caracal_verifier_jwks_ready", "zone" => zone.clone())
            .set(f64::from(u8::from(self.keys.is_ready())));
        if let Some(age) = self.keys.age() {
            gauge!("caracal_verifier_jwks_keyset_age_seconds", "zone" => zone.clone())
                .set(age.as_secs_f64());
        }
        if let Some(u) = self.replay.usage() {
            gauge!("caracal_verifier_replay_guard_entries", "zone" => zone.clone())
                .set(u.recorded as f64);
            if let Some(cap) = u.capacity {
                gauge!("caracal_verifier_replay_guard_capacity", "zone" => zone.clone())
                    .set(cap as f64);
            }
        }
        // The other sources' own counts (the audit emitter's queue, for one).
        let siblings: Vec<Arc<dyn Running>> = self
            .siblings
            .lock()
            .map(|list| list.iter().filter_map(std::sync::Weak::upgrade).collect())
            .unwrap_or_default();
        for source in siblings {
            for (name, n) in source.counters() {
                let valid = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                if !valid {
                    continue;
                }
                let metric = format!("caracal_verifier_{name}");
                if name.ends_with("_total") {
                    counter!(metric, "zone" => zone.clone()).absolute(n);
                } else {
                    gauge!(metric, "zone" => zone.clone()).set(n as f64);
                }
            }
        }
        gauge!("caracal_verifier_revocation_anchors", "zone" => zone.clone())
            .set(self.set.len() as f64);
        gauge!("caracal_verifier_revocation_current", "zone" => zone.clone())
            .set(f64::from(u8::from(self.set.is_current())));
        if let Some(feed) = self.set.feed_status() {
            gauge!("caracal_verifier_revocation_feed_fresh", "zone" => zone.clone())
                .set(f64::from(u8::from(feed.fresh)));
            gauge!("caracal_verifier_revocation_feed_lag_seconds", "zone" => zone.clone())
                .set(feed.lag.as_secs_f64());
            if let Some(since) = feed.since_last_event {
                gauge!(
                    "caracal_verifier_revocation_last_event_age_seconds",
                    "zone" => zone.clone()
                )
                .set(since.as_secs_f64());
            }
            counter!("caracal_verifier_revocation_events_applied_total", "zone" => zone.clone())
                .absolute(feed.applied);
            for (reason, n) in [
                (DropReason::Unsigned, feed.unsigned),
                (DropReason::BadSignature, feed.invalid_signatures),
                (DropReason::Oversized, feed.oversized),
                (DropReason::Malformed, feed.malformed),
            ] {
                counter!(
                    "caracal_verifier_revocation_events_dropped_total",
                    "zone" => zone.clone(),
                    "reason" => reason.as_str()
                )
                .absolute(n);
            }
            counter!(
                "caracal_verifier_revocation_invalid_signatures_total",
                "zone" => zone.clone()
            )
            .absolute(feed.invalid_signatures);
            for lag in self.set.drain_feed_lags() {
                histogram!(
                    "caracal_verifier_revocation_propagation_seconds",
                    "zone" => zone.clone()
                )
                .record(lag as f64 / 1000.0);
            }
            counter!("caracal_verifier_revocation_gaps_total", "zone" => zone.clone())
                .absolute(feed.gaps);
            counter!("caracal_verifier_revocation_resets_total", "zone" => zone)
                .absolute(feed.resets);
        }
    }
}

/// The Gateway's denial category of a decision (`denials_<category>`), so the
/// dashboards operators already have apply; see the README's *Metrics* table.
pub(crate) fn gateway_category(code: ErrorCode, reason: Option<InvalidReason>) -> &'static str {
    use InvalidReason as R;
    match (code, reason) {
        (ErrorCode::MissingToken, _) => "missing_auth",
        (ErrorCode::PayloadTooLarge, _) => "bad_bearer",
        (ErrorCode::InvalidToken, Some(R::Malformed | R::Header | R::Claims)) => "bad_bearer",
        (ErrorCode::InvalidToken, Some(R::Expired | R::Expiring)) => "expiring",
        (ErrorCode::InvalidToken, Some(R::Replayed)) => "jti_replay",
        (ErrorCode::InvalidToken, Some(R::Target)) => "route",
        // Everything the Gateway's JWKS verification refuses: the signature, its key
        // and algorithm, and the registered claims it checks with it.
        (ErrorCode::InvalidToken, _) => "signature",
        (ErrorCode::ZoneInvalid, _) => "bad_routing",
        (ErrorCode::SessionRevoked | ErrorCode::DelegationStale, _) => "revoked",
        (ErrorCode::RevocationUnavailable, _) => "revocation_stale",
        (ErrorCode::StsUnavailable, _) => "sts_unavailable",
        // Scopes, agent identity, delegation, chain and hops: the route's
        // requirements, which the Gateway leaves to the STS's policy.
        _ => "route",
    }
}

/// Every Gateway category, so each series exists from the first scrape.
const CATEGORIES: [&str; 10] = [
    "missing_auth",
    "bad_bearer",
    "expiring",
    "bad_routing",
    "signature",
    "jti_replay",
    "revoked",
    "revocation_stale",
    "sts_unavailable",
    "route",
];

fn publish_decisions(t: &Totals) {
    let allowed = t.allowed();
    counter!("caracal_verifier_decisions_total", "outcome" => "allow", "code" => "", "reason" => "")
        .absolute(allowed);
    let mut denied = 0u64;
    let mut by_category = [0u64; CATEGORIES.len()];
    for (code, reason, n) in t.denials() {
        denied += n;
        counter!(
            "caracal_verifier_decisions_total",
            "outcome" => "deny",
            "code" => code.as_str(),
            "reason" => reason.map_or("", InvalidReason::as_str)
        )
        .absolute(n);
        let cat = gateway_category(code, reason);
        if let Some(i) = CATEGORIES.iter().position(|c| *c == cat) {
            by_category[i] += n;
        }
    }
    counter!("caracal_verifier_requests_total").absolute(allowed + denied);
    counter!("caracal_verifier_requests_allowed_total").absolute(allowed);
    counter!("caracal_verifier_requests_denied_total").absolute(denied);
    for (cat, n) in CATEGORIES.iter().zip(by_category) {
        counter!(format!("caracal_verifier_denials_{cat}_total")).absolute(n);
    }
    let (hits, misses) = t.cache();
    counter!("caracal_verifier_mandate_cache_hits_total").absolute(hits);
    counter!("caracal_verifier_mandate_cache_misses_total").absolute(misses);
    counter!("caracal_verifier_latency_samples_dropped_total").absolute(t.samples_dropped());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_maps_to_a_published_category() {
        for code in ErrorCode::ALL {
            for reason in [
                None,
                Some(InvalidReason::Malformed),
                Some(InvalidReason::Signature),
                Some(InvalidReason::Expired),
                Some(InvalidReason::Replayed),
                Some(InvalidReason::Target),
            ] {
                assert!(CATEGORIES.contains(&gateway_category(*code, reason)));
            }
        }
        assert_eq!(
            gateway_category(ErrorCode::MissingToken, None),
            "missing_auth"
        );
        assert_eq!(
            gateway_category(ErrorCode::InvalidToken, Some(InvalidReason::Expiring)),
            "expiring"
        );
        assert_eq!(
            gateway_category(ErrorCode::RevocationUnavailable, None),
            "revocation_stale"
        );
    }
}
