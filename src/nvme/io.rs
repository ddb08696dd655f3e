//! The NVM command set's I/O commands on one namespace (NVM Command Set 1.0 §3, NVMe Base 2.0
//! §7): Read, Write (with FUA), Flush, Write Zeroes, Dataset Management (deallocate), Compare,
//! the fused Compare and Write, Verify, and the reservation commands.
//!
//! Each command is checked (opcode, reservation, write protection, LBA range, transfer size,
//! data length) and then run as a short sequence of bdev I/O on the reactor's own channel.
//! Read and Write hand the request's iovecs (a transport's buffers, or a guest's memory) to
//! the bdev as they are: zero copy. Compare and Verify read into the request's scratch
//! buffer; Dataset Management parses its ranges there.
//!
//! While a bdev I/O is in flight its command is owned by that I/O: the command's [`Op`] box
//! is turned into a raw pointer in the I/O's `ctx` and back exactly once, in the completion
//! callback. `Op`s (each with its `BdevIo`) are pooled per reactor: no allocation per command
//! in steady state.

use super::namespace::Namespace;
use super::request::NvmeRequest;
use super::reservation::{Access, ACQUIRE_DATA_LEN, REGISTER_DATA_LEN, RELEASE_DATA_LEN};
use crate::bdev::{BdevChannel, BdevError, BdevIo, IoCallback, IoStatus, IoType, RangeLock};
use ferry_nvme::spec::{fuse, io, msc, sc, Status};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

/// Largest Read, Write, Compare or Compare and Write, in bytes. Transports advertise their
/// own (smaller) MDTS; this bounds what any of them can ask of the bdev at once.
pub const MAX_TRANSFER_BYTES: u64 = 32 << 20;
/// Most Dataset Management ranges in one command (DMRL; NR is 8 bits, 0's based).
pub const DSM_MAX_RANGES: usize = 256;
/// Verify reads (and discards) at most this much per bdev I/O.
const VERIFY_CHUNK_BYTES: u64 = 1 << 20;
/// Write Zeroes on a bdev with neither write-zeroes nor unmap writes zeroes from a buffer of
/// at most this size, chunk by chunk.
const ZERO_CHUNK_BYTES: u64 = 1 << 20;
/// `Op`s kept for reuse per reactor.
const POOL_MAX: usize = 256;
/// A request keeps a scratch buffer up to this size for its next command; a larger one (a
/// big Compare, Verify's chunks) is freed when the command ends, so that a transport's
/// pool of requests does not keep the largest buffer each ever needed.
const SCRATCH_KEEP: usize = 64 << 10;

/// ONCS bits (Identify Controller, NVMe Base 2.0 Figure 275).
pub mod oncs_bit {
    /// Compare.
    pub const COMPARE: u16 = 1 << 0;
    /// Dataset Management.
    pub const DSM: u16 = 1 << 2;
    /// Write Zeroes.
    pub const WRITE_ZEROES: u16 = 1 << 3;
    /// Reservations.
    pub const RESERVATIONS: u16 = 1 << 5;
    /// Verify.
    pub const VERIFY: u16 = 1 << 7;
}

/// Optional NVM commands supported (Identify Controller ONCS): Compare, Dataset Management,
/// Write Zeroes, Reservations, Verify.
pub fn oncs() -> u16 {
    oncs_bit::COMPARE | oncs_bit::DSM | oncs_bit::WRITE_ZEROES | oncs_bit::RESERVATIONS | oncs_bit::VERIFY
}

/// Fused operations supported (Identify Controller FUSES): bit 0, Compare and Write.
pub fn fuses() -> u16 {
    1
}

/// One namespace as one queue pair sees it: the namespace and this reactor's bdev channel.
pub struct NsChannel {
    /// The namespace.
    pub ns: Arc<Namespace>,
    /// This reactor's channel of its bdev.
    pub ch: BdevChannel,
}

impl NsChannel {
    /// This reactor's channel to `ns` (reactor threads only).
    pub fn new(ns: Arc<Namespace>) -> Result<Rc<NsChannel>, BdevError> {
        let ch = ns.channel()?;
        Ok(Rc::new(NsChannel { ns, ch }))
    }
}

