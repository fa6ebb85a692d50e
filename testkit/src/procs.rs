//! Process checks for tests about real worker processes (Linux `/proc`).
//!
//! What counts as *gone* follows the promise "nothing outlives the pool":
//! a process is gone when it is absent from `/proc` (exited and reaped), or
//! when it is a zombie whose parent is not this process (its parent, or
//! init after reparenting, will reap it). A zombie whose parent is this
//! process is a **leak**: nobody will reap it while the test process (the
//! host) lives, and a long-lived host accumulates them.

use std::time::{Duration, Instant};

/// What `/proc` says about one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProcessState {
    /// Not in `/proc`: exited and reaped (or never existed).
    Gone,
    /// Exited but not reaped; `ppid` is the parent that should reap it.
    Zombie {
        /// The parent process id.
        ppid: u32,
    },
    /// Alive (running, sleeping, stopped, ...).
    Alive {
        /// The `/proc/<pid>/stat` state letter: `R`, `S`, `D`, `T`
        /// (stopped), `t` (traced), ...
        state: char,
        /// The parent process id.
        ppid: u32,
    },
}

impl ProcessState {
    /// Whether this counts as gone for the current process: reaped, or a
    /// zombie that some other process (not us) will reap.
    pub fn is_gone(&self) -> bool {
        match *self {
            ProcessState::Gone => true,
            ProcessState::Zombie { ppid } => ppid != std::process::id(),
            ProcessState::Alive { .. } => false,
        }
    }
}

/// One row of [`processes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessInfo {
    /// The process id.
    pub pid: u32,
    /// The parent process id.
    pub ppid: u32,
    /// The process group id.
    pub pgrp: u32,
    /// The `/proc/<pid>/stat` state letter (`Z` for a zombie).
    pub state: char,
}

impl ProcessInfo {
    /// This row as a [`ProcessState`].
    pub fn process_state(&self) -> ProcessState {
        if self.state == 'Z' || self.state == 'X' {
            ProcessState::Zombie { ppid: self.ppid }
        } else {
            ProcessState::Alive {
                state: self.state,
                ppid: self.ppid,
            }
        }
    }
}

/// Parses `/proc/<pid>/stat` text (the command name in parentheses may
/// itself contain spaces or parentheses).
fn parse_stat(pid: u32, stat: &str) -> Option<ProcessInfo> {
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    let pgrp = rest.next()?.parse().ok()?;
    Some(ProcessInfo {
        pid,
        ppid,
        pgrp,
        state,
    })
}

/// What `/proc` says about `pid` now.
pub fn process_info(pid: u32) -> Option<ProcessInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &stat)
}

/// The state of process `pid` now (see [`ProcessState`]).
pub fn process_state(pid: u32) -> ProcessState {
    process_info(pid).map_or(ProcessState::Gone, |info| info.process_state())
}

/// Every process in `/proc` now.
pub fn processes() -> Vec<ProcessInfo> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        process_info(pid)
    })
    .collect()
}

/// `pid` and every process below it (children, grandchildren, ...), now.
/// Collect these while the worker lives: once it dies its children are
/// reparented and no longer found this way (use its process group too).
pub fn process_tree(pid: u32) -> Vec<u32> {
    let all = processes();
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            all.iter()
                .filter(|p| p.ppid == parent && p.pid != parent)
                .map(|p| p.pid),
        );
        i += 1;
    }
    tree
}

/// Whether process `pid` is gone: absent from `/proc`, or a zombie whose
/// parent is not this process. A zombie child of this process is **not**
/// gone (it is a leak; see the module docs).
pub fn process_gone(pid: u32) -> bool {
    process_state(pid).is_gone()
}

