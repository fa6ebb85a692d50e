//! The async checkout: asks the scheduler, and when queued waits for the
//! answer, the checkout time-out, or the caller giving up.

use std::sync::Arc;
use std::time::Duration;

use portpool_transport::WorkerId;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{deadline, Driver, Guard};
use crate::sched::{Admission, Checkout, Expiry, Request, WaiterId};
use crate::{metrics, PoolError};

/// Takes a queued waiter out of the queue if its future is dropped.
struct WaiterCleanup<'a> {
    driver: &'a Driver,
    id: WaiterId,
    active: bool,
}

impl Drop for WaiterCleanup<'_> {
    fn drop(&mut self) {
        if self.active {
            let id = self.id;
            self.driver.with_state(|st, now| {
                st.waiters.remove(&id);
                st.sched.cancel(id, now);
            });
        }
    }
}

impl Driver {
    /// Acquires a slot: at once if a worker is free and nobody is queued,
    /// else in FIFO order. Cancel-safe: dropping the future at any point
    /// leaves no waiter, slot or probe behind. `for_call`: the checkout
    /// serves one call (or stream) and may be the breaker's half-open
    /// probe; a lease may not.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        kind: Checkout,
        for_call: bool,
    ) -> Result<Guard, PoolError> {
        self.acquire_on(kind, None, false, for_call).await
    }

    /// Like [`Driver::acquire`], restricted to `target` when given. With
    /// `fail_fast`, a busy target is `WorkerBusy` at once instead of a wait.
    pub(crate) async fn acquire_on(
        self: &Arc<Self>,
        kind: Checkout,
        target: Option<WorkerId>,
        fail_fast: bool,
        may_probe: bool,
    ) -> Result<Guard, PoolError> {
        let start = Instant::now();
        let req = Request {
            kind,
            target,
            fail_fast,
            may_probe,
        };
        let admitted = self.with_state(|st, _| match st.sched.acquire(req, start.into_std()) {
            Admission::Queued(id) => {
                let (tx, rx) = oneshot::channel();
                st.waiters.insert(id, tx);
                Ok((id, rx))
            }
            Admission::Granted(g) => Err(Ok(Guard::new(self.clone(), g.worker, g.handle, g.kind, g.probe))),
            Admission::Refused(err) => Err(Err(err)),
        });
        let (waiter, mut rx) = match admitted {
            Ok(queued) => queued,
            Err(res) => {
                if res.is_ok() {
                    metrics::queue_wait(&self.label, Duration::ZERO);
                }
                return res;
            }
        };
        let mut cleanup = WaiterCleanup {
            driver: self,
            id: waiter,
            active: true,
        };
        let mut until = deadline(start, self.config.checkout_timeout);
        loop {
            tokio::select! {
                biased;
                res = &mut rx => {
                    cleanup.active = false;
                    let res = res.unwrap_or_else(|_| Err(self.closed_error()));
                    if res.is_ok() {
                        metrics::queue_wait(&self.label, start.elapsed());
                    }
                    return res;
                }
                _ = tokio::time::sleep_until(until) => {
                    let expiry = self.with_state(|st, now| {
                        let expiry = st.sched.expire(waiter, now);
                        if expiry == Expiry::TimedOut {
                            st.waiters.remove(&waiter);
                        }
                        expiry
                    });
                    match expiry {
                        Expiry::Extend => {
                            until = deadline(Instant::now(), self.config.checkout_timeout);
                        }
                        Expiry::TimedOut => {
                            cleanup.active = false;
                            return Err(PoolError::Timeout {
                                pool: self.config.name.clone(),
                                waited: start.elapsed(),
                            });
                        }
                        Expiry::Answered => {
                            // Answered under the lock: the answer is in the channel.
                            cleanup.active = false;
                            return rx.try_recv().unwrap_or_else(|_| Err(self.closed_error()));
                        }
                    }
                }
            }
        }
    }
}
