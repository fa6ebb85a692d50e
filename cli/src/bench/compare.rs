//! Interleaved A/B comparisons: the order contestants run in each round, and
//! the median ratio of paired rounds with its spread.

use serde::Serialize;

/// The order `n` contestants run in round `round`: forwards in even rounds,
/// backwards in odd ones (A, B, then B, A, ...), so neither always runs
/// first (right after a warm-up, or right after the other one heated the
/// CPU).
pub(super) fn round_order(round: usize, n: usize) -> Vec<usize> {
    if round % 2 == 0 {
        (0..n).collect()
    } else {
        (0..n).rev().collect()
    }
}

/// The median (the mean of the middle two for an even count); NaN if empty.
/// NaNs sort last.
pub(super) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The ratios of paired rounds, summarised.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(super) struct Ratio {
    /// The median of the per-round ratios.
    pub median: f64,
    /// The smallest per-round ratio.
    pub min: f64,
    /// The largest per-round ratio.
    pub max: f64,
    /// How many rounds were paired.
    pub rounds: usize,
}

impl Ratio {
    /// `a[i] / b[i]` for each round `i` (the shorter length wins).
    pub(super) fn paired(a: &[f64], b: &[f64]) -> Ratio {
        let ratios: Vec<f64> = a.iter().zip(b).map(|(a, b)| a / b).collect();
        Ratio::of(&ratios)
    }

    /// Summarises ratios already computed.
    pub(super) fn of(ratios: &[f64]) -> Ratio {
        let known: Vec<f64> = ratios.iter().copied().filter(|r| !r.is_nan()).collect();
        let (min, max) = if known.is_empty() {
            (f64::NAN, f64::NAN) // 0 / 0 every round: no ratio
        } else {
            (
                known.iter().copied().fold(f64::INFINITY, f64::min),
                known.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            )
        };
        Ratio {
            median: median(ratios),
            min,
            max,
            rounds: ratios.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_alternates() {
        assert_eq!(round_order(0, 2), vec![0, 1]);
        assert_eq!(round_order(1, 2), vec![1, 0]);
        assert_eq!(round_order(2, 2), vec![0, 1]);
        assert_eq!(round_order(3, 3), vec![2, 1, 0]);
        // Over an even number of rounds each contestant runs first equally often.
        let firsts: Vec<usize> = (0..6).map(|r| round_order(r, 4)[0]).collect();
        assert_eq!(firsts.iter().filter(|&&f| f == 0).count(), 3);
        assert_eq!(firsts.iter().filter(|&&f| f == 3).count(), 3);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[7.0]), 7.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn paired_ratio_is_median_of_round_ratios() {
        // Round ratios: 2.0, 1.0, 4.0 -> median 2.0, spread 1.0..4.0. The
        // ratio of the medians (4/2 = 2) would agree here; below it does not.
        let r = Ratio::paired(&[4.0, 2.0, 8.0], &[2.0, 2.0, 2.0]);
        assert_eq!(
            r,
            Ratio {
                median: 2.0,
                min: 1.0,
                max: 4.0,
                rounds: 3
            }
        );
        // Pairing cancels drift that hits both sides of a round alike.
        let r = Ratio::paired(&[10.0, 20.0, 40.0], &[5.0, 10.0, 20.0]);
        assert_eq!((r.median, r.min, r.max), (2.0, 2.0, 2.0));
        // Extra rounds on one side are ignored.
        assert_eq!(Ratio::paired(&[1.0, 2.0, 3.0], &[1.0, 1.0]).rounds, 2);
    }

    #[test]
    fn ratio_with_zero_baseline() {
        let r = Ratio::paired(&[1.0, 1.0, 1.0], &[0.0, 1.0, 2.0]);
        assert_eq!(r.median, 1.0);
        assert_eq!(r.max, f64::INFINITY);
        assert_eq!(r.min, 0.5);
        // 0 / 0 in every round (e.g. no page faults on either side): no ratio.
        let r = Ratio::paired(&[0.0, 0.0, 0.0], &[0.0, 0.0, 0.0]);
        assert!(r.median.is_nan() && r.min.is_nan() && r.max.is_nan());
    }
}
