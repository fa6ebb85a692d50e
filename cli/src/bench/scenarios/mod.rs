//! The scenarios of `portpool bench`, one file each (latency, throughput
//! and I/O-bound multiplexing, cold start, large payloads, Python's own
//! pools and session binds), and what they share: the interleaved rounds,
//! the pools and floors they start, the cost rows.

mod baselines;
mod beam;
mod large;
mod latency;
mod remote;
mod startup;
mod throughput;

use std::path::PathBuf;
use std::time::Duration;

use portpool::{Pool, PoolBuilder, ProcessLauncher, WorkerCommand};

use crate::bench::calls::request_frame;
use crate::bench::compare::median;
use crate::bench::floor::{Floor, FloorKind};
use crate::bench::usage::Run;
use crate::bench::{Bench, Row};

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
}
