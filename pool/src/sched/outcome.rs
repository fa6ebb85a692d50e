//! What a finished call says: how the breaker counts it, what it does to
//! its worker's time-outs-in-a-row streak, and whether the calls a worker
//! served call for a recycle.

use std::collections::VecDeque;

use portpool_transport::{CallError, Value, WorkerId};

use crate::config::RecyclePolicy;

/// How the circuit breaker counts a finished call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Says nothing about the worker's health (closed worker, bad request,
    /// or the caller's own deadline ran out): not counted.
    Neutral,
    /// The worker answered (a result, or an application error).
    Healthy,
    /// A worker fault (a time-out under the pool's deadline).
    Fault,
    /// The worker crashed: a fault, counted once per worker however many
    /// calls the crash failed.
    Crash(WorkerId),
}

/// What a finished call does to its worker's time-outs in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Streak {
    /// It timed out.
    Grow,
    /// It never ran (closed worker, bad request).
    Keep,
    /// Any other outcome.
    Reset,
}

/// A finished call, classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) verdict: Verdict,
    pub(crate) streak: Streak,
}

impl Outcome {
    /// Classifies a call's result. `caller_deadline`: the call ran under a
    /// deadline its caller chose (any, when the pool has no
    /// `call_timeout`; else a shorter one); its time-out says more about
    /// the caller's budget than the worker's health, so it does not count
    /// for the pool-wide breaker (it still counts for the worker's own
    /// time-outs in a row).
    pub(crate) fn of(res: &Result<Value, CallError>, caller_deadline: bool) -> Self {
        let never_ran = matches!(
            res,
            Err(CallError::WorkerClosed { .. } | CallError::InvalidRequest { .. })
        );
        let timed_out = matches!(res, Err(CallError::Timeout { .. }));
        let verdict = match res {
            _ if never_ran || (caller_deadline && timed_out) => Verdict::Neutral,
            Err(CallError::WorkerCrashed { worker, .. }) => Verdict::Crash(*worker),
            Err(e) if e.is_worker_fault() => Verdict::Fault,
            Err(_) | Ok(_) => Verdict::Healthy,
        };
        let streak = if timed_out {
            Streak::Grow
        } else if never_ran {
            Streak::Keep
        } else {
            Streak::Reset
        };
        Outcome { verdict, streak }
    }
}

/// Workers whose crash the breaker already counted: one crash fails every
/// call in flight on it, but it is one fault. Remembers the last 64.
#[derive(Debug, Default)]
pub(crate) struct CountedCrashes(VecDeque<WorkerId>);

impl CountedCrashes {
    const KEPT: usize = 64;

    /// Whether this is the first report of `worker`'s crash (and remembers it).
    pub(crate) fn first(&mut self, worker: WorkerId) -> bool {
        if self.0.contains(&worker) {
            return false;
        }
        if self.0.len() == Self::KEPT {
            self.0.pop_front();
        }
        self.0.push_back(worker);
        true
    }
}

/// A recycle due to the calls a worker served: too many, or too many
/// time-outs in a row (the restart metric's reason).
pub(crate) fn recycle_due(
    policy: &RecyclePolicy,
    served: u64,
    timeouts_in_a_row: u32,
) -> Option<&'static str> {
    if policy.max_requests.is_some_and(|max| served >= max) {
        Some("max_requests")
    } else if policy
        .max_consecutive_timeouts
        .is_some_and(|max| timeouts_in_a_row >= max)
    {
        Some("timeouts")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use portpool_transport::CrashCause;

    use super::*;

    const W: WorkerId = WorkerId(3);

    fn timeout() -> CallError {
        CallError::Timeout {
            worker: W,
            method: "m".into(),
            after: Duration::from_secs(1),
        }
    }

    #[test]
    fn classifies_every_kind_of_result() {
        let ok = Outcome::of(&Ok(Value::Nil), false);
        assert_eq!((ok.verdict, ok.streak), (Verdict::Healthy, Streak::Reset));
        let t = Outcome::of(&Err(timeout()), false);
        assert_eq!((t.verdict, t.streak), (Verdict::Fault, Streak::Grow));
        let own = Outcome::of(&Err(timeout()), true);
        assert_eq!(
            (own.verdict, own.streak),
            (Verdict::Neutral, Streak::Grow),
            "the caller's own deadline is not the worker's fault, but still a time-out in a row"
        );
        let closed = Outcome::of(&Err(CallError::WorkerClosed { worker: W, pid: None }), false);
        assert_eq!((closed.verdict, closed.streak), (Verdict::Neutral, Streak::Keep));
        let crash = CallError::WorkerCrashed {
            worker: W,
            pid: None,
            endpoint: None,
            cause: CrashCause::Exited,
            reason: "exited".into(),
            exit: Default::default(),
            stderr_tail: String::new(),
        };
        let c = Outcome::of(&Err(crash), true);
        assert_eq!((c.verdict, c.streak), (Verdict::Crash(W), Streak::Reset));
    }

    #[test]
    fn a_crash_counts_once() {
        let mut counted = CountedCrashes::default();
        assert!(counted.first(W));
        assert!(!counted.first(W));
        for i in 100..164 {
            assert!(counted.first(WorkerId(i)));
        }
        assert!(counted.first(W), "forgotten after 64 others");
    }

    #[test]
    fn recycle_reasons() {
        let policy = RecyclePolicy {
            max_requests: Some(10),
            max_consecutive_timeouts: Some(3),
            ..RecyclePolicy::default()
        };
        assert_eq!(recycle_due(&policy, 9, 2), None);
        assert_eq!(recycle_due(&policy, 10, 0), Some("max_requests"));
        assert_eq!(recycle_due(&policy, 1, 3), Some("timeouts"));
        assert_eq!(recycle_due(&RecyclePolicy::default(), u64::MAX, u32::MAX), None);
    }
}
