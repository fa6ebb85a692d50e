//! The fake launcher: makes [`FakeWorker`]s from registered handlers and
//! per-launch scripts, and remembers them for inspection.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use portpool_transport::{
    Hello, HelloCause, LaunchError, Launcher, Value, Worker, WorkerAddress, WorkerExit, WorkerId, WorkerInfo,
};
use tokio::sync::watch;
use tokio::time::sleep;

use crate::handler::{CallContext, Handler, HandlerResult, Handlers};
use crate::record::{FakeEvent, ReceivedCall};
use crate::script::{LaunchPlan, WorkerScript};
use crate::worker::{FakeWorker, FakeWorkerHandle, SessionStates};
use crate::{lock, EventRecorder, Recorded};

type ScriptFn = dyn Fn(u64) -> WorkerScript + Send + Sync;

struct Config {
    handlers: Handlers,
    max_concurrency: u32,
    launch_delay: Duration,
    init_timeout: Option<Duration>,
    script: Option<Arc<ScriptFn>>,
    scripts_by_id: HashMap<WorkerId, WorkerScript>,
    fleet: Option<FakeFleet>,
}

#[derive(Default)]
struct State {
    launches: u64,
    workers: Vec<FakeWorkerHandle>,
    log: Vec<LaunchRecord>,
}

struct Inner {
    config: Mutex<Config>,
    state: Mutex<State>,
    events: EventRecorder<FakeEvent>,
    changed: watch::Sender<u64>,
}

/// One launch attempt and how it went.
#[derive(Debug, Clone)]
pub struct LaunchRecord {
    /// Launch number, from 0.
    pub n: u64,
    /// The worker launched.
    pub worker: WorkerId,
    /// Its outcome.
    pub result: Result<(), LaunchError>,
}

/// A [`Launcher`] of in-process [`FakeWorker`]s: methods are Rust closures,
/// faults are scripted per launch, and everything the workers receive is
/// recorded. Cheap to clone: clones share the configuration and the records,
/// so keep one clone in the test and give another to the pool.
///
/// All waiting (launch delays, latencies, time-outs, crash timers) uses
/// `tokio::time`, so tests are deterministic and instant under
/// `tokio::time::pause()` / `#[tokio::test(start_paused = true)]`.
///
/// Defaults: no methods (an unknown method fails with a `Remote` error of
/// type `MethodNotFound`), `max_concurrency` 1, no launch delay, init
/// timeout 30 s (used by [`WorkerScript::no_hello`]), healthy workers.
///
/// ```
/// use std::time::Duration;
/// use portpool_testkit::{FakeLauncher, WorkerScript};
/// use portpool_transport::{CallRequest, Launcher, Value, WorkerId};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let launcher = FakeLauncher::new()
///     .handler("echo", Ok)
///     .max_concurrency(4)
///     .script(|n| if n == 0 { WorkerScript::default().fail_launch("boom") } else { WorkerScript::default() });
///
/// assert!(launcher.launch(WorkerId(1)).await.is_err());
/// let worker = launcher.launch(WorkerId(2)).await.unwrap();
/// assert_eq!(worker.call(CallRequest::new("echo", "hi")).await.unwrap(), Value::from("hi"));
/// assert_eq!(launcher.launches(), 2);
/// assert_eq!(launcher.worker(WorkerId(2)).unwrap().methods(), ["echo"]);
/// # }
/// ```
#[derive(Clone)]
pub struct FakeLauncher {
    inner: Arc<Inner>,
}

impl Default for FakeLauncher {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for FakeLauncher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = lock(&self.inner.config);
        let mut methods: Vec<_> = config.handlers.keys().collect();
        methods.sort();
        f.debug_struct("FakeLauncher")
            .field("methods", &methods)
            .field("launches", &lock(&self.inner.state).launches)
            .finish_non_exhaustive()
    }
}

impl FakeLauncher {
    /// A launcher of healthy workers with no methods.
    pub fn new() -> Self {
        FakeLauncher {
            inner: Arc::new(Inner {
                config: Mutex::new(Config {
                    handlers: Handlers::new(),
                    max_concurrency: 1,
                    launch_delay: Duration::ZERO,
                    init_timeout: Some(portpool_transport::DEFAULT_INIT_TIMEOUT),
                    script: None,
                    scripts_by_id: HashMap::new(),
                    fleet: None,
                }),
                state: Mutex::new(State::default()),
                events: EventRecorder::new(),
                changed: watch::Sender::new(0),
            }),
        }
    }

