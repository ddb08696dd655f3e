//! Inflight I/O tracking (vhost-user's INFLIGHT_SHMFD, split-ring layout), so `ferryd` can be
//! killed and restarted under a running guest: the frontend keeps this shared memory across
//! our restarts, and the new process resubmits what was in flight, oldest first.
//!
//! Per queue (64-byte aligned): `features u64, version u16, desc_num u16, last_batch_head u16,
//! used_idx u16`, then `desc_num` entries of `inflight u8, padding [u8; 5], next u16,
//! counter u64`. The protocol (vhost-user.rst, "Inflight I/O tracking"): mark a head in
//! flight with an increasing counter when it is fetched; when it is used, link it into the
//! last batch, publish the used ring, clear its flag and record the used index. On restart,
//! repair the last batch if the crash hit between those steps and resubmit the rest.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;

const HEADER: usize = 16;
const ENTRY: usize = 16;
const ALIGN: usize = 64;

/// Bytes one queue's region takes.
pub fn queue_region_size(queue_size: u16) -> usize {
    (HEADER + ENTRY * queue_size as usize).next_multiple_of(ALIGN)
}

/// The shared inflight memory of one session.
pub struct InflightArea {
    base: *mut u8,
    len: usize,
    queue_size: u16,
    num_queues: u16,
    file: File,
}

// SAFETY: the mapping is shared memory accessed only through volatile operations at checked
// offsets; each queue's part is written by the one reactor serving that queue.
unsafe impl Send for InflightArea {}
// SAFETY: see Send.
unsafe impl Sync for InflightArea {}

