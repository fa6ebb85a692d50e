//! The rule for several front ends sharing a store, with paused time: two
//! session pools over fakes of one `FakeFleet` and one in-process store that
//! says it is shared (what `RedisStore` is across processes).

use std::sync::Arc;
use std::time::Duration;

use portpool_pool::WorkerAddress;
use portpool_session::*;
use portpool_testkit::{fake_pool, CallContext, FakeFleet, FakeLauncher};
use portpool_transport::Value;

/// A `MemoryStore` that calls itself shared, as a store several processes
/// use would.
#[derive(Default)]
struct Shared(MemoryStore);

#[async_trait::async_trait]
impl SessionStore for Shared {
    async fn get(&self, session: &SessionId) -> StoreResult<Option<Binding>> {
        self.0.get(session).await
    }
    async fn bind_if_absent(&self, session: &SessionId, binding: Binding) -> StoreResult<Binding> {
        self.0.bind_if_absent(session, binding).await
    }
    async fn touch(&self, session: &SessionId, at: UnixMillis, start: Option<&str>) -> StoreResult<()> {
        self.0.touch(session, at, start).await
    }
    async fn remove_if(
        &self,
        session: &SessionId,
        worker: &WorkerAddress,
        last_used: Option<UnixMillis>,
    ) -> StoreResult<Option<Binding>> {
        self.0.remove_if(session, worker, last_used).await
    }
    async fn remove(&self, session: &SessionId) -> StoreResult<Option<Binding>> {
        self.0.remove(session).await
    }
    async fn list(&self) -> StoreResult<Vec<(SessionId, Binding)>> {
        self.0.list().await
    }
    async fn len(&self) -> StoreResult<usize> {
        self.0.len().await
    }
    fn is_shared(&self) -> bool {
        true
    }
    async fn len_owned_by(&self, owner: &str) -> StoreResult<usize> {
        self.0.len_owned_by(owner).await
    }
    async fn sessions_per_worker(&self) -> StoreResult<std::collections::HashMap<WorkerAddress, usize>> {
        self.0.sessions_per_worker().await
    }
    async fn least_recently_used(
        &self,
        owner: Option<&str>,
        after: Option<LruPosition>,
        limit: usize,
    ) -> StoreResult<Vec<(SessionId, Binding)>> {
        self.0.least_recently_used(owner, after, limit).await
    }
}

fn launcher(fleet: &FakeFleet) -> FakeLauncher {
    FakeLauncher::new()
        .fleet(fleet)
        .handler_ctx("count", |ctx: CallContext, _| {
            let n = ctx.session_state().and_then(|v| v.as_u64()).unwrap_or(0) + 1;
            ctx.set_session_state(Value::from(n));
            Ok(Value::from(n))
        })
}

async fn front_end(
    fleet: &FakeFleet,
    store: &Arc<Shared>,
    name: &str,
    config: SessionConfig,
) -> (FakeLauncher, SessionPool) {
    let launcher = launcher(fleet);
    let pool = fake_pool(&launcher, 2).await.unwrap();
    let sessions = SessionPool::with_store(pool, config.front_end(name), store.clone()).unwrap();
    (launcher, sessions)
}

