//! The scheduler, sans IO: the pool's rules as plain data and functions.
//!
//! [`Scheduler`] holds the slots, the running workers, the wait queue and
//! the breaker. Every event (a checkout asked for, a slot released, a call
//! finished, a worker ready or crashed, time passed) is a method that takes
//! `now` and changes the state; what the outside world must then do (wake
//! these waiters with a slot or an error, start a supervisor for a new
//! slot, tell a slot's supervisor to consider recycling, refresh the
//! gauges) accumulates in an [`Outbox`] the shell drains after each event.
//! Nothing here spawns, sleeps, reads a clock or knows tokio: the async
//! shell (`crate::driver`) owns the mutex, the channels, the tasks and the
//! clock.
//!
//! - `slots.rs`: worker slots and the crash-loop rule;
//! - `workers.rs`: running workers, [`Checkout`] kinds and picking;
//! - `queue.rs`: the FIFO wait queue;
//! - `checkout.rs`: admission, dispatch, release, waiting time-outs and
//!   recording a finished call;
//! - `lifecycle.rs`: what supervisors report (ready, launch failed,
//!   crashed, draining, retired, gone) and shutdown;
//! - `outcome.rs`: classifying a call's result, recycle decisions;
//! - `breaker.rs`: the circuit breaker;
//! - `snapshot.rs`: the status snapshot and gauge counts;
//! - `deadline.rs`: the one "never".

mod breaker;
mod checkout;
mod deadline;
mod lifecycle;
mod outcome;
mod queue;
mod slots;
mod snapshot;
mod workers;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Instant;

use portpool_transport::{LaunchError, WorkerId};

pub(crate) use breaker::Breaker;
pub(crate) use checkout::{Admission, Expiry, Grant, Request};
pub(crate) use deadline::NEVER;
pub(crate) use outcome::Outcome;
pub(crate) use queue::WaiterId;
pub(crate) use slots::{SlotId, SlotPhase};
pub use workers::Checkout;
pub(crate) use workers::Liveness;

use crate::{PoolConfig, PoolError};
use outcome::CountedCrashes;
use queue::Queue;
use slots::Slot;
use workers::Entry;

/// What the shell must do after an event, drained with
/// [`Scheduler::take_outbox`].
#[derive(Debug)]
pub(crate) struct Outbox<W> {
    /// Queued callers to wake with a slot. If one is gone, hand the slot
    /// back with [`Scheduler::ungrant`].
    pub(crate) grants: Vec<(WaiterId, Grant<W>)>,
    /// Queued callers to wake with an error.
    pub(crate) failures: Vec<(WaiterId, PoolError)>,
    /// New slots: start a supervisor for each.
    pub(crate) start: Vec<SlotId>,
    /// Slots whose supervisor should ask [`Scheduler::recycle_reason`].
    pub(crate) recycle: Vec<SlotId>,
    /// Workers by state changed: refresh those gauges.
    pub(crate) gauges: bool,
    /// The breaker changed state.
    pub(crate) breaker: bool,
    /// Something a waiting condition looks at changed (readiness, idleness,
    /// slots, closing): wake those who wait for one.
    pub(crate) changed: bool,
}

impl<W> Default for Outbox<W> {
    fn default() -> Self {
        Outbox {
            grants: Vec::new(),
            failures: Vec::new(),
            start: Vec::new(),
            recycle: Vec::new(),
            gauges: false,
            breaker: false,
            changed: false,
        }
    }
}

impl<W> Outbox<W> {
    /// Nothing to do.
    pub(crate) fn is_empty(&self) -> bool {
        self.grants.is_empty()
            && self.failures.is_empty()
            && self.start.is_empty()
            && self.recycle.is_empty()
            && !self.gauges
            && !self.breaker
            && !self.changed
    }
}

/// The pool's scheduling state. `W` is a worker handle (the shell's
/// `Arc<dyn Worker>`; a fake in tests).
#[derive(Debug)]
pub(crate) struct Scheduler<W> {
    cfg: Arc<PoolConfig>,
    closed: bool,
    slots: Vec<Slot>,
    entries: Vec<Entry<W>>,
    queue: Queue,
    next_slot: SlotId,
    breaker: Breaker,
    /// The most recent launch failure of any slot.
    last_error: Option<Arc<LaunchError>>,
    /// A worker was ready at least once (until then, waiting is start-up
    /// time, not a checkout time-out).
    ever_ready: bool,
    counted: CountedCrashes,
    out: Outbox<W>,
}

