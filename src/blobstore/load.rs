//! Loading a store: pick the newer valid super block, read its checkpoint in large parallel
//! reads, replay the log from the checkpoint's head until the first block that is not the next
//! one of this epoch. The work is proportional to the metadata in use (checkpoint + log),
//! never to the device's size. Written once against [`BlockRead`], so the daemon (bdev I/O on
//! a reactor), the offline checker and the crash campaign (files and images) share it.

use super::format::{self, FormatError, Record, Section, SuperBlock, BLOCK};
use super::state::State;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use thiserror::Error;

/// A future of a block read.
pub type ReadFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<u8>, i32>> + 'a>>;

/// Reads metadata blocks.
pub trait BlockRead {
    /// Reads `count` blocks of [`BLOCK`] bytes from metadata block `start`.
    fn read(&self, start: u64, count: u64) -> ReadFuture<'_>;

    /// The first read, which looks whether there is a store at all (examine does it on every
    /// new bdev): a device may keep it out of its statistics.
    fn probe(&self, start: u64, count: u64) -> ReadFuture<'_> {
        self.read(start, count)
    }
}

/// Blocks read per request while loading (1 MiB), and requests in flight at once.
pub const READ_CHUNK: u64 = 256;
/// Parallel reads while loading a checkpoint.
pub const READ_DEPTH: usize = 8;

/// Why a store could not be loaded.
#[derive(Debug, Error)]
pub enum LoadError {
    /// No super block signature at all: the device holds no store.
    #[error("no blobstore on this device")]
    NotAStore,
    /// Super blocks or checkpoints are damaged beyond use.
    #[error("blobstore metadata is corrupt: {0}")]
    Corrupt(String),
    /// A read failed.
    #[error("reading blobstore metadata failed: errno {0}")]
    Io(i32),
}

/// A loaded store.
#[derive(Debug)]
pub struct Loaded {
    /// The super block used.
    pub sb: SuperBlock,
    /// The metadata.
    pub state: State,
    /// The next log sequence number (one past the last valid block).
    pub log_tail: u64,
    /// Log records replayed (0 after a clean unload).
    pub replayed: u64,
    /// Log blocks read.
    pub log_blocks_read: u64,
    /// What was found wrong but survived (quarantines, a fallback super block).
    pub warnings: Vec<String>,
}

/// Loads the store on a device of `device_bytes`.
pub async fn load(dev: &dyn BlockRead, device_bytes: u64) -> Result<Loaded, LoadError> {
    let head = dev.probe(0, 2).await.map_err(LoadError::Io)?;
    let mut candidates = Vec::new();
    let mut magic_seen = false;
    let mut warnings = Vec::new();
    for copy in 0..2 {
        let b = &head[copy * BLOCK..(copy + 1) * BLOCK];
        magic_seen |= b[0..8] == format::SUPER_MAGIC;
        match SuperBlock::decode(b, device_bytes) {
            Ok(sb) => candidates.push(sb),
            Err(FormatError::Magic) => {}
            Err(e) => warnings.push(format!("super block copy {copy}: {e}")),
        }
    }
    if candidates.is_empty() {
        return Err(if magic_seen { LoadError::Corrupt(warnings.join("; ")) } else { LoadError::NotAStore });
    }
    candidates.sort_by_key(|sb| std::cmp::Reverse(sb.seq));
    let mut last_error = String::new();
    for sb in candidates {
        match load_checkpoint(dev, &sb).await {
            Ok((mut state, unreadable)) => {
                state.quarantine_unloaded(&unreadable);
                let (tail, replayed, read) = replay_log(dev, &sb, &mut state, &mut warnings).await?;
                state.finish_load();
                for (id, why) in &state.quarantined {
                    warnings.push(format!("blob {id} quarantined: {why}"));
                }
                return Ok(Loaded { sb, state, log_tail: tail, replayed, log_blocks_read: read, warnings });
            }
            Err(LoadError::Io(e)) => return Err(LoadError::Io(e)),
            Err(e) => {
                last_error = format!("checkpoint of super block seq {}: {e}", sb.seq);
                warnings.push(last_error.clone());
            }
        }
    }
    Err(LoadError::Corrupt(last_error))
}

