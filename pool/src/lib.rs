//! portpool pool: runs a pool of long-lived workers over any
//! [`Launcher`](portpool_transport::Launcher) and schedules calls onto them.
//!
//! The pool sees only the transport traits ([`Worker`](portpool_transport::Worker),
//! [`Launcher`](portpool_transport::Launcher)), never processes, so every rule
//! here is testable with fakes and paused time.
//!
//! It provides:
//! - [`Pool`] and its [`PoolBuilder`]: size, per-worker concurrency, eager
//!   parallel or lazy start, checkout / call / init time-outs, a bounded
//!   FIFO wait queue, restart backoff, recycling, heartbeats, a circuit
//!   breaker ([`PoolConfig`] lists every setting);
//! - calls: [`Pool::call`] (serde-typed), [`Pool::call_raw`], [`Pool::stream`];
//! - [`Pool::checkout`]: an RAII [`Lease`] on one worker for multi-call
//!   conversations, returned on drop, panic and cancellation; the
//!   [`Checkout`] kind is an enum;
//! - one typed [`PoolError`] per failure, with the worker's id, pid and
//!   stderr tail when a worker is involved;
//! - [`Pool::status`] snapshots, `metrics` counters, gauges and histograms
//!   (names in [`metrics`]) labelled with the pool name, and `tracing` spans
//!   `portpool.call` and `portpool.launch`. The library installs no
//!   subscriber or recorder.
//!
//! Every future is cancel-safe: dropping one at any await point never leaks
//! a worker slot, a queue entry, a lease or a breaker probe.
//!
//! # Example
//!
//! ```
//! # DOCTEST
//! ```

mod breaker;
mod builder;
mod config;
mod error;
mod lease;
pub mod metrics;
mod pool;
mod shared;
mod status;
mod supervisor;

pub use breaker::BreakerState;
pub use builder::PoolBuilder;
pub use config::{Backoff, BreakerConfig, CrashLoop, Heartbeat, PoolConfig, RecyclePolicy, StartMode};
pub use error::PoolError;
pub use lease::{Checkout, Lease, PoolStream};
pub use pool::Pool;
pub use portpool_transport::{CallRequest, Value};
pub use status::{PoolStatus, WorkerState, WorkerStatus};
