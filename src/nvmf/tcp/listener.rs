//! Listening addresses: one socket per address, refcounted (several subsystems may listen on
//! one address, and discovery is served on all), accepting on reactor 0 by a timed poller
//! with the socket as an interrupt source (an idle reactor sleeps), each connection handed to
//! the reactor with the fewest.

use super::{group, NvmfError};
use crate::framework::{self, PollStatus};
use crate::nvme::subsystem::ListenAddress;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

struct Entry {
    refs: usize,
    id: u64,
}

/// Listening addresses (port resolved) and their users.
static LISTENERS: Mutex<Option<HashMap<ListenAddress, Entry>>> = Mutex::new(None);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// On reactor 0: each listener's socket and its interrupt registration, by id.
    static ACCEPTING: RefCell<HashMap<u64, (TcpListener, Option<framework::InterruptSource>)>> =
        RefCell::new(HashMap::new());
}

/// The socket address of `a` (trtype TCP, adrfam IPv4 or IPv6, a numeric address and port).
fn socket_addr(a: &ListenAddress) -> Result<SocketAddr, NvmfError> {
    let bad = |reason: &str| NvmfError::BadAddress {
        trtype: a.trtype.clone(),
        adrfam: a.adrfam.clone(),
        traddr: a.traddr.clone(),
        trsvcid: a.trsvcid.clone(),
        reason: reason.to_string(),
    };
    if !a.trtype.eq_ignore_ascii_case("tcp") {
        return Err(bad("trtype must be TCP"));
    }
    let ip: IpAddr = a
        .traddr
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| bad("traddr is not an IP address"))?;
    let v6 = if a.adrfam.eq_ignore_ascii_case("ipv4") {
        false
    } else if a.adrfam.eq_ignore_ascii_case("ipv6") {
        true
    } else {
        return Err(bad("adrfam must be IPv4 or IPv6"));
    };
    if ip.is_ipv6() != v6 {
        return Err(bad("traddr does not match adrfam"));
    }
    let port: u16 = a.trsvcid.parse().map_err(|_| bad("trsvcid is not a port number"))?;
    Ok(SocketAddr::new(ip, port))
}

/// The canonical form of an address (trtype "TCP", adrfam "IPv4"/"IPv6", numeric port).
fn canonical(addr: SocketAddr) -> ListenAddress {
    ListenAddress {
        trtype: "TCP".into(),
        adrfam: if addr.is_ipv6() { "IPv6" } else { "IPv4" }.into(),
        traddr: addr.ip().to_string(),
        trsvcid: addr.port().to_string(),
    }
}

/// Listens on `addr` (a second call for the same address only counts a user). Returns the
/// address as listened on: canonical names, and port 0 resolved to the port the kernel chose.
pub fn listen(addr: &ListenAddress) -> Result<ListenAddress, NvmfError> {
    if super::current_options().is_none() {
        return Err(NvmfError::NoTransport);
    }
    let sa = socket_addr(addr)?;
    let mut map = LISTENERS.lock().unwrap_or_else(|e| e.into_inner());
    let map = map.get_or_insert_with(HashMap::new);
    if sa.port() != 0 {
        if let Some(e) = map.get_mut(&canonical(sa)) {
            e.refs += 1;
            return Ok(canonical(sa));
        }
    }
    // std's TcpListener sets SO_REUSEADDR on Unix, so a restarted daemon rebinds at once.
    let l = TcpListener::bind(sa).map_err(|source| NvmfError::Listen { addr: sa, source })?;
    l.set_nonblocking(true).map_err(|source| NvmfError::Listen { addr: sa, source })?;
    let bound = l.local_addr().map_err(|source| NvmfError::Listen { addr: sa, source })?;
    let key = canonical(bound);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let listen_as = key.clone();
    framework::call(0, move || start_accepting(id, l, listen_as))?;
    tracing::info!(addr = %bound, "nvmf: listening");
    map.insert(key.clone(), Entry { refs: 1, id });
    Ok(key)
}

/// Drops a user of `addr`; the last one closes the socket (connections stay).
pub fn stop_listening(addr: &ListenAddress) {
    let Ok(sa) = socket_addr(addr) else { return };
    let key = canonical(sa);
    let mut map = LISTENERS.lock().unwrap_or_else(|e| e.into_inner());
    let Some(map) = map.as_mut() else { return };
    let Some(e) = map.get_mut(&key) else { return };
    e.refs -= 1;
    if e.refs > 0 {
        return;
    }
    let id = e.id;
    map.remove(&key);
    // Closed on reactor 0 (where it is registered) before this returns: the port is free when
    // the RPC answers.
    let close = move || drop(ACCEPTING.with(|m| m.borrow_mut().remove(&id)));
    if framework::current_index() == Some(0) {
        close();
    } else {
        let _ = framework::call(0, close);
    }
    tracing::info!(addr = %sa, "nvmf: stopped listening");
}

/// On reactor 0: a poller accepting on `l` until listener `id` is dropped.
fn start_accepting(id: u64, l: TcpListener, listen_as: ListenAddress) {
    let source = framework::register_interrupt(l.as_raw_fd()).ok();
    ACCEPTING.with(|m| m.borrow_mut().insert(id, (l, source)));
    let slot: Rc<RefCell<Option<framework::Poller>>> = Rc::new(RefCell::new(None));
    let handle = slot.clone();
    // Timed (1 ms): accepting is not on the data path, and a busy poller would keep reactor 0
    // from ever sleeping while a listener exists.
    *slot.borrow_mut() = Some(framework::poller_register("nvmf_tcp_accept", Duration::from_millis(1), move || {
        let accepted = ACCEPTING.with(|m| {
            let m = m.borrow();
            let (l, _) = m.get(&id)?;
            let mut out = Vec::new();
            // Bounded per run, so a connection storm cannot monopolise the reactor.
            for _ in 0..16 {
                match l.accept() {
                    Ok(c) => out.push(c),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        // EMFILE and friends: try again next run rather than spin.
                        tracing::warn!(error = %e, "nvmf: accept failed");
                        break;
                    }
                }
            }
            Some(out)
        });
        let Some(accepted) = accepted else {
            handle.borrow_mut().take();
            return PollStatus::Idle;
        };
        let busy = if accepted.is_empty() { PollStatus::Idle } else { PollStatus::Busy };
        for (stream, peer) in accepted {
            group::place(stream, peer, listen_as.clone());
        }
        busy
    }));
}
