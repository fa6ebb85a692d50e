//! What a dropped session pool, or a dropped `Hint` fallback call, leaves
//! to release: pins, bindings and the state workers keep for sessions.

use std::collections::HashMap;

use portpool_pool::{AffinityPort, WorkerId};

use super::Inner;
use crate::SessionStore;

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
