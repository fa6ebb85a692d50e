//! [`AffinityPort`]: what a layer keeping state in particular workers
//! (sessions) needs from the pool, behind one handle: calls and streams
//! for one worker, pins, `session_close`, and which workers serve.

use std::sync::Arc;
use std::time::Duration;

use portpool_transport::{CallRequest, Value, WorkerAddress, WorkerId};
use tokio::time::Instant;

use crate::call::{self, PoolStream};
use crate::driver::{deadline, Guard};
use crate::{Checkout, Pool, PoolError};

/// How a call for one particular worker waits when that worker has no
/// free slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Wait {
    /// Queue for the worker, up to the checkout time-out.
    #[default]
    Queue,
    /// Fail at once with [`PoolError::WorkerBusy`].
    FailFast,
}

/// The pool as seen by session affinity ([`Pool::affinity`]): calls and
/// streams for one particular worker, pins that defer recycling a worker
/// holding state, `session_close`, and which workers are ready.
///
/// A cheap, cloneable handle; like a [`Pool`] handle, it keeps the pool
/// open while it lives.
///
/// Calls for one worker: with [`Wait::Queue`] they wait their turn for a
/// slot on that worker (bounded by the checkout time-out); with
/// [`Wait::FailFast`] a busy worker is [`PoolError::WorkerBusy`] at once.
/// A worker that is no longer in the pool is [`PoolError::WorkerGone`]. A
/// draining worker still serves them. While an exclusive
/// [`Pool::checkout`] is queued, the least-loaded worker is reserved for
/// it: calls for that worker wait behind the checkout (or are
/// `WorkerBusy`), so session traffic cannot starve exclusive checkouts.
#[derive(Clone)]
pub struct AffinityPort {
    pool: Pool,
}

impl std::fmt::Debug for AffinityPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AffinityPort").field("pool", &self.pool).finish()
    }
}

impl AffinityPort {
    pub(crate) fn new(pool: Pool) -> Self {
        AffinityPort { pool }
    }

    /// Runs one raw request on `worker` (a request without a time-out gets
    /// the pool's `call_timeout`).
    pub async fn call(&self, worker: WorkerId, request: CallRequest, wait: Wait) -> Result<Value, PoolError> {
        let driver = self.pool.driver();
        let span = call::span(&driver.config.name, &request.method);
        let fut = async {
            let slot = self.slot(worker, wait).await?;
            call::run_once(slot.guard, request).await
        };
        tracing::Instrument::instrument(fut, span).await
    }

    /// Starts a streaming call on `worker`; the stream holds a slot on it
    /// until it ends or is dropped.
    pub async fn stream(
        &self,
        worker: WorkerId,
        request: CallRequest,
        wait: Wait,
    ) -> Result<PoolStream, PoolError> {
        self.slot(worker, wait).await?.stream(request).await
    }

    /// Takes a slot on `worker` for one call or stream, without the
    /// request yet: a caller that falls back elsewhere when the worker is
    /// busy or gone keeps its request. The slot goes back when the
    /// [`WorkerSlot`] is used up or dropped; hold it only to make the call.
    pub async fn slot(&self, worker: WorkerId, wait: Wait) -> Result<WorkerSlot, PoolError> {
        let driver = self.pool.driver();
        let guard = driver
            .acquire_on(Checkout::Shared, Some(worker), wait == Wait::FailFast, true)
            .await
            .inspect_err(|e| call::checkout_failed(&driver.label, e))?;
        Ok(WorkerSlot { guard })
    }

    /// Asks the pool to defer recycling `worker` (up to its drain time-out)
    /// while the pin is held; for state that lives in the worker, such as
    /// bound sessions. Returns false if the worker is not in the pool.
    /// Each `pin` must be matched by one [`AffinityPort::unpin`].
    pub fn pin(&self, worker: WorkerId) -> bool {
        self.pool.driver().pin(worker, true)
    }

    /// Releases one [`AffinityPort::pin`].
    pub fn unpin(&self, worker: WorkerId) {
        self.pool.driver().pin(worker, false);
    }

    /// Tells `worker` to drop the state of `session`; a worker no longer
    /// in the pool is [`PoolError::WorkerGone`].
    pub async fn close_session(&self, worker: WorkerId, session: &str) -> Result<(), PoolError> {
        let driver = self.pool.driver();
        let Some(handle) = driver.read(|s| s.worker(worker)) else {
            return Err(PoolError::WorkerGone {
                pool: driver.config.name.clone(),
                worker,
            });
        };
        Ok(handle.close_session(session).await?)
    }

    /// Whether `worker` is in the pool and alive (ready, leased or draining).
    pub fn is_serving(&self, worker: WorkerId) -> bool {
        self.pool.driver().read(|s| s.serving(worker))
    }

    /// The stable address of `worker`, while it is in the pool.
    pub fn address(&self, worker: WorkerId) -> Option<WorkerAddress> {
        let handle = self.pool.driver().read(|s| s.worker(worker))?;
        Some(handle.info().address.clone())
    }

    /// The serving worker (ready, leased or draining) at `address`, if this
    /// pool has one: how a binding written by another front end to a shared
    /// store is mapped to this pool's worker. When several are connected to
    /// the same remote worker, the one with the lowest id.
    pub fn worker_at(&self, address: &WorkerAddress) -> Option<WorkerId> {
        self.pool.driver().read(|s| {
            s.serving_workers()
                .filter(|(_, handle)| handle.info().address == *address)
                .map(|(id, _)| id)
                .min()
        })
    }

    /// Workers ready for new work (not starting, draining or gone).
    pub fn ready_workers(&self) -> Vec<WorkerId> {
        self.pool.driver().read(|s| s.ready_workers())
    }

    /// Waits until a worker is ready for new work (or the pool closes), at
    /// most `timeout`; returns whether one is.
    pub async fn wait_for_ready(&self, timeout: Duration) -> bool {
        let driver = self.pool.driver();
        driver
            .wait_until(Some(deadline(Instant::now(), timeout)), |s| {
                s.is_closed() || s.has_ready_worker()
            })
            .await;
        driver.read(|s| s.has_ready_worker())
    }

    /// `Err(`[`PoolError::PoolClosed`]`)` once the pool is shut down (or
    /// shutting down), the error every call then gets.
    pub fn ensure_open(&self) -> Result<(), PoolError> {
        if self.pool.is_closed() {
            Err(self.pool.driver().closed_error())
        } else {
            Ok(())
        }
    }
}

/// A slot on one worker, held for one call or stream
/// ([`AffinityPort::slot`]); given back when used up or dropped.
pub struct WorkerSlot {
    guard: Guard,
}

impl std::fmt::Debug for WorkerSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerSlot")
            .field("worker", &self.guard.id)
            .finish()
    }
}

impl WorkerSlot {
    /// The worker the slot is on.
    pub fn worker_id(&self) -> WorkerId {
        self.guard.id
    }

    /// Runs one raw request on the slot's worker.
    pub async fn call(self, request: CallRequest) -> Result<Value, PoolError> {
        let span = call::span(&self.guard.owner().config.name, &request.method);
        tracing::Instrument::instrument(call::run_once(self.guard, request), span).await
    }

    /// Starts a streaming call on the slot's worker; the stream keeps the
    /// slot until it ends or is dropped.
    pub async fn stream(self, request: CallRequest) -> Result<PoolStream, PoolError> {
        call::open_stream(Arc::new(self.guard), request).await
    }
}
