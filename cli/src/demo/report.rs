//! The demo's report: latency by workload, errors by kind (and what the
//! kill explains), the workers, the pool's metrics, and the verdict line
//! the run is judged by (`demo: completed as designed`).

use std::collections::BTreeMap;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use portpool::PoolStatus;

use super::Tally;
use crate::stats::{fmt_us, Samples};
use crate::table::{plain, Align};

/// The run's outcome besides the tally.
#[derive(Debug)]
pub(super) struct Run {
    /// Calls that succeeded, and failed.
    pub ok: u64,
    /// Calls that failed.
    pub failed: u64,
    /// How long the workload ran.
    pub elapsed: Duration,
    /// The slot and pid of the worker killed mid-run, if one was.
    pub killed: Option<(u64, u32)>,
    /// The run was asked not to kill a worker.
    pub no_kill: bool,
}

/// Prints the report; returns whether the run went as designed.
pub(super) fn report(
    status: &PoolStatus,
    tally: &Tally,
    run: &Run,
    prometheus: Option<&PrometheusHandle>,
) -> bool {
    println!("\nreport");
    println!(
        "  {} calls ok, {} failed in {:.1} s: {:.0} calls/s",
        run.ok,
        run.failed,
        run.elapsed.as_secs_f64(),
        run.ok as f64 / run.elapsed.as_secs_f64()
    );
    println!("\n{}", latency_table(tally));
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
    if let Some((slot, pid)) = run.killed {
        println!(
            "    -> the {crashed} worker_crashed errors are the calls that were in flight on pid {pid} (slot {slot})\n       when it was killed; every other call went on, and the slot got a new worker."
        );
        if lost > 0 {
            println!(
                "    -> the {lost} session_lost errors are conversations bound to pid {pid}: their state died with it,\n       each was told so once, and started over on another worker."
            );
        }
    }

    println!("\n  workers\n{}", workers_table(status));
    let restarts: u64 = status.workers.iter().map(|w| w.restarts).sum();
    println!(
        "  ready {}/{}, restarts {}, breaker {}",
        status.ready,
        status.size,
        restarts,
        status.breaker.as_str()
    );

    if let Some(prometheus) = prometheus {
        println!("\n  metrics, in Prometheus' text format (what a scrape of this process would return)\n");
        println!("{}", super::metrics::portpool_series(&prometheus.render()));
    }

    let verdict = Verdict::of(run, &tally.errors, status.ready == status.size, restarts);
    if verdict.healthy {
        println!(
            "\ndemo: completed as designed (the killed worker's calls failed as WorkerCrashed, its sessions as SessionLost; the pool recovered)"
        );
    } else {
        println!(
            "\ndemo: NOT as designed: unexpected errors {}, recovered {} (killed {})",
            verdict.unexpected,
            verdict.recovered,
            run.killed.is_some()
        );
    }
    verdict.healthy
}

/// Latency by workload, and over all of them.
fn latency_table(tally: &Tally) -> String {
    let mut all = Samples::default();
    let mut rows = Vec::new();
    let mut row = |label: &str, samples: &Samples| {
        rows.push(vec![
            label.to_owned(),
            samples.len().to_string(),
            fmt_us(samples.quantile_us(0.5)),
            fmt_us(samples.quantile_us(0.99)),
        ]);
    };
    for (kind, samples) in &tally.latency {
        row(kind.label(), samples);
        all.extend(samples.clone());
    }
    row("all", &all);
    plain(
        &[
            ("workload", Align::Left),
            ("ok", Align::Right),
            ("p50", Align::Right),
            ("p99", Align::Right),
        ],
        &rows,
        "  ",
    )
}

