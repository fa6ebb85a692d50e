//! Who gets a slot, and when: the least-loaded worker, concurrency caps,
//! the FIFO queue and its bound, the checkout deadline, exclusive waiters
//! (neither starved nor blocking unrelated callers), and scaling up for
//! queued callers. Fake workers and paused time.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use portpool_pool::{Checkout, PoolError, Wait};
use portpool_transport::{CallRequest, Value, WorkerId};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn calls_go_to_the_least_loaded_worker_and_respect_concurrency() {
    let l = launcher().max_concurrency(2);
    let pool = fake_pool(&l, 2).await.unwrap();
    let tasks: Vec<_> = (0..4).map(|_| spawn_call::<u64>(&pool, "sleep", 1_000)).collect();
    settle().await;
    let st = pool.status();
    assert_eq!(st.workers.iter().map(|w| w.held).collect::<Vec<_>>(), [2, 2]);
    assert_eq!(st.queue_depth, 0);
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    for w in l.workers() {
        assert_eq!(w.peak_in_flight(), 2);
    }
    // The configured concurrency caps the hello's.
    let pool1 = fake_pool_builder(&l)
        .workers(1)
        .worker_concurrency(1)
        .build()
        .await
        .unwrap();
    assert_eq!(pool1.status().workers[0].capacity, 1);
    pool.shutdown(secs(1)).await;
    pool1.shutdown(secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn full_queue_fails_at_once_and_waiters_are_served_fifo() {
    let l = launcher();
    let pool = fake_pool_builder(&l)
        .workers(1)
        .max_queue(3)
        .build()
        .await
        .unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..4u64 {
        let order = order.clone();
        tasks.push(spawn_with(&pool, move |pool| async move {
            let r = pool.call::<_, u64>("sleep", &100).await;
            order.lock().unwrap().push(i);
            r
        }));
        settle().await;
    }
    assert_eq!(pool.status().queue_depth, 3);
    let t0 = Instant::now();
    let err = pool.call::<_, u64>("echo", &1).await.unwrap_err();
    assert!(matches!(err, PoolError::QueueFull { max: 3, .. }), "{err}");
    assert_eq!(t0.elapsed(), Duration::ZERO);
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3]);
    pool.shutdown(secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn checkout_deadline_gives_timeout() {
    let l = launcher();
    let pool = fake_pool_builder(&l)
        .workers(1)
        .checkout_timeout(ms(500))
        .build()
        .await
        .unwrap();
    let lease = pool.checkout().await.unwrap();
    let t0 = Instant::now();
    let err = pool.call::<_, u32>("echo", &1).await.unwrap_err();
    assert!(
        matches!(err, PoolError::Timeout { waited, .. } if waited == ms(500)),
        "{err}"
    );
    assert_eq!(t0.elapsed(), ms(500));
    assert_eq!(
        pool.status().queue_depth,
        0,
        "a timed-out waiter leaves the queue"
    );
    drop(lease);
    assert_eq!(pool.call::<_, u32>("echo", &1).await.unwrap(), 1);
    pool.shutdown(secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn exclusive_waiter_is_not_starved_by_shared_callers() {
    let l = launcher().max_concurrency(2);
    let pool = fake_pool(&l, 1).await.unwrap();
    let first = spawn_call::<u64>(&pool, "sleep", 100);
    settle().await;
    let exclusive = spawn_with(&pool, |pool| async move {
        pool.checkout().await.map(|l| l.worker_id())
    });
    settle().await;
    // A shared caller arriving later queues behind the exclusive one.
    let later = spawn_call::<u32>(&pool, "echo", 1);
    settle().await;
    assert_eq!(pool.status().queue_depth, 2);
    first.await.unwrap().unwrap();
    exclusive.await.unwrap().unwrap();
    later.await.unwrap().unwrap();
    pool.shutdown(secs(1)).await;
}

/// Regression (found by review): a blocked exclusive waiter at the head
/// that gives up left the shared waiters behind it queued although slots
/// were free: nothing re-dispatched.
#[tokio::test(start_paused = true)]
async fn removing_a_blocked_head_waiter_serves_those_behind_it() {
    let l = launcher().max_concurrency(4);
    let pool = fake_pool(&l, 1).await.unwrap();
    let long = spawn_call::<Value>(&pool, "sleep", 60_000u64);
    settle().await;
    let excl = spawn_with(&pool, |pool| async move {
        pool.checkout_with(Checkout::Exclusive).await.map(|_| ())
    });
    settle().await;
    let t0 = Instant::now();
    let shared = spawn_with(&pool, |pool| async move {
        let r = pool.call_value("echo", 1u64.into()).await;
        (r, t0.elapsed())
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

/// Regression (found by review): a targeted call was blocked by an
/// unrelated untargeted waiter. Now an exclusive waiter reserves one worker
/// (the least loaded); calls for the other workers go ahead at once, calls
/// for the reserved one queue behind it.
#[tokio::test(start_paused = true)]
async fn targeted_call_not_blocked_by_unrelated_exclusive_waiter() {
    let l = launcher().max_concurrency(2);
    let pool = fake_pool(&l, 2).await.unwrap();
    for w in 0..2 {
        spawn_with(&pool, |pool| async move {
            pool.affinity()
                .call(WorkerId(w), CallRequest::new("sleep", 1_000), Wait::Queue)
                .await
        });
    }
    settle().await;
    // An exclusive checkout queues: no worker is idle. It reserves worker 0.
    let lease = spawn_with(&pool, |pool| async move {
        let lease = pool.checkout_with(Checkout::Exclusive).await.unwrap();
        let id = lease.worker_id();
        tokio::time::sleep(secs(60)).await;
        drop(lease);
        id
    });
    settle().await;
    assert_eq!(pool.status().queue_depth, 1);
    // Worker 1 has a free slot and is not reserved: served at once.
    let t0 = Instant::now();
    let ff = pool
        .affinity()
        .call(WorkerId(1), CallRequest::new("echo", 1), Wait::FailFast)
        .await;
    assert!(ff.is_ok(), "fail-fast: {ff:?}");
    let q = pool
        .affinity()
        .call(WorkerId(1), CallRequest::new("echo", 2), Wait::Queue)
        .await;
    assert!(q.is_ok(), "queued: {q:?}");
    assert_eq!(t0.elapsed(), ms(0), "waited {:?} for a free slot", t0.elapsed());
    // Worker 0 is reserved for the exclusive waiter: a session call for it
    // waits rather than starve the checkout.
    let err = pool
        .affinity()
        .call(WorkerId(0), CallRequest::new("echo", 3), Wait::FailFast)
        .await
        .unwrap_err();
    assert!(matches!(err, PoolError::WorkerBusy { .. }), "{err}");
    let behind = spawn_with(&pool, |pool| async move {
        pool.affinity()
            .call(WorkerId(0), CallRequest::new("echo", 4), Wait::Queue)
            .await
    });
    tokio::time::sleep(ms(1_001)).await;
    assert!(!behind.is_finished(), "queued behind the exclusive lease");
    lease.abort();
    let r = behind.await.unwrap();
    assert!(r.is_ok(), "{r:?}");
}

#[tokio::test(start_paused = true)]
async fn scales_up_to_max_when_callers_queue_and_back_down_when_idle() {
    let l = launcher();
    let pool = fake_pool_builder(&l)
        .size(1, 3)
        .idle_timeout(secs(30))
        .build()
        .await
        .unwrap();
    let tasks: Vec<_> = (0..3).map(|_| spawn_call::<u64>(&pool, "sleep", 1_000)).collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(l.launches(), 3);
    assert_eq!(pool.status().ready, 3);
    wait_status(&pool, |s| s.size == 1 && s.workers.len() == 1).await;
    assert_eq!(l.live_workers().len(), 1);
    pool.shutdown(secs(1)).await;
}
