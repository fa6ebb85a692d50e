//! The table of calls, streams and pings waiting for the worker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::task::AtomicWaker;
use portpool_protocol::{RequestId, Value};
use tokio::sync::{mpsc, oneshot};

use crate::CallError;

pub(crate) enum Pending {
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
pub(crate) enum Frame {
    /// Shared bytes (control frames).
    Shared(Bytes),
    /// A request in a buffer that may come back for reuse.
    Buffer(Vec<u8>),
}

/// How many calls and streams wait for the worker, readable without the
/// connection's lock, and the reader to wake when it goes from 0 to 1.
///
/// For the low-latency mode's spinning reader (`process/spin.rs`): it
/// spins only while calls are outstanding, so once the last reply is read
/// it sleeps; a sequential caller then sends its next request from another
/// task, and without a wake-up nobody would be polling (spinning) when the
/// reply comes: the reader would pay the very wake-up it exists to avoid.
#[derive(Default)]
pub(crate) struct Outstanding {
    count: AtomicUsize,
    /// Registered only by a spinning reader that found nothing outstanding.
    reader: AtomicWaker,
}

impl Outstanding {
    pub(crate) fn get(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    fn set(&self, n: usize) {
        let before = self.count.swap(n, Ordering::AcqRel);
        if before == 0 && n > 0 {
            self.reader.wake();
        }
    }

    /// A reader that would spin registers here while nothing is
    /// outstanding, to be polled again (and spin) once a call is sent.
    pub(crate) fn wake_reader_on_send(&self, waker: &std::task::Waker) {
        self.reader.register(waker);
    }
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) pending: HashMap<RequestId, Pending>,
    /// Calls and streams among `pending` (pings excluded).
    pub(crate) in_flight: usize,
    /// `in_flight`, readable without the lock (by the spinning reader).
    pub(crate) outstanding: Arc<Outstanding>,
    /// Set once the worker is gone: every later call fails with it.
    pub(crate) dead: Option<CallError>,
    /// Set once the worker said goodbye: new calls are refused with it,
    /// in-flight ones may still finish.
    pub(crate) refusing: Option<CallError>,
}

impl State {
    /// Nothing in flight any more (the worker is gone).
    pub(crate) fn clear_in_flight(&mut self) {
        self.in_flight = 0;
        self.outstanding.set(0);
    }

    pub(crate) fn insert(&mut self, id: RequestId, pending: Pending) {
        if !matches!(pending, Pending::Ping(_)) {
            self.in_flight += 1;
            self.outstanding.set(self.in_flight);
        }
        self.pending.insert(id, pending);
    }

    pub(crate) fn remove(&mut self, id: RequestId) -> Option<Pending> {
        let removed = self.pending.remove(&id);
        if matches!(removed, Some(Pending::Call { .. } | Pending::Stream { .. })) {
            self.in_flight -= 1;
            self.outstanding.set(self.in_flight);
        }
        removed
    }
}
