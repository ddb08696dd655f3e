//! SANITIZE (SBC-4 5.30, 4.11): OVERWRITE, BLOCK ERASE, CRYPTO ERASE and EXIT FAILURE MODE.
//!
//! A sanitize is an operation of the unit, not of the command that starts it: it runs in the
//! background on the reactor that received the command, as a sequence of bounded bdev I/Os
//! (never one giant I/O or buffer), and goes on when the command is aborted, the unit is
//! reset or the initiator goes away (SBC-4 4.11.2). Meanwhile every command but INQUIRY,
//! REPORT LUNS and REQUEST SENSE gets NOT READY / SANITIZE IN PROGRESS with a progress
//! indication. With IMMED the command completes once the operation has started; without,
//! when it ends (or, reported aborted, when it ends after a task management function
//! covered it).
//!
//! - OVERWRITE writes the parameter list's pattern (repeated to fill each block) over every
//!   block, OVERWRITE COUNT times, inverting it between passes when INVERT is set. Passes run
//!   at [`OVERWRITE_BYTES_PER_SEC`]: a sanitize must not starve the other units sharing the
//!   reactor and the backing device for as long as it takes to write the whole medium.
//! - BLOCK ERASE deallocates every block (unmap; write zeroes on a unit that cannot unmap):
//!   blocks read back as zeroes (LBPRZ) and GET LBA STATUS reports them deallocated.
//! - CRYPTO ERASE: Ferry's bdevs keep no media encryption key to change; the operation makes
//!   the data unrecoverable the way BLOCK ERASE does, which is the effect SBC-4 defines for
//!   every sanitize operation (WACEREQ 01b, as WABEREQ).
//! - EXIT FAILURE MODE leaves the failure mode a failed sanitize with AUSE set entered; a
//!   failure without AUSE can only be cleared by a sanitize that completes.

use super::cdb::{be16, op};
use super::lun::{self, LunChannel, ScsiLun};
use super::sense::{asc, key, status, Field, Sense};
use super::task::ScsiTask;
use super::Nexus;
use crate::bdev::{BdevIo, IoStatus, IoType};
use crate::framework::{self, PollStatus, Poller};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bytes an overwrite pass writes per bdev I/O (one buffer of the pattern, reused).
const OVERWRITE_CHUNK_BYTES: u64 = 1 << 20;
/// Bytes a BLOCK/CRYPTO ERASE deallocates per bdev I/O.
const ERASE_CHUNK_BYTES: u64 = 64 << 20;
/// The rate of overwrite passes, in bytes per second (a 128 MiB unit: 8 s per pass).
pub const OVERWRITE_BYTES_PER_SEC: u64 = 16 << 20;

/// No failed sanitize.
const NOT_FAILED: u8 = 0;
/// The last sanitize failed (without AUSE: only a new sanitize clears this).
const FAILED: u8 = 1;
/// The last sanitize failed with AUSE set: EXIT FAILURE MODE clears this.
const FAILED_AUSE: u8 = 2;

/// The command waiting for an operation (IMMED 0), as task management sees it.
struct Waiter {
    nexus: Nexus,
    tag: u64,
    aborted: bool,
}

/// A unit's sanitize state, readable from every reactor.
#[derive(Default)]
pub(crate) struct SanitizeState {
    running: AtomicBool,
    /// PROGRESS INDICATION of the running operation, in 65536ths.
    progress: AtomicU32,
    failed: AtomicU8,
    waiter: Mutex<Option<Waiter>>,
}

impl SanitizeState {
    /// Whether an operation is running.
    pub(crate) fn running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// NOT READY / SANITIZE IN PROGRESS with the progress so far.
    pub(crate) fn in_progress(&self) -> Sense {
        let p = self.progress.load(Ordering::Relaxed).min(0xFFFF) as u16;
        Sense::new(key::NOT_READY, asc::SANITIZE_IN_PROGRESS).with_field(Field::Progress(p))
    }

    /// How a command with `opcode` is refused because of a sanitize (SBC-4 4.11.2): while one
    /// runs, everything but INQUIRY, REPORT LUNS and REQUEST SENSE; after one failed, the
    /// commands that access the medium.
    #[inline]
    pub(crate) fn gate(&self, opcode: u8) -> Option<Sense> {
        if self.idle() {
            return None;
        }
        self.gate_slow(opcode)
    }

