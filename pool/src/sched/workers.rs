//! Running workers as the scheduler sees them: capacity, slots handed out,
//! exclusivity, draining, pins, and the rules that pick one for a checkout.

use std::time::Instant;

use portpool_transport::WorkerId;

use super::slots::SlotId;
use crate::status::WorkerState;

/// What a checkout holds. An enum, so an invalid kind does not compile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Checkout {
    /// The whole worker: no other caller uses it until the lease is
    /// dropped. For multi-call conversations with per-process state.
    #[default]
    Exclusive,
    /// One of the worker's concurrency slots: other callers may run on the
    /// same worker at the same time, but calls through the lease always go
    /// to this worker.
    Shared,
}

/// The one thing the scheduler asks of a worker handle: is it alive now?
/// (A worker can die between two events; its crash is reported later.)
pub(crate) trait Liveness: Clone {
    fn is_alive(&self) -> bool;
}

/// A running worker in a slot.
#[derive(Debug)]
pub(crate) struct Entry<W> {
    pub(crate) slot: SlotId,
    pub(crate) id: WorkerId,
    pub(crate) worker: W,
    /// Calls the pool lets it run at once.
    pub(crate) capacity: usize,
    /// Slots handed out (calls, streams, leases).
    pub(crate) in_use: usize,
    pub(crate) exclusive: bool,
    pub(crate) draining: bool,
    pub(crate) served: u64,
    /// Calls that timed out in a row (any other outcome resets it).
    pub(crate) timeouts_in_a_row: u32,
    /// Holders (bound sessions) that ask recycling to wait, up to the
    /// drain time-out.
    pub(crate) pins: usize,
    pub(crate) ready_at: Instant,
    pub(crate) last_used: Instant,
}

impl<W: Liveness> Entry<W> {
    pub(crate) fn new(slot: SlotId, id: WorkerId, worker: W, capacity: usize, now: Instant) -> Self {
        Entry {
            slot,
            id,
            worker,
            capacity,
            in_use: 0,
            exclusive: false,
            draining: false,
            served: 0,
            timeouts_in_a_row: 0,
            pins: 0,
            ready_at: now,
            last_used: now,
        }
    }

    pub(crate) fn state(&self) -> WorkerState {
        if self.draining {
            WorkerState::Draining
        } else if self.exclusive {
            WorkerState::Leased
        } else {
            WorkerState::Ready
        }
    }

    /// Ready for new work: alive and not draining (leased counts as ready:
    /// it comes back).
    pub(crate) fn ready(&self) -> bool {
        !self.draining && self.worker.is_alive()
    }

    /// Alive, whatever it is doing (ready, leased or draining).
    pub(crate) fn serving(&self) -> bool {
        self.worker.is_alive()
    }

    /// Can take an untargeted checkout of some kind now.
    fn usable(&self) -> bool {
        self.ready() && !self.exclusive
    }

    /// Has room for a checkout of `kind` (ignoring liveness and draining).
    fn room_for(&self, kind: Checkout) -> bool {
        match kind {
            Checkout::Shared => self.in_use < self.capacity,
            Checkout::Exclusive => self.in_use == 0,
        }
    }

    pub(crate) fn take(&mut self, kind: Checkout, now: Instant) {
        self.in_use += 1;
        if kind == Checkout::Exclusive {
            self.exclusive = true;
        }
        self.last_used = now;
    }

    pub(crate) fn untake(&mut self, kind: Checkout, now: Instant) {
        self.in_use = self.in_use.saturating_sub(1);
        if kind == Checkout::Exclusive {
            self.exclusive = false;
        }
        self.last_used = now;
    }

    /// No call running and no pinned session.
    pub(crate) fn idle(&self) -> bool {
        self.in_use == 0 && self.pins == 0
    }
}

/// The worker an untargeted checkout of `kind` gets: shared, the one with
/// the fewest calls (then fewest served, then lowest id); exclusive, an
/// unused one with the fewest served.
pub(crate) fn pick<W: Liveness>(entries: &[Entry<W>], kind: Checkout) -> Option<usize> {
    let candidates = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.usable() && e.room_for(kind));
    match kind {
        Checkout::Shared => candidates.min_by_key(|(_, e)| (e.in_use, e.served, e.id)),
        Checkout::Exclusive => candidates.min_by_key(|(_, e)| (e.served, e.id)),
    }
    .map(|(i, _)| i)
}

/// The entry of `target` if it can take a checkout of `kind` now. A
/// draining worker still serves targeted calls: its sessions may finish
/// while it drains.
pub(crate) fn pick_target<W: Liveness>(
    entries: &[Entry<W>],
    kind: Checkout,
    target: WorkerId,
) -> Option<usize> {
    let (idx, e) = entries.iter().enumerate().find(|(_, e)| e.id == target)?;
    (e.room_for(kind) && !e.exclusive && e.serving()).then_some(idx)
}

/// The worker a blocked exclusive waiter will most likely get first: the
/// usable one with the fewest calls. Calls for that worker queue behind
/// the exclusive waiter, so session traffic cannot starve it.
pub(crate) fn reserved_for_exclusive<W: Liveness>(entries: &[Entry<W>]) -> Option<WorkerId> {
    entries
        .iter()
        .filter(|e| e.usable())
        .min_by_key(|e| (e.in_use, e.served, e.id))
        .map(|e| e.id)
}
