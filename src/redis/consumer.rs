//! The consumer task: catch-up, tailing, reconnection, and the checks that keep a
//! hostile writer from steering it.
//!
//! Invariants, each against a writer to Redis who lacks the stream key:
//!
//! - **The read position never passes the server's clock.** An entry whose id is
//!   ahead of the server's `TIME` was written with an explicit id; the feed handles it
//!   but keeps its position before it, and re-scans from there every poll interval
//!   instead of blocking past it. So a far-future id cannot hide the events the
//!   server numbers after a `DEL`.
//! - **Resets and lost history are noticed on a healthy connection.** After every
//!   quiet read (a block timeout), and at least every [`CHECK_EVERY`] while events
//!   flow, the feed compares each stream's `last-generated-id`, `entries-added` and
//!   `max-deleted-entry-id` (`XINFO STREAM`) with what it has read. A stream that was
//!   deleted, recreated or whose ids went backwards is re-read from the catch-up
//!   start; history deleted before the feed read it is a gap, counted and logged.
//!   Either way the feed is not fresh (requests get 503) until it has caught up.
//! - **No reply is larger than the budget.** The connection counts the bytes of each
//!   reply and breaks once they pass `max_reply_bytes`; the feed then reads through a
//!   server-side script that replaces oversized entries by a marker, for
//!   [`SCREEN_HOLD`], and drops and counts them. Entries within the budget are still
//!   checked against the per-entry bounds before any map is built.
//! - **Nothing here runs on a request's worker.** The task runs on its own thread
//!   and runtime (see `config.rs`).

use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Cmd, ErrorKind, RedisError, Value};
use tokio::sync::watch;

use super::capped::ReplyBudget;
use super::connect::{ConnectError, Connector, Redirect, first_server_error};
use super::endpoint::Addr;
use super::lanes::LaneReporter;
use super::reply::{self, RawEntry, StreamId, StreamMeta, Unexpected};
use super::wire::{self, WireConn, WireError};
use crate::revocation::{EventError, RevocationEvent, RevocationSet, StreamKey};

/// Entries asked for per stream and per plain read.
const PAGE: usize = 128;
/// The size a plain catch-up page assumes per entry, for its count: Caracal's events
/// take about 300 bytes in a reply, so a page fills under a third of its budget.
const CATCH_UP_ENTRY: usize = 1024;
/// The most entries asked for per catch-up read.
const MAX_CATCH_UP_PAGE: usize = 4096;
/// The most time a connection attempt may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long past the block timeout a read may take before the connection counts as hung.
const RESPONSE_MARGIN: Duration = Duration::from_secs(2);
/// How often streams are re-scanned while they cannot be tailed with a blocking read
/// (an entry ahead of the server clock sits in them, or replies are being screened).
const POLL: Duration = Duration::from_millis(100);
/// How long the feed keeps reading through the screening script after a reply went
/// over the budget.
pub(crate) const SCREEN_HOLD: Duration = Duration::from_secs(60);
/// The most entries ahead of the server clock re-read per scan. Past it the feed can
/// no longer see the end of the stream and stays not fresh.
const MAX_AHEAD: usize = 1024;
/// How often, in Sentinel mode, the feed asks whether its node is still the primary.
const SENTINEL_RECHECK: Duration = Duration::from_secs(1);
/// While events flow, the safety check (`XINFO STREAM`, the entry at the position,
/// `TIME`, a read to the end) runs at most this often; it runs after every quiet
/// read too (a block timeout), and never less often than the block timeout.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// Cluster redirections followed in a row without a pause.
const MAX_REDIRECTS: u32 = 5;
/// The budget of replies that carry no entries (`TIME`, `INFO`, `XINFO` through the
/// script).
const SMALL_REPLY: usize = 64 * 1024;

/// Bounds on what one stream entry and one reply may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) max_fields: usize,
    pub(crate) max_bytes: usize,
    pub(crate) max_reply_bytes: usize,
}

impl Limits {
    /// Entries per screened read: as many as fit the reply budget at their maximum size.
    fn screened_page(&self) -> usize {
        let per_entry = self.max_bytes + self.max_fields * 2 * 16 + 64;
        (self.max_reply_bytes / per_entry).clamp(1, PAGE)
    }

    /// Entries per plain (unscreened) scan read: [`CATCH_UP_ENTRY`] bytes each within
    /// the reply budget, and never fewer than a tail read. A million retained events
    /// then take a thousand round trips rather than eight thousand. A page that
    /// still goes over the budget breaks the connection like any other reply, and
    /// the feed reads through the screening script.
    fn catch_up_page(&self) -> usize {
        (self.max_reply_bytes / CATCH_UP_ENTRY).clamp(PAGE, MAX_CATCH_UP_PAGE)
    }
}

/// Reads up to `ARGV[2]` entries after `ARGV[1]` and replaces the fields of every
/// entry with more than `ARGV[3]` fields or `ARGV[4]` bytes by the marker `oversize`,
/// so the reply stays within the budget whatever the writer stored.
const SCREEN_SCRIPT: &str = r"
local r = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
local maxf = tonumber(ARGV[3]) * 2
local maxb = tonumber(ARGV[4])
for i = 1, #r do
  local f = r[i][2]
  local over = #f > maxf
  if not over then
    local b = 0
    for j = 1, #f do
      b = b + #f[j]
      if b > maxb then over = true break end
    end
  end
  if over then r[i] = {r[i][1], 'oversize'} end
end
return r
";

