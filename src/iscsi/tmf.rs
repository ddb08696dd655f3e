//! Task management requests (RFC 7143 §11.5-11.6) on the SCSI model's functions
//! (`scsi::tmf`): ABORT TASK, ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET, TARGET
//! WARM RESET (a reset of every unit of the node). Commands still collecting write data are
//! dropped here; commands with the model finish first and are then reported aborted (and get
//! no response). TARGET COLD RESET also closes every connection to the node. CLEAR ACA
//! answers "not supported", TASK REASSIGN "reassignment not supported" (ERL 0).

use super::command::decode_lun;
use super::conn::Conn;
use super::outbox::OutData;
use super::pdu::{at, flag, op, Bhs};
use crate::scsi::tmf::{self, TmfFunction, TmfInProgress};
use crate::scsi::{Nexus, ScsiLun};
use std::sync::Arc;

/// TMF response codes (RFC 7143 §11.6.1).
mod response {
    pub const COMPLETE: u8 = 0;
    pub const NO_TASK: u8 = 1;
    pub const NO_LUN: u8 = 2;
    pub const REASSIGN_NOT_SUPPORTED: u8 = 4;
    pub const NOT_SUPPORTED: u8 = 5;
}

/// A function on one unit, waiting to start (another runs there) or to finish.
pub(super) struct PendingTmf {
    lun: Arc<ScsiLun>,
    function: TmfFunction,
    nexus: Nexus,
    running: Option<TmfInProgress>,
    /// The request this answers (several functions may answer one request: a warm reset).
    request: Option<u64>,
}

impl PendingTmf {
    fn new(lun: Arc<ScsiLun>, function: TmfFunction, nexus: Nexus, request: Option<u64>) -> PendingTmf {
        PendingTmf { lun, function, nexus, running: None, request }
    }

    /// The I_T nexus loss of a session ending, on one unit.
    pub(super) fn nexus_reset(lun: Arc<ScsiLun>, nexus: Nexus) -> PendingTmf {
        PendingTmf::new(lun, TmfFunction::ItNexusReset, nexus, None)
    }

    /// Starts or polls; true when finished.
    fn poll(&mut self) -> bool {
        if self.running.is_none() {
            self.running = tmf::start(&self.lun, self.function, &self.nexus);
        }
        self.running.as_mut().is_some_and(|r| r.poll())
    }
}

/// A request answered once all its functions finish.
pub(super) struct TmfRequest {
    key: u64,
    itt: u32,
    /// TARGET COLD RESET: every session of the node ends once it is answered.
    cold: bool,
}

impl Conn {
    pub(super) fn tmf_request(&mut self, bhs: Bhs) {
        let exp_before = self.exp_cmd_sn;
        if !self.accept_cmd_sn(&bhs) {
            return;
        }
        let Some(s) = &self.sess else { return };
        let nexus = (*s.nexus).clone();
        let function = bhs.flags() & 0x7f;
        let itt = bhs.itt();
        self.refresh_luns();
        let lun_id = decode_lun(bhs.lun_field());
        let lun = lun_id.and_then(|id| self.target.as_ref().and_then(|t| t.lun(id).cloned()));
        let key = self.next_tmf_key;
        self.next_tmf_key += 1;
        let mut functions: Vec<(Arc<ScsiLun>, TmfFunction)> = Vec::new();
        match function {
            // ABORT TASK
            1 => {
                let rtt = bhs.u32_at(at::REF_TASK_TAG);
                let Some(lun) = lun else { return self.tmf_response(itt, response::NO_LUN) };
                match self.by_itt.get(&rtt).copied() {
                    Some(slot) => {
                        if self.abort_collecting(slot) {
                            return self.tmf_response(itt, response::COMPLETE);
                        }
                        functions.push((lun, TmfFunction::AbortTask { tag: rtt as u64 }));
                    }
                    None => {
                        // RFC 7143 §11.5.1: a task never received whose RefCmdSN is in the
                        // window and older than this request counts as received and aborted.
                        let ref_sn = bhs.u32_at(at::REF_CMDSN);
                        let sn = bhs.u32_at(at::CMDSN);
                        // (Not yet received: at or after the ExpCmdSN this request found.)
                        let in_window =
                            ref_sn.wrapping_sub(exp_before) as i32 >= 0 && sn.wrapping_sub(ref_sn) as i32 > 0;
                        let code = if in_window { response::COMPLETE } else { response::NO_TASK };
                        return self.tmf_response(itt, code);
                    }
                }
            }
            // ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET
            2 | 4 | 5 => {
                let Some(lun) = lun else { return self.tmf_response(itt, response::NO_LUN) };
                let f = match function {
                    2 => TmfFunction::AbortTaskSet,
                    4 => TmfFunction::ClearTaskSet,
                    _ => TmfFunction::LogicalUnitReset,
                };
                self.abort_collecting_on(Some(lun.id));
                functions.push((lun, f));
            }
            // TARGET WARM RESET: every unit of the node; TARGET COLD RESET: the same, then every
            // connection to the node closes (RFC 7143 §11.5.1).
            6 | 7 => {
                self.abort_collecting_on(None);
                if let Some(t) = &self.target {
                    functions.extend(t.luns().iter().map(|l| (l.clone(), TmfFunction::LogicalUnitReset)));
                }
            }
            8 => return self.tmf_response(itt, response::REASSIGN_NOT_SUPPORTED),
            _ => return self.tmf_response(itt, response::NOT_SUPPORTED),
        }
        if functions.is_empty() {
            self.tmf_response(itt, response::COMPLETE);
            if function == 7 {
                self.end_node_sessions();
            }
            return;
        }
        for (lun, f) in functions {
            self.tmfs.push(PendingTmf::new(lun, f, nexus.clone(), Some(key)));
        }
        self.tmf_waiting.push(TmfRequest { key, itt, cold: function == 7 });
        self.note_background();
        self.poll_tmfs();
    }

