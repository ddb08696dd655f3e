//! NVMe over Fabrics: transports that serve the NVMe controller model (`crate::nvme`) to
//! remote hosts. TCP is the one transport today.
//!
//! | module | job |
//! |---|---|
//! | `tcp` | the NVMe/TCP target: options, listeners, connections on the reactors, PDUs to commands |
//! | `rpc` | (bare-bones, replaced by the rpc part) the methods that start the transport and serve a subsystem |

pub mod rpc;
pub mod tcp;

pub use tcp::NvmfError;
