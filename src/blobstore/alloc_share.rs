//! Which clusters each blob has allocated, readable from any thread (a frontend asking GET LBA
//! STATUS on another reactor), kept up to date by the store's reactor after every commit.

use super::format::{Parent, Record};
use super::state::State;
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Default, Clone)]
struct BlobAlloc {
    /// Reads of unallocated clusters go to a parent (so nothing reads as deallocated).
    has_parent: bool,
    clusters: u64,
    bits: Vec<u64>,
}

/// The shared allocation view of one store.
#[derive(Debug, Default)]
pub struct AllocShare {
    blobs: Mutex<HashMap<u64, BlobAlloc>>,
}

impl AllocShare {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, BlobAlloc>> {
        self.blobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn rebuild(map: &mut HashMap<u64, BlobAlloc>, state: &State, id: u64) {
        match state.blobs.get(&id) {
            None => {
                map.remove(&id);
            }
            Some(b) => {
                let mut bits = vec![0u64; b.num_clusters.div_ceil(64) as usize];
                for (c, &p) in b.map.iter().enumerate() {
                    if p != 0 {
                        bits[c / 64] |= 1 << (c % 64);
                    }
                }
                map.insert(id, BlobAlloc { has_parent: b.parent != Parent::None, clusters: b.num_clusters, bits });
            }
        }
    }

    /// Takes in every blob of `state` (at open).
    pub fn reset(&self, state: &State) {
        let mut map = self.lock();
        map.clear();
        for &id in state.blobs.keys() {
            Self::rebuild(&mut map, state, id);
        }
    }

    /// Takes in what `txn` changed, `state` being the state after it.
    pub fn update(&self, state: &State, txn: &[Record]) {
        let mut map = self.lock();
        for r in txn {
            match r {
                Record::Map { id, cluster, .. } => set(&mut map, *id, *cluster, 1, true),
                Record::MapRun { id, cluster, count, .. } => set(&mut map, *id, *cluster, *count, true),
                Record::MapBits { id, cluster, .. } => set(&mut map, *id, *cluster, 1, true),
                Record::Release { id, cluster } => set(&mut map, *id, *cluster, 1, false),
                Record::Create { id, .. }
                | Record::Delete { id }
                | Record::Resize { id, .. }
                | Record::SetParent { id, .. } => Self::rebuild(&mut map, state, *id),
                Record::Move { from, to } => {
                    Self::rebuild(&mut map, state, *from);
                    Self::rebuild(&mut map, state, *to);
                }
                _ => {}
            }
        }
    }

    /// Whether cluster `first` of `blob` is allocated (or read through a parent), and for how
    /// many clusters (at most `max`) that holds. None: no such blob.
    pub fn run(&self, blob: u64, first: u64, max: u64) -> Option<(bool, u64)> {
        let map = self.lock();
        let b = map.get(&blob)?;
        if first >= b.clusters {
            return None;
        }
        let at = |c: u64| b.has_parent || b.bits[(c / 64) as usize] & (1 << (c % 64)) != 0;
        let status = at(first);
        let mut n = 1;
        while n < max && first + n < b.clusters && at(first + n) == status {
            n += 1;
        }
        Some((status, n))
    }
}

fn set(map: &mut HashMap<u64, BlobAlloc>, id: u64, first: u64, count: u64, on: bool) {
    let Some(b) = map.get_mut(&id) else { return };
    for c in first..(first + count).min(b.clusters) {
        let (w, bit) = ((c / 64) as usize, 1u64 << (c % 64));
        if on {
            b.bits[w] |= bit;
        } else {
            b.bits[w] &= !bit;
        }
    }
}
