//! Scrapers on the control plane's event loop: a listener that accepts without blocking, and
//! one small state machine per connection: read the request head (bounded), wait for the
//! gatherer, write the answer, end our side, drain until the client closes, close.
//!
//! Nothing here blocks or waits on a client. Each connection has a time budget
//! ([`CONNECTION_BUDGET`], a timerfd on the loop) and byte budgets (the head limit, the drain
//! limit): a scraper that connects and stays silent, trickles, sends garbage or never reads
//! its answer holds its own connection until then, and nothing else.

use super::endpoint::{AnyListener, AnyStream};
use super::gatherer::{Gatherer, Slot};
use super::http::{self, HttpError, RequestReader, CONTENT_TYPE};
use crate::framework::connections::{accept_each, watch_listener, Connections, Member};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;
use vmm_sys_util::timerfd::TimerFd;

/// Most connections at once; more are answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a connection may live, from accept to close.
pub const CONNECTION_BUDGET: Duration = Duration::from_secs(10);
/// Bytes read and dropped after the answer (a body, pipelined requests) before closing.
const DRAIN_LIMIT: usize = 64 * 1024;
/// Bytes per read.
const CHUNK: usize = 4096;
/// Connections accepted per round of the loop.
const ACCEPT_BUDGET: usize = 16;

/// Accepts scrapers on the loop.
pub(super) struct Listener {
    pub listener: AnyListener,
    pub connections: Arc<Connections>,
    pub gatherer: Arc<Gatherer>,
}

impl Listener {
    fn admit(&self, mut stream: AnyStream) {
        if self.connections.active() >= MAX_CONNECTIONS {
            let body = format!("too many metrics connections (limit {MAX_CONNECTIONS})\n");
            let answer =
                http::response(503, "Service Unavailable", &[], "text/plain; charset=utf-8", body.as_bytes(), false);
            // Best effort and never blocking (the stream is non-blocking): dropped either way.
            // What the client sent already is read first, so the close is not a reset that
            // could destroy the answer before the client reads it.
            let _ = stream.write(&answer);
            stream.shutdown_write();
            let _ = stream.read(&mut [0u8; CHUNK]);
            return;
        }
        let gatherer = self.gatherer.clone();
        self.connections.admit("a metrics connection", |member| Connection::new(stream, gatherer, member));
    }
}

impl MutEventSubscriber for Listener {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let listener = &self.listener;
        accept_each("metrics socket", ACCEPT_BUDGET, || listener.accept(), |s| self.admit(s));
    }

    fn init(&mut self, ops: &mut EventOps) {
        watch_listener(ops, &self.listener, "metrics socket");
    }
}

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Gathering the request head.
    Reading,
    /// The gatherer has the request; the socket is out of the epoll set.
    Waiting { head_only: bool },
    /// Writing the answer.
    Writing,
    /// Answer out and our side shut: reading (and dropping) until the client closes, so
    /// unread bytes cannot turn the close into a reset that loses the answer.
    Draining,
}

/// One scraper.
struct Connection {
    stream: AnyStream,
    reader: RequestReader,
    phase: Phase,
    outbox: Vec<u8>,
    sent: usize,
    drained: usize,
    slot: Arc<Slot>,
    timer: TimerFd,
    gatherer: Arc<Gatherer>,
    member: Member,
}

impl Connection {
    fn new(stream: AnyStream, gatherer: Arc<Gatherer>, member: Member) -> std::io::Result<Connection> {
        let mut timer = TimerFd::new().map_err(std::io::Error::from)?;
        timer.reset(CONNECTION_BUDGET, None).map_err(std::io::Error::from)?;
        let slot = Slot::new()?;
        Ok(Connection {
            stream,
            reader: RequestReader::default(),
            phase: Phase::Reading,
            outbox: Vec::new(),
            sent: 0,
            drained: 0,
            slot,
            timer,
            gatherer,
            member,
        })
    }

