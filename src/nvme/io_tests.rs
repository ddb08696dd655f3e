//! The I/O command set on real reactors against real bdevs (malloc for data, null for
//! geometry too large for memory, the gate bdev to see which bdev I/O a command makes, and a
//! small memory bdev of this file's own with no flush, unmap or write-zeroes that fails
//! reads or writes on demand). Commands are built as a transport would: a 64-byte command
//! and data iovecs on a buffer that lives until the request completes.
//!
//! Every command of a test is submitted on reactor 0 (a channel belongs to its reactor).
//! Bdev completions are never delivered from inside a submission but from the reactor loop,
//! so commands submitted within one `framework::call` are all in flight together: the race
//! tests rely on that, not on timing.

use super::*;
use crate::bdev::modules::{malloc, null};
use crate::bdev::{registry, test_gate, BackendChannel, Bdev, BdevBackend, BdevProps};
use crate::framework::{self, testing};
use crate::nvme::request::RequestDone;
use crate::nvme::reservation::{racqa, rrega, rrela, rtype};
use ferry_nvme::spec::{sct, Command};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Mutex;
use std::time::Duration;

/// How long any one outcome may take before the test fails (instead of hanging).
const WAIT: Duration = Duration::from_secs(20);
const BS: usize = 512;

const HOST_A: HostRef = HostRef { hostid: [0xa; 16], cntlid: 1 };
const HOST_B: HostRef = HostRef { hostid: [0xb; 16], cntlid: 2 };

thread_local! {
    /// This reactor's namespace channels, by bdev name.
    static CHANNELS: RefCell<HashMap<String, Rc<NsChannel>>> = RefCell::new(HashMap::new());
}

/// One command as a transport hands it over.
#[derive(Clone)]
struct Cmd {
    cmd: Command,
    /// Data to the controller, or the buffer for data to the host.
    data: Vec<u8>,
    /// Lengths of the iovecs the buffer is split into (None: one for all of it).
    segments: Option<Vec<usize>>,
    host: HostRef,
    tag: u64,
}

impl Cmd {
    fn new(cmd: Command, data: Vec<u8>) -> Cmd {
        Cmd { cmd, data, segments: None, host: HOST_A, tag: 0 }
    }

    fn from(mut self, host: HostRef) -> Cmd {
        self.host = host;
        self
    }

    fn tag(mut self, tag: u64) -> Cmd {
        self.tag = tag;
        self
    }

    fn segments(mut self, lens: &[usize]) -> Cmd {
        self.segments = Some(lens.to_vec());
        self
    }
}

/// What a finished command reported.
#[derive(Debug)]
#[must_use]
struct Outcome {
    tag: u64,
    status: Status,
    transferred: u64,
    /// The capacity of the request's scratch buffer when it came back.
    scratch: usize,
    /// The request's data segments (address, length).
    iovs: Vec<(usize, usize)>,
    /// The data buffer after the command.
    data: Vec<u8>,
}

impl Outcome {
    #[track_caller]
    fn ok(&self, why: &str) -> &Outcome {
        assert_eq!((self.status.sct, self.status.sc), (0, 0), "{why}: status {:?}", self.status);
        self
    }

    #[track_caller]
    fn is(&self, sct: u8, sc: u8, why: &str) -> &Outcome {
        assert_eq!((self.status.sct, self.status.sc), (sct, sc), "{why}: status {:?}", self.status);
        self
    }

    #[track_caller]
    fn generic(&self, sc: u8, why: &str) -> &Outcome {
        self.is(sct::GENERIC, sc, why)
    }
}

/// Builds the request for `c` and runs it (on a reactor thread): through `execute`, or, with
/// a `write`, as the first of a fused Compare and Write. Outcomes go to `tx`.
fn submit(nc: &Rc<NsChannel>, c: Cmd, write: Option<Cmd>, tx: &Sender<Outcome>) {
    let host = c.host;
    let first = request(c, tx.clone());
    match write {
        None => {
            if let Some(r) = execute(nc, &host, first) {
                r.finish();
            }
        }
        Some(w) => {
            let second = request(w, tx.clone());
            if let Some((a, b)) = execute_compare_and_write(nc, &host, first, second) {
                a.finish();
                b.finish();
            }
        }
    }
}

/// A request for `c` whose completion sends its outcome to `tx`.
fn request(c: Cmd, tx: Sender<Outcome>) -> Box<NvmeRequest> {
    let mut req = NvmeRequest::new();
    req.cmd = c.cmd;
    req.ctx = c.tag;
    let mut buf = c.data.into_boxed_slice();
    let segments = c.segments.unwrap_or_else(|| if buf.is_empty() { Vec::new() } else { vec![buf.len()] });
    assert!(segments.iter().sum::<usize>() <= buf.len(), "segments within the buffer");
    let base = buf.as_mut_ptr();
    let mut at = 0;
    for len in segments {
        // SAFETY: `base + at .. + len` lies inside `buf` (checked above), a heap allocation
        // that moves into the completion callback below and is freed only once the request
        // has completed; nothing else touches it meanwhile.
        unsafe { req.push_iov(base.add(at), len) };
        at += len;
    }
    let held = RefCell::new(Some(buf));
    let done: RequestDone = Rc::new(move |r: Box<NvmeRequest>| {
        let data = held.borrow_mut().take().map(Vec::from).expect("a request completes once");
        let scratch = r.scratch.capacity();
        let iovs = r.iovs().iter().map(|v| (v.iov_base as usize, v.iov_len)).collect();
        let _ =
            tx.send(Outcome { tag: r.ctx, status: r.cpl.status, transferred: r.transferred(), scratch, iovs, data });
    });
    req.set_done(done);
    req
}