/// Who sends the command (reservations are per host identifier).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostRef {
    /// The host identifier (Connect data, or Set Features Host Identifier).
    pub hostid: [u8; 16],
    /// The controller it came through.
    pub cntlid: u16,
}

fn generic(code: u8) -> Status {
    Status::generic(code).dnr()
}

fn failed_fused() -> Status {
    Status::generic(sc::ABORTED_FAILED_FUSED)
}

/// What a command does once checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Kind {
    #[default]
    None,
    Read,
    Write,
    Flush,
    /// Write Zeroes, done as `ZeroMode` says.
    Zeroes(ZeroMode),
    /// Dataset Management deallocate: `nlb` ranges parsed into the scratch buffer.
    Deallocate,
    Compare,
    Verify,
    CompareAndWrite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ZeroMode {
    /// Deallocate bit set and the bdev unmaps (and reads unmapped blocks as zeroes).
    Unmap,
    /// The bdev's write-zeroes.
    WriteZeroes,
    /// Writes from a zeroed buffer (a bdev with neither).
    Buffer,
}

#[derive(Debug, Clone, Copy, Default)]
struct Plan {
    kind: Kind,
    lba: u64,
    /// Blocks (for Deallocate: ranges).
    nlb: u64,
    fua: bool,
    bs: u64,
}

/// A command in flight: the request(s), the channel, the range lock of a Compare and Write,
/// and its progress.
struct Op {
    nc: Option<Rc<NsChannel>>,
    req: Option<Box<NvmeRequest>>,
    /// The Write of a Compare and Write (`req` is its Compare).
    write: Option<Box<NvmeRequest>>,
    lock: Option<RangeLock>,
    io: Option<Box<BdevIo>>,
    plan: Plan,
    step: u32,
    /// Blocks (ranges for Deallocate) done by the chunked kinds.
    progress: u64,
    flushed: bool,
}

thread_local! {
    /// The one completion callback this module's bdev I/O use on this thread.
    static IO_DONE: IoCallback = Rc::new(io_done);
    /// Idle ops, boxed: an op in flight travels as a raw pointer, so it keeps its box.
    #[allow(clippy::vec_box)]
    static POOL: RefCell<Vec<Box<Op>>> = const { RefCell::new(Vec::new()) };
}

fn new_op(nc: &Rc<NsChannel>, req: Box<NvmeRequest>, plan: Plan) -> Box<Op> {
    let mut op = POOL.with(|p| p.borrow_mut().pop()).unwrap_or_else(|| {
        Box::new(Op {
            nc: None,
            req: None,
            write: None,
            lock: None,
            io: Some(BdevIo::new(IO_DONE.with(Rc::clone))),
            plan: Plan::default(),
            step: 0,
            progress: 0,
            flushed: false,
        })
    });
    op.nc = Some(nc.clone());
    op.req = Some(req);
    op.plan = plan;
    op.step = 0;
    op.progress = 0;
    op.flushed = false;
    op
}

/// Checks `lba..lba+nlb` against the namespace's capacity.
fn check_range(lba: u64, nlb: u64, num_blocks: u64) -> Result<(), Status> {
    match lba.checked_add(nlb) {
        Some(end) if end <= num_blocks => Ok(()),
        _ => Err(generic(sc::LBA_OUT_OF_RANGE)),
    }
}

/// The checks a data-moving command (Read, Write, Compare) passes: range, transfer size,
/// and a data buffer of exactly NLB blocks.
fn check_transfer(ns: &Namespace, req: &NvmeRequest, bs: u64) -> Result<(u64, u64), Status> {
    let (lba, nlb) = (req.cmd.slba(), req.cmd.nlb() as u64);
    check_range(lba, nlb, ns.num_blocks())?;
    let len = nlb * bs; // at most 65536 blocks: no overflow
    if len > MAX_TRANSFER_BYTES {
        return Err(generic(sc::INVALID_FIELD));
    }
    if req.data_len() != len {
        return Err(generic(sc::DATA_SGL_LENGTH_INVALID));
    }
    Ok((lba, nlb))
}

