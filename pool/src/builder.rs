use std::sync::Arc;
use std::time::Duration;

use portpool_transport::Launcher;

use crate::driver::Driver;
use crate::supervisor::run_slot;
use crate::{Backoff, BreakerConfig, CrashLoop, Heartbeat, Pool, PoolConfig, PoolError, StartMode};

/// Configures and starts a [`Pool`]; from [`Pool::builder`]. Settings are
/// checked by [`PoolBuilder::build`]: a bad one is a [`PoolError::Config`]
/// naming the field, never a panic later.
#[must_use = "a builder does nothing until .build().await"]
pub struct PoolBuilder {
    launcher: Arc<dyn Launcher>,
    config: PoolConfig,
}

impl std::fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PoolBuilder {
    pub(crate) fn new(launcher: Arc<dyn Launcher>) -> Self {
        PoolBuilder {
            launcher,
            config: PoolConfig::default(),
        }
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: PoolConfig) -> Self {
        self.config = config;
        self
    }

    /// The pool's name: the `pool` label of metrics and a tracing field.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Exactly `n` workers (`min = max = n`).
    pub fn workers(mut self, n: usize) -> Self {
        self.config.min_workers = n;
        self.config.max_workers = n;
        self
    }

    /// Between `min` and `max` workers; extra ones start when callers queue
    /// and stop after [`idle_timeout`](Self::idle_timeout).
    pub fn size(mut self, min: usize, max: usize) -> Self {
        self.config.min_workers = min;
        self.config.max_workers = max;
        self
    }

    /// Calls per worker at once, capped by each worker's hello.
    pub fn worker_concurrency(mut self, n: usize) -> Self {
        self.config.worker_concurrency = Some(n);
        self
    }

    /// Launches in progress at once.
    pub fn startup_concurrency(mut self, n: usize) -> Self {
        self.config.startup_concurrency = n;
        self
    }

    /// Eager (default) or lazy start.
    pub fn start_mode(mut self, mode: StartMode) -> Self {
        self.config.start_mode = mode;
        self
    }

    /// Gives up on a launch after `timeout` with `LaunchError::InitTimeout`
    /// (carrying the pid and stderr tail where the launcher knows them; see
    /// [`PoolConfig::init_timeout`](crate::PoolConfig::init_timeout)).
    pub fn init_timeout(mut self, timeout: Duration) -> Self {
        self.config.init_timeout = Some(timeout);
        self
    }

    /// How long a caller waits for a free worker.
    pub fn checkout_timeout(mut self, timeout: Duration) -> Self {
        self.config.checkout_timeout = timeout;
        self
    }

    /// The default deadline of each call.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.config.call_timeout = Some(timeout);
        self
    }

    /// Callers allowed to wait for a worker (0: never wait).
    pub fn max_queue(mut self, n: usize) -> Self {
        self.config.max_queue = n;
        self
    }

    /// Restart backoff.
    pub fn restart_backoff(mut self, backoff: Backoff) -> Self {
        self.config.restart = backoff;
        self
    }

    /// Crash-loop detection: `max_restarts` crashes within `window`.
    pub fn crash_loop(mut self, max_restarts: u32, window: Duration) -> Self {
        self.config.crash_loop = CrashLoop { max_restarts, window };
        self
    }

    /// Recycle a worker after `n` calls.
    pub fn max_requests(mut self, n: u64) -> Self {
        self.config.recycle.max_requests = Some(n);
        self
    }

    /// Recycle a worker after `lifetime`, reduced by up to `jitter`
    /// (a fraction in `0.0..=1.0`) at random.
    pub fn max_lifetime(mut self, lifetime: Duration, jitter: f64) -> Self {
        self.config.recycle.max_lifetime = Some(lifetime);
        self.config.recycle.lifetime_jitter = jitter;
        self
    }

    /// Recycle a worker whose resident memory exceeds `bytes`.
    pub fn max_rss_bytes(mut self, bytes: u64) -> Self {
        self.config.recycle.max_rss_bytes = Some(bytes);
        self
    }

    /// Recycle a worker after `n` calls in a row timed out on it (default
    /// 3); `None` never does.
    pub fn max_consecutive_timeouts(mut self, n: Option<u32>) -> Self {
        self.config.recycle.max_consecutive_timeouts = n;
        self
    }

    /// Heartbeat settings, or `None` to disable pings.
    pub fn heartbeat(mut self, heartbeat: Option<Heartbeat>) -> Self {
        self.config.heartbeat = heartbeat;
        self
    }

    /// Circuit breaker settings, or `None` to disable it.
    pub fn breaker(mut self, breaker: Option<BreakerConfig>) -> Self {
        self.config.breaker = breaker;
        self
    }

    /// Stop workers above `min` after being idle this long.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout = Some(timeout);
        self
    }

    /// How long a recycled worker may take to finish its calls.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.config.drain_timeout = timeout;
        self
    }

    /// Grace given to a recycled or idle worker's own shutdown.
    pub fn stop_grace(mut self, grace: Duration) -> Self {
        self.config.stop_grace = grace;
        self
    }

    /// Validates the configuration and starts the pool.
    ///
    /// Eager mode launches `min` workers in parallel (at most
    /// `startup_concurrency` at once) and returns once every first attempt
    /// has finished and at least one worker is ready; failed workers keep
    /// retrying with backoff in the background. If none could start it
    /// fails with [`PoolError::Build`] carrying every worker's diagnosis.
    /// Lazy mode returns at once.
    pub async fn build(self) -> Result<Pool, PoolError> {
        self.config.validate()?;
        let min = self.config.min_workers;
        let lazy = self.config.start_mode == StartMode::Lazy;
        let driver = Driver::new(self.config, self.launcher, run_slot);
        let pool = Pool::from_driver(driver.clone());
        let initial: Vec<_> = driver.with(|s, _| (0..min).map(|_| s.new_slot()).collect());
        if lazy || min == 0 {
            return Ok(pool);
        }
        driver.wait_until(None, |s| s.first_attempts_done(&initial)).await;
        let Err(errors) = driver.read(|s| {
            if s.any_worker_up() {
                Ok(())
            } else {
                Err(s.launch_errors())
            }
        }) else {
            return Ok(pool);
        };
        pool.shutdown(Duration::ZERO).await;
        Err(PoolError::Build {
            pool: driver.config.name.clone(),
            errors,
        })
    }
}
