//! Binding new sessions (to the ready worker with the fewest), lost
//! workers, eviction at `max_sessions`, and idle expiry.

use std::sync::Weak;
use std::time::Duration;

use portpool_pool::{WorkerAddress, WorkerId};

use super::activity::ClosingGuard;
use super::{Inner, SessionPool};
use crate::{Binding, LruPosition, OnLost, SessionError, SessionId};

/// Sessions fetched at a time when looking for one to evict.
const EVICT_PAGE: usize = 8;
/// The most sessions one bind evicts (when this front end owns more than
/// `max_sessions`, after taking sessions over from other front ends).
const MAX_EVICTIONS_PER_BIND: usize = 4;
/// Sessions fetched at first when looking for idle ones to expire; each
/// further page is twice as large (up to [`EXPIRE_PAGE_MAX`]), so a store
/// using the default, list-based `least_recently_used` is listed O(log n)
/// times per sweep, not O(n).
const EXPIRE_PAGE: usize = 64;
/// The largest expiry page.
const EXPIRE_PAGE_MAX: usize = 8_192;

impl SessionPool {
    /// The session's worker (and its address), binding it first if needed;
    /// reports a lost worker once (or rebinds, by configuration). A
    /// binding to an address this pool has no worker at is a lost worker.
    pub(super) async fn bound_worker(
        &self,
        session: &SessionId,
    ) -> Result<(WorkerId, WorkerAddress), SessionError> {
        let inner = &self.inner;
        let found = inner
            .store_op(Some(session), "get", inner.store.get(session))
            .await?;
        self.bound_worker_from(session, found).await
    }

    /// [`bound_worker`](Self::bound_worker) from the binding just read.
    pub(super) async fn bound_worker_from(
        &self,
        session: &SessionId,
        found: Option<Binding>,
    ) -> Result<(WorkerId, WorkerAddress), SessionError> {
        if let Some(binding) = found {
            if let Some(worker) = self.resolve(session, binding).await? {
                return Ok(worker);
            }
        }
        self.bind_new(session).await
    }

    /// Maps a binding to this pool's worker; `None` (after handling it as
    /// lost) when this pool has none at its address.
    async fn resolve(
        &self,
        session: &SessionId,
        binding: Binding,
    ) -> Result<Option<(WorkerId, WorkerAddress)>, SessionError> {
        match self.inner.port.worker_at(&binding.worker) {
            Some(worker) => Ok(Some((worker, binding.worker))),
            None => {
                let ours = own_local_worker(&binding.worker);
                let reason = match (ours, binding.worker.is_local()) {
                    (Some(_), _) => "is no longer in the pool",
                    (None, true) => "is a local worker of another front end",
                    (None, false) => {
                        "is not reachable from this front end (not connected, or its process restarted)"
                    }
                };
                self.lost(session, &binding.worker, ours, reason.into()).await?;
                Ok(None)
            }
        }
    }

    /// The bound worker is gone. Exactly one caller gets `SessionLost` (in
    /// `Report` mode); everyone else goes on to rebind.
    pub(super) async fn lost(
        &self,
        session: &SessionId,
        address: &WorkerAddress,
        worker: Option<WorkerId>,
        reason: String,
    ) -> Result<(), SessionError> {
        let inner = &self.inner;
        let removed = inner
            .store_op(
                Some(session),
                "remove_if",
                inner.store.remove_if(session, address, None),
            )
            .await?;
        if removed.is_none() {
            return Ok(());
        }
        inner.unpin(session);
        metrics::counter!("portpool_sessions_lost_total", "pool" => inner.name()).increment(1);
        tracing::info!(%session, %address, "session lost: worker {reason}");
        match inner.config.on_lost {
            OnLost::Report => Err(SessionError::SessionLost {
                session: session.to_string(),
                worker,
                address: address.clone(),
                reason,
            }),
            OnLost::Rebind => Ok(()),
        }
    }

