//! The `fake-worker` binary's flags, and how tests find (or build) the binary.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use portpool_transport::WorkerCommand;

/// Environment variable naming the `fake-worker` binary explicitly; checked
/// first by [`fake_worker_path`].
pub const FAKE_WORKER_ENV: &str = "PORTPOOL_FAKE_WORKER";

/// Environment variable that, set to `1`, stops [`fake_worker_path`] from
/// building the binary when it finds none (it returns
/// [`FakeWorkerError::NotFound`] instead).
pub const FAKE_WORKER_NO_BUILD_ENV: &str = "PORTPOOL_FAKE_WORKER_NO_BUILD";

/// Name of the directory, inside the calling test's profile directory
/// (`target/<profile>/`), that is the target directory of the testkit's own
/// build of `fake-worker`.
pub const FAKE_WORKER_TARGET_DIR: &str = "portpool-testkit-fake-worker";

/// Why [`fake_worker_path`] could not give the `fake-worker` binary.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum FakeWorkerError {
    /// No binary was found and building was disabled
    /// (`PORTPOOL_FAKE_WORKER_NO_BUILD=1`).
    #[error(
        "the fake-worker binary was not found (looked at: {}) and building it is disabled by \
         {FAKE_WORKER_NO_BUILD_ENV}; set {FAKE_WORKER_ENV} to its path, or unset \
         {FAKE_WORKER_NO_BUILD_ENV} to let the testkit build it",
        display_paths(.searched)
    )]
    NotFound {
        /// The paths that were tried, in order.
        searched: Vec<PathBuf>,
    },
    /// No binary was found, and `cargo` (from `$CARGO`, else `PATH`) could
    /// not be started to build it.
    #[error(
        "the fake-worker binary was not found (looked at: {}) and cargo could not be started \
         to build it ({cargo}: {error}); install cargo or set {FAKE_WORKER_ENV} to the binary's path",
        display_paths(.searched), cargo = .cargo.display()
    )]
    CargoUnavailable {
        /// The paths that were tried, in order.
        searched: Vec<PathBuf>,
        /// The cargo program that was tried.
        cargo: PathBuf,
        /// Why it could not be started.
        error: String,
    },
    /// `cargo build` of the testkit's `fake-worker` failed.
    #[error("building fake-worker failed ({status}): {command}\n{output_tail}")]
    BuildFailed {
        /// The command that was run.
        command: String,
        /// Its exit status.
        status: String,
        /// The last lines of its output.
        output_tail: String,
    },
    /// `cargo build` succeeded but the binary is not where it should be
    /// (e.g. `CARGO_BUILD_TARGET` moved it).
    #[error("cargo built fake-worker but it is not at {}", .path.display())]
    BuiltButMissing {
        /// Where it was expected.
        path: PathBuf,
    },
}

/// The former name of [`FakeWorkerError`].
pub type FakeWorkerNotFound = FakeWorkerError;

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The path of the `fake-worker` binary, for tests that spawn it; builds it
/// when it is missing, so any crate's tests work on a clean checkout.
///
/// Looks, in order:
/// 1. at `$PORTPOOL_FAKE_WORKER`;
/// 2. next to the current executable and in its parent directory: a test
///    binary lives in `target/<profile>/deps/`, and a `fake-worker` that
///    cargo built for the same workspace (e.g. by `cargo test --workspace`)
///    in `target/<profile>/`;
/// 3. otherwise it builds it: `cargo build --manifest-path
///    <testkit>/Cargo.toml --bin fake-worker --target-dir
///    target/<profile>/portpool-testkit-fake-worker` (the testkit's own
///    manifest, in its own target directory, so it never waits on the
///    `cargo test` that runs the caller, and never needs `-p` to resolve the
///    testkit as a dependency of the caller). That build runs once per test
///    process (a no-op when it is up to date); threads of one process wait
///    for one build, and cargo's own lock on the target directory serializes
///    concurrent test processes. The first build takes as long as building
///    the testkit; later ones take well under a second.
///
/// Set `PORTPOOL_FAKE_WORKER_NO_BUILD=1` to forbid step 3. Errors are typed
/// ([`FakeWorkerError`]): cargo missing, the build failing (with its output
/// tail), or the binary not found.
pub fn fake_worker_path() -> Result<PathBuf, FakeWorkerError> {
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut searched = Vec::new();
    if let Some(path) = std::env::var_os(FAKE_WORKER_ENV) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        searched.push(path);
    }
    let name = format!("fake-worker{}", std::env::consts::EXE_SUFFIX);
    let exe = std::env::current_exe().ok();
    if let Some(exe) = &exe {
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join(&name);
            if candidate.is_file() {
                return Ok(candidate);
            }
            searched.push(candidate);
        }
    }
    if std::env::var_os(FAKE_WORKER_NO_BUILD_ENV).is_some_and(|v| v == "1") {
        return Err(FakeWorkerError::NotFound { searched });
    }
    // One build per process; other threads wait for it.
    let mut built = crate::lock(&BUILT);
    if let Some(path) = built.as_ref() {
        if path.is_file() {
            return Ok(path.clone());
        }
    }
    let target_dir = build_target_dir(exe.as_deref());
    let path = build_fake_worker(&cargo_program(), &target_dir, searched)?;
    *built = Some(path.clone());
    Ok(path)
}

