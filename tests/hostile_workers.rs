//! Hostile workers through a real `Pool`: worker programs written without
//! the portpool runtime (`tests/hostile/worker.py`, frames spoken by hand)
//! that misbehave at start, on a request, or all the time.
//!
//! Every scenario ends in a TYPED error (matched on `HelloCause`,
//! `CrashCause`, `LaunchError`, `CallError` variants) within [`BOUND`], then
//! checks that the pool is back at full strength (`status().ready ==
//! workers`, a call served) within [`RECOVERY`], and that no process of the
//! worker or its descendants is left, alive or zombie. The harness SIGKILLs
//! every recorded process when a scenario ends, even by a failed assertion.
//!
//! Deep nesting lives in `tests/hostile_deep.rs`: before the decoder bounds
//! its depth it aborts the whole test process.

mod hostile;

use std::time::{Duration, Instant};

use hostile::*;
use portpool::transport::{CrashCause, HelloCause};
use portpool::{CallError, CallRequest, LaunchError, PoolError, Value, WorkerCommand};
use portpool_testkit::spawn_call;

/// A worker that ended by itself: the transport sees its stdout close or
/// its exit first (either cause is right), and the exit code is typed.
fn exited_with(error: &PoolError, expected: i32) -> bool {
    matches!(
        error,
        PoolError::Call(CallError::WorkerCrashed {
            cause: CrashCause::Exited | CrashCause::StdoutClosed,
            exit,
            ..
        }) if exit.code == Some(expected)
    )
}

/// Starts `mode` on one worker (its command changed by `configure`), makes
/// one call that must kill the worker with `cause` (pid known), then checks
/// that the worker is gone, the pool recovers and nothing is left.
async fn first_call_kills_the_worker_as(
    mode: &'static str,
    configure: impl FnOnce(WorkerCommand) -> WorkerCommand,
    cause: CrashCause,
) {
    let hostile = Hostile::new(mode);
    let pool = hostile
        .pool_with(configure(hostile.command()), 1)
        .build()
        .await
        .unwrap();
    let error = failing_call(&hostile, &pool, CallRequest::new("echo", 1)).await;
    assert!(
        matches!(crash(&error), Some((seen, Some(_), _)) if seen == cause),
        "{mode}: expected {cause:?}, got {error:?}"
    );
    hostile.assert_start_gone(0, Duration::from_secs(5)).await;
    assert_recovers_and_cleans_up(&hostile, pool, 1).await;
}

fn crash(error: &PoolError) -> Option<(CrashCause, Option<u32>, &str)> {
    match error {
        PoolError::Call(CallError::WorkerCrashed {
            cause,
            pid,
            stderr_tail,
            ..
        }) => Some((*cause, *pid, stderr_tail.as_str())),
        _ => None,
    }
}

/// Runs `request` on a one-worker pool of `hostile` whose first start
/// misbehaves on it; returns the call's error (it must fail within BOUND).
async fn failing_call(hostile: &Hostile, pool: &portpool::Pool, request: CallRequest) -> PoolError {
    let started = Instant::now();
    let outcome = tokio::time::timeout(BOUND, pool.call_raw(request))
        .await
        .unwrap_or_else(|_| panic!("{}: the call hung for {BOUND:?}", hostile.mode));
    let error = outcome.expect_err("the hostile worker's call must fail");
    println!(
        "{}: {:?} after {:?}: {error}",
        hostile.mode,
        crash(&error).map(|c| c.0),
        started.elapsed()
    );
    error
}

