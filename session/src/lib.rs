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
//! - a [`SessionStore`] trait with the in-memory [`MemoryStore`] default,
//!   indexed so that binding and evicting cost O(log n) in the number of
//!   sessions;
//! - validated [`SessionId`]s (1-128 of `A-Z a-z 0-9 - _ . :`) and random
//!   128-bit ones from [`SessionId::new`].
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
//! assert!(sessions.is_empty().await);
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
