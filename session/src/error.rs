use portpool_pool::PoolError;
use portpool_pool::{WorkerAddress, WorkerId};

use crate::StoreError;

/// Everything a session operation can fail with.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// A caller-supplied session id is not acceptable.
    #[error("invalid session id {id:?}: {reason}")]
    InvalidId {
        /// The id (first 40 characters).
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `FailFast` affinity: the bound worker has no free slot.
    #[error("session {session}: bound worker {worker} is busy")]
    WorkerBusy {
        /// The session.
        session: String,
        /// Its worker.
        worker: WorkerId,
    },
    /// The worker holding the session's state died or was recycled, or
    /// this front end cannot reach the worker the session is bound to (a
    /// shared store's binding to another front end's local worker, or to
    /// a remote worker process that has since restarted); the state is
    /// gone for this front end. Reported once; the next call starts a
    /// fresh session.
    #[error("session {session} lost: worker {address} {reason}")]
    SessionLost {
        /// The session.
        session: String,
        /// This pool's worker that held it; `None` when the binding's
        /// address maps to no worker of this pool.
        worker: Option<WorkerId>,
        /// The stable address of the worker the session was bound to.
        address: WorkerAddress,
        /// What happened to the worker.
        reason: String,
    },
    /// `max_sessions` are bound and every one of them has a call running,
    /// so none can be evicted.
    #[error("{max} sessions are bound and all are busy")]
    TooManySessions {
        /// The configured maximum.
        max: usize,
    },
    /// No worker is ready to take a new session.
    #[error("no ready worker to bind session {session} to")]
    NoWorker {
        /// The session.
        session: String,
    },
    /// The session configuration is invalid; `field` names the setting.
    #[error("invalid session configuration: {field}: {reason}")]
    Config {
        /// The setting at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The session store failed (unreachable, timed out): nothing was
    /// bound, routed or closed in its place. `session` is `None` for an
    /// operation on every session (such as [`len`](crate::SessionPool::len)).
    #[error("session {}: {error}", .session.as_deref().unwrap_or("(all)"))]
    Store {
        /// The session concerned, if one is.
        session: Option<String>,
        /// The store's error (its operation and reason).
        error: StoreError,
    },
    /// The pool failed the call (queue full, time-out, worker error, ...).
    #[error(transparent)]
    Pool(#[from] PoolError),
}
