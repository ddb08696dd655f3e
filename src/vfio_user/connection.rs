//! One vfio-user client on the control plane's event loop.
//!
//! The socket is non-blocking and owned by the loop: bytes and fds are gathered until a
//! whole message is in (its size is in the header), then it is handled: a doorbell write on
//! the loop itself ([`Session::try_fast`]), anything else on a control-plane worker. One
//! message at a time (the protocol processes commands in order); while a worker has one,
//! the loop stops reading the socket, which is also the back-pressure. Replies leave
//! through a bounded outbox, so a client that never reads them only loses its connection.

use super::session::{Message, Outcome, Session, LIMITS, MAX_MESSAGE};
use super::wire::{self, HEADER_LEN};
use crate::framework::control_plane;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber, SubscriberId};
use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, OnceLock};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Replies waiting for a client that does not read them, at most (then it is dropped).
const OUTBOX_LIMIT: usize = 4 << 20;

/// Why reading stopped.
#[derive(Debug)]
enum ReadEnd {
    Closed,
    Protocol(&'static str),
}

/// Gathers one message from a non-blocking stream across any number of reads.
#[derive(Default)]
struct Assembler {
    bytes: Vec<u8>,
    fds: Vec<File>,
}

impl Assembler {
    fn missing(&self) -> usize {
        if self.bytes.len() < HEADER_LEN {
            return HEADER_LEN - self.bytes.len();
        }
        // The size was checked when the header came in.
        wire::Header::decode(&self.bytes).size as usize - self.bytes.len()
    }

    fn read(&mut self, sock: &UnixStream) -> Result<Option<Message>, ReadEnd> {
        loop {
            let want = self.missing();
            if want == 0 {
                return Ok(Some(Message {
                    bytes: std::mem::take(&mut self.bytes),
                    fds: std::mem::take(&mut self.fds),
                }));
            }
            let start = self.bytes.len();
            self.bytes.resize(start + want, 0);
            let mut iov = [libc::iovec { iov_base: self.bytes[start..].as_mut_ptr().cast(), iov_len: want }];
            let mut fds = [-1 as RawFd; LIMITS.max_msg_fds as usize];
            // SAFETY: the iovec covers `want` writable bytes of `self.bytes`; the kernel writes
            // at most that many and at most fds.len() descriptors (more are closed by it).
            let got = unsafe { sock.recv_with_fds(&mut iov, &mut fds) };
            match got {
                Ok((0, _)) => {
                    self.bytes.truncate(start);
                    return Err(ReadEnd::Closed);
                }
                Ok((n, nfds)) => {
                    self.bytes.truncate(start + n);
                    for &fd in &fds[..nfds] {
                        // SAFETY: recvmsg gave us this descriptor; we own it now.
                        self.fds.push(unsafe { File::from_raw_fd(fd) });
                    }
                    if self.fds.len() > LIMITS.max_msg_fds as usize {
                        return Err(ReadEnd::Protocol("too many fds with one message"));
                    }
                    if start < HEADER_LEN && self.bytes.len() >= HEADER_LEN {
                        let size = wire::Header::decode(&self.bytes).size as usize;
                        if !(HEADER_LEN..=MAX_MESSAGE).contains(&size) {
                            return Err(ReadEnd::Protocol("message size out of bounds"));
                        }
                    }
                }
                Err(e) => {
                    self.bytes.truncate(start);
                    return match e.errno() {
                        libc::EAGAIN => Ok(None),
                        libc::EINTR => continue,
                        _ => Err(ReadEnd::Closed),
                    };
                }
            }
        }
    }
}

/// Replies waiting to go out: (bytes, fds sent with their first byte).
#[derive(Default)]
struct Outbox {
    chunks: VecDeque<(Vec<u8>, Vec<File>)>,
    bytes: usize,
}

impl Outbox {
    fn push(&mut self, bytes: Vec<u8>, fds: Vec<File>) {
        if !bytes.is_empty() {
            self.bytes += bytes.len();
            self.chunks.push_back((bytes, fds));
        }
    }

