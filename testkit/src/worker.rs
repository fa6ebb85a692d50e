//! The in-process fake worker and the handle tests use to inspect and
//! control it.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use portpool_transport::{
    CallError, CallRequest, CallStream, CrashCause, Value, Worker, WorkerExit, WorkerId, WorkerInfo,
};
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, Instant};

use crate::handler::{CallContext, Handler, HandlerResult, Handlers};
use crate::record::{CallOutcome, FakeEvent, ReceivedCall};
use crate::script::{Action, Plan, WorkerScript};
use crate::{lock, remote_error, EventRecorder};

/// Exit of a worker killed by the host (SIGKILL), e.g. when dropped.
const KILLED: WorkerExit = WorkerExit {
    code: None,
    signal: Some(9),
};

/// Exit of a worker terminated when a shutdown's grace ran out (SIGTERM).
const TERMINATED: WorkerExit = WorkerExit {
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
pub(crate) enum Death {
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
    fn exit(&self) -> WorkerExit {
        match self {
            Death::Crashed { exit, .. } | Death::Closed { exit, .. } => *exit,
        }
    }
}

/// Why a call stopped waiting for its handler.
enum Interrupt {
    Died(Death),
    Timeout,
}

#[derive(Default)]
struct State {
    death: Option<Death>,
    shutting_down: bool,
    next_call: u64,
    in_flight: usize,
    peak_in_flight: usize,
    calls: Vec<ReceivedCall>,
    pings: u64,
    session_closes: Vec<String>,
    shutdowns: Vec<Duration>,
    hanging: bool,
    ignore_pings: bool,
    rss: Option<u64>,
}

pub(crate) struct Shared {
    info: WorkerInfo,
    script: WorkerScript,
    handlers: Handlers,
    state: Mutex<State>,
    /// Bumped after every change of `state`; waiters re-check their condition.
    changed: watch::Sender<u64>,
    events: EventRecorder<FakeEvent>,
    sessions: Arc<Mutex<HashMap<String, Value>>>,
}

impl Shared {
    fn id(&self) -> WorkerId {
        self.info.id
    }

    fn bump(&self) {
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Waits until `pred` holds for the state.
    async fn wait_state(&self, pred: impl Fn(&State) -> bool) {
        let mut changed = self.changed.subscribe();
        loop {
            if pred(&lock(&self.state)) {
                return;
            }
            // The sender lives in `self`: this returns only after a change.
            let _ = changed.changed().await;
        }
    }

    async fn wait_death(&self) -> Death {
        self.wait_state(|st| st.death.is_some()).await;
        lock(&self.state).death.clone().expect("death is never unset")
    }

    /// Ends the worker; returns false if it had already ended.
    fn die(&self, death: Death) -> bool {
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

    fn crash(&self, reason: String) {
        let exit = self.script.crash_exit.unwrap_or(CRASH_EXIT);
        self.die(Death::Crashed {
            cause: CrashCause::StdoutClosed,
            reason,
            exit,
        });
    }

    fn death_error(&self, death: &Death) -> CallError {
        match death {
            Death::Crashed { cause, reason, exit } => CallError::WorkerCrashed {
                worker: self.id(),
                pid: self.info.pid,
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
    fn refuse(&self, st: &State) -> Option<CallError> {
        if let Some(death) = &st.death {
            Some(self.death_error(death))
        } else if st.shutting_down {
            Some(self.closed_error())
        } else {
            None
        }
    }

    /// Records the arrival of a call and decides what it does.
    fn begin(
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

    fn end_call(&self, index: u64, outcome: CallOutcome) {
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
    async fn race<T>(
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

fn no_method(method: &str) -> HandlerResult {
    Err(remote_error(
        "MethodNotFound",
        format!("no method named {method:?}"),
    ))
}

/// Runs a handler for `call`; a streaming handler's items are collected into
/// an array (the first error wins).
async fn run_call(handler: Option<Handler>, ctx: CallContext, params: Value) -> HandlerResult {
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
struct CallGuard {
    shared: Arc<Shared>,
    index: u64,
    method: String,
    ended: bool,
}

impl CallGuard {
    fn finish(&mut self, outcome: CallOutcome) {
        if !self.ended {
            self.ended = true;
            self.shared.end_call(self.index, outcome);
        }
    }

    fn ok(&mut self, value: Value) -> Result<Value, CallError> {
        self.finish(CallOutcome::Ok);
        Ok(value)
    }

    fn remote(&mut self, error: portpool_transport::RemoteError) -> CallError {
        self.finish(CallOutcome::Remote(error.kind.clone()));
        CallError::Remote {
            worker: self.shared.id(),
            method: self.method.clone(),
            error: Box::new(error),
        }
    }

    fn interrupted(&mut self, interrupt: Interrupt, timeout: Option<Duration>) -> CallError {
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
struct StreamCall {
    guard: CallGuard,
    timeout: Option<Duration>,
    deadline: Option<Instant>,
    /// What is needed to start the handler; taken on the first poll.
    start: Option<(Plan, Option<Handler>, CallContext, Value)>,
    items: VecDeque<HandlerResult>,
    done: bool,
}

impl StreamCall {
    async fn next_item(&mut self) -> Option<Result<Value, CallError>> {
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

/// An in-process [`Worker`] that runs Rust closures as its methods and
/// follows a [`WorkerScript`]. Made by [`FakeLauncher`](crate::FakeLauncher).
///
/// It keeps the contract of the process worker: every call ends exactly
/// once; a crash fails every in-flight and later call with
/// `CallError::WorkerCrashed`; after `shutdown` calls get
/// `CallError::WorkerClosed`; a dropped call future is recorded as
/// [`CallOutcome::Cancelled`]; all waiting uses `tokio::time`. Dropping it
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
    /// Makes a ready worker and starts its `crash_at` timer, if any.
    pub(crate) fn start(
        info: WorkerInfo,
        script: WorkerScript,
        handlers: Handlers,
        events: EventRecorder<FakeEvent>,
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
            sessions: Arc::default(),
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

/// Inspects and controls one fake worker from a test, before and after the
/// worker itself is dropped. Cheap to clone.
#[derive(Clone)]
pub struct FakeWorkerHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for FakeWorkerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeWorkerHandle")
            .field("id", &self.shared.id())
            .finish_non_exhaustive()
    }
}

impl FakeWorkerHandle {
    /// The worker's id.
    pub fn id(&self) -> WorkerId {
        self.shared.id()
    }

    /// The worker's info (id, pid, hello, max concurrency).
    pub fn info(&self) -> WorkerInfo {
        self.shared.info.clone()
    }

    /// Every call it received, in order, with how each ended so far.
    pub fn calls(&self) -> Vec<ReceivedCall> {
        lock(&self.shared.state).calls.clone()
    }

    /// The methods of the calls it received, in order.
    pub fn methods(&self) -> Vec<String> {
        lock(&self.shared.state)
            .calls
            .iter()
            .map(|c| c.method.clone())
            .collect()
    }

    /// The calls the real transport would have sent a `cancel` for: dropped
    /// by their caller or timed out.
    pub fn cancelled(&self) -> Vec<ReceivedCall> {
        lock(&self.shared.state)
            .calls
            .iter()
            .filter(|c| c.was_cancelled())
            .cloned()
            .collect()
    }

    /// How many pings it received.
    pub fn pings(&self) -> u64 {
        lock(&self.shared.state).pings
    }

    /// The sessions `close_session` named, in order.
    pub fn session_closes(&self) -> Vec<String> {
        lock(&self.shared.state).session_closes.clone()
    }

    /// The grace of each `shutdown` call it received, in order.
    pub fn shutdowns(&self) -> Vec<Duration> {
        lock(&self.shared.state).shutdowns.clone()
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        lock(&self.shared.state).in_flight
    }

    /// The most calls it ever had in flight at once (to check that a pool
    /// respects `max_concurrency`).
    pub fn peak_in_flight(&self) -> usize {
        lock(&self.shared.state).peak_in_flight
    }

    /// False once it died or a shutdown began.
    pub fn is_alive(&self) -> bool {
        let st = lock(&self.shared.state);
        st.death.is_none() && !st.shutting_down
    }

    /// How it ended, once it has.
    pub fn exit(&self) -> Option<WorkerExit> {
        lock(&self.shared.state).death.as_ref().map(Death::exit)
    }

    /// Whether it ended by a crash (as opposed to a shutdown or a drop).
    pub fn crashed(&self) -> bool {
        matches!(lock(&self.shared.state).death, Some(Death::Crashed { .. }))
    }

    /// The state it keeps for `session` (see [`CallContext::session_state`]).
    pub fn session_state(&self, session: &str) -> Option<Value> {
        lock(&self.shared.sessions).get(session).cloned()
    }

    /// Crashes it now: every in-flight and later call fails with
    /// `CallError::WorkerCrashed` (reason "stdout closed (crashed by test)",
    /// exit code 101 unless scripted otherwise). No effect if it already ended.
    pub fn crash(&self) {
        self.shared.crash("stdout closed (crashed by test)".into());
    }

    /// Crashes it now with this reason and exit.
    pub fn crash_with(&self, reason: impl Into<String>, exit: WorkerExit) {
        self.shared.die(Death::Crashed {
            cause: CrashCause::Exited,
            reason: reason.into(),
            exit,
        });
    }

    /// From now on, new calls are never answered (until [`unhang`](Self::unhang)).
    pub fn hang(&self) {
        lock(&self.shared.state).hanging = true;
    }

    /// New calls are answered again.
    pub fn unhang(&self) {
        lock(&self.shared.state).hanging = false;
    }

    /// Whether later pings go unanswered.
    pub fn set_ignore_pings(&self, ignore: bool) {
        lock(&self.shared.state).ignore_pings = ignore;
    }

    /// What `rss_bytes()` reports from now on.
    pub fn set_rss(&self, bytes: Option<u64>) {
        lock(&self.shared.state).rss = bytes;
    }

    /// Resolves when it has ended.
    pub async fn closed(&self) -> WorkerExit {
        self.shared.wait_death().await.exit()
    }

    /// Waits until `pred` holds for this handle (re-checked after every
    /// change of the worker: call started or ended, ping, shutdown, death...).
    pub async fn wait_until(&self, pred: impl Fn(&FakeWorkerHandle) -> bool) {
        let mut changed = self.shared.changed.subscribe();
        while !pred(self) {
            let _ = changed.changed().await;
        }
    }

    /// Waits until it has received at least `n` calls.
    pub async fn wait_for_calls(&self, n: usize) {
        self.shared.wait_state(|st| st.calls.len() >= n).await;
    }
}
