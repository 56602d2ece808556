//! [`Worker`]: a source's own thread with a single-threaded runtime, its stop
//! signal and its "finished" signal (the revocation feed and the audit emitter).

use std::future::Future;

use tokio::sync::watch;

/// A thread running one future on its own current-thread runtime. Dropping the
/// worker tells it to stop.
pub(crate) struct Worker {
    stop: watch::Sender<bool>,
    finished: watch::Receiver<bool>,
}

impl Worker {
    /// Start thread `name` running `run(stop)`; `what` names the work in the log
    /// line of a runtime that cannot start (the work then never runs).
    pub(crate) fn spawn<F, Fut>(name: &str, what: &'static str, run: F) -> std::io::Result<Self>
    where
        F: FnOnce(watch::Receiver<bool>) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let (stop, stopped) = watch::channel(false);
        let (done, finished) = watch::channel(false);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                // Signals the end however the thread ends.
                struct Done(watch::Sender<bool>);
                impl Drop for Done {
                    fn drop(&mut self) {
                        let _ = self.0.send(true);
                    }
                }
                let _done = Done(done);
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(run(stopped)),
                    Err(e) => tracing::error!(error = %e, "{what} cannot start its runtime"),
                }
            })?;
        Ok(Self { stop, finished })
    }

    /// Whether the thread still runs.
    pub(crate) fn is_running(&self) -> bool {
        !*self.finished.borrow()
    }

    /// Tell the work to stop and wait for the thread to finish. Idempotent.
    pub(crate) async fn stop(&self) {
        let _ = self.stop.send(true);
        let mut finished = self.finished.clone();
        // An error means the thread is gone, which is just as finished.
        let _ = finished.wait_for(|done| *done).await;
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
