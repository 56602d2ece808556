//! The emitter's background task: batches queued action results into pipelined
//! `XADD`s, spills what Redis cannot take, and drains the spill once it can.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};

use redis::aio::MultiplexedConnection;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::key::AuditKey;
use super::spill::{Lines, Spill};
use super::stats::{AuditCounts, Counters};
use super::wire::{self, Entry, Form};
use crate::action::ActionResult;
use crate::redis::consumer::Backoff;

/// How often a summary of losses and spills is logged, at most.
const REPORT_EVERY: Duration = Duration::from_secs(10);

pub(crate) struct Writer {
    pub(crate) rx: mpsc::Receiver<ActionResult>,
    pub(crate) stats: Arc<Counters>,
    pub(crate) connector: crate::redis::Connector,
    pub(crate) key: Option<AuditKey>,
    pub(crate) stream: String,
    pub(crate) form: Form,
    pub(crate) spill: Option<Spill>,
    pub(crate) batch_size: usize,
    pub(crate) flush_interval: Duration,
    pub(crate) io_timeout: Duration,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) backoff: Backoff,
    pub(crate) conn: Option<MultiplexedConnection>,
    /// While disconnected: no connection attempt before this.
    pub(crate) retry_at: Option<Instant>,
    pub(crate) last_report: (Instant, AuditCounts),
}

