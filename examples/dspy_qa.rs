//! Serving a DSPy program from Rust: `cargo run -p portpool-dspy --example dspy_qa`.
//!
//! Runs against DSPy's `DummyLM` (scripted answers, no network) by default,
//! and against a real OpenAI-compatible endpoint when `OPENAI_API_BASE` and
//! `OPENAI_API_KEY` are set (model: `$OPENAI_MODEL`, default `gpt-4o-mini`).
//! The workers' interpreter is `$PORTPOOL_DSPY_PYTHON`, else `.venv-dspy`
//! (made by `cargo xtask setup`), else as `portpool::python` finds one.
//!
//! `-- --bench [CALLS]` then measures calls/s through the bridge (DummyLM,
//! 32 sessions over the 4 workers) beside DSPy called in-process in one
//! Python (default 2000 calls each).

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

    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--bench") {
        let calls = args.get(i + 1).and_then(|n| n.parse().ok()).unwrap_or(2000);
        bench(&dspy, calls).await?;
    }
    pool.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

async fn bench(dspy: &Dspy, calls: usize) -> Result<(), Box<dyn std::error::Error>> {
    const SESSIONS: usize = 32;
    dspy.configure(Lm::dummy_by_prompt([("bench", [("answer", "ok")])]));
    let mut programs = Vec::new();
    for _ in 0..SESSIONS {
        programs.push(dspy.program(Predict::new("question -> answer")).await?);
    }
    let run = |per_session: usize| {
        futures::future::try_join_all(programs.iter().map(|p| async move {
            for i in 0..per_session {
                let _: Answer = p
                    .call(&Question {
                        question: format!("bench {i}"),
                    })
                    .await?;
            }
            Ok::<_, portpool_dspy::DspyError>(())
        }))
    };
    run(2).await?; // warm-up
    let per_session = calls.div_ceil(SESSIONS);
    let started = Instant::now();
    run(per_session).await?;
    let secs = started.elapsed().as_secs_f64();
    let total = per_session * SESSIONS;
    println!(
        "bridge:     {total} calls, {SESSIONS} sessions, 4 workers: {secs:.2} s, {:.0} calls/s",
        total as f64 / secs
    );
    for p in programs {
        p.close().await?;
    }

    let python = std::env::var_os(portpool_dspy::PYTHON_ENV).unwrap_or_else(|| "python3".into());
    let script = format!(
        r#"
import os, time
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
import dspy
lm = dspy.utils.DummyLM({{"bench": {{"answer": "ok"}}}})
p = dspy.Predict("question -> answer")
with dspy.context(lm=lm):
    for i in range(64):
        p(question=f"bench {{i}}")
    t = time.perf_counter()
    for i in range({total}):
        p(question=f"bench {{i}}")
    secs = time.perf_counter() - t
print(f"in-process: {total} calls, one Python, one thread: {{secs:.2f}} s, {{{total} / secs:.0f}} calls/s")
"#
    );
    let out = std::process::Command::new(python)
        .args(["-c", &script])
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
