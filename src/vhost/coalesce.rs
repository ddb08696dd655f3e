//! Interrupt coalescing for one virtqueue (SPDK's `vhost_controller_set_coalescing`).
//!
//! Above a completion rate (the threshold), a queue interrupts the guest at most once per
//! delay; below it, at once. The rate is measured over windows of 10 ms, so coalescing
//! follows load changes quickly. Two rules keep a stalled or bursting driver from defeating
//! the bound:
//! - A window in which nothing completed is not closed. It is only ever looked at because an
//!   interrupt held back keeps the queue polling, and that interrupt goes out when its delay
//!   ends anyway. Closing it would read a rate of 0 and switch coalescing off for the whole of
//!   the next window, however fast completions then come: a driver that paused for 10 ms
//!   would get one interrupt per completion for the next 10 ms.
//! - A window that already holds more completions than the threshold allows in a whole
//!   window switches coalescing on at once, without waiting for the window to end. A burst
//!   after a quiet window is coalesced from its threshold-th completion on.

use crate::framework::ticks;

/// Windows per second: the rate is measured over 10 ms.
const WINDOWS_PER_SECOND: u64 = 100;

/// Coalescing settings: above `iops_threshold` completions per second, interrupts are sent at
/// most once per `delay_ticks`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Coalescing {
    /// Minimum ticks between interrupts when coalescing (0 = off).
    pub delay_ticks: u64,
    /// Completions per second above which coalescing starts.
    pub iops_threshold: u64,
}

/// One queue's coalescing state: the settings, the current rate window and the last
/// interrupt.
#[derive(Debug)]
pub(crate) struct Coalescer {
    settings: Coalescing,
    tick_rate: u64,
    window_start: u64,
    window_completions: u64,
    /// Whether the last measured rate was above the threshold.
    busy: bool,
    last_signal: u64,
}

impl Coalescer {
    /// A coalescer with `settings`, its first window starting now.
    pub(crate) fn new(settings: Coalescing) -> Coalescer {
        Coalescer::at(settings, ticks::now(), ticks::tick_rate())
    }

    /// [`Coalescer::new`] at tick `now`, with `tick_rate` ticks per second.
    fn at(settings: Coalescing, now: u64, tick_rate: u64) -> Coalescer {
        Coalescer { settings, tick_rate, window_start: now, window_completions: 0, busy: false, last_signal: 0 }
    }

    /// Changes the settings. The rate is measured afresh from now: what completed while the
    /// old settings held says nothing about the new threshold's window.
    pub(crate) fn set(&mut self, settings: Coalescing) {
        self.settings = settings;
        self.window_start = ticks::now();
        self.window_completions = 0;
        self.busy = false;
    }

    /// Counts one completion.
    #[inline]
    pub(crate) fn count_completion(&mut self) {
        self.window_completions += 1;
    }

    /// Whether the interrupt owed now is held back; if it is not, it counts as sent.
    #[inline]
    pub(crate) fn hold(&mut self) -> bool {
        // Without coalescing no clock is read.
        self.settings.delay_ticks > 0 && self.hold_at(ticks::now())
    }