/// `XINFO STREAM` without the first and last entries, which may be oversized.
const META_SCRIPT: &str = r"
local t = redis.pcall('XINFO', 'STREAM', KEYS[1])
if t['err'] then return t end
local out = {}
for i = 1, #t, 2 do
  local k = t[i]
  if k == 'last-generated-id' or k == 'max-deleted-entry-id' or k == 'entries-added' then
    out[#out + 1] = k
    out[#out + 1] = t[i + 1]
  end
end
return out
";

/// Everything the task needs, validated by [`RedisRevocations`](super::RedisRevocations).
pub(crate) struct Settings {
    pub(crate) connector: Connector,
    pub(crate) key: Option<StreamKey>,
    /// The streams this reader tails, with what each carries: both on one
    /// connection, or (Cluster) one per reader.
    pub(crate) streams: Vec<(String, StreamKind)>,
    pub(crate) catch_up: Duration,
    pub(crate) block: Duration,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
    pub(crate) limits: Limits,
    pub(crate) set: RevocationSet,
    pub(crate) health: LaneReporter,
}

/// What a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamKind {
    Revoke,
    Epoch,
}

/// One tailed stream.
struct Stream {
    name: String,
    kind: StreamKind,
    /// Every entry up to here has been handled, and the server's clock has passed it.
    pos: Option<StreamId>,
    /// A keyed digest of the entry at `pos`, to tell a stream recreated with an entry
    /// of the very same id (a `DEL` and an `XADD` within one millisecond).
    pos_digest: Option<u64>,
    /// The highest id handled beyond `pos`: entries ahead of the server clock.
    ahead: Option<StreamId>,
    /// Whether the scan could not reach the stream's end past entries ahead of the clock.
    blind: bool,
    /// Whether an entry of this stream was read since its last reset.
    seen: bool,
    /// `entries-added` at the last check (Redis 7.0+); it only rises within a stream.
    added: Option<u64>,
    /// `entries-added` and `last-generated-id` of the check in progress.
    pending: Option<(u64, StreamId)>,
    /// First sightings since the last check with ids up to the pending check's
    /// `last-generated-id`, and beyond it. Together with `entries-added` they show
    /// entries that were added and deleted before the feed read them, which
    /// trimming does not record in `max-deleted-entry-id`.
    read_in_window: u64,
    read_beyond_window: u64,
    /// The largest deleted id already reported as a gap.
    gap_ack: StreamId,
}

impl Stream {
    fn new(name: String, kind: StreamKind) -> Self {
        Self {
            name,
            kind,
            pos: None,
            pos_digest: None,
            ahead: None,
            blind: false,
            seen: false,
            added: None,
            pending: None,
            read_in_window: 0,
            read_beyond_window: 0,
            gap_ack: StreamId::ZERO,
        }
    }

    /// The highest id handled.
    fn high(&self) -> StreamId {
        self.pos.max(self.ahead).unwrap_or(StreamId::ZERO)
    }

    /// Start again from `start`, forgetting what was read.
    fn reset(&mut self, start: StreamId) {
        self.pos = Some(start);
        self.pos_digest = None;
        self.ahead = None;
        self.blind = false;
        self.seen = false;
        self.added = None;
        self.pending = None;
        self.read_in_window = 0;
        self.read_beyond_window = 0;
        self.gap_ack = StreamId::ZERO;
    }

    /// Count a first sighting for the gap check.
    fn count_read(&mut self, id: StreamId) {
        match self.pending {
            Some((_, end)) if id > end => self.read_beyond_window += 1,
            _ => self.read_in_window += 1,
        }
    }

    /// Close the check in progress: whether fewer entries were read than the server
    /// added in the window (some were deleted before the feed read them).
    fn close_window(&mut self) -> bool {
        let Some((added_now, _)) = self.pending.take() else {
            return false;
        };
        // A blind stream was not read to its end; it fails closed already.
        let lost = !self.blind
            && self
                .added
                .is_some_and(|before| self.read_in_window < added_now.saturating_sub(before));
        self.added = Some(added_now);
        self.read_in_window = std::mem::take(&mut self.read_beyond_window);
        lost
    }
}

/// What one tail read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tailed {
    /// Entries, handled.
    Entries,
    /// Nothing within the block timeout, or the streams were polled instead.
    Quiet,
}

/// Why a connection was abandoned.
enum FeedError {
    Redis(RedisError),
    Reply(Unexpected),
    Hung,
    /// A reply went over the budget; the connection is broken.
    OverBudget,
    /// The server refused a command the feed needs (ACL, renamed, disabled).
    Refused {
        command: &'static str,
        error: RedisError,
    },
    /// The server does not report what gap detection needs.
    Unsupported(&'static str),
    /// The stream's slot is served by another Cluster node.
    Redirect {
        host: String,
        port: u16,
        ask: bool,
    },
    /// Discovery found no node (Sentinel, Cluster), or it is not a primary.
    Discovery(&'static str),
}

impl From<ConnectError> for FeedError {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Redis(e) => FeedError::Redis(e),
            ConnectError::Hung => FeedError::Hung,
            ConnectError::Discovery(why) => FeedError::Discovery(why),
        }
    }
}

impl From<RedisError> for FeedError {
    fn from(e: RedisError) -> Self {
        FeedError::Redis(e)
    }
}

impl fmt::Display for FeedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FeedError::Redis(e) => fmt::Display::fmt(e, f),
            FeedError::Reply(e) => fmt::Display::fmt(e, f),
            FeedError::Hung => f.write_str("no reply within the response timeout"),
            FeedError::OverBudget => f.write_str("a reply exceeded max_reply_bytes"),
            FeedError::Refused { command, error } => {
                write!(f, "the server refused {command}: {error}")
            }
            FeedError::Unsupported(what) => f.write_str(what),
            FeedError::Redirect { host, port, ask } => write!(
                f,
                "the Cluster {} the stream's slot to {host}:{port}",
                if *ask { "is moving" } else { "moved" }
            ),
            FeedError::Discovery(why) => f.write_str(why),
        }
    }
}

