//! The store's metadata in memory: blobs, their cluster maps and validity bitmaps, and who owns
//! each physical cluster. Records (from the log, a checkpoint, or a new operation) change it
//! through [`State::apply`], which checks each one against the state, so hostile metadata
//! can only make a record fail (and its blob be quarantined), never corrupt another blob.

use super::format::{self, Parent, Record, Section, FLAGS_KNOWN, MAX_XATTR_NAME, MAX_XATTR_VALUE, STORE_ID};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// `owner` of a free cluster.
pub const FREE: u64 = u64::MAX;
/// `owner` of a metadata cluster.
pub const METADATA: u64 = u64::MAX - 1;
/// `owner` of a cluster held by a quarantined blob (never reused).
pub const QUARANTINED: u64 = u64::MAX - 2;
/// `owner` of a cluster handed to an allocation whose record is not written yet.
pub const RESERVED: u64 = u64::MAX - 3;
/// `owner` of a cluster freed by a record that is not durable yet (reused only once it is).
pub const LIMBO: u64 = u64::MAX - 4;
/// All blobs together may be at most this many times the store's capacity (`max_clusters`):
/// thin provisioning's limit, and the bound on the memory cluster maps take (8 bytes per
/// cluster), whatever hostile metadata says.
pub const MAX_OVERPROVISION: u64 = 16;

/// One blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    /// Its id.
    pub id: u64,
    /// Size in clusters.
    pub num_clusters: u64,
    /// FLAG_* bits.
    pub flags: u32,
    /// Where unwritten granules read from.
    pub parent: Parent,
    /// Extended attributes.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Physical cluster of each cluster, 0 when unallocated (cluster 0 is always metadata).
    pub map: Vec<u64>,
    /// Validity bitmaps of partly written clusters (a mapped cluster not here is all valid).
    pub partial: crate::framework::id_hash::IdMap<u64, Vec<u64>>,
}

/// Whether granules `first..=last` are all set in validity bitmap `bits` (word by word).
pub fn granules_set(bits: &[u64], first: u64, last: u64) -> bool {
    let (fw, lw) = ((first / 64) as usize, (last / 64) as usize);
    (fw..=lw).all(|w| {
        let lo = if w == fw { first % 64 } else { 0 };
        let hi = if w == lw { last % 64 } else { 63 };
        let mask = (u64::MAX >> (63 - hi)) & (u64::MAX << lo);
        bits.get(w).is_some_and(|&b| b & mask == mask)
    })
}

impl BlobMeta {
    /// Whether it is thin provisioned.
    pub fn thin(&self) -> bool {
        self.flags & format::FLAG_THIN != 0
    }

    /// Whether it refuses writes.
    pub fn read_only(&self) -> bool {
        self.flags & format::FLAG_READ_ONLY != 0
    }

    /// Allocated clusters.
    pub fn allocated(&self) -> u64 {
        self.map.iter().filter(|&&p| p != 0).count() as u64
    }

    /// The run of clusters around `c` (at most `reach` on either side) that are mapped one
    /// after another on the base, as `c` is, with no partial validity bits: as (first
    /// cluster, count). `c` itself is assumed to qualify.
    pub fn whole_run(&self, c: u64, reach: u64) -> (u64, u64) {
        let p = self.map[c as usize];
        let whole = |d: u64| {
            self.map.get(d as usize).is_some_and(|&q| q != 0 && q.wrapping_sub(d) == p.wrapping_sub(c))
                && (self.partial.is_empty() || !self.partial.contains_key(&d))
        };
        let mut first = c;
        while first > 0 && c - first < reach && whole(first - 1) {
            first -= 1;
        }
        let mut end = c + 1;
        while end - c <= reach && whole(end) {
            end += 1;
        }
        (first, end - first)
    }

    /// Whether granule `g` of cluster `c` holds the blob's own data.
    pub fn granule_valid(&self, c: u64, g: u64) -> bool {
        match self.map.get(c as usize) {
            Some(&p) if p != 0 => match self.partial.get(&c) {
                Some(bits) => bits[(g / 64) as usize] & (1 << (g % 64)) != 0,
                None => true,
            },
            _ => false,
        }
    }

