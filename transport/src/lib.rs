//! portpool transport: one external process (a child, or a listener on
//! another host) as a [`Worker`] that many callers use at once.
//!
//! This crate provides:
//! - the [`Worker`] and [`Launcher`] traits the pool schedules over
//!   (object-safe; mockall mocks behind the `mock` feature);
//! - [`ProcessLauncher`] / [`ProcessWorker`], the implementation over child
//!   processes speaking the [`portpool_protocol`] frames on stdin/stdout;
//! - with the `remote` feature (on by default): [`TcpLauncher`] /
//!   [`RemoteWorker`], the same frames over TCP, optionally TLS (rustls with
//!   the ring provider), to `python -m portpool APP --listen HOST:PORT`
//!   listeners, authenticated both ways with a shared secret (see
//!   `docs/remote.md`). Both kinds of worker run on one connection core
//!   (pending table, routing, failing every call once, writer); only what
//!   is at the other end differs.
//! - [`MixedLauncher`], several launchers (local and remote) behind one
//!   pool, each up to a quota;
//! - [`WorkerCommand`], the explicit program, arguments, environment and
//!   limits of a worker (no shell), with [`WorkerCommand::python`] for the
//!   portpool Python runtime;
//! - typed errors: [`LaunchError`] and [`CallError`], each naming the worker,
//!   its pid and the tail of its stderr where that helps.
//!
//! Guarantees of [`ProcessWorker`]:
//! - Ready means a valid `hello` arrived within the init timeout; nothing is
//!   sent before it, and any other first frame is a [`LaunchError::BadHello`].
//! - One reader task routes replies by request id; a reply for an unknown,
//!   cancelled or timed-out id is dropped and counted
//!   ([`ProcessWorker::discarded_replies`]), never given to another caller.
//! - Dropping a call's future (or a stream) sends `cancel`.
//! - End of stdout, a bad frame or the process exiting kills the process
//!   group and fails every in-flight call exactly once with
//!   [`CallError::WorkerCrashed`] (exit status or signal, stderr tail).
//! - Each worker has its own process group. `shutdown(grace)` sends
//!   `shutdown` and closes stdin, then SIGTERM, then SIGKILL to the group;
//!   dropping the worker kills the group; the runtime exits on stdin EOF, so a
//!   killed host leaves no orphans.
//! - stderr is drained continuously into `tracing` (target
//!   `portpool::worker`) and a bounded ring of lines.
//!
//! A [`RemoteWorker`] keeps the same call guarantees; its end is the
//! connection's: `kill` closes it, `shutdown` asks the listener to finish
//! this host's calls and close, a `goodbye` from the listener stops new
//! calls at once and fails what is left when the connection closes with
//! [`CrashCause::Goodbye`] and the listener's reason, a connection lost
//! without one is [`CrashCause::Disconnected`]. Errors name the endpoint.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use portpool_transport::{CallRequest, ProcessLauncher, Value, Worker, WorkerCommand, WorkerId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A Python file whose handlers are registered with `@app.handler`.
//! let app = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/apps/basic.py");
//! let launcher = ProcessLauncher::new(WorkerCommand::python(app));
//! let worker = launcher.spawn(WorkerId(1)).await?;
//!
//! let reply = worker.call(CallRequest::new("echo", "hello")).await?;
//! assert_eq!(reply, Value::from("hello"));
//!
//! worker.shutdown(Duration::from_secs(5)).await;
//! # Ok(())
//! # }
//! ```
//!
//! A remote worker (a listener started as
//! `PORTPOOL_SECRET=... python -m portpool app.py --listen 0.0.0.0:7000 --tls-cert ... --tls-key ...`):
//!
//! ```no_run
//! # #[cfg(feature = "remote")]
//! # async fn remote() -> Result<(), Box<dyn std::error::Error>> {
//! use portpool_transport::{CallRequest, Launcher, TcpLauncher, TlsConfig, WorkerId};
//!
//! let launcher = TcpLauncher::builder(std::env::var("PORTPOOL_SECRET")?)
//!     .endpoints(["10.0.0.5:7000", "10.0.0.6:7000"])
//!     .tls(TlsConfig::new(std::fs::read("ca.pem")?).server_name("workers.internal"))
//!     .build()?;
//! let worker = launcher.launch(WorkerId(1)).await?;
//! assert_eq!(worker.info().endpoint.as_deref(), Some("10.0.0.5:7000"));
//! worker.call(CallRequest::new("echo", "hi")).await?;
//! # Ok(())
//! # }
//! ```

mod conn;
mod error;
mod id;
mod mixed;
mod process;
#[cfg(feature = "remote")]
mod remote;
mod worker;

pub use error::{CallError, CrashCause, HelloCause, LaunchError};
pub use id::{WorkerAddress, WorkerExit, WorkerId};
pub use mixed::MixedLauncher;
pub use portpool_protocol::{Hello, RemoteError, Value};
pub use process::{
    find_python, ProcessLauncher, ProcessWorker, WorkerCommand, DEFAULT_INIT_TIMEOUT,
    DEFAULT_MAX_STREAM_BUFFER, DEFAULT_STDERR_TAIL_LINES,
};
#[cfg(feature = "remote")]
pub use remote::{
    RemoteWorker, TcpConfigError, TcpLauncher, TcpLauncherBuilder, TlsConfig, DEFAULT_ENDPOINT_BACKOFF,
    DEFAULT_RESOLVE_EVERY,
};
pub use worker::{CallRequest, CallStream, Launcher, Worker, WorkerInfo};
#[cfg(feature = "mock")]
pub use worker::{MockLauncher, MockWorker};
