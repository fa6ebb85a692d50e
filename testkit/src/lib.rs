//! portpool testkit: fake workers with scripted faults, a fake worker
//! binary, and assertion helpers, for testing pools without Python.
//!
//! This crate provides:
//! - [`FakeLauncher`] / [`FakeWorker`]: in-process implementations of the
//!   transport's [`Launcher`](portpool_transport::Launcher) and
//!   [`Worker`](portpool_transport::Worker) traits. Methods are Rust closures
//!   (sync, async or streaming); a [`WorkerScript`] per launch injects faults
//!   (slow or failing launch, no hello, latency, errors, hangs, crashes after
//!   N calls or at a time, ignored pings or shutdowns, RSS); a
//!   [`FakeWorkerHandle`] shows what each worker received (calls, cancels,
//!   pings, session closes, shutdowns) and crashes or hangs it on demand.
//!   All waiting uses `tokio::time`, so tests are deterministic and instant
//!   under `tokio::time::pause()`.
//! - The `fake-worker` binary, which speaks the real wire protocol over
//!   stdio with the same faults chosen by flags ([`FakeWorkerArgs`]), for
//!   process-level tests; [`fake_worker_path`] finds it, or builds it when
//!   missing (so any crate's tests, and a downstream crate's, work on a clean
//!   checkout), and [`FakeWorkerArgs::worker_command`] gives a ready
//!   `WorkerCommand`.
//! - Process checks on `/proc` ([`process_state`], [`wait_all_gone`]): a
//!   zombie child of the test process counts as a leak, not as gone.
//! - [`CallLedger`] ("every call ended exactly once") and [`EventRecorder`]
//!   (a timestamped event log).
//! - With the `mock` feature: mockall mocks of the traits, `MockWorker` and
//!   `MockLauncher`, and `mockall` itself.
//! - [`spawn_with`]: a call (or any future) on a clone of a handle, in a
//!   task of its own: the clone-then-spawn block of concurrent tests.
//! - With the `pool` feature: `fake_pool`, a ready pool of fakes in one
//!   line, `fake_pool_builder` to set more on it first, and `spawn_call`, a
//!   pool call in a task of its own.
//! - [`FakeFleet`]: "the same remote workers" served by several fake
//!   launchers (same addresses, shared per-session state), for tests of
//!   several front ends sharing sessions.
//! - [`RedisServer`]: a throwaway `redis-server` on a free loopback port,
//!   killed on drop (skipped with a notice where it is not installed,
//!   except under CI).
//! - [`process_gone`] / [`wait_process_gone`] / [`wait_all_gone_or_kill`]:
//!   orphan checks through `/proc` for tests about real processes;
//!   [`spawn_host_helper`] / [`kill_host_helper`]: a host process of the
//!   test binary's own, to SIGKILL and see what outlives it.
//!
//! The fake worker keeps the contract of the process worker: every call
//! ends exactly once; a crash fails every in-flight and later call with
//! `CallError::WorkerCrashed`; calls after (or during) `shutdown` get
//! `CallError::WorkerClosed`, and calls still running when a shutdown's
//! grace ends are failed with it too; a call's `timeout` gives
//! `CallError::Timeout`; a handler's error is `CallError::Remote`; a dropped
//! call future is recorded as [`CallOutcome::Cancelled`].
//!
//! # Example
//!
//! Add `portpool-testkit` and `tokio` (with the `test-util` feature) to your
//! dev-dependencies; then, in a test:
//!
//! ```
//! use std::time::Duration;
//!
//! use portpool_testkit::{remote_error, CallOutcome, FakeLauncher, WorkerScript};
//! use portpool_transport::{CallError, CallRequest, Launcher, Value, WorkerId};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // In your tests: #[tokio::test(start_paused = true)] async fn ...
//! let launcher = FakeLauncher::new()
//!     .handler("echo", |params: Value| Ok(params))
//!     .handler("fail", |_| Err(remote_error("ValueError", "bad input")))
//!     .async_handler("sleep", |ms: Value| async move {
//!         tokio::time::sleep(Duration::from_millis(ms.as_u64().unwrap_or(0))).await;
//!         Ok(ms)
//!     })
//!     .max_concurrency(4)
//!     // The second worker launched (n == 1) crashes on its third call.
//!     .script(|n| match n {
//!         1 => WorkerScript::default().crash_after_calls(2),
//!         _ => WorkerScript::default(),
//!     });
//!
//! // Give a clone to the code under test (it is `Launcher`); keep one to inspect.
//! let worker = launcher.launch(WorkerId(1)).await.unwrap();
//! assert_eq!(worker.info().max_concurrency, 4);
//! assert_eq!(worker.call(CallRequest::new("echo", 7)).await.unwrap(), Value::from(7));
//! assert!(matches!(
//!     worker.call(CallRequest::new("fail", Value::Nil)).await,
//!     Err(CallError::Remote { .. })
//! ));
//!
//! // Virtual time: this "takes" 10 s and returns at once.
//! let slow = CallRequest::new("sleep", 10_000).with_timeout(Duration::from_secs(1));
//! assert!(matches!(worker.call(slow).await, Err(CallError::Timeout { .. })));
//!
//! let other = launcher.launch(WorkerId(2)).await.unwrap();
//! other.call(CallRequest::new("echo", 1)).await.unwrap();
//! other.call(CallRequest::new("echo", 2)).await.unwrap();
//! let err = other.call(CallRequest::new("echo", 3)).await.unwrap_err();
//! assert!(matches!(err, CallError::WorkerCrashed { .. }));
//! assert!(!other.is_alive());
//!
//! // What the workers saw.
//! let first = launcher.worker(WorkerId(1)).unwrap();
//! assert_eq!(first.methods(), ["echo", "fail", "sleep"]);
//! assert_eq!(first.calls()[2].outcome, Some(CallOutcome::Timeout));
//! assert_eq!(launcher.launches(), 2);
//! launcher.assert_no_calls_in_flight();
//! # }
//! ```
//!
//! Process-level tests spawn the `fake-worker` binary instead; see
//! [`fake_worker_path`] and [`FakeWorkerArgs`].
#![forbid(unsafe_code)]