/// Where the testkit builds `fake-worker`: beside the calling test binary's
/// profile directory, or in the system temp directory when there is none.
fn build_target_dir(exe: Option<&Path>) -> PathBuf {
    let profile_dir = exe
        .and_then(Path::parent)
        .filter(|deps| deps.file_name().is_some_and(|n| n == "deps"))
        .and_then(Path::parent);
    match profile_dir {
        Some(dir) => dir.join(FAKE_WORKER_TARGET_DIR),
        None => std::env::temp_dir().join(FAKE_WORKER_TARGET_DIR),
    }
}

/// The cargo to build with: `$CARGO` (set by `cargo test` for the tests it
/// runs), else the cargo that built the testkit, else `cargo` from `PATH`.
fn cargo_program() -> PathBuf {
    PathBuf::from(
        std::env::var_os("CARGO")
            .or_else(|| option_env!("CARGO").map(OsString::from))
            .unwrap_or_else(|| "cargo".into()),
    )
}

/// Runs `cargo build` of the testkit's own manifest into `target_dir` and
/// returns the binary's path.
fn build_fake_worker(
    cargo: &Path,
    target_dir: &Path,
    searched: Vec<PathBuf>,
) -> Result<PathBuf, FakeWorkerError> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let mut command = Command::new(cargo);
    command
        .arg("build")
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(&manifest)
        .args(["--bin", "fake-worker", "--target-dir"])
        .arg(target_dir)
        // The calling `cargo test` may have set these for itself; the
        // testkit's build must go where it says.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .stdin(Stdio::null());
    let described = format!("{command:?}");
    let output = command
        .output()
        .map_err(|error| FakeWorkerError::CargoUnavailable {
            searched,
            cargo: cargo.to_path_buf(),
            error: error.to_string(),
        })?;
    if !output.status.success() {
        let text = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = text.lines().collect();
        let output_tail = lines[lines.len().saturating_sub(30)..].join("\n");
        return Err(FakeWorkerError::BuildFailed {
            command: described,
            status: output.status.to_string(),
            output_tail,
        });
    }
    let path = target_dir
        .join("debug")
        .join(format!("fake-worker{}", std::env::consts::EXE_SUFFIX));
    if path.is_file() {
        Ok(path)
    } else {
        Err(FakeWorkerError::BuiltButMissing { path })
    }
}

