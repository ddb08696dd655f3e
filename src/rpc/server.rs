//! The JSON-RPC server on a Unix stream socket.
//!
//! An accept thread hands each client to its own thread (management traffic is light; a
//! thread per client keeps a slow or silent client from holding up the others), up to
//! [`MAX_CONNECTIONS`] at once. A client may split a request across many writes or send
//! several in one write: the [`Framer`] scans each byte once and hands each complete value to
//! serde_json, and the values are answered in order. Text that is not JSON, or a request past
//! its size limit ([`MAX_REQUEST_BYTES`], [`MAX_LOAD_CONFIG_BYTES`] for `load_config`), gets a
//! -32700 answer and the connection is closed, as the stream cannot be resynchronised.

use super::dispatch;
use super::error::{RpcError, INVALID_REQUEST, PARSE_ERROR};
use super::framer::{FrameError, Framer, Limits};
use crate::framework::socket::{self, peer_credentials, OwnedSocket, SocketError, SocketPerms};
use crate::framework::wait::wait_readable;
use serde_json::{json, Value};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use thiserror::Error;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

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
    stop: Arc<EventFd>,
    /// Bound but not yet accepting (see [`RpcServer::bind`]).
    listener: Option<UnixListener>,
    acceptor: Option<JoinHandle<()>>,
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
        let stop = Arc::new(
            EventFd::new(EFD_NONBLOCK).map_err(|source| ServerError::Io { path: path.to_path_buf(), source })?,
        );
        tracing::info!(path = %path.display(), mode = format!("{:o}", perms.mode), "RPC socket bound");
        Ok(RpcServer { path: path.to_path_buf(), stop, listener: Some(listener), acceptor: None, socket: Some(socket) })
    }

    /// Starts accepting clients (once; later calls do nothing).
    pub fn serve(&mut self) -> Result<(), ServerError> {
        let Some(listener) = self.listener.take() else { return Ok(()) };
        let thread_stop = self.stop.clone();
        let acceptor = std::thread::Builder::new()
            .name("rpc_accept".into())
            .spawn(move || accept_loop(listener, thread_stop))
            .map_err(|source| ServerError::Io { path: self.path.clone(), source })?;
        self.acceptor = Some(acceptor);
        tracing::info!(path = %self.path.display(), "RPC server listening");
        Ok(())
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, tells every client thread to finish, removes the socket file.
    pub fn stop(&mut self) {
        // The eventfd is never drained: once written it stays readable for every poller.
        let _ = self.stop.write(1);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
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

fn accept_loop(listener: UnixListener, stop: Arc<EventFd>) {
    let active = Arc::new(AtomicUsize::new(0));
    let mut clients: Vec<JoinHandle<()>> = Vec::new();
    while wait_readable(listener.as_raw_fd(), &stop) {
        let mut stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "RPC accept failed");
                continue;
            }
        };
        match peer_credentials(stream.as_raw_fd()) {
            Ok(c) => tracing::info!(pid = c.pid, uid = c.uid, gid = c.gid, "RPC client connected"),
            Err(e) => tracing::warn!(error = %e, "RPC client connected; SO_PEERCRED failed"),
        }
        clients.retain(|c| !c.is_finished());
        if active.load(Ordering::Acquire) >= MAX_CONNECTIONS {
            let e = RpcError::new(-libc::EBUSY, format!("too many RPC connections (limit {MAX_CONNECTIONS})"));
            let _ = send(&mut stream, &json!({"jsonrpc": "2.0", "id": null, "error": e.to_json()}));
            continue;
        }
        active.fetch_add(1, Ordering::AcqRel);
        let (active, stop) = (active.clone(), stop.clone());
        let spawned = std::thread::Builder::new().name("rpc_client".into()).spawn(move || {
            serve_client(stream, &stop);
            active.fetch_sub(1, Ordering::AcqRel);
        });
        match spawned {
            Ok(t) => clients.push(t),
            Err(e) => tracing::warn!(error = %e, "cannot start RPC client thread"),
        }
    }
    for c in clients {
        let _ = c.join();
    }
}

fn send(stream: &mut UnixStream, response: &Value) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(response).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    stream.write_all(&bytes)
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

fn serve_client(mut stream: UnixStream, stop: &EventFd) {
    let mut framer = Framer::new(LIMITS);
    let mut chunk = vec![0u8; 64 * 1024];
    while wait_readable(stream.as_raw_fd(), stop) {
        let n = match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        framer.push(&chunk[..n]);
        while let Some(request) = next_request(&mut framer) {
            let value = match request {
                Ok(value) => value,
                Err(e) => {
                    let _ = send(&mut stream, &json!({"jsonrpc": "2.0", "id": null, "error": e.to_json()}));
                    return;
                }
            };
            if let Some(response) = dispatch::handle_value(value) {
                if send(&mut stream, &response).is_err() {
                    return;
                }
            }
        }
    }
}
