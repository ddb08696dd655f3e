//! Tests against the real kernel io_uring (no mocks).

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::test_loop::LoopDevice;
use crate::{open_file, QueueFull, Ring, UringError};

/// A uniquely named file that is removed on drop.
struct TempPath(PathBuf);

impl TempPath {
    fn new_in(dir: &Path, tag: &str) -> TempPath {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        TempPath(dir.join(format!("ferry-uring-test-{}-{}-{}", std::process::id(), n, tag)))
    }

    fn new(tag: &str) -> TempPath {
        TempPath::new_in(&std::env::temp_dir(), tag)
    }

    /// Create the file with `contents` and reopen it read-write (buffered).
    fn create(&self, contents: &[u8]) -> File {
        std::fs::write(&self.0, contents).unwrap();
        OpenOptions::new().read(true).write(true).open(&self.0).unwrap()
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A zeroed, 4096-byte aligned heap buffer (for O_DIRECT).
struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let layout = Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: the layout has a non-zero size (all callers pass len > 0).
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        AlignedBuf { ptr, layout }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is a live allocation of layout.size() initialised bytes,
        // uniquely borrowed through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }

    fn iovec(&mut self) -> libc::iovec {
        libc::iovec { iov_base: self.ptr.cast(), iov_len: self.layout.size() }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this exact layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

fn iov(buf: &mut [u8]) -> libc::iovec {
    libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() }
}

/// Submit, wait for and reap exactly the operations in flight; return the
/// completions in reap order.
fn drain(ring: &mut Ring) -> Vec<(u64, i32)> {
    let mut out = Vec::new();
    while ring.in_flight() > 0 {
        ring.submit_and_wait(ring.in_flight()).unwrap();
        ring.reap(|ud, res| out.push((ud, res)));
    }
    out
}

/// Run one operation to completion and return its result.
fn complete_one(ring: &mut Ring, user_data: u64) -> i32 {
    let done = drain(ring);
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0].0, user_data);
    done[0].1
}

fn readv_one(ring: &mut Ring, fd: RawFd, iovs: &[libc::iovec], offset: u64) -> i32 {
    // SAFETY: the iovecs and buffers live until `complete_one` reaps the completion.
    unsafe { ring.prep_readv(fd, iovs.as_ptr(), iovs.len() as u32, offset, 42) }.unwrap();
    complete_one(ring, 42)
}

fn writev_one(ring: &mut Ring, fd: RawFd, iovs: &[libc::iovec], offset: u64) -> i32 {
    // SAFETY: the iovecs and buffers live until `complete_one` reaps the completion.
    unsafe { ring.prep_writev(fd, iovs.as_ptr(), iovs.len() as u32, offset, 43) }.unwrap();
    complete_one(ring, 43)
}

#[test]
fn vectored_write_then_read_back() {
    let tmp = TempPath::new("rw");
    let file = tmp.create(&[]);
    let fd = file.as_raw_fd();
    let mut ring = Ring::new(256).unwrap();
    assert_eq!(ring.sq_entries(), 256);
    assert!(ring.max_in_flight() >= 256);

    let mut a = vec![0x11u8; 512];
    let mut b: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
    let mut c = vec![0x33u8; 2560];
    let iovs = [iov(&mut a), iov(&mut b), iov(&mut c)];
    // SAFETY: buffers and iovecs outlive the completion reaped below.
    unsafe { ring.prep_writev(fd, iovs.as_ptr(), 3, 8192, 1) }.unwrap();
    assert_eq!(ring.in_flight(), 1);
    assert_eq!(ring.submit().unwrap(), 1);
    assert_eq!(ring.in_flight(), 1);
    ring.submit_and_wait(1).unwrap();
    let mut seen = Vec::new();
    assert_eq!(ring.reap(|ud, res| seen.push((ud, res))), 1);
    assert_eq!(seen, vec![(1, 4096)]);
    assert_eq!(ring.in_flight(), 0);

    let expected: Vec<u8> = [&a[..], &b[..], &c[..]].concat();
    // Read back with a different split: 100 + 3996 bytes.
    let mut r1 = vec![0u8; 100];
    let mut r2 = vec![0u8; 3996];
    let riovs = [iov(&mut r1), iov(&mut r2)];
    assert_eq!(readv_one(&mut ring, fd, &riovs, 8192), 4096);
    assert_eq!([&r1[..], &r2[..]].concat(), expected);

    // The hole before the data reads back as zeros, and the file has the right size.
    let mut head = vec![0xffu8; 8192];
    assert_eq!(readv_one(&mut ring, fd, &[iov(&mut head)], 0), 8192);
    assert!(head.iter().all(|&x| x == 0));
    assert_eq!(file.metadata().unwrap().len(), 8192 + 4096);
}