fn workers_table(status: &PoolStatus) -> String {
    let rows: Vec<Vec<String>> = status
        .workers
        .iter()
        .map(|w| {
            vec![
                w.slot.to_string(),
                w.id.map_or("-".to_string(), |id| id.to_string()),
                w.pid.map_or("-".to_string(), |p| p.to_string()),
                w.state.as_str().to_owned(),
                w.served.to_string(),
                w.restarts.to_string(),
                w.rss_bytes
                    .map_or("-".to_string(), |b| format!("{:.1} MiB", b as f64 / 1048576.0)),
                w.uptime
                    .map_or("-".to_string(), |u| format!("{:.1}s", u.as_secs_f64())),
            ]
        })
        .collect();
    plain(
        &[
            ("slot", Align::Right),
            ("id", Align::Right),
            ("pid", Align::Right),
            ("state", Align::Left),
            ("served", Align::Right),
            ("restarts", Align::Right),
            ("rss", Align::Right),
            ("uptime", Align::Right),
        ],
        &rows,
        "  ",
    )
}

/// Whether the run went as designed.
#[derive(Debug, PartialEq, Eq)]
struct Verdict {
    healthy: bool,
    /// Errors the kill does not explain.
    unexpected: u64,
    /// Every slot ready again, with a replacement for the killed worker.
    recovered: bool,
}

impl Verdict {
    fn of(run: &Run, errors: &BTreeMap<String, u64>, all_ready: bool, restarts: u64) -> Verdict {
        let unexpected: u64 = errors
            .iter()
            // What the kill causes: calls in flight on the killed worker, and
            // sessions bound to it (told once, then started over).
            .filter(|(kind, _)| !matches!(kind.as_str(), "worker_crashed" | "session_lost"))
            .map(|(_, n)| n)
            .sum();
        let recovered = all_ready && (run.no_kill || (run.killed.is_some() && restarts >= 1));
        Verdict {
            healthy: run.ok > 0 && unexpected == 0 && recovered,
            unexpected,
            recovered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::Kind;

    fn run(killed: bool) -> Run {
        Run {
            ok: 100,
            failed: 5,
            elapsed: Duration::from_secs(1),
            killed: killed.then_some((1, 4242)),
            no_kill: !killed,
        }
    }

    fn errors(kinds: &[(&str, u64)]) -> BTreeMap<String, u64> {
        kinds.iter().map(|(k, n)| (k.to_string(), *n)).collect()
    }

    #[test]
    fn the_kill_explains_crashes_and_lost_sessions_only() {
        let kill = errors(&[("worker_crashed", 4), ("session_lost", 1)]);
        let as_designed = Verdict {
            healthy: true,
            unexpected: 0,
            recovered: true,
        };
        assert_eq!(Verdict::of(&run(true), &kill, true, 1), as_designed);
        // A timeout is not the kill's doing.
        let timeout = errors(&[("worker_crashed", 4), ("timeout", 2)]);
        assert_eq!(Verdict::of(&run(true), &timeout, true, 1).unexpected, 2);
        assert!(!Verdict::of(&run(true), &timeout, true, 1).healthy);
        // Killed but never replaced, or a slot still down: not recovered.
        assert!(!Verdict::of(&run(true), &kill, true, 0).recovered);
        assert!(!Verdict::of(&run(true), &kill, false, 1).recovered);
        // Without a kill, no restart is needed; without a call, no verdict.
        assert!(Verdict::of(&run(false), &errors(&[]), true, 0).healthy);
        let idle = Run { ok: 0, ..run(false) };
        assert!(!Verdict::of(&idle, &errors(&[]), true, 0).healthy);
    }

    #[test]
    fn latency_table_has_a_row_per_workload_and_all() {
        let mut tally = Tally::default();
        for (kind, micros) in [(Kind::Cpu, 2_000), (Kind::Io, 40_000), (Kind::Io, 41_000)] {
            tally
                .latency
                .entry(kind)
                .or_default()
                .push(Duration::from_micros(micros));
        }
        let text = latency_table(&tally);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2 + 3, "{text}");
        assert!(lines[0].trim_start().starts_with("workload"), "{text}");
        assert!(
            lines[2].contains("cpu    primes(30000)") && lines[2].contains("2.00 ms"),
            "{text}"
        );
        assert!(
            lines[3].contains("io     fetch(40 ms)") && lines[3].ends_with("41.0 ms"),
            "{text}"
        );
        assert!(
            lines[4].trim_start().starts_with("all") && lines[4].contains(" 3 "),
            "{text}"
        );
    }
}
