//! Guest memory as a vfio-user client shares it: DMA_MAP regions, each checked (a regular
//! file large enough for offset + size, a memfd sealed against shrinking) and mapped once,
//! and translation tables built from them for the data path.
//!
//! A table ([`DmaTable`]) is an immutable snapshot: the queues of a device hold the one they
//! translate with, and each table keeps its regions mapped. A region the client unmaps
//! therefore stays mapped until the last table (and so the last I/O) using it is gone: a
//! guest address is never translated into memory that was unmapped under it.

use crate::vhost::fault_guard::{self, Registration};
use crate::vhost::memory::{check_shared_file, SealPolicy, SharedFileError};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use thiserror::Error;

use super::wire::{dma_flags, PAGE_SIZE};

/// Why a DMA_MAP or DMA_UNMAP was refused (the reply's errno).
#[derive(Debug, Error)]
pub enum DmaError {
    /// Size zero, a range wrapping past 2^64, addresses or offsets not page aligned, flags
    /// without READ, or more than one fd.
    #[error("invalid DMA range {address:#x}+{size:#x} (offset {offset:#x}, flags {flags:#x})")]
    Invalid {
        /// DMA address.
        address: u64,
        /// Size.
        size: u64,
        /// File offset.
        offset: u64,
        /// Flags.
        flags: u32,
    },
    /// The range overlaps a mapping.
    #[error("DMA range {0:#x}+{1:#x} overlaps an existing mapping")]
    Overlap(u64, u64),
    /// No mapping matches an unmap (or one straddles its range).
    #[error("no DMA mapping matches {0:#x}+{1:#x}")]
    NoMapping(u64, u64),
    /// Too many mappings.
    #[error("more than {0} DMA mappings")]
    TooMany(usize),
    /// The fd cannot back guest memory.
    #[error("DMA region {address:#x}: {source}")]
    File {
        /// DMA address.
        address: u64,
        /// What is wrong with the file.
        source: SharedFileError,
    },
    /// mmap failed.
    #[error("mapping DMA region {address:#x}+{size:#x}: {source}")]
    Map {
        /// DMA address.
        address: u64,
        /// Size.
        size: u64,
        /// The mmap error.
        source: std::io::Error,
    },
    /// The fault guard's table is full.
    #[error(transparent)]
    Guard(#[from] fault_guard::TableFull),
}

impl DmaError {
    /// The errno of the reply.
    pub fn errno(&self) -> i32 {
        match self {
            DmaError::Invalid { .. } | DmaError::File { .. } => libc::EINVAL,
            DmaError::Overlap(..) => libc::EEXIST,
            DmaError::NoMapping(..) => libc::ENOENT,
            DmaError::TooMany(_) | DmaError::Guard(_) => libc::ENOSPC,
            DmaError::Map { source, .. } => source.raw_os_error().unwrap_or(libc::EINVAL),
        }
    }
}

/// A guest address range that no mapping covers (or not with the access asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("DMA range {gpa:#x}+{len:#x} is not mapped for this access")]
pub struct BadAddress {
    /// Start.
    pub gpa: u64,
    /// Length.
    pub len: u64,
}

/// Our mapping of a region's fd.
struct Mapping {
    host: usize,
    len: usize,
    /// Forgotten by the SIGBUS guard before the memory is unmapped.
    guard: Option<Registration>,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        self.guard.take();
        // SAFETY: host..host+len is a mapping this struct made and owns; every table that
        // could translate into it holds the region (and so this mapping) alive.
        unsafe { libc::munmap(self.host as *mut libc::c_void, self.len) };
    }
}

/// One DMA_MAP region.
pub struct Region {
    /// Guest (DMA) address.
    pub gpa: u64,
    /// Size.
    pub size: u64,
    /// The device may write it.
    pub writable: bool,
    /// Mapped by us (the client sent an fd); regions without one are known but the device
    /// cannot reach them (Ferry does not use DMA_READ/DMA_WRITE).
    map: Option<Mapping>,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("gpa", &self.gpa)
            .field("size", &self.size)
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

impl Region {
    /// Whether Ferry mapped it (an fd came with it).
    pub fn is_mapped(&self) -> bool {
        self.map.is_some()
    }

