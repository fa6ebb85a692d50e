//! The [`SessionStore`] trait, its typed error, and the in-memory default.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use portpool_pool::WorkerAddress;

use crate::SessionId;

/// A wall-clock time in milliseconds since the Unix epoch: what bindings
/// record, so that every front end sharing a store reads the same times
/// (a `tokio::time::Instant` means nothing outside its process).
///
/// A [`SessionPool`](crate::SessionPool) reads it from the wall clock once,
/// when it is created, and advances it by tokio's monotonic clock (so
/// tests under paused tokio time move it, and a wall-clock step does not
/// make sessions look idle). Front ends sharing a store should keep their
/// clocks in sync (NTP) to well within `idle_ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    /// The wall clock now (0 before the epoch).
    pub fn now() -> Self {
        UnixMillis(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        )
    }

    /// The time `d` later (saturating).
    pub fn plus(self, d: std::time::Duration) -> Self {
        UnixMillis(self.0.saturating_add(d.as_millis() as u64))
    }

    /// How long after `earlier` this is (zero if it is not later).
    pub fn since(self, earlier: UnixMillis) -> std::time::Duration {
        std::time::Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl std::fmt::Display for UnixMillis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// Where a session is bound, by whom, and when it was last used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The worker holding the session's state, by its stable address
    /// (every front end maps it to its own connection to that worker).
    pub worker: WorkerAddress,
    /// The front end that owns the session: the one that bound it, then
    /// the last one to start a call of it (see
    /// [`SessionConfig::front_end`](crate::SessionConfig::front_end)). A
    /// front end counts and evicts only the sessions it owns.
    pub owner: String,
    /// When the session was bound.
    pub bound_at: UnixMillis,
    /// When the session was bound, or a call of it last started or ended
    /// (on any front end).
    pub last_used: UnixMillis,
}

impl Binding {
    /// A binding to `worker`, owned by `owner`, made at `now`.
    pub fn new(worker: WorkerAddress, owner: impl Into<String>, now: UnixMillis) -> Self {
        Binding {
            worker,
            owner: owner.into(),
            bound_at: now,
            last_used: now,
        }
    }
}

/// A position in least-recently-used order: a session's `last_used`, then
/// its id (so positions are unique). See
/// [`SessionStore::least_recently_used`].
pub type LruPosition = (UnixMillis, SessionId);

/// A store operation failed: the store is unreachable, timed out, or
/// answered something unreadable. Names the operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("session store {op} failed: {reason}")]
#[non_exhaustive]
pub struct StoreError {
    /// The operation (`get`, `bind_if_absent`, `touch`, `remove`, ...).
    pub op: &'static str,
    /// What went wrong.
    pub reason: String,
    /// Whether the operation ran out of time (the store may have applied
    /// it or not).
    pub timed_out: bool,
}

impl StoreError {
    /// A failure of `op`.
    pub fn new(op: &'static str, reason: impl Into<String>) -> Self {
        StoreError {
            op,
            reason: reason.into(),
            timed_out: false,
        }
    }

    /// `op` did not complete within `after`.
    pub fn timeout(op: &'static str, after: std::time::Duration) -> Self {
        StoreError {
            op,
            reason: format!("no answer within {after:?}"),
            timed_out: true,
        }
    }
}

/// What a store operation returns.
pub type StoreResult<T> = Result<T, StoreError>;