impl Writer {
    pub(crate) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        if let Some(spill) = &self.spill {
            spill.measure(&self.stats);
        }
        // Drain what an earlier run left behind before live events.
        let _ = self.connection().await;
        let mut batch = Vec::with_capacity(self.batch_size);
        let mut stopping = false;
        while !stopping {
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                n = self.rx.recv_many(&mut batch, self.batch_size) => if n == 0 { break },
            }
            let deadline = Instant::now() + self.flush_interval;
            while batch.len() < self.batch_size {
                let room = self.batch_size - batch.len();
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => { stopping = true; break }
                    () = tokio::time::sleep_until(deadline) => break,
                    n = self.rx.recv_many(&mut batch, room) => if n == 0 { stopping = true; break },
                }
            }
            self.stats.queued.fetch_sub(batch.len() as u64, Relaxed);
            let entries = self.entries(&mut batch);
            self.flush(entries).await;
            self.report(false);
        }
        self.finish().await;
    }

    fn entries(&self, batch: &mut Vec<ActionResult>) -> Vec<Entry> {
        let now = SystemTime::now();
        batch
            .drain(..)
            .map(|r| wire::entry(&self.form, &r, now))
            .collect()
    }

    /// At shutdown: everything still queued goes to Redis within the shutdown
    /// timeout; what does not is spilled.
    async fn finish(&mut self) {
        let mut rest = Vec::new();
        while let Ok(r) = self.rx.try_recv() {
            rest.push(r);
        }
        self.rx.close();
        self.stats.queued.fetch_sub(rest.len() as u64, Relaxed);
        let mut entries = self.entries(&mut rest);
        // One attempt now, whatever the backoff says.
        self.retry_at = None;
        let deadline = Instant::now() + self.shutdown_timeout;
        while !entries.is_empty() {
            let chunk: Vec<Entry> = entries
                .drain(..entries.len().min(self.batch_size))
                .collect();
            let sent = tokio::time::timeout_at(deadline, self.send(&chunk)).await;
            if !matches!(sent, Ok(true)) {
                if sent.is_err() {
                    self.stats.sink_errors.fetch_add(1, Relaxed);
                }
                let mut all = chunk;
                all.append(&mut entries);
                self.persist(all);
                break;
            }
        }
        self.report(true);
    }

    /// Send `entries`, or spill them.
    async fn flush(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        if !self.send(&entries).await {
            self.persist(entries);
        }
    }

    /// Whether `entries` reached the stream.
    async fn send(&mut self, entries: &[Entry]) -> bool {
        let Some(mut conn) = self.connection().await else {
            return false;
        };
        if self.xadd(&mut conn, entries).await {
            Counters::add(&self.stats.sent, entries.len());
            true
        } else {
            self.disconnected("write");
            false
        }
    }

    /// Pipelined `XADD`s, bounded by the I/O timeout.
    async fn xadd(&self, conn: &mut MultiplexedConnection, entries: &[Entry]) -> bool {
        let mut pipe = redis::pipe();
        for e in entries {
            let cmd = pipe
                .cmd("XADD")
                .arg(&self.stream)
                .arg("*")
                .arg("id")
                .arg(&e.id)
                .arg("data")
                .arg(&e.data);
            if let Some(key) = &self.key {
                cmd.arg("sig").arg(e.sig(key));
            }
        }
        let reply =
            tokio::time::timeout(self.io_timeout, pipe.query_async::<Vec<redis::Value>>(conn));
        match reply.await {
            Ok(Ok(ids)) => ids.len() == entries.len(),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "audit XADD failed");
                false
            }
            Err(_) => false,
        }
    }

    /// The live connection, or a new one (then the replay directory is drained
    /// first); `None` while Redis is unreachable or the backoff says wait.
    async fn connection(&mut self) -> Option<MultiplexedConnection> {
        if let Some(c) = &self.conn {
            return Some(c.clone());
        }
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.io_timeout))
            .set_response_timeout(Some(self.io_timeout));
        let connect = self
            .connector
            .primary_for(self.stream.as_bytes(), config, None);
        match tokio::time::timeout(self.io_timeout, connect).await {
            Ok(Ok(node)) => {
                let conn = node.conn;
                let was_down = self.retry_at.take().is_some();
                self.backoff.reset();
                self.conn = Some(conn.clone());
                if was_down {
                    tracing::info!(stream = %self.stream, "audit sink reconnected to Redis");
                }
                self.drain(conn.clone()).await;
                self.conn.clone()
            }
            _ => {
                self.disconnected("connect");
                None
            }
        }
    }

    fn disconnected(&mut self, what: &str) {
        self.stats.sink_errors.fetch_add(1, Relaxed);
        if self.retry_at.is_none() {
            tracing::warn!(
                stream = %self.stream,
                failed = what,
                spill = self.spill.as_ref().map(|s| s.dir().display().to_string()),
                "audit sink cannot reach Redis; events go to the replay directory until it is back"
            );
        }
        self.conn = None;
        self.retry_at = Some(Instant::now() + self.backoff.next_delay());
    }

    /// Send the replay files to the stream, oldest first, deleting each once all its
    /// events are in. Stops at the first failure; the file stays for next time (its
    /// events already sent are sent again, with the same id and bytes, which the
    /// Audit service takes as a benign duplicate).
    async fn drain(&mut self, conn: MultiplexedConnection) {
        let Some(spill) = self.spill.take() else {
            return;
        };
        let ok = self.drain_files(&spill, conn).await;
        spill.measure(&self.stats);
        self.spill = Some(spill);
        if !ok {
            self.disconnected("drain");
        }
    }

    /// Whether the connection held up.
    async fn drain_files(&self, spill: &Spill, mut conn: MultiplexedConnection) -> bool {
        let files = match spill.pending() {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "audit replay directory cannot be read");
                return true;
            }
        };
        for (path, _) in files {
            let mut lines = match Lines::open(&path) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, path = %path.display(), "audit replay file cannot be read; left in place");
                    continue;
                }
            };
            let mut count = 0;
            loop {
                let chunk = match lines.next_chunk(self.batch_size) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, path = %path.display(), "audit replay file cannot be read; left in place");
                        break;
                    }
                };
                if chunk.is_empty() {
                    if lines.bad > 0 {
                        Counters::add(&self.stats.lost, lines.bad);
                        tracing::error!(lines = lines.bad, path = %path.display(), "audit replay file had unreadable lines; those events are lost");
                    }
                    if let Err(e) = std::fs::remove_file(&path) {
                        tracing::error!(error = %e, path = %path.display(), "audit replay file drained but not deleted");
                    }
                    tracing::info!(events = count, path = %path.display(), "audit replay file drained");
                    break;
                }
                if !self.xadd(&mut conn, &chunk).await {
                    return false;
                }
                count += chunk.len();
                Counters::add(&self.stats.sent, chunk.len());
                Counters::add(&self.stats.drained, chunk.len());
            }
        }
        true
    }

    /// Write `entries` to the replay directory, counting what does not fit.
    fn persist(&mut self, entries: Vec<Entry>) {
        let n = entries.len();
        let written = match &mut self.spill {
            None => 0,
            Some(spill) => match spill.write(&entries, &self.stats) {
                Ok(w) => w.0,
                Err(e) => {
                    tracing::error!(error = %e, "audit replay file cannot be written");
                    0
                }
            },
        };
        Counters::add(&self.stats.persisted, written);
        Counters::add(&self.stats.lost, n - written);
    }

    /// Log losses and spills since the last report, at most every
    /// [`REPORT_EVERY`] (or now, at shutdown).
    fn report(&mut self, now: bool) {
        let (at, last) = self.last_report;
        if !now && at.elapsed() < REPORT_EVERY {
            return;
        }
        let c = self.stats.snapshot();
        let dropped = c.dropped - last.dropped;
        let lost = c.lost - last.lost;
        let persisted = c.persisted - last.persisted;
        if dropped > 0 || lost > 0 {
            tracing::error!(
                dropped,
                lost,
                total_lost = c.evidence_lost(),
                "audit events lost (queue full, or neither Redis nor the replay directory took them)"
            );
        }
        if persisted > 0 {
            tracing::warn!(
                persisted,
                spill_files = c.spill_files,
                spill_bytes = c.spill_bytes,
                "audit events written to the replay directory"
            );
        }
        self.last_report = (Instant::now(), c);
    }
}
