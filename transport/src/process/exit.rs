//! Waiting for a worker process's exit, bounded: its status is published by
//! the exit-waiter thread (see `reaper.rs`); these wait for it, or kill the
//! group and wait a little more.

use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::watch;

use super::reaper::Group;
use crate::WorkerExit;

/// How long to wait for an exit status or the rest of stderr once a worker
/// is known to be gone; bounded so a stuck grandchild cannot hang us.
pub(crate) const REAP_WAIT: Duration = Duration::from_secs(2);
pub(crate) const STDERR_WAIT: Duration = Duration::from_millis(500);

/// Waits briefly for the worker to exit by itself, then kills its group and
/// waits for the exit status.
pub(crate) async fn reap(group: &Group, exit_rx: watch::Receiver<Option<WorkerExit>>) -> WorkerExit {
    if let Some(exit) = wait_exit(&exit_rx, Duration::from_millis(200)).await {
        return exit;
    }
    group.signal(Signal::SIGKILL);
    wait_exit(&exit_rx, REAP_WAIT).await.unwrap_or_default()
}

/// The worker's exit, if it comes within `limit`.
pub(crate) async fn wait_exit(
    exit_rx: &watch::Receiver<Option<WorkerExit>>,
    limit: Duration,
) -> Option<WorkerExit> {
    let mut exit_rx = exit_rx.clone();
    let waited = tokio::time::timeout(limit, exit_rx.wait_for(Option::is_some)).await;
    match waited {
        Ok(Ok(exit)) => *exit,
        _ => None,
    }
}
