//! LBA range locks on real reactors, against the gate bdev (whose completions the test
//! releases): a lock waits for older overlapping I/O, holds back others' overlapping I/O on
//! any reactor until it goes, lets non-overlapping and its holder's I/O through, queues
//! behind overlapping locks in order, and lets go of everything when the bdev is removed.
//!
//! "Not yet" is never proven by waiting: [`barrier`] passes a message through every reactor
//! twice, so every message the lock machinery sent before it (rounds, acknowledgements,
//! grants) has run, and a grant that was going to happen has happened.

use super::test_gate::{self, wait_until, Gate};
use super::*;
use crate::bdev::buf::DmaBuf;
use crate::framework::{self, testing};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Duration;

const BS: usize = 512;
const WAIT: Duration = Duration::from_secs(10);

thread_local! {
    /// Descriptors and channels the test made on this reactor, by bdev name.
    static CHANNELS: RefCell<HashMap<String, (BdevDesc, BdevChannel)>> = RefCell::new(HashMap::new());
    /// Locks the test holds on this reactor, by the test's key.
    static HELD: RefCell<HashMap<&'static str, RangeLock>> = RefCell::new(HashMap::new());
}

fn with_channel<R>(bdev: &str, f: impl FnOnce(&BdevChannel) -> R) -> R {
    CHANNELS.with(|c| {
        let mut c = c.borrow_mut();
        let (_, ch) = c.entry(bdev.to_string()).or_insert_with(|| {
            let desc = open(bdev, true, Box::new(|_, _| {})).expect("open");
            let ch = desc.channel().expect("channel");
            (desc, ch)
        });
        f(ch)
    })
}

/// What an I/O came back with: status, errno, buffer.
type Done = (IoStatus, i32, Vec<u8>);

/// Builds an I/O of `data.len()` bytes whose completion goes to the returned receiver.
fn make_io(io_type: IoType, lba: u64, blocks: u64, data: Vec<u8>) -> (Box<BdevIo>, Receiver<Done>) {
    let (tx, rx) = mpsc::channel();
    let mut buf = DmaBuf::new(data.len().max(1), 4096).expect("buffer");
    buf.as_mut_slice()[..data.len()].copy_from_slice(&data);
    let (ptr, len) = (buf.as_ptr(), data.len());
    let keep = RefCell::new(Some(buf));
    let mut io = BdevIo::new(Rc::new(move |io: Box<BdevIo>| {
        let buf = keep.borrow_mut().take().expect("one completion");
        let _ = tx.send((io.status(), io.errno(), buf.as_slice()[..len].to_vec()));
    }));
    io.prepare(io_type, lba, blocks);
    if len > 0 {
        // SAFETY: the buffer lives in the callback's captured state until the I/O completes.
        unsafe { io.push_iov(ptr, len) };
    }
    (io, rx)
}

/// Submits an I/O on `reactor`'s channel of `bdev`.
fn submit(reactor: usize, bdev: &str, io_type: IoType, lba: u64, data: Vec<u8>) -> Receiver<Done> {
    let name = bdev.to_string();
    framework::call(reactor, move || {
        let blocks = (data.len() / BS) as u64;
        let (io, rx) = make_io(io_type, lba, blocks.max(1), data);
        with_channel(&name, |ch| ch.submit(io));
        rx
    })
    .unwrap()
}

/// Reads `blocks` at `lba` from `reactor`.
fn read(reactor: usize, bdev: &str, lba: u64, blocks: u64) -> Receiver<Done> {
    submit(reactor, bdev, IoType::Read, lba, vec![0; blocks as usize * BS])
}

/// Submits an I/O on `reactor` through the lock the test holds under `key`.
fn submit_locked(reactor: usize, bdev: &str, key: &'static str, io_type: IoType, lba: u64, data: Vec<u8>) -> Done {
    let name = bdev.to_string();
    let rx = framework::call(reactor, move || {
        let (io, rx) = make_io(io_type, lba, (data.len() / BS) as u64, data);
        with_channel(&name, |ch| HELD.with(|h| h.borrow()[key].submit(ch, io)));
        rx
    })
    .unwrap();
    rx.recv_timeout(WAIT).expect("the holder's I/O completes")
}

