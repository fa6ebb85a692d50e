//! The reader task: frames from stdout routed until the worker is gone.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use portpool_protocol::{MessageCodec, ProtocolError};
use tokio_util::codec::FramedRead;

use super::inner::Inner;
use crate::process::spin::SpinningStdout;
use crate::CrashCause;

/// After the process exited, how long its stdout may stay open (frames
/// still in the pipe are read meanwhile) before we stop waiting for EOF: a
/// descendant that left the process group can hold the pipe open forever.
pub(super) const STDOUT_AFTER_EXIT: Duration = Duration::from_secs(1);

pub(super) async fn read_loop(inner: Arc<Inner>, mut frames: FramedRead<SpinningStdout, MessageCodec>) {
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
