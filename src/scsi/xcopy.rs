//! EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.4, 6.18): the copy manager.
//!
//! Served: identification descriptor target descriptors (E4h) naming a logical unit of this
//! process by its NAA designator (the one the Device Identification VPD page reports), and
//! block device to block device segment descriptors (02h). A copy runs on the reactor that
//! received the command, as a sequence of bounded reads and writes (at most
//! [`COPY_CHUNK_BYTES`] each) through the units' own bdev channels; the command completes
//! when the last write has. Its outcome is kept per I_T nexus and list identifier for
//! RECEIVE COPY RESULTS / COPY STATUS; OPERATING PARAMETERS reports the limits below.
//!
//! Errors, as libiscsi's ExtendedCopy tests expect them: a parameter list shorter than its
//! header says, or descriptor lists above [`MAX_DESC_LIST_LENGTH`], PARAMETER LIST LENGTH
//! ERROR; more descriptors than the limits, TOO MANY TARGET/SEGMENT DESCRIPTORS; other
//! descriptor types, UNSUPPORTED TARGET/SEGMENT DESCRIPTOR TYPE CODE; a descriptor naming an
//! unknown unit or index, COPY ABORTED / UNREACHABLE COPY TARGET; a segment beyond the end of
//! a unit, COPY ABORTED (no additional code: libiscsi accepts no other).

use super::cdb::{be16, be32, be64};
use super::lun::{LunChannel, ScsiLun};
use super::sense::{asc, key, Sense};
use super::task::ScsiTask;
use super::Nexus;
use crate::bdev::{BdevChannel, BdevIo, IoStatus, IoType};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex, Weak};

/// Most target descriptors in one EXTENDED COPY.
pub const MAX_TARGET_DESCRIPTORS: u16 = 8;
/// Most segment descriptors in one EXTENDED COPY.
pub const MAX_SEGMENT_DESCRIPTORS: u16 = 8;
/// Most bytes of target and segment descriptors together.
pub const MAX_DESC_LIST_LENGTH: u32 = 1024;
/// Most bytes one segment copies (a block-to-block segment: 65535 blocks at most anyway).
pub const MAX_SEGMENT_BYTES: u32 = 32 << 20;
/// Bytes read and written per bdev I/O.
pub const COPY_CHUNK_BYTES: u64 = 1 << 20;
/// Copy results kept per unit (the oldest go first).
const MAX_RESULTS: usize = 64;

/// Identification descriptor target descriptor.
const TD_IDENT: u8 = 0xE4;
/// Block device to block device segment descriptor.
const SD_BLOCK_TO_BLOCK: u8 = 0x02;

/// Additional sense codes of the copy manager.
mod code {
    pub const TOO_MANY_TARGETS: (u8, u8) = (0x26, 0x06);
    pub const UNSUPPORTED_TARGET_TYPE: (u8, u8) = (0x26, 0x07);
    pub const TOO_MANY_SEGMENTS: (u8, u8) = (0x26, 0x08);
    pub const UNSUPPORTED_SEGMENT_TYPE: (u8, u8) = (0x26, 0x09);
    pub const UNREACHABLE_COPY_TARGET: (u8, u8) = (0x08, 0x04);
}

/// Every unit of this process by NAA designator, for target descriptors (weak: a unit
/// going away leaves the registry by itself).
static UNITS: Mutex<Vec<([u8; 16], Weak<ScsiLun>)>> = Mutex::new(Vec::new());

/// Makes `lun` findable by its NAA designator (idempotent).
pub(crate) fn register(lun: &Arc<ScsiLun>) {
    let naa = super::inquiry::naa_designator(&lun.info());
    let mut units = UNITS.lock().unwrap_or_else(|e| e.into_inner());
    units.retain(|(_, w)| w.strong_count() > 0);
    if !units.iter().any(|(n, w)| *n == naa && w.upgrade().is_some_and(|l| Arc::ptr_eq(&l, lun))) {
        units.push((naa, Arc::downgrade(lun)));
    }
}

fn find(naa: &[u8]) -> Option<Arc<ScsiLun>> {
    let units = UNITS.lock().unwrap_or_else(|e| e.into_inner());
    units.iter().filter(|(n, _)| n[..] == *naa).find_map(|(_, w)| w.upgrade())
}

/// One kept outcome: (nexus, list identifier) and its COPY STATUS data.
type Held = ((Nexus, u8), [u8; 12]);

/// The outcomes of finished copies, by nexus and list identifier.
#[derive(Default)]
pub(crate) struct CopyResults {
    held: Mutex<Vec<Held>>,
}

