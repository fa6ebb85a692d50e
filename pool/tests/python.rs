//! The pool over real Python workers (`python -m portpool APP`): parallel
//! start, kill -9 under load, and an app that cannot import.
//!
//! They need an interpreter with the `portpool` package (`PORTPOOL_PYTHON`,
//! else `.venv/bin/python` upwards): `cargo xtask setup` makes one.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{python_app as app, python_launcher as launcher, spawn_call};
use futures::StreamExt;
use portpool_pool::{Pool, PoolError};
use portpool_testkit::CallLedger;
use portpool_transport::{CallError, ProcessLauncher, Value, WorkerCommand};

fn python() -> Option<PathBuf> {
    // The workspace's .venv with the runtime, made on first use.
    let python = portpool_testkit::runtime_python().expect("a Python with the portpool runtime");
    Some(python)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_imports_start_in_parallel() {
    let Some(python) = python() else { return };
    // Each worker's import waits until all 8 have begun theirs: started in
    // parallel they all finish; started one by one the first never would
    // (its init time-out fails the build). No timing is asserted.
    let barrier = std::env::temp_dir().join(format!("portpool-barrier-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&barrier);
    std::fs::create_dir_all(&barrier).unwrap();
    let app = app(
        "slow_import",
        &format!(
            "import os, time\n\
             barrier = {barrier:?}\n\
             open(os.path.join(barrier, str(os.getpid())), 'w').close()\n\
             give_up = time.monotonic() + 120\n\
             while len(os.listdir(barrier)) < 8 and time.monotonic() < give_up:\n    time.sleep(0.01)\n\
             import portpool\napp = portpool.App()\n\n@app.handler\ndef echo(x):\n    return x\n",
            barrier = barrier.display().to_string()
        ),
    );
    let pool = Pool::builder(ProcessLauncher::new(
        WorkerCommand::python_with(python, app).init_timeout(Duration::from_secs(60)),
    ))
    .name("slow-import")
    .workers(8)
    .startup_concurrency(8)
    .build()
    .await
    .unwrap();
    assert_eq!(pool.status().ready, 8);
    assert_eq!(std::fs::read_dir(&barrier).unwrap().count(), 8, "8 imports began");
    let v: i64 = pool.call("echo", &5).await.unwrap();
    assert_eq!(v, 5);
    pool.shutdown(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&barrier);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_every_call_ends_once_and_the_pool_heals() {
    let Some(python) = python() else { return };
    let app = app(
        "echo_app",
        "import time\nimport portpool\napp = portpool.App(max_concurrency=4)\n\n@app.handler\ndef echo(x):\n    time.sleep(0.001)\n    return x\n",
    );
    let pool = Pool::builder(launcher(python, app))
        .name("kill9")
        .workers(4)
        .breaker(None)
        .crash_loop(1000, Duration::from_secs(60))
        .checkout_timeout(Duration::from_secs(30))
        .build()
        .await
        .unwrap();
    let ledger = CallLedger::new();
    let crashed = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = tokio::spawn({
        let (pool, done) = (pool.clone(), done.clone());
        async move {
            let mut killed = Vec::new();
            while !done.load(Ordering::Relaxed) && killed.len() < 8 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                // Checked again after the sleep: no kill once the calls are done.
                if done.load(Ordering::Relaxed) {
                    break;
                }
                let pids: Vec<u32> = pool.status().workers.iter().filter_map(|w| w.pid).collect();
                if pids.is_empty() {
                    continue;
                }
                let pid = pids[rand_index(pids.len())];
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
                killed.push(pid);
            }
            killed
        }
    });
    let results: Vec<()> = futures::stream::iter(0..2_000i64)
        .map(|i| {
            let (pool, ledger, crashed) = (pool.clone(), ledger.clone(), crashed.clone());
            async move {
                let id = ledger.start(format!("echo {i}"));
                match pool.call::<_, i64>("echo", &i).await {
                    Ok(v) => {
                        assert_eq!(v, i, "a caller got another call's reply");
                        ledger.end(id, "ok");
                    }
                    Err(PoolError::Call(CallError::WorkerCrashed { .. })) => {
                        crashed.fetch_add(1, Ordering::Relaxed);
                        ledger.end(id, "crashed");
                    }
                    Err(e) => panic!("call {i}: unexpected error {e}"),
                }
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    done.store(true, Ordering::Relaxed);
    let killed = killer.await.unwrap();
    let kills = killed.len();
    assert_eq!(results.len(), 2_000);
    ledger.assert_each_call_ended_once();
    assert_eq!(ledger.started(), 2_000);
    eprintln!(
        "{kills} kills, {} calls ended with WorkerCrashed",
        crashed.load(Ordering::Relaxed)
    );
    // The pool returns to full size.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = pool.status();
        // Healed: full size, and no worker the killer shot is still listed
        // (a kill is seen by the pool a moment after it lands).
        let shot_listed = st
            .workers
            .iter()
            .any(|w| w.pid.is_some_and(|pid| killed.contains(&pid)));
        if st.ready == 4 && st.workers.len() == 4 && !shot_listed {
            break;
        }
        assert!(Instant::now() < deadline, "pool did not heal: {st:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v: i64 = pool.call("echo", &-1).await.unwrap();
    assert_eq!(v, -1);
    pool.shutdown(Duration::from_secs(2)).await;
}

fn rand_index(n: usize) -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n as u64);
    (h.finish() % n as u64) as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_import_fails_build_fast_with_the_import_error() {
    let Some(python) = python() else { return };
    let app = app(
        "broken_import",
        "import portpool\nraise ImportError(\"cannot import name 'frobnicate' from 'numpy'\")\n",
    );
    let t0 = Instant::now();
    let err = Pool::builder(launcher(python, app))
        .name("broken")
        .workers(2)
        .build()
        .await
        .unwrap_err();
    let took = t0.elapsed();
    let PoolError::Build { errors, .. } = &err else {
        panic!("expected Build, got {err}");
    };
    assert_eq!(errors.len(), 2);
    let text = err.to_string();
    assert!(
        text.contains("ImportError") && text.contains("frobnicate"),
        "{text}"
    );
    // Fast: the process exits during init; nobody waits for the 20 s init
    // time-out.
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

/// Item 2: a worker frozen by SIGSTOP with a call in flight (no call
/// time-out) misses its heartbeats without CPU progress: it is killed as
/// unresponsive, the call fails with `WorkerCrashed { cause: Unresponsive }`
/// within `interval × max_misses + timeout`, and a new worker (new pid)
/// takes its place. Before the SIGSTOP, the same busy worker answers its
/// pings while the handler runs and is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigstopped_worker_with_a_call_in_flight_is_killed_and_replaced() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use portpool_pool::Heartbeat;
    use portpool_transport::CrashCause;

    let Some(python) = python() else { return };
    let app = app(
        "stoppable",
        "import time\nimport portpool\napp = portpool.App(max_concurrency=4)\n\n@app.handler\ndef sleep(s):\n    time.sleep(s)\n    return s\n\n@app.handler\ndef echo(x):\n    return x\n",
    );
    let hb = Heartbeat {
        interval: Duration::from_millis(300),
        timeout: Duration::from_millis(300),
        max_misses: 2,
    };
    let bound = hb.interval * hb.max_misses + hb.timeout;
    let pool = Pool::builder(launcher(python, app))
        .name("sigstop")
        .workers(1)
        .heartbeat(Some(hb))
        .breaker(None)
        .build()
        .await
        .unwrap();
    let pid = pool.status().workers[0].pid.unwrap();
    let call = spawn_call::<f64>(&pool, "sleep", 60.0);
    let until = Instant::now() + Duration::from_secs(10);
    while pool.status().workers[0].in_flight != 1 {
        assert!(Instant::now() < until, "the call never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Busy and healthy: several heartbeats pass, nothing happens.
    tokio::time::sleep(bound * 2).await;
    assert!(!call.is_finished());
    assert_eq!(pool.status().workers[0].pid, Some(pid));

    kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();
    let t0 = Instant::now();
    let res = tokio::time::timeout(bound + Duration::from_secs(20), call)
        .await
        .expect("the call on a stopped worker never ended")
        .unwrap();
    let took = t0.elapsed();
    match &res {
        Err(PoolError::Call(CallError::WorkerCrashed { cause, pid: p, .. })) => {
            assert_eq!(*cause, CrashCause::Unresponsive, "{res:?}");
            assert_eq!(*p, Some(pid));
        }
        other => panic!("expected WorkerCrashed(Unresponsive), got {other:?}"),
    }
    eprintln!("stopped worker detected after {took:?} (bound {bound:?})");
    // The bound, with slack for a loaded 2-core machine.
    assert!(
        took < bound + Duration::from_secs(3),
        "took {took:?}, bound {bound:?}"
    );
    assert!(portpool_testkit::wait_process_gone(pid, Duration::from_secs(5)).await);
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let st = pool.status();
        if st.ready == 1 && st.workers.len() == 1 && st.workers[0].pid.is_some_and(|p| p != pid) {
            break;
        }
        assert!(Instant::now() < until, "not back to full strength: {st:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v: i64 = pool.call("echo", &3).await.unwrap();
    assert_eq!(v, 3);
    pool.shutdown(Duration::from_secs(2)).await;
}

/// Item 16: when the pool's own `init_timeout` (shorter than the command's)
/// fires, the error still carries the pid and the stderr tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pools_init_timeout_keeps_the_pid_and_stderr_tail() {
    use portpool_transport::LaunchError;

    // A raw worker (no runtime): talks on stderr, never says hello.
    let script = "import sys, time\nsys.stderr.write('loading weights from /models/big.bin\\n')\nsys.stderr.flush()\ntime.sleep(60)\n";
    let command = WorkerCommand::new("python3")
        .args(["-c", script])
        .init_timeout(Duration::from_secs(30));
    let t0 = Instant::now();
    let err = Pool::builder(ProcessLauncher::new(command))
        .name("init-timeout")
        .workers(1)
        .init_timeout(Duration::from_millis(1_500))
        .build()
        .await
        .unwrap_err();
    let took = t0.elapsed();
    let PoolError::Build { errors, .. } = &err else {
        panic!("expected Build, got {err}");
    };
    match &errors[..] {
        [LaunchError::InitTimeout {
            pid,
            after,
            stderr_tail,
            ..
        }] => {
            assert_eq!(*after, Duration::from_millis(1_500));
            let pid = pid.expect("the pid of the worker that timed out");
            assert!(stderr_tail.contains("loading weights"), "{stderr_tail:?}");
            assert!(
                portpool_testkit::wait_process_gone(pid, Duration::from_secs(5)).await,
                "the timed-out worker {pid} is still running"
            );
        }
        other => panic!("expected one InitTimeout, got {other:?}"),
    }
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

/// Params the Python side cannot decode fail only their own call with
/// `InvalidParams`; a call running beside them on the same worker completes
/// and the worker is not replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn params_python_cannot_decode_fail_only_their_call() {
    let Some(python) = python() else { return };
    let source = "import time\nfrom portpool import App\napp = App()\n\n\
                  @app.handler\ndef echo(x):\n    return x\n\n\
                  @app.handler\ndef slow(x):\n    time.sleep(0.5)\n    return x\n";
    let pool = Pool::builder(launcher(python, app("invalid_params", source)))
        .workers(1)
        .build()
        .await
        .unwrap();
    let pid = pool.status().workers[0].pid;
    let slow = spawn_call::<Value>(&pool, "slow", "still here");
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut deep = Value::Nil;
    for _ in 0..1100 {
        deep = Value::Array(vec![deep]);
    }
    let undecodable = [
        (
            "a map keyed by an array",
            Value::Map(vec![(Value::Array(vec![Value::from(1)]), Value::from(1))]),
        ),
        (
            "a map keyed by a map",
            Value::Map(vec![(Value::Map(vec![]), Value::from(1))]),
        ),
        ("a timestamp ext of a bad length", Value::Ext(-1, vec![1, 2, 3])),
        ("params nested 1,100 deep", deep),
    ];
    for (what, params) in undecodable {
        match pool.call_value("echo", params).await {
            Err(PoolError::Call(CallError::Remote { error, .. })) => {
                assert_eq!(error.kind, "InvalidParams", "{what}: {error:?}");
            }
            other => panic!("{what}: expected a Remote InvalidParams error, got {other:?}"),
        }
    }
    assert_eq!(
        slow.await.unwrap().unwrap(),
        Value::from("still here"),
        "the call beside the bad ones completes"
    );
    assert_eq!(
        pool.call_value("echo", Value::from(7)).await.unwrap(),
        Value::from(7)
    );
    let status = pool.status();
    assert_eq!(
        (status.workers[0].pid, status.workers[0].restarts),
        (pid, 0),
        "the worker was not replaced"
    );
    pool.shutdown(Duration::from_secs(5)).await;
}
