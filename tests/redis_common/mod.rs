//! Helpers for the Redis tests: a real `redis-server` per test, a signing publisher,
//! and polling with a deadline.

#![allow(dead_code)]

pub mod modes;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use caracal_verifier::redis::RedisRevocations;
use caracal_verifier::revocation::{StreamKey, sign_fields};
use caracal_verifier::testing::TestIssuer;
use caracal_verifier::{Verifier, VerifierBuilder};
use redis::Value;
use redis::aio::MultiplexedConnection;

/// The stream key of every test.
pub const KEY_HEX: &str = "4a7f1c0e9b2d38a65f0c1e7d92b4a3c8d5e6f70819a2b3c4d5e6f708192a3b4c";

pub fn stream_key() -> StreamKey {
    StreamKey::from_hex(KEY_HEX).unwrap()
}

/// How long any single expectation may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// A `redis-server` child process on a loopback port, without persistence.
/// Killed on drop.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

const INSTALL_HINT: &str = "redis-server is not on PATH. The Redis tests run a real server: \
     install it (Debian/Ubuntu: `apt-get install redis-server`, macOS: `brew install redis`) \
     and run the tests again";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

impl RedisServer {
    /// Start a server on a free port, retrying when another process takes the port first.
    pub async fn start() -> Self {
        init_tracing();
        for _ in 0..10 {
            let port = free_port();
            if let Some(child) = spawn_on(port).await {
                return RedisServer {
                    port,
                    child: Some(child),
                };
            }
        }
        panic!("redis-server failed to start on 10 different ports");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL the server: a crash, with every stream lost (nothing is persisted).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP the server: it keeps its port and accepts connections, but answers
    /// nothing until [`resume`](Self::resume). A frozen server, not a dead one.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT a paused server.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("a running server");
        let status = Command::new("kill")
            .arg(sig)
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} failed");
    }

    /// Start a fresh, empty server on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        let port = self.port;
        let child = poll(
            DEADLINE,
            Duration::from_millis(50),
            "redis-server restarts",
            async || {
                spawn_on(port)
                    .await
                    .ok_or_else(|| format!("port {port} not served by a new redis-server"))
            },
            || {},
        )
        .await;
        self.child = Some(child);
    }

    /// A connection for publishing and inspecting.
    ///
    /// Its replies may take [`DEADLINE`], not the redis crate's default 500 ms: a
    /// multi-megabyte `XADD` on a loaded 2-core machine took longer, and the test
    /// failed on its own publisher rather than on the feed.
    pub async fn connection(&self) -> MultiplexedConnection {
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(DEADLINE));
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("connect to the test redis-server")
    }

    pub async fn publisher(&self) -> Publisher {
        Publisher {
            conn: self.connection().await,
            key: stream_key(),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Logs of the code under test, filtered by `RUST_LOG` (off by default).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Spawn `redis-server` on `port` and wait until that very process answers.
async fn spawn_on(port: u16) -> Option<Child> {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(["--daemonize", "no"])
        .args(["--loglevel", "warning"])
        .arg("--dir")
        .arg(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    spawn_server(cmd, port, Duration::from_secs(5)).await
}

/// Run `cmd` (a `redis-server` command line) and wait, up to `deadline`, until that
/// very process answers on `port`. `None` when it exits first (most likely the port
/// was taken) or another process answers there.
pub async fn spawn_server(mut cmd: Command, port: u16, deadline: Duration) -> Option<Child> {
    let mut child = match cmd.stdin(Stdio::null()).spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{INSTALL_HINT}"),
        Err(e) => panic!("cannot run redis-server: {e}"),
    };
    let url = format!("redis://127.0.0.1:{port}");
    let started = Instant::now();
    while started.elapsed() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return None;
        }
        if let Some(pid) = server_pid(&url).await {
            if pid == child.id() {
                return Some(child);
            }
            // Someone else's server answers on this port.
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

async fn server_pid(url: &str) -> Option<u32> {
    let client = redis::Client::open(url).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
}

/// Publishes on the Caracal streams, signing with the test key unless told otherwise.
pub struct Publisher {
    pub conn: MultiplexedConnection,
    key: StreamKey,
}

impl Publisher {
    /// `XADD stream * fields…` with a valid `_sig` appended. Returns the entry id.
    pub async fn signed(&mut self, stream: &str, fields: &[(&str, &str)]) -> String {
        let sig = sign_fields(&self.key, stream, fields);
        let mut all: Vec<(&str, &str)> = fields.to_vec();
        all.push(("_sig", &sig));
        self.raw(stream, "*", &all).await
    }

    /// `XADD stream <id> fields…` exactly as given.
    pub async fn raw(&mut self, stream: &str, id: &str, fields: &[(&str, &str)]) -> String {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(stream).arg(id);
        for (k, v) in fields {
            cmd.arg(*k).arg(*v);
        }
        cmd.query_async(&mut self.conn).await.expect("XADD")
    }

    /// A signed revocation of one anchor field in `zone-1`.
    pub async fn revoke(&mut self, field: &str, anchor: &str) -> String {
        self.signed(
            caracal_verifier::revocation::SESSIONS_REVOKE_STREAM,
            &[("zone_id", "zone-1"), (field, anchor), ("reason", "test")],
        )
        .await
    }

    /// A signed epoch event for `zone-1`.
    pub async fn epoch(&mut self, epoch: u64) -> String {
        let epoch = epoch.to_string();
        self.signed(
            caracal_verifier::revocation::DELEGATIONS_INVALIDATE_STREAM,
            &[
                ("zone_id", "zone-1"),
                ("epoch", &epoch),
                ("event", "edge_revoked"),
                ("edge_id", "edge-x"),
            ],
        )
        .await
    }

    pub async fn query(&mut self, cmd: &redis::Cmd) -> Value {
        cmd.query_async(&mut self.conn)
            .await
            .expect("redis command")
    }
}

/// The feed settings of most tests: signed events, a short staleness bound.
pub fn feed(server: &RedisServer) -> RedisRevocations {
    RedisRevocations::new(server.url())
        .stream_key(stream_key())
        .max_staleness(Duration::from_secs(2))
        .block_timeout(Duration::from_millis(250))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(250))
}

/// A verifier for `sts` with `feed`, keys fetched. Must run inside the test runtime.
pub async fn verifier(sts: &TestIssuer, feed: RedisRevocations) -> Verifier {
    verifier_with(sts, feed, |b| b).await
}

/// Like [`verifier`], with more settings (such as an injected clock, which the
/// feed's staleness and lag are measured on).
pub async fn verifier_with(
    sts: &TestIssuer,
    feed: RedisRevocations,
    more: impl FnOnce(VerifierBuilder) -> VerifierBuilder,
) -> Verifier {
    let builder = builder(sts).redis_revocations(feed);
    let verifier = more(builder).build().expect("valid verifier settings");
    verifier.warm_up().await.expect("JWKS from the test issuer");
    verifier
}

/// The settings every Redis test's verifier shares: `sts`'s issuer, audience
/// `resource://api`, zone `zone-1`.
pub fn builder(sts: &TestIssuer) -> VerifierBuilder {
    Verifier::builder()
        .issuer(sts.issuer_url())
        .audience("resource://api")
        .zone("zone-1")
}

/// A verifier for `sts` that audits through `emitter`, keys fetched.
#[cfg(feature = "audit")]
pub async fn audited_verifier(
    sts: &TestIssuer,
    emitter: caracal_verifier::audit::AuditEmitter,
) -> Verifier {
    let v = builder(sts)
        .audit(emitter)
        .build()
        .expect("valid verifier settings");
    v.warm_up().await.expect("JWKS from the test issuer");
    v
}

/// A verifier that is ready: keys fetched and the feed caught up and fresh.
pub async fn ready_verifier(sts: &TestIssuer, feed: RedisRevocations) -> Verifier {
    let verifier = verifier(sts, feed).await;
    eventually("the verifier becomes ready", async || verifier.is_ready()).await;
    verifier
}

/// Poll `check` every 10 ms until it holds; fail the test after [`DEADLINE`].
pub async fn eventually(what: &str, check: impl AsyncFnMut() -> bool) {
    eventually_within(DEADLINE, what, check).await;
}

/// Poll `check` every 10 ms until it holds; fail the test after `deadline`.
pub async fn eventually_within(
    deadline: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> bool,
) {
    let not_yet = async || {
        if check().await {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    };
    poll(deadline, Duration::from_millis(10), what, not_yet, || {}).await;
}

/// The one polling loop of the Redis tests: call `check` every `every` until it
/// gives a value. After `deadline`, run `on_timeout` (say, print the servers' logs)
/// and fail the test with `what` and the last reason `check` gave.
pub async fn poll<T>(
    deadline: Duration,
    every: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Result<T, String>,
    on_timeout: impl FnOnce(),
) -> T {
    let started = Instant::now();
    loop {
        let reason = match check().await {
            Ok(value) => return value,
            Err(reason) => reason,
        };
        if started.elapsed() >= deadline {
            on_timeout();
            panic!("timed out after {deadline:?} waiting until {what}; last: {reason}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Samples this process's resident memory until stopped; returns the peak.
pub struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    /// Start sampling every `every`.
    pub fn start(every: Duration) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(resident_bytes().unwrap_or(0)));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(resident_bytes().unwrap_or(0), Ordering::Relaxed);
                std::thread::sleep(every);
            }
        });
        Self {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// Stop sampling; the peak seen.
    pub fn finish(mut self) -> u64 {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// This process's resident memory, from `/proc/self/statm` (Linux, 4 KiB pages).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// This host's clock in milliseconds since the Unix epoch: the time part of a stream
/// id that Redis would generate now.
pub fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}
