//! The virtio-blk device: features and config space from the bdev, and request handling on
//! the reactors: each request's buffers are translated to host iovecs pointing into guest
//! memory and handed to the bdev as they are (zero copy).

use super::device::{QueueHandle, RunningQueue, ServedQueue, VirtioDevice};
use super::guest_buf::{copy_from_guest, copy_to_guest, translate};
use super::memory::GuestMemory;
use super::ring::{Chain, Pop, Vring, VringSetup};
use crate::bdev::qos::gate::{Gate, LimitSlot};
use crate::bdev::qos::lease::Op;
use crate::bdev::{BdevChannel, BdevDesc, BdevIo, IoCallback, IoType};
use crate::framework::PollStatus;
use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use vmm_sys_util::eventfd::EventFd;

/// virtio-blk request types (virtio 1.2, 5.2.6), from virtio-bindings.
mod req {
    pub use virtio_bindings::virtio_blk::{
        VIRTIO_BLK_T_DISCARD as DISCARD, VIRTIO_BLK_T_FLUSH as FLUSH, VIRTIO_BLK_T_GET_ID as GET_ID,
        VIRTIO_BLK_T_IN as IN, VIRTIO_BLK_T_OUT as OUT, VIRTIO_BLK_T_WRITE_ZEROES as WRITE_ZEROES,
    };
}

/// Request statuses, as the status byte carries them.
mod status {
    use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
    pub const OK: u8 = VIRTIO_BLK_S_OK as u8;
    pub const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
    pub const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
}

/// Feature bits (virtio 1.2, 5.2.3, and the ring/transport bits) as masks, from virtio-bindings.
pub mod feature {
    use virtio_bindings::virtio_blk as blk;
    use virtio_bindings::virtio_config as config;
    use virtio_bindings::virtio_ring as ring;

    /// Maximum segment size in `size_max`.
    pub const SIZE_MAX: u64 = 1 << blk::VIRTIO_BLK_F_SIZE_MAX;
    /// Maximum segments in `seg_max`.
    pub const SEG_MAX: u64 = 1 << blk::VIRTIO_BLK_F_SEG_MAX;
    /// Read-only device.
    pub const RO: u64 = 1 << blk::VIRTIO_BLK_F_RO;
    /// Block size in `blk_size`.
    pub const BLK_SIZE: u64 = 1 << blk::VIRTIO_BLK_F_BLK_SIZE;
    /// Cache flush command.
    pub const FLUSH: u64 = 1 << blk::VIRTIO_BLK_F_FLUSH;
    /// Topology fields.
    pub const TOPOLOGY: u64 = 1 << blk::VIRTIO_BLK_F_TOPOLOGY;
    /// Writeback toggle in config.
    pub const CONFIG_WCE: u64 = 1 << blk::VIRTIO_BLK_F_CONFIG_WCE;
    /// Multiple queues.
    pub const MQ: u64 = 1 << blk::VIRTIO_BLK_F_MQ;
    /// Discard command.
    pub const DISCARD: u64 = 1 << blk::VIRTIO_BLK_F_DISCARD;
    /// Write-zeroes command.
    pub const WRITE_ZEROES: u64 = 1 << blk::VIRTIO_BLK_F_WRITE_ZEROES;
    /// Indirect descriptors.
    pub const INDIRECT_DESC: u64 = 1 << ring::VIRTIO_RING_F_INDIRECT_DESC;
    /// Event index notification suppression.
    pub const EVENT_IDX: u64 = 1 << ring::VIRTIO_RING_F_EVENT_IDX;
    /// Virtio 1.x.
    pub const VERSION_1: u64 = 1 << config::VIRTIO_F_VERSION_1;
    /// Packed virtqueues.
    pub const RING_PACKED: u64 = 1 << config::VIRTIO_F_RING_PACKED;
}

/// virtio-blk sectors are always 512 bytes.
const SECTOR: u64 = 512;
/// Largest segment we advertise (size_max) and the most segments per request (seg_max).
const SIZE_MAX: u32 = 1 << 20;
const SEG_MAX: u32 = 126;
/// Discard/write-zeroes: one segment of at most this many sectors per request.
const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Requests in flight per queue beyond the ring size: a driver re-publishing heads it has
/// not got back is broken, and we stop taking its requests rather than grow without bound.
const INFLIGHT_SLACK: usize = 0;

/// A virtio-blk device backed by a bdev.
pub struct BlkDevice {
    desc: Arc<BdevDesc>,
    readonly: bool,
    packed: bool,
    num_queues: u16,
    serial: String,
    writeback: AtomicU8,
    removed: Arc<AtomicBool>,
    qos: Arc<LimitSlot>,
}

