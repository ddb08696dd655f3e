//! `BdevIo`: one block I/O, its scatter-gather list, its status and its completion.
//!
//! An I/O is a `Box<BdevIo>` owned by whoever holds it: the submitter fills it and hands it
//! to a [`BdevChannel`](super::BdevChannel); the module completes it with
//! [`BdevIo::complete`], which queues it on the thread's completion queue; the reactor drains
//! that queue and calls the I/O's callback with the box, so the submitter can reuse it (no
//! allocation per I/O in steady state). Completions never run inside `submit`, so a callback
//! that resubmits cannot recurse without bound.

use super::channel::ChannelInner;
use crate::framework::{self, PollStatus, Poller};
use std::cell::{Cell, RefCell};
use std::ptr::NonNull;
use std::rc::Rc;
use std::time::Duration;

/// The kinds of I/O a bdev may support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoType {
    /// Read blocks into the iovecs.
    Read,
    /// Write blocks from the iovecs.
    Write,
    /// Make written data durable.
    Flush,
    /// Deallocate blocks (reads after it return zeroes on every Ferry bdev).
    Unmap,
    /// Write zeroes to blocks without a data buffer.
    WriteZeroes,
    /// Abort everything in flight and reset the device.
    Reset,
}

impl IoType {
    /// Every I/O type, in SPDK's listing order.
    pub const ALL: [IoType; 6] =
        [IoType::Read, IoType::Write, IoType::Unmap, IoType::Flush, IoType::Reset, IoType::WriteZeroes];

    /// SPDK's name for the type in `supported_io_types`.
    pub fn spdk_name(self) -> &'static str {
        match self {
            IoType::Read => "read",
            IoType::Write => "write",
            IoType::Flush => "flush",
            IoType::Unmap => "unmap",
            IoType::WriteZeroes => "write_zeroes",
            IoType::Reset => "reset",
        }
    }

    /// Whether the I/O moves data through iovecs.
    pub fn has_data(self) -> bool {
        matches!(self, IoType::Read | IoType::Write)
    }

    /// Whether the I/O changes the medium.
    pub fn is_write(self) -> bool {
        matches!(self, IoType::Write | IoType::Unmap | IoType::WriteZeroes)
    }
}

/// How an I/O ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoStatus {
    /// Not completed yet.
    Pending,
    /// Done.
    Success,
    /// Failed; `BdevIo::errno` may say why.
    Failed,
    /// Aborted by a reset or a removal.
    Aborted,
}

/// Called with the completed I/O, on the thread that submitted it.
pub type IoCallback = Rc<dyn Fn(Box<BdevIo>)>;

/// One block I/O. See the module documentation for its life cycle.
pub struct BdevIo {
    /// What to do.
    pub io_type: IoType,
    /// First block.
    pub offset_blocks: u64,
    /// Number of blocks.
    pub num_blocks: u64,
    /// The submitter's tag, untouched by the bdev layer.
    pub ctx: u64,
    iovs: Vec<libc::iovec>,
    status: IoStatus,
    errno: i32,
    callback: Option<IoCallback>,
    pub(crate) block_size: u32,
    pub(crate) submit_tick: u64,
    pub(crate) complete_tick: u64,
    pub(crate) channel: Option<Rc<ChannelInner>>,
    uncounted: bool,
    /// The range lock it is submitted under (0: none): that lock does not hold it back.
    pub(crate) lock_id: u64,
    /// Epoch parity it is counted in flight under (`range_lock::NOT_COUNTED`: not counted).
    pub(crate) parity: u8,
    /// The level above the one it is submitted at now, if a stacked bdev forwarded it (see
    /// [`BdevChannel::forward`](super::BdevChannel::forward)): kept inline, as nearly every
    /// forwarded I/O is forwarded once.
    frame: Frame,
    /// Levels above `frame` (stacks of several forwarding bdevs), innermost last.
    outer_frames: Vec<Frame>,
    /// `complete_tick` already holds this life's completion time: the base's completion of a
    /// forwarded I/O, reused when its own level completes inline right after (one clock read
    /// fewer per level).
    completed_at_set: bool,
    /// A read's data still to copy in before its callback runs (start, length): see
    /// [`BdevIo::complete_with_copy`].
    deferred_copy: Option<(*const u8, usize)>,
    /// The base level of an I/O its stacked bdev remapped (see
    /// [`BdevChannel::remap`](super::BdevChannel::remap)), a [`RemapBase`] in two fields: the
    /// base's channel ...
    remap_channel: Option<NonNull<ChannelInner>>,
    /// ... and its flags (kept apart: one word with the flags in the address's low bits
    /// measured 0.941-0.947 against 0.960-0.962 in paired runs, though a build's code layout
    /// alone moves that bench by about 2%; docs/performance.md, Logical volumes) ...
    remap_flags: u8,
    /// ... and the upper level's offset, given back when it completes.
    remap_offset: u64,
}

