//! `lvol`: SPDK's logical volumes on Ferry's blobstore. An lvstore is a blobstore on a base
//! bdev (claimed by this module); each lvol is a blob registered as a bdev named by its uuid
//! with the alias `lvs_name/lvol_name`. Everything an lvol is lives on disk: a restart finds
//! lvstores by examining bdevs as they appear (`examine`), as SPDK does, so no lvol RPC is
//! ever saved in a configuration.
//!
//! Every store lives on reactor 0 (SPDK's metadata thread): its state and its data path run
//! there; an lvol's channel on another reactor forwards I/O to it (`backend.rs`). RPCs run
//! their operations there as async tasks (`framework::task::block_on`).
//!
//! - `lvs.rs`: open stores (reactor-local) and their thread-safe descriptions; examine
//! - `backend.rs`: the lvol bdev (channel, forwarding, `driver_specific`)
//! - `rpc.rs`: the `bdev_lvol_*` methods
//! - `copy.rs`: the bandwidth limit of background copies (Ferry's `bdev_lvol_set_options`)

pub mod backend;
pub mod copy;
pub mod lvs;
pub mod rpc;

pub use rpc::METHODS;

/// Longest lvstore or lvol name (SPDK's `SPDK_LVS_NAME_MAX` - 1).
pub const NAME_MAX: usize = 63;

/// The reactor owning every lvstore.
pub const MD_REACTOR: usize = 0;

/// The blob xattr holding an lvol's name.
pub const XATTR_NAME: &str = "name";
/// The blob xattr holding an lvol's uuid.
pub const XATTR_UUID: &str = "uuid";
/// The blob xattr holding an lvol's clear method (`none`, `unmap`, `write_zeroes`).
pub const XATTR_CLEAR: &str = "clear_method";
/// The store xattr holding the lvstore's name.
pub const XATTR_LVS_NAME: &str = "name";
/// The store xattr holding the lvstore's default clear method.
pub const XATTR_LVS_CLEAR: &str = "clear_method";

/// Registers the examine hook (once, at start-up).
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| crate::bdev::registry::register_examine(lvs::examine));
}

/// Closes every lvstore cleanly (its lvols are unregistered, a final checkpoint is written),
/// for shutdown.
pub fn shutdown() {
    let closed = crate::framework::task::block_on(MD_REACTOR, || async {
        for open in lvs::open_stores() {
            let uuid = open.shared.uuid;
            let store = open.store.clone();
            drop(open);
            lvs::forget(uuid);
            if let Err(e) = store.close().await {
                tracing::error!(lvstore = %uuid, error = %e, "lvstore not closed cleanly");
            }
        }
    });
    if let Err(e) = closed {
        tracing::error!(error = %e, "lvstores not closed");
    }
}
