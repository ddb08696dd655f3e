//! The connections of one reactor (SPDK's "poll group"), for any TCP protocol: an epoll set
//! of their sockets polled without waiting by a busy poller (the set's fd is one of the
//! reactor's interrupt sources, so an idle reactor sleeps until a socket has something), a
//! timed poller for timeouts, connections with queued responses flushed once per poll (so
//! completions that arrive together leave in one `sendmsg`), closed ones reaped once they owe
//! nothing; and [`Load`]: placing a new connection on the reactor serving the fewest, with a
//! bound on them all.

use crate::framework::id_hash::IdMap;
use crate::framework::{self, InterruptSource, PollStatus, Poller};
use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// What a poll group needs of a connection.
pub trait GroupConn {
    /// Its socket.
    fn fd(&self) -> RawFd;
    /// The socket has bytes (or hung up).
    fn on_readable(&mut self);
    /// The socket takes more bytes.
    fn on_writable(&mut self);
    /// Sends what is queued (called once per poll after [`PollGroup::mark_dirty`]).
    fn flush(&mut self);
    /// Every timer period (timeouts).
    fn tick(&mut self);
    /// Closed and owing nothing to anyone: the group drops it.
    fn finished(&self) -> bool;
}

/// Connections per reactor and their bound, for placement (read and changed from any thread).
pub struct Load {
    counts: Vec<AtomicUsize>,
    max: usize,
}

impl Load {
    /// Counters for `reactors` reactors, at most `max` connections in all.
    pub fn new(reactors: usize, max: usize) -> Load {
        Load { counts: (0..reactors.max(1)).map(|_| AtomicUsize::new(0)).collect(), max }
    }

    /// Takes a place on the reactor with the fewest connections; None past the bound.
    /// (Called on one thread, reactor 0, so the check and the increment do not race.)
    pub fn reserve(&self) -> Option<usize> {
        if self.total() >= self.max {
            return None;
        }
        let target = (0..self.counts.len()).min_by_key(|&i| self.counts[i].load(Ordering::Relaxed)).unwrap_or(0);
        self.counts[target].fetch_add(1, Ordering::Relaxed);
        Some(target)
    }

