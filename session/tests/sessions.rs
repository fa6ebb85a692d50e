//! Session affinity rules with fake workers and paused time.

use std::collections::HashSet;
use std::time::Duration;

use portpool_pool::{Pool, PoolError, WorkerAddress};
use portpool_session::*;
use portpool_testkit::{fake_pool, fake_pool_builder, spawn_with, CallContext, FakeLauncher};
use portpool_transport::{CallRequest, Value, WorkerId};
use tokio::task::JoinHandle;
use tokio::time::Instant;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `count` increments per-session state on the worker and returns it;
/// `whoami` returns the worker id; `sleep` sleeps params milliseconds.
fn launcher() -> FakeLauncher {
    FakeLauncher::new()
        .handler_ctx("count", |ctx: CallContext, _| {
            let n = ctx.session_state().and_then(|v| v.as_u64()).unwrap_or(0) + 1;
            ctx.set_session_state(Value::from(n));
            Ok(Value::from(n))
        })
        .handler_ctx("whoami", |ctx: CallContext, _| Ok(Value::from(ctx.worker.0)))
        .async_handler("sleep", |v: Value| async move {
            tokio::time::sleep(Duration::from_millis(v.as_u64().unwrap_or(0))).await;
            Ok(v)
        })
}

/// A ready pool of `workers` fakes (the testkit's deterministic settings).
async fn pool(l: &FakeLauncher, workers: usize) -> Pool {
    fake_pool(l, workers).await.unwrap()
}

/// Keeps `worker` busy with a `sleep` of `ms` of the pool's own (not a
/// session's), in a task of its own.
fn occupy(pool: &Pool, worker: WorkerId, ms: u64) -> JoinHandle<Result<Value, PoolError>> {
    spawn_with(pool, move |pool| async move {
        pool.affinity()
            .call(worker, CallRequest::new("sleep", ms), portpool_pool::Wait::Queue)
            .await
    })
}

/// `sleep` for `ms` in session `id`, in a task of its own.
fn spawn_sleep(sessions: &SessionPool, id: &SessionId, ms: u64) -> JoinHandle<Result<u64, SessionError>> {
    spawn_with(&sessions.session(id.clone()), move |s| async move {
        s.call("sleep", &ms).await
    })
}

async fn count(sessions: &SessionPool, id: &SessionId) -> Result<u64, SessionError> {
    sessions.call(id, "count", &()).await
}

