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

    /// The mean of the values recorded, in milliseconds (0 when empty).
    pub fn mean_ms(&self) -> f64 {
        self.h.mean() / 1000.0
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

/// p50 / p99 / max of distances, in metres.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct DistancePercentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest value.
    pub max: f64,
}

/// A histogram of distances at micrometre resolution (3 significant figures), up to 1 km.
///
/// Its own type rather than a [`DurationHistogram`] in disguise: a distance read back as
/// milliseconds would be a unit error waiting to happen.
#[derive(Debug, Clone)]
pub struct DistanceHistogram {
    h: Histogram<u64>,
}

/// Largest distance recorded, in micrometres (1 km); larger ones are clamped.
const MAX_RECORDED_MICROMETRES: u64 = 1_000_000_000;

impl Default for DistanceHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl DistanceHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            // Bounds are constants in range, so construction cannot fail.
            h: Histogram::new_with_bounds(1, MAX_RECORDED_MICROMETRES, 3)
                .expect("constant histogram bounds are valid"),
        }
    }

    /// Record one distance in metres (non-finite and negative ones as zero).
    pub fn record(&mut self, metres: f32) {
        let um = if metres.is_finite() && metres > 0.0 {
            (f64::from(metres) * 1e6) as u64
        } else {
            0
        };
        // Clamped into the histogram's bounds.
        let _ = self.h.record(um.clamp(1, MAX_RECORDED_MICROMETRES));
    }

    /// Fold another histogram into this one.
    pub fn merge(&mut self, other: &DistanceHistogram) {
        // Both have the same bounds, so adding cannot fail.
        let _ = self.h.add(&other.h);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.h.len()
    }

    /// The percentile summary, in metres (all zero when empty).
    pub fn percentiles(&self) -> DistancePercentiles {
        if self.h.is_empty() {
            return DistancePercentiles::default();
        }
        let m = |um: u64| um as f64 / 1e6;
        DistancePercentiles {
            p50: m(self.h.value_at_quantile(0.5)),
            p99: m(self.h.value_at_quantile(0.99)),
            max: m(self.h.max()),
        }
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

    #[test]
    fn distances_in_metres() {
        let mut h = DistanceHistogram::new();
        for cm in 1..=100u32 {
            h.record(cm as f32 / 100.0);
        }
        let p = h.percentiles();
        assert!((p.p50 - 0.5).abs() < 0.001, "{p:?}");
        assert!((p.max - 1.0).abs() < 0.001, "{p:?}");
        assert_eq!(h.count(), 100);
    }
}
