//! The warm path against writers on other threads: once `revoke()`, an epoch raise
//! or the set filling up has returned, every `verify()` that starts after it sees
//! it, even for a token that thread has just been serving from its caches.
//!
//! Each round mints a token, has a worker thread verify it over and over (so it is
//! cached, and hot in that thread), then acts on the revocation set from this thread
//! and raises a flag. The worker reads the flag **before** starting a verification;
//! once it has seen the flag, that verification must be denied. Many rounds, so an
//! ordering bug shows up as a flaky failure rather than never.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use caracal_verifier::revocation::RevocationSet;
use caracal_verifier::testing::TestIssuer;
use caracal_verifier::{AnchorKind, AuthError, ManualClock, Requirements, Verifier};

const ROUNDS: usize = 400;
/// Allowed verifications before the write: the later ones are warm-path hits.
const WARM: usize = 5;
const ZONE: &str = "zone-1";
const T0: u64 = 1_790_000_100;

/// Where the main thread and the worker are in a round.
#[derive(Default)]
struct Progress {
    /// Rounds whose token the worker is serving from its own cache table: allowed
    /// [`WARM`] times (two full verifications, admitted on the second, then a hit
    /// on the shared cache, then hits on the thread's table).
    warmed: AtomicUsize,
    /// Rounds whose write on the revocation set has returned.
    acted: AtomicUsize,
    /// Rounds the worker has finished.
    done: AtomicUsize,
}

fn wait_for(counter: &AtomicUsize, n: usize) {
    while counter.load(Ordering::Acquire) < n {
        std::thread::yield_now();
    }
}

/// Runs [`ROUNDS`] rounds. `mint(i)` makes round `i`'s token, `act(i)` is the write
/// under test, `after(i)` restores what the next round needs, and `denied` is the
/// answer every verification that starts after `act` returned must get.
fn race(
    verifier: &Verifier,
    mut mint: impl FnMut(usize) -> String,
    mut act: impl FnMut(usize),
    mut after: impl FnMut(usize),
    denied: impl Fn(&AuthError) -> bool + Send + 'static,
) {
    let progress = Arc::new(Progress::default());
    let (tx, rx) = mpsc::channel::<String>();
    let worker = {
        let (v, p) = (verifier.clone(), Arc::clone(&progress));
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let reqs = Requirements::new();
            for (i, token) in rx.iter().enumerate() {
                let mut allowed = 0;
                loop {
                    // Read before the verification starts: a set flag means the write
                    // returned before this verification began.
                    let after_write = p.acted.load(Ordering::Acquire) > i;
                    let result = rt.block_on(v.verify(&token, &reqs));
                    if after_write {
                        match result {
                            Err(e) if denied(&e) => break,
                            other => panic!("round {i}: verified after the write: {other:?}"),
                        }
                    }
                    // Before the flag, the write may or may not have happened yet.
                    if result.is_ok() {
                        allowed += 1;
                        if allowed == WARM {
                            p.warmed.store(i + 1, Ordering::Release);
                        }
                    }
                }
                p.done.store(i + 1, Ordering::Release);
            }
        })
    };
    for i in 0..ROUNDS {
        let token = mint(i);
        tx.send(token).unwrap();
        wait_for(&progress.warmed, i + 1);
        act(i);
        progress.acted.store(i + 1, Ordering::Release);
        wait_for(&progress.done, i + 1);
        after(i);
    }
    drop(tx);
    worker.join().unwrap();
}

struct Env {
    sts: TestIssuer,
    clock: ManualClock,
    rt: tokio::runtime::Runtime,
}

fn env() -> Env {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let sts = rt.block_on(TestIssuer::start(ZONE)).unwrap();
    let clock = ManualClock::new(Duration::from_secs(T0));
    sts.set_clock(clock.clone());
    Env { sts, clock, rt }
}

fn verifier(e: &Env, set: RevocationSet) -> Verifier {
    let v = Verifier::builder()
        .issuer(e.sts.issuer_url())
        .audience("resource://api")
        .zone(ZONE)
        .clock(e.clock.clone())
        .jwks_ttl(Duration::from_secs(24 * 3600))
        .jwks_max_staleness(Duration::from_secs(48 * 3600))
        .revocations(set)
        .build()
        .unwrap();
    e.rt.block_on(v.warm_up()).unwrap();
    v
}

#[test]
fn a_revocation_applies_to_the_next_verification_on_any_thread() {
    let e = env();
    let v = verifier(&e, RevocationSet::builder().clock(e.clock.clone()).build());
    race(
        &v,
        |i| e.sts.mandate().sid(format!("sid-{i}")).ttl(3600).sign(),
        |i| v.revocations().revoke(&format!("sid-{i}")),
        |_| {},
        |err| {
            matches!(
                err,
                AuthError::SessionRevoked {
                    anchor: AnchorKind::Sid,
                    ..
                }
            )
        },
    );
}

#[test]
fn an_epoch_raise_applies_to_the_next_verification_on_any_thread() {
    let e = env();
    let v = verifier(&e, RevocationSet::builder().clock(e.clock.clone()).build());
    race(
        &v,
        |i| e.sts.mandate().epoch(i as u64 + 1).ttl(3600).sign(),
        |i| assert!(v.revocations().raise_epoch(ZONE, i as u64 + 2)),
        |_| {},
        |err| matches!(err, AuthError::DelegationStale { .. }),
    );
}

#[test]
fn a_full_set_fails_closed_for_the_next_verification_on_any_thread() {
    let e = env();
    let set = RevocationSet::builder()
        .clock(e.clock.clone())
        .max_anchors(4)
        .build();
    for i in 0..4 {
        set.revoke_for(&format!("filler-{i}"), Duration::from_secs(24 * 3600));
    }
    let v = verifier(&e, set);
    race(
        &v,
        |_| e.sts.mandate().ttl(3600).sign(),
        // One more anchor than the capacity: every check fails closed...
        |i| {
            v.revocations()
                .revoke_for(&format!("extra-{i}"), Duration::from_secs(1))
        },
        // ...until it expires.
        |_| e.clock.advance(Duration::from_secs(2)),
        |err| *err == AuthError::RevocationUnavailable,
    );
    assert!(v.revocations().is_current());
}
