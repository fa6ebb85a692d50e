//! Per-worker resource limits (RLIMIT_AS, RLIMIT_CPU, RLIMIT_NOFILE) and
//! environment hygiene, against the real Python runtime.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use portpool_transport::*;

fn app() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/apps/limits.py")
}

fn command() -> WorkerCommand {
    WorkerCommand::python_with(portpool_testkit::runtime_python().unwrap(), app())
        .init_timeout(Duration::from_secs(20))
}

async fn spawn(command: WorkerCommand) -> ProcessWorker {
    ProcessLauncher::new(command)
        .spawn(WorkerId(1))
        .await
        .expect("the limited worker starts")
}

fn remote_kind(err: &CallError) -> Option<&str> {
    match err {
        CallError::Remote { error, .. } => Some(error.kind.as_str()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_space_limit_turns_a_huge_allocation_into_memory_error() {
    let worker = spawn(command().limit_address_space(768 * 1024 * 1024)).await;
    // Well under the limit: fine.
    let small = worker.call(CallRequest::new("alloc", 16)).await.unwrap();
    assert_eq!(small, Value::from(16 * 1024 * 1024));
    // Far over it: a clear, typed error, not a crash or an OOM kill.
    let err = worker.call(CallRequest::new("alloc", 4096)).await.unwrap_err();
    assert_eq!(remote_kind(&err), Some("MemoryError"), "{err}");
    // The worker survives and keeps serving.
    assert!(worker.is_alive());
    let echoed = worker.call(CallRequest::new("echo", "still here")).await.unwrap();
    assert_eq!(echoed, Value::from("still here"));
    worker.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_time_limit_ends_a_spinning_worker_with_sigxcpu() {
    let worker = spawn(command().limit_cpu_time(Duration::from_secs(1))).await;
    let started = Instant::now();
    let err = worker
        .call(CallRequest::new("spin", Value::Nil).with_timeout(Duration::from_secs(20)))
        .await
        .unwrap_err();
    let took = started.elapsed();
    match &err {
        CallError::WorkerCrashed { exit, .. } => {
            // SIGXCPU (24) at the soft limit; SIGKILL (9) at the hard one.
            assert!(
                matches!(exit.signal, Some(24) | Some(9)),
                "expected SIGXCPU or SIGKILL, got {exit}"
            );
            let text = err.to_string();
            assert!(text.contains("SIGXCPU") || text.contains("SIGKILL"), "{text}");
        }
        other => panic!("expected WorkerCrashed, got {other}"),
    }
    assert!(
        took < Duration::from_secs(10),
        "the CPU limit took {took:?} to act"
    );
    assert!(!worker.is_alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_files_limit_makes_opening_many_files_fail_with_oserror() {
    let worker = spawn(command().limit_open_files(64)).await;
    let few = worker.call(CallRequest::new("open_many", 8)).await.unwrap();
    assert_eq!(few, Value::from(8));
    let err = worker.call(CallRequest::new("open_many", 500)).await.unwrap_err();
    assert_eq!(remote_kind(&err), Some("OSError"), "{err}");
    assert!(err.to_string().contains("Too many open files"), "{err}");
    // Files were closed again: the worker is fine.
    let again = worker.call(CallRequest::new("open_many", 8)).await.unwrap();
    assert_eq!(again, Value::from(8));
    worker.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_above_the_inherited_hard_limit_do_not_fail_the_spawn() {
    // An unprivileged process cannot raise its hard limits: the launcher
    // clamps to them instead of failing the spawn.
    let worker = spawn(
        command()
            .limit_open_files(u64::MAX / 2)
            .limit_address_space(u64::MAX / 2)
            .limit_cpu_time(Duration::from_secs(3600)),
    )
    .await;
    let echoed = worker.call(CallRequest::new("echo", 1)).await.unwrap();
    assert_eq!(echoed, Value::from(1));
    worker.shutdown(Duration::from_secs(5)).await;
}

async fn environ_of(command: WorkerCommand) -> BTreeSet<String> {
    let worker = spawn(command).await;
    let keys = worker
        .call(CallRequest::new("environ", Value::Nil))
        .await
        .unwrap();
    worker.shutdown(Duration::from_secs(5)).await;
    keys.as_array()
        .expect("a list of names")
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_allowlist_passes_only_the_allowed_variables() {
    std::env::set_var("PORTPOOL_TEST_SECRET", "hunter2");
    std::env::set_var("PORTPOOL_TEST_ALLOWED", "yes");
    // Inherited by default...
    let inherited = environ_of(command()).await;
    assert!(inherited.contains("PORTPOOL_TEST_SECRET"), "{inherited:?}");

    // ...but not with an allow-list. An allowed variable the parent lacks
    // is simply absent.
    let keys = environ_of(
        command()
            .env_allowlist(["PATH", "PORTPOOL_TEST_ALLOWED", "PORTPOOL_TEST_UNSET_VARIABLE"])
            .env("EXTRA", "1"),
    )
    .await;
    let expected: BTreeSet<String> = [
        "PATH",
        "PORTPOOL_TEST_ALLOWED",
        "EXTRA",
        // Set by WorkerCommand::python and by the launcher.
        "PYTHONUNBUFFERED",
        "PORTPOOL_MAX_FRAME",
        // CPython's C-locale coercion sets this when LANG/LC_* are unset.
        "LC_CTYPE",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let unexpected: Vec<_> = keys.difference(&expected).collect();
    assert!(unexpected.is_empty(), "not allowed but present: {unexpected:?}");
    for key in ["PATH", "PORTPOOL_TEST_ALLOWED", "EXTRA", "PORTPOOL_MAX_FRAME"] {
        assert!(keys.contains(key), "{key} missing from {keys:?}");
    }

    // An empty allow-list: Python starts with (almost) nothing.
    let bare = environ_of(command().env_allowlist(Vec::<String>::new())).await;
    let unexpected: Vec<_> = bare
        .iter()
        .filter(|k| !["PYTHONUNBUFFERED", "PORTPOOL_MAX_FRAME", "LC_CTYPE"].contains(&k.as_str()))
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:?}");
}
