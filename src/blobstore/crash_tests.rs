//! The crash campaign: a scripted and randomized run of the real [`Store`] on reactor 0 over a
//! recording bdev (a volatile write cache: every write, unmap and flush is an event), with a
//! model of every blob's bytes and metadata, then a crash at **every** event index N, in three
//! flavours, each image loaded with the real loader and checked:
//!
//! - (a) power loss: only the writes before the last flush completed before N survive;
//! - (b) process crash: every write before N survives;
//! - (c) a volatile cache: (a) plus a deterministic random subset of the 4 KiB pieces of the
//!   writes after that flush (torn multi-block writes included).
//!
//! After each: the load succeeds, the offline checker finds nothing (no warning either), the
//! metadata equals the model after the ops known durable plus a prefix of the ops in flight
//! (all or nothing, in commit order), and every sector of every blob holds what one of those
//! models says: what was acknowledged before the last completed flush reads back, what later
//! ops overwrote may be old or new, and nothing else (another blob's data, stale or torn
//! bytes) ever shows.

use super::blob_io::{resolve, Src};
use super::check;
use super::format::{Parent, FLAG_READ_ONLY, FLAG_THIN};
use super::load::{self, MemReader};
use super::state::State;
use super::store::{CreateOpts, Store};
use crate::bdev::buf::DmaBuf;
use crate::bdev::{self, registry, BackendChannel, Bdev, BdevBackend, BdevError, BdevIo, BdevProps, IoStatus, IoType};
use crate::framework::task::{self, block_on, Slot};
use crate::framework::testing;
use crate::test_rng::Rng;
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

/// Cluster size of the campaign's stores (4 KiB granules, 32 per cluster).
pub(crate) const CLUSTER: u64 = 128 << 10;
/// Device size of the campaign's stores (a 256-block log, a checkpoint at half of it).
pub(crate) const DEVICE: u64 = 8 << 20;
/// The unit of a torn write in flavour (c), and of the model's chunks.
const PIECE: u64 = 4096;
/// The unit of the data check (the lvol block size).
const SECTOR: usize = 512;

// ---------------------------------------------------------------------------------------------
// The recording bdev.

/// One thing the device did, in order.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    /// Bytes written at a byte offset.
    Write { off: u64, data: Arc<[u8]> },
    /// A range unmapped or zeroed (reads back as zeroes).
    Zero { off: u64, len: u64 },
    /// A completed flush: every write before it is durable.
    Flush,
}

/// The device's bytes now (as the process sees them) and its event list.
#[derive(Default)]
pub(crate) struct Recording {
    pub(crate) image: Vec<u8>,
    pub(crate) events: Vec<Event>,
}

/// A handle on a recording bdev's memory.
#[derive(Clone)]
pub(crate) struct Recorder(pub(crate) Arc<Mutex<Recording>>);

impl Recorder {
    /// Events so far.
    pub(crate) fn len(&self) -> usize {
        self.0.lock().unwrap().events.len()
    }

    /// A copy of the bytes as the process sees them.
    pub(crate) fn image(&self) -> Vec<u8> {
        self.0.lock().unwrap().image.clone()
    }

    /// The events so far.
    pub(crate) fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().events.clone()
    }
}

struct RecBackend(Recorder);
struct RecChannel(Recorder);

impl BackendChannel for RecChannel {
    fn submit(&self, mut io: Box<BdevIo>) {
        let (off, len) = (io.offset_bytes() as usize, io.len_bytes() as usize);
        {
            let mut guard = self.0 .0.lock().unwrap();
            let r = &mut *guard;
            match io.io_type {
                IoType::Read => {
                    let src = r.image[off..off + len].to_vec();
                    io.copy_to_iovs(&src);
                }
                IoType::Write => {
                    io.copy_from_iovs(&mut r.image[off..off + len]);
                    let data: Arc<[u8]> = r.image[off..off + len].into();
                    r.events.push(Event::Write { off: off as u64, data });
                }
                IoType::Unmap | IoType::WriteZeroes => {
                    r.image[off..off + len].fill(0);
                    r.events.push(Event::Zero { off: off as u64, len: len as u64 });
                }
                IoType::Flush => r.events.push(Event::Flush),
                IoType::Reset => {}
            }
        }
        // Completed at once, outside the lock (the completion may submit more).
        io.complete(IoStatus::Success);
    }
}

impl BdevBackend for RecBackend {
    fn module(&self) -> &'static str {
        "crash_recorder"
    }

    fn product_name(&self) -> &'static str {
        "Crash recorder"
    }

    fn supports(&self, _io_type: IoType) -> bool {
        true
    }

    fn create_channel(&self, _bdev: &Bdev) -> Result<Box<dyn BackendChannel>, BdevError> {
        Ok(Box::new(RecChannel(self.0.clone())))
    }

    fn config(&self, _bdev: &Bdev) -> Option<(&'static str, Value)> {
        None
    }

    fn write_cache(&self) -> bool {
        true
    }
}

/// Registers a recording bdev `name` of `bytes` (512-byte blocks, all zero).
pub(crate) fn recording_bdev(name: &str, bytes: u64) -> Recorder {
    let rec = Recorder(Arc::new(Mutex::new(Recording { image: vec![0; bytes as usize], events: Vec::new() })));
    registry::register(
        BdevProps { name: name.to_string(), uuid: None, block_size: 512, num_blocks: bytes / 512 },
        Box::new(RecBackend(rec.clone())),
    )
    .expect("register the recording bdev");
    rec
}

