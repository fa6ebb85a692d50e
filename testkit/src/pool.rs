//! A pool of fakes in one line (feature `pool`).

use std::time::Duration;

use portpool_pool::{Backoff, Pool, PoolError};

use crate::FakeLauncher;

/// A ready pool of `workers` fake workers started by `launcher`, with
/// settings that keep tests deterministic under `tokio::time::pause()`:
/// no heartbeat, no breaker, no restart jitter (100 ms base backoff).
///
/// ```
/// use portpool_testkit::{fake_pool, FakeLauncher};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), portpool_pool::PoolError> {
/// let pool = fake_pool(&FakeLauncher::new().handler("echo", Ok), 3).await?;
/// let n: u32 = pool.call("echo", &7).await?;
/// assert_eq!(n, 7);
/// assert_eq!(pool.status().ready, 3);
/// # Ok(())
/// # }
/// ```
pub async fn fake_pool(launcher: &FakeLauncher, workers: usize) -> Result<Pool, PoolError> {
    Pool::builder(launcher.clone())
        .name("fake")
        .workers(workers)
        .heartbeat(None)
        .breaker(None)
        .restart_backoff(Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
            jitter: 0.0,
            reset_after: Duration::from_secs(10),
        })
        .build()
        .await
}
