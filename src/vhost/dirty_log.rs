//! Dirty-page logging for live migration (vhost-user's LOG_SHMFD, SET_LOG_BASE and
//! VHOST_F_LOG_ALL): while the frontend migrates the guest, every byte Ferry writes into
//! guest memory (data read from a disk, status bytes and responses, used rings) sets the bit
//! of its 4 KiB guest page in a bitmap the frontend shares with us and reads as it copies
//! memory. Bit `n % 8` of byte `n / 8` stands for guest-physical page `n`.
//!
//! The bitmap is the frontend's: its fd is checked like a memory file (a regular file or a
//! sealed memfd, large enough for `offset + size`), and marks are atomic ORs of one byte,
//! since QEMU reads and clears the same bytes concurrently. A page past the end of the log
//! is not marked (the frontend sized the log for its memory; a write there cannot happen
//! unless the frontend lied, and then nothing is written outside the log). Queues hold the
//! log only while logging is on: when it is off, a completion pays one `Option` test.

use super::memory::{check_shared_file, SealPolicy, SharedFileError};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU8, Ordering};

/// Bytes of guest memory one bit stands for (VHOST_LOG_PAGE).
pub const LOG_PAGE: u64 = 4096;
/// The largest log accepted: enough for 4 PiB of guest memory.
const MAX_LOG: u64 = 1 << 37;

/// Why a log area is refused.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Size zero, or larger than any guest needs.
    #[error("log size {0} is zero or too large")]
    Size(u64),
    /// The fd is not a file that can back the log.
    #[error("log file: {0}")]
    File(#[from] SharedFileError),
    /// mmap failed.
    #[error("mapping the log: {0}")]
    Map(std::io::Error),
}

/// The frontend's dirty bitmap, mapped.
pub struct DirtyLog {
    map: *mut u8,
    /// Bytes mapped (the page-aligned start included).
    mapped: usize,
    /// Where the log starts in the mapping.
    start: usize,
    /// Bytes of log.
    len: u64,
}

// SAFETY: the mapping is shared memory only ever written with atomic byte operations; it
// lives until the last Arc is dropped.
unsafe impl Send for DirtyLog {}
// SAFETY: see Send.
unsafe impl Sync for DirtyLog {}

impl DirtyLog {
    /// Maps `size` bytes at `offset` of `file` (SET_LOG_BASE), after checking the file.
    pub fn map(file: &File, offset: u64, size: u64) -> Result<DirtyLog, LogError> {
        if size == 0 || size > MAX_LOG {
            return Err(LogError::Size(size));
        }
        check_shared_file(file, offset, size, SealPolicy::Required)?;
        // SAFETY: sysconf has no memory effects.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
        let aligned = offset - offset % page;
        let start = (offset - aligned) as usize;
        let mapped = start + size as usize;
        // SAFETY: a new shared mapping of a file checked above to hold offset + size bytes and
        // sealed against shrinking, so no access inside it can fault.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                aligned as libc::off_t,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(LogError::Map(std::io::Error::last_os_error()));
        }
        Ok(DirtyLog { map: map.cast(), mapped, start, len: size })
    }

    /// Bytes of bitmap.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the bitmap is empty (never: a zero size is refused).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Marks the pages of guest range `gpa..gpa + len` dirty.
    pub fn mark(&self, gpa: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = gpa / LOG_PAGE;
        let last = gpa.saturating_add(len - 1) / LOG_PAGE;
        for page in first..=last {
            let byte = page / 8;
            if byte >= self.len {
                return;
            }
            // SAFETY: byte < len, so the address lies inside the mapping; the log is only
            // ever accessed atomically (here and by the frontend).
            let cell = unsafe { AtomicU8::from_ptr(self.map.add(self.start + byte as usize)) };
            cell.fetch_or(1 << (page % 8), Ordering::Relaxed);
        }
    }
}

impl Drop for DirtyLog {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no longer referenced (the last Arc is gone).
        unsafe { libc::munmap(self.map.cast(), self.mapped) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    fn memfd(len: u64, seal: bool) -> File {
        // SAFETY: memfd_create with a static name.
        let fd = unsafe { libc::memfd_create(c"log".as_ptr(), libc::MFD_ALLOW_SEALING) };
        assert!(fd >= 0);
        // SAFETY: a fresh fd we own.
        let f = unsafe { File::from_raw_fd(fd) };
        f.set_len(len).unwrap();
        if seal {
            // SAFETY: F_ADD_SEALS on our own memfd.
            assert_eq!(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) }, 0);
        }
        f
    }

    fn bytes(f: &File, offset: u64, len: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let mut b = vec![0u8; len];
        f.read_exact_at(&mut b, offset).unwrap();
        b
    }

    #[test]
    fn marks_exactly_the_pages_written_and_nothing_past_the_log() {
        let f = memfd(8192, true);
        let log = DirtyLog::map(&f, 4096 + 8, 16).unwrap();
        log.mark(0, 1); // page 0
        log.mark(3 * LOG_PAGE + 4095, 2); // pages 3 and 4
        log.mark(20 * LOG_PAGE, 3 * LOG_PAGE); // pages 20, 21, 22
        log.mark(127 * LOG_PAGE, 1); // the last page the 16-byte log covers
        log.mark(128 * LOG_PAGE, 1 << 20); // past the log: nothing
        log.mark(u64::MAX - 10, 100); // wraps: clamped, past the log
        let got = bytes(&f, 4096, 32);
        let mut want = vec![0u8; 32];
        want[8] = 0b0001_1001;
        want[8 + 2] = 0b0111_0000;
        want[8 + 15] = 0b1000_0000;
        assert_eq!(got, want);
    }

    #[test]
    fn refuses_short_unsealed_and_empty_logs() {
        assert!(matches!(DirtyLog::map(&memfd(4096, true), 0, 8192), Err(LogError::File(_))));
        assert!(matches!(DirtyLog::map(&memfd(4096, false), 0, 4096), Err(LogError::File(_))));
        assert!(matches!(DirtyLog::map(&memfd(4096, true), 0, 0), Err(LogError::Size(0))));
        assert!(matches!(DirtyLog::map(&memfd(4096, true), u64::MAX, 2), Err(LogError::File(_))));
    }
}