    /// Whether a region's file was truncated under us (its pages now read as zeros).
    pub fn poisoned(&self) -> bool {
        self.map.as_ref().and_then(|m| m.guard.as_ref()).is_some_and(|g| g.poison().is_set())
    }
}

#[derive(Clone, Copy)]
struct Span {
    start: u64,
    end: u64,
    host: usize,
    writable: bool,
}

/// A translation snapshot of the mapped regions. See the module documentation.
#[derive(Default)]
pub struct DmaTable {
    spans: Vec<Span>,
    regions: Vec<Arc<Region>>,
}

impl DmaTable {
    /// The region holding `gpa`.
    #[inline]
    fn span(&self, gpa: u64) -> Option<&Span> {
        let i = self.spans.partition_point(|s| s.start <= gpa).checked_sub(1)?;
        self.spans.get(i).filter(|s| gpa < s.end)
    }

    /// The host address of `len` bytes at `gpa`, when they lie in one mapped region (and,
    /// with `write`, one the device may write).
    #[inline]
    pub fn translate(&self, gpa: u64, len: u64, write: bool) -> Result<*mut u8, BadAddress> {
        let bad = BadAddress { gpa, len };
        let end = gpa.checked_add(len).ok_or(bad)?;
        let s = self.span(gpa).ok_or(bad)?;
        if end > s.end || (write && !s.writable) {
            return Err(bad);
        }
        Ok((s.host + (gpa - s.start) as usize) as *mut u8)
    }

    /// Appends host iovecs covering `gpa..gpa+len` (split where regions meet), merging with
    /// the last iovec when contiguous on the host. Nothing is appended on error.
    pub fn iovecs(&self, gpa: u64, len: u64, write: bool, out: &mut Vec<libc::iovec>) -> Result<(), BadAddress> {
        let bad = BadAddress { gpa, len };
        gpa.checked_add(len).ok_or(bad)?;
        let mark = out.len();
        let (mut at, mut left) = (gpa, len);
        while left > 0 {
            let Some(s) = self.span(at).filter(|s| !write || s.writable) else {
                out.truncate(mark);
                return Err(bad);
            };
            let n = (s.end - at).min(left);
            let host = s.host + (at - s.start) as usize;
            let grows = out.len() > mark;
            match out.last_mut() {
                Some(last) if grows && last.iov_base as usize + last.iov_len == host => last.iov_len += n as usize,
                _ => out.push(libc::iovec { iov_base: host as *mut libc::c_void, iov_len: n as usize }),
            }
            at += n;
            left -= n;
        }
        Ok(())
    }

    /// Whether a region's file was truncated under us.
    pub fn poisoned(&self) -> bool {
        self.regions.iter().any(|r| r.poisoned())
    }

    /// Mapped regions in the table.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether no region is mapped.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

// SAFETY: the table only holds addresses of mappings its regions own and never dereferences
// them itself; users synchronise their accesses to guest memory as guest memory requires.
unsafe impl Send for DmaTable {}
// SAFETY: see Send; the table is immutable.
unsafe impl Sync for DmaTable {}
// SAFETY: a region's mapping is owned and only unmapped on drop.
unsafe impl Send for Region {}
// SAFETY: see Send; regions are immutable once made.
unsafe impl Sync for Region {}

/// The mappings of one client connection (its control side).
pub struct DmaMaps {
    regions: BTreeMap<u64, Arc<Region>>,
    max: usize,
}

impl DmaMaps {
    /// No mappings yet; at most `max` at once.
    pub fn new(max: usize) -> DmaMaps {
        DmaMaps { regions: BTreeMap::new(), max }
    }

