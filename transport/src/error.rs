use std::sync::Arc;
use std::time::Duration;

use portpool_protocol::RemoteError;

use crate::{WorkerExit, WorkerId};

/// Formats a stderr tail for an error message: nothing when empty.
pub(crate) struct Tail<'a>(pub &'a str);

impl std::fmt::Display for Tail<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.trim().is_empty() {
            Ok(())
        } else {
            write!(f, "\n--- stderr tail ---\n{}", self.0.trim_end())
        }
    }
}

/// Formats an optional pid.
pub(crate) struct Pid(pub Option<u32>);

impl std::fmt::Display for Pid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(pid) => write!(f, "pid {pid}"),
            None => write!(f, "no pid"),
        }
    }
}

/// Formats where a worker is: its endpoint when remote, else its pid.
pub(crate) struct Who<'a>(pub Option<u32>, pub &'a Option<String>);

impl std::fmt::Display for Who<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.1 {
            Some(endpoint) => write!(f, "at {endpoint}"),
            None => Pid(self.0).fmt(f),
        }
    }
}

/// Why a worker was declared dead: the typed cause behind
/// [`CallError::WorkerCrashed`], for code that must tell faults apart (the
/// human-readable detail stays in its `reason`). Every in-flight call of the
/// worker, and every later call, ends with the same cause.
///
/// Faults of the protocol (`FrameTooLarge`, `TooDeep`, `Malformed`,
/// `UnexpectedMessage`) and of the pipes while the process still runs
/// (`StdoutClosed`, `StdinClosed`, `ReadFailed`) make the host kill the
/// worker's process group; `Exited` and `StdoutHeldOpen` mean it had already
/// ended; `Unresponsive` and `Killed` are the host's own decisions
/// ([`Worker::kill`](crate::Worker::kill)).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashCause {
    /// The process ended by itself, or by a signal from outside the host:
    /// its stdout closed (or its stdin broke) and its exit status arrived
    /// within 500 ms. The error's `exit` says how it ended.
    Exited,
    /// Its stdout reached end of file while the process kept running (it
    /// closed fd 1); the host killed it.
    StdoutClosed,
    /// The process exited, but a descendant that left its process group kept
    /// its stdout open for more than a second; the host stopped waiting.
    StdoutHeldOpen,
    /// Writing to its stdin failed (broken pipe) while the process kept
    /// running: it closed fd 0. Detected at the first write after the close;
    /// the host killed it.
    StdinClosed,
    /// Reading its stdout failed with an I/O error other than end of file.
    ReadFailed,
    /// A frame header announced more than the maximum frame size
    /// (`WorkerCommand::max_frame`), e.g. `0xFFFFFFFF` or text on stdout.
    FrameTooLarge,
    /// A frame nested arrays and maps deeper than
    /// [`MAX_DEPTH`](portpool_protocol::MAX_DEPTH) levels; refused before
    /// decoding.
    TooDeep,
    /// A frame body was not valid MessagePack of a known message (bad bytes,
    /// a missing field, an unknown `type`), or the stream ended mid-frame.
    Malformed,
    /// A well-formed message a worker may not send: a `request`, a second
    /// `hello`, a `ping`, `cancel`, `shutdown` or `session_close`.
    UnexpectedMessage,
    /// The host judged it unresponsive (missed heartbeats without progress)
    /// and killed it with [`Worker::kill`](crate::Worker::kill).
    Unresponsive,
    /// The host killed it with [`Worker::kill`](crate::Worker::kill) for
    /// another reason, given in the error's `reason`.
    Killed,
    /// A remote worker said `goodbye` (it is draining, or its runtime died)
    /// and its connection closed with calls still in flight. The error's
    /// `reason` and `stderr_tail` carry the goodbye's reason.
    Goodbye,
    /// A remote worker's connection closed, was reset or failed (TLS, I/O)
    /// without a goodbye: a network cut, a listener killed outright.
    Disconnected,
}

/// Why a worker's first frame was not an acceptable hello: the typed cause
/// behind [`LaunchError::BadHello`]. The worker's process group is killed.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloCause {
    /// The hello announced another major version of the protocol.
    VersionMismatch {
        /// The worker's major version.
        worker: u16,
        /// The host's major version.
        host: u16,
    },
    /// The first frame was a valid message, but not a hello.
    NotHello,
    /// The first frame was not valid MessagePack of a known message, or the
    /// hello was not sane (`max_concurrency` 0).
    Malformed,
    /// The first frame's header announced more than the maximum frame size;
    /// typically text printed to stdout before the hello (four characters
    /// read as a length).
    FrameTooLarge,
    /// The first frame nested deeper than
    /// [`MAX_DEPTH`](portpool_protocol::MAX_DEPTH) levels.
    TooDeep,
}

