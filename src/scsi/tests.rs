//! Tests of a logical unit as a whole: commands go through [`lun::execute`] (or
//! [`target::dispatch`]) on a real reactor, against a real bdev (malloc for data, null for
//! geometry that would not fit in memory), and come back with their status, sense data,
//! residual and data as a transport would see them. The builders behind the management
//! commands have their own unit tests; here it is the dispatch, the block commands' bdev I/O
//! sequences, unit attentions, reservations and task management.
//!
//! Every command of a test runs on reactor 0 (channel state is per reactor thread). Bdev
//! completions are never delivered from inside a submission but from the reactor loop, so
//! every block command submitted within one `framework::call` is still in flight when the
//! call's closure ends: that is what the task management tests rely on, not timing.

use super::cdb::{be16, be32, op};
use super::lun::{self, LunChannel, ScsiLun};
use super::sense::{asc, key, status};
use super::target::{self, ScsiTarget};
use super::task::{DataDir, Residual, ScsiTask, TaskDone};
use super::tmf::{self, TmfFunction, TmfInProgress};
use super::Nexus;
use crate::bdev::modules::{malloc, null};
use crate::framework::{self, testing};
use crate::test_rng::Rng;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long any one outcome may take before the test fails (instead of hanging).
const WAIT: Duration = Duration::from_secs(20);
/// Block size of the test units.
const BS: usize = 512;
/// Blocks of the malloc units (2 MiB: two WRITE SAME chunks).
const BLOCKS: u64 = 4096;

thread_local! {
    /// The LUN channels made on this reactor, by (bdev, initiator): a channel belongs to the
    /// reactor thread that made it, so tests keep theirs here and reuse them.
    static CHANNELS: RefCell<HashMap<(String, String), Rc<LunChannel>>> = RefCell::new(HashMap::new());
}

/// This reactor's channel to `lun` for `nexus`, made on first use (reactor threads only).
fn channel(lun: &Arc<ScsiLun>, nexus: &Arc<Nexus>) -> Rc<LunChannel> {
    CHANNELS.with(|c| {
        c.borrow_mut()
            .entry((lun.bdev_name().to_string(), nexus.initiator.clone()))
            .or_insert_with(|| lun.open_channel(nexus.clone()).expect("on a reactor"))
            .clone()
    })
}

/// An I_T nexus for initiator `name` on target port 1.
fn nexus(name: &str) -> Arc<Nexus> {
    Arc::new(Nexus { initiator: format!("iqn.2024-01.io.ferry.test:{name}"), target_port: 1 })
}

/// One command as a transport would hand it over.
#[derive(Clone)]
struct Cmd {
    cdb: Vec<u8>,
    dir: DataDir,
    /// The data buffer: data-out contents, or the data-in buffer (its contents are what came
    /// back in [`Outcome::data`]).
    buf: Vec<u8>,
    /// Lengths of the iovecs the buffer is split into (None: one iovec for all of it).
    segments: Option<Vec<usize>>,
    tag: u64,
    /// Counted up when the task finishes (on the reactor, before the outcome is sent).
    finished: Option<Arc<AtomicUsize>>,
    /// The transport reports residual overflow (iSCSI): `ScsiTask::overflow_allowed`.
    overflow: bool,
}

impl Cmd {
    fn new(cdb: &[u8], dir: DataDir, buf: Vec<u8>) -> Cmd {
        Cmd { cdb: cdb.to_vec(), dir, buf, segments: None, tag: 0, finished: None, overflow: false }
    }

    /// A command without data.
    fn none(cdb: &[u8]) -> Cmd {
        Cmd::new(cdb, DataDir::None, Vec::new())
    }

    /// A data-in command with a `len`-byte buffer.
    fn din(cdb: &[u8], len: usize) -> Cmd {
        Cmd::new(cdb, DataDir::FromDevice, vec![0xEE; len])
    }

    /// A data-out command sending `data`.
    fn dout(cdb: &[u8], data: &[u8]) -> Cmd {
        Cmd::new(cdb, DataDir::ToDevice, data.to_vec())
    }

    fn tag(mut self, tag: u64) -> Cmd {
        self.tag = tag;
        self
    }

    fn segments(mut self, lens: &[usize]) -> Cmd {
        self.segments = Some(lens.to_vec());
        self
    }

    /// As iSCSI sends it: the buffer is the Expected Data Transfer Length, overflow reported.
    fn iscsi(mut self) -> Cmd {
        self.overflow = true;
        self
    }

    fn counted(mut self, counter: &Arc<AtomicUsize>) -> Cmd {
        self.finished = Some(counter.clone());
        self
    }
}

/// What a finished command reported (must be looked at: a test that drops it checks nothing).
#[derive(Debug, Clone)]
#[must_use]
struct Outcome {
    tag: u64,
    status: u8,
    sense: Vec<u8>,
    residual: u64,
    transferred: u64,
    /// The residual with iSCSI's overflow/underflow distinction.
    kind: Residual,
    aborted: bool,
    /// The data buffer after the command.
    data: Vec<u8>,
}

impl Outcome {
    fn of(t: &ScsiTask, data: Vec<u8>) -> Outcome {
        Outcome {
            tag: t.tag,
            status: t.status,
            sense: t.sense().to_vec(),
            residual: t.residual(),
            transferred: t.transferred(),
            kind: t.residual_kind(),
            aborted: t.aborted,
            data,
        }
    }

    /// Asserts GOOD status and no sense data.
    #[track_caller]
    fn good(&self, why: &str) -> &Outcome {
        assert_eq!(self.status, status::GOOD, "{why}: status (sense {:02x?})", self.sense);
        assert!(self.sense.is_empty(), "{why}: no sense data with GOOD");
        assert!(!self.aborted, "{why}: not aborted");
        self
    }

    /// Asserts CHECK CONDITION with fixed-format sense `key` / `code`.
    #[track_caller]
    fn check(&self, sense_key: u8, code: asc::Code, why: &str) -> &Outcome {
        assert_eq!(self.status, status::CHECK_CONDITION, "{why}: status");
        assert_eq!(self.sense.len(), 18, "{why}: fixed-format sense");
        assert_eq!(self.sense[0] & 0x7F, 0x70, "{why}: response code");
        assert_eq!(self.sense[2] & 0x0F, sense_key, "{why}: sense key");
        assert_eq!((self.sense[12], self.sense[13]), code, "{why}: ASC/ASCQ");
        self
    }

    /// Asserts ILLEGAL REQUEST / INVALID FIELD IN CDB pointing at `byte` (and `bit`).
    #[track_caller]
    fn invalid_cdb(&self, byte: u16, bit: Option<u8>, why: &str) -> &Outcome {
        self.check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB, why).field(true, byte, bit, why)
    }

    /// Asserts the sense-key-specific field pointer: CDB (`cdb`) or parameter list, `byte`, `bit`.
    #[track_caller]
    fn field(&self, cdb: bool, byte: u16, bit: Option<u8>, why: &str) -> &Outcome {
        let expect = 0x80 | if cdb { 0x40 } else { 0 } | bit.map_or(0, |b| 0x08 | b);
        assert_eq!(self.sense[15], expect, "{why}: SKSV, C/D, BPV and bit pointer");
        assert_eq!(u16::from_be_bytes([self.sense[16], self.sense[17]]), byte, "{why}: field pointer");
        self
    }

    /// Asserts there is no field pointer (SKSV clear).
    #[track_caller]
    fn no_field(&self, why: &str) -> &Outcome {
        assert_eq!(self.sense[15] & 0x80, 0, "{why}: no field pointer");
        self
    }

    /// Asserts the INFORMATION field is valid and holds `info`.
    #[track_caller]
    fn information(&self, info: u32, why: &str) -> &Outcome {
        assert_eq!(self.sense[0] & 0x80, 0x80, "{why}: VALID");
        assert_eq!(u32::from_be_bytes(self.sense[3..7].try_into().unwrap()), info, "{why}: INFORMATION");
        self
    }

    /// Asserts what was moved and what was left over.
    #[track_caller]
    fn moved(&self, transferred: u64, residual: u64, why: &str) -> &Outcome {
        assert_eq!((self.transferred, self.residual), (transferred, residual), "{why}: transferred, residual");
        self
    }

    /// Asserts the iSCSI residual (overflow or underflow, and its count).
    #[track_caller]
    fn residual_is(&self, kind: Residual, why: &str) -> &Outcome {
        assert_eq!(self.kind, kind, "{why}: iSCSI residual");
        self
    }

    /// Asserts the task was aborted by a task management function.
    #[track_caller]
    fn task_aborted(&self, why: &str) -> &Outcome {
        assert!(self.aborted, "{why}: aborted flag (status {:#x})", self.status);
        assert_eq!(self.status, status::TASK_ABORTED, "{why}: TASK ABORTED status");
        assert!(self.sense.is_empty(), "{why}: no sense data without CHECK CONDITION");
        self
    }
}

/// Builds the task for `cmd` and executes it with `exec` (on a reactor thread). The outcome
/// goes to `tx` whether the task finishes at once or later through its callback.
fn submit(cmd: Cmd, nexus: Arc<Nexus>, tx: Sender<Outcome>, exec: impl FnOnce(Box<ScsiTask>) -> Option<Box<ScsiTask>>) {
    let mut task = ScsiTask::new(nexus);
    assert!(task.set_cdb(&cmd.cdb), "test CDB of {} bytes", cmd.cdb.len());
    task.dir = cmd.dir;
    task.tag = cmd.tag;
    task.overflow_allowed = cmd.overflow;
    let mut buf = cmd.buf.into_boxed_slice();
    let segments = cmd.segments.unwrap_or_else(|| if buf.is_empty() { Vec::new() } else { vec![buf.len()] });
    assert!(segments.iter().sum::<usize>() <= buf.len(), "segments within the buffer");
    let base = buf.as_mut_ptr();
    let mut at = 0;
    for len in segments {
        // SAFETY: `base + at .. + len` lies inside `buf` (checked above). `buf` is a heap
        // allocation that moves (as a box, its contents stay put) into the completion
        // callback below, which frees it only once the task has finished; nothing else
        // reads or writes it meanwhile.
        unsafe { task.push_iov(base.add(at), len) };
        at += len;
    }
    let held = RefCell::new(Some(buf));
    let finished = cmd.finished;
    let done: TaskDone = Rc::new(move |t: Box<ScsiTask>| {
        let data = held.borrow_mut().take().map(Vec::from).expect("a task completes once");
        if let Some(f) = &finished {
            f.fetch_add(1, Ordering::SeqCst);
        }
        let _ = tx.send(Outcome::of(&t, data));
    });
    task.set_done(done.clone());
    if let Some(t) = exec(task) {
        done(t);
    }
}

/// Waits for `n` outcomes, sorted by tag.
#[track_caller]
fn collect(rx: &Receiver<Outcome>, n: usize) -> Vec<Outcome> {
    let mut out: Vec<Outcome> =
        (0..n).map(|i| rx.recv_timeout(WAIT).unwrap_or_else(|_| panic!("outcome {i} of {n} never came"))).collect();
    out.sort_by_key(|o| o.tag);
    out
}

/// A logical unit on its own bdev, and the two initiators that talk to it.
struct Unit {
    lun: Arc<ScsiLun>,
    /// The first initiator (the one `run` uses).
    a: Arc<Nexus>,
    /// A second initiator.
    b: Arc<Nexus>,
}

impl Unit {
    /// A unit on a new `blocks` x 512 malloc bdev named `name`.
    fn malloc(name: &str, blocks: u64, readonly: bool) -> Unit {
        testing::reactors();
        malloc::create(name, blocks, BS as u32, None).unwrap();
        Unit::on(name, readonly)
    }

    /// A unit on a new null bdev (for geometry too large for memory; reads return zeroes).
    fn null(name: &str, blocks: u64) -> Unit {
        testing::reactors();
        null::create(name, blocks, BS as u32, None).unwrap();
        Unit::on(name, false)
    }

    /// A unit with a removable medium on a new `blocks` x 512 malloc bdev named `name`.
    fn removable(name: &str, blocks: u64) -> Unit {
        let mut u = Unit::malloc(name, blocks, false);
        let lun = Arc::try_unwrap(u.lun).ok().expect("not shared yet");
        u.lun = Arc::new(lun.with_removable(true));
        u
    }

    fn on(name: &str, readonly: bool) -> Unit {
        let mut desc = crate::bdev::open(name, !readonly, Box::new(|_, _| {})).unwrap();
        if !readonly {
            desc.claim("scsi-test").unwrap();
        }
        let lun = Arc::new(ScsiLun::new(0, desc, "t.Target0", 1, readonly));
        Unit { lun, a: nexus(&format!("{name}-a")), b: nexus(&format!("{name}-b")) }
    }

    /// Runs `cmd` from `who` and waits for its outcome.
    #[track_caller]
    fn run_as(&self, who: &Arc<Nexus>, cmd: Cmd) -> Outcome {
        let (tx, rx) = mpsc::channel();
        let (lun, who) = (self.lun.clone(), who.clone());
        framework::call(0, move || {
            let lc = channel(&lun, &who);
            submit(cmd, who, tx, |t| lun::execute(&lc, t));
        })
        .unwrap();
        rx.recv_timeout(WAIT).expect("the command finished")
    }

    /// Runs `cmd` from the first initiator.
    #[track_caller]
    fn run(&self, cmd: Cmd) -> Outcome {
        self.run_as(&self.a, cmd)
    }

    /// Makes the unit know `who` (as opening a queue to it does), so that unit attentions
    /// for "every nexus" reach it.
    fn attach(&self, who: &Arc<Nexus>) {
        let (lun, who) = (self.lun.clone(), who.clone());
        framework::call(0, move || drop(channel(&lun, &who))).unwrap();
    }

    /// Writes `data` at `lba` with WRITE (16), asserting success.
    #[track_caller]
    fn write(&self, lba: u64, data: &[u8]) {
        let blocks = (data.len() / BS) as u32;
        self.run(Cmd::dout(&c16(op::WRITE_16, 0, lba, blocks), data)).good("setup write").moved(
            data.len() as u64,
            0,
            "setup write",
        );
    }

    /// Reads `blocks` blocks at `lba` with READ (16), asserting success.
    #[track_caller]
    fn read(&self, lba: u64, blocks: u32) -> Vec<u8> {
        let o = self.run(Cmd::din(&c16(op::READ_16, 0, lba, blocks), blocks as usize * BS));
        o.good("read back");
        o.data
    }

    /// The bdev's completed (flushes + write-zeroes, unmaps, writes) so far.
    fn io_counts(&self) -> (u64, u64, u64) {
        let s = self.lun.bdev().stats();
        (s.other.ops.get(), s.unmap.ops.get(), s.write.ops.get())
    }
}

/// A 6-byte READ/WRITE CDB.
fn c6(opcode: u8, lba: u32, blocks: u8) -> [u8; 6] {
    let l = lba.to_be_bytes();
    [opcode, l[1] & 0x1F, l[2], l[3], blocks, 0]
}

/// A 10-byte CDB with byte 1 `b1`, a 4-byte LBA at 2 and a 2-byte length at 7 (READ, WRITE,
/// VERIFY, WRITE SAME, SYNCHRONIZE CACHE).
fn c10(opcode: u8, b1: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let (l, n) = (lba.to_be_bytes(), blocks.to_be_bytes());
    [opcode, b1, l[0], l[1], l[2], l[3], 0, n[0], n[1], 0]
}

/// A 12-byte READ/WRITE CDB.
fn c12(opcode: u8, b1: u8, lba: u32, blocks: u32) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = opcode;
    c[1] = b1;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[6..10].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// A 16-byte CDB with an 8-byte LBA at 2 and a 4-byte length at 10.
fn c16(opcode: u8, b1: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = opcode;
    c[1] = b1;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// COMPARE AND WRITE of `blocks` at `lba`.
fn caw(lba: u64, blocks: u8, fua: bool) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op::COMPARE_AND_WRITE;
    c[1] = if fua { 0x08 } else { 0 };
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = blocks;
    c
}

/// UNMAP with a parameter list length of `len`.
fn unmap_cdb(len: u16) -> [u8; 10] {
    let l = len.to_be_bytes();
    [op::UNMAP, 0, 0, 0, 0, 0, 0, l[0], l[1], 0]
}

/// An UNMAP parameter list with `descs` (LBA, blocks).
fn unmap_list(descs: &[(u64, u32)]) -> Vec<u8> {
    let mut p = vec![0u8; 8];
    p[0..2].copy_from_slice(&((6 + 16 * descs.len()) as u16).to_be_bytes());
    p[2..4].copy_from_slice(&((16 * descs.len()) as u16).to_be_bytes());
    for &(lba, n) in descs {
        p.extend_from_slice(&lba.to_be_bytes());
        p.extend_from_slice(&n.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
    }
    p
}

/// `blocks` blocks whose bytes follow a pattern seeded by `seed` (no two blocks alike).
fn pattern(seed: u8, blocks: usize) -> Vec<u8> {
    (0..blocks * BS).map(|i| (i / BS) as u8 ^ (i as u8).wrapping_mul(7) ^ seed).collect()
}

/// A 10-byte allocation-length CDB for data-in commands with the length in bytes 6..10
/// (REPORT LUNS, MAINTENANCE IN).
fn c12_alloc(opcode: u8, sa: u8, alloc: u32) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = opcode;
    c[1] = sa;
    c[6..10].copy_from_slice(&alloc.to_be_bytes());
    c
}

/// SERVICE ACTION IN (16) with service action `sa`, LBA and allocation length.
fn sai16(sa: u8, lba: u64, alloc: u32) -> [u8; 16] {
    let mut c = c16(op::SERVICE_ACTION_IN_16, sa, lba, 0);
    c[10..14].copy_from_slice(&alloc.to_be_bytes());
    c
}

/// INQUIRY with EVPD / page and allocation length.
fn inquiry(evpd: bool, page: u8, alloc: u16) -> [u8; 6] {
    let a = alloc.to_be_bytes();
    [op::INQUIRY, evpd as u8, page, a[0], a[1], 0]
}

/// REQUEST SENSE with allocation length `alloc`.
fn request_sense(alloc: u8) -> [u8; 6] {
    [op::REQUEST_SENSE, 0, 0, 0, alloc, 0]
}

const TUR: [u8; 6] = [op::TEST_UNIT_READY, 0, 0, 0, 0, 0];

#[test]
fn read_write_round_trips_in_every_cdb_size() {
    let u = Unit::malloc("t_scsi_rw", BLOCKS, false);
    // WRITE (6) / READ (6).
    let d = pattern(1, 3);
    u.run(Cmd::dout(&c6(op::WRITE_6, 5, 3), &d)).good("write 6").moved(3 * BS as u64, 0, "write 6");
    let o = u.run(Cmd::din(&c6(op::READ_6, 5, 3), 3 * BS));
    o.good("read 6").moved(3 * BS as u64, 0, "read 6");
    assert_eq!(o.data, d, "read 6 returns what write 6 wrote");
    // A 6-byte transfer length of 0 means 256 blocks.
    let d = pattern(2, 256);
    u.run(Cmd::dout(&c6(op::WRITE_6, 1000, 0), &d)).good("write 6, 256 blocks").moved(256 * BS as u64, 0, "w6 256");
    let o = u.run(Cmd::din(&c6(op::READ_6, 1000, 0), 256 * BS));
    o.good("read 6, 256 blocks").moved(256 * BS as u64, 0, "r6 256");
    assert_eq!(o.data, d);
    assert_eq!(u.read(1000, 256), d, "READ (16) agrees");
    // 10, 12 and 16, each read back by another size; the data buffer in several iovecs.
    let d = pattern(3, 4);
    u.run(Cmd::dout(&c10(op::WRITE_10, 0, 20, 4), &d).segments(&[100, 412, 1024, 512])).good("write 10");
    let o = u.run(Cmd::din(&c12(op::READ_12, 0, 20, 4), 4 * BS).segments(&[1, 1535, 512]));
    assert_eq!(o.good("read 12").data, d, "write 10 / read 12 across iovecs");
    let d = pattern(4, 2);
    u.run(Cmd::dout(&c12(op::WRITE_12, 0, 30, 2), &d)).good("write 12");
    assert_eq!(u.run(Cmd::din(&c10(op::READ_10, 0, 30, 2), 2 * BS)).good("read 10").data, d);
    let d = pattern(5, 7);
    u.run(Cmd::dout(&c16(op::WRITE_16, 0, BLOCKS - 7, 7), &d)).good("write 16 to the last block");
    assert_eq!(u.read(BLOCKS - 7, 7), d);

    // FUA: the write is flushed before it completes; without FUA (write cache on) it is not.
    let (flushes, _, _) = u.io_counts();
    u.run(Cmd::dout(&c10(op::WRITE_10, 0, 40, 1), &pattern(6, 1))).good("write without FUA");
    assert_eq!(u.io_counts().0, flushes, "no flush without FUA");
    u.run(Cmd::dout(&c16(op::WRITE_16, 0x08, 40, 1), &pattern(7, 1))).good("write 16 FUA");
    assert_eq!(u.io_counts().0, flushes + 1, "FUA write flushed");
    u.run(Cmd::dout(&c12(op::WRITE_12, 0x08, 41, 1), &pattern(8, 1))).good("write 12 FUA");
    assert_eq!(u.io_counts().0, flushes + 2, "FUA write flushed");
    assert_eq!(u.read(40, 2), [pattern(7, 1), pattern(8, 1)].concat());
    u.run(Cmd::din(&c10(op::READ_10, 0x08, 40, 1), BS)).good("read with FUA");

    // A longer buffer than the transfer: the rest is the residual, and left alone.
    let o = u.run(Cmd::din(&c10(op::READ_10, 0, 40, 1), 3 * BS));
    o.good("read into a longer buffer").moved(BS as u64, 2 * BS as u64, "longer read buffer");
    assert_eq!(&o.data[..BS], &pattern(7, 1)[..]);
    assert!(o.data[BS..].iter().all(|&b| b == 0xEE), "bytes past the transfer untouched");
    let mut long = pattern(9, 2);
    long.extend_from_slice(&[0x77; 100]);
    u.run(Cmd::dout(&c10(op::WRITE_10, 0, 50, 2), &long)).good("longer write buffer").moved(
        2 * BS as u64,
        100,
        "longer write buffer",
    );
    assert_eq!(u.read(50, 2), pattern(9, 2));
    assert_ne!(u.read(52, 1)[..100], [0x77; 100], "only the transfer length is written");

    // Zero-length transfers: nothing moves, with or without a buffer.
    for cdb in [c10(op::READ_10, 0, 0, 0), c10(op::WRITE_10, 0, 0, 0)] {
        u.run(Cmd::none(&cdb)).good("zero-length, no buffer").moved(0, 0, "zero-length");
    }
    u.run(Cmd::din(&c16(op::READ_16, 0, 7, 0), BS)).good("zero-length read, buffer").moved(0, BS as u64, "zl");
}

