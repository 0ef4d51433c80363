//! Latency histograms with fixed buckets: one `Cell` per bucket, so that
//! recording is a few comparisons and two additions, and shards' histograms
//! merge exactly by adding bucket counts.

use super::bump;
use std::cell::Cell;

/// Upper bounds of the buckets, in microseconds (Prometheus `le`, which is
/// inclusive). A last bucket, `+Inf`, takes the rest.
pub const BOUNDS_US: [u64; 20] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// [`BOUNDS_US`] in seconds, as the `le` label writes them.
pub const BOUND_LABELS: [&str; 20] = [
    "0.000025", "0.00005", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01",
    "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "30.0", "60.0",
];

/// Buckets, `+Inf` included.
pub const BUCKETS: usize = BOUNDS_US.len() + 1;

/// The bucket a value of `us` microseconds falls in.
#[inline]
pub fn bucket_of(us: u64) -> usize {
    // Most requests are fast: a scan from the bottom ends in a few steps.
    let mut i = 0;
    while i < BOUNDS_US.len() && us > BOUNDS_US[i] {
        i += 1;
    }
    i
}

/// Whole microseconds in `d`, saturating.
#[inline]
pub fn micros(d: std::time::Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from(d.subsec_micros()))
}

/// One shard's histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative).
    counts: [Cell<u64>; BUCKETS],
    /// Sum of the observations, microseconds.
    sum_us: Cell<u64>,
}

impl Histogram {
    #[inline]
    pub fn observe_us(&self, us: u64) {
        bump(&self.counts[bucket_of(us)], 1);
        bump(&self.sum_us, us);
    }

    pub fn snapshot(&self) -> HistSnapshot {
        HistSnapshot {
            counts: std::array::from_fn(|i| self.counts[i].get()),
            sum_us: self.sum_us.get(),
        }
    }
}

/// A histogram's figures at one moment; shards' snapshots add up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistSnapshot {
    pub counts: [u64; BUCKETS],
    pub sum_us: u64,
}

impl HistSnapshot {
    pub fn count(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, &c| a.wrapping_add(c))
    }

    pub fn add(&mut self, other: &HistSnapshot) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a = a.wrapping_add(b);
        }
        self.sum_us = self.sum_us.wrapping_add(other.sum_us);
    }

    /// What was observed after `earlier` (a snapshot of the same histogram).
    pub fn since(&self, earlier: &HistSnapshot) -> HistSnapshot {
        HistSnapshot {
            counts: std::array::from_fn(|i| self.counts[i].saturating_sub(earlier.counts[i])),
            sum_us: self.sum_us.saturating_sub(earlier.sum_us),
        }
    }

    /// The `q` quantile in seconds, interpolated inside its bucket the way
    /// PromQL's `histogram_quantile` does; `None` when nothing was observed.
    /// A quantile in the `+Inf` bucket is reported as the highest bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            if (seen + c) as f64 >= rank {
                let Some(&hi) = BOUNDS_US.get(i) else {
                    return Some(BOUNDS_US[BOUNDS_US.len() - 1] as f64 / 1e6);
                };
                let lo = if i == 0 { 0 } else { BOUNDS_US[i - 1] };
                let within = ((rank - seen as f64) / c as f64).clamp(0.0, 1.0);
                return Some((lo as f64 + (hi - lo) as f64 * within) / 1e6);
            }
            seen += c;
        }
        Some(BOUNDS_US[BOUNDS_US.len() - 1] as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    // Test code only: every `unwrap()`/`expect()` here is on a fixture the
    // test builds itself, so a failure is a failing test; nothing a client
    // or a config file controls reaches them.
    use super::*;

    #[test]
    fn values_fall_in_the_bucket_whose_bound_is_inclusive() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(25), 0);
        assert_eq!(bucket_of(26), 1);
        assert_eq!(bucket_of(1_000), 5);
        assert_eq!(bucket_of(60_000_000), 19);
        assert_eq!(bucket_of(60_000_001), 20);
        assert_eq!(bucket_of(u64::MAX), 20);
        for (b, l) in BOUNDS_US.iter().zip(BOUND_LABELS) {
            let secs: f64 = l.parse().unwrap();
            assert!((secs * 1e6 - *b as f64).abs() < 1e-6, "{l} vs {b}");
        }
    }

    #[test]
    fn snapshots_add_and_subtract_bucket_by_bucket() {
        let h = Histogram::default();
        h.observe_us(10);
        h.observe_us(300);
        let a = h.snapshot();
        h.observe_us(2_000_000);
        let b = h.snapshot();
        assert_eq!(b.count(), 3);
        assert_eq!(b.sum_us, 2_000_310);
        let d = b.since(&a);
        assert_eq!(d.count(), 1);
        let mut m = a;
        m.add(&b);
        assert_eq!(m.count(), 5);
        assert_eq!(m.counts[0], 2);
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let h = Histogram::default();
        for _ in 0..100 {
            h.observe_us(400); // (250, 500]
        }
        let s = h.snapshot();
        let p50 = s.quantile(0.5).unwrap();
        assert!((p50 - 0.000375).abs() < 1e-9, "{p50}");
        assert_eq!(HistSnapshot::default().quantile(0.5), None);
        let h = Histogram::default();
        h.observe_us(u64::MAX);
        assert_eq!(h.snapshot().quantile(0.99), Some(60.0));
    }
}
