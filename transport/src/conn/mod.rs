//! The connection core shared by every kind of worker: one byte stream
//! each way carrying the protocol's frames. What it owns: the pending
//! table (`pending.rs`), encoding requests into reused buffers, routing
//! replies by id and failing every call once (`inner.rs`), the writer with
//! its direct writes and corking (`writer.rs`), the reader task
//! (`reader.rs`), and the guards and stream that cancel on drop
//! (`stream.rs`).
//!
//! What differs between a child process and a network connection is the
//! [`Peer`]: how the end is settled (a process is killed and reaped, its
//! exit status and stderr tail reported; a connection is closed and the
//! last words its listener sent are reported), and whether a `goodbye` is
//! a valid message.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portpool_protocol::{Message, MessageCodec, Ping, Request, RequestId, SessionClose, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::FramedRead;

mod inner;
mod pending;
mod reader;
mod stream;
pub(crate) mod writer;

pub(crate) use inner::Inner;
pub(crate) use pending::Outstanding;
use pending::{Frame, Pending, State};
use reader::read_loop;
use stream::{CallGuard, PingGuard, ReplyStream};
use writer::FrameWriter;

use crate::{CallError, CallRequest, CallStream, CrashCause, WorkerInfo};

/// What is at the other end of a connection.
pub(crate) enum Peer {
    /// A child process on stdin/stdout.
    Process(crate::process::ProcessPeer),
    /// A listener reached over TCP (and TLS).
    #[cfg(feature = "remote")]
    Remote(crate::remote::RemotePeer),
}

impl Peer {
    /// Settles the end of the worker and makes the error every call still
    /// in flight fails with.
    async fn end(
        &self,
        inner: &Inner,
        cause: CrashCause,
        reason: String,
        killed: Option<(CrashCause, String)>,
    ) -> CallError {
        match self {
            Peer::Process(process) => process.end(inner, cause, reason, killed).await,
            #[cfg(feature = "remote")]
            Peer::Remote(remote) => remote.end(inner, cause, reason, killed),
        }
    }

    /// After every call failed and the writer was closed.
    async fn after_end(&self) {
        match self {
            Peer::Process(_) => {}
            #[cfg(feature = "remote")]
            Peer::Remote(remote) => remote.after_end().await,
        }
    }

    fn accepts_goodbye(&self) -> bool {
        match self {
            Peer::Process(_) => false,
            #[cfg(feature = "remote")]
            Peer::Remote(_) => true,
        }
    }

    fn goodbye(&self, reason: String) {
        match self {
            Peer::Process(_) => drop(reason),
            #[cfg(feature = "remote")]
            Peer::Remote(remote) => remote.goodbye(reason),
        }
    }
}

/// What a connection starts from.
pub(crate) struct Parts {
    pub(crate) info: WorkerInfo,
    pub(crate) max_frame: usize,
    pub(crate) max_stream_buffer: usize,
    /// Calls and streams waiting for the worker (for a spinning reader).
    pub(crate) outstanding: Arc<Outstanding>,
    pub(crate) peer: Peer,
}

/// A handle on a running connection: the calls every kind of worker makes
/// the same way.
#[derive(Clone)]
pub(crate) struct Conn {
    pub(crate) inner: Arc<Inner>,
}

impl Conn {
    /// Starts the writer task over `write` (written to directly through
    /// `writer` when it has a descriptor) and the reader task over
    /// `frames`; `ended` is the peer's own reason to stop reading.
    pub(crate) fn start<R, W>(
        parts: Parts,
        writer: FrameWriter,
        write: W,
        frames: FramedRead<R, MessageCodec>,
        ended: impl Future<Output = (CrashCause, String)> + Send + 'static,
    ) -> (Conn, tokio::task::JoinHandle<()>)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let writer = Arc::new(writer);
        let inner = Arc::new(Inner {
            info: parts.info,
            max_frame: parts.max_frame,
            max_stream_buffer: parts.max_stream_buffer,
            state: Mutex::new(State {
                outstanding: parts.outstanding,
                ..State::default()
            }),
            writer: writer.clone(),
            next_id: AtomicU64::new(1),
            closing: AtomicBool::new(false),
            broken: AtomicBool::new(false),
            discarded: AtomicU64::new(0),
            dead_tx: watch::channel(false).0,
            killed: Mutex::new(None),
            spare: Mutex::new(Vec::new()),
            peer: parts.peer,
        });
        let write_task = tokio::spawn(async move { writer.run(write).await });
        tokio::spawn(read_loop(inner.clone(), frames, ended));
        (Conn { inner }, write_task)
    }

    pub(crate) fn info(&self) -> &WorkerInfo {
        &self.inner.info
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.inner.state().in_flight
    }

    /// Neither known dead nor shutting down (a goodbye is the peer's to add).
    pub(crate) fn is_alive(&self) -> bool {
        // `broken` is set before in-flight calls are failed: a caller that
        // just got `WorkerCrashed` never sees the worker as alive.
        !self.inner.broken.load(Ordering::Acquire) && !self.inner.closing.load(Ordering::Acquire)
    }

    pub(crate) fn is_dead(&self) -> bool {
        *self.inner.dead_tx.borrow()
    }

    pub(crate) fn discarded_replies(&self) -> u64 {
        self.inner.discarded.load(Ordering::Relaxed)
    }

    /// Records why the host kills the worker; false when it is gone already.
    pub(crate) fn mark_killed(&self, cause: CrashCause, reason: &str) -> bool {
        if self.inner.broken.load(Ordering::Acquire) {
            return false;
        }
        *self.inner.killed.lock().unwrap_or_else(|e| e.into_inner()) = Some((cause, reason.to_string()));
        true
    }

    /// Marks the worker as shutting down; true the first time, while it
    /// is not dead yet (then the caller sends what shutting down means).
    pub(crate) fn begin_closing(&self) -> bool {
        !self.inner.closing.swap(true, Ordering::AcqRel) && self.inner.state().dead.is_none()
    }

    pub(crate) fn set_closing(&self) {
        self.inner.closing.store(true, Ordering::Release);
    }

    /// Sends a control message (best effort).
    pub(crate) fn send_control(&self, message: &Message) {
        self.inner.send_control(message);
    }

    /// Writes what is queued, then closes the stream towards the worker.
    pub(crate) fn close_writer(&self) {
        self.inner.writer.close();
    }

    /// Resolves once the worker is gone and every call failed.
    pub(crate) async fn dead(&self) {
        let mut dead = self.inner.dead_tx.subscribe();
        let _ = dead.wait_for(|d| *d).await;
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

    pub(crate) async fn call(&self, request: CallRequest) -> Result<Value, CallError> {
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

    pub(crate) async fn stream(&self, request: CallRequest) -> Result<CallStream, CallError> {
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

    pub(crate) async fn ping(&self, timeout: Duration) -> Result<Duration, CallError> {
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

    pub(crate) async fn close_session(&self, session: &str) -> Result<(), CallError> {
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
}

fn request_method(message: &Message) -> &str {
    match message {
        Message::Request(r) => &r.method,
        _ => "",
    }
}
