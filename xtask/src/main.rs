//! Project automation, run as `cargo xtask <command>`.
//!
//! - `setup`: create `.venv` and install the Python runtime (`python/`) into it.
//! - `ci`: every check CI runs, with a summary; non-zero exit on any failure.
//! - `demo`: `setup`, then `portpool demo` (release build): a mixed workload
//!   over `examples/demo_app.py` with a worker killed mid-run, and a report.
//! - `bench [--quick] [--json FILE] [--workers N] ...`: `setup`, then
//!   `portpool bench` (release build): each scenario beside its baseline.
//!
//! - `chaos [--seconds N]`: `setup`, then the chaos soak (release build):
//!   real Python workers SIGKILLed and hung under a mixed workload for N
//!   seconds (default 60), checked for exactly-once outcomes, leaks and
//!   orphans. `ci` runs a 5 s version of it.
//!
//! Arguments after `demo` / `bench` are passed to the `portpool` command.
#![forbid(unsafe_code)]

mod dspy;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup(&root).and_then(|_| dspy::setup(&root)).map(|_| ()),
        Some("ci") => ci(&root),
        Some(cmd @ ("demo" | "bench")) => portpool_release(&root, cmd, &args[1..]),
        Some("chaos") => chaos(&root, &args[1..]),
        Some(other) => Err(format!("unknown command {other:?}\n{USAGE}")),
        None => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str =
    "usage: cargo xtask <setup | ci | demo | bench [--quick] [--json FILE] [--workers N] | chaos [--seconds N]>";

/// The longest chaos run accepted, so a typo cannot start an endless soak.
const MAX_CHAOS_SECONDS: u64 = 600;

/// Runs the chaos soak test for `--seconds N` (default 60, at most 600).
fn chaos(root: &Path, args: &[String]) -> Result<(), String> {
    let seconds = match args {
        [] => 60,
        [flag, n] if flag == "--seconds" => n
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=MAX_CHAOS_SECONDS).contains(n))
            .ok_or_else(|| {
                format!("--seconds takes a whole number from 1 to {MAX_CHAOS_SECONDS}, not {n:?}")
            })?,
        _ => return Err(format!("usage: cargo xtask chaos [--seconds N]; got {args:?}")),
    };
    let python = setup(root)?;
    run(cargo()
        .current_dir(root)
        .env("PORTPOOL_PYTHON", &python)
        .env("PORTPOOL_CHAOS_SECONDS", seconds.to_string())
        .args([
            "test",
            "--release",
            "-p",
            "portpool-session",
            "--test",
            "chaos",
            "--",
            "--nocapture",
        ]))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Path of the project's virtual environment interpreter.
fn venv_python(root: &Path) -> PathBuf {
    root.join(".venv/bin/python")
}

/// Creates `.venv` if missing and installs `python/` (editable, with test
/// extras) unless the installed copy matches the current pyproject.toml.
fn setup(root: &Path) -> Result<PathBuf, String> {
    let python = venv_python(root);
    if !python.exists() {
        let base = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        println!("xtask: creating .venv with {base}");
        run(Command::new(&base).args(["-m", "venv"]).arg(root.join(".venv")))?;
    }
    let pyproject = std::fs::read(root.join("python/pyproject.toml"))
        .map_err(|e| format!("cannot read python/pyproject.toml: {e}"))?;
    let stamp_path = root.join(".venv/.portpool-installed");
    let stamp = format!("{:x}", fnv1a(&pyproject));
    if std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str()) {
        return Ok(python);
    }
    println!("xtask: installing python/ into .venv");
    run(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--upgrade",
        "pip",
    ]))?;
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-e",
        ])
        .arg(format!("{}[test]", root.join("python").display())))?;
    std::fs::write(&stamp_path, stamp).map_err(|e| format!("cannot write {}: {e}", stamp_path.display()))?;
    Ok(python)
}

/// A small stable hash, so the install stamp needs no dependency.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x100000001b3)
    })
}

fn run(command: &mut Command) -> Result<(), String> {
    let status = command
        .status()
        .map_err(|e| format!("cannot start {:?}: {e}", command.get_program()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed with {status}"))
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// `cargo xtask demo|bench`: the venv, then the CLI built in release mode
/// (honest numbers), run from the repository root with the venv's python.
fn portpool_release(root: &Path, command: &str, extra: &[String]) -> Result<(), String> {
    let python = setup(root)?;
    run(cargo()
        .current_dir(root)
        .env("PORTPOOL_PYTHON", &python)
        .args(["run", "--quiet", "--release", "-p", "portpool-cli", "--", command])
        .args(extra))
}

fn ci(root: &Path) -> Result<(), String> {
    let started = Instant::now();
    let mut results: Vec<(&str, Result<(), String>, f64)> = Vec::new();
    let mut step = |name: &'static str, f: &mut dyn FnMut() -> Result<(), String>| {
        println!("\n==> {name}");
        let t = Instant::now();
        let outcome = f();
        if let Err(e) = &outcome {
            eprintln!("xtask: step {name} failed: {e}");
        }
        results.push((name, outcome, t.elapsed().as_secs_f64()));
    };

    let mut python = None;
    step("python setup", &mut || {
        python = Some(setup(root)?);
        Ok(())
    });
    let python = python.unwrap_or_else(|| venv_python(root));
    step("dspy setup", &mut || dspy::ci_setup(root));

    step("cargo fmt", &mut || {
        run(cargo().current_dir(root).args(["fmt", "--all", "--check"]))
    });
    step("cargo clippy", &mut || {
        run(cargo().current_dir(root).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ]))
    });
    step("cargo test", &mut || {
        // The fake-worker binary that other crates' process tests spawn.
        run(cargo().current_dir(root).args([
            "build",
            "--all-features",
            "-p",
            "portpool-testkit",
            "--bin",
            "fake-worker",
        ]))?;
        run(cargo().current_dir(root).env("PORTPOOL_PYTHON", &python).args([
            "test",
            "--workspace",
            "--all-features",
        ]))
    });
    step("cargo doc", &mut || {
        run(cargo()
            .current_dir(root)
            .env("RUSTDOCFLAGS", "-D warnings")
            .args(["doc", "--workspace", "--no-deps", "--all-features"]))
    });
    step("pytest", &mut || {
        run(Command::new(&python)
            .current_dir(root.join("python"))
            .args(["-m", "pytest", "-q"]))
    });
    step("pytest dspy", &mut || dspy::ci_pytest(root));
    step("mypy", &mut || {
        run(Command::new(&python)
            .current_dir(root.join("python"))
            .args(["-m", "mypy", "--strict", "src"]))
    });

    println!("\n==> summary");
    let mut failed = 0;
    for (name, outcome, secs) in &results {
        let mark = if outcome.is_ok() { "ok  " } else { "FAIL" };
        println!("  {mark} {name:<14} {secs:>7.1}s");
        failed += usize::from(outcome.is_err());
    }
    println!("  total {:.1}s", started.elapsed().as_secs_f64());
    if failed == 0 {
        println!("ci: all {} steps passed", results.len());
        Ok(())
    } else {
        Err(format!("{failed} of {} steps failed", results.len()))
    }
}
