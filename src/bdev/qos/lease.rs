//! What every consumer of a limit does the same way: it names what a request costs ([`Op`])
//! and spends tokens it leased from each limit that applies to it ([`Leases`]). A bdev
//! channel, a vhost queue under its controller's limit and a background copy are all such
//! consumers; each holds one `Leases` under its own ticket.

use super::bucket::{Acquire, Cost, MAX_BUCKETS};
use super::Limit;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What one request costs, before it is matched against a limit's buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A read of this many bytes.
    Read(u64),
    /// A write of this many bytes.
    Write(u64),
    /// Write-zeroes over this many bytes (metered only when the limit says so).
    WriteZeroes(u64),
    /// An unmap (one operation, no bytes; metered only when the limit says so).
    Unmap,
    /// Never metered (flush, reset, commands that move no data).
    Free,
}

impl Op {
    /// Its cost under a limit, or `None` when the limit does not meter it (as SPDK, unmap and
    /// write-zeroes only when `meter_unmap`).
    #[inline]
    pub fn cost(self, meter_unmap: bool) -> Option<Cost> {
        match self {
            Op::Read(bytes) => Some(Cost { read: true, bytes }),
            Op::Write(bytes) => Some(Cost { read: false, bytes }),
            Op::WriteZeroes(bytes) if meter_unmap => Some(Cost { read: false, bytes }),
            Op::Unmap if meter_unmap => Some(Cost { read: false, bytes: 0 }),
            _ => None,
        }
    }
}

/// A limit as one consumer holds it: tokens leased and not yet spent.
struct Held {
    limit: Arc<Limit>,
    local: [u64; MAX_BUCKETS],
    cost: [u64; MAX_BUCKETS],
}

/// One consumer's leases from the limits that apply to it, under its own ticket (its place
/// in the limiters' FIFOs). Unspent tokens go back when it moves to other limits or goes.
pub(crate) struct Leases {
    held: Vec<Held>,
    ticket: u64,
}

impl Default for Leases {
    fn default() -> Self {
        static NEXT_TICKET: AtomicU64 = AtomicU64::new(1);
        Leases { held: Vec::new(), ticket: NEXT_TICKET.fetch_add(1, Ordering::Relaxed) }
    }
}

impl Leases {
    /// Whether no limit applies.
    pub(crate) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Gives back what it leased and holds `limits` from now on.
    pub(crate) fn hold(&mut self, limits: Vec<Arc<Limit>>) {
        self.give_back();
        self.held =
            limits.into_iter().map(|limit| Held { limit, local: [0; MAX_BUCKETS], cost: [0; MAX_BUCKETS] }).collect();
    }

    /// Takes `op`'s tokens from every limit, leasing more where it holds too few (`backlog`:
    /// the requests waiting, this one included, taken as costing as much); `Err(tick)` when a
    /// limit has none now (tokens leased from the others stay leased).
    pub(crate) fn take(&mut self, op: Op, backlog: u64, now: u64) -> Result<(), u64> {
        for h in &mut self.held {
            let n = h.limit.limiter.specs().len();
            match op.cost(h.limit.meter_unmap) {
                Some(c) => {
                    for (slot, spec) in h.cost.iter_mut().zip(h.limit.limiter.specs()) {
                        *slot = spec.cost(c);
                    }
                }
                None => h.cost = [0; MAX_BUCKETS],
            }
            // The common case, with no call and no lock: the lease covers it.
            if h.cost[..n].iter().zip(&h.local[..n]).all(|(c, l)| c <= l) {
                continue;
            }
            let acquired = h.limit.limiter.acquire(self.ticket, &h.cost[..n], backlog, &mut h.local[..n], now);
            if let Acquire::Wait { until } = acquired {
                return Err(until);
            }
        }
        for h in &mut self.held {
            for (l, c) in h.local.iter_mut().zip(&h.cost) {
                *l -= c;
            }
        }
        Ok(())
    }

    /// Returns the unspent leases and leaves every FIFO (holds no limit afterwards).
    pub(crate) fn give_back(&mut self) {
        for mut h in self.held.drain(..) {
            let n = h.limit.limiter.specs().len();
            h.limit.limiter.give_back(self.ticket, &mut h.local[..n]);
        }
    }
}

impl Drop for Leases {
    fn drop(&mut self) {
        self.give_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_metered() {
        assert_eq!(Op::Read(4096).cost(false), Some(Cost { read: true, bytes: 4096 }));
        assert_eq!(Op::Write(1024).cost(false), Some(Cost { read: false, bytes: 1024 }));
        // As SPDK, unmap and write-zeroes are free unless the limit meters them.
        assert_eq!(Op::Unmap.cost(false), None);
        assert_eq!(Op::WriteZeroes(4096).cost(false), None);
        assert_eq!(Op::Unmap.cost(true), Some(Cost { read: false, bytes: 0 }), "one I/O, no bytes");
        assert_eq!(Op::WriteZeroes(4096).cost(true), Some(Cost { read: false, bytes: 4096 }));
        assert_eq!(Op::Free.cost(true), None);
    }
}
