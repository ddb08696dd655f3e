//! A virtio-scsi request queue on its reactor: each chain is a virtio_scsi_cmd_req (LUN,
//! tag, CDB), data-out, a virtio_scsi_cmd_resp and data-in. The data segments become the
//! SCSI task's iovecs, pointing into guest memory (zero copy); the task runs on the target's
//! LUN through this reactor's channel, and its status, sense and residual go back in the
//! response.
//!
//! A plain READ or WRITE (nearly all a guest sends) skips the task: the queue decodes it with
//! the SCSI layer's `LunChannel::plain_io`, counts it in flight on the unit (task management
//! waits on that count and may report it aborted) and submits the one bdev I/O it is, on
//! the guest's buffers; its completion writes the response. That is the shape of the
//! virtio-blk queue: the SCSI path's instructions per request over virtio-blk's went from 385
//! to 154 (docs/performance.md).

use super::{decode_lun, ScsiDevice, TargetTable, MAX_TARGETS, REQ_HEADER, RESP_HEADER, SEG_MAX};
use crate::bdev::qos::gate::{Gate, LimitSlot};
use crate::bdev::qos::lease::Op;
use crate::bdev::{BdevIo, IoCallback};
use crate::framework::PollStatus;
use crate::scsi::cdb::{be16, be32, be64, op};
use crate::scsi::lun::LunChannel;
use crate::scsi::sense::status;
use crate::scsi::target::dispatch;
use crate::scsi::{io_error_sense, DataDir, Nexus, PlainIo, ScsiTarget, ScsiTask, TaskDone};
use crate::vhost::device::{QueueHandle, RunningQueue, ServedQueue};
use crate::vhost::guest_buf::{copy_from_guest, copy_to_guest, translate};
use crate::vhost::ring::{Chain, Pop, Vring};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use virtio_bindings::virtio_scsi as vs;
use vmm_sys_util::eventfd::EventFd;

/// virtio-scsi response codes we send.
mod response {
    use virtio_bindings::virtio_scsi as vs;
    pub const OK: u8 = vs::VIRTIO_SCSI_S_OK as u8;
    pub const ABORTED: u8 = vs::VIRTIO_SCSI_S_ABORTED as u8;
    pub const BAD_TARGET: u8 = vs::VIRTIO_SCSI_S_BAD_TARGET as u8;
    pub const FAILURE: u8 = vs::VIRTIO_SCSI_S_FAILURE as u8;
    pub const INCORRECT_LUN: u8 = vs::VIRTIO_SCSI_S_INCORRECT_LUN as u8;
}

/// A target as this queue uses it: the target, the guest's nexus with it, and this reactor's
/// channel to each of its LUNs.
struct CachedTarget {
    /// In an `Rc`: each request holds it, and an `Rc` count is not atomic (the `Arc` is the
    /// target shared with the other reactors).
    #[allow(clippy::redundant_allocation)]
    target: Rc<Arc<ScsiTarget>>,
    nexus: Arc<Nexus>,
    luns: Vec<Rc<LunChannel>>,
}

/// A request in flight: its head and where its response goes.
#[derive(Default)]
struct Slot {
    head: u16,
    writable: Vec<(u64, u32)>,
    /// Set while the request is a plain READ or WRITE running as a bare bdev I/O.
    plain: Option<PlainCommand>,
}

/// What the completion of a plain READ or WRITE needs of its command.
struct PlainCommand {
    /// The unit it is counted on (kept even if its target goes meanwhile).
    lc: Rc<LunChannel>,
    /// The epoch it was counted under, and its tag: for task management.
    epoch: u64,
    tag: u64,
    /// Its data length, and whether it flows to the guest (a READ).
    len: u64,
    read: bool,
}

/// A command the controller's limit holds back: what `dispatch` takes.
#[allow(clippy::redundant_allocation)]
type Held = (Rc<Arc<ScsiTarget>>, Option<Rc<LunChannel>>, Box<ScsiTask>);

