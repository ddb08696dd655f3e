//! Limits as operators give them (SPDK's units: I/Os per second, MiB per second) and the
//! buckets they become.

use super::bucket::{Applies, BucketSpec, Unit};
use serde::{Deserialize, Serialize};

/// SPDK's rounding unit of IOPS limits (`SPDK_BDEV_QOS_MIN_IOS_PER_SEC`).
pub const MIN_IOS_PER_SEC: u64 = 1000;
/// SPDK's "megabyte" of the byte limits: a MiB.
pub const MBYTE: u64 = 1024 * 1024;
/// The largest byte limit in MiB/s that does not overflow in bytes (SPDK's
/// `SPDK_BDEV_QOS_MAX_MBYTES_PER_SEC`).
pub const MAX_MBYTES_PER_SEC: u64 = u64::MAX / MBYTE;
/// How long the rate a bucket holds when no burst is set: 20 ms. Enough that a channel
/// woken a few milliseconds late (a reactor sleeping in whole milliseconds, a preempted
/// thread) loses none of the rate, small enough to be 2% of a 1 s window at most.
pub const DEFAULT_BUCKET_MS: u64 = 20;
/// The default length of a burst (QEMU's `*-max-length` default: 1 s).
pub const DEFAULT_BURST_MS: u64 = 1000;

/// SPDK's four limits (0: none), in SPDK's names and units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimits {
    /// Reads and writes per second.
    pub rw_ios_per_sec: u64,
    /// Read and write MiB per second.
    pub rw_mbytes_per_sec: u64,
    /// Read MiB per second.
    pub r_mbytes_per_sec: u64,
    /// Write MiB per second.
    pub w_mbytes_per_sec: u64,
}

/// Changes to [`RateLimits`]: `None` leaves a limit as it is, `Some(0)` removes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct RateChanges {
    /// `rw_ios_per_sec`.
    pub rw_ios_per_sec: Option<u64>,
    /// `rw_mbytes_per_sec`.
    pub rw_mbytes_per_sec: Option<u64>,
    /// `r_mbytes_per_sec`.
    pub r_mbytes_per_sec: Option<u64>,
    /// `w_mbytes_per_sec`.
    pub w_mbytes_per_sec: Option<u64>,
}

impl RateChanges {
    /// Whether it changes nothing (SPDK: "No rate limits specified").
    pub fn is_empty(&self) -> bool {
        *self == RateChanges::default()
    }

    /// `limits` with these changes applied, each value normalised as SPDK does: IOPS rounded
    /// up to a multiple of 1000, MiB/s clamped so that bytes do not overflow.
    pub fn apply(&self, limits: RateLimits) -> RateLimits {
        let iops = |v: u64| v.div_ceil(MIN_IOS_PER_SEC).saturating_mul(MIN_IOS_PER_SEC);
        let mbytes = |v: u64| v.min(MAX_MBYTES_PER_SEC);
        let warn = |name: &str, given: u64, used: u64| {
            if given != used {
                tracing::warn!(limit = name, given, used, "QoS limit rounded as SPDK does");
            }
            used
        };
        let f = |given: Option<u64>, old: u64, name: &str, norm: &dyn Fn(u64) -> u64| match given {
            None => old,
            Some(v) => warn(name, v, norm(v)),
        };
        RateLimits {
            rw_ios_per_sec: f(self.rw_ios_per_sec, limits.rw_ios_per_sec, "rw_ios_per_sec", &iops),
            rw_mbytes_per_sec: f(self.rw_mbytes_per_sec, limits.rw_mbytes_per_sec, "rw_mbytes_per_sec", &mbytes),
            r_mbytes_per_sec: f(self.r_mbytes_per_sec, limits.r_mbytes_per_sec, "r_mbytes_per_sec", &mbytes),
            w_mbytes_per_sec: f(self.w_mbytes_per_sec, limits.w_mbytes_per_sec, "w_mbytes_per_sec", &mbytes),
        }
    }
}

impl RateLimits {
    /// Whether no limit is set.
    pub fn is_none(&self) -> bool {
        *self == RateLimits::default()
    }

    /// Each limit as (unit, direction, tokens per second), unset ones as 0.
    fn rates(&self) -> [(Unit, Applies, u64); 4] {
        [
            (Unit::Ios, Applies::ReadWrite, self.rw_ios_per_sec),
            (Unit::Bytes, Applies::ReadWrite, self.rw_mbytes_per_sec.saturating_mul(MBYTE)),
            (Unit::Bytes, Applies::Read, self.r_mbytes_per_sec.saturating_mul(MBYTE)),
            (Unit::Bytes, Applies::Write, self.w_mbytes_per_sec.saturating_mul(MBYTE)),
        ]
    }

