//! A `tower::Service` over a [`Pool`], behind the `tower` feature.

use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;

use crate::{CallRequest, Pool, PoolError, Value};

/// One request to a [`PoolService`]: a method, its params and, optionally, a
/// session and a time-out. Converts into a [`CallRequest`].
#[derive(Debug, Clone, PartialEq)]
pub struct PoolRequest {
    /// The handler to run.
    pub method: String,
    /// Its argument.
    pub params: Value,
    /// The session whose state the handler sees.
    pub session: Option<String>,
    /// The call's deadline (else the pool's `call_timeout`).
    pub timeout: Option<Duration>,
}

impl PoolRequest {
    /// A request of `method` with `params`, no session, no time-out.
    pub fn new(method: impl Into<String>, params: impl Into<Value>) -> Self {
        PoolRequest {
            method: method.into(),
            params: params.into(),
            session: None,
            timeout: None,
        }
    }

    /// Runs the request in `session`.
    pub fn with_session(mut self, session: impl Into<String>) -> Self {
        self.session = Some(session.into());
        self
    }

    /// Sets the call's deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

impl From<PoolRequest> for CallRequest {
    fn from(request: PoolRequest) -> Self {
        let mut call = CallRequest::new(request.method, request.params);
        call.session = request.session;
        call.timeout = request.timeout;
        call
    }
}

impl From<CallRequest> for PoolRequest {
    fn from(call: CallRequest) -> Self {
        PoolRequest {
            method: call.method,
            params: call.params,
            session: call.session,
            timeout: call.timeout,
        }
    }
}

/// A [`Pool`] as a `tower::Service<PoolRequest>` whose response is the
/// call's [`Value`] and whose error is a [`PoolError`].
///
/// `poll_ready` is always ready: the pool has its own bounded queue and
/// fails fast (queue full, breaker open, pool closed) in `call`, so tower's
/// back-pressure is not needed; add `tower::limit` layers for tighter caps.
/// Cloning is cheap (the pool is a shared handle). A [`CallRequest`]
/// converts with `PoolRequest::from` (e.g. in a `map_request` layer).
///
/// ```
/// use std::time::Duration;
///
/// use portpool::{Pool, PoolRequest, PoolService, Value};
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
/// let reply = service.oneshot(PoolRequest::new("echo", "hi")).await?;
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

impl tower::Service<PoolRequest> for PoolService {
    type Response = Value;
    type Error = PoolError;
    type Future = BoxFuture<'static, Result<Value, PoolError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), PoolError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: PoolRequest) -> Self::Future {
        let pool = self.pool.clone();
        Box::pin(async move { pool.call_raw(request.into()).await })
    }
}