    /// A text xattr.
    pub fn xattr_str(&self, name: &str) -> Option<&str> {
        self.xattrs.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// Why a record could not be applied; `blob` is the blob it damages (quarantined on load).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyError {
    /// The blob concerned, if any.
    pub blob: Option<u64>,
    /// What was wrong.
    pub reason: String,
}

fn err<T>(blob: u64, reason: impl Into<String>) -> Result<T, ApplyError> {
    Err(ApplyError { blob: Some(blob), reason: reason.into() })
}

/// The whole metadata state.
#[derive(Debug, Clone)]
pub struct State {
    /// Bytes per cluster.
    pub cluster_size: u64,
    /// Granules per cluster.
    pub gpc: u64,
    /// Clusters in the store.
    pub total_clusters: u64,
    /// Most clusters the store may grow to.
    pub max_clusters: u64,
    /// Most blobs.
    pub max_blobs: u64,
    /// The store's own xattrs (blob id 0).
    pub store_xattrs: BTreeMap<String, Vec<u8>>,
    /// Live blobs by id.
    pub blobs: BTreeMap<u64, BlobMeta>,
    /// Quarantined blobs and why.
    pub quarantined: BTreeMap<u64, String>,
    /// Owner of each physical cluster (a blob id, FREE, METADATA or QUARANTINED).
    pub owner: Vec<u64>,
    /// Next blob id.
    pub next_id: u64,
    /// Checkpoint only: the blobs the checkpoint lists, and its used-cluster bitmap.
    listed: Option<BTreeSet<u64>>,
    used_hint: Vec<(u64, Vec<u8>)>,
    /// Clusters freed by records applied since the engine last looked (it keeps them out of
    /// use until the free is durable).
    pub freed: Vec<u64>,
    /// Sum of every live blob's `num_clusters`.
    sized: u64,
}

impl State {
    /// The cluster holding byte `offset` of a blob, and the offset within it: a shift and a
    /// mask for the usual power-of-two cluster size (a 64-bit division costs tens of cycles
    /// on the I/O path).
    #[inline]
    pub fn cluster_of(&self, offset: u64) -> (u64, u64) {
        let cs = self.cluster_size;
        if cs.is_power_of_two() {
            (offset >> cs.trailing_zeros(), offset & (cs - 1))
        } else {
            (offset / cs, offset % cs)
        }
    }

    /// An empty store of `total_clusters`, the first `md_clusters` of them metadata.
    pub fn new(
        cluster_size: u64,
        gpc: u64,
        total_clusters: u64,
        md_clusters: u64,
        max_clusters: u64,
        max_blobs: u64,
    ) -> State {
        let mut owner = vec![FREE; total_clusters as usize];
        for o in owner.iter_mut().take(md_clusters as usize) {
            *o = METADATA;
        }
        State {
            cluster_size,
            gpc,
            total_clusters,
            max_clusters,
            max_blobs,
            store_xattrs: BTreeMap::new(),
            blobs: BTreeMap::new(),
            quarantined: BTreeMap::new(),
            owner,
            next_id: 1,
            listed: None,
            used_hint: Vec::new(),
            freed: Vec::new(),
            sized: 0,
        }
    }

    /// The clusters of every blob together (thin or not): what their maps cost.
    pub fn mapped_clusters(&self) -> u64 {
        self.sized
    }

    /// Words of a validity bitmap.
    pub fn words(&self) -> usize {
        self.gpc.div_ceil(64) as usize
    }

    /// Free clusters (those waiting for their free to be durable included).
    pub fn free_clusters(&self) -> u64 {
        self.owner.iter().filter(|&&o| o == FREE || o == LIMBO || o == RESERVED).count() as u64
    }

    /// Clusters holding data (not metadata).
    pub fn data_clusters(&self) -> u64 {
        self.owner.iter().filter(|&&o| o != METADATA).count() as u64
    }

    /// Grows the store to `total` clusters (new ones free).
    pub fn grow(&mut self, total: u64) {
        if total > self.total_clusters {
            self.owner.resize(total as usize, FREE);
            self.total_clusters = total;
        }
    }

    fn blob(&mut self, id: u64) -> Result<&mut BlobMeta, ApplyError> {
        match self.blobs.get_mut(&id) {
            Some(b) => Ok(b),
            None => err(id, format!("blob {id} does not exist")),
        }
    }

    fn check_phys(&self, id: u64, phys: u64) -> Result<(), ApplyError> {
        match self.owner.get(phys as usize) {
            Some(&FREE) | Some(&RESERVED) => Ok(()),
            Some(&o) if o == id => Ok(()),
            Some(&o) => err(id, format!("cluster {phys} already belongs to {}", owner_name(o))),
            None => err(id, format!("cluster {phys} is outside the store")),
        }
    }