/// The campaign's store options.
pub(crate) fn opts() -> CreateOpts {
    CreateOpts { cluster_size: CLUSTER, bstype: *b"CRASH\0\0\0\0\0\0\0\0\0\0\0", unmap_device: true, growth: 1 }
}

pub(crate) fn open_desc(name: &str) -> bdev::BdevDesc {
    bdev::open(name, true, Box::new(|_, _| {})).expect("open base")
}

/// Runs one I/O on `blob` (512-byte blocks); returns the buffer after it or the errno.
pub(crate) async fn blob_io(store: &Rc<Store>, blob: u64, t: IoType, off: u64, data: &[u8]) -> Result<Vec<u8>, i32> {
    let mut buf = DmaBuf::new(data.len().max(1), 4096).unwrap();
    buf.as_mut_slice()[..data.len()].copy_from_slice(data);
    let slot: Slot<(bool, i32)> = Slot::new();
    let s = slot.clone();
    let mut bio = BdevIo::new(Rc::new(move |io: Box<BdevIo>| s.fill((io.succeeded(), io.errno()))));
    bio.prepare(t, off / 512, data.len() as u64 / 512);
    bio.set_block_size(512);
    if t.has_data() {
        // SAFETY: `buf` outlives the awaited I/O.
        unsafe { bio.push_iov(buf.as_ptr(), data.len()) };
    }
    store.submit(blob, bio);
    match slot.await {
        (true, _) => Ok(buf.as_slice()[..data.len()].to_vec()),
        (false, e) => Err(e),
    }
}

// ---------------------------------------------------------------------------------------------
// The model.

/// A blob's metadata as the model knows it (compared with the loaded state).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Meta {
    clusters: u64,
    flags: u32,
    parent: Parent,
    xattrs: Arc<BTreeMap<String, Vec<u8>>>,
}

/// A blob: metadata and bytes, in shared 4 KiB chunks (a model per op stays cheap).
#[derive(Debug, Clone)]
struct BlobModel {
    meta: Meta,
    data: Vec<Arc<[u8]>>,
    /// Changes whenever `data` does (models of equal version hold equal bytes).
    version: u64,
}

type Model = BTreeMap<u64, BlobModel>;

fn chunks_per_cluster() -> usize {
    (CLUSTER / PIECE) as usize
}

/// One operation of the script: when it started and was acknowledged (event indexes: the
/// events before it), and the model once it (and every op before it) took effect.
#[derive(Debug)]
struct Op {
    name: String,
    start: usize,
    ack: usize,
    after: Model,
    /// Bytes `[from, end)` of this blob that the op zeroes before its commit (a delete or
    /// shrink with clear, as SPDK's clear_method): while it is in flight they may read zero.
    clears: Option<(u64, u64)>,
}

fn meta_of(state: &State) -> BTreeMap<u64, Meta> {
    state
        .blobs
        .values()
        .map(|b| {
            (
                b.id,
                Meta { clusters: b.num_clusters, flags: b.flags, parent: b.parent, xattrs: Arc::new(b.xattrs.clone()) },
            )
        })
        .collect()
}

/// Whether the loaded metadata is exactly the model's (without copying either).
fn meta_matches(state: &State, m: &Model) -> bool {
    state.blobs.len() == m.len()
        && state.blobs.iter().zip(m).all(|((id, b), (mid, mb))| {
            id == mid
                && b.num_clusters == mb.meta.clusters
                && b.flags == mb.meta.flags
                && b.parent == mb.meta.parent
                && b.xattrs == *mb.meta.xattrs
        })
}

fn meta_of_model(m: &Model) -> BTreeMap<u64, Meta> {
    m.iter().map(|(&id, b)| (id, b.meta.clone())).collect()
}

// ---------------------------------------------------------------------------------------------
// The script, on reactor 0.

struct Script {
    name: &'static str,
    rec: Recorder,
    store: Rc<Store>,
    model: Model,
    ops: Vec<Op>,
    rng: Rng,
    zero: Arc<[u8]>,
    versions: u64,
}

/// What the script left for the crash phase.
struct Run {
    ops: Vec<Op>,
    events: Vec<Event>,
}