/// Waits for `n` outcomes, sorted by tag.
#[track_caller]
fn collect(rx: &Receiver<Outcome>, n: usize) -> Vec<Outcome> {
    let mut out: Vec<Outcome> =
        (0..n).map(|i| rx.recv_timeout(WAIT).unwrap_or_else(|_| panic!("outcome {i} of {n} never came"))).collect();
    out.sort_by_key(|o| o.tag);
    out
}

/// A namespace on a bdev, with the channels the tests made to it.
struct Ns {
    ns: Arc<Namespace>,
    name: String,
}

impl Ns {
    fn malloc(name: &str, blocks: u64) -> Ns {
        testing::reactors();
        malloc::create(name, blocks, BS as u32, None).unwrap();
        Ns::on(name, false)
    }

    fn on(name: &str, readonly: bool) -> Ns {
        testing::reactors();
        let desc = crate::bdev::open(name, !readonly, Box::new(|_, _| {})).unwrap();
        Ns { ns: Arc::new(Namespace::new(1, desc, None, None, None, None)), name: name.to_string() }
    }

    /// This reactor's channel (made on first use; reactor threads only).
    fn channel(ns: &Arc<Namespace>, name: &str) -> Rc<NsChannel> {
        CHANNELS.with(|c| {
            c.borrow_mut()
                .entry(name.to_string())
                .or_insert_with(|| NsChannel::new(ns.clone()).expect("on a reactor"))
                .clone()
        })
    }

    /// Submits every command in one reactor call (all in flight together), fused pairs as
    /// (compare, Some(write)); returns the outcomes sorted by tag.
    #[track_caller]
    fn batch(&self, cmds: Vec<(Cmd, Option<Cmd>)>) -> Vec<Outcome> {
        let n: usize = cmds.iter().map(|(_, w)| 1 + w.is_some() as usize).sum();
        let (tx, rx) = mpsc::channel();
        let (ns, name) = (self.ns.clone(), self.name.clone());
        framework::call(0, move || {
            let nc = Ns::channel(&ns, &name);
            for (c, w) in cmds {
                submit(&nc, c, w, &tx);
            }
        })
        .unwrap();
        collect(&rx, n)
    }

    #[track_caller]
    fn run(&self, c: Cmd) -> Outcome {
        self.batch(vec![(c, None)]).pop().unwrap()
    }

    /// Runs a Compare and Write; (compare's outcome, write's outcome).
    #[track_caller]
    fn caw(&self, cmp: Cmd, write: Cmd) -> (Outcome, Outcome) {
        let mut out = self.batch(vec![(cmp.tag(0), Some(write.tag(1)))]);
        let w = out.pop().unwrap();
        (out.pop().unwrap(), w)
    }

    #[track_caller]
    fn write(&self, lba: u64, data: &[u8]) {
        self.run(Cmd::new(rw(io::WRITE, lba, (data.len() / BS) as u32), data.to_vec())).ok("setup write");
    }

    #[track_caller]
    fn read(&self, lba: u64, blocks: u32) -> Vec<u8> {
        let o = self.run(Cmd::new(rw(io::READ, lba, blocks), vec![0xEE; blocks as usize * BS]));
        o.ok("read back");
        assert_eq!(o.transferred, blocks as u64 * BS as u64, "a read moves its blocks to the host");
        o.data
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        // Channels belong to their reactors: drop them there.
        for r in 0..2 {
            let name = self.name.clone();
            let _ = framework::call(r, move || CHANNELS.with(|c| c.borrow_mut().remove(&name)).map(drop));
        }
    }
}

/// A Read/Write/Compare/Verify/Write Zeroes command: `blocks` from `lba`.
fn rw(opcode: u8, lba: u64, blocks: u32) -> Command {
    let mut c = Command::new(opcode, 1);
    c.set_nsid(1);
    c.set_slba(lba);
    c.set_cdw12(blocks.wrapping_sub(1) & 0xffff);
    c
}

fn fua(mut c: Command) -> Command {
    c.set_cdw12(c.cdw12() | 1 << 30);
    c
}

fn fused(mut c: Command, f: u8) -> Command {
    c.set_fuse(f);
    c
}