#[test]
fn read_write_errors_and_their_sense_data() {
    let u = Unit::malloc("t_scsi_rw_err", BLOCKS, false);
    u.write(BLOCKS - 1, &pattern(1, 1));
    // LBA out of range: past the end, straddling the end, and overflowing LBA + length.
    for (cdb, why) in [
        (c16(op::READ_16, 0, BLOCKS, 1).to_vec(), "read at the capacity"),
        (c16(op::READ_16, 0, BLOCKS - 1, 2).to_vec(), "read straddling the end"),
        (c16(op::READ_16, 0, u64::MAX - 1, 4).to_vec(), "LBA + length overflows"),
        (c16(op::READ_16, 0, u64::MAX, 0).to_vec(), "zero length past the end"),
        (c10(op::READ_10, 0, BLOCKS as u32 + 10, 1).to_vec(), "read 10 past the end"),
        (c6(op::READ_6, BLOCKS as u32, 1).to_vec(), "read 6 past the end"),
        (c6(op::READ_6, BLOCKS as u32 - 255, 0).to_vec(), "read 6 of 256 blocks past the end"),
        (c12(op::READ_12, 0, 0xFFFF_FFFF, 2).to_vec(), "read 12 past the end"),
    ] {
        u.run(Cmd::din(&cdb, 1 << 20)).check(key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE, why).moved(0, 1 << 20, why);
    }
    u.run(Cmd::dout(&c16(op::WRITE_16, 0, BLOCKS - 1, 2), &pattern(2, 2))).check(
        key::ILLEGAL_REQUEST,
        asc::LBA_OUT_OF_RANGE,
        "write straddling the end",
    );
    assert_eq!(u.read(BLOCKS - 1, 1), pattern(1, 1), "a refused write writes nothing");

    // The buffer shorter than the transfer, the wrong direction, or no buffer at all:
    // INVALID FIELD IN CDB at the transfer length.
    u.run(Cmd::din(&c10(op::READ_10, 0, 0, 2), 2 * BS - 1)).invalid_cdb(7, None, "read 10, buffer short by one");
    u.run(Cmd::din(&c6(op::READ_6, 0, 0), 255 * BS)).invalid_cdb(4, None, "read 6 of 256 into 255 blocks");
    u.run(Cmd::dout(&c12(op::WRITE_12, 0, 0, 2), &pattern(3, 1))).invalid_cdb(6, None, "write 12, short");
    u.run(Cmd::dout(&c16(op::WRITE_16, 0, 0, 2), &pattern(3, 1))).invalid_cdb(10, None, "write 16, short");
    u.run(Cmd::dout(&c10(op::READ_10, 0, 0, 1), &pattern(3, 1))).invalid_cdb(7, None, "read with data-out");
    u.run(Cmd::din(&c10(op::WRITE_10, 0, 0, 1), BS)).invalid_cdb(7, None, "write with data-in");
    u.run(Cmd::none(&c16(op::READ_16, 0, 0, 1))).invalid_cdb(10, None, "read without a buffer");
    u.run(Cmd::new(&c10(op::WRITE_10, 0, 0, 1), DataDir::None, vec![0; BS])).invalid_cdb(7, None, "dir None");
    assert!(u.read(0, 2).iter().all(|&b| b == 0), "refused writes wrote nothing");

    // RDPROTECT / WRPROTECT: no protection information. The bit pointer names the field's
    // most significant bit (SPC-4 4.5.2.4.2).
    for (cdb, why) in [
        (c10(op::READ_10, 0x20, 0, 1).to_vec(), "RDPROTECT 001b"),
        (c12(op::READ_12, 0xE0, 0, 1).to_vec(), "RDPROTECT 111b"),
        (c16(op::READ_16, 0x40, 0, 1).to_vec(), "RDPROTECT 010b"),
    ] {
        u.run(Cmd::din(&cdb, BS)).invalid_cdb(1, Some(7), why);
    }
    for (cdb, why) in [
        (c10(op::WRITE_10, 0x20, 0, 1).to_vec(), "WRPROTECT on WRITE (10)"),
        (c16(op::WRITE_16, 0x80, 0, 1).to_vec(), "WRPROTECT on WRITE (16)"),
        (c10(op::WRITE_AND_VERIFY_10, 0x60, 0, 1).to_vec(), "WRPROTECT on WRITE AND VERIFY"),
    ] {
        u.run(Cmd::dout(&cdb, &pattern(4, 1))).invalid_cdb(1, Some(7), why);
    }

    // A CDB shorter than its opcode's group says.
    u.run(Cmd::din(&[op::READ_10, 0, 0, 0, 0, 0], BS)).invalid_cdb(0, None, "6-byte READ (10)");
    u.run(Cmd::din(&c10(op::READ_16, 0, 0, 1), BS)).invalid_cdb(0, None, "10-byte READ (16)");
    u.run(Cmd::din(&c10(op::READ_12, 0, 0, 1), BS)).invalid_cdb(0, None, "10-byte READ (12)");

    // Transfer length beyond the largest transfer (8 MiB): a null unit is big enough.
    let n = Unit::null("t_scsi_rw_max", 1 << 16);
    let max = (8 << 20) / BS as u32;
    n.run(Cmd::din(&c10(op::READ_10, 0, 0, max as u16 + 1), BS)).invalid_cdb(7, None, "read 10 over the max");
    n.run(Cmd::dout(&c16(op::WRITE_16, 0, 0, max + 1), &[0; BS])).invalid_cdb(10, None, "write 16 over max");
    n.run(Cmd::din(&c12(op::READ_12, 0, 0, max + 1), BS)).invalid_cdb(6, None, "read 12 over the max");
    n.run(Cmd::din(&c16(op::READ_16, 0, 100, max), max as usize * BS)).good("the max itself").moved(
        (max as usize * BS) as u64,
        0,
        "max read",
    );
}

#[test]
fn read_only_unit_refuses_every_write_type_command() {
    let u = Unit::malloc("t_scsi_ro", BLOCKS, true);
    let block = pattern(1, 1);
    let two = pattern(2, 2);
    for (cmd, why) in [
        (Cmd::dout(&c6(op::WRITE_6, 0, 1), &block), "WRITE (6)"),
        (Cmd::dout(&c10(op::WRITE_10, 0, 0, 1), &block), "WRITE (10)"),
        (Cmd::dout(&c12(op::WRITE_12, 0, 0, 1), &block), "WRITE (12)"),
        (Cmd::dout(&c16(op::WRITE_16, 0, 0, 1), &block), "WRITE (16)"),
        (Cmd::dout(&c10(op::WRITE_AND_VERIFY_10, 0, 0, 1), &block), "WRITE AND VERIFY (10)"),
        (Cmd::dout(&c16(op::WRITE_AND_VERIFY_16, 0, 0, 1), &block), "WRITE AND VERIFY (16)"),
        (Cmd::dout(&c10(op::WRITE_SAME_10, 0, 0, 4), &block), "WRITE SAME (10)"),
        (Cmd::dout(&c16(op::WRITE_SAME_16, 0x08, 0, 4), &[0; BS]), "WRITE SAME (16) UNMAP"),
        (Cmd::none(&c16(op::WRITE_SAME_16, 0x01, 0, 4)), "WRITE SAME (16) NDOB"),
        (Cmd::dout(&unmap_cdb(24), &unmap_list(&[(0, 1)])), "UNMAP"),
        (Cmd::dout(&caw(0, 1, false), &two), "COMPARE AND WRITE"),
        // Even one that would move nothing, or lies out of range: write protection first.
        (Cmd::none(&c10(op::WRITE_10, 0, 0, 0)), "zero-length WRITE (10)"),
        (Cmd::dout(&c16(op::WRITE_16, 0, BLOCKS, 1), &block), "WRITE (16) out of range"),
    ] {
        let o = u.run(cmd);
        o.check(key::DATA_PROTECT, asc::WRITE_PROTECTED, why).no_field(why);
        assert_eq!(o.transferred, 0, "{why}: nothing moved");
    }
    assert!(u.read(0, 2).iter().all(|&b| b == 0), "nothing was written");
    // Reads, verifies and the cache flush still work.
    u.run(Cmd::din(&c10(op::READ_10, 0, 0, 8), 8 * BS)).good("read");
    u.run(Cmd::none(&c10(op::VERIFY_10, 0, 0, 8))).good("verify without byte check");
    u.run(Cmd::dout(&c10(op::VERIFY_10, 0x02, 0, 1), &[0; BS])).good("verify with byte check");
    u.run(Cmd::none(&c10(op::SYNCHRONIZE_CACHE_10, 0, 0, 0))).good("synchronize cache");
    // MODE SENSE says so (WP in the device-specific parameter).
    let o = u.run(Cmd::din(&[op::MODE_SENSE_6, 0x08, 0x3F, 0, 255, 0], 255));
    assert_eq!(o.good("mode sense").data[2] & 0x80, 0x80, "WP set");
    // The unit does not claim to unmap.
    let o = u.run(Cmd::din(&sai16(op::SAI_READ_CAPACITY_16, 0, 32), 32));
    assert_eq!(o.good("read capacity 16").data[14] & 0x80, 0, "LBPME clear");
}

#[test]
fn write_and_verify_and_verify_with_byte_check() {
    let u = Unit::malloc("t_scsi_verify", BLOCKS, false);
    // WRITE AND VERIFY writes, and (as FUA) flushes.
    let (flushes, _, _) = u.io_counts();
    let d = pattern(1, 4);
    u.run(Cmd::dout(&c10(op::WRITE_AND_VERIFY_10, 0, 100, 4), &d)).good("write and verify 10").moved(
        4 * BS as u64,
        0,
        "wv10",
    );
    assert_eq!(u.io_counts().0, flushes + 1, "write and verify flushed");
    let d2 = pattern(2, 2);
    u.run(Cmd::dout(&c16(op::WRITE_AND_VERIFY_16, 0, 104, 2), &d2)).good("write and verify 16");
    assert_eq!(u.read(100, 6), [d.clone(), d2.clone()].concat());
    u.run(Cmd::dout(&c16(op::WRITE_AND_VERIFY_16, 0, BLOCKS - 1, 2), &d2)).check(
        key::ILLEGAL_REQUEST,
        asc::LBA_OUT_OF_RANGE,
        "write and verify past the end",
    );

    // BYTCHK 0: medium verification only; no data moves.
    u.run(Cmd::none(&c10(op::VERIFY_10, 0, 100, 6))).good("verify 10 bytchk 0").moved(0, 0, "bytchk 0");
    u.run(Cmd::none(&c16(op::VERIFY_16, 0, 0, BLOCKS as u32))).good("verify the whole unit");
    u.run(Cmd::none(&c10(op::VERIFY_10, 0, BLOCKS as u32, 1))).check(
        key::ILLEGAL_REQUEST,
        asc::LBA_OUT_OF_RANGE,
        "verify past the end",
    );
    // BYTCHK 1: compare with the data-out.
    let both = [d.clone(), d2.clone()].concat();
    u.run(Cmd::dout(&c10(op::VERIFY_10, 0x02, 100, 6), &both)).good("verify 10 match").moved(
        6 * BS as u64,
        0,
        "verify match",
    );
    u.run(Cmd::dout(&c16(op::VERIFY_16, 0x02, 104, 2), &d2).segments(&[3, 1021])).good("verify 16 match");
    let mut wrong = both.clone();
    wrong[700] ^= 0x01;
    wrong[2000] ^= 0x80;
    u.run(Cmd::dout(&c10(op::VERIFY_10, 0x02, 100, 6), &wrong))
        .check(key::MISCOMPARE, asc::MISCOMPARE_VERIFY, "verify miscompare")
        .information(700, "the first differing byte");
    let mut wrong = d2.clone();
    wrong[BS * 2 - 1] ^= 0xFF;
    u.run(Cmd::dout(&c16(op::VERIFY_16, 0x02, 104, 2), &wrong))
        .check(key::MISCOMPARE, asc::MISCOMPARE_VERIFY, "miscompare in the last byte")
        .information(BS as u32 * 2 - 1, "last byte");
    assert_eq!(u.read(100, 6), both, "verify changes nothing");
    u.run(Cmd::dout(&c10(op::VERIFY_10, 0x02, 100, 2), &d[..BS])).invalid_cdb(7, None, "verify buffer short");
    u.run(Cmd::din(&c10(op::VERIFY_10, 0x02, 100, 1), BS)).invalid_cdb(7, None, "verify with data-in");
    u.run(Cmd::none(&c10(op::VERIFY_10, 0x02, 100, 0))).good("verify of no blocks");
    // BYTCHK 2 (and 3) are not supported; VRPROTECT neither.
    u.run(Cmd::dout(&c10(op::VERIFY_10, 0x04, 100, 1), &d[..BS])).invalid_cdb(1, Some(2), "bytchk 2");
    u.run(Cmd::dout(&c16(op::VERIFY_16, 0x06, 100, 1), &d[..BS])).invalid_cdb(1, Some(2), "bytchk 3");
    u.run(Cmd::none(&c10(op::VERIFY_10, 0x20, 100, 1))).invalid_cdb(1, Some(7), "VRPROTECT");
    // A byte-check verify larger than what is buffered (8 MiB), on a null unit.
    let n = Unit::null("t_scsi_verify_max", 1 << 16);
    n.run(Cmd::dout(&c16(op::VERIFY_16, 0x02, 0, (8 << 20) / BS as u32 + 1), &[0; BS])).invalid_cdb(
        10,
        None,
        "verify over 8 MiB",
    );
    n.run(Cmd::dout(&c10(op::VERIFY_10, 0x02, 0, 8), &[0; 8 * BS])).good("null reads back zeroes");
}

#[test]
fn write_same_patterns_zeroes_unmap_and_refusals() {
    let u = Unit::malloc("t_scsi_ws", BLOCKS, false);
    u.write(0, &pattern(0x10, 512));
    // A non-zero pattern, replicated to every block; neighbours untouched.
    let block = pattern(0x33, 1);
    u.run(Cmd::dout(&c10(op::WRITE_SAME_10, 0, 100, 300), &block)).good("write same 10").moved(
        BS as u64,
        0,
        "one block sent",
    );
    let back = u.read(99, 302);
    assert_eq!(&back[..BS], &pattern(0x10, 100)[99 * BS..], "block before untouched");
    for (i, b) in back[BS..301 * BS].chunks(BS).enumerate() {
        assert_eq!(b, &block[..], "block {} holds the pattern", 100 + i);
    }
    assert_eq!(&back[301 * BS..], &pattern(0x10, 401)[400 * BS..], "block after untouched");
    // Across the whole unit: several chunks of bdev writes.
    let (_, _, writes) = u.io_counts();
    let block = pattern(0x5A, 1);
    u.run(Cmd::dout(&c16(op::WRITE_SAME_16, 0, 0, BLOCKS as u32), &block)).good("write same 16, whole unit");
    assert!(u.io_counts().2 >= writes + 2, "the pattern went out in more than one write");
    for (i, b) in u.read(0, BLOCKS as u32).chunks(BS).enumerate() {
        assert_eq!(b, &block[..], "block {i} holds the pattern");
    }
    // Zeroes: write-zeroes, no pattern writes.
    let (other, unmaps, writes) = u.io_counts();
    u.run(Cmd::dout(&c10(op::WRITE_SAME_10, 0, 10, 20), &[0; BS])).good("write same of zeroes");
    assert_eq!(u.io_counts(), (other + 1, unmaps, writes), "one write-zeroes");
    assert!(u.read(10, 20).iter().all(|&b| b == 0));
    assert_eq!(u.read(9, 1), block, "block before untouched");
    assert_eq!(u.read(30, 1), block, "block after untouched");
    // UNMAP with a zero block: an unmap, and the blocks read back zero.
    u.run(Cmd::dout(&c16(op::WRITE_SAME_16, 0x08, 40, 8), &[0; BS])).good("write same UNMAP");
    assert_eq!(u.io_counts().1, unmaps + 1, "one unmap");
    assert!(u.read(40, 8).iter().all(|&b| b == 0), "unmapped blocks read zero");
    assert_eq!(u.read(48, 1), block);
    // UNMAP with a non-zero pattern: deallocated all the same (libiscsi
    // WriteSame10.UnmapUntilEnd sends 0xFF blocks with UNMAP and reads zeroes back).
    u.write(40, &pattern(0x44, 2));
    let (_, unmaps, _) = u.io_counts();
    u.run(Cmd::dout(&c10(op::WRITE_SAME_10, 0x08, 40, 2), &pattern(0x77, 1))).good("write same UNMAP, pattern");
    assert_eq!(u.io_counts().1, unmaps + 1, "an unmap");
    assert!(u.read(40, 2).iter().all(|&b| b == 0), "unmapped blocks read zero");
    // NDOB: zeroes without a data-out buffer (and with UNMAP, an unmap).
    u.run(Cmd::none(&c16(op::WRITE_SAME_16, 0x01, 60, 4))).good("NDOB").moved(0, 0, "NDOB sends nothing");
    assert!(u.read(60, 4).iter().all(|&b| b == 0));
    let (_, unmaps, _) = u.io_counts();
    u.run(Cmd::none(&c16(op::WRITE_SAME_16, 0x09, 70, 4))).good("NDOB + UNMAP");
    assert_eq!(u.io_counts().1, unmaps + 1);
    assert!(u.read(70, 4).iter().all(|&b| b == 0));
    assert_eq!(u.read(74, 1), block);

    // Refusals.
    u.run(Cmd::dout(&c10(op::WRITE_SAME_10, 0x10, 0, 1), &block)).invalid_cdb(1, Some(4), "ANCHOR (10)");
    u.run(Cmd::dout(&c16(op::WRITE_SAME_16, 0x18, 0, 1), &block)).invalid_cdb(1, Some(4), "ANCHOR (16)");
    u.run(Cmd::dout(&c16(op::WRITE_SAME_16, 0x20, 0, 1), &block)).invalid_cdb(1, Some(7), "WRPROTECT");
    u.run(Cmd::dout(&c10(op::WRITE_SAME_10, 0, BLOCKS as u32 - 1, 2), &block)).check(
        key::ILLEGAL_REQUEST,
        asc::LBA_OUT_OF_RANGE,
        "write same past the end",
    );
    u.run(Cmd::none(&c16(op::WRITE_SAME_16, 0x01, u64::MAX, 2))).check(
        key::ILLEGAL_REQUEST,
        asc::LBA_OUT_OF_RANGE,
        "NDOB with overflowing LBA",
    );
    u.run(Cmd::none(&c10(op::WRITE_SAME_10, 0, 0, 1))).invalid_cdb(7, None, "no data-out block");
    u.run(Cmd::dout(&c16(op::WRITE_SAME_16, 0, 0, 1), &block[..BS - 1])).invalid_cdb(10, None, "short block");
    assert_eq!(u.read(0, 1), block, "refused commands wrote nothing");
    // More blocks than one WRITE SAME may cover (max unmap blocks), on a null unit.
    let n = Unit::null("t_scsi_ws_max", 1 << 24);
    n.run(Cmd::none(&c16(op::WRITE_SAME_16, 0x09, 0, (1 << 20) + 1))).invalid_cdb(10, None, "over the max");
    n.run(Cmd::none(&c16(op::WRITE_SAME_16, 0x09, 0, 1 << 20))).good("the max itself");
}

