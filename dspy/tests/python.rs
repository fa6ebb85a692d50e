//! `portpool-dspy` against real Python workers running the real `dspy`
//! package, offline: LM answers come from DSPy's `DummyLM` ([`Lm::dummy`])
//! or from a fake OpenAI-compatible server on loopback.
//!
//! The interpreter is `$PORTPOOL_DSPY_PYTHON` (set by `cargo xtask ci`),
//! else `.venv-dspy/bin/python` (made by `cargo xtask setup`); with neither,
//! the tests print why and pass without running.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portpool::{Pool, ProcessLauncher, SessionConfig, SessionPool, WorkerCommand};
use portpool_dspy::{
    ChainOfThought, DspyError, Field, Lm, Metric, Optimizer, Predict, Signature, APP, PYTHON_ENV,
};
use portpool_dspy::{Dspy, ProgramState};
use serde::{Deserialize, Serialize};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The DSPy environment's interpreter, or `None` (and a printed reason).
fn dspy_python() -> Option<PathBuf> {
    if let Some(python) = std::env::var_os(PYTHON_ENV) {
        let python = PathBuf::from(python);
        assert!(
            python.exists(),
            "{PYTHON_ENV}={} does not exist",
            python.display()
        );
        return Some(python);
    }
    let venv = root().join(".venv-dspy/bin/python");
    if venv.exists() {
        return Some(venv);
    }
    eprintln!(
        "SKIPPED: no DSPy environment ({PYTHON_ENV} unset and {} missing); run `cargo xtask setup`",
        venv.display()
    );
    None
}

const KEY_VAR: &str = "PORTPOOL_TEST_DSPY_KEY";
const KEY: &str = "sk-rust-test-secret";

async fn dspy_pool(python: &PathBuf, workers: usize) -> Dspy {
    let command = WorkerCommand::python_with(python, APP)
        .env(KEY_VAR, KEY)
        .init_timeout(Duration::from_secs(60));
    let started = Instant::now();
    let pool = Pool::builder(ProcessLauncher::new(command))
        .name("dspy-test")
        .workers(workers)
        .call_timeout(Duration::from_secs(30))
        .build()
        .await
        .expect("DSPy workers start");
    eprintln!("{workers} DSPy workers ready in {:.2?}", started.elapsed());
    Dspy::new(SessionPool::new(pool, SessionConfig::default()).unwrap())
}

#[derive(Serialize)]
struct Question {
    question: String,
}

impl Question {
    fn new(q: &str) -> Self {
        Question { question: q.into() }
    }
}

#[derive(Debug, Deserialize, PartialEq)]
struct Answer {
    answer: String,
}

/// One pool for every single-session scenario (workers import DSPy once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dspy_bridge_scenarios() {
    let Some(python) = dspy_python() else { return };
    let started = Instant::now();
    let dspy = dspy_pool(&python, 2).await;
    create_call_and_typed_output(&dspy).await;
    chain_of_thought_reasoning_and_usage(&dspy).await;
    save_drop_restore_gives_same_answers(&dspy).await;
    optimize_carries_demos(&dspy).await;
    session_close_frees_programs(&dspy).await;
    typed_errors_and_the_worker_lives(&dspy).await;
    openai_compatible_server_over_http(&dspy, &python).await;
    http_500_and_unparsable_replies_are_typed(&dspy, &python).await;
    restore_reloads_a_dropped_program_when_opted_in(&dspy).await;
    // Last: it kills a worker.
    restore_after_a_crash_during_the_call(&dspy, &python).await;
    dspy.sessions().pool().shutdown(Duration::from_secs(5)).await;
    eprintln!("dspy_bridge_scenarios took {:.2?}", started.elapsed());
}

