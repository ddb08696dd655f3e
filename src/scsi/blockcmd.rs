//! The SBC-3 commands that move data to or from the bdev: READ and WRITE (6/10/12/16),
//! WRITE AND VERIFY, VERIFY, WRITE SAME, UNMAP, SYNCHRONIZE CACHE, COMPARE AND WRITE and
//! ORWRITE; PRE-FETCH (range checked, nothing to load) lives here with its siblings.
//!
//! A transport that reports residual overflow (`ScsiTask::overflow_allowed`, iSCSI) may hand
//! a READ or WRITE a buffer shorter than its transfer: the read gives what fits, the write
//! writes the whole blocks it got; the task's `wanted()` length lets the transport report
//! the rest as overflow.
//!
//! Each command is decoded into a [`Plan`] and run as a short sequence of bdev I/Os on the
//! reactor's own channel. READ and WRITE hand the task's iovecs (guest memory, for vhost) to
//! the bdev as they are: zero copy. Commands that need data of their own (VERIFY with byte
//! check, WRITE SAME with a pattern, COMPARE AND WRITE) use the task's bounce buffer.
//!
//! While a bdev I/O is in flight the task is owned by that I/O: its box is turned into a raw
//! pointer in the I/O's `ctx` and turned back exactly once, in the completion callback.

use super::cdb::{be16, be24, be32, be64, op};
use super::lun::LunChannel;
use super::sense::{asc, key, status, Sense};
use super::task::{DataDir, ScsiTask};
use crate::bdev::{BdevChannel, BdevIo, IoCallback, IoStatus, IoType, RangeLock};
use std::rc::Rc;
use std::sync::atomic::Ordering;

/// WRITE SAME with a non-zero pattern writes this many blocks per bdev I/O.
const WRITE_SAME_CHUNK_BYTES: u64 = 1 << 20;
/// WRITE SAME of zeroes or with UNMAP covers this many bytes per bdev I/O.
const WRITE_SAME_ZEROES_CHUNK_BYTES: u64 = 64 << 20;
/// Largest VERIFY with byte check we buffer at once.
const MAX_VERIFY_BYTES: u64 = 8 << 20;
/// Largest COMPARE AND WRITE, in blocks (block limits VPD says 1).
pub const MAX_COMPARE_AND_WRITE_BLOCKS: u64 = 1;
/// Largest WRITE ATOMIC (16), in bytes (block limits VPD: MAXIMUM ATOMIC TRANSFER LENGTH).
pub const MAX_ATOMIC_BYTES: u64 = 1 << 20;

/// What a block command does, decoded from its CDB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Nothing decoded yet.
    #[default]
    None,
    /// READ.
    Read,
    /// READ into a buffer shorter than the transfer (a transport that reports overflow):
    /// read into the bounce buffer, then hand over what fits.
    ReadShort,
    /// WRITE (and WRITE AND VERIFY, which is a write followed by nothing more to check:
    /// the bdev reports write errors itself).
    Write,
    /// VERIFY with BYTCHK=01b: read and compare with the data-out.
    Verify,
    /// WRITE SAME of a non-zero pattern.
    WriteSamePattern,
    /// WRITE SAME of zeroes (or with UNMAP).
    WriteSameZeroes,
    /// WRITE SAME with UNMAP on a unit that can unmap.
    WriteSameUnmap,
    /// UNMAP with descriptors in the bounce buffer.
    Unmap,
    /// SYNCHRONIZE CACHE.
    Flush,
    /// COMPARE AND WRITE.
    CompareAndWrite,
    /// ORWRITE (16): read, OR the data-out in, write; fenced like COMPARE AND WRITE.
    OrWrite,
    /// WRITE ATOMIC (16): one bdev write under the range lock, so that no other command's
    /// I/O to those blocks lands in the middle of it.
    AtomicWrite,
}

/// A decoded block command and its progress.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Plan {
    kind: Kind,
    lba: u64,
    blocks: u64,
    fua: bool,
    /// Blocks (or UNMAP descriptors) done so far.
    progress: u64,
    /// A plain READ or WRITE (see [`plain_read_write`]): its one I/O runs on the task's own
    /// iovec vector, lent to it, and its completion finishes the task.
    lent: bool,
}

/// Whether `opcode` is one of the commands served here.
pub(crate) fn is_block_command(opcode: u8) -> bool {
    matches!(
        opcode,
        op::READ_6
            | op::READ_10
            | op::READ_12
            | op::READ_16
            | op::WRITE_6
            | op::WRITE_10
            | op::WRITE_12
            | op::WRITE_16
            | op::WRITE_AND_VERIFY_10
            | op::WRITE_AND_VERIFY_12
            | op::WRITE_AND_VERIFY_16
            | op::VERIFY_10
            | op::VERIFY_12
            | op::VERIFY_16
            | op::PRE_FETCH_10
            | op::PRE_FETCH_16
            | op::WRITE_SAME_10
            | op::WRITE_SAME_16
            | op::UNMAP
            | op::SYNCHRONIZE_CACHE_10
            | op::SYNCHRONIZE_CACHE_16
            | op::COMPARE_AND_WRITE
            | op::ORWRITE_16
            | op::WRITE_ATOMIC_16
    )
}

