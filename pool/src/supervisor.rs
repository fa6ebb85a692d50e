//! One supervisor task per worker slot: launch, watch, restart with
//! backoff, heartbeat, recycle (make-before-break), drain and stop.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use portpool_transport::{CrashCause, Worker, WorkerExit};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::driver::{deadline as after, Driver, Handle};
use crate::metrics;
use crate::sched::{Scheduler, SlotId, SlotPhase, NEVER};
use crate::PoolConfig;

type Stop = watch::Receiver<Option<Instant>>;

/// Resolves with the shutdown deadline once the pool is told to stop.
async fn stopped(stop: &mut Stop) -> Instant {
    match stop.wait_for(Option::is_some).await {
        Ok(v) => v.unwrap_or_else(Instant::now),
        Err(_) => Instant::now(),
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

enum End {
    Crashed { uptime: Duration },
    Stopped,
    Retired,
}

/// The slot's supervisor, boxed for [`crate::driver::RunSlot`].
pub(crate) fn run_slot(driver: Arc<Driver>, slot: SlotId) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(run(driver, slot))
}

/// Interval of the per-worker maintenance tick (pings, RSS, idle).
fn tick(cfg: &PoolConfig) -> Duration {
    match (&cfg.heartbeat, cfg.idle_timeout) {
        (Some(hb), _) => hb.interval.min(NEVER),
        (None, Some(idle)) => idle.min(Duration::from_secs(1)),
        (None, None) => Duration::from_secs(1),
    }
}

async fn run(driver: Arc<Driver>, slot: SlotId) {
    let mut stop = driver.stop.subscribe();
    let mut streak = 0u32;
    loop {
        if stop.borrow().is_some() {
            break;
        }
        driver.with(|s, _| s.set_phase(slot, SlotPhase::Starting));
        let launched = tokio::select! {
            r = driver.launch(slot) => r,
            _ = stopped(&mut stop) => break,
        };
        match launched {
            Err(e) => {
                streak += 1;
                driver.on_launch_failed(slot, e, true);
            }
            Ok(worker) => {
                driver.on_ready(slot, worker.clone());
                match supervise(&driver, slot, worker, &mut stop).await {
                    End::Crashed { uptime } => {
                        streak = if uptime >= driver.config.restart.reset_after {
                            1
                        } else {
                            streak + 1
                        };
                    }
                    End::Stopped => break,
                    End::Retired => return,
                }
            }
        }
        let delay = driver.config.restart.jittered(streak);
        driver.with(|s, _| s.set_phase(slot, SlotPhase::Backoff));
        tracing::debug!(pool = %driver.config.name, slot, ?delay, "restart backoff");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped(&mut stop) => break,
        }
    }
    driver.remove_slot(slot);
}

fn lifetime_deadline(driver: &Driver, from: Instant) -> Option<(Instant, &'static str)> {
    let policy = &driver.config.recycle;
    let life = policy.max_lifetime?;
    let r: f64 = rand::random();
    Some((
        after(from, crate::config::reduce_by(life, policy.lifetime_jitter * r)),
        "max_lifetime",
    ))
}