    /// The limit on mappings (the negotiated `max_dma_maps`).
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// DMA_MAP: checks the range and the fd, maps it (when an fd came).
    pub fn map(&mut self, flags: u32, offset: u64, gpa: u64, size: u64, fd: Option<File>) -> Result<(), DmaError> {
        let invalid = DmaError::Invalid { address: gpa, size, offset, flags };
        let aligned = |v: u64| v.is_multiple_of(PAGE_SIZE);
        if size == 0
            || gpa.checked_add(size).is_none()
            || !aligned(gpa)
            || !aligned(size)
            || !aligned(offset)
            || flags & dma_flags::READ == 0
            || flags & !(dma_flags::READ | dma_flags::WRITE) != 0
            || usize::try_from(size).is_err()
        {
            return Err(invalid);
        }
        let end = gpa + size;
        let before = self.regions.range(..end).next_back();
        if before.is_some_and(|(_, r)| r.gpa + r.size > gpa) {
            return Err(DmaError::Overlap(gpa, size));
        }
        if self.regions.len() >= self.max {
            return Err(DmaError::TooMany(self.max));
        }
        let writable = flags & dma_flags::WRITE != 0;
        let map = match fd {
            None => None,
            Some(file) => Some(map_file(&file, offset, gpa, size, writable)?),
        };
        self.regions.insert(gpa, Arc::new(Region { gpa, size, writable, map }));
        Ok(())
    }

    /// DMA_UNMAP: removes the mappings inside `gpa..gpa+size` (every one with `all`); a
    /// mapping straddling the range, or no mapping at all, is an error. Returns what went,
    /// for the caller to wait on (the regions stay mapped while tables hold them).
    pub fn unmap(&mut self, gpa: u64, size: u64, all: bool) -> Result<Vec<Arc<Region>>, DmaError> {
        if all {
            return Ok(std::mem::take(&mut self.regions).into_values().collect());
        }
        let end = gpa.checked_add(size).ok_or(DmaError::NoMapping(gpa, size))?;
        if self.regions.range(..gpa).next_back().is_some_and(|(_, r)| r.gpa + r.size > gpa) {
            return Err(DmaError::NoMapping(gpa, size));
        }
        let inside: Vec<u64> = self.regions.range(gpa..end).map(|(k, _)| *k).collect();
        if inside.is_empty() || inside.iter().any(|k| self.regions[k].gpa + self.regions[k].size > end) {
            return Err(DmaError::NoMapping(gpa, size));
        }
        Ok(inside.into_iter().filter_map(|k| self.regions.remove(&k)).collect())
    }

    /// A translation table of the current mappings.
    pub fn table(&self) -> Arc<DmaTable> {
        let mut t = DmaTable::default();
        for r in self.regions.values() {
            if let Some(m) = &r.map {
                t.spans.push(Span { start: r.gpa, end: r.gpa + r.size, host: m.host, writable: r.writable });
                t.regions.push(r.clone());
            }
        }
        Arc::new(t)
    }