/// The base channel of a remapped I/O: its address, the parity the I/O is counted in flight
/// under there, and whether the I/O holds a reference of its own to it.
///
/// Usually the I/O holds none: the upper level's channel, which the I/O holds until it
/// completes, holds the base channel it remaps onto (see `ChannelInner::remapped`). That
/// spares a reference counted per I/O, which wrote the base channel's counts (a line of their
/// own) at the remap and at completion: about 1% of a thick lvol's 4 KiB writes
/// (docs/performance.md, Logical volumes). An I/O with no upper channel (built by a module
/// itself) or remapped onto a second base holds its own reference.
#[derive(Clone, Copy)]
pub(crate) struct RemapBase {
    channel: NonNull<ChannelInner>,
    /// The parity (bit 0) and [`Self::OWNED`].
    flags: u8,
}

impl RemapBase {
    const PARITY: u8 = 1;
    const OWNED: u8 = 2;

    /// `base`, held by the I/O's upper channel, counted under `parity` (0 or 1).
    #[inline]
    pub(crate) fn held(base: &ChannelInner, parity: u8) -> Self {
        debug_assert!(parity <= 1, "an epoch's parity");
        RemapBase { channel: NonNull::from(base), flags: parity & Self::PARITY }
    }

    /// `base`, with the I/O's own reference to it, counted under `parity` (0 or 1).
    pub(crate) fn owned(base: Rc<ChannelInner>, parity: u8) -> Self {
        debug_assert!(parity <= 1, "an epoch's parity");
        // SAFETY: `Rc::into_raw` never gives a null pointer.
        let channel = unsafe { NonNull::new_unchecked(Rc::into_raw(base).cast_mut()) };
        RemapBase { channel, flags: (parity & Self::PARITY) | Self::OWNED }
    }

    /// Whether the I/O's upper channel holds the base channel (`ChannelInner::remapped`).
    #[inline]
    pub(crate) fn is_held(self) -> bool {
        self.flags & Self::OWNED == 0
    }

    /// The base channel.
    ///
    /// # Safety
    /// The I/O this was made for has not completed yet, and its upper channel (the one it was
    /// submitted on, if any) is still held: one of them holds the base channel.
    #[inline]
    pub(crate) unsafe fn channel<'a>(self) -> &'a ChannelInner {
        // SAFETY: the address of a live channel (the caller's contract).
        unsafe { self.channel.as_ref() }
    }

    /// Records `io`, remapped onto this base not held by its upper channel `upper` (if any),
    /// at both levels.
    ///
    /// # Safety
    /// As [`Self::channel`].
    #[cold]
    #[inline(never)]
    unsafe fn account_unheld(self, upper: Option<&ChannelInner>, io: &BdevIo) {
        // SAFETY: the caller's contract.
        let base = unsafe { self.channel() };
        match upper {
            Some(upper) => ChannelInner::account_in([base, upper], io),
            None => base.account(io),
        }
    }

    /// Ends the I/O's base level: uncounts it there and drops its own reference, if any.
    ///
    /// # Safety
    /// As [`Self::channel`]; called once, after which the base channel is not used.
    #[inline]
    pub(crate) unsafe fn end(self) {
        // SAFETY: the caller's contract.
        let base = unsafe { self.channel() };
        base.locks().uncount(self.flags & Self::PARITY);
        // SAFETY: the caller's contract (its one end).
        unsafe { self.release() };
    }

