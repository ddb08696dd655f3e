//! The virtio-scsi control queue: task management functions and asynchronous-notification
//! queries. A function completes when the tasks it covers have finished (see `scsi::tmf`),
//! so requests wait here, polled, until then; the reactor keeps polling while any wait.

use super::{decode_lun, ScsiDevice, TargetTable};
use crate::framework::PollStatus;
use crate::scsi::tmf::{self, TmfFunction, TmfInProgress};
use crate::scsi::{Nexus, ScsiLun};
use crate::vhost::device::{QueueHandle, RunningQueue, ServedQueue};
use crate::vhost::guest_buf::{copy_from_guest, copy_to_guest};
use crate::vhost::ring::{Chain, Pop, Vring};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use virtio_bindings::virtio_scsi as vs;
use vmm_sys_util::eventfd::EventFd;

/// Bytes of virtio_scsi_ctrl_tmf_req and of virtio_scsi_ctrl_an_req.
const TMF_REQ: usize = 24;
const AN_REQ: usize = 16;
/// VIRTIO_SCSI_S_FUNCTION_COMPLETE (virtio 1.2 5.6.6.2), which shares its value with S_OK.
const FUNCTION_COMPLETE: u8 = vs::VIRTIO_SCSI_S_OK as u8;

enum TmfState {
    /// Another function runs on the unit: start this one when it is done.
    Waiting {
        lun: Arc<ScsiLun>,
        function: TmfFunction,
        nexus: Nexus,
    },
    Running(TmfInProgress),
}

struct PendingTmf {
    head: u16,
    writable: Vec<(u64, u32)>,
    state: TmfState,
}

/// The control queue on its reactor.
pub(super) struct ControlQueue {
    ring: Vring,
    chain: Chain,
    ctrlr: String,
    targets: Arc<TargetTable>,
    pending: Vec<PendingTmf>,
    stopping: bool,
}

impl ControlQueue {
    pub(super) fn start(
        ring: Vring,
        kick: EventFd,
        ctrlr: String,
        targets: Arc<TargetTable>,
    ) -> Result<Box<dyn RunningQueue>, String> {
        let q = Rc::new(RefCell::new(ControlQueue {
            ring,
            chain: Chain::default(),
            ctrlr,
            targets,
            pending: Vec::new(),
            stopping: false,
        }));
        let name = format!("vhost_scsi_ctrl{}", q.borrow().ring.index);
        QueueHandle::start(q, kick, &name)
    }

    fn poll(&mut self) -> PollStatus {
        let mut progressed = self.advance_pending();
        if !self.stopping {
            // At most a ring's worth per poll: a driver that keeps publishing cannot hold the
            // reactor here (the poller runs again next iteration).
            for _ in 0..self.ring.size() {
                let Pop::Chain = self.ring.pop(&mut self.chain) else { break };
                self.handle_chain();
                progressed = true;
            }
        }
        let held_back = self.ring.signal();
        // While a function waits for tasks to drain, keep polling.
        PollStatus::from(progressed || held_back || !self.pending.is_empty())
    }

    /// Moves waiting functions forward; answers the finished ones.
    fn advance_pending(&mut self) -> bool {
        let mut progressed = false;
        let mut i = 0;
        while i < self.pending.len() {
            let p = &mut self.pending[i];
            if let TmfState::Waiting { lun, function, nexus } = &p.state {
                if let Some(run) = tmf::start(lun, *function, nexus) {
                    p.state = TmfState::Running(run);
                }
            }
            let finished = match &mut p.state {
                TmfState::Running(run) => run.poll(),
                TmfState::Waiting { .. } => false,
            };
            if finished {
                let p = self.pending.swap_remove(i);
                self.respond(p.head, &p.writable, &[FUNCTION_COMPLETE]);
                progressed = true;
            } else {
                i += 1;
            }
        }
        progressed
    }

    fn respond(&mut self, head: u16, writable: &[(u64, u32)], bytes: &[u8]) {
        let used = match copy_to_guest(self.ring.mem(), writable, 0, bytes) {
            Ok(()) => bytes.len() as u32,
            Err(_) => 0,
        };
        self.ring.log_segments(writable);
        self.ring.complete(head, used);
    }

