//! Driving a portpool `Pool` for a measurement window, with the host's and
//! the workers' CPU time and context switches over that window.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portpool::protocol::{encode_frame, Message, Request, DEFAULT_MAX_FRAME};
use portpool::{CallRequest, Pool, Value};

use super::usage::{PerCall, Run, Usage};
use crate::stats::Samples;

/// The process ids of the pool's workers.
pub(super) fn worker_pids(pool: &Pool) -> Vec<u32> {
    pool.status().workers.iter().filter_map(|w| w.pid).collect()
}

/// Warm-up, then sequential calls for `duration`; one sample per call.
///
/// The calls run in a spawned task, as a request handler of a service does:
/// a reply then completes its caller on the thread that read it. (A caller
/// blocked in `Runtime::block_on` on a thread of its own is woken across
/// threads instead: see [`Caller::BlockOn`].)
pub(super) async fn sequential_calls(
    pool: &Pool,
    method: &str,
    params: &Value,
    duration: Duration,
    caller: Caller,
) -> Result<Run, String> {
    match caller {
        Caller::Task => {
            let (pool, method, params) = (pool.clone(), method.to_owned(), params.clone());
            tokio::spawn(async move { sequential_loop(&pool, &method, &params, duration).await })
                .await
                .map_err(|e| format!("the calling task failed: {e}"))?
        }
        Caller::BlockOn => sequential_loop(pool, method, params, duration).await,
    }
}

/// Where a sequential caller runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Caller {
    /// A task on the runtime's worker threads (a service's request handler).
    Task,
    /// The future passed to `block_on`, on a thread of its own.
    BlockOn,
}

async fn sequential_loop(
    pool: &Pool,
    method: &str,
    params: &Value,
    duration: Duration,
) -> Result<Run, String> {
    for _ in 0..50 {
        pool.call_raw(CallRequest::new(method, params.clone()))
            .await
            .map_err(|e| e.to_string())?;
    }
    let pids = worker_pids(pool);
    let mut samples = Samples::default();
    let (host0, worker0) = (Usage::host(), Usage::processes(&pids));
    let started = Instant::now();
    let end = started + duration;
    let mut calls = 0u64;
    while Instant::now() < end {
        let t = Instant::now();
        pool.call_raw(CallRequest::new(method, params.clone()))
            .await
            .map_err(|e| e.to_string())?;
        samples.push(t.elapsed());
        calls += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    let (host, worker) = (Usage::host().since(host0), Usage::processes(&pids).since(worker0));
    Ok(Run {
        samples,
        calls,
        secs,
        per_call: PerCall::new(host, worker, calls),
    })
}

/// `callers` tasks calling in a loop for `warmup`, then for `duration`;
/// counts the calls completed inside that window, their latencies and what
/// they cost. With
/// `exclusive`, each call runs on an exclusive lease. Calls still running at
/// the end are dropped (cancelled), not counted.
pub(super) async fn concurrent_calls(
    pool: &Pool,
    method: &str,
    params: &Value,
    callers: usize,
    warmup: Duration,
    duration: Duration,
    exclusive: bool,
) -> Result<Run, String> {
    let counted = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let start = tokio::time::Instant::now();
    let (window_start, window_end) = (start + warmup, start + warmup + duration);
    let pids = worker_pids(pool);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..callers {
        let (pool, method, params) = (pool.clone(), method.to_owned(), params.clone());
        let (counted, errors, first_error) = (counted.clone(), errors.clone(), first_error.clone());
        tasks.spawn(async move {
            let mut samples = Samples::default();
            let work = async {
                loop {
                    let request = CallRequest::new(method.as_str(), params.clone());
                    let sent = tokio::time::Instant::now();
                    let outcome = if exclusive {
                        match pool.checkout().await {
                            Ok(lease) => lease.call_raw(request).await,
                            Err(e) => Err(e),
                        }
                    } else {
                        pool.call_raw(request).await
                    };
                    let now = tokio::time::Instant::now();
                    match outcome {
                        Ok(_) if now >= window_start => {
                            counted.fetch_add(1, Ordering::Relaxed);
                            samples.push(now - sent);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            first_error
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(e.to_string());
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            };
            let _ = tokio::time::timeout_at(window_end, work).await;
            samples
        });
    }
    tokio::time::sleep_until(window_start).await;
    let (host0, worker0) = (Usage::host(), Usage::processes(&pids));
    tokio::time::sleep_until(window_end).await;
    let (host, worker) = (Usage::host().since(host0), Usage::processes(&pids).since(worker0));
    let mut samples = Samples::default();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(caller) = joined {
            samples.extend(caller);
        }
    }
    let errors = errors.load(Ordering::Relaxed);
    if errors > 0 {
        let first = first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_default();
        return Err(format!("{errors} calls failed, first: {first}"));
    }
    let calls = counted.load(Ordering::Relaxed);
    Ok(Run {
        samples,
        calls,
        secs: duration.as_secs_f64(),
        per_call: PerCall::new(host, worker, calls),
    })
}

/// The frame portpool sends for `method(params)`, byte for byte, so the
/// floors get exactly the same request. The id is one a warm pool sends
/// (two bytes after the marker), not 1.
pub(super) fn request_frame(method: &str, params: Value) -> Result<Vec<u8>, String> {
    let message = Message::Request(Request {
        id: 1000,
        method: method.into(),
        params,
        session: None,
        deadline_ms: None,
        trace: None,
    });
    encode_frame(&message, DEFAULT_MAX_FRAME).map_err(|e| e.to_string())
}