    /// No operation runs and none failed: nothing is refused (two loads, for the data path).
    #[inline]
    pub(crate) fn idle(&self) -> bool {
        !self.running() && self.failed.load(Ordering::Acquire) == NOT_FAILED
    }

    #[cold]
    fn gate_slow(&self, opcode: u8) -> Option<Sense> {
        if self.running() {
            return match opcode {
                op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE => None,
                _ => Some(self.in_progress()),
            };
        }
        if self.failed.load(Ordering::Acquire) != NOT_FAILED && super::blockcmd::is_block_command(opcode) {
            return Some(Sense::new(key::MEDIUM_ERROR, asc::SANITIZE_FAILED));
        }
        None
    }

    /// A task management function covering `nexus` (None: all) and `tag` (None: all) started:
    /// the waiting command, if covered, is reported aborted when the operation ends (the
    /// operation itself goes on).
    pub(crate) fn note_abort(&self, nexus: Option<&Nexus>, tag: Option<u64>) {
        let mut w = self.waiter.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = w.as_mut() {
            if nexus.is_none_or(|n| *n == w.nexus) && tag.is_none_or(|t| t == w.tag) {
                w.aborted = true;
            }
        }
    }

    fn take_waiter_aborted(&self) -> bool {
        self.waiter.lock().unwrap_or_else(|e| e.into_inner()).take().is_some_and(|w| w.aborted)
    }
}

/// What the operation does.
enum Work {
    /// Pattern passes; `buf` holds `OVERWRITE_CHUNK_BYTES` (or the whole unit, if smaller) of
    /// the pattern.
    Overwrite { buf: Vec<u8>, passes: u8, invert: bool },
    /// One pass of unmap or write zeroes.
    Erase(IoType),
}

/// A running operation, owned by its reactor.
struct Job {
    lun: Arc<ScsiLun>,
    lc: Rc<LunChannel>,
    work: Work,
    ause: bool,
    bs: u64,
    num_blocks: u64,
    /// Pass under way (0-based) and the next block of it.
    pass: u8,
    next: u64,
    /// The one bdev I/O, when not in flight.
    io: Option<Box<BdevIo>>,
    busy: bool,
    /// The final flush has been submitted.
    flushing: bool,
    waiter: Option<Box<ScsiTask>>,
    poller: Option<Poller>,
}

type JobRef = Rc<RefCell<Job>>;

/// Decodes and starts a SANITIZE. Returns the task if it finished at once.
pub(crate) fn start(lc: &Rc<LunChannel>, mut task: Box<ScsiTask>) -> Option<Box<ScsiTask>> {
    match begin(lc, &mut task) {
        Err(sense) => task.check(sense),
        Ok(None) => task.good(),
        Ok(Some(job)) => {
            let immed = task.cdb[1] & 0x80 != 0;
            let state = &lc.lun.sanitize;
            if immed {
                task.good();
                run(job);
                return Some(task);
            }
            *state.waiter.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(Waiter { nexus: (*task.nexus).clone(), tag: task.tag, aborted: false });
            job.borrow_mut().waiter = Some(task);
            run(job);
            return None;
        }
    }
    Some(task)
}

