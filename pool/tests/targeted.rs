//! The affinity port (`Pool::affinity`): calls, slots and streams for one
//! particular worker, pins and session_close, with fake workers and paused
//! time.

mod common;

use common::*;
use portpool_pool::{PoolError, Wait, WorkerState};
use portpool_testkit::WorkerScript;
use portpool_transport::{CallRequest, Value, WorkerId};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn a_port_call_runs_on_the_named_worker() {
    let l = launcher();
    let pool = builder(&l).workers(3).build().await.unwrap();
    for _ in 0..4 {
        let v = pool
            .affinity()
            .call(WorkerId(2), CallRequest::new("echo", 7), Wait::Queue)
            .await
            .unwrap();
        assert_eq!(v, Value::from(7));
    }
    assert_eq!(l.worker(WorkerId(2)).unwrap().calls().len(), 4);
    assert!(l.worker(WorkerId(0)).unwrap().calls().is_empty());
    assert_eq!(pool.affinity().ready_workers().len(), 3);
    pool.shutdown(secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn fail_fast_is_busy_at_once_and_queue_waits_its_turn() {
    let l = launcher(); // one slot per worker
    let pool = builder(&l).workers(2).build().await.unwrap();
    let busy = tokio::spawn({
        let pool = pool.clone();
        async move {
            pool.affinity()
                .call(WorkerId(0), CallRequest::new("sleep", 1_000), Wait::Queue)
                .await
        }
    });
    settle().await;

    let t0 = Instant::now();
    let err = pool
        .affinity()
        .call(WorkerId(0), CallRequest::new("echo", 1), Wait::FailFast)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PoolError::WorkerBusy {
                worker: WorkerId(0),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(t0.elapsed(), ms(0), "at once");

    // Queued for worker 0, it runs after the sleep; meanwhile worker 1
    // serves untargeted calls: the targeted waiter blocks nobody.
    let queued = tokio::spawn({
        let pool = pool.clone();
        async move {
            pool.affinity()
                .call(WorkerId(0), CallRequest::new("echo", 2), Wait::Queue)
                .await
        }
    });
    settle().await;
    assert_eq!(pool.status().queue_depth, 1);
    let v: u32 = pool.call("echo", &3).await.unwrap();
    assert_eq!(v, 3);
    assert_eq!(t0.elapsed(), ms(0), "untargeted call did not wait behind it");
    assert_eq!(l.worker(WorkerId(1)).unwrap().calls().len(), 1);

    assert_eq!(busy.await.unwrap().unwrap(), Value::from(1_000));
    assert_eq!(queued.await.unwrap().unwrap(), Value::from(2));
    assert_eq!(t0.elapsed(), ms(1_000));
    assert_eq!(l.worker(WorkerId(0)).unwrap().calls().len(), 2);
    pool.shutdown(secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_gone_worker_fails_targeted_calls_with_worker_gone() {
    let l = launcher().script(|n| {
        if n == 0 {
            WorkerScript::default().crash_at(ms(500))
        } else {
            WorkerScript::default()
        }
    });
    let pool = builder(&l).workers(1).build().await.unwrap();
    let err = pool
        .affinity()
        .call(WorkerId(42), CallRequest::new("echo", 1), Wait::Queue)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PoolError::WorkerGone {
                worker: WorkerId(42),
                ..
            }
        ),
        "{err}"
    );

    // One call holds worker 0's slot, another waits for it; the crash
    // fails the first with WorkerCrashed and the waiter with WorkerGone.
    let running = tokio::spawn({
        let pool = pool.clone();
        async move {
            pool.affinity()
                .call(WorkerId(0), CallRequest::new("sleep", 5_000), Wait::Queue)
                .await
        }
    });
    settle().await;
    let waiting = tokio::spawn({
        let pool = pool.clone();
        async move {
            pool.affinity()
                .call(WorkerId(0), CallRequest::new("echo", 1), Wait::Queue)
                .await
        }
    });
    settle().await;
    assert!(matches!(running.await.unwrap(), Err(PoolError::Call(_))));
    let err = waiting.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            PoolError::WorkerGone {
                worker: WorkerId(0),
                ..
            }
        ),
        "{err}"
    );
    assert!(!pool.affinity().is_serving(WorkerId(0)));
    wait_status(&pool, |s| s.ready == 1).await;
    assert!(pool.affinity().is_serving(WorkerId(1)));
    pool.shutdown(secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_pin_defers_recycling_until_released_and_draining_still_serves_targeted_calls() {
    let l = launcher();
    let pool = builder(&l)
        .workers(1)
        .max_requests(1)
        .drain_timeout(secs(60))
        .build()
        .await
        .unwrap();
    assert!(pool.affinity().pin(WorkerId(0)));
    pool.call::<_, u32>("echo", &1).await.unwrap(); // reaches max_requests
    wait_status(&pool, |s| s.count(WorkerState::Draining) == 1 && s.ready == 1).await;

    // Pinned: it stays, draining, and still answers calls made for it.
    tokio::time::sleep(secs(10)).await;
    assert!(l.worker(WorkerId(0)).unwrap().is_alive());
    let v = pool
        .affinity()
        .call(WorkerId(0), CallRequest::new("echo", 5), Wait::Queue)
        .await
        .unwrap();
    assert_eq!(v, Value::from(5));
    assert!(
        !pool.affinity().ready_workers().contains(&WorkerId(0)),
        "not offered to new sessions"
    );

    pool.affinity().close_session(WorkerId(0), "s-1").await.unwrap();
    assert_eq!(
        l.worker(WorkerId(0)).unwrap().session_closes(),
        vec!["s-1".to_string()]
    );

    pool.affinity().unpin(WorkerId(0));
    wait_only_worker(&pool, WorkerId(1)).await;
    assert!(!l.worker(WorkerId(0)).unwrap().is_alive());
    pool.shutdown(secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_pin_defers_recycling_only_up_to_the_drain_timeout() {
    let l = launcher();
    let pool = builder(&l)
        .workers(1)
        .max_requests(1)
        .drain_timeout(secs(5))
        .build()
        .await
        .unwrap();
    assert!(pool.affinity().pin(WorkerId(0)));
    let t0 = Instant::now();
    pool.call::<_, u32>("echo", &1).await.unwrap();
    wait_only_worker(&pool, WorkerId(1)).await;
    assert!(t0.elapsed() >= secs(5), "held until the drain time-out");
    assert!(t0.elapsed() < secs(7));
    let err = pool.affinity().close_session(WorkerId(0), "s").await.unwrap_err();
    assert!(matches!(err, PoolError::WorkerGone { .. }), "{err}");
    pool.affinity().unpin(WorkerId(0)); // unknown by now: harmless
    pool.shutdown(secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn pins_do_not_delay_pool_shutdown() {
    let l = launcher();
    let pool = builder(&l).workers(2).build().await.unwrap();
    assert!(pool.affinity().pin(WorkerId(0)));
    assert!(pool.affinity().pin(WorkerId(1)));
    let t0 = Instant::now();
    pool.shutdown(secs(10)).await;
    assert!(t0.elapsed() < secs(1), "took {:?}", t0.elapsed());
    assert!(!l.worker(WorkerId(0)).unwrap().is_alive());
}

#[tokio::test(start_paused = true)]
async fn a_worker_slot_is_taken_before_the_request_and_given_back_when_used_or_dropped() {
    let l = launcher(); // one slot per worker
    let pool = builder(&l).workers(2).build().await.unwrap();
    let port = pool.affinity();
    let slot = port.slot(WorkerId(0), Wait::FailFast).await.unwrap();
    assert_eq!(slot.worker_id(), WorkerId(0));
    assert_eq!(held(&pool.status()), 1);
    let err = port.slot(WorkerId(0), Wait::FailFast).await.unwrap_err();
    assert!(
        matches!(
            err,
            PoolError::WorkerBusy {
                worker: WorkerId(0),
                ..
            }
        ),
        "{err}"
    );

    // Dropped unused: the slot comes back and no call reached the worker.
    drop(slot);
    assert_eq!(held(&pool.status()), 0);
    assert!(l.worker(WorkerId(0)).unwrap().calls().is_empty());

    // Used: one call, then the slot comes back.
    let slot = port.slot(WorkerId(0), Wait::FailFast).await.unwrap();
    let v = slot.call(CallRequest::new("echo", 3)).await.unwrap();
    assert_eq!(v, Value::from(3));
    assert_eq!(held(&pool.status()), 0);
    assert_eq!(l.worker(WorkerId(0)).unwrap().calls().len(), 1);
    pool.shutdown(secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_targeted_stream_holds_its_slot_on_that_worker_until_it_ends() {
    use futures::StreamExt;

    let l = launcher();
    let pool = builder(&l).workers(2).build().await.unwrap();
    let port = pool.affinity();
    let mut stream = port
        .stream(WorkerId(1), CallRequest::new("count", 3), Wait::Queue)
        .await
        .unwrap();
    assert_eq!(stream.worker_id(), WorkerId(1));
    assert_eq!(stream.next().await.unwrap().unwrap(), Value::from(0));
    let st = pool.status();
    assert_eq!(
        st.workers
            .iter()
            .find(|w| w.id == Some(WorkerId(1)))
            .unwrap()
            .held,
        1,
        "{st:#?}"
    );
    let rest: Vec<Value> = stream.map(|r| r.unwrap()).collect().await;
    assert_eq!(rest, [Value::from(1), Value::from(2)]);
    assert_eq!(held(&pool.status()), 0);
    assert!(l.worker(WorkerId(0)).unwrap().calls().is_empty());
    pool.shutdown(secs(1)).await;
}

/// The pool's `call_timeout` reaches the worker as the request's deadline
/// on the targeted path too (the worker's timer is the call's one timer),
/// and a time-out gives the slot back.
#[tokio::test(start_paused = true)]
async fn targeted_calls_carry_the_pools_call_timeout_to_the_worker() {
    let l = launcher();
    let pool = builder(&l)
        .workers(1)
        .call_timeout(secs(2))
        .build()
        .await
        .unwrap();
    let port = pool.affinity();
    let t0 = Instant::now();
    let err = port
        .call(WorkerId(0), CallRequest::new("hang", 0), Wait::Queue)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PoolError::Call(portpool_pool::CallError::Timeout { after, .. }) if *after == secs(2)),
        "{err}"
    );
    assert_eq!(t0.elapsed(), secs(2));
    assert_eq!(held(&pool.status()), 0);
    let slot = port.slot(WorkerId(0), Wait::FailFast).await.unwrap();
    slot.call(CallRequest::new("echo", 1).with_timeout(secs(5)))
        .await
        .unwrap();
    let calls = l.worker(WorkerId(0)).unwrap().calls();
    let timeouts: Vec<_> = calls.iter().map(|c| c.timeout).collect();
    assert_eq!(
        timeouts,
        [Some(secs(2)), Some(secs(5))],
        "a request's own deadline wins"
    );
    pool.shutdown(secs(1)).await;
}
