//! Listening portals: a portal group's TCP listeners, accepting on reactor 0 (a poller, with
//! the listening sockets as interrupt sources so an idle reactor sleeps), and handing each new
//! connection to the reactor serving the fewest.

use super::config::Portal;
use super::error::IscsiError;
use crate::framework::{self, PollStatus};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A portal group's listeners; dropping it stops accepting (connections already accepted stay).
#[derive(Debug)]
pub struct Listener {
    addrs: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
}

impl Listener {
    /// The bound addresses (with the port the kernel chose for port 0).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake reactor 0 so that its poller notices and closes the sockets now (the port is
        // free again when the RPC returns: a test or an operator may re-create the group).
        let _ = framework::call(0, || ());
    }
}

/// Parses a portal's host and port (`[::1]`, `::1`, `127.0.0.1`, a name resolving locally).
pub fn resolve(p: &Portal) -> Result<SocketAddr, IscsiError> {
    let bad = |reason: String| IscsiError::BadPortal { host: p.host.clone(), port: p.port.clone(), reason };
    let port: u16 = p.port.parse().map_err(|_| bad("the port is not a number from 0 to 65535".into()))?;
    let host = p.host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse() {
        return Ok(SocketAddr::new(ip, port));
    }
    (host, port).to_socket_addrs().map_err(|e| bad(e.to_string()))?.next().ok_or_else(|| bad("no address".into()))
}

/// Starts listening on every portal of group `tag`. All or nothing: if one address cannot be
/// bound, none stays bound.
pub fn listen(tag: u32, portals: &[Portal]) -> Result<Listener, IscsiError> {
    let mut sockets = Vec::new();
    for p in portals {
        let addr = resolve(p)?;
        // std's TcpListener sets SO_REUSEADDR on Unix, so a restarted daemon rebinds at once.
        let l = TcpListener::bind(addr).map_err(|source| IscsiError::Listen { addr, source })?;
        l.set_nonblocking(true).map_err(|source| IscsiError::Listen { addr, source })?;
        sockets.push(l);
    }
    let addrs = sockets.iter().filter_map(|s| s.local_addr().ok()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    framework::call(0, move || start_accepting(tag, sockets, stop2))?;
    Ok(Listener { addrs, stop })
}

/// On reactor 0: a poller accepting on `sockets` until `stop`.
fn start_accepting(tag: u32, sockets: Vec<TcpListener>, stop: Arc<AtomicBool>) {
    let sources: Vec<_> = sockets.iter().filter_map(|s| framework::register_interrupt(s.as_raw_fd()).ok()).collect();
    let mut state = Some((sockets, sources));
    let poller = std::rc::Rc::new(std::cell::RefCell::new(None));
    let handle = poller.clone();
    // A timed poller (1 ms): accepting is not on the data path, and a busy poller would keep
    // reactor 0 from ever sleeping while a portal exists.
    *poller.borrow_mut() =
        Some(framework::poller_register(&format!("iscsi_accept_{tag}"), Duration::from_millis(1), move || {
            if stop.load(Ordering::Acquire) {
                state = None; // closes the sockets and their interrupt registrations
                handle.borrow_mut().take();
                return PollStatus::Idle;
            }
            let Some((sockets, _)) = &state else { return PollStatus::Idle };
            let mut busy = PollStatus::Idle;
            for s in sockets {
                // Bounded per run, so a connection storm cannot monopolise the reactor.
                for _ in 0..16 {
                    match s.accept() {
                        Ok((stream, peer)) => {
                            busy = PollStatus::Busy;
                            super::conn::adopt(stream, peer, tag);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            // EMFILE and friends: try again next run rather than spin.
                            tracing::warn!(portal_group = tag, error = %e, "iscsi: accept failed");
                            break;
                        }
                    }
                }
            }
            busy
        }));
}
