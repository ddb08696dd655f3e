//! A blob's data path on the store's reactor.
//!
//! Fast path (no allocation, no metadata): a read or write inside one cluster the blob owns
//! whose touched granules are all its own goes to the base bdev as one child I/O on the same
//! iovecs (zero copy). Everything else (reads through the parent chain, first writes,
//! copy-on-write of a granule, unmap) is split into pieces; writes that need metadata run as a
//! task under the cluster's lock and commit a `Map` record through the group-committed log.
//! Copy-on-write works per granule (4 KiB for clusters up to 16 MiB): a write covering whole
//! granules copies nothing, a partial granule copies only that granule.

use super::format::Parent;
use super::state::{BlobMeta, State};
use super::store::{Inner, Store};
use super::write_targets::WriteTargets;
use crate::bdev::buf::DmaBuf;
use crate::bdev::{BdevChannel, BdevIo, IoCallback, IoStatus, IoType};
use crate::framework::task;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use uuid::Uuid;

/// Where a piece of a blob's data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Src {
    /// At this byte offset of the base device.
    Base(u64),
    /// At this byte offset of an external snapshot bdev.
    External(Uuid, u64),
    /// Nowhere: it reads as zeroes.
    Zero,
}

/// A run of a blob's bytes `[offset, offset+len)` with one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Byte offset in the blob.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
    /// Where they are.
    pub src: Src,
}

/// Where each byte of `[offset, offset+len)` of `blob` is, following the parent chain.
pub fn resolve(state: &State, blob: u64, offset: u64, len: u64) -> Vec<Piece> {
    let cs = state.cluster_size;
    let gs = cs / state.gpc;
    let mut out: Vec<Piece> = Vec::new();
    let mut push = |p: Piece| {
        if let Some(last) = out.last_mut() {
            let contiguous = match (last.src, p.src) {
                (Src::Base(a), Src::Base(b)) => a + last.len == b,
                (Src::External(u, a), Src::External(v, b)) => u == v && a + last.len == b,
                (Src::Zero, Src::Zero) => true,
                _ => false,
            };
            if contiguous && last.offset + last.len == p.offset {
                last.len += p.len;
                return;
            }
        }
        out.push(p);
    };
    let end = offset + len;
    let mut pos = offset;
    while pos < end {
        let c = pos / cs;
        let g = (pos % cs) / gs;
        let run_end = end.min((c * cs) + (g + 1) * gs);
        // Fully owned cluster: the whole rest of the cluster in one piece.
        if let Some(b) = state.blobs.get(&blob) {
            let p = b.map.get(c as usize).copied().unwrap_or(0);
            if p != 0 && !b.partial.contains_key(&c) {
                let cend = end.min((c + 1) * cs);
                push(Piece { offset: pos, len: cend - pos, src: Src::Base(p * cs + pos % cs) });
                pos = cend;
                continue;
            }
        }
        push(Piece { offset: pos, len: run_end - pos, src: granule_source(state, blob, c, g, pos % cs) });
        pos = run_end;
    }
    out
}

/// The source of granule `g` of cluster `c` of `blob` (at byte `in_cluster` of the cluster).
fn granule_source(state: &State, blob: u64, c: u64, g: u64, in_cluster: u64) -> Src {
    let cs = state.cluster_size;
    let mut cur = blob;
    // A chain is acyclic (checked at load and by every operation); the bound is a backstop.
    for _ in 0..=state.blobs.len() {
        let Some(b) = state.blobs.get(&cur) else { return Src::Zero };
        if c >= b.num_clusters {
            // Past a (smaller) parent's end: zeroes, as SPDK.
            return Src::Zero;
        }
        if b.granule_valid(c, g) {
            return Src::Base(b.map[c as usize] * cs + in_cluster);
        }
        match b.parent {
            Parent::Blob(p) => cur = p,
            Parent::External(u) => return Src::External(u, c * cs + in_cluster),
            Parent::None => return Src::Zero,
        }
    }
    Src::Zero
}

