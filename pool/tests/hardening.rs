//! Hardening (issue 11): frozen workers under load, streams that outlive
//! their lease, callers' own deadlines and the breaker, and what
//! `WorkerStatus` shows of a worker. Fakes and paused time.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use futures::StreamExt;
use portpool_pool::{BreakerConfig, BreakerState, Checkout, Heartbeat, PoolError, WorkerState};
use portpool_testkit::{FakeLauncher, WorkerScript};
use portpool_transport::{
    CallError, CallRequest, CallStream, CrashCause, LaunchError, Launcher, Value, Worker, WorkerExit,
    WorkerId, WorkerInfo,
};
use tokio::time::Instant;

/// What a [`Scripted`] worker reports as its CPU time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cpu {
    /// `None`, like the fake itself.
    Unknown,
    /// A constant: a stopped or deadlocked process.
    Stuck,
    /// Grows with (virtual) time: a process busy in a C call.
    Busy,
}

#[derive(Debug)]
struct Knobs {
    cpu: Cpu,
    discarded: u64,
}

/// A worker that delegates to a fake and reports a scripted CPU time and
/// discarded-reply count (the fake has neither).
#[derive(Debug)]
struct Scripted {
    inner: Box<dyn Worker>,
    knobs: Arc<Mutex<Knobs>>,
    born: Instant,
}