    /// Every mapping, in address order: (address, size, mapped by us, writable).
    pub fn list(&self) -> Vec<(u64, u64, bool, bool)> {
        self.regions.values().map(|r| (r.gpa, r.size, r.is_mapped(), r.writable)).collect()
    }
}

fn map_file(file: &File, offset: u64, gpa: u64, size: u64, writable: bool) -> Result<Mapping, DmaError> {
    check_shared_file(file, offset, size, SealPolicy::IfMemfd)
        .map_err(|source| DmaError::File { address: gpa, source })?;
    let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
    let off = libc::off_t::try_from(offset).map_err(|_| DmaError::Invalid { address: gpa, size, offset, flags: 0 })?;
    // SAFETY: a fresh shared mapping of a checked regular file at a kernel-chosen address;
    // nothing aliases it yet. Failure is reported, not assumed away.
    let host = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size as usize,
            prot,
            libc::MAP_SHARED | libc::MAP_NORESERVE,
            file.as_raw_fd(),
            off,
        )
    };
    if host == libc::MAP_FAILED {
        return Err(DmaError::Map { address: gpa, size, source: std::io::Error::last_os_error() });
    }
    let mut m = Mapping { host: host as usize, len: size as usize, guard: None };
    m.guard = Some(fault_guard::register(&[(m.host, m.len)])?);
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn memfd(size: u64) -> File {
        let name = std::ffi::CString::new("ferry-dma-test").unwrap();
        // SAFETY: memfd_create with a valid NUL-terminated name.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_ALLOW_SEALING) };
        assert!(fd >= 0);
        // SAFETY: fd was just created and is owned by nobody else.
        let f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        f.set_len(size).unwrap();
        // SAFETY: F_ADD_SEALS on our own memfd.
        assert_eq!(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) }, 0);
        f
    }

    const RW: u32 = dma_flags::READ | dma_flags::WRITE;

    #[test]
    fn maps_are_checked_and_translated_within_bounds() {
        let mut m = DmaMaps::new(8);
        m.map(RW, 0, 0x10000, 0x4000, Some(memfd(0x4000))).unwrap();
        m.map(dma_flags::READ, 0x1000, 0x14000, 0x1000, Some(memfd(0x2000))).unwrap();
        m.map(RW, 0, 0x100000, 0x1000, None).unwrap();
        assert_eq!(m.map(RW, 0, 0x12000, 0x1000, Some(memfd(0x1000))).unwrap_err().errno(), libc::EEXIST);
        assert_eq!(m.map(RW, 0, 0x20001, 0x1000, None).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(m.map(dma_flags::WRITE, 0, 0x30000, 0x1000, None).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(m.map(RW, 0, u64::MAX - 0xfff, 0x1000, None).unwrap_err().errno(), libc::EINVAL);
        // offset + size past the file, and a file that is not regular.
        assert_eq!(m.map(RW, 0x1000, 0x40000, 0x1000, Some(memfd(0x1000))).unwrap_err().errno(), libc::EINVAL);
        let dev_null = File::open("/dev/null").unwrap();
        assert_eq!(m.map(dma_flags::READ, 0, 0x50000, 0x1000, Some(dev_null)).unwrap_err().errno(), libc::EINVAL);
        let t = m.table();
        assert_eq!(t.len(), 2, "the region without an fd is not reachable");
        assert!(t.translate(0x10000, 0x4000, true).is_ok());
        assert!(t.translate(0x13fff, 2, false).is_err(), "runs into the next region");
        assert!(t.translate(0x14000, 8, true).is_err(), "read-only region");
        assert!(t.translate(0x14000, 8, false).is_ok());
        assert!(t.translate(0x100000, 8, false).is_err(), "no fd: not mapped by us");
        assert!(t.translate(u64::MAX, 2, false).is_err());
        let mut v = Vec::new();
        t.iovecs(0x13000, 0x2000, false, &mut v).unwrap();
        assert_eq!(v.iter().map(|i| i.iov_len).sum::<usize>(), 0x2000);
        assert!(t.iovecs(0x13000, 0x2000, true, &mut v).is_err());
        assert_eq!(v.len(), 2, "nothing appended on error");
        // Unmaps must match whole mappings.
        assert_eq!(m.unmap(0x11000, 0x1000, false).unwrap_err().errno(), libc::ENOENT);
        assert_eq!(m.unmap(0x60000, 0x1000, false).unwrap_err().errno(), libc::ENOENT);
        let gone = m.unmap(0x10000, 0x5000, false).unwrap();
        assert_eq!(gone.len(), 2);
        // The old table still translates (its regions stay mapped while it lives).
        assert!(t.translate(0x10000, 8, true).is_ok());
        assert!(m.table().translate(0x10000, 8, false).is_err());
        assert_eq!(m.unmap(0, 0, true).unwrap().len(), 1);
    }

    #[test]
    fn the_limit_on_mappings_holds() {
        let mut m = DmaMaps::new(2);
        m.map(RW, 0, 0, 0x1000, None).unwrap();
        m.map(RW, 0, 0x1000, 0x1000, None).unwrap();
        assert_eq!(m.map(RW, 0, 0x2000, 0x1000, None).unwrap_err().errno(), libc::ENOSPC);
    }
}