/// One request queue on its reactor.
pub(super) struct RequestQueue {
    ring: Vring,
    chain: Chain,
    ctrlr: String,
    targets: Arc<TargetTable>,
    generation: u64,
    cache: Vec<Option<CachedTarget>>,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    /// Finished tasks kept for reuse.
    #[allow(clippy::vec_box)]
    free_tasks: Vec<Box<ScsiTask>>,
    /// Tasks that finished while the queue was busy (a completion inside our own call).
    deferred: Rc<RefCell<VecDeque<Box<ScsiTask>>>>,
    done: Option<TaskDone>,
    /// Bdev I/Os of plain READs and WRITEs kept for reuse, and the callback they call.
    #[allow(clippy::vec_box)]
    free_ios: Vec<Box<BdevIo>>,
    io_done: Option<IoCallback>,
    /// Plain I/Os that completed while the queue was busy (the bdev layer completes from the
    /// reactor loop, never inside a submission, but the queue does not count on it).
    deferred_ios: Rc<RefCell<VecDeque<Box<BdevIo>>>>,
    /// The controller's limit on this queue: commands it holds back are counted in flight.
    gate: Gate<Held>,
    inflight: usize,
    stopping: bool,
}

impl RequestQueue {
    pub(super) fn start(
        ring: Vring,
        kick: EventFd,
        ctrlr: String,
        targets: Arc<TargetTable>,
        qos: Arc<LimitSlot>,
    ) -> Result<Box<dyn RunningQueue>, String> {
        let size = ring.size() as usize;
        // A held-back command that finishes at once is answered through its own callback
        // (the queue's, set on every task it makes).
        let gate = Gate::new(qos, "vhost_qos", |(target, channel, task): Held| {
            if let Some(task) = dispatch(&target, channel.as_ref(), task) {
                if let Some(done) = task.done.clone() {
                    done(task);
                }
            }
        });
        let q = Rc::new(RefCell::new(RequestQueue {
            ring,
            chain: Chain::default(),
            ctrlr,
            targets,
            generation: u64::MAX,
            cache: (0..MAX_TARGETS).map(|_| None).collect(),
            slots: (0..size).map(|_| Slot::default()).collect(),
            free_slots: (0..size as u32).rev().collect(),
            free_tasks: Vec::with_capacity(size),
            deferred: Rc::new(RefCell::new(VecDeque::new())),
            done: None,
            free_ios: Vec::with_capacity(size),
            io_done: None,
            deferred_ios: Rc::new(RefCell::new(VecDeque::new())),
            gate,
            inflight: 0,
            stopping: false,
        }));
        let weak: Weak<RefCell<RequestQueue>> = Rc::downgrade(&q);
        let (weak_io, deferred_ios) = (weak.clone(), q.borrow().deferred_ios.clone());
        q.borrow_mut().io_done = Some(Rc::new(move |io: Box<BdevIo>| {
            let Some(q) = weak_io.upgrade() else { return };
            match q.try_borrow_mut() {
                Ok(mut q) => q.on_plain_done(io),
                Err(_) => deferred_ios.borrow_mut().push_back(io),
            };
        }));
        let deferred = q.borrow().deferred.clone();
        q.borrow_mut().done = Some(Rc::new(move |task: Box<ScsiTask>| {
            let Some(q) = weak.upgrade() else { return };
            match q.try_borrow_mut() {
                Ok(mut q) => q.on_task_done_inline(task),
                // Finished from inside our own poll: answer it on the next one.
                Err(_) => deferred.borrow_mut().push_back(task),
            };
        }));
        let name = format!("vhost_scsi_q{}", q.borrow().ring.index);
        QueueHandle::start(q, kick, &name)
    }

    fn poll(&mut self) -> PollStatus {
        let mut handled = 0;
        loop {
            let task = self.deferred.borrow_mut().pop_front();
            let Some(task) = task else { break };
            self.on_task_done(task);
            handled += 1;
        }
        loop {
            let io = self.deferred_ios.borrow_mut().pop_front();
            let Some(io) = io else { break };
            self.on_plain_done(io);
            handled += 1;
        }
        self.ring.publish_used();
        if self.targets.generation() != self.generation {
            self.refresh_targets();
        }
        if !self.stopping {
            let mut popped = 0;
            while !self.free_slots.is_empty() && self.ring.keep_polling(popped) {
                match self.ring.pop(&mut self.chain) {
                    Pop::Chain => {
                        self.handle_chain();
                        popped += 1;
                    }
                    Pop::Empty | Pop::Broken => break,
                }
            }
            if self.ring.after_poll(popped) {
                popped = 1; // a request slipped in: poll again rather than sleep
            }
            handled += popped;
        }
        let held_back = self.ring.signal();
        PollStatus::from(handled > 0 || held_back)
    }

