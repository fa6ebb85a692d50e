//! DSPy programs from Rust: define, call, save, restore and optimize
//! [DSPy](https://dspy.ai) programs kept alive in a pool of Python workers.
//!
//! The workers run the ready-made `portpool.dspy` app (`python -m portpool
//! portpool.dspy:app`, from the Python package's `dspy` extra). Each program
//! lives in one session of a [`SessionPool`], so session affinity keeps it
//! on one worker between calls and closing the session frees it.
//!
//! - [`Dspy`]: the handle over the pool; [`Dspy::configure`] sets the LM
//!   ([`Lm`]) sent with every request, so every worker (also a restarted
//!   one) uses it; API keys stay in the workers' environment, named by
//!   [`Lm::api_key_env`].
//! - [`Dspy::program`] with a [`ProgramSpec`] ([`Predict`] or
//!   [`ChainOfThought`] over a [`Signature`]) gives a [`Program`]:
//!   [`Program::call`] with serde structs in and out, [`Program::save`] a
//!   [`ProgramState`] (serde, storable anywhere), [`Dspy::restore`] it into a
//!   fresh program, [`Program::optimize`] it with a few-shot optimizer and a
//!   [`Metric`].
//! - [`Dspy::with_restore`]: opt-in; when the worker holding a program is
//!   lost, the program is re-loaded from its last known state on another
//!   worker and the call is retried once.
//! - [`DspyError`] tells a bad signature, a missing field, an LM failure
//!   (with the provider's message), an unparsable LM reply and the pool's
//!   own errors apart.
//!
//! # Example
//!
//! ```no_run
//! use portpool_dspy::{Dspy, Lm, Predict};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize)]
//! struct Question { question: String }
//! #[derive(Deserialize)]
//! struct Answer { answer: String }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Four workers running `python -m portpool portpool.dspy:app`, started in parallel.
//! let pool = portpool_dspy::pool_builder().workers(4).build().await?;
//! let dspy = Dspy::new(portpool::SessionPool::new(pool, Default::default())?).with_restore(true);
//! dspy.configure(
//!     Lm::openai_compatible("gpt-4o-mini", "https://api.example.invalid/v1")
//!         .api_key_env("OPENAI_API_KEY")
//!         .temperature(0.0),
//! );
//! let qa = dspy.program(Predict::new("question -> answer")).await?;
//! let out: Answer = qa.call(&Question { question: "What is the capital of France?".into() }).await?;
//! println!("{}", out.answer);
//!
//! let state = qa.save().await?; // serde: keep it in a file or a database
//! qa.close().await?;
//! let again = dspy.restore(state).await?;
//! # let _ = again; Ok(()) }
//! ```
//!
//! For tests, [`Lm::dummy`] scripts the LM's answers (DSPy's `DummyLM`); no
//! network is needed.
//!
//! # Start time
//!
//! `import dspy` costs 1-2 s per worker; [`pool_builder`] starts the workers
//! eagerly and in parallel, so a pool is ready after about one import, not
//! one per worker (the crate README has measured figures).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};

use portpool::{
    CallError, PoolBuilder, PoolError, RemoteError, Session, SessionError, SessionPool, Value, WorkerId,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The worker app: `python -m portpool portpool.dspy:app`.
pub const APP: &str = "portpool.dspy:app";

/// Environment variable naming the interpreter of the DSPy environment
/// (`cargo xtask setup` creates `.venv-dspy` and the xtask sets it).
pub const PYTHON_ENV: &str = "PORTPOOL_DSPY_PYTHON";

/// A pool builder for DSPy workers: `python -m portpool portpool.dspy:app`,
/// with the interpreter from `$PORTPOOL_DSPY_PYTHON`, else as
/// [`portpool::python`] finds it, and a 60 s start bound (`import dspy` is
/// slow on a busy machine).
pub fn pool_builder() -> PoolBuilder {
    let command = match std::env::var_os(PYTHON_ENV) {
        Some(python) => portpool::WorkerCommand::python_with(python, APP),
        None => portpool::WorkerCommand::python(APP),
    };
    portpool::Pool::builder(portpool::ProcessLauncher::new(command))
        .init_timeout(std::time::Duration::from_secs(60))
}

// ------------------------------------------------------------------ LM

/// A language model configuration, sent with each request; the worker builds
/// (and caches) a `dspy.LM` from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Lm {
    /// A LiteLLM model, e.g. `openai/gpt-4o-mini` with an `api_base`.
    Model(LmConfig),
    /// DSPy's `DummyLM` with scripted answers: a testing aid, see [`Lm::dummy`].
    Dummy(DummyLm),
}

