//! [`RedisReplayGuard`]: single-use mandates shared by every replica through Redis.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Value};
use aws_lc_rs::digest;

use super::connect::{ConnectError, Connector, Redirect, first_server_error};
use super::endpoint::{Addr, RedisEndpoint};
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
/// Redis is unreachable, calls fail fast instead of queueing behind reconnects. In a
/// Cluster this holds per node: a primary that is down fails closed for the keys of
/// its slots only, and the other primaries keep answering for theirs.
/// Clones share one multiplexed connection (one per node in a Cluster).
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
    connector: Connector,
    prefix: Arc<str>,
    timeout: Duration,
    /// Replicas that must acknowledge a use before it counts (`WAIT`); 0 = none.
    min_replicas: u32,
    clock: Arc<dyn Clock>,
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    slot: Mutex<Slot>,
    /// Serialises connection attempts to each node (the key `None`: the server,
    /// the primary or discovery), so a burst of requests makes one connection,
    /// and a node that hangs holds back only its own.
    connecting: Mutex<HashMap<Option<Addr>, Arc<tokio::sync::Mutex<()>>>>,
}

/// The most Cluster nodes the guard keeps a connection to; past it, the idle
/// ones are dropped and reconnected when needed.
const MAX_NODES: usize = 1024;

/// How far one check got, for the caller to act on if its deadline passes.
#[derive(Default)]
struct Progress {
    /// The node being connected to (`Some(None)`: the server, the primary or
    /// the Cluster's seeds).
    connecting: Option<Option<Addr>>,
    /// The connection the command in flight went out on.
    sent_to: Option<Option<Addr>>,
}

#[derive(Default)]
struct Slot {
    /// The server's or the Sentinel-named primary's connection.
    conn: Option<MultiplexedConnection>,
    /// Cluster: one connection per node.
    nodes: HashMap<Addr, MultiplexedConnection>,
    /// Until when calls fail fast after a failed connection to the server, the
    /// primary or the Cluster's seeds.
    retry_at: Option<Instant>,
    /// The same for each Cluster node: a node that cannot be reached holds back only
    /// the keys of its own slots.
    node_retry: HashMap<Addr, Instant>,
}

impl fmt::Debug for RedisReplayGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisReplayGuard")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("min_replicas", &self.min_replicas)
            .field("connector", &self.connector)
            .field("connected", &{
                let slot = self.slot();
                slot.conn.is_some() || !slot.nodes.is_empty()
            })
            .finish_non_exhaustive()
    }
}

impl RedisReplayGuard {
    /// A guard for the Redis at `url`, in any form [`RedisEndpoint`] takes. Does
    /// no I/O: the connection is made on first use, so a verifier can start while
    /// Redis is still coming up (single-use routes answer 503 until it is reachable).
    pub fn new(url: &str) -> Result<Self, ConfigError> {
        Self::on(&RedisEndpoint::new(url))
    }

    /// A guard for `endpoint`: a server, a Sentinel-managed primary (asked again
    /// after a failure, so a failover is followed) or a Cluster (each key on the node
    /// that owns its slot, following `MOVED` and `ASK`), over TLS when the endpoint
    /// says so. Reads the endpoint's TLS files now.
    pub fn on(endpoint: &RedisEndpoint) -> Result<Self, ConfigError> {
        let connector = Connector::new(endpoint.resolve()?, DEFAULT_REPLAY_TIMEOUT);
        Ok(Self {
            connector,
            prefix: DEFAULT_REPLAY_KEY_PREFIX.into(),
            timeout: DEFAULT_REPLAY_TIMEOUT,
            min_replicas: 0,
            clock: Arc::new(SystemClock),
            state: Arc::default(),
        })
    }

    /// Like [`new`](Self::new), and connect now, so a wrong URL or an unreachable
    /// server shows up at startup.
    pub async fn connect(url: &str) -> Result<Self, ConfigError> {
        let guard = Self::new(url)?;
        guard
            .connection(
                &guard.key_for("", "connect"),
                None,
                &mut Progress::default(),
            )
            .await
            .map_err(|e| ConfigError::invalid("redis_url", e.to_string()))?;
        Ok(guard)
    }

