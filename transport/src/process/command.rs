use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

use portpool_protocol::DEFAULT_MAX_FRAME;

use super::limits::Limits;

/// How to start one worker process: program, arguments, environment and
/// working directory (no shell is involved), plus the transport's limits.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) env_remove: Vec<OsString>,
    pub(crate) env_clear: bool,
    pub(crate) cwd: Option<PathBuf>,
    pub(crate) init_timeout: Duration,
    pub(crate) max_frame: usize,
    pub(crate) stderr_tail_lines: usize,
    pub(crate) max_concurrency: Option<usize>,
    pub(crate) max_stream_buffer: usize,
    pub(crate) env_allowlist: Option<Vec<OsString>>,
    pub(crate) limits: Limits,
    pub(crate) pipe_buffer: Option<usize>,
    pub(crate) spin: Option<Duration>,
    pub(crate) fork_server: bool,
}

/// Default time a worker has to send its hello.
pub const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Default number of chunks a stream may hold unread before it is
/// cancelled with `CallError::StreamOverflow`.
pub const DEFAULT_MAX_STREAM_BUFFER: usize = 10_000;

/// Default number of stderr lines kept per worker and attached to errors.
pub const DEFAULT_STDERR_TAIL_LINES: usize = 40;

impl WorkerCommand {
    /// Runs `program` (looked up in `PATH` if it has no slash).
    pub fn new(program: impl Into<PathBuf>) -> Self {
        WorkerCommand {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            env_remove: Vec::new(),
            env_clear: false,
            cwd: None,
            init_timeout: DEFAULT_INIT_TIMEOUT,
            max_frame: DEFAULT_MAX_FRAME,
            stderr_tail_lines: DEFAULT_STDERR_TAIL_LINES,
            max_concurrency: None,
            max_stream_buffer: DEFAULT_MAX_STREAM_BUFFER,
            env_allowlist: None,
            limits: Limits::default(),
            pipe_buffer: None,
            spin: None,
            fork_server: false,
        }
    }

    /// Runs the portpool Python runtime on `app` (a `.py` file or
    /// `module:attr`) with the interpreter [`find_python`] picks:
    /// `python -m portpool APP`.
    pub fn python(app: impl AsRef<OsStr>) -> Self {
        Self::python_with(find_python(), app)
    }

    /// Like [`WorkerCommand::python`] with an explicit interpreter.
    pub fn python_with(interpreter: impl Into<PathBuf>, app: impl AsRef<OsStr>) -> Self {
        WorkerCommand::new(interpreter)
            .args(["-m", "portpool"])
            .arg(app)
            // Line-buffered stderr, so logs and tracebacks arrive as written.
            .env("PYTHONUNBUFFERED", "1")
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for the worker.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Removes an inherited environment variable.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.env_remove.push(key.as_ref().to_owned());
        self
    }

    /// Starts from an empty environment (then applies [`WorkerCommand::env`]).
    pub fn env_clear(mut self) -> Self {
        self.env_clear = true;
        self
    }