fn pattern(seed: u8, blocks: usize) -> Vec<u8> {
    (0..blocks * BS).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// Dataset Management, deallocate (or not), with these (lba, blocks) ranges.
fn dsm(ranges: &[(u64, u32)], deallocate: bool) -> Cmd {
    let mut c = Command::new(io::DATASET_MANAGEMENT, 1);
    c.set_cdw10((ranges.len() as u32).wrapping_sub(1) & 0xff);
    c.set_cdw11(if deallocate { 1 << 2 } else { 1 });
    let mut data = vec![0u8; ranges.len() * 16];
    for (i, (lba, n)) in ranges.iter().enumerate() {
        data[16 * i + 4..16 * i + 8].copy_from_slice(&n.to_le_bytes());
        data[16 * i + 8..16 * i + 16].copy_from_slice(&lba.to_le_bytes());
    }
    Cmd::new(c, data)
}

/// A reservation command with `cdw10` and two keys of data (`len` bytes of them).
fn resv(opcode: u8, cdw10: u32, k1: u64, k2: u64, len: usize) -> Cmd {
    let mut c = Command::new(opcode, 1);
    c.set_cdw10(cdw10);
    let mut data = [k1.to_le_bytes(), k2.to_le_bytes()].concat();
    data.truncate(len);
    Cmd::new(c, data)
}

fn register(action: u8, crkey: u64, nrkey: u64) -> Cmd {
    resv(io::RESERVATION_REGISTER, action as u32, crkey, nrkey, 16)
}

fn acquire(action: u8, t: u8, crkey: u64, prkey: u64) -> Cmd {
    resv(io::RESERVATION_ACQUIRE, action as u32 | (t as u32) << 8, crkey, prkey, 16)
}

fn release(action: u8, t: u8, crkey: u64) -> Cmd {
    resv(io::RESERVATION_RELEASE, action as u32 | (t as u32) << 8, crkey, 0, 8)
}

fn report(dwords: u32, eds: bool) -> Cmd {
    let mut c = Command::new(io::RESERVATION_REPORT, 1);
    c.set_cdw10(dwords - 1);
    c.set_cdw11(eds as u32);
    Cmd::new(c, vec![0xEE; dwords as usize * 4])
}

/// A memory bdev that can only read and write (no flush, unmap or write-zeroes), and fails
/// reads or writes while told to.
struct Plain {
    data: Mutex<Vec<u8>>,
    fail_reads: AtomicBool,
    fail_writes: AtomicBool,
    /// The data segments (address, length) of every read and write that reached it.
    seen: Mutex<Vec<Vec<(usize, usize)>>>,
}

struct PlainBackend(Arc<Plain>);
struct PlainChannel(Arc<Plain>);

impl BackendChannel for PlainChannel {
    fn submit(&self, io: Box<BdevIo>) {
        let p = &self.0;
        let (start, len) = (io.offset_bytes() as usize, io.len_bytes() as usize);
        p.seen.lock().unwrap().push(io.iovs().iter().map(|v| (v.iov_base as usize, v.iov_len)).collect());
        match io.io_type {
            IoType::Read if p.fail_reads.load(Ordering::SeqCst) => io.fail(libc::EIO),
            IoType::Write if p.fail_writes.load(Ordering::SeqCst) => io.fail(libc::EIO),
            IoType::Read => {
                let mut io = io;
                io.copy_to_iovs(&p.data.lock().unwrap()[start..start + len]);
                io.complete(IoStatus::Success);
            }
            IoType::Write => {
                io.copy_from_iovs(&mut p.data.lock().unwrap()[start..start + len]);
                io.complete(IoStatus::Success);
            }
            _ => io.fail(libc::ENOTSUP),
        }
    }
}

impl BdevBackend for PlainBackend {
    fn module(&self) -> &'static str {
        "test_plain"
    }
    fn product_name(&self) -> &'static str {
        "Plain disk"
    }
    fn supports(&self, io_type: IoType) -> bool {
        matches!(io_type, IoType::Read | IoType::Write)
    }
    fn create_channel(&self, _bdev: &Bdev) -> Result<Box<dyn BackendChannel>, BdevError> {
        Ok(Box::new(PlainChannel(self.0.clone())))
    }
    fn config(&self, _bdev: &Bdev) -> Option<(&'static str, Value)> {
        None
    }
}

fn plain(name: &str, blocks: u64) -> Arc<Plain> {
    testing::reactors();
    let p = Arc::new(Plain {
        data: Mutex::new(vec![0x5a; blocks as usize * BS]),
        fail_reads: AtomicBool::new(false),
        fail_writes: AtomicBool::new(false),
        seen: Mutex::new(Vec::new()),
    });
    let props = BdevProps { name: name.to_string(), uuid: None, block_size: BS as u32, num_blocks: blocks };
    registry::register(props, Box::new(PlainBackend(p.clone()))).unwrap();
    p
}

#[test]
fn identify_bits_name_what_is_served() {
    assert_eq!(oncs(), 0xad, "compare, DSM, write zeroes, reservations, verify");
    assert_eq!(fuses(), 1, "compare and write");
}

#[test]
fn write_and_read_round_trip_in_place_across_segments() {
    let t = Ns::malloc("t_nvme_rw", 256);
    let data = pattern(1, 8);
    t.run(Cmd::new(rw(io::WRITE, 16, 8), data.clone()).segments(&[100, 3000, 996])).ok("scattered write");
    assert_eq!(t.read(16, 8), data, "read back");
    let o = t.run(Cmd::new(rw(io::READ, 16, 8), vec![0; 8 * BS]).segments(&[1, 4095]));
    o.ok("scattered read");
    assert_eq!((o.data == data, o.transferred), (true, 4096));
    t.run(Cmd::new(rw(io::READ, 255, 1), vec![0; BS])).ok("the last block");
    let stats = registry::get("t_nvme_rw").unwrap().stats();
    assert_eq!((stats.write.ops.get(), stats.read.ops.get()), (1, 3), "one bdev I/O per command");
}

/// Zero copy: the bdev reads into, and writes from, the request's own segments.
#[test]
fn reads_and_writes_use_the_request_buffers_in_place() {
    let p = plain("t_nvme_zero_copy", 64);
    let t = Ns::on("t_nvme_zero_copy", false);
    let w = t.run(Cmd::new(rw(io::WRITE, 2, 3), pattern(1, 3)).segments(&[512, 1000, 24]));
    w.ok("write");
    let r = t.run(Cmd::new(rw(io::READ, 2, 3), vec![0; 3 * BS]).segments(&[1, 1535]));
    r.ok("read");
    assert_eq!(r.data, pattern(1, 3));
    let seen = p.seen.lock().unwrap();
    assert_eq!(seen.as_slice(), [w.iovs.clone(), r.iovs.clone()], "the bdev got the request's own segments");
}

