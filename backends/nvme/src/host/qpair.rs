//! One NVMe/TCP queue pair, host side, on a non-blocking socket.
//!
//! Life: TCP connect (non-blocking) → ICReq/ICResp → fabrics Connect → ready. Commands may be
//! submitted at any time; they are sent once the queue is ready. Writes up to the in-capsule
//! limit travel in the command capsule; larger ones wait for the target's R2Ts and are sent
//! as H2CData PDUs of at most MAXH2CDATA bytes. Reads arrive as C2HData PDUs copied into the
//! command's buffer, in order, within its length. A command completes with its CapsuleResp
//! (or a C2HData with SUCCESS). Everything the target sends is checked before it is used:
//! a bad length, an unknown or idle CID, data out of order or beyond the buffer, a bad digest
//! fail the queue pair (an H2CTermReq is sent when the fault is a PDU field) and `poll`
//! returns the error from then on.

use super::{cmd, sock, Dir, HostError, QpCompletion, Qpair, Seg};
use crate::spec::{le32, Command, Completion, SglDescriptor, Status};
use crate::tcp::{
    capsule_cmd_header, capsule_resp_cqe, check_header_digest, data_digest, flag, pdu_type, DataHeader, Digests, IcReq,
    IcResp, Layout, Side, TermReq, MIN_MAXH2CDATA,
};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// What one queue pair connects with.
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// The target's address.
    pub addr: SocketAddr,
    /// Queue id (0: admin).
    pub qid: u16,
    /// Submission queue entries (at least 2; one is kept for Connect).
    pub sqsize: u16,
    /// Keep-alive timeout for the admin queue's Connect, in ms (0 on I/O queues).
    pub kato_ms: u32,
    /// Controller id (0xFFFF on the admin queue: the target picks one).
    pub cntlid: u16,
    /// Host identifier.
    pub hostid: [u8; 16],
    /// Subsystem NQN.
    pub subnqn: String,
    /// Host NQN.
    pub hostnqn: String,
    /// Header and data digests to ask for.
    pub digests: Digests,
    /// Largest in-capsule data this queue may send.
    pub in_capsule: u32,
    /// Largest data buffer of one command (bounds every PDU accepted).
    pub max_transfer: u32,
    /// How long connecting (TCP, ICReq, Connect) may take.
    pub connect_timeout: Duration,
}

#[derive(Debug)]
enum Phase {
    TcpConnecting,
    IcSent,
    FabricConnect,
    Ready,
    Failed(HostError),
}

struct Slot {
    tag: u64,
    cmd: Command,
    dir: Dir,
    segs: Vec<Seg>,
    owned: Option<Vec<u8>>,
    len: usize,
    /// Bytes received (reads) or asked for by R2Ts and sent (writes).
    done: usize,
    /// Sent to the target.
    sent: bool,
    /// The data went in the capsule (no R2T may ask for it).
    in_capsule: bool,
}

/// An NVMe/TCP queue pair (see the module documentation).
pub struct TcpQpair {
    cfg: TcpConfig,
    stream: TcpStream,
    phase: Phase,
    started: Instant,
    slots: Vec<Option<Slot>>,
    free: Vec<u16>,
    queued: VecDeque<u16>,
    tx: Vec<u8>,
    tx_pos: usize,
    /// Received bytes: `rx[rx_start..rx_len]` is not handled yet (at most one partial PDU
    /// after `receive`). A cursor, not a shift per PDU: moving the rest of a full buffer to
    /// the front after each PDU cost half the client's time at QD128.
    rx: Vec<u8>,
    rx_start: usize,
    rx_len: usize,
    maxh2cdata: usize,
    cntlid: u16,
}

// SAFETY: the raw segments are only touched by whoever polls the queue pair; `submit_segs`'s
// contract makes the caller keep them valid until completion, on whichever thread polls.
unsafe impl Send for TcpQpair {}

/// The CID of the Connect command: the last slot, never handed to callers.
fn connect_cid(sqsize: u16) -> u16 {
    sqsize - 1
}

