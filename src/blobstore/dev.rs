//! The blobstore's view of its base bdev: byte-addressed async I/O through an ordinary bdev
//! descriptor and this reactor's channel. This is the only place the blobstore meets the bdev
//! layer for its own I/O.

use super::format::BLOCK;
use super::load::{BlockRead, ReadFuture};
use crate::bdev::buf::DmaBuf;
use crate::bdev::{BdevChannel, BdevDesc, BdevIo, IoType};
use crate::framework::task::Slot;
use std::rc::Rc;

/// Reusable I/Os of the store's own base I/O, and the waiters of those in flight (by `ctx`).
#[derive(Default)]
struct IoCache {
    #[allow(clippy::vec_box)] // I/Os travel as boxes; these are the boxes, kept for reuse
    idle: Vec<Box<BdevIo>>,
    waiting: Vec<Option<Slot<(bool, i32)>>>,
    free: Vec<usize>,
}

/// The base device, on the store's reactor.
pub struct BaseDev {
    cache: Rc<std::cell::RefCell<IoCache>>,
    callback: crate::bdev::IoCallback,
    /// The open base bdev (writable, claimed by the store).
    pub desc: BdevDesc,
    /// This reactor's channel.
    pub chan: BdevChannel,
    /// Its block size.
    pub block_size: u64,
    /// Alignment its data buffers need.
    pub align: usize,
    /// Whether it has a volatile write cache (flush matters).
    pub write_cache: bool,
}

impl BaseDev {
    /// Wraps an open descriptor (on the reactor that will use it).
    pub fn new(desc: BdevDesc) -> Result<BaseDev, crate::bdev::BdevError> {
        let chan = desc.channel()?;
        let bdev = desc.bdev().clone();
        let cache: Rc<std::cell::RefCell<IoCache>> = Rc::default();
        let c = Rc::downgrade(&cache);
        // One callback for every I/O: it hands the result to the waiter `ctx` names.
        let callback: crate::bdev::IoCallback = Rc::new(move |io: Box<BdevIo>| {
            let Some(cache) = c.upgrade() else { return };
            let result = (io.succeeded(), io.errno());
            let slot = {
                let mut k = cache.borrow_mut();
                let i = io.ctx as usize;
                k.free.push(i);
                k.idle.push(io);
                k.waiting[i].take()
            };
            if let Some(s) = slot {
                s.fill(result);
            }
        });
        Ok(BaseDev {
            cache,
            callback,
            block_size: bdev.block_size() as u64,
            align: bdev.backend().buf_align().max(BLOCK),
            write_cache: bdev.backend().write_cache() && bdev.supports(IoType::Flush),
            chan,
            desc,
        })
    }

    /// The device's size in bytes now.
    pub fn size(&self) -> u64 {
        self.desc.bdev().size_bytes()
    }

    /// Runs one I/O of `len` bytes at byte `offset` on `iovs`; returns its errno on failure.
    ///
    /// # Safety
    /// Every iovec must stay valid (and untouched by others) until the returned future is done.
    pub async unsafe fn io(&self, io_type: IoType, offset: u64, len: u64, iovs: &[libc::iovec]) -> Result<(), i32> {
        // SAFETY: forwarded: the caller's promise covers these iovecs.
        unsafe { self.io_counted(io_type, offset, len, iovs, true).await }
    }

    /// [`BaseDev::io`], counted in the bdev's statistics or not.
    ///
    /// # Safety
    /// As for [`BaseDev::io`].
    async unsafe fn io_counted(
        &self,
        io_type: IoType,
        offset: u64,
        len: u64,
        iovs: &[libc::iovec],
        counted: bool,
    ) -> Result<(), i32> {
        if !offset.is_multiple_of(self.block_size) || !len.is_multiple_of(self.block_size) {
            return Err(libc::EINVAL);
        }
        let slot: Slot<(bool, i32)> = Slot::new();
        let mut io = {
            let mut k = self.cache.borrow_mut();
            let mut io = k.idle.pop().unwrap_or_else(|| BdevIo::new(self.callback.clone()));
            let i = match k.free.pop() {
                Some(i) => {
                    k.waiting[i] = Some(slot.clone());
                    i
                }
                None => {
                    k.waiting.push(Some(slot.clone()));
                    k.waiting.len() - 1
                }
            };
            io.ctx = i as u64;
            io
        };
        io.clear_iovs();
        io.set_uncounted(!counted);
        io.prepare(io_type, offset / self.block_size, len / self.block_size);
        for v in iovs {
            // SAFETY: the caller keeps every iovec valid until this future completes, and the
            // future completes only after the I/O's callback ran.
            unsafe { io.push_iov(v.iov_base.cast(), v.iov_len) };
        }
        self.chan.submit(io);
        match slot.await {
            (true, _) => Ok(()),
            (false, 0) => Err(libc::EIO),
            (false, e) => Err(e),
        }
    }

