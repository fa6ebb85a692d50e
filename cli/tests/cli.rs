//! Smoke tests of the `portpool` binary against the real Python runtime.
//!
//! The interpreter is `$PORTPOOL_PYTHON`, else the nearest `.venv` (as the
//! binary finds it); `cargo xtask setup` creates it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn portpool() -> Command {
    Command::new(env!("CARGO_BIN_EXE_portpool"))
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn demo_app() -> String {
    examples().join("demo_app.py").display().to_string()
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs `portpool bench ARGS --json FILE`; the report and stdout. Fails
/// the test if the bench failed.
fn bench_report(args: &[&str]) -> (serde_json::Value, String) {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let json = std::env::temp_dir().join(format!("portpool-bench-{}-{n}.json", std::process::id()));
    let output = portpool()
        .arg("bench")
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    (report, stdout)
}

#[test]
fn call_echo_round_trips_json_and_bytes() {
    let output = portpool()
        .args([
            "call",
            "--app",
            &demo_app(),
            "echo",
            r#"{"a": [1, -2, 2.5, null, true], "b": {"$bin": "00ff"}}"#,
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"a": [1, -2, 2.5, null, true], "b": {"$bin": "00ff"}})
    );
}

#[test]
fn call_stream_and_session() {
    let output = portpool()
        .args(["call", "--app", &demo_app(), "--stream", "count", "3"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(stdout.lines().collect::<Vec<_>>(), ["0", "1", "2"]);

    let output = portpool()
        .args(["call", "--app", &demo_app(), "--session", "s1", "counter"])
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(text(&output).0.trim(), "1");
}

#[test]
fn call_error_exits_1_with_type_and_traceback() {
    let output = portpool()
        .args(["call", "--app", &demo_app(), "fail", r#""oops""#])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stderr.contains("ValueError: bad input: 'oops'"), "{stderr}");
    assert!(stderr.contains("Traceback (most recent call last)"), "{stderr}");
    assert!(stderr.contains("demo_app.py"), "{stderr}");
}

#[test]
fn call_rejects_bad_json_without_starting_a_worker() {
    let output = portpool()
        .args(["call", "--app", &demo_app(), "echo", "{not json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output).1.contains("not valid JSON"), "{}", text(&output).1);
}

#[test]
fn doctor_passes_on_a_good_app() {
    let output = portpool()
        .args(["doctor", "--app", &demo_app()])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    for check in [
        "interpreter",
        "import portpool",
        "import msgpack",
        "app loads",
        "methods",
        "round trip",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with("ok") && l.contains(check)),
            "{check} not ok:\n{stdout}"
        );
    }
    assert!(stdout.contains("primes"), "{stdout}");
}

#[test]
fn doctor_explains_a_broken_app() {
    let dir = std::env::temp_dir().join(format!("portpool-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let app = dir.join("broken_app.py");
    std::fs::write(
        &app,
        "import portpool\nimport no_such_module_xyz\napp = portpool.App()\n",
    )
    .unwrap();
    let output = portpool().args(["doctor", "--app"]).arg(&app).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let (stdout, _) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  app loads"), "{stdout}");
    assert!(
        stdout.contains("No module named 'no_such_module_xyz'"),
        "{stdout}"
    );
    assert!(stdout.contains("fix:"), "{stdout}");
}

#[test]
fn doctor_explains_a_missing_interpreter() {
    let output = portpool()
        .args(["doctor", "--app", &demo_app(), "--python", "/nonexistent/python3"])
        .output()
        .unwrap();
    let (stdout, _) = text(&output);
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout.contains("FAIL  interpreter"), "{stdout}");
    assert!(stdout.contains("cargo xtask setup"), "{stdout}");
}

/// A very short `portpool bench` of scenarios 1 and 5: it runs the pool and
/// both floors interleaved, and every row carries its rounds, a ratio inside
/// its spread, and a target where the issue sets one. Figures are not
/// checked (measurements, not tests).
#[test]
fn bench_rows_carry_rounds_spread_and_targets() {
    let (report, stdout) = bench_report(&["--only", "1,5", "--rounds", "3", "--seconds", "0.05"]);
    assert!(stdout.contains("load"), "{stdout}");
    assert_eq!(report["rounds"], 3);
    assert!(report["load_before"].is_string());
    let rows = report["rows"].as_array().unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r["scenario"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "1", "1a", "1b", "1c", "1d", "1e", "1f", "1g", "1h", "1i", "1j", "1k", "1l", "5", "5a", "5b",
            "5c"
        ]
    );
    for row in rows {
        assert_eq!(row["rounds"], 3, "{row}");
        // A ratio over a zero figure (a CPU-time delta below /proc's 10 ms
        // tick in so short a run) is infinite: JSON null.
        if let (Some(min), Some(ratio), Some(max)) = (
            row["ratio_min"].as_f64(),
            row["ratio"].as_f64(),
            row["ratio_max"].as_f64(),
        ) {
            assert!(min <= ratio && ratio <= max, "{row}");
        }
    }
    let target = |id: &str| {
        let row = rows.iter().find(|r| r["scenario"] == id).unwrap();
        (row["target"]["ratio"].as_f64(), row["met"].is_boolean())
    };
    assert!(rows[0]["ratio"].as_f64().is_some(), "{}", rows[0]);
    assert_eq!(target("1"), (Some(1.3), true));
    assert_eq!(target("1b"), (Some(1.5), true));
    assert_eq!(target("5"), (Some(0.7), true));
    // The floors answered: the sequential rows counted calls on every side.
    let calls = &rows[0]["extra"]["calls"];
    for side in ["sync", "async", "decoding_floor", "raw_floor"] {
        assert!(calls[side].as_f64().unwrap() > 0.0, "{calls}");
    }
}

/// A short `portpool demo` (a worker killed mid-run) ends as designed, with
/// plain progress lines when stdout is not a terminal, and prints the pool's
/// metrics as Prometheus' text format: the names and labels a scrape shows.
#[test]
fn demo_recovers_and_prints_prometheus_series() {
    let output = portpool()
        .args(["demo", "--seconds", "1", "--workers", "2", "--callers", "4"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout
            .trim_end()
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("demo: completed as designed")),
        "{stdout}"
    );
    // Not a terminal: no bar redrawn with carriage returns or escape codes.
    assert!(!stdout.contains('\r') && !stdout.contains('\u{1b}'), "{stdout:?}");
    assert!(stdout.contains(">> kill -9 worker in slot"), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    for series in [
        "# TYPE portpool_calls_total counter",
        r#"portpool_worker_restarts_total{pool="demo",reason="crash"} 1"#,
        r#"portpool_workers{pool="demo",state="ready"} 2"#,
        r#"portpool_breaker_state{pool="demo"} 0"#,
        "# TYPE portpool_call_duration_seconds summary",
        r#"portpool_worker_start_duration_seconds_count{pool="demo",outcome="ok"} 3"#,
    ] {
        assert!(lines.contains(&series), "{series} missing:\n{stdout}");
    }
    for prefix in [
        r#"portpool_calls_total{pool="demo",outcome="ok"} "#,
        r#"portpool_calls_total{pool="demo",outcome="worker_crashed"} "#,
        r#"portpool_call_duration_seconds{pool="demo",quantile="0.99"} "#,
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(prefix)),
            "{prefix} missing:\n{stdout}"
        );
    }
}

/// The throughput rows carry each contestant's latency under load: p50,
/// p99 and p99 corrected for coordinated omission (the calls it adds back
/// are never faster than the median, but they may dilute the raw tail, so
/// the corrected p99 is only bound to be at least the p50).
#[test]
fn bench_throughput_rows_carry_corrected_latency() {
    let (report, stdout) = bench_report(&[
        "--only",
        "2",
        "--callers",
        "4",
        "--rounds",
        "3",
        "--seconds",
        "0.05",
    ]);
    let rows = report["rows"].as_array().unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r["scenario"].as_str().unwrap()).collect();
    assert_eq!(ids, ["2a", "2b", "2c", "2d", "2e", "2f", "2g"]);
    let latency = &rows[0]["extra"]["latency_us_median"];
    for side in ["sync", "decoding_floor", "raw_floor"] {
        let figure = |q: &str| {
            latency[side][q]
                .as_f64()
                .unwrap_or_else(|| panic!("{side} {q}: {latency}"))
        };
        let (p50, p99, corrected) = (figure("p50"), figure("p99"), figure("p99_corrected"));
        assert!(0.0 < p50 && p50 <= p99 && p50 <= corrected, "{side}: {latency}");
        assert!(corrected.is_finite(), "{side}: {latency}");
    }
    // The table the README pastes: the header, the rule, a line per row.
    let table: Vec<&str> = stdout.lines().filter(|l| l.starts_with('|')).collect();
    assert_eq!(table.len(), 2 + ids.len(), "{stdout}");
    assert!(table[0].starts_with("| #  | scenario"), "{stdout}");
    assert!(table[1].starts_with("|----|---"), "{stdout}");
    assert!(
        table[2].starts_with("| 2a | throughput, 2 workers, 4 callers"),
        "{stdout}"
    );
}

/// Scenario 9 runs the BEAM baseline (`examples/beam_pool.escript`: a pool
/// of Erlang ports to the same Python worker) interleaved with portpool:
/// every row is there with its rounds, and the BEAM side answered (the
/// bench fails if one of its results was not the params). Skipped where
/// Erlang is missing, unless `CI` is set (`cargo xtask setup` installs it).
#[test]
fn bench_beam_baseline_runs_interleaved_and_checks_its_replies() {
    let has_escript = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("escript").is_file()));
    if !has_escript {
        assert!(
            std::env::var_os("CI").is_none(),
            "escript (Erlang) is missing and CI is set: run `cargo xtask setup`"
        );
        eprintln!("skipped: escript (Erlang) not on PATH; `cargo xtask setup` installs it");
        return;
    }
    let (report, stdout) = bench_report(&[
        "--only",
        "9",
        "--callers",
        "4",
        "--rounds",
        "3",
        "--seconds",
        "0.05",
    ]);
    let rows = report["rows"].as_array().unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r["scenario"].as_str().unwrap()).collect();
    assert_eq!(ids, ["9", "9a", "9b", "9c", "9d", "9e", "9f", "9g", "9h"]);
    for row in rows {
        assert_eq!(row["rounds"], 3, "{row}");
    }
    let value = |id: &str, side: &str| {
        rows.iter().find(|r| r["scenario"] == id).unwrap()[side]["value"]
            .as_f64()
            .unwrap_or(f64::NAN)
    };
    // Both sides measured something: a latency, and calls per second.
    for id in ["9", "9c", "9d", "9g"] {
        for side in ["portpool", "baseline"] {
            assert!(value(id, side) > 0.0, "{id} {side}: {stdout}");
        }
    }
    assert_eq!(
        rows.iter().find(|r| r["scenario"] == "9").unwrap()["target"]["ratio"].as_f64(),
        Some(1.0)
    );
    // The 1-thread row runs the same calls on a runtime of its own.
    let lean = rows.iter().find(|r| r["scenario"] == "9g").unwrap();
    assert!(
        lean["what"]
            .as_str()
            .unwrap_or_default()
            .contains("1-thread runtime"),
        "{lean}"
    );
}