/// Checks the CDB and parameter list; Some(job) when an operation is to run (the unit is
/// then marked sanitizing), None when the command is done.
fn begin(lc: &Rc<LunChannel>, task: &mut ScsiTask) -> Result<Option<JobRef>, Sense> {
    let cdb: Vec<u8> = task.cdb().to_vec();
    let lun = &lc.lun;
    if cdb[1] & 0x40 != 0 {
        return Err(Sense::invalid_cdb_field(1, Some(6)));
    }
    if let Some(i) = (2..7).find(|&i| cdb[i] != 0) {
        return Err(Sense::invalid_cdb_field(i as u16, None));
    }
    let ause = cdb[1] & 0x20 != 0;
    let sa = cdb[1] & 0x1F;
    let plen = be16(&cdb, 7) as usize;
    let bs = lun.bdev().block_size() as u64;
    match sa {
        op::SANITIZE_OVERWRITE if plen < 5 || plen as u64 > bs + 4 => return Err(Sense::invalid_cdb_field(7, None)),
        op::SANITIZE_OVERWRITE => {}
        op::SANITIZE_BLOCK_ERASE | op::SANITIZE_CRYPTO_ERASE | op::SANITIZE_EXIT_FAILURE_MODE if plen != 0 => {
            return Err(Sense::invalid_cdb_field(7, None))
        }
        op::SANITIZE_BLOCK_ERASE | op::SANITIZE_CRYPTO_ERASE | op::SANITIZE_EXIT_FAILURE_MODE => {}
        _ => return Err(Sense::invalid_cdb_field(1, Some(4))),
    }
    let state = &lun.sanitize;
    if sa == op::SANITIZE_EXIT_FAILURE_MODE {
        task.set_wanted(0);
        return match state.failed.load(Ordering::Acquire) {
            FAILED => Err(Sense::invalid_cdb_field(1, Some(4))), // without AUSE: sanitize again
            _ => {
                state.failed.store(NOT_FAILED, Ordering::Release);
                Ok(None)
            }
        };
    }
    if lun.readonly() {
        return Err(Sense::write_protected());
    }
    let work = if sa == op::SANITIZE_OVERWRITE {
        let params = lun::parameter_list(task, plen).map_err(|f| match f {
            super::Failure::Check(s) => s,
            _ => Sense::param_list_length(),
        })?;
        task.set_transferred(plen as u64);
        overwrite_work(&params, bs, lun.bdev().num_blocks())?
    } else {
        let info = lun.info();
        Work::Erase(if info.unmap { IoType::Unmap } else { IoType::WriteZeroes })
    };
    if lc.bdev().is_none() {
        return Err(Sense::new(key::NOT_READY, asc::LUN_NOT_READY));
    }
    if state.running.swap(true, Ordering::AcqRel) {
        return Err(state.in_progress()); // (the gate normally answers first)
    }
    state.progress.store(0, Ordering::Relaxed);
    let job = Job {
        lun: lun.clone(),
        lc: lc.clone(),
        work,
        ause,
        bs,
        num_blocks: lun.bdev().num_blocks(),
        pass: 0,
        next: 0,
        io: None,
        busy: false,
        flushing: false,
        waiter: None,
        poller: None,
    };
    Ok(Some(Rc::new(RefCell::new(job))))
}

/// The OVERWRITE parameter list (SBC-4 5.30.3): INVERT, TEST (00b), OVERWRITE COUNT (1-31),
/// INITIALIZATION PATTERN LENGTH (1 to the block length) and the pattern.
fn overwrite_work(p: &[u8], bs: u64, num_blocks: u64) -> Result<Work, Sense> {
    let invert = p[0] & 0x80 != 0;
    if p[0] & 0x60 != 0 {
        return Err(Sense::invalid_param_field(0, Some(6)));
    }
    let passes = p[0] & 0x1F;
    if passes == 0 {
        return Err(Sense::invalid_param_field(0, Some(4)));
    }
    if p[1] != 0 {
        return Err(Sense::invalid_param_field(1, None));
    }
    let len = be16(p, 2) as usize;
    if len == 0 || len as u64 > bs || len > p.len() - 4 {
        return Err(Sense::invalid_param_field(2, None));
    }
    let pattern = &p[4..4 + len];
    let block: Vec<u8> = pattern.iter().copied().cycle().take(bs as usize).collect();
    let blocks = (OVERWRITE_CHUNK_BYTES / bs).max(1).min(num_blocks.max(1));
    Ok(Work::Overwrite { buf: block.repeat(blocks as usize), passes, invert })
}

/// Starts a job: erases run I/O after I/O; overwrites one chunk per poller period.
fn run(job: JobRef) {
    let period = match &job.borrow().work {
        Work::Overwrite { buf, .. } => {
            Some(Duration::from_nanos(buf.len() as u64 * 1_000_000_000 / OVERWRITE_BYTES_PER_SEC))
        }
        Work::Erase(_) => None,
    };
    if let Some(period) = period {
        let j = job.clone();
        let poller = framework::poller_register("scsi_sanitize", period, move || PollStatus::from(tick(&j)));
        job.borrow_mut().poller = Some(poller);
    }
    tick(&job);
}