    /// Binds a session that has no binding: to the ready worker with the
    /// fewest sessions (store-wide), evicting the least recently used idle
    /// session this front end owns when it owns `max_sessions`. O(log n) in
    /// the number of sessions (with [`MemoryStore`](crate::MemoryStore)):
    /// no step lists the bindings.
    pub(super) async fn bind_new(
        &self,
        session: &SessionId,
    ) -> Result<(WorkerId, WorkerAddress), SessionError> {
        let inner = &self.inner;
        let _serial = inner.bind_lock.lock().await;
        let some = Some(session);
        if let Some(binding) = inner.store_op(some, "get", inner.store.get(session)).await? {
            // Bound by a concurrent first call (here or on another front
            // end) while we waited.
            if let Some(worker) = self.resolve(session, binding).await? {
                return Ok(worker);
            }
        }
        let owned = inner
            .store_op(some, "len_owned_by", inner.store.len_owned_by(&inner.front_end))
            .await?;
        // Sessions taken over from other front ends (by calling them) count
        // from then on, so this front end may own more than max_sessions:
        // evict down to the limit, a few at a time (each bind makes up for
        // more than it adds, and stays O(log n)).
        // The first eviction makes room for this session (no idle session
        // to evict: `TooManySessions`); the others are best effort.
        let excess = (owned + 1).saturating_sub(inner.config.max_sessions);
        for n in 0..excess.min(MAX_EVICTIONS_PER_BIND) {
            match self.evict_one().await {
                Ok(()) => {}
                Err(SessionError::TooManySessions { .. }) if n > 0 => break,
                Err(e) => return Err(e),
            }
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
        let counts = inner
            .store_op(some, "sessions_per_worker", inner.store.sessions_per_worker())
            .await?;
        let (worker, address) = ready
            .iter()
            .filter_map(|w| inner.port.address(*w).map(|a| (*w, a)))
            .min_by_key(|(w, a)| (counts.get(a).copied().unwrap_or(0), *w))
            .ok_or_else(|| SessionError::NoWorker {
                session: session.to_string(),
            })?;
        // Another front end may win the bind. When its worker is one this
        // front end cannot reach, `resolve` handles it as lost (Rebind: it
        // is removed) and ours is proposed again: the call never runs on a
        // worker without a binding saying so.
        for _ in 0..2 {
            let proposed = Binding::new(address.clone(), inner.front_end.clone(), inner.now());
            let binding = inner
                .store_op(
                    some,
                    "bind_if_absent",
                    inner.store.bind_if_absent(session, proposed),
                )
                .await?;
            if binding.worker == address {
                inner.pin(session, worker);
                inner.update_gauge().await;
                return Ok((worker, address));
            }
            if let Some(found) = self.resolve(session, binding).await? {
                return Ok(found); // another front end won the bind
            }
        }
        Err(SessionError::NoWorker {
            session: session.to_string(),
        })
    }

    /// Makes room for one more session: closes the least recently used
    /// session this front end owns that has no call running.
    ///
    /// Pages through the store's least-recently-used order of this front
    /// end's sessions, so the cost is O(log n) plus the sessions with a
    /// call running that are older than the victim, never a scan of every
    /// session. The removal is a compare-and-delete on the `last_used` read:
    /// a session used meanwhile (on any front end) stays.
    pub(super) async fn evict_one(&self) -> Result<(), SessionError> {
        let inner = &self.inner;
        let mut after: Option<LruPosition> = None;
        let (victim, binding, _closing) = 'search: loop {
            let page = inner
                .store_op(
                    None,
                    "least_recently_used",
                    inner
                        .store
                        .least_recently_used(Some(&inner.front_end), after.take(), EVICT_PAGE),
                )
                .await?;
            let last_page = page.len() < EVICT_PAGE;
            for (id, b) in page {
                if let Some(guard) = ClosingGuard::begin(inner, &id) {
                    break 'search (id, b, guard);
                }
                after = Some((b.last_used, id));
            }
            if last_page || after.is_none() {
                return Err(SessionError::TooManySessions {
                    max: inner.config.max_sessions,
                });
            }
        };
        let removed = inner
            .store_op(
                Some(&victim),
                "remove_if",
                inner
                    .store
                    .remove_if(&victim, &binding.worker, Some(binding.last_used)),
            )
            .await?;
        if removed.is_some() {
            metrics::counter!("portpool_sessions_evicted_total", "pool" => inner.name()).increment(1);
            self.release(&victim, &binding.worker, "evicted").await;
        }
        Ok(())
    }

