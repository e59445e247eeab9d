//! Latency distributions: one histogram type, and the percentile summary the JSON carries.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest value recorded, in microseconds (a minute); larger ones are clamped.
const MAX_RECORDED_MICROS: u64 = 60_000_000;

/// p50 / p95 / p99 / max of a distribution, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest value.
    pub max: f64,
}

/// A histogram of durations at microsecond resolution (3 significant figures).
#[derive(Debug, Clone)]
pub struct DurationHistogram {
    h: Histogram<u64>,
}

impl Default for DurationHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl DurationHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            // Bounds are constants in range, so construction cannot fail.
            h: Histogram::new_with_bounds(1, MAX_RECORDED_MICROS, 3)
                .expect("constant histogram bounds are valid"),
        }
    }

    /// Record one duration.
    pub fn record(&mut self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, MAX_RECORDED_MICROS);
        // `us` is clamped into the histogram's bounds.
        let _ = self.h.record(us);
    }

    /// Fold another histogram into this one.
    pub fn merge(&mut self, other: &DurationHistogram) {
        // Both have the same bounds, so adding cannot fail.
        let _ = self.h.add(&other.h);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.h.len()
    }

    /// The value at quantile `q` (0..=1), in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.h.value_at_quantile(q) as f64 / 1000.0
    }

    /// The percentile summary, in milliseconds (all zero when empty).
    pub fn percentiles(&self) -> Percentiles {
        if self.h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: self.quantile_ms(0.50),
            p95: self.quantile_ms(0.95),
            p99: self.quantile_ms(0.99),
            max: self.h.max() as f64 / 1000.0,
        }
    }

    /// `(value_ms, cumulative share)` points of the distribution, for plots.
    pub fn cdf_points(&self) -> Vec<(f64, f64)> {
        let total = self.h.len().max(1) as f64;
        let mut acc = 0u64;
        self.h
            .iter_recorded()
            .map(|v| {
                acc += v.count_at_value();
                (v.value_iterated_to() as f64 / 1000.0, acc as f64 / total)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = DurationHistogram::new();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let p = h.percentiles();
        assert!((p.p50 - 50.0).abs() < 0.1, "{p:?}");
        assert!((p.p99 - 99.0).abs() < 0.1, "{p:?}");
        assert!((p.max - 100.0).abs() < 0.1, "{p:?}");
        let cdf = h.cdf_points();
        assert_eq!(cdf.len(), 100);
        assert!((cdf.last().unwrap().1 - 1.0).abs() < 1e-12);
        assert_eq!(
            DurationHistogram::new().percentiles(),
            Percentiles::default()
        );
    }
}