    /// The (name, value) pairs, in SPDK's order.
    pub fn named(&self) -> [(&'static str, u64); 4] {
        [
            ("rw_ios_per_sec", self.rw_ios_per_sec),
            ("rw_mbytes_per_sec", self.rw_mbytes_per_sec),
            ("r_mbytes_per_sec", self.r_mbytes_per_sec),
            ("w_mbytes_per_sec", self.w_mbytes_per_sec),
        ]
    }
}

/// A complete limit: SPDK's four rates, optional burst rates above them with a burst
/// length, and whether unmap and write-zeroes are metered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QosSpec {
    /// The sustained rates.
    pub limits: RateLimits,
    /// Burst rates, per limit (0: no burst for it); each above its sustained rate.
    pub burst: RateLimits,
    /// How long a full burst lasts at its burst rate, in milliseconds.
    pub burst_length_ms: u64,
    /// Whether unmap and write-zeroes count (as one write I/O; write-zeroes also its bytes).
    pub meter_unmap: bool,
}

impl QosSpec {
    /// A spec of SPDK's limits only.
    pub fn spdk(limits: RateLimits) -> Self {
        QosSpec { limits, burst: RateLimits::default(), burst_length_ms: DEFAULT_BURST_MS, meter_unmap: false }
    }

    /// Checks bursts against the limits: each burst needs its limit, above it.
    pub fn validate(&self) -> Result<(), String> {
        for ((name, limit), (_, burst)) in self.limits.named().into_iter().zip(self.burst.named()) {
            if burst != 0 && limit == 0 {
                return Err(format!("a burst rate for {name} needs a {name} limit"));
            }
            if burst != 0 && burst <= limit {
                return Err(format!("burst rate {burst} for {name} must be above its limit {limit}"));
            }
        }
        if self.burst_length_ms == 0 || self.burst_length_ms > 3_600_000 {
            return Err(format!("burst_length_ms {} must be 1 to 3600000", self.burst_length_ms));
        }
        Ok(())
    }

    /// The buckets: per set limit, one at its rate, with room for the burst when one is
    /// set, plus one at the burst rate that caps how fast the burst is spent.
    pub fn buckets(&self) -> Vec<BucketSpec> {
        let mut out = Vec::new();
        for ((unit, applies, rate), (_, _, burst)) in self.limits.rates().into_iter().zip(self.burst.rates()) {
            if rate == 0 {
                continue;
            }
            let base = window(rate, DEFAULT_BUCKET_MS);
            let burst_room = burst.saturating_sub(rate).saturating_mul(self.burst_length_ms) / 1000;
            out.push(BucketSpec { unit, applies, rate, capacity: base.max(burst_room) });
            if burst > rate {
                out.push(BucketSpec { unit, applies, rate: burst, capacity: window(burst, DEFAULT_BUCKET_MS) });
            }
        }
        out
    }
}

/// Changes to a [`QosSpec`] as a method's parameters give them (a group's, a vhost
/// controller's): `None` leaves a value as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpecChanges {
    /// The sustained rates (`Some(0)` removes one).
    pub limits: RateChanges,
    /// The burst rates (`Some(0)` removes one).
    pub burst: RateChanges,
    /// `burst_length_ms`.
    pub burst_length_ms: Option<u64>,
    /// `meter_unmap`.
    pub meter_unmap: Option<bool>,
}

impl SpecChanges {
    /// Whether it changes nothing (SPDK: "No rate limits specified").
    pub fn is_empty(&self) -> bool {
        *self == SpecChanges::default()
    }

    /// `spec` with these changes applied (rates normalised as SPDK does). A limit removed
    /// takes its burst with it unless the same call names the burst.
    pub fn apply(&self, spec: QosSpec) -> QosSpec {
        let limits = self.limits.apply(spec.limits);
        let mut burst = self.burst.apply(spec.burst);
        let removed = |limit: Option<u64>, burst: Option<u64>| limit == Some(0) && burst.is_none();
        let (l, b) = (&self.limits, &self.burst);
        if removed(l.rw_ios_per_sec, b.rw_ios_per_sec) {
            burst.rw_ios_per_sec = 0;
        }
        if removed(l.rw_mbytes_per_sec, b.rw_mbytes_per_sec) {
            burst.rw_mbytes_per_sec = 0;
        }
        if removed(l.r_mbytes_per_sec, b.r_mbytes_per_sec) {
            burst.r_mbytes_per_sec = 0;
        }
        if removed(l.w_mbytes_per_sec, b.w_mbytes_per_sec) {
            burst.w_mbytes_per_sec = 0;
        }
        QosSpec {
            limits,
            burst,
            burst_length_ms: self.burst_length_ms.unwrap_or(spec.burst_length_ms),
            meter_unmap: self.meter_unmap.unwrap_or(spec.meter_unmap),
        }
    }
}