    /// Gives back the I/O's own reference to the base channel, if it holds one.
    ///
    /// # Safety
    /// Called once; the base channel is not used through this afterwards.
    #[inline]
    unsafe fn release(self) {
        if !self.is_held() {
            // SAFETY: made by `Rc::into_raw` in `owned`, given back once (the caller's contract).
            drop(unsafe { Rc::from_raw(self.channel.as_ptr().cast_const()) });
        }
    }
}

impl Drop for BdevIo {
    fn drop(&mut self) {
        // Dropped on its base level (a module's bug, or a reactor going away): only its own
        // reference to the base channel is given back; the count there stays (a range lock on
        // the base would wait for it forever rather than run under an I/O never known done).
        if let Some(base) = self.take_remap_base() {
            // SAFETY: never given back before: the I/O's end takes its remap base first.
            unsafe { base.release() };
        }
    }
}

/// What a stacked bdev's level of an I/O was when the module forwarded the I/O itself to its
/// base: restored by [`BdevIo::unforward`] on the way back. The submission time is not saved:
/// both levels share it (the forward happens within the upper level's submission).
///
/// Saved and restored field by field, never moved whole: a move of the struct through the
/// stack made the compiler load 16 bytes across two earlier 16-byte stores, a store-forwarding
/// failure that waits for the whole store buffer (a malloc write's 4 KiB copy included).
#[derive(Default)]
struct Frame {
    /// Whether it holds a level.
    active: bool,
    callback: Option<IoCallback>,
    channel: Option<Rc<ChannelInner>>,
    offset_blocks: u64,
    num_blocks: u64,
    ctx: u64,
    lock_id: u64,
    block_size: u32,
    parity: u8,
}

impl BdevIo {
    /// A new I/O that calls `callback` when it completes.
    pub fn new(callback: IoCallback) -> Box<Self> {
        Box::new(BdevIo {
            io_type: IoType::Read,
            offset_blocks: 0,
            num_blocks: 0,
            ctx: 0,
            iovs: Vec::new(),
            status: IoStatus::Pending,
            errno: 0,
            callback: Some(callback),
            block_size: 0,
            submit_tick: 0,
            complete_tick: 0,
            channel: None,
            uncounted: false,
            lock_id: 0,
            parity: super::range_lock::NOT_COUNTED,
            frame: Frame::default(),
            outer_frames: Vec::new(),
            completed_at_set: false,
            deferred_copy: None,
            remap_channel: None,
            remap_flags: 0,
            remap_offset: 0,
        })
    }

    /// Keeps this I/O out of the bdev's statistics: a probe the system makes of its own
    /// accord (examine looking for an lvstore), not I/O anyone asked for.
    pub fn set_uncounted(&mut self, uncounted: bool) {
        self.uncounted = uncounted;
    }

    /// Sets type and range, keeps the iovecs.
    pub fn prepare(&mut self, io_type: IoType, offset_blocks: u64, num_blocks: u64) {
        self.io_type = io_type;
        self.offset_blocks = offset_blocks;
        self.num_blocks = num_blocks;
        self.status = IoStatus::Pending;
        self.errno = 0;
        if self.frame.active {
            // Only an I/O given back mid-way (a module's error path) still has frames.
            self.frame = Frame::default();
            self.outer_frames.clear();
        }
        self.completed_at_set = false;
    }

    /// Sets the block size as a channel's submit does (for I/O a module builds and hands to
    /// another module directly, and tests).
    pub(crate) fn set_block_size(&mut self, block_size: u32) {
        self.block_size = block_size;
    }

    /// Drops the data segments.
    pub fn clear_iovs(&mut self) {
        self.iovs.clear();
    }

    /// Appends a data segment.
    ///
    /// # Safety
    /// `base..base+len` must stay valid for reads and writes, and must not be touched by
    /// anyone else, from submission until the I/O's callback runs: the module reads or writes
    /// it directly (zero copy), possibly from the kernel (io_uring) or a device.
    pub unsafe fn push_iov(&mut self, base: *mut u8, len: usize) {
        self.iovs.push(libc::iovec { iov_base: base.cast(), iov_len: len });
    }

