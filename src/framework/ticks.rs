//! A cheap monotonic tick counter for the data path (SPDK's `spdk_get_ticks`).
//!
//! On x86_64 this is the TSC (a few cycles to read, constant-rate on every CPU this runs on);
//! elsewhere it falls back to `Instant`. `tick_rate()` gives ticks per second, calibrated once.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

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
}
