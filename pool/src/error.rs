use std::sync::Arc;
use std::time::Duration;

use portpool_transport::{CallError, LaunchError, WorkerId};

/// Everything a pool operation can fail with. Every call ends with exactly
/// one result or exactly one `PoolError`.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The wait queue already holds `max` callers; nothing was queued.
    #[error("pool {pool}: wait queue is full ({max} callers waiting)")]
    QueueFull {
        /// The pool's name.
        pool: String,
        /// The configured maximum queue length.
        max: usize,
    },
    /// No worker slot became free within the checkout time-out.
    #[error("pool {pool}: no worker became free within {waited:?}")]
    Timeout {
        /// The pool's name.
        pool: String,
        /// How long the caller waited.
        waited: Duration,
    },
    /// The pool is shutting down or was shut down.
    #[error("pool {pool} is closed")]
    PoolClosed {
        /// The pool's name.
        pool: String,
    },
    /// No worker is ready and every start is failing (or every worker is
    /// crash-looping); returned at once instead of after a time-out.
    #[error("pool {pool} is unavailable{}: {last_error}", if *.crash_loop { " (crash loop)" } else { "" })]
    Unavailable {
        /// The pool's name.
        pool: String,
        /// The most recent start failure (exit code and stderr tail
        /// included), or a description of the crash loop.
        last_error: Arc<LaunchError>,
        /// Whether workers start but keep crashing.
        crash_loop: bool,
    },
    /// The circuit breaker is open after repeated worker faults.
    #[error("pool {pool}: circuit breaker is open (retry in {retry_after:?})")]
    CircuitOpen {
        /// The pool's name.
        pool: String,
        /// When the breaker will let a probe call through; zero while a
        /// half-open probe is in flight.
        retry_after: Duration,
    },
    /// A call for one particular worker (session affinity) found it busy
    /// and was asked not to wait.
    #[error("pool {pool}: worker {worker} has no free slot")]
    WorkerBusy {
        /// The pool's name.
        pool: String,
        /// The worker asked for.
        worker: WorkerId,
    },
    /// A call for one particular worker found it gone (crashed, recycled or
    /// stopped).
    #[error("pool {pool}: worker {worker} is no longer in the pool")]
    WorkerGone {
        /// The pool's name.
        pool: String,
        /// The worker asked for.
        worker: WorkerId,
    },
    /// The call reached a worker and failed there (handler exception,
    /// crash, call time-out, ...). Carries the worker id, pid and stderr tail.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The parameters could not be converted to MessagePack.
    #[error("cannot encode params for {method}: {reason}")]
    Encode {
        /// The method called.
        method: String,
        /// The serializer's message.
        reason: String,
    },
    /// The result could not be converted to the requested type.
    #[error("cannot decode the result of {method}: {reason}")]
    Decode {
        /// The method called.
        method: String,
        /// The deserializer's message.
        reason: String,
    },
    /// The pool could not start: no worker came up. One diagnosis per
    /// worker (exit code, stderr tail).
    #[error("pool {pool}: no worker could start{}", BuildErrors(.errors))]
    Build {
        /// The pool's name.
        pool: String,
        /// Why each worker failed to start.
        errors: Vec<LaunchError>,
    },
    /// The configuration is invalid; `field` names the offending setting.
    #[error("invalid pool configuration: {field}: {reason}")]
    Config {
        /// The builder setting / config field at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl PoolError {
    /// Whether the error came from a worker fault (crash, call time-out).
    pub fn is_worker_fault(&self) -> bool {
        matches!(self, PoolError::Call(e) if e.is_worker_fault())
    }

    /// A short, stable label for metrics (`outcome` label).
    pub fn outcome(&self) -> &'static str {
        match self {
            PoolError::QueueFull { .. } => "queue_full",
            PoolError::Timeout { .. } => "checkout_timeout",
            PoolError::PoolClosed { .. } => "pool_closed",
            PoolError::Unavailable { .. } => "unavailable",
            PoolError::CircuitOpen { .. } => "circuit_open",
            PoolError::WorkerBusy { .. } => "worker_busy",
            PoolError::WorkerGone { .. } => "worker_gone",
            PoolError::Call(e) => call_outcome(e),
            PoolError::Encode { .. } => "encode_error",
            PoolError::Decode { .. } => "decode_error",
            PoolError::Build { .. } => "build_error",
            PoolError::Config { .. } => "config_error",
        }
    }
}

pub(crate) fn call_outcome(e: &CallError) -> &'static str {
    match e {
        CallError::Remote { .. } => "remote_error",
        CallError::Timeout { .. } => "timeout",
        CallError::WorkerCrashed { .. } => "worker_crashed",
        CallError::WorkerClosed { .. } => "worker_closed",
        CallError::InvalidRequest { .. } => "invalid_request",
        CallError::StreamOverflow { .. } => "stream_overflow",
    }
}

struct BuildErrors<'a>(&'a [LaunchError]);

impl std::fmt::Display for BuildErrors<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in self.0 {
            write!(f, "\n- {e}")?;
        }
        Ok(())
    }
}
