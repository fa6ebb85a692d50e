//! [`SessionPool`] and [`Session`]: the public handles, and the path of a
//! session's call. The rest of the rules live beside it:
//! - `activity.rs`: the order of a session's calls and closes (a close
//!   waits for running calls; calls arriving during a close wait for it);
//! - `binding.rs`: binding new sessions, lost workers, eviction, expiry;
//! - `cleanup.rs`: what a dropped session pool (or a dropped fallback
//!   call) leaves to release: pins, bindings, worker-side state.
//!
//! Everything the pool does for sessions goes through its
//! [`AffinityPort`].

mod activity;
mod binding;
mod cleanup;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use portpool_pool::{
    typed_call, AffinityPort, CallError, CallRequest, Checkout, Pool, PoolError, Value, Wait, WorkerId,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;

use self::activity::{Activity, ClosingGuard};
use self::binding::sweep;
use self::cleanup::CloseOnDrop;
use crate::{Affinity, Binding, MemoryStore, OnLost, SessionConfig, SessionError, SessionId, SessionStore};

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

impl std::fmt::Debug for SessionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionPool")
            .field("pool", &self.inner.pool)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
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
