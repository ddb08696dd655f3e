//! A bdev for tests whose completions the test controls: a memory disk that records every
//! I/O reaching it and can hold reads or writes (parked on their reactor) until released.
//! Tests use it to keep an I/O in flight for as long as they need, without timing.

use super::{registry, BackendChannel, Bdev, BdevBackend, BdevError, BdevIo, BdevProps, IoStatus, IoType};
use crate::framework;
use serde_json::Value;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the test sees and steers of one gated bdev.
pub(crate) struct Gate {
    id: u64,
    block_size: usize,
    data: Mutex<Vec<u8>>,
    hold_reads: AtomicBool,
    hold_writes: AtomicBool,
    parked: AtomicUsize,
    arrivals: Mutex<Vec<(IoType, u64, u64)>>,
    /// Whether it supports Flush (a device with a volatile cache).
    flush: bool,
}

thread_local! {
    /// I/O held on this reactor, with the id of their gate.
    static PARKED: RefCell<Vec<(u64, Box<BdevIo>)>> = const { RefCell::new(Vec::new()) };
}

impl Gate {
    /// Holds (or stops holding) reads or writes that arrive from now on.
    pub(crate) fn hold(&self, io_type: IoType, on: bool) {
        match io_type {
            IoType::Read => self.hold_reads.store(on, Ordering::SeqCst),
            IoType::Write => self.hold_writes.store(on, Ordering::SeqCst),
            other => panic!("the gate holds reads and writes, not {other:?}"),
        }
    }

    /// I/O held right now.
    pub(crate) fn parked(&self) -> usize {
        self.parked.load(Ordering::SeqCst)
    }

    /// Every I/O that reached the module so far: (type, offset, blocks), in arrival order.
    pub(crate) fn arrivals(&self) -> Vec<(IoType, u64, u64)> {
        self.arrivals.lock().unwrap().clone()
    }

    /// Completes (after doing) every I/O held on `reactor`.
    pub(crate) fn release(self: &Arc<Self>, reactor: usize) {
        self.release_at(reactor, None);
    }

    /// Completes the I/O held on `reactor` that start at `lba` (all of them for None).
    pub(crate) fn release_at(self: &Arc<Self>, reactor: usize, lba: Option<u64>) {
        let gate = self.clone();
        framework::call(reactor, move || {
            let mine: Vec<Box<BdevIo>> = PARKED.with(|p| {
                let mut p = p.borrow_mut();
                let (mine, rest): (Vec<_>, Vec<_>) =
                    p.drain(..).partition(|(id, io)| *id == gate.id && lba.is_none_or(|l| l == io.offset_blocks));
                *p = rest;
                mine.into_iter().map(|(_, io)| io).collect()
            });
            for io in mine {
                gate.parked.fetch_sub(1, Ordering::SeqCst);
                gate.perform(io);
            }
        })
        .expect("reactor answers");
    }

    fn perform(&self, mut io: Box<BdevIo>) {
        let (start, len) = (io.offset_blocks as usize * self.block_size, io.num_blocks as usize * self.block_size);
        let mut data = self.data.lock().unwrap();
        match io.io_type {
            IoType::Read => io.copy_to_iovs(&data[start..start + len]),
            IoType::Write => io.copy_from_iovs(&mut data[start..start + len]),
            IoType::Unmap | IoType::WriteZeroes => data[start..start + len].fill(0),
            IoType::Flush | IoType::Reset => {}
        }
        drop(data);
        io.complete(IoStatus::Success);
    }

    /// The bdev's contents at `lba`, `blocks` long.
    pub(crate) fn contents(&self, lba: u64, blocks: u64) -> Vec<u8> {
        let (start, len) = (lba as usize * self.block_size, blocks as usize * self.block_size);
        self.data.lock().unwrap()[start..start + len].to_vec()
    }
}

struct GateBackend(Arc<Gate>);

struct GateChannel(Arc<Gate>);

impl BackendChannel for GateChannel {
    fn submit(&self, io: Box<BdevIo>) {
        let gate = &self.0;
        gate.arrivals.lock().unwrap().push((io.io_type, io.offset_blocks, io.num_blocks));
        let hold = match io.io_type {
            IoType::Read => gate.hold_reads.load(Ordering::SeqCst),
            IoType::Write => gate.hold_writes.load(Ordering::SeqCst),
            _ => false,
        };
        if hold {
            gate.parked.fetch_add(1, Ordering::SeqCst);
            PARKED.with(|p| p.borrow_mut().push((gate.id, io)));
        } else {
            gate.perform(io);
        }
    }
}

impl BdevBackend for GateBackend {
    fn module(&self) -> &'static str {
        "test_gate"
    }

    fn product_name(&self) -> &'static str {
        "Gate disk"
    }

    fn supports(&self, io_type: IoType) -> bool {
        io_type != IoType::Flush || self.0.flush
    }

    fn create_channel(&self, _bdev: &Bdev) -> Result<Box<dyn BackendChannel>, BdevError> {
        Ok(Box::new(GateChannel(self.0.clone())))
    }

    fn config(&self, _bdev: &Bdev) -> Option<(&'static str, Value)> {
        None
    }
}

/// Registers a gated memory bdev of `blocks` x `block_size`.
pub(crate) fn create(name: &str, blocks: u64, block_size: u32) -> Arc<Gate> {
    create_with(name, blocks, block_size, true)
}

/// As [`create`], supporting Flush or not.
pub(crate) fn create_with(name: &str, blocks: u64, block_size: u32, flush: bool) -> Arc<Gate> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let gate = Arc::new(Gate {
        id: NEXT.fetch_add(1, Ordering::Relaxed),
        block_size: block_size as usize,
        data: Mutex::new(vec![0; blocks as usize * block_size as usize]),
        hold_reads: AtomicBool::new(false),
        hold_writes: AtomicBool::new(false),
        parked: AtomicUsize::new(0),
        arrivals: Mutex::new(Vec::new()),
        flush,
    });
    let props = BdevProps { name: name.to_string(), uuid: None, block_size, num_blocks: blocks };
    registry::register(props, Box::new(GateBackend(gate.clone()))).expect("register the gate bdev");
    gate
}

/// Waits (up to 10 s) for `cond`, an observable event; panics with `what` otherwise.
#[track_caller]
pub(crate) fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}
