use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use nix::sys::signal::Signal;
use portpool_protocol::{
    encode_frame, encode_frame_into, Cancel, Message, MessageCodec, Ping, ProtocolError, Request, RequestId,
    SessionClose, Shutdown, Value,
};
use tokio::process::ChildStdin;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::FramedRead;

use super::launcher::{reap, wait_exit, REAP_WAIT, STDERR_WAIT};
use super::reaper::Group;
use super::spin::SpinningStdout;
use super::stderr::StderrLog;
use super::writer::FrameWriter;
use crate::{CallError, CallRequest, CallStream, CrashCause, Worker, WorkerExit, WorkerInfo};

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

enum Pending {
    Call {
        method: String,
        reply: oneshot::Sender<Result<Value, CallError>>,
    },
    Stream {
        method: String,
        items: mpsc::UnboundedSender<Result<Value, CallError>>,
        /// Chunks sent and not yet read by the stream's consumer.
        unread: Arc<AtomicUsize>,
    },
    Ping(oneshot::Sender<()>),
}

/// An encoded frame on its way to the writer.
enum Frame {
    /// Shared bytes (control frames).
    Shared(Bytes),
    /// A request in a buffer that may come back for reuse.
    Buffer(Vec<u8>),
}

#[derive(Default)]
struct State {
    pending: HashMap<RequestId, Pending>,
    /// Calls and streams among `pending` (pings excluded).
    in_flight: usize,
    /// `in_flight`, readable without the lock (by the spinning reader).
    outstanding: Arc<AtomicUsize>,
    /// Set once the worker is gone: every later call fails with it.
    dead: Option<CallError>,
}

impl State {
    fn insert(&mut self, id: RequestId, pending: Pending) {
        if !matches!(pending, Pending::Ping(_)) {
            self.in_flight += 1;
            self.outstanding.store(self.in_flight, Ordering::Relaxed);
        }
        self.pending.insert(id, pending);
    }

    fn remove(&mut self, id: RequestId) -> Option<Pending> {
        let removed = self.pending.remove(&id);
        if matches!(removed, Some(Pending::Call { .. } | Pending::Stream { .. })) {
            self.in_flight -= 1;
            self.outstanding.store(self.in_flight, Ordering::Relaxed);
        }
        removed
    }
}

struct Inner {
    info: WorkerInfo,
    max_frame: usize,
    max_stream_buffer: usize,
    state: Mutex<State>,
    writer: Arc<FrameWriter>,
    next_id: AtomicU64,
    closing: AtomicBool,
    /// Set as soon as the reader knows the worker is gone.
    broken: AtomicBool,
    discarded: AtomicU64,
    exit_rx: watch::Receiver<Option<WorkerExit>>,
    /// The process group, signalled only while its leader is unreaped.
    group: Arc<Group>,
    dead_tx: watch::Sender<bool>,
    stderr: Arc<StderrLog>,
    /// Set by [`Worker::kill`]: the cause the reader reports instead of the
    /// end of stdout that the kill brings about.
    killed: Mutex<Option<(CrashCause, String)>>,
    /// A frame buffer kept from the last request the pipe took at once, so
    /// the next request is encoded without allocating (and, when large,
    /// without faulting its pages in again). Kept only up to
    /// [`SPARE_BUFFER_MAX`].
    spare: Mutex<Vec<u8>>,
}

