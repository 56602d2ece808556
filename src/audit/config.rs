//! [`AuditEmitter`]: its settings, from code or the environment, and its start as a
//! [`Source`].

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::mpsc;

use super::key::AuditKey;
use super::spill::Spill;
use super::stats::{AuditStats, Counters};
use super::wire::Form;
use super::writer::Writer;
use crate::VerifierBuilder;
use crate::action::{ActionResult, ActionSink};
use crate::error::ConfigError;
use crate::future::BoxFuture;
use crate::redis::Worker;
use crate::redis::consumer::Backoff;
use crate::redis::secret::secret;
use crate::source::{Running, Source, SourceContext};

/// Caracal's audit stream.
pub const AUDIT_STREAM: &str = "caracal.audit.events";
/// The `event_type` this emitter writes by default (see the [module docs](super)).
pub const DEFAULT_EVENT_TYPE: &str = "verifier_resource_request";
/// The default queue capacity (10,000 events), as Caracal's emitters.
pub const DEFAULT_QUEUE_CAPACITY: usize = 10_000;
/// The default most events in one pipelined batch (1,000), as Caracal's emitters.
pub const DEFAULT_BATCH_SIZE: usize = 1_000;
/// The default longest wait before a partial batch is sent (50 ms), as Caracal's.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// The default bound of one connection attempt or one batch's replies (2 s).
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(2);
/// The default time shutdown may spend sending what is queued (5 s).
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// The default cap on the replay directory's bytes (64 MiB).
pub const DEFAULT_MAX_SPILL_BYTES: u64 = 64 * 1024 * 1024;
/// The default cap on the replay directory's files (10,000).
pub const DEFAULT_MAX_SPILL_FILES: u64 = 10_000;

/// One entry of the audit stream: its fields `id`, `data` and `sig`.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// The event id (a UUIDv7), also the `id` inside `data`.
    pub id: String,
    /// The event, one JSON object: the exact bytes that are signed.
    pub data: String,
    /// Lowercase hex HMAC-SHA256 of `data`; `None` for an unsigned emitter.
    pub sig: Option<String>,
}

/// The action-result audit emitter: hands each [`ActionResult`] of a verifier to
/// Caracal's audit stream (`caracal.audit.events`), signed, without ever making a
/// request wait. See the [module docs](super).
///
/// Hand it to [`VerifierBuilder::audit`]; take its [`stats`](Self::stats) first if
/// you export metrics.
#[derive(Clone)]
#[must_use]
pub struct AuditEmitter {
    endpoint: crate::redis::RedisEndpoint,
    key: Option<AuditKey>,
    unsigned: bool,
    stream: String,
    event_type: String,
    manifest_sha: Option<String>,
    replay_dir: Option<PathBuf>,
    max_spill_bytes: u64,
    max_spill_files: u64,
    queue_capacity: usize,
    batch_size: usize,
    flush_interval: Duration,
    io_timeout: Duration,
    shutdown_timeout: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
    stats: AuditStats,
}

impl fmt::Debug for AuditEmitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditEmitter")
            .field("endpoint", &self.endpoint)
            .field("key", &self.key)
            .field("unsigned", &self.unsigned)
            .field("stream", &self.stream)
            .field("event_type", &self.event_type)
            .field("manifest_sha", &self.manifest_sha)
            .field("replay_dir", &self.replay_dir)
            .field("max_spill_bytes", &self.max_spill_bytes)
            .field("max_spill_files", &self.max_spill_files)
            .field("queue_capacity", &self.queue_capacity)
            .field("batch_size", &self.batch_size)
            .field("flush_interval", &self.flush_interval)
            .field("io_timeout", &self.io_timeout)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("reconnect", &(self.reconnect_min..=self.reconnect_max))
            .field("stats", &self.stats)
            .finish()
    }
}

impl AuditEmitter {
    /// An emitter writing to the Redis at `url`, in any form
    /// [`RedisEndpoint`](crate::redis::RedisEndpoint) takes (a server, a
    /// Sentinel-managed primary, a Cluster; TLS with `rediss`).
    /// A [`key`](Self::key) is required unless [`dangerous_unsigned`](Self::dangerous_unsigned)
    /// is set; every other setting has the default its setter states.
    pub fn new(url: impl Into<String>) -> Self {
        Self::on(crate::redis::RedisEndpoint::new(url))
    }

