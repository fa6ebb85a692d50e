//! Exactly-once outcomes and cancellation, checked on the pool's own code
//! (acquire, dispatch, run_call, streams, leases, targeted calls) under
//! mixed faults: crashes, hangs cut by time-outs, handler errors and
//! callers that give up. Random but seeded, in paused time.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use portpool_pool::{Checkout, Pool, PoolError, Wait};
use portpool_testkit::{remote_error, CallLedger, CallOutcome, FakeLauncher, Fault, WorkerScript};
use portpool_transport::{CallRequest, Value, WorkerId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const WORKERS: usize = 3;
const CALLS: usize = 300;

fn fault_launcher(seed: u64) -> FakeLauncher {
    launcher()
        .handler("raise", |_| Err(remote_error("ValueError", "bad input")))
        .max_concurrency(4)
        .script(move |n| {
            // Per launch, derived from the seed: a latency, a crash after
            // some calls, a delayed method, slow chunks.
            let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(n));
            let mut script = WorkerScript::default()
                .latency(ms(rng.gen_range(0..20)))
                .chunk_interval(ms(rng.gen_range(1..30)))
                .on_method("raise", Fault::Delay(ms(rng.gen_range(0..10))));
            if rng.gen_bool(0.7) {
                script = script.crash_after_calls(rng.gen_range(5..40));
            }
            script
        })
}

/// What one caller does.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Echo,
    Sleep,
    Raise,
    /// A hang ended by the caller's own deadline.
    HangOwnDeadline,
    /// A hang ended by the pool's call time-out.
    HangPoolTimeout,
    Stream,
    /// Through an exclusive lease, two calls.
    Lease,
    /// For one worker (session affinity).
    Targeted,
    /// A caller that gives up after a short while (its future is dropped).
    Dropped,
    /// A stream dropped after its first item.
    StreamDropped,
    /// A stream opened through a shared lease that is dropped first.
    LeaseStream,
}

const KINDS: [Kind; 11] = [
    Kind::Echo,
    Kind::Sleep,
    Kind::Raise,
    Kind::HangOwnDeadline,
    Kind::HangPoolTimeout,
    Kind::Stream,
    Kind::Lease,
    Kind::Targeted,
    Kind::Dropped,
    Kind::StreamDropped,
    Kind::LeaseStream,
];

/// Runs one call of `kind`; returns what the caller saw, or panics if a
/// reply belongs to another call.
async fn one_call(pool: &Pool, kind: Kind, i: i64, rng_val: u64) -> Result<(), PoolError> {
    match kind {
        Kind::Echo => {
            let v: i64 = pool.call("echo", &i).await?;
            assert_eq!(v, i, "a caller got another call's reply");
        }
        Kind::Sleep => {
            let v: u64 = pool.call("sleep", &(rng_val % 200)).await?;
            assert_eq!(v, rng_val % 200, "a caller got another call's reply");
        }
        Kind::Raise => {
            pool.call::<_, Value>("raise", &i).await?;
            panic!("raise returned Ok");
        }
        Kind::HangOwnDeadline => {
            let req = CallRequest::new("hang", Value::Nil).with_timeout(ms(50 + rng_val % 300));
            pool.call_raw(req).await?;
            panic!("hang returned Ok");
        }
        Kind::HangPoolTimeout => {
            pool.call_value("hang", Value::Nil).await?;
            panic!("hang returned Ok");
        }
        Kind::Stream => {
            let n = rng_val % 6;
            let mut s = pool.stream(CallRequest::new("count", n)).await?;
            let mut next = 0u64;
            while let Some(item) = s.next().await {
                assert_eq!(item?, Value::from(next), "stream items out of order");
                next += 1;
            }
            assert_eq!(next, n);
        }
        Kind::Lease => {
            let lease = pool.checkout_with(Checkout::Exclusive).await?;
            for j in 0..2 {
                let v: i64 = lease.call("echo", &(i * 10 + j)).await?;
                assert_eq!(v, i * 10 + j);
            }
        }
        Kind::Targeted => {
            let w = WorkerId(rng_val % 8);
            let v = pool
                .affinity()
                .call(w, CallRequest::new("echo", i), Wait::Queue)
                .await?;
            assert_eq!(v, Value::from(i));
        }
        Kind::Dropped => {
            let give_up = ms(rng_val % 100);
            let _ = tokio::time::timeout(give_up, pool.call::<_, u64>("sleep", &(rng_val % 500))).await;
        }
        Kind::StreamDropped => {
            let mut s = pool.stream(CallRequest::new("count", 50)).await?;
            let _ = s.next().await;
        }
        Kind::LeaseStream => {
            let lease = pool.checkout_with(Checkout::Shared).await?;
            let n = rng_val % 6;
            let mut s = lease.stream(CallRequest::new("count", n)).await?;
            drop(lease);
            let mut next = 0u64;
            while let Some(item) = s.next().await {
                assert_eq!(item?, Value::from(next), "stream items out of order");
                next += 1;
            }
            assert_eq!(next, n);
        }
    }
    Ok(())
}

