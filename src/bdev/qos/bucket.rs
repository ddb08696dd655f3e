//! The shared token buckets of one limit (a bdev's or a group's) and the leases channels take
//! from them. Pure arithmetic on a clock the caller passes in (`now` in ticks of `hz` per
//! second), so the unit tests drive it with a fake clock.
//!
//! Levels are kept in *token-ticks* (tokens × `hz`): a refill over `dt` ticks adds exactly
//! `rate × dt`, an integer, so no rounding is ever lost however the refills are sliced.
//! A grant may drive a level below zero (a debt, repaid by the refill) when an I/O costs more
//! than is left; an I/O is only held back while a level it needs is at or below zero.
//! Channels that are held back wait in one FIFO per bucket, so a busy channel cannot take
//! every refill from a second one, and a channel waiting for read tokens does not hold up
//! writers.

use std::collections::VecDeque;
use std::sync::Mutex;

/// What a bucket counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// One token per I/O.
    Ios,
    /// One token per byte.
    Bytes,
}

/// Which I/O a bucket meters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applies {
    /// Reads and writes.
    ReadWrite,
    /// Reads only.
    Read,
    /// Writes only.
    Write,
}

/// One bucket: what it counts, its refill rate (tokens per second) and its capacity (tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketSpec {
    /// What a token is.
    pub unit: Unit,
    /// Which I/O it meters.
    pub applies: Applies,
    /// Tokens per second (more than 0).
    pub rate: u64,
    /// Most tokens it holds (the burst it allows after idling; at least 1).
    pub capacity: u64,
}

/// What one I/O costs, before it is matched against the buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// A read (else a write).
    pub read: bool,
    /// Bytes it moves (0 for I/O that is counted only as an operation).
    pub bytes: u64,
}

impl BucketSpec {
    /// Tokens `cost` takes from this bucket (0 when the bucket does not meter it).
    #[inline]
    pub fn cost(&self, cost: Cost) -> u64 {
        let applies = match self.applies {
            Applies::ReadWrite => true,
            Applies::Read => cost.read,
            Applies::Write => !cost.read,
        };
        match (applies, self.unit) {
            (false, _) => 0,
            (true, Unit::Ios) => 1,
            (true, Unit::Bytes) => cost.bytes,
        }
    }

    /// The tokens a channel takes at once: about 250 µs of the rate, at most a quarter of
    /// the capacity, at least one. Small enough that leases held by idle channels are a
    /// negligible part of any window, large enough that a channel takes the lock once per
    /// hundreds of I/Os at high rates.
    pub fn lease(&self) -> u64 {
        (self.rate / 4000).min(self.capacity / 4).max(1)
    }
}

/// Most buckets one limiter has (four SPDK limits, each with an optional peak bucket).
pub const MAX_BUCKETS: usize = 8;

/// The result of [`Limiter::acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquire {
    /// The channel's local tokens now cover the cost.
    Granted,
    /// Not now: ask again at tick `until` (the channel is queued in the limiter's FIFO).
    Wait {
        /// When a level it needs is positive again (or its turn may have come).
        until: u64,
    },
}

struct State {
    /// Token-ticks per bucket.
    level: Vec<i128>,
    /// Tick of the last refill.
    last: u64,
    /// Per bucket, channels waiting for it (ticket, target in token-ticks), in arrival
    /// order.
    waiters: Vec<VecDeque<(u64, i128)>>,
}

/// The shared buckets of one limit. Channels reach it only to take a lease (once per many
/// I/Os) or while they wait; the hot path spends leased tokens without touching it.
pub struct Limiter {
    specs: Vec<BucketSpec>,
    lease: Vec<u64>,
    hz: u64,
    state: Mutex<State>,
}

impl Limiter {
    /// Buckets `specs` (at most [`MAX_BUCKETS`]), full at tick `now`, on a clock of `hz`
    /// ticks per second.
    pub fn new(specs: Vec<BucketSpec>, hz: u64, now: u64) -> Self {
        assert!(specs.len() <= MAX_BUCKETS && hz > 0);
        let level = specs.iter().map(|s| s.capacity as i128 * hz as i128).collect();
        let lease = specs.iter().map(BucketSpec::lease).collect();
        let waiters = specs.iter().map(|_| VecDeque::new()).collect();
        Limiter { specs, lease, hz, state: Mutex::new(State { level, last: now, waiters }) }
    }

