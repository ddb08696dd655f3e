//! `BdevChannel`: the per-thread handle where I/O is validated, timed, counted and passed to
//! the module's own channel.

use super::device::{lock, BackendChannel, Bdev, StatsEntry};
use super::error::BdevError;
use super::io::{self, BdevIo, IoCallback, IoStatus, IoType, RemapBase};
use super::qos::QosChannel;
use super::range_lock::{self, ChannelLocks, RangeLock, NOT_COUNTED};
use super::stats::IoStats;
use crate::framework::ticks;
use std::cell::OnceCell;
use std::rc::Rc;
use std::sync::Arc;

/// One thread's channel of one bdev, shared by every descriptor on that thread.
///
/// Laid out (`repr(C)`, aligned to a cache line) so that what a submission reads, the bdev,
/// the module's channel, the QoS check and the lock counts, is one cache line, as is what it
/// reads of the bdev (`BdevInner`): spread over three to five lines each before, they cost a
/// thick lvol's remapped write, which reads two bdevs and two channels, about 1% against
/// malloc's own (docs/performance.md, Logical volumes). `layout_tests` keeps it so.
#[repr(C, align(64))]
pub struct ChannelInner {
    bdev: Bdev,
    backend: Box<dyn BackendChannel>,
    /// Leased QoS tokens and the I/O the limits hold back (24 bytes).
    qos: QosChannel,
    /// In-flight counts by epoch, locked ranges and the I/O waiting for them (the counts and
    /// flags first, in the line; the rest after it).
    locks: ChannelLocks,
    stats: Arc<IoStats>,
    /// The one base channel this (upper) channel remaps I/O onto, made at its first remap:
    /// where that I/O is recorded, once for both levels (see
    /// [`ChannelInner::account_remapped`]), and what keeps the base channel alive for it.
    remapped: OnceCell<RemappedStats>,
}

/// The base channel one upper channel remaps I/O onto, with the counters of that I/O.
struct RemappedStats {
    /// That base channel, held for as long as the upper one lives: a remapped I/O keeps only
    /// its address (no reference counted per I/O, see [`RemapBase`]) and holds the upper
    /// channel until it completes. Never the upper channel itself (no cycle).
    base: Rc<ChannelInner>,
    base_bdev: Bdev,
    stats: Arc<IoStats>,
}

impl ChannelInner {
    pub(crate) fn new(bdev: &Bdev) -> Result<Self, BdevError> {
        io::ensure_completion_poller();
        let backend = bdev.backend().create_channel(bdev)?;
        let stats = Arc::new(IoStats::default());
        let reactor = crate::framework::current_index();
        lock(&bdev.0.channel_stats).push(StatsEntry { reactor, stats: Arc::downgrade(&stats), partner: None });
        let locks = ChannelLocks::new(bdev.0.range_locks.propagated());
        Ok(ChannelInner {
            bdev: bdev.clone(),
            backend,
            stats,
            locks,
            qos: QosChannel::default(),
            remapped: OnceCell::new(),
        })
    }

    pub(crate) fn locks(&self) -> &ChannelLocks {
        &self.locks
    }

    /// The bdev.
    pub(crate) fn bdev(&self) -> &Bdev {
        &self.bdev
    }

    pub(crate) fn qos(&self) -> &QosChannel {
        &self.qos
    }

    /// Starts an I/O the QoS limits let through: it waits for a range lock held by someone
    /// else, or goes to the module.
    #[inline]
    pub(crate) fn start_admitted(&self, io: Box<BdevIo>) {
        if self.locks.blocks(&io) {
            self.locks.enqueue(io);
        } else {
            self.start(io);
        }
    }

    /// Hands a validated I/O that no lock holds back to the module, counted in flight.
    #[inline]
    fn start(&self, mut io: Box<BdevIo>) {
        self.locks.count(&mut io);
        self.backend.submit(io);
    }

    /// Resubmits the queued I/O in order; those still blocked by another lock stay queued.
    pub(crate) fn resubmit_queued(&self) {
        for io in self.locks.take_queued() {
            if self.locks.blocks(&io) {
                self.locks.enqueue(io);
            } else {
                self.start(io);
            }
        }
    }

    #[inline]
    pub(crate) fn account(&self, io: &BdevIo) {
        Self::account_in([self], io);
    }

