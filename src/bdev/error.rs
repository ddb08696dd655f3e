//! The bdev layer's errors, each mapped to the negative errno SPDK reports for it.

use thiserror::Error;

/// Why a bdev operation failed.
#[derive(Debug, Error)]
pub enum BdevError {
    /// A bdev (or alias, or uuid) of that name exists.
    #[error("bdev {0} already exists")]
    AlreadyExists(String),
    /// No bdev answers to that name, alias or uuid.
    #[error("bdev {0} not found")]
    NotFound(String),
    /// A parameter is out of range or inconsistent; the message names it.
    #[error("{0}")]
    InvalidParam(String),
    /// Not enough memory for the request.
    #[error("{0}")]
    NoMemory(String),
    /// Another module holds the write claim.
    #[error("bdev {bdev} is claimed by {module}")]
    Claimed {
        /// The bdev.
        bdev: String,
        /// The claiming module.
        module: String,
    },
    /// Write access asked of a read-only bdev.
    #[error("bdev {0} is read-only")]
    ReadOnly(String),
    /// The bdev is being removed.
    #[error("bdev {0} is being removed")]
    Removed(String),
    /// An I/O channel was asked for off a reactor thread.
    #[error("I/O channels exist only on reactor threads")]
    NotOnReactor,
    /// An operating-system call failed.
    #[error("{context}: {source}")]
    Os {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// The io_uring engine failed.
    #[error(transparent)]
    Uring(#[from] ferry_uring::UringError),
    /// A reactor could not be reached.
    #[error(transparent)]
    Framework(#[from] crate::framework::FrameworkError),
}

impl BdevError {
    /// The errno SPDK would return for this error (positive).
    pub fn errno(&self) -> i32 {
        match self {
            BdevError::AlreadyExists(_) => libc::EEXIST,
            BdevError::NotFound(_) => libc::ENODEV,
            BdevError::InvalidParam(_) => libc::EINVAL,
            BdevError::NoMemory(_) => libc::ENOMEM,
            BdevError::Claimed { .. } => libc::EPERM,
            BdevError::ReadOnly(_) => libc::EPERM,
            BdevError::Removed(_) => libc::ENODEV,
            BdevError::NotOnReactor => libc::EINVAL,
            BdevError::Os { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            BdevError::Uring(e) => e.raw_os_error().unwrap_or(libc::EIO),
            BdevError::Framework(_) => libc::EIO,
        }
    }

    /// An `Os` error with context.
    pub fn os(context: impl Into<String>, source: std::io::Error) -> Self {
        BdevError::Os { context: context.into(), source }
    }
}