async fn whoami(sessions: &SessionPool, id: &SessionId) -> u64 {
    sessions.call(id, "whoami", &()).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_session_binds_on_first_use_and_keeps_its_worker_and_state() {
    let l = launcher();
    let sessions = SessionPool::new(pool(&l, 3).await, SessionConfig::default()).unwrap();
    let id = SessionId::new();
    assert!(sessions.binding(&id).await.unwrap().is_none());
    for expected in 1..=5 {
        assert_eq!(count(&sessions, &id).await.unwrap(), expected);
    }
    let bound = sessions.worker_of(&id).await.unwrap().unwrap();
    let calls = l.worker(bound).unwrap().calls();
    assert_eq!(calls.len(), 5);
    assert!(
        calls.iter().all(|c| c.session.as_deref() == Some(id.as_str())),
        "calls carry the id"
    );
}

#[tokio::test(start_paused = true)]
async fn new_sessions_go_to_the_worker_with_fewest_sessions() {
    let l = launcher();
    let sessions = SessionPool::new(pool(&l, 3).await, SessionConfig::default()).unwrap();
    for _ in 0..12 {
        count(&sessions, &SessionId::new()).await.unwrap();
    }
    let per_worker = sessions.sessions_per_worker().await.unwrap();
    assert_eq!(per_worker.len(), 3);
    assert!(per_worker.values().all(|n| *n == 4), "{per_worker:?}");
}

#[tokio::test(start_paused = true)]
async fn concurrent_first_calls_of_one_session_bind_exactly_once() {
    let l = launcher().max_concurrency(32);
    let sessions = SessionPool::new(pool(&l, 4).await, SessionConfig::default()).unwrap();
    let id = SessionId::new();
    let calls = (0..20).map(|_| {
        spawn_with(&sessions.session(id.clone()), |s| async move {
            s.call::<_, u64>("whoami", &()).await.unwrap()
        })
    });
    let workers: HashSet<u64> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(workers.len(), 1, "all on one worker: {workers:?}");
    assert_eq!(sessions.len().await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn strict_affinity_queues_for_the_bound_worker() {
    let l = launcher();
    let sessions = SessionPool::new(pool(&l, 2).await, SessionConfig::default()).unwrap();
    let id = SessionId::new();
    let bound = whoami(&sessions, &id).await;
    let slow = spawn_sleep(&sessions, &id, 1_000);
    tokio::time::sleep(ms(1)).await;
    let t0 = Instant::now();
    assert_eq!(whoami(&sessions, &id).await, bound, "waited for its own worker");
    assert_eq!(t0.elapsed(), ms(999));
    slow.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn fail_fast_affinity_reports_a_busy_worker_at_once() {
    let l = launcher();
    let config = SessionConfig::default().affinity(Affinity::FailFast);
    let sessions = SessionPool::new(pool(&l, 2).await, config).unwrap();
    let id = SessionId::new();
    let bound = whoami(&sessions, &id).await;
    let slow = spawn_sleep(&sessions, &id, 1_000);
    tokio::time::sleep(ms(1)).await;
    let t0 = Instant::now();
    let err = sessions.call::<_, u64>(&id, "whoami", &()).await.unwrap_err();
    assert!(
        matches!(err, SessionError::WorkerBusy { worker, .. } if worker == WorkerId(bound)),
        "{err}"
    );
    assert_eq!(t0.elapsed(), ms(0));
    slow.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn hint_affinity_falls_back_to_another_worker() {
    let l = launcher();
    let config = SessionConfig::default().affinity(Affinity::Hint);
    let sessions = SessionPool::new(pool(&l, 2).await, config).unwrap();
    let id = SessionId::new();
    let bound = whoami(&sessions, &id).await;
    let slow = spawn_sleep(&sessions, &id, 1_000);
    tokio::time::sleep(ms(1)).await;
    let t0 = Instant::now();
    let elsewhere = whoami(&sessions, &id).await;
    assert_ne!(elsewhere, bound, "ran on the free worker");
    assert_eq!(t0.elapsed(), ms(0));
    slow.await.unwrap().unwrap();
    assert_eq!(
        whoami(&sessions, &id).await,
        bound,
        "back on its worker once free"
    );
    assert_eq!(
        sessions.worker_of(&id).await.unwrap().unwrap(),
        WorkerId(bound),
        "binding unchanged"
    );
}

#[tokio::test(start_paused = true)]
async fn close_tells_the_worker_to_drop_the_state() {
    let l = launcher();
    let sessions = SessionPool::new(pool(&l, 2).await, SessionConfig::default()).unwrap();
    let session = sessions.open();
    assert_eq!(session.call::<_, u64>("count", &()).await.unwrap(), 1);
    assert_eq!(session.call::<_, u64>("count", &()).await.unwrap(), 2);
    let bound = sessions.worker_of(session.id()).await.unwrap().unwrap();
    let id = session.id().clone();
    session.close().await.unwrap();
    assert_eq!(l.worker(bound).unwrap().session_closes(), vec![id.to_string()]);
    assert!(sessions.is_empty().await.unwrap());
    assert_eq!(count(&sessions, &id).await.unwrap(), 1, "a fresh session");
    sessions.close(&SessionId::new()).await.unwrap(); // unknown: nothing to do
}

#[tokio::test(start_paused = true)]
async fn idle_sessions_expire_after_the_ttl_busy_ones_do_not() {
    let l = launcher();
    let config = SessionConfig::default().idle_ttl(Some(Duration::from_secs(10)));
    let sessions = SessionPool::new(pool(&l, 1).await, config).unwrap();
    let (idle, busy) = (SessionId::new(), SessionId::new());
    count(&sessions, &idle).await.unwrap();
    let long = spawn_sleep(&sessions, &busy, 30_000);
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(sessions.len().await.unwrap(), 2);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(sessions.binding(&idle).await.unwrap().is_none(), "expired");
    assert!(
        sessions.binding(&busy).await.unwrap().is_some(),
        "a session with a call running stays"
    );
    assert_eq!(
        l.worker(WorkerId(0)).unwrap().session_closes(),
        vec![idle.to_string()]
    );
    long.await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert!(sessions.is_empty().await.unwrap(), "expired once idle");
}

#[tokio::test(start_paused = true)]
async fn max_sessions_evicts_the_least_recently_used_idle_session() {
    let l = launcher();
    let config = SessionConfig::default().max_sessions(2);
    let sessions = SessionPool::new(pool(&l, 1).await, config).unwrap();
    let (a, b, c) = (SessionId::new(), SessionId::new(), SessionId::new());
    count(&sessions, &a).await.unwrap();
    tokio::time::sleep(ms(10)).await;
    count(&sessions, &b).await.unwrap();
    tokio::time::sleep(ms(10)).await;
    count(&sessions, &a).await.unwrap(); // a is now the most recent
    count(&sessions, &c).await.unwrap();
    assert!(
        sessions.binding(&b).await.unwrap().is_none(),
        "b was least recently used"
    );
    assert!(sessions.binding(&a).await.unwrap().is_some());
    assert_eq!(
        l.worker(WorkerId(0)).unwrap().session_closes(),
        vec![b.to_string()]
    );
}

#[tokio::test(start_paused = true)]
async fn max_sessions_with_every_session_busy_is_too_many_sessions() {
    let l = launcher().max_concurrency(4);
    let config = SessionConfig::default().max_sessions(1);
    let sessions = SessionPool::new(pool(&l, 1).await, config).unwrap();
    let busy = SessionId::new();
    let long = spawn_sleep(&sessions, &busy, 1_000);
    tokio::time::sleep(ms(1)).await;
    let err = count(&sessions, &SessionId::new()).await.unwrap_err();
    assert!(matches!(err, SessionError::TooManySessions { max: 1 }), "{err}");
    long.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn losing_the_bound_worker_reports_session_lost_once_then_starts_fresh() {
    let l = launcher();
    let sessions = SessionPool::new(pool(&l, 2).await, SessionConfig::default()).unwrap();
    let id = SessionId::new();
    assert_eq!(count(&sessions, &id).await.unwrap(), 1);
    assert_eq!(count(&sessions, &id).await.unwrap(), 2);
    let bound = sessions.worker_of(&id).await.unwrap().unwrap();
    l.worker(bound).unwrap().crash();
    tokio::time::sleep(ms(1)).await;

    let err = count(&sessions, &id).await.unwrap_err();
    match &err {
        SessionError::SessionLost { session, worker, .. } => {
            assert_eq!(session, id.as_str());
            assert_eq!(*worker, Some(bound));
        }
        other => panic!("expected SessionLost, got {other}"),
    }
    assert_eq!(count(&sessions, &id).await.unwrap(), 1, "fresh state");
    assert_ne!(sessions.worker_of(&id).await.unwrap().unwrap(), bound);
}

#[tokio::test(start_paused = true)]
async fn a_crash_during_a_session_call_is_session_lost_for_that_call_only() {
    let l = launcher();
    let sessions = SessionPool::new(pool(&l, 2).await, SessionConfig::default()).unwrap();
    let id = SessionId::new();
    count(&sessions, &id).await.unwrap();
    let bound = sessions.worker_of(&id).await.unwrap().unwrap();
    let running = spawn_sleep(&sessions, &id, 1_000);
    tokio::time::sleep(ms(10)).await;
    l.worker(bound).unwrap().crash();
    let err = running.await.unwrap().unwrap_err();
    assert!(matches!(err, SessionError::SessionLost { .. }), "{err}");
    assert!(err.to_string().contains("crashed during the call"), "{err}");
    assert_eq!(
        count(&sessions, &id).await.unwrap(),
        1,
        "no second SessionLost; fresh state"
    );
}

#[tokio::test(start_paused = true)]
async fn rebind_mode_moves_the_session_silently() {
    let l = launcher();
    let config = SessionConfig::default().on_lost(OnLost::Rebind);
    let sessions = SessionPool::new(pool(&l, 2).await, config).unwrap();
    let id = SessionId::new();
    count(&sessions, &id).await.unwrap();
    let bound = sessions.worker_of(&id).await.unwrap().unwrap();
    l.worker(bound).unwrap().crash();
    tokio::time::sleep(ms(1)).await;
    assert_eq!(
        count(&sessions, &id).await.unwrap(),
        1,
        "rebound, fresh state, no error"
    );
    assert_ne!(sessions.worker_of(&id).await.unwrap().unwrap(), bound);
}

/// A call queued for its session's worker when that worker goes gets
/// `WorkerGone` from the pool before its request was sent: in `Rebind` mode
/// the same request runs again on the session's new worker; in `Report`
/// mode the call is the one `SessionLost`.
#[tokio::test(start_paused = true)]
async fn a_call_queued_for_a_worker_that_goes_is_retried_on_rebind_and_lost_on_report() {
    for on_lost in [OnLost::Rebind, OnLost::Report] {
        let l = launcher();
        let p = pool(&l, 2).await;
        let sessions = SessionPool::new(p.clone(), SessionConfig::default().on_lost(on_lost)).unwrap();
        let id = SessionId::new();
        assert_eq!(count(&sessions, &id).await.unwrap(), 1);
        let bound = sessions.worker_of(&id).await.unwrap().unwrap();
        let busy = occupy(&p, bound, 5_000);
        tokio::time::sleep(ms(1)).await;
        let queued = spawn_with(&sessions.session(id.clone()), |s| async move {
            s.call::<_, u64>("count", &()).await
        });
        tokio::time::sleep(ms(1)).await;
        assert_eq!(
            p.status().queue_depth,
            1,
            "{on_lost:?}: the session's call waits for its worker"
        );
        l.worker(bound).unwrap().crash();
        assert!(busy.await.unwrap().is_err());
        let result = queued.await.unwrap();
        match on_lost {
            OnLost::Rebind => {
                assert_eq!(result.unwrap(), 1, "ran again, on a fresh state");
                let now = sessions.worker_of(&id).await.unwrap().unwrap();
                assert_ne!(now, bound);
                let calls = l.worker(now).unwrap().calls();
                assert_eq!(calls.len(), 1, "{calls:?}");
                assert_eq!(calls[0].session.as_deref(), Some(id.as_str()), "the same request");
            }
            _ => {
                assert!(
                    matches!(&result, Err(SessionError::SessionLost { worker, .. }) if *worker == Some(bound)),
                    "{result:?}"
                );
                assert!(sessions.binding(&id).await.unwrap().is_none());
            }
        }
        p.shutdown(ms(100)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn recycling_waits_for_bound_sessions_up_to_the_drain_timeout() {
    let l = launcher();
    let pool = fake_pool_builder(&l)
        .workers(1)
        .max_requests(3)
        .drain_timeout(Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    let sessions = SessionPool::new(pool.clone(), SessionConfig::default()).unwrap();
    let id = SessionId::new();
    for expected in 1..=3 {
        assert_eq!(count(&sessions, &id).await.unwrap(), expected);
    }
    // The worker reached max_requests: a replacement starts, the old one
    // drains but keeps serving its session.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(pool.status().workers.len(), 2);
    assert_eq!(
        count(&sessions, &id).await.unwrap(),
        4,
        "state kept while draining"
    );
    // New sessions go to the replacement.
    let other = SessionId::new();
    assert_eq!(whoami(&sessions, &other).await, 1);
    // Closing the session lets the old worker go.
    sessions.close(&id).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!l.worker(WorkerId(0)).unwrap().is_alive());
    assert!(!pool.affinity().is_serving(WorkerId(0)));
}

#[tokio::test(start_paused = true)]
async fn bad_configuration_and_no_worker_are_typed_errors() {
    let l = launcher();
    let pool = pool(&l, 1).await;
    let err = SessionPool::new(pool.clone(), SessionConfig::default().max_sessions(0)).unwrap_err();
    assert!(
        matches!(
            err,
            SessionError::Config {
                field: "max_sessions",
                ..
            }
        ),
        "{err}"
    );
    let err = SessionPool::new(
        pool.clone(),
        SessionConfig::default().idle_ttl(Some(Duration::ZERO)),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            SessionError::Config {
                field: "idle_ttl",
                ..
            }
        ),
        "{err}"
    );

    let sessions = SessionPool::new(pool.clone(), SessionConfig::default()).unwrap();
    pool.shutdown(Duration::from_secs(1)).await;
    let err = count(&sessions, &SessionId::new()).await.unwrap_err();
    assert!(
        matches!(err, SessionError::Pool(PoolError::PoolClosed { .. })),
        "{err}"
    );
    let _ = CallRequest::new("unused", 1);
}

#[tokio::test(start_paused = true)]
async fn hint_fallback_leaves_no_session_state_on_other_workers() {
    let l = launcher();
    let p = pool(&l, 2).await;
    let sessions = SessionPool::new(p.clone(), SessionConfig::default().affinity(Affinity::Hint)).unwrap();
    let id = SessionId::new();
    assert_eq!(count(&sessions, &id).await.unwrap(), 1);
    let bound = sessions.worker_of(&id).await.unwrap().unwrap();
    let other = WorkerId(1 - bound.0);
    let busy = occupy(&p, bound, 1_000);
    tokio::time::sleep(ms(1)).await;
    assert_eq!(
        count(&sessions, &id).await.unwrap(),
        1,
        "fallback sees a fresh state"
    );
    assert!(
        l.worker(other).unwrap().session_state(id.as_str()).is_none(),
        "and leaves none behind"
    );
    let closes = l.worker(other).unwrap().session_closes();
    assert_eq!(closes.len(), 1, "{closes:?}");
    assert!(
        closes[0].starts_with(&format!("{id}.fallback.")),
        "a throwaway id, dropped: {closes:?}"
    );
    assert!(l.worker(other).unwrap().session_state(&closes[0]).is_none());
    busy.await.unwrap().unwrap();
    assert_eq!(
        count(&sessions, &id).await.unwrap(),
        2,
        "the bound worker kept its state"
    );
}

#[tokio::test(start_paused = true)]
async fn after_session_lost_a_small_pool_rebinds_once_its_worker_is_back() {
    // One worker: right after its crash no worker is ready; binding waits
    // for the restart instead of failing with NoWorker.
    let l = launcher();
    let sessions = SessionPool::new(pool(&l, 1).await, SessionConfig::default()).unwrap();
    let id = SessionId::new();
    count(&sessions, &id).await.unwrap();
    l.worker(WorkerId(0)).unwrap().crash();
    tokio::time::sleep(ms(1)).await;
    let err = count(&sessions, &id).await.unwrap_err();
    assert!(matches!(err, SessionError::SessionLost { .. }), "{err}");
    let t0 = Instant::now();
    assert_eq!(count(&sessions, &id).await.unwrap(), 1);
    assert!(
        t0.elapsed() >= ms(50),
        "waited for the restart ({:?})",
        t0.elapsed()
    );
    assert_eq!(sessions.worker_of(&id).await.unwrap().unwrap(), WorkerId(1));
}

#[test]
fn a_session_pool_with_a_ttl_outside_a_runtime_is_a_config_error() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let l = launcher();
    let pool = rt.block_on(pool(&l, 1));
    let err = SessionPool::new(pool.clone(), SessionConfig::default()).unwrap_err();
    assert!(
        matches!(
            err,
            SessionError::Config {
                field: "idle_ttl",
                ..
            }
        ),
        "{err}"
    );
    assert!(SessionPool::new(pool, SessionConfig::default().idle_ttl(None)).is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_call_arriving_during_expiry_waits_and_starts_fresh_on_a_bound_worker() {
    // The store answers slowly, so the expiry is in progress when the call
    // comes: the call must not reach the worker between the expiry's
    // decision and its session_close.
    let l = launcher();
    let config = SessionConfig::default().idle_ttl(Some(Duration::from_secs(10)));
    let store = std::sync::Arc::new(SlowStore::default());
    let sessions = SessionPool::with_store(pool(&l, 1).await, config, store.clone()).unwrap();
    let id = SessionId::new();
    assert_eq!(count(&sessions, &id).await.unwrap(), 1);
    store.slow_removes(true);
    tokio::time::sleep(Duration::from_secs(13)).await; // the sweep has started removing
    assert!(store.removing(), "expiry in progress");
    assert_eq!(
        count(&sessions, &id).await.unwrap(),
        1,
        "fresh state after the expiry"
    );
    let closes = l.worker(WorkerId(0)).unwrap().session_closes();
    assert_eq!(closes, vec![id.to_string()]);
    assert_eq!(
        sessions.worker_of(&id).await.unwrap().unwrap(),
        WorkerId(0),
        "bound again"
    );
}

/// A memory store whose removals can be made slow.
#[derive(Default)]
struct SlowStore {
    inner: MemoryStore,
    slow: std::sync::atomic::AtomicBool,
    in_remove: std::sync::atomic::AtomicBool,
}

impl SlowStore {
    fn slow_removes(&self, on: bool) {
        self.slow.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    fn removing(&self) -> bool {
        self.in_remove.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl SessionStore for SlowStore {
    async fn get(&self, session: &SessionId) -> StoreResult<Option<Binding>> {
        self.inner.get(session).await
    }
    async fn bind_if_absent(&self, session: &SessionId, binding: Binding) -> StoreResult<Binding> {
        self.inner.bind_if_absent(session, binding).await
    }
    async fn touch(&self, session: &SessionId, at: UnixMillis, start: Option<&str>) -> StoreResult<()> {
        self.inner.touch(session, at, start).await
    }
    async fn remove_if(
        &self,
        session: &SessionId,
        worker: &WorkerAddress,
        last_used: Option<UnixMillis>,
    ) -> StoreResult<Option<Binding>> {
        if self.slow.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.in_remove.store(true, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(3)).await;
            self.in_remove.store(false, std::sync::atomic::Ordering::SeqCst);
        }
        self.inner.remove_if(session, worker, last_used).await
    }
    async fn remove(&self, session: &SessionId) -> StoreResult<Option<Binding>> {
        self.inner.remove(session).await
    }
    async fn list(&self) -> StoreResult<Vec<(SessionId, Binding)>> {
        self.inner.list().await
    }
    async fn len(&self) -> StoreResult<usize> {
        self.inner.len().await
    }
}

#[tokio::test(start_paused = true)]
async fn close_waits_for_the_sessions_running_calls() {
    let l = launcher().max_concurrency(4);
    let sessions = SessionPool::new(pool(&l, 1).await, SessionConfig::default()).unwrap();
    let id = SessionId::new();
    count(&sessions, &id).await.unwrap();
    let running = spawn_sleep(&sessions, &id, 1_000);
    tokio::time::sleep(ms(10)).await;
    let t0 = Instant::now();
    sessions.close(&id).await.unwrap();
    assert_eq!(t0.elapsed(), ms(990), "close waited for the running call");
    running.await.unwrap().unwrap();
    assert_eq!(
        l.worker(WorkerId(0)).unwrap().session_closes(),
        vec![id.to_string()]
    );
    assert!(sessions.is_empty().await.unwrap());
}

// ---------------------------------------------------------------------------
// Close under load, dropping the session pool, cancelled fallbacks, bind cost.

/// Callers that keep `sleep` calls of `id` overlapping until `stop` is set;
/// each returns how many calls it made.
fn steady_callers(
    sessions: &SessionPool,
    id: &SessionId,
    callers: u64,
    call_ms: u64,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..callers)
        .map(|i| {
            let stop = stop.clone();
            spawn_with(&sessions.session(id.clone()), move |session| async move {
                tokio::time::sleep(ms(call_ms * i / callers)).await;
                let mut made = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    session.call::<_, u64>("sleep", &call_ms).await.unwrap();
                    made += 1;
                }
                made
            })
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn close_is_not_starved_by_steady_overlapping_calls() {
    let l = launcher().max_concurrency(8);
    let sessions = SessionPool::new(pool(&l, 1).await, SessionConfig::default()).unwrap();
    let id = SessionId::new();
    assert_eq!(count(&sessions, &id).await.unwrap(), 1);
    assert_eq!(count(&sessions, &id).await.unwrap(), 2);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Four callers, 100 ms calls staggered by 25 ms: a call of the session
    // is always running.
    let callers = steady_callers(&sessions, &id, 4, 100, &stop);
    tokio::time::sleep(ms(510)).await;
    let t0 = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), sessions.close(&id))
        .await
        .expect("close starved by the session's calls")
        .unwrap();
    assert!(
        t0.elapsed() <= ms(100),
        "close waited only for the calls running when it began ({:?})",
        t0.elapsed()
    );
    assert_eq!(
        l.worker(WorkerId(0)).unwrap().session_closes(),
        vec![id.to_string()]
    );
    // No call of the session was running on the worker when it was told
    // to drop the state.
    let mut running = 0i64;
    for recorded in l.events() {
        match recorded.event {
            portpool_testkit::FakeEvent::CallStarted { .. } => running += 1,
            portpool_testkit::FakeEvent::CallEnded { .. } => running -= 1,
            portpool_testkit::FakeEvent::SessionClosed { .. } => {
                assert_eq!(running, 0, "calls running at session_close");
                break;
            }
            _ => {}
        }
    }
    // Calls that arrived during the close ran after it, in a fresh session.
    assert_eq!(count(&sessions, &id).await.unwrap(), 1, "fresh state after close");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for caller in callers {
        assert!(caller.await.unwrap() >= 5, "every caller kept calling");
    }
}

#[tokio::test(start_paused = true)]
async fn close_of_a_session_with_a_call_that_never_ends_is_bounded_by_the_drain_timeout() {
    let l = launcher().max_concurrency(4);
    let pool = fake_pool_builder(&l)
        .workers(1)
        .drain_timeout(Duration::from_secs(5))
        .build()
        .await
        .unwrap();
    let sessions = SessionPool::new(pool, SessionConfig::default()).unwrap();
    let id = SessionId::new();
    assert_eq!(count(&sessions, &id).await.unwrap(), 1);
    let stuck = spawn_sleep(&sessions, &id, 3_600_000);
    tokio::time::sleep(ms(10)).await;
    let t0 = Instant::now();
    tokio::time::timeout(Duration::from_secs(60), sessions.close(&id))
        .await
        .expect("close waited for a call that never ends")
        .unwrap();
    assert_eq!(t0.elapsed(), Duration::from_secs(5), "the drain time-out");
    assert_eq!(
        l.worker(WorkerId(0)).unwrap().session_closes(),
        vec![id.to_string()]
    );
    assert!(sessions.is_empty().await.unwrap());
    stuck.abort();
}

#[tokio::test(start_paused = true)]
async fn dropping_the_session_pool_releases_its_pins_so_recycling_proceeds() {
    let l = launcher();
    let pool = fake_pool_builder(&l)
        .workers(1)
        .max_requests(3)
        .drain_timeout(Duration::from_secs(600))
        .build()
        .await
        .unwrap();
    let sessions = SessionPool::new(pool.clone(), SessionConfig::default()).unwrap();
    let ids: Vec<SessionId> = (0..3).map(|_| SessionId::new()).collect();
    for id in &ids {
        assert_eq!(count(&sessions, id).await.unwrap(), 1);
    }
    // Worker 0 reached max_requests: it drains, but its sessions pin it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(pool.status().workers.len(), 2);
    assert!(pool.affinity().is_serving(WorkerId(0)), "pinned by its sessions");

    drop(sessions);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !pool.affinity().is_serving(WorkerId(0)),
        "recycled once the pins were released"
    );
    assert!(!l.worker(WorkerId(0)).unwrap().is_alive());
    let mut closes = l.worker(WorkerId(0)).unwrap().session_closes();
    closes.sort();
    let mut expected: Vec<String> = ids.iter().map(ToString::to_string).collect();
    expected.sort();
    assert_eq!(closes, expected, "the worker was told to drop the state first");
    assert_eq!(pool.status().ready, 1);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_hint_fallback_call_still_closes_its_throwaway_session() {
    let l = launcher().async_handler_ctx("remember_then_sleep", |ctx: CallContext, v: Value| async move {
        ctx.set_session_state(Value::from("state"));
        tokio::time::sleep(Duration::from_millis(v.as_u64().unwrap_or(0))).await;
        Ok(v)
    });
    let p = pool(&l, 2).await;
    let sessions = SessionPool::new(p.clone(), SessionConfig::default().affinity(Affinity::Hint)).unwrap();
    let id = SessionId::new();
    let bound = WorkerId(whoami(&sessions, &id).await);
    let other = WorkerId(1 - bound.0);
    let busy = occupy(&p, bound, 1_000);
    tokio::time::sleep(ms(1)).await;
    // The fallback runs on the other worker; its caller gives up mid-call.
    let gave_up = tokio::time::timeout(
        ms(50),
        sessions.call::<_, u64>(&id, "remember_then_sleep", &10_000),
    )
    .await;
    assert!(gave_up.is_err(), "the call was dropped");
    let calls = l.worker(other).unwrap().calls();
    let throwaway = calls
        .iter()
        .find_map(|c| c.session.clone())
        .expect("the fallback ran on the other worker");
    assert!(throwaway.starts_with(&format!("{id}.fallback.")), "{throwaway}");
    tokio::time::sleep(ms(10)).await;
    assert_eq!(
        l.worker(other).unwrap().session_closes(),
        vec![throwaway.clone()],
        "the throwaway session was closed although the call was dropped"
    );
    assert!(l.worker(other).unwrap().session_state(&throwaway).is_none());
    busy.await.unwrap().unwrap();
}

/// A memory store counting the bindings its listings hand out.
#[derive(Default)]
struct CountingStore {
    inner: MemoryStore,
    visited: std::sync::atomic::AtomicUsize,
}

impl CountingStore {
    fn visited(&self) -> usize {
        self.visited.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn saw(&self, n: usize) {
        self.visited.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl SessionStore for CountingStore {
    async fn get(&self, session: &SessionId) -> StoreResult<Option<Binding>> {
        self.inner.get(session).await
    }
    async fn bind_if_absent(&self, session: &SessionId, binding: Binding) -> StoreResult<Binding> {
        self.inner.bind_if_absent(session, binding).await
    }
    async fn touch(&self, session: &SessionId, at: UnixMillis, start: Option<&str>) -> StoreResult<()> {
        self.inner.touch(session, at, start).await
    }
    async fn remove_if(
        &self,
        session: &SessionId,
        worker: &WorkerAddress,
        last_used: Option<UnixMillis>,
    ) -> StoreResult<Option<Binding>> {
        self.inner.remove_if(session, worker, last_used).await
    }
    async fn remove(&self, session: &SessionId) -> StoreResult<Option<Binding>> {
        self.inner.remove(session).await
    }
    async fn list(&self) -> StoreResult<Vec<(SessionId, Binding)>> {
        let all = self.inner.list().await?;
        self.saw(all.len());
        Ok(all)
    }
    async fn len(&self) -> StoreResult<usize> {
        self.inner.len().await
    }
    async fn len_owned_by(&self, owner: &str) -> StoreResult<usize> {
        self.inner.len_owned_by(owner).await
    }
    async fn sessions_per_worker(&self) -> StoreResult<std::collections::HashMap<WorkerAddress, usize>> {
        let counts = self.inner.sessions_per_worker().await?;
        self.saw(counts.len());
        Ok(counts)
    }
    async fn least_recently_used(
        &self,
        owner: Option<&str>,
        after: Option<LruPosition>,
        limit: usize,
    ) -> StoreResult<Vec<(SessionId, Binding)>> {
        let page = self.inner.least_recently_used(owner, after, limit).await?;
        self.saw(page.len());
        Ok(page)
    }
}

#[tokio::test(start_paused = true)]
async fn binding_and_evicting_do_not_visit_every_session() {
    let l = launcher();
    let config = SessionConfig::default().max_sessions(1_000).idle_ttl(None);
    let store = std::sync::Arc::new(CountingStore::default());
    let sessions = SessionPool::with_store(pool(&l, 4).await, config, store.clone()).unwrap();
    for _ in 0..1_000 {
        count(&sessions, &SessionId::new()).await.unwrap();
    }
    let before = store.visited();
    // 1,000 more: each one binds and evicts the least recently used.
    for _ in 0..1_000 {
        count(&sessions, &SessionId::new()).await.unwrap();
    }
    let per_bind = (store.visited() - before) as f64 / 1_000.0;
    assert!(
        per_bind <= 16.0,
        "a bind visited {per_bind} bindings on average with 1,000 bound"
    );
    assert_eq!(sessions.len().await.unwrap(), 1_000);
    let per_worker = sessions.sessions_per_worker().await.unwrap();
    assert!(per_worker.values().all(|n| *n == 250), "{per_worker:?}");
}

#[tokio::test(start_paused = true)]
async fn bind_binds_without_a_call_and_the_first_call_runs_there() {
    let l = launcher();
    let sessions = SessionPool::new(pool(&l, 3).await, SessionConfig::default()).unwrap();
    let ids: Vec<SessionId> = (0..6).map(|_| SessionId::new()).collect();
    let mut workers = Vec::new();
    for id in &ids {
        workers.push(sessions.bind(id).await.unwrap());
    }
    assert!(l.all_calls().is_empty(), "binding sends no call");
    let per_worker = sessions.sessions_per_worker().await.unwrap();
    assert!(per_worker.values().all(|n| *n == 2), "{per_worker:?}");
    for (id, worker) in ids.iter().zip(&workers) {
        assert_eq!(sessions.bind(id).await.unwrap(), *worker, "bound once");
        assert_eq!(WorkerId(whoami(&sessions, id).await), *worker);
    }
}

#[test]
fn dropping_the_session_pool_outside_a_runtime_still_releases_its_pins() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let l = launcher();
    let pool = rt.block_on(async {
        fake_pool_builder(&l)
            .workers(1)
            .max_requests(2)
            .drain_timeout(Duration::from_secs(600))
            .build()
            .await
            .unwrap()
    });
    let sessions = rt.block_on(async {
        let sessions = SessionPool::new(pool.clone(), SessionConfig::default().idle_ttl(None)).unwrap();
        for _ in 0..2 {
            count(&sessions, &SessionId::new()).await.unwrap();
        }
        tokio::time::sleep(ms(200)).await;
        assert!(pool.affinity().is_serving(WorkerId(0)), "pinned by its sessions");
        sessions
    });
    drop(sessions); // no runtime here: the pins go at once
    rt.block_on(async {
        let t0 = std::time::Instant::now();
        while pool.affinity().is_serving(WorkerId(0)) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "worker 0 was never recycled"
            );
            tokio::time::sleep(ms(10)).await;
        }
        pool.shutdown(Duration::from_secs(1)).await;
    });
}

#[tokio::test(start_paused = true)]
async fn expiry_pages_through_many_idle_sessions_and_keeps_the_recent_ones() {
    let l = launcher();
    let config = SessionConfig::default().idle_ttl(Some(Duration::from_secs(10)));
    let sessions = SessionPool::new(pool(&l, 2).await, config).unwrap();
    for _ in 0..300 {
        sessions.bind(&SessionId::new()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let recent = SessionId::new();
    count(&sessions, &recent).await.unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(sessions.len().await.unwrap(), 1, "the 300 idle sessions expired");
    assert!(sessions.binding(&recent).await.unwrap().is_some());
    let closes: usize = l.workers().iter().map(|w| w.session_closes().len()).sum();
    assert_eq!(closes, 300);
}