    /// [`Coalescer::hold`] at tick `now`, coalescing on.
    fn hold_at(&mut self, now: u64) -> bool {
        let elapsed = now.saturating_sub(self.window_start);
        let threshold = self.settings.iops_threshold;
        if elapsed >= self.tick_rate / WINDOWS_PER_SECOND {
            if self.window_completions > 0 {
                let rate = self.window_completions.saturating_mul(self.tick_rate) / elapsed;
                self.busy = rate > threshold;
                self.window_start = now;
                self.window_completions = 0;
            }
        } else if self.window_completions.saturating_mul(WINDOWS_PER_SECOND) > threshold {
            self.busy = true;
        }
        if self.busy && now.saturating_sub(self.last_signal) < self.settings.delay_ticks {
            return true;
        }
        self.last_signal = now;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One tick per microsecond: a window is 10,000 ticks.
    const RATE: u64 = 1_000_000;
    const MS: u64 = 1_000;

    /// A coalescer with a 20 ms delay above `threshold` IOPS, its window starting at 0.
    fn coalescer(threshold: u64) -> Coalescer {
        Coalescer::at(Coalescing { delay_ticks: 20 * MS, iops_threshold: threshold }, 0, RATE)
    }

    /// Completes one request at each of `times` (with a signal attempt right after, as a
    /// queue's poll does) and returns the times whose interrupt went out at once.
    fn sent_at(c: &mut Coalescer, times: impl IntoIterator<Item = u64>) -> Vec<u64> {
        times
            .into_iter()
            .filter(|&t| {
                c.count_completion();
                !c.hold_at(t)
            })
            .collect()
    }

    #[test]
    fn off_or_below_the_threshold_every_completion_interrupts() {
        let mut off = Coalescer::at(Coalescing::default(), 0, RATE);
        assert_eq!(sent_at(&mut off, (0..1000).map(|i| i * 10)).len(), 1000);
        // One completion per 10 ms is 100 IOPS, below a threshold of 1000.
        let mut slow = coalescer(1000);
        assert_eq!(sent_at(&mut slow, (1..50).map(|i| i * 10 * MS)).len(), 49);
    }

    #[test]
    fn above_the_threshold_interrupts_are_one_delay_apart() {
        let mut c = coalescer(1000);
        // 100,000 IOPS for a second.
        let sent = sent_at(&mut c, (0..100_000).map(|i| i * 10));
        // The threshold allows 10 completions per 10 ms window: the first 10 go out at once,
        // and the 11th shows the rate is above it.
        assert_eq!(sent[..10], (0..10).map(|i| i * 10).collect::<Vec<_>>());
        let coalesced = &sent[9..];
        assert!(coalesced.windows(2).all(|w| w[1] - w[0] >= 20 * MS), "{sent:?}");
        assert!(coalesced.len() <= 1000 / 20 + 1, "{} interrupts in a second", sent.len());
    }

    #[test]
    fn a_stall_with_an_interrupt_held_back_does_not_switch_coalescing_off() {
        // A delay of 25 ms, so that it ends between two window boundaries.
        let mut c = Coalescer::at(Coalescing { delay_ticks: 25 * MS, iops_threshold: 1 }, 0, RATE);
        // 100,000 IOPS from 30 ms to 58 ms: interrupts at 30 and 55 ms, windows closed at 30,
        // 40, 50 and 60 ms.
        let mut sent = sent_at(&mut c, (3_000..5_800).map(|i| i * 10));
        assert_eq!(sent, [30 * MS, 55 * MS]);
        // The driver stops for 12 ms while the interrupt for its last completions is held
        // back; the queue polls every 100 µs and tries the signal again until it goes out.
        // Nothing completes from 60 to 70 ms, and the interrupt still waits for its delay.
        sent.extend((58 * MS..70 * MS).step_by(100).find(|&t| !c.hold_at(t)));
        sent.extend((70 * MS..90 * MS).step_by(100).find(|&t| !c.hold_at(t)));
        assert_eq!(sent[2..], [80 * MS], "the held interrupt goes out when its delay ends");
        // The driver resumes at 100,000 IOPS, still one interrupt per delay.
        sent.extend(sent_at(&mut c, (0..4_000).map(|i| 81 * MS + i * 10)));
        assert!(sent.windows(2).all(|w| w[1] - w[0] >= 25 * MS), "interrupts at {sent:?}");
    }

    #[test]
    fn a_burst_after_a_quiet_window_is_coalesced_from_its_threshold_on() {
        let mut c = coalescer(10_000);
        // Quiet: 1,000 IOPS for 50 ms, every completion interrupts.
        assert_eq!(sent_at(&mut c, (1..=50).map(|i| i * MS)).len(), 50);
        // A burst of 1,000,000 IOPS: the window holds the threshold's 100 completions per
        // 10 ms after 100 µs, and the interrupts stop there.
        let burst = sent_at(&mut c, (1..=10_000).map(|i| 50 * MS + i));
        assert_eq!(burst.len(), 100, "interrupts in the burst: {burst:?}");
    }

    #[test]
    fn the_first_completion_after_an_idle_second_interrupts_at_once() {
        let mut c = coalescer(1000);
        let busy = sent_at(&mut c, (0..10_000).map(|i| i * 10));
        let last = *busy.last().unwrap();
        // Idle for a second: the held interrupt went out at its delay.
        assert!(!c.hold_at(last + 20 * MS));
        assert_eq!(sent_at(&mut c, [last + 1_020 * MS]), [last + 1_020 * MS]);
    }
}