    /// Rebuilds the per-target channels after targets were added or removed (in-flight tasks
    /// keep their own channel, so a removed target's I/O completes normally).
    fn refresh_targets(&mut self) {
        self.generation = self.targets.generation();
        let table = self.targets.snapshot();
        for (i, slot) in table.into_iter().enumerate() {
            let keep = match (&self.cache[i], &slot) {
                (Some(c), Some(t)) => Arc::ptr_eq(&*c.target, t),
                _ => false,
            };
            if keep {
                continue;
            }
            self.cache[i] = slot.and_then(|target| {
                let nexus = Arc::new(ScsiDevice::nexus(&self.ctrlr, i as u32));
                let luns = target.luns().iter().map(|l| l.open_channel(nexus.clone())).collect::<Result<_, _>>();
                match luns {
                    Ok(luns) => Some(CachedTarget { target: Rc::new(target), nexus, luns }),
                    Err(e) => {
                        tracing::error!(ctrlr = %self.ctrlr, target = i, error = %e, "cannot open LUN channels");
                        None
                    }
                }
            });
        }
    }

    /// Answers a request that never reached a LUN.
    fn respond_transport(&mut self, head: u16, code: u8) {
        let mut resp = [0u8; RESP_HEADER as usize];
        resp[11] = code;
        let used = match copy_to_guest(self.ring.mem(), &self.chain.writable, 0, &resp) {
            Ok(()) => RESP_HEADER as u32,
            Err(_) => 0,
        };
        self.ring.log_segments(&self.chain.writable);
        self.ring.complete(head, used);
    }

    fn handle_chain(&mut self) {
        let head = self.chain.head;
        if self.chain.malformed || self.chain.writable_len() < RESP_HEADER {
            // Nowhere to put a response: give the chain back with nothing written.
            tracing::debug!(queue = self.ring.index, head, "malformed virtio-scsi request");
            self.ring.complete(head, 0);
            return;
        }
        let mut req = [0u8; REQ_HEADER as usize];
        // Guest memory is borrowed from the ring where it is used, not cloned (an atomic count
        // per request).
        if self.chain.readable_len() < REQ_HEADER
            || copy_from_guest(self.ring.mem(), &self.chain.readable, 0, &mut req).is_err()
        {
            return self.respond_transport(head, response::FAILURE);
        }
        let lun_field: [u8; 8] = req[0..8].try_into().expect("8 bytes");
        let (target_id, lun_id) = match decode_lun(&lun_field) {
            Ok(t) => t,
            Err(true) => return self.respond_transport(head, response::BAD_TARGET),
            Err(false) => return self.respond_transport(head, response::INCORRECT_LUN),
        };
        if self.cache[target_id].is_none() && self.targets.generation() != self.generation {
            // A target added since this poll began (its hot-plug event may already be with the
            // guest, and this request after it): look again before calling it absent.
            self.refresh_targets();
        }
        if self.cache[target_id].is_none() {
            return self.respond_transport(head, response::BAD_TARGET);
        }
        let data_out = self.chain.readable_len() - REQ_HEADER;
        let data_in = self.chain.writable_len() - RESP_HEADER;
        let segments = self.chain.readable.len() + self.chain.writable.len();
        if (data_out > 0 && data_in > 0) || segments > SEG_MAX as usize + 2 {
            // Bidirectional commands (VIRTIO_SCSI_F_INOUT) are not offered.
            return self.respond_transport(head, response::FAILURE);
        }
        let (dir, segs, skip, len) = if data_out > 0 {
            (DataDir::ToDevice, &self.chain.readable, REQ_HEADER, data_out)
        } else if data_in > 0 {
            (DataDir::FromDevice, &self.chain.writable, RESP_HEADER, data_in)
        } else {
            (DataDir::None, &self.chain.readable, 0, 0)
        };
        let cached = self.cache[target_id].as_ref().expect("checked");
        let channel = cached.luns.iter().find(|c| c.lun.id == lun_id);
        let tag = u64::from_le_bytes(req[8..16].try_into().expect("8 bytes"));
        let cdb: &[u8; 32] = req[19..51].try_into().expect("32 bytes");
        if let (Some(lc), true) = (channel, self.gate.is_open()) {
            if let Some(plain) = lc.plain_io(cdb, dir, len) {
                return self.start_plain(head, lc.clone(), plain, tag, len);
            }
        }
        let channel = channel.cloned();
        let mut task = match self.free_tasks.pop() {
            Some(mut t) => {
                t.reset();
                // Tasks are reused across targets; the common case keeps its nexus.
                if !Arc::ptr_eq(&t.nexus, &cached.nexus) {
                    t.nexus = cached.nexus.clone();
                }
                t
            }
            None => {
                let mut t = ScsiTask::new(cached.nexus.clone());
                t.set_done(self.done.clone().expect("set at start"));
                t
            }
        };
        // The data segments are translated straight into the task's iovecs.
        // SAFETY: translate yields iovecs inside the guest mapping, which the ring's Arc keeps
        // alive until the queue is dropped; a queue is only dropped after its in-flight count
        // reaches zero, i.e. after this task completes. The guest owns the buffer's contents
        // (as with DMA).
        if len > 0 && !unsafe { task.set_iovs_with(|host| translate(self.ring.mem(), segs, skip, len, host)) } {
            self.free_tasks.push(task);
            return self.respond_transport(head, response::FAILURE);
        }
        task.tag = tag;
        task.set_cdb_field(cdb, crate::scsi::cdb::cdb_len(cdb[0]).unwrap_or(cdb.len()));
        task.dir = dir;
        let slot_index = self.free_slots.pop().expect("poll pops only while a slot is free");
        let slot = &mut self.slots[slot_index as usize];
        slot.head = head;
        // The chain's segments move to the slot, nothing copied; the chain takes the slot's
        // old vector, which the next pop clears.
        std::mem::swap(&mut slot.writable, &mut self.chain.writable);
        task.ctx = slot_index as u64;
        let target = cached.target.clone();
        self.inflight += 1;
        let (target, channel, task) = if self.gate.is_open() {
            (target, channel, task)
        } else {
            match self.gate.admit((target, channel, task), |(_, c, t)| op_of(c.as_deref(), t)) {
                Some(admitted) => admitted,
                None => return,
            }
        };
        if let Some(task) = dispatch(&target, channel.as_ref(), task) {
            self.on_task_done(task);
        }
    }

