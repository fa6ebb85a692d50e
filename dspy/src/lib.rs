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
//!
//! [`SessionPool`]: portpool::SessionPool
#![forbid(unsafe_code)]

mod codec;
mod error;
mod handle;
mod lm;
mod program;
mod spec;

pub use error::DspyError;
pub use handle::{Dspy, WorkerInfo};
pub use lm::{DummyAnswers, DummyLm, Lm, LmConfig};
pub use program::Program;
pub use spec::{
    ChainOfThought, Field, Metric, Module, Optimizer, Predict, Prediction, ProgramSpec, ProgramState,
    Signature, SignatureFields,
};

use portpool::PoolBuilder;

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
