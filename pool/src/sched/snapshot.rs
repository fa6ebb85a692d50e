//! The scheduler's side of `Pool::status()` and of the gauges: one row per
//! running worker and per slot without one.

use std::time::Instant;

use super::slots::{Slot, SlotPhase};
use super::workers::Liveness;
use super::Scheduler;
use crate::status::{PoolStatus, WorkerState, WorkerStatus};

fn empty_slot_state(s: &Slot) -> WorkerState {
    match s.phase {
        SlotPhase::Backoff => WorkerState::Backoff,
        SlotPhase::Starting | SlotPhase::Running => WorkerState::Starting,
    }
}

impl<W: Liveness> Scheduler<W> {
    fn empty_slots(&self) -> impl Iterator<Item = &Slot> {
        self.slots
            .iter()
            .filter(|s| !self.entries.iter().any(|e| e.slot == s.id))
    }

    /// Workers (and empty slots) by state, indexed by `WorkerState as usize`.
    pub(crate) fn state_counts(&self) -> [usize; WorkerState::ALL.len()] {
        let mut counts = [0usize; WorkerState::ALL.len()];
        let rows = self
            .entries
            .iter()
            .map(|e| e.state())
            .chain(self.empty_slots().map(empty_slot_state));
        for row in rows {
            counts[row as usize] += 1;
        }
        counts
    }

    /// The pool's status as the scheduler knows it, with each running
    /// worker's handle: what the worker itself knows (pid, calls in flight,
    /// memory, stderr) the shell fills in, outside the lock. `workers` is
    /// left empty in the returned status.
    pub(crate) fn snapshot(&self, now: Instant) -> (PoolStatus, Vec<(WorkerStatus, Option<W>)>) {
        let cfg = &self.cfg;
        let looping = |s: &Slot| s.crash_looping(now, &cfg.crash_loop);
        let mut rows = Vec::with_capacity(self.slots.len() + self.entries.len());
        for e in &self.entries {
            let s = self.slots.iter().find(|s| s.id == e.slot);
            rows.push((
                WorkerStatus {
                    slot: e.slot,
                    id: Some(e.id),
                    pid: None,
                    endpoint: None,
                    address: None,
                    state: e.state(),
                    in_flight: 0,
                    held: e.in_use,
                    capacity: e.capacity,
                    served: e.served,
                    restarts: s.map_or(0, |s| s.restarts),
                    rss_bytes: None,
                    discarded_replies: 0,
                    stderr_tail: String::new(),
                    uptime: Some(now.saturating_duration_since(e.ready_at)),
                    crash_loop: s.is_some_and(looping),
                    last_error: s.and_then(|s| s.last_error.clone()),
                },
                Some(e.worker.clone()),
            ));
        }
        for s in self.empty_slots() {
            rows.push((
                WorkerStatus {
                    slot: s.id,
                    id: None,
                    pid: None,
                    endpoint: None,
                    address: None,
                    state: empty_slot_state(s),
                    in_flight: 0,
                    held: 0,
                    capacity: 0,
                    served: 0,
                    restarts: s.restarts,
                    rss_bytes: None,
                    discarded_replies: 0,
                    stderr_tail: String::new(),
                    uptime: None,
                    crash_loop: looping(s),
                    last_error: s.last_error.clone(),
                },
                None,
            ));
        }
        let status = PoolStatus {
            name: cfg.name.clone(),
            closed: self.closed,
            size: self.slots.len(),
            ready: self.entries.iter().filter(|e| e.ready()).count(),
            queue_depth: self.queue.len(),
            breaker: self.breaker.state(now),
            crash_loop: self.slots.iter().any(looping),
            last_error: self.last_error.clone(),
            workers: Vec::new(),
        };
        (status, rows)
    }
}