    fn flush(&mut self, sock: &UnixStream) -> Result<(), ()> {
        while let Some((bytes, fds)) = self.chunks.front_mut() {
            let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
            match sock.send_with_fds(&[&bytes[..]], &raw) {
                Ok(n) => {
                    fds.clear();
                    self.bytes -= n;
                    if n < bytes.len() {
                        bytes.drain(..n);
                    } else {
                        self.chunks.pop_front();
                    }
                }
                Err(e) if e.errno() == libc::EAGAIN => return Ok(()),
                Err(e) if e.errno() == libc::EINTR => {}
                Err(_) => return Err(()),
            }
        }
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}

/// Serves `stream` to its end on the calling thread, message by message, through the same
/// framing and session as a connection on the event loop (tests and the fuzz target: a
/// blocking stream stands in for the loop's readiness). Returns the messages handled.
#[cfg(any(test, feature = "fuzz"))]
pub fn serve_blocking(stream: &UnixStream, session: &mut Session) -> usize {
    let mut assembler = Assembler::default();
    let mut handled = 0;
    while let Ok(Some(msg)) = assembler.read(stream) {
        let out = match session.try_fast(&msg) {
            Some(o) => o,
            None => session.handle(msg),
        };
        let raw: Vec<RawFd> = out.fds.iter().map(AsRawFd::as_raw_fd).collect();
        if !out.reply.is_empty() && stream.send_with_fds(&[&out.reply[..]], &raw).is_err() {
            break;
        }
        handled += 1;
        if out.close {
            break;
        }
    }
    handled
}

/// What the connection tells its server.
pub trait ConnectionOwner: Send + Sync {
    /// The session is over and torn down; the server may listen again.
    fn connection_closed(&self);
}

/// What the server keeps of its connection.
pub struct ConnectionHandle {
    /// The subscriber id, once the loop registered it.
    pub id: Arc<OnceLock<SubscriberId>>,
    /// The session (locking it waits for a message a worker may be handling).
    pub session: Arc<Mutex<Session>>,
}

/// The event-loop side of one connection.
pub struct Connection {
    client: UnixStream,
    done: EventFd,
    assembler: Assembler,
    outbox: Outbox,
    session: Arc<Mutex<Session>>,
    outcome: Arc<Mutex<Option<Outcome>>>,
    busy: bool,
    closing: bool,
    teardown_started: bool,
    finished: bool,
    id: Arc<OnceLock<SubscriberId>>,
    owner: Arc<dyn ConnectionOwner>,
    name: String,
}

impl Connection {
    /// Hands `client` to the control plane's loop (called on the loop thread, by the
    /// listener).
    pub fn start(
        name: &str,
        client: UnixStream,
        session: Session,
        owner: Arc<dyn ConnectionOwner>,
    ) -> std::io::Result<ConnectionHandle> {
        client.set_nonblocking(true)?;
        let id = Arc::new(OnceLock::new());
        let session = Arc::new(Mutex::new(session));
        let conn = Connection {
            client,
            done: EventFd::new(EFD_NONBLOCK)?,
            assembler: Assembler::default(),
            outbox: Outbox::default(),
            session: session.clone(),
            outcome: Arc::new(Mutex::new(None)),
            busy: false,
            closing: false,
            teardown_started: false,
            finished: false,
            id: id.clone(),
            owner,
            name: name.to_string(),
        };
        let slot = id.clone();
        control_plane::on_loop(move |ops| {
            let _ = slot.set(ops.add_subscriber(Box::new(conn)));
        });
        Ok(ConnectionHandle { id, session })
    }

    fn interest(&self) -> EventSet {
        if self.outbox.is_empty() {
            EventSet::IN
        } else {
            EventSet::IN | EventSet::OUT
        }
    }

