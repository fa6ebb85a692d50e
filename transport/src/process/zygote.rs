//! The fork server of [`WorkerCommand::fork_server`]: one "zygote" Python
//! process per launcher imports the runtime and the app once, and every
//! worker is forked from it (see `docs/fork-server.md`).
//!
//! The host makes each worker's three pipes itself (`pipe2(O_CLOEXEC)`) and
//! hands the worker's ends to the zygote with `SCM_RIGHTS` over a unix
//! `SOCK_SEQPACKET` socket pair (the zygote's fd 0), so the worker's stdio is
//! exactly what an exec'd worker gets and everything after the pid is known
//! (hello, frames, stderr ring, process group) is the exec path's code.
//!
//! Messages are MessagePack maps, one per packet (the protocol is written out
//! in `python/src/portpool/_forkserver.py`). The zygote is the workers'
//! parent: it sees a child's exit with `waitid(WNOWAIT)`, kills what is left
//! of its group, reports `{exit, code, signal}` and reaps only when the host
//! answers `{reap}` — after the host marked the worker's [`Group`] reaped — so
//! neither side can signal a group id the kernel gave to someone else. One
//! reader thread per zygote (no tokio runtime needed) registers each new
//! worker group with the host's reaper as soon as its pid arrives and
//! publishes exits on the same `watch` channel the exec path's exit thread
//! uses.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{ChildStderr, ChildStdin, ChildStdout, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use nix::sys::socket::{
    recv, send, sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr,
};
use nix::unistd::pipe2;
use rmpv::Value as Mp;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::exit::{reap, STDERR_WAIT};
use super::reaper::{forget_group, wait_on_thread, watch_group, Group};
use super::stderr::StderrLog;
use super::WorkerCommand;
use crate::{LaunchError, WorkerExit, WorkerId};

/// The environment variable that makes `python -m portpool APP` a fork server.
const ENV_FORK_SERVER: &str = "PORTPOOL_FORK_SERVER";
/// Largest packet read from the zygote (its messages are a few dozen bytes).
const MAX_PACKET: usize = 64 * 1024;

/// A worker forked by the zygote, registered with the reaper, its pid known:
/// what the launcher needs to wait for its hello.
pub(crate) struct Forked {
    pub(crate) pid: u32,
    pub(crate) group: Arc<Group>,
    pub(crate) exit_rx: watch::Receiver<Option<WorkerExit>>,
    pub(crate) stdin: ChildStdin,
    pub(crate) stdout: ChildStdout,
    pub(crate) stderr: ChildStderr,
}

/// One launcher's fork server (shared by its clones): none until the first
/// launch, then a running zygote, or "refused" for good (the app started
/// threads while importing: workers are exec'd instead).
#[derive(Debug, Default)]
pub(crate) struct ForkServer {
    slot: tokio::sync::Mutex<Slot>,
    /// Start attempts begun so far: a launch that waited while an attempt it
    /// arrived before failed gets that failure instead of starting another.
    attempts: AtomicU64,
}

#[derive(Debug, Default)]
enum Slot {
    #[default]
    Idle,
    Running(Arc<Zygote>),
    Refused,
    Failed {
        attempt: u64,
        failure: StartFailure,
    },
}

/// Why a zygote did not start, kept for the launches that waited on it.
#[derive(Debug, Clone)]
enum StartFailure {
    Spawn {
        program: String,
        source: Arc<std::io::Error>,
    },
    Exited {
        pid: u32,
        exit: WorkerExit,
        stderr_tail: String,
    },
    Timeout {
        pid: u32,
        after: Duration,
        stderr_tail: String,
    },
    Other(String),
}

