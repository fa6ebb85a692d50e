//! The process transport scenarios that are not about Python, against the
//! testkit's `fake-worker` binary (fast, no interpreter): concurrency, every
//! start failure, crashes, shutdown escalation, big frames.
//!
//! `fake_worker_path()` finds the binary, or builds it when missing (so
//! `cargo test -p portpool-transport` works alone on a clean checkout).

use std::sync::Arc;
use std::time::{Duration, Instant};

use portpool_testkit::{fake_worker_path, FakeWorkerArgs};
use portpool_transport::*;

fn launcher(args: FakeWorkerArgs) -> ProcessLauncher {
    let path = fake_worker_path().unwrap_or_else(|e| panic!("{e}"));
    ProcessLauncher::new(
        WorkerCommand::new(path)
            .args(args.to_args())
            .init_timeout(Duration::from_secs(2)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_reply_out_of_order_each_to_its_caller() {
    let worker = Arc::new(
        launcher(FakeWorkerArgs::new().max_concurrency(64))
            .spawn(WorkerId(1))
            .await
            .unwrap(),
    );
    assert_eq!(worker.info().max_concurrency, 64);
    let started = Instant::now();
    // Longest first: replies come back in reverse order of the requests.
    let calls = (0..50u64).rev().map(|ms| {
        let worker = worker.clone();
        tokio::spawn(async move { (ms, worker.call(CallRequest::new("sleep", ms * 4)).await) })
    });
    for joined in futures::future::join_all(calls).await {
        let (ms, reply) = joined.unwrap();
        assert_eq!(reply.unwrap(), Value::from(ms * 4));
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "ran concurrently: {:?}",
        started.elapsed()
    );
    assert_eq!(
        worker.call(CallRequest::new("pid", Value::Nil)).await.unwrap(),
        Value::from(worker.info().pid.unwrap())
    );
    assert!(worker.shutdown(Duration::from_secs(2)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_start_failure_is_typed_with_its_diagnosis() {
    let err = launcher(FakeWorkerArgs::new().exit_during_init(7).stderr_lines(2))
        .spawn(WorkerId(1))
        .await
        .unwrap_err();
    match &err {
        LaunchError::ExitedDuringInit {
            exit, stderr_tail, ..
        } => {
            assert_eq!(exit.code, Some(7));
            assert!(!stderr_tail.trim().is_empty(), "{err}");
        }
        other => panic!("expected ExitedDuringInit, got {other}"),
    }
    let err = launcher(FakeWorkerArgs::new().no_hello())
        .spawn(WorkerId(2))
        .await
        .unwrap_err();
    assert!(matches!(err, LaunchError::InitTimeout { .. }), "{err}");
    for (args, expected) in [
        (
            FakeWorkerArgs::new().garbage_before_hello(),
            "exceeds the maximum",
        ),
        (FakeWorkerArgs::new().huge_header(), "frame of 1073741824 bytes"),
        (FakeWorkerArgs::new().bad_msgpack(), "malformed"),
        (FakeWorkerArgs::new().protocol_major(9), "the worker speaks 9.0"),
    ] {
        let err = launcher(args).spawn(WorkerId(3)).await.unwrap_err();
        match &err {
            LaunchError::BadHello { reason, pid, .. } => {
                assert!(reason.contains(expected), "{err}");
                assert!(portpool_testkit::wait_process_gone(pid.unwrap(), Duration::from_secs(2)).await);
            }
            other => panic!("expected BadHello ({expected}), got {other}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_start_is_ready_when_its_hello_comes() {
    let started = Instant::now();
    let worker = launcher(FakeWorkerArgs::new().init_delay_ms(300))
        .spawn(WorkerId(1))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        worker.call(CallRequest::new("echo", 1)).await.unwrap(),
        Value::from(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_fails_every_call_in_flight_once_with_the_exit_code() {
    let worker = Arc::new(
        launcher(FakeWorkerArgs::new().max_concurrency(16).crash_after(5))
            .spawn(WorkerId(4))
            .await
            .unwrap(),
    );
    // Five long calls run; the sixth request makes it crash (code 101).
    let mut calls: Vec<_> = (0..5)
        .map(|_| {
            let worker = worker.clone();
            tokio::spawn(async move { worker.call(CallRequest::new("sleep", 10_000)).await })
        })
        .collect();
    while worker.in_flight() < 5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let trigger = worker.clone();
    calls.push(tokio::spawn(async move {
        trigger.call(CallRequest::new("echo", 1)).await
    }));
    for call in calls {
        match call.await.unwrap() {
            Err(CallError::WorkerCrashed { worker: id, exit, .. }) => {
                assert_eq!(id, WorkerId(4));
                assert_eq!(exit.code, Some(101), "{exit}");
            }
            other => panic!("expected WorkerCrashed, got {other:?}"),
        }
    }
    assert!(!worker.is_alive());
    assert!(matches!(
        worker.call(CallRequest::new("echo", 1)).await,
        Err(CallError::WorkerCrashed { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_ignoring_shutdown_is_stopped_by_signal() {
    let worker = launcher(FakeWorkerArgs::new().ignore_shutdown().exit_on_eof(false))
        .spawn(WorkerId(5))
        .await
        .unwrap();
    let started = Instant::now();
    let exit = worker.shutdown(Duration::from_millis(200)).await;
    assert!(exit.signal.is_some(), "{exit}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_frames_pass_and_oversize_ones_are_refused() {
    let worker = launcher(FakeWorkerArgs::new()).spawn(WorkerId(6)).await.unwrap();
    let reply = worker
        .call(CallRequest::new("big", 8 * 1024 * 1024))
        .await
        .unwrap();
    assert_eq!(reply.as_slice().map(<[u8]>::len), Some(8 * 1024 * 1024));

    let small = ProcessLauncher::new(WorkerCommand::new(fake_worker_path().unwrap()).max_frame(64 * 1024));
    let worker = small.spawn(WorkerId(7)).await.unwrap();
    let err = worker
        .call(CallRequest::new("echo", Value::Binary(vec![1; 100_000])))
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::InvalidRequest { .. }), "{err}");
    assert_eq!(
        worker.call(CallRequest::new("echo", 2)).await.unwrap(),
        Value::from(2)
    );
}