/// Read, Write (FUA), Flush, Write Zeroes, DSM (deallocate), Compare, Verify, Reservation
/// Register/Report/Acquire/Release on one namespace. Some(req) when done at once (its status
/// set); otherwise `req.finish()` later on this reactor.
pub fn execute(nc: &Rc<NsChannel>, host: &HostRef, mut req: Box<NvmeRequest>) -> Option<Box<NvmeRequest>> {
    match decode(nc, host, &mut req) {
        Err(status) => {
            req.set_status(status);
            Some(req)
        }
        Ok(None) => {
            req.set_status(Status::SUCCESS);
            Some(req)
        }
        Ok(Some(plan)) => {
            step(new_op(nc, req, plan));
            None
        }
    }
}

/// Checks a command and decides what it does; Ok(None) when it is done already.
fn decode(nc: &NsChannel, host: &HostRef, req: &mut NvmeRequest) -> Result<Option<Plan>, Status> {
    let ns = &nc.ns;
    let cmd = req.cmd;
    if cmd.fuse() != fuse::NONE {
        // A fused command reaches this module only as a pair (execute_compare_and_write).
        return Err(generic(sc::ABORTED_MISSING_FUSED));
    }
    let bs = ns.block_size() as u64;
    let bdev = nc.ch.bdev();
    let plan = |kind, lba, nlb| Plan { kind, lba, nlb, fua: cmd.fua(), bs };
    let resv = |access| ns.reservations.check(&host.hostid, access);
    match cmd.opcode() {
        io::READ => {
            resv(Access::Read)?;
            let (lba, nlb) = check_transfer(ns, req, bs)?;
            Ok(Some(plan(Kind::Read, lba, nlb)))
        }
        io::WRITE => {
            resv(Access::Write)?;
            if ns.read_only() {
                return Err(generic(sc::NS_WRITE_PROTECTED));
            }
            let (lba, nlb) = check_transfer(ns, req, bs)?;
            Ok(Some(plan(Kind::Write, lba, nlb)))
        }
        io::COMPARE => {
            resv(Access::Read)?;
            let (lba, nlb) = check_transfer(ns, req, bs)?;
            Ok(Some(plan(Kind::Compare, lba, nlb)))
        }
        io::FLUSH => {
            resv(Access::Write)?;
            // Nothing volatile to flush on a bdev that has no flush.
            Ok(bdev.supports(IoType::Flush).then(|| plan(Kind::Flush, 0, 0)))
        }
        io::WRITE_ZEROES => {
            resv(Access::Write)?;
            if ns.read_only() {
                return Err(generic(sc::NS_WRITE_PROTECTED));
            }
            let (lba, nlb) = (cmd.slba(), cmd.nlb() as u64);
            check_range(lba, nlb, ns.num_blocks())?;
            let deac = cmd.cdw12() & (1 << 25) != 0;
            let mode = if deac && bdev.supports(IoType::Unmap) {
                ZeroMode::Unmap
            } else if bdev.supports(IoType::WriteZeroes) {
                ZeroMode::WriteZeroes
            } else {
                ZeroMode::Buffer
            };
            Ok(Some(plan(Kind::Zeroes(mode), lba, nlb)))
        }
        io::DATASET_MANAGEMENT => {
            resv(Access::Write)?;
            let nr = (cmd.cdw10() & 0xff) as usize + 1;
            let deallocate = cmd.cdw11() & (1 << 2) != 0;
            if req.data_len() < (nr * 16) as u64 {
                return Err(generic(sc::DATA_SGL_LENGTH_INVALID));
            }
            if !deallocate {
                return Ok(None); // integral read/write hints only: nothing to do
            }
            if ns.read_only() {
                return Err(generic(sc::NS_WRITE_PROTECTED));
            }
            let mut ranges = std::mem::take(&mut req.scratch);
            ranges.clear();
            ranges.resize(nr * 16, 0);
            req.copy_from_host(&mut ranges);
            let num_blocks = ns.num_blocks();
            let checked = ranges.chunks_exact(16).try_for_each(|r| {
                let (len, lba) = (ferry_nvme::spec::le32(r, 4) as u64, ferry_nvme::spec::le64(r, 8));
                check_range(lba, len, num_blocks)
            });
            req.scratch = ranges;
            checked?;
            // Deallocation is advisory: a bdev that cannot unmap keeps its data.
            Ok(bdev.supports(IoType::Unmap).then(|| plan(Kind::Deallocate, 0, nr as u64)))
        }
        io::VERIFY => {
            resv(Access::Read)?;
            let (lba, nlb) = (cmd.slba(), cmd.nlb() as u64);
            check_range(lba, nlb, ns.num_blocks())?;
            Ok(Some(plan(Kind::Verify, lba, nlb)))
        }
        io::RESERVATION_REGISTER => {
            let mut data = [0u8; REGISTER_DATA_LEN];
            host_data(req, &mut data)?;
            ns.reservations.register(&host.hostid, &cmd, &data).map(|()| None)
        }
        io::RESERVATION_ACQUIRE => {
            let mut data = [0u8; ACQUIRE_DATA_LEN];
            host_data(req, &mut data)?;
            ns.reservations.acquire(&host.hostid, &cmd, &data).map(|()| None)
        }
        io::RESERVATION_RELEASE => {
            let mut data = [0u8; RELEASE_DATA_LEN];
            host_data(req, &mut data)?;
            ns.reservations.release(&host.hostid, &cmd, &data).map(|()| None)
        }
        io::RESERVATION_REPORT => {
            let bytes = (cmd.cdw10() as u64 + 1) * 4;
            if req.data_len() < bytes {
                return Err(generic(sc::DATA_SGL_LENGTH_INVALID));
            }
            let eds = cmd.cdw11() & 1 != 0;
            let mut out = std::mem::take(&mut req.scratch);
            let built = ns.reservations.report(eds, bytes.min(usize::MAX as u64) as usize, &mut out);
            if built.is_ok() {
                req.copy_to_host(&out);
            }
            req.scratch = out;
            built.map(|()| None)
        }
        _ => Err(generic(sc::INVALID_OPCODE)),
    }
}

