//! Signals to a worker's process group, with guards against ever signalling
//! pid 0, init, or our own group.

use nix::sys::signal::{killpg, Signal};
use nix::unistd::{getpgrp, Pid};

/// Sends `signal` to process group `pgid`. Refuses groups 0 and 1 and our
/// own group; a group that no longer exists is not an error.
pub(crate) fn signal_group(pgid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pgid) else { return };
    if raw <= 1 || Pid::from_raw(raw) == getpgrp() {
        tracing::warn!(pgid, "refusing to signal process group");
        return;
    }
    if let Err(err) = killpg(Pid::from_raw(raw), signal) {
        if err != nix::errno::Errno::ESRCH {
            tracing::debug!(pgid, %err, ?signal, "signal to worker group failed");
        }
    }
}