#[test]
fn fua_write_is_followed_by_a_flush_and_flush_reaches_the_bdev() {
    testing::reactors();
    let gate = test_gate::create("t_nvme_fua", 64, BS as u32);
    let t = Ns::on("t_nvme_fua", false);
    t.run(Cmd::new(rw(io::WRITE, 4, 1), pattern(2, 1))).ok("plain write");
    t.run(Cmd::new(fua(rw(io::WRITE, 5, 2)), pattern(3, 2))).ok("FUA write");
    t.run(Cmd::new(Command::new(io::FLUSH, 1), vec![])).ok("flush");
    assert_eq!(
        gate.arrivals(),
        [(IoType::Write, 4, 1), (IoType::Write, 5, 2), (IoType::Flush, 0, 0), (IoType::Flush, 0, 0)],
        "no flush without FUA; one after the FUA write; one for Flush"
    );
    assert_eq!(gate.contents(5, 2), pattern(3, 2));
    // A bdev with nothing to flush: FUA and Flush succeed without a flush.
    plain("t_nvme_fua_plain", 64);
    let p = Ns::on("t_nvme_fua_plain", false);
    p.run(Cmd::new(fua(rw(io::WRITE, 1, 1)), pattern(4, 1))).ok("FUA write without flush");
    p.run(Cmd::new(Command::new(io::FLUSH, 1), vec![])).ok("flush without flush");
    assert_eq!(p.read(1, 1), pattern(4, 1));
}

#[test]
fn write_zeroes_uses_write_zeroes_unmap_with_deallocate_or_a_zero_buffer() {
    testing::reactors();
    let gate = test_gate::create("t_nvme_wz", 4096, BS as u32);
    let t = Ns::on("t_nvme_wz", false);
    t.write(10, &pattern(5, 4));
    t.run(Cmd::new(rw(io::WRITE_ZEROES, 10, 2), vec![])).ok("write zeroes");
    let mut deac = rw(io::WRITE_ZEROES, 12, 2);
    deac.set_cdw12(deac.cdw12() | 1 << 25);
    t.run(Cmd::new(deac, vec![])).ok("write zeroes, deallocate");
    t.run(Cmd::new(fua(rw(io::WRITE_ZEROES, 20, 1)), vec![])).ok("write zeroes, FUA");
    assert_eq!(
        gate.arrivals()[1..],
        [(IoType::WriteZeroes, 10, 2), (IoType::Unmap, 12, 2), (IoType::WriteZeroes, 20, 1), (IoType::Flush, 0, 0)]
    );
    assert_eq!(t.read(10, 4), vec![0; 4 * BS], "zeroes both ways");
    // A bdev with neither: written from a zeroed buffer, in chunks (65536 blocks = 32 MiB).
    let p = plain("t_nvme_wz_plain", 65536 + 8);
    let t = Ns::on("t_nvme_wz_plain", false);
    t.run(Cmd::new(rw(io::WRITE_ZEROES, 4, 65536), vec![])).ok("the largest write zeroes");
    let data = p.data.lock().unwrap();
    assert!(data[4 * BS..(65536 + 4) * BS].iter().all(|&b| b == 0), "every block zeroed");
    assert!(data[..4 * BS].iter().chain(&data[(65536 + 4) * BS..]).all(|&b| b == 0x5a), "nothing else");
}

#[test]
fn dataset_management_deallocates_checked_ranges() {
    let t = Ns::malloc("t_nvme_dsm", 1024);
    let data = pattern(6, 64);
    t.write(0, &data);
    t.run(dsm(&[(4, 4), (100, 0), (20, 8)], false)).ok("hints only");
    assert_eq!(t.read(0, 64), data, "no deallocate bit: nothing changes");
    t.run(dsm(&[(4, 4), (100, 0), (20, 8)], true)).ok("deallocate two ranges (and an empty one)");
    let got = t.read(0, 64);
    let zeroed = |b: usize| (4..8).contains(&b) || (20..28).contains(&b);
    for b in 0..64 {
        let want = if zeroed(b) { vec![0; BS] } else { data[b * BS..(b + 1) * BS].to_vec() };
        assert_eq!(got[b * BS..(b + 1) * BS], want, "block {b}");
    }
    assert_eq!(registry::get("t_nvme_dsm").unwrap().stats().unmap.ops.get(), 2, "one unmap per range with blocks");
    // The most ranges: 256, each one block.
    let ranges: Vec<(u64, u32)> = (0..256).map(|i| (i * 2, 1)).collect();
    t.run(dsm(&ranges, true)).ok("256 ranges");
    assert_eq!(t.read(1, 1), data[BS..2 * BS], "the blocks between stay");
    assert_eq!(t.read(2, 1), vec![0; BS], "a block of a range deallocated");
    // Hostile: a range past the end refuses the whole command, before any deallocation.
    t.write(0, &data);
    t.run(dsm(&[(0, 4), (1020, 5)], true)).generic(sc::LBA_OUT_OF_RANGE, "a range past the end");
    t.run(dsm(&[(0, 4), (u64::MAX, 2)], true)).generic(sc::LBA_OUT_OF_RANGE, "a range overflowing");
    t.run(dsm(&[(0, 4), (0, u32::MAX)], true)).generic(sc::LBA_OUT_OF_RANGE, "a huge range");
    assert!(t.read(0, 4) == data[..4 * BS], "nothing deallocated");
    let mut short = dsm(&[(0, 4), (8, 4)], true);
    short.data.truncate(24);
    t.run(short).generic(sc::DATA_SGL_LENGTH_INVALID, "NR says two ranges, data holds one and a half");
    let mut c = dsm(&ranges, true);
    c.data.truncate(255 * 16);
    t.run(c).generic(sc::DATA_SGL_LENGTH_INVALID, "256 ranges, data for 255");
    assert!(t.read(0, 4) == data[..4 * BS], "still nothing deallocated");
}