/// The flags of the `fake-worker` binary, as a builder: build the command
/// line for a test instead of spelling flags by hand.
///
/// The binary speaks the wire protocol over stdin/stdout: it sends its hello
/// (after `--init-delay-ms`), then serves each request on its own thread:
///
/// | method        | params      | does                                                        |
/// |---------------|-------------|-------------------------------------------------------------|
/// | `echo`        | any         | returns params                                              |
/// | `sleep`       | ms (int)    | sleeps, returns params (calls run concurrently)             |
/// | `fail`        | any         | error response, type `ValueError`                           |
/// | `stream`      | n (int)     | chunks 0..n, then a nil response                            |
/// | `pid`         | -           | its process id                                              |
/// | `big`         | n (int)     | returns n bytes (bin), for large frames                     |
/// | `stderr`      | str         | writes the string to stderr, returns nil                    |
/// | `crash`       | -           | exits at once with code 101                                 |
/// | `exit`        | code (int)  | exits at once with that code                                |
/// | `garbage`     | -           | writes non-frame bytes to stdout (a protocol violation)     |
/// | `huge_header` | -           | writes a header announcing a 1 GiB frame                    |
///
/// Any other method gets an error response of type `MethodNotFound`. Pings
/// are answered with pongs; cancels and session closes are ignored. It exits
/// 0 on `shutdown` (after finishing in-flight requests) and on stdin EOF.
///
/// ```
/// use portpool_testkit::FakeWorkerArgs;
///
/// let args = FakeWorkerArgs::new().init_delay_ms(50).crash_after(3).to_args();
/// assert_eq!(args, ["--init-delay-ms", "50", "--crash-after", "3"]);
/// assert_eq!(FakeWorkerArgs::parse(args).unwrap(), FakeWorkerArgs::new().init_delay_ms(50).crash_after(3));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeWorkerArgs {
    /// `--init-delay-ms N`: wait before the hello.
    pub init_delay_ms: u64,
    /// `--exit-during-init CODE`: write a message to stderr and exit before the hello.
    pub exit_during_init: Option<i32>,
    /// `--no-hello`: write to stderr, then never send the hello.
    pub no_hello: bool,
    /// `--garbage-before-hello`: write non-frame bytes to stdout first.
    pub garbage_before_hello: bool,
    /// `--huge-header`: announce a 1 GiB frame instead of the hello.
    pub huge_header: bool,
    /// `--bad-msgpack`: send a frame that is not MessagePack instead of the hello.
    pub bad_msgpack: bool,
    /// `--protocol-major N`: the protocol major the hello announces (default 1).
    pub protocol_major: u16,
    /// `--crash-after N`: serve N requests; exit with code 101 when the next arrives.
    pub crash_after: Option<u64>,
    /// `--ignore-shutdown`: ignore `shutdown` messages (exit only on EOF or a signal).
    pub ignore_shutdown: bool,
    /// `--max-concurrency N`: what the hello announces (default 4).
    pub max_concurrency: u32,
    /// `--stderr-lines N`: write N lines to stderr at start.
    pub stderr_lines: u32,
    /// `--exit-on-eof` (default) / `--no-exit-on-eof`: whether stdin EOF ends it.
    pub exit_on_eof: bool,
}

impl Default for FakeWorkerArgs {
    fn default() -> Self {
        FakeWorkerArgs {
            init_delay_ms: 0,
            exit_during_init: None,
            no_hello: false,
            garbage_before_hello: false,
            huge_header: false,
            bad_msgpack: false,
            protocol_major: portpool_protocol::PROTOCOL_VERSION.major,
            crash_after: None,
            ignore_shutdown: false,
            max_concurrency: 4,
            stderr_lines: 0,
            exit_on_eof: true,
        }
    }
}

impl FakeWorkerArgs {
    /// The defaults: a healthy worker.
    pub fn new() -> Self {
        Self::default()
    }

    /// See [`FakeWorkerArgs::init_delay_ms`](#structfield.init_delay_ms).
    pub fn init_delay_ms(mut self, ms: u64) -> Self {
        self.init_delay_ms = ms;
        self
    }

    /// See [`FakeWorkerArgs::exit_during_init`](#structfield.exit_during_init).
    pub fn exit_during_init(mut self, code: i32) -> Self {
        self.exit_during_init = Some(code);
        self
    }

    /// See [`FakeWorkerArgs::no_hello`](#structfield.no_hello).
    pub fn no_hello(mut self) -> Self {
        self.no_hello = true;
        self
    }

    /// See [`FakeWorkerArgs::garbage_before_hello`](#structfield.garbage_before_hello).
    pub fn garbage_before_hello(mut self) -> Self {
        self.garbage_before_hello = true;
        self
    }

    /// See [`FakeWorkerArgs::huge_header`](#structfield.huge_header).
    pub fn huge_header(mut self) -> Self {
        self.huge_header = true;
        self
    }

    /// See [`FakeWorkerArgs::bad_msgpack`](#structfield.bad_msgpack).
    pub fn bad_msgpack(mut self) -> Self {
        self.bad_msgpack = true;
        self
    }

    /// See [`FakeWorkerArgs::protocol_major`](#structfield.protocol_major).
    pub fn protocol_major(mut self, major: u16) -> Self {
        self.protocol_major = major;
        self
    }

    /// See [`FakeWorkerArgs::crash_after`](#structfield.crash_after).
    pub fn crash_after(mut self, n: u64) -> Self {
        self.crash_after = Some(n);
        self
    }

    /// See [`FakeWorkerArgs::ignore_shutdown`](#structfield.ignore_shutdown).
    pub fn ignore_shutdown(mut self) -> Self {
        self.ignore_shutdown = true;
        self
    }

    /// See [`FakeWorkerArgs::max_concurrency`](#structfield.max_concurrency).
    pub fn max_concurrency(mut self, n: u32) -> Self {
        self.max_concurrency = n;
        self
    }

    /// See [`FakeWorkerArgs::stderr_lines`](#structfield.stderr_lines).
    pub fn stderr_lines(mut self, n: u32) -> Self {
        self.stderr_lines = n;
        self
    }

