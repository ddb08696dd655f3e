//! The store engine on its reactor: creating and opening a store, the metadata log with group
//! commit, checkpoints, cluster allocation, and the durability gates (data before the records
//! that name it; a freed cluster reused only once its free is durable).

use super::dev::BaseDev;
use super::format::{self, Record, Section, SuperBlock, BLOCK, CP_PAYLOAD, LOG_PAYLOAD, MAX_GRANULES};
use super::load::{self, LoadError};
use super::state::{BlobMeta, State, FREE, LIMBO, RESERVED};
use super::StoreError;
use crate::bdev::BdevDesc;
use crate::framework::task::{self, Slot};
use std::collections::HashMap;
use std::rc::Rc;
use uuid::Uuid;

/// How to make a new store.
#[derive(Debug, Clone)]
pub struct CreateOpts {
    /// Bytes per cluster (a multiple of 4096).
    pub cluster_size: u64,
    /// The store type recorded in the super block (`LVOLSTORE`).
    pub bstype: [u8; 16],
    /// Deallocate the whole device first (SPDK's lvstore `clear_method` `unmap`).
    pub unmap_device: bool,
    /// How many times the device's size the metadata has room to grow to.
    pub growth: u64,
}

pub use crate::framework::id_hash::IdMap;

/// Why a log write or checkpoint failed (as an errno for the I/O waiting on it).
type Errno = i32;

/// Encoded records in commit order, back to back in one buffer (one record per entry of
/// `ends`): committing appends without allocating per record, and the log writer takes the
/// batch whole. Records never straddle log blocks, so their bounds are kept.
#[derive(Default)]
struct PendingRecords {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl PendingRecords {
    fn push(&mut self, r: &Record) {
        r.encode(&mut self.bytes);
        self.ends.push(self.bytes.len());
    }

    /// Where the records pushed from now on start, for [`PendingRecords::truncate`].
    fn mark(&self) -> usize {
        self.ends.len()
    }

    /// Drops the records pushed since `mark`.
    fn truncate(&mut self, mark: usize) {
        self.ends.truncate(mark);
        self.bytes.truncate(self.ends.last().copied().unwrap_or(0));
    }

    fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Encoded bytes in all.
    fn bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Each record's encoding, in order.
    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(self.ends.iter().copied()).map(|(a, b)| &self.bytes[a..b])
    }
}

pub(crate) struct Inner {
    pub sb: SuperBlock,
    pub state: State,
    /// Sequence number of the open log block and the records already in it.
    tail_seq: u64,
    tail: Vec<u8>,
    /// Encoded records waiting for the log writer, and who waits for them.
    pending: PendingRecords,
    waiters: Vec<Slot<Result<(), Errno>>>,
    writer_running: bool,
    /// Commits numbered; the last one whose records are written (log or checkpoint). A freed
    /// cluster waits in `limbo` with its commit's number until a flush issued after that
    /// commit was written completes (or the write itself, without a volatile cache).
    pub(crate) commit_no: u64,
    written_commit: u64,
    limbo: Vec<(u64, u64)>,
    alloc_cursor: u64,
    /// Cluster locks of the write paths (shared for direct first writes, else exclusive).
    pub(crate) cluster_locks: super::cluster_lock::ClusterLocks,
    /// Writes in flight per blob, and blobs frozen (I/O held) with who waits for a drain.
    pub(crate) inflight_writes: IdMap<u64, u64>,
    pub(crate) drain_waiters: HashMap<u64, Vec<Slot<()>>>,
    #[allow(clippy::vec_box)] // the held I/Os' own boxes, resubmitted as they are
    pub(crate) frozen: HashMap<u64, Vec<Box<crate::bdev::BdevIo>>>,
    /// Clusters whose latest validity record is applied but maybe not in the log yet, with
    /// that commit's number: a write to them completes only once it is (so an acknowledged
    /// write never depends on a record a crash could lose).
    pub(crate) undurable: IdMap<(u64, u64), u64>,
    /// A checkpoint asked for (clean: the final one of a close).
    want_checkpoint: Option<bool>,
    /// A metadata write failed: memory and disk may differ, so no further metadata change
    /// is accepted (the store must be reloaded).
    failed: bool,
}