#[test]
fn unmap_descriptors_and_parameter_list_errors() {
    let u = Unit::malloc("t_scsi_unmap", BLOCKS, false);
    let data = pattern(0x42, 64);
    u.write(0, &data);
    let block = |i: usize| data[i * BS..(i + 1) * BS].to_vec();
    // Two descriptors and one of zero blocks (skipped): two unmaps.
    let (_, unmaps, _) = u.io_counts();
    let list = unmap_list(&[(8, 8), (100, 0), (40, 4)]);
    u.run(Cmd::dout(&unmap_cdb(list.len() as u16), &list)).good("unmap").moved(list.len() as u64, 0, "unmap");
    assert_eq!(u.io_counts().1, unmaps + 2, "one unmap per non-empty descriptor");
    for (i, b) in u.read(0, 64).chunks(BS).enumerate() {
        if (8..16).contains(&i) || (40..44).contains(&i) {
            assert!(b.iter().all(|&x| x == 0), "block {i} unmapped: reads zero");
        } else {
            assert_eq!(b, block(i), "block {i} kept");
        }
    }
    // Nothing to do: no parameter list, an empty descriptor list, only empty descriptors.
    u.run(Cmd::none(&unmap_cdb(0))).good("parameter list length 0").moved(0, 0, "no list");
    let empty = unmap_list(&[]);
    u.run(Cmd::dout(&unmap_cdb(8), &empty)).good("no descriptors");
    let zeros = unmap_list(&[(0, 0), (1, 0)]);
    u.run(Cmd::dout(&unmap_cdb(zeros.len() as u16), &zeros)).good("only empty descriptors");
    // A longer buffer than the list: the rest is the residual.
    let one = unmap_list(&[(20, 1)]);
    let mut long = one.clone();
    long.extend_from_slice(&[0xFF; 40]);
    u.run(Cmd::dout(&unmap_cdb(one.len() as u16), &long)).good("longer buffer").moved(24, 40, "unmap residual");
    assert!(u.read(20, 1).iter().all(|&b| b == 0));
    assert_eq!(u.read(0, 8), data[..8 * BS], "untouched by the empty ones");

    // PARAMETER LIST LENGTH ERROR: a list under 8 bytes, a descriptor length that is not a
    // multiple of 16 or runs past the list, a buffer shorter than the list, no data-out.
    let two = unmap_list(&[(50, 2), (52, 2)]);
    let mut bad_desc_len = two.clone();
    bad_desc_len[3] = 20;
    let mut past_list = two.clone();
    past_list[3] = 48;
    for (cmd, why) in [
        (Cmd::dout(&unmap_cdb(4), &two), "list of 4 bytes"),
        (Cmd::dout(&unmap_cdb(7), &two), "list of 7 bytes"),
        (Cmd::dout(&unmap_cdb(two.len() as u16), &bad_desc_len), "descriptor length 20"),
        (Cmd::dout(&unmap_cdb(two.len() as u16), &past_list), "descriptors past the list"),
        (Cmd::dout(&unmap_cdb(24), &two), "list length cuts the second descriptor"),
        (Cmd::dout(&unmap_cdb(two.len() as u16), &two[..30]), "buffer shorter than the list"),
        (Cmd::din(&unmap_cdb(two.len() as u16), two.len()), "data-in"),
        (Cmd::none(&unmap_cdb(two.len() as u16)), "no buffer"),
    ] {
        u.run(cmd).check(key::ILLEGAL_REQUEST, asc::PARAM_LIST_LENGTH, why);
    }
    // A descriptor out of range refuses the whole list: nothing is unmapped.
    let list = unmap_list(&[(50, 2), (BLOCKS - 1, 2)]);
    u.run(Cmd::dout(&unmap_cdb(list.len() as u16), &list)).check(
        key::ILLEGAL_REQUEST,
        asc::LBA_OUT_OF_RANGE,
        "descriptor past the end",
    );
    let list = unmap_list(&[(50, 2), (u64::MAX, 2)]);
    u.run(Cmd::dout(&unmap_cdb(list.len() as u16), &list)).check(
        key::ILLEGAL_REQUEST,
        asc::LBA_OUT_OF_RANGE,
        "descriptor overflowing",
    );
    assert_eq!(u.read(50, 2), data[50 * BS..52 * BS], "nothing unmapped");
    // Too many descriptors (256 at most).
    let many: Vec<(u64, u32)> = (0..257).map(|i| (i, 1)).collect();
    let list = unmap_list(&many);
    u.run(Cmd::dout(&unmap_cdb(list.len() as u16), &list))
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_PARAM, "257 descriptors")
        .field(false, 2, None, "descriptor data length");
    let list = unmap_list(&many[..256]);
    u.run(Cmd::dout(&unmap_cdb(list.len() as u16), &list)).good("256 descriptors");
    assert!(u.read(0, 256).iter().all(|&b| b == 0));
    u.run(Cmd::dout(&[op::UNMAP, 0x01, 0, 0, 0, 0, 0, 0, 24, 0], &unmap_list(&[(0, 1)]))).invalid_cdb(
        1,
        Some(0),
        "ANCHOR",
    );
    // A descriptor over the largest unmap (1M blocks), on a null unit: the field pointer
    // names that descriptor's NUMBER OF LOGICAL BLOCKS.
    let n = Unit::null("t_scsi_unmap_max", 1 << 24);
    let list = unmap_list(&[(0, 1), (10, (1 << 20) + 1)]);
    n.run(Cmd::dout(&unmap_cdb(list.len() as u16), &list))
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_PARAM, "descriptor over the max")
        .field(false, 8 + 16 + 8, None, "second descriptor's length");
}

#[test]
fn synchronize_cache_and_compare_and_write() {
    let u = Unit::malloc("t_scsi_caw", BLOCKS, false);
    // SYNCHRONIZE CACHE flushes; its range is checked.
    let (flushes, _, _) = u.io_counts();
    u.run(Cmd::none(&c10(op::SYNCHRONIZE_CACHE_10, 0, 0, 0))).good("sync 10, whole unit");
    u.run(Cmd::none(&c16(op::SYNCHRONIZE_CACHE_16, 0, 100, 50))).good("sync 16, a range");
    u.run(Cmd::none(&c10(op::SYNCHRONIZE_CACHE_10, 0, BLOCKS as u32 - 1, 1))).good("sync of the last block");
    assert_eq!(u.io_counts().0, flushes + 3, "three flushes");
    u.run(Cmd::none(&c10(op::SYNCHRONIZE_CACHE_10, 0, BLOCKS as u32 - 1, 2))).check(
        key::ILLEGAL_REQUEST,
        asc::LBA_OUT_OF_RANGE,
        "sync 10 past the end",
    );
    u.run(Cmd::none(&c16(op::SYNCHRONIZE_CACHE_16, 0, u64::MAX, 1))).check(
        key::ILLEGAL_REQUEST,
        asc::LBA_OUT_OF_RANGE,
        "sync 16 overflowing",
    );
    assert_eq!(u.io_counts().0, flushes + 3, "refused syncs flush nothing");

    // COMPARE AND WRITE: match → written.
    let (x, y, z) = (pattern(1, 1), pattern(2, 1), pattern(3, 1));
    u.write(10, &x);
    u.run(Cmd::dout(&caw(10, 1, false), &[x.clone(), y.clone()].concat())).good("caw match").moved(
        2 * BS as u64,
        0,
        "caw moves both halves",
    );
    assert_eq!(u.read(10, 1), y, "written after the match");
    // Miscompare: MISCOMPARE with the offset of the first difference, nothing written.
    let mut stale = y.clone();
    stale[77] ^= 0x10;
    u.run(Cmd::dout(&caw(10, 1, false), &[stale, z.clone()].concat()))
        .check(key::MISCOMPARE, asc::MISCOMPARE_VERIFY, "caw miscompare")
        .information(77, "offset of the difference");
    u.run(Cmd::dout(&caw(10, 1, false), &[x.clone(), z.clone()].concat()))
        .check(key::MISCOMPARE, asc::MISCOMPARE_VERIFY, "caw with old data")
        .information(0, "first byte differs");
    assert_eq!(u.read(10, 1), y, "nothing written on a miscompare");
    // FUA: match, write, flush.
    let (flushes, _, _) = u.io_counts();
    u.run(Cmd::dout(&caw(10, 1, true), &[y.clone(), z.clone()].concat())).good("caw FUA");
    assert_eq!(u.io_counts().0, flushes + 1, "FUA compare and write flushed");
    assert_eq!(u.read(10, 1), z);
    // Refusals.
    u.run(Cmd::dout(&caw(10, 2, false), &pattern(4, 4))).invalid_cdb(13, None, "two blocks");
    u.run(Cmd::dout(&caw(10, 1, false), &z)).invalid_cdb(13, None, "only the verify half");
    u.run(Cmd::dout(&caw(BLOCKS, 1, false), &pattern(4, 2))).check(
        key::ILLEGAL_REQUEST,
        asc::LBA_OUT_OF_RANGE,
        "caw past the end",
    );
    let mut c = caw(10, 1, false);
    c[1] = 0x20;
    u.run(Cmd::dout(&c, &pattern(4, 2))).invalid_cdb(1, Some(7), "caw WRPROTECT");
    u.run(Cmd::none(&caw(10, 0, false))).good("no blocks: nothing to do");
    assert_eq!(u.read(10, 1), z);

    // Two COMPARE AND WRITEs of one block at once go one after the other (the range lock,
    // granted in order): the first compares z and writes x, the second then finds x, not z.
    let (tx, rx) = mpsc::channel();
    let (lun, a, b) = (u.lun.clone(), u.a.clone(), u.b.clone());
    let (first, second) = ([z.clone(), x.clone()].concat(), [z.clone(), y.clone()].concat());
    framework::call(0, move || {
        let (la, lb) = (channel(&lun, &a), channel(&lun, &b));
        submit(Cmd::dout(&caw(10, 1, false), &first).tag(1), a, tx.clone(), |t| lun::execute(&la, t));
        submit(Cmd::dout(&caw(10, 1, false), &second).tag(2), b, tx, |t| lun::execute(&lb, t));
    })
    .unwrap();
    let out = collect(&rx, 2);
    out[0].good("the first compare and write");
    out[1].check(key::MISCOMPARE, asc::MISCOMPARE_VERIFY, "the second compares against the first's data");
    assert_eq!(u.read(10, 1), x);
    u.run_as(&u.b, Cmd::dout(&caw(10, 1, false), &[x.clone(), y.clone()].concat())).good("retried: passes");
    assert_eq!(u.read(10, 1), y);
}

/// A COMPARE AND WRITE is atomic against plain writes to its block from another queue on
/// another reactor: with its read held in the bdev (the gate bdev), a WRITE to the same
/// block from reactor 1 waits in its channel (observed there) and reaches the bdev only
/// after the compare-and-write's own write; so the compare-and-write neither loses the
/// write nor writes over it.
#[test]
fn compare_and_write_is_fenced_against_writes_from_other_queues() {
    testing::reactors();
    let name = "t_scsi_caw_fence";
    let gate = crate::bdev::test_gate::create(name, BLOCKS, BS as u32);
    let u = Unit::on(name, false);
    let (x, y, z) = (pattern(1, 1), pattern(2, 1), pattern(3, 1));
    u.write(10, &x);
    gate.hold(crate::bdev::IoType::Read, true);
    let before = gate.arrivals().len();
    let (tx, rx) = mpsc::channel();
    let (lun, a) = (u.lun.clone(), u.a.clone());
    let cmd = Cmd::dout(&caw(10, 1, false), &[x.clone(), y.clone()].concat()).tag(1);
    let tx1 = tx.clone();
    framework::call(0, move || {
        let lc = channel(&lun, &a);
        submit(cmd, a, tx1, |t| lun::execute(&lc, t));
    })
    .unwrap();
    crate::bdev::test_gate::wait_until("the compare-and-write's read is in the bdev", || gate.parked() == 1);
    let (lun, b) = (u.lun.clone(), u.b.clone());
    let write = Cmd::dout(&c16(op::WRITE_16, 0, 10, 1), &z).tag(2);
    framework::call(1, move || {
        let lc = channel(&lun, &b);
        submit(write, b, tx, |t| lun::execute(&lc, t));
    })
    .unwrap();
    let (lun, b) = (u.lun.clone(), u.b.clone());
    let queued = move || {
        let (lun, b) = (lun.clone(), b.clone());
        framework::call(1, move || channel(&lun, &b).bdev().map_or(0, |c| c.queued_for_locks())).unwrap()
    };
    crate::bdev::test_gate::wait_until("the plain write waits for the lock on reactor 1", || queued() == 1);
    use crate::bdev::IoType::{Read, Write};
    assert_eq!(gate.arrivals()[before..], [(Read, 10, 1)], "the plain write has not reached the bdev");
    gate.hold(Read, false);
    gate.release(0);
    let out = collect(&rx, 2);
    out[0].good("compare and write");
    out[1].good("the plain write, after it");
    assert_eq!(
        gate.arrivals()[before..],
        [(Read, 10, 1), (Write, 10, 1), (Write, 10, 1)],
        "read, the compare-and-write's write, then the plain write"
    );
    assert_eq!(gate.contents(10, 1), z, "the plain write came last");
    for r in 0..2 {
        framework::call(r, move || CHANNELS.with(|c| c.borrow_mut().retain(|(bdev, _), _| bdev != name))).unwrap();
    }
}

/// SYNCHRONIZE CACHE (10) and (16) reach the bdev as one Flush each (the gate bdev records
/// what reaches it); on a bdev without a cache to flush they succeed and send nothing.
#[test]
fn synchronize_cache_reaches_the_bdev_as_a_flush() {
    testing::reactors();
    use crate::bdev::{test_gate, IoType};
    for (name, flush) in [("t_scsi_sync_flush", true), ("t_scsi_sync_noflush", false)] {
        let gate = test_gate::create_with(name, BLOCKS, BS as u32, flush);
        let u = Unit::on(name, false);
        u.run(Cmd::none(&c10(op::SYNCHRONIZE_CACHE_10, 0, 0, 0))).good("SYNCHRONIZE CACHE (10)");
        u.run(Cmd::none(&c16(op::SYNCHRONIZE_CACHE_16, 0, 8, 8))).good("SYNCHRONIZE CACHE (16)");
        let want = if flush { vec![(IoType::Flush, 0, 0); 2] } else { vec![] };
        assert_eq!(gate.arrivals(), want, "{name}: what reached the bdev");
        framework::call(0, move || CHANNELS.with(|c| c.borrow_mut().retain(|(bdev, _), _| bdev != name))).unwrap();
    }
}

/// The LBA status descriptors of GET LBA STATUS data: (lba, blocks, provisioning status).
fn lba_status(data: &[u8]) -> Vec<(u64, u32, u8)> {
    let len = u32::from_be_bytes(data[0..4].try_into().unwrap()) as usize + 4;
    data[8..len]
        .chunks(16)
        .map(|c| {
            (u64::from_be_bytes(c[0..8].try_into().unwrap()), u32::from_be_bytes(c[8..12].try_into().unwrap()), c[12])
        })
        .collect()
}

/// GET LBA STATUS on a thin unit answers from the bdev's allocation map: a uring bdev on a
/// sparse file reports its holes deallocated (1) and written blocks mapped (0), in several
/// descriptors up to the allocation length; an UNMAP (a punched hole) is deallocated again.
/// READ CAPACITY (16) says LBPME and the provisioning VPD page thin, consistently.
#[test]
fn get_lba_status_reports_the_holes_of_a_sparse_file() {
    testing::reactors();
    crate::app::mark_initialised();
    let name = "t_scsi_sparse";
    let path = std::env::temp_dir().join(format!("ferry-unit-{name}-{}.img", std::process::id()));
    std::fs::File::create(&path).unwrap().set_len(4 << 20).unwrap();
    crate::rpc::call("bdev_uring_create", Some(serde_json::json!({"name": name, "filename": path, "block_size": 512})))
        .map_err(|e| e.message)
        .unwrap();
    let u = Unit::on(name, false);
    let blocks = 8192u64;
    let status_at = |lba: u64, alloc: u32| {
        let o = u.run(Cmd::din(&sai16(op::SAI_GET_LBA_STATUS, lba, alloc), alloc as usize));
        o.good("GET LBA STATUS");
        lba_status(&o.data)
    };
    assert_eq!(status_at(0, 4096), vec![(0, blocks as u32, 1)], "a fresh sparse file is one hole");
    // 4 KiB-aligned writes: the file system backs exactly those blocks.
    u.write(8, &pattern(1, 8));
    u.write(64, &pattern(2, 16));
    assert_eq!(
        status_at(0, 4096),
        vec![(0, 8, 1), (8, 8, 0), (16, 48, 1), (64, 16, 0), (80, blocks as u32 - 80, 1)],
        "holes deallocated, written blocks mapped"
    );
    assert_eq!(status_at(12, 4096)[0], (12, 4, 0), "from inside a mapped run");
    assert_eq!(status_at(0, 8 + 2 * 16), vec![(0, 8, 1), (8, 8, 0)], "as many as the allocation length holds");
    let o = u.run(Cmd::din(&sai16(op::SAI_GET_LBA_STATUS, 0, 16), 16));
    o.good("short allocation length").moved(16, 0, "header and half a descriptor");
    assert_eq!(u32::from_be_bytes(o.data[0..4].try_into().unwrap()), 20, "PARAMETER DATA LENGTH of the one descriptor");
    // UNMAP punches a hole: deallocated again.
    u.run(Cmd::dout(&unmap_cdb(24), &unmap_list(&[(8, 8)]))).good("unmap");
    assert_eq!(status_at(0, 4096), vec![(0, 64, 1), (64, 16, 0), (80, blocks as u32 - 80, 1)], "the unmapped blocks");
    // Consistent with thin provisioning being announced.
    let o = u.run(Cmd::din(&sai16(op::SAI_READ_CAPACITY_16, 0, 32), 32));
    assert_eq!(o.good("READ CAPACITY (16)").data[14] & 0xC0, 0xC0, "LBPME and LBPRZ");
    let o = u.run(Cmd::din(&inquiry(true, 0xB2, 255), 255));
    let page = &o.good("provisioning VPD").data;
    assert_eq!((page[5] & 0x84, page[6] & 0x07), (0x84, 0x02), "LBPU and LBPRZ; thin");
    drop(u);
    for r in 0..2 {
        framework::call(r, move || CHANNELS.with(|c| c.borrow_mut().retain(|(bdev, _), _| bdev != name))).unwrap();
    }
    crate::bdev::registry::unregister(name, None).unwrap();
    let _ = std::fs::remove_file(path);
}

