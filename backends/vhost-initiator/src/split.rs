//! The driver side of a split virtqueue (virtio 1.2, 2.7): descriptor table, avail ring and
//! used ring in shared memory, a free list of descriptors, and a raw interface for writing
//! anything at all into the ring (hostile-driver tests).
//!
//! Hand-written: rust-vmm's virtio-queue implements the device side; its driver side is a
//! test mock, not meant for a benchmark's hot path.

use super::memory::SharedMemory;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use vmm_sys_util::eventfd::EventFd;

/// Descriptor flags.
pub mod flags {
    /// The chain continues at `next`.
    pub const NEXT: u16 = 1;
    /// Device-writable buffer.
    pub const WRITE: u16 = 2;
    /// The buffer is a table of descriptors.
    pub const INDIRECT: u16 = 4;
}

const USED_F_NO_NOTIFY: u16 = 1;

/// One split virtqueue, driver side.
pub struct SplitQueue {
    mem: Arc<SharedMemory>,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    free: Vec<u16>,
    avail_idx: u16,
    last_used: u16,
    kick: EventFd,
    call: EventFd,
}

impl SplitQueue {
    /// Lays out a queue of `size` in `mem`.
    pub fn new(mem: Arc<SharedMemory>, size: u16) -> Option<SplitQueue> {
        let n = size as usize;
        let desc = mem.alloc(16 * n, 4096)?;
        let avail = mem.alloc(6 + 2 * n, 4096)?;
        let used = mem.alloc(6 + 8 * n, 4096)?;
        let kick = EventFd::new(libc::EFD_NONBLOCK).ok()?;
        let call = EventFd::new(libc::EFD_NONBLOCK).ok()?;
        Some(SplitQueue {
            mem,
            size,
            desc,
            avail,
            used,
            free: (0..size).rev().collect(),
            avail_idx: 0,
            last_used: 0,
            kick,
            call,
        })
    }

    /// Ring size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Guest addresses of the descriptor table, avail ring and used ring.
    pub fn addresses(&self) -> (u64, u64, u64) {
        (self.desc, self.avail, self.used)
    }

    /// The kick eventfd (given to the backend with SET_VRING_KICK).
    pub fn kick_fd(&self) -> &EventFd {
        &self.kick
    }

    /// The call eventfd (SET_VRING_CALL).
    pub fn call_fd(&self) -> &EventFd {
        &self.call
    }

    /// Free descriptors.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Takes `n` free descriptors, or none if fewer are free.
    pub fn alloc_descriptors(&mut self, n: usize) -> Option<Vec<u16>> {
        (self.free.len() >= n).then(|| self.free.split_off(self.free.len() - n))
    }

    /// Returns descriptors to the free list.
    pub fn free_descriptors_of(&mut self, head: u16) {
        let mut i = head;
        for _ in 0..self.size {
            let flags = self.mem.load_u16(self.desc + 16 * i as u64 + 12);
            let next = self.mem.load_u16(self.desc + 16 * i as u64 + 14);
            self.free.push(i);
            if flags & flags::NEXT == 0 {
                break;
            }
            i = next;
        }
    }

    /// Writes descriptor `i` of the table (any values at all).
    pub fn write_descriptor(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.write_descriptor_at(self.desc, i, addr, len, flags, next);
    }

    /// Writes descriptor `i` of the table at `table` (an indirect table in shared memory).
    pub fn write_descriptor_at(&self, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write(table + 16 * i as u64, &d);
    }

    /// Puts `head` in the next avail slot and publishes the new avail index.
    pub fn publish(&mut self, head: u16) {
        self.mem.store_u16(self.avail + 4 + 2 * (self.avail_idx % self.size) as u64, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        fence(Ordering::Release);
        self.mem.store_u16(self.avail + 2, self.avail_idx);
    }

    /// Sets the avail index to anything (hostile tests: jumps, rewinds).
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = idx;
        fence(Ordering::Release);
        self.mem.store_u16(self.avail + 2, idx);
    }

    /// Notifies the device unless it asked not to be (it is polling).
    pub fn kick(&self) {
        fence(Ordering::SeqCst);
        if self.mem.load_u16(self.used) & USED_F_NO_NOTIFY == 0 {
            let _ = self.kick.write(1);
        }
    }

    /// Notifies the device unconditionally.
    pub fn kick_always(&self) {
        let _ = self.kick.write(1);
    }

    /// The device's used index.
    pub fn used_idx(&self) -> u16 {
        self.mem.load_u16(self.used + 2)
    }

    /// Takes the next used entry, if any: (head, bytes written).
    pub fn pop_used(&mut self) -> Option<(u16, u32)> {
        if self.used_idx() == self.last_used {
            return None;
        }
        fence(Ordering::Acquire);
        let e = self.used + 4 + 8 * (self.last_used % self.size) as u64;
        let head = self.mem.load_u32(e) as u16;
        let len = self.mem.load_u32(e + 4);
        self.last_used = self.last_used.wrapping_add(1);
        Some((head, len))
    }

    /// Asks the device for no interrupts (VRING_AVAIL_F_NO_INTERRUPT), for a driver that only
    /// polls its used ring (as SPDK's virtio-user driver does when it polls).
    pub fn disable_interrupts(&self) {
        self.mem.store_u16(self.avail, 1);
    }

    /// Waits on the call eventfd for up to `timeout_ms`.
    pub fn wait(&self, timeout_ms: i32) {
        let mut pfd =
            libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&self.call), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        let _ = self.call.read();
    }
}
