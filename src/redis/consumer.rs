//! The consumer task: catch-up, tailing with `XREAD BLOCK`, reconnection and
//! restart detection.

use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, RedisError, Value};
use tokio::sync::watch;

use super::reply::{self, StreamId, Unexpected};
use crate::revocation::{EventError, FeedHealth, RevocationEvent, RevocationSet, StreamKey};

/// Entries asked for per stream and per read.
const PAGE: usize = 1000;
/// The most time a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long past the block timeout a read may take before the connection counts as hung.
const RESPONSE_MARGIN: Duration = Duration::from_secs(2);

/// Everything the task needs, validated by [`RedisRevocations`](super::RedisRevocations).
pub(crate) struct Settings {
    pub(crate) client: ::redis::Client,
    pub(crate) key: Option<StreamKey>,
    pub(crate) revoke_stream: String,
    pub(crate) epoch_stream: String,
    pub(crate) catch_up: Duration,
    pub(crate) block: Duration,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
    pub(crate) set: RevocationSet,
    pub(crate) health: Arc<FeedHealth>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Revoke,
    Epoch,
}

/// One tailed stream and the id of the last entry handled (applied or dropped).
struct Cursor {
    name: String,
    kind: Kind,
    last: Option<StreamId>,
    /// Whether an entry of this stream was ever read (so its absence means loss).
    seen: bool,
}

/// Why a connection was abandoned.
enum FeedError {
    Redis(RedisError),
    Reply(Unexpected),
    Hung,
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
        }
    }
}

/// Exponential backoff with jitter: each delay is drawn from `[d/2, d]`, and `d`
/// doubles from `min` to `max`.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    fn reset(&mut self) {
        self.next = self.min;
    }

    fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(self.max);
        // Spread replicas that lost the same server so they do not reconnect in step.
        let r = std::hash::RandomState::new().hash_one(Instant::now());
        let half = d / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(if nanos == 0 { 0 } else { r % (nanos + 1) })
    }
}

pub(crate) struct Consumer {
    client: ::redis::Client,
    key: Option<StreamKey>,
    cursors: [Cursor; 2],
    catch_up: Duration,
    block: Duration,
    backoff: Backoff,
    set: RevocationSet,
    health: Arc<FeedHealth>,
    /// The server's `run_id` at the last sync; a change means it restarted.
    run_id: Option<String>,
    caught_up: bool,
}

impl Consumer {
    pub(crate) fn new(s: Settings) -> Self {
        Self {
            client: s.client,
            key: s.key,
            cursors: [
                Cursor {
                    name: s.revoke_stream,
                    kind: Kind::Revoke,
                    last: None,
                    seen: false,
                },
                Cursor {
                    name: s.epoch_stream,
                    kind: Kind::Epoch,
                    last: None,
                    seen: false,
                },
            ],
            catch_up: s.catch_up,
            block: s.block,
            backoff: Backoff::new(s.reconnect_min, s.reconnect_max),
            set: s.set,
            health: s.health,
            run_id: None,
            caught_up: false,
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
        loop {
            let (err, was_live) = self.session(&mut failures, &mut down_since).await;
            self.health.mark_disconnected();
            failures = failures.saturating_add(1);
            if was_live {
                down_since = Some(Instant::now());
                tracing::warn!(error = %err, "revocation feed lost its Redis connection; failing closed until it reconnects");
            } else if failures == 1 || failures.is_multiple_of(30) {
                tracing::warn!(error = %err, attempts = failures, "revocation feed cannot reach Redis");
            } else {
                tracing::debug!(error = %err, attempts = failures, "revocation feed cannot reach Redis");
            }
            tokio::time::sleep(self.backoff.next_delay()).await;
        }
    }

    /// One connection's life: connect, sync, then tail until an error. Returns the
    /// error and whether the session had gone live.
    async fn session(
        &mut self,
        failures: &mut u32,
        down_since: &mut Option<Instant>,
    ) -> (FeedError, bool) {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(self.block + RESPONSE_MARGIN));
        let mut conn = match self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(c) => c,
            Err(e) => return (e.into(), false),
        };
        if let Err(e) = self.sync(&mut conn).await {
            return (e, false);
        }
        self.health.mark_read_ok();
        if !self.caught_up {
            self.caught_up = true;
            self.health.mark_caught_up();
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
        loop {
            let block_ms = u64::try_from(self.block.as_millis()).unwrap_or(u64::MAX);
            let mut cmd = ::redis::cmd("XREAD");
            cmd.arg("BLOCK").arg(block_ms);
            if let Err(e) = self.read(&mut conn, cmd, true).await {
                return (e, true);
            }
            self.health.mark_read_ok();
        }
    }

