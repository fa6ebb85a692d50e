//! A worker process as a [`Worker`]: the handle (`mod.rs`), what it shares
//! with its reader and callers (`inner.rs`: encoding, routing replies,
//! failing every call once), the pending table (`pending.rs`), the reader
//! task (`reader.rs`) and the guards and stream that cancel on drop
//! (`stream.rs`).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::sys::signal::Signal;
use portpool_protocol::{Message, MessageCodec, Ping, Request, RequestId, SessionClose, Shutdown, Value};
use tokio::process::ChildStdin;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::FramedRead;

use super::exit::wait_exit;
use super::reaper::Group;
use super::spin::SpinningStdout;
use super::stderr::StderrLog;
use super::writer::FrameWriter;
use crate::{CallError, CallRequest, CallStream, CrashCause, Worker, WorkerExit, WorkerInfo};

mod inner;
mod pending;
mod reader;
mod stream;

use inner::Inner;
use pending::{Frame, Pending, State};
use reader::read_loop;
use stream::{CallGuard, PingGuard, ReplyStream};

/// After SIGTERM, how long a worker has before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(1);

/// What the launcher hands over once the hello arrived.
pub(crate) struct Spawned {
    pub(crate) info: WorkerInfo,
    pub(crate) max_frame: usize,
    pub(crate) max_stream_buffer: usize,
    pub(crate) stdin: ChildStdin,
    pub(crate) frames: FramedRead<SpinningStdout, MessageCodec>,
    /// Calls and streams waiting for the worker (for the spinning reader).
    pub(crate) outstanding: Arc<AtomicUsize>,
    pub(crate) exit_rx: watch::Receiver<Option<WorkerExit>>,
    pub(crate) group: Arc<Group>,
    pub(crate) stderr: Arc<StderrLog>,
}

/// A worker process: one writer task, one reader task demultiplexing replies
/// by request id, one stderr task, and a plain thread waiting for its exit.
///
/// Dropping it kills the worker's process group; the exit thread reaps the
/// process even if no tokio runtime is left (a pool dropped together with
/// its runtime leaves no zombie). If the host process dies, however it dies,
/// a per-host reaper kills every worker group it listed (see
/// [`ProcessLauncher`](super::ProcessLauncher)).
pub struct ProcessWorker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ProcessWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessWorker")
            .field("id", &self.inner.info.id)
            .field("pid", &self.inner.info.pid)
            .field("in_flight", &self.in_flight())
            .field("alive", &self.is_alive())
            .finish()
    }
}

impl ProcessWorker {
    pub(crate) fn start(spawned: Spawned) -> Self {
        let writer = Arc::new(FrameWriter::new(&spawned.stdin));
        let inner = Arc::new(Inner {
            info: spawned.info,
            max_frame: spawned.max_frame,
            max_stream_buffer: spawned.max_stream_buffer,
            state: Mutex::new(State {
                outstanding: spawned.outstanding,
                ..State::default()
            }),
            writer: writer.clone(),
            next_id: AtomicU64::new(1),
            closing: AtomicBool::new(false),
            broken: AtomicBool::new(false),
            discarded: AtomicU64::new(0),
            exit_rx: spawned.exit_rx,
            group: spawned.group,
            dead_tx: watch::channel(false).0,
            stderr: spawned.stderr,
            killed: Mutex::new(None),
            spare: Mutex::new(Vec::new()),
        });
        let stdin = spawned.stdin;
        tokio::spawn(async move { writer.run(stdin).await });
        tokio::spawn(read_loop(inner.clone(), spawned.frames));
        ProcessWorker { inner }
    }

    /// Replies and chunks that arrived for unknown or cancelled requests and
    /// were dropped.
    pub fn discarded_replies(&self) -> u64 {
        self.inner.discarded.load(Ordering::Relaxed)
    }

    /// The last lines the worker wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        self.inner.stderr.tail()
    }

    fn next_id(&self) -> RequestId {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn request_frame(&self, id: RequestId, request: CallRequest) -> Result<(String, Frame), CallError> {
        let CallRequest {
            method,
            params,
            session,
            timeout,
            trace,
        } = request;
        let message = Message::Request(Request {
            id,
            method,
            params,
            session,
            deadline_ms: timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            trace,
        });
        let frame = self.inner.encode_request(&message, request_method(&message))?;
        let Message::Request(Request { method, .. }) = message else {
            unreachable!("built as a request above")
        };
        Ok((method, frame))
    }
}

fn request_method(message: &Message) -> &str {
    match message {
        Message::Request(r) => &r.method,
        _ => "",
    }
}

#[async_trait]
impl Worker for ProcessWorker {
    fn info(&self) -> &WorkerInfo {
        &self.inner.info
    }

    fn in_flight(&self) -> usize {
        self.inner.state().in_flight
    }

    fn is_alive(&self) -> bool {
        // `broken` is set before in-flight calls are failed: a caller that
        // just got `WorkerCrashed` never sees the worker as alive.
        !self.inner.broken.load(Ordering::Acquire) && !self.inner.closing.load(Ordering::Acquire)
    }

    fn rss_bytes(&self) -> Option<u64> {
        // Not once reaped: the pid may belong to another process by then.
        self.inner.group.while_unreaped(super::procfs::rss_bytes)
    }