impl BlkDevice {
    /// A device over `desc`, with `num_queues` request queues.
    pub fn new(desc: Arc<BdevDesc>, readonly: bool, num_queues: u16, removed: Arc<AtomicBool>) -> Self {
        Self::with_ring(desc, readonly, false, num_queues, removed)
    }

    /// A device that also offers packed virtqueues when `packed` is set.
    pub fn with_ring(
        desc: Arc<BdevDesc>,
        readonly: bool,
        packed: bool,
        num_queues: u16,
        removed: Arc<AtomicBool>,
    ) -> Self {
        // The serial is stable across restarts: derived from the bdev's uuid (20 bytes max).
        let serial: String = desc.bdev().uuid().simple().to_string().chars().take(20).collect();
        let writeback = u8::from(desc.bdev().backend().write_cache());
        let qos = Arc::new(LimitSlot::default());
        BlkDevice { desc, readonly, packed, num_queues, serial, writeback: AtomicU8::new(writeback), removed, qos }
    }

    /// The bdev's name.
    pub fn bdev_name(&self) -> String {
        self.desc.bdev().name().to_string()
    }

    /// The serial GET_ID returns.
    pub fn serial(&self) -> &str {
        &self.serial
    }
}

impl VirtioDevice for BlkDevice {
    fn features(&self) -> u64 {
        let bdev = self.desc.bdev();
        let mut f = feature::VERSION_1
            | feature::SIZE_MAX
            | feature::SEG_MAX
            | feature::BLK_SIZE
            | feature::TOPOLOGY
            | feature::MQ
            | feature::INDIRECT_DESC
            | feature::EVENT_IDX;
        if bdev.supports(IoType::Flush) {
            f |= feature::FLUSH | feature::CONFIG_WCE;
        }
        if self.packed {
            f |= feature::RING_PACKED;
        }
        if self.readonly {
            f |= feature::RO;
        } else {
            if bdev.supports(IoType::Unmap) {
                f |= feature::DISCARD;
            }
            if bdev.supports(IoType::WriteZeroes) {
                f |= feature::WRITE_ZEROES;
            }
        }
        f
    }

    fn num_queues(&self) -> u16 {
        self.num_queues
    }

    fn config(&self) -> Vec<u8> {
        let bdev = self.desc.bdev();
        let bs = bdev.block_size();
        let mut c = vec![0u8; 60];
        c[0..8].copy_from_slice(&(bdev.size_bytes() / SECTOR).to_le_bytes());
        c[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        // geometry (16..20) left zero
        c[20..24].copy_from_slice(&bs.to_le_bytes());
        // topology: physical_block_exp, alignment_offset, min_io_size, opt_io_size (in blocks)
        c[26..28].copy_from_slice(&1u16.to_le_bytes());
        c[32] = self.writeback.load(Ordering::Relaxed);
        c[34..36].copy_from_slice(&self.num_queues.to_le_bytes());
        let discard_sectors = MAX_DISCARD_SECTORS.min((bdev.size_bytes() / SECTOR).min(u32::MAX as u64) as u32);
        c[36..40].copy_from_slice(&discard_sectors.to_le_bytes());
        c[40..44].copy_from_slice(&1u32.to_le_bytes());
        c[44..48].copy_from_slice(&(bs / SECTOR as u32).to_le_bytes());
        c[48..52].copy_from_slice(&discard_sectors.to_le_bytes());
        c[52..56].copy_from_slice(&1u32.to_le_bytes());
        c[56] = 0;
        c
    }

    fn write_config(&self, offset: u32, data: &[u8]) -> bool {
        // Only `writeback` (one byte at 32) is writable.
        if offset == 32 && data.len() == 1 {
            self.writeback.store(u8::from(data[0] != 0), Ordering::Relaxed);
            return true;
        }
        false
    }

    fn qos(&self) -> &Arc<LimitSlot> {
        &self.qos
    }

    fn start_queue(&self, setup: VringSetup, kick: EventFd) -> Result<Box<dyn RunningQueue>, String> {
        let ring = Vring::new(setup)?;
        // A removed bdev has no channels: the queue still runs and fails every request.
        let channel = match self.desc.channel() {
            Ok(c) => Some(c),
            Err(_) if self.removed.load(Ordering::Acquire) || self.desc.bdev().is_removed() => {
                self.removed.store(true, Ordering::Release);
                None
            }
            Err(e) => return Err(e.to_string()),
        };
        let params = BlkParams {
            readonly: self.readonly,
            serial: self.serial.clone(),
            removed: self.removed.clone(),
            block_size: self.desc.bdev().block_size() as u64,
        };
        let q = BlkQueue::new(ring, channel, params, self.qos.clone());
        let name = format!("vhost_blk_q{}", q.borrow().ring.index);
        QueueHandle::start(q, kick, &name)
    }
}

struct BlkParams {
    readonly: bool,
    serial: String,
    removed: Arc<AtomicBool>,
    block_size: u64,
}

/// A request in flight: where its status byte goes and what to report as written.
#[derive(Clone, Copy)]
struct Slot {
    head: u16,
    status: *mut u8,
    used_len: u32,
}

/// A cleared `BdevIo` from the queue's spares, or a new one calling `callback` (a function of
/// the two fields, so that it can be called while guest memory is borrowed from the ring).
#[allow(clippy::vec_box)]
fn take_io(free_ios: &mut Vec<Box<BdevIo>>, callback: &Option<IoCallback>) -> Box<BdevIo> {
    let mut io = free_ios.pop().unwrap_or_else(|| BdevIo::new(callback.clone().expect("callback set")));
    io.clear_iovs();
    io
}

/// One virtio-blk queue on its reactor.
struct BlkQueue {
    ring: Vring,
    channel: Option<BdevChannel>,
    params: BlkParams,
    chain: Chain,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    /// Completed I/Os kept for reuse (boxed: the bdev layer hands them around by Box).
    #[allow(clippy::vec_box)]
    free_ios: Vec<Box<BdevIo>>,
    callback: Option<IoCallback>,
    /// The controller's limit on this queue: requests it holds back are counted in flight.
    gate: Gate<Box<BdevIo>>,
    inflight: usize,
    stopping: bool,
}

impl BlkQueue {
    fn new(ring: Vring, channel: Option<BdevChannel>, params: BlkParams, qos: Arc<LimitSlot>) -> Rc<RefCell<BlkQueue>> {
        let size = ring.size() as usize + INFLIGHT_SLACK;
        let to_bdev = channel.clone();
        let gate = Gate::new(qos, "vhost_qos", move |io: Box<BdevIo>| match &to_bdev {
            Some(ch) => ch.submit(io),
            None => io.fail(libc::ENODEV),
        });
        let q = Rc::new(RefCell::new(BlkQueue {
            ring,
            channel,
            params,
            chain: Chain::default(),
            slots: vec![Slot { head: 0, status: std::ptr::null_mut(), used_len: 0 }; size],
            free_slots: (0..size as u32).rev().collect(),
            free_ios: Vec::with_capacity(size),
            callback: None,
            gate,
            inflight: 0,
            stopping: false,
        }));
        let weak: Weak<RefCell<BlkQueue>> = Rc::downgrade(&q);
        q.borrow_mut().callback = Some(Rc::new(move |io: Box<BdevIo>| {
            if let Some(q) = weak.upgrade() {
                q.borrow_mut().on_complete(io);
            }
        }));
        q
    }

