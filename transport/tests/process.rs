//! The process transport against the real Python runtime and small
//! misbehaving programs.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use portpool_transport::*;

fn app(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/apps")
        .join(name)
}

fn basic() -> ProcessLauncher {
    ProcessLauncher::new(
        WorkerCommand::python_with(portpool_testkit::runtime_python().unwrap(), app("basic.py"))
            .init_timeout(Duration::from_secs(20)),
    )
}

/// A plain Python program (not the runtime) given as `-c` source.
fn script(source: &str) -> ProcessLauncher {
    ProcessLauncher::new(
        WorkerCommand::new(portpool_testkit::runtime_python().unwrap())
            .args(["-c", source])
            .init_timeout(Duration::from_secs(5)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_echo_errors_streams_and_sessions() {
    let worker = basic().spawn(WorkerId(1)).await.expect("worker starts");
    let info = worker.info();
    assert_eq!(info.hello.runtime, "python");
    assert_eq!(info.hello.pid, info.pid.unwrap());
    assert!(info.hello.methods.contains(&"echo".to_string()));

    let echoed = worker.call(CallRequest::new("echo", "hi")).await.unwrap();
    assert_eq!(echoed, Value::from("hi"));
    let bin = worker
        .call(CallRequest::new("echo", Value::Binary(vec![0, 255, 7])))
        .await
        .unwrap();
    assert_eq!(bin, Value::Binary(vec![0, 255, 7]), "bin stays bin");

    match worker.call(CallRequest::new("fail", 7)).await {
        Err(CallError::Remote {
            error,
            method,
            worker: id,
        }) => {
            assert_eq!(id, WorkerId(1));
            assert_eq!(method, "fail");
            assert_eq!(error.kind, "ValueError");
            assert_eq!(error.message, "bad input: 7");
            assert!(
                error.traceback.as_deref().unwrap_or("").contains("in fail"),
                "{error:?}"
            );
        }
        other => panic!("expected a remote error, got {other:?}"),
    }
    match worker.call(CallRequest::new("no_such_method", Value::Nil)).await {
        Err(CallError::Remote { error, .. }) => {
            assert!(error.message.contains("no_such_method"), "{error:?}")
        }
        other => panic!("expected a remote error, got {other:?}"),
    }

    let items: Vec<_> = worker
        .stream(CallRequest::new("count", 5))
        .await
        .unwrap()
        .collect()
        .await;
    let items: Vec<Value> = items.into_iter().map(Result::unwrap).collect();
    assert_eq!(items, (0..5).map(Value::from).collect::<Vec<_>>());

    for expected in 1..=3 {
        let n = worker
            .call(CallRequest::new("counter", Value::Nil).with_session("s1"))
            .await
            .unwrap();
        assert_eq!(n, Value::from(expected));
    }
    worker.close_session("s1").await.unwrap();
    let n = worker
        .call(CallRequest::new("counter", Value::Nil).with_session("s1"))
        .await
        .unwrap();
    assert_eq!(n, Value::from(1), "session_close dropped the state");

    let rtt = worker.ping(Duration::from_secs(5)).await.unwrap();
    assert!(rtt < Duration::from_secs(5));
    assert!(worker.rss_bytes().unwrap() > 1024 * 1024);
    assert_eq!(worker.in_flight(), 0);

    let exit = worker.shutdown(Duration::from_secs(5)).await;
    assert!(exit.success(), "{exit}");
    assert!(!worker.is_alive());
    assert!(matches!(
        worker.call(CallRequest::new("echo", 1)).await,
        Err(CallError::WorkerClosed { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_calls_each_get_their_own_reply() {
    let worker = std::sync::Arc::new(basic().spawn(WorkerId(1)).await.unwrap());
    let calls = (0..1000u64).map(|i| {
        let worker = worker.clone();
        tokio::spawn(async move { (i, worker.call(CallRequest::new("jitter", i)).await) })
    });
    let results = futures::future::join_all(calls).await;
    for joined in results {
        let (i, result) = joined.unwrap();
        assert_eq!(
            result.unwrap(),
            Value::from(i),
            "call {i} got another call's reply"
        );
    }
    assert_eq!(worker.in_flight(), 0);
    assert_eq!(worker.discarded_replies(), 0);
    worker.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printing_to_stdout_does_not_corrupt_frames() {
    let worker = basic().spawn(WorkerId(1)).await.unwrap();
    for _ in 0..3 {
        let reply = worker.call(CallRequest::new("noisy", Value::Nil)).await.unwrap();
        assert_eq!(reply, Value::from("still framed"));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        worker.stderr_tail().contains("printed to stdout by a handler"),
        "{}",
        worker.stderr_tail()
    );
    worker.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_dropped_calls_cancel_and_late_replies_are_discarded() {
    let worker = basic().spawn(WorkerId(1)).await.unwrap();

    let timed_out = worker
        .call(CallRequest::new("cancellable", 2.0).with_timeout(Duration::from_millis(100)))
        .await;
    assert!(
        matches!(timed_out, Err(CallError::Timeout { ref method, .. }) if method == "cancellable"),
        "{timed_out:?}"
    );

    // A dropped future cancels too.
    let dropped = tokio::time::timeout(
        Duration::from_millis(100),
        worker.call(CallRequest::new("cancellable", 2.0)),
    )
    .await;
    assert!(dropped.is_err(), "the call was still running when dropped");
    assert_eq!(worker.in_flight(), 0, "abandoned calls leave no slot behind");

    // The next call gets its own reply, not a late one.
    assert_eq!(
        worker.call(CallRequest::new("echo", "mine")).await.unwrap(),
        Value::from("mine")
    );

    // The worker saw both cancels and answered them; those answers were dropped.
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let cancelled = worker
            .call(CallRequest::new("cancelled", Value::Nil))
            .await
            .unwrap();
        if cancelled == Value::from(2) && worker.discarded_replies() >= 2 {
            break;
        }
        assert!(
            Instant::now() < until,
            "cancelled={cancelled} discarded={}",
            worker.discarded_replies()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A dropped stream cancels as well.
    let mut stream = worker.stream(CallRequest::new("count", 1_000_000)).await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap(), Value::from(0));
    drop(stream);
    assert_eq!(worker.in_flight(), 0);
    assert_eq!(
        worker.call(CallRequest::new("echo", 5)).await.unwrap(),
        Value::from(5)
    );
    worker.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_request_is_refused_without_harming_the_worker() {
    let launcher = ProcessLauncher::new(
        WorkerCommand::python_with(portpool_testkit::runtime_python().unwrap(), app("basic.py"))
            .max_frame(1024),
    );
    let worker = launcher.spawn(WorkerId(1)).await.unwrap();
    let err = worker
        .call(CallRequest::new("echo", Value::Binary(vec![0; 4096])))
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::InvalidRequest { .. }), "{err}");
    assert!(
        err.to_string().contains("exceeds the maximum of 1024 bytes"),
        "{err}"
    );
    assert_eq!(
        worker.call(CallRequest::new("echo", 1)).await.unwrap(),
        Value::from(1)
    );

    // The worker was told the limit (PORTPOOL_MAX_FRAME): an oversize reply
    // is its typed error, and the worker lives on.
    let err = worker.call(CallRequest::new("big", 4096)).await.unwrap_err();
    match &err {
        CallError::Remote { error, .. } => assert_eq!(error.kind, "EncodeError", "{err}"),
        other => panic!("expected an EncodeError, got {other}"),
    }
    assert_eq!(
        worker.call(CallRequest::new("echo", 2)).await.unwrap(),
        Value::from(2)
    );

    // A worker that ignores the limit commits a protocol violation: it is
    // killed and the call fails with the reason.
    let source = "import os, sys, time, msgpack\n\
hello = msgpack.packb({'type': 'hello', 'protocol_major': 1, 'protocol_minor': 0, 'pid': os.getpid(), 'max_concurrency': 1})\n\
sys.stdout.buffer.write(len(hello).to_bytes(4, 'big') + hello); sys.stdout.flush()\n\
sys.stdin.buffer.read(4)\n\
sys.stdout.buffer.write((1 << 20).to_bytes(4, 'big')); sys.stdout.flush()\n\
time.sleep(60)";
    let rogue = ProcessLauncher::new(
        WorkerCommand::new(portpool_testkit::runtime_python().unwrap())
            .args(["-c", source])
            .max_frame(1024),
    );
    let worker = rogue.spawn(WorkerId(2)).await.unwrap();
    let err = worker.call(CallRequest::new("anything", 1)).await.unwrap_err();
    match &err {
        CallError::WorkerCrashed { reason, .. } => {
            assert!(
                reason.contains("frame of 1048576 bytes exceeds the maximum of 1024"),
                "{err}"
            )
        }
        other => panic!("expected WorkerCrashed, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_call_fails_every_in_flight_call_within_a_second() {
    let worker = std::sync::Arc::new(basic().spawn(WorkerId(7)).await.unwrap());
    let pid = worker.info().pid.unwrap();
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let worker = worker.clone();
            tokio::spawn(async move { worker.call(CallRequest::new("sleep", 30)).await })
        })
        .collect();
    while worker.in_flight() < 20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let killed_at = Instant::now();
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    for call in calls {
        match call.await.unwrap() {
            Err(CallError::WorkerCrashed {
                worker: id,
                pid: p,
                exit,
                cause,
                ..
            }) => {
                assert_eq!(
                    cause,
                    CrashCause::Exited,
                    "killed from outside: it ended by itself"
                );
                assert_eq!(id, WorkerId(7));
                assert_eq!(p, Some(pid));
                assert_eq!(exit.signal, Some(9), "{exit}");
            }
            other => panic!("expected WorkerCrashed, got {other:?}"),
        }
    }
    assert!(
        killed_at.elapsed() < Duration::from_secs(1),
        "took {:?}",
        killed_at.elapsed()
    );
    let exit = worker.closed().await;
    assert!(exit.to_string().contains("SIGKILL"), "{exit}");
    assert!(!worker.is_alive());
    let after = worker.call(CallRequest::new("echo", 1)).await.unwrap_err();
    assert!(matches!(after, CallError::WorkerCrashed { .. }), "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_during_init_reports_the_code_and_traceback_quickly() {
    let dir = std::env::temp_dir().join(format!("portpool-transport-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exits = dir.join("exits.py");
    std::fs::write(
        &exits,
        "import sys\nsys.stderr.write('configuration missing\\n')\nraise SystemExit(3)\n",
    )
    .unwrap();
    let imports = dir.join("imports.py");
    std::fs::write(
        &imports,
        "import portpool\nimport no_such_module_xyz\napp = portpool.App()\n",
    )
    .unwrap();

    let started = Instant::now();
    match ProcessLauncher::new(WorkerCommand::python_with(
        portpool_testkit::runtime_python().unwrap(),
        &exits,
    ))
    .spawn(WorkerId(1))
    .await
    {
        Err(LaunchError::ExitedDuringInit {
            exit,
            stderr_tail,
            pid,
            ..
        }) => {
            assert_eq!(exit.code, Some(3));
            assert!(pid.is_some());
            assert!(stderr_tail.contains("configuration missing"), "{stderr_tail}");
        }
        other => panic!("expected ExitedDuringInit, got {other:?}"),
    }
    let err = ProcessLauncher::new(WorkerCommand::python_with(
        portpool_testkit::runtime_python().unwrap(),
        &imports,
    ))
    .spawn(WorkerId(2))
    .await
    .unwrap_err();
    assert!(matches!(err, LaunchError::ExitedDuringInit { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("worker-2") && text.contains("exit code"), "{text}");
    assert!(
        text.contains("Traceback") && text.contains("no_such_module_xyz"),
        "{text}"
    );
    // Both together, including interpreter start-up, well within a few seconds.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_never_says_hello_times_out_with_its_stderr() {
    let launcher = ProcessLauncher::new(
        WorkerCommand::new(portpool_testkit::runtime_python().unwrap())
            .args([
                "-c",
                "import sys, time\nsys.stderr.write('warming up forever\\n')\ntime.sleep(60)",
            ])
            .init_timeout(Duration::from_millis(500)),
    );
    let err = launcher.spawn(WorkerId(3)).await.unwrap_err();
    match &err {
        LaunchError::InitTimeout {
            after,
            stderr_tail,
            pid,
            ..
        } => {
            assert_eq!(*after, Duration::from_millis(500));
            assert!(stderr_tail.contains("warming up forever"), "{err}");
            assert!(
                portpool_testkit::wait_process_gone(pid.unwrap(), Duration::from_secs(2)).await,
                "killed"
            );
        }
        other => panic!("expected InitTimeout, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_hellos_are_typed_errors_and_the_worker_is_killed() {
    let cases = [
        ("garbage", "import sys, time\nsys.stdout.buffer.write(b'Hello from a chatty import!\\n'); sys.stdout.flush()\ntime.sleep(60)", "exceeds the maximum", HelloCause::FrameTooLarge),
        ("1 GiB header", "import sys, time\nsys.stdout.buffer.write(b'\\x40\\x00\\x00\\x00'); sys.stdout.flush()\ntime.sleep(60)", "frame of 1073741824 bytes exceeds", HelloCause::FrameTooLarge),
        ("invalid msgpack", "import sys, time\nsys.stdout.buffer.write(b'\\x00\\x00\\x00\\x01\\xc1'); sys.stdout.flush()\ntime.sleep(60)", "malformed", HelloCause::Malformed),
        ("wrong first message", "import sys, time, msgpack\nb = msgpack.packb({'type': 'pong', 'id': 1})\nsys.stdout.buffer.write(len(b).to_bytes(4, 'big') + b); sys.stdout.flush()\ntime.sleep(60)", "expected hello first, got pong", HelloCause::NotHello),
        ("protocol 2", "import sys, time, msgpack\nb = msgpack.packb({'type': 'hello', 'protocol_major': 2, 'protocol_minor': 0})\nsys.stdout.buffer.write(len(b).to_bytes(4, 'big') + b); sys.stdout.flush()\ntime.sleep(60)", "we speak 1.0, the worker speaks 2.0", HelloCause::VersionMismatch { worker: 2, host: 1 }),
    ];
    for (name, source, expected, expected_cause) in cases {
        let started = Instant::now();
        let err = script(source).spawn(WorkerId(4)).await.unwrap_err();
        match &err {
            LaunchError::BadHello {
                reason, pid, cause, ..
            } => {
                assert!(reason.contains(expected), "{name}: {err}");
                assert_eq!(*cause, expected_cause, "{name}");
                assert!(
                    portpool_testkit::wait_process_gone(pid.unwrap(), Duration::from_secs(2)).await,
                    "{name}: killed"
                );
            }
            other => panic!("{name}: expected BadHello, got {other}"),
        }
        assert!(started.elapsed() < Duration::from_secs(4), "{name}: no hang");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_failure_names_the_program() {
    let err = ProcessLauncher::new(WorkerCommand::new("/nonexistent/portpool-python"))
        .spawn(WorkerId(9))
        .await
        .unwrap_err();
    assert!(matches!(err, LaunchError::Spawn { .. }));
    assert!(err.to_string().contains("/nonexistent/portpool-python"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_kills_grandchildren_and_drop_kills_the_worker() {
    let worker = basic().spawn(WorkerId(1)).await.unwrap();
    let grandchild = worker
        .call(CallRequest::new("spawn_grandchild", Value::Nil))
        .await
        .unwrap();
    let grandchild = u32::try_from(grandchild.as_u64().unwrap()).unwrap();
    assert!(!portpool_testkit::process_gone(grandchild));
    worker.shutdown(Duration::from_secs(5)).await;
    assert!(
        portpool_testkit::wait_process_gone(grandchild, Duration::from_secs(2)).await,
        "grandchild {grandchild} survived"
    );

    let worker = basic().spawn(WorkerId(2)).await.unwrap();
    let pid = worker.info().pid.unwrap();
    drop(worker);
    assert!(
        portpool_testkit::wait_process_gone(pid, Duration::from_secs(2)).await,
        "worker {pid} survived its handle"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_escalates_when_the_worker_ignores_it() {
    // Ignores the shutdown message and SIGTERM: only SIGKILL ends it.
    let source = "import signal, sys, time, msgpack, os\n\
signal.signal(signal.SIGTERM, signal.SIG_IGN)\n\
b = msgpack.packb({'type': 'hello', 'protocol_major': 1, 'protocol_minor': 0, 'pid': os.getpid(), 'max_concurrency': 1})\n\
sys.stdout.buffer.write(len(b).to_bytes(4, 'big') + b); sys.stdout.flush()\n\
time.sleep(60)";
    let worker = script(source).spawn(WorkerId(5)).await.unwrap();
    let started = Instant::now();
    let exit = worker.shutdown(Duration::from_millis(200)).await;
    assert_eq!(exit.signal, Some(9), "{exit}");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_workers_launched_at_once_all_become_ready() {
    let launcher = basic();
    let workers = futures::future::join_all((0..16).map(|i| launcher.spawn(WorkerId(i)))).await;
    let mut pids = HashSet::new();
    for worker in &workers {
        let worker = worker.as_ref().expect("every worker starts");
        pids.insert(worker.info().pid.unwrap());
        assert_eq!(
            worker.call(CallRequest::new("pid", Value::Nil)).await.unwrap(),
            Value::from(worker.info().pid.unwrap())
        );
    }
    assert_eq!(pids.len(), 16);
    futures::future::join_all(
        workers
            .iter()
            .map(|w| w.as_ref().unwrap().shutdown(Duration::from_secs(5))),
    )
    .await;
}

/// Run as a child process by `no_orphans_when_the_host_is_killed`: launches
/// three raw workers, each of which starts a child (a shell) and a
/// grandchild (`sleep 60`, in the background), prints every pid, then waits
/// to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_host_helper() {
    let Some(dir) = std::env::var_os("PORTPOOL_ORPHAN_HELPER") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/raw_worker.py");
    let mut workers = Vec::new();
    let mut files = Vec::new();
    for i in 0..3 {
        let file = dir.join(format!("pids-{i}"));
        let launcher = ProcessLauncher::new(
            WorkerCommand::new(portpool_testkit::runtime_python().unwrap())
                .arg(&script)
                .arg("spawns_descendants")
                .arg(&file)
                .init_timeout(Duration::from_secs(10)),
        );
        workers.push(launcher.spawn(WorkerId(i)).await.unwrap());
        files.push(file);
    }
    let mut pids = Vec::new();
    for file in &files {
        let until = Instant::now() + Duration::from_secs(10);
        let recorded = loop {
            if let Ok(text) = std::fs::read_to_string(file) {
                break text;
            }
            assert!(Instant::now() < until, "{} never written", file.display());
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        pids.extend(recorded.split_whitespace().map(str::to_string));
    }
    println!("PIDS {}", pids.join(" "));
    tokio::time::sleep(Duration::from_secs(60)).await;
}

/// Bound: every process of every worker group (worker, child, grandchild)
/// is gone within 3 s of the host's SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_orphans_when_the_host_is_killed() {
    let dir = std::env::temp_dir().join(format!("portpool-no-orphans-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (mut host, pids) = portpool_testkit::spawn_host_helper(
        "orphan_host_helper",
        ("PORTPOOL_ORPHAN_HELPER", dir.as_os_str()),
        // Its 3 launches may take their whole init time-out on a busy machine.
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(
        pids.len(),
        9,
        "helper printed 3 workers with a child and a grandchild each"
    );
    assert!(
        pids.iter().all(|&p| !portpool_testkit::process_gone(p)),
        "all running before the kill: {pids:?}"
    );
    let left = portpool_testkit::kill_host_helper(&mut host, &pids, Duration::from_secs(3)).await;
    assert!(
        left.is_empty(),
        "{left:?} of {pids:?} outlived their SIGKILLed host by 3 s"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_descendant_holding_stdout_open_does_not_keep_a_dead_worker_alive() {
    // The worker exits; a child it forked left the process group (setsid)
    // and still holds the protocol pipe, so no EOF ever comes.
    let source = "import os, sys, time, msgpack\n\
h = msgpack.packb({'type': 'hello', 'protocol_major': 1, 'protocol_minor': 0, 'pid': os.getpid(), 'max_concurrency': 1})\n\
sys.stdout.buffer.write(len(h).to_bytes(4, 'big') + h); sys.stdout.flush()\n\
sys.stdin.buffer.read(4)\n\
r, w = os.pipe()\n\
pid = os.fork()\n\
if pid == 0:\n    os.setsid()\n    os.write(w, b'x')\n    time.sleep(30)\n    os._exit(0)\n\
os.read(r, 1)\n\
sys.stderr.write(f'descendant {pid}\\n'); sys.stderr.flush()\n\
os._exit(3)";
    let worker = script(source).spawn(WorkerId(6)).await.unwrap();
    let started = Instant::now();
    let err = worker.call(CallRequest::new("anything", 1)).await.unwrap_err();
    let took = started.elapsed();
    let descendant = worker.stderr_tail().lines().find_map(|l| {
        l.strip_prefix("descendant ")
            .and_then(|p| p.trim().parse::<i32>().ok())
    });
    if let Some(pid) = descendant {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
    match &err {
        CallError::WorkerCrashed {
            reason, exit, cause, ..
        } => {
            assert_eq!(*cause, CrashCause::StdoutHeldOpen);
            assert!(reason.contains("stdout stayed open"), "{err}");
            assert_eq!(exit.code, Some(3), "{err}");
        }
        other => panic!("expected WorkerCrashed, got {other}"),
    }
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(descendant.is_some(), "the test's descendant reported its pid");
    assert!(!worker.is_alive());
    let exit = tokio::time::timeout(Duration::from_secs(5), worker.closed())
        .await
        .expect("closed resolves");
    assert_eq!(exit.code, Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_read_too_slowly_is_cancelled_with_stream_overflow() {
    let launcher = ProcessLauncher::new(
        WorkerCommand::python_with(portpool_testkit::runtime_python().unwrap(), app("basic.py"))
            .max_stream_buffer(100),
    );
    let worker = launcher.spawn(WorkerId(1)).await.unwrap();
    let mut stream = worker.stream(CallRequest::new("count", 1_000_000)).await.unwrap();
    // Read nothing while the generator runs ahead.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut items = 0;
    let err = loop {
        match stream.next().await {
            Some(Ok(_)) => items += 1,
            Some(Err(e)) => break e,
            None => panic!("the stream ended without an error after {items} items"),
        }
    };
    assert!(
        matches!(err, CallError::StreamOverflow { limit: 100, .. }),
        "{err}"
    );
    assert_eq!(items, 100, "everything buffered up to the limit was delivered");
    assert!(stream.next().await.is_none());
    assert_eq!(worker.in_flight(), 0);
    // The worker was told to stop: its generator no longer sends chunks
    // (each would be discarded), and it serves the next call.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let discarded = worker.discarded_replies();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        worker.discarded_replies(),
        discarded,
        "chunks kept coming after the overflow: the cancel was not sent"
    );
    assert_eq!(
        worker.call(CallRequest::new("echo", 3)).await.unwrap(),
        Value::from(3)
    );
    worker.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_and_small_frames_from_many_callers_never_interleave() {
    // Frames larger than the pipe's buffer are written partly at once and
    // finished by the writer task; small frames must queue behind them.
    let worker = std::sync::Arc::new(basic().spawn(WorkerId(1)).await.unwrap());
    let calls = (0..220u32).map(|i| {
        let worker = worker.clone();
        tokio::spawn(async move {
            let params = if i % 11 == 0 {
                Value::Binary(vec![(i % 251) as u8; 512 * 1024 + i as usize])
            } else {
                Value::from(i)
            };
            let reply = worker.call(CallRequest::new("echo", params.clone())).await;
            (params, reply)
        })
    });
    for joined in futures::future::join_all(calls).await {
        let (params, reply) = joined.unwrap();
        assert!(
            reply.as_ref().is_ok_and(|r| *r == params),
            "a reply differs from its request"
        );
    }
    assert!(worker.is_alive());
    assert_eq!(worker.discarded_replies(), 0);
    worker.shutdown(Duration::from_secs(5)).await;
}

/// A raw worker whose hello's `runtime` field reports the buffer sizes of
/// its stdin and stdout pipes, as it sees them.
fn pipe_size_reporter() -> WorkerCommand {
    let source = "import fcntl, os, sys, time, msgpack\n\
size = lambda fd: fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)\n\
body = msgpack.packb({'type': 'hello', 'protocol_major': 1, 'runtime': f'{size(0)} {size(1)}', \
'pid': os.getpid(), 'max_concurrency': 1, 'methods': []})\n\
sys.stdout.buffer.write(len(body).to_bytes(4, 'big') + body); sys.stdout.flush()\n\
time.sleep(30)";
    WorkerCommand::new(portpool_testkit::runtime_python().unwrap())
        .args(["-c", source])
        .init_timeout(Duration::from_secs(10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipe_buffer_enlarges_both_pipes_when_the_kernel_allows() {
    let max: usize = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let wanted = (1usize << 20).min(max);
    let worker = ProcessLauncher::new(pipe_size_reporter().pipe_buffer(wanted))
        .spawn(WorkerId(1))
        .await
        .unwrap();
    assert_eq!(worker.info().hello.runtime, format!("{wanted} {wanted}"));
    worker.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_pipe_buffer_leaves_the_pipes_as_they_were() {
    let default = ProcessLauncher::new(pipe_size_reporter())
        .spawn(WorkerId(1))
        .await
        .unwrap();
    // Far above any pipe-max-size: the kernel refuses, the launch does not.
    let refused = ProcessLauncher::new(pipe_size_reporter().pipe_buffer(1 << 40))
        .spawn(WorkerId(2))
        .await
        .unwrap();
    assert_eq!(refused.info().hello.runtime, default.info().hello.runtime);
    default.shutdown(Duration::from_millis(100)).await;
    refused.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_changing_sizes_reusing_one_buffer_each_arrive_intact() {
    // A pipe big enough that large requests go out at once and their
    // buffer is kept for the next request.
    let launcher = ProcessLauncher::new(
        WorkerCommand::python_with(portpool_testkit::runtime_python().unwrap(), app("basic.py"))
            .init_timeout(Duration::from_secs(20))
            .pipe_buffer(1 << 20),
    );
    let worker = launcher.spawn(WorkerId(1)).await.unwrap();
    for (round, size) in [300_000usize, 3, 70_000, 0, 900_000, 17, 300_000, 1]
        .into_iter()
        .enumerate()
    {
        let params = Value::Array(vec![
            Value::from(round as u64),
            Value::Binary((0..size).map(|i| (i * 7 + round) as u8).collect()),
        ]);
        let got = worker
            .call(CallRequest::new("echo", params.clone()))
            .await
            .unwrap();
        assert_eq!(got, params, "round {round}, {size} bytes");
    }
    worker.shutdown(Duration::from_secs(2)).await;
}
