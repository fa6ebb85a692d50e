//! `WorkerCommand::fork_server(true)`: workers forked from one zygote that
//! imported the app once, with every guarantee of exec'd workers (real
//! processes, the real Python runtime; every wait bounded).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use portpool_transport::*;

/// A fresh directory for one test's apps and files.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portpool-fork-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An app with a few handlers; `prelude` runs at import.
fn write_app(dir: &Path, prelude: &str) -> PathBuf {
    let path = dir.join("app.py");
    let source = format!(
        "import os, resource, subprocess, sys, time\n\
         import portpool\n\
         {prelude}\n\
         app = portpool.App(max_concurrency=100)\n\
         @app.handler\n\
         def pid(_):\n    return os.getpid()\n\
         @app.handler\n\
         def env(name):\n    return os.environ.get(name)\n\
         @app.handler\n\
         def exit(code):\n    os._exit(code)\n\
         @app.handler\n\
         def block(seconds):\n    time.sleep(seconds)\n    return seconds\n\
         @app.handler\n\
         def nofile(_):\n    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]\n\
         @app.handler\n\
         def spawn_grandchild(_):\n    return subprocess.Popen(['sleep', '60']).pid\n"
    );
    std::fs::write(&path, source).unwrap();
    path
}

fn forking(app: &Path) -> WorkerCommand {
    WorkerCommand::python_with(portpool_testkit::runtime_python().unwrap(), app)
        .init_timeout(Duration::from_secs(20))
        .fork_server(true)
}

/// Field `n` (1-based, as in proc(5)) of `/proc/<pid>/stat`.
fn stat_field(pid: u32, n: usize) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(n - 3)?.parse().ok()
}

async fn gone_within(pid: u32, limit: Duration) -> bool {
    portpool_testkit::wait_process_gone(pid, limit).await
}

