//! RPC clients on the control plane's management loop: a listener that accepts without blocking,
//! and one small state machine per client.
//!
//! The loop only reads, frames and writes, never waiting on a client. Each complete request
//! goes to the RPC worker pool (handlers may wait: for a reactor, for initialisation, for a
//! virtio peer up to its timeout), one request per client at a time so the answers keep their
//! order. While a request runs, or while its answer waits for a client that does not read,
//! the client's socket is out of the epoll set: such a client costs its own connection and
//! nothing else. The pool grows to one thread per connection at most, so handlers that wait
//! for each other (`framework_wait_init` waiting for `framework_start_init` from another
//! client) cannot deadlock it, and it shrinks back when idle.

use super::dispatch;
use super::error::RpcError;
use super::framer::Framer;
use super::server::{next_request, LIMITS, MAX_CONNECTIONS};
use crate::framework::connections::{accept_each, watch_listener, Connections, Member};
use crate::framework::socket::peer_credentials;
use crate::framework::worker_pool::WorkerPool;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use serde_json::{json, Value};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Bytes read from one client per round of the loop, so a client streaming without pause
/// cannot keep the loop from the others.
const READ_BUDGET: usize = 16 * CHUNK;
const CHUNK: usize = 64 * 1024;
/// Clients accepted per round of the loop.
const ACCEPT_BUDGET: usize = 64;

/// The RPC worker pool: one thread kept, up to one per connection while handlers run.
fn workers() -> Option<&'static WorkerPool> {
    static POOL: OnceLock<Option<WorkerPool>> = OnceLock::new();
    POOL.get_or_init(|| match WorkerPool::new("rpc_worker", 1, MAX_CONNECTIONS, Duration::from_secs(10)) {
        Ok(pool) => Some(pool),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the RPC workers");
            None
        }
    })
    .as_ref()
}

/// Accepts clients on the loop.
pub(super) struct Listener {
    listener: UnixListener,
    connections: Arc<Connections>,
}

impl Listener {
    /// `listener` must be non-blocking.
    pub fn new(listener: UnixListener, connections: Arc<Connections>) -> Listener {
        Listener { listener, connections }
    }

    fn admit(&self, stream: UnixStream) {
        match peer_credentials(stream.as_raw_fd()) {
            Ok(c) => tracing::info!(pid = c.pid, uid = c.uid, gid = c.gid, "RPC client connected"),
            Err(e) => tracing::warn!(error = %e, "RPC client connected; SO_PEERCRED failed"),
        }
        if self.connections.active() >= MAX_CONNECTIONS {
            let e = RpcError::new(-libc::EBUSY, format!("too many RPC connections (limit {MAX_CONNECTIONS})"));
            // Best effort and never blocking: the client is dropped either way.
            let _ = stream.set_nonblocking(true);
            let _ = (&stream).write(&encode(&json!({"jsonrpc": "2.0", "id": null, "error": e.to_json()})));
            return;
        }
        self.connections.admit("an RPC connection", |member| Connection::new(stream, member));
    }
}

impl MutEventSubscriber for Listener {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let listener = &self.listener;
        accept_each("RPC socket", ACCEPT_BUDGET, || listener.accept().map(|(s, _)| s), |s| self.admit(s));
    }

    fn init(&mut self, ops: &mut EventOps) {
        watch_listener(ops, &self.listener, "RPC socket");
    }
}

/// One client.
struct Connection {
    stream: UnixStream,
    framer: Framer,
    /// Answer bytes not yet taken by the socket (from `sent` on).
    outbox: Vec<u8>,
    sent: usize,
    /// A worker is running this client's request; its answer arrives through `done`.
    busy: bool,
    done: EventFd,
    answer: Arc<Mutex<Option<Vec<u8>>>>,
    /// The client shut its side: answer what it sent, then close.
    eof: bool,
    /// The stream could not be framed: close once the error answer is out.
    fatal: bool,
    member: Member,
}

impl Connection {
    fn new(stream: UnixStream, member: Member) -> std::io::Result<Connection> {
        stream.set_nonblocking(true)?;
        let done = EventFd::new(EFD_NONBLOCK)?;
        Ok(Connection {
            stream,
            framer: Framer::new(LIMITS),
            outbox: Vec::new(),
            sent: 0,
            busy: false,
            done,
            answer: Arc::new(Mutex::new(None)),
            eof: false,
            fatal: false,
            member,
        })
    }