#[test]
fn fsync_and_fdatasync_complete() {
    let tmp = TempPath::new("fsync");
    let file = tmp.create(b"hello");
    let fd = file.as_raw_fd();
    let mut ring = Ring::new(8).unwrap();
    ring.prep_fsync(fd, false, 10).unwrap();
    ring.prep_fsync(fd, true, 11).unwrap();
    let mut done = drain(&mut ring);
    done.sort();
    assert_eq!(done, vec![(10, 0), (11, 0)]);
}

/// Fill 3 blocks of `fd` (a file or device of at least 3 blocks) with 0xab, fallocate the
/// middle one with `mode`, check it reads back as zeros with the neighbours untouched.
fn fallocate_zeroes_middle_block(fd: RawFd, mode: i32, what: &str) {
    let mut ring = Ring::new(8).unwrap();
    let mut fill = AlignedBuf::new(3 * 4096);
    fill.as_mut_slice().fill(0xab);
    assert_eq!(writev_one(&mut ring, fd, &[fill.iovec()], 0), 3 * 4096, "{what}: fill");
    ring.prep_fallocate(fd, mode, 4096, 4096, 5).unwrap();
    let res = complete_one(&mut ring, 5);
    // No skipping: Ferry's uring bdev relies on these modes (put the temp dir on a file
    // system that has them, e.g. ext4 or xfs).
    assert_eq!(res, 0, "{what}: fallocate mode {mode:#x}: {}", std::io::Error::from_raw_os_error(-res));
    let mut back = AlignedBuf::new(3 * 4096);
    assert_eq!(readv_one(&mut ring, fd, &[back.iovec()], 0), 3 * 4096);
    let back = back.as_mut_slice();
    assert!(back[..4096].iter().all(|&x| x == 0xab), "{what}: block before untouched");
    assert!(back[4096..8192].iter().all(|&x| x == 0), "{what}: middle block zeroed");
    assert!(back[8192..].iter().all(|&x| x == 0xab), "{what}: block after untouched");
}

#[test]
fn fallocate_punch_hole_reads_back_zeros() {
    let tmp = TempPath::new("punch");
    let file = tmp.create(&[]);
    fallocate_zeroes_middle_block(
        file.as_raw_fd(),
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        "punch hole, temp file",
    );
    assert_eq!(file.metadata().unwrap().len(), 3 * 4096, "size kept");
}

#[test]
fn fallocate_zero_range_reads_back_zeros() {
    let tmp = TempPath::new("zero");
    let file = tmp.create(&[]);
    fallocate_zeroes_middle_block(
        file.as_raw_fd(),
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        "zero range, temp file",
    );
    assert_eq!(file.metadata().unwrap().len(), 3 * 4096, "size kept");
}

