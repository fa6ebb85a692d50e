//! `portpool bench`: each scenario beside its baseline, measured in the
//! same run, printed as a table and written as JSON. Measurements, not
//! tests: targets are reported, never asserted.
//!
//! Every comparison is interleaved: the contestants run one after the other
//! in rounds (A, B, then B, A, ...; at least 3 rounds), each round gives one
//! ratio, and a row reports the median ratio with its spread (min–max), so
//! a burst of load on the shared machine moves one round, not the row. The
//! machine's load (`/proc/loadavg`) is printed with the table.
//!
//! The floors ([`floor`]) are minimal Python loops driven from Rust with
//! plain blocking pipes: the raw floor echoes bytes; the decoding floor
//! decodes each request with msgpack and encodes a response like the
//! runtime does. Both get the very frame portpool sends.
//!
//! Scenarios:
//! 1. sequential small-call latency on 1 worker (sync and async handler) vs
//!    the decoding and raw floors, with CPU time and context switches per
//!    call (host and worker);
//! 2. throughput with 2 workers and 8 / 64 callers vs 2 floor processes
//!    with the same number of requests in flight, with the same per-call
//!    costs;
//! 3. I/O-bound calls (the handler awaits 20 ms), 4 workers, 400 callers:
//!    multiplexed vs one call per worker at a time (exclusive checkout);
//! 4. cold start of 8 workers whose app takes 0.5 s to import: parallel vs
//!    one worker, and vs sequential; the same for an app without async
//!    handlers (no event loop, no asyncio); each worker's CPU until ready;
//! 5. 1 MiB binary echo throughput vs the floors;
//! 6. Python's multiprocessing.Pool and ProcessPoolExecutor doing 1 and 2;
//! 7. binding a new session at 100 to 100,000 bound sessions (fake workers,
//!    no Python): the cost per bind should stay flat.

mod calls;
mod compare;
mod floor;
mod scenarios;
mod usage;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use portpool::Value;
use serde::Serialize;

use crate::stats::fmt_us;
use compare::Ratio;

/// Options of `portpool bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// Short measurements (3 rounds of 0.3 s; well under a minute in all).
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Workers (and floor processes) for the throughput scenario.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Concurrent callers in the throughput scenario, one comparison each
    /// (default: 8,64).
    #[arg(long, value_delimiter = ',')]
    callers: Vec<usize>,
    /// Rounds of each interleaved comparison (default 5, or 3 with --quick;
    /// at least 3).
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds per contestant per round (default 1, or 0.3 with --quick).
    #[arg(long)]
    seconds: Option<f64>,
    /// Run only these scenarios (e.g. --only 1,3).
    #[arg(long, value_delimiter = ',')]
    only: Vec<u32>,
    /// The interpreter (default: $PORTPOOL_PYTHON, the nearest .venv, python3).
    #[arg(long)]
    python: Option<PathBuf>,
    /// The folder with bench_app.py, raw_echo.py, decode_echo.py and
    /// bench_python_pools.py.
    #[arg(long, default_value_os_t = crate::examples_dir())]
    examples: PathBuf,
}

/// One figure with its unit.
#[derive(Debug, Clone, Serialize)]
struct Figure {
    /// What was measured (e.g. "portpool", "decoding floor").
    label: String,
    value: f64,
    unit: &'static str,
}

impl Figure {
    fn new(label: &str, value: f64, unit: &'static str) -> Self {
        Figure {
            label: label.into(),
            value,
            unit,
        }
    }
    fn us(label: &str, value: f64) -> Self {
        Figure::new(label, value, "us")
    }
    fn rate(label: &str, value: f64) -> Self {
        Figure::new(label, value, "calls/s")
    }
    fn secs(label: &str, value: f64) -> Self {
        Figure::new(label, value, "s")
    }

