//! A cheap monotonic tick counter for the data path (SPDK's `spdk_get_ticks`).
//!
//! On x86_64 this is the TSC (a few cycles to read, constant-rate on every CPU this runs on);
//! elsewhere it falls back to `Instant`. `tick_rate()` gives ticks per second, calibrated once.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Not inside a poller's run: [`io_now`] reads the counter itself.
const NOT_BATCHED: u64 = u64::MAX;

thread_local! {
    /// Inside a poller's run, the tick its first I/O timestamp read (0: none read yet).
    static BATCH: Cell<u64> = const { Cell::new(NOT_BATCHED) };
}

/// The tick to stamp an I/O with (its submission or completion, for latency statistics):
/// inside a poller's run (see [`run_batched`]) every I/O shares the first reading since the
/// run began or [`new_reading`] was called (a drain of completions calls it), a few counter
/// reads per poller run instead of two per I/O (each read stalls the core for about 20
/// cycles). A latency's error is at most one run of one poller and its mean is not biased.
/// Anywhere else, the counter now.
#[inline]
pub fn io_now() -> u64 {
    BATCH.with(|b| match b.get() {
        NOT_BATCHED => now(),
        0 => {
            let t = now().max(1);
            b.set(t);
            t
        }
        t => t,
    })
}

/// Inside a poller's run, makes the next [`io_now`] read the counter again: a poller that
/// completes I/O it submitted in the same run (a vhost queue draining its RAM disk's
/// completions) calls it between the two, so those latencies are not zero.
#[inline]
pub fn new_reading() {
    BATCH.with(|b| {
        if b.get() != NOT_BATCHED {
            b.set(0);
        }
    });
}

/// Runs `f` (one run of a poller) with [`io_now`] read at most once (per [`new_reading`]).
#[inline]
pub fn run_batched<R>(f: impl FnOnce() -> R) -> R {
    struct End;
    impl Drop for End {
        fn drop(&mut self) {
            BATCH.with(|b| b.set(NOT_BATCHED));
        }
    }
    BATCH.with(|b| b.set(0));
    let _end = End;
    f()
}

/// The current tick count.
#[inline]
pub fn now() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC has no preconditions and touches no memory; it is present on every x86_64 CPU.
        #[allow(unused_unsafe)]
        unsafe {
            core::arch::x86_64::_rdtsc()
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        epoch().elapsed().as_nanos() as u64
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn epoch() -> &'static Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now)
}

/// Ticks per second.
pub fn tick_rate() -> u64 {
    static RATE: OnceLock<u64> = OnceLock::new();
    *RATE.get_or_init(calibrate)
}

fn calibrate() -> u64 {
    if cfg!(not(target_arch = "x86_64")) {
        return 1_000_000_000;
    }
    let start_instant = Instant::now();
    let start_ticks = now();
    std::thread::sleep(Duration::from_millis(20));
    let ticks = now().wrapping_sub(start_ticks);
    let nanos = start_instant.elapsed().as_nanos().max(1);
    ((ticks as u128 * 1_000_000_000) / nanos) as u64
}

/// Converts a duration to ticks.
pub fn from_duration(d: Duration) -> u64 {
    (d.as_nanos() * tick_rate() as u128 / 1_000_000_000) as u64
}

/// Converts ticks to microseconds (as a float, for reports).
pub fn to_micros(ticks: u64) -> f64 {
    ticks as f64 * 1_000_000.0 / tick_rate() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_advance_and_rate_is_plausible() {
        let a = now();
        std::thread::sleep(Duration::from_millis(2));
        assert!(now() > a);
        let rate = tick_rate();
        assert!(rate > 1_000_000, "tick rate {rate} is implausibly low");
        let micros = to_micros(from_duration(Duration::from_millis(1)));
        assert!((900.0..1100.0).contains(&micros), "{micros}");
    }

    /// Spins until the counter has moved past `t`.
    fn after(t: u64) {
        while now() <= t {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn a_pollers_run_stamps_every_io_with_its_first_reading_and_only_there() {
        let outside = io_now();
        after(outside);
        assert!(io_now() > outside, "outside a poller's run: the counter itself");
        let (first, second) = run_batched(|| {
            let first = io_now();
            after(first);
            (first, io_now())
        });
        assert_eq!(first, second, "one reading per run");
        assert!(first > outside);
        let (submitted, completed) = run_batched(|| {
            let submitted = io_now();
            after(submitted);
            new_reading();
            (submitted, io_now())
        });
        assert!(completed > submitted, "a new reading when asked for");
        new_reading();
        assert!(io_now() > completed, "outside a run, new_reading changes nothing");
        after(first);
        assert!(io_now() > first, "after the run: the counter itself again");
        // A panicking run ends its batch too.
        let _ = std::panic::catch_unwind(|| run_batched(|| panic!("poller bug")));
        let t = io_now();
        after(t);
        assert!(io_now() > t);
    }
}