    fn free(&mut self, phys: u64) {
        if let Some(o) = self.owner.get_mut(phys as usize) {
            *o = FREE;
            self.freed.push(phys);
        }
    }

    /// Applies one record. On error nothing of that record was changed.
    pub fn apply(&mut self, rec: &Record) -> Result<(), ApplyError> {
        match rec {
            Record::Create { id, num_clusters, flags, parent } => {
                let id = *id;
                if id == STORE_ID || id >= u64::MAX - 16 {
                    return err(id, "reserved blob id");
                }
                if self.blobs.contains_key(&id) {
                    return err(id, format!("blob {id} exists"));
                }
                if self.mapped_clusters().saturating_add(*num_clusters)
                    > self.max_clusters.saturating_mul(MAX_OVERPROVISION)
                {
                    return err(
                        id,
                        format!("a blob of {num_clusters} clusters is past the store's overprovisioning limit"),
                    );
                }
                if flags & !FLAGS_KNOWN != 0 {
                    return err(id, format!("unknown blob flags {flags:#x}"));
                }
                if self.blobs.len() as u64 >= self.max_blobs {
                    return err(id, "too many blobs");
                }
                self.blobs.insert(
                    id,
                    BlobMeta {
                        id,
                        num_clusters: *num_clusters,
                        flags: *flags,
                        parent: *parent,
                        xattrs: BTreeMap::new(),
                        map: vec![0; *num_clusters as usize],
                        partial: Default::default(),
                    },
                );
                self.next_id = self.next_id.max(id + 1);
                self.sized += *num_clusters;
            }
            Record::Delete { id } => {
                let blob =
                    self.blobs.remove(id).ok_or(ApplyError { blob: Some(*id), reason: "no such blob".into() })?;
                self.sized -= blob.num_clusters;
                for p in blob.map.into_iter().filter(|&p| p != 0) {
                    self.free(p);
                }
            }
            Record::Resize { id, num_clusters } => {
                let limit = self.max_clusters.saturating_mul(MAX_OVERPROVISION);
                let others = self.mapped_clusters() - self.blobs.get(id).map_or(0, |b| b.num_clusters);
                if others.saturating_add(*num_clusters) > limit {
                    return err(
                        *id,
                        format!("a blob of {num_clusters} clusters is past the store's overprovisioning limit"),
                    );
                }
                let b = self.blob(*id)?;
                let old = b.num_clusters;
                let freed: Vec<u64> = b.map.iter().skip(*num_clusters as usize).copied().filter(|&p| p != 0).collect();
                b.map.resize(*num_clusters as usize, 0);
                b.num_clusters = *num_clusters;
                let n = *num_clusters;
                b.partial.retain(|&c, _| c < n);
                self.sized = self.sized - old + n;
                for p in freed {
                    self.free(p);
                }
            }
            Record::Flags { id, flags } => {
                if flags & !FLAGS_KNOWN != 0 {
                    return err(*id, format!("unknown blob flags {flags:#x}"));
                }
                self.blob(*id)?.flags = *flags;
            }
            Record::SetParent { id, parent } => {
                if *parent == Parent::Blob(*id) {
                    return err(*id, "a blob cannot be its own parent");
                }
                self.blob(*id)?.parent = *parent;
            }
            Record::Xattr { id, name, value } => {
                if name.len() > MAX_XATTR_NAME || value.as_ref().is_some_and(|v| v.len() > MAX_XATTR_VALUE) {
                    return err(*id, "xattr too long");
                }
                let x = if *id == STORE_ID { &mut self.store_xattrs } else { &mut self.blob(*id)?.xattrs };
                match value {
                    Some(v) => {
                        x.insert(name.clone(), v.clone());
                    }
                    None => {
                        x.remove(name);
                    }
                }
            }
            Record::Map { id, cluster, phys, first, count } => {
                let gpc = self.gpc;
                let end = (*first as u64).checked_add(*count as u64);
                if end.is_none_or(|e| e > gpc) || *count == 0 {
                    return err(*id, "granule range outside the cluster");
                }
                self.map_cluster(*id, *cluster, *phys)?;
                let b = self.blob(*id)?;
                if let Some(bits) = b.partial.get_mut(cluster) {
                    for g in *first as u64..*first as u64 + *count as u64 {
                        bits[(g / 64) as usize] |= 1 << (g % 64);
                    }
                    if full(bits, gpc) {
                        b.partial.remove(cluster);
                    }
                }
            }
            Record::MapRun { id, cluster, phys, count } => {
                let Some(end) = cluster.checked_add(*count) else { return err(*id, "cluster run overflows") };
                let Some(pend) = phys.checked_add(*count) else { return err(*id, "cluster run overflows") };
                let b = self.blobs.get(id).ok_or(ApplyError { blob: Some(*id), reason: "no such blob".into() })?;
                if end > b.num_clusters || pend > self.total_clusters {
                    return err(*id, "cluster run outside the blob or store");
                }
                for i in 0..*count {
                    self.check_phys(*id, phys + i)?;
                    let cur = b.map[(cluster + i) as usize];
                    if cur != 0 && cur != phys + i {
                        return err(*id, format!("cluster {} mapped twice", cluster + i));
                    }
                }
                for i in 0..*count {
                    self.owner[(phys + i) as usize] = *id;
                }
                let b = self.blob(*id)?;
                for i in 0..*count {
                    b.map[(cluster + i) as usize] = phys + i;
                    b.partial.remove(&(cluster + i));
                }
            }
            Record::MapBits { id, cluster, phys, bits } => {
                let words = self.words();
                if bits.len() != self.gpc.div_ceil(8) as usize {
                    return err(*id, "validity bitmap of the wrong size");
                }
                let mut w = vec![0u64; words];
                for (i, byte) in bits.iter().enumerate() {
                    w[i / 8] |= (*byte as u64) << ((i % 8) * 8);
                }
                self.map_cluster(*id, *cluster, *phys)?;
                let gpc = self.gpc;
                let b = self.blob(*id)?;
                if full(&w, gpc) {
                    b.partial.remove(cluster);
                } else {
                    b.partial.insert(*cluster, w);
                }
            }
            Record::Release { id, cluster } => {
                let b = self.blob(*id)?;
                let Some(&p) = b.map.get(*cluster as usize) else { return err(*id, "release past the blob's end") };
                if p != 0 {
                    b.map[*cluster as usize] = 0;
                    b.partial.remove(cluster);
                    self.free(p);
                }
            }
            Record::Move { from, to } => {
                if from == to || !self.blobs.contains_key(from) || !self.blobs.contains_key(to) {
                    return err(*to, "move between missing or identical blobs");
                }
                let mut src = self.blobs.remove(from).expect("checked");
                let dst = self.blobs.get_mut(to).expect("checked");
                let mut freed = Vec::new();
                for (c, p) in src.map.iter_mut().enumerate() {
                    if *p == 0 {
                        continue;
                    }
                    if (c as u64) < dst.num_clusters && dst.map[c] == 0 {
                        dst.map[c] = *p;
                        if let Some(bits) = src.partial.remove(&(c as u64)) {
                            dst.partial.insert(c as u64, bits);
                        }
                        self.owner[*p as usize] = *to;
                    } else {
                        freed.push(*p);
                    }
                    *p = 0;
                }
                src.partial.clear();
                self.blobs.insert(*from, src);
                for p in freed {
                    self.free(p);
                }
            }
            Record::NextId { next } => self.next_id = self.next_id.max(*next),
            Record::Blobs { ids } => self.listed.get_or_insert_with(BTreeSet::new).extend(ids.iter().copied()),
            Record::Used { first, bits } => self.used_hint.push((*first, bits.clone())),
            Record::Commit => {}
        }
        Ok(())
    }

