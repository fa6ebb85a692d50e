//! Session affinity over real Python workers: state in `ctx.session`.
//! Needs the venv (`cargo xtask setup`) or `PORTPOOL_PYTHON`.

use std::path::PathBuf;
use std::time::Duration;

use portpool_pool::Pool;
use portpool_session::{SessionConfig, SessionError, SessionId, SessionPool};
use portpool_testkit::spawn_with;
use portpool_transport::{ProcessLauncher, WorkerCommand};

fn app() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/apps/sessions.py")
}

async fn sessions(workers: usize) -> SessionPool {
    let launcher = ProcessLauncher::new(
        WorkerCommand::python_with(portpool_testkit::runtime_python().unwrap(), app())
            .init_timeout(Duration::from_secs(20)),
    );
    let pool = Pool::builder(launcher)
        .name("python-sessions")
        .workers(workers)
        .build()
        .await
        .expect("python workers start (run `cargo xtask setup`)");
    SessionPool::new(pool, SessionConfig::default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_tasks_increment_one_session_counter_to_one_hundred_on_one_worker() {
    let sessions = sessions(4).await;
    let id = SessionId::new();
    let tasks = (0..10).map(|_| {
        spawn_with(&sessions.session(id.clone()), |session| async move {
            let mut pids = Vec::new();
            for _ in 0..10 {
                let _: u64 = session.call("count", &()).await.unwrap();
                pids.push(session.call::<_, u32>("pid", &()).await.unwrap());
            }
            pids
        })
    });
    let pids: std::collections::HashSet<u32> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();
    assert_eq!(pids.len(), 1, "every call ran in one process: {pids:?}");
    let n: u64 = sessions.call(&id, "count", &()).await.unwrap();
    assert_eq!(n, 101, "100 increments, none lost, plus this one");
    sessions.pool().shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sessions_spread_evenly_over_four_workers() {
    let sessions = sessions(4).await;
    for _ in 0..50 {
        let n: u64 = sessions.call(&SessionId::new(), "count", &()).await.unwrap();
        assert_eq!(n, 1);
    }
    let per_worker = sessions.sessions_per_worker().await.unwrap();
    let mut counts: Vec<usize> = per_worker.values().copied().collect();
    counts.sort();
    assert_eq!(counts, vec![12, 12, 13, 13], "{per_worker:?}");
    sessions.pool().shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_bound_worker_gives_session_lost_then_a_fresh_counter() {
    let sessions = sessions(2).await;
    let id = SessionId::new();
    for expected in 1..=3u64 {
        assert_eq!(
            sessions.call::<_, u64>(&id, "count", &()).await.unwrap(),
            expected
        );
    }
    let pid: u32 = sessions.call(&id, "pid", &()).await.unwrap();
    let bound = sessions.worker_of(&id).await.unwrap().unwrap();
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    // Wait until the pool has noticed the death.
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while sessions.pool().affinity().is_serving(bound) {
        assert!(
            std::time::Instant::now() < until,
            "the pool never noticed the kill"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let err = sessions.call::<_, u64>(&id, "count", &()).await.unwrap_err();
    match &err {
        SessionError::SessionLost { worker, .. } => assert_eq!(*worker, Some(bound)),
        other => panic!("expected SessionLost, got {other}"),
    }
    assert_eq!(
        sessions.call::<_, u64>(&id, "count", &()).await.unwrap(),
        1,
        "fresh counter"
    );
    let new_pid: u32 = sessions.call(&id, "pid", &()).await.unwrap();
    assert_ne!(new_pid, pid);
    sessions.pool().shutdown(Duration::from_secs(5)).await;
}
