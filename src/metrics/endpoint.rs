//! Where the endpoint listens: a loopback TCP address or a Unix socket, and the two kinds of
//! listener and stream behind one type each.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;

/// `--metrics-addr`: `HOST:PORT` on a loopback address, or `unix:PATH` (or an absolute path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A loopback TCP address (port 0 picks a free port; the log says which).
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Endpoint, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path".into());
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if s.starts_with('/') {
            return Ok(Endpoint::Unix(PathBuf::from(s)));
        }
        let addr: SocketAddr = s
            .parse()
            .map_err(|_| format!("{s:?} is neither HOST:PORT (e.g. 127.0.0.1:9100, [::1]:9100) nor unix:PATH"))?;
        // No TLS and no authentication: the endpoint stays on this host. Expose it further
        // through a proxy that adds both, or a Unix socket with a mode.
        if !addr.ip().is_loopback() {
            return Err(format!("{addr} is not a loopback address: the metrics endpoint serves this host only"));
        }
        Ok(Endpoint::Tcp(addr))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "{a}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A listening socket of either kind.
pub(super) enum AnyListener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl AnyListener {
    /// Accepts one connection, non-blocking.
    pub fn accept(&self) -> std::io::Result<AnyStream> {
        let stream = match self {
            AnyListener::Tcp(l) => AnyStream::Tcp(l.accept()?.0),
            AnyListener::Unix(l) => AnyStream::Unix(l.accept()?.0),
        };
        stream.set_nonblocking()?;
        Ok(stream)
    }
}

impl AsRawFd for AnyListener {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            AnyListener::Tcp(l) => l.as_raw_fd(),
            AnyListener::Unix(l) => l.as_raw_fd(),
        }
    }
}

/// A connected socket of either kind.
pub(super) enum AnyStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AnyStream {
    fn set_nonblocking(&self) -> std::io::Result<()> {
        match self {
            AnyStream::Tcp(s) => s.set_nonblocking(true),
            AnyStream::Unix(s) => s.set_nonblocking(true),
        }
    }

    /// Ends our side: the client sees the end of the answer.
    pub fn shutdown_write(&self) {
        let _ = match self {
            AnyStream::Tcp(s) => s.shutdown(Shutdown::Write),
            AnyStream::Unix(s) => s.shutdown(Shutdown::Write),
        };
    }
}

impl AsRawFd for AnyStream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            AnyStream::Tcp(s) => s.as_raw_fd(),
            AnyStream::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl Read for AnyStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            AnyStream::Tcp(s) => s.read(buf),
            AnyStream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for AnyStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            AnyStream::Tcp(s) => s.write(buf),
            AnyStream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_loopback_or_unix_paths() {
        assert_eq!("127.0.0.1:9100".parse(), Ok(Endpoint::Tcp("127.0.0.1:9100".parse().unwrap())));
        assert_eq!("[::1]:0".parse(), Ok(Endpoint::Tcp("[::1]:0".parse().unwrap())));
        assert_eq!("unix:/run/m.sock".parse(), Ok(Endpoint::Unix("/run/m.sock".into())));
        assert_eq!("/run/m.sock".parse(), Ok(Endpoint::Unix("/run/m.sock".into())));
        assert!("0.0.0.0:9100".parse::<Endpoint>().unwrap_err().contains("not a loopback"));
        assert!("10.1.2.3:9100".parse::<Endpoint>().is_err());
        assert!("localhost".parse::<Endpoint>().is_err());
        assert!("unix:".parse::<Endpoint>().is_err());
        assert_eq!(Endpoint::Unix("/x".into()).to_string(), "unix:/x");
    }
}
