//! What a worker's handle, reader and callers share: the pending table,
//! the writer, encoding, routing replies, and failing every call once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use portpool_protocol::{encode_frame, encode_frame_into, Cancel, Message, RequestId};
use tokio::sync::watch;

use super::pending::{Frame, Pending, State};
use super::writer::FrameWriter;
use super::Peer;
use crate::{CallError, CrashCause, WorkerInfo};

pub(crate) struct Inner {
    pub(crate) info: WorkerInfo,
    pub(crate) max_frame: usize,
    pub(crate) max_stream_buffer: usize,
    pub(crate) state: Mutex<State>,
    pub(crate) writer: Arc<FrameWriter>,
    pub(crate) next_id: AtomicU64,
    pub(crate) closing: AtomicBool,
    /// Set as soon as the reader knows the worker is gone.
    pub(crate) broken: AtomicBool,
    pub(crate) discarded: AtomicU64,
    pub(crate) dead_tx: watch::Sender<bool>,
    /// Set by [`Worker::kill`]: the cause the reader reports instead of the
    /// end of stdout that the kill brings about.
    pub(crate) killed: Mutex<Option<(CrashCause, String)>>,
    /// A frame buffer kept from the last request the pipe took at once, so
    /// the next request is encoded without allocating (and, when large,
    /// without faulting its pages in again). Kept only up to
    /// [`SPARE_BUFFER_MAX`].
    pub(crate) spare: Mutex<Vec<u8>>,
    /// What is at the other end: a process or a connection.
    pub(crate) peer: Peer,
}

/// The largest request buffer a worker keeps for reuse (see `Inner::spare`).
pub(crate) const SPARE_BUFFER_MAX: usize = 2 * 1024 * 1024;

impl Inner {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn closed_error(&self) -> CallError {
        CallError::WorkerClosed {
            worker: self.info.id,
            pid: self.info.pid,
        }
    }

    /// Registers a pending entry and sends its frame, atomically with respect
    /// to the worker dying: either both happen or the death error returns.
    pub(crate) fn send_registered(
        &self,
        id: RequestId,
        pending: Pending,
        frame: Frame,
    ) -> Result<(), CallError> {
        let mut state = self.state();
        let refused = if let Some(dead) = state.dead.as_ref().or(state.refusing.as_ref()) {
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
    pub(crate) fn encode_request(&self, message: &Message, method: &str) -> Result<Frame, CallError> {
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
    pub(crate) fn give_back(&self, frame: Frame) {
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

    pub(crate) fn encode(&self, message: &Message, method: &str) -> Result<Bytes, CallError> {
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
    pub(crate) fn abandon(&self, id: RequestId) -> Option<Pending> {
        let removed = self.state().remove(id);
        if removed.is_some() {
            if let Ok(frame) = encode_frame(&Message::Cancel(Cancel { id }), self.max_frame) {
                self.writer.send(Bytes::from(frame));
            }
        }
        removed
    }

    pub(crate) fn send_control(&self, message: &Message) {
        if let Ok(frame) = encode_frame(message, self.max_frame) {
            self.writer.send(Bytes::from(frame));
        }
    }

    pub(crate) fn discard(&self, what: &str, id: RequestId) {
        self.discarded.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("portpool_transport_discarded_replies_total").increment(1);
        tracing::debug!(worker = %self.info.id, id, "discarded {what} for an unknown or cancelled request");
    }

    /// Routes one frame from the worker. Returns a protocol violation, if any.
    pub(crate) fn dispatch(&self, message: Message) -> Result<(), String> {
        match message {
            Message::Response(response) => {
                // Look and take under one lock: a response carrying a
                // ping's id must not end that ping (its pong may follow).
                let removed = {
                    let mut state = self.state();
                    match state.pending.get(&response.id) {
                        Some(Pending::Ping(_)) | None => None,
                        Some(_) => state.remove(response.id),
                    }
                };
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
            Message::Goodbye(goodbye) if self.peer.accepts_goodbye() => {
                tracing::info!(worker = %self.info.id, reason = %goodbye.reason, "worker said goodbye");
                // No new calls from now on; in-flight ones may still finish.
                self.state().refusing = Some(self.closed_error());
                self.peer.goodbye(goodbye.reason);
            }
            other => return Err(format!("unexpected {} message from the worker", other.kind())),
        }
        Ok(())
    }

    /// The worker is gone: let the peer settle how (kill what is left of
    /// a process and learn its exit; close a connection), then fail every
    /// pending call exactly once with the error the peer made of it.
    pub(crate) async fn fail(&self, cause: CrashCause, reason: String) {
        let killed = self.killed.lock().unwrap_or_else(|e| e.into_inner()).take();
        // Known gone from now on, before the (bounded) reaping below.
        self.broken.store(true, Ordering::Release);
        let error = self.peer.end(self, cause, reason, killed).await;
        let pending = {
            let mut state = self.state();
            state.dead = Some(error.clone());
            state.clear_in_flight();
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
        self.peer.after_end().await;
        self.dead_tx.send_replace(true);
    }

    pub(crate) fn dead_error(&self) -> CallError {
        self.state().dead.clone().unwrap_or_else(|| self.closed_error())
    }
}
