//! One NVMe/TCP connection on its reactor: bytes in, PDUs cut out (`pdu`), the ICReq/ICResp
//! exchange, then command capsules: the first a fabrics Connect (`nvme::fabrics::connect`),
//! every other one executed on the queue pair it made, with its data in the capsule, fetched
//! by R2T/H2CData, or sent back as C2HData straight from the command's buffer; responses
//! out through the outbox, one `sendmsg` per poll. A peer that breaks the protocol gets a
//! C2HTermReq and the connection closes; the connection is dropped once nothing it gave the
//! model is in flight.

use super::command::{decode_sgl, SglPlan, Window};
use super::group;
use super::options::TcpTransportOptions;
use super::pdu::{self, Next, RecvLimits};
use super::QpairInfo;
use crate::framework::id_hash::IdMap;
use crate::framework::ticks;
use crate::net::buffers::{DataBuf, SharedBuf};
use crate::net::outbox::{OutData, Outbox};
use crate::net::poll_group::GroupConn;
use crate::nvme::fabrics::{self, TransportLimits};
use crate::nvme::queue::QueuePair;
use crate::nvme::subsystem::ListenAddress;
use crate::nvme::{DataDir, NvmeRequest, RequestDone};
use ferry_nvme::spec::{admin, fabrics as fab, le16, sc, Command, Completion, Status};
use ferry_nvme::tcp::{
    capsule_cmd, capsule_resp, data_digest, fes, flag, pdu_type, DataHeader, Digests, IcReq, IcResp, Layout, TermError,
    TermReq,
};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// In-capsule data an admin queue accepts (Linux's NVME_TCP_ADMIN_CCSZ: it sends Connect
/// data and small admin writes in the capsule).
const ADMIN_ICD: usize = 8192;
/// Largest C2HData PDU sent (a read larger than this goes in several).
const C2H_MAX: usize = 128 * 1024;
/// Bytes of command buffers (R2T and C2HData transfers) a connection holds at most; past it
/// commands wait for earlier ones to finish. Never below max_io_size (checked at most 4 MiB).
const MAX_BUFFERED: usize = 4 << 20;
/// Reading stops while this much is queued to send (a peer that does not read its responses
/// cannot make us queue without bound).
const OUTBOX_HIGH_WATER: usize = 8 << 20;
/// A connection that has not completed ICReq and Connect by then is dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Socket reads per poll of a connection (fairness between the connections of a reactor).
const READS_PER_POLL: usize = 4;
/// PDUs handled per poll of a connection. Bounding the batch keeps the pipeline moving: the
/// responses of one batch leave (at the start of the next poll) while the peer still has
/// requests in flight, instead of the whole queue depth going back and forth in one lump
/// (QD128 4 KiB reads from Ferry's initiator: 0.69 M IOPS with a bound of 128, i.e. none at
/// that depth; 0.85 M with 16 or 32; 0.86 M with 64; writes 0.79-0.88 M).
const PDUS_PER_POLL: usize = 64;
/// The receive buffer of an I/O queue: room for many command capsules (and in-capsule
/// writes) per read.
const IO_RBUF: usize = 64 * 1024;
/// A terminated connection whose peer does not take the termination request is closed anyway.
const TERM_LINGER: Duration = Duration::from_secs(2);
/// The first receive buffer (grown up to the largest PDU the limits allow, when one comes).
const INITIAL_RBUF: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitIcReq,
    Ready,
    Closing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Its buffer waits for room under MAX_BUFFERED.
    WaitingBuffer,
    /// An R2T went out; H2CData fills the buffer.
    AwaitingData,
    /// With the model.
    Executing,
}

struct Slot {
    cmd: Command,
    dir: DataDir,
    len: u32,
    /// Bytes of `len` counted against MAX_BUFFERED (R2T and C2HData transfers).
    counted: bool,
    buf: Option<SharedBuf>,
    phase: Phase,
    window: Option<Window>,
    /// A data digest failed: completes with this instead of executing.
    failed: Option<Status>,
}

