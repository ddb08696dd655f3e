//! A logical unit on a bdev: command dispatch, unit attentions, reservations and mode state,
//! and the bookkeeping task management needs.
//!
//! The unit is shared by every reactor that has a queue talking to it; the data path touches
//! only per-reactor state (each reactor's bdev channel and its own in-flight counters) and two
//! flags that are false in the common case (a unit attention pending, a reservation held).
//! Everything else (reservations, mode pages, pending unit attentions) sits behind one lock
//! that only management-type commands take.

use super::cdb::{allocation_length, op};
use super::mode::ModePages;
use super::pr::{PrEffects, Reservations};
use super::sense::{asc, key, Failure, Sense};
use super::task::{DataDir, ScsiTask};
use super::{blockcmd, inquiry, report, LunInfo, Nexus, PlainIo};
use crate::bdev::{BdevChannel, BdevDesc, IoType};
use crate::framework;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// A LUN channel was asked for off a reactor thread, or on a reactor the unit has no
/// in-flight slot for (reactors are fixed at start, so this is a caller's bug).
#[derive(Debug, thiserror::Error)]
#[error("LUN channels are opened on reactor threads only (reactor {reactor:?}; the unit has {slots} slots)")]
pub struct NotOnReactor {
    /// The calling thread's reactor, if any.
    pub reactor: Option<usize>,
    /// In-flight slots of the unit.
    pub slots: usize,
}

/// Largest READ/WRITE we advertise (block limits VPD), in bytes. The iSCSI engine serves an
/// Expected Data Transfer Length up to exactly this (`iscsi::command::MAX_EDTL`): a transport
/// must never refuse a transfer the unit advertises (libiscsi's WriteSame16.Unmap writes 64Ki
/// 512-byte blocks in one WRITE(16) when MAXIMUM WRITE SAME LENGTH allows as much).
pub const MAX_TRANSFER_BYTES: u64 = 32 << 20;
/// Largest UNMAP descriptor and most descriptors per UNMAP we advertise.
// (libiscsi's Inquiry.BlockLimits holds a limit above 1M blocks for insane: 1M it is.)
const MAX_UNMAP_BLOCKS: u32 = 1 << 20;
const MAX_UNMAP_DESCRIPTORS: u32 = 256;
/// Pending unit attentions kept per nexus; beyond this the oldest are dropped.
const MAX_PENDING_UA: usize = 16;

/// In-flight counters of one reactor, by TMF epoch parity; on its own cache line so reactors
/// never write to a shared line on the data path.
#[repr(align(64))]
#[derive(Default)]
pub(crate) struct InflightSlot {
    pub(crate) by_parity: [AtomicUsize; 2],
}

/// Which tasks a task management function aborts: those started before `before_epoch` that
/// match the nexus (None: every nexus) and the tag (None: every tag).
#[derive(Debug, Clone)]
pub(crate) struct AbortRule {
    pub(crate) before_epoch: u64,
    pub(crate) nexus: Option<Nexus>,
    pub(crate) tag: Option<u64>,
}

/// State behind the unit's lock.
pub(crate) struct LunState {
    pub(crate) mode: ModePages,
    pub(crate) pr: Reservations,
    /// Unit attentions waiting for each nexus, oldest first.
    pub(crate) attentions: HashMap<Nexus, VecDeque<(u8, u8)>>,
    /// Every nexus that has used the unit (unit attentions for "all" go to these).
    pub(crate) nexuses: Vec<Nexus>,
    pub(crate) abort_rules: Vec<AbortRule>,
    /// Nexuses preventing medium removal (PREVENT ALLOW MEDIUM REMOVAL, SBC-3 5.13); a
    /// removable unit's medium cannot be ejected while any is here.
    pub(crate) preventing: Vec<Nexus>,
}

