//! The `fake-worker` binary's flags, and how tests find the binary.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

/// Environment variable naming the `fake-worker` binary explicitly; checked
/// first by [`fake_worker_path`].
pub const FAKE_WORKER_ENV: &str = "PORTPOOL_FAKE_WORKER";

/// The `fake-worker` binary was not found by [`fake_worker_path`].
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the fake-worker binary was not found (looked at: {}); build it first with \
     `cargo build -p portpool-testkit --bin fake-worker` (same profile and target dir as the tests), \
     or set {FAKE_WORKER_ENV} to its path",
    .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
)]
pub struct FakeWorkerNotFound {
    /// The paths that were tried, in order.
    pub searched: Vec<PathBuf>,
}

/// The path of the `fake-worker` binary, for tests that spawn it.
///
/// Looks, in order, at `$PORTPOOL_FAKE_WORKER`, then next to the current
/// executable and in its parent directory: a test binary lives in
/// `target/<profile>/deps/`, and `fake-worker` in `target/<profile>/`.
///
/// Cargo builds `fake-worker` automatically only for this crate's own
/// tests. Another crate's tests (pool, transport, yours) need it built
/// first, with the same profile and target directory:
/// `cargo build -p portpool-testkit --bin fake-worker`. This function never
/// builds it; when it is missing it returns an error saying so.
pub fn fake_worker_path() -> Result<PathBuf, FakeWorkerNotFound> {
    let mut searched = Vec::new();
    if let Some(path) = std::env::var_os(FAKE_WORKER_ENV) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        searched.push(path);
    }
    if let Ok(exe) = std::env::current_exe() {
        let name = format!("fake-worker{}", std::env::consts::EXE_SUFFIX);
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join(&name);
            if candidate.is_file() {
                return Ok(candidate);
            }
            searched.push(candidate);
        }
    }
    Err(FakeWorkerNotFound { searched })
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

    /// A [`Command`] running the `fake-worker` binary (found with
    /// [`fake_worker_path`]) with these flags.
    pub fn command(&self) -> Result<Command, FakeWorkerNotFound> {
        let mut command = Command::new(fake_worker_path()?);
        command.args(self.to_args());
        Ok(command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn missing_binary_error_says_how_to_build_it() {
        let error = FakeWorkerNotFound {
            searched: vec![PathBuf::from("/nope/fake-worker")],
        };
        let message = error.to_string();
        assert!(message.contains("/nope/fake-worker"), "{message}");
        assert!(
            message.contains("cargo build -p portpool-testkit --bin fake-worker"),
            "{message}"
        );
    }
}
