//! The RBD module's errors, each with the errno SPDK's RPCs would answer.

use crate::bdev::BdevError;
use crate::rpc::RpcError;
use std::time::Duration;
use thiserror::Error;

/// Why an RBD operation failed.
#[derive(Debug, Error)]
pub enum RbdError {
    /// librados / librbd could not be loaded.
    #[error("{0}")]
    Library(String),
    /// A librados or librbd call failed with `-errno`.
    #[error("{what}: {}", strerror(*errno))]
    Call {
        /// What was being done.
        what: String,
        /// The (positive) errno.
        errno: i32,
    },
    /// The cluster did not answer in time.
    #[error("{what}: no answer from the cluster within {} s", limit.as_secs())]
    Timeout {
        /// What was being done.
        what: String,
        /// How long Ferry waited.
        limit: Duration,
    },
    /// A bad parameter; the message names it.
    #[error("{0}")]
    Invalid(String),
    /// The object exists already.
    #[error("{0}")]
    Exists(String),
    /// No such object.
    #[error("{0}")]
    NotFound(String),
    /// The object is in use.
    #[error("{0}")]
    Busy(String),
    /// An operating-system call failed.
    #[error("{what}: {source}")]
    Os {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The bdev layer refused.
    #[error(transparent)]
    Bdev(#[from] BdevError),
}

/// The C library's text for `errno`, without Rust's "(os error N)".
pub fn strerror(errno: i32) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    match text.rfind(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

impl RbdError {
    /// A failed call that returned `rc` (a negative errno).
    pub fn call(what: impl Into<String>, rc: i32) -> Self {
        RbdError::Call { what: what.into(), errno: rc.saturating_neg().max(1) }
    }

    /// The errno an RPC answers with (positive).
    pub fn errno(&self) -> i32 {
        match self {
            RbdError::Library(_) => libc::ENOSYS,
            RbdError::Call { errno, .. } => *errno,
            RbdError::Timeout { .. } => libc::ETIMEDOUT,
            RbdError::Invalid(_) => libc::EINVAL,
            RbdError::Exists(_) => libc::EEXIST,
            RbdError::NotFound(_) => libc::ENOENT,
            RbdError::Busy(_) => libc::EBUSY,
            RbdError::Os { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            RbdError::Bdev(e) => e.errno(),
        }
    }
}

impl From<RbdError> for RpcError {
    fn from(e: RbdError) -> Self {
        match e {
            RbdError::Invalid(m) => RpcError::invalid_params(m),
            RbdError::Bdev(b) => b.into(),
            other => RpcError::errno(other.errno(), other.to_string()),
        }
    }
}
