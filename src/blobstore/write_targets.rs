//! Where a blob's writes go on the base, remembered per lvol channel, so that a write to a
//! cluster the blob owns whole skips the store (the blob in the map, its flags, the cluster's
//! validity bits and log state) and is remapped onto the base at once, without the store
//! itself being reached: the channel holds the store's version counter and its channel to
//! the base, not the store.
//!
//! Nothing here is kept in step with the store by hand. Every change to the store's state
//! goes through [`Versioned::borrow_mut`], which bumps the store's version; a remembered
//! target is used only while the version it was found under is still current. So a snapshot,
//! a freeze, a resize, a record on its way to the log, or anything else the store does makes
//! every remembered target stale at once, and the next write to each cluster takes the full
//! path (which remembers the target again when it applies).

use crate::bdev::{BdevChannel, BdevIo, IoType, RemapTarget};
use std::cell::{Cell, Ref, RefCell, RefMut};
use std::rc::Rc;

/// A `RefCell` that counts its mutable borrows: its version changes with every one.
pub struct Versioned<T> {
    value: RefCell<T>,
    /// Shared with the [`WriteTargets`] made from it, which outlive it harmlessly: its drop
    /// leaves the counter at [`GONE`].
    version: Rc<Cell<u64>>,
}

impl<T> Versioned<T> {
    /// Wraps `value` at version 0.
    pub fn new(value: T) -> Self {
        Versioned { value: RefCell::new(value), version: Rc::new(Cell::new(0)) }
    }

    /// Borrows the value to read it; the version stays.
    #[inline]
    pub fn borrow(&self) -> Ref<'_, T> {
        self.value.borrow()
    }

    /// Borrows the value to change it: a new version from now on.
    #[inline]
    pub fn borrow_mut(&self) -> RefMut<'_, T> {
        let mut next = self.version.get() + 1;
        if next as u32 == UNKNOWN_TAG {
            // The one low half a [`TargetMap`] entry's tag never matches.
            next += 1;
        }
        self.version.set(next);
        self.value.borrow_mut()
    }

    /// The current version: never [`GONE`], and its low 32 bits are never [`UNKNOWN_TAG`].
    #[inline]
    pub fn version(&self) -> u64 {
        self.version.get()
    }

    /// Sets the version (tests of the counter's wrap).
    #[cfg(test)]
    fn set_version(&self, version: u64) {
        self.version.set(version);
    }
}

impl<T> Drop for Versioned<T> {
    fn drop(&mut self) {
        // Every target remembered under this value is stale from now on, whoever still
        // holds the counter.
        self.version.set(GONE);
    }
}

/// Not a version any store reaches (2^64 changes): the store is gone.
const GONE: u64 = u64::MAX - 1;
/// The low 32 bits of no version ([`Versioned::borrow_mut`] skips them): the tag of an entry
/// not filled.
const UNKNOWN_TAG: u32 = u32::MAX;
/// An entry not filled.
const UNKNOWN_ENTRY: u64 = u64::MAX;

/// One blob's write targets on one reactor (the store's): where its writes go (a
/// [`TargetMap`] in blocks of the base), with the store's channel to the base, so that a write
/// they cover goes there with no call into the store.
pub struct WriteTargets {
    map: TargetMap,
    /// The store's channel to its base on this reactor, checked once for remapped writes
    /// (`None`: it takes none, every write takes the store's path) ...
    base: Option<RemapTarget>,
    /// ... and for remapped reads: a target is a cluster the blob owns whole, so a read
    /// within it goes to the same place.
    read_base: Option<RemapTarget>,
    /// log2 of the base's block size.
    block_shift: u32,
}

impl WriteTargets {
    /// No targets yet, for a store whose version counter is `version` and whose channel to
    /// its base (blocks of `1 << block_shift` bytes) is `base`.
    pub(super) fn new<T>(version: &Versioned<T>, base: &BdevChannel, block_shift: u32) -> Self {
        WriteTargets {
            map: TargetMap::new(version),
            base: base.remap_target(IoType::Write),
            read_base: base.remap_target(IoType::Read),
            block_shift,
        }
    }

    /// Remaps `io` onto the base if it is a write that a target found under the store's
    /// current version covers whole; gives it back otherwise (for the store's full path), or
    /// when the bdev layer cannot remap it.
    #[inline]
    pub fn try_write(&self, io: Box<BdevIo>) -> Result<(), Box<BdevIo>> {
        Self::try_remap(&self.base, IoType::Write, io, |o, n| self.map.lookup(o, n))
    }