/// Keeps session bindings. The in-memory [`MemoryStore`] is the default;
/// `RedisStore` (feature `redis`) shares them between front ends;
/// implement this to keep bindings elsewhere.
///
/// Every operation is fallible: a store that is down answers
/// [`StoreError`], which the session pool reports as
/// [`SessionError::Store`](crate::SessionError::Store) (never a new
/// binding made in its place). Operations should bound their own time;
/// the session pool also bounds each by
/// [`SessionConfig::store_timeout`](crate::SessionConfig::store_timeout).
///
/// `bind_if_absent` must be atomic: of concurrent binds of one session
/// (from any front end), exactly one wins and all see its binding.
/// `remove_if` must be a compare-and-delete.
///
/// The [`SessionPool`](crate::SessionPool) binds and evicts through
/// [`sessions_per_worker`](Self::sessions_per_worker),
/// [`len_owned_by`](Self::len_owned_by) and
/// [`least_recently_used`](Self::least_recently_used), and never calls
/// [`list`](Self::list) on those paths. Their default implementations are
/// built on `list` and so cost O(n) per bind; override them (as
/// [`MemoryStore`] does) to make binding and eviction independent of the
/// number of sessions.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// The session's binding, if it has one.
    async fn get(&self, session: &SessionId) -> StoreResult<Option<Binding>>;
    /// Binds the session unless it is bound already; returns the binding in force.
    async fn bind_if_absent(&self, session: &SessionId, binding: Binding) -> StoreResult<Binding>;
    /// Records a use of the session; an unbound session is left unbound.
    ///
    /// - `start: Some(front_end)`: a call of the session starts on
    ///   `front_end`, which becomes its owner; `last_used` becomes `at`, or
    ///   the old `last_used` plus 1 ms if that is not earlier (it always
    ///   changes, so a compare-and-delete that read the old value fails:
    ///   a session in use is never expired or evicted by another front end).
    /// - `start: None`: a call ended; `last_used` becomes `at` if that is
    ///   later, and the owner stays.
    async fn touch(&self, session: &SessionId, at: UnixMillis, start: Option<&str>) -> StoreResult<()>;
    /// Compare-and-delete: removes the binding only if it is still to
    /// `worker` and, when `last_used` is given, still has that `last_used`
    /// (no use since it was read); returns it.
    async fn remove_if(
        &self,
        session: &SessionId,
        worker: &WorkerAddress,
        last_used: Option<UnixMillis>,
    ) -> StoreResult<Option<Binding>>;
    /// Removes the binding; returns it.
    async fn remove(&self, session: &SessionId) -> StoreResult<Option<Binding>>;

    /// A call of the session starts on front end `by`: [`touch`](Self::touch)
    /// with `start: Some(by)`, then [`get`](Self::get) (what a call does
    /// first). The default makes the two calls; a remote store may do both
    /// in one round trip.
    async fn start_use(&self, session: &SessionId, at: UnixMillis, by: &str) -> StoreResult<Option<Binding>> {
        self.touch(session, at, Some(by)).await?;
        self.get(session).await
    }
    /// Every binding, in no particular order.
    async fn list(&self) -> StoreResult<Vec<(SessionId, Binding)>>;
    /// How many sessions are bound (by every front end).
    async fn len(&self) -> StoreResult<usize>;
    /// Whether no session is bound.
    async fn is_empty(&self) -> StoreResult<bool> {
        Ok(self.len().await? == 0)
    }

    /// Whether other processes (front ends) may use the same bindings. A
    /// session pool over a shared store leaves the bindings in place when
    /// it is dropped (other front ends may go on with them; idle expiry
    /// removes them), where over a private store it closes them all.
    /// Default `false`.
    fn is_shared(&self) -> bool {
        false
    }

    /// How many sessions `owner` owns. The default counts
    /// [`list`](Self::list): O(n).
    async fn len_owned_by(&self, owner: &str) -> StoreResult<usize> {
        Ok(self
            .list()
            .await?
            .iter()
            .filter(|(_, b)| b.owner == owner)
            .count())
    }

    /// How many sessions are bound to each worker, by every front end
    /// (workers with none may be left out). The default counts
    /// [`list`](Self::list): O(n).
    async fn sessions_per_worker(&self) -> StoreResult<HashMap<WorkerAddress, usize>> {
        let mut counts = HashMap::new();
        for (_, binding) in self.list().await? {
            *counts.entry(binding.worker).or_insert(0) += 1;
        }
        Ok(counts)
    }

    /// Up to `limit` bindings in least-recently-used order (by
    /// `last_used`, then session id), of every session or (with `owner`)
    /// of those `owner` owns, starting strictly after `after` (from the
    /// least recently used when `None`). Pass the position of the last
    /// binding returned to page on. The default sorts
    /// [`list`](Self::list): O(n log n).
    async fn least_recently_used(
        &self,
        owner: Option<&str>,
        after: Option<LruPosition>,
        limit: usize,
    ) -> StoreResult<Vec<(SessionId, Binding)>> {
        let mut all: Vec<(LruPosition, Binding)> = self
            .list()
            .await?
            .into_iter()
            .filter(|(_, b)| owner.map_or(true, |o| b.owner == o))
            .map(|(id, b)| ((b.last_used, id), b))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all
            .into_iter()
            .filter(|(pos, _)| after.as_ref().map_or(true, |after| pos > after))
            .take(limit)
            .map(|((_, id), b)| (id, b))
            .collect())
    }
}

/// The default store: the bindings in this process, indexed so that every
/// operation costs O(log n) in the number of sessions (or less):
/// `sessions_per_worker` is O(workers), `len_owned_by` O(1) and
/// `least_recently_used` O(log n + limit). Only
/// [`list`](SessionStore::list) is O(n). It never fails.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    map: HashMap<SessionId, Binding>,
    /// Every session by (last_used, id): the least recently used first.
    lru: BTreeSet<LruKey>,
    /// Every session by (owner, last_used, id).
    lru_by_owner: BTreeSet<(String, LruKey)>,
    /// Bound sessions per worker; workers with none are absent.
    per_worker: HashMap<WorkerAddress, usize>,
    /// Sessions per owner; owners with none are absent.
    per_owner: HashMap<String, usize>,
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

