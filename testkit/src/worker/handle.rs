//! [`FakeWorkerHandle`]: inspecting and controlling a fake worker from a test.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use portpool_transport::{CrashCause, Value, WorkerExit, WorkerId, WorkerInfo};

use super::shared::{Death, Shared};
use crate::lock;
use crate::record::ReceivedCall;

/// Inspects and controls one fake worker from a test, before and after the
/// worker itself is dropped. Cheap to clone.
#[derive(Clone)]
pub struct FakeWorkerHandle {
    pub(super) shared: Arc<Shared>,
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

    /// The state it keeps for `session` (see [`CallContext::session_state`](crate::CallContext::session_state)).
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
