//! Metric names. Every metric carries a `pool` label (the pool's name).

use std::time::Duration;

use metrics::SharedString;

/// Counter: finished calls and checkouts, label `outcome`.
pub const CALLS: &str = "portpool_calls_total";
/// Histogram (seconds): time a call spent on its worker.
pub const CALL_DURATION: &str = "portpool_call_duration_seconds";
/// Histogram (seconds): time a caller waited for a worker slot.
pub const QUEUE_WAIT: &str = "portpool_queue_wait_seconds";
/// Gauge: callers waiting.
pub const QUEUE_DEPTH: &str = "portpool_queue_depth";
/// Gauge: workers by `state` (starting, ready, leased, draining, backoff).
pub const WORKERS: &str = "portpool_workers";
/// Counter: worker replacements, label `reason` (crash, launch_failure,
/// unresponsive, max_requests, max_lifetime, max_rss, timeouts).
pub const RESTARTS: &str = "portpool_worker_restarts_total";
/// Counter: heartbeats a worker failed to answer in time.
pub const HEARTBEAT_MISSES: &str = "portpool_heartbeat_misses_total";
/// Counter: workers that missed `max_misses` heartbeats in a row, label
/// `verdict`: `frozen` (no CPU progress: killed) or `busy` (CPU time grew:
/// left alone).
pub const UNRESPONSIVE: &str = "portpool_worker_unresponsive_total";
/// Histogram (seconds): launch duration, label `outcome` (ok, error).
pub const START_DURATION: &str = "portpool_worker_start_duration_seconds";
/// Gauge: breaker state (0 closed, 1 half-open, 2 open).
pub const BREAKER_STATE: &str = "portpool_breaker_state";

/// A pool's name as a metric label, made once per pool: a label built
/// from it is a reference count, not a copy of the name per call.
pub(crate) fn label(pool: &str) -> SharedString {
    SharedString::from(std::sync::Arc::<str>::from(pool))
}

pub(crate) fn call(pool: &SharedString, outcome: &'static str) {
    metrics::counter!(CALLS, "pool" => pool.clone(), "outcome" => outcome).increment(1);
}

pub(crate) fn call_duration(pool: &SharedString, d: Duration) {
    metrics::histogram!(CALL_DURATION, "pool" => pool.clone()).record(d.as_secs_f64());
}

pub(crate) fn queue_wait(pool: &SharedString, d: Duration) {
    metrics::histogram!(QUEUE_WAIT, "pool" => pool.clone()).record(d.as_secs_f64());
}

pub(crate) fn queue_depth(pool: &SharedString, n: usize) {
    metrics::gauge!(QUEUE_DEPTH, "pool" => pool.clone()).set(n as f64);
}

pub(crate) fn workers(pool: &SharedString, state: &'static str, n: usize) {
    metrics::gauge!(WORKERS, "pool" => pool.clone(), "state" => state).set(n as f64);
}

pub(crate) fn restart(pool: &str, reason: &'static str) {
    metrics::counter!(RESTARTS, "pool" => pool.to_owned(), "reason" => reason).increment(1);
}

pub(crate) fn heartbeat_missed(pool: &str) {
    metrics::counter!(HEARTBEAT_MISSES, "pool" => pool.to_owned()).increment(1);
}

pub(crate) fn unresponsive(pool: &str, verdict: &'static str) {
    metrics::counter!(UNRESPONSIVE, "pool" => pool.to_owned(), "verdict" => verdict).increment(1);
}

pub(crate) fn start_duration(pool: &str, ok: bool, d: Duration) {
    let outcome = if ok { "ok" } else { "error" };
    metrics::histogram!(START_DURATION, "pool" => pool.to_owned(), "outcome" => outcome)
        .record(d.as_secs_f64());
}

pub(crate) fn breaker(pool: &SharedString, state: crate::BreakerState) {
    let v = match state {
        crate::BreakerState::Closed => 0.0,
        crate::BreakerState::HalfOpen => 1.0,
        crate::BreakerState::Open => 2.0,
    };
    metrics::gauge!(BREAKER_STATE, "pool" => pool.clone()).set(v);
}
