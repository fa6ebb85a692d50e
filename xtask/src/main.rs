//! Project automation, run as `cargo xtask <command>`.
//!
//! - `setup`: create `.venv` and install the Python runtime (`python/`) into
//!   it; install `redis-server` and `escript` (Debian packages) when they are
//!   not on `PATH`, for the session crate's `RedisStore` tests and the
//!   bench's BEAM baseline.
//! - `ci`: every check CI runs, with a summary; non-zero exit on any failure.
//! - `demo`: `setup`, then `portpool demo` (release build): a mixed workload
//!   over `examples/demo_app.py` with a worker killed mid-run, and a report.
//! - `bench [--quick] [--json FILE] [--workers N] ...`: `setup`, then
//!   `portpool bench` (release build): each scenario beside its baseline
//!   (installing `escript` first, for scenario 9's BEAM pool).
//!
//! - `chaos [--seconds N]`: `setup`, then the chaos soak (release build):
//!   real Python workers SIGKILLed and hung under a mixed workload for N
//!   seconds (default 60), checked for exactly-once outcomes, leaks and
//!   orphans. `ci` runs a 5 s version of it.
//!
//! - `mutants [--minutes N] [--timeout S] [--file PATH]... [-- ARGS]`: a
//!   mutation check with cargo-mutants (installed with `cargo install
//!   cargo-mutants --locked` when missing) over the protocol crate,
//!   transport's process worker and the pool's scheduler (or the given
//!   files), each mutant's tests bounded by `--timeout` (default 60 s) and
//!   the whole run by `--minutes` (default 30); prints the surviving
//!   mutants. Not part of `ci`.
//!
//! Arguments after `demo` / `bench` are passed to the `portpool` command.
#![forbid(unsafe_code)]

mod debian;
mod dspy;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup(&root)
            .and_then(|_| dspy::setup(&root))
            .and_then(|_| debian::setup()),
        Some("ci") => ci(&root),
        Some(cmd @ ("demo" | "bench")) => portpool_release(&root, cmd, &args[1..]),
        Some("chaos") => chaos(&root, &args[1..]),
        Some("mutants") => mutants(&root, &args[1..]),
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
    "usage: cargo xtask <setup | ci | demo | bench [--quick] [--json FILE] [--workers N] | chaos [--seconds N] \
     | mutants [--minutes N] [--timeout S] [--file PATH]... [-- CARGO_MUTANTS_ARGS]>";

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
            "portpool",
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
    venv_with_runtime(root, ".venv", "test", "")
}

/// Creates the virtual environment `dir` (under `root`) if missing and
/// installs `python/[extras]` into it (editable), unless its stamp (`tag`
/// plus a hash of pyproject.toml) says the installed copy is current.
/// Returns its interpreter.
fn venv_with_runtime(root: &Path, dir: &str, extras: &str, tag: &str) -> Result<PathBuf, String> {
    let python = root.join(dir).join("bin/python");
    if !python.exists() {
        let base = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        println!("xtask: creating {dir} with {base}");
        run(Command::new(&base).args(["-m", "venv"]).arg(root.join(dir)))?;
    }
    let pyproject = std::fs::read(root.join("python/pyproject.toml"))
        .map_err(|e| format!("cannot read python/pyproject.toml: {e}"))?;
    let stamp_path = root.join(dir).join(".portpool-installed");
    let stamp = format!("{tag}{:x}", fnv1a(&pyproject));
    if std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str()) {
        precompile(root, &python)?;
        return Ok(python);
    }
    println!("xtask: installing python/[{extras}] into {dir}");
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
        .arg(format!("{}[{extras}]", root.join("python").display())))?;
    std::fs::write(&stamp_path, stamp).map_err(|e| format!("cannot write {}: {e}", stamp_path.display()))?;
    precompile(root, &python)?;
    Ok(python)
}

/// Writes the runtime's bytecode next to its (editable) source, so every
/// worker starts from cached bytecode even where `PYTHONDONTWRITEBYTECODE`
/// is set (as it is on these machines): otherwise each worker compiles the
/// runtime anew, 23-29 ms of its start against 7 ms. Only stale files are
/// rewritten, so this is quick when nothing changed.
fn precompile(root: &Path, python: &Path) -> Result<(), String> {
    run(Command::new(python)
        .args(["-m", "compileall", "-q"])
        .arg(root.join("python/src/portpool")))
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
    if command == "bench" {
        // Scenario 9's baseline is an Erlang script (`escript`).
        debian::setup()?;
    }
    run(cargo()
        .current_dir(root)
        .env("PORTPOOL_PYTHON", &python)
        .args(["run", "--quiet", "--release", "-p", "portpool-cli", "--", command])
        .args(extra))
}

