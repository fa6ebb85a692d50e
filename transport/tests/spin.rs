//! The low-latency mode (`WorkerCommand::spin`): a reader that polls the
//! pipe before sleeping must deliver exactly what a sleeping one does —
//! every reply to its own caller, streams in order, replies larger than one
//! read, replies arriving while nobody waits — and tell the worker its
//! budget.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use portpool_transport::*;

fn basic(spin: Duration) -> ProcessLauncher {
    let app = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/apps/basic.py");
    ProcessLauncher::new(
        WorkerCommand::python_with(portpool_testkit::runtime_python().unwrap(), app)
            .spin(spin)
            .init_timeout(Duration::from_secs(20)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_reader_delivers_every_reply_to_its_own_caller() {
    tokio::time::timeout(Duration::from_secs(60), every_reply_to_its_own_caller())
        .await
        .expect("calls hung with a spinning reader");
}

async fn every_reply_to_its_own_caller() {
    let worker = Arc::new(
        basic(Duration::from_micros(200))
            .spawn(WorkerId(1))
            .await
            .unwrap(),
    );
    // The worker is told the budget, for a runtime that spins too.
    let told = worker
        .call(CallRequest::new("env", "PORTPOOL_SPIN_US"))
        .await
        .unwrap();
    assert_eq!(told, Value::from("200"));

    // Back to back: each reply comes within the budget (or after it).
    for i in 0..300i64 {
        assert_eq!(
            worker.call(CallRequest::new("echo", i)).await.unwrap(),
            Value::from(i)
        );
    }
    // Out of order, many outstanding, mixed with replies bigger than one
    // spinning read (64 KiB) and streams.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..64i64 {
        let worker = worker.clone();
        calls.spawn(async move {
            match i % 4 {
                0 => {
                    let got = worker.call(CallRequest::new("big", 300_000 + i)).await.unwrap();
                    assert_eq!(got.as_slice().map(<[u8]>::len), Some(300_000 + i as usize));
                }
                1 => {
                    let items: Vec<Value> = worker
                        .stream(CallRequest::new("count", 50))
                        .await
                        .unwrap()
                        .map(|item| item.unwrap())
                        .collect()
                        .await;
                    assert_eq!(items, (0..50).map(Value::from).collect::<Vec<_>>());
                }
                _ => {
                    let got = worker.call(CallRequest::new("jitter", i)).await.unwrap();
                    assert_eq!(got, Value::from(i), "a reply went to the wrong caller");
                }
            }
        });
    }
    while let Some(joined) = calls.join_next().await {
        joined.unwrap();
    }
    // A reply that comes when no call waits (its caller gave up) is read
    // and dropped, and the next call still gets its own.
    let gave_up = worker
        .call(CallRequest::new("block", 0.2).with_timeout(Duration::from_millis(20)))
        .await;
    assert!(matches!(gave_up, Err(CallError::Timeout { .. })), "{gave_up:?}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        worker.call(CallRequest::new("echo", "after")).await.unwrap(),
        Value::from("after")
    );
    assert_eq!(worker.discarded_replies(), 1);
    assert_eq!(worker.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_budget_the_worker_is_told_nothing() {
    let worker = basic(Duration::ZERO).spawn(WorkerId(1)).await.unwrap();
    let told = worker
        .call(CallRequest::new("env", "PORTPOOL_SPIN_US"))
        .await
        .unwrap();
    assert_eq!(told, Value::Nil);
}

/// Voluntary context switches of the calling thread so far.
fn voluntary_switches_of_this_thread() -> u64 {
    std::fs::read_to_string("/proc/thread-self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

/// In the low-latency mode a sequential caller's reply is read by a reader
/// that is already spinning: sending a call wakes the reader, which had
/// gone to sleep once nothing was outstanding. Without that wake-up the
/// reader is polled again only when the reply's readiness arrives, so the
/// thread sleeps in the kernel for every call: on a current-thread runtime
/// that is at least one voluntary context switch per call.
#[test]
fn sequential_calls_are_read_by_a_spinning_reader_not_after_a_sleep() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // A budget far above a call's round trip, even on a loaded machine.
        let worker = basic(Duration::from_millis(20)).spawn(WorkerId(1)).await.unwrap();
        for i in 0..50i64 {
            worker.call(CallRequest::new("echo", i)).await.unwrap();
        }
        let calls = 500;
        let before = voluntary_switches_of_this_thread();
        for i in 0..calls {
            assert_eq!(
                worker.call(CallRequest::new("echo", i)).await.unwrap(),
                Value::from(i)
            );
        }
        let per_call = (voluntary_switches_of_this_thread() - before) as f64 / calls as f64;
        assert!(
            per_call < 0.5,
            "{per_call:.2} voluntary context switches per call: the reader slept for replies"
        );
    });
}
