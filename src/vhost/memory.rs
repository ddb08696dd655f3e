//! A guest's memory as the vhost-user frontend shares it: regions of fds (hugetlbfs or
//! memfd) mapped once per table, with guest-physical to host translation for the data path.
//!
//! Every translation is bounds-checked: an address or length the guest made up (outside every
//! region, wrapping past 2^64, straddling a hole) is refused, never dereferenced.

use super::fault_guard::{self, Poison, Registration};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use thiserror::Error;
use vhost::vhost_user::message::VhostUserMemoryRegion;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend as _, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap, MmapRegion,
};

/// Why a memory table could not be mapped.
#[derive(Debug, Error)]
pub enum MemoryError {
    /// The frontend sent a different number of regions and fds.
    #[error("memory table has {regions} regions but {fds} fds")]
    FdCount {
        /// Regions in the message.
        regions: usize,
        /// Fds that came with it.
        fds: usize,
    },
    /// mmap of a region failed.
    #[error("mapping region at guest address {gpa:#x} ({size} bytes): {reason}")]
    Map {
        /// The region's guest-physical address.
        gpa: u64,
        /// Its size.
        size: u64,
        /// What failed.
        reason: String,
    },
    /// Regions overlap or are otherwise invalid.
    #[error("invalid memory table: {0}")]
    Invalid(String),
    /// The fd behind a region is not one we can map safely.
    #[error("memory region at guest address {gpa:#x}: {source}")]
    File {
        /// The region's guest-physical address.
        gpa: u64,
        /// What is wrong with the file.
        source: SharedFileError,
    },
    /// The fault guard's table is full.
    #[error(transparent)]
    TooManyRegions(#[from] fault_guard::TableFull),
}

/// Why a file a frontend shared (memory region, inflight area) is refused.
#[derive(Debug, Error)]
pub enum SharedFileError {
    /// fstat or fcntl failed.
    #[error("cannot inspect the file: {0}")]
    Inspect(std::io::Error),
    /// Not a regular file (a socket, a device, a pipe ...).
    #[error("not a regular file (mode {mode:#o})")]
    NotRegular {
        /// st_mode.
        mode: u32,
    },
    /// offset + length runs past the end of the file (touching it would raise SIGBUS).
    #[error("offset {offset:#x} + length {len:#x} exceeds the file's size {file_size:#x}")]
    TooSmall {
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
        /// The file's size.
        file_size: u64,
    },
    /// A memfd that could be shrunk under our mapping.
    #[error("memfd is not sealed against shrinking (F_SEAL_SHRINK); seal it (QEMU: memory-backend-memfd,seal=on)")]
    UnsealedMemfd,
    /// A file that must be sealed against shrinking is not (or cannot be: F_GET_SEALS -1).
    #[error("file is not sealed against shrinking (F_SEAL_SHRINK; seals {seals:#x})")]
    Unsealed {
        /// F_GET_SEALS, or -1 when the file cannot be sealed at all.
        seals: i32,
    },
}

/// When a shared file must carry the shrink seal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealPolicy {
    /// Memfds must (they can be sealed, and QEMU seals its guest memory); other files
    /// cannot be sealed and are covered by the fault guard instead.
    IfMemfd,
    /// Always (the inflight area: only ever our own sealed memfd, handed back).
    Required,
}

/// Checks that `len` bytes at `offset` of a frontend's file can be mapped without a SIGBUS
/// at the time of the check: a regular file at least that long, and (as `seal` says) sealed
/// against shrinking so it stays that long. Files that cannot be sealed (hugetlbfs, tmpfs,
/// plain files) can still be truncated later: [`fault_guard`] covers guest memory in those.
pub fn check_shared_file(file: &File, offset: u64, len: u64, seal: SealPolicy) -> Result<(), SharedFileError> {
    let meta = file.metadata().map_err(SharedFileError::Inspect)?;
    use std::os::unix::fs::MetadataExt;
    if !meta.file_type().is_file() {
        return Err(SharedFileError::NotRegular { mode: meta.mode() });
    }
    let end = offset.checked_add(len);
    if end.is_none_or(|end| end > meta.size()) {
        return Err(SharedFileError::TooSmall { offset, len, file_size: meta.size() });
    }
    let memfd = is_memfd(file);
    if seal == SealPolicy::Required || memfd {
        // SAFETY: F_GET_SEALS takes no argument and only reads the fd's seals; it fails with
        // EINVAL on files that cannot be sealed.
        let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(if memfd && seal == SealPolicy::IfMemfd {
                SharedFileError::UnsealedMemfd
            } else {
                SharedFileError::Unsealed { seals }
            });
        }
    }
    Ok(())
}

