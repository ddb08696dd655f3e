//! `ferry-vhost-initiator`: the driver side of vhost-user-blk and vhost-user-scsi. It shares
//! memory with a backend (Ferry, qemu-storage-daemon, SPDK), sets up split virtqueues and
//! submits and polls virtio-blk or virtio-scsi requests. Used by the benchmark `ferry-vhost-perf` and by hostile-driver tests
//! (the raw ring interface writes anything into the rings). Knows nothing about bdevs.

#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod blk;
pub mod client;
pub mod frontends;
pub mod memory;
pub mod scsi;
pub mod split;
pub mod wire;

pub use blk::{BlkQueue, Completion, QueueFull, Request};
pub use client::{BlkConfig, Client, ClientError, Inflight, Options, ScsiClient, ScsiConfig};
pub use frontends::{FrontendError, FrontendKind};
pub use memory::SharedMemory;
pub use scsi::{CmdReq, CmdResp, ScsiCompletion, ScsiError, ScsiQueue, ScsiRequest};
pub use split::SplitQueue;
