//! One vhost-user connection on the control plane's event loop.
//!
//! The frontend's socket is non-blocking and owned by the loop: bytes and fds are gathered
//! until a whole message (header and payload) is in, and only then is the message handed to
//! a worker, which relays it over a private socket pair to rust-vmm's `BackendReqHandler`
//! (the crate's parser and Ferry's `Session` behind it) and collects the reply. So a frontend
//! that sends half a message and goes quiet, or never reads its replies, holds nothing but
//! its own connection: the crate's blocking reads only ever see complete messages, and
//! replies leave through a bounded outbox. One message is handled at a time per connection
//! (vhost-user is request/reply), which is also the back-pressure: while a message is being
//! handled the loop stops reading that socket.

use super::backend_channel::BackendChannel;
use super::config_msg;
use super::session::Session;
use crate::framework::control_plane;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber, SubscriberId};
use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, OnceLock};
use vhost::vhost_user::message::{MAX_ATTACHED_FD_ENTRIES, MAX_MSG_SIZE};
use vhost::vhost_user::{BackendReqHandler, Error as VhostError};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// vhost-user header: request, flags, payload size (u32 each).
const HEADER: usize = 12;
/// Replies waiting for a frontend that does not read them, at most (then it is dropped).
const OUTBOX_LIMIT: usize = 1 << 20;

/// One complete message from the frontend.
pub(super) struct Message {
    /// Header and payload.
    pub bytes: Vec<u8>,
    /// Fds that came with it.
    pub fds: Vec<File>,
}

impl Message {
    /// The request code.
    pub fn request(&self) -> u32 {
        u32::from_le_bytes(self.bytes[0..4].try_into().expect("header"))
    }
}

/// Why reading stopped.
#[derive(Debug)]
enum ReadEnd {
    /// The frontend closed the connection or the socket failed.
    Closed,
    /// The stream cannot be a vhost-user message stream.
    Protocol(&'static str),
}

/// Gathers one message from a non-blocking stream across any number of reads.
#[derive(Default)]
struct Assembler {
    bytes: Vec<u8>,
    fds: Vec<File>,
}

impl Assembler {
    /// Bytes still missing from the message being gathered.
    fn missing(&self) -> usize {
        if self.bytes.len() < HEADER {
            return HEADER - self.bytes.len();
        }
        let size = u32::from_le_bytes(self.bytes[8..12].try_into().expect("header")) as usize;
        HEADER + size - self.bytes.len()
    }

