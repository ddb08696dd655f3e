//! When a lost controller is tried again, when its I/O starts failing, and when it is given
//! up: SPDK's `ctrlr_loss_timeout_sec`, `reconnect_delay_sec` and `fast_io_fail_timeout_sec`.
//! Pure timing, so every transport's controller shares it and tests need no clock.

use std::time::{Duration, Instant};

/// SPDK's reconnect parameters (defaults 0, 0, 0: one immediate reset, then deletion).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReconnectPolicy {
    /// Seconds to keep trying before the controller is deleted; -1 forever, 0 one attempt.
    pub ctrlr_loss_timeout_sec: i32,
    /// Seconds between attempts (0: no delayed attempts).
    pub reconnect_delay_sec: u32,
    /// Seconds after the loss from which queued and new I/O fails (0: never before deletion).
    pub fast_io_fail_timeout_sec: u32,
}

/// What to do after a reconnect attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try again at this time.
    RetryAt(Instant),
    /// Give the controller up.
    Delete,
}

impl ReconnectPolicy {
    /// SPDK's rules for the three values (`bdev_nvme_check_io_error_resiliency_params`).
    pub fn validate(&self) -> Result<(), String> {
        let (loss, delay, fast) =
            (self.ctrlr_loss_timeout_sec, self.reconnect_delay_sec, self.fast_io_fail_timeout_sec);
        if loss < -1 {
            return Err("ctrlr_loss_timeout_sec can't be less than -1".into());
        }
        if loss == -1 && delay == 0 {
            return Err("reconnect_delay_sec can't be 0 if ctrlr_loss_timeout_sec is -1".into());
        }
        if loss > 0 {
            if delay == 0 {
                return Err("reconnect_delay_sec can't be 0 if ctrlr_loss_timeout_sec is not 0".into());
            }
            if delay > loss as u32 {
                return Err("reconnect_delay_sec can't be more than ctrlr_loss_timeout_sec".into());
            }
        }
        if loss == 0 && delay != 0 {
            return Err("reconnect_delay_sec must be 0 if ctrlr_loss_timeout_sec is 0".into());
        }
        if fast != 0 {
            if fast < delay {
                return Err("fast_io_fail_timeout_sec can't be less than reconnect_delay_sec".into());
            }
            if loss >= 0 && fast >= loss.max(0) as u32 {
                return Err("fast_io_fail_timeout_sec must be less than ctrlr_loss_timeout_sec".into());
            }
        }
        Ok(())
    }

    /// After an attempt failed at `now`, for a controller lost since `since`.
    pub fn after_failed_attempt(&self, since: Instant, now: Instant) -> Next {
        match self.ctrlr_loss_timeout_sec {
            0 => Next::Delete,
            loss if loss > 0 && now.duration_since(since) >= Duration::from_secs(loss as u64) => Next::Delete,
            _ => Next::RetryAt(now + Duration::from_secs(self.reconnect_delay_sec as u64)),
        }
    }

    /// Whether I/O waiting for a controller lost since `since` fails at `now`.
    pub fn io_fails(&self, since: Instant, now: Instant) -> bool {
        self.fast_io_fail_timeout_sec != 0
            && now.duration_since(since) >= Duration::from_secs(self.fast_io_fail_timeout_sec as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(loss: i32, delay: u32, fast: u32) -> ReconnectPolicy {
        ReconnectPolicy { ctrlr_loss_timeout_sec: loss, reconnect_delay_sec: delay, fast_io_fail_timeout_sec: fast }
    }

    #[test]
    fn spdk_rules_for_the_three_values() {
        assert!(p(0, 0, 0).validate().is_ok());
        assert!(p(-1, 1, 0).validate().is_ok());
        assert!(p(10, 2, 5).validate().is_ok());
        assert!(p(-1, 0, 0).validate().is_err());
        assert!(p(10, 0, 0).validate().is_err());
        assert!(p(2, 5, 0).validate().is_err());
        assert!(p(0, 1, 0).validate().is_err());
        assert!(p(10, 2, 1).validate().is_err(), "fast below delay");
        assert!(p(10, 2, 10).validate().is_err(), "fast not below loss");
        assert!(p(-2, 1, 0).validate().is_err());
    }

    #[test]
    fn attempts_are_spaced_until_the_loss_timeout_and_io_fails_after_fast_fail() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        assert_eq!(p(0, 0, 0).after_failed_attempt(t0, t0), Next::Delete);
        let q = p(10, 2, 4);
        assert_eq!(q.after_failed_attempt(t0, s(1)), Next::RetryAt(s(3)));
        assert_eq!(q.after_failed_attempt(t0, s(9)), Next::RetryAt(s(11)));
        assert_eq!(q.after_failed_attempt(t0, s(10)), Next::Delete);
        assert_eq!(p(-1, 1, 0).after_failed_attempt(t0, s(100_000)), Next::RetryAt(s(100_001)));
        assert!(!q.io_fails(t0, s(3)));
        assert!(q.io_fails(t0, s(4)));
        assert!(!p(-1, 1, 0).io_fails(t0, s(100_000)));
    }
}