    /// See [`FakeWorkerArgs::exit_on_eof`](#structfield.exit_on_eof).
    pub fn exit_on_eof(mut self, exit: bool) -> Self {
        self.exit_on_eof = exit;
        self
    }

    /// The command-line arguments for these flags (only non-defaults).
    pub fn to_args(&self) -> Vec<String> {
        let defaults = FakeWorkerArgs::default();
        let mut args = Vec::new();
        let mut flag = |name: &str, value: Option<String>| {
            args.push(format!("--{name}"));
            args.extend(value);
        };
        if self.init_delay_ms != defaults.init_delay_ms {
            flag("init-delay-ms", Some(self.init_delay_ms.to_string()));
        }
        if let Some(code) = self.exit_during_init {
            flag("exit-during-init", Some(code.to_string()));
        }
        if self.no_hello {
            flag("no-hello", None);
        }
        if self.garbage_before_hello {
            flag("garbage-before-hello", None);
        }
        if self.huge_header {
            flag("huge-header", None);
        }
        if self.bad_msgpack {
            flag("bad-msgpack", None);
        }
        if self.protocol_major != defaults.protocol_major {
            flag("protocol-major", Some(self.protocol_major.to_string()));
        }
        if let Some(n) = self.crash_after {
            flag("crash-after", Some(n.to_string()));
        }
        if self.ignore_shutdown {
            flag("ignore-shutdown", None);
        }
        if self.max_concurrency != defaults.max_concurrency {
            flag("max-concurrency", Some(self.max_concurrency.to_string()));
        }
        if self.stderr_lines != defaults.stderr_lines {
            flag("stderr-lines", Some(self.stderr_lines.to_string()));
        }
        if !self.exit_on_eof {
            flag("no-exit-on-eof", None);
        }
        args
    }

