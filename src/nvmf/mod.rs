//! NVMe over Fabrics: transports that serve the NVMe controller model (`crate::nvme`) to
//! remote hosts. TCP is the one transport today.
//!
//! | module | job |
//! |---|---|
//! | `tcp` | the NVMe/TCP target: options, listeners, connections on the reactors, PDUs to commands |
//! | `rpc` | SPDK's `nvmf_*` methods and the `nvmf` part of `save_config` |
//! | `config` | the transport's generic options as created (what `nvmf_get_transports` shows beyond TCP's own) |

pub mod config;
pub mod rpc;
pub mod tcp;

pub use tcp::NvmfError;