    /// An emitter writing to `endpoint`, so it shares the revocation feed's
    /// connection settings (TLS CA, client certificate, Sentinel credentials).
    pub fn on(endpoint: crate::redis::RedisEndpoint) -> Self {
        Self {
            endpoint,
            key: None,
            unsigned: false,
            stream: AUDIT_STREAM.into(),
            event_type: DEFAULT_EVENT_TYPE.into(),
            manifest_sha: None,
            replay_dir: None,
            max_spill_bytes: DEFAULT_MAX_SPILL_BYTES,
            max_spill_files: DEFAULT_MAX_SPILL_FILES,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            batch_size: DEFAULT_BATCH_SIZE,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            io_timeout: DEFAULT_IO_TIMEOUT,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            reconnect_min: crate::redis::DEFAULT_RECONNECT_MIN,
            reconnect_max: crate::redis::DEFAULT_RECONNECT_MAX,
            stats: AuditStats::default(),
        }
    }

    /// Settings from the process environment; see [`from_lookup`](Self::from_lookup).
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        Self::from_lookup(&|k| std::env::var(k).ok())
    }

    /// Settings from the environment; `Ok(None)` unless `CARACAL_AUDIT` is `on`.
    ///
    /// | variable | setting |
    /// | --- | --- |
    /// | `CARACAL_AUDIT` | `on`/`1`/`true`: emit; `off`/`0`/`false`/unset: no emitter |
    /// | `CARACAL_REDIS_URL` | the URL given to [`new`](Self::new); required when on |
    /// | `AUDIT_HMAC_KEY` | [`key`](Self::key), hex, at least 32 bytes |
    /// | `AUDIT_HMAC_KEY_FILE` | a file holding that key (trailing newline trimmed), read when `AUDIT_HMAC_KEY` is unset |
    /// | `CARACAL_AUDIT_ALLOW_UNSIGNED` | `1`/`true`: [`dangerous_unsigned`](Self::dangerous_unsigned), used only when no key is set |
    /// | `AUDIT_REPLAY_DIR` | [`replay_dir`](Self::replay_dir) |
    ///
    /// Errors name the variable and never echo a key or a key file's content.
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>, ConfigError> {
        if !audit_switch(get)? {
            return Ok(None);
        }
        let endpoint = crate::redis::RedisEndpoint::from_lookup(get)?.ok_or(ConfigError::Env {
            var: "CARACAL_REDIS_URL",
            reason: "not set; CARACAL_AUDIT=on sends audit events to Redis".into(),
        })?;
        let mut emitter = Self::on(endpoint);
        match secret(get, "AUDIT_HMAC_KEY", "AUDIT_HMAC_KEY_FILE")? {
            Some((hex, var)) => {
                let key = AuditKey::from_hex(&hex).map_err(|e| ConfigError::Env {
                    var,
                    reason: match e {
                        ConfigError::Invalid { reason, .. } => reason,
                        other => other.to_string(),
                    },
                })?;
                emitter = emitter.key(key);
            }
            None if flag(get, "CARACAL_AUDIT_ALLOW_UNSIGNED")? => {
                emitter = emitter.dangerous_unsigned();
            }
            None => {
                return Err(ConfigError::Env {
                    var: "AUDIT_HMAC_KEY",
                    reason: "not set; it signs audit events \
                             (set CARACAL_AUDIT_ALLOW_UNSIGNED=1 to send them unsigned)"
                        .into(),
                });
            }
        }
        if let Some(dir) = get("AUDIT_REPLAY_DIR").filter(|d| !d.trim().is_empty()) {
            emitter = emitter.replay_dir(dir.trim());
        }
        Ok(Some(emitter))
    }

    /// A handle on this emitter's counters, valid for its whole life (also after it
    /// is handed to the builder and started).
    pub fn stats(&self) -> AuditStats {
        self.stats.clone()
    }

    /// The stream entry this emitter writes for `result` on a verifier of `zone` and
    /// `audience`: the event id, the exact `data` JSON and its `sig` (`None` when
    /// unsigned). For custom sinks, tests and documentation; the running emitter
    /// makes the same entries.
    pub fn entry_for(&self, zone: &str, audience: &str, result: &ActionResult) -> AuditEntry {
        let form = Form {
            event_type: self.event_type.clone(),
            manifest_sha: self.manifest_sha.clone(),
            zone: zone.to_owned(),
            resource: audience.to_owned(),
        };
        let entry = super::wire::entry(&form, result, std::time::SystemTime::now());
        let sig = self.key.as_ref().map(|k| entry.sig(k));
        AuditEntry {
            id: entry.id,
            data: entry.data,
            sig,
        }
    }

    /// The key that signs each event's `data` (`AUDIT_HMAC_KEY`). Required unless
    /// [`dangerous_unsigned`](Self::dangerous_unsigned) is set: Caracal's Audit
    /// service, in its published modes, dead-letters unsigned events.
    pub fn key(mut self, key: AuditKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Send events without `sig` when no [`key`](Self::key) is set. Default off.
    /// Only an Audit service configured without a key accepts them, and then anyone
    /// who can write to the stream can forge evidence. Logged at `warn` at start.
    pub fn dangerous_unsigned(mut self) -> Self {
        self.unsigned = true;
        self
    }

    /// The stream. Default `caracal.audit.events` ([`AUDIT_STREAM`]).
    pub fn stream(mut self, name: impl Into<String>) -> Self {
        self.stream = name.into();
        self
    }

    /// The `event_type` of every event. Default `verifier_resource_request`
    /// ([`DEFAULT_EVENT_TYPE`]). Set `gateway_resource_request` to have Caracal's
    /// console list the events as resource calls, at the cost of records that
    /// claim to come from the Gateway.
    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = event_type.into();
        self
    }

    /// The `manifest_sha` of every event. Default: the verifier's own
    /// [`manifest_sha`](crate::Verifier::manifest_sha) (lowercase hex SHA-256 of its
    /// canonical manifest), which every action result carries; set this to write
    /// another digest instead.
    pub fn manifest_sha(mut self, sha: impl Into<String>) -> Self {
        self.manifest_sha = Some(sha.into());
        self
    }

    /// Where batches that Redis cannot take are written (`AUDIT_REPLAY_DIR`), to
    /// be sent at the next connection. Created with mode 0700 if missing; files are
    /// 0600. Default none: while Redis is unreachable, events are lost (counted in
    /// [`AuditCounts::lost`](super::AuditCounts::lost)). Give each process its own
    /// directory.
    pub fn replay_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.replay_dir = Some(dir.into());
        self
    }

    /// Caps on the replay directory: at most `max_bytes` bytes in at most
    /// `max_files` files. Default 64 MiB and 10,000 files. Events that do not fit
    /// are lost and counted; the disk never fills past the caps.
    pub fn max_spill(mut self, max_bytes: u64, max_files: u64) -> Self {
        self.max_spill_bytes = max_bytes;
        self.max_spill_files = max_files;
        self
    }

    /// How many events may wait for the background task. Default 10,000. When it
    /// is full, the request path drops the event (counted in
    /// [`AuditCounts::dropped`](super::AuditCounts::dropped)) rather than wait.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n;
        self
    }

    /// The most events in one pipelined batch of `XADD`s. Default 1,000.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }

    /// The longest an event waits for its batch to fill. Default 50 ms.
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = interval;
        self
    }

    /// The bound of one connection attempt and of one batch's replies. Default
    /// 2 s. A batch that times out is spilled (and may reach the stream twice,
    /// with the same id and bytes, which Caracal's Audit service takes as a
    /// benign duplicate).
    pub fn io_timeout(mut self, timeout: Duration) -> Self {
        self.io_timeout = timeout;
        self
    }

    /// How long shutdown may spend sending what is queued before it spills the
    /// rest. Default 5 s.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Bounds of the reconnection delay, which doubles from `min` to `max` (with
    /// jitter) while Redis is unreachable; batches are spilled meanwhile. Default
    /// 50 ms to 2 s.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max;
        self
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.key.is_none() && !self.unsigned {
            return Err(ConfigError::Missing("audit_key"));
        }
        let positive = |n: usize, setting| {
            if n == 0 {
                Err(ConfigError::invalid(setting, "must be positive"))
            } else {
                Ok(())
            }
        };
        positive(self.queue_capacity, "queue_capacity")?;
        positive(self.batch_size, "batch_size")?;
        if self.stream.is_empty() {
            return Err(ConfigError::invalid("stream", "must not be empty"));
        }
        if self.event_type.is_empty() {
            return Err(ConfigError::invalid("event_type", "must not be empty"));
        }
        if self.flush_interval.is_zero() {
            return Err(ConfigError::invalid("flush_interval", "must be positive"));
        }
        if self.io_timeout < Duration::from_millis(1) {
            return Err(ConfigError::invalid("io_timeout", "must be at least 1 ms"));
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

fn flag(get: &dyn Fn(&str) -> Option<String>, var: &'static str) -> Result<bool, ConfigError> {
    match get(var).as_deref().map(str::trim) {
        None | Some("") | Some("0") | Some("false") | Some("off") => Ok(false),
        Some("1") | Some("true") | Some("on") => Ok(true),
        Some(_) => Err(ConfigError::Env {
            var,
            reason: "expected on, off, 1, 0, true or false".into(),
        }),
    }
}

/// Whether `CARACAL_AUDIT` turns the emitter on.
pub(crate) fn audit_switch(get: &dyn Fn(&str) -> Option<String>) -> Result<bool, ConfigError> {
    flag(get, "CARACAL_AUDIT")
}

impl VerifierBuilder {
    /// Send an audit event per request a [`MandateLayer`](crate::layer::MandateLayer)
    /// over this verifier decides to Caracal's audit stream (feature `audit`):
    /// `build` starts the emitter on its own thread and runtime. Default: no audit.
    /// The same as [`source(emitter)`](VerifierBuilder::source).
    pub fn audit(self, emitter: AuditEmitter) -> Self {
        self.source(emitter)
    }
}

/// The request path's side: one `try_send`, never a wait.
#[derive(Debug)]
struct QueueSink {
    tx: mpsc::Sender<ActionResult>,
    stats: Arc<Counters>,
}

impl ActionSink for QueueSink {
    fn record(&self, result: ActionResult) {
        // Counted before the send, so the task never counts it out first.
        self.stats.queued.fetch_add(1, Relaxed);
        if self.tx.try_send(result).is_err() {
            self.stats.queued.fetch_sub(1, Relaxed);
            self.stats.dropped.fetch_add(1, Relaxed);
        }
    }
}

/// Validates the settings, opens the replay directory, attaches the queue as the
/// verifier's action sink and starts the writer on its own thread and
/// single-threaded runtime: serializing, signing and writing never run on a
/// worker that serves requests, and building the verifier needs no runtime.
impl Source for AuditEmitter {
    fn start(
        self: Box<Self>,
        ctx: &mut SourceContext<'_>,
    ) -> Result<Box<dyn Running>, ConfigError> {
        self.validate()?;
        // Never echo the URL: it may carry a password.
        let connector = crate::redis::Connector::new(self.endpoint.resolve()?, self.io_timeout);
        let spill = match &self.replay_dir {
            Some(dir) => Some(
                Spill::open(dir.clone(), self.max_spill_bytes, self.max_spill_files).map_err(
                    |e| {
                        ConfigError::invalid(
                            "replay_dir",
                            format!("cannot be created or opened: {}", e.kind()),
                        )
                    },
                )?,
            ),
            None => {
                tracing::warn!(
                    "audit emitter without a replay directory: events are lost while Redis is unreachable"
                );
                None
            }
        };
        let key = self.key.clone();
        if key.is_none() {
            tracing::warn!(
                "audit events are sent UNSIGNED (dangerous_unsigned): anyone who can write \
                 to the stream can forge them, and a keyed Audit service rejects them"
            );
        }
        let stats = Arc::clone(&self.stats.0);
        let (tx, rx) = mpsc::channel(self.queue_capacity);
        ctx.attach_action_sink(Arc::new(QueueSink {
            tx,
            stats: Arc::clone(&stats),
        }))?;
        let writer = Writer {
            rx,
            stats: Arc::clone(&stats),
            connector,
            key,
            stream: self.stream.clone(),
            form: Form {
                event_type: self.event_type.clone(),
                manifest_sha: self.manifest_sha.clone(),
                zone: ctx.zone().to_owned(),
                resource: ctx.audience().to_owned(),
            },
            spill,
            batch_size: self.batch_size,
            flush_interval: self.flush_interval,
            io_timeout: self.io_timeout,
            shutdown_timeout: self.shutdown_timeout,
            backoff: Backoff::new(self.reconnect_min, self.reconnect_max),
            conn: None,
            retry_at: None,
            last_report: (tokio::time::Instant::now(), stats.snapshot()),
        };
        // If its runtime cannot start, events are dropped (and counted).
        let worker = Worker::spawn("caracal-audit", "audit emitter", move |stop| {
            writer.run(stop)
        })
        .map_err(|_| ConfigError::invalid("audit", "cannot start the emitter's thread"))?;
        Ok(Box::new(AuditHandle {
            worker,
            stats: self.stats.clone(),
        }))
    }
}

/// The running emitter, as the verifier holds it. Dropping it (with the last
/// verifier clone) tells the writer to flush and stop.
struct AuditHandle {
    worker: Worker,
    stats: AuditStats,
}

impl fmt::Debug for AuditHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditHandle")
            .field("running", &self.is_running())
            .finish()
    }
}

