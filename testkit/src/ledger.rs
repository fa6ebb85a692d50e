//! "Every call ended exactly once": a ledger of call starts and ends.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::future::Future;
use std::sync::{Arc, Mutex};

use crate::lock;

/// Ids below this are kept as one bit each once ended.
const DENSE_IDS: u64 = 1 << 26;

/// Memory stays small for soak tests with millions of calls: a call's label
/// is kept only while it is open; an ended call costs one bit.
#[derive(Default)]
struct Inner {
    next_id: u64,
    started: usize,
    /// Started and not ended: id -> label.
    open: BTreeMap<u64, String>,
    /// Ended ids below `DENSE_IDS`, one bit each.
    ended_bits: Vec<u64>,
    /// Ended ids from `DENSE_IDS` up.
    ended_sparse: BTreeSet<u64>,
    /// Double ends, ends of unknown calls, double starts.
    problems: Vec<String>,
}

impl Inner {
    fn ended(&self, id: u64) -> bool {
        if id < DENSE_IDS {
            let (word, bit) = ((id / 64) as usize, id % 64);
            self.ended_bits.get(word).is_some_and(|w| w & (1 << bit) != 0)
        } else {
            self.ended_sparse.contains(&id)
        }
    }

    fn mark_ended(&mut self, id: u64) {
        if id < DENSE_IDS {
            let (word, bit) = ((id / 64) as usize, id % 64);
            if self.ended_bits.len() <= word {
                self.ended_bits.resize(word + 1, 0);
            }
            self.ended_bits[word] |= 1 << bit;
        } else {
            self.ended_sparse.insert(id);
        }
    }

    fn begin(&mut self, id: u64, label: String) {
        if self.open.contains_key(&id) || self.ended(id) {
            self.problems.push(format!("call {id} ({label}) started twice"));
            return;
        }
        self.open.insert(id, label);
        self.started += 1;
        self.next_id = self.next_id.max(id + 1);
    }
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
        inner.begin(id, label.into());
        id
    }

    /// Records the start of a call with an id of the caller's choosing
    /// (e.g. a request id). Starting an id twice is reported; the first
    /// start is kept.
    pub fn start_id(&self, id: u64, label: impl Into<String>) {
        lock(&self.inner).begin(id, label.into());
    }

    /// Records the end of call `id` with a description of its outcome.
    pub fn end(&self, id: u64, outcome: impl Into<String>) {
        let outcome = outcome.into();
        let mut inner = lock(&self.inner);
        if inner.open.remove(&id).is_some() {
            inner.mark_ended(id);
        } else if inner.ended(id) {
            inner
                .problems
                .push(format!("call {id} ended more than once (again with {outcome:?})"));
        } else {
            inner
                .problems
                .push(format!("call {id} was never started but ended with {outcome:?}"));
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
        lock(&self.inner).started
    }

    /// The ids of calls started and not ended yet.
    pub fn open(&self) -> Vec<u64> {
        lock(&self.inner).open.keys().copied().collect()
    }

    /// Every problem found, one per line: calls never ended, ended twice or
    /// more, ends of unknown calls. Empty when all is well.
    pub fn report(&self) -> String {
        let inner = lock(&self.inner);
        let mut report = String::new();
        for (id, label) in &inner.open {
            let _ = writeln!(report, "call {id} ({label}) never ended");
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
            report.contains(&format!("call {b} ended more than once (again with \"timeout\")")),
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
        ledger.start_id(7, "after its end");
        assert!(ledger.report().contains("call 7 (after its end) started twice"));
        assert_eq!(ledger.start("next"), 8);
    }

    #[test]
    fn a_million_ended_calls_cost_bits_not_records() {
        let ledger = CallLedger::new();
        for _ in 0..1_000_000 {
            let id = ledger.start("a label that is not kept once the call ended");
            ledger.end(id, "ok");
        }
        ledger.start_id(DENSE_IDS + 5, "sparse");
        ledger.end(DENSE_IDS + 5, "ok");
        ledger.end(DENSE_IDS + 5, "late");
        let inner = lock(&ledger.inner);
        assert!(inner.open.is_empty());
        assert_eq!(inner.started, 1_000_001);
        assert!(
            inner.ended_bits.len() * 8 <= 1_000_000 / 8 + 8,
            "one bit per ended call"
        );
        assert_eq!(inner.problems.len(), 1, "{:?}", inner.problems);
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
