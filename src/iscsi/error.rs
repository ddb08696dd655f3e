//! Errors of the iSCSI target's management side (RPCs, portals).

use std::net::SocketAddr;
use thiserror::Error;

/// What can go wrong configuring the target.
#[derive(Debug, Error)]
pub enum IscsiError {
    /// A portal's address does not parse.
    #[error("portal {host}:{port}: not an address: {reason}")]
    BadPortal {
        /// The host as given.
        host: String,
        /// The port as given.
        port: String,
        /// Why.
        reason: String,
    },
    /// Binding a listening socket failed (address in use, not local, ...).
    #[error("portal {addr}: cannot listen: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The reactors are not running.
    #[error("the reactors are not running: {0}")]
    Framework(#[from] crate::framework::FrameworkError),
}
