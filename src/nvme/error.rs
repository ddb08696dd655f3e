//! PLACEHOLDER written by the tcp part so the NVMe/TCP target compiles and its tests run:
//! replaced at merge by the model's `src/nvme/error.rs`. No real logic lives here.

use thiserror::Error;

/// Errors of the NVMe model's management operations.
#[derive(Debug, Error)]
pub enum NvmeError {
    /// The thing exists already.
    #[error("{0} exists")]
    Exists(String),
    /// No such thing.
    #[error("{0} not found")]
    NotFound(String),
    /// A bad parameter.
    #[error("invalid parameter: {0}")]
    InvalidParam(String),
}
