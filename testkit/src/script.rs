//! Scripted behaviour of one fake worker: how its launch goes and which
//! faults its calls meet.

use std::time::Duration;

use portpool_transport::{RemoteError, WorkerExit};

/// Something that happens to a call instead of (or before) its handler.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Wait this long (tokio time) before running the handler. Delays add up.
    Delay(Duration),
    /// Answer with this application error instead of running the handler.
    Fail(RemoteError),
    /// Never answer (the call ends only by its timeout, a cancel, a crash or
    /// the end of a shutdown's grace).
    Hang,
    /// The worker crashes when the call arrives: this call and every other
    /// in-flight call fail with `CallError::WorkerCrashed`.
    Crash,
    /// The worker writes garbage on stdout when the call arrives: like the
    /// process transport, the host sees a protocol violation and kills it,
    /// so every in-flight call fails with `CallError::WorkerCrashed` whose
    /// reason starts with "protocol violation" (exit by signal 9).
    Garbage,
}

/// Which calls a [`Fault`] applies to.
#[derive(Debug, Clone, PartialEq)]
enum When {
    /// The call with this 0-based index on the worker.
    Call(u64),
    /// Calls with this index or later.
    From(u64),
    /// Calls of this method.
    Method(String),
    /// Every call.
    Always,
}

/// How a launch goes.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) enum LaunchPlan {
    /// The worker starts and says hello.
    #[default]
    Ok,
    /// `LaunchError::Other` with this reason.
    Fail(String),
    /// `LaunchError::ExitedDuringInit` with this exit code.
    ExitDuringInit(i32),
    /// No hello: `LaunchError::InitTimeout` after the launcher's init
    /// timeout (or never, without one).
    NoHello,
    /// `LaunchError::BadHello` with this reason.
    BadHello(String),
}

/// The behaviour of one fake worker, chosen per launch with
/// [`FakeLauncher::script`](crate::FakeLauncher::script) or
/// [`FakeLauncher::script_for`](crate::FakeLauncher::script_for).
///
/// The default script is a healthy worker: it starts at once and answers
/// every call with its handler.
///
/// ```
/// use std::time::Duration;
/// use portpool_testkit::{remote_error, Fault, WorkerScript};
///
/// let script = WorkerScript::default()
///     .latency(Duration::from_millis(5))          // every call
///     .crash_after_calls(3)                         // calls 0, 1, 2 answer; call 3 crashes it
///     .on_method("flaky", Fault::Fail(remote_error("IOError", "disk")))
///     .hang_method("stuck")
///     .rss(200 << 20);
/// # let _ = script;
/// ```
#[derive(Debug, Clone, Default)]
pub struct WorkerScript {
    pub(crate) launch: LaunchPlan,
    pub(crate) launch_delay: Option<Duration>,
    pub(crate) latency: Duration,
    pub(crate) ping_latency: Duration,
    pub(crate) chunk_interval: Duration,
    pub(crate) crash_at: Option<Duration>,
    faults: Vec<(When, Fault)>,
    pub(crate) rss: Option<u64>,
    pub(crate) ignore_pings: bool,
    pub(crate) ignore_shutdown: bool,
    pub(crate) max_concurrency: Option<u32>,
    pub(crate) stderr_tail: String,
    pub(crate) pid: Option<u32>,
    pub(crate) crash_exit: Option<WorkerExit>,
}

/// What a call will do, decided when it arrives.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    pub(crate) delay: Duration,
    pub(crate) action: Action,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    Run,
    Fail(RemoteError),
    Hang,
    Crash,
    Garbage,
}

impl WorkerScript {
    /// A healthy worker (same as `default()`).
    pub fn new() -> Self {
        Self::default()
    }

    // ----- launch -----

    /// The launch fails with `LaunchError::Other { reason }`.
    pub fn fail_launch(mut self, reason: impl Into<String>) -> Self {
        self.launch = LaunchPlan::Fail(reason.into());
        self
    }

    /// The process "exits during init" with `code`: the launch fails with
    /// `LaunchError::ExitedDuringInit`, carrying [`stderr_tail`](Self::stderr_tail).
    pub fn exit_during_init(mut self, code: i32) -> Self {
        self.launch = LaunchPlan::ExitDuringInit(code);
        self
    }

    /// The worker never says hello: the launch fails with
    /// `LaunchError::InitTimeout` after the launcher's
    /// [`init_timeout`](crate::FakeLauncher::init_timeout), or never ends
    /// when the launcher has none.
    pub fn no_hello(mut self) -> Self {
        self.launch = LaunchPlan::NoHello;
        self
    }

    /// The first frame is not a valid hello (garbage, a huge header, bad
    /// MessagePack, another protocol major): `LaunchError::BadHello { reason }`.
    pub fn bad_hello(mut self, reason: impl Into<String>) -> Self {
        self.launch = LaunchPlan::BadHello(reason.into());
        self
    }

    /// The launch takes this long (tokio time) before it succeeds or fails.
    /// Overrides the launcher's [`launch_delay`](crate::FakeLauncher::launch_delay).
    pub fn launch_delay(mut self, delay: Duration) -> Self {
        self.launch_delay = Some(delay);
        self
    }

    // ----- calls -----

    /// Every call waits this long before its handler runs.
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Calls of `method` wait this long (on top of [`latency`](Self::latency)).
    pub fn method_latency(self, method: impl Into<String>, latency: Duration) -> Self {
        self.on_method(method, Fault::Delay(latency))
    }

    /// Applies `fault` to the call with 0-based index `n` on this worker.
    pub fn on_call(mut self, n: u64, fault: Fault) -> Self {
        self.faults.push((When::Call(n), fault));
        self
    }