    /// Replaces the data segments with those `fill` appends to the emptied vector: a caller
    /// translating a request's buffers writes them in place rather than into a scratch vector
    /// it then copies. Returns what `fill` returns; on false the I/O must not be submitted.
    ///
    /// # Safety
    /// As for [`Self::push_iov`], for every segment `fill` appends.
    #[inline]
    pub unsafe fn set_iovs_with(&mut self, fill: impl FnOnce(&mut Vec<libc::iovec>) -> bool) -> bool {
        self.iovs.clear();
        fill(&mut self.iovs)
    }

    /// Exchanges the I/O's segment vector with `iovs`: a submitter that keeps its own segments
    /// (a SCSI task) lends them to the I/O without copying, and takes them back the same way
    /// when the I/O completes.
    ///
    /// # Safety
    /// As for [`Self::push_iov`], for every segment in `iovs`.
    pub unsafe fn swap_iovs(&mut self, iovs: &mut Vec<libc::iovec>) {
        std::mem::swap(&mut self.iovs, iovs);
    }

    /// The data segments.
    pub fn iovs(&self) -> &[libc::iovec] {
        &self.iovs
    }

    /// Total bytes in the data segments.
    pub fn iov_bytes(&self) -> u64 {
        self.iovs.iter().map(|v| v.iov_len as u64).sum()
    }

    /// The block size of the bdev it was submitted to (set at submission).
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Byte offset on the bdev.
    pub fn offset_bytes(&self) -> u64 {
        self.offset_blocks * self.block_size as u64
    }

    /// Byte length on the bdev.
    pub fn len_bytes(&self) -> u64 {
        self.num_blocks * self.block_size as u64
    }

    /// Ticks from submission to completion (valid in the callback).
    pub fn latency_ticks(&self) -> u64 {
        self.complete_tick.wrapping_sub(self.submit_tick)
    }

    /// The tick at which it completed (valid in the callback).
    pub fn complete_tick(&self) -> u64 {
        self.complete_tick
    }

    /// How it ended.
    pub fn status(&self) -> IoStatus {
        self.status
    }

    /// The errno behind a failure (0 when none was given).
    pub fn errno(&self) -> i32 {
        self.errno
    }

    /// Whether it succeeded.
    pub fn succeeded(&self) -> bool {
        self.status == IoStatus::Success
    }

    /// Completes the I/O: it is queued and its callback runs from the reactor loop.
    pub fn complete(mut self: Box<Self>, status: IoStatus) {
        self.status = status;
        // It completes later, from the queue: that is its completion time, whatever a base
        // it was forwarded to said.
        self.completed_at_set = false;
        COMPLETIONS.with(|q| q.borrow_mut().push(self));
    }

    /// Completes a read successfully, its data still to be copied from `src` (`len` bytes)
    /// into the iovecs: the completion queue's drain runs the deferred copies of its batch
    /// back to back, each starting to fetch the next one's source, before any callback, so
    /// copies out of memory that is not in cache overlap instead of each waiting for its own
    /// misses (a RAM disk's random reads).
    ///
    /// # Safety
    /// `src..src+len` must stay readable until the callback runs: it belongs to the channel
    /// this I/O was submitted on (the I/O holds that channel until then).
    pub(crate) unsafe fn complete_with_copy(mut self: Box<Self>, src: *const u8, len: usize) {
        self.deferred_copy = Some((src, len));
        DEFERRED_COPIES.with(|d| d.set(true));
        self.complete(IoStatus::Success);
    }

    /// Completes the I/O and runs its callback at once, skipping the completion queue.
    ///
    /// Only for a module finishing a parent I/O from inside the completion callback of its
    /// last child (a virtual bdev), or from its own poller (completions handed over by another
    /// library's threads): the reactor loop is below, and anything the callback submits
    /// completes through the queue or a later poll, so this cannot recurse. Never from
    /// `submit`.
    pub fn complete_inline(mut self: Box<Self>, status: IoStatus) {
        self.status = status;
        self.run_callback();
    }

    /// Sets the errno a failure reports (before [`BdevIo::complete`] or
    /// [`BdevIo::complete_inline`] with `Failed`).
    pub fn set_errno(&mut self, errno: i32) {
        self.errno = errno;
    }

