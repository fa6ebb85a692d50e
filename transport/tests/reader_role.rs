//! Races on the reply path: replies that arrive in pieces, callers that
//! give up mid-frame, callers racing for replies written in reverse order,
//! and a worker dying while a reply is half read. Whoever reads the worker's
//! stdout (a reader task or a caller), no reply is lost, none goes to the
//! wrong caller, and a death is noticed with no caller waiting.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portpool_transport::*;

fn raw(mode: &str, arg: &str) -> ProcessLauncher {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/raw_worker.py");
    ProcessLauncher::new(
        WorkerCommand::new(portpool_testkit::runtime_python().unwrap())
            .arg(script)
            .arg(mode)
            .arg(arg)
            .init_timeout(Duration::from_secs(10)),
    )
}

async fn wait_stderr(worker: &ProcessWorker, text: &str) {
    let until = Instant::now() + Duration::from_secs(10);
    while !worker.stderr_tail().contains(text) {
        assert!(Instant::now() < until, "no {text:?} in {}", worker.stderr_tail());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn crash_cause(result: &Result<Value, CallError>) -> CrashCause {
    match result {
        Err(CallError::WorkerCrashed { cause, .. }) => *cause,
        other => panic!("expected WorkerCrashed, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_timing_out_mid_frame_loses_no_byte_of_it() {
    let worker = raw("split_replies", "300").spawn(WorkerId(1)).await.unwrap();
    // Half of this reply arrives, then the caller gives up.
    let result = worker
        .call(CallRequest::new("split", 7).with_timeout(Duration::from_millis(150)))
        .await;
    assert!(matches!(result, Err(CallError::Timeout { .. })), "{result:?}");
    assert!(worker.stderr_tail().contains("half of"));
    // The rest of that frame must be read from where it stopped: the next
    // reply follows it on the pipe and must come out whole and be ours.
    for i in 0..20i64 {
        let reply = worker.call(CallRequest::new("echo", i)).await.unwrap();
        assert_eq!(reply, Value::from(i));
    }
    let until = Instant::now() + Duration::from_secs(5);
    while worker.discarded_replies() < 1 {
        assert!(Instant::now() < until, "the late reply was never read");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(worker.discarded_replies(), 1);
    assert!(worker.is_alive());
    worker.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_dropped_mid_frame_leaves_the_reading_to_the_worker_s_reader() {
    let worker = Arc::new(raw("split_replies", "300").spawn(WorkerId(2)).await.unwrap());
    // The future is polled until half the reply is in, then dropped: no
    // caller waits any more when the rest arrives and the worker exits.
    {
        let call = worker.call(CallRequest::new("split_exit", 1));
        tokio::pin!(call);
        let until = Instant::now() + Duration::from_secs(10);
        while !worker.stderr_tail().contains("half of") {
            assert!(Instant::now() < until, "no half frame");
            let polled = tokio::time::timeout(Duration::from_millis(5), call.as_mut()).await;
            assert!(polled.is_err(), "the reply cannot be complete: {polled:?}");
        }
        // One more poll with the half frame readable, then drop.
        let _ = tokio::time::timeout(Duration::from_millis(20), call.as_mut()).await;
    }
    // The death is noticed although nobody calls.
    tokio::time::timeout(Duration::from_secs(5), worker.closed())
        .await
        .expect("the worker's exit is noticed with no caller waiting");
    assert!(!worker.is_alive());
    // The late reply was read whole (and dropped) before the end of stdout.
    assert_eq!(worker.discarded_replies(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_racing_for_replies_written_in_reverse_halves_each_get_their_own() {
    for round in 0..3 {
        let callers = 6;
        let worker = Arc::new(
            raw("reverse_halves", &callers.to_string())
                .spawn(WorkerId(3))
                .await
                .unwrap(),
        );
        let mut tasks = Vec::new();
        for i in 0..callers as i64 {
            let worker = worker.clone();
            tasks.push(tokio::spawn(async move {
                let reply = worker.call(CallRequest::new("echo", i * 10 + round)).await;
                (i, reply)
            }));
        }
        for task in tasks {
            let (i, reply) = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("every call ends")
                .unwrap();
            assert_eq!(reply.unwrap(), Value::from(i * 10 + round));
        }
        assert_eq!(worker.discarded_replies(), 0);
        assert_eq!(worker.in_flight(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_on_a_foreign_thread_and_spawned_callers_each_get_their_own() {
    // One caller blocks a plain thread on its own runtime handle (as
    // `block_on` callers do) while tasks call concurrently.
    let worker = Arc::new(raw("split_replies", "5").spawn(WorkerId(4)).await.unwrap());
    let handle = tokio::runtime::Handle::current();
    let foreign = std::thread::spawn({
        let worker = worker.clone();
        move || {
            for i in 0..50i64 {
                let method = if i % 5 == 0 { "split" } else { "echo" };
                let reply = handle.block_on(worker.call(CallRequest::new(method, i))).unwrap();
                assert_eq!(reply, Value::from(i));
            }
        }
    });
    let mut tasks = Vec::new();
    for t in 0..4i64 {
        let worker = worker.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50i64 {
                let value = 1000 * (t + 1) + i;
                let method = if i % 7 == 0 { "split" } else { "echo" };
                let reply = worker.call(CallRequest::new(method, value)).await.unwrap();
                assert_eq!(reply, Value::from(value));
            }
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the tasks end")
            .unwrap();
    }
    tokio::task::spawn_blocking(move || foreign.join().unwrap())
        .await
        .unwrap();
    assert_eq!(worker.discarded_replies(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_exiting_mid_frame_fails_every_call_once() {
    let worker = Arc::new(raw("half_then", "exit").spawn(WorkerId(5)).await.unwrap());
    let first = tokio::spawn({
        let worker = worker.clone();
        async move { worker.call(CallRequest::new("anything", 1)).await }
    });
    let second = worker.call(CallRequest::new("anything", 2));
    let second = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the call ends");
    let first = tokio::time::timeout(Duration::from_secs(5), first)
        .await
        .expect("the call ends")
        .unwrap();
    // A frame cut short by the end of stdout is reported as it is now
    // (malformed, or the exit that caused it), and the same to both.
    let cause = crash_cause(&first);
    assert!(
        matches!(
            cause,
            CrashCause::Exited | CrashCause::StdoutClosed | CrashCause::Malformed
        ),
        "{cause:?}"
    );
    assert_eq!(crash_cause(&second), cause);
    assert!(!worker.is_alive());
    assert_eq!(worker.in_flight(), 0);
    tokio::time::timeout(Duration::from_secs(5), worker.closed())
        .await
        .expect("closed() resolves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_while_a_reply_is_half_read_fails_every_call_with_its_cause() {
    let worker = Arc::new(raw("half_then", "hang").spawn(WorkerId(6)).await.unwrap());
    let first = tokio::spawn({
        let worker = worker.clone();
        async move { worker.call(CallRequest::new("anything", 1)).await }
    });
    let second = tokio::spawn({
        let worker = worker.clone();
        async move { worker.call(CallRequest::new("anything", 2)).await }
    });
    wait_stderr(&worker, "half sent").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    worker.kill(CrashCause::Unresponsive, "missed heartbeats");
    for call in [first, second] {
        let result = tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .expect("the call ends")
            .unwrap();
        assert_eq!(crash_cause(&result), CrashCause::Unresponsive);
    }
    assert!(!worker.is_alive());
    assert_eq!(worker.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_timing_out_while_another_s_reply_arrives_does_not_take_it() {
    let worker = Arc::new(raw("split_replies", "300").spawn(WorkerId(7)).await.unwrap());
    // `slow` is served first and its reply comes in two halves 300 ms
    // apart; `impatient` gives up at 100 ms, while the half is in, and its
    // own reply never comes before it gives up.
    let slow = tokio::spawn({
        let worker = worker.clone();
        async move { worker.call(CallRequest::new("split", 11)).await }
    });
    while worker.in_flight() < 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let impatient = worker
        .call(CallRequest::new("echo", 22).with_timeout(Duration::from_millis(100)))
        .await;
    assert!(
        matches!(impatient, Err(CallError::Timeout { .. })),
        "{impatient:?}"
    );
    let slow = tokio::time::timeout(Duration::from_secs(5), slow)
        .await
        .expect("the call ends")
        .unwrap();
    assert_eq!(slow.unwrap(), Value::from(11));
    assert_eq!(
        worker.call(CallRequest::new("echo", 33)).await.unwrap(),
        Value::from(33)
    );
    assert!(worker.is_alive());
    worker.shutdown(Duration::from_secs(2)).await;
}
