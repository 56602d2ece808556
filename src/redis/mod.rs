//! Redis Streams revocation consumer and shared replay guard (feature `redis`).
//!
//! STUB: being written. The names below are the contract the verifier builds on.

use std::time::Duration;

use crate::clock::SharedClock;
use crate::error::ConfigError;
use crate::revocation::{FeedStatus, RevocationSet};

/// Settings of the Redis revocation feed.
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisRevocations {
    url: String,
    max_staleness: Duration,
}

impl RedisRevocations {
    /// A feed reading from the Redis server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_staleness: crate::revocation::DEFAULT_MAX_STALENESS,
        }
    }

    /// Settings from `CARACAL_REDIS_URL` and friends; `None` when the URL is unset.
    pub fn from_lookup(
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        Ok(get("CARACAL_REDIS_URL").map(Self::new))
    }

    pub(crate) fn spawn(
        self,
        _set: RevocationSet,
        _clock: SharedClock,
    ) -> Result<FeedHandle, ConfigError> {
        let _ = (&self.url, self.max_staleness);
        Err(ConfigError::invalid("redis", "not implemented yet"))
    }
}

/// The running feed task.
#[derive(Debug)]
pub struct FeedHandle {
    set: RevocationSet,
}

impl FeedHandle {
    /// The feed's health.
    pub fn status(&self) -> Option<FeedStatus> {
        self.set.feed_status()
    }
}