impl Running for AuditHandle {
    fn name(&self) -> &str {
        "redis-audit"
    }

    fn is_running(&self) -> bool {
        self.worker.is_running()
    }

    /// Flushes what is queued (within the shutdown timeout, spilling the rest) and
    /// waits for the writer's thread to finish. Idempotent.
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.worker.stop())
    }

    /// The emitter's counts, as Caracal's emitters name them, for the status
    /// document and the metrics publisher.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = self.stats.snapshot();
        vec![
            ("audit_sent_total", c.sent),
            ("audit_dropped_total", c.dropped),
            ("audit_lost_total", c.lost),
            ("audit_sink_errors_total", c.sink_errors),
            ("audit_persisted_total", c.persisted),
            ("audit_drained_total", c.drained),
            ("audit_queue_depth", c.queue_depth),
            ("audit_spill_files", c.spill_files),
            ("audit_spill_bytes", c.spill_bytes),
        ]
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

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
    fn off_unless_caracal_audit_is_on() {
        let base = [
            ("CARACAL_REDIS_URL", "redis://127.0.0.1:6379"),
            ("AUDIT_HMAC_KEY", KEY),
        ];
        assert!(AuditEmitter::from_lookup(&lookup(&base)).unwrap().is_none());
        let mut off = base.to_vec();
        off.push(("CARACAL_AUDIT", "off"));
        assert!(AuditEmitter::from_lookup(&lookup(&off)).unwrap().is_none());
        let mut on = base.to_vec();
        on.push(("CARACAL_AUDIT", "on"));
        on.push(("AUDIT_REPLAY_DIR", "/var/lib/caracal/audit"));
        let e = AuditEmitter::from_lookup(&lookup(&on)).unwrap().unwrap();
        assert!(e.key.is_some());
        assert_eq!(
            e.replay_dir.as_deref(),
            Some("/var/lib/caracal/audit".as_ref())
        );
        let typo = lookup(&[("CARACAL_AUDIT", "yes")]);
        assert_eq!(
            env_var(AuditEmitter::from_lookup(&typo).unwrap_err()),
            "CARACAL_AUDIT"
        );
    }

    #[test]
    fn on_needs_a_url_and_a_key_or_the_opt_in() {
        let no_url = lookup(&[("CARACAL_AUDIT", "on"), ("AUDIT_HMAC_KEY", KEY)]);
        assert_eq!(
            env_var(AuditEmitter::from_lookup(&no_url).unwrap_err()),
            "CARACAL_REDIS_URL"
        );
        let no_key = lookup(&[("CARACAL_AUDIT", "on"), ("CARACAL_REDIS_URL", "redis://h")]);
        assert_eq!(
            env_var(AuditEmitter::from_lookup(&no_key).unwrap_err()),
            "AUDIT_HMAC_KEY"
        );
        let short = lookup(&[
            ("CARACAL_AUDIT", "on"),
            ("CARACAL_REDIS_URL", "redis://h"),
            ("AUDIT_HMAC_KEY", "abcdef"),
        ]);
        let err = AuditEmitter::from_lookup(&short).unwrap_err();
        assert!(!err.to_string().contains("abcdef"), "{err}");
        assert_eq!(env_var(err), "AUDIT_HMAC_KEY");
        let unsigned = lookup(&[
            ("CARACAL_AUDIT", "on"),
            ("CARACAL_REDIS_URL", "redis://h"),
            ("CARACAL_AUDIT_ALLOW_UNSIGNED", "1"),
        ]);
        let e = AuditEmitter::from_lookup(&unsigned).unwrap().unwrap();
        assert!(e.unsigned && e.key.is_none());
    }

    #[test]
    fn the_key_may_come_from_a_file() {
        let dir = std::env::temp_dir().join(format!("caracal-audit-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        std::fs::write(&good, format!("{KEY}\n")).unwrap();
        let bad = dir.join("bad");
        std::fs::write(&bad, "qq-secret-qq\n").unwrap();
        let with = |p: &std::path::Path| {
            lookup(&[
                ("CARACAL_AUDIT", "on"),
                ("CARACAL_REDIS_URL", "redis://h"),
                ("AUDIT_HMAC_KEY_FILE", p.to_str().unwrap()),
            ])
        };
        assert!(
            AuditEmitter::from_lookup(&with(&good))
                .unwrap()
                .unwrap()
                .key
                .is_some()
        );
        let err = AuditEmitter::from_lookup(&with(&bad)).unwrap_err();
        assert!(!err.to_string().contains("qq-secret-qq"), "{err}");
        assert_eq!(env_var(err), "AUDIT_HMAC_KEY_FILE");
        assert_eq!(
            env_var(AuditEmitter::from_lookup(&with(&dir.join("nope"))).unwrap_err()),
            "AUDIT_HMAC_KEY_FILE"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn validation_names_the_setting() {
        let base =
            || AuditEmitter::new("redis://127.0.0.1:1").key(AuditKey::from_hex(KEY).unwrap());
        let setting = |e: AuditEmitter| match e.validate().unwrap_err() {
            ConfigError::Invalid { setting, .. } | ConfigError::Missing(setting) => setting,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            setting(AuditEmitter::new("redis://127.0.0.1:1")),
            "audit_key"
        );
        assert!(
            AuditEmitter::new("redis://h")
                .dangerous_unsigned()
                .validate()
                .is_ok()
        );
        assert_eq!(setting(base().queue_capacity(0)), "queue_capacity");
        assert_eq!(setting(base().batch_size(0)), "batch_size");
        assert_eq!(setting(base().stream("")), "stream");
        assert_eq!(setting(base().event_type("")), "event_type");
        assert_eq!(
            setting(base().flush_interval(Duration::ZERO)),
            "flush_interval"
        );
        assert_eq!(setting(base().io_timeout(Duration::ZERO)), "io_timeout");
        assert_eq!(
            setting(base().reconnect_backoff(Duration::from_secs(2), Duration::from_secs(1))),
            "reconnect_backoff"
        );
        assert!(base().validate().is_ok());
    }

    #[test]
    fn debug_hides_the_key_and_password() {
        let e = AuditEmitter::new("redis://:hunter2@redis.internal:6379")
            .key(AuditKey::from_hex(KEY).unwrap());
        let dbg = format!("{e:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(!dbg.contains(KEY) && !dbg.contains("00112233"), "{dbg}");
        assert!(
            dbg.contains("redis.internal") && dbg.contains("<redacted>"),
            "{dbg}"
        );
    }
}
