use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use portpool_pool::{
    typed_call, AffinityPort, CallError, CallRequest, Checkout, Pool, PoolError, Value, Wait, WorkerId,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;

use crate::{
    Affinity, Binding, LruPosition, MemoryStore, OnLost, SessionConfig, SessionError, SessionId, SessionStore,
};

/// Sessions fetched at a time when looking for one to evict.
const EVICT_PAGE: usize = 8;
/// Sessions fetched at first when looking for idle ones to expire; each
/// further page is twice as large (up to [`EXPIRE_PAGE_MAX`]), so a store
/// using the default, list-based `least_recently_used` is listed O(log n)
/// times per sweep, not O(n).
const EXPIRE_PAGE: usize = 64;
/// The largest expiry page.
const EXPIRE_PAGE_MAX: usize = 8_192;

/// Session affinity over a [`Pool`]: each session binds to one worker on
/// first use, and its calls go there, so state the handler keeps in
/// `ctx.session` stays in that process.
///
/// A cheap, cloneable handle. Each session it binds pins its worker (the
/// pool defers recycling it, up to the drain time-out) until the session is
/// closed, expired, evicted or lost. Dropping the last handle releases
/// every pin at once, and (inside a tokio runtime, in a background task)
/// closes every session of its store: each worker is told to drop the
/// state, and the binding is removed. So a store passed to
/// [`SessionPool::with_store`] belongs to one session pool at a time.
#[derive(Clone)]
pub struct SessionPool {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// What affinity needs from the pool: calls for one worker, pins,
    /// `session_close`.
    port: AffinityPort,
    store: Arc<dyn SessionStore>,
    config: SessionConfig,
    /// Serializes the binding of new sessions, so concurrent new sessions
    /// spread by session count and one session binds exactly once.
    bind_lock: tokio::sync::Mutex<()>,
    /// Per session: calls running, and whether a close (explicit, expiry,
    /// eviction) is in progress. A session with a call running is never
    /// expired or evicted; an explicit close waits for the calls running
    /// when it began (up to the drain time-out); a call waits for a close
    /// in progress, so no request reaches a worker after its
    /// `session_close`.
    active: Mutex<HashMap<SessionId, Activity>>,
    /// Signalled when a session's last running call ends or a close ends.
    activity_changed: tokio::sync::Notify,
    /// The pins this session pool holds, per worker (one per session it
    /// bound); released when the session goes, or all at once on drop.
    pins: Mutex<HashMap<WorkerId, usize>>,
    sweeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    /// The last handle is gone, so no call of any session runs: release
    /// every pin, so that the pool can recycle those workers. Inside a tokio
    /// runtime, first (in a task) tell each worker to drop the state of the
    /// sessions bound to it and remove the bindings; the pins go when that
    /// task ends or is dropped with its runtime.
    fn drop(&mut self) {
        if let Some(task) = self.sweeper.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
        let pins = PinRelease {
            port: self.port.clone(),
            pins: std::mem::take(&mut *self.pins.lock().unwrap_or_else(|e| e.into_inner())),
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            drop(pins);
            return;
        };
        let (port, name, store) = (
            self.port.clone(),
            self.pool.config().name.clone(),
            self.store.clone(),
        );
        runtime.spawn(async move {
            close_all(&port, &name, store.as_ref()).await;
            drop(pins);
        });
    }
}

/// Pins to release, when dropped.
struct PinRelease {
    port: AffinityPort,
    pins: HashMap<WorkerId, usize>,
}

impl Drop for PinRelease {
    fn drop(&mut self) {
        for (worker, n) in self.pins.drain() {
            for _ in 0..n {
                self.port.unpin(worker);
            }
        }
    }
}

/// Removes every binding of `store` and tells its worker to drop the state.
async fn close_all(port: &AffinityPort, name: &str, store: &dyn SessionStore) {
    let bindings = store.list().await;
    let closed = bindings.len();
    for (session, binding) in bindings {
        if store.remove_if_bound_to(&session, binding.worker).await.is_none() {
            continue;
        }
        if port.is_serving(binding.worker) {
            if let Err(e) = port.close_session(binding.worker, session.as_str()).await {
                tracing::debug!(%session, worker = %binding.worker, error = %e, "session_close not delivered");
            }
        }
    }
    if closed > 0 {
        tracing::debug!(
            pool = name,
            sessions = closed,
            "session pool dropped: sessions closed"
        );
        metrics::gauge!("portpool_sessions", "pool" => name.to_string()).set(store.len().await as f64);
    }
}

impl std::fmt::Debug for SessionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionPool")
            .field("pool", &self.inner.pool)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// What is going on in one session (absent: nothing).
#[derive(Debug, Default)]
struct Activity {
    /// Calls running.
    calls: usize,
    /// A close (explicit, expiry or eviction) is in progress: new calls
    /// wait for it.
    closing: bool,
}

impl Inner {
    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Activity>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pins(&self) -> std::sync::MutexGuard<'_, HashMap<WorkerId, usize>> {
        self.pins.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pool's name (the `pool` label of the session metrics).
    fn name(&self) -> String {
        self.pool.config().name.clone()
    }

    /// Pins `worker` for a session this session pool bound.
    fn pin(&self, worker: WorkerId) {
        if self.port.pin(worker) {
            *self.pins().entry(worker).or_insert(0) += 1;
        }
    }

    /// Releases one pin of `worker`, if this session pool holds one.
    fn unpin(&self, worker: WorkerId) {
        let mut pins = self.pins();
        let Some(n) = pins.get_mut(&worker) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            pins.remove(&worker);
        }
        drop(pins);
        self.port.unpin(worker);
    }
}