    /// Submits a plain READ or WRITE (`LunChannel::plain_io`) as the one bdev I/O it is, on
    /// the guest's buffers: `len` bytes of data-out after the request header, or of data-in
    /// after the response.
    #[inline(always)]
    fn start_plain(&mut self, head: u16, lc: Rc<LunChannel>, plain: PlainIo, tag: u64, len: u64) {
        let Some(chan) = lc.bdev() else {
            return self.respond_transport(head, response::FAILURE); // plain_io saw a channel
        };
        let mut io = self.free_ios.pop().unwrap_or_else(|| BdevIo::new(self.io_done.clone().expect("set at start")));
        io.clear_iovs();
        io.prepare(plain.io_type(), plain.lba, plain.blocks);
        let (segs, skip) =
            if plain.write { (&self.chain.readable, REQ_HEADER) } else { (&self.chain.writable, RESP_HEADER) };
        // SAFETY: as for a task's iovecs (`handle_chain`): inside the guest mapping, which
        // outlives every request in flight.
        if !unsafe { io.set_iovs_with(|host| translate(self.ring.mem(), segs, skip, len, host)) } {
            self.free_ios.push(io);
            return self.respond_transport(head, response::FAILURE);
        }
        let slot_index = self.free_slots.pop().expect("poll pops only while a slot is free");
        let slot = &mut self.slots[slot_index as usize];
        slot.head = head;
        std::mem::swap(&mut slot.writable, &mut self.chain.writable);
        let epoch = lc.begin_io();
        io.ctx = slot_index as u64;
        self.inflight += 1;
        chan.submit(io);
        // After the submission (which borrows `lc`): the I/O cannot complete inside it, and a
        // completion that came while this queue is busy would wait in `deferred_ios` anyway.
        slot.plain = Some(PlainCommand { lc, epoch, tag, len, read: !plain.write });
    }

    /// Writes the task's response and returns the chain to the guest.
    fn on_task_done(&mut self, task: Box<ScsiTask>) {
        self.on_task_done_inline(task)
    }

