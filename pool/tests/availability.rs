//! Readiness and failing fast: when callers wait for a worker to be ready
//! (`wait_for_ready`, a starting or crash-looping worker) and when they are
//! told at once that the pool is `Unavailable` (every start failing, only a
//! draining worker left). Fake workers and paused time. The draining and
//! crash-looping cases are edges a cargo-mutants run found untested.

mod common;

use std::time::Duration;

use common::*;
use portpool_pool::{PoolError, StartMode, WorkerState};
use portpool_testkit::WorkerScript;
use portpool_transport::{CallError, CallRequest, WorkerId};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn every_start_failing_gives_unavailable_at_once() {
    // The first worker starts, then crashes; every relaunch fails.
    let l = launcher().script(|n| match n {
        0 => WorkerScript::default().crash_after_calls(1),
        _ => WorkerScript::default()
            .exit_during_init(1)
            .stderr_tail("RuntimeError: no GPU"),
    });
    let pool = fake_pool_builder(&l)
        .workers(1)
        .checkout_timeout(secs(30))
        .build()
        .await
        .unwrap();
    pool.call::<_, u32>("echo", &1).await.unwrap();
    let err = pool.call::<_, u32>("echo", &2).await.unwrap_err();
    assert!(
        matches!(err, PoolError::Call(CallError::WorkerCrashed { .. })),
        "{err}"
    );
    // A caller queued while the relaunch is in progress is failed as soon
    // as it fails, not after the 30 s checkout time-out.
    let t0 = Instant::now();
    let err = pool.call::<_, u32>("echo", &3).await.unwrap_err();
    assert!(t0.elapsed() < secs(1), "{:?}", t0.elapsed());
    match &err {
        PoolError::Unavailable {
            last_error,
            crash_loop: false,
            ..
        } => {
            assert!(last_error.to_string().contains("RuntimeError: no GPU"), "{err}")
        }
        other => panic!("expected Unavailable, got {other}"),
    }
    // New callers fail at once too.
    let t0 = Instant::now();
    assert!(matches!(
        pool.call::<_, u32>("echo", &4).await,
        Err(PoolError::Unavailable { .. })
    ));
    assert_eq!(t0.elapsed(), Duration::ZERO);
    pool.shutdown(secs(1)).await;
}

/// `wait_for_ready` waits while the only worker is still starting (false
/// at its time-out), and returns true as soon as one is ready, not at its
/// time-out.
#[tokio::test(start_paused = true)]
async fn wait_for_ready_waits_for_a_starting_worker_and_returns_once_it_is_ready() {
    let l = launcher().launch_delay(secs(2));
    let pool = fake_pool_builder(&l)
        .workers(1)
        .start_mode(StartMode::Lazy)
        .build()
        .await
        .unwrap();
    assert!(pool.affinity().ready_workers().is_empty());
    // Still starting after 1 s: not ready.
    assert!(!pool.affinity().wait_for_ready(secs(1)).await);
    // Waits (through the second second of the launch) and is true once the
    // worker is ready: long before the hour is up.
    let ready = tokio::time::timeout(secs(60), pool.affinity().wait_for_ready(secs(3600)))
        .await
        .expect("wait_for_ready returns once a worker is ready, not at its time-out");
    assert!(ready, "{:#?}", pool.status());
    assert_eq!(pool.affinity().ready_workers(), [WorkerId(0)]);
    // Already ready: true at once.
    let t0 = Instant::now();
    assert!(pool.affinity().wait_for_ready(secs(3600)).await);
    assert_eq!(t0.elapsed(), std::time::Duration::ZERO);
    pool.shutdown(secs(1)).await;
}

/// A one-slot pool whose worker 0 is pinned and recycled (max_requests 1):
/// its replacement, worker 1, is ready and worker 0 drains, held by the pin
/// for up to an hour. Then worker 1 crashes: the only worker left is the
/// draining worker 0, which takes no new untargeted work. Launches from the
/// third on follow `later`.
async fn only_a_draining_worker_left(
    later: WorkerScript,
) -> (portpool_testkit::FakeLauncher, portpool_pool::Pool) {
    let l = launcher().script(move |n| match n {
        0 | 1 => WorkerScript::default(),
        _ => later.clone(),
    });
    let pool = fake_pool_builder(&l)
        .workers(1)
        .max_requests(1)
        .drain_timeout(secs(3600))
        .build()
        .await
        .unwrap();
    assert!(pool.affinity().pin(WorkerId(0)));
    assert_eq!(pool.call::<_, u32>("echo", &1).await.unwrap(), 1);
    let st = wait_status(&pool, |s| {
        s.ready == 1 && s.workers.iter().any(|w| w.state == WorkerState::Draining)
    })
    .await;
    assert_eq!(pool.affinity().ready_workers(), [WorkerId(1)], "{st:#?}");
    l.worker(WorkerId(1)).unwrap().crash();
    let st = wait_status(&pool, |s| s.ready == 0).await;
    assert!(
        pool.affinity().is_serving(WorkerId(0)),
        "the pinned worker still drains: {st:#?}"
    );
    assert!(pool.affinity().ready_workers().is_empty());
    (l, pool)
}