async fn supervise(driver: &Arc<Driver>, slot: SlotId, mut worker: Arc<dyn Worker>, stop: &mut Stop) -> End {
    let cfg = &driver.config;
    let mut started = Instant::now();
    let mut recycle_at = lifetime_deadline(driver, started);
    let period = tick(cfg);
    let mut tick = tokio::time::interval_at(after(started, period), period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut misses = 0u32;
    let bell = driver.recycle_bell(slot);
    loop {
        let id = worker.info().id;
        let reason: Option<&'static str> = tokio::select! {
            exit = worker.closed() => {
                tracing::warn!(pool = %cfg.name, worker = %id, %exit, "worker exited; restarting");
                let uptime = started.elapsed();
                driver.on_crash(slot, id, exit, "crash");
                return End::Crashed { uptime };
            }
            deadline = stopped(stop) => {
                drain_and_stop(driver, worker, deadline, None).await;
                return End::Stopped;
            }
            _ = sleep_until_opt(recycle_at.map(|(at, _)| at)) => recycle_at.map(|(_, why)| why),
            _ = bell.notified() => driver.read(|s| s.recycle_reason(id)),
            _ = tick.tick() => {
                if driver.try_retire(slot, id) {
                    tracing::info!(pool = %cfg.name, worker = %id, "stopping idle worker");
                    // Through the drain: a call for this worker may have
                    // been granted just before it was marked draining.
                    let deadline = after(Instant::now(), cfg.drain_timeout);
                    drain_and_stop(driver, worker, deadline, Some(cfg.stop_grace)).await;
                    return End::Retired;
                }
                match maintenance(driver, &worker, &mut misses).await {
                    Check::Fine => None,
                    Check::Recycle(why) => Some(why),
                    Check::Frozen(reason) => {
                        let uptime = started.elapsed();
                        kill_frozen(driver, slot, &worker, &reason).await;
                        return End::Crashed { uptime };
                    }
                }
            }
        };
        let Some(reason) = reason else { continue };
        tracing::info!(pool = %cfg.name, worker = %id, reason, "recycling worker");
        let launch = driver.launch(slot);
        tokio::pin!(launch);
        // The old worker may die while its replacement starts (recycling is
        // often for ill health): that is a crash, handled at once.
        let mut old_died = false;
        let launched = loop {
            tokio::select! {
                r = &mut launch => break r,
                exit = worker.closed(), if !old_died => {
                    tracing::warn!(pool = %cfg.name, worker = %id, %exit, "worker exited while its replacement started");
                    driver.on_crash(slot, id, exit, "crash");
                    old_died = true;
                }
                deadline = stopped(stop) => {
                    if !old_died {
                        drain_and_stop(driver, worker, deadline, None).await;
                    }
                    return End::Stopped;
                }
            }
        };
        match launched {
            Ok(new) if old_died => {
                driver.on_ready(slot, new.clone());
                worker = new;
                started = Instant::now();
                recycle_at = lifetime_deadline(driver, started);
                misses = 0;
            }
            Err(e) if old_died => {
                driver.on_launch_failed(slot, e, true);
                return End::Crashed {
                    uptime: started.elapsed(),
                };
            }
            Ok(new) => {
                // Make before break: the replacement serves before the old
                // worker drains.
                driver.on_replaced(slot, reason);
                driver.on_ready(slot, new.clone());
                let old = std::mem::replace(&mut worker, new);
                let old_id = old.info().id;
                driver.with(|s, now| s.mark_draining(old_id, now));
                let drain = tokio::spawn({
                    let driver = driver.clone();
                    let deadline = after(Instant::now(), cfg.drain_timeout);
                    async move { drain_and_stop(&driver, old, deadline, Some(cfg_grace(&driver))).await }
                });
                driver.track(drain);
                started = Instant::now();
                recycle_at = lifetime_deadline(driver, started);
                misses = 0;
            }
            Err(e) => {
                // Keep the old worker serving; try again after a backoff.
                driver.on_launch_failed(slot, e, false);
                recycle_at = Some((after(Instant::now(), cfg.restart.jittered(1)), reason));
            }
        }
    }
}

fn cfg_grace(driver: &Driver) -> Duration {
    driver.config.stop_grace
}