    /// [`Self::on_task_done`], inlined into the tasks' completion callback (the data path's
    /// end); the poll's callers share the out-of-line copy.
    #[inline(always)]
    fn on_task_done_inline(&mut self, task: Box<ScsiTask>) {
        let slot_index = task.ctx as usize;
        let response = if task.aborted { response::ABORTED } else { response::OK };
        let data_in = if task.dir == DataDir::FromDevice { task.transferred() } else { 0 };
        self.respond(slot_index, task.status, response, task.residual(), task.sense(), data_in);
        self.free_tasks.push(task);
    }

    /// Answers a plain READ or WRITE whose bdev I/O completed.
    #[inline]
    fn on_plain_done(&mut self, io: Box<BdevIo>) {
        let slot_index = io.ctx as usize;
        let cmd = self.slots[slot_index].plain.take().expect("a plain command's slot");
        let aborted = cmd.lc.end_io(cmd.epoch, &cmd.lc.nexus, cmd.tag);
        if io.succeeded() && !aborted {
            self.respond(slot_index, status::GOOD, response::OK, 0, &[], if cmd.read { cmd.len } else { 0 });
        } else {
            self.respond_plain_otherwise(slot_index, &io, &cmd, aborted);
        }
        self.free_ios.push(io);
    }

    /// A plain command that failed or was aborted: answered as its task would have been.
    #[cold]
    fn respond_plain_otherwise(&mut self, slot_index: usize, io: &BdevIo, cmd: &PlainCommand, aborted: bool) {
        let moved = if io.succeeded() { cmd.len } else { 0 };
        let data_in = if cmd.read { moved } else { 0 };
        if aborted {
            // TASK ABORTED carries no sense data.
            self.respond(slot_index, status::TASK_ABORTED, response::ABORTED, cmd.len - moved, &[], data_in);
        } else {
            let sense = io_error_sense(io).to_fixed();
            self.respond(slot_index, status::CHECK_CONDITION, response::OK, cmd.len, &sense, 0);
        }
    }

    /// Writes a request's response (status, virtio-scsi response code, residual, sense) and
    /// returns its chain to the guest, with `data_in` bytes of data written before it.
    #[inline(always)]
    fn respond(&mut self, slot_index: usize, scsi_status: u8, response: u8, residual: u64, sense: &[u8], data_in: u64) {
        self.inflight -= 1;
        // virtio_scsi_cmd_resp's fixed fields: sense_len, resid, status_qualifier, status,
        // response. The sense bytes follow them when there are any.
        let sense_len = sense.len().min(vs::VIRTIO_SCSI_SENSE_DEFAULT_SIZE as usize);
        let mut resp = [0u8; 12];
        resp[0..4].copy_from_slice(&(sense_len as u32).to_le_bytes());
        resp[4..8].copy_from_slice(&(residual.min(u32::MAX as u64) as u32).to_le_bytes());
        resp[10] = scsi_status;
        resp[11] = response;
        let slot = &self.slots[slot_index];
        let head = slot.head;
        // Only the fixed fields and the sense bytes it names are written: drivers read no
        // further than sense_len (and the rest of the area is theirs to have left as it was).
        let mut written = copy_to_guest(self.ring.mem(), &slot.writable, 0, &resp);
        if sense_len > 0 && written.is_ok() {
            written = copy_to_guest(self.ring.mem(), &slot.writable, 12, &sense[..sense_len]);
        }
        let used = match written {
            Ok(()) => (RESP_HEADER + data_in).min(u32::MAX as u64) as u32,
            Err(_) => 0,
        };
        // The response and any data-in: every device-writable segment of the request.
        self.ring.log_segments(&slot.writable);
        self.free_slots.push(slot_index as u32);
        self.ring.complete(head, used);
    }
}

impl Drop for RequestQueue {
    fn drop(&mut self) {
        // A session retires a queue only with nothing in flight (it keeps a busy one alive), so
        // this finds nothing. Should that change, a plain command whose completion would no
        // longer reach the queue must not stay counted on its unit: a task management function
        // waits for that count. (A task's count goes with the task, whoever holds it.)
        for slot in &mut self.slots {
            if let Some(cmd) = slot.plain.take() {
                cmd.lc.end_io(cmd.epoch, &cmd.lc.nexus, cmd.tag);
            }
        }
    }
}

