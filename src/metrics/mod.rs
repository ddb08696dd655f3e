//! The metrics endpoint: Prometheus' text exposition format (0.0.4) over HTTP GET
//! `/metrics`, on a loopback TCP address or a Unix socket (`ferryd --metrics-addr`), off by
//! default.
//!
//! - [`endpoint`]: where it listens.
//! - [`connection`]: the listener and each scraper on the control plane's management loop,
//!   non-blocking, bounded in bytes and time.
//! - [`http`]: the request head (bounded, parsed by `httparse`) and responses.
//! - [`gatherer`]: one gathering at a time on the metrics worker, shared by waiting scrapes.
//! - [`collect`]: what is reported, read on the reactors by message.
//! - [`text`]: the exposition format.
//!
//! The families (all prefixed `ferry_`, base units, counters ending in `_total`):
//! per reactor `reactor_busy_seconds_total`, `reactor_idle_seconds_total`, `reactor_pollers`;
//! per bdev `bdev_ops_total`, `bdev_bytes_total` and the histogram
//! `bdev_io_duration_seconds` by I/O type, `bdev_io_errors_total`; per vhost controller
//! `vhost_controller_connected`, and per queue of a connected one
//! `vhost_queue_requests_total` and `vhost_queue_inflight`.

pub mod collect;
pub mod connection;
pub mod endpoint;
pub mod gatherer;
pub mod http;
pub mod text;

pub use endpoint::Endpoint;

use crate::framework::connections::Connections;
use crate::framework::control_plane::{self, ControlPlaneError};
use crate::framework::socket::{self, OwnedSocket, SocketError, SocketPerms};
use connection::Listener;
use endpoint::AnyListener;
use event_manager::SubscriberId;
use std::net::TcpListener;
use std::sync::Arc;
use thiserror::Error;

/// Why the endpoint could not start.
#[derive(Debug, Error)]
pub enum MetricsError {
    /// The Unix socket could not be set up (in use, owned by another process, ...).
    #[error("metrics socket: {0}")]
    Socket(#[from] SocketError),
    /// The TCP address could not be bound.
    #[error("metrics address {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// Setting the listener up failed.
    #[error("metrics endpoint: {0}")]
    Setup(String),
    /// The control plane's event loop could not take the listener.
    #[error("metrics endpoint: {0}")]
    ControlPlane(#[from] ControlPlaneError),
}

/// A serving endpoint; [`MetricsServer::stop`] (or drop) closes it (and removes its socket).
pub struct MetricsServer {
    listener_id: Option<SubscriberId>,
    connections: Arc<Connections>,
    socket: Option<OwnedSocket>,
    address: String,
}

impl MetricsServer {
    /// Listens on `endpoint` and serves at once; a Unix socket is created with `perms`
    /// whatever the umask (a TCP one ignores them).
    pub fn start(endpoint: &Endpoint, perms: SocketPerms) -> Result<MetricsServer, MetricsError> {
        let setup = |e: std::io::Error| MetricsError::Setup(e.to_string());
        let (listener, socket, address) = match endpoint {
            Endpoint::Tcp(addr) => {
                let l = TcpListener::bind(addr).map_err(|source| MetricsError::Bind { addr: *addr, source })?;
                l.set_nonblocking(true).map_err(setup)?;
                let address = l.local_addr().map_err(setup)?.to_string();
                (AnyListener::Tcp(l), None, address)
            }
            Endpoint::Unix(path) => {
                let (l, owned) = socket::bind(path, perms, "metrics socket")?;
                l.set_nonblocking(true).map_err(setup)?;
                (AnyListener::Unix(l), Some(owned), endpoint.to_string())
            }
        };
        let gatherer = gatherer::Gatherer::new().map_err(|e| MetricsError::Setup(e.to_string()))?;
        let connections = Arc::new(Connections::default());
        let subscriber = Box::new(Listener { listener, connections: connections.clone(), gatherer });
        let id = control_plane::management()?.add(subscriber)?;
        tracing::info!(addr = %address, "metrics endpoint listening");
        Ok(MetricsServer { listener_id: Some(id), connections, socket, address })
    }

    /// Where it listens (with the port chosen, for a TCP port 0).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Stops accepting and closes every connection.
    pub fn stop(&mut self) {
        self.connections.stop(self.listener_id.take());
        // The listener is closed: remove the socket file (if still ours).
        self.socket = None;
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
