//! What the supervisors report (a slot's phase, a worker ready, a launch
//! failed, a crash, a replacement, draining, retiring, gone), sessions'
//! pins, the pool closing, and the rule that fails callers at once when
//! no worker can serve.

use std::sync::Arc;
use std::time::Instant;

use portpool_transport::{LaunchError, WorkerExit, WorkerId};

use super::outcome::recycle_due;
use super::slots::{Slot, SlotId, SlotPhase};
use super::workers::{Entry, Liveness};
use super::Scheduler;
use crate::PoolError;

impl<W: Liveness> Scheduler<W> {
    /// Adds a slot; the outbox asks the shell to start its supervisor.
    pub(crate) fn new_slot(&mut self) -> SlotId {
        let id = self.next_slot;
        self.next_slot += 1;
        self.slots.push(Slot::new(id));
        self.out.start.push(id);
        self.out.gauges = true;
        id
    }

    pub(crate) fn set_phase(&mut self, slot: SlotId, phase: SlotPhase) {
        if let Some(s) = self.slot_mut(slot) {
            s.phase = phase;
        }
        self.out.gauges = true;
    }

    /// `slot` launched `worker`, whose hello allows `hello_concurrency`
    /// calls at once (capped by `worker_concurrency`).
    pub(crate) fn on_ready(
        &mut self,
        slot: SlotId,
        id: WorkerId,
        worker: W,
        hello_concurrency: usize,
        now: Instant,
    ) {
        let hello = hello_concurrency.max(1);
        let capacity = self.cfg.worker_concurrency.map_or(hello, |c| c.min(hello));
        if let Some(s) = self.slot_mut(slot) {
            s.launched(Ok(()), true);
        }
        self.ever_ready = true;
        self.entries.push(Entry::new(slot, id, worker, capacity, now));
        self.dispatch(now);
        self.out.gauges = true;
        self.out.changed = true;
    }

    /// A launch failed. `counts` is false for a failed replacement while
    /// the old worker still serves.
    pub(crate) fn on_launch_failed(&mut self, slot: SlotId, err: LaunchError, counts: bool, now: Instant) {
        let err = Arc::new(err);
        if let Some(s) = self.slot_mut(slot) {
            s.launched(Err(&err), counts);
        }
        self.last_error = Some(err);
        self.fail_if_unavailable(now);
        self.out.gauges = true;
        self.out.changed = true;
    }

    /// `worker` in `slot` ended. Returns the number of recent crashes when
    /// the slot is now crash-looping.
    pub(crate) fn on_crash(
        &mut self,
        slot: SlotId,
        worker: WorkerId,
        exit: &WorkerExit,
        now: Instant,
    ) -> Option<usize> {
        self.entries.retain(|e| e.id != worker);
        self.fail_targeted(worker);
        let rule = self.cfg.crash_loop;
        let looping = self.slot_mut(slot).and_then(|s| {
            let n = s.record_crash(now, &rule)?;
            s.last_error = Some(Arc::new(LaunchError::Other {
                worker,
                reason: format!("crash loop: {n} crashes within {:?}, last: {exit}", rule.window),
            }));
            Some(n)
        });
        self.fail_if_unavailable(now);
        self.out.gauges = true;
        self.out.changed = true;
        looping
    }

    /// `slot`'s worker was replaced by a recycle.
    pub(crate) fn on_replaced(&mut self, slot: SlotId) {
        if let Some(s) = self.slot_mut(slot) {
            s.restarts += 1;
        }
    }

    /// `worker` takes no new untargeted calls.
    pub(crate) fn mark_draining(&mut self, worker: WorkerId, now: Instant) {
        if let Some(e) = self.entry_mut(worker) {
            e.draining = true;
        }
        self.out.gauges = true;
        // One usable worker fewer: the worker reserved for an exclusive
        // waiter may change, which may free a waiter for another one.
        self.dispatch(now);
    }