/// Settings of a real LM (see [`Lm::openai_compatible`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LmConfig {
    /// LiteLLM model name (`provider/model`).
    pub model: String,
    /// Base URL of the provider's API.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub api_base: Option<String>,
    /// Name of the environment variable, in the worker, holding the API key.
    /// The key itself never crosses the wire.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub api_key_env: Option<String>,
    /// Sampling temperature.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub temperature: Option<f64>,
    /// Maximum tokens of a reply.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub max_tokens: Option<u32>,
    /// DSPy's response cache (default on in DSPy).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cache: Option<bool>,
    /// LiteLLM retries on transient errors (DSPy's default: 3).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub num_retries: Option<u32>,
    /// Seconds one LM request may take (LiteLLM's `timeout`). Bound it
    /// below the pool's call time-out: a cancelled call does not stop the
    /// worker's LM request.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub timeout: Option<f64>,
}

/// Scripted answers for DSPy's `DummyLM` (testing aid).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DummyLm {
    /// A list of answers (consumed in order, shared by the worker) or a map
    /// from a text found in the prompt to the answer.
    pub dummy: DummyAnswers,
}

/// See [`DummyLm`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DummyAnswers {
    /// Answers in order: output field name → value.
    InOrder(Vec<BTreeMap<String, serde_json::Value>>),
    /// Prompt text → answer: the first key found in the prompt's last message.
    ByPrompt(BTreeMap<String, BTreeMap<String, serde_json::Value>>),
}

impl Lm {
    /// An OpenAI-compatible chat-completions endpoint: `model` (prefixed
    /// with `openai/` unless it names a LiteLLM provider) at `api_base`.
    pub fn openai_compatible(model: impl Into<String>, api_base: impl Into<String>) -> Self {
        let model = model.into();
        let model = if model.contains('/') {
            model
        } else {
            format!("openai/{model}")
        };
        Lm::Model(LmConfig {
            model,
            api_base: Some(api_base.into()),
            api_key_env: None,
            temperature: None,
            max_tokens: None,
            cache: None,
            num_retries: None,
            timeout: None,
        })
    }

    /// Any LiteLLM model (`provider/model`), with the provider's default endpoint.
    pub fn model(model: impl Into<String>) -> Self {
        Lm::Model(LmConfig {
            model: model.into(),
            api_base: None,
            api_key_env: None,
            temperature: None,
            max_tokens: None,
            cache: None,
            num_retries: None,
            timeout: None,
        })
    }

    /// Testing aid: DSPy's `DummyLM` answering `answers` in order (each an
    /// output field → value map). The list is shared by every program of a
    /// worker; for concurrent sessions use [`Lm::dummy_by_prompt`].
    pub fn dummy<I, A, K, V>(answers: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Lm::Dummy(DummyLm {
            dummy: DummyAnswers::InOrder(answers.into_iter().map(answer_map).collect()),
        })
    }

    /// Testing aid: DSPy's `DummyLM` answering by prompt: the answer of the
    /// first key that occurs in the prompt's last message.
    pub fn dummy_by_prompt<I, P, A, K, V>(answers: I) -> Self
    where
        I: IntoIterator<Item = (P, A)>,
        P: Into<String>,
        A: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Lm::Dummy(DummyLm {
            dummy: DummyAnswers::ByPrompt(
                answers
                    .into_iter()
                    .map(|(p, a)| (p.into(), answer_map(a)))
                    .collect(),
            ),
        })
    }

    fn config(&mut self) -> Option<&mut LmConfig> {
        match self {
            Lm::Model(config) => Some(config),
            Lm::Dummy(_) => None,
        }
    }

    /// The API key is read in the worker from environment variable `name`.
    /// (No effect on a dummy LM, nor do the other setters.)
    pub fn api_key_env(mut self, name: impl Into<String>) -> Self {
        if let Some(c) = self.config() {
            c.api_key_env = Some(name.into());
        }
        self
    }

    /// Sampling temperature.
    pub fn temperature(mut self, temperature: f64) -> Self {
        if let Some(c) = self.config() {
            c.temperature = Some(temperature);
        }
        self
    }

    /// Maximum tokens of a reply.
    pub fn max_tokens(mut self, max_tokens: u32) -> Self {
        if let Some(c) = self.config() {
            c.max_tokens = Some(max_tokens);
        }
        self
    }

    /// DSPy's response cache on or off.
    pub fn cache(mut self, on: bool) -> Self {
        if let Some(c) = self.config() {
            c.cache = Some(on);
        }
        self
    }

    /// Bounds each LM request (see [`LmConfig::timeout`]).
    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        if let Some(c) = self.config() {
            c.timeout = Some(timeout.as_secs_f64());
        }
        self
    }

    /// LiteLLM retries on transient errors.
    pub fn num_retries(mut self, retries: u32) -> Self {
        if let Some(c) = self.config() {
            c.num_retries = Some(retries);
        }
        self
    }
}

