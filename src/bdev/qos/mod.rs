//! Quality of service: rate limits on bdevs (SPDK's `bdev_set_qos_limit`) and on groups of
//! bdevs (Ferry's `bdev_qos_group_*`), with bursts and optional metering of unmap and
//! write-zeroes; and the same limits on consumers that are not bdev channels: a vhost
//! controller (the VM's view) and background copies (RAID rebuild, lvol inflate and
//! shallow copy).
//!
//! A limit is a [`Limiter`](bucket::Limiter): shared token buckets refilled exactly from the
//! tick clock. Each channel leases tokens from it in batches and spends them with plain
//! stores, so the I/O path takes no shared atomic; I/O that finds no tokens waits in its
//! channel, released by a one-shot timer armed only while something waits (no poller when
//! nothing is throttled). docs/architecture.md ("QoS") has the design and its accuracy bound.
//!
//! - `bucket.rs`: the buckets, leases, debt and the FIFO of waiting channels (pure math).
//! - `spec.rs`: limits in SPDK's units and the buckets they make.
//! - `lease.rs`: what a request costs, and one consumer's leases (shared by all consumers).
//! - `channel.rs`: the per-channel hook on the submit path.
//! - `gate.rs`: limits on other consumers (a vhost queue, a copy loop) and where they wait.
//! - `group.rs`: groups of bdevs sharing one limit.
//! - `rpc.rs`: the methods, `assigned_rate_limits` and `save_config` entries.

pub mod bucket;
mod channel;
pub mod gate;
pub mod group;
pub mod lease;
pub mod rpc;
pub mod spec;

pub use channel::QosChannel;
pub use rpc::METHODS;

use super::device::{lock, Bdev};
use crate::framework::{self, ticks};
use bucket::Limiter;
use group::Group;
use spec::{QosSpec, RateLimits};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One active limit: its buckets and what it meters.
pub struct Limit {
    /// The shared buckets.
    pub limiter: Limiter,
    /// Whether unmap and write-zeroes count against it.
    pub meter_unmap: bool,
}

impl Limit {
    /// The limit `spec` describes, buckets full now; `None` when it limits nothing.
    pub fn new(spec: &QosSpec) -> Option<Arc<Limit>> {
        let buckets = spec.buckets();
        if buckets.is_empty() {
            return None;
        }
        let limiter = Limiter::new(buckets, ticks::tick_rate(), ticks::now());
        Some(Arc::new(Limit { limiter, meter_unmap: spec.meter_unmap }))
    }
}

/// A bdev's QoS: its own limits (SPDK's), the group it belongs to, and a generation that
/// channels compare against to notice a change (one relaxed load of a line written only by
/// management calls).
#[derive(Default)]
#[repr(C)]
pub struct BdevQos {
    /// First: a bdev keeps it in the cache line its I/O's checks read (see `BdevInner`).
    generation: AtomicU64,
    state: Mutex<BdevQosState>,
}

#[derive(Default)]
struct BdevQosState {
    limits: RateLimits,
    own: Option<Arc<Limit>>,
    group: Option<Arc<Group>>,
}

impl BdevQos {
    /// How many bytes from its start hold what every I/O reads (the generation).
    #[cfg(test)]
    pub(crate) const PER_IO_BYTES: usize = std::mem::offset_of!(BdevQos, generation) + 8;

    /// Changes whenever the limits that apply to the bdev change.
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// SPDK's four limits set on the bdev itself.
    pub fn limits(&self) -> RateLimits {
        lock(&self.state).limits
    }

    /// The group the bdev belongs to.
    pub fn group(&self) -> Option<Arc<Group>> {
        lock(&self.state).group.clone()
    }

    /// Every limit that applies now: the bdev's own, then its group's.
    pub(crate) fn active(&self) -> Vec<Arc<Limit>> {
        let (own, group) = {
            let s = lock(&self.state);
            (s.own.clone(), s.group.clone())
        };
        own.into_iter().chain(group.and_then(|g| g.limit())).collect()
    }

    /// Sets the bdev's own limits (fresh, full buckets) and tells its channels.
    pub(crate) fn set_limits(&self, limits: RateLimits) {
        {
            let mut s = lock(&self.state);
            s.limits = limits;
            s.own = Limit::new(&QosSpec::spdk(limits));
        }
        self.changed();
    }

    /// Puts the bdev in `group` (or takes it out); the caller checked it was in no other.
    pub(crate) fn set_group(&self, group: Option<Arc<Group>>) {
        lock(&self.state).group = group;
        self.changed();
    }

    /// Channels see the new limits at their next I/O; channels holding I/O back look again
    /// now (a message to each reactor), so nothing waits on a limit that is gone.
    pub(crate) fn changed(&self) {
        self.generation.fetch_add(1, Ordering::Release);
        channel::kick_all();
    }
}

/// A bdev is going away: it leaves its group, and its channels fail what they hold back.
pub(crate) fn bdev_removed(bdev: &Bdev) {
    if let Some(g) = bdev.0.qos.group() {
        g.forget(bdev);
    }
    bdev.0.qos.set_group(None);
}

/// Whether the reactors run (QoS holds I/O back only on reactors, which have timers).
fn on_reactor() -> bool {
    framework::current_index().is_some()
}
