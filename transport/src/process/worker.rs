//! A worker process as a [`Worker`]: the connection core (`crate::conn`:
//! pending table, encoding, routing replies, failing every call once,
//! writer, reader) over its stdin and stdout, and the process as its peer:
//! process group signals, exit status, stderr ring, reaping.

use crate::conn::Outstanding;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::Signal;
use portpool_protocol::{Message, MessageCodec, Shutdown, Value};
use tokio::process::ChildStdin;
use tokio::sync::watch;
use tokio_util::codec::FramedRead;

use super::exit::{reap, wait_exit, REAP_WAIT, STDERR_WAIT};
use super::reaper::Group;
use super::spin::SpinningStdout;
use super::stderr::StderrLog;
use crate::conn::writer::FrameWriter;
use crate::conn::{Conn, Inner, Parts, Peer};
use crate::{CallError, CallRequest, CallStream, CrashCause, Worker, WorkerExit, WorkerInfo};

/// After SIGTERM, how long a worker has before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(1);

/// After the process exited, how long its stdout may stay open (frames
/// still in the pipe are read meanwhile) before we stop waiting for EOF: a
/// descendant that left the process group can hold the pipe open forever.
const STDOUT_AFTER_EXIT: Duration = Duration::from_secs(1);

/// When stdout closes or stdin breaks, how long to wait for an exit status
/// before deciding the process is still running (and killing it): a process
/// that died closes both pipes a moment before it is reaped.
const EXIT_SEEN_WITHIN: Duration = Duration::from_millis(500);

/// What the launcher hands over once the hello arrived.
pub(crate) struct Spawned {
    pub(crate) info: WorkerInfo,
    pub(crate) max_frame: usize,
    pub(crate) max_stream_buffer: usize,
    pub(crate) stdin: ChildStdin,
    pub(crate) frames: FramedRead<SpinningStdout, MessageCodec>,
    /// Calls and streams waiting for the worker (for the spinning reader).
    pub(crate) outstanding: Arc<Outstanding>,
    pub(crate) exit_rx: watch::Receiver<Option<WorkerExit>>,
    pub(crate) group: Arc<Group>,
    pub(crate) stderr: Arc<StderrLog>,
}

/// The process side of a [`ProcessWorker`]'s connection.
pub(crate) struct ProcessPeer {
    exit_rx: watch::Receiver<Option<WorkerExit>>,
    /// The process group, signalled only while its leader is unreaped.
    group: Arc<Group>,
    stderr: Arc<StderrLog>,
}

impl ProcessPeer {
    /// The worker is gone: kill what is left, learn how it ended, and make
    /// the error its calls fail with.
    ///
    /// The cause reported is, in order: the one given to [`Worker::kill`] if
    /// the host killed it; [`CrashCause::Exited`] if its stdout closed or its
    /// stdin broke because the process ended by itself (its exit status
    /// arrives within [`EXIT_SEEN_WITHIN`]); else the cause observed.
    pub(crate) async fn end(
        &self,
        inner: &Inner,
        cause: CrashCause,
        reason: String,
        killed: Option<(CrashCause, String)>,
    ) -> CallError {
        let pid = inner.info.pid;
        let group = &self.group;
        let kill_group = || group.signal(Signal::SIGKILL);
        let closing = inner.closing.load(std::sync::atomic::Ordering::Acquire);
        let (cause, reason, exit) = if let Some((cause, reason)) = killed {
            kill_group();
            (cause, reason, reap(&self.group, self.exit_rx.clone()).await)
        } else if closing {
            // A requested shutdown: give it the time `shutdown` is giving it.
            let exit = match wait_exit(&self.exit_rx, REAP_WAIT).await {
                Some(exit) => exit,
                None => reap(&self.group, self.exit_rx.clone()).await,
            };
            (cause, reason, exit)
        } else {
            let ended = match cause {
                CrashCause::StdoutClosed | CrashCause::StdinClosed => {
                    wait_exit(&self.exit_rx, EXIT_SEEN_WITHIN).await
                }
                _ => None,
            };
            kill_group();
            match ended {
                Some(exit) => (CrashCause::Exited, format!("exited ({reason})"), exit),
                None => (cause, reason, reap(&self.group, self.exit_rx.clone()).await),
            }
        };
        self.stderr.wait_drained(STDERR_WAIT).await;
        if inner.closing.load(std::sync::atomic::Ordering::Acquire) {
            inner.closed_error()
        } else {
            tracing::warn!(worker = %inner.info.id, pid, %exit, "worker crashed: {reason}");
            CallError::WorkerCrashed {
                worker: inner.info.id,
                pid,
                endpoint: None,
                cause,
                reason,
                exit,
                stderr_tail: self.stderr.tail(),
            }
        }
    }
}