/// Submits the next I/O unless one is in flight; true if it did.
fn tick(job: &JobRef) -> bool {
    let mut j = job.borrow_mut();
    if j.busy {
        return false;
    }
    let passes = match &j.work {
        Work::Overwrite { passes, .. } => *passes,
        Work::Erase(_) => 1,
    };
    let (io_type, lba, blocks, data) = if j.pass >= passes {
        if j.flushing {
            return false;
        }
        j.flushing = true;
        if !j.lun.bdev().supports(IoType::Flush) {
            drop(j);
            finish(job, true);
            return true;
        }
        (IoType::Flush, 0, 0, None)
    } else {
        let (rest, bs, next) = (j.num_blocks - j.next, j.bs, j.next);
        match &mut j.work {
            Work::Overwrite { buf, .. } => {
                let n = (buf.len() as u64 / bs).min(rest);
                (IoType::Write, next, n, Some((buf.as_mut_ptr(), (n * bs) as usize)))
            }
            Work::Erase(t) => (*t, next, (ERASE_CHUNK_BYTES / bs).max(1).min(rest), None),
        }
    };
    let mut io = j.io.take().unwrap_or_else(|| {
        let jr = job.clone();
        BdevIo::new(Rc::new(move |io| io_done(&jr, io)))
    });
    io.prepare(io_type, lba, blocks);
    io.clear_iovs();
    if let Some((ptr, len)) = data {
        // SAFETY: the pattern buffer belongs to the job, which outlives this I/O (the I/O's
        // callback holds the job), and is neither written nor resized while an I/O is in
        // flight (`busy`): inversion happens between passes, from the completion.
        unsafe { io.push_iov(ptr, len) };
    }
    j.busy = true;
    let lc = j.lc.clone();
    drop(j);
    match lc.bdev() {
        Some(chan) => chan.submit(io),
        None => {
            job.borrow_mut().busy = false;
            finish(job, false);
        }
    }
    true
}

fn io_done(job: &JobRef, io: Box<BdevIo>) {
    let ok = io.status() == IoStatus::Success;
    let (io_type, blocks) = (io.io_type, io.num_blocks);
    let erase = {
        let mut j = job.borrow_mut();
        j.io = Some(io);
        j.busy = false;
        if !ok {
            tracing::warn!(lun = j.lun.id, bdev = j.lun.bdev_name(), "SANITIZE failed: a bdev I/O failed");
            None
        } else {
            if io_type != IoType::Flush {
                j.next += blocks;
                if j.next >= j.num_blocks {
                    j.next = 0;
                    j.pass += 1;
                    if let Work::Overwrite { buf, invert: true, .. } = &mut j.work {
                        buf.iter_mut().for_each(|b| *b = !*b);
                    }
                }
                let passes = match &j.work {
                    Work::Overwrite { passes, .. } => *passes as u128,
                    Work::Erase(_) => 1,
                };
                let done = j.pass as u128 * j.num_blocks as u128 + j.next as u128;
                let total = (passes * j.num_blocks as u128).max(1);
                j.lun.sanitize.progress.store((done * 0xFFFF / total) as u32, Ordering::Relaxed);
            }
            Some(matches!(j.work, Work::Erase(_)) || io_type == IoType::Flush)
        }
    };
    match erase {
        None => finish(job, false),
        Some(_) if io_type == IoType::Flush => finish(job, true),
        // Erases go on at once; overwrites at the poller's pace (the flush after the last
        // pass too).
        Some(true) => {
            tick(job);
        }
        Some(false) => {}
    }
}

/// Ends the operation: the unit is ready again (or in failure mode), the waiting command
/// gets its status.
fn finish(job: &JobRef, ok: bool) {
    let (lun, waiter) = {
        let mut j = job.borrow_mut();
        // Breaks the job's reference cycles (poller and I/O callback hold the job).
        j.poller = None;
        j.io = None;
        (j.lun.clone(), j.waiter.take())
    };
    let state = &lun.sanitize;
    let fail_code = if job.borrow().ause { FAILED_AUSE } else { FAILED };
    state.failed.store(if ok { NOT_FAILED } else { fail_code }, Ordering::Release);
    let aborted = state.take_waiter_aborted();
    state.progress.store(0, Ordering::Relaxed);
    state.running.store(false, Ordering::Release);
    tracing::info!(lun = lun.id, bdev = lun.bdev_name(), ok, "SANITIZE finished");
    let Some(mut task) = waiter else { return };
    if aborted {
        task.aborted = true;
        task.good();
        task.status = status::TASK_ABORTED;
    } else if ok {
        task.good();
    } else {
        task.check(Sense::new(key::MEDIUM_ERROR, asc::SANITIZE_FAILED));
    }
    match task.done.clone() {
        Some(done) => done(task),
        None => tracing::error!("SANITIZE finished without a completion callback"),
    }
}
