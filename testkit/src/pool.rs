//! A pool of fakes in one line, and a pool call in a task of its own
//! (feature `pool`).

use std::time::Duration;

use portpool_pool::{Backoff, Pool, PoolBuilder, PoolError};
use portpool_transport::Launcher;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::task::JoinHandle;

/// A builder for a pool of the workers `launcher` starts, with settings that
/// keep tests deterministic under `tokio::time::pause()`: no heartbeat, no
/// breaker, no restart jitter (100 ms base backoff, 1 s cap), one worker;
/// the pool is named `fake`. Set what a test is about on top of it.
///
/// ```
/// use portpool_testkit::{fake_pool_builder, FakeLauncher};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), portpool_pool::PoolError> {
/// let launcher = FakeLauncher::new().handler("echo", Ok);
/// let pool = fake_pool_builder(&launcher).workers(2).max_queue(8).build().await?;
/// assert_eq!(pool.config().max_queue, 8);
/// assert_eq!(pool.status().ready, 2);
/// # Ok(())
/// # }
/// ```
pub fn fake_pool_builder<L>(launcher: &L) -> PoolBuilder
where
    L: Launcher + Clone + 'static,
{
    Pool::builder(launcher.clone())
        .name("fake")
        .workers(1)
        .heartbeat(None)
        .breaker(None)
        .restart_backoff(Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
            jitter: 0.0,
            reset_after: Duration::from_secs(10),
        })
}

/// A ready pool of `workers` workers started by `launcher` (a
/// [`FakeLauncher`](crate::FakeLauncher), or any cloneable launcher), with
/// the settings of [`fake_pool_builder`].
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
pub async fn fake_pool<L>(launcher: &L, workers: usize) -> Result<Pool, PoolError>
where
    L: Launcher + Clone + 'static,
{
    fake_pool_builder(launcher).workers(workers).build().await
}

/// Spawns `pool.call(method, &params)` in a task of its own (on a clone of
/// the pool) and returns its [`JoinHandle`]: a call left running (or
/// queued) while the test looks at the pool, then awaited for its result.
/// `R` is the result type, as in [`Pool::call`].
///
/// ```
/// use std::time::Duration;
///
/// use portpool_testkit::{fake_pool, spawn_call, FakeLauncher};
/// use portpool_transport::Value;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), portpool_pool::PoolError> {
/// let launcher = FakeLauncher::new().async_handler("sleep", |ms: Value| async move {
///     tokio::time::sleep(Duration::from_millis(ms.as_u64().unwrap_or(0))).await;
///     Ok(ms)
/// });
/// let pool = fake_pool(&launcher, 1).await?;
/// let running = spawn_call::<u64>(&pool, "sleep", 1_000);
/// tokio::time::sleep(Duration::from_millis(10)).await;
/// let queued = spawn_call::<u64>(&pool, "sleep", 5);
/// tokio::time::sleep(Duration::from_millis(10)).await;
/// assert_eq!(pool.status().queue_depth, 1, "the one slot is taken");
/// assert_eq!(running.await.unwrap()?, 1_000);
/// assert_eq!(queued.await.unwrap()?, 5);
/// # Ok(())
/// # }
/// ```
///
/// Panics, like [`tokio::spawn`], outside a tokio runtime.
pub fn spawn_call<R>(
    pool: &Pool,
    method: &str,
    params: impl Serialize + Send + Sync + 'static,
) -> JoinHandle<Result<R, PoolError>>
where
    R: DeserializeOwned + Send + 'static,
{
    let (pool, method) = (pool.clone(), method.to_owned());
    tokio::spawn(async move { pool.call(&method, &params).await })
}
