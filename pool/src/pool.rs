use std::sync::Arc;
use std::time::Duration;

use portpool_transport::{CallRequest, Launcher, Value};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;

use crate::call::{self, typed_call};
use crate::driver::{deadline, Driver, Guard};
use crate::{AffinityPort, Checkout, Lease, PoolBuilder, PoolConfig, PoolError, PoolStatus, PoolStream};

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
            .field("name", &self.config().name)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Starts configuring a pool of workers started by `launcher`.
    pub fn builder(launcher: impl Launcher + 'static) -> PoolBuilder {
        PoolBuilder::new(Arc::new(launcher))
    }

    pub(crate) fn from_driver(driver: Arc<Driver>) -> Self {
        Pool {
            handle: Arc::new(Handle { driver }),
        }
    }

    pub(crate) fn driver(&self) -> &Arc<Driver> {
        &self.handle.driver
    }

    /// The configuration the pool was built with (`config().name` is the
    /// `pool` label of its metrics).
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
        typed_call(method, params, |request| self.call_raw(request)).await
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
        let span = call::span(&driver.config.name, &request.method);
        let fut = async {
            let guard = self.acquire(Checkout::Shared, true).await?;
            call::run_once(guard, request).await
        };
        tracing::Instrument::instrument(fut, span).await
    }

    /// Starts a streaming call. The stream holds a worker slot until it
    /// ends or is dropped.
    pub async fn stream(&self, request: CallRequest) -> Result<PoolStream, PoolError> {
        let guard = self.acquire(Checkout::Shared, true).await?;
        call::open_stream(Arc::new(guard), request).await
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

    /// The port for session affinity: calls and streams for one
    /// particular worker, pins, `session_close` (see [`AffinityPort`]).
    pub fn affinity(&self) -> AffinityPort {
        AffinityPort::new(self.clone())
    }

    /// Whether the pool was shut down (or is shutting down): every call now
    /// fails with [`PoolError::PoolClosed`].
    pub fn is_closed(&self) -> bool {
        self.driver().read(|s| s.is_closed())
    }

    async fn acquire(&self, kind: Checkout, for_call: bool) -> Result<Guard, PoolError> {
        let driver = self.driver();
        driver
            .acquire(kind, for_call)
            .await
            .inspect_err(|e| call::checkout_failed(&driver.label, e))
    }

    /// A snapshot of every worker, the queue and the breaker.
    pub fn status(&self) -> PoolStatus {
        self.driver().status()
    }

    /// Refuses new callers (they get `PoolClosed`), fails queued ones, lets
    /// running calls and leases finish for up to `grace`, then stops every
    /// worker and lets go of the launcher (a process launcher's fork server
    /// then exits, unless a clone of the launcher is kept elsewhere).
    /// Returns when all workers are stopped.
    pub async fn shutdown(&self, grace: Duration) {
        let driver = self.driver();
        driver.close(deadline(Instant::now(), grace));
        driver.join_tasks().await;
        driver.release_launcher();
    }
}
