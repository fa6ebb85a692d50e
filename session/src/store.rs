use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use portpool_transport::WorkerId;
use tokio::time::Instant;

use crate::SessionId;

/// Where a session is bound, and when it was last used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    /// The worker holding the session's state.
    pub worker: WorkerId,
    /// When the session was bound.
    pub bound_at: Instant,
    /// When the session was bound or a call of it last ended.
    pub last_used: Instant,
}

impl Binding {
    /// A binding to `worker` made now.
    pub fn new(worker: WorkerId, now: Instant) -> Self {
        Binding {
            worker,
            bound_at: now,
            last_used: now,
        }
    }
}

/// Keeps session bindings. The in-memory [`MemoryStore`] is the default;
/// implement this to share bindings elsewhere.
///
/// `bind_if_absent` must be atomic: of concurrent binds of one session,
/// exactly one wins and all see its binding.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// The session's binding, if it has one.
    async fn get(&self, session: &SessionId) -> Option<Binding>;
    /// Binds the session unless it is bound already; returns the binding in force.
    async fn bind_if_absent(&self, session: &SessionId, binding: Binding) -> Binding;
    /// Records a use of the session.
    async fn touch(&self, session: &SessionId, at: Instant);
    /// Removes the binding only if it still points at `worker`; returns it.
    async fn remove_if_bound_to(&self, session: &SessionId, worker: WorkerId) -> Option<Binding>;
    /// Removes the binding; returns it.
    async fn remove(&self, session: &SessionId) -> Option<Binding>;
    /// Every binding.
    async fn list(&self) -> Vec<(SessionId, Binding)>;
    /// How many sessions are bound.
    async fn len(&self) -> usize;
    /// Whether no session is bound.
    async fn is_empty(&self) -> bool {
        self.len().await == 0
    }
}

/// The default store: a map in this process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    map: Mutex<HashMap<SessionId, Binding>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Binding>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn get(&self, session: &SessionId) -> Option<Binding> {
        self.map().get(session).copied()
    }

    async fn bind_if_absent(&self, session: &SessionId, binding: Binding) -> Binding {
        *self.map().entry(session.clone()).or_insert(binding)
    }

    async fn touch(&self, session: &SessionId, at: Instant) {
        if let Some(binding) = self.map().get_mut(session) {
            binding.last_used = binding.last_used.max(at);
        }
    }

    async fn remove_if_bound_to(&self, session: &SessionId, worker: WorkerId) -> Option<Binding> {
        let mut map = self.map();
        match map.get(session) {
            Some(binding) if binding.worker == worker => map.remove(session),
            _ => None,
        }
    }

    async fn remove(&self, session: &SessionId) -> Option<Binding> {
        self.map().remove(session)
    }

    async fn list(&self) -> Vec<(SessionId, Binding)> {
        self.map().iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    async fn len(&self) -> usize {
        self.map().len()
    }
}
