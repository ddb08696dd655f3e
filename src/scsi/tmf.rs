//! Task management functions (SAM-5 7): ABORT TASK, ABORT TASK SET, CLEAR TASK SET, LOGICAL
//! UNIT RESET and I_T NEXUS RESET.
//!
//! Bdev I/O cannot be recalled once submitted, so a function completes when every task it
//! covers has finished; those tasks then report TASK ABORTED (transports map that to their own
//! "aborted" response) instead of their own outcome. Tasks are counted per reactor by the
//! parity of the epoch they started in: a function moves the unit to the next epoch, waits
//! until a message has passed through every other reactor (after which every task a reactor
//! started under the old epoch is counted and visible here, and every later one sees the new
//! epoch), and then for the previous parity's counters to drain. Functions on one unit run
//! one at a time, so the parity being drained never receives new tasks. The data path pays
//! only plain loads and stores for this; the rare function pays the message round trip.

use super::lun::{AbortRule, ScsiLun};
use super::mode::ModePages;
use super::sense::asc;
use super::Nexus;
use crate::framework;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A task management function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmfFunction {
    /// Abort the task with this tag (from the requesting nexus).
    AbortTask {
        /// The task's tag.
        tag: u64,
    },
    /// Abort every task of the requesting nexus.
    AbortTaskSet,
    /// Abort every task of every nexus.
    ClearTaskSet,
    /// Abort everything; release SPC-2 reservations and reset mode parameters (persistent
    /// reservations stay).
    LogicalUnitReset,
    /// Abort the requesting nexus's tasks and forget its SPC-2 reservation.
    ItNexusReset,
}

/// A function waiting for the tasks it covers to finish.
pub struct TmfInProgress {
    lun: Arc<ScsiLun>,
    function: TmfFunction,
    nexus: Nexus,
    old_epoch: u64,
    /// Reactors the epoch barrier still waits for.
    barrier: Arc<AtomicUsize>,
}

