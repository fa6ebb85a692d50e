//! What a dropped session pool, or a dropped `Hint` fallback call, leaves
//! to release: pins, bindings and the state workers keep for sessions.

use std::collections::HashMap;
use std::time::Duration;

use portpool_pool::{AffinityPort, WorkerId};

use super::Inner;
use crate::{SessionId, SessionStore};

impl Drop for Inner {
    /// The last handle is gone, so no call of any session runs here:
    /// release every pin, so that the pool can recycle those workers. Over
    /// a private store, inside a tokio runtime, first (in a task) tell each
    /// worker to drop the state of the sessions bound to it and remove the
    /// bindings; the pins go when that task ends or is dropped with its
    /// runtime. Over a shared store nothing is closed: other front ends may
    /// be using those sessions.
    fn drop(&mut self) {
        if let Some(task) = self.sweeper.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
        let pins = PinRelease {
            port: self.port.clone(),
            pins: std::mem::take(&mut *self.pins.lock().unwrap_or_else(|e| e.into_inner())),
        };
        if self.store.is_shared() {
            drop(pins);
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            drop(pins);
            return;
        };
        let (port, name, store, limit) = (
            self.port.clone(),
            self.pool.config().name.clone(),
            self.store.clone(),
            self.config.store_timeout,
        );
        runtime.spawn(async move {
            close_all(&port, &name, store.as_ref(), limit).await;
            drop(pins);
        });
    }
}

/// Pins to release, when dropped.
struct PinRelease {
    port: AffinityPort,
    pins: HashMap<SessionId, WorkerId>,
}

impl Drop for PinRelease {
    fn drop(&mut self) {
        for (_, worker) in self.pins.drain() {
            self.port.unpin(worker);
        }
    }
}

/// Removes every binding of the (private) `store` and tells its worker to
/// drop the state. Each store operation is bounded by `limit`; a store
/// error ends the clean-up.
async fn close_all(port: &AffinityPort, name: &str, store: &dyn SessionStore, limit: Duration) {
    let bindings = match tokio::time::timeout(limit, store.list()).await {
        Ok(Ok(bindings)) => bindings,
        Ok(Err(e)) => {
            tracing::warn!(pool = name, error = %e, "session pool dropped: cannot list its sessions");
            return;
        }
        Err(_) => {
            tracing::warn!(
                pool = name,
                "session pool dropped: listing its sessions timed out"
            );
            return;
        }
    };
    let closed = bindings.len();
    for (session, binding) in bindings {
        match tokio::time::timeout(limit, store.remove_if(&session, &binding.worker, None)).await {
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => continue,
            _ => return,
        }
        if let Some(worker) = port.worker_at(&binding.worker) {
            if let Err(e) = port.close_session(worker, session.as_str()).await {
                tracing::debug!(%session, %worker, error = %e, "session_close not delivered");
            }
        }
    }
    if closed > 0 {
        tracing::debug!(
            pool = name,
            sessions = closed,
            "session pool dropped: sessions closed"
        );
        if let Ok(Ok(n)) = tokio::time::timeout(limit, store.len()).await {
            metrics::gauge!("portpool_sessions", "pool" => name.to_string()).set(n as f64);
        }
    }
}

/// Closes a throwaway session on its worker when dropped armed (the call
/// using it was dropped before it could close it itself).
pub(super) struct CloseOnDrop {
    pub(super) port: AffinityPort,
    pub(super) worker: WorkerId,
    /// `None` once closed (disarmed).
    pub(super) session: Option<String>,
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