/// One connection.
pub(crate) struct Conn {
    id: u64,
    sock: TcpStream,
    peer: SocketAddr,
    listen: ListenAddress,
    opts: Arc<TcpTransportOptions>,
    state: State,
    digests: Digests,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    /// Bytes the PDU at rstart needs in all (from `pdu::next`).
    need: usize,
    out: Outbox,
    /// Reading stopped for good: close once the outbox is empty (a termination request).
    terminating: Option<u64>,
    reading_paused: bool,
    qpair: Option<Rc<QueuePair>>,
    slots: Vec<Option<Slot>>,
    free: Vec<u16>,
    by_cid: IdMap<u16, u16>,
    waiting: VecDeque<u16>,
    buffered: usize,
    /// Requests the model holds (their buffers must outlive the connection's close).
    executing: u32,
    /// Requests that finished after `execute` returned, handled at the next flush (boxed:
    /// the model takes and returns them boxed).
    #[allow(clippy::vec_box)]
    completions: Rc<RefCell<Vec<Box<NvmeRequest>>>>,
    /// A flush is already asked for.
    flush_asked: Rc<Cell<bool>>,
    /// The model ended the queue.
    disconnected: Rc<Cell<bool>>,
    done_cb: RequestDone,
    /// Finished requests for reuse (the model takes and returns them boxed).
    #[allow(clippy::vec_box)]
    spare: Vec<Box<NvmeRequest>>,
    started: u64,
    sqhd: u16,
}

