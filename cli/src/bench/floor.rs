//! The floors: minimal Python loops driven from Rust with plain blocking
//! pipes, no async runtime and no portpool on either side.
//!
//! - [`FloorKind::Raw`] (`examples/raw_echo.py`) writes each frame back
//!   without decoding it;
//! - [`FloorKind::Decode`] (`examples/decode_echo.py`) decodes each request
//!   with msgpack and encodes a response shaped like the runtime's
//!   (`{type: "response", id, result: params}`): the same work a worker
//!   must do, minus portpool.
//!
//! A floor made [`Floor::spinning`] has a driver that polls the pipe for
//! each reply instead of sleeping in `read` (the baseline of the
//! low-latency mode's row).

use std::io::{BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use portpool::protocol::{decode_body, Message};

use super::usage::{PerCall, Run, Usage};
use crate::stats::Samples;

/// Which floor script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FloorKind {
    /// Bytes echo, no decoding.
    Raw,
    /// msgpack decode + response encode.
    Decode,
}

impl FloorKind {
    /// The script's file name in `examples/`.
    pub(super) fn script(self) -> &'static str {
        match self {
            FloorKind::Raw => "raw_echo.py",
            FloorKind::Decode => "decode_echo.py",
        }
    }

    /// The name in the table.
    pub(super) fn label(self) -> &'static str {
        match self {
            FloorKind::Raw => "raw floor",
            FloorKind::Decode => "decoding floor",
        }
    }
}

/// One floor process.
pub(super) struct Floor {
    kind: FloorKind,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<FloorStdout>,
    buf: Vec<u8>,
    /// The reply's length, known once a first reply was checked in full.
    reply_len: Option<usize>,
}

