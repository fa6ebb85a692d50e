//! The state a fake worker shares with its calls and handles: how it ended,
//! what it received, and the waiting on changes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portpool_transport::{CallError, CallRequest, CrashCause, Value, WorkerExit, WorkerId, WorkerInfo};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

use super::call::CallGuard;
use crate::handler::{CallContext, Handlers};
use crate::record::{CallOutcome, FakeEvent, ReceivedCall};
use crate::script::{Action, Plan, WorkerScript};
use crate::{lock, EventRecorder};

/// Exit of a worker killed by the host (SIGKILL), e.g. when dropped.
pub(super) const KILLED: WorkerExit = WorkerExit {
    code: None,
    signal: Some(9),
};

/// Exit of a worker terminated when a shutdown's grace ran out (SIGTERM).
pub(super) const TERMINATED: WorkerExit = WorkerExit {
    code: None,
    signal: Some(15),
};

/// Default exit of a crashed fake worker.
const CRASH_EXIT: WorkerExit = WorkerExit {
    code: Some(101),
    signal: None,
};

/// How a fake worker ended.
#[derive(Debug, Clone)]
pub(super) enum Death {
    /// A fault: in-flight and later calls get `CallError::WorkerCrashed`.
    Crashed {
        cause: CrashCause,
        reason: String,
        exit: WorkerExit,
    },
    /// Shut down or dropped: calls get `CallError::WorkerClosed`.
    Closed { reason: String, exit: WorkerExit },
}

impl Death {
    pub(super) fn exit(&self) -> WorkerExit {
        match self {
            Death::Crashed { exit, .. } | Death::Closed { exit, .. } => *exit,
        }
    }
}

/// Why a call stopped waiting for its handler.
pub(super) enum Interrupt {
    Died(Death),
    Timeout,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) death: Option<Death>,
    pub(super) shutting_down: bool,
    pub(super) next_call: u64,
    pub(super) in_flight: usize,
    pub(super) peak_in_flight: usize,
    pub(super) calls: Vec<ReceivedCall>,
    pub(super) pings: u64,
    pub(super) session_closes: Vec<String>,
    pub(super) shutdowns: Vec<Duration>,
    pub(super) hanging: bool,
    pub(super) ignore_pings: bool,
    pub(super) rss: Option<u64>,
}

pub(super) struct Shared {
    pub(super) info: WorkerInfo,
    pub(super) script: WorkerScript,
    pub(super) handlers: Handlers,
    pub(super) state: Mutex<State>,
    /// Bumped after every change of `state`; waiters re-check their condition.
    pub(super) changed: watch::Sender<u64>,
    pub(super) events: EventRecorder<FakeEvent>,
    pub(super) sessions: Arc<Mutex<HashMap<String, Value>>>,
}

impl Shared {
    pub(super) fn id(&self) -> WorkerId {
        self.info.id
    }

