//! The NVMe controller model, shared by every NVMe transport: the NVMe-oF/TCP target now,
//! the vfio-user frontend later. It knows nothing about sockets or PCI: a transport decodes
//! its framing into an [`request::NvmeRequest`] (the 64-byte command, the queue, data
//! iovecs), connects a queue with [`fabrics::connect`], executes commands on the
//! [`queue::QueuePair`] it got, and sends back the completions. Wire formats live in the
//! `ferry-nvme` crate (`ferry_nvme::spec`).
//!
//! | module | job |
//! |---|---|
//! | `request` | one command as a transport submits it, and its completion |
//! | `namespace` | a namespace on a bdev and its identifiers |
//! | `error` | management errors (`NvmeError`) the RPCs map to SPDK's |
//! | `subsystem` | the subsystem registry (discovery always present): namespaces, hosts, listeners, controllers |
//! | `controller` | one host's controller: registers, features, error log, changed-NS list, events, keep-alive, its queues' reactors |
//! | `fabrics` | Connect (admin and I/O queues, every check), Property Get/Set, Disconnect |
//! | `queue` | a queue pair on its reactor: admin dispatch, I/O by NSID through per-queue namespace channels, fused pairs |
//! | `admin` | the admin command set on fabrics |
//! | `identify` | Identify controller, namespace, active NS list, NS descriptors, CSI controller |
//! | `features` | Get/Set Features |
//! | `log` | Get Log Page: error, SMART, firmware, changed NS, effects, ANA, discovery |
//! | `aer` | Asynchronous Event Requests |
//! | `io` | the NVM command set's I/O commands on a namespace, as bdev I/O |
//! | `reservation` | a namespace's registrations and reservation, and their checks |

pub mod admin;
pub mod aer;
pub mod controller;
pub mod error;
pub mod fabrics;
pub mod features;
pub mod identify;
pub mod io;
pub mod log;
pub mod namespace;
pub mod queue;
pub mod request;
pub mod reservation;
pub mod subsystem;
#[cfg(test)]
mod tests;

pub use error::NvmeError;
pub use fabrics::{connect, TransportLimits};
pub use namespace::Namespace;
pub use queue::QueuePair;
pub use request::{DataDir, NvmeRequest, RequestDone};
pub use subsystem::{
    create_subsystem, delete_subsystem, subsystem, subsystems, AnaState, ControllerInfo, ListenAddress,
    NamespaceConfig, Subsystem, SubsystemConfig, SubsystemKind,
};
