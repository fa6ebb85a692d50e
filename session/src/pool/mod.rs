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
use std::future::Future;
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
use crate::store::StoreResult;
use crate::{
    Affinity, Binding, MemoryStore, OnLost, SessionConfig, SessionError, SessionId, SessionStore, StoreError,
    UnixMillis,
};

/// Session affinity over a [`Pool`]: each session binds to one worker on
/// first use, and its calls go there, so state the handler keeps in
/// `ctx.session` stays in that process.
///
/// A cheap, cloneable handle. Each session it binds pins its worker (the
/// pool defers recycling it, up to the drain time-out) until the session is
/// closed, expired, evicted or lost. Dropping the last handle releases
/// every pin at once. Over a private store (such as [`MemoryStore`]) it
/// also (inside a tokio runtime, in a background task) closes every
/// session of the store: each worker is told to drop the state, and the
/// binding is removed; so a private store belongs to one session pool at a
/// time. Over a shared store ([`SessionStore::is_shared`], such as
/// `RedisStore`) it closes nothing: other front ends may go on with those
/// sessions, and idle expiry removes them once no front end uses them.
///
/// Bindings name workers by [`WorkerAddress`](portpool_pool::WorkerAddress);
/// each call maps the address to this pool's worker with
/// [`AffinityPort::worker_at`]. An address this pool has no worker for (a
/// local worker of another front end, a remote worker this front end is
/// not connected to, a remote worker process that restarted) is a lost
/// worker, handled by [`OnLost`]: a session is never routed to a worker
/// that does not hold its state.
///
/// # Several front ends sharing a store
///
/// Every session has an owner: the front end that bound it, then the last
/// one to start a call of it (`touch` moves the ownership). Then:
/// - `max_sessions` counts, and eviction picks among, only the sessions
///   this front end owns, least recently used first; the eviction is a
///   compare-and-delete on the `last_used` it read, so a session used
///   meanwhile (on any front end) is not evicted. A session another front
///   end is using is owned by that front end: it is never evicted here.
/// - `last_used` is store-wide. A front end expires a session it owns once
///   idle for `idle_ttl` (and no call of it runs here); a session owned by
///   another front end only once idle for twice `idle_ttl` (its owner may
///   have a long call running; this reclaims the sessions of front ends
///   that went away). Both are compare-and-delete on `last_used`.
/// - Dropping a session pool over a shared store closes none of its
///   sessions (see above).
/// - Times are wall-clock milliseconds ([`UnixMillis`]): keep the front
///   ends' clocks in sync to well within `idle_ttl`.
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
    /// The pins this session pool holds: the worker of each session it
    /// bound; released when the session goes, or all at once on drop.
    pins: Mutex<HashMap<SessionId, WorkerId>>,
    /// This front end's name in the bindings (their `owner`).
    front_end: String,
    /// The wall clock when the session pool was created, and the tokio
    /// time then: `now` is the first advanced by the second's elapsed.
    clock: (UnixMillis, Instant),
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

    fn pins(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, WorkerId>> {
        self.pins.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The time bindings record: the wall clock read at creation, advanced
    /// by tokio's monotonic clock (so paused-time tests move it).
    fn now(&self) -> UnixMillis {
        self.clock.0.plus(self.clock.1.elapsed())
    }

    /// Runs one store operation, bounded by `store_timeout`; a failure is
    /// [`SessionError::Store`] naming `session`.
    async fn store_op<T>(
        &self,
        session: Option<&SessionId>,
        op: &'static str,
        fut: impl Future<Output = StoreResult<T>>,
    ) -> Result<T, SessionError> {
        let limit = self.config.store_timeout;
        let error = match tokio::time::timeout(limit, fut).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => error,
            Err(_) => StoreError::timeout(op, limit),
        };
        metrics::counter!("portpool_session_store_errors_total", "pool" => self.name(), "op" => op)
            .increment(1);
        tracing::warn!(session = ?session.map(SessionId::as_str), %error, "session store failed");
        Err(SessionError::Store {
            session: session.map(|s| s.to_string()),
            error,
        })
    }

    /// Updates the sessions gauge (best effort: a store error is ignored).
    async fn update_gauge(&self) {
        if let Ok(Ok(n)) = tokio::time::timeout(self.config.store_timeout, self.store.len()).await {
            metrics::gauge!("portpool_sessions", "pool" => self.name()).set(n as f64);
        }
    }

    /// The pool's name (the `pool` label of the session metrics).
    fn name(&self) -> String {
        self.pool.config().name.clone()
    }

    /// Pins `worker` for `session`, which this session pool bound to it.
    fn pin(&self, session: &SessionId, worker: WorkerId) {
        if self.port.pin(worker) {
            let old = self.pins().insert(session.clone(), worker);
            if let Some(old) = old {
                self.port.unpin(old);
            }
        }
    }

    /// Releases the pin of `session`, if this session pool holds one.
    fn unpin(&self, session: &SessionId) {
        let pinned = self.pins().remove(session);
        if let Some(worker) = pinned {
            self.port.unpin(worker);
        }
    }
}

impl SessionPool {
    /// Session affinity over `pool` with `config` and the in-memory store.
    /// Must be called inside a tokio runtime when `idle_ttl` is set (it
    /// starts the expiry task).
    pub fn new(pool: Pool, config: SessionConfig) -> Result<Self, SessionError> {
        Self::with_store(pool, config, Arc::new(MemoryStore::new()))
    }