impl Conn {
    pub(super) fn new(
        id: u64,
        sock: TcpStream,
        peer: SocketAddr,
        listen: ListenAddress,
        opts: Arc<TcpTransportOptions>,
    ) -> std::io::Result<Conn> {
        sock.set_nonblocking(true)?;
        sock.set_nodelay(true)?;
        if opts.sock_priority != 0 {
            let prio = opts.sock_priority as libc::c_int;
            // SAFETY: setsockopt on a socket we own with a pointer to a live c_int and its size.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_PRIORITY,
                    (&prio as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        #[allow(clippy::vec_box)]
        let completions: Rc<RefCell<Vec<Box<NvmeRequest>>>> = Rc::new(RefCell::new(Vec::new()));
        let flush_asked = Rc::new(Cell::new(false));
        let done_cb: RequestDone = {
            let completions = completions.clone();
            let flush_asked = flush_asked.clone();
            // Only queues: the model may call this while the connection is borrowed.
            Rc::new(move |req| {
                completions.borrow_mut().push(req);
                ask_flush(id, &flush_asked);
            })
        };
        Ok(Conn {
            id,
            sock,
            peer,
            listen,
            opts,
            state: State::AwaitIcReq,
            digests: Digests::default(),
            rbuf: vec![0; INITIAL_RBUF],
            rstart: 0,
            rend: 0,
            need: 0,
            out: Outbox::default(),
            terminating: None,
            reading_paused: false,
            qpair: None,
            slots: Vec::new(),
            free: Vec::new(),
            by_cid: IdMap::default(),
            waiting: VecDeque::new(),
            buffered: 0,
            executing: 0,
            completions,
            flush_asked,
            disconnected: Rc::new(Cell::new(false)),
            done_cb,
            spare: Vec::new(),
            started: ticks::now(),
            sqhd: 0,
        })
    }

    /// This connection's queue pair as `nvmf_subsystem_get_qpairs` lists it, if it serves `nqn`.
    pub(super) fn qpair_info(&self, nqn: &str) -> Option<QpairInfo> {
        let qp = self.qpair.as_ref()?;
        (qp.subsystem().nqn() == nqn).then(|| QpairInfo {
            cntlid: qp.cntlid(),
            qid: qp.qid(),
            state: if self.state == State::Closing { "deleting" } else { "active" }.to_string(),
            listen_address: self.listen.clone(),
            peer_address: self.peer.to_string(),
        })
    }

    fn reading(&self) -> bool {
        self.state != State::Closing && self.terminating.is_none() && !self.reading_paused
    }

    fn recv_limits(&self) -> RecvLimits {
        let capsule_data = match &self.qpair {
            Some(q) if q.qid() != 0 => self.opts.in_capsule_data_size as usize,
            _ => ADMIN_ICD,
        };
        RecvLimits {
            ic_done: self.state != State::AwaitIcReq,
            digests: self.digests,
            capsule_data,
            h2c_data: self.opts.maxh2cdata() as usize,
        }
    }

    // ---- bytes in ------------------------------------------------------------------------

    /// Room in the receive buffer for the PDU being read (never more than the limits allow:
    /// `need` comes from a header that passed them).
    fn make_room(&mut self) {
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        }
        if self.rstart > 0 && (self.rend == self.rbuf.len() || self.rbuf.len() - self.rstart < self.need) {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
        }
        let io_queue = self.qpair.as_ref().is_some_and(|q| q.qid() != 0);
        let want = if io_queue { self.need.max(IO_RBUF) } else { self.need };
        if self.rbuf.len() < want {
            self.rbuf.resize(want, 0);
        }
    }

    /// Handles what is buffered, then reads, within one poll's budget of PDUs.
    fn read_some(&mut self) {
        let mut budget = PDUS_PER_POLL;
        if self.rstart < self.rend {
            budget -= self.process(budget);
        }
        for _ in 0..READS_PER_POLL {
            if budget == 0 || !self.reading() {
                break;
            }
            self.make_room();
            if self.rend == self.rbuf.len() {
                break;
            }
            match self.sock.read(&mut self.rbuf[self.rend..]) {
                Ok(0) => {
                    tracing::debug!(peer = %self.peer, "nvmf: peer closed the connection");
                    self.close();
                    return;
                }
                Ok(n) => {
                    let filled = self.rend + n == self.rbuf.len();
                    self.rend += n;
                    budget -= self.process(budget);
                    if !filled {
                        // A short read emptied the socket: another would only say EAGAIN
                        // (a syscall per poll); epoll reports what comes next.
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(peer = %self.peer, error = %e, "nvmf: read failed");
                    self.close();
                    return;
                }
            }
        }
    }

    /// Handles the whole PDUs received, at most `budget` of them; returns how many. When the
    /// budget runs out with bytes left, the group polls this connection again next round
    /// (the socket may have nothing new to wake epoll with).
    fn process(&mut self, budget: usize) -> usize {
        let rbuf = std::mem::take(&mut self.rbuf);
        let mut handled = 0;
        while self.reading() {
            if handled == budget {
                if self.rstart < self.rend {
                    if let Some(g) = group::existing() {
                        g.pg.mark_readable(self.id);
                    }
                }
                break;
            }
            let buf = &rbuf[self.rstart..self.rend];
            match pdu::next(buf, &self.recv_limits()) {
                Ok(Next::NeedMore(n)) => {
                    self.need = n;
                    break;
                }
                Ok(Next::Pdu(l)) => {
                    self.need = 0;
                    self.rstart += l.plen;
                    handled += 1;
                    self.handle(&buf[..l.plen], &l);
                }
                Err(e) => {
                    // The offending header, as far as it came (at most 128 bytes).
                    let hlen = if buf.len() >= 3 { (buf[2] as usize).max(8) } else { buf.len() };
                    self.terminate(e, &buf[..hlen.min(buf.len()).min(128)]);
                    break;
                }
            }
        }
        self.rbuf = rbuf;
        handled
    }

    fn handle(&mut self, pdu: &[u8], l: &Layout) {
        match l.ch.pdu_type {
            pdu_type::IC_REQ => self.ic_req(pdu),
            pdu_type::H2C_TERM_REQ => {
                let t = TermReq::parse(pdu, l);
                tracing::warn!(peer = %self.peer, fes = t.error.fes, fei = t.error.fei, "nvmf: host terminated the connection");
                self.close();
            }
            pdu_type::CAPSULE_CMD => self.capsule(pdu, l),
            pdu_type::H2C_DATA => self.h2c_data(pdu, l),
            _ => self.terminate(TermError::field(0), &pdu[..8]),
        }
    }

    // ---- connection set-up ---------------------------------------------------------------

    fn ic_req(&mut self, pdu: &[u8]) {
        let req = IcReq::parse(pdu);
        if req.pfv != 0 {
            return self.terminate(TermError::field(8), &pdu[..128]);
        }
        // HPDA: 0's based dwords, at most 31. Ferry sends data right after the header, which
        // is aligned for HPDA 0 only (what Linux and SPDK hosts ask).
        if req.hpda > 31 {
            return self.terminate(TermError::field(10), &pdu[..128]);
        }
        if req.hpda != 0 {
            return self.terminate(TermError { fes: fes::UNSUPPORTED_PARAMETER, fei: 10 }, &pdu[..128]);
        }
        // The digests exactly as asked (a Linux host refuses anything else).
        self.digests = req.digests;
        let resp = IcResp { pfv: 0, cpda: 0, digests: req.digests, maxh2cdata: self.opts.maxh2cdata() };
        self.out.push_parts(&[], OutData::Owned(resp.build()), &[]);
        self.state = State::Ready;
    }

    fn connect(&mut self, cmd: Command, data: &[u8]) {
        let cid = cmd.cid();
        let qid = le16(&cmd.0, fab::CONNECT_QID);
        if cmd.opcode() != admin::FABRICS || cmd.fctype() != fab::CONNECT {
            tracing::warn!(peer = %self.peer, opcode = cmd.opcode(), "nvmf: a command before Connect");
            return self.respond(cid, 0, Status::generic(sc::COMMAND_SEQUENCE_ERROR).dnr());
        }
        match decode_sgl(&cmd, DataDir::ToController, data.len(), ADMIN_ICD, 0) {
            Ok(SglPlan::InCapsule(_)) => {}
            Ok(_) => return self.respond(cid, qid, Status::generic(sc::SGL_DESCRIPTOR_TYPE_INVALID).dnr()),
            Err(s) => return self.respond(cid, qid, s),
        }
        let limits = TransportLimits {
            max_queue_depth: self.opts.max_queue_depth,
            max_aq_depth: self.opts.max_aq_depth,
            max_io_qpairs_per_ctrlr: self.opts.max_io_qpairs_per_ctrlr,
            in_capsule_data_size: self.opts.in_capsule_data_size,
            max_io_size: self.opts.max_io_size,
            listen: self.listen.clone(),
            host_addr: self.peer.to_string(),
            pcie: None,
        };
        let on_disconnect: Rc<dyn Fn()> = {
            let flag = self.disconnected.clone();
            let asked = self.flush_asked.clone();
            let id = self.id;
            Rc::new(move || {
                flag.set(true);
                ask_flush(id, &asked);
            })
        };
        match fabrics::connect(&cmd, data, &limits, on_disconnect) {
            Ok((qp, mut cpl)) => {
                let depth = qp.sq_size().max(1);
                self.slots = (0..depth).map(|_| None).collect();
                self.free = (0..depth).rev().collect();
                if let Some(g) = group::existing() {
                    let c = &g.counters;
                    let (total, current) = if qp.qid() == 0 {
                        (&c.admin_qpairs, &c.current_admin_qpairs)
                    } else {
                        (&c.io_qpairs, &c.current_io_qpairs)
                    };
                    total.set(total.get() + 1);
                    current.set(current.get() + 1);
                }
                tracing::debug!(peer = %self.peer, cntlid = qp.cntlid(), qid = qp.qid(), depth, "nvmf: queue connected");
                self.qpair = Some(qp);
                cpl.cid = cid;
                self.send_cpl(cpl, qid);
            }
            Err(mut cpl) => {
                tracing::info!(peer = %self.peer, status = ?cpl.status, dw0 = format_args!("{:#x}", cpl.dw0), "nvmf: Connect refused");
                cpl.cid = cid;
                self.send_cpl(cpl, qid);
            }
        }
    }

    // ---- commands ------------------------------------------------------------------------

    fn capsule(&mut self, pdu: &[u8], l: &Layout) {
        let cmd = capsule_cmd(pdu);
        let cid = cmd.cid();
        let data = &pdu[l.data_offset..l.data_offset + l.data_len];
        let Some(qp) = self.qpair.clone() else {
            if !pdu::data_digest_ok(pdu, l) {
                return self.respond(cid, 0, Status::generic(sc::TRANSIENT_TRANSPORT_ERROR));
            }
            return self.connect(cmd, data);
        };
        let qid = qp.qid();
        self.sqhd = (self.sqhd + 1) % qp.sq_size().max(1);
        if self.by_cid.contains_key(&cid) {
            tracing::warn!(peer = %self.peer, cid, "nvmf: command identifier already in flight");
            return self.respond(cid, qid, Status::generic(sc::CID_CONFLICT).dnr());
        }
        let Some(idx) = self.free.pop() else {
            // The host sent more than the SQSIZE it asked for (SPDK disconnects too).
            return self.terminate(TermError { fes: fes::PDU_SEQUENCE_ERROR, fei: 0 }, &pdu[..l.hlen]);
        };
        if !pdu::data_digest_ok(pdu, l) {
            self.free.push(idx);
            return self.respond(cid, qid, Status::generic(sc::TRANSIENT_TRANSPORT_ERROR));
        }
        if cmd.opcode() == admin::FABRICS && cmd.fctype() == fab::CONNECT {
            self.free.push(idx);
            return self.respond(cid, qid, Status::generic(sc::COMMAND_SEQUENCE_ERROR).dnr());
        }
        let dir = DataDir::of(&cmd);
        let icd = if qid == 0 { ADMIN_ICD } else { self.opts.in_capsule_data_size as usize };
        let plan = match decode_sgl(&cmd, dir, data.len(), icd, self.opts.max_io_size) {
            Ok(p) => p,
            Err(s) => {
                self.free.push(idx);
                return self.respond(cid, qid, s);
            }
        };
        let (len, counted) = match plan {
            SglPlan::None => (0, false),
            SglPlan::InCapsule(n) => (n, false),
            SglPlan::Transport(n) => (n, n > 0),
        };
        self.by_cid.insert(cid, idx);
        self.slots[idx as usize] =
            Some(Slot { cmd, dir, len, counted, buf: None, phase: Phase::WaitingBuffer, window: None, failed: None });
        match plan {
            SglPlan::InCapsule(n) if n > 0 => {
                let Some(buf) = DataBuf::get(n as usize) else {
                    return self.finish_now(idx, Status::generic(sc::INTERNAL));
                };
                // SAFETY: the buffer is new and only this slot refers to it; `data` holds n bytes.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf.as_ptr(), n as usize) };
                self.slot(idx).buf = Some(Rc::new(buf));
                self.execute(idx);
            }
            _ if counted => {
                if self.waiting.is_empty() && self.buffered + len as usize <= MAX_BUFFERED {
                    self.start_transfer(idx);
                } else {
                    self.waiting.push_back(idx);
                }
            }
            _ => self.execute(idx),
        }
    }

    fn slot(&mut self, idx: u16) -> &mut Slot {
        self.slots[idx as usize].as_mut().expect("a live slot")
    }

    /// Gives a transport transfer its buffer, then asks for the data (R2T) or executes.
    fn start_transfer(&mut self, idx: u16) {
        let len = self.slot(idx).len;
        let Some(buf) = DataBuf::get(len as usize) else {
            self.slot(idx).counted = false;
            return self.finish_now(idx, Status::generic(sc::INTERNAL));
        };
        self.buffered += len as usize;
        let digests = self.digests;
        let slot = self.slot(idx);
        slot.buf = Some(Rc::new(buf));
        if slot.dir == DataDir::ToController {
            let cccid = slot.cmd.cid();
            slot.window = Some(Window { cccid, ttag: idx, total: len, received: 0 });
            slot.phase = Phase::AwaitingData;
            let r2t = DataHeader { cccid, ttag: idx, offset: 0, length: len }.r2t(digests);
            self.out.push_parts(&r2t, OutData::None, &[]);
        } else {
            self.execute(idx);
        }
    }

    fn h2c_data(&mut self, pdu: &[u8], l: &Layout) {
        let h = DataHeader::parse(pdu);
        let header = &pdu[..l.hlen];
        let window = self.slots.get(h.ttag as usize).and_then(|s| s.as_ref()).and_then(|s| s.window);
        let Some(window) =
            window.filter(|_| self.slots[h.ttag as usize].as_ref().unwrap().phase == Phase::AwaitingData)
        else {
            // No R2T outstanding with this transfer tag.
            return self.terminate(TermError::field(10), header);
        };
        if let Err(e) = window.check(&h, l.data_len) {
            return self.terminate(e, header);
        }
        let idx = h.ttag;
        let ok = pdu::data_digest_ok(pdu, l);
        let slot = self.slot(idx);
        if ok {
            let buf = slot.buf.as_ref().expect("an awaiting transfer has its buffer");
            // SAFETY: offset + length <= total == the buffer's length (checked by the window);
            // only this slot refers to the buffer until it executes.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    pdu[l.data_offset..].as_ptr(),
                    buf.as_ptr().add(h.offset as usize),
                    l.data_len,
                )
            };
        } else if slot.failed.is_none() {
            slot.failed = Some(Status::generic(sc::TRANSIENT_TRANSPORT_ERROR));
        }
        let w = slot.window.as_mut().expect("checked above");
        w.received += h.length;
        if w.received == w.total {
            slot.window = None;
            match slot.failed {
                Some(s) => self.finish_now(idx, s),
                None => self.execute(idx),
            }
        }
    }