impl InflightArea {
    /// A fresh, zeroed area for `num_queues` queues of `queue_size` (GET_INFLIGHT_FD).
    pub fn create(num_queues: u16, queue_size: u16) -> std::io::Result<InflightArea> {
        if num_queues == 0 || queue_size == 0 || num_queues > 1024 {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        let len = queue_region_size(queue_size) * num_queues as usize;
        // SAFETY: memfd_create with a static NUL-terminated name and no pointers kept.
        let fd = unsafe { libc::memfd_create(c"ferry-inflight".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a new memfd we own.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(len as u64)?;
        let area = Self::map(file, 0, len, num_queues, queue_size)?;
        for q in 0..num_queues {
            let r = area.queue(q);
            r.write_u16(8, 1); // version
            r.write_u16(10, queue_size);
        }
        Ok(area)
    }

    /// Maps an area the frontend hands back (SET_INFLIGHT_FD), checking it is large enough.
    pub fn open(file: File, offset: u64, len: u64, num_queues: u16, queue_size: u16) -> std::io::Result<InflightArea> {
        let need = queue_region_size(queue_size) as u64 * num_queues as u64;
        if num_queues == 0 || queue_size == 0 || len < need || len > 1 << 30 {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        Self::map(file, offset, len as usize, num_queues, queue_size)
    }

    fn map(file: File, offset: u64, len: usize, num_queues: u16, queue_size: u16) -> std::io::Result<InflightArea> {
        // SAFETY: a fresh shared mapping of our fd; the kernel checks offset and length.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(InflightArea { base: base.cast(), len, queue_size, num_queues, file })
    }

    /// The fd (to send to the frontend) and the mapped size.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Mapped size.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is mapped (never, once created).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queue size the area was made for.
    pub fn queue_size(&self) -> u16 {
        self.queue_size
    }

    /// Number of queues.
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    fn queue(&self, q: u16) -> QueueView<'_> {
        assert!(q < self.num_queues);
        let off = queue_region_size(self.queue_size) * q as usize;
        // SAFETY: q < num_queues, so the region lies inside the mapping (checked at open).
        QueueView { base: unsafe { self.base.add(off) }, size: self.queue_size, _area: std::marker::PhantomData }
    }
}

impl Drop for InflightArea {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `map`.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// Raw volatile access to one queue's region.
struct QueueView<'a> {
    base: *mut u8,
    size: u16,
    _area: std::marker::PhantomData<&'a InflightArea>,
}

impl QueueView<'_> {
    fn write_u16(&self, off: usize, v: u16) {
        debug_assert!(off + 2 <= HEADER + ENTRY * self.size as usize);
        // SAFETY: callers pass offsets inside this queue's region (header or a checked entry).
        unsafe { self.base.add(off).cast::<u16>().write_volatile(v) }
    }
    fn read_u16(&self, off: usize) -> u16 {
        // SAFETY: as in write_u16.
        unsafe { self.base.add(off).cast::<u16>().read_volatile() }
    }
    fn write_u8(&self, off: usize, v: u8) {
        // SAFETY: as in write_u16.
        unsafe { self.base.add(off).write_volatile(v) }
    }
    fn read_u8(&self, off: usize) -> u8 {
        // SAFETY: as in write_u16.
        unsafe { self.base.add(off).read_volatile() }
    }
    fn write_u64(&self, off: usize, v: u64) {
        // SAFETY: as in write_u16; entries are 8-byte aligned (16-byte entries after a 16-byte header).
        unsafe { self.base.add(off).cast::<u64>().write_volatile(v) }
    }
    fn read_u64(&self, off: usize) -> u64 {
        // SAFETY: as in write_u64.
        unsafe { self.base.add(off).cast::<u64>().read_volatile() }
    }
    fn entry(&self, head: u16) -> usize {
        HEADER + ENTRY * (head % self.size) as usize
    }
}

/// One queue's inflight tracking, used by the reactor serving that queue.
pub struct InflightQueue {
    area: Arc<InflightArea>,
    queue: u16,
    counter: u64,
}

impl InflightQueue {
    /// Tracking for queue `queue` of `area`; `None` if the area does not cover it or was made
    /// for another ring size.
    pub fn new(area: Arc<InflightArea>, queue: u16, ring_size: u16) -> Option<InflightQueue> {
        (queue < area.num_queues && area.queue_size == ring_size).then_some(InflightQueue { area, queue, counter: 0 })
    }

    fn view(&self) -> QueueView<'_> {
        self.area.queue(self.queue)
    }

    /// Recovers after a restart given the guest's used index: repairs the last batch, and
    /// returns the heads still in flight, oldest first (to resubmit).
    pub fn recover(&mut self, used_idx: u16) -> Vec<u16> {
        let v = self.view();
        let recorded = v.read_u16(14);
        if recorded != used_idx {
            // Crashed between publishing used entries and clearing their flags.
            let mut head = v.read_u16(12);
            for _ in 0..used_idx.wrapping_sub(recorded).min(v.size) {
                let e = v.entry(head);
                v.write_u8(e, 0);
                head = v.read_u16(e + 6);
            }
            v.write_u16(14, used_idx);
        }
        let mut pending: Vec<(u64, u16)> =
            (0..v.size).filter(|&h| v.read_u8(v.entry(h)) == 1).map(|h| (v.read_u64(v.entry(h) + 8), h)).collect();
        pending.sort_unstable();
        self.counter = pending.iter().map(|p| p.0).max().unwrap_or(0);
        pending.into_iter().map(|p| p.1).collect()
    }

    /// Records that `head` was fetched from the avail ring.
    pub fn fetched(&mut self, head: u16) {
        self.counter += 1;
        let v = self.view();
        let e = v.entry(head);
        v.write_u64(e + 8, self.counter);
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        v.write_u8(e, 1);
    }

    /// Before publishing `head` in the used ring: link it into the last batch.
    pub fn before_used(&mut self, head: u16) {
        let v = self.view();
        let e = v.entry(head);
        v.write_u16(e + 6, v.read_u16(12));
        v.write_u16(12, head);
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
    }

    /// After the used ring's index was published as `used_idx`: clear `head`, record the index.
    pub fn after_used(&mut self, head: u16, used_idx: u16) {
        let v = self.view();
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        v.write_u8(v.entry(head), 0);
        v.write_u16(14, used_idx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_and_recovers_in_counter_order() {
        let area = Arc::new(InflightArea::create(2, 8).unwrap());
        assert_eq!(area.len(), 2 * 192);
        let mut q = InflightQueue::new(area.clone(), 1, 8).unwrap();
        for head in [5, 2, 7] {
            q.fetched(head);
        }
        // Head 2 completes fully; head 7 completes but we "crash" before clearing its flag.
        q.before_used(2);
        q.after_used(2, 1);
        q.before_used(7);
        // A new process maps the same memory.
        let reopened =
            Arc::new(InflightArea::open(area.file().try_clone().unwrap(), 0, area.len() as u64, 2, 8).unwrap());
        let mut q2 = InflightQueue::new(reopened, 1, 8).unwrap();
        // The guest's used ring says 2 entries were published: 7 is repaired, 5 is resubmitted.
        assert_eq!(q2.recover(2), vec![5]);
        let mut q3 = InflightQueue::new(area.clone(), 0, 8).unwrap();
        assert!(q3.recover(0).is_empty(), "queue 0 untouched");
        assert!(InflightQueue::new(area, 2, 8).is_none());
    }
}
