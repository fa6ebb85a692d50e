use crate::conn::Outstanding;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use nix::sys::signal::Signal;
use portpool_protocol::{Message, MessageCodec, ProtocolError};
use tokio::process::{ChildStderr, ChildStdin, ChildStdout};
use tokio::sync::watch;
use tokio_util::codec::FramedRead;

use super::spin::SpinningStdout;

use super::exit::{reap, STDERR_WAIT};
use super::reaper::{wait_on_thread, watch_group, Group};
use super::stderr::StderrLog;
use super::worker::{ProcessWorker, Spawned};
use super::zygote::ForkServer;
use super::WorkerCommand;
use crate::{HelloCause, LaunchError, Launcher, Worker, WorkerExit, WorkerId, WorkerInfo};

/// Launches workers as child processes of a [`WorkerCommand`].
///
/// Each worker runs in its own process group. The first launch in a host
/// process also starts the host's group reaper: a small `/bin/sh` script,
/// outside the host's process group, that holds a pipe from the host and,
/// when the host dies (even by SIGKILL), sends SIGKILL to every worker group
/// still running, so no worker, child or grandchild outlives the host.
/// Without `/bin/sh` a warning is logged and workers still exit on stdin
/// end of file, but their descendants may survive a killed host.
///
/// With [`WorkerCommand::fork_server`], the first launch also starts the
/// launcher's fork server (shared by its clones) and workers are forked
/// from it; everything above holds for them too (`docs/fork-server.md`).
#[derive(Debug, Clone)]
pub struct ProcessLauncher {
    command: Arc<WorkerCommand>,
    /// The fork server, shared by clones ([`WorkerCommand::fork_server`]).
    fork_server: Arc<ForkServer>,
}

impl ProcessLauncher {
    /// A launcher running `command` for every worker.
    pub fn new(command: WorkerCommand) -> Self {
        ProcessLauncher {
            command: Arc::new(command),
            fork_server: Arc::new(ForkServer::default()),
        }
    }

    /// The command it runs.
    pub fn command(&self) -> &WorkerCommand {
        &self.command
    }

    /// Starts one worker and waits for its hello: the concrete type, for
    /// callers that want [`ProcessWorker`]'s extra accessors.
    pub async fn spawn(&self, id: WorkerId) -> Result<ProcessWorker, LaunchError> {
        self.spawn_within(id, self.command.init_timeout).await
    }

    /// The pid of this launcher's fork server while one runs
    /// ([`WorkerCommand::fork_server`]); `None` without one.
    pub fn fork_server_pid(&self) -> Option<u32> {
        self.fork_server.pid()
    }

    /// [`spawn`](Self::spawn) with the hello awaited for at most
    /// `init_timeout` (instead of the command's own).
    async fn spawn_within(&self, id: WorkerId, init_timeout: Duration) -> Result<ProcessWorker, LaunchError> {
        let cmd = &*self.command;
        let deadline = tokio::time::Instant::now() + init_timeout;
        let forked = if cmd.fork_server {
            self.fork_server.fork(cmd, id, deadline, init_timeout).await?
        } else {
            None
        };
        let started = match forked {
            Some(forked) => Started {
                pid: forked.pid,
                group: forked.group,
                exit_rx: forked.exit_rx,
                stdio: (Some(forked.stdin), Some(forked.stdout), Some(forked.stderr)),
            },
            None => exec(cmd, id)?,
        };
        self.handshake(id, started, deadline, init_timeout).await
    }

