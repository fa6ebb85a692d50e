use std::time::Duration;

use crate::PoolError;

/// When workers are started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartMode {
    /// `build()` starts `min` workers in parallel and returns once they are
    /// ready (or fails with every worker's diagnosis).
    #[default]
    Eager,
    /// `build()` returns at once; workers start in the background and a
    /// caller is served the moment one is ready. Time spent waiting for the
    /// very first worker never counts as a checkout time-out.
    Lazy,
}

/// Exponential restart backoff: attempt `n` waits
/// `min(cap, base * 2^(n-1))`, reduced by up to `jitter` (a fraction in
/// `0.0..=1.0`) at random.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the first restart.
    pub base: Duration,
    /// Largest delay.
    pub cap: Duration,
    /// Random reduction, as a fraction of the delay (`0.0..=1.0`).
    pub jitter: f64,
    /// A worker that stayed up this long resets the backoff.
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
            jitter: 0.2,
            reset_after: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The un-jittered delay before attempt `n` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(30);
        self.base.saturating_mul(1u32 << shift).min(self.cap)
    }

    pub(crate) fn jittered(&self, attempt: u32) -> Duration {
        let d = self.delay(attempt);
        if self.jitter <= 0.0 {
            return d;
        }
        let r: f64 = rand::random();
        reduce_by(d, self.jitter * r)
    }
}

/// `d` less a `fraction` (`0.0..=1.0`) of it, without overflowing for huge
/// durations (`Duration::MAX` means "never" and stays huge).
pub(crate) fn reduce_by(d: Duration, fraction: f64) -> Duration {
    let cut = Duration::try_from_secs_f64(d.as_secs_f64() * fraction.clamp(0.0, 1.0)).unwrap_or(d);
    d.saturating_sub(cut)
}

/// When a healthy worker is replaced anyway (make-before-break: the
/// replacement is ready before the old worker drains).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RecyclePolicy {
    /// Replace a worker after it has served this many calls.
    pub max_requests: Option<u64>,
    /// Replace a worker after it has lived this long, minus up to
    /// `lifetime_jitter` of it at random (so workers do not all recycle
    /// together).
    pub max_lifetime: Option<Duration>,
    /// Random reduction of `max_lifetime`, a fraction in `0.0..=1.0`.
    pub lifetime_jitter: f64,
    /// Replace a worker whose resident memory (`Worker::rss_bytes`) exceeds
    /// this; checked every heartbeat interval.
    pub max_rss_bytes: Option<u64>,
    /// Replace a worker whose calls timed out this many times in a row (a
    /// worker stuck in its handlers answers pings of an idle pool but not
    /// calls). Default 3 in [`PoolConfig::default`].
    pub max_consecutive_timeouts: Option<u32>,
}

/// Pinging workers, idle or busy (the runtime answers pings while its
/// handlers run), to find frozen ones.
///
/// After `max_misses` missed pongs in a row, a worker whose CPU time
/// ([`Worker::cpu_time`](portpool_transport::Worker::cpu_time)) did not
/// grow while its last ping went unanswered, or is unknown, is frozen
/// (SIGSTOP, deadlock): it is killed at once, its in-flight calls fail with
/// `CallError::WorkerCrashed { cause: CrashCause::Unresponsive, .. }` and it
/// is replaced. A frozen worker is detected within
/// `interval × max_misses + timeout` of freezing (35 s with the defaults;
/// in general, when `timeout > interval`, `max(interval, timeout) ×
/// max_misses + timeout`), and the pool is back at full strength once its
/// replacement has started. A worker whose CPU time grew (busy in a
/// C call that holds the GIL) is not killed by this rule: it is logged and
/// counted (`portpool_worker_unresponsive_total{verdict="busy"}`); a call
/// time-out or `max_consecutive_timeouts` still applies to its calls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Heartbeat {
    /// How often every worker is pinged (and RSS / idle time checked).
    pub interval: Duration,
    /// How long a pong may take.
    pub timeout: Duration,
    /// Consecutive missed pongs after which a worker without CPU progress
    /// is killed as frozen.
    pub max_misses: u32,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            max_misses: 3,
        }
    }
}

/// Circuit breaker thresholds. Only worker faults (crashes, call
/// time-outs) count; handler exceptions do not.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive worker faults that open the breaker.
    pub failure_threshold: u32,
    /// How long it stays open before letting probe calls through.
    pub open_for: Duration,
    /// Concurrent probe calls allowed while half-open.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            open_for: Duration::from_secs(5),
            half_open_probes: 1,
        }
    }
}

/// Crash-loop detection: `max_restarts` crashes of one worker slot within
/// `window` mark it as crash-looping (in `status()` and in errors).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CrashLoop {
    /// Crashes within `window` that make a crash loop.
    pub max_restarts: u32,
    /// The sliding window.
    pub window: Duration,
}

impl Default for CrashLoop {
    fn default() -> Self {
        CrashLoop {
            max_restarts: 5,
            window: Duration::from_secs(60),
        }
    }
}

