//! The connections of one reactor (SPDK's "poll group"): an epoll set of their sockets, polled
//! without waiting by a busy poller (the set's fd is one of the reactor's interrupt sources,
//! so an idle reactor sleeps until a socket has something), a timed poller for pings and
//! timeouts, and the placement of new connections on the reactor serving the fewest.

use super::conn::Conn;
use crate::framework::id_hash::IdMap;
use crate::framework::{self, InterruptSource, PollStatus, Poller};
use std::cell::RefCell;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// Connections per reactor (placement reads it from reactor 0).
fn load() -> &'static [AtomicUsize] {
    static LOAD: OnceLock<Vec<AtomicUsize>> = OnceLock::new();
    LOAD.get_or_init(|| (0..framework::reactors().len().max(1)).map(|_| AtomicUsize::new(0)).collect())
}

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// One reactor's connections.
pub(super) struct Group {
    epoll: Epoll,
    pub(super) conns: RefCell<IdMap<u64, Rc<RefCell<Conn>>>>,
    /// Connections with responses queued since their last flush.
    dirty: RefCell<Vec<u64>>,
    _interrupt: Option<InterruptSource>,
    pollers: RefCell<Vec<Poller>>,
    reactor: usize,
    /// Some connection waits on something other than its socket (scanned for while set).
    background: std::cell::Cell<bool>,
    /// Some connection closed since the last reaping.
    closed: std::cell::Cell<bool>,
}

thread_local! {
    static GROUP: RefCell<Option<Rc<Group>>> = const { RefCell::new(None) };
}

/// This reactor's group, created on first use.
pub(super) fn current() -> Rc<Group> {
    if let Some(g) = GROUP.with(|g| g.borrow().clone()) {
        return g;
    }
    let epoll = Epoll::new().expect("epoll_create1 cannot fail short of fd exhaustion");
    let interrupt = framework::register_interrupt(epoll.as_raw_fd()).ok();
    let g = Rc::new(Group {
        epoll,
        conns: RefCell::new(IdMap::default()),
        dirty: RefCell::new(Vec::new()),
        _interrupt: interrupt,
        pollers: RefCell::new(Vec::new()),
        reactor: framework::current_index().unwrap_or(0),
        background: std::cell::Cell::new(false),
        closed: std::cell::Cell::new(false),
    });
    let weak = Rc::downgrade(&g);
    let busy = framework::poller_register("iscsi_poll_group", Duration::ZERO, move || match weak.upgrade() {
        Some(g) => g.poll(),
        None => PollStatus::Idle,
    });
    let weak = Rc::downgrade(&g);
    let timer = framework::poller_register("iscsi_timers", Duration::from_millis(100), move || {
        if let Some(g) = weak.upgrade() {
            g.tick();
        }
        PollStatus::Idle
    });
    g.pollers.borrow_mut().extend([busy, timer]);
    GROUP.with(|cell| *cell.borrow_mut() = Some(g.clone()));
    g
}

/// Connections the target holds at most (logged in or not): past it a new connection is
/// closed at once, so a flood costs a bounded amount of memory (a receive buffer each).
const MAX_CONNECTIONS: usize = 4096;