/// Marks a session as having a call running, for as long as it lives.
struct ActiveGuard<'a> {
    inner: &'a Inner,
    session: SessionId,
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        let mut active = self.inner.active();
        if let Some(activity) = active.get_mut(&self.session) {
            activity.calls = activity.calls.saturating_sub(1);
            if activity.calls == 0 {
                if !activity.closing {
                    active.remove(&self.session);
                }
                drop(active);
                // A close may be waiting for the calls to end.
                self.inner.activity_changed.notify_waiters();
            }
        }
    }
}

/// Closes a throwaway session on its worker when dropped armed (the call
/// using it was dropped before it could close it itself).
struct CloseOnDrop {
    port: AffinityPort,
    worker: WorkerId,
    /// `None` once closed (disarmed).
    session: Option<String>,
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(worker = %self.worker, %session, "no runtime to close a dropped fallback session");
            return;
        };
        let (port, worker) = (self.port.clone(), self.worker);
        runtime.spawn(async move {
            if port.is_serving(worker) {
                if let Err(e) = port.close_session(worker, &session).await {
                    tracing::debug!(%worker, %session, error = %e, "fallback session_close not delivered");
                }
            }
        });
    }
}

/// Marks a session as being closed until dropped: calls of it that arrive
/// meanwhile wait.
struct ClosingGuard<'a> {
    inner: &'a Inner,
    session: SessionId,
}

impl<'a> ClosingGuard<'a> {
    /// For expiry and eviction: `None` if the session has a call running
    /// (or is already closing).
    fn begin(inner: &'a Inner, session: &SessionId) -> Option<Self> {
        let mut active = inner.active();
        if active.contains_key(session) {
            return None;
        }
        active.insert(
            session.clone(),
            Activity {
                calls: 0,
                closing: true,
            },
        );
        Some(ClosingGuard {
            inner,
            session: session.clone(),
        })
    }

    /// For an explicit close: after any other close of the session in
    /// progress, marks it closing at once, so that calls arriving from now
    /// on wait behind the close; then waits for the calls already running
    /// to end, at most `limit`.
    async fn wait_begin(inner: &'a Inner, session: &SessionId, limit: Duration) -> Self {
        loop {
            let changed = inner.activity_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut active = inner.active();
                let activity = active.entry(session.clone()).or_default();
                if !activity.closing {
                    activity.closing = true;
                    break;
                }
            }
            changed.await;
        }
        let guard = ClosingGuard {
            inner,
            session: session.clone(),
        };
        let deadline = Instant::now() + limit;
        loop {
            let changed = inner.activity_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let running = inner.active().get(session).map_or(0, |a| a.calls);
            if running == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                tracing::warn!(
                    %session,
                    calls = running,
                    "closing the session with calls still running after the drain time-out ({limit:?})"
                );
                break;
            }
        }
        guard
    }
}

