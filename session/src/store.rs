use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use portpool_pool::WorkerId;
use tokio::time::Instant;

use crate::SessionId;

/// Where a session is bound, and when it was last used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    /// The worker holding the session's state.
    pub worker: WorkerId,
    /// When the session was bound.
    pub bound_at: Instant,
    /// When the session was bound or a call of it last ended.
    pub last_used: Instant,
}

impl Binding {
    /// A binding to `worker` made now.
    pub fn new(worker: WorkerId, now: Instant) -> Self {
        Binding {
            worker,
            bound_at: now,
            last_used: now,
        }
    }
}

/// A position in least-recently-used order: a session's `last_used`, then
/// its id (so positions are unique). See
/// [`SessionStore::least_recently_used`].
pub type LruPosition = (Instant, SessionId);

/// Keeps session bindings. The in-memory [`MemoryStore`] is the default;
/// implement this to keep bindings elsewhere.
///
/// `bind_if_absent` must be atomic: of concurrent binds of one session,
/// exactly one wins and all see its binding.
///
/// The [`SessionPool`](crate::SessionPool) binds and evicts through
/// [`sessions_per_worker`](Self::sessions_per_worker) and
/// [`least_recently_used`](Self::least_recently_used), and never calls
/// [`list`](Self::list) on those paths. Their default implementations are
/// built on `list` and so cost O(n) per bind; override them (as
/// [`MemoryStore`] does) to make binding and eviction independent of the
/// number of sessions.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// The session's binding, if it has one.
    async fn get(&self, session: &SessionId) -> Option<Binding>;
    /// Binds the session unless it is bound already; returns the binding in force.
    async fn bind_if_absent(&self, session: &SessionId, binding: Binding) -> Binding;
    /// Records a use of the session (`last_used` only moves forward).
    async fn touch(&self, session: &SessionId, at: Instant);
    /// Removes the binding only if it still points at `worker`; returns it.
    async fn remove_if_bound_to(&self, session: &SessionId, worker: WorkerId) -> Option<Binding>;
    /// Removes the binding; returns it.
    async fn remove(&self, session: &SessionId) -> Option<Binding>;
    /// Every binding, in no particular order.
    async fn list(&self) -> Vec<(SessionId, Binding)>;
    /// How many sessions are bound.
    async fn len(&self) -> usize;
    /// Whether no session is bound.
    async fn is_empty(&self) -> bool {
        self.len().await == 0
    }

    /// How many sessions are bound to each worker (workers with none may
    /// be left out). The default counts [`list`](Self::list): O(n).
    async fn sessions_per_worker(&self) -> HashMap<WorkerId, usize> {
        let mut counts = HashMap::new();
        for (_, binding) in self.list().await {
            *counts.entry(binding.worker).or_insert(0) += 1;
        }
        counts
    }

    /// Up to `limit` bindings in least-recently-used order (by
    /// `last_used`, then session id), starting strictly after `after`
    /// (from the least recently used when `None`). Pass the position of the
    /// last binding returned to page on. The default sorts
    /// [`list`](Self::list): O(n log n).
    async fn least_recently_used(
        &self,
        after: Option<LruPosition>,
        limit: usize,
    ) -> Vec<(SessionId, Binding)> {
        let mut all: Vec<(LruPosition, Binding)> = self
            .list()
            .await
            .into_iter()
            .map(|(id, b)| ((b.last_used, id), b))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all.into_iter()
            .filter(|(pos, _)| after.as_ref().map_or(true, |after| pos > after))
            .take(limit)
            .map(|((_, id), b)| (id, b))
            .collect()
    }
}

/// The default store: the bindings in this process, indexed so that every
/// operation costs O(log n) in the number of sessions (or less):
/// `sessions_per_worker` is O(workers) and `least_recently_used` is
/// O(log n + limit). Only [`list`](SessionStore::list) is O(n).
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    map: HashMap<SessionId, Binding>,
    /// Every session by (last_used, id): the least recently used first.
    lru: BTreeSet<LruKey>,
    /// Bound sessions per worker; workers with none are absent.
    per_worker: HashMap<WorkerId, usize>,
}

/// A key of the LRU index. Its own type so that tests can count the
/// comparisons the index makes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LruKey(LruPosition);

impl Ord for LruKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        #[cfg(test)]
        tests::COMPARISONS.with(|c| c.set(c.get() + 1));
        self.0.cmp(&other.0)
    }
}

impl PartialOrd for LruKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl State {
    fn insert(&mut self, session: &SessionId, binding: Binding) {
        self.lru.insert(LruKey((binding.last_used, session.clone())));
        *self.per_worker.entry(binding.worker).or_insert(0) += 1;
        self.map.insert(session.clone(), binding);
    }