fn as_pid(value: Value) -> u32 {
    u32::try_from(value.as_u64().expect("a pid")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forked_workers_serve_calls_in_groups_of_their_own() {
    let dir = scratch("serve");
    let launcher = ProcessLauncher::new(forking(&write_app(&dir, "")));
    let workers: Vec<ProcessWorker> = futures::future::join_all((0..3).map(|i| launcher.spawn(WorkerId(i))))
        .await
        .into_iter()
        .map(|w| w.expect("a forked worker starts"))
        .collect();
    let zygote = launcher.fork_server_pid().expect("a fork server runs");
    let mut pids = std::collections::HashSet::new();
    for worker in &workers {
        let pid = worker.info().pid.unwrap();
        assert_eq!(worker.info().hello.pid, pid);
        let answered = worker.call(CallRequest::new("pid", Value::Nil)).await.unwrap();
        assert_eq!(as_pid(answered), pid);
        assert_ne!(pid, zygote);
        assert_eq!(
            stat_field(pid, 4),
            Some(u64::from(zygote)),
            "the zygote is the parent"
        );
        assert_eq!(stat_field(pid, 5), Some(u64::from(pid)), "own process group");
        assert!(worker.rss_bytes().is_some_and(|b| b > 0));
        assert!(worker.cpu_time().is_some());
        pids.insert(pid);
    }
    assert_eq!(pids.len(), 3);
    for worker in &workers {
        let exit = worker.shutdown(Duration::from_secs(5)).await;
        assert_eq!(exit.code, Some(0), "{exit}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_import_the_app_once() {
    let dir = scratch("once");
    let log = dir.join("imports");
    let app = write_app(
        &dir,
        &format!(
            "open({:?}, 'a').write(f'{{os.getpid()}}\\n')",
            log.display().to_string()
        ),
    );
    let launcher = ProcessLauncher::new(forking(&app));
    let workers: Vec<ProcessWorker> = futures::future::join_all((0..4).map(|i| launcher.spawn(WorkerId(i))))
        .await
        .into_iter()
        .map(|w| w.expect("a forked worker starts"))
        .collect();
    for worker in &workers {
        worker.call(CallRequest::new("pid", Value::Nil)).await.unwrap();
    }
    let imports = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        imports.lines().collect::<Vec<_>>(),
        vec![launcher.fork_server_pid().unwrap().to_string()],
        "imported once, by the fork server"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_and_signals_are_relayed() {
    let dir = scratch("exits");
    let launcher = ProcessLauncher::new(forking(&write_app(&dir, "")));
    let worker = launcher.spawn(WorkerId(3)).await.unwrap();
    let pid = worker.info().pid.unwrap();
    let zygote = launcher.fork_server_pid().unwrap();
    match worker.call(CallRequest::new("exit", 3)).await {
        Err(CallError::WorkerCrashed {
            worker: id,
            pid: p,
            exit,
            ..
        }) => {
            assert_eq!((id, p), (WorkerId(3), Some(pid)));
            assert_eq!(exit.code, Some(3), "{exit}");
        }
        other => panic!("expected WorkerCrashed, got {other:?}"),
    }
    let exit = tokio::time::timeout(Duration::from_secs(5), worker.closed())
        .await
        .unwrap();
    assert_eq!(
        exit,
        WorkerExit {
            code: Some(3),
            signal: None
        }
    );
    assert!(gone_within(pid, Duration::from_secs(3)).await, "reaped");

    // SIGKILL of the forked worker alone.
    let worker = std::sync::Arc::new(launcher.spawn(WorkerId(4)).await.unwrap());
    let pid = worker.info().pid.unwrap();
    let call = tokio::spawn({
        let worker = worker.clone();
        async move { worker.call(CallRequest::new("block", 30)).await }
    });
    while worker.in_flight() < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    match tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .unwrap()
        .unwrap()
    {
        Err(CallError::WorkerCrashed { exit, cause, .. }) => {
            assert_eq!(cause, CrashCause::Exited);
            assert_eq!(exit.signal, Some(9), "{exit}");
        }
        other => panic!("expected WorkerCrashed, got {other:?}"),
    }
    let exit = tokio::time::timeout(Duration::from_secs(5), worker.closed())
        .await
        .unwrap();
    assert!(exit.to_string().contains("SIGKILL"), "{exit}");
    let after = worker
        .call(CallRequest::new("pid", Value::Nil))
        .await
        .unwrap_err();
    assert!(matches!(after, CallError::WorkerCrashed { .. }), "{after}");
    assert_eq!(
        launcher.fork_server_pid(),
        Some(zygote),
        "the fork server lives on"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_and_drop_kill_the_forked_workers_group() {
    let dir = scratch("groups");
    let launcher = ProcessLauncher::new(forking(&write_app(&dir, "")));
    let worker = launcher.spawn(WorkerId(1)).await.unwrap();
    let grandchild = as_pid(
        worker
            .call(CallRequest::new("spawn_grandchild", Value::Nil))
            .await
            .unwrap(),
    );
    assert!(!portpool_testkit::process_gone(grandchild));
    worker.shutdown(Duration::from_secs(5)).await;
    assert!(
        gone_within(grandchild, Duration::from_secs(3)).await,
        "grandchild {grandchild} survived shutdown"
    );

    let worker = launcher.spawn(WorkerId(2)).await.unwrap();
    let pid = worker.info().pid.unwrap();
    let grandchild = as_pid(
        worker
            .call(CallRequest::new("spawn_grandchild", Value::Nil))
            .await
            .unwrap(),
    );
    drop(worker);
    assert!(
        gone_within(pid, Duration::from_secs(3)).await,
        "worker {pid} survived its handle"
    );
    assert!(
        gone_within(grandchild, Duration::from_secs(3)).await,
        "grandchild {grandchild} survived the drop"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_fork_server_ends_its_workers_and_the_next_launch_starts_a_new_one() {
    let dir = scratch("zygote-killed");
    let launcher = ProcessLauncher::new(forking(&write_app(&dir, "")));
    let a = std::sync::Arc::new(launcher.spawn(WorkerId(1)).await.unwrap());
    let b = launcher.spawn(WorkerId(2)).await.unwrap();
    let zygote = launcher.fork_server_pid().unwrap();
    let call = tokio::spawn({
        let a = a.clone();
        async move { a.call(CallRequest::new("block", 30)).await }
    });
    while a.in_flight() < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(zygote as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let failed = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("no hang")
        .unwrap();
    assert!(
        matches!(failed, Err(CallError::WorkerCrashed { .. })),
        "{failed:?}"
    );
    for worker in [&*a, &b] {
        let pid = worker.info().pid.unwrap();
        tokio::time::timeout(Duration::from_secs(5), worker.closed())
            .await
            .expect("exit published");
        assert!(
            gone_within(pid, Duration::from_secs(3)).await,
            "worker {pid} outlived its fork server"
        );
    }
    let c = launcher.spawn(WorkerId(3)).await.expect("a new fork server");
    let new_zygote = launcher.fork_server_pid().unwrap();
    assert_ne!(new_zygote, zygote);
    assert_eq!(stat_field(c.info().pid.unwrap(), 4), Some(u64::from(new_zygote)));
    assert!(c.call(CallRequest::new("pid", Value::Nil)).await.is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_starts_a_thread_at_import_is_execd_instead() {
    let dir = scratch("threads");
    let log = dir.join("imports");
    let app = write_app(
        &dir,
        &format!(
            "import threading\n\
             threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n\
             open({:?}, 'a').write(f'{{os.getpid()}}\\n')",
            log.display().to_string()
        ),
    );
    let launcher = ProcessLauncher::new(forking(&app));
    let workers: Vec<ProcessWorker> = futures::future::join_all((0..2).map(|i| launcher.spawn(WorkerId(i))))
        .await
        .into_iter()
        .map(|w| w.expect("the worker starts, exec'd"))
        .collect();
    for worker in &workers {
        let pid = as_pid(worker.call(CallRequest::new("pid", Value::Nil)).await.unwrap());
        assert_eq!(Some(pid), worker.info().pid);
        assert_eq!(
            stat_field(pid, 4),
            Some(u64::from(std::process::id())),
            "exec'd by the host"
        );
    }
    assert_eq!(launcher.fork_server_pid(), None);
    // The zygote imported it once (and refused), then each worker did.
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_timeout_in_fork_mode_has_the_stderr_tail() {
    let dir = scratch("init-timeout");
    let app = write_app(
        &dir,
        "print('slow import begins', file=sys.stderr, flush=True)\ntime.sleep(60)",
    );
    let launcher = ProcessLauncher::new(forking(&app).init_timeout(Duration::from_millis(1500)));
    let started = Instant::now();
    match launcher.spawn(WorkerId(9)).await {
        Err(LaunchError::InitTimeout {
            worker,
            pid,
            stderr_tail,
            after,
        }) => {
            assert_eq!(worker, WorkerId(9));
            assert_eq!(after, Duration::from_millis(1500));
            assert!(stderr_tail.contains("slow import begins"), "{stderr_tail}");
            assert!(stderr_tail.contains("fork server"), "{stderr_tail}");
            let pid = pid.expect("the fork server's pid");
            assert!(
                gone_within(pid, Duration::from_secs(3)).await,
                "the fork server was killed"
            );
        }
        other => panic!("expected InitTimeout, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_fails_to_import_is_a_launch_error_with_its_traceback() {
    let dir = scratch("import-error");
    let app = write_app(&dir, "raise RuntimeError('no import for you')");
    let launcher = ProcessLauncher::new(forking(&app));
    let attempts = futures::future::join_all((0..3).map(|i| launcher.spawn(WorkerId(i)))).await;
    for attempt in attempts {
        match attempt {
            Err(LaunchError::ExitedDuringInit {
                exit, stderr_tail, ..
            }) => {
                assert_eq!(exit.code, Some(1), "{exit}");
                assert!(stderr_tail.contains("no import for you"), "{stderr_tail}");
            }
            other => panic!("expected ExitedDuringInit, got {other:?}"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_and_limits_of_the_command_reach_forked_workers() {
    let dir = scratch("env");
    let launcher = ProcessLauncher::new(
        forking(&write_app(&dir, ""))
            .env("PORTPOOL_TEST_FLAVOUR", "forked")
            .limit_open_files(100),
    );
    let worker = launcher.spawn(WorkerId(1)).await.unwrap();
    let env = |name: &'static str| worker.call(CallRequest::new("env", name));
    assert_eq!(env("PORTPOOL_TEST_FLAVOUR").await.unwrap(), Value::from("forked"));
    assert_eq!(
        env("PORTPOOL_MAX_FRAME").await.unwrap(),
        Value::from(portpool_protocol::DEFAULT_MAX_FRAME.to_string())
    );
    assert_eq!(env("PORTPOOL_FORK_SERVER").await.unwrap(), Value::Nil);
    assert_eq!(
        worker.call(CallRequest::new("nofile", Value::Nil)).await.unwrap(),
        Value::from(100)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fork_server_outlives_its_launcher_until_its_workers_are_gone() {
    let dir = scratch("launcher-dropped");
    let launcher = ProcessLauncher::new(forking(&write_app(&dir, "")));
    let worker = launcher.spawn(WorkerId(1)).await.unwrap();
    let zygote = launcher.fork_server_pid().unwrap();
    drop(launcher);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !portpool_testkit::process_gone(zygote),
        "still the parent of a running worker"
    );
    assert!(worker.call(CallRequest::new("pid", Value::Nil)).await.is_ok());
    let exit = worker.shutdown(Duration::from_secs(5)).await;
    assert_eq!(exit.code, Some(0), "{exit}");
    assert!(
        gone_within(zygote, Duration::from_secs(3)).await,
        "fork server {zygote} outlived its workers and launcher"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Run as a child process by `no_orphans_when_a_fork_mode_host_is_killed`:
/// two forked workers, each with a grandchild; prints every pid (and the
/// fork server's), then waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_orphan_host_helper() {
    let Some(dir) = std::env::var_os("PORTPOOL_FORK_ORPHAN_HELPER") else {
        return;
    };
    let launcher = ProcessLauncher::new(forking(&write_app(Path::new(&dir), "")));
    let mut pids = Vec::new();
    let mut workers = Vec::new();
    for i in 0..2 {
        let worker = launcher.spawn(WorkerId(i)).await.unwrap();
        pids.push(worker.info().pid.unwrap());
        pids.push(as_pid(
            worker
                .call(CallRequest::new("spawn_grandchild", Value::Nil))
                .await
                .unwrap(),
        ));
        workers.push(worker);
    }
    pids.push(launcher.fork_server_pid().unwrap());
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    println!("PIDS {}", pids.join(" "));
    tokio::time::sleep(Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_orphans_when_a_fork_mode_host_is_killed() {
    let dir = scratch("host-killed");
    let (mut host, pids) = portpool_testkit::spawn_host_helper(
        "fork_orphan_host_helper",
        ("PORTPOOL_FORK_ORPHAN_HELPER", dir.as_os_str()),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(
        pids.len(),
        5,
        "2 workers with a grandchild each, and the fork server: {pids:?}"
    );
    assert!(
        pids.iter().all(|&p| !portpool_testkit::process_gone(p)),
        "{pids:?}"
    );
    let left = portpool_testkit::kill_host_helper(&mut host, &pids, Duration::from_secs(3)).await;
    assert!(
        left.is_empty(),
        "{left:?} of {pids:?} outlived their SIGKILLed host by 3 s"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_launch_while_the_fork_server_imports_kills_it() {
    let dir = scratch("drop-launch");
    let pids = dir.join("pids");
    let app = write_app(
        &dir,
        &format!(
            "child = subprocess.Popen(['sleep', '60'])\n\
             open({:?}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n\
             time.sleep(60)",
            pids.display().to_string()
        ),
    );
    let launcher = ProcessLauncher::new(forking(&app).init_timeout(Duration::from_secs(60)));
    let mut spawn = Box::pin(launcher.spawn(WorkerId(1)));
    let written = async {
        while std::fs::read_to_string(&pids).map_or(true, |s| s.split(' ').count() < 2) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        r = &mut spawn => panic!("spawn finished: {:?}", r.map(|_| ())),
        w = tokio::time::timeout(Duration::from_secs(10), written) => w.expect("the import began"),
    }
    drop(spawn);
    let recorded: Vec<u32> = std::fs::read_to_string(&pids)
        .unwrap()
        .split(' ')
        .map(|p| p.trim().parse().unwrap())
        .collect();
    for pid in recorded {
        assert!(
            gone_within(pid, Duration::from_secs(3)).await,
            "{pid} outlived the dropped launch"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The processes whose parent is `parent`, zombies included.
fn children_of(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if stat_field(pid, 4) == Some(u64::from(parent)) {
            found.push(pid);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exit_is_reaped_by_the_fork_server_once_published() {
    let dir = scratch("reaped");
    let launcher = ProcessLauncher::new(forking(&write_app(&dir, "")));
    let workers: Vec<ProcessWorker> = futures::future::join_all((0..4).map(|i| launcher.spawn(WorkerId(i))))
        .await
        .into_iter()
        .map(|w| w.expect("a forked worker starts"))
        .collect();
    let zygote = launcher.fork_server_pid().unwrap();
    assert_eq!(children_of(zygote).len(), 4);
    for (i, worker) in workers.iter().enumerate() {
        let pid = worker.info().pid.unwrap();
        if i % 2 == 0 {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            let exit = tokio::time::timeout(Duration::from_secs(5), worker.closed())
                .await
                .unwrap();
            assert_eq!(exit.signal, Some(9), "{exit}");
        } else {
            let exit = worker.shutdown(Duration::from_secs(5)).await;
            assert_eq!(exit.code, Some(0), "{exit}");
        }
    }
    let until = Instant::now() + Duration::from_secs(3);
    while !children_of(zygote).is_empty() {
        assert!(Instant::now() < until, "left unreaped: {:?}", children_of(zygote));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !portpool_testkit::process_gone(zygote),
        "the fork server serves on"
    );
    let again = launcher.spawn(WorkerId(9)).await.unwrap();
    assert_eq!(stat_field(again.info().pid.unwrap(), 4), Some(u64::from(zygote)));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The targets of `/proc/<pid>/fd/*` (fd number, link).
fn fds_of(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let fd = entry.file_name().to_string_lossy().parse().unwrap();
        let link = std::fs::read_link(entry.path())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        out.push((fd, link));
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_worker_holds_no_fd_of_the_zygote_or_other_workers() {
    let dir = scratch("fds");
    let launcher = ProcessLauncher::new(forking(&write_app(&dir, "")));
    let a = launcher.spawn(WorkerId(1)).await.expect("a forked worker starts");
    let b = launcher.spawn(WorkerId(2)).await.expect("a forked worker starts");
    let zygote = launcher.fork_server_pid().expect("a fork server runs");
    // What this process holds without CLOEXEC (the harness's) reaches exec'd workers too.
    let ours = fds_of(std::process::id());
    let zygote_fds: Vec<String> = fds_of(zygote).into_iter().map(|(_, l)| l).collect();
    let (pa, pb) = (a.info().pid.unwrap(), b.info().pid.unwrap());
    let fa = fds_of(pa);
    let fb = fds_of(pb);
    for (pid, fds, other) in [(pa, &fa, &fb), (pb, &fb, &fa)] {
        for (fd, link) in fds.iter().filter(|f| !ours.contains(f)) {
            assert!(
                !link.starts_with("socket:"),
                "worker {pid} holds a socket at fd {fd}: {fds:?}"
            );
            assert!(
                *fd <= 2 || !zygote_fds.contains(link),
                "worker {pid} holds the zygote's {link} at fd {fd}: {fds:?}"
            );
            assert!(
                !link.starts_with("pipe:") || !other.iter().any(|(_, l)| l == link),
                "worker {pid} shares {link} with the other worker: {fds:?} / {other:?}"
            );
        }
    }
    // Nor does the zygote keep any end of a worker's pipes (a kept write end
    // of a worker's stdin would hide its end of file).
    for (pid, fds) in [(pa, &fa), (pb, &fb)] {
        for (fd, link) in fds
            .iter()
            .filter(|f| !ours.contains(f) && f.1.starts_with("pipe:"))
        {
            assert!(
                !zygote_fds.contains(link),
                "the zygote holds {link}, fd {fd} of worker {pid}"
            );
        }
    }
    // Dropping one worker ends it promptly while the other still runs.
    drop(a);
    assert!(
        gone_within(pa, Duration::from_secs(5)).await,
        "the dropped forked worker exits"
    );
    let answered = b.call(CallRequest::new("pid", Value::Nil)).await.unwrap();
    assert_eq!(as_pid(answered), pb);
    b.shutdown(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launches_right_after_the_fork_server_is_killed_fail_typed_or_fork_from_a_new_one() {
    let dir = scratch("zygote-killed-launch");
    let launcher = ProcessLauncher::new(forking(&write_app(&dir, "")));
    let a = launcher.spawn(WorkerId(1)).await.unwrap();
    let zygote = launcher.fork_server_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(zygote as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let launches = futures::future::join_all((2..6).map(|i| launcher.spawn(WorkerId(i))));
    let results = tokio::time::timeout(Duration::from_secs(30), launches)
        .await
        .expect("no launch hangs");
    let mut ok = 0;
    for (i, result) in results.iter().enumerate() {
        match result {
            Ok(worker) => {
                ok += 1;
                let pid = worker.info().pid.unwrap();
                assert_ne!(stat_field(pid, 4), Some(u64::from(zygote)));
                assert!(worker.call(CallRequest::new("pid", Value::Nil)).await.is_ok());
            }
            Err(e) => eprintln!("launch {i}: {e}"),
        }
    }
    assert!(
        ok >= 3,
        "launches after the kill start a new fork server: {results:?}"
    );
    drop(a);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_started_in_the_fork_server_after_a_fork_makes_the_next_workers_execd() {
    let dir = scratch("late-thread");
    let app = write_app(
        &dir,
        "import threading\n\
         def _restart():\n    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n\
         os.register_at_fork(after_in_parent=_restart)\n",
    );
    let launcher = ProcessLauncher::new(forking(&app));
    let a = launcher
        .spawn(WorkerId(1))
        .await
        .expect("the first worker is forked");
    let zygote = launcher.fork_server_pid().expect("a fork server runs");
    assert_eq!(stat_field(a.info().pid.unwrap(), 4), Some(u64::from(zygote)));
    // Now a thread runs in the zygote: no fork may happen any more.
    for i in 2..4 {
        let w = launcher
            .spawn(WorkerId(i))
            .await
            .expect("later workers start (exec'd)");
        let pid = w.info().pid.unwrap();
        assert_eq!(
            stat_field(pid, 4),
            Some(u64::from(std::process::id())),
            "worker {i} is exec'd by the host, not forked from a zygote with a thread"
        );
        assert_eq!(
            as_pid(w.call(CallRequest::new("pid", Value::Nil)).await.unwrap()),
            pid
        );
        w.shutdown(Duration::from_secs(5)).await;
    }
    assert!(a.call(CallRequest::new("pid", Value::Nil)).await.is_ok());
    a.shutdown(Duration::from_secs(5)).await;
    assert!(
        gone_within(zygote, Duration::from_secs(5)).await,
        "the refusing zygote exits once its workers are gone"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_launches_to_a_stopped_fork_server_times_out_without_blocking_the_runtime() {
    let dir = scratch("stopped");
    let launcher = ProcessLauncher::new(forking(&write_app(&dir, "")).init_timeout(Duration::from_secs(20)));
    let a = launcher.spawn(WorkerId(1)).await.unwrap();
    let zygote = launcher.fork_server_pid().unwrap();
    let zpid = nix::unistd::Pid::from_raw(zygote as i32);
    nix::sys::signal::kill(zpid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    // More requests than the socket holds: a blocking send would park the
    // runtime's threads past every deadline.
    let launches: Vec<_> = (2..400)
        .map(|i| {
            let launcher = launcher.clone();
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(2), launcher.spawn(WorkerId(i))).await
            })
        })
        .collect();
    let started = Instant::now();
    let ticker = tokio::spawn(async { tokio::time::sleep(Duration::from_millis(100)).await });
    let ticked = tokio::time::timeout(Duration::from_secs(10), ticker).await;
    let all = tokio::time::timeout(Duration::from_secs(15), futures::future::join_all(launches)).await;
    nix::sys::signal::kill(zpid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = nix::sys::signal::kill(zpid, nix::sys::signal::Signal::SIGCONT);
    assert!(ticked.is_ok(), "the runtime stayed responsive");
    let all = all.expect("every launch ended");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        all.iter().all(|r| r.as_ref().is_ok_and(|r| r.is_err())),
        "none forked by a stopped zygote"
    );
    drop(a);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_launcher_of_a_stopped_fork_server_with_a_full_socket_does_not_block() {
    let dir = scratch("stopped-drop");
    let launcher = ProcessLauncher::new(forking(&write_app(&dir, "")));
    let a = launcher.spawn(WorkerId(1)).await.unwrap();
    let zygote = launcher.fork_server_pid().unwrap();
    let zpid = nix::unistd::Pid::from_raw(zygote as i32);
    nix::sys::signal::kill(zpid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let launches = (2..400).map(|i| {
        let launcher = launcher.clone();
        async move { tokio::time::timeout(Duration::from_millis(500), launcher.spawn(WorkerId(i))).await }
    });
    let _ = tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(launches)).await;
    // The socket is full now; the last clone goes.
    let dropped = tokio::task::spawn_blocking(move || drop(launcher));
    let ended = tokio::time::timeout(Duration::from_secs(3), dropped).await;
    // (Killed, not resumed: it would fork every queued request first.)
    nix::sys::signal::kill(zpid, nix::sys::signal::Signal::SIGKILL).unwrap();
    assert!(
        ended.is_ok(),
        "dropping the launcher blocked on the stopped fork server"
    );
    tokio::time::timeout(Duration::from_secs(5), a.closed())
        .await
        .expect("the worker's exit is published");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_app_left_in_the_original_stdout_buffer_at_import_never_reaches_a_forked_workers_frames() {
    let dir = scratch("stdout-buffer");
    // Written to the interpreter's original stdout object, not flushed: in an
    // exec'd worker it ends up on stderr; it must not land in the frames.
    let app = write_app(&dir, "sys.__stdout__.write('noise at import, no newline')\n");
    let command = forking(&app).env("PYTHONUNBUFFERED", "");
    let execd = ProcessLauncher::new(command.clone().fork_server(false));
    let w = execd
        .spawn(WorkerId(0))
        .await
        .expect("exec'd: the noise goes to stderr");
    w.shutdown(Duration::from_secs(5)).await;
    let launcher = ProcessLauncher::new(command);
    let w = launcher
        .spawn(WorkerId(1))
        .await
        .expect("the forked worker says hello");
    let pid = w.info().pid.unwrap();
    assert_eq!(
        as_pid(w.call(CallRequest::new("pid", Value::Nil)).await.unwrap()),
        pid
    );
    w.shutdown(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_server_with_env_clear_cwd_spin_pipe_buffer_and_limits() {
    let dir = scratch("combo");
    let app = dir.join("combo_app.py");
    std::fs::write(
        &app,
        "import os, resource, portpool\n\
         app = portpool.App()\n\
         @app.handler\n\
         def state(_):\n    return [os.getcwd(), os.environ.get('PORTPOOL_SPIN_US'), os.environ.get('HOME'),\n\
         \x20           os.environ.get('PORTPOOL_TEST_FLAVOUR'), resource.getrlimit(resource.RLIMIT_CPU)[0],\n\
         \x20           resource.getrlimit(resource.RLIMIT_NOFILE)[0]]\n",
    )
    .unwrap();
    let base = WorkerCommand::python_with(portpool_testkit::runtime_python().unwrap(), "combo_app.py")
        .init_timeout(Duration::from_secs(20))
        .env_clear()
        .env("PORTPOOL_TEST_FLAVOUR", "combo")
        .current_dir(&dir)
        .spin(Duration::from_micros(200))
        .pipe_buffer(1 << 20)
        .limit_cpu_time(Duration::from_secs(30))
        .limit_open_files(200);
    let mut seen = Vec::new();
    for fork in [false, true] {
        let launcher = ProcessLauncher::new(base.clone().fork_server(fork));
        let w = launcher.spawn(WorkerId(1)).await.expect("starts");
        if fork {
            assert!(launcher.fork_server_pid().is_some());
        }
        let state = w.call(CallRequest::new("state", Value::Nil)).await.unwrap();
        let big = Value::Binary(vec![7u8; 3 << 20]);
        assert!(w.call(CallRequest::new("state", big)).await.is_ok());
        w.shutdown(Duration::from_secs(5)).await;
        seen.push(state);
    }
    assert_eq!(seen[0], seen[1], "exec'd and forked workers see the same");
    let state = seen[0].as_array().unwrap();
    assert_eq!(state[1], Value::from("200"));
    assert_eq!(state[2], Value::Nil, "env cleared");
    assert_eq!(state[3], Value::from("combo"));
    assert_eq!((state[4].as_u64(), state[5].as_u64()), (Some(30), Some(200)));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_sigint_end_a_forked_worker_as_an_execd_one() {
    use nix::sys::signal::Signal;
    let dir = scratch("signals");
    let base = forking(&write_app(&dir, ""));
    let mut seen = Vec::new();
    for fork in [false, true] {
        let launcher = ProcessLauncher::new(base.clone().fork_server(fork));
        let mut exits = Vec::new();
        for (i, signal) in [Signal::SIGTERM, Signal::SIGINT].into_iter().enumerate() {
            for busy in [false, true] {
                let w = std::sync::Arc::new(launcher.spawn(WorkerId(i as u64)).await.unwrap());
                let call = busy.then(|| {
                    let w = w.clone();
                    tokio::spawn(async move { w.call(CallRequest::new("block", 30)).await })
                });
                if busy {
                    while w.in_flight() < 1 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let pid = nix::unistd::Pid::from_raw(w.info().pid.unwrap() as i32);
                nix::sys::signal::kill(pid, signal).unwrap();
                let exit = tokio::time::timeout(Duration::from_secs(10), w.closed())
                    .await
                    .expect("the worker ends");
                if let Some(call) = call {
                    let r = tokio::time::timeout(Duration::from_secs(10), call)
                        .await
                        .expect("no hang")
                        .unwrap();
                    assert!(r.is_err());
                }
                exits.push(format!("{signal:?} busy={busy}: {exit}"));
            }
        }
        seen.push(exits);
    }
    assert_eq!(seen[0], seen[1], "exec'd vs forked");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launches_dropped_at_random_points_leave_nothing_running() {
    let dir = scratch("dropped-random");
    let launcher = ProcessLauncher::new(forking(&write_app(&dir, "")));
    // The zygote first (its import), then launches cut short at every stage.
    let first = launcher.spawn(WorkerId(0)).await.unwrap();
    let zygote = launcher.fork_server_pid().unwrap();
    let mut kept = Vec::new();
    for round in 0..3u64 {
        let launches = (1..13u64).map(|i| {
            let launcher = launcher.clone();
            let cut = Duration::from_micros((i * 997 + round * 331) % 12_000);
            async move { tokio::time::timeout(cut, launcher.spawn(WorkerId(round * 100 + i))).await }
        });
        for worker in futures::future::join_all(launches).await.into_iter().flatten() {
            kept.push(worker.expect("a launch that finished succeeded"));
        }
    }
    let kept_pids: Vec<u32> = kept.iter().map(|w| w.info().pid.unwrap()).collect();
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let mut extra: Vec<u32> = children_of(zygote)
            .into_iter()
            .filter(|p| *p != first.info().pid.unwrap() && !kept_pids.contains(p))
            .collect();
        extra.sort();
        if extra.is_empty() {
            break;
        }
        assert!(
            Instant::now() < until,
            "forks of dropped launches still there: {extra:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for w in kept {
        w.shutdown(Duration::from_secs(5)).await;
    }
    first.shutdown(Duration::from_secs(5)).await;
    drop(launcher);
    assert!(
        gone_within(zygote, Duration::from_secs(5)).await,
        "the fork server exits after its launcher and workers"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_worker_that_dies_at_once_is_exited_during_init_with_pid_and_stderr() {
    let dir = scratch("dies-at-once");
    // The runtime cannot start with an address space this small; the
    // zygote (no limits of its own) forks it all the same.
    let launcher = ProcessLauncher::new(forking(&write_app(&dir, "")).limit_address_space(8 << 20));
    let started = Instant::now();
    for i in 0..3 {
        match launcher.spawn(WorkerId(i)).await {
            Err(LaunchError::ExitedDuringInit {
                worker, pid, exit, ..
            }) => {
                assert_eq!(worker, WorkerId(i));
                assert!(pid.is_some());
                assert!(exit.code.is_some() || exit.signal.is_some(), "{exit}");
            }
            other => panic!("expected ExitedDuringInit, got {:?}", other.map(|w| w.info().pid)),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(15));
    let zygote = launcher.fork_server_pid().expect("the fork server lives on");
    let until = Instant::now() + Duration::from_secs(3);
    while !children_of(zygote).is_empty() {
        assert!(Instant::now() < until, "every failed fork reaped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
