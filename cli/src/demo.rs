//! `portpool demo`: a bounded mixed workload over the example handlers, with
//! one worker killed mid-run to show recovery, then a report.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use portpool::{
    BreakerConfig, CallRequest, OnLost, Pool, PoolError, ProcessLauncher, SessionConfig, SessionError,
    SessionId, SessionPool, Value, WorkerCommand, WorkerState,
};

use crate::stats::{fmt_us, Samples};

/// Options of `portpool demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// The Python app with the demo handlers (primes, fetch, count, counter).
    #[arg(long, default_value_os_t = crate::example("demo_app.py"))]
    app: PathBuf,
    /// The interpreter (default: $PORTPOOL_PYTHON, the nearest .venv, python3).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Workers in the pool.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Concurrent callers.
    #[arg(long, default_value_t = 48)]
    callers: usize,
    /// How long the workload runs, in seconds.
    #[arg(long, default_value_t = 15.0)]
    seconds: f64,
    /// Do not kill a worker mid-run.
    #[arg(long)]
    no_kill: bool,
    /// Consecutive worker faults that open the pool's circuit breaker (one
    /// crash counts once, however many calls it failed).
    #[arg(long, default_value_t = 5)]
    breaker_threshold: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Cpu,
    Io,
    Stream,
    Session,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Cpu => "cpu    primes(30000)",
            Kind::Io => "io     fetch(40 ms)",
            Kind::Stream => "stream count(50)",
            Kind::Session => "session counter x3",
        }
    }

    fn pick(roll: u64) -> Kind {
        match roll % 10 {
            0..=2 => Kind::Cpu,
            3..=6 => Kind::Io,
            7..=8 => Kind::Stream,
            _ => Kind::Session,
        }
    }
}

#[derive(Default)]
struct Tally {
    latency: BTreeMap<Kind, Samples>,
    errors: BTreeMap<String, u64>,
    error_examples: BTreeMap<String, String>,
    sessions_verified: u64,
}

struct Shared {
    done: AtomicU64,
    failed: AtomicU64,
    tally: Mutex<Tally>,
}