    /// Parses command-line arguments (without the program name).
    pub fn parse<I, S>(args: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        fn value<T: std::str::FromStr>(
            name: &str,
            args: &mut impl Iterator<Item = String>,
        ) -> Result<T, String> {
            let raw = args.next().ok_or_else(|| format!("--{name} needs a value"))?;
            raw.parse()
                .map_err(|_| format!("--{name}: invalid value {raw:?}"))
        }
        let mut parsed = FakeWorkerArgs::default();
        let mut args = args.into_iter().map(|a| a.into().to_string_lossy().into_owned());
        while let Some(arg) = args.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
                None => (arg.clone(), None),
            };
            let mut rest = inline.into_iter().chain(&mut args);
            match name.as_str() {
                "--init-delay-ms" => parsed.init_delay_ms = value(&name[2..], &mut rest)?,
                "--exit-during-init" => parsed.exit_during_init = Some(value(&name[2..], &mut rest)?),
                "--no-hello" => parsed.no_hello = true,
                "--garbage-before-hello" => parsed.garbage_before_hello = true,
                "--huge-header" => parsed.huge_header = true,
                "--bad-msgpack" => parsed.bad_msgpack = true,
                "--protocol-major" => parsed.protocol_major = value(&name[2..], &mut rest)?,
                "--crash-after" => parsed.crash_after = Some(value(&name[2..], &mut rest)?),
                "--ignore-shutdown" => parsed.ignore_shutdown = true,
                "--max-concurrency" => parsed.max_concurrency = value(&name[2..], &mut rest)?,
                "--stderr-lines" => parsed.stderr_lines = value(&name[2..], &mut rest)?,
                "--exit-on-eof" if arg.contains('=') => parsed.exit_on_eof = value(&name[2..], &mut rest)?,
                "--exit-on-eof" => parsed.exit_on_eof = true,
                "--no-exit-on-eof" => parsed.exit_on_eof = false,
                _ => return Err(format!("unknown argument {arg:?}")),
            }
        }
        Ok(parsed)
    }

    /// A [`std::process::Command`] running the `fake-worker` binary (found
    /// or built with [`fake_worker_path`]) with these flags: for tests that
    /// spawn it themselves. To launch it through the transport or a pool,
    /// use [`FakeWorkerArgs::worker_command`].
    pub fn command(&self) -> Result<Command, FakeWorkerError> {
        let mut command = Command::new(fake_worker_path()?);
        command.args(self.to_args());
        Ok(command)
    }

    /// A [`WorkerCommand`] running the `fake-worker` binary (found or built
    /// with [`fake_worker_path`]) with these flags, ready for a
    /// `ProcessLauncher` or a pool; chain more settings onto it
    /// (`.init_timeout(..)`, `.max_frame(..)`, limits).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use portpool_testkit::FakeWorkerArgs;
    ///
    /// let command = FakeWorkerArgs::new()
    ///     .crash_after(3)
    ///     .worker_command()
    ///     .unwrap()
    ///     .init_timeout(Duration::from_secs(2));
    /// let launcher = portpool_transport::ProcessLauncher::new(command);
    /// # drop(launcher);
    /// ```
    pub fn worker_command(&self) -> Result<WorkerCommand, FakeWorkerError> {
        Ok(WorkerCommand::new(fake_worker_path()?).args(self.to_args()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_failing_cargo_is_a_typed_error() {
        let target = std::env::temp_dir().join(format!("portpool-fake-bin-test-{}", std::process::id()));
        let missing = build_fake_worker(
            Path::new("/nonexistent/cargo"),
            &target,
            vec![PathBuf::from("/a")],
        );
        match missing {
            Err(FakeWorkerError::CargoUnavailable { cargo, searched, .. }) => {
                assert_eq!(cargo, Path::new("/nonexistent/cargo"));
                assert_eq!(searched, [PathBuf::from("/a")]);
            }
            other => panic!("expected CargoUnavailable, got {other:?}"),
        }
        // `false` exits 1 whatever its arguments: a failed build.
        match build_fake_worker(Path::new("false"), &target, vec![]) {
            Err(FakeWorkerError::BuildFailed { command, status, .. }) => {
                assert!(command.contains("fake-worker"), "{command}");
                assert!(status.contains('1'), "{status}");
            }
            other => panic!("expected BuildFailed, got {other:?}"),
        }
        // `true` succeeds without building anything.
        match build_fake_worker(Path::new("true"), &target, vec![]) {
            Err(FakeWorkerError::BuiltButMissing { path }) => assert!(path.starts_with(&target)),
            other => panic!("expected BuiltButMissing, got {other:?}"),
        }
    }

    #[test]
    fn the_build_goes_beside_the_test_binary_profile_dir() {
        assert_eq!(
            build_target_dir(Some(Path::new("/t/debug/deps/x-123"))),
            Path::new("/t/debug").join(FAKE_WORKER_TARGET_DIR)
        );
        assert_eq!(
            build_target_dir(Some(Path::new("/usr/bin/x"))),
            std::env::temp_dir().join(FAKE_WORKER_TARGET_DIR)
        );
    }

    #[test]
    fn every_flag_round_trips() {
        let all = FakeWorkerArgs {
            init_delay_ms: 5,
            exit_during_init: Some(3),
            no_hello: true,
            garbage_before_hello: true,
            huge_header: true,
            bad_msgpack: true,
            protocol_major: 9,
            crash_after: Some(2),
            ignore_shutdown: true,
            max_concurrency: 7,
            stderr_lines: 4,
            exit_on_eof: false,
        };
        assert_eq!(FakeWorkerArgs::parse(all.to_args()).unwrap(), all);
        assert_eq!(
            FakeWorkerArgs::parse(Vec::<String>::new()).unwrap(),
            FakeWorkerArgs::default()
        );
        assert!(FakeWorkerArgs::default().to_args().is_empty());
    }

    #[test]
    fn parse_accepts_inline_values_and_rejects_junk() {
        let parsed = FakeWorkerArgs::parse(["--crash-after=4", "--exit-on-eof=false"]).unwrap();
        assert_eq!(parsed.crash_after, Some(4));
        assert!(!parsed.exit_on_eof);
        assert!(FakeWorkerArgs::parse(["--bogus"])
            .unwrap_err()
            .contains("unknown argument"));
        assert!(FakeWorkerArgs::parse(["--crash-after"])
            .unwrap_err()
            .contains("needs a value"));
        assert!(FakeWorkerArgs::parse(["--crash-after", "x"])
            .unwrap_err()
            .contains("invalid value"));
    }

    #[test]
    fn missing_binary_errors_say_what_was_tried() {
        let error = FakeWorkerError::NotFound {
            searched: vec![PathBuf::from("/nope/fake-worker")],
        };
        let message = error.to_string();
        assert!(message.contains("/nope/fake-worker"), "{message}");
        assert!(message.contains(FAKE_WORKER_ENV), "{message}");
        let error = FakeWorkerError::CargoUnavailable {
            searched: vec![],
            cargo: PathBuf::from("/no/cargo"),
            error: "No such file or directory".into(),
        };
        let message = error.to_string();
        assert!(message.contains("/no/cargo"), "{message}");
        assert!(message.contains("No such file"), "{message}");
    }
}