#[test]
fn compare_matches_or_fails_with_compare_failure() {
    let t = Ns::malloc("t_nvme_cmp", 256);
    let data = pattern(7, 4);
    t.write(8, &data);
    t.run(Cmd::new(rw(io::COMPARE, 8, 4), data.clone()).segments(&[7, 2041])).ok("same data");
    let mut other = data.clone();
    other[1500] ^= 1;
    t.run(Cmd::new(rw(io::COMPARE, 8, 4), other)).is(sct::MEDIA, msc::COMPARE_FAILURE, "one bit differs");
    t.run(Cmd::new(rw(io::COMPARE, 8, 4), data[..3 * BS].to_vec()))
        .generic(sc::DATA_SGL_LENGTH_INVALID, "three blocks of data for four");
    t.run(Cmd::new(rw(io::COMPARE, 254, 4), data)).generic(sc::LBA_OUT_OF_RANGE, "past the end");
}

#[test]
fn compare_and_write_writes_only_on_a_match() {
    let t = Ns::malloc("t_nvme_caw", 256);
    let (x, y, z) = (pattern(1, 2), pattern(2, 2), pattern(3, 2));
    t.write(10, &x);
    let cmp = |d: &[u8]| Cmd::new(fused(rw(io::COMPARE, 10, 2), fuse::FIRST), d.to_vec());
    let write = |d: &[u8]| Cmd::new(fused(rw(io::WRITE, 10, 2), fuse::SECOND), d.to_vec());
    let (c, w) = t.caw(cmp(&x), write(&y));
    c.ok("compare matched");
    w.ok("write done");
    assert_eq!(t.read(10, 2), y);
    let (c, w) = t.caw(cmp(&x), write(&z));
    c.is(sct::MEDIA, msc::COMPARE_FAILURE, "stale data");
    w.generic(sc::ABORTED_FAILED_FUSED, "the write is aborted");
    assert_eq!(t.read(10, 2), y, "nothing written on a mismatch");
    // Refused pairs: both complete, the other one as failed fused.
    let (c, w) = t.caw(cmp(&y), Cmd::new(fused(rw(io::WRITE, 11, 2), fuse::SECOND), z.clone()));
    w.generic(sc::INVALID_FIELD, "different ranges");
    c.generic(sc::ABORTED_FAILED_FUSED, "its compare");
    let (c, w) = t.caw(Cmd::new(fused(rw(io::COMPARE, 255, 2), fuse::FIRST), y.clone()), write(&z));
    w.generic(sc::INVALID_FIELD, "ranges differ");
    c.generic(sc::ABORTED_FAILED_FUSED, "its compare");
    let beyond = |op, f| Cmd::new(fused(rw(op, 255, 2), f), y.clone());
    let (c, w) = t.caw(beyond(io::COMPARE, fuse::FIRST), beyond(io::WRITE, fuse::SECOND));
    c.generic(sc::LBA_OUT_OF_RANGE, "past the end");
    w.generic(sc::ABORTED_FAILED_FUSED, "its write");
    let (c, w) = t.caw(cmp(&y), write(&z[..BS]));
    w.generic(sc::DATA_SGL_LENGTH_INVALID, "short write data");
    c.generic(sc::ABORTED_FAILED_FUSED, "its compare");
    let (c, w) = t.caw(Cmd::new(rw(io::COMPARE, 10, 2), y.clone()), write(&z));
    c.generic(sc::INVALID_FIELD, "the compare is not marked first");
    w.generic(sc::ABORTED_FAILED_FUSED, "its write");
    assert_eq!(t.read(10, 2), y, "no refused pair wrote");
    // A lone fused command through execute is missing its partner.
    t.run(write(&z)).generic(sc::ABORTED_MISSING_FUSED, "second without a first");
    assert_eq!(t.read(10, 2), y);
}

#[test]
fn compare_and_write_with_fua_flushes() {
    testing::reactors();
    let gate = test_gate::create("t_nvme_caw_fua", 64, BS as u32);
    let t = Ns::on("t_nvme_caw_fua", false);
    let (x, y) = (pattern(1, 1), pattern(2, 1));
    t.write(3, &x);
    let (c, w) = t.caw(
        Cmd::new(fused(rw(io::COMPARE, 3, 1), fuse::FIRST), x),
        Cmd::new(fua(fused(rw(io::WRITE, 3, 1), fuse::SECOND)), y.clone()),
    );
    c.ok("compare");
    w.ok("write");
    assert_eq!(gate.arrivals()[1..], [(IoType::Read, 3, 1), (IoType::Write, 3, 1), (IoType::Flush, 0, 0)]);
    assert_eq!(gate.contents(3, 1), y);
}