/// Slices `len` bytes starting `skip` bytes into `iovs`.
pub fn slice_iovs(iovs: &[libc::iovec], mut skip: u64, mut len: u64) -> Vec<libc::iovec> {
    let mut out = Vec::new();
    for v in iovs {
        if len == 0 {
            break;
        }
        let l = v.iov_len as u64;
        if skip >= l {
            skip -= l;
            continue;
        }
        let n = (l - skip).min(len);
        out.push(libc::iovec {
            iov_base: v.iov_base.cast::<u8>().wrapping_add(skip as usize).cast(),
            iov_len: n as usize,
        });
        len -= n;
        skip = 0;
    }
    out
}

/// An external snapshot bdev open by the store.
pub struct Esnap {
    /// Its descriptor (read-only).
    pub desc: crate::bdev::BdevDesc,
    /// This reactor's channel.
    pub chan: BdevChannel,
}

struct ParentIo {
    io: Box<BdevIo>,
    remaining: u32,
    errno: i32,
}

/// The store's in-flight lvol I/O and its reusable child I/Os.
#[derive(Default)]
pub struct IoPool {
    parents: RefCell<Vec<Option<ParentIo>>>,
    free_slots: RefCell<Vec<usize>>,
    // I/Os travel as the boxes their owners hand over; the pool keeps those boxes.
    #[allow(clippy::vec_box)]
    children: RefCell<Vec<Box<BdevIo>>>,
    callback: RefCell<Option<IoCallback>>,
    /// I/O handed to the base as the caller's own `BdevIo` (`forward.rs`).
    pub(super) fwd: super::forward::Forwarded,
    /// Waiting for every parent I/O to finish ([`Store::io_drained`]).
    drain_waiters: RefCell<Vec<task::Slot<()>>>,
    /// External snapshots by bdev uuid.
    pub esnaps: RefCell<HashMap<Uuid, Esnap>>,
}

impl IoPool {
    #[inline]
    fn io_idle_waiters(&self) -> bool {
        !self.drain_waiters.borrow().is_empty()
    }
}

impl Store {
    fn child_callback(self: &Rc<Self>) -> IoCallback {
        let mut cb = self.io.callback.borrow_mut();
        cb.get_or_insert_with(|| {
            let weak: Weak<Store> = Rc::downgrade(self);
            Rc::new(move |child: Box<BdevIo>| {
                if let Some(store) = weak.upgrade() {
                    store.child_done(child);
                }
            })
        })
        .clone()
    }

    fn child(self: &Rc<Self>) -> Box<BdevIo> {
        let reused = self.io.children.borrow_mut().pop();
        reused.unwrap_or_else(|| BdevIo::new(self.child_callback()))
    }

    fn start_parent(&self, io: Box<BdevIo>, pieces: u32) -> usize {
        let p = ParentIo { io, remaining: pieces, errno: 0 };
        match self.io.free_slots.borrow_mut().pop() {
            Some(i) => {
                self.io.parents.borrow_mut()[i] = Some(p);
                i
            }
            None => {
                let mut v = self.io.parents.borrow_mut();
                v.push(Some(p));
                v.len() - 1
            }
        }
    }

    /// One piece of parent `slot` finished with `errno` (0: success). `inline`: we are in a
    /// child's completion callback, so the parent's callback may run right here (a completion
    /// round saved); elsewhere (inside `submit`) it is queued as usual.
    fn piece_done(self: &Rc<Self>, slot: usize, errno: i32, inline: bool) {
        let done = {
            let mut parents = self.io.parents.borrow_mut();
            let p = parents[slot].as_mut().expect("live parent");
            if errno != 0 && p.errno == 0 {
                p.errno = errno;
            }
            p.remaining -= 1;
            if p.remaining == 0 {
                parents[slot].take()
            } else {
                None
            }
        };
        if let Some(p) = done {
            self.io.free_slots.borrow_mut().push(slot);
            self.wake_drained();
            let status = if p.errno == 0 { IoStatus::Success } else { IoStatus::Failed };
            let mut io = p.io;
            if p.errno != 0 {
                io.set_errno(p.errno);
            }
            if inline {
                io.complete_inline(status);
            } else {
                io.complete(status);
            }
        }
    }

