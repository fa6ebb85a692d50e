//! Scenario 9: a BEAM pool of Erlang ports to the same Python worker
//! (`examples/beam_pool.escript`), what an Elixir service would run instead
//! of portpool. Interleaved with portpool round by round, on the same
//! worker program, the same app and the same request.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use serde::Deserialize;

use super::{blocking, Rounds, WARMUP};
use crate::bench::calls::{concurrent_calls, sequential_calls, Caller};
use crate::bench::compare::round_order;
use crate::bench::usage::Run;
use crate::bench::{Bench, Cmp, Row};

/// The interpreter of Erlang scripts (Debian's `erlang-base`).
const ESCRIPT: &str = "escript";

/// One answer of the escript (see its header).
#[derive(Debug, Deserialize)]
struct Answer {
    calls: u64,
    secs: f64,
    p50_us: f64,
    all_calls: u64,
    cpu_s: f64,
    worker_cpu_s: f64,
    bad: u64,
}

/// The BEAM side of each round, per figure.
#[derive(Default)]
struct BeamRounds {
    p50: Vec<f64>,
    rate: Vec<f64>,
    host_cpu_us: Vec<f64>,
    worker_cpu_us: Vec<f64>,
}

impl BeamRounds {
    fn push(&mut self, answer: &Answer) {
        let all = answer.all_calls.max(1) as f64;
        self.p50.push(answer.p50_us);
        self.rate.push(answer.calls as f64 / answer.secs.max(1e-9));
        self.host_cpu_us.push(answer.cpu_s * 1e6 / all);
        self.worker_cpu_us.push(answer.worker_cpu_s * 1e6 / all);
    }
}

/// The running escript: its workers stay up between commands, as a pool's do.
struct BeamPool {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl BeamPool {
    fn start(
        escript: &Path,
        script: &Path,
        python: &Path,
        app: &Path,
        workers: usize,
        params: &[u8],
    ) -> Result<Self, String> {
        let hex: String = params.iter().map(|b| format!("{b:02x}")).collect();
        let mut child = Command::new(escript)
            .arg(script)
            .arg(python)
            .arg(app)
            .arg(workers.to_string())
            .arg(hex)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot run {} {}: {e}", escript.display(), script.display()))?;
        let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("the escript's stdio was not piped".into());
        };
        let mut pool = BeamPool {
            child,
            input,
            output: BufReader::new(output),
        };
        // Compiler warnings, if any, come first on stdout.
        let mut before = Vec::new();
        loop {
            let line = pool.line().map_err(|e| format!("{e}; it printed {before:?}"))?;
            if line.starts_with("ready ") {
                return Ok(pool);
            }
            before.push(line);
        }
    }

    fn line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        match self.output.read_line(&mut line) {
            Ok(0) => Err(format!(
                "the BEAM pool exited ({})",
                self.child
                    .wait()
                    .map_or_else(|e| e.to_string(), |s| s.to_string())
            )),
            Ok(_) => Ok(line.trim_end().to_owned()),
            Err(e) => Err(format!("reading the BEAM pool's answer failed: {e}")),
        }
    }

    /// Sends one command and reads its answer; a result that was not the
    /// params is an error (the baseline must do the same work correctly).
    fn run(&mut self, command: &str) -> Result<Answer, String> {
        writeln!(self.input, "{command}")
            .and_then(|()| self.input.flush())
            .map_err(|e| format!("the BEAM pool stopped reading: {e}"))?;
        let line = self.line()?;
        let answer: Answer =
            serde_json::from_str(&line).map_err(|e| format!("the BEAM pool answered {line:?}: {e}"))?;
        if answer.bad > 0 || answer.calls == 0 {
            return Err(format!("the BEAM pool's `{command}` went wrong: {line}"));
        }
        Ok(answer)
    }
}