    /// Records `io`, which this (upper) channel remapped onto the base channel it holds, for
    /// both levels. Its two records would be the same (one submission, one completion, one
    /// range), so it is recorded once, in counters that both bdevs list ([`RemappedStats`],
    /// made at the first remap); SPDK counts an lvol's I/O at its base too. (A remap onto a
    /// second base is recorded at both levels, by [`Self::account_in`].)
    #[inline]
    pub(crate) fn account_remapped(&self, io: &BdevIo) {
        match self.remapped.get() {
            Some(held) => Self::record(&[&held.stats], io),
            // Not reached: a held base is the one in `remapped`.
            None => self.account(io),
        }
    }

    /// Whether this (upper) channel holds `base` for the I/O it remaps onto it: always
    /// after its first remap onto `base` (made here), never for a second base (such I/O
    /// holds its own reference) or for itself.
    #[cold]
    #[inline(never)]
    fn hold_first_base(&self, base: &Rc<ChannelInner>) -> bool {
        if std::ptr::eq(self, Rc::as_ptr(base)) {
            return false;
        }
        let held = self.remapped.get_or_init(|| self.share_stats_with(base));
        Rc::ptr_eq(&held.base, base)
    }

    /// Counters for the I/O this channel remaps onto `base`, listed under both bdevs.
    fn share_stats_with(&self, base: &Rc<ChannelInner>) -> RemappedStats {
        let stats = Arc::new(IoStats::default());
        let reactor = crate::framework::current_index();
        let entry = |partner: &Bdev| StatsEntry {
            reactor,
            stats: Arc::downgrade(&stats),
            partner: Some(Arc::downgrade(&partner.0)),
        };
        lock(&self.bdev.0.channel_stats).push(entry(&base.bdev));
        lock(&base.bdev.0.channel_stats).push(entry(&self.bdev));
        RemappedStats { base: base.clone(), base_bdev: base.bdev.clone(), stats }
    }

    /// Records `io` in the statistics of each of `levels` (a remapped I/O: its base's channel
    /// and its upper bdev's), in one pass.
    #[inline]
    pub(crate) fn account_in<const N: usize>(levels: [&ChannelInner; N], io: &BdevIo) {
        Self::record(&levels.map(|l| &*l.stats), io);
    }

    #[inline]
    fn record(all: &[&IoStats], io: &BdevIo) {
        let latency = io.latency_ticks();
        // A rejected request may carry any length: saturate rather than overflow.
        let bytes = io.num_blocks.saturating_mul(io.block_size as u64);
        let ok = io.status() == IoStatus::Success;
        IoStats::record_in(all, io.io_type, bytes, latency, ok);
    }
}

impl Drop for ChannelInner {
    fn drop(&mut self) {
        // Fold this channel's counters into the bdev so totals survive the channel.
        retire(&self.bdev, &self.stats);
        if let Some(r) = self.remapped.get() {
            retire(&self.bdev, &r.stats);
            retire(&r.base_bdev, &r.stats);
        }
    }
}

/// Folds `stats` into `bdev`'s retired counters and takes them off its list of live ones.
fn retire(bdev: &Bdev, stats: &Arc<IoStats>) {
    lock(&bdev.0.retired_stats).merge(stats);
    let me = Arc::as_ptr(stats);
    lock(&bdev.0.channel_stats).retain(|e| e.stats.strong_count() > 0 && !std::ptr::eq(e.stats.as_ptr(), me));
}

/// [`BdevChannel::remap`] after the checks of what the channel's life does not change: the
/// I/O is given back if it is already stacked, of another block size or past the end, or if
/// the base is removed, rate-limited, or has any range locked (rare, and brief: the I/O then
/// takes the forward, which waits only for a lock on its own range).
///
/// Inlined into every caller, with no call but the module's submission at its end (a tail
/// call): a thick lvol's write is then remapped in its channel's own frame, which saves no
/// register now that the channel's other paths are out of line (five with the call and the
/// range search out of line, two before the cluster entries' lookup left it). Measured on a
/// thick lvol's 4 KiB writes to malloc, paired runs: the inlining about 1.5%, each smaller
/// frame about 1% more (docs/performance.md, Logical volumes).
#[inline(always)]
fn remap_checked(inner: &Rc<ChannelInner>, io: Box<BdevIo>, offset_blocks: u64) -> Result<(), Box<BdevIo>> {
    let bdev = &inner.bdev;
    let fits = offset_blocks.checked_add(io.num_blocks).is_some_and(|end| end <= bdev.num_blocks());
    if io.is_stacked()
        || io.block_size != bdev.block_size()
        || !fits
        || bdev.is_removed()
        || !inner.qos.unlimited(inner)
        || inner.locks.any_locked()
    {
        return Err(io);
    }
    // The remapped I/O keeps only the base's address when its own channel (the upper
    // level's, held until it completes) holds the base (see `RemapBase`).
    let held = io.channel.as_deref().and_then(|upper| upper.remapped.get());
    if !held.is_some_and(|held| Rc::ptr_eq(&held.base, inner)) {
        return remap_unheld(inner, io, offset_blocks);
    }
    let base = RemapBase::held(inner, inner.locks.count_one());
    submit_remapped(inner, io, offset_blocks, base)
}