/// Two Compare and Writes of one block at once go one after the other (the range lock,
/// granted in order): the first compares z and writes x, the second then finds x, not z.
/// Without the lock both would read z before either wrote, and both would "match".
#[test]
fn racing_compare_and_writes_on_one_block_serialise() {
    let t = Ns::malloc("t_nvme_caw_race", 64);
    let (x, y, z) = (pattern(1, 1), pattern(2, 1), pattern(3, 1));
    t.write(5, &z);
    let pair = |tag: u64, new: &[u8], host: HostRef| {
        (
            Cmd::new(fused(rw(io::COMPARE, 5, 1), fuse::FIRST), z.clone()).tag(tag).from(host),
            Some(Cmd::new(fused(rw(io::WRITE, 5, 1), fuse::SECOND), new.to_vec()).tag(tag + 1).from(host)),
        )
    };
    let out = t.batch(vec![pair(0, &x, HOST_A), pair(2, &y, HOST_B)]);
    out[0].ok("first compare");
    out[1].ok("first write");
    out[2].is(sct::MEDIA, msc::COMPARE_FAILURE, "the second compares against the first's data");
    out[3].generic(sc::ABORTED_FAILED_FUSED, "second write");
    assert_eq!(t.read(5, 1), x);
}

#[test]
fn verify_reads_every_block_and_reports_read_errors() {
    let t = Ns::malloc("t_nvme_verify", 8192);
    let before = registry::get("t_nvme_verify").unwrap().stats().read.bytes.get();
    let o = t.run(Cmd::new(rw(io::VERIFY, 0, 5000), vec![]));
    o.ok("verify 5000 blocks");
    assert_eq!(o.scratch, 0, "the 1 MiB chunk buffer is not kept with the request");
    let read = registry::get("t_nvme_verify").unwrap().stats().read.bytes.get() - before;
    assert_eq!(read, 5000 * BS as u64, "every block read (in chunks)");
    t.run(Cmd::new(rw(io::VERIFY, 8000, 193), vec![])).generic(sc::LBA_OUT_OF_RANGE, "past the end");
    let p = plain("t_nvme_verify_bad", 64);
    let t = Ns::on("t_nvme_verify_bad", false);
    t.run(Cmd::new(rw(io::VERIFY, 0, 64), vec![])).ok("readable");
    p.fail_reads.store(true, Ordering::SeqCst);
    t.run(Cmd::new(rw(io::VERIFY, 0, 64), vec![])).is(sct::MEDIA, msc::UNRECOVERED_READ_ERROR, "unreadable");
}

#[test]
fn bdev_errors_become_media_errors() {
    let p = plain("t_nvme_errors", 64);
    let t = Ns::on("t_nvme_errors", false);
    p.fail_reads.store(true, Ordering::SeqCst);
    t.run(Cmd::new(rw(io::READ, 0, 1), vec![0; BS])).is(sct::MEDIA, msc::UNRECOVERED_READ_ERROR, "read");
    t.run(Cmd::new(rw(io::COMPARE, 0, 1), vec![0; BS])).is(sct::MEDIA, msc::UNRECOVERED_READ_ERROR, "compare");
    let (c, w) = t.caw(
        Cmd::new(fused(rw(io::COMPARE, 0, 1), fuse::FIRST), vec![0x5a; BS]),
        Cmd::new(fused(rw(io::WRITE, 0, 1), fuse::SECOND), vec![1; BS]),
    );
    c.is(sct::MEDIA, msc::UNRECOVERED_READ_ERROR, "compare of a pair");
    w.generic(sc::ABORTED_FAILED_FUSED, "its write");
    p.fail_reads.store(false, Ordering::SeqCst);
    p.fail_writes.store(true, Ordering::SeqCst);
    t.run(Cmd::new(rw(io::WRITE, 0, 1), vec![1; BS])).is(sct::MEDIA, msc::WRITE_FAULT, "write");
    t.run(Cmd::new(rw(io::WRITE_ZEROES, 0, 1), vec![])).is(sct::MEDIA, msc::WRITE_FAULT, "write zeroes");
    let (c, w) = t.caw(
        Cmd::new(fused(rw(io::COMPARE, 0, 1), fuse::FIRST), vec![0x5a; BS]),
        Cmd::new(fused(rw(io::WRITE, 0, 1), fuse::SECOND), vec![1; BS]),
    );
    c.ok("the compare matched");
    w.is(sct::MEDIA, msc::WRITE_FAULT, "the write of a pair");
    p.fail_writes.store(false, Ordering::SeqCst);
    assert_eq!(t.read(0, 1), vec![0x5a; BS], "nothing written");
}

