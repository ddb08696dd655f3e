//! Latency histograms per channel: fixed power-of-two buckets in nanoseconds, so recording an
//! I/O is a multiply, a count of leading zeros and one single-writer increment, and the bucket
//! bounds are the same on every machine whatever its tick rate (histograms from several hosts
//! can be added up).
//!
//! Bucket `i` counts latencies up to `2^(10 + i)` ns: 1.024 µs, 2.048 µs, ... 17.18 s; the last
//! bucket counts everything slower. Counts are kept per bucket (not cumulative) and made
//! cumulative when read, as Prometheus wants them.

use super::stats::Counter;
use crate::framework::ticks;
use std::sync::OnceLock;

/// Number of buckets, the last one unbounded.
pub const BUCKETS: usize = 26;
/// log2 of the first bucket's upper bound in nanoseconds.
const FIRST_BOUND_LOG2: u32 = 10;

/// A latency histogram with one writer (a channel's reactor), readable from any thread.
#[derive(Default, Debug)]
pub struct LatencyHistogram {
    buckets: [Counter; BUCKETS],
}

impl LatencyHistogram {
    /// Counts one latency of `ticks` (single writer only).
    #[inline]
    pub fn record(&self, ticks: u64) {
        self.record_in_bucket(bucket_of_ticks(ticks));
    }

    /// Counts one latency whose bucket is `bucket` (from [`bucket_of_ticks`]).
    #[inline]
    pub fn record_in_bucket(&self, bucket: usize) {
        self.buckets[bucket.min(BUCKETS - 1)].add(1);
    }

    /// Adds `other`'s counts into `self` (summing channels; not on the data path).
    pub fn merge(&self, other: &LatencyHistogram) {
        for (a, b) in self.buckets.iter().zip(&other.buckets) {
            a.add(b.get());
        }
    }

    /// The count of each bucket (not cumulative), in bucket order.
    pub fn counts(&self) -> [u64; BUCKETS] {
        std::array::from_fn(|i| self.buckets[i].get())
    }
}

/// The upper bound of bucket `i` in seconds; `None` for the last, unbounded one.
pub fn upper_bound_seconds(i: usize) -> Option<f64> {
    (i + 1 < BUCKETS).then(|| (1u64 << (FIRST_BOUND_LOG2 + i as u32)) as f64 / 1e9)
}

/// The bucket of a latency of `ticks`.
#[inline]
pub fn bucket_of_ticks(ticks: u64) -> usize {
    bucket_of(nanos(ticks))
}

/// The bucket of a latency of `ns` nanoseconds: the first whose bound is at least `ns`.
#[inline]
fn bucket_of(ns: u64) -> usize {
    if ns <= 1 << FIRST_BOUND_LOG2 {
        return 0;
    }
    // ceil(log2(ns)) for ns > 1.
    let log2_ceil = u64::BITS - (ns - 1).leading_zeros();
    ((log2_ceil - FIRST_BOUND_LOG2) as usize).min(BUCKETS - 1)
}

/// Ticks to nanoseconds with a multiply and a shift (the factor is computed once).
#[inline]
fn nanos(ticks: u64) -> u64 {
    static NS_PER_TICK_Q32: OnceLock<u64> = OnceLock::new();
    let factor =
        *NS_PER_TICK_Q32.get_or_init(|| ((1_000_000_000u128 << 32) / ticks::tick_rate().max(1) as u128) as u64);
    // Cannot overflow for any latency under 2^64 ns (585 years): the factor is about
    // 2^32 ns per tick divided by the tick rate.
    ((ticks as u128 * factor as u128) >> 32) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_land_in_the_first_bucket_whose_bound_holds_them() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1024), 0);
        assert_eq!(bucket_of(1025), 1);
        assert_eq!(bucket_of(2048), 1);
        assert_eq!(bucket_of(2049), 2);
        assert_eq!(bucket_of(1 << 34), BUCKETS - 2);
        assert_eq!(bucket_of((1 << 34) + 1), BUCKETS - 1);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        for i in 0..BUCKETS - 1 {
            let bound_ns = (upper_bound_seconds(i).unwrap() * 1e9).round() as u64;
            assert_eq!(bucket_of(bound_ns), i, "bound of bucket {i}");
            assert_eq!(bucket_of(bound_ns + 1), i + 1, "just past bucket {i}");
        }
        assert_eq!(upper_bound_seconds(0), Some(1.024e-6));
        assert_eq!(upper_bound_seconds(BUCKETS - 1), None);
    }

    #[test]
    fn ticks_are_converted_at_the_calibrated_rate() {
        let one_ms = ticks::from_duration(std::time::Duration::from_millis(1));
        let ns = nanos(one_ms);
        assert!((999_000..=1_001_000).contains(&ns), "{ns}");
        assert!(nanos(u64::MAX) > 0);
        let h = LatencyHistogram::default();
        h.record(one_ms);
        h.record(0);
        let other = LatencyHistogram::default();
        other.merge(&h);
        other.merge(&h);
        let counts = other.counts();
        assert_eq!(counts[0], 2);
        // 1 ms lies between 2^19 ns (524 µs) and 2^20 ns (1.05 ms).
        assert_eq!(counts[20 - FIRST_BOUND_LOG2 as usize], 2);
        assert_eq!(counts.iter().sum::<u64>(), 4);
    }
}