    /// Returns once no lvol I/O of the store is in flight. A store dropped before its
    /// child I/Os complete would lose their parents (the child callback holds only a weak
    /// reference), so whoever drops a store that may still have I/O (a hot-removed base)
    /// keeps it until this returns.
    pub async fn io_drained(self: &Rc<Self>) {
        if !self.io_idle() {
            let slot = task::Slot::new();
            self.io.drain_waiters.borrow_mut().push(slot.clone());
            slot.await;
        }
    }

    fn io_idle(&self) -> bool {
        self.io.fwd.idle() && self.io.free_slots.borrow().len() == self.io.parents.borrow().len()
    }

    /// Wakes whoever waits in [`Store::io_drained`] if no I/O is left.
    #[inline]
    pub(super) fn wake_drained(&self) {
        if self.io.io_idle_waiters() && self.io_idle() {
            for w in self.io.drain_waiters.take() {
                w.fill(());
            }
        }
    }

    fn child_done(self: &Rc<Self>, child: Box<BdevIo>) {
        let slot = child.ctx as usize;
        let errno = if child.succeeded() { 0 } else { child.errno().max(libc::EIO) };
        self.io.children.borrow_mut().push(child);
        self.piece_done(slot, errno, true);
    }

    /// Sends one piece of parent `slot` to `chan` at device bytes `dev_off`.
    fn submit_child(
        self: &Rc<Self>,
        chan: &BdevChannel,
        slot: usize,
        io_type: IoType,
        dev_off: u64,
        len: u64,
        iovs: &[libc::iovec],
    ) {
        let bs = chan.bdev().block_size() as u64;
        let mut c = self.child();
        c.ctx = slot as u64;
        c.prepare(io_type, dev_off / bs, len / bs);
        c.clear_iovs();
        for v in iovs {
            // SAFETY: the iovecs are slices of the parent I/O's, which its submitter keeps
            // valid until the parent completes, after every child.
            unsafe { c.push_iov(v.iov_base.cast(), v.iov_len) };
        }
        chan.submit(c);
    }

    /// Submits `io` (already validated against the lvol bdev) to blob `blob`.
    ///
    /// Reads and writes of clusters the blob owns are the hot path: one borrow of the store,
    /// then the base. Everything else is out of line, so that the hot path's frame stays small
    /// (an inlined task's future would make it kilobytes, a stack probe per I/O).
    #[inline]
    pub fn submit(self: &Rc<Self>, blob: u64, io: Box<BdevIo>) {
        match io.io_type {
            IoType::Read => self.read(blob, io, None),
            IoType::Write => self.write(blob, io, None),
            _ => self.submit_other(blob, io),
        }
    }

    /// [`Store::submit`] for a caller that keeps `blob`'s targets (an lvol channel on this
    /// reactor) and tried them first ([`WriteTargets::try_write`], [`WriteTargets::try_read`]):
    /// a write or read taking the full path remembers its target there when it has one.
    #[inline]
    pub fn submit_remembering(self: &Rc<Self>, blob: u64, targets: &WriteTargets, io: Box<BdevIo>) {
        match io.io_type {
            IoType::Write => self.write(blob, io, Some(targets)),
            IoType::Read => self.read(blob, io, Some(targets)),
            _ => self.submit(blob, io),
        }
    }

    /// Write targets for a blob, to be kept by a caller on this reactor (the store's) and
    /// given to [`Store::submit_remembering`].
    pub fn write_targets(&self) -> WriteTargets {
        WriteTargets::new(&self.inner, &self.dev.chan, self.dev.block_size.trailing_zeros())
    }

    /// Queues `io` if its blob is frozen (a snapshot or the like is being taken); gives it
    /// back otherwise.
    #[cold]
    #[inline(never)]
    fn queue_if_frozen(&self, blob: u64, io: Box<BdevIo>) -> Option<Box<BdevIo>> {
        match self.inner.borrow_mut().frozen.get_mut(&blob) {
            Some(q) => {
                q.push(io);
                None
            }
            None => Some(io),
        }
    }