/// Moves `io` to `offset_blocks` of `inner`, the base it is counted at as `base`, and hands it
/// to the base's module (the end of every remap).
#[inline(always)]
fn submit_remapped(
    inner: &ChannelInner,
    mut io: Box<BdevIo>,
    offset_blocks: u64,
    base: RemapBase,
) -> Result<(), Box<BdevIo>> {
    let upper_offset = std::mem::replace(&mut io.offset_blocks, offset_blocks);
    io.enter_remap(upper_offset, base);
    inner.backend.submit(io);
    Ok(())
}

/// The end of [`remap_checked`] for an I/O whose channel (the upper level's) does not hold
/// `base` yet: it takes `base` as the one it holds if it has none (its first remap); an I/O
/// with no channel, or remapped onto a second base, holds its own reference.
#[cold]
#[inline(never)]
fn remap_unheld(base: &Rc<ChannelInner>, io: Box<BdevIo>, offset_blocks: u64) -> Result<(), Box<BdevIo>> {
    let held = io.channel.as_deref().is_some_and(|upper| upper.hold_first_base(base));
    let parity = base.locks.count_one();
    let remap_base = if held { RemapBase::held(base, parity) } else { RemapBase::owned(base.clone(), parity) };
    submit_remapped(base, io, offset_blocks, remap_base)
}

/// A base channel kept by a stacked bdev's channel to remap one type of I/O onto, checked
/// once (see [`BdevChannel::remap_target`]): its remaps skip those checks.
pub struct RemapTarget {
    inner: Rc<ChannelInner>,
    io_type: IoType,
}

impl RemapTarget {
    /// [`BdevChannel::remap`] for an I/O of the target's type (any other is given back).
    #[inline]
    pub fn remap(&self, io: Box<BdevIo>, offset_blocks: u64) -> Result<(), Box<BdevIo>> {
        if io.io_type != self.io_type {
            return Err(io);
        }
        remap_checked(&self.inner, io, offset_blocks)
    }
}

/// A descriptor's channel on this thread: submit I/O here. Not `Send`: it belongs to the
/// reactor that made it.
#[derive(Clone)]
pub struct BdevChannel {
    inner: Rc<ChannelInner>,
    writable: bool,
}

impl BdevChannel {
    pub(crate) fn new(inner: Rc<ChannelInner>, writable: bool) -> Self {
        BdevChannel { inner, writable }
    }

    /// The bdev.
    pub fn bdev(&self) -> &Bdev {
        &self.inner.bdev
    }

    /// Submits `io`. Every outcome, including a rejected request, arrives through the I/O's
    /// callback from the reactor loop, never from inside this call. I/O overlapping a range
    /// locked by someone else waits in this channel until the lock goes.
    #[inline]
    pub fn submit(&self, io: Box<BdevIo>) {
        self.submit_as(io, 0);
    }

    /// Submits `io` on behalf of range lock `lock_id` (0: none), which it passes.
    #[inline]
    pub(crate) fn submit_as(&self, mut io: Box<BdevIo>, lock_id: u64) {
        let bdev = &self.inner.bdev;
        io.block_size = bdev.block_size();
        io.submit_tick = ticks::io_now();
        io.channel = Some(self.inner.clone());
        io.lock_id = lock_id;
        io.parity = NOT_COUNTED;
        if let Err(errno) = self.validate(&io) {
            io.fail(errno);
            return;
        }
        // Rate limits before range locks: I/O waiting for tokens is not in flight, so it never
        // holds up a range lock waiting to be granted.
        let Some(io) = self.inner.qos.admit(&self.inner, io) else { return };
        self.inner.start_admitted(io);
    }

