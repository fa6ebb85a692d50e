//! Scheduling, lifecycle and error rules of the pool, with fake workers and
//! paused time.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures::StreamExt;
use portpool_pool::{
    BreakerConfig, BreakerState, Checkout, Heartbeat, Pool, PoolConfig, PoolError, StartMode, WorkerState,
};
use portpool_testkit::{remote_error, FakeEvent, WorkerScript};
use portpool_transport::{CallError, CallRequest, Value, WorkerId};
use tokio::time::Instant;

#[tokio::test]
async fn bad_configuration_is_an_error_naming_the_field() {
    let l = launcher();
    type Edit = fn(&mut PoolConfig);
    let cases: Vec<(Edit, &str)> = vec![
        (|c| c.max_workers = 0, "max_workers"),
        (|c| c.min_workers = c.max_workers + 1, "min_workers"),
        (|c| c.worker_concurrency = Some(0), "worker_concurrency"),
        (|c| c.startup_concurrency = 0, "startup_concurrency"),
        (|c| c.checkout_timeout = Duration::ZERO, "checkout_timeout"),
        (|c| c.name = " ".into(), "name"),
        (|c| c.restart.cap = Duration::ZERO, "restart.cap"),
        (|c| c.recycle.max_requests = Some(0), "recycle.max_requests"),
    ];
    for (edit, field) in cases {
        let mut config = PoolConfig::default();
        edit(&mut config);
        let err = Pool::builder(l.clone()).config(config).build().await.unwrap_err();
        match err {
            PoolError::Config { field: f, .. } => assert_eq!(f, field),
            other => panic!("expected Config error for {field}, got {other}"),
        }
    }
    let err = builder(&l).max_lifetime(secs(1), 1.5).build().await.unwrap_err();
    assert!(err.to_string().contains("recycle.lifetime_jitter"), "{err}");
    let err = builder(&l)
        .breaker(Some(BreakerConfig {
            failure_threshold: 0,
            ..BreakerConfig::default()
        }))
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("breaker.failure_threshold"), "{err}");
    let err = builder(&l)
        .heartbeat(Some(Heartbeat {
            max_misses: 0,
            ..Heartbeat::default()
        }))
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("heartbeat.max_misses"), "{err}");
    assert_eq!(l.launches(), 0, "nothing is launched for a bad configuration");
}