    /// After a cold reset: this connection closes once its response is sent, every other
    /// session of the node now.
    fn end_node_sessions(&mut self) {
        if let Some(node) = self.sess.as_ref().and_then(|s| s.node.as_ref()) {
            super::conn::drop_target_sessions_except(&node.name, self.id);
        }
        self.close_after_flush();
    }

    fn tmf_response(&mut self, itt: u32, code: u8) {
        let mut r = Bhs::new(op::TMF_RSP);
        r.set_flags(flag::FINAL);
        r.set_byte(2, code);
        r.set_itt(itt);
        self.seq_numbers(&mut r, true);
        self.push(r, OutData::None);
    }

    /// Drops a command still collecting write data; false if the model has it.
    fn abort_collecting(&mut self, slot: usize) -> bool {
        match self.tasks.get(slot).and_then(|t| t.as_ref()) {
            Some(cmd) if !cmd.executing() => {
                self.release_slot(slot);
                true
            }
            _ => false,
        }
    }

    /// Drops every command collecting data for `lun` (all units if None).
    fn abort_collecting_on(&mut self, lun: Option<u64>) {
        let slots: Vec<usize> = (0..self.tasks.len())
            .filter(|&i| self.tasks[i].as_ref().is_some_and(|c| !c.executing() && lun.is_none_or(|l| c.lun == l)))
            .collect();
        for s in slots {
            self.release_slot(s);
        }
    }

    /// Drops every command collecting data (the connection closes).
    pub(super) fn drop_collecting_tasks(&mut self) {
        self.abort_collecting_on(None);
        // Functions already running must still finish (their unit stays busy until then);
        // nobody waits for their answer any more.
        for t in &mut self.tmfs {
            t.request = None;
        }
        self.tmf_waiting.clear();
        let running: Vec<PendingTmf> = self.tmfs.drain(..).filter(|t| t.running.is_some()).collect();
        self.nexus_resets.extend(running);
    }

    /// Polls the functions of pending requests; answers the requests whose functions are all
    /// done. True if anything finished.
    pub(super) fn poll_tmfs(&mut self) -> bool {
        let before = self.tmfs.len();
        self.tmfs.retain_mut(|t| !t.poll());
        if self.tmfs.len() == before {
            return false;
        }
        let waiting = std::mem::take(&mut self.tmf_waiting);
        for req in waiting {
            if self.tmfs.iter().any(|t| t.request == Some(req.key)) {
                self.tmf_waiting.push(req);
            } else {
                self.tmf_response(req.itt, response::COMPLETE);
                if req.cold {
                    self.end_node_sessions();
                }
            }
        }
        true
    }

    /// Polls the nexus resets of a closing session. True if anything finished.
    pub(super) fn poll_nexus_resets(&mut self) -> bool {
        let before = self.nexus_resets.len();
        self.nexus_resets.retain_mut(|t| !t.poll());
        if self.nexus_resets.is_empty() && (before > 0 || self.awaiting_logout()) {
            self.nexus_released();
            return true;
        }
        self.nexus_resets.len() != before
    }
}
