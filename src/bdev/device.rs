//! The `Bdev` handle and the `BdevBackend` trait every bdev module implements.

use super::desc::DescShared;
use super::error::BdevError;
use super::io::{BdevIo, IoType};
use super::range_lock::LockTable;
use super::stats::{IoStats, ResetMode};
use crate::framework::IoDeviceId;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use uuid::Uuid;

/// A module's per-thread channel: where I/O of one bdev is submitted on one reactor.
pub trait BackendChannel {
    /// Starts `io`, already validated (range, type, lengths). The module completes it later
    /// with `io.complete(..)`, possibly before returning.
    fn submit(&self, io: Box<BdevIo>);
}

/// What a bdev module implements. The bdev core does naming, registry, claims, validation
/// and statistics; the backend only moves data.
pub trait BdevBackend: Send + Sync + 'static {
    /// The module's name (`malloc`, `null`, `uring`, ...).
    fn module(&self) -> &'static str;

    /// SPDK's `product_name` for bdevs of this module.
    fn product_name(&self) -> &'static str;

    /// Whether the module can do `io_type` (a stacked bdev: whatever its base can do). Every
    /// module reads; [`Bdev::supports`] does not ask about reads.
    fn supports(&self, io_type: IoType) -> bool {
        self.stacked_on().is_some_and(|b| b.supports(io_type))
    }

    /// Whether the module does every I/O type, always (a RAM disk, an lvol): then
    /// [`Bdev::supports`] never asks [`BdevBackend::supports`], a call per I/O saved.
    fn supports_every_io_type(&self) -> bool {
        false
    }

    /// Makes this thread's channel; called on a reactor thread the first time it submits.
    fn create_channel(&self, bdev: &Bdev) -> Result<Box<dyn BackendChannel>, BdevError>;

    /// The RPC call that recreates the bdev, for `save_config` (method, params).
    fn config(&self, bdev: &Bdev) -> Option<(&'static str, Value)>;

    /// `driver_specific` of `bdev_get_bdevs`, as (key, value), e.g. ("uring", {...}).
    fn driver_specific(&self) -> Option<(&'static str, Value)> {
        None
    }

    /// The bdev this one passes its I/O to unchanged in nature (a passthru, split, delay or
    /// error bdev's base): `supports` and the properties below default to the base's. None
    /// for a device of its own.
    fn stacked_on(&self) -> Option<&Bdev> {
        None
    }

    /// Whether written data reads back (false for `null`, whose reads are always zeroes).
    fn retains_data(&self) -> bool {
        self.stacked_on().is_none_or(|b| b.backend().retains_data())
    }

    /// Whether the device has a volatile write cache (flush matters).
    fn write_cache(&self) -> bool {
        self.stacked_on().is_some_and(|b| b.backend().write_cache())
    }

    /// Required alignment of data buffers, in bytes (1 for none).
    fn buf_align(&self) -> usize {
        self.stacked_on().map_or(1, |b| b.backend().buf_align())
    }

    /// Write and unmap hints the device gives its users (all 0, "none", unless it says).
    fn io_hints(&self) -> IoHints {
        self.stacked_on().map(|b| b.backend().io_hints()).unwrap_or_default()
    }

    /// Whether the device refuses writes by nature (a read-only lvol): frontends show it
    /// read-only.
    fn read_only(&self) -> bool {
        self.stacked_on().is_some_and(|b| b.backend().read_only())
    }

    /// The physical block size in bytes, when the device has physical blocks larger than its
    /// logical ones (a power of two multiple of the block size); None: the block size.
    fn physical_block_size(&self) -> Option<u32> {
        self.stacked_on().map(Bdev::physical_block_size)
    }

    /// Whether blocks from `offset_blocks` are allocated (backed) or deallocated (read as
    /// zeroes), and for how many blocks (at most `max_blocks`) that status runs. None: the
    /// module does not know (everything counts as "mapped"). Called on reactors: it must be
    /// cheap (a lookup in a map, or a metadata system call), never wait for I/O.
    fn allocation_run(&self, _offset_blocks: u64, _max_blocks: u64) -> Option<(bool, u64)> {
        None
    }

    /// Whether the module allows resizing to `num_blocks`; the core then updates the size.
    fn resize(&self, _num_blocks: u64) -> Result<(), BdevError> {
        Err(BdevError::InvalidParam(format!("{} bdevs cannot be resized", self.module())))
    }
}

