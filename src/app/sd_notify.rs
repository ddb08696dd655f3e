//! Readiness and stop notifications for a service manager (systemd's `Type=notify`): the
//! sd_notify(3) protocol, one datagram of `KEY=VALUE` lines to the socket `$NOTIFY_SOCKET`
//! names, either a path (`/run/systemd/notify`) or an abstract name (`@name`).
//!
//! Written here rather than taken from a crate: the protocol is that one datagram, and the
//! small crate for it (`sd-notify` 0.5) connects to `$NOTIFY_SOCKET` as a file path, so an
//! abstract name (which service managers and test harnesses hand out) would be looked up as a
//! relative file `@name` and never reached. std's `SocketAddrExt` addresses both.

use std::ffi::{OsStr, OsString};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;
use thiserror::Error;

/// The environment variable a service manager sets to its notification socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// How long a notification may wait for room in the manager's queue: the manager drains it at
/// once, and the daemon must not hang on a manager that does not.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a notification could not be sent.
#[derive(Debug, Error)]
pub enum NotifyError {
    /// `$NOTIFY_SOCKET` is neither an absolute path nor `@` and an abstract name.
    #[error("{NOTIFY_SOCKET}={0:?} is neither an absolute path nor an abstract socket name (@name)")]
    BadAddress(OsString),
    /// The socket could not be created, addressed or written.
    #[error("{NOTIFY_SOCKET}={socket:?}: {source}")]
    Io {
        /// The value of `$NOTIFY_SOCKET`.
        socket: OsString,
        /// The error.
        source: std::io::Error,
    },
}

/// Where to send notifications: the service manager's socket.
#[derive(Debug)]
pub struct Notifier {
    name: OsString,
    addr: SocketAddr,
}

impl Notifier {
    /// The notifier `$NOTIFY_SOCKET` names; `None` when it is unset or empty (not started by a
    /// service manager that wants notifications).
    pub fn from_env() -> Result<Option<Notifier>, NotifyError> {
        match std::env::var_os(NOTIFY_SOCKET) {
            Some(v) if !v.is_empty() => Notifier::new(&v).map(Some),
            _ => Ok(None),
        }
    }

    /// The notifier for a `$NOTIFY_SOCKET` value: `/absolute/path` or `@abstract-name`.
    pub fn new(value: &OsStr) -> Result<Notifier, NotifyError> {
        let io = |source| NotifyError::Io { socket: value.to_os_string(), source };
        let bytes = value.as_bytes();
        let addr = match bytes.first() {
            Some(b'/') => SocketAddr::from_pathname(value).map_err(io)?,
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]).map_err(io)?,
            _ => return Err(NotifyError::BadAddress(value.to_os_string())),
        };
        Ok(Notifier { name: value.to_os_string(), addr })
    }

    /// Sends `state`, newline-separated `KEY=VALUE` assignments such as `READY=1`, as one
    /// datagram.
    pub fn notify(&self, state: &str) -> Result<(), NotifyError> {
        let io = |source| NotifyError::Io { socket: self.name.clone(), source };
        let sock = UnixDatagram::unbound().map_err(io)?;
        sock.set_write_timeout(Some(SEND_TIMEOUT)).map_err(io)?;
        let sent = sock.send_to_addr(state.as_bytes(), &self.addr).map_err(io)?;
        if sent != state.len() {
            return Err(io(std::io::Error::new(std::io::ErrorKind::WriteZero, "notification truncated")));
        }
        tracing::debug!(socket = ?self.name, state, "service manager notified");
        Ok(())
    }
}

/// Sends `state` through `notifier` if there is one; a failure is logged, never fatal (the
/// daemon serves whether or not its manager hears about it).
pub fn notify(notifier: Option<&Notifier>, state: &str) {
    if let Some(n) = notifier {
        if let Err(e) = n.notify(state) {
            tracing::warn!("service manager notification {state:?} failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_abstract_names_are_addressed_and_anything_else_refused() {
        assert!(Notifier::new(OsStr::new("/run/systemd/notify")).unwrap().addr.as_pathname().is_some());
        let n = Notifier::new(OsStr::new("@ferry/notify")).unwrap();
        assert_eq!(n.addr.as_abstract_name(), Some(&b"ferry/notify"[..]));
        for bad in ["relative/notify", "vsock:2:1234", ""] {
            assert!(matches!(Notifier::new(OsStr::new(bad)), Err(NotifyError::BadAddress(_))), "{bad:?}");
        }
    }

    #[test]
    fn one_datagram_reaches_an_abstract_socket() {
        let name = format!("ferry-sd-notify-unit-{}", std::process::id());
        let receiver = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        let n = Notifier::new(OsStr::new(&format!("@{name}"))).unwrap();
        n.notify("READY=1\nSTATUS=serving").unwrap();
        let mut buf = [0u8; 64];
        let len = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=serving");
    }

    #[test]
    fn an_absent_receiver_is_an_error_not_a_hang() {
        let n = Notifier::new(OsStr::new("/nonexistent/ferry-notify")).unwrap();
        assert!(matches!(n.notify("READY=1"), Err(NotifyError::Io { .. })));
    }
}