    fn handle_chain(&mut self) {
        let head = self.chain.head;
        // A head can be in flight once. Published again while its function waits, it would
        // grow `pending` without bound and be answered twice: the driver broke the protocol.
        if self.pending.iter().any(|p| p.head == head) || self.pending.len() >= self.ring.size() as usize {
            return self.ring.mark_broken("control queue head published again while in flight");
        }
        let mem = self.ring.mem().clone();
        let writable = self.chain.writable.clone();
        let mut kind = [0u8; 4];
        if self.chain.malformed
            || self.chain.writable_len() == 0
            || copy_from_guest(&mem, &self.chain.readable, 0, &mut kind).is_err()
        {
            return self.ring.complete(head, 0);
        }
        match u32::from_le_bytes(kind) {
            vs::VIRTIO_SCSI_T_TMF => {
                let mut req = [0u8; TMF_REQ];
                if copy_from_guest(&mem, &self.chain.readable, 0, &mut req).is_err() {
                    return self.respond(head, &writable, &[vs::VIRTIO_SCSI_S_FAILURE as u8]);
                }
                let code = self.start_tmf(head, &writable, &req);
                if let Some(code) = code {
                    self.respond(head, &writable, &[code]);
                }
            }
            vs::VIRTIO_SCSI_T_AN_QUERY | vs::VIRTIO_SCSI_T_AN_SUBSCRIBE => {
                let mut req = [0u8; AN_REQ];
                // No asynchronous notification classes are supported: event_actual 0.
                let code = match copy_from_guest(&mem, &self.chain.readable, 0, &mut req) {
                    Ok(()) => vs::VIRTIO_SCSI_S_OK as u8,
                    Err(_) => vs::VIRTIO_SCSI_S_FAILURE as u8,
                };
                let mut resp = [0u8; 5];
                resp[4] = code;
                self.respond(head, &writable, &resp);
            }
            _ => self.respond(head, &writable, &[vs::VIRTIO_SCSI_S_FAILURE as u8]),
        }
    }

    /// Starts a task management function; Some(response) when it is answered at once.
    fn start_tmf(&mut self, head: u16, writable: &[(u64, u32)], req: &[u8; TMF_REQ]) -> Option<u8> {
        let subtype = u32::from_le_bytes(req[4..8].try_into().expect("4 bytes"));
        let lun_field: [u8; 8] = req[8..16].try_into().expect("8 bytes");
        let tag = u64::from_le_bytes(req[16..24].try_into().expect("8 bytes"));
        let (target_id, lun_id) = match decode_lun(&lun_field) {
            Ok(t) => t,
            Err(true) => return Some(vs::VIRTIO_SCSI_S_BAD_TARGET as u8),
            Err(false) => return Some(vs::VIRTIO_SCSI_S_INCORRECT_LUN as u8),
        };
        let Some(target) = self.targets.get(target_id) else { return Some(vs::VIRTIO_SCSI_S_BAD_TARGET as u8) };
        let Some(lun) = target.lun(lun_id).cloned() else { return Some(vs::VIRTIO_SCSI_S_INCORRECT_LUN as u8) };
        let function = match subtype {
            vs::VIRTIO_SCSI_T_TMF_ABORT_TASK => TmfFunction::AbortTask { tag },
            vs::VIRTIO_SCSI_T_TMF_ABORT_TASK_SET => TmfFunction::AbortTaskSet,
            vs::VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET => TmfFunction::ClearTaskSet,
            vs::VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET => TmfFunction::LogicalUnitReset,
            vs::VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET => TmfFunction::ItNexusReset,
            // CLEAR ACA (no ACA is ever established), QUERY TASK (SET): not offered.
            _ => return Some(vs::VIRTIO_SCSI_S_FUNCTION_REJECTED as u8),
        };
        tracing::info!(ctrlr = %self.ctrlr, target = target_id, lun = lun_id, ?function, "task management request");
        // Started (or kept waiting for another function on the unit) by advance_pending.
        let nexus = ScsiDevice::nexus(&self.ctrlr, target_id as u32);
        self.pending.push(PendingTmf {
            head,
            writable: writable.to_vec(),
            state: TmfState::Waiting { lun, function, nexus },
        });
        None
    }
}

impl ServedQueue for ControlQueue {
    fn ring(&self) -> &Vring {
        &self.ring
    }

    fn ring_mut(&mut self) -> &mut Vring {
        &mut self.ring
    }

    fn stop(&mut self) {
        self.stopping = true;
    }

    fn poll(&mut self) -> PollStatus {
        ControlQueue::poll(self)
    }

    fn inflight(&self) -> usize {
        self.pending.len()
    }
}
