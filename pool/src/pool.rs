use std::sync::Arc;
use std::time::Duration;

use portpool_transport::{CallRequest, Launcher, Value, WorkerId};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;

use crate::driver::{deadline, Driver, Guard};
use crate::lease::{call_span, decode, encode, open_stream, run_call};
use crate::{metrics, Checkout, Lease, PoolBuilder, PoolConfig, PoolError, PoolStatus, PoolStream};

/// How a call for one particular worker ([`Pool::call_on`]) waits when that
/// worker has no free slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Wait {
    /// Queue for the worker, up to the checkout time-out.
    #[default]
    Queue,
    /// Fail at once with [`PoolError::WorkerBusy`].
    FailFast,
}

/// A pool of workers. A cheap, cloneable handle: clones share the same
/// workers. When the last handle is dropped the pool shuts down in the
/// background (with `stop_grace`); call [`Pool::shutdown`] to wait for it.
#[derive(Clone)]
pub struct Pool {
    handle: Arc<Handle>,
}

struct Handle {
    driver: Arc<Driver>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let grace = self.driver.config.stop_grace;
        self.driver.close(deadline(Instant::now(), grace));
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name())
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Starts configuring a pool of workers started by `launcher`.
    pub fn builder(launcher: impl Launcher + 'static) -> PoolBuilder {
        PoolBuilder::new(Arc::new(launcher))
    }

    /// Like [`Pool::builder`], for a launcher that is already driver.
    pub fn builder_shared(launcher: Arc<dyn Launcher>) -> PoolBuilder {
        PoolBuilder::new(launcher)
    }

    pub(crate) fn from_driver(driver: Arc<Driver>) -> Self {
        Pool {
            handle: Arc::new(Handle { driver }),
        }
    }

    fn driver(&self) -> &Arc<Driver> {
        &self.handle.driver
    }

    /// The pool's name (the `pool` label of its metrics).
    pub fn name(&self) -> &str {
        &self.driver().config.name
    }

    /// The configuration the pool was built with.
    pub fn config(&self) -> &PoolConfig {
        &self.driver().config
    }

    /// Calls `method` on the least-loaded ready worker; params and result
    /// are converted with serde.
    pub async fn call<P, R>(&self, method: &str, params: &P) -> Result<R, PoolError>
    where
        P: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let request = CallRequest::new(method, encode(method, params)?);
        decode(method, self.call_raw(request).await?)
    }

    /// Calls `method` with a raw [`Value`].
    pub async fn call_value(&self, method: &str, params: Value) -> Result<Value, PoolError> {
        self.call_raw(CallRequest::new(method, params)).await
    }

    /// Runs one raw request (session, time-out and trace included) on the
    /// least-loaded ready worker. A request without a time-out gets the
    /// pool's `call_timeout`.
    pub async fn call_raw(&self, request: CallRequest) -> Result<Value, PoolError> {
        let driver = self.driver();
        let span = call_span(&driver.config.name, &request.method);
        let fut = async {
            let guard = self.acquire(Checkout::Shared, true).await?;
            run_call(&guard, request).await
        };
        tracing::Instrument::instrument(fut, span).await
    }

    /// Starts a streaming call. The stream holds a worker slot until it
    /// ends or is dropped.
    pub async fn stream(&self, request: CallRequest) -> Result<PoolStream, PoolError> {
        let guard = self.acquire(Checkout::Shared, true).await?;
        let (worker, id) = (guard.worker.clone(), guard.id);
        open_stream(self.driver().clone(), worker, id, Some(Arc::new(guard)), request).await
    }

    /// Checks out one worker exclusively for a sequence of calls. The
    /// worker comes back when the [`Lease`] is dropped.
    pub async fn checkout(&self) -> Result<Lease, PoolError> {
        self.checkout_with(Checkout::Exclusive).await
    }

    /// Checks out a worker with the given [`Checkout`] kind.
    pub async fn checkout_with(&self, kind: Checkout) -> Result<Lease, PoolError> {
        self.acquire(kind, false).await.map(Lease::new)
    }

    /// Runs one raw request on one particular worker (session affinity).
    /// With [`Wait::Queue`] it waits its turn for a slot on that worker
    /// (bounded by the checkout time-out); with [`Wait::FailFast`] a busy
    /// worker is [`PoolError::WorkerBusy`] at once. A worker that is no
    /// longer in the pool is [`PoolError::WorkerGone`]. A draining worker
    /// still serves these calls. While an exclusive [`Pool::checkout`] is
    /// queued, the least-loaded worker is reserved for it: calls for that
    /// worker wait behind the checkout (or are `WorkerBusy`), so session
    /// traffic cannot starve exclusive checkouts.
    pub async fn call_on(
        &self,
        worker: WorkerId,
        request: CallRequest,
        wait: Wait,
    ) -> Result<Value, PoolError> {
        let driver = self.driver();
        let span = call_span(&driver.config.name, &request.method);
        let fut = async {
            let guard = driver
                .acquire_on(Checkout::Shared, Some(worker), wait == Wait::FailFast, true)
                .await
                .inspect_err(|e| metrics::call(&driver.config.name, e.outcome()))?;
            run_call(&guard, request).await
        };
        tracing::Instrument::instrument(fut, span).await
    }

    /// Whether the pool was shut down (or is shutting down): every call now
    /// fails with [`PoolError::PoolClosed`].
    pub fn is_closed(&self) -> bool {
        self.driver().read(|s| s.is_closed())
    }

    /// The error calls get once the pool is closed.
    pub fn closed_error(&self) -> PoolError {
        self.driver().closed_error()
    }

    /// Waits until a worker is ready for new work (or the pool closes), at
    /// most `timeout`; returns whether one is.
    pub async fn wait_for_ready(&self, timeout: Duration) -> bool {
        let driver = self.driver();
        driver
            .wait_until(Some(deadline(Instant::now(), timeout)), |s| {
                s.is_closed() || s.has_ready_worker()
            })
            .await;
        driver.read(|s| s.has_ready_worker())
    }

    /// Workers ready for new work (not starting, draining or gone).
    pub fn ready_workers(&self) -> Vec<WorkerId> {
        self.driver().read(|s| s.ready_workers())
    }

    /// Whether `worker` is in the pool and alive (ready, leased or draining).
    pub fn is_serving(&self, worker: WorkerId) -> bool {
        self.driver().read(|s| s.serving(worker))
    }

    /// Asks the pool to defer recycling `worker` (up to its drain time-out)
    /// while the pin is held; for state that lives in the worker, such as
    /// bound sessions. Returns false if the worker is not in the pool.
    /// Each `pin` must be matched by one [`Pool::unpin`].
    pub fn pin(&self, worker: WorkerId) -> bool {
        self.driver().pin(worker, true)
    }

    /// Releases one [`Pool::pin`].
    pub fn unpin(&self, worker: WorkerId) {
        self.driver().pin(worker, false);
    }

    /// Tells `worker` to drop the state of `session`.
    pub async fn close_session_on(&self, worker: WorkerId, session: &str) -> Result<(), PoolError> {
        let driver = self.driver();
        let Some(handle) = driver.read(|s| s.worker(worker)) else {
            return Err(PoolError::WorkerGone {
                pool: driver.config.name.clone(),
                worker,
            });
        };
        Ok(handle.close_session(session).await?)
    }

    async fn acquire(&self, kind: Checkout, for_call: bool) -> Result<Guard, PoolError> {
        let driver = self.driver();
        driver.acquire(kind, for_call).await.inspect_err(|e| {
            metrics::call(&driver.config.name, e.outcome());
            tracing::debug!(error = %e, "checkout failed");
        })
    }

    /// A snapshot of every worker, the queue and the breaker.
    pub fn status(&self) -> PoolStatus {
        self.driver().status()
    }

    /// Refuses new callers (they get `PoolClosed`), fails queued ones, lets
    /// running calls and leases finish for up to `grace`, then stops every
    /// worker. Returns when all workers are stopped.
    pub async fn shutdown(&self, grace: Duration) {
        let driver = self.driver();
        driver.close(deadline(Instant::now(), grace));
        driver.join_tasks().await;
    }
}