impl StartFailure {
    fn error(&self, worker: WorkerId) -> LaunchError {
        match self.clone() {
            StartFailure::Spawn { program, source } => LaunchError::Spawn {
                worker,
                program,
                source,
            },
            StartFailure::Exited {
                pid,
                exit,
                stderr_tail,
            } => LaunchError::ExitedDuringInit {
                worker,
                pid: Some(pid),
                exit,
                stderr_tail,
            },
            StartFailure::Timeout {
                pid,
                after,
                stderr_tail,
            } => LaunchError::InitTimeout {
                worker,
                pid: Some(pid),
                after,
                stderr_tail,
            },
            StartFailure::Other(reason) => LaunchError::Other { worker, reason },
        }
    }
}

impl ForkServer {
    /// Forks one worker from the zygote (starting it first if there is none
    /// or it died), or `None` if the zygote refused to fork (then the caller
    /// execs the worker). `deadline` bounds everything, the zygote's import
    /// included: it is the worker's init timeout.
    pub(crate) async fn fork(
        &self,
        cmd: &WorkerCommand,
        id: WorkerId,
        deadline: Instant,
        init_timeout: Duration,
    ) -> Result<Option<Forked>, LaunchError> {
        match self.fork_once(cmd, id, deadline, init_timeout).await {
            // The zygote died before forking this worker (killed, say, just
            // before the request): nothing runs for it, so ask a new zygote
            // once instead of failing a launch that had nothing to do with it.
            Err(ForkFailed {
                zygote_gone: true,
                error,
                ..
            }) => {
                tracing::debug!(worker = %id, "fork server gone before forking; asking a new one: {error}");
                self.fork_once(cmd, id, deadline, init_timeout)
                    .await
                    .map_err(|f| f.error)
            }
            other => other.map_err(|f| f.error),
        }
    }

    async fn fork_once(
        &self,
        cmd: &WorkerCommand,
        id: WorkerId,
        deadline: Instant,
        init_timeout: Duration,
    ) -> Result<Option<Forked>, ForkFailed> {
        let ticket = self.attempts.load(Ordering::SeqCst);
        let Ok(mut slot) = tokio::time::timeout_at(deadline, self.slot.lock()).await else {
            return Err(LaunchError::InitTimeout {
                worker: id,
                pid: None,
                after: init_timeout,
                stderr_tail: "(still waiting for the fork server to start)\n".into(),
            }
            .into());
        };
        let zygote = match &*slot {
            Slot::Refused => return Ok(None),
            Slot::Running(zygote) if !zygote.is_dead() => zygote.clone(),
            Slot::Failed { attempt, failure } if *attempt >= ticket => return Err(failure.error(id).into()),
            _ => {
                let attempt = self.attempts.fetch_add(1, Ordering::SeqCst);
                match Zygote::start(cmd, id, deadline, init_timeout).await {
                    Ok(Started::Ready(zygote)) => {
                        *slot = Slot::Running(zygote.clone());
                        zygote
                    }
                    Ok(Started::Refused { pid, reason }) => {
                        tracing::warn!(
                            fork_server = pid,
                            "the fork server refuses to fork ({reason}); this launcher execs its workers instead"
                        );
                        *slot = Slot::Refused;
                        return Ok(None);
                    }
                    Err(failure) => {
                        let error = failure.error(id);
                        *slot = Slot::Failed { attempt, failure };
                        return Err(error.into());
                    }
                }
            }
        };
        drop(slot);
        match zygote.fork(cmd, id, deadline, init_timeout).await {
            Err(ForkFailed {
                refused: true, error, ..
            }) => {
                // A thread runs in the zygote now: it forks no more (and exits
                // once its workers are gone); exec from now on, as when it
                // refuses after the import.
                let mut slot = self.slot.lock().await;
                if matches!(&*slot, Slot::Running(z) if Arc::ptr_eq(z, &zygote)) {
                    tracing::warn!(
                        fork_server = zygote.pid,
                        "the fork server refuses to fork ({error}); this launcher execs its workers instead"
                    );
                    *slot = Slot::Refused;
                }
                Ok(None)
            }
            other => other.map(Some),
        }
    }

    /// The running zygote's pid, if there is one (for tests and logs).
    pub(crate) fn pid(&self) -> Option<u32> {
        match &*self.slot.try_lock().ok()? {
            Slot::Running(zygote) if !zygote.is_dead() => Some(zygote.pid),
            _ => None,
        }
    }
}

