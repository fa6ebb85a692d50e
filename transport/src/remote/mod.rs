//! Workers on other hosts: a [`TcpLauncher`] connects (TCP, optionally
//! TLS, then the HMAC handshake of `docs/remote.md`) to `portpool`
//! listeners (`python -m portpool APP --listen HOST:PORT`), and each
//! connection is a [`RemoteWorker`]: the same connection core as a
//! [`ProcessWorker`](crate::ProcessWorker) (same frames, same routing,
//! same exactly-once failure), with a listener as its peer instead of a
//! child process.

mod handshake;
mod launcher;
mod tls;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use portpool_protocol::{Message, Shutdown, Value};
use tokio::sync::{watch, Notify};

pub use launcher::{
    TcpConfigError, TcpLauncher, TcpLauncherBuilder, DEFAULT_ENDPOINT_BACKOFF, DEFAULT_RESOLVE_EVERY,
};
pub use tls::TlsConfig;

use crate::conn::{Conn, Inner};
use crate::{CallError, CallRequest, CallStream, CrashCause, Worker, WorkerExit, WorkerInfo};

/// After the connection ended, how long the writer may take to flush and
/// close (TLS `close_notify`) before it is dropped.
const WRITER_CLOSE_WAIT: Duration = Duration::from_millis(500);

/// What a [`RemoteWorker`] and its connection's peer share.
struct Shared {
    endpoint: String,
    /// Set by a `goodbye`: no new calls.
    said_goodbye: AtomicBool,
    /// The goodbye's reason, or how the connection ended.
    last_words: Mutex<String>,
    /// Ends the reader (and so the connection) when notified.
    kill: Notify,
    writer_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// This connection's count in its endpoint's live connections.
    live: Mutex<Option<launcher::LiveToken>>,
    /// True once the endpoint left the resolved set.
    retired: watch::Receiver<bool>,
}

impl Shared {
    fn last_words(&self) -> String {
        self.last_words.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The listener side of a [`RemoteWorker`]'s connection.
pub(crate) struct RemotePeer {
    shared: Arc<Shared>,
}

impl RemotePeer {
    /// The connection ended: the error its calls still in flight fail with.
    pub(crate) fn end(
        &self,
        inner: &Inner,
        cause: CrashCause,
        reason: String,
        killed: Option<(CrashCause, String)>,
    ) -> CallError {
        let shared = &self.shared;
        let endpoint = Some(shared.endpoint.clone());
        let goodbye = shared.said_goodbye.load(Ordering::Acquire);
        let (cause, reason) = if let Some(killed) = killed {
            killed
        } else if goodbye {
            (
                CrashCause::Goodbye,
                format!("said goodbye: {}", shared.last_words()),
            )
        } else {
            match cause {
                CrashCause::StdoutClosed => (CrashCause::Disconnected, "connection closed".to_string()),
                CrashCause::StdinClosed | CrashCause::ReadFailed => (
                    CrashCause::Disconnected,
                    reason.replace("reading stdout", "reading the connection"),
                ),
                other => (other, reason),
            }
        };
        let error = if inner.closing.load(Ordering::Acquire) {
            inner.closed_error()
        } else {
            tracing::warn!(worker = %inner.info.id, endpoint = %shared.endpoint, "remote worker lost: {reason}");
            CallError::WorkerCrashed {
                worker: inner.info.id,
                pid: inner.info.pid,
                endpoint,
                cause,
                reason: reason.clone(),
                exit: WorkerExit::default(),
                stderr_tail: if goodbye {
                    shared.last_words()
                } else {
                    String::new()
                },
            }
        };
        if !goodbye {
            *shared.last_words.lock().unwrap_or_else(|e| e.into_inner()) = reason;
        }
        error
    }

    /// Lets the writer close the connection (bounded), then gives back the
    /// endpoint's count.
    pub(crate) async fn after_end(&self) {
        let task = self
            .shared
            .writer_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut task) = task {
            if tokio::time::timeout(WRITER_CLOSE_WAIT, &mut task).await.is_err() {
                task.abort();
            }
        }
        drop(self.shared.live.lock().unwrap_or_else(|e| e.into_inner()).take());
    }

    pub(crate) fn goodbye(&self, reason: String) {
        *self.shared.last_words.lock().unwrap_or_else(|e| e.into_inner()) = reason;
        self.shared.said_goodbye.store(true, Ordering::Release);
    }
}

/// A worker reached over TCP (optionally TLS): a connection to a
/// `portpool` listener, made by a [`TcpLauncher`].
///
/// - [`Worker::info`]: `endpoint` is `Some("HOST:PORT")`, `address` is
///   `tcp://HOST:PORT#INSTANCE`, `pid` is the pid the hello gave (a
///   process on another host).
/// - [`Worker::kill`] closes the connection (a remote process cannot be
///   signalled); the listener cancels this host's calls. In-flight calls
///   fail with [`CallError::WorkerCrashed`] carrying the cause given.
/// - [`Worker::shutdown`] sends `shutdown` (the listener finishes this
///   host's calls, says goodbye and closes), waits up to the grace for the
///   close, then drops the connection. The remote process keeps running for
///   its other hosts.
/// - A `goodbye` from the listener makes the worker not alive at once (no
///   new calls); calls in flight may still finish; those left when the
///   connection closes fail with [`CallError::WorkerCrashed`], cause
///   [`CrashCause::Goodbye`], the goodbye's reason in `reason` and
///   `stderr_tail`.
/// - When its endpoint leaves the launcher's resolved set (a scaled-down
///   deployment), the worker sends `shutdown`: no new calls, in-flight ones
///   finish, then the listener closes and the pool connects again
///   elsewhere.
/// - [`Worker::stderr_tail`] is the last words: the goodbye's reason or
///   how the connection ended. `rss_bytes`, `cpu_time` are `None`; the
///   [`WorkerExit`] of [`Worker::closed`] is unknown (default).
///
/// Dropping it closes the connection.
pub struct RemoteWorker {
    conn: Conn,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RemoteWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteWorker")
            .field("id", &self.conn.info().id)
            .field("endpoint", &self.shared.endpoint)
            .field("in_flight", &self.in_flight())
            .field("alive", &self.is_alive())
            .finish()
    }
}

