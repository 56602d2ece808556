//! Settings of the Redis revocation feed, from code or from the environment.

use std::fmt;
use std::time::Duration;

use super::connect::Connector;
use super::consumer::{CONNECT_TIMEOUT, Consumer, Limits, Settings, StreamKind};
use super::endpoint::RedisEndpoint;
use super::handle::FeedHandle;
use super::lanes::LaneReporter;
use super::secret::secret;
use super::worker::Worker;
use crate::VerifierBuilder;
use crate::error::ConfigError;
use crate::revocation::{
    DEFAULT_MAX_STALENESS, DEFAULT_REVOCATION_TTL, DELEGATIONS_INVALIDATE_STREAM,
    SESSIONS_REVOKE_STREAM, StreamKey,
};
use crate::source::{FeedPolicy, Running, Source, SourceContext};

/// The default longest wait of one `XREAD BLOCK` (1 s).
pub const DEFAULT_BLOCK_TIMEOUT: Duration = Duration::from_secs(1);
/// The default first reconnection delay (50 ms).
pub const DEFAULT_RECONNECT_MIN: Duration = Duration::from_millis(50);
/// The default longest reconnection delay (2 s).
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(2);
/// The default most fields in one stream entry (64). Caracal's events carry under ten.
pub const DEFAULT_MAX_ENTRY_FIELDS: usize = 64;
/// The default most bytes of names and values in one stream entry (16 KiB).
pub const DEFAULT_MAX_ENTRY_BYTES: usize = 16 * 1024;
/// The default most bytes of one reply from Redis (1 MiB).
pub const DEFAULT_MAX_REPLY_BYTES: usize = 1024 * 1024;

/// Settings of the Redis revocation feed: where to read, how to authenticate events,
/// and how long the mirror may go without a successful read.
///
/// Hand it to [`VerifierBuilder::redis_revocations`](crate::VerifierBuilder::redis_revocations);
/// `build()` validates it and starts the consumer task. See the [module docs](super)
/// for the consumer's behaviour.
///
/// ```
/// use std::time::Duration;
/// use caracal_verifier::redis::RedisRevocations;
/// use caracal_verifier::revocation::StreamKey;
///
/// let key = StreamKey::from_hex(&"2a".repeat(32)).unwrap();
/// let feed = RedisRevocations::new("redis://redis.internal:6379")
///     .stream_key(key)
///     .max_staleness(Duration::from_secs(10));
/// # let _ = feed;
/// ```
#[derive(Clone)]
#[must_use]
pub struct RedisRevocations {
    endpoint: RedisEndpoint,
    stream_key: Option<StreamKey>,
    accept_unsigned: bool,
    fail_open: bool,
    max_staleness: Duration,
    revoke_stream: String,
    epoch_stream: String,
    catch_up: Duration,
    block_timeout: Option<Duration>,
    reconnect_min: Duration,
    reconnect_max: Duration,
    max_entry_fields: usize,
    max_entry_bytes: usize,
    max_reply_bytes: usize,
}

impl fmt::Debug for RedisRevocations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRevocations")
            .field("endpoint", &self.endpoint)
            .field("stream_key", &self.stream_key)
            .field("accept_unsigned", &self.accept_unsigned)
            .field("fail_open", &self.fail_open)
            .field("max_staleness", &self.max_staleness)
            .field("revoke_stream", &self.revoke_stream)
            .field("epoch_stream", &self.epoch_stream)
            .field("catch_up", &self.catch_up)
            .field("block_timeout", &self.effective_block_timeout())
            .field("reconnect", &(self.reconnect_min..=self.reconnect_max))
            .field("max_entry_fields", &self.max_entry_fields)
            .field("max_entry_bytes", &self.max_entry_bytes)
            .field("max_reply_bytes", &self.max_reply_bytes)
            .finish()
    }
}