/// Whether an error is the server saying no (as opposed to the link failing).
fn is_refusal(e: &RedisError) -> bool {
    !(e.is_io_error() || e.is_connection_dropped() || e.is_timeout())
        && matches!(e.kind(), ErrorKind::Server(_) | ErrorKind::Extension)
}

/// Exponential backoff with jitter: each delay is drawn from `[d/2, d]`, and `d`
/// doubles from `min` to `max`.
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(self.max);
        // Spread replicas that lost the same server so they do not reconnect in step.
        let r = std::hash::RandomState::new().hash_one(Instant::now());
        let half = d / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(if nanos == 0 { 0 } else { r % (nanos + 1) })
    }
}

/// A connection and the budget of the reply in flight.
struct Conn {
    inner: MultiplexedConnection,
    budget: Option<Arc<ReplyBudget>>,
    timeout: Duration,
    /// The node took the stream's slot by an `-ASK` redirection: every command is
    /// sent after `ASKING`.
    asking: bool,
    /// The node this connection reaches.
    addr: Addr,
    /// Sentinel mode: when the Sentinels last confirmed this node is the primary.
    confirmed: Instant,
}

impl Conn {
    /// Send one command whose reply may take up to `budget` bytes.
    async fn query(&mut self, cmd: &Cmd, budget: usize) -> Result<Value, FeedError> {
        if let Some(b) = &self.budget {
            b.arm(budget);
        }
        let sent = async {
            if self.asking {
                let mut pipe = ::redis::pipe();
                pipe.cmd("ASKING").ignore().add_command(cmd.clone());
                let mut replies = pipe
                    .query_async::<Vec<Value>>(&mut self.inner)
                    .await
                    .map_err(first_server_error)?;
                replies
                    .pop()
                    .ok_or_else(|| RedisError::from((ErrorKind::Parse, "no reply after ASKING")))
            } else {
                cmd.query_async::<Value>(&mut self.inner).await
            }
        };
        let reply = tokio::time::timeout(self.timeout, sent)
            .await
            .map_err(|_| FeedError::Hung)?;
        match reply {
            Ok(v) => Ok(v),
            Err(_) if self.budget.as_ref().is_some_and(|b| b.tripped()) => {
                Err(FeedError::OverBudget)
            }
            Err(e) => match Redirect::of(&e) {
                Some(r) => {
                    let Addr::Tcp(host, port) = r.addr(&self.addr) else {
                        return Err(FeedError::Redis(e));
                    };
                    Err(FeedError::Redirect {
                        host,
                        port,
                        ask: r.ask,
                    })
                }
                None => Err(FeedError::Redis(e)),
            },
        }
    }
}

/// The connection a long catch-up reads its pages on, and the position after
/// which it has already asked for the next page.
struct Bulk {
    conn: WireConn,
    asked_after: Option<StreamId>,
}

/// `XREAD COUNT <count> STREAMS <stream> <after>`.
fn bulk_read(stream: &str, count: usize, after: StreamId) -> Vec<u8> {
    let (count, after) = (count.to_string(), after.to_string());
    wire::command(&[
        b"XREAD",
        b"COUNT",
        count.as_bytes(),
        b"STREAMS",
        stream.as_bytes(),
        after.as_bytes(),
    ])
}

/// What [`Consumer::handle`] judges a page's entries by, read once per page: the
/// server's clock, in milliseconds, and whether replies are being screened.
#[derive(Debug, Clone, Copy)]
struct PageClock {
    now_ms: u64,
    screened: bool,
}

pub(crate) struct Consumer {
    connector: Connector,
    key: Option<StreamKey>,
    streams: Vec<Stream>,
    catch_up: Duration,
    block: Duration,
    backoff: Backoff,
    limits: Limits,
    set: RevocationSet,
    health: LaneReporter,
    /// Where the next connection goes instead of the key's primary: the node of a
    /// `-ASK` redirection, sent `ASKING` before every command.
    ask: Option<(String, u16)>,
    /// The server's `run_id` at the last sync; a change means it restarted, or
    /// (Sentinel failover, Cluster resharding) that this is another server.
    run_id: Option<String>,
    /// The server's clock at the last `TIME`, and when it was read here.
    server_clock: Option<(u64, Instant)>,
    /// Read through the screening script until then.
    screened_until: Option<Instant>,
    caught_up_once: bool,
    /// Keys entry digests, so a writer cannot make two entries collide.
    digest_key: foldhash::quality::RandomState,
}

impl Consumer {
    pub(crate) fn new(s: Settings) -> Self {
        Self {
            connector: s.connector,
            key: s.key,
            streams: s
                .streams
                .into_iter()
                .map(|(name, kind)| Stream::new(name, kind))
                .collect(),
            catch_up: s.catch_up,
            block: s.block,
            backoff: Backoff::new(s.reconnect_min, s.reconnect_max),
            limits: s.limits,
            set: s.set,
            health: s.health,
            ask: None,
            run_id: None,
            server_clock: None,
            screened_until: None,
            caught_up_once: false,
            digest_key: foldhash::quality::RandomState::default(),
        }
    }

