//! Regressions found by review: queue liveness after a waiter leaves,
//! targeted calls vs exclusive waiters, idle leases and the half-open probe,
//! a worker dying during recycle, and huge durations.

mod common;

use common::*;
use std::time::Duration;

use portpool_pool::{Backoff, BreakerConfig, Checkout, Heartbeat, PoolError, Wait};
use portpool_transport::{CallRequest, WorkerId};
use tokio::time::Instant;

/// A targeted call is not blocked by an unrelated untargeted waiter: an
/// exclusive waiter reserves one worker (the least loaded); calls for the
/// other workers go ahead at once, calls for the reserved one queue behind it.
#[tokio::test(start_paused = true)]
async fn targeted_call_not_blocked_by_unrelated_exclusive_waiter() {
    let l = launcher().max_concurrency(2);
    let pool = builder(&l).workers(2).build().await.unwrap();
    for w in 0..2 {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.call_on(WorkerId(w), CallRequest::new("sleep", 1_000), Wait::Queue)
                .await
        });
    }
    settle().await;
    // An exclusive checkout queues: no worker is idle. It reserves worker 0.
    let lease = tokio::spawn({
        let pool = pool.clone();
        async move {
            let lease = pool.checkout_with(Checkout::Exclusive).await.unwrap();
            let id = lease.worker_id();
            tokio::time::sleep(secs(60)).await;
            drop(lease);
            id
        }
    });
    settle().await;
    assert_eq!(pool.status().queue_depth, 1);
    // Worker 1 has a free slot and is not reserved: served at once.
    let t0 = Instant::now();
    let ff = pool
        .call_on(WorkerId(1), CallRequest::new("echo", 1), Wait::FailFast)
        .await;
    assert!(ff.is_ok(), "fail-fast: {ff:?}");
    let q = pool
        .call_on(WorkerId(1), CallRequest::new("echo", 2), Wait::Queue)
        .await;
    assert!(q.is_ok(), "queued: {q:?}");
    assert_eq!(t0.elapsed(), ms(0), "waited {:?} for a free slot", t0.elapsed());
    // Worker 0 is reserved for the exclusive waiter: a session call for it
    // waits rather than starve the checkout.
    let err = pool
        .call_on(WorkerId(0), CallRequest::new("echo", 3), Wait::FailFast)
        .await
        .unwrap_err();
    assert!(matches!(err, PoolError::WorkerBusy { .. }), "{err}");
    let behind = tokio::spawn({
        let pool = pool.clone();
        async move {
            pool.call_on(WorkerId(0), CallRequest::new("echo", 4), Wait::Queue)
                .await
        }
    });
    tokio::time::sleep(ms(1_001)).await;
    assert!(!behind.is_finished(), "queued behind the exclusive lease");
    lease.abort();
    let r = behind.await.unwrap();
    assert!(r.is_ok(), "{r:?}");
}

/// An idle lease taken in half-open holds the only probe: every other call
/// is CircuitOpen{retry_after: 0} for as long as the lease lives.
#[tokio::test(start_paused = true)]
async fn idle_lease_holds_the_half_open_probe() {
    let l = launcher().max_concurrency(4);
    // The fault: a time-out under the pool's own call time-out (a caller's
    // own deadline would be the caller's budget, not a fault).
    let pool = builder(&l)
        .workers(1)
        .call_timeout(ms(10))
        .breaker(Some(BreakerConfig {
            failure_threshold: 1,
            open_for: secs(1),
            half_open_probes: 1,
        }))
        .build()
        .await
        .unwrap();
    let e = pool.call_raw(CallRequest::new("sleep", 1_000)).await.unwrap_err();
    println!("fault: {e}");
    let e = pool.call_value("echo", 1.into()).await.unwrap_err();
    assert!(matches!(e, PoolError::CircuitOpen { .. }), "{e}");
    tokio::time::sleep(secs(2)).await;
    let lease = pool.checkout_with(Checkout::Shared).await.unwrap();
    tokio::time::sleep(secs(60)).await;
    let r = pool.call_value("echo", 1.into()).await;
    println!("60 s later, with an idle lease: {r:?}");
    assert!(r.is_ok(), "{r:?}");
    drop(lease);
}