    /// Waits for the hello of a started worker (exec'd or forked) and makes
    /// it a [`ProcessWorker`].
    async fn handshake(
        &self,
        id: WorkerId,
        started: Started,
        deadline: tokio::time::Instant,
        init_timeout: Duration,
    ) -> Result<ProcessWorker, LaunchError> {
        let cmd = &*self.command;
        let Started {
            pid: raw_pid,
            group,
            exit_rx,
            stdio,
        } = started;
        let pid = Some(raw_pid);
        // Until the hello, nothing else owns the process: kill its group if
        // this future is dropped (a caller's time-out, a pool shut down
        // while starting) or fails, rather than leave it running.
        let mut unclaimed = KillGroupOnDrop(Some(group.clone()));
        if let (Some(bytes), (Some(stdin), Some(stdout), _)) = (cmd.pipe_buffer, &stdio) {
            resize_pipe(stdin, bytes);
            resize_pipe(stdout, bytes);
        }
        let span = tracing::info_span!("portpool.launch", worker = %id);
        let _enter = span.enter();

        let (stdin, stdout, stderr) = match stdio {
            (Some(i), Some(o), Some(e)) => {
                match (
                    ChildStdin::from_std(i),
                    ChildStdout::from_std(o),
                    ChildStderr::from_std(e),
                ) {
                    (Ok(i), Ok(o), Ok(e)) => (i, o, e),
                    (i, o, e) => {
                        let error = [i.err(), o.err(), e.err()].into_iter().flatten().next();
                        return Err(LaunchError::Other {
                            worker: id,
                            reason: format!(
                                "cannot register the child's pipes with tokio: {}",
                                error.map_or_else(String::new, |e| e.to_string())
                            ),
                        });
                    }
                }
            }
            _ => {
                return Err(LaunchError::Other {
                    worker: id,
                    reason: "child stdio was not piped".into(),
                })
            }
        };
        drop(_enter);

        let stderr_log = Arc::new(StderrLog::new(cmd.stderr_tail_lines));
        tokio::spawn({
            let log = stderr_log.clone();
            async move { log.drain(stderr, id, pid).await }
        });

        let outstanding = Arc::new(Outstanding::default());
        let stdout = SpinningStdout::new(stdout, cmd.spin, outstanding.clone());
        let mut frames = FramedRead::new(stdout, MessageCodec::new(cmd.max_frame));
        let first = tokio::time::timeout_at(deadline, frames.next()).await;
        let hello = match first {
            Ok(Some(Ok(Message::Hello(hello)))) => match hello.validate() {
                Ok(()) => Ok(hello),
                Err(e) => Err((hello_cause(&e), e.to_string())),
            },
            Ok(Some(Ok(other))) => Err((
                HelloCause::NotHello,
                format!("expected hello first, got {}", other.kind()),
            )),
            Ok(Some(Err(e))) => Err((hello_cause(&e), e.to_string())),
            Ok(None) => {
                let exit = reap(&group, exit_rx.clone()).await;
                unclaimed.disarm();
                stderr_log.wait_drained(STDERR_WAIT).await;
                return Err(LaunchError::ExitedDuringInit {
                    worker: id,
                    pid,
                    exit,
                    stderr_tail: stderr_log.tail(),
                });
            }
            Err(_elapsed) => {
                reap(&group, exit_rx.clone()).await;
                unclaimed.disarm();
                stderr_log.wait_drained(STDERR_WAIT).await;
                return Err(LaunchError::InitTimeout {
                    worker: id,
                    pid,
                    after: init_timeout,
                    stderr_tail: stderr_log.tail(),
                });
            }
        };
        let hello = match hello {
            Ok(hello) => hello,
            Err((cause, reason)) => {
                reap(&group, exit_rx.clone()).await;
                unclaimed.disarm();
                stderr_log.wait_drained(STDERR_WAIT).await;
                return Err(LaunchError::BadHello {
                    worker: id,
                    pid,
                    cause,
                    reason,
                    stderr_tail: stderr_log.tail(),
                });
            }
        };

        let announced = usize::try_from(hello.max_concurrency)
            .unwrap_or(usize::MAX)
            .max(1);
        let max_concurrency = cmd.max_concurrency.map_or(announced, |cap| cap.min(announced));
        tracing::debug!(worker = %id, pid, max_concurrency, "worker ready");
        let info = WorkerInfo::local(id, pid, hello, max_concurrency);
        unclaimed.disarm();
        Ok(ProcessWorker::start(Spawned {
            info,
            max_frame: cmd.max_frame,
            max_stream_buffer: cmd.max_stream_buffer,
            stdin,
            frames,
            outstanding,
            exit_rx,
            group,
            stderr: stderr_log,
        }))
    }
}

#[async_trait]
impl Launcher for ProcessLauncher {
    async fn launch(&self, id: WorkerId) -> Result<Box<dyn Worker>, LaunchError> {
        Ok(Box::new(self.spawn(id).await?))
    }

    async fn launch_within(&self, id: WorkerId, timeout: Duration) -> Result<Box<dyn Worker>, LaunchError> {
        let init_timeout = timeout.min(self.command.init_timeout);
        Ok(Box::new(self.spawn_within(id, init_timeout).await?))
    }
}