    /// Completes the I/O as failed with `errno`.
    pub fn fail(mut self: Box<Self>, errno: i32) {
        self.errno = errno;
        self.complete(IoStatus::Failed);
    }

    /// Copies `data` into the iovecs (for modules that produce data in memory).
    pub fn copy_to_iovs(&mut self, data: &[u8]) {
        // SAFETY: the submitter guaranteed (push_iov's contract) that every iovec is valid
        // for writes for the I/O's lifetime, and `data` is the module's own memory.
        unsafe { super::buf::copy_to_iovecs(&self.iovs, data) };
    }

    /// Copies the iovecs' contents into `out` (for modules that consume data in memory).
    pub fn copy_from_iovs(&self, out: &mut [u8]) {
        // SAFETY: as in copy_to_iovs, every iovec is valid for reads for the I/O's lifetime.
        unsafe { super::buf::copy_from_iovecs(&self.iovs, out) };
    }

    /// Saves this level of the I/O and makes it an I/O of `offset_blocks` of a bdev with
    /// `block_size`-byte blocks that calls `on_done` (see [`BdevChannel::forward`]).
    ///
    /// [`BdevChannel::forward`]: super::BdevChannel::forward
    #[inline]
    pub(crate) fn push_frame(&mut self, offset_blocks: u64, block_size: u32, on_done: IoCallback) {
        if self.frame.active {
            self.outer_frames.push(std::mem::take(&mut self.frame));
        }
        let f = &mut self.frame;
        f.active = true;
        f.callback = self.callback.replace(on_done);
        f.channel = self.channel.take();
        f.offset_blocks = self.offset_blocks;
        f.num_blocks = self.num_blocks;
        f.ctx = self.ctx;
        f.lock_id = self.lock_id;
        f.block_size = self.block_size;
        f.parity = self.parity;
        self.offset_blocks = offset_blocks;
        if block_size != self.block_size {
            // A base with other block sizes sees the same bytes; a length that does not divide
            // fails the base channel's validation (0 blocks, or a buffer of another length).
            self.num_blocks = self.num_blocks * self.block_size as u64 / block_size.max(1) as u64;
            self.block_size = block_size;
        }
    }

    /// Returns a forwarded I/O to the level that forwarded it, in the forwarding module's
    /// completion callback: its range, channel, callback, timing and `ctx` as they were, with
    /// the status and errno the base gave. The module then completes it as its own, usually
    /// with [`BdevIo::complete_inline`] (it is inside a completion callback). Returns false
    /// (and changes nothing) if the I/O was not forwarded.
    #[inline]
    pub fn unforward(&mut self) -> bool {
        let f = &mut self.frame;
        if !f.active {
            return false;
        }
        f.active = false;
        self.callback = f.callback.take();
        self.channel = f.channel.take();
        self.offset_blocks = f.offset_blocks;
        self.num_blocks = f.num_blocks;
        self.block_size = f.block_size;
        self.ctx = f.ctx;
        self.lock_id = f.lock_id;
        self.parity = f.parity;
        if let Some(outer) = self.outer_frames.pop() {
            self.frame = outer;
        }
        // The base's completion time is this level's too (it completes from that callback).
        self.completed_at_set = true;
        true
    }

    /// Whether a stacked bdev passed it on to its base (forwarded or remapped) and it has not
    /// come back yet.
    #[inline]
    pub(crate) fn is_stacked(&self) -> bool {
        self.frame.active || self.remap_channel.is_some()
    }

    /// Makes this I/O the base level of a remap (see `BdevChannel::remap`) onto `base`, where
    /// it is counted in flight: `upper_offset` is the upper level's, given back at completion.
    #[inline]
    pub(crate) fn enter_remap(&mut self, upper_offset: u64, base: RemapBase) {
        self.remap_offset = upper_offset;
        debug_assert!(self.remap_channel.is_none(), "not stacked: the caller checked");
        self.remap_channel = Some(base.channel);
        self.remap_flags = base.flags;
    }