impl CopyResults {
    fn keep(&self, nexus: &Nexus, list_id: u8, status: [u8; 12]) {
        let mut h = self.held.lock().unwrap_or_else(|e| e.into_inner());
        h.retain(|(k, _)| !(k.0 == *nexus && k.1 == list_id));
        if h.len() >= MAX_RESULTS {
            h.remove(0);
        }
        h.push(((nexus.clone(), list_id), status));
    }

    fn get(&self, nexus: &Nexus, list_id: u8) -> Option<[u8; 12]> {
        let h = self.held.lock().unwrap_or_else(|e| e.into_inner());
        h.iter().find(|(k, _)| k.0 == *nexus && k.1 == list_id).map(|(_, s)| *s)
    }
}

/// COPY STATUS parameter data (SPC-4 6.18.3): completed with or without error, segments
/// processed, bytes moved in KiB.
fn copy_status(ok: bool, segments: u16, bytes: u64) -> [u8; 12] {
    let mut d = [0u8; 12];
    d[0..4].copy_from_slice(&8u32.to_be_bytes());
    d[4] = if ok { 0x01 } else { 0x02 };
    d[5..7].copy_from_slice(&segments.to_be_bytes());
    d[7] = 0xF1; // TRANSFER COUNT UNITS: kibibytes
    d[8..12].copy_from_slice(&((bytes / 1024).min(u32::MAX as u64) as u32).to_be_bytes());
    d
}

/// RECEIVE COPY RESULTS parameter data for `cdb` from `nexus`.
pub(crate) fn receive_copy_results(lun: &ScsiLun, cdb: &[u8], nexus: &Nexus) -> Result<Vec<u8>, Sense> {
    match cdb[1] & 0x1F {
        // COPY STATUS of the list identifier in byte 2.
        0x00 => lun.copy_results.get(nexus, cdb[2]).map(|s| s.to_vec()).ok_or(Sense::invalid_cdb_field(2, None)),
        // OPERATING PARAMETERS.
        0x03 => {
            let mut d = vec![0u8; 46];
            d[0..4].copy_from_slice(&42u32.to_be_bytes());
            d[4] = 0x01; // SNLID: supports no list identifier (LIST ID USAGE 11b)
            d[8..10].copy_from_slice(&MAX_TARGET_DESCRIPTORS.to_be_bytes());
            d[10..12].copy_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
            d[12..16].copy_from_slice(&MAX_DESC_LIST_LENGTH.to_be_bytes());
            d[16..20].copy_from_slice(&MAX_SEGMENT_BYTES.to_be_bytes());
            // MAXIMUM INLINE DATA LENGTH, HELD DATA LIMIT, stream size: 0 (none).
            d[34..36].copy_from_slice(&1u16.to_be_bytes()); // TOTAL CONCURRENT COPIES
            d[36] = 1; // MAXIMUM CONCURRENT COPIES
            d[37] = 9; // DATA SEGMENT GRANULARITY: 512 bytes
            d[43] = 2; // IMPLEMENTED DESCRIPTOR LIST LENGTH
            d[44] = SD_BLOCK_TO_BLOCK;
            d[45] = TD_IDENT;
            Ok(d)
        }
        _ => Err(Sense::invalid_cdb_field(1, Some(4))),
    }
}

/// One resolved block-to-block segment.
#[derive(Clone, Copy)]
struct Segment {
    src: usize,
    dst: usize,
    blocks: u64,
    src_lba: u64,
    dst_lba: u64,
}

fn copy_aborted(code: (u8, u8)) -> Sense {
    Sense::new(key::COPY_ABORTED, code)
}

/// The parsed parameter list: the units the target descriptors name and the segments.
struct Plan {
    list_id: u8,
    /// Keep the outcome for RECEIVE COPY RESULTS (LIST ID USAGE 00b or 10b).
    hold: bool,
    units: Vec<Arc<ScsiLun>>,
    segments: Vec<Segment>,
}

