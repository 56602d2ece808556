//! [`FeedHandle`]: the running consumer task, its health and its shutdown.

use std::fmt;
use std::sync::Arc;

use tokio::sync::watch;

use crate::revocation::{FeedHealth, FeedStatus};

/// The running revocation feed, owned by the [`Verifier`](crate::Verifier) that
/// started it; reach it with [`Verifier::revocation_feed`](crate::Verifier::revocation_feed).
///
/// The consumer runs on its own thread (named `caracal-revocation-feed`) with a
/// single-threaded Tokio runtime, so parsing and checking stream entries never takes
/// a worker that serves requests. Dropping the handle (that is, the last clone of the
/// verifier) tells it to stop.
/// Once the feed has stopped, the revocation set it kept current counts as stale, so
/// verification fails closed (unless the feed was configured to fail open).
pub struct FeedHandle {
    health: Arc<FeedHealth>,
    stop: watch::Sender<bool>,
    finished: watch::Receiver<bool>,
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
        finished: watch::Receiver<bool>,
    ) -> Self {
        Self {
            health,
            stop,
            finished,
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
        !*self.finished.borrow()
    }

    /// Stop the consumer and wait for it to finish. Idempotent. Afterwards the feed is
    /// disconnected, so verification fails closed (503 `revocation_unavailable`)
    /// unless the feed was configured to fail open: call it when the server is
    /// shutting down, after it stopped accepting requests.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let mut finished = self.finished.clone();
        // An error means the thread is gone, which is just as finished.
        let _ = finished.wait_for(|done| *done).await;
        self.health.mark_disconnected();
    }
}

impl Drop for FeedHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        // The set may outlive the verifier: it must not keep looking current.
        self.health.mark_disconnected();
    }
}