/// A logical unit backed by a bdev.
pub struct ScsiLun {
    /// The LUN number.
    pub id: u64,
    desc: BdevDesc,
    target_name: String,
    relative_port: u16,
    readonly: bool,
    /// The medium is removable (set once, before the unit is shared).
    removable: bool,
    /// A removable unit's medium is ejected: media-access commands get MEDIUM NOT PRESENT.
    ejected: AtomicBool,
    state: Mutex<LunState>,
    /// Some nexus has a unit attention pending (fast-path check).
    attention: AtomicBool,
    /// A reservation is held (fast-path check).
    reserved: AtomicBool,
    /// Some abort rule is active (checked when a task finishes).
    pub(crate) aborting: AtomicBool,
    /// Task management epoch: tasks remember the epoch they started in.
    pub(crate) epoch: AtomicU64,
    /// A task management function is running (they run one at a time per unit).
    pub(crate) tmf_busy: AtomicBool,
    pub(crate) inflight: Box<[InflightSlot]>,
    /// The caching page's WCE is off: writes are flushed before they complete.
    pub(crate) write_through: AtomicBool,
    /// The control page's SWP is set: the unit is write-protected by software (SPC-4 7.5.8)
    /// until an initiator clears it.
    swp: AtomicBool,
    /// SANITIZE: whether one runs (or failed), and who waits for it.
    pub(crate) sanitize: super::sanitize::SanitizeState,
    /// Outcomes of EXTENDED COPY commands for RECEIVE COPY RESULTS.
    pub(crate) copy_results: super::xcopy::CopyResults,
}

impl ScsiLun {
    /// A unit numbered `id` on the open descriptor `desc` (read-only units refuse writes).
    pub fn new(id: u64, desc: BdevDesc, target_name: &str, relative_port: u16, readonly: bool) -> ScsiLun {
        // A bdev read-only by nature (a snapshot, a read-only lvol) is a write-protected unit.
        let readonly = readonly || desc.bdev().backend().read_only();
        let slots = framework::reactors().len().max(1);
        let mode = ModePages::new(&build_info(&desc, id, target_name, relative_port, readonly));
        let write_through = !mode.write_cache;
        ScsiLun {
            id,
            desc,
            target_name: target_name.to_string(),
            relative_port,
            readonly,
            removable: false,
            ejected: AtomicBool::new(false),
            state: Mutex::new(LunState {
                mode,
                pr: Reservations::new(),
                attentions: HashMap::new(),
                nexuses: Vec::new(),
                abort_rules: Vec::new(),
                preventing: Vec::new(),
            }),
            attention: AtomicBool::new(false),
            reserved: AtomicBool::new(false),
            aborting: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            tmf_busy: AtomicBool::new(false),
            inflight: (0..slots).map(|_| InflightSlot::default()).collect(),
            write_through: AtomicBool::new(write_through),
            swp: AtomicBool::new(false),
            sanitize: Default::default(),
            copy_results: Default::default(),
        }
    }

    /// Makes the unit's medium removable (or not): INQUIRY reports RMB, PREVENT ALLOW MEDIUM
    /// REMOVAL and START STOP UNIT's LOEJ take effect. Units are not removable by default.
    pub fn with_removable(mut self, removable: bool) -> ScsiLun {
        self.removable = removable;
        self
    }

    /// No sanitize runs or failed, no unit attention is pending, no reservation is held and
    /// the medium is in: nothing that refuses a command before it is decoded.
    #[inline]
    fn undisturbed(&self) -> bool {
        self.sanitize.idle()
            && !self.attention.load(Ordering::Acquire)
            && !self.reserved.load(Ordering::Acquire)
            && !self.ejected.load(Ordering::Acquire)
    }

    /// Whether the medium is removable.
    pub fn removable(&self) -> bool {
        self.removable
    }

    /// Whether the (removable) medium is ejected now.
    pub fn medium_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    /// The bdev's name.
    pub fn bdev_name(&self) -> &str {
        self.desc.bdev().name()
    }

    /// Whether the unit refuses writes: read-only by configuration or by nature, or
    /// write-protected for now by the control page's SWP.
    pub fn readonly(&self) -> bool {
        self.readonly || self.swp.load(Ordering::Acquire)
    }

    /// What command handlers need to know, as of now.
    pub fn info(&self) -> LunInfo {
        let mut info = build_info(&self.desc, self.id, &self.target_name, self.relative_port, self.readonly);
        // Software write protection stops writes, not the unit's abilities (UNMAP stays
        // supported, and refused with WRITE PROTECTED).
        info.readonly = self.readonly();
        info.removable = self.removable;
        info
    }

