//! Nothing of a worker outlives the host, even when the host is SIGKILLed.
//!
//! Two mechanisms, both independent of any tokio runtime:
//!
//! - **Each worker's exit is awaited on a plain thread** ([`wait_on_thread`]):
//!   it reaps the worker as soon as it ends, kills whatever is left of its
//!   process group, and publishes the exit. Dropping a pool together with its
//!   runtime (whose tasks then never run again) leaves no zombie: the
//!   worker's `Drop` sends SIGKILL, the thread reaps.
//!
//! - **One group reaper per host process** ([`watch_group`]), started lazily
//!   at the first spawn: a tiny `/bin/sh` script (fixed text, no user input)
//!   in its own process group, ignoring SIGINT/SIGTERM/SIGHUP/SIGQUIT, whose
//!   stdin is a pipe from the host. It is started through a shell that puts
//!   it in the background and exits at once (and is reaped), so the reaper
//!   is not the host's child: nothing of it shows among the host's children
//!   and nothing of it waits to be reaped. The host writes `+PGID` when a worker
//!   group is created and `-PGID` once it is reaped and killed. When the
//!   host dies, however it dies (SIGKILL included), the kernel closes the
//!   pipe; the script reads end of file, sends SIGKILL to every group still
//!   listed and exits. The pipe's write end is close-on-exec, so workers
//!   never inherit it (which would keep the pipe open).
//!
//! Bound: after the host dies, every listed group is sent SIGKILL as soon as
//! the script is scheduled (milliseconds; the tests allow 3 s). Not covered:
//! a descendant that left its worker's process group (`setsid`), and a group
//! created in the instant between the spawn and its `+PGID` line.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;
use tokio::sync::watch;

use super::signal::signal_group;
use crate::WorkerExit;