fn env_flag(get: &dyn Fn(&str) -> Option<String>, var: &'static str) -> Result<bool, ConfigError> {
    match get(var).as_deref().map(str::trim) {
        None | Some("") | Some("0") | Some("false") => Ok(false),
        Some("1") | Some("true") => Ok(true),
        Some(_) => Err(ConfigError::Env {
            var,
            reason: "expected 1, true, 0 or false".into(),
        }),
    }
}

impl RedisRevocations {
    /// A feed reading from the Redis at `url`: a server (`redis://`, `rediss://`,
    /// `redis+unix://`), a Sentinel-managed primary (`redis+sentinel://`) or a
    /// Cluster (`redis+cluster://`); [`RedisEndpoint`] lists the forms. For a private
    /// CA or a client certificate, use [`on`](Self::on) with a configured endpoint.
    /// Every other setting has the default stated on its setter; a
    /// [`stream_key`](Self::stream_key) is required unless unsigned events are
    /// explicitly accepted.
    pub fn new(url: impl Into<String>) -> Self {
        Self::on(RedisEndpoint::new(url))
    }

    /// A feed reading from `endpoint`.
    ///
    /// In Cluster mode the two streams may live on different nodes, so each has its
    /// own reader and connection, following `MOVED` and `ASK` redirections; the feed
    /// is fresh only while both readers are. In Sentinel mode the feed asks the
    /// Sentinels for the primary, checks with `ROLE` that it is one, and after a
    /// failover reconnects to the new primary. The new primary is another server
    /// (its run id differs), and replication is asynchronous, so it may lack entries
    /// the feed read from the old one: the feed re-reads the retained history of both
    /// streams from the catch-up start and fails closed (503) until it has.
    pub fn on(endpoint: RedisEndpoint) -> Self {
        Self {
            endpoint,
            stream_key: None,
            accept_unsigned: false,
            fail_open: false,
            max_staleness: DEFAULT_MAX_STALENESS,
            revoke_stream: SESSIONS_REVOKE_STREAM.into(),
            epoch_stream: DELEGATIONS_INVALIDATE_STREAM.into(),
            catch_up: DEFAULT_REVOCATION_TTL,
            block_timeout: None,
            reconnect_min: DEFAULT_RECONNECT_MIN,
            reconnect_max: DEFAULT_RECONNECT_MAX,
            max_entry_fields: DEFAULT_MAX_ENTRY_FIELDS,
            max_entry_bytes: DEFAULT_MAX_ENTRY_BYTES,
            max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
        }
    }

