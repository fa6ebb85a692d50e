use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use portpool_pool::{Checkout, Pool, PoolError, Wait};
use portpool_transport::{CallError, CallRequest, Value, WorkerId};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;

use crate::{Affinity, Binding, MemoryStore, OnLost, SessionConfig, SessionError, SessionId, SessionStore};

/// Session affinity over a [`Pool`]: each session binds to one worker on
/// first use, and its calls go there, so state the handler keeps in
/// `ctx.session` stays in that process.
///
/// A cheap, cloneable handle.
#[derive(Clone)]
pub struct SessionPool {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    store: Arc<dyn SessionStore>,
    config: SessionConfig,
    /// Serializes the binding of new sessions, so concurrent new sessions
    /// spread by session count and one session binds exactly once.
    bind_lock: tokio::sync::Mutex<()>,
    /// Per session: calls running, or being closed by expiry/eviction. A
    /// session with a call running is never expired or evicted, and a call
    /// waits for a close in progress, so no request reaches a worker after
    /// its `session_close`.
    active: Mutex<HashMap<SessionId, Activity>>,
    /// Signalled when a session's last running call ends or a close ends.
    activity_changed: tokio::sync::Notify,
    sweeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.sweeper.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
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

enum Activity {
    Calls(usize),
    Closing,
}

impl Inner {
    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Activity>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
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
        if let Some(Activity::Calls(n)) = active.get_mut(&self.session) {
            *n -= 1;
            if *n == 0 {
                active.remove(&self.session);
                drop(active);
                // An explicit close may be waiting for the calls to end.
                self.inner.activity_changed.notify_waiters();
            }
        }
    }
}

/// Marks an idle session as being closed (expiry, eviction) until dropped.
struct ClosingGuard<'a> {
    inner: &'a Inner,
    session: SessionId,
}

impl<'a> ClosingGuard<'a> {
    /// `None` if the session has a call running (or is already closing).
    fn begin(inner: &'a Inner, session: &SessionId) -> Option<Self> {
        let mut active = inner.active();
        if active.contains_key(session) {
            return None;
        }
        active.insert(session.clone(), Activity::Closing);
        Some(ClosingGuard {
            inner,
            session: session.clone(),
        })
    }
}

impl<'a> ClosingGuard<'a> {
    /// Waits until no call of the session runs (and no other close), then
    /// marks it closing; calls that start meanwhile wait for the close.
    async fn wait_begin(inner: &'a Inner, session: &SessionId) -> Self {
        loop {
            let changed = inner.activity_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(guard) = ClosingGuard::begin(inner, session) {
                return guard;
            }
            changed.await;
        }
    }
}

