//! The framework: reactors (one pinned thread per core), pollers, message passing,
//! per-thread I/O channels, and a cheap tick clock. Nothing here knows about storage.

pub mod cpumask;
pub mod io_channel;
pub mod reactor;
pub mod ticks;

pub use cpumask::Cpumask;
pub use io_channel::{get_channel, IoDeviceId};
pub use reactor::{
    call, call_on_each, current_index, poller_register, reactors, register_interrupt, send, FrameworkError,
    InterruptSource, PollStatus, Poller, ReactorHandle,
};
