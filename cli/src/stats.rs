//! Latency samples in an HDR histogram: percentiles to 3 significant
//! digits, with coordinated-omission correction for closed-loop runs.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Significant decimal digits the histogram keeps: a percentile read back
/// is within 0.1% of the recorded value it stands for.
pub(crate) const SIGNIFICANT_DIGITS: u8 = 3;

/// Longest sample recorded as is (one day); longer ones are recorded as this.
const LONGEST_NS: u64 = 86_400 * 1_000_000_000;

/// Latency samples, in nanoseconds, summarised on demand.
///
/// Percentiles come from an [HDR histogram](hdrhistogram) (auto-resizing,
/// [`SIGNIFICANT_DIGITS`]); the mean is kept exactly beside it.
#[derive(Debug, Clone)]
pub(crate) struct Samples {
    histogram: Histogram<u64>,
    /// The exact sum and count of the measured samples, for the mean (the
    /// histogram's mean is bucketed, and correction adds samples).
    sum_ns: u128,
    measured: u64,
}

impl Default for Samples {
    fn default() -> Self {
        Samples {
            // Cannot fail: 3 digits is within the 0..=5 the crate accepts.
            histogram: Histogram::new(SIGNIFICANT_DIGITS).expect("3 significant digits is valid"),
            sum_ns: 0,
            measured: 0,
        }
    }
}

impl Samples {
    /// Adds one sample.
    pub(crate) fn push(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).min(LONGEST_NS);
        // Auto-resizing: only a value past i64::MAX / 2 could fail.
        let _ = self.histogram.record(ns);
        self.sum_ns += u128::from(ns);
        self.measured += 1;
    }

    /// Adds every sample of `other`.
    pub(crate) fn extend(&mut self, other: Samples) {
        // Auto-resizing histograms of the same precision always add.
        let _ = self.histogram.add(&other.histogram);
        self.sum_ns += other.sum_ns;
        self.measured += other.measured;
    }

    /// How many samples (after [`Samples::corrected`], with those added).
    pub(crate) fn len(&self) -> usize {
        usize::try_from(self.histogram.len()).unwrap_or(usize::MAX)
    }

    /// The `q` quantile (0..=1) in microseconds; 0 when empty.
    ///
    /// The sample of rank `ceil(q * len)` (the nearest-rank definition),
    /// read back as the highest value its histogram bucket stands for: at
    /// most 0.1% (1 ns for samples under 2 µs) above the sample itself.
    pub(crate) fn quantile_us(&self, q: f64) -> f64 {
        if self.histogram.is_empty() {
            return 0.0;
        }
        self.histogram.value_at_quantile(q.clamp(0.0, 1.0)) as f64 / 1e3
    }

    /// The exact mean of the measured samples in microseconds; 0 when empty.
    pub(crate) fn mean_us(&self) -> f64 {
        match self.measured {
            0 => 0.0,
            n => self.sum_ns as f64 / n as f64 / 1e3,
        }
    }

    /// The samples corrected for coordinated omission, for a closed-loop run
    /// (each caller sends its next call when the last one returns).
    ///
    /// A caller stalled for `t` did not send the calls it would have sent
    /// meanwhile, so a plain histogram under-counts the stall. Those calls
    /// are added back (as HdrHistogram's `clone_correct` does: a sample of
    /// `t` also records `t - i`, `t - 2i`, ... down to `i`), where the
    /// interval `i` is the run's median latency: a caller's pace when it is
    /// not stalled. The mean stays that of the measured samples. No call
    /// added is faster than that median, but calls a little slower than it
    /// each add one near it, and many of those dilute the tail: a corrected
    /// p99 can come out below the raw one.
    pub(crate) fn corrected(&self) -> Samples {
        if self.histogram.is_empty() {
            return self.clone();
        }
        let interval = self.histogram.value_at_quantile(0.5);
        Samples {
            histogram: self.histogram.clone_correct(interval),
            sum_ns: self.sum_ns,
            measured: self.measured,
        }
    }
}

