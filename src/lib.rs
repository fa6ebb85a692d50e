//! portpool: run a pool of long-lived worker processes (Python first) from
//! Rust over length-prefixed MessagePack frames.
//!
//! Each worker is a process speaking 4-byte big-endian length-prefixed
//! MessagePack frames on its stdin/stdout (Erlang ports with `{packet, 4}`).
//! The pool starts them in parallel, schedules calls onto the least-loaded
//! one (many calls in flight per worker), restarts crashed workers, recycles
//! old ones and reports every failure with the worker's stderr tail.
//!
//! This crate is the facade over the layers:
//! - [`protocol`]: frames and messages (sans-IO);
//! - [`transport`]: the `Worker`/`Launcher` traits, the process worker and
//!   (feature `remote`, on by default) [`TcpLauncher`] for workers on other
//!   hosts, served by `python -m portpool APP --listen HOST:PORT`;
//! - [`pool`]: scheduling, health, recycling and a circuit breaker;
//! - [`session`]: session affinity ([`SessionPool`]), so per-session state
//!   kept in a worker stays in that worker;
//! - the common types re-exported flat ([`Pool`], [`PoolBuilder`],
//!   [`CallRequest`], [`Value`], [`WorkerCommand`], ...);
//! - [`python`], the shortcut for a pool of Python workers;
//! - with the `tower` feature, [`PoolService`], a `tower::Service` over a
//!   pool, to compose with tower middleware;
//! - with the `redis` feature, `RedisStore`: session bindings shared by
//!   several front ends (processes) through Redis.
//!
//! # Quick start
//!
//! A Python file with handlers (the worker runtime is the `portpool` Python
//! package, installed into `.venv` by `cargo xtask setup`):
//!
//! ```python
//! import portpool
//!
//! app = portpool.App(max_concurrency=16)
//!
//! @app.handler
//! def echo(params):
//!     return params
//! ```
//!
//! and from Rust:
//!
//! ```
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The interpreter is $PORTPOOL_PYTHON, else the nearest .venv, else python3.
//! let app = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/demo_app.py");
//! let pool = portpool::python(app).workers(2).build().await?;
//!
//! // Typed call (params and result through serde).
//! let n: u64 = pool.call("primes", &1_000).await?;
//! assert_eq!(n, 168);
//!
//! // Sessions: each binds to one worker, whose handler keeps `ctx.session`.
//! let sessions = portpool::SessionPool::new(pool.clone(), portpool::SessionConfig::default())?;
//! let alice = sessions.open();
//! for expected in 1..=3u64 {
//!     let n: u64 = alice.call("counter", &()).await?;
//!     assert_eq!(n, expected);
//! }
//! alice.close().await?;
//!
//! println!("{} workers ready", pool.status().ready);
//! pool.shutdown(Duration::from_secs(5)).await;
//! # Ok(())
//! # }
//! ```
//!
//! # Calls for one worker, and what a worker shows
//!
//! [`Pool::affinity`] is the port sessions use ([`AffinityPort`]): it sends
//! a call to one particular worker, [`Wait`] saying whether to queue for it
//! or fail fast when it is busy, and pins workers that hold state.
//! [`Pool::status`] shows each worker's stderr tail and how many replies
//! it sent that nobody waited for any more.
//!
//! ```no_run
//! use portpool::{CallRequest, Pool, PoolError, Value, Wait, WorkerId};
//!
//! # async fn example(pool: Pool) -> Result<(), PoolError> {
//! let port = pool.affinity();
//! let worker: WorkerId = port.ready_workers()[0];
//! let v: Value = port
//!     .call(worker, CallRequest::new("echo", 1), Wait::FailFast)
//!     .await?;
//! assert_eq!(v, Value::from(1));
//! for w in pool.status().workers {
//!     println!("{:?}: {} discarded replies, stderr: {}", w.id, w.discarded_replies, w.stderr_tail);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Runtime threads on small machines
//!
//! The workers are processes that need CPU too. On a machine with few
//! cores, a tokio runtime with one worker thread per core spends much of
//! its time parking and waking its own threads: on 2 cores shared with 2
//! workers, 8 concurrent callers made about 0.85x the calls/s of a BEAM
//! pool of ports to the same worker on the default runtime and 1.04–1.16x
//! on a runtime with one worker thread, whose host CPU per call was about
//! 0.6x the default runtime's (`cargo xtask bench`, rows 9c, 9e and
//! 9k–9n). Leave the workers cores:
//!
//! ```no_run
//! let runtime = tokio::runtime::Builder::new_multi_thread()
//!     .worker_threads(1) // or TOKIO_WORKER_THREADS=1 with #[tokio::main]
//!     .enable_all()
//!     .build()?;
//! # Ok::<(), std::io::Error>(())
//! ```
#![forbid(unsafe_code)]

use std::ffi::OsStr;

pub use portpool_pool as pool;
pub use portpool_protocol as protocol;
pub use portpool_transport as transport;

pub use portpool_pool::{
    AffinityPort, Backoff, BreakerConfig, BreakerState, Checkout, CrashLoop, Heartbeat, Lease, Pool,
    PoolBuilder, PoolConfig, PoolError, PoolStatus, PoolStream, RecyclePolicy, StartMode, Wait, WorkerSlot,
    WorkerState, WorkerStatus,
};
pub use portpool_protocol::{from_value, to_value, RemoteError, Value};
pub use portpool_transport::{
    find_python, CallError, CallRequest, CrashCause, HelloCause, LaunchError, Launcher, MixedLauncher,
    ProcessLauncher, Worker, WorkerAddress, WorkerCommand, WorkerExit, WorkerId,
};
#[cfg(feature = "remote")]
pub use portpool_transport::{RemoteWorker, TcpConfigError, TcpLauncher, TcpLauncherBuilder, TlsConfig};

pub use portpool_session as session;
pub use portpool_session::{
    Affinity, Binding, MemoryStore, OnLost, Session, SessionConfig, SessionError, SessionId, SessionPool,
    SessionStore, StoreError, UnixMillis,
};
#[cfg(feature = "redis")]
pub use portpool_session::{RedisStore, RedisStoreConfig};

#[cfg(feature = "tower")]
mod service;
#[cfg(feature = "tower")]
pub use service::PoolService;

/// A [`PoolBuilder`] over Python workers running `app` (a `.py` file or
/// `module:attr`) with the portpool runtime: `python -m portpool APP`.
///
/// The interpreter is chosen by [`find_python`]: `$PORTPOOL_PYTHON`, else
/// the nearest `.venv/bin/python` up from the current directory, else
/// `python3`. For another interpreter, environment or limits, build a
/// [`WorkerCommand`] and use `Pool::builder(ProcessLauncher::new(command))`.
pub fn python(app: impl AsRef<OsStr>) -> PoolBuilder {
    Pool::builder(ProcessLauncher::new(WorkerCommand::python(app)))
}
