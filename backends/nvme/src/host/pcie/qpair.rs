//! One NVMe PCIe queue pair, host side: a submission and a completion queue in the DMA arena,
//! doorbells in BAR0 or shadowed in memory.
//!
//! A command gets a slot (its CID) and the slot's bounce buffer: write data is copied in
//! before the entry is written, read data copied out when the completion arrives. PRP1 and
//! PRP2 point at the bounce buffer (PRP2 at the slot's PRP list page, written once, when the
//! transfer spans more than two pages). Completions are taken by phase tag; a completion the
//! driver cannot match (an idle CID, an SQ head past the queue) fails the queue pair, and
//! nothing a device writes in the completion queue makes the driver touch memory outside
//! the slot's own buffers.
//!
//! With shadow doorbells (Doorbell Buffer Config) a doorbell is a store into the shadow
//! buffer; the BAR0 register is written only when the controller's event index says it asked
//! to be told (the check Linux's driver makes), so a controller that polls sees no traps.
//!
//! The admin queue pair also brings the function to the point where the controller's
//! bring-up can start (CC.EN cleared, CSTS.RDY 0, AQA, ASQ, ACQ written) and answers the
//! fabrics Property Get and Set commands that bring-up sends with BAR0 register accesses: the
//! controller state machine is the same for every transport (SPDK routes register access
//! through its transports' get_reg and set_reg to the same effect).

use super::function::{PciFunction, RegAccess, RegOp};
use super::layout::{Layout, QueueArea, PAGE};
use super::transport::Inner;
use crate::host::{Dir, HostError, QpCompletion, Qpair, Seg};
use crate::spec::{admin, fabrics, le32, le64, prop, Command, Completion, Status};
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Offset of the first doorbell in BAR0.
const DOORBELLS: u32 = 0x1000;

struct Slot {
    tag: u64,
    opcode: u8,
    dir: Dir,
    segs: Vec<Seg>,
    owned: Option<Vec<u8>>,
    len: usize,
}

/// The shadow doorbell and event index of one doorbell.
#[derive(Clone, Copy)]
pub struct ShadowRef {
    pub(super) value: *mut u32,
    pub(super) eventidx: *const u32,
}

/// The admin queue's bring-up steps before the controller's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prep {
    ReadCap,
    ReadCc,
    Disable,
    WaitNotReady,
    Aqa,
    Asq,
    Acq,
    Ready,
}

/// A fabrics property command the admin queue answers with a register access.
struct PropReq {
    tag: u64,
    access: RegAccess,
    ticket: Option<u64>,
}

/// An NVMe PCIe queue pair (see the module documentation).
pub struct PcieQpair<F: PciFunction> {
    inner: Arc<Inner<F>>,
    qid: u16,
    area: QueueArea,
    sq: *mut u8,
    cq: *const u8,
    sq_tail: u16,
    cq_head: u16,
    phase: bool,
    sq_db: u32,
    cq_db: u32,
    sq_shadow: Option<ShadowRef>,
    cq_shadow: Option<ShadowRef>,
    slots: Vec<Option<Slot>>,
    free: Vec<u16>,
    failed: Option<HostError>,
    irq: Option<RawFd>,
    prep: Prep,
    prep_ticket: Option<u64>,
    prep_deadline: Instant,
    cc: u32,
    props: VecDeque<PropReq>,
    prop_done: Vec<QpCompletion>,
}

// SAFETY: the raw pointers point into the DMA arena, which lives as long as `inner`; this
// queue's area is used by this queue pair alone, on whichever thread polls it. The segments'
// validity is the `submit_segs` caller's contract, as for every transport.
unsafe impl<F: PciFunction> Send for PcieQpair<F> {}

/// How long the function may take to leave the enabled state when none is known yet.
const PREP_TIMEOUT: Duration = Duration::from_secs(30);