/// Most socket reads per poll, so one busy connection cannot starve the reactor's others.
const READS_PER_POLL: usize = 16;

impl TcpQpair {
    /// Starts connecting (returns at once; `poll` moves it on).
    pub fn connect(cfg: TcpConfig) -> Result<TcpQpair, HostError> {
        if cfg.sqsize < 2 {
            return Err(HostError::Invalid(format!("queue size {} below 2", cfg.sqsize)));
        }
        let stream = sock::connect_nonblocking(cfg.addr).map_err(|e| HostError::io("connecting", e))?;
        // Room for the largest PDU accepted: header, digests and a full buffer of data.
        let rx_cap = (cfg.max_transfer as usize + 64).max(4096);
        let n = cfg.sqsize;
        Ok(TcpQpair {
            stream,
            phase: Phase::TcpConnecting,
            started: Instant::now(),
            slots: (0..n).map(|_| None).collect(),
            free: (0..connect_cid(n)).rev().collect(),
            queued: VecDeque::new(),
            tx: Vec::with_capacity(4096),
            tx_pos: 0,
            rx: vec![0; rx_cap],
            rx_start: 0,
            rx_len: 0,
            maxh2cdata: 0,
            cntlid: 0,
            cfg,
        })
    }

    /// The error the queue pair failed with, if it did.
    pub fn error(&self) -> Option<&HostError> {
        match &self.phase {
            Phase::Failed(e) => Some(e),
            _ => None,
        }
    }

    fn digests(&self) -> Digests {
        match self.phase {
            Phase::TcpConnecting | Phase::IcSent => Digests::default(),
            _ => self.cfg.digests,
        }
    }

    fn submit(
        &mut self,
        mut cmd: Command,
        dir: Dir,
        segs: Vec<Seg>,
        owned: Option<Vec<u8>>,
        tag: u64,
    ) -> Result<(), HostError> {
        if let Phase::Failed(e) = &self.phase {
            return Err(e.clone());
        }
        let len: usize = segs.iter().map(|s| s.len).sum();
        if dir == Dir::None && len != 0 {
            return Err(HostError::Invalid("data given to a command without data".into()));
        }
        if len > self.cfg.max_transfer as usize {
            return Err(HostError::Invalid(format!(
                "{len} bytes exceed the queue's {} byte limit",
                self.cfg.max_transfer
            )));
        }
        let cid = self.free.pop().ok_or(HostError::QueueFull)?;
        cmd.set_cid(cid);
        self.slots[cid as usize] =
            Some(Slot { tag, cmd, dir, segs, owned, len, done: 0, sent: false, in_capsule: false });
        if matches!(self.phase, Phase::Ready) {
            self.send_command(cid);
        } else {
            self.queued.push_back(cid);
        }
        Ok(())
    }

    /// Queues the capsule of command `cid` (and its in-capsule data) on the socket.
    fn send_command(&mut self, cid: u16) {
        let digests = self.digests();
        let in_capsule_limit = self.cfg.in_capsule as usize;
        let Some(slot) = self.slots[cid as usize].as_mut() else { return };
        let inline = slot.dir == Dir::ToCtrlr && slot.len <= in_capsule_limit;
        let sgl = if inline {
            SglDescriptor::in_capsule(0, slot.len as u32)
        } else {
            SglDescriptor::transport(slot.len as u32)
        };
        slot.cmd.set_sgl(&sgl);
        let data_len = if inline { slot.len } else { 0 };
        self.tx.extend_from_slice(&capsule_cmd_header(&slot.cmd, data_len, digests));
        if inline && data_len > 0 {
            let start = self.tx.len();
            copy_from_segs(&slot.segs, 0, data_len, &mut self.tx);
            if digests.data {
                let d = data_digest([&self.tx[start..]]);
                self.tx.extend_from_slice(&d.to_le_bytes());
            }
            slot.done = data_len;
        }
        slot.in_capsule = inline;
        slot.sent = true;
    }