/// A worker could not be started. Every variant names the worker and, once
/// the process existed, its pid and the tail of its stderr.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LaunchError {
    /// The program could not be spawned (not found, not executable, ...).
    #[error("{worker}: cannot spawn {program}: {source}")]
    Spawn {
        /// The worker being launched.
        worker: WorkerId,
        /// The program that failed to spawn.
        program: String,
        /// The operating system's error.
        source: Arc<std::io::Error>,
    },
    /// The process exited before sending its hello.
    #[error("{worker} ({}) exited during init with {exit}{}", Pid(*.pid), Tail(.stderr_tail))]
    ExitedDuringInit {
        /// The worker being launched.
        worker: WorkerId,
        /// Its process id.
        pid: Option<u32>,
        /// How it ended.
        exit: WorkerExit,
        /// The last lines it wrote to stderr (its traceback, usually).
        stderr_tail: String,
    },
    /// No hello arrived within the init timeout; the process was killed.
    #[error("{worker} ({}) sent no hello within {after:?}{}", Pid(*.pid), Tail(.stderr_tail))]
    InitTimeout {
        /// The worker being launched.
        worker: WorkerId,
        /// Its process id.
        pid: Option<u32>,
        /// The init timeout that expired.
        after: Duration,
        /// The last lines it wrote to stderr.
        stderr_tail: String,
    },
    /// The first frame was not a valid, compatible hello (garbage on stdout,
    /// an oversize header, bad MessagePack, another message type, another
    /// protocol major). The process was killed.
    #[error("{worker} ({}) sent a bad hello: {reason}{}", Pid(*.pid), Tail(.stderr_tail))]
    BadHello {
        /// The worker being launched.
        worker: WorkerId,
        /// Its process id.
        pid: Option<u32>,
        /// What was wrong, typed.
        cause: HelloCause,
        /// What was wrong, in words, e.g. a protocol version mismatch.
        reason: String,
        /// The last lines it wrote to stderr.
        stderr_tail: String,
    },
    /// A remote worker's endpoint could not be reached: no address to
    /// connect to, the name did not resolve, or the TCP connection failed.
    #[error("{worker}: cannot connect to {endpoint}: {reason}")]
    Connect {
        /// The worker being launched.
        worker: WorkerId,
        /// The endpoint (`HOST:PORT`), or the names tried.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// The TLS handshake with a remote worker failed (an untrusted or
    /// mismatched certificate, a plaintext listener, a refused client
    /// certificate).
    #[error("{worker}: TLS with {endpoint} failed: {reason}")]
    Tls {
        /// The worker being launched.
        worker: WorkerId,
        /// The endpoint (`HOST:PORT`).
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// Mutual authentication with a remote worker failed: the listener
    /// refused our proof (a wrong secret), or its proof was wrong.
    #[error("{worker}: authentication with {endpoint} failed: {reason}")]
    Auth {
        /// The worker being launched.
        worker: WorkerId,
        /// The endpoint (`HOST:PORT`).
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// A remote worker broke the handshake or sent a bad hello: garbage, an
    /// oversize or malformed frame, an unexpected message, the connection
    /// closed.
    #[error("{worker}: bad handshake with {endpoint}: {reason}")]
    Handshake {
        /// The worker being launched.
        worker: WorkerId,
        /// The endpoint (`HOST:PORT`).
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// Connecting, the TLS and authentication handshakes and the hello of a
    /// remote worker took longer than the launch time-out.
    #[error("{worker}: no hello from {endpoint} within {after:?} (stalled while {stage})")]
    HandshakeTimeout {
        /// The worker being launched.
        worker: WorkerId,
        /// The endpoint (`HOST:PORT`).
        endpoint: String,
        /// The time-out that expired.
        after: Duration,
        /// What was being waited for: "connecting", "the TLS handshake", ...
        stage: String,
    },
    /// A launcher-specific failure (fakes and custom launchers; a pool asked
    /// to launch after `shutdown()` let go of its launcher).
    #[error("{worker}: launch failed: {reason}")]
    Other {
        /// The worker being launched.
        worker: WorkerId,
        /// What went wrong.
        reason: String,
    },
}

impl LaunchError {
    /// The worker the error is about.
    pub fn worker(&self) -> WorkerId {
        match self {
            LaunchError::Spawn { worker, .. }
            | LaunchError::ExitedDuringInit { worker, .. }
            | LaunchError::InitTimeout { worker, .. }
            | LaunchError::BadHello { worker, .. }
            | LaunchError::Connect { worker, .. }
            | LaunchError::Tls { worker, .. }
            | LaunchError::Auth { worker, .. }
            | LaunchError::Handshake { worker, .. }
            | LaunchError::HandshakeTimeout { worker, .. }
            | LaunchError::Other { worker, .. } => *worker,
        }
    }

    /// The endpoint of a remote worker the error is about, if any.
    pub fn endpoint(&self) -> Option<&str> {
        match self {
            LaunchError::Connect { endpoint, .. }
            | LaunchError::Tls { endpoint, .. }
            | LaunchError::Auth { endpoint, .. }
            | LaunchError::Handshake { endpoint, .. }
            | LaunchError::HandshakeTimeout { endpoint, .. } => Some(endpoint),
            _ => None,
        }
    }

    /// The stderr tail attached to the error, if any.
    pub fn stderr_tail(&self) -> &str {
        match self {
            LaunchError::ExitedDuringInit { stderr_tail, .. }
            | LaunchError::InitTimeout { stderr_tail, .. }
            | LaunchError::BadHello { stderr_tail, .. } => stderr_tail,
            _ => "",
        }
    }
}

/// One call did not produce a result. Exactly one of these (or the result)
/// ends every call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The handler raised: an application error, not a worker fault.
    #[error("{worker}: {method} raised {error}")]
    Remote {
        /// The worker that ran the handler.
        worker: WorkerId,
        /// The method called.
        method: String,
        /// The structured error (type, message, traceback, data).
        error: Box<RemoteError>,
    },
    /// The call's deadline passed; a `cancel` was sent and any late reply
    /// will be discarded.
    #[error("{worker}: {method} timed out after {after:?}")]
    Timeout {
        /// The worker the call was on.
        worker: WorkerId,
        /// The method called.
        method: String,
        /// The deadline that passed.
        after: Duration,
    },
    /// The worker died (exit, signal, closed stdout, or a protocol violation,
    /// after which it was killed; for a remote worker: its connection ended)
    /// before answering.
    #[error("{worker} ({}) crashed: {reason} ({exit}){}", Who(*.pid, .endpoint), Tail(.stderr_tail))]
    WorkerCrashed {
        /// The worker.
        worker: WorkerId,
        /// Its process id (for a remote worker, as its hello gave it).
        pid: Option<u32>,
        /// `HOST:PORT` of a remote worker; `None` for a local process.
        endpoint: Option<String>,
        /// What was observed, typed.
        cause: CrashCause,
        /// What was observed, in words: "stdout closed", "protocol violation: ...".
        reason: String,
        /// How the process ended.
        exit: WorkerExit,
        /// The last lines it wrote to stderr; for a remote worker, the
        /// reason its listener gave when it said goodbye, if it did.
        stderr_tail: String,
    },
    /// The worker was shut down (or is shutting down) and takes no more calls.
    #[error("{worker} ({}) is shut down", Pid(*.pid))]
    WorkerClosed {
        /// The worker.
        worker: WorkerId,
        /// Its process id.
        pid: Option<u32>,
    },
    /// A stream's consumer fell behind: more than `limit` chunks arrived
    /// unread. The stream was cancelled to keep memory bounded; the worker
    /// is unaffected.
    #[error("{worker}: stream {method} cancelled: more than {limit} chunks waited unread")]
    StreamOverflow {
        /// The worker.
        worker: WorkerId,
        /// The method streamed.
        method: String,
        /// The configured limit (`WorkerCommand::max_stream_buffer`).
        limit: usize,
    },
    /// The request could not be sent: its frame exceeds the maximum size or
    /// it cannot be encoded. The worker is unaffected.
    #[error("{worker}: request {method} cannot be sent: {reason}")]
    InvalidRequest {
        /// The worker.
        worker: WorkerId,
        /// The method called.
        method: String,
        /// What was wrong.
        reason: String,
    },
}

impl CallError {
    /// Whether this error ended a stream because its consumer fell behind.
    pub fn is_stream_overflow(&self) -> bool {
        matches!(self, CallError::StreamOverflow { .. })
    }

    /// Whether this error is a fault of the worker (crash, time-out), as
    /// opposed to an application error or a bad request. Circuit breakers
    /// and health checks count only these.
    pub fn is_worker_fault(&self) -> bool {
        matches!(self, CallError::WorkerCrashed { .. } | CallError::Timeout { .. })
    }

    /// The worker the error is about.
    pub fn worker(&self) -> WorkerId {
        match self {
            CallError::Remote { worker, .. }
            | CallError::Timeout { worker, .. }
            | CallError::WorkerCrashed { worker, .. }
            | CallError::WorkerClosed { worker, .. }
            | CallError::InvalidRequest { worker, .. }
            | CallError::StreamOverflow { worker, .. } => *worker,
        }
    }
}