async fn create_call_and_typed_output(dspy: &Dspy) {
    dspy.configure(Lm::dummy_by_prompt([
        ("sky", [("answer", "blue")]),
        ("grass", [("answer", "green")]),
    ]));
    let qa = dspy.program(Predict::new("question -> answer")).await.unwrap();
    let out: Answer = qa.call(&Question::new("What colour is the sky?")).await.unwrap();
    assert_eq!(out.answer, "blue");
    let out: Answer = qa.call(&Question::new("and grass?")).await.unwrap();
    assert_eq!(out.answer, "green");

    // Typed fields from a spec: an int comes back as an int.
    #[derive(Serialize)]
    struct Text<'a> {
        text: &'a str,
    }
    #[derive(Deserialize)]
    struct Count {
        words: u32,
        language: String,
    }
    let sig = Signature::fields()
        .input(Field::new("text").desc("a sentence"))
        .output(Field::new("words").ty("int").desc("how many words"))
        .output(Field::new("language"))
        .instructions("Count the words.");
    let counter = dspy
        .program(Predict::new(sig).lm(Lm::dummy([[("words", "3"), ("language", "en")]])))
        .await
        .unwrap();
    let count: Count = counter
        .call(&Text {
            text: "one two three",
        })
        .await
        .unwrap();
    assert_eq!((count.words, count.language.as_str()), (3, "en"));

    // Outputs that do not fit the Rust type: a typed decode error.
    #[derive(Debug, Deserialize)]
    struct Wrong {
        #[allow(dead_code)]
        nope: u8,
    }
    let err = qa.call::<_, Wrong>(&Question::new("sky")).await.unwrap_err();
    assert!(matches!(err, DspyError::Decode { .. }), "{err:?}");
    qa.close().await.unwrap();
    counter.close().await.unwrap();
}

async fn chain_of_thought_reasoning_and_usage(dspy: &Dspy) {
    let cot = dspy
        .program(
            ChainOfThought::new("question -> answer")
                .lm(Lm::dummy([[("reasoning", "six times seven"), ("answer", "42")]])),
        )
        .await
        .unwrap();
    let p = cot.predict::<_, Answer>(&Question::new("6*7?")).await.unwrap();
    assert_eq!(p.outputs.answer, "42");
    assert_eq!(p.reasoning.as_deref(), Some("six times seven"));
    assert!(p.usage.is_some(), "usage asked for and reported: {p:?}");
    cot.close().await.unwrap();
}

fn qa_dummy() -> Lm {
    Lm::dummy_by_prompt([
        ("sky", [("answer", "blue")]),
        ("grass", [("answer", "green")]),
        ("snow", [("answer", "white")]),
    ])
}

#[derive(Serialize, Clone)]
struct Example {
    question: &'static str,
    answer: &'static str,
}

fn trainset() -> Vec<Example> {
    vec![
        Example {
            question: "sky",
            answer: "blue",
        },
        Example {
            question: "grass",
            answer: "green",
        },
    ]
}

async fn save_drop_restore_gives_same_answers(dspy: &Dspy) {
    dspy.configure(qa_dummy());
    let qa = dspy.program(Predict::new("question -> answer")).await.unwrap();
    qa.optimize_with(
        Optimizer::LabeledFewShot { k: 2 },
        &trainset(),
        Metric::ExactMatch,
    )
    .await
    .unwrap();
    let state = qa.save().await.unwrap();
    assert_eq!(state.demos(), 2);
    let before: Answer = qa.call(&Question::new("snow")).await.unwrap();

    // The state is plain serde: through JSON and back, as a store would.
    let stored = serde_json::to_string(&state).unwrap();
    assert!(qa.clone().drop_program().await.unwrap());
    assert!(qa.list().await.unwrap().is_empty());
    qa.close().await.unwrap();

    let state: ProgramState = serde_json::from_str(&stored).unwrap();
    let again = dspy.restore(state.clone()).await.unwrap();
    let after: Answer = again.call(&Question::new("snow")).await.unwrap();
    assert_eq!(after, before);
    assert_eq!(
        again.save().await.unwrap(),
        state,
        "the same state after a round trip"
    );
    again.close().await.unwrap();
}

async fn optimize_carries_demos(dspy: &Dspy) {
    dspy.configure(qa_dummy());
    let qa = dspy.program(Predict::new("question -> answer")).await.unwrap();
    let state = qa.optimize(&trainset(), Metric::ExactMatch).await.unwrap();
    assert_eq!(state.demos(), 2, "{state:?}");
    let demos = state.state["demos"].as_array().unwrap();
    assert!(
        demos
            .iter()
            .any(|d| d["question"] == "sky" && d["answer"] == "blue"),
        "{demos:?}"
    );
    // The program in the worker is the optimized one.
    assert_eq!(qa.save().await.unwrap().demos(), 2);
    qa.close().await.unwrap();
}