impl Drop for ClosingGuard<'_> {
    fn drop(&mut self) {
        let mut active = self.inner.active();
        if let Some(activity) = active.get_mut(&self.session) {
            if activity.calls == 0 {
                active.remove(&self.session);
            } else {
                // Closed past the drain time-out: the stragglers still count.
                activity.closing = false;
            }
        }
        drop(active);
        self.inner.activity_changed.notify_waiters();
    }
}

impl SessionPool {
    /// Session affinity over `pool` with `config` and the in-memory store.
    /// Must be called inside a tokio runtime when `idle_ttl` is set (it
    /// starts the expiry task).
    pub fn new(pool: Pool, config: SessionConfig) -> Result<Self, SessionError> {
        Self::with_store(pool, config, Arc::new(MemoryStore::new()))
    }

    /// Like [`SessionPool::new`] with a custom [`SessionStore`].
    pub fn with_store(
        pool: Pool,
        config: SessionConfig,
        store: Arc<dyn SessionStore>,
    ) -> Result<Self, SessionError> {
        config.validate()?;
        if config.idle_ttl.is_some() && tokio::runtime::Handle::try_current().is_err() {
            return Err(SessionError::Config {
                field: "idle_ttl",
                reason: "expiring sessions needs a tokio runtime: create the SessionPool inside one, \
                         or set idle_ttl to None"
                    .into(),
            });
        }
        let inner = Arc::new(Inner {
            port: pool.affinity(),
            pool,
            store,
            config,
            bind_lock: tokio::sync::Mutex::new(()),
            active: Mutex::new(HashMap::new()),
            activity_changed: tokio::sync::Notify::new(),
            pins: Mutex::new(HashMap::new()),
            sweeper: Mutex::new(None),
        });
        if let Some(ttl) = inner.config.idle_ttl {
            let task = tokio::spawn(sweep(Arc::downgrade(&inner), ttl));
            *inner.sweeper.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        }
        Ok(SessionPool { inner })
    }