#[test]
fn queue_full_on_tiny_ring_then_continue() {
    let tmp = TempPath::new("qfull");
    let file = tmp.create(b"x");
    let fd = file.as_raw_fd();
    let mut ring = Ring::new(4).unwrap();
    assert_eq!(ring.sq_entries(), 4);
    let cap = ring.max_in_flight();
    assert!(cap >= 4);

    // Fill the SQ.
    for ud in 0..4 {
        ring.prep_fsync(fd, true, ud).unwrap();
    }
    assert_eq!(ring.prep_fsync(fd, true, 99), Err(QueueFull));
    assert_eq!(ring.in_flight(), 4);
    assert_eq!(ring.submit().unwrap(), 4);

    // The SQ is empty again; keep going until the in-flight cap bites.
    let mut ud = 4;
    while ring.in_flight() < cap {
        if ring.prep_fsync(fd, true, ud).is_err() {
            assert_eq!(ring.submit().unwrap(), 4);
            continue;
        }
        ud += 1;
    }
    assert_eq!(ring.prep_fsync(fd, true, 99), Err(QueueFull));

    let mut seen = HashSet::new();
    for (u, res) in drain(&mut ring) {
        assert_eq!(res, 0);
        assert!(seen.insert(u));
    }
    assert_eq!(seen, (0..ud).collect::<HashSet<_>>());

    // And it works again afterwards.
    ring.prep_fsync(fd, false, 1000).unwrap();
    assert_eq!(complete_one(&mut ring, 1000), 0);
}

#[test]
fn many_writes_through_tiny_ring_with_retry() {
    const BLOCKS: usize = 100;
    let tmp = TempPath::new("many");
    let file = tmp.create(&[]);
    let fd = file.as_raw_fd();
    let mut ring = Ring::new(4).unwrap();

    let mut bufs: Vec<Vec<u8>> = (0..BLOCKS).map(|i| vec![i as u8; 512]).collect();
    let iovs: Vec<libc::iovec> = bufs.iter_mut().map(|b| iov(b)).collect();
    let mut done = [false; BLOCKS];
    let mut next = 0;
    let mut completed = 0;
    while completed < BLOCKS {
        while next < BLOCKS {
            // SAFETY: `bufs` and `iovs` are neither touched nor dropped until
            // every completion has been reaped at the end of this loop.
            let r = unsafe { ring.prep_writev(fd, &iovs[next], 1, next as u64 * 512, next as u64) };
            match r {
                Ok(()) => next += 1,
                Err(QueueFull) => break,
            }
        }
        ring.submit().unwrap();
        ring.submit_and_wait(1).unwrap();
        completed += ring.reap(|ud, res| {
            assert_eq!(res, 512);
            assert!(!std::mem::replace(&mut done[ud as usize], true));
        });
    }
    assert_eq!(ring.in_flight(), 0);
    assert!(done.iter().all(|&d| d));

    let mut contents = Vec::new();
    File::open(&tmp.0).unwrap().read_to_end(&mut contents).unwrap();
    assert_eq!(contents.len(), BLOCKS * 512);
    for (i, chunk) in contents.chunks(512).enumerate() {
        assert!(chunk.iter().all(|&x| x == i as u8), "block {i}");
    }
}

#[test]
fn read_past_eof_is_short() {
    let tmp = TempPath::new("eof");
    let file = tmp.create(&[7u8; 1000]);
    let fd = file.as_raw_fd();
    let mut ring = Ring::new(8).unwrap();
    let mut buf = vec![0u8; 4096];
    assert_eq!(readv_one(&mut ring, fd, &[iov(&mut buf)], 0), 1000);
    assert!(buf[..1000].iter().all(|&x| x == 7));
    assert_eq!(readv_one(&mut ring, fd, &[iov(&mut buf)], 512), 488);
    assert_eq!(readv_one(&mut ring, fd, &[iov(&mut buf)], 1000), 0);
    assert_eq!(readv_one(&mut ring, fd, &[iov(&mut buf)], 1 << 20), 0);
}

