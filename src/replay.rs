//! Single-use mandates: a guard that accepts each (`iss`, `jti`) once until expiry.
//!
//! The guard keys on the issuer and token id, never on the token bytes: an ECDSA
//! signature can be re-encoded (`s` → `n − s`) into a different token that still
//! verifies, and it must still count as the same mandate.
//!
//! ```
//! use caracal_verifier::replay::{MemoryReplayGuard, ReplayGuard};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let guard = MemoryReplayGuard::new(100_000);
//! let exp = u64::MAX / 2;
//! assert!(guard.first_use("https://sts.example.com", "jti-1", exp).await.unwrap());
//! assert!(!guard.first_use("https://sts.example.com", "jti-1", exp).await.unwrap());
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SharedClock, SystemClock};
use crate::jwks::BoxFuture;

/// The guard's store could not answer; single-use routes then fail closed (503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("replay guard unavailable: {0}")]
pub struct ReplayError(pub(crate) String);

impl ReplayError {
    /// An error with a short description.
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

/// Records mandate uses.
pub trait ReplayGuard: Send + Sync + fmt::Debug + 'static {
    /// Record a use of (`issuer`, `jti`), remembered until `until` (seconds since the
    /// Unix epoch). Returns `true` the first time and `false` on every later call.
    fn first_use<'a>(
        &'a self,
        issuer: &'a str,
        jti: &'a str,
        until: u64,
    ) -> BoxFuture<'a, Result<bool, ReplayError>>;
}

/// An in-memory guard, for a single replica. Bounded; entries expire at `until`.
#[derive(Clone)]
pub struct MemoryReplayGuard {
    seen: moka::sync::Cache<(Arc<str>, Arc<str>), u64>,
    clock: SharedClock,
}

impl fmt::Debug for MemoryReplayGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryReplayGuard")
            .field("entries", &self.seen.entry_count())
            .finish()
    }
}

struct UntilExpiry(SharedClock);

impl moka::Expiry<(Arc<str>, Arc<str>), u64> for UntilExpiry {
    fn expire_after_create(
        &self,
        _k: &(Arc<str>, Arc<str>),
        until: &u64,
        _at: std::time::Instant,
    ) -> Option<Duration> {
        // Bounded so a far-future `exp` cannot overflow the cache's clock arithmetic.
        // Mandates live minutes; a year is far beyond any real one.
        let secs = until
            .saturating_sub(self.0.now().as_secs())
            .min(365 * 24 * 3600);
        Some(Duration::from_secs(secs))
    }
}

impl MemoryReplayGuard {
    /// A guard holding up to `capacity` mandates. When full, the least useful entries
    /// are evicted, so size it above (requests per second × mandate lifetime).
    pub fn new(capacity: u64) -> Self {
        Self::with_clock(capacity, SystemClock)
    }

    /// A guard with an injected clock.
    pub fn with_clock(capacity: u64, clock: impl Clock) -> Self {
        Self::with_clock_shared(capacity, Arc::new(clock))
    }

    pub(crate) fn with_clock_shared(capacity: u64, clock: SharedClock) -> Self {
        Self {
            seen: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .expire_after(UntilExpiry(clock.clone()))
                .build(),
            clock,
        }
    }
}

impl ReplayGuard for MemoryReplayGuard {
    fn first_use<'a>(
        &'a self,
        issuer: &'a str,
        jti: &'a str,
        until: u64,
    ) -> BoxFuture<'a, Result<bool, ReplayError>> {
        let now = self.clock.now().as_secs();
        let entry = self
            .seen
            .entry((Arc::from(issuer), Arc::from(jti)))
            .or_insert(until);
        // A present entry whose time is up (by the injected clock) is a fresh use.
        let first = entry.is_fresh() || *entry.value() <= now;
        if !entry.is_fresh() && *entry.value() <= now {
            self.seen.insert((Arc::from(issuer), Arc::from(jti)), until);
        }
        Box::pin(async move { Ok(first) })
    }
}
