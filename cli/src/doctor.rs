//! `portpool doctor`: a checklist from the interpreter to one round trip.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use portpool::{LaunchError, ProcessLauncher, Worker, WorkerCommand, WorkerId};

use crate::stats::fmt_us;

struct Checklist {
    failed: bool,
}

impl Checklist {
    fn ok(&self, what: &str, detail: impl AsRef<str>) {
        println!("  ok    {what:<18} {}", detail.as_ref());
    }

    fn fail(&mut self, what: &str, detail: impl AsRef<str>, fix: impl AsRef<str>) {
        self.failed = true;
        println!("  FAIL  {what:<18} {}", indent(detail.as_ref()));
        println!("        fix: {}", fix.as_ref());
    }

    fn skip(&self, what: &str) {
        println!("  --    {what:<18} skipped (an earlier check failed)");
    }
}

fn indent(text: &str) -> String {
    text.trim_end().replace('\n', "\n                           ")
}

/// Runs `python -c code`; stdout trimmed, or a description of the failure.
async fn python_says(python: &Path, code: &str) -> Result<String, String> {
    let output = tokio::process::Command::new(python)
        .args(["-c", code])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output");
        Err(format!("{} ({})", last.trim(), output.status))
    }
}

pub(crate) async fn run(app: PathBuf, python: PathBuf) -> ExitCode {
    println!("portpool doctor: app {}", app.display());
    let mut list = Checklist { failed: false };
    const SETUP: &str = "run `cargo xtask setup` (creates .venv with the runtime), or pass --python / set PORTPOOL_PYTHON to an interpreter that has it";

    // 1. The interpreter.
    let version = python_says(&python, "import sys; print(sys.version.split()[0])").await;
    let interpreter_ok = match version {
        Ok(version) => {
            list.ok("interpreter", format!("{} (Python {version})", python.display()));
            true
        }
        Err(e) => {
            list.fail("interpreter", e, SETUP);
            false
        }
    };

    // 2. and 3. The runtime and its one dependency.
    let mut imports_ok = interpreter_ok;
    if interpreter_ok {
        match python_says(
            &python,
            "import portpool; print(portpool.__version__, portpool.__file__)",
        )
        .await
        {
            Ok(found) => list.ok("import portpool", found),
            Err(e) => {
                imports_ok = false;
                list.fail(
                    "import portpool",
                    e,
                    format!(
                        "`{} -m pip install -e python` from the repository root (or `cargo xtask setup`)",
                        python.display()
                    ),
                );
            }
        }
        match python_says(&python, "import msgpack; print(msgpack.version)").await {
            Ok(found) => list.ok("import msgpack", found),
            Err(e) => {
                imports_ok = false;
                list.fail(
                    "import msgpack",
                    e,
                    format!("`{} -m pip install 'msgpack>=1.0'`", python.display()),
                );
            }
        }
    } else {
        list.skip("import portpool");
        list.skip("import msgpack");
    }

    // 4. The app file.
    let spec = app.to_string_lossy();
    let looks_like_file = spec.ends_with(".py") || spec.contains('/');
    let mut app_ok = imports_ok;
    if looks_like_file && !app.is_file() {
        app_ok = false;
        list.fail(
            "app file",
            format!("{} does not exist", app.display()),
            "pass --app with the path of your handlers' .py file (or module:attr)",
        );
    }

    // 5. Start one worker; 6. one round trip.
    if app_ok {
        let command = WorkerCommand::python_with(&python, &app).init_timeout(Duration::from_secs(30));
        let launcher = ProcessLauncher::new(command);
        let started = Instant::now();
        match launcher.spawn(WorkerId(1)).await {
            Ok(worker) => {
                let info = worker.info();
                list.ok(
                    "app loads",
                    format!(
                        "ready in {} (pid {}, {} {}, max_concurrency {})",
                        fmt_us(started.elapsed().as_secs_f64() * 1e6),
                        info.hello.pid,
                        info.hello.runtime,
                        info.hello.runtime_version,
                        info.max_concurrency
                    ),
                );
                let methods = &info.hello.methods;
                if methods.is_empty() {
                    list.fail(
                        "methods",
                        "the app registers no handler",
                        "decorate functions with `@app.handler` in the app file",
                    );
                } else {
                    list.ok("methods", methods.join(", "));
                }
                match worker.ping(Duration::from_secs(5)).await {
                    Ok(rtt) => list.ok("round trip", format!("ping {}", fmt_us(rtt.as_secs_f64() * 1e6))),
                    Err(e) => list.fail(
                        "round trip",
                        e.to_string(),
                        "the worker is stuck or dies after start; look at the stderr tail above",
                    ),
                }
                worker.shutdown(Duration::from_secs(2)).await;
            }
            Err(e) => {
                let fix = launch_fix(&e, &python, &app);
                list.fail("app loads", e.to_string(), fix);
                list.skip("round trip");
            }
        }
    } else {
        list.skip("app loads");
        list.skip("round trip");
    }

    if list.failed {
        println!("doctor: problems found (see the fixes above)");
        ExitCode::FAILURE
    } else {
        println!("doctor: all checks passed");
        ExitCode::SUCCESS
    }
}

fn launch_fix(e: &LaunchError, python: &Path, app: &Path) -> String {
    let run_by_hand = format!("`{} -m portpool {}`", python.display(), app.display());
    match e {
        LaunchError::Spawn { .. } => format!("the interpreter cannot be started; check {}", python.display()),
        LaunchError::ExitedDuringInit { .. } => {
            format!("the app failed while importing: fix the error in the stderr tail above (reproduce with {run_by_hand})")
        }
        LaunchError::InitTimeout { .. } => {
            "the app took too long to import: move slow work out of import time or raise the init timeout".into()
        }
        LaunchError::BadHello { .. } => {
            "the process did not speak the portpool protocol: is the installed runtime the same version as this CLI? (`cargo xtask setup`)".into()
        }
        _ => format!("reproduce with {run_by_hand}"),
    }
}
