//! virtio-blk requests on a split queue: header, data segments and status, each request
//! using descriptors from the queue's free list and a per-head slot of shared memory for its
//! header, discard segment and status byte.

use super::memory::SharedMemory;
use super::split::{flags, SplitQueue};
use std::sync::Arc;

/// Request types.
pub mod req {
    /// Read.
    pub const IN: u32 = 0;
    /// Write.
    pub const OUT: u32 = 1;
    /// Flush.
    pub const FLUSH: u32 = 4;
    /// Device id.
    pub const GET_ID: u32 = 8;
    /// Discard.
    pub const DISCARD: u32 = 11;
    /// Write zeroes.
    pub const WRITE_ZEROES: u32 = 13;
}

/// Status bytes.
pub mod status {
    /// Success.
    pub const OK: u8 = 0;
    /// I/O error.
    pub const IOERR: u8 = 1;
    /// Unsupported request.
    pub const UNSUPP: u8 = 2;
}

/// A request to submit. Data buffers are (guest address, length) ranges of shared memory.
#[derive(Debug, Clone)]
pub enum Request<'a> {
    /// Read into `bufs` from `sector`.
    Read {
        /// First 512-byte sector.
        sector: u64,
        /// Buffers.
        bufs: &'a [(u64, u32)],
    },
    /// Write `bufs` at `sector`.
    Write {
        /// First sector.
        sector: u64,
        /// Buffers.
        bufs: &'a [(u64, u32)],
    },
    /// Flush the device's cache.
    Flush,
    /// Read the device id into `buf`.
    GetId {
        /// Buffer (20 bytes).
        buf: (u64, u32),
    },
    /// Discard sectors.
    Discard {
        /// First sector.
        sector: u64,
        /// Sector count.
        sectors: u32,
    },
    /// Write zeroes.
    WriteZeroes {
        /// First sector.
        sector: u64,
        /// Sector count.
        sectors: u32,
    },
}

/// A completed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The caller's tag.
    pub tag: u64,
    /// virtio-blk status byte.
    pub status: u8,
    /// Bytes the device says it wrote.
    pub len: u32,
}

/// The ring had too few free descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the virtqueue is full")]
pub struct QueueFull;

const SLOT: u64 = 48;

/// A request's layout on the ring: header fields, data segments, and a discard segment.
struct Shape<'a> {
    kind: u32,
    sector: u64,
    data: &'a [(u64, u32)],
    data_writable: bool,
    /// (sector, sectors, flags) of a discard or write-zeroes request.
    segment: Option<(u64, u32, u32)>,
}

impl<'a> Shape<'a> {
    fn of(request: &'a Request<'a>) -> Shape<'a> {
        let plain = |kind, sector, data, data_writable| Shape { kind, sector, data, data_writable, segment: None };
        match request {
            Request::Read { sector, bufs } => plain(req::IN, *sector, bufs, true),
            Request::Write { sector, bufs } => plain(req::OUT, *sector, bufs, false),
            Request::Flush => plain(req::FLUSH, 0, &[], false),
            Request::GetId { buf } => plain(req::GET_ID, 0, std::slice::from_ref(buf), true),
            Request::Discard { sector, sectors } => {
                Shape { segment: Some((*sector, *sectors, 0)), ..plain(req::DISCARD, 0, &[], false) }
            }
            Request::WriteZeroes { sector, sectors } => {
                Shape { segment: Some((*sector, *sectors, 0)), ..plain(req::WRITE_ZEROES, 0, &[], false) }
            }
        }
    }
}

/// A virtio-blk queue, driver side.
pub struct BlkQueue {
    ring: SplitQueue,
    mem: Arc<SharedMemory>,
    slots: u64,
    tags: Vec<u64>,
}

impl BlkQueue {
    /// The guest address of the status byte of the request whose head is `head`.
    pub fn status_addr(&self, head: u16) -> u64 {
        self.slots + SLOT * head as u64 + 32
    }

    /// Wraps a split queue; allocates the per-head request slots.
    pub fn new(ring: SplitQueue, mem: Arc<SharedMemory>) -> Option<BlkQueue> {
        let size = ring.size() as usize;
        let slots = mem.alloc(SLOT as usize * size, 64)?;
        Some(BlkQueue { ring, mem, slots, tags: vec![0; size] })
    }

    /// The underlying ring (raw access for hostile tests).
    pub fn ring(&mut self) -> &mut SplitQueue {
        &mut self.ring
    }

    /// Interrupts the device sent since the last call (reads the call eventfd's counter).
    pub fn take_interrupts(&self) -> u64 {
        self.ring.call_fd().read().unwrap_or(0)
    }

    /// The raw call eventfd (to wait on with epoll while no completion is expected).
    pub fn call_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(self.ring.call_fd())
    }

    /// The shared memory.
    pub fn mem(&self) -> &Arc<SharedMemory> {
        &self.mem
    }

    /// Queues a request (not yet kicked).
    pub fn submit(&mut self, request: &Request<'_>, tag: u64) -> Result<u16, QueueFull> {
        let Shape { kind, sector, data, data_writable, segment } = Shape::of(request);
        let n = 2 + data.len() + usize::from(segment.is_some());
        let descs = self.ring.alloc_descriptors(n).ok_or(QueueFull)?;
        let head = descs[0];
        let slot = self.slots + SLOT * head as u64;
        let mut hdr = [0u8; 16];
        hdr[0..4].copy_from_slice(&kind.to_le_bytes());
        hdr[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write(slot, &hdr);
        self.mem.store_u8(slot + 32, 0xFF);
        let mut chain: Vec<(u64, u32, u16)> = vec![(slot, 16, 0)];
        if let Some((s, count, fl)) = segment {
            let mut seg = [0u8; 16];
            seg[0..8].copy_from_slice(&s.to_le_bytes());
            seg[8..12].copy_from_slice(&count.to_le_bytes());
            seg[12..16].copy_from_slice(&fl.to_le_bytes());
            self.mem.write(slot + 16, &seg);
            chain.push((slot + 16, 16, 0));
        }
        for &(addr, len) in data {
            chain.push((addr, len, if data_writable { flags::WRITE } else { 0 }));
        }
        chain.push((slot + 32, 1, flags::WRITE));
        for (k, (addr, len, f)) in chain.iter().enumerate() {
            let last = k + 1 == chain.len();
            let next = if last { 0 } else { descs[k + 1] };
            self.ring.write_descriptor(descs[k], *addr, *len, f | if last { 0 } else { flags::NEXT }, next);
        }
        self.tags[head as usize] = tag;
        self.ring.publish(head);
        Ok(head)
    }

    /// Notifies the device of what was submitted.
    pub fn kick(&self) {
        self.ring.kick();
    }

    /// Collects completions into `out`; returns how many.
    pub fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        let mut n = 0;
        while let Some((head, len)) = self.ring.pop_used() {
            let head = head % self.ring.size();
            let status = self.mem.load_u8(self.slots + SLOT * head as u64 + 32);
            out.push(Completion { tag: self.tags[head as usize], status, len });
            self.ring.free_descriptors_of(head);
            n += 1;
        }
        n
    }

    /// Waits (up to `timeout_ms`) for the device's interrupt.
    pub fn wait(&self, timeout_ms: i32) {
        self.ring.wait(timeout_ms);
    }
}