impl Drop for ForkServer {
    fn drop(&mut self) {
        // The last launcher clone is gone: no more forks. The zygote exits
        // once every worker it forked has exited and been reaped; the workers
        // themselves live on with whoever holds them.
        if let Slot::Running(zygote) = self.slot.get_mut() {
            let close = map(vec![("close", Mp::Boolean(true))]);
            let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
            if let Err(Errno::EAGAIN) = send(zygote.sock.as_raw_fd(), &encode(&close), flags) {
                // Its socket is full (a stopped zygote, a flood of requests):
                // whoever drops the launcher must not wait for it.
                let zygote = zygote.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("portpool-zygote-close-{}", zygote.pid))
                    .stack_size(64 * 1024)
                    .spawn(move || zygote.send(&close));
                if let Err(e) = spawned {
                    tracing::warn!("cannot send close to the fork server: {e}");
                }
            }
        }
    }
}

/// A fork that failed; `zygote_gone`: the zygote died before forking the
/// worker (nothing was started for it); `refused`: that zygote will never
/// fork again (a thread runs in it now).
struct ForkFailed {
    error: LaunchError,
    zygote_gone: bool,
    refused: bool,
}

impl From<LaunchError> for ForkFailed {
    fn from(error: LaunchError) -> Self {
        ForkFailed {
            error,
            zygote_gone: false,
            refused: false,
        }
    }
}

enum Started {
    Ready(Arc<Zygote>),
    Refused { pid: u32, reason: String },
}

/// A running zygote process, seen from the host.
#[derive(Debug)]
pub(crate) struct Zygote {
    pid: u32,
    /// The host's end of the socket pair; closed only once the reader saw
    /// the zygote's end close (the zygote takes end of file for the host's
    /// death and kills what it forked).
    sock: OwnedFd,
    state: Mutex<State>,
    next_request: AtomicU64,
    stderr: Arc<StderrLog>,
    exit_rx: watch::Receiver<Option<WorkerExit>>,
}

#[derive(Debug, Default)]
struct State {
    /// Fork requests sent and not answered yet, by request number.
    pending: HashMap<u64, (WorkerId, oneshot::Sender<ForkReply>)>,
    /// Workers forked whose exit was not published yet, by pid.
    children: HashMap<u32, Child>,
    /// The zygote's end of the socket closed: it exited or was killed.
    dead: bool,
}

#[derive(Debug)]
struct Child {
    id: WorkerId,
    group: Arc<Group>,
    exit_tx: watch::Sender<Option<WorkerExit>>,
}

/// The zygote's answer to a fork request: the worker, or why not (and
/// whether it refuses to fork for good: a thread runs in it now).
type ForkReply = Result<Registered, (String, bool)>;

#[derive(Debug)]
struct Registered {
    pid: u32,
    group: Arc<Group>,
    exit_rx: watch::Receiver<Option<WorkerExit>>,
}

impl Zygote {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_dead(&self) -> bool {
        self.state().dead
    }

