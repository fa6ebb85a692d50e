//! The gauges (workers by state, queue depth, breaker) and the status
//! snapshot, both read from the scheduler.

use std::sync::Arc;

use tokio::time::Instant;

use super::{now, Driver, Handle};
use crate::metrics;
use crate::sched::Scheduler;
use crate::status::{PoolStatus, WorkerState, WorkerStatus};

impl Driver {
    /// Sets every gauge from the scheduler, so the gauges say what
    /// `status()` says.
    pub(super) fn publish(&self, sched: &Scheduler<Handle>) {
        let counts = sched.state_counts();
        for state in WorkerState::ALL {
            metrics::workers(&self.label, state.as_str(), counts[state as usize]);
        }
        metrics::queue_depth(&self.label, sched.queue_len());
        metrics::breaker(&self.label, sched.breaker_state(now()));
    }

    /// The breaker changed: set its gauge, and again when an open breaker
    /// turns half-open by the passing of time alone.
    pub(super) fn publish_breaker(&self, sched: &Scheduler<Handle>) {
        metrics::breaker(&self.label, sched.breaker_state(now()));
        let Some(until) = sched.breaker_open_until() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let driver = self.me.clone();
        rt.spawn(async move {
            tokio::time::sleep_until(Instant::from_std(until)).await;
            if let Some(driver) = driver.upgrade() {
                let state = driver.read(|s| s.breaker_state(now()));
                metrics::breaker(&driver.label, state);
            }
        });
    }

    /// A snapshot of every worker, the queue and the breaker.
    pub(crate) fn status(&self) -> PoolStatus {
        let (status, rows) = self.read(|s| s.snapshot(now()));
        // Worker queries (RSS may read /proc, the stderr tail is copied)
        // happen outside the lock.
        let mut workers: Vec<WorkerStatus> = rows
            .into_iter()
            .map(|(mut w, worker): (WorkerStatus, Option<Arc<_>>)| {
                if let Some(worker) = worker {
                    let info = worker.info();
                    w.pid = info.pid;
                    w.endpoint = info.endpoint.clone();
                    w.address = Some(info.address.clone());
                    w.in_flight = worker.in_flight();
                    w.rss_bytes = worker.rss_bytes();
                    w.discarded_replies = worker.discarded_replies();
                    w.stderr_tail = worker.stderr_tail();
                }
                w
            })
            .collect();
        workers.sort_by_key(|w| (w.slot, w.id));
        PoolStatus { workers, ..status }
    }
}
