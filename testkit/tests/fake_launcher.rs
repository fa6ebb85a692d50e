//! Tests of FakeLauncher / FakeWorker: scripted faults and the worker
//! contract, under paused tokio time.

use std::time::Duration;

use futures::StreamExt;
use portpool_testkit::{remote_error, CallLedger, CallOutcome, FakeEvent, FakeLauncher, Fault, WorkerScript};
use portpool_transport::{CallError, CallRequest, LaunchError, Launcher, Value, WorkerExit, WorkerId};
use tokio::time::Instant;

const SEC: Duration = Duration::from_secs(1);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn launcher() -> FakeLauncher {
    FakeLauncher::new()
        .handler("echo", Ok)
        .handler("fail", |_| Err(remote_error("ValueError", "bad")))
        .async_handler("sleep", |p: Value| async move {
            tokio::time::sleep(ms(p.as_u64().unwrap_or(0))).await;
            Ok(p)
        })
        .stream_handler("count", |p: Value| {
            (0..p.as_u64().unwrap_or(0)).map(|i| Ok(Value::from(i))).collect()
        })
        .max_concurrency(8)
}

fn echo(n: i64) -> CallRequest {
    CallRequest::new("echo", n)
}

fn sleep_call(n: u64) -> CallRequest {
    CallRequest::new("sleep", n)
}

#[tokio::test(start_paused = true)]
async fn hello_info_and_basic_calls() {
    let launcher = launcher();
    let worker = launcher.launch(WorkerId(3)).await.unwrap();
    let info = worker.info();
    assert_eq!(info.id, WorkerId(3));
    assert_eq!(info.pid, None);
    assert_eq!(info.max_concurrency, 8);
    assert_eq!(info.hello.methods, ["count", "echo", "fail", "sleep"]);
    assert!(info.hello.validate().is_ok());
    assert!(worker.is_alive());
    assert_eq!(worker.rss_bytes(), None);

    assert_eq!(worker.call(echo(5)).await.unwrap(), Value::from(5));
    match worker.call(CallRequest::new("fail", Value::Nil)).await {
        Err(CallError::Remote {
            worker: w,
            method,
            error,
        }) => {
            assert_eq!(w, WorkerId(3));
            assert_eq!(method, "fail");
            assert_eq!(error.kind, "ValueError");
        }
        other => panic!("expected a remote error, got {other:?}"),
    }
    match worker.call(CallRequest::new("nope", Value::Nil)).await {
        Err(CallError::Remote { error, .. }) => assert_eq!(error.kind, "MethodNotFound"),
        other => panic!("expected MethodNotFound, got {other:?}"),
    }
    // A streaming method called with `call` returns its items as an array.
    assert_eq!(
        worker.call(CallRequest::new("count", 2)).await.unwrap(),
        Value::Array(vec![Value::from(0), Value::from(1)])
    );

    let handle = launcher.worker(WorkerId(3)).unwrap();
    let calls = handle.calls();
    assert_eq!(handle.methods(), ["echo", "fail", "nope", "count"]);
    assert_eq!(calls[0].params, Value::from(5));
    assert_eq!(calls[0].outcome, Some(CallOutcome::Ok));
    assert_eq!(calls[1].outcome, Some(CallOutcome::Remote("ValueError".into())));
    assert_eq!(handle.in_flight(), 0);
    launcher.assert_no_calls_in_flight();
}

#[tokio::test(start_paused = true)]
async fn requests_are_recorded_with_session_timeout_and_trace() {
    let launcher = launcher();
    let worker = launcher.launch(WorkerId(1)).await.unwrap();
    let request = echo(1).with_session("s1").with_timeout(SEC).with_trace("t-1");
    worker.call(request).await.unwrap();
    let call = &launcher.worker(WorkerId(1)).unwrap().calls()[0];
    assert_eq!(call.session.as_deref(), Some("s1"));
    assert_eq!(call.timeout, Some(SEC));
    assert_eq!(call.trace.as_deref(), Some("t-1"));
    assert!(!call.streaming);
}

