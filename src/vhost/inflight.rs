//! Inflight I/O tracking (vhost-user's INFLIGHT_SHMFD), so `ferryd` can be killed and
//! restarted under a running guest: the frontend keeps this shared memory across our
//! restarts, and the new process resubmits what was in flight, oldest first.
//!
//! The area holds one region per queue, each 64-byte aligned, laid out as vhost-user.rst
//! ("Inflight I/O tracking") describes for the ring format the queues use:
//!
//! - split: `features u64, version u16, desc_num u16, last_batch_head u16, used_idx u16`, then
//!   `desc_num` entries of `inflight u8, padding [u8; 5], next u16, counter u64` (tracked here);
//! - packed: a 32-byte header and 32-byte `DescStatePacked` entries (`inflight_packed.rs`).
//!
//! The frontend hands the area back on every start (SET_INFLIGHT_FD) and is not trusted: the
//! file must be a memfd sealed against shrinking (or our mapping could SIGBUS), large enough
//! for what it announces, and each queue's header must be valid before anything in it is
//! resubmitted. At run time the trackers keep their own state and only write the area, so a
//! frontend scribbling over it can confuse only its own recovery.

use super::inflight_packed::PackedTracking;
use super::memory::{check_shared_file, SealPolicy, SharedFileError};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use thiserror::Error;

const ALIGN: usize = 64;
/// The version field's value for an initialised region; 0 means "not initialised yet".
pub(crate) const VERSION: u16 = 1;
/// Header offsets shared by both formats.
pub(crate) const H_VERSION: usize = 8;
pub(crate) const H_DESC_NUM: usize = 10;
/// Largest area accepted from a frontend (1 GiB; 1024 queues of 32768 packed entries fit).
const MAX_AREA: u64 = 1 << 30;
/// Most queues an area may describe.
const MAX_QUEUES: u16 = 1024;
/// Largest ring size (packed rings index with 15 bits; split rings are at most 32768 too).
const MAX_QUEUE_SIZE: u16 = 1 << 15;

/// Split-format header and entry sizes and offsets.
const SPLIT_HEADER: usize = 16;
const SPLIT_ENTRY: usize = 16;
const S_LAST_BATCH_HEAD: usize = 12;
const S_USED_IDX: usize = 14;
const S_NEXT: usize = 6;
const S_COUNTER: usize = 8;

/// Why an inflight area or one of its queue regions was refused.
#[derive(Debug, Error)]
pub enum InflightError {
    /// Sizes or counts out of range.
    #[error("inflight area: {0}")]
    Invalid(String),
    /// fstat, mmap, memfd_create or fcntl failed.
    #[error("inflight area: {what}: {source}")]
    Os {
        /// The call that failed.
        what: &'static str,
        /// Its error.
        source: std::io::Error,
    },
    /// The fd is not a file we can map and keep mapped.
    #[error("inflight fd: {0}")]
    File(#[from] SharedFileError),
    /// The area is too small for its queues.
    #[error("inflight area of {len} bytes is too small for {num_queues} {format} queues of size {queue_size} ({need} bytes)")]
    TooSmall {
        /// mmap_size.
        len: u64,
        /// Bytes needed.
        need: u64,
        /// Queues.
        num_queues: u16,
        /// Ring size.
        queue_size: u16,
        /// Ring format.
        format: RingFormat,
    },
    /// A queue's region does not match its queue or holds an out-of-range index.
    #[error("inflight region of queue {queue}: {what}")]
    BadRegion {
        /// Queue index.
        queue: u16,
        /// What is wrong.
        what: String,
    },
}

/// Which ring format (and so which region layout) the area's queues use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingFormat {
    /// Split virtqueues.
    Split,
    /// Packed virtqueues.
    Packed,
}

impl std::fmt::Display for RingFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RingFormat::Split => "split",
            RingFormat::Packed => "packed",
        })
    }
}

/// Bytes one queue's region takes.
pub fn queue_region_size(format: RingFormat, queue_size: u16) -> usize {
    let (header, entry) = match format {
        RingFormat::Split => (SPLIT_HEADER, SPLIT_ENTRY),
        RingFormat::Packed => (super::inflight_packed::HEADER, super::inflight_packed::ENTRY),
    };
    (header + entry * queue_size as usize).next_multiple_of(ALIGN)
}