/// Formats microseconds as `812 µs` or `12.3 ms`.
pub(crate) fn fmt_us(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nearest-rank quantile of the samples themselves, by sorting
    /// (what `Samples` did before it kept a histogram).
    fn sorted_quantile_ns(samples: &[u64], q: f64) -> u64 {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    /// A xorshift generator: reproducible samples without a dependency.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    fn samples_of(ns: &[u64]) -> Samples {
        let mut s = Samples::default();
        for &v in ns {
            s.push(Duration::from_nanos(v));
        }
        s
    }

    #[test]
    fn quantiles_of_a_known_set() {
        let mut s = Samples::default();
        for i in 1..=100 {
            s.push(Duration::from_micros(i));
        }
        assert_eq!(s.len(), 100);
        // Nearest rank: the 50th and 99th of 1..=100 µs; each within the
        // histogram's 0.1%.
        assert!(
            (s.quantile_us(0.5) - 50.0).abs() <= 50.0 * 1e-3,
            "{}",
            s.quantile_us(0.5)
        );
        assert!(
            (s.quantile_us(0.99) - 99.0).abs() <= 99.0 * 1e-3,
            "{}",
            s.quantile_us(0.99)
        );
        assert!((s.quantile_us(1.0) - 100.0).abs() <= 100.0 * 1e-3);
        assert!((s.quantile_us(0.0) - 1.0).abs() <= 1e-3);
        assert!((s.mean_us() - 50.5).abs() < 1e-9, "the mean is exact");
        let empty = Samples::default();
        assert_eq!(
            (empty.quantile_us(0.5), empty.mean_us(), empty.len()),
            (0.0, 0.0, 0)
        );
    }

    /// p50 and p99 read from the histogram agree with the sorted samples to
    /// within its precision (3 significant digits), over latency-like
    /// distributions: uniform, log-uniform over 5 decades, and a tight body
    /// with a 2% tail 100x slower.
    #[test]
    fn histogram_percentiles_match_sorted_samples() {
        let mut rng = 0x2545_F491_4F6C_DD1D_u64;
        let uniform: Vec<u64> = (0..20_000)
            .map(|_| 10_000 + xorshift(&mut rng) % 90_000)
            .collect();
        let log_uniform: Vec<u64> = (0..20_000)
            .map(|_| {
                let exponent = (xorshift(&mut rng) % 1_000_000) as f64 / 1_000_000.0 * 5.0;
                (1_000.0 * 10f64.powf(exponent)) as u64
            })
            .collect();
        let tailed: Vec<u64> = (0..20_000)
            .map(|i| {
                let body = 40_000 + xorshift(&mut rng) % 5_000;
                if i % 50 == 0 {
                    body * 100
                } else {
                    body
                }
            })
            .collect();
        for (name, set) in [
            ("uniform", uniform),
            ("log-uniform", log_uniform),
            ("tailed", tailed),
        ] {
            let s = samples_of(&set);
            assert_eq!(s.len(), set.len());
            for q in [0.5, 0.9, 0.99, 0.999] {
                let exact = sorted_quantile_ns(&set, q) as f64;
                let read = s.quantile_us(q) * 1e3;
                // The histogram reports the top of the sample's bucket.
                assert!(
                    read >= exact && read <= exact * (1.0 + 1e-3) + 1.0,
                    "{name} q={q}: histogram {read} ns, sorted {exact} ns"
                );
            }
            let mean = set.iter().map(|&v| v as f64).sum::<f64>() / set.len() as f64;
            assert!((s.mean_us() * 1e3 - mean).abs() < 1e-6 * mean, "{name} mean");
        }
    }

    #[test]
    fn extend_merges_counts_and_sums() {
        let (mut a, b) = (
            samples_of(&[1_000, 2_000]),
            samples_of(&[3_000, 4_000, 5_000_000]),
        );
        a.extend(b);
        assert_eq!(a.len(), 5);
        assert!((a.mean_us() - 1002.0).abs() < 1e-9);
        assert!((a.quantile_us(1.0) - 5000.0).abs() <= 5.0);
    }

    #[test]
    fn coordinated_omission_correction_fills_in_a_stall() {
        // A closed-loop caller at 100 µs a call, stalled once for 100 ms:
        // it would have sent ~1000 calls meanwhile, waiting 100 ms, 99.9 ms,
        // ... 100 µs. Raw, the stall is 1 sample in 1001 (p99 = 100 µs);
        // corrected, half the calls of the run waited behind it.
        let mut set = vec![100_000u64; 1000];
        set.push(100_000_000);
        let raw = samples_of(&set);
        assert!((raw.quantile_us(0.99) - 100.0).abs() <= 0.1);
        let corrected = raw.corrected();
        // ~999 calls added back (the interval is the top of the median's
        // bucket, a little over 100 µs).
        assert!((1990..=2001).contains(&corrected.len()), "{}", corrected.len());
        assert!(
            corrected.quantile_us(0.99) > 90_000.0,
            "{}",
            corrected.quantile_us(0.99)
        );
        assert!(
            corrected.quantile_us(0.75) > 45_000.0,
            "{}",
            corrected.quantile_us(0.75)
        );
        assert_eq!(corrected.mean_us(), raw.mean_us());
        // A run without stalls is left as it is.
        let steady = samples_of(&[100_000; 100]);
        assert_eq!(steady.corrected().len(), 100);
        assert_eq!(Samples::default().corrected().len(), 0);
    }

    #[test]
    fn extreme_samples_do_not_panic() {
        let mut s = Samples::default();
        s.push(Duration::ZERO);
        s.push(Duration::MAX);
        assert_eq!(s.len(), 2);
        assert!(s.quantile_us(1.0) >= 86_400e6);
        assert!(!s.quantile_us(f64::NAN).is_nan());
    }

    #[test]
    fn formats_microseconds() {
        assert_eq!(fmt_us(812.4), "812 µs");
        assert_eq!(fmt_us(1234.0), "1.23 ms");
        assert_eq!(fmt_us(12_345.0), "12.3 ms");
    }
}
