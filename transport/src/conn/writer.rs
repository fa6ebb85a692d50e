//! Writing frames to a worker (its stdin, or a connection): directly from
//! the caller when the pipe or socket is free (no task hop on the hot path),
//! through a writer task when it is not (or when the stream cannot be
//! written directly: TLS). Frames never interleave and keep their order
//! either way.
//!
//! Under load a frame may be *corked*: when the worker is busy with other
//! calls, a small request would only wait in the pipe, so it goes to the
//! writer task, which first yields once (letting every task that is ready
//! now queue its frame too) and then writes them all in one system call
//! instead of one each.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, Notify};

pub(crate) struct FrameWriter {
    state: Mutex<State>,
    wake: Notify,
    /// Set once a write failed (the worker closed its stdin, or died): what
    /// went wrong, for the reader to fail the worker with at once.
    failure: watch::Sender<Option<String>>,
    /// What is written to, for messages: "its stdin", "the connection".
    what: &'static str,
    /// The direct descriptor is a socket: written with `MSG_NOSIGNAL`, so
    /// a peer that went away is an error, never a SIGPIPE (whatever the
    /// embedding program does with that signal).
    socket: bool,
}

struct State {
    /// Frames (or the rest of one) for the writer task, in order.
    queue: VecDeque<Bytes>,
    /// The writer task owns the pipe: everyone else queues behind it.
    task_busy: bool,
    /// The writer task was handed a corked frame: it yields once before
    /// writing, so frames queued meanwhile go out in the same write.
    corked: bool,
    /// A duplicate of the pipe for direct, non-blocking writes; dropped on
    /// close so the worker sees end of file.
    direct: Option<OwnedFd>,
    closed: bool,
}

impl FrameWriter {
    /// A writer for a stream that [`FrameWriter::run`] then owns; `direct`
    /// is its file descriptor when frames may be written to it directly
    /// (a pipe or a plain socket; not TLS), `what` names it in errors.
    pub(crate) fn new(direct: Option<BorrowedFd<'_>>, what: &'static str) -> Self {
        // Direct writes only on a non-blocking descriptor: they must never
        // block the calling thread.
        let direct = direct.and_then(|fd| fd.try_clone_to_owned().ok()).filter(|fd| {
            fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)
                .map(|flags| OFlag::from_bits_truncate(flags).contains(OFlag::O_NONBLOCK))
                .unwrap_or(false)
        });
        let socket = direct.as_ref().is_some_and(|fd| {
            nix::sys::stat::fstat(fd.as_raw_fd())
                .map(|st| {
                    nix::sys::stat::SFlag::from_bits_truncate(st.st_mode) & nix::sys::stat::SFlag::S_IFMT
                        == nix::sys::stat::SFlag::S_IFSOCK
                })
                .unwrap_or(false)
        });
        FrameWriter {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                task_busy: false,
                corked: false,
                direct,
                closed: false,
            }),
            wake: Notify::new(),
            failure: watch::channel(None).0,
            what,
            socket,
        }
    }

    /// Resolves, with what went wrong, once a write to the pipe failed.
    /// Never resolves for a writer that was closed without a failure.
    pub(crate) async fn failed(&self) -> String {
        let mut failure = self.failure.subscribe();
        let seen = failure
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|failure| failure.clone());
        match seen {
            Some(failure) => failure,
            // The sender lives as long as `self`: unreachable, but never
            // report a failure that did not happen.
            None => std::future::pending().await,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends one whole frame. Never blocks, never awaits.
    pub(crate) fn send(&self, frame: Bytes) {
        let mut st = self.state();
        if st.closed {
            return;
        }
        let mut rest = frame;
        if !st.task_busy && st.queue.is_empty() {
            if let Some(fd) = &st.direct {
                let written = write_now(fd, &rest, self.socket);
                if written == rest.len() {
                    return;
                }
                rest = rest.slice(written..);
            }
        }
        st.queue.push_back(rest);
        self.hand_to_task(st);
    }

    /// Sends one whole frame held in a reusable buffer. When the pipe took
    /// all of it at once the buffer comes back, for the next frame; else
    /// the buffer itself is queued for the writer task (no copy).
    ///
    /// With `cork` (the worker is busy with other calls, so the frame would
    /// wait in the pipe anyway) a small frame is copied to the writer task's
    /// queue, to go out with the others queued in this scheduler turn.
    pub(crate) fn send_buffer(&self, frame: Vec<u8>, cork: bool) -> Option<Vec<u8>> {
        let mut st = self.state();
        if st.closed {
            return Some(frame);
        }
        if cork && frame.len() <= CORK_MAX {
            st.queue.push_back(Bytes::copy_from_slice(&frame));
            if !st.task_busy {
                st.corked = true;
                self.hand_to_task(st);
            }
            return Some(frame);
        }
        let mut written = 0;
        if !st.task_busy && st.queue.is_empty() {
            if let Some(fd) = &st.direct {
                written = write_now(fd, &frame, self.socket);
                if written == frame.len() {
                    return Some(frame);
                }
            }
        }
        st.queue.push_back(Bytes::from(frame).slice(written..));
        self.hand_to_task(st);
        None
    }

    /// Writes what is queued, then closes stdin: the worker sees end of file.
    pub(crate) fn close(&self) {
        let mut st = self.state();
        st.closed = true;
        st.direct = None;
        self.hand_to_task(st);
    }

    fn hand_to_task(&self, mut st: MutexGuard<'_, State>) {
        st.task_busy = true;
        drop(st);
        self.wake.notify_one();
    }

    /// What the writer task does next.
    fn next(&self) -> Next {
        let mut st = self.state();
        if std::mem::take(&mut st.corked) {
            Next::Gather
        } else if let Some(frame) = st.queue.pop_front() {
            Next::Write(frame)
        } else if st.closed {
            Next::Close
        } else {
            Next::Idle
        }
    }

    /// Gives the pipe back to direct writers unless more arrived meanwhile.
    /// Called with nothing buffered, so a direct write cannot overtake.
    fn release(&self) -> bool {
        let mut st = self.state();
        if st.queue.is_empty() && !st.closed {
            st.task_busy = false;
            true
        } else {
            false
        }
    }

    /// A write failed: drop everything queued, refuse further frames, and
    /// tell whoever waits in [`FrameWriter::failed`].
    fn broken(&self, error: &std::io::Error) {
        let mut st = self.state();
        st.closed = true;
        st.direct = None;
        st.queue.clear();
        drop(st);
        self.failure
            .send_replace(Some(format!("writing to {} failed: {error}", self.what)));
    }
}

