//! A histogram that records without a lock, encoded through `prometheus-client`.
//!
//! The crate's own `Histogram` takes a mutex on every observation. Message sizes are
//! observed once per relayed message, on every worker at once, so here each observation
//! is three relaxed atomic adds after a scan of a dozen bounds. Values are kept as whole
//! units (nanoseconds, bytes) and scaled when scraped.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Bucket bounds for durations of requests and queries, in seconds.
pub const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Bucket bounds for a password hash (argon2id costs tens of milliseconds), in seconds.
pub const HASH_SECONDS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Bucket bounds for the registry's pairing work, in seconds.
pub const PAIRING_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// Bucket bounds for message sizes, in bytes.
pub const BYTES: &[f64] = &[
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
];

/// What one unit is worth when scraped: a nanosecond in seconds, or a byte.
const NANOS: f64 = 1e-9;

/// A histogram of fixed buckets; clones share their counts.
#[derive(Debug, Clone)]
pub struct Histogram {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Upper bounds in units, ascending; the implicit last bucket is `+Inf`.
    bounds: Vec<u64>,
    /// Upper bounds as scraped.
    labels: &'static [f64],
    /// One count per bound, plus `+Inf`: not cumulative (the encoder sums them).
    counts: Vec<AtomicU64>,
    sum: AtomicU64,
    scale: f64,
}

impl Histogram {
    /// Durations, with `bounds` in seconds.
    pub fn seconds(bounds: &'static [f64]) -> Self {
        Self::new(bounds, NANOS)
    }

    /// Sizes, with `bounds` in bytes.
    pub fn bytes(bounds: &'static [f64]) -> Self {
        Self::new(bounds, 1.0)
    }

    fn new(labels: &'static [f64], scale: f64) -> Self {
        Self {
            inner: Arc::new(Inner {
                bounds: labels.iter().map(|b| (b / scale).round() as u64).collect(),
                labels,
                counts: (0..=labels.len()).map(|_| AtomicU64::new(0)).collect(),
                sum: AtomicU64::new(0),
                scale,
            }),
        }
    }

    /// Records a duration.
    pub fn observe_duration(&self, elapsed: Duration) {
        self.observe_units(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Records a size.
    pub fn observe_bytes(&self, bytes: usize) {
        self.observe_units(bytes as u64);
    }

    fn observe_units(&self, units: u64) {
        let inner = &self.inner;
        let bucket = inner
            .bounds
            .iter()
            .position(|bound| units <= *bound)
            .unwrap_or(inner.bounds.len());
        inner.counts[bucket].fetch_add(1, Relaxed);
        inner.sum.fetch_add(units, Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.inner.counts.iter().map(|c| c.load(Relaxed)).sum()
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &self.inner;
        let buckets: Vec<(f64, u64)> = inner
            .labels
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(inner.counts.iter().map(|c| c.load(Relaxed)))
            .collect();
        // The count is the buckets' total, so `_count` always equals the `+Inf` bucket.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = inner.sum.load(Relaxed) as f64 * inner.scale;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::bytes(&[10.0, 100.0]);
        for bytes in [1, 10, 11, 100, 5000] {
            h.observe_bytes(bytes);
        }
        let counts: Vec<u64> = h.inner.counts.iter().map(|c| c.load(Relaxed)).collect();
        assert_eq!(counts, [2, 2, 1]);
        assert_eq!(h.count(), 5);
        assert_eq!(h.inner.sum.load(Relaxed), 5122);

        let t = Histogram::seconds(&[0.001]);
        t.observe_duration(Duration::from_micros(999));
        t.observe_duration(Duration::from_millis(2));
        let counts: Vec<u64> = t.inner.counts.iter().map(|c| c.load(Relaxed)).collect();
        assert_eq!(counts, [1, 1]);
    }
}
