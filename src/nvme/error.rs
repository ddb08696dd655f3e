//! The NVMe model's management errors (subsystems, namespaces, hosts, listeners), which the
//! `nvmf_*` RPCs map to SPDK's codes and messages. Command failures are NVMe statuses, not
//! these.

use crate::bdev::BdevError;
use thiserror::Error;

/// Why a management operation on the NVMe model failed.
#[derive(Debug, Error)]
pub enum NvmeError {
    /// The thing (subsystem, namespace, host, listener) exists already; the message names it.
    #[error("{0} already exists")]
    Exists(String),
    /// No such thing; the message names it.
    #[error("{0} not found")]
    NotFound(String),
    /// A parameter is out of range or malformed; the message says which.
    #[error("{0}")]
    InvalidParam(String),
    /// Every controller ID (or namespace ID) of the subsystem's range is in use.
    #[error("{0}")]
    NoResources(String),
    /// The namespace's bdev could not be opened.
    #[error(transparent)]
    Bdev(#[from] BdevError),
}

impl NvmeError {
    /// The errno SPDK would report (positive).
    pub fn errno(&self) -> i32 {
        match self {
            NvmeError::Exists(_) => libc::EEXIST,
            NvmeError::NotFound(_) => libc::ENOENT,
            NvmeError::InvalidParam(_) => libc::EINVAL,
            NvmeError::NoResources(_) => libc::ENOSPC,
            NvmeError::Bdev(e) => e.errno(),
        }
    }
}
