use portpool_pool::PoolError;
use portpool_pool::WorkerId;

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
    /// The worker holding the session's state died or was recycled; the
    /// state is gone. Reported once; the next call starts a fresh session.
    #[error("session {session} lost: worker {worker} {reason}")]
    SessionLost {
        /// The session.
        session: String,
        /// The worker that held it.
        worker: WorkerId,
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
    /// The pool failed the call (queue full, time-out, worker error, ...).
    #[error(transparent)]
    Pool(#[from] PoolError),
}