    /// Moves the connection on as far as it can go without waiting, then says what it waits
    /// for: the client's next bytes, room in its socket, or a worker.
    fn advance(&mut self, ops: &mut EventOps) {
        let mut budget = READ_BUDGET;
        loop {
            if !self.flush() {
                return self.close(ops);
            }
            if self.sent < self.outbox.len() {
                return self.watch(ops, Some(EventSet::OUT));
            }
            if self.busy {
                // Out of the set while the worker runs: a hang-up cannot be masked and would
                // spin the loop.
                return self.watch(ops, None);
            }
            if self.fatal {
                return self.close(ops);
            }
            match next_request(&mut self.framer) {
                Some(Ok(request)) => {
                    self.dispatch(request, ops);
                    continue;
                }
                Some(Err(e)) => {
                    self.queue(&json!({"jsonrpc": "2.0", "id": null, "error": e.to_json()}));
                    self.fatal = true;
                    continue;
                }
                None => {}
            }
            if self.eof {
                return self.close(ops);
            }
            if budget == 0 {
                return self.watch(ops, Some(EventSet::IN));
            }
            let mut chunk = [0u8; CHUNK];
            match self.stream.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    self.framer.push(&chunk[..n]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return self.watch(ops, Some(EventSet::IN)),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.close(ops),
            }
        }
    }

    /// Hands `request` to a worker.
    fn dispatch(&mut self, request: Value, ops: &mut EventOps) {
        let Some(pool) = workers() else {
            self.queue(&json!({"jsonrpc": "2.0", "id": null, "error": RpcError::new(-libc::EAGAIN, "no RPC worker").to_json()}));
            self.fatal = true;
            return;
        };
        let answer = self.answer.clone();
        let done = match self.done.try_clone() {
            Ok(d) => d,
            Err(_) => return self.close(ops),
        };
        let spawned = pool.spawn_notifying(
            move || {
                let bytes = dispatch::handle_value(request).map(|r| encode(&r)).unwrap_or_default();
                *answer.lock().unwrap_or_else(|e| e.into_inner()) = Some(bytes);
            },
            move || {
                let _ = done.write(1);
            },
        );
        match spawned {
            Ok(()) => self.busy = true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot run an RPC request");
                self.close(ops);
            }
        }
    }

    /// The worker finished: its answer joins the outbox.
    fn take_answer(&mut self) {
        let _ = self.done.read();
        if let Some(bytes) = self.answer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            self.busy = false;
            self.outbox.extend_from_slice(&bytes);
        }
    }

    fn queue(&mut self, response: &Value) {
        self.outbox.extend_from_slice(&encode(response));
    }

    /// Writes what the socket takes now; false when the client is gone.
    fn flush(&mut self) -> bool {
        while self.sent < self.outbox.len() {
            match self.stream.write(&self.outbox[self.sent..]) {
                Ok(0) => return false,
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        self.outbox.clear();
        self.sent = 0;
        true
    }

    fn watch(&mut self, ops: &mut EventOps, want: Option<EventSet>) {
        self.member.watch(ops, &self.stream, want);
    }

    fn close(&mut self, ops: &mut EventOps) {
        self.member.close(ops, &self.stream, &[self.done.as_raw_fd()]);
    }
}

impl MutEventSubscriber for Connection {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if self.member.is_closed() {
            return;
        }
        if events.fd() == self.done.as_raw_fd() {
            self.take_answer();
        }
        self.advance(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.done, EventSet::IN)) {
            tracing::warn!(error = %e, "cannot watch an RPC worker's completion");
        }
        // Not `advance`: the connection's id is set only once this returns, and closing needs
        // it. Whatever the client sent already makes the socket readable at once.
        self.watch(ops, Some(EventSet::IN));
    }
}

/// One response as it goes on the wire: the JSON text and a newline (rpc.py reads by value,
/// line-based clients by line).
fn encode(response: &Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(response).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot serialise an RPC response");
        b"{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32603,\"message\":\"internal error\"}}".to_vec()
    });
    bytes.push(b'\n');
    bytes
}
