//! The memory shared with the backend: one memfd (or hugetlbfs file) mapped here and handed
//! over as a single region at guest-physical address 0, with a bump allocator for rings and
//! buffers. "Guest-physical" addresses are offsets into it, or (as SPDK's and DPDK's
//! virtio-user give them) our own virtual addresses, see [`SharedMemory::identity_mapped`].

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Shared memory and its allocator.
pub struct SharedMemory {
    base: *mut u8,
    len: usize,
    file: File,
    next: AtomicUsize,
    /// The guest address of the first byte.
    gpa_base: u64,
}

// SAFETY: the mapping is plain shared memory; every access goes through bounds-checked
// accessors with volatile or atomic operations, as another process reads and writes it too.
unsafe impl Send for SharedMemory {}
// SAFETY: see Send.
unsafe impl Sync for SharedMemory {}

impl SharedMemory {
    /// `len` bytes from a memfd, or from a new file in the hugetlbfs directory `hugetlbfs`.
    pub fn new(len: usize, hugetlbfs: Option<&Path>) -> std::io::Result<SharedMemory> {
        let file = match hugetlbfs {
            Some(dir) => {
                let path = dir.join(format!("ferry-initiator-{}-{:p}", std::process::id(), &len));
                let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
                std::fs::remove_file(&path)?;
                f.set_len(len as u64)?;
                f
            }
            None => {
                // SAFETY: memfd_create with a static NUL-terminated name.
                let fd = unsafe {
                    libc::memfd_create(c"ferry-initiator".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
                };
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: fd is a new memfd we own.
                let f = unsafe { File::from_raw_fd(fd) };
                f.set_len(len as u64)?;
                // Backends refuse memfds that could shrink under their mapping (as QEMU's
                // memory-backend-memfd, seal the size).
                let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
                // SAFETY: F_ADD_SEALS on our own memfd, no pointers.
                if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                f
            }
        };
        Self::with_file(file, len)
    }

    /// Shares `len` bytes of an existing file (tests use files a frontend should not send:
    /// unsealed, undersized, truncated later).
    pub fn with_file(file: File, len: usize) -> std::io::Result<SharedMemory> {
        // SAFETY: a fresh shared mapping of our own file.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(SharedMemory { base: base.cast(), len, file, next: AtomicUsize::new(4096), gpa_base: 0 })
    }

    /// The same memory with guest addresses equal to our virtual addresses, as SPDK's and
    /// DPDK's virtio-user put them in the memory table (they have no guest; "guest-physical"
    /// is the process's own address space).
    pub fn identity_mapped(mut self) -> SharedMemory {
        self.gpa_base = self.base as u64;
        self
    }

    /// The guest address of the first byte (0 unless [`SharedMemory::identity_mapped`]).
    pub fn gpa_base(&self) -> u64 {
        self.gpa_base
    }

    /// Our virtual address of the first byte (the memory table's user address).
    pub fn user_addr(&self) -> u64 {
        self.base as u64
    }

    /// The backing file (sent with SET_MEM_TABLE).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Our virtual address of guest address `gpa` (what vring addresses are given as).
    pub fn host_addr(&self, gpa: u64) -> u64 {
        self.base as u64 + (gpa - self.gpa_base)
    }

    /// Allocates `len` bytes aligned to `align`; returns the guest address.
    pub fn alloc(&self, len: usize, align: usize) -> Option<u64> {
        let mut cur = self.next.load(Ordering::Relaxed);
        loop {
            let start = cur.next_multiple_of(align.max(1));
            let end = start.checked_add(len)?;
            if end > self.len {
                return None;
            }
            match self.next.compare_exchange(cur, end, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(self.gpa_base + start as u64),
                Err(now) => cur = now,
            }
        }
    }

    fn check(&self, gpa: u64, len: usize) -> *mut u8 {
        let offset = gpa.checked_sub(self.gpa_base).expect("access below shared memory") as usize;
        assert!(offset.checked_add(len).is_some_and(|e| e <= self.len), "access outside shared memory");
        // SAFETY: checked to lie inside the mapping just above.
        unsafe { self.base.add(offset) }
    }

    /// Copies `data` to `gpa`.
    pub fn write(&self, gpa: u64, data: &[u8]) {
        let p = self.check(gpa, data.len());
        // SAFETY: `p..p+len` is inside the mapping (check).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
    }

    /// Copies `out.len()` bytes from `gpa`.
    pub fn read(&self, gpa: u64, out: &mut [u8]) {
        let p = self.check(gpa, out.len());
        // SAFETY: as in write.
        unsafe { std::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), out.len()) };
    }

    /// Volatile 16-bit load.
    pub fn load_u16(&self, gpa: u64) -> u16 {
        // SAFETY: inside the mapping (check); ring fields are naturally aligned.
        u16::from_le(unsafe { self.check(gpa, 2).cast::<u16>().read_volatile() })
    }

    /// Volatile 16-bit store.
    pub fn store_u16(&self, gpa: u64, v: u16) {
        // SAFETY: as in load_u16.
        unsafe { self.check(gpa, 2).cast::<u16>().write_volatile(v.to_le()) }
    }

    /// Volatile 32-bit load.
    pub fn load_u32(&self, gpa: u64) -> u32 {
        // SAFETY: as in load_u16.
        u32::from_le(unsafe { self.check(gpa, 4).cast::<u32>().read_volatile() })
    }

    /// Volatile byte load.
    pub fn load_u8(&self, gpa: u64) -> u8 {
        // SAFETY: as in load_u16.
        unsafe { self.check(gpa, 1).read_volatile() }
    }

    /// Volatile byte store.
    pub fn store_u8(&self, gpa: u64, v: u8) {
        // SAFETY: as in load_u16.
        unsafe { self.check(gpa, 1).write_volatile(v) }
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `new`.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}