    fn remove(&mut self, session: &SessionId) -> Option<Binding> {
        let binding = self.map.remove(session)?;
        self.lru.remove(&LruKey((binding.last_used, session.clone())));
        if let Some(n) = self.per_worker.get_mut(&binding.worker) {
            *n -= 1;
            if *n == 0 {
                self.per_worker.remove(&binding.worker);
            }
        }
        Some(binding)
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn get(&self, session: &SessionId) -> Option<Binding> {
        self.state().map.get(session).copied()
    }

    async fn bind_if_absent(&self, session: &SessionId, binding: Binding) -> Binding {
        let mut st = self.state();
        if let Some(existing) = st.map.get(session) {
            return *existing;
        }
        st.insert(session, binding);
        binding
    }

    async fn touch(&self, session: &SessionId, at: Instant) {
        let mut st = self.state();
        let Some(binding) = st.map.get_mut(session) else {
            return;
        };
        if at <= binding.last_used {
            return;
        }
        let old = binding.last_used;
        binding.last_used = at;
        st.lru.remove(&LruKey((old, session.clone())));
        st.lru.insert(LruKey((at, session.clone())));
    }

    async fn remove_if_bound_to(&self, session: &SessionId, worker: WorkerId) -> Option<Binding> {
        let mut st = self.state();
        match st.map.get(session) {
            Some(binding) if binding.worker == worker => st.remove(session),
            _ => None,
        }
    }

    async fn remove(&self, session: &SessionId) -> Option<Binding> {
        self.state().remove(session)
    }

    async fn list(&self) -> Vec<(SessionId, Binding)> {
        self.state().map.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    async fn len(&self) -> usize {
        self.state().map.len()
    }

    async fn sessions_per_worker(&self) -> HashMap<WorkerId, usize> {
        self.state().per_worker.clone()
    }

    async fn least_recently_used(
        &self,
        after: Option<LruPosition>,
        limit: usize,
    ) -> Vec<(SessionId, Binding)> {
        use std::ops::Bound;
        let st = self.state();
        let start = match after {
            Some(pos) => Bound::Excluded(LruKey(pos)),
            None => Bound::Unbounded,
        };
        st.lru
            .range((start, Bound::Unbounded))
            .take(limit)
            .filter_map(|LruKey((_, id))| st.map.get(id).map(|b| (id.clone(), *b)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::time::Duration;

    use super::*;

    thread_local! {
        /// Comparisons made by the LRU index on this thread.
        pub(super) static COMPARISONS: Cell<u64> = const { Cell::new(0) };
    }

    fn comparisons() -> u64 {
        COMPARISONS.with(Cell::get)
    }

    fn id(n: usize) -> SessionId {
        SessionId::parse(format!("s{n:08}")).unwrap()
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// A store of `n` sessions over 4 workers, used in order 0..n.
    async fn store_of(n: usize, t0: Instant) -> MemoryStore {
        let store = MemoryStore::new();
        for i in 0..n {
            let at = t0 + Duration::from_micros(i as u64);
            store
                .bind_if_absent(&id(i), Binding::new(WorkerId(i as u64 % 4), at))
                .await;
        }
        store
    }

    /// The comparisons one bind + one use + one eviction (what a
    /// `SessionPool` does to bind a session when full) make at `n` sessions.
    async fn comparisons_per_bind(n: usize) -> u64 {
        let t0 = Instant::now();
        let store = store_of(n, t0).await;
        let later = t0 + Duration::from_secs(3600);
        let before = comparisons();
        let counts = store.sessions_per_worker().await;
        assert_eq!(counts.values().sum::<usize>(), n);
        let oldest = store.least_recently_used(None, 8).await;
        assert_eq!(oldest[0].0, id(0), "the least recently used first");
        // The next page, as when the oldest sessions are busy.
        let (last, binding) = oldest[7].clone();
        let next = store
            .least_recently_used(Some((binding.last_used, last)), 8)
            .await;
        assert_eq!(next[0].0, id(8));
        store
            .remove_if_bound_to(&oldest[0].0, oldest[0].1.worker)
            .await
            .unwrap();
        store
            .bind_if_absent(&id(n), Binding::new(WorkerId(0), later))
            .await;
        store.touch(&id(n), later + Duration::from_secs(1)).await;
        store.touch(&id(1), later + Duration::from_secs(2)).await;
        comparisons() - before
    }

    #[test]
    fn binding_evicting_and_touching_cost_o_log_n_comparisons() {
        block_on(async {
            let small = comparisons_per_bind(1_000).await;
            let large = comparisons_per_bind(64_000).await;
            // A handful of B-tree descents (each a few comparisons per
            // level, ~6 levels at 64,000). A scan or a sort of every
            // session would be 64,000 or more, and grow 64-fold.
            assert!(large <= 400, "{large} comparisons at 64,000 sessions");
            assert!(
                large <= small * 4,
                "64x the sessions, {small} -> {large} comparisons: not logarithmic"
            );
        });
    }

    #[test]
    fn the_indexes_follow_every_change() {
        block_on(async {
            let t0 = Instant::now();
            let store = store_of(10, t0).await;
            assert_eq!(store.len().await, 10);
            // A bind of a bound session keeps the existing binding.
            let again = store.bind_if_absent(&id(3), Binding::new(WorkerId(9), t0)).await;
            assert_eq!(again.worker, WorkerId(3));
            // Touching moves a session to the most recently used end; an
            // older time changes nothing.
            store.touch(&id(0), t0 + Duration::from_secs(5)).await;
            store.touch(&id(0), t0).await;
            let order: Vec<SessionId> = store
                .least_recently_used(None, 100)
                .await
                .into_iter()
                .map(|(s, _)| s)
                .collect();
            let mut expected: Vec<SessionId> = (1..10).map(id).collect();
            expected.push(id(0));
            assert_eq!(order, expected);
            // Paging: strictly after the given position.
            let first = store.least_recently_used(None, 3).await;
            let (last_id, last) = first[2].clone();
            let next = store
                .least_recently_used(Some((last.last_used, last_id)), 3)
                .await;
            assert_eq!(
                next.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>(),
                vec![id(4), id(5), id(6)]
            );
            // Removal keeps the counts and the order.
            assert!(store.remove_if_bound_to(&id(4), WorkerId(1)).await.is_none());
            assert_eq!(
                store
                    .remove_if_bound_to(&id(4), WorkerId(0))
                    .await
                    .unwrap()
                    .worker,
                WorkerId(0)
            );
            assert!(store.remove(&id(8)).await.is_some());
            assert!(store.remove(&id(8)).await.is_none());
            let counts = store.sessions_per_worker().await;
            assert_eq!(counts.get(&WorkerId(0)), Some(&1), "{counts:?}"); // 4 and 8 gone
            assert_eq!(counts.values().sum::<usize>(), 8);
            let order = store.least_recently_used(None, 100).await;
            assert_eq!(order.len(), 8);
            assert!(order
                .windows(2)
                .all(|w| (w[0].1.last_used, &w[0].0) < (w[1].1.last_used, &w[1].0)));
            // Emptied, the per-worker counts drop their workers.
            for (s, _) in store.list().await {
                store.remove(&s).await;
            }
            assert!(store.is_empty().await);
            assert!(store.sessions_per_worker().await.is_empty());
            assert!(store.least_recently_used(None, 10).await.is_empty());
        });
    }

    #[test]
    fn the_default_implementations_agree_with_the_indexed_ones() {
        block_on(async {
            let t0 = Instant::now();
            let indexed = store_of(50, t0).await;
            let by_default = DefaultOnly(store_of(50, t0).await);
            for (i, at) in [(7, 900), (3, 100), (7, 950), (20, 10)] {
                let at = t0 + Duration::from_micros(at);
                indexed.touch(&id(i), at).await;
                by_default.touch(&id(i), at).await;
            }
            assert_eq!(
                by_default.sessions_per_worker().await,
                indexed.sessions_per_worker().await
            );
            assert_eq!(
                by_default.least_recently_used(None, 60).await,
                indexed.least_recently_used(None, 60).await
            );
            let after = Some((t0 + Duration::from_micros(30), id(30)));
            assert_eq!(
                by_default.least_recently_used(after.clone(), 5).await,
                indexed.least_recently_used(after, 5).await
            );
        });
    }

    /// A store with only the required methods, to check the defaults.
    struct DefaultOnly(MemoryStore);

    #[async_trait]
    impl SessionStore for DefaultOnly {
        async fn get(&self, session: &SessionId) -> Option<Binding> {
            self.0.get(session).await
        }
        async fn bind_if_absent(&self, session: &SessionId, binding: Binding) -> Binding {
            self.0.bind_if_absent(session, binding).await
        }
        async fn touch(&self, session: &SessionId, at: Instant) {
            self.0.touch(session, at).await
        }
        async fn remove_if_bound_to(&self, session: &SessionId, worker: WorkerId) -> Option<Binding> {
            self.0.remove_if_bound_to(session, worker).await
        }
        async fn remove(&self, session: &SessionId) -> Option<Binding> {
            self.0.remove(session).await
        }
        async fn list(&self) -> Vec<(SessionId, Binding)> {
            self.0.list().await
        }
        async fn len(&self) -> usize {
            self.0.len().await
        }
    }
}