    fn configure(self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut lock(&self.inner.config));
        self
    }

    fn register(self, method: impl Into<String>, handler: Handler) -> Self {
        let method = method.into();
        self.configure(|c| {
            c.handlers.insert(method, handler);
        })
    }

    // ----- methods -----

    /// Registers a synchronous method: `|params| Ok(params)`.
    pub fn handler<F>(self, method: impl Into<String>, f: F) -> Self
    where
        F: Fn(Value) -> HandlerResult + Send + Sync + 'static,
    {
        self.register(method, Handler::sync(move |_, params| f(params)))
    }

    /// Registers a synchronous method that also sees its [`CallContext`]
    /// (worker id, session and per-session state).
    pub fn handler_ctx<F>(self, method: impl Into<String>, f: F) -> Self
    where
        F: Fn(CallContext, Value) -> HandlerResult + Send + Sync + 'static,
    {
        self.register(method, Handler::sync(f))
    }

    /// Registers an async method, e.g. one that sleeps (use `tokio::time`).
    pub fn async_handler<F, Fut>(self, method: impl Into<String>, f: F) -> Self
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.register(method, Handler::asynchronous(move |_, params| f(params)))
    }

    /// Registers an async method that also sees its [`CallContext`].
    pub fn async_handler_ctx<F, Fut>(self, method: impl Into<String>, f: F) -> Self
    where
        F: Fn(CallContext, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.register(method, Handler::asynchronous(f))
    }

    /// Registers a streaming method: its items in order; an `Err` item ends
    /// the stream with `CallError::Remote`. Chunks are spaced by
    /// [`WorkerScript::chunk_interval`]. Called with `call` (not `stream`),
    /// it returns the items as one array.
    pub fn stream_handler<F>(self, method: impl Into<String>, f: F) -> Self
    where
        F: Fn(Value) -> Vec<HandlerResult> + Send + Sync + 'static,
    {
        self.register(method, Handler::stream(move |_, params| f(params)))
    }

    // ----- workers -----

    /// The `max_concurrency` the workers' hello announces (default 1).
    pub fn max_concurrency(self, n: u32) -> Self {
        self.configure(|c| c.max_concurrency = n.max(1))
    }

    /// How long every launch takes (tokio time; default zero). A script's
    /// own [`WorkerScript::launch_delay`] overrides it.
    pub fn launch_delay(self, delay: Duration) -> Self {
        self.configure(|c| c.launch_delay = delay)
    }

    /// How long a [`WorkerScript::no_hello`] launch waits before failing
    /// with `LaunchError::InitTimeout`; `None`: it never ends. Default
    /// [`DEFAULT_INIT_TIMEOUT`](portpool_transport::DEFAULT_INIT_TIMEOUT) (30 s), like the process launcher.
    pub fn init_timeout(self, timeout: Option<Duration>) -> Self {
        self.configure(|c| c.init_timeout = timeout)
    }

    /// Chooses each launch's script by launch number `n` (0, 1, 2, ...,
    /// counting failed launches too).
    pub fn script<F>(self, f: F) -> Self
    where
        F: Fn(u64) -> WorkerScript + Send + Sync + 'static,
    {
        self.configure(|c| c.script = Some(Arc::new(f)))
    }

    /// Uses `script` whenever worker `id` is launched (takes precedence over
    /// [`script`](Self::script)).
    pub fn script_for(self, id: WorkerId, script: WorkerScript) -> Self {
        self.configure(|c| {
            c.scripts_by_id.insert(id, script);
        })
    }

    /// Makes the workers this launcher launches members of `fleet`: worker
    /// `id` is the fleet's worker `id`, with the fleet's address for it
    /// and its per-session state, as seen by every launcher of the fleet.
    /// So two pools (two front ends) over two launchers of one fleet reach
    /// "the same remote workers".
    pub fn fleet(self, fleet: &FakeFleet) -> Self {
        let fleet = fleet.clone();
        self.configure(|c| c.fleet = Some(fleet))
    }

    // ----- launching -----

    /// Launches a worker and returns it as its concrete type (the
    /// [`Launcher`] impl boxes this).
    pub async fn launch_fake(&self, id: WorkerId) -> Result<FakeWorker, LaunchError> {
        let n = {
            let mut st = lock(&self.inner.state);
            st.launches += 1;
            st.launches - 1
        };
        self.inner
            .events
            .record(FakeEvent::LaunchStarted { worker: id, n });
        self.bump();
        let (script, handlers, max_concurrency, launch_delay, init_timeout, fleet) = {
            let config = lock(&self.inner.config);
            let script = match config.scripts_by_id.get(&id) {
                Some(script) => script.clone(),
                None => config.script.as_ref().map(|f| f(n)).unwrap_or_default(),
            };
            (
                script,
                config.handlers.clone(),
                config.max_concurrency,
                config.launch_delay,
                config.init_timeout,
                config.fleet.clone(),
            )
        };
        let delay = script.launch_delay.unwrap_or(launch_delay);
        if !delay.is_zero() {
            sleep(delay).await;
        }
        let failure = match &script.launch {
            LaunchPlan::Ok => None,
            LaunchPlan::Fail(reason) => Some(LaunchError::Other {
                worker: id,
                reason: reason.clone(),
            }),
            LaunchPlan::ExitDuringInit(code) => Some(LaunchError::ExitedDuringInit {
                worker: id,
                pid: script.pid,
                exit: WorkerExit {
                    code: Some(*code),
                    signal: None,
                },
                stderr_tail: script.stderr_tail.clone(),
            }),
            LaunchPlan::BadHello(reason) => Some(LaunchError::BadHello {
                worker: id,
                pid: script.pid,
                cause: HelloCause::Malformed,
                reason: reason.clone(),
                stderr_tail: script.stderr_tail.clone(),
            }),
            LaunchPlan::NoHello => match init_timeout {
                Some(after) => {
                    sleep(after).await;
                    Some(LaunchError::InitTimeout {
                        worker: id,
                        pid: script.pid,
                        after,
                        stderr_tail: script.stderr_tail.clone(),
                    })
                }
                None => std::future::pending().await,
            },
        };
        if let Some(error) = failure {
            lock(&self.inner.state).log.push(LaunchRecord {
                n,
                worker: id,
                result: Err(error.clone()),
            });
            self.inner.events.record(FakeEvent::LaunchFailed {
                worker: id,
                error: error.to_string(),
            });
            self.bump();
            return Err(error);
        }
        let mut methods: Vec<String> = handlers.keys().cloned().collect();
        methods.sort();
        let max_concurrency = script.max_concurrency.unwrap_or(max_concurrency);
        let hello = Hello {
            protocol_major: portpool_protocol::PROTOCOL_VERSION.major,
            protocol_minor: portpool_protocol::PROTOCOL_VERSION.minor,
            runtime: "fake".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            pid: script.pid.unwrap_or(0),
            max_concurrency,
            methods,
            capabilities: vec!["stream".into(), "cancel".into(), "session".into()],
            instance: None,
        };
        let mut info = WorkerInfo::local(id, script.pid, hello, max_concurrency as usize);
        let sessions = match &fleet {
            Some(fleet) => {
                info.address = fleet.address(id);
                fleet.sessions(id)
            }
            None => SessionStates::default(),
        };
        let worker = FakeWorker::start(info, script, handlers, self.inner.events.clone(), sessions);
        {
            let mut st = lock(&self.inner.state);
            st.workers.push(worker.handle());
            st.log.push(LaunchRecord {
                n,
                worker: id,
                result: Ok(()),
            });
        }
        self.inner.events.record(FakeEvent::Launched { worker: id });
        self.bump();
        Ok(worker)
    }

    fn bump(&self) {
        self.inner.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    // ----- inspection -----

    /// How many launches were attempted (successful or not, finished or not).
    pub fn launches(&self) -> u64 {
        lock(&self.inner.state).launches
    }

    /// Every finished launch attempt, in order of completion.
    pub fn launch_log(&self) -> Vec<LaunchRecord> {
        lock(&self.inner.state).log.clone()
    }

    /// Every worker launched successfully, in order, dead or alive.
    pub fn workers(&self) -> Vec<FakeWorkerHandle> {
        lock(&self.inner.state).workers.clone()
    }

    /// The workers that are alive (not dead, not shutting down).
    pub fn live_workers(&self) -> Vec<FakeWorkerHandle> {
        self.workers()
            .into_iter()
            .filter(FakeWorkerHandle::is_alive)
            .collect()
    }

    /// The worker launched with `id`, if its launch succeeded.
    pub fn worker(&self, id: WorkerId) -> Option<FakeWorkerHandle> {
        lock(&self.inner.state)
            .workers
            .iter()
            .find(|w| w.id() == id)
            .cloned()
    }

    /// Every call any worker received, with its worker.
    pub fn all_calls(&self) -> Vec<(WorkerId, ReceivedCall)> {
        self.workers()
            .iter()
            .flat_map(|w| w.calls().into_iter().map(move |c| (w.id(), c)))
            .collect()
    }

    /// The chronological log of launches, calls, pings, shutdowns and exits
    /// of all workers.
    pub fn events(&self) -> Vec<Recorded<FakeEvent>> {
        self.inner.events.events()
    }

    /// The recorder behind [`events`](Self::events), to wait on it or to
    /// add [`FakeEvent::Note`]s.
    pub fn event_recorder(&self) -> EventRecorder<FakeEvent> {
        self.inner.events.clone()
    }

    /// Waits until `pred` holds (re-checked after every launch event).
    pub async fn wait_until(&self, pred: impl Fn(&FakeLauncher) -> bool) {
        let mut changed = self.inner.changed.subscribe();
        while !pred(self) {
            let _ = changed.changed().await;
        }
    }

    /// Waits until at least `n` workers launched successfully.
    pub async fn wait_for_workers(&self, n: usize) {
        self.wait_until(|l| lock(&l.inner.state).workers.len() >= n).await;
    }

    /// Panics, listing them, if any worker still has calls in flight: use
    /// at the end of a test to check that nothing leaked a call.
    #[track_caller]
    pub fn assert_no_calls_in_flight(&self) {
        let open: Vec<String> = self
            .all_calls()
            .into_iter()
            .filter(|(_, c)| c.outcome.is_none())
            .map(|(w, c)| format!("{w} call {} ({})", c.index, c.method))
            .collect();
        assert!(open.is_empty(), "calls still in flight: {}", open.join(", "));
    }
}

