//! [`SlotGuard`]: one checked-out slot, given back on drop whatever the
//! reason for the drop (return, panic, cancellation).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use portpool_transport::{Worker, WorkerId};

use crate::sched::Checkout;

/// Who takes a slot back (the pool's driver).
pub(crate) trait SlotOwner: Send + Sync + 'static {
    /// Gives back one slot on `worker`; `probe`: it still held a half-open
    /// probe place.
    fn release(&self, worker: WorkerId, kind: Checkout, probe: bool);
}

/// One slot (exclusive: the whole worker) held for a caller.
pub(crate) struct SlotGuard<O: SlotOwner> {
    owner: Arc<O>,
    pub(crate) worker: Arc<dyn Worker>,
    pub(crate) id: WorkerId,
    pub(crate) kind: Checkout,
    probe: AtomicBool,
    armed: bool,
}

impl<O: SlotOwner> std::fmt::Debug for SlotGuard<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotGuard")
            .field("worker", &self.id)
            .field("kind", &self.kind)
            .finish()
    }
}

impl<O: SlotOwner> SlotGuard<O> {
    pub(crate) fn new(
        owner: Arc<O>,
        id: WorkerId,
        worker: Arc<dyn Worker>,
        kind: Checkout,
        probe: bool,
    ) -> Self {
        SlotGuard {
            owner,
            worker,
            id,
            kind,
            probe: AtomicBool::new(probe),
            armed: true,
        }
    }

    /// The pool the slot belongs to.
    pub(crate) fn owner(&self) -> &Arc<O> {
        &self.owner
    }

    /// Takes the half-open probe token, if this checkout holds it.
    pub(crate) fn take_probe(&self) -> bool {
        self.probe.swap(false, Ordering::AcqRel)
    }

    /// Forgets the slot without giving it back (the owner takes it back
    /// itself); returns whether it held a probe place.
    pub(crate) fn disarm(mut self) -> bool {
        self.armed = false;
        self.take_probe()
    }
}

impl<O: SlotOwner> Drop for SlotGuard<O> {
    fn drop(&mut self) {
        if self.armed {
            self.armed = false;
            self.owner.release(self.id, self.kind, self.take_probe());
        }
    }
}
