//! The `portpool` command-line tool.
//!
//! - `portpool doctor --app FILE`: checks the interpreter, the `portpool` and
//!   `msgpack` imports, loads the app and measures its start and one round
//!   trip; every failure comes with its fix.
//! - `portpool call --app FILE METHOD [JSON]`: one call, result as JSON
//!   (`bin` values as `{"$bin": "<hex>"}`), or the typed error with its
//!   traceback and exit code 1.
//! - `portpool demo`: a mixed workload over example handlers, with a worker
//!   killed mid-run, a report, and the pool's metrics in Prometheus' text
//!   format.
//! - `portpool bench`: each scenario beside its baseline measured in the same
//!   run, as a table and JSON.
//!
//! The default apps are the repository's `examples/` folder.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod call;
mod demo;
mod doctor;
mod json;
mod stats;
mod table;

/// Run and inspect pools of long-lived Python workers.
#[derive(Debug, Parser)]
#[command(name = "portpool", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check that an app can run as a worker, and explain how to fix it if not.
    Doctor {
        /// The Python app: a .py file or module:attr.
        #[arg(long, default_value_os_t = example("demo_app.py"))]
        app: PathBuf,
        /// The interpreter (default: $PORTPOOL_PYTHON, the nearest .venv, python3).
        #[arg(long)]
        python: Option<PathBuf>,
    },
    /// Call one method on a fresh worker and print the result as JSON.
    Call {
        /// The Python app: a .py file or module:attr.
        #[arg(long, default_value_os_t = example("demo_app.py"))]
        app: PathBuf,
        /// The interpreter (default: $PORTPOOL_PYTHON, the nearest .venv, python3).
        #[arg(long)]
        python: Option<PathBuf>,
        /// Run the call in this session (the handler's ctx.session).
        #[arg(long)]
        session: Option<String>,
        /// Give up after this many seconds.
        #[arg(long, value_name = "SECS")]
        timeout: Option<f64>,
        /// The method is a generator: print each chunk as one JSON line.
        #[arg(long)]
        stream: bool,
        /// The method to call.
        method: String,
        /// Its params as JSON (default null); {"$bin": "HEX"} is bytes.
        params: Option<String>,
    },
    /// A bounded mixed workload with a worker killed mid-run, then a report.
    Demo(demo::DemoArgs),
    /// Measure portpool against its baselines; print a table, write JSON.
    Bench(bench::BenchArgs),
}

/// The repository's `examples/` folder (where the CLI was built from).
pub(crate) fn examples_dir() -> PathBuf {
    let dir = std::env::var_os("PORTPOOL_EXAMPLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples")));
    dir.canonicalize().unwrap_or(dir)
}

pub(crate) fn example(file: &str) -> PathBuf {
    examples_dir().join(file)
}

/// The interpreter: explicit, else what the transport would pick.
pub(crate) fn interpreter(explicit: Option<PathBuf>) -> PathBuf {
    explicit.unwrap_or_else(portpool::find_python)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("portpool: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Doctor { app, python } => doctor::run(app, interpreter(python)).await,
            Command::Call {
                app,
                python,
                session,
                timeout,
                stream,
                method,
                params,
            } => {
                let args = call::CallArgs {
                    app,
                    python: interpreter(python),
                    session,
                    timeout,
                    stream,
                    method,
                    params,
                };
                call::run(args).await
            }
            Command::Demo(args) => demo::run(args).await,
            Command::Bench(args) => bench::run(args).await,
        }
    });
    // Workers are stopped by now; do not wait for stray blocking tasks.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}