thread_local! {
    /// The one completion callback block I/Os use on this thread: the task rides in `ctx`.
    static IO_DONE: IoCallback = Rc::new(io_done);
}

/// Decodes and starts a block command. Returns the task if it finished at once.
pub(crate) fn start(lc: &Rc<LunChannel>, mut task: Box<ScsiTask>) -> Option<Box<ScsiTask>> {
    if let (Some(plan), Some(chan)) = (plain_read_write(lc, &task), lc.bdev()) {
        start_plain(lc, chan, task, plan);
        return None;
    }
    let info_bs = lc.block_size;
    let num_blocks = lc.lun.bdev().num_blocks();
    match decode(lc, &mut task, info_bs, num_blocks) {
        Err(sense) => {
            task.check(sense);
            Some(task)
        }
        Ok(None) => {
            task.good();
            Some(task)
        }
        Ok(Some(plan)) => {
            let Some(chan) = lc.bdev() else {
                task.check(Sense::new(key::NOT_READY, asc::LUN_NOT_READY));
                return Some(task);
            };
            task.plan = plan;
            task.lc = Some(lc.clone());
            task.epoch = lc.begin_io();
            let bs = lc.block_size;
            if matches!(plan.kind, Kind::CompareAndWrite | Kind::OrWrite | Kind::AtomicWrite) {
                // Fenced against every other write to its blocks, from any queue, from before
                // its read until after its write: the range lock. Others' overlapping I/O
                // waits in its channel; COMPARE AND WRITEs on the same blocks go in order.
                chan.lock_range(plan.lba, plan.blocks, move |lock| {
                    let mut task = task;
                    task.range_lock = Some(lock);
                    step(task, bs);
                });
                return None;
            }
            step(task, bs);
            None
        }
    }
}

/// A plain READ or WRITE, decoded: the one bdev I/O it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PlainIo {
    /// A WRITE (data-out); else a READ.
    pub(crate) write: bool,
    /// First block.
    pub(crate) lba: u64,
    /// Blocks (at least one, at most the unit's largest transfer).
    pub(crate) blocks: u64,
}

impl PlainIo {
    /// The bdev I/O's type.
    pub(crate) fn io_type(&self) -> IoType {
        if self.write {
            IoType::Write
        } else {
            IoType::Read
        }
    }
}

/// READ and WRITE (10) and (16) as a guest's block driver sends nearly all of them: no
/// protection information, no FUA, a write cache on, and a buffer of `buffer_len` bytes
/// flowing `dir` that is exactly the transfer. Returns the I/O of one, or None for anything
/// else: the general decoding then serves it (or refuses it with the right sense). About a
/// third of the SCSI layer's instructions per request went to the general decoding and the
/// plan's steps (docs/performance.md). The caller checks that the unit is undisturbed
/// (`execute`, `LunChannel::plain_io`).
#[inline(always)]
pub(crate) fn decode_plain(lc: &LunChannel, cdb: &[u8; 32], dir: DataDir, buffer_len: u64) -> Option<PlainIo> {
    let (write, lba, blocks) = match cdb[0] {
        op::READ_10 => (false, be32(cdb, 2) as u64, be16(cdb, 7) as u64),
        op::WRITE_10 => (true, be32(cdb, 2) as u64, be16(cdb, 7) as u64),
        op::READ_16 => (false, be64(cdb, 2), be32(cdb, 10) as u64),
        op::WRITE_16 => (true, be64(cdb, 2), be32(cdb, 10) as u64),
        _ => return None,
    };
    // RDPROTECT/WRPROTECT (0xE0) and FUA (0x08) are the general path's.
    if cdb[1] & 0xE8 != 0 || blocks == 0 || blocks > lc.max_transfer_blocks {
        return None;
    }
    let want = if write { DataDir::ToDevice } else { DataDir::FromDevice };
    if dir != want || buffer_len != blocks * lc.block_size {
        return None;
    }
    if write && (lc.lun.readonly() || lc.lun.write_through.load(Ordering::Relaxed)) {
        return None;
    }
    check_range(lba, blocks, lc.lun.bdev().num_blocks()).ok()?;
    Some(PlainIo { write, lba, blocks })
}

/// [`decode_plain`] for a task, as a plan whose one I/O borrows the task's iovecs.
#[inline]
fn plain_read_write(lc: &LunChannel, task: &ScsiTask) -> Option<Plan> {
    let io = decode_plain(lc, &task.cdb, task.dir, task.buffer_len())?;
    let kind = if io.write { Kind::Write } else { Kind::Read };
    Some(Plan { kind, lba: io.lba, blocks: io.blocks, fua: false, progress: 0, lent: true })
}

