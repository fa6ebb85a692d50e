//! Signatures, program specs, saved states, metrics and optimizers.

use serde::{Deserialize, Serialize};

use crate::Lm;

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
    /// An LM for this program only (default: the [`Dspy`](crate::Dspy)'s).
    pub lm: Option<Lm>,
}

impl ProgramSpec {
    /// This program uses `lm` instead of the [`Dspy`](crate::Dspy)'s LM.
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

/// A metric for [`Program::optimize`](crate::Program::optimize), chosen by name in the worker.
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

/// A few-shot optimizer for [`Program::optimize_with`](crate::Program::optimize_with).
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

#[cfg(test)]
mod tests {
    use crate::{Field, Module, ProgramState, Signature};

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
}
