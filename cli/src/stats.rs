//! Small statistics helpers: percentiles of latency samples.

use std::time::Duration;

/// Latency samples, summarised on demand.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    micros: Vec<f64>,
}

impl Samples {
    /// Adds one sample.
    pub fn push(&mut self, d: Duration) {
        self.micros.push(d.as_secs_f64() * 1e6);
    }

    /// Adds every sample of `other`.
    pub fn extend(&mut self, other: Samples) {
        self.micros.extend(other.micros);
    }

    /// How many samples.
    pub fn len(&self) -> usize {
        self.micros.len()
    }

    /// The `q` quantile (0..=1) in microseconds; 0 when empty.
    pub fn quantile_us(&mut self, q: f64) -> f64 {
        if self.micros.is_empty() {
            return 0.0;
        }
        self.micros.sort_by(f64::total_cmp);
        let index = ((q * (self.micros.len() - 1) as f64).round() as usize).min(self.micros.len() - 1);
        self.micros[index]
    }

    /// The mean in microseconds; 0 when empty.
    pub fn mean_us(&self) -> f64 {
        if self.micros.is_empty() {
            0.0
        } else {
            self.micros.iter().sum::<f64>() / self.micros.len() as f64
        }
    }
}

/// Formats microseconds as `812 µs` or `12.3 ms`.
pub fn fmt_us(us: f64) -> String {
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

    #[test]
    fn quantiles() {
        let mut s = Samples::default();
        for i in 1..=100 {
            s.push(Duration::from_micros(i));
        }
        assert_eq!(s.len(), 100);
        assert!((s.quantile_us(0.5) - 51.0).abs() < 1.01);
        assert!((s.quantile_us(0.99) - 99.0).abs() < 1.01);
        assert!((s.mean_us() - 50.5).abs() < 0.01);
        assert_eq!(Samples::default().quantile_us(0.5), 0.0);
    }
}