    /// Unmap, write zeroes, flush and reset.
    #[cold]
    #[inline(never)]
    fn submit_other(self: &Rc<Self>, blob: u64, io: Box<BdevIo>) {
        let Some(io) = self.queue_if_frozen(blob, io) else { return };
        match io.io_type {
            IoType::Read | IoType::Write => unreachable!("submit takes reads and writes"),
            IoType::Unmap | IoType::WriteZeroes => {
                if let Err(e) = self.writable(blob) {
                    return io.fail(e);
                }
                self.write_started(blob);
                let me = self.clone();
                task::spawn_local(async move {
                    let (off, len) = (io.offset_bytes(), io.len_bytes());
                    let r = me.zero_range(blob, off, len).await;
                    me.write_done(blob);
                    match r {
                        Ok(()) => io.complete(IoStatus::Success),
                        Err(e) => io.fail(e),
                    }
                });
            }
            IoType::Flush => {
                let me = self.clone();
                task::spawn_local(async move {
                    match me.flush().await {
                        Ok(()) => io.complete(IoStatus::Success),
                        Err(e) => io.fail(e),
                    }
                });
            }
            IoType::Reset => io.complete(IoStatus::Success),
        }
    }

    fn writable(&self, blob: u64) -> Result<(), i32> {
        match self.inner.borrow().state.blobs.get(&blob) {
            None => Err(libc::ENODEV),
            Some(b) if b.read_only() => Err(libc::EPERM),
            Some(_) => Ok(()),
        }
    }

    #[inline]
    pub(crate) fn write_started(&self, blob: u64) {
        *self.inner.borrow_mut().inflight_writes.entry(blob).or_insert(0) += 1;
    }

    #[inline]
    pub(crate) fn write_done(&self, blob: u64) {
        let waiters = {
            let mut i = self.inner.borrow_mut();
            let n = i.inflight_writes.get_mut(&blob).expect("counted");
            *n -= 1;
            if *n == 0 {
                i.inflight_writes.remove(&blob);
                i.drain_waiters.remove(&blob).unwrap_or_default()
            } else {
                Vec::new()
            }
        };
        for w in waiters {
            w.fill(());
        }
    }

    /// Remembers in `t` where I/O within cluster `c` of `blob` (`b`) goes on the base: base
    /// cluster `p`, which the blob owns whole (no partial bits) with no record for it on its
    /// way to the log, so that any write or read within it goes there the same way while
    /// nothing in the store changes. Once per version and channel it finds the run of such
    /// clusters around this one (which covers it); otherwise this cluster's own entry.
    /// Never for a read-only blob (a snapshot, say): a target takes writes too.
    #[inline]
    fn remember(&self, i: &Inner, t: &WriteTargets, blob: u64, b: &BlobMeta, c: u64, p: u64) {
        if b.read_only() {
            return;
        }
        let (version, cs) = (self.inner.version(), i.state.cluster_size);
        let run = if t.run_current(version) { None } else { i.whole_logged_run(blob, b, c) };
        match run {
            Some((first, count)) => t.fill_run(version, cs, first, count, (p - (c - first)) * cs),
            None => t.fill(version, cs, c, p * cs),
        }
    }

    /// A read; a cluster it finds the blob's own whole is remembered in `targets`.
    #[inline]
    fn read(self: &Rc<Self>, blob: u64, io: Box<BdevIo>, targets: Option<&WriteTargets>) {
        let (off, len) = (io.offset_bytes(), io.len_bytes());
        let owned_at = {
            let i = self.inner.borrow();
            // Nearly always empty: skip hashing the blob id on every I/O.
            if !i.frozen.is_empty() {
                drop(i);
                return self.read_slow(blob, io);
            }
            let Some(b) = i.state.blobs.get(&blob) else {
                drop(i);
                return io.fail(libc::ENODEV);
            };
            // Fast path: inside one cluster the blob owns whole.
            let cs = i.state.cluster_size;
            let (c, within) = i.state.cluster_of(off);
            let p = b.map.get(c as usize).copied().unwrap_or(0);
            let owned = p != 0 && within + len <= cs && (b.partial.is_empty() || !b.partial.contains_key(&c));
            if let (true, Some(t)) = (owned, targets) {
                if i.unlogged_commit(blob, c).is_none() {
                    self.remember(&i, t, blob, b, c, p);
                }
            }
            owned.then_some(p * cs + within)
        };
        match owned_at {
            Some(at) => self.submit_owned(blob, io, at),
            None => self.read_slow(blob, io),
        }
    }

