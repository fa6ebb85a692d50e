//! The reader task: frames from the worker routed until it is gone.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use portpool_protocol::{MessageCodec, ProtocolError};
use tokio::io::AsyncRead;
use tokio_util::codec::FramedRead;

use super::inner::Inner;
use crate::CrashCause;

/// Reads and routes frames until the stream ends, breaks, or `ended` (the
/// peer's own reason to stop: the process exited and its stdout stayed
/// open, the connection was killed) resolves; then fails the worker.
pub(crate) async fn read_loop<R: AsyncRead + Unpin>(
    inner: Arc<Inner>,
    mut frames: FramedRead<R, MessageCodec>,
    ended: impl Future<Output = (CrashCause, String)>,
) {
    let exited = ended;
    tokio::pin!(exited);
    let writer = inner.writer.clone();
    let stdin_broken = writer.failed();
    tokio::pin!(stdin_broken);
    let (cause, reason) = loop {
        let next = tokio::select! {
            biased;
            next = frames.next() => next,
            ended = &mut exited => break ended,
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
    // Closed before failing the calls: a connection's peer sees the end now.
    drop(frames);
    inner.fail(cause, reason).await;
}