async fn run(seed: u64) {
    let l = fault_launcher(seed);
    let pool = fake_pool_builder(&l)
        .name(format!("exactly-once-{seed}"))
        .workers(WORKERS)
        .call_timeout(ms(400))
        .checkout_timeout(secs(30))
        .crash_loop(10_000, secs(1))
        .build()
        .await
        .unwrap();
    let ledger = CallLedger::new();
    let errors = Arc::new(AtomicUsize::new(0));
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tasks = Vec::new();
    let mut aborted = Vec::new();
    for i in 0..CALLS {
        let kind = KINDS[rng.gen_range(0..KINDS.len())];
        let start = ms(rng.gen_range(0..3_000));
        let rng_val: u64 = rng.gen();
        let (pool, ledger, errors) = (pool.clone(), ledger.clone(), errors.clone());
        let task = tokio::spawn(async move {
            tokio::time::sleep(start).await;
            let id = ledger.start(format!("{i} {kind:?}"));
            match one_call(&pool, kind, i as i64, rng_val).await {
                Ok(()) => ledger.end(id, "ok"),
                Err(e) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    ledger.end(id, format!("{e}"));
                }
            }
        });
        // Some callers are cancelled from outside, at a random time.
        if rng.gen_bool(0.05) {
            aborted.push((task.abort_handle(), ms(rng.gen_range(0..3_500))));
        }
        tasks.push(task);
    }
    // Chaos: crash a random live worker now and then; abort some callers.
    let chaos = tokio::spawn({
        let l = l.clone();
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        async move {
            for _ in 0..8 {
                tokio::time::sleep(ms(rng.gen_range(100..500))).await;
                let live = l.live_workers();
                if !live.is_empty() {
                    live[rng.gen_range(0..live.len())].crash();
                }
            }
        }
    });
    let aborter = tokio::spawn(async move {
        let t0 = tokio::time::Instant::now();
        aborted.sort_by_key(|(_, at)| *at);
        for (h, at) in aborted {
            tokio::time::sleep_until(t0 + at).await;
            h.abort();
        }
    });
    // Every caller ends (none hangs): bounded in virtual time.
    let all = futures::future::join_all(tasks);
    let joined = tokio::time::timeout(secs(600), all)
        .await
        .unwrap_or_else(|_| panic!("seed {seed}: calls still running: {}", ledger.report()));
    chaos.await.unwrap();
    aborter.await.unwrap();
    let mut cancelled_tasks = 0;
    for r in joined {
        match r {
            Ok(()) => {}
            Err(e) if e.is_cancelled() => cancelled_tasks += 1,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    // A caller aborted mid-call leaves its ledger entry open (it never saw
    // an outcome); every other call ended exactly once.
    let open = ledger.open().len();
    assert!(open <= cancelled_tasks, "seed {seed}: {}", ledger.report());
    let report = ledger.report();
    let problems: Vec<&str> = report.lines().filter(|l| !l.contains("never ended")).collect();
    assert!(problems.is_empty(), "seed {seed}: {problems:?}");
    // No slot, waiter or worker call leaks: back to idle and full strength.
    let st = wait_status(&pool, |s| {
        s.ready == WORKERS && s.queue_depth == 0 && held(s) == 0 && s.workers.iter().all(|w| w.in_flight == 0)
    })
    .await;
    assert_eq!(st.workers.len(), WORKERS);
    l.assert_no_calls_in_flight();
    // No worker ever ran more calls than its capacity.
    for w in l.workers() {
        assert!(
            w.peak_in_flight() <= 4,
            "seed {seed}: {} ran {} calls at once",
            w.id(),
            w.peak_in_flight()
        );
    }
    // The pool still serves.
    let v: i64 = pool.call("echo", &-1).await.unwrap();
    assert_eq!(v, -1);
    let crashed = l.workers().iter().filter(|w| w.crashed()).count();
    println!(
        "seed {seed}: {} calls, {} errors, {cancelled_tasks} aborted, {crashed} workers crashed, {} launches",
        ledger.started(),
        errors.load(Ordering::Relaxed),
        l.launches()
    );
    assert!(crashed >= 3, "seed {seed}: the faults ran ({crashed} crashes)");
    pool.shutdown(secs(1)).await;
}

/// Every pool call ends exactly once (a result or one error), no slot,
/// waiter or worker call leaks, and the pool is back at full strength:
/// under crashes, hangs cut by the caller's or the pool's time-out, handler
/// errors, dropped and aborted callers. Several seeds.
#[tokio::test(start_paused = true)]
async fn every_pool_call_ends_exactly_once_under_mixed_faults() {
    for seed in [1, 2, 3, 7, 42] {
        run(seed).await;
    }
}

/// A pool call whose caller gives up is cancelled on the worker (the real
/// transport sends `cancel`), whichever way it was made: call, lease,
/// targeted call, stream. Its slot comes back at once.
#[tokio::test(start_paused = true)]
async fn a_dropped_pool_call_is_recorded_by_the_worker_as_cancelled() {
    let l = launcher().script(|_| WorkerScript::default().chunk_interval(secs(1)));
    let pool = fake_pool(&l, 1).await.unwrap();
    let w0 = l.worker(WorkerId(0)).unwrap();

    let r = tokio::time::timeout(ms(10), pool.call::<_, u64>("sleep", &10_000)).await;
    assert!(r.is_err());
    {
        let lease = pool.checkout().await.unwrap();
        let r = tokio::time::timeout(ms(10), lease.call::<_, u64>("sleep", &10_000)).await;
        assert!(r.is_err());
    }
    let r = tokio::time::timeout(
        ms(10),
        pool.affinity()
            .call(WorkerId(0), CallRequest::new("sleep", 10_000), Wait::Queue),
    )
    .await;
    assert!(r.is_err());
    let mut s = pool.stream(CallRequest::new("count", 10)).await.unwrap();
    s.next().await.unwrap().unwrap();
    drop(s);
    // An aborted task holding a call.
    let task = spawn_call::<u64>(&pool, "sleep", 10_000);
    settle().await;
    task.abort();
    settle().await;

    let calls = w0.calls();
    assert_eq!(calls.len(), 5);
    for c in &calls {
        assert_eq!(c.outcome, Some(CallOutcome::Cancelled), "{c:?}");
        assert!(c.was_cancelled());
    }
    let st = pool.status();
    assert_eq!(held(&st), 0);
    assert_eq!(st.workers[0].in_flight, 0);
    assert_eq!(st.workers[0].served, 0, "a cancelled call is not a served call");
    // Nothing leaked: the worker takes an exclusive lease at once.
    let t0 = tokio::time::Instant::now();
    let lease = pool.checkout().await.unwrap();
    assert_eq!(t0.elapsed(), Duration::ZERO);
    drop(lease);
    pool.shutdown(secs(1)).await;
}
