//! `nvme`: bdevs on the namespaces of a remote NVMe-oF/TCP controller, through Ferry's own
//! initiator (`ferry_nvme::host`). SPDK's `bdev_nvme_attach_controller` (trtype `tcp`) makes
//! one bdev `<name>n<nsid>` per active namespace.
//!
//! - `ctrlr.rs`: the attached controllers (a table for the RPCs) and each controller's admin
//!   queue, polled on reactor 0 (keep alive, reset and reconnect).
//! - `channel.rs`: one I/O queue pair per controller per reactor, made lazily by the first
//!   bdev channel on that reactor and shared by its namespaces' bdevs, with its poller; bdev
//!   I/O as NVMe commands (split at the controller's transfer limits), held while the
//!   controller reconnects and retried on the new queue.
//! - `backend.rs`: the bdev of one namespace.
//! - `options.rs`: `bdev_nvme_set_options` (the I/O command timeout and its reset).
//! - `rpc.rs`: the RPC methods.

mod backend;
mod channel;
mod ctrlr;
pub mod options;
mod rpc;

pub use rpc::METHODS;