    /// Reads what is there; `Ok(Some)` once a whole message is in, `Ok(None)` when the
    /// socket has nothing more for now.
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
            let mut fds = [-1 as RawFd; MAX_ATTACHED_FD_ENTRIES];
            // SAFETY: the iovec covers `want` writable bytes of `self.bytes`; the kernel writes
            // at most that many and at most fds.len() descriptors.
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
                    if self.fds.len() > MAX_ATTACHED_FD_ENTRIES {
                        return Err(ReadEnd::Protocol("too many fds with one message"));
                    }
                    if self.bytes.len() == HEADER {
                        let size = u32::from_le_bytes(self.bytes[8..12].try_into().expect("header")) as usize;
                        if size > MAX_MSG_SIZE {
                            return Err(ReadEnd::Protocol("message larger than the protocol allows"));
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

/// Replies waiting to go out: (bytes, fds sent with the first byte).
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

    /// Sends what the socket takes without waiting. Err when the socket is broken.
    fn flush(&mut self, sock: &UnixStream) -> Result<(), ()> {
        while let Some((bytes, fds)) = self.chunks.front_mut() {
            let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
            match sock.send_with_fds(&[&bytes[..]], &raw) {
                Ok(n) => {
                    fds.clear(); // they went with the first byte
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

/// The parser side of a connection, used by one worker at a time.
pub(crate) struct Handler {
    handler: BackendReqHandler<Mutex<Session>>,
    /// Our end of the relay; the crate's handler owns the other.
    relay: UnixStream,
    session: Arc<Mutex<Session>>,
    backend_channel: Arc<BackendChannel>,
}

/// What a worker did with a message (or with the teardown).
#[derive(Default)]
struct Outcome {
    reply: Vec<u8>,
    fds: Vec<File>,
    /// The session is over (the stream broke, or the teardown finished).
    closed: bool,
}

impl Handler {
    /// A handler for `session` behind a new relay.
    pub fn new(session: Arc<Mutex<Session>>, backend_channel: Arc<BackendChannel>) -> std::io::Result<Handler> {
        let (relay, theirs) = UnixStream::pair()?;
        relay.set_nonblocking(true)?;
        let handler = BackendReqHandler::from_stream(theirs, session.clone());
        Ok(Handler { handler, relay, session, backend_channel })
    }

    /// Runs one complete message through the crate's parser and the session.
    fn handle(&mut self, mut msg: Message) -> Outcome {
        if let Some(reply) = self.backend_channel.accept_message(&msg) {
            return Outcome { reply, ..Outcome::default() };
        }
        let padding = config_msg::normalize(&mut msg.bytes);
        let raw: Vec<RawFd> = msg.fds.iter().map(AsRawFd::as_raw_fd).collect();
        // One message of at most MAX_MSG_SIZE into an empty socket buffer: never blocks.
        if self.relay.send_with_fds(&[&msg.bytes[..]], &raw).is_err() {
            return Outcome { closed: true, ..Outcome::default() };
        }
        let request = msg.request();
        drop(msg); // our copies of the fds; the crate received its own
        let closed = match self.handler.handle_request() {
            Ok(()) => false,
            Err(VhostError::Disconnected | VhostError::PartialMessage | VhostError::SocketBroken(_)) => true,
            Err(VhostError::SocketError(_)) => true,
            // SET_LOG_BASE has a reply but no way to say it failed; a frontend whose log we
            // refuse would wait for it forever, so the connection ends instead (QEMU then
            // fails the migration and redials).
            Err(e) if request == vhost::vhost_user::message::FrontendReq::SET_LOG_BASE as u32 => {
                tracing::warn!(error = %e, "SET_LOG_BASE failed; closing the connection");
                true
            }
            Err(e) => {
                // A bad message got its error answer (REPLY_ACK) and the session goes on.
                tracing::warn!(error = %e, "vhost-user request failed");
                false
            }
        };
        let mut out = Outcome { closed, ..Outcome::default() };
        self.collect_reply(&mut out);
        if let Some(padding) = padding {
            config_msg::pad_reply(&mut out.reply, padding);
        }
        out
    }

    /// Takes everything the crate wrote back (the reply and any fds) off the relay.
    fn collect_reply(&mut self, out: &mut Outcome) {
        let mut buf = vec![0u8; MAX_MSG_SIZE + HEADER];
        loop {
            let mut iov = [libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() }];
            let mut fds = [-1 as RawFd; MAX_ATTACHED_FD_ENTRIES];
            // SAFETY: the iovec covers `buf`, writable; at most fds.len() descriptors come.
            match unsafe { self.relay.recv_with_fds(&mut iov, &mut fds) } {
                Ok((0, _)) | Err(_) => return,
                Ok((n, nfds)) => {
                    out.reply.extend_from_slice(&buf[..n]);
                    for &fd in &fds[..nfds] {
                        // SAFETY: received from the relay; ours now.
                        out.fds.push(unsafe { File::from_raw_fd(fd) });
                    }
                }
            }
        }
    }

    /// Ends the session: queues stopped (their I/O drained), memory unmapped.
    pub fn teardown(&mut self) {
        self.backend_channel.clear();
        self.session.lock().unwrap_or_else(|e| e.into_inner()).teardown();
    }
}

/// Serves `stream` to its end on the calling thread, message by message, through the same
/// gathering and handling as a connection on the event loop (the fuzz target's way in; a
/// blocking stream stands in for the loop's readiness). Returns the messages handled; the
/// session is left for the caller to tear down.
#[cfg(any(test, feature = "fuzz"))]
pub(crate) fn serve_blocking(stream: &UnixStream, handler: &mut Handler) -> usize {
    let mut assembler = Assembler::default();
    let mut handled = 0;
    while let Ok(Some(msg)) = assembler.read(stream) {
        let out = handler.handle(msg);
        let raw: Vec<RawFd> = out.fds.iter().map(AsRawFd::as_raw_fd).collect();
        if !out.reply.is_empty() && stream.send_with_fds(&[&out.reply[..]], &raw).is_err() {
            break;
        }
        if out.closed {
            break;
        }
        handled += 1;
    }
    handled
}

/// What the connection tells its controller.
pub(super) trait ConnectionOwner: Send + Sync {
    /// The session is over and torn down; the controller may listen again.
    fn connection_closed(&self);
}

/// What the controller keeps of its connection: to remove it from the loop and to end its
/// session on shutdown.
pub(super) struct ConnectionHandle {
    /// The connection's subscriber id, set once the loop has registered it.
    pub id: Arc<OnceLock<SubscriberId>>,
    /// Its handler (locking it waits for a message a worker may be handling).
    pub handler: Arc<Mutex<Handler>>,
}

/// The event-loop side of one connection.
pub(super) struct Connection {
    frontend: UnixStream,
    done: EventFd,
    assembler: Assembler,
    outbox: Outbox,
    handler: Arc<Mutex<Handler>>,
    outcome: Arc<Mutex<Option<Outcome>>>,
    /// A worker has this connection's message (or its teardown). The frontend's socket is
    /// out of the epoll set meanwhile (a hang-up cannot be masked and would spin the loop).
    busy: bool,
    /// No more reading; the teardown follows once no worker is busy.
    closing: bool,
    teardown_started: bool,
    finished: bool,
    id: Arc<OnceLock<SubscriberId>>,
    owner: Arc<dyn ConnectionOwner>,
    name: String,
}

impl Connection {
    /// Hands `frontend` to the control plane's loop. Called on the loop thread (by the
    /// listener), so the loop takes the connection after its current round of events.
    pub fn start(
        name: &str,
        frontend: UnixStream,
        handler: Handler,
        owner: Arc<dyn ConnectionOwner>,
    ) -> std::io::Result<ConnectionHandle> {
        frontend.set_nonblocking(true)?;
        let id = Arc::new(OnceLock::new());
        let handler = Arc::new(Mutex::new(handler));
        let conn = Connection {
            frontend,
            done: EventFd::new(EFD_NONBLOCK)?,
            assembler: Assembler::default(),
            outbox: Outbox::default(),
            handler: handler.clone(),
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
        Ok(ConnectionHandle { id, handler })
    }

    fn interest(&self) -> EventSet {
        if self.outbox.is_empty() {
            EventSet::IN
        } else {
            EventSet::IN | EventSet::OUT
        }
    }

    /// Hands `work` to a worker; its outcome comes back through `done`.
    fn dispatch(&mut self, ops: &mut EventOps, work: impl FnOnce(&mut Handler) -> Outcome + Send + 'static) {
        let _ = ops.remove(Events::empty(&self.frontend));
        self.busy = true;
        let (handler, outcome) = (self.handler.clone(), self.outcome.clone());
        let done = self.done.try_clone();
        let spawned = control_plane::spawn(move || {
            let result = work(&mut handler.lock().unwrap_or_else(|e| e.into_inner()));
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
            tracing::info!(ctrlr = %self.name, why, "frontend disconnected");
            self.closing = true;
        }
    }

    fn read_frontend(&mut self, ops: &mut EventOps) {
        match self.assembler.read(&self.frontend) {
            Ok(Some(msg)) => self.dispatch(ops, move |h| h.handle(msg)),
            Ok(None) => {}
            Err(ReadEnd::Closed) => self.begin_close("connection closed"),
            Err(ReadEnd::Protocol(why)) => {
                tracing::warn!(ctrlr = %self.name, why, "not a vhost-user stream; dropping the connection");
                self.begin_close(why);
            }
        }
    }

    /// A worker finished: queue its reply, and read on.
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
            self.begin_close("the frontend does not read its replies");
        }
        if outcome.closed {
            self.begin_close("the session ended");
        }
        if !self.closing {
            let _ = ops.add(Events::new(&self.frontend, self.interest()));
        }
    }

    /// The teardown is done: leave the loop and let the controller listen again.
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
            if set.contains(EventSet::OUT) && self.outbox.flush(&self.frontend).is_err() {
                self.begin_close("socket error");
            }
            if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR | EventSet::READ_HANG_UP)
                && !self.closing
            {
                self.read_frontend(ops);
            }
        }
        if !self.closing && !self.busy {
            if self.outbox.flush(&self.frontend).is_err() {
                self.begin_close("socket error");
            } else {
                let _ = ops.modify(Events::new(&self.frontend, self.interest()));
            }
        }
        if self.closing && !self.busy && !self.teardown_started {
            self.teardown_started = true;
            self.dispatch(ops, |h| {
                h.teardown();
                Outcome { closed: true, ..Outcome::default() }
            });
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.frontend, EventSet::IN));
        let _ = ops.add(Events::new(&self.done, EventSet::IN));
    }
}