fn answer_map<A, K, V>(answer: A) -> BTreeMap<String, serde_json::Value>
where
    A: IntoIterator<Item = (K, V)>,
    K: Into<String>,
    V: Into<String>,
{
    answer
        .into_iter()
        .map(|(k, v)| (k.into(), serde_json::Value::String(v.into())))
        .collect()
}

// ------------------------------------------------------------------ signatures and programs

/// A DSPy signature: a string such as `"question -> answer"` (DSPy's own
/// syntax, types included: `"text -> words: int"`) or fields with
/// descriptions and types.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Signature {
    /// DSPy's string form.
    Text(String),
    /// Named fields.
    Fields(SignatureFields),
}

/// A signature's fields and instructions (see [`Signature::fields`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SignatureFields {
    /// Input fields, in order.
    pub inputs: Vec<Field>,
    /// Output fields, in order.
    pub outputs: Vec<Field>,
    /// The task description given to the LM.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub instructions: Option<String>,
}

/// One field of a [`Signature`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Field {
    /// Name (a Python identifier).
    pub name: String,
    /// Description shown to the LM.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub desc: Option<String>,
    /// Type: `str` (default), `int`, `float`, `bool`, `list[str]`,
    /// `list[int]`, `list[float]`, `dict[str, str]`, `dict[str, Any]`.
    #[serde(rename = "type", default = "default_type")]
    pub ty: String,
}

fn default_type() -> String {
    "str".into()
}

impl Field {
    /// A `str` field.
    pub fn new(name: impl Into<String>) -> Self {
        Field {
            name: name.into(),
            desc: None,
            ty: default_type(),
        }
    }

    /// With a description.
    pub fn desc(mut self, desc: impl Into<String>) -> Self {
        self.desc = Some(desc.into());
        self
    }

    /// With a type (see [`Field::ty`]).
    pub fn ty(mut self, ty: impl Into<String>) -> Self {
        self.ty = ty.into();
        self
    }
}

impl Signature {
    /// An empty field list, to fill with [`Signature::input`] and [`Signature::output`].
    pub fn fields() -> Self {
        Signature::Fields(SignatureFields::default())
    }

    fn as_fields(&mut self) -> &mut SignatureFields {
        if let Signature::Text(_) = self {
            *self = Signature::fields();
        }
        match self {
            Signature::Fields(f) => f,
            Signature::Text(_) => unreachable!("replaced above"),
        }
    }

    /// Adds an input field (turns a text signature into an empty field list first).
    pub fn input(mut self, field: Field) -> Self {
        self.as_fields().inputs.push(field);
        self
    }

    /// Adds an output field (turns a text signature into an empty field list first).
    pub fn output(mut self, field: Field) -> Self {
        self.as_fields().outputs.push(field);
        self
    }

    /// Sets the instructions (turns a text signature into an empty field list first).
    pub fn instructions(mut self, text: impl Into<String>) -> Self {
        self.as_fields().instructions = Some(text.into());
        self
    }
}

impl From<&str> for Signature {
    fn from(s: &str) -> Self {
        Signature::Text(s.to_string())
    }
}

impl From<String> for Signature {
    fn from(s: String) -> Self {
        Signature::Text(s)
    }
}

/// The DSPy module a program is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Module {
    /// `dspy.Predict`.
    Predict,
    /// `dspy.ChainOfThought`: adds a reasoning step ([`Prediction::reasoning`]).
    ChainOfThought,
}