/// Tokens of `ms` milliseconds at `rate`, at least one.
fn window(rate: u64, ms: u64) -> u64 {
    ((rate as u128 * ms as u128 / 1000) as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_as_spdk_and_leave_unnamed_limits_alone() {
        let old = RateLimits { rw_ios_per_sec: 5000, r_mbytes_per_sec: 7, ..Default::default() };
        let new = RateChanges { rw_ios_per_sec: Some(1500), w_mbytes_per_sec: Some(u64::MAX), ..Default::default() }
            .apply(old);
        assert_eq!(new.rw_ios_per_sec, 2000, "rounded up to a multiple of 1000");
        assert_eq!(new.r_mbytes_per_sec, 7, "untouched");
        assert_eq!(new.w_mbytes_per_sec, MAX_MBYTES_PER_SEC, "clamped");
        let cleared = RateChanges { rw_ios_per_sec: Some(0), ..Default::default() }.apply(new);
        assert_eq!(cleared.rw_ios_per_sec, 0);
        assert!(RateChanges::default().is_empty());
    }

    #[test]
    fn a_removed_limit_takes_its_burst_unless_the_call_names_it() {
        let spec = QosSpec {
            limits: RateLimits { rw_ios_per_sec: 1000, w_mbytes_per_sec: 10, ..Default::default() },
            burst: RateLimits { rw_ios_per_sec: 5000, w_mbytes_per_sec: 20, ..Default::default() },
            ..QosSpec::spdk(RateLimits::default())
        };
        let off =
            SpecChanges { limits: RateChanges { rw_ios_per_sec: Some(0), ..Default::default() }, ..Default::default() };
        let got = off.apply(spec);
        assert_eq!((got.limits.rw_ios_per_sec, got.burst.rw_ios_per_sec), (0, 0));
        assert_eq!((got.limits.w_mbytes_per_sec, got.burst.w_mbytes_per_sec), (10, 20), "the other limit stays");
        got.validate().unwrap();
        let named = SpecChanges { burst: RateChanges { rw_ios_per_sec: Some(6000), ..Default::default() }, ..off };
        assert!(named.apply(spec).validate().is_err(), "a burst named without its limit is refused");
        assert!(SpecChanges::default().is_empty());
    }

    #[test]
    fn buckets_follow_the_limits_and_bursts() {
        let spec = QosSpec::spdk(RateLimits { rw_ios_per_sec: 10_000, w_mbytes_per_sec: 10, ..Default::default() });
        let b = spec.buckets();
        assert_eq!(b.len(), 2);
        assert_eq!((b[0].rate, b[0].capacity), (10_000, 200));
        assert_eq!((b[1].rate, b[1].applies), (10 * MBYTE, Applies::Write));
        let burst = QosSpec {
            burst: RateLimits { rw_ios_per_sec: 50_000, ..Default::default() },
            burst_length_ms: 2000,
            ..spec
        };
        burst.validate().unwrap();
        let b = burst.buckets();
        assert_eq!(b.len(), 3);
        assert_eq!((b[0].rate, b[0].capacity), (10_000, 80_000), "room for 2 s at 40,000 above the rate");
        assert_eq!((b[1].rate, b[1].capacity), (50_000, 1000), "the peak bucket");
        let bad = QosSpec { burst: RateLimits { rw_ios_per_sec: 10_000, ..Default::default() }, ..spec };
        assert!(bad.validate().is_err(), "a burst must exceed its limit");
    }
}

#[cfg(test)]
mod burst_tests {
    use super::*;
    use crate::bdev::qos::bucket::{Acquire, Cost, Limiter};

    /// A greedy reader on a fake nanosecond clock: I/Os completed by each whole second.
    fn per_second(spec: &QosSpec, secs: u64) -> Vec<u64> {
        const HZ: u64 = 1_000_000_000;
        let l = Limiter::new(spec.buckets(), HZ, 0);
        let n = l.specs().len();
        let mut local = vec![0; n];
        let (mut now, mut done, mut out) = (0u64, 0u64, Vec::new());
        let c = Cost { read: true, bytes: 4096 };
        while now < secs * HZ {
            let cost: Vec<u64> = l.specs().iter().map(|s| s.cost(c)).collect();
            match l.acquire(1, &cost, 1, &mut local, now) {
                Acquire::Granted => {
                    local.iter_mut().zip(&cost).for_each(|(l, c)| *l -= c);
                    done += 1;
                }
                Acquire::Wait { until } => {
                    while out.len() < (until / HZ).min(secs) as usize {
                        out.push(done);
                    }
                    now = until;
                }
            }
        }
        std::iter::once(out[0]).chain(out.windows(2).map(|w| w[1] - w[0])).collect()
    }

    #[test]
    fn a_burst_runs_at_its_rate_for_its_length_then_the_limit_holds() {
        // 1000 IOPS, bursts of 5000 IOPS lasting 2 s.
        let spec = QosSpec {
            limits: RateLimits { rw_ios_per_sec: 1000, ..Default::default() },
            burst: RateLimits { rw_ios_per_sec: 5000, ..Default::default() },
            burst_length_ms: 2000,
            meter_unmap: false,
        };
        let s = per_second(&spec, 5);
        // Two seconds at the burst rate (8000 tokens of room, spent at 4000/s above the
        // limit; the peak bucket caps the rate), then exactly the limit.
        assert!((s[0] + s[1]).abs_diff(10_000) <= 5, "{s:?}");
        assert!(s[0] <= 5000 + 100 + 1 && s[1] <= 5000 + 1, "never above the burst rate: {s:?}");
        assert!(s[2..].iter().all(|&x| x.abs_diff(1000) <= 2), "{s:?}");
        assert!(s.iter().sum::<u64>() <= 5 * 1000 + 8000 + 2, "{s:?}");
    }
}