/// Asks for a pipe buffer of `bytes` (see [`WorkerCommand::pipe_buffer`]);
/// a refusal leaves the pipe as it was.
fn resize_pipe(pipe: &impl std::os::fd::AsRawFd, bytes: usize) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let size = i32::try_from(bytes).unwrap_or(i32::MAX);
        if let Err(e) = nix::fcntl::fcntl(pipe.as_raw_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(size)) {
            tracing::debug!("pipe buffer of {bytes} bytes refused: {e}");
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (pipe, bytes);
}

/// Kills a worker's process group when dropped, unless disarmed: the
/// launcher's guard while it waits for the hello.
pub(crate) struct KillGroupOnDrop(pub(crate) Option<Arc<Group>>);

impl KillGroupOnDrop {
    pub(crate) fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(group) = self.0.take() {
            group.signal(Signal::SIGKILL);
        }
    }
}

/// The typed cause of a first frame that is not an acceptable hello.
fn hello_cause(error: &ProtocolError) -> HelloCause {
    match error {
        ProtocolError::VersionMismatch { ours, theirs } => HelloCause::VersionMismatch {
            worker: theirs.major,
            host: ours.major,
        },
        ProtocolError::FrameTooLarge { .. } => HelloCause::FrameTooLarge,
        ProtocolError::TooDeep { .. } => HelloCause::TooDeep,
        _ => HelloCause::Malformed,
    }
}

/// A worker process started (exec'd, or forked by the fork server), its
/// group listed with the reaper and its exit awaited, before its hello.
struct Started {
    pid: u32,
    group: Arc<Group>,
    exit_rx: watch::Receiver<Option<WorkerExit>>,
    stdio: (
        Option<std::process::ChildStdin>,
        Option<std::process::ChildStdout>,
        Option<std::process::ChildStderr>,
    ),
}

/// The environment and working directory of `cmd`'s processes (workers and
/// the fork server alike).
pub(crate) fn configure_env(command: &mut std::process::Command, cmd: &WorkerCommand) {
    if cmd.env_clear || cmd.env_allowlist.is_some() {
        command.env_clear();
    }
    for key in cmd.env_allowlist.iter().flatten() {
        if let Some(value) = std::env::var_os(key) {
            command.env(key, value);
        }
    }
    for key in &cmd.env_remove {
        command.env_remove(key);
    }
    // Tell the worker our frame limit, so an oversize reply becomes its
    // own typed error instead of a frame we would have to refuse.
    command.env("PORTPOOL_MAX_FRAME", cmd.max_frame.to_string());
    if let Some(spin) = cmd.spin {
        command.env("PORTPOOL_SPIN_US", spin.as_micros().to_string());
    }
    command.envs(cmd.env.iter().map(|(k, v)| (k, v)));
    if let Some(dir) = &cmd.cwd {
        command.current_dir(dir);
    }
}

/// Spawns `cmd` as a worker process in its own process group.
fn exec(cmd: &WorkerCommand, id: WorkerId) -> Result<Started, LaunchError> {
    let mut command = std::process::Command::new(&cmd.program);
    command
        .args(&cmd.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group: we can signal the worker and everything it
        // started at once, and a terminal's Ctrl-C is ours to forward.
        .process_group(0);
    configure_env(&mut command, cmd);
    cmd.limits.apply(&mut command);

    let span = tracing::info_span!("portpool.launch", worker = %id);
    let _enter = span.enter();
    // A std child, waited for on a plain thread (see `reaper`): reaping
    // must not depend on a tokio runtime that may be dropped first.
    let mut child = command.spawn().map_err(|e| LaunchError::Spawn {
        worker: id,
        program: cmd.program.display().to_string(),
        source: Arc::new(e),
    })?;
    let raw_pid = child.id();
    // Listed before anything else can fail: if the host dies from here
    // on, the reaper kills the whole group.
    watch_group(raw_pid);
    let stdio = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    // The exit waiter owns the child: it reaps it, kills whatever is
    // left of its group, and publishes how it ended.
    let (exit_tx, exit_rx) = watch::channel(None::<WorkerExit>);
    let group = Arc::new(Group::new(raw_pid));
    wait_on_thread(child, group.clone(), exit_tx);
    Ok(Started {
        pid: raw_pid,
        group,
        exit_rx,
        stdio,
    })
}
