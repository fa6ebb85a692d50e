//! The in-process fake worker and the handle tests use to inspect and
//! control it.

mod call;
mod handle;
mod shared;

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use portpool_transport::{
    CallError, CallRequest, CallStream, CrashCause, Value, Worker, WorkerExit, WorkerInfo,
};
use tokio::sync::watch;
use tokio::time::{sleep, Instant};

use self::call::{run_call, StreamCall};
pub use self::handle::FakeWorkerHandle;
use self::shared::{Death, Interrupt, Shared, State, KILLED, TERMINATED};
use crate::handler::Handlers;
use crate::record::FakeEvent;
use crate::script::{Action, WorkerScript};
use crate::{lock, EventRecorder};

/// A worker's per-session state, by session id.
pub(crate) type SessionStates = Arc<Mutex<std::collections::HashMap<String, Value>>>;

/// An in-process [`Worker`] that runs Rust closures as its methods and
/// follows a [`WorkerScript`]. Made by [`FakeLauncher`](crate::FakeLauncher).
///
/// It keeps the contract of the process worker: every call ends exactly
/// once; a crash fails every in-flight and later call with
/// `CallError::WorkerCrashed`; after `shutdown` calls get
/// `CallError::WorkerClosed`; a dropped call future is recorded as
/// [`CallOutcome::Cancelled`](crate::CallOutcome::Cancelled); all waiting uses `tokio::time`. Dropping it
/// kills it (in-flight streams end with `WorkerClosed`).
pub struct FakeWorker {
    shared: Arc<Shared>,
}

impl fmt::Debug for FakeWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeWorker")
            .field("id", &self.shared.id())
            .finish_non_exhaustive()
    }
}