/// Whether `file` is a memfd (its name in /proc is `/memfd:NAME (deleted)`).
fn is_memfd(file: &File) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .is_ok_and(|p| p.as_os_str().as_encoded_bytes().starts_with(b"/memfd:"))
}

/// A guest address range that is not inside the shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("guest range {gpa:#x}+{len:#x} is outside guest memory")]
pub struct BadAddress {
    /// Start of the range.
    pub gpa: u64,
    /// Its length.
    pub len: u64,
}

/// One region as the frontend described it.
#[derive(Debug, Clone, Copy)]
pub struct RegionInfo {
    /// Guest-physical start.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// The frontend's own virtual address of the start (vring addresses use these).
    pub user_addr: u64,
}

/// A mapped memory table.
pub struct GuestMemory {
    /// Declared before `mmap` so the fault guard forgets the ranges before they are unmapped.
    guard: Registration,
    mmap: GuestMemoryMmap,
    regions: Vec<RegionInfo>,
    /// The regions as (guest start, guest end, host start), sorted by guest start: the data
    /// path's translation table (a short scan, no trait calls; vm-memory's lookup showed up
    /// in profiles of the request path).
    spans: Vec<Span>,
}

#[derive(Debug, Clone, Copy)]
struct Span {
    start: u64,
    end: u64,
    /// Host address of `start` (an address, so the table is plainly Send and Sync; the
    /// mapping it points into is owned by `mmap`).
    host: usize,
}

impl GuestMemory {
    /// Maps the regions of a SET_MEM_TABLE (or the accumulated ADD_MEM_REG regions).
    pub fn map(regions: &[(RegionInfo, u64, File)]) -> Result<GuestMemory, MemoryError> {
        let mut mapped = Vec::with_capacity(regions.len());
        let mut infos = Vec::with_capacity(regions.len());
        for (info, mmap_offset, file) in regions {
            let fail = |reason: String| MemoryError::Map { gpa: info.gpa, size: info.size, reason };
            if info.size == 0 || info.gpa.checked_add(info.size).is_none() {
                return Err(fail("empty or wrapping region".into()));
            }
            check_shared_file(file, *mmap_offset, info.size, SealPolicy::IfMemfd)
                .map_err(|source| MemoryError::File { gpa: info.gpa, source })?;
            let file = file.try_clone().map_err(|e| fail(e.to_string()))?;
            let region = MmapRegion::from_file(FileOffset::new(file, *mmap_offset), info.size as usize)
                .map_err(|e| fail(e.to_string()))?;
            let region = GuestRegionMmap::new(region, GuestAddress(info.gpa))
                .ok_or_else(|| fail("region does not fit the guest address space".into()))?;
            mapped.push(region);
            infos.push(*info);
        }
        // vm-memory wants regions in address order; frontends send them in any order
        // (ADD_MEM_REG appends as memory is plugged).
        mapped.sort_by_key(|r| r.start_addr().0);
        let mmap = GuestMemoryMmap::from_regions(mapped).map_err(|e| MemoryError::Invalid(e.to_string()))?;
        // In address order, as the regions were sorted above.
        let mut spans = Vec::with_capacity(infos.len());
        for r in mmap.iter() {
            let host = r
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|e| MemoryError::Invalid(e.to_string()))?;
            let start = r.start_addr().0;
            spans.push(Span { start, end: start + r.len(), host: host as usize });
        }
        let ranges: Vec<(usize, usize)> = spans.iter().map(|s| (s.host, (s.end - s.start) as usize)).collect();
        let guard = fault_guard::register(&ranges)?;
        Ok(GuestMemory { guard, mmap, regions: infos, spans })
    }

    /// Set once the frontend truncated a file under one of the regions: the regions now read
    /// as zeros and the queues of this table must stop.
    pub fn poison(&self) -> &Arc<Poison> {
        self.guard.poison()
    }

    /// Builds the region list of a SET_MEM_TABLE message.
    pub fn from_message(regions: &[VhostUserMemoryRegion], files: Vec<File>) -> Result<GuestMemory, MemoryError> {
        if regions.len() != files.len() {
            return Err(MemoryError::FdCount { regions: regions.len(), fds: files.len() });
        }
        let list: Vec<(RegionInfo, u64, File)> = regions
            .iter()
            .zip(files)
            .map(|(r, f)| {
                (RegionInfo { gpa: r.guest_phys_addr, size: r.memory_size, user_addr: r.user_addr }, r.mmap_offset, f)
            })
            .collect();
        Self::map(&list)
    }

    /// The vm-memory view.
    pub fn mmap(&self) -> &GuestMemoryMmap {
        &self.mmap
    }

    /// The regions.
    pub fn regions(&self) -> &[RegionInfo] {
        &self.regions
    }

    /// The guest-physical address of the frontend's virtual address `va` (vring addresses).
    pub fn va_to_gpa(&self, va: u64) -> Option<u64> {
        self.regions.iter().find(|r| va >= r.user_addr && va - r.user_addr < r.size).map(|r| r.gpa + (va - r.user_addr))
    }

    /// Appends host iovecs covering guest range `gpa..gpa+len` to `out` (zero copy: they point
    /// into the mapping). A range crossing regions yields one iovec per region.
    pub fn iovecs(&self, gpa: u64, len: u64, out: &mut Vec<libc::iovec>) -> Result<(), BadAddress> {
        let bad = BadAddress { gpa, len };
        gpa.checked_add(len).ok_or(bad)?;
        let (mut at, mut left) = (gpa, len);
        while left > 0 {
            let span = self.span(at).ok_or(bad)?;
            let n = (span.end - at).min(left);
            out.push(libc::iovec {
                iov_base: (span.host + (at - span.start) as usize) as *mut libc::c_void,
                iov_len: n as usize,
            });
            at += n;
            left -= n;
        }
        Ok(())
    }

    /// The guest-physical address of host address `host` inside the mapping (dirty logging
    /// of buffers the bdev layer wrote through host iovecs).
    pub fn host_to_gpa(&self, host: usize) -> Option<u64> {
        self.spans
            .iter()
            .find(|s| host >= s.host && ((host - s.host) as u64) < s.end - s.start)
            .map(|s| s.start + (host - s.host) as u64)
    }

    /// The host address of `len` bytes at `gpa`, when they lie inside one region.
    #[inline]
    pub fn host_range(&self, gpa: u64, len: u64) -> Result<*mut u8, BadAddress> {
        let bad = BadAddress { gpa, len };
        let end = gpa.checked_add(len).ok_or(bad)?;
        let span = self.span(gpa).ok_or(bad)?;
        if end > span.end {
            return Err(bad);
        }
        Ok((span.host + (gpa - span.start) as usize) as *mut u8)
    }

    /// The region holding `gpa`.
    #[inline]
    fn span(&self, gpa: u64) -> Option<&Span> {
        // Guests have a handful of regions (more only with memory hotplug): scan the few,
        // search the many.
        if self.spans.len() <= 4 {
            return self.spans.iter().find(|s| gpa >= s.start && gpa < s.end);
        }
        let i = self.spans.partition_point(|s| s.start <= gpa).checked_sub(1)?;
        self.spans.get(i).filter(|s| gpa < s.end)
    }
}

