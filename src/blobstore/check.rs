//! The offline checker (`ferry-blobck`, and the crash campaign after every crash): loads a
//! store from a device or image exactly as the daemon does, then verifies its invariants
//! independently of the loader: every cluster owned once, free + allocated + metadata +
//! quarantined = total, parent chains complete and acyclic. Whatever the load only warned
//! about (a checksum mismatch, a fallback super block, a quarantined blob, a log record the
//! state refused) is a problem too: a healthy store loads without a single warning.

use super::format::{Parent, STORE_ID};
use super::load::{self, BlockRead, LoadError, Loaded};
use super::state::{FREE, LIMBO, METADATA, QUARANTINED, RESERVED};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::fmt;

/// What the checker found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Why the store could not be loaded at all (then nothing else is filled in).
    pub load_error: Option<String>,
    /// Clusters in the store.
    pub total: u64,
    /// Free clusters.
    pub free: u64,
    /// Clusters mapped by live blobs.
    pub allocated: u64,
    /// Clusters of the metadata region.
    pub metadata: u64,
    /// Clusters held by quarantined blobs (never reused).
    pub quarantined: u64,
    /// Live blobs.
    pub blobs: u64,
    /// Quarantined blob ids.
    pub quarantined_blobs: Vec<u64>,
    /// Log records replayed by the load.
    pub replayed: u64,
    /// Everything wrong (empty: the store is healthy).
    pub problems: Vec<String>,
}

impl Report {
    /// Whether the store loaded and no invariant is broken.
    pub fn clean(&self) -> bool {
        self.load_error.is_none() && self.problems.is_empty()
    }

    /// The process exit status `ferry-blobck` uses: 0 clean, 1 problems, 2 cannot load.
    pub fn exit_code(&self) -> i32 {
        match (&self.load_error, self.problems.is_empty()) {
            (Some(_), _) => 2,
            (None, true) => 0,
            (None, false) => 1,
        }
    }

    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "loaded": self.load_error.is_none(),
            "load_error": self.load_error,
            "clusters": {
                "total": self.total,
                "free": self.free,
                "allocated": self.allocated,
                "metadata": self.metadata,
                "quarantined": self.quarantined,
            },
            "blobs": self.blobs,
            "quarantined_blobs": self.quarantined_blobs,
            "replayed_records": self.replayed,
            "problems": self.problems,
        })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(e) = &self.load_error {
            return writeln!(f, "cannot load the store: {e}");
        }
        writeln!(
            f,
            "clusters: {} total, {} free, {} allocated, {} metadata, {} quarantined",
            self.total, self.free, self.allocated, self.metadata, self.quarantined
        )?;
        writeln!(
            f,
            "blobs: {} live, {} quarantined {:?}",
            self.blobs,
            self.quarantined_blobs.len(),
            self.quarantined_blobs
        )?;
        writeln!(f, "log records replayed: {}", self.replayed)?;
        if self.problems.is_empty() {
            writeln!(f, "no problems")
        } else {
            writeln!(f, "{} problems:", self.problems.len())?;
            for p in &self.problems {
                writeln!(f, "  {p}")?;
            }
            Ok(())
        }
    }
}

/// Loads the store on `reader` (a device of `device_bytes`) and checks it. The reader must
/// complete its reads at once ([`load::MemReader`], [`load::FileReader`]): the load is driven
/// by [`load::run_now`].
pub fn check(reader: &dyn BlockRead, device_bytes: u64) -> Report {
    match load::run_now(load::load(reader, device_bytes)) {
        Ok(loaded) => check_loaded(&loaded),
        Err(e @ (LoadError::NotAStore | LoadError::Corrupt(_) | LoadError::Io(_))) => {
            Report { load_error: Some(e.to_string()), ..Report::default() }
        }
    }
}

