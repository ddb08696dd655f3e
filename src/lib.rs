//! Ferry: a storage appliance in the style of SPDK.
//!
//! Layers, bottom to top: [`framework`] (reactors, pollers, messages, I/O channels),
//! [`bdev`] (the block-device core and its modules), [`rpc`] (JSON-RPC management with
//! SPDK's method names) and [`app`] (start-up state, subsystems, saved configuration,
//! logging), with the [`vhost`] frontends on top and [`metrics`] (the Prometheus endpoint)
//! beside RPC; [`daemon`] puts them together as `ferryd`.

#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod app;
pub mod bdev;
pub mod blobstore;
pub mod daemon;
pub mod framework;
pub mod iscsi;
pub mod metrics;
pub mod net;
pub mod nvme;
pub mod nvmf;
pub mod rpc;
pub mod scsi;
pub mod vfio;
pub mod vfio_user;
pub mod vhost;

#[cfg(any(test, feature = "fuzz"))]
#[doc(hidden)]
pub mod fuzz_api;

#[cfg(test)]
mod test_rng;