#[test]
fn hostile_commands_get_their_status() {
    let t = Ns::malloc("t_nvme_hostile", 256);
    let read = |lba, n: u32, len| Cmd::new(rw(io::READ, lba, n), vec![0; len]);
    let write = |lba, n: u32, len| Cmd::new(rw(io::WRITE, lba, n), vec![1; len]);
    t.run(read(255, 2, 2 * BS)).generic(sc::LBA_OUT_OF_RANGE, "read past the end");
    t.run(read(256, 1, BS)).generic(sc::LBA_OUT_OF_RANGE, "read at the end");
    t.run(read(u64::MAX, 2, 2 * BS)).generic(sc::LBA_OUT_OF_RANGE, "lba overflowing");
    t.run(write(250, 7, 7 * BS)).generic(sc::LBA_OUT_OF_RANGE, "write past the end");
    t.run(Cmd::new(rw(io::WRITE_ZEROES, 200, 57), vec![])).generic(sc::LBA_OUT_OF_RANGE, "zeroes past the end");
    t.run(read(0, 2, BS)).generic(sc::DATA_SGL_LENGTH_INVALID, "read buffer short");
    t.run(read(0, 1, 2 * BS)).generic(sc::DATA_SGL_LENGTH_INVALID, "read buffer long");
    t.run(read(0, 1, 0)).generic(sc::DATA_SGL_LENGTH_INVALID, "no buffer");
    t.run(write(0, 4, 4 * BS - 1)).generic(sc::DATA_SGL_LENGTH_INVALID, "write data short");
    for opcode in [io::WRITE_UNCORRECTABLE, io::COPY, 0x03, 0x7f, 0x99, 0xff] {
        t.run(Cmd::new(Command::new(opcode, 1), vec![0; BS])).generic(sc::INVALID_OPCODE, "unknown opcode");
    }
    assert_eq!(t.read(0, 4), vec![0; 4 * BS], "no refused write wrote");
    // Reservation data too short.
    t.run(resv(io::RESERVATION_REGISTER, 0, 0, 1, 15)).generic(sc::DATA_SGL_LENGTH_INVALID, "register, 15 bytes");
    t.run(resv(io::RESERVATION_ACQUIRE, 1 << 8, 0, 1, 8)).generic(sc::DATA_SGL_LENGTH_INVALID, "acquire, 8 bytes");
    t.run(resv(io::RESERVATION_RELEASE, 0, 0, 0, 4)).generic(sc::DATA_SGL_LENGTH_INVALID, "release, 4 bytes");
    let mut r = report(16, true);
    r.data.truncate(60);
    t.run(r).generic(sc::DATA_SGL_LENGTH_INVALID, "report buffer shorter than NUMD");
    let mut huge = report(1, true);
    huge.cmd.set_cdw10(u32::MAX);
    t.run(huge).generic(sc::DATA_SGL_LENGTH_INVALID, "NUMD of 2^32 dwords");
    assert!(t.ns.reservations.snapshot().2.is_empty(), "nothing registered");

    // NLB beyond the largest transfer (32 MiB): 8193 blocks of 4 KiB, on a bdev big enough.
    null::create("t_nvme_hostile_big", 1 << 20, 4096, None).unwrap();
    let big = Ns::on("t_nvme_hostile_big", false);
    big.run(Cmd::new(rw(io::READ, 0, 8193), vec![0; 4096])).generic(sc::INVALID_FIELD, "read beyond MDTS");
    big.run(Cmd::new(rw(io::WRITE, 0, 8193), vec![0; 4096])).generic(sc::INVALID_FIELD, "write beyond MDTS");
    big.run(Cmd::new(rw(io::COMPARE, 0, 8193), vec![0; 4096])).generic(sc::INVALID_FIELD, "compare beyond MDTS");
    big.run(Cmd::new(rw(io::READ, 0, 8192), vec![0; 8192 * 4096])).ok("read of exactly 32 MiB");
}

#[test]
fn read_only_namespace_refuses_writes() {
    testing::reactors();
    malloc::create("t_nvme_ro", 64, BS as u32, None).unwrap();
    let t = Ns::on("t_nvme_ro", true);
    assert!(t.ns.read_only());
    t.run(Cmd::new(rw(io::WRITE, 0, 1), vec![1; BS])).generic(sc::NS_WRITE_PROTECTED, "write");
    t.run(Cmd::new(rw(io::WRITE_ZEROES, 0, 1), vec![])).generic(sc::NS_WRITE_PROTECTED, "write zeroes");
    t.run(dsm(&[(0, 1)], true)).generic(sc::NS_WRITE_PROTECTED, "deallocate");
    let (c, w) = t.caw(
        Cmd::new(fused(rw(io::COMPARE, 0, 1), fuse::FIRST), vec![0; BS]),
        Cmd::new(fused(rw(io::WRITE, 0, 1), fuse::SECOND), vec![1; BS]),
    );
    w.generic(sc::NS_WRITE_PROTECTED, "compare and write");
    c.generic(sc::ABORTED_FAILED_FUSED, "its compare");
    assert_eq!(t.read(0, 1), vec![0; BS], "reads pass");
    t.run(Cmd::new(rw(io::COMPARE, 0, 1), vec![0; BS])).ok("compare passes");
    t.run(Cmd::new(Command::new(io::FLUSH, 1), vec![])).ok("flush passes");
    t.run(dsm(&[(0, 1)], false)).ok("hints without deallocate pass");
}