    /// Moves on as far as possible without waiting, then says what it waits for.
    fn advance(&mut self, ops: &mut EventOps) {
        loop {
            match self.phase {
                Phase::Reading => {
                    let mut chunk = [0u8; CHUNK];
                    match self.stream.read(&mut chunk) {
                        // The client gave up before a whole head: nothing to answer.
                        Ok(0) => return self.close(ops),
                        Ok(n) => match self.reader.push(&chunk[..n]) {
                            None => {}
                            Some(Ok(request)) => {
                                self.phase = Phase::Waiting { head_only: request.head_only };
                                self.gatherer.request(&self.slot);
                            }
                            Some(Err(e)) => self.refuse(e),
                        },
                        Err(e) if e.kind() == ErrorKind::WouldBlock => return self.watch(ops, Some(EventSet::IN)),
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => return self.close(ops),
                    }
                }
                // Out of the set while waiting: a hang-up cannot be masked and would spin the
                // loop; the answer's eventfd or the timer wakes the connection.
                Phase::Waiting { .. } => return self.watch(ops, None),
                Phase::Writing => {
                    while self.sent < self.outbox.len() {
                        match self.stream.write(&self.outbox[self.sent..]) {
                            Ok(0) => return self.close(ops),
                            Ok(n) => self.sent += n,
                            Err(e) if e.kind() == ErrorKind::WouldBlock => return self.watch(ops, Some(EventSet::OUT)),
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            Err(_) => return self.close(ops),
                        }
                    }
                    self.outbox = Vec::new();
                    self.stream.shutdown_write();
                    self.phase = Phase::Draining;
                }
                Phase::Draining => {
                    let mut chunk = [0u8; CHUNK];
                    match self.stream.read(&mut chunk) {
                        Ok(0) => return self.close(ops),
                        Ok(n) => {
                            self.drained += n;
                            if self.drained > DRAIN_LIMIT {
                                return self.close(ops);
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => return self.watch(ops, Some(EventSet::IN)),
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => return self.close(ops),
                    }
                }
            }
        }
    }

    fn refuse(&mut self, e: HttpError) {
        tracing::debug!(error = %e, "metrics request refused");
        self.outbox = e.response();
        self.phase = Phase::Writing;
    }

    /// The gatherer answered: the response goes out.
    fn answered(&mut self) {
        let Phase::Waiting { head_only } = self.phase else { return };
        let Some(answer) = self.slot.take() else { return };
        self.outbox = match answer.as_ref() {
            Ok(text) => http::response(200, "OK", &[], CONTENT_TYPE, text.as_bytes(), head_only),
            Err(why) => {
                tracing::warn!(error = %why, "metrics could not be gathered");
                let body = format!("metrics could not be gathered: {why}\n");
                http::response(503, "Service Unavailable", &[], "text/plain; charset=utf-8", body.as_bytes(), head_only)
            }
        };
        self.phase = Phase::Writing;
    }

    fn watch(&mut self, ops: &mut EventOps, want: Option<EventSet>) {
        self.member.watch(ops, &self.stream, want);
    }

    fn close(&mut self, ops: &mut EventOps) {
        self.member.close(ops, &self.stream, &[self.slot.done.as_raw_fd(), self.timer.as_raw_fd()]);
    }
}

impl MutEventSubscriber for Connection {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if self.member.is_closed() {
            return;
        }
        if events.fd() == self.timer.as_raw_fd() {
            tracing::debug!(phase = ?self.phase, "metrics connection out of time; closed");
            return self.close(ops);
        }
        if events.fd() == self.slot.done.as_raw_fd() {
            self.answered();
        }
        self.advance(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in [self.slot.done.as_raw_fd(), self.timer.as_raw_fd()] {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                tracing::warn!(error = %e, "cannot watch a metrics connection's events");
            }
        }
        // Not `advance`: the connection's id is set only once this returns, and closing
        // needs it. Whatever the client sent already makes the socket readable at once.
        self.watch(ops, Some(EventSet::IN));
    }
}
