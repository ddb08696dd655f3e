//! Each reactor's NVMe/TCP connections: a `crate::net::poll_group::PollGroup`, placement of
//! new connections on the reactor with the fewest (bounded in all), and the per-group
//! counters `nvmf_get_stats` reports.

use super::conn::Conn;
use crate::framework;
use crate::net::poll_group::{Load, PollGroup};
use crate::nvme::subsystem::ListenAddress;
use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Connections the target holds at most (connected or not): past it a new connection is
/// closed at once, so a flood costs bounded memory.
pub const MAX_CONNECTIONS: usize = 4096;

fn load() -> &'static Load {
    static LOAD: OnceLock<Load> = OnceLock::new();
    LOAD.get_or_init(|| Load::new(framework::reactors().len(), MAX_CONNECTIONS))
}

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// Counters of one poll group (single writer: its reactor).
#[derive(Default)]
pub(super) struct Counters {
    pub admin_qpairs: Cell<u64>,
    pub io_qpairs: Cell<u64>,
    pub current_admin_qpairs: Cell<u64>,
    pub current_io_qpairs: Cell<u64>,
    pub completed_nvme_io: Cell<u64>,
    pub terminations: Cell<u64>,
}

/// One reactor's group and counters.
pub(super) struct Group {
    pub pg: Rc<PollGroup<Conn>>,
    pub counters: Counters,
}

thread_local! {
    static GROUP: RefCell<Option<Rc<Group>>> = const { RefCell::new(None) };
}

/// This reactor's group, created on first use.
pub(super) fn current() -> Option<Rc<Group>> {
    if let Some(g) = existing() {
        return Some(g);
    }
    let pg = match PollGroup::new("nvmf_tcp", Duration::from_millis(100), load()) {
        Ok(pg) => pg,
        Err(e) => {
            tracing::error!(error = %e, "nvmf: cannot create a poll group");
            return None;
        }
    };
    let g = Rc::new(Group { pg, counters: Counters::default() });
    GROUP.with(|cell| *cell.borrow_mut() = Some(g.clone()));
    Some(g)
}

/// The current reactor's group, if it has one.
pub(super) fn existing() -> Option<Rc<Group>> {
    GROUP.with(|g| g.borrow().clone())
}

/// Hands a connection accepted on reactor 0 to the reactor with the fewest.
pub(super) fn place(stream: TcpStream, peer: SocketAddr, listen: ListenAddress) {
    let Some(target) = load().reserve() else {
        tracing::warn!(%peer, "nvmf: {MAX_CONNECTIONS} connections already, closing a new one");
        return;
    };
    let Some(opts) = super::current_options() else {
        load().release(target);
        return;
    };
    let r = framework::send(target, move || {
        let id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
        let reactor = framework::current_index().unwrap_or(0);
        let Some(g) = current() else {
            load().release(reactor);
            return;
        };
        match Conn::new(id, stream, peer, listen, opts) {
            Ok(conn) => {
                g.pg.add(id, conn);
            }
            Err(e) => {
                tracing::warn!(%peer, error = %e, "nvmf: cannot set up a connection");
                load().release(reactor);
            }
        }
    });
    if r.is_err() {
        load().release(target);
    }
}

/// Runs `f` on every reactor's connections, collecting what it returns.
pub(super) fn each_conn<R: Send + 'static>(f: impl Fn(&Conn) -> Option<R> + Send + Sync + 'static) -> Vec<R> {
    let f = Arc::new(f);
    framework::call_on_each(move || {
        let Some(g) = existing() else { return Vec::new() };
        g.pg.conns().iter().filter_map(|c| f(&c.borrow())).collect::<Vec<R>>()
    })
    .map(|v| v.into_iter().flatten().collect())
    .unwrap_or_default()
}

/// Each reactor's group as `nvmf_get_stats` shows it.
pub(super) fn stats() -> Vec<serde_json::Value> {
    framework::call_on_each(|| {
        let reactor = framework::current_index().unwrap_or(0);
        let name = format!("nvmf_tgt_poll_group_{reactor:03}");
        let c = existing();
        let get = |f: fn(&Counters) -> &Cell<u64>| c.as_ref().map_or(0, |g| f(&g.counters).get());
        serde_json::json!({
            "name": name,
            "admin_qpairs": get(|c| &c.admin_qpairs),
            "io_qpairs": get(|c| &c.io_qpairs),
            "current_admin_qpairs": get(|c| &c.current_admin_qpairs),
            "current_io_qpairs": get(|c| &c.current_io_qpairs),
            "pending_bdev_io": 0,
            "completed_nvme_io": get(|c| &c.completed_nvme_io),
            "transports": [{
                "trtype": "TCP",
                "pending_data_buffer": 0,
                "current_connections": load().on(reactor),
                "terminations": get(|c| &c.terminations),
            }],
        })
    })
    .unwrap_or_default()
}