impl FakeWorker {
    /// Makes a ready worker and starts its `crash_at` timer, if any. Its
    /// per-session state is `sessions` (shared with the "same" worker of
    /// another launcher, see [`FakeFleet`](crate::FakeFleet)).
    pub(crate) fn start(
        info: WorkerInfo,
        script: WorkerScript,
        handlers: Handlers,
        events: EventRecorder<FakeEvent>,
        sessions: SessionStates,
    ) -> Self {
        let state = State {
            ignore_pings: script.ignore_pings,
            rss: script.rss,
            ..State::default()
        };
        let shared = Arc::new(Shared {
            info,
            script,
            handlers,
            state: Mutex::new(state),
            changed: watch::Sender::new(0),
            events,
            sessions,
        });
        if let Some(after) = shared.script.crash_at {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                tokio::select! {
                    _ = shared.wait_death() => {}
                    () = sleep(after) => shared.crash(format!("stdout closed (scripted crash at {after:?})")),
                }
            });
        }
        FakeWorker { shared }
    }

    /// A handle to inspect and control this worker, valid after it is dropped.
    pub fn handle(&self) -> FakeWorkerHandle {
        FakeWorkerHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Drop for FakeWorker {
    fn drop(&mut self) {
        self.shared.die(Death::Closed {
            reason: "dropped (killed)".into(),
            exit: KILLED,
        });
    }
}

#[async_trait]
impl Worker for FakeWorker {
    fn info(&self) -> &WorkerInfo {
        &self.shared.info
    }

    fn in_flight(&self) -> usize {
        lock(&self.shared.state).in_flight
    }

    fn is_alive(&self) -> bool {
        let st = lock(&self.shared.state);
        st.death.is_none() && !st.shutting_down
    }

    fn rss_bytes(&self) -> Option<u64> {
        lock(&self.shared.state).rss
    }

    fn stderr_tail(&self) -> String {
        self.shared.script.stderr_tail.clone()
    }

    fn kill(&self, cause: CrashCause, reason: &str) {
        self.shared.die(Death::Crashed {
            cause,
            reason: reason.to_string(),
            exit: KILLED,
        });
    }

    async fn call(&self, request: CallRequest) -> Result<Value, CallError> {
        let shared = &self.shared;
        let (mut guard, plan, ctx) = shared.begin(&request, false)?;
        let deadline = request.timeout.map(|t| Instant::now() + t);
        let handler = shared.handlers.get(&request.method).cloned();
        let params = request.params;
        let work = async move {
            if !plan.delay.is_zero() {
                sleep(plan.delay).await;
            }
            match plan.action {
                Action::Run => run_call(handler, ctx, params).await,
                Action::Fail(error) => Err(error),
                Action::Hang | Action::Crash | Action::Garbage => std::future::pending().await,
            }
        };
        match shared.race(work, deadline).await {
            Ok(Ok(value)) => guard.ok(value),
            Ok(Err(error)) => Err(guard.remote(error)),
            Err(interrupt) => Err(guard.interrupted(interrupt, request.timeout)),
        }
    }

    async fn stream(&self, request: CallRequest) -> Result<CallStream, CallError> {
        let shared = &self.shared;
        let (guard, plan, ctx) = shared.begin(&request, true)?;
        let handler = shared.handlers.get(&request.method).cloned();
        let call = StreamCall {
            guard,
            timeout: request.timeout,
            deadline: request.timeout.map(|t| Instant::now() + t),
            start: Some((plan, handler, ctx, request.params)),
            items: VecDeque::new(),
            done: false,
        };
        Ok(Box::pin(futures::stream::unfold(call, |mut call| async move {
            call.next_item().await.map(|item| (item, call))
        })))
    }

    async fn ping(&self, timeout: Duration) -> Result<Duration, CallError> {
        let shared = &self.shared;
        let ignore = {
            let mut st = lock(&shared.state);
            if let Some(error) = shared.refuse(&st) {
                return Err(error);
            }
            st.pings += 1;
            st.ignore_pings
        };
        shared.events.record(FakeEvent::Ping { worker: shared.id() });
        shared.bump();
        let start = Instant::now();
        let latency = shared.script.ping_latency;
        let work = async move {
            if ignore {
                std::future::pending::<()>().await;
            } else if !latency.is_zero() {
                sleep(latency).await;
            }
        };
        match shared.race(work, Some(start + timeout)).await {
            Ok(()) => Ok(start.elapsed()),
            Err(Interrupt::Timeout) => Err(CallError::Timeout {
                worker: shared.id(),
                method: "ping".into(),
                after: timeout,
            }),
            Err(Interrupt::Died(death)) => Err(shared.death_error(&death)),
        }
    }

    async fn close_session(&self, session: &str) -> Result<(), CallError> {
        let shared = &self.shared;
        {
            let mut st = lock(&shared.state);
            // Like the process transport: refused once dead, not while closing.
            if let Some(death) = &st.death {
                return Err(shared.death_error(death));
            }
            st.session_closes.push(session.to_owned());
        }
        lock(&shared.sessions).remove(session);
        shared.events.record(FakeEvent::SessionClosed {
            worker: shared.id(),
            session: session.to_owned(),
        });
        shared.bump();
        Ok(())
    }

    async fn shutdown(&self, grace: Duration) -> WorkerExit {
        let shared = &self.shared;
        let (first, idle) = {
            let mut st = lock(&shared.state);
            st.shutdowns.push(grace);
            let first = st.death.is_none() && !st.shutting_down;
            st.shutting_down = true;
            (first, st.in_flight == 0)
        };
        shared.events.record(FakeEvent::ShutdownRequested {
            worker: shared.id(),
            grace,
        });
        shared.bump();
        let exited = Death::Closed {
            reason: "shut down".into(),
            exit: WorkerExit {
                code: Some(0),
                signal: None,
            },
        };
        if first && !shared.script.ignore_shutdown {
            if idle {
                shared.die(exited);
            } else {
                // Like the real worker, it finishes its in-flight calls and
                // exits 0 by itself, even if this future is dropped.
                let shared = Arc::clone(shared);
                tokio::spawn(async move {
                    shared
                        .wait_state(|st| st.in_flight == 0 || st.death.is_some())
                        .await;
                    shared.die(exited);
                });
            }
        }
        tokio::select! {
            biased;
            death = shared.wait_death() => death.exit(),
            () = sleep(grace) => {
                shared.die(Death::Closed {
                    reason: format!("terminated after a shutdown grace of {grace:?}"),
                    exit: TERMINATED,
                });
                shared.wait_death().await.exit()
            }
        }
    }

    async fn closed(&self) -> WorkerExit {
        self.shared.wait_death().await.exit()
    }
}
