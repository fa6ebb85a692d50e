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

/// Issue 15: each worker's stable address shows in its status, and the
/// affinity port maps an address back to this pool's worker (how a binding
/// in a shared session store finds its worker).
#[tokio::test(start_paused = true)]
async fn each_worker_has_an_address_that_maps_back_to_it() {
    let l = launcher();
    let pool = fake_pool_builder(&l).workers(2).build().await.unwrap();
    let port = pool.affinity();
    let st = pool.status();
    let mut seen = Vec::new();
    for w in &st.workers {
        let id = w.id.unwrap();
        let address = w.address.clone().expect("a running worker has an address");
        assert!(address.is_local(), "{address}");
        assert_eq!(w.endpoint, None, "a local worker has no endpoint");
        assert_eq!(port.address(id), Some(address.clone()));
        assert_eq!(port.worker_at(&address), Some(id));
        seen.push(address);
    }
    assert_ne!(seen[0], seen[1], "two workers, two addresses");
    let stranger = portpool_pool::WorkerAddress::remote("127.0.0.1:1", "nobody");
    assert_eq!(port.worker_at(&stranger), None);
    pool.shutdown(secs(1)).await;
}