/// Copies a reservation command's data (CRKEY and friends); too little is a length error.
fn host_data(req: &NvmeRequest, out: &mut [u8]) -> Result<(), Status> {
    if req.data_len() < out.len() as u64 {
        return Err(generic(sc::DATA_SGL_LENGTH_INVALID));
    }
    req.copy_from_host(out);
    Ok(())
}

/// A fused Compare (fuse FIRST) and Write (fuse SECOND) pair under the bdev's range lock:
/// the write happens only if the compare matches; both complete (the write as
/// ABORTED_FAILED_FUSED when the compare fails). Completes through each request's `finish()`
/// (or returns both at once).
pub fn execute_compare_and_write(
    nc: &Rc<NsChannel>,
    host: &HostRef,
    mut cmp: Box<NvmeRequest>,
    mut write: Box<NvmeRequest>,
) -> Option<(Box<NvmeRequest>, Box<NvmeRequest>)> {
    match decode_pair(nc, host, &cmp, &write) {
        Err((c, w)) => {
            cmp.set_status(c);
            write.set_status(w);
            Some((cmp, write))
        }
        Ok(plan) => {
            let mut op = new_op(nc, cmp, plan);
            op.write = Some(write);
            // Fenced against every other I/O to its blocks, from any queue on any reactor, from
            // before its read until after its write: the range lock. Others' overlapping I/O
            // waits in its channel; Compare and Writes on the same blocks go in order.
            nc.ch.lock_range(plan.lba, plan.nlb, move |lock| {
                let mut op = op;
                op.lock = Some(lock);
                step(op);
            });
            None
        }
    }
}

