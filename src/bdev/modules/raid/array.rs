//! An array: its identity, its member slots and their states, the write-intent bitmaps, and
//! the list of every array (configuring, online or offline), as SPDK's `g_raid_bdev_list`.
//!
//! The control state sits behind one mutex (RPCs, examine, member events, the rebuild); the
//! data path reads only `generation` (an atomic) per I/O and rebuilds its per-reactor view of
//! the members when it changes.

use super::layout::{Layout, RaidLevel};
use super::superblock::{SbSlot, SlotMark, Superblock};
use crate::bdev::device::lock;
use crate::bdev::{Bdev, BdevDesc, BdevError, IoType};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// SPDK's array states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaidState {
    /// Registered as a bdev.
    Online,
    /// Waiting for members.
    Configuring,
    /// Deconfigured after losing members it cannot do without.
    Offline,
}

impl RaidState {
    /// SPDK's name.
    pub fn name(self) -> &'static str {
        match self {
            RaidState::Online => "online",
            RaidState::Configuring => "configuring",
            RaidState::Offline => "offline",
        }
    }
}

/// A member slot's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// In sync: read and written.
    Online,
    /// Being rebuilt: written, not read.
    Rebuilding,
    /// No member.
    Empty,
}

/// One member slot.
pub struct Slot {
    /// The member's name (SPDK shows null for an empty slot).
    pub name: Option<String>,
    /// The member's uuid (nil when empty).
    pub uuid: Option<Uuid>,
    /// The open, claimed member.
    pub desc: Option<BdevDesc>,
    /// Its state.
    pub state: SlotState,
    /// The uuid of the member that left this slot, and whether it was in sync when it left
    /// (then the degraded bitmap lists everything it misses).
    pub left: Option<(Uuid, bool)>,
    /// Blocks of the member's data area the array uses (0 until known).
    pub data_blocks: u64,
    /// Changes with every member attached here, so a late failure report of a member that
    /// left cannot fail the next one.
    pub epoch: u64,
}

impl Slot {
    fn empty() -> Slot {
        Slot { name: None, uuid: None, desc: None, state: SlotState::Empty, left: None, data_blocks: 0, epoch: 0 }
    }

    /// A slot waiting for the member named `name`.
    pub fn named(name: &str) -> Slot {
        Slot { name: Some(name.to_string()), ..Slot::empty() }
    }

    /// A slot waiting for the member with `uuid` (from a superblock).
    pub fn expecting(uuid: Uuid, data_blocks: u64) -> Slot {
        Slot { uuid: Some(uuid), data_blocks, ..Slot::empty() }
    }

    /// An empty slot a member left.
    pub fn vacated(left: Option<(Uuid, bool)>, data_blocks: u64) -> Slot {
        Slot { left, data_blocks, ..Slot::empty() }
    }

    /// Whether a member is attached.
    pub fn present(&self) -> bool {
        self.desc.is_some()
    }
}

/// A background process (rebuild or resync) and its progress.
pub struct Process {
    /// `rebuild` (SPDK's) or `resync` (after an unclean shutdown).
    pub kind: &'static str,
    /// The slot being written.
    pub target: usize,
    /// The target's name.
    pub target_name: String,
    /// Array blocks done so far.
    pub progress: Arc<AtomicU64>,
    /// Set to stop the process.
    pub cancel: Arc<AtomicBool>,
    /// Its bandwidth limit (`bdev_raid_set_options`' `process_max_bandwidth_mb_sec`).
    pub limit: Arc<crate::bdev::qos::gate::LimitSlot>,
}

/// The control state of an array.
pub struct Ctl {
    /// SPDK's state.
    pub state: RaidState,
    /// The member slots.
    pub slots: Vec<Slot>,
    /// Its geometry, once every member was seen.
    pub layout: Option<Arc<Layout>>,
    /// The registered raid bdev (online arrays).
    pub bdev: Option<Bdev>,
    /// The running process.
    pub process: Option<Process>,
    /// Whether the superblock said the array was not closed cleanly (resync wanted).
    pub unclean: bool,
}

