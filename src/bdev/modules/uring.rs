//! `uring`: a bdev on a file or block device, through io_uring (`ferry-uring`).
//!
//! Registered under both `bdev_uring_create` and `bdev_aio_create` (SPDK's two file bdevs;
//! Ferry serves both with io_uring) and saved under the name it was created with. Each
//! reactor has its own ring; the ring's completion eventfd is one of the reactor's interrupt
//! sources, so a reactor waiting only for the disk sleeps. O_DIRECT is used when the file
//! system allows it; buffers that do not meet its alignment go through a bounce buffer.

use super::{delete_bdev, DeleteParams};
use crate::bdev::buf::DmaBuf;
use crate::bdev::{registry, BackendChannel, Bdev, BdevBackend, BdevError, BdevIo, BdevProps, IoStatus, IoType};
use crate::framework::{self, InterruptSource, PollStatus, Poller};
use crate::rpc::spdk_params::ParamType::Bool;
use crate::rpc::{parse, RpcError, RpcMethod, SpdkParam};
use ferry_uring::{open_file, Ring};
use serde::Deserialize;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;
use uuid::Uuid;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The module's RPC methods.
pub const METHODS: &[RpcMethod] = &[
    RpcMethod::runtime("bdev_uring_create", bdev_uring_create),
    RpcMethod::runtime("bdev_uring_delete", bdev_uring_delete),
    // RWF_NOWAIT is how SPDK's libaio module avoids blocking; io_uring never blocks the reactor.
    RpcMethod::runtime("bdev_aio_create", bdev_aio_create).accepting(&[SpdkParam::any("nowait", Bool)]),
    RpcMethod::runtime("bdev_aio_delete", bdev_aio_delete),
    RpcMethod::runtime("bdev_aio_rescan", bdev_aio_rescan),
];

/// Submission-queue entries per reactor ring.
const RING_ENTRIES: u32 = 256;

/// Which RPC created the bdev (it is saved under the same one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Uring,
    Aio,
}

struct UringBackend {
    file: File,
    path: PathBuf,
    flavor: Flavor,
    direct: bool,
    readonly: bool,
    is_block_device: bool,
    /// Alignment O_DIRECT needs for buffers, offsets and lengths (1 when buffered).
    align: usize,
    block_size_override: Option<u32>,
    fallocate: bool,
    /// The bdev's block size (for allocation runs, which the file system answers in bytes).
    block_size: u32,
}

impl BdevBackend for UringBackend {
    fn module(&self) -> &'static str {
        "uring"
    }

    fn product_name(&self) -> &'static str {
        match self.flavor {
            Flavor::Uring => "URING bdev",
            Flavor::Aio => "AIO disk",
        }
    }

    fn supports(&self, io_type: IoType) -> bool {
        match io_type {
            IoType::Read | IoType::Flush | IoType::Reset => true,
            IoType::Write => !self.readonly,
            IoType::Unmap | IoType::WriteZeroes => !self.readonly && self.fallocate,
        }
    }

    fn create_channel(&self, _bdev: &Bdev) -> Result<Box<dyn BackendChannel>, BdevError> {
        UringChannel::new(self.file.as_raw_fd(), self.align, self.is_block_device).map(|c| Box::new(c) as _)
    }

    fn config(&self, bdev: &Bdev) -> Option<(&'static str, Value)> {
        let mut params = json!({ "name": bdev.name(), "filename": self.path.to_string_lossy() });
        if let Some(bs) = self.block_size_override {
            params["block_size"] = json!(bs);
        }
        match self.flavor {
            Flavor::Uring => {
                params["uuid"] = json!(bdev.uuid().to_string());
                Some(("bdev_uring_create", params))
            }
            Flavor::Aio => {
                params["readonly"] = json!(self.readonly);
                params["uuid"] = json!(bdev.uuid().to_string());
                Some(("bdev_aio_create", params))
            }
        }
    }

    fn driver_specific(&self) -> Option<(&'static str, Value)> {
        let key = match self.flavor {
            Flavor::Uring => "uring",
            Flavor::Aio => "aio",
        };
        Some((
            key,
            json!({
                "filename": self.path.to_string_lossy(),
                "block_size_override": self.block_size_override.is_some(),
                "readonly": self.readonly,
                "fallocate": self.fallocate,
                "direct_io": self.direct,
            }),
        ))
    }

    fn write_cache(&self) -> bool {
        true
    }

    fn buf_align(&self) -> usize {
        self.align
    }

    /// Holes of a regular file are deallocated blocks (they read as zeroes): `lseek` with
    /// SEEK_DATA / SEEK_HOLE, a metadata call that does no data I/O. Block devices: unknown.
    fn allocation_run(&self, offset_blocks: u64, max_blocks: u64) -> Option<(bool, u64)> {
        if self.is_block_device {
            return None;
        }
        allocation_run(self.file.as_raw_fd(), self.block_size as u64, offset_blocks, max_blocks)
    }

    /// The size follows the file's (`bdev_aio_rescan` measures it); nothing to change here.
    fn resize(&self, _num_blocks: u64) -> Result<(), BdevError> {
        Ok(())
    }
}