impl Script {
    fn record(&mut self, name: impl Into<String>, start: usize) {
        let ack = self.rec.len();
        self.ops.push(Op { name: name.into(), start, ack, after: self.model.clone(), clears: None });
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.rng.next().to_le_bytes());
        }
        v.truncate(len);
        v
    }

    fn version(&mut self) -> u64 {
        self.versions += 1;
        self.versions
    }

    fn model_write(&mut self, id: u64, off: u64, data: Option<&[u8]>) {
        let v = self.version();
        let b = self.model.get_mut(&id).expect("model blob");
        b.version = v;
        let end = off + data.map_or(0, |d| d.len() as u64);
        let mut pos = off;
        while pos < end {
            let c = (pos / PIECE) as usize;
            let at = (pos % PIECE) as usize;
            let n = ((PIECE - pos % PIECE).min(end - pos)) as usize;
            let mut chunk = b.data[c].to_vec();
            chunk[at..at + n].copy_from_slice(&data.expect("data")[(pos - off) as usize..(pos - off) as usize + n]);
            b.data[c] = chunk.into();
            pos += n as u64;
        }
    }

    fn model_zero(&mut self, id: u64, off: u64, len: u64) {
        let zero = self.zero.clone();
        let v = self.version();
        let b = self.model.get_mut(&id).expect("model blob");
        b.version = v;
        let mut pos = off;
        while pos < off + len {
            let c = (pos / PIECE) as usize;
            let at = (pos % PIECE) as usize;
            let n = ((PIECE - pos % PIECE).min(off + len - pos)) as usize;
            if n == PIECE as usize {
                b.data[c] = zero.clone();
            } else {
                let mut chunk = b.data[c].to_vec();
                chunk[at..at + n].fill(0);
                b.data[c] = chunk.into();
            }
            pos += n as u64;
        }
    }

    fn writable(&self) -> Vec<u64> {
        self.model.iter().filter(|(_, b)| b.meta.flags & FLAG_READ_ONLY == 0).map(|(&id, _)| id).collect()
    }

    fn pick(&mut self, v: &[u64]) -> Option<u64> {
        (!v.is_empty()).then(|| v[self.rng.below(v.len() as u64) as usize])
    }

    fn children(&self, id: u64) -> Vec<u64> {
        self.model.iter().filter(|(_, b)| b.meta.parent == Parent::Blob(id)).map(|(&c, _)| c).collect()
    }

    /// Clusters free for allocation now (not those whose free is not durable yet).
    fn free(&self) -> u64 {
        self.store.with_state(|s| s.owner.iter().filter(|&&o| o == super::state::FREE).count() as u64)
    }

    async fn create(&mut self, clusters: u64, thin: bool, xattrs: Vec<(String, Vec<u8>)>) -> u64 {
        let start = self.rec.len();
        let flags = if thin { FLAG_THIN } else { 0 };
        let id = self.store.create_blob(clusters, flags, Parent::None, xattrs.clone()).await.expect("create");
        let meta = Meta { clusters, flags, parent: Parent::None, xattrs: Arc::new(xattrs.into_iter().collect()) };
        let data = vec![self.zero.clone(); clusters as usize * chunks_per_cluster()];
        let version = self.version();
        self.model.insert(id, BlobModel { meta, data, version });
        self.record(format!("create {id} ({clusters} clusters, thin {thin})"), start);
        id
    }

    async fn write(&mut self, id: u64, off: u64, len: u64) {
        let start = self.rec.len();
        let data = self.bytes(len as usize);
        blob_io(&self.store, id, IoType::Write, off, &data).await.unwrap_or_else(|e| panic!("write {id}: {e}"));
        self.model_write(id, off, Some(&data));
        self.record(format!("write {id} {off}+{len}"), start);
    }

    /// A write that may meet ENOSPC while freed clusters wait for a flush: flush, retry.
    async fn write_or_flush(&mut self, id: u64, off: u64, len: u64) {
        let start = self.rec.len();
        let data = self.bytes(len as usize);
        if blob_io(&self.store, id, IoType::Write, off, &data).await == Err(libc::ENOSPC) {
            self.flush().await;
            blob_io(&self.store, id, IoType::Write, off, &data).await.expect("write after the flush");
        }
        self.model_write(id, off, Some(&data));
        self.record(format!("write {id} {off}+{len} (full store)"), start);
    }

    /// Several writes at once (their Map records group-committed).
    async fn write_batch(&mut self, writes: Vec<(u64, u64, u64)>) {
        let start = self.rec.len();
        let datas: Vec<Vec<u8>> = writes.iter().map(|w| self.bytes(w.2 as usize)).collect();
        let futures: Vec<Pin<Box<dyn Future<Output = ()> + '_>>> = writes
            .iter()
            .zip(&datas)
            .map(|(&(id, off, _), d)| {
                let store = self.store.clone();
                Box::pin(async move {
                    blob_io(&store, id, IoType::Write, off, d).await.expect("batched write");
                }) as _
            })
            .collect();
        task::join_all(futures).await;
        // All acknowledged by now (recording the ack later than it was is only less strict).
        for ((id, off, len), d) in writes.into_iter().zip(datas) {
            self.model_write(id, off, Some(&d));
            self.record(format!("batched write {id} {off}+{len}"), start);
        }
    }

    async fn unmap(&mut self, id: u64, off: u64, len: u64) {
        let start = self.rec.len();
        blob_io(&self.store, id, IoType::Unmap, off, &vec![0; len as usize]).await.expect("unmap");
        self.model_zero(id, off, len);
        self.record(format!("unmap {id} {off}+{len}"), start);
    }

    async fn snapshot(&mut self, origin: u64) -> u64 {
        let start = self.rec.len();
        let x = vec![("name".to_string(), format!("snap-of-{origin}").into_bytes())];
        let snap = self.store.snapshot(origin, x.clone()).await.expect("snapshot");
        let o = self.model.get_mut(&origin).expect("origin");
        let mut s = o.clone();
        s.meta.flags = FLAG_READ_ONLY | (o.meta.flags & FLAG_THIN);
        s.meta.xattrs = Arc::new(x.into_iter().collect());
        o.meta.parent = Parent::Blob(snap);
        o.meta.flags |= FLAG_THIN;
        self.model.insert(snap, s);
        self.record(format!("snapshot {snap} of {origin}"), start);
        snap
    }

    async fn clone_of(&mut self, snap: u64) -> u64 {
        let start = self.rec.len();
        let s = self.model[&snap].clone();
        let id = self.store.create_blob(s.meta.clusters, FLAG_THIN, Parent::Blob(snap), vec![]).await.expect("clone");
        let meta =
            Meta { clusters: s.meta.clusters, flags: FLAG_THIN, parent: Parent::Blob(snap), xattrs: Arc::default() };
        let version = self.version();
        self.model.insert(id, BlobModel { meta, data: s.data, version });
        self.record(format!("clone {id} of {snap}"), start);
        id
    }

    async fn delete(&mut self, id: u64, clear: bool) {
        let start = self.rec.len();
        self.store.delete_blob(id, clear).await.expect("delete");
        let gone = self.model.remove(&id).expect("deleted blob");
        for b in self.model.values_mut() {
            if b.meta.parent == Parent::Blob(id) {
                b.meta.parent = gone.meta.parent;
            }
        }
        self.record(format!("delete {id}"), start);
        if clear {
            self.ops.last_mut().expect("recorded").clears = Some((id, 0));
        }
    }

    async fn resize(&mut self, id: u64, clusters: u64) {
        let start = self.rec.len();
        let clear = self.rng.one_in(2);
        self.store.resize_blob(id, clusters, clear).await.expect("resize");
        let zero = self.zero.clone();
        let v = self.version();
        let b = self.model.get_mut(&id).expect("resized");
        b.version = v;
        b.meta.clusters = clusters;
        b.data.resize(clusters as usize * chunks_per_cluster(), zero);
        self.record(format!("resize {id} to {clusters}"), start);
        if clear {
            self.ops.last_mut().expect("recorded").clears = Some((id, clusters * CLUSTER));
        }
    }

    async fn inflate(&mut self, id: u64) {
        let start = self.rec.len();
        self.store.inflate(id, None).await.expect("inflate");
        let b = self.model.get_mut(&id).expect("inflated");
        b.meta.parent = Parent::None;
        b.meta.flags &= !FLAG_THIN;
        self.record(format!("inflate {id}"), start);
    }

    async fn decouple(&mut self, id: u64) {
        let start = self.rec.len();
        self.store.decouple_parent(id, None).await.expect("decouple");
        let Parent::Blob(p) = self.model[&id].meta.parent else { panic!("decouple of a blob without a parent") };
        let grand = self.model[&p].meta.parent;
        self.model.get_mut(&id).expect("decoupled").meta.parent = grand;
        self.record(format!("decouple {id}"), start);
    }

    async fn xattr(&mut self, id: u64, name: String, value: Option<Vec<u8>>) {
        let start = self.rec.len();
        self.store.set_xattr(id, &name, value.clone()).await.expect("xattr");
        let x = Arc::make_mut(&mut self.model.get_mut(&id).expect("xattr blob").meta.xattrs);
        match value {
            Some(v) => x.insert(name.clone(), v),
            None => x.remove(&name),
        };
        self.record(format!("xattr {id} {name}"), start);
    }

    /// Many large xattrs at once: group commit of several log blocks, and log growth.
    async fn xattr_batch(&mut self, id: u64, n: usize) {
        let start = self.rec.len();
        let sets: Vec<(String, Vec<u8>)> = (0..n)
            .map(|k| {
                let len = 300 + self.rng.below(200) as usize;
                (format!("k{k}"), self.bytes(len))
            })
            .collect();
        let futures: Vec<Pin<Box<dyn Future<Output = ()> + '_>>> = sets
            .iter()
            .map(|(name, v)| {
                let store = self.store.clone();
                Box::pin(async move { store.set_xattr(id, name, Some(v.clone())).await.expect("batched xattr") }) as _
            })
            .collect();
        task::join_all(futures).await;
        for (name, v) in sets {
            Arc::make_mut(&mut self.model.get_mut(&id).expect("xattr blob").meta.xattrs).insert(name.clone(), v);
            self.record(format!("batched xattr {id} {name}"), start);
        }
    }

    async fn flush(&mut self) {
        self.store.flush().await.expect("flush");
    }

    /// Drops the store without closing it (dirty) and opens it again.
    async fn reopen(&mut self, clean: bool) {
        let start = self.rec.len();
        if clean {
            self.store.close().await.expect("close");
        }
        let (store, loaded) = Store::open(open_desc(self.name)).await.expect("reopen");
        assert!(loaded.warnings.is_empty(), "reopen warned: {:?}", loaded.warnings);
        assert_eq!(meta_of(&loaded.state), meta_of_model(&self.model), "reopen lost metadata");
        self.store = store;
        self.record(format!("reopen (clean {clean})"), start);
    }

    /// A random write to a writable blob: sizes from 512 bytes (sub-granule) to two clusters,
    /// at sector, granule or cluster alignment.
    async fn random_write(&mut self) {
        if !self.needs_space(2).await {
            return;
        }
        let Some(id) = self.pick(&self.writable()) else { return };
        let size = self.model[&id].meta.clusters * CLUSTER;
        let len = match self.rng.below(8) {
            0 => 512,
            1 => 512 * (1 + self.rng.below(7)),
            2 => 4096,
            3 => 4096 * (2 + self.rng.below(6)),
            4 => 4096 + 512,
            5 => CLUSTER,
            6 => CLUSTER + 4096 * self.rng.below(4),
            _ => 2 * CLUSTER - 512,
        }
        .min(size);
        let off = match self.rng.below(3) {
            0 => self.rng.below((size - len) / 512 + 1) * 512,
            1 => self.rng.below((size - len) / 4096 + 1) * 4096,
            _ => self.rng.below((size - len) / CLUSTER + 1) * CLUSTER,
        };
        self.write(id, off, len).await;
    }

    /// Keeps at least `n` clusters free (deleting leaf blobs); false when it cannot.
    async fn needs_space(&mut self, n: u64) -> bool {
        if self.free() < n + 4 {
            self.flush().await; // frees wait for durability before reuse
        }
        while self.free() < n + 4 {
            let leaves: Vec<u64> = self.model.keys().copied().filter(|&id| self.children(id).is_empty()).collect();
            let Some(id) = self.pick(&leaves) else { return false };
            self.delete(id, false).await;
        }
        true
    }

    async fn random_step(&mut self) {
        let blobs: Vec<u64> = self.model.keys().copied().collect();
        match self.rng.below(100) {
            0..=39 => self.random_write().await,
            40..=44 => {
                if !self.needs_space(6).await {
                    return;
                }
                let w = self.writable();
                let mut writes = Vec::new();
                for _ in 0..3 {
                    if let Some(id) = self.pick(&w) {
                        let size = self.model[&id].meta.clusters * CLUSTER;
                        let len = 4096 * (1 + self.rng.below(3));
                        writes.push((id, self.rng.below((size - len) / 4096 + 1) * 4096, len));
                    }
                }
                // Distinct blobs only: batched writes to one range would race.
                writes.sort_by_key(|w| w.0);
                writes.dedup_by_key(|w| w.0);
                if !writes.is_empty() {
                    self.write_batch(writes).await;
                }
            }
            45..=51 => {
                // Unmap a whole cluster (a thin blob without parent gives it back) or a range.
                let Some(id) = self.pick(&self.writable()) else { return };
                let clusters = self.model[&id].meta.clusters;
                if self.rng.one_in(3) {
                    let off = self.rng.below(clusters * CLUSTER / 4096) * 4096;
                    let len = (4096 * (1 + self.rng.below(4))).min(clusters * CLUSTER - off);
                    self.unmap(id, off, len).await;
                } else {
                    let c = self.rng.below(clusters);
                    self.unmap(id, c * CLUSTER, CLUSTER).await;
                }
            }
            52..=56 if blobs.len() < 10 => {
                if let Some(id) = self.pick(&self.writable()) {
                    self.snapshot(id).await;
                }
            }
            57..=60 if blobs.len() < 10 => {
                let snaps: Vec<u64> =
                    blobs.iter().copied().filter(|id| self.model[id].meta.flags & FLAG_READ_ONLY != 0).collect();
                if let Some(s) = self.pick(&snaps) {
                    self.clone_of(s).await;
                }
            }
            61..=64 if blobs.len() < 10 => {
                let clusters = 1 + self.rng.below(4);
                let thin = !self.rng.one_in(3);
                if thin || self.needs_space(clusters).await {
                    self.create(clusters, thin, vec![("name".into(), b"random".to_vec())]).await;
                }
            }
            65..=68 => {
                // Delete a leaf, or a snapshot with exactly one clone (merged into it).
                let ok: Vec<u64> = blobs.iter().copied().filter(|&id| self.children(id).len() <= 1).collect();
                if ok.len() > 2 {
                    let id = self.pick(&ok).expect("some");
                    let clear = self.rng.one_in(2);
                    self.delete(id, clear).await;
                }
            }
            69..=71 => {
                // Resize a writable blob without a parent (grow or shrink).
                let ok: Vec<u64> =
                    self.writable().into_iter().filter(|id| self.model[id].meta.parent == Parent::None).collect();
                if let Some(id) = self.pick(&ok) {
                    let to = 1 + self.rng.below(5);
                    if self.needs_space(to).await && self.model.contains_key(&id) {
                        self.resize(id, to).await;
                    }
                }
            }
            72..=73 => {
                let ok: Vec<u64> =
                    self.writable().into_iter().filter(|id| self.model[id].meta.parent != Parent::None).collect();
                if let Some(id) = self.pick(&ok) {
                    let n = self.model[&id].meta.clusters;
                    if self.needs_space(n).await && self.model.contains_key(&id) {
                        if self.rng.one_in(2) {
                            self.inflate(id).await;
                        } else {
                            self.decouple(id).await;
                        }
                    }
                }
            }
            74..=78 => {
                if let Some(id) = self.pick(&blobs) {
                    let name = format!("x{}", self.rng.below(4));
                    let len = 1 + self.rng.below(100) as usize;
                    let value = (!self.rng.one_in(4)).then(|| self.bytes(len));
                    self.xattr(id, name, value).await;
                }
            }
            79..=86 => {
                if let Some(id) = self.pick(&blobs) {
                    let n = 8 + self.rng.below(24) as usize;
                    self.xattr_batch(id, n).await;
                }
            }
            87..=96 => self.flush().await,
            97 => self.reopen(false).await,
            98 => self.reopen(true).await,
            _ => {}
        }
    }

    /// The fixed part: every operation at least once, in the orders that matter.
    async fn scripted(&mut self) {
        let a = self.create(4, false, vec![("name".into(), b"thick".to_vec())]).await;
        let b = self.create(6, true, vec![("name".into(), b"thin".to_vec())]).await;
        // Sub-granule, granule, multi-granule and cross-cluster writes.
        self.write(a, 512, 512).await;
        self.write(a, 4096 * 3 + 1024, 4096).await;
        self.write(a, CLUSTER - 4096, 8192 + 512).await;
        self.write(b, 1536, 512).await;
        self.write(b, 2 * CLUSTER + 4096, CLUSTER).await;
        self.write(b, 5 * CLUSTER, CLUSTER).await;
        self.flush().await;
        // Snapshot, then copy-on-write of a partial granule from it, and a clone.
        let s1 = self.snapshot(b).await;
        self.write(b, 2 * CLUSTER + 4096 + 512, 1024).await;
        let c1 = self.clone_of(s1).await;
        self.write(c1, 512, 512).await;
        self.write(c1, 5 * CLUSTER + 8192, 3 * 4096).await;
        // A freed cluster reused at once by another blob (the LIMBO gate), no flush between.
        let d = self.create(2, true, vec![]).await;
        self.write(d, 0, CLUSTER).await;
        self.flush().await;
        self.unmap(d, 0, CLUSTER).await;
        self.write(a, 0, 4096).await;
        let e = self.create(2, true, vec![]).await;
        self.write(e, 0, CLUSTER).await;
        self.write(e, CLUSTER, 4096).await;
        // A full store: the one free cluster is the one an unmap just freed, and it must not
        // be reused before that free is durable (a crash could bring the old owner back over
        // the new data). The gate answers ENOSPC until a flush; then the write goes through.
        self.flush().await;
        let g = self.create(1, true, vec![]).await;
        let f = self.create(self.free(), true, vec![]).await;
        for c in 0..self.model[&f].meta.clusters {
            self.write(f, c * CLUSTER, 4096).await;
        }
        assert_eq!(self.free(), 0, "the store is full");
        self.unmap(f, 0, CLUSTER).await;
        self.write_or_flush(g, 0, 4096).await;
        self.delete(f, false).await;
        // Delete of a snapshot with one clone (merged into it).
        let s2 = self.snapshot(e).await;
        self.write(e, 512, 512).await;
        self.delete(s2, true).await;
        // Resize, xattrs, inflate, decouple.
        self.resize(a, 6).await;
        self.write(a, 5 * CLUSTER, 4096).await;
        self.resize(a, 3).await;
        self.resize(d, 4).await;
        self.xattr(a, "k".into(), Some(b"v1".to_vec())).await;
        self.xattr(a, "k".into(), None).await;
        self.inflate(c1).await;
        self.decouple(b).await;
        self.flush().await;
        self.reopen(false).await;
        self.write(b, 0, 4096).await;
        self.xattr_batch(a, 24).await;
    }
}