    /// The underlying pool.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.inner.config
    }

    /// A handle on session `id` (bound on its first call).
    pub fn session(&self, id: SessionId) -> Session {
        Session {
            pool: self.clone(),
            id,
        }
    }

    /// A handle on a new session with a random id.
    pub fn open(&self) -> Session {
        self.session(SessionId::new())
    }

    /// Calls `method` in `session`; params and result converted with serde.
    pub async fn call<P, R>(&self, session: &SessionId, method: &str, params: &P) -> Result<R, SessionError>
    where
        P: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        typed_call(method, params, |request| self.call_raw(session, request)).await
    }

    /// Runs one raw request in `session`.
    pub async fn call_raw(
        &self,
        session: &SessionId,
        mut request: CallRequest,
    ) -> Result<Value, SessionError> {
        request.session = Some(session.to_string());
        let _active = self.activate(session).await;
        let inner = &self.inner;
        let affinity = inner.config.affinity;
        let wait = match affinity {
            Affinity::Strict => Wait::Queue,
            Affinity::FailFast | Affinity::Hint => Wait::FailFast,
        };
        // `Rebind` retries once, when the worker vanished between the
        // binding check and the call. The slot is refused before the
        // request is sent, so the request is still at hand: no copy.
        let mut retry = inner.config.on_lost == OnLost::Rebind;
        loop {
            // A closed pool is not a lost worker: say what really happened.
            inner.port.ensure_open()?;
            let worker = self.bound_worker(session).await?;
            let result = match inner.port.slot(worker, wait).await {
                Ok(slot) => slot.call(request).await,
                Err(PoolError::WorkerBusy { .. }) if affinity == Affinity::Hint => {
                    self.call_elsewhere(session, request).await
                }
                Err(gone @ PoolError::WorkerGone { .. }) => {
                    inner.store.touch(session, Instant::now()).await;
                    self.lost(session, worker, "is no longer in the pool".into())
                        .await?;
                    if std::mem::take(&mut retry) {
                        continue;
                    }
                    return Err(SessionError::Pool(gone));
                }
                Err(other) => Err(other),
            };
            inner.store.touch(session, Instant::now()).await;
            return match result {
                Ok(value) => Ok(value),
                Err(PoolError::WorkerBusy { worker, .. }) => Err(SessionError::WorkerBusy {
                    session: session.to_string(),
                    worker,
                }),
                Err(PoolError::Call(error @ CallError::WorkerCrashed { .. })) if error.worker() == worker => {
                    let reason = format!("crashed during the call: {error}");
                    match self.lost(session, worker, reason).await {
                        Err(lost) => Err(lost),
                        Ok(()) => Err(SessionError::Pool(PoolError::Call(error))),
                    }
                }
                Err(other) => Err(SessionError::Pool(other)),
            };
        }
    }

    /// `Hint` fallback: runs the call on any worker under a throwaway
    /// session id (a fresh, empty state), closed right after the call. It
    /// can never touch the session's real state, wherever that lives. The
    /// throwaway session is closed on its worker whether the call completes
    /// or is dropped (then by a task, in the background).
    async fn call_elsewhere(
        &self,
        session: &SessionId,
        mut request: CallRequest,
    ) -> Result<Value, PoolError> {
        let inner = &self.inner;
        let throwaway = format!("{session}.fallback.{:016x}", rand::random::<u64>());
        request.session = Some(throwaway.clone());
        let lease = inner.pool.checkout_with(Checkout::Shared).await?;
        let worker = lease.worker_id();
        // From here the worker may hold state for the throwaway session.
        let mut cleanup = CloseOnDrop {
            port: inner.port.clone(),
            worker,
            session: Some(throwaway),
        };
        let result = lease.call_raw(request).await;
        drop(lease);
        if let Some(throwaway) = cleanup.session.as_deref() {
            if let Err(e) = inner.port.close_session(worker, throwaway).await {
                tracing::debug!(%session, %worker, error = %e, "fallback session_close not delivered");
            }
        }
        cleanup.session = None;
        result
    }

    /// Closes `session`: forgets its binding and tells its worker to drop
    /// the state. Closing an unknown session does nothing.
    ///
    /// The close is a point in the session's order of calls. It waits for
    /// the calls of the session running when it began; calls that arrive
    /// while it is in progress wait behind it and then run in a fresh
    /// session under the same id (empty state, bound anew). So a steady
    /// stream of calls cannot starve it: it completes within the time left
    /// to the calls running when it began, at most the pool's
    /// `drain_timeout` (after which it closes anyway, and the stragglers
    /// finish without their state), plus the delivery of `session_close`
    /// (and the end of another close of the same session in progress).
    pub async fn close(&self, session: &SessionId) -> Result<(), SessionError> {
        let drain = self.inner.pool.config().drain_timeout;
        let _closing = ClosingGuard::wait_begin(&self.inner, session, drain).await;
        if let Some(binding) = self.inner.store.remove(session).await {
            self.release(session, binding.worker, "closed").await;
        }
        Ok(())
    }

    /// Binds `session` now, as its first call would, and returns its
    /// worker; a bound session keeps its worker. Like a call, it waits for a
    /// close of the session in progress, reports a lost worker
    /// ([`SessionError::SessionLost`], by [`OnLost`]) and may evict the
    /// least recently used idle session. With [`MemoryStore`] the cost is
    /// O(log n) in the number of bound sessions.
    pub async fn bind(&self, session: &SessionId) -> Result<WorkerId, SessionError> {
        self.inner.port.ensure_open()?;
        let _active = self.activate(session).await;
        self.bound_worker(session).await
    }

    /// How many sessions are bound.
    pub async fn len(&self) -> usize {
        self.inner.store.len().await
    }

    /// Whether no session is bound.
    pub async fn is_empty(&self) -> bool {
        self.len().await == 0
    }

    /// Bound sessions per worker.
    pub async fn sessions_per_worker(&self) -> HashMap<WorkerId, usize> {
        let mut counts = self.inner.store.sessions_per_worker().await;
        counts.retain(|_, n| *n > 0);
        counts
    }

    /// The worker `session` is bound to, if any.
    pub async fn binding(&self, session: &SessionId) -> Option<Binding> {
        self.inner.store.get(session).await
    }

    /// Counts a call of `session` as running; waits while a close, expiry
    /// or eviction of it is in progress.
    async fn activate(&self, session: &SessionId) -> ActiveGuard<'_> {
        loop {
            let closed = self.inner.activity_changed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            {
                let mut active = self.inner.active();
                let activity = active.entry(session.clone()).or_default();
                if !activity.closing {
                    activity.calls += 1;
                    return self.active_guard(session);
                }
            }
            closed.await;
        }
    }

    fn active_guard(&self, session: &SessionId) -> ActiveGuard<'_> {
        ActiveGuard {
            inner: &self.inner,
            session: session.clone(),
        }
    }

    /// The session's worker, binding it first if needed; reports a lost
    /// worker once (or rebinds, by configuration).
    async fn bound_worker(&self, session: &SessionId) -> Result<WorkerId, SessionError> {
        let inner = &self.inner;
        if let Some(binding) = inner.store.get(session).await {
            if inner.port.is_serving(binding.worker) {
                return Ok(binding.worker);
            }
            self.lost(session, binding.worker, "is no longer in the pool".into())
                .await?;
        }
        self.bind_new(session).await
    }

    /// The bound worker is gone. Exactly one caller gets `SessionLost` (in
    /// `Report` mode); everyone else goes on to rebind.
    async fn lost(&self, session: &SessionId, worker: WorkerId, reason: String) -> Result<(), SessionError> {
        let removed = self.inner.store.remove_if_bound_to(session, worker).await;
        if removed.is_none() {
            return Ok(());
        }
        self.inner.unpin(worker);
        metrics::counter!("portpool_sessions_lost_total", "pool" => self.inner.name()).increment(1);
        tracing::info!(%session, %worker, "session lost: worker {reason}");
        match self.inner.config.on_lost {
            OnLost::Report => Err(SessionError::SessionLost {
                session: session.to_string(),
                worker,
                reason,
            }),
            OnLost::Rebind => Ok(()),
        }
    }

    /// Binds a session that has no binding: to the ready worker with the
    /// fewest sessions, evicting the least recently used idle session when
    /// `max_sessions` are bound. O(log n) in the number of sessions (with
    /// [`MemoryStore`]): no step lists the bindings.
    async fn bind_new(&self, session: &SessionId) -> Result<WorkerId, SessionError> {
        let inner = &self.inner;
        let _serial = inner.bind_lock.lock().await;
        if let Some(binding) = inner.store.get(session).await {
            // Bound by a concurrent first call while we waited.
            return Ok(binding.worker);
        }
        if inner.store.len().await >= inner.config.max_sessions {
            self.evict_one().await?;
        }
        let mut ready = inner.port.ready_workers();
        if ready.is_empty() {
            // A restart window (e.g. right after SessionLost in a small
            // pool): wait like any pool call would, up to the checkout
            // time-out.
            inner
                .port
                .wait_for_ready(inner.pool.config().checkout_timeout)
                .await;
            inner.port.ensure_open()?;
            ready = inner.port.ready_workers();
        }
        let counts = inner.store.sessions_per_worker().await;
        let worker = ready
            .iter()
            .copied()
            .min_by_key(|w| (counts.get(w).copied().unwrap_or(0), *w))
            .ok_or_else(|| SessionError::NoWorker {
                session: session.to_string(),
            })?;
        let binding = inner
            .store
            .bind_if_absent(session, Binding::new(worker, Instant::now()))
            .await;
        if binding.worker == worker {
            inner.pin(worker);
        }
        metrics::gauge!("portpool_sessions", "pool" => inner.name()).set(inner.store.len().await as f64);
        Ok(binding.worker)
    }

    /// Makes room for one more session: closes the least recently used
    /// session that has no call running.
    ///
    /// Pages through the store's least-recently-used order, so the cost is
    /// O(log n) plus the sessions with a call running that are older than
    /// the victim, never a scan of every session.
    async fn evict_one(&self) -> Result<(), SessionError> {
        let mut after: Option<LruPosition> = None;
        let (victim, binding, _closing) = 'search: loop {
            let page = self
                .inner
                .store
                .least_recently_used(after.take(), EVICT_PAGE)
                .await;
            let last_page = page.len() < EVICT_PAGE;
            for (id, b) in page {
                if let Some(guard) = ClosingGuard::begin(&self.inner, &id) {
                    break 'search (id, b, guard);
                }
                after = Some((b.last_used, id));
            }
            if last_page || after.is_none() {
                return Err(SessionError::TooManySessions {
                    max: self.inner.config.max_sessions,
                });
            }
        };
        if self
            .inner
            .store
            .remove_if_bound_to(&victim, binding.worker)
            .await
            .is_some()
        {
            metrics::counter!("portpool_sessions_evicted_total", "pool" => self.inner.name()).increment(1);
            self.release(&victim, binding.worker, "evicted").await;
        }
        Ok(())
    }

    /// The binding is gone: tell the worker and let the pool recycle it.
    async fn release(&self, session: &SessionId, worker: WorkerId, why: &str) {
        tracing::debug!(%session, %worker, "session {why}");
        self.inner.unpin(worker);
        metrics::gauge!("portpool_sessions", "pool" => self.inner.name())
            .set(self.inner.store.len().await as f64);
        if self.inner.port.is_serving(worker) {
            if let Err(e) = self.inner.port.close_session(worker, session.as_str()).await {
                tracing::debug!(%session, %worker, error = %e, "session_close not delivered");
            }
        }
    }
}

