//! `portpool bench`: each scenario beside its baseline, measured in the
//! same run, printed as a table and written as JSON. Measurements, not
//! tests: targets are reported, never asserted.
//!
//! Scenarios:
//! 1. sequential small-call latency on 1 worker vs the raw floor (a minimal
//!    Python loop echoing frames, driven from Rust with plain pipes);
//! 2. throughput with N workers and many callers vs the raw floor with N
//!    processes and the same number of requests in flight;
//! 3. I/O-bound calls (the handler awaits 20 ms), 4 workers, 400 callers:
//!    multiplexed vs one call per worker at a time (exclusive checkout);
//! 4. cold start of 8 workers whose app takes 0.5 s to import: parallel vs
//!    sequential, and vs one worker;
//! 5. 1 MiB binary echo throughput vs the raw floor;
//! 6. Python's multiprocessing.Pool and ProcessPoolExecutor doing 1 and 2;
//! 7. binding a new session at 100 to 100,000 bound sessions (fake workers,
//!    no Python): the cost per bind should stay flat.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portpool::protocol::{encode_frame, Message, Request, DEFAULT_MAX_FRAME};
use portpool::{CallRequest, Pool, PoolBuilder, ProcessLauncher, Value, WorkerCommand};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::stats::{fmt_us, Samples};

/// Options of `portpool bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Short measurements (about 30 s in all) for a smoke run.
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Workers (and raw processes) for the throughput scenario (default: CPUs).
    #[arg(long)]
    workers: Option<usize>,
    /// Concurrent callers in the throughput scenario (default: 32 per worker).
    #[arg(long)]
    callers: Option<usize>,
    /// Seconds per measurement (default 3, or 0.7 with --quick).
    #[arg(long)]
    seconds: Option<f64>,
    /// Run only these scenarios (e.g. --only 1,3).
    #[arg(long, value_delimiter = ',')]
    only: Vec<u32>,
    /// The interpreter (default: $PORTPOOL_PYTHON, the nearest .venv, python3).
    #[arg(long)]
    python: Option<PathBuf>,
    /// The folder with bench_app.py, raw_echo.py and bench_python_pools.py.
    #[arg(long, default_value_os_t = crate::examples_dir())]
    examples: PathBuf,
}

/// One figure with its unit.
#[derive(Debug, Clone, Serialize)]
struct Figure {
    /// What was measured (e.g. "portpool", "raw floor").
    label: String,
    value: f64,
    unit: &'static str,
}

