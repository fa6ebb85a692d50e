//! Worker health: heartbeats for idle and busy workers, frozen workers
//! (missed pings without CPU progress) killed within the documented bound,
//! busy or waiting ones kept, and a worker whose calls keep timing out
//! replaced. Fake workers and paused time, and one test on real Python
//! workers.

mod common;

use std::time::Duration;

use common::scripted::{scripted, Cpu};
use common::*;
use portpool_pool::{Heartbeat, Pool, PoolError, WorkerState};
use portpool_testkit::{remote_error, FakeLauncher, WorkerScript};
use portpool_transport::{CallError, CrashCause, WorkerId};
use tokio::time::Instant;

/// The common launcher; its first worker (only) ignores pings.
fn first_worker_ignores_pings() -> FakeLauncher {
    launcher().script(|n| match n {
        0 => WorkerScript::default().ignore_pings(),
        _ => WorkerScript::default(),
    })
}

/// An idle worker that misses its pings (with no CPU progress: the fake's
/// CPU time is unknown) is killed as frozen and replaced.
#[tokio::test(start_paused = true)]
async fn idle_workers_are_pinged_and_missed_pings_replace_them() {
    let l = first_worker_ignores_pings();
    let pool = fake_pool_builder(&l)
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
    let l = first_worker_ignores_pings();
    let pool = fake_pool_builder(&l)
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

const HB: Heartbeat = Heartbeat {
    interval: Duration::from_secs(1),
    timeout: Duration::from_millis(200),
    max_misses: 3,
};

/// The documented bound: `interval × max_misses + timeout`.
fn frozen_bound() -> Duration {
    HB.interval * HB.max_misses + HB.timeout
}

/// Issue 11, item 2: a worker frozen with a call in flight (no call time-out) stops
/// answering pings; with no CPU progress (here: unknown) it is killed as
/// unresponsive within the bound, its call fails, it is replaced.
async fn frozen_busy_worker_is_killed(cpu: Option<Cpu>) {
    let l = launcher().max_concurrency(4);
    // The knobs stay alive with the launcher; this test does not turn them.
    let (pool, _knobs) = match cpu {
        None => (
            fake_pool_builder(&l).heartbeat(Some(HB)).build().await.unwrap(),
            None,
        ),
        Some(cpu) => {
            let (sl, knobs) = scripted(&l, cpu);
            let pool = fake_pool_builder(&sl).heartbeat(Some(HB)).build().await.unwrap();
            (pool, Some(knobs))
        }
    };
    let call = spawn_call::<u64>(&pool, "sleep", 3_600_000);
    settle().await;
    let w0 = l.worker(WorkerId(0)).unwrap();
    assert_eq!(w0.in_flight(), 1);
    // Frozen: pings go unanswered from now on.
    w0.set_ignore_pings(true);
    let frozen_at = Instant::now();
    let res = tokio::time::timeout(frozen_bound() + secs(60), call)
        .await
        .expect("the call on a frozen worker never ended")
        .unwrap();
    let took = frozen_at.elapsed();
    match &res {
        Err(PoolError::Call(CallError::WorkerCrashed { cause, reason, .. })) => {
            assert_eq!(*cause, CrashCause::Unresponsive, "{reason}");
            assert!(reason.contains("heartbeat"), "{reason}");
        }
        other => panic!("expected WorkerCrashed(Unresponsive), got {other:?}"),
    }
    assert!(
        took <= frozen_bound(),
        "detected after {took:?}, bound {:?}",
        frozen_bound()
    );
    assert!(w0.crashed());
    let st = wait_only_worker(&pool, WorkerId(1)).await;
    assert_eq!(st.ready, 1);
    assert_eq!(held(&st), 0);
    let v: u32 = pool.call("echo", &7).await.unwrap();
    assert_eq!(v, 7);
    pool.shutdown(secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_frozen_busy_worker_with_unknown_cpu_time_is_killed_within_the_bound() {
    frozen_busy_worker_is_killed(None).await;
}

#[tokio::test(start_paused = true)]
async fn a_frozen_busy_worker_without_cpu_progress_is_killed_within_the_bound() {
    frozen_busy_worker_is_killed(Some(Cpu::Stuck)).await;
}

/// Issue 11, item 2, the other half: a worker that misses its pings while its CPU
/// time grows (busy in a GIL-holding C call) is not killed by that rule.
#[tokio::test(start_paused = true)]
async fn a_busy_worker_making_cpu_progress_is_not_killed() {
    let l = launcher()
        .max_concurrency(4)
        .script(|_| WorkerScript::default().ignore_pings());
    let (sl, knobs) = scripted(&l, Cpu::Busy);
    let pool = fake_pool_builder(&sl).heartbeat(Some(HB)).build().await.unwrap();
    // 30 s of missed pings with CPU progress: the call completes.
    let v: u64 = pool.call("sleep", &30_000).await.unwrap();
    assert_eq!(v, 30_000);
    let w0 = l.worker(WorkerId(0)).unwrap();
    assert!(w0.pings() >= 10, "it was pinged while busy: {}", w0.pings());
    assert!(w0.is_alive());
    assert_eq!(l.launches(), 1);
    // When its CPU time stops moving, it is frozen after all.
    knobs.lock().unwrap().cpu = Cpu::Stuck;
    let st = wait_only_worker(&pool, WorkerId(1)).await;
    assert_eq!(st.ready, 1);
    assert!(w0.crashed());
    pool.shutdown(secs(1)).await;
}

/// Handlers that wait without using CPU (for the next test).
const APP: &str = "import os, time\nimport portpool\napp = portpool.App(max_concurrency=4)\n\n\
@app.handler\ndef sync_sleep(s):\n    time.sleep(s)\n    return s\n\n\
@app.handler\nasync def loop_blocking_sleep(s):\n    time.sleep(s)\n    return s\n\n\
@app.handler\ndef pipe_read(s):\n    r, w = os.pipe()\n    import select\n    select.select([r], [], [], s)\n    return s\n";

/// Regression (found by review): the heartbeat rule must not kill healthy
/// workers that use no CPU while they wait: a sync handler sleeping (no GIL
/// held), an async handler that blocks the event loop with `time.sleep`
/// (pongs are answered off the loop), and a sync handler blocked reading a
/// pipe. Real Python workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_handlers_that_use_no_cpu_are_not_killed_by_the_heartbeat() {
    let python = portpool_testkit::runtime_python().unwrap();
    let hb = Heartbeat {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(200),
        max_misses: 2,
    };
    let bound = hb.interval * hb.max_misses + hb.timeout;
    let pool = Pool::builder(python_launcher(python, python_app("waiting", APP)))
        .name("review-hb")
        .workers(1)
        .heartbeat(Some(hb))
        .breaker(None)
        .build()
        .await
        .unwrap();
    let pid = pool.status().workers[0].pid;
    // Each call waits ~3 bounds without using CPU.
    let wait = (bound * 3).as_secs_f64();
    for method in ["sync_sleep", "loop_blocking_sleep", "pipe_read"] {
        let t0 = Instant::now();
        let res = pool.call::<_, f64>(method, &wait).await;
        assert!(res.is_ok(), "{method}: {res:?} after {:?}", t0.elapsed());
        assert_eq!(
            pool.status().workers[0].pid,
            pid,
            "{method}: the worker was replaced"
        );
    }
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn a_worker_whose_calls_keep_timing_out_is_replaced() {
    // Its pings would still be answered (the fake answers them), but its
    // calls hang: three time-outs in a row recycle it.
    let l = launcher()
        .handler("raise", |_| Err(remote_error("ValueError", "bad")))
        .max_concurrency(8);
    let pool = fake_pool_builder(&l)
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