    /// `worker` stopped (or died while draining): forget it; callers queued
    /// for it get `WorkerGone`.
    pub(crate) fn remove_entry(&mut self, worker: WorkerId, now: Instant) {
        self.entries.retain(|e| e.id != worker);
        self.fail_targeted(worker);
        self.out.gauges = true;
        self.out.changed = true;
        self.dispatch(now);
    }

    /// `slot`'s supervisor ended.
    pub(crate) fn remove_slot(&mut self, slot: SlotId) {
        self.slots.retain(|s| s.id != slot);
        self.out.gauges = true;
        self.out.changed = true;
    }

    /// Why `worker` should be recycled now, judging by its calls.
    pub(crate) fn recycle_reason(&self, worker: WorkerId) -> Option<&'static str> {
        let e = self.entry(worker)?;
        recycle_due(&self.cfg.recycle, e.served, e.timeouts_in_a_row)
    }

    /// Retires `worker` if it has been idle for `idle_timeout` and the pool
    /// is above `min_workers`: removes its slot at once (so two slots
    /// cannot both retire below the minimum) and marks it draining.
    pub(crate) fn try_retire(&mut self, slot: SlotId, worker: WorkerId, now: Instant) -> bool {
        let Some(idle) = self.cfg.idle_timeout else {
            return false;
        };
        if self.closed || self.slots.len() <= self.cfg.min_workers {
            return false;
        }
        let Some(e) = self.entry_mut(worker) else {
            return false;
        };
        if !e.idle() || now.saturating_duration_since(e.last_used) < idle {
            return false;
        }
        e.draining = true;
        self.slots.retain(|s| s.id != slot);
        self.out.gauges = true;
        true
    }

    /// Adds (`add`) or removes a session's pin on `worker`; returns whether
    /// the worker is in the pool.
    pub(crate) fn pin(&mut self, worker: WorkerId, add: bool) -> bool {
        let Some(e) = self.entry_mut(worker) else {
            return false;
        };
        if add {
            e.pins += 1;
        } else {
            e.pins = e.pins.saturating_sub(1);
        }
        if e.pins == 0 {
            self.out.changed = true;
        }
        true
    }

    /// Refuses new callers and fails the queued ones.
    pub(crate) fn close(&mut self) {
        self.closed = true;
        let err = self.closed_error();
        self.fail_where(|_| true, &err);
        self.out.gauges = true;
        self.out.changed = true;
    }

    /// No worker can serve and every slot is failing to start (or
    /// crash-looping): the error to fail callers with at once, and whether
    /// it is a crash loop.
    pub(crate) fn unavailable(&self, now: Instant) -> Option<(Arc<LaunchError>, bool)> {
        if self.slots.is_empty() || self.has_ready_worker() {
            return None;
        }
        let mut crash_loop = false;
        for s in &self.slots {
            if s.launch_failures > 0 {
                continue;
            }
            if s.crash_looping(now, &self.cfg.crash_loop) {
                crash_loop = true;
                continue;
            }
            return None;
        }
        let err = self
            .slots
            .iter()
            .filter_map(|s| s.last_error.clone())
            .next_back()
            .or_else(|| self.last_error.clone())?;
        Some((err, crash_loop))
    }

    fn fail_if_unavailable(&mut self, now: Instant) {
        if self.queue.is_empty() {
            return;
        }
        if let Some((last_error, crash_loop)) = self.unavailable(now) {
            let err = PoolError::Unavailable {
                pool: self.cfg.name.clone(),
                last_error,
                crash_loop,
            };
            self.fail_where(|_| true, &err);
        }
    }

    /// Fails the callers queued for `worker`, which is gone.
    fn fail_targeted(&mut self, worker: WorkerId) {
        let err = self.gone_error(worker);
        self.fail_where(|t| t == Some(worker), &err);
    }

    fn fail_where(&mut self, mut pred: impl FnMut(Option<WorkerId>) -> bool, err: &PoolError) {
        for w in self.queue.take_where(|w| pred(w.target)) {
            if w.probe {
                self.breaker.cancel_probe();
            }
            self.out.failures.push((w.id, err.clone()));
        }
    }
}
