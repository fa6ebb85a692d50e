//! Serving a DSPy program from Rust: `cargo run -p portpool-dspy --example dspy_qa`.
//!
//! Runs against DSPy's `DummyLM` (scripted answers, no network) by default,
//! and against a real OpenAI-compatible endpoint when `OPENAI_API_BASE` and
//! `OPENAI_API_KEY` are set (model: `$OPENAI_MODEL`, default `gpt-4o-mini`).
//! The workers' interpreter is `$PORTPOOL_DSPY_PYTHON`, else `.venv-dspy`
//! (made by `cargo xtask setup`), else as `portpool::python` finds one.

use std::time::{Duration, Instant};

use portpool_dspy::{ChainOfThought, Dspy, Lm, Metric, Predict};
use serde::{Deserialize, Serialize};

#[derive(Serialize)]
struct Question {
    question: String,
}

#[derive(Debug, Deserialize)]
struct Answer {
    answer: String,
}

#[derive(Serialize)]
struct Example {
    question: &'static str,
    answer: &'static str,
}

const QUESTIONS: [(&str, &str); 3] = [
    ("What is the capital of France?", "Paris"),
    ("What colour is a clear sky?", "blue"),
    ("How many legs does a spider have?", "8"),
];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os(portpool_dspy::PYTHON_ENV).is_none() {
        let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-dspy/bin/python");
        if venv.exists() {
            std::env::set_var(portpool_dspy::PYTHON_ENV, venv);
        }
    }
    let started = Instant::now();
    let pool = portpool_dspy::pool_builder().workers(4).build().await?;
    println!("4 DSPy workers ready in {:.2?}", started.elapsed());
    let dspy = Dspy::new(portpool::SessionPool::new(pool.clone(), Default::default())?).with_restore(true);

    let real = std::env::var("OPENAI_API_BASE")
        .ok()
        .filter(|_| std::env::var_os("OPENAI_API_KEY").is_some());
    match &real {
        Some(base) => {
            let model = std::env::var("OPENAI_MODEL").unwrap_or_else(|_| "gpt-4o-mini".into());
            println!("LM: {model} at {base} (key from OPENAI_API_KEY, read by the workers)");
            dspy.configure(
                Lm::openai_compatible(model, base)
                    .api_key_env("OPENAI_API_KEY")
                    .temperature(0.0),
            );
        }
        None => {
            println!("LM: DSPy's DummyLM (set OPENAI_API_BASE and OPENAI_API_KEY for a real one)");
            dspy.configure(Lm::dummy_by_prompt(
                QUESTIONS
                    .iter()
                    .map(|(q, a)| (*q, [("reasoning", "I know this."), ("answer", *a)])),
            ));
        }
    }

    let qa = dspy.program(Predict::new("question -> answer")).await?;
    for (q, _) in QUESTIONS {
        let out: Answer = qa.call(&Question { question: q.into() }).await?;
        println!("Predict         {q:<36} -> {}", out.answer);
    }

    let cot = dspy.program(ChainOfThought::new("question -> answer")).await?;
    let p = cot
        .predict::<_, Answer>(&Question {
            question: QUESTIONS[0].0.into(),
        })
        .await?;
    println!(
        "ChainOfThought  reasoning: {:?} answer: {}",
        p.reasoning.unwrap_or_default(),
        p.outputs.answer
    );

    let trainset: Vec<Example> = QUESTIONS[..2]
        .iter()
        .map(|(question, answer)| Example { question, answer })
        .collect();
    let state = qa.optimize(&trainset, Metric::ExactMatch).await?;
    println!(
        "optimized: {} demos; the state is {} bytes of JSON",
        state.demos(),
        serde_json::to_string(&state)?.len()
    );
    qa.close().await?;
    let restored = dspy.restore(state).await?;
    let out: Answer = restored
        .call(&Question {
            question: QUESTIONS[2].0.into(),
        })
        .await?;
    println!("restored        {:<36} -> {}", QUESTIONS[2].0, out.answer);
    restored.close().await?;
    cot.close().await?;
    pool.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
