//! The re-exported mockall mocks (feature `mock`).
#![cfg(feature = "mock")]

use portpool_testkit::mockall::predicate::eq;
use portpool_testkit::{MockLauncher, MockWorker};
use portpool_transport::{CallRequest, LaunchError, Launcher, Value, Worker, WorkerId};

#[tokio::test]
async fn mocks_are_usable_through_the_testkit() {
    let mut worker = MockWorker::new();
    worker
        .expect_call()
        .with(eq(CallRequest::new("echo", 1)))
        .times(1)
        .returning(|request| Ok(request.params));
    worker.expect_is_alive().return_const(true);
    assert_eq!(
        worker.call(CallRequest::new("echo", 1)).await.unwrap(),
        Value::from(1)
    );
    assert!(worker.is_alive());

    let mut launcher = MockLauncher::new();
    launcher.expect_launch().returning(|id| {
        Err(LaunchError::Other {
            worker: id,
            reason: "mocked".into(),
        })
    });
    let error = launcher.launch(WorkerId(1)).await.unwrap_err();
    assert_eq!(error.worker(), WorkerId(1));
}