    fn poll(&mut self) -> PollStatus {
        let mut handled = 0;
        self.ring.publish_used();
        if !self.stopping {
            // At most what was published when the poll began (see Vring::keep_polling), so
            // other queues and completions get their turn.
            while !self.free_slots.is_empty() && self.ring.keep_polling(handled) {
                match self.ring.pop(&mut self.chain) {
                    Pop::Chain => {
                        self.handle_chain();
                        handled += 1;
                    }
                    Pop::Empty | Pop::Broken => break,
                }
            }
            if self.ring.after_poll(handled) {
                // A request slipped in while notifications were off: poll again, don't sleep.
                handled = 1;
            }
        }
        let held_back = self.ring.signal();
        PollStatus::from(handled > 0 || held_back)
    }

    /// Parses the popped chain and starts it (or completes it at once with an error).
    fn handle_chain(&mut self) {
        let head = self.chain.head;
        // Borrowed, not cloned (an atomic count per request): the ring outlives this call.
        let mem: &GuestMemory = self.ring.mem();
        if self.chain.malformed || self.chain.writable.is_empty() {
            // No trustworthy status byte: give the chain back with nothing written.
            tracing::debug!(queue = self.ring.index, head, "malformed virtio-blk chain");
            self.ring.complete(head, 0);
            return;
        }
        // The status is the last byte of the device-writable part.
        let &(last_gpa, last_len) = self.chain.writable.last().expect("checked non-empty");
        let status = match (last_len as u64)
            .checked_sub(1)
            .and_then(|off| last_gpa.checked_add(off))
            .and_then(|gpa| mem.host_range(gpa, 1).ok())
        {
            Some(p) => p,
            None => {
                self.ring.complete(head, 0);
                return;
            }
        };
        let writable_data = self.chain.writable_len() - 1;
        let mut header = [0u8; 16];
        if self.chain.readable_len() < 16 || copy_from_guest(mem, &self.chain.readable, 0, &mut header).is_err() {
            return self.finish_now(head, status, status::IOERR, 1);
        }
        let req_type = u32::from_le_bytes(header[0..4].try_into().unwrap());
        let sector = u64::from_le_bytes(header[8..16].try_into().unwrap());
        let readable_data = self.chain.readable_len() - 16;
        if self.params.removed.load(Ordering::Relaxed) || self.channel.is_none() {
            return self.finish_now(head, status, status::IOERR, 1);
        }
        let segments = self.chain.readable.len() + self.chain.writable.len();
        if segments > SEG_MAX as usize + 2 {
            return self.finish_now(head, status, status::IOERR, 1);
        }
        match req_type {
            req::IN | req::OUT => {
                let write = req_type == req::OUT;
                let len = if write { readable_data } else { writable_data };
                if write && self.params.readonly {
                    return self.finish_now(head, status, status::IOERR, 1);
                }
                let Some((offset, blocks)) = self.range(sector, len) else {
                    return self.finish_now(head, status, status::IOERR, 1);
                };
                let mut io = take_io(&mut self.free_ios, &self.callback);
                io.prepare(if write { IoType::Write } else { IoType::Read }, offset, blocks);
                let (segs, skip) = if write { (&self.chain.readable, 16) } else { (&self.chain.writable, 0) };
                // SAFETY: translate yields iovecs inside the guest mapping, which the queue keeps
                // alive (Arc) until this I/O completes: queues are only torn down or re-mapped
                // after their in-flight count reaches zero. The guest owns the contents (DMA).
                let ok = unsafe { io.set_iovs_with(|host| translate(mem, segs, skip, len, host)) };
                if !ok {
                    self.free_ios.push(io);
                    return self.finish_now(head, status, status::IOERR, 1);
                }
                let used = if write { 1 } else { len as u32 + 1 };
                self.submit(io, Slot { head, status, used_len: used });
            }
            req::FLUSH => {
                let mut io = self.take_io();
                io.prepare(IoType::Flush, 0, 0);
                self.submit(io, Slot { head, status, used_len: 1 });
            }
            req::GET_ID => {
                let id = self.params.serial.as_bytes();
                let n = (id.len() as u64).min(writable_data) as usize;
                let mut buf = [0u8; 20];
                buf[..id.len().min(20)].copy_from_slice(&id[..id.len().min(20)]);
                if copy_to_guest(mem, &self.chain.writable, 0, &buf[..n.min(20)]).is_err() {
                    return self.finish_now(head, status, status::IOERR, 1);
                }
                self.ring.log_segments(&self.chain.writable);
                self.finish_now(head, status, status::OK, n as u32 + 1);
            }
            req::DISCARD | req::WRITE_ZEROES => {
                if self.params.readonly {
                    return self.finish_now(head, status, status::IOERR, 1);
                }
                // Exactly one 16-byte segment: {sector u64, num_sectors u32, flags u32}.
                let mut seg = [0u8; 16];
                if readable_data != 16 || copy_from_guest(mem, &self.chain.readable, 16, &mut seg).is_err() {
                    return self.finish_now(head, status, status::UNSUPP, 1);
                }
                let seg_sector = u64::from_le_bytes(seg[0..8].try_into().unwrap());
                let seg_count = u32::from_le_bytes(seg[8..12].try_into().unwrap()) as u64;
                let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap());
                let unmap_flag = 1;
                if flags & !unmap_flag != 0 || (req_type == req::DISCARD && flags != 0) || seg_count == 0 {
                    return self.finish_now(head, status, status::UNSUPP, 1);
                }
                let Some((offset, blocks)) = seg_count.checked_mul(SECTOR).and_then(|len| self.range(seg_sector, len))
                else {
                    return self.finish_now(head, status, status::IOERR, 1);
                };
                let mut io = self.take_io();
                io.prepare(if req_type == req::DISCARD { IoType::Unmap } else { IoType::WriteZeroes }, offset, blocks);
                self.submit(io, Slot { head, status, used_len: 1 });
            }
            _ => self.finish_now(head, status, status::UNSUPP, 1),
        }
    }

