//! Sequential call latency and host cost of one process worker, for
//! profiling the transport alone: `cargo run --release -p
//! portpool-transport --example latency -- PROGRAM [ARGS...]` (the program
//! must speak the protocol and serve an `echo` method).
//!
//! Environment:
//! - `LATENCY_SIZE`: bytes of binary params per call (default 0: the small
//!   integer `1`);
//! - `LATENCY_SECS`: how long to measure (default 2);
//! - `LATENCY_SPAWN=1`: call from a spawned task instead of `main`'s
//!   `block_on` thread;
//! - `LATENCY_PIPE`: pipe buffer bytes (`WorkerCommand::pipe_buffer`).
//!
//! Prints one line: calls, p50/p90/p99, and per call the host's CPU time,
//! context switches and minor page faults (getrusage of the whole host
//! process, all threads), measured over the timed loop only.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use nix::sys::resource::{getrusage, UsageWho};
use portpool_transport::{CallRequest, ProcessLauncher, Value, Worker, WorkerCommand, WorkerId};

struct Usage {
    cpu: Duration,
    switches: i64,
    minflt: i64,
}

fn usage() -> Usage {
    let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let tv = |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    Usage {
        cpu: tv(u.user_time()) + tv(u.system_time()),
        switches: u.voluntary_context_switches() + u.involuntary_context_switches(),
        minflt: u.minor_page_faults(),
    }
}

async fn run(worker: &dyn Worker, params: Value, secs: f64) -> Result<(Vec<Duration>, Usage, Usage), String> {
    // Warm up: first calls allocate buffers and fault in pages.
    for _ in 0..20 {
        worker
            .call(CallRequest::new("echo", params.clone()))
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut samples = Vec::new();
    let before = usage();
    let until = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < until {
        let request = CallRequest::new("echo", params.clone());
        let t0 = Instant::now();
        worker.call(request).await.map_err(|e| e.to_string())?;
        samples.push(t0.elapsed());
    }
    let after = usage();
    Ok((samples, before, after))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let program = args.next().ok_or("usage: latency PROGRAM [ARGS...]")?;
    let env = |key: &str| std::env::var(key).ok();
    let size: usize = env("LATENCY_SIZE").map_or(Ok(0), |s| s.parse())?;
    let secs: f64 = env("LATENCY_SECS").map_or(Ok(2.0), |s| s.parse())?;
    let spawn = env("LATENCY_SPAWN").is_some_and(|s| s == "1");
    let params = if size == 0 {
        Value::from(1)
    } else {
        Value::Binary(vec![0x5a; size])
    };
    let mut command = WorkerCommand::new(program).args(args);
    if let Some(bytes) = env("LATENCY_PIPE") {
        command = command.pipe_buffer(bytes.parse()?);
    }
    let worker = std::sync::Arc::new(ProcessLauncher::new(command).spawn(WorkerId(0)).await?);
    let (mut samples, before, after) = if spawn {
        let worker = worker.clone();
        tokio::spawn(async move { run(&*worker, params, secs).await }).await??
    } else {
        run(&*worker, params, secs).await?
    };
    samples.sort();
    let n = samples.len();
    let p = |q: f64| samples[((n - 1) as f64 * q) as usize];
    let per = |x: f64| x / n as f64;
    println!(
        "size {size} spawn {spawn}: {n} calls  p50 {:.1}us  p90 {:.1}us  p99 {:.1}us  host cpu {:.1}us/call  ctxsw {:.2}/call  minflt {:.1}/call",
        p(0.5).as_secs_f64() * 1e6,
        p(0.9).as_secs_f64() * 1e6,
        p(0.99).as_secs_f64() * 1e6,
        per((after.cpu - before.cpu).as_secs_f64() * 1e6),
        per((after.switches - before.switches) as f64),
        per((after.minflt - before.minflt) as f64),
    );
    worker.shutdown(Duration::from_secs(2)).await;
    Ok(())
}
