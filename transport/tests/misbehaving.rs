//! Misbehaving workers written without the runtime
//! (`tests/workers/raw_worker.py MODE`): each misbehaviour ends in a typed
//! cause a user can `match` on, within a bound, with no process left.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portpool_transport::*;

fn raw_command(mode: &str, arg: &str) -> WorkerCommand {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/raw_worker.py");
    WorkerCommand::new(portpool_testkit::runtime_python().unwrap())
        .arg(script)
        .arg(mode)
        .arg(arg)
        .init_timeout(Duration::from_secs(10))
}

fn raw(mode: &str) -> ProcessLauncher {
    ProcessLauncher::new(raw_command(mode, ""))
}

async fn wait_stderr(worker: &ProcessWorker, text: &str) {
    let until = Instant::now() + Duration::from_secs(10);
    while !worker.stderr_tail().contains(text) {
        assert!(Instant::now() < until, "no {text:?} in {}", worker.stderr_tail());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn crash_cause(result: &Result<Value, CallError>) -> CrashCause {
    match result {
        Err(CallError::WorkerCrashed { cause, .. }) => *cause,
        other => panic!("expected WorkerCrashed, got {other:?}"),
    }
}

/// Checks the worker is known dead, `closed()` resolves, and its process
/// is gone.
async fn assert_dead_and_gone(worker: &ProcessWorker) {
    assert!(!worker.is_alive());
    tokio::time::timeout(Duration::from_secs(5), worker.closed())
        .await
        .expect("closed() resolves");
    let pid = worker.info().pid.unwrap();
    assert!(
        portpool_testkit::wait_process_gone(pid, Duration::from_secs(3)).await,
        "worker {pid} was killed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_closing_its_stdin_fails_every_call_at_once_with_stdin_closed() {
    let worker = Arc::new(raw("stdin_closed").spawn(WorkerId(1)).await.unwrap());
    // The first call is read by the worker, which then closes its stdin.
    let first = tokio::spawn({
        let worker = worker.clone();
        async move { worker.call(CallRequest::new("anything", 1)).await }
    });
    wait_stderr(&worker, "stdin closed").await;
    assert!(worker.is_alive(), "nothing was written since");
    // The next write breaks the pipe: both calls end, at once.
    let started = Instant::now();
    let second = worker.call(CallRequest::new("anything", 2)).await;
    let first = tokio::time::timeout(Duration::from_secs(5), first)
        .await
        .expect("the in-flight call ends")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    for result in [&first, &second] {
        assert_eq!(crash_cause(result), CrashCause::StdinClosed, "{result:?}");
        let text = result.as_ref().unwrap_err().to_string();
        assert!(text.contains("stdin"), "{text}");
        assert!(
            text.contains("stdin closed"),
            "the stderr tail is attached: {text}"
        );
    }
    assert_eq!(worker.in_flight(), 0);
    assert_dead_and_gone(&worker).await;
    assert_eq!(
        crash_cause(&worker.call(CallRequest::new("anything", 3)).await),
        CrashCause::StdinClosed,
        "later calls fail with the same cause"
    );
}

/// A worker replying with `levels` nested arrays: the host survives, the
/// worker is killed and both of its calls fail with `TooDeep`.
async fn deep_reply(levels: usize) {
    let launcher = ProcessLauncher::new(raw_command("deep_reply", &levels.to_string()));
    let worker = Arc::new(launcher.spawn(WorkerId(2)).await.unwrap());
    let calls: Vec<_> = (0..2)
        .map(|i| {
            let worker = worker.clone();
            tokio::spawn(async move { worker.call(CallRequest::new("anything", i)).await })
        })
        .collect();
    for call in calls {
        let result = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("the call ends")
            .unwrap();
        assert_eq!(crash_cause(&result), CrashCause::TooDeep, "{levels}: {result:?}");
        let text = result.unwrap_err().to_string();
        assert!(text.contains("nested deeper than 1024 levels"), "{text}");
    }
    assert_dead_and_gone(&worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_nested_too_deep_kills_the_worker_not_the_host() {
    deep_reply(1500).await;
    deep_reply(100_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_nested_600_deep_is_delivered_without_overflowing_the_reader() {
    // 600 levels overflowed the reader's 2 MiB stack in debug builds before
    // the depth bound; now it is a legal reply (the limit is 1024) and is
    // decoded on a big-stack helper thread. The worker answers the first
    // call with it and ignores the second, which is cancelled by a timeout.
    let launcher = ProcessLauncher::new(raw_command("deep_reply", "600"));
    let worker = Arc::new(launcher.spawn(WorkerId(3)).await.unwrap());
    let first = tokio::spawn({
        let worker = worker.clone();
        async move { worker.call(CallRequest::new("anything", 0)).await }
    });
    while worker.in_flight() < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = worker
        .call(CallRequest::new("anything", 1).with_timeout(Duration::from_secs(3)))
        .await;
    assert!(matches!(second, Err(CallError::Timeout { .. })), "{second:?}");
    let mut value = first.await.unwrap().expect("the deep reply arrives");
    let mut levels = 0;
    while let Value::Array(mut items) = value {
        levels += 1;
        value = items.pop().unwrap();
    }
    assert_eq!(levels, 600);
    assert_eq!(value, Value::from(1));
    assert!(worker.is_alive());
    worker.kill(CrashCause::Killed, "test over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_in_call_misbehaviour_has_its_typed_cause() {
    let cases = [
        ("huge_header", CrashCause::FrameTooLarge, "exceeds the maximum"),
        ("invalid_msgpack", CrashCause::Malformed, "malformed"),
        (
            "sends_request",
            CrashCause::UnexpectedMessage,
            "unexpected request",
        ),
        ("hello_twice", CrashCause::UnexpectedMessage, "unexpected hello"),
        ("close_stdout", CrashCause::StdoutClosed, "stdout closed"),
        ("exit_at_first_request", CrashCause::Exited, "exited"),
    ];
    for (mode, expected, text) in cases {
        let worker = raw(mode).spawn(WorkerId(4)).await.unwrap();
        let started = Instant::now();
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            worker.call(CallRequest::new("anything", 1)),
        )
        .await
        .unwrap_or_else(|_| panic!("{mode}: the call hangs"));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{mode}: {:?}",
            started.elapsed()
        );
        let cause = crash_cause(&result);
        assert_eq!(cause, expected, "{mode}: {result:?}");
        // What a downstream user would write: a match on the cause.
        let kind = match cause {
            CrashCause::FrameTooLarge | CrashCause::Malformed | CrashCause::UnexpectedMessage => "protocol",
            CrashCause::StdoutClosed | CrashCause::Exited => "gone",
            _ => "other",
        };
        assert_ne!(kind, "other", "{mode}");
        let message = result.unwrap_err().to_string();
        assert!(message.contains(text), "{mode}: {message}");
        if mode == "exit_at_first_request" {
            assert!(message.contains("exit code 5"), "{message}");
        }
        assert_dead_and_gone(&worker).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_hello_has_its_typed_cause() {
    let cases = [
        // "Load" read as a length: far over the maximum frame.
        ("garbage_before_hello", "", HelloCause::FrameTooLarge),
        ("version", "2", HelloCause::VersionMismatch { worker: 2, host: 1 }),
        ("deep_hello", "5000", HelloCause::TooDeep),
    ];
    for (mode, arg, expected) in cases {
        let started = Instant::now();
        let err = ProcessLauncher::new(raw_command(mode, arg))
            .spawn(WorkerId(5))
            .await
            .unwrap_err();
        match &err {
            LaunchError::BadHello { cause, pid, .. } => {
                assert_eq!(*cause, expected, "{mode}: {err}");
                assert!(
                    portpool_testkit::wait_process_gone(pid.unwrap(), Duration::from_secs(3)).await,
                    "{mode}: killed"
                );
            }
            other => panic!("{mode}: expected BadHello, got {other}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{mode}: no hang");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_within_a_silent_worker_keeps_its_pid_and_stderr() {
    let launcher =
        ProcessLauncher::new(raw_command("no_hello_stderr", "").init_timeout(Duration::from_secs(60)));
    let started = Instant::now();
    let err = match launcher
        .launch_within(WorkerId(6), Duration::from_millis(700))
        .await
    {
        Err(e) => e,
        Ok(_) => panic!("a worker that never says hello launched"),
    };
    match &err {
        LaunchError::InitTimeout {
            pid: Some(pid),
            after,
            stderr_tail,
            ..
        } => {
            assert_eq!(*after, Duration::from_millis(700));
            assert!(stderr_tail.contains("warming up forever"), "{err}");
            assert!(
                portpool_testkit::wait_process_gone(*pid, Duration::from_secs(3)).await,
                "killed"
            );
        }
        other => panic!("expected InitTimeout with a pid, got {other}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_fails_the_call_in_flight_with_the_given_cause() {
    let worker = Arc::new(raw("silent").spawn(WorkerId(7)).await.unwrap());
    let call = tokio::spawn({
        let worker = worker.clone();
        async move { worker.call(CallRequest::new("anything", 1)).await }
    });
    while worker.in_flight() < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    worker.kill(CrashCause::Unresponsive, "missed heartbeats");
    let result = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("the call ends")
        .unwrap();
    match &result {
        Err(CallError::WorkerCrashed {
            cause, reason, exit, ..
        }) => {
            assert_eq!(*cause, CrashCause::Unresponsive);
            assert_eq!(reason, "missed heartbeats");
            assert_eq!(exit.signal, Some(9), "{exit}");
        }
        other => panic!("expected WorkerCrashed, got {other:?}"),
    }
    assert_dead_and_gone(&worker).await;
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The process state letter from `/proc/<pid>/stat` (`R`, `S`, `T`, `Z`...).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim_start().chars().next()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_ends_a_stopped_worker_and_cpu_time_tells_busy_from_stopped() {
    let worker = Arc::new(raw("busy").spawn(WorkerId(8)).await.unwrap());
    let pid = worker.info().pid.unwrap();
    let call = tokio::spawn({
        let worker = worker.clone();
        async move { worker.call(CallRequest::new("anything", 1)).await }
    });
    wait_stderr(&worker, "spinning").await;

    // Busy: CPU time grows.
    let before = worker.cpu_time().expect("cpu time of a live worker");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = worker.cpu_time().unwrap();
    assert!(after > before, "busy: {before:?} -> {after:?}");

    // Stopped: it stays flat.
    signal(pid, "-STOP");
    let until = Instant::now() + Duration::from_secs(3);
    while proc_state(pid) != Some('T') {
        assert!(Instant::now() < until, "state {:?}", proc_state(pid));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = worker.cpu_time().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = worker.cpu_time().unwrap();
    assert_eq!(before, after, "stopped");
    assert!(worker.is_alive(), "a stopped worker looks alive until killed");

    // SIGKILL ends a stopped process too.
    worker.kill(CrashCause::Unresponsive, "stopped");
    let result = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("the call ends")
        .unwrap();
    assert_eq!(crash_cause(&result), CrashCause::Unresponsive);
    assert_dead_and_gone(&worker).await;
    assert_eq!(worker.cpu_time(), None, "no process, no cpu time");
}
