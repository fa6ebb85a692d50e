//! [`Program`], a DSPy program living in one session.

use std::fmt;
use std::sync::{Arc, Mutex};

use portpool::{Session, Value};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::error::from_session;
use crate::{
    Dspy, DspyError, Lm, Metric, Module, Optimizer, Prediction, ProgramSpec, ProgramState, Signature,
};

pub(crate) enum Checkpoint {
    Spec(ProgramSpec),
    State(ProgramState),
}

/// A DSPy program living in one session (so on one worker). A cheap clone.
#[derive(Clone)]
pub struct Program {
    pub(crate) inner: Arc<ProgramInner>,
}

pub(crate) struct ProgramInner {
    pub(crate) dspy: Dspy,
    pub(crate) session: Session,
    pub(crate) name: String,
    pub(crate) lm: Option<Lm>,
    pub(crate) checkpoint: Mutex<Checkpoint>,
    pub(crate) restores: Mutex<u64>,
}

impl fmt::Debug for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Program")
            .field("session", self.inner.session.id())
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct CreateParams<'a> {
    name: &'a str,
    module: Module,
    signature: &'a Signature,
}

#[derive(Serialize)]
struct LoadParams<'a> {
    name: &'a str,
    state: &'a ProgramState,
}

#[derive(Serialize)]
struct CallParams<'a, In: ?Sized> {
    name: &'a str,
    inputs: &'a In,
    #[serde(skip_serializing_if = "Option::is_none")]
    lm: Option<&'a Lm>,
    usage: bool,
}

#[derive(Deserialize)]
struct CallReply {
    outputs: Value,
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    usage: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct NameParams<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct OptimizeParams<'a, T> {
    name: &'a str,
    trainset: &'a [T],
    metric: Metric,
    optimizer: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    lm: Option<&'a Lm>,
    max_bootstrapped_demos: u32,
    max_labeled_demos: u32,
    max_rounds: u32,
}

impl Program {
    /// The session the program lives in.
    pub fn session(&self) -> &Session {
        &self.inner.session
    }

