//! portpool pool: runs a pool of long-lived workers over any
//! [`Launcher`](portpool_transport::Launcher) and schedules calls onto them.
//!
//! The pool sees only the transport traits ([`Worker`](portpool_transport::Worker),
//! [`Launcher`](portpool_transport::Launcher)), never processes, so every rule
//! here is testable with fakes and paused time.
//!
//! Its public API:
//! - [`Pool`], built by a [`PoolBuilder`]: size, per-worker concurrency,
//!   eager parallel or lazy start, checkout / call / init time-outs, a
//!   bounded FIFO wait queue, restart backoff, recycling, heartbeats, a
//!   circuit breaker ([`PoolConfig`] lists every setting, with
//!   [`StartMode`], [`Backoff`], [`RecyclePolicy`], [`Heartbeat`],
//!   [`BreakerConfig`], [`CrashLoop`]). Its twelve methods: `builder`,
//!   `config`, the calls [`Pool::call`] (serde-typed), [`Pool::call_value`],
//!   [`Pool::call_raw`] and [`Pool::stream`] (a [`PoolStream`]), the
//!   checkouts [`Pool::checkout`] and [`Pool::checkout_with`], `affinity`,
//!   `is_closed`, `status` and `shutdown`;
//! - [`Lease`]: an RAII checkout of one worker for multi-call
//!   conversations, returned on drop, panic and cancellation; the
//!   [`Checkout`] kind is an enum;
//! - [`AffinityPort`] ([`Pool::affinity`]): what session affinity needs,
//!   calls and streams for one worker (waiting by [`Wait`], or in two steps
//!   through a [`WorkerSlot`]), pins that defer recycling, `session_close`,
//!   the ready workers;
//! - [`typed_call`], the serde step of every typed call, for layers that
//!   add their own raw call;
//! - one typed [`PoolError`] per failure (a worker's [`CallError`]
//!   included), with the worker's id, pid and stderr tail when a worker is
//!   involved;
//! - [`Pool::status`] snapshots ([`PoolStatus`], [`WorkerStatus`],
//!   [`WorkerState`], [`BreakerState`]), `metrics` counters, gauges and
//!   histograms (names in [`metrics`]) labelled with the pool name, and
//!   `tracing` spans `portpool.call` and `portpool.launch`. The library
//!   installs no subscriber or recorder;
//! - re-exported from the transport: [`CallRequest`], [`Value`],
//!   [`WorkerId`].
//!
//! Every future is cancel-safe: dropping one at any await point never leaks
//! a worker slot, a queue entry, a lease or a breaker probe.
//!
//! # Where each rule lives
//!
//! The rules are a sans-IO core, `sched/`: plain structs and functions
//! that take `now` and return decisions, with no tokio, no spawning and no
//! clock, unit-tested with a fake worker handle and a property test.
//! `sched/slots.rs` holds the slot model and the crash-loop rule;
//! `sched/workers.rs` a running worker's load ([`Checkout`] kinds, capacity,
//! draining, pins) and the picking rules (least-loaded, exclusive, targeted,
//! the worker reserved for a queued exclusive checkout); `sched/queue.rs`
//! the FIFO wait queue; `sched/checkout.rs` admission (serve, queue or
//! refuse), dispatch of freed slots, release, waiting time-outs and the
//! recording of a finished call; `sched/outcome.rs` how a call's result
//! counts (breaker verdict, time-outs in a row) and the recycle decisions
//! by calls; `sched/breaker.rs` the circuit breaker; `sched/lifecycle.rs`
//! what supervisors report (ready, launch failed, crashed, draining,
//! retired) and the "unavailable: fail at once" rule; `sched/snapshot.rs`
//! the status rows; `sched/deadline.rs` the one "never". Around it, the
//! async shell: `driver/` owns the mutex, the channels that wake queued
//! callers, the tasks and the clock, and carries out the core's outbox
//! (`driver/checkout.rs` the async checkout, `driver/launch.rs` launching,
//! `driver/gauges.rs` gauges and status); `guard.rs` the slot held by a
//! caller, given back on drop; `supervisor.rs` one task per slot (launch,
//! watch, heartbeat, recycle make-before-break, drain, backoff);
//! `call.rs` the one path of a call or stream on a held slot (the
//! deadline, the worker's call, recording the outcome) and the serde step;
//! `lease.rs` the lease; `affinity.rs` the port for sessions; `pool.rs`
//! and `builder.rs` the public handle; `config.rs`, `error.rs`,
//! `status.rs` and [`metrics`] the vocabulary. Dependencies run one way:
//! `pool` → `lease`, `affinity` → `call` → `driver` → `guard`, `sched` →
//! `config`, `error`, `status`; the builder hands the supervisor to the
//! driver, so the driver does not depend on it.
//!
//! # The path of one call
//!
//! [`Pool::call`] encodes the params ([`typed_call`]) and asks the driver
//! for a slot (at once, or queued up to the checkout time-out); `call.rs`
//! gives the request the pool's `call_timeout` unless it carries its own
//! deadline, and hands it to the worker. The worker owns the call's one
//! timer: honouring `request.timeout` is part of the
//! [`Worker`](portpool_transport::Worker) contract, so the pool starts no
//! second one. The outcome is recorded once (breaker, served count,
//! recycling, metrics), the slot goes back as its guard drops, and the
//! result is decoded. A [`Lease`] and the [`AffinityPort`] run their calls
//! through the same path.
//!
//! # Example
//!
//! With the in-process fake launcher of `portpool-testkit`; in production
//! the launcher is a `ProcessLauncher` running a Python app.
//!
//! ```
//! use std::time::Duration;
//!
//! use portpool_pool::{Checkout, Pool, PoolError};
//! use portpool_testkit::FakeLauncher;
//! use portpool_transport::Value;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), PoolError> {
//! let launcher = FakeLauncher::new()
//!     .handler("add", |params: Value| {
//!         let xs: Vec<i64> = portpool_protocol::from_value(params).unwrap_or_default();
//!         Ok(Value::from(xs.iter().sum::<i64>()))
//!     })
//!     .max_concurrency(2);
//!
//! let pool = Pool::builder(launcher)
//!     .name("adders")
//!     .workers(2)
//!     .checkout_timeout(Duration::from_secs(1))
//!     .build()
//!     .await?;
//!
//! // Typed call on the least-loaded worker.
//! let sum: i64 = pool.call("add", &[1, 2, 3]).await?;
//! assert_eq!(sum, 6);
//!
//! // An exclusive lease: every call goes to the same worker, which is
//! // returned to the pool when the lease is dropped.
//! {
//!     let lease = pool.checkout().await?;
//!     assert_eq!(lease.kind(), Checkout::Exclusive);
//!     let again: i64 = lease.call("add", &[40, 2]).await?;
//!     assert_eq!(again, 42);
//! }
//!
//! let status = pool.status();
//! assert_eq!(status.ready, 2);
//! assert_eq!(status.workers.iter().map(|w| w.served).sum::<u64>(), 2);
//!
//! pool.shutdown(Duration::from_secs(1)).await;
//! assert!(matches!(pool.call::<_, i64>("add", &[1]).await, Err(PoolError::PoolClosed { .. })));
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

mod affinity;
mod builder;
mod call;
mod config;
mod driver;
mod error;
mod guard;
mod lease;
pub mod metrics;
mod pool;
mod sched;
mod status;
mod supervisor;

pub use affinity::{AffinityPort, Wait, WorkerSlot};
pub use builder::PoolBuilder;
pub use call::{typed_call, PoolStream};
pub use config::{Backoff, BreakerConfig, CrashLoop, Heartbeat, PoolConfig, RecyclePolicy, StartMode};
pub use error::PoolError;
pub use lease::Lease;
pub use pool::Pool;
pub use portpool_transport::{CallError, CallRequest, Value, WorkerAddress, WorkerId};
pub use sched::Checkout;
pub use status::{BreakerState, PoolStatus, WorkerState, WorkerStatus};