    fn execute(&mut self, idx: u16) {
        let Some(qp) = self.qpair.clone() else { return };
        let mut req = self.spare.pop().unwrap_or_else(|| {
            let mut r = NvmeRequest::new();
            r.set_done(self.done_cb.clone());
            r
        });
        req.reset();
        let slot = self.slots[idx as usize].as_mut().expect("a live slot");
        req.cmd = slot.cmd;
        req.qid = qp.qid();
        req.ctx = idx as u64;
        if let Some(buf) = &slot.buf {
            // SAFETY: the slot keeps the buffer alive until the request comes back (a closed
            // connection is only dropped once nothing executes), and nothing else touches it
            // meanwhile.
            unsafe { req.push_iov(buf.as_ptr(), slot.len as usize) };
        }
        slot.phase = Phase::Executing;
        self.executing += 1;
        if let Some(req) = qp.execute(req) {
            self.completed(req);
        }
    }

    /// A request is back from the model.
    fn completed(&mut self, req: Box<NvmeRequest>) {
        self.executing -= 1;
        let idx = req.ctx as u16;
        let cpl = req.cpl;
        let transferred = req.transferred();
        self.spare.push(req);
        if self.state == State::Closing {
            self.release(idx);
            return;
        }
        if let Some(g) = group::existing() {
            let c = &g.counters.completed_nvme_io;
            c.set(c.get() + 1);
        }
        self.finish(idx, cpl, transferred);
    }

