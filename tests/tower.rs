//! `PoolService` under tower middleware, with the in-process fake launcher.
#![cfg(feature = "tower")]

use std::time::Duration;

use portpool::{CallRequest, Pool, PoolError, PoolService, Value};
use portpool_testkit::{fake_pool, remote_error, FakeLauncher};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

fn launcher() -> FakeLauncher {
    FakeLauncher::new()
        .handler("echo", |v: Value| Ok(v))
        .handler("fail", |_| Err(remote_error("ValueError", "bad input")))
        .handler_ctx("whose", |ctx, _| {
            Ok(Value::from(ctx.session.clone().unwrap_or_default()))
        })
        .async_handler("slow", |v: Value| async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(v)
        })
}

async fn pool() -> Pool {
    fake_pool(&launcher(), 2).await.unwrap()
}

#[tokio::test]
async fn oneshot_echo() {
    let service = PoolService::new(pool().await);
    let reply = service
        .clone()
        .oneshot(CallRequest::new("echo", "hi"))
        .await
        .unwrap();
    assert_eq!(reply, Value::from("hi"));
    // A CallRequest converts.
    let reply = service.oneshot(CallRequest::new("echo", 7)).await.unwrap();
    assert_eq!(reply, Value::from(7));
}

#[tokio::test]
async fn errors_are_pool_errors() {
    let err = PoolService::new(pool().await)
        .oneshot(CallRequest::new("fail", Value::Nil))
        .await
        .unwrap_err();
    assert!(matches!(err, PoolError::Call(_)), "{err:?}");
}

#[tokio::test]
async fn session_travels_with_the_request() {
    let mut service = PoolService::new(pool().await);
    let reply = service
        .ready()
        .await
        .unwrap()
        .call(CallRequest::new("whose", Value::Nil).with_session("alice"))
        .await
        .unwrap();
    assert_eq!(reply, Value::from("alice"));
}

#[tokio::test(start_paused = true)]
async fn timeout_layer_cancels_a_slow_call() {
    let service = ServiceBuilder::new()
        .timeout(Duration::from_secs(1))
        .service(PoolService::new(pool().await));
    let err = service.oneshot(CallRequest::new("slow", 1)).await.unwrap_err();
    assert!(err.is::<tower::timeout::error::Elapsed>(), "{err:?}");
}

#[tokio::test]
async fn composes_with_map_request_and_service_fn() {
    // A front service that turns a string into a request, in front of the pool.
    let pool_service = PoolService::new(pool().await);
    let service = ServiceBuilder::new()
        .map_request(|text: &'static str| CallRequest::new("echo", text.to_uppercase()))
        .service(pool_service);
    assert_eq!(service.oneshot("shout").await.unwrap(), Value::from("SHOUT"));

    // And behind a service_fn that owns a clone of the pool service.
    let pool_service = PoolService::new(pool().await);
    let front = service_fn(move |text: String| {
        let pool_service = pool_service.clone();
        async move { pool_service.oneshot(CallRequest::new("echo", text)).await }
    });
    assert_eq!(front.oneshot("x".to_string()).await.unwrap(), Value::from("x"));
}
