//! Two front ends (two `SessionPool`s, as two replicas of a service would
//! be) share sessions through Redis: a session opened on one continues on
//! the other, on the same worker, with its state.
//!
//! The workers are fakes of one `FakeFleet` (the "same remote workers" seen
//! from both front ends), and Redis is a throwaway `redis-server` on a free
//! loopback port (installed by `cargo xtask setup`):
//!
//! ```text
//! cargo run -p portpool-session --features redis --example shared_sessions
//! ```
use std::sync::Arc;

use portpool_pool::Value;
use portpool_session::{RedisStore, RedisStoreConfig, SessionConfig, SessionId, SessionPool};
use portpool_testkit::{fake_pool, CallContext, FakeFleet, FakeLauncher, RedisServer};

/// One front end: its own pool (its own connections to the fleet's
/// workers) and its own connection to Redis.
async fn front_end(
    fleet: &FakeFleet,
    redis_url: &str,
    name: &str,
) -> Result<SessionPool, Box<dyn std::error::Error>> {
    // A counter kept in worker memory per session, like a Python handler's
    // `ctx.session["n"] += 1`.
    let launcher = FakeLauncher::new()
        .fleet(fleet)
        .handler_ctx("count", |ctx: CallContext, _| {
            let n = ctx.session_state().and_then(|v| v.as_u64()).unwrap_or(0) + 1;
            ctx.set_session_state(Value::from(n));
            Ok(Value::from(n))
        });
    let pool = fake_pool(&launcher, 3).await?;
    let store = RedisStore::connect(redis_url, RedisStoreConfig::new("example")).await?;
    let config = SessionConfig::default().front_end(name);
    Ok(SessionPool::with_store(pool, config, Arc::new(store))?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(redis) = RedisServer::start_or_skip("the shared_sessions example") else {
        return Ok(());
    };
    let fleet = FakeFleet::new();
    let a = front_end(&fleet, &redis.url(), "replica-a").await?;
    let b = front_end(&fleet, &redis.url(), "replica-b").await?;

    let chat = SessionId::new();
    for (front, name) in [(&a, "a"), (&b, "b"), (&a, "a"), (&b, "b")] {
        let n: u64 = front.call(&chat, "count", &()).await?;
        let binding = front.binding(&chat).await?.ok_or("the session is bound")?;
        println!(
            "replica-{name}: count = {n} on {} (owner {})",
            binding.worker, binding.owner
        );
    }
    let n: u64 = a.call(&chat, "count", &()).await?;
    assert_eq!(n, 5, "one counter, whichever replica served the call");
    b.close(&chat).await?; // the worker drops the state, for both replicas
    assert!(a.binding(&chat).await?.is_none());
    println!("closed on replica-b; replica-a sees no binding");
    Ok(())
}
