//! Guards that cancel on drop, and the items of a streaming call.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use portpool_protocol::{RequestId, Value};
use tokio::sync::mpsc;

use super::inner::Inner;
use crate::CallError;

/// Cancels a call when its future or stream is dropped before the end.
pub(crate) struct CallGuard {
    pub(crate) inner: Arc<Inner>,
    pub(crate) id: RequestId,
    pub(crate) armed: bool,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.armed {
            self.inner.abandon(self.id);
        }
    }
}

pub(crate) struct PingGuard<'a> {
    pub(crate) inner: &'a Inner,
    pub(crate) id: RequestId,
}

impl Drop for PingGuard<'_> {
    fn drop(&mut self) {
        self.inner.state().remove(self.id);
    }
}

/// The items of a streaming call; cancels the call when dropped early.
pub(crate) struct ReplyStream {
    pub(crate) guard: CallGuard,
    pub(crate) items: mpsc::UnboundedReceiver<Result<Value, CallError>>,
    pub(crate) unread: Arc<AtomicUsize>,
    pub(crate) deadline: Option<(Pin<Box<tokio::time::Sleep>>, Duration)>,
    pub(crate) method: String,
    pub(crate) done: bool,
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