    fn fail(&mut self, e: HostError) {
        if let HostError::Protocol(te) = &e {
            // Best effort: tell the target why, then close.
            let pending = &self.rx[self.rx_start..self.rx_len];
            let pdu = TermReq::build(pdu_type::H2C_TERM_REQ, *te, &pending[..pending.len().min(128)]);
            let _ = self.stream.write(&pdu);
        }
        let _ = self.stream.shutdown(Shutdown::Both);
        tracing::warn!(qid = self.cfg.qid, addr = %self.cfg.addr, "NVMe/TCP queue pair failed: {e}");
        self.phase = Phase::Failed(e);
    }

    fn poll_inner(&mut self, out: &mut Vec<QpCompletion>) -> Result<bool, HostError> {
        let mut progress = false;
        if matches!(self.phase, Phase::TcpConnecting) {
            match sock::connected(&self.stream) {
                Ok(true) => {
                    let req = IcReq { pfv: 0, hpda: 0, digests: self.cfg.digests, maxr2t: 0 };
                    self.tx.extend_from_slice(&req.build());
                    self.phase = Phase::IcSent;
                    progress = true;
                }
                Ok(false) => {}
                Err(e) => return Err(HostError::io("connecting", e)),
            }
        }
        if !matches!(self.phase, Phase::Ready) && self.started.elapsed() > self.cfg.connect_timeout {
            return Err(HostError::Timeout(format!(
                "connecting queue {} to {} ({:?})",
                self.cfg.qid, self.cfg.addr, self.phase
            )));
        }
        if matches!(self.phase, Phase::TcpConnecting) {
            return Ok(progress);
        }
        progress |= self.flush()?;
        progress |= self.receive(out)?;
        progress |= self.flush()?;
        Ok(progress)
    }