    fn cpu_time(&self) -> Option<Duration> {
        self.inner.group.while_unreaped(super::procfs::cpu_time)
    }

    fn discarded_replies(&self) -> u64 {
        self.inner.discarded.load(Ordering::Relaxed)
    }

    fn stderr_tail(&self) -> String {
        self.inner.stderr.tail()
    }

    fn kill(&self, cause: CrashCause, reason: &str) {
        if self.inner.broken.load(Ordering::Acquire) {
            return;
        }
        *self.inner.killed.lock().unwrap_or_else(|e| e.into_inner()) = Some((cause, reason.to_string()));
        self.inner.group.signal(Signal::SIGKILL);
    }

    async fn call(&self, request: CallRequest) -> Result<Value, CallError> {
        let id = self.next_id();
        let timeout = request.timeout;
        let (method, frame) = self.request_frame(id, request)?;
        let (reply, mut rx) = oneshot::channel();
        self.inner
            .send_registered(id, Pending::Call { method, reply }, frame)?;
        let mut guard = CallGuard {
            inner: self.inner.clone(),
            id,
            armed: true,
        };
        let outcome = match timeout {
            None => rx.await.ok(),
            Some(limit) => match tokio::time::timeout(limit, &mut rx).await {
                Ok(received) => received.ok(),
                Err(_elapsed) => {
                    guard.armed = false;
                    // Still waiting: cancel it, and name the method kept in
                    // the pending entry (no copy of it per call).
                    if let Some(Pending::Call { method, .. }) = self.inner.abandon(id) {
                        return Err(CallError::Timeout {
                            worker: self.inner.info.id,
                            method,
                            after: limit,
                        });
                    }
                    // The reply (or the worker's end) came as time ran out.
                    rx.try_recv().ok()
                }
            },
        };
        guard.armed = false;
        outcome.unwrap_or_else(|| Err(self.inner.dead_error()))
    }

    async fn stream(&self, request: CallRequest) -> Result<CallStream, CallError> {
        let id = self.next_id();
        let timeout = request.timeout;
        let (method, frame) = self.request_frame(id, request)?;
        let (items, rx) = mpsc::unbounded_channel();
        let unread = Arc::new(AtomicUsize::new(0));
        self.inner.send_registered(
            id,
            Pending::Stream {
                method: method.clone(),
                items,
                unread: unread.clone(),
            },
            frame,
        )?;
        Ok(Box::pin(ReplyStream {
            guard: CallGuard {
                inner: self.inner.clone(),
                id,
                armed: true,
            },
            items: rx,
            unread,
            deadline: timeout.map(|t| (Box::pin(tokio::time::sleep(t)), t)),
            method,
            done: false,
        }))
    }

    async fn ping(&self, timeout: Duration) -> Result<Duration, CallError> {
        let id = self.next_id();
        let frame = self.inner.encode(&Message::Ping(Ping { id }), "ping")?;
        let (reply, rx) = oneshot::channel();
        let started = Instant::now();
        self.inner
            .send_registered(id, Pending::Ping(reply), Frame::Shared(frame))?;
        let guard = PingGuard {
            inner: &self.inner,
            id,
        };
        let outcome = tokio::time::timeout(timeout, rx).await;
        drop(guard);
        match outcome {
            Ok(Ok(())) => Ok(started.elapsed()),
            Ok(Err(_)) => Err(self.inner.dead_error()),
            Err(_) => Err(CallError::Timeout {
                worker: self.inner.info.id,
                method: "ping".into(),
                after: timeout,
            }),
        }
    }

    async fn close_session(&self, session: &str) -> Result<(), CallError> {
        if let Some(dead) = &self.inner.state().dead {
            return Err(dead.clone());
        }
        let message = Message::SessionClose(SessionClose {
            session: session.to_string(),
        });
        let frame = self.inner.encode(&message, "session_close")?;
        self.inner.writer.send(frame);
        Ok(())
    }

    async fn shutdown(&self, grace: Duration) -> WorkerExit {
        let inner = &self.inner;
        if !inner.closing.swap(true, Ordering::AcqRel) && inner.state().dead.is_none() {
            inner.send_control(&Message::Shutdown(Shutdown {}));
            inner.writer.close();
        }
        let mut exited = wait_exit(&inner.exit_rx, grace).await.is_some();
        if !exited {
            tracing::debug!(worker = %inner.info.id, "worker ignored shutdown; sending SIGTERM");
            inner.group.signal(Signal::SIGTERM);
            exited = wait_exit(&inner.exit_rx, TERM_GRACE).await.is_some();
        }
        if !exited {
            tracing::debug!(worker = %inner.info.id, "worker ignored SIGTERM; sending SIGKILL");
            inner.group.signal(Signal::SIGKILL);
        }
        self.closed().await
    }

    async fn closed(&self) -> WorkerExit {
        let mut dead = self.inner.dead_tx.subscribe();
        let _ = dead.wait_for(|d| *d).await;
        let exit = *self.inner.exit_rx.borrow();
        exit.unwrap_or_default()
    }
}

impl Drop for ProcessWorker {
    fn drop(&mut self) {
        // Last resort: nobody shut it down, so nothing may outlive us.
        if !*self.inner.dead_tx.borrow() {
            self.inner.closing.store(true, Ordering::Release);
            self.inner.group.signal(Signal::SIGKILL);
        }
    }
}
