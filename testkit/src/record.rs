//! What fake workers record: the calls they received and the events of
//! their lives.

use std::time::Duration;

use portpool_transport::{Value, WorkerExit, WorkerId};

/// How a call on a fake worker ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    /// The handler returned a result (or the stream ended normally).
    Ok,
    /// The handler raised (`CallError::Remote`); the error's type.
    Remote(String),
    /// The call's timeout passed (`CallError::Timeout`); the real transport
    /// sends a `cancel` then.
    Timeout,
    /// The worker crashed first (`CallError::WorkerCrashed`).
    Crashed,
    /// The worker was shut down or dropped first (`CallError::WorkerClosed`).
    Closed,
    /// The caller dropped the call's future (or stream) before its end; the
    /// real transport sends a `cancel` then.
    Cancelled,
}

/// One call a fake worker received.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedCall {
    /// 0-based position among the calls this worker received.
    pub index: u64,
    /// The method called.
    pub method: String,
    /// Its params.
    pub params: Value,
    /// Its session.
    pub session: Option<String>,
    /// Its timeout.
    pub timeout: Option<Duration>,
    /// Its trace context.
    pub trace: Option<String>,
    /// Whether it came through `stream` rather than `call`.
    pub streaming: bool,
    /// How it ended; `None` while it is in flight.
    pub outcome: Option<CallOutcome>,
}

impl ReceivedCall {
    /// Whether the real transport would have sent a `cancel` for it (it was
    /// dropped by its caller or timed out).
    pub fn was_cancelled(&self) -> bool {
        matches!(self.outcome, Some(CallOutcome::Cancelled | CallOutcome::Timeout))
    }
}

/// Everything that happens to a [`FakeLauncher`](crate::FakeLauncher)'s
/// workers, in one chronological log (see
/// [`FakeLauncher::events`](crate::FakeLauncher::events)).
#[derive(Debug, Clone, PartialEq)]
pub enum FakeEvent {
    /// `launch(worker)` was called; `n` counts launches from 0.
    LaunchStarted {
        /// The worker being launched.
        worker: WorkerId,
        /// Launch number, from 0.
        n: u64,
    },
    /// The worker is ready.
    Launched {
        /// The worker.
        worker: WorkerId,
    },
    /// The launch failed.
    LaunchFailed {
        /// The worker.
        worker: WorkerId,
        /// The error's message.
        error: String,
    },
    /// A call arrived at a worker.
    CallStarted {
        /// The worker.
        worker: WorkerId,
        /// The call's index on that worker.
        call: u64,
        /// Its method.
        method: String,
    },
    /// A call ended.
    CallEnded {
        /// The worker.
        worker: WorkerId,
        /// The call's index on that worker.
        call: u64,
        /// Its method.
        method: String,
        /// How it ended.
        outcome: CallOutcome,
    },
    /// A ping arrived.
    Ping {
        /// The worker.
        worker: WorkerId,
    },
    /// `close_session` arrived.
    SessionClosed {
        /// The worker.
        worker: WorkerId,
        /// The session named.
        session: String,
    },
    /// `shutdown(grace)` was called.
    ShutdownRequested {
        /// The worker.
        worker: WorkerId,
        /// The grace given.
        grace: Duration,
    },
    /// The worker ended.
    Exited {
        /// The worker.
        worker: WorkerId,
        /// How it ended.
        exit: WorkerExit,
        /// Whether it crashed (as opposed to a shutdown or a drop).
        crashed: bool,
        /// Why.
        reason: String,
    },
    /// A free-form marker a test recorded in the same log (with
    /// `launcher.event_recorder().record(FakeEvent::Note(..))`).
    Note(String),
}

impl FakeEvent {
    /// The worker the event is about (`None` for a [`FakeEvent::Note`]).
    pub fn worker(&self) -> Option<WorkerId> {
        Some(match self {
            FakeEvent::LaunchStarted { worker, .. }
            | FakeEvent::Launched { worker }
            | FakeEvent::LaunchFailed { worker, .. }
            | FakeEvent::CallStarted { worker, .. }
            | FakeEvent::CallEnded { worker, .. }
            | FakeEvent::Ping { worker }
            | FakeEvent::SessionClosed { worker, .. }
            | FakeEvent::ShutdownRequested { worker, .. }
            | FakeEvent::Exited { worker, .. } => *worker,
            FakeEvent::Note(_) => return None,
        })
    }
}
