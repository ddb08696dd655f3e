//! Blob operations: create, delete (merging a snapshot into its one clone), snapshot, clone,
//! resize, flags and xattrs, inflate and decouple. Each ends in one transaction of the log, so
//! it happens entirely or not at all after a crash; data copies happen before it, under the
//! cluster locks the data path uses.

use super::blob_io::Data;
use super::format::{Parent, Record, FLAG_READ_ONLY, FLAG_THIN};
use super::store::Store;
use super::StoreError;
use crate::bdev::qos::gate::Pacer;
use crate::bdev::IoType;
use std::rc::Rc;

type Xattrs = Vec<(String, Vec<u8>)>;

fn xattr_records(id: u64, xattrs: Xattrs) -> impl Iterator<Item = Record> {
    xattrs.into_iter().map(move |(name, value)| Record::Xattr { id, name, value: Some(value) })
}

impl Store {
    /// Holds new I/O to `blob` and waits for its writes in flight to finish: those the store
    /// counts, and those the bdev layer remapped onto the base (`remap_owned`), which only
    /// the base's range locks see.
    pub async fn freeze(&self, blob: u64) {
        let wait = {
            let mut i = self.inner.borrow_mut();
            i.frozen.entry(blob).or_default();
            if i.inflight_writes.get(&blob).copied().unwrap_or(0) > 0 {
                let s = crate::framework::task::Slot::new();
                i.drain_waiters.entry(blob).or_default().push(s.clone());
                Some(s)
            } else {
                None
            }
        };
        if let Some(s) = wait {
            s.await;
        }
        // The span of its clusters on the base (their lowest and highest).
        let span = {
            let i = self.inner.borrow();
            let owned = i.state.blobs.get(&blob).into_iter().flat_map(|b| b.map.iter().copied()).filter(|&p| p != 0);
            owned.fold(None, |m: Option<(u64, u64)>, p| Some(m.map_or((p, p), |(lo, hi)| (lo.min(p), hi.max(p)))))
        };
        if let Some((lo, hi)) = span {
            self.quiesce_span(lo, hi).await;
        }
    }

    /// Lets I/O to `blob` flow again (what was held is submitted in order).
    pub fn unfreeze(self: &Rc<Self>, blob: u64) {
        let held = self.inner.borrow_mut().frozen.remove(&blob).unwrap_or_default();
        for io in held {
            self.submit(blob, io);
        }
    }

    /// Waits until no I/O submitted before is in flight to clusters `phys` of the base (a bdev
    /// range lock taken and dropped at once). Called before they are freed, once nothing new
    /// can reach them: a read or write still in flight must not meet the next owner's data.
    async fn quiesce_clusters(&self, phys: &[u64]) {
        let (Some(&lo), Some(&hi)) = (phys.iter().min(), phys.iter().max()) else { return };
        self.quiesce_span(lo, hi).await;
    }

    /// [`Self::quiesce_clusters`] for every cluster from `lo` to `hi` (inclusive).
    async fn quiesce_span(&self, lo: u64, hi: u64) {
        let cs = self.inner.borrow().state.cluster_size;
        drop(self.dev.lock_range(lo * cs, (hi - lo + 1) * cs).await);
    }

    /// Reserves `n` clusters and zeroes them (for thick blobs: stale data of a deleted blob
    /// must never show); returns them, or ENOSPC with nothing reserved.
    async fn reserve_zeroed(self: &Rc<Self>, n: u64) -> Result<Vec<u64>, i32> {
        let mut got = Vec::with_capacity(n as usize);
        for _ in 0..n {
            match self.reserve_cluster_flushing().await {
                Some(p) => got.push(p),
                None => {
                    for p in got {
                        self.unreserve(p);
                    }
                    return Err(libc::ENOSPC);
                }
            }
        }
        let cs = self.inner.borrow().state.cluster_size;
        for run in runs(&got) {
            if let Err(e) = self.dev.zero(run.0 * cs, run.1 * cs).await {
                for p in got {
                    self.unreserve(p);
                }
                return Err(e);
            }
        }
        Ok(got)
    }

    /// Creates a blob of `num_clusters`; thick blobs get all their clusters now.
    pub async fn create_blob(
        self: &Rc<Self>,
        num_clusters: u64,
        flags: u32,
        parent: Parent,
        xattrs: Xattrs,
    ) -> Result<u64, StoreError> {
        let id = self.inner.borrow().state.next_id;
        let mut txn = vec![Record::Create { id, num_clusters, flags, parent }];
        txn.extend(xattr_records(id, xattrs));
        if flags & FLAG_THIN == 0 {
            let phys = self.reserve_zeroed(num_clusters).await.map_err(StoreError::Io)?;
            txn.extend(map_runs(id, 0, &phys));
        }
        self.commit(txn).await.map_err(StoreError::Io)?;
        Ok(id)
    }