/// Hands a connection accepted on reactor 0 to the reactor with the fewest.
pub(super) fn place(stream: TcpStream, peer: SocketAddr, pg_tag: u32) {
    let load = load();
    if load.iter().map(|l| l.load(Ordering::Relaxed)).sum::<usize>() >= MAX_CONNECTIONS {
        tracing::warn!(%peer, "iscsi: {MAX_CONNECTIONS} connections already, closing a new one");
        return;
    }
    let target = (0..load.len()).min_by_key(|&i| load[i].load(Ordering::Relaxed)).unwrap_or(0);
    load[target].fetch_add(1, Ordering::Relaxed);
    let r = framework::send(target, move || {
        let id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
        let g = current();
        match Conn::new(id, stream, peer, pg_tag, g.reactor) {
            Ok(conn) => g.add(conn),
            Err(e) => {
                tracing::warn!(%peer, error = %e, "iscsi: cannot set up a connection");
                load[g.reactor].fetch_sub(1, Ordering::Relaxed);
            }
        }
    });
    if r.is_err() {
        load[target].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Group {
    fn add(&self, conn: Conn) {
        let id = conn.id();
        let fd = conn.fd();
        let event = EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, id);
        if let Err(e) = self.epoll.ctl(ControlOperation::Add, fd, event) {
            tracing::warn!(error = %e, "iscsi: cannot poll a connection");
            load()[self.reactor].fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let conn = Rc::new(RefCell::new(conn));
        conn.borrow_mut().set_self(Rc::downgrade(&conn));
        self.conns.borrow_mut().insert(id, conn);
    }

    /// Also waits for the socket to take more (a flush left bytes queued) or not.
    pub(super) fn want_writable(&self, id: u64, fd: i32, writable: bool, readable: bool) {
        let mut set = EventSet::READ_HANG_UP;
        if readable {
            set |= EventSet::IN;
        }
        if writable {
            set |= EventSet::OUT;
        }
        let _ = self.epoll.ctl(ControlOperation::Modify, fd, EpollEvent::new(set, id));
    }

    /// Notes that `id` has responses to send (flushed once per poll, so completions that
    /// arrive together leave in one `sendmsg`).
    pub(super) fn mark_dirty(&self, id: u64) {
        self.dirty.borrow_mut().push(id);
    }

    fn get(&self, id: u64) -> Option<Rc<RefCell<Conn>>> {
        self.conns.borrow().get(&id).cloned()
    }

    fn poll(&self) -> PollStatus {
        let mut events = [EpollEvent::default(); 64];
        let n = self.epoll.wait(0, &mut events).unwrap_or(0);
        let mut busy = n > 0;
        for ev in &events[..n] {
            let Some(c) = self.get(ev.data()) else { continue };
            let set = ev.event_set();
            let mut c = c.borrow_mut();
            if set.contains(EventSet::OUT) {
                c.on_writable();
            }
            if set.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR) {
                c.on_readable();
            }
        }
        let dirty = std::mem::take(&mut *self.dirty.borrow_mut());
        for id in dirty {
            if let Some(c) = self.get(id) {
                busy = true;
                c.borrow_mut().flush();
            }
        }
        // Connections waiting on something that is not a socket (a task management function
        // draining, a reinstated session's teardown, a close waiting for its I/O).
        if self.background.get() {
            let waiting: Vec<_> =
                self.conns.borrow().values().filter(|c| c.borrow().has_background_work()).cloned().collect();
            self.background.set(!waiting.is_empty());
            for c in waiting {
                if c.borrow_mut().background() {
                    busy = true;
                }
            }
        }
        if self.closed.get() {
            self.reap();
        }
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }

    fn tick(&self) {
        let conns: Vec<_> = self.conns.borrow().values().cloned().collect();
        for c in conns {
            c.borrow_mut().tick();
        }
        self.reap();
    }

    /// Notes that a connection has work besides its socket (see `poll`).
    pub(super) fn note_background(&self) {
        self.background.set(true);
    }

    /// Notes that a connection closed (reaped once its I/O is back).
    pub(super) fn note_closed(&self) {
        self.closed.set(true);
    }

    /// Drops connections that are closed and have nothing in flight.
    fn reap(&self) {
        self.closed.set(false);
        let finished: Vec<u64> =
            self.conns.borrow().iter().filter(|(_, c)| c.borrow().finished()).map(|(id, _)| *id).collect();
        for id in finished {
            let removed = self.conns.borrow_mut().remove(&id);
            if let Some(c) = removed {
                let fd = c.borrow().fd();
                let _ = self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
                load()[self.reactor].fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// The current reactor's group, if it has one (for completions arriving on it).
pub(super) fn existing() -> Option<Rc<Group>> {
    GROUP.with(|g| g.borrow().clone())
}

/// Runs `f` on every reactor's connections, collecting what it returns.
pub(super) fn each_conn<R: Send + 'static>(f: impl Fn(&Conn) -> Option<R> + Send + Sync + 'static) -> Vec<R> {
    let f = Arc::new(f);
    framework::call_on_each(move || {
        let Some(g) = existing() else { return Vec::new() };
        let conns: Vec<_> = g.conns.borrow().values().cloned().collect();
        conns.iter().filter_map(|c| f(&c.borrow())).collect::<Vec<R>>()
    })
    .map(|v| v.into_iter().flatten().collect())
    .unwrap_or_default()
}

/// Runs `f` on connection `id` on `reactor`, without waiting.
pub(super) fn with_conn(reactor: usize, id: u64, f: impl FnOnce(&mut Conn) + Send + 'static) {
    let _ = framework::send(reactor, move || {
        if let Some(c) = existing().and_then(|g| g.get(id)) {
            f(&mut c.borrow_mut());
        }
    });
}
