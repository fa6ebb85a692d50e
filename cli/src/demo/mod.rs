//! `portpool demo`: a bounded mixed workload over the example handlers, with
//! one worker killed mid-run to show recovery, then a report and the pool's
//! metrics in Prometheus' text format.
//!
//! - [`progress`]: the progress bar (plain lines when not on a terminal);
//! - [`report`]: the report, and the verdict the run is judged by;
//! - [`metrics`]: the Prometheus recorder and its `portpool_*` series.

mod metrics;
mod progress;
mod report;

use std::collections::BTreeMap;
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
use progress::{Counts, Progress};

/// Options of `portpool demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
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

pub(crate) async fn run(args: DemoArgs) -> ExitCode {
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
    // Before the pool exists, so that every series it emits is recorded.
    let prometheus = metrics::install()
        .map_err(|e| println!("  {e}; the metrics are not shown"))
        .ok();

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
    let mut progress = Progress::stdout(duration);
    while Instant::now() < deadline {
        tick.tick().await;
        if !args.no_kill && killed.is_none() && Instant::now() >= kill_at {
            killed = kill_one(&pool, &mut progress);
        }
        progress.update(start.elapsed().min(duration), &counts(&pool, &shared), false);
        if let Some(prometheus) = &prometheus {
            // Summaries keep their samples until upkeep folds them in.
            prometheus.run_upkeep();
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    progress.update(start.elapsed().min(duration), &counts(&pool, &shared), true);
    let elapsed = start.elapsed();

    // Let the pool finish replacing the killed worker, if it has not yet.
    let settle = Instant::now();
    while pool.status().ready < workers && settle.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let run = report::Run {
        ok: shared.done.load(Ordering::Relaxed),
        failed: shared.failed.load(Ordering::Relaxed),
        elapsed,
        killed,
        no_kill: args.no_kill,
    };
    let healthy = {
        let tally = shared.tally.lock().unwrap_or_else(|e| e.into_inner());
        report::report(&pool.status(), &tally, &run, prometheus.as_ref())
    };
    pool.shutdown(Duration::from_secs(5)).await;
    Ok(healthy)
}

fn counts(pool: &Pool, shared: &Shared) -> Counts {
    let status = pool.status();
    Counts {
        ok: shared.done.load(Ordering::Relaxed),
        errors: shared.failed.load(Ordering::Relaxed),
        ready: status.ready,
        size: status.size,
        restarts: status.workers.iter().map(|w| w.restarts).sum(),
        breaker: status.breaker.as_str(),
    }
}

fn kill_one(pool: &Pool, progress: &mut Progress) -> Option<(u64, u32)> {
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
            progress.println(&format!(
                "  >> kill -9 worker in slot {} (pid {pid}) with {} calls in flight",
                victim.slot, victim.in_flight,
            ));
            Some((victim.slot, pid))
        }
        Err(e) => {
            progress.println(&format!("  >> could not kill pid {pid}: {e}"));
            None
        }
    }
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