impl<F: PciFunction> PcieQpair<F> {
    fn new(inner: Arc<Inner<F>>, qid: u16, area: QueueArea, prep: Prep) -> PcieQpair<F> {
        let arena = inner.arena;
        let stride = inner.doorbell_stride();
        // SAFETY: the layout placed the area inside the arena (checked against its length
        // when the transport was made).
        let (sq, cq) = unsafe { (arena.vaddr.add(area.sq), arena.vaddr.add(area.cq).cast_const()) };
        // SAFETY: as above; the CQ must start zeroed (phase 0) before the device posts in it.
        unsafe { std::ptr::write_bytes(arena.vaddr.add(area.cq), 0, area.qsize as usize * 16) };
        let n = area.qsize;
        let irq = inner.vector_of(qid).and_then(|v| inner.f.irq_fd(v));
        let mut q = PcieQpair {
            qid,
            area,
            sq,
            cq,
            sq_tail: 0,
            cq_head: 0,
            phase: true,
            sq_db: DOORBELLS + (2 * qid as u32) * stride,
            cq_db: DOORBELLS + (2 * qid as u32 + 1) * stride,
            sq_shadow: None,
            cq_shadow: None,
            slots: (0..n).map(|_| None).collect(),
            // One entry always stays empty (a full queue has tail + 1 == head).
            free: (0..n - 1).rev().collect(),
            failed: None,
            irq,
            prep,
            prep_ticket: None,
            prep_deadline: Instant::now() + PREP_TIMEOUT,
            cc: 0,
            props: VecDeque::new(),
            prop_done: Vec::new(),
            inner,
        };
        q.write_prp_lists();
        q
    }

    /// The admin queue pair: prepares the function (see the module documentation).
    pub(super) fn admin(inner: Arc<Inner<F>>) -> PcieQpair<F> {
        let area = inner.layout.queue(0, 0).expect("the admin area always exists");
        PcieQpair::new(inner, 0, area, Prep::ReadCap)
    }

    /// I/O queue pair `qid` with `qsize` entries (created on the controller beforehand).
    pub(super) fn io(inner: Arc<Inner<F>>, qid: u16, qsize: u16) -> Result<PcieQpair<F>, HostError> {
        let area = inner
            .layout
            .queue(qid, qsize)
            .ok_or_else(|| HostError::Invalid(format!("I/O queue {qid} of {qsize} entries is beyond the DMA arena")))?;
        let mut q = PcieQpair::new(inner, qid, area, Prep::Ready);
        if q.inner.shadow_active() {
            q.sq_shadow = Some(q.inner.shadow_of(2 * qid as usize));
            q.cq_shadow = Some(q.inner.shadow_of(2 * qid as usize + 1));
        }
        Ok(q)
    }

    /// Whether this queue pair uses shadow doorbells.
    pub fn uses_shadow_doorbells(&self) -> bool {
        self.sq_shadow.is_some()
    }

    fn write_prp_lists(&mut self) {
        let arena = self.inner.arena;
        for cid in 0..self.area.qsize {
            let Some(at) = self.area.prp_list_of(cid) else { return };
            for (i, e) in Layout::prp_list_entries(&self.area, arena.iova, cid).enumerate() {
                // SAFETY: the list page lies inside this queue's area in the arena.
                unsafe { arena.vaddr.add(at + i * 8).cast::<u64>().write_unaligned(e.to_le()) };
            }
        }
    }

    fn bounce(&self, cid: u16) -> (*mut u8, u64) {
        let off = self.area.bounce_of(cid);
        // SAFETY: the slot's bounce buffer lies inside this queue's area.
        (unsafe { self.inner.arena.vaddr.add(off) }, self.inner.arena.iova + off as u64)
    }

    fn fail(&mut self, e: HostError) -> HostError {
        tracing::warn!(qid = self.qid, function = %self.inner.f.describe(), "NVMe PCIe queue failed: {e}");
        self.failed = Some(e.clone());
        e
    }

