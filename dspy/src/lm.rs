//! The language model configuration sent with each request.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
}