/// The reaper script. Reads `+PGID` / `-PGID` lines; on end of file kills
/// every group still listed. Only shell builtins: it forks nothing.
const SCRIPT: &str = r#"trap '' INT TERM HUP QUIT PIPE
groups=' '
while IFS= read -r line; do
  case $line in
    +[0-9]*) groups="$groups${line#+} " ;;
    -[0-9]*)
      gone=${line#-}
      kept=' '
      for g in $groups; do [ "$g" = "$gone" ] || kept="$kept$g "; done
      groups=$kept ;;
  esac
done
for g in $groups; do kill -s KILL -- "-$g" 2>/dev/null; done
"#;

/// Starts [`SCRIPT`] in the background with the pipe as its stdin (an
/// explicit redirection: a background job's stdin is otherwise /dev/null),
/// then exits.
const LAUNCH: &str = r#"exec 3<&0; "$0" -c "$1" <&3 3<&- & exit 0"#;

struct GroupReaper {
    /// The write end of the script's stdin; `None` if it could not be
    /// started (or died, until restarted).
    stdin: Option<ChildStdin>,
    /// The groups listed, to replay to a new script if the old one died.
    groups: BTreeSet<u32>,
}

static REAPER: OnceLock<Mutex<GroupReaper>> = OnceLock::new();

fn reaper() -> MutexGuard<'static, GroupReaper> {
    REAPER
        .get_or_init(|| {
            Mutex::new(GroupReaper {
                stdin: None,
                groups: BTreeSet::new(),
            })
        })
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

impl GroupReaper {
    fn start(&mut self) {
        let spawned = Command::new("/bin/sh")
            .args(["-c", LAUNCH, "/bin/sh", SCRIPT])
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group: a terminal's Ctrl-C to the host's group, or a
            // kill of that group, must not take the reaper with it.
            .process_group(0)
            .spawn();
        match spawned {
            Ok(mut launcher) => {
                self.stdin = launcher.stdin.take();
                // It exits as soon as the script is in the background.
                let _ = launcher.wait();
            }
            Err(e) => tracing::warn!(
                "cannot start the group reaper (/bin/sh): {e}; worker descendants may outlive a killed host"
            ),
        }
    }

    /// Writes one line, restarting the script (and replaying the groups)
    /// once if it died.
    fn send(&mut self, line: &str) {
        for _attempt in 0..2 {
            if self.stdin.is_none() {
                self.start();
                let replay: String = self.groups.iter().map(|g| format!("+{g}\n")).collect();
                if !self.write(&replay) {
                    continue;
                }
            }
            if self.write(line) {
                return;
            }
        }
    }

    fn write(&mut self, text: &str) -> bool {
        let Some(stdin) = &mut self.stdin else {
            return false;
        };
        if text.is_empty() || stdin.write_all(text.as_bytes()).is_ok() {
            return true;
        }
        self.stdin = None;
        false
    }
}

/// Lists a new worker process group with the host's group reaper (starting
/// the reaper on first use): the group is killed if the host dies.
pub(crate) fn watch_group(pgid: u32) {
    let mut reaper = reaper();
    reaper.groups.insert(pgid);
    reaper.send(&format!("+{pgid}\n"));
}

/// Takes a group off the reaper's list once it is reaped and killed.
pub(crate) fn forget_group(pgid: u32) {
    let mut reaper = reaper();
    if reaper.groups.remove(&pgid) {
        reaper.send(&format!("-{pgid}\n"));
    }
}

/// A worker's process group, signalled only while its leader is unreaped.
///
/// The group id is the leader's pid. Once the leader is reaped that pid is
/// free, and the kernel may hand it to an unrelated process leading its own
/// group (or to another worker): a `killpg` after the reap could kill a
/// bystander. So the exit thread waits for the exit without reaping
/// (`waitid(WNOWAIT)`: the zombie keeps the pid taken), kills the rest of the
/// group, and only then reaps, holding the same lock [`Group::signal`] takes:
/// no signal can reach a reused group id.
#[derive(Debug)]
pub(crate) struct Group {
    pgid: u32,
    reaped: Mutex<bool>,
}

impl Group {
    pub(crate) fn new(pgid: u32) -> Self {
        Group {
            pgid,
            reaped: Mutex::new(false),
        }
    }

    /// Runs `read` (a look at `/proc/<pid>`) only while the leader is not
    /// reaped: afterwards its pid may name another process.
    pub(crate) fn while_unreaped<T>(&self, read: impl FnOnce(u32) -> Option<T>) -> Option<T> {
        let reaped = self.reaped.lock().unwrap_or_else(|e| e.into_inner());
        if *reaped {
            None
        } else {
            read(self.pgid)
        }
    }

    /// Sends `signal` to the group, unless its leader was already reaped
    /// (then the group is gone and its id may belong to someone else).
    pub(crate) fn signal(&self, signal: Signal) {
        let reaped = self.reaped.lock().unwrap_or_else(|e| e.into_inner());
        if !*reaped {
            signal_group(self.pgid, signal);
        }
    }
}

impl Group {
    /// For a leader that is not our child (a worker forked by the fork
    /// server, whose zombie keeps the group id until we say so, or whose
    /// fork server died): kills what is left of the group and marks it
    /// reaped, under the lock [`Group::signal`] takes, so no signal of ours
    /// reaches this group id afterwards.
    pub(crate) fn kill_and_mark_reaped(&self) {
        let mut reaped = self.reaped.lock().unwrap_or_else(|e| e.into_inner());
        if !*reaped {
            signal_group(self.pgid, Signal::SIGKILL);
            *reaped = true;
        }
    }
}

/// Waits for `child` to exit on a plain thread (no runtime needed), then
/// kills what is left of its process group, takes the group off the
/// reaper's list, reaps the child and publishes the exit on `exit_tx`.
pub(crate) fn wait_on_thread(child: Child, group: Arc<Group>, exit_tx: watch::Sender<Option<WorkerExit>>) {
    let pgid = child.id();
    type Job = (Child, Arc<Group>, watch::Sender<Option<WorkerExit>>);
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    let spawned = std::thread::Builder::new()
        .name(format!("portpool-wait-{pgid}"))
        .stack_size(256 * 1024)
        .spawn(move || {
            if let Ok((mut child, group, exit_tx)) = rx.recv() {
                finish(&mut child, &group, &exit_tx);
            }
        });
    match spawned {
        // The thread owns the child from here.
        Ok(_) => {
            let _ = tx.send((child, group, exit_tx));
        }
        Err(e) => {
            // No thread to wait on: end the worker now rather than leave a
            // process nobody reaps.
            tracing::warn!(
                pgid,
                "cannot start a thread to wait for the worker: {e}; killing it"
            );
            group.signal(Signal::SIGKILL);
            let mut child = child;
            finish(&mut child, &group, &exit_tx);
        }
    }
}

/// Waits for `child` to end without reaping it, kills the rest of its group
/// (the zombie leader still holds the group id), unlists it, reaps it and
/// publishes the exit.
fn finish(child: &mut Child, group: &Group, exit_tx: &watch::Sender<Option<WorkerExit>>) {
    let pgid = child.id();
    let exited = i32::try_from(pgid).is_ok_and(|raw| loop {
        match waitid(
            Id::Pid(Pid::from_raw(raw)),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
        ) {
            Ok(_) => break true,
            Err(Errno::EINTR) => continue,
            Err(_) => break false,
        }
    });
    let exit = if exited {
        // Unlisted first, outside the group's lock: a write to the reaper's
        // pipe may wait, and signallers must not wait behind it.
        forget_group(pgid);
        let mut reaped = group.reaped.lock().unwrap_or_else(|e| e.into_inner());
        signal_group(pgid, Signal::SIGKILL);
        let exit = child.wait().map(exit_of).unwrap_or_default();
        *reaped = true;
        exit
    } else {
        // Cannot wait without reaping: reap, then never signal the group.
        let exit = child.wait().map(exit_of).unwrap_or_default();
        *group.reaped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        forget_group(pgid);
        exit
    };
    exit_tx.send_replace(Some(exit));
}

/// How a process ended, from its wait status.
pub(crate) fn exit_of(status: std::process::ExitStatus) -> WorkerExit {
    use std::os::unix::process::ExitStatusExt;
    WorkerExit {
        code: status.code(),
        signal: status.signal(),
    }
}