/// An open store, owned by one reactor.
pub struct Store {
    /// The base device.
    pub dev: BaseDev,
    /// Everything that changes; each mutable borrow is a new version (see `write_targets.rs`).
    pub(crate) inner: super::write_targets::Versioned<Inner>,
    /// The reactor owning it.
    pub reactor: usize,
    pub(crate) io: super::blob_io::IoPool,
    /// Each blob's allocated clusters, for other threads.
    pub alloc_share: std::sync::Arc<super::alloc_share::AllocShare>,
}

/// The geometry of a new store on `device_bytes` with `opts`.
pub fn geometry(device_bytes: u64, io_unit: u32, opts: &CreateOpts) -> Result<SuperBlock, StoreError> {
    let c = opts.cluster_size;
    if c < BLOCK as u64 || !c.is_multiple_of(BLOCK as u64) || c > 1 << 30 {
        return Err(StoreError::Invalid(format!("cluster size {c} must be a multiple of 4096 up to 1 GiB")));
    }
    if io_unit as usize > BLOCK || !io_unit.is_power_of_two() {
        return Err(StoreError::Invalid(format!("base block size {io_unit} is over 4096")));
    }
    let total = device_bytes / c;
    let granule = (c / MAX_GRANULES).max(BLOCK as u64);
    let gpc = c / granule;
    let max_clusters = total.saturating_mul(opts.growth.max(1));
    let max_blobs = total.clamp(16, 65536);
    // Worst case: every cluster partly valid (a MapBits record each), every blob in its own
    // blocks, the used bitmap and blob list in the store section.
    let per_cluster = 3 + 24 + gpc.div_ceil(8);
    let bytes = max_clusters * per_cluster + max_clusters / 8 + max_blobs * 8 + 8192;
    let cp_blocks = max_blobs + bytes.div_ceil(CP_PAYLOAD as u64) + 4;
    let log_blocks = (max_clusters / 16).clamp(256, 16384);
    let md_blocks = 2 + 2 * cp_blocks + log_blocks;
    let md_clusters = (md_blocks * BLOCK as u64).div_ceil(c);
    if total < md_clusters + 1 {
        return Err(StoreError::Invalid(format!(
            "a device of {device_bytes} bytes is too small for a store of {c}-byte clusters ({md_clusters} metadata clusters)"
        )));
    }
    let mut epoch_bytes = [0u8; 8];
    epoch_bytes.copy_from_slice(&Uuid::new_v4().as_bytes()[..8]);
    Ok(SuperBlock {
        seq: 0,
        uuid: Uuid::new_v4(),
        bstype: opts.bstype,
        io_unit,
        cluster_size: c,
        granule,
        total_clusters: total,
        md_clusters,
        max_clusters,
        max_blobs,
        cp_start: [2, 2 + cp_blocks],
        cp_blocks,
        log_start: 2 + 2 * cp_blocks,
        log_blocks,
        cp_slot: 1,
        cp_used: 0,
        cp_id: 0,
        // A random epoch: log blocks left on the device by an older store never replay.
        epoch: u64::from_le_bytes(epoch_bytes) >> 1,
        log_head: 0,
        clean: false,
    })
}

/// Packs checkpoint sections into sealed blocks.
pub fn pack_checkpoint(sections: &[(Section, Vec<Record>)], cp_id: u64) -> Vec<Box<[u8; BLOCK]>> {
    let mut blocks = Vec::new();
    for (section, recs) in sections {
        let mut payloads: Vec<Vec<u8>> = vec![Vec::new()];
        for r in recs {
            let mut enc = Vec::new();
            r.encode(&mut enc);
            if payloads.last().expect("one").len() + enc.len() > CP_PAYLOAD {
                payloads.push(Vec::new());
            }
            payloads.last_mut().expect("one").extend_from_slice(&enc);
        }
        let parts = payloads.len() as u32;
        for (part, p) in payloads.iter().enumerate() {
            let h = format::CpHeader { cp_id, index: blocks.len() as u32, section: *section, part: part as u32, parts };
            blocks.push(format::encode_cp_block(&h, p));
        }
    }
    blocks
}