/// The write-intent bitmaps of a superblock array (raid1): bits are set, and persisted,
/// before a write to their region goes on.
pub struct WriteIntent {
    /// Blocks per bit.
    pub region_blocks: u64,
    /// Number of bits.
    pub bits: u64,
    /// Regions written while a member was missing or being rebuilt.
    pub degraded: Vec<AtomicU64>,
    /// Regions written since the last clean close (resynced after an unclean shutdown).
    pub active: Vec<AtomicU64>,
    /// Whether writes now also mark `degraded`.
    pub degraded_mode: AtomicBool,
    /// Bumped each time a bit is set.
    pub set_gen: AtomicU64,
    /// The `set_gen` the last completed superblock write covered.
    pub persisted_gen: AtomicU64,
}

impl WriteIntent {
    /// Bitmaps of `bits` bits of `region_blocks` blocks each, loaded from `degraded` and
    /// `active` words.
    pub fn new(region_blocks: u64, bits: u64, degraded: &[u64], active: &[u64]) -> WriteIntent {
        let words = bits.div_ceil(64) as usize;
        let load = |src: &[u64]| (0..words).map(|i| AtomicU64::new(src.get(i).copied().unwrap_or(0))).collect();
        WriteIntent {
            region_blocks,
            bits,
            degraded: load(degraded),
            active: load(active),
            degraded_mode: AtomicBool::new(false),
            set_gen: AtomicU64::new(0),
            persisted_gen: AtomicU64::new(0),
        }
    }

    /// Marks the regions of array blocks `[offset, offset + blocks)` for a write. Returns the
    /// generation that must be persisted before the write may go on, or None when it may go
    /// on now (every bit was set and written out already).
    pub fn mark(&self, offset: u64, blocks: u64) -> Option<u64> {
        let first = offset / self.region_blocks;
        let last = (offset + blocks.max(1) - 1) / self.region_blocks;
        let degraded = self.degraded_mode.load(Ordering::Acquire);
        let mut newly = false;
        for r in first..=last.min(self.bits.saturating_sub(1)) {
            let (w, bit) = ((r / 64) as usize, 1u64 << (r % 64));
            if self.active[w].load(Ordering::Relaxed) & bit == 0 {
                newly |= self.active[w].fetch_or(bit, Ordering::AcqRel) & bit == 0;
            }
            if degraded && self.degraded[w].load(Ordering::Relaxed) & bit == 0 {
                newly |= self.degraded[w].fetch_or(bit, Ordering::AcqRel) & bit == 0;
            }
        }
        let g =
            if newly { self.set_gen.fetch_add(1, Ordering::AcqRel) + 1 } else { self.set_gen.load(Ordering::Acquire) };
        (self.persisted_gen.load(Ordering::Acquire) < g).then_some(g)
    }

    /// Marks the regions of `[offset, offset + blocks)` in `degraded` (a member missed a
    /// write there); the generation to persist, as [`WriteIntent::mark`].
    pub fn mark_degraded(&self, offset: u64, blocks: u64) -> Option<u64> {
        let first = offset / self.region_blocks;
        let last = (offset + blocks.max(1) - 1) / self.region_blocks;
        let mut newly = false;
        for r in first..=last.min(self.bits.saturating_sub(1)) {
            let (w, bit) = ((r / 64) as usize, 1u64 << (r % 64));
            newly |= self.degraded[w].fetch_or(bit, Ordering::AcqRel) & bit == 0;
        }
        let g =
            if newly { self.set_gen.fetch_add(1, Ordering::AcqRel) + 1 } else { self.set_gen.load(Ordering::Acquire) };
        (self.persisted_gen.load(Ordering::Acquire) < g).then_some(g)
    }

    /// The regions set in a bitmap.
    pub fn regions(words: &[AtomicU64], bits: u64) -> Vec<u64> {
        (0..bits).filter(|r| words[(r / 64) as usize].load(Ordering::Acquire) & (1 << (r % 64)) != 0).collect()
    }

    /// A bitmap's words now.
    pub fn snapshot(words: &[AtomicU64]) -> Vec<u64> {
        words.iter().map(|w| w.load(Ordering::Acquire)).collect()
    }

    /// Clears a bitmap.
    pub fn clear(words: &[AtomicU64]) {
        for w in words {
            w.store(0, Ordering::Release);
        }
    }
}