    /// Completes slot `idx` without executing it.
    fn finish_now(&mut self, idx: u16, status: Status) {
        self.finish(idx, Completion { status, ..Default::default() }, 0);
    }

    /// Sends slot `idx`'s data (if it moves to the host) and completion, and frees it.
    fn finish(&mut self, idx: u16, mut cpl: Completion, transferred: u64) {
        let qid = self.qpair.as_ref().map_or(0, |q| q.qid());
        let success_flag = self.opts.c2h_success && self.qpair.as_ref().is_some_and(|q| q.sq_flow_control_disabled());
        let digests = self.digests;
        let slot = self.slots[idx as usize].as_ref().expect("a live slot");
        let cid = slot.cmd.cid();
        let mut responded = false;
        if slot.dir == DataDir::ToHost && cpl.status.is_success() && transferred > 0 {
            let buf = slot.buf.clone().expect("a read has its buffer");
            let total = (transferred as usize).min(slot.len as usize);
            let mut off = 0;
            while off < total {
                let len = (total - off).min(C2H_MAX);
                let last = off + len == total;
                let mut flags = if last { flag::LAST_PDU } else { 0 };
                if last && success_flag {
                    flags |= flag::SUCCESS;
                    responded = true;
                }
                let h = DataHeader { cccid: cid, ttag: 0, offset: off as u32, length: len as u32 };
                let head = h.data_pdu_header(pdu_type::C2H_DATA, flags, digests);
                let tail = if digests.data {
                    data_digest([&buf.as_slice()[off..off + len]]).to_le_bytes().to_vec()
                } else {
                    Vec::new()
                };
                self.out.push_parts(&head, OutData::Shared { buf: buf.clone(), off, len }, &tail);
                off += len;
            }
        }
        if !responded {
            cpl.cid = cid;
            self.send_cpl(cpl, qid);
        }
        self.release(idx);
        self.start_waiting();
    }

