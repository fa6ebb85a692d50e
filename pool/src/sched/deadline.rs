//! "Never", and deadlines that cannot overflow.

use std::time::{Duration, Instant};

/// The one "never" of the pool: a `Duration::MAX` setting (or any longer
/// than this) means a year, which is never for a pool and keeps every
/// deadline and tokio's interval arithmetic far from overflow.
pub(crate) const NEVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// `from + d`, with `d` capped at [`NEVER`].
pub(crate) fn after(from: Instant, d: Duration) -> Instant {
    from + d.min(NEVER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_overflows() {
        let now = Instant::now();
        assert_eq!(after(now, Duration::MAX), now + NEVER);
        assert_eq!(after(now, Duration::from_secs(1)), now + Duration::from_secs(1));
    }
}
