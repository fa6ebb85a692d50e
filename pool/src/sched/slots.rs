//! Worker slots: a stable position in the pool that keeps its launch
//! history across the workers that fill it (starts, failures, restarts,
//! recent crashes), and the crash-loop rule.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use portpool_transport::LaunchError;

use crate::config::CrashLoop;

/// A slot's id, stable for its life (replacements keep it).
pub(crate) type SlotId = u64;

/// What a slot's supervisor is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotPhase {
    /// Launching a worker.
    Starting,
    /// Its worker serves (or drains).
    Running,
    /// Waiting to restart after a crash or a failed start.
    Backoff,
}

#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) id: SlotId,
    pub(crate) phase: SlotPhase,
    /// Launch attempts finished (success or failure).
    pub(crate) attempts: u64,
    /// Consecutive failed launches.
    pub(crate) launch_failures: u32,
    pub(crate) restarts: u64,
    /// When its recent workers crashed (at most `max_restarts` kept).
    crashes: VecDeque<Instant>,
    pub(crate) last_error: Option<Arc<LaunchError>>,
}

impl Slot {
    pub(crate) fn new(id: SlotId) -> Self {
        Slot {
            id,
            phase: SlotPhase::Starting,
            attempts: 0,
            launch_failures: 0,
            restarts: 0,
            crashes: VecDeque::new(),
            last_error: None,
        }
    }

    /// `max_restarts` crashes within `window` of `now`.
    pub(crate) fn crash_looping(&self, now: Instant, rule: &CrashLoop) -> bool {
        let recent = self
            .crashes
            .iter()
            .filter(|t| now.saturating_duration_since(**t) < rule.window)
            .count();
        recent >= rule.max_restarts as usize
    }

    /// Records a crash of its worker; returns the crashes kept when that
    /// makes a crash loop.
    pub(crate) fn record_crash(&mut self, now: Instant, rule: &CrashLoop) -> Option<usize> {
        self.restarts += 1;
        self.crashes.push_back(now);
        while self.crashes.len() > rule.max_restarts as usize {
            self.crashes.pop_front();
        }
        self.crash_looping(now, rule).then_some(self.crashes.len())
    }

    /// A launch finished.
    pub(crate) fn launched(&mut self, result: Result<(), &Arc<LaunchError>>, counts: bool) {
        self.attempts += 1;
        match result {
            Ok(()) => {
                self.phase = SlotPhase::Running;
                self.launch_failures = 0;
            }
            Err(err) => {
                self.last_error = Some(err.clone());
                if counts {
                    self.launch_failures += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn crash_loop_needs_max_restarts_within_the_window() {
        let rule = CrashLoop {
            max_restarts: 3,
            window: Duration::from_secs(10),
        };
        let t0 = Instant::now();
        let mut s = Slot::new(0);
        assert_eq!(s.record_crash(t0, &rule), None);
        assert_eq!(s.record_crash(t0 + Duration::from_secs(1), &rule), None);
        assert_eq!(s.record_crash(t0 + Duration::from_secs(2), &rule), Some(3));
        assert!(s.crash_looping(t0 + Duration::from_secs(9), &rule));
        assert!(
            !s.crash_looping(t0 + Duration::from_secs(10), &rule),
            "the first crash left the window"
        );
        assert_eq!(s.restarts, 3);
        assert_eq!(s.crashes.len(), 3, "history bounded by max_restarts");
        s.record_crash(t0 + Duration::from_secs(100), &rule);
        assert_eq!(s.crashes.len(), 3);
    }

    #[test]
    fn launches_count_attempts_and_failures() {
        let mut s = Slot::new(7);
        let err = Arc::new(LaunchError::Other {
            worker: portpool_transport::WorkerId(1),
            reason: "boom".into(),
        });
        s.launched(Err(&err), true);
        s.launched(Err(&err), false);
        assert_eq!((s.attempts, s.launch_failures), (2, 1));
        assert!(s.last_error.is_some());
        s.launched(Ok(()), true);
        assert_eq!(
            (s.attempts, s.launch_failures, s.phase),
            (3, 0, SlotPhase::Running)
        );
    }
}
