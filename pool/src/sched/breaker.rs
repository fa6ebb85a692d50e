//! The circuit breaker: counts worker faults, opens after
//! `failure_threshold` of them in a row, lets half-open probes through once
//! `open_for` has passed, and closes on a probe's success. Sans-IO: the
//! caller passes the time in.

use std::time::{Duration, Instant};

use super::deadline::after;
use crate::config::BreakerConfig;
use crate::status::BreakerState;

#[derive(Debug)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probes: u32 },
}

/// The breaker; disabled (always closed) without a configuration.
#[derive(Debug)]
pub(crate) struct Breaker {
    config: Option<BreakerConfig>,
    inner: Inner,
}

impl Breaker {
    pub(crate) fn new(config: Option<BreakerConfig>) -> Self {
        Breaker {
            config,
            inner: Inner::Closed { failures: 0 },
        }
    }

    pub(crate) fn state(&self, now: Instant) -> BreakerState {
        match self.inner {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { until } if now < until => BreakerState::Open,
            Inner::Open { .. } | Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// When an open breaker turns half-open.
    pub(crate) fn open_until(&self) -> Option<Instant> {
        match self.inner {
            Inner::Open { until } => Some(until),
            _ => None,
        }
    }

    /// Lets a call in: `Ok(true)` if it is a half-open probe, `Err(retry
    /// after)` if the breaker is open.
    pub(crate) fn admit(&mut self, now: Instant) -> Result<bool, Duration> {
        let Some(cfg) = self.config else {
            return Ok(false);
        };
        if let Inner::Open { until } = self.inner {
            if now < until {
                return Err(until - now);
            }
            self.inner = Inner::HalfOpen { probes: 0 };
        }
        match &mut self.inner {
            Inner::Closed { .. } => Ok(false),
            Inner::HalfOpen { probes } if *probes < cfg.half_open_probes => {
                *probes += 1;
                Ok(true)
            }
            _ => Err(Duration::ZERO),
        }
    }

    /// Probe places taken while half-open.
    #[cfg(test)]
    pub(crate) fn probes(&self) -> u32 {
        match self.inner {
            Inner::HalfOpen { probes } => probes,
            _ => 0,
        }
    }

    /// A probe ended without an outcome (cancelled, never sent).
    pub(crate) fn cancel_probe(&mut self) {
        if let Inner::HalfOpen { probes } = &mut self.inner {
            *probes = probes.saturating_sub(1);
        }
    }

    /// Records a call's outcome. Returns true when the state changed.
    pub(crate) fn record(&mut self, fault: bool, probe: bool, now: Instant) -> bool {
        let Some(cfg) = self.config else {
            return false;
        };
        match (&mut self.inner, fault) {
            (Inner::Closed { failures }, false) => {
                *failures = 0;
                false
            }
            (Inner::Closed { failures }, true) => {
                *failures += 1;
                if *failures >= cfg.failure_threshold {
                    self.inner = Inner::Open {
                        until: after(now, cfg.open_for),
                    };
                    true
                } else {
                    false
                }
            }
            (Inner::HalfOpen { .. }, false) if probe => {
                self.inner = Inner::Closed { failures: 0 };
                true
            }
            (Inner::HalfOpen { probes }, false) => {
                let _ = probes;
                false
            }
            (Inner::HalfOpen { .. }, true) => {
                self.inner = Inner::Open {
                    until: after(now, cfg.open_for),
                };
                true
            }
            (Inner::Open { .. }, _) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 2,
            open_for: Duration::from_secs(1),
            half_open_probes: 1,
        }
    }

    #[test]
    fn opens_after_threshold_then_half_opens_and_closes_on_probe_success() {
        let t0 = Instant::now();
        let mut b = Breaker::new(Some(cfg()));
        assert_eq!(b.admit(t0), Ok(false));
        b.record(true, false, t0);
        assert_eq!(b.state(t0), BreakerState::Closed);
        b.record(false, false, t0); // success resets the count
        b.record(true, false, t0);
        assert_eq!(b.state(t0), BreakerState::Closed);
        assert!(b.record(true, false, t0));
        assert_eq!(b.state(t0), BreakerState::Open);
        assert_eq!(b.admit(t0), Err(Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert_eq!(b.admit(t1), Ok(true));
        assert_eq!(b.admit(t1), Err(Duration::ZERO), "one probe at a time");
        b.cancel_probe();
        assert_eq!(b.admit(t1), Ok(true), "a cancelled probe frees its place");
        assert!(b.record(false, true, t1));
        assert_eq!(b.state(t1), BreakerState::Closed);
    }

    #[test]
    fn failed_probe_reopens() {
        let t0 = Instant::now();
        let mut b = Breaker::new(Some(BreakerConfig {
            failure_threshold: 1,
            ..cfg()
        }));
        b.record(true, false, t0);
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(b.admit(t1), Ok(true));
        b.record(true, true, t1);
        assert_eq!(b.state(t1), BreakerState::Open);
    }

    #[test]
    fn disabled_breaker_always_admits() {
        let t0 = Instant::now();
        let mut b = Breaker::new(None);
        for _ in 0..100 {
            b.record(true, false, t0);
        }
        assert_eq!(b.admit(t0), Ok(false));
    }
}