    /// Settings from the environment; `Ok(None)` when `CARACAL_REDIS_URL` is unset
    /// or empty.
    ///
    /// | variable | setting |
    /// | --- | --- |
    /// | `CARACAL_REDIS_URL` (or `…_FILE`) and the `CARACAL_REDIS_TLS_*` and `CARACAL_REDIS_SENTINEL_*` variables | the [`RedisEndpoint`], see [`RedisEndpoint::from_lookup`] |
    /// | `STREAMS_HMAC_KEY` | [`stream_key`](Self::stream_key), hex, at least 32 bytes |
    /// | `STREAMS_HMAC_KEY_FILE` | a file holding that key (trailing newline trimmed), read when `STREAMS_HMAC_KEY` is unset |
    /// | `CARACAL_REVOCATION_MAX_STALENESS_SECS` | [`max_staleness`](Self::max_staleness), default 30 |
    /// | `CARACAL_REVOCATION_ALLOW_UNSIGNED` | `1`/`true`: [`dangerous_accept_unsigned`](Self::dangerous_accept_unsigned), used only when no key is set |
    /// | `CARACAL_REVOCATION_MAX_ENTRY_FIELDS` | [`max_entry_fields`](Self::max_entry_fields), default 64 |
    /// | `CARACAL_REVOCATION_MAX_ENTRY_BYTES` | [`max_entry_bytes`](Self::max_entry_bytes), default 16384 |
    /// | `CARACAL_REVOCATION_MAX_REPLY_BYTES` | [`max_reply_bytes`](Self::max_reply_bytes), default 1048576 |
    ///
    /// Without `STREAMS_HMAC_KEY` (or its file) and without the opt-in, this is an
    /// error naming `STREAMS_HMAC_KEY`: a feed that trusts anyone who can write to the
    /// stream has to be asked for. An unreadable or empty key file is an error naming
    /// `STREAMS_HMAC_KEY_FILE`, never echoing the file's content.
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>, ConfigError> {
        let Some(endpoint) = RedisEndpoint::from_lookup(get)? else {
            return Ok(None);
        };
        let mut feed = Self::on(endpoint);
        let key = secret(get, "STREAMS_HMAC_KEY", "STREAMS_HMAC_KEY_FILE")?;
        match key {
            Some((hex, var)) => {
                let key = StreamKey::from_hex(&hex).map_err(|e| ConfigError::Env {
                    var,
                    reason: match e {
                        ConfigError::Invalid { reason, .. } => reason,
                        other => other.to_string(),
                    },
                })?;
                feed = feed.stream_key(key);
            }
            None if env_flag(get, "CARACAL_REVOCATION_ALLOW_UNSIGNED")? => {
                feed = feed.dangerous_accept_unsigned();
            }
            None => {
                return Err(ConfigError::Env {
                    var: "STREAMS_HMAC_KEY",
                    reason: "not set; it authenticates revocation events \
                             (set CARACAL_REVOCATION_ALLOW_UNSIGNED=1 to accept unsigned events)"
                        .into(),
                });
            }
        }
        let number = |var: &'static str| -> Result<Option<u64>, ConfigError> {
            match get(var).as_deref().map(str::trim) {
                None | Some("") => Ok(None),
                Some(v) => v.parse().map(Some).map_err(|_| ConfigError::Env {
                    var,
                    reason: "not a valid number".into(),
                }),
            }
        };
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        if let Some(secs) = number("CARACAL_REVOCATION_MAX_STALENESS_SECS")? {
            feed = feed.max_staleness(Duration::from_secs(secs));
        }
        if let Some(n) = number("CARACAL_REVOCATION_MAX_ENTRY_FIELDS")? {
            feed = feed.max_entry_fields(size(n));
        }
        if let Some(n) = number("CARACAL_REVOCATION_MAX_ENTRY_BYTES")? {
            feed = feed.max_entry_bytes(size(n));
        }
        if let Some(n) = number("CARACAL_REVOCATION_MAX_REPLY_BYTES")? {
            feed = feed.max_reply_bytes(size(n));
        }
        Ok(Some(feed))
    }

    /// The key that signs stream messages (`STREAMS_HMAC_KEY`). Required unless
    /// [`dangerous_accept_unsigned`](Self::dangerous_accept_unsigned) is set. With a
    /// key, messages that are unsigned or whose `_sig` does not match are dropped
    /// (counted in [`FeedStatus::dropped`](crate::revocation::FeedStatus::dropped) and
    /// logged without field values).
    pub fn stream_key(mut self, key: StreamKey) -> Self {
        self.stream_key = Some(key);
        self
    }

    /// Accept unsigned events when no [`stream_key`](Self::stream_key) is set. Default
    /// off. Turning it on lets anyone who can write to the Redis streams revoke
    /// sessions (denial of service) and raise epochs; it cannot un-revoke anything. It
    /// is logged at `warn` when the feed starts. Ignored when a key is set.
    pub fn dangerous_accept_unsigned(mut self) -> Self {
        self.accept_unsigned = true;
        self
    }

    /// Let requests through while the feed is stale instead of failing closed.
    /// Default off: a stale feed gives 503 `revocation_unavailable`. Turning it on
    /// keeps serving during a Redis outage at the cost of honouring revoked mandates
    /// until the feed recovers. Logged at `warn` when the feed starts and on every
    /// request let through this way.
    pub fn dangerous_fail_open(mut self) -> Self {
        self.fail_open = true;
        self
    }

    /// How long after its last successful read the feed still counts as fresh.
    /// Default 30 s ([`DEFAULT_MAX_STALENESS`]). The feed is also stale whenever its
    /// connection is down. Longer values tolerate a hung connection longer, during
    /// which revocations may go unseen; shorter values need a shorter
    /// [`block_timeout`](Self::block_timeout), i.e. more idle reads.
    pub fn max_staleness(mut self, max: Duration) -> Self {
        self.max_staleness = max;
        self
    }

    /// The revocation stream. Default `caracal.sessions.revoke`. The name is part of
    /// each message's signature, so it must match the publisher's.
    pub fn revoke_stream(mut self, name: impl Into<String>) -> Self {
        self.revoke_stream = name.into();
        self
    }

    /// The delegation-epoch stream. Default `caracal.delegations.invalidate`. The name
    /// is part of each message's signature, so it must match the publisher's.
    pub fn epoch_stream(mut self, name: impl Into<String>) -> Self {
        self.epoch_stream = name.into();
        self
    }

    /// How much retained history is replayed at start, and again after Redis
    /// restarts. Default 24 h ([`DEFAULT_REVOCATION_TTL`]), the revocation TTL:
    /// older revocations can only name expired mandates. Shorter values start
    /// faster but forget revocations published earlier than the window before start.
    pub fn catch_up(mut self, window: Duration) -> Self {
        self.catch_up = window;
        self
    }

    /// The longest wait of one `XREAD BLOCK`. Default 1 s ([`DEFAULT_BLOCK_TIMEOUT`]),
    /// or a third of [`max_staleness`](Self::max_staleness) when that is shorter.
    /// Each wait that ends without events still counts as a successful read, so it
    /// must be below `max_staleness`, or a quiet stream would look stale. Shorter
    /// values cost one more idle round trip per wait; they do not change how fast
    /// events arrive (a blocked read returns as soon as one is published).
    pub fn block_timeout(mut self, timeout: Duration) -> Self {
        self.block_timeout = Some(timeout);
        self
    }

    /// Bounds of the reconnection delay, which doubles from `min` to `max` (with
    /// jitter) while Redis is unreachable. Default 50 ms to 2 s. Lower bounds recover
    /// sooner after a blip at the cost of more connection attempts against a
    /// struggling server; the feed fails closed while disconnected either way.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max;
        self
    }

    /// The most fields one stream entry may have. Default 64. A larger entry is
    /// dropped and counted without being parsed into fields.
    pub fn max_entry_fields(mut self, n: usize) -> Self {
        self.max_entry_fields = n;
        self
    }

    /// The most bytes of field names and values one stream entry may have. Default
    /// 16 KiB; Caracal's events are a few hundred bytes. A larger entry is dropped and
    /// counted.
    pub fn max_entry_bytes(mut self, n: usize) -> Self {
        self.max_entry_bytes = n;
        self
    }

    /// The most bytes of one reply from Redis. Default 1 MiB. A writer to the stream
    /// chooses how large an entry is; the feed's connection counts the bytes of each
    /// reply and breaks once they pass this bound, then reads through a server-side
    /// script (`EVAL`) that replaces entries over the entry bounds by a marker, for
    /// 60 s. The feed's memory for one reply therefore stays within a small multiple
    /// of this bound, whatever sits in the stream. Must be at least 64 KiB and hold
    /// one entry of the maximum size.
    pub fn max_reply_bytes(mut self, n: usize) -> Self {
        self.max_reply_bytes = n;
        self
    }

    fn effective_block_timeout(&self) -> Duration {
        self.block_timeout
            .unwrap_or_else(|| DEFAULT_BLOCK_TIMEOUT.min(self.max_staleness / 3))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.stream_key.is_none() && !self.accept_unsigned {
            return Err(ConfigError::Missing("stream_key"));
        }
        if self.max_staleness < Duration::from_millis(10) {
            return Err(ConfigError::invalid(
                "max_staleness",
                "must be at least 10 ms",
            ));
        }
        let block = self.effective_block_timeout();
        // BLOCK 0 would wait forever.
        if block < Duration::from_millis(1) {
            return Err(ConfigError::invalid(
                "block_timeout",
                "must be at least 1 ms",
            ));
        }
        if block >= self.max_staleness {
            return Err(ConfigError::invalid(
                "block_timeout",
                "must be below max_staleness, or a quiet stream looks stale",
            ));
        }
        if self.revoke_stream.is_empty() || self.epoch_stream.is_empty() {
            return Err(ConfigError::invalid(
                "stream",
                "stream names must not be empty",
            ));
        }
        if self.revoke_stream == self.epoch_stream {
            return Err(ConfigError::invalid(
                "epoch_stream",
                "must differ from revoke_stream",
            ));
        }
        if self.max_entry_fields < 4 {
            return Err(ConfigError::invalid(
                "max_entry_fields",
                "must be at least 4 (zone_id, an anchor, reason and _sig)",
            ));
        }
        if self.max_entry_bytes < 512 {
            return Err(ConfigError::invalid(
                "max_entry_bytes",
                "must be at least 512",
            ));
        }
        let widest_entry = self
            .max_entry_bytes
            .saturating_add(self.max_entry_fields * 32 + 64);
        if self.max_reply_bytes < (64 * 1024).max(widest_entry) {
            return Err(ConfigError::invalid(
                "max_reply_bytes",
                "must be at least 64 KiB and hold one entry of max_entry_bytes",
            ));
        }
        if self.reconnect_min < Duration::from_millis(1) || self.reconnect_min > self.reconnect_max
        {
            return Err(ConfigError::invalid(
                "reconnect_backoff",
                "needs 1 ms <= min <= max",
            ));
        }
        Ok(())
    }
}