    /// Environment hygiene: starts the worker from an empty environment and
    /// copies in only the variables named here that the parent has set
    /// (for example `PATH`, `HOME`, `LANG`), so secrets in the host's
    /// environment do not reach the worker. Variables set with
    /// [`WorkerCommand::env`] are added on top, and the launcher always sets
    /// `PORTPOOL_MAX_FRAME`. Calling it again extends the list; an empty
    /// list gives an empty environment (CPython starts fine without one).
    ///
    /// ```
    /// # use portpool_transport::WorkerCommand;
    /// let cmd = WorkerCommand::python("app.py")
    ///     .env_allowlist(["PATH", "HOME", "LANG"])
    ///     .env("MODEL", "small");
    /// ```
    pub fn env_allowlist<I, S>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.env_allowlist
            .get_or_insert_with(Vec::new)
            .extend(keys.into_iter().map(|k| k.as_ref().to_owned()));
        self
    }

    /// Limits the worker's address space (`RLIMIT_AS`) to `bytes`. An
    /// allocation past it fails inside the worker (Python raises
    /// `MemoryError`, which the handler's caller gets as
    /// [`CallError::Remote`](crate::CallError::Remote)); the worker lives on.
    /// Leave headroom: the interpreter and its libraries count too, and
    /// thread stacks are reserved address space.
    pub fn limit_address_space(mut self, bytes: u64) -> Self {
        self.limits.address_space = Some(bytes);
        self
    }

    /// Limits the worker's CPU time (`RLIMIT_CPU`), rounded up to whole
    /// seconds. At the limit the kernel sends SIGXCPU (which ends the
    /// worker), and SIGKILL one second later if it survives; in-flight calls
    /// end with [`CallError::WorkerCrashed`](crate::CallError::WorkerCrashed)
    /// naming the signal, and a pool replaces the worker. The limit counts
    /// the worker's whole life, not one call.
    pub fn limit_cpu_time(mut self, time: Duration) -> Self {
        self.limits.set_cpu_time(time);
        self
    }

    /// Limits the number of file descriptors the worker may have open
    /// (`RLIMIT_NOFILE`); opening more fails in the worker (`OSError`,
    /// "Too many open files").
    pub fn limit_open_files(mut self, n: u64) -> Self {
        self.limits.open_files = Some(n);
        self
    }

    /// Sets the worker's working directory.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// How long the worker has to send its hello (default 30 s).
    pub fn init_timeout(mut self, timeout: Duration) -> Self {
        self.init_timeout = timeout;
        self
    }

    /// Largest frame body accepted or sent (default 64 MiB).
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// How many stderr lines to keep for error reports (default 40).
    pub fn stderr_tail_lines(mut self, lines: usize) -> Self {
        self.stderr_tail_lines = lines;
        self
    }

    /// How many chunks a stream may hold unread (default 10,000): a
    /// consumer slower than its generator gets `CallError::StreamOverflow`
    /// and the call is cancelled, instead of host memory growing without
    /// bound (the protocol has no flow control).
    pub fn max_stream_buffer(mut self, chunks: usize) -> Self {
        self.max_stream_buffer = chunks.max(1);
        self
    }

    /// Asks the kernel for `bytes` of buffer on the worker's stdin and stdout
    /// pipes (Linux `F_SETPIPE_SZ`; the kernel default is 64 KiB). Large
    /// requests and replies then cross in fewer writes and wake-ups: with
    /// 1 MiB, a 1 MiB payload goes in one or two writes instead of sixteen.
    /// Off by default: the kernel counts every pipe's buffer against a
    /// per-user budget (`/proc/sys/fs/pipe-user-pages-soft`, 64 MiB by
    /// default), and past it new pipes of *every* process of that user get
    /// small buffers. The size is rounded up by the kernel; when it refuses
    /// (above `/proc/sys/fs/pipe-max-size`, over the budget) the pipe keeps
    /// its size, silently: it is an optimisation, never a launch failure.
    pub fn pipe_buffer(mut self, bytes: usize) -> Self {
        self.pipe_buffer = (bytes > 0).then_some(bytes);
        self
    }

    /// Low-latency mode: when a read of the worker's stdout finds no reply
    /// while calls are outstanding, keep trying for up to `budget` before
    /// sleeping (off by default; zero turns it off).
    ///
    /// A sleeping reader costs a wake-up when the reply comes: 10–20 µs on
    /// a virtual machine whose CPU halted meanwhile, as much as a small call
    /// itself. Spinning saves it for replies that come within the budget, at
    /// the price of CPU: the thread that reads this worker stays busy for
    /// up to `budget` each time it finds the pipe empty with calls
    /// outstanding — while calls run back to back, most of a core. Worth it
    /// for latency-bound services with cores to spare; 50–200 µs budgets
    /// cover small calls. The worker learns the budget from
    /// `PORTPOOL_SPIN_US` (microseconds), for a runtime that spins on its
    /// side too.
    pub fn spin(mut self, budget: Duration) -> Self {
        self.spin = (!budget.is_zero()).then_some(budget);
        self
    }

    /// Fork server (off by default): the launcher's first launch starts one
    /// "zygote" process running this command, which imports the runtime and
    /// the app once; every worker is then forked from it instead of being a
    /// fresh interpreter, so N workers start in about the time of one and a
    /// costly import is paid once (see `docs/fork-server.md`).
    ///
    /// For the portpool Python runtime only ([`WorkerCommand::python`]:
    /// `python -m portpool APP`, started with `PORTPOOL_FORK_SERVER=1` and
    /// a socket as stdin). Workers keep every guarantee of exec'd ones: own
    /// process group, exit code or signal, group killed on shutdown, drop
    /// and host death, init timeout with the stderr tail (the zygote's, if
    /// the import is what failed). Forking is only safe without threads: if
    /// the app's import started one (OpenMP, gRPC, a CUDA context, ...), the
    /// zygote refuses, a warning is logged and workers are exec'd as usual.
    /// Each forked worker shares the zygote's import: whatever the app set
    /// up at import time (open files, sockets, seeded generators other than
    /// `random`) is shared or copied, not made anew per worker.
    pub fn fork_server(mut self, enable: bool) -> Self {
        self.fork_server = enable;
        self
    }

    /// Whether workers are forked from a fork server
    /// ([`WorkerCommand::fork_server`]).
    pub fn uses_fork_server(&self) -> bool {
        self.fork_server
    }

    /// Caps the concurrency the worker announces in its hello.
    pub fn max_concurrency(mut self, calls: usize) -> Self {
        self.max_concurrency = Some(calls.max(1));
        self
    }

    /// The program that will run.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The configured init timeout.
    pub fn get_init_timeout(&self) -> Duration {
        self.init_timeout
    }
}

/// Picks the Python interpreter for workers: `$PORTPOOL_PYTHON` if set, else
/// the nearest `.venv/bin/python` in the current directory or its parents,
/// else `python3` from `PATH`.
pub fn find_python() -> PathBuf {
    if let Some(explicit) = std::env::var_os("PORTPOOL_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(explicit);
    }
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            let candidate = dir.join(".venv/bin/python");
            if candidate.exists() {
                return candidate;
            }
        }
    }
    PathBuf::from("python3")
}