/// Sends a message through every reactor but the current one; the returned count reaches
/// zero once all have run it. Never waits: a reactor may be busy for a while.
fn epoch_barrier() -> Arc<AtomicUsize> {
    let me = framework::current_index();
    let others: Vec<usize> = (0..framework::reactors().len()).filter(|&r| Some(r) != me).collect();
    let pending = Arc::new(AtomicUsize::new(others.len()));
    for r in others {
        let p = pending.clone();
        let ack = move || {
            p.fetch_sub(1, Ordering::AcqRel);
        };
        if framework::send(r, ack).is_err() {
            // A stopped reactor runs no tasks.
            pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
    pending
}

/// Starts `function` from `nexus` on `lun`; None if another function is running on the unit
/// (call again later).
pub fn start(lun: &Arc<ScsiLun>, function: TmfFunction, nexus: &Nexus) -> Option<TmfInProgress> {
    if lun.tmf_busy.swap(true, Ordering::AcqRel) {
        return None;
    }
    let mut st = lun.lock();
    let current = lun.epoch.load(Ordering::SeqCst);
    let rule = match function {
        TmfFunction::AbortTask { tag } => {
            AbortRule { before_epoch: current + 1, nexus: Some(nexus.clone()), tag: Some(tag) }
        }
        TmfFunction::AbortTaskSet | TmfFunction::ItNexusReset => {
            AbortRule { before_epoch: current + 1, nexus: Some(nexus.clone()), tag: None }
        }
        TmfFunction::ClearTaskSet | TmfFunction::LogicalUnitReset => {
            AbortRule { before_epoch: current + 1, nexus: None, tag: None }
        }
    };
    // A sanitize's waiting command is not counted in flight (the operation outlives it):
    // it is reported aborted when the operation ends.
    lun.sanitize.note_abort(rule.nexus.as_ref(), rule.tag);
    st.abort_rules.push(rule);
    lun.aborting.store(true, Ordering::SeqCst);
    drop(st);
    let old_epoch = lun.epoch.fetch_add(1, Ordering::SeqCst);
    let barrier = epoch_barrier();
    tracing::debug!(lun = lun.id, ?function, "task management function started");
    Some(TmfInProgress { lun: lun.clone(), function, nexus: nexus.clone(), old_epoch, barrier })
}

impl TmfInProgress {
    /// The function.
    pub fn function(&self) -> TmfFunction {
        self.function
    }

    /// Whether every covered task has finished; if so the function's side effects are
    /// applied and it is complete.
    pub fn poll(&mut self) -> bool {
        if self.barrier.load(Ordering::Acquire) > 0 {
            return false;
        }
        let parity = (self.old_epoch & 1) as usize;
        let pending: usize = self.lun.inflight.iter().map(|s| s.by_parity[parity].load(Ordering::Acquire)).sum();
        if pending > 0 {
            return false;
        }
        let lun = &self.lun;
        {
            let mut st = lun.lock();
            let done_epoch = self.old_epoch + 1;
            st.abort_rules.retain(|r| r.before_epoch != done_epoch);
            lun.aborting.store(!st.abort_rules.is_empty(), Ordering::SeqCst);
            match self.function {
                TmfFunction::LogicalUnitReset => {
                    // SPC-4: a reset puts mode parameters back to their defaults (none are
                    // saved) and releases SPC-2 reservations; persistent ones stay.
                    st.pr.lun_reset();
                    // SBC-3 5.13: a reset ends every nexus's prevention of medium removal.
                    st.preventing.clear();
                    st.mode = ModePages::new(&lun.info());
                    lun.write_through.store(!st.mode.write_cache, Ordering::Release);
                }
                TmfFunction::ItNexusReset => {
                    st.pr.nexus_lost(&self.nexus);
                    // ... and I_T nexus loss ends that nexus's prevention.
                    st.preventing.retain(|n| *n != self.nexus);
                }
                _ => {}
            }
        }
        match self.function {
            // SAM-5 6.3.3: a logical unit reset is a unit attention for every nexus, the
            // issuer's too (as LIO does; libiscsi's MultipathIO.Reset checks every path).
            TmfFunction::LogicalUnitReset => lun.unit_attention_all(asc::BUS_DEVICE_RESET, None),
            TmfFunction::ClearTaskSet => lun.unit_attention_all(asc::COMMANDS_CLEARED, Some(&self.nexus)),
            // SAM-5: the nexus that was reset hears I_T NEXUS LOSS OCCURRED.
            TmfFunction::ItNexusReset => lun.unit_attention(&self.nexus, asc::I_T_NEXUS_LOSS),
            _ => {}
        }
        lun.tmf_busy.store(false, Ordering::Release);
        tracing::debug!(lun = lun.id, function = ?self.function, "task management function complete");
        true
    }
}

/// ABORT TASK SET on behalf of each of `nexuses` (PREEMPT AND ABORT), run in the background
/// on the current reactor: a timed poller starts each function when the unit is free of
/// others and polls it until its tasks have drained, then goes.
pub(crate) fn abort_task_sets(lun: &Arc<ScsiLun>, nexuses: Vec<Nexus>) {
    let lun = lun.clone();
    let mut pending: Vec<(Nexus, Option<TmfInProgress>)> = nexuses.into_iter().map(|n| (n, None)).collect();
    // Started at once where possible, so that tasks finishing from now on are covered.
    for (n, run) in &mut pending {
        *run = start(&lun, TmfFunction::AbortTaskSet, n);
    }
    let handle: std::rc::Rc<std::cell::RefCell<Option<framework::Poller>>> = Default::default();
    let me = handle.clone();
    let poller = framework::poller_register("scsi_preempt_abort", std::time::Duration::from_millis(1), move || {
        pending.retain_mut(|(n, run)| {
            if run.is_none() {
                *run = start(&lun, TmfFunction::AbortTaskSet, n);
            }
            !run.as_mut().is_some_and(|r| r.poll())
        });
        if pending.is_empty() {
            me.borrow_mut().take();
        }
        framework::PollStatus::Idle
    });
    *handle.borrow_mut() = Some(poller);
}

/// Whether a finishing command, counted under `epoch` and sent by `nexus` with `tag`, is
/// covered by a running function.
pub(crate) fn is_aborted(lun: &ScsiLun, epoch: u64, nexus: &Nexus, tag: u64) -> bool {
    let st = lun.lock();
    st.abort_rules.iter().any(|r| {
        epoch < r.before_epoch && r.nexus.as_ref().is_none_or(|n| n == nexus) && r.tag.is_none_or(|t| t == tag)
    })
}
