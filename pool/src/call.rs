//! The path of one call or stream on a held slot, shared by
//! [`Pool`](crate::Pool), [`Lease`](crate::Lease) and the
//! [`AffinityPort`](crate::AffinityPort) (and so by sessions).
//!
//! One call, from a held slot on:
//! 1. [`typed_call`] (typed calls only) encodes the params into the
//!    request; the method is copied once, into the request;
//! 2. [`run`] gives the request the pool's `call_timeout` unless it has a
//!    deadline of its own, and hands it to the worker, which owns the one
//!    timer of the call (the [`Worker`](portpool_transport::Worker)
//!    contract: it honours `request.timeout`);
//! 3. the outcome is recorded once (breaker, served count, recycling,
//!    metrics) and the slot goes back when its guard drops;
//! 4. [`typed_call`] decodes the result, borrowing the caller's method
//!    name for an error message.
//!
//! A stream ([`open_stream`]) takes the same steps, the outcome recorded
//! when the stream ends or is dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures::Stream;
use portpool_transport::{CallError, CallRequest, CallStream, Value, WorkerId};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;

use crate::driver::{Driver, Guard};
use crate::error::call_outcome;
use crate::{metrics, PoolError};

/// Runs a serde-typed call: encodes `params` into a [`CallRequest`] for
/// `method`, runs it with `run` (any of the raw-call methods, such as
/// [`Pool::call_raw`](crate::Pool::call_raw) or a session's), and decodes
/// the result as `R`. Encode and decode failures are
/// [`PoolError::Encode`] and [`PoolError::Decode`], naming the method.
///
/// What [`Pool::call`](crate::Pool::call) and
/// [`Lease::call`](crate::Lease::call) are made of, for layers above the
/// pool that add their own raw call.
pub async fn typed_call<P, R, E, F, Fut>(method: &str, params: &P, run: F) -> Result<R, E>
where
    P: Serialize + ?Sized,
    R: DeserializeOwned,
    E: From<PoolError>,
    F: FnOnce(CallRequest) -> Fut,
    Fut: Future<Output = Result<Value, E>>,
{
    let params = portpool_protocol::to_value(params).map_err(|e| PoolError::Encode {
        method: method.to_owned(),
        reason: e.to_string(),
    })?;
    let value = run(CallRequest::new(method, params)).await?;
    portpool_protocol::from_value(value).map_err(|e| {
        E::from(PoolError::Decode {
            method: method.to_owned(),
            reason: e.to_string(),
        })
    })
}

/// The `portpool.call` span of one call; `worker` is recorded once a slot
/// is held.
pub(crate) fn span(pool: &str, method: &str) -> tracing::Span {
    tracing::info_span!("portpool.call", pool = %pool, method = %method, worker = tracing::field::Empty)
}

/// Records a checkout that failed, for a call (metrics and a debug log).
pub(crate) fn checkout_failed(pool: &::metrics::SharedString, error: &PoolError) {
    metrics::call(pool, error.outcome());
    tracing::debug!(%error, "checkout failed");
}

/// Gives `request` the pool's `call_timeout` unless it has a deadline of
/// its own; returns whether the deadline is the caller's own and shorter
/// than the pool would have imposed: any deadline when the pool has no
/// `call_timeout`, else one shorter than it. A time-out under such a
/// deadline is the caller's budget running out, not a sign of a sick
/// worker: it does not count for the breaker.
fn apply_deadline(request: &mut CallRequest, call_timeout: Option<Duration>) -> bool {
    match (request.timeout, call_timeout) {
        (Some(own), Some(pool)) => own < pool,
        (Some(_), None) => true,
        (None, pool) => {
            request.timeout = pool;
            false
        }
    }
}

/// Runs one call on the guard's worker under the call's one deadline (the
/// worker's timer) and records its outcome (breaker, served count,
/// metrics). The slot goes back when the caller drops the guard.
pub(crate) async fn run(guard: &Guard, request: CallRequest) -> Result<Value, PoolError> {
    let (res, caller_deadline, t0) = call_worker(guard, request).await;
    let driver = guard.owner();
    driver.finish_call(guard.id, guard.take_probe(), &res, caller_deadline);
    record(driver, t0, res)
}

/// [`run`] on a slot checked out for this one call (a pool's call): the
/// outcome is recorded and the slot given back in one turn of the
/// scheduler's lock instead of two. Dropped before the end (cancelled),
/// the guard gives the slot back as always.
pub(crate) async fn run_once(guard: Guard, request: CallRequest) -> Result<Value, PoolError> {
    let (res, caller_deadline, t0) = call_worker(&guard, request).await;
    let driver = Arc::clone(guard.owner());
    driver.finish_and_release(guard, &res, caller_deadline);
    record(&driver, t0, res)
}

/// Hands `request` to the guard's worker under the call's one deadline;
/// returns the outcome, whether the deadline is the caller's own, and when
/// the call started.
async fn call_worker(guard: &Guard, mut request: CallRequest) -> (Result<Value, CallError>, bool, Instant) {
    let caller_deadline = apply_deadline(&mut request, guard.owner().config.call_timeout);
    tracing::Span::current().record("worker", tracing::field::display(guard.id));
    let t0 = Instant::now();
    let res = guard.worker.call(request).await;
    (res, caller_deadline, t0)
}

/// The metrics (and debug log) of a finished call.
fn record(driver: &Driver, t0: Instant, res: Result<Value, CallError>) -> Result<Value, PoolError> {
    metrics::call_duration(&driver.label, t0.elapsed());
    metrics::call(&driver.label, res.as_ref().map_or_else(call_outcome, |_| "ok"));
    if let Err(e) = &res {
        tracing::debug!(error = %e, "call failed");
    }
    res.map_err(PoolError::Call)
}

/// Opens a stream on the guard's worker; the stream holds (its share of)
/// the slot until it ends or is dropped.
pub(crate) async fn open_stream(
    guard: Arc<Guard>,
    mut request: CallRequest,
) -> Result<PoolStream, PoolError> {
    let driver = guard.owner();
    let caller_deadline = apply_deadline(&mut request, driver.config.call_timeout);
    match guard.worker.stream(request).await {
        Ok(inner) => Ok(PoolStream {
            inner: Some(inner),
            worker: guard.id,
            guard: Some(guard),
            started: Instant::now(),
            caller_deadline,
        }),
        Err(e) => {
            metrics::call(&driver.label, call_outcome(&e));
            driver.finish_call(guard.id, guard.take_probe(), &Err(e.clone()), caller_deadline);
            Err(PoolError::Call(e))
        }
    }
}

/// The chunks of a streaming call. It holds its worker slot until the
/// stream ends or is dropped, whether it was opened by the pool, through
/// a [`Lease`](crate::Lease) or for one worker; dropping it early cancels
/// the call.
pub struct PoolStream {
    /// `None` once the stream ended.
    inner: Option<CallStream>,
    /// The slot, shared with a lease the stream was opened through; `None`
    /// once the stream ended.
    guard: Option<Arc<Guard>>,
    worker: WorkerId,
    started: Instant,
    /// The stream runs under a deadline its caller chose (see
    /// `apply_deadline`).
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
        let Some(guard) = self.guard.take() else {
            return;
        };
        let driver = guard.owner();
        driver.finish_call(self.worker, guard.take_probe(), res, self.caller_deadline);
        let name = &driver.label;
        metrics::call_duration(name, self.started.elapsed());
        metrics::call(name, res.as_ref().map_or_else(call_outcome, |_| "ok"));
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