    /// [`Self::try_write`] with the run only (see [`TargetMap::lookup_run`]): a write it gives
    /// back may still be covered by a cluster's entry. For a caller that tries
    /// [`Self::try_write`] out of line next, so that its own frame stays small (a thick
    /// blob's every write is covered by the run).
    #[inline]
    pub fn try_write_run(&self, io: Box<BdevIo>) -> Result<(), Box<BdevIo>> {
        Self::try_remap(&self.base, IoType::Write, io, |o, n| self.map.lookup_run(o, n))
    }

    /// [`Self::try_write`] for a read: a target covering it whole holds its data.
    #[inline]
    pub fn try_read(&self, io: Box<BdevIo>) -> Result<(), Box<BdevIo>> {
        Self::try_remap(&self.read_base, IoType::Read, io, |o, n| self.map.lookup(o, n))
    }

    /// Remaps `io`, if it is of `io_type`, onto `target` where `lookup` (of its offset and
    /// length) finds it goes.
    #[inline(always)]
    fn try_remap(
        target: &Option<RemapTarget>,
        io_type: IoType,
        io: Box<BdevIo>,
        lookup: impl FnOnce(u64, u64) -> Option<u64>,
    ) -> Result<(), Box<BdevIo>> {
        let Some(target) = target else { return Err(io) };
        if io.io_type != io_type {
            return Err(io);
        }
        match lookup(io.offset_blocks, io.num_blocks) {
            Some(at) => target.remap(io, at),
            None => Err(io),
        }
    }

    /// Where a write of `num_blocks` at block `offset_blocks` of the blob goes on the base
    /// (its block), if a remembered target covers it (see [`TargetMap::lookup`]).
    pub fn lookup(&self, offset_blocks: u64, num_blocks: u64) -> Option<u64> {
        self.map.lookup(offset_blocks, num_blocks)
    }

    /// Remembers that writes within cluster `cluster` (of `cluster_size` bytes) go whole to
    /// byte `base` of the base while the store is at `version` (see [`TargetMap::fill`]).
    pub(super) fn fill(&self, version: u64, cluster_size: u64, cluster: u64, base: u64) {
        let b = self.block_shift;
        self.map.fill(version, cluster_size >> b, cluster, base >> b)
    }

    /// Whether the run was found under `version` (see [`TargetMap::run_current`]).
    pub(super) fn run_current(&self, version: u64) -> bool {
        self.map.run_current(version)
    }

    /// Remembers that writes within clusters `first..first + count` (of `cluster_size`
    /// bytes) go whole to the base's consecutive clusters from byte `base` on while the store
    /// is at `version` (see [`TargetMap::fill_run`]).
    pub(super) fn fill_run(&self, version: u64, cluster_size: u64, first: u64, count: u64, base: u64) {
        let b = self.block_shift;
        self.map.fill_run(version, cluster_size >> b, first, count, base >> b)
    }
}

/// A span of a blob that writes go to whole, at consecutive places of the base.
#[derive(Clone, Copy)]
struct Run {
    /// Its first unit.
    start: u64,
    /// Its length in units (0: no run).
    len: u64,
    /// Where on the base its first unit is.
    base: u64,
    /// The store version it was found under.
    version: u64,
}

/// Where on the base a write of one blob goes whole, in units of the caller's choice (blocks
/// for [`WriteTargets`]), and the store version that was found under; with the store's
/// version counter.
///
/// First, one run of consecutive clusters mapped onto consecutive base clusters (a thick blob
/// made at once is one): a write inside it (across its clusters too) is remapped with no
/// load beyond the map's own fields, where an entry of a large map is often out of the
/// first-level cache behind the data a write streams through it.
///
/// Then, per cluster, an entry of 8 bytes: the low half of the version it was found under and
/// the base cluster, so that a blob's entries take half the cache lines; the high half of the
/// version, common to every entry, is kept once, and entries found under another high half
/// are dropped when the first of the new one is filled.
pub struct TargetMap {
    /// The store's version counter.
    version: Rc<Cell<u64>>,
    /// The run, checked before the entries.
    run: Cell<Run>,
    /// The store's cluster size in units, a power of two (0 until the first entry is filled).
    cluster_size: Cell<u64>,
    /// The high 32 bits of the version every entry was found under.
    version_high: Cell<u64>,
    /// By cluster: (low 32 bits of the version) << 32 | base cluster; grown as clusters are
    /// filled.
    entries: RefCell<Vec<u64>>,
}

