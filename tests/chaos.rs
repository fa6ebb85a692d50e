//! Chaos soak, across every layer: a mixed workload (calls, streams,
//! sessions, cancellations) through the facade against real Python workers while a chaos task SIGKILLs random workers and
//! injects hangs, with slow (re)starts. Checked at the end: every call ended
//! exactly once, no reply reached the wrong caller, nothing leaked, the pool
//! is back at full strength, no orphan processes, memory flat.
//!
//! `PORTPOOL_CHAOS_SECONDS` sets the length (default 5, at most 600);
//! `cargo xtask chaos [--seconds N]` runs it with `--nocapture`.
//! Needs the venv (`cargo xtask setup`) or `PORTPOOL_PYTHON`.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use portpool::{
    Backoff, CallRequest, OnLost, Pool, PoolError, ProcessLauncher, SessionConfig, SessionError, SessionId,
    SessionPool, Value, WorkerCommand,
};
use portpool_testkit::CallLedger;

const WORKERS: usize = 4;
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_SECONDS: u64 = 5;
const MAX_SECONDS: u64 = 600;
/// Allowed growth of our own RSS between warm-up and the end.
const MAX_RSS_GROWTH: u64 = 16 * 1024 * 1024;

fn seconds() -> u64 {
    std::env::var("PORTPOOL_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(DEFAULT_SECONDS)
        .clamp(1, MAX_SECONDS)
}

fn app() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/apps/chaos.py")
}

fn chance(p: f64) -> bool {
    rand::random::<f64>() < p
}

fn between(lo: u64, hi: u64) -> u64 {
    lo + rand::random::<u64>() % (hi - lo + 1)
}

fn nonce() -> u64 {
    rand::random::<u64>() >> 12 // fits a MessagePack/Python int either way
}

/// Our own resident memory, from /proc/self/status.
fn own_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    cancelled: AtomicU64,
    wrong_replies: AtomicU64,
    session_lost: AtomicU64,
    stream_items: AtomicU64,
    kills: AtomicU64,
    hangs: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    wrong: Mutex<Vec<String>>,
}

impl Tally {
    fn error(&self, kind: &str) {
        *self.errors.lock().unwrap().entry(kind.to_string()).or_default() += 1;
    }

    fn wrong(&self, what: String) {
        self.wrong_replies.fetch_add(1, Ordering::Relaxed);
        self.wrong.lock().unwrap().push(what);
    }

    fn pool_error(&self, e: &PoolError) -> String {
        let kind = e.outcome().to_string();
        self.error(&kind);
        kind
    }

    fn session_error(&self, e: &SessionError) -> String {
        let kind = match e {
            SessionError::SessionLost { .. } => {
                self.session_lost.fetch_add(1, Ordering::Relaxed);
                "session_lost".to_string()
            }
            SessionError::Pool(p) => p.outcome().to_string(),
            other => format!("session:{other}"),
        };
        self.error(&kind);
        kind
    }
}

struct Ctx {
    pool: Pool,
    sessions: SessionPool,
    ledger: CallLedger,
    tally: Tally,
    stop: AtomicBool,
}

/// Runs `fut` under a random short limit some of the time: the future is
/// dropped mid-flight (a cancellation). `None` when it was dropped.
async fn maybe_cancel<F: std::future::Future>(fut: F) -> Option<F::Output> {
    if chance(0.15) {
        tokio::time::timeout(Duration::from_millis(between(0, 30)), fut)
            .await
            .ok()
    } else {
        Some(fut.await)
    }
}