impl Inner {
    /// The commit a write to cluster `c` of `blob` must wait for (see
    /// [`Store::unlogged_commit_at`]). Nearly always none: the key is not hashed then.
    #[inline]
    pub(crate) fn unlogged_commit(&self, blob: u64, c: u64) -> Option<u64> {
        if self.undurable.is_empty() {
            return None;
        }
        self.undurable.get(&(blob, c)).copied().filter(|&no| no > self.written_commit)
    }

    /// The run of clusters around cluster `c` of blob `b` (id `blob`) that writes may go to
    /// whole, one after another on the base: [`BlobMeta::whole_run`] within [`RUN_REACH`],
    /// cut short at a cluster with a record on its way to the log. `c` itself must qualify.
    /// `None` while many records are on their way (the store is busy allocating; the
    /// per-cluster targets serve meanwhile).
    pub(crate) fn whole_logged_run(&self, blob: u64, b: &BlobMeta, c: u64) -> Option<(u64, u64)> {
        if self.undurable.len() > RUN_UNLOGGED_MAX {
            return None;
        }
        let (mut first, count) = b.whole_run(c, RUN_REACH);
        let mut end = first + count;
        for (&(id, u), &no) in &self.undurable {
            if id == blob && no > self.written_commit && (first..end).contains(&u) {
                if u < c {
                    first = u + 1;
                } else {
                    end = u;
                }
            }
        }
        Some((first, end - first))
    }
}

/// How far on either side of a written cluster [`Inner::whole_logged_run`] looks: a scan of at
/// most twice this, once per store version and lvol channel (1 GiB either side with SPDK's
/// 4 MiB clusters; writes beyond use the per-cluster targets).
const RUN_REACH: u64 = 256;
/// Most records on their way to the log with which [`Inner::whole_logged_run`] still looks for
/// a run (it goes through all of them).
const RUN_UNLOGGED_MAX: usize = 64;

impl Store {
    fn new(dev: BaseDev, sb: SuperBlock, state: State, tail_seq: u64) -> Rc<Store> {
        let reactor = crate::framework::current_index().expect("stores live on reactors");
        let alloc_share = std::sync::Arc::new(super::alloc_share::AllocShare::default());
        alloc_share.reset(&state);
        Rc::new(Store {
            alloc_share,
            dev,
            inner: super::write_targets::Versioned::new(Inner {
                sb,
                state,
                tail_seq,
                tail: Vec::new(),
                pending: PendingRecords::default(),
                waiters: Vec::new(),
                writer_running: false,
                limbo: Vec::new(),
                commit_no: 0,
                written_commit: 0,
                alloc_cursor: 0,
                cluster_locks: Default::default(),
                inflight_writes: IdMap::default(),
                drain_waiters: HashMap::new(),
                frozen: HashMap::new(),
                undurable: IdMap::default(),
                want_checkpoint: None,
                failed: false,
            }),
            reactor,
            io: super::blob_io::IoPool::default(),
        })
    }

    /// Makes a new, empty store on `desc`'s bdev (everything on it is lost).
    pub async fn create(desc: BdevDesc, opts: CreateOpts) -> Result<Rc<Store>, StoreError> {
        let dev = BaseDev::new(desc)?;
        let sb = geometry(dev.size(), dev.block_size as u32, &opts)?;
        if opts.unmap_device {
            let data = sb.md_clusters * sb.cluster_size;
            dev.zero(data, sb.total_clusters * sb.cluster_size - data).await.map_err(StoreError::Io)?;
        }
        // Wipe both super copies first: a crash before the new super lands leaves no store,
        // not the old one pointing at a half-written checkpoint.
        dev.write_bytes(0, &[0u8; 2 * BLOCK]).await.map_err(StoreError::Io)?;
        let state = State::new(
            sb.cluster_size,
            sb.granules_per_cluster(),
            sb.total_clusters,
            sb.md_clusters,
            sb.max_clusters,
            sb.max_blobs,
        );
        let store = Store::new(dev, sb, state, 0);
        store.checkpoint(false).await.map_err(StoreError::Io)?;
        Ok(store)
    }