    /// A read the fast path does not take: a frozen blob, or pieces from several places
    /// (clusters not the blob's own, partly valid clusters, several clusters).
    #[inline(never)]
    fn read_slow(self: &Rc<Self>, blob: u64, io: Box<BdevIo>) {
        let Some(io) = self.queue_if_frozen(blob, io) else { return };
        let (off, len) = (io.offset_bytes(), io.len_bytes());
        let pieces = {
            let i = self.inner.borrow();
            if !i.state.blobs.contains_key(&blob) {
                drop(i);
                return io.fail(libc::ENODEV);
            }
            resolve(&i.state, blob, off, len)
        };
        // Zero pieces first (no I/O), then the rest as children of the one parent.
        let mut data = Vec::new();
        for p in &pieces {
            if p.src == Src::Zero {
                for v in slice_iovs(io.iovs(), p.offset - off, p.len) {
                    // SAFETY: a slice of the I/O's own iovecs, valid for writes (push_iov's contract).
                    unsafe { std::ptr::write_bytes(v.iov_base.cast::<u8>(), 0, v.iov_len) };
                }
            } else {
                data.push(*p);
            }
        }
        if data.is_empty() {
            return io.complete(IoStatus::Success);
        }
        let iovs: Vec<libc::iovec> = io.iovs().to_vec();
        let slot = self.start_parent(io, data.len() as u32);
        for p in data {
            let sub = slice_iovs(&iovs, p.offset - off, p.len);
            match p.src {
                Src::Base(at) => self.submit_child(&self.dev.chan, slot, IoType::Read, at, p.len, &sub),
                Src::External(u, at) => self.read_external(slot, u, at, p.len, &sub),
                Src::Zero => unreachable!("zero pieces were filled above"),
            }
        }
    }

    fn read_external(self: &Rc<Self>, slot: usize, uuid: Uuid, at: u64, len: u64, iovs: &[libc::iovec]) {
        let esnaps = self.io.esnaps.borrow();
        let Some(e) = esnaps.get(&uuid) else {
            drop(esnaps);
            return self.piece_done(slot, libc::EIO, false);
        };
        let size = e.desc.bdev().size_bytes();
        let inside = size.saturating_sub(at).min(len);
        // Bytes past the external bdev's end read as zeroes.
        for v in slice_iovs(iovs, inside, len - inside) {
            // SAFETY: a slice of the parent I/O's iovecs, valid for writes.
            unsafe { std::ptr::write_bytes(v.iov_base.cast::<u8>(), 0, v.iov_len) };
        }
        if inside == 0 {
            drop(esnaps);
            return self.piece_done(slot, 0, false);
        }
        let chan = e.chan.clone();
        drop(esnaps);
        self.submit_child(&chan, slot, IoType::Read, at, inside, &slice_iovs(iovs, 0, inside));
    }

    #[inline]
    fn write(self: &Rc<Self>, blob: u64, io: Box<BdevIo>, targets: Option<&WriteTargets>) {
        // Nearly always empty: skip hashing the blob id on every I/O.
        if !self.inner.borrow().frozen.is_empty() {
            return self.write_queued(blob, io);
        }
        self.write_unfrozen(blob, io, targets)
    }

    /// A write arriving while some blob is frozen: queued if it is this one, else written.
    #[cold]
    #[inline(never)]
    fn write_queued(self: &Rc<Self>, blob: u64, io: Box<BdevIo>) {
        if let Some(io) = self.queue_if_frozen(blob, io) {
            self.write_unfrozen(blob, io, None);
        }
    }