    fn text(&self) -> String {
        match self.unit {
            "us" => fmt_us(self.value),
            "s" => format!("{:.2} s", self.value),
            "calls/s" => format!("{:.0}/s", self.value),
            "MiB/s" => format!("{:.0} MiB/s", self.value),
            "us CPU/call" => format!("{:.1} µs CPU", self.value),
            "switches/call" => format!("{:.2} cs", self.value),
            "faults/call" => format!("{:.1} faults", self.value),
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
    /// The measured side (for an interleaved row: the median over rounds).
    portpool: Figure,
    /// What it is compared with (likewise).
    baseline: Figure,
    /// How `ratio` is computed, e.g. "portpool / baseline".
    ratio_is: &'static str,
    /// For an interleaved row, the median of the per-round ratios.
    ratio: f64,
    /// The smallest and largest per-round ratio (interleaved rows).
    ratio_min: Option<f64>,
    ratio_max: Option<f64>,
    /// Rounds paired (interleaved rows).
    rounds: Option<usize>,
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
            ratio_min: None,
            ratio_max: None,
            rounds: None,
            target: None,
            met: None,
            extra: serde_json::Value::Null,
        }
    }

    /// An interleaved row: the figures are the medians of `a` and `b` over
    /// the rounds; the ratio is the median of the per-round ratios
    /// (`a[i] / b[i]`, or `b[i] / a[i]` for a speed-up row).
    #[allow(clippy::too_many_arguments)]
    fn paired(
        scenario: &str,
        what: &str,
        (a_label, a): (&str, &[f64]),
        (b_label, b): (&str, &[f64]),
        unit: &'static str,
        ratio_is: &'static str,
    ) -> Self {
        let ratio = match ratio_is {
            "baseline / portpool" => Ratio::paired(b, a),
            _ => Ratio::paired(a, b),
        };
        let mut row = Row::new(
            scenario,
            what,
            Figure::new(a_label, compare::median(a), unit),
            Figure::new(b_label, compare::median(b), unit),
            ratio_is,
        );
        row.ratio = ratio.median;
        row.ratio_min = Some(ratio.min);
        row.ratio_max = Some(ratio.max);
        row.rounds = Some(ratio.rounds);
        row
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
    /// Per contestant per round.
    seconds: Duration,
    rounds: usize,
    workers: usize,
    callers: Vec<usize>,
    quick: bool,
    payload: Value,
    rows: Vec<Row>,
    /// Scenario 1's median p50 for the sync handler, for scenario 6.
    latency_p50: Option<f64>,
    /// Scenario 2's sync throughput with the most callers, for scenario 6.
    throughput: Option<(usize, f64)>,
}

/// The machine's load average, `/proc/loadavg`'s first three fields.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) async fn run(args: BenchArgs) -> ExitCode {
    let python = crate::interpreter(args.python.clone());
    let seconds = args.seconds.unwrap_or(if args.quick { 0.3 } else { 1.0 });
    let Ok(seconds) = Duration::try_from_secs_f64(seconds.max(0.05)) else {
        eprintln!("portpool bench: --seconds must be a positive number");
        return ExitCode::from(2);
    };
    let rounds = args.rounds.unwrap_or(if args.quick { 3 } else { 5 }).max(3);
    let examples = args.examples.canonicalize().unwrap_or(args.examples.clone());
    for file in [
        "bench_app.py",
        "raw_echo.py",
        "decode_echo.py",
        "bench_python_pools.py",
        "beam_pool.escript",
    ] {
        if !examples.join(file).is_file() {
            eprintln!(
                "portpool bench: {} is missing; pass --examples with the repository's examples/ folder",
                examples.join(file).display()
            );
            return ExitCode::from(2);
        }
    }
    let mut callers = if args.callers.is_empty() {
        vec![8, 64]
    } else {
        args.callers.clone()
    };
    callers.iter_mut().for_each(|c| *c = (*c).max(1));
    let mut bench = Bench {
        python,
        examples,
        seconds,
        rounds,
        workers: args.workers.max(1),
        callers,
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
    let frame_len = bench.small_frame().map_or(0, |f| f.len());
    let load_before = loadavg();
    println!(
        "portpool bench{}: {} rounds x {} s per contestant, interleaved; {} workers, callers {:?}; \
         request frame {frame_len} bytes; {}; interpreter {}; load {load_before}",
        if args.quick { " --quick" } else { "" },
        rounds,
        seconds.as_secs_f64(),
        bench.workers,
        bench.callers,
        machine.summary(),
        bench.python.display()
    );
    let wanted = |n: u32| args.only.is_empty() || args.only.contains(&n);
    let started = Instant::now();
    let scenarios: [(u32, &str); 9] = [
        (1, "sequential latency"),
        (2, "throughput"),
        (3, "I/O-bound multiplexing"),
        (4, "cold start"),
        (5, "1 MiB binary echo"),
        (6, "Python's process pools"),
        (7, "session bind cost"),
        (8, "remote workers on loopback (TCP, TLS)"),
        (9, "a BEAM pool of Erlang ports to the same worker"),
    ];
    let mut loads = serde_json::Map::new();
    for (n, name) in scenarios {
        if !wanted(n) {
            continue;
        }
        let load = loadavg();
        println!("  running {n}. {name} ... (load {load})");
        loads.insert(n.to_string(), load.into());
        let outcome = match n {
            1 => bench.latency().await,
            2 => bench.throughput().await,
            3 => bench.io_bound().await,
            4 => bench.cold_start().await,
            5 => bench.binary().await,
            6 => bench.python_pools().await,
            7 => bench.session_binds().await,
            8 => bench.remote_latency().await,
            _ => bench.beam().await,
        };
        if let Err(e) = outcome {
            eprintln!("portpool bench: scenario {n} ({name}) failed: {e}");
            return ExitCode::FAILURE;
        }
    }
    let load_after = loadavg();
    print_table(&bench.rows);
    println!(
        "measured {} on {} in {:.0} s; {} rounds x {:.2} s per contestant; load (1, 5, 15 min) {load_before} before, {load_after} after",
        today(),
        machine.summary(),
        started.elapsed().as_secs_f64(),
        rounds,
        seconds.as_secs_f64(),
    );

    if let Some(path) = &args.json {
        let report = serde_json::json!({
            "date": today(),
            "machine": machine,
            "load_before": load_before,
            "load_after": load_after,
            "load_at_scenario_start": loads,
            "quick": bench.quick,
            "rounds": rounds,
            "seconds_per_contestant_per_round": seconds.as_secs_f64(),
            "request_frame_bytes": frame_len,
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
// Output

/// The columns of the table (README pastes it: keep them).
const COLUMNS: [&str; 7] = [
    "#",
    "scenario",
    "portpool",
    "baseline",
    "ratio (min–max)",
    "target",
    "met?",
];

fn print_table(rows: &[Row]) {
    println!();
    println!("{}", table(rows));
    println!(
        "ratio: portpool / baseline (the median of per-round ratios, min–max over the rounds), \
         except the speed-up rows (4b, 6a, 6b): baseline / portpool; cs = context switches"
    );
}

/// The rows as a GitHub-markdown table, one line per row.
fn table(rows: &[Row]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.scenario.clone(),
                r.what.clone(),
                format!("{} ({})", r.portpool.text(), r.portpool.label),
                format!("{} ({})", r.baseline.text(), r.baseline.label),
                ratio_text(r),
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
    crate::table::markdown(&COLUMNS, &cells)
}

fn ratio_text(row: &Row) -> String {
    if row.ratio.is_nan() {
        return "- (0 / 0)".into();
    }
    match (row.ratio_min, row.ratio_max) {
        (Some(min), Some(max)) => format!("{:.2}x ({min:.2}–{max:.2})", row.ratio),
        _ => format!("{:.2}x", row.ratio),
    }
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
    utc_date(std::time::SystemTime::now())
}

/// The UTC calendar date of `time`, `YYYY-MM-DD` (`unknown` outside the
/// years -9999..=9999).
fn utc_date(time: std::time::SystemTime) -> String {
    jiff::Timestamp::try_from(time).map_or_else(
        |_| "unknown".into(),
        |t| t.to_zoned(jiff::tz::TimeZone::UTC).date().to_string(),
    )
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
    fn paired_rows_use_the_median_round_ratio() {
        // Rounds: 30/20, 40/20, 90/30 -> 1.5, 2.0, 3.0.
        let row = Row::paired(
            "1",
            "x",
            ("portpool", &[30.0, 40.0, 90.0]),
            ("floor", &[20.0, 20.0, 30.0]),
            "us",
            "portpool / baseline",
        )
        .target(Cmp::AtMost, 1.3);
        assert_eq!(row.ratio, 2.0);
        assert_eq!(
            (row.ratio_min, row.ratio_max, row.rounds),
            (Some(1.5), Some(3.0), Some(3))
        );
        assert_eq!(row.portpool.value, 40.0);
        assert_eq!(row.baseline.value, 20.0);
        assert_eq!(row.met, Some(false));
        assert_eq!(ratio_text(&row), "2.00x (1.50–3.00)");
        // A speed-up row divides the other way round.
        let row = Row::paired(
            "4b",
            "x",
            ("parallel", &[1.0, 2.0, 1.0]),
            ("sequential", &[4.0, 4.0, 5.0]),
            "s",
            "baseline / portpool",
        );
        assert_eq!(
            (row.ratio, row.ratio_min, row.ratio_max),
            (4.0, Some(2.0), Some(5.0))
        );
        let json = serde_json::to_value(&row).unwrap();
        assert_eq!(json["ratio_min"], 2.0);
        assert_eq!(json["rounds"], 3);
    }

    #[test]
    fn dates_are_utc_calendar_days() {
        use std::time::{SystemTime, UNIX_EPOCH};
        let at = |secs: u64| utc_date(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01");
        assert_eq!(at(86_399), "1970-01-01");
        assert_eq!(at(86_400), "1970-01-02");
        // Leap days: a year divisible by 400 has one, by 100 only does not.
        assert_eq!(at(951_782_400), "2000-02-29");
        assert_eq!(at(951_868_800), "2000-03-01");
        assert_eq!(at(4_107_456_000), "2100-02-28");
        assert_eq!(at(4_107_542_400), "2100-03-01");
        // 2024-12-31T23:59:59Z, one second before the year turns.
        assert_eq!(at(1_735_689_599), "2024-12-31");
        assert_eq!(at(1_735_689_600), "2025-01-01");
        // Before the epoch, and out of the range a date is written for.
        assert_eq!(utc_date(UNIX_EPOCH - Duration::from_secs(1)), "1969-12-31");
        assert_eq!(
            utc_date(UNIX_EPOCH + Duration::from_secs(400 * 366 * 86_400 * 100)),
            "unknown"
        );
        let today = today();
        assert_eq!(today, utc_date(SystemTime::now()));
        assert_eq!(today.len(), 10);
    }

    /// The bench table is valid GitHub markdown with the seven columns, one
    /// line per row, each row's id first.
    #[test]
    fn table_is_markdown_with_every_row() {
        let rows = [
            Row::paired(
                "1",
                "seq. small-call p50, 1 worker, sync handler vs decoding floor",
                ("portpool", &[30.0, 40.0, 90.0]),
                ("decoding floor", &[20.0, 20.0, 30.0]),
                "us",
                "portpool / baseline",
            )
            .target(Cmp::AtMost, 1.3),
            Row::new(
                "4b",
                "cold start | speed-up",
                Figure::secs("parallel", 0.61),
                Figure::secs("sequential", 4.2),
                "baseline / portpool",
            )
            .target(Cmp::AtLeast, 3.0),
            Row::new(
                "5",
                "1 MiB echo",
                Figure::new("portpool", 812.0, "MiB/s"),
                Figure::new("raw floor", 406.0, "MiB/s"),
                "portpool / baseline",
            ),
        ];
        let text = table(&rows);
        crate::table::tests::assert_valid_markdown(&text, COLUMNS.len());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2 + rows.len(), "{text}");
        assert!(lines[0].starts_with("| #  | scenario "), "{text}");
        for (line, id) in lines[2..].iter().zip(["1 ", "4b", "5 "]) {
            assert!(line.starts_with(&format!("| {id} |")), "{line}");
        }
        assert!(lines[2].contains("| 40 µs (portpool)"), "{text}");
        assert!(
            lines[2].contains("| 2.00x (1.50–3.00) | <= 1.30x | NO   |"),
            "{text}"
        );
        assert!(lines[3].contains("cold start \\| speed-up"), "{text}");
        assert!(
            lines[3].contains("| 6.89x             | >= 3.00x | yes  |"),
            "{text}"
        );
        assert!(
            lines[4].contains("| 812 MiB/s (portpool) | 406 MiB/s (raw floor)  | 2.00x "),
            "{text}"
        );
    }

    #[test]
    fn load_is_three_numbers() {
        let load = loadavg();
        if load != "unknown" {
            assert_eq!(load.split(' ').count(), 3);
        }
    }
}
