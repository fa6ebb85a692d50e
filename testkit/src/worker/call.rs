//! One call's life: running its handler, ending it exactly once, and the
//! state of a streaming call.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use portpool_transport::{CallError, Value};
use tokio::time::{sleep, Instant};

use super::shared::{Death, Interrupt, Shared};
use crate::handler::{CallContext, Handler, HandlerResult};
use crate::record::CallOutcome;
use crate::remote_error;
use crate::script::{Action, Plan};

fn no_method(method: &str) -> HandlerResult {
    Err(remote_error(
        "MethodNotFound",
        format!("no method named {method:?}"),
    ))
}

/// Runs a handler for `call`; a streaming handler's items are collected into
/// an array (the first error wins).
pub(super) async fn run_call(handler: Option<Handler>, ctx: CallContext, params: Value) -> HandlerResult {
    match handler {
        None => no_method(&ctx.method),
        Some(Handler::Call(f)) => f(ctx, params).await,
        Some(Handler::Stream(f)) => f(ctx, params)
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
    }
}

/// Runs a handler for `stream`. Like the process transport, a plain
/// handler's result is not a chunk: the stream ends empty (or with its error).
async fn run_stream(handler: Option<Handler>, ctx: CallContext, params: Value) -> Vec<HandlerResult> {
    match handler {
        None => vec![no_method(&ctx.method)],
        Some(Handler::Call(f)) => match f(ctx, params).await {
            Ok(_) => Vec::new(),
            Err(error) => vec![Err(error)],
        },
        Some(Handler::Stream(f)) => f(ctx, params),
    }
}

/// Ends its call exactly once: explicitly, or as cancelled when dropped.
pub(super) struct CallGuard {
    pub(super) shared: Arc<Shared>,
    pub(super) index: u64,
    pub(super) method: String,
    pub(super) ended: bool,
}

impl CallGuard {
    pub(super) fn finish(&mut self, outcome: CallOutcome) {
        if !self.ended {
            self.ended = true;
            self.shared.end_call(self.index, outcome);
        }
    }

    pub(super) fn ok(&mut self, value: Value) -> Result<Value, CallError> {
        self.finish(CallOutcome::Ok);
        Ok(value)
    }

    pub(super) fn remote(&mut self, error: portpool_transport::RemoteError) -> CallError {
        self.finish(CallOutcome::Remote(error.kind.clone()));
        CallError::Remote {
            worker: self.shared.id(),
            method: self.method.clone(),
            error: Box::new(error),
        }
    }

    pub(super) fn interrupted(&mut self, interrupt: Interrupt, timeout: Option<Duration>) -> CallError {
        match interrupt {
            Interrupt::Died(death) => {
                self.finish(match death {
                    Death::Crashed { .. } => CallOutcome::Crashed,
                    Death::Closed { .. } => CallOutcome::Closed,
                });
                self.shared.death_error(&death)
            }
            Interrupt::Timeout => {
                self.finish(CallOutcome::Timeout);
                CallError::Timeout {
                    worker: self.shared.id(),
                    method: self.method.clone(),
                    after: timeout.unwrap_or_default(),
                }
            }
        }
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.finish(CallOutcome::Cancelled);
    }
}

/// The state of one streaming call.
pub(super) struct StreamCall {
    pub(super) guard: CallGuard,
    pub(super) timeout: Option<Duration>,
    pub(super) deadline: Option<Instant>,
    /// What is needed to start the handler; taken on the first poll.
    pub(super) start: Option<(Plan, Option<Handler>, CallContext, Value)>,
    pub(super) items: VecDeque<HandlerResult>,
    pub(super) done: bool,
}

impl StreamCall {
    pub(super) async fn next_item(&mut self) -> Option<Result<Value, CallError>> {
        if self.done {
            return None;
        }
        let shared = Arc::clone(&self.guard.shared);
        let step = if let Some((plan, handler, ctx, params)) = self.start.take() {
            let work = async move {
                if !plan.delay.is_zero() {
                    sleep(plan.delay).await;
                }
                match plan.action {
                    Action::Run => run_stream(handler, ctx, params).await,
                    Action::Fail(error) => vec![Err(error)],
                    Action::Hang | Action::Crash | Action::Garbage => std::future::pending().await,
                }
            };
            shared
                .race(work, self.deadline)
                .await
                .map(|items| self.items = items.into())
        } else {
            let interval = shared.script.chunk_interval;
            let work = async move {
                if !interval.is_zero() {
                    sleep(interval).await;
                }
            };
            shared.race(work, self.deadline).await
        };
        if let Err(interrupt) = step {
            self.done = true;
            return Some(Err(self.guard.interrupted(interrupt, self.timeout)));
        }
        match self.items.pop_front() {
            Some(Ok(value)) => Some(Ok(value)),
            Some(Err(error)) => {
                self.done = true;
                Some(Err(self.guard.remote(error)))
            }
            None => {
                self.done = true;
                self.guard.finish(CallOutcome::Ok);
                None
            }
        }
    }
}