    /// Forwards `io`, an I/O of a stacked bdev that maps onto one range of this (its base)
    /// bdev, to `offset_blocks` here as the same `BdevIo`: no child I/O, no copy of the
    /// iovecs. It is checked against this bdev (its state, the type, the range; the buffers
    /// too when the block sizes differ), rate-limited, range-locked and counted here as any
    /// I/O, and keeps the upper level's submission time; when the base completes it,
    /// `on_done` gets it back, calls [`BdevIo::unforward`] and completes it as its own (so
    /// its own statistics and range locks see it too). Meanwhile `io.ctx` holds the
    /// forwarding module's `ctx` (set here, after the submitter's value is saved: a module
    /// that wrote `io.ctx` itself before forwarding would lose the submitter's);
    /// `unforward` gives the submitter's value back. The cheapest way for a virtual bdev
    /// (passthru, split, an lvol's allocated cluster) to pass an I/O on.
    #[inline]
    pub fn forward(&self, mut io: Box<BdevIo>, offset_blocks: u64, ctx: u64, on_done: IoCallback) {
        let upper_block_size = io.block_size;
        io.push_frame(offset_blocks, self.inner.bdev.block_size(), on_done);
        io.ctx = ctx;
        // The submission time stays the upper level's: the forward is part of that submission.
        io.channel = Some(self.inner.clone());
        io.lock_id = 0;
        io.parity = NOT_COUNTED;
        let checked = if io.block_size == upper_block_size { self.validate_forwarded(&io) } else { self.validate(&io) };
        if let Err(errno) = checked {
            io.fail(errno);
            return;
        }
        let Some(io) = self.inner.qos.admit(&self.inner, io) else { return };
        self.inner.start_admitted(io);
    }

    /// Remaps `io`, an I/O of a stacked bdev that maps onto one range of this (its base)
    /// bdev, to `offset_blocks` here and hands it to this bdev's module in the same pass: no
    /// module callback on the way back, no frame saved, no second validation of what the upper
    /// level checked. The base level still counts: the I/O is range-locked and counted in
    /// flight here, and when it completes this bdev's statistics record it, then the upper
    /// level completes it as its own (its statistics, its callback), with its own offset
    /// back. For a module with nothing to do on completion (an lvol's owned cluster).
    ///
    /// Gives `io` back untouched when the fast pass cannot take it, for
    /// [`Self::forward`]: an I/O already forwarded or remapped, another block size, a range
    /// outside this bdev, a removed or read-only base, a type it does not do, rate limits on
    /// it, or any range locked on it.
    #[inline]
    pub fn remap(&self, io: Box<BdevIo>, offset_blocks: u64) -> Result<(), Box<BdevIo>> {
        if !self.takes(io.io_type) {
            return Err(io);
        }
        remap_checked(&self.inner, io, offset_blocks)
    }

    /// This channel as a target of [`RemapTarget::remap`] for I/O of type `io_type`, checked
    /// once for what a channel's life does not change ([`Self::takes`]); `None` if it can
    /// never take such I/O.
    pub fn remap_target(&self, io_type: IoType) -> Option<RemapTarget> {
        self.takes(io_type).then(|| RemapTarget { inner: self.inner.clone(), io_type })
    }

    /// Whether this channel can take I/O of `io_type` at all: writable for a write, the type
    /// supported by the bdev.
    #[inline]
    fn takes(&self, io_type: IoType) -> bool {
        (!io_type.is_write() || self.writable) && self.inner.bdev.supports(io_type)
    }

    /// Locks `[offset_blocks, offset_blocks + num_blocks)` of the bdev for the caller.
    /// `locked` runs on this reactor once every I/O submitted before this call, on any
    /// channel of the bdev on any reactor, has completed; from then until the [`RangeLock`]
    /// is dropped, overlapping I/O submitted by anyone else (any channel, any descriptor)
    /// waits, queued in its channel and resubmitted in order at unlock. The holder submits
    /// its own I/O with [`RangeLock::submit`]. Locks on overlapping ranges are granted one
    /// after another, in the order asked (FIFO). If the bdev is removed, pending locks are
    /// granted at once (every I/O then fails with `ENODEV`), so `locked` always runs while
    /// the reactors do.
    pub fn lock_range(&self, offset_blocks: u64, num_blocks: u64, locked: impl FnOnce(RangeLock) + 'static) {
        range_lock::lock_range(&self.inner.bdev, offset_blocks, num_blocks, Box::new(locked));
    }

    /// I/O of this reactor's channel waiting for a range lock to go (for tests and tools).
    pub fn queued_for_locks(&self) -> usize {
        self.inner.locks.queued_len()
    }

