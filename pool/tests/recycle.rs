//! Recycling healthy workers (max requests, max lifetime, max RSS): make
//! before break, the old worker drains its calls, and one dying during the
//! recycle fails its targeted waiters at once. Fake workers and paused
//! time.

mod common;

use common::*;
use portpool_pool::{Heartbeat, PoolError, Wait, WorkerState};
use portpool_testkit::{FakeEvent, WorkerScript};
use portpool_transport::{CallRequest, WorkerId};
use tokio::time::Instant;

/// Index of the first event matching `pred`.
fn position(events: &[portpool_testkit::Recorded<FakeEvent>], pred: impl Fn(&FakeEvent) -> bool) -> usize {
    events
        .iter()
        .position(|e| pred(&e.event))
        .expect("event not found")
}

#[tokio::test(start_paused = true)]
async fn max_requests_recycles_make_before_break() {
    let l = launcher().launch_delay(secs(1));
    let pool = fake_pool_builder(&l)
        .workers(1)
        .max_requests(3)
        .build()
        .await
        .unwrap();
    // A long call is running on worker 0 when it reaches its limit.
    for i in 0..2u32 {
        pool.call::<_, u32>("echo", &i).await.unwrap();
    }
    let long = spawn_call::<u64>(&pool, "sleep", 5_000);
    settle().await;
    // The third call is running when the limit is reached; it ends normally.
    assert_eq!(long.await.unwrap().unwrap(), 5_000);
    // Served calls during the replacement's launch still go to worker 0.
    let v: u32 = pool.call("echo", &9).await.unwrap();
    assert_eq!(v, 9);
    let st = wait_only_worker(&pool, WorkerId(1)).await;
    assert_eq!(st.workers[0].restarts, 1);
    let events = l.events();
    let new_ready = position(
        &events,
        |e| matches!(e, FakeEvent::Launched { worker } if *worker == WorkerId(1)),
    );
    let old_stop = position(
        &events,
        |e| matches!(e, FakeEvent::ShutdownRequested { worker, .. } if *worker == WorkerId(0)),
    );
    assert!(
        new_ready < old_stop,
        "the replacement was ready before the old worker stopped"
    );
    pool.shutdown(secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn recycled_worker_finishes_its_calls_before_stopping() {
    let l = launcher().max_concurrency(2);
    let pool = fake_pool_builder(&l)
        .workers(1)
        .max_requests(1)
        .build()
        .await
        .unwrap();
    let long = spawn_call::<u64>(&pool, "sleep", 3_000);
    settle().await;
    pool.call::<_, u32>("echo", &1).await.unwrap(); // reaches the limit
    wait_status(&pool, |s| s.count(WorkerState::Draining) == 1 && s.ready == 1).await;
    assert!(l.worker(WorkerId(0)).unwrap().is_alive(), "draining, not killed");
    assert_eq!(long.await.unwrap().unwrap(), 3_000, "the in-flight call finished");
    wait_only_worker(&pool, WorkerId(1)).await;
    assert!(!l.worker(WorkerId(0)).unwrap().is_alive());
    pool.shutdown(secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn max_lifetime_and_max_rss_recycle() {
    let l = launcher();
    let pool = fake_pool_builder(&l)
        .workers(1)
        .max_lifetime(secs(60), 0.0)
        .build()
        .await
        .unwrap();
    tokio::time::sleep(secs(59)).await;
    assert_eq!(l.launches(), 1);
    let st = wait_status(&pool, |s| s.workers.iter().any(|w| w.id == Some(WorkerId(1)))).await;
    assert_eq!(
        st.workers
            .iter()
            .find(|w| w.id == Some(WorkerId(1)))
            .unwrap()
            .restarts,
        1
    );
    pool.shutdown(secs(1)).await;

    let l = launcher().script(|n| WorkerScript::default().rss(if n == 0 { 900 << 20 } else { 100 << 20 }));
    let pool = fake_pool_builder(&l)
        .workers(1)
        .max_rss_bytes(512 << 20)
        .heartbeat(Some(Heartbeat {
            interval: secs(1),
            ..Heartbeat::default()
        }))
        .build()
        .await
        .unwrap();
    assert_eq!(pool.status().workers[0].rss_bytes, Some(900 << 20));
    let st = wait_only_worker(&pool, WorkerId(1)).await;
    assert_eq!(st.workers[0].rss_bytes, Some(100 << 20));
    tokio::time::sleep(secs(10)).await;
    assert_eq!(l.launches(), 2, "the small replacement is kept");
    pool.shutdown(secs(1)).await;
}

/// Regression (found by review): a worker that died while its replacement
/// was starting (recycle) was never reported as crashed: a call queued for
/// it waited out the checkout time-out instead of failing at once with
/// WorkerGone.
#[tokio::test(start_paused = true)]
async fn worker_dying_during_recycle_fails_its_targeted_waiters_at_once() {
    let l = launcher().launch_delay(secs(2));
    let pool = fake_pool_builder(&l)
        .workers(1)
        .max_lifetime(secs(10), 0.0)
        .build()
        .await
        .unwrap();
    assert!(pool.affinity().pin(WorkerId(0))); // a bound session
    tokio::time::sleep(ms(10_500)).await; // replacement launching (2 s)
    let running = spawn_with(&pool, |pool| async move {
        pool.affinity()
            .call(WorkerId(0), CallRequest::new("sleep", 5_000), Wait::Queue)
            .await
    });
    settle().await;
    let queued = spawn_with(&pool, |pool| async move {
        let t0 = Instant::now();
        let r = pool
            .affinity()
            .call(WorkerId(0), CallRequest::new("echo", 1), Wait::Queue)
            .await;
        (r, t0.elapsed())
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