/// One array.
pub struct Array {
    /// The raid bdev's name.
    pub name: String,
    /// The raid bdev's uuid.
    pub uuid: Uuid,
    /// Its level.
    pub level: RaidLevel,
    /// SPDK's strip size in KiB (0 for raid1).
    pub strip_size_kb: u32,
    /// Whether members carry a superblock.
    pub superblock: bool,
    /// The data area's offset on each member, in blocks (0 without a superblock); fixed once
    /// the block size is known.
    pub data_offset: AtomicU64,
    /// The block size, once known (0 before).
    pub block_size: AtomicU64,
    /// Control state.
    pub ctl: Mutex<Ctl>,
    /// Bumped at every change of the members the data path must see.
    pub generation: AtomicU64,
    /// Bytes copied by rebuilds and resyncs, in all.
    pub rebuilt_bytes: AtomicU64,
    /// Highest superblock sequence number written or read.
    pub sb_seq: AtomicU64,
    /// Write-intent bitmaps (superblock raid1 arrays).
    pub intent: Mutex<Option<Arc<WriteIntent>>>,
    /// I/O types every present member supports (bit per `IoType::ALL` index).
    pub io_types: AtomicU8,
}

static ARRAYS: Mutex<Vec<Arc<Array>>> = Mutex::new(Vec::new());

/// Every array, in creation order.
pub fn list() -> Vec<Arc<Array>> {
    lock(&ARRAYS).clone()
}

/// The array named `name`.
pub fn find(name: &str) -> Option<Arc<Array>> {
    lock(&ARRAYS).iter().find(|a| a.name == name).cloned()
}

/// The array with uuid `uuid`.
pub fn find_uuid(uuid: Uuid) -> Option<Arc<Array>> {
    lock(&ARRAYS).iter().find(|a| a.uuid == uuid).cloned()
}

/// Adds an array to the list; EEXIST if the name is taken.
pub fn insert(array: Arc<Array>) -> Result<(), BdevError> {
    let mut all = lock(&ARRAYS);
    if all.iter().any(|a| a.name == array.name) {
        return Err(BdevError::AlreadyExists(array.name.clone()));
    }
    all.push(array);
    Ok(())
}

/// Removes an array from the list.
pub fn forget(array: &Array) {
    lock(&ARRAYS).retain(|a| !std::ptr::eq(a.as_ref(), array));
}

/// The member that owns `bdev`: (array, slot).
pub fn owner_of(bdev: &Bdev) -> Option<(Arc<Array>, usize)> {
    for a in list() {
        let ctl = lock(&a.ctl);
        let found = ctl.slots.iter().position(|s| s.desc.as_ref().is_some_and(|d| d.bdev().same(bdev)));
        drop(ctl);
        if let Some(i) = found {
            return Some((a, i));
        }
    }
    None
}

impl Array {
    /// A new array (not yet listed) with these slots.
    pub fn new(
        name: &str,
        uuid: Uuid,
        level: RaidLevel,
        strip_size_kb: u32,
        superblock: bool,
        slots: Vec<Slot>,
    ) -> Array {
        Array {
            name: name.to_string(),
            uuid,
            level,
            strip_size_kb,
            superblock,
            data_offset: AtomicU64::new(0),
            block_size: AtomicU64::new(0),
            ctl: Mutex::new(Ctl {
                state: RaidState::Configuring,
                slots,
                layout: None,
                bdev: None,
                process: None,
                unclean: false,
            }),
            generation: AtomicU64::new(1),
            rebuilt_bytes: AtomicU64::new(0),
            sb_seq: AtomicU64::new(0),
            intent: Mutex::new(None),
            io_types: AtomicU8::new(0),
        }
    }

