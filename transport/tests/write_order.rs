//! The order frames reach a worker in. Under load a request may wait for the
//! writer's next batch (it is *corked*: the worker is busy anyway); nothing
//! written after it may overtake it — above all not its own `cancel`, which
//! the worker would then see before the request and so run a call nobody
//! waits for.

use std::future::Future;
use std::path::PathBuf;
use std::pin::pin;
use std::task::Context;
use std::time::Duration;

use portpool_transport::*;

fn journal() -> ProcessLauncher {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/raw_worker.py");
    ProcessLauncher::new(
        WorkerCommand::new(portpool_testkit::runtime_python().unwrap())
            .arg(script)
            .arg("journal")
            .init_timeout(Duration::from_secs(10)),
    )
}

/// Polls `future` once (far enough to send its request), then drops it.
/// Whether it was still waiting (on a loaded machine the reply may come
/// within that one poll).
fn start_then_drop<F: Future>(future: F) -> bool {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    future.as_mut().poll(&mut cx).is_pending()
}

/// The worker's journal: every message it read, as "type:id".
async fn journal_of(worker: &ProcessWorker) -> Vec<String> {
    let Value::Array(items) = worker
        .call(CallRequest::new("journal", Value::Nil))
        .await
        .unwrap()
    else {
        panic!("the journal is a list")
    };
    items
        .into_iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

fn position(journal: &[String], entry: &str) -> usize {
    journal
        .iter()
        .position(|e| e == entry)
        .unwrap_or_else(|| panic!("{entry} never reached the worker: {journal:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_never_overtakes_its_request_while_requests_are_batched() {
    let worker = std::sync::Arc::new(journal().spawn(WorkerId(1)).await.unwrap());
    // A call in flight: the worker is busy, so the next requests are corked.
    let held = tokio::spawn({
        let worker = worker.clone();
        async move { worker.call(CallRequest::new("hold", Value::Nil)).await }
    });
    while worker.in_flight() == 0 {
        tokio::task::yield_now().await;
    }
    // Fifty calls sent and given up on at once, in one scheduler turn: each
    // request is queued for the batch and its cancel right behind it. They
    // are `hold` calls, which the worker answers only at `release`: no reply
    // can come between a call's poll and its drop (with `echo`, a preempted
    // test thread let every reply come first, and no cancel was checked).
    let mut dropped_waiting = 0;
    for _ in 0..50 {
        dropped_waiting += usize::from(start_then_drop(worker.call(CallRequest::new("hold", Value::Nil))));
    }
    assert_eq!(dropped_waiting, 50, "a held call completed in its first poll");
    // And calls that complete: their replies are their own.
    for i in 0..20i64 {
        assert_eq!(
            worker.call(CallRequest::new("echo", i)).await.unwrap(),
            Value::from(i)
        );
    }
    worker
        .call(CallRequest::new("release", Value::Nil))
        .await
        .unwrap();
    held.await.unwrap().unwrap();

    let journal = journal_of(&worker).await;
    let requests: Vec<&String> = journal.iter().filter(|e| e.starts_with("request:")).collect();
    // hold, 50 given up, 20 completed, release, journal.
    assert_eq!(requests.len(), 73, "{journal:?}");
    let mut cancels = 0;
    for entry in journal.iter().filter(|e| e.starts_with("cancel:")) {
        let id = entry.trim_start_matches("cancel:");
        assert!(
            position(&journal, &format!("request:{id}")) < position(&journal, entry),
            "the cancel of {id} reached the worker before its request: {journal:?}"
        );
        cancels += 1;
    }
    // Every call dropped while waiting sends exactly one cancel.
    assert_eq!(
        cancels, dropped_waiting,
        "{cancels} cancels for {dropped_waiting} dropped calls: {journal:?}"
    );
    // Ids were handed out in the order the calls were made, and each
    // caller's requests reach the worker in that order.
    let ids: Vec<u64> = requests
        .iter()
        .map(|e| e.trim_start_matches("request:").parse().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "requests out of order: {ids:?}"
    );
}