    fn dispatch(&mut self, ops: &mut EventOps, work: impl FnOnce(&mut Session) -> Outcome + Send + 'static) {
        let _ = ops.remove(Events::empty(&self.client));
        self.busy = true;
        let (session, outcome) = (self.session.clone(), self.outcome.clone());
        let done = self.done.try_clone();
        let spawned = control_plane::spawn(move || {
            let result = work(&mut session.lock().unwrap_or_else(|e| e.into_inner()));
            *outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
            if let Ok(done) = done {
                let _ = done.write(1);
            }
        });
        if spawned.is_err() {
            self.busy = false;
            self.begin_close("no control plane worker");
        }
    }

    fn begin_close(&mut self, why: &str) {
        if !self.closing {
            tracing::info!(endpoint = %self.name, why, "vfio-user client disconnected");
            self.closing = true;
        }
    }

    fn read_client(&mut self, ops: &mut EventOps) {
        // Messages the loop finishes itself are taken one after another; the first that
        // needs a worker stops reading until the worker is done.
        loop {
            match self.assembler.read(&self.client) {
                Ok(Some(msg)) => {
                    let fast = self.session.lock().unwrap_or_else(|e| e.into_inner()).try_fast(&msg);
                    match fast {
                        Some(out) => {
                            self.outbox.push(out.reply, out.fds);
                            if self.outbox.bytes > OUTBOX_LIMIT {
                                return self.begin_close("the client does not read its replies");
                            }
                        }
                        None => return self.dispatch(ops, move |s| s.handle(msg)),
                    }
                }
                Ok(None) => return,
                Err(ReadEnd::Closed) => return self.begin_close("connection closed"),
                Err(ReadEnd::Protocol(why)) => {
                    tracing::warn!(endpoint = %self.name, why, "not a vfio-user stream; dropping the connection");
                    return self.begin_close(why);
                }
            }
        }
    }

    fn job_done(&mut self, ops: &mut EventOps) {
        let _ = self.done.read();
        let Some(outcome) = self.outcome.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        self.busy = false;
        if self.teardown_started {
            self.finish(ops);
            return;
        }
        self.outbox.push(outcome.reply, outcome.fds);
        if self.outbox.bytes > OUTBOX_LIMIT {
            self.begin_close("the client does not read its replies");
        }
        if outcome.close {
            self.begin_close("protocol error");
        }
        if !self.closing {
            let _ = ops.add(Events::new(&self.client, self.interest()));
            // Messages may already be waiting in the socket (edge or not, read now).
            self.read_client(ops);
        }
    }

    fn finish(&mut self, ops: &mut EventOps) {
        self.finished = true;
        let _ = ops.remove(Events::empty(&self.done));
        if let Some(&id) = self.id.get() {
            control_plane::remove_later(id);
        }
        self.owner.connection_closed();
    }
}

impl MutEventSubscriber for Connection {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if self.finished {
            return;
        }
        if events.fd() == self.done.as_raw_fd() {
            self.job_done(ops);
            if self.finished {
                return;
            }
        } else if !self.busy && !self.closing {
            let set = events.event_set();
            if set.contains(EventSet::OUT) && self.outbox.flush(&self.client).is_err() {
                self.begin_close("socket error");
            }
            if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR | EventSet::READ_HANG_UP)
                && !self.closing
            {
                self.read_client(ops);
            }
        }
        if !self.closing && !self.busy {
            if self.outbox.flush(&self.client).is_err() {
                self.begin_close("socket error");
            } else {
                let _ = ops.modify(Events::new(&self.client, self.interest()));
            }
        } else if !self.closing && self.busy {
            // Replies of fast-path messages handled before the worker's one.
            if self.outbox.flush(&self.client).is_err() {
                self.begin_close("socket error");
            }
        }
        if self.closing && !self.busy && !self.teardown_started {
            self.teardown_started = true;
            self.dispatch(ops, |s| {
                s.teardown();
                Outcome { close: true, ..Outcome::default() }
            });
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.client, EventSet::IN));
        let _ = ops.add(Events::new(&self.done, EventSet::IN));
    }
}