/// Copies `out.len()` bytes of guest memory at `src` into `out`. The guest may be writing
/// those bytes at the same moment, so this copies them the way vm-memory's `VolatileSlice`
/// does (never a typed Rust read of memory another party writes); callers validate the
/// snapshot they get.
///
/// # Safety
/// `src..src + out.len()` must lie inside a live mapping of guest memory.
#[inline]
pub unsafe fn read_shared(src: *const u8, out: &mut [u8]) {
    if out.len() > 8 {
        // Exactly what `VolatileSlice::copy_to` does above 8 bytes, a `copy_nonoverlapping`
        // into our buffer, but here, where a constant size (a 16-byte descriptor or request
        // header, a 64-byte NVMe command) inlines into a few vector moves; through vm-memory
        // it was a call into libc's memcpy per descriptor (6-8% of the reactor's samples on a
        // no-data bdev at QD128).
        // SAFETY: the caller guarantees the source range is mapped for the call; `out` is
        // ours and cannot overlap guest memory.
        unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), out.len()) };
        return;
    }
    // SAFETY: the caller guarantees the range is mapped for the duration of the call.
    let slice = unsafe { vm_memory::VolatileSlice::new(src.cast_mut(), out.len()) };
    slice.copy_to(out);
}

/// Copies `data` into guest memory at `dst` (see [`read_shared`]).
///
/// # Safety
/// `dst..dst + data.len()` must lie inside a live, writable mapping of guest memory.
#[inline]
pub unsafe fn write_shared(dst: *mut u8, data: &[u8]) {
    if data.len() > 8 {
        // As in read_shared: vm-memory's own copy for this size, inlined (a 12-byte SCSI
        // response or NVMe completion is a few moves, not a call into memcpy).
        // SAFETY: the caller guarantees the destination range is mapped and writable; `data`
        // is ours and cannot overlap guest memory.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        return;
    }
    if let [byte] = data {
        // One byte (a virtio-blk status) is one store whatever the alignment: what vm-memory
        // does for it, without its out-of-line call.
        // SAFETY: the caller guarantees the byte is mapped and writable.
        unsafe { std::ptr::write_volatile(dst, *byte) };
        return;
    }
    // SAFETY: the caller guarantees the range is mapped and writable for the call.
    let slice = unsafe { vm_memory::VolatileSlice::new(dst, data.len()) };
    slice.copy_from(data);
}