/// A worker process: the connection core over its stdin and stdout (a
/// writer written to directly by callers, one reader task demultiplexing
/// replies by request id), one stderr task, and a plain thread waiting for
/// its exit.
///
/// Dropping it kills the worker's process group; the exit thread reaps the
/// process even if no tokio runtime is left (a pool dropped together with
/// its runtime leaves no zombie). If the host process dies, however it dies,
/// a per-host reaper kills every worker group it listed (see
/// [`ProcessLauncher`](super::ProcessLauncher)).
pub struct ProcessWorker {
    conn: Conn,
    exit_rx: watch::Receiver<Option<WorkerExit>>,
    group: Arc<Group>,
    stderr: Arc<StderrLog>,
}

impl std::fmt::Debug for ProcessWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessWorker")
            .field("id", &self.conn.info().id)
            .field("pid", &self.conn.info().pid)
            .field("in_flight", &self.in_flight())
            .field("alive", &self.is_alive())
            .finish()
    }
}

impl ProcessWorker {
    pub(crate) fn start(spawned: Spawned) -> Self {
        let writer = FrameWriter::new(Some(std::os::fd::AsFd::as_fd(&spawned.stdin)), "its stdin");
        let ended = {
            let mut exit_rx = spawned.exit_rx.clone();
            async move {
                let _ = exit_rx.wait_for(Option::is_some).await;
                tokio::time::sleep(STDOUT_AFTER_EXIT).await;
                (
                    CrashCause::StdoutHeldOpen,
                    "exited, but its stdout stayed open (held by a descendant)".to_string(),
                )
            }
        };
        let peer = ProcessPeer {
            exit_rx: spawned.exit_rx.clone(),
            group: spawned.group.clone(),
            stderr: spawned.stderr.clone(),
        };
        let (conn, _writer_task) = Conn::start(
            Parts {
                info: spawned.info,
                max_frame: spawned.max_frame,
                max_stream_buffer: spawned.max_stream_buffer,
                outstanding: spawned.outstanding,
                peer: Peer::Process(peer),
            },
            writer,
            spawned.stdin,
            spawned.frames,
            ended,
        );
        ProcessWorker {
            conn,
            exit_rx: spawned.exit_rx,
            group: spawned.group,
            stderr: spawned.stderr,
        }
    }

    /// Replies and chunks that arrived for unknown or cancelled requests and
    /// were dropped.
    pub fn discarded_replies(&self) -> u64 {
        self.conn.discarded_replies()
    }

    /// The last lines the worker wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        self.stderr.tail()
    }
}

#[async_trait]
impl Worker for ProcessWorker {
    fn info(&self) -> &WorkerInfo {
        self.conn.info()
    }

    fn in_flight(&self) -> usize {
        self.conn.in_flight()
    }

    fn is_alive(&self) -> bool {
        self.conn.is_alive()
    }

    fn rss_bytes(&self) -> Option<u64> {
        // Not once reaped: the pid may belong to another process by then.
        self.group.while_unreaped(super::procfs::rss_bytes)
    }

    fn cpu_time(&self) -> Option<Duration> {
        self.group.while_unreaped(super::procfs::cpu_time)
    }

    fn discarded_replies(&self) -> u64 {
        self.conn.discarded_replies()
    }

    fn stderr_tail(&self) -> String {
        self.stderr.tail()
    }

    fn kill(&self, cause: CrashCause, reason: &str) {
        if self.conn.mark_killed(cause, reason) {
            self.group.signal(Signal::SIGKILL);
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
            self.conn.send_control(&Message::Shutdown(Shutdown {}));
            self.conn.close_writer();
        }
        let id = self.conn.info().id;
        let mut exited = wait_exit(&self.exit_rx, grace).await.is_some();
        if !exited {
            tracing::debug!(worker = %id, "worker ignored shutdown; sending SIGTERM");
            self.group.signal(Signal::SIGTERM);
            exited = wait_exit(&self.exit_rx, TERM_GRACE).await.is_some();
        }
        if !exited {
            tracing::debug!(worker = %id, "worker ignored SIGTERM; sending SIGKILL");
            self.group.signal(Signal::SIGKILL);
        }
        self.closed().await
    }

    async fn closed(&self) -> WorkerExit {
        self.conn.dead().await;
        let exit = *self.exit_rx.borrow();
        exit.unwrap_or_default()
    }
}

impl Drop for ProcessWorker {
    fn drop(&mut self) {
        // Last resort: nobody shut it down, so nothing may outlive us.
        if !self.conn.is_dead() {
            self.conn.set_closing();
            self.group.signal(Signal::SIGKILL);
        }
    }
}
