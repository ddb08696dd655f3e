//! The `Bdev` handle and the `BdevBackend` trait every bdev module implements.

use super::desc::DescShared;
use super::error::BdevError;
use super::io::{BdevIo, IoType};
use super::stats::IoStats;
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

    /// Whether the module can do `io_type`.
    fn supports(&self, io_type: IoType) -> bool;

    /// Makes this thread's channel; called on a reactor thread the first time it submits.
    fn create_channel(&self, bdev: &Bdev) -> Result<Box<dyn BackendChannel>, BdevError>;

    /// The RPC call that recreates the bdev, for `save_config` (method, params).
    fn config(&self, bdev: &Bdev) -> Option<(&'static str, Value)>;

    /// `driver_specific` of `bdev_get_bdevs`, as (key, value), e.g. ("uring", {...}).
    fn driver_specific(&self) -> Option<(&'static str, Value)> {
        None
    }

    /// Whether written data reads back (false for `null`, whose reads are always zeroes).
    fn retains_data(&self) -> bool {
        true
    }

    /// Whether the device has a volatile write cache (flush matters).
    fn write_cache(&self) -> bool {
        false
    }

    /// Required alignment of data buffers, in bytes (1 for none).
    fn buf_align(&self) -> usize {
        1
    }

    /// Whether the module allows resizing to `num_blocks`; the core then updates the size.
    fn resize(&self, _num_blocks: u64) -> Result<(), BdevError> {
        Err(BdevError::InvalidParam(format!("{} bdevs cannot be resized", self.module())))
    }
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

pub(crate) struct BdevInner {
    pub(crate) name: String,
    pub(crate) aliases: Mutex<Vec<String>>,
    pub(crate) uuid: Uuid,
    pub(crate) block_size: u32,
    pub(crate) num_blocks: AtomicU64,
    pub(crate) backend: Box<dyn BdevBackend>,
    pub(crate) io_device: IoDeviceId,
    pub(crate) claim: Mutex<Option<String>>,
    pub(crate) descs: Mutex<Vec<Weak<DescShared>>>,
    pub(crate) removed: AtomicBool,
    pub(crate) channel_stats: Mutex<Vec<Weak<IoStats>>>,
    pub(crate) retired_stats: IoStats,
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
            backend,
            io_device: IoDeviceId::new(),
            claim: Mutex::new(None),
            descs: Mutex::new(Vec::new()),
            removed: AtomicBool::new(false),
            channel_stats: Mutex::new(Vec::new()),
            retired_stats: IoStats::default(),
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

    /// Whether the module supports `io_type`.
    pub fn supports(&self, io_type: IoType) -> bool {
        self.0.backend.supports(io_type)
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
        total.merge(&self.0.retired_stats);
        for live in lock(&self.0.channel_stats).iter().filter_map(Weak::upgrade) {
            total.merge(&live);
        }
        total
    }

    /// The statistics of each live channel, as (reactor index, stats).
    pub fn channel_stats(&self) -> Vec<Arc<IoStats>> {
        lock(&self.0.channel_stats).iter().filter_map(Weak::upgrade).collect()
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
