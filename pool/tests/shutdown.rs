//! Stopping a pool: `shutdown` drains running calls within its grace and
//! refuses queued and new callers; dropping the last handle stops the
//! workers. Fake workers and paused time (real processes:
//! `process_drop.rs`).

mod common;

use common::*;
use portpool_pool::PoolError;
use portpool_transport::CallError;
use tokio::time::Instant;

/// A pool of one fake worker, running a `sleep` call of `ms` (started).
async fn one_worker_running_a_call(
    ms: u64,
) -> (
    portpool_testkit::FakeLauncher,
    portpool_pool::Pool,
    tokio::task::JoinHandle<Result<u64, PoolError>>,
) {
    let l = launcher();
    let pool = fake_pool(&l, 1).await.unwrap();
    let running = spawn_call::<u64>(&pool, "sleep", ms);
    settle().await;
    (l, pool, running)
}

#[tokio::test(start_paused = true)]
async fn closed_pool_fails_queued_and_new_callers() {
    let (l, pool, running) = one_worker_running_a_call(1_000).await;
    let queued = spawn_call::<u32>(&pool, "echo", 1);
    settle().await;
    let t0 = Instant::now();
    pool.shutdown(secs(5)).await;
    // The running call drained; the queued one was refused.
    assert_eq!(running.await.unwrap().unwrap(), 1_000);
    assert!(matches!(queued.await.unwrap(), Err(PoolError::PoolClosed { .. })));
    assert_eq!(
        t0.elapsed(),
        secs(1),
        "shutdown waited for the drain, not the whole grace"
    );
    assert!(matches!(
        pool.call::<_, u32>("echo", &1).await,
        Err(PoolError::PoolClosed { .. })
    ));
    assert!(matches!(pool.checkout().await, Err(PoolError::PoolClosed { .. })));
    let w = &l.workers()[0];
    assert_eq!(w.shutdowns().len(), 1);
    assert!(!w.is_alive());
    assert!(pool.status().closed);
    assert_eq!(pool.status().size, 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_grace_bounds_the_drain() {
    let (_l, pool, running) = one_worker_running_a_call(60_000).await;
    let t0 = Instant::now();
    pool.shutdown(secs(2)).await;
    assert!(t0.elapsed() <= secs(3), "{:?}", t0.elapsed());
    let err = running.await.unwrap().unwrap_err();
    assert!(
        matches!(err, PoolError::Call(CallError::WorkerClosed { .. })),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_stops_the_workers() {
    let l = launcher();
    let pool = fake_pool(&l, 2).await.unwrap();
    drop(pool);
    tokio::time::sleep(secs(10)).await;
    assert!(l.live_workers().is_empty());
}

/// Two `shutdown()`s at once (from two handles): each returns only once
/// the workers are stopped. Before, the second found the first had taken
/// every task to await and returned at once, mid-drain.
#[tokio::test(start_paused = true)]
async fn concurrent_shutdowns_each_wait_for_the_drain() {
    let (l, pool, running) = one_worker_running_a_call(1_000).await;
    let (first, second) = (pool.clone(), pool.clone());
    let t0 = Instant::now();
    let first = tokio::spawn(async move { first.shutdown(secs(5)).await });
    settle().await;
    second.shutdown(secs(5)).await;
    assert_eq!(
        t0.elapsed(),
        secs(1),
        "the second shutdown returned before the drain ended"
    );
    let w = &l.workers()[0];
    assert!(!w.is_alive());
    assert_eq!(running.await.unwrap().unwrap(), 1_000);
    first.await.unwrap();
}

/// A `shutdown()` cut short (a time-out around it) leaves the next one
/// waiting for the drain all the same: the tasks it was awaiting are not
/// lost with it.
#[tokio::test(start_paused = true)]
async fn a_shutdown_cut_short_leaves_the_next_one_waiting_for_the_drain() {
    let (l, pool, running) = one_worker_running_a_call(1_000).await;
    let t0 = Instant::now();
    let cut = tokio::time::timeout(std::time::Duration::from_millis(300), pool.shutdown(secs(5))).await;
    assert!(
        cut.is_err(),
        "the drain takes 1 s, so the first shutdown is cut short"
    );
    pool.shutdown(secs(5)).await;
    assert_eq!(
        t0.elapsed(),
        secs(1),
        "the second shutdown returned before the drain ended"
    );
    assert!(!l.workers()[0].is_alive());
    assert_eq!(running.await.unwrap().unwrap(), 1_000);
}