/// Reads blocks `[start, start+count)` in chunks, several at once.
async fn read_many(dev: &dyn BlockRead, start: u64, count: u64) -> Result<Vec<u8>, LoadError> {
    let mut out = Vec::with_capacity((count as usize) * BLOCK);
    let mut next = 0;
    while next < count {
        let mut batch = Vec::new();
        while batch.len() < READ_DEPTH && next < count {
            let n = READ_CHUNK.min(count - next);
            batch.push(dev.read(start + next, n));
            next += n;
        }
        for r in crate::framework::task::join_all(batch).await {
            out.extend_from_slice(&r.map_err(LoadError::Io)?);
        }
    }
    Ok(out)
}

type Unreadable = BTreeMap<u64, String>;
/// A checkpoint section's blocks as read: (parts, each part's records if readable).
type SectionParts = (u32, Vec<Option<Vec<Record>>>);

async fn load_checkpoint(dev: &dyn BlockRead, sb: &SuperBlock) -> Result<(State, Unreadable), LoadError> {
    let gpc = sb.granules_per_cluster();
    let mut state = State::new(sb.cluster_size, gpc, sb.total_clusters, sb.md_clusters, sb.max_clusters, sb.max_blobs);
    let bytes = read_many(dev, sb.cp_start[sb.cp_slot as usize], sb.cp_used).await?;
    let mut store: Vec<Option<Vec<Record>>> = Vec::new();
    let mut blobs: BTreeMap<u64, SectionParts> = BTreeMap::new();
    let mut unreadable = Unreadable::new();
    for (i, block) in bytes.chunks(BLOCK).enumerate() {
        let Ok((h, payload)) = format::decode_cp_block(block, sb.cp_id, i as u32) else { continue };
        if u64::from(h.parts) > sb.cp_used || h.part as usize > i {
            // A section longer than the checkpoint (hostile `parts`: its table is allocated
            // from it) or starting before it.
            match h.section {
                Section::Store => return Err(LoadError::Corrupt("store section longer than the checkpoint".into())),
                Section::Blob(id) => unreadable.insert(id, "checkpoint section longer than the checkpoint".into()),
            };
            continue;
        }
        let recs: Result<Vec<Record>, FormatError> = format::records(payload).collect();
        let slot = match h.section {
            Section::Store => {
                if store.is_empty() {
                    store = vec![None; h.parts as usize];
                }
                store.get_mut(h.part as usize)
            }
            Section::Blob(id) => {
                let e = blobs.entry(id).or_insert_with(|| (h.parts, vec![None; h.parts as usize]));
                if e.0 != h.parts {
                    unreadable.insert(id, "checkpoint section lengths disagree".into());
                    continue;
                }
                e.1.get_mut(h.part as usize)
            }
        };
        match (slot, recs) {
            (Some(s), Ok(r)) => *s = Some(r),
            (_, Err(e)) => {
                if let Section::Blob(id) = h.section {
                    unreadable.insert(id, format!("checkpoint records: {e}"));
                } else {
                    return Err(LoadError::Corrupt(format!("store section: {e}")));
                }
            }
            (None, _) => {}
        }
    }
    if store.is_empty() || store.iter().any(Option::is_none) {
        return Err(LoadError::Corrupt("store section of the checkpoint is incomplete".into()));
    }
    for rec in store.into_iter().flatten().flatten() {
        if matches!(rec, Record::Create { .. } | Record::Map { .. } | Record::MapRun { .. } | Record::MapBits { .. }) {
            return Err(LoadError::Corrupt("blob record in the store section".into()));
        }
        state.apply(&rec).map_err(|e| LoadError::Corrupt(format!("store section: {}", e.reason)))?;
    }
    for (id, (_, parts)) in blobs {
        if unreadable.contains_key(&id) {
            continue;
        }
        if parts.iter().any(Option::is_none) {
            unreadable.insert(id, "checkpoint section incomplete".into());
            continue;
        }
        for rec in parts.into_iter().flatten().flatten() {
            let own = match &rec {
                Record::Create { id: r, .. }
                | Record::Xattr { id: r, .. }
                | Record::MapRun { id: r, .. }
                | Record::MapBits { id: r, .. } => *r == id,
                _ => false,
            };
            let result =
                if own { state.apply(&rec).map_err(|e| e.reason) } else { Err(format!("foreign record {rec:?}")) };
            if let Err(why) = result {
                state.quarantine(id, format!("checkpoint: {why}"));
                unreadable.insert(id, why);
                break;
            }
        }
    }
    Ok((state, unreadable))
}