enum Next {
    /// Yield once first: frames of tasks ready now join this write.
    Gather,
    Write(Bytes),
    Idle,
    Close,
}

/// The largest frame that is corked (copied to the writer's queue); larger
/// ones are written directly or handed over without a copy.
const CORK_MAX: usize = 16 * 1024;

/// Writes as much of `buf` as the pipe takes now; returns how much.
fn write_now(fd: &OwnedFd, buf: &[u8], socket: bool) -> usize {
    let mut written = 0;
    while written < buf.len() {
        let rest = &buf[written..];
        let wrote = if socket {
            nix::sys::socket::send(fd.as_raw_fd(), rest, nix::sys::socket::MsgFlags::MSG_NOSIGNAL)
        } else {
            nix::unistd::write(fd, rest)
        };
        match wrote {
            Ok(n) => written += n,
            Err(Errno::EINTR) => continue,
            // Full (EAGAIN) or broken (EPIPE): the task takes over; it
            // waits for room, or sees the error and stops.
            Err(_) => break,
        }
    }
    written
}

impl FrameWriter {
    /// The writer task: drains the queue whenever a sender could not write
    /// directly, flushing once per batch.
    pub(crate) async fn run<W: AsyncWrite + Unpin>(&self, stdin: W) {
        let mut stdin = tokio::io::BufWriter::with_capacity(64 * 1024, stdin);
        loop {
            match self.next() {
                Next::Gather => tokio::task::yield_now().await,
                Next::Write(frame) => {
                    if let Err(e) = stdin.write_all(&frame).await {
                        self.broken(&e);
                        return;
                    }
                }
                Next::Idle => {
                    // Flush before handing the pipe back: nothing of ours may
                    // still be buffered when a direct write goes out.
                    if let Err(e) = stdin.flush().await {
                        self.broken(&e);
                        return;
                    }
                    if self.release() {
                        self.wake.notified().await;
                    }
                }
                Next::Close => {
                    let _ = stdin.flush().await;
                    let _ = stdin.shutdown().await;
                    return;
                }
            }
        }
    }
}