/// What to build: a module over a signature, optionally with its own LM.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgramSpec {
    /// The module kind.
    pub module: Module,
    /// The signature.
    pub signature: Signature,
    /// An LM for this program only (default: the [`Dspy`]'s).
    pub lm: Option<Lm>,
}

impl ProgramSpec {
    /// This program uses `lm` instead of the [`Dspy`]'s LM.
    pub fn lm(mut self, lm: Lm) -> Self {
        self.lm = Some(lm);
        self
    }
}

/// `dspy.Predict` over a signature: `Predict::new("question -> answer")`.
#[derive(Debug)]
pub struct Predict;

impl Predict {
    /// The spec of a `dspy.Predict(signature)`.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(signature: impl Into<Signature>) -> ProgramSpec {
        ProgramSpec {
            module: Module::Predict,
            signature: signature.into(),
            lm: None,
        }
    }
}

/// `dspy.ChainOfThought` over a signature.
#[derive(Debug)]
pub struct ChainOfThought;

impl ChainOfThought {
    /// The spec of a `dspy.ChainOfThought(signature)`.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(signature: impl Into<Signature>) -> ProgramSpec {
        ProgramSpec {
            module: Module::ChainOfThought,
            signature: signature.into(),
            lm: None,
        }
    }
}

/// A program's saved state (`dump_state`, with the module and signature it
/// needs to be rebuilt): serde, storable anywhere, loadable on any worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgramState {
    /// The module kind.
    pub module: Module,
    /// The signature.
    pub signature: Signature,
    /// DSPy's `dump_state()` (demos, instructions, ...), as JSON.
    pub state: serde_json::Value,
}

impl ProgramState {
    /// How many few-shot demos the state carries (over all its predictors).
    pub fn demos(&self) -> usize {
        fn count(v: &serde_json::Value) -> usize {
            match v {
                serde_json::Value::Object(map) => map
                    .iter()
                    .map(|(k, v)| match (k.as_str(), v) {
                        ("demos", serde_json::Value::Array(d)) => d.len(),
                        (_, serde_json::Value::Object(_)) => count(v),
                        _ => 0,
                    })
                    .sum(),
                _ => 0,
            }
        }
        count(&self.state)
    }
}

/// A metric for [`Program::optimize`], chosen by name in the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Metric {
    /// Every label field equals the prediction's (trimmed, spaces
    /// collapsed, case folded).
    #[serde(rename = "exact_match")]
    ExactMatch,
    /// Every label occurs in the prediction's field (same normalization).
    #[serde(rename = "contains")]
    Contains,
}

/// A few-shot optimizer for [`Program::optimize_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Optimizer {
    /// `dspy.BootstrapFewShot`: runs the program on the train set and keeps
    /// the traces the metric accepts as demos.
    BootstrapFewShot {
        /// At most this many bootstrapped demos.
        max_bootstrapped_demos: u32,
        /// At most this many labelled demos besides.
        max_labeled_demos: u32,
        /// Bootstrapping rounds.
        max_rounds: u32,
    },
    /// `dspy.LabeledFewShot`: up to `k` train examples as demos (no LM calls).
    LabeledFewShot {
        /// Number of demos.
        k: u32,
    },
}

impl Default for Optimizer {
    fn default() -> Self {
        Optimizer::BootstrapFewShot {
            max_bootstrapped_demos: 4,
            max_labeled_demos: 16,
            max_rounds: 1,
        }
    }
}

/// A call's outputs with what DSPy reports besides.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction<Out> {
    /// The output fields.
    pub outputs: Out,
    /// [`Module::ChainOfThought`]'s reasoning.
    pub reasoning: Option<String>,
    /// LM usage (token counts by model) when DSPy reports it.
    pub usage: Option<serde_json::Value>,
}

// ------------------------------------------------------------------ errors