    /// [`Self::validate`] for an I/O forwarded with the same block size: the upper level
    /// checked its buffers against the same byte length, so only what can differ at the base
    /// is checked (its state, the type, writability and the range the module mapped to).
    #[inline]
    fn validate_forwarded(&self, io: &BdevIo) -> Result<(), i32> {
        let bdev = &self.inner.bdev;
        if bdev.is_removed() {
            return Err(libc::ENODEV);
        }
        if io.io_type.is_write() && !self.writable {
            return Err(libc::EPERM);
        }
        if !bdev.supports(io.io_type) {
            return Err(libc::ENOTSUP);
        }
        if io.io_type == IoType::Reset {
            return Ok(());
        }
        match io.offset_blocks.checked_add(io.num_blocks) {
            Some(end) if end <= bdev.num_blocks() => Ok(()),
            _ => Err(libc::EINVAL),
        }
    }

    /// Checks the request against the bdev: type, writability, range, buffer length.
    #[inline]
    fn validate(&self, io: &BdevIo) -> Result<(), i32> {
        let bdev = &self.inner.bdev;
        if bdev.is_removed() {
            return Err(libc::ENODEV);
        }
        if !bdev.supports(io.io_type) {
            return Err(libc::ENOTSUP);
        }
        if io.io_type.is_write() && !self.writable {
            return Err(libc::EPERM);
        }
        if io.io_type == IoType::Reset {
            return Ok(());
        }
        let end = io.offset_blocks.checked_add(io.num_blocks).ok_or(libc::EINVAL)?;
        if end > bdev.num_blocks() || (io.num_blocks == 0 && io.io_type != IoType::Flush) {
            return Err(libc::EINVAL);
        }
        if io.io_type.has_data() {
            let want = io.num_blocks.checked_mul(bdev.block_size() as u64).ok_or(libc::EINVAL)?;
            if io.iov_bytes() != want {
                return Err(libc::EINVAL);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod remap_base_tests {
    use super::*;
    use crate::bdev::modules::malloc;
    use crate::framework::{task::block_on, testing};

    /// A remapped I/O's base keeps the parity it was counted under (either), uncounts it there
    /// at its end, and gives back the reference it holds itself, and only that one.
    #[test]
    fn a_remap_base_uncounts_its_parity_and_gives_back_only_its_own_reference() {
        testing::reactors();
        malloc::create("t_remap_base_word", 64, 512, None).unwrap();
        block_on(0, || async {
            let desc = super::super::open("t_remap_base_word", false, Box::new(|_, _| {})).unwrap();
            let channel = desc.channel().unwrap();
            let inner = &channel.inner;
            let refs = Rc::strong_count(inner);
            for (epoch, owned) in [(0, false), (1, false), (0, true), (1, true)] {
                inner.locks.set_epoch(epoch);
                let parity = inner.locks.count_one();
                let base = if owned { RemapBase::owned(inner.clone(), parity) } else { RemapBase::held(inner, parity) };
                assert_eq!(base.is_held(), !owned);
                assert_eq!(Rc::strong_count(inner), refs + owned as usize, "owned: one reference more");
                // SAFETY: `inner` is alive throughout (the test holds it).
                assert!(std::ptr::eq(unsafe { base.channel() }, &**inner));
                // Counted in the other epoch's slot too, so that a wrong parity shows.
                let other = epoch ^ 1;
                inner.locks.set_epoch(other);
                let _ = inner.locks.count_one();
                // SAFETY: as above; its one end.
                unsafe { base.end() };
                assert_eq!(inner.locks.in_flight(epoch), 0, "uncounted under its own parity");
                assert_eq!(inner.locks.in_flight(other), 1, "not under the other");
                inner.locks.uncount(other);
                assert_eq!(Rc::strong_count(inner), refs, "its own reference given back, no other");
            }
        })
        .unwrap();
        super::super::registry::unregister("t_remap_base_word", None).unwrap();
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    /// Every field a submission reads lies in the first cache line of the channel (see
    /// [`ChannelInner`]; the bdev's line is checked in `device.rs`).
    #[test]
    fn per_io_fields_lie_in_the_first_cache_line() {
        assert_eq!(align_of::<ChannelInner>(), 64);
        assert!(offset_of!(ChannelInner, bdev) + size_of::<Bdev>() <= 64);
        assert!(offset_of!(ChannelInner, backend) + size_of::<Box<dyn BackendChannel>>() <= 64);
        assert!(offset_of!(ChannelInner, qos) + QosChannel::PER_IO_BYTES <= 64);
        assert!(offset_of!(ChannelInner, locks) + ChannelLocks::PER_IO_BYTES <= 64);
    }
}