    /// A write while `blob` is not frozen; a remap target it finds is remembered in
    /// `targets`.
    #[inline]
    fn write_unfrozen(self: &Rc<Self>, blob: u64, io: Box<BdevIo>, targets: Option<&WriteTargets>) {
        let (off, len) = (io.offset_bytes(), io.len_bytes());
        // Where the write goes whole, if it is inside one cluster whose touched granules are
        // all the blob's; and whether it may be remapped (no record for that cluster still on
        // its way to the log).
        let fast = {
            let i = self.inner.borrow();
            let s = &i.state;
            let cs = s.cluster_size;
            let b = match s.blobs.get(&blob) {
                Some(b) if b.read_only() => Err(libc::EPERM),
                Some(b) => Ok(b),
                None => Err(libc::ENODEV),
            };
            let b = match b {
                Ok(b) => b,
                Err(e) => {
                    drop(i);
                    return io.fail(e);
                }
            };
            let (c, within) = s.cluster_of(off);
            let p = b.map.get(c as usize).copied().unwrap_or(0);
            if p == 0 || within + len > cs {
                None
            } else {
                let bits = if b.partial.is_empty() { None } else { b.partial.get(&c) };
                let all_valid = match bits {
                    None => true,
                    Some(bits) => {
                        let gs = cs / s.gpc;
                        super::state::granules_set(bits, within / gs, (within + len - 1) / gs)
                    }
                };
                let unlogged = i.unlogged_commit(blob, c).is_some();
                if let (Some(t), None, false) = (targets, bits, unlogged) {
                    self.remember(&i, t, blob, b, c, p);
                }
                all_valid.then_some((p * cs + within, !unlogged))
            }
        };
        let io = match fast {
            Some((at, true)) => match self.remap_owned(io, at) {
                Ok(()) => return,
                Err(io) => io,
            },
            _ => io,
        };
        self.write_started(blob);
        match fast {
            Some((at, _)) => self.submit_whole(blob, io, at),
            None => self.write_unowned(blob, io),
        }
    }

    /// A write (counted in the blob's writes) touching granules the blob does not own:
    /// the direct first write, or the copy-on-write path.
    #[inline(never)]
    fn write_unowned(self: &Rc<Self>, blob: u64, io: Box<BdevIo>) {
        let (off, len) = (io.offset_bytes(), io.len_bytes());
        let Some(io) = self.try_direct_write(blob, io) else { return };
        let me = self.clone();
        task::spawn_local(async move {
            let r = me.write_slow(blob, &io, off, len).await;
            me.write_done(blob);
            match r {
                Ok(()) => io.complete(IoStatus::Success),
                Err(e) => io.fail(e),
            }
        });
    }

    async fn write_slow(self: &Rc<Self>, blob: u64, io: &BdevIo, off: u64, len: u64) -> Result<(), i32> {
        let cs = self.inner.borrow().state.cluster_size;
        let mut pos = off;
        while pos < off + len {
            let c = pos / cs;
            let n = (off + len).min((c + 1) * cs) - pos;
            let data = Data::Iovs(slice_iovs(io.iovs(), pos - off, n));
            self.write_piece(blob, c, pos % cs, n, &data).await?;
            pos += n;
        }
        Ok(())
    }

    /// Writes `len` bytes at `in_cluster` of cluster `c` of `blob` from `data`, allocating the
    /// cluster and copying partial granules from the parent chain as needed, then commits the
    /// granules' validity.
    pub(crate) async fn write_piece(
        self: &Rc<Self>,
        blob: u64,
        c: u64,
        in_cluster: u64,
        len: u64,
        data: &Data,
    ) -> Result<(), i32> {
        self.lock_cluster(blob, c).await;
        let r = self.write_piece_applied(blob, c, in_cluster, len, data).await;
        // The cluster's next writer may start while this one's record goes to the log (the
        // record is applied; writes that find it not yet written wait for it to complete).
        self.unlock_cluster(blob, c);
        logged(r?).await
    }

    /// [`Store::write_piece`] with the cluster locked, waiting for the log too.
    pub(crate) async fn write_piece_locked(
        self: &Rc<Self>,
        blob: u64,
        c: u64,
        in_cluster: u64,
        len: u64,
        data: &Data,
    ) -> Result<(), i32> {
        logged(self.write_piece_applied(blob, c, in_cluster, len, data).await?).await
    }