#[test]
fn invalid_fd_completes_with_ebadf() {
    let mut ring = Ring::new(8).unwrap();
    let mut buf = vec![0u8; 512];
    let iovs = [iov(&mut buf)];
    // An fd number far above anything this process has open.
    let bad_fd: RawFd = 1 << 20;
    // SAFETY: buffers outlive the completions drained below.
    unsafe { ring.prep_readv(bad_fd, iovs.as_ptr(), 1, 0, 1) }.unwrap();
    // SAFETY: as above.
    unsafe { ring.prep_writev(-1, iovs.as_ptr(), 1, 0, 2) }.unwrap();
    ring.prep_fsync(bad_fd, false, 3).unwrap();
    ring.prep_fallocate(bad_fd, 0, 0, 4096, 4).unwrap();
    let mut done = drain(&mut ring);
    done.sort();
    assert_eq!(done, vec![(1, -libc::EBADF), (2, -libc::EBADF), (3, -libc::EBADF), (4, -libc::EBADF)]);
}

#[test]
fn eventfd_is_signalled_on_completion() {
    let tmp = TempPath::new("efd");
    let file = tmp.create(b"abc");
    // SAFETY: plain syscall; the returned fd is owned by `efd` below.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(raw >= 0);
    // SAFETY: `raw` is a freshly created fd nobody else owns.
    let efd: std::os::fd::OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(raw) };

    let mut ring = Ring::new(8).unwrap();
    ring.register_eventfd(efd.as_raw_fd()).unwrap();
    ring.prep_fsync(file.as_raw_fd(), true, 9).unwrap();
    assert_eq!(ring.submit().unwrap(), 1);

    let mut pfd = libc::pollfd { fd: efd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: `pfd` is a valid pollfd array of length 1.
    let n = unsafe { libc::poll(&mut pfd, 1, 10_000) };
    assert_eq!(n, 1, "eventfd was not signalled within 10s");
    let mut count = 0u64;
    // SAFETY: reads 8 bytes into a live u64.
    let r = unsafe { libc::read(efd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
    assert_eq!(r, 8);
    assert!(count >= 1);

    let mut seen = Vec::new();
    assert_eq!(ring.reap(|ud, res| seen.push((ud, res))), 1);
    assert_eq!(seen, vec![(9, 0)]);
}

#[test]
fn register_eventfd_rejects_bad_fd() {
    let ring = Ring::new(8).unwrap();
    let err = ring.register_eventfd(-1).unwrap_err();
    assert!(matches!(err, UringError::Ring { op: "register_eventfd", .. }), "{err}");
    assert_eq!(err.raw_os_error(), Some(libc::EBADF));
}

#[test]
fn idle_ring_submit_and_wait_do_not_block() {
    let mut ring = Ring::new(8).unwrap();
    assert_eq!(ring.submit().unwrap(), 0);
    // Nothing in flight: must return at once instead of waiting forever.
    assert_eq!(ring.submit_and_wait(5).unwrap(), 0);
    assert_eq!(ring.reap(|_, _| panic!("no completions expected")), 0);
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn drop_waits_for_in_flight_writes() {
    let tmp = TempPath::new("drop");
    let file = tmp.create(&[]);
    let mut buf = vec![0x5au8; 64 * 1024];
    {
        let mut ring = Ring::new(8).unwrap();
        let iovs = [iov(&mut buf)];
        // SAFETY: `buf` and `iovs` outlive the ring, whose drop waits for the write.
        unsafe { ring.prep_writev(file.as_raw_fd(), iovs.as_ptr(), 1, 0, 1) }.unwrap();
        ring.submit().unwrap();
        // One more left queued but never submitted explicitly.
        // SAFETY: as above.
        unsafe { ring.prep_writev(file.as_raw_fd(), iovs.as_ptr(), 1, 64 * 1024, 2) }.unwrap();
    }
    assert_eq!(file.metadata().unwrap().len(), 128 * 1024);
    buf.fill(0);
}

#[test]
fn zero_entries_is_a_setup_error() {
    let err = Ring::new(0).unwrap_err();
    assert!(matches!(err, UringError::Setup { entries: 0, .. }), "{err}");
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    assert!(err.to_string().contains("io_uring_setup"), "{err}");
}

/// Write, read back and compare 8 KiB at offset 4096 through the ring, using
/// aligned buffers so that it also works with O_DIRECT.
fn aligned_roundtrip(fd: RawFd) {
    let mut ring = Ring::new(8).unwrap();
    let mut wbuf = AlignedBuf::new(8192);
    for (i, b) in wbuf.as_mut_slice().iter_mut().enumerate() {
        *b = (i % 253) as u8;
    }
    assert_eq!(writev_one(&mut ring, fd, &[wbuf.iovec()], 4096), 8192);
    let mut rbuf = AlignedBuf::new(8192);
    assert_eq!(readv_one(&mut ring, fd, &[rbuf.iovec()], 4096), 8192);
    assert_eq!(rbuf.as_mut_slice(), wbuf.as_mut_slice());
}

#[test]
fn open_file_on_tmpfs() {
    let shm = Path::new("/dev/shm");
    assert!(shm.is_dir(), "/dev/shm is missing: this test needs a tmpfs there (Linux always mounts one)");
    let tmp = TempPath::new_in(shm, "shm");
    drop(tmp.create(&[1u8; 16384]));
    let f = open_file(&tmp.0, false).unwrap();
    // tmpfs refuses O_DIRECT before Linux 6.6 (so this falls back to buffered
    // I/O) and accepts it from 6.6 on; either way it must open and work.
    eprintln!("tmpfs: direct={} lbs={}", f.direct, f.logical_block_size);
    assert_eq!(f.size_bytes, 16384);
    assert!(!f.is_block_device);
    assert!(!f.readonly);
    assert!(f.logical_block_size >= 512 && f.logical_block_size.is_power_of_two());
    aligned_roundtrip(f.file.as_raw_fd());
}

#[test]
fn open_file_falls_back_to_buffered_when_direct_is_refused() {
    // procfs refuses O_DIRECT with EINVAL on every kernel.
    let f = open_file(Path::new("/proc/version"), true).unwrap();
    assert!(!f.direct);
    assert!(f.readonly);
    assert!(!f.is_block_device);
    assert_eq!(f.logical_block_size, 512);
    let mut ring = Ring::new(8).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = readv_one(&mut ring, f.file.as_raw_fd(), &[iov(&mut buf)], 0);
    assert!(n > 0);
    assert!(std::str::from_utf8(&buf[..n as usize]).unwrap().starts_with("Linux version"));
}

#[test]
fn open_file_on_disk_backed_dirs() {
    for dir in [Path::new("/tmp"), Path::new("/var/tmp")] {
        assert!(dir.is_dir(), "{} is missing", dir.display());
        let tmp = TempPath::new_in(dir, "disk");
        drop(tmp.create(&[0u8; 65536]));
        let f = open_file(&tmp.0, false).unwrap();
        eprintln!("{}: direct={} lbs={}", dir.display(), f.direct, f.logical_block_size);
        assert_eq!(f.size_bytes, 65536);
        assert!(!f.is_block_device);
        assert!(f.logical_block_size >= 512 && f.logical_block_size.is_power_of_two());
        assert!(f.logical_block_size <= 4096, "unexpected alignment");
        aligned_roundtrip(f.file.as_raw_fd());
    }
}

#[test]
fn open_file_readonly_rejects_writes() {
    let tmp = TempPath::new("ro");
    drop(tmp.create(&[3u8; 4096]));
    let f = open_file(&tmp.0, true).unwrap();
    assert!(f.readonly);
    let mut ring = Ring::new(8).unwrap();
    let mut buf = AlignedBuf::new(4096);
    assert_eq!(writev_one(&mut ring, f.file.as_raw_fd(), &[buf.iovec()], 0), -libc::EBADF);
    assert_eq!(readv_one(&mut ring, f.file.as_raw_fd(), &[buf.iovec()], 0), 4096);
    assert!(buf.as_mut_slice().iter().all(|&x| x == 3));
}

#[test]
fn open_file_missing_path_is_not_found() {
    let path = std::env::temp_dir().join("ferry-uring-definitely-missing/nope.img");
    let err = open_file(&path, false).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert!(matches!(err, UringError::File { op: "open", .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("nope.img"), "{msg}");
    let source = std::error::Error::source(&err).unwrap();
    let io = source.downcast_ref::<std::io::Error>().unwrap();
    assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
    assert_eq!(std::io::Error::from(err).kind(), std::io::ErrorKind::NotFound);
}

#[test]
fn open_file_rejects_directories() {
    let err = open_file(&std::env::temp_dir(), true).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
}

/// Where the loop devices' backing files go: a disk-backed directory, so the loop driver
/// writes through to a real file system.
fn loop_dir() -> &'static Path {
    Path::new("/var/tmp")
}

#[test]
fn open_file_on_a_loop_device_in_both_block_sizes() {
    for lbs in [512u32, 4096] {
        let dev = LoopDevice::new(loop_dir(), 8 << 20, lbs);
        let what = format!("{} (block size {lbs})", dev.path.display());
        let f = open_file(&dev.path, false).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(f.is_block_device, "{what}");
        assert!(!f.readonly, "{what}");
        assert!(f.direct, "{what}: block devices take O_DIRECT");
        assert_eq!(f.size_bytes, 8 << 20, "{what}: BLKGETSIZE64");
        assert_eq!(f.logical_block_size, lbs, "{what}: BLKSSZGET");
        let fd = f.file.as_raw_fd();
        aligned_roundtrip(fd);
        // The data is on the device at the offset given: the backing file holds it.
        let mut ring = Ring::new(8).unwrap();
        ring.prep_fsync(fd, false, 3).unwrap();
        assert_eq!(complete_one(&mut ring, 3), 0, "{what}: fsync");
        let backing = std::fs::read(&dev.backing).unwrap();
        let expect: Vec<u8> = (0..8192).map(|i| (i % 253) as u8).collect();
        assert!(backing[4096..4096 + 8192] == expect[..], "{what}: backing file holds the written data");
        assert!(backing[..4096].iter().all(|&b| b == 0), "{what}: nothing written before the offset");
        // O_DIRECT really is on: I/O smaller than the logical block size is refused.
        if lbs > 512 {
            let mut small = AlignedBuf::new(512);
            assert_eq!(readv_one(&mut ring, fd, &[small.iovec()], 512), -libc::EINVAL, "{what}: sub-block read");
        }
        // Flush and zeroing reach a block device too.
        fallocate_zeroes_middle_block(fd, libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE, &what);
        fallocate_zeroes_middle_block(fd, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, &what);
        // A read past the end of a device is short (0 bytes), not an error.
        let mut past = AlignedBuf::new(4096);
        assert_eq!(readv_one(&mut ring, fd, &[past.iovec()], 8 << 20), 0, "{what}: read at the end");
    }
}

#[test]
fn open_file_on_a_loop_device_read_only() {
    let dev = LoopDevice::new(loop_dir(), 1 << 20, 512);
    std::fs::write(&dev.backing, vec![0x3cu8; 1 << 20]).unwrap();
    let f = open_file(&dev.path, true).unwrap();
    assert!(f.is_block_device && f.readonly && f.direct);
    assert_eq!(f.size_bytes, 1 << 20);
    let mut ring = Ring::new(8).unwrap();
    let mut buf = AlignedBuf::new(4096);
    assert_eq!(writev_one(&mut ring, f.file.as_raw_fd(), &[buf.iovec()], 0), -libc::EBADF);
    assert_eq!(readv_one(&mut ring, f.file.as_raw_fd(), &[buf.iovec()], 4096), 4096);
    assert!(buf.as_mut_slice().iter().all(|&x| x == 0x3c), "reads the backing file's contents");
}

#[test]
fn unsupported_error_message_is_clear() {
    let err = UringError::Unsupported { source: std::io::Error::from_raw_os_error(libc::EPERM) };
    let msg = err.to_string();
    assert!(msg.contains("io_uring is not available"), "{msg}");
    assert!(msg.contains("io_uring_disabled"), "{msg}");
}