/// Two hosts on one namespace: A registers and takes Write Exclusive; B (registered or not)
/// may read, but not write, until B preempts A; then B releases; the report shows each step.
#[test]
fn reservations_between_two_hosts() {
    let t = Ns::malloc("t_nvme_resv", 64);
    let (a, b) = (HOST_A, HOST_B);
    let data = pattern(9, 1);
    t.run(register(rrega::REGISTER, 0, 0xaaaa).from(a)).ok("A registers");
    t.run(acquire(racqa::ACQUIRE, rtype::WRITE_EXCLUSIVE, 0xaaaa, 0).from(a)).ok("A acquires write exclusive");
    let write = |host| Cmd::new(rw(io::WRITE, 1, 1), data.clone()).from(host);
    t.run(write(a)).ok("the holder writes");
    t.run(write(b)).generic(sc::RESERVATION_CONFLICT, "B, not registered, may not write");
    t.run(Cmd::new(rw(io::WRITE_ZEROES, 1, 1), vec![]).from(b)).generic(sc::RESERVATION_CONFLICT, "nor zero");
    t.run(dsm(&[(1, 1)], true).from(b)).generic(sc::RESERVATION_CONFLICT, "nor deallocate");
    t.run(Cmd::new(Command::new(io::FLUSH, 1), vec![]).from(b)).generic(sc::RESERVATION_CONFLICT, "nor flush");
    let (c, w) = t.caw(
        Cmd::new(fused(rw(io::COMPARE, 1, 1), fuse::FIRST), data.clone()).from(b),
        Cmd::new(fused(rw(io::WRITE, 1, 1), fuse::SECOND), vec![0; BS]).from(b),
    );
    w.generic(sc::RESERVATION_CONFLICT, "nor compare and write");
    c.generic(sc::ABORTED_FAILED_FUSED, "its compare");
    let o = t.run(Cmd::new(rw(io::READ, 1, 1), vec![0; BS]).from(b));
    o.ok("B reads");
    assert_eq!(o.data, data);
    t.run(Cmd::new(rw(io::COMPARE, 1, 1), data.clone()).from(b)).ok("B compares");
    t.run(Cmd::new(rw(io::VERIFY, 1, 1), vec![]).from(b)).ok("B verifies");
    t.run(acquire(racqa::ACQUIRE, rtype::WRITE_EXCLUSIVE, 0xbbbb, 0).from(b))
        .generic(sc::RESERVATION_CONFLICT, "B, not registered, cannot acquire");
    t.run(register(rrega::REGISTER, 0, 0xbbbb).from(b)).ok("B registers");
    t.run(write(b)).generic(sc::RESERVATION_CONFLICT, "a registrant that does not hold it may not write");
    t.run(acquire(racqa::ACQUIRE, rtype::WRITE_EXCLUSIVE, 0xbbbb, 0).from(b))
        .generic(sc::RESERVATION_CONFLICT, "held by A");

    // The report, extended format: generation 2, write exclusive, A holds.
    let o = t.run(report(64, true).from(b));
    o.ok("report");
    let d = &o.data;
    assert_eq!(u32::from_le_bytes(d[0..4].try_into().unwrap()), 2, "GEN: two registrations");
    assert_eq!((d[4], u16::from_le_bytes([d[5], d[6]])), (rtype::WRITE_EXCLUSIVE, 2), "RTYPE, REGCTL");
    let entry = |i: usize| &d[64 + 64 * i..128 + 64 * i];
    assert_eq!((entry(0)[2], u64::from_le_bytes(entry(0)[8..16].try_into().unwrap())), (1, 0xaaaa));
    assert_eq!(&entry(0)[16..32], &a.hostid, "A's 128-bit host id");
    assert_eq!((entry(1)[2], &entry(1)[16..32]), (0, &b.hostid[..]), "B registered, not holding");
    assert_eq!(&d[192..], &[0xEE; 64][..], "nothing past the structure");
    t.run(report(64, false).from(b)).generic(sc::HOSTID_INCONSISTENT, "128-bit host ids need EDS");

    // B preempts A: A's registration goes, B holds exclusive access.
    t.run(acquire(racqa::PREEMPT, rtype::EXCLUSIVE_ACCESS, 0xbbbb, 0xaaaa).from(b)).ok("B preempts A");
    t.run(write(b)).ok("B writes now");
    t.run(Cmd::new(rw(io::READ, 1, 1), vec![0; BS]).from(a)).generic(sc::RESERVATION_CONFLICT, "A may not read");
    t.run(acquire(racqa::ACQUIRE, rtype::WRITE_EXCLUSIVE, 0xaaaa, 0).from(a))
        .generic(sc::RESERVATION_CONFLICT, "A is no longer registered");
    let o = t.run(report(32, true).from(a));
    o.ok("report by anyone");
    assert_eq!((o.data[0], o.data[4], o.data[5]), (3, rtype::EXCLUSIVE_ACCESS, 1), "GEN 3, B alone");
    assert_eq!((o.data[64 + 2], &o.data[64 + 16..64 + 32]), (1, &b.hostid[..]));

    // Release by B: everyone may write again.
    t.run(release(rrela::RELEASE, rtype::WRITE_EXCLUSIVE, 0xbbbb).from(b))
        .generic(sc::INVALID_FIELD, "release with another type");
    t.run(release(rrela::RELEASE, rtype::EXCLUSIVE_ACCESS, 0xbbbb).from(b)).ok("B releases");
    t.run(write(a)).ok("A writes again");
    // Clear drops every registration.
    t.run(register(rrega::REGISTER, 0, 0xaaaa).from(a)).ok("A registers again");
    t.run(release(rrela::CLEAR, 0, 0xaaaa).from(a)).ok("A clears");
    let o = t.run(report(16, true).from(a));
    o.ok("report after clear");
    assert_eq!((o.data[0], o.data[4], o.data[5]), (5, 0, 0), "no reservation, no registrants");
    // Preempt and abort, with the controllers of one host sharing its registration.
    let a2 = HostRef { hostid: a.hostid, cntlid: 7 };
    t.run(register(rrega::REGISTER, 0, 0x1).from(a)).ok("A registers");
    t.run(register(rrega::REGISTER, 0, 0x2).from(b)).ok("B registers");
    t.run(acquire(racqa::ACQUIRE, rtype::EXCLUSIVE_ACCESS_RO, 0x1, 0).from(a2)).ok("A, through another controller");
    t.run(write(b)).ok("registrants only: B writes");
    t.run(acquire(racqa::PREEMPT_AND_ABORT, rtype::EXCLUSIVE_ACCESS, 0x2, 0x1).from(b)).ok("B preempts and aborts");
    t.run(write(a2)).generic(sc::RESERVATION_CONFLICT, "A's other controller is preempted too");
}
