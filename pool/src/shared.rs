//! The pool's shared state: one mutex (never held across an await), the
//! FIFO wait queue, slot accounting and the breaker.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use portpool_transport::{CallError, LaunchError, Launcher, Value, Worker, WorkerExit, WorkerId};
use tokio::sync::{oneshot, watch, Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::breaker::Breaker;
use crate::status::{PoolStatus, WorkerState, WorkerStatus};
use crate::{metrics, Checkout, PoolConfig, PoolError};

pub(crate) type SlotId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotPhase {
    Starting,
    Running,
    Backoff,
}

pub(crate) struct SlotState {
    pub(crate) id: SlotId,
    pub(crate) phase: SlotPhase,
    /// Launch attempts finished (success or failure).
    pub(crate) attempts: u64,
    /// Consecutive failed launches.
    pub(crate) launch_failures: u32,
    pub(crate) restarts: u64,
    crashes: VecDeque<Instant>,
    pub(crate) last_error: Option<Arc<LaunchError>>,
    pub(crate) recycle: Arc<Notify>,
}

impl SlotState {
    fn crash_looping(&self, now: Instant, cfg: &PoolConfig) -> bool {
        let recent = self
            .crashes
            .iter()
            .filter(|t| now.saturating_duration_since(**t) < cfg.crash_loop.window)
            .count();
        recent >= cfg.crash_loop.max_restarts as usize
    }
}

pub(crate) struct Entry {
    pub(crate) slot: SlotId,
    pub(crate) id: WorkerId,
    pub(crate) worker: Arc<dyn Worker>,
    pub(crate) capacity: usize,
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

impl Entry {
    fn state(&self) -> WorkerState {
        if self.draining {
            WorkerState::Draining
        } else if self.exclusive {
            WorkerState::Leased
        } else {
            WorkerState::Ready
        }
    }

    fn usable(&self) -> bool {
        !self.draining && !self.exclusive && self.worker.is_alive()
    }
}

struct Waiter {
    id: u64,
    kind: Checkout,
    /// Only this worker will do (session affinity).
    target: Option<WorkerId>,
    probe: bool,
    tx: oneshot::Sender<Result<SlotGuard, PoolError>>,
}

pub(crate) struct State {
    pub(crate) closed: bool,
    pub(crate) slots: Vec<SlotState>,
    pub(crate) entries: Vec<Entry>,
    waiters: VecDeque<Waiter>,
    next_slot: u64,
    next_waiter: u64,
    breaker: Breaker,
    last_error: Option<Arc<LaunchError>>,
    ever_ready: bool,
    /// Workers whose crash the breaker already counted: one crash fails
    /// every call in flight on it, but it is one fault.
    counted_crashes: VecDeque<WorkerId>,
}

impl State {
    fn slot_mut(&mut self, slot: SlotId) -> Option<&mut SlotState> {
        self.slots.iter_mut().find(|s| s.id == slot)
    }

    fn entry_mut(&mut self, id: WorkerId) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| e.id == id)
    }

    fn pick(&self, kind: Checkout) -> Option<usize> {
        let candidates = self.entries.iter().enumerate().filter(|(_, e)| e.usable());
        match kind {
            Checkout::Shared => candidates
                .filter(|(_, e)| e.in_use < e.capacity)
                .min_by_key(|(_, e)| (e.in_use, e.served, e.id))
                .map(|(i, _)| i),
            Checkout::Exclusive => candidates
                .filter(|(_, e)| e.in_use == 0)
                .min_by_key(|(_, e)| (e.served, e.id))
                .map(|(i, _)| i),
        }
    }

    /// The entry of `target` if it can take a checkout of `kind` now.
    /// A draining worker still serves targeted calls: its sessions may
    /// finish while it drains.
    fn pick_target(&self, kind: Checkout, target: WorkerId) -> Option<usize> {
        let (idx, e) = self.entries.iter().enumerate().find(|(_, e)| e.id == target)?;
        let free = match kind {
            Checkout::Shared => e.in_use < e.capacity,
            Checkout::Exclusive => e.in_use == 0,
        };
        (free && !e.exclusive && e.worker.is_alive()).then_some(idx)
    }

    /// The worker a blocked exclusive waiter will most likely get first: the
    /// usable one with the fewest calls. Calls for that worker queue behind
    /// the exclusive waiter, so session traffic cannot starve it.
    fn reserved_for_exclusive(&self) -> Option<WorkerId> {
        self.entries
            .iter()
            .filter(|e| e.usable())
            .min_by_key(|e| (e.in_use, e.served, e.id))
            .map(|e| e.id)
    }

    pub(crate) fn has_ready_worker(&self) -> bool {
        self.entries.iter().any(|e| !e.draining && e.worker.is_alive())
    }

    fn serving(&self, target: WorkerId) -> bool {
        self.entries.iter().any(|e| e.id == target && e.worker.is_alive())
    }

    /// Fails the waiters queued for `worker`, which is gone.
    fn fail_targeted(&mut self, worker: WorkerId, err: &PoolError) {
        let mut kept = VecDeque::with_capacity(self.waiters.len());
        while let Some(w) = self.waiters.pop_front() {
            if w.target == Some(worker) {
                if w.probe {
                    self.breaker.cancel_probe();
                }
                let _ = w.tx.send(Err(err.clone()));
            } else {
                kept.push_back(w);
            }
        }
        self.waiters = kept;
    }

    /// No worker can serve and every slot is failing to start (or
    /// crash-looping): the error to fail callers with at once.
    fn unavailable(&self, cfg: &PoolConfig, now: Instant) -> Option<(Arc<LaunchError>, bool)> {
        if self.slots.is_empty() || self.entries.iter().any(|e| !e.draining && e.worker.is_alive()) {
            return None;
        }
        let mut crash_loop = false;
        for s in &self.slots {
            if s.launch_failures > 0 {
                continue;
            }
            if s.crash_looping(now, cfg) {
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

    fn remove_waiter(&mut self, id: u64) -> bool {
        match self.waiters.iter().position(|w| w.id == id) {
            Some(pos) => {
                if let Some(w) = self.waiters.remove(pos) {
                    if w.probe {
                        self.breaker.cancel_probe();
                    }
                }
                true
            }
            None => false,
        }
    }

    fn fail_waiters(&mut self, err: &PoolError) {
        while let Some(w) = self.waiters.pop_front() {
            if w.probe {
                self.breaker.cancel_probe();
            }
            let _ = w.tx.send(Err(err.clone()));
        }
    }
}

/// A recycle due to the calls a worker served: too many, or too many
/// time-outs in a row.
fn recycle_reason(cfg: &PoolConfig, e: &Entry) -> Option<&'static str> {
    if cfg.recycle.max_requests.is_some_and(|max| e.served >= max) {
        Some("max_requests")
    } else if cfg
        .recycle
        .max_consecutive_timeouts
        .is_some_and(|max| e.timeouts_in_a_row >= max)
    {
        Some("timeouts")
    } else {
        None
    }
}

fn take(e: &mut Entry, kind: Checkout, now: Instant) {
    match kind {
        Checkout::Shared => e.in_use += 1,
        Checkout::Exclusive => {
            e.exclusive = true;
            e.in_use += 1;
        }
    }
    e.last_used = now;
}

fn untake(e: &mut Entry, kind: Checkout, now: Instant) {
    e.in_use = e.in_use.saturating_sub(1);
    if kind == Checkout::Exclusive {
        e.exclusive = false;
    }
    e.last_used = now;
}

/// One slot (exclusive: the whole worker) held for a caller. Dropping it
/// gives the slot back, whatever the reason for the drop.
pub(crate) struct SlotGuard {
    shared: Arc<Shared>,
    pub(crate) worker: Arc<dyn Worker>,
    pub(crate) id: WorkerId,
    pub(crate) kind: Checkout,
    probe: AtomicBool,
    armed: bool,
}

impl std::fmt::Debug for SlotGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotGuard")
            .field("worker", &self.id)
            .field("kind", &self.kind)
            .finish()
    }
}