/// Submits a plain READ or WRITE: one bdev I/O on the task's own iovecs, lent to it.
fn start_plain(lc: &Rc<LunChannel>, chan: &BdevChannel, mut task: Box<ScsiTask>, plan: Plan) {
    task.set_wanted(task.buffer_len());
    task.plan = plan;
    task.lc = Some(lc.clone());
    task.epoch = lc.begin_io();
    let mut io = task.io.take().unwrap_or_else(|| BdevIo::new(IO_DONE.with(Rc::clone)));
    io.prepare(if plan.kind == Kind::Write { IoType::Write } else { IoType::Read }, plan.lba, plan.blocks);
    io.clear_iovs();
    task.lend_iovs(&mut io);
    io.ctx = Box::into_raw(task) as u64;
    chan.submit(io);
}

/// Checks that `lba..lba+blocks` lies on the unit.
fn check_range(lba: u64, blocks: u64, num_blocks: u64) -> Result<(), Sense> {
    match lba.checked_add(blocks) {
        Some(end) if end <= num_blocks && lba <= num_blocks => Ok(()),
        _ => Err(Sense::lba_out_of_range()),
    }
}

/// Checks the data buffer against a transfer of `bytes` in direction `dir`: a buffer shorter
/// than the CDB's transfer length, or data flowing the wrong way, is refused (pointing at the
/// transfer length field); a longer buffer is fine (the rest is the residual).
fn check_buffer(task: &ScsiTask, dir: DataDir, bytes: u64, len_field: u16) -> Result<(), Sense> {
    if bytes == 0 {
        return Ok(());
    }
    if task.dir != dir || task.buffer_len() < bytes {
        return Err(Sense::invalid_cdb_field(len_field, None));
    }
    Ok(())
}