    /// The binding is gone: tell the worker and let the pool recycle it.
    pub(super) async fn release(&self, session: &SessionId, address: &WorkerAddress, why: &str) {
        tracing::debug!(%session, %address, "session {why}");
        let inner = &self.inner;
        inner.unpin(session);
        inner.update_gauge().await;
        if let Some(worker) = inner.port.worker_at(address) {
            if let Err(e) = inner.port.close_session(worker, session.as_str()).await {
                tracing::debug!(%session, %worker, error = %e, "session_close not delivered");
            }
        }
    }
}

/// The id of `address` if it names a local worker of this process (one of
/// ours, gone now or not).
fn own_local_worker(address: &WorkerAddress) -> Option<WorkerId> {
    let id = address.as_str().rsplit_once('/')?.1.parse::<u64>().ok()?;
    (WorkerAddress::local(WorkerId(id)) == *address).then_some(WorkerId(id))
}

/// Expires idle sessions every `ttl / 4` (at least 100 ms), until the
/// session pool is dropped.
pub(super) async fn sweep(inner: Weak<Inner>, ttl: Duration) {
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
    /// Closes the sessions idle (store-wide) for `ttl` that this front end
    /// owns, and those idle for twice `ttl` that another front end owns,
    /// oldest first, paging through the store's least-recently-used order
    /// up to the first session used within `ttl`. A store error ends the
    /// sweep (the next one tries again).
    async fn expire_idle(&self, ttl: Duration) {
        let inner = &self.inner;
        let now = inner.now();
        let mut after: Option<LruPosition> = None;
        let mut size = EXPIRE_PAGE;
        loop {
            let Ok(page) = inner
                .store_op(
                    None,
                    "least_recently_used",
                    inner.store.least_recently_used(None, after.take(), size),
                )
                .await
            else {
                return;
            };
            let last_page = page.len() < size;
            size = (size * 2).min(EXPIRE_PAGE_MAX);
            for (session, binding) in page {
                let idle = now.since(binding.last_used);
                if idle < ttl {
                    return; // every later one was used more recently
                }
                after = Some((binding.last_used, session.clone()));
                let limit = if binding.owner == inner.front_end {
                    ttl
                } else {
                    ttl * 2
                };
                if idle >= limit && self.expire(&session, binding).await.is_err() {
                    return;
                }
            }
            if last_page {
                return;
            }
        }
    }

    /// Expires one session found idle, unless a call of it runs here or it
    /// was used (on any front end) since it was found: a compare-and-delete
    /// on its `last_used`.
    async fn expire(&self, session: &SessionId, binding: Binding) -> Result<(), SessionError> {
        // Not while a call of it runs; calls that start meanwhile wait.
        let Some(_closing) = ClosingGuard::begin(&self.inner, session) else {
            return Ok(());
        };
        let removed = self
            .inner
            .store_op(
                Some(session),
                "remove_if",
                self.inner
                    .store
                    .remove_if(session, &binding.worker, Some(binding.last_used)),
            )
            .await?;
        if removed.is_some() {
            metrics::counter!("portpool_sessions_expired_total", "pool" => self.inner.name()).increment(1);
            self.release(session, &binding.worker, "expired").await;
        }
        Ok(())
    }
}