    /// Writes the data and applies its `Map` record; returns what to await for the record to
    /// be in the log (None: no record was needed).
    async fn write_piece_applied(
        self: &Rc<Self>,
        blob: u64,
        c: u64,
        in_cluster: u64,
        len: u64,
        data: &Data,
    ) -> Result<Option<crate::framework::task::Slot<Result<(), i32>>>, i32> {
        let (cs, gs, mapped, valid) = {
            let i = self.inner.borrow();
            let s = &i.state;
            let b = s.blobs.get(&blob).ok_or(libc::ENODEV)?;
            let gs = s.cluster_size / s.gpc;
            let p = b.map.get(c as usize).copied().ok_or(libc::EINVAL)?;
            let g0 = in_cluster / gs;
            let g1 = (in_cluster + len).div_ceil(gs);
            let valid: Vec<bool> = (g0..g1).map(|g| b.granule_valid(c, g)).collect();
            (s.cluster_size, gs, p, valid)
        };
        let (phys, new) = match mapped {
            0 => (self.reserve_cluster_flushing().await.ok_or(libc::ENOSPC)?, true),
            p => (p, false),
        };
        let base = phys * cs;
        let g0 = in_cluster / gs;
        let end = in_cluster + len;
        let g1 = end.div_ceil(gs);
        let head_partial = !in_cluster.is_multiple_of(gs) && !valid[0];
        let tail_partial = !end.is_multiple_of(gs) && !valid[valid.len() - 1];
        let result = async {
            if head_partial || tail_partial {
                // Copy-on-write of the edge granules that are not the blob's own yet.
                if head_partial {
                    self.merge_granule(blob, c, g0, in_cluster, len, data, base).await?;
                }
                if tail_partial && (g1 - 1 != g0 || !head_partial) {
                    self.merge_granule(blob, c, g1 - 1, in_cluster, len, data, base).await?;
                }
                // The middle: granules the write covers whole, or edges already the blob's.
                let mid_start = if head_partial { (g0 + 1) * gs } else { in_cluster };
                let mid_end = if tail_partial { (g1 - 1) * gs } else { end };
                if mid_end > mid_start {
                    self.write_data(base + mid_start, mid_start - in_cluster, mid_end - mid_start, data).await?;
                }
            } else {
                self.write_data(base + in_cluster, 0, len, data).await?;
            }
            Ok::<(), i32>(())
        }
        .await;
        if let Err(e) = result {
            if new {
                self.unreserve(phys);
            }
            return Err(e);
        }
        if new || valid.iter().any(|v| !v) {
            let rec =
                super::format::Record::Map { id: blob, cluster: c, phys, first: g0 as u32, count: (g1 - g0) as u32 };
            // Marked before the log writer can run (it starts inside commit_begin).
            let next = self.inner.borrow().commit_no + 1;
            self.inner.borrow_mut().undurable.insert((blob, c), next);
            let (no, logged) = self.commit_begin(vec![rec])?;
            debug_assert_eq!(no, next);
            return Ok(Some(logged));
        }
        Ok(None)
    }

    /// Writes granule `g` whole: its current content (through the parent chain) with the
    /// part of the write `[in_cluster, in_cluster+len)` that falls in it laid over.
    #[allow(clippy::too_many_arguments)]
    async fn merge_granule(
        self: &Rc<Self>,
        blob: u64,
        c: u64,
        g: u64,
        in_cluster: u64,
        len: u64,
        data: &Data,
        base: u64,
    ) -> Result<(), i32> {
        let cs = self.inner.borrow().state.cluster_size;
        let gs = cs / self.inner.borrow().state.gpc;
        let mut buf = self.read_blob(blob, c * cs + g * gs, gs).await?;
        let from = in_cluster.max(g * gs);
        let to = (in_cluster + len).min((g + 1) * gs);
        data.copy_into(&mut buf.as_mut_slice()[(from - g * gs) as usize..(to - g * gs) as usize], from - in_cluster);
        self.dev.write_buf(base + g * gs, &buf).await
    }

    async fn write_data(&self, at: u64, skip: u64, len: u64, data: &Data) -> Result<(), i32> {
        match data {
            Data::Iovs(v) => {
                let sub = slice_iovs(v, skip, len);
                // SAFETY: slices of the parent I/O's iovecs, kept valid by its submitter
                // until the parent completes, which is after this write.
                unsafe { self.dev.io(IoType::Write, at, len, &sub).await }
            }
            Data::Zero => self.dev.zero(at, len).await,
        }
    }

