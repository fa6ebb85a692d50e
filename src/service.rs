//! A `tower::Service` over a [`Pool`], behind the `tower` feature.

use futures::future::BoxFuture;
use std::task::{Context, Poll};

use crate::{CallRequest, Pool, PoolError, Value};

/// A [`Pool`] as a `tower::Service<CallRequest>` whose response is the
/// call's [`Value`] and whose error is a [`PoolError`].
///
/// `poll_ready` is always ready: the pool has its own bounded queue and
/// fails fast (queue full, breaker open, pool closed) in `call`, so tower's
/// back-pressure is not needed; add `tower::limit` layers for tighter caps.
/// Cloning is cheap (the pool is a shared handle). The request is a
/// [`CallRequest`]: method, params, and optionally a session, a time-out
/// (else the pool's `call_timeout`) and a trace context.
///
/// ```
/// use std::time::Duration;
///
/// use portpool::{CallRequest, Pool, PoolService, Value};
/// use portpool_testkit::FakeLauncher;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower::BoxError> {
/// let launcher = FakeLauncher::new().handler("echo", |params: Value| Ok(params));
/// let pool = Pool::builder(launcher).workers(1).build().await?;
///
/// let service = ServiceBuilder::new()
///     .timeout(Duration::from_secs(5))
///     .service(PoolService::new(pool));
/// let reply = service.oneshot(CallRequest::new("echo", "hi")).await?;
/// assert_eq!(reply, Value::from("hi"));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PoolService {
    pool: Pool,
}

impl PoolService {
    /// Wraps `pool`.
    pub fn new(pool: Pool) -> Self {
        PoolService { pool }
    }

    /// The wrapped pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Unwraps the pool.
    pub fn into_inner(self) -> Pool {
        self.pool
    }
}

impl From<Pool> for PoolService {
    fn from(pool: Pool) -> Self {
        PoolService::new(pool)
    }
}

impl tower::Service<CallRequest> for PoolService {
    type Response = Value;
    type Error = PoolError;
    type Future = BoxFuture<'static, Result<Value, PoolError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), PoolError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: CallRequest) -> Self::Future {
        let pool = self.pool.clone();
        Box::pin(async move { pool.call_raw(request).await })
    }
}