fn os(what: &'static str) -> impl FnOnce(std::io::Error) -> InflightError {
    move |source| InflightError::Os { what, source }
}

/// Checks that `len` bytes at `offset` of `file` can be mapped and stay mapped: a regular
/// file (memfds are), the range inside it, and a shrink seal so it cannot be truncated later
/// (the area is only ever our own sealed memfd, handed back).
pub fn check_file(file: &File, offset: u64, len: u64) -> Result<(), InflightError> {
    Ok(check_shared_file(file, offset, len, SealPolicy::Required)?)
}

/// The shared inflight memory of one session.
pub struct InflightArea {
    base: *mut u8,
    len: usize,
    queue_size: u16,
    num_queues: u16,
    format: RingFormat,
    file: File,
    /// Requests resubmitted from this area (all queues, all starts).
    resubmitted: AtomicU64,
}

// SAFETY: the mapping is shared memory accessed only through volatile operations at checked
// offsets; each queue's part is written by the one reactor serving that queue.
unsafe impl Send for InflightArea {}
// SAFETY: see Send.
unsafe impl Sync for InflightArea {}

impl std::fmt::Debug for InflightArea {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InflightArea")
            .field("len", &self.len)
            .field("num_queues", &self.num_queues)
            .field("queue_size", &self.queue_size)
            .field("format", &self.format)
            .finish()
    }
}

fn check_counts(num_queues: u16, queue_size: u16) -> Result<(), InflightError> {
    if num_queues == 0 || num_queues > MAX_QUEUES {
        return Err(InflightError::Invalid(format!("{num_queues} queues (1 to {MAX_QUEUES} accepted)")));
    }
    if queue_size == 0 || queue_size > MAX_QUEUE_SIZE {
        return Err(InflightError::Invalid(format!("queue size {queue_size} (1 to {MAX_QUEUE_SIZE} accepted)")));
    }
    Ok(())
}

