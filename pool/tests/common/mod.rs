//! Helpers shared by the pool tests: the fake launcher they start from and
//! waits on the pool's status. Pools are built with the testkit's
//! `fake_pool` / `fake_pool_builder`, as downstream tests do.
#![allow(dead_code)]

pub(crate) mod scripted;

use std::path::PathBuf;
use std::time::Duration;

use portpool_pool::{BreakerConfig, Pool, PoolBuilder, PoolStatus};
use portpool_testkit::FakeLauncher;
#[allow(unused_imports)] // each test file uses some of them
pub(crate) use portpool_testkit::{fake_pool, fake_pool_builder, spawn_call, spawn_with};
use portpool_transport::{ProcessLauncher, Value, WorkerCommand, WorkerId};

/// Milliseconds.
pub(crate) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Seconds.
pub(crate) fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Methods: `echo` (returns params), `sleep` (params = milliseconds),
/// `hang` (never returns), `count` (streams `0..params`).
pub(crate) fn launcher() -> FakeLauncher {
    FakeLauncher::new()
        .handler("echo", Ok)
        .async_handler("sleep", |v: Value| async move {
            tokio::time::sleep(Duration::from_millis(v.as_u64().unwrap_or(0))).await;
            Ok(v)
        })
        .async_handler("hang", |_| std::future::pending())
        .stream_handler("count", |n: Value| {
            (0..n.as_u64().unwrap_or(0)).map(|i| Ok(Value::from(i))).collect()
        })
}

/// The testkit's deterministic builder (no heartbeat, no jitter, no
/// breaker). Kept for `targeted.rs`; the other files call
/// `fake_pool_builder` themselves.
pub(crate) fn builder(l: &FakeLauncher) -> PoolBuilder {
    fake_pool_builder(l)
}

/// A breaker that opens after `failures` worker faults in a row, for
/// `open_for`, then lets one probe through.
pub(crate) fn breaker(failures: u32, open_for: Duration) -> Option<BreakerConfig> {
    Some(BreakerConfig {
        failure_threshold: failures,
        open_for,
        half_open_probes: 1,
    })
}

/// Slots held by callers, over all workers.
pub(crate) fn held(status: &PoolStatus) -> usize {
    status.workers.iter().map(|w| w.held).sum()
}

/// Lets spawned tasks run (virtual time advances only when all are idle).
pub(crate) async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// Waits (virtual time) until `cond` holds on the pool's status.
pub(crate) async fn wait_status(pool: &Pool, cond: impl Fn(&PoolStatus) -> bool) -> PoolStatus {
    for _ in 0..10_000 {
        let st = pool.status();
        if cond(&st) {
            return st;
        }
        tokio::time::sleep(ms(10)).await;
    }
    panic!("condition never held: {:#?}", pool.status());
}

/// Waits (virtual time) until the pool's only worker is `id`: a one-worker
/// pool whose worker was replaced.
pub(crate) async fn wait_only_worker(pool: &Pool, id: WorkerId) -> PoolStatus {
    wait_status(pool, |s| s.workers.len() == 1 && s.workers[0].id == Some(id)).await
}

/// Real Python workers running `app` on `python` (20 s to start).
pub(crate) fn python_launcher(python: PathBuf, app: PathBuf) -> ProcessLauncher {
    ProcessLauncher::new(WorkerCommand::python_with(python, app).init_timeout(secs(20)))
}

/// Writes `source` to a fresh Python app file named `name.py` (for the
/// tests on real workers).
pub(crate) fn python_app(name: &str, source: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portpool-pool-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.py"));
    std::fs::write(&path, source).unwrap();
    path
}
