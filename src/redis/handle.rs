//! [`FeedHandle`]: the running consumer thread, as the verifier's
//! [`Running`](crate::source::Running) source.

use std::fmt;

use super::worker::Worker;
use crate::future::BoxFuture;
use crate::source::Running;

/// The running revocation feed; the verifier holds it as a
/// [`SourceHandle`](crate::source::SourceHandle), reached with
/// [`Verifier::revocation_feed`](crate::Verifier::revocation_feed).
///
/// The consumer runs on its own thread (named `caracal-revocation-feed`) with a
/// single-threaded Tokio runtime, so parsing and checking stream entries never takes
/// a worker that serves requests. Dropping the handle (that is, the last clone of the
/// verifier) tells it to stop. The verifier, not this handle, marks the feed stale
/// once it stops (see [`source`](crate::source)).
pub(crate) struct FeedHandle(Worker);

impl fmt::Debug for FeedHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeedHandle")
            .field("running", &self.is_running())
            .finish()
    }
}

impl FeedHandle {
    pub(crate) fn new(worker: Worker) -> Self {
        Self(worker)
    }
}

impl Running for FeedHandle {
    fn name(&self) -> &str {
        "redis-revocations"
    }

    fn is_running(&self) -> bool {
        self.0.is_running()
    }

    /// Tells the consumer to stop and waits for its thread to finish. Idempotent.
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.0.stop())
    }
}
