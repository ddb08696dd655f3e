//! The virtio-blk device: features and config space from the bdev, and request handling on
//! the reactors: each request's buffers are translated to host iovecs pointing into guest
//! memory and handed to the bdev as they are (zero copy).

use super::device::{RunningQueue, VirtioDevice};
use super::memory::GuestMemory;
use super::ring::{Chain, Coalescing, Pop, Vring, VringSetup};
use crate::bdev::{BdevChannel, BdevDesc, BdevIo, IoCallback, IoType};
use crate::framework::{self, InterruptSource, PollStatus, Poller};
use std::cell::RefCell;
use std::os::fd::AsRawFd;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vmm_sys_util::eventfd::EventFd;

/// virtio-blk request types (virtio 1.2, 5.2.6).
mod req {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
    pub const DISCARD: u32 = 11;
    pub const WRITE_ZEROES: u32 = 13;
}

/// Request statuses.
mod status {
    pub const OK: u8 = 0;
    pub const IOERR: u8 = 1;
    pub const UNSUPP: u8 = 2;
}

/// Feature bits (virtio 1.2, 5.2.3, and the ring/transport bits).
pub mod feature {
    /// Maximum segment size in `size_max`.
    pub const SIZE_MAX: u64 = 1 << 1;
    /// Maximum segments in `seg_max`.
    pub const SEG_MAX: u64 = 1 << 2;
    /// Read-only device.
    pub const RO: u64 = 1 << 5;
    /// Block size in `blk_size`.
    pub const BLK_SIZE: u64 = 1 << 6;
    /// Cache flush command.
    pub const FLUSH: u64 = 1 << 9;
    /// Topology fields.
    pub const TOPOLOGY: u64 = 1 << 10;
    /// Writeback toggle in config.
    pub const CONFIG_WCE: u64 = 1 << 11;
    /// Multiple queues.
    pub const MQ: u64 = 1 << 12;
    /// Discard command.
    pub const DISCARD: u64 = 1 << 13;
    /// Write-zeroes command.
    pub const WRITE_ZEROES: u64 = 1 << 14;
    /// Indirect descriptors.
    pub const INDIRECT_DESC: u64 = 1 << 28;
    /// Event index notification suppression.
    pub const EVENT_IDX: u64 = 1 << 29;
    /// Virtio 1.x.
    pub const VERSION_1: u64 = 1 << 32;
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
    num_queues: u16,
    serial: String,
    writeback: AtomicU8,
    removed: Arc<AtomicBool>,
}