    /// Maps cluster `c` of blob `id` to `phys` (or checks it already is).
    fn map_cluster(&mut self, id: u64, c: u64, phys: u64) -> Result<(), ApplyError> {
        let words = self.words();
        self.check_phys(id, phys)?;
        let b = self.blobs.get_mut(&id).ok_or(ApplyError { blob: Some(id), reason: "no such blob".into() })?;
        match b.map.get(c as usize) {
            None => return err(id, format!("cluster {c} past the blob's end")),
            Some(&0) => {
                b.map[c as usize] = phys;
                // A freshly mapped cluster holds none of the blob's data yet.
                b.partial.insert(c, vec![0; words]);
            }
            Some(&p) if p == phys => {}
            Some(&p) => return err(id, format!("cluster {c} is at {p}, not {phys}")),
        }
        self.owner[phys as usize] = id;
        Ok(())
    }

    /// Called once a checkpoint and log are applied (after [`State::quarantine_unloaded`]):
    /// quarantines blobs whose parent is missing or quarantined, and parent cycles;
    /// clusters the checkpoint marks used but no healthy blob owns stay out of use.
    pub fn finish_load(&mut self) {
        loop {
            let bad: Vec<(u64, String)> = self
                .blobs
                .values()
                .filter_map(|b| match b.parent {
                    Parent::Blob(p) if !self.blobs.contains_key(&p) => {
                        Some((b.id, format!("its parent blob {p} is missing or quarantined")))
                    }
                    _ => None,
                })
                .collect();
            let cyclic: Vec<(u64, String)> = self
                .blobs
                .keys()
                .filter(|&&id| self.chain_cycles(id))
                .map(|&id| (id, "its parent chain is a cycle".to_string()))
                .collect();
            if bad.is_empty() && cyclic.is_empty() {
                break;
            }
            for (id, why) in bad.into_iter().chain(cyclic) {
                self.quarantine(id, why);
            }
        }
        if !self.quarantined.is_empty() {
            for (first, bits) in std::mem::take(&mut self.used_hint) {
                for (i, byte) in bits.iter().enumerate() {
                    for bit in 0..8 {
                        let c = first + i as u64 * 8 + bit;
                        if byte & (1 << bit) != 0 && self.owner.get(c as usize) == Some(&FREE) {
                            self.owner[c as usize] = QUARANTINED;
                        }
                    }
                }
            }
        }
        self.used_hint.clear();
    }

