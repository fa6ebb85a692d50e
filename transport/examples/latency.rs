//! Sequential call latency of one process worker, for profiling the
//! transport alone: `cargo run --release -p portpool-transport --example
//! latency -- PROGRAM [ARGS...]` (the program must speak the protocol).
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use portpool_transport::{CallRequest, ProcessLauncher, Value, Worker, WorkerCommand, WorkerId};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let program = args.next().ok_or("usage: latency PROGRAM [ARGS...]")?;
    let command = WorkerCommand::new(program).args(args);
    let worker = ProcessLauncher::new(command).spawn(WorkerId(0)).await?;
    let mut samples = Vec::new();
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let t0 = Instant::now();
        worker.call(CallRequest::new("echo", Value::from(1))).await?;
        samples.push(t0.elapsed());
    }
    samples.sort();
    let p = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!(
        "{} calls: p50 {:?}  p90 {:?}  p99 {:?}",
        samples.len(),
        p(0.5),
        p(0.9),
        p(0.99)
    );
    worker.shutdown(Duration::from_secs(2)).await;
    Ok(())
}
