//! The blobstore: a pool of clusters on one base bdev, carved into blobs (cluster maps with
//! per-granule validity, extended attributes, parent links), with crash-consistent metadata.
//! Logical volumes (`bdev/modules/lvol`) are built on it. It knows bdevs only through the bdev
//! interface (`dev.rs`). Format, crash-consistency argument and recovery: docs/blobstore.md.
//!
//! - `format.rs`: the bytes on disk (super blocks, log and checkpoint blocks, records)
//! - `state.rs`: the metadata in memory, changed only by applying records
//! - `load.rs`: super block choice, checkpoint read, log replay (shared with offline tools)
//! - `store.rs`: the engine on its reactor: log with group commit, checkpoints, allocation
//! - `blob_io.rs`: a blob's data path (reads through the chain, copy-on-write per granule, unmap)
//! - `forward.rs`: the paths that hand the caller's own I/O to the base (owned clusters, first
//!   writes of whole granules) and park writes until the log holds their records
//! - `alloc_share.rs`: each blob's allocated clusters, readable from any thread
//! - `write_targets.rs`: where an lvol channel's writes of owned clusters go, valid while
//!   the store's version is
//! - `ops.rs`: snapshot, clone, delete, resize, inflate, decouple, shallow copy
//! - `check.rs`: the offline checker (`ferry-blobck`, and the crash campaign after each crash)

pub mod alloc_share;
pub mod blob_io;
pub mod check;
mod cluster_lock;
#[cfg(test)]
pub(crate) mod crash_tests;
pub mod dev;
pub mod format;
pub mod forward;
#[cfg(test)]
mod hostile_tests;
pub mod load;
pub mod ops;
pub mod state;
pub mod store;
#[cfg(test)]
mod tests;
pub mod write_targets;

pub use format::Parent;
pub use store::{CreateOpts, Store};
use thiserror::Error;
pub use write_targets::WriteTargets;

/// Why a blobstore operation failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The device holds no store.
    #[error("no blobstore found on the device")]
    NotAStore,
    /// The store's metadata is damaged beyond loading.
    #[error("blobstore metadata is corrupt: {0}")]
    Corrupt(String),
    /// A parameter is out of range; the text says which.
    #[error("{0}")]
    Invalid(String),
    /// No blob of that id.
    #[error("blob {0} does not exist")]
    NoSuchBlob(u64),
    /// The blob is in a state that forbids it (clones, say).
    #[error("{0}")]
    Busy(String),
    /// Device I/O failed (or ENOSPC: no free cluster).
    #[error("blobstore I/O failed: {}", std::io::Error::from_raw_os_error(*.0))]
    Io(i32),
    /// The bdev layer refused.
    #[error(transparent)]
    Bdev(#[from] crate::bdev::BdevError),
}

impl StoreError {
    /// The errno SPDK would report (positive).
    pub fn errno(&self) -> i32 {
        match self {
            StoreError::NotAStore => libc::EILSEQ,
            StoreError::Corrupt(_) => libc::EILSEQ,
            StoreError::Invalid(_) => libc::EINVAL,
            StoreError::NoSuchBlob(_) => libc::ENOENT,
            StoreError::Busy(_) => libc::EBUSY,
            StoreError::Io(e) => *e,
            StoreError::Bdev(e) => e.errno(),
        }
    }
}