impl Figure {
    fn text(&self) -> String {
        match self.unit {
            "us" => fmt_us(self.value),
            "s" => format!("{:.2} s", self.value),
            "calls/s" => format!("{:.0}/s", self.value),
            "MiB/s" => format!("{:.0} MiB/s", self.value),
            other => format!("{:.2} {other}", self.value),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
enum Cmp {
    AtMost,
    AtLeast,
}

#[derive(Debug, Clone, Serialize)]
struct Target {
    cmp: Cmp,
    ratio: f64,
}

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
struct Row {
    scenario: String,
    what: String,
    portpool: Figure,
    baseline: Figure,
    /// How `ratio` is computed, e.g. "portpool / baseline".
    ratio_is: &'static str,
    ratio: f64,
    target: Option<Target>,
    met: Option<bool>,
    extra: serde_json::Value,
}

impl Row {
    fn new(scenario: &str, what: &str, portpool: Figure, baseline: Figure, ratio_is: &'static str) -> Self {
        let ratio = match ratio_is {
            "baseline / portpool" => baseline.value / portpool.value,
            _ => portpool.value / baseline.value,
        };
        Row {
            scenario: scenario.into(),
            what: what.into(),
            portpool,
            baseline,
            ratio_is,
            ratio,
            target: None,
            met: None,
            extra: serde_json::Value::Null,
        }
    }

    fn target(mut self, cmp: Cmp, ratio: f64) -> Self {
        self.met = Some(match cmp {
            Cmp::AtMost => self.ratio <= ratio,
            Cmp::AtLeast => self.ratio >= ratio,
        });
        self.target = Some(Target { cmp, ratio });
        self
    }

    fn extra(mut self, extra: serde_json::Value) -> Self {
        self.extra = extra;
        self
    }
}

struct Bench {
    python: PathBuf,
    examples: PathBuf,
    seconds: Duration,
    workers: usize,
    callers: usize,
    quick: bool,
    payload: Value,
    rows: Vec<Row>,
    /// Scenario 1's p50 for the sync and async echo, for scenario 6.
    latency_p50: Option<(f64, f64)>,
    /// Scenario 2's throughput, for scenario 6.
    throughput: Option<f64>,
}

pub async fn run(args: BenchArgs) -> ExitCode {
    let python = crate::interpreter(args.python.clone());
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let seconds = args.seconds.unwrap_or(if args.quick { 0.7 } else { 3.0 });
    let Ok(seconds) = Duration::try_from_secs_f64(seconds.max(0.1)) else {
        eprintln!("portpool bench: --seconds must be a positive number");
        return ExitCode::from(2);
    };
    let examples = args.examples.canonicalize().unwrap_or(args.examples.clone());
    for file in ["bench_app.py", "raw_echo.py", "bench_python_pools.py"] {
        if !examples.join(file).is_file() {
            eprintln!(
                "portpool bench: {} is missing; pass --examples with the repository's examples/ folder",
                examples.join(file).display()
            );
            return ExitCode::from(2);
        }
    }
    let mut bench = Bench {
        python,
        examples,
        seconds,
        workers,
        callers: args.callers.unwrap_or(32 * workers).max(1),
        quick: args.quick,
        payload: Value::Map(vec![
            (Value::from("n"), Value::from(1)),
            (Value::from("s"), Value::from("hello, portpool")),
        ]),
        rows: Vec::new(),
        latency_p50: None,
        throughput: None,
    };
    let machine = machine();
    println!(
        "portpool bench{}: {} s per measurement, {} workers, {} callers; {}; interpreter {}",
        if args.quick { " --quick" } else { "" },
        seconds.as_secs_f64(),
        bench.workers,
        bench.callers,
        machine.summary(),
        bench.python.display()
    );
    let wanted = |n: u32| args.only.is_empty() || args.only.contains(&n);
    let started = Instant::now();
    let scenarios: [(u32, &str); 7] = [
        (1, "sequential latency"),
        (2, "throughput"),
        (3, "I/O-bound multiplexing"),
        (4, "cold start"),
        (5, "1 MiB binary echo"),
        (6, "Python's process pools"),
        (7, "session bind cost"),
    ];
    for (n, name) in scenarios {
        if !wanted(n) {
            continue;
        }
        println!("  running {n}. {name} ...");
        let outcome = match n {
            1 => bench.latency().await,
            2 => bench.throughput().await,
            3 => bench.io_bound().await,
            4 => bench.cold_start().await,
            5 => bench.binary().await,
            6 => bench.python_pools().await,
            _ => bench.session_binds().await,
        };
        if let Err(e) = outcome {
            eprintln!("portpool bench: scenario {n} ({name}) failed: {e}");
            return ExitCode::FAILURE;
        }
    }
    print_table(&bench.rows);
    println!(
        "measured {} on {} in {:.0} s",
        today(),
        machine.summary(),
        started.elapsed().as_secs_f64()
    );

    if let Some(path) = &args.json {
        let report = serde_json::json!({
            "date": today(),
            "machine": machine,
            "quick": bench.quick,
            "seconds_per_measurement": seconds.as_secs_f64(),
            "workers": bench.workers,
            "callers": bench.callers,
            "interpreter": bench.python.display().to_string(),
            "rows": bench.rows,
        });
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("portpool bench: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------
// Scenarios

impl Bench {
    fn app(&self) -> PathBuf {
        self.examples.join("bench_app.py")
    }

    fn command(&self) -> WorkerCommand {
        WorkerCommand::python_with(&self.python, self.app())
    }

    fn pool(&self, command: WorkerCommand, workers: usize) -> PoolBuilder {
        Pool::builder(ProcessLauncher::new(command))
            .name("bench")
            .workers(workers)
            .max_queue(4096)
            .checkout_timeout(Duration::from_secs(60))
    }

    fn small_frame(&self, method: &str) -> Result<Vec<u8>, String> {
        request_frame(method, self.payload.clone())
    }

    /// 1. Sequential small calls on one worker vs the raw floor.
    async fn latency(&mut self) -> Result<(), String> {
        let mut raw = RawEcho::spawn(&self.python, &self.examples.join("raw_echo.py")).await?;
        let frame = self.small_frame("echo")?;
        let mut raw_samples = raw.sequential(&frame, self.seconds).await?;
        raw.stop().await;

        let pool = self
            .pool(self.command(), 1)
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let mut p50 = Vec::new();
        for (method, what) in [
            ("echo", "seq. small-call latency p50, 1 worker, sync handler"),
            ("aecho", "seq. small-call latency p50, 1 worker, async handler"),
        ] {
            let mut samples = sequential_calls(&pool, method, &self.payload, self.seconds).await?;
            let row = Row::new(
                if method == "echo" { "1" } else { "1b" },
                what,
                Figure::us("portpool", samples.quantile_us(0.5)),
                Figure::us("raw floor", raw_samples.quantile_us(0.5)),
                "portpool / baseline",
            )
            .extra(serde_json::json!({
                "portpool_p99_us": samples.quantile_us(0.99),
                "raw_p99_us": raw_samples.quantile_us(0.99),
                "portpool_calls": samples.len(),
                "raw_calls": raw_samples.len(),
                "method": method,
            }));
            p50.push(row.portpool.value);
            self.rows.push(if method == "echo" {
                row.target(Cmp::AtMost, 1.15)
            } else {
                row
            });
        }
        self.latency_p50 = Some((p50[0], p50[1]));
        pool.shutdown(Duration::from_secs(5)).await;
        Ok(())
    }

    /// 2. Many callers over N workers vs N raw processes with the same
    ///    number of requests in flight.
    async fn throughput(&mut self) -> Result<(), String> {
        let frame = self.small_frame("echo")?;
        let window = self.callers.div_ceil(self.workers);
        let mut raws = Vec::new();
        for _ in 0..self.workers {
            raws.push(RawEcho::spawn(&self.python, &self.examples.join("raw_echo.py")).await?);
        }
        let seconds = self.seconds;
        let handles: Vec<_> = raws
            .into_iter()
            .map(|mut raw| {
                let frame = frame.clone();
                tokio::spawn(async move {
                    let n = raw.pipelined(&frame, window, seconds).await;
                    raw.stop().await;
                    n
                })
            })
            .collect();
        let mut raw_calls = 0u64;
        for handle in handles {
            raw_calls += handle.await.map_err(|e| e.to_string())??;
        }
        let raw_rate = raw_calls as f64 / seconds.as_secs_f64();

        let pool = self
            .pool(self.command(), self.workers)
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let mut rates = Vec::new();
        for method in ["echo", "aecho"] {
            let calls =
                concurrent_calls(&pool, method, &self.payload, self.callers, self.seconds, false).await?;
            let rate = calls as f64 / seconds.as_secs_f64();
            rates.push(rate);
            let what = format!(
                "throughput, {} workers, {} callers, {} handler",
                self.workers,
                self.callers,
                if method == "echo" { "sync" } else { "async" }
            );
            let row = Row::new(
                if method == "echo" { "2" } else { "2b" },
                &what,
                Figure::rate("portpool", rate),
                Figure::rate(&format!("raw floor x{}", self.workers), raw_rate),
                "portpool / baseline",
            )
            .extra(serde_json::json!({"raw_in_flight_per_process": window, "method": method}));
            self.rows.push(if method == "echo" {
                row.target(Cmp::AtLeast, 0.9)
            } else {
                row
            });
        }
        self.throughput = Some(rates[0]);
        pool.shutdown(Duration::from_secs(5)).await;
        Ok(())
    }

    /// 3. A handler that awaits 20 ms: multiplexed vs exclusive checkout.
    async fn io_bound(&mut self) -> Result<(), String> {
        let (workers, callers) = (4, 400);
        let pool = self
            .pool(self.command(), workers)
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let params = Value::from(20);
        let seconds = self.seconds.max(Duration::from_secs(2));
        let multiplexed = concurrent_calls(&pool, "sleep_ms", &params, callers, seconds, false).await?;
        let exclusive = concurrent_calls(&pool, "sleep_ms", &params, callers, seconds, true).await?;
        pool.shutdown(Duration::from_secs(5)).await;
        let secs = seconds.as_secs_f64();
        self.rows.push(
            Row::new(
                "3",
                "I/O-bound 20 ms, 4 workers, 400 callers",
                Figure::rate("multiplexed", multiplexed as f64 / secs),
                Figure::rate("exclusive checkout", exclusive as f64 / secs),
                "portpool / baseline",
            )
            .target(Cmp::AtLeast, 10.0)
            .extra(serde_json::json!({"ideal_multiplexed_per_s": callers as f64 / 0.020, "ideal_exclusive_per_s": workers as f64 / 0.020})),
        );
        Ok(())
    }

    /// 4. Cold start of 8 workers whose app takes 0.5 s to import.
    async fn cold_start(&mut self) -> Result<(), String> {
        let command = self.command().env("PORTPOOL_BENCH_IMPORT_DELAY", "0.5");
        let reps = if self.quick { 1 } else { 3 };
        let mut one = Vec::new();
        let mut parallel = Vec::new();
        let mut sequential = Vec::new();
        for _ in 0..reps {
            one.push(self.time_build(command.clone(), 1, 1).await?);
            parallel.push(self.time_build(command.clone(), 8, 8).await?);
            sequential.push(self.time_build(command.clone(), 8, 1).await?);
        }
        let (one, parallel, sequential) = (median(one), median(parallel), median(sequential));
        self.rows.push(
            Row::new(
                "4",
                "cold start, 8 workers, 0.5 s import: parallel vs 1 worker",
                Figure::secs("8 in parallel", parallel),
                Figure::secs("1 worker", one),
                "portpool / baseline",
            )
            .target(Cmp::AtMost, 1.3)
            .extra(serde_json::json!({"repetitions": reps, "statistic": "median"})),
        );
        self.rows.push(Row::new(
            "4b",
            "cold start, 8 workers: parallel vs sequential (speed-up)",
            Figure::secs("8 in parallel", parallel),
            Figure::secs("8 one by one", sequential),
            "baseline / portpool",
        ));
        Ok(())
    }

    async fn time_build(
        &self,
        command: WorkerCommand,
        workers: usize,
        at_once: usize,
    ) -> Result<f64, String> {
        let t = Instant::now();
        let pool = self
            .pool(command, workers)
            .startup_concurrency(at_once)
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let took = t.elapsed().as_secs_f64();
        let ready = pool.status().ready;
        pool.shutdown(Duration::from_secs(5)).await;
        if ready < workers {
            return Err(format!(
                "only {ready} of {workers} workers were ready after build()"
            ));
        }
        Ok(took)
    }

    /// 5. 1 MiB binary echo on one worker vs the raw floor.
    async fn binary(&mut self) -> Result<(), String> {
        const MIB: usize = 1 << 20;
        let payload = Value::Binary(vec![0xA5; MIB]);
        let frame = request_frame("echo", payload.clone())?;
        let mut raw = RawEcho::spawn(&self.python, &self.examples.join("raw_echo.py")).await?;
        let raw_samples = raw.sequential(&frame, self.seconds).await?;
        raw.stop().await;
        let pool = self
            .pool(self.command(), 1)
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let samples = sequential_calls(&pool, "echo", &payload, self.seconds).await?;
        pool.shutdown(Duration::from_secs(5)).await;
        // Each call moves 1 MiB each way; count the payload once: MiB/s is
        // calls per second.
        let rate = |s: &Samples| 1e6 / s.mean_us();
        self.rows.push(
            Row::new(
                "5",
                "1 MiB binary echo, 1 worker, sequential",
                Figure::mib("portpool", rate(&samples)),
                Figure::mib("raw floor", rate(&raw_samples)),
                "portpool / baseline",
            )
            .target(Cmp::AtLeast, 0.5),
        );
        Ok(())
    }

    /// 6. multiprocessing.Pool and ProcessPoolExecutor doing 1 and 2.
    async fn python_pools(&mut self) -> Result<(), String> {
        let script = self.examples.join("bench_python_pools.py");
        let output = tokio::process::Command::new(&self.python)
            .arg(&script)
            .args(["--workers", &self.workers.to_string()])
            .args(["--seconds", &format!("{}", self.seconds.as_secs_f64())])
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !output.status.success() {
            return Err(format!(
                "{} failed ({}): {}",
                script.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        let figures: serde_json::Value = serde_json::from_slice(&output.stdout)
            .map_err(|e| format!("{} printed no JSON: {e}", script.display()))?;
        let get = |key: &str, field: &str| figures[key][field].as_f64().unwrap_or(f64::NAN);

        // Measure portpool here too if scenarios 1 or 2 were skipped.
        let (sync_p50, _) = match self.latency_p50 {
            Some(p50) => p50,
            None => {
                let pool = self
                    .pool(self.command(), 1)
                    .build()
                    .await
                    .map_err(|e| e.to_string())?;
                let mut s = sequential_calls(&pool, "echo", &self.payload, self.seconds).await?;
                pool.shutdown(Duration::from_secs(5)).await;
                (s.quantile_us(0.5), 0.0)
            }
        };
        let rate = match self.throughput {
            Some(rate) => rate,
            None => {
                let pool = self
                    .pool(self.command(), self.workers)
                    .build()
                    .await
                    .map_err(|e| e.to_string())?;
                let n =
                    concurrent_calls(&pool, "echo", &self.payload, self.callers, self.seconds, false).await?;
                pool.shutdown(Duration::from_secs(5)).await;
                n as f64 / self.seconds.as_secs_f64()
            }
        };
        for (id, key, name) in [
            ("6a", "mp_pool", "multiprocessing.Pool"),
            ("6b", "executor", "ProcessPoolExecutor"),
        ] {
            self.rows.push(
                Row::new(
                    id,
                    &format!("seq. latency p50 vs {name} (speed-up)"),
                    Figure::us("portpool", sync_p50),
                    Figure::us(name, get(&format!("{key}_latency"), "p50_us")),
                    "baseline / portpool",
                )
                .target(Cmp::AtLeast, 3.0)
                .extra(figures[format!("{key}_latency")].clone()),
            );
        }
        for (id, key, name) in [
            ("6c", "mp_pool", "multiprocessing.Pool"),
            ("6d", "executor", "ProcessPoolExecutor"),
        ] {
            self.rows.push(
                Row::new(
                    id,
                    &format!("throughput, {} processes, vs {name}", self.workers),
                    Figure::rate("portpool", rate),
                    Figure::rate(name, get(&format!("{key}_throughput"), "calls_per_s")),
                    "portpool / baseline",
                )
                .extra(figures[format!("{key}_throughput")].clone()),
            );
        }
        Ok(())
    }
}

impl Bench {
    /// 7. The cost of binding one new session with 100 to 100,000 sessions
    ///    bound, over 4 in-process fake workers (no Python: this measures
    ///    the session layer alone). `max_sessions` is the size, so each
    ///    measured bind also evicts the least recently used session (the
    ///    dearest case). One row per size against the cost at 100.
    async fn session_binds(&mut self) -> Result<(), String> {
        use portpool::{SessionConfig, SessionId, SessionPool};

        let sizes = [100usize, 1_000, 10_000, 100_000];
        let measured = if self.quick { 2_000 } else { 20_000 };
        let mut per_bind = Vec::new();
        for size in sizes {
            let launcher = portpool_testkit::FakeLauncher::new();
            let pool = Pool::builder(launcher)
                .name("bench-sessions")
                .workers(4)
                .heartbeat(None)
                .build()
                .await
                .map_err(|e| e.to_string())?;
            let config = SessionConfig::default().max_sessions(size).idle_ttl(None);
            let sessions = SessionPool::new(pool.clone(), config).map_err(|e| e.to_string())?;
            let fill = Instant::now();
            for _ in 0..size {
                sessions
                    .bind(&SessionId::new())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let fill_us = fill.elapsed().as_secs_f64() * 1e6 / size as f64;
            // The median of 10 batches: the machine may be busy with
            // something else for part of the run.
            let batch = measured / 10;
            let mut batches = Vec::new();
            for _ in 0..10 {
                let started = Instant::now();
                for _ in 0..batch {
                    sessions
                        .bind(&SessionId::new())
                        .await
                        .map_err(|e| e.to_string())?;
                }
                batches.push(started.elapsed().as_secs_f64() * 1e6 / batch as f64);
            }
            batches.sort_by(f64::total_cmp);
            let us = batches[batches.len() / 2];
            if sessions.len().await != size {
                return Err(format!(
                    "{} sessions bound, expected {size}",
                    sessions.len().await
                ));
            }
            println!(
                "    {size:>7} sessions: {} per bind with eviction (median of 10 batches), {} per bind while filling",
                fmt_us(us),
                fmt_us(fill_us)
            );
            per_bind.push((size, us, fill_us));
            drop(sessions);
            pool.shutdown(Duration::from_secs(1)).await;
        }
        let (_, base_us, base_fill_us) = per_bind[0];
        let all: Vec<serde_json::Value> = per_bind
            .iter()
            .map(|(size, us, fill_us)| {
                serde_json::json!({"sessions": size, "bind_evict_us": us, "bind_fill_us": fill_us})
            })
            .collect();
        for (id, (size, us, fill_us)) in ["7", "7b", "7c"].into_iter().zip(&per_bind[1..]) {
            self.rows.push(
                Row::new(
                    id,
                    &format!("session bind + evict at {size} sessions vs at 100 (fakes)"),
                    Figure::us(&format!("{size} sessions"), *us),
                    Figure::us("100 sessions", base_us),
                    "portpool / baseline",
                )
                .target(Cmp::AtMost, 3.0)
                .extra(serde_json::json!({
                    "measured_binds": measured,
                    "bind_fill_us": fill_us,
                    "bind_fill_us_at_100": base_fill_us,
                    "all_sizes": all,
                })),
            );
        }
        Ok(())
    }
}

impl Figure {
    fn us(label: &str, value: f64) -> Self {
        Figure {
            label: label.into(),
            value,
            unit: "us",
        }
    }
    fn rate(label: &str, value: f64) -> Self {
        Figure {
            label: label.into(),
            value,
            unit: "calls/s",
        }
    }
    fn secs(label: &str, value: f64) -> Self {
        Figure {
            label: label.into(),
            value,
            unit: "s",
        }
    }
    fn mib(label: &str, value: f64) -> Self {
        Figure {
            label: label.into(),
            value,
            unit: "MiB/s",
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Warm-up, then sequential calls for `seconds`; one sample per call.
async fn sequential_calls(
    pool: &Pool,
    method: &str,
    params: &Value,
    seconds: Duration,
) -> Result<Samples, String> {
    for _ in 0..100 {
        pool.call_raw(CallRequest::new(method, params.clone()))
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut samples = Samples::default();
    let end = Instant::now() + seconds;
    while Instant::now() < end {
        let t = Instant::now();
        pool.call_raw(CallRequest::new(method, params.clone()))
            .await
            .map_err(|e| e.to_string())?;
        samples.push(t.elapsed());
    }
    Ok(samples)
}

/// `callers` tasks calling in a loop for `seconds` (after a short warm-up);
/// returns the calls completed within the window. With `exclusive`, each
/// call runs on an exclusive lease. Calls still running at the end are
/// dropped (cancelled), not counted.
async fn concurrent_calls(
    pool: &Pool,
    method: &str,
    params: &Value,
    callers: usize,
    seconds: Duration,
    exclusive: bool,
) -> Result<u64, String> {
    let counted = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let warmup = Duration::from_millis(300);
    let start = tokio::time::Instant::now();
    let (window_start, window_end) = (start + warmup, start + warmup + seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..callers {
        let (pool, method, params) = (pool.clone(), method.to_owned(), params.clone());
        let (counted, errors, first_error) = (counted.clone(), errors.clone(), first_error.clone());
        tasks.spawn(async move {
            let work = async {
                loop {
                    let request = CallRequest::new(method.as_str(), params.clone());
                    let outcome = if exclusive {
                        match pool.checkout().await {
                            Ok(lease) => lease.call_raw(request).await,
                            Err(e) => Err(e),
                        }
                    } else {
                        pool.call_raw(request).await
                    };
                    let now = tokio::time::Instant::now();
                    match outcome {
                        Ok(_) if now >= window_start => {
                            counted.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            first_error
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(e.to_string());
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            };
            let _ = tokio::time::timeout_at(window_end, work).await;
        });
    }
    while tasks.join_next().await.is_some() {}
    let errors = errors.load(Ordering::Relaxed);
    if errors > 0 {
        let first = first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_default();
        return Err(format!("{errors} calls failed, first: {first}"));
    }
    Ok(counted.load(Ordering::Relaxed))
}

/// The frame portpool sends for `method(params)`, byte for byte, so the raw
/// floor moves exactly as many bytes.
fn request_frame(method: &str, params: Value) -> Result<Vec<u8>, String> {
    let message = Message::Request(Request {
        id: 1,
        method: method.into(),
        params,
        session: None,
        deadline_ms: None,
        trace: None,
    });
    encode_frame(&message, DEFAULT_MAX_FRAME).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------
// The raw floor

/// A `raw_echo.py` process driven with plain pipes: write a frame, read the
/// same frame back. No portpool, no msgpack decoding on either side.
struct RawEcho {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    buf: Vec<u8>,
}

impl RawEcho {
    async fn spawn(python: &Path, script: &Path) -> Result<Self, String> {
        let mut child = tokio::process::Command::new(python)
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", script.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("raw echo has no pipes".into());
        };
        Ok(RawEcho {
            child,
            stdin,
            stdout,
            buf: Vec::new(),
        })
    }

    async fn write(&mut self, frame: &[u8]) -> Result<(), String> {
        self.stdin
            .write_all(frame)
            .await
            .map_err(|e| format!("raw echo write: {e}"))
    }

    async fn read(&mut self) -> Result<usize, String> {
        let mut header = [0u8; 4];
        self.stdout
            .read_exact(&mut header)
            .await
            .map_err(|e| format!("raw echo read: {e}"))?;
        let len = u32::from_be_bytes(header) as usize;
        self.buf.resize(len, 0);
        self.stdout
            .read_exact(&mut self.buf)
            .await
            .map_err(|e| format!("raw echo read: {e}"))?;
        Ok(len)
    }

    async fn round_trip(&mut self, frame: &[u8]) -> Result<(), String> {
        self.write(frame).await?;
        let len = self.read().await?;
        if len + 4 != frame.len() {
            return Err(format!(
                "raw echo returned {len} bytes for a {}-byte frame",
                frame.len() - 4
            ));
        }
        Ok(())
    }

    async fn sequential(&mut self, frame: &[u8], seconds: Duration) -> Result<Samples, String> {
        for _ in 0..100 {
            self.round_trip(frame).await?;
        }
        let mut samples = Samples::default();
        let end = Instant::now() + seconds;
        while Instant::now() < end {
            let t = Instant::now();
            self.round_trip(frame).await?;
            samples.push(t.elapsed());
        }
        Ok(samples)
    }

    /// Keeps `window` frames in flight for `seconds`; returns the frames
    /// echoed within that time.
    async fn pipelined(&mut self, frame: &[u8], window: usize, seconds: Duration) -> Result<u64, String> {
        let window = window.max(1);
        for _ in 0..window {
            self.write(frame).await?;
        }
        // Warm up like the pool does.
        let warm = Instant::now() + Duration::from_millis(300);
        while Instant::now() < warm {
            self.read().await?;
            self.write(frame).await?;
        }
        let end = Instant::now() + seconds;
        let mut done = 0u64;
        while Instant::now() < end {
            self.read().await?;
            done += 1;
            self.write(frame).await?;
        }
        for _ in 0..window {
            self.read().await?;
        }
        Ok(done)
    }

    async fn stop(mut self) {
        drop(self.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await;
        let _ = self.child.kill().await;
    }
}

// ---------------------------------------------------------------------------
// Output

fn print_table(rows: &[Row]) {
    let header = ["#", "scenario", "portpool", "baseline", "ratio", "target", "met?"];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.scenario.clone(),
                r.what.clone(),
                format!("{} ({})", r.portpool.text(), r.portpool.label),
                format!("{} ({})", r.baseline.text(), r.baseline.label),
                format!("{:.2}x", r.ratio),
                r.target.as_ref().map_or("-".into(), |t| {
                    format!(
                        "{} {:.2}x",
                        if matches!(t.cmp, Cmp::AtMost) { "<=" } else { ">=" },
                        t.ratio
                    )
                }),
                r.met
                    .map_or("-".into(), |m| if m { "yes".into() } else { "NO".into() }),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        println!("| {} |", parts.join(" | "));
    };
    println!();
    line(&header.map(String::from));
    println!(
        "|{}|",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("|")
    );
    for row in &cells {
        line(row);
    }
    println!("ratio: portpool / baseline, except the speed-up rows (4b, 6a, 6b): baseline / portpool");
}

#[derive(Debug, Serialize)]
struct Machine {
    cpus: usize,
    arch: &'static str,
    os: &'static str,
    cpu_model: Option<String>,
}

impl Machine {
    fn summary(&self) -> String {
        format!(
            "{} cores {} {}{}",
            self.cpus,
            self.arch,
            self.os,
            self.cpu_model
                .as_ref()
                .map_or(String::new(), |m| format!(" ({m})"))
        )
    }
}

fn machine() -> Machine {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|info| {
        info.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|m| m.trim().to_owned())
    });
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        arch: std::env::consts::ARCH,
        os: std::env::consts::OS,
        cpu_model,
    }
}

/// Today's date (UTC), `YYYY-MM-DD`.
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_targets() {
        let row = Row::new(
            "1",
            "x",
            Figure::us("a", 110.0),
            Figure::us("b", 100.0),
            "portpool / baseline",
        )
        .target(Cmp::AtMost, 1.15);
        assert!((row.ratio - 1.1).abs() < 1e-9);
        assert_eq!(row.met, Some(true));
        let row = Row::new(
            "6a",
            "x",
            Figure::us("a", 50.0),
            Figure::us("b", 100.0),
            "baseline / portpool",
        )
        .target(Cmp::AtLeast, 3.0);
        assert!((row.ratio - 2.0).abs() < 1e-9);
        assert_eq!(row.met, Some(false));
    }

    #[test]
    fn date_shape() {
        let date = today();
        assert_eq!(date.len(), 10);
        assert!(date.starts_with("20"));
    }

    #[test]
    fn frame_has_header() {
        let frame = request_frame("echo", Value::from("hi")).unwrap();
        assert_eq!(&frame[..4], &((frame.len() - 4) as u32).to_be_bytes());
    }
}
