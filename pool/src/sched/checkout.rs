//! Checkouts: admission (serve now, queue, or refuse), dispatch of freed
//! slots to queued callers in FIFO order, release, a waiter's time-out or
//! cancellation, and recording a finished call.

use std::time::Instant;

use portpool_transport::WorkerId;

use super::outcome::{recycle_due, Outcome, Streak, Verdict};
use super::queue::WaiterId;
use super::slots::SlotPhase;
use super::workers::{pick, pick_target, reserved_for_exclusive, Checkout, Liveness};
use super::Scheduler;
use crate::PoolError;

/// A checkout asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) kind: Checkout,
    /// Only this worker will do (session affinity).
    pub(crate) target: Option<WorkerId>,
    /// A busy target is `WorkerBusy` at once instead of a wait.
    pub(crate) fail_fast: bool,
    /// The checkout serves one call (or stream), so it may be the breaker's
    /// half-open probe; a lease held idle must not block the pool.
    pub(crate) may_probe: bool,
}

/// A slot handed to a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant<W> {
    pub(crate) worker: WorkerId,
    pub(crate) handle: W,
    pub(crate) kind: Checkout,
    /// The checkout holds a half-open probe place: its call's outcome
    /// decides the breaker (or give it back with the release).
    pub(crate) probe: bool,
}

/// The answer to a [`Request`].
#[derive(Debug)]
pub(crate) enum Admission<W> {
    /// Served at once.
    Granted(Grant<W>),
    /// Queued: the answer comes through the outbox under this id.
    Queued(WaiterId),
    /// Refused at once.
    Refused(PoolError),
}

/// A waiter's checkout time-out passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// It was answered already (the answer is on its way).
    Answered,
    /// The pool is still starting its first worker: start-up time is not a
    /// checkout time-out; wait another checkout time-out.
    Extend,
    /// It left the queue: fail it with a time-out.
    TimedOut,
}

impl<W: Liveness> Scheduler<W> {
    /// A caller asks for a slot: served at once if a worker is free and
    /// nobody who could take it is queued, else queued in FIFO order (or
    /// refused: closed, breaker open, target gone or busy with
    /// `fail_fast`, pool unavailable, queue full).
    pub(crate) fn acquire(&mut self, req: Request, now: Instant) -> Admission<W> {
        if self.closed {
            return Admission::Refused(self.closed_error());
        }
        let probe = match self.breaker.admit(now) {
            Ok(true) if !req.may_probe => {
                self.breaker.cancel_probe();
                false
            }
            Ok(probe) => probe,
            Err(retry_after) => {
                return Admission::Refused(PoolError::CircuitOpen {
                    pool: self.cfg.name.clone(),
                    retry_after,
                })
            }
        };
        if !self.queue.is_empty() {
            // Serve whoever can be served first, so what remains queued
            // really is blocked.
            self.dispatch(now);
        }
        let entries = &self.entries;
        if !self
            .queue
            .ahead_of(req.target, || reserved_for_exclusive(entries))
        {
            let picked = match req.target {
                Some(t) => pick_target(entries, req.kind, t),
                None => pick(entries, req.kind),
            };
            if let Some(idx) = picked {
                return Admission::Granted(self.grant(idx, req.kind, probe, now));
            }
        }
        if let Some(err) = self.refusal(req, now) {
            if probe {
                self.breaker.cancel_probe();
            }
            return Admission::Refused(err);
        }
        let id = self.queue.push(req.kind, req.target, probe);
        if req.target.is_none() {
            self.maybe_scale_up();
        }
        Admission::Queued(id)
    }

    /// Why a request that cannot be served now must not wait either.
    fn refusal(&self, req: Request, now: Instant) -> Option<PoolError> {
        let pool = self.cfg.name.clone();
        match req.target {
            Some(worker) if !self.serving(worker) => Some(PoolError::WorkerGone { pool, worker }),
            Some(worker) if req.fail_fast => Some(PoolError::WorkerBusy { pool, worker }),
            Some(_) => (self.queue.len() >= self.cfg.max_queue).then_some(PoolError::QueueFull {
                pool,
                max: self.cfg.max_queue,
            }),
            None => match self.unavailable(now) {
                Some((last_error, crash_loop)) => Some(PoolError::Unavailable {
                    pool,
                    last_error,
                    crash_loop,
                }),
                None => (self.queue.len() >= self.cfg.max_queue).then_some(PoolError::QueueFull {
                    pool,
                    max: self.cfg.max_queue,
                }),
            },
        }
    }

    fn grant(&mut self, idx: usize, kind: Checkout, probe: bool, now: Instant) -> Grant<W> {
        let e = &mut self.entries[idx];
        e.take(kind, now);
        if kind == Checkout::Exclusive {
            self.out.gauges = true;
        }
        Grant {
            worker: e.id,
            handle: e.worker.clone(),
            kind,
            probe,
        }
    }

    /// Hands free slots to queued callers. FIFO for callers that take any
    /// worker (the first that cannot be served stops the rest, so an
    /// exclusive waiter is not starved); callers waiting for one
    /// particular worker never block others, but wait behind an exclusive
    /// waiter for the worker reserved for it.
    ///
    /// Repeated until a pass grants nothing: a grant changes which worker
    /// is reserved for an exclusive waiter, which may free a targeted
    /// waiter an earlier pass skipped.
    pub(crate) fn dispatch(&mut self, now: Instant) {
        loop {
            let granted = self.out.grants.len();
            self.dispatch_pass(now);
            if self.out.grants.len() == granted {
                break;
            }
        }
    }