    /// The buckets.
    pub fn specs(&self) -> &[BucketSpec] {
        &self.specs
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refill(&self, s: &mut State, now: u64) {
        // Reactors' clocks may disagree by a few ticks: time never runs backwards here.
        let dt = now.saturating_sub(s.last);
        if dt == 0 {
            return;
        }
        s.last = now;
        let State { level, waiters, .. } = s;
        for ((level, spec), waiting) in level.iter_mut().zip(&self.specs).zip(waiters.iter()) {
            // While channels wait, the bucket holds at least what they are owed: tokens earned
            // at the rate while a waiter's reactor is late to its turn are its, not an
            // overflow (capped at the capacity, two 128 KiB waiters on a 10 MiB/s limit lost
            // a sixth of the rate). No burst comes of it: only waiters take these tokens.
            let owed: i128 = waiting.iter().map(|w| w.1).sum();
            let full = (spec.capacity as i128 * self.hz as i128).max(owed);
            *level = (*level + spec.rate as i128 * dt as i128).min(full);
        }
    }

    /// Tops up `local` (the channel's leased tokens, one per bucket) so that it covers
    /// `cost` (tokens per bucket), for the channel holding `ticket`. Buckets already covered
    /// take nothing; the others grant a lease, or up to `backlog` times the cost when that
    /// much is in the bucket (a channel with that many I/Os waiting spends it at once, so a
    /// turn that came late takes what piled up instead of letting the bucket overflow).
    ///
    /// A channel is served from a bucket once it holds the channel's *target* (a lease, or
    /// the I/O's need if larger, at most the whole bucket) on top of the targets of every
    /// channel waiting before it: waiting channels are served in arrival order, and one
    /// that is late to its turn (its reactor asleep or preempted) does not hold up the
    /// others while tokens pile up, since they only take what lies beyond its target.
    /// Otherwise the channel joins the bucket's FIFO (once) and is told when to ask again.
    pub fn acquire(&self, ticket: u64, cost: &[u64], backlog: u64, local: &mut [u64], now: u64) -> Acquire {
        if cost.iter().zip(local.iter()).all(|(c, l)| c <= l) {
            return Acquire::Granted;
        }
        let mut s = self.lock();
        self.refill(&mut s, now);
        let hz = self.hz as i128;
        let mut reserved = [0i128; MAX_BUCKETS];
        let (mut blocked, mut wait_ticks) = (false, 0u64);
        for (i, spec) in self.specs.iter().enumerate() {
            if cost[i] <= local[i] {
                continue;
            }
            let need = cost[i] - local[i];
            let target = need.max(self.lease[i]).min(spec.capacity) as i128 * hz;
            let ahead = s.waiters[i].iter().position(|w| w.0 == ticket).unwrap_or(s.waiters[i].len());
            reserved[i] = s.waiters[i].iter().take(ahead).map(|w| w.1).sum();
            if s.level[i] < reserved[i] + target {
                blocked = true;
                if ahead == s.waiters[i].len() {
                    s.waiters[i].push_back((ticket, target));
                }
                // Its turn, if those ahead are served on time.
                let missing = reserved[i] + target - s.level[i];
                wait_ticks = wait_ticks.max((missing / spec.rate as i128) as u64 + 1);
            }
        }
        if blocked {
            // Never sooner than 50 µs: a channel behind others does not ask in a loop.
            let floor = (self.hz / 20_000).max(1);
            return Acquire::Wait { until: now + wait_ticks.max(floor) };
        }
        for i in 0..self.specs.len() {
            let need = cost[i].saturating_sub(local[i]);
            if need == 0 {
                continue;
            }
            // It takes its target, and more only out of what lies beyond the targets of
            // every other waiting channel (ahead or behind it): a late turn takes what piled
            // up, not the others' shares.
            let target = need.max(self.lease[i]).min(self.specs[i].capacity);
            let others: i128 = s.waiters[i].iter().filter(|w| w.0 != ticket).map(|w| w.1).sum();
            let beyond = ((s.level[i] - others).max(0) / hz) as u64;
            let want = self.lease[i].max(cost[i].saturating_mul(backlog).saturating_sub(local[i]));
            let grant = need.max(want.min(target.max(beyond)));
            s.level[i] -= grant as i128 * hz;
            local[i] += grant;
            s.waiters[i].retain(|w| w.0 != ticket);
        }
        Acquire::Granted
    }

    /// Returns a channel's unspent leased tokens (capped at each bucket's capacity) and
    /// takes it out of the FIFO: a channel going away, or moving to new limits.
    pub fn give_back(&self, ticket: u64, local: &mut [u64]) {
        let mut s = self.lock();
        for w in &mut s.waiters {
            w.retain(|x| x.0 != ticket);
        }
        for (i, spec) in self.specs.iter().enumerate() {
            let full = spec.capacity as i128 * self.hz as i128;
            s.level[i] = (s.level[i] + local[i] as i128 * self.hz as i128).min(full);
            local[i] = 0;
        }
    }

    /// The level of bucket `i` in whole tokens at tick `now` (negative: a debt). For tests
    /// and reports.
    pub fn level(&self, i: usize, now: u64) -> i64 {
        let mut s = self.lock();
        self.refill(&mut s, now);
        (s.level[i] / self.hz as i128) as i64
    }

    /// Channels waiting now.
    pub fn waiting(&self) -> usize {
        let s = self.lock();
        let mut all: Vec<u64> = s.waiters.iter().flatten().map(|w| w.0).collect();
        all.sort_unstable();
        all.dedup();
        all.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HZ: u64 = 1_000_000_000; // the fake clock counts nanoseconds

    fn iops(rate: u64, capacity: u64) -> BucketSpec {
        BucketSpec { unit: Unit::Ios, applies: Applies::ReadWrite, rate, capacity }
    }

    fn bytes(applies: Applies, rate: u64, capacity: u64) -> BucketSpec {
        BucketSpec { unit: Unit::Bytes, applies, rate, capacity }
    }

    /// A greedy channel: issues an I/O whenever it may, asks again exactly when told.
    struct Chan {
        ticket: u64,
        local: Vec<u64>,
        next: u64,
        done: u64,
        bytes: u64,
    }

    impl Chan {
        fn new(ticket: u64, n: usize) -> Self {
            Chan { ticket, local: vec![0; n], next: 0, done: 0, bytes: 0 }
        }

        /// Issues I/O of `cost` at tick `now` until told to wait.
        fn run(&mut self, l: &Limiter, c: Cost, now: u64) {
            loop {
                let cost: Vec<u64> = l.specs().iter().map(|s| s.cost(c)).collect();
                match l.acquire(self.ticket, &cost, 1, &mut self.local, now) {
                    Acquire::Granted => {
                        for (loc, k) in self.local.iter_mut().zip(&cost) {
                            *loc -= k;
                        }
                        self.done += 1;
                        self.bytes += c.bytes;
                    }
                    Acquire::Wait { until } => {
                        assert!(until > now, "a wait must end in the future");
                        self.next = until;
                        return;
                    }
                }
            }
        }
    }

    #[test]
    fn one_channel_gets_exactly_the_rate_plus_the_burst() {
        // 1000 IOPS, 20 tokens of capacity: over 10 s, 20 + 10,000 I/Os, give or take the
        // token in debt and the lease still held.
        let l = Limiter::new(vec![iops(1000, 20)], HZ, 0);
        let mut ch = Chan::new(1, 1);
        let end = 10 * HZ;
        let c = Cost { read: true, bytes: 4096 };
        while ch.next < end {
            ch.run(&l, c, ch.next);
        }
        let want = 20 + 10_000;
        assert!(ch.done.abs_diff(want) <= 2, "{} I/Os, want {want}", ch.done);
    }

    #[test]
    fn refill_is_exact_however_it_is_sliced() {
        // 3 tokens per second on a nanosecond clock: 3e-9 tokens per tick, never rounded.
        let a = Limiter::new(vec![iops(3, 100)], HZ, 0);
        let b = Limiter::new(vec![iops(3, 100)], HZ, 0);
        for l in [&a, &b] {
            let mut local = vec![0];
            assert_eq!(l.acquire(1, &[100], 1, &mut local, 0), Acquire::Granted);
            assert_eq!(l.level(0, 0), 0, "drained");
        }
        // One refilled in 7919-tick steps over 10 s, the other once at the end.
        let end = 10 * HZ;
        let mut t = 0;
        while t < end {
            t = (t + 7919).min(end);
            a.level(0, t);
        }
        assert_eq!(a.level(0, end), 30, "exactly 3 tokens per second");
        assert_eq!(b.level(0, end), 30);
        // And 1/3 s later exactly one more, not 0.999...
        assert_eq!(a.level(0, end + HZ / 3 + 1), 31);
    }

    #[test]
    fn byte_limit_holds_with_io_larger_than_the_bucket() {
        // 10 MiB/s, 200 KiB capacity, 1 MiB writes: each goes in debt, the rate still holds.
        let rate = 10 << 20;
        let l = Limiter::new(vec![bytes(Applies::ReadWrite, rate, 200 << 10)], HZ, 0);
        let mut ch = Chan::new(7, 1);
        let end = 10 * HZ;
        let c = Cost { read: false, bytes: 1 << 20 };
        while ch.next < end {
            ch.run(&l, c, ch.next);
        }
        let want = 10 * rate + (200 << 10);
        assert!(ch.bytes <= want + (1 << 20), "{} bytes > {want} + one I/O", ch.bytes);
        assert!(ch.bytes + (1 << 20) >= want, "{} bytes < {want} - one I/O", ch.bytes);
    }

    #[test]
    fn read_and_write_buckets_meter_only_their_direction() {
        let l = Limiter::new(
            vec![bytes(Applies::Read, 1 << 20, 64 << 10), bytes(Applies::Write, 100 << 20, 64 << 10)],
            HZ,
            0,
        );
        let mut r = Chan::new(1, 2);
        let mut w = Chan::new(2, 2);
        let end = HZ;
        while r.next < end || w.next < end {
            if r.next <= w.next {
                r.run(&l, Cost { read: true, bytes: 4096 }, r.next);
            } else {
                w.run(&l, Cost { read: false, bytes: 4096 }, w.next);
            }
        }
        assert!(r.bytes <= (1 << 20) + (64 << 10) + 4096, "reads {}", r.bytes);
        assert!(w.bytes >= 90 << 20, "writes are limited by their own bucket only: {}", w.bytes);
    }

    #[test]
    fn a_second_channel_is_not_starved() {
        // Channel 1 asks every 10 µs whatever it was told (always first to see a refill);
        // channel 2 only asks when told. Without the FIFO, 1 would take nearly every token.
        let l = Limiter::new(vec![iops(100_000, 2000)], HZ, 0);
        let (mut a, mut b) = (Chan::new(1, 1), Chan::new(2, 1));
        let c = Cost { read: true, bytes: 512 };
        let end = 2 * HZ;
        let step = HZ / 100_000;
        let mut t = 0;
        while t < end {
            a.run(&l, c, t);
            if b.next <= t {
                b.run(&l, c, t);
            }
            t += step;
        }
        let total = a.done + b.done;
        assert!(b.done * 10 >= total * 4, "the polite channel got {} of {total}", b.done);
        assert!(a.done * 10 >= total, "the eager channel got {} of {total}", a.done);
        assert!(total <= 2 * 100_000 + 2000 + 2, "{total}");
    }

    #[test]
    fn two_channels_asking_when_told_share_evenly() {
        let l = Limiter::new(vec![iops(50_000, 1000)], HZ, 0);
        let (mut a, mut b) = (Chan::new(1, 1), Chan::new(2, 1));
        let c = Cost { read: false, bytes: 4096 };
        let end = 2 * HZ;
        while a.next < end || b.next < end {
            if a.next <= b.next {
                a.run(&l, c, a.next);
            } else {
                b.run(&l, c, b.next);
            }
        }
        let total = a.done + b.done;
        assert!(a.done.abs_diff(b.done) * 10 <= total, "{} vs {}", a.done, b.done);
        // Exact but for the tokens still leased or short of a lease at the end.
        assert!(total <= 101_002 && total + 40 >= 101_000, "{total}");
    }

    #[test]
    fn channels_woken_late_take_what_piled_up_and_lose_nothing() {
        // 1000 IOPS (leases of one token), two channels with 128 I/Os waiting each, woken
        // 1.5 ms after the tick they were told (a reactor sleeping in whole milliseconds).
        let l = Limiter::new(vec![iops(1000, 20)], HZ, 0);
        let mut local = [[0u64; 1]; 2];
        let mut next = [0u64; 2];
        let mut done = [0u64; 2];
        let end = 10 * HZ;
        let late = 1_500_000;
        loop {
            let k = if next[0] <= next[1] { 0 } else { 1 };
            let now = next[k];
            if now >= end {
                break;
            }
            loop {
                match l.acquire(k as u64 + 1, &[1], 128, &mut local[k], now) {
                    Acquire::Granted => {
                        local[k][0] -= 1;
                        done[k] += 1;
                    }
                    Acquire::Wait { until } => {
                        next[k] = until + late;
                        break;
                    }
                }
            }
        }
        let total = done[0] + done[1];
        assert!(total.abs_diff(10_000 + 20) <= 2 * 128 + 2, "{done:?}: the late turns lost tokens");
        assert!(done[0].abs_diff(done[1]) * 5 <= total, "{done:?}");
    }

    #[test]
    fn large_io_from_two_late_channels_loses_no_bytes() {
        // 10 MiB/s with the default 20 ms bucket (about 205 KiB): two channels writing
        // 128 KiB each, woken 8 ms after the tick they were told. Their two targets (256 KiB)
        // exceed the bucket, so the second waiter's tokens must pile up beyond it while the
        // first is late; capped at the capacity they were lost (-16% measured on 2 reactors).
        let rate = 10 << 20;
        let l = Limiter::new(vec![bytes(Applies::ReadWrite, rate, rate / 50)], HZ, 0);
        let mut local = [[0u64; 1]; 2];
        let mut next = [0u64; 2];
        let mut moved = [0u64; 2];
        let (end, late, io) = (10 * HZ, 8_000_000, 128 << 10);
        loop {
            let k = if next[0] <= next[1] { 0 } else { 1 };
            let now = next[k];
            if now >= end {
                break;
            }
            loop {
                match l.acquire(k as u64 + 1, &[io], 32, &mut local[k], now) {
                    Acquire::Granted => {
                        local[k][0] -= io;
                        moved[k] += io;
                    }
                    Acquire::Wait { until } => {
                        next[k] = until + late;
                        break;
                    }
                }
            }
        }
        let total = moved[0] + moved[1];
        let want = 10 * rate + rate / 50;
        assert!(total.abs_diff(want) <= 3 * io, "{moved:?}: {total} bytes, want {want}");
    }

    #[test]
    fn idle_time_fills_the_bucket_to_capacity_only() {
        let l = Limiter::new(vec![iops(1000, 20)], HZ, 0);
        let mut ch = Chan::new(1, 1);
        ch.run(&l, Cost { read: true, bytes: 0 }, 0);
        assert_eq!(ch.done, 20);
        // An hour idle: still 20 (plus the one token of debt repaid).
        let later = 3600 * HZ;
        assert_eq!(l.level(0, later), 20);
        let mut local = vec![1_000_000];
        l.give_back(1, &mut local);
        assert_eq!(l.level(0, later), 20, "a return never overfills");
        assert_eq!(local, [0]);
    }

    #[test]
    fn leases_batch_at_high_rates_and_are_single_tokens_at_low_ones() {
        assert_eq!(iops(1_000_000, 20_000).lease(), 250);
        assert_eq!(iops(1000, 20).lease(), 1);
        assert_eq!(bytes(Applies::ReadWrite, 4 << 30, 80 << 20).lease(), (4u64 << 30) / 4000);
        // A bucket of 2 tokens lends one at a time.
        assert_eq!(iops(1_000_000, 2).lease(), 1);
    }

    #[test]
    fn a_waiting_channel_leaves_the_fifo_when_it_gives_back() {
        let l = Limiter::new(vec![iops(1000, 1)], HZ, 0);
        let mut a = Chan::new(1, 1);
        a.run(&l, Cost { read: true, bytes: 0 }, 0);
        let mut b = Chan::new(2, 1);
        b.run(&l, Cost { read: true, bytes: 0 }, 0);
        assert_eq!(l.waiting(), 2);
        l.give_back(1, &mut a.local);
        l.give_back(2, &mut b.local);
        assert_eq!(l.waiting(), 0);
    }
}
