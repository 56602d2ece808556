//! One feed, several readers: in Cluster mode each stream has its own reader (its
//! key may live on its own node), and the verifier sees one feed that is fresh only
//! while every reader is.

use std::sync::{Arc, Mutex};

use crate::revocation::{DropReason, FeedStatus};
use crate::source::FeedReporter;

#[derive(Debug, Default, Clone, Copy)]
struct Lane {
    connected: bool,
    caught_up: bool,
    /// A read succeeded since the feed's last `mark_read_ok`.
    read: bool,
}

struct Shared {
    reporter: FeedReporter,
    lanes: Mutex<Vec<Lane>>,
}

/// A reader's view of the feed's [`FeedReporter`]: counters go straight through;
/// connection, catch-up and staleness are combined over all readers, so the feed is
/// connected and caught up only while every reader is, and its last read is that of
/// the reader that read least recently (a read marks the feed only once every
/// reader has read since the previous mark).
#[derive(Clone)]
pub(crate) struct LaneReporter {
    shared: Arc<Shared>,
    index: usize,
}

impl LaneReporter {
    /// `n` readers of one feed.
    pub(crate) fn split(reporter: FeedReporter, n: usize) -> Vec<LaneReporter> {
        let shared = Arc::new(Shared {
            reporter,
            lanes: Mutex::new(vec![Lane::default(); n.max(1)]),
        });
        (0..n.max(1))
            .map(|index| LaneReporter {
                shared: shared.clone(),
                index,
            })
            .collect()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Vec<Lane>, usize) -> T) -> T {
        let mut lanes = self.shared.lanes.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut lanes, self.index)
    }

    pub(crate) fn mark_read_ok(&self) {
        let mark = self.with(|lanes, i| {
            lanes[i].connected = true;
            lanes[i].read = true;
            let all = lanes.iter().all(|l| l.connected && l.read);
            if all {
                for l in lanes.iter_mut() {
                    l.read = false;
                }
            }
            all
        });
        if mark {
            self.shared.reporter.mark_read_ok();
        }
    }

    pub(crate) fn mark_disconnected(&self) {
        self.with(|lanes, i| {
            lanes[i].connected = false;
            lanes[i].read = false;
        });
        self.shared.reporter.mark_disconnected();
    }

    pub(crate) fn set_caught_up(&self, caught_up: bool) {
        // Under the lock, so two readers cannot report in the wrong order.
        self.with(|lanes, i| {
            lanes[i].caught_up = caught_up;
            let all = lanes.iter().all(|l| l.caught_up);
            self.shared.reporter.set_caught_up(all);
        });
    }

    pub(crate) fn record_applied(&self, published_ms: Option<u64>) {
        self.shared.reporter.record_applied(published_ms);
    }

    pub(crate) fn record_dropped_for(&self, reason: DropReason) {
        self.shared.reporter.record_dropped_for(reason);
    }

    pub(crate) fn record_gap(&self) {
        self.shared.reporter.record_gap();
    }

    pub(crate) fn record_reset(&self) {
        self.shared.reporter.record_reset();
    }

    pub(crate) fn status(&self) -> FeedStatus {
        self.shared.reporter.status()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::Verifier;
    use crate::error::ConfigError;
    use crate::source::{FeedPolicy, Running, Source, SourceContext};

    struct Capture(std::sync::mpsc::Sender<FeedReporter>);
    #[derive(Debug)]
    struct Idle;
    impl Running for Idle {
        fn name(&self) -> &str {
            "lanes-test"
        }
        fn is_running(&self) -> bool {
            true
        }
        fn shutdown(&self) -> crate::future::BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }
    impl Source for Capture {
        fn start(
            self: Box<Self>,
            ctx: &mut SourceContext<'_>,
        ) -> Result<Box<dyn Running>, ConfigError> {
            let r = ctx.attach_revocation_feed(FeedPolicy::new(Duration::from_secs(30)))?;
            self.0.send(r).unwrap();
            Ok(Box::new(Idle))
        }
    }

    fn reporter() -> (Verifier, FeedReporter) {
        let (tx, rx) = std::sync::mpsc::channel();
        let v = Verifier::builder()
            .issuer("https://sts.example.com")
            .audience("resource://api")
            .zone("zone-1")
            .source(Capture(tx))
            .build()
            .unwrap();
        (v, rx.recv().unwrap())
    }

    #[test]
    fn the_feed_is_fresh_only_while_every_reader_is() {
        let (_v, r) = reporter();
        let lanes = LaneReporter::split(r.clone(), 2);
        lanes[0].set_caught_up(true);
        lanes[0].mark_read_ok();
        assert!(!r.is_fresh(), "one reader of two caught up");
        lanes[1].set_caught_up(true);
        assert!(!r.is_fresh(), "the second reader has not read yet");
        lanes[1].mark_read_ok();
        assert!(r.is_fresh());
        lanes[1].mark_disconnected();
        assert!(!r.is_fresh());
        // The other reader's reads do not make up for the lost one.
        lanes[0].mark_read_ok();
        lanes[0].mark_read_ok();
        assert!(!r.is_fresh());
        lanes[1].mark_read_ok();
        assert!(r.is_fresh());
        lanes[0].set_caught_up(false);
        assert!(!r.is_fresh());
    }
}