    fn chain_cycles(&self, id: u64) -> bool {
        let mut seen = BTreeSet::new();
        let mut cur = id;
        while let Some(b) = self.blobs.get(&cur) {
            if !seen.insert(cur) {
                return true;
            }
            match b.parent {
                Parent::Blob(p) => cur = p,
                _ => return false,
            }
        }
        false
    }

    /// Takes blob `id` out of service: its clusters stay allocated (never reused) and it is
    /// reported degraded, while every other blob works.
    pub fn quarantine(&mut self, id: u64, why: String) {
        if let Some(b) = self.blobs.remove(&id) {
            self.sized -= b.num_clusters;
            for p in b.map.into_iter().filter(|&p| p != 0) {
                self.owner[p as usize] = QUARANTINED;
            }
        }
        tracing::error!(blob = id, reason = %why, "blob quarantined");
        self.quarantined.entry(id).or_insert(why);
    }

    /// The checkpoint of this state: the store section, then one section per blob.
    pub fn checkpoint(&self) -> Vec<(Section, Vec<Record>)> {
        let mut store = vec![Record::NextId { next: self.next_id }];
        for (name, value) in &self.store_xattrs {
            store.push(Record::Xattr { id: STORE_ID, name: name.clone(), value: Some(value.clone()) });
        }
        let ids: Vec<u64> = self.blobs.keys().chain(self.quarantined.keys()).copied().collect();
        for chunk in ids.chunks(400) {
            store.push(Record::Blobs { ids: chunk.to_vec() });
        }
        let used: Vec<bool> = self.owner.iter().map(|&o| o < LIMBO || o == QUARANTINED).collect();
        for (i, chunk) in used.chunks(8 * 900).enumerate() {
            let mut bits = vec![0u8; chunk.len().div_ceil(8)];
            for (j, &u) in chunk.iter().enumerate() {
                if u {
                    bits[j / 8] |= 1 << (j % 8);
                }
            }
            store.push(Record::Used { first: (i * 8 * 900) as u64, bits });
        }
        let mut out = vec![(Section::Store, store)];
        for b in self.blobs.values() {
            let mut recs =
                vec![Record::Create { id: b.id, num_clusters: b.num_clusters, flags: b.flags, parent: b.parent }];
            for (name, value) in &b.xattrs {
                recs.push(Record::Xattr { id: b.id, name: name.clone(), value: Some(value.clone()) });
            }
            let mut c = 0u64;
            while c < b.num_clusters {
                let p = b.map[c as usize];
                if p == 0 {
                    c += 1;
                    continue;
                }
                if let Some(w) = b.partial.get(&c) {
                    let bits: Vec<u8> =
                        (0..self.gpc.div_ceil(8) as usize).map(|i| (w[i / 8] >> ((i % 8) * 8)) as u8).collect();
                    recs.push(Record::MapBits { id: b.id, cluster: c, phys: p, bits });
                    c += 1;
                    continue;
                }
                let mut n = 1;
                while c + n < b.num_clusters && b.map[(c + n) as usize] == p + n && !b.partial.contains_key(&(c + n)) {
                    n += 1;
                }
                recs.push(Record::MapRun { id: b.id, cluster: c, phys: p, count: n });
                c += n;
            }
            out.push((Section::Blob(b.id), recs));
        }
        out
    }

