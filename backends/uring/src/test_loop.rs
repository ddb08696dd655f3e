//! A loop block device over a temporary file, made through the kernel's loop ioctls, so the
//! tests exercise a real block device whatever disks the machine has. Needs root (or
//! CAP_SYS_ADMIN) and the loop driver; a test that cannot make one fails and says why.

use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// `LOOP_CTL_GET_FREE` (linux/loop.h): the number of a free loop device, made if need be.
const LOOP_CTL_GET_FREE: libc::Ioctl = 0x4C82;
/// `LOOP_CONFIGURE`: attach a backing fd with a block size and flags, in one step.
const LOOP_CONFIGURE: libc::Ioctl = 0x4C0A;
/// `LOOP_CLR_FD`: detach the backing file.
const LOOP_CLR_FD: libc::Ioctl = 0x4C01;
/// Detach by itself when its last opener closes it (so a crashed test leaks nothing).
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// A loop device attached to a fresh zero-filled file; detached and the file removed on drop.
pub struct LoopDevice {
    /// `/dev/loopN`.
    pub path: PathBuf,
    /// The backing file's path.
    pub backing: PathBuf,
    /// Held open so that the device stays attached (AUTOCLEAR detaches on last close).
    dev: File,
}

impl LoopDevice {
    /// A loop device of `size` bytes with logical block size `block_size`, backed by a file
    /// in `dir`. Panics with the reason when the machine cannot make one.
    pub fn new(dir: &Path, size: u64, block_size: u32) -> LoopDevice {
        static N: AtomicU32 = AtomicU32::new(0);
        let backing =
            dir.join(format!("ferry-uring-loop-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&backing).unwrap();
        file.set_len(size).unwrap();
        let ctl = OpenOptions::new().read(true).write(true).open("/dev/loop-control").unwrap_or_else(|e| {
            let _ = std::fs::remove_file(&backing);
            panic!("/dev/loop-control: {e} (these tests need root and the loop driver to make a block device)")
        });
        // Another process may take the free device between GET_FREE and CONFIGURE: retry.
        for _ in 0..100 {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
            let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                let _ = std::fs::remove_file(&backing);
                panic!("LOOP_CTL_GET_FREE: {e}");
            }
            let path = PathBuf::from(format!("/dev/loop{n}"));
            let dev = match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(d) => d,
                // The node may appear a moment after the device is made.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    let _ = std::fs::remove_file(&backing);
                    panic!("{}: {e}", path.display());
                }
            };
            // SAFETY: all-zero bytes are a valid `LoopConfig` (integers and byte arrays).
            let mut cfg: LoopConfig = unsafe { std::mem::zeroed() };
            cfg.fd = file.as_raw_fd() as u32;
            cfg.block_size = block_size;
            cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR;
            // SAFETY: `cfg` is a live, correctly laid out `struct loop_config` the kernel only
            // reads during the call.
            let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg as *const LoopConfig) };
            if r == 0 {
                return LoopDevice { path, backing, dev };
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EBUSY) {
                let _ = std::fs::remove_file(&backing);
                panic!("LOOP_CONFIGURE {} (block size {block_size}): {e}", path.display());
            }
        }
        let _ = std::fs::remove_file(&backing);
        panic!("no free loop device after 100 tries");
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        // SAFETY: LOOP_CLR_FD takes no argument; `dev` is an open loop device.
        unsafe { libc::ioctl(self.dev.as_raw_fd(), LOOP_CLR_FD) };
        let _ = std::fs::remove_file(&self.backing);
    }
}
