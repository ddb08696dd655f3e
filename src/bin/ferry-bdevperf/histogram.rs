//! A log-linear latency histogram: 16 sub-buckets per power of two (about 6% resolution),
//! fixed size, one add per I/O with no allocation.

const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

/// Counts of latencies in ticks.
pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
}

fn index(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    ((msb - SUB_BITS + 1) as usize) * SUB + ((v >> shift) as usize & (SUB - 1))
}

fn lower_bound(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let group = (i / SUB) as u32; // = msb - SUB_BITS + 1
    let msb = group + SUB_BITS - 1;
    (1u64 << msb) | (((i % SUB) as u64) << (msb - SUB_BITS))
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Histogram { counts: Box::new([0; BUCKETS]), total: 0 }
    }

    /// Counts one value.
    #[inline]
    pub fn add(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.total += 1;
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
    }

    /// The value below which `pct` percent of the counts fall (bucket lower bound).
    pub fn percentile(&self, pct: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let want = ((self.total as f64) * pct / 100.0).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return lower_bound(i);
            }
        }
        lower_bound(BUCKETS - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_close() {
        let mut last = 0;
        for v in [0u64, 1, 15, 16, 17, 100, 1000, 123_456, 1 << 40, u64::MAX] {
            let i = index(v);
            assert!(i >= last, "index not monotonic at {v}");
            last = i;
            let lb = lower_bound(i);
            assert!(lb <= v && (v - lb) as f64 <= v as f64 / 16.0 + 1.0, "{v} -> {lb}");
        }
    }

    #[test]
    fn percentiles() {
        let mut h = Histogram::new();
        for v in 1..=1000u64 {
            h.add(v);
        }
        let p99 = h.percentile(99.0);
        assert!((930..=990).contains(&p99), "p99 {p99}");
        assert_eq!(h.percentile(0.0), 1);
    }
}