    /// Sets or removes an xattr of a blob (or of the store, id 0).
    pub async fn set_xattr(self: &Rc<Self>, id: u64, name: &str, value: Option<Vec<u8>>) -> Result<(), StoreError> {
        self.commit(vec![Record::Xattr { id, name: name.to_string(), value }]).await.map_err(StoreError::Io)
    }

    /// Sets a blob's flags.
    pub async fn set_flags(self: &Rc<Self>, id: u64, flags: u32) -> Result<(), StoreError> {
        self.commit(vec![Record::Flags { id, flags }]).await.map_err(StoreError::Io)
    }

    /// Sets a blob's parent.
    pub async fn set_parent(self: &Rc<Self>, id: u64, parent: Parent) -> Result<(), StoreError> {
        self.freeze(id).await;
        let r = self.commit(vec![Record::SetParent { id, parent }]).await;
        self.unfreeze(id);
        r.map_err(StoreError::Io)
    }

    /// Takes a snapshot of `origin`: a new read-only blob takes its clusters, and `origin`
    /// becomes a thin clone of it. Writes in flight finish first; new I/O waits meanwhile.
    pub async fn snapshot(self: &Rc<Self>, origin: u64, xattrs: Xattrs) -> Result<u64, StoreError> {
        self.freeze(origin).await;
        let r = async {
            let (snap, txn) = {
                let i = self.inner.borrow();
                let b = i.state.blobs.get(&origin).ok_or(StoreError::NoSuchBlob(origin))?;
                let snap = i.state.next_id;
                let mut txn = vec![Record::Create {
                    id: snap,
                    num_clusters: b.num_clusters,
                    flags: FLAG_READ_ONLY | (b.flags & FLAG_THIN),
                    parent: b.parent,
                }];
                txn.extend(xattr_records(snap, xattrs));
                txn.push(Record::Move { from: origin, to: snap });
                txn.push(Record::SetParent { id: origin, parent: Parent::Blob(snap) });
                txn.push(Record::Flags { id: origin, flags: b.flags | FLAG_THIN });
                (snap, txn)
            };
            self.commit(txn).await.map_err(StoreError::Io)?;
            Ok(snap)
        }
        .await;
        self.unfreeze(origin);
        r
    }

    /// The blobs whose parent is `id`.
    pub fn children(&self, id: u64) -> Vec<u64> {
        self.with_state(|s| s.blobs.values().filter(|b| b.parent == Parent::Blob(id)).map(|b| b.id).collect())
    }

    /// Deletes a blob. With one clone, the blob's data the clone still reads moves into it
    /// first; `clear` zeroes the clusters that become free (SPDK's clear_method).
    pub async fn delete_blob(self: &Rc<Self>, id: u64, clear: bool) -> Result<(), StoreError> {
        let children = self.children(id);
        if children.len() > 1 {
            return Err(StoreError::Busy(format!("blob {id} has {} clones", children.len())));
        }
        let (cs, gpc) = self.with_state(|s| (s.cluster_size, s.gpc));
        if let Some(&child) = children.first() {
            self.freeze(child).await;
            let r = async {
                // Granules the clone reads from this blob, in clusters both hold, are copied.
                let n = self.with_state(|s| s.blobs[&id].num_clusters.min(s.blobs[&child].num_clusters));
                for c in 0..n {
                    let own = self.with_state(|s| {
                        let (b, k) = (&s.blobs[&id], &s.blobs[&child]);
                        (b.map[c as usize] != 0 && k.map[c as usize] != 0).then(|| {
                            (0..gpc).filter(|&g| b.granule_valid(c, g) && !k.granule_valid(c, g)).collect::<Vec<_>>()
                        })
                    });
                    let Some(granules) = own else { continue };
                    self.copy_granules(child, c, &granules).await?;
                }
                let parent = self.with_state(|s| s.blobs[&id].parent);
                let freed = self.freed_by_merge(id, child);
                self.quiesce_clusters(&freed).await;
                if clear && !freed.is_empty() {
                    // The clone read these clusters until the copies above; their records
                    // must be durable before the clusters are zeroed, or a crash could leave
                    // the clone reading zeroes through this (still existing) snapshot.
                    self.flush().await.map_err(StoreError::Io)?;
                }
                for p in freed.iter().filter(|_| clear) {
                    self.dev.zero(p * cs, cs).await.map_err(StoreError::Io)?;
                }
                let txn = vec![
                    Record::Move { from: id, to: child },
                    Record::SetParent { id: child, parent },
                    Record::Delete { id },
                ];
                self.commit(txn).await.map_err(StoreError::Io)
            }
            .await;
            self.unfreeze(child);
            return r;
        }
        self.freeze(id).await;
        let r = async {
            let phys: Vec<u64> = self.with_state(|s| {
                s.blobs.get(&id).map(|b| b.map.iter().copied().filter(|&p| p != 0).collect()).unwrap_or_default()
            });
            self.quiesce_clusters(&phys).await;
            if clear {
                for p in phys {
                    self.dev.zero(p * cs, cs).await.map_err(StoreError::Io)?;
                }
            }
            self.commit(vec![Record::Delete { id }]).await.map_err(StoreError::Io)
        }
        .await;
        self.unfreeze(id);
        r
    }

