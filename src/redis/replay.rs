//! [`RedisReplayGuard`]: single-use mandates shared by every replica through Redis.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Value};
use aws_lc_rs::digest;

use crate::clock::{Clock, SystemClock};
use crate::error::ConfigError;
use crate::future::BoxFuture;
use crate::replay::{ReplayError, ReplayGuard};

/// The default key prefix.
pub const DEFAULT_REPLAY_KEY_PREFIX: &str = "caracal:replay:";
/// The default deadline of one replay check (500 ms).
pub const DEFAULT_REPLAY_TIMEOUT: Duration = Duration::from_millis(500);
/// After a failed connection attempt, calls fail at once for this long.
const RECONNECT_COOLDOWN: Duration = Duration::from_millis(200);

/// A [`ReplayGuard`] in Redis, so every replica sees every use: one
/// `SET <key> 1 NX PX <ms until exp + leeway>` per single-use request.
///
/// The key is `caracal:replay:{sha256 hex of iss}:{jti}`: the issuer and token id,
/// never the token bytes, because an ECDSA signature can be re-encoded into a second
/// valid token for the same mandate. The expiry is relative (`PX`), computed from
/// this host's clock, so clock skew between the verifier and Redis does not matter.
///
/// Failures fail closed: the check returns an error and the verifier answers 503
/// `revocation_unavailable`. A broken connection is replaced on a later call; while
/// Redis is unreachable, calls fail fast instead of queueing behind reconnects.
/// Clones share one multiplexed connection.
///
/// ```no_run
/// use caracal_verifier::Verifier;
/// use caracal_verifier::redis::RedisReplayGuard;
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let guard = RedisReplayGuard::connect("redis://redis.internal:6379").await?;
/// let verifier = Verifier::builder()
///     .issuer("https://sts.example.com")
///     .audience("resource://payments")
///     .zone("zone-1")
///     .replay_guard(guard)
///     .build()?;
/// # let _ = verifier; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisReplayGuard {
    client: ::redis::Client,
    prefix: Arc<str>,
    timeout: Duration,
    clock: Arc<dyn Clock>,
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    slot: Mutex<Slot>,
    /// Serialises connection attempts.
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Slot {
    conn: Option<MultiplexedConnection>,
    retry_at: Option<Instant>,
}

impl fmt::Debug for RedisReplayGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisReplayGuard")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("connected", &self.slot().conn.is_some())
            .finish_non_exhaustive()
    }
}

impl RedisReplayGuard {
    /// A guard for the Redis server at `url`. Does no I/O: the connection is made on
    /// first use, so a verifier can start while Redis is still coming up (single-use
    /// routes answer 503 until it is reachable).
    pub fn new(url: &str) -> Result<Self, ConfigError> {
        // Never echo the URL: it may carry a password.
        let client = ::redis::Client::open(url)
            .map_err(|_| ConfigError::invalid("redis_url", "not a valid Redis URL"))?;
        Ok(Self {
            client,
            prefix: DEFAULT_REPLAY_KEY_PREFIX.into(),
            timeout: DEFAULT_REPLAY_TIMEOUT,
            clock: Arc::new(SystemClock),
            state: Arc::default(),
        })
    }

    /// Like [`new`](Self::new), and connect now, so a wrong URL or an unreachable
    /// server shows up at startup.
    pub async fn connect(url: &str) -> Result<Self, ConfigError> {
        let guard = Self::new(url)?;
        guard
            .connection()
            .await
            .map_err(|e| ConfigError::invalid("redis_url", e.to_string()))?;
        Ok(guard)
    }

