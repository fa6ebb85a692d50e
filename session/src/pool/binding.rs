//! Binding new sessions (to the ready worker with the fewest), lost
//! workers, eviction at `max_sessions`, and idle expiry.

use std::sync::Weak;
use std::time::Duration;

use portpool_pool::WorkerId;
use tokio::time::Instant;

use super::activity::ClosingGuard;
use super::{Inner, SessionPool};
use crate::{Binding, LruPosition, OnLost, SessionError, SessionId};

/// Sessions fetched at a time when looking for one to evict.
const EVICT_PAGE: usize = 8;
/// Sessions fetched at first when looking for idle ones to expire; each
/// further page is twice as large (up to [`EXPIRE_PAGE_MAX`]), so a store
/// using the default, list-based `least_recently_used` is listed O(log n)
/// times per sweep, not O(n).
const EXPIRE_PAGE: usize = 64;
/// The largest expiry page.
const EXPIRE_PAGE_MAX: usize = 8_192;

impl SessionPool {
    /// The session's worker, binding it first if needed; reports a lost
    /// worker once (or rebinds, by configuration).
    pub(super) async fn bound_worker(&self, session: &SessionId) -> Result<WorkerId, SessionError> {
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
    pub(super) async fn lost(
        &self,
        session: &SessionId,
        worker: WorkerId,
        reason: String,
    ) -> Result<(), SessionError> {
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
    /// [`MemoryStore`](crate::MemoryStore)): no step lists the bindings.
    pub(super) async fn bind_new(&self, session: &SessionId) -> Result<WorkerId, SessionError> {
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
    pub(super) async fn evict_one(&self) -> Result<(), SessionError> {
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
    pub(super) async fn release(&self, session: &SessionId, worker: WorkerId, why: &str) {
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