/// An I/O whose buffers needed bouncing; its heap address is the ring's user_data (tag bit 0).
struct Bounced {
    io: Box<BdevIo>,
    buf: DmaBuf,
    iov: libc::iovec,
}

const BOUNCED_TAG: u64 = 1;

struct ChannelState {
    ring: Ring,
    fd: RawFd,
    align: usize,
    is_block_device: bool,
    /// I/O that found the ring full, in arrival order.
    waiting: VecDeque<Box<BdevIo>>,
    /// Whether the kernel signals the completion eventfd (only when we may go to sleep).
    eventfd_on: bool,
}

struct UringChannel {
    state: Rc<RefCell<ChannelState>>,
    _poller: Poller,
    _interrupt: InterruptSource,
    _eventfd: EventFd,
}

impl UringChannel {
    fn new(fd: RawFd, align: usize, is_block_device: bool) -> Result<Self, BdevError> {
        let ring = Ring::new(RING_ENTRIES)?;
        let eventfd = EventFd::new(EFD_NONBLOCK).map_err(|e| BdevError::os("creating the completion eventfd", e))?;
        ring.register_eventfd(eventfd.as_raw_fd())?;
        let interrupt = framework::register_interrupt(eventfd.as_raw_fd())
            .map_err(|e| BdevError::os("adding the completion eventfd to the reactor", e))?;
        let state = Rc::new(RefCell::new(ChannelState {
            ring,
            fd,
            align,
            is_block_device,
            waiting: VecDeque::new(),
            eventfd_on: true,
        }));
        let poll_state = state.clone();
        let poller =
            framework::poller_register("uring_completions", Duration::ZERO, move || poll_state.borrow_mut().poll());
        Ok(UringChannel { state, _poller: poller, _interrupt: interrupt, _eventfd: eventfd })
    }
}

impl BackendChannel for UringChannel {
    fn submit(&self, io: Box<BdevIo>) {
        let mut st = self.state.borrow_mut();
        if !st.waiting.is_empty() {
            st.waiting.push_back(io);
            return;
        }
        if let Err(io) = st.queue(io) {
            st.waiting.push_back(io);
        }
    }
}

fn is_aligned(io: &BdevIo, align: usize) -> bool {
    align <= 1
        || io.iovs().iter().all(|v| (v.iov_base as usize).is_multiple_of(align) && v.iov_len.is_multiple_of(align))
}