    /// Converts a 512-byte sector and byte length into bdev blocks, if aligned and non-empty.
    fn range(&self, sector: u64, len: u64) -> Option<(u64, u64)> {
        let bs = self.params.block_size;
        let start = sector.checked_mul(SECTOR)?;
        if len == 0 || !start.is_multiple_of(bs) || !len.is_multiple_of(bs) {
            return None;
        }
        // The bdev checks the end against its size; we only hand it block numbers.
        Some((start / bs, len / bs))
    }

    fn take_io(&mut self) -> Box<BdevIo> {
        take_io(&mut self.free_ios, &self.callback)
    }

    fn submit(&mut self, mut io: Box<BdevIo>, slot: Slot) {
        let Some(index) = self.free_slots.pop() else {
            // Cannot happen: poll() only pops while a slot is free.
            self.free_ios.push(io);
            return self.finish_now(slot.head, slot.status, status::IOERR, 1);
        };
        let Some(channel) = self.channel.as_ref() else {
            self.free_slots.push(index);
            self.free_ios.push(io);
            return self.finish_now(slot.head, slot.status, status::IOERR, 1);
        };
        self.slots[index as usize] = slot;
        io.ctx = index as u64;
        self.inflight += 1;
        let bs = self.params.block_size;
        if let Some(io) = self.gate.admit(io, |io| op_of(io, bs)) {
            channel.submit(io);
        }
    }