    /// Bring the cursors up to date after (re)connecting: detect a restarted or
    /// emptied server, then replay everything after the cursors without blocking.
    async fn sync(&mut self, conn: &mut MultiplexedConnection) -> Result<(), FeedError> {
        let run_id = self.server_run_id(conn).await?;
        let start = StreamId::at(
            self.server_time_ms(conn)
                .await?
                .saturating_sub(u64::try_from(self.catch_up.as_millis()).unwrap_or(u64::MAX)),
        );
        let restarted = matches!((&self.run_id, &run_id), (Some(a), Some(b)) if a != b);
        if restarted {
            tracing::warn!(
                "Redis restarted (run id changed); replaying the retained history so no event is missed"
            );
        }
        for i in 0..self.cursors.len() {
            let Some(last) = self.cursors[i].last else {
                self.cursors[i].last = Some(start);
                continue;
            };
            let reset = restarted || self.needs_reset(conn, i, last).await?;
            if reset {
                self.cursors[i].last = Some(start);
            }
        }
        if run_id.is_some() {
            self.run_id = run_id;
        }
        // Page through without blocking until every stream returns a short page.
        let live = self.caught_up;
        loop {
            let counts = self.read(conn, ::redis::cmd("XREAD"), live).await?;
            if counts.iter().all(|&n| n < PAGE) {
                return Ok(());
            }
        }
    }

