//! The block-device core: the `Bdev` handle and backend trait, `BdevIo`, descriptors and
//! claims, per-thread channels with statistics, the registry with examine hooks, and the
//! bdev modules (each in one place under `modules/`, with its own RPC methods).

pub mod buf;
pub mod channel;
pub mod desc;
pub mod device;
pub mod error;
pub mod histogram;
pub mod io;
pub mod modules;
pub mod qos;
pub mod range_lock;
#[cfg(test)]
mod range_lock_tests;
pub mod registry;
pub mod rpc;
pub mod stats;
#[cfg(test)]
pub(crate) mod test_gate;
#[cfg(test)]
mod tests;

pub use channel::{BdevChannel, RemapTarget};
pub use desc::{open, BdevDesc};
pub use device::{BackendChannel, Bdev, BdevBackend, BdevProps, IoHints};
pub use error::BdevError;
pub use io::{BdevIo, IoCallback, IoStatus, IoType};
pub use range_lock::RangeLock;

/// Something that happened to an open bdev.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BdevEvent {
    /// It was unregistered: close the descriptor.
    Remove,
    /// Its size changed.
    Resize,
}
