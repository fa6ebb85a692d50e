use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures::Stream;
use portpool_transport::{CallError, CallRequest, CallStream, Value, Worker, WorkerId, WorkerInfo};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;

use crate::driver::{Driver, Guard};
use crate::error::call_outcome;
use crate::{metrics, Checkout, PoolError};

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
        let request = CallRequest::new(method, encode(method, params)?);
        decode(method, self.call_raw(request).await?)
    }

    /// Calls on the leased worker with a raw request.
    pub async fn call_raw(&self, request: CallRequest) -> Result<Value, PoolError> {
        let span = call_span(&self.guard.owner().config.name, &request.method);
        tracing::Instrument::instrument(run_call(&self.guard, request), span).await
    }

    /// Starts a streaming call on the leased worker. The stream holds the
    /// lease's checkout too: if the lease is dropped first, the worker (or
    /// slot) comes back only when the stream ends or is dropped.
    pub async fn stream(&self, request: CallRequest) -> Result<PoolStream, PoolError> {
        let guard = &self.guard;
        open_stream(
            guard.owner().clone(),
            guard.worker.clone(),
            guard.id,
            Some(guard.clone()),
            request,
        )
        .await
    }
}

pub(crate) fn call_span(pool: &str, method: &str) -> tracing::Span {
    tracing::info_span!("portpool.call", pool = %pool, method = %method, worker = tracing::field::Empty)
}

pub(crate) fn encode<P: Serialize + ?Sized>(method: &str, params: &P) -> Result<Value, PoolError> {
    portpool_protocol::to_value(params).map_err(|e| PoolError::Encode {
        method: method.to_owned(),
        reason: e.to_string(),
    })
}

pub(crate) fn decode<R: DeserializeOwned>(method: &str, value: Value) -> Result<R, PoolError> {
    portpool_protocol::from_value(value).map_err(|e| PoolError::Decode {
        method: method.to_owned(),
        reason: e.to_string(),
    })
}

/// Whether `request` runs under a deadline its caller chose that the pool
/// would not have imposed: any deadline when the pool has no
/// `call_timeout`, else one shorter than it. A time-out under such a
/// deadline is the caller's budget running out, not a sign of a sick
/// worker: it does not count for the breaker.
fn callers_own_deadline(request: &CallRequest, call_timeout: Option<std::time::Duration>) -> bool {
    match (request.timeout, call_timeout) {
        (Some(own), Some(pool)) => own < pool,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Runs one call on the guard's worker, with the default call time-out,
/// and records its outcome (breaker, served count, metrics).
pub(crate) async fn run_call(guard: &Guard, mut request: CallRequest) -> Result<Value, PoolError> {
    let shared = guard.owner();
    let cfg = &shared.config;
    let caller_deadline = callers_own_deadline(&request, cfg.call_timeout);
    if request.timeout.is_none() {
        request.timeout = cfg.call_timeout;
    }
    tracing::Span::current().record("worker", tracing::field::display(guard.id));
    let t0 = Instant::now();
    let res = match request.timeout {
        Some(after) => {
            let method = request.method.clone();
            match tokio::time::timeout(after, guard.worker.call(request)).await {
                Ok(res) => res,
                Err(_) => Err(CallError::Timeout {
                    worker: guard.id,
                    method,
                    after,
                }),
            }
        }
        None => guard.worker.call(request).await,
    };
    shared.finish_call(guard.id, guard.take_probe(), &res, caller_deadline);
    metrics::call_duration(&cfg.name, t0.elapsed());
    metrics::call(&cfg.name, res.as_ref().map_or_else(call_outcome, |_| "ok"));
    if let Err(e) = &res {
        tracing::debug!(error = %e, "call failed");
    }
    res.map_err(PoolError::Call)
}

pub(crate) async fn open_stream(
    shared: Arc<Driver>,
    on: Arc<dyn Worker>,
    worker: WorkerId,
    owned: Option<Arc<Guard>>,
    mut request: CallRequest,
) -> Result<PoolStream, PoolError> {
    let caller_deadline = callers_own_deadline(&request, shared.config.call_timeout);
    if request.timeout.is_none() {
        request.timeout = shared.config.call_timeout;
    }
    match on.stream(request).await {
        Ok(inner) => Ok(PoolStream {
            inner: Some(inner),
            guard: owned,
            shared,
            worker,
            started: Instant::now(),
            caller_deadline,
        }),
        Err(e) => {
            let probe = owned.as_ref().is_some_and(|g| g.take_probe());
            metrics::call(&shared.config.name, call_outcome(&e));
            shared.finish_call(worker, probe, &Err(e.clone()), caller_deadline);
            Err(PoolError::Call(e))
        }
    }
}

/// The chunks of a streaming call. It holds its worker slot until the
/// stream ends or is dropped, whether it was opened by the pool or through
/// a [`Lease`]; dropping it early cancels the call.
pub struct PoolStream {
    inner: Option<CallStream>,
    guard: Option<Arc<Guard>>,
    shared: Arc<Driver>,
    worker: WorkerId,
    started: Instant,
    /// The stream runs under a deadline its caller chose (see
    /// `callers_own_deadline`).
    caller_deadline: bool,
}

impl std::fmt::Debug for PoolStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolStream")
            .field("worker", &self.worker)
            .field("done", &self.inner.is_none())
            .finish()
    }
}

impl PoolStream {
    /// The worker producing the stream.
    pub fn worker_id(&self) -> WorkerId {
        self.worker
    }

    fn finish(&mut self, res: &Result<Value, CallError>) {
        self.inner = None;
        let probe = self.guard.as_ref().is_some_and(|g| g.take_probe());
        self.shared
            .finish_call(self.worker, probe, res, self.caller_deadline);
        let name = &self.shared.config.name;
        metrics::call_duration(name, self.started.elapsed());
        metrics::call(name, res.as_ref().map_or_else(call_outcome, |_| "ok"));
        self.guard = None;
    }
}

impl Stream for PoolStream {
    type Item = Result<Value, PoolError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(inner.as_mut().poll_next(cx)) {
            Some(Ok(v)) => Poll::Ready(Some(Ok(v))),
            Some(Err(e)) => {
                let res = Err(e);
                this.finish(&res);
                Poll::Ready(res.err().map(|e| Err(PoolError::Call(e))))
            }
            None => {
                this.finish(&Ok(Value::Nil));
                Poll::Ready(None)
            }
        }
    }
}