    /// Frees slot `idx` and its buffer.
    fn release(&mut self, idx: u16) {
        if let Some(slot) = self.slots.get_mut(idx as usize).and_then(|s| s.take()) {
            if slot.counted && slot.buf.is_some() {
                self.buffered -= slot.len as usize;
            }
            self.by_cid.remove(&slot.cmd.cid());
            self.free.push(idx);
        }
    }

    /// Starts transfers that waited for buffer room, in order.
    fn start_waiting(&mut self) {
        while let Some(&idx) = self.waiting.front() {
            let len = self.slots[idx as usize].as_ref().map_or(0, |s| s.len as usize);
            if self.buffered + len > MAX_BUFFERED && self.buffered > 0 {
                break;
            }
            self.waiting.pop_front();
            self.start_transfer(idx);
        }
    }

    /// A completion for a command that holds no slot.
    fn respond(&mut self, cid: u16, qid: u16, status: Status) {
        self.send_cpl(Completion { cid, status, ..Default::default() }, qid);
    }

    fn send_cpl(&mut self, mut cpl: Completion, qid: u16) {
        cpl.sqid = qid;
        cpl.sqhd = self.sqhd;
        let resp = capsule_resp(&cpl, self.digests);
        self.out.push_parts(&resp, OutData::None, &[]);
    }

