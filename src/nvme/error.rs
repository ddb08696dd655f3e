//! PLACEHOLDER written in the rpc worktree so that `src/nvmf/rpc.rs` compiles and its tests
//! run before the parts merge: replaced at merge by the model's own `src/nvme/error.rs`
//! (same names, as fixed in nvme-interfaces.md). No RPC logic lives here.

use crate::bdev::BdevError;
use thiserror::Error;

/// What the controller model's management calls fail with.
#[derive(Debug, Error)]
pub enum NvmeError {
    /// The subsystem, namespace, host or listener already exists.
    #[error("{0} already exists")]
    Exists(String),
    /// No such subsystem, namespace, host or listener.
    #[error("{0} not found")]
    NotFound(String),
    /// A parameter is out of range or inconsistent; the message names it.
    #[error("{0}")]
    InvalidParam(String),
    /// The namespace's bdev could not be opened or claimed.
    #[error(transparent)]
    Bdev(#[from] BdevError),
}