    /// The key prefix. Default `caracal:replay:`. Every replica that shares mandates
    /// must use the same prefix, or each keeps its own record and a mandate can be
    /// used once per prefix.
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into().into();
        self
    }

    /// The deadline of one check, connecting included. Default 500 ms. Past it the
    /// request fails closed with 503; longer values ride out slow Redis moments at
    /// the cost of holding requests longer when it is down.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The clock for the key's time to live. Default: the system clock. Give it the
    /// verifier's clock when that one is not the system clock.
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The Redis key that records (`iss`, `jti`).
    pub fn key_for(&self, issuer: &str, jti: &str) -> String {
        let hash = digest::digest(&digest::SHA256, issuer.as_bytes());
        let mut key = String::with_capacity(self.prefix.len() + 65 + jti.len());
        key.push_str(&self.prefix);
        for b in hash.as_ref() {
            key.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            key.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
        }
        key.push(':');
        key.push_str(jti);
        key
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.state
            .slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn forget_connection(&self) {
        self.slot().conn = None;
    }

    async fn connection(&self) -> Result<MultiplexedConnection, ReplayError> {
        if let Some(conn) = self.slot().conn.clone() {
            return Ok(conn);
        }
        let _connecting = self.state.connecting.lock().await;
        {
            let slot = self.slot();
            if let Some(conn) = slot.conn.clone() {
                return Ok(conn);
            }
            if slot.retry_at.is_some_and(|t| Instant::now() < t) {
                return Err(ReplayError::new("redis unreachable"));
            }
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        match self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(conn) => {
                let mut slot = self.slot();
                slot.conn = Some(conn.clone());
                slot.retry_at = None;
                Ok(conn)
            }
            Err(e) => {
                self.slot().retry_at = Some(Instant::now() + RECONNECT_COOLDOWN);
                Err(ReplayError::new(format!("redis connection failed: {e}")))
            }
        }
    }

    async fn set_nx(&self, key: String, ttl_ms: u64) -> Result<bool, ReplayError> {
        let mut conn = self.connection().await?;
        let reply = ::redis::cmd("SET")
            .arg(key)
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async::<Value>(&mut conn)
            .await;
        match reply {
            Ok(Value::Okay) => Ok(true),
            Ok(Value::SimpleString(s)) if s == "OK" => Ok(true),
            Ok(Value::Nil) => Ok(false),
            Ok(_) => Err(ReplayError::new("unexpected reply to SET NX")),
            Err(e) => {
                // READONLY after a failover, a dropped socket, a timeout: start over
                // with a fresh connection next time.
                self.forget_connection();
                Err(ReplayError::new(format!("redis error: {e}")))
            }
        }
    }
}

impl ReplayGuard for RedisReplayGuard {
    fn first_use<'a>(
        &'a self,
        issuer: &'a str,
        jti: &'a str,
        until: u64,
    ) -> BoxFuture<'a, Result<bool, ReplayError>> {
        Box::pin(async move {
            let now_ms = u64::try_from(self.clock.now().as_millis()).unwrap_or(u64::MAX);
            // At least a second, so a mandate on the edge of expiry is still recorded.
            let ttl_ms = until.saturating_mul(1000).saturating_sub(now_ms).max(1000);
            let key = self.key_for(issuer, jti);
            match tokio::time::timeout(self.timeout, self.set_nx(key, ttl_ms)).await {
                Ok(r) => r,
                Err(_) => {
                    self.forget_connection();
                    Err(ReplayError::new("redis timed out"))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hash_the_issuer_and_keep_the_jti() {
        let guard = RedisReplayGuard::new("redis://127.0.0.1:1").unwrap();
        let key = guard.key_for("https://sts.example.com", "jti-1");
        assert!(key.starts_with("caracal:replay:"), "{key}");
        assert!(key.ends_with(":jti-1"), "{key}");
        assert_eq!(key.len(), "caracal:replay:".len() + 64 + ":jti-1".len());
        assert_ne!(key, guard.key_for("https://sts.example.org", "jti-1"));
        let custom = guard.key_prefix("app:");
        assert!(custom.key_for("i", "j").starts_with("app:"));
    }

    #[test]
    fn bad_urls_are_config_errors_without_the_url() {
        let err = RedisReplayGuard::new("nope://:hunter2@x").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[tokio::test]
    async fn unreachable_redis_fails_closed_and_fast() {
        // Port 1 on loopback refuses connections.
        let guard = RedisReplayGuard::new("redis://127.0.0.1:1").unwrap();
        assert!(
            guard
                .first_use("iss", "jti", u64::MAX / 2000)
                .await
                .is_err()
        );
        let started = Instant::now();
        assert!(
            guard
                .first_use("iss", "jti", u64::MAX / 2000)
                .await
                .is_err()
        );
        assert!(started.elapsed() < DEFAULT_REPLAY_TIMEOUT);
        assert!(
            RedisReplayGuard::connect("redis://127.0.0.1:1")
                .await
                .is_err()
        );
    }
}