/// Write and unmap hints in blocks, as SPDK's `bdev_get_bdevs` reports them (0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct IoHints {
    /// `preferred_write_alignment`.
    #[serde(rename = "preferred_write_alignment")]
    pub write_alignment: u32,
    /// `preferred_write_granularity`.
    #[serde(rename = "preferred_write_granularity")]
    pub write_granularity: u32,
    /// `optimal_write_size`.
    pub optimal_write_size: u32,
    /// `preferred_unmap_alignment`.
    #[serde(rename = "preferred_unmap_alignment")]
    pub unmap_alignment: u32,
    /// `preferred_unmap_granularity`.
    #[serde(rename = "preferred_unmap_granularity")]
    pub unmap_granularity: u32,
}

/// Identity and geometry of a bdev being created.
#[derive(Debug, Clone)]
pub struct BdevProps {
    /// Unique name.
    pub name: String,
    /// Stable uuid; a random one when `None`.
    pub uuid: Option<Uuid>,
    /// Logical block size in bytes.
    pub block_size: u32,
    /// Number of blocks.
    pub num_blocks: u64,
}

/// A registered block device. Cheap to clone; the device lives while any clone does.
#[derive(Clone)]
pub struct Bdev(pub(crate) Arc<BdevInner>);

/// A bdev's state, shared by its handles on every thread.
///
/// Laid out (`repr(C)`, aligned to a cache line) with what every I/O's checks read first, in
/// one cache line: the size, block size, state, supported types and the QoS generation (see
/// `ChannelInner`).
#[repr(C, align(64))]
pub(crate) struct BdevInner {
    pub(crate) num_blocks: AtomicU64,
    pub(crate) block_size: u32,
    pub(crate) removed: AtomicBool,
    /// The backend's `supports_every_io_type`, asked once.
    supports_every_io_type: bool,
    pub(crate) backend: Box<dyn BdevBackend>,
    /// Rate limits: its own and its group's (the generation, read by every I/O, first).
    pub(crate) qos: super::qos::BdevQos,
    pub(crate) name: String,
    pub(crate) aliases: Mutex<Vec<String>>,
    pub(crate) uuid: Uuid,
    pub(crate) io_device: IoDeviceId,
    pub(crate) claim: Mutex<Option<String>>,
    pub(crate) descs: Mutex<Vec<Weak<DescShared>>>,
    /// Each live channel's counters with the reactor (index) that owns and writes them.
    pub(crate) channel_stats: Mutex<Vec<StatsEntry>>,
    /// Counters of closed channels (folded in by whichever reactor closed them).
    pub(crate) retired_stats: Mutex<IoStats>,
    /// LBA range locks, held and pending.
    pub(crate) range_locks: LockTable,
}