/// The files `cargo xtask mutants` mutates by default: the protocol crate,
/// transport's connection core and process worker, and the pool's scheduler.
const MUTANT_FILES: &[&str] = &[
    "protocol/src/*.rs",
    "transport/src/conn/*.rs",
    "transport/src/process/worker.rs",
    "transport/src/process/spin.rs",
    "pool/src/sched/*.rs",
];

/// Options of `cargo xtask mutants`.
#[derive(Debug, PartialEq)]
struct MutantsArgs {
    minutes: u64,
    timeout: u64,
    files: Vec<String>,
    extra: Vec<String>,
}

/// The longest mutation run accepted.
const MAX_MUTANTS_MINUTES: u64 = 600;

fn parse_mutants_args(args: &[String]) -> Result<MutantsArgs, String> {
    let mut parsed = MutantsArgs {
        minutes: 30,
        timeout: 60,
        files: Vec::new(),
        extra: Vec::new(),
    };
    let mut args = args.iter();
    let number = |flag: &str, value: Option<&String>, max: u64| -> Result<u64, String> {
        value
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| format!("{flag} takes a whole number from 1 to {max}, not {value:?}"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--minutes" => parsed.minutes = number("--minutes", args.next(), MAX_MUTANTS_MINUTES)?,
            "--timeout" => parsed.timeout = number("--timeout", args.next(), 3600)?,
            "--file" => parsed
                .files
                .push(args.next().ok_or("--file needs a path")?.clone()),
            "--" => parsed.extra.extend(args.by_ref().cloned()),
            other => return Err(format!("cargo xtask mutants: unknown argument {other:?}")),
        }
    }
    if parsed.files.is_empty() {
        parsed.files = MUTANT_FILES.iter().map(|f| f.to_string()).collect();
    }
    Ok(parsed)
}

