//! The async shell around the [scheduler](crate::sched): owns the mutex
//! (never held across an await), the channels that wake queued callers,
//! the supervisor tasks, the launcher and the clock. Each event runs on
//! the scheduler under the lock ([`Driver::with`]), then the driver
//! carries out the scheduler's outbox: sends slots and errors to waiting
//! callers, starts supervisors for new slots, pokes a slot's supervisor to
//! recycle, refreshes the gauges and wakes state watchers.
//!
//! - `checkout.rs`: the async checkout (queueing, time-out, cancellation);
//! - `launch.rs`: launching a worker and the supervisor-facing reports
//!   that carry metrics and logs;
//! - `gauges.rs`: gauges and the status snapshot.

mod checkout;
mod gauges;
mod launch;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use portpool_transport::{CallError, Launcher, Value, Worker, WorkerId};
use tokio::sync::{oneshot, watch, Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::guard::{SlotGuard, SlotOwner};
use crate::sched::{Checkout, Liveness, Outcome, Scheduler, SlotId, WaiterId};
use crate::{metrics, PoolConfig, PoolError};

/// A worker handle as the scheduler holds it.
pub(crate) type Handle = Arc<dyn Worker>;

/// A slot checked out of this pool.
pub(crate) type Guard = SlotGuard<Driver>;

/// Runs one slot's supervisor until the slot ends (injected by the
/// builder, so the driver does not depend on the supervisor).
pub(crate) type RunSlot = fn(Arc<Driver>, SlotId) -> Pin<Box<dyn Future<Output = ()> + Send>>;

impl Liveness for Handle {
    fn is_alive(&self) -> bool {
        Worker::is_alive(&**self)
    }
}

/// The scheduler's clock: tokio's (paused in tests), as a std instant.
pub(crate) fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// `from + d` on tokio's clock, `d` capped at "never".
pub(crate) fn deadline(from: Instant, d: std::time::Duration) -> Instant {
    from + d.min(crate::sched::NEVER)
}

pub(crate) struct State {
    sched: Scheduler<Handle>,
    /// Queued callers' reply channels.
    waiters: HashMap<WaiterId, oneshot::Sender<Result<Guard, PoolError>>>,
    /// Each slot's "consider recycling" bell, rung by its outbox.
    recycle: HashMap<SlotId, Arc<Notify>>,
}

pub(crate) struct Driver {
    pub(crate) config: Arc<PoolConfig>,
    /// The pool's name as a metric label (see [`metrics::label`]).
    pub(crate) label: ::metrics::SharedString,
    me: Weak<Driver>,
    /// Taken at shutdown: what a launcher keeps for launches (a process
    /// launcher's fork server) goes with the pool's last use of it, not
    /// with the handle.
    launcher: Mutex<Option<Arc<dyn Launcher>>>,
    state: Mutex<State>,
    next_worker: AtomicU64,
    start_sem: Semaphore,
    run_slot: RunSlot,
    /// The shutdown deadline, once the pool is told to stop.
    pub(crate) stop: watch::Sender<Option<Instant>>,
    /// Rung when the scheduler's outbox says something watched changed.
    changed: Notify,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Held while a caller of [`Driver::join_tasks`] awaits the tasks.
    joining: tokio::sync::Mutex<()>,
}

/// Handles taken out of [`Driver::tasks`] to await; the ones still
/// running go back if the awaiting caller is cancelled.
struct Joining<'a> {
    driver: &'a Driver,
    handles: Vec<JoinHandle<()>>,
}

impl Drop for Joining<'_> {
    fn drop(&mut self) {
        if !self.handles.is_empty() {
            let mut tasks = self.driver.tasks.lock().unwrap_or_else(|e| e.into_inner());
            tasks.extend(self.handles.drain(..).filter(|h| !h.is_finished()));
        }
    }
}

impl Driver {
    pub(crate) fn new(config: PoolConfig, launcher: Arc<dyn Launcher>, run_slot: RunSlot) -> Arc<Self> {
        let config = Arc::new(config);
        Arc::new_cyclic(|me| Driver {
            start_sem: Semaphore::new(config.startup_concurrency),
            label: metrics::label(&config.name),
            state: Mutex::new(State {
                sched: Scheduler::new(config.clone()),
                waiters: HashMap::new(),
                recycle: HashMap::new(),
            }),
            config,
            me: me.clone(),
            launcher: Mutex::new(Some(launcher)),
            next_worker: AtomicU64::new(0),
            run_slot,
            stop: watch::channel(None).0,
            changed: Notify::new(),
            tasks: Mutex::new(Vec::new()),
            joining: tokio::sync::Mutex::new(()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }

    /// Reads the scheduler's state.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&Scheduler<Handle>) -> R) -> R {
        f(&self.lock().sched)
    }

    /// Runs one event on the scheduler, then carries out its outbox.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Scheduler<Handle>, std::time::Instant) -> R) -> R {
        self.with_state(|st, now| f(&mut st.sched, now))
    }

    /// [`Driver::with`], with the reply channels at hand.
    fn with_state<R>(&self, f: impl FnOnce(&mut State, std::time::Instant) -> R) -> R {
        let mut st = self.lock();
        let queued = st.sched.queue_len();
        let r = f(&mut st, now());
        self.carry_out(&mut st, queued);
        r
    }

    /// Does what the scheduler's outbox asks. `queued`: the queue's length
    /// before the event (its gauge is set when it changed).
    fn carry_out(&self, st: &mut State, queued: usize) {
        let mut changed = false;
        loop {
            let out = st.sched.take_outbox();
            if out.is_empty() {
                break;
            }
            let mut undelivered = false;
            for (waiter, grant) in out.grants {
                let tx = st.waiters.remove(&waiter);
                let delivered = match (tx, self.me.upgrade()) {
                    (Some(tx), Some(me)) => {
                        let guard =
                            Guard::new(me, grant.worker, grant.handle.clone(), grant.kind, grant.probe);
                        match tx.send(Ok(guard)) {
                            Ok(()) => true,
                            Err(Ok(guard)) => {
                                guard.disarm();
                                false
                            }
                            Err(Err(_)) => false,
                        }
                    }
                    _ => false,
                };
                if !delivered {
                    st.sched.ungrant(&grant, now());
                    undelivered = true;
                }
            }
            if undelivered {
                st.sched.dispatch(now());
            }
            for (waiter, err) in out.failures {
                if let Some(tx) = st.waiters.remove(&waiter) {
                    let _ = tx.send(Err(err));
                }
            }
            for slot in out.start {
                st.recycle.insert(slot, Arc::new(Notify::new()));
                if let Some(me) = self.me.upgrade() {
                    self.track(tokio::spawn((self.run_slot)(me, slot)));
                }
            }
            for slot in out.recycle {
                if let Some(bell) = st.recycle.get(&slot) {
                    bell.notify_one();
                }
            }
            if out.gauges {
                self.publish(&st.sched);
            }
            if out.breaker {
                self.publish_breaker(&st.sched);
            }
            changed |= out.changed;
        }
        if st.sched.queue_len() != queued {
            metrics::queue_depth(&self.label, st.sched.queue_len());
        }
        if changed {
            self.changed.notify_waiters();
        }
    }

    pub(crate) fn track(&self, handle: JoinHandle<()>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|h| !h.is_finished());
        tasks.push(handle);
    }

