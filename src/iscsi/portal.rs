//! Listening portals: a portal group's TCP listeners, accepting on reactor 0 (a poller, with
//! the listening sockets as interrupt sources so an idle reactor sleeps), and handing each new
//! connection to the reactor serving the fewest.

use super::config::Portal;
use super::error::IscsiError;
use crate::framework::{self, PollStatus};
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A portal group's listeners; dropping it stops accepting (connections already accepted stay).
#[derive(Debug)]
pub struct Listener {
    addrs: Vec<SocketAddr>,
    id: u64,
}

/// Identifies a listener's sockets on reactor 0.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A listener's sockets and their registrations as interrupt sources of reactor 0.
type Accepting = (Vec<TcpListener>, Vec<framework::InterruptSource>);

thread_local! {
    /// On reactor 0: each live listener's sockets and their interrupt registrations, by id.
    /// Dropping an entry closes the sockets (on reactor 0, where they are registered).
    static ACCEPTING: RefCell<HashMap<u64, Accepting>> =
        RefCell::new(HashMap::new());
}

impl Listener {
    /// The bound addresses (with the port the kernel chose for port 0).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // The sockets are closed on reactor 0 before this returns: the port is free again when
        // the RPC that dropped the listener answers (a test or an operator may re-create the
        // group at once). The poller notices and unregisters itself.
        let id = self.id;
        let close = move || drop(ACCEPTING.with(|m| m.borrow_mut().remove(&id)));
        if framework::current_index() == Some(0) {
            close();
        } else {
            let _ = framework::call(0, close);
        }
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
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    framework::call(0, move || start_accepting(tag, id, sockets))?;
    Ok(Listener { addrs, id })
}

/// On reactor 0: a poller accepting on `sockets` until listener `id` is dropped.
fn start_accepting(tag: u32, id: u64, sockets: Vec<TcpListener>) {
    let sources: Vec<_> = sockets.iter().filter_map(|s| framework::register_interrupt(s.as_raw_fd()).ok()).collect();
    ACCEPTING.with(|m| m.borrow_mut().insert(id, (sockets, sources)));
    let poller = std::rc::Rc::new(std::cell::RefCell::new(None));
    let handle = poller.clone();
    // A timed poller (1 ms): accepting is not on the data path, and a busy poller would keep
    // reactor 0 from ever sleeping while a portal exists.
    *poller.borrow_mut() =
        Some(framework::poller_register(&format!("iscsi_accept_{tag}"), Duration::from_millis(1), move || {
            let accepted: Option<Vec<(TcpStream, SocketAddr)>> = ACCEPTING.with(|m| {
                let m = m.borrow();
                let (sockets, _) = m.get(&id)?;
                let mut out = Vec::new();
                for s in sockets {
                    // Bounded per run, so a connection storm cannot monopolise the reactor.
                    for _ in 0..16 {
                        match s.accept() {
                            Ok(c) => out.push(c),
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(e) => {
                                // EMFILE and friends: try again next run rather than spin.
                                tracing::warn!(portal_group = tag, error = %e, "iscsi: accept failed");
                                break;
                            }
                        }
                    }
                }
                Some(out)
            });
            let Some(accepted) = accepted else {
                // The listener was dropped (its sockets are closed): stop polling.
                handle.borrow_mut().take();
                return PollStatus::Idle;
            };
            let busy = if accepted.is_empty() { PollStatus::Idle } else { PollStatus::Busy };
            // Handed over outside the table's borrow.
            for (stream, peer) in accepted {
                super::conn::adopt(stream, peer, tag);
            }
            busy
        }));
}