    /// Whether a stream must be re-read from the catch-up start because it now ends
    /// before our cursor: it was deleted, or the server lost data and its ids went
    /// backwards. Reading on from our cursor would skip every new event numbered
    /// below it.
    async fn needs_reset(
        &self,
        conn: &mut MultiplexedConnection,
        i: usize,
        last: StreamId,
    ) -> Result<bool, FeedError> {
        let name = &self.cursors[i].name;
        let reply = ::redis::cmd("XINFO")
            .arg("STREAM")
            .arg(name)
            .query_async::<Value>(conn)
            .await;
        let newest = match reply {
            Ok(v) => reply::last_generated_id(&v).ok_or(FeedError::Reply(Unexpected("XINFO")))?,
            Err(e) if e.detail().is_some_and(|d| d.contains("no such key")) => StreamId::ZERO,
            Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
                return Err(e.into());
            }
            Err(e) => {
                // E.g. XINFO denied by an ACL. Reading on is still safe unless the
                // ids went backwards, which a run id change usually reveals.
                tracing::debug!(stream = %name, error = %e, "XINFO STREAM failed; skipping the id check");
                return Ok(false);
            }
        };
        if newest == StreamId::ZERO && !self.cursors[i].seen {
            // Never had entries: nothing can have been lost.
            return Ok(true);
        }
        if newest < last {
            tracing::warn!(
                stream = %name,
                cursor = %last,
                newest = %newest,
                "stream ids went backwards (stream deleted or data lost); re-reading it from the catch-up start"
            );
            return Ok(true);
        }
        Ok(false)
    }

    async fn server_run_id(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> Result<Option<String>, FeedError> {
        match ::redis::cmd("INFO")
            .arg("server")
            .query_async::<Value>(conn)
            .await
        {
            Ok(v) => Ok(reply::run_id(&v).map(str::to_owned)),
            Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
                Err(e.into())
            }
            // INFO may be renamed or denied; the XINFO check still runs.
            Err(e) => {
                tracing::debug!(error = %e, "INFO server failed; restart detection relies on stream ids");
                Ok(None)
            }
        }
    }

    /// The server's clock: stream ids are its milliseconds, so the catch-up window
    /// is measured on it rather than on this host's clock.
    async fn server_time_ms(&self, conn: &mut MultiplexedConnection) -> Result<u64, FeedError> {
        let v = ::redis::cmd("TIME").query_async::<Value>(conn).await?;
        reply::time_ms(&v).ok_or(FeedError::Reply(Unexpected("TIME")))
    }

    /// Send `XREAD [BLOCK ms] COUNT n STREAMS a b <id a> <id b>` and handle every
    /// entry. Returns how many entries each stream returned.
    async fn read(
        &mut self,
        conn: &mut MultiplexedConnection,
        mut cmd: ::redis::Cmd,
        live: bool,
    ) -> Result<[usize; 2], FeedError> {
        cmd.arg("COUNT").arg(PAGE).arg("STREAMS");
        for c in &self.cursors {
            cmd.arg(&c.name);
        }
        for c in &self.cursors {
            cmd.arg(c.last.unwrap_or(StreamId::ZERO).to_string());
        }
        // The connection's response timeout covers this too; the outer bound only
        // guards against a reply that never completes.
        let deadline = self.block + RESPONSE_MARGIN * 2;
        let v = match tokio::time::timeout(deadline, cmd.query_async::<Value>(conn)).await {
            Ok(r) => r?,
            Err(_) => return Err(FeedError::Hung),
        };
        let streams = reply::xread(&v).map_err(FeedError::Reply)?;
        let mut counts = [0; 2];
        for (name, entries) in streams {
            // XREAD answers only for the streams asked and only after the given ids.
            // Anything else would be read again and again: refuse it, and back off.
            let i = self
                .cursors
                .iter()
                .position(|c| c.name == name)
                .ok_or(FeedError::Reply(Unexpected("XREAD")))?;
            let before = self.cursors[i].last;
            counts[i] = entries.len();
            for entry in &entries {
                self.handle(i, entry, live);
            }
            if !entries.is_empty() && self.cursors[i].last == before {
                return Err(FeedError::Reply(Unexpected("XREAD")));
            }
        }
        Ok(counts)
    }

    /// Apply or drop one entry, then move the cursor past it: a poison message never
    /// stalls the stream.
    fn handle(&mut self, i: usize, entry: &reply::RawEntry<'_>, live: bool) {
        let cursor = &self.cursors[i];
        let Some(id) = entry.id else {
            self.health.record_dropped();
            tracing::warn!(stream = %cursor.name, error = "malformed id", "dropped revocation stream message");
            return;
        };
        if cursor.last.is_some_and(|last| id <= last) {
            return;
        }
        let parsed = reply::fields(entry.fields)
            .map_err(DropReason::Fields)
            .and_then(|fields| {
                let key = self.key.as_ref();
                match cursor.kind {
                    Kind::Revoke => RevocationEvent::parse_revocation(&cursor.name, &fields, key),
                    Kind::Epoch => RevocationEvent::parse_epoch(&cursor.name, &fields, key),
                }
                .map_err(DropReason::Event)
            });
        match parsed {
            Ok(event) => {
                self.set.apply(&event);
                // Replayed history would report its age as lag; only live events count.
                self.health.record_applied(live.then_some(id.ms));
                tracing::trace!(stream = %cursor.name, %id, "applied revocation stream event");
            }
            Err(reason) => {
                self.health.record_dropped();
                // Only the kind of fault: never field values, which include `_sig`.
                tracing::warn!(stream = %cursor.name, %id, error = %reason, "dropped revocation stream message");
            }
        }
        self.cursors[i].last = Some(id);
        self.cursors[i].seen = true;
    }
}

/// Why a message was dropped. Its `Display` names the fault only.
enum DropReason {
    Fields(reply::FieldsError),
    Event(EventError),
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
}