pub async fn run(args: DemoArgs) -> ExitCode {
    match demo(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("portpool demo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn demo(args: DemoArgs) -> Result<bool, String> {
    let python = crate::interpreter(args.python.clone());
    let workers = args.workers.max(1);
    let duration = Duration::try_from_secs_f64(args.seconds.max(1.0)).map_err(|e| e.to_string())?;
    println!("portpool demo: {workers} workers of {}", args.app.display());
    println!("  interpreter {}", python.display());

    let started = Instant::now();
    let launcher = ProcessLauncher::new(WorkerCommand::python_with(&python, &args.app));
    let pool = Pool::builder(launcher)
        .name("demo")
        .workers(workers)
        .checkout_timeout(Duration::from_secs(20))
        .call_timeout(Duration::from_secs(20))
        .breaker(Some(BreakerConfig {
            failure_threshold: args.breaker_threshold.max(1),
            ..BreakerConfig::default()
        }))
        .build()
        .await
        .map_err(|e| {
            format!(
                "the pool did not start: {e}\nhint: run `portpool doctor --app {}`",
                args.app.display()
            )
        })?;
    println!(
        "  {} workers ready in {} (started in parallel)",
        pool.status().ready,
        fmt_us(started.elapsed().as_secs_f64() * 1e6)
    );
    println!(
        "  workload: {} callers for {:.0} s, 30% cpu, 40% async io, 20% streams, 10% session conversations{}",
        args.callers,
        duration.as_secs_f64(),
        if args.no_kill {
            ""
        } else {
            "; one worker is killed (SIGKILL) mid-run"
        }
    );

    let shared = Arc::new(Shared {
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        tally: Mutex::new(Tally::default()),
    });
    let start = Instant::now();
    let deadline = start + duration;
    // Session conversations are bound to one worker each; losing it to the
    // kill shows as `session_lost`, and the conversation starts over.
    let sessions = SessionPool::new(pool.clone(), SessionConfig::default().on_lost(OnLost::Report))
        .map_err(|e| format!("cannot set up sessions: {e}"))?;
    let mut tasks = Vec::new();
    for caller in 0..args.callers.max(1) {
        let (pool, sessions, shared) = (pool.clone(), sessions.clone(), shared.clone());
        tasks.push(tokio::spawn(async move {
            caller_loop(caller as u64, pool, sessions, shared, deadline).await
        }));
    }

    // Progress, and the kill.
    let kill_at = start + duration.mul_f64(0.4);
    let mut killed: Option<(u64, u32)> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut printed = u64::MAX;
    while Instant::now() < deadline {
        tick.tick().await;
        if !args.no_kill && killed.is_none() && Instant::now() >= kill_at {
            killed = kill_one(&pool);
        }
        progress(&pool, &shared, start, duration, false, &mut printed);
    }
    for task in tasks {
        let _ = task.await;
    }
    progress(&pool, &shared, start, duration, true, &mut printed);
    let elapsed = start.elapsed();

    // Let the pool finish replacing the killed worker, if it has not yet.
    let settle = Instant::now();
    while pool.status().ready < workers && settle.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let healthy = report(&pool, &shared, elapsed, killed, args.no_kill);
    pool.shutdown(Duration::from_secs(5)).await;
    Ok(healthy)
}

fn kill_one(pool: &Pool) -> Option<(u64, u32)> {
    let status = pool.status();
    let victim = status
        .workers
        .iter()
        .filter(|w| w.state == WorkerState::Ready && w.pid.is_some())
        .max_by_key(|w| w.in_flight)?;
    let pid = victim.pid?;
    let raw = i32::try_from(pid).ok()?;
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), nix::sys::signal::Signal::SIGKILL) {
        Ok(()) => {
            use std::io::IsTerminal as _;
            println!(
                "{}  >> kill -9 worker in slot {} (pid {pid}) with {} calls in flight{:20}",
                if std::io::stdout().is_terminal() { "\n" } else { "" },
                victim.slot,
                victim.in_flight,
                ""
            );
            Some((victim.slot, pid))
        }
        Err(e) => {
            println!("\r  >> could not kill pid {pid}: {e}");
            None
        }
    }
}

fn progress(pool: &Pool, shared: &Shared, start: Instant, total: Duration, last: bool, printed: &mut u64) {
    use std::io::IsTerminal as _;
    const WIDTH: usize = 30;
    let terminal = std::io::stdout().is_terminal();
    // Not a terminal: one line per second instead of a redrawn bar.
    let second = start.elapsed().as_secs();
    if !terminal && !last && second == *printed {
        return;
    }
    *printed = second;
    let elapsed = start.elapsed().min(total);
    let fraction = elapsed.as_secs_f64() / total.as_secs_f64();
    let filled = ((fraction * WIDTH as f64) as usize).min(WIDTH);
    let status = pool.status();
    let restarts: u64 = status.workers.iter().map(|w| w.restarts).sum();
    print!(
        "{}  [{}{}] {:>5.1}s  ok {:>6}  errors {:>3}  ready {}/{}  restarts {}  breaker {:<9}",
        if terminal { "\r" } else { "" },
        "#".repeat(filled),
        ".".repeat(WIDTH - filled),
        elapsed.as_secs_f64(),
        shared.done.load(Ordering::Relaxed),
        shared.failed.load(Ordering::Relaxed),
        status.ready,
        status.size,
        restarts,
        status.breaker.as_str()
    );
    if last || !terminal {
        println!();
    }
    let _ = std::io::stdout().flush();
}

/// A tiny xorshift generator: the mix only needs to look random.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