/// Runs the script on a new recording bdev and returns what the crash phase needs.
fn run_script(name: &'static str, seed: u64, steps: usize) -> Run {
    testing::reactors();
    let rec = recording_bdev(name, DEVICE);
    let r = rec.clone();
    let ops = block_on(0, move || async move {
        let start = r.len();
        let store = Store::create(open_desc(name), opts()).await.expect("create store");
        let zero: Arc<[u8]> = vec![0u8; PIECE as usize].into();
        let mut s =
            Script { name, rec: r, store, model: Model::new(), ops: Vec::new(), rng: Rng(seed), zero, versions: 0 };
        s.record("create store", start);
        s.scripted().await;
        for _ in 0..steps {
            s.random_step().await;
        }
        s.flush().await;
        let final_meta = s.store.with_state(meta_of);
        assert_eq!(final_meta, meta_of_model(&s.model), "the live store and the model agree at the end");
        s.ops
    })
    .expect("reactor 0");
    Run { ops, events: rec.events() }
}

// ---------------------------------------------------------------------------------------------
// The crash phase.

/// Counts of the crash phase.
#[derive(Debug, Default)]
struct Tally {
    points: [u64; 3],
    loads_without_store: u64,
    metadata_prefixes: u64,
    times: [std::time::Duration; 3],
}