fn increment<K: std::hash::Hash + Eq + Clone>(counts: &mut HashMap<K, usize>, key: &K) {
    *counts.entry(key.clone()).or_insert(0) += 1;
}

fn decrement<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

impl State {
    fn index(&mut self, session: &SessionId, binding: &Binding) {
        let key = LruKey((binding.last_used, session.clone()));
        self.lru_by_owner.insert((binding.owner.clone(), key.clone()));
        self.lru.insert(key);
        increment(&mut self.per_owner, &binding.owner);
    }

    fn unindex(&mut self, session: &SessionId, binding: &Binding) {
        let key = LruKey((binding.last_used, session.clone()));
        self.lru_by_owner.remove(&(binding.owner.clone(), key.clone()));
        self.lru.remove(&key);
        decrement(&mut self.per_owner, &binding.owner);
    }

    fn insert(&mut self, session: &SessionId, binding: Binding) {
        self.index(session, &binding);
        increment(&mut self.per_worker, &binding.worker);
        self.map.insert(session.clone(), binding);
    }

    fn remove(&mut self, session: &SessionId) -> Option<Binding> {
        let binding = self.map.remove(session)?;
        self.unindex(session, &binding);
        decrement(&mut self.per_worker, &binding.worker);
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
    async fn get(&self, session: &SessionId) -> StoreResult<Option<Binding>> {
        Ok(self.state().map.get(session).cloned())
    }

    async fn bind_if_absent(&self, session: &SessionId, binding: Binding) -> StoreResult<Binding> {
        let mut st = self.state();
        if let Some(existing) = st.map.get(session) {
            return Ok(existing.clone());
        }
        st.insert(session, binding.clone());
        Ok(binding)
    }

    async fn touch(&self, session: &SessionId, at: UnixMillis, start: Option<&str>) -> StoreResult<()> {
        let mut st = self.state();
        let Some(old) = st.map.get(session).cloned() else {
            return Ok(());
        };
        let new = match start {
            Some(by) => Binding {
                owner: by.to_owned(),
                last_used: at.max(UnixMillis(old.last_used.0.saturating_add(1))),
                ..old.clone()
            },
            None if at > old.last_used => Binding {
                last_used: at,
                ..old.clone()
            },
            None => return Ok(()),
        };
        st.unindex(session, &old);
        st.index(session, &new);
        st.map.insert(session.clone(), new);
        Ok(())
    }

    async fn remove_if(
        &self,
        session: &SessionId,
        worker: &WorkerAddress,
        last_used: Option<UnixMillis>,
    ) -> StoreResult<Option<Binding>> {
        let mut st = self.state();
        match st.map.get(session) {
            Some(binding)
                if binding.worker == *worker && last_used.map_or(true, |at| at == binding.last_used) =>
            {
                Ok(st.remove(session))
            }
            _ => Ok(None),
        }
    }

    async fn remove(&self, session: &SessionId) -> StoreResult<Option<Binding>> {
        Ok(self.state().remove(session))
    }

    async fn list(&self) -> StoreResult<Vec<(SessionId, Binding)>> {
        Ok(self
            .state()
            .map
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn len(&self) -> StoreResult<usize> {
        Ok(self.state().map.len())
    }

    async fn len_owned_by(&self, owner: &str) -> StoreResult<usize> {
        Ok(self.state().per_owner.get(owner).copied().unwrap_or(0))
    }

    async fn sessions_per_worker(&self) -> StoreResult<HashMap<WorkerAddress, usize>> {
        Ok(self.state().per_worker.clone())
    }

    async fn least_recently_used(
        &self,
        owner: Option<&str>,
        after: Option<LruPosition>,
        limit: usize,
    ) -> StoreResult<Vec<(SessionId, Binding)>> {
        use std::ops::Bound;
        let st = self.state();
        let pick = |id: &SessionId| st.map.get(id).map(|b| (id.clone(), b.clone()));
        Ok(match owner {
            None => {
                let start = match after {
                    Some(pos) => Bound::Excluded(LruKey(pos)),
                    None => Bound::Unbounded,
                };
                st.lru
                    .range((start, Bound::Unbounded))
                    .take(limit)
                    .filter_map(|LruKey((_, id))| pick(id))
                    .collect()
            }
            Some(owner) => {
                let start = match after {
                    Some(pos) => Bound::Excluded((owner.to_owned(), LruKey(pos))),
                    None => Bound::Included((owner.to_owned(), LruKey((UnixMillis(0), SessionId::min())))),
                };
                st.lru_by_owner
                    .range((start, Bound::Unbounded))
                    .take_while(|(o, _)| o == owner)
                    .take(limit)
                    .filter_map(|(_, LruKey((_, id)))| pick(id))
                    .collect()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn addr(n: u64) -> WorkerAddress {
        WorkerAddress::from_stored(format!("tcp://w{n}:1#a"))
    }

    fn bind(n: u64, owner: &str, at: UnixMillis) -> Binding {
        Binding::new(addr(n), owner, at)
    }

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

    /// A store of `n` sessions over 4 workers, used in order 0..n, owned
    /// by "a" (and every tenth by "b").
    async fn store_of(n: usize, t0: UnixMillis) -> MemoryStore {
        let store = MemoryStore::new();
        for i in 0..n {
            let at = UnixMillis(t0.0 + i as u64);
            let owner = if i % 10 == 9 { "b" } else { "a" };
            store
                .bind_if_absent(&id(i), bind(i as u64 % 4, owner, at))
                .await
                .unwrap();
        }
        store
    }

    /// The comparisons one bind + one use + one eviction (what a
    /// `SessionPool` does to bind a session when full) make at `n` sessions.
    async fn comparisons_per_bind(n: usize) -> u64 {
        let t0 = UnixMillis(1_000_000);
        let store = store_of(n, t0).await;
        let later = UnixMillis(t0.0 + 3_600_000);
        let before = comparisons();
        let counts = store.sessions_per_worker().await.unwrap();
        assert_eq!(counts.values().sum::<usize>(), n);
        assert_eq!(store.len_owned_by("b").await.unwrap(), n / 10);
        let oldest = store.least_recently_used(Some("a"), None, 8).await.unwrap();
        assert_eq!(oldest[0].0, id(0), "the least recently used first");
        // The next page, as when the oldest sessions are busy.
        let (last, binding) = oldest[7].clone();
        let next = store
            .least_recently_used(Some("a"), Some((binding.last_used, last)), 8)
            .await
            .unwrap();
        assert_eq!((&next[0].0, &next[1].0), (&id(8), &id(10)), "9 is b's");
        let global = store.least_recently_used(None, None, 8).await.unwrap();
        assert_eq!(global[0].0, id(0));
        store
            .remove_if(&oldest[0].0, &oldest[0].1.worker, Some(oldest[0].1.last_used))
            .await
            .unwrap()
            .unwrap();
        store.bind_if_absent(&id(n), bind(0, "a", later)).await.unwrap();
        store
            .touch(&id(n), later.plus(std::time::Duration::from_secs(1)), Some("a"))
            .await
            .unwrap();
        store
            .touch(&id(1), later.plus(std::time::Duration::from_secs(2)), Some("b"))
            .await
            .unwrap();
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
            let t0 = UnixMillis(1_000_000);
            let store = store_of(10, t0).await;
            assert_eq!(store.len().await.unwrap(), 10);
            // A bind of a bound session keeps the existing binding.
            let again = store.bind_if_absent(&id(3), bind(9, "a", t0)).await.unwrap();
            assert_eq!(again.worker, addr(3));
            // A call's start moves a session to the most recently used end,
            // and to the owner that touched it; a call's end with an older
            // time changes nothing.
            assert_eq!(store.len_owned_by("b").await.unwrap(), 1);
            store
                .touch(&id(0), UnixMillis(t0.0 + 5_000), Some("b"))
                .await
                .unwrap();
            store.touch(&id(0), t0, None).await.unwrap();
            let zero = store.get(&id(0)).await.unwrap().unwrap();
            assert_eq!(
                (zero.owner.as_str(), zero.last_used),
                ("b", UnixMillis(t0.0 + 5_000))
            );
            // A start always moves last_used (here: by 1 ms), so a
            // compare-and-delete that read the old one fails.
            store.touch(&id(0), t0, Some("b")).await.unwrap();
            let zero = store.get(&id(0)).await.unwrap().unwrap();
            assert_eq!(zero.last_used, UnixMillis(t0.0 + 5_001));
            assert!(store
                .remove_if(&id(0), &zero.worker, Some(UnixMillis(t0.0 + 5_000)))
                .await
                .unwrap()
                .is_none());
            assert_eq!(store.len_owned_by("b").await.unwrap(), 2);
            assert_eq!(store.len_owned_by("a").await.unwrap(), 8);
            let owned_by_b: Vec<SessionId> = store
                .least_recently_used(Some("b"), None, 100)
                .await
                .unwrap()
                .into_iter()
                .map(|(s, _)| s)
                .collect();
            assert_eq!(owned_by_b, vec![id(9), id(0)]);
            // A touch of an unbound session binds nothing.
            store.touch(&id(77), t0, Some("a")).await.unwrap();
            assert!(store.get(&id(77)).await.unwrap().is_none());
            let order: Vec<SessionId> = store
                .least_recently_used(None, None, 100)
                .await
                .unwrap()
                .into_iter()
                .map(|(s, _)| s)
                .collect();
            let mut expected: Vec<SessionId> = (1..10).map(id).collect();
            expected.push(id(0));
            assert_eq!(order, expected);
            // Paging: strictly after the given position.
            let first = store.least_recently_used(None, None, 3).await.unwrap();
            let (last_id, last) = first[2].clone();
            let next = store
                .least_recently_used(None, Some((last.last_used, last_id)), 3)
                .await
                .unwrap();
            assert_eq!(
                next.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>(),
                vec![id(4), id(5), id(6)]
            );
            // Compare-and-delete: the worker must match, and the
            // last_used when given. Removal keeps the counts and the order.
            let four = store.get(&id(4)).await.unwrap().unwrap();
            assert!(store.remove_if(&id(4), &addr(1), None).await.unwrap().is_none());
            assert!(store
                .remove_if(&id(4), &addr(0), Some(UnixMillis(four.last_used.0 + 1)))
                .await
                .unwrap()
                .is_none());
            assert_eq!(
                store
                    .remove_if(&id(4), &addr(0), Some(four.last_used))
                    .await
                    .unwrap()
                    .unwrap()
                    .worker,
                addr(0)
            );
            assert!(store.remove(&id(8)).await.unwrap().is_some());
            assert!(store.remove(&id(8)).await.unwrap().is_none());
            let counts = store.sessions_per_worker().await.unwrap();
            assert_eq!(counts.get(&addr(0)), Some(&1), "{counts:?}"); // 4 and 8 gone
            assert_eq!(counts.values().sum::<usize>(), 8);
            let order = store.least_recently_used(None, None, 100).await.unwrap();
            assert_eq!(order.len(), 8);
            assert!(order
                .windows(2)
                .all(|w| (w[0].1.last_used, &w[0].0) < (w[1].1.last_used, &w[1].0)));
            // Emptied, the per-worker counts drop their workers.
            for (s, _) in store.list().await.unwrap() {
                store.remove(&s).await.unwrap();
            }
            assert!(store.is_empty().await.unwrap());
            assert!(store.sessions_per_worker().await.unwrap().is_empty());
            assert_eq!(store.len_owned_by("a").await.unwrap(), 0);
            assert!(store
                .least_recently_used(None, None, 10)
                .await
                .unwrap()
                .is_empty());
            assert!(store
                .least_recently_used(Some("b"), None, 10)
                .await
                .unwrap()
                .is_empty());
        });
    }

    #[test]
    fn the_default_implementations_agree_with_the_indexed_ones() {
        block_on(async {
            let t0 = UnixMillis(1_000_000);
            let indexed = store_of(50, t0).await;
            let by_default = DefaultOnly(store_of(50, t0).await);
            for (i, at, by) in [
                (7, 900, Some("b")),
                (3, 100, Some("a")),
                (7, 950, None),
                (20, 10, Some("b")),
            ] {
                let at = UnixMillis(t0.0 + at);
                indexed.touch(&id(i), at, by).await.unwrap();
                by_default.touch(&id(i), at, by).await.unwrap();
            }
            assert_eq!(
                by_default.sessions_per_worker().await,
                indexed.sessions_per_worker().await
            );
            for owner in ["a", "b", "c"] {
                assert_eq!(
                    by_default.len_owned_by(owner).await,
                    indexed.len_owned_by(owner).await
                );
            }
            for owner in [None, Some("a"), Some("b")] {
                assert_eq!(
                    by_default.least_recently_used(owner, None, 60).await,
                    indexed.least_recently_used(owner, None, 60).await
                );
                let after = Some((UnixMillis(t0.0 + 30), id(30)));
                assert_eq!(
                    by_default.least_recently_used(owner, after.clone(), 5).await,
                    indexed.least_recently_used(owner, after, 5).await
                );
            }
        });
    }

    /// A store with only the required methods, to check the defaults.
    struct DefaultOnly(MemoryStore);

    #[async_trait]
    impl SessionStore for DefaultOnly {
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
    }
}