/// Waits until process `pid` is gone (see [`process_gone`]), at most
/// `within` of real time (polling every 20 ms); returns whether it is.
pub async fn wait_process_gone(pid: u32, within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if process_gone(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    process_gone(pid)
}

/// The processes that are not gone (see [`process_gone`]): every pid in
/// `pids`, and every member of the process groups `pgrps`, other than this
/// process. Empty when nothing is left.
pub fn leftover_processes(pids: &[u32], pgrps: &[u32]) -> Vec<(ProcessInfo, ProcessState)> {
    let me = std::process::id();
    let mut left: Vec<(ProcessInfo, ProcessState)> = processes()
        .into_iter()
        .filter(|p| p.pid != me && (pids.contains(&p.pid) || pgrps.contains(&p.pgrp)))
        .map(|p| (p, p.process_state()))
        .filter(|(_, state)| !state.is_gone())
        .collect();
    left.sort_by_key(|(p, _)| p.pid);
    left
}

/// Waits up to `within` for every pid in `pids` and every member of the
/// process groups `pgrps` to be gone; returns what is left (empty when
/// all are gone), for an assertion message.
pub async fn wait_all_gone(
    pids: &[u32],
    pgrps: &[u32],
    within: Duration,
) -> Vec<(ProcessInfo, ProcessState)> {
    let until = Instant::now() + within;
    loop {
        let left = leftover_processes(pids, pgrps);
        if left.is_empty() || Instant::now() >= until {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`wait_all_gone`] for `pids`; whatever is left then is sent `SIGKILL`
/// (with the `kill` command), so a failing test leaves nothing running,
/// and returned for the assertion message (empty when all were gone in
/// time). A zombie child of this process cannot be killed, only reported:
/// reap it.
pub async fn wait_all_gone_or_kill(pids: &[u32], within: Duration) -> Vec<(ProcessInfo, ProcessState)> {
    let left = wait_all_gone(pids, &[], within).await;
    for (process, _) in &left {
        let _ = std::process::Command::new("kill")
            .args(["-9", &process.pid.to_string()])
            .status();
    }
    left
}

/// Starts a **host process** for a "the host is SIGKILLed" test: test
/// `helper` of the running test binary, alone (`--exact`), with `env` set
/// (the helper returns at once without it, so it passes as a plain test).
/// The helper starts its processes and prints a line with `PIDS` and their
/// pids, then waits to be killed. Returns the running host and those pids,
/// or an error (the host killed) when no such line came within `within`.
pub async fn spawn_host_helper(
    helper: &str,
    env: (&str, &std::ffi::OsStr),
    within: Duration,
) -> Result<(std::process::Child, Vec<u32>), String> {
    use std::io::{BufRead, BufReader};
    let exe = std::env::current_exe().map_err(|e| format!("no test binary: {e}"))?;
    let mut host = std::process::Command::new(exe)
        .args(["--exact", helper, "--nocapture", "--test-threads=1"])
        .env(env.0, env.1)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the helper {helper}: {e}"))?;
    let Some(stdout) = host.stdout.take() else {
        return Err("the helper's stdout was not piped".into());
    };
    let read = tokio::task::spawn_blocking(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // The test harness may print its own text before ours on the line.
            if let Some((_, rest)) = line.split_once("PIDS ") {
                return rest
                    .split_whitespace()
                    .map(str::parse::<u32>)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("its PIDS line {line:?} does not parse: {e}"));
            }
        }
        Err("its output ended without a PIDS line".to_string())
    });
    let failure = match tokio::time::timeout(within, read).await {
        Ok(Ok(Ok(pids))) => return Ok((host, pids)),
        Ok(Ok(Err(why))) => why,
        Ok(Err(join)) => format!("reading its output failed: {join}"),
        Err(_) => format!("no PIDS line within {within:?}"),
    };
    let _ = host.kill();
    let _ = host.wait();
    Err(format!("the helper {helper}: {failure}"))
}

/// The end of a [`spawn_host_helper`] test: SIGKILLs the host (no
/// destructor of it runs), reaps it, then [`wait_all_gone_or_kill`] for
/// `pids`. Returns what outlived the host by `within` (empty: nothing).
pub async fn kill_host_helper(
    host: &mut std::process::Child,
    pids: &[u32],
    within: Duration,
) -> Vec<(ProcessInfo, ProcessState)> {
    let _ = host.kill();
    let _ = host.wait();
    wait_all_gone_or_kill(pids, within).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_zombie_child_of_ours_is_not_gone_until_reaped() {
        assert!(!process_gone(std::process::id()));
        assert!(matches!(
            process_state(std::process::id()),
            ProcessState::Alive { .. }
        ));
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let pid = child.id();
        assert!(!process_gone(pid));
        child.kill().unwrap();
        // Killed but not reaped: our zombie, a leak, not gone.
        let until = Instant::now() + Duration::from_secs(2);
        while !matches!(process_state(pid), ProcessState::Zombie { .. }) {
            assert!(Instant::now() < until, "never became a zombie");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            process_state(pid),
            ProcessState::Zombie {
                ppid: std::process::id()
            }
        );
        assert!(!process_gone(pid));
        assert!(!wait_process_gone(pid, Duration::from_millis(100)).await);
        assert_eq!(leftover_processes(&[pid], &[]).len(), 1);
        child.wait().unwrap();
        assert!(process_gone(pid));
        assert_eq!(process_state(pid), ProcessState::Gone);
        assert!(leftover_processes(&[pid], &[]).is_empty());
    }

    #[tokio::test]
    async fn what_outlives_the_wait_is_reported_and_killed() {
        let mut child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let pid = child.id();
        let left = wait_all_gone_or_kill(&[pid], Duration::from_millis(50)).await;
        assert_eq!(left.iter().map(|(p, _)| p.pid).collect::<Vec<_>>(), [pid]);
        // Killed, not left running for the rest of the tests.
        let status = child.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9));
        assert!(wait_all_gone_or_kill(&[pid], Duration::from_millis(50))
            .await
            .is_empty());
    }

    #[test]
    fn a_zombie_of_another_parent_is_gone() {
        assert!(ProcessState::Zombie { ppid: 1 }.is_gone());
        assert!(!ProcessState::Alive { state: 'S', ppid: 1 }.is_gone());
        let info = parse_stat(42, "42 (a) b)) Z 1 42 42 0").unwrap();
        assert_eq!(info.process_state(), ProcessState::Zombie { ppid: 1 });
        assert_eq!(info.pgrp, 42);
    }

    #[tokio::test]
    async fn process_tree_finds_grandchildren() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 5 & wait"])
            .spawn()
            .unwrap();
        let pid = child.id();
        let until = Instant::now() + Duration::from_secs(2);
        let tree = loop {
            let tree = process_tree(pid);
            if tree.len() >= 2 || Instant::now() > until {
                break tree;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(tree.len(), 2, "{tree:?}");
        let grandchild = tree[1];
        child.kill().unwrap();
        child.wait().unwrap();
        // The grandchild lives on, reparented: not gone.
        assert!(!process_gone(grandchild));
        std::process::Command::new("kill")
            .args(["-KILL", &grandchild.to_string()])
            .status()
            .unwrap();
        assert!(wait_process_gone(grandchild, Duration::from_secs(2)).await);
    }
}