/// Checks a fused pair; on failure the statuses of the compare and of the write.
fn decode_pair(
    nc: &NsChannel,
    host: &HostRef,
    cmp: &NvmeRequest,
    write: &NvmeRequest,
) -> Result<Plan, (Status, Status)> {
    let ns = &nc.ns;
    let first = |s: Status| (s, failed_fused());
    let second = |s: Status| (failed_fused(), s);
    if cmp.cmd.opcode() != io::COMPARE || cmp.cmd.fuse() != fuse::FIRST {
        return Err(first(generic(sc::INVALID_FIELD)));
    }
    if write.cmd.opcode() != io::WRITE || write.cmd.fuse() != fuse::SECOND {
        return Err(second(generic(sc::INVALID_FIELD)));
    }
    if (cmp.cmd.slba(), cmp.cmd.nlb()) != (write.cmd.slba(), write.cmd.nlb()) {
        return Err(second(generic(sc::INVALID_FIELD)));
    }
    ns.reservations.check(&host.hostid, Access::Read).map_err(first)?;
    ns.reservations.check(&host.hostid, Access::Write).map_err(second)?;
    if ns.read_only() {
        return Err(second(generic(sc::NS_WRITE_PROTECTED)));
    }
    let bs = ns.block_size() as u64;
    let (lba, nlb) = check_transfer(ns, cmp, bs).map_err(first)?;
    check_transfer(ns, write, bs).map_err(second)?;
    Ok(Plan { kind: Kind::CompareAndWrite, lba, nlb, fua: write.cmd.fua(), bs })
}

/// Where a bdev I/O's data lives.
enum Data {
    None,
    /// The request's own buffer (zero copy).
    Req,
    /// The Write's buffer of a Compare and Write (zero copy).
    Write,
    /// The first `len` bytes of the request's scratch buffer.
    Scratch(usize),
}

/// Runs the next bdev I/O of the command, or finishes it.
fn step(mut op: Box<Op>) {
    let p = op.plan;
    let len = p.nlb * p.bs;
    let can_flush = op.nc.as_ref().is_some_and(|nc| nc.ch.bdev().supports(IoType::Flush));
    let (io_type, lba, n, data) = match (p.kind, op.step) {
        (Kind::Read, 0) => (IoType::Read, p.lba, p.nlb, Data::Req),
        (Kind::Read, _) => {
            if let Some(req) = op.req.as_mut() {
                req.set_transferred(len);
            }
            return finish(op, Status::SUCCESS);
        }
        (Kind::Write, 0) => (IoType::Write, p.lba, p.nlb, Data::Req),
        // FUA: the bdev layer has no FUA of its own, so the write is followed by a flush.
        (Kind::Write, 1) if p.fua && can_flush => (IoType::Flush, 0, 0, Data::None),
        (Kind::Flush, 0) => (IoType::Flush, 0, 0, Data::None),
        (Kind::Write | Kind::Flush, _) => return finish(op, Status::SUCCESS),
        (Kind::Zeroes(mode), _) if op.progress < p.nlb => match mode {
            ZeroMode::Unmap => (IoType::Unmap, p.lba, p.nlb, Data::None),
            ZeroMode::WriteZeroes => (IoType::WriteZeroes, p.lba, p.nlb, Data::None),
            ZeroMode::Buffer => {
                let n = (ZERO_CHUNK_BYTES / p.bs).max(1).min(p.nlb - op.progress);
                let scratch = &mut op.req.as_mut().expect("a running command has its request").scratch;
                if op.step == 0 {
                    scratch.clear();
                    scratch.resize((n * p.bs) as usize, 0);
                }
                (IoType::Write, p.lba + op.progress, n, Data::Scratch((n * p.bs) as usize))
            }
        },
        (Kind::Zeroes(_), _) if p.fua && can_flush && !op.flushed => (IoType::Flush, 0, 0, Data::None),
        (Kind::Zeroes(_), _) => return finish(op, Status::SUCCESS),
        (Kind::Deallocate, _) => {
            // One bdev unmap per range that has blocks.
            let scratch = &op.req.as_ref().expect("a running command has its request").scratch;
            let mut i = op.progress as usize;
            while i < p.nlb as usize && ferry_nvme::spec::le32(&scratch[16 * i..], 4) == 0 {
                i += 1;
            }
            op.progress = i as u64;
            if i >= p.nlb as usize {
                return finish(op, Status::SUCCESS);
            }
            let r = &scratch[16 * i..16 * (i + 1)];
            let (len, lba) = (ferry_nvme::spec::le32(r, 4) as u64, ferry_nvme::spec::le64(r, 8));
            (IoType::Unmap, lba, len, Data::None)
        }
        (Kind::Compare | Kind::CompareAndWrite, 0) => {
            let req = op.req.as_mut().expect("a running command has its request");
            req.scratch.clear();
            req.scratch.resize(len as usize, 0);
            (IoType::Read, p.lba, p.nlb, Data::Scratch(len as usize))
        }
        (Kind::Compare, _) => {
            let req = op.req.as_ref().expect("a running command has its request");
            let status = if same_data(req) { Status::SUCCESS } else { Status::media(msc::COMPARE_FAILURE).dnr() };
            return finish(op, status);
        }
        (Kind::CompareAndWrite, 1) => {
            let req = op.req.as_ref().expect("a running command has its request");
            if !same_data(req) {
                return finish_pair(op, Status::media(msc::COMPARE_FAILURE).dnr(), failed_fused());
            }
            (IoType::Write, p.lba, p.nlb, Data::Write)
        }
        (Kind::CompareAndWrite, 2) if p.fua && can_flush => (IoType::Flush, 0, 0, Data::None),
        (Kind::CompareAndWrite, _) => return finish_pair(op, Status::SUCCESS, Status::SUCCESS),
        (Kind::Verify, _) if op.progress < p.nlb => {
            let n = (VERIFY_CHUNK_BYTES / p.bs).max(1).min(p.nlb - op.progress);
            let req = op.req.as_mut().expect("a running command has its request");
            req.scratch.resize((n * p.bs) as usize, 0);
            (IoType::Read, p.lba + op.progress, n, Data::Scratch((n * p.bs) as usize))
        }
        (Kind::Verify, _) => return finish(op, Status::SUCCESS),
        (Kind::None, _) => return finish(op, generic(sc::INVALID_OPCODE)),
    };
    submit(op, io_type, lba, n, data);
}

