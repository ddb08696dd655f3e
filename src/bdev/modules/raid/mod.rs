//! `raid`: SPDK's RAID bdevs (raid0, raid1, concat) over member bdevs, with SPDK's
//! `bdev_raid_*` methods. Beyond SPDK: raid1 arrays with a superblock keep a write-intent
//! bitmap, so a member that comes back gets only the regions written while it was away, and
//! an array not closed cleanly resyncs only the regions written since it was opened.
//!
//! - `layout.rs`: levels and where each block lives
//! - `array.rs`: an array's state, members and bitmaps; the list of arrays
//! - `io.rs`: the raid bdev and its data path (children on member channels, zero copy)
//! - `members.rs`: attach, online, fail/remove, add back, delete
//! - `rebuild.rs`: rebuild and resync under LBA range locks
//! - `superblock.rs`, `sb_io.rs`: the on-member format and its I/O
//! - `examine.rs`: arrays assemble themselves from their members' superblocks
//! - `rpc.rs`: the methods

pub mod array;
pub mod examine;
pub mod io;
pub mod layout;
pub mod members;
pub mod rebuild;
pub mod rpc;
pub mod sb_io;
pub mod superblock;

pub use rpc::METHODS;

/// The reactor where superblocks are written and processes run.
pub const MD_REACTOR: usize = 0;

/// Registers the examine hook (once, at start-up).
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| crate::bdev::registry::register_examine(examine::examine));
}

/// Closes every array cleanly (drained, superblock marked clean), for shutdown.
pub fn shutdown() {
    for a in array::list() {
        let r = crate::framework::task::block_on(MD_REACTOR, move || async move { members::delete(&a, false).await });
        if let Err(e) = r {
            tracing::error!(error = %e, "raid bdev not closed");
        }
    }
}