    /// Like [`SessionPool::new`] with a custom [`SessionStore`]: a shared
    /// one (`RedisStore`, feature `redis`) lets several front ends continue
    /// each other's sessions; give each a distinct
    /// [`SessionConfig::front_end`] name (see "Several front ends sharing a
    /// store" above). A private store ([`SessionStore::is_shared`] false)
    /// belongs to one session pool at a time.
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
        let front_end = config
            .front_end
            .clone()
            .unwrap_or_else(|| format!("fe-{:016x}", rand::random::<u64>()));
        let inner = Arc::new(Inner {
            front_end,
            clock: (UnixMillis::now(), Instant::now()),
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
            // The call starts: the session is in use (store-wide), and this
            // front end owns it from now on. Before the binding is read: an
            // expiry or eviction elsewhere either saw this use (and keeps
            // the session), or removed it first (and the call binds anew).
            let found = inner
                .store_op(
                    Some(session),
                    "start_use",
                    inner.store.start_use(session, inner.now(), &inner.front_end),
                )
                .await?;
            let (worker, address) = self.bound_worker_from(session, found).await?;
            let result = match inner.port.slot(worker, wait).await {
                Ok(slot) => self.while_in_use(session, slot.call(request)).await,
                Err(PoolError::WorkerBusy { .. }) if affinity == Affinity::Hint => {
                    self.call_elsewhere(session, request).await
                }
                Err(gone @ PoolError::WorkerGone { .. }) => {
                    self.lost(session, &address, Some(worker), "is no longer in the pool".into())
                        .await?;
                    if std::mem::take(&mut retry) {
                        continue;
                    }
                    return Err(SessionError::Pool(gone));
                }
                Err(other) => Err(other),
            };
            // The call ran: its outcome stands even if the store cannot
            // record the use now (the next call reports the store).
            if let Err(e) = self.touch_end(session).await {
                tracing::debug!(%session, error = %e, "last use not recorded");
            }
            return match result {
                Ok(value) => Ok(value),
                Err(PoolError::WorkerBusy { worker, .. }) => Err(SessionError::WorkerBusy {
                    session: session.to_string(),
                    worker,
                }),
                Err(PoolError::Call(error @ CallError::WorkerCrashed { .. })) if error.worker() == worker => {
                    let reason = format!("crashed during the call: {error}");
                    match self.lost(session, &address, Some(worker), reason).await {
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
        let removed = self
            .inner
            .store_op(Some(session), "remove", self.inner.store.remove(session))
            .await?;
        if let Some(binding) = removed {
            self.release(session, &binding.worker, "closed").await;
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
        Ok(self.bound_worker(session).await?.0)
    }

    /// This front end's name in the store's bindings (see
    /// [`SessionConfig::front_end`]).
    pub fn front_end(&self) -> &str {
        &self.inner.front_end
    }

    /// How many sessions are bound in the store (by every front end
    /// sharing it).
    pub async fn len(&self) -> Result<usize, SessionError> {
        self.inner.store_op(None, "len", self.inner.store.len()).await
    }

    /// How many sessions this front end owns: what `max_sessions` limits.
    pub async fn owned_len(&self) -> Result<usize, SessionError> {
        let owner = self.inner.front_end.as_str();
        self.inner
            .store_op(None, "len_owned_by", self.inner.store.len_owned_by(owner))
            .await
    }

    /// Whether no session is bound in the store.
    pub async fn is_empty(&self) -> Result<bool, SessionError> {
        Ok(self.len().await? == 0)
    }

    /// Bound sessions per worker of this pool (sessions bound to workers
    /// this pool has no connection to are left out).
    pub async fn sessions_per_worker(&self) -> Result<HashMap<WorkerId, usize>, SessionError> {
        let by_address = self
            .inner
            .store_op(
                None,
                "sessions_per_worker",
                self.inner.store.sessions_per_worker(),
            )
            .await?;
        let mut counts = HashMap::new();
        for (address, n) in by_address {
            if let (Some(worker), true) = (self.inner.port.worker_at(&address), n > 0) {
                *counts.entry(worker).or_insert(0) += n;
            }
        }
        Ok(counts)
    }

    /// The session's binding in the store, if it has one.
    pub async fn binding(&self, session: &SessionId) -> Result<Option<Binding>, SessionError> {
        self.inner
            .store_op(Some(session), "get", self.inner.store.get(session))
            .await
    }

    /// This pool's worker the session is bound to: `None` if the session
    /// is not bound, or is bound to an address this pool has no worker at.
    pub async fn worker_of(&self, session: &SessionId) -> Result<Option<WorkerId>, SessionError> {
        Ok(self
            .binding(session)
            .await?
            .and_then(|b| self.inner.port.worker_at(&b.worker)))
    }

    /// Runs `call` of `session`, recording a use every quarter of
    /// `idle_ttl` while it runs: a call longer than the TTL is a use all
    /// along, so no front end (this one or another, whose limit is twice the
    /// TTL) expires the session under it, and its binding key's TTL is
    /// refreshed. A failed record is only logged (the next one tries again).
    async fn while_in_use<T>(&self, session: &SessionId, call: impl Future<Output = T>) -> T {
        let Some(ttl) = self.inner.config.idle_ttl else {
            return call.await;
        };
        let period = (ttl / 4).max(std::time::Duration::from_millis(100));
        let uses = async {
            let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                if let Err(e) = self.touch_end(session).await {
                    tracing::debug!(%session, error = %e, "use during a long call not recorded");
                }
            }
        };
        tokio::select! {
            biased;
            out = call => out,
            never = uses => never,
        }
    }

    /// Records the end of a call of `session` now.
    async fn touch_end(&self, session: &SessionId) -> Result<(), SessionError> {
        let inner = &self.inner;
        inner
            .store_op(
                Some(session),
                "touch",
                inner.store.touch(session, inner.now(), None),
            )
            .await
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
