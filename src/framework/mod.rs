//! The framework: reactors (one pinned thread per core), pollers, message passing,
//! per-thread I/O channels, and a cheap tick clock. Nothing here knows about storage.

pub mod cpu_lock;
pub mod cpumask;
pub mod io_channel;
pub mod lockfile;
pub mod reactor;
pub mod socket;
pub mod ticks;
pub mod wait;

pub use cpumask::Cpumask;
pub use io_channel::{get_channel, IoDeviceId};
pub use reactor::{
    call, call_on_each, current_index, poller_register, reactors, register_interrupt, send, FrameworkError,
    InterruptSource, PollStatus, Poller, ReactorHandle,
};

/// Test support: one set of reactors per test process.
#[cfg(test)]
pub mod testing {
    use std::sync::Once;

    /// Starts two unpinned reactors once for the whole test binary.
    pub fn reactors() {
        static START: Once = Once::new();
        START.call_once(|| {
            super::reactor::start(&super::Cpumask::parse("0x3").unwrap(), false).expect("start reactors")
        });
    }
}