    fn submit(&mut self, mut cmd: Command, dir: Dir, data: Data<'_>, tag: u64) -> Result<(), HostError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.qid == 0 && cmd.opcode() == admin::FABRICS {
            return self.property(cmd, data, tag);
        }
        let len = match &data {
            Data::Owned(v) => v.len(),
            Data::Segs(s) => s.iter().map(|s| s.len).sum(),
        };
        if len > self.area.max_transfer || (dir == Dir::None && len != 0) {
            return Err(HostError::Invalid(format!("{len} bytes on a queue that carries {}", self.area.max_transfer)));
        }
        let cid = self.free.pop().ok_or(HostError::QueueFull)?;
        let (buf, iova) = self.bounce(cid);
        if dir == Dir::ToCtrlr {
            let mut at = 0;
            let mut copy = |p: *const u8, n: usize| {
                // SAFETY: `at + n <= len <= max_transfer`, the bounce buffer's size; the source
                // is the caller's (owned vector, or segments valid per submit_segs' contract).
                unsafe { std::ptr::copy_nonoverlapping(p, buf.add(at), n) };
                at += n;
            };
            match &data {
                Data::Owned(v) => copy(v.as_ptr(), v.len()),
                Data::Segs(segs) => segs.iter().for_each(|s| copy(s.ptr, s.len)),
            }
        }
        if dir != Dir::None {
            cmd.0[1] &= 0x3f; // PSDT 0: PRPs
            cmd.set_prp1(iova);
            let prp2 = if len > 2 * PAGE {
                self.inner.arena.iova + self.area.prp_list_of(cid).expect("queues past two pages have lists") as u64
            } else if len > PAGE {
                iova + PAGE as u64
            } else {
                0
            };
            cmd.set_prp2(prp2);
        }
        cmd.set_cid(cid);
        let opcode = cmd.opcode();
        let (segs, owned) = match data {
            Data::Owned(v) => (Vec::new(), Some(v)),
            Data::Segs(s) => (s.to_vec(), None),
        };
        self.slots[cid as usize] = Some(Slot { tag, opcode, dir, segs, owned, len });
        // SAFETY: the entry lies inside the SQ (tail < qsize); no one else writes this queue.
        unsafe { std::ptr::copy_nonoverlapping(cmd.0.as_ptr(), self.sq.add(self.sq_tail as usize * 64), 64) };
        let old = self.sq_tail;
        self.sq_tail = (self.sq_tail + 1) % self.area.qsize;
        self.ring(self.sq_db, self.sq_shadow, self.sq_tail, old)
    }

    /// Writes a doorbell: through the shadow buffer when there is one, trapping only when the
    /// controller's event index lies between the old and the new value.
    fn ring(&mut self, db: u32, shadow: Option<ShadowRef>, new: u16, old: u16) -> Result<(), HostError> {
        // The entries (or the consumed completions) before the doorbell value.
        fence(Ordering::Release);
        if let Some(s) = shadow {
            // SAFETY: the shadow and event index words lie in the arena's doorbell pages.
            let event = unsafe {
                s.value.write_volatile(new as u32);
                // The controller writes its event index and then reads the shadow value: a full
                // fence between our write and our read makes one of us see the other.
                fence(Ordering::SeqCst);
                s.eventidx.read_volatile()
            } as u16;
            if !need_event(event, new, old) {
                return Ok(());
            }
        }
        match self.inner.f.ring(db, new as u32) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Answers a fabrics Property Get or Set with a register access.
    fn property(&mut self, cmd: Command, data: Data<'_>, tag: u64) -> Result<(), HostError> {
        let offset = le32(&cmd.0, fabrics::PROPERTY_OFFSET);
        let eight = cmd.0[fabrics::PROPERTY_ATTRIB] & 1 != 0;
        let access = match cmd.fctype() {
            fabrics::PROPERTY_GET if eight => RegAccess::Read64(offset),
            fabrics::PROPERTY_GET => RegAccess::Read32(offset),
            fabrics::PROPERTY_SET if eight => RegAccess::Write64(offset, le64(&cmd.0, fabrics::PROPERTY_VALUE)),
            fabrics::PROPERTY_SET => RegAccess::Write32(offset, le64(&cmd.0, fabrics::PROPERTY_VALUE) as u32),
            t => return Err(HostError::Invalid(format!("fabrics command {t:#x} on a PCIe controller"))),
        };
        drop(data);
        self.props.push_back(PropReq { tag, access, ticket: None });
        // Start it now: a shutdown's CC write is submitted and polled once.
        match self.run_props() {
            Ok(_) => Ok(()),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Starts and finishes property accesses, one at a time, in order.
    fn run_props(&mut self) -> Result<bool, HostError> {
        let mut progress = false;
        while let Some(p) = self.props.front_mut() {
            let value = match p.ticket {
                None => match self.inner.f.start_reg(p.access)? {
                    RegOp::Done(v) => Some(v),
                    RegOp::Pending(t) => {
                        p.ticket = Some(t);
                        None
                    }
                },
                Some(t) => self.inner.f.poll_reg(t)?,
            };
            let Some(v) = value else { break };
            let p = self.props.pop_front().expect("front exists");
            if let RegAccess::Write32(prop::CC, cc) = p.access {
                self.cc = cc;
            }
            let cpl =
                Completion { dw0: v as u32, dw1: (v >> 32) as u32, status: Status::SUCCESS, ..Completion::default() };
            self.prop_done.push(QpCompletion { tag: p.tag, cpl, data: Some(Vec::new()) });
            progress = true;
        }
        Ok(progress)
    }

    /// One register access of the preparation: the value once it is known.
    fn prep_access(&mut self, access: RegAccess) -> Result<Option<u64>, HostError> {
        match self.prep_ticket {
            Some(t) => {
                let v = self.inner.f.poll_reg(t)?;
                if v.is_some() {
                    self.prep_ticket = None;
                }
                Ok(v)
            }
            None => match self.inner.f.start_reg(access)? {
                RegOp::Done(v) => Ok(Some(v)),
                RegOp::Pending(t) => {
                    self.prep_ticket = Some(t);
                    Ok(None)
                }
            },
        }
    }

    /// Moves the admin queue's preparation on; whether anything happened.
    fn prepare(&mut self) -> Result<bool, HostError> {
        let mut progress = false;
        loop {
            if Instant::now() > self.prep_deadline {
                return Err(HostError::Timeout(format!("preparing the function stuck at {:?}", self.prep)));
            }
            let area = self.area;
            let iova = self.inner.arena.iova;
            let access = match self.prep {
                Prep::Ready => return Ok(progress),
                Prep::ReadCap => RegAccess::Read64(prop::CAP),
                Prep::ReadCc => RegAccess::Read32(prop::CC),
                Prep::Disable => RegAccess::Write32(prop::CC, self.cc & !1),
                Prep::WaitNotReady => RegAccess::Read32(prop::CSTS),
                Prep::Aqa => {
                    let q = area.qsize as u32 - 1;
                    RegAccess::Write32(prop::AQA, q | (q << 16))
                }
                Prep::Asq => RegAccess::Write64(prop::ASQ, iova + area.sq as u64),
                Prep::Acq => RegAccess::Write64(prop::ACQ, iova + area.cq as u64),
            };
            let Some(v) = self.prep_access(access)? else { return Ok(progress) };
            progress = true;
            self.prep = match self.prep {
                Prep::ReadCap => {
                    self.inner.set_cap(v);
                    // CAP.TO in 500 ms units.
                    let to = ((v >> 24) & 0xff).max(2) * 500;
                    self.prep_deadline = Instant::now() + Duration::from_millis(to);
                    Prep::ReadCc
                }
                Prep::ReadCc => {
                    self.cc = v as u32;
                    if self.cc & 1 != 0 {
                        Prep::Disable
                    } else {
                        Prep::WaitNotReady
                    }
                }
                Prep::Disable => Prep::WaitNotReady,
                Prep::WaitNotReady if v as u32 == u32::MAX => {
                    return Err(HostError::Bringup {
                        step: "disable",
                        reason: "CSTS reads all ones (function gone)".into(),
                    })
                }
                Prep::WaitNotReady if v & 1 != 0 => Prep::WaitNotReady,
                Prep::WaitNotReady => Prep::Aqa,
                Prep::Aqa => Prep::Asq,
                Prep::Asq => Prep::Acq,
                Prep::Acq => Prep::Ready,
                Prep::Ready => Prep::Ready,
            };
            if self.prep == Prep::WaitNotReady && self.prep_ticket.is_none() && access == RegAccess::Read32(prop::CSTS)
            {
                // Still ready: read again on the next poll, not in a tight loop here.
                return Ok(progress);
            }
        }
    }

    fn poll_cq(&mut self, out: &mut Vec<QpCompletion>) -> Result<bool, HostError> {
        let qsize = self.area.qsize;
        let mut consumed = 0u32;
        loop {
            // SAFETY: cq_head < qsize: the entry lies inside the CQ.
            let entry = unsafe { self.cq.add(self.cq_head as usize * 16) };
            // SAFETY: as above; the status word is the entry's last 2 bytes.
            let status = unsafe { entry.add(14).cast::<u16>().read_volatile() };
            if (status & 1 != 0) != self.phase {
                break;
            }
            // The rest of the entry after its phase tag.
            fence(Ordering::Acquire);
            let mut b = [0u8; 16];
            // SAFETY: the whole 16-byte entry is inside the CQ.
            unsafe { std::ptr::copy_nonoverlapping(entry, b.as_mut_ptr(), 16) };
            let cpl = Completion::from_bytes(&b);
            let slot = match self.slots.get_mut(cpl.cid as usize).and_then(Option::take) {
                Some(s) if cpl.sqhd < qsize => s,
                _ => {
                    return Err(HostError::Unexpected(format!(
                        "a completion for CID {} (SQ head {}) on queue {}, which has no such command",
                        cpl.cid, cpl.sqhd, self.qid
                    )))
                }
            };
            self.free.push(cpl.cid);
            let mut owned = slot.owned;
            if slot.dir == Dir::FromCtrlr && cpl.status.is_success() {
                let (buf, _) = self.bounce(cpl.cid);
                match owned.as_mut() {
                    // SAFETY: the vector holds `len` bytes, the bounce buffer at least as many.
                    Some(v) => unsafe { std::ptr::copy_nonoverlapping(buf, v.as_mut_ptr(), slot.len) },
                    None => {
                        let mut at = 0;
                        for s in &slot.segs {
                            // SAFETY: segments are writable per submit_segs' contract; their
                            // sum is `len`, within the bounce buffer.
                            unsafe { std::ptr::copy_nonoverlapping(buf.add(at), s.ptr, s.len) };
                            at += s.len;
                        }
                    }
                }
            }
            if self.qid == 0 && slot.opcode == admin::DOORBELL_BUFFER_CONFIG && cpl.status.is_success() {
                self.inner.set_shadow_active();
            }
            out.push(QpCompletion { tag: slot.tag, cpl, data: owned });
            self.cq_head += 1;
            if self.cq_head == qsize {
                self.cq_head = 0;
                self.phase = !self.phase;
            }
            consumed += 1;
        }
        if consumed > 0 {
            let old = ((self.cq_head as u32 + qsize as u32 - consumed % qsize as u32) % qsize as u32) as u16;
            self.ring(self.cq_db, self.cq_shadow, self.cq_head, old)?;
        }
        Ok(consumed > 0)
    }
}

/// Whether a doorbell moving from `old` to `new` crosses event index `event` (the controller
/// asked to be told once the value passes it; 16-bit arithmetic as in the specification's
/// example and Linux's driver).
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

enum Data<'a> {
    Owned(Vec<u8>),
    Segs(&'a [Seg]),
}

impl<F: PciFunction> Qpair for PcieQpair<F> {
    fn submit_owned(&mut self, cmd: Command, dir: Dir, data: Vec<u8>, tag: u64) -> Result<(), HostError> {
        self.submit(cmd, dir, Data::Owned(data), tag)
    }

    unsafe fn submit_segs(&mut self, cmd: Command, dir: Dir, segs: &[Seg], tag: u64) -> Result<(), HostError> {
        self.submit(cmd, dir, Data::Segs(segs), tag)
    }

    fn poll(&mut self, out: &mut Vec<QpCompletion>) -> Result<bool, HostError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut progress = false;
        let step = (|| {
            if self.prep != Prep::Ready {
                progress |= self.prepare()?;
            }
            if !self.props.is_empty() {
                progress |= self.run_props()?;
            }
            self.inner.f.flush_doorbells()?;
            progress |= self.poll_cq(out)?;
            Ok(())
        })();
        if let Err(e) = step {
            return Err(self.fail(e));
        }
        if !self.prop_done.is_empty() {
            out.append(&mut self.prop_done);
            progress = true;
        }
        Ok(progress)
    }

    fn is_ready(&self) -> bool {
        self.prep == Prep::Ready && self.failed.is_none()
    }

    fn cntlid(&self) -> u16 {
        0
    }

    fn free_slots(&self) -> usize {
        self.free.len()
    }

    fn take_unfinished(&mut self) -> Vec<u64> {
        let mut tags = Vec::new();
        for (cid, s) in self.slots.iter_mut().enumerate() {
            if let Some(s) = s.take() {
                tags.push(s.tag);
                self.free.push(cid as u16);
            }
        }
        tags.extend(self.props.drain(..).map(|p| p.tag));
        tags
    }

    fn raw_fd(&self) -> Option<i32> {
        self.irq
    }
}

#[cfg(test)]
mod tests {
    use super::super::function::{DmaArena, PciFunction, RegAccess, RegOp};
    use super::super::layout::Layout;
    use super::super::transport::PcieTransport;
    use super::need_event;
    use crate::host::{Dir, HostError, IoLimits, Qpair, Transport};
    use crate::spec::{Command, Completion, Status};
    use std::sync::{Arc, Mutex};

    /// A function that is only memory: what a device would write into the arena, the test
    /// writes itself (the hostile device of these tests).
    struct MemFunction {
        mem: *mut u8,
        layout: std::alloc::Layout,
        rung: Mutex<Vec<(u32, u32)>>,
    }

    // SAFETY: the allocation is owned by the function and freed only when it goes.
    unsafe impl Send for MemFunction {}
    // SAFETY: as above; the tests touch it from one thread.
    unsafe impl Sync for MemFunction {}

    impl MemFunction {
        fn new(len: usize) -> Arc<MemFunction> {
            let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
            // SAFETY: a non-zero size (the admin queue is always there).
            let mem = unsafe { std::alloc::alloc_zeroed(layout) };
            assert!(!mem.is_null());
            Arc::new(MemFunction { mem, layout, rung: Mutex::new(Vec::new()) })
        }
    }

    impl Drop for MemFunction {
        fn drop(&mut self) {
            // SAFETY: allocated in `new` with this layout.
            unsafe { std::alloc::dealloc(self.mem, self.layout) };
        }
    }

    impl PciFunction for MemFunction {
        fn arena(&self) -> DmaArena {
            DmaArena { vaddr: self.mem, iova: 0x1000_0000, len: self.layout.size() }
        }
        fn start_reg(&self, _: RegAccess) -> Result<RegOp, HostError> {
            Ok(RegOp::Done(0))
        }
        fn poll_reg(&self, _: u64) -> Result<Option<u64>, HostError> {
            Ok(None)
        }
        fn ring(&self, offset: u32, value: u32) -> Result<(), HostError> {
            self.rung.lock().unwrap().push((offset, value));
            Ok(())
        }
        fn irq_fd(&self, _: u16) -> Option<std::os::fd::RawFd> {
            None
        }
        fn describe(&self) -> String {
            "memory".into()
        }
    }

    /// Posts `cpl` (with phase `phase`) at entry `at` of queue 1's CQ, as a device would.
    fn post(f: &MemFunction, layout: &Layout, at: usize, mut cpl: Completion, phase: bool) {
        let area = layout.queue(1, 8).unwrap();
        cpl.phase = phase;
        let b = cpl.to_bytes();
        // SAFETY: the entry lies in queue 1's CQ inside the arena.
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), f.arena().vaddr.add(area.cq + at * 16), 16) };
    }

    fn io_queue() -> (Arc<MemFunction>, Layout, crate::host::pcie::PcieQpair<MemFunction>) {
        let layout = Layout::new(1, 8);
        let f = MemFunction::new(layout.len());
        let t = PcieTransport::new(f.clone(), layout, true).unwrap();
        let q = t.connect_io(1, 8, 0, &IoLimits::default()).unwrap();
        (f, layout, q)
    }

    #[test]
    fn shadow_doorbells_are_zeroed_only_once_the_controller_was_reset() {
        let layout = Layout::new(1, 8);
        let f = MemFunction::new(layout.len());
        let t = PcieTransport::new(f.clone(), layout, true).unwrap();
        let word = |at: usize| {
            // SAFETY: the doorbell areas lie at the arena's start, inside it.
            unsafe { f.arena().vaddr.add(at).cast::<u32>().read() }
        };
        let set = |at: usize, v: u32| {
            // SAFETY: as above.
            unsafe { f.arena().vaddr.add(at).cast::<u32>().write(v) };
        };
        // A running controller with shadow doorbells: queue 1's SQ tail is 5, its event index 3.
        set(layout.shadow + 8, 5);
        set(layout.eventidx + 8, 3);
        // A reconnect starts: the controller still runs until the admin queue pair's bring-up
        // clears CC.EN, and it reads the shadow tails meanwhile. They must not move.
        let _admin = t.connect_admin(0).unwrap();
        assert_eq!((word(layout.shadow + 8), word(layout.eventidx + 8)), (5, 3));
        // Once reset and brought up, the queues' setup starts every shadow word over at 0.
        let data = crate::host::identify::CtrlrData { oacs: 1 << 8, ..Default::default() };
        let cmds = t.queue_setup(&data, 1, 8);
        assert_eq!(cmds[0].cmd.opcode(), crate::spec::admin::DOORBELL_BUFFER_CONFIG);
        assert_eq!((word(layout.shadow + 8), word(layout.eventidx + 8)), (0, 0));
    }

    #[test]
    fn a_read_completes_with_the_bounce_buffers_bytes_and_rings_both_doorbells() {
        let (f, layout, mut q) = io_queue();
        q.submit_owned(Command::new(0x02, 0), Dir::FromCtrlr, vec![0; 4096], 77).unwrap();
        assert_eq!(f.rung.lock().unwrap().as_slice(), &[(0x1008, 1)], "SQ 1 tail doorbell");
        // The "device" fills slot 0's bounce buffer and completes CID 0.
        let area = layout.queue(1, 8).unwrap();
        // SAFETY: slot 0's bounce buffer is inside the arena.
        unsafe { std::ptr::write_bytes(f.arena().vaddr.add(area.bounce_of(0)), 0xab, 4096) };
        post(
            &f,
            &layout,
            0,
            Completion { cid: 0, sqid: 1, sqhd: 1, status: Status::SUCCESS, ..Default::default() },
            true,
        );
        let mut out = Vec::new();
        assert!(q.poll(&mut out).unwrap());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].tag, 77);
        assert!(out[0].data.as_ref().unwrap().iter().all(|&b| b == 0xab));
        assert_eq!(f.rung.lock().unwrap().last(), Some(&(0x100c, 1)), "CQ 1 head doorbell");
        assert_eq!(q.free_slots(), 7);
    }

    #[test]
    fn a_completion_for_a_command_never_sent_fails_the_queue_pair() {
        let (f, layout, mut q) = io_queue();
        q.submit_owned(Command::new(0x02, 0), Dir::FromCtrlr, vec![0; 512], 1).unwrap();
        // CID 5 is idle: a lying device.
        post(&f, &layout, 0, Completion { cid: 5, sqid: 1, sqhd: 1, ..Default::default() }, true);
        let mut out = Vec::new();
        assert!(matches!(q.poll(&mut out), Err(HostError::Unexpected(_))));
        assert!(out.is_empty());
        // Failed for good: the owner resets the controller and takes the command back.
        assert!(matches!(q.poll(&mut out), Err(HostError::Unexpected(_))));
        assert!(q.submit_owned(Command::new(0x02, 0), Dir::FromCtrlr, vec![0; 512], 2).is_err());
        assert_eq!(q.take_unfinished(), vec![1]);
    }

    #[test]
    fn a_completion_with_an_sq_head_past_the_queue_or_a_huge_cid_fails_it_too() {
        for bad in
            [Completion { cid: 0, sqhd: 8, ..Default::default() }, Completion { cid: 0xffff, ..Default::default() }]
        {
            let (f, layout, mut q) = io_queue();
            q.submit_owned(Command::new(0x02, 0), Dir::FromCtrlr, vec![0; 512], 1).unwrap();
            post(&f, &layout, 0, bad, true);
            assert!(q.poll(&mut Vec::new()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_transfer_beyond_the_slot_is_refused_before_anything_is_written() {
        let (f, _, mut q) = io_queue();
        let e = q.submit_owned(Command::new(0x01, 0), Dir::ToCtrlr, vec![0; 256 << 10], 1).unwrap_err();
        assert!(matches!(e, HostError::Invalid(_)));
        assert!(f.rung.lock().unwrap().is_empty());
        assert_eq!(q.free_slots(), 7);
    }

    #[test]
    fn event_index_is_crossed_only_between_old_and_new() {
        assert!(need_event(4, 5, 4), "the controller waits for index 4 to be passed");
        assert!(!need_event(5, 5, 4), "index 5 is not passed yet by a move to 5");
        assert!(need_event(2, 6, 1));
        assert!(!need_event(7, 6, 1));
        assert!(need_event(0xfffe, 1, 0xfffd), "wraps");
        assert!(!need_event(0xffff, 5, 4), "Ferry's 'never' index while it polls");
    }
}
