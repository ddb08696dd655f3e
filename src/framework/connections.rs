//! What a server on the control plane's management loop (RPC, metrics) keeps of its clients:
//! how many are open (for its connection limit), their ids on the loop (so that stopping the
//! server closes them all), and what each client's socket is registered for.

use super::control_plane::{self, Subscriber};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber, SubscriberId};
use std::collections::HashSet;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// A server's open connections.
#[derive(Default)]
pub struct Connections {
    active: AtomicUsize,
    stopped: AtomicBool,
    ids: Mutex<HashSet<SubscriberId>>,
}

impl Connections {
    /// Connections open now: counted from [`Connections::join`] until their [`Member`] drops.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Counts a new connection; keep the [`Member`] in it (dropping it uncounts it).
    fn join(self: &Arc<Self>) -> Member {
        self.active.fetch_add(1, Ordering::AcqRel);
        Member { set: self.clone(), id: Arc::new(OnceLock::new()), interest: None, closed: false }
    }

    /// Makes a connection with a new [`Member`] (which it must keep) and adds it to the loop,
    /// unless the server is stopping; `what` names it in the log if `make` fails.
    pub fn admit<C: MutEventSubscriber + Send + 'static>(
        self: &Arc<Self>,
        what: &str,
        make: impl FnOnce(Member) -> std::io::Result<C>,
    ) {
        let member = self.join();
        let ticket = member.ticket();
        match make(member) {
            Ok(connection) => self.add(ticket, Box::new(connection)),
            Err(e) => tracing::warn!(error = %e, "cannot set up {what}"),
        }
    }

    /// Adds `connection` (holding the [`Member`] that gave `ticket`) to the loop, unless the
    /// server is stopping. The loop runs it in order after what was sent before.
    fn add(self: &Arc<Self>, ticket: Ticket, connection: Subscriber) {
        let Ok(management) = control_plane::management() else { return };
        let set = self.clone();
        let slot = ticket.0;
        management.on_loop(move |ops| {
            if set.stopped.load(Ordering::Acquire) {
                return;
            }
            let id = ops.add_subscriber(connection);
            let _ = slot.set(id);
            set.lock().insert(id);
        });
    }

    /// Stops the server: no connection joins the loop any more, the listener `listener`
    /// leaves it, then every open connection. Not on the loop thread (it waits for the loop).
    pub fn stop(&self, listener: Option<SubscriberId>) {
        self.stopped.store(true, Ordering::Release);
        if let (Some(id), Ok(management)) = (listener, control_plane::management()) {
            // The loop runs what was sent to it in order: once the listener is gone, every
            // connection it accepted is registered (or refused, as `stopped` is set).
            let _ = management.remove(id);
            let ids: Vec<SubscriberId> = self.lock().drain().collect();
            for id in ids {
                let _ = management.remove(id);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashSet<SubscriberId>> {
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One connection's place in its server's [`Connections`], and its client socket's place in
/// the loop's epoll set.
pub struct Member {
    set: Arc<Connections>,
    id: Arc<OnceLock<SubscriberId>>,
    /// What the client socket is registered for.
    interest: Option<EventSet>,
    closed: bool,
}

/// Where a [`Member`] learns its id on the loop.
struct Ticket(Arc<OnceLock<SubscriberId>>);

impl Member {
    fn ticket(&self) -> Ticket {
        Ticket(self.id.clone())
    }

    /// Whether the connection has closed itself.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Registers the client's `socket` for `want` (`None`: out of the set), touching the set
    /// only on a change.
    pub fn watch(&mut self, ops: &mut EventOps, socket: &impl AsRawFd, want: Option<EventSet>) {
        if self.interest == want {
            return;
        }
        let result = match (self.interest, want) {
            (None, Some(set)) => ops.add(Events::new(socket, set)),
            (Some(_), Some(set)) => ops.modify(Events::new(socket, set)),
            (Some(_), None) => ops.remove(Events::empty(socket)),
            (None, None) => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot watch a client socket");
        }
        self.interest = want;
    }

    /// Closes the connection (once; from its own `process`): `socket` and the connection's
    /// `other` fds leave the epoll set, and the connection leaves the loop once the current
    /// round of events is over (dropping it closes the socket).
    pub fn close(&mut self, ops: &mut EventOps, socket: &impl AsRawFd, other: &[RawFd]) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.watch(ops, socket, None);
        for &fd in other {
            let _ = ops.remove(Events::empty_raw(fd));
        }
        if let Some(&id) = self.id.get() {
            self.set.lock().remove(&id);
            if let Ok(management) = control_plane::management() {
                management.remove_later(id);
            }
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.set.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accepts up to `budget` connections (so a flood of them cannot keep the loop from the
/// others), handing each to `admit`, until `accept` would block; any other failure (out of
/// fds, say) is logged as `what`'s and tried again at the listener's next event.
pub fn accept_each<S>(
    what: &str,
    budget: usize,
    mut accept: impl FnMut() -> std::io::Result<S>,
    mut admit: impl FnMut(S),
) {
    for _ in 0..budget {
        match accept() {
            Ok(stream) => admit(stream),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::ConnectionAborted) => {}
            Err(e) => {
                tracing::warn!(error = %e, "{what}: accept failed");
                return;
            }
        }
    }
}

/// Watches a listening socket for connections (a listener subscriber's `init`).
pub fn watch_listener(ops: &mut EventOps, listener: &impl AsRawFd, what: &str) {
    if let Err(e) = ops.add(Events::new(listener, EventSet::IN)) {
        tracing::error!(error = %e, "cannot watch the {what}");
    }
}
