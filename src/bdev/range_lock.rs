//! LBA range locks (SPDK's `bdev_lock_lba_range`): a caller locks `[offset, offset + n)` of a
//! bdev; once every I/O submitted before the call has completed, it holds the range, and
//! I/O overlapping it from anyone else waits in its channel until the lock is dropped.
//!
//! Design, and why it costs nothing when no lock exists:
//! - Each channel (one per bdev per reactor, single-threaded) keeps two in-flight counters,
//!   one per *epoch parity*, in `Cell`s, and the list of ranges currently locked; submitting
//!   reads a `Cell<bool>` ("any range locked here?") and bumps the counter of the current
//!   parity. No atomic, no lock, no allocation on the data path.
//! - The bdev keeps a table of locks (a `Mutex`, control path only). A lock is `Waiting`
//!   while an earlier lock overlaps it (FIFO among overlapping locks), `Propagating` while
//!   the channels learn of it, `Held` once granted. Ready locks propagate in *rounds*, one
//!   round per bdev at a time: a message to every reactor adds the round's ranges to the
//!   bdev's channel there (new overlapping I/O now queue), flips the channel's epoch, and
//!   acknowledges once the old parity's counter drains (at once, or from the completion that
//!   empties it). Everything submitted before the round is in the old parity, so when every
//!   reactor has acknowledged, the round's locks are granted on their owners' reactors.
//!   One round at a time keeps the two parities sufficient: a round starts only once the
//!   previous one found every old parity empty.
//! - A channel made while locks exist copies the table's propagated ranges when it is made.
//! - Dropping a [`RangeLock`] removes it from the table and tells every reactor (the channel
//!   forgets the range and resubmits its queued I/O in order), then starts the next round.
//!   Messages to one reactor run in the order sent, and the table's mutex orders the sends,
//!   so a later lock's round runs after an earlier unlock on every reactor: I/O released by
//!   the unlock are counted before the next lock waits for them.
//! - Removal of the bdev fails every queued I/O with `ENODEV` and grants every pending lock
//!   (its holder's I/O then fails with `ENODEV` like anyone's), so nothing waits forever.

use super::channel::{BdevChannel, ChannelInner};
use super::device::{lock, Bdev};
use super::io::{BdevIo, IoType};
use crate::framework::{self, io_channel};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// `BdevIo::parity` of an I/O that is not counted in flight (rejected, or queued).
pub(crate) const NOT_COUNTED: u8 = 2;

/// Lock ids are unique in the process; 0 means "no lock" in `BdevIo::lock_id`.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A locked block range: `[start, end)`, owned by lock `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    id: u64,
    start: u64,
    end: u64,
}

impl Range {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start < end && start < self.end
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Behind an earlier overlapping lock, or behind the round in progress.
    Waiting,
    /// In the round in progress: channels block its range, old I/O drains.
    Propagating,
    /// Granted to its owner.
    Held,
}

struct Entry {
    range: Range,
    owner: usize,
    state: State,
}

/// The round in progress: how many reactors have still to acknowledge.
struct Round {
    remaining: usize,
}

#[derive(Default)]
struct TableState {
    /// Every lock not yet dropped, in request order (ids increase).
    locks: Vec<Entry>,
    round: Option<Round>,
    removed: bool,
}

/// One bdev's locks (in `BdevInner`). Control path only.
#[derive(Default)]
pub(crate) struct LockTable {
    state: Mutex<TableState>,
}

/// What runs when a lock is granted.
type Granted = Box<dyn FnOnce(RangeLock)>;

thread_local! {
    /// Callbacks of this reactor's locks not yet granted, by lock id (they are not `Send`).
    static GRANTS: RefCell<HashMap<u64, Granted>> = RefCell::new(HashMap::new());
}

/// A held LBA range lock. Dropping it unlocks the range: every channel is told and the I/O
/// that waited for it are resubmitted in order. Drop it once its own I/O have completed.
/// Not `Send`: it belongs to the reactor it was granted on.
pub struct RangeLock {
    bdev: Bdev,
    range: Range,
    _reactor_bound: PhantomData<Rc<()>>,
}

impl RangeLock {
    /// Submits `io` as the lock holder's own I/O: it passes this lock (other locks still
    /// apply). `channel` must be a channel of the locked bdev.
    pub fn submit(&self, channel: &BdevChannel, io: Box<BdevIo>) {
        if !channel.bdev().same(&self.bdev) {
            tracing::error!(
                lock_bdev = self.bdev.name(),
                io_bdev = channel.bdev().name(),
                "I/O under a range lock of another bdev"
            );
            io.fail(libc::EINVAL);
            return;
        }
        channel.submit_as(io, self.range.id);
    }