/// `cargo xtask mutants`: cargo-mutants over the scheduler-critical files,
/// each mutant bounded by `--timeout`, the run by `--minutes`; prints the
/// survivors (and the mutants whose tests timed out).
fn mutants(root: &Path, args: &[String]) -> Result<(), String> {
    let args = parse_mutants_args(args)?;
    let has_mutants = cargo()
        .args(["mutants", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_mutants {
        println!("xtask: installing cargo-mutants");
        run(cargo().args(["install", "cargo-mutants", "--locked"]))?;
    }
    let python = setup(root)?;
    // One fake-worker, built from the unmutated tree, for every mutant's
    // process tests (a mutated protocol must not change the fixture).
    run(cargo()
        .current_dir(root)
        .args(["build", "-p", "portpool-testkit", "--bin", "fake-worker"]))?;
    let fake_worker = root.join("target/debug/fake-worker");
    let output = root.join("target/mutants");
    let mut command = cargo();
    command
        .current_dir(root)
        .env("PORTPOOL_PYTHON", &python)
        .env("PORTPOOL_FAKE_WORKER", &fake_worker)
        // `--workspace`: the root is itself a package, which cargo-mutants
        // would otherwise take as the only one; `--file` narrows it.
        .args([
            "mutants",
            "--workspace",
            "--no-shuffle",
            "--jobs",
            "1",
            "--timeout",
        ])
        .arg(args.timeout.to_string())
        .arg("--output")
        .arg(&output);
    for file in &args.files {
        command.arg("--file").arg(file);
    }
    command.args(&args.extra);
    println!("xtask: {command:?} (at most {} min)", args.minutes);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start cargo mutants: {e}"))?;
    let deadline = Instant::now() + std::time::Duration::from_secs(args.minutes * 60);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            println!(
                "xtask: mutants: --minutes {} reached; stopping cargo-mutants",
                args.minutes
            );
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    let results = output.join("mutants.out");
    let read = |name: &str| std::fs::read_to_string(results.join(name)).unwrap_or_default();
    let missed = read("missed.txt");
    let timeout = read("timeout.txt");
    let caught = read("caught.txt").lines().count();
    println!(
        "\n==> mutants: {caught} caught, {} missed, {} timed out",
        missed.lines().count(),
        timeout.lines().count()
    );
    for line in missed.lines() {
        println!("  SURVIVED {line}");
    }
    for line in timeout.lines() {
        println!("  TIMEOUT  {line}");
    }
    println!("(full results in {})", results.display());
    match status {
        // cargo-mutants exits 2 when mutants survive, 3 on time-outs: the
        // report above is the result; only other failures are errors.
        Some(status) if matches!(status.code(), Some(0 | 2 | 3)) => Ok(()),
        Some(status) => Err(format!("cargo mutants failed with {status}")),
        None => Ok(()),
    }
}

/// Every test GUARANTEES.md names exists: a promise without a test is not a
/// promise. Names are written `path::name` (Rust `fn` or Python `def`), or
/// `::name` for another test in the file named just before.
fn check_guarantees(root: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(root.join("GUARANTEES.md"))
        .map_err(|e| format!("cannot read GUARANTEES.md: {e}"))?;
    let missing = missing_tests(&text, |path| std::fs::read_to_string(root.join(path)).ok());
    let named = text.matches("::").count();
    if missing.is_empty() {
        println!("GUARANTEES.md: every named test exists ({named} references)");
        Ok(())
    } else {
        Err(format!(
            "GUARANTEES.md names tests that do not exist:\n  {}",
            missing.join("\n  ")
        ))
    }
}

/// The `path::name` references of `text` whose test is not in its file.
fn missing_tests(text: &str, read: impl Fn(&str) -> Option<String>) -> Vec<String> {
    let mut missing = Vec::new();
    let mut file: Option<(String, Option<String>)> = None;
    for quoted in text.split('`').skip(1).step_by(2) {
        let Some((head, name)) = quoted.rsplit_once("::") else {
            continue;
        };
        let path = head.strip_suffix("::tests").unwrap_or(head);
        if name.is_empty() && (path.ends_with(".rs") || path.ends_with(".py")) {
            file = Some((path.to_string(), read(path))); // a table header: `file::`
            continue;
        }
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        if path.ends_with(".rs") || path.ends_with(".py") {
            file = Some((path.to_string(), read(path)));
        } else if !path.is_empty() {
            continue; // a Rust path such as `portpool::Wait`, not a test
        }
        let Some((path, source)) = &file else {
            missing.push(format!("::{name} (no file named before it)"));
            continue;
        };
        let defined = source.as_deref().is_some_and(|source| {
            [format!("fn {name}("), format!("def {name}(")]
                .iter()
                .any(|definition| source.contains(definition.as_str()))
        });
        if !defined {
            missing.push(format!("{path}::{name}"));
        }
    }
    missing
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
    // The session crate's RedisStore tests start their own redis-server,
    // the CLI's BEAM baseline test runs `escript`; under CI they fail
    // (rather than skip) when it is missing.
    step("debian packages", &mut debian::setup);

    step("guarantees", &mut || check_guarantees(root));
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
        // No pre-build step: the testkit's `fake_worker_path` finds the
        // `fake-worker` this very command builds (for the testkit's own
        // tests), and builds it itself when a crate is tested alone.
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
    step("ruff check", &mut || {
        run(Command::new(&python)
            .current_dir(root.join("python"))
            .args(["-m", "ruff", "check", "."]))
    });
    step("ruff format", &mut || {
        run(Command::new(&python)
            .current_dir(root.join("python"))
            .args(["-m", "ruff", "format", "--check", "."]))
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

#[cfg(test)]
mod tests {
    #[test]
    fn guarantees_check_finds_missing_tests_and_follows_continuations() {
        let read = |path: &str| match path {
            "a/tests/x.rs" => Some("async fn one() {}\nfn two() {}".to_string()),
            "p/test_y.py" => Some("def test_three():\n    pass".to_string()),
            _ => None,
        };
        let text = "- `a/tests/x.rs::one`, `::two`, `::gone`\n- `p/test_y.py::test_three`\n\
                    - `portpool::Wait` and `CrashCause::TooDeep` are types\n- `no/such.rs::four`\n\
                    | test (`p/test_y.py::`) |\n| `::test_three` |\n| `::test_five` |";
        assert_eq!(
            super::missing_tests(text, read),
            ["a/tests/x.rs::gone", "no/such.rs::four", "p/test_y.py::test_five"]
        );
    }

    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn mutants_defaults_cover_protocol_process_worker_and_scheduler() {
        let parsed = parse_mutants_args(&[]).unwrap();
        assert_eq!(parsed.minutes, 30);
        assert_eq!(parsed.timeout, 60);
        assert!(parsed.files.iter().any(|f| f.starts_with("protocol/")));
        assert!(parsed
            .files
            .iter()
            .any(|f| f == "transport/src/process/worker.rs"));
        assert!(parsed.files.iter().any(|f| f == "pool/src/sched/*.rs"));
    }

    #[test]
    fn mutants_args_parse_and_reject_junk() {
        let parsed = parse_mutants_args(&strings(&[
            "--minutes",
            "5",
            "--timeout",
            "20",
            "--file",
            "protocol/src/codec.rs",
            "--",
            "--list",
        ]))
        .unwrap();
        assert_eq!(
            parsed,
            MutantsArgs {
                minutes: 5,
                timeout: 20,
                files: strings(&["protocol/src/codec.rs"]),
                extra: strings(&["--list"]),
            }
        );
        assert!(parse_mutants_args(&strings(&["--minutes", "0"])).is_err());
        assert!(parse_mutants_args(&strings(&["--minutes", "100000"])).is_err());
        assert!(parse_mutants_args(&strings(&["--file"])).is_err());
        assert!(parse_mutants_args(&strings(&["--bogus"])).is_err());
    }
}