    /// Waits for every supervisor and drain task to finish. Callers take
    /// turns (concurrent shutdowns from two handles): each returns only once
    /// every task is done; a caller that is cancelled puts back the handles
    /// it had not seen finish, for the next.
    pub(crate) async fn join_tasks(&self) {
        let _turn = self.joining.lock().await;
        loop {
            let mut joining = Joining {
                driver: self,
                handles: std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner())),
            };
            if joining.handles.is_empty() {
                return;
            }
            while let Some(handle) = joining.handles.last_mut() {
                let _ = handle.await;
                joining.handles.pop();
            }
        }
    }

    /// Waits until `cond` holds (re-checked on every watched change) or the
    /// deadline passes; returns whether it holds.
    pub(crate) async fn wait_until(
        &self,
        deadline: Option<Instant>,
        mut cond: impl FnMut(&Scheduler<Handle>) -> bool,
    ) -> bool {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.read(&mut cond) {
                return true;
            }
            match deadline {
                Some(d) => {
                    if tokio::time::timeout_at(d, notified).await.is_err() {
                        return self.read(&mut cond);
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Records a finished call on `worker` (breaker, served count,
    /// recycling); see [`Outcome::of`] for `caller_deadline`.
    pub(crate) fn finish_call(
        &self,
        worker: WorkerId,
        probe: bool,
        res: &Result<Value, CallError>,
        caller_deadline: bool,
    ) {
        let outcome = Outcome::of(res, caller_deadline);
        self.with(|s, now| s.finish_call(worker, probe, outcome, now));
    }

    /// [`Driver::finish_call`], then gives the guard's slot back, under
    /// one lock (a pool's call: the slot served this call only).
    pub(crate) fn finish_and_release(
        &self,
        guard: Guard,
        res: &Result<Value, CallError>,
        caller_deadline: bool,
    ) {
        let (worker, kind) = (guard.id, guard.kind);
        let probe = guard.disarm();
        let outcome = Outcome::of(res, caller_deadline);
        self.with(|s, now| {
            s.finish_call(worker, probe, outcome, now);
            // The probe place, if any, ended with the call above.
            s.release(worker, kind, false, now);
        });
    }

    /// Adds (`add`) or removes a pin on `worker`; returns whether the
    /// worker is in the pool.
    pub(crate) fn pin(&self, worker: WorkerId, add: bool) -> bool {
        self.with(|s, _| s.pin(worker, add))
    }

    /// `slot`'s "consider recycling" bell.
    pub(crate) fn recycle_bell(&self, slot: SlotId) -> Arc<Notify> {
        self.lock().recycle.get(&slot).cloned().unwrap_or_default()
    }

    /// `slot`'s supervisor ended.
    pub(crate) fn remove_slot(&self, slot: SlotId) {
        self.with_state(|st, _| {
            st.recycle.remove(&slot);
            st.sched.remove_slot(slot);
        });
    }

    /// Stops `worker` if it is idle above `min_workers` (see
    /// `Scheduler::try_retire`); its slot is gone at once.
    pub(crate) fn try_retire(&self, slot: SlotId, worker: WorkerId) -> bool {
        self.with_state(|st, now| {
            let retired = st.sched.try_retire(slot, worker, now);
            if retired {
                st.recycle.remove(&slot);
            }
            retired
        })
    }

    pub(crate) fn closed_error(&self) -> PoolError {
        PoolError::PoolClosed {
            pool: self.config.name.clone(),
        }
    }

    /// Closes the pool: refuses new callers, fails queued ones, tells every
    /// supervisor to drain and stop by `deadline`.
    pub(crate) fn close(&self, deadline: Instant) {
        self.with(|s, _| s.close());
        self.stop.send_if_modified(|v| {
            if v.is_none() {
                *v = Some(deadline);
                true
            } else {
                false
            }
        });
    }
}

impl SlotOwner for Driver {
    fn release(&self, worker: WorkerId, kind: Checkout, probe: bool) {
        self.with(|s, now| s.release(worker, kind, probe, now));
    }
}
