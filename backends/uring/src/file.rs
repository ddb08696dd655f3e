//! Opening backing files and block devices for use with a [`Ring`](crate::Ring).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::error::UringError;

/// Logical block size assumed for regular files when nothing better is known.
const DEFAULT_BLOCK_SIZE: u32 = 512;

/// Build a `_IOR(ty, nr, size)` ioctl request number.
const fn ior(ty: u32, nr: u32, size: usize) -> u32 {
    // mips, powerpc and sparc use a 3-bit direction field at bit 29 and a
    // 13-bit size; everything else uses 2 bits at bit 30 and a 14-bit size.
    // _IOC_READ is 2 on both layouts.
    #[cfg(any(
        target_arch = "mips",
        target_arch = "mips64",
        target_arch = "powerpc",
        target_arch = "powerpc64",
        target_arch = "sparc",
        target_arch = "sparc64"
    ))]
    const DIR_SHIFT: u32 = 29;
    #[cfg(not(any(
        target_arch = "mips",
        target_arch = "mips64",
        target_arch = "powerpc",
        target_arch = "powerpc64",
        target_arch = "sparc",
        target_arch = "sparc64"
    )))]
    const DIR_SHIFT: u32 = 30;
    (2 << DIR_SHIFT) | ((size as u32) << 16) | (ty << 8) | nr
}

/// `BLKGETSIZE64`: `_IOR(0x12, 114, size_t)`, device size in bytes (as a u64).
/// The cast only reinterprets the bits for libcs whose request type is `c_int`.
const BLKGETSIZE64: libc::Ioctl = ior(0x12, 114, std::mem::size_of::<usize>()) as libc::Ioctl;

/// A backing file or block device opened by [`open_file`].
#[derive(Debug)]
pub struct OpenedFile {
    /// The open file; use its raw fd with the [`Ring`](crate::Ring).
    pub file: File,
    /// Whether it was opened with `O_DIRECT`. If so, I/O offsets, lengths and
    /// buffer addresses must be aligned to `logical_block_size` (buffer
    /// addresses: 4096-byte alignment is always safe).
    pub direct: bool,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Logical block size in bytes: `BLKSSZGET` for block devices; for regular
    /// files opened with `O_DIRECT`, the file system's minimum direct-I/O offset
    /// alignment (statx `STATX_DIOALIGN`, at least 512) when the kernel reports
    /// it; otherwise 512.
    pub logical_block_size: u32,
    /// Whether `file` is a block device (otherwise it is a regular file).
    pub is_block_device: bool,
    /// Whether it was opened read-only.
    pub readonly: bool,
}

fn open_with_flags(path: &Path, readonly: bool, flags: i32) -> io::Result<File> {
    OpenOptions::new().read(true).write(!readonly).custom_flags(flags).open(path)
}

/// What `statx(STATX_DIOALIGN)` says about direct I/O on an open file.
enum DioAlign {
    /// The kernel or file system does not report it.
    Unknown,
    /// Direct I/O is not supported on this file (offset alignment 0).
    Unsupported,
    /// Direct I/O offsets and lengths must be multiples of this.
    Offset(u32),
}

fn dio_align(file: &File) -> DioAlign {
    // SAFETY: `statx` is plain old data for which all-zero bytes is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the fd is open for the duration of the call, the path is a valid
    // NUL-terminated (empty) string used with AT_EMPTY_PATH, and `stx` is a
    // writable statx buffer.
    let rc =
        unsafe { libc::statx(file.as_raw_fd(), c"".as_ptr(), libc::AT_EMPTY_PATH, libc::STATX_DIOALIGN, &mut stx) };
    if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        DioAlign::Unknown
    } else if stx.stx_dio_offset_align == 0 {
        DioAlign::Unsupported
    } else {
        DioAlign::Offset(stx.stx_dio_offset_align)
    }
}

/// Open `path` read-write (or read-only), trying `O_DIRECT` first and falling
/// back to buffered I/O when the file system refuses it (`EINVAL`, e.g. procfs
/// or tmpfs before Linux 6.6, or when statx reports that this file cannot do
/// direct I/O).
///
/// For block devices the size comes from `BLKGETSIZE64` and the logical block
/// size from `BLKSSZGET`; for regular files the size comes from the metadata
/// and the logical block size is described on
/// [`OpenedFile::logical_block_size`]. Anything else (directories, character
/// devices, FIFOs, ...) is rejected with an `InvalidInput` error.
pub fn open_file(path: &Path, readonly: bool) -> Result<OpenedFile, UringError> {
    let file_err =
        |op: &'static str| move |source: io::Error| UringError::File { op, path: path.to_path_buf(), source };

    let (mut file, mut direct) = match open_with_flags(path, readonly, libc::O_DIRECT) {
        Ok(file) => (file, true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            (open_with_flags(path, readonly, 0).map_err(file_err("open"))?, false)
        }
        Err(e) => return Err(file_err("open")(e)),
    };

    let meta = file.metadata().map_err(file_err("fstat"))?;
    let file_type = meta.file_type();

    if file_type.is_block_device() {
        let fd = file.as_raw_fd();
        let mut size: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points
        // to a live, writable u64; the fd is open.
        if unsafe { libc::ioctl(fd, BLKGETSIZE64, &mut size as *mut u64) } != 0 {
            return Err(file_err("ioctl(BLKGETSIZE64)")(io::Error::last_os_error()));
        }
        let mut lbs: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int through the pointer, which points to
        // a live, writable c_int; the fd is open.
        if unsafe { libc::ioctl(fd, libc::BLKSSZGET, &mut lbs as *mut libc::c_int) } != 0 {
            return Err(file_err("ioctl(BLKSSZGET)")(io::Error::last_os_error()));
        }
        let logical_block_size = u32::try_from(lbs).ok().filter(|&b| b != 0).unwrap_or(DEFAULT_BLOCK_SIZE);
        return Ok(OpenedFile { file, direct, size_bytes: size, logical_block_size, is_block_device: true, readonly });
    }

    if !file_type.is_file() {
        return Err(file_err("open")(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file or block device",
        )));
    }

    let mut logical_block_size = DEFAULT_BLOCK_SIZE;
    if direct {
        match dio_align(&file) {
            DioAlign::Unknown => {}
            DioAlign::Offset(align) => logical_block_size = align.max(DEFAULT_BLOCK_SIZE),
            DioAlign::Unsupported => {
                // O_DIRECT was accepted at open time but I/O would fail with
                // EINVAL (e.g. ext4 data=journal): reopen buffered.
                file = open_with_flags(path, readonly, 0).map_err(file_err("open"))?;
                direct = false;
            }
        }
    }

    Ok(OpenedFile { file, direct, size_bytes: meta.len(), logical_block_size, is_block_device: false, readonly })
}
