//! The bad-input matrix, across every layer (transport, pool, sessions,
//! the Python runtime): one test per row, each with the error it must
//! produce. Real Python workers where the row is about processes
//! (`tests/apps/bad.py` and the raw `tests/apps/raw_*.py` programs).
//! Needs the venv (`cargo xtask setup`) or `PORTPOOL_PYTHON`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use portpool::{
    CallError, CallRequest, LaunchError, Pool, PoolError, ProcessLauncher, SessionConfig, SessionError,
    SessionId, SessionPool, Value, WorkerCommand,
};

fn app(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/apps")
        .join(name)
}

/// The runtime on `bad.py`.
fn bad() -> WorkerCommand {
    WorkerCommand::python_with(portpool_testkit::runtime_python().unwrap(), app("bad.py"))
        .init_timeout(Duration::from_secs(20))
}

/// A raw program (no runtime) from `tests/apps`.
fn raw(name: &str) -> WorkerCommand {
    WorkerCommand::new(portpool_testkit::runtime_python().unwrap())
        .arg(app(name))
        .init_timeout(Duration::from_secs(20))
}

async fn pool(command: WorkerCommand, workers: usize) -> Pool {
    Pool::builder(ProcessLauncher::new(command))
        .name("bad-input")
        .workers(workers)
        .breaker(None)
        .call_timeout(Duration::from_secs(10))
        .build()
        .await
        .expect("workers start (run `cargo xtask setup`)")
}

/// Waits until `n` workers are ready, returning how long it took.
async fn back_to_full(pool: &Pool, n: usize, within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let status = pool.status();
        if status.ready == n {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < within, "pool not back to {n} ready: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn crashed(err: &PoolError) -> &CallError {
    match err {
        PoolError::Call(e @ CallError::WorkerCrashed { .. }) => e,
        other => panic!("expected WorkerCrashed, got {other}"),
    }
}

// ---- method, params and results -------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_method_name_is_a_remote_method_not_found() {
    let pool = pool(bad(), 1).await;
    let err = pool.call::<_, Value>("no_such_method", &1).await.unwrap_err();
    match &err {
        PoolError::Call(CallError::Remote { error, method, .. }) => {
            assert_eq!(method, "no_such_method");
            assert_eq!(error.kind, "MethodNotFound");
            assert!(error.message.contains("echo"), "lists the known methods: {error}");
        }
        other => panic!("expected MethodNotFound, got {other}"),
    }
    assert!(!err.is_worker_fault());
    // Also a name that is not even an identifier.
    let err = pool.call::<_, Value>("../etc/passwd\0", &1).await.unwrap_err();
    assert!(
        matches!(&err, PoolError::Call(CallError::Remote { error, .. }) if error.kind == "MethodNotFound"),
        "{err}"
    );
    pool.shutdown(Duration::from_secs(5)).await;
}

/// A type whose serialization always fails.
struct Unserializable;