#[cfg(test)]
impl GuestMemory {
    /// `size` bytes of file-backed memory as one region at guest address 0, for tests.
    pub(crate) fn for_tests(size: u64) -> GuestMemory {
        Self::for_tests_regions(&[(0, size)])
    }

    /// File-backed regions `(gpa, size)`, each a mapping of its own, for tests.
    pub(crate) fn for_tests_regions(regions: &[(u64, u64)]) -> GuestMemory {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let mapped: Vec<_> = regions
            .iter()
            .map(|&(gpa, size)| {
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let path = std::env::temp_dir().join(format!("ferry-guestmem-{}-{n}", std::process::id()));
                let f =
                    std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
                std::fs::remove_file(&path).unwrap();
                f.set_len(size).unwrap();
                (RegionInfo { gpa, size, user_addr: gpa }, 0, f)
            })
            .collect();
        GuestMemory::map(&mapped).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn memfd(size: u64) -> File {
        let path = std::env::temp_dir().join(format!("ferry-mem-{}-{size}", std::process::id()));
        let mut f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f.set_len(size).unwrap();
        f.write_all(b"hello").unwrap();
        f
    }

    #[test]
    fn translation_is_bounded_and_splits_across_regions() {
        let a = (RegionInfo { gpa: 0, size: 1 << 20, user_addr: 0x7000_0000 }, 0, memfd(1 << 20));
        let b = (RegionInfo { gpa: 1 << 20, size: 1 << 20, user_addr: 0x9000_0000 }, 0, memfd(1 << 20));
        let mem = GuestMemory::map(&[a, b]).unwrap();
        let mut v = Vec::new();
        mem.iovecs(0, 5, &mut v).unwrap();
        // SAFETY: the iovec points at 5 mapped bytes we wrote through the file.
        assert_eq!(unsafe { std::slice::from_raw_parts(v[0].iov_base as *const u8, 5) }, b"hello");
        v.clear();
        mem.iovecs((1 << 20) - 100, 200, &mut v).unwrap();
        assert_eq!(v.iter().map(|i| i.iov_len).collect::<Vec<_>>(), [100, 100]);
        assert!(mem.iovecs(2 << 20, 1, &mut v).is_err(), "past the end");
        assert!(mem.iovecs((2 << 20) - 1, 2, &mut v).is_err(), "running off the end");
        assert!(mem.iovecs(u64::MAX - 1, 4, &mut v).is_err(), "wrapping");
        assert!(mem.host_range((1 << 20) - 1, 2).is_err(), "straddles regions");
        assert!(mem.host_range(16, 16).is_ok());
        assert_eq!(mem.va_to_gpa(0x9000_0010), Some((1 << 20) + 16));
        assert_eq!(mem.va_to_gpa(0x9010_0000), None);
    }

    #[test]
    fn many_regions_with_holes_are_searched_exactly() {
        // Six 64 KiB regions with 64 KiB holes between them, given out of order.
        let mut regions: Vec<(RegionInfo, u64, File)> = (0..6u64)
            .rev()
            .map(|i| {
                (
                    RegionInfo { gpa: i * 0x20000, size: 0x10000, user_addr: 0x1000_0000 + i * 0x20000 },
                    0,
                    memfd(0x10000),
                )
            })
            .collect();
        regions.swap(1, 4);
        let mem = GuestMemory::map(&regions).unwrap();
        for i in 0..6u64 {
            let base = i * 0x20000;
            assert!(mem.host_range(base, 0x10000).is_ok(), "region {i} whole");
            assert!(mem.host_range(base + 0xFFFF, 1).is_ok(), "last byte of region {i}");
            assert!(mem.host_range(base + 0x10000, 1).is_err(), "hole after region {i}");
            assert!(mem.host_range(base + 0xFFFF, 2).is_err(), "running into the hole after region {i}");
        }
        // Distinct regions map to distinct host memory: a byte written through one translation
        // reads back only through the same one.
        let a = mem.host_range(0x20000, 1).unwrap();
        let b = mem.host_range(0x40000, 1).unwrap();
        assert_ne!(a, b);
        let mut v = Vec::new();
        assert!(mem.iovecs(0x5FFF0, 0x20, &mut v).is_err(), "iovecs across a hole");
        assert!(mem.iovecs(u64::MAX, 1, &mut v).is_err());
        assert!(mem.host_range(0xC0000, 1).is_err(), "past the last region");
    }
}
