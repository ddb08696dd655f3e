//! The paths that hand the caller's own `BdevIo` to the base bdev
//! ([`BdevChannel::forward`](crate::bdev::BdevChannel::forward)): no child I/O, no task, no
//! allocation per I/O in steady state.
//!
//! - **Owned**: a read or write inside one cluster whose touched granules are all the blob's
//!   own goes to the base at the cluster's place.
//! - **Direct first write**: a write of whole granules inside one cluster, some of them not
//!   the blob's yet (the first write after a snapshot, or to a thin lvol), while nobody holds
//!   that cluster's lock: the lock is taken, the cluster reserved if it has none, the data
//!   written straight to it; when the base completes, the `Map` record is applied (from then
//!   on reads see the new granules and the next writer may take the lock) and the I/O is
//!   parked until the log holds the record. Nothing is copied: whole granules replace the
//!   parent's data. Anything else (partial granules, several clusters, a busy cluster, a full
//!   store) takes the slow path in `blob_io.rs`.
//!
//! A write completes only once the record naming its data is in the log: parked I/Os wait in
//! commit order and the log writer completes them ([`Store::complete_parked`]) as batches land.

use super::format::Record;
use super::store::Store;
use crate::bdev::{BdevIo, IoCallback, IoStatus, IoType};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};

/// A direct first write in flight: what its `Map` record will say.
#[derive(Clone, Copy)]
struct DirectWrite {
    blob: u64,
    cluster: u64,
    phys: u64,
    first: u32,
    count: u32,
    /// The cluster was reserved for this write (given back if it fails).
    new: bool,
}

/// A write waiting for the log to hold its record.
struct Parked {
    commit: u64,
    blob: u64,
    io: Box<BdevIo>,
}

/// The store's forwarded I/O: in flight on the base or parked for the log.
#[derive(Default)]
pub struct Forwarded {
    /// Forwarded and not completed yet (on the base, or parked).
    inflight: Cell<usize>,
    owned_cb: RefCell<Option<IoCallback>>,
    direct_cb: RefCell<Option<IoCallback>>,
    /// Direct writes on the base, by the index their I/O carries in `ctx`.
    direct: RefCell<Vec<Option<DirectWrite>>>,
    free_direct: RefCell<Vec<usize>>,
    /// In commit order (commit numbers only grow).
    parked: RefCell<VecDeque<Parked>>,
}

impl Forwarded {
    /// Whether nothing is in flight.
    pub fn idle(&self) -> bool {
        self.inflight.get() == 0
    }
}

/// The callback in `slot`, made once: it calls `done` on the store while the store lives.
#[inline]
fn callback(store: &Rc<Store>, slot: &RefCell<Option<IoCallback>>, done: fn(&Rc<Store>, Box<BdevIo>)) -> IoCallback {
    slot.borrow_mut()
        .get_or_insert_with(|| {
            let weak: Weak<Store> = Rc::downgrade(store);
            Rc::new(move |io: Box<BdevIo>| match weak.upgrade() {
                Some(store) => done(&store, io),
                // Unreachable while I/O is in flight (`io_drained` keeps the store); give the
                // I/O back failed rather than lose it.
                None => {
                    let mut io = io;
                    io.unforward();
                    io.complete_inline(IoStatus::Failed);
                }
            })
        })
        .clone()
}

impl Store {
    /// Remaps `io` whole onto the base device at byte `at` in the bdev layer's one pass
    /// ([`BdevChannel::remap`](crate::bdev::BdevChannel::remap)): it completes from the base
    /// to its submitter with no callback into the store, so it is not counted here. That is
    /// right for a read, and for a write whose cluster has no record still on its way to the
    /// log (the caller checks: such a write must wait for the log, see `owned_done`); a
    /// blob's freeze waits for these writes on the base ([`Store::freeze`]). Gives `io` back
    /// when the bdev layer cannot take it that way.
    #[inline]
    pub(super) fn remap_owned(&self, io: Box<BdevIo>, at: u64) -> Result<(), Box<BdevIo>> {
        let bs = self.dev.block_size;
        // Block sizes are powers of two: a shift, not a division, on the I/O path.
        debug_assert!(bs.is_power_of_two());
        self.dev.chan.remap(io, at >> bs.trailing_zeros())
    }

    /// A read of clusters the blob owns, at byte `at` of the base: remapped, or else forwarded.
    #[inline]
    pub(super) fn submit_owned(self: &Rc<Self>, blob: u64, io: Box<BdevIo>, at: u64) {
        if let Err(io) = self.remap_owned(io, at) {
            self.submit_whole(blob, io, at);
        }
    }

    /// Sends `io` whole to the base device at byte `at` (the owned-cluster fast path).
    /// `ctx` carries the blob meanwhile.
    #[inline]
    pub(super) fn submit_whole(self: &Rc<Self>, blob: u64, io: Box<BdevIo>, at: u64) {
        let bs = self.dev.chan.bdev().block_size() as u64;
        let fwd = &self.io.fwd;
        fwd.inflight.set(fwd.inflight.get() + 1);
        let on_done = callback(self, &fwd.owned_cb, Store::owned_done);
        self.dev.chan.forward(io, at / bs, blob, on_done);
    }

    #[inline]
    fn owned_done(self: &Rc<Self>, mut io: Box<BdevIo>) {
        let blob = io.ctx;
        io.unforward();
        if io.io_type == IoType::Write && io.succeeded() {
            // Its granules' record may still be on its way to the log (an earlier first write).
            if let Some(commit) = self.unlogged_commit_at(blob, io.offset_bytes()) {
                return self.park_until_logged(commit, blob, io);
            }
        }
        self.finish_forwarded(blob, io, true);
    }

