//! [`MixedLauncher`]: one pool over several launchers (local processes and
//! remote listeners), each up to a quota.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use portpool_protocol::Value;

use crate::{
    CallError, CallRequest, CallStream, CrashCause, LaunchError, Launcher, Worker, WorkerExit, WorkerId,
    WorkerInfo,
};

/// Launches from several launchers, each up to a quota of live workers, so
/// one pool can mix local and remote workers (e.g. 2 local processes for
/// low latency, the rest on a remote fleet).
///
/// A launch goes to the first launcher (in the order added) below its
/// quota; if it fails, the next one below its quota is tried, and the last
/// error is returned. When every launcher is at its quota (a pool larger
/// than the quotas' sum, or a replacement started before the worker it
/// replaces is gone) the launcher with the lowest share of its quota in use
/// takes it. A worker counts against its launcher until it is dropped.
///
/// ```no_run
/// # #[cfg(feature = "remote")]
/// # fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use portpool_transport::{MixedLauncher, ProcessLauncher, TcpLauncher, WorkerCommand};
///
/// let local = ProcessLauncher::new(WorkerCommand::python("app.py"));
/// let remote = TcpLauncher::builder(std::env::var("PORTPOOL_SECRET")?)
///     .dns("workers.default.svc.cluster.local:7000")
///     .build()?;
/// let launcher = MixedLauncher::new().with("local", local, 2).with("remote", remote, 30);
/// # let _ = launcher;
/// # Ok(())
/// # }
/// ```
#[derive(Default)]
pub struct MixedLauncher {
    parts: Vec<Part>,
}

struct Part {
    name: String,
    launcher: Box<dyn Launcher>,
    quota: usize,
    live: Arc<AtomicUsize>,
}

impl std::fmt::Debug for MixedLauncher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MixedLauncher")
            .field("live", &self.live())
            .finish()
    }
}

impl MixedLauncher {
    /// No launchers yet: add them with [`with`](Self::with).
    pub fn new() -> Self {
        MixedLauncher::default()
    }

    /// Adds `launcher`, named `name` (for [`live`](Self::live) and errors),
    /// for up to `quota` live workers (at least 1).
    pub fn with(mut self, name: impl Into<String>, launcher: impl Launcher + 'static, quota: usize) -> Self {
        self.parts.push(Part {
            name: name.into(),
            launcher: Box::new(launcher),
            quota: quota.max(1),
            live: Arc::new(AtomicUsize::new(0)),
        });
        self
    }

    /// Each launcher's name, live workers and quota.
    pub fn live(&self) -> Vec<(String, usize, usize)> {
        self.parts
            .iter()
            .map(|p| (p.name.clone(), p.live.load(Ordering::Relaxed), p.quota))
            .collect()
    }

    /// The order to try launchers in for the next launch.
    fn order(&self) -> Vec<usize> {
        let under: Vec<usize> = (0..self.parts.len())
            .filter(|&i| self.parts[i].live.load(Ordering::Relaxed) < self.parts[i].quota)
            .collect();
        if !under.is_empty() {
            return under;
        }
        let mut all: Vec<usize> = (0..self.parts.len()).collect();
        // Lowest share of the quota in use first (live / quota, in millionths).
        all.sort_by_key(|&i| {
            let p = &self.parts[i];
            (p.live.load(Ordering::Relaxed) as u128 * 1_000_000) / p.quota as u128
        });
        all
    }

    async fn launch_with(
        &self,
        id: WorkerId,
        timeout: Option<Duration>,
    ) -> Result<Box<dyn Worker>, LaunchError> {
        let mut last = None;
        for i in self.order() {
            let part = &self.parts[i];
            // Counted from now, so concurrent launches respect the quota.
            part.live.fetch_add(1, Ordering::AcqRel);
            let launched = match timeout {
                Some(t) => part.launcher.launch_within(id, t).await,
                None => part.launcher.launch(id).await,
            };
            match launched {
                Ok(worker) => {
                    return Ok(Box::new(Counted {
                        inner: worker,
                        live: part.live.clone(),
                    }))
                }
                Err(e) => {
                    part.live.fetch_sub(1, Ordering::AcqRel);
                    tracing::debug!(worker = %id, launcher = %part.name, "launch failed: {e}");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| LaunchError::Other {
            worker: id,
            reason: "MixedLauncher has no launchers".into(),
        }))
    }
}

#[async_trait]
impl Launcher for MixedLauncher {
    async fn launch(&self, id: WorkerId) -> Result<Box<dyn Worker>, LaunchError> {
        self.launch_with(id, None).await
    }

    async fn launch_within(&self, id: WorkerId, timeout: Duration) -> Result<Box<dyn Worker>, LaunchError> {
        self.launch_with(id, Some(timeout)).await
    }
}

/// A worker counted against its launcher's quota until dropped.
#[derive(Debug)]
struct Counted {
    inner: Box<dyn Worker>,
    live: Arc<AtomicUsize>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}

#[async_trait]
impl Worker for Counted {
    fn info(&self) -> &WorkerInfo {
        self.inner.info()
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
    fn is_alive(&self) -> bool {
        self.inner.is_alive()
    }
    fn rss_bytes(&self) -> Option<u64> {
        self.inner.rss_bytes()
    }
    fn cpu_time(&self) -> Option<Duration> {
        self.inner.cpu_time()
    }
    fn discarded_replies(&self) -> u64 {
        self.inner.discarded_replies()
    }
    fn stderr_tail(&self) -> String {
        self.inner.stderr_tail()
    }
    fn kill(&self, cause: CrashCause, reason: &str) {
        self.inner.kill(cause, reason);
    }
    async fn call(&self, request: CallRequest) -> Result<Value, CallError> {
        self.inner.call(request).await
    }
    async fn stream(&self, request: CallRequest) -> Result<CallStream, CallError> {
        self.inner.stream(request).await
    }
    async fn ping(&self, timeout: Duration) -> Result<Duration, CallError> {
        self.inner.ping(timeout).await
    }
    async fn close_session(&self, session: &str) -> Result<(), CallError> {
        self.inner.close_session(session).await
    }
    async fn shutdown(&self, grace: Duration) -> WorkerExit {
        self.inner.shutdown(grace).await
    }
    async fn closed(&self) -> WorkerExit {
        self.inner.closed().await
    }
}