    /// Applies `fault` to the call with index `n` and every later call.
    pub fn after_calls(mut self, n: u64, fault: Fault) -> Self {
        self.faults.push((When::From(n), fault));
        self
    }

    /// Applies `fault` to every call of `method`.
    pub fn on_method(mut self, method: impl Into<String>, fault: Fault) -> Self {
        self.faults.push((When::Method(method.into()), fault));
        self
    }

    /// Applies `fault` to every call.
    pub fn on_every_call(mut self, fault: Fault) -> Self {
        self.faults.push((When::Always, fault));
        self
    }

    /// The first `n` calls are served; the worker crashes when call `n`
    /// (0-based) arrives. `crash_after_calls(0)` crashes on the first call.
    pub fn crash_after_calls(self, n: u64) -> Self {
        self.after_calls(n, Fault::Crash)
    }

    /// The worker crashes this long (tokio time) after its launch completed.
    pub fn crash_at(mut self, after: Duration) -> Self {
        self.crash_at = Some(after);
        self
    }

    /// The worker crashes when `method` is called.
    pub fn crash_on_method(self, method: impl Into<String>) -> Self {
        self.on_method(method, Fault::Crash)
    }

    /// Calls of `method` are never answered.
    pub fn hang_method(self, method: impl Into<String>) -> Self {
        self.on_method(method, Fault::Hang)
    }

    /// Calls from index `n` on are never answered.
    pub fn hang_after_calls(self, n: u64) -> Self {
        self.after_calls(n, Fault::Hang)
    }

    /// Calls of `method` fail with `error` (a `CallError::Remote`).
    pub fn fail_method(self, method: impl Into<String>, error: RemoteError) -> Self {
        self.on_method(method, Fault::Fail(error))
    }

    /// Time between two chunks of a streaming call.
    pub fn chunk_interval(mut self, interval: Duration) -> Self {
        self.chunk_interval = interval;
        self
    }

    // ----- health -----

    /// Pings are never answered (`ping` returns `CallError::Timeout`).
    pub fn ignore_pings(mut self) -> Self {
        self.ignore_pings = true;
        self
    }

    /// Pings are answered after this long.
    pub fn ping_latency(mut self, latency: Duration) -> Self {
        self.ping_latency = latency;
        self
    }

    /// What `rss_bytes()` reports (it reports `None` by default). Change it
    /// later with [`FakeWorkerHandle::set_rss`](crate::FakeWorkerHandle::set_rss).
    pub fn rss(mut self, bytes: u64) -> Self {
        self.rss = Some(bytes);
        self
    }

    /// The worker ignores the shutdown request: `shutdown(grace)` always
    /// waits the whole grace, then terminates it (exit by signal 15).
    pub fn ignore_shutdown(mut self) -> Self {
        self.ignore_shutdown = true;
        self
    }

    // ----- identity and diagnostics -----

    /// What the hello announces as `max_concurrency` (overrides the launcher's).
    pub fn max_concurrency(mut self, n: u32) -> Self {
        self.max_concurrency = Some(n.max(1));
        self
    }

    /// The "stderr tail" attached to this worker's errors (launch failures
    /// and crashes).
    pub fn stderr_tail(mut self, tail: impl Into<String>) -> Self {
        self.stderr_tail = tail.into();
        self
    }

    /// A fake process id for `WorkerInfo::pid` and the errors (default `None`).
    pub fn pid(mut self, pid: u32) -> Self {
        self.pid = Some(pid);
        self
    }

    /// How the worker ends when it crashes (default: exit code 101).
    pub fn crash_exit(mut self, exit: WorkerExit) -> Self {
        self.crash_exit = Some(exit);
        self
    }

    /// Decides what call `index` of `method` does. Delays add up; the first
    /// matching terminal fault (fail, hang, crash) wins.
    pub(crate) fn plan(&self, index: u64, method: &str, hanging: bool) -> Plan {
        let mut delay = self.latency;
        let mut action = None;
        for (when, fault) in &self.faults {
            let applies = match when {
                When::Call(n) => *n == index,
                When::From(n) => index >= *n,
                When::Method(m) => m == method,
                When::Always => true,
            };
            if !applies {
                continue;
            }
            match fault {
                Fault::Delay(d) => delay += *d,
                Fault::Fail(e) => {
                    action.get_or_insert(Action::Fail(e.clone()));
                }
                Fault::Hang => {
                    action.get_or_insert(Action::Hang);
                }
                Fault::Crash => {
                    action.get_or_insert(Action::Crash);
                }
                Fault::Garbage => {
                    action.get_or_insert(Action::Garbage);
                }
            }
        }
        let action = match action {
            Some(action) => action,
            None if hanging => Action::Hang,
            None => Action::Run,
        };
        Plan { delay, action }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote_error;

    #[test]
    fn delays_add_up_and_first_terminal_fault_wins() {
        let script = WorkerScript::default()
            .latency(Duration::from_millis(1))
            .method_latency("a", Duration::from_millis(10))
            .fail_method("a", remote_error("E", "m"))
            .hang_method("a")
            .crash_after_calls(5);
        let plan = script.plan(0, "a", false);
        assert_eq!(plan.delay, Duration::from_millis(11));
        assert_eq!(plan.action, Action::Fail(remote_error("E", "m")));
        assert_eq!(script.plan(4, "b", false).action, Action::Run);
        assert_eq!(script.plan(4, "b", true).action, Action::Hang);
        assert_eq!(script.plan(5, "b", false).action, Action::Crash);
        assert_eq!(script.plan(9, "b", false).action, Action::Crash);
    }
}