/// Checks a store already loaded.
pub fn check_loaded(loaded: &Loaded) -> Report {
    let s = &loaded.state;
    let mut problems: Vec<String> = loaded.warnings.iter().map(|w| format!("load: {w}")).collect();
    // Who maps each physical cluster, counted from the blobs themselves (not the owner table).
    let mut mapped: HashMap<u64, Vec<u64>> = HashMap::new();
    for b in s.blobs.values() {
        if b.id == STORE_ID || b.id >= s.next_id {
            problems.push(format!("blob {}: id outside [1, next id {})", b.id, s.next_id));
        }
        if b.map.len() as u64 != b.num_clusters {
            problems.push(format!("blob {}: map of {} entries for {} clusters", b.id, b.map.len(), b.num_clusters));
        }
        for &p in b.map.iter().filter(|&&p| p != 0) {
            mapped.entry(p).or_default().push(b.id);
        }
    }
    let (mut free, mut md, mut q) = (0u64, 0u64, 0u64);
    for (phys, &o) in s.owner.iter().enumerate() {
        let phys = phys as u64;
        let owners = mapped.get(&phys).map(Vec::as_slice).unwrap_or(&[]);
        if owners.len() > 1 {
            problems.push(format!("cluster {phys} is mapped by blobs {owners:?}"));
        }
        match o {
            FREE | LIMBO | RESERVED => free += 1,
            METADATA => md += 1,
            QUARANTINED => q += 1,
            _ => {}
        }
        match (o, owners) {
            (FREE | LIMBO | RESERVED | METADATA | QUARANTINED, [b, ..]) => {
                problems.push(format!("cluster {phys} is mapped by blob {b} but marked {}", owner_word(o)))
            }
            (id, []) if id < LIMBO => {
                problems.push(format!("cluster {phys} marked owned by blob {id}, which does not map it"))
            }
            (id, [b, ..]) if id < LIMBO && id != *b => {
                problems.push(format!("cluster {phys} is mapped by blob {b} but marked owned by blob {id}"))
            }
            _ => {}
        }
        if (phys < loaded.sb.md_clusters) != (o == METADATA) {
            problems.push(format!("cluster {phys}: metadata region is clusters [0, {})", loaded.sb.md_clusters));
        }
    }
    for &p in mapped.keys() {
        if p >= s.total_clusters {
            problems.push(format!("cluster {p} mapped by {:?} is outside the store", mapped[&p]));
        }
    }
    let allocated = mapped.keys().filter(|&&p| p < s.total_clusters).count() as u64;
    if free + allocated + md + q != s.total_clusters {
        problems.push(format!(
            "free {free} + allocated {allocated} + metadata {md} + quarantined {q} != total {}",
            s.total_clusters
        ));
    }
    // Parent chains: every link to a live blob, no cycle.
    for b in s.blobs.values() {
        let mut seen = BTreeSet::from([b.id]);
        let mut cur = b.parent;
        while let Parent::Blob(p) = cur {
            let Some(pb) = s.blobs.get(&p) else {
                problems.push(format!("blob {}: parent chain reaches missing blob {p}", b.id));
                break;
            };
            if !seen.insert(p) {
                problems.push(format!("blob {}: parent chain is a cycle through blob {p}", b.id));
                break;
            }
            cur = pb.parent;
        }
    }
    // The engine's own view of the same invariants (it must agree).
    for p in s.problems() {
        if !problems.contains(&p) {
            problems.push(format!("state: {p}"));
        }
    }
    Report {
        load_error: None,
        total: s.total_clusters,
        free,
        allocated,
        metadata: md,
        quarantined: q,
        blobs: s.blobs.len() as u64,
        quarantined_blobs: s.quarantined.keys().copied().collect(),
        replayed: loaded.replayed,
        problems,
    }
}

