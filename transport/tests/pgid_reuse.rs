//! Review finding R1: the host must never signal a worker's process group
//! after the worker (the group leader) has been reaped. Once reaped, its pid
//! (= the group id) is free, and the kernel may give it to an unrelated
//! process that leads its own group: a later `killpg` would kill a
//! bystander.
//!
//! The test forces the pid reuse with `/proc/sys/kernel/ns_last_pid` (needs
//! root in the pid namespace; skipped otherwise, and reported inconclusive if
//! another process takes the pid first).

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use portpool_transport::*;

/// A worker that says hello, reads a request, forks a descendant that
/// leaves the group (setsid) and keeps the protocol pipe, then exits.
/// Its stdout never closes, so the host fails it one second after the exit
/// (`StdoutHeldOpen`), long after the wait thread reaped it.
/// The hello is packed by hand: no msgpack module needed.
const SOURCE: &str = "import os, sys, time\n\
def s(t): return bytes([0xa0 | len(t)]) + t.encode()\n\
h = b'\\x85' + s('type') + s('hello') + s('protocol_major') + b'\\x01' + s('protocol_minor') + b'\\x00' + s('pid') + b'\\xce' + os.getpid().to_bytes(4, 'big') + s('max_concurrency') + b'\\x01'\n\
sys.stdout.buffer.write(len(h).to_bytes(4, 'big') + h); sys.stdout.flush()\n\
sys.stdin.buffer.read(4)\n\
r, w = os.pipe()\n\
pid = os.fork()\n\
if pid == 0:\n    os.setsid()\n    os.write(w, b'x')\n    time.sleep(20)\n    os._exit(0)\n\
os.read(r, 1)\n\
sys.stderr.write(f'descendant {pid}\\n'); sys.stderr.flush()\n\
os._exit(3)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reaped_workers_group_id_is_never_signalled_once_reused() {
    if std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/sys/kernel/ns_last_pid")
        .is_err()
    {
        eprintln!("skipped: /proc/sys/kernel/ns_last_pid is not writable");
        return;
    }
    let launcher = ProcessLauncher::new(
        WorkerCommand::new(portpool_testkit::runtime_python().unwrap())
            .args(["-c", SOURCE])
            .init_timeout(Duration::from_secs(10)),
    );
    let worker = std::sync::Arc::new(launcher.spawn(WorkerId(1)).await.unwrap());
    let pid = worker.info().pid.unwrap();
    let call = tokio::spawn({
        let worker = worker.clone();
        async move { worker.call(CallRequest::new("anything", 1)).await }
    });
    // The worker exits and the host's wait thread reaps it: its pid is free.
    let until = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < until, "worker {pid} was not reaped");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // An unrelated process, leading its own group, gets the same pid.
    std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
    let mut bystander = std::process::Command::new("sleep")
        .arg("20")
        .process_group(0)
        .spawn()
        .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call ends")
        .unwrap();
    // Clean up the test's descendant.
    if let Some(d) = worker.stderr_tail().lines().find_map(|l| {
        l.strip_prefix("descendant ")
            .and_then(|p| p.trim().parse::<i32>().ok())
    }) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(d), nix::sys::signal::Signal::SIGKILL);
    }
    assert!(
        matches!(result, Err(CallError::WorkerCrashed { .. })),
        "{result:?}"
    );
    drop(worker);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let still_running = bystander.try_wait().unwrap().is_none();
    let _ = bystander.kill();
    let _ = bystander.wait();
    if bystander.id() != pid {
        eprintln!(
            "inconclusive: the bystander got pid {} instead of {pid}",
            bystander.id()
        );
        return;
    }
    assert!(
        still_running,
        "the host killed an unrelated process group that reused the reaped worker's pid {pid}"
    );
}

/// Review finding R1b: a dead worker's CPU time and RSS are read from
/// `/proc/<pid>`; once the worker is reaped that may be another process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reaped_workers_cpu_time_and_rss_are_not_read_from_a_reused_pid() {
    if std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/sys/kernel/ns_last_pid")
        .is_err()
    {
        eprintln!("skipped: /proc/sys/kernel/ns_last_pid is not writable");
        return;
    }
    // Says hello and exits.
    let hello_end = SOURCE.find("sys.stdin").unwrap();
    let source = format!("{}os._exit(0)\n", &SOURCE[..hello_end]);
    let launcher = ProcessLauncher::new(
        WorkerCommand::new(portpool_testkit::runtime_python().unwrap())
            .args(["-c", &source])
            .init_timeout(Duration::from_secs(10)),
    );
    let worker = launcher.spawn(WorkerId(2)).await.unwrap();
    let pid = worker.info().pid.unwrap();
    tokio::time::timeout(Duration::from_secs(10), worker.closed())
        .await
        .expect("the worker ends");
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
    let mut bystander = std::process::Command::new("sleep").arg("20").spawn().unwrap();
    let (cpu, rss) = (worker.cpu_time(), worker.rss_bytes());
    let _ = bystander.kill();
    let _ = bystander.wait();
    if bystander.id() != pid {
        eprintln!(
            "inconclusive: the bystander got pid {} instead of {pid}",
            bystander.id()
        );
        return;
    }
    assert_eq!(cpu, None, "CPU time of pid {pid}, now another process");
    assert_eq!(rss, None, "RSS of pid {pid}, now another process");
}