impl Floor {
    /// Starts `examples/<kind.script()>` with `python`.
    pub(super) fn spawn(python: &Path, examples: &Path, kind: FloorKind) -> Result<Floor, String> {
        let script = examples.join(kind.script());
        let mut child = Command::new(python)
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", script.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{} has no pipes", script.display()));
        };
        Ok(Floor {
            kind,
            child,
            stdin: Some(stdin),
            stdout: BufReader::with_capacity(
                64 * 1024,
                FloorStdout {
                    pipe: stdout,
                    spin: false,
                },
            ),
            buf: Vec::new(),
            reply_len: None,
        })
    }

    /// The same floor with a driver that never sleeps waiting for a reply:
    /// its stdout is made non-blocking and each read retries until data
    /// comes (the floor's side still blocks in its own reads).
    pub(super) fn spinning(mut self) -> Result<Floor, String> {
        let fd = self.stdout.get_ref().pipe.as_raw_fd();
        let flags =
            nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).map_err(|e| self.error("fcntl", e))?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(|e| self.error("fcntl", e))?;
        self.stdout.get_mut().spin = true;
        Ok(self)
    }

    /// The process id.
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn error(&mut self, what: &str, e: impl std::fmt::Display) -> String {
        let status = match self.child.try_wait() {
            Ok(Some(status)) => format!(" ({status})"),
            _ => String::new(),
        };
        format!(
            "{} (pid {}) {what}: {e}{status}",
            self.kind.label(),
            self.child.id()
        )
    }

    fn write(&mut self, frame: &[u8]) -> Result<(), String> {
        let outcome = match self.stdin.as_mut() {
            Some(stdin) => stdin.write_all(frame),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        };
        outcome.map_err(|e| self.error("write", e))
    }

    /// Reads one reply body into `self.buf`.
    fn read(&mut self) -> Result<(), String> {
        let mut header = [0u8; 4];
        if let Err(e) = self.stdout.read_exact(&mut header) {
            return Err(self.error("read", e));
        }
        let len = u32::from_be_bytes(header) as usize;
        self.buf.resize(len, 0);
        if let Err(e) = self.stdout.read_exact(&mut self.buf) {
            return Err(self.error("read", e));
        }
        Ok(())
    }

    /// Reads one reply and checks it: in full the first time (see
    /// [`Floor::check_reply`]), by its length after that (the request is
    /// always the same frame, so is the reply).
    fn read_reply(&mut self, frame: &[u8]) -> Result<(), String> {
        self.read()?;
        match self.reply_len {
            Some(len) if len == self.buf.len() => Ok(()),
            Some(len) => Err(self.error("reply", format!("{} bytes, expected {len}", self.buf.len()))),
            None => {
                self.check_reply(frame)?;
                self.reply_len = Some(self.buf.len());
                Ok(())
            }
        }
    }

    /// Checks the reply in `self.buf` against the request `frame`: the same
    /// bytes (raw floor), or a response with the request's id whose result
    /// is the request's params (decoding floor).
    fn check_reply(&mut self, frame: &[u8]) -> Result<(), String> {
        let body = frame.get(4..).unwrap_or_default();
        let problem = match self.kind {
            FloorKind::Raw if self.buf == body => None,
            FloorKind::Raw => Some("is not the request's bytes".to_owned()),
            FloorKind::Decode => match (decode_body(body), decode_body(&self.buf)) {
                (Ok(Message::Request(req)), Ok(Message::Response(resp))) => {
                    if resp.id != req.id {
                        Some(format!("has id {}, expected {}", resp.id, req.id))
                    } else if resp.outcome.as_ref() != Ok(&req.params) {
                        Some(format!("has outcome {:?}, expected the params", resp.outcome))
                    } else {
                        None
                    }
                }
                (Ok(_), Ok(other)) => Some(format!("is a {other:?}, expected a response")),
                (Err(e), _) => Some(format!("cannot be checked: the request does not decode: {e}")),
                (_, Err(e)) => Some(format!("does not decode: {e}")),
            },
        };
        match problem {
            None => Ok(()),
            Some(p) => Err(self.error("reply", p)),
        }
    }

    /// One request, one reply (checked).
    pub(super) fn round_trip(&mut self, frame: &[u8]) -> Result<(), String> {
        self.write(frame)?;
        self.read_reply(frame)
    }

    /// Warm-up, then sequential round trips for `duration`: one latency
    /// sample per call, host and worker CPU over the window.
    pub(super) fn sequential(&mut self, frame: &[u8], duration: Duration) -> Result<Run, String> {
        for _ in 0..50 {
            self.round_trip(frame)?;
        }
        let pid = self.pid();
        let mut samples = Samples::default();
        let (host0, worker0) = (Usage::host(), Usage::process(pid));
        let started = Instant::now();
        let end = started + duration;
        let mut calls = 0u64;
        while Instant::now() < end {
            let t = Instant::now();
            self.round_trip(frame)?;
            samples.push(t.elapsed());
            calls += 1;
        }
        let secs = started.elapsed().as_secs_f64();
        let (host, worker) = (Usage::host().since(host0), Usage::process(pid).since(worker0));
        Ok(Run {
            samples,
            calls,
            secs,
            per_call: PerCall::new(host, worker, calls),
        })
    }

    /// Each floor keeps `window` copies of `frame` in flight (one driver
    /// thread per floor) for a `warmup`, then for `duration`; counts the
    /// replies read inside that window and their latencies (from the write
    /// of a request to the read of its reply).
    pub(super) fn pipelined(
        floors: &mut [Floor],
        frame: &[u8],
        window: usize,
        warmup: Duration,
        duration: Duration,
    ) -> Result<Run, String> {
        let window = window.max(1);
        let pids: Vec<u32> = floors.iter().map(Floor::pid).collect();
        let start = Instant::now() + warmup;
        let end = start + duration;
        std::thread::scope(|scope| {
            let drivers: Vec<_> = floors
                .iter_mut()
                .map(|floor| scope.spawn(move || floor.keep_in_flight(frame, window, start, end)))
                .collect();
            std::thread::sleep(start.saturating_duration_since(Instant::now()));
            let (host0, worker0) = (Usage::host(), Usage::processes(&pids));
            std::thread::sleep(end.saturating_duration_since(Instant::now()));
            let (host, worker) = (Usage::host().since(host0), Usage::processes(&pids).since(worker0));
            let (mut calls, mut samples) = (0, Samples::default());
            for driver in drivers {
                let (counted, latencies) = driver
                    .join()
                    .map_err(|_| "a floor driver panicked".to_owned())??;
                calls += counted;
                samples.extend(latencies);
            }
            Ok(Run {
                samples,
                calls,
                secs: duration.as_secs_f64(),
                per_call: PerCall::new(host, worker, calls),
            })
        })
    }

    fn keep_in_flight(
        &mut self,
        frame: &[u8],
        window: usize,
        start: Instant,
        end: Instant,
    ) -> Result<(u64, Samples), String> {
        // The floor answers in order: the oldest write is the next reply's.
        let mut sent = std::collections::VecDeque::with_capacity(window);
        for _ in 0..window {
            sent.push_back(Instant::now());
            self.write(frame)?;
        }
        let (mut counted, mut samples) = (0, Samples::default());
        loop {
            self.read_reply(frame)?;
            let now = Instant::now();
            let written = sent.pop_front().unwrap_or(now);
            if now >= end {
                break;
            }
            if now >= start {
                counted += 1;
                samples.push(now - written);
            }
            sent.push_back(Instant::now());
            self.write(frame)?;
        }
        for _ in 1..window {
            self.read_reply(frame)?;
        }
        Ok((counted, samples))
    }

    /// Closes stdin (the script exits on end of input) and reaps it.
    pub(super) fn stop(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A floor's stdout: read as usual, or (spinning) retried without sleeping
/// while the pipe is empty.
struct FloorStdout {
    pipe: ChildStdout,
    spin: bool,
}

impl Read for FloorStdout {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.pipe.read(buf) {
                Err(e) if self.spin && e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::calls::request_frame;
    use portpool::Value;

    fn python() -> std::path::PathBuf {
        crate::interpreter(None)
    }

    fn payload() -> Value {
        Value::Map(vec![
            (Value::from("n"), Value::from(1)),
            (Value::from("s"), Value::from("hello, portpool")),
        ])
    }

    /// The decoding floor answers the very frame portpool sends with a
    /// response carrying its id and its params as the result, sequentially
    /// and with several requests in flight over two processes.
    #[test]
    fn decoding_floor_replies_like_the_runtime() {
        let frame = request_frame("echo", payload()).unwrap();
        let mut floor = Floor::spawn(&python(), &crate::examples_dir(), FloorKind::Decode).unwrap();
        floor.write(&frame).unwrap();
        floor.read().unwrap();
        floor.check_reply(&frame).unwrap();
        // The exact bytes the runtime's response would have.
        let expected = portpool::protocol::encode_body(&Message::Response(portpool::protocol::Response {
            id: 1000,
            outcome: Ok(payload()),
        }))
        .unwrap();
        assert_eq!(floor.buf, expected);

        let run = floor.sequential(&frame, Duration::from_millis(50)).unwrap();
        assert!(run.calls > 0 && run.samples.len() as u64 == run.calls);
        assert_eq!(floor.reply_len, Some(expected.len()));

        let mut floors = vec![
            floor,
            Floor::spawn(&python(), &crate::examples_dir(), FloorKind::Decode).unwrap(),
        ];
        let run = Floor::pipelined(
            &mut floors,
            &frame,
            4,
            Duration::from_millis(20),
            Duration::from_millis(50),
        )
        .unwrap();
        assert!(run.calls > 0 && run.samples.len() as u64 == run.calls);
        // Every reply was read back: the pipes are empty and both still answer.
        for mut floor in floors {
            floor.round_trip(&frame).unwrap();
            floor.stop();
        }
    }

    #[test]
    fn raw_floor_echoes_bytes() {
        let frame = request_frame("echo", Value::Binary(vec![7; 100_000])).unwrap();
        let mut floor = Floor::spawn(&python(), &crate::examples_dir(), FloorKind::Raw).unwrap();
        floor.round_trip(&frame).unwrap();
        assert_eq!(floor.buf, frame[4..]);
        floor.stop();
    }

    /// A reply that does not answer the request is an error naming the
    /// floor, not a figure.
    #[test]
    fn wrong_replies_are_errors() {
        let frame = request_frame("echo", payload()).unwrap();
        let mut floor = Floor::spawn(&python(), &crate::examples_dir(), FloorKind::Decode).unwrap();
        floor.write(&frame).unwrap();
        floor.read().unwrap();
        floor.buf = frame[4..].to_vec(); // the request itself, not a response
        let err = floor.check_reply(&frame).unwrap_err();
        assert!(
            err.contains("decoding floor") && err.contains("expected a response"),
            "{err}"
        );
        floor.reply_len = Some(3);
        let err = floor.round_trip(&frame).unwrap_err();
        assert!(err.contains("expected 3"), "{err}");
        floor.stop();
    }

    #[test]
    fn a_dead_floor_is_an_error() {
        let frame = request_frame("echo", payload()).unwrap();
        let mut floor = Floor::spawn(&python(), &crate::examples_dir(), FloorKind::Decode).unwrap();
        floor.child.kill().unwrap();
        let _ = floor.child.wait();
        let err = floor.round_trip(&frame).unwrap_err();
        assert!(err.contains("decoding floor"), "{err}");
    }
}