#[async_trait]
impl Worker for Scripted {
    fn info(&self) -> &WorkerInfo {
        self.inner.info()
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
    fn is_alive(&self) -> bool {
        self.inner.is_alive()
    }
    fn rss_bytes(&self) -> Option<u64> {
        self.inner.rss_bytes()
    }
    fn cpu_time(&self) -> Option<Duration> {
        match self.knobs.lock().unwrap().cpu {
            Cpu::Unknown => None,
            Cpu::Stuck => Some(ms(1_234)),
            Cpu::Busy => Some(self.born.elapsed()),
        }
    }
    fn discarded_replies(&self) -> u64 {
        self.knobs.lock().unwrap().discarded
    }
    fn stderr_tail(&self) -> String {
        self.inner.stderr_tail()
    }
    fn kill(&self, cause: CrashCause, reason: &str) {
        self.inner.kill(cause, reason)
    }
    async fn call(&self, request: CallRequest) -> Result<Value, CallError> {
        self.inner.call(request).await
    }
    async fn stream(&self, request: CallRequest) -> Result<CallStream, CallError> {
        self.inner.stream(request).await
    }
    async fn ping(&self, timeout: Duration) -> Result<Duration, CallError> {
        self.inner.ping(timeout).await
    }
    async fn close_session(&self, session: &str) -> Result<(), CallError> {
        self.inner.close_session(session).await
    }
    async fn shutdown(&self, grace: Duration) -> WorkerExit {
        self.inner.shutdown(grace).await
    }
    async fn closed(&self) -> WorkerExit {
        self.inner.closed().await
    }
}

/// A launcher of [`Scripted`] workers sharing one set of knobs.
struct ScriptedLauncher {
    fake: FakeLauncher,
    knobs: Arc<Mutex<Knobs>>,
}

#[async_trait]
impl Launcher for ScriptedLauncher {
    async fn launch(&self, id: WorkerId) -> Result<Box<dyn Worker>, LaunchError> {
        let inner = self.fake.launch(id).await?;
        Ok(Box::new(Scripted {
            inner,
            knobs: self.knobs.clone(),
            born: Instant::now(),
        }))
    }
}

fn scripted(fake: &FakeLauncher, cpu: Cpu) -> (ScriptedLauncher, Arc<Mutex<Knobs>>) {
    let knobs = Arc::new(Mutex::new(Knobs { cpu, discarded: 0 }));
    (
        ScriptedLauncher {
            fake: fake.clone(),
            knobs: knobs.clone(),
        },
        knobs,
    )
}

const HB: Heartbeat = Heartbeat {
    interval: Duration::from_secs(1),
    timeout: Duration::from_millis(200),
    max_misses: 3,
};

/// The documented bound: `interval × max_misses + timeout`.
fn frozen_bound() -> Duration {
    HB.interval * HB.max_misses + HB.timeout
}

/// Item 2: a worker frozen with a call in flight (no call time-out) stops
/// answering pings; with no CPU progress (here: unknown) it is killed as
/// unresponsive within the bound, its call fails, it is replaced.
async fn frozen_busy_worker_is_killed(cpu: Option<Cpu>) {
    let l = launcher().max_concurrency(4);
    // The knobs stay alive with the launcher; this test does not turn them.
    let (pool, _knobs) = match cpu {
        None => (
            builder(&l).workers(1).heartbeat(Some(HB)).build().await.unwrap(),
            None,
        ),
        Some(cpu) => {
            let (sl, knobs) = scripted(&l, cpu);
            let pool = portpool_pool::Pool::builder(sl)
                .name("test")
                .workers(1)
                .breaker(None)
                .heartbeat(Some(HB))
                .build()
                .await
                .unwrap();
            (pool, Some(knobs))
        }
    };
    let call = tokio::spawn({
        let pool = pool.clone();
        async move { pool.call::<_, u64>("sleep", &3_600_000).await }
    });
    settle().await;
    let w0 = l.worker(WorkerId(0)).unwrap();
    assert_eq!(w0.in_flight(), 1);
    // Frozen: pings go unanswered from now on.
    w0.set_ignore_pings(true);
    let frozen_at = Instant::now();
    let res = tokio::time::timeout(frozen_bound() + secs(60), call)
        .await
        .expect("the call on a frozen worker never ended")
        .unwrap();
    let took = frozen_at.elapsed();
    match &res {
        Err(PoolError::Call(CallError::WorkerCrashed { cause, reason, .. })) => {
            assert_eq!(*cause, CrashCause::Unresponsive, "{reason}");
            assert!(reason.contains("heartbeat"), "{reason}");
        }
        other => panic!("expected WorkerCrashed(Unresponsive), got {other:?}"),
    }
    assert!(
        took <= frozen_bound(),
        "detected after {took:?}, bound {:?}",
        frozen_bound()
    );
    assert!(w0.crashed());
    let st = wait_only_worker(&pool, WorkerId(1)).await;
    assert_eq!(st.ready, 1);
    assert_eq!(held(&st), 0);
    let v: u32 = pool.call("echo", &7).await.unwrap();
    assert_eq!(v, 7);
    pool.shutdown(secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_frozen_busy_worker_with_unknown_cpu_time_is_killed_within_the_bound() {
    frozen_busy_worker_is_killed(None).await;
}

#[tokio::test(start_paused = true)]
async fn a_frozen_busy_worker_without_cpu_progress_is_killed_within_the_bound() {
    frozen_busy_worker_is_killed(Some(Cpu::Stuck)).await;
}

/// Item 2, the other half: a worker that misses its pings while its CPU
/// time grows (busy in a GIL-holding C call) is not killed by that rule.
#[tokio::test(start_paused = true)]
async fn a_busy_worker_making_cpu_progress_is_not_killed() {
    let l = launcher()
        .max_concurrency(4)
        .script(|_| WorkerScript::default().ignore_pings());
    let (sl, knobs) = scripted(&l, Cpu::Busy);
    let pool = portpool_pool::Pool::builder(sl)
        .name("test")
        .workers(1)
        .breaker(None)
        .heartbeat(Some(HB))
        .build()
        .await
        .unwrap();
    // 30 s of missed pings with CPU progress: the call completes.
    let v: u64 = pool.call("sleep", &30_000).await.unwrap();
    assert_eq!(v, 30_000);
    let w0 = l.worker(WorkerId(0)).unwrap();
    assert!(w0.pings() >= 10, "it was pinged while busy: {}", w0.pings());
    assert!(w0.is_alive());
    assert_eq!(l.launches(), 1);
    // When its CPU time stops moving, it is frozen after all.
    knobs.lock().unwrap().cpu = Cpu::Stuck;
    let st = wait_only_worker(&pool, WorkerId(1)).await;
    assert_eq!(st.ready, 1);
    assert!(w0.crashed());
    pool.shutdown(secs(1)).await;
}

/// Item 7: a stream opened through a lease holds its slot after the lease
/// is dropped, until the stream ends or is dropped.
#[tokio::test(start_paused = true)]
async fn a_stream_opened_through_a_lease_holds_its_slot_after_the_lease_is_dropped() {
    for kind in [Checkout::Shared, Checkout::Exclusive] {
        let l = launcher()
            .stream_handler("count", |n: Value| {
                (0..n.as_u64().unwrap_or(0)).map(|i| Ok(Value::from(i))).collect()
            })
            .script(|_| WorkerScript::default().chunk_interval(secs(1)));
        let pool = builder(&l).workers(1).build().await.unwrap();
        let lease = pool.checkout_with(kind).await.unwrap();
        let mut stream = lease.stream(CallRequest::new("count", 5)).await.unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), Value::from(0));
        drop(lease);
        let st = pool.status();
        assert_eq!(held(&st), 1, "{kind:?}: the open stream holds the slot: {st:#?}");
        assert_eq!(st.workers[0].in_flight, 1);
        // The capacity-1 worker runs the stream; a call waits for it.
        let call = tokio::spawn({
            let pool = pool.clone();
            async move { pool.call::<_, u32>("echo", &1).await }
        });
        settle().await;
        assert_eq!(pool.status().queue_depth, 1, "{kind:?}");
        let rest: Vec<Value> = stream.by_ref().map(|r| r.unwrap()).collect().await;
        assert_eq!(rest.len(), 4);
        assert_eq!(call.await.unwrap().unwrap(), 1);
        assert_eq!(l.workers()[0].peak_in_flight(), 1, "{kind:?}: two calls at once");
        assert_eq!(held(&pool.status()), 0);
        // Dropping such a stream early frees the slot too.
        let lease = pool.checkout_with(kind).await.unwrap();
        let mut stream = lease.stream(CallRequest::new("count", 5)).await.unwrap();
        stream.next().await.unwrap().unwrap();
        drop(lease);
        assert_eq!(held(&pool.status()), 1);
        drop(stream);
        assert_eq!(held(&pool.status()), 0);
        pool.shutdown(secs(1)).await;
    }
}

/// Item 8: with the default config (no `call_timeout`), time-outs under
/// the callers' own deadlines are the callers' budget: they do not open the
/// breaker, for calls and streams alike.
#[tokio::test(start_paused = true)]
async fn callers_own_deadlines_do_not_open_the_breaker_without_a_call_timeout() {
    let l = launcher()
        .async_handler("hang", |_| std::future::pending())
        .stream_handler("count", |n: Value| {
            (0..n.as_u64().unwrap_or(0)).map(|i| Ok(Value::from(i))).collect()
        })
        .script(|_| WorkerScript::default().chunk_interval(secs(1)))
        .max_concurrency(8);
    let pool = builder(&l)
        .workers(2)
        .breaker(Some(BreakerConfig::default()))
        .max_consecutive_timeouts(None)
        .build()
        .await
        .unwrap();
    assert_eq!(pool.config().call_timeout, None);
    for _ in 0..5 {
        let err = pool
            .call_raw(CallRequest::new("hang", Value::Nil).with_timeout(ms(100)))
            .await
            .unwrap_err();
        assert!(matches!(err, PoolError::Call(CallError::Timeout { .. })), "{err}");
    }
    for _ in 0..5 {
        let mut s = pool
            .stream(CallRequest::new("count", 100).with_timeout(ms(1_500)))
            .await
            .unwrap();
        let mut timed_out = false;
        while let Some(item) = s.next().await {
            if let Err(e) = item {
                assert!(matches!(e, PoolError::Call(CallError::Timeout { .. })), "{e}");
                timed_out = true;
            }
        }
        assert!(timed_out);
    }
    assert_eq!(pool.status().breaker, BreakerState::Closed);
    let v: u32 = pool.call("echo", &1).await.unwrap();
    assert_eq!(v, 1, "healthy calls are served");
    pool.shutdown(secs(1)).await;
}

/// Item 19: a worker's stderr tail and discarded-reply count show in
/// `WorkerStatus`.
#[tokio::test(start_paused = true)]
async fn worker_status_shows_the_stderr_tail_and_discarded_replies() {
    let l = launcher().script(|_| WorkerScript::default().stderr_tail("warning: low on memory"));
    let (sl, knobs) = scripted(&l, Cpu::Unknown);
    knobs.lock().unwrap().discarded = 7;
    let pool = portpool_pool::Pool::builder(sl)
        .name("test")
        .workers(1)
        .heartbeat(None)
        .build()
        .await
        .unwrap();
    let st = pool.status();
    assert_eq!(st.workers[0].state, WorkerState::Ready);
    assert_eq!(st.workers[0].stderr_tail, "warning: low on memory");
    assert_eq!(st.workers[0].discarded_replies, 7);
    pool.shutdown(secs(1)).await;
    // Through the plain fake: its scripted tail, nothing discarded.
    let pool = builder(&l).workers(1).build().await.unwrap();
    let st = pool.status();
    assert_eq!(st.workers[0].stderr_tail, "warning: low on memory");
    assert_eq!(st.workers[0].discarded_replies, 0);
    pool.shutdown(secs(1)).await;
}