    /// Tries the direct first write of `io` to `blob` (already counted in its writes); gives
    /// `io` back when it does not apply.
    pub(super) fn try_direct_write(self: &Rc<Self>, blob: u64, io: Box<BdevIo>) -> Option<Box<BdevIo>> {
        let (off, len) = (io.offset_bytes(), io.len_bytes());
        let (c, at, first, count, mapped) = {
            let i = self.inner.borrow();
            let s = &i.state;
            let cs = s.cluster_size;
            let gs = cs / s.gpc;
            let c = off / cs;
            let whole_granules = off.is_multiple_of(gs) && len.is_multiple_of(gs) && len > 0;
            if !whole_granules || (off + len - 1) / cs != c {
                return Some(io);
            }
            let b = s.blobs.get(&blob)?;
            let mapped = b.map.get(c as usize).copied()?;
            let (first, count) = ((off % cs / gs) as u32, (len / gs) as u32);
            (c, off % cs, first, count, mapped)
        };
        if self.metadata_failed() {
            return Some(io);
        }
        // Where the blob has a place for the cluster, direct writes share its lock (each
        // writes and records its own granules); reserving a place takes it whole.
        let (phys, new) = match mapped {
            0 => {
                if !self.inner.borrow_mut().cluster_locks.try_exclusive(blob, c) {
                    return Some(io);
                }
                match self.reserve_cluster() {
                    Some(p) => (p, true),
                    None => {
                        // Full, or space waits for a flush: the slow path knows what to do.
                        self.unlock_cluster(blob, c);
                        return Some(io);
                    }
                }
            }
            p => {
                if !self.inner.borrow_mut().cluster_locks.try_shared(blob, c) {
                    return Some(io);
                }
                (p, false)
            }
        };
        let fwd = &self.io.fwd;
        let d = DirectWrite { blob, cluster: c, phys, first, count, new };
        let index = match fwd.free_direct.borrow_mut().pop() {
            Some(k) => {
                fwd.direct.borrow_mut()[k] = Some(d);
                k
            }
            None => {
                let mut v = fwd.direct.borrow_mut();
                v.push(Some(d));
                v.len() - 1
            }
        };
        fwd.inflight.set(fwd.inflight.get() + 1);
        let on_done = callback(self, &fwd.direct_cb, Store::direct_done);
        let cs = self.inner.borrow().state.cluster_size;
        let bs = self.dev.chan.bdev().block_size() as u64;
        self.dev.chan.forward(io, (phys * cs + at) / bs, index as u64, on_done);
        None
    }

    fn direct_done(self: &Rc<Self>, mut io: Box<BdevIo>) {
        let index = io.ctx as usize;
        io.unforward();
        let fwd = &self.io.fwd;
        let d = fwd.direct.borrow_mut()[index].take().expect("live direct write");
        fwd.free_direct.borrow_mut().push(index);
        let committed = if io.succeeded() {
            let rec = Record::Map { id: d.blob, cluster: d.cluster, phys: d.phys, first: d.first, count: d.count };
            // Marked before the log writer can run, so later writes to the cluster wait too.
            let next = self.inner.borrow().commit_no + 1;
            self.inner.borrow_mut().undurable.insert((d.blob, d.cluster), next);
            self.commit_apply(std::slice::from_ref(&rec))
        } else {
            Err(io.errno().max(libc::EIO))
        };
        if committed.is_err() && d.new {
            self.unreserve(d.phys);
        }
        // The record is applied: the cluster's next writer may start.
        if d.new {
            self.unlock_cluster(d.blob, d.cluster);
        } else {
            self.unlock_cluster_shared(d.blob, d.cluster);
        }
        match committed {
            Ok(commit) => {
                self.kick_writer();
                self.park_until_logged(commit, d.blob, io);
            }
            Err(e) => {
                io.set_errno(e);
                self.finish_forwarded_with(d.blob, io, IoStatus::Failed, true);
            }
        }
    }

    /// Holds the written `io` until commit `commit` is in the log.
    fn park_until_logged(&self, commit: u64, blob: u64, io: Box<BdevIo>) {
        self.io.fwd.parked.borrow_mut().push_back(Parked { commit, blob, io });
    }

    /// The log writer wrote every commit up to `upto` (or failed with `result`): completes
    /// the parked writes it covers.
    pub(super) fn complete_parked(&self, upto: u64, result: Result<(), i32>) {
        loop {
            let p = {
                let mut parked = self.io.fwd.parked.borrow_mut();
                match parked.front() {
                    Some(p) if p.commit <= upto => parked.pop_front(),
                    _ => None,
                }
            };
            let Some(Parked { blob, mut io, .. }) = p else { break };
            let status = match result {
                Ok(()) => IoStatus::Success,
                Err(e) => {
                    io.set_errno(e);
                    IoStatus::Failed
                }
            };
            self.finish_forwarded_with(blob, io, status, false);
        }
    }

    #[inline]
    fn finish_forwarded(&self, blob: u64, io: Box<BdevIo>, inline: bool) {
        let status = io.status();
        self.finish_forwarded_with(blob, io, status, inline);
    }

    /// Completes a forwarded I/O of `blob` (already unforwarded) with `status`.
    #[inline]
    fn finish_forwarded_with(&self, blob: u64, io: Box<BdevIo>, status: IoStatus, inline: bool) {
        if io.io_type == IoType::Write {
            self.write_done(blob);
        }
        let fwd = &self.io.fwd;
        fwd.inflight.set(fwd.inflight.get() - 1);
        self.wake_drained();
        if inline {
            io.complete_inline(status);
        } else {
            io.complete(status);
        }
    }
}