impl InflightArea {
    /// A fresh, zeroed area (every region "not initialised") for `num_queues` queues of
    /// `queue_size` in `format` (GET_INFLIGHT_FD). Its memfd is sealed against resizing, as
    /// we require of any area handed back to us.
    pub fn create(format: RingFormat, num_queues: u16, queue_size: u16) -> Result<InflightArea, InflightError> {
        check_counts(num_queues, queue_size)?;
        let len = queue_region_size(format, queue_size) * num_queues as usize;
        // SAFETY: memfd_create with a static NUL-terminated name and no pointers kept.
        let fd = unsafe { libc::memfd_create(c"ferry-inflight".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
        if fd < 0 {
            return Err(os("memfd_create")(std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a new memfd we own.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(len as u64).map_err(os("ftruncate"))?;
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: F_ADD_SEALS takes an integer argument.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(os("F_ADD_SEALS")(std::io::Error::last_os_error()));
        }
        Self::map(file, 0, len, format, num_queues, queue_size)
    }

    /// Maps an area the frontend hands back (SET_INFLIGHT_FD) after checking the file, the
    /// sizes, and every queue region's header.
    pub fn open(
        file: File,
        offset: u64,
        len: u64,
        format: RingFormat,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<InflightArea, InflightError> {
        check_counts(num_queues, queue_size)?;
        let need = queue_region_size(format, queue_size) as u64 * num_queues as u64;
        if len < need {
            return Err(InflightError::TooSmall { len, need, num_queues, queue_size, format });
        }
        if len > MAX_AREA {
            return Err(InflightError::Invalid(format!("mmap_size {len} is larger than {MAX_AREA}")));
        }
        // SAFETY: sysconf has no memory effects.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
        if !offset.is_multiple_of(page) {
            return Err(InflightError::Invalid(format!("mmap_offset {offset} is not page-aligned")));
        }
        check_file(&file, offset, len)?;
        let area = Self::map(file, offset, len as usize, format, num_queues, queue_size)?;
        for q in 0..num_queues {
            area.check_header(q)?;
        }
        Ok(area)
    }

    fn map(
        file: File,
        offset: u64,
        len: usize,
        format: RingFormat,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<InflightArea, InflightError> {
        let off = libc::off_t::try_from(offset).map_err(|_| InflightError::Invalid(format!("offset {offset}")))?;
        // SAFETY: a fresh shared mapping of our fd; the kernel checks offset and length, and
        // the caller checked the file covers them and cannot shrink.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                off,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(os("mmap")(std::io::Error::last_os_error()));
        }
        Ok(InflightArea {
            base: base.cast(),
            len,
            queue_size,
            num_queues,
            format,
            file,
            resubmitted: AtomicU64::new(0),
        })
    }

    /// Checks the header fields both formats share: an uninitialised region (version 0), or
    /// version 1 made for this queue size. Format-specific indices are checked at recovery.
    fn check_header(&self, q: u16) -> Result<(), InflightError> {
        let v = self.queue(q);
        let version = v.read_u16(H_VERSION);
        let desc_num = v.read_u16(H_DESC_NUM);
        let bad = |what: String| Err(InflightError::BadRegion { queue: q, what });
        match version {
            0 => Ok(()),
            VERSION if desc_num == self.queue_size => Ok(()),
            VERSION => bad(format!("desc_num {desc_num} differs from the queue size {}", self.queue_size)),
            other => bad(format!("version {other} (expected {VERSION}, or 0 for a fresh region)")),
        }
    }

    /// The fd (to send to the frontend).
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

    /// The ring format the area's regions are laid out for.
    pub fn format(&self) -> RingFormat {
        self.format
    }

    /// Requests resubmitted from this area so far.
    pub fn resubmitted(&self) -> u64 {
        self.resubmitted.load(Ordering::Relaxed)
    }

    pub(crate) fn count_resubmitted(&self, n: usize) {
        self.resubmitted.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Requests marked in flight now, over all queues (read racily from another thread: an
    /// observation for management, not a synchronised count).
    pub fn inflight_now(&self) -> usize {
        let (header, entry) = match self.format {
            RingFormat::Split => (SPLIT_HEADER, SPLIT_ENTRY),
            RingFormat::Packed => (super::inflight_packed::HEADER, super::inflight_packed::ENTRY),
        };
        (0..self.num_queues)
            .map(|q| {
                let v = self.queue(q);
                (0..self.queue_size as usize).filter(|i| v.read_u8(header + entry * i) == 1).count()
            })
            .sum()
    }

    pub(crate) fn queue(&self, q: u16) -> QueueView<'_> {
        assert!(q < self.num_queues);
        let region = queue_region_size(self.format, self.queue_size);
        // SAFETY: q < num_queues and the mapping holds num_queues regions (checked at open).
        QueueView { base: unsafe { self.base.add(region * q as usize) }, len: region, _area: std::marker::PhantomData }
    }
}

impl Drop for InflightArea {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `map`.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// Raw volatile access to one queue's region. Offsets come from our own layout constants and
/// indices below the queue size; every access is bounds-checked against the region anyway.
pub(crate) struct QueueView<'a> {
    base: *mut u8,
    len: usize,
    _area: std::marker::PhantomData<&'a InflightArea>,
}

macro_rules! accessors {
    ($($read:ident $write:ident $t:ty),*) => {$(
        pub(crate) fn $read(&self, off: usize) -> $t {
            assert!(off + std::mem::size_of::<$t>() <= self.len && off % std::mem::size_of::<$t>() == 0);
            // SAFETY: inside this queue's region of the mapping (checked above), aligned
            // (regions are 64-byte aligned in a page-aligned mapping).
            unsafe { self.base.add(off).cast::<$t>().read_volatile() }
        }
        pub(crate) fn $write(&self, off: usize, v: $t) {
            assert!(off + std::mem::size_of::<$t>() <= self.len && off % std::mem::size_of::<$t>() == 0);
            // SAFETY: as in the read accessor.
            unsafe { self.base.add(off).cast::<$t>().write_volatile(v) }
        }
    )*};
}

impl QueueView<'_> {
    accessors!(read_u8 write_u8 u8, read_u16 write_u16 u16, read_u32 write_u32 u32, read_u64 write_u64 u64);

    /// Zeroes the whole region.
    pub(crate) fn clear(&self) {
        for off in (0..self.len).step_by(8) {
            self.write_u64(off, 0);
        }
    }
}

/// One queue's inflight tracking, in the format its ring uses.
pub enum InflightQueue {
    /// A split ring's.
    Split(SplitTracking),
    /// A packed ring's.
    Packed(PackedTracking),
}

impl InflightQueue {
    /// Tracking for queue `queue` (ring size `ring_size`, packed or not) in `area`; refused if
    /// the area does not cover the queue or was made for another ring size or format.
    pub fn new(area: Arc<InflightArea>, queue: u16, ring_size: u16, packed: bool) -> Result<Self, InflightError> {
        let want = if packed { RingFormat::Packed } else { RingFormat::Split };
        if queue >= area.num_queues {
            return Err(InflightError::Invalid(format!("queue {queue} is past the area's {} queues", area.num_queues)));
        }
        if area.queue_size != ring_size {
            return Err(InflightError::Invalid(format!(
                "the area was made for rings of {} entries, queue {queue} has {ring_size}",
                area.queue_size
            )));
        }
        if area.format != want {
            return Err(InflightError::Invalid(format!(
                "the area is laid out for {} rings, queue {queue} is {want}",
                area.format
            )));
        }
        Ok(match want {
            RingFormat::Split => InflightQueue::Split(SplitTracking { area, queue, counter: 0 }),
            RingFormat::Packed => InflightQueue::Packed(PackedTracking::new(area, queue)),
        })
    }
}

/// A split ring's tracking, used by the reactor serving that queue.
pub struct SplitTracking {
    area: Arc<InflightArea>,
    queue: u16,
    counter: u64,
}

impl SplitTracking {
    fn view(&self) -> QueueView<'_> {
        self.area.queue(self.queue)
    }

    fn entry(&self, head: u16) -> usize {
        SPLIT_HEADER + SPLIT_ENTRY * (head % self.area.queue_size) as usize
    }

    /// Initialises the region for a ring whose used index is `used_idx`, nothing in flight.
    pub fn reset(&mut self, used_idx: u16) {
        let v = self.view();
        v.clear();
        v.write_u16(H_DESC_NUM, self.area.queue_size);
        v.write_u16(S_USED_IDX, used_idx);
        std::sync::atomic::fence(Ordering::Release);
        v.write_u16(H_VERSION, VERSION);
        self.counter = 0;
    }

    /// Recovers after a restart given the guest's used index: repairs the last batch and
    /// returns the heads still in flight, oldest first (to resubmit). A fresh region is
    /// initialised (nothing to resubmit); a region whose header is wrong is an error, and the
    /// caller resets it.
    pub fn recover(&mut self, used_idx: u16) -> Result<Vec<u16>, InflightError> {
        let size = self.area.queue_size;
        let queue = self.queue;
        let bad = |what: String| InflightError::BadRegion { queue, what };
        let v = self.view();
        let (version, desc_num) = (v.read_u16(H_VERSION), v.read_u16(H_DESC_NUM));
        if version == 0 {
            self.reset(used_idx);
            return Ok(Vec::new());
        }
        if version != VERSION || desc_num != size {
            return Err(bad(format!("version {version}, desc_num {desc_num} (expected {VERSION}, {size})")));
        }
        let batch_head = v.read_u16(S_LAST_BATCH_HEAD);
        if batch_head >= size {
            return Err(bad(format!("last_batch_head {batch_head} is past the ring ({size})")));
        }
        let recorded = v.read_u16(S_USED_IDX);
        let batch = used_idx.wrapping_sub(recorded);
        if batch > size {
            return Err(bad(format!("used_idx {recorded} is {batch} entries behind the used ring's {used_idx}")));
        }
        if batch != 0 {
            // Crashed between publishing used entries and clearing their flags.
            let mut head = batch_head;
            for _ in 0..batch {
                let e = self.entry(head);
                v.write_u8(e, 0);
                head = v.read_u16(e + S_NEXT);
            }
            v.write_u16(S_USED_IDX, used_idx);
        }
        let mut pending: Vec<(u64, u16)> = (0..size)
            .filter(|&h| v.read_u8(self.entry(h)) == 1)
            .map(|h| (v.read_u64(self.entry(h) + S_COUNTER), h))
            .collect();
        pending.sort_unstable();
        self.counter = pending.iter().map(|p| p.0).max().unwrap_or(0);
        self.area.count_resubmitted(pending.len());
        Ok(pending.into_iter().map(|p| p.1).collect())
    }

    /// Records that `head` was fetched from the avail ring.
    pub fn fetched(&mut self, head: u16) {
        self.counter += 1;
        let e = self.entry(head);
        let v = self.view();
        v.write_u64(e + S_COUNTER, self.counter);
        std::sync::atomic::fence(Ordering::Release);
        v.write_u8(e, 1);
    }

    /// Before publishing `head` in the used ring: link it into the last batch.
    pub fn before_used(&mut self, head: u16) {
        let e = self.entry(head);
        let v = self.view();
        // The link is only ever followed modulo the ring size, so a value the frontend
        // wrote there cannot take us out of the region.
        v.write_u16(e + S_NEXT, v.read_u16(S_LAST_BATCH_HEAD));
        v.write_u16(S_LAST_BATCH_HEAD, head % self.area.queue_size);
        std::sync::atomic::fence(Ordering::Release);
    }

    /// After the used ring's index was published as `used_idx`: clear `head`, record the index.
    pub fn after_used(&mut self, head: u16, used_idx: u16) {
        let e = self.entry(head);
        let v = self.view();
        std::sync::atomic::fence(Ordering::Release);
        v.write_u8(e, 0);
        v.write_u16(S_USED_IDX, used_idx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed_memfd(len: u64, seals: i32) -> File {
        // SAFETY: memfd_create with a static name.
        let fd = unsafe { libc::memfd_create(c"t".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
        assert!(fd >= 0);
        // SAFETY: a new fd we own.
        let f = unsafe { File::from_raw_fd(fd) };
        f.set_len(len).unwrap();
        if seals != 0 {
            // SAFETY: integer argument.
            assert_eq!(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, seals) }, 0);
        }
        f
    }

    fn split(area: &Arc<InflightArea>, q: u16) -> SplitTracking {
        match InflightQueue::new(area.clone(), q, area.queue_size, false).unwrap() {
            InflightQueue::Split(s) => s,
            InflightQueue::Packed(_) => unreachable!(),
        }
    }

    #[test]
    fn tracks_and_recovers_in_counter_order() {
        let area = Arc::new(InflightArea::create(RingFormat::Split, 2, 8).unwrap());
        assert_eq!(area.len(), 2 * 192);
        let mut q = split(&area, 1);
        assert!(q.recover(0).unwrap().is_empty(), "a fresh region is initialised");
        for head in [5, 2, 7] {
            q.fetched(head);
        }
        assert_eq!(area.inflight_now(), 3);
        // Head 2 completes fully; head 7 completes but we "crash" before clearing its flag.
        q.before_used(2);
        q.after_used(2, 1);
        q.before_used(7);
        // A new process maps the same memory.
        let reopened = Arc::new(
            InflightArea::open(area.file().try_clone().unwrap(), 0, area.len() as u64, RingFormat::Split, 2, 8)
                .unwrap(),
        );
        let mut q2 = split(&reopened, 1);
        // The guest's used ring says 2 entries were published: 7 is repaired, 5 is resubmitted.
        assert_eq!(q2.recover(2).unwrap(), vec![5]);
        assert_eq!(reopened.resubmitted(), 1);
        let mut q3 = split(&area, 0);
        assert!(q3.recover(0).unwrap().is_empty(), "queue 0 untouched");
        assert!(InflightQueue::new(area.clone(), 2, 8, false).is_err(), "past the area's queues");
        assert!(InflightQueue::new(area.clone(), 0, 16, false).is_err(), "another ring size");
        assert!(InflightQueue::new(area, 0, 8, true).is_err(), "a split area for a packed ring");
    }

    #[test]
    fn our_own_memfd_is_sealed_and_accepted_back() {
        let area = InflightArea::create(RingFormat::Packed, 2, 64).unwrap();
        // SAFETY: no pointer arguments.
        let seals = unsafe { libc::fcntl(area.file().as_raw_fd(), libc::F_GET_SEALS) };
        assert_eq!(seals & libc::F_SEAL_SHRINK, libc::F_SEAL_SHRINK);
        assert_eq!(seals & libc::F_SEAL_SEAL, libc::F_SEAL_SEAL);
        assert!(area.file().set_len(0).is_err(), "cannot be shrunk");
        let f = area.file().try_clone().unwrap();
        InflightArea::open(f, 0, area.len() as u64, RingFormat::Packed, 2, 64).unwrap();
    }

    #[test]
    fn hostile_files_are_refused_before_mapping() {
        let need = queue_region_size(RingFormat::Split, 8) as u64;
        let open = |f: File, off: u64, len: u64| InflightArea::open(f, off, len, RingFormat::Split, 1, 8);
        // An empty memfd announced as 4096 bytes: mapping it would SIGBUS on first touch.
        let e = open(sealed_memfd(0, libc::F_SEAL_SHRINK), 0, 4096).unwrap_err();
        assert!(matches!(e, InflightError::File(SharedFileError::TooSmall { file_size: 0, .. })), "{e}");
        // Large enough but unsealed: the frontend could shrink it later.
        let e = open(sealed_memfd(4096, 0), 0, 4096).unwrap_err();
        assert!(matches!(e, InflightError::File(SharedFileError::Unsealed { .. })), "{e}");
        // Sealed, but the area starts past the end.
        let e = open(sealed_memfd(4096, libc::F_SEAL_SHRINK), 4096, 4096).unwrap_err();
        assert!(matches!(e, InflightError::File(SharedFileError::TooSmall { .. })), "{e}");
        // offset + size overflowing.
        let e = open(sealed_memfd(4096, libc::F_SEAL_SHRINK), u64::MAX - 4095, 4096).unwrap_err();
        assert!(matches!(e, InflightError::Invalid(_) | InflightError::File(SharedFileError::TooSmall { .. })), "{e}");
        let e = check_file(&sealed_memfd(4096, libc::F_SEAL_SHRINK), u64::MAX - 10, 4096).unwrap_err();
        assert!(matches!(e, InflightError::File(SharedFileError::TooSmall { .. })), "{e}");
        // A regular file that cannot be sealed at all.
        let tmp = std::env::temp_dir().join(format!("ferry-inflight-{}", std::process::id()));
        let f = File::options().read(true).write(true).create(true).truncate(true).open(&tmp).unwrap();
        f.set_len(4096).unwrap();
        std::fs::remove_file(&tmp).unwrap();
        let e = open(f, 0, 4096).unwrap_err();
        assert!(matches!(e, InflightError::File(SharedFileError::Unsealed { seals: -1 })), "{e}");
        // Not a regular file.
        let e = open(File::open("/dev/null").unwrap(), 0, 4096).unwrap_err();
        assert!(matches!(e, InflightError::File(SharedFileError::NotRegular { .. })), "{e}");
        // Announced smaller than its queues need.
        let e = open(sealed_memfd(4096, libc::F_SEAL_SHRINK), 0, need - 1).unwrap_err();
        assert!(matches!(e, InflightError::TooSmall { .. }), "{e}");
        // Counts out of range.
        let e = InflightArea::open(sealed_memfd(4096, libc::F_SEAL_SHRINK), 0, 4096, RingFormat::Split, 0, 8);
        assert!(matches!(e, Err(InflightError::Invalid(_))));
    }

    #[test]
    fn bad_headers_are_refused_and_nothing_is_resubmitted_from_them() {
        let area = InflightArea::create(RingFormat::Split, 1, 8).unwrap();
        let len = area.len() as u64;
        let reopen = || InflightArea::open(area.file().try_clone().unwrap(), 0, len, RingFormat::Split, 1, 8);
        let v = area.queue(0);
        v.write_u16(H_VERSION, 7);
        assert!(matches!(reopen(), Err(InflightError::BadRegion { .. })), "unknown version");
        v.write_u16(H_VERSION, VERSION);
        v.write_u16(H_DESC_NUM, 16);
        assert!(matches!(reopen(), Err(InflightError::BadRegion { .. })), "desc_num != queue size");
        v.write_u16(H_DESC_NUM, 8);
        let reopened = Arc::new(reopen().unwrap());
        // Indices checked at recovery (the header may change after open).
        let mut q = split(&reopened, 0);
        v.write_u8(SPLIT_HEADER, 1); // head 0 in flight
        v.write_u16(S_LAST_BATCH_HEAD, 8);
        assert!(matches!(q.recover(0), Err(InflightError::BadRegion { .. })), "last_batch_head past the ring");
        v.write_u16(S_LAST_BATCH_HEAD, 0);
        v.write_u16(S_USED_IDX, 100);
        assert!(matches!(q.recover(0), Err(InflightError::BadRegion { .. })), "used_idx far behind");
        v.write_u16(H_VERSION, 3);
        assert!(matches!(q.recover(0), Err(InflightError::BadRegion { .. })), "version changed after open");
        // Resetting makes the region usable again, with nothing in flight.
        q.reset(5);
        assert!(q.recover(5).unwrap().is_empty());
    }
}