/// A call of `count` in session `s`, then 10 ms (so uses are ordered).
async fn count(sessions: &SessionPool, s: &SessionId) -> u64 {
    let n = sessions.call(s, "count", &()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    n
}

#[tokio::test(start_paused = true)]
async fn a_front_end_expires_its_own_idle_sessions_after_the_ttl_and_anothers_after_twice_that() {
    let fleet = FakeFleet::new();
    let store = Arc::new(Shared::default());
    let config = SessionConfig::default().idle_ttl(Some(Duration::from_secs(10)));
    let (_la, a) = front_end(&fleet, &store, "fe-a", config.clone()).await;
    let (_lb, b) = front_end(&fleet, &store, "fe-b", config).await;
    let (mine, theirs) = (SessionId::new(), SessionId::new());
    assert_eq!(count(&a, &mine).await, 1);
    assert_eq!(count(&a, &theirs).await, 1);
    assert_eq!(count(&b, &theirs).await, 2, "B reaches the state A's call left");
    let theirs_worker = a.worker_of(&theirs).await.unwrap().unwrap();
    // B goes away: its sessions stay (a shared store), owned by B.
    drop(b);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(store.get(&theirs).await.unwrap().unwrap().owner, "fe-b");

    tokio::time::sleep(Duration::from_secs(14)).await; // 15 s idle
    assert!(
        a.binding(&mine).await.unwrap().is_none(),
        "A's own: expired after the TTL"
    );
    assert!(
        a.binding(&theirs).await.unwrap().is_some(),
        "B's: not before twice the TTL (B might have a long call running)"
    );
    assert_eq!(
        fleet.session_state(theirs_worker, theirs.as_str()),
        Some(Value::from(2))
    );
    tokio::time::sleep(Duration::from_secs(10)).await; // 25 s idle
    assert!(
        a.binding(&theirs).await.unwrap().is_none(),
        "B's: reclaimed after twice the TTL"
    );
    assert_eq!(
        fleet.session_state(theirs_worker, theirs.as_str()),
        None,
        "and its worker told to drop the state"
    );
}

#[tokio::test(start_paused = true)]
async fn max_sessions_counts_only_the_sessions_a_front_end_owns() {
    let fleet = FakeFleet::new();
    let store = Arc::new(Shared::default());
    let config = SessionConfig::default().idle_ttl(None).max_sessions(3);
    let (_la, a) = front_end(&fleet, &store, "fe-a", config.clone()).await;
    let (_lb, b) = front_end(&fleet, &store, "fe-b", config).await;
    let theirs: Vec<SessionId> = (0..3).map(|_| SessionId::new()).collect();
    for s in &theirs {
        count(&b, s).await;
    }
    // A binds 3 of its own beside B's 3 (6 in the store): no eviction.
    let mine: Vec<SessionId> = (0..3).map(|_| SessionId::new()).collect();
    for s in &mine {
        count(&a, s).await;
    }
    assert_eq!(a.len().await.unwrap(), 6);
    assert_eq!(a.owned_len().await.unwrap(), 3);
    // A 4th evicts A's least recently used, none of B's (older though they are).
    let fourth = SessionId::new();
    count(&a, &fourth).await;
    assert!(a.binding(&mine[0]).await.unwrap().is_none());
    for s in &theirs {
        assert!(a.binding(s).await.unwrap().is_some());
    }
    // A session of B's that A uses becomes A's (and counts for A).
    count(&a, &theirs[0]).await;
    assert_eq!(store.get(&theirs[0]).await.unwrap().unwrap().owner, "fe-a");
    assert_eq!(a.owned_len().await.unwrap(), 4, "taken over: A's now");
    assert_eq!(b.owned_len().await.unwrap(), 2);
    // A's next bind evicts down to the limit (A's two least recently used).
    count(&a, &SessionId::new()).await;
    assert_eq!(a.owned_len().await.unwrap(), 3);
    assert!(a.binding(&mine[1]).await.unwrap().is_none());
    assert!(a.binding(&mine[2]).await.unwrap().is_none());
    assert!(a.binding(&theirs[0]).await.unwrap().is_some(), "used last");
    assert_eq!(b.owned_len().await.unwrap(), 2, "B's untouched");
}

/// A shared store in which another front end wins the first bind of every
/// session, with a worker this front end cannot reach.
#[derive(Default)]
struct LosesFirstBind {
    inner: Shared,
    raced: std::sync::Mutex<std::collections::HashSet<String>>,
}

#[async_trait::async_trait]
impl SessionStore for LosesFirstBind {
    async fn get(&self, session: &SessionId) -> StoreResult<Option<Binding>> {
        self.inner.get(session).await
    }
    async fn bind_if_absent(&self, session: &SessionId, binding: Binding) -> StoreResult<Binding> {
        let first = self.raced.lock().unwrap().insert(session.to_string());
        if first {
            let elsewhere = WorkerAddress::from_stored("tcp://10.9.9.9:7000#gone");
            let theirs = Binding::new(elsewhere, "fe-other", binding.bound_at);
            self.inner.bind_if_absent(session, theirs).await?;
        }
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
        self.inner.list().await
    }
    async fn len(&self) -> StoreResult<usize> {
        self.inner.len().await
    }
    fn is_shared(&self) -> bool {
        true
    }
}

#[tokio::test(start_paused = true)]
async fn losing_the_first_bind_to_an_unreachable_worker_still_leaves_a_binding() {
    // Rebind: the winner's binding names a worker this front end cannot
    // reach, so it is removed as lost; the call must then run under a
    // binding of ours, not on our worker with no binding at all (the next
    // call would bind anew, perhaps elsewhere, and lose the state).
    let fleet = FakeFleet::new();
    let store = Arc::new(LosesFirstBind::default());
    let launcher = launcher(&fleet);
    let pool = fake_pool(&launcher, 2).await.unwrap();
    let config = SessionConfig::default().on_lost(OnLost::Rebind).front_end("fe-a");
    let sessions = SessionPool::with_store(pool, config, store.clone()).unwrap();
    let s = SessionId::new();
    assert_eq!(count(&sessions, &s).await, 1);
    let binding = store.get(&s).await.unwrap();
    let binding = binding.expect("the session ran without a binding");
    assert_eq!(binding.owner, "fe-a");
    let worker = sessions.worker_of(&s).await.unwrap().unwrap();
    assert_eq!(binding.worker, fleet.address(worker));
    assert_eq!(count(&sessions, &s).await, 2);
}
