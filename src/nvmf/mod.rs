//! PLACEHOLDER module root written in the rpc worktree (the tcp part owns this file and
//! replaces it at merge; keep its `pub mod config; pub mod rpc;`).
//!
//! The NVMe-over-Fabrics target: the TCP transport (`tcp`) on the controller model
//! (`crate::nvme`), and its management (`rpc`, SPDK's `nvmf_*` methods, with `config` the
//! record of the transport as created).

pub mod config;
pub mod rpc;
pub mod tcp;