    /// The program's name in its session.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// How many times the program was re-loaded after a lost worker.
    pub fn restores(&self) -> u64 {
        *self.inner.restores.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lm(&self) -> Option<Lm> {
        self.inner.lm.clone().or_else(|| self.inner.dspy.lm())
    }

    async fn raw<P: Serialize + ?Sized>(&self, method: &str, params: &P) -> Result<Value, DspyError> {
        let params = encode(params)?;
        self.inner
            .session
            .call_raw(portpool::CallRequest::new(method, params))
            .await
            .map_err(from_session)
    }

    /// (Re)creates the program in its session from its checkpoint.
    pub(crate) async fn load_checkpoint(&self) -> Result<(), DspyError> {
        let request = {
            let checkpoint = self.inner.checkpoint.lock().unwrap_or_else(|e| e.into_inner());
            match &*checkpoint {
                Checkpoint::Spec(spec) => (
                    "dspy.create",
                    serde_json::to_value(CreateParams {
                        name: &self.inner.name,
                        module: spec.module,
                        signature: &spec.signature,
                    }),
                ),
                Checkpoint::State(state) => (
                    "dspy.load",
                    serde_json::to_value(LoadParams {
                        name: &self.inner.name,
                        state,
                    }),
                ),
            }
        };
        let (method, params) = request;
        let params = params.map_err(|e| DspyError::Encode {
            reason: e.to_string(),
        })?;
        self.raw(method, &params).await.map(drop)
    }

    /// Runs `method`; with restore on, re-loads the program and retries
    /// once when its worker was lost or the program is missing.
    async fn request<P: Serialize + ?Sized>(&self, method: &str, params: &P) -> Result<Value, DspyError> {
        match self.raw(method, params).await {
            Err(e)
                if self.inner.dspy.inner.restore
                    && (e.is_session_lost() || matches!(e, DspyError::NoProgram { .. })) =>
            {
                tracing::info!(session = %self.inner.session.id(), program = %self.inner.name, error = %e, "restoring the DSPy program");
                let mut reloaded = self.load_checkpoint().await;
                if matches!(&reloaded, Err(e) if e.is_session_lost()) {
                    reloaded = self.load_checkpoint().await; // the loss is reported once
                }
                reloaded?;
                *self.inner.restores.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                self.raw(method, params).await
            }
            other => other,
        }
    }

    /// Calls the program: `inputs` (a serde struct or map of the input
    /// fields) in, the output fields as `Out`.
    pub async fn call<In, Out>(&self, inputs: &In) -> Result<Out, DspyError>
    where
        In: Serialize + ?Sized,
        Out: DeserializeOwned,
    {
        Ok(self.run(inputs, false).await?.outputs)
    }

    /// Calls the program and also returns the reasoning and the LM usage.
    pub async fn predict<In, Out>(&self, inputs: &In) -> Result<Prediction<Out>, DspyError>
    where
        In: Serialize + ?Sized,
        Out: DeserializeOwned,
    {
        self.run(inputs, true).await
    }

    async fn run<In, Out>(&self, inputs: &In, usage: bool) -> Result<Prediction<Out>, DspyError>
    where
        In: Serialize + ?Sized,
        Out: DeserializeOwned,
    {
        let lm = self.lm();
        let params = CallParams {
            name: &self.inner.name,
            inputs,
            lm: lm.as_ref(),
            usage,
        };
        let value = self.request("dspy.call", &params).await?;
        let reply: CallReply = decode(value, "dspy.call reply")?;
        Ok(Prediction {
            outputs: decode(reply.outputs, std::any::type_name::<Out>())?,
            reasoning: reply.reasoning,
            usage: reply.usage,
        })
    }

    /// Saves the program's state; it also becomes the state a restore
    /// re-loads.
    pub async fn save(&self) -> Result<ProgramState, DspyError> {
        let value = self
            .request(
                "dspy.save",
                &NameParams {
                    name: &self.inner.name,
                },
            )
            .await?;
        let state: ProgramState = decode(value, "ProgramState")?;
        *self.inner.checkpoint.lock().unwrap_or_else(|e| e.into_inner()) = Checkpoint::State(state.clone());
        Ok(state)
    }

    /// Optimizes the program with `BootstrapFewShot` (defaults) on
    /// `trainset` (structs or maps with the input and output fields),
    /// scored by `metric`. The program is replaced by the optimized one;
    /// its state is returned (and becomes the state a restore re-loads).
    pub async fn optimize<T: Serialize>(
        &self,
        trainset: &[T],
        metric: Metric,
    ) -> Result<ProgramState, DspyError> {
        self.optimize_with(Optimizer::default(), trainset, metric).await
    }

    /// [`Program::optimize`] with a chosen optimizer.
    pub async fn optimize_with<T: Serialize>(
        &self,
        optimizer: Optimizer,
        trainset: &[T],
        metric: Metric,
    ) -> Result<ProgramState, DspyError> {
        let lm = self.lm();
        let (kind, max_bootstrapped_demos, max_labeled_demos, max_rounds) = match optimizer {
            Optimizer::BootstrapFewShot {
                max_bootstrapped_demos,
                max_labeled_demos,
                max_rounds,
            } => (
                "BootstrapFewShot",
                max_bootstrapped_demos,
                max_labeled_demos,
                max_rounds,
            ),
            Optimizer::LabeledFewShot { k } => ("LabeledFewShot", 0, k, 1),
        };
        let params = OptimizeParams {
            name: &self.inner.name,
            trainset,
            metric,
            optimizer: kind,
            lm: lm.as_ref(),
            max_bootstrapped_demos,
            max_labeled_demos,
            max_rounds,
        };
        let value = self.request("dspy.optimize", &params).await?;
        let state: ProgramState = decode(value, "ProgramState")?;
        *self.inner.checkpoint.lock().unwrap_or_else(|e| e.into_inner()) = Checkpoint::State(state.clone());
        Ok(state)
    }

    /// Names of the programs in this program's session.
    pub async fn list(&self) -> Result<Vec<String>, DspyError> {
        decode(self.raw("dspy.list", &()).await?, "Vec<String>")
    }

    /// Drops the program from its session (the session stays open);
    /// whether it was there.
    pub async fn drop_program(self) -> Result<bool, DspyError> {
        decode(
            self.raw(
                "dspy.drop",
                &NameParams {
                    name: &self.inner.name,
                },
            )
            .await?,
            "bool",
        )
    }

    /// Closes the program's session: the worker frees every program in it.
    pub async fn close(self) -> Result<(), DspyError> {
        self.inner
            .session
            .clone()
            .close()
            .await
            .map_err(DspyError::Session)
    }
}