fn owner_word(o: u64) -> &'static str {
    match o {
        FREE | LIMBO | RESERVED => "free",
        METADATA => "metadata",
        QUARANTINED => "quarantined",
        _ => "owned",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobstore::crash_tests::{sample_store, DEVICE};
    use crate::blobstore::format::{self, Record, BLOCK};
    use crate::blobstore::load::MemReader;

    /// Appends one committed transaction of `records` at the log's end, as the engine would.
    fn append_log(img: &mut [u8], records: &[Record]) {
        let loaded = load::run_now(load::load(&MemReader(img), DEVICE)).expect("load");
        let mut payload = Vec::new();
        for r in records.iter().chain([&Record::Commit]) {
            r.encode(&mut payload);
        }
        let block = format::encode_log_block(loaded.sb.epoch, loaded.log_tail, &payload);
        let at = loaded.sb.log_block(loaded.log_tail) as usize * BLOCK;
        img[at..at + BLOCK].copy_from_slice(&block[..]);
    }

    #[test]
    fn a_healthy_store_is_clean_dirty_or_closed() {
        for (name, close) in [("ck_dirty", false), ("ck_closed", true)] {
            let (img, blobs) = sample_store(name, close);
            let r = check(&MemReader(&img), DEVICE);
            assert!(r.clean(), "{name}: {r}");
            assert_eq!(r.exit_code(), 0);
            assert_eq!(r.blobs, blobs.len() as u64);
            assert_eq!(r.free + r.allocated + r.metadata + r.quarantined, r.total);
            assert!(r.allocated > 0 && r.metadata > 0 && r.quarantined == 0);
            assert_eq!(r.replayed == 0, close, "{name}: a dirty store replays its log");
            let j = r.to_json();
            assert_eq!(j["clusters"]["total"], r.total);
            assert_eq!(j["problems"].as_array().map(Vec::len), Some(0));
        }
    }

    #[test]
    fn a_cluster_mapped_by_two_blobs_is_reported() {
        let (mut img, blobs) = sample_store("ck_double", false);
        let loaded = load::run_now(load::load(&MemReader(&img), DEVICE)).unwrap();
        let ids: Vec<u64> = blobs.keys().copied().collect();
        let (a, c) = (ids[0], ids[3]);
        // Blob c's unallocated cluster 0 pointed at a cluster blob a owns.
        let taken = loaded.state.blobs[&a].map[0];
        assert_ne!(taken, 0);
        append_log(&mut img, &[Record::MapRun { id: c, cluster: 0, phys: taken, count: 1 }]);
        let r = check(&MemReader(&img), DEVICE);
        assert_eq!(r.exit_code(), 1, "{r}");
        assert!(r.problems.iter().any(|p| p.contains(&format!("cluster {taken} already belongs to blob {a}"))), "{r}");
        // The loader refused the record and took blob c out of service; a keeps its cluster.
        assert_eq!(r.quarantined_blobs, vec![c]);
        assert!(r.to_json()["problems"].as_array().unwrap().len() >= 2);
    }

    #[test]
    fn a_parent_cycle_is_reported() {
        let (mut img, blobs) = sample_store("ck_cycle", false);
        let ids: Vec<u64> = blobs.keys().copied().collect();
        let (s, c) = (ids[2], ids[3]);
        // c's parent is s: make s's parent c.
        append_log(&mut img, &[Record::SetParent { id: s, parent: Parent::Blob(c) }]);
        let r = check(&MemReader(&img), DEVICE);
        assert_eq!(r.exit_code(), 1, "{r}");
        assert!(r.problems.iter().any(|p| p.contains("cycle")), "{r}");
        // Every blob on the cycle, and the one reading through it, is quarantined.
        assert!(r.quarantined_blobs.contains(&s) && r.quarantined_blobs.contains(&c), "{r}");
        assert_eq!(r.free + r.allocated + r.metadata + r.quarantined, r.total);
    }

    #[test]
    fn an_image_without_a_store_cannot_be_loaded() {
        let img = vec![0u8; DEVICE as usize];
        let r = check(&MemReader(&img), DEVICE);
        assert_eq!(r.exit_code(), 2);
        assert!(r.to_string().contains("no blobstore"), "{r}");
    }
}