/// Everything the crate's calls fail with.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DspyError {
    /// The signature could not be parsed or built.
    #[error("{worker}: bad signature: {message}")]
    BadSignature {
        /// The worker that said so.
        worker: WorkerId,
        /// DSPy's message.
        message: String,
    },
    /// Input fields of the signature are missing from the call (or an
    /// example of the train set).
    #[error("{worker}: missing field(s) {fields:?}: {message}")]
    MissingField {
        /// The worker that said so.
        worker: WorkerId,
        /// The missing fields.
        fields: Vec<String>,
        /// The message.
        message: String,
    },
    /// The inputs hold fields the signature does not have.
    #[error("{worker}: unknown field(s) {fields:?}: {message}")]
    UnknownField {
        /// The worker that said so.
        worker: WorkerId,
        /// The unknown fields.
        fields: Vec<String>,
        /// The message.
        message: String,
    },
    /// The LM call failed (HTTP error, refused connection, ...).
    #[error("{worker}: LM error{}: {message}", .status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
    Lm {
        /// The worker that made the call.
        worker: WorkerId,
        /// The HTTP status, when known.
        status: Option<u16>,
        /// The message, with the provider's.
        message: String,
    },
    /// The LM replied, but its text could not be parsed into the outputs.
    #[error("{worker}: cannot parse the LM's reply: {message}")]
    Parse {
        /// The worker that made the call.
        worker: WorkerId,
        /// DSPy's message.
        message: String,
        /// The LM's raw reply (first 4000 characters).
        lm_response: Option<String>,
    },
    /// No LM is configured ([`Dspy::configure`], or the worker's
    /// `PORTPOOL_DSPY_MODEL`), or its API key variable is not set.
    #[error("{worker}: LM not configured: {message}")]
    NotConfigured {
        /// The worker that said so.
        worker: WorkerId,
        /// The message.
        message: String,
    },
    /// The program is not in its session (dropped, or its worker was lost
    /// and restore is off).
    #[error("{worker}: no program {name:?} in the session")]
    NoProgram {
        /// The worker that said so.
        worker: WorkerId,
        /// The program's name.
        name: String,
    },
    /// Any other error of the worker (`BadRequest`, `BadState`, `DspyError`, ...).
    #[error("{worker}: {kind}: {message}")]
    Remote {
        /// The worker.
        worker: WorkerId,
        /// The remote error type.
        kind: String,
        /// Its message.
        message: String,
    },
    /// The outputs did not fit the Rust type asked for.
    #[error("outputs do not fit {target}: {reason}")]
    Decode {
        /// The Rust type.
        target: &'static str,
        /// Why.
        reason: String,
    },
    /// The inputs could not be encoded.
    #[error("cannot encode the inputs: {reason}")]
    Encode {
        /// Why.
        reason: String,
    },
    /// The session or pool failed (worker lost, time-out, pool closed, ...).
    #[error(transparent)]
    Session(#[from] SessionError),
}

impl DspyError {
    /// Whether the program's worker was lost (its state is gone).
    pub fn is_session_lost(&self) -> bool {
        matches!(
            self,
            DspyError::Session(SessionError::SessionLost { .. })
                | DspyError::Session(SessionError::Pool(PoolError::WorkerGone { .. }))
                | DspyError::Session(SessionError::Pool(PoolError::Call(
                    CallError::WorkerCrashed { .. }
                )))
        )
    }
}