#[tokio::test(start_paused = true)]
async fn latency_and_concurrent_calls_use_virtual_time() {
    let launcher = launcher().script(|_| WorkerScript::default().latency(ms(100)));
    let worker = launcher.launch(WorkerId(1)).await.unwrap();
    let start = Instant::now();
    let (a, b, c) = tokio::join!(
        worker.call(sleep_call(300)),
        worker.call(sleep_call(100)),
        worker.call(echo(1))
    );
    assert_eq!(
        (a.unwrap(), b.unwrap(), c.unwrap()),
        (300.into(), 100.into(), 1.into())
    );
    assert_eq!(start.elapsed(), ms(400));
    let handle = launcher.worker(WorkerId(1)).unwrap();
    assert_eq!(handle.peak_in_flight(), 3);
    // Ends were recorded in time order: echo (100), sleep 100 (200), sleep 300 (400).
    let ended: Vec<u64> = launcher
        .events()
        .into_iter()
        .filter_map(|r| match r.event {
            FakeEvent::CallEnded { call, .. } => Some(call),
            _ => None,
        })
        .collect();
    assert_eq!(ended, [2, 1, 0]);
}

#[tokio::test(start_paused = true)]
async fn timeout_ends_the_call_and_records_a_cancel() {
    let launcher = launcher();
    let worker = launcher.launch(WorkerId(1)).await.unwrap();
    let start = Instant::now();
    let err = worker
        .call(sleep_call(5_000).with_timeout(SEC))
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::Timeout { after, ref method, .. } if after == SEC && method == "sleep"));
    assert!(err.is_worker_fault());
    assert_eq!(start.elapsed(), SEC);
    // A reply exactly at the deadline wins, like tokio::time::timeout.
    assert!(worker.call(sleep_call(1_000).with_timeout(SEC)).await.is_ok());
    let handle = launcher.worker(WorkerId(1)).unwrap();
    assert_eq!(handle.cancelled().len(), 1);
    assert_eq!(handle.calls()[0].outcome, Some(CallOutcome::Timeout));
    assert!(worker.is_alive());
}

#[tokio::test(start_paused = true)]
async fn dropped_call_is_recorded_as_cancelled() {
    let launcher = launcher();
    let worker = launcher.launch(WorkerId(1)).await.unwrap();
    let dropped = tokio::time::timeout(ms(10), worker.call(sleep_call(1_000))).await;
    assert!(dropped.is_err());
    let handle = launcher.worker(WorkerId(1)).unwrap();
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(worker.in_flight(), 0);
    assert_eq!(handle.calls()[0].outcome, Some(CallOutcome::Cancelled));
    assert!(handle.calls()[0].was_cancelled());
}

#[tokio::test(start_paused = true)]
async fn crash_after_calls_fails_in_flight_and_later_calls() {
    let launcher = launcher().script(|_| {
        WorkerScript::default()
            .crash_after_calls(2)
            .stderr_tail("Traceback: boom")
            .pid(4242)
    });
    let worker = launcher.launch(WorkerId(7)).await.unwrap();
    let handle = launcher.worker(WorkerId(7)).unwrap();
    let slow = worker.call(sleep_call(10_000));
    let trigger = async {
        handle.wait_for_calls(1).await;
        worker.call(echo(1)).await.unwrap();
        // Call index 2 crashes the worker.
        worker.call(echo(2)).await
    };
    let (slow, crashed) = tokio::join!(slow, trigger);
    for result in [slow, crashed] {
        match result {
            Err(CallError::WorkerCrashed {
                worker,
                pid,
                endpoint,
                exit,
                stderr_tail,
                reason,
                cause,
            }) => {
                assert_eq!(endpoint, None, "a local worker has no endpoint");
                assert_eq!(cause, portpool_transport::CrashCause::StdoutClosed);
                assert_eq!(worker, WorkerId(7));
                assert_eq!(pid, Some(4242));
                assert_eq!(exit.code, Some(101));
                assert_eq!(stderr_tail, "Traceback: boom");
                assert!(reason.contains("stdout closed"), "{reason}");
            }
            other => panic!("expected a crash, got {other:?}"),
        }
    }
    assert!(!worker.is_alive());
    assert!(handle.crashed());
    assert_eq!(worker.closed().await.code, Some(101));
    // Later calls fail the same way without reaching the worker.
    assert!(matches!(
        worker.call(echo(3)).await,
        Err(CallError::WorkerCrashed { .. })
    ));
    assert!(matches!(
        worker.ping(SEC).await,
        Err(CallError::WorkerCrashed { .. })
    ));
    assert!(matches!(
        worker.stream(CallRequest::new("count", 1)).await,
        Err(CallError::WorkerCrashed { .. })
    ));
    assert_eq!(handle.calls().len(), 3);
    let outcomes: Vec<_> = handle.calls().into_iter().map(|c| c.outcome.unwrap()).collect();
    assert_eq!(
        outcomes,
        [CallOutcome::Crashed, CallOutcome::Ok, CallOutcome::Crashed]
    );
}