    // ---- bytes out, closing --------------------------------------------------------------

    /// A fatal protocol error: a C2HTermReq, then the connection closes.
    fn terminate(&mut self, e: TermError, header: &[u8]) {
        tracing::warn!(peer = %self.peer, fes = e.fes, fei = e.fei, "nvmf: terminating the connection");
        if let Some(g) = group::existing() {
            let c = &g.counters.terminations;
            c.set(c.get() + 1);
        }
        self.out.push_parts(&[], OutData::Owned(TermReq::build(pdu_type::C2H_TERM_REQ, e, header)), &[]);
        self.terminating = Some(ticks::now());
        self.send();
    }

    fn send(&mut self) {
        if self.state == State::Closing {
            return;
        }
        if self.out.is_empty() {
            if self.terminating.is_some() {
                self.close();
            }
            return;
        }
        match self.out.flush(self.sock.as_raw_fd()) {
            Ok(true) => {
                self.reading_paused = false;
                if self.terminating.is_some() {
                    return self.close();
                }
                self.watch(false);
            }
            Ok(false) => {
                self.reading_paused = self.out.bytes() > OUTBOX_HIGH_WATER;
                self.watch(true);
            }
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "nvmf: write failed");
                self.close();
            }
        }
    }

    fn watch(&self, writable: bool) {
        if let Some(g) = group::existing() {
            g.pg.watch(self.id, self.sock.as_raw_fd(), self.reading(), writable);
        }
    }

    /// Closes the socket; commands with the model finish first (their buffers stay), the
    /// queue pair is told.
    fn close(&mut self) {
        if self.state == State::Closing {
            return;
        }
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        if let Some(g) = group::existing() {
            g.pg.watch(self.id, self.sock.as_raw_fd(), false, false);
            g.pg.note_closed();
            if let Some(qp) = &self.qpair {
                let c = if qp.qid() == 0 { &g.counters.current_admin_qpairs } else { &g.counters.current_io_qpairs };
                c.set(c.get().saturating_sub(1));
            }
        }
        self.out.clear();
        self.state = State::Closing;
        self.waiting.clear();
        for idx in 0..self.slots.len() {
            if self.slots[idx].as_ref().is_some_and(|s| s.phase != Phase::Executing) {
                self.release(idx as u16);
            }
        }
        if let Some(qp) = &self.qpair {
            qp.close();
        }
    }
}

/// Asks the group to flush connection `id` at the end of this poll (once until it runs).
fn ask_flush(id: u64, asked: &Cell<bool>) {
    if asked.replace(true) {
        return;
    }
    if let Some(g) = group::existing() {
        g.pg.mark_dirty(id);
    }
}

impl GroupConn for Conn {
    fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    fn on_readable(&mut self) {
        if self.state == State::Closing {
            return;
        }
        self.read_some();
        // The commands just read whose bdev I/O completed on this reactor (malloc, null:
        // queued for the reactor's completion poller) answer in this poll, not a reactor
        // round later: at queue depth 1 that round is on every command's path.
        crate::bdev::io::drain_completions();
        self.flush();
    }

    fn on_writable(&mut self) {
        self.flush();
    }

    fn flush(&mut self) {
        self.flush_asked.set(false);
        if self.disconnected.get() && self.state != State::Closing {
            tracing::info!(peer = %self.peer, "nvmf: the controller ended the queue");
            self.close();
        }
        let done = std::mem::take(&mut *self.completions.borrow_mut());
        for req in done {
            self.completed(req);
        }
        let was_paused = self.reading_paused;
        self.send();
        if was_paused && self.reading() {
            // Input left in the buffer while paused.
            self.process(PDUS_PER_POLL);
            self.send();
        }
    }

    fn tick(&mut self) {
        if self.state == State::Closing {
            return;
        }
        let now = ticks::now();
        if self.qpair.is_none() && now.saturating_sub(self.started) > ticks::from_duration(CONNECT_TIMEOUT) {
            tracing::info!(peer = %self.peer, "nvmf: no Connect in time, closing");
            return self.close();
        }
        if let Some(since) = self.terminating {
            if now.saturating_sub(since) > ticks::from_duration(TERM_LINGER) {
                self.close();
            }
        }
    }

    fn finished(&self) -> bool {
        self.state == State::Closing && self.executing == 0
    }
}
