//! The snapshot types of [`crate::Pool::status`]: plain data.

use std::sync::Arc;
use std::time::Duration;

use portpool_transport::{LaunchError, WorkerAddress, WorkerId};

/// The state of the circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow; worker faults are counted.
    Closed,
    /// Calls fail fast with `CircuitOpen`.
    Open,
    /// A limited number of probe calls are let through.
    HalfOpen,
}

impl BreakerState {
    /// A stable lower-case name: `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// What one worker (or worker slot) is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Being launched.
    Starting,
    /// Serving calls.
    Ready,
    /// Held by an exclusive lease.
    Leased,
    /// Being replaced or stopped: finishing its calls, taking no new ones.
    Draining,
    /// Waiting to restart after a crash or a failed start.
    Backoff,
}

impl WorkerState {
    /// A stable lower-case name: `starting`, `ready`, `leased`, `draining`
    /// or `backoff` (the `state` label of the workers gauge).
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Ready => "ready",
            WorkerState::Leased => "leased",
            WorkerState::Draining => "draining",
            WorkerState::Backoff => "backoff",
        }
    }

    pub(crate) const ALL: [WorkerState; 5] = [
        WorkerState::Starting,
        WorkerState::Ready,
        WorkerState::Leased,
        WorkerState::Draining,
        WorkerState::Backoff,
    ];
}

/// A snapshot of one worker, or of a slot whose worker is starting or
/// backing off (then `id`, `pid` and `uptime` are `None`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerStatus {
    /// The slot (a stable position in the pool; replacements keep it).
    pub slot: u64,
    /// The worker's id.
    pub id: Option<WorkerId>,
    /// The worker's process id (a remote worker's as it reported it).
    pub pid: Option<u32>,
    /// `HOST:PORT` of a worker reached over the network (`None` for a
    /// local process or an empty slot).
    pub endpoint: Option<String>,
    /// The worker's stable address (see
    /// [`WorkerAddress`]).
    pub address: Option<WorkerAddress>,
    /// What it is doing.
    pub state: WorkerState,
    /// Calls it is running (as the worker counts them).
    pub in_flight: usize,
    /// Slots the pool has handed out on it (calls, streams and leases).
    pub held: usize,
    /// Calls the pool lets it run at once.
    pub capacity: usize,
    /// Calls it has finished.
    pub served: u64,
    /// How often this slot's worker was replaced (crash, recycle).
    pub restarts: u64,
    /// Resident memory in bytes, when known.
    pub rss_bytes: Option<u64>,
    /// Replies and chunks the worker sent for requests that were unknown,
    /// cancelled or timed out, dropped by the transport (never delivered to
    /// another caller); a steady rise means callers give up on it.
    pub discarded_replies: u64,
    /// The last lines the worker wrote to stderr (empty when unknown, and
    /// for a slot without a worker: see `last_error` for a failed start).
    pub stderr_tail: String,
    /// Time since it became ready.
    pub uptime: Option<Duration>,
    /// Whether the slot is crash-looping.
    pub crash_loop: bool,
    /// The slot's most recent start failure.
    pub last_error: Option<Arc<LaunchError>>,
}

/// A snapshot of the whole pool, from [`crate::Pool::status`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PoolStatus {
    /// The pool's name.
    pub name: String,
    /// Whether the pool is shut down or shutting down.
    pub closed: bool,
    /// Worker slots (running, starting or backing off).
    pub size: usize,
    /// Workers ready to take calls.
    pub ready: usize,
    /// Callers waiting for a worker.
    pub queue_depth: usize,
    /// The circuit breaker's state.
    pub breaker: BreakerState,
    /// Whether any slot is crash-looping.
    pub crash_loop: bool,
    /// The most recent start failure, if any.
    pub last_error: Option<Arc<LaunchError>>,
    /// Every worker and every slot without one.
    pub workers: Vec<WorkerStatus>,
}

impl PoolStatus {
    /// Workers in `state`.
    pub fn count(&self, state: WorkerState) -> usize {
        self.workers.iter().filter(|w| w.state == state).count()
    }
}