    /// A bdev channel to this unit for the calling reactor (None off a reactor or once the
    /// bdev is gone): for a copy manager moving data of another unit.
    pub(crate) fn open_bdev_channel(&self) -> Option<BdevChannel> {
        self.desc.channel().ok()
    }

    /// The open bdev.
    pub(crate) fn bdev(&self) -> &crate::bdev::Bdev {
        self.desc.bdev()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, LunState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This reactor's channel for `nexus` (reactor threads only: the in-flight counters it
    /// uses have one writer per reactor). Without a bdev channel (the bdev was removed) every
    /// command fails with LOGICAL UNIT NOT READY.
    pub fn open_channel(self: &Arc<Self>, nexus: Arc<Nexus>) -> Result<Rc<LunChannel>, NotOnReactor> {
        let reactor = framework::current_index();
        let slot =
            reactor.filter(|&r| r < self.inflight.len()).ok_or(NotOnReactor { reactor, slots: self.inflight.len() })?;
        {
            let mut st = self.lock();
            if !st.nexuses.contains(&nexus) {
                st.nexuses.push((*nexus).clone());
            }
        }
        // EXTENDED COPY finds units by their NAA designator.
        super::xcopy::register(self);
        let chan = self.desc.channel().ok();
        Ok(Rc::new(LunChannel {
            lun: self.clone(),
            chan,
            slot,
            nexus,
            block_size: self.desc.bdev().block_size() as u64,
            max_transfer_blocks: max_transfer_blocks(self.desc.bdev().block_size()),
        }))
    }

    /// Queues a unit attention for every nexus that has used the unit except `except`.
    pub fn unit_attention_all(&self, code: asc::Code, except: Option<&Nexus>) {
        let mut st = self.lock();
        let targets: Vec<Nexus> = st.nexuses.iter().filter(|n| Some(*n) != except).cloned().collect();
        for n in targets {
            push_attention(&mut st, n, code);
        }
        self.attention.store(!st.attentions.is_empty(), Ordering::Release);
    }

    /// Queues a unit attention for `nexus`.
    pub fn unit_attention(&self, nexus: &Nexus, code: asc::Code) {
        let mut st = self.lock();
        push_attention(&mut st, nexus.clone(), code);
        self.attention.store(true, Ordering::Release);
    }

    /// The bdev was resized: every nexus hears CAPACITY DATA HAS CHANGED.
    pub fn capacity_changed(&self) {
        self.unit_attention_all(asc::CAPACITY_CHANGED, None);
    }

    /// Takes the oldest unit attention pending for `nexus`, if any.
    fn take_attention(&self, nexus: &Nexus) -> Option<(u8, u8)> {
        let mut st = self.lock();
        let code = st.attentions.get_mut(nexus).and_then(VecDeque::pop_front);
        if st.attentions.get(nexus).is_some_and(VecDeque::is_empty) {
            st.attentions.remove(nexus);
        }
        self.attention.store(!st.attentions.is_empty(), Ordering::Release);
        code
    }

    /// Drops pending REPORTED LUNS DATA HAS CHANGED attentions for `nexus` (REPORT LUNS
    /// reported the new inventory).
    fn clear_luns_changed(&self, nexus: &Nexus) {
        let mut st = self.lock();
        if let Some(q) = st.attentions.get_mut(nexus) {
            q.retain(|&c| c != asc::REPORTED_LUNS_CHANGED);
            if q.is_empty() {
                st.attentions.remove(nexus);
            }
        }
        self.attention.store(!st.attentions.is_empty(), Ordering::Release);
    }

    fn apply_pr_effects(self: &Arc<Self>, effects: PrEffects) {
        if !effects.aborted.is_empty() {
            // PREEMPT AND ABORT (SPC-4 5.13.11.2.4): the preempted nexuses' tasks are aborted
            // as by ABORT TASK SET from each of them; bdev I/O in flight cannot be recalled,
            // so those tasks report TASK ABORTED when they finish.
            super::tmf::abort_task_sets(self, effects.aborted);
        }
        if effects.unit_attentions.is_empty() {
            return;
        }
        let mut st = self.lock();
        for (n, code) in effects.unit_attentions {
            push_attention(&mut st, n, code);
        }
        self.attention.store(!st.attentions.is_empty(), Ordering::Release);
    }

    fn sync_reserved(&self, st: &LunState) {
        self.reserved.store(st.pr.is_active(), Ordering::Release);
    }
}

/// The largest READ/WRITE, in blocks of `block_size` bytes.
fn max_transfer_blocks(block_size: u32) -> u64 {
    MAX_TRANSFER_BYTES / block_size as u64
}

fn build_info(desc: &BdevDesc, id: u64, target_name: &str, relative_port: u16, readonly: bool) -> LunInfo {
    let bdev = desc.bdev();
    let bs = bdev.block_size();
    LunInfo {
        lun_id: id,
        target_name: target_name.to_string(),
        relative_port,
        bdev_name: bdev.name().to_string(),
        product: bdev.backend().product_name().to_string(),
        uuid: bdev.uuid(),
        block_size: bs,
        lbppbe: (bdev.physical_block_size() / bs).max(1).trailing_zeros().min(15) as u8,
        num_blocks: bdev.num_blocks(),
        unmap: !readonly && bdev.supports(IoType::Unmap),
        write_zeroes: bdev.supports(IoType::WriteZeroes),
        flush: bdev.supports(IoType::Flush),
        readonly,
        removable: false,
        max_transfer_blocks: max_transfer_blocks(bs).min(u32::MAX as u64) as u32,
        max_unmap_blocks: MAX_UNMAP_BLOCKS,
        max_unmap_descriptors: MAX_UNMAP_DESCRIPTORS,
    }
}

fn push_attention(st: &mut LunState, nexus: Nexus, code: (u8, u8)) {
    let q = st.attentions.entry(nexus).or_default();
    if !q.contains(&code) {
        if q.len() >= MAX_PENDING_UA {
            q.pop_front();
        }
        q.push_back(code);
    }
}

/// A unit as one reactor uses it for one nexus: the unit, this thread's bdev channel and
/// this reactor's in-flight counters. Transports keep one per (queue, LUN).
pub struct LunChannel {
    /// The unit.
    pub lun: Arc<ScsiLun>,
    pub(crate) chan: Option<BdevChannel>,
    pub(crate) slot: usize,
    /// Who is talking through it.
    pub nexus: Arc<Nexus>,
    /// The unit's block size and largest READ/WRITE in blocks, fixed for its life: kept here
    /// so the data path reads them without following the unit to its bdev (or dividing).
    pub(crate) block_size: u64,
    pub(crate) max_transfer_blocks: u64,
}

impl LunChannel {
    /// The bdev channel (None when the bdev is gone).
    pub(crate) fn bdev(&self) -> Option<&BdevChannel> {
        self.chan.as_ref()
    }