    fn finish_now(&mut self, head: u16, status_ptr: *mut u8, status: u8, used_len: u32) {
        // SAFETY: status_ptr was translated from guest memory (host_range) and the mapping is
        // held by the ring's Arc<GuestMemory>; a volatile byte store is how DMA would write it.
        unsafe { status_ptr.write_volatile(status) };
        self.ring.log_host(status_ptr, 1);
        self.ring.complete(head, used_len);
    }

    fn on_complete(&mut self, io: Box<BdevIo>) {
        let slot = self.slots[io.ctx as usize];
        self.free_slots.push(io.ctx as u32);
        self.inflight -= 1;
        let st = if io.succeeded() {
            status::OK
        } else if io.errno() == libc::ENOTSUP {
            status::UNSUPP
        } else {
            status::IOERR
        };
        let used = if st == status::OK { slot.used_len } else { 1 };
        // While migrating, the pages a read filled go to the dirty log (one test otherwise).
        if self.ring.logging() && io.io_type == IoType::Read {
            io.iovs().iter().for_each(|v| self.ring.log_host(v.iov_base.cast(), v.iov_len));
        }
        self.free_ios.push(io);
        self.finish_now(slot.head, slot.status, st, used);
    }
}

/// What a request costs under the controller's limit: the bytes the guest asked to move.
fn op_of(io: &BdevIo, block_size: u64) -> Op {
    let bytes = io.num_blocks.saturating_mul(block_size);
    match io.io_type {
        IoType::Read => Op::Read(bytes),
        IoType::Write => Op::Write(bytes),
        IoType::WriteZeroes => Op::WriteZeroes(bytes),
        IoType::Unmap => Op::Unmap,
        _ => Op::Free,
    }
}

/// The running queue, as the session sees it.
impl ServedQueue for BlkQueue {
    fn ring(&self) -> &Vring {
        &self.ring
    }

    fn ring_mut(&mut self) -> &mut Vring {
        &mut self.ring
    }

    fn stop(&mut self) {
        self.stopping = true;
        // What the limit holds back goes now: the queue is stopping (the guest, a migration,
        // a disconnect waits for it) and its in-flight count must reach zero.
        self.gate.flush();
    }

    fn inflight(&self) -> usize {
        self.inflight
    }

    fn poll(&mut self) -> PollStatus {
        BlkQueue::poll(self)
    }
}