impl VerifierBuilder {
    /// Keep the revocation set current from Caracal's Redis Streams (feature
    /// `redis`): `build` starts the consumer on its own thread and runtime. Default:
    /// no feed (revocations come only through [`Verifier::revocations`](crate::Verifier::revocations)).
    /// The same as [`source(feed)`](VerifierBuilder::source).
    pub fn redis_revocations(self, feed: RedisRevocations) -> Self {
        self.source(feed)
    }
}

/// Validates the settings, attaches the feed to the verifier's revocation set, and
/// starts the consumer on its own thread and single-threaded runtime: parsing stream
/// entries and checking their signatures never runs on a worker that serves
/// requests, and building the verifier needs no runtime.
impl Source for RedisRevocations {
    fn start(
        self: Box<Self>,
        ctx: &mut SourceContext<'_>,
    ) -> Result<Box<dyn Running>, ConfigError> {
        self.validate()?;
        let resolved = self.endpoint.resolve()?;
        let mut policy = FeedPolicy::new(self.max_staleness);
        if self.fail_open {
            policy = policy.dangerous_fail_open();
        }
        let health = ctx.attach_revocation_feed(policy)?;
        let set = ctx.revocations().clone();
        let key = self.stream_key.clone();
        if key.is_none() {
            tracing::warn!(
                "revocation feed accepts UNSIGNED events (dangerous_accept_unsigned): \
                 anyone who can write to the streams can revoke sessions"
            );
        }
        if self.fail_open {
            tracing::warn!(
                "revocation feed FAILS OPEN (dangerous_fail_open): while it is stale, \
                 revoked mandates are accepted"
            );
        }
        let block = self.effective_block_timeout();
        tracing::info!(
            endpoint = %self.endpoint.redacted_url(),
            mode = resolved.mode_name(),
            tls = resolved.tls.is_some(),
            "revocation feed starting"
        );
        let connector = Connector::new(resolved, CONNECT_TIMEOUT);
        let streams = vec![
            (self.revoke_stream, StreamKind::Revoke),
            (self.epoch_stream, StreamKind::Epoch),
        ];
        // One reader per stream in a Cluster, where each stream's key may live on
        // its own node; otherwise both streams on one connection.
        let readers: Vec<Vec<(String, StreamKind)>> = if connector.is_cluster() {
            streams.into_iter().map(|s| vec![s]).collect()
        } else {
            vec![streams]
        };
        let lanes = LaneReporter::split(health.clone(), readers.len());
        let consumers: Vec<Consumer> = readers
            .into_iter()
            .zip(lanes)
            .map(|(streams, lane)| {
                Consumer::new(Settings {
                    connector: connector.clone(),
                    key: key.clone(),
                    streams,
                    catch_up: self.catch_up,
                    block,
                    reconnect_min: self.reconnect_min,
                    reconnect_max: self.reconnect_max,
                    limits: Limits {
                        max_fields: self.max_entry_fields,
                        max_bytes: self.max_entry_bytes,
                        max_reply_bytes: self.max_reply_bytes,
                    },
                    set: set.clone(),
                    health: lane,
                })
            })
            .collect();
        // The feed never turns fresh if its runtime cannot start: verification
        // fails closed.
        let worker = Worker::spawn(
            "caracal-revocation-feed",
            "revocation feed",
            move |stop| async move {
                let mut readers = tokio::task::JoinSet::new();
                for c in consumers {
                    readers.spawn(c.run(stop.clone()));
                }
                while readers.join_next().await.is_some() {}
            },
        )
        .map_err(|_| ConfigError::invalid("redis_revocations", "cannot start the feed's thread"))?;
        Ok(Box::new(FeedHandle::new(worker)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::Verifier;
    use crate::revocation::RevocationSet;

    /// Start `feed` on `set` as `build` does: a verifier holding it.
    fn start_on(feed: RedisRevocations, set: &RevocationSet) -> Result<Verifier, ConfigError> {
        Verifier::builder()
            .issuer("https://sts.example.com")
            .audience("resource://api")
            .zone("zone-1")
            .revocations(set.clone())
            .source(feed)
            .build()
    }

    const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn env_var(e: ConfigError) -> &'static str {
        match e {
            ConfigError::Env { var, .. } => var,
            other => panic!("expected an env error, got {other:?}"),
        }
    }

    #[test]
    fn env_without_url_is_no_feed() {
        assert!(
            RedisRevocations::from_lookup(&lookup(&[]))
                .unwrap()
                .is_none()
        );
        let empty = lookup(&[("CARACAL_REDIS_URL", " "), ("STREAMS_HMAC_KEY", KEY)]);
        assert!(RedisRevocations::from_lookup(&empty).unwrap().is_none());
    }

    #[test]
    fn env_requires_a_key_or_the_unsigned_opt_in() {
        let no_key = lookup(&[("CARACAL_REDIS_URL", "redis://127.0.0.1:6379")]);
        let err = RedisRevocations::from_lookup(&no_key).unwrap_err();
        assert!(err.to_string().contains("STREAMS_HMAC_KEY"), "{err}");
        assert_eq!(env_var(err), "STREAMS_HMAC_KEY");

        let opt_out = lookup(&[
            ("CARACAL_REDIS_URL", "redis://127.0.0.1:6379"),
            ("CARACAL_REVOCATION_ALLOW_UNSIGNED", "0"),
        ]);
        assert!(RedisRevocations::from_lookup(&opt_out).is_err());

        for yes in ["1", "true"] {
            let opt_in = lookup(&[
                ("CARACAL_REDIS_URL", "redis://127.0.0.1:6379"),
                ("CARACAL_REVOCATION_ALLOW_UNSIGNED", yes),
            ]);
            let feed = RedisRevocations::from_lookup(&opt_in).unwrap().unwrap();
            assert!(feed.accept_unsigned && feed.stream_key.is_none());
        }
        let junk = lookup(&[
            ("CARACAL_REDIS_URL", "redis://127.0.0.1:6379"),
            ("CARACAL_REVOCATION_ALLOW_UNSIGNED", "yes please"),
        ]);
        assert_eq!(
            env_var(RedisRevocations::from_lookup(&junk).unwrap_err()),
            "CARACAL_REVOCATION_ALLOW_UNSIGNED"
        );
    }

    #[test]
    fn env_key_and_staleness() {
        let ok = lookup(&[
            ("CARACAL_REDIS_URL", "redis://127.0.0.1:6379"),
            ("STREAMS_HMAC_KEY", KEY),
            ("CARACAL_REVOCATION_MAX_STALENESS_SECS", "7"),
        ]);
        let feed = RedisRevocations::from_lookup(&ok).unwrap().unwrap();
        assert!(feed.stream_key.is_some());
        assert_eq!(feed.max_staleness, Duration::from_secs(7));
        assert_eq!(feed.effective_block_timeout(), Duration::from_secs(1));

        let short = lookup(&[
            ("CARACAL_REDIS_URL", "redis://127.0.0.1:6379"),
            ("STREAMS_HMAC_KEY", "abcd"),
        ]);
        let err = RedisRevocations::from_lookup(&short).unwrap_err();
        assert!(!err.to_string().contains("abcd"), "{err}");
        assert_eq!(env_var(err), "STREAMS_HMAC_KEY");

        let bad_secs = lookup(&[
            ("CARACAL_REDIS_URL", "redis://127.0.0.1:6379"),
            ("STREAMS_HMAC_KEY", KEY),
            ("CARACAL_REVOCATION_MAX_STALENESS_SECS", "soon"),
        ]);
        assert_eq!(
            env_var(RedisRevocations::from_lookup(&bad_secs).unwrap_err()),
            "CARACAL_REVOCATION_MAX_STALENESS_SECS"
        );
    }

    fn key() -> StreamKey {
        StreamKey::from_hex(KEY).unwrap()
    }

    #[test]
    fn the_stream_key_may_come_from_a_file() {
        let dir = std::env::temp_dir().join(format!("caracal-streams-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        std::fs::write(&good, format!("{KEY}\n")).unwrap();
        let bad = dir.join("bad");
        std::fs::write(&bad, "zz-not-hex-zz\n").unwrap();
        let with_file = |path: &std::path::Path| {
            lookup(&[
                ("CARACAL_REDIS_URL", "redis://127.0.0.1:6379"),
                ("STREAMS_HMAC_KEY_FILE", path.to_str().unwrap()),
            ])
        };
        let feed = RedisRevocations::from_lookup(&with_file(&good))
            .unwrap()
            .unwrap();
        assert!(feed.stream_key.is_some());

        let err = RedisRevocations::from_lookup(&with_file(&bad)).unwrap_err();
        assert!(!err.to_string().contains("zz-not-hex-zz"), "{err}");
        assert_eq!(env_var(err), "STREAMS_HMAC_KEY_FILE");

        let missing = with_file(&dir.join("missing"));
        assert_eq!(
            env_var(RedisRevocations::from_lookup(&missing).unwrap_err()),
            "STREAMS_HMAC_KEY_FILE"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn validation_names_the_setting() {
        let base = || RedisRevocations::new("redis://127.0.0.1:1").stream_key(key());
        let setting = |feed: RedisRevocations| match feed.validate().unwrap_err() {
            ConfigError::Invalid { setting, .. } | ConfigError::Missing(setting) => setting,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            setting(RedisRevocations::new("redis://127.0.0.1:1")),
            "stream_key"
        );
        assert!(
            RedisRevocations::new("redis://127.0.0.1:1")
                .dangerous_accept_unsigned()
                .validate()
                .is_ok()
        );
        assert_eq!(
            setting(
                base()
                    .max_staleness(Duration::from_secs(2))
                    .block_timeout(Duration::from_secs(2))
            ),
            "block_timeout"
        );
        assert_eq!(
            setting(base().block_timeout(Duration::ZERO)),
            "block_timeout"
        );
        assert_eq!(
            setting(base().epoch_stream(SESSIONS_REVOKE_STREAM)),
            "epoch_stream"
        );
        assert_eq!(
            setting(base().reconnect_backoff(Duration::from_secs(3), Duration::from_secs(1))),
            "reconnect_backoff"
        );
        // A short staleness shortens the default block timeout instead of failing.
        let short = base().max_staleness(Duration::from_millis(600));
        assert!(short.validate().is_ok());
        assert_eq!(short.effective_block_timeout(), Duration::from_millis(200));
    }

    #[test]
    fn the_feed_runs_on_its_own_thread_without_a_runtime() {
        let set = RevocationSet::new();
        let feed = start_on(
            RedisRevocations::new("redis://127.0.0.1:1").stream_key(key()),
            &set,
        )
        .unwrap();
        assert!(feed.revocation_feed().unwrap().is_running());
        assert!(set.feed_status().is_some_and(|s| !s.fresh));
        drop(feed);
        assert!(!set.is_current());
    }

    #[test]
    fn entry_and_reply_bounds_are_validated_and_read_from_the_environment() {
        let base = || RedisRevocations::new("redis://127.0.0.1:1").stream_key(key());
        let setting = |feed: RedisRevocations| match feed.validate().unwrap_err() {
            ConfigError::Invalid { setting, .. } => setting,
            other => panic!("{other:?}"),
        };
        assert_eq!(setting(base().max_entry_fields(3)), "max_entry_fields");
        assert_eq!(setting(base().max_entry_bytes(100)), "max_entry_bytes");
        assert_eq!(setting(base().max_reply_bytes(1000)), "max_reply_bytes");
        assert_eq!(
            setting(base().max_entry_bytes(2 << 20).max_reply_bytes(1 << 20)),
            "max_reply_bytes"
        );
        let env = lookup(&[
            ("CARACAL_REDIS_URL", "redis://127.0.0.1:6379"),
            ("STREAMS_HMAC_KEY", KEY),
            ("CARACAL_REVOCATION_MAX_ENTRY_FIELDS", "16"),
            ("CARACAL_REVOCATION_MAX_ENTRY_BYTES", "4096"),
            ("CARACAL_REVOCATION_MAX_REPLY_BYTES", "262144"),
        ]);
        let feed = RedisRevocations::from_lookup(&env).unwrap().unwrap();
        assert_eq!(
            (
                feed.max_entry_fields,
                feed.max_entry_bytes,
                feed.max_reply_bytes
            ),
            (16, 4096, 262_144)
        );
        assert!(feed.validate().is_ok());
        let bad = lookup(&[
            ("CARACAL_REDIS_URL", "redis://127.0.0.1:6379"),
            ("STREAMS_HMAC_KEY", KEY),
            ("CARACAL_REVOCATION_MAX_ENTRY_BYTES", "lots"),
        ]);
        assert_eq!(
            env_var(RedisRevocations::from_lookup(&bad).unwrap_err()),
            "CARACAL_REVOCATION_MAX_ENTRY_BYTES"
        );
    }

    #[tokio::test]
    async fn one_feed_per_set_and_bad_urls_are_not_echoed() {
        let set = RevocationSet::new();
        let err = start_on(
            RedisRevocations::new("nonsense://user:hunter2@host").stream_key(key()),
            &set,
        )
        .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");

        let first = start_on(
            RedisRevocations::new("redis://127.0.0.1:1").stream_key(key()),
            &set,
        )
        .unwrap();
        let err = start_on(
            RedisRevocations::new("redis://127.0.0.1:1").stream_key(key()),
            &set,
        )
        .unwrap_err();
        assert!(err.to_string().contains("another feed"), "{err}");
        first.shutdown().await;
        assert!(!first.revocation_feed().unwrap().is_running());
    }

    #[test]
    fn debug_hides_the_password_and_key() {
        let feed =
            RedisRevocations::new("redis://:hunter2@redis.internal:6379/0").stream_key(key());
        let dbg = format!("{feed:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(!dbg.contains(KEY), "{dbg}");
        assert!(dbg.contains("redis.internal"), "{dbg}");
    }
}
