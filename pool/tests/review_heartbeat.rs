//! Review: the heartbeat rule must not kill healthy workers that use no CPU
//! while they wait: a sync handler sleeping (no GIL held), an async handler
//! that blocks the event loop with `time.sleep` (pongs are answered off the
//! loop), and a sync handler blocked reading a pipe.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use portpool_pool::{Heartbeat, Pool};
use portpool_transport::{ProcessLauncher, WorkerCommand};

fn app(name: &str, source: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portpool-review-hb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.py"));
    std::fs::write(&path, source).unwrap();
    path
}

const APP: &str = "import os, time\nimport portpool\napp = portpool.App(max_concurrency=4)\n\n\
@app.handler\ndef sync_sleep(s):\n    time.sleep(s)\n    return s\n\n\
@app.handler\nasync def loop_blocking_sleep(s):\n    time.sleep(s)\n    return s\n\n\
@app.handler\ndef pipe_read(s):\n    r, w = os.pipe()\n    import select\n    select.select([r], [], [], s)\n    return s\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_handlers_that_use_no_cpu_are_not_killed_by_the_heartbeat() {
    let python = portpool_testkit::runtime_python().unwrap();
    let hb = Heartbeat {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(200),
        max_misses: 2,
    };
    let bound = hb.interval * hb.max_misses + hb.timeout;
    let launcher = ProcessLauncher::new(
        WorkerCommand::python_with(python, app("waiting", APP)).init_timeout(Duration::from_secs(20)),
    );
    let pool = Pool::builder(launcher)
        .name("review-hb")
        .workers(1)
        .heartbeat(Some(hb))
        .breaker(None)
        .build()
        .await
        .unwrap();
    let pid = pool.status().workers[0].pid;
    // Each call waits ~3 bounds without using CPU.
    let wait = (bound * 3).as_secs_f64();
    for method in ["sync_sleep", "loop_blocking_sleep", "pipe_read"] {
        let t0 = Instant::now();
        let res = pool.call::<_, f64>(method, &wait).await;
        assert!(res.is_ok(), "{method}: {res:?} after {:?}", t0.elapsed());
        assert_eq!(
            pool.status().workers[0].pid,
            pid,
            "{method}: the worker was replaced"
        );
    }
    pool.shutdown(Duration::from_secs(5)).await;
}