/// A draining worker is not ready: `wait_for_ready` keeps waiting until the
/// replacement of the crashed worker is, then returns true.
#[tokio::test(start_paused = true)]
async fn wait_for_ready_does_not_count_a_draining_worker() {
    let (_l, pool) = only_a_draining_worker_left(WorkerScript::default().launch_delay(secs(5))).await;
    let ready = tokio::time::timeout(secs(60), pool.affinity().wait_for_ready(secs(3600)))
        .await
        .expect("wait_for_ready returns once the replacement is ready");
    assert!(ready, "{:#?}", pool.status());
    assert_eq!(pool.affinity().ready_workers(), [WorkerId(2)]);
    pool.affinity().unpin(WorkerId(0));
    pool.shutdown(secs(1)).await;
}

/// Every start fails and the only worker left is draining: callers fail
/// fast with the last startup error (not after the checkout time-out),
/// while calls for the draining worker itself are still served.
#[tokio::test(start_paused = true)]
async fn a_draining_worker_does_not_stop_fail_fast_when_every_start_fails() {
    let (_l, pool) =
        only_a_draining_worker_left(WorkerScript::default().fail_launch("no licence server")).await;
    let t0 = Instant::now();
    let err = pool.call::<_, u32>("echo", &2).await.unwrap_err();
    match &err {
        PoolError::Unavailable {
            last_error,
            crash_loop: false,
            ..
        } => assert!(last_error.to_string().contains("no licence server"), "{err}"),
        other => panic!("expected Unavailable, got {other}"),
    }
    assert!(t0.elapsed() < secs(1), "{:?}", t0.elapsed());
    // New callers too, at once.
    let t0 = Instant::now();
    assert!(matches!(
        pool.call::<_, u32>("echo", &3).await,
        Err(PoolError::Unavailable { .. })
    ));
    assert_eq!(t0.elapsed(), std::time::Duration::ZERO);
    // The draining worker still serves its own (session) calls.
    let v = pool
        .affinity()
        .call(
            WorkerId(0),
            CallRequest::new("echo", 4),
            portpool_pool::Wait::Queue,
        )
        .await
        .unwrap();
    assert_eq!(v, 4.into());
    pool.affinity().unpin(WorkerId(0));
    pool.shutdown(secs(1)).await;
}

/// A slot that is crash-looping but whose latest worker is up: while that
/// worker is busy, callers queue for it instead of failing fast as
/// Unavailable, and are served when it frees up.
#[tokio::test(start_paused = true)]
async fn a_live_worker_on_a_crash_looping_slot_is_waited_for_not_unavailable() {
    // The first two workers die 10 ms after they start, the third lives.
    let l = launcher().script(|n| match n {
        0 | 1 => WorkerScript::default().crash_at(ms(10)),
        _ => WorkerScript::default(),
    });
    let pool = fake_pool_builder(&l)
        .workers(1)
        .start_mode(StartMode::Lazy)
        .crash_loop(2, secs(60))
        .build()
        .await
        .unwrap();
    let st = wait_status(&pool, |s| s.ready == 1 && s.crash_loop).await;
    assert_eq!(st.workers[0].id, Some(WorkerId(2)), "{st:#?}");
    assert!(st.workers[0].crash_loop, "{st:#?}");
    let lease = pool.checkout().await.unwrap();
    let waiting = spawn_call::<u32>(&pool, "echo", 7);
    settle().await;
    assert!(!waiting.is_finished(), "{:?}", waiting.await);
    assert_eq!(pool.status().queue_depth, 1);
    drop(lease);
    assert_eq!(waiting.await.unwrap().unwrap(), 7);
    pool.shutdown(secs(1)).await;
}