impl serde::Serialize for Unserializable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("Unserializable refuses"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn params_that_fail_to_serialize_are_an_encode_error_naming_the_method() {
    let pool = pool(bad(), 1).await;
    let err = pool.call::<_, Value>("echo", &Unserializable).await.unwrap_err();
    match &err {
        PoolError::Encode { method, reason } => {
            assert_eq!(method, "echo");
            assert!(reason.contains("Unserializable refuses"), "{reason}");
        }
        other => panic!("expected Encode, got {other}"),
    }
    // Through a session too.
    let sessions = SessionPool::new(pool.clone(), SessionConfig::default()).unwrap();
    let err = sessions
        .call::<_, Value>(&SessionId::new(), "echo", &Unserializable)
        .await
        .unwrap_err();
    assert!(
        matches!(err, SessionError::Pool(PoolError::Encode { .. })),
        "{err}"
    );
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_that_fails_to_deserialize_is_a_decode_error() {
    let pool = pool(bad(), 1).await;
    let err = pool.call::<_, u64>("echo", &"not a number").await.unwrap_err();
    match &err {
        PoolError::Decode { method, .. } => assert_eq!(method, "echo"),
        other => panic!("expected Decode, got {other}"),
    }
    assert!(!err.is_worker_fault());
    let n: u64 = pool.call("echo", &7).await.unwrap();
    assert_eq!(n, 7);
    pool.shutdown(Duration::from_secs(5)).await;
}

// ---- frame size, both directions ------------------------------------------

const SMALL_FRAME: usize = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_max_frame_is_invalid_and_the_worker_unaffected() {
    let pool = pool(bad().max_frame(SMALL_FRAME), 1).await;
    let pid = pool.status().workers[0].pid;
    let huge = Value::Binary(vec![7; SMALL_FRAME + 1]);
    let err = pool.call_value("echo", huge).await.unwrap_err();
    match &err {
        PoolError::Call(CallError::InvalidRequest { method, reason, .. }) => {
            assert_eq!(method, "echo");
            assert!(reason.contains("exceeds the maximum"), "{reason}");
        }
        other => panic!("expected InvalidRequest, got {other}"),
    }
    assert!(!err.is_worker_fault());
    let ok: String = pool.call("echo", &"next").await.unwrap();
    assert_eq!(ok, "next");
    assert_eq!(pool.status().workers[0].pid, pid, "same worker");
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_over_the_max_frame_is_the_workers_encode_error() {
    // The launcher passes PORTPOOL_MAX_FRAME, so the runtime refuses to send it.
    let pool = pool(bad().max_frame(SMALL_FRAME), 1).await;
    let err = pool
        .call::<_, Value>("big", &(SMALL_FRAME * 2))
        .await
        .unwrap_err();
    match &err {
        PoolError::Call(CallError::Remote { error, .. }) => {
            assert_eq!(error.kind, "EncodeError");
            assert!(error.message.contains("maximum frame size"), "{error}");
        }
        other => panic!("expected a remote EncodeError, got {other}"),
    }
    let ok: Value = pool.call("big", &16).await.unwrap();
    assert_eq!(ok, Value::Binary(vec![b'x'; 16]));
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rogue_worker_sending_an_oversize_frame_is_killed_and_replaced() {
    let pool = pool(raw("raw_oversize.py").max_frame(SMALL_FRAME), 1).await;
    let err = pool.call::<_, Value>("echo", &1).await.unwrap_err();
    let crash = crashed(&err);
    let text = crash.to_string();
    assert!(text.contains("exceeds the maximum"), "{text}");
    assert!(text.contains("protocol violation"), "{text}");
    back_to_full(&pool, 1, Duration::from_secs(10)).await;
    pool.shutdown(Duration::from_secs(2)).await;
}

// ---- output, exits, shutdown, init ----------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_to_fd_1_from_c_does_not_corrupt_frames() {
    let pool = pool(bad(), 1).await;
    for _ in 0..3 {
        let reply: String = pool.call("c_write", &()).await.unwrap();
        assert_eq!(reply, "framing intact");
        let n: u64 = pool.call("echo", &42).await.unwrap();
        assert_eq!(n, 42);
    }
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_closing_its_stdout_fails_the_call_and_is_replaced() {
    let pool = pool(raw("raw_close_stdout.py"), 1).await;
    let pid = pool.status().workers[0].pid.unwrap();
    let err = pool.call::<_, Value>("echo", &1).await.unwrap_err();
    match crashed(&err) {
        CallError::WorkerCrashed { reason, pid: p, .. } => {
            assert_eq!(reason, "stdout closed");
            assert_eq!(*p, Some(pid));
        }
        _ => unreachable!(),
    }
    assert!(
        portpool_testkit::wait_process_gone(pid, Duration::from_secs(3)).await,
        "the sleeping worker is killed"
    );
    back_to_full(&pool, 1, Duration::from_secs(10)).await;
    assert_ne!(pool.status().workers[0].pid, Some(pid));
    pool.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_exiting_0_mid_call_is_a_crash_with_exit_code_0() {
    let pool = pool(bad(), 2).await;
    let err = pool.call::<_, Value>("exit0", &()).await.unwrap_err();
    let text = crashed(&err).to_string();
    assert!(text.contains("exit code 0"), "{text}");
    assert!(err.is_worker_fault());
    back_to_full(&pool, 2, Duration::from_secs(10)).await;
    let n: u64 = pool.call("echo", &1).await.unwrap();
    assert_eq!(n, 1);
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_over_its_cpu_limit_is_killed_by_sigxcpu_and_replaced() {
    let pool = pool(bad().limit_cpu_time(Duration::from_secs(1)), 2).await;
    let err = pool.call::<_, Value>("spin", &()).await.unwrap_err();
    let text = crashed(&err).to_string();
    assert!(text.contains("SIGXCPU") || text.contains("SIGKILL"), "{text}");
    let took = back_to_full(&pool, 2, Duration::from_secs(10)).await;
    println!("replaced within {took:?}");
    assert!(pool.status().workers.iter().map(|w| w.restarts).sum::<u64>() >= 1);
    let n: u64 = pool.call("echo", &1).await.unwrap();
    assert_eq!(n, 1);
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_ignoring_shutdown_is_terminated_then_killed_within_bounds() {
    let pool = pool(raw("raw_ignore_shutdown.py"), 2).await;
    let pids: Vec<u32> = pool.status().workers.iter().filter_map(|w| w.pid).collect();
    assert_eq!(pids.len(), 2);
    let t0 = Instant::now();
    pool.shutdown(Duration::from_millis(300)).await;
    let took = t0.elapsed();
    // grace 0.3 s, then SIGTERM (ignored) and 1 s later SIGKILL.
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    for pid in pids {
        assert!(
            portpool_testkit::wait_process_gone(pid, Duration::from_secs(2)).await,
            "{pid} survived"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_init_that_never_ends_fails_the_build_fast_with_the_diagnosis() {
    let command = bad()
        .env("BAD_IMPORT_SLEEP", "3600")
        // Long enough for the app's "importing slowly" line to be written
        // on a loaded machine, short enough to keep the test quick.
        .init_timeout(Duration::from_secs(4));
    let t0 = Instant::now();
    let err = Pool::builder(ProcessLauncher::new(command))
        .name("never-ready")
        .workers(2)
        .build()
        .await
        .unwrap_err();
    let took = t0.elapsed();
    // A hang bound, not a timing: the time-out plus a generous margin.
    assert!(took < Duration::from_secs(20), "build took {took:?} to fail");
    match &err {
        PoolError::Build { errors, .. } => {
            assert_eq!(errors.len(), 2, "{err}");
            for e in errors {
                assert!(matches!(e, LaunchError::InitTimeout { .. }), "{e}");
                assert!(e.stderr_tail().contains("importing slowly"), "{e}");
            }
        }
        other => panic!("expected Build, got {other}"),
    }
}

// ---- sessions and lifecycle ------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_or_overlong_session_ids_are_refused() {
    for bad_id in [
        String::new(),
        "x".repeat(129),
        "x".repeat(1 << 20),
        "with space".into(),
        "new\nline".into(),
        "caf\u{e9}".into(),
        "nul\0".into(),
    ] {
        let err = SessionId::parse(bad_id.clone()).unwrap_err();
        match &err {
            SessionError::InvalidId { id, .. } => assert!(id.chars().count() <= 40, "{err}"),
            other => panic!("expected InvalidId for {bad_id:?}, got {other}"),
        }
        assert!(bad_id.parse::<SessionId>().is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_after_shutdown_are_pool_closed() {
    let pool = pool(bad(), 1).await;
    let _: u64 = pool.call("echo", &1).await.unwrap();
    pool.shutdown(Duration::from_secs(5)).await;

    let err = pool.call::<_, u64>("echo", &1).await.unwrap_err();
    assert!(matches!(err, PoolError::PoolClosed { .. }), "{err}");
    let err = pool.call_raw(CallRequest::new("echo", 1)).await.unwrap_err();
    assert!(matches!(err, PoolError::PoolClosed { .. }), "{err}");
    let err = pool.stream(CallRequest::new("echo", 1)).await.err().unwrap();
    assert!(matches!(err, PoolError::PoolClosed { .. }), "{err}");
    let err = pool.checkout().await.err().unwrap();
    assert!(matches!(err, PoolError::PoolClosed { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_calls_after_shutdown_are_pool_closed() {
    let pool = pool(bad(), 1).await;
    let sessions = SessionPool::new(pool.clone(), SessionConfig::default()).unwrap();
    let bound = SessionId::new();
    let _: u64 = sessions.call(&bound, "echo", &1).await.unwrap();
    pool.shutdown(Duration::from_secs(5)).await;
    for (what, session) in [("bound", bound), ("unbound", SessionId::new())] {
        let err = sessions.call::<_, u64>(&session, "echo", &1).await.unwrap_err();
        assert!(
            matches!(err, SessionError::Pool(PoolError::PoolClosed { .. })),
            "{what} session: expected Pool(PoolClosed), got {err}"
        );
    }
}

fn pids_in(dir: &Path) -> Vec<u32> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_build_mid_start_leaves_no_worker_process() {
    let dir = std::env::temp_dir().join(format!("portpool-bad-build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let command = bad().env("BAD_PID_DIR", &dir).env("BAD_IMPORT_SLEEP", "30");
    // Boxed, so that `drop` below really drops the future.
    let mut build = Box::pin(
        Pool::builder(ProcessLauncher::new(command))
            .name("dropped-build")
            .workers(3)
            .startup_concurrency(3)
            .build(),
    );
    // Drop the build once every worker is running its (slow) import.
    let all_started = async {
        while pids_in(&dir).len() < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        r = &mut build => panic!("build finished during a 30 s import: {:?}", r.map(|_| ())),
        _ = tokio::time::timeout(Duration::from_secs(15), all_started) => {}
    }
    drop(build);
    let pids = pids_in(&dir);
    assert_eq!(pids.len(), 3, "{pids:?}");
    for pid in pids {
        assert!(
            portpool_testkit::wait_process_gone(pid, Duration::from_secs(3)).await,
            "worker {pid} outlived the dropped build: {:?}",
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