/// Asks for a lock on `reactor`; the receiver hears when it is granted (it is then held
/// on that reactor under `key`).
fn request_lock(reactor: usize, bdev: &str, key: &'static str, lba: u64, blocks: u64) -> Receiver<()> {
    let name = bdev.to_string();
    let (tx, rx) = mpsc::channel();
    framework::call(reactor, move || {
        with_channel(&name, |ch| {
            ch.lock_range(lba, blocks, move |lock| {
                assert_eq!((lock.offset_blocks(), lock.num_blocks()), (lba, blocks));
                HELD.with(|h| h.borrow_mut().insert(key, lock));
                let _ = tx.send(());
            })
        })
    })
    .unwrap();
    rx
}

fn unlock(reactor: usize, key: &'static str) {
    framework::call(reactor, move || drop(HELD.with(|h| h.borrow_mut().remove(key)).expect("lock held"))).unwrap();
}

/// Every message sent before this (and those they sent in turn) has run on every reactor.
fn barrier() {
    for _ in 0..3 {
        for r in 0..2 {
            framework::call(r, || {}).unwrap();
        }
    }
}

fn queued(reactor: usize, bdev: &str) -> usize {
    let name = bdev.to_string();
    framework::call(reactor, move || with_channel(&name, |ch| ch.queued_for_locks())).unwrap()
}

#[track_caller]
fn not_yet<T>(rx: &Receiver<T>, what: &str) {
    barrier();
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)), "{what}");
}

#[track_caller]
fn done(rx: &Receiver<Done>, what: &str) -> Done {
    rx.recv_timeout(WAIT).unwrap_or_else(|_| panic!("{what}: never completed"))
}

fn block(seed: u8, blocks: usize) -> Vec<u8> {
    (0..blocks * BS).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed)).collect()
}

fn forget_channels(bdev: &str) {
    for r in 0..2 {
        let name = bdev.to_string();
        framework::call(r, move || drop(CHANNELS.with(|c| c.borrow_mut().remove(&name)))).unwrap();
    }
}

fn gate(name: &str) -> Arc<Gate> {
    testing::reactors();
    test_gate::create(name, 256, BS as u32)
}

#[test]
fn a_lock_waits_for_older_io_then_holds_back_others_until_dropped() {
    let name = "t_rl_hold";
    let g = gate(name);
    // An older overlapping write is in flight (held by the gate) on reactor 1.
    g.hold(IoType::Write, true);
    let older = submit(1, name, IoType::Write, 0, block(1, 8));
    wait_until("the older write reached the module", || g.parked() == 1);
    let granted = request_lock(0, name, "A", 4, 2);
    not_yet(&granted, "granted while an older overlapping write is in flight");
    g.hold(IoType::Write, false);
    g.release(1);
    assert_eq!(done(&older, "older write").0, IoStatus::Success);
    granted.recv_timeout(WAIT).expect("granted once the older write completed");

    // Others' overlapping I/O waits, from another reactor and from the holder's reactor.
    let before = g.arrivals().len();
    let other_write = submit(1, name, IoType::Write, 5, block(2, 1));
    let other_read = read(0, name, 3, 2);
    wait_until("both overlapping I/Os are queued", || queued(1, name) == 1 && queued(0, name) == 1);
    // Non-overlapping I/O passes on both reactors.
    assert_eq!(done(&submit(1, name, IoType::Write, 20, block(3, 1)), "non-overlapping write").0, IoStatus::Success);
    assert_eq!(done(&read(0, name, 6, 10), "adjacent read").0, IoStatus::Success);
    // The holder's own I/O passes.
    let (st, _, _) = submit_locked(0, name, "A", IoType::Write, 4, block(4, 2));
    assert_eq!(st, IoStatus::Success, "the holder writes inside its range");
    let reached: Vec<_> = g.arrivals()[before..].to_vec();
    assert_eq!(
        reached,
        vec![(IoType::Write, 20, 1), (IoType::Read, 6, 10), (IoType::Write, 4, 2)],
        "nothing overlapping from others reached the module while locked"
    );
    not_yet(&other_write, "the overlapping write completed under the lock");

    unlock(0, "A");
    assert_eq!(done(&other_write, "released write").0, IoStatus::Success);
    let (st, _, got) = done(&other_read, "released read");
    assert_eq!(st, IoStatus::Success);
    assert_eq!(got[..BS], block(1, 8)[3 * BS..4 * BS], "block 3: the older write");
    assert_eq!(got[BS..], block(4, 2)[..BS], "block 4: the holder's write");
    assert_eq!(g.contents(5, 1), block(2, 1), "block 5: the waiting write ran after the holder's");
    assert_eq!((queued(0, name), queued(1, name)), (0, 0));
    forget_channels(name);
    registry::unregister(name, None).unwrap();
}

