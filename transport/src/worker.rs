use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;
use portpool_protocol::{Hello, Value};

use crate::{CallError, CrashCause, LaunchError, WorkerAddress, WorkerExit, WorkerId};

/// One call: a method, its params, and optional session, deadline and trace.
#[derive(Debug, Clone, PartialEq)]
pub struct CallRequest {
    /// The handler to run.
    pub method: String,
    /// Its argument.
    pub params: Value,
    /// The session whose state the handler sees.
    pub session: Option<String>,
    /// Give up (send `cancel`, return [`CallError::Timeout`]) after this long.
    /// For a stream the deadline covers the whole stream.
    pub timeout: Option<Duration>,
    /// Opaque trace context passed to the worker.
    pub trace: Option<String>,
}

impl CallRequest {
    /// A call of `method` with `params`, no session, no deadline.
    pub fn new(method: impl Into<String>, params: impl Into<Value>) -> Self {
        CallRequest {
            method: method.into(),
            params: params.into(),
            session: None,
            timeout: None,
            trace: None,
        }
    }

    /// Runs the call in `session`.
    pub fn with_session(mut self, session: impl Into<String>) -> Self {
        self.session = Some(session.into());
        self
    }

    /// Sets the call's deadline, counted from when it is sent.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Attaches a trace context.
    pub fn with_trace(mut self, trace: impl Into<String>) -> Self {
        self.trace = Some(trace.into());
        self
    }
}

/// What is known about a running worker.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerInfo {
    /// Its id, chosen by whoever launched it.
    pub id: WorkerId,
    /// Its process id, if it is a process.
    pub pid: Option<u32>,
    /// The hello it sent.
    pub hello: Hello,
    /// How many calls it runs at once: its hello's `max_concurrency`,
    /// capped by the launcher's configuration.
    pub max_concurrency: usize,
    /// Its stable name across front ends (see [`WorkerAddress`]).
    pub address: WorkerAddress,
    /// `HOST:PORT` of a worker reached over the network; `None` for a
    /// local process.
    pub endpoint: Option<String>,
}

impl WorkerInfo {
    /// The info of local worker `id` (address `local:…`, no endpoint).
    pub fn local(id: WorkerId, pid: Option<u32>, hello: Hello, max_concurrency: usize) -> Self {
        WorkerInfo {
            id,
            pid,
            hello,
            max_concurrency,
            address: WorkerAddress::local(id),
            endpoint: None,
        }
    }
}

/// Items of a streaming call: each chunk's data, then the end of the stream.
/// An error item (the handler raised, the worker crashed) is the last item.
/// The final response's result is not an item (it is nil for generator
/// handlers), so streaming a plain handler yields no items.
/// Dropping the stream before its end cancels the call.
pub type CallStream = Pin<Box<dyn Stream<Item = Result<Value, CallError>> + Send>>;

/// A running worker that many callers use at once.
///
/// Every call ends exactly once: with its result or one [`CallError`]; a
/// caller never receives another call's reply. Dropping a call's future
/// cancels the call.
///
/// An implementation honours [`CallRequest::timeout`]: a call (or the
/// whole of a stream) still running when its deadline passes is cancelled
/// and ends with [`CallError::Timeout`] naming the worker, the method and
/// the deadline (`after`), within the granularity of the timer. The pool
/// relies on it: it starts no timer of its own for a call, so a worker
/// that ignores the deadline lets a call run past it.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Worker: Send + Sync + std::fmt::Debug {
    /// Id, pid, hello and concurrency.
    fn info(&self) -> &WorkerInfo;

    /// Calls (and streams) sent and not yet finished.
    fn in_flight(&self) -> usize;

    /// False once the worker has died or been shut down.
    fn is_alive(&self) -> bool;

    /// Resident memory of the worker process in bytes, when known.
    fn rss_bytes(&self) -> Option<u64>;

    /// CPU time (user + system) the worker process has used so far, when
    /// known. Heartbeats use its progress to tell a busy worker from a
    /// frozen one.
    fn cpu_time(&self) -> Option<Duration> {
        None
    }

    /// Replies and chunks that arrived for unknown or cancelled requests and
    /// were dropped.
    fn discarded_replies(&self) -> u64 {
        0
    }

    /// The last lines the worker wrote to stderr (empty when unknown).
    fn stderr_tail(&self) -> String {
        String::new()
    }

    /// Kills the worker at once (a frozen or otherwise unfit worker): every
    /// in-flight call fails with [`CallError::WorkerCrashed`] carrying
    /// `cause` and `reason`, and [`Worker::closed`] resolves.
    fn kill(&self, cause: CrashCause, reason: &str);

    /// Runs one call to completion, or until `request.timeout` passes
    /// ([`CallError::Timeout`]).
    async fn call(&self, request: CallRequest) -> Result<Value, CallError>;

    /// Starts a streaming call. Errors here mean the call was not sent.
    /// When `request.timeout` passes before the stream ends, its last item
    /// is [`CallError::Timeout`].
    async fn stream(&self, request: CallRequest) -> Result<CallStream, CallError>;

    /// Sends a ping and waits up to `timeout` for the pong; returns the
    /// round-trip time. A missed pong is [`CallError::Timeout`].
    async fn ping(&self, timeout: Duration) -> Result<Duration, CallError>;

    /// Tells the worker to drop the state of `session`.
    async fn close_session(&self, session: &str) -> Result<(), CallError>;

    /// Stops the worker: asks it to exit, waits up to `grace`, then
    /// terminates and finally kills it. Returns how it ended. Idempotent.
    async fn shutdown(&self, grace: Duration) -> WorkerExit;

    /// Resolves when the worker has ended, for any reason.
    async fn closed(&self) -> WorkerExit;
}

/// Starts workers.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Launcher: Send + Sync {
    /// Starts worker `id` and returns it once it is ready (its hello
    /// arrived), or the diagnosis of why it could not start.
    async fn launch(&self, id: WorkerId) -> Result<Box<dyn Worker>, LaunchError>;

    /// [`launch`](Self::launch) bounded by `timeout`. When no hello came in
    /// time the error is [`LaunchError::InitTimeout`], with the pid and the
    /// stderr tail where the launcher knows them (the process launcher
    /// does). The default wraps `launch` in a timer and knows neither.
    async fn launch_within(&self, id: WorkerId, timeout: Duration) -> Result<Box<dyn Worker>, LaunchError> {
        match tokio::time::timeout(timeout, self.launch(id)).await {
            Ok(launched) => launched,
            Err(_elapsed) => Err(LaunchError::InitTimeout {
                worker: id,
                pid: None,
                after: timeout,
                stderr_tail: String::new(),
            }),
        }
    }
}
