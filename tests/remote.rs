//! Remote workers end to end: `TcpLauncher` pools against the REAL Python
//! listener (`python -m portpool APP --listen 127.0.0.1:0`, see
//! docs/remote.md) on loopback, under TLS with certificates made here.
#![cfg(feature = "remote")]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use portpool::{Backoff, CallError, CallRequest, CrashCause, Pool, PoolError, TcpLauncher, TlsConfig, Value};
use portpool_testkit::CallLedger;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

const SECRET: &str = "remote-test-secret-0123456789";
const LIMIT: Duration = Duration::from_secs(60);

fn app() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/apps/remote_app.py")
}

/// A scratch directory for certificates.
fn scratch() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "portpool-remote-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A CA, a server certificate for `localhost`/127.0.0.1 and a client
/// certificate, as PEM files.
struct Pki {
    dir: PathBuf,
    ca_pem: String,
    client_cert: String,
    client_key: String,
}

impl Pki {
    fn new() -> Pki {
        let dir = scratch();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct names: OpenSSL takes a certificate whose subject is its
        // issuer's for self-signed (rcgen's default name is the same for all).
        ca.distinguished_name = named("portpool test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let server_key = KeyPair::generate().unwrap();
        let mut server =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        server.distinguished_name = named("localhost");
        let server = server.signed_by(&server_key, &issuer).unwrap();
        let client_key = KeyPair::generate().unwrap();
        let mut client = CertificateParams::new(vec!["front-end".to_string()]).unwrap();
        client.distinguished_name = named("front-end");
        let client = client.signed_by(&client_key, &issuer).unwrap();
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
        std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
        Pki {
            dir,
            ca_pem: ca_cert.pem(),
            client_cert: client.pem(),
            client_key: client_key.serialize_pem(),
        }
    }

    fn tls(&self) -> TlsConfig {
        TlsConfig::new(self.ca_pem.clone()).server_name("localhost")
    }

    fn mtls(&self) -> TlsConfig {
        self.tls()
            .client_cert(self.client_cert.clone(), self.client_key.clone())
    }
}

fn named(cn: &str) -> rcgen::DistinguishedName {
    let mut name = rcgen::DistinguishedName::new();
    name.push(rcgen::DnType::CommonName, cn);
    name
}

/// One `python -m portpool APP --listen 127.0.0.1:0` process.
struct Listener {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<String>>,
}

impl Listener {
    fn start(pki: Option<&Pki>, client_ca: bool) -> Listener {
        let python = portpool_testkit::runtime_python().expect("python runtime (cargo xtask setup)");
        let mut cmd = Command::new(python);
        cmd.args(["-m", "portpool"])
            .arg(app())
            .args(["--listen", "127.0.0.1:0", "--shutdown-grace", "5"])
            .env("PORTPOOL_SECRET", SECRET)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(pki) = pki {
            cmd.arg("--tls-cert")
                .arg(pki.dir.join("server.pem"))
                .arg("--tls-key")
                .arg(pki.dir.join("server.key"));
            if client_ca {
                cmd.arg("--tls-client-ca").arg(pki.dir.join("ca.pem"));
            }
        }
        let mut child = cmd.spawn().expect("start the listener");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn({
            let log = log.clone();
            move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(addr) = line.strip_prefix("portpool: listening on ") {
                        let _ = tx.send(addr.trim().to_string());
                    }
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the listener never said where it listens:\n{}",
                    log.lock().unwrap()
                );
            }
        };
        Listener {
            child,
            addr,
            stderr: log,
        }
    }

    fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status();
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal("-TERM");
            if self.wait_exit(Duration::from_secs(10)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

fn launcher(endpoints: &[&str], tls: Option<TlsConfig>) -> TcpLauncher {
    let mut builder = TcpLauncher::builder(SECRET)
        .endpoints(endpoints.iter().copied())
        .endpoint_backoff(Duration::from_millis(200))
        .init_timeout(Duration::from_secs(20));
    if let Some(tls) = tls {
        builder = builder.tls(tls);
    }
    builder.build().unwrap()
}

async fn pool(launcher: TcpLauncher, workers: usize) -> Pool {
    Pool::builder(launcher)
        .name("remote")
        .workers(workers)
        .call_timeout(Duration::from_secs(30))
        .checkout_timeout(Duration::from_secs(30))
        .init_timeout(Duration::from_secs(20))
        .breaker(None)
        .crash_loop(100_000, Duration::from_secs(60))
        .restart_backoff(Backoff {
            base: Duration::from_millis(20),
            cap: Duration::from_millis(300),
            jitter: 0.2,
            reset_after: Duration::from_secs(1),
        })
        .build()
        .await
        .expect("remote pool starts")
}

/// Calls until one succeeds (the pool reconnecting), bounded.
async fn until_served(pool: &Pool, what: &str) -> Value {
    let until = Instant::now() + LIMIT;
    loop {
        match pool.call_raw(CallRequest::new("echo", what)).await {
            Ok(v) => return v,
            Err(e) if Instant::now() < until => {
                pause(&e).await;
            }
            Err(e) => panic!("never served again: {e}"),
        }
    }
}

async fn pause(_e: &PoolError) {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

fn crash_of(e: &PoolError) -> Option<(&CrashCause, &str, &str, Option<&str>)> {
    match e {
        PoolError::Call(CallError::WorkerCrashed {
            cause,
            reason,
            stderr_tail,
            endpoint,
            ..
        }) => Some((cause, reason.as_str(), stderr_tail.as_str(), endpoint.as_deref())),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_streams_over_tls_end_exactly_once_and_never_cross() {
    let pki = Pki::new();
    let listener = Listener::start(Some(&pki), false);
    let pool = pool(launcher(&[&listener.addr], Some(pki.tls())), 2).await;
    let status = pool.status();
    assert!(status
        .workers
        .iter()
        .all(|w| w.endpoint.as_deref() == Some(listener.addr.as_str())));
    assert!(status.workers.iter().all(|w| w
        .address
        .as_ref()
        .is_some_and(|a| a.as_str().starts_with(&format!("tcp://{}#", listener.addr)))));

    let ledger = Arc::new(CallLedger::new());
    let mut tasks = Vec::new();
    for client in 0..8u64 {
        let pool = pool.clone();
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..40u64 {
                let tag = format!("{client}-{i}");
                let id = ledger.start(tag.clone());
                if i % 5 == 0 {
                    let mut stream = pool
                        .stream(CallRequest::new("count", 20))
                        .await
                        .expect("stream starts");
                    let mut items = Vec::new();
                    while let Some(item) = stream.next().await {
                        items.push(item.expect("stream item"));
                    }
                    assert_eq!(items, (0..20).map(Value::from).collect::<Vec<_>>());
                } else {
                    let reply = pool
                        .call_raw(CallRequest::new("echo", tag.as_str()))
                        .await
                        .unwrap();
                    assert_eq!(reply, Value::from(tag.as_str()), "a reply crossed callers");
                }
                ledger.end(id, "ok");
            }
        }));
    }
    for task in tasks {
        tokio::time::timeout(LIMIT, task).await.unwrap().unwrap();
    }
    ledger.assert_each_call_ended_once();
    assert_eq!(ledger.started(), 8 * 40);
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_killed_mid_call_fails_its_calls_with_the_goodbye_reason_and_the_pool_reconnects() {
    let pki = Pki::new();
    let listener = Listener::start(Some(&pki), false);
    let pool = pool(launcher(&[&listener.addr], Some(pki.tls())), 1).await;
    let before = pool.status().workers[0].address.clone().unwrap();
    let slow = tokio::spawn({
        let pool = pool.clone();
        async move { pool.call_raw(CallRequest::new("sleep", 30.0)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let died = pool.call_raw(CallRequest::new("die", "mid-call")).await;
    let slow = tokio::time::timeout(LIMIT, slow).await.unwrap().unwrap();
    for outcome in [&died, &slow] {
        let error = outcome.as_ref().expect_err("the child died under it");
        let (cause, reason, tail, endpoint) =
            crash_of(error).unwrap_or_else(|| panic!("typed crash: {error}"));
        assert_eq!(*cause, CrashCause::Goodbye, "{error}");
        assert!(reason.contains("said goodbye"), "{reason}");
        assert!(
            tail.contains("dying on purpose"),
            "the goodbye carries the child's stderr: {tail}"
        );
        assert_eq!(endpoint, Some(listener.addr.as_str()));
    }
    assert_eq!(until_served(&pool, "back").await, Value::from("back"));
    let after = pool.status().workers[0].address.clone().unwrap();
    assert_ne!(before, after, "a restarted child is a new instance");
    pool.shutdown(Duration::from_secs(5)).await;
}

/// A TCP relay between host and listener whose connections can be cut.
struct Relay {
    addr: String,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(to: String) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let conns = conns.clone();
            async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        return;
                    };
                    let to = to.clone();
                    let task = tokio::spawn(async move {
                        let Ok(mut outbound) = tokio::net::TcpStream::connect(&to).await else {
                            return;
                        };
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    });
                    conns.lock().unwrap().push(task);
                }
            }
        });
        Relay { addr, conns, accept }
    }

    /// Drops every connection relayed so far (both sides see it close).
    fn cut(&self) {
        for task in self.conns.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_cut_fails_calls_typed_the_listener_cancels_them_and_the_host_reconnects() {
    let listener = Listener::start(None, false);
    let relay = Relay::start(listener.addr.clone()).await;
    let pool = pool(launcher(&[&relay.addr], None), 1).await;
    let before = pool.status().workers[0].address.clone().unwrap();
    let mut calls = Vec::new();
    for _ in 0..3 {
        let pool = pool.clone();
        calls.push(tokio::spawn(async move {
            pool.call_raw(CallRequest::new("cancellable", 30.0)).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    relay.cut();
    for call in calls {
        let outcome = tokio::time::timeout(LIMIT, call).await.unwrap().unwrap();
        let error = outcome.expect_err("cut mid-call");
        let (cause, _, _, endpoint) = crash_of(&error).unwrap_or_else(|| panic!("typed crash: {error}"));
        assert_eq!(*cause, CrashCause::Disconnected, "{error}");
        assert_eq!(endpoint, Some(relay.addr.as_str()));
    }
    assert_eq!(until_served(&pool, "again").await, Value::from("again"));
    // Same listener, same child: same address; and it cancelled our calls.
    assert_eq!(pool.status().workers[0].address.clone().unwrap(), before);
    let until = Instant::now() + LIMIT;
    loop {
        let n = pool
            .call_raw(CallRequest::new("cancelled", Value::Nil))
            .await
            .unwrap();
        if n == Value::from(3) {
            break;
        }
        assert!(Instant::now() < until, "the listener cancelled {n} of 3 calls");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_listener_lets_calls_finish_and_the_pool_moves_to_another() {
    let pki = Pki::new();
    let mut first = Listener::start(Some(&pki), false);
    let second = Listener::start(Some(&pki), false);
    // Only the first at the start: then both.
    let pool = pool(launcher(&[&first.addr, &second.addr], Some(pki.tls())), 2).await;
    let on_first = pool
        .status()
        .workers
        .iter()
        .filter(|w| w.endpoint.as_deref() == Some(first.addr.as_str()))
        .count();
    assert_eq!(on_first, 1, "one connection per listener (fewest live first)");
    let mut calls = Vec::new();
    for i in 0..6 {
        let pool = pool.clone();
        calls.push(tokio::spawn(async move {
            pool.call_raw(CallRequest::new("sleep", 1.0 + f64::from(i) * 0.01))
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.signal("-TERM");
    for call in calls {
        let outcome = tokio::time::timeout(LIMIT, call).await.unwrap().unwrap();
        assert!(
            outcome.is_ok(),
            "in-flight calls finish through a drain: {outcome:?}"
        );
    }
    let status = first.wait_exit(LIMIT).expect("the drained listener exits");
    assert!(status.success(), "{status:?}\n{}", first.log());
    // Every call from now on is served by the second listener.
    let until = Instant::now() + LIMIT;
    loop {
        let status = pool.status();
        let all_second = status.ready == 2
            && status
                .workers
                .iter()
                .all(|w| w.endpoint.as_deref() == Some(second.addr.as_str()));
        if all_second {
            break;
        }
        assert!(Instant::now() < until, "the pool never moved: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..10 {
        assert_eq!(
            pool.call_raw(CallRequest::new("echo", i)).await.unwrap(),
            Value::from(i)
        );
    }
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_the_client_certificate() {
    let pki = Pki::new();
    let listener = Listener::start(Some(&pki), true);
    let pool = pool(launcher(&[&listener.addr], Some(pki.mtls())), 1).await;
    assert_eq!(
        pool.call_raw(CallRequest::new("echo", "mtls")).await.unwrap(),
        Value::from("mtls")
    );
    pool.shutdown(Duration::from_secs(5)).await;

    let without = launcher(&[&listener.addr], Some(pki.tls()));
    let error = portpool::Launcher::launch_within(&without, portpool::WorkerId(99), Duration::from_secs(10))
        .await
        .unwrap_err();
    // TLS 1.3: the listener's refusal of the missing certificate arrives
    // after the client's side of the handshake completed, while reading the
    // challenge; it is still a TLS error naming the endpoint.
    assert_eq!(error.endpoint(), Some(listener.addr.as_str()), "{error}");
    assert!(matches!(error, portpool::LaunchError::Tls { .. }), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_reached_through_two_launchers_connected_to_the_same_listener() {
    let pki = Pki::new();
    let listener = Listener::start(Some(&pki), false);
    let front_a = pool(launcher(&[&listener.addr], Some(pki.tls())), 1).await;
    let front_b = pool(launcher(&[&listener.addr], Some(pki.tls())), 1).await;
    let a = front_a.status().workers[0].address.clone().unwrap();
    let b = front_b.status().workers[0].address.clone().unwrap();
    assert_eq!(a, b, "both front ends name the worker the same way");
    let call = |pool: &Pool| {
        let pool = pool.clone();
        async move {
            pool.call_raw(CallRequest::new("counter", Value::Nil).with_session("shared"))
                .await
                .unwrap()
        }
    };
    assert_eq!(call(&front_a).await, Value::from(1));
    assert_eq!(call(&front_a).await, Value::from(2));
    assert_eq!(call(&front_b).await, Value::from(3), "B continues A's session");
    assert_eq!(call(&front_a).await, Value::from(4));
    front_a.shutdown(Duration::from_secs(5)).await;
    // A's shutdown ended A's connection only: B still serves.
    assert_eq!(call(&front_b).await, Value::from(5));
    front_b.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_refused_by_the_real_listener() {
    let listener = Listener::start(None, false);
    let wrong = TcpLauncher::builder("not-the-secret-at-all-0000")
        .endpoint(listener.addr.clone())
        .build()
        .unwrap();
    let error = portpool::Launcher::launch_within(&wrong, portpool::WorkerId(1), Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, portpool::LaunchError::Auth { endpoint, .. } if *endpoint == listener.addr),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_mixes_local_and_remote_workers_within_quotas() {
    let listener = Listener::start(None, false);
    let python = portpool_testkit::runtime_python().unwrap();
    let local = portpool::ProcessLauncher::new(
        portpool::WorkerCommand::python_with(python, app()).init_timeout(Duration::from_secs(20)),
    );
    let mixed = portpool::MixedLauncher::new().with("local", local, 1).with(
        "remote",
        launcher(&[&listener.addr], None),
        2,
    );
    let pool = Pool::builder(mixed)
        .workers(3)
        .init_timeout(Duration::from_secs(20))
        .build()
        .await
        .expect("mixed pool starts");
    let status = pool.status();
    let remote = status.workers.iter().filter(|w| w.endpoint.is_some()).count();
    let local = status
        .workers
        .iter()
        .filter(|w| w.endpoint.is_none() && w.address.as_ref().is_some_and(|a| a.is_local()))
        .count();
    assert_eq!((local, remote), (1, 2), "{status:?}");
    let calls = (0..30).map(|i| {
        let pool = pool.clone();
        async move { pool.call_raw(CallRequest::new("echo", i)).await.unwrap() }
    });
    let replies = futures::future::join_all(calls).await;
    assert_eq!(replies, (0..30).map(Value::from).collect::<Vec<_>>());
    pool.shutdown(Duration::from_secs(5)).await;
}

/// Issue 15, the headline: two front ends, each its own pool of remote
/// workers (the same two real listeners) and a `SessionPool` over the same
/// real Redis, continue each other's sessions; a worker process that
/// restarts (a new instance) makes its sessions lost on every front end
/// (typed, once), never routed elsewhere.
#[cfg(feature = "redis")]
mod shared_sessions {
    use super::*;
    use portpool::session::{RedisStore, RedisStoreConfig};
    use portpool::{SessionConfig, SessionError, SessionId, SessionPool};
    use portpool_testkit::RedisServer;

    async fn front_end(name: &str, endpoints: &[&str], pki: &Pki, redis: &RedisServer) -> SessionPool {
        let pool = pool(launcher(endpoints, Some(pki.tls())), 2).await;
        let store = RedisStore::connect(&redis.url(), RedisStoreConfig::new("scale-out-test"))
            .await
            .expect("redis store connects");
        SessionPool::with_store(pool, SessionConfig::default().front_end(name), Arc::new(store)).unwrap()
    }

    async fn count(front: &SessionPool, session: &SessionId) -> Result<u64, SessionError> {
        front.call(session, "counter", &()).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_front_ends_continue_each_others_sessions_through_redis_and_remote_workers() {
        let Some(redis) = RedisServer::start_or_skip("two_front_ends_continue_each_others_sessions") else {
            return;
        };
        let pki = Pki::new();
        let one = Listener::start(Some(&pki), false);
        let two = Listener::start(Some(&pki), false);
        let endpoints = [one.addr.as_str(), two.addr.as_str()];
        let a = front_end("front-a", &endpoints, &pki, &redis).await;
        let b = front_end("front-b", &endpoints, &pki, &redis).await;

        // Four sessions opened on A: bound to the least-loaded worker, so
        // both listeners hold some.
        let sessions: Vec<SessionId> = (0..4)
            .map(|i| SessionId::try_from(format!("chat-{i}")).unwrap())
            .collect();
        for s in &sessions {
            assert_eq!(count(&a, s).await.unwrap(), 1);
            assert_eq!(count(&a, s).await.unwrap(), 2);
        }
        let mut endpoints_used = std::collections::BTreeSet::new();
        for s in &sessions {
            let binding = b.binding(s).await.unwrap().expect("A's binding is visible to B");
            let address = binding.worker.as_str().to_string();
            assert!(address.starts_with("tcp://127.0.0.1:"), "{address}");
            endpoints_used.insert(address);
            // B continues A's session on the same worker process.
            assert_eq!(count(&b, s).await.unwrap(), 3, "{s} continues on B");
            assert_eq!(count(&a, s).await.unwrap(), 4, "{s} continues back on A");
        }
        assert_eq!(
            endpoints_used.len(),
            2,
            "sessions spread over both workers: {endpoints_used:?}"
        );

        // Listener one's worker process dies and is restarted by its
        // listener with a new instance: its sessions are lost for both front
        // ends (reported once each), the others carry on.
        let dead = b.binding(&sessions[0]).await.unwrap().unwrap().worker;
        let victim = if dead.as_str().contains(&one.addr) {
            &one
        } else {
            &two
        };
        let child_pid: u32 = {
            let pool = a.pool().clone();
            let status = pool.status();
            status
                .workers
                .iter()
                .find(|w| w.address.as_ref() == Some(&dead))
                .and_then(|w| w.pid)
                .expect("A is connected to the bound worker")
        };
        let _ = Command::new("kill")
            .args(["-KILL", &child_pid.to_string()])
            .status();
        let until = Instant::now() + LIMIT;
        // Wait until A's pool has reconnected to the restarted worker.
        loop {
            let status = a.pool().status();
            let back = status
                .workers
                .iter()
                .filter_map(|w| w.address.as_ref())
                .any(|addr| addr.as_str().contains(&victim.addr) && *addr != dead);
            if back {
                break;
            }
            assert!(Instant::now() < until, "A never reconnected:\n{}", victim.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for s in &sessions {
            let bound = b.binding(s).await.unwrap().unwrap().worker;
            if bound == dead {
                let lost = count(&a, s).await;
                assert!(
                    matches!(lost, Err(SessionError::SessionLost { .. })),
                    "{s}: {lost:?}"
                );
                assert_eq!(count(&b, s).await.unwrap(), 1, "{s} starts fresh after the loss");
            } else {
                assert_eq!(
                    count(&b, s).await.unwrap(),
                    5,
                    "{s} on the surviving worker carries on"
                );
            }
        }
        a.pool().shutdown(Duration::from_secs(5)).await;
        b.pool().shutdown(Duration::from_secs(5)).await;
    }
}