impl ChannelState {
    /// Puts `io` on the ring (not yet submitted); gives it back when the ring is full.
    fn queue(&mut self, io: Box<BdevIo>) -> Result<(), Box<BdevIo>> {
        let offset = io.offset_bytes();
        let len = io.len_bytes();
        let fd = self.fd;
        match io.io_type {
            IoType::Read | IoType::Write if !is_aligned(&io, self.align) => self.queue_bounced(io),
            IoType::Read | IoType::Write => {
                let (iovs, n) = (io.iovs().as_ptr(), io.iovs().len() as u32);
                let write = io.io_type == IoType::Write;
                let ptr = Box::into_raw(io);
                // SAFETY: the iovec array lives in the BdevIo's own Vec, which stays allocated
                // and unchanged until we rebuild the Box on completion; the buffers it points
                // to are the submitter's, valid until completion (BdevIo::push_iov's contract).
                let queued = unsafe {
                    if write {
                        self.ring.prep_writev(fd, iovs, n, offset, ptr as u64)
                    } else {
                        self.ring.prep_readv(fd, iovs, n, offset, ptr as u64)
                    }
                };
                queued.map_err(|_| {
                    // SAFETY: the ring refused the entry, so it kept no copy of `ptr`.
                    unsafe { reclaim(ptr) }
                })
            }
            IoType::Flush => {
                let ptr = Box::into_raw(io);
                self.ring.prep_fsync(fd, true, ptr as u64).map_err(|_| {
                    // SAFETY: the ring refused the entry, so it kept no copy of `ptr`.
                    unsafe { reclaim(ptr) }
                })
            }
            IoType::Unmap | IoType::WriteZeroes => {
                let mode = if io.io_type == IoType::WriteZeroes && self.is_block_device {
                    libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
                } else {
                    // On files a punched hole reads back as zeroes: right for both.
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
                };
                let ptr = Box::into_raw(io);
                self.ring.prep_fallocate(fd, mode, offset, len, ptr as u64).map_err(|_| {
                    // SAFETY: the ring refused the entry, so it kept no copy of `ptr`.
                    unsafe { reclaim(ptr) }
                })
            }
            IoType::Reset => {
                io.complete(IoStatus::Success);
                Ok(())
            }
        }
    }

    fn queue_bounced(&mut self, io: Box<BdevIo>) -> Result<(), Box<BdevIo>> {
        let len = io.len_bytes() as usize;
        let Some(mut buf) = DmaBuf::new(len, self.align.max(4096)) else {
            io.fail(libc::ENOMEM);
            return Ok(());
        };
        let write = io.io_type == IoType::Write;
        if write {
            io.copy_from_iovs(buf.as_mut_slice());
        }
        let iov = libc::iovec { iov_base: buf.as_ptr().cast(), iov_len: len };
        let offset = io.offset_bytes();
        let bounced = Box::into_raw(Box::new(Bounced { io, buf, iov }));
        let user_data = bounced as u64 | BOUNCED_TAG;
        // SAFETY: `bounced` stays allocated (and its iovec and buffer with it) until its
        // completion is reaped; the buffer is ours alone.
        let queued = unsafe {
            let iov = &raw const (*bounced).iov;
            if write {
                self.ring.prep_writev(self.fd, iov, 1, offset, user_data)
            } else {
                self.ring.prep_readv(self.fd, iov, 1, offset, user_data)
            }
        };
        // SAFETY: a refused entry leaves `bounced` ours; we unbox and return the I/O.
        queued.map_err(|_| unsafe { Box::from_raw(bounced) }.io)
    }

    /// Reaps completions, retries waiting I/O, submits the batch. While completions keep
    /// coming the kernel is told not to signal the eventfd; when a poll finds none the signal
    /// is turned back on and the ring looked at once more, so the reactor may sleep safely.
    fn poll(&mut self) -> PollStatus {
        let mut reaped = self.ring.reap(complete);
        if reaped > 0 && self.eventfd_on {
            self.ring.set_eventfd_enabled(false);
            self.eventfd_on = false;
        } else if reaped == 0 && !self.eventfd_on {
            self.ring.set_eventfd_enabled(true);
            self.eventfd_on = true;
            reaped = self.ring.reap(complete);
        }
        let mut moved = 0;
        while let Some(io) = self.waiting.pop_front() {
            if let Err(io) = self.queue(io) {
                self.waiting.push_front(io);
                break;
            }
            moved += 1;
        }
        let submitted = match self.ring.submit() {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "io_uring submit failed");
                0
            }
        };
        PollStatus::from(reaped + moved + submitted > 0)
    }
}