#[tokio::test(start_paused = true)]
async fn crash_at_a_time_and_closed_resolves() {
    let launcher = launcher().script(|_| WorkerScript::default().crash_at(Duration::from_secs(5)));
    let worker = launcher.launch(WorkerId(1)).await.unwrap();
    let start = Instant::now();
    let err = worker.call(sleep_call(60_000)).await.unwrap_err();
    assert!(matches!(err, CallError::WorkerCrashed { .. }));
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert_eq!(worker.closed().await.code, Some(101));
}

#[tokio::test(start_paused = true)]
async fn handle_crash_and_hang_on_demand() {
    let launcher = launcher();
    let worker = launcher.launch(WorkerId(1)).await.unwrap();
    let handle = launcher.workers().pop().unwrap();
    handle.hang();
    assert!(matches!(
        worker.call(echo(1).with_timeout(SEC)).await,
        Err(CallError::Timeout { .. })
    ));
    handle.unhang();
    assert!(worker.call(echo(1)).await.is_ok());
    let exit = WorkerExit {
        code: None,
        signal: Some(11),
    };
    handle.crash_with("protocol violation: garbage", exit);
    match worker.call(echo(1)).await {
        Err(CallError::WorkerCrashed { reason, exit: e, .. }) => {
            assert_eq!(reason, "protocol violation: garbage");
            assert_eq!(e, exit);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(handle.exit(), Some(exit));
    // A second crash changes nothing.
    handle.crash();
    assert_eq!(worker.closed().await, exit);
}

#[tokio::test(start_paused = true)]
async fn per_call_and_per_method_faults() {
    let launcher = launcher().script(|_| {
        WorkerScript::default()
            .on_call(0, Fault::Delay(SEC))
            .on_call(1, Fault::Fail(remote_error("KeyError", "k")))
            .hang_method("sleep")
            .fail_method("echo_bad", remote_error("E", "m"))
    });
    let worker = launcher.launch(WorkerId(1)).await.unwrap();
    let start = Instant::now();
    worker.call(echo(0)).await.unwrap();
    assert_eq!(start.elapsed(), SEC);
    assert!(
        matches!(worker.call(echo(1)).await, Err(CallError::Remote { error, .. }) if error.kind == "KeyError")
    );
    assert!(worker.call(echo(2)).await.is_ok());
    assert!(matches!(
        worker.call(sleep_call(1).with_timeout(SEC)).await,
        Err(CallError::Timeout { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn garbage_is_a_protocol_violation_crash() {
    let launcher = launcher().script(|_| WorkerScript::default().on_method("bad", Fault::Garbage));
    let worker = launcher.launch(WorkerId(1)).await.unwrap();
    match worker.call(CallRequest::new("bad", Value::Nil)).await {
        Err(CallError::WorkerCrashed { reason, exit, .. }) => {
            assert!(reason.starts_with("protocol violation"), "{reason}");
            assert_eq!(exit.signal, Some(9));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn launch_faults() {
    let launcher = launcher()
        .launch_delay(ms(200))
        .init_timeout(Some(Duration::from_secs(10)))
        .script(|n| match n {
            0 => WorkerScript::default().fail_launch("no python"),
            1 => WorkerScript::default()
                .exit_during_init(3)
                .stderr_tail("ImportError: x"),
            2 => WorkerScript::default().no_hello(),
            3 => WorkerScript::default().bad_hello("protocol version mismatch"),
            4 => WorkerScript::default().launch_delay(Duration::from_secs(2)),
            _ => WorkerScript::default(),
        });
    let start = Instant::now();
    assert!(
        matches!(launcher.launch(WorkerId(0)).await, Err(LaunchError::Other { reason, .. }) if reason == "no python")
    );
    assert_eq!(start.elapsed(), ms(200));
    match launcher.launch(WorkerId(1)).await {
        Err(LaunchError::ExitedDuringInit {
            exit, stderr_tail, ..
        }) => {
            assert_eq!(exit.code, Some(3));
            assert_eq!(stderr_tail, "ImportError: x");
        }
        other => panic!("{other:?}"),
    }
    let start = Instant::now();
    assert!(
        matches!(launcher.launch(WorkerId(2)).await, Err(LaunchError::InitTimeout { after, .. }) if after == Duration::from_secs(10))
    );
    assert_eq!(start.elapsed(), Duration::from_secs(10) + ms(200));
    assert!(matches!(
        launcher.launch(WorkerId(3)).await,
        Err(LaunchError::BadHello { .. })
    ));
    let start = Instant::now();
    assert!(launcher.launch(WorkerId(4)).await.is_ok());
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(launcher.launches(), 5);
    assert_eq!(launcher.workers().len(), 1);
    let log = launcher.launch_log();
    assert_eq!(log.len(), 5);
    assert!(log[..4].iter().all(|r| r.result.is_err()));
    assert!(log[4].result.is_ok());
    assert_eq!(
        launcher
            .event_recorder()
            .count(|e| matches!(e, FakeEvent::LaunchFailed { .. })),
        4
    );
}

#[tokio::test(start_paused = true)]
async fn script_for_a_worker_id_wins() {
    let launcher = launcher()
        .script(|_| WorkerScript::default().fail_launch("all fail"))
        .script_for(
            WorkerId(9),
            WorkerScript::default().max_concurrency(2).rss(1 << 20),
        );
    assert!(launcher.launch(WorkerId(1)).await.is_err());
    let worker = launcher.launch(WorkerId(9)).await.unwrap();
    assert_eq!(worker.info().max_concurrency, 2);
    assert_eq!(worker.rss_bytes(), Some(1 << 20));
    launcher.worker(WorkerId(9)).unwrap().set_rss(Some(5 << 20));
    assert_eq!(worker.rss_bytes(), Some(5 << 20));
}

#[tokio::test(start_paused = true)]
async fn no_hello_without_init_timeout_never_finishes() {
    let launcher = launcher()
        .init_timeout(None)
        .script(|_| WorkerScript::default().no_hello());
    let result = tokio::time::timeout(Duration::from_secs(3600), launcher.launch(WorkerId(1))).await;
    assert!(result.is_err());
    assert_eq!(launcher.launches(), 1);
    assert!(launcher.launch_log().is_empty());
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_in_flight_calls_then_exits_zero() {
    let launcher = launcher();
    let worker = launcher.launch(WorkerId(1)).await.unwrap();
    let handle = launcher.worker(WorkerId(1)).unwrap();
    let start = Instant::now();
    let call = worker.call(sleep_call(2_000));
    let shutdown = async {
        handle.wait_for_calls(1).await;
        let exit = worker.shutdown(Duration::from_secs(10)).await;
        (exit, start.elapsed())
    };
    let (call, (exit, took)) = tokio::join!(call, shutdown);
    assert_eq!(call.unwrap(), Value::from(2_000));
    assert!(exit.success());
    assert_eq!(took, Duration::from_secs(2));
    assert!(!worker.is_alive());
    assert!(matches!(
        worker.call(echo(1)).await,
        Err(CallError::WorkerClosed { .. })
    ));
    assert!(!matches!(worker.call(echo(1)).await.unwrap_err(), e if e.is_worker_fault()));
    // Idempotent.
    assert!(worker.shutdown(SEC).await.success());
    assert_eq!(handle.shutdowns(), [Duration::from_secs(10), SEC]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_grace_runs_out_and_fails_hung_calls_with_closed() {
    let launcher = launcher().script(|_| WorkerScript::default().hang_method("sleep"));
    let worker = launcher.launch(WorkerId(1)).await.unwrap();
    let handle = launcher.worker(WorkerId(1)).unwrap();
    let start = Instant::now();
    let call = worker.call(sleep_call(1));
    let shutdown = async {
        handle.wait_for_calls(1).await;
        // Calls during shutdown are refused.
        let (exit, refused) = tokio::join!(worker.shutdown(Duration::from_secs(3)), worker.call(echo(1)));
        assert!(matches!(refused, Err(CallError::WorkerClosed { .. })));
        exit
    };
    let (call, exit) = tokio::join!(call, shutdown);
    assert!(matches!(call, Err(CallError::WorkerClosed { .. })));
    assert_eq!(exit.signal, Some(15));
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert_eq!(handle.calls()[0].outcome, Some(CallOutcome::Closed));
}

#[tokio::test(start_paused = true)]
async fn ignore_shutdown_takes_the_whole_grace() {
    let launcher = launcher().script(|_| WorkerScript::default().ignore_shutdown());
    let worker = launcher.launch(WorkerId(1)).await.unwrap();
    let start = Instant::now();
    let exit = worker.shutdown(Duration::from_secs(4)).await;
    assert_eq!(exit.signal, Some(15));
    assert_eq!(start.elapsed(), Duration::from_secs(4));
}

#[tokio::test(start_paused = true)]
async fn idle_shutdown_is_immediate() {
    let launcher = launcher();
    let worker = launcher.launch(WorkerId(1)).await.unwrap();
    let start = Instant::now();
    assert!(worker.shutdown(Duration::from_secs(4)).await.success());
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(worker.closed().await.success());
}

#[tokio::test(start_paused = true)]
async fn dropping_the_worker_kills_it() {
    let launcher = launcher();
    let worker = launcher.launch(WorkerId(1)).await.unwrap();
    let handle = launcher.worker(WorkerId(1)).unwrap();
    let mut stream = worker.stream(CallRequest::new("count", 3)).await.unwrap();
    drop(worker);
    assert!(!handle.is_alive());
    assert_eq!(
        handle.exit(),
        Some(WorkerExit {
            code: None,
            signal: Some(9)
        })
    );
    assert!(matches!(
        stream.next().await,
        Some(Err(CallError::WorkerClosed { .. }))
    ));
    assert!(stream.next().await.is_none());
    assert!(launcher.live_workers().is_empty());
}

#[tokio::test(start_paused = true)]
async fn streams_yield_chunks_then_end() {
    let launcher = launcher()
        .stream_handler("half", |_| {
            vec![Ok(Value::from(1)), Err(remote_error("StopError", "half"))]
        })
        .script(|_| WorkerScript::default().chunk_interval(ms(10)));
    let worker = launcher.launch(WorkerId(1)).await.unwrap();
    let start = Instant::now();
    let items: Vec<_> = worker
        .stream(CallRequest::new("count", 3))
        .await
        .unwrap()
        .collect()
        .await;
    let values: Vec<Value> = items.into_iter().map(Result::unwrap).collect();
    assert_eq!(values, [Value::from(0), Value::from(1), Value::from(2)]);
    // Three intervals between/after the chunks before the end.
    assert_eq!(start.elapsed(), ms(30));

    let items: Vec<_> = worker
        .stream(CallRequest::new("half", Value::Nil))
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(items.len(), 2);
    assert!(matches!(&items[1], Err(CallError::Remote { error, .. }) if error.kind == "StopError"));

    // A plain handler streamed: its result is not a chunk.
    let items: Vec<_> = worker.stream(echo(1)).await.unwrap().collect().await;
    assert!(items.is_empty());

    let handle = launcher.worker(WorkerId(1)).unwrap();
    let calls = handle.calls();
    assert!(calls.iter().all(|c| c.streaming));
    assert_eq!(calls[0].outcome, Some(CallOutcome::Ok));
    assert_eq!(calls[1].outcome, Some(CallOutcome::Remote("StopError".into())));
}

#[tokio::test(start_paused = true)]
async fn streams_time_out_crash_and_cancel() {
    let launcher = launcher().script(|_| WorkerScript::default().chunk_interval(SEC));
    let worker = launcher.launch(WorkerId(1)).await.unwrap();
    let handle = launcher.worker(WorkerId(1)).unwrap();

    let mut stream = worker
        .stream(CallRequest::new("count", 10).with_timeout(ms(2_500)))
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(item) = stream.next().await {
        got.push(item);
    }
    assert_eq!(got.len(), 4);
    assert!(matches!(got[3], Err(CallError::Timeout { .. })));

    let mut stream = worker.stream(CallRequest::new("count", 10)).await.unwrap();
    assert!(stream.next().await.unwrap().is_ok());
    drop(stream);
    assert_eq!(handle.calls()[1].outcome, Some(CallOutcome::Cancelled));
    assert_eq!(handle.in_flight(), 0);

    let mut stream = worker.stream(CallRequest::new("count", 10)).await.unwrap();
    assert!(stream.next().await.unwrap().is_ok());
    handle.crash();
    assert!(matches!(
        stream.next().await,
        Some(Err(CallError::WorkerCrashed { .. }))
    ));
    assert!(stream.next().await.is_none());
    assert_eq!(handle.cancelled().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn pings() {
    let launcher = launcher().script(|n| match n {
        0 => WorkerScript::default().ping_latency(ms(30)),
        _ => WorkerScript::default().ignore_pings(),
    });
    let fast = launcher.launch(WorkerId(1)).await.unwrap();
    assert_eq!(fast.ping(SEC).await.unwrap(), ms(30));
    assert!(matches!(fast.ping(ms(10)).await, Err(CallError::Timeout { method, .. }) if method == "ping"));
    let deaf = launcher.launch(WorkerId(2)).await.unwrap();
    let start = Instant::now();
    assert!(matches!(deaf.ping(SEC).await, Err(CallError::Timeout { .. })));
    assert_eq!(start.elapsed(), SEC);
    let handle = launcher.worker(WorkerId(2)).unwrap();
    handle.set_ignore_pings(false);
    assert_eq!(deaf.ping(SEC).await.unwrap(), Duration::ZERO);
    assert_eq!(handle.pings(), 2);
    // Pings are not calls.
    assert_eq!(deaf.in_flight(), 0);
    assert!(handle.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn session_state_and_close_session() {
    let launcher = FakeLauncher::new().handler_ctx("incr", |ctx, _| {
        let n = ctx.session_state().and_then(|v| v.as_u64()).unwrap_or(0) + 1;
        ctx.set_session_state(Value::from(n));
        Ok(Value::from(n))
    });
    let worker = launcher.launch(WorkerId(1)).await.unwrap();
    let incr = |s: &str| CallRequest::new("incr", Value::Nil).with_session(s);
    assert_eq!(worker.call(incr("a")).await.unwrap(), Value::from(1));
    assert_eq!(worker.call(incr("a")).await.unwrap(), Value::from(2));
    assert_eq!(worker.call(incr("b")).await.unwrap(), Value::from(1));
    worker.close_session("a").await.unwrap();
    assert_eq!(worker.call(incr("a")).await.unwrap(), Value::from(1));
    let handle = launcher.worker(WorkerId(1)).unwrap();
    assert_eq!(handle.session_closes(), ["a"]);
    assert_eq!(handle.session_state("b"), Some(Value::from(1)));
    // Without a session there is no state.
    assert_eq!(
        worker.call(CallRequest::new("incr", Value::Nil)).await.unwrap(),
        Value::from(1)
    );
    handle.crash();
    assert!(worker.close_session("b").await.is_err());
}

#[tokio::test(start_paused = true)]
async fn async_handler_ctx_sees_worker_and_index() {
    let launcher = FakeLauncher::new().async_handler_ctx("who", |ctx, _| async move {
        Ok(Value::from(format!("{}#{}", ctx.worker, ctx.call_index)))
    });
    let worker = launcher.launch(WorkerId(4)).await.unwrap();
    worker.call(CallRequest::new("who", Value::Nil)).await.unwrap();
    assert_eq!(
        worker.call(CallRequest::new("who", Value::Nil)).await.unwrap(),
        Value::from("worker-4#1")
    );
}

#[tokio::test(start_paused = true)]
async fn every_call_ends_exactly_once_under_mixed_faults() {
    let launcher = launcher().script(|n| {
        WorkerScript::default()
            .latency(ms(10 * (n + 1)))
            .crash_after_calls(15 + n)
            .on_method("fail", Fault::Delay(ms(5)))
    });
    let ledger = CallLedger::new();
    let mut workers = Vec::new();
    for id in 0..3 {
        workers.push(launcher.launch(WorkerId(id)).await.unwrap());
    }
    let mut calls = Vec::new();
    for i in 0..60u64 {
        let worker = &workers[(i % 3) as usize];
        let request = match i % 4 {
            0 => sleep_call(i * 7).with_timeout(ms(200)),
            1 => CallRequest::new("fail", Value::Nil),
            2 => echo(i as i64),
            _ => sleep_call(1_000),
        };
        let ledger = ledger.clone();
        calls.push(async move {
            let id = ledger.start(format!("call {i}"));
            let outcome = worker.call(request).await;
            ledger.end(id, format!("{outcome:?}"));
        });
    }
    // Drop some of them half-way through.
    let (kept, dropped): (Vec<_>, Vec<_>) = calls.into_iter().enumerate().partition(|(i, _)| i % 10 != 9);
    let dropped = futures::future::join_all(dropped.into_iter().map(|(_, f)| f));
    let _ = tokio::time::timeout(ms(50), dropped).await;
    futures::future::join_all(kept.into_iter().map(|(_, f)| f)).await;
    launcher.assert_no_calls_in_flight();
    let ended = launcher
        .event_recorder()
        .count(|e| matches!(e, FakeEvent::CallEnded { .. }));
    let started = launcher
        .event_recorder()
        .count(|e| matches!(e, FakeEvent::CallStarted { .. }));
    assert_eq!(started, ended);
    for handle in launcher.workers() {
        assert!(handle.calls().iter().all(|c| c.outcome.is_some()));
    }
    // The dropped calls still running after 50 ms (the three `sleep`s; the
    // `fail`s had ended) never ended in the caller's ledger; the rest did, once.
    assert_eq!(ledger.open().len(), 3);
    assert!(!ledger.report().contains("times"));
}

#[tokio::test(start_paused = true)]
async fn wait_helpers_and_notes() {
    let launcher = launcher();
    let waiter = launcher.clone();
    let task = tokio::spawn(async move {
        waiter.wait_for_workers(2).await;
        waiter.event_recorder().record(FakeEvent::Note("two up".into()));
    });
    launcher.launch(WorkerId(1)).await.unwrap();
    tokio::time::sleep(SEC).await;
    let _w = launcher.launch(WorkerId(2)).await.unwrap();
    task.await.unwrap();
    let note = launcher
        .event_recorder()
        .wait_for(|e| matches!(e, FakeEvent::Note(_)))
        .await;
    assert_eq!(note.at, SEC);
    assert_eq!(note.event.worker(), None);
    let handle = launcher.worker(WorkerId(2)).unwrap();
    let watcher = handle.clone();
    let wait = tokio::spawn(async move { watcher.wait_until(|h| h.pings() >= 1).await });
    _w.ping(SEC).await.unwrap();
    wait.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn launch_fake_gives_the_concrete_worker() {
    let launcher = launcher();
    let worker = launcher.launch_fake(WorkerId(1)).await.unwrap();
    assert_eq!(worker.handle().id(), WorkerId(1));
    assert!(format!("{worker:?}").contains("FakeWorker"));
    assert!(format!("{launcher:?}").contains("echo"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_across_threads_as_a_trait_object() {
    let launcher = launcher();
    let dynamic: std::sync::Arc<dyn Launcher> = std::sync::Arc::new(launcher.clone());
    let worker: std::sync::Arc<dyn portpool_transport::Worker> =
        dynamic.launch(WorkerId(1)).await.unwrap().into();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let worker = worker.clone();
            tokio::spawn(async move { worker.call(sleep_call(i % 5)).await })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await.unwrap().unwrap(), Value::from(i as u64 % 5));
    }
    assert_eq!(launcher.worker(WorkerId(1)).unwrap().calls().len(), 50);
    assert!(worker.shutdown(SEC).await.success());
    launcher.assert_no_calls_in_flight();
}
