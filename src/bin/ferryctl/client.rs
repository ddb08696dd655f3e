//! A JSON-RPC 2.0 client on a Unix socket: one request, one response (which may arrive in
//! pieces), with a timeout.

use serde_json::{json, Value};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why a call failed before the server answered.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Could not connect.
    #[error("cannot connect to {path}: {source} (is ferryd running with -r {path}?)")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The connection failed mid-call.
    #[error("talking to {path}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// No complete answer in time.
    #[error("no answer from {0} within the timeout")]
    Timeout(PathBuf),
    /// The answer was not JSON-RPC.
    #[error("bad answer from {path}: {why}")]
    BadAnswer {
        /// Socket path.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
}

/// The request object for `method` and `params` (params omitted when empty, as rpc.py does).
pub fn request(method: &str, params: &Value) -> Value {
    let mut req = json!({ "jsonrpc": "2.0", "method": method, "id": 1 });
    if params.as_object().is_some_and(|p| !p.is_empty()) {
        req["params"] = params.clone();
    }
    req
}

/// Pause between connection attempts (rpc.py's `--conn-retries` interval).
pub const CONN_RETRY_INTERVAL: Duration = Duration::from_millis(200);

/// Connects to `path`, trying again up to `retries` times, [`CONN_RETRY_INTERVAL`] apart,
/// while there is no socket yet or nobody listens on it (a daemon still starting).
fn connect(path: &Path, retries: u32) -> Result<UnixStream, ClientError> {
    let mut left = retries;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if left > 0 && matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
                left -= 1;
                std::thread::sleep(CONN_RETRY_INTERVAL);
            }
            Err(source) => return Err(ClientError::Connect { path: path.to_path_buf(), source }),
        }
    }
}

/// Sends `req` and returns the response object, connecting as [`connect`] does.
pub fn call(path: &Path, req: &Value, timeout: Duration, retries: u32) -> Result<Value, ClientError> {
    let io = |source| ClientError::Io { path: path.to_path_buf(), source };
    let mut s = connect(path, retries)?;
    s.write_all(&serde_json::to_vec(req).expect("a Value serialises")).map_err(io)?;
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::Timeout(path.to_path_buf()));
        }
        s.set_read_timeout(Some(left)).map_err(io)?;
        let n = match s.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(ClientError::Timeout(path.to_path_buf()))
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        };
        buf.extend_from_slice(&chunk[..n]);
        match serde_json::Deserializer::from_slice(&buf).into_iter::<Value>().next() {
            Some(Ok(v)) => return Ok(v),
            Some(Err(e)) if e.is_eof() && n > 0 => continue,
            Some(Err(e)) => return Err(ClientError::BadAnswer { path: path.to_path_buf(), why: e.to_string() }),
            None if n > 0 => continue,
            None => return Err(ClientError::BadAnswer { path: path.to_path_buf(), why: "connection closed".into() }),
        }
    }
}
