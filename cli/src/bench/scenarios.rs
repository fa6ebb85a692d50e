//! The scenarios of `portpool bench`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use portpool::{Pool, PoolBuilder, ProcessLauncher, Value, WorkerCommand};

use super::calls::{concurrent_calls, request_frame, sequential_calls, Caller};
use super::compare::{median, round_order};
use super::floor::{Floor, FloorKind};
use super::usage::Run;
use super::{Bench, Cmp, Figure, Row};
use crate::stats::fmt_us;

/// The low-latency mode's budget in rows 1j/1k (`WorkerCommand::spin`).
const SPIN: Duration = Duration::from_micros(100);

/// Warm-up of each throughput run (the pool and the floors alike).
const WARMUP: Duration = Duration::from_millis(100);

/// Per-round figures of each contestant of one interleaved comparison.
struct Rounds {
    runs: Vec<Vec<Run>>,
}

impl Rounds {
    fn new(contestants: usize) -> Self {
        Rounds {
            runs: (0..contestants).map(|_| Vec::new()).collect(),
        }
    }

    /// `f` of each round's run of contestant `who`.
    fn of(&self, who: usize, f: impl Fn(&Run) -> f64) -> Vec<f64> {
        self.runs[who].iter().map(f).collect()
    }

    fn p50(&self, who: usize) -> Vec<f64> {
        self.of(who, |r| r.samples.quantile_us(0.5))
    }

    fn p99(&self, who: usize) -> Vec<f64> {
        self.of(who, |r| r.samples.quantile_us(0.99))
    }

    /// Latency of a closed-loop (throughput) contestant, the median over
    /// rounds: p50, p99, and p99 corrected for coordinated omission.
    fn latency(&self, who: usize) -> serde_json::Value {
        let corrected = self.of(who, |r| r.samples.corrected().quantile_us(0.99));
        serde_json::json!({
            "p50": median(&self.p50(who)),
            "p99": median(&self.p99(who)),
            "p99_corrected": median(&corrected),
        })
    }
}