    fn dispatch_pass(&mut self, now: Instant) {
        let mut any_blocked = false;
        let mut reserved: Option<WorkerId> = None;
        // Targets with a waiter that could not be served: later waiters for
        // the same worker stay behind it (FIFO per worker, as `acquire`
        // queues them), so a shared call cannot overtake an exclusive
        // checkout of that worker forever.
        let mut blocked_targets: Vec<WorkerId> = Vec::new();
        let mut i = 0;
        while let Some(w) = self.queue.get(i) {
            let picked = match w.target {
                Some(t) if reserved == Some(t) || blocked_targets.contains(&t) => None,
                Some(t) => pick_target(&self.entries, w.kind, t),
                None if any_blocked => None,
                None => pick(&self.entries, w.kind),
            };
            let Some(idx) = picked else {
                if let Some(t) = w.target {
                    blocked_targets.push(t);
                }
                if w.target.is_none() {
                    any_blocked = true;
                    if w.kind == Checkout::Exclusive && reserved.is_none() {
                        reserved = reserved_for_exclusive(&self.entries);
                    }
                }
                i += 1;
                continue;
            };
            self.queue.remove_at(i);
            let grant = self.grant(idx, w.kind, w.probe, now);
            self.out.grants.push((w.id, grant));
        }
    }

    /// A granted slot could not be delivered (its caller is gone): take it
    /// back. Call [`Scheduler::dispatch`] after the last one.
    pub(crate) fn ungrant(&mut self, grant: &Grant<W>, now: Instant) {
        if let Some(e) = self.entry_mut(grant.worker) {
            e.untake(grant.kind, now);
        }
        if grant.probe {
            self.breaker.cancel_probe();
        }
        if grant.kind == Checkout::Exclusive {
            self.out.gauges = true;
        }
    }

    /// A slot comes back (`probe`: it still held its probe place, its call
    /// having recorded no outcome).
    pub(crate) fn release(&mut self, worker: WorkerId, kind: Checkout, probe: bool, now: Instant) {
        if probe {
            self.breaker.cancel_probe();
        }
        if let Some(e) = self.entry_mut(worker) {
            e.untake(kind, now);
            if e.draining && e.in_use == 0 {
                self.out.changed = true;
            }
        }
        if kind == Checkout::Exclusive {
            self.out.gauges = true;
        }
        self.dispatch(now);
    }

    /// A queued caller gave up (its future was dropped).
    pub(crate) fn cancel(&mut self, waiter: WaiterId, now: Instant) {
        self.remove_waiter(waiter);
        // A waiter that blocked the head of the queue is gone: those
        // behind it may be servable now.
        self.dispatch(now);
    }

    /// A queued caller's checkout time-out passed.
    pub(crate) fn expire(&mut self, waiter: WaiterId, now: Instant) -> Expiry {
        if !self.queue.contains(waiter) {
            return Expiry::Answered;
        }
        if !self.ever_ready && !self.slots.is_empty() && !self.closed {
            return Expiry::Extend;
        }
        self.remove_waiter(waiter);
        self.dispatch(now);
        Expiry::TimedOut
    }

    fn remove_waiter(&mut self, waiter: WaiterId) {
        if self.queue.remove(waiter).is_some_and(|w| w.probe) {
            self.breaker.cancel_probe();
        }
    }

    /// Records a finished call on `worker`: breaker, served count, time-outs
    /// in a row, recycling.
    pub(crate) fn finish_call(&mut self, worker: WorkerId, probe: bool, outcome: Outcome, now: Instant) {
        let fault = match outcome.verdict {
            Verdict::Neutral => None,
            // Already counted: neutral, like a closed worker.
            Verdict::Crash(w) if !self.counted.first(w) => None,
            Verdict::Crash(_) | Verdict::Fault => Some(true),
            Verdict::Healthy => Some(false),
        };
        match fault {
            Some(fault) => self.out.breaker |= self.breaker.record(fault, probe, now),
            None if probe => self.breaker.cancel_probe(),
            None => {}
        }
        let policy = self.cfg.recycle;
        let Some(e) = self.entry_mut(worker) else { return };
        e.served += 1;
        match outcome.streak {
            Streak::Grow => e.timeouts_in_a_row += 1,
            Streak::Keep => {}
            Streak::Reset => e.timeouts_in_a_row = 0,
        }
        if recycle_due(&policy, e.served, e.timeouts_in_a_row).is_some() {
            let slot = e.slot;
            self.out.recycle.push(slot);
        }
    }

    /// More callers wait than slots are starting: start one more (up to
    /// `max_workers`).
    fn maybe_scale_up(&mut self) {
        if self.closed || self.slots.len() >= self.cfg.max_workers {
            return;
        }
        let coming = self
            .slots
            .iter()
            .filter(|s| s.phase != SlotPhase::Running)
            .count();
        if self.queue.len() > coming {
            self.new_slot();
        }
    }
}