#[test]
fn overlapping_locks_are_granted_in_order_and_disjoint_ones_at_once() {
    let name = "t_rl_fifo";
    let _g = gate(name);
    request_lock(0, name, "L1", 0, 8).recv_timeout(WAIT).expect("first lock");
    let l2 = request_lock(1, name, "L2", 4, 8);
    let l3 = request_lock(0, name, "L3", 6, 1);
    request_lock(1, name, "L4", 100, 4).recv_timeout(WAIT).expect("a disjoint lock is granted while L1 is held");
    not_yet(&l2, "L2 granted while L1 holds an overlapping range");
    not_yet(&l3, "L3 granted while L1 holds an overlapping range");
    unlock(0, "L1");
    l2.recv_timeout(WAIT).expect("L2 follows L1");
    not_yet(&l3, "L3 overtook L2, which was asked for first");
    unlock(1, "L2");
    l3.recv_timeout(WAIT).expect("L3 follows L2");
    unlock(0, "L3");
    unlock(1, "L4");
    // With every lock gone, I/O flows freely again.
    assert_eq!(done(&submit(1, name, IoType::Write, 6, block(5, 1)), "write after unlock").0, IoStatus::Success);
    forget_channels(name);
    registry::unregister(name, None).unwrap();
}

#[test]
fn rounds_in_a_row_each_wait_for_their_own_older_io() {
    // A second lock asked for while the first one's round still drains: its round must wait
    // for the first to finish (one drain waiter and two parity counters per channel), then
    // for the write submitted between the two requests.
    let name = "t_rl_rounds";
    let g = gate(name);
    g.hold(IoType::Write, true);
    let w1 = submit(1, name, IoType::Write, 0, block(1, 1));
    wait_until("w1 parked", || g.parked() == 1);
    let e1 = request_lock(0, name, "E1", 0, 1);
    barrier();
    let w2 = submit(1, name, IoType::Write, 10, block(2, 1));
    wait_until("w2 parked", || g.parked() == 2);
    let e2 = request_lock(0, name, "E2", 10, 1);
    not_yet(&e1, "E1 granted while the older write to its block is in flight");
    g.release_at(1, Some(0));
    assert_eq!(done(&w1, "w1").0, IoStatus::Success);
    e1.recv_timeout(WAIT).expect("E1 once w1 completed");
    not_yet(&e2, "E2 granted while the older write to its block is in flight");
    g.hold(IoType::Write, false);
    g.release_at(1, Some(10));
    assert_eq!(done(&w2, "w2").0, IoStatus::Success);
    e2.recv_timeout(WAIT).expect("E2 once w2 completed");
    unlock(0, "E1");
    unlock(0, "E2");
    forget_channels(name);
    registry::unregister(name, None).unwrap();
}

#[test]
fn removal_while_locked_fails_waiting_io_and_grants_pending_locks() {
    let name = "t_rl_remove";
    let _g = gate(name);
    request_lock(0, name, "R1", 0, 8).recv_timeout(WAIT).expect("lock");
    let waiting = submit(1, name, IoType::Write, 2, block(1, 1));
    wait_until("the write is queued", || queued(1, name) == 1);
    let pending = request_lock(1, name, "R2", 0, 4);
    not_yet(&pending, "R2 granted while R1 holds the range");
    registry::unregister(name, None).unwrap();
    let (st, errno, _) = done(&waiting, "the queued write");
    assert_eq!((st, errno), (IoStatus::Failed, libc::ENODEV), "the queued write fails: the bdev is gone");
    pending.recv_timeout(WAIT).expect("a pending lock is granted when its bdev goes");
    let (st, errno, _) = submit_locked(1, name, "R2", IoType::Write, 0, block(2, 1));
    assert_eq!((st, errno), (IoStatus::Failed, libc::ENODEV), "and its I/O fails");
    unlock(0, "R1");
    unlock(1, "R2");
    forget_channels(name);
}
