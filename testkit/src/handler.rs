//! Handlers: the Rust closures a fake worker runs for each method.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use portpool_transport::{RemoteError, Value, WorkerId};

use crate::lock;

/// What a handler returns: a result, or the application error it "raised"
/// (which the caller sees as [`portpool_transport::CallError::Remote`]).
pub type HandlerResult = Result<Value, RemoteError>;

type BoxFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;
type CallFn = dyn Fn(CallContext, Value) -> BoxFuture + Send + Sync;
type StreamFn = dyn Fn(CallContext, Value) -> Vec<HandlerResult> + Send + Sync;

/// One registered method.
#[derive(Clone)]
pub(crate) enum Handler {
    /// A plain call (sync closures are wrapped in a ready future).
    Call(Arc<CallFn>),
    /// A streaming call: its items, in order; the first `Err` ends the stream.
    Stream(Arc<StreamFn>),
}

impl fmt::Debug for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Handler::Call(_) => f.write_str("Handler::Call"),
            Handler::Stream(_) => f.write_str("Handler::Stream"),
        }
    }
}

impl Handler {
    pub(crate) fn sync<F>(f: F) -> Self
    where
        F: Fn(CallContext, Value) -> HandlerResult + Send + Sync + 'static,
    {
        Handler::Call(Arc::new(move |ctx, params| {
            let result = f(ctx, params);
            Box::pin(std::future::ready(result))
        }))
    }

    pub(crate) fn asynchronous<F, Fut>(f: F) -> Self
    where
        F: Fn(CallContext, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        Handler::Call(Arc::new(move |ctx, params| Box::pin(f(ctx, params))))
    }

    pub(crate) fn stream<F>(f: F) -> Self
    where
        F: Fn(CallContext, Value) -> Vec<HandlerResult> + Send + Sync + 'static,
    {
        Handler::Stream(Arc::new(f))
    }
}

/// The methods of a fake worker, by name.
pub(crate) type Handlers = HashMap<String, Handler>;

/// What a context-aware handler learns about its call.
///
/// It also gives access to the worker's per-session state, which mirrors
/// `ctx.session` of the Python runtime: kept per worker, per session id,
/// until `close_session` names it.
#[derive(Clone)]
pub struct CallContext {
    /// The worker running the call.
    pub worker: WorkerId,
    /// The method called.
    pub method: String,
    /// The call's session, if any.
    pub session: Option<String>,
    /// The call's position among the calls this worker received (0-based).
    pub call_index: u64,
    pub(crate) sessions: Arc<Mutex<HashMap<String, Value>>>,
}

impl fmt::Debug for CallContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallContext")
            .field("worker", &self.worker)
            .field("method", &self.method)
            .field("session", &self.session)
            .field("call_index", &self.call_index)
            .finish_non_exhaustive()
    }
}

impl CallContext {
    /// The state this worker keeps for the call's session (`None` without a
    /// session or before anything was stored).
    pub fn session_state(&self) -> Option<Value> {
        let session = self.session.as_ref()?;
        lock(&self.sessions).get(session).cloned()
    }

    /// Stores state for the call's session on this worker. Does nothing for
    /// a call without a session.
    pub fn set_session_state(&self, value: Value) {
        if let Some(session) = &self.session {
            lock(&self.sessions).insert(session.clone(), value);
        }
    }
}

/// Builds a [`RemoteError`] (what a handler "raises"), e.g.
/// `remote_error("ValueError", "bad input")`.
pub fn remote_error(kind: impl Into<String>, message: impl Into<String>) -> RemoteError {
    RemoteError {
        kind: kind.into(),
        message: message.into(),
        traceback: None,
        data: None,
    }
}
