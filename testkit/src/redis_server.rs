//! A throwaway `redis-server` for tests: started on a free loopback port
//! with a temporary directory and no persistence, killed on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The variable that names the `redis-server` binary (default: found on
/// `PATH`).
pub const REDIS_SERVER_ENV: &str = "PORTPOOL_REDIS_SERVER";

/// How long a started server has to answer `PING`.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// Why a [`RedisServer`] could not be started.
#[derive(Debug, thiserror::Error)]
pub enum RedisServerError {
    /// `redis-server` is neither on `PATH` nor named by
    /// [`REDIS_SERVER_ENV`].
    #[error(
        "redis-server not found on PATH (nor in ${REDIS_SERVER_ENV}); run `cargo xtask setup` to install it"
    )]
    NotFound,
    /// It was found but did not start or answer `PING` in time.
    #[error("redis-server on port {port} did not start: {reason}")]
    Start {
        /// The port it was started on.
        port: u16,
        /// What went wrong (with the end of its log).
        reason: String,
    },
}

/// A `redis-server` child process on `127.0.0.1:PORT`, with `--save ''`
/// and `--appendonly no` in a temporary directory: started by
/// [`RedisServer::start`], killed (and its directory removed) on drop, so a
/// test leaves no process behind. [`stop`](Self::stop) and
/// [`restart`](Self::restart) simulate an outage on the same port.
///
/// ```no_run
/// use portpool_testkit::RedisServer;
///
/// // Skips (returns) where redis-server is missing, fails under CI.
/// let Some(redis) = RedisServer::start_or_skip("my_test") else { return };
/// println!("redis at {}", redis.url());
/// ```
#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// Where the `redis-server` binary is, if anywhere.
pub fn redis_server_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(REDIS_SERVER_ENV) {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers
    /// `PING` (at most 10 s).
    pub fn start() -> Result<Self, RedisServerError> {
        let binary = redis_server_path().ok_or(RedisServerError::NotFound)?;
        let mut last = None;
        // A free port can be taken between the probe and the server's bind:
        // try a few.
        for _ in 0..3 {
            let port = free_port().map_err(|e| RedisServerError::Start {
                port: 0,
                reason: format!("no free port: {e}"),
            })?;
            let dir = std::env::temp_dir().join(format!(
                "portpool-redis-{}-{port}-{:08x}",
                std::process::id(),
                rand_u32()
            ));
            let mut server = RedisServer {
                binary: binary.clone(),
                port,
                dir,
                child: None,
            };
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(RedisServerError::NotFound))
    }

    /// [`start`](Self::start) for a test: `None`, after a loud notice on
    /// stderr, when `redis-server` is not installed, so the test can
    /// return (skip) on a machine without it; but when the `CI`
    /// environment variable is set, a missing server fails the test (it
    /// panics, saying to run `cargo xtask setup`). A server that is
    /// installed but does not start always fails the test.
    pub fn start_or_skip(test: &str) -> Option<Self> {
        match Self::start() {
            Ok(server) => Some(server),
            Err(RedisServerError::NotFound) if std::env::var_os("CI").is_none() => {
                // Straight to stderr, not through `eprintln!`, which the
                // test harness captures (and hides for a passing test).
                let notice = format!(
                    "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                     SKIPPED {test}: redis-server is not installed (run `cargo xtask setup`)\n\
                     !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
                );
                let _ = std::io::stderr().lock().write_all(notice.as_bytes());
                None
            }
            Err(e @ RedisServerError::NotFound) => {
                panic!("{test}: {e} (CI is set, so this test may not be skipped)")
            }
            Err(e) => panic!("{test}: {e}"),
        }
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it is running (started and not stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL) and reaps it; its data is gone. Does
    /// nothing if it is stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty), and waits for
    /// `PING`.
    pub fn restart(&mut self) -> Result<(), RedisServerError> {
        self.stop();
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            match self.launch() {
                Ok(()) => return Ok(()),
                // The port may linger for a moment after the kill.
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => return Err(e),
            }
        }
    }

    fn launch(&mut self) -> Result<(), RedisServerError> {
        let port = self.port;
        let fail = |reason: String| RedisServerError::Start { port, reason };
        std::fs::create_dir_all(&self.dir).map_err(|e| fail(format!("{}: {e}", self.dir.display())))?;
        let log = self.dir.join("redis.log");
        let mut child = Command::new(&self.binary)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .args(["--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| fail(format!("cannot run {}: {e}", self.binary.display())))?;
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(fail(format!("exited with {status}; log: {}", tail(&log))));
            }
            if ping(port) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!(
                    "no PONG within {READY_WITHIN:?}; log: {}",
                    tail(&log)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether a Redis on 127.0.0.1:`port` answers `PING` with `+PONG`.
fn ping(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u32
}

/// The last lines of the server's log, for error messages.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}
