use std::sync::Arc;
use std::time::Duration;

use portpool_transport::{CallRequest, Launcher, Value};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;

use crate::lease::{call_span, decode, encode, open_stream, run_call};
use crate::shared::Shared;
use crate::{metrics, Checkout, Lease, PoolBuilder, PoolConfig, PoolError, PoolStatus, PoolStream};

/// A pool of workers. A cheap, cloneable handle: clones share the same
/// workers. When the last handle is dropped the pool shuts down in the
/// background (with `stop_grace`); call [`Pool::shutdown`] to wait for it.
#[derive(Clone)]
pub struct Pool {
    handle: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let grace = self.shared.config.stop_grace;
        self.shared.close(Instant::now() + grace);
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

    /// Like [`Pool::builder`], for a launcher that is already shared.
    pub fn builder_shared(launcher: Arc<dyn Launcher>) -> PoolBuilder {
        PoolBuilder::new(launcher)
    }

    pub(crate) fn from_shared(shared: Arc<Shared>) -> Self {
        Pool {
            handle: Arc::new(Handle { shared }),
        }
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// The pool's name (the `pool` label of its metrics).
    pub fn name(&self) -> &str {
        &self.shared().config.name
    }

    /// The configuration the pool was built with.
    pub fn config(&self) -> &PoolConfig {
        &self.shared().config
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
        let shared = self.shared();
        let span = call_span(&shared.config.name, &request.method);
        let fut = async {
            let guard = self.acquire(Checkout::Shared).await?;
            run_call(&guard, request).await
        };
        tracing::Instrument::instrument(fut, span).await
    }

    /// Starts a streaming call. The stream holds a worker slot until it
    /// ends or is dropped.
    pub async fn stream(&self, request: CallRequest) -> Result<PoolStream, PoolError> {
        let guard = self.acquire(Checkout::Shared).await?;
        let (worker, id) = (guard.worker.clone(), guard.id);
        open_stream(self.shared().clone(), worker, id, Some(guard), request).await
    }

    /// Checks out one worker exclusively for a sequence of calls. The
    /// worker comes back when the [`Lease`] is dropped.
    pub async fn checkout(&self) -> Result<Lease, PoolError> {
        self.checkout_with(Checkout::Exclusive).await
    }

    /// Checks out a worker with the given [`Checkout`] kind.
    pub async fn checkout_with(&self, kind: Checkout) -> Result<Lease, PoolError> {
        self.acquire(kind).await.map(Lease::new)
    }

    async fn acquire(&self, kind: Checkout) -> Result<crate::shared::SlotGuard, PoolError> {
        let shared = self.shared();
        shared.acquire(kind).await.inspect_err(|e| {
            metrics::call(&shared.config.name, e.outcome());
            tracing::debug!(error = %e, "checkout failed");
        })
    }

    /// A snapshot of every worker, the queue and the breaker.
    pub fn status(&self) -> PoolStatus {
        self.shared().status()
    }

    /// Refuses new callers (they get `PoolClosed`), fails queued ones, lets
    /// running calls and leases finish for up to `grace`, then stops every
    /// worker. Returns when all workers are stopped.
    pub async fn shutdown(&self, grace: Duration) {
        let shared = self.shared();
        shared.close(Instant::now() + grace);
        shared.join_tasks().await;
    }
}