async fn caller_loop(caller: u64, pool: Pool, sessions: SessionPool, shared: Arc<Shared>, deadline: Instant) {
    let mut rng = 0x9E37_79B9_7F4A_7C15 ^ (caller + 1).wrapping_mul(0x2545_F491_4F6C_DD1D);
    while Instant::now() < deadline {
        let kind = Kind::pick(next(&mut rng));
        let t = Instant::now();
        let outcome = match kind {
            Kind::Cpu => pool
                .call_value("primes", Value::from(30_000))
                .await
                .map(|_| ())
                .map_err(Into::into),
            Kind::Io => pool
                .call_value("fetch", Value::from(40))
                .await
                .map(|_| ())
                .map_err(Into::into),
            Kind::Stream => stream(&pool, 50).await,
            Kind::Session => session(&sessions).await,
        };
        let took = t.elapsed();
        let pause = {
            let mut tally = shared.tally.lock().unwrap_or_else(|e| e.into_inner());
            record(&shared, &mut tally, kind, took, outcome)
        };
        if let Some(pause) = pause {
            // A caller that fails backs off a little instead of spinning.
            tokio::time::sleep(pause).await;
        }
    }
}

/// Records one outcome; returns how long a failed caller should pause.
fn record(
    shared: &Shared,
    tally: &mut Tally,
    kind: Kind,
    took: Duration,
    outcome: Result<(), SessionError>,
) -> Option<Duration> {
    match outcome {
        Ok(()) => {
            shared.done.fetch_add(1, Ordering::Relaxed);
            tally.latency.entry(kind).or_default().push(took);
            if kind == Kind::Session {
                tally.sessions_verified += 1;
            }
            None
        }
        Err(e) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            let key = match &e {
                SessionError::Pool(e) => e.outcome(),
                SessionError::SessionLost { .. } => "session_lost",
                SessionError::WorkerBusy { .. } => "worker_busy",
                _ => "session_error",
            }
            .to_string();
            *tally.errors.entry(key.clone()).or_default() += 1;
            tally
                .error_examples
                .entry(key)
                .or_insert_with(|| e.to_string().lines().next().unwrap_or_default().to_owned());
            Some(match &e {
                SessionError::Pool(PoolError::CircuitOpen { retry_after, .. }) => {
                    (*retry_after).clamp(Duration::from_millis(20), Duration::from_millis(250))
                }
                _ => Duration::from_millis(20),
            })
        }
    }
}

async fn stream(pool: &Pool, n: u64) -> Result<(), SessionError> {
    let mut chunks = pool.stream(CallRequest::new("count", n)).await?;
    let mut expected = 0u64;
    while let Some(item) = chunks.next().await {
        let value = item?;
        if value.as_u64() != Some(expected) {
            return Err(SessionError::Pool(PoolError::Decode {
                method: "count".into(),
                reason: format!("chunk {expected} was {value}"),
            }));
        }
        expected += 1;
    }
    Ok(())
}

/// One conversation: three calls in a new session, which stays on one
/// worker; its counter must go 1, 2, 3. Then the session is closed.
async fn session(sessions: &SessionPool) -> Result<(), SessionError> {
    let session = sessions.session(SessionId::new());
    for expected in 1..=3u64 {
        let value = session.call_raw(CallRequest::new("counter", Value::Nil)).await?;
        if value.as_u64() != Some(expected) {
            return Err(SessionError::Pool(PoolError::Decode {
                method: "counter".into(),
                reason: format!("session {}: expected {expected}, got {value}", session.id()),
            }));
        }
    }
    session.close().await
}