struct Timer<'a>(std::time::Instant, &'a mut std::time::Duration);
impl Drop for Timer<'_> {
    fn drop(&mut self) {
        *self.1 += self.0.elapsed();
    }
}

/// An image with an undo log: events applied on top of the durable bytes, then taken back.
struct Image {
    bytes: Vec<u8>,
    undo: Vec<(usize, Vec<u8>)>,
}

impl Image {
    fn put(&mut self, off: u64, data: Option<&[u8]>, len: u64, keep: bool) {
        let (off, len) = (off as usize, len as usize);
        if keep {
            self.undo.push((off, self.bytes[off..off + len].to_vec()));
        }
        match data {
            Some(d) => self.bytes[off..off + len].copy_from_slice(d),
            None => self.bytes[off..off + len].fill(0),
        }
    }

    fn apply(&mut self, e: &Event, keep: bool) {
        match e {
            Event::Write { off, data } => self.put(*off, Some(data), data.len() as u64, keep),
            Event::Zero { off, len } => self.put(*off, None, *len, keep),
            Event::Flush => {}
        }
    }

    /// Applies the 4 KiB pieces of `e` that `choose` picks.
    fn apply_pieces(&mut self, e: &Event, choose: &mut impl FnMut() -> bool) {
        let (off, len) = match e {
            Event::Write { off, data } => (*off, data.len() as u64),
            Event::Zero { off, len } => (*off, *len),
            Event::Flush => return,
        };
        let mut pos = off;
        while pos < off + len {
            let n = (PIECE - pos % PIECE).min(off + len - pos);
            if choose() {
                match e {
                    Event::Write { data, .. } => {
                        let at = (pos - off) as usize;
                        self.put(pos, Some(&data[at..at + n as usize]), n, true)
                    }
                    _ => self.put(pos, None, n, true),
                }
            }
            pos += n;
        }
    }

