//! SCSI commands over iSCSI (RFC 7143 §11.3-11.8): a command PDU becomes a `ScsiTask` on a
//! command buffer; write data arrives as immediate data, unsolicited Data-Out and Data-Out
//! answering our R2Ts, each checked against what was asked (offsets, lengths, DataSN); read
//! data leaves as Data-In PDUs straight from the buffer, the status in the last of them when
//! there is no sense data, otherwise in a SCSI Response.

use super::buffers::{DataBuf, SharedBuf};
use super::conn::{reject, Conn, Phase};
use super::outbox::OutData;
use super::pdu::{at, flag, op, Bhs, RESERVED_TAG};
use crate::scsi::sense::{asc, key, status};
use crate::scsi::task::Residual;
use crate::scsi::Sense;
use crate::scsi::{DataDir, ScsiTask};
use std::rc::Rc;

/// The largest Expected Data Transfer Length served (larger commands get CHECK CONDITION):
/// the SCSI model's largest transfer, which its block limits page advertises.
const MAX_EDTL: u32 = crate::scsi::lun::MAX_TRANSFER_BYTES as u32;
/// Command buffer bytes one connection may hold at once; beyond it commands get TASK SET FULL.
const MAX_BUFFERED: usize = 128 << 20;
/// Commands beyond the CmdSN window a connection accepts (immediate ones take no CmdSN).
const EXTRA_IMMEDIATE: usize = 16;

/// An outstanding R2T.
struct R2t {
    ttt: u32,
    off: u32,
    len: u32,
    got: u32,
    datasn: u32,
}

/// Why a Data-Out is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DataOutError {
    /// No command with its ITT.
    UnknownTask,
    /// Its command no longer takes data (aborted, refused).
    NotCollecting,
    /// Offset, length or DataSN not what was asked, for the command in this slot.
    Mismatch(usize),
}

/// Where a command is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmdState {
    /// Receiving write data.
    Collecting,
    /// With the SCSI model.
    Executing,
    /// Aborted by a task management function while collecting (no response is sent).
    Aborted,
}

/// A command of this connection.
pub(super) struct CmdTask {
    pub(super) itt: u32,
    pub(super) lun: u64,
    edtl: u32,
    buf: Option<SharedBuf>,
    scsi: Option<Box<ScsiTask>>,
    state: CmdState,
    /// Took a place in the CmdSN window.
    windowed: bool,
    received: u32,
    unsol_open: bool,
    unsol_end: u32,
    unsol_datasn: u32,
    r2ts: Vec<R2t>,
    next_r2t_off: u32,
    r2tsn: u32,
}

impl CmdTask {
    /// Whether the SCSI model has it.
    pub(super) fn executing(&self) -> bool {
        self.state == CmdState::Executing
    }
}

/// Decodes an iSCSI LUN field (SAM-5 4.7: peripheral or flat addressing, first level only).
pub fn decode_lun(field: u64) -> Option<u64> {
    let b = field.to_be_bytes();
    if b[2..].iter().any(|&x| x != 0) {
        return None;
    }
    match b[0] >> 6 {
        0 if b[0] & 0x3f == 0 => Some(b[1] as u64),
        1 => Some((((b[0] & 0x3f) as u64) << 8) | b[1] as u64),
        _ => None,
    }
}

/// The CDB of a SCSI Command PDU: 16 bytes in the header, up to 16 more in an extended-CDB
/// AHS (type 1: AHSLength, type, a reserved byte, then AHSLength - 1 CDB bytes). None when
/// that AHS states more than it carries or more than 32 bytes in all.
pub fn cdb_from(bhs: &Bhs, ahs: &[u8]) -> Option<([u8; 32], usize)> {
    let mut cdb = [0u8; 32];
    cdb[..16].copy_from_slice(&bhs.0[at::CDB..at::CDB + 16]);
    let mut len = 16;
    if ahs.len() >= 4 && ahs[2] == 1 {
        let extra = (u16::from_be_bytes([ahs[0], ahs[1]]) as usize).saturating_sub(1);
        if extra > 16 || 4 + extra > ahs.len() {
            return None;
        }
        cdb[16..16 + extra].copy_from_slice(&ahs[4..4 + extra]);
        len += extra;
    }
    Some((cdb, len))
}

/// Encodes a LUN number as SAM-5 does for REPORT LUNS (peripheral below 256, flat above).
pub(super) fn encode_lun(lun: u64) -> u64 {
    if lun < 256 {
        lun << 48
    } else {
        (0x4000 | (lun & 0x3fff)) << 48
    }
}