    /// Takes the base level of a remap off this I/O (see [`Self::enter_remap`]).
    #[inline]
    fn take_remap_base(&mut self) -> Option<RemapBase> {
        let channel = self.remap_channel.take()?;
        Some(RemapBase { channel, flags: self.remap_flags })
    }

    /// Fills the iovecs with zeroes.
    pub fn zero_iovs(&mut self) {
        for v in &self.iovs {
            // SAFETY: each iovec is valid for writes of iov_len bytes (push_iov's contract).
            unsafe { std::ptr::write_bytes(v.iov_base.cast::<u8>(), 0, v.iov_len) };
        }
    }

    /// Runs the copy [`Self::complete_with_copy`] deferred, if it has not run yet.
    #[inline(always)]
    fn run_deferred_copy(&mut self) {
        if let Some((src, len)) = self.deferred_copy.take() {
            // SAFETY: complete_with_copy's contract: the source is the submitting channel's,
            // alive while this I/O holds the channel (until its callback has run).
            let data = unsafe { std::slice::from_raw_parts(src, len) };
            self.copy_to_iovs(data);
        }
    }

    fn run_callback(mut self: Box<Self>) {
        if !std::mem::take(&mut self.completed_at_set) {
            self.complete_tick = crate::framework::ticks::io_now();
        }
        // Normally done by the drain already (`copy_deferred`).
        self.run_deferred_copy();
        // A remapped I/O completing (no level forwarded below it is still open): its base
        // level ends here, counted in the base's statistics; the upper level gets its own
        // offset back and completes as usual.
        let base = if self.frame.active { None } else { self.take_remap_base() };
        if base.is_some() {
            self.offset_blocks = self.remap_offset;
        }
        let channel = self.channel.take();
        let parity = self.parity;
        if !self.uncounted {
            match (base, &channel) {
                (Some(base), Some(upper)) if base.is_held() => upper.account_remapped(&self),
                // SAFETY: not completed yet, and its upper channel (if any) is held (`channel`).
                (Some(base), upper) => unsafe { base.account_unheld(upper.as_deref(), &self) },
                (None, Some(one)) => one.account(&self),
                (None, None) => {}
            }
        }
        // A forwarded I/O's callback is the forwarding module's, replaced by the level's own
        // when the module unforwards it: move it out rather than count another reference.
        let cb = if self.frame.active { self.callback.take() } else { self.callback.clone() };
        match cb {
            Some(cb) => cb(self),
            None => tracing::error!("bdev I/O completed without a callback"),
        }
        // Only now is the I/O done for range locks waiting on it: its callback has run.
        if let Some(channel) = channel {
            channel.locks().uncount(parity);
        }
        if let Some(base) = base {
            // SAFETY: its upper channel is still held (`channel`, dropped after this), and this
            // is its one end.
            unsafe { base.end() };
        }
    }
}

thread_local! {
    /// I/O completed on this thread, in completion order, waiting for `drain_completions`
    /// (a `Vec`: pushed at the end and drained whole, it needs no ring of its own).
    #[allow(clippy::vec_box)]
    static COMPLETIONS: RefCell<Vec<Box<BdevIo>>> = RefCell::new(Vec::with_capacity(1024));
    /// The allocation of the queue last drained, put in as the shared queue at the next
    /// drain: callbacks that complete more I/O (a resubmitting client, a stacked bdev) fill
    /// the shared queue during a drain, and with an empty `Vec` there it grew from nothing
    /// (a reallocation per doubling) and the drained one was freed, at every drain.
    #[allow(clippy::vec_box)]
    static SPARE_QUEUE: Cell<Vec<Box<BdevIo>>> = const { Cell::new(Vec::new()) };
    static COMPLETION_POLLER: RefCell<Option<Poller>> = const { RefCell::new(None) };
    /// Streaming (non-temporal) stores were issued since the last completion drain.
    static STREAMED: Cell<bool> = const { Cell::new(false) };
    /// An I/O with a deferred copy was queued since the last completion drain.
    static DEFERRED_COPIES: Cell<bool> = const { Cell::new(false) };
}

/// Says that this thread issued non-temporal stores that must be ordered before the next
/// completions it runs (a module's data copy): [`drain_completions`] fences once before its
/// callbacks, instead of each copy waiting for its own stores to reach memory.
#[inline]
pub(crate) fn fence_streaming_stores_before_completions() {
    STREAMED.with(|s| s.set(true));
}