/// Decodes the CDB into a plan; Ok(None) for a command with nothing to do.
fn decode(lc: &LunChannel, task: &mut ScsiTask, bs: u64, num_blocks: u64) -> Result<Option<Plan>, Sense> {
    let cdb = task.cdb;
    let readonly = lc.lun.readonly();
    let opcode = cdb[0];
    let plan = |kind, lba, blocks, fua| Plan { kind, lba, blocks, fua, progress: 0, lent: false };
    match opcode {
        op::READ_6
        | op::READ_10
        | op::READ_12
        | op::READ_16
        | op::WRITE_6
        | op::WRITE_10
        | op::WRITE_12
        | op::WRITE_16
        | op::WRITE_AND_VERIFY_10
        | op::WRITE_AND_VERIFY_12
        | op::WRITE_AND_VERIFY_16 => {
            let write = !matches!(opcode, op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16);
            let (lba, blocks, len_field) = match opcode {
                op::READ_6 | op::WRITE_6 => {
                    // A transfer length of 0 means 256 blocks in the 6-byte commands.
                    let n = if cdb[4] == 0 { 256 } else { cdb[4] as u64 };
                    ((be24(&cdb, 1) & 0x1F_FFFF) as u64, n, 4)
                }
                op::READ_10 | op::WRITE_10 | op::WRITE_AND_VERIFY_10 => (be32(&cdb, 2) as u64, be16(&cdb, 7) as u64, 7),
                op::READ_12 | op::WRITE_12 | op::WRITE_AND_VERIFY_12 => (be32(&cdb, 2) as u64, be32(&cdb, 6) as u64, 6),
                _ => (be64(&cdb, 2), be32(&cdb, 10) as u64, 10),
            };
            let six = matches!(opcode, op::READ_6 | op::WRITE_6);
            if !six && cdb[1] & 0xE0 != 0 {
                // RDPROTECT/WRPROTECT: no protection information on Ferry's units.
                return Err(Sense::invalid_cdb_field(1, Some(7)));
            }
            if write && readonly {
                return Err(Sense::write_protected());
            }
            check_range(lba, blocks, num_blocks)?;
            if blocks > lc.max_transfer_blocks {
                return Err(Sense::invalid_cdb_field(len_field, None));
            }
            let bytes = blocks * bs;
            task.set_wanted(bytes);
            let dir = if write { DataDir::ToDevice } else { DataDir::FromDevice };
            let verify = matches!(opcode, op::WRITE_AND_VERIFY_10 | op::WRITE_AND_VERIFY_12 | op::WRITE_AND_VERIFY_16);
            let fua = !six && (cdb[1] & 0x08 != 0 || verify);
            let usable = if task.dir == dir { task.buffer_len() } else { 0 };
            if usable < bytes && task.overflow_allowed {
                // Served as far as the buffer goes; the rest is the transport's overflow
                // (libiscsi iSCSIResiduals.*): a read hands over what fits, a write writes
                // the whole blocks it was given and leaves the others alone.
                let whole = usable / bs;
                return Ok(if usable == 0 || (write && whole == 0) {
                    None
                } else if write {
                    Some(plan(Kind::Write, lba, whole, fua))
                } else {
                    Some(plan(Kind::ReadShort, lba, blocks, false))
                });
            }
            check_buffer(task, dir, bytes, len_field)?;
            if blocks == 0 {
                return Ok(None);
            }
            Ok(Some(plan(if write { Kind::Write } else { Kind::Read }, lba, blocks, fua)))
        }
        op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16 => {
            let (lba, blocks, len_field) = match opcode {
                op::VERIFY_10 => (be32(&cdb, 2) as u64, be16(&cdb, 7) as u64, 7),
                op::VERIFY_12 => (be32(&cdb, 2) as u64, be32(&cdb, 6) as u64, 6),
                _ => (be64(&cdb, 2), be32(&cdb, 10) as u64, 10),
            };
            if cdb[1] & 0xE0 != 0 {
                return Err(Sense::invalid_cdb_field(1, Some(7)));
            }
            let bytchk = (cdb[1] >> 1) & 0x3;
            check_range(lba, blocks, num_blocks)?;
            match bytchk {
                // Medium verification only: every Ferry bdev reports its read errors itself.
                0 => Ok(None),
                1 => {
                    let bytes = blocks * bs;
                    task.set_wanted(bytes);
                    if bytes > MAX_VERIFY_BYTES {
                        return Err(Sense::invalid_cdb_field(len_field, None));
                    }
                    check_buffer(task, DataDir::ToDevice, bytes, len_field)?;
                    Ok((blocks > 0).then(|| plan(Kind::Verify, lba, blocks, false)))
                }
                _ => Err(Sense::invalid_cdb_field(1, Some(2))),
            }
        }
        op::WRITE_SAME_10 | op::WRITE_SAME_16 => {
            let (lba, blocks, len_field) = if opcode == op::WRITE_SAME_10 {
                (be32(&cdb, 2) as u64, be16(&cdb, 7) as u64, 7)
            } else {
                (be64(&cdb, 2), be32(&cdb, 10) as u64, 10)
            };
            let unmap = cdb[1] & 0x08 != 0;
            let ndob = opcode == op::WRITE_SAME_16 && cdb[1] & 0x01 != 0;
            if cdb[1] & 0xE0 != 0 {
                return Err(Sense::invalid_cdb_field(1, Some(7)));
            }
            if cdb[1] & 0x10 != 0 {
                return Err(Sense::invalid_cdb_field(1, Some(4))); // ANCHOR
            }
            if readonly {
                return Err(Sense::write_protected());
            }
            let info = lc.lun.info();
            // NUMBER OF LOGICAL BLOCKS 0 (WSNZ 0): from the LBA to the end of the medium.
            if lba > num_blocks {
                return Err(Sense::lba_out_of_range());
            }
            let blocks = if blocks == 0 { num_blocks - lba } else { blocks };
            if blocks > super::inquiry::max_write_same_blocks(&info) {
                return Err(Sense::invalid_cdb_field(len_field, None));
            }
            check_range(lba, blocks, num_blocks)?;
            if blocks == 0 {
                return Ok(None); // at the end of the medium: nothing to write
            }
            let zero = if ndob {
                true
            } else {
                // Exactly one block of pattern: more or less data-out is an error (libiscsi
                // WriteSame10.InvalidDataOutSize), not a residual.
                if task.buffer_len() != bs {
                    return Err(Sense::invalid_cdb_field(len_field, None));
                }
                check_buffer(task, DataDir::ToDevice, bs, len_field)?;
                task.bounce.clear();
                task.bounce.resize(bs as usize, 0);
                let mut block = std::mem::take(&mut task.bounce);
                task.copy_out(&mut block);
                let zero = block.iter().all(|&b| b == 0);
                task.bounce = block;
                task.set_transferred(bs);
                zero
            };
            // UNMAP set: deallocate whatever the pattern (as Linux's LIO does; libiscsi's
            // WriteSame10.UnmapUntilEnd sends 0xFF and expects zeroes back, LBPRZ being 1).
            let kind = if unmap && info.unmap {
                Kind::WriteSameUnmap
            } else if zero && info.write_zeroes {
                Kind::WriteSameZeroes
            } else {
                if ndob {
                    task.bounce.clear();
                    task.bounce.resize(bs as usize, 0);
                }
                Kind::WriteSamePattern
            };
            Ok(Some(plan(kind, lba, blocks, false)))
        }
        op::UNMAP => {
            let info = lc.lun.info();
            if !info.unmap {
                return Err(if readonly { Sense::write_protected() } else { Sense::invalid_opcode() });
            }
            if cdb[1] & 0x01 != 0 {
                return Err(Sense::invalid_cdb_field(1, Some(0))); // ANCHOR
            }
            if readonly {
                return Err(Sense::write_protected()); // SWP set
            }
            let len = be16(&cdb, 7) as u64;
            if len == 0 {
                return Ok(None);
            }
            if len < 8 || task.dir != DataDir::ToDevice || task.buffer_len() < len {
                return Err(Sense::param_list_length());
            }
            let mut params = vec![0u8; len as usize];
            task.copy_out(&mut params);
            task.set_transferred(len);
            let desc_len = be16(&params, 2) as u64;
            if !desc_len.is_multiple_of(16) || 8 + desc_len > len {
                return Err(Sense::param_list_length());
            }
            let count = desc_len / 16;
            if count > info.max_unmap_descriptors as u64 {
                return Err(Sense::invalid_param_field(2, None));
            }
            for i in 0..count as usize {
                let d = &params[8 + 16 * i..8 + 16 * (i + 1)];
                let (lba, n) = (be64(d, 0), be32(d, 8) as u64);
                if n > info.max_unmap_blocks as u64 {
                    return Err(Sense::invalid_param_field(8 + 16 * i as u16 + 8, None));
                }
                check_range(lba, n, num_blocks)?;
            }
            task.bounce = params[8..8 + desc_len as usize].to_vec();
            // Descriptors without blocks are skipped; with none left there is nothing to do
            // (and the command finishes here rather than inside `start`'s first step).
            let any = task.bounce.chunks(16).any(|d| be32(d, 8) != 0);
            Ok(any.then(|| plan(Kind::Unmap, 0, count, false)))
        }
        op::PRE_FETCH_10 | op::PRE_FETCH_16 => {
            let (lba, blocks) = if opcode == op::PRE_FETCH_10 {
                (be32(&cdb, 2) as u64, be16(&cdb, 7) as u64)
            } else {
                (be64(&cdb, 2), be32(&cdb, 10) as u64)
            };
            check_range(lba, blocks, num_blocks)?;
            // No cache to load: GOOD, which says the blocks would not all fit in the cache
            // (SBC-3 5.9: CONDITION MET would promise they are there). IMMED changes nothing.
            Ok(None)
        }
        op::SYNCHRONIZE_CACHE_10 | op::SYNCHRONIZE_CACHE_16 => {
            let (lba, blocks) = if opcode == op::SYNCHRONIZE_CACHE_10 {
                (be32(&cdb, 2) as u64, be16(&cdb, 7) as u64)
            } else {
                (be64(&cdb, 2), be32(&cdb, 10) as u64)
            };
            check_range(lba, blocks, num_blocks)?;
            if !lc.lun.bdev().supports(IoType::Flush) {
                return Ok(None); // no volatile cache: nothing to flush
            }
            Ok(Some(plan(Kind::Flush, 0, 0, false)))
        }
        op::COMPARE_AND_WRITE => {
            if cdb[1] & 0xE0 != 0 {
                return Err(Sense::invalid_cdb_field(1, Some(7)));
            }
            if readonly {
                return Err(Sense::write_protected());
            }
            let lba = be64(&cdb, 2);
            let blocks = cdb[13] as u64;
            if blocks > MAX_COMPARE_AND_WRITE_BLOCKS {
                return Err(Sense::invalid_cdb_field(13, None));
            }
            check_range(lba, blocks, num_blocks)?;
            check_buffer(task, DataDir::ToDevice, 2 * blocks * bs, 13)?;
            let data_out = if task.dir == DataDir::ToDevice { task.buffer_len() } else { 0 };
            if data_out != 2 * blocks * bs {
                // More data-out than the verify and write instances (also with NUMBER OF
                // LOGICAL BLOCKS 0): the CDB does not describe the data (libiscsi
                // CompareAndWrite.InvalidDataOutSize, and .Simple's 256 blocks, which the
                // one-byte field holds as 0).
                return Err(Sense::invalid_cdb_field(13, None));
            }
            if blocks == 0 {
                return Ok(None);
            }
            Ok(Some(plan(Kind::CompareAndWrite, lba, blocks, cdb[1] & 0x08 != 0)))
        }
        op::WRITE_ATOMIC_16 => {
            if cdb[1] & 0xE0 != 0 {
                return Err(Sense::invalid_cdb_field(1, Some(7))); // WRPROTECT
            }
            if readonly {
                return Err(Sense::write_protected());
            }
            let (lba, blocks) = (be64(&cdb, 2), be16(&cdb, 12) as u64);
            // ATOMIC BOUNDARY: MAXIMUM ATOMIC BOUNDARY SIZE is 0, so only 0 is valid.
            if be16(&cdb, 10) != 0 {
                return Err(Sense::invalid_cdb_field(10, None));
            }
            task.set_wanted(blocks * bs);
            check_range(lba, blocks, num_blocks)?;
            if blocks > max_atomic_blocks(bs) {
                return Err(Sense::invalid_cdb_field(12, None));
            }
            check_buffer(task, DataDir::ToDevice, blocks * bs, 12)?;
            if blocks == 0 {
                return Ok(None);
            }
            Ok(Some(plan(Kind::AtomicWrite, lba, blocks, cdb[1] & 0x08 != 0)))
        }
        op::ORWRITE_16 => {
            // ORPROTECT: no protection information. BMOP/PREVIOUS GENERATION PROCESSING (byte
            // 14) belong to the ORWRITE (32) with the changed-block bitmap: not served.
            if cdb[1] & 0xE0 != 0 {
                return Err(Sense::invalid_cdb_field(1, Some(7)));
            }
            if readonly {
                return Err(Sense::write_protected());
            }
            let (lba, blocks) = (be64(&cdb, 2), be32(&cdb, 10) as u64);
            task.set_wanted(blocks * bs);
            check_range(lba, blocks, num_blocks)?;
            if blocks > lc.max_transfer_blocks {
                return Err(Sense::invalid_cdb_field(10, None));
            }
            check_buffer(task, DataDir::ToDevice, blocks * bs, 10)?;
            if blocks == 0 {
                return Ok(None);
            }
            Ok(Some(plan(Kind::OrWrite, lba, blocks, cdb[1] & 0x08 != 0)))
        }
        _ => Err(Sense::invalid_opcode()),
    }
}

