//! The low-latency read of a worker's stdout ([`WorkerCommand::spin`]).
//!
//! Sleeping until a reply arrives costs a wake-up: on a virtual machine
//! whose CPU halted meanwhile, 10–20 µs before the reader runs again — as
//! much as a small call itself. With a spin budget, a reader that finds the
//! pipe empty while calls are outstanding keeps trying for up to that long
//! before it sleeps, as the BEAM's schedulers do. The price is CPU: the
//! reading thread stays busy for up to the budget after each read that
//! found nothing, so it is off by default.
//!
//! [`WorkerCommand::spin`]: super::WorkerCommand::spin

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::process::ChildStdout;

use crate::conn::Outstanding;

/// How much of the read buffer one spinning read fills at most (it must be
/// zeroed first: the buffer is not initialised).
const SPIN_READ_MAX: usize = 64 * 1024;

/// A worker's stdout that, with a spin budget, polls the pipe for a while
/// before sleeping whenever `outstanding` calls wait for replies.
pub(crate) struct SpinningStdout {
    inner: ChildStdout,
    spin: Option<Duration>,
    outstanding: Arc<Outstanding>,
}

impl SpinningStdout {
    pub(crate) fn new(inner: ChildStdout, spin: Option<Duration>, outstanding: Arc<Outstanding>) -> Self {
        SpinningStdout {
            inner,
            spin: spin.filter(|d| !d.is_zero()),
            outstanding,
        }
    }

    /// Reads what the pipe holds, trying until `budget` runs out; `None`
    /// when nothing came (the caller then sleeps as
    /// usual, its wake-up already registered).
    fn spin_read(&self, buf: &mut ReadBuf<'_>, budget: Duration) -> Option<io::Result<()>> {
        let fd: BorrowedFd<'_> = self.inner.as_fd();
        let until = Instant::now() + budget;
        let room = buf.remaining().min(SPIN_READ_MAX);
        let target = buf.initialize_unfilled_to(room);
        loop {
            match nix::unistd::read(fd.as_raw_fd(), target) {
                Ok(n) => {
                    buf.advance(n);
                    return Some(Ok(()));
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => {
                    if Instant::now() >= until {
                        return None;
                    }
                    std::hint::spin_loop();
                }
                Err(e) => return Some(Err(io::Error::from(e))),
            }
        }
    }
}

impl AsyncRead for SpinningStdout {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // First as usual: data that is there is read at once, and an empty
        // pipe registers for a wake-up (so spinning never loses one).
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => {}
            ready => return ready,
        }
        debug_assert_eq!(buf.filled().len(), before);
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        // Spinning reads behind the runtime's back, but only after its
        // read found the pipe empty and registered for a wake-up: data that
        // comes later signals anew, so a wake-up is never lost (at worst one
        // is spurious, for data already read here).
        let Some(budget) = this.spin else {
            return Poll::Pending;
        };
        if this.outstanding.get() == 0 {
            // Nothing to wait for now: sleep, but be polled again when the
            // next call is sent, to spin for its reply (checked again after
            // registering, so a send in between is not missed).
            this.outstanding.wake_reader_on_send(cx.waker());
            if this.outstanding.get() == 0 {
                return Poll::Pending;
            }
        }
        match this.spin_read(buf, budget) {
            Some(done) => Poll::Ready(done),
            None => Poll::Pending,
        }
    }
}