impl Conn {
    pub(super) fn scsi_command(&mut self, bhs: Bhs, ahs: (usize, usize), data: (usize, usize)) {
        let Some(s) = &self.sess else { return };
        let depth = s.queue_depth as usize;
        let params = s.params;
        let nexus = s.nexus.clone();
        let live = self.tasks.len() - self.free_slots.len();
        if !bhs.immediate() && self.window_used as usize >= depth {
            // Beyond the MaxCmdSN we gave: ignored like any CmdSN outside the window.
            tracing::debug!("iscsi: command beyond MaxCmdSN ignored");
            return;
        }
        if bhs.immediate() && live >= depth + EXTRA_IMMEDIATE {
            self.send_reject(&bhs, 0x06); // immediate command reject
            return;
        }
        if !self.accept_cmd_sn(&bhs) {
            return;
        }
        let itt = bhs.itt();
        if itt == RESERVED_TAG || self.by_itt.contains_key(&itt) {
            self.send_reject(&bhs, reject::INVALID_FIELD);
            return;
        }
        let flags = bhs.flags();
        let (read, write) = (flags & flag::READ != 0, flags & flag::WRITE != 0);
        let edtl = bhs.u32_at(at::EDTL);
        let lun = decode_lun(bhs.lun_field()).unwrap_or(u64::MAX);
        let Some((cdb, cdb_len)) = cdb_from(&bhs, self.data(ahs)) else {
            self.send_reject(&bhs, reject::INVALID_FIELD);
            return;
        };
        let imm = self.data(data).len() as u32;
        if imm > 0 && (!write || !params.immediate_data || imm > edtl.min(params.first_burst_length)) {
            self.send_reject(&bhs, reject::PROTOCOL);
            return;
        }
        let slot = self.alloc_slot();
        let mut task = self.spare_tasks.pop().unwrap_or_else(|| ScsiTask::new(nexus.clone()));
        task.reset();
        task.nexus = nexus;
        // iSCSI reports overflow (O bit): a buffer shorter than the CDB's transfer is served
        // as far as it goes.
        task.overflow_allowed = true;
        task.set_cdb(&cdb[..cdb_len]);
        task.tag = itt as u64;
        task.ctx = slot as u64;
        task.dir = if write {
            DataDir::ToDevice
        } else if read {
            DataDir::FromDevice
        } else {
            DataDir::None
        };
        if let Some(done) = &self.done_cb {
            task.set_done(done.clone());
        }
        let mut cmd = CmdTask {
            itt,
            lun,
            edtl,
            buf: None,
            scsi: None,
            state: CmdState::Collecting,
            windowed: !bhs.immediate(),
            received: 0,
            unsol_open: false,
            unsol_end: 0,
            unsol_datasn: 0,
            r2ts: Vec::new(),
            next_r2t_off: 0,
            r2tsn: 0,
        };
        if cmd.windowed {
            self.window_used += 1;
        }
        self.by_itt.insert(itt, slot);
        // Refusals decided before any data moves: the command still takes its slot so that
        // the response goes out in order with the rest.
        // Bidirectional commands are not supported; nor are transfers beyond MAX_EDTL.
        let refuse = if (read && write) || edtl > MAX_EDTL {
            Some(status::CHECK_CONDITION)
        } else if self.buffered + edtl as usize > MAX_BUFFERED {
            Some(status::TASK_SET_FULL)
        } else {
            None
        };
        if let Some(st) = refuse {
            if st == status::CHECK_CONDITION {
                task.check(Sense::invalid_cdb_field(0, None));
            } else {
                task.status = st;
            }
            self.tasks[slot] = Some(cmd);
            self.tasks[slot].as_mut().expect("just set").state = CmdState::Executing;
            self.executing += 1;
            // Write data that may still arrive for it is refused as for an unknown task.
            self.task_done(task);
            return;
        }
        if edtl > 0 {
            match DataBuf::get(edtl as usize) {
                Some(b) => {
                    let b = Rc::new(b);
                    // SAFETY: the buffer is owned by this command (an Rc kept in its slot and,
                    // after completion, by the Data-In PDUs sending from it) until the SCSI
                    // task has completed; nothing else writes it meanwhile.
                    unsafe { task.push_iov(b.as_ptr(), edtl as usize) };
                    self.buffered += edtl as usize;
                    cmd.buf = Some(b);
                }
                None => {
                    task.status = status::TASK_SET_FULL;
                    self.tasks[slot] = Some(cmd);
                    self.tasks[slot].as_mut().expect("just set").state = CmdState::Executing;
                    self.executing += 1;
                    self.task_done(task);
                    return;
                }
            }
        }
        if write && edtl > 0 {
            if imm > 0 {
                copy_into(&cmd, 0, self.data(data));
                cmd.received = imm;
            }
            if !params.initial_r2t && flags & flag::FINAL == 0 {
                cmd.unsol_open = true;
                cmd.unsol_end = edtl.min(params.first_burst_length);
            }
            cmd.next_r2t_off = if cmd.unsol_open { cmd.unsol_end } else { cmd.received };
            cmd.scsi = Some(task);
            self.tasks[slot] = Some(cmd);
            self.advance_write(slot);
        } else {
            cmd.scsi = Some(task);
            self.tasks[slot] = Some(cmd);
            self.execute(slot);
        }
    }

