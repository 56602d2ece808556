//! [`FeedHandle`]: the running consumer task, its health and its shutdown.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::revocation::{FeedHealth, FeedStatus};

/// The running revocation feed, owned by the [`Verifier`](crate::Verifier) that
/// started it; reach it with [`Verifier::revocation_feed`](crate::Verifier::revocation_feed).
///
/// Dropping the handle (that is, the last clone of the verifier) stops the task.
/// Once the feed has stopped, the revocation set it kept current counts as stale, so
/// verification fails closed (unless the feed was configured to fail open).
pub struct FeedHandle {
    health: Arc<FeedHealth>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for FeedHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeedHandle")
            .field("running", &self.is_running())
            .field("status", &self.health.status())
            .finish()
    }
}

impl FeedHandle {
    pub(crate) fn new(
        health: Arc<FeedHealth>,
        stop: watch::Sender<bool>,
        task: JoinHandle<()>,
    ) -> Self {
        Self {
            health,
            stop,
            task: Mutex::new(Some(task)),
        }
    }

    /// The feed's health for readiness probes and metrics: whether it is fresh,
    /// connected and caught up, the time since its last read and last applied event,
    /// the lag of the last live event behind its publication (from its stream id),
    /// and the counts of applied and dropped messages. Always `Some` for a feed
    /// started by the verifier.
    pub fn status(&self) -> Option<FeedStatus> {
        Some(self.health.status())
    }

    /// Whether the consumer task is still running.
    pub fn is_running(&self) -> bool {
        self.task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }

    /// Stop the consumer and wait for it to finish. Idempotent. Afterwards the feed is
    /// disconnected, so verification fails closed (503 `revocation_unavailable`)
    /// unless the feed was configured to fail open: call it when the server is
    /// shutting down, after it stopped accepting requests.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            // The task only ends by being told to stop; a join error means it was
            // cancelled with its runtime, which stops it just as well.
            let _ = task.await;
        }
        self.health.mark_disconnected();
    }
}

impl Drop for FeedHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self
            .task
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
        // The set may outlive the verifier: it must not keep looking current.
        self.health.mark_disconnected();
    }
}
