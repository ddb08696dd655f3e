//! The JSON-RPC server on a Unix stream socket.
//!
//! The listener and every client live on the control plane's management loop
//! ([`super::connection`]); requests run on a pool of RPC workers that grows only while
//! handlers run at once, up to [`MAX_CONNECTIONS`]. A client may split a request across many
//! writes or send several in one write: the [`Framer`] scans each byte once and hands each
//! complete value to serde_json, and the values are answered in order. Text that is not JSON,
//! or a request past its size limit ([`MAX_REQUEST_BYTES`], [`MAX_LOAD_CONFIG_BYTES`] for
//! `load_config`), gets a -32700 answer and the connection is closed, as the stream cannot be
//! resynchronised.

use super::connection::Listener;
use super::error::{RpcError, INVALID_REQUEST, PARSE_ERROR};
use super::framer::{FrameError, Framer, Limits};
use crate::framework::connections::Connections;
use crate::framework::control_plane::{self, ControlPlaneError};
use crate::framework::socket::{self, OwnedSocket, SocketError, SocketPerms};
use event_manager::SubscriberId;
use serde_json::Value;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// Most clients served at once; more are answered with an error and closed.
pub const MAX_CONNECTIONS: usize = 64;
/// Largest request accepted for most methods (a bdev or controller description is tiny).
pub const MAX_REQUEST_BYTES: usize = 1 << 20;
/// Largest `load_config` request (a whole saved configuration fits many times over).
pub const MAX_LOAD_CONFIG_BYTES: usize = 64 << 20;

/// Request size limits: only `load_config` carries a document that may be large.
pub(crate) const LIMITS: Limits =
    Limits { small: MAX_REQUEST_BYTES, large: MAX_LOAD_CONFIG_BYTES, large_methods: &["load_config"] };

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The socket could not be set up (in use, owned by another process, ...).
    #[error("RPC socket: {0}")]
    Socket(#[from] SocketError),
    /// The control plane's event loop could not take the listener.
    #[error("RPC server: {0}")]
    ControlPlane(#[from] ControlPlaneError),
    /// Setting up failed.
    #[error("RPC socket {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The server; [`RpcServer::stop`] (or drop) closes it and removes the socket file.
pub struct RpcServer {
    path: PathBuf,
    /// Bound but not yet accepting (see [`RpcServer::bind`]).
    listener: Option<UnixListener>,
    /// The listener's id on the event loop, once serving.
    listener_id: Option<SubscriberId>,
    connections: Arc<Connections>,
    socket: Option<OwnedSocket>,
}

impl RpcServer {
    /// Listens on `path` and serves at once: [`RpcServer::bind`] then [`RpcServer::serve`].
    pub fn start(path: &Path, perms: SocketPerms) -> Result<RpcServer, ServerError> {
        let mut server = Self::bind(path, perms)?;
        server.serve()?;
        Ok(server)
    }

    /// Claims and binds `path`, created with `perms` whatever the umask, without serving yet:
    /// clients that connect wait in the backlog until [`RpcServer::serve`] (so a daemon can
    /// replay its configuration first and every client sees it whole). A stale socket file
    /// left by a dead process is replaced; a live one, or one another daemon holds, is refused.
    pub fn bind(path: &Path, perms: SocketPerms) -> Result<RpcServer, ServerError> {
        let (listener, socket) = socket::bind(path, perms, "RPC socket")?;
        tracing::info!(path = %path.display(), mode = format!("{:o}", perms.mode), "RPC socket bound");
        Ok(RpcServer {
            path: path.to_path_buf(),
            listener: Some(listener),
            listener_id: None,
            connections: Arc::default(),
            socket: Some(socket),
        })
    }

    /// Starts accepting clients (once; later calls do nothing).
    pub fn serve(&mut self) -> Result<(), ServerError> {
        let Some(listener) = self.listener.take() else { return Ok(()) };
        listener.set_nonblocking(true).map_err(|source| ServerError::Io { path: self.path.clone(), source })?;
        let subscriber = Box::new(Listener::new(listener, self.connections.clone()));
        self.listener_id = Some(control_plane::management()?.add(subscriber)?);
        tracing::info!(path = %self.path.display(), "RPC server listening");
        Ok(())
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, closes every client, and removes the socket file. A call already
    /// running on a worker finishes on its own (see [`super::dispatch::refuse_new_calls`]).
    pub fn stop(&mut self) {
        self.connections.stop(self.listener_id.take());
        self.listener = None;
        // The listener is closed: remove the file (if still ours) and release its lock.
        self.socket = None;
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The next complete request `framer` holds: `Some(Ok)` a parsed request, `Some(Err)` the
/// answer to send before closing (the stream cannot be resynchronised after a framing or
/// parse failure), `None` when more bytes are needed.
pub(crate) fn next_request(framer: &mut Framer) -> Option<Result<Value, RpcError>> {
    let frame = framer.next_frame()?;
    Some(match frame.map(serde_json::from_slice::<Value>) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(RpcError::new(PARSE_ERROR, format!("Parse error: {e}"))),
        Err(e @ FrameError::NotARequest(_)) => Err(RpcError::new(INVALID_REQUEST, format!("Invalid request: {e}"))),
        Err(e) => Err(RpcError::new(PARSE_ERROR, format!("Parse error: {e}"))),
    })
}