/// The largest request buffer a worker keeps for reuse (see `Inner::spare`).
const SPARE_BUFFER_MAX: usize = 2 * 1024 * 1024;

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn closed_error(&self) -> CallError {
        CallError::WorkerClosed {
            worker: self.info.id,
            pid: self.info.pid,
        }
    }

    /// Registers a pending entry and sends its frame, atomically with respect
    /// to the worker dying: either both happen or the death error returns.
    fn send_registered(&self, id: RequestId, pending: Pending, frame: Frame) -> Result<(), CallError> {
        let mut state = self.state();
        let refused = if let Some(dead) = &state.dead {
            Some(dead.clone())
        } else if self.closing.load(Ordering::Acquire) {
            Some(self.closed_error())
        } else {
            None
        };
        if let Some(error) = refused {
            drop(state);
            self.give_back(frame);
            return Err(error);
        }
        // Other calls running: the worker is busy, so this frame may wait
        // for the writer's next batch (see `FrameWriter::send_buffer`).
        let cork = state.in_flight > 0;
        state.insert(id, pending);
        // The writer outlives every registration (it stops only after the
        // reader failed them all), so a send error cannot strand this entry.
        match frame {
            Frame::Shared(frame) => self.writer.send(frame),
            Frame::Buffer(frame) => {
                let back = self.writer.send_buffer(frame, cork);
                drop(state);
                if let Some(buffer) = back {
                    self.give_back(Frame::Buffer(buffer));
                }
            }
        }
        Ok(())
    }

    /// Encodes a request into the spare buffer (or a new one).
    fn encode_request(&self, message: &Message, method: &str) -> Result<Frame, CallError> {
        let mut buffer = std::mem::take(&mut *self.spare.lock().unwrap_or_else(|e| e.into_inner()));
        match encode_frame_into(message, self.max_frame, &mut buffer) {
            Ok(()) => Ok(Frame::Buffer(buffer)),
            Err(e) => {
                self.give_back(Frame::Buffer(buffer));
                Err(CallError::InvalidRequest {
                    worker: self.info.id,
                    method: method.to_string(),
                    reason: e.to_string(),
                })
            }
        }
    }

    /// Keeps a frame buffer for the next request, unless it is too large.
    fn give_back(&self, frame: Frame) {
        if let Frame::Buffer(mut buffer) = frame {
            if buffer.capacity() <= SPARE_BUFFER_MAX {
                buffer.clear();
                let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
                if buffer.capacity() > spare.capacity() {
                    *spare = buffer;
                }
            }
        }
    }

    fn encode(&self, message: &Message, method: &str) -> Result<Bytes, CallError> {
        encode_frame(message, self.max_frame)
            .map(Bytes::from)
            .map_err(|e| CallError::InvalidRequest {
                worker: self.info.id,
                method: method.to_string(),
                reason: e.to_string(),
            })
    }

    /// Forgets a call the caller gave up on and tells the worker.
    /// Returns the pending entry, if the call was still waiting.
    fn abandon(&self, id: RequestId) -> Option<Pending> {
        let removed = self.state().remove(id);
        if removed.is_some() {
            if let Ok(frame) = encode_frame(&Message::Cancel(Cancel { id }), self.max_frame) {
                self.writer.send(Bytes::from(frame));
            }
        }
        removed
    }

    fn send_control(&self, message: &Message) {
        if let Ok(frame) = encode_frame(message, self.max_frame) {
            self.writer.send(Bytes::from(frame));
        }
    }

    fn discard(&self, what: &str, id: RequestId) {
        self.discarded.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("portpool_transport_discarded_replies_total").increment(1);
        tracing::debug!(worker = %self.info.id, id, "discarded {what} for an unknown or cancelled request");
    }

    /// Routes one frame from the worker. Returns a protocol violation, if any.
    fn dispatch(&self, message: Message) -> Result<(), String> {
        match message {
            Message::Response(response) => {
                let removed = self.state().remove(response.id);
                match removed {
                    Some(Pending::Call { method, reply }) => {
                        let outcome = response.outcome.map_err(|error| CallError::Remote {
                            worker: self.info.id,
                            method,
                            error: Box::new(error),
                        });
                        // The caller may have just gone; the reply is then moot.
                        let _ = reply.send(outcome);
                    }
                    Some(Pending::Stream { method, items, .. }) => {
                        if let Err(error) = response.outcome {
                            let _ = items.send(Err(CallError::Remote {
                                worker: self.info.id,
                                method,
                                error: Box::new(error),
                            }));
                        }
                        // Dropping `items` ends the stream.
                    }
                    Some(Pending::Ping(_)) | None => self.discard("response", response.id),
                }
            }
            Message::Chunk(chunk) => {
                let mut state = self.state();
                match state.pending.get(&chunk.id) {
                    Some(Pending::Stream { items, unread, .. }) => {
                        if unread.fetch_add(1, Ordering::AcqRel) < self.max_stream_buffer {
                            let _ = items.send(Ok(chunk.data));
                        } else if let Some(Pending::Stream { items, method, .. }) = state.remove(chunk.id) {
                            // The consumer fell behind: end the stream and
                            // cancel the call rather than buffer without bound.
                            drop(state);
                            let _ = items.send(Err(CallError::StreamOverflow {
                                worker: self.info.id,
                                method,
                                limit: self.max_stream_buffer,
                            }));
                            self.send_control(&Message::Cancel(Cancel { id: chunk.id }));
                        }
                    }
                    _ => {
                        drop(state);
                        self.discard("chunk", chunk.id);
                    }
                }
            }
            Message::Pong(pong) => {
                // Look and take under one lock: a pong carrying a call's id
                // must not touch that call's entry.
                let mut state = self.state();
                let reply = match state.pending.get(&pong.id) {
                    Some(Pending::Ping(_)) => match state.remove(pong.id) {
                        Some(Pending::Ping(reply)) => Some(reply),
                        _ => None,
                    },
                    _ => None,
                };
                drop(state);
                match reply {
                    Some(reply) => {
                        let _ = reply.send(());
                    }
                    None => self.discard("pong", pong.id),
                }
            }
            other => return Err(format!("unexpected {} message from the worker", other.kind())),
        }
        Ok(())
    }

    /// The worker is gone: kill what is left, learn how it ended, and fail
    /// every pending call exactly once.
    ///
    /// The cause reported is, in order: the one given to [`Worker::kill`] if
    /// the host killed it; [`CrashCause::Exited`] if its stdout closed or its
    /// stdin broke because the process ended by itself (its exit status
    /// arrives within [`EXIT_SEEN_WITHIN`]); else the cause observed.
    async fn fail(&self, cause: CrashCause, reason: String) {
        let killed = self.killed.lock().unwrap_or_else(|e| e.into_inner()).take();
        // Known gone from now on, before the (bounded) reaping below.
        self.broken.store(true, Ordering::Release);
        let pid = self.info.pid;
        let group = &self.group;
        let kill_group = || group.signal(Signal::SIGKILL);
        let (cause, reason, exit) = if let Some((cause, reason)) = killed {
            kill_group();
            (cause, reason, reap(&self.group, self.exit_rx.clone()).await)
        } else if self.closing.load(Ordering::Acquire) {
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
        let error = if self.closing.load(Ordering::Acquire) {
            self.closed_error()
        } else {
            tracing::warn!(worker = %self.info.id, pid, %exit, "worker crashed: {reason}");
            CallError::WorkerCrashed {
                worker: self.info.id,
                pid,
                cause,
                reason,
                exit,
                stderr_tail: self.stderr.tail(),
            }
        };
        let pending = {
            let mut state = self.state();
            state.dead = Some(error.clone());
            state.in_flight = 0;
            state.outstanding.store(0, Ordering::Relaxed);
            std::mem::take(&mut state.pending)
        };
        for (_, entry) in pending {
            match entry {
                Pending::Call { reply, .. } => {
                    let _ = reply.send(Err(error.clone()));
                }
                Pending::Stream { items, .. } => {
                    let _ = items.send(Err(error.clone()));
                }
                Pending::Ping(_) => {}
            }
        }
        self.writer.close();
        self.dead_tx.send_replace(true);
    }

    fn dead_error(&self) -> CallError {
        self.state().dead.clone().unwrap_or_else(|| self.closed_error())
    }
}

