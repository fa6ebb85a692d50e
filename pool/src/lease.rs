//! [`Lease`]: a worker (or one slot of it) checked out for a sequence of
//! calls; the calls themselves run on the shared call path (`call.rs`).

use std::sync::Arc;

use portpool_transport::{CallRequest, Value, WorkerId, WorkerInfo};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::call::{self, typed_call, PoolStream};
use crate::driver::Guard;
use crate::{Checkout, PoolError};

/// A checked-out worker (see [`crate::Pool::checkout`]). Calls through it
/// all go to the same worker. Dropping the lease returns the worker, also
/// on panic and when the owning future is cancelled; a stream opened
/// through the lease and still open keeps the checkout until the stream
/// ends or is dropped.
pub struct Lease {
    /// Shared with the streams opened through the lease: the slot comes
    /// back when the last of them is gone.
    guard: Arc<Guard>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("worker", &self.guard.id)
            .field("pid", &self.pid())
            .field("kind", &self.guard.kind)
            .finish()
    }
}

impl Lease {
    pub(crate) fn new(guard: Guard) -> Self {
        Lease {
            guard: Arc::new(guard),
        }
    }

    /// The leased worker's id.
    pub fn worker_id(&self) -> WorkerId {
        self.guard.id
    }

    /// The leased worker's process id.
    pub fn pid(&self) -> Option<u32> {
        self.guard.worker.info().pid
    }

    /// What the lease holds.
    pub fn kind(&self) -> Checkout {
        self.guard.kind
    }

    /// The leased worker's hello and limits.
    pub fn worker_info(&self) -> &WorkerInfo {
        self.guard.worker.info()
    }

    /// Whether the leased worker is still alive.
    pub fn is_alive(&self) -> bool {
        self.guard.worker.is_alive()
    }

    /// Calls `method` on the leased worker with serde-typed params and result.
    pub async fn call<P, R>(&self, method: &str, params: &P) -> Result<R, PoolError>
    where
        P: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        typed_call(method, params, |request| self.call_raw(request)).await
    }

    /// Calls on the leased worker with a raw request.
    pub async fn call_raw(&self, request: CallRequest) -> Result<Value, PoolError> {
        let span = call::span(&self.guard.owner().config.name, &request.method);
        tracing::Instrument::instrument(call::run(&self.guard, request), span).await
    }

    /// Starts a streaming call on the leased worker. The stream holds the
    /// lease's checkout too: if the lease is dropped first, the worker (or
    /// slot) comes back only when the stream ends or is dropped.
    pub async fn stream(&self, request: CallRequest) -> Result<PoolStream, PoolError> {
        call::open_stream(self.guard.clone(), request).await
    }
}