/// What a maintenance tick found.
enum Check {
    Fine,
    /// Replace it, make-before-break.
    Recycle(&'static str),
    /// Frozen: kill it now (the reason, in words).
    Frozen(String),
}

/// Heartbeat and RSS checks.
///
/// Every worker is pinged, busy or idle (the runtime answers pings while
/// its handlers run). After `max_misses` missed pongs in a row, a worker
/// whose CPU time did not grow while its last ping went unanswered (or
/// whose CPU time is unknown) is frozen (stopped, deadlocked): it is
/// killed. One whose CPU time grew is busy, e.g. in a C call holding the
/// GIL: it is logged and counted, not killed.
async fn maintenance(driver: &Driver, worker: &Arc<dyn Worker>, misses: &mut u32) -> Check {
    let cfg = &driver.config;
    if let Some(max) = cfg.recycle.max_rss_bytes {
        if worker.rss_bytes().is_some_and(|rss| rss > max) {
            return Check::Recycle("max_rss");
        }
    }
    let Some(hb) = cfg.heartbeat else {
        return Check::Fine;
    };
    let id = worker.info().id;
    let cpu_before = worker.cpu_time();
    match tokio::time::timeout(hb.timeout, worker.ping(hb.timeout)).await {
        Ok(Ok(_)) => {
            *misses = 0;
            Check::Fine
        }
        _ if !worker.is_alive() => Check::Fine,
        _ => {
            *misses += 1;
            let cpu_after = worker.cpu_time();
            let progress = matches!((cpu_before, cpu_after), (Some(a), Some(b)) if b > a);
            let in_flight = worker.in_flight();
            metrics::heartbeat_missed(&cfg.name);
            tracing::warn!(pool = %cfg.name, worker = %id, misses = *misses, in_flight, ?cpu_after, progress, "missed heartbeat");
            if *misses < hb.max_misses {
                return Check::Fine;
            }
            let cpu = match (cpu_before, cpu_after) {
                (Some(a), Some(b)) => format!("CPU time {a:?} -> {b:?}"),
                _ => "CPU time unknown".to_owned(),
            };
            if progress {
                metrics::unresponsive(&cfg.name, "busy");
                tracing::warn!(
                    pool = %cfg.name, worker = %id, misses = *misses, in_flight,
                    "worker missed {} heartbeats in a row but is using CPU ({cpu}): busy (e.g. a C call holding the GIL), not killed",
                    *misses
                );
                Check::Fine
            } else {
                metrics::unresponsive(&cfg.name, "frozen");
                Check::Frozen(format!(
                    "unresponsive: missed {} heartbeats in a row (every {:?}, {:?} each), no CPU progress ({cpu}), {in_flight} calls in flight",
                    *misses, hb.interval, hb.timeout
                ))
            }
        }
    }
}

/// Kills a frozen worker (its calls fail with `WorkerCrashed { cause:
/// Unresponsive }`) and records the crash once it is gone.
async fn kill_frozen(driver: &Driver, slot: SlotId, worker: &Arc<dyn Worker>, reason: &str) {
    let id = worker.info().id;
    tracing::error!(pool = %driver.config.name, worker = %id, pid = ?worker.info().pid, "killing frozen worker: {reason}");
    worker.kill(CrashCause::Unresponsive, reason);
    // A kill ends the worker at once; do not let a transport that never
    // reports the end hold the slot.
    let exit = match tokio::time::timeout(Duration::from_secs(5), worker.closed()).await {
        Ok(exit) => exit,
        Err(_) => {
            tracing::error!(pool = %driver.config.name, worker = %id, "killed worker did not report its end within 5 s");
            WorkerExit::default()
        }
    };
    driver.on_crash(slot, id, exit, "unresponsive");
}

/// Stops taking calls on `worker`, waits until its calls finish (or the
/// deadline, or the pool's shutdown deadline), then shuts it down.
async fn drain_and_stop(
    driver: &Driver,
    worker: Arc<dyn Worker>,
    deadline: Instant,
    grace: Option<Duration>,
) {
    let id = worker.info().id;
    driver.with(|s, now| s.mark_draining(id, now));
    let mut stop = driver.stop.subscribe();
    // Idle: no call running and (until the deadline) no pinned session.
    let idle = |s: &Scheduler<Handle>| s.quiet(id, true);
    // When the whole pool stops, pins no longer matter: only running calls.
    let calls_done = |s: &Scheduler<Handle>| s.quiet(id, false);
    let wait = async {
        tokio::select! {
            _ = driver.wait_until(Some(deadline), idle) => deadline,
            d = stopped(&mut stop) => {
                let d = d.min(deadline);
                driver.wait_until(Some(d), calls_done).await;
                d
            }
        }
    };
    let deadline = tokio::select! {
        d = wait => d,
        exit = worker.closed() => {
            // Died while draining: forget it now, so calls waiting for it
            // fail with WorkerGone instead of waiting out the drain.
            tracing::warn!(pool = %driver.config.name, worker = %id, %exit, "worker exited while draining");
            driver.with(|s, now| s.remove_entry(id, now));
            return;
        }
    };
    let grace = grace.unwrap_or_else(|| deadline.saturating_duration_since(Instant::now()));
    let exit = worker.shutdown(grace).await;
    tracing::debug!(pool = %driver.config.name, worker = %id, %exit, "worker stopped");
    driver.with(|s, now| s.remove_entry(id, now));
}