#[test]
fn management_commands_through_execute() {
    let u = Unit::malloc("t_scsi_mgmt", BLOCKS, false);
    u.run(Cmd::none(&TUR)).good("TEST UNIT READY").moved(0, 0, "TUR");
    u.run(Cmd::none(&[op::START_STOP_UNIT, 0, 0, 0, 0x01, 0])).good("START STOP UNIT start");
    u.run(Cmd::none(&[op::START_STOP_UNIT, 0, 0, 0, 0x00, 0])).good("START STOP UNIT stop");

    // REQUEST SENSE with nothing pending: NO SENSE.
    let o = u.run(Cmd::din(&request_sense(252), 252));
    o.good("REQUEST SENSE").moved(18, 252 - 18, "sense data");
    assert_eq!((o.data[0], o.data[2] & 0x0F, o.data[12], o.data[13]), (0x70, key::NO_SENSE, 0, 0));
    let o = u.run(Cmd::din(&request_sense(8), 252));
    o.good("REQUEST SENSE, 8 bytes").moved(8, 244, "truncated");
    u.run(Cmd::din(&[op::REQUEST_SENSE, 0x01, 0, 0, 252, 0], 252)).invalid_cdb(1, Some(0), "descriptor format");

    // INQUIRY: the standard data, truncated to the allocation length.
    let o = u.run(Cmd::din(&inquiry(false, 0, 255), 255));
    let len = o.data[4] as u64 + 5;
    o.good("INQUIRY").moved(len, 255 - len, "standard data");
    assert_eq!(o.data[0], 0x00, "direct access block device");
    assert_eq!(&o.data[16..27], b"Malloc disk", "product from the bdev");
    let o = u.run(Cmd::din(&inquiry(false, 0, 5), 96));
    o.good("INQUIRY, 5 bytes").moved(5, 91, "truncated INQUIRY");
    assert!(o.data[5..].iter().all(|&b| b == 0xEE), "nothing past the allocation length");
    let o = u.run(Cmd::din(&inquiry(true, 0x00, 255), 255));
    assert_eq!(o.good("supported VPD pages").data[1], 0x00, "page code");
    let o = u.run(Cmd::din(&inquiry(true, 0xB0, 255), 255));
    assert_eq!(o.good("block limits").data[1], 0xB0);
    u.run(Cmd::din(&inquiry(false, 0x80, 255), 255)).invalid_cdb(2, None, "page code without EVPD");
    u.run(Cmd::din(&inquiry(true, 0x42, 255), 255)).invalid_cdb(2, None, "unknown VPD page");
    u.run(Cmd::none(&inquiry(false, 0, 255))).invalid_cdb(0, None, "data-in command without a buffer");
    u.run(Cmd::none(&inquiry(false, 0, 0))).good("allocation length 0").moved(0, 0, "nothing");

    // READ CAPACITY (10) and (16).
    let o = u.run(Cmd::din(&[op::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8));
    o.good("READ CAPACITY (10)").moved(8, 0, "8 bytes");
    assert_eq!(&o.data[..], &[0, 0, 0x0F, 0xFF, 0, 0, 2, 0], "last LBA 4095, 512-byte blocks");
    let o = u.run(Cmd::din(&sai16(op::SAI_READ_CAPACITY_16, 0, 32), 64));
    o.good("READ CAPACITY (16)").moved(32, 32, "32 bytes");
    assert_eq!(u64::from_be_bytes(o.data[0..8].try_into().unwrap()), BLOCKS - 1);
    assert_eq!(u32::from_be_bytes(o.data[8..12].try_into().unwrap()), BS as u32);
    assert_eq!(o.data[14] & 0xC0, 0xC0, "LBPME and LBPRZ: malloc unmaps to zeroes");
    u.run(Cmd::din(&sai16(op::SAI_READ_CAPACITY_16, 0, 12), 64)).good("truncated").moved(12, 52, "12 bytes");
    u.run(Cmd::din(&sai16(0x1F, 0, 32), 32)).invalid_cdb(1, None, "unknown service action");

    // MODE SENSE: the caching page, with WCE (malloc "has" a cache to flush).
    let o = u.run(Cmd::din(&[op::MODE_SENSE_6, 0x08, 0x08, 0, 255, 0], 255));
    let len = o.data[0] as u64 + 1;
    o.good("MODE SENSE (6) caching").moved(len, 255 - len, "mode data");
    assert_eq!((o.data[3], o.data[4] & 0x3F), (0, 0x08), "no block descriptor, caching page");
    assert_eq!(o.data[6] & 0x04, 0x04, "WCE");
    let o = u.run(Cmd::din(&[op::MODE_SENSE_6, 0, 0x3F, 0, 4, 0], 255));
    o.good("MODE SENSE (6), 4 bytes").moved(4, 251, "header only");
    let o = u.run(Cmd::din(&[op::MODE_SENSE_10, 0, 0x3F, 0, 0, 0, 0, 0x01, 0x00, 0], 256));
    let len = u16::from_be_bytes([o.data[0], o.data[1]]) as u64 + 2;
    o.good("MODE SENSE (10)").moved(len, 256 - len, "mode data (10)");
    assert_eq!(u16::from_be_bytes([o.data[6], o.data[7]]), 8, "one block descriptor");
    u.run(Cmd::din(&[op::MODE_SENSE_6, 0, 0x3F | 0xC0, 0, 255, 0], 255))
        .check(key::ILLEGAL_REQUEST, asc::SAVING_NOT_SUPPORTED, "saved values")
        .field(true, 2, Some(7), "PC");

    // REPORT SUPPORTED OPERATION CODES: all of them, then truncated.
    let o = u.run(Cmd::din(&c12_alloc(op::MAINTENANCE_IN, op::MI_REPORT_SUPPORTED_OPCODES, 4096), 4096));
    let len = u32::from_be_bytes(o.data[0..4].try_into().unwrap()) as u64 + 4;
    o.good("REPORT SUPPORTED OPERATION CODES").moved(len, 4096 - len, "all commands");
    let listed: Vec<u8> = o.data[4..len as usize].chunks(8).map(|d| d[0]).collect();
    for opc in [op::READ_16, op::WRITE_SAME_16, op::UNMAP, op::COMPARE_AND_WRITE, op::INQUIRY] {
        assert!(listed.contains(&opc), "opcode {opc:#x} listed");
    }
    u.run(Cmd::din(&c12_alloc(op::MAINTENANCE_IN, op::MI_REPORT_SUPPORTED_OPCODES, 10), 4096))
        .good("truncated")
        .moved(10, 4086, "10 bytes");
    u.run(Cmd::din(&c12_alloc(op::MAINTENANCE_IN, 0x05, 4096), 4096)).check(
        key::ILLEGAL_REQUEST,
        asc::INVALID_OPCODE,
        "other MAINTENANCE IN service actions",
    );

    // GET LBA STATUS: one descriptor from the LBA to the end, mapped.
    let o = u.run(Cmd::din(&sai16(op::SAI_GET_LBA_STATUS, 100, 64), 64));
    o.good("GET LBA STATUS").moved(24, 40, "one descriptor");
    assert_eq!(u64::from_be_bytes(o.data[8..16].try_into().unwrap()), 100);
    assert_eq!(u32::from_be_bytes(o.data[16..20].try_into().unwrap()) as u64, BLOCKS - 100);
    u.run(Cmd::din(&sai16(op::SAI_GET_LBA_STATUS, 100, 8), 64)).good("truncated").moved(8, 56, "header only");
    u.run(Cmd::din(&sai16(op::SAI_GET_LBA_STATUS, BLOCKS, 64), 64)).check(
        key::ILLEGAL_REQUEST,
        asc::LBA_OUT_OF_RANGE,
        "GET LBA STATUS past the end",
    );

    // Unknown operation codes, in a defined and in a reserved group; REPORT LUNS is the target's.
    for opc in [0x02u8, 0x5D, 0xC0, 0xFF] {
        u.run(Cmd::none(&[opc, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]))
            .check(key::ILLEGAL_REQUEST, asc::INVALID_OPCODE, "unknown opcode")
            .field(true, 0, None, "operation code");
    }
    u.run(Cmd::din(&c12_alloc(op::REPORT_LUNS, 0, 64), 64)).check(
        key::ILLEGAL_REQUEST,
        asc::INVALID_OPCODE,
        "REPORT LUNS addressed to the unit",
    );
    // CDBs shorter than their group's length.
    u.run(Cmd::din(&[op::INQUIRY, 0, 0, 0], 96)).invalid_cdb(0, None, "4-byte INQUIRY");
    u.run(Cmd::din(&[op::MODE_SENSE_10, 0, 0x3F, 0, 0, 0], 96)).invalid_cdb(0, None, "6-byte MODE SENSE (10)");
    u.run(Cmd::din(&c10(op::SERVICE_ACTION_IN_16, 0x10, 0, 0), 32)).invalid_cdb(0, None, "10-byte SAI (16)");
    u.run(Cmd::none(&[op::TEST_UNIT_READY])).invalid_cdb(0, None, "1-byte TEST UNIT READY");
}

#[test]
fn mode_select_changes_write_cache_and_tells_other_nexuses() {
    let u = Unit::malloc("t_scsi_mode", BLOCKS, false);
    u.attach(&u.b);
    let caching = |u: &Unit| {
        let o = u.run(Cmd::din(&[op::MODE_SENSE_6, 0x08, 0x08, 0, 255, 0], 255));
        o.good("MODE SENSE caching");
        o.data[4..4 + 2 + o.data[5] as usize].to_vec()
    };
    // A MODE SELECT (6) list: a header without block descriptors and the caching page.
    let list = |page: &[u8], wce: bool| {
        let mut l = vec![0u8, 0, 0, 0];
        let mut p = page.to_vec();
        p[0] &= 0x7F; // PS is reserved in MODE SELECT
        p[2] = (p[2] & !0x04) | if wce { 0x04 } else { 0 };
        l.extend_from_slice(&p);
        l
    };
    let page = caching(&u);
    assert_eq!(page[2] & 0x04, 0x04, "WCE on to begin with");

    // WCE off: the issuer gets no unit attention, the other nexus MODE PARAMETERS CHANGED once.
    let off = list(&page, false);
    u.run(Cmd::dout(&[op::MODE_SELECT_6, 0x10, 0, 0, off.len() as u8, 0], &off)).good("WCE off").moved(
        off.len() as u64,
        0,
        "list taken",
    );
    assert_eq!(caching(&u)[2] & 0x04, 0, "WCE off");
    u.run(Cmd::none(&TUR)).good("no unit attention for the issuer");
    u.run_as(&u.b, Cmd::none(&TUR)).check(key::UNIT_ATTENTION, asc::MODE_PARAMETERS_CHANGED, "other nexus");
    u.run_as(&u.b, Cmd::none(&TUR)).good("reported once");
    // Without the write cache every write is flushed.
    let (flushes, _, _) = u.io_counts();
    u.write(0, &pattern(1, 1));
    assert_eq!(u.io_counts().0, flushes + 1, "write-through: a flush after the write");
    // ... and every other write command too (SBC-3: WCE 0, GOOD only once on the medium).
    let (flushes, _, _) = u.io_counts();
    u.run(Cmd::dout(&caw(0, 1, false), &[pattern(1, 1), pattern(3, 1)].concat())).good("caw, write-through");
    assert_eq!(u.io_counts().0, flushes + 1, "write-through: compare and write flushed");
    let (flushes, _, _) = u.io_counts();
    u.run(Cmd::dout(&c16(op::WRITE_SAME_16, 0, 0, BLOCKS as u32), &pattern(4, 1))).good("write same, pattern");
    assert_eq!(u.io_counts().0, flushes + 1, "write-through: write same flushed once, after every chunk");
    let (flushes, _, _) = u.io_counts();
    u.run(Cmd::dout(&c10(op::WRITE_SAME_10, 0, 0, 8), &[0; BS])).good("write same, zeroes");
    assert_eq!(u.io_counts().0, flushes + 2, "write-through: write-zeroes, then a flush");
    let (flushes, unmaps, _) = u.io_counts();
    u.run(Cmd::none(&c16(op::WRITE_SAME_16, 0x09, 0, 8))).good("write same, unmap");
    assert_eq!(u.io_counts().0, flushes + 1, "write-through: unmap, then a flush");
    assert_eq!(u.io_counts().1, unmaps + 1);
    // The same value again: nothing changed, no unit attention.
    u.run(Cmd::dout(&[op::MODE_SELECT_6, 0x10, 0, 0, off.len() as u8, 0], &off)).good("WCE off again");
    u.run_as(&u.b, Cmd::none(&TUR)).good("nothing changed");
    // MODE SELECT (10) turns it back on, from the other nexus this time.
    let mut on = vec![0u8; 8];
    on.extend_from_slice(&list(&page, true)[4..]);
    let l = (on.len() as u16).to_be_bytes();
    u.run_as(&u.b, Cmd::dout(&[op::MODE_SELECT_10, 0x10, 0, 0, 0, 0, 0, l[0], l[1], 0], &on)).good("WCE on");
    u.run(Cmd::none(&TUR)).check(key::UNIT_ATTENTION, asc::MODE_PARAMETERS_CHANGED, "now the first nexus");
    u.run_as(&u.b, Cmd::none(&TUR)).good("the issuer");
    let (flushes, _, _) = u.io_counts();
    u.write(0, &pattern(2, 1));
    assert_eq!(u.io_counts().0, flushes, "write-back again: no flush");

    // Refusals: a buffer shorter than the list, PF 0, SP 1, a changed unchangeable field.
    u.run(Cmd::dout(&[op::MODE_SELECT_6, 0x10, 0, 0, off.len() as u8, 0], &off[..off.len() - 1])).check(
        key::ILLEGAL_REQUEST,
        asc::PARAM_LIST_LENGTH,
        "short buffer",
    );
    u.run(Cmd::none(&[op::MODE_SELECT_6, 0x10, 0, 0, off.len() as u8, 0])).check(
        key::ILLEGAL_REQUEST,
        asc::PARAM_LIST_LENGTH,
        "no buffer",
    );
    u.run(Cmd::dout(&[op::MODE_SELECT_6, 0x00, 0, 0, off.len() as u8, 0], &off)).invalid_cdb(1, Some(4), "PF 0");
    u.run(Cmd::dout(&[op::MODE_SELECT_6, 0x11, 0, 0, off.len() as u8, 0], &off)).invalid_cdb(1, Some(0), "SP 1");
    let mut bad = off.clone();
    bad[4 + 2] |= 0x01; // RCD: not changeable
    u.run(Cmd::dout(&[op::MODE_SELECT_6, 0x10, 0, 0, bad.len() as u8, 0], &bad))
        .check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_PARAM, "unchangeable bit")
        .field(false, 6, Some(0), "RCD");
    assert_eq!(caching(&u)[2] & 0x04, 0x04, "refused lists changed nothing");
    u.run(Cmd::none(&[op::MODE_SELECT_6, 0x10, 0, 0, 0, 0])).good("empty list");
    u.run_as(&u.b, Cmd::none(&TUR)).good("no unit attention after refusals");
}

#[test]
fn unit_attentions_are_per_nexus_and_reported_once() {
    let u = Unit::malloc("t_scsi_ua", BLOCKS, false);
    let c = nexus("t_scsi_ua-c");
    u.attach(&u.b);
    u.run(Cmd::none(&TUR)).good("nothing pending");
    u.lun.capacity_changed();
    u.lun.capacity_changed(); // the same condition twice is one unit attention
                              // INQUIRY, REPORT LUNS and REQUEST SENSE-less commands: INQUIRY does not consume it.
    u.run(Cmd::din(&inquiry(false, 0, 96), 96)).good("INQUIRY passes a pending unit attention");
    let target = Arc::new(ScsiTarget::new(0, "t.Target0", vec![u.lun.clone()]));
    run_target(&target, Some(&u.lun), &u.a, Cmd::din(&c12_alloc(op::REPORT_LUNS, 0, 64), 64)).good("REPORT LUNS");
    // A block command gets the unit attention instead of running.
    let o = u.run(Cmd::din(&c10(op::READ_10, 0, 0, 1), BS));
    o.check(key::UNIT_ATTENTION, asc::CAPACITY_CHANGED, "first command after the change")
        .moved(0, BS as u64, "no data");
    assert!(o.data.iter().all(|&b| b == 0xEE), "no data moved");
    u.run(Cmd::din(&c10(op::READ_10, 0, 0, 1), BS)).good("reported once");
    // The other nexus has its own: REQUEST SENSE reports it (as data, GOOD) and clears it.
    let o = u.run_as(&u.b, Cmd::din(&request_sense(18), 18));
    o.good("REQUEST SENSE with a unit attention pending").moved(18, 0, "sense data");
    assert_eq!((o.data[2] & 0x0F, o.data[12], o.data[13]), (key::UNIT_ATTENTION, 0x2A, 0x09));
    u.run_as(&u.b, Cmd::none(&TUR)).good("cleared by REQUEST SENSE");
    let o = u.run_as(&u.b, Cmd::din(&request_sense(18), 18));
    assert_eq!(o.good("nothing left").data[2] & 0x0F, key::NO_SENSE);
    // A nexus that had not used the unit yet heard nothing.
    u.run_as(&c, Cmd::none(&TUR)).good("a new nexus");

    // Several conditions queue up, oldest first, each reported once.
    u.lun.unit_attention(&u.a, asc::REPORTED_LUNS_CHANGED);
    u.lun.capacity_changed();
    u.run(Cmd::none(&TUR)).check(key::UNIT_ATTENTION, asc::REPORTED_LUNS_CHANGED, "oldest first");
    u.run(Cmd::none(&TUR)).check(key::UNIT_ATTENTION, asc::CAPACITY_CHANGED, "then the next");
    u.run(Cmd::none(&TUR)).good("then none");
    u.run_as(&c, Cmd::none(&TUR)).check(key::UNIT_ATTENTION, asc::CAPACITY_CHANGED, "c has used the unit now");
    u.run_as(&u.b, Cmd::none(&TUR)).check(key::UNIT_ATTENTION, asc::CAPACITY_CHANGED, "b too");
    u.run_as(&u.b, Cmd::none(&TUR)).good("b: once");
    // REPORT LUNS clears "REPORTED LUNS DATA HAS CHANGED" (and only that).
    u.lun.unit_attention(&u.a, asc::REPORTED_LUNS_CHANGED);
    u.lun.unit_attention(&u.a, asc::MODE_PARAMETERS_CHANGED);
    run_target(&target, Some(&u.lun), &u.a, Cmd::din(&c12_alloc(op::REPORT_LUNS, 0, 64), 64)).good("REPORT LUNS");
    u.run(Cmd::none(&TUR)).check(key::UNIT_ATTENTION, asc::MODE_PARAMETERS_CHANGED, "the other stays");
    u.run(Cmd::none(&TUR)).good("luns-changed was cleared by REPORT LUNS");
    // Management commands get it too (except the three).
    u.lun.capacity_changed();
    u.run(Cmd::din(&[op::MODE_SENSE_6, 0, 0x3F, 0, 255, 0], 255)).check(
        key::UNIT_ATTENTION,
        asc::CAPACITY_CHANGED,
        "MODE SENSE reports it",
    );
}

/// Runs `cmd` from `who` through `target::dispatch` (with the unit's channel when `lun` is
/// given, as a transport does for an existing LUN; without one for a missing LUN).
#[track_caller]
fn run_target(target: &Arc<ScsiTarget>, lun: Option<&Arc<ScsiLun>>, who: &Arc<Nexus>, cmd: Cmd) -> Outcome {
    let (tx, rx) = mpsc::channel();
    let (target, lun, who) = (target.clone(), lun.cloned(), who.clone());
    framework::call(0, move || {
        let lc = lun.map(|l| channel(&l, &who));
        submit(cmd, who, tx, |t| target::dispatch(&target, lc.as_ref(), t));
    })
    .unwrap();
    rx.recv_timeout(WAIT).expect("the command finished")
}

#[test]
fn report_luns_and_absent_luns_through_the_target() {
    let u = Unit::malloc("t_scsi_tgt", BLOCKS, false);
    null::create("t_scsi_tgt_null", 1024, BS as u32, None).unwrap();
    let desc = crate::bdev::open("t_scsi_tgt_null", false, Box::new(|_, _| {})).unwrap();
    let second = Arc::new(ScsiLun::new(300, desc, "t.Target0", 1, true));
    let target = Arc::new(ScsiTarget::new(0, "t.Target0", vec![second.clone(), u.lun.clone()]));
    // Both LUNs, ascending: 0 in peripheral addressing, 300 in flat space addressing.
    let o = run_target(&target, Some(&u.lun), &u.a, Cmd::din(&c12_alloc(op::REPORT_LUNS, 0, 256), 256));
    o.good("REPORT LUNS").moved(24, 232, "two LUNs");
    assert_eq!(u32::from_be_bytes(o.data[0..4].try_into().unwrap()), 16, "LUN LIST LENGTH");
    assert_eq!(&o.data[8..16], &[0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&o.data[16..24], &[0x41, 0x2C, 0, 0, 0, 0, 0, 0]);
    let o = run_target(&target, Some(&u.lun), &u.a, Cmd::din(&c12_alloc(op::REPORT_LUNS, 0, 16), 256));
    o.good("REPORT LUNS truncated").moved(16, 240, "one LUN's worth");
    assert_eq!(u32::from_be_bytes(o.data[0..4].try_into().unwrap()), 16, "the full list length anyway");
    run_target(&target, Some(&u.lun), &u.a, Cmd::din(&c12_alloc(op::REPORT_LUNS, 0, 8), 256)).invalid_cdb(
        6,
        None,
        "allocation length under 16",
    );
    let mut select = c12_alloc(op::REPORT_LUNS, 0, 256);
    select[2] = 0x03;
    run_target(&target, Some(&u.lun), &u.a, Cmd::din(&select, 256)).invalid_cdb(2, None, "unknown SELECT REPORT");
    let o = run_target(&target, None, &u.a, Cmd::din(&c12_alloc(op::REPORT_LUNS, 0, 256), 256));
    o.good("REPORT LUNS sent to a missing LUN").moved(24, 232, "the same list");
    // The second unit is reachable through the target too.
    let o = run_target(&target, Some(&second), &u.a, Cmd::din(&sai16(op::SAI_READ_CAPACITY_16, 0, 32), 32));
    assert_eq!(u64::from_be_bytes(o.good("READ CAPACITY of LUN 300").data[0..8].try_into().unwrap()), 1023);
    // A missing LUN: INQUIRY says "no unit here", REQUEST SENSE explains, the rest fail.
    let o = run_target(&target, None, &u.a, Cmd::din(&inquiry(false, 0, 96), 96));
    o.good("INQUIRY to a missing LUN").moved(36, 60, "standard data");
    assert_eq!(o.data[0], 0x7F, "peripheral qualifier 011b, type 1Fh");
    let o = run_target(&target, None, &u.a, Cmd::din(&inquiry(false, 0, 4), 96));
    o.good("truncated").moved(4, 92, "4 bytes");
    let o = run_target(&target, None, &u.a, Cmd::din(&request_sense(18), 18));
    o.good("REQUEST SENSE to a missing LUN").moved(18, 0, "sense data");
    assert_eq!((o.data[2] & 0x0F, o.data[12], o.data[13]), (key::ILLEGAL_REQUEST, 0x25, 0x00));
    for (cmd, why) in [
        (Cmd::none(&TUR), "TEST UNIT READY"),
        (Cmd::din(&c10(op::READ_10, 0, 0, 1), BS), "READ (10)"),
        (Cmd::dout(&c10(op::WRITE_10, 0, 0, 1), &[0; BS]), "WRITE (10)"),
        (Cmd::din(&inquiry(true, 0x80, 96), 96), "INQUIRY for a VPD page"),
        (Cmd::din(&sai16(op::SAI_READ_CAPACITY_16, 0, 32), 32), "READ CAPACITY (16)"),
    ] {
        let o = run_target(&target, None, &u.a, cmd);
        o.check(key::ILLEGAL_REQUEST, asc::LUN_NOT_SUPPORTED, why);
        assert_eq!(o.transferred, 0, "{why}: nothing moved");
    }
}

/// A PERSISTENT RESERVE OUT CDB for service action `sa` and reservation type `rtype`.
fn pr_out(sa: u8, rtype: u8) -> [u8; 10] {
    [op::PERSISTENT_RESERVE_OUT, sa, rtype, 0, 0, 0, 0, 0, 24, 0]
}

/// A PERSISTENT RESERVE OUT parameter list: reservation key and service action key.
fn pr_params(key: u64, sa_key: u64) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p
}

#[test]
fn reservations_are_enforced_through_execute() {
    let u = Unit::malloc("t_scsi_pr", BLOCKS, false);
    let (a, b) = (u.a.clone(), u.b.clone());
    let write = || Cmd::dout(&c10(op::WRITE_10, 0, 0, 1), &pattern(1, 1));
    let read = || Cmd::din(&c10(op::READ_10, 0, 0, 1), BS);
    // A registers and reserves Write Exclusive.
    u.run_as(&a, Cmd::dout(&pr_out(0x00, 0), &pr_params(0, 0xABC))).good("REGISTER").moved(24, 0, "list");
    u.run_as(&a, Cmd::dout(&pr_out(0x01, 0x01), &pr_params(0xABC, 0))).good("RESERVE write exclusive");
    // B may read but not write.
    let o = u.run_as(&b, write());
    assert_eq!(o.status, status::RESERVATION_CONFLICT, "B's WRITE conflicts");
    assert!(o.sense.is_empty(), "no sense data with RESERVATION CONFLICT");
    assert_eq!(o.transferred, 0);
    for (cmd, why) in [
        (Cmd::none(&c10(op::SYNCHRONIZE_CACHE_10, 0, 0, 0)), "SYNCHRONIZE CACHE"),
        (Cmd::dout(&c10(op::WRITE_SAME_10, 0, 0, 1), &[1; BS]), "WRITE SAME"),
        (Cmd::dout(&unmap_cdb(24), &unmap_list(&[(0, 1)])), "UNMAP"),
        (Cmd::dout(&caw(0, 1, false), &[0; 2 * BS]), "COMPARE AND WRITE"),
    ] {
        assert_eq!(u.run_as(&b, cmd).status, status::RESERVATION_CONFLICT, "B's {why} conflicts");
    }
    u.run_as(&b, read()).good("B's READ passes");
    u.run_as(&b, Cmd::none(&TUR)).good("B's TEST UNIT READY passes");
    u.run_as(&b, Cmd::din(&inquiry(false, 0, 96), 96)).good("B's INQUIRY passes");
    u.run_as(&a, write()).good("the holder writes");
    assert_eq!(u.read(0, 1), pattern(1, 1));
    // B sees the reservation.
    let o = u.run_as(&b, Cmd::din(&[op::PERSISTENT_RESERVE_IN, 0x01, 0, 0, 0, 0, 0, 0, 64, 0], 64));
    o.good("READ RESERVATION").moved(24, 40, "one reservation");
    assert_eq!(u64::from_be_bytes(o.data[8..16].try_into().unwrap()), 0xABC, "holder's key");
    assert_eq!(o.data[21] & 0x0F, 0x01, "write exclusive");
    // Release, and B may write again; then A unregisters.
    u.run_as(&a, Cmd::dout(&pr_out(0x02, 0x01), &pr_params(0xABC, 0))).good("RELEASE");
    u.run_as(&b, write()).good("B writes once released");
    u.run_as(&a, Cmd::dout(&pr_out(0x00, 0), &pr_params(0xABC, 0))).good("unregister");

    // SPC-2 RESERVE (6): the other nexus gets RESERVATION CONFLICT even for reads.
    u.run_as(&a, Cmd::none(&[op::RESERVE_6, 0, 0, 0, 0, 0])).good("RESERVE (6)");
    assert_eq!(u.run_as(&b, read()).status, status::RESERVATION_CONFLICT, "B's READ conflicts");
    assert_eq!(u.run_as(&b, write()).status, status::RESERVATION_CONFLICT, "B's WRITE conflicts");
    assert_eq!(
        u.run_as(&b, Cmd::none(&[op::RESERVE_6, 0, 0, 0, 0, 0])).status,
        status::RESERVATION_CONFLICT,
        "B cannot reserve"
    );
    u.run_as(&b, Cmd::din(&inquiry(false, 0, 96), 96)).good("B's INQUIRY passes");
    u.run_as(&b, Cmd::din(&request_sense(18), 18)).good("B's REQUEST SENSE passes");
    u.run_as(&a, read()).good("A reads");
    u.run_as(&a, write()).good("A writes");
    u.run_as(&b, Cmd::none(&[op::RELEASE_6, 0, 0, 0, 0, 0])).good("RELEASE from B does nothing");
    assert_eq!(u.run_as(&b, read()).status, status::RESERVATION_CONFLICT, "still reserved");
    u.run_as(&a, Cmd::none(&[op::RELEASE_6, 0, 0, 0, 0, 0])).good("RELEASE (6)");
    u.run_as(&b, read()).good("B reads once released");
    u.run_as(&b, Cmd::none(&[op::RESERVE_10, 0, 0, 0, 0, 0, 0, 0, 0, 0])).good("B: RESERVE (10)");
    assert_eq!(u.run_as(&a, write()).status, status::RESERVATION_CONFLICT, "now A conflicts");
    u.run_as(&b, Cmd::none(&[op::RELEASE_10, 0, 0, 0, 0, 0, 0, 0, 0, 0])).good("RELEASE (10)");
    u.run_as(&a, write()).good("free again");
}

