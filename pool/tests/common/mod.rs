//! Helpers shared by the pool tests.
#![allow(dead_code)]

use std::time::Duration;

use portpool_pool::{Backoff, Pool, PoolBuilder, PoolStatus};
use portpool_testkit::FakeLauncher;
use portpool_transport::{Value, WorkerId};

/// Milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Seconds.
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Methods: `echo` (returns params), `sleep` (params = milliseconds).
pub fn launcher() -> FakeLauncher {
    FakeLauncher::new()
        .handler("echo", Ok)
        .async_handler("sleep", |v: Value| async move {
            tokio::time::sleep(Duration::from_millis(v.as_u64().unwrap_or(0))).await;
            Ok(v)
        })
}

/// A builder with deterministic settings: no heartbeat, no jitter, no
/// breaker.
pub fn builder(l: &FakeLauncher) -> PoolBuilder {
    Pool::builder(l.clone())
        .name("test")
        .heartbeat(None)
        .breaker(None)
        .checkout_timeout(secs(5))
        .restart_backoff(Backoff {
            base: ms(100),
            cap: secs(1),
            jitter: 0.0,
            reset_after: secs(10),
        })
}

/// Slots held by callers, over all workers.
pub fn held(status: &PoolStatus) -> usize {
    status.workers.iter().map(|w| w.held).sum()
}

/// Lets spawned tasks run (virtual time advances only when all are idle).
pub async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// Waits (virtual time) until `cond` holds on the pool's status.
pub async fn wait_status(pool: &Pool, cond: impl Fn(&PoolStatus) -> bool) -> PoolStatus {
    for _ in 0..10_000 {
        let st = pool.status();
        if cond(&st) {
            return st;
        }
        tokio::time::sleep(ms(10)).await;
    }
    panic!("condition never held: {:#?}", pool.status());
}

/// Waits (virtual time) until the pool's only worker is `id`: a one-worker
/// pool whose worker was replaced.
pub async fn wait_only_worker(pool: &Pool, id: WorkerId) -> PoolStatus {
    wait_status(pool, |s| s.workers.len() == 1 && s.workers[0].id == Some(id)).await
}