/// A hostile driver against the real device on real reactors: descriptors are written into a
/// shared-memory ring by hand, and what comes back (status bytes, used entries) is checked.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::bdev::modules::malloc;
    use crate::framework::{self, testing};
    use crate::vhost::ring::{Coalescing, VringSetup};
    use std::time::Duration;
    use std::time::Instant;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    const MEM: u64 = 4 << 20;
    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x3000;
    const USED: u64 = 0x4000;
    const QSIZE: u16 = 256;
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    const INDIRECT: u16 = 4;

    thread_local! {
        static HELD: RefCell<Vec<Box<dyn RunningQueue>>> = const { RefCell::new(Vec::new()) };
    }

    struct Driver {
        mem: Arc<GuestMemory>,
        next_desc: u16,
        avail_idx: u16,
        kick: EventFd,
    }

    impl Driver {
        fn write(&self, gpa: u64, bytes: &[u8]) {
            let p = self.mem.host_range(gpa, bytes.len() as u64).unwrap();
            // SAFETY: inside the test's own mapping (host_range checked).
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) };
        }

        fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
            let p = self.mem.host_range(gpa, len as u64).unwrap();
            let mut out = vec![0u8; len];
            // SAFETY: as in write.
            unsafe { std::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), len) };
            out
        }

        fn desc_at(&self, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
            let mut d = addr.to_le_bytes().to_vec();
            d.extend_from_slice(&len.to_le_bytes());
            d.extend_from_slice(&flags.to_le_bytes());
            d.extend_from_slice(&next.to_le_bytes());
            self.write(table + 16 * i as u64, &d);
        }

        /// Writes a chain of (addr, len, device-writable) segments; returns its head.
        fn chain(&mut self, segs: &[(u64, u32, bool)]) -> u16 {
            let head = self.next_desc;
            for (k, &(addr, len, w)) in segs.iter().enumerate() {
                let i = self.next_desc;
                let last = k + 1 == segs.len();
                let flags = if w { WRITE } else { 0 } | if last { 0 } else { NEXT };
                self.desc_at(DESC, i, addr, len, flags, i.wrapping_add(1) % QSIZE);
                self.next_desc = (self.next_desc + 1) % QSIZE;
            }
            head
        }

        fn publish(&mut self, head: u16) {
            self.write(AVAIL + 4 + 2 * (self.avail_idx % QSIZE) as u64, &head.to_le_bytes());
            self.avail_idx = self.avail_idx.wrapping_add(1);
            self.write(AVAIL + 2, &self.avail_idx.to_le_bytes());
            self.kick.write(1).unwrap();
        }

        fn used_idx(&self) -> u16 {
            u16::from_le_bytes(self.read(USED + 2, 2).try_into().unwrap())
        }

        /// Waits for used entry `n` (0-based) and returns (head, len).
        fn used(&self, n: u16) -> (u16, u32) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.used_idx().wrapping_sub(n) == 0 || self.used_idx() < n + 1 {
                assert!(Instant::now() < deadline, "used entry {n} never came (used idx {})", self.used_idx());
                std::thread::sleep(Duration::from_millis(1));
            }
            let e = self.read(USED + 4 + 8 * (n % QSIZE) as u64, 8);
            (u32::from_le_bytes(e[0..4].try_into().unwrap()) as u16, u32::from_le_bytes(e[4..8].try_into().unwrap()))
        }

        fn header(&self, gpa: u64, kind: u32, sector: u64) {
            let mut h = kind.to_le_bytes().to_vec();
            h.extend_from_slice(&0u32.to_le_bytes());
            h.extend_from_slice(&sector.to_le_bytes());
            self.write(gpa, &h);
        }
    }

    fn start(bdev: &str, readonly: bool) -> Driver {
        start_queue(bdev, readonly, 0)
    }

    /// As `start`, as queue `index` (its poller is named `vhost_blk_q{index}`: tests that
    /// wait for their poller give it an index no other test uses).
    fn start_queue(bdev: &str, readonly: bool, index: u16) -> Driver {
        testing::reactors();
        let mem = Arc::new(GuestMemory::for_tests(MEM));
        let desc = crate::bdev::open(bdev, !readonly, Box::new(|_, _| {})).unwrap();
        let dev = Arc::new(BlkDevice::new(Arc::new(desc), readonly, 1, Arc::new(AtomicBool::new(false))));
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let reactor_kick = kick.try_clone().unwrap();
        let setup = VringSetup {
            index,
            size: QSIZE,
            desc: DESC,
            avail: AVAIL,
            used: USED,
            next_avail: 0,
            next_used: 0,
            event_idx: false,
            mem: mem.clone(),
            call: None,
            coalescing: Coalescing::default(),
            inflight: None,
            packed_base: None,
            log: None,
        };
        framework::call(0, move || {
            let q = dev.start_queue(setup, reactor_kick).unwrap();
            HELD.with(|h| h.borrow_mut().push(q));
        })
        .unwrap();
        Driver { mem, next_desc: 0, avail_idx: 0, kick }
    }

    const HDR: u64 = 0x10000;
    const DATA: u64 = 0x20000;
    const STATUS: u64 = 0x30000;

    /// VIRTIO_BLK_F_FLUSH (and CONFIG_WCE) is offered exactly when the bdev supports Flush,
    /// and VIRTIO_BLK_T_FLUSH reaches the bdev as one IoType::Flush (seen by the gate bdev,
    /// which records what reaches it); on a bdev without Flush the request is UNSUPP and
    /// reaches nothing.
    #[test]
    fn flush_is_offered_exactly_when_the_bdev_flushes_and_arrives_as_a_flush() {
        testing::reactors();
        let with = crate::bdev::test_gate::create_with("t_vblk_flush", 2048, 512, true);
        let without = crate::bdev::test_gate::create_with("t_vblk_noflush", 2048, 512, false);
        for (name, flush) in [("t_vblk_flush", true), ("t_vblk_noflush", false)] {
            let desc = crate::bdev::open(name, true, Box::new(|_, _| {})).unwrap();
            let dev = BlkDevice::new(Arc::new(desc), false, 1, Arc::new(AtomicBool::new(false)));
            assert_eq!(dev.features() & feature::FLUSH != 0, flush, "{name}: VIRTIO_BLK_F_FLUSH");
            assert_eq!(dev.features() & feature::CONFIG_WCE != 0, flush, "{name}: VIRTIO_BLK_F_CONFIG_WCE");
        }
        for (name, gate, index, want) in
            [("t_vblk_flush", &with, 21, status::OK), ("t_vblk_noflush", &without, 22, status::UNSUPP)]
        {
            let mut d = start_queue(name, false, index);
            d.write(STATUS, &[0xEE]);
            d.header(HDR, req::FLUSH, 0);
            let head = d.chain(&[(HDR, 16, false), (STATUS, 1, true)]);
            d.publish(head);
            assert_eq!(d.used(0), (head, 1), "{name}: used entry");
            assert_eq!(d.read(STATUS, 1)[0], want, "{name}: status");
            let flushes = if want == status::OK { vec![(IoType::Flush, 0, 0)] } else { vec![] };
            assert_eq!(gate.arrivals(), flushes, "{name}: what reached the bdev");
        }
    }

    #[test]
    fn good_requests_move_data_and_hostile_ones_fail_cleanly() {
        malloc::create("t_vblk", 2048, 512, None).unwrap();
        let mut d = start_queue("t_vblk", false, 7);
        let mut n = 0u16;
        let expect =
            |d: &mut Driver, n: &mut u16, segs: &[(u64, u32, bool)], status: Option<u8>, len: u32, why: &str| {
                d.write(STATUS, &[0xEE]);
                let head = d.chain(segs);
                d.publish(head);
                let (got_head, got_len) = d.used(*n);
                *n += 1;
                assert_eq!((got_head, got_len), (head, len), "{why}: used entry");
                if let Some(s) = status {
                    assert_eq!(d.read(STATUS, 1)[0], s, "{why}: status");
                } else {
                    assert_eq!(d.read(STATUS, 1)[0], 0xEE, "{why}: no status written");
                }
            };
        // A good write and read back, data in two segments.
        d.header(HDR, req::OUT, 8);
        d.write(DATA, &[0x5A; 4096]);
        expect(
            &mut d,
            &mut n,
            &[(HDR, 16, false), (DATA, 1024, false), (DATA + 1024, 3072, false), (STATUS, 1, true)],
            Some(0),
            1,
            "write",
        );
        d.write(DATA, &[0; 4096]);
        d.header(HDR, req::IN, 8);
        expect(&mut d, &mut n, &[(HDR, 16, false), (DATA, 4096, true), (STATUS, 1, true)], Some(0), 4097, "read");
        assert!(d.read(DATA, 4096).iter().all(|&b| b == 0x5A), "read returns what was written");
        // Data outside guest memory.
        d.header(HDR, req::IN, 0);
        expect(
            &mut d,
            &mut n,
            &[(HDR, 16, false), (MEM - 512, 1024, true), (STATUS, 1, true)],
            Some(status::IOERR),
            1,
            "data past the end of memory",
        );
        d.header(HDR, req::OUT, 0);
        expect(
            &mut d,
            &mut n,
            &[(HDR, 16, false), (u64::MAX - 100, 512, false), (STATUS, 1, true)],
            Some(status::IOERR),
            1,
            "wrapping address",
        );
        // Sector past the end of the disk, and an unaligned length.
        d.header(HDR, req::IN, 2047);
        expect(
            &mut d,
            &mut n,
            &[(HDR, 16, false), (DATA, 1024, true), (STATUS, 1, true)],
            Some(status::IOERR),
            1,
            "past the end of the disk",
        );
        d.header(HDR, req::IN, u64::MAX / 256);
        expect(
            &mut d,
            &mut n,
            &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
            Some(status::IOERR),
            1,
            "sector overflow",
        );
        d.header(HDR, req::IN, 0);
        expect(
            &mut d,
            &mut n,
            &[(HDR, 16, false), (DATA, 100, true), (STATUS, 1, true)],
            Some(status::IOERR),
            1,
            "unaligned length",
        );
        // Header too short, or device-writable.
        expect(&mut d, &mut n, &[(HDR, 8, false), (STATUS, 1, true)], Some(status::IOERR), 1, "short header");
        expect(
            &mut d,
            &mut n,
            &[(HDR, 16, true), (STATUS, 1, true)],
            Some(status::IOERR),
            1,
            "header in a writable descriptor",
        );
        // No writable status descriptor at all: nothing can be reported, the chain comes back empty.
        d.header(HDR, req::FLUSH, 0);
        expect(&mut d, &mut n, &[(HDR, 16, false)], None, 0, "no status descriptor");
        // A zero-length last writable descriptor holds no status byte.
        d.header(HDR, req::FLUSH, 0);
        expect(&mut d, &mut n, &[(HDR, 16, false), (STATUS, 0, true)], None, 0, "zero-length status descriptor");
        d.header(HDR, req::FLUSH, 0);
        expect(
            &mut d,
            &mut n,
            &[(HDR, 16, false), (DATA, 512, true), (STATUS, 0, true)],
            None,
            0,
            "zero-length status descriptor after data",
        );
        // Status descriptor outside memory.
        d.header(HDR, req::FLUSH, 0);
        expect(&mut d, &mut n, &[(HDR, 16, false), (MEM + 4096, 1, true)], None, 0, "status outside memory");
        // A readable descriptor after a writable one.
        d.header(HDR, req::IN, 0);
        expect(
            &mut d,
            &mut n,
            &[(HDR, 16, false), (DATA, 512, true), (DATA, 16, false), (STATUS, 1, true)],
            None,
            0,
            "readable after writable",
        );
        // Unknown request type, and GET_ID into a short buffer.
        d.header(HDR, 0x77, 0);
        expect(&mut d, &mut n, &[(HDR, 16, false), (STATUS, 1, true)], Some(status::UNSUPP), 1, "unknown type");
        d.header(HDR, req::GET_ID, 0);
        expect(
            &mut d,
            &mut n,
            &[(HDR, 16, false), (DATA, 8, true), (STATUS, 1, true)],
            Some(0),
            9,
            "GET_ID, short buffer",
        );
        // Discard with two segments (we advertise one), and with reserved flags.
        d.header(HDR, req::DISCARD, 0);
        expect(
            &mut d,
            &mut n,
            &[(HDR, 16, false), (DATA, 32, false), (STATUS, 1, true)],
            Some(status::UNSUPP),
            1,
            "two discard segments",
        );
        // More data segments than SEG_MAX, through an indirect table.
        d.header(HDR, req::IN, 0);
        let table = 0x40000;
        let segs = SEG_MAX as u16 + 3;
        d.desc_at(table, 0, HDR, 16, NEXT, 1);
        for i in 1..segs - 1 {
            d.desc_at(table, i, DATA + 512 * i as u64, 512, WRITE | NEXT, i + 1);
        }
        d.desc_at(table, segs - 1, STATUS, 1, WRITE, 0);
        d.write(STATUS, &[0xEE]);
        let head = d.next_desc;
        d.desc_at(DESC, head, table, 16 * segs as u32, INDIRECT, 0);
        d.next_desc += 1;
        d.publish(head);
        assert_eq!(d.used(n), (head, 1), "too many segments");
        assert_eq!(d.read(STATUS, 1)[0], status::IOERR);
        n += 1;
        // A chain that loops back on itself.
        let head = d.next_desc;
        d.desc_at(DESC, head, HDR, 16, NEXT, head);
        d.next_desc += 1;
        d.publish(head);
        assert_eq!(d.used(n), (head, 0), "looping chain");
        n += 1;
        // Still serving after all that.
        d.header(HDR, req::IN, 8);
        expect(
            &mut d,
            &mut n,
            &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
            Some(0),
            513,
            "after the abuse",
        );
        // An avail index jumping far ahead breaks this queue only: once its poller has run
        // again, nothing has been consumed.
        d.write(AVAIL + 2, &(d.avail_idx.wrapping_add(1000)).to_le_bytes());
        d.kick.write(1).unwrap();
        testing::wait_polled(0, "vhost_blk_q7");
        assert_eq!(d.used_idx(), n, "nothing is consumed from a broken ring");
        // And it stays broken: a good request published with a sane index is not taken either.
        d.header(HDR, req::IN, 8);
        let head = d.chain(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
        d.publish(head);
        testing::wait_polled(0, "vhost_blk_q7");
        assert_eq!(d.used_idx(), n, "a broken ring stays broken until the driver resets it");
        let stats = crate::bdev::registry::get("t_vblk").unwrap().stats();
        // Only the past-the-end read reaches the bdev core, whose range check refuses it; every
        // other bad request is refused by the device before any bdev I/O exists.
        assert_eq!(stats.errors.get(), 1, "only the out-of-range read is refused by the bdev core");
        // Another queue, on the same reactor, is unaffected.
        malloc::create("t_vblk2", 64, 512, None).unwrap();
        let mut other = start("t_vblk2", false);
        other.header(HDR, req::FLUSH, 0);
        let head = other.chain(&[(HDR, 16, false), (STATUS, 1, true)]);
        other.publish(head);
        assert_eq!(other.used(0), (head, 1));
    }

    #[test]
    fn a_read_only_device_refuses_writes_discards_and_write_zeroes() {
        malloc::create("t_vblk_ro", 64, 512, None).unwrap();
        let mut d = start("t_vblk_ro", true);
        for (n, kind) in [req::OUT, req::DISCARD, req::WRITE_ZEROES].into_iter().enumerate() {
            d.header(HDR, kind, 0);
            d.write(DATA, &[0u8; 16]);
            d.write(STATUS, &[0xEE]);
            let head =
                d.chain(&[(HDR, 16, false), (DATA, if kind == req::OUT { 512 } else { 16 }, false), (STATUS, 1, true)]);
            d.publish(head);
            assert_eq!(d.used(n as u16), (head, 1));
            assert_eq!(d.read(STATUS, 1)[0], status::IOERR, "request type {kind} on a read-only device");
        }
        assert_eq!(crate::bdev::registry::get("t_vblk_ro").unwrap().stats().write.ops.get(), 0);
    }
}
