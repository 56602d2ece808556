//! Process-wide decision counters, cheap enough for the warm path.
//!
//! Each thread counts into its own slot with plain (uncontended) atomic stores, so a
//! count costs a thread-local access and a store, not a locked read-modify-write on a
//! cache line the other cores also write. Readers sum the slots under the registry
//! lock; a thread that exits folds its counts into `retired` under the same lock, so
//! totals never go backwards.
//!
//! Verification latency is sampled only for verifiers whose metrics are published:
//! every cold verification, and one warm one in [`WARM_SAMPLE_EVERY`], are timed
//! into a bounded per-thread buffer that the publisher drains.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::error::{AuthError, ErrorCode, InvalidReason};

/// Counter indexes: allowed, one per code other than `invalid_token`, one per
/// `invalid_token` reason, then cache hits and misses.
const ALLOW: usize = 0;
const CODES: usize = 1;
const REASONS: usize = CODES + 13;
const N_REASONS: usize = 15;
pub(crate) const CACHE_HIT: usize = REASONS + N_REASONS;
pub(crate) const CACHE_MISS: usize = CACHE_HIT + 1;
const SAMPLES_DROPPED: usize = CACHE_MISS + 1;
/// How many counters a slot holds.
pub(crate) const COUNTERS: usize = SAMPLES_DROPPED + 1;

/// One warm verification in this many is timed while sampling is on.
pub(crate) const WARM_SAMPLE_EVERY: u32 = 128;
/// The most latency samples a thread keeps between two drains.
const MAX_SAMPLES: usize = 4096;

/// A timed verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sample {
    /// Whether the signature was checked (a cache miss), or the cache answered.
    pub(crate) cold: bool,
    pub(crate) elapsed: Duration,
}

struct Slot {
    counts: [AtomicU64; COUNTERS],
    samples: Mutex<Vec<Sample>>,
}

impl Slot {
    fn new() -> Arc<Self> {
        Arc::new(Slot {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            samples: Mutex::new(Vec::new()),
        })
    }
}

struct Registry {
    live: Vec<Arc<Slot>>,
    retired: [u64; COUNTERS],
    retired_samples: Vec<Sample>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    live: Vec::new(),
    retired: [0; COUNTERS],
    retired_samples: Vec::new(),
});

fn registry() -> MutexGuard<'static, Registry> {
    // Counting must never take a request down: a poisoned lock still holds counts.
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// This thread's slot; retired into the registry when the thread exits.
struct Local {
    slot: Arc<Slot>,
    tick: Cell<u32>,
}

impl Local {
    fn register() -> Self {
        let slot = Slot::new();
        registry().live.push(Arc::clone(&slot));
        Local {
            slot,
            tick: Cell::new(0),
        }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        let mut r = registry();
        for (total, c) in r.retired.iter_mut().zip(&self.slot.counts) {
            *total += c.load(Ordering::Relaxed);
        }
        let mut samples = std::mem::take(
            &mut *self
                .slot
                .samples
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        samples.truncate(MAX_SAMPLES.saturating_sub(r.retired_samples.len()));
        r.retired_samples.extend(samples);
        r.live.retain(|s| !Arc::ptr_eq(s, &self.slot));
    }
}

thread_local! {
    static LOCAL: Local = Local::register();
}

/// Add one to counter `i` of this thread (only this thread writes its slot, so a
/// load and a store suffice).
#[inline]
fn bump_in(slot: &Slot, i: usize) {
    let c = &slot.counts[i];
    c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
}

/// Count a decision, and whether the cache answered (`Some(true)`), the signature
/// was checked (`Some(false)`), or neither applies (`None`).
#[inline]
pub(crate) fn record(outcome: Result<(), &AuthError>, cache_hit: Option<bool>) {
    let i = index(outcome);
    // During thread teardown the slot may be gone: the count is lost, nothing fails.
    let _ = LOCAL.try_with(|l| {
        bump_in(&l.slot, i);
        match cache_hit {
            Some(true) => bump_in(&l.slot, CACHE_HIT),
            Some(false) => bump_in(&l.slot, CACHE_MISS),
            None => {}
        }
    });
}

/// Whether this warm verification is one to time (one in [`WARM_SAMPLE_EVERY`] on
/// this thread).
#[inline]
pub(crate) fn sample_warm() -> bool {
    LOCAL
        .try_with(|l| {
            let t = l.tick.get().wrapping_add(1);
            l.tick.set(t);
            t % WARM_SAMPLE_EVERY == 0
        })
        .unwrap_or(false)
}

/// Keep one latency sample, unless this thread's buffer is full (counted).
pub(crate) fn sample(s: Sample) {
    let _ = LOCAL.try_with(|l| {
        let mut buf = l
            .slot
            .samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if buf.len() < MAX_SAMPLES {
            buf.push(s);
        } else {
            drop(buf);
            bump_in(&l.slot, SAMPLES_DROPPED);
        }
    });
}

/// The counter index of a decision.
fn index(outcome: Result<(), &AuthError>) -> usize {
    match outcome {
        Ok(()) => ALLOW,
        Err(e) => match (e.code(), e.reason()) {
            (ErrorCode::InvalidToken, Some(r)) => REASONS + reason_index(r),
            (code, _) => CODES + code_index(code),
        },
    }
}

fn code_index(code: ErrorCode) -> usize {
    ErrorCode::ALL.iter().position(|c| *c == code).unwrap_or(0)
}

const REASON_ORDER: [InvalidReason; N_REASONS] = [
    InvalidReason::Malformed,
    InvalidReason::Header,
    InvalidReason::Algorithm,
    InvalidReason::UnknownKey,
    InvalidReason::Signature,
    InvalidReason::Expired,
    InvalidReason::NotYetValid,
    InvalidReason::IssuedInFuture,
    InvalidReason::Issuer,
    InvalidReason::Audience,
    InvalidReason::Use,
    InvalidReason::Claims,
    InvalidReason::Target,
    InvalidReason::Replayed,
    InvalidReason::Expiring,
];

fn reason_index(r: InvalidReason) -> usize {
    REASON_ORDER.iter().position(|x| *x == r).unwrap_or(0)
}

/// Totals of every counter, over all threads that ever counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Totals([u64; COUNTERS]);

#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
impl Totals {
    /// Allowed decisions.
    pub(crate) fn allowed(&self) -> u64 {
        self.0[ALLOW]
    }