    /// Spawns the zygote (in its own process group, listed with the reaper,
    /// reaped by an exit thread like a worker) and waits for its `ready`.
    async fn start(
        cmd: &WorkerCommand,
        id: WorkerId,
        deadline: Instant,
        init_timeout: Duration,
    ) -> Result<Started, StartFailure> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| StartFailure::Other(format!("cannot make the fork server's socket pair: {e}")))?;
        let mut command = std::process::Command::new(&cmd.program);
        command.args(&cmd.args);
        super::launcher::configure_env(&mut command, cmd);
        command
            .env(ENV_FORK_SERVER, "1")
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        // No rlimits here: they are applied in each forked worker (a CPU
        // limit would otherwise count the zygote's whole life).
        let span = tracing::info_span!("portpool.fork_server", worker = %id);
        let _enter = span.enter();
        let mut child = command.spawn().map_err(|e| StartFailure::Spawn {
            program: cmd.program.display().to_string(),
            source: Arc::new(e),
        })?;
        drop(command); // closes our copy of the zygote's end of the socket
        let pid = child.id();
        watch_group(pid);
        let group = Arc::new(Group::new(pid));
        let stderr = Arc::new(StderrLog::new(cmd.stderr_tail_lines));
        if let Some(pipe) = child.stderr.take() {
            drain_stderr_on_thread(pipe, stderr.clone(), pid);
        }
        let (exit_tx, exit_rx) = watch::channel(None::<WorkerExit>);
        wait_on_thread(child, group.clone(), exit_tx);
        let mut unclaimed = super::launcher::KillGroupOnDrop(Some(group.clone()));
        drop(_enter);

        let zygote = Arc::new(Zygote {
            pid,
            sock: ours,
            state: Mutex::new(State::default()),
            next_request: AtomicU64::new(1),
            stderr,
            exit_rx: exit_rx.clone(),
        });
        let (ready_tx, ready_rx) = oneshot::channel();
        let reader = zygote.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("portpool-zygote-{pid}"))
            .stack_size(256 * 1024)
            .spawn(move || reader.read_loop(ready_tx));
        if let Err(e) = spawned {
            return Err(StartFailure::Other(format!(
                "cannot start a thread to read from the fork server: {e}"
            )));
        }
        let failed = |exit: WorkerExit, zygote: &Zygote| StartFailure::Exited {
            pid,
            exit,
            stderr_tail: zygote.tail(),
        };
        match tokio::time::timeout_at(deadline, ready_rx).await {
            Ok(Ok(FirstWord::Ready(ready_pid))) if ready_pid == pid => {
                unclaimed.disarm();
                tracing::debug!(fork_server = pid, "fork server ready");
                Ok(Started::Ready(zygote))
            }
            Ok(Ok(FirstWord::Ready(other))) => Err(StartFailure::Other(format!(
                "the fork server (pid {pid}) announced pid {other}"
            ))),
            Ok(Ok(FirstWord::Refused(reason))) => {
                unclaimed.disarm(); // it exits by itself; its exit thread reaps it
                Ok(Started::Refused { pid, reason })
            }
            Ok(Ok(FirstWord::Garbage(what))) => Err(StartFailure::Other(format!(
                "the fork server (pid {pid}) sent {what} instead of ready (is {} the portpool runtime?)",
                cmd.program.display()
            ))),
            Ok(Err(_closed)) => {
                let exit = reap(&group, exit_rx).await;
                unclaimed.disarm();
                zygote.stderr.wait_drained(STDERR_WAIT).await;
                Err(failed(exit, &zygote))
            }
            Err(_elapsed) => {
                group.signal(Signal::SIGKILL);
                reap(&group, exit_rx).await;
                unclaimed.disarm();
                zygote.stderr.wait_drained(STDERR_WAIT).await;
                Err(StartFailure::Timeout {
                    pid,
                    after: init_timeout,
                    stderr_tail: zygote.tail(),
                })
            }
        }
    }

    /// The zygote's stderr tail, headed by a line saying whose it is.
    fn tail(&self) -> String {
        format!(
            "(stderr of the fork server, pid {})\n{}",
            self.pid,
            self.stderr.tail()
        )
    }

    /// Asks for one worker: its pipes made here, the worker's ends sent.
    async fn fork(
        &self,
        cmd: &WorkerCommand,
        id: WorkerId,
        deadline: Instant,
        init_timeout: Duration,
    ) -> Result<Forked, ForkFailed> {
        let other = |reason: String| LaunchError::Other { worker: id, reason };
        let gone = |error: LaunchError| ForkFailed {
            error,
            zygote_gone: true,
            refused: false,
        };
        let pipes = || -> nix::Result<_> {
            Ok((
                pipe2(OFlag::O_CLOEXEC)?,
                pipe2(OFlag::O_CLOEXEC)?,
                pipe2(OFlag::O_CLOEXEC)?,
            ))
        };
        let ((in_r, in_w), (out_r, out_w), (err_r, err_w)) =
            pipes().map_err(|e| other(format!("cannot make the worker's pipes: {e}")))?;
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let mut env = vec![(
            Mp::from("PORTPOOL_MAX_FRAME"),
            Mp::from(cmd.max_frame.to_string()),
        )];
        if let Some(spin) = cmd.spin {
            env.push((
                Mp::from("PORTPOOL_SPIN_US"),
                Mp::from(spin.as_micros().to_string()),
            ));
        }
        let limits = cmd
            .limits
            .as_list()
            .into_iter()
            .map(|(name, soft, hard)| Mp::Array(vec![Mp::from(name), Mp::from(soft), Mp::from(hard)]))
            .collect();
        let message = encode(&map(vec![
            ("fork", Mp::from(request)),
            ("worker", Mp::from(id.0)),
            ("env", Mp::Map(env)),
            ("limits", Mp::Array(limits)),
        ]));
        let (tx, rx) = oneshot::channel();
        let mut tx = Some(tx);
        let fds = [in_r.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];
        let sent = loop {
            // Listed as pending right before each try (a reply may come at
            // once), and not while waiting: a launch dropped while the socket
            // is full leaves no entry behind.
            {
                let mut state = self.state();
                if state.dead {
                    return Err(gone(other(format!("the fork server (pid {}) is gone", self.pid))));
                }
                if let Some(tx) = tx.take() {
                    state.pending.insert(request, (id, tx));
                }
            }
            match sendmsg::<UnixAddr>(
                self.sock.as_raw_fd(),
                &[IoSlice::new(&message)],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
                None,
            ) {
                Err(Errno::EINTR) => continue,
                // The socket is full (a flood of launches, a stopped zygote):
                // never block the runtime's thread; try again until the deadline.
                Err(Errno::EAGAIN) => {
                    tx = self.state().pending.remove(&request).map(|(_, tx)| tx);
                    if Instant::now() >= deadline {
                        return Err(LaunchError::InitTimeout {
                            worker: id,
                            pid: None,
                            after: init_timeout,
                            stderr_tail: format!(
                                "(the fork server, pid {}, takes no fork request)\n{}",
                                self.pid,
                                self.tail()
                            ),
                        }
                        .into());
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                other => break other,
            }
        };
        // The worker's ends are the zygote's (and then the worker's) now.
        drop((in_r, out_w, err_w));
        if let Err(e) = sent {
            let mut state = self.state();
            state.pending.remove(&request);
            let error = other(format!("cannot reach the fork server (pid {}): {e}", self.pid));
            if matches!(
                e,
                Errno::EPIPE | Errno::ECONNRESET | Errno::ECONNREFUSED | Errno::ENOTCONN
            ) {
                // Its end is closed: no fork through it any more (the reader
                // sees the end of file and publishes what follows).
                state.dead = true;
                return Err(gone(error));
            }
            return Err(error.into());
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Ok(registered))) => Ok(Forked {
                pid: registered.pid,
                group: registered.group,
                exit_rx: registered.exit_rx,
                stdin: ChildStdin::from(in_w),
                stdout: ChildStdout::from(out_r),
                stderr: ChildStderr::from(err_r),
            }),
            Ok(Ok(Err((reason, refused)))) => Err(ForkFailed {
                error: other(format!(
                    "the fork server (pid {}) could not fork: {reason}",
                    self.pid
                )),
                zygote_gone: false,
                refused,
            }),
            Ok(Err(_gone)) => {
                let exit = super::exit::wait_exit(&self.exit_rx, Duration::from_millis(200)).await;
                self.stderr.wait_drained(STDERR_WAIT).await;
                Err(gone(other(format!(
                    "the fork server (pid {}) died ({}) before forking the worker\n{}",
                    self.pid,
                    exit.unwrap_or_default(),
                    self.tail()
                ))))
            }
            Err(_elapsed) => {
                // A late reply finds no one waiting: the reader kills that worker.
                self.state().pending.remove(&request);
                Err(LaunchError::InitTimeout {
                    worker: id,
                    pid: None,
                    after: init_timeout,
                    stderr_tail: self.tail(),
                }
                .into())
            }
        }
    }

    /// Sends one message; a zygote that is gone is not an error here (the
    /// reader sees it and publishes what follows).
    fn send(&self, message: &Mp) {
        let bytes = encode(message);
        loop {
            match send(self.sock.as_raw_fd(), &bytes, MsgFlags::MSG_NOSIGNAL) {
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::debug!(fork_server = self.pid, "cannot write to the fork server: {e}");
                    return;
                }
                Ok(_) => return,
            }
        }
    }

    /// The reader thread: every message from the zygote until its end of
    /// the socket closes, then [`Zygote::died`].
    fn read_loop(self: Arc<Self>, ready_tx: oneshot::Sender<FirstWord>) {
        let mut ready_tx = Some(ready_tx);
        let mut buf = vec![0u8; MAX_PACKET];
        loop {
            let n = match recv(self.sock.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(fork_server = self.pid, "cannot read from the fork server: {e}");
                    break;
                }
                Ok(0) => break,
                Ok(n) => n,
            };
            let message = rmpv::decode::read_value(&mut &buf[..n]).ok();
            let message = message.as_ref().and_then(Mp::as_map);
            if let Some(tx) = ready_tx.take() {
                let ready = match message.map(|m| (get(m, "ready"), get(m, "refused"))) {
                    Some((Some(pid), refused)) => {
                        match (pid.as_u64().and_then(|p| u32::try_from(p).ok()), refused) {
                            (Some(_), Some(Mp::String(reason))) => {
                                FirstWord::Refused(reason.as_str().unwrap_or("(not UTF-8)").to_string())
                            }
                            (Some(pid), _) => FirstWord::Ready(pid),
                            (None, _) => FirstWord::Garbage("a ready message without a pid".into()),
                        }
                    }
                    _ => FirstWord::Garbage(format!("{n} bytes that are no ready message")),
                };
                let garbage = matches!(ready, FirstWord::Garbage(_));
                let _ = tx.send(ready);
                if garbage {
                    break;
                }
                continue;
            }
            match message {
                Some(m) => self.dispatch(m),
                None => tracing::warn!(
                    fork_server = self.pid,
                    "ignoring a malformed message from the fork server"
                ),
            }
        }
        self.died();
    }

    fn dispatch(&self, m: &[(Mp, Mp)]) {
        let int = |key: &str| get(m, key).and_then(Mp::as_u64);
        let pid_of = |key: &str| int(key).and_then(|p| u32::try_from(p).ok());
        if let (Some(request), Some(pid)) = (int("forked"), pid_of("pid")) {
            self.forked(request, pid);
        } else if let Some(request) = int("failed") {
            let reason = get(m, "reason")
                .and_then(Mp::as_str)
                .unwrap_or("unknown")
                .to_string();
            let refused = get(m, "refused").and_then(Mp::as_bool).unwrap_or(false);
            if let Some((_, tx)) = self.state().pending.remove(&request) {
                let _ = tx.send(Err((reason, refused)));
            }
        } else if let Some(pid) = pid_of("exit") {
            let code = get(m, "code")
                .and_then(Mp::as_i64)
                .and_then(|c| i32::try_from(c).ok());
            let signal = get(m, "signal")
                .and_then(Mp::as_i64)
                .and_then(|s| i32::try_from(s).ok());
            self.exited(pid, WorkerExit { code, signal });
        } else {
            tracing::warn!(
                fork_server = self.pid,
                "ignoring an unknown message from the fork server"
            );
        }
    }

    /// A worker was forked: its group is listed with the reaper before
    /// anything else, then handed to the launch waiting for it (or killed,
    /// if that launch gave up meanwhile).
    fn forked(&self, request: u64, pid: u32) {
        watch_group(pid);
        let group = Arc::new(Group::new(pid));
        let (exit_tx, exit_rx) = watch::channel(None::<WorkerExit>);
        let mut state = self.state();
        let (id, waiting) = match state.pending.remove(&request) {
            Some((id, tx)) => (id, Some(tx)),
            None => (WorkerId(0), None),
        };
        state.children.insert(
            pid,
            Child {
                id,
                group: group.clone(),
                exit_tx,
            },
        );
        drop(state);
        let handed = waiting.is_some_and(|tx| {
            tx.send(Ok(Registered {
                pid,
                group: group.clone(),
                exit_rx,
            }))
            .is_ok()
        });
        if !handed {
            tracing::debug!(fork_server = self.pid, worker = %id, pid, "forked worker no longer wanted; killing it");
            group.signal(Signal::SIGKILL);
        }
    }

    /// A worker exited (the zygote already killed the rest of its group; its
    /// zombie holds the group id until we answer `reap`).
    fn exited(&self, pid: u32, exit: WorkerExit) {
        let child = self.state().children.remove(&pid);
        let Some(child) = child else {
            self.send(&map(vec![("reap", Mp::from(pid))]));
            return;
        };
        finish_group(&child.group, pid);
        self.send(&map(vec![("reap", Mp::from(pid))]));
        child.exit_tx.send_replace(Some(exit));
    }

    /// The zygote's end of the socket closed. Every worker it forked whose
    /// exit was not reported is still running (orphaned) or just died with
    /// it: kill its group — the leader is not our child, nor the zygote's any
    /// more, so its exit status is unknown — and publish that; pending forks
    /// fail. The next launch starts a new zygote.
    fn died(&self) {
        let (children, pending) = {
            let mut state = self.state();
            state.dead = true;
            (
                std::mem::take(&mut state.children),
                std::mem::take(&mut state.pending),
            )
        };
        drop(pending);
        if !children.is_empty() {
            tracing::warn!(
                fork_server = self.pid,
                workers = children.len(),
                "the fork server died; killing the workers it forked"
            );
        }
        for (pid, child) in children {
            tracing::warn!(worker = %child.id, pid, "fork server died: worker killed, its exit status is unknown");
            finish_group(&child.group, pid);
            child.exit_tx.send_replace(Some(WorkerExit::default()));
        }
    }
}