#[derive(Deserialize, Default)]
struct ErrorData {
    #[serde(default)]
    missing: Vec<String>,
    #[serde(default)]
    unknown: Vec<String>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    lm_response: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

fn from_session(error: SessionError) -> DspyError {
    match error {
        SessionError::Pool(PoolError::Call(CallError::Remote { worker, error, .. })) => {
            from_remote(worker, *error)
        }
        other => DspyError::Session(other),
    }
}

fn from_remote(worker: WorkerId, error: RemoteError) -> DspyError {
    let data: ErrorData = error
        .data
        .clone()
        .and_then(|d| decode(d, "error data").ok())
        .unwrap_or_default();
    let message = error.message;
    match error.kind.as_str() {
        "BadSignature" => DspyError::BadSignature { worker, message },
        "MissingField" => DspyError::MissingField {
            worker,
            fields: data.missing,
            message,
        },
        "UnknownField" => DspyError::UnknownField {
            worker,
            fields: data.unknown,
            message,
        },
        "LmError" => DspyError::Lm {
            worker,
            status: data.status,
            message,
        },
        "ParseError" => DspyError::Parse {
            worker,
            message,
            lm_response: data.lm_response,
        },
        "NotConfigured" => DspyError::NotConfigured { worker, message },
        "NoProgram" => DspyError::NoProgram {
            worker,
            name: data.name.unwrap_or_default(),
        },
        _ => DspyError::Remote {
            worker,
            kind: error.kind,
            message,
        },
    }
}

// ------------------------------------------------------------------ Dspy

/// DSPy over a [`SessionPool`] of `portpool.dspy` workers. A cheap clone.
#[derive(Clone)]
pub struct Dspy {
    inner: Arc<DspyInner>,
}

struct DspyInner {
    sessions: SessionPool,
    lm: RwLock<Option<Lm>>,
    restore: bool,
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
    /// DSPy over `sessions`, whose workers run [`APP`] (see [`pool_builder`]).
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

// ------------------------------------------------------------------ Program

enum Checkpoint {
    Spec(ProgramSpec),
    State(ProgramState),
}

/// A DSPy program living in one session (so on one worker). A cheap clone.
#[derive(Clone)]
pub struct Program {
    inner: Arc<ProgramInner>,
}

struct ProgramInner {
    dspy: Dspy,
    session: Session,
    name: String,
    lm: Option<Lm>,
    checkpoint: Mutex<Checkpoint>,
    restores: Mutex<u64>,
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
    async fn load_checkpoint(&self) -> Result<(), DspyError> {
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

/// Params as MessagePack maps: through JSON values, since
/// `portpool::to_value` writes structs as arrays.
fn encode<P: Serialize + ?Sized>(params: &P) -> Result<Value, DspyError> {
    let json = serde_json::to_value(params).map_err(|e| DspyError::Encode {
        reason: e.to_string(),
    })?;
    portpool::to_value(&json).map_err(|e| DspyError::Encode {
        reason: e.to_string(),
    })
}

fn decode<T: DeserializeOwned>(value: Value, target: &'static str) -> Result<T, DspyError> {
    // Through JSON values too, so enums and maps read as their serde JSON
    // form (what the worker sends).
    let decode_error = |reason: String| DspyError::Decode { target, reason };
    let json = serde_json::to_value(&value).map_err(|e| decode_error(e.to_string()))?;
    serde_json::from_value(json).map_err(|e| decode_error(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lm_serializes_without_unset_settings() {
        let lm = Lm::openai_compatible("m", "http://127.0.0.1:1/v1")
            .api_key_env("K")
            .temperature(0.5)
            .timeout(std::time::Duration::from_millis(1500));
        let json = serde_json::to_value(&lm).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"model": "openai/m", "api_base": "http://127.0.0.1:1/v1", "api_key_env": "K", "temperature": 0.5, "timeout": 1.5})
        );
        let dummy = serde_json::to_value(Lm::dummy([[("answer", "x")]])).unwrap();
        assert_eq!(dummy, serde_json::json!({"dummy": [{"answer": "x"}]}));
    }

    #[test]
    fn signature_builder_and_state_demo_count() {
        let sig = Signature::from("ignored")
            .input(Field::new("q").desc("the question"))
            .output(Field::new("n").ty("int"))
            .instructions("Count.");
        assert_eq!(
            serde_json::to_value(&sig).unwrap(),
            serde_json::json!({"inputs": [{"name": "q", "desc": "the question", "type": "str"}], "outputs": [{"name": "n", "type": "int"}], "instructions": "Count."})
        );
        let state = ProgramState {
            module: Module::ChainOfThought,
            signature: "a -> b".into(),
            state: serde_json::json!({"predict": {"demos": [{}, {}], "signature": {}}}),
        };
        assert_eq!(state.demos(), 2);
        let back: ProgramState = serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        assert_eq!(back, state);
    }

    #[test]
    fn remote_errors_map_to_typed_variants() {
        let worker = WorkerId(3);
        let e = from_remote(
            worker,
            RemoteError {
                kind: "MissingField".into(),
                message: "m".into(),
                traceback: None,
                data: Some(portpool::to_value(&serde_json::json!({"missing": ["context"]})).unwrap()),
            },
        );
        assert!(
            matches!(e, DspyError::MissingField { ref fields, .. } if fields == &["context".to_string()]),
            "{e:?}"
        );
        let e = from_remote(
            worker,
            RemoteError {
                kind: "LmError".into(),
                message: "down".into(),
                traceback: None,
                data: Some(portpool::to_value(&serde_json::json!({"status": 500})).unwrap()),
            },
        );
        assert!(
            matches!(
                e,
                DspyError::Lm {
                    status: Some(500),
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("HTTP 500"));
    }
}