impl BlkDevice {
    /// A device over `desc`, with `num_queues` request queues.
    pub fn new(desc: Arc<BdevDesc>, readonly: bool, num_queues: u16, removed: Arc<AtomicBool>) -> Self {
        // The serial is stable across restarts: derived from the bdev's uuid (20 bytes max).
        let serial: String = desc.bdev().uuid().simple().to_string().chars().take(20).collect();
        let writeback = u8::from(desc.bdev().backend().write_cache());
        BlkDevice { desc, readonly, num_queues, serial, writeback: AtomicU8::new(writeback), removed }
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

    fn start_queue(&self, setup: VringSetup, kick: EventFd) -> Result<Box<dyn RunningQueue>, String> {
        let ring = Vring::new(setup)?;
        let channel = self.desc.channel().map_err(|e| e.to_string())?;
        let params = BlkParams {
            readonly: self.readonly,
            serial: self.serial.clone(),
            removed: self.removed.clone(),
            block_size: self.desc.bdev().block_size() as u64,
        };
        BlkQueue::start(ring, channel, kick, params).map(|q| Box::new(BlkQueueHandle(q)) as _)
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

/// One virtio-blk queue on its reactor.
struct BlkQueue {
    ring: Vring,
    channel: BdevChannel,
    params: BlkParams,
    chain: Chain,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    /// Completed I/Os kept for reuse (boxed: the bdev layer hands them around by Box).
    #[allow(clippy::vec_box)]
    free_ios: Vec<Box<BdevIo>>,
    callback: Option<IoCallback>,
    inflight: usize,
    stopping: bool,
    _kick: EventFd,
    _interrupt: Option<InterruptSource>,
    poller: Option<Poller>,
}

impl BlkQueue {
    fn start(
        ring: Vring,
        channel: BdevChannel,
        kick: EventFd,
        params: BlkParams,
    ) -> Result<Rc<RefCell<BlkQueue>>, String> {
        let interrupt = framework::register_interrupt(kick.as_raw_fd()).map_err(|e| format!("kick fd: {e}"))?;
        let size = ring.size() as usize + INFLIGHT_SLACK;
        let q = Rc::new(RefCell::new(BlkQueue {
            ring,
            channel,
            params,
            chain: Chain::default(),
            slots: vec![Slot { head: 0, status: std::ptr::null_mut(), used_len: 0 }; size],
            free_slots: (0..size as u32).rev().collect(),
            free_ios: Vec::with_capacity(size),
            callback: None,
            inflight: 0,
            stopping: false,
            _kick: kick,
            _interrupt: Some(interrupt),
            poller: None,
        }));
        let weak: Weak<RefCell<BlkQueue>> = Rc::downgrade(&q);
        let cb_weak = weak.clone();
        q.borrow_mut().callback = Some(Rc::new(move |io: Box<BdevIo>| {
            if let Some(q) = cb_weak.upgrade() {
                q.borrow_mut().on_complete(io);
            }
        }));
        let index = q.borrow().ring.index;
        let poller = framework::poller_register(&format!("vhost_blk_q{index}"), Duration::ZERO, move || {
            weak.upgrade().map_or(PollStatus::Idle, |q| q.borrow_mut().poll())
        });
        q.borrow_mut().poller = Some(poller);
        Ok(q)
    }

    fn poll(&mut self) -> PollStatus {
        let mut handled = 0;
        if !self.stopping {
            // At most one ring's worth per run, so other queues and completions get their turn.
            while handled < self.ring.size() as usize && !self.free_slots.is_empty() {
                match self.ring.pop(&mut self.chain) {
                    Pop::Chain => {
                        self.handle_chain();
                        handled += 1;
                    }
                    Pop::Empty | Pop::Broken => break,
                }
            }
            if handled > 0 {
                self.ring.notifications_off();
            } else if self.ring.notifications_on() {
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
        let mem = self.ring.mem().clone();
        if self.chain.malformed || self.chain.writable.is_empty() {
            // No trustworthy status byte: give the chain back with nothing written.
            tracing::debug!(queue = self.ring.index, head, "malformed virtio-blk chain");
            self.ring.complete(head, 0);
            return;
        }
        // The status is the last byte of the device-writable part.
        let &(last_gpa, last_len) = self.chain.writable.last().expect("checked non-empty");
        let status = match (last_gpa.checked_add(last_len as u64 - 1).filter(|_| last_len > 0))
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
        if self.chain.readable_len() < 16 || copy_from_guest(&mem, &self.chain.readable, 0, &mut header).is_err() {
            return self.finish_now(head, status, status::IOERR, 1);
        }
        let req_type = u32::from_le_bytes(header[0..4].try_into().unwrap());
        let sector = u64::from_le_bytes(header[8..16].try_into().unwrap());
        let readable_data = self.chain.readable_len() - 16;
        if self.params.removed.load(Ordering::Relaxed) {
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
                let mut io = self.take_io();
                io.prepare(if write { IoType::Write } else { IoType::Read }, offset, blocks);
                let ok = if write {
                    add_iovs(&mem, &self.chain.readable, 16, len, &mut io)
                } else {
                    add_iovs(&mem, &self.chain.writable, 0, len, &mut io)
                };
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
                if copy_to_guest(&mem, &self.chain.writable, &buf[..n.min(20)]).is_err() {
                    return self.finish_now(head, status, status::IOERR, 1);
                }
                self.finish_now(head, status, status::OK, n as u32 + 1);
            }
            req::DISCARD | req::WRITE_ZEROES => {
                if self.params.readonly {
                    return self.finish_now(head, status, status::IOERR, 1);
                }
                // Exactly one 16-byte segment: {sector u64, num_sectors u32, flags u32}.
                let mut seg = [0u8; 16];
                if readable_data != 16 || copy_from_guest(&mem, &self.chain.readable, 16, &mut seg).is_err() {
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
        let mut io = self.free_ios.pop().unwrap_or_else(|| BdevIo::new(self.callback.clone().expect("callback set")));
        io.clear_iovs();
        io
    }

    fn submit(&mut self, mut io: Box<BdevIo>, slot: Slot) {
        let Some(index) = self.free_slots.pop() else {
            // Cannot happen: poll() only pops while a slot is free.
            self.free_ios.push(io);
            return self.finish_now(slot.head, slot.status, status::IOERR, 1);
        };
        self.slots[index as usize] = slot;
        io.ctx = index as u64;
        self.inflight += 1;
        self.channel.submit(io);
    }

    fn finish_now(&mut self, head: u16, status_ptr: *mut u8, status: u8, used_len: u32) {
        // SAFETY: status_ptr was translated from guest memory (host_range) and the mapping is
        // held by the ring's Arc<GuestMemory>; a volatile byte store is how DMA would write it.
        unsafe { status_ptr.write_volatile(status) };
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
        self.free_ios.push(io);
        self.finish_now(slot.head, slot.status, st, used);
    }
}

/// Copies `out.len()` bytes starting `skip` bytes into the segments.
fn copy_from_guest(mem: &GuestMemory, segs: &[(u64, u32)], mut skip: u64, out: &mut [u8]) -> Result<(), ()> {
    let mut done = 0;
    for &(gpa, len) in segs {
        if done == out.len() {
            break;
        }
        let len = len as u64;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = ((len - skip) as usize).min(out.len() - done);
        let src = mem.host_range(gpa + skip, n as u64).map_err(|_| ())?;
        // SAFETY: host_range checked that [src, src+n) lies inside the mapped guest memory;
        // `out[done..done+n]` is ours. The guest may change the bytes concurrently: we take a
        // snapshot and validate that, never the live memory.
        unsafe { std::ptr::copy_nonoverlapping(src, out[done..].as_mut_ptr(), n) };
        done += n;
        skip = 0;
    }
    if done == out.len() {
        Ok(())
    } else {
        Err(())
    }
}

/// Copies `data` to the start of the writable segments.
fn copy_to_guest(mem: &GuestMemory, segs: &[(u64, u32)], data: &[u8]) -> Result<(), ()> {
    let mut done = 0;
    for &(gpa, len) in segs {
        if done == data.len() {
            break;
        }
        let n = (len as usize).min(data.len() - done);
        let dst = mem.host_range(gpa, n as u64).map_err(|_| ())?;
        // SAFETY: host_range checked the destination lies inside the mapped guest memory.
        unsafe { std::ptr::copy_nonoverlapping(data[done..].as_ptr(), dst, n) };
        done += n;
    }
    if done == data.len() {
        Ok(())
    } else {
        Err(())
    }
}

/// Adds iovecs for `len` bytes of the segments, starting `skip` bytes in. False if any part
/// is outside guest memory.
fn add_iovs(mem: &GuestMemory, segs: &[(u64, u32)], mut skip: u64, mut len: u64, io: &mut BdevIo) -> bool {
    let mut host = Vec::with_capacity(segs.len());
    for &(gpa, seg_len) in segs {
        if len == 0 {
            break;
        }
        let seg_len = seg_len as u64;
        if skip >= seg_len {
            skip -= seg_len;
            continue;
        }
        let n = (seg_len - skip).min(len);
        if mem.iovecs(gpa + skip, n, &mut host).is_err() {
            return false;
        }
        len -= n;
        skip = 0;
    }
    for v in host {
        // SAFETY: each iovec was translated by GuestMemory::iovecs and lies inside the guest
        // mapping, which the queue keeps alive (Arc) until this I/O completes: queues are only
        // torn down or re-mapped after their in-flight count reaches zero.
        unsafe { io.push_iov(v.iov_base.cast(), v.iov_len) };
    }
    len == 0
}

/// The running queue, as the session sees it.
struct BlkQueueHandle(Rc<RefCell<BlkQueue>>);

impl RunningQueue for BlkQueueHandle {
    fn stop(&self) {
        self.0.borrow_mut().stopping = true;
    }

    fn inflight(&self) -> usize {
        self.0.borrow().inflight
    }

    fn next_avail(&self) -> u16 {
        self.0.borrow().ring.next_avail()
    }

    fn set_call(&self, call: Option<EventFd>) {
        self.0.borrow_mut().ring.set_call(call);
    }

    fn set_coalescing(&self, c: Coalescing) {
        self.0.borrow_mut().ring.set_coalescing(c);
    }
}