/// `lseek(fd, offset, whence)`: the new offset, or the errno.
fn seek(fd: RawFd, offset: u64, whence: i32) -> Result<u64, i32> {
    // SAFETY: lseek on our own open fd; it reads no user memory. The file position it moves
    // is not used by the ring, whose operations carry their own offsets.
    let at = unsafe { libc::lseek(fd, offset as libc::off_t, whence) };
    if at < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO))
    } else {
        Ok(at as u64)
    }
}

/// Whether `bs`-byte blocks from `offset_blocks` of the file are backed (any byte of a block
/// in a data extent) or a hole, and for how many blocks (1 ..= `max_blocks`). None if the
/// file system cannot say.
fn allocation_run(fd: RawFd, bs: u64, offset_blocks: u64, max_blocks: u64) -> Option<(bool, u64)> {
    let start = offset_blocks.checked_mul(bs)?;
    let data = match seek(fd, start, libc::SEEK_DATA) {
        Ok(at) => at,
        // No data from here to the end of the file: all hole.
        Err(libc::ENXIO) => return Some((false, max_blocks)),
        Err(errno) => {
            tracing::debug!(errno, "SEEK_DATA failed: allocation unknown");
            return None;
        }
    };
    let first_data_block = data / bs;
    if first_data_block > offset_blocks {
        return Some((false, (first_data_block - offset_blocks).min(max_blocks)));
    }
    // Data within the first block: the run lasts to the block holding the next hole's start
    // (a partly backed block counts as backed).
    let hole = seek(fd, data, libc::SEEK_HOLE).ok()?;
    let end_block = hole.div_ceil(bs);
    Some((true, end_block.saturating_sub(offset_blocks).clamp(1, max_blocks)))
}

/// Takes back an I/O whose ring entry was refused.
///
/// # Safety
/// `ptr` must come from `Box::into_raw` and no ring entry may hold it.
unsafe fn reclaim(ptr: *mut BdevIo) -> Box<BdevIo> {
    // SAFETY: the caller guarantees `ptr` is an unowned Box pointer.
    unsafe { Box::from_raw(ptr) }
}

/// Completes the I/O behind `user_data` with the kernel's result.
fn complete(user_data: u64, res: i32) {
    let io = if user_data & BOUNCED_TAG != 0 {
        // SAFETY: tagged user_data is a `Box<Bounced>` leaked in queue_bounced, reaped once.
        let bounced = unsafe { Box::from_raw((user_data & !BOUNCED_TAG) as *mut Bounced) };
        let Bounced { mut io, buf, .. } = *bounced;
        if io.io_type == IoType::Read && res >= 0 {
            io.copy_to_iovs(buf.as_slice());
        }
        io
    } else {
        // SAFETY: untagged user_data is a `Box<BdevIo>` leaked in `queue`, reaped once.
        unsafe { Box::from_raw(user_data as *mut BdevIo) }
    };
    let expected = if io.io_type.has_data() { io.len_bytes() } else { 0 };
    if res < 0 {
        tracing::debug!(errno = -res, io_type = ?io.io_type, "uring I/O failed");
        io.fail(-res);
    } else if res as u64 != expected {
        tracing::warn!(got = res, expected, "short uring transfer");
        io.fail(libc::EIO);
    } else {
        io.complete(IoStatus::Success);
    }
}