    fn alloc_slot(&mut self) -> usize {
        match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.tasks.push(None);
                self.tasks.len() - 1
            }
        }
    }

    /// Frees `slot` (and its window place and buffer accounting).
    pub(super) fn release_slot(&mut self, slot: usize) {
        if let Some(cmd) = self.tasks.get_mut(slot).and_then(|t| t.take()) {
            if cmd.windowed {
                self.window_used -= 1;
            }
            if self.by_itt.get(&cmd.itt) == Some(&slot) {
                self.by_itt.remove(&cmd.itt);
            }
            if cmd.buf.is_some() {
                self.buffered -= cmd.edtl as usize;
            }
            if let Some(t) = cmd.scsi {
                self.spare_tasks.push(t);
            }
            self.free_slots.push(slot);
        }
    }

    /// After write data arrived: execute when all is there, else solicit what is missing.
    fn advance_write(&mut self, slot: usize) {
        let Some(s) = &self.sess else { return };
        let (max_burst, max_r2t) = (s.params.max_burst_length.max(512), s.params.max_outstanding_r2t.max(1) as usize);
        let Some(cmd) = self.tasks[slot].as_mut() else { return };
        if cmd.received >= cmd.edtl && !cmd.unsol_open && cmd.r2ts.is_empty() {
            self.execute(slot);
            return;
        }
        if cmd.unsol_open {
            return;
        }
        let mut r2ts = Vec::new();
        while cmd.r2ts.len() < max_r2t && cmd.next_r2t_off < cmd.edtl {
            let len = (cmd.edtl - cmd.next_r2t_off).min(max_burst);
            let ttt = self.next_r2t_tag;
            self.next_r2t_tag = self.next_r2t_tag.wrapping_add(1);
            if self.next_r2t_tag == RESERVED_TAG {
                self.next_r2t_tag = 0;
            }
            cmd.r2ts.push(R2t { ttt, off: cmd.next_r2t_off, len, got: 0, datasn: 0 });
            let mut r = Bhs::new(op::R2T);
            r.set_flags(flag::FINAL);
            r.set_lun_field(encode_lun(cmd.lun));
            r.set_itt(cmd.itt);
            r.set_u32_at(at::TTT, ttt);
            r.set_u32_at(at::DATASN, cmd.r2tsn);
            r.set_u32_at(at::BUFFER_OFFSET, cmd.next_r2t_off);
            r.set_u32_at(at::DESIRED_LEN, len);
            cmd.r2tsn += 1;
            cmd.next_r2t_off += len;
            r2ts.push(r);
        }
        for mut r in r2ts {
            self.seq_numbers(&mut r, false);
            self.push(r, OutData::None);
        }
    }

    pub(super) fn data_out(&mut self, bhs: Bhs, data: (usize, usize)) {
        let len = (data.1 - data.0) as u32;
        match self.data_out_check(&bhs, len) {
            Ok((slot, off)) => {
                if let Some(cmd) = self.tasks[slot].as_ref() {
                    copy_into(cmd, off, &self.rbuf[data.0..data.1]);
                }
                self.data_out_accept(slot, &bhs, len);
            }
            Err(e) => self.data_out_refused(&bhs, e),
        }
    }

    /// Where a Data-Out of `len` bytes goes (its command's slot and the offset in its buffer),
    /// if it is exactly what was asked: the next unsolicited bytes within FirstBurstLength, or
    /// the next bytes of the R2T it answers (offset, length, DataSN in sequence, a final PDU
    /// only at the R2T's end). Changes nothing.
    pub(super) fn data_out_check(&self, bhs: &Bhs, len: u32) -> Result<(usize, u32), DataOutError> {
        let slot = *self.by_itt.get(&bhs.itt()).ok_or(DataOutError::UnknownTask)?;
        let cmd = self.tasks[slot].as_ref().ok_or(DataOutError::UnknownTask)?;
        if cmd.state != CmdState::Collecting {
            return Err(DataOutError::NotCollecting);
        }
        let ttt = bhs.u32_at(at::TTT);
        let off = bhs.u32_at(at::BUFFER_OFFSET);
        let datasn = bhs.u32_at(at::DATASN);
        let last = bhs.flags() & flag::FINAL != 0;
        let ok = if ttt == RESERVED_TAG {
            let fits = off == cmd.received && off.checked_add(len).is_some_and(|e| e <= cmd.unsol_end);
            cmd.unsol_open && datasn == cmd.unsol_datasn && fits
        } else {
            cmd.r2ts.iter().find(|r| r.ttt == ttt).is_some_and(|r| {
                let fits = off == r.off + r.got && off.checked_add(len).is_some_and(|e| e <= r.off + r.len);
                datasn == r.datasn && fits && !(last && r.got + len != r.len)
            })
        };
        if ok {
            Ok((slot, off))
        } else {
            Err(DataOutError::Mismatch(slot))
        }
    }

    /// Records a checked Data-Out whose bytes are in place, and moves the command on.
    pub(super) fn data_out_accept(&mut self, slot: usize, bhs: &Bhs, len: u32) {
        let ttt = bhs.u32_at(at::TTT);
        let last = bhs.flags() & flag::FINAL != 0;
        let Some(cmd) = self.tasks[slot].as_mut() else { return };
        cmd.received += len;
        if ttt == RESERVED_TAG {
            cmd.unsol_datasn += 1;
            if last {
                cmd.unsol_open = false;
                // R2Ts continue from what actually arrived.
                cmd.next_r2t_off = cmd.received;
            }
        } else if let Some(i) = cmd.r2ts.iter().position(|r| r.ttt == ttt) {
            let r = &mut cmd.r2ts[i];
            r.got += len;
            r.datasn += 1;
            if last {
                cmd.r2ts.remove(i);
            }
        }
        self.advance_write(slot);
    }

    /// Answers a Data-Out that cannot be accepted.
    pub(super) fn data_out_refused(&mut self, bhs: &Bhs, e: DataOutError) {
        match e {
            DataOutError::UnknownTask => self.send_reject(bhs, reject::INVALID_FIELD),
            // Data for a command no longer collecting (aborted, refused): discarded.
            DataOutError::NotCollecting => {}
            DataOutError::Mismatch(slot) => {
                // Not what was asked (offset, length, DataSN): the command cannot complete
                // correctly. Reject the PDU and fail the command with CHECK CONDITION (RFC
                // 7143 §7.2 leaves recovery to the initiator at ERL 0).
                self.send_reject(bhs, reject::PROTOCOL);
                self.fail_collecting(slot);
            }
        }
    }

    /// The buffer of the command in `slot` (for data received straight into it).
    pub(super) fn command_buffer(&self, slot: usize) -> Option<SharedBuf> {
        self.tasks.get(slot)?.as_ref()?.buf.clone()
    }

    /// Fails a command still collecting data (a protocol violation in its Data-Out).
    fn fail_collecting(&mut self, slot: usize) {
        let Some(cmd) = self.tasks[slot].as_mut() else { return };
        let Some(mut task) = cmd.scsi.take() else { return };
        cmd.state = CmdState::Executing;
        cmd.r2ts.clear();
        cmd.unsol_open = false;
        task.check(Sense::new(key::ABORTED_COMMAND, asc::NO_ADDITIONAL));
        self.executing += 1;
        self.task_done(task);
    }

    /// Hands the command to the SCSI model.
    fn execute(&mut self, slot: usize) {
        self.refresh_luns();
        let Some(cmd) = self.tasks[slot].as_mut() else { return };
        let Some(task) = cmd.scsi.take() else { return };
        cmd.state = CmdState::Executing;
        let lun = cmd.lun;
        self.executing += 1;
        let Some(target) = self.target.clone() else {
            self.task_done(crate::scsi::lun::absent_lun(task));
            return;
        };
        let channel = self.luns.iter().find(|(id, _)| *id == lun).map(|(_, c)| c.clone());
        if let Some(t) = crate::scsi::target::dispatch(&target, channel.as_ref(), task) {
            self.task_done(t);
        }
    }

    /// A command came back from the SCSI model (or was refused before reaching it).
    pub(super) fn task_done(&mut self, task: Box<ScsiTask>) {
        self.executing = self.executing.saturating_sub(1);
        let slot = task.ctx as usize;
        let closing = matches!(self.phase, Phase::Closing);
        let Some(cmd) = self.tasks.get_mut(slot).and_then(|t| t.as_mut()) else {
            self.spare_tasks.push(task);
            return;
        };
        // Aborted tasks get no response (RFC 7143 §11.5.1: the TMF response covers them).
        let silent = closing || task.aborted || cmd.state == CmdState::Aborted;
        let (itt, lun, edtl, buf) = (cmd.itt, cmd.lun, cmd.edtl, cmd.buf.clone());
        let st = task.status;
        let sense = task.sense().to_vec();
        let sent = if task.dir == DataDir::FromDevice { task.transferred().min(edtl as u64) as u32 } else { 0 };
        let (overflow, underflow) = residuals(&task);
        cmd.scsi = Some(task);
        // The window place goes first, so that the MaxCmdSN of the status already counts it.
        self.release_slot(slot);
        if silent {
            return;
        }
        let (max_seg, max_burst) = match &self.sess {
            Some(s) => (s.params.initiator_max_recv_data_segment.max(512), s.params.max_burst_length.max(512)),
            None => (8192, 262144),
        };
        let residual_flags = if overflow > 0 {
            flag::OVERFLOW
        } else if underflow > 0 {
            flag::UNDERFLOW
        } else {
            0
        };
        let residual = overflow.max(underflow);
        // Phase collapse: the status rides in the last Data-In when there is no sense data.
        let collapse = sent > 0 && sense.is_empty();
        let mut datasn = 0u32;
        if let (true, Some(buf)) = (sent > 0, &buf) {
            let mut off = 0u32;
            while off < sent {
                let len = (sent - off).min(max_seg);
                let end = off + len;
                let last = end == sent;
                let mut r = Bhs::new(op::DATA_IN);
                let mut flags = if last || end.is_multiple_of(max_burst) { flag::FINAL } else { 0 };
                r.set_itt(itt);
                r.set_lun_field(encode_lun(lun));
                r.set_u32_at(at::TTT, RESERVED_TAG);
                r.set_u32_at(at::DATASN, datasn);
                r.set_u32_at(at::BUFFER_OFFSET, off);
                let with_status = last && collapse;
                if with_status {
                    flags |= flag::STATUS | residual_flags;
                    r.set_byte(3, st);
                    r.set_u32_at(at::RESIDUAL, residual);
                }
                r.set_flags(flags);
                // StatSN is meaningful (and taken) only with the status.
                self.seq_numbers(&mut r, with_status);
                if !with_status {
                    r.set_u32_at(at::STATSN, 0);
                }
                self.push(r, OutData::Shared { buf: buf.clone(), off: off as usize, len: len as usize });
                datasn += 1;
                off = end;
            }
        }
        if !collapse {
            let mut r = Bhs::new(op::SCSI_RSP);
            r.set_flags(flag::FINAL | residual_flags);
            r.set_byte(2, 0); // command completed at target
            r.set_byte(3, st);
            r.set_itt(itt);
            r.set_u32_at(at::EXP_DATASN, datasn);
            r.set_u32_at(at::RESIDUAL, residual);
            let data = if sense.is_empty() {
                Vec::new()
            } else {
                let mut d = Vec::with_capacity(2 + sense.len());
                d.extend_from_slice(&(sense.len() as u16).to_be_bytes());
                d.extend_from_slice(&sense);
                d
            };
            self.seq_numbers(&mut r, true);
            self.push(r, OutData::Owned(data));
        }
    }
}

/// Overflow and underflow bytes against the Expected Data Transfer Length (RFC 7143 §11.4.5):
/// overflow when the command wanted more than the initiator expected, underflow when less
/// moved than expected.
fn residuals(task: &ScsiTask) -> (u32, u32) {
    // The task's buffer is exactly the EDTL.
    let clamp = |v: u64| v.min(u32::MAX as u64) as u32;
    match task.residual_kind() {
        Residual::None => (0, 0),
        Residual::Overflow(n) => (clamp(n), 0),
        Residual::Underflow(n) => (0, clamp(n)),
    }
}

/// Copies write data into a command's buffer at `off` (bounds already checked by callers).
fn copy_into(cmd: &CmdTask, off: u32, bytes: &[u8]) {
    if let Some(b) = &cmd.buf {
        let off = off as usize;
        assert!(off + bytes.len() <= b.len(), "write data checked against the buffer");
        // SAFETY: in bounds (asserted); the buffer is not yet handed to the SCSI model (the
        // command is still collecting), so nothing else reads or writes it.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), b.as_ptr().add(off), bytes.len()) };
    }
}
