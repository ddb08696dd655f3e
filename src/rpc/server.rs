//! The JSON-RPC server on a Unix stream socket.
//!
//! An accept thread hands each client to its own thread (management traffic is light; a
//! thread per client keeps a slow or silent client from holding up the others), up to
//! [`MAX_CONNECTIONS`] at once. A client may split a request across many writes or send
//! several in one write: the bytes are fed to serde_json's streaming parser and each complete
//! value is answered in order. Text that is not JSON gets a -32700 answer and the connection
//! is closed, as the stream cannot be resynchronised.

use super::dispatch;
use super::error::{RpcError, PARSE_ERROR};
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
/// Largest request accepted (a whole saved configuration fits many times over).
pub const MAX_REQUEST_BYTES: usize = 64 << 20;

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum ServerError {
    /// Another process answers on the socket.
    #[error("RPC socket {0} is in use by another process")]
    InUse(PathBuf),
    /// Binding or setting up failed.
    #[error("RPC socket {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// A running server; [`RpcServer::stop`] (or drop) closes it and removes the socket file.
pub struct RpcServer {
    path: PathBuf,
    stop: Arc<EventFd>,
    acceptor: Option<JoinHandle<()>>,
}

impl RpcServer {
    /// Listens on `path` (a stale socket file left by a dead process is replaced).
    pub fn start(path: &Path) -> Result<RpcServer, ServerError> {
        let io_err = |source| ServerError::Io { path: path.to_path_buf(), source };
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(ServerError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(io_err)?;
        }
        let listener = UnixListener::bind(path).map_err(io_err)?;
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(io_err)?);
        let thread_stop = stop.clone();
        let acceptor = std::thread::Builder::new()
            .name("rpc_accept".into())
            .spawn(move || accept_loop(listener, thread_stop))
            .map_err(io_err)?;
        tracing::info!(path = %path.display(), "RPC server listening");
        Ok(RpcServer { path: path.to_path_buf(), stop, acceptor: Some(acceptor) })
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
        let _ = std::fs::remove_file(&self.path);
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

/// What the buffered bytes hold after a parse attempt.
pub(crate) enum Parsed {
    /// A complete value, and how many bytes it took.
    Value(Value, usize),
    /// A prefix of a value: wait for more bytes.
    Incomplete,
    /// Only white space.
    Empty,
    /// Not JSON.
    Malformed(String),
}

pub(crate) fn parse_one(buf: &[u8]) -> Parsed {
    let mut values = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
    match values.next() {
        Some(Ok(v)) => Parsed::Value(v, values.byte_offset()),
        Some(Err(e)) if e.is_eof() => Parsed::Incomplete,
        Some(Err(e)) => Parsed::Malformed(e.to_string()),
        None => Parsed::Empty,
    }
}

fn serve_client(mut stream: UnixStream, stop: &EventFd) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while wait_readable(stream.as_raw_fd(), stop) {
        let n = match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            match parse_one(&buf) {
                Parsed::Value(value, used) => {
                    buf.drain(..used);
                    if let Some(response) = dispatch::handle_value(value) {
                        if send(&mut stream, &response).is_err() {
                            return;
                        }
                    }
                }
                Parsed::Incomplete if buf.len() > MAX_REQUEST_BYTES => {
                    let e =
                        RpcError::new(PARSE_ERROR, format!("Parse error: request exceeds {MAX_REQUEST_BYTES} bytes"));
                    let _ = send(&mut stream, &json!({"jsonrpc": "2.0", "id": null, "error": e.to_json()}));
                    return;
                }
                Parsed::Incomplete => break,
                Parsed::Empty => {
                    buf.clear();
                    break;
                }
                Parsed::Malformed(why) => {
                    let e = RpcError::new(PARSE_ERROR, format!("Parse error: {why}"));
                    let _ = send(&mut stream, &json!({"jsonrpc": "2.0", "id": null, "error": e.to_json()}));
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_parsing_handles_pieces_and_garbage() {
        assert!(matches!(parse_one(b"{\"a\":"), Parsed::Incomplete));
        assert!(matches!(parse_one(b"  \n "), Parsed::Empty));
        assert!(matches!(parse_one(b"{]"), Parsed::Malformed(_)));
        match parse_one(b"{\"a\":1}{\"b\":2}") {
            Parsed::Value(v, used) => {
                assert_eq!(v["a"], 1);
                assert_eq!(used, 7);
            }
            _ => panic!("expected a value"),
        }
    }
}