/// Replays the log; returns (next seq, records applied, blocks read).
async fn replay_log(
    dev: &dyn BlockRead,
    sb: &SuperBlock,
    state: &mut State,
    warnings: &mut Vec<String>,
) -> Result<(u64, u64, u64), LoadError> {
    let mut seq = sb.log_head;
    let mut txn: Vec<Record> = Vec::new();
    let mut applied = 0;
    let mut read = 0;
    'outer: while seq - sb.log_head < sb.log_blocks {
        // Read up to the ring's end or READ_CHUNK blocks, whichever is first.
        let pos = seq % sb.log_blocks;
        let n = READ_CHUNK.min(sb.log_blocks - pos).min(sb.log_blocks - (seq - sb.log_head));
        let bytes = dev.read(sb.log_start + pos, n).await.map_err(LoadError::Io)?;
        read += n;
        for block in bytes.chunks(BLOCK) {
            let Some(payload) = format::decode_log_block(block, sb.epoch, seq) else { break 'outer };
            for rec in format::records(payload) {
                match rec {
                    Ok(Record::Commit) => {
                        for r in txn.drain(..) {
                            if let Err(e) = state.apply(&r) {
                                warnings.push(format!("log record {r:?}: {}", e.reason));
                                if let Some(id) = e.blob.filter(|id| state.blobs.contains_key(id)) {
                                    state.quarantine(id, format!("log: {}", e.reason));
                                }
                            }
                            applied += 1;
                        }
                    }
                    Ok(r) => txn.push(r),
                    Err(e) => {
                        warnings.push(format!("log block {seq}: {e}"));
                        break 'outer;
                    }
                }
            }
            seq += 1;
        }
    }
    Ok((seq, applied, read))
}

/// A [`BlockRead`] over bytes in memory (checker, crash campaign, fuzzing).
pub struct MemReader<'a>(pub &'a [u8]);

impl BlockRead for MemReader<'_> {
    fn read(&self, start: u64, count: u64) -> ReadFuture<'_> {
        let from = (start as usize).saturating_mul(BLOCK);
        let to = from.saturating_add((count as usize).saturating_mul(BLOCK));
        let r = if to <= self.0.len() { Ok(self.0[from..to].to_vec()) } else { Err(libc::EIO) };
        Box::pin(std::future::ready(r))
    }
}

/// A [`BlockRead`] over a file or block device, read synchronously (offline tools only).
pub struct FileReader(pub std::fs::File);

impl BlockRead for FileReader {
    fn read(&self, start: u64, count: u64) -> ReadFuture<'_> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; count as usize * BLOCK];
        let r = self
            .0
            .read_exact_at(&mut buf, start * BLOCK as u64)
            .map(|_| buf)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO));
        Box::pin(std::future::ready(r))
    }
}

/// Runs a future whose reads complete at once (the synchronous readers above) to its end.
pub fn run_now<T>(f: impl Future<Output = T>) -> T {
    let mut f = std::pin::pin!(f);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}