impl TargetMap {
    /// No targets yet, for the store whose version counter is `version`'s.
    pub fn new<T>(version: &Versioned<T>) -> Self {
        TargetMap {
            version: version.version.clone(),
            run: Cell::new(Run { start: 0, len: 0, base: 0, version: GONE }),
            cluster_size: Cell::new(0),
            version_high: Cell::new(0),
            entries: RefCell::new(Vec::new()),
        }
    }

    /// Where a write of `len` units at unit `offset` of the blob goes on the base, if a
    /// target found under the store's current version covers it whole: the run, or one
    /// cluster's entry.
    #[inline]
    pub fn lookup(&self, offset: u64, len: u64) -> Option<u64> {
        self.lookup_run(offset, len).or_else(|| self.lookup_entry(offset, len, self.version.get()))
    }

    /// [`Self::lookup`] in the run only.
    #[inline]
    pub fn lookup_run(&self, offset: u64, len: u64) -> Option<u64> {
        let run = self.run.get();
        // One subtraction tests both ends: an offset before the run wraps past its length.
        let within = offset.wrapping_sub(run.start);
        // Not `then_some`: its argument is computed either way, and outside the run the sum
        // may overflow.
        if within < run.len && len <= run.len - within && run.version == self.version.get() {
            Some(within + run.base)
        } else {
            None
        }
    }

    /// [`Self::lookup`] in the cluster entries.
    #[inline]
    fn lookup_entry(&self, offset: u64, len: u64, version: u64) -> Option<u64> {
        let cs = self.cluster_size.get();
        if cs == 0 {
            return None;
        }
        let shift = cs.trailing_zeros();
        let (c, within) = (offset >> shift, offset & (cs - 1));
        if len > cs - within {
            return None;
        }
        // Never borrowed across a call; `try_borrow` keeps a panic path (and the registers
        // it needs saved) out of the remap's frame (see `remap_checked` in the bdev layer).
        let entry = *self.entries.try_borrow().ok()?.get(c as usize)?;
        let current = (entry >> 32) as u32 == version as u32 && self.version_high.get() == version >> 32;
        current.then_some(((entry & 0xffff_ffff) << shift) + within)
    }

    /// Whether the run was found under `version` (else the next fill should find one).
    pub fn run_current(&self, version: u64) -> bool {
        self.run.get().version == version
    }

    /// Remembers that writes within clusters `first..first + count` (of `cluster_size` units)
    /// go whole to the base's consecutive clusters from unit `base` on while the store is at
    /// `version`, in place of the run remembered before. Not remembered: a span past what 64
    /// bits address, or the store gone.
    pub fn fill_run(&self, version: u64, cluster_size: u64, first: u64, count: u64, base: u64) {
        let start = first.checked_mul(cluster_size);
        let end = first.checked_add(count).and_then(|e| e.checked_mul(cluster_size));
        let (Some(start), Some(end)) = (start, end) else { return };
        if version == GONE || base.checked_add(end - start).is_none() {
            return;
        }
        self.run.set(Run { start, len: end - start, base, version });
    }

