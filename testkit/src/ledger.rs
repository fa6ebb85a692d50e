//! "Every call ended exactly once": a ledger of call starts and ends.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::{Arc, Mutex};

use crate::lock;

#[derive(Default)]
struct Inner {
    next_id: u64,
    /// label, ends recorded (outcome of each end)
    calls: BTreeMap<u64, (String, Vec<String>)>,
    /// Problems that are not about one started call's ends.
    problems: Vec<String>,
}

/// Tracks calls started and ended, to check that each call ended exactly
/// once: no call lost, none answered twice. Cheap to clone; clones share
/// the ledger, so it can be handed to spawned tasks.
///
/// ```
/// use portpool_testkit::CallLedger;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let ledger = CallLedger::new();
/// let a = ledger.start("call a");
/// ledger.end(a, "ok");
/// // `track` starts, awaits and ends; a dropped future ends as "dropped".
/// let n = ledger.track("call b", async { 1 + 1 }).await;
/// assert_eq!(n, 2);
/// ledger.assert_each_call_ended_once();
/// # }
/// ```
#[derive(Clone, Default)]
pub struct CallLedger {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for CallLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.report())
    }
}

impl CallLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the start of a new call and returns its id.
    pub fn start(&self, label: impl Into<String>) -> u64 {
        let mut inner = lock(&self.inner);
        let id = inner.next_id;
        inner.next_id += 1;
        inner.calls.insert(id, (label.into(), Vec::new()));
        id
    }

    /// Records the start of a call with an id of the caller's choosing
    /// (e.g. a request id). Starting an id twice is reported; the first
    /// start is kept.
    pub fn start_id(&self, id: u64, label: impl Into<String>) {
        let mut inner = lock(&self.inner);
        let label = label.into();
        match inner.calls.entry(id) {
            std::collections::btree_map::Entry::Occupied(_) => {
                inner.problems.push(format!("call {id} ({label}) started twice"));
            }
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert((label, Vec::new()));
                inner.next_id = inner.next_id.max(id + 1);
            }
        }
    }

    /// Records the end of call `id` with a description of its outcome.
    pub fn end(&self, id: u64, outcome: impl Into<String>) {
        let outcome = outcome.into();
        let mut inner = lock(&self.inner);
        match inner.calls.get_mut(&id) {
            Some((_, ends)) => ends.push(outcome),
            None => inner
                .problems
                .push(format!("call {id} was never started but ended with {outcome:?}")),
        }
    }

    /// Starts a call, awaits `fut`, and ends the call with "ok"; if the
    /// returned future is dropped before `fut` finishes, the call ends with
    /// "dropped".
    pub async fn track<F: Future>(&self, label: impl Into<String>, fut: F) -> F::Output {
        struct EndOnDrop<'a> {
            ledger: &'a CallLedger,
            id: u64,
            outcome: &'static str,
        }
        impl Drop for EndOnDrop<'_> {
            fn drop(&mut self) {
                self.ledger.end(self.id, self.outcome);
            }
        }
        let mut end = EndOnDrop {
            ledger: self,
            id: self.start(label),
            outcome: "dropped",
        };
        let output = fut.await;
        end.outcome = "ok";
        output
    }

    /// How many calls were started.
    pub fn started(&self) -> usize {
        lock(&self.inner).calls.len()
    }

    /// The ids of calls started and not ended yet.
    pub fn open(&self) -> Vec<u64> {
        lock(&self.inner)
            .calls
            .iter()
            .filter(|(_, (_, ends))| ends.is_empty())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Every problem found, one per line: calls never ended, ended twice or
    /// more, ends of unknown calls. Empty when all is well.
    pub fn report(&self) -> String {
        let inner = lock(&self.inner);
        let mut report = String::new();
        for (id, (label, ends)) in &inner.calls {
            match ends.len() {
                1 => {}
                0 => {
                    let _ = writeln!(report, "call {id} ({label}) never ended");
                }
                n => {
                    let _ = writeln!(report, "call {id} ({label}) ended {n} times: {}", ends.join(", "));
                }
            }
        }
        for problem in &inner.problems {
            let _ = writeln!(report, "{problem}");
        }
        report
    }

    /// Panics with a clear message unless every started call ended exactly
    /// once and nothing else ended.
    #[track_caller]
    pub fn assert_each_call_ended_once(&self) {
        let report = self.report();
        assert!(
            report.is_empty(),
            "not every call ended exactly once ({} started):\n{report}",
            self.started()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_missing_double_and_unknown_ends() {
        let ledger = CallLedger::new();
        let a = ledger.start("a");
        let b = ledger.start("b");
        let c = ledger.start("c");
        ledger.end(a, "ok");
        ledger.end(b, "ok");
        ledger.end(b, "timeout");
        ledger.end(99, "ok");
        let report = ledger.report();
        assert!(report.contains(&format!("call {c} (c) never ended")), "{report}");
        assert!(
            report.contains(&format!("call {b} (b) ended 2 times: ok, timeout")),
            "{report}"
        );
        assert!(report.contains("call 99 was never started"), "{report}");
        assert_eq!(ledger.open(), vec![c]);
        let panic = std::panic::catch_unwind(|| ledger.assert_each_call_ended_once()).unwrap_err();
        let message = panic.downcast_ref::<String>().unwrap();
        assert!(
            message.contains("not every call ended exactly once (3 started)"),
            "{message}"
        );
    }

    #[test]
    fn start_id_and_duplicates() {
        let ledger = CallLedger::new();
        ledger.start_id(7, "seven");
        ledger.start_id(7, "again");
        ledger.end(7, "ok");
        assert_eq!(ledger.report(), "call 7 (again) started twice\n");
        assert_eq!(ledger.start("next"), 8);
    }

    #[tokio::test]
    async fn dropped_tracked_future_ends_as_dropped() {
        let ledger = CallLedger::new();
        let fut = ledger.track("pending", std::future::pending::<()>());
        // Poll once so the call starts, then drop it.
        let mut fut = Box::pin(fut);
        assert!(futures::poll!(fut.as_mut()).is_pending());
        drop(fut);
        ledger.assert_each_call_ended_once();
        assert!(ledger.open().is_empty());
    }
}