/// The whole pool configuration. Usually set through [`crate::PoolBuilder`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PoolConfig {
    /// The pool's name: the `pool` label of metrics and a tracing field.
    pub name: String,
    /// Workers kept running.
    pub min_workers: usize,
    /// Workers started at most (extra ones start when callers queue).
    pub max_workers: usize,
    /// Calls per worker at once; `None` uses each worker's hello. Always
    /// capped by the hello's `max_concurrency`.
    pub worker_concurrency: Option<usize>,
    /// Launches in progress at once.
    pub startup_concurrency: usize,
    /// Eager or lazy start.
    pub start_mode: StartMode,
    /// Give up on a launch after this long (the launcher's own init
    /// time-out still applies; the shorter wins). The launch is bounded by
    /// [`Launcher::launch_within`](portpool_transport::Launcher::launch_within),
    /// so the error is `LaunchError::InitTimeout` with the pid and the
    /// stderr tail wherever the launcher knows them (the process launcher
    /// does).
    pub init_timeout: Option<Duration>,
    /// How long a caller waits for a free worker.
    pub checkout_timeout: Duration,
    /// Default deadline of each call (a request's own time-out wins).
    pub call_timeout: Option<Duration>,
    /// Callers allowed to wait; one more gets `QueueFull` at once.
    pub max_queue: usize,
    /// Restart backoff.
    pub restart: Backoff,
    /// Crash-loop detection.
    pub crash_loop: CrashLoop,
    /// Recycling of healthy workers.
    pub recycle: RecyclePolicy,
    /// Heartbeats; `None` disables pings.
    pub heartbeat: Option<Heartbeat>,
    /// Circuit breaker; `None` disables it.
    pub breaker: Option<BreakerConfig>,
    /// Workers above `min_workers` idle this long are stopped.
    pub idle_timeout: Option<Duration>,
    /// How long a recycled worker may take to finish its calls.
    pub drain_timeout: Duration,
    /// Grace given to a worker's own shutdown when it is recycled.
    pub stop_grace: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        PoolConfig {
            name: "portpool".into(),
            min_workers: n,
            max_workers: n,
            worker_concurrency: None,
            startup_concurrency: n.max(4),
            start_mode: StartMode::Eager,
            init_timeout: None,
            checkout_timeout: Duration::from_secs(5),
            call_timeout: None,
            max_queue: 1024,
            restart: Backoff::default(),
            crash_loop: CrashLoop::default(),
            recycle: RecyclePolicy {
                max_consecutive_timeouts: Some(3),
                ..RecyclePolicy::default()
            },
            heartbeat: Some(Heartbeat::default()),
            breaker: Some(BreakerConfig::default()),
            idle_timeout: None,
            drain_timeout: Duration::from_secs(30),
            stop_grace: Duration::from_secs(5),
        }
    }
}

fn bad(field: &'static str, reason: impl Into<String>) -> PoolError {
    PoolError::Config {
        field,
        reason: reason.into(),
    }
}

fn fraction(field: &'static str, v: f64) -> Result<(), PoolError> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(bad(field, format!("must be within 0.0..=1.0, got {v}")))
    }
}

fn positive(field: &'static str, d: Duration) -> Result<(), PoolError> {
    if d.is_zero() {
        Err(bad(field, "must be greater than zero"))
    } else {
        Ok(())
    }
}

impl PoolConfig {
    /// Checks every setting; the error names the first bad field.
    pub fn validate(&self) -> Result<(), PoolError> {
        if self.name.trim().is_empty() {
            return Err(bad("name", "must not be empty"));
        }
        if self.max_workers == 0 {
            return Err(bad("max_workers", "must be at least 1"));
        }
        if self.min_workers > self.max_workers {
            return Err(bad(
                "min_workers",
                format!("{} exceeds max_workers {}", self.min_workers, self.max_workers),
            ));
        }
        if self.worker_concurrency == Some(0) {
            return Err(bad("worker_concurrency", "must be at least 1"));
        }
        if self.startup_concurrency == 0 {
            return Err(bad("startup_concurrency", "must be at least 1"));
        }
        if let Some(d) = self.init_timeout {
            positive("init_timeout", d)?;
        }
        positive("checkout_timeout", self.checkout_timeout)?;
        if let Some(d) = self.call_timeout {
            positive("call_timeout", d)?;
        }
        positive("restart.base", self.restart.base)?;
        if self.restart.cap < self.restart.base {
            return Err(bad("restart.cap", "must be at least restart.base"));
        }
        fraction("restart.jitter", self.restart.jitter)?;
        if self.crash_loop.max_restarts == 0 {
            return Err(bad("crash_loop.max_restarts", "must be at least 1"));
        }
        positive("crash_loop.window", self.crash_loop.window)?;
        if self.recycle.max_consecutive_timeouts == Some(0) {
            return Err(bad("recycle.max_consecutive_timeouts", "must be at least 1"));
        }
        if self.recycle.max_requests == Some(0) {
            return Err(bad("recycle.max_requests", "must be at least 1"));
        }
        if let Some(d) = self.recycle.max_lifetime {
            positive("recycle.max_lifetime", d)?;
        }
        fraction("recycle.lifetime_jitter", self.recycle.lifetime_jitter)?;
        if self.recycle.max_rss_bytes == Some(0) {
            return Err(bad("recycle.max_rss_bytes", "must be greater than zero"));
        }
        if let Some(hb) = &self.heartbeat {
            positive("heartbeat.interval", hb.interval)?;
            positive("heartbeat.timeout", hb.timeout)?;
            if hb.max_misses == 0 {
                return Err(bad("heartbeat.max_misses", "must be at least 1"));
            }
        }
        if let Some(b) = &self.breaker {
            if b.failure_threshold == 0 {
                return Err(bad("breaker.failure_threshold", "must be at least 1"));
            }
            positive("breaker.open_for", b.open_for)?;
            if b.half_open_probes == 0 {
                return Err(bad("breaker.half_open_probes", "must be at least 1"));
            }
        }
        if let Some(d) = self.idle_timeout {
            positive("idle_timeout", d)?;
        }
        Ok(())
    }
}