impl SlotGuard {
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Takes the half-open probe token, if this checkout holds it.
    pub(crate) fn take_probe(&self) -> bool {
        self.probe.swap(false, Ordering::AcqRel)
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if self.armed {
            self.armed = false;
            self.shared.release(self);
        }
    }
}

/// Removes a queued waiter whose future was dropped.
struct WaiterCleanup<'a> {
    shared: &'a Arc<Shared>,
    id: u64,
    active: bool,
}

impl Drop for WaiterCleanup<'_> {
    fn drop(&mut self) {
        if self.active {
            let mut st = self.shared.lock();
            st.remove_waiter(self.id);
            // A waiter that blocked the head of the queue is gone: those
            // behind it may be servable now.
            self.shared.dispatch(&mut st);
            metrics::queue_depth(&self.shared.config.name, st.waiters.len());
        }
    }
}

/// `from + d`, saturating far in the future instead of overflowing (a
/// `Duration::MAX` setting means "never").
pub(crate) fn after(from: Instant, d: Duration) -> Instant {
    from.checked_add(d)
        .unwrap_or_else(|| from + Duration::from_secs(100 * 365 * 24 * 3600))
}

pub(crate) struct Shared {
    pub(crate) config: PoolConfig,
    launcher: Arc<dyn Launcher>,
    state: Mutex<State>,
    next_worker: AtomicU64,
    start_sem: Semaphore,
    pub(crate) stop: watch::Sender<Option<Instant>>,
    pub(crate) changed: Notify,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    pub(crate) fn new(config: PoolConfig, launcher: Arc<dyn Launcher>) -> Self {
        let breaker = Breaker::new(config.breaker);
        Shared {
            start_sem: Semaphore::new(config.startup_concurrency),
            config,
            launcher,
            state: Mutex::new(State {
                closed: false,
                slots: Vec::new(),
                entries: Vec::new(),
                waiters: VecDeque::new(),
                next_slot: 0,
                next_waiter: 0,
                breaker,
                last_error: None,
                ever_ready: false,
                counted_crashes: VecDeque::new(),
            }),
            next_worker: AtomicU64::new(0),
            stop: watch::channel(None).0,
            changed: Notify::new(),
            tasks: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn name(&self) -> &str {
        &self.config.name
    }

    pub(crate) fn track(&self, handle: JoinHandle<()>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|h| !h.is_finished());
        tasks.push(handle);
    }

    /// Waits for every supervisor and drain task to finish.
    pub(crate) async fn join_tasks(&self) {
        loop {
            let handles = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
            if handles.is_empty() {
                return;
            }
            for h in handles {
                let _ = h.await;
            }
        }
    }

    pub(crate) fn spawn_slot(self: &Arc<Self>, st: &mut State) -> SlotId {
        let id = st.next_slot;
        st.next_slot += 1;
        st.slots.push(SlotState {
            id,
            phase: SlotPhase::Starting,
            attempts: 0,
            launch_failures: 0,
            restarts: 0,
            crashes: VecDeque::new(),
            last_error: None,
            recycle: Arc::new(Notify::new()),
        });
        self.track(tokio::spawn(crate::supervisor::run_slot(self.clone(), id)));
        id
    }

    /// Waits until `cond` holds (re-checked on every state change) or the
    /// deadline passes; returns whether it holds.
    pub(crate) async fn wait_until(
        &self,
        deadline: Option<Instant>,
        mut cond: impl FnMut(&State) -> bool,
    ) -> bool {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if cond(&self.lock()) {
                return true;
            }
            match deadline {
                Some(d) => {
                    if tokio::time::timeout_at(d, notified).await.is_err() {
                        return cond(&self.lock());
                    }
                }
                None => notified.await,
            }
        }
    }