    /// Denials, each with its code and (for `invalid_token`) reason, omitting zeros.
    pub(crate) fn denials(&self) -> Vec<(ErrorCode, Option<InvalidReason>, u64)> {
        let mut out = Vec::new();
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            if *code == ErrorCode::InvalidToken {
                for (j, r) in REASON_ORDER.iter().enumerate() {
                    let n = self.0[REASONS + j];
                    if n > 0 {
                        out.push((*code, Some(*r), n));
                    }
                }
                // An invalid_token without a reason (none is made today).
                let n = self.0[CODES + i];
                if n > 0 {
                    out.push((*code, None, n));
                }
            } else {
                let n = self.0[CODES + i];
                if n > 0 {
                    out.push((*code, None, n));
                }
            }
        }
        out
    }

    /// Cache hits and misses.
    pub(crate) fn cache(&self) -> (u64, u64) {
        (self.0[CACHE_HIT], self.0[CACHE_MISS])
    }

    /// Latency samples dropped because a thread's buffer was full.
    pub(crate) fn samples_dropped(&self) -> u64 {
        self.0[SAMPLES_DROPPED]
    }
}

/// Sum every thread's counters.
pub(crate) fn totals() -> Totals {
    let r = registry();
    let mut t = r.retired;
    for slot in &r.live {
        for (total, c) in t.iter_mut().zip(&slot.counts) {
            *total = total.wrapping_add(c.load(Ordering::Relaxed));
        }
    }
    Totals(t)
}

/// Take every latency sample kept since the last drain.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) fn drain_samples() -> Vec<Sample> {
    let mut r = registry();
    let mut out = std::mem::take(&mut r.retired_samples);
    for slot in &r.live {
        out.append(&mut slot.samples.lock().unwrap_or_else(PoisonError::into_inner));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_and_reason_has_its_own_counter() {
        assert_eq!(ErrorCode::ALL.len(), REASONS - CODES);
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            if *c != ErrorCode::InvalidToken {
                assert!(seen.insert(CODES + code_index(*c)));
            }
        }
        for r in REASON_ORDER {
            assert!(seen.insert(REASONS + reason_index(r)));
        }
        assert!(seen.iter().all(|i| *i < CACHE_HIT));
    }

    #[test]
    fn counts_from_exited_threads_are_kept() {
        let before = totals();
        std::thread::spawn(|| {
            for _ in 0..5 {
                record(Err(&AuthError::RevocationUnavailable), None);
            }
            record(Ok(()), Some(true));
        })
        .join()
        .unwrap();
        let after = totals();
        let unavailable = |t: &Totals| {
            t.denials()
                .iter()
                .find(|d| d.0 == ErrorCode::RevocationUnavailable)
                .map_or(0, |d| d.2)
        };
        // Other tests count concurrently: at least this thread's counts arrived.
        assert!(unavailable(&after) >= unavailable(&before) + 5);
        assert!(after.allowed() > before.allowed());
        assert!(after.cache().0 > before.cache().0);
    }

    #[test]
    fn a_full_sample_buffer_counts_drops() {
        std::thread::spawn(|| {
            let s = Sample {
                cold: true,
                elapsed: Duration::from_micros(40),
            };
            let before = totals().samples_dropped();
            for _ in 0..MAX_SAMPLES + 3 {
                sample(s);
            }
            assert!(totals().samples_dropped() >= before + 3);
        })
        .join()
        .unwrap();
    }
}
