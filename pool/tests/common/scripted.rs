//! A worker that reports a scripted CPU time and discarded-reply count
//! (the fake has neither): for the heartbeat's CPU-progress rule and the
//! worker status.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use portpool_testkit::FakeLauncher;
use portpool_transport::{
    CallError, CallRequest, CallStream, CrashCause, LaunchError, Launcher, Value, Worker, WorkerExit,
    WorkerId, WorkerInfo,
};
use tokio::time::Instant;

use super::ms;

/// What a [`Scripted`] worker reports as its CPU time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cpu {
    /// `None`, like the fake itself.
    Unknown,
    /// A constant: a stopped or deadlocked process.
    Stuck,
    /// Grows with (virtual) time: a process busy in a C call.
    Busy,
}

/// The knobs of a set of [`Scripted`] workers, turned by the test.
#[derive(Debug)]
pub(crate) struct Knobs {
    /// What `cpu_time` reports.
    pub cpu: Cpu,
    /// What `discarded_replies` reports.
    pub discarded: u64,
}

/// A worker that delegates to a fake and reports a scripted CPU time and
/// discarded-reply count (the fake has neither).
#[derive(Debug)]
pub(crate) struct Scripted {
    inner: Box<dyn Worker>,
    knobs: Arc<Mutex<Knobs>>,
    born: Instant,
}

#[async_trait]
impl Worker for Scripted {
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
        match self.knobs.lock().unwrap().cpu {
            Cpu::Unknown => None,
            Cpu::Stuck => Some(ms(1_234)),
            Cpu::Busy => Some(self.born.elapsed()),
        }
    }
    fn discarded_replies(&self) -> u64 {
        self.knobs.lock().unwrap().discarded
    }
    fn stderr_tail(&self) -> String {
        self.inner.stderr_tail()
    }
    fn kill(&self, cause: CrashCause, reason: &str) {
        self.inner.kill(cause, reason)
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

/// A launcher of [`Scripted`] workers sharing one set of knobs.
#[derive(Clone)]
pub(crate) struct ScriptedLauncher {
    fake: FakeLauncher,
    knobs: Arc<Mutex<Knobs>>,
}

#[async_trait]
impl Launcher for ScriptedLauncher {
    async fn launch(&self, id: WorkerId) -> Result<Box<dyn Worker>, LaunchError> {
        let inner = self.fake.launch(id).await?;
        Ok(Box::new(Scripted {
            inner,
            knobs: self.knobs.clone(),
            born: Instant::now(),
        }))
    }
}

/// A launcher of [`Scripted`] workers around `fake`, and their knobs.
pub(crate) fn scripted(fake: &FakeLauncher, cpu: Cpu) -> (ScriptedLauncher, Arc<Mutex<Knobs>>) {
    let knobs = Arc::new(Mutex::new(Knobs { cpu, discarded: 0 }));
    (
        ScriptedLauncher {
            fake: fake.clone(),
            knobs: knobs.clone(),
        },
        knobs,
    )
}