#[test]
fn logical_unit_reset_without_tasks_in_flight() {
    let u = Unit::malloc("t_scsi_reset", BLOCKS, false);
    u.attach(&u.b);
    u.run_as(&u.b, Cmd::none(&[op::RESERVE_6, 0, 0, 0, 0, 0])).good("B reserves (SPC-2)");
    let mut reset = tmf::start(&u.lun, TmfFunction::LogicalUnitReset, &u.a).expect("a reset starts");
    assert_eq!(reset.function(), TmfFunction::LogicalUnitReset);
    assert!(tmf::start(&u.lun, TmfFunction::AbortTaskSet, &u.b).is_none(), "one function at a time");
    poll_done(&mut reset, "nothing in flight");
    // Every nexus that used the unit gets 29/03 once (SAM-5 6.3.3): here only B had, and
    // its SPC-2 reservation is gone.
    u.run(Cmd::none(&TUR)).good("the issuer had not used the unit");
    u.run(Cmd::dout(&c10(op::WRITE_10, 0, 0, 1), &pattern(1, 1))).good("A writes: B's RESERVE was released");
    u.run_as(&u.b, Cmd::none(&TUR)).check(key::UNIT_ATTENTION, asc::BUS_DEVICE_RESET, "B after the reset");
    u.run_as(&u.b, Cmd::none(&TUR)).good("once");
    // The next function may start; CLEAR TASK SET tells the others COMMANDS CLEARED.
    let mut clear = tmf::start(&u.lun, TmfFunction::ClearTaskSet, &u.b).expect("free again");
    poll_done(&mut clear, "CLEAR TASK SET");
    u.run(Cmd::none(&TUR)).check(key::UNIT_ATTENTION, asc::COMMANDS_CLEARED, "A after B's CLEAR TASK SET");
    u.run_as(&u.b, Cmd::none(&TUR)).good("not the issuer");
    // Aborts do not make unit attentions.
    for f in [TmfFunction::AbortTaskSet, TmfFunction::AbortTask { tag: 7 }] {
        let mut t = tmf::start(&u.lun, f, &u.a).expect("free");
        poll_done(&mut t, &format!("{f:?} with nothing in flight"));
    }
    u.run_as(&u.b, Cmd::none(&TUR)).good("no unit attention from aborts");
    u.run(Cmd::none(&TUR)).good("nor for the issuer");
    // An I_T nexus reset: that nexus (only) hears I_T NEXUS LOSS OCCURRED, once.
    let mut t = tmf::start(&u.lun, TmfFunction::ItNexusReset, &u.a).expect("free");
    poll_done(&mut t, "I_T NEXUS RESET");
    u.run(Cmd::none(&TUR)).check(key::UNIT_ATTENTION, asc::I_T_NEXUS_LOSS, "the reset nexus");
    u.run(Cmd::none(&TUR)).good("once");
    u.run_as(&u.b, Cmd::none(&TUR)).good("not another nexus");
}

#[test]
fn a_logical_unit_reset_restores_default_mode_parameters() {
    let u = Unit::malloc("t_scsi_reset_mode", BLOCKS, false);
    let wce = |u: &Unit| {
        let o = u.run(Cmd::din(&[op::MODE_SENSE_6, 0x08, 0x08, 0, 64, 0], 64));
        o.good("MODE SENSE caching page").data[4 + 2] & 0x04 != 0
    };
    let default = wce(&u);
    // Turn WCE over with MODE SELECT (6): header, then the caching page as MODE SENSE gave it.
    let page = u.run(Cmd::din(&[op::MODE_SENSE_6, 0x08, 0x08, 0, 64, 0], 64)).good("MODE SENSE").data.clone();
    let mut params = vec![0u8; 4];
    params.extend_from_slice(&page[4..4 + 20]);
    params[4] &= 0x3F; // PS is reserved in MODE SELECT
    params[4 + 2] ^= 0x04;
    let mut cdb = [op::MODE_SELECT_6, 0x10, 0, 0, 0, 0];
    cdb[4] = params.len() as u8;
    u.run(Cmd::dout(&cdb, &params)).good("MODE SELECT flips WCE");
    assert_eq!(wce(&u), !default);
    let mut reset = tmf::start(&u.lun, TmfFunction::LogicalUnitReset, &u.a).expect("a reset starts");
    poll_done(&mut reset, "the reset");
    u.run(Cmd::none(&TUR)).check(key::UNIT_ATTENTION, asc::BUS_DEVICE_RESET, "the issuer hears of the reset");
    assert_eq!(wce(&u), default, "back to the default after a logical unit reset");
}