async fn session_close_frees_programs(dspy: &Dspy) {
    dspy.configure(qa_dummy());
    let session = dspy.sessions().open();
    let a = dspy
        .program_in(session.clone(), "a", Predict::new("question -> answer"))
        .await
        .unwrap();
    let _b = dspy
        .program_in(session.clone(), "b", ChainOfThought::new("question -> answer"))
        .await
        .unwrap();
    assert_eq!(a.list().await.unwrap(), ["a", "b"]);
    a.clone().close().await.unwrap();
    // The same session id, used again, binds afresh: its programs are gone.
    assert!(a.list().await.unwrap().is_empty());
    let err = a.call::<_, Answer>(&Question::new("sky")).await.unwrap_err();
    assert!(
        matches!(err, DspyError::NoProgram { ref name, .. } if name == "a"),
        "{err:?}"
    );
    session.close().await.unwrap();
}

async fn typed_errors_and_the_worker_lives(dspy: &Dspy) {
    dspy.configure(qa_dummy());
    for bad in ["question ->", "a b c", "question -> answer: NoSuchType"] {
        let err = dspy.program(Predict::new(bad)).await.unwrap_err();
        assert!(matches!(err, DspyError::BadSignature { .. }), "{bad}: {err:?}");
    }
    let qa = dspy
        .program(Predict::new("question, context -> answer"))
        .await
        .unwrap();
    let err = qa.call::<_, Answer>(&Question::new("sky")).await.unwrap_err();
    assert!(
        matches!(err, DspyError::MissingField { ref fields, .. } if fields == &["context".to_string()]),
        "{err:?}"
    );
    #[derive(Serialize)]
    struct Extra {
        question: &'static str,
        context: &'static str,
        colour: &'static str,
    }
    let err = qa
        .call::<_, Answer>(&Extra {
            question: "sky",
            context: "",
            colour: "x",
        })
        .await
        .unwrap_err();
    assert!(matches!(err, DspyError::UnknownField { .. }), "{err:?}");
    let typed = dspy
        .program(Predict::new("question -> answer: int").lm(Lm::dummy([[("answer", "many")]; 4])))
        .await
        .unwrap();
    let err = typed
        .call::<_, serde_json::Value>(&Question::new("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DspyError::Parse { lm_response: Some(ref r), .. } if r.contains("many")),
        "{err:?}"
    );
    // The workers are all still there, and the program still answers.
    let ok: Answer = qa
        .call(&serde_json::json!({"question": "sky", "context": ""}))
        .await
        .unwrap();
    assert_eq!(ok.answer, "blue");
    let status = dspy.sessions().pool().status();
    assert_eq!(status.ready, 2, "{status:?}");
    qa.close().await.unwrap();
    typed.close().await.unwrap();
}

/// The fake OpenAI-compatible server (python/tests/dspy_openai_server.py).
struct FakeServer {
    child: Child,
    port: u16,
    lines: std::sync::mpsc::Receiver<String>,
}

impl FakeServer {
    fn start(python: &PathBuf, mode: &str) -> FakeServer {
        let mut child = Command::new(python)
            .arg(root().join("python/tests/dspy_openai_server.py"))
            .args([mode, "120"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("fake server prints its port");
        let port = first.strip_prefix("PORT ").unwrap().parse().unwrap();
        FakeServer { child, port, lines }
    }

    fn lm(&self) -> Lm {
        Lm::openai_compatible("fake-model", format!("http://127.0.0.1:{}/v1", self.port))
            .api_key_env(KEY_VAR)
            .cache(false)
            .num_retries(0)
            .temperature(0.0)
            .max_tokens(64)
            .timeout(Duration::from_secs(20))
    }

    fn requests(&self) -> Vec<serde_json::Value> {
        self.lines
            .try_iter()
            .filter_map(|l| {
                l.strip_prefix("REQUEST ")
                    .map(|j| serde_json::from_str(j).unwrap())
            })
            .collect()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn openai_compatible_server_over_http(dspy: &Dspy, python: &PathBuf) {
    let server = FakeServer::start(python, "ok");
    dspy.configure(server.lm());
    let qa = dspy.program(Predict::new("question -> answer")).await.unwrap();
    let p = qa
        .predict::<_, Answer>(&Question::new("capital of France?"))
        .await
        .unwrap();
    assert_eq!(p.outputs.answer, "Paris");
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let body = &requests[0]["body"];
    assert_eq!(body["model"], "fake-model");
    let prompt: String = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap_or_default().to_string())
        .collect();
    for seen in ["`question`", "`answer`", "capital of France?"] {
        assert!(prompt.contains(seen), "the server saw {seen:?}: {prompt}");
    }
    assert_eq!(requests[0]["authorization"], format!("Bearer {KEY}"));
    let usage = p.usage.expect("usage reported");
    assert_eq!(usage["openai/fake-model"]["total_tokens"], 18, "{usage}");
    qa.close().await.unwrap();
}

async fn http_500_and_unparsable_replies_are_typed(dspy: &Dspy, python: &PathBuf) {
    let down = FakeServer::start(python, "500");
    dspy.configure(down.lm());
    let qa = dspy.program(Predict::new("question -> answer")).await.unwrap();
    let err = qa.call::<_, Answer>(&Question::new("x")).await.unwrap_err();
    match &err {
        DspyError::Lm { status, message, .. } => {
            assert_eq!(*status, Some(500), "{err}");
            assert!(message.contains("the fake provider is down"), "{message}");
        }
        other => panic!("expected an LM error, got {other:?}"),
    }
    assert!(!err.to_string().contains(KEY), "the key never shows: {err}");

    let garbage = FakeServer::start(python, "garbage");
    dspy.configure(garbage.lm());
    let err = qa.call::<_, Answer>(&Question::new("x")).await.unwrap_err();
    assert!(
        matches!(err, DspyError::Parse { lm_response: Some(ref r), .. } if r.contains("I cannot help")),
        "{err:?}"
    );
    assert_eq!(dspy.sessions().pool().status().ready, 2, "no worker died");
    qa.close().await.unwrap();
}

async fn restore_reloads_a_dropped_program_when_opted_in(dspy: &Dspy) {
    dspy.configure(qa_dummy());
    let restoring = dspy.clone().with_restore(true);
    let qa = restoring
        .program(Predict::new("question -> answer"))
        .await
        .unwrap();
    qa.optimize_with(
        Optimizer::LabeledFewShot { k: 2 },
        &trainset(),
        Metric::ExactMatch,
    )
    .await
    .unwrap();
    // Gone from the worker (as after a recycle): re-loaded from the last state.
    assert!(qa.clone().drop_program().await.unwrap());
    let out: Answer = qa.call(&Question::new("snow")).await.unwrap();
    assert_eq!(out.answer, "white");
    assert_eq!(qa.restores(), 1);
    assert_eq!(
        qa.save().await.unwrap().demos(),
        2,
        "the optimized state came back"
    );
    qa.close().await.unwrap();
}

#[derive(Deserialize)]
struct Info {
    pid: u32,
}

async fn restore_after_a_crash_during_the_call(dspy: &Dspy, python: &PathBuf) {
    let slow = FakeServer::start(python, "slow");
    let restoring = dspy.clone().with_restore(true);
    restoring.configure(slow.lm());
    let qa = restoring
        .program(Predict::new("question -> answer"))
        .await
        .unwrap();
    let before: Info = qa.session().call("dspy.info", &()).await.unwrap();
    let call = tokio::spawn({
        let qa = qa.clone();
        async move { qa.call::<_, Answer>(&Question::new("capital of France?")).await }
    });
    // The request reached the LM server: the call is in flight in the worker.
    let deadline = Instant::now() + Duration::from_secs(20);
    while slow.requests().is_empty() {
        assert!(Instant::now() < deadline, "the call never reached the LM server");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed = Command::new("kill")
        .args(["-9", &before.pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = call
        .await
        .unwrap()
        .expect("restored on another worker and retried");
    assert_eq!(out.answer, "Paris");
    assert_eq!(qa.restores(), 1);
    let after: Info = qa.session().call("dspy.info", &()).await.unwrap();
    assert_ne!(after.pid, before.pid);
    qa.close().await.unwrap();
}

/// 4 workers, 32 sessions each with its own program; one worker is
/// SIGKILLed mid-run and opt-in restore brings its sessions back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_thirty_two_sessions_survive_a_sigkill() {
    let Some(python) = dspy_python() else { return };
    const SESSIONS: usize = 32;
    const CALLS: usize = 8;
    let dspy = dspy_pool(&python, 4).await.with_restore(true);
    dspy.configure(Lm::dummy_by_prompt(
        (0..SESSIONS).map(|i| (format!("<<s{i:02}>>"), [("answer", format!("a{i:02}"))])),
    ));
    let programs = futures::future::join_all((0..SESSIONS).map(|i| {
        let dspy = dspy.clone();
        async move {
            let sig = Signature::fields()
                .input(Field::new("question"))
                .output(Field::new("answer"))
                .instructions(format!("Session {i:02}."));
            dspy.program(Predict::new(sig)).await.unwrap()
        }
    }))
    .await;
    // The worker to kill: the one holding session 0.
    let victim: Info = programs[0].session().call("dspy.info", &()).await.unwrap();
    let victims: Vec<bool> = futures::future::join_all(programs.iter().map(|p| async {
        let info: Info = p.session().call("dspy.info", &()).await.unwrap();
        info.pid == victim.pid
    }))
    .await;
    let on_victim = victims.iter().filter(|&&b| b).count();
    assert!(on_victim >= 1);

    // The sessions on the victim make 2 calls, then wait for the kill and
    // go on; the others run freely meanwhile (so the pool is mid-run).
    let victim_calls = Arc::new(AtomicUsize::new(0));
    let (killed_tx, killed_rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let tasks = programs.iter().enumerate().map(|(i, p)| {
        let (p, victim_calls, mut killed) = (p.clone(), victim_calls.clone(), killed_rx.clone());
        let on_victim = victims[i];
        async move {
            for round in 0..CALLS {
                if on_victim && round == 2 {
                    killed.wait_for(|&k| k).await.unwrap();
                }
                let q = Question::new(&format!("<<s{i:02}>> round {round}"));
                let out: Answer = p
                    .call(&q)
                    .await
                    .unwrap_or_else(|e| panic!("session {i} round {round}: {e}"));
                assert_eq!(
                    out.answer,
                    format!("a{i:02}"),
                    "session {i} got another session's answer"
                );
                if on_victim {
                    victim_calls.fetch_add(1, Ordering::Relaxed);
                }
                tokio::task::yield_now().await;
            }
        }
    });
    let killer = async {
        while victim_calls.load(Ordering::Relaxed) < on_victim * 2 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let status = Command::new("kill")
            .args(["-9", &victim.pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        killed_tx.send(true).unwrap();
    };
    let (_, ()) = tokio::join!(futures::future::join_all(tasks), killer);
    let elapsed = started.elapsed();
    let restores: u64 = programs.iter().map(|p| p.restores()).sum();
    eprintln!(
        "{} calls in {elapsed:.2?} ({:.0} calls/s) with a SIGKILL; {on_victim} sessions on the killed worker, {restores} restores",
        SESSIONS * CALLS,
        (SESSIONS * CALLS) as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(
        restores as usize, on_victim,
        "each session on the killed worker restored its program once, no other"
    );
    // Every program is still its own (instructions included) and none runs on the dead pid.
    for (i, p) in programs.iter().enumerate() {
        let state = p.save().await.unwrap();
        let instructions = state.state["signature"]["instructions"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(instructions, format!("Session {i:02}."));
        let info: Info = p.session().call("dspy.info", &()).await.unwrap();
        assert_ne!(info.pid, victim.pid);
    }
    dspy.sessions().pool().shutdown(Duration::from_secs(5)).await;
}
