//! Hostile workers whose replies nest deep. rmp-serde's recursive decoder
//! overflowed the reading thread's stack at ~600 levels in debug builds and
//! aborted the whole host. Now the depth is bounded at
//! `portpool_protocol::MAX_DEPTH` (1024: msgpack-python encodes and decodes up
//! to that), deep bodies decode on a thread with a big stack, and anything
//! deeper fails the worker as `CrashCause::TooDeep`.
//!
//! In its own test binary: a stack overflow aborts the whole process, which
//! would take every other hostile scenario down with it.

mod hostile;

use std::time::Duration;

use hostile::*;
use portpool::transport::CrashCause;
use portpool::{CallError, PoolError, Value};

/// Depth of `nested(depth)`: `depth` arrays around a nil.
fn depth_of(mut value: &Value) -> usize {
    let mut depth = 0;
    while let Value::Array(items) = value {
        depth += 1;
        value = &items[0];
    }
    depth
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_600_deep_reply_is_delivered_and_the_host_survives() {
    let hostile = Hostile::new("deep_reply_600");
    let pool = hostile.pool(1).build().await.unwrap();
    let reply = tokio::time::timeout(BOUND, pool.call_value("echo", Value::from(1)))
        .await
        .expect("the call hung")
        .expect("600 levels are within the bound");
    assert_eq!(depth_of(&reply), 600);
    pool.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_too_deep_reply_is_too_deep_and_the_host_survives() {
    let hostile = Hostile::new("deep_reply_100000");
    let pool = hostile.pool(1).build().await.unwrap();
    let outcome = tokio::time::timeout(BOUND, pool.call_value("echo", Value::from(1)))
        .await
        .expect("the call hung");
    let error = outcome.expect_err("a 100,000-deep reply must fail the worker");
    assert!(
        matches!(
            error,
            PoolError::Call(CallError::WorkerCrashed {
                cause: CrashCause::TooDeep,
                pid: Some(_),
                ..
            })
        ),
        "{error:?}"
    );
    hostile.assert_start_gone(0, Duration::from_secs(5)).await;
    assert_recovers_and_cleans_up(&hostile, pool, 1).await;
}