mod events;
mod fake_bin;
mod handler;
mod launcher;
mod ledger;
#[cfg(feature = "pool")]
mod pool;
mod procs;
mod python_env;
mod record;
mod redis_server;
mod script;
mod spawn;
mod worker;

pub use events::{EventRecorder, Recorded};
pub use fake_bin::{
    fake_worker_path, FakeWorkerArgs, FakeWorkerError, FakeWorkerNotFound, FAKE_WORKER_ENV,
    FAKE_WORKER_NO_BUILD_ENV, FAKE_WORKER_TARGET_DIR,
};
pub use handler::{remote_error, CallContext, HandlerResult};
pub use launcher::{FakeFleet, FakeLauncher, LaunchRecord};
pub use ledger::CallLedger;
#[cfg(feature = "pool")]
pub use pool::{fake_pool, fake_pool_builder, spawn_call};
pub use procs::{
    kill_host_helper, leftover_processes, process_gone, process_info, process_state, process_tree, processes,
    spawn_host_helper, wait_all_gone, wait_all_gone_or_kill, wait_process_gone, ProcessInfo, ProcessState,
};
pub use python_env::runtime_python;
pub use record::{CallOutcome, FakeEvent, ReceivedCall};
pub use redis_server::{redis_server_path, RedisServer, RedisServerError, REDIS_SERVER_ENV};
pub use script::{Fault, WorkerScript};
pub use spawn::spawn_with;
pub use worker::{FakeWorker, FakeWorkerHandle};

#[cfg(feature = "mock")]
pub use mockall;
#[cfg(feature = "mock")]
pub use portpool_transport::{MockLauncher, MockWorker};

/// Locks a mutex, ignoring poisoning (a panicking test thread must not hide
/// the records from the assertions that follow).
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