/// What a command costs under the controller's limit: the data a read or write moves; UNMAP
/// and WRITE SAME as unmap and write-zeroes (metered when the limit says so); every other
/// command (INQUIRY, SYNCHRONIZE CACHE, ...) is free, as flush is on virtio-blk.
fn op_of(lc: Option<&LunChannel>, task: &ScsiTask) -> Op {
    let cdb = task.cdb();
    let Some(&opcode) = cdb.first() else { return Op::Free };
    match opcode {
        op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16 => Op::Read(task.buffer_len()),
        op::WRITE_6
        | op::WRITE_10
        | op::WRITE_12
        | op::WRITE_16
        | op::WRITE_AND_VERIFY_10
        | op::WRITE_AND_VERIFY_12
        | op::WRITE_AND_VERIFY_16
        | op::COMPARE_AND_WRITE
        | op::ORWRITE_16
        | op::WRITE_ATOMIC_16 => Op::Write(task.buffer_len()),
        op::UNMAP => Op::Unmap,
        op::WRITE_SAME_10 | op::WRITE_SAME_16 => {
            let ws10 = opcode == op::WRITE_SAME_10;
            let (Some(lc), true) = (lc, cdb.len() >= if ws10 { 10 } else { 16 }) else { return Op::Free };
            let bdev = lc.lun.bdev();
            let (lba, blocks) =
                if ws10 { (be32(cdb, 2) as u64, be16(cdb, 7) as u64) } else { (be64(cdb, 2), be32(cdb, 10) as u64) };
            // 0 blocks: to the end of the medium (as the command itself reads it).
            let blocks = if blocks == 0 { bdev.num_blocks().saturating_sub(lba) } else { blocks };
            Op::WriteZeroes(blocks.saturating_mul(bdev.block_size() as u64))
        }
        _ => Op::Free,
    }
}

impl ServedQueue for RequestQueue {
    fn ring(&self) -> &Vring {
        &self.ring
    }

    fn ring_mut(&mut self) -> &mut Vring {
        &mut self.ring
    }

    fn stop(&mut self) {
        self.stopping = true;
        // What the limit holds back goes now (see the blk queue); a command that finishes at
        // once is answered at the next poll (the queue is borrowed here).
        self.gate.flush();
    }

    fn poll(&mut self) -> PollStatus {
        RequestQueue::poll(self)
    }

    fn inflight(&self) -> usize {
        // Deferred tasks are still counted: they leave `inflight` when answered.
        self.inflight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::Nexus;

    fn task(cdb: &[u8], data: usize) -> Box<ScsiTask> {
        let mut t = ScsiTask::new(Arc::new(Nexus { initiator: "t".into(), target_port: 1 }));
        t.set_cdb(cdb);
        let buf = Box::leak(vec![0u8; data.max(1)].into_boxed_slice());
        if data > 0 {
            // SAFETY: a leaked buffer, alive for the whole test.
            unsafe { t.push_iov(buf.as_mut_ptr(), data) };
        }
        t
    }

    #[test]
    fn what_a_command_costs_under_the_controller_limit() {
        assert_eq!(op_of(None, &task(&[op::READ_10, 0, 0, 0, 0, 0, 0, 0, 8, 0], 4096)), Op::Read(4096));
        assert_eq!(op_of(None, &task(&[op::WRITE_16; 16], 8192)), Op::Write(8192));
        assert_eq!(op_of(None, &task(&[op::UNMAP, 0, 0, 0, 0, 0, 0, 0, 24, 0], 24)), Op::Unmap);
        // Commands that move no medium data are free, as flush is on virtio-blk.
        for cdb in [[op::INQUIRY, 0, 0, 0, 36, 0], [op::TEST_UNIT_READY, 0, 0, 0, 0, 0]] {
            assert_eq!(op_of(None, &task(&cdb, 36)), Op::Free, "{cdb:?}");
        }
        assert_eq!(op_of(None, &task(&[op::SYNCHRONIZE_CACHE_10, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0)), Op::Free);
        // WRITE SAME needs the unit's block size; without a unit it reaches nothing.
        assert_eq!(op_of(None, &task(&[op::WRITE_SAME_10, 0, 0, 0, 0, 0, 0, 0, 8, 0], 512)), Op::Free);
    }
}