impl RemoteWorker {
    /// The endpoint (`HOST:PORT`) it is connected to.
    pub fn endpoint(&self) -> &str {
        &self.shared.endpoint
    }
}

#[async_trait]
impl Worker for RemoteWorker {
    fn info(&self) -> &WorkerInfo {
        self.conn.info()
    }

    fn in_flight(&self) -> usize {
        self.conn.in_flight()
    }

    fn is_alive(&self) -> bool {
        self.conn.is_alive()
            && !self.shared.said_goodbye.load(Ordering::Acquire)
            && !*self.shared.retired.borrow()
    }

    fn rss_bytes(&self) -> Option<u64> {
        None
    }

    fn discarded_replies(&self) -> u64 {
        self.conn.discarded_replies()
    }

    fn stderr_tail(&self) -> String {
        self.shared.last_words()
    }

    fn kill(&self, cause: CrashCause, reason: &str) {
        if self.conn.mark_killed(cause, reason) {
            self.shared.kill.notify_one();
        }
    }

    async fn call(&self, request: CallRequest) -> Result<Value, CallError> {
        self.conn.call(request).await
    }

    async fn stream(&self, request: CallRequest) -> Result<CallStream, CallError> {
        self.conn.stream(request).await
    }

    async fn ping(&self, timeout: Duration) -> Result<Duration, CallError> {
        self.conn.ping(timeout).await
    }

    async fn close_session(&self, session: &str) -> Result<(), CallError> {
        self.conn.close_session(session).await
    }

    async fn shutdown(&self, grace: Duration) -> WorkerExit {
        if self.conn.begin_closing() {
            // Not followed by closing our side: the listener takes end of
            // file for "cancel everything", and shutdown lets calls finish.
            self.conn.send_control(&Message::Shutdown(Shutdown {}));
        }
        if tokio::time::timeout(grace, self.conn.dead()).await.is_err() {
            tracing::debug!(worker = %self.conn.info().id, endpoint = %self.shared.endpoint,
                "listener kept the connection open past the grace; closing it");
            self.shared.kill.notify_one();
        }
        self.closed().await
    }

    async fn closed(&self) -> WorkerExit {
        self.conn.dead().await;
        WorkerExit::default()
    }
}

impl Drop for RemoteWorker {
    fn drop(&mut self) {
        if !self.conn.is_dead() {
            self.conn.set_closing();
            self.shared.kill.notify_one();
        }
    }
}
