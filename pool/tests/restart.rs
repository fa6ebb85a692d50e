//! Replacing crashed workers: exponential backoff between restarts, and
//! crash-loop detection (its window and what callers are told). Fake
//! workers and paused time.

mod common;

use std::time::Duration;

use common::*;
use portpool_pool::PoolError;
use portpool_testkit::WorkerScript;
use portpool_transport::{CallError, WorkerId};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn crashed_worker_is_replaced_with_exponential_backoff() {
    // Every worker crashes on its first call.
    let l = launcher().script(|_| WorkerScript::default().crash_after_calls(0));
    let pool = fake_pool_builder(&l)
        .workers(1)
        .crash_loop(100, secs(60))
        .build()
        .await
        .unwrap();
    let mut ready_at = Vec::new();
    for _ in 0..4 {
        wait_status(&pool, |s| s.ready == 1).await;
        ready_at.push(Instant::now());
        let err = pool.call::<_, u32>("echo", &1).await.unwrap_err();
        assert!(
            matches!(&err, PoolError::Call(CallError::WorkerCrashed { .. })),
            "{err}"
        );
        assert!(err.is_worker_fault());
    }
    // Backoff 100 ms, 200 ms, 400 ms (no jitter; status polled every 10 ms).
    let gaps: Vec<Duration> = ready_at.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, expected) in gaps.iter().zip([ms(100), ms(200), ms(400)]) {
        assert!(*gap >= expected && *gap <= expected + ms(20), "gaps {gaps:?}");
    }
    let st = wait_status(&pool, |s| s.ready == 1).await;
    assert_eq!(st.workers[0].restarts, 4);
    assert_eq!(st.workers[0].id, Some(WorkerId(4)), "a replacement gets a new id");
    pool.shutdown(secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn backoff_delay_doubles_up_to_the_cap() {
    let b = portpool_pool::Backoff {
        base: ms(100),
        cap: secs(1),
        jitter: 0.5,
        reset_after: secs(10),
    };
    assert_eq!(b.delay(1), ms(100));
    assert_eq!(b.delay(4), ms(800));
    assert_eq!(b.delay(5), secs(1));
    assert_eq!(b.delay(1000), secs(1));
}

#[tokio::test(start_paused = true)]
async fn crash_loop_is_detected_and_reported() {
    // Every worker dies 10 ms after it starts.
    let l = launcher().script(|_| WorkerScript::default().crash_at(ms(10)));
    let pool = fake_pool_builder(&l)
        .workers(1)
        .crash_loop(3, secs(60))
        .build()
        .await
        .unwrap();
    let st = wait_status(&pool, |s| s.crash_loop).await;
    assert!(st.workers[0].crash_loop);
    assert!(st.workers[0].restarts >= 3);
    // Callers are told at once, with the crash-loop diagnosis.
    let st = wait_status(&pool, |s| s.ready == 0).await;
    assert!(st.crash_loop);
    let err = pool.call::<_, u32>("echo", &1).await.unwrap_err();
    match &err {
        PoolError::Unavailable {
            crash_loop: true,
            last_error,
            ..
        } => {
            assert!(last_error.to_string().contains("crash loop"), "{err}")
        }
        other => panic!("expected Unavailable(crash loop), got {other}"),
    }
    pool.shutdown(secs(1)).await;
}

/// A crash counts for the crash-loop detection for exactly `window`: still
/// at `window - 1 ms`, no longer at `window`. (An edge a cargo-mutants run
/// found untested.)
#[tokio::test(start_paused = true)]
async fn a_crash_counts_for_the_crash_loop_window_and_not_after_it() {
    let l = launcher();
    let pool = fake_pool_builder(&l)
        .workers(1)
        .crash_loop(1, secs(60))
        .build()
        .await
        .unwrap();
    assert!(!pool.status().crash_loop);
    l.worker(WorkerId(0)).unwrap().crash();
    settle().await;
    let t0 = Instant::now();
    let st = pool.status();
    assert!(st.crash_loop, "{st:#?}");
    assert_eq!(st.workers[0].restarts, 1, "{st:#?}");
    tokio::time::sleep_until(t0 + secs(60) - ms(1)).await;
    assert!(pool.status().crash_loop, "{:#?}", pool.status());
    tokio::time::sleep_until(t0 + secs(60)).await;
    assert_eq!(Instant::now(), t0 + secs(60));
    let st = pool.status();
    assert!(!st.crash_loop, "{st:#?}");
    assert!(!st.workers[0].crash_loop, "{st:#?}");
    pool.shutdown(secs(1)).await;
}