/// Expires idle sessions every `ttl / 4` (at least 100 ms), until the
/// session pool is dropped.
async fn sweep(inner: Weak<Inner>, ttl: Duration) {
    let period = (ttl / 4).max(Duration::from_millis(100));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let pool = SessionPool { inner };
        pool.expire_idle(ttl).await;
    }
}

impl SessionPool {
    /// Closes the sessions idle for `ttl`, oldest first, paging through the
    /// store's least-recently-used order up to the first session in use.
    async fn expire_idle(&self, ttl: Duration) {
        let now = Instant::now();
        let mut after: Option<LruPosition> = None;
        let mut size = EXPIRE_PAGE;
        loop {
            let page = self.inner.store.least_recently_used(after.take(), size).await;
            let last_page = page.len() < size;
            size = (size * 2).min(EXPIRE_PAGE_MAX);
            for (session, binding) in page {
                if now.duration_since(binding.last_used) < ttl {
                    return; // every later one was used more recently
                }
                after = Some((binding.last_used, session.clone()));
                self.expire(&session, binding, now, ttl).await;
            }
            if last_page {
                return;
            }
        }
    }

    /// Expires one session found idle, unless a call of it runs or it was
    /// used since it was found.
    async fn expire(&self, session: &SessionId, binding: Binding, now: Instant, ttl: Duration) {
        // Not while a call of it runs; calls that start meanwhile wait.
        let Some(_closing) = ClosingGuard::begin(&self.inner, session) else {
            return;
        };
        // Used since the listing? Then it is not idle.
        match self.inner.store.get(session).await {
            Some(current) if now.duration_since(current.last_used) >= ttl => {}
            _ => return,
        }
        if self
            .inner
            .store
            .remove_if_bound_to(session, binding.worker)
            .await
            .is_some()
        {
            metrics::counter!("portpool_sessions_expired_total", "pool" => self.inner.name()).increment(1);
            self.release(session, binding.worker, "expired").await;
        }
    }
}

/// One session of a [`SessionPool`].
#[derive(Debug, Clone)]
pub struct Session {
    pool: SessionPool,
    id: SessionId,
}

impl Session {
    /// The session's id.
    pub fn id(&self) -> &SessionId {
        &self.id
    }

    /// Calls `method` in this session (serde-typed).
    pub async fn call<P, R>(&self, method: &str, params: &P) -> Result<R, SessionError>
    where
        P: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.pool.call(&self.id, method, params).await
    }

    /// Runs one raw request in this session.
    pub async fn call_raw(&self, request: CallRequest) -> Result<Value, SessionError> {
        self.pool.call_raw(&self.id, request).await
    }

    /// Closes the session (its worker drops the state).
    pub async fn close(self) -> Result<(), SessionError> {
        self.pool.close(&self.id).await
    }
}
