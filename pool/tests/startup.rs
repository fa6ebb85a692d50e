//! Building a pool: the configuration's checks (bad values, huge
//! durations), eager and lazy starts, builds that fail or start degraded.
//! Fake workers and paused time.

mod common;

use std::time::Duration;

use common::*;
use portpool_pool::{Backoff, BreakerConfig, Heartbeat, Pool, PoolConfig, PoolError, StartMode};
use portpool_testkit::WorkerScript;
use portpool_transport::{Value, WorkerId};
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
    let err = fake_pool_builder(&l)
        .max_lifetime(secs(1), 1.5)
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("recycle.lifetime_jitter"), "{err}");
    let err = fake_pool_builder(&l)
        .breaker(Some(BreakerConfig {
            failure_threshold: 0,
            ..BreakerConfig::default()
        }))
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("breaker.failure_threshold"), "{err}");
    let err = fake_pool_builder(&l)
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

/// Regression (found by review): a huge duration setting must not panic.
#[tokio::test(start_paused = true)]
async fn huge_durations_do_not_panic() {
    // `Duration::MAX` means "never": no setting may overflow a deadline, in
    // a caller's task or in a supervisor (which would leave its slot
    // unsupervised: a crash never restarted).
    let l = launcher();
    let pool = fake_pool_builder(&l)
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
    let hold = spawn_call::<Value>(&pool, "sleep", 1_000u64);
    settle().await;
    let queued = spawn_call::<Value>(&pool, "echo", 1u64);
    hold.await.unwrap().unwrap();
    assert_eq!(queued.await.unwrap().unwrap(), portpool_transport::Value::from(1));
    // The supervisor is alive: a crash is restarted.
    l.worker(WorkerId(0)).unwrap().crash();
    wait_status(&pool, |s| s.ready == 1 && s.workers[0].id == Some(WorkerId(1))).await;
    let shutdown = spawn_with(&pool, |pool| async move { pool.shutdown(Duration::MAX).await });
    shutdown.await.expect("shutdown(Duration::MAX) does not panic");
    assert!(!l.worker(WorkerId(1)).unwrap().is_alive());
}

#[tokio::test(start_paused = true)]
async fn eager_start_is_parallel_and_bounded() {
    let l = launcher().launch_delay(secs(1));
    let t0 = Instant::now();
    let pool = fake_pool_builder(&l)
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
    let err = fake_pool(&l, 3).await.unwrap_err();
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
    let pool = fake_pool(&l, 2).await.unwrap();
    assert_eq!(pool.status().ready, 1);
    let st = wait_status(&pool, |s| s.ready == 2).await;
    assert!(st.last_error.as_ref().unwrap().to_string().contains("flaky"));
    pool.shutdown(secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn lazy_start_serves_the_first_caller_when_ready_without_timing_out() {
    let l = launcher().launch_delay(secs(10));
    let t0 = Instant::now();
    let pool = fake_pool_builder(&l)
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
    let busy = spawn_call::<u64>(&pool, "sleep", 5_000);
    settle().await;
    let err = pool.call::<_, u32>("echo", &1).await.unwrap_err();
    assert!(
        matches!(err, PoolError::Timeout { waited, .. } if waited == secs(1)),
        "{err}"
    );
    busy.await.unwrap().unwrap();
    pool.shutdown(secs(1)).await;
}
