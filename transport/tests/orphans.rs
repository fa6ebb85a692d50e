//! No orphans when a launch is abandoned: dropping `spawn` before the hello
//! kills the worker's process group.

use std::time::{Duration, Instant};

use portpool_transport::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_spawn_before_the_hello_kills_the_worker_and_its_children() {
    let dir = std::env::temp_dir().join(format!("portpool-orphans-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pids = dir.join("pids");
    let _ = std::fs::remove_file(&pids);
    // A worker that starts a grandchild, records both pids, then "imports"
    // for a minute without ever sending its hello.
    let source = format!(
        "import os, subprocess, sys, time\n\
         child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n\
         open({path:?}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n\
         time.sleep(60)\n",
        path = pids.display().to_string()
    );
    let launcher = ProcessLauncher::new(
        WorkerCommand::new(portpool_testkit::runtime_python().unwrap())
            .args(["-c", &source])
            .init_timeout(Duration::from_secs(60)),
    );
    // Boxed, so that `drop` below really drops the future.
    let mut spawn = Box::pin(launcher.spawn(WorkerId(1)));
    let written = async {
        while std::fs::read_to_string(&pids).map_or(true, |s| s.split(' ').count() < 2) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        r = &mut spawn => panic!("spawn finished without a hello: {:?}", r.map(|_| ())),
        _ = tokio::time::timeout(Duration::from_secs(10), written) => {}
    }
    drop(spawn);
    let recorded: Vec<u32> = std::fs::read_to_string(&pids)
        .unwrap()
        .split(' ')
        .map(|p| p.trim().parse().unwrap())
        .collect();
    assert_eq!(recorded.len(), 2);
    let until = Instant::now() + Duration::from_secs(3);
    while !recorded.iter().all(|&p| portpool_testkit::process_gone(p)) {
        assert!(Instant::now() < until, "{recorded:?} outlived the dropped spawn");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