    /// Opens the store on `desc`'s bdev: loads it, and if it was not closed cleanly folds the
    /// replayed log into a new checkpoint. Either way a new log epoch starts.
    pub async fn open(desc: BdevDesc) -> Result<(Rc<Store>, load::Loaded), StoreError> {
        let dev = BaseDev::new(desc)?;
        let loaded = load::load(&dev, dev.size()).await?;
        for w in &loaded.warnings {
            tracing::warn!(bdev = dev.desc.bdev().name(), "blobstore load: {w}");
        }
        let mut sb = loaded.sb.clone();
        sb.epoch = sb.epoch.wrapping_add(1) & (u64::MAX >> 1);
        let mut state = loaded.state.clone();
        state.freed.clear();
        let tail = loaded.log_tail;
        // A store that grows only by bdev_lvol_grow_lvstore, as SPDK's.
        let refold = loaded.replayed > 0 || !sb.clean || !state.quarantined.is_empty();
        let store = Store::new(dev, sb, state, tail);
        if refold {
            store.checkpoint(false).await.map_err(StoreError::Io)?;
        } else {
            store.write_super(false, tail).await.map_err(StoreError::Io)?;
        }
        Ok((store, loaded))
    }

    /// Writes a final checkpoint marked clean (the next open replays nothing).
    pub async fn close(self: &Rc<Self>) -> Result<(), StoreError> {
        self.request_checkpoint(true).await.map_err(StoreError::Io)
    }

    /// Has the log writer write a checkpoint (after what is pending) and waits for it.
    pub async fn request_checkpoint(self: &Rc<Self>, clean: bool) -> Result<(), Errno> {
        let slot = {
            let mut i = self.inner.borrow_mut();
            i.want_checkpoint = Some(clean || i.want_checkpoint.unwrap_or(false));
            let s = Slot::new();
            i.waiters.push(s.clone());
            s
        };
        self.kick_writer();
        slot.await
    }

    /// The super block in use.
    pub fn super_block(&self) -> SuperBlock {
        self.inner.borrow().sb.clone()
    }