fn report(
    pool: &Pool,
    shared: &Shared,
    elapsed: Duration,
    killed: Option<(u64, u32)>,
    no_kill: bool,
) -> bool {
    let mut tally = shared.tally.lock().unwrap_or_else(|e| e.into_inner());
    let ok = shared.done.load(Ordering::Relaxed);
    let failed = shared.failed.load(Ordering::Relaxed);
    let mut all = Samples::default();
    println!("\nreport");
    println!(
        "  {} calls ok, {} failed in {:.1} s: {:.0} calls/s",
        ok,
        failed,
        elapsed.as_secs_f64(),
        ok as f64 / elapsed.as_secs_f64()
    );
    println!("\n  {:<22} {:>7} {:>10} {:>10}", "workload", "ok", "p50", "p99");
    for (kind, samples) in tally.latency.iter_mut() {
        println!(
            "  {:<22} {:>7} {:>10} {:>10}",
            kind.label(),
            samples.len(),
            fmt_us(samples.quantile_us(0.5)),
            fmt_us(samples.quantile_us(0.99))
        );
        all.extend(samples.clone());
    }
    println!(
        "  {:<22} {:>7} {:>10} {:>10}",
        "all",
        all.len(),
        fmt_us(all.quantile_us(0.5)),
        fmt_us(all.quantile_us(0.99))
    );
    println!(
        "  session conversations verified (counter 1, 2, 3 on one worker): {}",
        tally.sessions_verified
    );

    println!("\n  errors by kind");
    if tally.errors.is_empty() {
        println!("    none");
    }
    for (kind, n) in &tally.errors {
        println!("    {kind:<16} {n:>5}   e.g. {}", tally.error_examples[kind]);
    }
    let crashed = tally.errors.get("worker_crashed").copied().unwrap_or(0);
    let lost = tally.errors.get("session_lost").copied().unwrap_or(0);
    if let Some((slot, pid)) = killed {
        println!(
            "    -> the {crashed} worker_crashed errors are the calls that were in flight on pid {pid} (slot {slot})\n       when it was killed; every other call went on, and the slot got a new worker."
        );
        if lost > 0 {
            println!(
                "    -> the {lost} session_lost errors are conversations bound to pid {pid}: their state died with it,\n       each was told so once, and started over on another worker."
            );
        }
    }

    let status = pool.status();
    println!("\n  workers");
    println!(
        "  {:>4} {:>6} {:>8} {:<9} {:>8} {:>8} {:>9} {:>8}",
        "slot", "id", "pid", "state", "served", "restarts", "rss", "uptime"
    );
    for w in &status.workers {
        println!(
            "  {:>4} {:>6} {:>8} {:<9} {:>8} {:>8} {:>9} {:>8}",
            w.slot,
            w.id.map_or("-".to_string(), |id| id.to_string()),
            w.pid.map_or("-".to_string(), |p| p.to_string()),
            w.state.as_str(),
            w.served,
            w.restarts,
            w.rss_bytes
                .map_or("-".to_string(), |b| format!("{:.1} MiB", b as f64 / 1048576.0)),
            w.uptime
                .map_or("-".to_string(), |u| format!("{:.1}s", u.as_secs_f64()))
        );
    }
    let restarts: u64 = status.workers.iter().map(|w| w.restarts).sum();
    println!(
        "  ready {}/{}, restarts {}, breaker {}",
        status.ready,
        status.size,
        restarts,
        status.breaker.as_str()
    );

    let unexpected: u64 = tally
        .errors
        .iter()
        // What the kill causes: calls in flight on the killed worker, and
        // sessions bound to it (told once, then started over).
        .filter(|(kind, _)| !matches!(kind.as_str(), "worker_crashed" | "session_lost"))
        .map(|(_, n)| n)
        .sum();
    let recovered = status.ready == status.size && (no_kill || (killed.is_some() && restarts >= 1));
    let healthy = ok > 0 && unexpected == 0 && recovered;
    if healthy {
        println!(
            "\ndemo: completed as designed (the killed worker's calls failed as WorkerCrashed, its sessions as SessionLost; the pool recovered)"
        );
    } else {
        println!(
            "\ndemo: NOT as designed: unexpected errors {unexpected}, recovered {recovered} (killed {})",
            killed.is_some()
        );
    }
    healthy
}