    /// A plain READ or WRITE (see [`blockcmd::decode_plain`]) on a unit with nothing pending
    /// that could refuse it (no sanitize, unit attention, reservation or ejected medium) and
    /// a bdev to run it on ([`Self::bdev`]): the one bdev I/O it is, which a transport may submit
    /// itself (counted with [`Self::begin_io`] and [`Self::end_io`]) instead of making a task of it.
    /// None for anything else: that goes through [`execute`].
    #[inline(always)]
    pub(crate) fn plain_io(&self, cdb: &[u8; 32], dir: DataDir, buffer_len: u64) -> Option<PlainIo> {
        if !self.lun.undisturbed() || self.chan.is_none() {
            return None;
        }
        blockcmd::decode_plain(self, cdb, dir, buffer_len)
    }

    /// Counts a command in this reactor's in-flight slot for the unit's current epoch and
    /// returns that epoch, which [`Self::end_io`] takes. Each slot has one writer (its
    /// reactor), so plain stores do: no locked instruction on the data path (one right after a
    /// bdev's data copy would wait for the whole store buffer to drain). A task management
    /// function orders itself after every count made under the old epoch by passing a
    /// message through each reactor (see `tmf`).
    #[inline(always)]
    pub(crate) fn begin_io(&self) -> u64 {
        let e = self.lun.epoch.load(Ordering::Relaxed);
        let counter = &self.lun.inflight[self.slot].by_parity[(e & 1) as usize];
        counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        e
    }