    /// Gives back a place on `reactor`.
    pub fn release(&self, reactor: usize) {
        if let Some(c) = self.counts.get(reactor) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Connections in all.
    pub fn total(&self) -> usize {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Connections on `reactor`.
    pub fn on(&self, reactor: usize) -> usize {
        self.counts.get(reactor).map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// One reactor's connections of one protocol.
pub struct PollGroup<C: GroupConn + 'static> {
    epoll: Epoll,
    conns: RefCell<IdMap<u64, Rc<RefCell<C>>>>,
    dirty: RefCell<Vec<u64>>,
    /// Connections with received input left to handle (polled again with no epoll event).
    ready: RefCell<Vec<u64>>,
    closed: Cell<bool>,
    _interrupt: Option<InterruptSource>,
    pollers: RefCell<Vec<Poller>>,
    reactor: usize,
    load: &'static Load,
}

impl<C: GroupConn + 'static> PollGroup<C> {
    /// A group on the current reactor, polled by pollers named `<name>_poll_group` and
    /// `<name>_timers` (every `tick`); each connection it reaps gives its place back to `load`.
    pub fn new(name: &str, tick: Duration, load: &'static Load) -> std::io::Result<Rc<PollGroup<C>>> {
        let epoll = Epoll::new()?;
        let interrupt = framework::register_interrupt(epoll.as_raw_fd()).ok();
        let g = Rc::new(PollGroup {
            epoll,
            conns: RefCell::new(IdMap::default()),
            dirty: RefCell::new(Vec::new()),
            ready: RefCell::new(Vec::new()),
            closed: Cell::new(false),
            _interrupt: interrupt,
            pollers: RefCell::new(Vec::new()),
            reactor: framework::current_index().unwrap_or(0),
            load,
        });
        let weak = Rc::downgrade(&g);
        let busy =
            framework::poller_register(&format!("{name}_poll_group"), Duration::ZERO, move || match weak.upgrade() {
                Some(g) => g.poll(),
                None => PollStatus::Idle,
            });
        let weak = Rc::downgrade(&g);
        let timer = framework::poller_register(&format!("{name}_timers"), tick, move || {
            if let Some(g) = weak.upgrade() {
                g.tick();
            }
            PollStatus::Idle
        });
        g.pollers.borrow_mut().extend([busy, timer]);
        Ok(g)
    }

    /// The reactor it runs on.
    pub fn reactor(&self) -> usize {
        self.reactor
    }

    /// Starts polling `conn` (its place in `load` already taken); None if its socket cannot
    /// be watched (the place is given back).
    pub fn add(&self, id: u64, conn: C) -> Option<Rc<RefCell<C>>> {
        let event = EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, id);
        if let Err(e) = self.epoll.ctl(ControlOperation::Add, conn.fd(), event) {
            tracing::warn!(error = %e, "cannot poll a connection");
            self.load.release(self.reactor);
            return None;
        }
        let conn = Rc::new(RefCell::new(conn));
        self.conns.borrow_mut().insert(id, conn.clone());
        Some(conn)
    }

    /// Sets what the socket of `id` is watched for.
    pub fn watch(&self, id: u64, fd: RawFd, readable: bool, writable: bool) {
        let mut set = EventSet::READ_HANG_UP;
        if readable {
            set |= EventSet::IN;
        }
        if writable {
            set |= EventSet::OUT;
        }
        let _ = self.epoll.ctl(ControlOperation::Modify, fd, EpollEvent::new(set, id));
    }

    /// Notes that `id` has something to send (its `flush` runs at the end of this poll).
    pub fn mark_dirty(&self, id: u64) {
        self.dirty.borrow_mut().push(id);
    }

    /// Notes that `id` left received input unhandled (its work budget for one poll ran out):
    /// its `on_readable` runs at the next poll even if the socket has nothing new.
    pub fn mark_readable(&self, id: u64) {
        self.ready.borrow_mut().push(id);
    }

    /// Notes that a connection closed (reaped once `finished`).
    pub fn note_closed(&self) {
        self.closed.set(true);
    }

    /// Connection `id`.
    pub fn get(&self, id: u64) -> Option<Rc<RefCell<C>>> {
        self.conns.borrow().get(&id).cloned()
    }

    /// Every connection.
    pub fn conns(&self) -> Vec<Rc<RefCell<C>>> {
        self.conns.borrow().values().cloned().collect()
    }

    fn poll(&self) -> PollStatus {
        // Responses that completed since the last poll leave first, before more requests are
        // read and worked on: the peer gets them a whole batch of work earlier.
        let mut busy = self.flush_dirty();
        let ready = std::mem::take(&mut *self.ready.borrow_mut());
        for &id in &ready {
            if let Some(c) = self.get(id) {
                busy = true;
                c.borrow_mut().on_readable();
            }
        }
        let mut events = [EpollEvent::default(); 64];
        let n = self.epoll.wait(0, &mut events).unwrap_or(0);
        busy |= n > 0;
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
        busy |= self.flush_dirty();
        if self.closed.get() {
            self.reap();
        }
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }

    /// Flushes the connections marked dirty; true if there were any. A flush may mark
    /// others (or itself) dirty again: those go at the next call.
    fn flush_dirty(&self) -> bool {
        if self.dirty.borrow().is_empty() {
            return false;
        }
        let dirty = std::mem::take(&mut *self.dirty.borrow_mut());
        let mut flushed = false;
        for id in dirty {
            if let Some(c) = self.get(id) {
                flushed = true;
                c.borrow_mut().flush();
            }
        }
        flushed
    }

    fn tick(&self) {
        for c in self.conns() {
            c.borrow_mut().tick();
        }
        self.reap();
    }

    /// Drops connections that are closed and owe nothing.
    fn reap(&self) {
        self.closed.set(false);
        let finished: Vec<u64> =
            self.conns.borrow().iter().filter(|(_, c)| c.borrow().finished()).map(|(id, _)| *id).collect();
        for id in finished {
            let removed = self.conns.borrow_mut().remove(&id);
            if let Some(c) = removed {
                let _ = self.epoll.ctl(ControlOperation::Delete, c.borrow().fd(), EpollEvent::default());
                self.load.release(self.reactor);
            }
        }
    }
}