/// Orders the streaming stores issued so far before any store that follows (a completion's
/// used-ring entry, a reply, a flag another thread reads).
#[inline]
fn fence_streamed_stores() {
    if STREAMED.with(|s| s.replace(false)) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: SFENCE has no preconditions and touches no memory.
        unsafe {
            std::arch::x86_64::_mm_sfence()
        };
    }
}

/// How much of the next deferred copy's source [`copy_deferred`] prefetches before a copy: the
/// first lines, which start the hardware's stream prefetcher on the rest of the page.
/// Measured with ferry-bdevperf, 4 KiB random reads of a 512 MiB malloc bdev at QD128, when
/// each copy ran just before its own callback (IOPS per CPU-second; no prefetch 1.97-1.99 M):
/// one ahead with 256/512/1024/2048 bytes 2.11/2.27/2.22/1.82 M; two ahead with 1 KiB 2.00 M
/// and with 4 KiB 2.00 M; three ahead with 2 KiB 1.93 M; four ahead with 1 KiB 2.03 M (too
/// many misses in flight at once). With the copies back to back (`copy_deferred`; Zen 3,
/// 6 alternating pairs against 512): 256 1.015, 384 1.051, 640 1.033, all within the noise;
/// 1024 about 0.91 (8 pairs each against the old order: 1.09 against 512's 1.20).
const PREFETCH_BYTES: usize = 512;

/// Runs the deferred copies of a drained batch back to back, each after starting to fetch the
/// next one's source, and before any of the batch's callbacks.
///
/// Why not each just before its own callback: a callback's work (tens of nanoseconds) waits
/// behind the copy's misses in the CPU's window and delays the next copy's loads, so the two
/// add up. Back to back, one copy's misses overlap the next one's, and the callbacks run after
/// with no misses outstanding. ferry-bdevperf, 4 KiB random reads of a 512 MiB malloc bdev,
/// QD128, 8 alternating pairs: 2.29 M -> 2.73 M IOPS (paired 1.20); a C loop of the same
/// copies with 50 ns of work each: 2.7-2.8 M interleaved, 3.2-3.4 M batched.
///
/// What a read returns is its bdev's data when its copy runs. Here no callback of the batch
/// has run yet, so a write its client submits on learning that one read is done cannot reach
/// another read of the same batch; copied just before its own callback, a read could see what
/// an earlier callback wrote. (A write submitted before any of those callbacks ran was
/// concurrent with the reads, and either data is theirs to get.)
fn copy_deferred(batch: &mut [Box<BdevIo>]) {
    for i in 0..batch.len() {
        if let Some((src, len)) = batch.get(i + 1).and_then(|io| io.deferred_copy) {
            crate::framework::prefetch::read_lines(src, PREFETCH_BYTES.min(len));
        }
        batch[i].run_deferred_copy();
    }
}

/// Runs the callbacks of the I/Os completed so far on this thread; returns how many ran.
/// Completions queued by these callbacks wait for the next call, to keep the loop fair.
pub fn drain_completions() -> usize {
    // The whole queue is taken at once and run from here, so each I/O costs no thread-local
    // access and no `RefCell` borrow (about 40 instructions per I/O when each was popped from
    // the shared queue). Callbacks that complete more I/O queue it in the emptied shared one.
    let Some(mut batch) = COMPLETIONS.with(|q| {
        let mut q = q.borrow_mut();
        (!q.is_empty()).then(|| std::mem::replace(&mut *q, SPARE_QUEUE.take()))
    }) else {
        return 0;
    };
    let pending = batch.len();
    fence_streamed_stores();
    // Their completion time: read now, not shared with submissions earlier in this run.
    crate::framework::ticks::new_reading();
    if DEFERRED_COPIES.with(|d| d.replace(false)) {
        copy_deferred(&mut batch);
    }
    for io in batch.drain(..) {
        io.run_callback();
    }
    give_back_queue(batch);
    pending
}