    pub(super) fn bump(&self) {
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Waits until `pred` holds for the state.
    pub(super) async fn wait_state(&self, pred: impl Fn(&State) -> bool) {
        let mut changed = self.changed.subscribe();
        loop {
            if pred(&lock(&self.state)) {
                return;
            }
            // The sender lives in `self`: this returns only after a change.
            let _ = changed.changed().await;
        }
    }

    pub(super) async fn wait_death(&self) -> Death {
        self.wait_state(|st| st.death.is_some()).await;
        lock(&self.state).death.clone().expect("death is never unset")
    }

    /// Ends the worker; returns false if it had already ended.
    pub(super) fn die(&self, death: Death) -> bool {
        {
            let mut st = lock(&self.state);
            if st.death.is_some() {
                return false;
            }
            st.death = Some(death.clone());
        }
        let (crashed, reason, exit) = match death {
            Death::Crashed { reason, exit, .. } => (true, reason, exit),
            Death::Closed { reason, exit } => (false, reason, exit),
        };
        self.events.record(FakeEvent::Exited {
            worker: self.id(),
            exit,
            crashed,
            reason,
        });
        self.bump();
        true
    }

    pub(super) fn crash(&self, reason: String) {
        let exit = self.script.crash_exit.unwrap_or(CRASH_EXIT);
        self.die(Death::Crashed {
            cause: CrashCause::StdoutClosed,
            reason,
            exit,
        });
    }

    pub(super) fn death_error(&self, death: &Death) -> CallError {
        match death {
            Death::Crashed { cause, reason, exit } => CallError::WorkerCrashed {
                worker: self.id(),
                pid: self.info.pid,
                endpoint: None,
                cause: *cause,
                reason: reason.clone(),
                exit: *exit,
                stderr_tail: self.script.stderr_tail.clone(),
            },
            Death::Closed { .. } => self.closed_error(),
        }
    }

    fn closed_error(&self) -> CallError {
        CallError::WorkerClosed {
            worker: self.id(),
            pid: self.info.pid,
        }
    }

    /// The error for a request made when the worker takes no more calls.
    pub(super) fn refuse(&self, st: &State) -> Option<CallError> {
        if let Some(death) = &st.death {
            Some(self.death_error(death))
        } else if st.shutting_down {
            Some(self.closed_error())
        } else {
            None
        }
    }

    /// Records the arrival of a call and decides what it does.
    pub(super) fn begin(
        self: &Arc<Self>,
        request: &CallRequest,
        streaming: bool,
    ) -> Result<(CallGuard, Plan, CallContext), CallError> {
        let (index, plan) = {
            let mut st = lock(&self.state);
            if let Some(error) = self.refuse(&st) {
                return Err(error);
            }
            let index = st.next_call;
            st.next_call += 1;
            st.in_flight += 1;
            st.peak_in_flight = st.peak_in_flight.max(st.in_flight);
            st.calls.push(ReceivedCall {
                index,
                method: request.method.clone(),
                params: request.params.clone(),
                session: request.session.clone(),
                timeout: request.timeout,
                trace: request.trace.clone(),
                streaming,
                outcome: None,
            });
            (index, self.script.plan(index, &request.method, st.hanging))
        };
        self.events.record(FakeEvent::CallStarted {
            worker: self.id(),
            call: index,
            method: request.method.clone(),
        });
        self.bump();
        let guard = CallGuard {
            shared: Arc::clone(self),
            index,
            method: request.method.clone(),
            ended: false,
        };
        match plan.action {
            Action::Crash => {
                self.crash(format!(
                    "stdout closed (scripted crash on call {index}, {})",
                    request.method
                ));
            }
            Action::Garbage => {
                self.die(Death::Crashed {
                    cause: CrashCause::Malformed,
                    reason: format!(
                        "protocol violation: malformed message: garbage on stdout (scripted on call {index}, {})",
                        request.method
                    ),
                    exit: KILLED,
                });
            }
            _ => {}
        }
        let ctx = CallContext {
            worker: self.id(),
            method: request.method.clone(),
            session: request.session.clone(),
            call_index: index,
            sessions: Arc::clone(&self.sessions),
        };
        Ok((guard, plan, ctx))
    }

    pub(super) fn end_call(&self, index: u64, outcome: CallOutcome) {
        let method = {
            let mut st = lock(&self.state);
            st.in_flight -= 1;
            let call = &mut st.calls[index as usize];
            assert!(
                call.outcome.is_none(),
                "fake worker bug: call {index} ended twice"
            );
            call.outcome = Some(outcome.clone());
            call.method.clone()
        };
        self.events.record(FakeEvent::CallEnded {
            worker: self.id(),
            call: index,
            method,
            outcome,
        });
        self.bump();
    }

    /// Runs `work` unless the worker dies or the deadline passes first. A
    /// death wins over work finishing in the same poll; work wins over a
    /// deadline passing in the same poll (like `tokio::time::timeout`).
    pub(super) async fn race<T>(
        &self,
        work: impl Future<Output = T>,
        deadline: Option<Instant>,
    ) -> Result<T, Interrupt> {
        tokio::select! {
            biased;
            death = self.wait_death() => Err(Interrupt::Died(death)),
            value = work => Ok(value),
            () = sleep_until_opt(deadline) => Err(Interrupt::Timeout),
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