    fn freed_by_merge(&self, from: u64, to: u64) -> Vec<u64> {
        self.with_state(|s| {
            let (f, t) = (&s.blobs[&from], &s.blobs[&to]);
            f.map
                .iter()
                .enumerate()
                .filter(|&(c, &p)| p != 0 && (c as u64 >= t.num_clusters || t.map[c] != 0))
                .map(|(_, &p)| p)
                .collect()
        })
    }

    /// Makes `granules` of cluster `c` of `blob` its own, with the data it reads there now
    /// (through its chain), under the cluster's lock.
    async fn copy_granules(self: &Rc<Self>, blob: u64, c: u64, granules: &[u64]) -> Result<(), StoreError> {
        if granules.is_empty() {
            return Ok(());
        }
        let (cs, gs) = self.with_state(|s| (s.cluster_size, s.cluster_size / s.gpc));
        self.lock_cluster(blob, c).await;
        let r = async {
            // A write may have made some of them the blob's own meanwhile: those stay.
            let still: Vec<u64> = self
                .with_state(|s| granules.iter().copied().filter(|&g| !s.blobs[&blob].granule_valid(c, g)).collect());
            for (g, n) in runs(&still) {
                let buf = self.read_blob(blob, c * cs + g * gs, n * gs).await?;
                let iov = vec![libc::iovec { iov_base: buf.as_ptr().cast(), iov_len: buf.len() }];
                self.write_piece_locked(blob, c, g * gs, n * gs, &Data::Iovs(iov)).await?;
            }
            Ok::<(), i32>(())
        }
        .await;
        self.unlock_cluster(blob, c);
        r.map_err(StoreError::Io)
    }

    /// Copies into `blob` every granule it does not own that `from_parent_only` selects
    /// (None: all of them, i.e. inflate; Some(p): those parent `p` itself owns, i.e.
    /// decouple), cluster by cluster, then sets its parent to `new_parent`. With a `pacer`,
    /// each cluster's copy first waits for its bytes under the pacer's limit (outside the
    /// cluster's lock, so the blob's own I/O is never held up by it).
    async fn copy_in(
        self: &Rc<Self>,
        blob: u64,
        only_from: Option<u64>,
        new_parent: Parent,
        pacer: Option<&Pacer>,
    ) -> Result<(), StoreError> {
        let (n, gpc, gs) = self
            .with_state(|s| (s.blobs.get(&blob).map(|b| b.num_clusters).unwrap_or(0), s.gpc, s.cluster_size / s.gpc));
        for c in 0..n {
            let granules = self.with_state(|s| {
                let b = &s.blobs[&blob];
                (0..gpc)
                    .filter(|&g| !b.granule_valid(c, g))
                    .filter(|&g| match only_from {
                        None => true,
                        Some(p) => s.blobs.get(&p).is_some_and(|pb| c < pb.num_clusters && pb.granule_valid(c, g)),
                    })
                    .collect::<Vec<_>>()
            });
            if let (Some(p), false) = (pacer, granules.is_empty()) {
                p.pace(granules.len() as u64 * gs).await;
            }
            self.copy_granules(blob, c, &granules).await?;
        }
        let flags = self.with_state(|s| s.blobs[&blob].flags);
        let mut txn = vec![Record::SetParent { id: blob, parent: new_parent }];
        if only_from.is_none() {
            txn.push(Record::Flags { id: blob, flags: flags & !FLAG_THIN });
        }
        self.freeze(blob).await;
        let r = self.commit(txn).await;
        self.unfreeze(blob);
        r.map_err(StoreError::Io)
    }

    /// Inflate: the blob gets every cluster, with the data it reads now; no parent, thick.
    /// A `pacer` limits how fast it copies.
    pub async fn inflate(self: &Rc<Self>, blob: u64, pacer: Option<&Pacer>) -> Result<(), StoreError> {
        self.copy_in(blob, None, Parent::None, pacer).await
    }

