//! One SCSI command as a transport hands it to a logical unit, and what comes back.

use super::sense::{status, Failure, Sense, FIXED_SENSE_LEN};
use super::Nexus;
use crate::bdev::{BdevIo, RangeLock};
use std::rc::Rc;
use std::sync::Arc;

/// Which way data moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDir {
    /// No data.
    None,
    /// Initiator to target (data-out: writes, parameter lists).
    ToDevice,
    /// Target to initiator (data-in: reads, responses).
    FromDevice,
}

/// A command's residual, as a transport with overflow and underflow indications reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residual {
    /// The command moved exactly the buffer.
    None,
    /// This many bytes of the buffer were not used (iSCSI's U bit).
    Underflow(u64),
    /// The command wanted this many bytes more than the buffer held (iSCSI's O bit).
    Overflow(u64),
}

/// Called with a task that finished after `execute` returned, on the reactor that ran it.
pub type TaskDone = Rc<dyn Fn(Box<ScsiTask>)>;

/// One command. A transport fills the CDB, the nexus, the direction and the data iovecs
/// (which may point into a guest's memory: zero copy), executes it on a LUN, and reads back
/// `status`, `sense()` and `residual()`. Tasks are reused: `reset` readies one for the next
/// command without freeing its buffers.
pub struct ScsiTask {
    /// The CDB (up to 32 bytes as virtio-scsi carries them; `cdb_len` are meaningful).
    pub cdb: [u8; 32],
    /// Meaningful CDB bytes.
    pub cdb_len: usize,
    /// Who sent it.
    pub nexus: Arc<Nexus>,
    /// The transport's tag for it (virtio-scsi's id, iSCSI's ITT).
    pub tag: u64,
    /// Data direction, from the transport's framing.
    pub dir: DataDir,
    /// The transport's own context (e.g. a slot index).
    pub ctx: u64,
    /// SCSI status, valid once the task completed.
    pub status: u8,
    /// Set when a task management function aborted it (transports report it their own way:
    /// virtio-scsi's ABORTED response, iSCSI's TASK ABORTED status).
    pub aborted: bool,
    /// The transport can report a residual overflow (iSCSI's O bit): a data buffer shorter
    /// than the command's transfer is then served as far as it goes (SAM-5 5.4.3) instead
    /// of refused. virtio-scsi has no overflow indication, so vhost leaves it false and a
    /// short buffer stays an INVALID FIELD IN CDB. Kept across `reset`.
    pub overflow_allowed: bool,
    iovs: Vec<libc::iovec>,
    buffer_len: u64,
    transferred: u64,
    /// Bytes the command would move given a buffer as large as it likes: the CDB's transfer
    /// length, or the data-in a command has for its allocation length.
    wanted: u64,
    sense: [u8; FIXED_SENSE_LEN],
    sense_len: usize,
    pub(crate) io: Option<Box<BdevIo>>,
    pub(crate) bounce: Vec<u8>,
    pub(crate) step: u32,
    pub(crate) epoch: u64,
    pub(crate) done: Option<TaskDone>,
    pub(crate) plan: super::blockcmd::Plan,
    pub(crate) lc: Option<Rc<super::lun::LunChannel>>,
    /// The LBA range lock a COMPARE AND WRITE holds from before its read to after its write.
    pub(crate) range_lock: Option<RangeLock>,
}

impl ScsiTask {
    /// A new, empty task for `nexus`.
    pub fn new(nexus: Arc<Nexus>) -> Box<ScsiTask> {
        Box::new(ScsiTask {
            cdb: [0; 32],
            cdb_len: 0,
            nexus,
            tag: 0,
            dir: DataDir::None,
            ctx: 0,
            status: status::GOOD,
            aborted: false,
            overflow_allowed: false,
            iovs: Vec::new(),
            buffer_len: 0,
            transferred: 0,
            wanted: 0,
            sense: [0; FIXED_SENSE_LEN],
            sense_len: 0,
            io: None,
            bounce: Vec::new(),
            step: 0,
            epoch: 0,
            done: None,
            plan: Default::default(),
            lc: None,
            range_lock: None,
        })
    }

    /// Sets what is called when the task finishes after `execute` returned.
    pub fn set_done(&mut self, done: TaskDone) {
        self.done = Some(done);
    }

    /// Readies the task for a new command (keeps its allocations).
    pub fn reset(&mut self) {
        self.cdb = [0; 32];
        self.cdb_len = 0;
        self.tag = 0;
        self.dir = DataDir::None;
        self.status = status::GOOD;
        self.aborted = false;
        self.iovs.clear();
        self.buffer_len = 0;
        self.transferred = 0;
        self.wanted = 0;
        self.sense_len = 0;
        self.step = 0;
        self.bounce.clear();
    }

    /// Sets the CDB; false (and nothing set) if it is empty or longer than 32 bytes.
    pub fn set_cdb(&mut self, cdb: &[u8]) -> bool {
        if cdb.is_empty() || cdb.len() > self.cdb.len() {
            return false;
        }
        self.cdb[..cdb.len()].copy_from_slice(cdb);
        self.cdb_len = cdb.len();
        true
    }

    /// Sets the CDB from a transport's 32-byte CDB field (virtio-scsi's), of which the first
    /// `len` count; false (and nothing set) unless `len` is 1 to 32. One copy of a constant
    /// size, where [`Self::set_cdb`] copies a variable one (a call into memcpy).
    pub fn set_cdb_field(&mut self, field: &[u8; 32], len: usize) -> bool {
        if len == 0 || len > field.len() {
            return false;
        }
        self.cdb = *field;
        self.cdb_len = len;
        true
    }

