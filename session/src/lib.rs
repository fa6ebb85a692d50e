//! portpool session: session affinity for stateful calls over a pool.
//!
//! A session id binds to one worker on its first call; every later call of
//! the session carries the id and goes to that worker, so the state a Python
//! handler keeps in `ctx.session` stays local to one process.
//!
//! This crate provides:
//! - [`SessionPool`], wrapping a [`Pool`](portpool_pool::Pool), and
//!   [`Session`], a handle on one session;
//! - [`Affinity`] modes: `Strict` (queue for the bound worker), `FailFast`
//!   (bound worker full: [`SessionError::WorkerBusy`] at once), `Hint`
//!   (prefer it, fall back to any worker);
//! - binding of new sessions to the worker with the fewest sessions,
//!   `max_sessions` with least-recently-used eviction, idle TTL expiry;
//!   closing, expiring or evicting a session sends `session_close` so the
//!   worker frees the state; a close is a point in the session's order of
//!   calls (calls arriving during it wait, then start fresh), bounded by
//!   the running calls and the pool's drain time-out;
//! - dropping the last [`SessionPool`] handle releases the pins of its
//!   sessions (so their workers can be recycled) and closes them;
//! - lost-worker handling ([`OnLost`]): the next call fails once with
//!   [`SessionError::SessionLost`] and the one after starts fresh, or the
//!   session rebinds silently. While a worker holds bound sessions the pool
//!   defers recycling it, up to its drain time-out;
//! - a fallible [`SessionStore`] trait (a store that is down is a
//!   [`SessionError::Store`] within [`SessionConfig::store_timeout`], never
//!   a hang or a new binding in its place) with the in-memory
//!   [`MemoryStore`] default, indexed so that binding and evicting cost
//!   O(log n) in the number of sessions;
//! - with the `redis` feature, `RedisStore`: bindings in Redis, shared by
//!   several front ends (see below);
//! - validated [`SessionId`]s (1-128 of `A-Z a-z 0-9 - _ . :`) and random
//!   128-bit ones from [`SessionId::new`].
//!
//! # Bindings, addresses and time
//!
//! A [`Binding`] names its worker by [`WorkerAddress`](portpool_pool::WorkerAddress)
//! (`tcp://HOST:PORT#INSTANCE` for a remote worker, `local:NONCE/ID` for a
//! child process of this front end), not by the process-local
//! [`WorkerId`](portpool_pool::WorkerId): each call maps the address to this
//! pool's worker through
//! [`AffinityPort::worker_at`](portpool_pool::AffinityPort::worker_at). An
//! address this pool has no worker at is handled like a lost worker
//! ([`OnLost`]); a call is never routed to a worker that does not hold the
//! session's state.
//!
//! Times in bindings are wall-clock milliseconds ([`UnixMillis`]), so that
//! front ends can compare them. A session pool reads the wall clock once,
//! when it is created, and advances it by tokio's monotonic clock: tests
//! under paused tokio time move it like everything else, and a step of the
//! system clock does not make sessions look idle.
//!
//! # Several front ends sharing a store
//!
//! Several processes (replicas of a service behind a load balancer) may
//! share one store (`RedisStore`) and the same remote workers; a session
//! opened on one continues on any other. The rule that keeps expiry and
//! eviction correct:
//!
//! - **Ownership.** Each binding records its owner: the front end that
//!   bound it ([`SessionConfig::front_end`]), then the last one to start a
//!   call of it (every call records a use when it starts, every quarter of
//!   `idle_ttl` while it runs, and when it ends).
//! - **Eviction is local.** `max_sessions` counts only the sessions this
//!   front end owns, and eviction picks the least recently used of those
//!   with no call running here. It is a compare-and-delete on the
//!   `last_used` it read: a session used meanwhile on any front end stays.
//!   A session another front end is using is that front end's: it is never
//!   evicted here. (Sessions taken over by calling them count from then on;
//!   the next bind evicts down to `max_sessions`.)
//! - **Idleness is store-wide.** `last_used` is updated by every front
//!   end. A front end expires a session it owns once it has been idle for
//!   `idle_ttl` (and no call of it runs here), and a session another front
//!   end owns only once idle for twice `idle_ttl` (so a front end that
//!   stalls for a while keeps its sessions, a call of any length is a use
//!   all along, and the sessions of a front end that went away are still
//!   reclaimed). Expiry is a compare-and-delete on `last_used`, and tells
//!   the worker to drop the state.
//! - **Dropping a session pool** over a shared store
//!   ([`SessionStore::is_shared`]) closes none of its sessions: the others
//!   may go on with them. Over a private store ([`MemoryStore`]) it closes
//!   them all, as before.
//! - Keep the front ends' clocks in sync (NTP) to well within `idle_ttl`.
//!
//! The crate depends on the pool crate's public API only: what affinity
//! needs from the pool (calls for one worker, pins, `session_close`, the
//! ready workers) goes through its
//! [`AffinityPort`](portpool_pool::AffinityPort), and typed calls through
//! [`typed_call`](portpool_pool::typed_call).
//!
//! # Example
//!
//! ```
//! use portpool_pool::Pool;
//! use portpool_session::{SessionConfig, SessionPool};
//! use portpool_testkit::{CallContext, FakeLauncher};
//! use portpool_pool::Value;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A counter kept in worker memory per session, like a Python handler's
//! // `ctx.session["n"] += 1`.
//! let launcher = FakeLauncher::new().handler_ctx("count", |ctx: CallContext, _| {
//!     let n = ctx.session_state().and_then(|v| v.as_u64()).unwrap_or(0) + 1;
//!     ctx.set_session_state(Value::from(n));
//!     Ok(Value::from(n))
//! });
//! let pool = Pool::builder(launcher).workers(3).build().await?;
//! let sessions = SessionPool::new(pool, SessionConfig::default())?;
//!
//! let chat = sessions.open();
//! for expected in 1..=5u64 {
//!     // Every call of the session runs on the worker holding its state.
//!     let n: u64 = chat.call("count", &()).await?;
//!     assert_eq!(n, expected);
//! }
//! chat.close().await?; // the worker drops the state
//! assert!(sessions.is_empty().await?);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

mod config;
mod error;
mod id;
mod pool;
#[cfg(feature = "redis")]
mod redis_store;
mod store;

pub use config::{Affinity, OnLost, SessionConfig};
pub use error::SessionError;
pub use id::{SessionId, MAX_SESSION_ID_LEN};
pub use pool::{Session, SessionPool};
#[cfg(feature = "redis")]
pub use redis_store::{RedisStore, RedisStoreConfig};
pub use store::{Binding, LruPosition, MemoryStore, SessionStore, StoreError, StoreResult, UnixMillis};
