//! Shared harness of the hostile-worker suites (`tests/hostile_workers.rs`,
//! `tests/hostile_deep.rs`): a hostile worker script (`tests/hostile/worker.py`,
//! no portpool runtime, frames spoken by hand) run through a real [`Pool`],
//! and the checks every scenario ends with: the pool back at full strength
//! and no process of the worker (or its children) left, alive or zombie.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use portpool::{Backoff, Heartbeat, Pool, PoolBuilder, ProcessLauncher, Value, WorkerCommand};

/// Heartbeat of every hostile pool: a frozen worker is detected within
/// `interval × max_misses + timeout` = 500 ms (plus scheduling).
pub(crate) const HEARTBEAT: Heartbeat = Heartbeat {
    interval: Duration::from_millis(100),
    timeout: Duration::from_millis(300),
    max_misses: 2,
};

/// The bound within which every scenario must have ended in its typed
/// error (generous: the machine is shared; the point is "does not hang").
pub(crate) const BOUND: Duration = Duration::from_secs(15);

/// How long a hostile worker may take to say hello: long enough for a good
/// one on a loaded 2-core machine (2 s was not), short enough for the
/// "never says hello" cases to finish well within [`BOUND`].
pub(crate) const INIT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the pool may take to be back at full strength after a fault.
pub(crate) const RECOVERY: Duration = Duration::from_secs(10);

/// One scenario's hostile worker: its mode and state directory (where each
/// start records its pid, and each descendant it spawns records its own).
/// Dropping it SIGKILLs every recorded process and its process group, so
/// nothing is left even when an assertion fails.
pub(crate) struct Hostile {
    pub mode: &'static str,
    pub dir: PathBuf,
}

impl Hostile {
    pub(crate) fn new(mode: &'static str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "portpool-hostile-{}-{}-{mode}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the scenario's state dir");
        Hostile { mode, dir }
    }

    /// `python3 tests/hostile/worker.py MODE DIR`.
    pub(crate) fn command(&self) -> WorkerCommand {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile/worker.py");
        WorkerCommand::new("python3")
            .arg(script)
            .arg(self.mode)
            .arg(&self.dir)
            .init_timeout(INIT_TIMEOUT)
    }

    /// A pool of `workers` of this worker: small heartbeats and backoffs,
    /// so every detection and recovery is fast.
    pub(crate) fn pool(&self, workers: usize) -> PoolBuilder {
        self.pool_with(self.command(), workers)
    }

    /// [`Hostile::pool`] with a command of the caller's (limits, frame size).
    pub(crate) fn pool_with(&self, command: WorkerCommand, workers: usize) -> PoolBuilder {
        Pool::builder(ProcessLauncher::new(command))
            .name(self.mode)
            .workers(workers)
            .init_timeout(INIT_TIMEOUT)
            .checkout_timeout(Duration::from_secs(10))
            .heartbeat(Some(HEARTBEAT))
            .restart_backoff(Backoff {
                base: Duration::from_millis(20),
                cap: Duration::from_millis(200),
                jitter: 0.0,
                reset_after: Duration::from_secs(1),
            })
            .stop_grace(Duration::from_millis(300))
    }

    /// The pid of start `n`, once it has recorded it.
    pub(crate) fn start_pid(&self, n: usize) -> Option<u32> {
        std::fs::read_to_string(self.dir.join(format!("start-{n}")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Waits (real time) for start `n` to record its pid.
    pub(crate) async fn wait_start_pid(&self, n: usize) -> u32 {
        let until = Instant::now() + BOUND;
        loop {
            if let Some(pid) = self.start_pid(n) {
                return pid;
            }
            assert!(
                Instant::now() < until,
                "start {n} of {} never recorded its pid",
                self.mode
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every process recorded so far: starts and their descendants.
    pub(crate) fn pids(&self) -> Vec<u32> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut pids: Vec<u32> = dir
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok()?.trim().parse().ok())
            .collect();
        pids.sort_unstable();
        pids
    }

    /// Asserts that every recorded process, and every member of their
    /// process groups, is gone within `within` (a zombie child of ours is
    /// a leak, not gone: see `portpool_testkit::ProcessState`).
    pub(crate) async fn assert_nothing_left(&self, within: Duration) {
        let pids = self.pids();
        assert!(!pids.is_empty(), "{}: no start recorded", self.mode);
        let left = portpool_testkit::wait_all_gone(&pids, &pids, within).await;
        assert!(
            left.is_empty(),
            "{}: processes left (recorded {pids:?}): {left:?}",
            self.mode
        );
    }

    /// Asserts the processes of start `n` (and the descendants it recorded
    /// while alive) are gone within `within`, while the pool still runs.
    pub(crate) async fn assert_start_gone(&self, n: usize, within: Duration) {
        let pid = self.start_pid(n).expect("start recorded");
        let left = portpool_testkit::wait_all_gone(&[pid], &[pid], within).await;
        assert!(
            left.is_empty(),
            "{}: start {n} (pid {pid}) left: {left:?}",
            self.mode
        );
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        for pid in self.pids() {
            for target in [format!("-{pid}"), pid.to_string()] {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", "--", &target])
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until the pool has `workers` ready workers (within [`RECOVERY`])
/// and serves a call, then shuts it down and checks that nothing of the
/// hostile worker is left.
pub(crate) async fn assert_recovers_and_cleans_up(hostile: &Hostile, pool: Pool, workers: usize) {
    let until = Instant::now() + RECOVERY;
    while pool.status().ready != workers {
        assert!(
            Instant::now() < until,
            "{}: pool not back at full strength within {RECOVERY:?}: {:#?}",
            hostile.mode,
            pool.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reply: Value = tokio::time::timeout(BOUND, pool.call_value("echo", Value::from("ok")))
        .await
        .expect("a call after recovery hung")
        .expect("a call after recovery failed");
    assert_eq!(reply, Value::from("ok"));
    pool.shutdown(Duration::from_secs(1)).await;
    hostile.assert_nothing_left(Duration::from_secs(5)).await;
}

/// Sends `signal` (e.g. "-STOP") to `pid`.
pub(crate) fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid} failed");
}