    /// Like [`on`](Self::on), and connect now, so a wrong endpoint, an untrusted
    /// certificate or an unreachable server shows up at startup.
    pub async fn connect_to(endpoint: &RedisEndpoint) -> Result<Self, ConfigError> {
        let guard = Self::on(endpoint)?;
        guard
            .connection(
                &guard.key_for("", "connect"),
                None,
                &mut Progress::default(),
            )
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

    /// Count a use only once `n` replicas of the primary acknowledged it (`WAIT n`,
    /// sent with the `SET` in one round trip, waiting at most half the
    /// [`timeout`](Self::timeout)). Default 0: the primary's answer is enough.
    ///
    /// Redis replicates asynchronously, so without this a failover within the
    /// replication lag can promote a replica that never saw a use, and the mandate
    /// is accepted once more. With it, a use that fewer than `n` replicas
    /// acknowledged in time is denied (503) and stays recorded on the primary: the
    /// same mandate is then refused as a replay, and the client needs a new one.
    /// Every primary needs at least `n` replicas, or every single-use request fails.
    /// Set it for a Sentinel-managed primary or a Cluster with replicas.
    /// `CARACAL_REPLAY_MIN_REPLICAS` in `from_env`.
    #[must_use]
    pub fn min_replicas(mut self, n: u32) -> Self {
        self.min_replicas = n;
        self
    }

    /// The deadline of one check, connecting included. Default 500 ms. Past it the
    /// request fails closed with 503; longer values ride out slow Redis moments at
    /// the cost of holding requests longer when it is down.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self.connector = self.connector.with_timeout(timeout);
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

    /// Drop the connection a command failed on (`None`: the one server or
    /// primary), and forget the slots the Cluster's map gives that node: it may
    /// have lost them, so its keys ask the seeds again; other nodes' keys do not.
    fn forget_connection(&self, on: Option<&Addr>) {
        let mut slot = self.slot();
        match on {
            Some(addr) => {
                slot.nodes.remove(addr);
                self.connector.forget_slots_of(addr);
            }
            None => slot.conn = None,
        }
    }

    /// The lock serialising connection attempts to `node`.
    fn connect_lock(&self, node: Option<&Addr>) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .state
            .connecting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(lock) = locks.get(&node.cloned()) {
            return Arc::clone(lock);
        }
        if locks.len() >= MAX_NODES {
            // Only locks no caller holds or waits on.
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        }
        Arc::clone(locks.entry(node.cloned()).or_default())
    }

