//! The mockall mocks behind the `mock` feature.
#![cfg(feature = "mock")]

use portpool_transport::*;

#[tokio::test]
async fn mock_launcher_and_worker_can_be_scripted() {
    let mut launcher = MockLauncher::new();
    launcher.expect_launch().times(1).returning(|id| {
        let mut worker = MockWorker::new();
        worker.expect_call().returning(|request| Ok(request.params));
        worker.expect_in_flight().return_const(0usize);
        let _ = id;
        Ok(Box::new(worker))
    });
    let worker = launcher.launch(WorkerId(1)).await.unwrap();
    assert_eq!(
        worker.call(CallRequest::new("echo", 3)).await.unwrap(),
        Value::from(3)
    );
    assert_eq!(worker.in_flight(), 0);
}