impl Drop for BeamPool {
    fn drop(&mut self) {
        let _ = writeln!(self.input, "quit");
        let _ = self.input.flush();
        // It closes its ports (the workers see end of file) and halts.
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A runtime held by async code, on every path out of it (an early `?`
/// included): dropping a `Runtime` there would panic, since it blocks
/// until its threads end; this one is shut down in the background.
struct OwnedRuntime {
    handle: tokio::runtime::Handle,
    runtime: Option<tokio::runtime::Runtime>,
}

impl OwnedRuntime {
    fn new(runtime: tokio::runtime::Runtime) -> Self {
        OwnedRuntime {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        }
    }
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// `escript` on `PATH`, if there.
fn find_escript() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(ESCRIPT))
        .find(|candidate| candidate.is_file())
}

impl Bench {
    /// 9. portpool vs a BEAM pool of ports, interleaved: sequential latency
    ///    (1 worker) and throughput (N workers, each caller count), with the
    ///    CPU each side spends per call.
    pub(crate) async fn beam(&mut self) -> Result<(), String> {
        let Some(escript) = find_escript() else {
            println!(
                "    skipped: `{ESCRIPT}` not found (Erlang; `cargo xtask setup` installs Debian's erlang-base)"
            );
            return Ok(());
        };
        let mut params = Vec::new();
        rmpv::encode::write_value(&mut params, &self.payload).map_err(|e| e.to_string())?;
        let script = self.examples.join("beam_pool.escript");
        let (python, app, workers, seconds) = (self.python.clone(), self.app(), self.workers, self.seconds);
        let ms = seconds.as_millis().max(1);
        let mut beam = blocking(|| BeamPool::start(&escript, &script, &python, &app, workers, &params))?;
        let single = self
            .pool(self.command(), 1)
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let pool = self
            .pool(self.command(), workers)
            .build()
            .await
            .map_err(|e| e.to_string())?;

        // The same pool on a runtime with one worker thread, as a service
        // on a small machine may run it: with tokio's default of one thread
        // per core, on 2 cores shared with the workers, the second thread
        // mostly wakes the first (futex) and takes CPU from the workers.
        let lean = OwnedRuntime::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("bench-1-thread")
                .enable_all()
                .build()
                .map_err(|e| format!("cannot build a 1-thread runtime: {e}"))?,
        );
        let lean_pool = {
            let builder = self.pool(self.command(), workers).name("bench-1-thread");
            lean.handle
                .spawn(async move { builder.build().await })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?
        };

        // Sequential: portpool (0) and the BEAM pool, interleaved.
        let mut ours = Rounds::new(1);
        let mut theirs = BeamRounds::default();
        for round in 0..self.rounds {
            for who in round_order(round, 2) {
                if who == 0 {
                    let run = sequential_calls(&single, "echo", &self.payload, seconds, Caller::Task).await?;
                    ours.runs[0].push(run);
                } else {
                    theirs.push(&blocking(|| beam.run(&format!("seq {ms}")))?);
                }
            }
        }
        single.shutdown(Duration::from_secs(5)).await;
        self.rows.push(
            Row::paired(
                "9",
                "seq. small-call p50, 1 worker, vs a BEAM pool of Erlang ports (same worker)",
                ("portpool", &ours.p50(0)),
                ("BEAM ports", &theirs.p50),
                "us",
                "portpool / baseline",
            )
            .target(Cmp::AtMost, 1.0),
        );
        self.beam_cost_rows(["9a", "9b"], "seq.", &ours.runs[0], &theirs);

        // Throughput: portpool, the BEAM pool multiplexing (many calls in
        // flight per port, as portpool), and exclusive checkout (NimblePool).
        let mut letters = "cdefghijklmnopqrstuvwxyz".chars().map(|c| format!("9{c}"));
        let mut id = move || letters.next().unwrap_or_else(|| "9".into());
        let warmup_ms = WARMUP.as_millis();
        let mut on_one_thread = Vec::new();
        for callers in self.callers.clone() {
            let mut ours = Rounds::new(1);
            let mut lean_runs = Vec::new();
            let (mut mux, mut checkout) = (BeamRounds::default(), BeamRounds::default());
            for round in 0..self.rounds {
                for who in round_order(round, 4) {
                    match who {
                        0 => {
                            let run = concurrent_calls(
                                &pool,
                                "echo",
                                &self.payload,
                                callers,
                                WARMUP,
                                seconds,
                                false,
                            )
                            .await?;
                            ours.runs[0].push(run);
                        }
                        1 => mux.push(&blocking(|| {
                            beam.run(&format!("mux {callers} {warmup_ms} {ms}"))
                        })?),
                        2 => checkout.push(&blocking(|| {
                            beam.run(&format!("checkout {callers} {warmup_ms} {ms}"))
                        })?),
                        _ => {
                            let (pool, payload) = (lean_pool.clone(), self.payload.clone());
                            let run = lean
                                .handle
                                .spawn(async move {
                                    concurrent_calls(&pool, "echo", &payload, callers, WARMUP, seconds, false)
                                        .await
                                })
                                .await
                                .map_err(|e| e.to_string())??;
                            lean_runs.push(run);
                        }
                    }
                }
            }
            let rate = ours.of(0, Run::rate);
            self.rows.push(
                Row::paired(
                    &id(),
                    &format!("throughput, {workers} workers, {callers} callers, vs BEAM ports multiplexed"),
                    ("portpool", &rate),
                    ("BEAM ports", &mux.rate),
                    "calls/s",
                    "portpool / baseline",
                )
                .target(Cmp::AtLeast, 1.0),
            );
            // The issue's own baseline was a NimblePool of ports: this row.
            self.rows.push(
                Row::paired(
                    &id(),
                    &format!("throughput, {workers} workers, {callers} callers, vs BEAM exclusive checkout"),
                    ("portpool", &rate),
                    ("BEAM checkout", &checkout.rate),
                    "calls/s",
                    "portpool / baseline",
                )
                .target(Cmp::AtLeast, 1.0),
            );
            let what = format!("{workers} workers x {callers} callers");
            let (host_id, worker_id) = (id(), id());
            self.beam_cost_rows([host_id.as_str(), worker_id.as_str()], &what, &ours.runs[0], &mux);
            on_one_thread.push((callers, lean_runs, mux));
        }
        // The 1-thread rows come last, so the ids above stay as they were.
        for (callers, runs, mux) in on_one_thread {
            let rate: Vec<f64> = runs.iter().map(Run::rate).collect();
            let host: Vec<f64> = runs.iter().map(|r| r.per_call.host_cpu_us).collect();
            self.rows.push(
                Row::paired(
                    &id(),
                    &format!(
                        "throughput, {workers} workers, {callers} callers, portpool on a 1-thread runtime vs BEAM ports multiplexed"
                    ),
                    ("portpool 1 thread", &rate),
                    ("BEAM ports", &mux.rate),
                    "calls/s",
                    "portpool / baseline",
                )
                .target(Cmp::AtLeast, 1.0),
            );
            self.rows.push(Row::paired(
                &id(),
                &format!("host CPU per call, {workers} workers x {callers} callers, 1-thread runtime vs BEAM ports"),
                ("portpool 1 thread", &host),
                ("BEAM", &mux.host_cpu_us),
                "us CPU/call",
                "portpool / baseline",
            ));
        }
        lean.handle
            .spawn(async move { lean_pool.shutdown(Duration::from_secs(5)).await })
            .await
            .map_err(|e| e.to_string())?;
        drop(lean);
        pool.shutdown(Duration::from_secs(5)).await;
        drop(beam);
        Ok(())
    }

    /// Host and worker CPU per call, portpool vs the BEAM pool, per round.
    fn beam_cost_rows(&mut self, ids: [&str; 2], what: &str, ours: &[Run], theirs: &BeamRounds) {
        let host: Vec<f64> = ours.iter().map(|r| r.per_call.host_cpu_us).collect();
        let worker: Vec<f64> = ours.iter().map(|r| r.per_call.worker_cpu_us).collect();
        self.rows.push(Row::paired(
            ids[0],
            &format!("host CPU per call, {what}, vs BEAM ports"),
            ("portpool", &host),
            ("BEAM", &theirs.host_cpu_us),
            "us CPU/call",
            "portpool / baseline",
        ));
        self.rows.push(Row::paired(
            ids[1],
            &format!("worker CPU per call, {what}, vs BEAM ports"),
            ("portpool", &worker),
            ("BEAM", &theirs.worker_cpu_us),
            "us CPU/call",
            "portpool / baseline",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::OwnedRuntime;

    /// The scenario's 1-thread runtime is dropped in async code on every
    /// path out (an early error included); a plain `Runtime` dropped there
    /// panics ("Cannot drop a runtime in a context where blocking is not
    /// allowed").
    #[tokio::test]
    async fn an_owned_runtime_dropped_in_async_code_does_not_panic() {
        let runtime = OwnedRuntime::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap(),
        );
        let answer = runtime.handle.spawn(async { 42 }).await.unwrap();
        assert_eq!(answer, 42);
        drop(runtime);
    }
}