/// Keeps the drained (empty) queue's allocation: as the shared queue again if callbacks
/// queued nothing in the meantime (the shared one, then empty, becomes the spare), else as
/// the spare for the next drain.
#[allow(clippy::vec_box)]
fn give_back_queue(mut batch: Vec<Box<BdevIo>>) {
    COMPLETIONS.with(|q| {
        let mut q = q.borrow_mut();
        if q.is_empty() {
            std::mem::swap(&mut *q, &mut batch);
        }
    });
    SPARE_QUEUE.set(batch);
}

/// Makes sure this reactor drains bdev completions (idempotent; called when a channel is made).
pub(crate) fn ensure_completion_poller() {
    COMPLETION_POLLER.with(|p| {
        let mut p = p.borrow_mut();
        if p.is_none() {
            *p = Some(framework::poller_register("bdev_completions", Duration::ZERO, || {
                PollStatus::from(drain_completions() > 0)
            }));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Capacities of the shared completion queue and of the spare.
    fn queue_capacities() -> (usize, usize) {
        let shared = COMPLETIONS.with(|q| q.borrow().capacity());
        let spare = SPARE_QUEUE.take();
        let capacities = (shared, spare.capacity());
        SPARE_QUEUE.set(spare);
        capacities
    }

    #[test]
    fn drains_keep_both_queue_allocations_while_callbacks_complete_more_io() {
        const IOS: usize = 100;
        // Each callback completes its I/O again until it has run three times, as a client
        // that resubmits into a bdev completing at once does.
        let runs = Rc::new(Cell::new(0usize));
        let counted = runs.clone();
        let callback: IoCallback = Rc::new(move |mut io: Box<BdevIo>| {
            counted.set(counted.get() + 1);
            io.ctx += 1;
            if io.ctx < 3 {
                io.complete(IoStatus::Success);
            }
        });
        for _ in 0..IOS {
            BdevIo::new(callback.clone()).complete(IoStatus::Success);
        }
        let mut seen = Vec::new();
        while drain_completions() > 0 {
            seen.push(queue_capacities());
        }
        assert_eq!(runs.get(), 3 * IOS, "every completion ran its callback once");
        // The second drain (completions queued by the first's callbacks) and the third run
        // on the allocations of the queues before them: one of them the shared queue's first
        // (1024), the other grown once to hold a drain's re-completions; neither dropped.
        let (shared, spare) = *seen.last().expect("three drains");
        assert_eq!(seen.len(), 3, "drains: {seen:?}");
        assert!(shared.max(spare) >= 1024 && shared.min(spare) >= IOS, "capacities after the drains: {seen:?}");
    }

    #[test]
    fn a_batch_copies_every_read_before_its_first_callback_can_write() {
        // Two reads of one block completed together, their copies deferred. The first one's
        // callback overwrites the block (a write submitted after that read completed, as a
        // RAM disk does it, at once): the second read completed before that write, so it
        // must still return the old data.
        let block = Rc::new(std::cell::UnsafeCell::new([7u8; 64]));
        let outputs = Rc::new(RefCell::new(Vec::new()));
        let (src, seen) = (block.clone(), outputs.clone());
        let callback: IoCallback = Rc::new(move |io: Box<BdevIo>| {
            let v = io.iovs()[0];
            // SAFETY: the iovec is one of the test's 64-byte buffers below, alive until its end.
            seen.borrow_mut().push(unsafe { std::slice::from_raw_parts(v.iov_base.cast::<u8>(), 64) }.to_vec());
            // SAFETY: this thread's only access to the block while no copy runs.
            unsafe { (*src.get()).fill(9) };
        });
        let mut buffers = [[0u8; 64]; 2];
        for out in &mut buffers {
            let mut io = BdevIo::new(callback.clone());
            // SAFETY: 64 bytes of the test's, alive past the drain below.
            unsafe { io.push_iov(out.as_mut_ptr(), 64) };
            // SAFETY: the block outlives the drain below (the test holds it).
            unsafe { io.complete_with_copy(block.get().cast::<u8>(), 64) };
        }
        assert_eq!(drain_completions(), 2);
        assert_eq!(
            *outputs.borrow(),
            vec![vec![7u8; 64], vec![7u8; 64]],
            "both reads return the data before the write"
        );
    }
}