    /// Reads `len` bytes of `blob` at `offset` (through its chain) into a new buffer.
    pub async fn read_blob(self: &Rc<Self>, blob: u64, offset: u64, len: u64) -> Result<DmaBuf, i32> {
        let buf = DmaBuf::new(len as usize, self.dev.align).ok_or(libc::ENOMEM)?;
        let pieces = resolve(&self.inner.borrow().state, blob, offset, len);
        for p in pieces {
            let dst = buf.as_ptr().wrapping_add((p.offset - offset) as usize);
            let iov = [libc::iovec { iov_base: dst.cast(), iov_len: p.len as usize }];
            match p.src {
                Src::Zero => {}
                // SAFETY: `buf` is owned here and outlives the awaited read; `iov` is inside it.
                Src::Base(at) => unsafe { self.dev.io(IoType::Read, at, p.len, &iov).await? },
                Src::External(u, at) => {
                    let (desc_size, chan) = {
                        let e = self.io.esnaps.borrow();
                        let e = e.get(&u).ok_or(libc::EIO)?;
                        (e.desc.bdev().size_bytes(), e.chan.clone())
                    };
                    let inside = desc_size.saturating_sub(at).min(p.len);
                    if inside > 0 {
                        let iov = [libc::iovec { iov_base: dst.cast(), iov_len: inside as usize }];
                        // SAFETY: inside `buf`, which outlives the awaited read.
                        unsafe { super::dev::channel_io(&chan, IoType::Read, at, inside, &iov).await? };
                    }
                }
            }
        }
        Ok(buf)
    }

    /// Makes `[off, off+len)` of `blob` read as zeroes, freeing whole clusters where the blob
    /// has no parent and is thin.
    async fn zero_range(self: &Rc<Self>, blob: u64, off: u64, len: u64) -> Result<(), i32> {
        let cs = self.inner.borrow().state.cluster_size;
        let mut pos = off;
        while pos < off + len {
            let c = pos / cs;
            let n = (off + len).min((c + 1) * cs) - pos;
            self.lock_cluster(blob, c).await;
            let r = self.zero_piece(blob, c, pos % cs, n).await;
            self.unlock_cluster(blob, c);
            r?;
            pos += n;
        }
        Ok(())
    }

    async fn zero_piece(self: &Rc<Self>, blob: u64, c: u64, in_cluster: u64, n: u64) -> Result<(), i32> {
        let (cs, phys, parent, thin) = {
            let i = self.inner.borrow();
            let b = i.state.blobs.get(&blob).ok_or(libc::ENODEV)?;
            (i.state.cluster_size, b.map[c as usize], b.parent, b.thin())
        };
        if parent != Parent::None {
            // The parent's data must not show through: write zeroes as the blob's own.
            return self.write_piece_locked(blob, c, in_cluster, n, &Data::Zero).await;
        }
        if phys == 0 {
            return Ok(()); // unallocated without a parent: zeroes already
        }
        if thin && n == cs {
            // Reads and writes of this cluster still in flight on the base (fast-path I/O
            // takes no cluster lock) finish before it is freed, and none starts until it is:
            // a stale write must never land in a cluster reused by another blob.
            let _fence = self.dev.lock_range(phys * cs, cs).await;
            return self.commit(vec![super::format::Record::Release { id: blob, cluster: c }]).await;
        }
        self.dev.zero(phys * cs + in_cluster, n).await
    }
}

/// Waits for a record to be in the log, if there is one to wait for.
async fn logged(record: Option<crate::framework::task::Slot<Result<(), i32>>>) -> Result<(), i32> {
    match record {
        Some(slot) => slot.await,
        None => Ok(()),
    }
}

/// The data of a slow-path write.
pub enum Data {
    /// The parent I/O's iovecs (a slice of them).
    Iovs(Vec<libc::iovec>),
    /// Zeroes.
    Zero,
}

impl Data {
    /// Copies `dst.len()` bytes starting `skip` bytes into the data.
    fn copy_into(&self, dst: &mut [u8], skip: u64) {
        match self {
            Data::Iovs(v) => {
                let sub = slice_iovs(v, skip, dst.len() as u64);
                // SAFETY: slices of the parent I/O's iovecs, valid for reads until it completes.
                unsafe { crate::bdev::buf::copy_from_iovecs(&sub, dst) };
            }
            Data::Zero => dst.fill(0),
        }
    }
}