impl<W: Liveness> Scheduler<W> {
    pub(crate) fn new(cfg: Arc<PoolConfig>) -> Self {
        Scheduler {
            breaker: Breaker::new(cfg.breaker),
            cfg,
            closed: false,
            slots: Vec::new(),
            entries: Vec::new(),
            queue: Queue::default(),
            next_slot: 0,
            last_error: None,
            ever_ready: false,
            counted: CountedCrashes::default(),
            out: Outbox::default(),
        }
    }

    /// What the shell must do now; leaves the outbox empty.
    pub(crate) fn take_outbox(&mut self) -> Outbox<W> {
        std::mem::take(&mut self.out)
    }

    // ---- queries ----------------------------------------------------------

    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    pub(crate) fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// Ready (not draining) workers, for binding new sessions.
    pub(crate) fn ready_workers(&self) -> Vec<WorkerId> {
        self.entries.iter().filter(|e| e.ready()).map(|e| e.id).collect()
    }

    pub(crate) fn has_ready_worker(&self) -> bool {
        self.entries.iter().any(Entry::ready)
    }

    /// Whether `worker` is in the pool and alive (ready, leased or draining).
    pub(crate) fn serving(&self, worker: WorkerId) -> bool {
        self.entries.iter().any(|e| e.id == worker && e.serving())
    }

    /// Every serving worker (ready, leased or draining) with its handle.
    pub(crate) fn serving_workers(&self) -> impl Iterator<Item = (WorkerId, &W)> + '_ {
        self.entries
            .iter()
            .filter(|e| e.serving())
            .map(|e| (e.id, &e.worker))
    }

    /// The worker's handle, if it is in the pool.
    pub(crate) fn worker(&self, worker: WorkerId) -> Option<W> {
        self.entry(worker).map(|e| e.worker.clone())
    }

    /// No call on `worker` and (when `pins_count`) no pinned session, or
    /// it is gone.
    pub(crate) fn quiet(&self, worker: WorkerId, pins_count: bool) -> bool {
        match self.entry(worker) {
            Some(e) if pins_count => e.idle(),
            Some(e) => e.in_use == 0,
            None => true,
        }
    }

    /// Every slot in `slots` finished its first launch attempt (or is gone).
    pub(crate) fn first_attempts_done(&self, slots: &[SlotId]) -> bool {
        slots
            .iter()
            .all(|id| !self.slots.iter().any(|s| s.id == *id && s.attempts == 0))
    }

    /// Some worker is running and not draining.
    pub(crate) fn any_worker_up(&self) -> bool {
        self.entries.iter().any(|e| !e.draining)
    }

    /// Every slot's last launch failure.
    pub(crate) fn launch_errors(&self) -> Vec<LaunchError> {
        self.slots
            .iter()
            .filter_map(|s| s.last_error.as_deref().cloned())
            .collect()
    }

    pub(crate) fn breaker_state(&self, now: Instant) -> crate::BreakerState {
        self.breaker.state(now)
    }

    /// When an open breaker turns half-open.
    pub(crate) fn breaker_open_until(&self) -> Option<Instant> {
        self.breaker.open_until()
    }

    // ---- helpers ----------------------------------------------------------

    fn entry(&self, worker: WorkerId) -> Option<&Entry<W>> {
        self.entries.iter().find(|e| e.id == worker)
    }

    fn entry_mut(&mut self, worker: WorkerId) -> Option<&mut Entry<W>> {
        self.entries.iter_mut().find(|e| e.id == worker)
    }

    fn slot_mut(&mut self, slot: SlotId) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.id == slot)
    }

    pub(crate) fn closed_error(&self) -> PoolError {
        PoolError::PoolClosed {
            pool: self.cfg.name.clone(),
        }
    }

    fn gone_error(&self, worker: WorkerId) -> PoolError {
        PoolError::WorkerGone {
            pool: self.cfg.name.clone(),
            worker,
        }
    }
}