/// What the zygote said first.
enum FirstWord {
    Ready(u32),
    Refused(String),
    Garbage(String),
}

/// Unlists a forked worker's group, kills what is left of it and marks it
/// reaped (no signal reaches that group id from here on), as the exec path's
/// exit thread does before reaping.
fn finish_group(group: &Group, pid: u32) {
    forget_group(pid);
    group.kill_and_mark_reaped();
}

/// Reads the zygote's stderr on a plain thread into `log` (and tracing).
fn drain_stderr_on_thread(pipe: ChildStderr, log: Arc<StderrLog>, pid: u32) {
    let spawned = std::thread::Builder::new()
        .name(format!("portpool-zygote-stderr-{pid}"))
        .stack_size(128 * 1024)
        .spawn({
            let log = log.clone();
            move || {
                let mut reader = BufReader::new(pipe);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match reader.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let text = String::from_utf8_lossy(&line);
                            let text = text.trim_end_matches(['\r', '\n']);
                            tracing::info!(target: "portpool::fork_server", fork_server = pid, "{text}");
                            log.record(text);
                        }
                    }
                }
                log.mark_drained();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(fork_server = pid, "cannot read the fork server's stderr: {e}");
        log.mark_drained();
    }
}

fn map(entries: Vec<(&str, Mp)>) -> Mp {
    Mp::Map(entries.into_iter().map(|(k, v)| (Mp::from(k), v)).collect())
}

fn encode(value: &Mp) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    // Writing to a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, value);
    out
}

fn get<'a>(m: &'a [(Mp, Mp)], key: &str) -> Option<&'a Mp> {
    m.iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
        .filter(|v| !v.is_nil())
}