#[async_trait]
impl Launcher for FakeLauncher {
    async fn launch(&self, id: WorkerId) -> Result<Box<dyn Worker>, LaunchError> {
        Ok(Box::new(self.launch_fake(id).await?))
    }
}

/// A set of "remote workers" that several [`FakeLauncher`]s serve, as
/// several front ends connected to the same worker processes would:
/// worker `id` of every launcher joined with [`FakeLauncher::fleet`] has
/// the same [`WorkerAddress`] (`tcp://fleet-NAME:ID#1`, never a local
/// one) and the same per-session state. For tests of sessions shared by
/// several front ends.
///
/// ```
/// use portpool_testkit::{CallContext, FakeFleet, FakeLauncher};
/// use portpool_transport::{CallRequest, Launcher, Value, WorkerId};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let fleet = FakeFleet::new();
/// let front_end = |fleet: &FakeFleet| {
///     FakeLauncher::new().fleet(fleet).handler_ctx("count", |ctx: CallContext, _| {
///         let n = ctx.session_state().and_then(|v| v.as_u64()).unwrap_or(0) + 1;
///         ctx.set_session_state(Value::from(n));
///         Ok(Value::from(n))
///     })
/// };
/// let (a, b) = (front_end(&fleet), front_end(&fleet));
/// let on_a = a.launch(WorkerId(3)).await.unwrap();
/// let on_b = b.launch(WorkerId(3)).await.unwrap();
/// assert_eq!(on_a.info().address, on_b.info().address);
/// let call = || CallRequest::new("count", Value::Nil).with_session("s1");
/// assert_eq!(on_a.call(call()).await.unwrap(), Value::from(1));
/// assert_eq!(on_b.call(call()).await.unwrap(), Value::from(2), "the same state");
/// assert_eq!(fleet.session_state(WorkerId(3), "s1"), Some(Value::from(2)));
/// # }
/// ```
#[derive(Clone)]
pub struct FakeFleet {
    inner: Arc<FleetInner>,
}

struct FleetInner {
    name: String,
    sessions: Mutex<HashMap<WorkerId, SessionStates>>,
}

impl fmt::Debug for FakeFleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeFleet")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

impl Default for FakeFleet {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeFleet {
    /// A fleet with a name of its own (so two fleets never share an address).
    pub fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        FakeFleet {
            inner: Arc::new(FleetInner {
                name: format!("{}-{n}", std::process::id()),
                sessions: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The address of the fleet's worker `id`.
    pub fn address(&self, id: WorkerId) -> WorkerAddress {
        WorkerAddress::remote(&format!("fleet-{}:{}", self.inner.name, id.0), "1")
    }

    /// The state the fleet's worker `id` keeps for `session`.
    pub fn session_state(&self, id: WorkerId, session: &str) -> Option<Value> {
        lock(&self.sessions(id)).get(session).cloned()
    }

    fn sessions(&self, id: WorkerId) -> SessionStates {
        lock(&self.inner.sessions).entry(id).or_default().clone()
    }
}