/// Creates a file bdev.
fn create(
    name: &str,
    filename: &str,
    block_size: Option<u32>,
    readonly: bool,
    uuid: Option<Uuid>,
    flavor: Flavor,
) -> Result<Bdev, BdevError> {
    registry::validate_name(name)?;
    if registry::get(name).is_some() {
        return Err(BdevError::AlreadyExists(name.to_string()));
    }
    let opened = open_file(std::path::Path::new(filename), readonly)?;
    let logical = opened.logical_block_size.max(512);
    let bs = match block_size {
        None | Some(0) => logical,
        Some(bs) if bs < logical && opened.direct => {
            return Err(BdevError::InvalidParam(format!(
                "block_size {bs} is smaller than {filename}'s logical block size {logical}"
            )))
        }
        Some(bs) => bs,
    };
    let num_blocks = opened.size_bytes / bs as u64;
    if num_blocks == 0 {
        return Err(BdevError::InvalidParam(format!(
            "{filename} holds {} bytes, less than one {bs}-byte block",
            opened.size_bytes
        )));
    }
    let fallocate = opened.is_block_device || probe_fallocate(&opened.file, opened.size_bytes, readonly);
    let backend = UringBackend {
        path: PathBuf::from(filename),
        flavor,
        direct: opened.direct,
        readonly,
        is_block_device: opened.is_block_device,
        align: if opened.direct { logical as usize } else { 1 },
        block_size_override: block_size.filter(|b| *b != 0),
        fallocate,
        block_size: bs,
        file: opened.file,
    };
    registry::register(BdevProps { name: name.to_string(), uuid, block_size: bs, num_blocks }, Box::new(backend))
}

/// Whether the file system punches holes: punch one past the end (no data there to lose).
fn probe_fallocate(file: &File, size: u64, readonly: bool) -> bool {
    if readonly {
        return false;
    }
    // SAFETY: fallocate on our own fd, past the end of the file with KEEP_SIZE: no data
    // changes, only whether the call is supported is learnt.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            size as libc::off_t,
            4096,
        )
    };
    rc == 0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UringCreate {
    filename: String,
    name: String,
    block_size: Option<u32>,
    uuid: Option<Uuid>,
}

fn bdev_uring_create(params: Option<Value>) -> Result<Value, RpcError> {
    let p: UringCreate = parse(params)?;
    let bdev = create(&p.name, &p.filename, p.block_size, false, p.uuid, Flavor::Uring)?;
    Ok(json!(bdev.name()))
}

fn bdev_uring_delete(params: Option<Value>) -> Result<Value, RpcError> {
    delete_bdev(params, "uring")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AioCreate {
    filename: String,
    name: String,
    block_size: Option<u32>,
    #[serde(default)]
    readonly: bool,
    uuid: Option<Uuid>,
    /// Accepted for SPDK compatibility: io_uring needs no fallocate hint.
    #[serde(default)]
    fallocate: bool,
}

fn bdev_aio_create(params: Option<Value>) -> Result<Value, RpcError> {
    let p: AioCreate = parse(params)?;
    let _ = p.fallocate;
    let bdev = create(&p.name, &p.filename, p.block_size, p.readonly, p.uuid, Flavor::Aio)?;
    Ok(json!(bdev.name()))
}

fn bdev_aio_delete(params: Option<Value>) -> Result<Value, RpcError> {
    delete_bdev(params, "uring")
}

fn bdev_aio_rescan(params: Option<Value>) -> Result<Value, RpcError> {
    let p: DeleteParams = parse(params)?;
    let bdev = registry::get(&p.name).filter(|b| b.module() == "uring").ok_or(BdevError::NotFound(p.name))?;
    let filename = bdev
        .backend()
        .driver_specific()
        .and_then(|(_, v)| v["filename"].as_str().map(str::to_string))
        .unwrap_or_default();
    let opened = open_file(std::path::Path::new(&filename), true).map_err(BdevError::from)?;
    let blocks = opened.size_bytes / bdev.block_size() as u64;
    if blocks != bdev.num_blocks() {
        bdev.resize(blocks)?;
    }
    Ok(json!(true))
}