    /// The lock's id, for `BdevChannel::submit_as` inside the crate.
    pub(crate) fn id(&self) -> u64 {
        self.range.id
    }

    /// The locked bdev.
    pub fn bdev(&self) -> &Bdev {
        &self.bdev
    }

    /// The first locked block.
    pub fn offset_blocks(&self) -> u64 {
        self.range.start
    }

    /// The number of locked blocks.
    pub fn num_blocks(&self) -> u64 {
        self.range.end - self.range.start
    }
}

impl Drop for RangeLock {
    fn drop(&mut self) {
        self.bdev.0.range_locks.unlock(&self.bdev, self.range.id);
    }
}

impl std::fmt::Debug for RangeLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeLock")
            .field("bdev", &self.bdev.name())
            .field("offset_blocks", &self.range.start)
            .field("num_blocks", &(self.range.end - self.range.start))
            .finish()
    }
}

/// Asks for a lock on `[offset, offset + num)` of `bdev`; `locked` runs on this reactor
/// when it is granted. See [`BdevChannel::lock_range`].
pub(crate) fn lock_range(bdev: &Bdev, offset: u64, num: u64, locked: Granted) {
    let Some(owner) = framework::current_index() else {
        // Channels exist only on reactors, so this is a caller bug; never grant off them.
        tracing::error!(bdev = bdev.name(), "range lock asked for off a reactor: refused");
        return;
    };
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let range = Range { id, start: offset, end: offset.saturating_add(num) };
    GRANTS.with(|g| g.borrow_mut().insert(id, locked));
    bdev.0.range_locks.request(bdev, range, owner);
}

impl LockTable {
    fn request(&self, bdev: &Bdev, range: Range, owner: usize) {
        let mut st = lock(&self.state);
        st.locks.push(Entry { range, owner, state: State::Waiting });
        if st.removed {
            grant_now(bdev, &mut st, range.id);
            return;
        }
        schedule(bdev, &mut st);
    }

    /// The ranges channels must block now (for a channel being made).
    pub(crate) fn propagated(&self) -> Vec<RangeSnapshot> {
        let st = lock(&self.state);
        st.locks.iter().filter(|e| e.state != State::Waiting).map(|e| RangeSnapshot(e.range)).collect()
    }

    /// One reactor has seen the round and drained its old I/O.
    fn ack(&self, bdev: &Bdev) {
        let mut st = lock(&self.state);
        let Some(round) = st.round.as_mut() else {
            tracing::error!(bdev = bdev.name(), "range lock acknowledgement without a round");
            return;
        };
        round.remaining -= 1;
        if round.remaining == 0 {
            complete_round(bdev, &mut st);
        }
    }

    fn unlock(&self, bdev: &Bdev, id: u64) {
        let mut st = lock(&self.state);
        let Some(pos) = st.locks.iter().position(|e| e.range.id == id) else { return };
        st.locks.remove(pos);
        // Under the table's mutex, so any later round is sent after this on every reactor.
        for r in 0..framework::reactors().len() {
            let b = bdev.clone();
            let _ = framework::send(r, move || on_unlock(&b, id));
        }
        if !st.removed {
            schedule(bdev, &mut st);
        }
    }

    /// The bdev was unregistered: queued I/O fail, pending locks are granted.
    pub(crate) fn bdev_removed(&self, bdev: &Bdev) {
        let mut st = lock(&self.state);
        st.removed = true;
        let pending: Vec<u64> = st.locks.iter().filter(|e| e.state != State::Held).map(|e| e.range.id).collect();
        for id in pending {
            grant_now(bdev, &mut st, id);
        }
        for r in 0..framework::reactors().len() {
            let b = bdev.clone();
            let _ = framework::send(r, move || on_removed(&b));
        }
    }
}

/// A propagated range, as a channel being made copies it.
pub(crate) struct RangeSnapshot(Range);