/// Polls a task management function with nothing covered in flight until it completes (its
/// epoch barrier passes through the other reactors first).
#[track_caller]
fn poll_done(t: &mut TmfInProgress, what: &str) {
    let deadline = Instant::now() + WAIT;
    while !t.poll() {
        assert!(Instant::now() < deadline, "{what}: never completed");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The task management function being waited for, shared with the reactor that polls it.
type Running = Arc<Mutex<Option<TmfInProgress>>>;

/// Submits `cmds` (from their nexuses) on reactor 0 and, in the same turn of the reactor (so
/// every block command among them is still in flight), starts `function` from `from`; then
/// submits `after` (tasks that start after the function). Returns the running function.
fn start_with_tasks(
    u: &Unit,
    cmds: Vec<(Arc<Nexus>, Cmd)>,
    function: TmfFunction,
    from: &Arc<Nexus>,
    after: Vec<(Arc<Nexus>, Cmd)>,
    tx: Sender<Outcome>,
) -> Running {
    let (lun, from) = (u.lun.clone(), from.clone());
    framework::call(0, move || {
        for (who, cmd) in cmds {
            let lc = channel(&lun, &who);
            submit(cmd, who, tx.clone(), |t| {
                let r = lun::execute(&lc, t);
                assert!(r.is_none(), "the block command is in flight");
                r
            });
        }
        let mut run = tmf::start(&lun, function, &from).expect("the function starts");
        assert!(tmf::start(&lun, TmfFunction::LogicalUnitReset, &from).is_none(), "a second one must wait");
        assert!(!run.poll(), "tasks in flight: not complete");
        for (who, cmd) in after {
            let lc = channel(&lun, &who);
            submit(cmd, who, tx.clone(), |t| lun::execute(&lc, t));
        }
        Arc::new(Mutex::new(Some(run)))
    })
    .unwrap()
}

/// Polls `run` on reactor 0 until it completes, checking each time that it is complete
/// exactly when all `covered` tasks (counted by `finished`) have finished. Polling on the
/// reactor that runs the tasks makes this exact: no task finishes halfway through a poll.
#[track_caller]
fn wait_complete(run: &Running, finished: &Arc<AtomicUsize>, covered: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (run2, fin) = (run.clone(), finished.clone());
        let (done, before) = framework::call(0, move || {
            let before = fin.load(Ordering::SeqCst);
            let mut g = run2.lock().unwrap();
            let done = g.as_mut().expect("running").poll();
            if done {
                *g = None;
            }
            (done, before)
        })
        .unwrap();
        if done {
            assert_eq!(before, covered, "complete only once every covered task has finished");
            return;
        }
        // Not complete yet: tasks are still running, or the epoch barrier has not passed
        // through every reactor.
        assert!(before <= covered);
        assert!(Instant::now() < deadline, "the function never completed ({before} of {covered} finished)");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn task_management_aborts_tasks_in_flight() {
    let u = Unit::malloc("t_scsi_abort", BLOCKS, false);
    let (a, b) = (u.a.clone(), u.b.clone());
    u.write(0, &pattern(1, 1));
    let block = pattern(9, 1);
    let ws = |tag| Cmd::dout(&c16(op::WRITE_SAME_16, 0, 0, BLOCKS as u32), &block).tag(tag);
    let rd = |tag| Cmd::din(&c10(op::READ_10, 0, 8, 8), 8 * BS).tag(tag);

    // ABORT TASK SET from A: A's tasks (several bdev I/Os each, a COMPARE AND WRITE among
    // them) are aborted; B's task and a task started after the function are not.
    let finished = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    let mut cmds: Vec<(Arc<Nexus>, Cmd)> = (1..=6).map(|t| (a.clone(), ws(t).counted(&finished))).collect();
    cmds.push((a.clone(), rd(7).counted(&finished)));
    let caw_data = [pattern(1, 1), block.clone()].concat();
    cmds.push((a.clone(), Cmd::dout(&caw(0, 1, false), &caw_data).tag(8).counted(&finished)));
    cmds.push((b.clone(), rd(100).counted(&finished)));
    let after = vec![(a.clone(), rd(200))];
    let run = start_with_tasks(&u, cmds, TmfFunction::AbortTaskSet, &a, after, tx);
    wait_complete(&run, &finished, 9);
    let out = collect(&rx, 10);
    for o in &out[..8] {
        o.task_aborted(&format!("A's task {}", o.tag));
    }
    out[8].good("B's task");
    assert_eq!(out[8].tag, 100);
    out[9].good("the task that started after the function");
    assert_eq!(out[9].tag, 200);
    // The aborted COMPARE AND WRITE released its interlock; the next function may start.
    u.run(Cmd::dout(&caw(100, 1, false), &[block.clone(), block.clone()].concat())).good("a new COMPARE AND WRITE");

    // ABORT TASK: only A's task with that tag (not B's task with the same tag).
    let finished = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    let cmds = vec![
        (a.clone(), rd(1).counted(&finished)),
        (a.clone(), ws(2).counted(&finished)),
        (a.clone(), rd(3).counted(&finished)),
        (b.clone(), ws(2).counted(&finished)),
    ];
    let run = start_with_tasks(&u, cmds, TmfFunction::AbortTask { tag: 2 }, &a, Vec::new(), tx);
    wait_complete(&run, &finished, 4);
    let mut out = collect(&rx, 4);
    out.sort_by_key(|o| (o.tag, o.aborted));
    let aborted: Vec<(u64, bool)> = out.iter().map(|o| (o.tag, o.aborted)).collect();
    assert_eq!(aborted, vec![(1, false), (2, false), (2, true), (3, false)], "only A's task 2");
    for o in out.iter().filter(|o| !o.aborted) {
        o.good("not covered by ABORT TASK");
    }
    out.iter().find(|o| o.aborted).unwrap().task_aborted("A's tag 2");

    // CLEAR TASK SET and LOGICAL UNIT RESET: every nexus's tasks; the others hear of it.
    for (function, code) in
        [(TmfFunction::ClearTaskSet, asc::COMMANDS_CLEARED), (TmfFunction::LogicalUnitReset, asc::BUS_DEVICE_RESET)]
    {
        let finished = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        let cmds = vec![
            (a.clone(), ws(1).counted(&finished)),
            (b.clone(), ws(2).counted(&finished)),
            (b.clone(), rd(3).counted(&finished)),
        ];
        let run = start_with_tasks(&u, cmds, function, &a, Vec::new(), tx);
        wait_complete(&run, &finished, 3);
        for o in collect(&rx, 3) {
            o.task_aborted(&format!("{function:?}: task {}", o.tag));
        }
        if function == TmfFunction::LogicalUnitReset {
            u.run(Cmd::none(&TUR)).check(key::UNIT_ATTENTION, code, "a reset: the issuer too");
        }
        u.run(Cmd::none(&TUR)).good("the issuer hears nothing (more)");
        u.run_as(&b, Cmd::none(&TUR)).check(key::UNIT_ATTENTION, code, "the other nexus");
        u.run_as(&b, Cmd::none(&TUR)).good("once");
    }

    // I_T NEXUS RESET: that nexus's tasks only.
    let finished = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    let cmds = vec![(a.clone(), ws(1).counted(&finished)), (b.clone(), ws(2).counted(&finished))];
    let run = start_with_tasks(&u, cmds, TmfFunction::ItNexusReset, &b, Vec::new(), tx);
    wait_complete(&run, &finished, 2);
    let out = collect(&rx, 2);
    out[0].good("A's task");
    out[1].task_aborted("B's task");
    // After all that, the unit works as before and the data is whole.
    u.write(0, &pattern(5, 4));
    assert_eq!(u.read(0, 4), pattern(5, 4));
}

#[test]
fn removed_bdev_makes_the_unit_not_ready() {
    let u = Unit::malloc("t_scsi_gone", BLOCKS, false);
    let c = nexus("t_scsi_gone-c");
    u.write(0, &pattern(1, 1));
    crate::bdev::registry::unregister("t_scsi_gone", None).unwrap();
    // A channel made before the removal: its bdev I/O is refused (ENODEV).
    for (who, why) in [(&u.a, "existing channel"), (&c, "channel made after the removal")] {
        let o = u.run_as(who, Cmd::din(&c10(op::READ_10, 0, 0, 1), BS));
        o.check(key::NOT_READY, asc::LUN_NOT_READY, &format!("READ, {why}"));
        assert_eq!(o.transferred, 0);
        u.run_as(who, Cmd::dout(&c10(op::WRITE_10, 0, 0, 1), &pattern(2, 1))).check(
            key::NOT_READY,
            asc::LUN_NOT_READY,
            &format!("WRITE, {why}"),
        );
        u.run_as(who, Cmd::none(&TUR)).check(key::NOT_READY, asc::LUN_NOT_READY, &format!("TUR, {why}"));
        // INQUIRY is answered whatever the unit's state (SPC-4 6.6.1).
        u.run_as(who, Cmd::din(&inquiry(false, 0, 96), 96)).good(&format!("INQUIRY, {why}"));
    }
}

#[test]
fn tasks_on_two_reactors() {
    let u = Unit::malloc("t_scsi_two", BLOCKS, false);
    let (a, b) = (u.a.clone(), u.b.clone());
    // B's queue is on reactor 1: what it writes, A reads on reactor 0.
    let run_on_1 = |who: &Arc<Nexus>, cmd: Cmd| {
        let (tx, rx) = mpsc::channel();
        let (lun, who) = (u.lun.clone(), who.clone());
        framework::call(1, move || {
            let lc = channel(&lun, &who);
            submit(cmd, who, tx, |t| lun::execute(&lc, t));
        })
        .unwrap();
        rx.recv_timeout(WAIT).expect("the command finished")
    };
    run_on_1(&b, Cmd::dout(&c10(op::WRITE_10, 0, 8, 2), &pattern(3, 2))).good("write on reactor 1");
    assert_eq!(u.read(8, 2), pattern(3, 2), "read on reactor 0");

    // A LOGICAL UNIT RESET waits for tasks on every reactor. Reactor 1 submits B's tasks and
    // then waits for the go-ahead, so they are still in flight when the reset starts.
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (lun, b2) = (u.lun.clone(), b.clone());
    let block = pattern(4, 1);
    let reactor1 = std::thread::spawn(move || {
        framework::call(1, move || {
            let lc = channel(&lun, &b2);
            for tag in 1..=3 {
                let cmd = Cmd::dout(&c16(op::WRITE_SAME_16, 0, 0, BLOCKS as u32), &block).tag(tag);
                submit(cmd, b2.clone(), tx.clone(), |t| lun::execute(&lc, t));
            }
            ready_tx.send(()).unwrap();
            go_rx.recv_timeout(WAIT).expect("go-ahead");
        })
        .unwrap()
    });
    ready_rx.recv_timeout(WAIT).expect("reactor 1 submitted");
    let mut reset = tmf::start(&u.lun, TmfFunction::LogicalUnitReset, &a).expect("starts");
    assert!(!reset.poll(), "reactor 1's tasks are in flight");
    go_tx.send(()).unwrap();
    reactor1.join().unwrap();
    let deadline = Instant::now() + WAIT;
    while !reset.poll() {
        assert!(Instant::now() < deadline, "the reset never completed");
        std::thread::sleep(Duration::from_millis(1));
    }
    for o in collect(&rx, 3) {
        o.task_aborted(&format!("B's task {} on reactor 1", o.tag));
    }
    run_on_1(&b, Cmd::none(&TUR)).check(key::UNIT_ATTENTION, asc::BUS_DEVICE_RESET, "B hears of the reset");
    run_on_1(&b, Cmd::din(&c10(op::READ_10, 0, 0, 1), BS)).good("B again");
}

/// Hostile CDBs: every opcode Ferry knows and some it does not, random bytes in every other
/// field, random directions and buffer sizes (split into random segments), from two nexuses.
/// Whatever comes back must be well formed: a known status, fixed-format sense exactly when
/// the status is CHECK CONDITION, nothing moved past the buffer, and the unit still serving.
#[test]
fn random_cdbs_never_break_the_unit() {
    let u = Unit::malloc("t_scsi_fuzz", 256, false);
    let ops = [
        op::TEST_UNIT_READY,
        op::REQUEST_SENSE,
        op::READ_6,
        op::WRITE_6,
        op::INQUIRY,
        op::MODE_SELECT_6,
        op::RESERVE_6,
        op::RELEASE_6,
        op::MODE_SENSE_6,
        op::START_STOP_UNIT,
        op::READ_CAPACITY_10,
        op::READ_10,
        op::WRITE_10,
        op::WRITE_AND_VERIFY_10,
        op::VERIFY_10,
        op::SYNCHRONIZE_CACHE_10,
        op::WRITE_SAME_10,
        op::UNMAP,
        op::MODE_SELECT_10,
        op::RESERVE_10,
        op::RELEASE_10,
        op::MODE_SENSE_10,
        op::PERSISTENT_RESERVE_IN,
        op::PERSISTENT_RESERVE_OUT,
        op::READ_16,
        op::COMPARE_AND_WRITE,
        op::WRITE_16,
        op::WRITE_AND_VERIFY_16,
        op::VERIFY_16,
        op::SYNCHRONIZE_CACHE_16,
        op::WRITE_SAME_16,
        op::SERVICE_ACTION_IN_16,
        op::REPORT_LUNS,
        op::MAINTENANCE_IN,
        op::READ_12,
        op::WRITE_12,
        0x01,
        0x7F,
        0xC0,
        0xFF,
    ];
    let mut rng = Rng(0x5eed_f00d_1234_5678);
    let mut counts = [0usize; 3];
    for case in 0..4000 {
        let opcode = ops[rng.below(ops.len() as u64) as usize];
        let len = match rng.below(4) {
            0 => crate::scsi::cdb::cdb_len(opcode).unwrap_or(16),
            1 => 6,
            2 => 16,
            _ => 1 + rng.below(32) as usize,
        };
        let mut cdb: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        cdb[0] = opcode;
        // Keep LBAs and lengths small half of the time, so the data path runs too.
        if rng.below(2) == 0 && len >= 10 {
            for b in cdb.iter_mut().skip(2).take(len - 4) {
                *b &= 0x01;
            }
        }
        let buf_len = match rng.below(4) {
            0 => 0,
            1 => rng.below(64) as usize,
            2 => 512 * (1 + rng.below(8) as usize),
            _ => rng.below(20_000) as usize,
        };
        let dir = match (buf_len, rng.below(2)) {
            (0, _) => DataDir::None,
            (_, 0) => DataDir::ToDevice,
            _ => DataDir::FromDevice,
        };
        let data: Vec<u8> = (0..buf_len).map(|_| rng.next() as u8).collect();
        let mut cmd = Cmd::new(&cdb, dir, data);
        if buf_len > 1 && rng.below(2) == 0 {
            let cut = 1 + rng.below(buf_len as u64 - 1) as usize;
            cmd = cmd.segments(&[cut, buf_len - cut]);
        }
        let who = if rng.below(4) == 0 { u.b.clone() } else { u.a.clone() };
        let o = u.run_as(&who, cmd);
        let why = format!("case {case}: cdb {cdb:02x?}, {dir:?} {buf_len} bytes");
        match o.status {
            status::GOOD => counts[0] += 1,
            status::CHECK_CONDITION => {
                counts[1] += 1;
                assert_eq!(o.sense.len(), 18, "{why}: fixed-format sense with CHECK CONDITION");
                assert_eq!(o.sense[0] & 0x7F, 0x70, "{why}");
                assert_eq!(o.sense[7], 10, "{why}: additional length");
            }
            status::RESERVATION_CONFLICT | status::BUSY => counts[2] += 1,
            other => panic!("{why}: unexpected status {other:#x}"),
        }
        if o.status != status::CHECK_CONDITION {
            assert!(o.sense.is_empty(), "{why}: sense data only with CHECK CONDITION");
        }
        assert!(!o.aborted, "{why}: nothing aborts here");
        assert_eq!(o.transferred + o.residual, buf_len as u64, "{why}: transferred + residual = buffer");
    }
    // Every outcome class happened, so the cases reached well past the CDB checks.
    assert!(counts.iter().all(|&n| n > 0), "GOOD / CHECK CONDITION / conflict-or-busy counts: {counts:?}");
    // Clear any reservation the noise left and prove the unit still serves.
    let mut reset = tmf::start(&u.lun, TmfFunction::LogicalUnitReset, &u.a).expect("a reset starts");
    poll_done(&mut reset, "reset after the noise");
    u.run(Cmd::none(&TUR)).check(key::UNIT_ATTENTION, asc::BUS_DEVICE_RESET, "the reset's issuer hears of it too");
    u.run(Cmd::none(&TUR)).good("once");
    // Persistent reservations survive a reset. The fixed seed's noise leaves no registration;
    // should a change to the noise leave one, this says so (rather than the write below
    // failing with RESERVATION CONFLICT for no visible reason).
    let o = u.run(Cmd::din(&[op::PERSISTENT_RESERVE_IN, 0x00, 0, 0, 0, 0, 0, 0, 64, 0], 64));
    o.good("READ KEYS").moved(8, 56, "the header only");
    assert_eq!(&o.data[4..8], &[0, 0, 0, 0], "no registration left by the noise");
    u.write(5, &pattern(7, 1));
    assert_eq!(u.read(5, 1), pattern(7, 1), "the unit still reads back what it is given");
}

/// libiscsi 1.19.0 iSCSIResiduals.Read10Residuals, Read12Residuals, Read16Residuals and
/// Read10Invalid: the buffer is the iSCSI Expected Data Transfer Length, which may differ
/// from the CDB's transfer length. GOOD status whatever it is; what did not fit is the
/// overflow, what was not used the underflow.
#[test]
fn iscsi_read_residuals() {
    let u = Unit::malloc("t_res_read", 64, false);
    u.write(0, &pattern(21, 2));
    let read = |b: u32| {
        [
            c10(op::READ_10, 0, 0, b as u16).to_vec(),
            c12(op::READ_12, 0, 0, b).to_vec(),
            c16(op::READ_16, 0, 0, b).to_vec(),
        ]
    };
    for cdb in read(1) {
        // EDTL 0: nothing moves, one block of overflow.
        let o = u.run(Cmd::new(&cdb, DataDir::None, Vec::new()).iscsi());
        o.good("EDTL 0").moved(0, 0, "EDTL 0").residual_is(Residual::Overflow(BS as u64), "EDTL 0");
        // EDTL 10000: one block moves, the rest is underflow.
        let o = u.run(Cmd::din(&cdb, 10000).iscsi());
        o.good("EDTL 10000").residual_is(Residual::Underflow(10000 - BS as u64), "EDTL 10000");
        assert_eq!(o.transferred, BS as u64, "EDTL 10000: datain.size is one block");
        assert_eq!(&o.data[..BS], &pattern(21, 1)[..], "EDTL 10000: the block");
        // EDTL 200: the first 200 bytes of the block, the rest overflow.
        let o = u.run(Cmd::din(&cdb, 200).iscsi());
        o.good("EDTL 200").moved(200, 0, "EDTL 200").residual_is(Residual::Overflow(BS as u64 - 200), "EDTL 200");
        assert_eq!(&o.data[..], &pattern(21, 1)[..200], "EDTL 200: the block's first 200 bytes");
    }
    for cdb in read(2) {
        // Two blocks asked, EDTL one block: the first block, one block of overflow.
        let o = u.run(Cmd::din(&cdb, BS).iscsi());
        o.good("2 blocks, EDTL 1")
            .moved(BS as u64, 0, "2 blocks")
            .residual_is(Residual::Overflow(BS as u64), "2 blocks");
        assert_eq!(o.data, pattern(21, 1), "2 blocks, EDTL 1: the first block");
    }
    // Read10Invalid's last case: READ (10) sent with data-out: GOOD, nothing read.
    let o = u.run(Cmd::dout(&c10(op::READ_10, 0, 0, 1), &pattern(9, 1)).iscsi());
    o.good("READ with data-out").moved(0, BS as u64, "READ with data-out");
    // The exact buffer: no residual at all.
    u.run(Cmd::din(&c10(op::READ_10, 0, 0, 1), BS).iscsi()).good("exact").residual_is(Residual::None, "exact");
    // Range errors still come first.
    u.run(Cmd::din(&c10(op::READ_10, 0, 64, 1), 0).iscsi()).check(
        key::ILLEGAL_REQUEST,
        asc::LBA_OUT_OF_RANGE,
        "beyond the end",
    );
    // Without overflow reporting (vhost), a short buffer is still refused.
    u.run(Cmd::din(&c10(op::READ_10, 0, 0, 2), BS)).invalid_cdb(7, None, "vhost: short buffer");
}

/// libiscsi 1.19.0 iSCSIResiduals.Write10Residuals, Write12Residuals, Write16Residuals and
/// WriteVerify10/12/16Residuals: GOOD; the whole blocks the data-out holds are written and
/// no more (the block after them keeps its data), the rest is overflow; extra data-out is
/// underflow.
#[test]
fn iscsi_write_residuals() {
    let u = Unit::malloc("t_res_write", 64, false);
    for opcode in [
        op::WRITE_10,
        op::WRITE_12,
        op::WRITE_16,
        op::WRITE_AND_VERIFY_10,
        op::WRITE_AND_VERIFY_12,
        op::WRITE_AND_VERIFY_16,
    ] {
        let cdb = |blocks: u32| match opcode {
            op::WRITE_10 | op::WRITE_AND_VERIFY_10 => c10(opcode, 0, 0, blocks as u16).to_vec(),
            op::WRITE_12 | op::WRITE_AND_VERIFY_12 => c12(opcode, 0, 0, blocks).to_vec(),
            _ => c16(opcode, 0, 0, blocks).to_vec(),
        };
        let why = format!("opcode {opcode:#x}");
        u.write(0, &[b'a'; 2 * BS]);
        // EDTL 0: GOOD, nothing written, one block of overflow.
        let o = u.run(Cmd::new(&cdb(1), DataDir::ToDevice, Vec::new()).iscsi());
        o.good(&why).moved(0, 0, &why).residual_is(Residual::Overflow(BS as u64), &why);
        assert_eq!(u.read(0, 1), vec![b'a'; BS], "{why}: EDTL 0 writes nothing");
        // EDTL 10000 for one block: the block is written, the rest is underflow.
        let o = u.run(Cmd::dout(&cdb(1), &[0xA6; 10000]).iscsi());
        o.good(&why).residual_is(Residual::Underflow(10000 - BS as u64), &why);
        assert_eq!(u.read(0, 2), [vec![0xA6; BS], vec![b'a'; BS]].concat(), "{why}: one block written");
        // EDTL 200: overflow of the rest of the block (GOOD; no partial block is written).
        let o = u.run(Cmd::dout(&cdb(1), &[0xB7; 200]).iscsi());
        o.good(&why).residual_is(Residual::Overflow(BS as u64 - 200), &why);
        assert_eq!(u.read(0, 1), vec![0xA6; BS], "{why}: no partial block written");
        // Two blocks, EDTL one block: block 0 written, block 1 untouched, one block overflow.
        u.write(0, &[b'a'; 2 * BS]);
        let o = u.run(Cmd::dout(&cdb(2), &[b'b'; BS]).iscsi());
        o.good(&why).moved(BS as u64, 0, &why).residual_is(Residual::Overflow(BS as u64), &why);
        assert_eq!(u.read(0, 2), [vec![b'b'; BS], vec![b'a'; BS]].concat(), "{why}: first block only");
        // One block, EDTL two blocks: block 0 written, block 1 untouched, one block underflow.
        u.write(0, &[b'a'; 2 * BS]);
        let o = u.run(Cmd::dout(&cdb(1), &[b'b'; 2 * BS]).iscsi());
        o.good(&why).moved(BS as u64, BS as u64, &why).residual_is(Residual::Underflow(BS as u64), &why);
        assert_eq!(u.read(0, 2), [vec![b'b'; BS], vec![b'a'; BS]].concat(), "{why}: one block written");
    }
    // Without overflow reporting (vhost), a short buffer is still refused and writes nothing.
    u.run(Cmd::dout(&c10(op::WRITE_10, 0, 0, 2), &[b'z'; BS])).invalid_cdb(7, None, "vhost: short buffer");
    assert_eq!(u.read(0, 1), vec![b'b'; BS], "the refused write wrote nothing");
}

/// libiscsi 1.19.0 ModeSense6.Residuals (and every data-in command): data cut to the
/// allocation length is no overflow; a buffer larger than the data is underflow.
#[test]
fn iscsi_data_in_residuals() {
    let u = Unit::malloc("t_res_ms", 64, false);
    let ms6 = |alloc: u8| [op::MODE_SENSE_6, 0, 0x3F, 0, alloc, 0];
    let o = u.run(Cmd::din(&ms6(4), 4).iscsi());
    o.good("alloc 4").moved(4, 0, "alloc 4").residual_is(Residual::None, "alloc 4: no overflow");
    let o = u.run(Cmd::din(&ms6(255), 255).iscsi());
    o.good("alloc 255");
    assert!(o.transferred < 255, "all mode pages are under 255 bytes");
    o.residual_is(Residual::Underflow(255 - o.transferred), "alloc 255: underflow");
    // An EDTL below the allocation length and the data: overflow of what did not fit.
    let o = u.run(Cmd::din(&inquiry(false, 0, 96), 36).iscsi());
    o.good("INQUIRY into 36 bytes").moved(36, 0, "36").residual_is(Residual::Overflow(96 - 36), "INQUIRY overflow");
}

/// libiscsi 1.19.0 Inquiry.BlockLimits: with UNMAP supported, MAXIMUM UNMAP LBA COUNT and
/// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT are non-zero and, unless unlimited, at most 1M.
#[test]
fn block_limits_unmap_counts_are_sane() {
    let u = Unit::malloc("t_bl", 64, false);
    let o = u.run(Cmd::din(&inquiry(true, 0xB0, 255), 255));
    o.good("block limits");
    assert_eq!(o.transferred, 64, "page length 3Ch");
    let be32 = |at: usize| u32::from_be_bytes(o.data[at..at + 4].try_into().unwrap());
    for (at, what) in [(20, "MAXIMUM UNMAP LBA COUNT"), (24, "MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT")] {
        let v = be32(at);
        assert!(v != 0 && (v == u32::MAX || v <= 1024 * 1024), "{what} {v}");
    }
    // libiscsi WriteAtomic16.VPD: WRITE ATOMIC (16) is served, so MAXIMUM ATOMIC TRANSFER
    // LENGTH is non-zero and within MAXIMUM TRANSFER LENGTH; no alignment, granularity or
    // boundaries.
    assert!(be32(44) != 0 && be32(44) <= be32(8), "MAXIMUM ATOMIC TRANSFER LENGTH");
    assert!(o.data[48..64].iter().all(|&b| b == 0), "no atomic alignment, granularity, boundaries");
}

/// libiscsi 1.19.0 Verify12.*, WriteVerify12.*, Prefetch10/16.*, ReadDefectData10/12.Simple
/// and PreventAllow: the commands behave as their 10/16-byte siblings, PRE-FETCH answers GOOD
/// (never CONDITION MET) after checking the range, READ DEFECT DATA an empty list.
#[test]
fn twelve_byte_verify_prefetch_defects_and_prevent_allow() {
    let u = Unit::malloc("t_misc12", 64, false);
    let d = pattern(31, 2);
    // WRITE AND VERIFY (12), then VERIFY (12) with byte check: equal, then a miscompare.
    u.run(Cmd::dout(&c12(op::WRITE_AND_VERIFY_12, 0x12, 10, 2), &d)).good("write and verify 12").moved(
        2 * BS as u64,
        0,
        "wv12",
    );
    assert_eq!(u.read(10, 2), d, "written");
    u.run(Cmd::dout(&c12(op::VERIFY_12, 0x02, 10, 2), &d)).good("verify 12 equal");
    let mut bad = d.clone();
    bad[BS + 3] ^= 0xFF;
    u.run(Cmd::dout(&c12(op::VERIFY_12, 0x02, 10, 2), &bad))
        .check(key::MISCOMPARE, asc::MISCOMPARE_VERIFY, "verify 12 miscompare")
        .information(BS as u32 + 3, "offset");
    u.run(Cmd::none(&c12(op::VERIFY_12, 0x10, 10, 2))).good("verify 12 DPO, no byte check");
    u.run(Cmd::dout(&c12(op::VERIFY_12, 0x22, 10, 1), &d[..BS])).invalid_cdb(1, Some(7), "VRPROTECT");
    u.run(Cmd::none(&c12(op::VERIFY_12, 0, 64, 1))).check(
        key::ILLEGAL_REQUEST,
        asc::LBA_OUT_OF_RANGE,
        "verify 12 beyond the end",
    );
    u.run(Cmd::dout(&c12(op::WRITE_AND_VERIFY_12, 0x20, 0, 1), &d[..BS])).invalid_cdb(1, Some(7), "WRPROTECT");
    u.run(Cmd::dout(&c12(op::WRITE_AND_VERIFY_12, 0, 63, 2), &d)).check(
        key::ILLEGAL_REQUEST,
        asc::LBA_OUT_OF_RANGE,
        "wv12 beyond",
    );

    // PRE-FETCH (10) and (16): GOOD within the unit (IMMED or not), LBA OUT OF RANGE beyond.
    for b1 in [0, 0x02] {
        u.run(Cmd::none(&c10(op::PRE_FETCH_10, b1, 0, 1))).good("prefetch 10");
        u.run(Cmd::none(&c16(op::PRE_FETCH_16, b1, 63, 1))).good("prefetch 16 last block");
    }
    u.run(Cmd::none(&c10(op::PRE_FETCH_10, 0, 0, 0))).good("prefetch 10, 0 blocks");
    for (cdb, why) in [
        (c10(op::PRE_FETCH_10, 0, 65, 0).to_vec(), "0 blocks past the end"),
        (c10(op::PRE_FETCH_10, 0, 63, 2).to_vec(), "straddling the end"),
        (c10(op::PRE_FETCH_10, 0, u32::MAX, 1).to_vec(), "LBA -1"),
        (c16(op::PRE_FETCH_16, 0, 0x8000_0000_0000_0000, 1).to_vec(), "LBA 2^63"),
    ] {
        u.run(Cmd::none(&cdb)).check(key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE, why);
    }

    // READ DEFECT DATA (10): allocation length 32, both lists in format 0: the header only.
    let o = u.run(Cmd::din(&[op::READ_DEFECT_DATA_10, 0, 0x18, 0, 0, 0, 0, 0, 32, 0], 32));
    o.good("read defect data 10").moved(4, 28, "the header");
    assert_eq!(&o.data[..4], &[0, 0x18, 0, 0], "PLISTV, GLISTV, no defects");
    let o = u.run(Cmd::din(&[op::READ_DEFECT_DATA_12, 0x0D, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0], 64));
    o.good("read defect data 12").moved(8, 56, "the header");
    assert_eq!(&o.data[..8], &[0, 0x0D, 0, 0, 0, 0, 0, 0], "GLISTV, format 5, no defects");

    // PREVENT ALLOW MEDIUM REMOVAL: prevent and allow are GOOD; the obsolete medium changer
    // values are refused.
    u.run(Cmd::none(&[op::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 1, 0])).good("prevent");
    u.run(Cmd::none(&[op::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 0, 0])).good("allow");
    u.run(Cmd::none(&[op::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 2, 0])).invalid_cdb(4, Some(1), "PREVENT 10b");
}

/// libiscsi 1.19.0 ReportSupportedOpcodes.*: every command the unit lists is served (none
/// answers INVALID COMMAND OPERATION CODE), and, as the DpoFua tests check, the READ/WRITE
/// family's usage data has DPO and FUA while MODE SENSE reports DPOFUA.
#[test]
fn every_listed_command_is_served() {
    let u = Unit::malloc("t_rsoc_all", 64, false);
    // REPORT LUNS is the target's (report_luns_and_absent_luns_through_the_target).
    for c in super::report::SUPPORTED_COMMANDS.iter().filter(|c| c.opcode != op::REPORT_LUNS) {
        let mut cdb = c.usage.to_vec();
        // Keep the opcode and service action, clear every other field: a harmless command.
        for b in cdb.iter_mut().skip(1) {
            *b = 0;
        }
        if let Some(sa) = c.service_action {
            cdb[1] = sa as u8;
        }
        let o = u.run(Cmd::din(&cdb, 4096));
        let invalid_opcode = o.status == status::CHECK_CONDITION && (o.sense[12], o.sense[13]) == asc::INVALID_OPCODE;
        assert!(!invalid_opcode, "{:#04x}/{:?} is listed but not served", c.opcode, c.service_action);
    }
    for opcode in
        [op::READ_10, op::READ_12, op::READ_16, op::WRITE_10, op::WRITE_12, op::WRITE_16, op::COMPARE_AND_WRITE]
    {
        let c = super::report::SUPPORTED_COMMANDS.iter().find(|c| c.opcode == opcode).unwrap();
        assert_eq!(c.usage[1] & 0x18, 0x18, "{opcode:#x}: DPO and FUA");
    }
    for opcode in [
        op::VERIFY_10,
        op::VERIFY_12,
        op::VERIFY_16,
        op::WRITE_AND_VERIFY_10,
        op::WRITE_AND_VERIFY_12,
        op::WRITE_AND_VERIFY_16,
    ] {
        let c = super::report::SUPPORTED_COMMANDS.iter().find(|c| c.opcode == opcode).unwrap();
        assert_eq!(c.usage[1] & 0x10, 0x10, "{opcode:#x}: DPO");
    }
    let o = u.run(Cmd::din(&[op::MODE_SENSE_6, 0, 0x3F, 0, 255, 0], 255));
    o.good("mode sense");
    assert_eq!(o.data[2] & 0x10, 0x10, "DPOFUA");
}

/// libiscsi 1.19.0 OrWrite.Simple, Verify, ZeroBlocks, BeyondEol, DpoFua, WriteProtect
/// (ReadOnly.ReadOnlySBC too): ORWRITE (16) ORs the data-out into the blocks.
#[test]
fn orwrite_ors_the_data_into_the_blocks() {
    let u = Unit::malloc("t_orwrite", 64, false);
    for (lba, blocks) in [(0u64, 1u32), (0, 3), (61, 3)] {
        let n = blocks as usize * BS;
        u.write(lba, &vec![0; n]);
        u.run(Cmd::dout(&c16(op::ORWRITE_16, 0, lba, blocks), &vec![0xA5; n]))
            .good("orwrite a5")
            .moved(n as u64, 0, "all");
        assert_eq!(u.read(lba, blocks), vec![0xA5; n], "0 | a5");
        u.run(Cmd::dout(&c16(op::ORWRITE_16, 0, lba, blocks), &vec![0x5A; n])).good("orwrite 5a");
        assert_eq!(u.read(lba, blocks), vec![0xFF; n], "a5 | 5a");
    }
    // A pattern: each byte ORed with its own counterpart only.
    let base = pattern(40, 2);
    let mask = pattern(41, 2);
    u.write(20, &base);
    u.run(Cmd::dout(&c16(op::ORWRITE_16, 0x18, 20, 2), &mask)).good("DPO and FUA");
    let want: Vec<u8> = base.iter().zip(&mask).map(|(a, b)| a | b).collect();
    assert_eq!(u.read(20, 2), want, "bytewise OR");
    assert_eq!(u.read(22, 1), vec![0; BS], "the block after is untouched");
    // Zero blocks: GOOD, but the LBA is still checked.
    u.run(Cmd::none(&c16(op::ORWRITE_16, 0, 0, 0))).good("0 blocks");
    for (lba, blocks, why) in [
        (65u64, 0u32, "0 blocks past the end"),
        (1 << 63, 1, "LBA 2^63"),
        (u64::MAX, 1, "LBA -1"),
        (63, 2, "straddling"),
    ] {
        let data = vec![0xA6; blocks as usize * BS];
        u.run(Cmd::dout(&c16(op::ORWRITE_16, 0, lba, blocks), &data)).check(
            key::ILLEGAL_REQUEST,
            asc::LBA_OUT_OF_RANGE,
            why,
        );
    }
    u.run(Cmd::dout(&c16(op::ORWRITE_16, 0x20, 0, 1), &[1; BS])).invalid_cdb(1, Some(7), "ORPROTECT");
    let ro = Unit::malloc("t_orwrite_ro", 64, true);
    ro.run(Cmd::dout(&c16(op::ORWRITE_16, 0, 0, 1), &[1; BS])).check(
        key::DATA_PROTECT,
        asc::WRITE_PROTECTED,
        "read-only",
    );
}

/// Block limits VPD page of `u`.
fn block_limits(u: &Unit) -> Vec<u8> {
    let o = u.run(Cmd::din(&inquiry(true, 0xB0, 64), 64));
    o.good("block limits VPD");
    o.data
}

/// WRITE ATOMIC (16) of `blocks` at `lba` with byte 1 `b1` and ATOMIC BOUNDARY `boundary`.
fn write_atomic(b1: u8, lba: u64, blocks: u16, boundary: u16) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op::WRITE_ATOMIC_16;
    c[1] = b1;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..12].copy_from_slice(&boundary.to_be_bytes());
    c[12..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// libiscsi CompareAndWrite.Simple / .Miscompare: 256 blocks do not fit the one-byte NUMBER
/// OF LOGICAL BLOCKS (it reads 0), so the data-out does not match the CDB: refused, not a
/// silent no-op. CompareAndWrite.InvalidDataOutSize: more data-out than 2 x NUMBER OF
/// LOGICAL BLOCKS is refused too.
#[test]
fn libiscsi_compare_and_write_refuses_data_out_the_cdb_does_not_describe() {
    let u = Unit::malloc("t_scsi_caw_len", BLOCKS, false);
    u.write(0, &pattern(0x21, 256));
    let data = [pattern(0x21, 256), pattern(0x22, 256)].concat();
    u.run(Cmd::dout(&caw(0, 0, false), &data).iscsi()).invalid_cdb(13, None, "256 blocks as 0");
    let four = pattern(0x21, 4);
    u.run(Cmd::dout(&caw(0, 1, false), &four).iscsi()).invalid_cdb(13, None, "TL 1 with 4 blocks of data");
    assert_eq!(u.read(0, 256), pattern(0x21, 256), "nothing written");
    // 0 blocks without data: nothing to do.
    u.run(Cmd::none(&caw(0, 0, false))).good("0 blocks, no data");
    // The one-block command still works.
    let one = [pattern(0x21, 1), pattern(0x23, 1)].concat();
    u.run(Cmd::dout(&caw(0, 1, false), &one).iscsi()).good("one block");
    assert_eq!(u.read(0, 1), pattern(0x23, 1));
}

/// libiscsi WriteSame16.Unmap writes 64Ki blocks of 512 bytes (32 MiB) in one WRITE (16) when
/// MAXIMUM WRITE SAME LENGTH allows that many: the unit's MAXIMUM TRANSFER LENGTH covers it,
/// and it is exactly what the iSCSI engine accepts as Expected Data Transfer Length.
#[test]
fn libiscsi_write_same16_unmap_a_32_mib_write_is_within_the_limits() {
    let blocks = 65536u32;
    let u = Unit::malloc("t_scsi_32m", blocks as u64 + 8, false);
    let bl = block_limits(&u);
    let max_transfer = u32::from_be_bytes(bl[8..12].try_into().unwrap());
    assert_eq!(max_transfer as u64 * BS as u64, 32 << 20, "MAXIMUM TRANSFER LENGTH");
    assert!(u64::from_be_bytes(bl[36..44].try_into().unwrap()) >= blocks as u64, "MAXIMUM WRITE SAME LENGTH");
    let data = vec![0xFFu8; blocks as usize * BS];
    u.run(Cmd::dout(&c16(op::WRITE_16, 0, 0, blocks), &data)).good("32 MiB write");
    u.run(Cmd::dout(&c16(op::WRITE_16, 0, 0, blocks + 1), &[data.clone(), vec![0; BS]].concat())).invalid_cdb(
        10,
        None,
        "one block over",
    );
    u.run(Cmd::dout(&c16(op::WRITE_SAME_16, 0x08, 0, blocks), &[0; BS])).good("unmap 64Ki blocks");
    assert!(u.read(0, 1024).iter().all(|&b| b == 0));
}

/// libiscsi Sanitize.Readonly and ModeSense6.Control-SWP: SWP in the control page is
/// changeable; while set, every write-type command is refused with WRITE PROTECTED, MODE
/// SENSE shows WP, and the other nexuses hear MODE PARAMETERS CHANGED.
#[test]
fn libiscsi_software_write_protect_from_the_control_page() {
    let u = Unit::malloc("t_scsi_swp", BLOCKS, false);
    u.attach(&u.b);
    let control = |u: &Unit, pc: u8| {
        let o = u.run(Cmd::din(&[op::MODE_SENSE_6, 0x08, (pc << 6) | 0x0A, 0, 255, 0], 255));
        o.good("MODE SENSE control");
        (o.data[2], o.data[4..16].to_vec())
    };
    let (_, changeable) = control(&u, 1);
    assert_eq!(changeable[4] & 0x08, 0x08, "SWP changeable");
    let (dsp, current) = control(&u, 0);
    assert_eq!((dsp & 0x80, current[4] & 0x08), (0, 0), "not protected to begin with");
    let select = |u: &Unit, swp: bool| {
        let mut page = current.clone();
        page[4] = (page[4] & !0x08) | if swp { 0x08 } else { 0 };
        let list = [vec![0u8, 0, 0, 0], page].concat();
        u.run(Cmd::dout(&[op::MODE_SELECT_6, 0x10, 0, 0, list.len() as u8, 0], &list)).good("MODE SELECT SWP");
    };
    select(&u, true);
    let (dsp, current_on) = control(&u, 0);
    assert_eq!((dsp & 0x80, current_on[4] & 0x08), (0x80, 0x08), "WP and SWP shown");
    u.run_as(&u.b, Cmd::none(&TUR)).check(key::UNIT_ATTENTION, asc::MODE_PARAMETERS_CHANGED, "other nexus told");
    let wp = |o: Outcome, why: &str| {
        o.check(key::DATA_PROTECT, asc::WRITE_PROTECTED, why);
    };
    let block = pattern(0x31, 1);
    wp(u.run(Cmd::dout(&c10(op::WRITE_10, 0, 0, 1), &block)), "WRITE");
    wp(u.run(Cmd::dout(&c10(op::WRITE_SAME_10, 0x08, 0, 1), &[0; BS])), "WRITE SAME");
    wp(u.run(Cmd::dout(&unmap_cdb(24), &unmap_list(&[(0, 1)]))), "UNMAP");
    wp(u.run(Cmd::dout(&caw(0, 1, false), &[block.clone(), block.clone()].concat())), "COMPARE AND WRITE");
    wp(u.run(Cmd::dout(&write_atomic(0, 0, 1, 0), &block)), "WRITE ATOMIC");
    u.read(0, 1);
    select(&u, false);
    u.write(0, &block);
    assert_eq!(u.read(0, 1), block, "writable again");
}

/// libiscsi's LBPPB > 1 tests (WriteSame10/16.InvalidDataOutSize, .UnmapUnaligned,
/// CompareAndWrite.InvalidDataOutSize): a bdev with 4 KiB physical blocks shows LOGICAL
/// BLOCKS PER PHYSICAL BLOCK EXPONENT 3, one physical block as the optimal granularities, and
/// WRITE SAME refuses data-out other than one block.
#[test]
fn libiscsi_lbppb_physical_blocks_are_reported() {
    testing::reactors();
    malloc::create_with_physical("t_scsi_lbppb", BLOCKS, BS as u32, 4096, None).unwrap();
    let u = Unit::on("t_scsi_lbppb", false);
    assert_eq!(u.lun.bdev().physical_block_size(), 4096);
    let rc16 = u.run(Cmd::din(&sai16(op::SAI_READ_CAPACITY_16, 0, 32), 32));
    rc16.good("READ CAPACITY (16)");
    assert_eq!(rc16.data[13] & 0x0F, 3, "LBPPBE");
    let bl = block_limits(&u);
    assert_eq!(u16::from_be_bytes([bl[6], bl[7]]), 8, "OPTIMAL TRANSFER LENGTH GRANULARITY");
    assert_eq!(u32::from_be_bytes(bl[28..32].try_into().unwrap()), 8, "OPTIMAL UNMAP GRANULARITY");
    u.run(Cmd::dout(&c10(op::WRITE_SAME_10, 0x08, 0, 1), &[0; BS / 2])).invalid_cdb(7, None, "half a block");
    u.run(Cmd::dout(&c10(op::WRITE_SAME_10, 0x08, 0, 1), &[0; 2 * BS])).invalid_cdb(7, None, "two blocks");
    u.run(Cmd::dout(&c16(op::WRITE_SAME_16, 0x08, 0, 1), &[0; 2 * BS])).invalid_cdb(10, None, "two blocks (16)");
    for i in 1..8 {
        u.run(Cmd::dout(&c10(op::WRITE_SAME_10, 0x08, i, 8 - i as u16), &[0; BS])).good("unaligned unmap");
    }
    // Without a physical block size: the logical one.
    let plain = Unit::malloc("t_scsi_lbppb0", BLOCKS, false);
    assert_eq!(plain.run(Cmd::din(&sai16(op::SAI_READ_CAPACITY_16, 0, 32), 32)).data[13], 0);
    // Refused geometries.
    for bad in [1000, 256, 512 << 16] {
        assert!(malloc::create_with_physical("t_scsi_lbppb_bad", 8, BS as u32, bad, None).is_err(), "{bad}");
    }
}

/// libiscsi WriteSame10/16.ZeroBlocks and .UnmapUntilEnd: WSNZ 0; NUMBER OF LOGICAL BLOCKS
/// 0 covers the LBA to the end of the medium, within MAXIMUM WRITE SAME LENGTH, in chunks.
#[test]
fn libiscsi_write_same_zero_blocks_goes_to_the_end_of_the_medium() {
    let u = Unit::malloc("t_scsi_ws0", BLOCKS, false);
    assert_eq!(block_limits(&u)[4] & 0x01, 0, "WSNZ 0");
    u.write(BLOCKS - 10, &pattern(0x51, 10));
    let block = pattern(0x52, 1);
    u.run(Cmd::dout(&c16(op::WRITE_SAME_16, 0, BLOCKS - 4, 0), &block)).good("0 blocks (16)");
    assert_eq!(u.read(BLOCKS - 10, 6), pattern(0x51, 10)[..6 * BS].to_vec(), "before untouched");
    for b in u.read(BLOCKS - 4, 4).chunks(BS) {
        assert_eq!(b, &block[..]);
    }
    u.run(Cmd::dout(&c10(op::WRITE_SAME_10, 0x08, BLOCKS as u32 - 2, 0), &pattern(0x53, 1))).good("0 blocks + UNMAP");
    assert!(u.read(BLOCKS - 2, 2).iter().all(|&b| b == 0));
    assert_eq!(u.read(BLOCKS - 3, 1), block);
    u.run(Cmd::dout(&c16(op::WRITE_SAME_16, 0, BLOCKS, 0), &block)).good("at the end: nothing");
    for lba in [BLOCKS + 1, 1 << 63, u64::MAX] {
        u.run(Cmd::dout(&c16(op::WRITE_SAME_16, 0, lba, 0), &block)).check(
            key::ILLEGAL_REQUEST,
            asc::LBA_OUT_OF_RANGE,
            "0 blocks past the end",
        );
    }
    // Beyond MAXIMUM WRITE SAME LENGTH (1Mi blocks on a thin unit), on a null unit; at the
    // limit it runs as several bdev unmaps, not one giant one.
    let n = Unit::null("t_scsi_ws0_max", (1 << 20) + 8);
    let max = u64::from_be_bytes(block_limits(&n)[36..44].try_into().unwrap());
    assert_eq!(max, 1 << 20);
    n.run(Cmd::none(&c16(op::WRITE_SAME_16, 0x09, 0, 0))).invalid_cdb(10, None, "to the end is over the max");
    let (_, unmaps, _) = n.io_counts();
    n.run(Cmd::none(&c16(op::WRITE_SAME_16, 0x09, 8, 0))).good("exactly the max");
    assert!(n.io_counts().1 >= unmaps + 4, "chunked: {:?}", n.io_counts());
}

/// libiscsi WriteAtomic16.*: WRITE ATOMIC (16) writes up to MAXIMUM ATOMIC TRANSFER LENGTH as
/// one bdev write, refuses more, a non-zero ATOMIC BOUNDARY and WRPROTECT, checks the range,
/// and is listed by REPORT SUPPORTED OPERATION CODES with DPO and FUA.
#[test]
fn libiscsi_write_atomic16() {
    let u = Unit::malloc("t_scsi_atomic", BLOCKS, false);
    let max = u32::from_be_bytes(block_limits(&u)[44..48].try_into().unwrap());
    assert_eq!(max as usize, (1 << 20) / BS, "MAXIMUM ATOMIC TRANSFER LENGTH");
    let data = pattern(0x61, max as usize);
    let (_, _, writes) = u.io_counts();
    u.run(Cmd::dout(&write_atomic(0x18, 0, max as u16, 0), &data)).good("the max, DPO+FUA").moved(
        data.len() as u64,
        0,
        "all of it",
    );
    assert_eq!(u.io_counts().2, writes + 1, "one bdev write");
    assert_eq!(u.read(0, max), data);
    u.run(Cmd::dout(&write_atomic(0, 0, max as u16 + 1, 0), &pattern(0x62, max as usize + 1))).invalid_cdb(
        12,
        None,
        "over the max",
    );
    u.run(Cmd::dout(&write_atomic(0, 0, 1, 1), &pattern(0x62, 1))).invalid_cdb(10, None, "atomic boundary");
    for wrprotect in 1..8u8 {
        u.run(Cmd::dout(&write_atomic(wrprotect << 5, 0, 1, 0), &pattern(0x62, 1))).invalid_cdb(
            1,
            Some(7),
            "WRPROTECT",
        );
    }
    u.run(Cmd::none(&write_atomic(0, 0, 0, 0))).good("0 blocks");
    for lba in [BLOCKS + 1, 1 << 63, u64::MAX] {
        u.run(Cmd::none(&write_atomic(0, lba, 0, 0))).check(key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE, "0 past end");
    }
    u.run(Cmd::dout(&write_atomic(0, BLOCKS - 1, 2, 0), &pattern(0x62, 2))).check(
        key::ILLEGAL_REQUEST,
        asc::LBA_OUT_OF_RANGE,
        "past the end",
    );
    assert_eq!(u.read(0, max), data, "refused commands wrote nothing");
    let rsoc = u.run(Cmd::din(&[op::MAINTENANCE_IN, 0x0C, 0x01, op::WRITE_ATOMIC_16, 0, 0, 0, 0, 1, 0, 0, 0], 256));
    rsoc.good("REPORT SUPPORTED OPERATION CODES, one command");
    assert_eq!(rsoc.data[1] & 0x07, 0x03, "supported");
    assert_eq!(rsoc.data[5], 0x18, "DPO and FUA in the usage data");
    let ro = Unit::malloc("t_scsi_atomic_ro", BLOCKS, true);
    assert_eq!(&block_limits(&ro)[44..48], &[0; 4], "no atomic writes on a read-only unit");
    ro.run(Cmd::dout(&write_atomic(0, 0, 1, 0), &pattern(0x63, 1))).check(
        key::DATA_PROTECT,
        asc::WRITE_PROTECTED,
        "read-only",
    );
}

/// PREEMPT AND ABORT (SPC-4 5.13.11.2.4; the issue's "aborts the preempted nexuses' tasks in
/// flight"): B's tasks in flight when A preempts it finish as TASK ABORTED; A's own task is
/// untouched; B hears of the preemption by unit attention.
#[test]
fn preempt_and_abort_aborts_the_preempted_nexus_tasks_in_flight() {
    const A_KEY: u64 = 0xa;
    const B_KEY: u64 = 0xb;
    let u = Unit::malloc("t_scsi_preempt_abort", BLOCKS, false);
    let (a, b) = (u.a.clone(), u.b.clone());
    u.run_as(&a, Cmd::dout(&pr_out(0x00, 0), &pr_params(0, A_KEY))).good("A registers");
    u.run_as(&b, Cmd::dout(&pr_out(0x00, 0), &pr_params(0, B_KEY))).good("B registers");
    u.run_as(&b, Cmd::dout(&pr_out(0x01, 1), &pr_params(B_KEY, 0))).good("B reserves (write exclusive)");
    let block = pattern(9, 1);
    let ws = |tag| Cmd::dout(&c16(op::WRITE_SAME_16, 0, 0, BLOCKS as u32), &block).tag(tag);
    let finished = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    let (lun, a2, b2) = (u.lun.clone(), a.clone(), b.clone());
    let cmds = vec![(b2.clone(), ws(1).counted(&finished)), (b2.clone(), ws(2).counted(&finished))];
    let preempt = framework::call(0, move || {
        for (who, cmd) in cmds {
            let lc = channel(&lun, &who);
            submit(cmd, who, tx.clone(), |t| {
                let r = lun::execute(&lc, t);
                assert!(r.is_none(), "B's write is in flight");
                r
            });
        }
        // A preempts B's registration and aborts its tasks, while they run.
        let lc = channel(&lun, &a2);
        let (ptx, prx) = mpsc::channel();
        submit(Cmd::dout(&pr_out(0x05, 1), &pr_params(A_KEY, B_KEY)), a2, ptx, |t| lun::execute(&lc, t));
        prx
    })
    .unwrap();
    collect(&preempt, 1)[0].good("PREEMPT AND ABORT");
    let out = collect(&rx, 2);
    for o in &out {
        o.task_aborted(&format!("B's task {} in flight", o.tag));
    }
    assert_eq!(finished.load(Ordering::SeqCst), 2);
    u.run_as(&b, Cmd::none(&TUR)).check(key::UNIT_ATTENTION, asc::REGISTRATIONS_PREEMPTED, "B hears of it");
    u.run_as(&a, Cmd::none(&TUR)).good("A is not affected");
}

/// A SANITIZE CDB: IMMED, AUSE, service action, parameter list length.
fn sanitize(immed: bool, sa: u8, plen: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = op::SANITIZE;
    c[1] = if immed { 0x80 } else { 0 } | sa;
    c[7..9].copy_from_slice(&plen.to_be_bytes());
    c
}

/// An OVERWRITE parameter list: INVERT, OVERWRITE COUNT, the pattern.
fn overwrite_params(invert: bool, count: u8, pattern: &[u8]) -> Vec<u8> {
    let mut p = vec![if invert { 0x80 } else { 0 } | count, 0];
    p.extend_from_slice(&(pattern.len() as u16).to_be_bytes());
    p.extend_from_slice(pattern);
    p
}

/// libiscsi's Sanitize.Overwrite, .OverwriteReserved, .BlockErase(Reserved),
/// .CryptoErase(Reserved), .ExitFailureMode and .InvalidServiceAction: what each service
/// action does to the medium, and every CDB and parameter list refusal those tests make.
#[test]
fn sanitize_overwrites_and_erases_the_whole_medium() {
    let u = Unit::malloc("t_scsi_sanitize", BLOCKS, false);
    let last = BLOCKS - 4;
    // REPORT SUPPORTED OPERATION CODES lists each service action (libiscsi skips otherwise).
    for sa in [op::SANITIZE_OVERWRITE, op::SANITIZE_BLOCK_ERASE, op::SANITIZE_CRYPTO_ERASE, 0x1F] {
        let o = u.run(Cmd::din(&[op::MAINTENANCE_IN, 0x0C, 0x02, op::SANITIZE, 0, sa, 0, 0, 1, 0, 0, 0], 256));
        assert_eq!(o.good("RSOC one command").data[1] & 0x07, 0x03, "SANITIZE SA {sa:#x} supported");
    }
    let a = vec![b'a'; 4 * BS];
    u.write(0, &a);
    u.write(last, &a);

    // OVERWRITE with a one-block pattern, then a 4-byte one inverted over two passes.
    let p = overwrite_params(false, 1, &[0xAA; BS]);
    u.run(Cmd::dout(&sanitize(false, 1, p.len() as u16), &p)).good("OVERWRITE, one block of pattern");
    assert!(u.read(0, 4).iter().chain(&u.read(last, 4)).all(|&b| b == 0xAA), "every block overwritten");
    let p = overwrite_params(true, 2, &[1, 2, 3, 4]);
    u.run(Cmd::dout(&sanitize(false, 1, p.len() as u16), &p)).good("OVERWRITE, 4 bytes, INVERT, 2 passes");
    let inverted: Vec<u8> = [!1u8, !2, !3, !4].repeat(BS / 4);
    assert!(u.read(last, 1) == inverted, "the second pass wrote the inverted pattern");
    let half = overwrite_params(false, 1, &[0x5A; BS / 2]);
    u.run(Cmd::dout(&sanitize(false, 1, half.len() as u16), &half)).good("half a block of pattern");
    assert!(u.read(7, 1).iter().all(|&b| b == 0x5A), "repeated to fill the block");

    // OVERWRITE refusals: parameter list length below 5 or above the block length + 4;
    // OVERWRITE COUNT 0; pattern length 0 or above the block length.
    let full = vec![0u8; BS + 8];
    for len in (0..5).chain([BS as u16 + 5]) {
        u.run(Cmd::dout(&sanitize(false, 1, len), &full)).invalid_cdb(7, None, "OVERWRITE parameter list length");
    }
    let o = u.run(Cmd::dout(&sanitize(false, 1, BS as u16 + 4), &overwrite_params(false, 0, &[0; BS])));
    o.check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_PARAM, "OVERWRITE COUNT 0").field(false, 0, Some(4), "count");
    let mut zero_len = overwrite_params(false, 1, &[0; BS]);
    zero_len[2..4].copy_from_slice(&[0, 0]);
    let mut too_long = overwrite_params(false, 1, &[0; BS]);
    too_long[2..4].copy_from_slice(&(BS as u16 + 4).to_be_bytes());
    for (p, why) in [(zero_len, "pattern length 0"), (too_long, "pattern longer than a block")] {
        let o = u.run(Cmd::dout(&sanitize(false, 1, p.len() as u16), &p));
        o.check(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_PARAM, why).field(false, 2, None, why);
    }
    assert_eq!(u.read(7, 1), vec![0x5A; BS], "nothing refused touched the medium");

    // Reserved bit 6 of byte 1 and reserved bytes 2-6, for every service action.
    let p = overwrite_params(false, 1, &[0xAA; BS]);
    for sa in [op::SANITIZE_OVERWRITE, op::SANITIZE_BLOCK_ERASE, op::SANITIZE_CRYPTO_ERASE] {
        let plen = if sa == op::SANITIZE_OVERWRITE { p.len() as u16 } else { 0 };
        let mut c = sanitize(false, sa, plen);
        c[1] |= 0x40;
        u.run(Cmd::dout(&c, &p)).invalid_cdb(1, Some(6), "reserved bit in byte 1");
        for i in 2..7 {
            let mut c = sanitize(false, sa, plen);
            c[i] = i as u8;
            u.run(Cmd::dout(&c, &p)).invalid_cdb(i as u16, None, "reserved byte");
        }
    }
    // Service actions that do not exist are an invalid field (not an invalid opcode).
    for sa in [0u8, 4, 0x10, 0x1E] {
        u.run(Cmd::none(&sanitize(false, sa, 0))).invalid_cdb(1, Some(4), "unknown service action");
    }
    // BLOCK ERASE, CRYPTO ERASE and EXIT FAILURE MODE take no parameter list.
    for sa in [op::SANITIZE_BLOCK_ERASE, op::SANITIZE_CRYPTO_ERASE, op::SANITIZE_EXIT_FAILURE_MODE] {
        u.run(Cmd::dout(&sanitize(false, sa, 8), &[0; 8])).invalid_cdb(7, None, "parameter list length not 0");
    }
    u.run(Cmd::none(&sanitize(false, op::SANITIZE_EXIT_FAILURE_MODE, 0))).good("nothing to exit");

    // BLOCK ERASE and CRYPTO ERASE deallocate every block: zeroes, and GET LBA STATUS says so.
    for sa in [op::SANITIZE_BLOCK_ERASE, op::SANITIZE_CRYPTO_ERASE] {
        u.write(0, &a);
        u.write(last, &a);
        u.run(Cmd::none(&sanitize(false, sa, 0))).good("erase");
        assert!(u.read(0, 4).iter().chain(&u.read(last, 4)).all(|&b| b == 0), "erased blocks read as zeroes");
        let o = u.run(Cmd::din(&sai16(op::SAI_GET_LBA_STATUS, 0, 256), 256));
        assert_eq!(lba_status(&o.good("GET LBA STATUS").data), vec![(0, BLOCKS as u32, 1)], "all deallocated");
    }
}

/// libiscsi's Sanitize.Reset: while an overwrite runs, commands get NOT READY / SANITIZE IN
/// PROGRESS with a progress indication (INQUIRY and REQUEST SENSE still answer); a logical
/// unit reset neither waits for nor stops it; the command is reported aborted when it ends.
/// Also Sanitize.Readonly and Sanitize.Reservations.
#[test]
fn sanitize_runs_in_the_background_through_resets() {
    testing::reactors();
    let name = "t_scsi_sanitize_bg";
    let gate = crate::bdev::test_gate::create(name, BLOCKS, BS as u32);
    let u = Unit::on(name, false);
    u.attach(&u.b);
    // Writes park in the gate: the operation stays in progress for as long as the test wants.
    gate.hold(crate::bdev::IoType::Write, true);
    let (tx, rx) = mpsc::channel();
    let (lun, a) = (u.lun.clone(), u.a.clone());
    let p = overwrite_params(false, 1, &[0x33; BS]);
    let cmd = Cmd::dout(&sanitize(false, 1, p.len() as u16), &p).tag(9);
    framework::call(0, move || {
        let lc = channel(&lun, &a);
        submit(cmd, a, tx, |t| lun::execute(&lc, t));
    })
    .unwrap();
    crate::bdev::test_gate::wait_until("the first overwrite chunk is in the bdev", || gate.parked() == 1);
    let not_ready = |o: &Outcome, why: &str| {
        o.check(key::NOT_READY, asc::SANITIZE_IN_PROGRESS, why);
        assert_eq!(o.sense[15], 0x80, "{why}: SKSV with a progress indication");
    };
    not_ready(&u.run(Cmd::none(&TUR)), "TEST UNIT READY");
    not_ready(&u.run_as(&u.b, Cmd::din(&c16(op::READ_16, 0, 0, 1), BS)), "READ (16) from another nexus");
    not_ready(&u.run(Cmd::none(&[op::START_STOP_UNIT, 1, 0, 0, 1, 0])), "START STOP UNIT");
    not_ready(&u.run(Cmd::none(&sanitize(false, 2, 0))), "a second SANITIZE");
    u.run(Cmd::din(&inquiry(false, 0, 96), 96)).good("INQUIRY still answers");
    let o = u.run(Cmd::din(&request_sense(18), 18));
    o.good("REQUEST SENSE");
    assert_eq!((o.data[2] & 0x0F, o.data[12], o.data[13]), (key::NOT_READY, 0x04, 0x1B), "the sanitize sense");
    // Resets neither wait for the operation nor stop it.
    for f in [TmfFunction::AbortTask { tag: 9 }, TmfFunction::LogicalUnitReset] {
        let mut t = tmf::start(&u.lun, f, &u.a).expect("free");
        poll_done(&mut t, &format!("{f:?} during a sanitize"));
    }
    not_ready(&u.run(Cmd::none(&TUR)), "still sanitizing after the resets (before any unit attention)");
    gate.hold(crate::bdev::IoType::Write, false);
    gate.release(0);
    rx.recv_timeout(WAIT).expect("the SANITIZE ends").task_aborted("the command was covered by ABORT TASK");
    u.run(Cmd::none(&TUR)).check(key::UNIT_ATTENTION, asc::BUS_DEVICE_RESET, "ready: the reset's attention");
    assert_eq!(gate.contents(BLOCKS - 1, 1), vec![0x33; BS], "the operation went on to the last block");

    // Sanitize.Reservations: another nexus's RESERVE (6) makes SANITIZE conflict.
    u.run_as(&u.b, Cmd::none(&TUR)).check(key::UNIT_ATTENTION, asc::BUS_DEVICE_RESET, "B hears of the reset");
    u.run_as(&u.b, Cmd::none(&[op::RESERVE_6, 0, 0, 0, 0, 0])).good("B reserves");
    for sa in [op::SANITIZE_OVERWRITE, op::SANITIZE_BLOCK_ERASE, op::SANITIZE_CRYPTO_ERASE] {
        let o = u.run(Cmd::dout(&sanitize(false, sa, if sa == 1 { p.len() as u16 } else { 0 }), &p));
        assert_eq!(o.status, status::RESERVATION_CONFLICT, "SANITIZE {sa} under B's reservation");
    }
    u.run_as(&u.b, Cmd::none(&[op::RELEASE_6, 0, 0, 0, 0, 0])).good("B releases");
    // Sanitize.Readonly: a write-protected unit refuses every sanitize operation.
    let ro = Unit::malloc("t_scsi_sanitize_ro", BLOCKS, true);
    for sa in [op::SANITIZE_OVERWRITE, op::SANITIZE_BLOCK_ERASE, op::SANITIZE_CRYPTO_ERASE] {
        let o = ro.run(Cmd::dout(&sanitize(false, sa, if sa == 1 { p.len() as u16 } else { 0 }), &p));
        o.check(key::DATA_PROTECT, asc::WRITE_PROTECTED, "SANITIZE on a write-protected unit");
    }
}

/// An EXTENDED COPY (LID1) parameter list: header, one E4h target descriptor per NAA in
/// `naas`, then `segments` (src index, dst index, blocks, src LBA, dst LBA).
fn xcopy_params(list_id: u8, usage: u8, naas: &[[u8; 16]], segments: &[(u16, u16, u16, u64, u64)]) -> Vec<u8> {
    let mut p = vec![0u8; 16];
    p[0] = list_id;
    p[1] = usage << 3;
    p[2..4].copy_from_slice(&((32 * naas.len()) as u16).to_be_bytes());
    p[8..12].copy_from_slice(&((28 * segments.len()) as u32).to_be_bytes());
    for naa in naas {
        let mut d = [0u8; 32];
        d[0] = 0xE4;
        d[4] = 0x01; // binary
        d[5] = 0x03; // logical unit, NAA
        d[7] = 16;
        d[8..24].copy_from_slice(naa);
        d[29..32].copy_from_slice(&(BS as u32).to_be_bytes()[1..]);
        p.extend_from_slice(&d);
    }
    for &(s, d, n, sl, dl) in segments {
        let mut x = [0u8; 28];
        x[0] = 0x02;
        x[3] = 0x18;
        x[4..6].copy_from_slice(&s.to_be_bytes());
        x[6..8].copy_from_slice(&d.to_be_bytes());
        x[10..12].copy_from_slice(&n.to_be_bytes());
        x[12..20].copy_from_slice(&sl.to_be_bytes());
        x[20..28].copy_from_slice(&dl.to_be_bytes());
        p.extend_from_slice(&x);
    }
    p
}

fn xcopy_cdb(len: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op::EXTENDED_COPY;
    c[10..14].copy_from_slice(&len.to_be_bytes());
    c
}

fn rcr_cdb(sa: u8, list_id: u8, alloc: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op::RECEIVE_COPY_RESULTS;
    c[1] = sa;
    c[2] = list_id;
    c[10..14].copy_from_slice(&alloc.to_be_bytes());
    c
}

/// libiscsi's ExtendedCopy.Simple, .ParamHdr, .DescrLimits, .DescrType, .ValidTgtDescr,
/// .ValidSegDescr and ReceiveCopyResults.CopyStatus, .OpParams: copies within a unit and
/// between two units found by their NAA designators, and each refusal's sense data.
#[test]
fn extended_copy_between_units_by_naa_and_its_refusals() {
    let u = Unit::malloc("t_scsi_xcopy_a", BLOCKS, false);
    let v = Unit::malloc("t_scsi_xcopy_b", BLOCKS, false);
    u.attach(&u.a);
    v.attach(&v.a); // opening a channel registers the unit for target descriptors
    let (na, nb) = (super::inquiry::naa_designator(&u.lun.info()), super::inquiry::naa_designator(&v.lun.info()));
    let data = pattern(7, 64);
    u.write(0, &data);
    // Within one unit, to its end; then from unit A to unit B.
    let p = xcopy_params(1, 0, &[na], &[(0, 0, 64, 0, BLOCKS - 64)]);
    u.run(Cmd::dout(&xcopy_cdb(p.len() as u32), &p)).good("EXTENDED COPY within the unit");
    assert!(u.read(BLOCKS - 64, 64) == data, "copied to the end of the unit");
    let p = xcopy_params(2, 0, &[na, nb], &[(0, 1, 64, 0, 100)]);
    u.run(Cmd::dout(&xcopy_cdb(p.len() as u32), &p)).good("EXTENDED COPY to another unit");
    assert!(v.read(100, 64) == data, "copied to unit B");
    // COPY STATUS of list 2: completed, 1 segment, 32 KiB; an unknown list is refused.
    let o = u.run(Cmd::din(&rcr_cdb(0, 2, 1024), 1024));
    assert_eq!(&o.good("COPY STATUS").data[..12], &[0, 0, 0, 8, 1, 0, 1, 0xF1, 0, 0, 0, 32]);
    u.run(Cmd::din(&rcr_cdb(0, 9, 1024), 1024)).invalid_cdb(2, None, "no such list identifier");
    u.run_as(&u.b, Cmd::din(&rcr_cdb(0, 2, 1024), 1024)).invalid_cdb(2, None, "another nexus's list");
    let o = u.run(Cmd::din(&rcr_cdb(3, 0, 1024), 1024));
    let d = &o.good("OPERATING PARAMETERS").data;
    assert_eq!((be16(d, 8), be16(d, 10), be32(d, 12)), (8, 8, 1024), "descriptor limits");
    assert_eq!(&d[43..46], &[2, 0x02, 0xE4], "implemented descriptor types");
    u.run(Cmd::none(&xcopy_cdb(0))).good("parameter list length 0: nothing to do");

    let illegal = |o: &Outcome, code: asc::Code, why: &str| {
        o.check(key::ILLEGAL_REQUEST, code, why);
    };
    let run = |p: &[u8], len: usize| u.run(Cmd::dout(&xcopy_cdb(len as u32), &p[..len]));
    // ParamHdr: a list shorter than the header's descriptor lengths.
    let p = xcopy_params(1, 0, &[na], &[(0, 0, 8, 0, 8)]);
    illegal(&run(&p, 16 + 31), asc::PARAM_LIST_LENGTH, "target descriptor cut short");
    illegal(&run(&p, p.len() - 1), asc::PARAM_LIST_LENGTH, "segment descriptor cut short");
    // DescrLimits: one descriptor too many of each kind; descriptor lists too long.
    let p = xcopy_params(1, 0, &[na; 9], &[(0, 0, 8, 0, 8)]);
    illegal(&run(&p, p.len()), (0x26, 0x06), "9 target descriptors");
    let p = xcopy_params(1, 0, &[na], &[(0, 0, 8, 0, 8); 9]);
    illegal(&run(&p, p.len()), (0x26, 0x08), "9 segment descriptors");
    let p = xcopy_params(1, 0, &[na; 9], &[(0, 0, 8, 0, 8); 27]);
    illegal(&run(&p, p.len()), asc::PARAM_LIST_LENGTH, "descriptor lists above 1024 bytes");
    // DescrType: a Fibre Channel target descriptor, a stream-to-stream segment descriptor.
    let mut p = xcopy_params(1, 0, &[na], &[(0, 0, 8, 0, 8)]);
    p[16] = 0xE0;
    illegal(&run(&p, p.len()), (0x26, 0x07), "target descriptor type E0h");
    let mut p = xcopy_params(1, 0, &[na], &[(0, 0, 8, 0, 8)]);
    p[48] = 0x03;
    illegal(&run(&p, p.len()), (0x26, 0x09), "segment descriptor type 03h");
    // ValidTgtDescr: LU ID TYPE is ignored (SPC-4).
    let mut p = xcopy_params(1, 0, &[na], &[(0, 0, 8, 0, 8)]);
    p[17] = 0xC0;
    run(&p, p.len()).good("a reserved LU ID TYPE");
    // ValidSegDescr: an index with no target descriptor, a segment beyond the end, an
    // unknown unit: COPY ABORTED.
    for (p, why) in [
        (xcopy_params(1, 0, &[na], &[(0, 1, 8, 0, 8)]), "destination index 1 of 1 descriptor"),
        (xcopy_params(1, 0, &[na], &[(0, 0, 8, 0, BLOCKS - 1)]), "beyond the end of the unit"),
        (xcopy_params(1, 0, &[[0x6A; 16]], &[(0, 0, 8, 0, 8)]), "no unit has that designator"),
    ] {
        let o = run(&p, p.len());
        assert_eq!(
            (o.status, o.sense.get(2).map(|k| k & 0x0F)),
            (status::CHECK_CONDITION, Some(key::COPY_ABORTED)),
            "{why}"
        );
        assert!(matches!((o.sense[12], o.sense[13]), (0, 0) | (0x08, 0x04) | (0x0D, 0x02)), "{why}: {:02x?}", o.sense);
    }
}

/// START STOP UNIT with IMMED, POWER CONDITION, NO_FLUSH, LOEJ and START as libiscsi's
/// `startstopunit(sd, immed, pcm, pc, no_flush, loej, start)` builds it.
fn start_stop(immed: bool, pc: u8, no_flush: bool, loej: bool, start: bool) -> [u8; 6] {
    let b4 = (pc << 4) | (u8::from(no_flush) << 2) | (u8::from(loej) << 1) | u8::from(start);
    [op::START_STOP_UNIT, u8::from(immed), 0, 0, b4, 0]
}

fn prevent(on: bool) -> [u8; 6] {
    [op::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, u8::from(on), 0]
}

const EJECT: [u8; 6] = [op::START_STOP_UNIT, 0, 0, 0, 0x02, 0];
const LOAD: [u8; 6] = [op::START_STOP_UNIT, 0, 0, 0, 0x03, 0];

/// libiscsi 1.19.0 PreventAllow.Simple, PreventAllow.Eject and StartStopUnit.Simple on a
/// removable unit: INQUIRY says RMB, an ejected medium makes media access NOT READY / MEDIUM NOT
/// PRESENT, prevention refuses both eject and load; a unit that is not removable is unchanged.
#[test]
fn libiscsi_preventallow_eject_and_startstopunit_simple() {
    let u = Unit::removable("t_rmb_eject", 64);
    u.attach(&u.b);
    let o = u.run(Cmd::din(&inquiry(false, 0, 36), 36));
    assert_eq!(o.good("INQUIRY").data[1] & 0x80, 0x80, "RMB");
    // PreventAllow.Simple
    u.run(Cmd::none(&prevent(true))).good("prevent");
    u.run(Cmd::none(&prevent(false))).good("allow");
    // StartStopUnit.Simple: eject with IMMED, load with IMMED, then without.
    u.run(Cmd::none(&start_stop(true, 0, false, true, false))).good("eject, IMMED");
    assert!(u.lun.medium_ejected());
    u.run(Cmd::none(&TUR)).check(key::NOT_READY, asc::MEDIUM_NOT_PRESENT, "TUR with no medium");
    u.run(Cmd::din(&c10(op::READ_10, 0, 0, 1), BS)).check(key::NOT_READY, asc::MEDIUM_NOT_PRESENT, "READ");
    u.run(Cmd::dout(&c16(op::WRITE_16, 0, 0, 1), &pattern(3, 1))).check(
        key::NOT_READY,
        asc::MEDIUM_NOT_PRESENT,
        "WRITE",
    );
    u.run(Cmd::din(&sai16(op::SAI_READ_CAPACITY_16, 0, 32), 32)).check(
        key::NOT_READY,
        asc::MEDIUM_NOT_PRESENT,
        "READ CAPACITY (16)",
    );
    // What works without a medium: INQUIRY, MODE SENSE, and REQUEST SENSE telling why.
    u.run(Cmd::din(&inquiry(false, 0, 36), 36)).good("INQUIRY without a medium");
    u.run(Cmd::din(&[op::MODE_SENSE_6, 0, 0x3F, 0, 255, 0], 255)).good("MODE SENSE without a medium");
    let o = u.run(Cmd::din(&request_sense(18), 18));
    assert_eq!((o.good("REQUEST SENSE").data[2] & 0x0F, o.data[12], o.data[13]), (key::NOT_READY, 0x3A, 0));
    u.run(Cmd::none(&start_stop(true, 0, false, true, true))).good("load, IMMED");
    u.run(Cmd::none(&TUR)).good("the medium is back");
    // Another nexus hears that the medium may have changed, once.
    u.run_as(&u.b, Cmd::none(&TUR)).check(key::UNIT_ATTENTION, asc::MEDIUM_MAY_HAVE_CHANGED, "b after the load");
    u.run_as(&u.b, Cmd::none(&TUR)).good("once");
    u.run(Cmd::none(&start_stop(false, 0, false, true, false))).good("eject");
    u.run(Cmd::none(&TUR)).check(key::NOT_READY, asc::MEDIUM_NOT_PRESENT, "ejected again");
    u.run(Cmd::none(&start_stop(false, 0, false, true, true))).good("load");
    u.run(Cmd::none(&TUR)).good("loaded again");

    // PreventAllow.Eject: prevention refuses the eject (the medium stays); allowed, it ejects;
    // prevention while ejected refuses the load too.
    u.run(Cmd::none(&prevent(true))).good("prevent");
    u.run(Cmd::none(&EJECT)).check(key::ILLEGAL_REQUEST, asc::MEDIUM_REMOVAL_PREVENTED, "eject prevented");
    u.run(Cmd::none(&TUR)).good("still there");
    u.run(Cmd::none(&prevent(false))).good("allow");
    u.run(Cmd::none(&EJECT)).good("eject allowed");
    u.run(Cmd::none(&TUR)).check(key::NOT_READY, asc::MEDIUM_NOT_PRESENT, "ejected");
    u.run(Cmd::none(&prevent(true))).good("prevent without a medium");
    u.run(Cmd::none(&LOAD)).check(key::ILLEGAL_REQUEST, asc::MEDIUM_REMOVAL_PREVENTED, "load prevented");
    u.run(Cmd::none(&prevent(false))).good("allow");
    u.run(Cmd::none(&LOAD)).good("load");
    u.run(Cmd::none(&TUR)).good("loaded");

    // A unit that is not removable: RMB 0, LOEJ changes nothing, PREVENT is recorded nowhere.
    let fixed = Unit::malloc("t_rmb_fixed", 64, false);
    let o = fixed.run(Cmd::din(&inquiry(false, 0, 36), 36));
    assert_eq!(o.good("INQUIRY").data[1] & 0x80, 0, "not removable");
    fixed.run(Cmd::none(&prevent(true))).good("prevent");
    fixed.run(Cmd::none(&EJECT)).good("eject of a fixed medium");
    fixed.run(Cmd::none(&TUR)).good("still ready");
    assert!(!fixed.lun.medium_ejected());
}

/// libiscsi 1.19.0 StartStopUnit.NoLoej and StartStopUnit.PwrCnd: without LOEJ, or with a
/// POWER CONDITION, START STOP UNIT never ejects the medium.
#[test]
fn libiscsi_startstopunit_noloej_and_pwrcnd() {
    let u = Unit::removable("t_rmb_noloej", 64);
    for immed in [false, true] {
        for no_flush in [false, true] {
            for start in [false, true] {
                u.run(Cmd::none(&start_stop(immed, 0, no_flush, false, start))).good("LOEJ 0");
                u.run(Cmd::none(&TUR)).good("not ejected without LOEJ");
            }
        }
    }
    for pc in 1..16 {
        u.run(Cmd::none(&start_stop(true, pc, false, true, false))).good("a power condition");
        u.run(Cmd::none(&TUR)).good("not ejected with a power condition");
    }
}

/// libiscsi 1.19.0 PreventAllow.2ITNexuses, ITNexusLoss, Logout, LUNReset, WarmReset and
/// ColdReset: prevention by one nexus holds for every nexus; I_T nexus loss (a session's end:
/// its logout or its connection's loss) ends that nexus's prevention only; a logical unit
/// reset (also what a target reset does to each unit) ends everybody's.
#[test]
fn libiscsi_preventallow_nexus_loss_and_resets() {
    let u = Unit::removable("t_rmb_nexus", 64);
    u.attach(&u.b);
    u.run(Cmd::none(&prevent(true))).good("a prevents");
    u.run_as(&u.b, Cmd::none(&EJECT)).check(
        key::ILLEGAL_REQUEST,
        asc::MEDIUM_REMOVAL_PREVENTED,
        "another nexus cannot eject",
    );
    // b's session ends: a's prevention stays.
    let mut t = tmf::start(&u.lun, TmfFunction::ItNexusReset, &u.b).expect("free");
    poll_done(&mut t, "b's I_T nexus loss");
    u.run(Cmd::none(&EJECT)).check(key::ILLEGAL_REQUEST, asc::MEDIUM_REMOVAL_PREVENTED, "a still prevents");
    // a's session ends: its prevention goes.
    let mut t = tmf::start(&u.lun, TmfFunction::ItNexusReset, &u.a).expect("free");
    poll_done(&mut t, "a's I_T nexus loss");
    u.run(Cmd::none(&TUR)).check(key::UNIT_ATTENTION, asc::I_T_NEXUS_LOSS, "a hears of its loss");
    u.run(Cmd::none(&EJECT)).good("eject after the nexus loss");
    u.run(Cmd::none(&TUR)).check(key::NOT_READY, asc::MEDIUM_NOT_PRESENT, "ejected");
    u.run(Cmd::none(&LOAD)).good("load");
    // Both prevent; a logical unit reset ends both preventions.
    u.run(Cmd::none(&prevent(true))).good("a prevents");
    u.run_as(&u.b, Cmd::none(&TUR)).check(key::UNIT_ATTENTION, asc::I_T_NEXUS_LOSS, "b hears of its loss");
    u.run_as(&u.b, Cmd::none(&TUR)).check(key::UNIT_ATTENTION, asc::MEDIUM_MAY_HAVE_CHANGED, "and of a's load");
    u.run_as(&u.b, Cmd::none(&prevent(true))).good("b prevents");
    u.run(Cmd::none(&prevent(false))).good("a allows");
    u.run(Cmd::none(&EJECT)).check(key::ILLEGAL_REQUEST, asc::MEDIUM_REMOVAL_PREVENTED, "b still prevents");
    let mut t = tmf::start(&u.lun, TmfFunction::LogicalUnitReset, &u.a).expect("free");
    poll_done(&mut t, "logical unit reset");
    u.run(Cmd::none(&TUR)).check(key::UNIT_ATTENTION, asc::BUS_DEVICE_RESET, "the reset");
    u.run(Cmd::none(&EJECT)).good("eject after the reset");
    u.run(Cmd::none(&TUR)).check(key::NOT_READY, asc::MEDIUM_NOT_PRESENT, "ejected");
    u.run(Cmd::none(&LOAD)).good("load");
    u.run(Cmd::none(&TUR)).good("loaded");
}
