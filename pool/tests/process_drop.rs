//! Dropping a pool (or a bare `ProcessWorker`) together with its tokio
//! runtime, without `shutdown()`, kills and reaps every worker: nothing is
//! left running and nothing is left a zombie. The real-process counterpart
//! of `shutdown.rs::dropping_the_last_handle_stops_the_workers` (which uses fakes).
//!
//! Needs an interpreter with the `portpool` package (`PORTPOOL_PYTHON`, else
//! `.venv/bin/python` upwards): `cargo xtask setup` makes one.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use portpool_pool::{Pool, PoolError};
use portpool_transport::{ProcessLauncher, Value, Worker, WorkerCommand, WorkerId};

fn basic_app() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../transport/tests/apps/basic.py")
}

fn launcher() -> ProcessLauncher {
    // The workspace's .venv with the runtime, made on first use.
    let python = portpool_testkit::runtime_python().expect("a Python with the portpool runtime");
    ProcessLauncher::new(
        WorkerCommand::python_with(python, basic_app()).init_timeout(Duration::from_secs(20)),
    )
}

/// [`launcher`] with the fork server: workers fork from one zygote.
fn forking_launcher() -> ProcessLauncher {
    let python = portpool_testkit::runtime_python().expect("a Python with the portpool runtime");
    ProcessLauncher::new(
        WorkerCommand::python_with(python, basic_app())
            .init_timeout(Duration::from_secs(20))
            .fork_server(true),
    )
}

/// A pool of `workers` from `launcher` that answered a call; with its
/// workers' pids.
async fn serving_pool(launcher: ProcessLauncher, name: &str, workers: usize) -> (Pool, Vec<u32>) {
    let pool = Pool::builder(launcher)
        .name(name)
        .workers(workers)
        .build()
        .await
        .unwrap();
    let echoed: Value = pool.call("echo", &"up").await.unwrap();
    assert_eq!(echoed, Value::from("up"));
    let pids: Vec<u32> = pool.status().workers.iter().filter_map(|w| w.pid).collect();
    (pool, pids)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// What `/proc` says about `pid`: `None` once it is fully gone (reaped),
/// else its state letter (`Z` for a zombie nobody reaped).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim_start().chars().next()
}

/// Waits (at most 5 s) until every pid is absent from `/proc`: killed AND
/// reaped. A zombie does not count as gone.
fn assert_reaped(pids: &[u32]) {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<(u32, char)> = pids
            .iter()
            .filter_map(|&pid| proc_state(pid).map(|state| (pid, state)))
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < until,
            "still in /proc 5 s after the drop (pid, state): {left:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn dropping_a_pool_of_real_processes_with_its_runtime_kills_and_reaps_every_worker() {
    let rt = runtime();
    let (pool, pids) = rt.block_on(async {
        let (pool, pids) = serving_pool(launcher(), "drop-with-runtime", 3).await;
        (pool, pids)
    });
    assert_eq!(pids.len(), 3);
    assert!(pids.iter().all(|&pid| proc_state(pid).is_some_and(|s| s != 'Z')));
    // No shutdown(): the handle and the runtime go at once, so no task of
    // the pool's ever runs again.
    drop(pool);
    drop(rt);
    assert_reaped(&pids);
}

#[test]
fn dropping_a_process_worker_with_its_runtime_kills_and_reaps_it() {
    let rt = runtime();
    let worker = rt.block_on(async { launcher().spawn(WorkerId(1)).await.unwrap() });
    let pid = worker.info().pid.unwrap();
    // The runtime goes first, then the worker's handle, outside any runtime.
    drop(rt);
    drop(worker);
    assert_reaped(&[pid]);
}

#[test]
fn a_pool_of_forked_workers_shut_down_then_dropped_with_its_runtime_leaves_no_process() {
    let rt = runtime();
    let launcher = forking_launcher();
    let (pool, pids, zygote) = rt.block_on(async {
        let (pool, pids) = serving_pool(launcher.clone(), "forked-drop", 3).await;
        let zygote = launcher.fork_server_pid().expect("a fork server");
        pool.shutdown(Duration::from_secs(5)).await;
        (pool, pids, zygote)
    });
    drop(launcher);
    assert_eq!(pids.len(), 3);
    assert_reaped(&pids);
    drop(pool);
    drop(rt);
    assert_reaped(&[zygote]);
}

#[test]
fn dropping_a_pool_of_forked_workers_with_its_runtime_kills_and_reaps_every_worker_and_the_fork_server() {
    let rt = runtime();
    let launcher = forking_launcher();
    let (pool, pids, zygote) = rt.block_on(async {
        let (pool, pids) = serving_pool(launcher.clone(), "forked-drop-runtime", 3).await;
        (pool, pids, launcher.fork_server_pid().expect("a fork server"))
    });
    drop(launcher);
    drop(pool);
    drop(rt);
    assert_eq!(pids.len(), 3);
    assert_reaped(&pids);
    assert_reaped(&[zygote]);
}

/// `shutdown()` releases the pool's launcher: the fork server exits with
/// the workers, while the pool's handle is still held (before, it lived
/// until the handle was dropped, an idle process per shut-down pool).
#[test]
fn shutting_down_a_pool_of_forked_workers_ends_its_fork_server_while_the_handle_lives() {
    let rt = runtime();
    let launcher = forking_launcher();
    rt.block_on(async move {
        let (pool, pids) = serving_pool(launcher.clone(), "forked-shutdown", 2).await;
        let zygote = launcher.fork_server_pid().expect("a fork server");
        // Only the pool holds the launcher now.
        drop(launcher);
        pool.shutdown(Duration::from_secs(5)).await;
        assert_eq!(pids.len(), 2);
        tokio::task::block_in_place(|| {
            assert_reaped(&pids);
            assert_reaped(&[zygote]);
        });
        // Shut down, the pool refuses calls at once (it has no launcher left
        // to start a worker with, and needs none).
        let after =
            tokio::time::timeout(Duration::from_secs(5), pool.call::<_, Value>("echo", &"late")).await;
        assert!(
            matches!(after, Ok(Err(PoolError::PoolClosed { .. }))),
            "{after:?}"
        );
    });
}