    /// Decouple: the blob copies what its parent snapshot itself holds and takes the
    /// grandparent as its parent (an external parent is copied whole). A `pacer` limits how
    /// fast it copies.
    pub async fn decouple_parent(self: &Rc<Self>, blob: u64, pacer: Option<&Pacer>) -> Result<(), StoreError> {
        let parent = self.with_state(|s| s.blobs.get(&blob).map(|b| b.parent)).ok_or(StoreError::NoSuchBlob(blob))?;
        match parent {
            Parent::Blob(p) => {
                let grand = self.with_state(|s| s.blobs[&p].parent);
                self.copy_in(blob, Some(p), grand, pacer).await
            }
            Parent::External(_) => self.copy_in(blob, None, Parent::None, pacer).await,
            Parent::None => Err(StoreError::Invalid("the blob has no parent".into())),
        }
    }

    /// Resizes a blob to `num_clusters` (thick blobs allocate or free; clusters past a
    /// shrink are zeroed first when `clear`).
    pub async fn resize_blob(self: &Rc<Self>, id: u64, num_clusters: u64, clear: bool) -> Result<(), StoreError> {
        self.freeze(id).await;
        let r = async {
            let (old, thin, cs) = self.with_state(|s| {
                s.blobs.get(&id).map(|b| (b.num_clusters, b.thin(), s.cluster_size)).ok_or(StoreError::NoSuchBlob(id))
            })?;
            let mut txn = vec![Record::Resize { id, num_clusters }];
            if num_clusters > old && !thin {
                let phys = self.reserve_zeroed(num_clusters - old).await.map_err(StoreError::Io)?;
                txn.extend(map_runs(id, old, &phys));
            }
            if num_clusters < old {
                let gone: Vec<u64> = self.with_state(|s| {
                    s.blobs[&id].map[num_clusters as usize..].iter().copied().filter(|&p| p != 0).collect()
                });
                self.quiesce_clusters(&gone).await;
                for p in gone.into_iter().filter(|_| clear) {
                    self.dev.zero(p * cs, cs).await.map_err(StoreError::Io)?;
                }
            }
            self.commit(txn).await.map_err(StoreError::Io)
        }
        .await;
        self.unfreeze(id);
        r
    }

    /// Copies each cluster `blob` itself holds to `dst` at the same offsets (shallow copy):
    /// whole clusters as the blob reads them (its own granules and its parents' in between),
    /// as SPDK writes them; `progress` hears (clusters done, clusters to do) after each. A
    /// `pacer` limits how fast it copies (each cluster waits for its bytes first).
    pub async fn copy_allocated_to(
        self: &Rc<Self>,
        blob: u64,
        dst: &crate::bdev::BdevChannel,
        pacer: Option<&Pacer>,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<(), StoreError> {
        // It runs in the background, beside other operations: the blob may go meanwhile.
        let (cs, clusters) = self
            .with_state(|s| {
                let b = s.blobs.get(&blob)?;
                let clusters: Vec<u64> = (0..b.num_clusters).filter(|&c| b.map[c as usize] != 0).collect();
                Some((s.cluster_size, clusters))
            })
            .ok_or(StoreError::NoSuchBlob(blob))?;
        let total = clusters.len() as u64;
        for (done, c) in clusters.into_iter().enumerate() {
            if let Some(p) = pacer {
                p.pace(cs).await;
            }
            if !self.with_state(|s| s.blobs.contains_key(&blob)) {
                return Err(StoreError::NoSuchBlob(blob));
            }
            let buf = self.read_blob(blob, c * cs, cs).await.map_err(StoreError::Io)?;
            write_to(dst, c * cs, &buf).await.map_err(StoreError::Io)?;
            progress(done as u64 + 1, total);
        }
        Ok(())
    }
}

async fn write_to(chan: &crate::bdev::BdevChannel, at: u64, buf: &crate::bdev::buf::DmaBuf) -> Result<(), i32> {
    let iov = [libc::iovec { iov_base: buf.as_ptr().cast(), iov_len: buf.len() }];
    // SAFETY: `buf` is borrowed until the awaited write completes.
    unsafe { super::dev::channel_io(chan, IoType::Write, at, buf.len() as u64, &iov).await }
}

/// Runs of consecutive values: (first, length).
fn runs(v: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &x in v {
        match out.last_mut() {
            Some((s, n)) if *s + *n == x => *n += 1,
            _ => out.push((x, 1)),
        }
    }
    out
}

/// `MapRun` records mapping clusters `first..` of blob `id` to `phys` in order.
fn map_runs(id: u64, first: u64, phys: &[u64]) -> Vec<Record> {
    let mut out = Vec::new();
    let mut c = first;
    for (p, n) in runs(phys) {
        out.push(Record::MapRun { id, cluster: c, phys: p, count: n });
        c += n;
    }
    out
}