/// Largest WRITE ATOMIC (16), in blocks of `bs` bytes.
pub(crate) fn max_atomic_blocks(bs: u64) -> u64 {
    (MAX_ATOMIC_BYTES / bs).max(1)
}

/// Where an I/O's data lives.
enum Data {
    None,
    /// `len` bytes of the task's own buffer, from `skip`.
    Task {
        skip: u64,
        len: u64,
    },
    /// `len` bytes of the bounce buffer, from `skip`.
    Bounce {
        skip: u64,
        len: u64,
    },
}

/// Runs the next bdev I/O of the plan, or finishes the task.
fn step(mut task: Box<ScsiTask>, bs: u64) {
    let p = task.plan;
    let (io_type, lba, blocks, data) = match (p.kind, task.step) {
        (Kind::Read, 0) => (IoType::Read, p.lba, p.blocks, Data::Task { skip: 0, len: p.blocks * bs }),
        (Kind::Write | Kind::AtomicWrite, 0) => {
            (IoType::Write, p.lba, p.blocks, Data::Task { skip: 0, len: p.blocks * bs })
        }
        (Kind::Write | Kind::AtomicWrite, 1) if p.fua || write_through(&task) => {
            if !supports_flush(&task) {
                return finish_good(task, p.blocks * bs);
            }
            (IoType::Flush, 0, 0, Data::None)
        }
        (Kind::Write | Kind::AtomicWrite, _) => return finish_good(task, p.blocks * bs),
        (Kind::Read, _) => return finish_good(task, p.blocks * bs),
        (Kind::ReadShort, 0) => {
            let len = p.blocks * bs;
            task.bounce.clear();
            task.bounce.resize(len as usize, 0);
            (IoType::Read, p.lba, p.blocks, Data::Bounce { skip: 0, len })
        }
        (Kind::ReadShort, _) => {
            let data = std::mem::take(&mut task.bounce);
            let copied = task.copy_in(&data);
            task.bounce = data;
            return finish_good(task, copied);
        }
        (Kind::Flush, 0) => (IoType::Flush, 0, 0, Data::None),
        (Kind::Flush, _) => return finish_good(task, 0),
        (Kind::Verify, 0) => {
            let len = (p.blocks * bs) as usize;
            task.bounce.clear();
            task.bounce.resize(len, 0);
            (IoType::Read, p.lba, p.blocks, Data::Bounce { skip: 0, len: len as u64 })
        }
        (Kind::Verify, _) => {
            let mut theirs = vec![0u8; task.bounce.len()];
            task.copy_out(&mut theirs);
            task.set_transferred(theirs.len() as u64);
            return match theirs.iter().zip(&task.bounce).position(|(a, b)| a != b) {
                Some(at) => finish_check(task, Sense::miscompare(at as u64)),
                None => finish_good(task, theirs.len() as u64),
            };
        }
        (Kind::WriteSameUnmap | Kind::WriteSameZeroes | Kind::WriteSamePattern, _) if p.progress >= p.blocks => {
            // Every chunk is written; with the write cache off, flush once (the last
            // completed I/O tells whether that flush has been done).
            let flushed = task.io.as_ref().is_some_and(|io| io.io_type == IoType::Flush);
            if !flushed && write_through(&task) && supports_flush(&task) {
                return submit(task, IoType::Flush, 0, 0, Data::None);
            }
            return finish_kept(task);
        }
        (Kind::WriteSameUnmap | Kind::WriteSameZeroes, _) => {
            // In chunks: a WRITE SAME to the end of the medium is no single giant bdev I/O.
            let n = (WRITE_SAME_ZEROES_CHUNK_BYTES / bs).max(1).min(p.blocks - p.progress);
            let t = if p.kind == Kind::WriteSameUnmap { IoType::Unmap } else { IoType::WriteZeroes };
            (t, p.lba + p.progress, n, Data::None)
        }
        (Kind::WriteSamePattern, _) => {
            let chunk = (WRITE_SAME_CHUNK_BYTES / bs).max(1);
            if task.step == 0 {
                // Replicate the one block of pattern into a chunk-sized buffer once.
                let block = task.bounce[..bs as usize].to_vec();
                let n = chunk.min(p.blocks) as usize;
                task.bounce = block.repeat(n);
            }
            let n = chunk.min(p.blocks - p.progress);
            (IoType::Write, p.lba + p.progress, n, Data::Bounce { skip: 0, len: n * bs })
        }
        (Kind::Unmap, _) => {
            // Skip descriptors with no blocks; each remaining one is one bdev unmap.
            let mut i = p.progress;
            while i < p.blocks {
                let d = &task.bounce[16 * i as usize..16 * (i as usize + 1)];
                if be32(d, 8) != 0 {
                    break;
                }
                i += 1;
            }
            task.plan.progress = i;
            if i >= p.blocks {
                return finish_kept(task);
            }
            let d = &task.bounce[16 * i as usize..16 * (i as usize + 1)];
            (IoType::Unmap, be64(d, 0), be32(d, 8) as u64, Data::None)
        }
        (Kind::CompareAndWrite, 0) => {
            let len = p.blocks * bs;
            task.bounce.clear();
            task.bounce.resize(2 * len as usize, 0);
            (IoType::Read, p.lba, p.blocks, Data::Bounce { skip: 0, len })
        }
        (Kind::CompareAndWrite, 1) => {
            let len = (p.blocks * bs) as usize;
            let mut theirs = vec![0u8; 2 * len];
            task.copy_out(&mut theirs);
            if let Some(at) = theirs[..len].iter().zip(&task.bounce[..len]).position(|(a, b)| a != b) {
                task.set_transferred(2 * len as u64);
                return finish_check(task, Sense::miscompare(at as u64));
            }
            task.bounce[len..].copy_from_slice(&theirs[len..]);
            (IoType::Write, p.lba, p.blocks, Data::Bounce { skip: len as u64, len: len as u64 })
        }
        (Kind::CompareAndWrite, 2) if (p.fua || write_through(&task)) && supports_flush(&task) => {
            (IoType::Flush, 0, 0, Data::None)
        }
        (Kind::CompareAndWrite, _) => return finish_good(task, 2 * p.blocks * bs),
        (Kind::OrWrite, 0) => {
            let len = p.blocks * bs;
            task.bounce.clear();
            task.bounce.resize(len as usize, 0);
            (IoType::Read, p.lba, p.blocks, Data::Bounce { skip: 0, len })
        }
        (Kind::OrWrite, 1) => {
            let mut theirs = vec![0u8; task.bounce.len()];
            task.copy_out(&mut theirs);
            for (b, t) in task.bounce.iter_mut().zip(&theirs) {
                *b |= t;
            }
            let len = theirs.len() as u64;
            (IoType::Write, p.lba, p.blocks, Data::Bounce { skip: 0, len })
        }
        (Kind::OrWrite, 2) if (p.fua || write_through(&task)) && supports_flush(&task) => {
            (IoType::Flush, 0, 0, Data::None)
        }
        (Kind::OrWrite, _) => return finish_good(task, p.blocks * bs),
        (Kind::None, _) => return finish_check(task, Sense::invalid_opcode()),
    };
    submit(task, io_type, lba, blocks, data);
}