/// Starts a round with every ready lock, unless one is in progress.
fn schedule(bdev: &Bdev, st: &mut TableState) {
    if st.round.is_some() {
        return;
    }
    let mut ready = Vec::new();
    for (i, e) in st.locks.iter().enumerate() {
        if e.state != State::Waiting {
            continue;
        }
        // FIFO among overlapping locks: wait for every earlier one, whatever its state.
        if st.locks[..i].iter().all(|earlier| !earlier.range.overlaps(e.range.start, e.range.end)) {
            ready.push(i);
        }
    }
    if ready.is_empty() {
        return;
    }
    let ranges: Vec<Range> = ready.iter().map(|&i| st.locks[i].range).collect();
    for &i in &ready {
        st.locks[i].state = State::Propagating;
    }
    let reactors = framework::reactors().len();
    st.round = Some(Round { remaining: reactors });
    let mut unreachable = 0;
    for r in 0..reactors {
        let (b, ranges) = (bdev.clone(), ranges.clone());
        if framework::send(r, move || on_round(b, &ranges)).is_err() {
            unreachable += 1; // a stopped reactor runs no I/O
        }
    }
    let round = st.round.as_mut().expect("just set");
    round.remaining -= unreachable;
    if round.remaining == 0 {
        complete_round(bdev, st);
    }
}

/// Every reactor drained: grant the round's locks, start the next round.
fn complete_round(bdev: &Bdev, st: &mut TableState) {
    st.round = None;
    let ids: Vec<u64> = st.locks.iter().filter(|e| e.state == State::Propagating).map(|e| e.range.id).collect();
    for id in ids {
        grant_now(bdev, st, id);
    }
    if !st.removed {
        schedule(bdev, st);
    }
}

/// Marks lock `id` held and runs its callback on its owner's reactor.
fn grant_now(bdev: &Bdev, st: &mut TableState, id: u64) {
    let Some(entry) = st.locks.iter_mut().find(|e| e.range.id == id) else { return };
    entry.state = State::Held;
    let (range, owner, b) = (entry.range, entry.owner, bdev.clone());
    if framework::send(owner, move || deliver(b, range)).is_err() {
        // The owner's reactor has stopped: nobody will hold or drop this lock.
        st.locks.retain(|e| e.range.id != id);
    }
}

/// On the owner's reactor: hands the lock to its callback.
fn deliver(bdev: Bdev, range: Range) {
    let lock = RangeLock { bdev, range, _reactor_bound: PhantomData };
    match GRANTS.with(|g| g.borrow_mut().remove(&range.id)) {
        Some(locked) => locked(lock),
        None => tracing::error!(?range, "range lock granted without a waiting callback"), // dropped: unlocks
    }
}

fn this_channel(bdev: &Bdev) -> Option<Rc<ChannelInner>> {
    io_channel::existing_channel::<ChannelInner>(bdev.io_device())
}

/// On each reactor: block the round's ranges, flip the epoch, acknowledge once drained.
fn on_round(bdev: Bdev, ranges: &[Range]) {
    let Some(ch) = this_channel(&bdev) else {
        bdev.0.range_locks.ack(&bdev);
        return;
    };
    let locks = ch.locks();
    locks.add(ranges);
    let b = bdev.clone();
    locks.flip_then(Box::new(move || b.0.range_locks.ack(&b)));
}

/// On each reactor: forget lock `id`, resubmit what waited for it.
fn on_unlock(bdev: &Bdev, id: u64) {
    if let Some(ch) = this_channel(bdev) {
        ch.locks().remove(id);
        ch.resubmit_queued();
    }
}

/// On each reactor: fail every queued I/O of the removed bdev.
fn on_removed(bdev: &Bdev) {
    if let Some(ch) = this_channel(bdev) {
        for io in ch.locks().take_queued() {
            io.fail(libc::ENODEV);
        }
    }
}

/// A channel's side of range locking (one reactor's, single-threaded).
///
/// `repr(C)`, with what every I/O reads first: a channel keeps its submission path's fields in
/// one cache line (see `ChannelInner`).
#[repr(C)]
pub(crate) struct ChannelLocks {
    /// I/O in the module, by the parity of the epoch they were submitted in (32 bits: a
    /// channel never has 2^32 I/Os in flight, each a `BdevIo` of hundreds of bytes).
    inflight: [Cell<u32>; 2],
    /// Parity of the current epoch (0 or 1).
    epoch: Cell<u8>,
    /// Whether `ranges` is non-empty (the one check on the data path).
    any: Cell<bool>,
    ranges: RefCell<Vec<Range>>,
    /// I/O waiting for a lock to go, in submission order.
    queued: RefCell<VecDeque<Box<BdevIo>>>,
    /// Runs when the previous epoch's in-flight count reaches zero.
    drained: RefCell<Option<Box<dyn FnOnce()>>>,
}

impl ChannelLocks {
    /// How many bytes from its start hold what every I/O reads: up to `any`, the last of the
    /// counts and flags in declaration (`repr(C)`) order.
    #[cfg(test)]
    pub(crate) const PER_IO_BYTES: usize = std::mem::offset_of!(ChannelLocks, any) + 1;