    /// Marks what a checkpoint's blob list says: listed blobs absent after the load (their
    /// section was unreadable) are quarantined.
    pub fn quarantine_unloaded(&mut self, unreadable: &BTreeMap<u64, String>) {
        let listed = self.listed.take().unwrap_or_default();
        for id in listed {
            if !self.blobs.contains_key(&id) {
                let why = unreadable.get(&id).cloned().unwrap_or_else(|| "its metadata is unreadable".into());
                self.quarantine(id, why);
            }
        }
    }

    /// The store's invariants, as the offline checker reports them (empty: all hold).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let mut seen: HashMap<u64, u64> = HashMap::new();
        for b in self.blobs.values() {
            if b.map.len() as u64 != b.num_clusters {
                p.push(format!("blob {}: map of {} entries for {} clusters", b.id, b.map.len(), b.num_clusters));
            }
            for (c, &phys) in b.map.iter().enumerate() {
                if phys == 0 {
                    continue;
                }
                if let Some(other) = seen.insert(phys, b.id) {
                    p.push(format!("cluster {phys} owned by blob {other} and blob {}", b.id));
                }
                if self.owner.get(phys as usize) != Some(&b.id) {
                    p.push(format!(
                        "blob {} cluster {c} at {phys}, whose owner says {:?}",
                        b.id,
                        self.owner.get(phys as usize)
                    ));
                }
            }
            for (c, w) in &b.partial {
                if b.map.get(*c as usize).is_none_or(|&x| x == 0) || w.len() != self.words() {
                    p.push(format!("blob {} has a validity bitmap for unmapped cluster {c}", b.id));
                }
            }
            if let Parent::Blob(parent) = b.parent {
                if !self.blobs.contains_key(&parent) {
                    p.push(format!("blob {} has missing parent {parent}", b.id));
                }
            }
            if self.chain_cycles(b.id) {
                p.push(format!("blob {}: parent chain is a cycle", b.id));
            }
        }
        for (phys, &o) in self.owner.iter().enumerate() {
            if o < LIMBO && seen.get(&(phys as u64)) != Some(&o) {
                p.push(format!("cluster {phys} marked owned by blob {o}, which does not map it"));
            }
        }
        let free = self.owner.iter().filter(|&&o| o == FREE || o == LIMBO || o == RESERVED).count();
        let md = self.owner.iter().filter(|&&o| o == METADATA).count();
        let q = self.owner.iter().filter(|&&o| o == QUARANTINED).count();
        if free + md + q + seen.len() != self.total_clusters as usize {
            p.push(format!(
                "free {free} + metadata {md} + quarantined {q} + allocated {} != total {}",
                seen.len(),
                self.total_clusters
            ));
        }
        p
    }
}

fn full(bits: &[u64], gpc: u64) -> bool {
    gpc == 0 || granules_set(bits, 0, gpc - 1)
}

fn owner_name(o: u64) -> String {
    match o {
        FREE => "nobody".into(),
        METADATA => "the metadata region".into(),
        QUARANTINED => "a quarantined blob".into(),
        LIMBO => "a free not yet durable".into(),
        id => format!("blob {id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::granules_set;

    #[test]
    fn granules_set_agrees_with_a_bit_by_bit_check() {
        // A bitmap of 256 granules with a pseudo-random pattern, every range up to 130 long.
        let mut bits = [0u64; 4];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for w in &mut bits {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *w = x | 0xffff_0000; // long runs of set bits too
        }
        bits[1] = u64::MAX;
        let bit = |g: u64| bits[(g / 64) as usize] & (1 << (g % 64)) != 0;
        for first in 0..256 {
            for last in first..(first + 130).min(256) {
                assert_eq!(granules_set(&bits, first, last), (first..=last).all(bit), "{first}..={last}");
            }
        }
        assert!(!granules_set(&bits[..1], 0, 64), "a bitmap too short is not all set");
    }
}
