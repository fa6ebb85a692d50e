//! The table of calls, streams and pings waiting for the worker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
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

#[derive(Default)]
pub(crate) struct State {
    pub(crate) pending: HashMap<RequestId, Pending>,
    /// Calls and streams among `pending` (pings excluded).
    pub(crate) in_flight: usize,
    /// `in_flight`, readable without the lock (by the spinning reader).
    pub(crate) outstanding: Arc<AtomicUsize>,
    /// Set once the worker is gone: every later call fails with it.
    pub(crate) dead: Option<CallError>,
    /// Set once the worker said goodbye: new calls are refused with it,
    /// in-flight ones may still finish.
    pub(crate) refusing: Option<CallError>,
}

impl State {
    pub(crate) fn insert(&mut self, id: RequestId, pending: Pending) {
        if !matches!(pending, Pending::Ping(_)) {
            self.in_flight += 1;
            self.outstanding.store(self.in_flight, Ordering::Relaxed);
        }
        self.pending.insert(id, pending);
    }

    pub(crate) fn remove(&mut self, id: RequestId) -> Option<Pending> {
        let removed = self.pending.remove(&id);
        if matches!(removed, Some(Pending::Call { .. } | Pending::Stream { .. })) {
            self.in_flight -= 1;
            self.outstanding.store(self.in_flight, Ordering::Relaxed);
        }
        removed
    }
}