    /// I/O in flight counted under `parity` (tests).
    #[cfg(test)]
    pub(crate) fn in_flight(&self, parity: u8) -> u32 {
        self.inflight[(parity & 1) as usize].get()
    }

    /// Sets the current epoch's parity (tests of what keeps it).
    #[cfg(test)]
    pub(crate) fn set_epoch(&self, parity: u8) {
        self.epoch.set(parity);
    }

    pub(crate) fn new(initial: Vec<RangeSnapshot>) -> Self {
        let ranges: Vec<Range> = initial.into_iter().map(|r| r.0).collect();
        ChannelLocks {
            epoch: Cell::new(0),
            inflight: [Cell::new(0), Cell::new(0)],
            any: Cell::new(!ranges.is_empty()),
            ranges: RefCell::new(ranges),
            queued: RefCell::new(VecDeque::new()),
            drained: RefCell::new(None),
        }
    }

    /// Whether any range is locked on this channel (whoever holds it).
    #[inline(always)]
    pub(crate) fn any_locked(&self) -> bool {
        self.any.get()
    }

    /// Whether `io` must wait: it overlaps a range locked by someone other than its lock.
    #[inline(always)]
    pub(crate) fn blocks(&self, io: &BdevIo) -> bool {
        // The data path's one check inline; the search (ranges are rare) out of line.
        self.any.get() && self.blocks_locked(io)
    }

    #[cold]
    #[inline(never)]
    fn blocks_locked(&self, io: &BdevIo) -> bool {
        if io.io_type == IoType::Reset {
            return false;
        }
        let end = io.offset_blocks.saturating_add(io.num_blocks);
        self.ranges.borrow().iter().any(|r| r.id != io.lock_id && r.overlaps(io.offset_blocks, end))
    }

    /// Counts `io` in flight in the current epoch.
    #[inline]
    pub(crate) fn count(&self, io: &mut BdevIo) {
        io.parity = self.count_one();
    }

    /// Counts one I/O in flight in the current epoch and returns the parity it is counted
    /// under, for [`Self::uncount`] (a remap keeps it apart from the I/O's own level's).
    #[inline]
    pub(crate) fn count_one(&self) -> u8 {
        let p = self.epoch.get();
        // The epoch's parity is 0 or 1: the mask only spares a bounds check.
        let c = &self.inflight[(p & 1) as usize];
        c.set(c.get() + 1);
        p
    }

    /// Uncounts a completed I/O that was counted under parity `p`; the last of a previous
    /// epoch runs the drain waiter.
    #[inline]
    pub(crate) fn uncount(&self, p: u8) {
        if p == NOT_COUNTED {
            return;
        }
        let c = &self.inflight[(p & 1) as usize];
        c.set(c.get() - 1);
        if c.get() == 0 && p != self.epoch.get() {
            self.run_drained();
        }
    }

    #[cold]
    #[inline(never)]
    fn run_drained(&self) {
        let waiter = self.drained.borrow_mut().take();
        if let Some(w) = waiter {
            w();
        }
    }

    pub(crate) fn enqueue(&self, mut io: Box<BdevIo>) {
        io.parity = NOT_COUNTED;
        self.queued.borrow_mut().push_back(io);
    }

    pub(crate) fn take_queued(&self) -> VecDeque<Box<BdevIo>> {
        std::mem::take(&mut *self.queued.borrow_mut())
    }

    /// I/O waiting for a lock in this channel.
    pub(crate) fn queued_len(&self) -> usize {
        self.queued.borrow().len()
    }

    fn add(&self, ranges: &[Range]) {
        let mut mine = self.ranges.borrow_mut();
        for r in ranges {
            // A channel made during the round copied it from the table already.
            if !mine.contains(r) {
                mine.push(*r);
            }
        }
        self.any.set(!mine.is_empty());
    }

    fn remove(&self, id: u64) {
        let mut mine = self.ranges.borrow_mut();
        mine.retain(|r| r.id != id);
        self.any.set(!mine.is_empty());
    }

    /// Starts a new epoch; `then` runs once the old one has no I/O in flight.
    fn flip_then(&self, then: Box<dyn FnOnce()>) {
        let old = self.epoch.get();
        self.epoch.set(old ^ 1);
        if self.inflight[old as usize].get() == 0 {
            then();
        } else {
            let previous = self.drained.borrow_mut().replace(then);
            debug_assert!(previous.is_none(), "one range-lock round at a time per bdev");
        }
    }
}
