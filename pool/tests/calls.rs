//! The call API: typed calls and their encode and decode errors, raw
//! calls, and the pool's default call time-out. Fake workers and paused
//! time.

mod common;

use common::*;
use portpool_pool::PoolError;
use portpool_transport::{CallError, CallRequest, Value};

#[tokio::test(start_paused = true)]
async fn typed_calls_report_encode_and_decode_errors() {
    let l = launcher();
    let pool = fake_pool(&l, 1).await.unwrap();
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Point {
        x: i32,
        y: i32,
    }
    let p: Point = pool.call("echo", &Point { x: 1, y: 2 }).await.unwrap();
    assert_eq!(p, Point { x: 1, y: 2 });
    let err = pool.call::<_, Point>("echo", &"not a point").await.unwrap_err();
    assert!(matches!(err, PoolError::Decode { .. }), "{err}");
    let raw = pool
        .call_raw(CallRequest::new("echo", "raw").with_timeout(secs(1)))
        .await
        .unwrap();
    assert_eq!(raw, Value::from("raw"));
    assert_eq!(
        pool.call_value("echo", Value::from(3)).await.unwrap(),
        Value::from(3)
    );
    pool.shutdown(secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn default_call_timeout_is_applied_to_requests() {
    let l = launcher();
    let pool = fake_pool_builder(&l)
        .workers(1)
        .call_timeout(secs(2))
        .build()
        .await
        .unwrap();
    let err = pool.call::<_, u64>("sleep", &10_000).await.unwrap_err();
    assert!(
        matches!(err, PoolError::Call(CallError::Timeout { after, .. }) if after == secs(2)),
        "{err}"
    );
    assert_eq!(l.workers()[0].calls()[0].timeout, Some(secs(2)));
    // A request's own time-out wins.
    pool.call_raw(CallRequest::new("sleep", 3_000).with_timeout(secs(5)))
        .await
        .unwrap();
    pool.shutdown(secs(1)).await;
}