#[tokio::test(start_paused = true)]
async fn eager_start_is_parallel_and_bounded() {
    let l = launcher().launch_delay(secs(1));
    let t0 = Instant::now();
    let pool = builder(&l)
        .workers(8)
        .startup_concurrency(4)
        .build()
        .await
        .unwrap();
    // 8 launches of 1 s, 4 at a time: 2 s, not 8 s and not 1 s.
    assert_eq!(t0.elapsed(), secs(2));
    assert_eq!(pool.status().ready, 8);
    assert_eq!(l.launches(), 8);
    pool.shutdown(secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn build_fails_with_every_workers_diagnosis() {
    let l = launcher().script(|n| {
        WorkerScript::default()
            .exit_during_init(3)
            .stderr_tail(format!("ImportError: no module named foo ({n})"))
    });
    let err = builder(&l).workers(3).build().await.unwrap_err();
    let PoolError::Build { errors, .. } = &err else {
        panic!("expected Build, got {err}");
    };
    assert_eq!(errors.len(), 3);
    for e in errors {
        assert!(e.stderr_tail().contains("ImportError"), "{e}");
    }
    let text = err.to_string();
    assert!(
        text.contains("exit code 3") && text.contains("ImportError"),
        "{text}"
    );
    // Nothing keeps running after a failed build.
    settle().await;
    tokio::time::sleep(secs(5)).await;
    assert_eq!(l.launches(), 3, "no retries after a failed build");
}

#[tokio::test(start_paused = true)]
async fn build_succeeds_degraded_and_the_failed_worker_is_retried() {
    let l = launcher().script(|n| match n {
        0 => WorkerScript::default().fail_launch("flaky"),
        _ => WorkerScript::default(),
    });
    let pool = builder(&l).workers(2).build().await.unwrap();
    assert_eq!(pool.status().ready, 1);
    let st = wait_status(&pool, |s| s.ready == 2).await;
    assert!(st.last_error.as_ref().unwrap().to_string().contains("flaky"));
    pool.shutdown(secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn lazy_start_serves_the_first_caller_when_ready_without_timing_out() {
    let l = launcher().launch_delay(secs(10));
    let t0 = Instant::now();
    let pool = builder(&l)
        .workers(1)
        .start_mode(StartMode::Lazy)
        .checkout_timeout(secs(1))
        .build()
        .await
        .unwrap();
    assert_eq!(t0.elapsed(), Duration::ZERO, "lazy build returns at once");
    let v: u32 = pool.call("echo", &7).await.unwrap();
    assert_eq!(v, 7);
    assert_eq!(t0.elapsed(), secs(10), "served the moment the worker was ready");
    // Once started, the checkout time-out applies again.
    let busy = tokio::spawn({
        let pool = pool.clone();
        async move { pool.call::<_, u64>("sleep", &5_000).await }
    });
    settle().await;
    let err = pool.call::<_, u32>("echo", &1).await.unwrap_err();
    assert!(
        matches!(err, PoolError::Timeout { waited, .. } if waited == secs(1)),
        "{err}"
    );
    busy.await.unwrap().unwrap();
    pool.shutdown(secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn calls_go_to_the_least_loaded_worker_and_respect_concurrency() {
    let l = launcher().max_concurrency(2);
    let pool = builder(&l).workers(2).build().await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(
            async move { pool.call::<_, u64>("sleep", &1_000).await },
        ));
    }
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
    let pool1 = builder(&l)
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
    let pool = builder(&l).workers(1).max_queue(3).build().await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..4u64 {
        let (pool, order) = (pool.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
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
    let pool = builder(&l)
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
async fn closed_pool_fails_queued_and_new_callers() {
    let l = launcher();
    let pool = builder(&l).workers(1).build().await.unwrap();
    let running = tokio::spawn({
        let pool = pool.clone();
        async move { pool.call::<_, u64>("sleep", &1_000).await }
    });
    settle().await;
    let queued = tokio::spawn({
        let pool = pool.clone();
        async move { pool.call::<_, u32>("echo", &1).await }
    });
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
    let l = launcher();
    let pool = builder(&l).workers(1).build().await.unwrap();
    let running = tokio::spawn({
        let pool = pool.clone();
        async move { pool.call::<_, u64>("sleep", &60_000).await }
    });
    settle().await;
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
async fn every_start_failing_gives_unavailable_at_once() {
    // The first worker starts, then crashes; every relaunch fails.
    let l = launcher().script(|n| match n {
        0 => WorkerScript::default().crash_after_calls(1),
        _ => WorkerScript::default()
            .exit_during_init(1)
            .stderr_tail("RuntimeError: no GPU"),
    });
    let pool = builder(&l)
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

#[tokio::test(start_paused = true)]
async fn exclusive_lease_holds_the_worker_until_dropped() {
    let l = launcher().max_concurrency(4);
    let pool = builder(&l).workers(2).build().await.unwrap();
    let lease = pool.checkout().await.unwrap();
    let leased = lease.worker_id();
    assert_eq!(lease.kind(), Checkout::Exclusive);
    for i in 0..3u32 {
        assert_eq!(lease.call::<_, u32>("echo", &i).await.unwrap(), i);
    }
    assert_eq!(pool.status().count(WorkerState::Leased), 1);
    // Other calls go to the other worker while the lease is held.
    for _ in 0..5 {
        pool.call::<_, u32>("echo", &0).await.unwrap();
    }
    let calls_on_leased = l.worker(leased).unwrap().calls().len();
    assert_eq!(
        calls_on_leased, 3,
        "only the lease's calls reached the leased worker"
    );
    drop(lease);
    assert_eq!(pool.status().count(WorkerState::Leased), 0);
    assert_eq!(held(&pool.status()), 0);

    // A shared-slot lease pins a worker but lets others share it.
    let a = pool.checkout_with(Checkout::Shared).await.unwrap();
    let b = pool.checkout_with(Checkout::Shared).await.unwrap();
    assert_ne!(a.worker_id(), b.worker_id(), "least loaded");
    assert_eq!(held(&pool.status()), 2);
    pool.shutdown(secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn lease_is_returned_on_panic_and_on_cancellation() {
    let l = launcher();
    let pool = builder(&l).workers(1).build().await.unwrap();
    let panicking = tokio::spawn({
        let pool = pool.clone();
        async move {
            let _lease = pool.checkout().await.unwrap();
            panic!("handler bug while holding a lease");
        }
    });
    assert!(panicking.await.unwrap_err().is_panic());
    assert_eq!(held(&pool.status()), 0);

    let cancelled = tokio::spawn({
        let pool = pool.clone();
        async move {
            let lease = pool.checkout().await.unwrap();
            lease.call::<_, u64>("sleep", &10_000).await
        }
    });
    settle().await;
    assert_eq!(held(&pool.status()), 1);
    cancelled.abort();
    let _ = cancelled.await;
    assert_eq!(held(&pool.status()), 0);
    assert_eq!(pool.call::<_, u32>("echo", &5).await.unwrap(), 5);
    // The fake saw the dropped call as cancelled.
    assert!(l.workers()[0].cancelled().iter().any(|c| c.method == "sleep"));
    pool.shutdown(secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn exclusive_waiter_is_not_starved_by_shared_callers() {
    let l = launcher().max_concurrency(2);
    let pool = builder(&l).workers(1).build().await.unwrap();
    let first = tokio::spawn({
        let pool = pool.clone();
        async move { pool.call::<_, u64>("sleep", &100).await }
    });
    settle().await;
    let exclusive = tokio::spawn({
        let pool = pool.clone();
        async move { pool.checkout().await.map(|l| l.worker_id()) }
    });
    settle().await;
    // A shared caller arriving later queues behind the exclusive one.
    let later = tokio::spawn({
        let pool = pool.clone();
        async move { pool.call::<_, u32>("echo", &1).await }
    });
    settle().await;
    assert_eq!(pool.status().queue_depth, 2);
    first.await.unwrap().unwrap();
    exclusive.await.unwrap().unwrap();
    later.await.unwrap().unwrap();
    pool.shutdown(secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn crashed_worker_is_replaced_with_exponential_backoff() {
    // Every worker crashes on its first call.
    let l = launcher().script(|_| WorkerScript::default().crash_after_calls(0));
    let pool = builder(&l)
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
    let pool = builder(&l)
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

/// An idle worker that misses its pings (with no CPU progress: the fake's
/// CPU time is unknown) is killed as frozen and replaced.
#[tokio::test(start_paused = true)]
async fn idle_workers_are_pinged_and_missed_pings_replace_them() {
    let l = launcher().script(|n| match n {
        0 => WorkerScript::default().ignore_pings(),
        _ => WorkerScript::default(),
    });
    let pool = builder(&l)
        .workers(1)
        .heartbeat(Some(Heartbeat {
            interval: secs(1),
            timeout: ms(200),
            max_misses: 2,
        }))
        .build()
        .await
        .unwrap();
    let st = wait_status(&pool, |s| {
        s.workers
            .iter()
            .any(|w| w.id == Some(WorkerId(1)) && w.state == WorkerState::Ready)
    })
    .await;
    assert!(
        st.workers.iter().all(|w| w.id != Some(WorkerId(0))),
        "the hung worker is gone"
    );
    let old = l.worker(WorkerId(0)).unwrap();
    assert!(old.pings() >= 2);
    assert!(old.crashed(), "killed as unresponsive");
    // The healthy replacement is pinged and kept.
    tokio::time::sleep(secs(5)).await;
    let new = l.worker(WorkerId(1)).unwrap();
    assert!(new.pings() >= 4);
    assert!(new.is_alive());
    assert_eq!(l.launches(), 2);
    pool.shutdown(secs(1)).await;
}

/// Busy workers are pinged too (here: held by an idle lease); one that
/// misses its pings without CPU progress is killed even while leased.
#[tokio::test(start_paused = true)]
async fn busy_workers_are_pinged_too() {
    let l = launcher().script(|n| match n {
        0 => WorkerScript::default().ignore_pings(),
        _ => WorkerScript::default(),
    });
    let pool = builder(&l)
        .workers(1)
        .heartbeat(Some(Heartbeat {
            interval: secs(1),
            timeout: ms(100),
            max_misses: 1,
        }))
        .build()
        .await
        .unwrap();
    let lease = pool.checkout().await.unwrap();
    tokio::time::sleep(secs(10)).await;
    assert!(l.workers()[0].pings() >= 1);
    assert!(!lease.is_alive(), "the leased worker was frozen: killed");
    assert_eq!(l.launches(), 2);
    drop(lease);
    wait_only_worker(&pool, WorkerId(1)).await;
    pool.shutdown(secs(1)).await;
}

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
    let pool = builder(&l).workers(1).max_requests(3).build().await.unwrap();
    // A long call is running on worker 0 when it reaches its limit.
    for i in 0..2u32 {
        pool.call::<_, u32>("echo", &i).await.unwrap();
    }
    let long = tokio::spawn({
        let pool = pool.clone();
        async move { pool.call::<_, u64>("sleep", &5_000).await }
    });
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
    let pool = builder(&l).workers(1).max_requests(1).build().await.unwrap();
    let long = tokio::spawn({
        let pool = pool.clone();
        async move { pool.call::<_, u64>("sleep", &3_000).await }
    });
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
    let pool = builder(&l)
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
    let pool = builder(&l)
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

#[tokio::test(start_paused = true)]
async fn breaker_opens_on_worker_faults_not_on_handler_errors() {
    let l = launcher()
        .handler("raise", |_| Err(remote_error("ValueError", "bad input")))
        .async_handler("hang", |_| std::future::pending());
    let pool = builder(&l)
        .workers(1)
        .call_timeout(secs(1))
        .breaker(Some(BreakerConfig {
            failure_threshold: 3,
            open_for: secs(10),
            half_open_probes: 1,
        }))
        .build()
        .await
        .unwrap();
    for _ in 0..10 {
        let err = pool.call::<_, u32>("raise", &()).await.unwrap_err();
        assert!(matches!(err, PoolError::Call(CallError::Remote { .. })), "{err}");
    }
    assert_eq!(pool.status().breaker, BreakerState::Closed);
    for _ in 0..3 {
        let err = pool.call::<_, u32>("hang", &()).await.unwrap_err();
        assert!(matches!(err, PoolError::Call(CallError::Timeout { .. })), "{err}");
    }
    assert_eq!(pool.status().breaker, BreakerState::Open);
    let err = pool.call::<_, u32>("echo", &1).await.unwrap_err();
    assert!(
        matches!(err, PoolError::CircuitOpen { retry_after, .. } if retry_after == secs(10)),
        "{err}"
    );
    tokio::time::sleep(secs(10)).await;
    assert_eq!(pool.status().breaker, BreakerState::HalfOpen);
    // A failed probe reopens it.
    assert!(pool
        .call::<_, u32>("hang", &())
        .await
        .unwrap_err()
        .is_worker_fault());
    assert_eq!(pool.status().breaker, BreakerState::Open);
    tokio::time::sleep(secs(10)).await;
    // While a probe is in flight, other callers are refused.
    let probe = tokio::spawn({
        let pool = pool.clone();
        async move { pool.call::<_, u64>("sleep", &500).await }
    });
    settle().await;
    assert!(matches!(
        pool.call::<_, u32>("echo", &1).await,
        Err(PoolError::CircuitOpen { .. })
    ));
    probe.await.unwrap().unwrap();
    assert_eq!(pool.status().breaker, BreakerState::Closed);
    assert_eq!(pool.call::<_, u32>("echo", &1).await.unwrap(), 1);
    pool.shutdown(secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn streams_hold_a_slot_until_they_end_or_are_dropped() {
    let l = launcher().stream_handler("count", |n: Value| {
        (0..n.as_u64().unwrap_or(0)).map(|i| Ok(Value::from(i))).collect()
    });
    let pool = builder(&l).workers(1).build().await.unwrap();
    let stream = pool.stream(CallRequest::new("count", 3)).await.unwrap();
    assert_eq!(held(&pool.status()), 1);
    let items: Vec<u64> = stream.map(|r| r.unwrap().as_u64().unwrap()).collect().await;
    assert_eq!(items, [0, 1, 2]);
    assert_eq!(held(&pool.status()), 0);
    let mut stream = pool.stream(CallRequest::new("count", 10)).await.unwrap();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    assert_eq!(held(&pool.status()), 0);
    assert_eq!(
        pool.status().workers[0].served,
        1,
        "a dropped stream is not a served call"
    );
    pool.shutdown(secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn scales_up_to_max_when_callers_queue_and_back_down_when_idle() {
    let l = launcher();
    let pool = builder(&l)
        .size(1, 3)
        .idle_timeout(secs(30))
        .build()
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(
            async move { pool.call::<_, u64>("sleep", &1_000).await },
        ));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(l.launches(), 3);
    assert_eq!(pool.status().ready, 3);
    wait_status(&pool, |s| s.size == 1 && s.workers.len() == 1).await;
    assert_eq!(l.live_workers().len(), 1);
    pool.shutdown(secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn status_reports_every_worker() {
    let l = launcher()
        .script(|n| WorkerScript::default().pid(1000 + n as u32).rss(50 << 20))
        .max_concurrency(3);
    let pool = builder(&l).name("reporting").workers(2).build().await.unwrap();
    pool.call::<_, u32>("echo", &1).await.unwrap();
    let running = tokio::spawn({
        let pool = pool.clone();
        async move { pool.call::<_, u64>("sleep", &1_000).await }
    });
    settle().await;
    tokio::time::sleep(ms(500)).await;
    let st = pool.status();
    assert_eq!(st.name, "reporting");
    assert_eq!((st.size, st.ready, st.queue_depth), (2, 2, 0));
    assert_eq!(st.breaker, BreakerState::Closed);
    assert_eq!(st.workers.len(), 2);
    let mut pids: Vec<_> = st.workers.iter().map(|w| w.pid.unwrap()).collect();
    pids.sort();
    assert_eq!(pids, [1000, 1001]);
    assert_eq!(st.workers.iter().map(|w| w.served).sum::<u64>(), 1);
    assert_eq!(st.workers.iter().map(|w| w.in_flight).sum::<usize>(), 1);
    for w in &st.workers {
        assert_eq!(w.state, WorkerState::Ready);
        assert_eq!(w.capacity, 3);
        assert_eq!(w.rss_bytes, Some(50 << 20));
        assert_eq!(w.uptime, Some(ms(500)));
        assert_eq!(w.restarts, 0);
    }
    running.await.unwrap().unwrap();
    pool.shutdown(secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn typed_calls_report_encode_and_decode_errors() {
    let l = launcher();
    let pool = builder(&l).workers(1).build().await.unwrap();
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Point {
        x: i32,
        y: i32,
    }
    let p: Point = pool.call("echo", &Point { x: 1, y: 2 }).await.unwrap();
    assert_eq!(p, Point { x: 1, y: 2 });
    let err = pool.call::<_, Point>("echo", &"not a point").await.unwrap_err();
    assert!(matches!(err, PoolError::Decode { .. }), "{err}");
    let raw = pool
        .call_raw(CallRequest::new("echo", "raw").with_timeout(secs(1)))
        .await
        .unwrap();
    assert_eq!(raw, Value::from("raw"));
    assert_eq!(
        pool.call_value("echo", Value::from(3)).await.unwrap(),
        Value::from(3)
    );
    pool.shutdown(secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn default_call_timeout_is_applied_to_requests() {
    let l = launcher();
    let pool = builder(&l)
        .workers(1)
        .call_timeout(secs(2))
        .build()
        .await
        .unwrap();
    let err = pool.call::<_, u64>("sleep", &10_000).await.unwrap_err();
    assert!(
        matches!(err, PoolError::Call(CallError::Timeout { after, .. }) if after == secs(2)),
        "{err}"
    );
    assert_eq!(l.workers()[0].calls()[0].timeout, Some(secs(2)));
    // A request's own time-out wins.
    pool.call_raw(CallRequest::new("sleep", 3_000).with_timeout(secs(5)))
        .await
        .unwrap();
    pool.shutdown(secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_stops_the_workers() {
    let l = launcher();
    let pool = builder(&l).workers(2).build().await.unwrap();
    drop(pool);
    tokio::time::sleep(secs(10)).await;
    assert!(l.live_workers().is_empty());
}

#[tokio::test(start_paused = true)]
async fn one_crash_with_many_calls_in_flight_is_one_breaker_fault() {
    // Found by the demo: 16 calls on a killed worker opened the pool-wide
    // breaker although the other workers were healthy.
    let l = launcher().max_concurrency(16);
    let pool = builder(&l)
        .workers(2)
        .breaker(Some(BreakerConfig {
            failure_threshold: 3,
            open_for: secs(10),
            half_open_probes: 1,
        }))
        .build()
        .await
        .unwrap();
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.call::<_, u64>("sleep", &5_000).await })
        })
        .collect();
    settle().await;
    let victim = l.workers().into_iter().max_by_key(|w| w.in_flight()).unwrap();
    assert!(
        victim.in_flight() >= 3,
        "enough calls on one worker to trip a naive count"
    );
    victim.crash();
    let mut crashed = 0;
    for call in calls {
        if let Err(e) = call.await.unwrap() {
            assert!(e.is_worker_fault(), "{e}");
            crashed += 1;
        }
    }
    assert!(crashed >= 3);
    assert_eq!(
        pool.status().breaker,
        BreakerState::Closed,
        "one crash, one fault"
    );
    let v: u32 = pool.call("echo", &1).await.unwrap();
    assert_eq!(v, 1);
    pool.shutdown(secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_worker_whose_calls_keep_timing_out_is_replaced() {
    // Its pings would still be answered (the fake answers them), but its
    // calls hang: three time-outs in a row recycle it.
    let l = launcher()
        .handler("raise", |_| Err(remote_error("ValueError", "bad")))
        .async_handler("hang", |_| std::future::pending())
        .max_concurrency(8);
    let pool = builder(&l)
        .workers(1)
        .call_timeout(secs(1))
        .drain_timeout(secs(2))
        .build()
        .await
        .unwrap();
    for _ in 0..2 {
        assert!(pool
            .call::<_, u32>("hang", &())
            .await
            .unwrap_err()
            .is_worker_fault());
    }
    // Any other outcome starts the count again.
    assert!(pool.call::<_, u32>("raise", &()).await.is_err());
    for _ in 0..2 {
        pool.call::<_, u32>("hang", &()).await.unwrap_err();
    }
    tokio::time::sleep(secs(1)).await;
    assert_eq!(
        pool.status().workers[0].id,
        Some(WorkerId(0)),
        "two in a row: kept"
    );
    pool.call::<_, u32>("hang", &()).await.unwrap_err();
    let st = wait_only_worker(&pool, WorkerId(1)).await;
    assert_eq!(st.workers[0].restarts, 1);
    let v: u32 = pool.call("echo", &5).await.unwrap();
    assert_eq!(v, 5);
    pool.shutdown(secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_callers_own_short_deadline_does_not_open_the_breaker() {
    let l = launcher()
        .async_handler("hang", |_| std::future::pending())
        .max_concurrency(8);
    let pool = builder(&l)
        .workers(1)
        .call_timeout(secs(10))
        .max_consecutive_timeouts(None)
        .breaker(Some(BreakerConfig {
            failure_threshold: 2,
            open_for: secs(30),
            half_open_probes: 1,
        }))
        .build()
        .await
        .unwrap();
    for _ in 0..5 {
        let err = pool
            .call_raw(CallRequest::new("hang", Value::Nil).with_timeout(ms(100)))
            .await
            .unwrap_err();
        assert!(matches!(err, PoolError::Call(CallError::Timeout { .. })), "{err}");
    }
    assert_eq!(
        pool.status().breaker,
        BreakerState::Closed,
        "the caller's budget, not a sick worker"
    );
    for _ in 0..2 {
        pool.call::<_, u32>("hang", &()).await.unwrap_err(); // the pool's own 10 s deadline
    }
    assert_eq!(pool.status().breaker, BreakerState::Open);
    pool.shutdown(secs(1)).await;
}