    // ---- checkout -------------------------------------------------------

    /// Acquires a slot: at once if a worker is free and nobody is queued,
    /// else in FIFO order. Cancel-safe: dropping the future at any point
    /// leaves no waiter, slot or probe behind.
    /// `for_call`: the checkout serves one call (or stream) and may be the
    /// breaker's half-open probe; a lease may not.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        kind: Checkout,
        for_call: bool,
    ) -> Result<SlotGuard, PoolError> {
        self.acquire_on(kind, None, false, for_call).await
    }

    /// Like [`Shared::acquire`], restricted to `target` when given. With
    /// `fail_fast`, a busy target is `WorkerBusy` at once instead of a wait.
    /// Only a checkout for one call (`may_probe`) can be the breaker's
    /// half-open probe: a lease held idle must not block the pool.
    pub(crate) async fn acquire_on(
        self: &Arc<Self>,
        kind: Checkout,
        target: Option<WorkerId>,
        fail_fast: bool,
        may_probe: bool,
    ) -> Result<SlotGuard, PoolError> {
        let start = Instant::now();
        let cfg = &self.config;
        let (waiter_id, mut rx) = {
            let mut st = self.lock();
            if st.closed {
                return Err(self.closed_error());
            }
            let probe = match st.breaker.admit(start) {
                Ok(true) if !may_probe => {
                    st.breaker.cancel_probe();
                    false
                }
                Ok(probe) => probe,
                Err(retry_after) => {
                    return Err(PoolError::CircuitOpen {
                        pool: cfg.name.clone(),
                        retry_after,
                    })
                }
            };
            if !st.waiters.is_empty() {
                // Serve whoever can be served first, so what remains queued
                // really is blocked.
                self.dispatch(&mut st);
            }
            // Nobody queued ahead of us could take what we would take: for
            // any worker, a caller queued for any worker; for one worker, a
            // caller for that worker, or an exclusive caller it is reserved for.
            let ahead = match target {
                None => st.waiters.iter().any(|w| w.target.is_none()),
                Some(t) => {
                    let exclusive_waiting = st
                        .waiters
                        .iter()
                        .any(|w| w.target.is_none() && w.kind == Checkout::Exclusive);
                    st.waiters.iter().any(|w| w.target == Some(t))
                        || (exclusive_waiting && st.reserved_for_exclusive() == Some(t))
                }
            };
            if !ahead {
                let picked = match target {
                    Some(t) => st.pick_target(kind, t),
                    None => st.pick(kind),
                };
                if let Some(idx) = picked {
                    let guard = self.grant(&mut st, idx, kind, probe, start);
                    drop(st);
                    metrics::queue_wait(self.name(), Duration::ZERO);
                    return Ok(guard);
                }
            }
            let refuse = if let Some(worker) = target.filter(|t| !st.serving(*t)) {
                Some(PoolError::WorkerGone {
                    pool: cfg.name.clone(),
                    worker,
                })
            } else if let (Some(worker), true) = (target, fail_fast) {
                Some(PoolError::WorkerBusy {
                    pool: cfg.name.clone(),
                    worker,
                })
            } else if let (None, Some((last_error, crash_loop))) = (target, st.unavailable(cfg, start)) {
                Some(PoolError::Unavailable {
                    pool: cfg.name.clone(),
                    last_error,
                    crash_loop,
                })
            } else if st.waiters.len() >= cfg.max_queue {
                Some(PoolError::QueueFull {
                    pool: cfg.name.clone(),
                    max: cfg.max_queue,
                })
            } else {
                None
            };
            if let Some(err) = refuse {
                if probe {
                    st.breaker.cancel_probe();
                }
                return Err(err);
            }
            let (tx, rx) = oneshot::channel();
            let id = st.next_waiter;
            st.next_waiter += 1;
            st.waiters.push_back(Waiter {
                id,
                kind,
                target,
                probe,
                tx,
            });
            metrics::queue_depth(self.name(), st.waiters.len());
            if target.is_none() {
                self.maybe_scale_up(&mut st);
            }
            (id, rx)
        };
        let mut cleanup = WaiterCleanup {
            shared: self,
            id: waiter_id,
            active: true,
        };
        let mut deadline = after(start, cfg.checkout_timeout);
        loop {
            tokio::select! {
                biased;
                res = &mut rx => {
                    cleanup.active = false;
                    let res = res.unwrap_or_else(|_| Err(self.closed_error()));
                    if res.is_ok() {
                        metrics::queue_wait(self.name(), start.elapsed());
                    }
                    return res;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let mut st = self.lock();
                    if st.waiters.iter().any(|w| w.id == waiter_id) {
                        if !st.ever_ready && !st.slots.is_empty() && !st.closed {
                            // The pool is still starting its first worker:
                            // start time is not a checkout time-out.
                            deadline = after(Instant::now(), cfg.checkout_timeout);
                            continue;
                        }
                        st.remove_waiter(waiter_id);
                        self.dispatch(&mut st);
                        metrics::queue_depth(self.name(), st.waiters.len());
                        cleanup.active = false;
                        return Err(PoolError::Timeout {
                            pool: cfg.name.clone(),
                            waited: start.elapsed(),
                        });
                    }
                    drop(st);
                    // Already answered under the lock: the answer is in the channel.
                    cleanup.active = false;
                    return rx.try_recv().unwrap_or_else(|_| Err(self.closed_error()));
                }
            }
        }
    }

    fn grant(
        self: &Arc<Self>,
        st: &mut State,
        idx: usize,
        kind: Checkout,
        probe: bool,
        now: Instant,
    ) -> SlotGuard {
        let e = &mut st.entries[idx];
        take(e, kind, now);
        let guard = SlotGuard {
            shared: self.clone(),
            worker: e.worker.clone(),
            id: e.id,
            kind,
            probe: AtomicBool::new(probe),
            armed: true,
        };
        if kind == Checkout::Exclusive {
            self.publish(st);
        }
        guard
    }

    /// Hands free slots to queued waiters in FIFO order. A waiter whose
    /// future is gone gets nothing and its slot stays free.
    fn dispatch(self: &Arc<Self>, st: &mut State) {
        let now = Instant::now();
        let before = st.waiters.len();
        // FIFO for callers that take any worker (the first that cannot be
        // served stops the rest, so an exclusive waiter is not starved);
        // callers waiting for one particular worker never block others.
        let mut any_blocked = false;
        let mut reserved: Option<WorkerId> = None;
        let mut i = 0;
        while i < st.waiters.len() {
            let (kind, target) = (st.waiters[i].kind, st.waiters[i].target);
            let picked = match target {
                Some(t) if reserved == Some(t) => None,
                Some(t) => st.pick_target(kind, t),
                None if any_blocked => None,
                None => st.pick(kind),
            };
            let Some(idx) = picked else {
                if target.is_none() {
                    any_blocked = true;
                    if kind == Checkout::Exclusive && reserved.is_none() {
                        reserved = st.reserved_for_exclusive();
                    }
                }
                i += 1;
                continue;
            };
            let Some(w) = st.waiters.remove(i) else { break };
            let guard = self.grant(st, idx, w.kind, w.probe, now);
            if let Err(Ok(mut guard)) = w.tx.send(Ok(guard)) {
                guard.armed = false;
                untake(&mut st.entries[idx], w.kind, now);
                if w.probe {
                    st.breaker.cancel_probe();
                }
            }
        }
        if st.waiters.len() != before {
            metrics::queue_depth(self.name(), st.waiters.len());
        }
    }

    fn release(self: &Arc<Self>, g: &SlotGuard) {
        let now = Instant::now();
        let mut st = self.lock();
        if g.probe.swap(false, Ordering::AcqRel) {
            st.breaker.cancel_probe();
        }
        let mut notify = false;
        if let Some(e) = st.entry_mut(g.id) {
            untake(e, g.kind, now);
            notify = e.draining && e.in_use == 0;
        }
        if g.kind == Checkout::Exclusive {
            self.publish(&st);
        }
        self.dispatch(&mut st);
        drop(st);
        if notify {
            self.changed.notify_waiters();
        }
    }

    /// Records a finished call: breaker, served count, recycling.
    /// `caller_deadline`: the call ran under a deadline its caller chose
    /// (any, when the pool has no `call_timeout`; else a shorter one); its
    /// time-out says more about
    /// the caller's budget than the worker's health, so it does not count
    /// for the pool-wide breaker (it still counts for the worker's own
    /// time-outs in a row).
    pub(crate) fn finish_call(
        self: &Arc<Self>,
        worker: WorkerId,
        probe: bool,
        res: &Result<Value, CallError>,
        caller_deadline: bool,
    ) {
        let now = Instant::now();
        let mut st = self.lock();
        let neutral = matches!(
            res,
            Err(CallError::WorkerClosed { .. } | CallError::InvalidRequest { .. })
        ) || (caller_deadline && matches!(res, Err(CallError::Timeout { .. })));
        let changed = if neutral {
            if probe {
                st.breaker.cancel_probe();
            }
            false
        } else {
            let fault = match res {
                Err(CallError::WorkerCrashed { worker, .. }) => {
                    if st.counted_crashes.contains(worker) {
                        None
                    } else {
                        if st.counted_crashes.len() == 64 {
                            st.counted_crashes.pop_front();
                        }
                        st.counted_crashes.push_back(*worker);
                        Some(true)
                    }
                }
                Err(e) => Some(e.is_worker_fault()),
                Ok(_) => Some(false),
            };
            match fault {
                Some(fault) => st.breaker.record(fault, probe, now),
                None => {
                    // Already counted: neutral, like a closed worker.
                    if probe {
                        st.breaker.cancel_probe();
                    }
                    false
                }
            }
        };
        if changed {
            metrics::breaker(self.name(), st.breaker.state(now));
            if let Some(until) = st.breaker.open_until() {
                self.publish_breaker_at(until);
            }
        }
        let mut recycle = None;
        if let Some(e) = st.entry_mut(worker) {
            e.served += 1;
            match res {
                Err(CallError::Timeout { .. }) => e.timeouts_in_a_row += 1,
                Err(CallError::WorkerClosed { .. } | CallError::InvalidRequest { .. }) => {}
                _ => e.timeouts_in_a_row = 0,
            }
            if recycle_reason(&self.config, e).is_some() {
                recycle = Some(e.slot);
            }
        }
        if let Some(slot) = recycle {
            if let Some(s) = st.slot_mut(slot) {
                s.recycle.notify_one();
            }
        }
    }

    fn maybe_scale_up(self: &Arc<Self>, st: &mut State) {
        if st.closed || st.slots.len() >= self.config.max_workers {
            return;
        }
        let coming = st.slots.iter().filter(|s| s.phase != SlotPhase::Running).count();
        if st.waiters.len() > coming {
            self.spawn_slot(st);
            self.publish(st);
        }
    }

    fn gone_error(&self, worker: WorkerId) -> PoolError {
        PoolError::WorkerGone {
            pool: self.config.name.clone(),
            worker,
        }
    }

    /// Ready (not draining) workers, for binding new sessions.
    pub(crate) fn ready_workers(&self) -> Vec<WorkerId> {
        let st = self.lock();
        st.entries
            .iter()
            .filter(|e| !e.draining && e.worker.is_alive())
            .map(|e| e.id)
            .collect()
    }

    /// Whether `worker` is in the pool and alive (ready, leased or draining).
    pub(crate) fn is_serving(&self, worker: WorkerId) -> bool {
        self.lock().serving(worker)
    }

    /// The worker's handle, if it is in the pool.
    pub(crate) fn worker(&self, worker: WorkerId) -> Option<Arc<dyn Worker>> {
        let st = self.lock();
        st.entries
            .iter()
            .find(|e| e.id == worker)
            .map(|e| e.worker.clone())
    }

    /// Adds (`+1`) or removes (`-1`) a pin on `worker`; returns whether the
    /// worker is in the pool.
    pub(crate) fn pin(&self, worker: WorkerId, add: bool) -> bool {
        let mut st = self.lock();
        let Some(e) = st.entry_mut(worker) else {
            return false;
        };
        if add {
            e.pins += 1;
        } else {
            e.pins = e.pins.saturating_sub(1);
        }
        let unpinned = e.pins == 0;
        drop(st);
        if unpinned {
            self.changed.notify_waiters();
        }
        true
    }

    pub(crate) fn closed_error(&self) -> PoolError {
        PoolError::PoolClosed {
            pool: self.config.name.clone(),
        }
    }

    // ---- supervisor transitions ------------------------------------------

    pub(crate) fn set_phase(&self, slot: SlotId, phase: SlotPhase) {
        let mut st = self.lock();
        if let Some(s) = st.slot_mut(slot) {
            s.phase = phase;
        }
        self.publish(&st);
    }

    pub(crate) fn recycle_notify(&self, slot: SlotId) -> Arc<Notify> {
        let mut st = self.lock();
        st.slot_mut(slot)
            .map(|s| s.recycle.clone())
            .unwrap_or_else(|| Arc::new(Notify::new()))
    }

    /// Launches one worker (bounded by the startup concurrency).
    pub(crate) async fn launch(&self, slot: SlotId) -> Result<Arc<dyn Worker>, LaunchError> {
        let id = WorkerId(self.next_worker.fetch_add(1, Ordering::Relaxed));
        let span = tracing::info_span!("portpool.launch", pool = %self.config.name, worker = %id, slot);
        async move {
            let _permit = self.start_sem.acquire().await;
            let t0 = Instant::now();
            // The launcher bounds its own wait for the hello, so an init
            // time-out keeps the pid and the stderr tail it knows.
            let res = match self.config.init_timeout {
                Some(after) => self.launcher.launch_within(id, after).await,
                None => self.launcher.launch(id).await,
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

    pub(crate) fn on_ready(self: &Arc<Self>, slot: SlotId, worker: Arc<dyn Worker>) {
        let now = Instant::now();
        let info = worker.info();
        let hello_cap = info.max_concurrency.max(1);
        let capacity = self
            .config
            .worker_concurrency
            .map_or(hello_cap, |c| c.min(hello_cap));
        let mut st = self.lock();
        if let Some(s) = st.slot_mut(slot) {
            s.phase = SlotPhase::Running;
            s.attempts += 1;
            s.launch_failures = 0;
        }
        st.ever_ready = true;
        st.entries.push(Entry {
            slot,
            id: info.id,
            worker: worker.clone(),
            capacity,
            in_use: 0,
            exclusive: false,
            draining: false,
            served: 0,
            timeouts_in_a_row: 0,
            pins: 0,
            ready_at: now,
            last_used: now,
        });
        self.dispatch(&mut st);
        self.publish(&st);
        drop(st);
        self.changed.notify_waiters();
    }

    /// A launch failed. `counts` is false for a failed replacement while
    /// the old worker still serves.
    pub(crate) fn on_launch_failed(&self, slot: SlotId, err: LaunchError, counts: bool) {
        let now = Instant::now();
        let err = Arc::new(err);
        let mut st = self.lock();
        if let Some(s) = st.slot_mut(slot) {
            s.attempts += 1;
            s.last_error = Some(err.clone());
            if counts {
                s.launch_failures += 1;
            }
        }
        st.last_error = Some(err);
        metrics::restart(self.name(), "launch_failure");
        self.fail_if_unavailable(&mut st, now);
        self.publish(&st);
        drop(st);
        self.changed.notify_waiters();
    }

    fn fail_if_unavailable(&self, st: &mut State, now: Instant) {
        if st.waiters.is_empty() {
            return;
        }
        if let Some((last_error, crash_loop)) = st.unavailable(&self.config, now) {
            st.fail_waiters(&PoolError::Unavailable {
                pool: self.config.name.clone(),
                last_error,
                crash_loop,
            });
            metrics::queue_depth(self.name(), 0);
        }
    }

    /// `worker` ended (crashed, or killed by the pool: `reason` is the
    /// restart metric's label).
    pub(crate) fn on_crash(&self, slot: SlotId, worker: WorkerId, exit: WorkerExit, reason: &'static str) {
        let now = Instant::now();
        let mut st = self.lock();
        st.entries.retain(|e| e.id != worker);
        st.fail_targeted(worker, &self.gone_error(worker));
        let cfg = &self.config;
        if let Some(s) = st.slot_mut(slot) {
            s.restarts += 1;
            s.crashes.push_back(now);
            while s.crashes.len() > cfg.crash_loop.max_restarts as usize {
                s.crashes.pop_front();
            }
            if s.crash_looping(now, cfg) {
                let n = s.crashes.len();
                tracing::error!(pool = %cfg.name, slot, %worker, %exit, "crash loop: {n} crashes within {:?}", cfg.crash_loop.window);
                s.last_error = Some(Arc::new(LaunchError::Other {
                    worker,
                    reason: format!(
                        "crash loop: {n} crashes within {:?}, last: {exit}",
                        cfg.crash_loop.window
                    ),
                }));
            }
        }
        metrics::restart(self.name(), reason);
        self.fail_if_unavailable(&mut st, now);
        self.publish(&st);
        drop(st);
        self.changed.notify_waiters();
    }

    pub(crate) fn on_replaced(&self, slot: SlotId, reason: &'static str) {
        let mut st = self.lock();
        if let Some(s) = st.slot_mut(slot) {
            s.restarts += 1;
        }
        metrics::restart(self.name(), reason);
    }

    pub(crate) fn mark_draining(&self, worker: WorkerId) {
        let mut st = self.lock();
        if let Some(e) = st.entry_mut(worker) {
            e.draining = true;
        }
        self.publish(&st);
    }

    pub(crate) fn remove_entry(&self, worker: WorkerId) {
        let mut st = self.lock();
        st.entries.retain(|e| e.id != worker);
        st.fail_targeted(worker, &self.gone_error(worker));
        self.publish(&st);
        drop(st);
        self.changed.notify_waiters();
    }

    pub(crate) fn remove_slot(&self, slot: SlotId) {
        let mut st = self.lock();
        st.slots.retain(|s| s.id != slot);
        self.publish(&st);
        drop(st);
        self.changed.notify_waiters();
    }

    /// Why `worker` should be recycled now, judging by its calls.
    pub(crate) fn recycle_reason(&self, worker: WorkerId) -> Option<&'static str> {
        let mut st = self.lock();
        st.entry_mut(worker).and_then(|e| recycle_reason(&self.config, e))
    }

    /// Stops an idle worker above `min_workers`: removes its slot at once
    /// (so two slots cannot both retire below the minimum).
    pub(crate) fn try_retire(&self, slot: SlotId, worker: WorkerId) -> bool {
        let Some(idle) = self.config.idle_timeout else {
            return false;
        };
        let now = Instant::now();
        let mut st = self.lock();
        if st.closed || st.slots.len() <= self.config.min_workers {
            return false;
        }
        let retire = st.entry_mut(worker).is_some_and(|e| {
            e.in_use == 0 && e.pins == 0 && now.saturating_duration_since(e.last_used) >= idle
        });
        if retire {
            st.slots.retain(|s| s.id != slot);
            if let Some(e) = st.entry_mut(worker) {
                e.draining = true;
            }
            self.publish(&st);
        }
        retire
    }

    /// Closes the pool: refuses new callers, fails queued ones, tells every
    /// supervisor to drain and stop by `deadline`.
    pub(crate) fn close(&self, deadline: Instant) {
        let mut st = self.lock();
        st.closed = true;
        st.fail_waiters(&self.closed_error());
        self.publish(&st);
        drop(st);
        self.stop.send_if_modified(|v| {
            if v.is_none() {
                *v = Some(deadline);
                true
            } else {
                false
            }
        });
        self.changed.notify_waiters();
    }

    /// Sets every gauge from the state, so the gauges say what `status()`
    /// says: workers by state, queue depth, breaker state.
    fn publish(&self, st: &State) {
        let mut counts = [0usize; WorkerState::ALL.len()];
        for row in self.rows(st) {
            counts[row as usize] += 1;
        }
        for state in WorkerState::ALL {
            metrics::workers(self.name(), state.as_str(), counts[state as usize]);
        }
        metrics::queue_depth(self.name(), st.waiters.len());
        metrics::breaker(self.name(), st.breaker.state(Instant::now()));
    }

    /// An open breaker turns half-open by the passing of time alone: set
    /// its gauge then too.
    fn publish_breaker_at(self: &Arc<Self>, at: Instant) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let shared = Arc::downgrade(self);
        rt.spawn(async move {
            tokio::time::sleep_until(at).await;
            if let Some(shared) = shared.upgrade() {
                let st = shared.lock();
                metrics::breaker(shared.name(), st.breaker.state(Instant::now()));
            }
        });
    }

    fn rows<'a>(&self, st: &'a State) -> impl Iterator<Item = WorkerState> + 'a {
        let entries = st.entries.iter().map(Entry::state);
        let empty_slots = st
            .slots
            .iter()
            .filter(|s| !st.entries.iter().any(|e| e.slot == s.id))
            .map(|s| match s.phase {
                SlotPhase::Backoff => WorkerState::Backoff,
                _ => WorkerState::Starting,
            });
        entries.chain(empty_slots)
    }

    pub(crate) fn status(&self) -> PoolStatus {
        let now = Instant::now();
        let cfg = &self.config;
        let mut workers: Vec<(WorkerStatus, Option<Arc<dyn Worker>>)> = Vec::new();
        let st = self.lock();
        let slot_info = |id: SlotId| st.slots.iter().find(|s| s.id == id);
        for e in &st.entries {
            let s = slot_info(e.slot);
            workers.push((
                WorkerStatus {
                    slot: e.slot,
                    id: Some(e.id),
                    pid: e.worker.info().pid,
                    state: e.state(),
                    in_flight: 0,
                    held: e.in_use,
                    capacity: e.capacity,
                    served: e.served,
                    restarts: s.map_or(0, |s| s.restarts),
                    rss_bytes: None,
                    discarded_replies: 0,
                    stderr_tail: String::new(),
                    uptime: Some(now.saturating_duration_since(e.ready_at)),
                    crash_loop: s.is_some_and(|s| s.crash_looping(now, cfg)),
                    last_error: s.and_then(|s| s.last_error.clone()),
                },
                Some(e.worker.clone()),
            ));
        }
        for s in st
            .slots
            .iter()
            .filter(|s| !st.entries.iter().any(|e| e.slot == s.id))
        {
            workers.push((
                WorkerStatus {
                    slot: s.id,
                    id: None,
                    pid: None,
                    state: if s.phase == SlotPhase::Backoff {
                        WorkerState::Backoff
                    } else {
                        WorkerState::Starting
                    },
                    in_flight: 0,
                    held: 0,
                    capacity: 0,
                    served: 0,
                    restarts: s.restarts,
                    rss_bytes: None,
                    discarded_replies: 0,
                    stderr_tail: String::new(),
                    uptime: None,
                    crash_loop: s.crash_looping(now, cfg),
                    last_error: s.last_error.clone(),
                },
                None,
            ));
        }
        let status = PoolStatus {
            name: cfg.name.clone(),
            closed: st.closed,
            size: st.slots.len(),
            ready: st
                .entries
                .iter()
                .filter(|e| !e.draining && e.worker.is_alive())
                .count(),
            queue_depth: st.waiters.len(),
            breaker: st.breaker.state(now),
            crash_loop: st.slots.iter().any(|s| s.crash_looping(now, cfg)),
            last_error: st.last_error.clone(),
            workers: Vec::new(),
        };
        drop(st);
        // Worker queries (RSS may read /proc, the stderr tail is copied)
        // happen outside the lock.
        let mut workers: Vec<WorkerStatus> = workers
            .into_iter()
            .map(|(mut w, worker)| {
                if let Some(worker) = worker {
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