    /// The control state, locked.
    pub fn ctl(&self) -> std::sync::MutexGuard<'_, Ctl> {
        lock(&self.ctl)
    }

    /// The write-intent bitmaps, if any.
    pub fn intent(&self) -> Option<Arc<WriteIntent>> {
        lock(&self.intent).clone()
    }

    /// Tells the data path that the members changed; recomputes what it may rely on.
    pub fn changed(&self, ctl: &Ctl) {
        let mut types = 0u8;
        for (i, t) in IoType::ALL.iter().enumerate() {
            let all = ctl.slots.iter().filter_map(|s| s.desc.as_ref()).all(|d| d.bdev().supports(*t));
            if all {
                types |= 1 << i;
            }
        }
        self.io_types.store(types, Ordering::Release);
        if let Some(wi) = self.intent() {
            let degraded = ctl.slots.iter().any(|s| s.state != SlotState::Online);
            wi.degraded_mode.store(degraded, Ordering::Release);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether every present member supports `t`.
    pub fn supports(&self, t: IoType) -> bool {
        let i = IoType::ALL.iter().position(|x| *x == t).unwrap_or(0);
        self.io_types.load(Ordering::Acquire) & (1 << i) != 0
    }

    /// The superblock describing the array now (members, bitmaps), with sequence `seq`.
    pub fn superblock_image(&self, ctl: &Ctl, seq: u64, clean: bool) -> Option<Superblock> {
        let layout = ctl.layout.as_ref()?;
        let wi = self.intent();
        let slots = ctl
            .slots
            .iter()
            .map(|s| {
                let (uuid, mark, delta_ok) = match (s.state, s.uuid, s.left) {
                    (SlotState::Online, Some(u), _) => (u, SlotMark::Configured, false),
                    (SlotState::Rebuilding, Some(u), _) => (u, SlotMark::Rebuilding, false),
                    (_, Some(u), _) => (u, SlotMark::Configured, false),
                    (_, None, Some((u, ok))) => (u, SlotMark::Missing, ok),
                    (_, None, None) => (Uuid::nil(), SlotMark::Missing, false),
                };
                SbSlot { uuid, mark, delta_ok, data_blocks: s.data_blocks }
            })
            .collect();
        let (region_blocks, bits, degraded, active) = match &wi {
            Some(w) => (w.region_blocks, w.bits, WriteIntent::snapshot(&w.degraded), WriteIntent::snapshot(&w.active)),
            None => (0, 0, Vec::new(), Vec::new()),
        };
        Some(Superblock {
            seq,
            clean,
            uuid: self.uuid,
            name: self.name.clone(),
            level: self.level,
            strip_size_kb: self.strip_size_kb,
            block_size: self.block_size.load(Ordering::Acquire) as u32,
            num_blocks: layout.num_blocks,
            region_blocks,
            bits,
            slots,
            degraded,
            active: if clean { vec![0; active.len()] } else { active },
        })
    }

    /// SPDK's `raid_bdev_write_info_json` members (without `name`), plus Ferry's
    /// `rebuilt_bytes` and `write_intent` (superblock raid1 arrays).
    pub fn info_json(&self) -> Value {
        let ctl = self.ctl();
        let discovered = ctl.slots.iter().filter(|s| s.present()).count();
        let operational = match ctl.state {
            RaidState::Configuring => ctl.slots.iter().filter(|s| s.name.is_some() || s.uuid.is_some()).count(),
            _ => discovered,
        };
        let bs = self.block_size.load(Ordering::Acquire);
        let offset = self.data_offset.load(Ordering::Acquire);
        let list: Vec<Value> = ctl
            .slots
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "uuid": s.uuid.unwrap_or_else(Uuid::nil).to_string(),
                    "is_configured": s.present(),
                    "data_offset": if s.present() || s.data_blocks > 0 { offset } else { 0 },
                    "data_size": s.data_blocks,
                })
            })
            .collect();
        let mut v = json!({
            "uuid": self.uuid.to_string(),
            "strip_size_kb": self.strip_size_kb,
            "state": ctl.state.name(),
            "raid_level": self.level.name(),
            "superblock": self.superblock,
            "num_base_bdevs": ctl.slots.len(),
            "num_base_bdevs_discovered": discovered,
            "num_base_bdevs_operational": operational,
        });
        if let (Some(p), Some(l)) = (&ctl.process, &ctl.layout) {
            let blocks = p.progress.load(Ordering::Acquire);
            v["process"] = json!({
                "type": p.kind,
                "target": p.target_name,
                "progress": {"blocks": blocks, "percent": (blocks as f64 * 100.0 / l.num_blocks as f64) as u32},
            });
        }
        v["base_bdevs_list"] = Value::Array(list);
        v["rebuilt_bytes"] = json!(self.rebuilt_bytes.load(Ordering::Acquire));
        if let Some(w) = self.intent() {
            v["write_intent"] = json!({
                "region_size_kb": w.region_blocks * bs / 1024,
                "regions": w.bits,
                "degraded_regions": WriteIntent::regions(&w.degraded, w.bits).len(),
                "active_regions": WriteIntent::regions(&w.active, w.bits).len(),
            });
        }
        v
    }
}