impl Drop for ClosingGuard<'_> {
    fn drop(&mut self) {
        self.inner.active().remove(&self.session);
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
            pool,
            store,
            config,
            bind_lock: tokio::sync::Mutex::new(()),
            active: Mutex::new(HashMap::new()),
            activity_changed: tokio::sync::Notify::new(),
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
        let params = portpool_protocol::to_value(params).map_err(|e| PoolError::Encode {
            method: method.to_string(),
            reason: e.to_string(),
        })?;
        let value = self.call_raw(session, CallRequest::new(method, params)).await?;
        portpool_protocol::from_value(value).map_err(|e| {
            SessionError::Pool(PoolError::Decode {
                method: method.to_string(),
                reason: e.to_string(),
            })
        })
    }

    /// Runs one raw request in `session`.
    pub async fn call_raw(
        &self,
        session: &SessionId,
        mut request: CallRequest,
    ) -> Result<Value, SessionError> {
        request.session = Some(session.to_string());
        let _active = self.activate(session).await;
        // Only `Rebind` retries (once, when the worker vanished between the
        // binding check and the call), so only it pays for a copy.
        let retry = (self.inner.config.on_lost == OnLost::Rebind).then(|| request.clone());
        match self.call_bound(session, request).await {
            Err(SessionError::Pool(PoolError::WorkerGone { .. })) if retry.is_some() => {
                let request = retry.unwrap_or_else(|| unreachable!("checked above"));
                self.call_bound(session, request).await
            }
            other => other,
        }
    }

    async fn call_bound(&self, session: &SessionId, request: CallRequest) -> Result<Value, SessionError> {
        let inner = &self.inner;
        // A closed pool is not a lost worker: say what really happened.
        if inner.pool.is_closed() {
            return Err(SessionError::Pool(inner.pool.closed_error()));
        }
        let worker = self.bound_worker(session).await?;
        let pool = &inner.pool;
        let result = match inner.config.affinity {
            Affinity::Strict => pool.call_on(worker, request, Wait::Queue).await,
            Affinity::FailFast => pool.call_on(worker, request, Wait::FailFast).await,
            Affinity::Hint => match pool.call_on(worker, request.clone(), Wait::FailFast).await {
                Err(PoolError::WorkerBusy { .. }) => self.call_elsewhere(session, request).await,
                other => other,
            },
        };
        inner.store.touch(session, Instant::now()).await;
        match result {
            Ok(value) => Ok(value),
            Err(PoolError::WorkerBusy { worker, .. }) => Err(SessionError::WorkerBusy {
                session: session.to_string(),
                worker,
            }),
            Err(gone @ PoolError::WorkerGone { .. }) => {
                self.lost(session, worker, "is no longer in the pool".into())
                    .await?;
                Err(SessionError::Pool(gone))
            }
            Err(PoolError::Call(error @ CallError::WorkerCrashed { .. })) if error.worker() == worker => {
                let reason = format!("crashed during the call: {error}");
                match self.lost(session, worker, reason).await {
                    Err(lost) => Err(lost),
                    Ok(()) => Err(SessionError::Pool(PoolError::Call(error))),
                }
            }
            Err(other) => Err(SessionError::Pool(other)),
        }
    }

    /// `Hint` fallback: runs the call on any worker under a throwaway
    /// session id (a fresh, empty state), dropped right after the call. It
    /// can never touch the session's real state, wherever that lives.
    async fn call_elsewhere(
        &self,
        session: &SessionId,
        mut request: CallRequest,
    ) -> Result<Value, PoolError> {
        let pool = &self.inner.pool;
        let throwaway = format!("{session}.fallback.{:016x}", rand::random::<u64>());
        request.session = Some(throwaway.clone());
        let lease = pool.checkout_with(Checkout::Shared).await?;
        let worker = lease.worker_id();
        let result = lease.call_raw(request).await;
        drop(lease);
        if let Err(e) = pool.close_session_on(worker, &throwaway).await {
            tracing::debug!(%session, %worker, error = %e, "fallback session_close not delivered");
        }
        result
    }

    /// Closes `session`: forgets its binding and tells its worker to drop
    /// the state. Closing an unknown session does nothing.
    pub async fn close(&self, session: &SessionId) -> Result<(), SessionError> {
        // After the calls of the session that are running: none may reach
        // the worker after its session_close.
        let _closing = ClosingGuard::wait_begin(&self.inner, session).await;
        if let Some(binding) = self.inner.store.remove(session).await {
            self.release(session, binding.worker, "closed").await;
        }
        Ok(())
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
        let mut counts = HashMap::new();
        for (_, binding) in self.inner.store.list().await {
            *counts.entry(binding.worker).or_insert(0) += 1;
        }
        counts
    }

    /// The worker `session` is bound to, if any.
    pub async fn binding(&self, session: &SessionId) -> Option<Binding> {
        self.inner.store.get(session).await
    }

    /// Counts a call of `session` as running; waits while an expiry or
    /// eviction of it is in progress.
    async fn activate(&self, session: &SessionId) -> ActiveGuard<'_> {
        loop {
            let closed = self.inner.activity_changed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            {
                let mut active = self.inner.active();
                match active.get_mut(session) {
                    Some(Activity::Closing) => {}
                    Some(Activity::Calls(n)) => {
                        *n += 1;
                        return self.active_guard(session);
                    }
                    None => {
                        active.insert(session.clone(), Activity::Calls(1));
                        return self.active_guard(session);
                    }
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
            if inner.pool.is_serving(binding.worker) {
                return Ok(binding.worker);
            }
            self.lost(session, binding.worker, "is no longer in the pool".into())
                .await?;
        }
        self.bind(session).await
    }

    /// The bound worker is gone. Exactly one caller gets `SessionLost` (in
    /// `Report` mode); everyone else goes on to rebind.
    async fn lost(&self, session: &SessionId, worker: WorkerId, reason: String) -> Result<(), SessionError> {
        let removed = self.inner.store.remove_if_bound_to(session, worker).await;
        if removed.is_none() {
            return Ok(());
        }
        self.inner.pool.unpin(worker);
        metrics::counter!("portpool_sessions_lost_total", "pool" => self.inner.pool.name().to_string())
            .increment(1);
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

    async fn bind(&self, session: &SessionId) -> Result<WorkerId, SessionError> {
        let inner = &self.inner;
        let _serial = inner.bind_lock.lock().await;
        if let Some(binding) = inner.store.get(session).await {
            // Bound by a concurrent first call while we waited.
            return Ok(binding.worker);
        }
        if inner.store.len().await >= inner.config.max_sessions {
            self.evict_one().await?;
        }
        let mut ready = inner.pool.ready_workers();
        if ready.is_empty() {
            // A restart window (e.g. right after SessionLost in a small
            // pool): wait like any pool call would, up to the checkout
            // time-out.
            inner
                .pool
                .wait_for_ready(inner.pool.config().checkout_timeout)
                .await;
            if inner.pool.is_closed() {
                return Err(SessionError::Pool(inner.pool.closed_error()));
            }
            ready = inner.pool.ready_workers();
        }
        let counts = self.sessions_per_worker().await;
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
            inner.pool.pin(worker);
        }
        metrics::gauge!("portpool_sessions", "pool" => inner.pool.name().to_string())
            .set(inner.store.len().await as f64);
        Ok(binding.worker)
    }

    /// Makes room for one more session: closes the least recently used
    /// session that has no call running.
    async fn evict_one(&self) -> Result<(), SessionError> {
        let mut candidates = self.inner.store.list().await;
        candidates.sort_by_key(|(_, b)| b.last_used);
        let Some((victim, binding, _closing)) = candidates
            .into_iter()
            .find_map(|(id, b)| ClosingGuard::begin(&self.inner, &id).map(|g| (id, b, g)))
        else {
            return Err(SessionError::TooManySessions {
                max: self.inner.config.max_sessions,
            });
        };
        if self
            .inner
            .store
            .remove_if_bound_to(&victim, binding.worker)
            .await
            .is_some()
        {
            metrics::counter!("portpool_sessions_evicted_total", "pool" => self.inner.pool.name().to_string())
                .increment(1);
            self.release(&victim, binding.worker, "evicted").await;
        }
        Ok(())
    }

    /// The binding is gone: tell the worker and let the pool recycle it.
    async fn release(&self, session: &SessionId, worker: WorkerId, why: &str) {
        tracing::debug!(%session, %worker, "session {why}");
        self.inner.pool.unpin(worker);
        if self.inner.pool.is_serving(worker) {
            if let Err(e) = self.inner.pool.close_session_on(worker, session.as_str()).await {
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
    async fn expire_idle(&self, ttl: Duration) {
        let now = Instant::now();
        for (session, binding) in self.inner.store.list().await {
            if now.duration_since(binding.last_used) < ttl {
                continue;
            }
            // Not while a call of it runs; calls that start meanwhile wait.
            let Some(_closing) = ClosingGuard::begin(&self.inner, &session) else {
                continue;
            };
            // Used since the listing? Then it is not idle.
            match self.inner.store.get(&session).await {
                Some(current) if now.duration_since(current.last_used) >= ttl => {}
                _ => continue,
            }
            if self
                .inner
                .store
                .remove_if_bound_to(&session, binding.worker)
                .await
                .is_some()
            {
                metrics::counter!("portpool_sessions_expired_total", "pool" => self.inner.pool.name().to_string())
                    .increment(1);
                self.release(&session, binding.worker, "expired").await;
            }
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
