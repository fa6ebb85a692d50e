//! [`Dspy`], the handle over the session pool.

use std::fmt;
use std::sync::{Arc, Mutex, RwLock};

use portpool::{Session, SessionError, SessionPool, Value};
use serde::Deserialize;

use crate::codec::decode;
use crate::error::from_session;
use crate::program::{Checkpoint, ProgramInner};
use crate::{DspyError, Lm, Program, ProgramSpec, ProgramState};

/// DSPy over a [`SessionPool`] of `portpool.dspy` workers. A cheap clone.
#[derive(Clone)]
pub struct Dspy {
    pub(crate) inner: Arc<DspyInner>,
}

pub(crate) struct DspyInner {
    pub(crate) sessions: SessionPool,
    pub(crate) lm: RwLock<Option<Lm>>,
    pub(crate) restore: bool,
}

impl fmt::Debug for Dspy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dspy")
            .field("sessions", &self.inner.sessions)
            .field("restore", &self.inner.restore)
            .finish_non_exhaustive()
    }
}

impl Dspy {
    /// DSPy over `sessions`, whose workers run [`APP`](crate::APP) (see [`pool_builder`](crate::pool_builder)).
    pub fn new(sessions: SessionPool) -> Self {
        Dspy {
            inner: Arc::new(DspyInner {
                sessions,
                lm: RwLock::new(None),
                restore: false,
            }),
        }
    }

    /// Opt-in: when a program's worker is lost (or the program is missing
    /// from its session), re-load the program from its last known state —
    /// its creation, or the last [`Program::save`], [`Program::optimize`] or
    /// [`Dspy::restore`] — on another worker and retry the call once. The
    /// retried call may run twice (once on the lost worker).
    pub fn with_restore(self, on: bool) -> Self {
        let lm = self.lm();
        Dspy {
            inner: Arc::new(DspyInner {
                sessions: self.inner.sessions.clone(),
                lm: RwLock::new(lm),
                restore: on,
            }),
        }
    }

    /// Sets the LM every program of this handle uses (unless its spec has
    /// its own). It travels with each request, so every worker, including
    /// restarted ones, uses it; without one, the workers' own default
    /// (`PORTPOOL_DSPY_MODEL`, ...) is used.
    pub fn configure(&self, lm: Lm) {
        *self.inner.lm.write().unwrap_or_else(|e| e.into_inner()) = Some(lm);
    }

    /// The configured LM.
    pub fn lm(&self) -> Option<Lm> {
        self.inner.lm.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The session pool.
    pub fn sessions(&self) -> &SessionPool {
        &self.inner.sessions
    }

    /// Creates a program in a new session.
    pub async fn program(&self, spec: ProgramSpec) -> Result<Program, DspyError> {
        self.program_in(self.inner.sessions.open(), "default", spec).await
    }

    /// Creates a program named `name` in `session` (several programs may
    /// share a session, and so a worker).
    pub async fn program_in(
        &self,
        session: Session,
        name: &str,
        spec: ProgramSpec,
    ) -> Result<Program, DspyError> {
        let program = Program {
            inner: Arc::new(ProgramInner {
                dspy: self.clone(),
                session,
                name: name.to_string(),
                lm: spec.lm.clone(),
                checkpoint: Mutex::new(Checkpoint::Spec(spec)),
                restores: Mutex::new(0),
            }),
        };
        program.load_checkpoint().await?;
        Ok(program)
    }

    /// A fresh program, in a new session, from a saved state.
    pub async fn restore(&self, state: ProgramState) -> Result<Program, DspyError> {
        self.restore_in(self.inner.sessions.open(), "default", state)
            .await
    }

    /// A program named `name` in `session` from a saved state.
    pub async fn restore_in(
        &self,
        session: Session,
        name: &str,
        state: ProgramState,
    ) -> Result<Program, DspyError> {
        let program = Program {
            inner: Arc::new(ProgramInner {
                dspy: self.clone(),
                session,
                name: name.to_string(),
                lm: None,
                checkpoint: Mutex::new(Checkpoint::State(state)),
                restores: Mutex::new(0),
            }),
        };
        program.load_checkpoint().await?;
        Ok(program)
    }

    /// The DSPy version and capabilities of one worker.
    pub async fn info(&self) -> Result<WorkerInfo, DspyError> {
        let value = self
            .inner
            .sessions
            .pool()
            .call_raw(portpool::CallRequest::new("dspy.info", Value::Nil))
            .await
            .map_err(|e| from_session(SessionError::Pool(e)))?;
        decode(value, "WorkerInfo")
    }
}

/// What [`Dspy::info`] reports.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct WorkerInfo {
    /// `dspy.__version__`.
    pub dspy: String,
    /// Module kinds.
    pub modules: Vec<String>,
    /// Metric names.
    pub metrics: Vec<String>,
    /// Field types.
    pub types: Vec<String>,
    /// Whether the worker has a default LM.
    pub configured: bool,
    /// The worker's process id.
    pub pid: u32,
}
