//! The wait queue: callers waiting for a worker slot, in arrival order.
//! Who is served first is decided by the scheduler (`checkout.rs`); this
//! file keeps the order and the ids.

use std::collections::VecDeque;

use portpool_transport::WorkerId;

use super::workers::Checkout;

/// A queued caller's id, unique for the pool's life.
pub(crate) type WaiterId = u64;

/// One queued caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Waiter {
    pub(crate) id: WaiterId,
    pub(crate) kind: Checkout,
    /// Only this worker will do (session affinity).
    pub(crate) target: Option<WorkerId>,
    /// Holds one of the breaker's half-open probe places.
    pub(crate) probe: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Queue {
    waiters: VecDeque<Waiter>,
    next_id: WaiterId,
}

impl Queue {
    pub(crate) fn len(&self) -> usize {
        self.waiters.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Waiter> {
        self.waiters.iter()
    }

    pub(crate) fn get(&self, i: usize) -> Option<Waiter> {
        self.waiters.get(i).copied()
    }

    pub(crate) fn contains(&self, id: WaiterId) -> bool {
        self.waiters.iter().any(|w| w.id == id)
    }

    /// Queues a caller at the back; returns its id.
    pub(crate) fn push(&mut self, kind: Checkout, target: Option<WorkerId>, probe: bool) -> WaiterId {
        let id = self.next_id;
        self.next_id += 1;
        self.waiters.push_back(Waiter {
            id,
            kind,
            target,
            probe,
        });
        id
    }

    pub(crate) fn remove_at(&mut self, i: usize) -> Option<Waiter> {
        self.waiters.remove(i)
    }

    pub(crate) fn remove(&mut self, id: WaiterId) -> Option<Waiter> {
        let pos = self.waiters.iter().position(|w| w.id == id)?;
        self.waiters.remove(pos)
    }

    /// Takes out every waiter `pred` selects, keeping the others' order.
    pub(crate) fn take_where(&mut self, mut pred: impl FnMut(&Waiter) -> bool) -> Vec<Waiter> {
        let mut taken = Vec::new();
        self.waiters.retain(|w| {
            if pred(w) {
                taken.push(*w);
                false
            } else {
                true
            }
        });
        taken
    }

    /// Whether a waiter queued now for `target` (`None`: any worker) would
    /// have someone ahead of it who could take what it would take: for any
    /// worker, a caller queued for any worker; for one worker, a caller
    /// for that worker, or an exclusive caller that worker is `reserved`
    /// for (see `workers::reserved_for_exclusive`).
    pub(crate) fn ahead_of(
        &self,
        target: Option<WorkerId>,
        reserved: impl FnOnce() -> Option<WorkerId>,
    ) -> bool {
        match target {
            None => self.waiters.iter().any(|w| w.target.is_none()),
            Some(t) => {
                self.waiters.iter().any(|w| w.target == Some(t))
                    || (self
                        .waiters
                        .iter()
                        .any(|w| w.target.is_none() && w.kind == Checkout::Exclusive)
                        && reserved() == Some(t))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_order_is_kept() {
        let mut q = Queue::default();
        let a = q.push(Checkout::Shared, None, false);
        let b = q.push(Checkout::Exclusive, Some(WorkerId(1)), false);
        let c = q.push(Checkout::Shared, Some(WorkerId(2)), true);
        assert!(a != b && b != c);
        assert_eq!(q.remove(b).map(|w| w.kind), Some(Checkout::Exclusive));
        assert_eq!(q.remove(b), None, "removed once");
        let d = q.push(Checkout::Shared, None, false);
        assert!(d > c, "ids are never reused");
        let taken = q.take_where(|w| w.target.is_none());
        assert_eq!(taken.iter().map(|w| w.id).collect::<Vec<_>>(), vec![a, d]);
        assert_eq!(q.iter().map(|w| w.id).collect::<Vec<_>>(), vec![c]);
    }

    #[test]
    fn who_is_ahead() {
        let mut q = Queue::default();
        assert!(!q.ahead_of(None, || None));
        q.push(Checkout::Shared, Some(WorkerId(1)), false);
        assert!(
            !q.ahead_of(None, || None),
            "targeted callers never block untargeted ones"
        );
        assert!(q.ahead_of(Some(WorkerId(1)), || None));
        assert!(!q.ahead_of(Some(WorkerId(2)), || None));
        q.push(Checkout::Exclusive, None, false);
        assert!(q.ahead_of(None, || None));
        assert!(
            q.ahead_of(Some(WorkerId(2)), || Some(WorkerId(2))),
            "reserved for the exclusive waiter"
        );
        assert!(!q.ahead_of(Some(WorkerId(2)), || Some(WorkerId(3))));
    }
}