    /// Runs `f` on the state (read-only).
    pub fn with_state<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.inner.borrow().state)
    }

    /// Applies `txn` to the state now and returns once it is in the log (group-committed with
    /// whatever else is pending). A record the state refuses is a bug in the caller: EIO.
    pub async fn commit(self: &Rc<Self>, txn: Vec<Record>) -> Result<(), Errno> {
        self.commit_begin(txn)?.1.await
    }

    /// The first half of [`Store::commit`]: applies `txn` now and queues it for the log;
    /// returns its commit number and what to await for it to be in the log.
    pub(crate) fn commit_begin(self: &Rc<Self>, txn: Vec<Record>) -> Result<(u64, Slot<Result<(), Errno>>), Errno> {
        let no = self.commit_apply(&txn)?;
        let slot = Slot::new();
        self.inner.borrow_mut().waiters.push(slot.clone());
        self.kick_writer();
        Ok((no, slot))
    }

    /// Applies `txn` to the state now and queues it for the log writer (which the caller
    /// kicks); returns its commit number. Whoever waits for it to be written either awaits a
    /// slot in `waiters` or parks an I/O ([`Store::park_until_logged`]).
    pub(crate) fn commit_apply(&self, txn: &[Record]) -> Result<u64, Errno> {
        let mut i = self.inner.borrow_mut();
        if i.failed {
            return Err(libc::EIO);
        }
        // A Map record for a cluster the blob already has (a first write to more granules of
        // it) changes no allocation: the shared view is then left alone, lock and all.
        let changes_allocation = txn.iter().any(|r| match r {
            Record::Map { id, cluster, .. } => {
                i.state.blobs.get(id).and_then(|b| b.map.get(*cluster as usize)).is_none_or(|&p| p == 0)
            }
            _ => true,
        });
        let mark = i.pending.mark();
        for r in txn {
            if let Err(e) = i.state.apply(r) {
                tracing::error!(record = ?r, reason = %e.reason, "blobstore refused its own record");
                i.pending.truncate(mark);
                return Err(libc::EIO);
            }
            i.pending.push(r);
        }
        i.pending.push(&Record::Commit);
        i.commit_no += 1;
        let no = i.commit_no;
        let freed = std::mem::take(&mut i.state.freed);
        for p in freed {
            i.state.owner[p as usize] = LIMBO;
            i.limbo.push((p, no));
        }
        if changes_allocation {
            self.alloc_share.update(&i.state, txn);
        }
        Ok(no)
    }

    /// The commit a write to the cluster holding byte `offset` of `blob` must wait for before
    /// it completes (its latest validity record, not in the log yet), if any. The cluster is
    /// worked out only when some record is unlogged (nearly never).
    pub(crate) fn unlogged_commit_at(&self, blob: u64, offset: u64) -> Option<u64> {
        let i = self.inner.borrow();
        if i.undurable.is_empty() {
            return None;
        }
        i.unlogged_commit(blob, offset / i.state.cluster_size)
    }

    /// Whether the store takes no more metadata changes (a metadata write failed).
    pub(crate) fn metadata_failed(&self) -> bool {
        self.inner.borrow().failed
    }

    /// Waits until everything committed so far is in the log.
    pub async fn sync(self: &Rc<Self>) -> Result<(), Errno> {
        let slot = {
            let mut i = self.inner.borrow_mut();
            if !i.writer_running && i.pending.is_empty() {
                return Ok(());
            }
            let s = Slot::new();
            i.waiters.push(s.clone());
            s
        };
        self.kick_writer();
        slot.await
    }

    /// Makes everything acknowledged so far durable: the log, then the device's cache.
    pub async fn flush(self: &Rc<Self>) -> Result<(), Errno> {
        self.sync().await?;
        let written = self.inner.borrow().written_commit;
        self.dev.flush().await?;
        self.release_limbo(written);
        Ok(())
    }

    pub(crate) fn kick_writer(self: &Rc<Self>) {
        let start = {
            let mut i = self.inner.borrow_mut();
            !std::mem::replace(&mut i.writer_running, true)
        };
        if start {
            let me = self.clone();
            task::spawn_local(async move { me.run_log_writer().await });
        }
    }

    async fn run_log_writer(self: Rc<Self>) {
        loop {
            let (records, waiters, checkpoint, upto) = {
                let mut i = self.inner.borrow_mut();
                if i.pending.is_empty() && i.waiters.is_empty() && i.want_checkpoint.is_none() {
                    i.writer_running = false;
                    return;
                }
                let records = std::mem::take(&mut i.pending);
                let waiters = std::mem::take(&mut i.waiters);
                let blocks = (i.tail.len() + records.bytes()).div_ceil(LOG_PAYLOAD) as u64 + 1;
                let used = i.tail_seq - i.sb.log_head + blocks;
                let full = !records.is_empty() && used > i.sb.log_blocks / 2;
                let checkpoint = i.want_checkpoint.take().or(full.then_some(false));
                (records, waiters, checkpoint, i.commit_no)
            };
            let result = if let Some(clean) = checkpoint {
                // The records are in the state, so the checkpoint carries them.
                self.checkpoint(clean).await
            } else if records.is_empty() {
                Ok(())
            } else {
                self.write_log(records).await
            };
            if let Err(e) = result {
                tracing::error!(errno = e, "blobstore metadata write failed; the store takes no more changes");
                self.inner.borrow_mut().failed = true;
            } else {
                let mut i = self.inner.borrow_mut();
                i.written_commit = upto;
                if !i.undurable.is_empty() {
                    i.undurable.retain(|_, no| *no > upto);
                }
                drop(i);
                if !self.dev.write_cache {
                    // Written is durable on a device without a volatile cache.
                    self.release_limbo(upto);
                }
            }
            for w in waiters {
                w.fill(result);
            }
            self.complete_parked(upto, result);
        }
    }

    async fn write_log(&self, records: PendingRecords) -> Result<(), Errno> {
        if self.dev.write_cache {
            // Data named by these records must be durable before the records can be.
            let written = self.inner.borrow().written_commit;
            self.dev.flush().await?;
            self.release_limbo(written);
        }
        let (epoch, blocks) = {
            let mut i = self.inner.borrow_mut();
            let mut blocks = Vec::new();
            if !i.tail.is_empty() && i.tail.len() + records.bytes() > LOG_PAYLOAD {
                // A batch that does not fit the open block starts a new one instead of
                // rewriting it: through a volatile cache a new block may persist while the
                // rewrite does not, and replay would read the old version of the open block,
                // then the new block, skipping (or splitting) the transactions in between.
                i.tail.clear();
                i.tail_seq += 1;
            }
            for r in records.iter() {
                if i.tail.len() + r.len() > LOG_PAYLOAD {
                    let (seq, full) = (i.tail_seq, std::mem::take(&mut i.tail));
                    blocks.push((seq, full));
                    i.tail_seq += 1;
                }
                i.tail.extend_from_slice(r);
            }
            blocks.push((i.tail_seq, i.tail.clone()));
            (i.sb.epoch, blocks)
        };
        let sb = self.super_block();
        let writes: Vec<_> = blocks
            .iter()
            .map(|(seq, payload)| {
                let block = format::encode_log_block(epoch, *seq, payload);
                let at = sb.log_block(*seq) * BLOCK as u64;
                Box::pin(async move { self.dev.write_bytes(at, &block[..]).await }) as _
            })
            .collect();
        for r in task::join_all(writes).await {
            r?;
        }
        Ok(())
    }

    /// Frees for good the limbo clusters freed by commits up to `upto` (their records are
    /// written and a flush issued after that completed, or the device has no volatile cache).
    fn release_limbo(&self, upto: u64) {
        let mut i = self.inner.borrow_mut();
        let i = &mut *i;
        let owner = &mut i.state.owner;
        i.limbo.retain(|&(p, no)| {
            if no <= upto {
                if owner[p as usize] == LIMBO {
                    owner[p as usize] = FREE;
                }
                false
            } else {
                true
            }
        });
    }

    /// Writes a checkpoint of the state now into the other slot, then the super block that
    /// points at it; the log restarts after the current tail.
    pub(crate) async fn checkpoint(&self, clean: bool) -> Result<(), Errno> {
        // The state is captured before the first await: records applied while this runs are
        // still pending for the log, which restarts after this checkpoint, so no record is
        // in both (replaying a Create twice would be an error).
        let (blocks, slot, start, cp_id, snap_commit) = {
            let i = self.inner.borrow();
            let cp_id = i.sb.cp_id + 1;
            let blocks = pack_checkpoint(&i.state.checkpoint(), cp_id);
            if blocks.len() as u64 > i.sb.cp_blocks {
                tracing::error!(needed = blocks.len(), room = i.sb.cp_blocks, "blobstore metadata region is full");
                return Err(libc::ENOSPC);
            }
            let slot = 1 - i.sb.cp_slot;
            (blocks, slot, i.sb.cp_start[slot as usize], cp_id, i.commit_no)
        };
        // The data its records name is durable before they are.
        self.dev.flush().await?;
        let chunk = load::READ_CHUNK as usize;
        let writes: Vec<_> = blocks
            .chunks(chunk)
            .enumerate()
            .map(|(n, part)| {
                let mut bytes = Vec::with_capacity(part.len() * BLOCK);
                for b in part {
                    bytes.extend_from_slice(&b[..]);
                }
                let at = (start + (n * chunk) as u64) * BLOCK as u64;
                Box::pin(async move { self.dev.write_bytes(at, &bytes).await }) as _
            })
            .collect();
        for r in task::join_all(writes).await {
            r?;
        }
        self.dev.flush().await?;
        let head = {
            let mut i = self.inner.borrow_mut();
            i.sb.cp_slot = slot;
            i.sb.cp_used = blocks.len() as u64;
            i.sb.cp_id = cp_id;
            i.tail_seq + 1
        };
        self.write_super(clean, head).await?;
        let mut i = self.inner.borrow_mut();
        i.tail_seq = head;
        i.tail.clear();
        drop(i);
        // The frees this checkpoint captured are durable now (not those committed since).
        self.release_limbo(snap_commit);
        Ok(())
    }

    /// Writes the next super block copy with log head `head`, and flushes it.
    async fn write_super(&self, clean: bool, head: u64) -> Result<(), Errno> {
        let (bytes, at) = {
            let mut i = self.inner.borrow_mut();
            i.sb.seq += 1;
            i.sb.clean = clean;
            i.sb.log_head = head;
            (i.sb.encode(), i.sb.copy() * BLOCK as u64)
        };
        self.dev.write_bytes(at, &bytes[..]).await?;
        self.dev.flush().await
    }

    /// Reserves a free cluster for an allocation (`None`: the store is full).
    pub(crate) fn reserve_cluster(&self) -> Option<u64> {
        let mut i = self.inner.borrow_mut();
        let n = i.state.total_clusters;
        let start = i.alloc_cursor;
        for k in 0..n {
            let p = (start + k) % n;
            if i.state.owner[p as usize] == FREE {
                i.state.owner[p as usize] = RESERVED;
                i.alloc_cursor = p + 1;
                return Some(p);
            }
        }
        None
    }

    /// Reserves a free cluster; when none is free but some wait in limbo for a flush, flushes
    /// (making their frees durable) and tries again, so space freed by an unmap is usable at
    /// once. `None`: the store is full.
    pub(crate) async fn reserve_cluster_flushing(self: &Rc<Self>) -> Option<u64> {
        if let Some(p) = self.reserve_cluster() {
            return Some(p);
        }
        if self.inner.borrow().limbo.is_empty() {
            return None;
        }
        self.flush().await.ok()?;
        self.reserve_cluster()
    }

    /// Returns a reserved cluster that was not used.
    pub(crate) fn unreserve(&self, phys: u64) {
        let mut i = self.inner.borrow_mut();
        if i.state.owner[phys as usize] == RESERVED {
            i.state.owner[phys as usize] = FREE;
        }
    }

    /// Takes the lock of cluster `c` of `blob` exclusively (after the direct writes sharing it).
    pub(crate) async fn lock_cluster(&self, blob: u64, c: u64) {
        let wait = self.inner.borrow_mut().cluster_locks.lock(blob, c);
        if let Some(s) = wait {
            s.await;
        }
    }

    /// Releases it (the next waiter, if any, holds it now).
    pub(crate) fn unlock_cluster(&self, blob: u64, c: u64) {
        let next = self.inner.borrow_mut().cluster_locks.unlock_exclusive(blob, c);
        if let Some(s) = next {
            s.fill(());
        }
    }

    /// Releases a direct write's share of the lock.
    pub(crate) fn unlock_cluster_shared(&self, blob: u64, c: u64) {
        let next = self.inner.borrow_mut().cluster_locks.unlock_shared(blob, c);
        if let Some(s) = next {
            s.fill(());
        }
    }

    /// Grows the store into its device (after the base bdev grew), up to the metadata's room.
    pub async fn grow(self: &Rc<Self>) -> Result<(), StoreError> {
        let total = {
            let i = self.inner.borrow();
            (self.dev.size() / i.sb.cluster_size).min(i.sb.max_clusters)
        };
        {
            let mut i = self.inner.borrow_mut();
            if total <= i.sb.total_clusters {
                return Ok(());
            }
            i.state.grow(total);
            i.sb.total_clusters = total;
        }
        // The checkpoint's super block carries the new size.
        self.request_checkpoint(false).await.map_err(StoreError::Io)
    }
}

impl From<LoadError> for StoreError {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::NotAStore => StoreError::NotAStore,
            LoadError::Corrupt(s) => StoreError::Corrupt(s),
            LoadError::Io(e) => StoreError::Io(e),
        }
    }
}
