//! NVMe over Fabrics: transports that serve the NVMe controller model (`crate::nvme`): TCP
//! to remote hosts, and VFIOUSER (SPDK's name) to local VMs as an NVMe PCIe function.
//!
//! | module | job |
//! |---|---|
//! | `tcp` | the NVMe/TCP target: options, listeners, connections on the reactors, PDUs to commands |
//! | `vfio_user` | the VFIOUSER transport: an NVMe PCIe function per listener, served over vfio-user |
//! | `rpc` | SPDK's `nvmf_*` methods and the `nvmf` part of `save_config` |
//! | `config` | the transport's generic options as created (what `nvmf_get_transports` shows beyond TCP's own) |

pub mod config;
pub mod rpc;
pub mod tcp;
pub mod vfio_user;

pub use tcp::NvmfError;