async fn one_call(ctx: &Ctx) {
    let n = nonce();
    let (label, id) = if chance(0.5) {
        ("echo", ctx.ledger.start(format!("echo {n}")))
    } else {
        ("sleep", ctx.ledger.start(format!("sleep {n}")))
    };
    let outcome = match label {
        "echo" => {
            maybe_cancel(
                ctx.pool
                    .call::<_, Value>("echo", &[("nonce", n)].into_iter().collect::<BTreeMap<_, _>>()),
            )
            .await
        }
        _ => {
            let params: BTreeMap<&str, Value> = [
                ("nonce", Value::from(n)),
                ("s", Value::from(between(0, 50) as f64 / 1000.0)),
            ]
            .into_iter()
            .collect();
            maybe_cancel(ctx.pool.call::<_, Value>("sleep", &params)).await
        }
    };
    let end = match outcome {
        None => {
            ctx.tally.cancelled.fetch_add(1, Ordering::Relaxed);
            "cancelled".to_string()
        }
        Some(Ok(v)) => {
            let got = match label {
                "echo" => v.as_map().and_then(|m| m.first()).and_then(|(_, v)| v.as_u64()),
                _ => v.as_u64(),
            };
            if got != Some(n) {
                ctx.tally.wrong(format!("{label} {n} got {v}"));
            }
            ctx.tally.ok.fetch_add(1, Ordering::Relaxed);
            "ok".to_string()
        }
        Some(Err(e)) => ctx.tally.pool_error(&e),
    };
    ctx.ledger.end(id, end);
}

async fn one_stream(ctx: &Ctx) {
    let n = nonce();
    let items = between(1, 20);
    let drop_after = chance(0.2).then(|| between(0, items));
    let id = ctx.ledger.start(format!("stream {n}"));
    let params: BTreeMap<&str, Value> = [("nonce", Value::from(n)), ("n", Value::from(items))]
        .into_iter()
        .collect();
    let request = CallRequest::new("stream", portpool::to_value(&params).unwrap());
    let end = match ctx.pool.stream(request).await {
        Err(e) => ctx.tally.pool_error(&e),
        Ok(mut stream) => {
            let mut seen = 0u64;
            loop {
                if drop_after == Some(seen) {
                    drop(stream);
                    ctx.tally.cancelled.fetch_add(1, Ordering::Relaxed);
                    break "cancelled".to_string();
                }
                match stream.next().await {
                    None => {
                        if seen != items {
                            ctx.tally
                                .wrong(format!("stream {n} ended after {seen} of {items}"));
                        }
                        ctx.tally.ok.fetch_add(1, Ordering::Relaxed);
                        break "ok".to_string();
                    }
                    Some(Ok(item)) => {
                        let pair = item.as_array().map(|a| (a[0].as_u64(), a[1].as_u64()));
                        if pair != Some((Some(n), Some(seen))) {
                            ctx.tally.wrong(format!("stream {n} item {seen} was {item}"));
                        }
                        seen += 1;
                        ctx.tally.stream_items.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Err(e)) => break ctx.tally.pool_error(&e),
                }
            }
        }
    };
    ctx.ledger.end(id, end);
}

/// A client owning a few sessions: each counter must go up by exactly one
/// per successful call, unless something failed in between.
async fn session_client(ctx: Arc<Ctx>) {
    let mut sessions: Vec<(SessionId, Option<u64>)> = (0..4).map(|_| (SessionId::new(), None)).collect();
    while !ctx.stop.load(Ordering::Relaxed) {
        let k = rand::random::<usize>() % sessions.len();
        let (session, expected) = &mut sessions[k];
        let id = ctx.ledger.start(format!("count {session}"));
        let outcome = maybe_cancel(ctx.sessions.call::<_, u64>(session, "count", &())).await;
        let end = match outcome {
            None => {
                *expected = None;
                ctx.tally.cancelled.fetch_add(1, Ordering::Relaxed);
                "cancelled".to_string()
            }
            Some(Ok(n)) => {
                if expected.is_some_and(|e| e != n) {
                    ctx.tally
                        .wrong(format!("session {session}: expected {expected:?}, got {n}"));
                }
                *expected = Some(n + 1);
                ctx.tally.ok.fetch_add(1, Ordering::Relaxed);
                "ok".to_string()
            }
            Some(Err(e)) => {
                *expected = None;
                ctx.tally.session_error(&e)
            }
        };
        ctx.ledger.end(id, end);
    }
}

