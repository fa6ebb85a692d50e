//! A hostile worker whose reply nests 600 arrays deep (well under
//! rmp-serde's own 1024 cap, deeper than anything the Python runtime can
//! produce: msgpack-python stops at 511). The decoder must bound the depth
//! and fail the worker as `CrashCause::TooDeep`, never abort the host.
//!
//! In its own test binary: before the fix the decode overflows the stack of
//! the reading thread and aborts the whole process, which would take every
//! other hostile scenario down with it.

mod hostile;

use std::time::Duration;

use hostile::*;
use portpool::transport::CrashCause;
use portpool::{CallError, PoolError, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_too_deep_reply_is_too_deep_and_the_host_survives() {
    let hostile = Hostile::new("deep_reply");
    let pool = hostile.pool(1).build().await.unwrap();
    let outcome = tokio::time::timeout(BOUND, pool.call_value("echo", Value::from(1)))
        .await
        .expect("the call hung");
    let error = outcome.expect_err("a 600-deep reply must fail the worker");
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