/// When stdout closes or stdin breaks, how long to wait for an exit status
/// before deciding the process is still running (and killing it): a process
/// that died closes both pipes a moment before it is reaped.
const EXIT_SEEN_WITHIN: Duration = Duration::from_millis(500);

/// After the process exited, how long its stdout may stay open (frames
/// still in the pipe are read meanwhile) before we stop waiting for EOF: a
/// descendant that left the process group can hold the pipe open forever.
const STDOUT_AFTER_EXIT: Duration = Duration::from_secs(1);

async fn read_loop(inner: Arc<Inner>, mut frames: FramedRead<SpinningStdout, MessageCodec>) {
    let exited = {
        let exit_rx = inner.exit_rx.clone();
        async move {
            let mut exit_rx = exit_rx;
            let _ = exit_rx.wait_for(Option::is_some).await;
            tokio::time::sleep(STDOUT_AFTER_EXIT).await;
        }
    };
    tokio::pin!(exited);
    let writer = inner.writer.clone();
    let stdin_broken = writer.failed();
    tokio::pin!(stdin_broken);
    let (cause, reason) = loop {
        let next = tokio::select! {
            biased;
            next = frames.next() => next,
            () = &mut exited => break (
                CrashCause::StdoutHeldOpen,
                "exited, but its stdout stayed open (held by a descendant)".to_string(),
            ),
            failure = &mut stdin_broken => break (CrashCause::StdinClosed, failure),
        };
        match next {
            Some(Ok(message)) => {
                if let Err(violation) = inner.dispatch(message) {
                    break (
                        CrashCause::UnexpectedMessage,
                        format!("protocol violation: {violation}"),
                    );
                }
            }
            Some(Err(ProtocolError::Io(e))) => {
                break (CrashCause::ReadFailed, format!("reading stdout failed: {e}"))
            }
            Some(Err(e @ ProtocolError::FrameTooLarge { .. })) => {
                break (CrashCause::FrameTooLarge, format!("protocol violation: {e}"))
            }
            Some(Err(e @ ProtocolError::TooDeep { .. })) => {
                break (CrashCause::TooDeep, format!("protocol violation: {e}"))
            }
            Some(Err(e)) => break (CrashCause::Malformed, format!("protocol violation: {e}")),
            None => break (CrashCause::StdoutClosed, "stdout closed".to_string()),
        }
    };
    inner.fail(cause, reason).await;
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

/// Cancels a call when its future or stream is dropped before the end.
struct CallGuard {
    inner: Arc<Inner>,
    id: RequestId,
    armed: bool,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.armed {
            self.inner.abandon(self.id);
        }
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

struct PingGuard<'a> {
    inner: &'a Inner,
    id: RequestId,
}

impl Drop for PingGuard<'_> {
    fn drop(&mut self) {
        self.inner.state().remove(self.id);
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

/// The items of a streaming call; cancels the call when dropped early.
struct ReplyStream {
    guard: CallGuard,
    items: mpsc::UnboundedReceiver<Result<Value, CallError>>,
    unread: Arc<AtomicUsize>,
    deadline: Option<(Pin<Box<tokio::time::Sleep>>, Duration)>,
    method: String,
    done: bool,
}

impl Stream for ReplyStream {
    type Item = Result<Value, CallError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match this.items.poll_recv(cx) {
            Poll::Ready(Some(Ok(item))) => {
                this.unread.fetch_sub(1, Ordering::AcqRel);
                return Poll::Ready(Some(Ok(item)));
            }
            Poll::Ready(Some(Err(error))) => {
                this.done = true;
                this.guard.armed = false;
                return Poll::Ready(Some(Err(error)));
            }
            Poll::Ready(None) => {
                this.done = true;
                this.guard.armed = false;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        if let Some((sleep, after)) = &mut this.deadline {
            if std::future::Future::poll(sleep.as_mut(), cx).is_ready() {
                this.done = true;
                // Still armed: abandon now, so the cancel goes out at once.
                this.guard.inner.abandon(this.guard.id);
                this.guard.armed = false;
                return Poll::Ready(Some(Err(CallError::Timeout {
                    worker: this.guard.inner.info.id,
                    method: this.method.clone(),
                    after: *after,
                })));
            }
        }
        Poll::Pending
    }
}
