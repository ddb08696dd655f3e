//! A guest's memory as the vhost-user frontend shares it: regions of fds (hugetlbfs or
//! memfd) mapped once per table, with guest-physical to host translation for the data path.
//!
//! Every translation is bounds-checked: an address or length the guest made up (outside every
//! region, wrapping past 2^64, straddling a hole) is refused, never dereferenced.

use std::fs::File;
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
    mmap: GuestMemoryMmap,
    regions: Vec<RegionInfo>,
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
            let file = file.try_clone().map_err(|e| fail(e.to_string()))?;
            let region = MmapRegion::from_file(FileOffset::new(file, *mmap_offset), info.size as usize)
                .map_err(|e| fail(e.to_string()))?;
            let region = GuestRegionMmap::new(region, GuestAddress(info.gpa))
                .ok_or_else(|| fail("region does not fit the guest address space".into()))?;
            mapped.push(region);
            infos.push(*info);
        }
        let mmap = GuestMemoryMmap::from_regions(mapped).map_err(|e| MemoryError::Invalid(e.to_string()))?;
        Ok(GuestMemory { mmap, regions: infos })
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
            let region = self.mmap.find_region(GuestAddress(at)).ok_or(bad)?;
            let offset = at - region.start_addr().0;
            let n = (region.len() - offset).min(left);
            let host = region.get_host_address(vm_memory::MemoryRegionAddress(offset)).map_err(|_| bad)?;
            out.push(libc::iovec { iov_base: host.cast(), iov_len: n as usize });
            at += n;
            left -= n;
        }
        Ok(())
    }

    /// The host address of `len` bytes at `gpa`, when they lie inside one region.
    pub fn host_range(&self, gpa: u64, len: u64) -> Result<*mut u8, BadAddress> {
        let bad = BadAddress { gpa, len };
        let end = gpa.checked_add(len).ok_or(bad)?;
        let region = self.mmap.find_region(GuestAddress(gpa)).ok_or(bad)?;
        if end > region.start_addr().0 + region.len() {
            return Err(bad);
        }
        region.get_host_address(vm_memory::MemoryRegionAddress(gpa - region.start_addr().0)).map_err(|_| bad)
    }
}

#[cfg(test)]
impl GuestMemory {
    /// `size` bytes of file-backed memory as one region at guest address 0, for tests.
    pub(crate) fn for_tests(size: u64) -> GuestMemory {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("ferry-guestmem-{}-{n}", std::process::id()));
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f.set_len(size).unwrap();
        GuestMemory::map(&[(RegionInfo { gpa: 0, size, user_addr: 0 }, 0, f)]).unwrap()
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
}
