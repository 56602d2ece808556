//! The injectable clock used for expiry, leeway, cache ages and revocation TTLs.
//!
//! Every time-dependent decision in the verifier reads [`Clock::now`], so tests can
//! move time with a [`ManualClock`] instead of sleeping.
//!
//! ```
//! use std::time::Duration;
//! use caracal_verifier::{Clock, ManualClock};
//!
//! let clock = ManualClock::new(Duration::from_secs(1_790_000_000));
//! clock.advance(Duration::from_secs(61));
//! assert_eq!(clock.now().as_secs(), 1_790_000_061);
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time, as a duration since the Unix epoch.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time since the Unix epoch.
    fn now(&self) -> Duration;
}

/// The operating system's wall clock. This is the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        // A clock before 1970 is a broken host; treating it as the epoch makes every
        // token look expired, which fails closed.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
    }
}

/// A clock that only moves when told to. Clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    millis: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock standing at `now` (since the Unix epoch).
    pub fn new(now: Duration) -> Self {
        Self {
            millis: Arc::new(AtomicU64::new(duration_millis(now))),
        }
    }

    /// A clock standing at the system's current time.
    pub fn starting_now() -> Self {
        Self::new(SystemClock.now())
    }

    /// Set the time.
    pub fn set(&self, now: Duration) {
        self.millis.store(duration_millis(now), Ordering::SeqCst);
    }

    /// Move the time forward.
    pub fn advance(&self, by: Duration) {
        self.millis.fetch_add(duration_millis(by), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_millis(self.millis.load(Ordering::SeqCst))
    }
}

fn duration_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A shared clock handle.
pub(crate) type SharedClock = Arc<dyn Clock>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_clones_share_time() {
        let a = ManualClock::new(Duration::from_secs(10));
        let b = a.clone();
        a.advance(Duration::from_millis(1500));
        assert_eq!(b.now(), Duration::from_millis(11_500));
        b.set(Duration::from_secs(3));
        assert_eq!(a.now().as_secs(), 3);
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now().as_secs() > 1_577_836_800);
    }
}