/// Whether the host's data (the request's buffer) equals the blocks read into its scratch.
fn same_data(req: &NvmeRequest) -> bool {
    let mut at = 0usize;
    for v in req.iovs() {
        // SAFETY: push_iov's contract: each segment is valid for reads of iov_len bytes and
        // untouched by anyone else until the request completes, which is after this.
        let theirs = unsafe { std::slice::from_raw_parts(v.iov_base.cast::<u8>(), v.iov_len) };
        let Some(ours) = req.scratch.get(at..at + theirs.len()) else { return false };
        if ours != theirs {
            return false;
        }
        at += theirs.len();
    }
    at == req.scratch.len()
}

/// Sends one bdev I/O for the command; the command travels in the I/O's `ctx`.
fn submit(mut op: Box<Op>, io_type: IoType, lba: u64, blocks: u64, data: Data) {
    let mut io = op.io.take().unwrap_or_else(|| BdevIo::new(IO_DONE.with(Rc::clone)));
    io.prepare(io_type, lba, blocks);
    io.clear_iovs();
    let push_all = |io: &mut BdevIo, req: Option<&NvmeRequest>| {
        for v in req.map_or(&[][..], |r| r.iovs()) {
            // SAFETY: the transport promised (NvmeRequest::push_iov) that the request's buffers
            // stay valid and untouched until it completes, which is after this I/O.
            unsafe { io.push_iov(v.iov_base.cast::<u8>(), v.iov_len) };
        }
    };
    match data {
        Data::None => {}
        Data::Req => push_all(&mut io, op.req.as_deref()),
        Data::Write => push_all(&mut io, op.write.as_deref()),
        Data::Scratch(len) => {
            let buf = &mut op.req.as_mut().expect("a running command has its request").scratch[..len];
            // SAFETY: the scratch buffer belongs to the request, parked with the op (as a raw
            // pointer in the I/O's ctx) and neither touched, resized nor freed until this I/O
            // completes.
            unsafe { io.push_iov(buf.as_mut_ptr(), buf.len()) };
        }
    }
    let nc = op.nc.clone().expect("a running command has its channel");
    // A Compare and Write's own I/O passes its range lock.
    let lock_id = op.lock.as_ref().map_or(0, RangeLock::id);
    io.ctx = Box::into_raw(op) as u64;
    nc.ch.submit_as(io, lock_id);
}