/// A worker that dies while its replacement is starting (recycle) is never
/// reported as crashed: a call queued for it waits out the checkout time-out
/// instead of failing at once with WorkerGone.
#[tokio::test(start_paused = true)]
async fn worker_dying_during_recycle_fails_its_targeted_waiters_at_once() {
    let l = launcher().launch_delay(secs(2));
    let pool = builder(&l)
        .workers(1)
        .max_lifetime(secs(10), 0.0)
        .build()
        .await
        .unwrap();
    assert!(pool.pin(WorkerId(0))); // a bound session
    tokio::time::sleep(ms(10_500)).await; // replacement launching (2 s)
    let running = tokio::spawn({
        let pool = pool.clone();
        async move {
            pool.call_on(WorkerId(0), CallRequest::new("sleep", 5_000), Wait::Queue)
                .await
        }
    });
    settle().await;
    let queued = tokio::spawn({
        let pool = pool.clone();
        async move {
            let t0 = Instant::now();
            let r = pool
                .call_on(WorkerId(0), CallRequest::new("echo", 1), Wait::Queue)
                .await;
            (r, t0.elapsed())
        }
    });
    settle().await;
    l.worker(WorkerId(0)).unwrap().crash();
    println!("running: {:?}", running.await.unwrap());
    let (r, took) = queued.await.unwrap();
    println!(
        "queued: {r:?} after {took:?}; status: {:?}",
        pool.status()
            .workers
            .iter()
            .map(|w| (w.id, w.state))
            .collect::<Vec<_>>()
    );
    assert!(matches!(r, Err(PoolError::WorkerGone { .. })), "{r:?}");
    assert!(took < secs(1));
}

/// A blocked exclusive waiter at the head that gives up leaves the shared
/// waiters behind it queued although slots are free: nothing re-dispatches.
#[tokio::test(start_paused = true)]
async fn removing_a_blocked_head_waiter_serves_those_behind_it() {
    let l = launcher().max_concurrency(4);
    let pool = builder(&l).workers(1).build().await.unwrap();
    let long = tokio::spawn({
        let pool = pool.clone();
        async move { pool.call_value("sleep", 60_000u64.into()).await }
    });
    settle().await;
    let excl = tokio::spawn({
        let pool = pool.clone();
        async move { pool.checkout_with(Checkout::Exclusive).await.map(|_| ()) }
    });
    settle().await;
    let t0 = Instant::now();
    let shared = tokio::spawn({
        let pool = pool.clone();
        async move {
            let r = pool.call_value("echo", 1u64.into()).await;
            (r, t0.elapsed())
        }
    });
    settle().await;
    assert_eq!(pool.status().queue_depth, 2);
    excl.abort(); // the exclusive caller gives up
    settle().await;
    let (r, took) = shared.await.unwrap();
    println!("shared call behind a cancelled exclusive waiter: {r:?} after {took:?}");
    assert!(r.is_ok() && took == ms(0), "{r:?} after {took:?}");
    long.abort();
}

#[tokio::test(start_paused = true)]
async fn huge_durations_do_not_panic() {
    // `Duration::MAX` means "never": no setting may overflow a deadline, in
    // a caller's task or in a supervisor (which would leave its slot
    // unsupervised: a crash never restarted).
    let l = launcher();
    let pool = builder(&l)
        .workers(1)
        .checkout_timeout(Duration::MAX)
        .max_lifetime(Duration::MAX, 0.5)
        .heartbeat(Some(Heartbeat {
            interval: Duration::MAX,
            ..Heartbeat::default()
        }))
        .restart_backoff(Backoff {
            base: ms(100),
            cap: Duration::MAX,
            jitter: 0.5,
            reset_after: Duration::MAX,
        })
        .build()
        .await
        .unwrap();
    let hold = tokio::spawn({
        let pool = pool.clone();
        async move { pool.call_value("sleep", 1_000u64.into()).await }
    });
    settle().await;
    let queued = tokio::spawn({
        let pool = pool.clone();
        async move { pool.call_value("echo", 1u64.into()).await }
    });
    hold.await.unwrap().unwrap();
    assert_eq!(queued.await.unwrap().unwrap(), portpool_transport::Value::from(1));
    // The supervisor is alive: a crash is restarted.
    l.worker(WorkerId(0)).unwrap().crash();
    wait_status(&pool, |s| s.ready == 1 && s.workers[0].id == Some(WorkerId(1))).await;
    let shutdown = tokio::spawn({
        let pool = pool.clone();
        async move { pool.shutdown(Duration::MAX).await }
    });
    shutdown.await.expect("shutdown(Duration::MAX) does not panic");
    assert!(!l.worker(WorkerId(1)).unwrap().is_alive());
}
