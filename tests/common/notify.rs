//! The receiving side of sd_notify(3), as a service manager has it: a datagram socket named in
//! a child's `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket).

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::time::Duration;

/// A notification socket and what arrives on it.
pub struct NotifySocket {
    sock: UnixDatagram,
    /// The value of `$NOTIFY_SOCKET` that reaches it.
    pub env: String,
}

impl NotifySocket {
    /// Listens on a path.
    pub fn at_path(path: &Path) -> NotifySocket {
        NotifySocket { sock: UnixDatagram::bind(path).unwrap(), env: path.to_str().unwrap().to_string() }
    }

    /// Listens on an abstract name, `@name` in `$NOTIFY_SOCKET`.
    pub fn abstract_named(name: &str) -> NotifySocket {
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        NotifySocket { sock: UnixDatagram::bind_addr(&addr).unwrap(), env: format!("@{name}") }
    }

    /// A notification already sent, if any (never waits).
    pub fn sent(&self) -> Option<String> {
        self.sock.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        let got = match self.sock.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("reading the notification socket: {e}"),
        };
        self.sock.set_nonblocking(false).unwrap();
        got
    }

    /// The next notification, or why none came within 30 s (`sender` names who should have
    /// sent it, for the message).
    pub fn next(&self, sender: impl FnOnce() -> String) -> String {
        self.sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 4096];
        match self.sock.recv(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) => panic!("no notification ({e}) from {}", sender()),
        }
    }
}