/// The completion of a command's bdev I/O.
fn io_done(io: Box<BdevIo>) {
    // SAFETY: `ctx` was set by `submit` from `Box::into_raw` of the op that owns this I/O, and
    // each submitted I/O completes exactly once, so the box is rebuilt exactly once.
    let mut op = unsafe { Box::from_raw(io.ctx as *mut Op) };
    let (status, errno, io_type, blocks) = (io.status(), io.errno(), io.io_type, io.num_blocks);
    op.io = Some(io);
    if status != IoStatus::Success {
        let s = bdev_status(status, errno, io_type);
        tracing::debug!(?io_type, errno, sct = s.sct, sc = s.sc, "NVMe command's bdev I/O failed");
        if op.plan.kind == Kind::CompareAndWrite {
            // The read failed: the write never ran. The write (or its flush) failed: the
            // compare had succeeded.
            return if op.step == 0 { finish_pair(op, s, failed_fused()) } else { finish_pair(op, Status::SUCCESS, s) };
        }
        return finish(op, s);
    }
    match op.plan.kind {
        _ if io_type == IoType::Flush => op.flushed = true,
        Kind::Zeroes(_) | Kind::Verify => op.progress += blocks,
        Kind::Deallocate => op.progress += 1,
        _ => {}
    }
    op.step += 1;
    step(op);
}

/// The NVMe status for a failed bdev I/O.
fn bdev_status(status: IoStatus, errno: i32, io_type: IoType) -> Status {
    match (status, errno) {
        (IoStatus::Aborted, _) => Status::generic(sc::ABORTED_BY_REQUEST),
        // The bdev is going away: the namespace follows (the model's changed-NS event).
        (_, libc::ENODEV) => Status::generic(sc::NS_NOT_READY),
        (_, libc::EPERM) => generic(sc::NS_WRITE_PROTECTED),
        (_, libc::ENOSPC) => generic(sc::CAPACITY_EXCEEDED),
        // Checked before submission: the bdev shrank meanwhile.
        (_, libc::EINVAL) => generic(sc::LBA_OUT_OF_RANGE),
        _ => match io_type {
            IoType::Read => Status::media(msc::UNRECOVERED_READ_ERROR),
            IoType::Write | IoType::WriteZeroes | IoType::Unmap => Status::media(msc::WRITE_FAULT),
            IoType::Flush | IoType::Reset => Status::generic(sc::INTERNAL),
        },
    }
}

/// Ends a command with `status` and hands it back to its transport.
fn finish(mut op: Box<Op>, status: Status) {
    let req = op.req.take();
    recycle(op);
    if let Some(mut req) = req {
        trim_scratch(&mut req);
        req.set_status(status);
        req.finish();
    }
}

/// Ends a Compare and Write: its lock goes first (its I/O are all done), then both complete.
fn finish_pair(mut op: Box<Op>, cmp_status: Status, write_status: Status) {
    let (cmp, write) = (op.req.take(), op.write.take());
    recycle(op);
    if let Some(mut cmp) = cmp {
        trim_scratch(&mut cmp);
        cmp.set_status(cmp_status);
        cmp.finish();
    }
    if let Some(mut write) = write {
        write.set_status(write_status);
        write.finish();
    }
}

fn trim_scratch(req: &mut NvmeRequest) {
    if req.scratch.capacity() > SCRATCH_KEEP {
        req.scratch = Vec::new();
    }
}

/// Returns an op to this reactor's pool (dropping its range lock, if any: that unlocks).
fn recycle(mut op: Box<Op>) {
    op.lock = None;
    op.nc = None;
    op.write = None;
    op.req = None;
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_MAX {
            p.push(op);
        }
    });
}

#[cfg(test)]
#[path = "io_tests.rs"]
mod tests;
