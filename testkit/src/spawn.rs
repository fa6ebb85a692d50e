//! Calls in a task of their own: the clone-then-spawn block of concurrent
//! tests, once.

use std::future::Future;

use tokio::task::JoinHandle;

/// Spawns `f(handle.clone())` on the current tokio runtime and returns its
/// [`JoinHandle`]: a call (or checkout, or shutdown) running beside the test
/// body, on a clone of a cheaply cloned handle (a pool, a session pool, a
/// worker behind an `Arc`), without writing the clone-then-move block.
///
/// ```
/// use std::time::Duration;
///
/// use portpool_testkit::{spawn_with, FakeLauncher};
/// use portpool_transport::{CallRequest, Launcher, Value, WorkerId};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let launcher = FakeLauncher::new().async_handler("sleep", |ms: Value| async move {
///     tokio::time::sleep(Duration::from_millis(ms.as_u64().unwrap_or(0))).await;
///     Ok(ms)
/// });
/// let worker = std::sync::Arc::new(launcher.launch(WorkerId(0)).await.unwrap());
/// let slow = spawn_with(&worker, |w| async move { w.call(CallRequest::new("sleep", 1_000)).await });
/// tokio::time::sleep(Duration::from_millis(10)).await;
/// assert_eq!(worker.in_flight(), 1);
/// assert_eq!(slow.await.unwrap().unwrap(), Value::from(1_000));
/// # }
/// ```
///
/// Panics, like [`tokio::spawn`], outside a tokio runtime.
pub fn spawn_with<T, F, Fut>(handle: &T, f: F) -> JoinHandle<Fut::Output>
where
    T: Clone,
    F: FnOnce(T) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    tokio::spawn(f(handle.clone()))
}
