//! Per-channel I/O statistics, written by one reactor and read by any thread.

use super::histogram::LatencyHistogram;
use super::io::IoType;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};

/// A counter with one writer: a relaxed load and store, no locked instruction on the data path.
#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `v` (single writer only).
    #[inline]
    pub fn add(&self, v: u64) {
        self.0.store(self.0.load(Ordering::Relaxed).wrapping_add(v), Ordering::Relaxed);
    }

    /// Keeps the larger of the current value and `v` (single writer only).
    #[inline]
    pub fn max(&self, v: u64) {
        if v > self.0.load(Ordering::Relaxed) {
            self.0.store(v, Ordering::Relaxed);
        }
    }

    /// Keeps the smaller non-zero value (single writer only; 0 means "none yet").
    #[inline]
    pub fn min_nonzero(&self, v: u64) {
        let cur = self.0.load(Ordering::Relaxed);
        if cur == 0 || v < cur {
            self.0.store(v, Ordering::Relaxed);
        }
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Back to 0 (by the writer only, or with the writer stopped).
    pub fn clear(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

/// Which counters `bdev_get_iostat` resets after reading them (SPDK's `reset_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResetMode {
    /// Every counter.
    All,
    /// Only the largest and smallest latencies.
    Maxmin,
    /// Only the error count.
    Error,
    /// Nothing.
    #[default]
    None,
}

/// Counters of one kind of I/O.
#[derive(Default, Debug)]
pub struct OpStats {
    /// Completed operations.
    pub ops: Counter,
    /// Bytes moved (or unmapped).
    pub bytes: Counter,
    /// Sum of latencies in ticks.
    pub latency_ticks: Counter,
    /// Largest latency.
    pub max_latency_ticks: Counter,
    /// Smallest latency.
    pub min_latency_ticks: Counter,
    /// Latencies by bucket.
    pub latency: LatencyHistogram,
}

impl OpStats {
    /// Widens `self`'s largest and smallest latencies to take in `other`'s.
    fn merge_extremes(&self, other: &OpStats) {
        self.max_latency_ticks.max(other.max_latency_ticks.get());
        if other.min_latency_ticks.get() != 0 {
            self.min_latency_ticks.min_nonzero(other.min_latency_ticks.get());
        }
    }
}

/// All counters of one channel (or a sum of channels).
#[derive(Default, Debug)]
pub struct IoStats {
    /// Reads.
    pub read: OpStats,
    /// Writes.
    pub write: OpStats,
    /// Unmaps.
    pub unmap: OpStats,
    /// Flushes, write-zeroes and resets.
    pub other: OpStats,
    /// I/Os that did not succeed.
    pub errors: Counter,
}

impl IoStats {
    /// Records one completed I/O.
    #[inline]
    pub fn record(&self, io_type: IoType, bytes: u64, latency: u64, ok: bool) {
        Self::record_in(&[self], io_type, bytes, latency, ok);
    }

    /// Records one completed I/O in each of `all` (an I/O counted at several levels: a
    /// remapped I/O is its upper bdev's and its base's), its histogram bucket found once.
    #[inline]
    pub fn record_in(all: &[&IoStats], io_type: IoType, bytes: u64, latency: u64, ok: bool) {
        if !ok {
            all.iter().for_each(|s| s.errors.add(1));
            return;
        }
        let bucket = super::histogram::bucket_of_ticks(latency);
        for s in all {
            let op = match io_type {
                IoType::Read => &s.read,
                IoType::Write => &s.write,
                IoType::Unmap => &s.unmap,
                _ => &s.other,
            };
            op.ops.add(1);
            op.bytes.add(bytes);
            op.latency_ticks.add(latency);
            op.max_latency_ticks.max(latency);
            op.min_latency_ticks.min_nonzero(latency);
            op.latency.record_in_bucket(bucket);
        }
    }

    /// Adds `other` into `self` (used when summing channels; not on the data path).
    pub fn merge(&self, other: &IoStats) {
        for (a, b) in [
            (&self.read, &other.read),
            (&self.write, &other.write),
            (&self.unmap, &other.unmap),
            (&self.other, &other.other),
        ] {
            a.ops.add(b.ops.get());
            a.bytes.add(b.bytes.get());
            a.latency_ticks.add(b.latency_ticks.get());
            a.merge_extremes(b);
            a.latency.merge(&b.latency);
        }
        self.errors.add(other.errors.get());
    }

    /// Adds to `self` what [`IoStats::take`] with `mode` cleared from the counters it
    /// returned as `taken`. For counters two bdevs list (a remapped I/O's two levels,
    /// recorded once): a reset through one bdev moves the cleared part into the other's
    /// retired counters, whose view stays as it was.
    pub fn merge_cleared(&self, taken: &IoStats, mode: ResetMode) {
        let pairs = [
            (&self.read, &taken.read),
            (&self.write, &taken.write),
            (&self.unmap, &taken.unmap),
            (&self.other, &taken.other),
        ];
        match mode {
            ResetMode::None => {}
            ResetMode::Error => self.errors.add(taken.errors.get()),
            ResetMode::Maxmin => pairs.iter().for_each(|(a, b)| a.merge_extremes(b)),
            ResetMode::All => {
                // As `take`: every counter but the histograms.
                for (a, b) in pairs {
                    a.ops.add(b.ops.get());
                    a.bytes.add(b.bytes.get());
                    a.latency_ticks.add(b.latency_ticks.get());
                    a.merge_extremes(b);
                }
                self.errors.add(taken.errors.get());
            }
        }
    }

    /// A copy of the counters now.
    pub fn snapshot(&self) -> IoStats {
        let copy = IoStats::default();
        copy.merge(self);
        copy
    }

    /// A copy of the counters, then resets those `mode` names. Only the writer (the channel's
    /// reactor) may call it on a live channel's counters.
    pub fn take(&self, mode: ResetMode) -> IoStats {
        let copy = self.snapshot();
        let ops = [&self.read, &self.write, &self.unmap, &self.other];
        match mode {
            ResetMode::None => {}
            ResetMode::Error => self.errors.clear(),
            ResetMode::Maxmin => ops.iter().for_each(|o| {
                o.max_latency_ticks.clear();
                o.min_latency_ticks.clear();
            }),
            ResetMode::All => {
                for o in ops {
                    for c in [&o.ops, &o.bytes, &o.latency_ticks, &o.max_latency_ticks, &o.min_latency_ticks] {
                        c.clear();
                    }
                }
                self.errors.clear();
            }
        }
        copy
    }

    /// SPDK's `bdev_get_iostat` fields for these counters.
    pub fn to_spdk_json(&self) -> Value {
        json!({
            "bytes_read": self.read.bytes.get(),
            "num_read_ops": self.read.ops.get(),
            "bytes_written": self.write.bytes.get(),
            "num_write_ops": self.write.ops.get(),
            "bytes_unmapped": self.unmap.bytes.get(),
            "num_unmap_ops": self.unmap.ops.get(),
            "bytes_copied": 0,
            "num_copy_ops": 0,
            "read_latency_ticks": self.read.latency_ticks.get(),
            "max_read_latency_ticks": self.read.max_latency_ticks.get(),
            "min_read_latency_ticks": self.read.min_latency_ticks.get(),
            "write_latency_ticks": self.write.latency_ticks.get(),
            "max_write_latency_ticks": self.write.max_latency_ticks.get(),
            "min_write_latency_ticks": self.write.min_latency_ticks.get(),
            "unmap_latency_ticks": self.unmap.latency_ticks.get(),
            "max_unmap_latency_ticks": self.unmap.max_latency_ticks.get(),
            "min_unmap_latency_ticks": self.unmap.min_latency_ticks.get(),
            "copy_latency_ticks": 0,
            "max_copy_latency_ticks": 0,
            "min_copy_latency_ticks": 0,
            "num_other_ops": self.other.ops.get(),
            "num_io_errors": self.errors.get(),
        })
    }
}