    fn config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
    }

    /// The connection for `key`: the one server (or primary), or in a Cluster the
    /// node that owns the key's slot (or `to`, the node a redirection named).
    /// Returns the node's address too (`None` outside a Cluster).
    async fn connection(
        &self,
        key: &str,
        to: Option<&Addr>,
        progress: &mut Progress,
    ) -> Result<(Option<Addr>, MultiplexedConnection), ReplayError> {
        let owner = match to
            .cloned()
            .or_else(|| self.connector.known_owner(key.as_bytes()))
        {
            Some(addr) => Some(addr),
            // The one server, or a slot the map does not place yet.
            None => {
                self.cooling(None)?;
                progress.connecting = Some(None);
                let owner = self
                    .connector
                    .cluster_owner(key.as_bytes())
                    .await
                    .map_err(|e| self.failed(None, &e))?;
                progress.connecting = None;
                owner
            }
        };
        if let Some(conn) = self.cached(owner.as_ref()) {
            return Ok((owner, conn));
        }
        progress.connecting = Some(owner.clone());
        let lock = self.connect_lock(owner.as_ref());
        let _connecting = lock.lock().await;
        if let Some(conn) = self.cached(owner.as_ref()) {
            progress.connecting = None;
            return Ok((owner, conn));
        }
        self.cooling(owner.as_ref())?;
        let made = match &owner {
            Some(addr) => self.connector.node_at(addr, self.config()).await,
            None => {
                self.connector
                    .primary_for(key.as_bytes(), self.config(), None)
                    .await
            }
        };
        progress.connecting = None;
        match made {
            Ok(node) => {
                let mut slot = self.slot();
                match &owner {
                    Some(addr) => {
                        slot.node_retry.remove(addr);
                        if slot.nodes.len() >= MAX_NODES {
                            slot.nodes.clear();
                        }
                        slot.nodes.insert(addr.clone(), node.conn.clone());
                    }
                    None => {
                        slot.retry_at = None;
                        slot.conn = Some(node.conn.clone());
                    }
                }
                Ok((owner, node.conn))
            }
            Err(e) => Err(self.failed(owner.as_ref(), &e)),
        }
    }

    fn cached(&self, owner: Option<&Addr>) -> Option<MultiplexedConnection> {
        let slot = self.slot();
        match owner {
            Some(addr) => slot.nodes.get(addr).cloned(),
            None => slot.conn.clone(),
        }
    }

    /// Fail fast while a recent connection attempt to `node` (`None`: the server,
    /// the primary or the Cluster's seeds) failed.
    fn cooling(&self, node: Option<&Addr>) -> Result<(), ReplayError> {
        let slot = self.slot();
        let until = match node {
            Some(addr) => slot.node_retry.get(addr).copied(),
            None => slot.retry_at,
        };
        if until.is_some_and(|t| Instant::now() < t) {
            return Err(ReplayError::new("redis unreachable"));
        }
        Ok(())
    }

    fn failed(&self, node: Option<&Addr>, e: &ConnectError) -> ReplayError {
        self.cool(node);
        ReplayError::new(format!("redis connection failed: {e}"))
    }

    /// Make calls that need a new connection to `node` fail fast for a while.
    fn cool(&self, node: Option<&Addr>) {
        let now = Instant::now();
        let until = now + RECONNECT_COOLDOWN;
        let mut slot = self.slot();
        match node {
            Some(addr) => {
                // Only nodes that failed within the cooldown are kept.
                slot.node_retry.retain(|_, t| *t > now);
                if slot.node_retry.len() < MAX_NODES {
                    slot.node_retry.insert(addr.clone(), until);
                }
            }
            None => slot.retry_at = Some(until),
        }
    }

    /// `SET NX` of `key`, following at most one redirection. `progress` says how
    /// far it got, for the caller to act on if the deadline passes.
    async fn set_nx(
        &self,
        key: String,
        ttl_ms: u64,
        progress: &mut Progress,
    ) -> Result<bool, ReplayError> {
        let mut cmd = ::redis::cmd("SET");
        cmd.arg(&key).arg(1).arg("NX").arg("PX").arg(ttl_ms);
        let mut to: Option<Addr> = None;
        let mut asking = false;
        // At most one redirection is followed per check; the deadline bounds it too.
        for _ in 0..2 {
            let (node, mut conn) = self.connection(&key, to.as_ref(), progress).await?;
            progress.sent_to = Some(node.clone());
            let wait = self.min_replicas > 0;
            // The reply to SET, and to WAIT when it was sent.
            let reply = if asking || wait {
                let mut pipe = ::redis::pipe();
                if asking {
                    pipe.cmd("ASKING").ignore();
                }
                pipe.add_command(cmd.clone());
                if wait {
                    // Never 0, which would wait forever.
                    let wait_ms = u64::try_from((self.timeout / 2).as_millis())
                        .unwrap_or(u64::MAX)
                        .max(1);
                    pipe.cmd("WAIT").arg(self.min_replicas).arg(wait_ms);
                }
                pipe.query_async::<Vec<Value>>(&mut conn)
                    .await
                    .map(|mut v| {
                        let acked = wait.then(|| v.pop().unwrap_or(Value::Nil));
                        (v.pop().unwrap_or(Value::Nil), acked)
                    })
                    .map_err(first_server_error)
            } else {
                cmd.query_async::<Value>(&mut conn).await.map(|v| (v, None))
            };
            let recorded = match reply {
                Ok((Value::Okay, acked)) => acked,
                Ok((Value::SimpleString(s), acked)) if s == "OK" => acked,
                Ok((Value::Nil, _)) => return Ok(false),
                Ok(_) => return Err(ReplayError::new("unexpected reply to SET NX")),
                Err(e) => {
                    // Only a Cluster node redirects; elsewhere it is an error.
                    if let (Some(r), Some(answered)) = (Redirect::of(&e), node.as_ref()) {
                        // The node answered: its connection is sound.
                        progress.sent_to = None;
                        let addr = r.addr(answered);
                        asking = r.ask;
                        if let (false, Addr::Tcp(host, port)) = (asking, &addr) {
                            self.connector.moved(key.as_bytes(), host, *port);
                        }
                        to = Some(addr);
                        continue;
                    }
                    // READONLY after a failover, a dropped socket, a timeout: start
                    // over with a fresh connection (and discovery) next time.
                    self.forget_connection(node.as_ref());
                    return Err(ReplayError::new(format!("redis error: {e}")));
                }
            };
            return match recorded {
                None => Ok(true),
                Some(Value::Int(n)) if n >= i64::from(self.min_replicas) => Ok(true),
                // Recorded on the primary only: a failover now could forget it.
                Some(Value::Int(n)) => Err(ReplayError::new(format!(
                    "the use reached {n} of {} replicas in time",
                    self.min_replicas
                ))),
                Some(_) => Err(ReplayError::new("unexpected reply to WAIT")),
            };
        }
        Err(ReplayError::new("redis redirected the key twice"))
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
            let mut progress = Progress::default();
            match tokio::time::timeout(self.timeout, self.set_nx(key, ttl_ms, &mut progress)).await
            {
                Ok(r) => r,
                Err(_) => {
                    // A connection that swallowed a command is not reused. A node
                    // (or discovery) that did not connect within the deadline is
                    // not tried again at once. Other nodes are left alone.
                    if let Some(node) = progress.sent_to {
                        self.forget_connection(node.as_ref());
                    }
                    if let Some(node) = progress.connecting {
                        self.cool(node.as_ref());
                    }
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
