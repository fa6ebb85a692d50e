//! A profiling probe for the throughput rows: `callers` tasks calling
//! `echo` in a loop on a pool of `workers` workers of `examples/bench_app.py`
//! for `seconds`, then calls/s, host CPU µs and context switches per call
//! (this process, every thread, from `/proc/self/task`) and the load.
//!
//! `cargo run --release --example throughput_probe -- [WORKERS] [CALLERS] [SECONDS]`
//! (`$PORTPOOL_PYTHON` or the nearest `.venv` is the interpreter). Meant to
//! run under `perf record -g` / `perf stat`; the figures that count are the
//! bench's (`cargo xtask bench --only 2`), measured against the floor.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portpool::{CallRequest, Pool, ProcessLauncher, Value, WorkerCommand};

/// CPU seconds (utime + stime) and context switches of every thread of
/// this process.
fn host_usage() -> (f64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // After the comm: state is 0, utime 11, stime 12 (fields 14 and 15).
    let cpu = (tick(11) + tick(12)) / 100.0;
    let mut switches = 0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            for line in status.lines() {
                if let Some(n) = line
                    .strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
                {
                    switches += n.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    (cpu, switches)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let workers: usize = args.next().map_or(Ok(2), |a| a.parse())?;
    let callers: usize = args.next().map_or(Ok(8), |a| a.parse())?;
    let seconds: f64 = args.next().map_or(Ok(3.0), |a| a.parse())?;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var_os("PORTPOOL_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join(".venv/bin/python"));
    let command = WorkerCommand::python_with(python, root.join("examples/bench_app.py"));
    let pool = Pool::builder(ProcessLauncher::new(command))
        .name("probe")
        .workers(workers)
        .max_queue(4096)
        .checkout_timeout(Duration::from_secs(60))
        .build()
        .await?;
    let params = Value::Map(vec![
        (Value::from("n"), Value::from(1)),
        (Value::from("s"), Value::from("hello, portpool")),
    ]);
    let counted = Arc::new(AtomicU64::new(0));
    let warmup = Duration::from_millis(300);
    let window = Duration::from_secs_f64(seconds);
    let start = tokio::time::Instant::now();
    let (from, until) = (start + warmup, start + warmup + window);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..callers {
        let (pool, params, counted) = (pool.clone(), params.clone(), counted.clone());
        tasks.spawn(async move {
            let work = async {
                loop {
                    pool.call_raw(CallRequest::new("echo", params.clone())).await?;
                    if tokio::time::Instant::now() >= from {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                }
                #[allow(unreachable_code)]
                Ok::<(), portpool::PoolError>(())
            };
            tokio::time::timeout_at(until, work).await.unwrap_or(Ok(()))
        });
    }
    tokio::time::sleep_until(from).await;
    let (cpu0, cs0) = host_usage();
    let t0 = Instant::now();
    tokio::time::sleep_until(until).await;
    let (cpu1, cs1) = host_usage();
    let secs = t0.elapsed().as_secs_f64();
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    let calls = counted.load(Ordering::Relaxed) as f64;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "workers {workers} callers {callers}: {:.0} calls/s, host {:.2} µs CPU/call, {:.3} cs/call; load {}",
        calls / secs,
        (cpu1 - cpu0) * 1e6 / calls,
        (cs1 - cs0) as f64 / calls,
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    pool.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
