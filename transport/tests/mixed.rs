//! `MixedLauncher`: launches spread over several launchers by quota.

use portpool_testkit::{FakeLauncher, WorkerScript};
use portpool_transport::{CallRequest, LaunchError, Launcher, MixedLauncher, Value, WorkerId};

fn echo() -> FakeLauncher {
    FakeLauncher::new().handler("echo", Ok)
}

#[tokio::test]
async fn launches_fill_quotas_in_order_and_a_dropped_worker_frees_its_place() {
    let (a, b) = (echo(), echo());
    let mixed = MixedLauncher::new()
        .with("a", a.clone(), 1)
        .with("b", b.clone(), 2);
    let mut workers = Vec::new();
    for i in 0..3 {
        workers.push(mixed.launch(WorkerId(i)).await.unwrap());
    }
    assert_eq!((a.launches(), b.launches()), (1, 2));
    assert_eq!(
        mixed.live(),
        vec![("a".to_string(), 1, 1), ("b".to_string(), 2, 2)]
    );
    for w in &workers {
        assert_eq!(w.call(CallRequest::new("echo", 5)).await.unwrap(), Value::from(5));
    }
    // Every quota full (a replacement started before its predecessor is
    // gone): the lowest share in use takes it, here the first.
    let extra = mixed.launch(WorkerId(9)).await.unwrap();
    assert_eq!(a.launches(), 2);
    drop(extra);
    // A worker of b dropped: b has room again.
    drop(workers.pop());
    assert_eq!(mixed.live()[1], ("b".to_string(), 1, 2));
    mixed.launch(WorkerId(10)).await.unwrap();
    assert_eq!(b.launches(), 3);
}

#[tokio::test]
async fn a_launcher_that_fails_hands_over_to_the_next_and_the_last_error_is_returned() {
    let down = FakeLauncher::new().script(|_| WorkerScript::new().fail_launch("down"));
    let up = echo();
    let mixed = MixedLauncher::new()
        .with("down", down.clone(), 5)
        .with("up", up.clone(), 5);
    let worker = mixed.launch(WorkerId(1)).await.unwrap();
    assert_eq!(
        worker.call(CallRequest::new("echo", 1)).await.unwrap(),
        Value::from(1)
    );
    assert_eq!((down.launches(), up.launches()), (1, 1));
    assert_eq!(mixed.live()[0].1, 0, "a failed launch does not count");

    let only_down = MixedLauncher::new().with("down", down, 1);
    let error = only_down.launch(WorkerId(2)).await.unwrap_err();
    assert!(matches!(error, LaunchError::Other { .. }), "{error}");
    let empty = MixedLauncher::new().launch(WorkerId(3)).await.unwrap_err();
    assert!(empty.to_string().contains("no launchers"), "{empty}");
}