/// Runs blocking floor work from async code: in place on a multi-threaded
/// runtime (other tasks move to other threads), else directly (nothing else
/// needs to run while a floor is measured).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

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

    /// The small request every small-call contestant gets.
    pub(super) fn small_frame(&self) -> Result<Vec<u8>, String> {
        request_frame("echo", self.payload.clone())
    }

    fn floor(&self, kind: FloorKind) -> Result<Floor, String> {
        Floor::spawn(&self.python, &self.examples, kind)
    }

    /// Rows comparing what portpool's calls cost (CPU, context switches;
    /// host and worker) with what the decoding floor's cost, per round.
    fn cost_rows(&mut self, ids: [&str; 4], what: &str, rounds: &Rounds, portpool: usize, floor: usize) {
        let rows = [
            ("host CPU per call", 0usize),
            ("worker CPU per call", 1),
            ("host context switches per call", 2),
            ("worker context switches per call", 3),
        ];
        for (id, (name, which)) in ids.into_iter().zip(rows) {
            let pick = |r: &Run| match which {
                0 => r.per_call.host_cpu_us,
                1 => r.per_call.worker_cpu_us,
                2 => r.per_call.host_switches,
                _ => r.per_call.worker_switches,
            };
            let unit = if which < 2 { "us CPU/call" } else { "switches/call" };
            let (a, b) = (rounds.of(portpool, pick), rounds.of(floor, pick));
            let floor_side = if which % 2 == 0 {
                "floor driver"
            } else {
                "decoding floor"
            };
            self.rows.push(Row::paired(
                id,
                &format!("{name}, {what}"),
                ("portpool", &a),
                (floor_side, &b),
                unit,
                "portpool / baseline",
            ));
        }
    }

    /// 1. Sequential small calls on one worker (sync and async handler) vs
    ///    the decoding and raw floors, interleaved.
    pub(super) async fn latency(&mut self) -> Result<(), String> {
        let frame = self.small_frame()?;
        let mut decode = self.floor(FloorKind::Decode)?;
        let mut raw = self.floor(FloorKind::Raw)?;
        let pool = self
            .pool(self.command(), 1)
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let spinning = self
            .pool(self.command().spin(SPIN), 1)
            .build()
            .await
            .map_err(|e| e.to_string())?;
        // 0: portpool sync, 1: portpool async, 2: decoding floor, 3: raw floor,
        // 4: portpool sync called from `block_on` (this future) instead of a task,
        // 5: portpool sync in low-latency mode (the host's reader spins).
        let mut rounds = Rounds::new(6);
        for round in 0..self.rounds {
            for who in round_order(round, 6) {
                let run = match who {
                    0 => sequential_calls(&pool, "echo", &self.payload, self.seconds, Caller::Task).await?,
                    1 => sequential_calls(&pool, "aecho", &self.payload, self.seconds, Caller::Task).await?,
                    2 => blocking(|| decode.sequential(&frame, self.seconds))?,
                    3 => blocking(|| raw.sequential(&frame, self.seconds))?,
                    _ => {
                        sequential_calls(&pool, "echo", &self.payload, self.seconds, Caller::BlockOn).await?
                    }
                };
                rounds.runs[who].push(run);
            }
        }
        pool.shutdown(Duration::from_secs(5)).await;
        spinning.shutdown(Duration::from_secs(5)).await;
        blocking(|| {
            decode.stop();
            raw.stop();
        });

        let (sync, asy, dec, rawf) = (rounds.p50(0), rounds.p50(1), rounds.p50(2), rounds.p50(3));
        let calls = |who: usize| rounds.of(who, |r| r.calls as f64).iter().sum::<f64>();
        let extra = serde_json::json!({
            "p50_us_per_round": {"sync": sync, "async": asy, "decoding_floor": dec, "raw_floor": rawf},
            "p99_us_median": {
                "sync": median(&rounds.p99(0)), "async": median(&rounds.p99(1)),
                "decoding_floor": median(&rounds.p99(2)), "raw_floor": median(&rounds.p99(3)),
            },
            "calls": {"sync": calls(0), "async": calls(1), "decoding_floor": calls(2), "raw_floor": calls(3)},
            "request_frame_bytes": frame.len(),
        });
        self.rows.push(
            Row::paired(
                "1",
                "seq. small-call p50, 1 worker, sync handler vs decoding floor",
                ("portpool", &sync),
                ("decoding floor", &dec),
                "us",
                "portpool / baseline",
            )
            .target(Cmp::AtMost, 1.3)
            .extra(extra),
        );
        self.rows.push(Row::paired(
            "1a",
            "seq. small-call p50, 1 worker, sync handler vs raw floor",
            ("portpool", &sync),
            ("raw floor", &rawf),
            "us",
            "portpool / baseline",
        ));
        self.rows.push(
            Row::paired(
                "1b",
                "seq. small-call p50, 1 worker, async handler vs sync handler",
                ("async", &asy),
                ("sync", &sync),
                "us",
                "portpool / baseline",
            )
            .target(Cmp::AtMost, 1.5),
        );
        self.rows.push(Row::paired(
            "1c",
            "decoding floor vs raw floor p50 (the cost of msgpack)",
            ("decoding floor", &dec),
            ("raw floor", &rawf),
            "us",
            "portpool / baseline",
        ));
        self.cost_rows(["1d", "1e", "1f", "1g"], "seq., sync", &rounds, 0, 2);
        // The caller's thread matters: a task is completed on the thread
        // that read its reply; `block_on`'s thread must be woken from it.
        let block_on = rounds.p50(4);
        self.rows.push(Row::paired(
            "1h",
            "seq. small-call p50, sync, caller in block_on vs in a task",
            ("block_on", &block_on),
            ("task", &sync),
            "us",
            "portpool / baseline",
        ));
        let switches = |who: usize| rounds.of(who, |r| r.per_call.host_switches);
        self.rows.push(Row::paired(
            "1i",
            "host context switches per call, seq., sync, caller in block_on vs in a task",
            ("block_on", &switches(4)),
            ("task", &switches(0)),
            "switches/call",
            "portpool / baseline",
        ));
        let spin = rounds.p50(5);
        self.rows.push(
            Row::paired(
                "1j",
                &format!(
                    "seq. small-call p50, sync, low-latency mode (spin {} µs) vs decoding floor",
                    SPIN.as_micros()
                ),
                ("portpool spin", &spin),
                ("decoding floor", &dec),
                "us",
                "portpool / baseline",
            )
            .target(Cmp::AtMost, 1.15),
        );
        let cpu = |who: usize| rounds.of(who, |r| r.per_call.host_cpu_us);
        self.rows.push(Row::paired(
            "1k",
            "host CPU per call, seq., sync, low-latency mode vs default",
            ("spin", &cpu(5)),
            ("default", &cpu(0)),
            "us CPU/call",
            "portpool / baseline",
        ));
        self.latency_p50 = Some(median(&sync));
        Ok(())
    }

    /// 2. Throughput, N workers and C callers vs N decoding-floor processes
    ///    with C requests in flight in all (and the raw floor), interleaved.
    pub(super) async fn throughput(&mut self) -> Result<(), String> {
        let frame = self.small_frame()?;
        let workers = self.workers;
        let mut decode = (0..workers)
            .map(|_| self.floor(FloorKind::Decode))
            .collect::<Result<Vec<_>, _>>()?;
        let mut raw = (0..workers)
            .map(|_| self.floor(FloorKind::Raw))
            .collect::<Result<Vec<_>, _>>()?;
        let pool = self
            .pool(self.command(), workers)
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let most = self.callers.iter().copied().max().unwrap_or(1);
        let mut letters = "abcdefghijklmnopqrstuvwxyz".chars().map(|c| format!("2{c}"));
        let mut id = move || letters.next().unwrap_or_else(|| "2".into());
        let mut cost_ids = Vec::new();
        for callers in self.callers.clone() {
            let window = callers.div_ceil(workers);
            let with_async = callers == most;
            // 0: portpool sync, 1: decoding floor, 2: raw floor, 3: portpool async.
            let contestants = if with_async { 4 } else { 3 };
            let mut rounds = Rounds::new(contestants);
            for round in 0..self.rounds {
                for who in round_order(round, contestants) {
                    let run = match who {
                        0 | 3 => {
                            let method = if who == 0 { "echo" } else { "aecho" };
                            concurrent_calls(
                                &pool,
                                method,
                                &self.payload,
                                callers,
                                WARMUP,
                                self.seconds,
                                false,
                            )
                            .await?
                        }
                        1 => {
                            blocking(|| Floor::pipelined(&mut decode, &frame, window, WARMUP, self.seconds))?
                        }
                        _ => blocking(|| Floor::pipelined(&mut raw, &frame, window, WARMUP, self.seconds))?,
                    };
                    rounds.runs[who].push(run);
                }
            }
            let rate = |who: usize| rounds.of(who, Run::rate);
            let (sync, dec, rawf) = (rate(0), rate(1), rate(2));
            let floor_label = format!("decoding floor x{workers}");
            self.rows.push(
                Row::paired(
                    &id(),
                    &format!(
                        "throughput, {workers} workers, {callers} callers, sync handler vs decoding floor"
                    ),
                    ("portpool", &sync),
                    (&floor_label, &dec),
                    "calls/s",
                    "portpool / baseline",
                )
                .target(Cmp::AtLeast, 0.8)
                .extra(serde_json::json!({
                    "floor_in_flight_per_process": window,
                    "calls_per_s_per_round": {"sync": sync, "decoding_floor": dec, "raw_floor": rawf},
                    "latency_us_median": {
                        "sync": rounds.latency(0), "decoding_floor": rounds.latency(1), "raw_floor": rounds.latency(2),
                    },
                })),
            );
            self.rows.push(Row::paired(
                &id(),
                &format!("throughput, {workers} workers, {callers} callers, sync handler vs raw floor"),
                ("portpool", &sync),
                (&format!("raw floor x{workers}"), &rawf),
                "calls/s",
                "portpool / baseline",
            ));
            if with_async {
                let asy = rate(3);
                self.rows.push(Row::paired(
                    &id(),
                    &format!(
                        "throughput, {workers} workers, {callers} callers, async handler vs decoding floor"
                    ),
                    ("portpool async", &asy),
                    (&floor_label, &dec),
                    "calls/s",
                    "portpool / baseline",
                ));
                self.throughput = Some((callers, median(&sync)));
            }
            cost_ids.push((callers, rounds));
        }
        pool.shutdown(Duration::from_secs(5)).await;
        blocking(|| {
            decode.into_iter().for_each(Floor::stop);
            raw.into_iter().for_each(Floor::stop);
        });
        for (callers, rounds) in cost_ids {
            let ids = [id(), id(), id(), id()];
            self.cost_rows(
                [&ids[0], &ids[1], &ids[2], &ids[3]],
                &format!("{workers} workers x {callers} callers, sync"),
                &rounds,
                0,
                1,
            );
        }
        Ok(())
    }

    /// 3. A handler that awaits 20 ms: multiplexed vs exclusive checkout,
    ///    interleaved.
    pub(super) async fn io_bound(&mut self) -> Result<(), String> {
        let (workers, callers) = (4, 400);
        let pool = self
            .pool(self.command(), workers)
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let params = Value::from(20);
        let seconds = self.seconds.max(Duration::from_millis(500));
        let warmup = Duration::from_millis(200);
        let mut rounds = Rounds::new(2);
        for round in 0..self.rounds {
            for who in round_order(round, 2) {
                let run =
                    concurrent_calls(&pool, "sleep_ms", &params, callers, warmup, seconds, who == 1).await?;
                rounds.runs[who].push(run);
            }
        }
        pool.shutdown(Duration::from_secs(5)).await;
        self.rows.push(
            Row::paired(
                "3",
                "I/O-bound 20 ms, 4 workers, 400 callers",
                ("multiplexed", &rounds.of(0, Run::rate)),
                ("exclusive checkout", &rounds.of(1, Run::rate)),
                "calls/s",
                "portpool / baseline",
            )
            .target(Cmp::AtLeast, 10.0)
            .extra(serde_json::json!({"ideal_multiplexed_per_s": callers as f64 / 0.020, "ideal_exclusive_per_s": workers as f64 / 0.020})),
        );
        Ok(())
    }

    /// 4. Cold start of 8 workers whose app takes 0.5 s to import: 8 in
    ///    parallel vs 1 worker (and vs 8 one by one), interleaved.
    pub(super) async fn cold_start(&mut self) -> Result<(), String> {
        let command = self.command().env("PORTPOOL_BENCH_IMPORT_DELAY", "0.5");
        // 0: one worker, 1: 8 in parallel, 2: 8 one by one (4 s a round:
        // measured once with --quick, outside the rounds).
        let contestants = if self.quick { 2 } else { 3 };
        let mut took: Vec<Vec<f64>> = vec![Vec::new(); 3];
        for round in 0..self.rounds {
            for who in round_order(round, contestants) {
                let (workers, at_once) = [(1, 1), (8, 8), (8, 1)][who];
                took[who].push(self.time_build(command.clone(), workers, at_once).await?);
            }
        }
        if self.quick {
            took[2].push(self.time_build(command.clone(), 8, 1).await?);
        }
        self.rows.push(
            Row::paired(
                "4",
                "cold start, 8 workers, 0.5 s import: parallel vs 1 worker",
                ("8 in parallel", &took[1]),
                ("1 worker", &took[0]),
                "s",
                "portpool / baseline",
            )
            .target(Cmp::AtMost, 1.3)
            .extra(serde_json::json!({"seconds_per_round": {"one": took[0], "parallel": took[1], "sequential": took[2]}})),
        );
        self.rows.push(if self.quick {
            Row::new(
                "4b",
                "cold start, 8 workers: parallel vs sequential (speed-up)",
                Figure::secs("8 in parallel", median(&took[1])),
                Figure::secs("8 one by one", median(&took[2])),
                "baseline / portpool",
            )
        } else {
            Row::paired(
                "4b",
                "cold start, 8 workers: parallel vs sequential (speed-up)",
                ("8 in parallel", &took[1]),
                ("8 one by one", &took[2]),
                "s",
                "baseline / portpool",
            )
        });
        Ok(())
    }
    pub(super) async fn time_build(
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

    /// 5. 1 MiB binary echo on one worker vs the decoding and raw floors,
    ///    interleaved.
    pub(super) async fn binary(&mut self) -> Result<(), String> {
        const MIB: usize = 1 << 20;
        let payload = Value::Binary(vec![0xA5; MIB]);
        let frame = request_frame("echo", payload.clone())?;
        let mut decode = self.floor(FloorKind::Decode)?;
        let mut raw = self.floor(FloorKind::Raw)?;
        // Large payloads are what `pipe_buffer` is for: a 1 MiB frame then
        // goes through the pipe in one write (the floors keep default pipes).
        let pool = self
            .pool(self.command().pipe_buffer(MIB), 1)
            .build()
            .await
            .map_err(|e| e.to_string())?;
        // 0: portpool, 1: decoding floor, 2: raw floor.
        let mut rounds = Rounds::new(3);
        for round in 0..self.rounds {
            for who in round_order(round, 3) {
                let run = match who {
                    0 => sequential_calls(&pool, "echo", &payload, self.seconds, Caller::Task).await?,
                    1 => blocking(|| decode.sequential(&frame, self.seconds))?,
                    _ => blocking(|| raw.sequential(&frame, self.seconds))?,
                };
                rounds.runs[who].push(run);
            }
        }
        pool.shutdown(Duration::from_secs(5)).await;
        blocking(|| {
            decode.stop();
            raw.stop();
        });
        // Each call moves 1 MiB each way; count the payload once: MiB/s is
        // calls per second.
        let mibs = |who: usize| rounds.of(who, |r| 1e6 / r.samples.mean_us());
        let cost = |who: usize| {
            serde_json::json!({
                "host_cpu_us_per_call": median(&rounds.of(who, |r| r.per_call.host_cpu_us)),
                "worker_cpu_us_per_call": median(&rounds.of(who, |r| r.per_call.worker_cpu_us)),
            })
        };
        self.rows.push(
            Row::paired(
                "5",
                "1 MiB binary echo, 1 worker (1 MiB pipes), sequential, vs decoding floor",
                ("portpool", &mibs(0)),
                ("decoding floor", &mibs(1)),
                "MiB/s",
                "portpool / baseline",
            )
            .target(Cmp::AtLeast, 0.7)
            .extra(serde_json::json!({"portpool": cost(0), "decoding_floor": cost(1), "raw_floor": cost(2)})),
        );
        self.rows.push(Row::paired(
            "5a",
            "1 MiB binary echo, 1 worker (1 MiB pipes), sequential, vs raw floor",
            ("portpool", &mibs(0)),
            ("raw floor", &mibs(2)),
            "MiB/s",
            "portpool / baseline",
        ));
        for (id, name, side, pick) in [
            (
                "5b",
                "host",
                "floor driver",
                (|r: &Run| r.per_call.host_faults) as fn(&Run) -> f64,
            ),
            ("5c", "worker", "decoding floor", |r: &Run| {
                r.per_call.worker_faults
            }),
        ] {
            self.rows.push(Row::paired(
                id,
                &format!("{name} page faults per call, 1 MiB echo"),
                ("portpool", &rounds.of(0, pick)),
                (side, &rounds.of(1, pick)),
                "faults/call",
                "portpool / baseline",
            ));
        }
        Ok(())
    }

    /// 6. multiprocessing.Pool and ProcessPoolExecutor doing 1 and 2.
    pub(super) async fn python_pools(&mut self) -> Result<(), String> {
        let script = self.examples.join("bench_python_pools.py");
        let output = tokio::process::Command::new(&self.python)
            .arg(&script)
            .args(["--workers", &self.workers.to_string()])
            .args([
                "--seconds",
                &format!("{}", (self.seconds.as_secs_f64() * 2.0).max(0.5)),
            ])
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
        let sync_p50 = match self.latency_p50 {
            Some(p50) => p50,
            None => {
                let pool = self
                    .pool(self.command(), 1)
                    .build()
                    .await
                    .map_err(|e| e.to_string())?;
                let run = sequential_calls(&pool, "echo", &self.payload, self.seconds, Caller::Task).await;
                pool.shutdown(Duration::from_secs(5)).await;
                run?.samples.quantile_us(0.5)
            }
        };
        let (callers, rate) = match self.throughput {
            Some(measured) => measured,
            None => {
                let callers = self.callers.iter().copied().max().unwrap_or(64);
                let pool = self
                    .pool(self.command(), self.workers)
                    .build()
                    .await
                    .map_err(|e| e.to_string())?;
                let run =
                    concurrent_calls(&pool, "echo", &self.payload, callers, WARMUP, self.seconds, false)
                        .await;
                pool.shutdown(Duration::from_secs(5)).await;
                (callers, run?.rate())
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
                    &format!(
                        "throughput, {} processes, vs {name} ({callers} portpool callers)",
                        self.workers
                    ),
                    Figure::rate("portpool", rate),
                    Figure::rate(name, get(&format!("{key}_throughput"), "calls_per_s")),
                    "portpool / baseline",
                )
                .extra(figures[format!("{key}_throughput")].clone()),
            );
        }
        Ok(())
    }

    /// 7. The cost of binding one new session with 100 to 100,000 sessions
    ///    bound, over 4 in-process fake workers (no Python: this measures
    ///    the session layer alone). `max_sessions` is the size, so each
    ///    measured bind also evicts the least recently used session (the
    ///    dearest case). One row per size against the cost at 100.
    pub(super) async fn session_binds(&mut self) -> Result<(), String> {
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