    /// Uncounts a command [`Self::begin_io`] counted under `epoch`, sent by `nexus` with
    /// `tag`; true if a running task management function covers it (it then reports TASK
    /// ABORTED, whatever its own outcome).
    #[inline(always)]
    pub(crate) fn end_io(&self, epoch: u64, nexus: &Nexus, tag: u64) -> bool {
        let lun = &self.lun;
        let aborted = lun.aborting.load(Ordering::Acquire) && super::tmf::is_aborted(lun, epoch, nexus, tag);
        // Single writer (see begin_io); Release: everything the command did, including the
        // abort check above, comes before the count a task management function waits on.
        let counter = &lun.inflight[self.slot].by_parity[(epoch & 1) as usize];
        counter.store(counter.load(Ordering::Relaxed) - 1, Ordering::Release);
        aborted
    }
}

/// Commands that never report a unit attention (SPC-4 5.14 / SAM-5 5.14).
fn ignores_attention(opcode: u8) -> bool {
    matches!(opcode, op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE)
}

/// Executes `task` on the unit. Returns the task when it finished at once (every command
/// that moves no bdev data, and every error found before I/O); otherwise the task's callback
/// gets it back later, on this reactor.
#[inline]
pub fn execute(lc: &Rc<LunChannel>, task: Box<ScsiTask>) -> Option<Box<ScsiTask>> {
    // The data path: a block command with a whole CDB, on a unit with nothing pending that
    // the checks below look at. Every one of them would pass; a handful of loads instead.
    let opcode = task.cdb[0];
    if lc.lun.undisturbed()
        && blockcmd::is_block_command(opcode)
        && super::cdb::cdb_len(opcode).is_some_and(|n| task.cdb_len >= n)
    {
        return blockcmd::start(lc, task);
    }
    execute_checked(lc, task)
}

/// [`execute`] with every check, in the order the standards set.
fn execute_checked(lc: &Rc<LunChannel>, mut task: Box<ScsiTask>) -> Option<Box<ScsiTask>> {
    let lun = &lc.lun;
    if task.cdb_len == 0 {
        task.check(Sense::invalid_opcode());
        return Some(task);
    }
    let opcode = task.cdb[0];
    // A sanitize makes the unit not ready before anything else is looked at: a nexus that
    // has a unit attention pending is told the unit is busy sanitizing first (SBC-4 4.11.2).
    if let Some(sense) = lun.sanitize.gate(opcode) {
        task.check(sense);
        return Some(task);
    }
    if lun.attention.load(Ordering::Acquire) && !ignores_attention(opcode) {
        if let Some(code) = lun.take_attention(&task.nexus) {
            task.check(Sense::new(key::UNIT_ATTENTION, code));
            return Some(task);
        }
    }
    if lun.reserved.load(Ordering::Acquire) {
        let st = lun.lock();
        if let Err(f) = st.pr.check(task.cdb(), &task.nexus) {
            drop(st);
            task.fail(f);
            return Some(task);
        }
    }
    if let Some(needed) = super::cdb::cdb_len(opcode) {
        if task.cdb_len < needed {
            task.check(Sense::invalid_cdb_field(0, None));
            return Some(task);
        }
    }
    if lun.ejected.load(Ordering::Acquire) && needs_medium(opcode) {
        task.check(Sense::new(key::NOT_READY, asc::MEDIUM_NOT_PRESENT));
        return Some(task);
    }
    if blockcmd::is_block_command(opcode) {
        return blockcmd::start(lc, task);
    }
    if opcode == op::SANITIZE {
        return super::sanitize::start(lc, task);
    }
    if opcode == op::EXTENDED_COPY {
        return super::xcopy::start(lc, task);
    }
    let result = management_command(lun, &mut task);
    match result {
        Ok(()) => task.good(),
        Err(f) => task.fail(f),
    }
    Some(task)
}

/// Commands that access the medium, refused with MEDIUM NOT PRESENT while a removable unit's
/// medium is ejected (SBC-3; libiscsi's PreventAllow and StartStopUnit tests check TEST
/// UNIT READY). Inventory, sense, mode, reservation and medium-handling commands still work.
fn needs_medium(opcode: u8) -> bool {
    blockcmd::is_block_command(opcode)
        || matches!(
            opcode,
            op::TEST_UNIT_READY
                | op::READ_CAPACITY_10
                | op::SERVICE_ACTION_IN_16
                | op::SANITIZE
                | op::EXTENDED_COPY
                | op::READ_DEFECT_DATA_10
                | op::READ_DEFECT_DATA_12
        )
}

/// START STOP UNIT (SBC-3 5.25) on a removable unit. A POWER CONDITION other than START_VALID
/// makes START and LOEJ ignored; with LOEJ set, START=0 ejects the medium and START=1 loads
/// it, both refused with MEDIUM REMOVAL PREVENTED while some nexus prevents removal. Without
/// LOEJ the unit has no other state to change (no power conditions are modelled).
fn start_stop_unit(lun: &ScsiLun, cdb: &[u8], nexus: &Nexus) -> Result<(), Failure> {
    let power_condition = cdb[4] >> 4;
    let loej = cdb[4] & 0x02 != 0;
    let start = cdb[4] & 0x01 != 0;
    if !lun.removable || power_condition != 0 || !loej {
        return Ok(());
    }
    let st = lun.lock();
    if !st.preventing.is_empty() {
        return Err(Sense::new(key::ILLEGAL_REQUEST, asc::MEDIUM_REMOVAL_PREVENTED).into());
    }
    let was_ejected = lun.ejected.swap(!start, Ordering::AcqRel);
    drop(st);
    if was_ejected && start {
        tracing::debug!(lun = lun.id, "medium loaded");
        // A new medium for everyone else (SBC-3: NOT READY TO READY CHANGE, MEDIUM MAY
        // HAVE CHANGED); the nexus that loaded it knows.
        lun.unit_attention_all(asc::MEDIUM_MAY_HAVE_CHANGED, Some(nexus));
    } else if !was_ejected && !start {
        tracing::debug!(lun = lun.id, "medium ejected");
    }
    Ok(())
}

/// PREVENT ALLOW MEDIUM REMOVAL (SBC-3 5.13): records whether `nexus` prevents removal of a
/// removable unit's medium. On a unit whose medium is not removable it changes nothing.
fn prevent_allow(lun: &ScsiLun, cdb: &[u8], nexus: &Nexus) -> Result<(), Failure> {
    // PREVENT 1xb (medium changer) is obsolete in SBC-3.
    if cdb[4] & 0x02 != 0 {
        return Err(Sense::invalid_cdb_field(4, Some(1)).into());
    }
    if !lun.removable {
        return Ok(());
    }
    let mut st = lun.lock();
    st.preventing.retain(|n| n != nexus);
    if cdb[4] & 0x01 != 0 {
        st.preventing.push(nexus.clone());
    }
    Ok(())
}

/// Reads the parameter list of a data-out command: at most `len` bytes, refusing a buffer
/// that is shorter than the CDB says.
pub(crate) fn parameter_list(task: &mut ScsiTask, len: usize) -> Result<Vec<u8>, Failure> {
    task.set_wanted(len as u64);
    if len == 0 {
        return Ok(Vec::new());
    }
    if task.dir != DataDir::ToDevice || (task.buffer_len() as usize) < len {
        return Err(Sense::param_list_length().into());
    }
    let mut params = vec![0u8; len];
    task.copy_out(&mut params);
    Ok(params)
}

/// Sends `data` (truncated to the allocation length and the buffer) as the data-in.
fn data_in(task: &mut ScsiTask, data: &[u8]) -> Result<(), Failure> {
    let n = allocation_length(task.cdb()).min(data.len());
    task.set_wanted(n as u64);
    if n > 0 && task.dir != DataDir::FromDevice {
        if task.overflow_allowed {
            return Ok(()); // nothing moved: all of it is the overflow
        }
        return Err(Sense::invalid_cdb_field(0, None).into());
    }
    let copied = task.copy_in(&data[..n]);
    task.set_transferred(copied);
    Ok(())
}

/// Commands answered from the unit's state, without bdev I/O.
fn management_command(lun: &Arc<ScsiLun>, task: &mut ScsiTask) -> Result<(), Failure> {
    let cdb: Vec<u8> = task.cdb().to_vec();
    let info = lun.info();
    match cdb[0] {
        // Ready exactly when medium access can work: not once the bdev is gone.
        op::TEST_UNIT_READY if lun.bdev().is_removed() => Err(Sense::new(key::NOT_READY, asc::LUN_NOT_READY).into()),
        op::TEST_UNIT_READY => Ok(()),
        op::INQUIRY => {
            let data = inquiry::inquiry(&cdb, &info)?;
            data_in(task, &data)
        }
        op::REQUEST_SENSE => {
            if cdb[1] & 0x01 != 0 {
                // Descriptor-format sense is not offered.
                return Err(Sense::invalid_cdb_field(1, Some(0)).into());
            }
            let sense = if lun.sanitize.running() {
                lun.sanitize.in_progress()
            } else {
                match lun.take_attention(&task.nexus) {
                    Some(code) => Sense::new(key::UNIT_ATTENTION, code),
                    // SPC-4 6.39: the sense the unit would report for a medium access now.
                    None if lun.medium_ejected() => Sense::new(key::NOT_READY, asc::MEDIUM_NOT_PRESENT),
                    None => Sense::new(key::NO_SENSE, asc::NO_ADDITIONAL),
                }
            };
            data_in(task, &sense.to_fixed())
        }
        op::READ_CAPACITY_10 => data_in(task, &report::read_capacity_10(&info)),
        op::SERVICE_ACTION_IN_16 => match cdb[1] & 0x1F {
            op::SAI_READ_CAPACITY_16 => data_in(task, &report::read_capacity_16(&info)),
            op::SAI_GET_LBA_STATUS => {
                let bdev = lun.bdev();
                let data = report::get_lba_status(&cdb, &info, |lba, max| bdev.allocation_run(lba, max))?;
                data_in(task, &data)
            }
            _ => Err(Sense::invalid_cdb_field(1, None).into()),
        },
        op::MAINTENANCE_IN if cdb[1] & 0x1F == op::MI_REPORT_SUPPORTED_OPCODES => {
            let data = report::supported_opcodes(&cdb)?;
            data_in(task, &data)
        }
        op::MODE_SENSE_6 | op::MODE_SENSE_10 => {
            let data = lun.lock().mode.sense(&cdb, &info)?;
            data_in(task, &data)
        }
        op::MODE_SELECT_6 | op::MODE_SELECT_10 => {
            let len = if cdb[0] == op::MODE_SELECT_6 { cdb[4] as usize } else { super::cdb::be16(&cdb, 7) as usize };
            let params = parameter_list(task, len)?;
            let mut st = lun.lock();
            let before = (st.mode.write_cache, st.mode.swp);
            st.mode.select(&cdb, &params, &info)?;
            let changed = (st.mode.write_cache, st.mode.swp) != before;
            lun.write_through.store(!st.mode.write_cache, Ordering::Release);
            lun.swp.store(st.mode.swp, Ordering::Release);
            drop(st);
            task.set_transferred(len as u64);
            if changed {
                lun.unit_attention_all(asc::MODE_PARAMETERS_CHANGED, Some(&task.nexus));
            }
            Ok(())
        }
        op::START_STOP_UNIT => start_stop_unit(lun, &cdb, &task.nexus),
        op::PREVENT_ALLOW_MEDIUM_REMOVAL => prevent_allow(lun, &cdb, &task.nexus),
        op::RECEIVE_COPY_RESULTS => {
            let data = super::xcopy::receive_copy_results(lun, &cdb, &task.nexus)?;
            data_in(task, &data)
        }
        op::READ_DEFECT_DATA_10 | op::READ_DEFECT_DATA_12 => data_in(task, &report::read_defect_data(&cdb)),
        op::PERSISTENT_RESERVE_IN => {
            let data = lun.lock().pr.pr_in(&cdb, &task.nexus)?;
            data_in(task, &data)
        }
        op::PERSISTENT_RESERVE_OUT => {
            let len = super::cdb::be32(&cdb, 5) as usize;
            let params = parameter_list(task, len.min(4096))?;
            let mut st = lun.lock();
            let effects = st.pr.pr_out(&cdb, &params, &task.nexus);
            lun.sync_reserved(&st);
            drop(st);
            task.set_transferred(params.len() as u64);
            lun.apply_pr_effects(effects?);
            Ok(())
        }
        op::RESERVE_6 | op::RESERVE_10 => {
            let mut st = lun.lock();
            let r = st.pr.reserve(&cdb, &task.nexus);
            lun.sync_reserved(&st);
            r
        }
        op::RELEASE_6 | op::RELEASE_10 => {
            let mut st = lun.lock();
            let r = st.pr.release(&cdb, &task.nexus);
            lun.sync_reserved(&st);
            r
        }
        op::REPORT_LUNS => Err(Sense::invalid_opcode().into()), // answered by the target
        _ => Err(Sense::invalid_opcode().into()),
    }
}

/// Answers REPORT LUNS for a target whose units are `luns` (the target, not a unit, knows
/// its inventory; the unit clears its "LUNs changed" attention).
pub fn report_luns(lun: Option<&ScsiLun>, mut task: Box<ScsiTask>, luns: &[u64]) -> Box<ScsiTask> {
    let cdb: Vec<u8> = task.cdb().to_vec();
    let result = report::report_luns(&cdb, luns).map_err(Failure::from).and_then(|data| data_in(&mut task, &data));
    match result {
        Ok(()) => {
            if let Some(l) = lun {
                l.clear_luns_changed(&task.nexus);
            }
            task.good()
        }
        Err(f) => task.fail(f),
    }
    task
}

/// Answers a command addressed to a LUN that does not exist: INQUIRY says "no unit here"
/// (peripheral qualifier 011b), REQUEST SENSE reports the error, everything else fails
/// with LOGICAL UNIT NOT SUPPORTED (SPC-4 4.6.4).
pub fn absent_lun(mut task: Box<ScsiTask>) -> Box<ScsiTask> {
    let opcode = if task.cdb_len > 0 { task.cdb[0] } else { 0xFF };
    match opcode {
        op::INQUIRY if task.cdb_len >= 6 && task.cdb[1] & 0x01 == 0 => {
            let mut data = [0u8; 36];
            data[0] = 0x7F; // qualifier 011b, type 1Fh: no unit at this LUN
            data[2] = 0x06;
            data[3] = 0x02;
            data[4] = 31;
            match data_in(&mut task, &data) {
                Ok(()) => task.good(),
                Err(f) => task.fail(f),
            }
        }
        op::REQUEST_SENSE if task.cdb_len >= 6 => {
            let s = Sense::lun_not_supported().to_fixed();
            match data_in(&mut task, &s) {
                Ok(()) => task.good(),
                Err(f) => task.fail(f),
            }
        }
        _ => task.check(Sense::lun_not_supported()),
    }
    task
}

#[cfg(test)]
mod channel_tests {
    use super::*;
    use crate::bdev::modules::null;
    use crate::framework::testing;

    #[test]
    fn channels_open_on_reactors_only() {
        testing::reactors();
        null::create("t_lun_slots", 64, 512, None).unwrap();
        let desc = crate::bdev::open("t_lun_slots", false, Box::new(|_, _| {})).unwrap();
        let lun = Arc::new(ScsiLun::new(0, desc, "t.Target0", 1, true));
        let nexus = Arc::new(Nexus { initiator: "iqn.test:slots".into(), target_port: 1 });
        // Off a reactor there is no slot of our own: an error, not reactor 0's slot.
        let err = lun.open_channel(nexus.clone()).err().expect("refused off a reactor");
        assert_eq!(err.reactor, None);
        let on_reactor = framework::call(1, move || lun.open_channel(nexus).map(|c| c.slot)).unwrap();
        assert_eq!(on_reactor.unwrap(), 1);
    }
}