    /// Remembers that writes within cluster `cluster` (of `cluster_size` units, a power of
    /// two) go whole to unit `base` of the base while the store is at `version`. Not
    /// remembered: a base cluster past what 32 bits number, or the store gone.
    pub fn fill(&self, version: u64, cluster_size: u64, cluster: u64, base: u64) {
        let base_cluster = base / cluster_size.max(1);
        if !cluster_size.is_power_of_two()
            || !base.is_multiple_of(cluster_size)
            || base_cluster >= UNKNOWN_TAG as u64
            || version == GONE
        {
            return;
        }
        self.cluster_size.set(cluster_size);
        let mut entries = self.entries.borrow_mut();
        if self.version_high.get() != version >> 32 {
            entries.fill(UNKNOWN_ENTRY);
            self.version_high.set(version >> 32);
        }
        let c = cluster as usize;
        if c >= entries.len() {
            entries.resize(c + 1, UNKNOWN_ENTRY);
        }
        entries[c] = (version as u32 as u64) << 32 | base_cluster;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_holds_only_under_the_version_it_was_found_and_only_within_its_cluster() {
        let store = Versioned::new(0u8);
        let t = TargetMap::new(&store);
        assert_eq!(t.lookup(0, 4096), None, "nothing filled");
        t.fill(store.version(), 1 << 20, 3, 7 << 20);
        assert_eq!(t.lookup((3 << 20) + 8192, 4096), Some((7 << 20) + 8192));
        assert_eq!(t.lookup((4 << 20) - 4096, 8192), None, "runs past the cluster");
        assert_eq!(t.lookup(2 << 20, 4096), None, "another cluster");
        assert_eq!(t.lookup(9 << 20, 4096), None, "past every entry");
        // Reading the value keeps the version; changing it does not.
        drop(store.borrow());
        assert!(t.lookup(3 << 20, 4096).is_some());
        *store.borrow_mut() = 1;
        assert_eq!(t.lookup(3 << 20, 4096), None, "stale after a change");
        t.fill(store.version(), 1 << 20, 3, 7 << 20);
        assert!(t.lookup(3 << 20, 4096).is_some());
        // A store gone leaves every target stale, though the map still holds its counter.
        drop(store);
        assert_eq!(t.lookup(3 << 20, 4096), None, "stale once the store is gone");
    }

    #[test]
    fn entries_keep_half_the_version_and_still_match_only_their_own() {
        let store = Versioned::new(0u8);
        let t = TargetMap::new(&store);
        // Just below a change of the high half: the skipped low half, then the next high.
        store.set_version((1 << 32) - 2);
        t.fill(store.version(), 1 << 20, 0, 5 << 20);
        assert_eq!(t.lookup(4096, 4096), Some((5 << 20) + 4096));
        *store.borrow_mut() = 1;
        assert_eq!(store.version(), 1 << 32, "the low half of all ones is skipped");
        assert_eq!(t.lookup(4096, 4096), None, "stale in the next high half");
        // Cluster 2 was never filled; its entry must not match any version.
        t.fill(store.version(), 1 << 20, 3, 9 << 20);
        assert_eq!(t.lookup(2 << 20, 4096), None, "never filled");
        assert_eq!(t.lookup(0, 4096), None, "dropped with the old high half");
        assert_eq!(t.lookup(3 << 20, 4096), Some(9 << 20));
        // The same low half under another high half does not match.
        store.set_version((2 << 32) | (1 << 32));
        assert_eq!(t.lookup(3 << 20, 4096), None, "same low half, another high half");
        // A base cluster past 32 bits is not remembered.
        t.fill(store.version(), 1 << 20, 4, (u32::MAX as u64) << 20);
        assert_eq!(t.lookup(4 << 20, 4096), None);
    }

    #[test]
    fn a_run_covers_its_clusters_and_what_crosses_them_only_under_its_version() {
        let store = Versioned::new(0u8);
        let t = TargetMap::new(&store);
        assert_eq!(t.lookup_run(0, 1), None, "no run yet");
        // Clusters 2, 3 and 4 (of 8 units) at unit 80 of the base onwards; cluster 6 alone.
        t.fill_run(store.version(), 8, 2, 3, 80);
        t.fill(store.version(), 8, 6, 200);
        assert!(t.run_current(store.version()));
        assert_eq!(t.lookup(16, 8), Some(80), "the run's first cluster");
        assert_eq!(t.lookup(21, 6), Some(85), "across two of its clusters");
        assert_eq!(t.lookup(39, 1), Some(103), "its last unit");
        assert_eq!(t.lookup(15, 2), None, "starts before it");
        assert_eq!(t.lookup(38, 3), None, "runs past its end");
        assert_eq!(t.lookup(40, 1), None, "after it, no entry");
        assert_eq!(t.lookup(50, 2), Some(202), "an entry outside it");
        assert_eq!(t.lookup(u64::MAX, u64::MAX), None, "no overflow");
        assert_eq!(t.lookup_run(21, 6), Some(85), "the run alone finds what it covers");
        assert_eq!(t.lookup_run(50, 2), None, "but not an entry");
        assert_eq!(t.lookup_run(0, 1), None, "nor what lies before it");
        // Another run replaces it.
        t.fill_run(store.version(), 8, 5, 1, 120);
        assert_eq!(t.lookup(16, 8), None, "the old run is gone");
        assert_eq!(t.lookup(41, 4), Some(121));
        // Any change makes it stale; a store gone, too.
        *store.borrow_mut() = 1;
        assert!(!t.run_current(store.version()));
        assert_eq!(t.lookup(41, 4), None, "stale after a change");
        t.fill_run(store.version(), 8, 5, 1, 120);
        assert_eq!(t.lookup(41, 4), Some(121));
        drop(store);
        assert_eq!(t.lookup(41, 4), None, "stale once the store is gone");
        // Not remembered: a span past what 64 bits address.
        let store = Versioned::new(0u8);
        let t = TargetMap::new(&store);
        t.fill_run(store.version(), 8, u64::MAX / 8, 2, 0);
        t.fill_run(store.version(), 8, 0, 2, u64::MAX - 8);
        assert!(!t.run_current(store.version()));
    }
}