    fn rollback(&mut self) {
        while let Some((off, old)) = self.undo.pop() {
            self.bytes[off..off + old.len()].copy_from_slice(&old);
        }
    }
}

/// Checks one crash image: `durable` = the index of the last event whose writes are all
/// guaranteed in it (ops acknowledged at or before it must have taken effect), `n` = the crash
/// point (ops started at or after it cannot show).
fn verify(run: &Run, img: &[u8], durable: usize, n: usize, tally: &mut Tally) -> Result<(), String> {
    let ops = &run.ops;
    let t = std::time::Instant::now();
    let loaded = match load::run_now(load::load(&MemReader(img), DEVICE)) {
        Ok(l) => l,
        Err(e) if ops[0].ack > durable => {
            let _ = e;
            tally.loads_without_store += 1;
            return Ok(()); // the store was not created yet
        }
        Err(e) => return Err(format!("load failed: {e}")),
    };
    tally.times[0] += t.elapsed();
    let t = std::time::Instant::now();
    let report = check::check_loaded(&loaded);
    tally.times[1] += t.elapsed();
    if !report.clean() {
        return Err(format!("checker: {:?}", report.problems));
    }
    // The models the state may show: every op acknowledged by `durable`, plus a prefix of
    // the ones started before `n`.
    // Ops are sequential (a batch shares its start and ack): both indexes are monotonic.
    let first_open = ops.partition_point(|o| o.ack <= durable);
    let last_started = ops.partition_point(|o| o.start < n);
    let empty = Model::new();
    let mut cands: Vec<&Model> = vec![if first_open == 0 { &empty } else { &ops[first_open - 1].after }];
    cands.extend(ops[first_open..last_started.max(first_open)].iter().map(|o| &o.after));
    let matching = cands.iter().position(|m| meta_matches(&loaded.state, m));
    let Some(k) = matching else {
        let names: Vec<&str> = ops[first_open..last_started.max(first_open)].iter().map(|o| o.name.as_str()).collect();
        return Err(format!(
            "metadata matches no prefix of the ops in flight {names:?}:\n  loaded   {}\n  required {}",
            brief(&meta_of(&loaded.state)),
            brief(&meta_of_model(cands[0]))
        ));
    };
    if k > 0 {
        tally.metadata_prefixes += 1;
    }
    // Data: each sector as one of the candidate models has it.
    let _t = Timer(std::time::Instant::now(), &mut tally.times[2]);
    let s = &loaded.state;
    let zero = [0u8; PIECE as usize];
    let open = &ops[first_open..last_started.max(first_open)];
    for (&id, b) in &s.blobs {
        let mut models: Vec<&BlobModel> = cands.iter().filter_map(|m| m.get(&id)).collect();
        models.sort_by_key(|m| m.version);
        models.dedup_by_key(|m| m.version);
        let cleared_from =
            open.iter().filter_map(|o| o.clears.filter(|c| c.0 == id).map(|c| c.1)).min().unwrap_or(u64::MAX);
        // Granules are 4 KiB, so each model chunk lies in one piece.
        for p in resolve(s, id, 0, b.num_clusters * s.cluster_size) {
            for off in (p.offset..p.offset + p.len).step_by(PIECE as usize) {
                let got = match p.src {
                    Src::Base(at) => {
                        let at = (at + off - p.offset) as usize;
                        &img[at..at + PIECE as usize]
                    }
                    Src::Zero => &zero[..],
                    Src::External(..) => return Err(format!("blob {id} has an external parent")),
                };
                let c = (off / PIECE) as usize;
                if models.len() == 1 && off < cleared_from {
                    if models[0].data.get(c).is_none_or(|d| got != &d[..]) {
                        return Err(data_error(ops, id, c, got, &models, first_open));
                    }
                    continue;
                }
                for (i, sector) in got.chunks(SECTOR).enumerate() {
                    let at = i * SECTOR;
                    if off + at as u64 >= cleared_from && sector.iter().all(|&x| x == 0) {
                        continue;
                    }
                    if !models.iter().any(|m| m.data.get(c).is_some_and(|d| &d[at..at + SECTOR] == sector)) {
                        return Err(data_error(ops, id, c, got, &models, first_open));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Metadata in a line: per blob its size, flags, parent and xattr names.
fn brief(m: &BTreeMap<u64, Meta>) -> String {
    m.iter()
        .map(|(id, b)| {
            let names: Vec<&str> = b.xattrs.keys().map(String::as_str).collect();
            format!("{id}:{}c/f{}/{:?}/{names:?}", b.clusters, b.flags, b.parent)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn data_error(ops: &[Op], id: u64, chunk: usize, got: &[u8], models: &[&BlobModel], first_open: usize) -> String {
    let want: &[u8] = models.iter().find_map(|m| m.data.get(chunk)).map_or(&[], |d| &d[..]);
    let at = got.iter().zip(want.iter()).position(|(a, b)| a != b).unwrap_or(0);
    format!(
        "blob {id} byte {} reads {:02x?}, want {:02x?} (or a newer value); ops in flight from {:?}",
        chunk as u64 * PIECE + at as u64,
        &got[at..(at + 8).min(got.len())],
        &want[at..(at + 8).min(want.len())],
        ops.get(first_open).map(|o| &o.name)
    )
}

/// Crashes at every event index in the three flavours; returns the tally or the first failure.
fn crash_everywhere(run: &Run, seed: u64) -> Result<Tally, String> {
    let events = &run.events;
    let mut tally = Tally::default();
    // `durable`: the image with every event before the last flush; `flushed`: that index.
    let mut img = Image { bytes: vec![0; DEVICE as usize], undo: Vec::new() };
    let mut flushed = 0usize;
    let at = |what: &str, n: usize, e: String| format!("crash {what} at event {n}/{}: {e}", events.len());
    verify(run, &img.bytes, 0, 1, &mut tally).map_err(|e| at("(a) power loss", 0, e))?;
    tally.points[0] += 1;
    for n in 1..=events.len() {
        if matches!(events[n - 1], Event::Flush) {
            for e in &events[flushed..n - 1] {
                img.apply(e, false);
            }
            flushed = n - 1;
            // (a) power loss: the same image for every crash point up to the next flush; checked
            // at the strictest of them (nothing started after the flush can show).
            verify(run, &img.bytes, flushed, n, &mut tally).map_err(|e| at("(a) power loss", n, e))?;
            tally.points[0] += 1;
        }
        // (b) process crash: everything written so far.
        for e in &events[flushed..n] {
            img.apply(e, true);
        }
        let r = verify(run, &img.bytes, n, n, &mut tally);
        img.rollback();
        r.map_err(|e| at("(b) process crash", n, e))?;
        tally.points[1] += 1;
        // (c) volatile cache: a random subset of the unflushed 4 KiB pieces.
        if n > flushed + 1 {
            let mut rng = Rng(seed ^ (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut choose = || rng.one_in(2);
            for e in &events[flushed..n] {
                img.apply_pieces(e, &mut choose);
            }
            let r = verify(run, &img.bytes, flushed, n, &mut tally);
            img.rollback();
            r.map_err(|e| at("(c) volatile cache", n, e))?;
            tally.points[2] += 1;
        }
    }
    Ok(tally)
}

#[test]
fn crash_at_every_write_keeps_metadata_atomic_and_flushed_data() {
    let t0 = std::time::Instant::now();
    let run = run_script("crash_campaign", 0x5eed_0001, 2200);
    let script_time = t0.elapsed();
    assert!(run.ops.windows(2).all(|w| w[0].start <= w[1].start && w[0].ack <= w[1].ack), "ops in order");
    let tally = crash_everywhere(&run, 0x5eed_0001).unwrap_or_else(|e| panic!("{e}"));
    let total: u64 = tally.points.iter().sum();
    println!(
        "crash campaign: {} ops, {} events, {total} crash points (power loss {}, process crash {}, volatile \
         cache {}), {} before the store existed, {} showing a prefix of the ops in flight; script {:?}, total {:?}",
        run.ops.len(),
        run.events.len(),
        tally.points[0],
        tally.points[1],
        tally.points[2],
        tally.loads_without_store,
        tally.metadata_prefixes,
        script_time,
        t0.elapsed()
    );
    println!("times {:?}", tally.times);
    assert!(total >= 10_000, "at least 10,000 crash points, got {total}");
    // The run wrapped the log ring and checkpointed mid-run.
    let last = load::run_now(load::load(&MemReader(&final_image(&run)), DEVICE)).expect("final load");
    assert!(
        last.sb.log_head > last.sb.log_blocks,
        "the log wrapped: head {} of a {}-block ring",
        last.sb.log_head,
        last.sb.log_blocks
    );
    assert!(tally.metadata_prefixes > 100, "crashes landed inside metadata operations");
}

fn final_image(run: &Run) -> Vec<u8> {
    let mut img = Image { bytes: vec![0; DEVICE as usize], undo: Vec::new() };
    for e in &run.events {
        img.apply(e, false);
    }
    img.bytes
}

/// A small real store for the checker and hostile-metadata tests, made on a recording bdev
/// `name`: a thick blob, a thin one with a snapshot and a clone of it, and partly written
/// granules; left dirty (`close` false: the log holds the operations) or closed. Returns the
/// device image and each blob's bytes as the store read them.
pub(crate) fn sample_store(name: &'static str, close: bool) -> (Vec<u8>, BTreeMap<u64, Vec<u8>>) {
    testing::reactors();
    let rec = recording_bdev(name, DEVICE);
    let contents = block_on(0, move || async move {
        let store = Store::create(open_desc(name), opts()).await.expect("create store");
        let mut rng = Rng(7);
        let mut data = |len: usize| (0..len).map(|_| rng.next() as u8).collect::<Vec<u8>>();
        let a = store.create_blob(3, 0, Parent::None, vec![("name".into(), b"a".to_vec())]).await.unwrap();
        let b = store.create_blob(4, FLAG_THIN, Parent::None, vec![("name".into(), b"b".to_vec())]).await.unwrap();
        blob_io(&store, a, IoType::Write, 4096, &data(3 * 4096)).await.unwrap();
        blob_io(&store, b, IoType::Write, 512, &data(512)).await.unwrap();
        blob_io(&store, b, IoType::Write, CLUSTER, &data(CLUSTER as usize + 8192)).await.unwrap();
        let s = store.snapshot(b, vec![("name".into(), b"s".to_vec())]).await.unwrap();
        blob_io(&store, b, IoType::Write, CLUSTER + 1024, &data(2048)).await.unwrap();
        let c = store.create_blob(4, FLAG_THIN, Parent::Blob(s), vec![("name".into(), b"c".to_vec())]).await.unwrap();
        blob_io(&store, c, IoType::Write, 3 * CLUSTER, &data(4096)).await.unwrap();
        store.flush().await.unwrap();
        if close {
            store.close().await.unwrap();
        }
        let mut out = BTreeMap::new();
        for id in [a, b, s, c] {
            let n = store.with_state(|st| st.blobs[&id].num_clusters);
            out.insert(id, blob_io(&store, id, IoType::Read, 0, &vec![0; (n * CLUSTER) as usize]).await.unwrap());
        }
        out
    })
    .expect("reactor 0");
    (rec.image(), contents)
}

/// Blob `id`'s bytes in a loaded image (through its chain), `None` if an external parent.
pub(crate) fn read_loaded(state: &State, img: &[u8], id: u64) -> Option<Vec<u8>> {
    let b = state.blobs.get(&id)?;
    let len = b.num_clusters * state.cluster_size;
    let mut out = vec![0u8; len as usize];
    for p in resolve(state, id, 0, len) {
        match p.src {
            Src::Base(at) => out[p.offset as usize..(p.offset + p.len) as usize]
                .copy_from_slice(&img[at as usize..(at + p.len) as usize]),
            Src::Zero => {}
            Src::External(..) => return None,
        }
    }
    Some(out)
}