/// A live channel's counters as a bdev lists them.
pub(crate) struct StatsEntry {
    /// The reactor (index) that owns and writes them.
    pub(crate) reactor: Option<usize>,
    pub(crate) stats: Weak<IoStats>,
    /// For counters this bdev shares with another (the I/O a stacked bdev remapped onto its
    /// base, recorded once for both levels): the other bdev, whose view a reset through this
    /// one must leave as it was.
    pub(crate) partner: Option<Weak<BdevInner>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these small control-path locks leaves consistent data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Bdev {
    pub(crate) fn new(props: BdevProps, backend: Box<dyn BdevBackend>) -> Self {
        Bdev(Arc::new(BdevInner {
            name: props.name,
            aliases: Mutex::new(Vec::new()),
            uuid: props.uuid.unwrap_or_else(Uuid::new_v4),
            block_size: props.block_size,
            num_blocks: AtomicU64::new(props.num_blocks),
            supports_every_io_type: backend.supports_every_io_type(),
            backend,
            io_device: IoDeviceId::new(),
            claim: Mutex::new(None),
            descs: Mutex::new(Vec::new()),
            removed: AtomicBool::new(false),
            channel_stats: Mutex::new(Vec::new()),
            retired_stats: Mutex::new(IoStats::default()),
            range_locks: LockTable::default(),
            qos: Default::default(),
        }))
    }

    /// The bdev's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Its aliases.
    pub fn aliases(&self) -> Vec<String> {
        lock(&self.0.aliases).clone()
    }

    /// Its uuid.
    pub fn uuid(&self) -> Uuid {
        self.0.uuid
    }

    /// Logical block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.0.block_size
    }

    /// Physical block size in bytes (SPDK's `phys_blocklen`): a power of two multiple of the
    /// logical block size, the block size unless the module says otherwise.
    pub fn physical_block_size(&self) -> u32 {
        self.0.backend.physical_block_size().unwrap_or(self.0.block_size)
    }

    /// Current number of blocks.
    pub fn num_blocks(&self) -> u64 {
        self.0.num_blocks.load(Ordering::Acquire)
    }