async fn call_client(ctx: Arc<Ctx>) {
    while !ctx.stop.load(Ordering::Relaxed) {
        if chance(0.2) {
            one_stream(&ctx).await;
        } else {
            one_call(&ctx).await;
        }
    }
}

/// SIGKILLs a random worker every 300-700 ms, sometimes injects a hang
/// instead; records every worker process group seen.
async fn chaos(ctx: Arc<Ctx>, pgids: Arc<Mutex<HashSet<u32>>>) {
    let mut hangs = Vec::new();
    while !ctx.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(between(300, 700))).await;
        if ctx.stop.load(Ordering::Relaxed) {
            break;
        }
        let pids: Vec<u32> = ctx.pool.status().workers.iter().filter_map(|w| w.pid).collect();
        pgids.lock().unwrap().extend(&pids);
        if chance(0.25) {
            ctx.tally.hangs.fetch_add(1, Ordering::Relaxed);
            let ctx = ctx.clone();
            hangs.push(tokio::spawn(async move {
                let id = ctx.ledger.start("hang");
                let end = match ctx.pool.call::<_, Value>("hang", &()).await {
                    Ok(v) => {
                        ctx.tally.wrong(format!("hang returned {v}"));
                        "ok".to_string()
                    }
                    Err(e) => ctx.tally.pool_error(&e),
                };
                ctx.ledger.end(id, end);
            }));
        } else if !pids.is_empty() {
            let pid = pids[rand::random::<usize>() % pids.len()];
            let killed = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if killed {
                ctx.tally.kills.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    for hang in hangs {
        hang.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak() {
    let seconds = seconds();
    let command = WorkerCommand::python_with(portpool_testkit::runtime_python().unwrap(), app())
        .init_timeout(Duration::from_secs(20))
        .env("CHAOS_SLOW_START", "0.3");
    let pool = Pool::builder(ProcessLauncher::new(command))
        .name("chaos")
        .workers(WORKERS)
        .call_timeout(CALL_TIMEOUT)
        .checkout_timeout(Duration::from_secs(5))
        .max_queue(10_000)
        .breaker(None)
        .crash_loop(100_000, Duration::from_secs(60))
        .restart_backoff(Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(200),
            jitter: 0.2,
            reset_after: Duration::from_secs(1),
        })
        .build()
        .await
        .expect("python workers start (run `cargo xtask setup`)");
    let sessions = SessionPool::new(pool.clone(), SessionConfig::default().on_lost(OnLost::Report)).unwrap();
    let ctx = Arc::new(Ctx {
        pool: pool.clone(),
        sessions,
        ledger: CallLedger::new(),
        tally: Tally::default(),
        stop: AtomicBool::new(false),
    });
    let pgids = Arc::new(Mutex::new(HashSet::<u32>::new()));
    pgids
        .lock()
        .unwrap()
        .extend(pool.status().workers.iter().filter_map(|w| w.pid));

    let t0 = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(tokio::spawn(call_client(ctx.clone())));
    }
    for _ in 0..2 {
        clients.push(tokio::spawn(session_client(ctx.clone())));
    }
    let chaos_task = tokio::spawn(chaos(ctx.clone(), pgids.clone()));

    // Warm up, then take the memory baseline.
    let warm_up = Duration::from_secs(seconds.min(5)).mul_f64(0.3);
    tokio::time::sleep(warm_up).await;
    let rss_start = own_rss();
    tokio::time::sleep(Duration::from_secs(seconds).saturating_sub(warm_up)).await;

    // Stop chaos and the workload. Every client's last call is bounded by
    // the call time-out (plus a checkout), so they all return.
    ctx.stop.store(true, Ordering::Relaxed);
    let stopped = Instant::now();
    let joined = tokio::time::timeout(
        Duration::from_secs(20),
        futures::future::join_all(clients.into_iter().chain([chaos_task])),
    )
    .await
    .expect("a client hung: some call never ended");
    for j in joined {
        j.expect("client task panicked");
    }
    let run = t0.elapsed();

    // Full strength again.
    let recovered = loop {
        let status = pool.status();
        pgids
            .lock()
            .unwrap()
            .extend(status.workers.iter().filter_map(|w| w.pid));
        if status.ready == WORKERS {
            break stopped.elapsed();
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "pool not back to {WORKERS} ready workers 10 s after chaos stopped: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

    // Nothing leaked: no call in flight, no slot held, nobody queued.
    let settle = Instant::now();
    let status = loop {
        let status = pool.status();
        let idle = status.queue_depth == 0 && status.workers.iter().all(|w| w.in_flight == 0 && w.held == 0);
        if idle || settle.elapsed() > Duration::from_secs(3) {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(status.queue_depth, 0, "{status:?}");
    for w in &status.workers {
        assert_eq!((w.in_flight, w.held), (0, 0), "leaked slot on {w:?}");
    }
    let restarts: u64 = status.workers.iter().map(|w| w.restarts).sum();
    let rss_end = own_rss();

    let tally = &ctx.tally;
    ctx.ledger.assert_each_call_ended_once();
    assert!(ctx.ledger.open().is_empty());
    let wrong = tally.wrong.lock().unwrap().clone();
    assert!(
        wrong.is_empty(),
        "replies reached the wrong caller:\n{}",
        wrong.join("\n")
    );

    // No orphans and no leaks: after shutdown no process is our child and
    // none is left in any worker's process group. A zombie whose parent is
    // us is a leak (the pool did not reap it); only a zombie of another
    // parent (init will reap it) counts as gone.
    pool.shutdown(Duration::from_secs(2)).await;
    let me = std::process::id();
    let pgids = pgids.lock().unwrap().clone();
    let until = Instant::now() + Duration::from_secs(3);
    let orphans = loop {
        let orphans: Vec<_> = portpool_testkit::processes()
            .into_iter()
            .filter(|p| p.pid != me && (p.ppid == me || pgids.contains(&p.pgrp)))
            .filter(|p| !p.process_state().is_gone())
            .collect();
        if orphans.is_empty() || Instant::now() > until {
            break orphans;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        orphans.is_empty(),
        "processes left after shutdown (a zombie with ppid {me} is one we never reaped): {orphans:?}"
    );

    let growth = rss_end.saturating_sub(rss_start);
    let errors = tally.errors.lock().unwrap().clone();
    println!("chaos soak summary");
    println!("  duration          {run:.1?} (PORTPOOL_CHAOS_SECONDS={seconds})");
    println!("  calls started     {}", ctx.ledger.started());
    println!("  ok                {}", tally.ok.load(Ordering::Relaxed));
    println!("  cancelled (drop)  {}", tally.cancelled.load(Ordering::Relaxed));
    println!(
        "  stream items      {}",
        tally.stream_items.load(Ordering::Relaxed)
    );
    println!("  errors by kind    {errors:?}");
    println!(
        "  session lost      {}",
        tally.session_lost.load(Ordering::Relaxed)
    );
    println!(
        "  wrong replies     {}",
        tally.wrong_replies.load(Ordering::Relaxed)
    );
    println!("  kills (SIGKILL)   {}", tally.kills.load(Ordering::Relaxed));
    println!("  hangs injected    {}", tally.hangs.load(Ordering::Relaxed));
    println!("  restarts          {restarts}");
    println!("  worker pgids seen {}", pgids.len());
    println!("  back to full      {recovered:?} after chaos stopped (target 2 s)");
    println!(
        "  our RSS           {:.1} MiB -> {:.1} MiB (growth {:.1} MiB, bound {} MiB)",
        rss_start as f64 / 1048576.0,
        rss_end as f64 / 1048576.0,
        growth as f64 / 1048576.0,
        MAX_RSS_GROWTH / 1048576
    );
    println!("  orphans           0");
    assert!(growth < MAX_RSS_GROWTH, "RSS grew by {growth} bytes");
    assert!(tally.ok.load(Ordering::Relaxed) > 0, "no call succeeded");
}