/// The caching page's WCE is off: every write command flushes before it completes (SBC-3).
fn write_through(task: &ScsiTask) -> bool {
    task.lc.as_ref().is_some_and(|lc| lc.lun.write_through.load(Ordering::Relaxed))
}

fn supports_flush(task: &ScsiTask) -> bool {
    task.lc.as_ref().is_some_and(|lc| lc.lun.bdev().supports(IoType::Flush))
}

/// Sends one bdev I/O for the task; the task travels in the I/O's `ctx`.
fn submit(mut task: Box<ScsiTask>, io_type: IoType, lba: u64, blocks: u64, data: Data) {
    let mut io = task.io.take().unwrap_or_else(|| BdevIo::new(IO_DONE.with(Rc::clone)));
    io.prepare(io_type, lba, blocks);
    io.clear_iovs();
    match data {
        Data::None => {}
        Data::Task { mut skip, mut len } => {
            for v in task.iovs() {
                if len == 0 {
                    break;
                }
                let seg = v.iov_len as u64;
                if skip >= seg {
                    skip -= seg;
                    continue;
                }
                let n = (seg - skip).min(len);
                // SAFETY: the transport promised (ScsiTask::push_iov) that the task's buffers
                // stay valid and untouched until the task completes, which is after this I/O.
                unsafe { io.push_iov(v.iov_base.cast::<u8>().add(skip as usize), n as usize) };
                len -= n;
                skip = 0;
            }
        }
        Data::Bounce { skip, len } => {
            let end = (skip + len) as usize;
            let buf = &mut task.bounce[skip as usize..end];
            // SAFETY: the bounce buffer belongs to the task, which is parked (as a raw
            // pointer in the I/O's ctx) and not touched until this I/O completes; the
            // buffer is neither resized nor freed meanwhile.
            unsafe { io.push_iov(buf.as_mut_ptr(), buf.len()) };
        }
    }
    let lc = task.lc.clone().expect("a running block command has its LUN channel");
    let Some(chan) = lc.bdev() else {
        task.io = Some(io);
        return finish_check(task, Sense::new(key::NOT_READY, asc::LUN_NOT_READY));
    };
    // A COMPARE AND WRITE's own I/O passes its range lock (same bdev: the unit's channel).
    let lock_id = task.range_lock.as_ref().map_or(0, RangeLock::id);
    io.ctx = Box::into_raw(task) as u64;
    chan.submit_as(io, lock_id);
}

