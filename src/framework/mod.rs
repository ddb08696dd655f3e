//! The framework: reactors (one pinned thread per core), pollers, message passing,
//! per-thread I/O channels, and a cheap tick clock. Nothing here knows about storage.

pub mod connections;
pub mod control_plane;
pub mod cpu_lock;
pub mod cpumask;
pub mod id_hash;
pub mod io_channel;
pub mod lockfile;
pub mod notifier;
pub mod prefetch;
pub mod reactor;
pub mod socket;
pub mod task;
pub mod ticks;
pub mod worker_pool;

pub use cpumask::Cpumask;
pub use io_channel::{get_channel, IoDeviceId};
pub use reactor::{
    call, call_on_each, current_index, for_each_reactor, poller_register, reactors, register_interrupt, round_start,
    send, FrameworkError, InterruptSource, PollStatus, Poller, ReactorHandle,
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

    /// Run count of the one poller named `name` on reactor `reactor`.
    #[track_caller]
    pub fn poller_runs(reactor: usize, name: &str) -> u64 {
        let wanted = name.to_string();
        let runs: Vec<u64> = super::call(reactor, move || {
            super::reactor::pollers().into_iter().filter(|p| p.name == wanted).map(|p| p.run_count).collect()
        })
        .expect("reactor answers");
        assert_eq!(runs.len(), 1, "exactly one poller {name} on reactor {reactor}: {runs:?}");
        runs[0]
    }

    /// Waits (up to 10 s) until the one poller named `name` on reactor `reactor` has run
    /// again: proof that it looked at its work after this call began (the count is read on
    /// the reactor between poller runs, so a higher count comes from a later run). Use it
    /// instead of a sleep before checking that something did *not* happen.
    #[track_caller]
    pub fn wait_polled(reactor: usize, name: &str) {
        let first = poller_runs(reactor, name);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while poller_runs(reactor, name) == first {
            assert!(std::time::Instant::now() < deadline, "poller {name} on reactor {reactor} never ran again");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}
