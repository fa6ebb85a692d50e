//! Per-worker resource limits (`setrlimit`), applied in the child between
//! `fork` and `exec`.
//!
//! This is the only module of portpool that uses `unsafe`: installing a
//! `pre_exec` hook is unsafe because the closure runs in the forked child of
//! a multi-threaded parent, where only async-signal-safe functions may be
//! called (no allocation, no locks, no logging). The hook below only calls
//! `setrlimit(2)` through `nix` with values computed before the fork, and
//! turns a failure into an `io::Error` from the raw errno (no allocation);
//! the standard library then reports that error from `spawn`.
#![allow(unsafe_code)]

use std::time::Duration;

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// The resource limits of one worker process. All optional; none set means
/// no `pre_exec` hook is installed at all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    /// `RLIMIT_AS`: the address space, in bytes (soft = hard).
    pub(crate) address_space: Option<u64>,
    /// `RLIMIT_CPU`: CPU seconds. The soft limit sends SIGXCPU (which
    /// terminates the process by default), the hard limit one second later
    /// sends SIGKILL.
    pub(crate) cpu_seconds: Option<u64>,
    /// `RLIMIT_NOFILE`: the number of open file descriptors (soft = hard).
    pub(crate) open_files: Option<u64>,
}

impl Limits {
    pub(crate) fn is_empty(&self) -> bool {
        self.address_space.is_none() && self.cpu_seconds.is_none() && self.open_files.is_none()
    }

    pub(crate) fn set_cpu_time(&mut self, time: Duration) {
        // Whole seconds, at least one: a zero limit would kill at once.
        let secs = time.as_secs() + u64::from(time.subsec_nanos() > 0);
        self.cpu_seconds = Some(secs.max(1));
    }

    /// The limits as `(name, soft, hard)` for a fork server to apply in a
    /// forked worker (names: `AS`, `CPU`, `NOFILE`; the soft and hard values
    /// [`set_in_child`](Self::set_in_child) uses, capped the same way there).
    pub(crate) fn as_list(&self) -> Vec<(&'static str, u64, u64)> {
        let mut list = Vec::new();
        if let Some(bytes) = self.address_space {
            list.push(("AS", bytes, bytes));
        }
        if let Some(secs) = self.cpu_seconds {
            list.push(("CPU", secs, secs.saturating_add(1)));
        }
        if let Some(n) = self.open_files {
            list.push(("NOFILE", n, n));
        }
        list
    }

    /// Installs the hook that applies the limits in the child, if any is set.
    pub(crate) fn apply(self, command: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        if self.is_empty() {
            return;
        }
        // SAFETY: the closure only calls `setrlimit` (a thin wrapper over
        // the system call, async-signal-safe in practice) with plain
        // integers captured by value, and builds its error from an errno
        // without allocating. It touches no lock, no allocator and no state
        // shared with other threads of the parent.
        unsafe {
            command.pre_exec(move || self.set_in_child());
        }
    }

    /// Runs in the child after `fork`, before `exec`.
    fn set_in_child(&self) -> std::io::Result<()> {
        // An unprivileged process cannot raise its hard limit: stay under
        // the inherited one instead of failing the spawn.
        let set = |resource: Resource, soft: u64, hard: u64| {
            let errno = |e: nix::errno::Errno| std::io::Error::from_raw_os_error(e as i32);
            let (_, current_hard) = getrlimit(resource).map_err(errno)?;
            let hard = hard.min(current_hard);
            setrlimit(resource, soft.min(hard), hard).map_err(errno)
        };
        if let Some(bytes) = self.address_space {
            set(Resource::RLIMIT_AS, bytes, bytes)?;
        }
        if let Some(secs) = self.cpu_seconds {
            // Soft first so SIGXCPU (a clear signal in the exit status)
            // arrives before the hard limit's SIGKILL.
            set(Resource::RLIMIT_CPU, secs, secs.saturating_add(1))?;
        }
        if let Some(n) = self.open_files {
            set(Resource::RLIMIT_NOFILE, n, n)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_rounds_up_to_whole_seconds_and_at_least_one() {
        let mut limits = Limits::default();
        assert!(limits.is_empty());
        limits.set_cpu_time(Duration::from_millis(1500));
        assert_eq!(limits.cpu_seconds, Some(2));
        limits.set_cpu_time(Duration::ZERO);
        assert_eq!(limits.cpu_seconds, Some(1));
        limits.set_cpu_time(Duration::from_secs(3));
        assert_eq!(limits.cpu_seconds, Some(3));
        assert!(!limits.is_empty());
    }
}