/// A start-time fault on one of two workers: the pool starts on the good
/// one, records the bad start's typed diagnosis, and replaces it.
async fn hello_fault(mode: &'static str, expected: impl Fn(&LaunchError) -> bool) {
    let hostile = Hostile::new(mode);
    let pool = tokio::time::timeout(BOUND, hostile.pool(2).build())
        .await
        .expect("build hung")
        .expect("one good worker is enough to build");
    let until = Instant::now() + BOUND;
    let error = loop {
        if let Some(error) = pool.status().last_error {
            break error;
        }
        assert!(Instant::now() < until, "{mode}: no start failure recorded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(expected(&error), "{mode}: unexpected diagnosis: {error:?}");
    hostile.assert_start_gone(0, Duration::from_secs(5)).await;
    assert_recovers_and_cleans_up(&hostile, pool, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_before_hello_is_a_bad_hello() {
    // "load" read as a frame header announces ~1.8 GB.
    hello_fault("garbage_before_hello", |e| {
        matches!(
            e,
            LaunchError::BadHello {
                cause: HelloCause::FrameTooLarge,
                pid: Some(_),
                ..
            }
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_hello_is_an_init_timeout_with_pid_and_stderr() {
    hello_fault("no_hello", |e| {
        matches!(
            e,
            LaunchError::InitTimeout { pid: Some(_), stderr_tail, .. }
                if stderr_tail.contains("stuck before hello")
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_version_is_a_version_mismatch() {
    hello_fault("wrong_version", |e| {
        matches!(
            e,
            LaunchError::BadHello {
                cause: HelloCause::VersionMismatch { worker: 99, host: 1 },
                ..
            }
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_at_every_start_fails_the_build_with_each_diagnosis() {
    let hostile = Hostile::new("every_exit_at_start");
    let outcome = tokio::time::timeout(BOUND, hostile.pool(2).build())
        .await
        .expect("build hung");
    match outcome {
        Err(PoolError::Build { errors, .. }) => {
            assert_eq!(errors.len(), 2, "{errors:?}");
            for error in &errors {
                assert!(
                    matches!(
                        error,
                        LaunchError::ExitedDuringInit { pid: Some(_), stderr_tail, .. }
                            if stderr_tail.contains("missing config")
                    ),
                    "{error:?}"
                );
            }
        }
        Err(other) => panic!("expected PoolError::Build, got {other:?}"),
        Ok(pool) => panic!(
            "a pool of workers that always exit was built: {:?}",
            pool.status()
        ),
    }
    // The pool is gone: no start of it may be left, nor restarted later.
    hostile.assert_nothing_left(Duration::from_secs(5)).await;
    let starts = hostile.pids().len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        hostile.pids().len(),
        starts,
        "a failed build kept starting workers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_at_first_request_fails_that_call_as_exited() {
    let hostile = Hostile::new("exit_at_first_request");
    let pool = hostile.pool(1).build().await.unwrap();
    let error = failing_call(&hostile, &pool, CallRequest::new("echo", 1)).await;
    let pid = hostile.start_pid(0);
    assert!(exited_with(&error, 4), "{error:?}");
    assert!(
        matches!(crash(&error), Some((_, p, tail)) if p == pid && tail.contains("exiting at first request")),
        "{error:?}"
    );
    hostile.assert_start_gone(0, Duration::from_secs(5)).await;
    assert_recovers_and_cleans_up(&hostile, pool, 1).await;
}

/// Stray replies (a duplicate of an answered id, an id never sent) are
/// dropped: every caller gets its own reply, the worker is not replaced.
async fn stray_replies(mode: &'static str) {
    let hostile = Hostile::new(mode);
    let pool = hostile.pool(1).build().await.unwrap();
    for i in 0..20 {
        let reply = tokio::time::timeout(BOUND, pool.call_value("echo", Value::from(i)))
            .await
            .expect("hung")
            .expect("a stray reply must not fail a call");
        assert_eq!(reply, Value::from(i), "{mode}: a caller got another call's reply");
    }
    let status = pool.status();
    assert_eq!(
        status.workers[0].pid,
        hostile.start_pid(0),
        "{mode}: worker was replaced"
    );
    assert_eq!(status.workers[0].restarts, 0);
    assert_recovers_and_cleans_up(&hostile, pool, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_reply_ids_are_dropped() {
    stray_replies("duplicate_reply").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_for_ids_never_sent_are_dropped() {
    stray_replies("unknown_reply_id").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_reply_after_cancel_reaches_nobody() {
    let hostile = Hostile::new("late_reply_after_cancel");
    let pool = hostile.pool(1).build().await.unwrap();
    let request = CallRequest::new("sleep", 400).with_timeout(Duration::from_millis(100));
    let error = failing_call(&hostile, &pool, request).await;
    assert!(
        matches!(error, PoolError::Call(CallError::Timeout { .. })),
        "{error:?}"
    );
    // The late reply (id of the timed-out call) arrives while these run.
    for i in 0..10 {
        let reply = pool.call_value("sleep", Value::from(50 + i)).await.unwrap();
        assert_eq!(reply, Value::from(50 + i));
    }
    assert_eq!(pool.status().workers[0].pid, hostile.start_pid(0));
    assert_recovers_and_cleans_up(&hostile, pool, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ffffffff_header_is_frame_too_large() {
    first_call_kills_the_worker_as("huge_header", |command| command, CrashCause::FrameTooLarge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stderr_flood_neither_blocks_nor_bloats_the_error() {
    let hostile = Hostile::new("stderr_flood");
    let pool = hostile.pool(1).build().await.unwrap();
    // 10 MiB of stderr, then exit 5.
    let error = failing_call(&hostile, &pool, CallRequest::new("echo", 1)).await;
    assert!(exited_with(&error, 5), "{error}");
    let (_, _, tail) = crash(&error).unwrap_or_else(|| panic!("{error:?}"));
    assert!(
        tail.contains("LAST LINE before exit"),
        "tail: {}",
        &tail[tail.len().saturating_sub(300)..]
    );
    assert!(
        tail.len() < 256 * 1024,
        "stderr tail not bounded: {} bytes",
        tail.len()
    );
    assert_recovers_and_cleans_up(&hostile, pool, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_ignoring_sigterm_is_killed_at_shutdown() {
    let hostile = Hostile::new("ignore_sigterm");
    let pool = hostile.pool(1).build().await.unwrap();
    // A call it never answers is in flight when the pool shuts down.
    let call = spawn_call::<Value>(&pool, "echo", 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    tokio::time::timeout(BOUND, pool.shutdown(Duration::from_millis(300)))
        .await
        .expect("shutdown hung on a worker ignoring SIGTERM");
    let took = started.elapsed();
    let error = tokio::time::timeout(BOUND, call)
        .await
        .expect("the in-flight call hung after shutdown")
        .unwrap()
        .expect_err("nobody answered it");
    println!("ignore_sigterm: shutdown took {took:?}; in-flight call: {error:?}");
    assert!(
        matches!(
            error,
            PoolError::Call(CallError::WorkerCrashed { .. } | CallError::WorkerClosed { .. })
                | PoolError::PoolClosed { .. }
        ),
        "{error:?}"
    );
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    hostile.assert_nothing_left(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grandchild_holding_stdout_does_not_keep_the_worker_alive() {
    let hostile = Hostile::new("grandchild_holds_stdout");
    let pool = hostile.pool(1).build().await.unwrap();
    let error = failing_call(&hostile, &pool, CallRequest::new("echo", 1)).await;
    // Exited (code 6) while a descendant held its stdout: the pool must not
    // wait for that descendant.
    assert!(
        exited_with(&error, 6) || matches!(crash(&error), Some((CrashCause::StdoutHeldOpen, Some(_), _))),
        "{error:?}"
    );
    // The grandchild (recorded by the worker) is killed with its group.
    assert_eq!(hostile.pids().len(), 2, "the grandchild was not recorded");
    hostile.assert_start_gone(0, Duration::from_secs(5)).await;
    let left = portpool_testkit::wait_all_gone(&hostile.pids(), &[], Duration::from_secs(5)).await;
    assert!(left.is_empty(), "descendants left: {left:?}");
    assert_recovers_and_cleans_up(&hostile, pool, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_while_idle_is_replaced() {
    let hostile = Hostile::new("idle");
    let pool = hostile.pool(1).build().await.unwrap();
    let pid = hostile.wait_start_pid(0).await;
    signal(pid, "-STOP");
    // interval × max_misses + timeout = 500 ms, then a restart.
    let new_pid = tokio::time::timeout(BOUND, hostile.wait_start_pid(1))
        .await
        .expect("a stopped idle worker was never replaced");
    assert_ne!(new_pid, pid);
    hostile.assert_start_gone(0, Duration::from_secs(5)).await;
    assert_recovers_and_cleans_up(&hostile, pool, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_while_busy_fails_its_calls_as_unresponsive() {
    let hostile = Hostile::new("idle");
    let pool = hostile.pool(1).build().await.unwrap();
    // Merely busy (a handler sleeping, pings answered): not killed.
    let reply = pool.call_value("sleep", Value::from(1500)).await.unwrap();
    assert_eq!(reply, Value::from(1500));
    assert_eq!(pool.status().workers[0].restarts, 0, "a busy worker was killed");
    // Frozen with a call in flight and no call_timeout: killed as unresponsive.
    let pid = hostile.wait_start_pid(0).await;
    let call = spawn_call::<Value>(&pool, "sleep", 60_000);
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(pid, "-STOP");
    let stopped = Instant::now();
    let error = tokio::time::timeout(BOUND, call)
        .await
        .expect("the call on a frozen worker hung")
        .unwrap()
        .expect_err("a frozen worker cannot answer");
    println!("sigstop busy: {error:?} after {:?}", stopped.elapsed());
    assert!(
        matches!(crash(&error), Some((CrashCause::Unresponsive, p, _)) if p == Some(pid)),
        "{error:?}"
    );
    hostile.assert_start_gone(0, Duration::from_secs(5)).await;
    assert_recovers_and_cleans_up(&hostile, pool, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_memory_under_an_address_space_limit_crashes_only_that_worker() {
    let hostile = Hostile::new("memory_hog");
    let command = hostile.command().limit_address_space(512 * 1024 * 1024);
    let pool = hostile.pool_with(command, 1).build().await.unwrap();
    let error = failing_call(&hostile, &pool, CallRequest::new("echo", 1)).await;
    assert!(exited_with(&error, 1), "{error:?}");
    assert!(
        matches!(crash(&error), Some((_, Some(_), tail)) if tail.contains("MemoryError")),
        "{error:?}"
    );
    hostile.assert_start_gone(0, Duration::from_secs(5)).await;
    assert_recovers_and_cleans_up(&hostile, pool, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_legal_reply_arrives_whole() {
    let hostile = Hostile::new("idle");
    let pool = hostile.pool(1).build().await.unwrap();
    let n = 8 * 1024 * 1024;
    let reply = tokio::time::timeout(BOUND, pool.call_value("big", Value::from(n)))
        .await
        .expect("hung")
        .unwrap();
    match reply {
        Value::Binary(bytes) => assert_eq!(bytes.len(), n),
        other => panic!("expected {n} bytes, got {:?}", other.as_str()),
    }
    assert_recovers_and_cleans_up(&hostile, pool, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_limit_reply_is_frame_too_large() {
    // The worker answers with a 2 MiB frame; the limit is 1 MiB.
    let one_mib = |command: WorkerCommand| command.max_frame(1024 * 1024);
    first_call_kills_the_worker_as("over_limit_reply", one_mib, CrashCause::FrameTooLarge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_closes_stdin_fails_at_once_as_stdin_closed() {
    first_call_kills_the_worker_as("stdin_closed", |command| command, CrashCause::StdinClosed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_sending_the_host_requests_is_unexpected_message() {
    first_call_kills_the_worker_as("sends_requests", |command| command, CrashCause::UnexpectedMessage).await;
}

/// Item 15: a pool dropped together with its runtime, without `shutdown()`,
/// must leave nothing: no worker alive and no zombie of ours (a zombie
/// child of the host is a leak, see `portpool_testkit::ProcessState`).
#[test]
fn dropping_a_pool_with_its_runtime_leaves_no_process_not_even_a_zombie() {
    // Workers that exit 300 ms after stdin EOF, when the runtime is gone.
    let hostile = Hostile::new("every_linger_on_eof");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let pool = runtime.block_on(hostile.pool(2).build()).unwrap();
    let reply = runtime.block_on(pool.call_value("echo", Value::from(1))).unwrap();
    assert_eq!(reply, Value::from(1));
    let pids = hostile.pids();
    assert_eq!(pids.len(), 2);
    drop(pool);
    drop(runtime);
    let until = Instant::now() + Duration::from_secs(5);
    let left = loop {
        let left = portpool_testkit::leftover_processes(&pids, &pids);
        if left.is_empty() || Instant::now() > until {
            break left;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(left.is_empty(), "left after dropping pool and runtime: {left:?}");
}
