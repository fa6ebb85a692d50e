//! Leases (`Pool::checkout`, `checkout_with`): an exclusive lease holds its
//! worker, a shared one a slot, until dropped, panicked or cancelled.
//! Fake workers and paused time.

mod common;

use common::*;
use portpool_pool::{Checkout, WorkerState};

#[tokio::test(start_paused = true)]
async fn exclusive_lease_holds_the_worker_until_dropped() {
    let l = launcher().max_concurrency(4);
    let pool = fake_pool(&l, 2).await.unwrap();
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
    let pool = fake_pool(&l, 1).await.unwrap();
    let panicking = spawn_with(&pool, |pool| async move {
        let _lease = pool.checkout().await.unwrap();
        panic!("handler bug while holding a lease");
    });
    assert!(panicking.await.unwrap_err().is_panic());
    assert_eq!(held(&pool.status()), 0);

    let cancelled = spawn_with(&pool, |pool| async move {
        let lease = pool.checkout().await.unwrap();
        lease.call::<_, u64>("sleep", &10_000).await
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