    /// The meaningful CDB bytes.
    pub fn cdb(&self) -> &[u8] {
        &self.cdb[..self.cdb_len]
    }

    /// Appends a data segment.
    ///
    /// # Safety
    /// `base..base+len` must stay valid for reads and writes, untouched by anyone else, until
    /// the task completes: its data is read or written in place (zero copy), possibly by the
    /// kernel (io_uring) or a device.
    pub unsafe fn push_iov(&mut self, base: *mut u8, len: usize) {
        self.iovs.push(libc::iovec { iov_base: base.cast(), iov_len: len });
        self.buffer_len += len as u64;
    }

    /// Sets the data segments to those `fill` appends to the emptied vector (a transport
    /// translating guest buffers writes them in place); the buffer's length is their total.
    /// Returns what `fill` returns; on false the task has no data buffer.
    ///
    /// # Safety
    /// As for [`Self::push_iov`], for every segment `fill` appends.
    #[inline]
    pub unsafe fn set_iovs_with(&mut self, fill: impl FnOnce(&mut Vec<libc::iovec>) -> bool) -> bool {
        self.iovs.clear();
        if !fill(&mut self.iovs) {
            self.iovs.clear();
            self.buffer_len = 0;
            return false;
        }
        self.buffer_len = self.iovs.iter().map(|v| v.iov_len as u64).sum();
        true
    }

    /// Lends the task's segment vector to `io` (no copy); [`Self::reclaim_iovs`] takes it back
    /// once the I/O completed. In between the task has no segments.
    pub(crate) fn lend_iovs(&mut self, io: &mut BdevIo) {
        // SAFETY: push_iov's contract keeps every segment valid and untouched until the task
        // completes, which is after this I/O does.
        unsafe { io.swap_iovs(&mut self.iovs) }
    }

    /// Takes back the segment vector [`Self::lend_iovs`] gave `io`.
    pub(crate) fn reclaim_iovs(&mut self, io: &mut BdevIo) {
        // SAFETY: the vector going back to the I/O is the one it had before `lend_iovs`, and it
        // is cleared before any new submission uses it (`BdevIo::clear_iovs`/`set_iovs_with`);
        // the I/O is not in flight.
        unsafe { io.swap_iovs(&mut self.iovs) }
    }

    /// The data segments.
    pub fn iovs(&self) -> &[libc::iovec] {
        &self.iovs
    }

    /// Total bytes of the data buffer the transport gave.
    pub fn buffer_len(&self) -> u64 {
        self.buffer_len
    }

    /// Bytes actually moved.
    pub fn transferred(&self) -> u64 {
        self.transferred
    }

    /// Bytes of the buffer not moved (the residual transports report).
    pub fn residual(&self) -> u64 {
        self.buffer_len.saturating_sub(self.transferred)
    }

    /// Bytes the command wanted to move (its transfer length; for data-in commands, the
    /// data it had, cut to the allocation length), whatever the buffer's size.
    pub fn wanted(&self) -> u64 {
        self.wanted
    }

    /// The residual as iSCSI reports it (RFC 7143 11.4.5), with the buffer being the Expected
    /// Data Transfer Length: overflow when the command wanted more than the buffer holds,
    /// underflow when less than the buffer was moved.
    pub fn residual_kind(&self) -> Residual {
        if self.wanted > self.buffer_len {
            Residual::Overflow(self.wanted - self.buffer_len)
        } else if self.transferred < self.buffer_len {
            Residual::Underflow(self.buffer_len - self.transferred)
        } else {
            Residual::None
        }
    }

    /// Sense data, empty unless the status is CHECK CONDITION.
    pub fn sense(&self) -> &[u8] {
        &self.sense[..self.sense_len]
    }

    /// Completes with GOOD status.
    pub(crate) fn good(&mut self) {
        self.status = status::GOOD;
        self.sense_len = 0;
    }

    /// Completes with `failure`.
    pub(crate) fn fail(&mut self, failure: Failure) {
        self.status = failure.status();
        if let Failure::Check(s) = failure {
            self.set_sense(&s);
        } else {
            self.sense_len = 0;
        }
    }

    /// Completes with CHECK CONDITION and `sense`.
    pub(crate) fn check(&mut self, sense: Sense) {
        self.fail(Failure::Check(sense));
    }

    fn set_sense(&mut self, s: &Sense) {
        self.sense = s.to_fixed();
        self.sense_len = FIXED_SENSE_LEN;
    }

    pub(crate) fn set_wanted(&mut self, n: u64) {
        self.wanted = n;
    }

    pub(crate) fn set_transferred(&mut self, n: u64) {
        self.transferred = n.min(self.buffer_len);
    }

    /// Copies `data` into the data-in buffer (at most its length); returns the bytes copied.
    pub(crate) fn copy_in(&mut self, data: &[u8]) -> u64 {
        // SAFETY: push_iov's contract: every iovec is valid for writes until completion, and
        // `data` is Ferry's own memory.
        unsafe { crate::bdev::buf::copy_to_iovecs(&self.iovs, data) as u64 }
    }

    /// Copies up to `out.len()` bytes of the data-out buffer into `out`; returns the bytes copied.
    pub(crate) fn copy_out(&self, out: &mut [u8]) -> usize {
        // SAFETY: push_iov's contract: every iovec is valid for reads until completion.
        unsafe { crate::bdev::buf::copy_from_iovecs(&self.iovs, out) }
    }
}
