//! `RedisStore` against a real `redis-server` (started by each test on a
//! free loopback port, killed at its end), and several front ends (session
//! pools over fake workers of one [`FakeFleet`]) sharing sessions through
//! it. Where `redis-server` is not installed each test prints a notice and
//! returns, except under CI (`CI` set), where it fails: run
//! `cargo xtask setup`.
//!
//! Real time (Redis does not follow tokio's paused clock); every test is
//! bounded by [`LIMIT`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use portpool_pool::{Pool, WorkerAddress, WorkerId};
use portpool_session::*;
use portpool_testkit::{fake_pool, CallContext, FakeFleet, FakeLauncher, RedisServer};
use portpool_transport::Value;

/// The most any test here may take.
const LIMIT: Duration = Duration::from_secs(90);

/// Runs a test body bounded by [`LIMIT`].
async fn bounded<F: Future<Output = ()>>(body: F) {
    tokio::time::timeout(LIMIT, body)
        .await
        .expect("the test did not finish within its limit");
}

fn id(s: &str) -> SessionId {
    SessionId::parse(s).unwrap()
}

fn addr(n: u64) -> WorkerAddress {
    WorkerAddress::from_stored(format!("tcp://10.0.0.{n}:7000#i{n}"))
}

async fn store(redis: &RedisServer, prefix: &str) -> RedisStore {
    RedisStore::connect(&redis.url(), RedisStoreConfig::new(prefix))
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------
// The store's contract.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_bind_if_absent_is_atomic_across_two_store_instances() {
    let Some(redis) = RedisServer::start_or_skip("redis_store_bind_if_absent_is_atomic") else {
        return;
    };
    bounded(async {
        let (a, b) = (store(&redis, "atomic").await, store(&redis, "atomic").await);
        let now = UnixMillis::now();
        for n in 0..40 {
            let s = id(&format!("s{n}"));
            let (won_a, won_b) = tokio::join!(
                a.bind_if_absent(&s, Binding::new(addr(1), "fe-a", now)),
                b.bind_if_absent(&s, Binding::new(addr(2), "fe-b", now)),
            );
            let (won_a, won_b) = (won_a.unwrap(), won_b.unwrap());
            assert_eq!(won_a, won_b, "both see the one binding in force");
            assert_eq!(a.get(&s).await.unwrap(), Some(won_a.clone()));
            // A later bind keeps it.
            let again = b
                .bind_if_absent(&s, Binding::new(addr(3), "fe-b", now))
                .await
                .unwrap();
            assert_eq!(again, won_a);
        }
        assert_eq!(a.len().await.unwrap(), 40);
        let counts = b.sessions_per_worker().await.unwrap();
        assert_eq!(counts.values().sum::<usize>(), 40, "{counts:?}");
        assert!(!counts.contains_key(&addr(3)));
        let owned = a.len_owned_by("fe-a").await.unwrap() + a.len_owned_by("fe-b").await.unwrap();
        assert_eq!(owned, 40);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_touch_moves_last_used_forward_and_the_owner_with_it() {
    let Some(redis) = RedisServer::start_or_skip("redis_store_touch") else {
        return;
    };
    bounded(async {
        let st = store(&redis, "touch").await;
        let t0 = UnixMillis(1_700_000_000_000);
        let s = id("chat-1");
        st.bind_if_absent(&s, Binding::new(addr(1), "fe-a", t0))
            .await
            .unwrap();
        st.touch(&s, UnixMillis(t0.0 + 500), Some("fe-b")).await.unwrap();
        let b = st.get(&s).await.unwrap().unwrap();
        assert_eq!((b.last_used, b.owner.as_str()), (UnixMillis(t0.0 + 500), "fe-b"));
        assert_eq!(b.bound_at, t0);
        // A call's end with an older time changes nothing.
        st.touch(&s, UnixMillis(t0.0 + 100), None).await.unwrap();
        let b = st.get(&s).await.unwrap().unwrap();
        assert_eq!((b.last_used, b.owner.as_str()), (UnixMillis(t0.0 + 500), "fe-b"));
        // A call's start always moves last_used (its clock may be behind),
        // so a compare-and-delete that read the old value fails.
        st.touch(&s, UnixMillis(t0.0 + 100), Some("fe-c")).await.unwrap();
        let c = st.get(&s).await.unwrap().unwrap();
        assert_eq!((c.last_used, c.owner.as_str()), (UnixMillis(t0.0 + 501), "fe-c"));
        assert_eq!(
            st.remove_if(&s, &c.worker, Some(b.last_used)).await.unwrap(),
            None
        );
        st.touch(&s, UnixMillis(t0.0 + 600), Some("fe-b")).await.unwrap();
        let b = st.get(&s).await.unwrap().unwrap();
        assert_eq!((b.last_used, b.owner.as_str()), (UnixMillis(t0.0 + 600), "fe-b"));
        assert_eq!(st.len_owned_by("fe-b").await.unwrap(), 1);
        assert_eq!(st.len_owned_by("fe-a").await.unwrap(), 0);
        let page = st.least_recently_used(Some("fe-b"), None, 10).await.unwrap();
        assert_eq!(page, vec![(s.clone(), b)]);
        assert!(st
            .least_recently_used(Some("fe-a"), None, 10)
            .await
            .unwrap()
            .is_empty());
        // A call's start: touch and read in one round trip.
        let started = st
            .start_use(&s, UnixMillis(t0.0 + 50), "fe-a")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (started.last_used, started.owner.as_str()),
            (UnixMillis(t0.0 + 601), "fe-a")
        );
        assert_eq!(st.get(&s).await.unwrap(), Some(started));
        // Touching an unbound session binds nothing.
        st.touch(&id("nobody"), t0, Some("fe-a")).await.unwrap();
        assert_eq!(st.start_use(&id("nobody"), t0, "fe-a").await.unwrap(), None);
        assert_eq!(st.get(&id("nobody")).await.unwrap(), None);
        assert_eq!(st.len().await.unwrap(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_compare_and_delete_checks_the_worker_and_last_used() {
    let Some(redis) = RedisServer::start_or_skip("redis_store_compare_and_delete") else {
        return;
    };
    bounded(async {
        let st = store(&redis, "cad").await;
        let t0 = UnixMillis(1_700_000_000_000);
        let s = id("s1");
        st.bind_if_absent(&s, Binding::new(addr(1), "fe-a", t0))
            .await
            .unwrap();
        assert_eq!(
            st.remove_if(&s, &addr(2), None).await.unwrap(),
            None,
            "another worker"
        );
        assert_eq!(
            st.remove_if(&s, &addr(1), Some(UnixMillis(t0.0 - 1)))
                .await
                .unwrap(),
            None,
            "used since"
        );
        assert!(st.get(&s).await.unwrap().is_some());
        let removed = st.remove_if(&s, &addr(1), Some(t0)).await.unwrap().unwrap();
        assert_eq!(removed.worker, addr(1));
        assert_eq!(st.get(&s).await.unwrap(), None);
        assert_eq!(st.len().await.unwrap(), 0);
        assert!(st.sessions_per_worker().await.unwrap().is_empty());
        assert_eq!(st.len_owned_by("fe-a").await.unwrap(), 0);
        assert!(st.least_recently_used(None, None, 10).await.unwrap().is_empty());
        // Unconditional removal, twice.
        st.bind_if_absent(&s, Binding::new(addr(1), "fe-a", t0))
            .await
            .unwrap();
        assert!(st.remove(&s).await.unwrap().is_some());
        assert!(st.remove(&s).await.unwrap().is_none());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_bindings_expire_with_their_ttl_and_leave_the_indexes() {
    let Some(redis) = RedisServer::start_or_skip("redis_store_bindings_expire") else {
        return;
    };
    bounded(async {
        let config = RedisStoreConfig::new("ttl").binding_ttl(Duration::from_secs(2));
        let st = RedisStore::connect(&redis.url(), config).await.unwrap();
        let (old, kept) = (id("old"), id("kept"));
        let now = UnixMillis::now();
        st.bind_if_absent(&old, Binding::new(addr(1), "fe-a", now))
            .await
            .unwrap();
        st.bind_if_absent(&kept, Binding::new(addr(2), "fe-a", now))
            .await
            .unwrap();
        // Keep one touched (each touch refreshes its TTL) until the other
        // expires.
        let mut n = 1;
        while st.get(&old).await.unwrap().is_some() {
            st.touch(&kept, UnixMillis(now.0 + n), Some("fe-b"))
                .await
                .unwrap();
            n += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        st.touch(&kept, UnixMillis(now.0 + n), Some("fe-b"))
            .await
            .unwrap();
        assert!(st.get(&kept).await.unwrap().is_some(), "touched: alive");
        // The indexes forgot the expired one.
        assert_eq!(st.len().await.unwrap(), 1);
        let counts = st.sessions_per_worker().await.unwrap();
        assert_eq!(counts.get(&addr(1)), None, "{counts:?}");
        assert_eq!(counts.get(&addr(2)), Some(&1), "{counts:?}");
        assert_eq!(st.len_owned_by("fe-a").await.unwrap(), 0);
        assert_eq!(st.len_owned_by("fe-b").await.unwrap(), 1);
        let page = st.least_recently_used(None, None, 10).await.unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].0, kept);
        assert_eq!(st.list().await.unwrap().len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_prefixes_isolate_deployments() {
    let Some(redis) = RedisServer::start_or_skip("redis_store_prefixes_isolate_deployments") else {
        return;
    };
    bounded(async {
        let (blue, green) = (store(&redis, "blue").await, store(&redis, "green").await);
        let s = id("shared-name");
        blue.bind_if_absent(&s, Binding::new(addr(1), "fe", UnixMillis::now()))
            .await
            .unwrap();
        assert_eq!(green.get(&s).await.unwrap(), None);
        assert_eq!(green.len().await.unwrap(), 0);
        assert!(green.sessions_per_worker().await.unwrap().is_empty());
        let other = green
            .bind_if_absent(&s, Binding::new(addr(2), "fe", UnixMillis::now()))
            .await
            .unwrap();
        assert_eq!(other.worker, addr(2), "its own binding under its own prefix");
        assert_eq!(blue.get(&s).await.unwrap().unwrap().worker, addr(1));
        assert!(green.remove(&s).await.unwrap().is_some());
        assert!(blue.get(&s).await.unwrap().is_some());
        // A prefix that could escape its hash tag is refused.
        let bad = RedisStore::connect(&redis.url(), RedisStoreConfig::new("a}b")).await;
        assert!(bad.is_err());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_pages_least_recently_used_in_order() {
    let Some(redis) = RedisServer::start_or_skip("redis_store_pages_least_recently_used") else {
        return;
    };
    bounded(async {
        let st = store(&redis, "lru").await;
        let t0 = 1_700_000_000_000u64;
        // 30 sessions; last_used repeats every 10 (ties ordered by id);
        // owners alternate.
        let mut expected: Vec<(UnixMillis, SessionId, &str)> = Vec::new();
        for n in 0..30u64 {
            let s = id(&format!("s{:02}", 29 - n));
            let at = UnixMillis(t0 + n % 10);
            let owner = if n % 2 == 0 { "fe-a" } else { "fe-b" };
            st.bind_if_absent(&s, Binding::new(addr(n % 3), owner, at))
                .await
                .unwrap();
            expected.push((at, s, owner));
        }
        expected.sort();
        for owner in [None, Some("fe-a"), Some("fe-b")] {
            let want: Vec<SessionId> = expected
                .iter()
                .filter(|(_, _, o)| owner.map_or(true, |owner| *o == owner))
                .map(|(_, s, _)| s.clone())
                .collect();
            let mut got = Vec::new();
            let mut after = None;
            loop {
                let page = st.least_recently_used(owner, after.take(), 7).await.unwrap();
                let last_page = page.len() < 7;
                for (s, b) in page {
                    after = Some((b.last_used, s.clone()));
                    got.push(s);
                }
                if last_page {
                    break;
                }
            }
            assert_eq!(got, want, "owner {owner:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_fails_fast_while_redis_is_down_and_recovers() {
    let Some(mut redis) = RedisServer::start_or_skip("redis_store_fails_fast_while_redis_is_down") else {
        return;
    };
    bounded(async {
        let st = store(&redis, "outage").await;
        let s = id("s1");
        st.bind_if_absent(&s, Binding::new(addr(1), "fe", UnixMillis::now()))
            .await
            .unwrap();
        redis.stop();
        for _ in 0..3 {
            let t0 = std::time::Instant::now();
            let err = st.get(&s).await.unwrap_err();
            assert_eq!(err.op, "get");
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "a down store answers within its time-out, took {:?}",
                t0.elapsed()
            );
        }
        redis.restart().unwrap();
        wait_until_ok(|| async { st.len().await.map(|_| ()) }).await;
        // Persistence is off: the restarted server is empty.
        assert_eq!(st.get(&s).await.unwrap(), None);
    })
    .await;
}

/// Retries `op` until it succeeds (within the test's limit).
async fn wait_until_ok<F, Fut, E>(op: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    while op().await.is_err() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// Several front ends.

/// `count` increments per-session state; `sleep` sleeps params ms.
fn launcher(fleet: &FakeFleet) -> FakeLauncher {
    FakeLauncher::new()
        .fleet(fleet)
        .max_concurrency(4)
        .handler_ctx("count", |ctx: CallContext, _| {
            let n = ctx.session_state().and_then(|v| v.as_u64()).unwrap_or(0) + 1;
            ctx.set_session_state(Value::from(n));
            Ok(Value::from(n))
        })
        .async_handler("sleep", |v: Value| async move {
            tokio::time::sleep(Duration::from_millis(v.as_u64().unwrap_or(0))).await;
            Ok(v)
        })
}

/// One front end: its own pool of `workers` fakes of `fleet`, sessions in
/// the Redis under `prefix`.
struct FrontEnd {
    launcher: FakeLauncher,
    sessions: SessionPool,
}

async fn front_end(
    fleet: &FakeFleet,
    redis: &RedisServer,
    prefix: &str,
    name: &str,
    workers: usize,
    config: SessionConfig,
) -> FrontEnd {
    let launcher = launcher(fleet);
    let pool: Pool = fake_pool(&launcher, workers).await.unwrap();
    let store = Arc::new(store(redis, prefix).await);
    let sessions = SessionPool::with_store(pool, config.front_end(name), store).unwrap();
    FrontEnd { launcher, sessions }
}

async fn count(fe: &FrontEnd, s: &SessionId) -> Result<u64, SessionError> {
    fe.sessions.call(s, "count", &()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_opened_on_one_front_end_continues_on_another() {
    let Some(redis) = RedisServer::start_or_skip("a_session_opened_on_one_front_end_continues_on_another")
    else {
        return;
    };
    bounded(async {
        let fleet = FakeFleet::new();
        let config = SessionConfig::default();
        let a = front_end(&fleet, &redis, "continue", "fe-a", 3, config.clone()).await;
        let b = front_end(&fleet, &redis, "continue", "fe-b", 3, config).await;
        let s = SessionId::new();
        assert_eq!(count(&a, &s).await.unwrap(), 1);
        assert_eq!(count(&a, &s).await.unwrap(), 2);
        assert_eq!(
            count(&b, &s).await.unwrap(),
            3,
            "B reaches A's worker and its state"
        );
        assert_eq!(count(&a, &s).await.unwrap(), 4);
        let binding = b.sessions.binding(&s).await.unwrap().unwrap();
        assert_eq!(binding.owner, "fe-a", "the last to use it owns it");
        let worker = a.sessions.worker_of(&s).await.unwrap().unwrap();
        assert_eq!(b.sessions.worker_of(&s).await.unwrap(), Some(worker));
        assert_eq!(binding.worker, fleet.address(worker));
        assert_eq!(fleet.session_state(worker, s.as_str()), Some(Value::from(4)));
        // Closed on B: the worker drops the state, for everyone.
        b.sessions.close(&s).await.unwrap();
        assert_eq!(fleet.session_state(worker, s.as_str()), None);
        assert_eq!(a.sessions.binding(&s).await.unwrap(), None);
        assert_eq!(count(&a, &s).await.unwrap(), 1, "fresh after the close");
        let calls_on_a: usize = a.launcher.all_calls().len();
        let calls_on_b: usize = b.launcher.all_calls().len();
        assert_eq!((calls_on_a, calls_on_b), (4, 1));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_on_one_front_end_never_evicts_a_session_another_is_using() {
    let Some(redis) = RedisServer::start_or_skip("eviction_on_one_front_end_never_evicts") else {
        return;
    };
    bounded(async {
        let fleet = FakeFleet::new();
        let small = SessionConfig::default().max_sessions(2);
        let a = front_end(&fleet, &redis, "evict", "fe-a", 2, small).await;
        let b = front_end(&fleet, &redis, "evict", "fe-b", 2, SessionConfig::default()).await;
        // Opened on A (A's, A's least recently used), then used on B: a
        // long call runs there while A fills up.
        let shared = SessionId::new();
        assert_eq!(count(&a, &shared).await.unwrap(), 1);
        let long = {
            let sessions = b.sessions.clone();
            let shared = shared.clone();
            tokio::spawn(async move { sessions.call::<_, u64>(&shared, "sleep", &1_500u64).await })
        };
        // Wait until B's call has started (it took the session over).
        while b.launcher.all_calls().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut mine = Vec::new();
        for _ in 0..4 {
            let s = SessionId::new();
            assert_eq!(count(&a, &s).await.unwrap(), 1);
            mine.push(s);
        }
        assert!(a.sessions.owned_len().await.unwrap() <= 2);
        assert!(
            a.sessions.binding(&shared).await.unwrap().is_some(),
            "B's session survived A's evictions"
        );
        long.await.unwrap().unwrap();
        assert_eq!(count(&b, &shared).await.unwrap(), 2, "its state too");
        // A evicted its own least recently used instead.
        assert_eq!(a.sessions.binding(&mine[0]).await.unwrap(), None);
        assert!(a.sessions.binding(&mine[3]).await.unwrap().is_some());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_expiry_counts_uses_on_every_front_end() {
    let Some(redis) = RedisServer::start_or_skip("idle_expiry_counts_uses_on_every_front_end") else {
        return;
    };
    bounded(async {
        let fleet = FakeFleet::new();
        let ttl = Duration::from_secs(3);
        let config = SessionConfig::default().idle_ttl(Some(ttl));
        let a = front_end(&fleet, &redis, "expiry", "fe-a", 2, config.clone()).await;
        let b = front_end(&fleet, &redis, "expiry", "fe-b", 2, config).await;
        let s = SessionId::new();
        assert_eq!(count(&a, &s).await.unwrap(), 1);
        // Used on B only, for well over the TTL: A sees the uses (last_used
        // is store-wide) and does not expire it.
        let mut expected = 1;
        let started = std::time::Instant::now();
        while started.elapsed() < ttl * 2 {
            expected += 1;
            assert_eq!(count(&b, &s).await.unwrap(), expected, "state kept");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Left idle: expired (by either front end), the worker told.
        while a.sessions.binding(&s).await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let worker = a.sessions.sessions_per_worker().await.unwrap();
        assert!(worker.is_empty(), "{worker:?}");
        let closes: usize = [&a, &b]
            .iter()
            .flat_map(|fe| fe.launcher.workers())
            .map(|w| w.session_closes().iter().filter(|c| *c == s.as_str()).count())
            .sum();
        assert_eq!(closes, 1, "one session_close for the expiry");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_run_gives_store_errors_quickly_and_calls_recover() {
    let Some(mut redis) = RedisServer::start_or_skip("redis_stopped_mid_run_gives_store_errors") else {
        return;
    };
    bounded(async {
        let fleet = FakeFleet::new();
        let a = front_end(&fleet, &redis, "outage", "fe-a", 2, SessionConfig::default()).await;
        let s = SessionId::new();
        assert_eq!(count(&a, &s).await.unwrap(), 1);
        let calls_before = a.launcher.all_calls().len();
        redis.stop();
        // The bound session, a new one, and (after a longer outage, across
        // several reconnection attempts) the bound one again.
        for round in 0..3 {
            if round == 2 {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            let session = if round == 1 { SessionId::new() } else { s.clone() };
            let t0 = std::time::Instant::now();
            let err = count(&a, &session).await.unwrap_err();
            match &err {
                SessionError::Store {
                    session: Some(named),
                    error,
                } => {
                    assert_eq!(named, session.as_str());
                    assert!(!error.op.is_empty());
                }
                other => panic!("expected SessionError::Store, got {other:?}"),
            }
            eprintln!("redis down: {err} after {:?}", t0.elapsed());
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no hang: {:?}",
                t0.elapsed()
            );
        }
        assert!(matches!(
            a.sessions.len().await,
            Err(SessionError::Store { session: None, .. })
        ));
        assert_eq!(
            a.launcher.all_calls().len(),
            calls_before,
            "no call reached a worker without its binding"
        );
        redis.restart().unwrap();
        // Calls recover once the connection is back (Redis came back empty:
        // the session binds anew).
        let t0 = std::time::Instant::now();
        loop {
            match count(&a, &s).await {
                Ok(_) => break,
                Err(SessionError::Store { .. }) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(other) => panic!("unexpected error after the restart: {other}"),
            }
        }
        eprintln!("redis back: calls recovered in {:?}", t0.elapsed());
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "recovered in {:?}",
            t0.elapsed()
        );
        assert!(a.sessions.binding(&s).await.unwrap().is_some());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_to_an_address_this_front_end_cannot_reach_is_a_lost_session() {
    let Some(redis) = RedisServer::start_or_skip("a_binding_to_an_address_this_front_end_cannot_reach")
    else {
        return;
    };
    bounded(async {
        let fleet = FakeFleet::new();
        // B has workers 0 and 1 of the fleet; worker 7 (and another front
        // end's local worker) it cannot reach.
        let report = front_end(&fleet, &redis, "unreach", "fe-b", 2, SessionConfig::default()).await;
        let rebind = front_end(
            &fleet,
            &redis,
            "unreach",
            "fe-c",
            2,
            SessionConfig::default().on_lost(OnLost::Rebind),
        )
        .await;
        let direct = store(&redis, "unreach").await;
        let elsewhere = [
            fleet.address(WorkerId(7)),
            WorkerAddress::from_stored("local:00000000deadbeef/0"),
        ];
        for (n, address) in elsewhere.iter().enumerate() {
            let s = id(&format!("far-{n}"));
            let b = Binding::new(address.clone(), "fe-a", UnixMillis::now());
            direct.bind_if_absent(&s, b).await.unwrap();
            match count(&report, &s).await.unwrap_err() {
                SessionError::SessionLost {
                    session,
                    worker,
                    address: lost,
                    ..
                } => {
                    assert_eq!(session, s.as_str());
                    assert_eq!(worker, None);
                    assert_eq!(&lost, address);
                }
                other => panic!("expected SessionLost, got {other:?}"),
            }
            assert_eq!(count(&report, &s).await.unwrap(), 1, "then a fresh session");
            let bound = report.sessions.binding(&s).await.unwrap().unwrap();
            assert_ne!(&bound.worker, address);

            let s = id(&format!("far-rebind-{n}"));
            let b = Binding::new(address.clone(), "fe-a", UnixMillis::now());
            direct.bind_if_absent(&s, b).await.unwrap();
            assert_eq!(
                count(&rebind, &s).await.unwrap(),
                1,
                "rebound silently, fresh state"
            );
        }
        assert!(fleet.session_state(WorkerId(7), "far-0").is_none());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_session_pool_over_redis_closes_no_shared_session() {
    let Some(redis) =
        RedisServer::start_or_skip("dropping_a_session_pool_over_redis_closes_no_shared_session")
    else {
        return;
    };
    bounded(async {
        let fleet = FakeFleet::new();
        let a = front_end(&fleet, &redis, "drop", "fe-a", 2, SessionConfig::default()).await;
        let b = front_end(&fleet, &redis, "drop", "fe-b", 2, SessionConfig::default()).await;
        let ids: Vec<SessionId> = (0..4).map(|_| SessionId::new()).collect();
        for s in &ids {
            assert_eq!(count(&a, s).await.unwrap(), 1);
        }
        assert_eq!(count(&b, &ids[0]).await.unwrap(), 2);
        let FrontEnd {
            launcher: la,
            sessions,
        } = a;
        let pool = sessions.pool().clone();
        drop(sessions);
        // Give a (wrong) background close every chance to run.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let closes: usize = la
            .workers()
            .iter()
            .chain(b.launcher.workers().iter())
            .map(|w| w.session_closes().len())
            .sum();
        assert_eq!(closes, 0, "no session was closed");
        assert_eq!(b.sessions.len().await.unwrap(), 4, "every binding stays");
        for s in &ids {
            let expected = if s == &ids[0] { 3 } else { 2 };
            assert_eq!(
                count(&b, s).await.unwrap(),
                expected,
                "B goes on with A's sessions"
            );
        }
        pool.shutdown(Duration::from_secs(1)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_an_expired_binding_to_an_address_with_a_newline_does_not_poison_the_store() {
    let Some(redis) = RedisServer::start_or_skip("redis_store_newline_address") else {
        return;
    };
    bounded(async {
        // A worker address is partly remote input (the listener's `instance`):
        // the index's `meta` entry must survive any text in it.
        let config = RedisStoreConfig::new("nl").binding_ttl(Duration::from_secs(1));
        let st = RedisStore::connect(&redis.url(), config).await.unwrap();
        let odd = WorkerAddress::from_stored("tcp://10.0.0.9:7000#a\nb\nc");
        let s = id("odd");
        let bound = st
            .bind_if_absent(&s, Binding::new(odd.clone(), "fe-a", UnixMillis::now()))
            .await
            .unwrap();
        assert_eq!(bound.worker, odd);
        assert_eq!(st.sessions_per_worker().await.unwrap().get(&odd), Some(&1));
        while st.get(&s).await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Its key expired: the next operations clean its index entries.
        assert_eq!(st.len().await.unwrap(), 0);
        assert!(st.sessions_per_worker().await.unwrap().is_empty());
        assert_eq!(st.len_owned_by("fe-a").await.unwrap(), 0);
        let next = st
            .bind_if_absent(&id("next"), Binding::new(addr(1), "fe-a", UnixMillis::now()))
            .await
            .unwrap();
        assert_eq!(next.worker, addr(1));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_longer_than_twice_the_idle_ttl_is_not_expired_by_another_front_end() {
    let Some(redis) = RedisServer::start_or_skip("a_long_call_is_not_expired_elsewhere") else {
        return;
    };
    bounded(async {
        // B expires sessions A owns once idle (store-wide) for twice the
        // TTL. A call running on A is a use: however long it runs, B must
        // not close the session under it.
        let fleet = FakeFleet::new();
        let ttl = Duration::from_secs(1);
        let config = SessionConfig::default().idle_ttl(Some(ttl));
        let a = front_end(&fleet, &redis, "longcall", "fe-a", 2, config.clone()).await;
        let b = front_end(&fleet, &redis, "longcall", "fe-b", 2, config).await;
        let s = SessionId::new();
        assert_eq!(count(&a, &s).await.unwrap(), 1);
        let slept: u64 = a.sessions.call(&s, "sleep", &4_000u64).await.unwrap();
        assert_eq!(slept, 4_000);
        let closes: usize = [&a, &b]
            .iter()
            .flat_map(|fe| fe.launcher.workers())
            .map(|w| w.session_closes().iter().filter(|c| *c == s.as_str()).count())
            .sum();
        assert_eq!(closes, 0, "the session was closed during its call");
        assert_eq!(count(&a, &s).await.unwrap(), 2, "its state survived the call");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_rebinding_an_expired_session_not_yet_cleaned_leaves_no_stale_index() {
    let Some(redis) = RedisServer::start_or_skip("redis_store_rebind_stale_index") else {
        return;
    };
    bounded(async {
        // Each script cleans at most 1,000 expired bindings; after a mass
        // expiry, a session bound again before its old entry was cleaned
        // must not leave that entry in the indexes (a count for its old
        // worker, a stale LRU position) for ever.
        let config = RedisStoreConfig::new("stale").binding_ttl(Duration::from_secs(1));
        let st = RedisStore::connect(&redis.url(), config).await.unwrap();
        let ids: Vec<SessionId> = (0..1100).map(|i| id(&format!("mass-{i:04}"))).collect();
        for s in &ids {
            st.bind_if_absent(s, Binding::new(addr(1), "fe-a", UnixMillis::now()))
                .await
                .unwrap();
        }
        let last = ids.last().unwrap();
        while st.get(last).await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let again = st
            .bind_if_absent(last, Binding::new(addr(2), "fe-b", UnixMillis::now()))
            .await
            .unwrap();
        assert_eq!(again.worker, addr(2));
        for _ in 0..3 {
            st.len().await.unwrap(); // each cleans up to 1,000 more
        }
        assert_eq!(st.len().await.unwrap(), 1);
        let counts = st.sessions_per_worker().await.unwrap();
        assert_eq!(counts.len(), 1, "{counts:?}");
        assert_eq!(counts.get(&addr(2)), Some(&1));
        assert_eq!(st.len_owned_by("fe-a").await.unwrap(), 0);
        let page = st.least_recently_used(None, None, 10).await.unwrap();
        assert_eq!(page.len(), 1, "{page:?}");
    })
    .await;
}