fn parse(p: &[u8]) -> Result<Plan, Sense> {
    if p.len() < 16 {
        return Err(Sense::param_list_length());
    }
    let list_id = p[0];
    let usage = (p[1] >> 3) & 0x03;
    if usage == 0x01 {
        return Err(Sense::invalid_param_field(1, Some(4)));
    }
    if usage == 0x03 && list_id != 0 {
        return Err(Sense::invalid_param_field(0, None));
    }
    let tgt_len = be16(p, 2) as usize;
    let seg_len = be32(p, 8) as usize;
    let inline_len = be32(p, 12) as usize;
    if inline_len != 0 {
        return Err(Sense::invalid_param_field(12, None)); // no inline data is served
    }
    if tgt_len as u64 + seg_len as u64 > MAX_DESC_LIST_LENGTH as u64 {
        return Err(Sense::param_list_length());
    }
    if 16 + tgt_len + seg_len > p.len() {
        return Err(Sense::param_list_length());
    }
    if !tgt_len.is_multiple_of(32) {
        return Err(Sense::param_list_length());
    }
    let tds = &p[16..16 + tgt_len];
    if tds.len() / 32 > MAX_TARGET_DESCRIPTORS as usize {
        return Err(Sense::new(key::ILLEGAL_REQUEST, code::TOO_MANY_TARGETS));
    }
    // Segment descriptors: a 4-byte header whose bytes 2-3 give the length after it.
    let sds = &p[16 + tgt_len..16 + tgt_len + seg_len];
    let mut raw = Vec::new();
    let mut at = 0;
    while at < sds.len() {
        if at + 4 > sds.len() {
            return Err(Sense::param_list_length());
        }
        let len = 4 + be16(sds, at + 2) as usize;
        if at + len > sds.len() {
            return Err(Sense::param_list_length());
        }
        raw.push((16 + tgt_len + at, &sds[at..at + len]));
        at += len;
    }
    if raw.len() > MAX_SEGMENT_DESCRIPTORS as usize {
        return Err(Sense::new(key::ILLEGAL_REQUEST, code::TOO_MANY_SEGMENTS));
    }
    let mut units = Vec::new();
    for (i, td) in tds.chunks(32).enumerate() {
        if td[0] != TD_IDENT {
            return Err(Sense::new(key::ILLEGAL_REQUEST, code::UNSUPPORTED_TARGET_TYPE)
                .with_field(super::sense::Field::Param { byte: (16 + 32 * i) as u16, bit: None }));
        }
        // LU ID TYPE is ignored (SPC-4) and NUL is obsolete. PERIPHERAL DEVICE TYPE: a
        // block device; the designator: association logical unit, NAA.
        let dlen = td[7] as usize;
        let unit = (td[1] & 0x1F == 0 && td[5] & 0x30 == 0 && td[5] & 0x0F == 0x03 && dlen <= 20)
            .then(|| find(&td[8..8 + dlen]))
            .flatten()
            .filter(|u| u.bdev().block_size() == u32::from_be_bytes([0, td[29], td[30], td[31]]));
        units.push(unit.ok_or(copy_aborted(code::UNREACHABLE_COPY_TARGET))?);
    }
    let mut segments = Vec::new();
    for (off, sd) in raw {
        if sd[0] != SD_BLOCK_TO_BLOCK {
            return Err(Sense::new(key::ILLEGAL_REQUEST, code::UNSUPPORTED_SEGMENT_TYPE)
                .with_field(super::sense::Field::Param { byte: off as u16, bit: None }));
        }
        if sd.len() != 28 {
            return Err(Sense::invalid_param_field(off as u16 + 2, None));
        }
        let (src, dst) = (be16(sd, 4) as usize, be16(sd, 6) as usize);
        let (Some(s), Some(d)) = (units.get(src), units.get(dst)) else {
            return Err(copy_aborted(code::UNREACHABLE_COPY_TARGET));
        };
        let blocks = be16(sd, 10) as u64;
        let (src_lba, dst_lba) = (be64(sd, 12), be64(sd, 20));
        let fits = |u: &ScsiLun, lba: u64| lba.checked_add(blocks).is_some_and(|e| e <= u.bdev().num_blocks());
        if !fits(s, src_lba) || !fits(d, dst_lba) || s.bdev().block_size() != d.bdev().block_size() {
            return Err(copy_aborted(asc::NO_ADDITIONAL));
        }
        if d.readonly() {
            return Err(Sense::write_protected());
        }
        segments.push(Segment { src, dst, blocks, src_lba, dst_lba });
    }
    Ok(Plan { list_id, hold: usage != 0x03, units, segments })
}

/// A copy under way, owned by its reactor.
struct Job {
    lun: Arc<ScsiLun>,
    plan: Plan,
    chans: Vec<BdevChannel>,
    seg: usize,
    /// Blocks of the current segment done.
    done: u64,
    /// The chunk being moved: blocks, and whether its read is done.
    chunk: u64,
    buf: Vec<u8>,
    bytes: u64,
    io: Option<Box<BdevIo>>,
    task: Option<Box<ScsiTask>>,
}