/// The completion of a block command's bdev I/O.
fn io_done(mut io: Box<BdevIo>) {
    // SAFETY: `ctx` was set by `submit` or `start_plain` from `Box::into_raw` of the task that
    // owns this I/O, and each submitted I/O completes exactly once, so the box is rebuilt
    // exactly once.
    let mut task = unsafe { Box::from_raw(io.ctx as *mut ScsiTask) };
    if task.plan.lent {
        task.reclaim_iovs(&mut io);
        if io.status() == IoStatus::Success {
            task.io = Some(io);
            let moved = task.buffer_len();
            task.set_transferred(moved);
            task.good();
            // The data path's one end: `finish` inlined here (the general path's many callers
            // keep one out-of-line copy).
            return finish_inline(task);
        }
    }
    let failed = (io.status() != IoStatus::Success).then(|| io_error_sense(&io));
    let io_type = io.io_type;
    task.io = Some(io);
    if let Some(sense) = failed {
        return finish_check(task, sense);
    }
    if matches!(task.plan.kind, Kind::WriteSamePattern | Kind::WriteSameZeroes | Kind::WriteSameUnmap | Kind::Unmap)
        && io_type != IoType::Flush
    {
        // These advance by the blocks (descriptors) done, not by step.
        task.plan.progress +=
            if task.plan.kind == Kind::Unmap { 1 } else { task.io.as_ref().map_or(0, |i| i.num_blocks) };
    }
    task.step += 1;
    let bs = task.lc.as_ref().map_or(512, |lc| lc.block_size);
    step(task, bs);
}

