//! Launching workers, and the supervisors' reports that carry a metric or
//! a log line besides the scheduler event.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use portpool_transport::{LaunchError, WorkerExit, WorkerId};
use tokio::time::Instant;
use tracing::Instrument;

use super::{Driver, Handle};
use crate::metrics;
use crate::sched::SlotId;

impl Driver {
    /// Launches one worker (bounded by the startup concurrency).
    pub(crate) async fn launch(&self, slot: SlotId) -> Result<Handle, LaunchError> {
        let id = WorkerId(self.next_worker.fetch_add(1, Ordering::Relaxed));
        let span = tracing::info_span!("portpool.launch", pool = %self.config.name, worker = %id, slot);
        async move {
            let _permit = self.start_sem.acquire().await;
            let t0 = Instant::now();
            // The launcher bounds its own wait for the hello, so an init
            // time-out keeps the pid and the stderr tail it knows.
            let launcher = self.launcher.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let res = match (launcher, self.config.init_timeout) {
                (None, _) => Err(LaunchError::Other {
                    worker: id,
                    reason: format!("pool {:?} is shut down: it launches no more workers", self.name()),
                }),
                (Some(launcher), Some(after)) => launcher.launch_within(id, after).await,
                (Some(launcher), None) => launcher.launch(id).await,
            };
            metrics::start_duration(self.name(), res.is_ok(), t0.elapsed());
            match &res {
                Ok(w) => tracing::info!(pid = ?w.info().pid, took = ?t0.elapsed(), "worker ready"),
                Err(e) => tracing::warn!(error = %e, "worker failed to start"),
            }
            res.map(Arc::from)
        }
        .instrument(span)
        .await
    }

    /// The pool is shut down and its tasks are gone: lets go of the
    /// launcher (a clone the caller kept keeps it alive).
    pub(crate) fn release_launcher(&self) {
        // Dropped here, outside the lock.
        let _launcher = self.launcher.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// `slot` launched `worker`: it serves from now on.
    pub(crate) fn on_ready(&self, slot: SlotId, worker: Handle) {
        let info = worker.info();
        let (id, hello) = (info.id, info.max_concurrency);
        self.with(|s, now| s.on_ready(slot, id, worker, hello, now));
    }

    /// A launch failed. `counts` is false for a failed replacement while
    /// the old worker still serves.
    pub(crate) fn on_launch_failed(&self, slot: SlotId, err: LaunchError, counts: bool) {
        self.with(|s, now| {
            s.on_launch_failed(slot, err, counts, now);
            metrics::restart(self.name(), "launch_failure");
        });
    }

    /// `worker` ended (crashed, or killed by the pool: `reason` is the
    /// restart metric's label).
    pub(crate) fn on_crash(&self, slot: SlotId, worker: WorkerId, exit: WorkerExit, reason: &'static str) {
        let looping = self.with(|s, now| {
            let looping = s.on_crash(slot, worker, &exit, now);
            metrics::restart(self.name(), reason);
            looping
        });
        if let Some(n) = looping {
            let window = self.config.crash_loop.window;
            tracing::error!(pool = %self.config.name, slot, %worker, %exit, "crash loop: {n} crashes within {window:?}");
        }
    }

    /// `slot`'s worker is being replaced by a recycle (`reason`: the
    /// restart metric's label).
    pub(crate) fn on_replaced(&self, slot: SlotId, reason: &'static str) {
        self.with(|s, _| {
            s.on_replaced(slot);
            metrics::restart(self.name(), reason);
        });
    }
}
