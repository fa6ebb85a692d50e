//! What `Pool::status` reports of the pool and of each worker. Fake
//! workers and paused time.

mod common;

use common::scripted::{scripted, Cpu};
use common::*;
use portpool_pool::{BreakerState, WorkerState};
use portpool_testkit::WorkerScript;

#[tokio::test(start_paused = true)]
async fn status_reports_every_worker() {
    let l = launcher()
        .script(|n| WorkerScript::default().pid(1000 + n as u32).rss(50 << 20))
        .max_concurrency(3);
    let pool = fake_pool_builder(&l)
        .name("reporting")
        .workers(2)
        .build()
        .await
        .unwrap();
    pool.call::<_, u32>("echo", &1).await.unwrap();
    let running = spawn_call::<u64>(&pool, "sleep", 1_000);
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

/// Issue 11, item 19: a worker's stderr tail and discarded-reply count show in
/// `WorkerStatus`.
#[tokio::test(start_paused = true)]
async fn worker_status_shows_the_stderr_tail_and_discarded_replies() {
    let l = launcher().script(|_| WorkerScript::default().stderr_tail("warning: low on memory"));
    let (sl, knobs) = scripted(&l, Cpu::Unknown);
    knobs.lock().unwrap().discarded = 7;
    let pool = fake_pool(&sl, 1).await.unwrap();
    let st = pool.status();
    assert_eq!(st.workers[0].state, WorkerState::Ready);
    assert_eq!(st.workers[0].stderr_tail, "warning: low on memory");
    assert_eq!(st.workers[0].discarded_replies, 7);
    pool.shutdown(secs(1)).await;
    // Through the plain fake: its scripted tail, nothing discarded.
    let pool = fake_pool(&l, 1).await.unwrap();
    let st = pool.status();
    assert_eq!(st.workers[0].stderr_tail, "warning: low on memory");
    assert_eq!(st.workers[0].discarded_replies, 0);
    pool.shutdown(secs(1)).await;
}
