//! Error types for the io_uring engine.

use std::io;
use std::path::PathBuf;

/// The submission queue has no free slot (or the ring already has as many
/// operations in flight as its completion queue can hold).
///
/// This is back-pressure, not a failure: call [`Ring::submit`](crate::Ring::submit)
/// and [`Ring::reap`](crate::Ring::reap), then queue the operation again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, thiserror::Error)]
#[error("io_uring submission queue is full")]
pub struct QueueFull;

/// Errors from setting up or driving a [`Ring`](crate::Ring), or from
/// [`open_file`](crate::open_file).
///
/// Every variant carries the operation that failed and the underlying
/// [`io::Error`] (also reachable through [`std::error::Error::source`] and
/// [`UringError::io_error`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UringError {
    /// The kernel refused `io_uring_setup` outright: io_uring is compiled out
    /// (`ENOSYS`), or disabled by the `kernel.io_uring_disabled` sysctl, a
    /// seccomp filter or a container runtime (`EPERM`).
    #[error(
        "io_uring is not available on this system: io_uring_setup failed ({source}); \
         it is either not built into the kernel (ENOSYS) or disabled by the \
         kernel.io_uring_disabled sysctl, a seccomp filter or the container runtime (EPERM)"
    )]
    Unsupported {
        /// The error returned by `io_uring_setup`.
        #[source]
        source: io::Error,
    },

    /// `io_uring_setup` failed for another reason (bad entry count, out of
    /// memory, `RLIMIT_MEMLOCK` on kernels before 5.12, ...).
    #[error("io_uring_setup with {entries} entries failed: {source}")]
    Setup {
        /// The requested number of submission queue entries.
        entries: u32,
        /// The error returned by `io_uring_setup`.
        #[source]
        source: io::Error,
    },

    /// An operation on an existing ring (`io_uring_enter`, `io_uring_register`) failed.
    #[error("io_uring {op} failed: {source}")]
    Ring {
        /// Which ring operation failed, e.g. `"submit"` or `"register_eventfd"`.
        op: &'static str,
        /// The underlying OS error.
        #[source]
        source: io::Error,
    },

    /// Opening or probing a backing file or block device failed.
    #[error("{op} {}: {source}", path.display())]
    File {
        /// Which step failed, e.g. `"open"`, `"fstat"`, `"ioctl(BLKGETSIZE64)"`.
        op: &'static str,
        /// The path being opened.
        path: PathBuf,
        /// The underlying OS error.
        #[source]
        source: io::Error,
    },
}

impl UringError {
    /// The underlying OS error.
    pub fn io_error(&self) -> &io::Error {
        match self {
            UringError::Unsupported { source }
            | UringError::Setup { source, .. }
            | UringError::Ring { source, .. }
            | UringError::File { source, .. } => source,
        }
    }

    /// Shorthand for `self.io_error().kind()`.
    pub fn kind(&self) -> io::ErrorKind {
        self.io_error().kind()
    }

    /// The raw errno of the underlying OS error, if it has one.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.io_error().raw_os_error()
    }
}

impl From<UringError> for io::Error {
    /// Wraps the error, keeping the underlying error's [`io::ErrorKind`].
    fn from(err: UringError) -> io::Error {
        io::Error::new(err.kind(), err)
    }
}