    /// Writes queued bytes until the socket would block.
    fn flush(&mut self) -> Result<bool, HostError> {
        let mut wrote = false;
        while self.tx_pos < self.tx.len() {
            match self.stream.write(&self.tx[self.tx_pos..]) {
                Ok(0) => return Err(HostError::Closed),
                Ok(n) => {
                    self.tx_pos += n;
                    wrote = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(HostError::io("sending", e)),
            }
        }
        if self.tx_pos == self.tx.len() {
            self.tx.clear();
            self.tx_pos = 0;
        }
        Ok(wrote)
    }

    /// Reads what has arrived and handles every whole PDU (each read's are handled right
    /// after it, so only a partial PDU is ever left between calls).
    fn receive(&mut self, out: &mut Vec<QpCompletion>) -> Result<bool, HostError> {
        let mut progress = false;
        for _ in 0..READS_PER_POLL {
            self.make_room();
            match self.stream.read(&mut self.rx[self.rx_len..]) {
                Ok(0) => return Err(HostError::Closed),
                Ok(n) => {
                    let filled = self.rx_len + n == self.rx.len();
                    self.rx_len += n;
                    progress = true;
                    self.handle_buffered(out)?;
                    if !filled {
                        // A short read emptied the socket: the next read would only say
                        // EAGAIN (a syscall); it waits for the next poll.
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(HostError::io("receiving", e)),
            }
        }
        Ok(progress)
    }

    /// Handles every whole PDU in the receive buffer.
    fn handle_buffered(&mut self, out: &mut Vec<QpCompletion>) -> Result<(), HostError> {
        while let Some(layout) = self.whole_pdu()? {
            let rx = std::mem::take(&mut self.rx);
            let start = self.rx_start;
            let r = self.handle(&rx[start..start + layout.plen], &layout, out);
            self.rx = rx;
            r?;
            self.rx_start += layout.plen;
        }
        Ok(())
    }

    /// Moves the unhandled bytes (at most one partial PDU) to the front of the receive buffer,
    /// so that the largest PDU accepted fits after them.
    fn make_room(&mut self) {
        if self.rx_start == self.rx_len {
            self.rx_start = 0;
            self.rx_len = 0;
        } else if self.rx_start > 0 {
            self.rx.copy_within(self.rx_start..self.rx_len, 0);
            self.rx_len -= self.rx_start;
            self.rx_start = 0;
        }
    }

    /// The layout of the next unhandled PDU, once all of it is there.
    fn whole_pdu(&self) -> Result<Option<Layout>, HostError> {
        let pending = &self.rx[self.rx_start..self.rx_len];
        if pending.len() < crate::tcp::COMMON_HEADER_LEN {
            return Ok(None);
        }
        let layout = Layout::parse(pending, Side::Host, self.digests(), self.cfg.max_transfer as usize)
            .map_err(HostError::Protocol)?;
        // The limit above bounds every PDU to the buffer's size; checked again all the same.
        if layout.plen > self.rx.len() {
            return Err(HostError::Protocol(crate::tcp::TermError {
                fes: crate::tcp::fes::DATA_LIMIT_EXCEEDED,
                fei: 0,
            }));
        }
        Ok((pending.len() >= layout.plen).then_some(layout))
    }

    fn handle(&mut self, pdu: &[u8], l: &Layout, out: &mut Vec<QpCompletion>) -> Result<(), HostError> {
        check_header_digest(pdu, l).map_err(HostError::Protocol)?;
        match l.ch.pdu_type {
            pdu_type::IC_RESP => self.on_ic_resp(pdu),
            pdu_type::C2H_TERM_REQ => {
                let t = TermReq::parse(pdu, l);
                Err(HostError::Terminated { fes: t.error.fes, fei: t.error.fei })
            }
            pdu_type::CAPSULE_RESP => self.on_response(capsule_resp_cqe(pdu), out),
            pdu_type::C2H_DATA => self.on_c2h_data(pdu, l, out),
            pdu_type::R2T => self.on_r2t(DataHeader::parse(pdu)),
            t => Err(HostError::Unexpected(format!("PDU type {t:#x}"))),
        }
    }

    fn on_ic_resp(&mut self, pdu: &[u8]) -> Result<(), HostError> {
        if !matches!(self.phase, Phase::IcSent) {
            return Err(HostError::Unexpected("an ICResp after the connection was initialised".into()));
        }
        let r = IcResp::parse(pdu);
        if r.pfv != 0 || r.cpda != 0 {
            return Err(HostError::IcResp(format!("PFV {} CPDA {} (both must be 0)", r.pfv, r.cpda)));
        }
        if r.digests != self.cfg.digests {
            return Err(HostError::IcResp(format!("digests {:?}, asked for {:?}", r.digests, self.cfg.digests)));
        }
        if r.maxh2cdata < MIN_MAXH2CDATA || !r.maxh2cdata.is_multiple_of(4) {
            return Err(HostError::IcResp(format!("MAXH2CDATA {}", r.maxh2cdata)));
        }
        self.maxh2cdata = r.maxh2cdata as usize;
        self.phase = Phase::FabricConnect;
        let c = &self.cfg;
        let (mut command, data) = cmd::connect(c.qid, c.sqsize, c.kato_ms, c.cntlid, &c.hostid, &c.subnqn, &c.hostnqn);
        let cid = connect_cid(c.sqsize);
        command.set_cid(cid);
        let segs = vec![Seg { ptr: data.as_ptr() as *mut u8, len: data.len() }];
        let len = data.len();
        self.slots[cid as usize] = Some(Slot {
            tag: 0,
            cmd: command,
            dir: Dir::ToCtrlr,
            segs,
            owned: Some(data),
            len,
            done: 0,
            sent: false,
            in_capsule: false,
        });
        self.send_command(cid);
        Ok(())
    }

    /// The slot of `cid` if a command is in flight there.
    fn sent_slot(&mut self, cid: u16, what: &str) -> Result<&mut Slot, HostError> {
        match self.slots.get_mut(cid as usize) {
            Some(Some(s)) if s.sent => Ok(s),
            _ => Err(HostError::Unexpected(format!("{what} for command {cid}, which is not in flight"))),
        }
    }

    fn on_response(&mut self, cpl: Completion, out: &mut Vec<QpCompletion>) -> Result<(), HostError> {
        if !matches!(self.phase, Phase::FabricConnect | Phase::Ready) {
            return Err(HostError::Unexpected("a response before Connect".into()));
        }
        self.sent_slot(cpl.cid, "a response")?;
        let slot = self.slots[cpl.cid as usize].take().expect("checked above");
        if cpl.cid == connect_cid(self.cfg.sqsize) {
            if !cpl.status.is_success() {
                return Err(HostError::ConnectRefused { status: cpl.status, dw0: cpl.dw0 });
            }
            self.cntlid = cpl.dw0 as u16;
            self.phase = Phase::Ready;
            while let Some(cid) = self.queued.pop_front() {
                self.send_command(cid);
            }
            return Ok(());
        }
        if !matches!(self.phase, Phase::Ready) {
            return Err(HostError::Unexpected(format!("a response for command {} before Connect", cpl.cid)));
        }
        self.free.push(cpl.cid);
        out.push(QpCompletion { tag: slot.tag, cpl, data: slot.owned });
        Ok(())
    }

    fn on_c2h_data(&mut self, pdu: &[u8], l: &Layout, out: &mut Vec<QpCompletion>) -> Result<(), HostError> {
        let h = DataHeader::parse(pdu);
        let data = &pdu[l.data_offset..l.data_offset + l.data_len];
        if l.data_digest && data_digest([data]) != le32(pdu, l.data_offset + l.data_len) {
            return Err(HostError::DataDigest { cid: h.cccid });
        }
        let slot = self.sent_slot(h.cccid, "C2HData")?;
        if slot.dir != Dir::FromCtrlr {
            return Err(HostError::Unexpected(format!("C2HData for command {}, which reads nothing", h.cccid)));
        }
        let (off, len) = (h.offset as usize, h.length as usize);
        if len != data.len() || off != slot.done || off + len > slot.len {
            return Err(HostError::Unexpected(format!(
                "C2HData for command {} at {off}+{len} ({} bytes in the PDU), expected offset {} of {} bytes",
                h.cccid,
                data.len(),
                slot.done,
                slot.len
            )));
        }
        copy_to_segs(&slot.segs, off, data);
        slot.done += len;
        if l.ch.flags & flag::SUCCESS != 0 {
            if l.ch.flags & flag::LAST_PDU == 0 || slot.done != slot.len {
                return Err(HostError::Unexpected(format!("C2HData SUCCESS before the end of command {}", h.cccid)));
            }
            let slot = self.slots[h.cccid as usize].take().expect("checked above");
            self.free.push(h.cccid);
            let cpl = Completion { cid: h.cccid, sqid: self.cfg.qid, status: Status::SUCCESS, ..Default::default() };
            out.push(QpCompletion { tag: slot.tag, cpl, data: slot.owned });
        }
        Ok(())
    }

    fn on_r2t(&mut self, h: DataHeader) -> Result<(), HostError> {
        let digests = self.digests();
        let maxh2c = self.maxh2cdata;
        let slot = match self.slots.get_mut(h.cccid as usize) {
            Some(Some(s)) if s.sent && s.dir == Dir::ToCtrlr && !s.in_capsule => s,
            _ => return Err(HostError::Unexpected(format!("R2T for command {}, which awaits none", h.cccid))),
        };
        let (off, len) = (h.offset as usize, h.length as usize);
        if len == 0 || off != slot.done || off + len > slot.len {
            return Err(HostError::Unexpected(format!(
                "R2T for command {} at {off}+{len}, expected offset {} of {} bytes",
                h.cccid, slot.done, slot.len
            )));
        }
        let mut sent = 0;
        while sent < len {
            let n = (len - sent).min(maxh2c);
            let last = sent + n == len;
            let dh = DataHeader { cccid: h.cccid, ttag: h.ttag, offset: (off + sent) as u32, length: n as u32 };
            self.tx.extend_from_slice(&dh.data_pdu_header(
                pdu_type::H2C_DATA,
                if last { flag::LAST_PDU } else { 0 },
                digests,
            ));
            let start = self.tx.len();
            copy_from_segs(&slot.segs, off + sent, n, &mut self.tx);
            if digests.data {
                let d = data_digest([&self.tx[start..]]);
                self.tx.extend_from_slice(&d.to_le_bytes());
            }
            sent += n;
        }
        slot.done += len;
        Ok(())
    }
}

impl Qpair for TcpQpair {
    fn submit_owned(&mut self, cmd: Command, dir: Dir, mut data: Vec<u8>, tag: u64) -> Result<(), HostError> {
        let segs = if data.is_empty() { Vec::new() } else { vec![Seg { ptr: data.as_mut_ptr(), len: data.len() }] };
        // The Vec's heap buffer does not move when the Vec does: the segment stays valid.
        self.submit(cmd, dir, segs, Some(data), tag)
    }

    unsafe fn submit_segs(&mut self, cmd: Command, dir: Dir, segs: &[Seg], tag: u64) -> Result<(), HostError> {
        self.submit(cmd, dir, segs.to_vec(), None, tag)
    }

    fn poll(&mut self, out: &mut Vec<QpCompletion>) -> Result<bool, HostError> {
        if let Phase::Failed(e) = &self.phase {
            return Err(e.clone());
        }
        match self.poll_inner(out) {
            Ok(p) => Ok(p),
            Err(e) => {
                self.fail(e.clone());
                Err(e)
            }
        }
    }

    fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Ready)
    }

    fn cntlid(&self) -> u16 {
        self.cntlid
    }

    fn free_slots(&self) -> usize {
        if matches!(self.phase, Phase::Failed(_)) {
            0
        } else {
            self.free.len()
        }
    }

    fn take_unfinished(&mut self) -> Vec<u64> {
        let connect = connect_cid(self.cfg.sqsize) as usize;
        let mut tags = Vec::new();
        for (cid, s) in self.slots.iter_mut().enumerate() {
            if let Some(slot) = s.take() {
                if cid != connect {
                    tags.push(slot.tag);
                }
            }
        }
        self.queued.clear();
        self.free = (0..connect_cid(self.cfg.sqsize)).rev().collect();
        tags
    }

    fn raw_fd(&self) -> Option<i32> {
        Some(self.stream.as_raw_fd())
    }
}

/// Appends `len` bytes of `segs` from byte `off` to `out` (the range is within `segs`).
fn copy_from_segs(segs: &[Seg], mut off: usize, mut len: usize, out: &mut Vec<u8>) {
    for s in segs {
        if len == 0 {
            break;
        }
        if off >= s.len {
            off -= s.len;
            continue;
        }
        let n = (s.len - off).min(len);
        // SAFETY: `submit_segs`'s contract (or the owned buffer) keeps the segment valid for
        // reads of `s.len` bytes until the command completes; off + n <= s.len.
        out.extend_from_slice(unsafe { std::slice::from_raw_parts(s.ptr.add(off), n) });
        off = 0;
        len -= n;
    }
}

/// Copies `data` into `segs` from byte `off` (the caller checked off + data.len() fits).
fn copy_to_segs(segs: &[Seg], mut off: usize, mut data: &[u8]) {
    for s in segs {
        if data.is_empty() {
            break;
        }
        if off >= s.len {
            off -= s.len;
            continue;
        }
        let n = (s.len - off).min(data.len());
        // SAFETY: as above, the segment is valid for writes of `s.len` bytes until the command
        // completes, and off + n <= s.len; `data` is our receive buffer, which cannot overlap it.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), s.ptr.add(off), n) };
        off = 0;
        data = &data[n..];
    }
}