/// Decodes and starts an EXTENDED COPY (LID1). Returns the task if it finished at once.
pub(crate) fn start(lc: &Rc<LunChannel>, mut task: Box<ScsiTask>) -> Option<Box<ScsiTask>> {
    let cdb: Vec<u8> = task.cdb().to_vec();
    if cdb[1] & 0x1F != 0 {
        task.check(Sense::invalid_cdb_field(1, Some(4))); // LID4 is not served
        return Some(task);
    }
    let len = be32(&cdb, 10) as usize;
    if len == 0 {
        task.good();
        return Some(task);
    }
    let params = match super::lun::parameter_list(&mut task, len.min(16 + MAX_DESC_LIST_LENGTH as usize + 32)) {
        Ok(p) => p,
        Err(f) => {
            task.fail(f);
            return Some(task);
        }
    };
    task.set_transferred(params.len() as u64);
    let plan = match parse(&params) {
        Ok(p) => p,
        Err(s) => {
            task.check(s);
            return Some(task);
        }
    };
    let mut chans = Vec::new();
    for u in &plan.units {
        match u.open_bdev_channel() {
            Some(c) => chans.push(c),
            None => {
                task.check(copy_aborted(code::UNREACHABLE_COPY_TARGET));
                return Some(task);
            }
        }
    }
    let job = Rc::new(RefCell::new(Job {
        lun: lc.lun.clone(),
        plan,
        chans,
        seg: 0,
        done: 0,
        chunk: 0,
        buf: Vec::new(),
        bytes: 0,
        io: None,
        task: Some(task),
    }));
    next(&job);
    None
}

/// Starts the next chunk's read, or finishes.
fn next(job: &Rc<RefCell<Job>>) {
    let mut j = job.borrow_mut();
    while j.seg < j.plan.segments.len() && j.done >= j.plan.segments[j.seg].blocks {
        j.seg += 1;
        j.done = 0;
    }
    let Some(s) = j.plan.segments.get(j.seg).copied() else {
        drop(j);
        return finish(job, true);
    };
    let bs = j.plan.units[s.src].bdev().block_size() as u64;
    let n = (COPY_CHUNK_BYTES / bs).max(1).min(s.blocks - j.done);
    j.chunk = n;
    j.buf.resize((n * bs) as usize, 0);
    let lba = s.src_lba + j.done;
    submit(job, j, s.src, IoType::Read, lba, n);
}

fn submit(job: &Rc<RefCell<Job>>, mut j: std::cell::RefMut<'_, Job>, unit: usize, t: IoType, lba: u64, n: u64) {
    let mut io = j.io.take().unwrap_or_else(|| {
        let jr = job.clone();
        BdevIo::new(Rc::new(move |io| io_done(&jr, io)))
    });
    io.prepare(t, lba, n);
    io.clear_iovs();
    let bs = j.plan.units[unit].bdev().block_size() as usize;
    let buf = &mut j.buf[..n as usize * bs];
    // SAFETY: the buffer belongs to the job, which the I/O's callback keeps alive; it is not
    // touched or resized until this I/O completes (one I/O in flight at a time).
    unsafe { io.push_iov(buf.as_mut_ptr(), buf.len()) };
    let chan = j.chans[unit].clone();
    drop(j);
    chan.submit(io);
}

fn io_done(job: &Rc<RefCell<Job>>, io: Box<BdevIo>) {
    let (ok, t) = (io.status() == IoStatus::Success, io.io_type);
    let mut j = job.borrow_mut();
    j.io = Some(io);
    if !ok {
        drop(j);
        return finish(job, false);
    }
    let s = j.plan.segments[j.seg];
    if t == IoType::Read {
        let (lba, n) = (s.dst_lba + j.done, j.chunk);
        return submit(job, j, s.dst, IoType::Write, lba, n);
    }
    j.done += j.chunk;
    j.bytes += j.buf.len() as u64;
    drop(j);
    next(job);
}

fn finish(job: &Rc<RefCell<Job>>, ok: bool) {
    let mut j = job.borrow_mut();
    j.io = None; // breaks the cycle through the I/O's callback
    let Some(mut task) = j.task.take() else { return };
    let segments = if ok { j.plan.segments.len() } else { j.seg } as u16;
    if j.plan.hold {
        j.lun.copy_results.keep(&task.nexus, j.plan.list_id, copy_status(ok, segments, j.bytes));
    }
    drop(j);
    if ok {
        task.good();
    } else {
        task.check(copy_aborted(asc::NO_ADDITIONAL));
    }
    match task.done.clone() {
        Some(done) => done(task),
        None => tracing::error!("EXTENDED COPY finished without a completion callback"),
    }
}