    /// Reads `len` bytes at `offset` into a new aligned buffer.
    pub async fn read_buf(&self, offset: u64, len: usize) -> Result<DmaBuf, i32> {
        let buf = DmaBuf::new(len, self.align).ok_or(libc::ENOMEM)?;
        let iov = libc::iovec { iov_base: buf.as_ptr().cast(), iov_len: len };
        // SAFETY: `buf` is owned here and outlives the awaited I/O.
        unsafe { self.io(IoType::Read, offset, len as u64, &[iov]).await? };
        Ok(buf)
    }

    /// Writes `data` (aligned) at `offset`.
    pub async fn write_buf(&self, offset: u64, data: &DmaBuf) -> Result<(), i32> {
        let iov = libc::iovec { iov_base: data.as_ptr().cast(), iov_len: data.len() };
        // SAFETY: `data` is borrowed for the whole awaited I/O and not written meanwhile.
        unsafe { self.io(IoType::Write, offset, data.len() as u64, &[iov]).await }
    }

    /// Writes `bytes` (copied into an aligned buffer) at `offset`.
    pub async fn write_bytes(&self, offset: u64, bytes: &[u8]) -> Result<(), i32> {
        let mut buf = DmaBuf::new(bytes.len(), self.align).ok_or(libc::ENOMEM)?;
        buf.as_mut_slice().copy_from_slice(bytes);
        self.write_buf(offset, &buf).await
    }

    /// Makes every completed write durable (a no-op without a volatile cache).
    pub async fn flush(&self) -> Result<(), i32> {
        if !self.write_cache {
            return Ok(());
        }
        // SAFETY: a flush carries no buffers.
        unsafe { self.io(IoType::Flush, 0, 0, &[]).await }
    }

    /// Locks `len` bytes at `offset` of the base (bdev LBA range lock): returns once every I/O
    /// submitted to that range before has completed; new I/O to it waits until the lock drops.
    pub async fn lock_range(&self, offset: u64, len: u64) -> crate::bdev::RangeLock {
        let slot: Slot<crate::bdev::RangeLock> = Slot::new();
        let s = slot.clone();
        self.chan.lock_range(offset / self.block_size, len / self.block_size, move |lock| s.fill(lock));
        slot.await
    }

    /// Deallocates `len` bytes at `offset` (they read back as zeroes), or writes zeroes where
    /// the device cannot unmap.
    pub async fn zero(&self, offset: u64, len: u64) -> Result<(), i32> {
        let bdev = self.desc.bdev();
        let kind = if bdev.supports(IoType::Unmap) {
            IoType::Unmap
        } else if bdev.supports(IoType::WriteZeroes) {
            IoType::WriteZeroes
        } else {
            let zeroes = DmaBuf::new(len as usize, self.align).ok_or(libc::ENOMEM)?;
            return self.write_buf(offset, &zeroes).await;
        };
        // SAFETY: no buffers.
        unsafe { self.io(kind, offset, len, &[]).await }
    }
}

/// Runs one I/O of `len` bytes at byte `offset` of `chan`'s bdev on `iovs` and waits for it
/// (another bdev than the base: an external snapshot, a shallow copy's destination).
///
/// # Safety
/// Every iovec must stay valid (and untouched by others) until the returned future is done.
pub async unsafe fn channel_io(
    chan: &BdevChannel,
    io_type: IoType,
    offset: u64,
    len: u64,
    iovs: &[libc::iovec],
) -> Result<(), i32> {
    let bs = chan.bdev().block_size() as u64;
    if !offset.is_multiple_of(bs) || !len.is_multiple_of(bs) {
        return Err(libc::EINVAL);
    }
    let slot: Slot<(bool, i32)> = Slot::new();
    let s = slot.clone();
    let mut io = BdevIo::new(Rc::new(move |io: Box<BdevIo>| s.fill((io.succeeded(), io.errno()))));
    io.prepare(io_type, offset / bs, len / bs);
    for v in iovs {
        // SAFETY: the caller keeps every iovec valid until this future completes, which is
        // after the I/O's callback ran.
        unsafe { io.push_iov(v.iov_base.cast(), v.iov_len) };
    }
    chan.submit(io);
    match slot.await {
        (true, _) => Ok(()),
        (false, e) => Err(e.max(libc::EIO)),
    }
}

impl BlockRead for BaseDev {
    fn read(&self, start: u64, count: u64) -> ReadFuture<'_> {
        Box::pin(async move {
            let buf = self.read_buf(start * BLOCK as u64, count as usize * BLOCK).await?;
            Ok(buf.as_slice().to_vec())
        })
    }

    /// Examine's look at a new bdev is not I/O its users asked for: it stays out of the
    /// bdev's statistics (tests and operators count their own reads).
    fn probe(&self, start: u64, count: u64) -> ReadFuture<'_> {
        Box::pin(async move {
            let len = count as usize * BLOCK;
            let buf = DmaBuf::new(len, self.align).ok_or(libc::ENOMEM)?;
            let iov = libc::iovec { iov_base: buf.as_ptr().cast(), iov_len: len };
            // SAFETY: `buf` is owned here and outlives the awaited read.
            unsafe { self.io_counted(IoType::Read, start * BLOCK as u64, len as u64, &[iov], false).await? };
            Ok(buf.as_slice().to_vec())
        })
    }
}
