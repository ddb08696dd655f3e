//! The NVMe controller model, shared by every NVMe transport: the NVMe-oF/TCP target now,
//! the vfio-user frontend later. It knows nothing about sockets or PCI: a transport decodes
//! its framing into an [`request::NvmeRequest`] (the 64-byte command, the queue, data
//! iovecs), executes it on a queue pair of a controller, and sends back the completion it
//! gets. Wire formats live in the `ferry-nvme` crate (`ferry_nvme::spec`).
//!
//! | module | job |
//! |---|---|
//! | `request` | one command as a transport submits it, and its completion |
//! | `namespace` | a namespace on a bdev and its identifiers |
//! | `subsystem` | the subsystem registry (placeholder in the rpc worktree) |
//! | `error` | the model's errors (placeholder in the rpc worktree) |

pub mod error;
pub mod namespace;
pub mod request;
pub mod subsystem;

pub use namespace::Namespace;
pub use request::{DataDir, NvmeRequest, RequestDone};