/// The sense a failed bdev I/O reports.
#[cold]
pub(crate) fn io_error_sense(io: &BdevIo) -> Sense {
    match (io.status(), io.errno()) {
        (IoStatus::Aborted, _) => Sense::new(key::ABORTED_COMMAND, asc::NO_ADDITIONAL),
        (_, libc::ENODEV) => Sense::new(key::NOT_READY, asc::LUN_NOT_READY),
        (_, libc::ENOTSUP) => Sense::invalid_opcode(),
        (_, libc::EPERM) => Sense::write_protected(),
        (_, libc::ENOSPC) => Sense::new(key::DATA_PROTECT, asc::SPACE_ALLOCATION_FAILED),
        (_, libc::EINVAL) => Sense::lba_out_of_range(),
        _ if io.io_type == IoType::Read => Sense::new(key::MEDIUM_ERROR, asc::UNRECOVERED_READ),
        _ => Sense::new(key::MEDIUM_ERROR, asc::WRITE_ERROR),
    }
}

fn finish_good(mut task: Box<ScsiTask>, transferred: u64) {
    task.set_transferred(transferred);
    task.good();
    finish(task);
}

/// Finishes with GOOD status, keeping the transfer count decoding set.
fn finish_kept(mut task: Box<ScsiTask>) {
    task.good();
    finish(task);
}

fn finish_check(mut task: Box<ScsiTask>, sense: Sense) {
    task.check(sense);
    finish(task);
}

/// Ends an asynchronous task: uncounts it, applies any abort, hands it back.
fn finish(task: Box<ScsiTask>) {
    finish_inline(task)
}

/// [`finish`], inlined where it is called.
#[inline(always)]
fn finish_inline(mut task: Box<ScsiTask>) {
    let Some(lc) = task.lc.take() else { return };
    // Unlocks a COMPARE AND WRITE's blocks: its I/O have all completed.
    task.range_lock = None;
    if lc.end_io(task.epoch, &task.nexus, task.tag) {
        task.aborted = true;
        task.good(); // drops sense data of the task's own outcome: TASK ABORTED carries none
        task.status = status::TASK_ABORTED;
    }
    task.plan = Plan::default();
    match task.done.clone() {
        Some(done) => done(task),
        None => tracing::error!("SCSI task finished without a completion callback"),
    }
}