    /// Run until `stop` turns true or its sender is dropped. Every await of the
    /// consumer is a cancellation point: its state lives only in this task, and each
    /// event is applied synchronously, so stopping between two awaits loses nothing.
    pub(crate) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let health = self.health.clone();
        tokio::select! {
            biased;
            () = stopped(&mut stop) => {}
            () = self.run_forever() => {}
        }
        health.mark_disconnected();
        tracing::debug!("revocation feed stopped");
    }

    async fn run_forever(&mut self) {
        let mut failures: u32 = 0;
        let mut down_since: Option<Instant> = None;
        let mut redirects = 0;
        loop {
            let (err, was_live) = self.session(&mut failures, &mut down_since).await;
            if was_live {
                redirects = 0;
            }
            // An oversized reply is no Redis failure: the feed reconnects at once and
            // stays fresh meanwhile, within max_staleness of its last good read.
            if !matches!(err, FeedError::OverBudget) {
                self.health.mark_disconnected();
            }
            failures = failures.saturating_add(1);
            match &err {
                FeedError::Redirect { host, port, ask } => {
                    if *ask {
                        self.ask = Some((host.clone(), *port));
                    } else {
                        self.connector
                            .moved(self.streams[0].name.as_bytes(), host, *port);
                    }
                    tracing::info!(error = %err, "revocation feed follows a Cluster redirection");
                    // Follow at once, but not forever: nodes that keep sending the
                    // feed to each other (a resharding in progress) get the backoff.
                    redirects += 1;
                    if redirects <= MAX_REDIRECTS {
                        continue;
                    }
                }
                FeedError::OverBudget => {
                    self.screened_until = Some(Instant::now() + SCREEN_HOLD);
                    tracing::warn!(
                        max_reply_bytes = self.limits.max_reply_bytes,
                        "revocation stream reply over the size bound (an oversized entry); \
                         reading through the screening script"
                    );
                    // Not the server's fault: reconnect at once.
                    self.backoff.reset();
                }
                FeedError::Refused { .. } | FeedError::Unsupported(_) => {
                    if failures == 1 || failures.is_multiple_of(30) {
                        tracing::error!(
                            error = %err,
                            "revocation feed cannot run its safety checks on this server; \
                             failing closed (see the README for the ACL the feed needs)"
                        );
                    }
                }
                _ if was_live => {
                    down_since = Some(Instant::now());
                    tracing::warn!(error = %err, "revocation feed lost its Redis connection; failing closed until it reconnects");
                }
                _ if failures == 1 || failures.is_multiple_of(30) => {
                    tracing::warn!(error = %err, attempts = failures, "revocation feed cannot reach Redis");
                }
                _ => {
                    tracing::debug!(error = %err, attempts = failures, "revocation feed cannot reach Redis");
                }
            }
            tokio::time::sleep(self.backoff.next_delay()).await;
        }
    }

    async fn connect(&mut self) -> Result<Conn, FeedError> {
        let timeout = self.block + RESPONSE_MARGIN * 2;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(self.block + RESPONSE_MARGIN));
        let budget = Arc::new(ReplyBudget::default());
        let asking = self.ask.take();
        let node = match &asking {
            Some((host, port)) => {
                self.connector
                    .node(host, *port, config, Some(budget.clone()))
                    .await
            }
            None => {
                // Every stream of one reader lives on one node: in Cluster mode each
                // reader has a single stream.
                let key = self.streams[0].name.as_bytes();
                self.connector
                    .primary_for(key, config, Some(budget.clone()))
                    .await
            }
        }
        .map_err(|e| {
            // The node may be gone for good (failover, resharding): ask the seeds
            // again next time.
            self.connector.forget_slots();
            FeedError::from(e)
        })?;
        budget.arm(SMALL_REPLY);
        Ok(Conn {
            inner: node.conn,
            budget: Some(budget),
            timeout,
            asking: asking.is_some(),
            addr: node.addr,
            confirmed: Instant::now(),
        })
    }

    /// One connection's life: connect, sync, then tail until an error. Returns the
    /// error and whether the session had gone live.
    async fn session(
        &mut self,
        failures: &mut u32,
        down_since: &mut Option<Instant>,
    ) -> (FeedError, bool) {
        let mut conn = match self.connect().await {
            Ok(c) => c,
            Err(e) => return (e, false),
        };
        if let Err(e) = self.sync(&mut conn).await {
            return (e, false);
        }
        self.health.mark_read_ok();
        if !self.caught_up_once {
            self.caught_up_once = true;
            tracing::info!(
                applied = self.health.status().applied,
                "revocation feed caught up with retained history"
            );
        } else if let Some(since) = down_since.take() {
            tracing::info!(
                outage_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
                "revocation feed reconnected and caught up"
            );
        }
        *failures = 0;
        self.backoff.reset();
        // The safety check costs several commands; after a read that brought
        // entries it waits for CHECK_EVERY, so an event costs Redis one read per
        // replica, not the full check (which runs after every quiet read).
        let check_every = CHECK_EVERY.min(self.block);
        let mut checked = Instant::now();
        loop {
            let tailed = match self.tail(&mut conn).await {
                Ok(t) => t,
                Err(e) => return (e, true),
            };
            if tailed == Tailed::Quiet || checked.elapsed() >= check_every {
                if let Err(e) = self.check(&mut conn).await {
                    return (e, true);
                }
                checked = Instant::now();
            }
            match self.still_primary(&mut conn).await {
                Ok(true) => self.health.mark_read_ok(),
                // The Sentinels could not be asked: the reads do not count, so a
                // feed that cannot confirm its primary turns stale.
                Ok(false) => {}
                Err(e) => return (e, true),
            }
        }
    }

    /// In Sentinel mode, at most every [`SENTINEL_RECHECK`], whether the Sentinels
    /// still name this node: a feed cut off with an old primary that did not learn
    /// of a failover (a partition) would read a stream that no longer receives
    /// writes. `Ok(false)` when no Sentinel answered; an error when they name
    /// another node.
    async fn still_primary(&mut self, conn: &mut Conn) -> Result<bool, FeedError> {
        if conn.confirmed.elapsed() < SENTINEL_RECHECK {
            return Ok(true);
        }
        match self.connector.sentinel_primary().await {
            Ok(None) => Ok(true),
            Ok(Some(addr)) if addr == conn.addr => {
                conn.confirmed = Instant::now();
                Ok(true)
            }
            Ok(Some(_)) => Err(FeedError::Discovery(
                "the Sentinels name another primary (failover)",
            )),
            Err(e) => {
                tracing::warn!(error = %e, "revocation feed cannot reach the Sentinels; its reads do not count until it can");
                Ok(false)
            }
        }
    }

    /// Bring the streams up to date after (re)connecting: detect a restarted server,
    /// deleted or recreated streams and lost history, then replay everything after
    /// the read positions without blocking.
    async fn sync(&mut self, conn: &mut Conn) -> Result<(), FeedError> {
        let run_id = self.server_run_id(conn).await?;
        self.refresh_time(conn).await?;
        let start = self.catch_up_start();
        let restarted = matches!((&self.run_id, &run_id), (Some(a), Some(b)) if a != b);
        if restarted {
            tracing::warn!(
                "Redis restarted or another server took over (run id changed: failover, \
                 resharding); replaying the retained history so no event is missed"
            );
        }
        for s in &mut self.streams {
            if s.pos.is_none() || restarted {
                s.reset(start);
            }
        }
        if restarted {
            self.health.record_reset();
        }
        if run_id.is_some() {
            self.run_id = run_id;
        }
        self.check(conn).await
    }

    /// Compare each stream with what the server reports, react to resets and gaps,
    /// and read until every stream is caught up. Runs after every quiet read and at
    /// least every [`CHECK_EVERY`].
    async fn check(&mut self, conn: &mut Conn) -> Result<(), FeedError> {
        self.refresh_time(conn).await?;
        let mut behind = false;
        for i in 0..self.streams.len() {
            let meta = self.stream_meta(conn, i).await?;
            behind |= self.inspect(i, meta)?;
            behind |= self.same_entry_at_pos(conn, i).await?;
        }
        if behind {
            self.health.set_caught_up(false);
        }
        self.scan_all(conn).await?;
        for i in 0..self.streams.len() {
            if self.streams[i].close_window() {
                self.gap(i, "fewer entries were read than the server added");
                self.scan(conn, i).await?;
                // The re-read entries were first sightings again: start counting afresh.
                let s = &mut self.streams[i];
                s.read_in_window = std::mem::take(&mut s.read_beyond_window);
            }
        }
        let blind = self.streams.iter().any(|s| s.blind);
        self.health.set_caught_up(!blind);
        Ok(())
    }

    /// Judge one stream's metadata. Returns whether it must be caught up again.
    fn inspect(&mut self, i: usize, meta: Option<StreamMeta>) -> Result<bool, FeedError> {
        let start = self.catch_up_start();
        let s = &mut self.streams[i];
        let Some(meta) = meta else {
            if s.seen {
                tracing::warn!(stream = %s.name, "revocation stream was deleted; following it from the start when it returns");
                s.reset(start);
                self.health.record_reset();
            }
            // Nothing to catch up on; every entry a new stream will have is one to read.
            s.added = Some(0);
            s.read_in_window = 0;
            s.read_beyond_window = 0;
            return Ok(false);
        };
        let mut behind = false;
        let recreated = matches!((s.added, meta.entries_added), (Some(a), Some(b)) if b < a);
        if meta.last_generated < s.high() || recreated {
            tracing::warn!(
                stream = %s.name,
                read = %s.high(),
                newest = %meta.last_generated,
                "revocation stream was deleted, recreated or lost data (its ids went backwards); \
                 re-reading it from the catch-up start"
            );
            s.reset(start);
            self.health.record_reset();
            behind = true;
        }
        s.pending = meta.entries_added.map(|a| (a, meta.last_generated));
        if s.pending.is_none() {
            s.added = None;
        }
        let Some(deleted) = meta.max_deleted else {
            return Err(FeedError::Unsupported(
                "XINFO STREAM reports no max-deleted-entry-id (Redis 7.0 or later is \
                 required to detect trimmed history)",
            ));
        };
        if deleted > s.high() && deleted > s.gap_ack {
            // Entries after what this feed read were trimmed or deleted before it read
            // them: their revocations are lost to this replica.
            s.gap_ack = deleted;
            behind |= self.gap(i, "an entry after the read position was deleted");
        }
        Ok(behind)
    }

    /// Whether the entry at the read position is still the one read there. A stream
    /// deleted and recreated within the same millisecond gets an entry with the very
    /// id the feed stopped at, which no id comparison reveals. Returns whether the
    /// stream was reset. A trimmed entry (gone) is fine.
    async fn same_entry_at_pos(&mut self, conn: &mut Conn, i: usize) -> Result<bool, FeedError> {
        let s = &self.streams[i];
        let (Some(pos), Some(digest)) = (s.pos, s.pos_digest) else {
            return Ok(false);
        };
        if self.screened() {
            return Ok(false);
        }
        let id = pos.to_string();
        let mut cmd = ::redis::cmd("XRANGE");
        cmd.arg(&s.name).arg(&id).arg(&id);
        let v = conn.query(&cmd, self.limits.max_reply_bytes).await?;
        let entries = reply::entries(&v).map_err(FeedError::Reply)?;
        let replaced = entries
            .iter()
            .any(|e| e.id == pos && reply::digest(&self.digest_key, e.fields) != digest);
        if replaced {
            let start = self.catch_up_start();
            let s = &mut self.streams[i];
            tracing::warn!(
                stream = %s.name,
                read = %pos,
                "revocation stream was recreated (another entry now holds the read position's id); \
                 re-reading it from the catch-up start"
            );
            s.reset(start);
            self.health.record_reset();
        }
        Ok(replaced)
    }

    /// Report lost history on stream `i` and start a full catch-up of it.
    fn gap(&mut self, i: usize, how: &'static str) -> bool {
        let start = self.catch_up_start();
        let s = &mut self.streams[i];
        // Entries after what this feed read were trimmed or deleted before it read
        // them: their revocations are lost to this replica.
        tracing::error!(
            stream = %s.name,
            read = %s.high(),
            cause = how,
            "revocation stream history was lost before the feed read it (a gap); \
             failing closed until the retained history is read again"
        );
        s.pos = Some(start);
        s.ahead = None;
        s.blind = false;
        self.health.record_gap();
        self.health.set_caught_up(false);
        true
    }

    /// Read every stream without blocking until each returns a short page.
    async fn scan_all(&mut self, conn: &mut Conn) -> Result<(), FeedError> {
        for i in 0..self.streams.len() {
            self.scan(conn, i).await?;
        }
        Ok(())
    }

    /// Read one stream from its position to its end, page by page. Entries ahead of
    /// the server clock are read again on every scan (the position stays before
    /// them); past [`MAX_AHEAD`] of them the stream is marked blind.
    async fn scan(&mut self, conn: &mut Conn, i: usize) -> Result<(), FeedError> {
        let mut from = self.streams[i].pos.unwrap_or(StreamId::ZERO);
        let mut ahead_read = 0usize;
        // A long catch-up reads its pages on a second connection through the
        // borrowing reader, opened once the first page comes back full.
        let mut bulk: Option<Bulk> = None;
        let mut bulk_tried = false;
        loop {
            let page = self.read_page(conn, &mut bulk, i, from).await?;
            if page.len == page.asked && !bulk_tried && !conn.asking && !self.screened() {
                bulk_tried = true;
                bulk = match self.connector.wire_at(&conn.addr).await {
                    Ok(conn) => Some(Bulk {
                        conn,
                        asked_after: None,
                    }),
                    Err(e) => {
                        tracing::debug!(error = ?e, "revocation feed could not open its bulk connection; catching up on its main one");
                        None
                    }
                };
            }
            ahead_read += page.ahead;
            if let Some(last) = page.last {
                from = last;
            }
            if ahead_read > MAX_AHEAD {
                if !self.streams[i].blind {
                    tracing::error!(
                        stream = %self.streams[i].name,
                        "revocation stream holds more than {MAX_AHEAD} entries with ids ahead of \
                         the server clock (written with explicit ids); the feed cannot see past \
                         them and fails closed. Remove them (XTRIM MINID / XDEL) to recover"
                    );
                }
                self.streams[i].blind = true;
                return Ok(());
            }
            if page.len < page.asked {
                self.streams[i].blind = false;
                return Ok(());
            }
        }
    }

    /// Read and handle one page of stream `i` after `from`.
    async fn read_page(
        &mut self,
        conn: &mut Conn,
        bulk: &mut Option<Bulk>,
        i: usize,
        from: StreamId,
    ) -> Result<Page, FeedError> {
        let name = self.streams[i].name.clone();
        if !self.screened()
            && let Some(page) = self.read_bulk(conn, bulk, i, &name, from).await
        {
            return page;
        }
        let (v, page) = if self.screened() {
            let page = self.limits.screened_page();
            let mut cmd = ::redis::cmd("EVAL");
            cmd.arg(SCREEN_SCRIPT)
                .arg(1)
                .arg(&name)
                .arg(from.to_string())
                .arg(page)
                .arg(self.limits.max_fields)
                .arg(self.limits.max_bytes);
            let v = conn
                .query(&cmd, self.limits.max_reply_bytes)
                .await
                .map_err(|e| refused("EVAL (the screening script)", e))?;
            (v, page)
        } else {
            let page = self.limits.catch_up_page();
            let mut cmd = ::redis::cmd("XREAD");
            cmd.arg("COUNT")
                .arg(page)
                .arg("STREAMS")
                .arg(&name)
                .arg(from.to_string());
            (conn.query(&cmd, self.limits.max_reply_bytes).await?, page)
        };
        let entries = if self.screened() {
            reply::entries(&v).map_err(FeedError::Reply)?
        } else {
            match reply::xread(&v).map_err(FeedError::Reply)?.pop() {
                Some((n, e)) if n == name => e,
                Some(_) => return Err(FeedError::Reply(Unexpected("XREAD"))),
                None => Vec::new(),
            }
        };
        self.take_page(conn, i, from, page, &entries).await
    }

    /// Read and handle one page of stream `i` after `from` on the bulk connection,
    /// if there is one. `None` when the page is for the main connection to read:
    /// there is no bulk connection, or it failed in a way (a server error such as a
    /// redirection, a broken connection) that the main connection meets and
    /// reports. After a full page the next one is asked for at once, so Redis
    /// prepares it while this one is handled.
    async fn read_bulk(
        &mut self,
        conn: &mut Conn,
        slot: &mut Option<Bulk>,
        i: usize,
        name: &str,
        from: StreamId,
    ) -> Option<Result<Page, FeedError>> {
        let b = slot.as_mut()?;
        let page = self.limits.catch_up_page();
        let budget = self.limits.max_reply_bytes;
        let received = async {
            if b.asked_after != Some(from) {
                if b.asked_after.is_some() {
                    // A reply asked for ahead that is not wanted after all.
                    b.conn.receive(budget).await?;
                }
                b.conn.send(&bulk_read(name, page, from)).await?;
            }
            b.asked_after = None;
            b.conn.receive(budget).await
        };
        let reply = match tokio::time::timeout(conn.timeout, received).await {
            Err(_) => return Some(Err(FeedError::Hung)),
            Ok(Err(WireError::OverBudget)) => return Some(Err(FeedError::OverBudget)),
            Ok(Err(e)) => {
                tracing::debug!(error = ?e, "revocation feed's bulk read failed; reading on its main connection");
                *slot = None;
                return None;
            }
            Ok(Ok(reply)) => reply,
        };
        let handled = {
            let mut store = Vec::new();
            let entries = match wire::xread_one(&reply, name, &mut store) {
                Ok(entries) => entries,
                Err(e) => return Some(Err(FeedError::Reply(e))),
            };
            if entries.len() == page
                && let Some(last) = entries.last().map(|e| e.id)
            {
                let next = bulk_read(name, page, last);
                match tokio::time::timeout(conn.timeout, b.conn.send(&next)).await {
                    Ok(Ok(())) => b.asked_after = Some(last),
                    _ => *slot = None,
                }
            }
            self.take_page(conn, i, from, page, &entries).await
        };
        if let Some(b) = slot {
            b.conn.recycle(reply);
        }
        Some(handled)
    }

    /// Handle the entries of one page of stream `i`, read after `from`.
    async fn take_page(
        &mut self,
        conn: &mut Conn,
        i: usize,
        from: StreamId,
        asked: usize,
        entries: &[RawEntry<'_>],
    ) -> Result<Page, FeedError> {
        let last = entries.last().map(|e| e.id);
        if entries.first().is_some_and(|e| e.id <= from) {
            return Err(FeedError::Reply(Unexpected("XREAD")));
        }
        if let Some(last) = last {
            self.cover_time(conn, last).await?;
        }
        let live = self.caught_up_once;
        let clock = self.page_clock();
        for e in entries {
            self.handle(i, e, live, clock);
        }
        let pos = self.streams[i].pos;
        Ok(Page {
            len: entries.len(),
            asked,
            last,
            ahead: entries.iter().filter(|e| Some(e.id) > pos).count(),
        })
    }

    /// The server's clock and the screening state, read once for a page of entries.
    fn page_clock(&self) -> PageClock {
        PageClock {
            now_ms: self.server_now_ms(),
            screened: self.screened(),
        }
    }

    /// Wait for new entries and handle them.
    async fn tail(&mut self, conn: &mut Conn) -> Result<Tailed, FeedError> {
        if self.screened() || self.streams.iter().any(|s| s.ahead.is_some() || s.blind) {
            // A blocking read from the position would return the entries ahead of the
            // clock at once; poll instead.
            tokio::time::sleep(POLL.min(self.block)).await;
            return Ok(Tailed::Quiet);
        }
        let block_ms = u64::try_from(self.block.as_millis()).unwrap_or(u64::MAX);
        let mut cmd = ::redis::cmd("XREAD");
        cmd.arg("BLOCK")
            .arg(block_ms)
            .arg("COUNT")
            .arg(PAGE)
            .arg("STREAMS");
        for s in &self.streams {
            cmd.arg(&s.name);
        }
        for s in &self.streams {
            cmd.arg(s.pos.unwrap_or(StreamId::ZERO).to_string());
        }
        let v = conn.query(&cmd, self.limits.max_reply_bytes).await?;
        let streams = reply::xread(&v).map_err(FeedError::Reply)?;
        if streams.iter().all(|(_, e)| e.is_empty()) {
            return Ok(Tailed::Quiet);
        }
        if let Some(last) = streams
            .iter()
            .filter_map(|(_, e)| e.last())
            .map(|e| e.id)
            .max()
        {
            self.cover_time(conn, last).await?;
        }
        for (name, entries) in streams {
            // XREAD answers only for the streams asked and only after the given ids.
            let i = self
                .streams
                .iter()
                .position(|s| s.name == name)
                .ok_or(FeedError::Reply(Unexpected("XREAD")))?;
            let from = self.streams[i].pos.unwrap_or(StreamId::ZERO);
            if entries.first().is_some_and(|e| e.id <= from) {
                return Err(FeedError::Reply(Unexpected("XREAD")));
            }
            let clock = self.page_clock();
            for e in &entries {
                self.handle(i, e, true, clock);
            }
        }
        Ok(Tailed::Entries)
    }

    /// Apply or drop one entry, then move the read position past it if the server's
    /// clock has passed its id; otherwise remember it as read ahead.
    fn handle(&mut self, i: usize, entry: &RawEntry<'_>, live: bool, clock: PageClock) {
        let id = entry.id;
        let within = id.ms <= clock.now_ms;
        let s = &self.streams[i];
        if s.pos.is_some_and(|p| id <= p) {
            return;
        }
        // Entries ahead of the clock are read on every scan; report each once.
        let first_sighting = s.ahead.is_none_or(|a| id > a);
        let limits = self.limits;
        let parsed = reply::fields(entry.fields, limits.max_fields, limits.max_bytes)
            .map_err(DropReason::Fields)
            .and_then(|fields| {
                let key = self.key.as_ref();
                match s.kind {
                    StreamKind::Revoke => RevocationEvent::parse_revocation(&s.name, &fields, key),
                    StreamKind::Epoch => RevocationEvent::parse_epoch(&s.name, &fields, key),
                }
                .map_err(DropReason::Event)
            });
        match parsed {
            Ok(event) => {
                self.set.apply(&event);
                if first_sighting {
                    // Replayed history would report its age as lag; only live events count.
                    self.health.record_applied(live.then_some(id.ms));
                    tracing::trace!(stream = %s.name, %id, "applied revocation stream event");
                }
            }
            Err(reason) if first_sighting => {
                self.health.record_dropped_for(reason.kind());
                // Only the kind of fault: never field values, which include `_sig`.
                tracing::warn!(stream = %s.name, %id, error = %reason, "dropped revocation stream message");
            }
            Err(_) => {}
        }
        // The identity of the entry the position moves to; a screened entry's fields
        // may be a marker, so it has none to check later.
        let digest =
            (within && !clock.screened).then(|| reply::digest(&self.digest_key, entry.fields));
        let s = &mut self.streams[i];
        s.seen = true;
        if first_sighting {
            s.count_read(id);
        }
        if within {
            s.pos = Some(id);
            s.pos_digest = digest;
            if s.ahead.is_some_and(|a| a <= id) {
                s.ahead = None;
            }
        } else {
            if s.ahead.is_none() {
                tracing::warn!(
                    stream = %s.name,
                    %id,
                    "revocation stream entry with an id ahead of the server clock \
                     (written with an explicit id); not moving the read position past it"
                );
            }
            s.ahead = s.ahead.max(Some(id));
        }
    }

    fn screened(&self) -> bool {
        self.screened_until.is_some_and(|t| Instant::now() < t)
    }

    fn server_now_ms(&self) -> u64 {
        self.server_clock.map_or(0, |(ms, at)| {
            ms.saturating_add(u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX))
        })
    }

    /// The start of the catch-up window on the server's clock.
    fn catch_up_start(&self) -> StreamId {
        StreamId::at(
            self.server_now_ms()
                .saturating_sub(u64::try_from(self.catch_up.as_millis()).unwrap_or(u64::MAX)),
        )
    }

    /// Re-read the server clock if `id` looks ahead of it: the entry may just be newer
    /// than the last reading.
    async fn cover_time(&mut self, conn: &mut Conn, id: StreamId) -> Result<(), FeedError> {
        if id.ms > self.server_now_ms() {
            self.refresh_time(conn).await?;
        }
        Ok(())
    }

    /// The server's clock: stream ids are its milliseconds, so positions and the
    /// catch-up window are judged on it rather than on this host's clock.
    async fn refresh_time(&mut self, conn: &mut Conn) -> Result<(), FeedError> {
        let v = conn
            .query(&::redis::cmd("TIME"), SMALL_REPLY)
            .await
            .map_err(|e| refused("TIME", e))?;
        let ms = reply::time_ms(&v).ok_or(FeedError::Reply(Unexpected("TIME")))?;
        self.server_clock = Some((ms, Instant::now()));
        Ok(())
    }

    /// `XINFO STREAM` of stream `i`, or `None` when it does not exist.
    async fn stream_meta(
        &mut self,
        conn: &mut Conn,
        i: usize,
    ) -> Result<Option<StreamMeta>, FeedError> {
        let name = &self.streams[i].name;
        let (cmd, command) = if self.screened() {
            let mut cmd = ::redis::cmd("EVAL");
            cmd.arg(META_SCRIPT).arg(1).arg(name);
            (cmd, "EVAL (the stream metadata script)")
        } else {
            let mut cmd = ::redis::cmd("XINFO");
            cmd.arg("STREAM").arg(name);
            (cmd, "XINFO STREAM")
        };
        // Plain XINFO carries the first and last entries: allow a full reply.
        match conn.query(&cmd, self.limits.max_reply_bytes).await {
            Ok(v) => reply::stream_meta(&v)
                .map(Some)
                .ok_or(FeedError::Reply(Unexpected("XINFO"))),
            Err(FeedError::Redis(e)) if e.detail().is_some_and(|d| d.contains("no such key")) => {
                Ok(None)
            }
            Err(e) => Err(refused(command, e)),
        }
    }

    async fn server_run_id(&self, conn: &mut Conn) -> Result<Option<String>, FeedError> {
        match conn
            .query(::redis::cmd("INFO").arg("server"), SMALL_REPLY)
            .await
        {
            Ok(v) => Ok(reply::run_id(&v).map(str::to_owned)),
            // INFO may be renamed or denied; the stream checks still catch data loss.
            Err(FeedError::Redis(e)) if is_refusal(&e) => {
                tracing::debug!(error = %e, "INFO server failed; restart detection relies on stream ids");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// What one page read returned.
struct Page {
    len: usize,
    asked: usize,
    last: Option<StreamId>,
    /// Entries left ahead of the read position (ids ahead of the server clock).
    ahead: usize,
}

/// Name the command when the server refused it.
fn refused(command: &'static str, e: FeedError) -> FeedError {
    match e {
        FeedError::Redis(error) if is_refusal(&error) => FeedError::Refused { command, error },
        e => e,
    }
}

/// Why a message was dropped. Its `Display` names the fault only.
enum DropReason {
    Fields(reply::FieldsError),
    Event(EventError),
}

impl DropReason {
    /// The reason's count in the feed's status.
    fn kind(&self) -> crate::revocation::DropReason {
        use crate::revocation::DropReason as K;
        match self {
            DropReason::Fields(
                reply::FieldsError::TooManyFields | reply::FieldsError::TooLarge,
            ) => K::Oversized,
            DropReason::Fields(_) => K::Malformed,
            DropReason::Event(EventError::Unsigned) => K::Unsigned,
            DropReason::Event(EventError::BadSignature) => K::BadSignature,
            DropReason::Event(EventError::TooManyFields | EventError::TooLarge) => K::Oversized,
            DropReason::Event(_) => K::Malformed,
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DropReason::Fields(e) => f.write_str(e.as_str()),
            DropReason::Event(e) => fmt::Display::fmt(e, f),
        }
    }
}

/// Resolves when the stop flag turns true or the handle is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        let mut nominal = Duration::from_millis(50);
        for _ in 0..12 {
            let d = b.next_delay();
            assert!(d >= nominal / 2 && d <= nominal, "{d:?} for {nominal:?}");
            nominal = (nominal * 2).min(Duration::from_secs(2));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(50));
    }

    #[test]
    fn a_screened_page_fits_the_reply_budget() {
        let l = Limits {
            max_fields: 64,
            max_bytes: 16 * 1024,
            max_reply_bytes: 1024 * 1024,
        };
        let n = l.screened_page();
        assert!(n >= 1 && n * (l.max_bytes + l.max_fields * 2 * 16) <= l.max_reply_bytes);
        let tiny = Limits {
            max_reply_bytes: 10,
            ..l
        };
        assert_eq!(tiny.screened_page(), 1);
    }
}