    /// Size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.num_blocks() * self.block_size() as u64
    }

    /// The module backing it.
    pub fn backend(&self) -> &dyn BdevBackend {
        self.0.backend.as_ref()
    }

    /// The module's name.
    pub fn module(&self) -> &'static str {
        self.0.backend.module()
    }

    /// Whether the module supports `io_type`. Every module reads (the trait's contract): the
    /// commonest request asks no module.
    #[inline]
    pub fn supports(&self, io_type: IoType) -> bool {
        io_type == IoType::Read || self.0.supports_every_io_type || self.0.backend.supports(io_type)
    }

    /// Whether blocks from `offset_blocks` are allocated, and for how many blocks (at least
    /// 1, at most `max_blocks` and the end of the bdev) that holds; None when the module
    /// keeps no allocation map, or the range is empty or outside the bdev.
    pub fn allocation_run(&self, offset_blocks: u64, max_blocks: u64) -> Option<(bool, u64)> {
        let max = max_blocks.min(self.num_blocks().checked_sub(offset_blocks)?);
        if max == 0 {
            return None;
        }
        let (allocated, n) = self.0.backend.allocation_run(offset_blocks, max)?;
        Some((allocated, n.clamp(1, max)))
    }

    /// The module holding the write claim, if any.
    pub fn claimed_by(&self) -> Option<String> {
        lock(&self.0.claim).clone()
    }

    /// Whether it has been unregistered.
    pub fn is_removed(&self) -> bool {
        self.0.removed.load(Ordering::Acquire)
    }

    /// Whether `name` is its name or one of its aliases (or its uuid).
    pub fn answers_to(&self, name: &str) -> bool {
        self.0.name == name || lock(&self.0.aliases).iter().any(|a| a == name) || self.0.uuid.to_string() == name
    }

    /// Resizes the bdev (if its module allows) and tells every open descriptor.
    pub fn resize(&self, num_blocks: u64) -> Result<(), BdevError> {
        if num_blocks == 0 {
            return Err(BdevError::InvalidParam("new size must be greater than zero".into()));
        }
        self.0.backend.resize(num_blocks)?;
        self.0.num_blocks.store(num_blocks, Ordering::Release);
        super::desc::notify(self, super::BdevEvent::Resize);
        Ok(())
    }

    /// The sum of the statistics of every channel, live and closed.
    pub fn stats(&self) -> IoStats {
        let total = IoStats::default();
        total.merge(&lock(&self.0.retired_stats));
        for (_, live, _) in self.live_channel_stats() {
            total.merge(&live);
        }
        total
    }

    /// The statistics of each live channel with the reactor (index) it belongs to.
    pub fn channel_stats(&self) -> Vec<(Option<usize>, Arc<IoStats>)> {
        self.live_channel_stats().into_iter().map(|(r, s, _)| (r, s)).collect()
    }

    #[allow(clippy::type_complexity)]
    fn live_channel_stats(&self) -> Vec<(Option<usize>, Arc<IoStats>, Option<Bdev>)> {
        let entries = lock(&self.0.channel_stats);
        let live = entries.iter().filter_map(|e| {
            let partner = e.partner.as_ref().and_then(Weak::upgrade).map(Bdev);
            Some((e.reactor, e.stats.upgrade()?, partner))
        });
        live.collect()
    }

    /// Each live channel's statistics, read and then reset by `mode` on the reactor that
    /// writes them (so no completion is lost between the two), with the reactor's index.
    /// Counters shared with another bdev are reset for this one only: what the reset clears
    /// goes to the other's retired counters.
    pub fn take_channel_stats(&self, mode: ResetMode) -> Result<Vec<(Option<usize>, IoStats)>, BdevError> {
        let live = self.live_channel_stats();
        if mode == ResetMode::None {
            return Ok(live.into_iter().map(|(r, s, _)| (r, s.snapshot())).collect());
        }
        let take = move |(r, s, partner): &(Option<usize>, Arc<IoStats>, Option<Bdev>)| {
            let taken = s.take(mode);
            if let Some(partner) = partner {
                lock(&partner.0.retired_stats).merge_cleared(&taken, mode);
            }
            (*r, taken)
        };
        let (on_reactors, elsewhere): (Vec<_>, Vec<_>) = live.into_iter().partition(|(r, _, _)| r.is_some());
        let on_reactors = Arc::new(on_reactors);
        let per_reactor = crate::framework::call_on_each(move || {
            let me = crate::framework::current_index();
            on_reactors.iter().filter(|(r, _, _)| *r == me).map(take).collect::<Vec<_>>()
        })?;
        // Channels made off any reactor (tests, tools) have no reactor to ask.
        let others = elsewhere.iter().map(take);
        Ok(per_reactor.into_iter().flatten().chain(others).collect())
    }

    /// The sum of every channel's statistics, live and closed, each read and then reset by
    /// `mode` (see [`Bdev::take_channel_stats`]).
    pub fn take_stats(&self, mode: ResetMode) -> Result<IoStats, BdevError> {
        if mode == ResetMode::None {
            return Ok(self.stats());
        }
        let total = lock(&self.0.retired_stats).take(mode);
        for (_, s) in self.take_channel_stats(mode)? {
            total.merge(&s);
        }
        Ok(total)
    }

    pub(crate) fn io_device(&self) -> IoDeviceId {
        self.0.io_device
    }

    /// Whether two handles are the same device.
    pub fn same(&self, other: &Bdev) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::fmt::Debug for Bdev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bdev").field("name", &self.0.name).field("module", &self.module()).finish()
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    /// Every field an I/O's checks read lies in the bdev's first cache line (see
    /// [`BdevInner`]).
    #[test]
    fn per_io_fields_lie_in_the_first_cache_line() {
        assert_eq!(align_of::<BdevInner>(), 64);
        assert!(offset_of!(BdevInner, num_blocks) + size_of::<AtomicU64>() <= 64);
        assert!(offset_of!(BdevInner, block_size) + size_of::<u32>() <= 64);
        assert!(offset_of!(BdevInner, removed) < 64);
        assert!(offset_of!(BdevInner, supports_every_io_type) < 64);
        assert!(offset_of!(BdevInner, backend) + size_of::<Box<dyn BdevBackend>>() <= 64);
        assert!(offset_of!(BdevInner, qos) + super::super::qos::BdevQos::PER_IO_BYTES <= 64);
    }
}
