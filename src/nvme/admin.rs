//! The admin command set on fabrics (NVMe Base 2.0 §5; SPDK's `nvmf_ctrlr_process_admin_cmd`
//! is the reference): Identify, Get/Set Features, Get Log Page, Asynchronous Event Request,
//! Keep Alive, Abort. Queue management, namespace management/attachment, firmware, format,
//! sanitize, self-test and Doorbell Buffer Config do not apply to a fabrics controller and
//! are Invalid Opcode, as is anything unknown; the vfio-user transport (a PCIe function)
//! handles queue creation and deletion and Doorbell Buffer Config itself before a command
//! reaches the model.
//! A discovery controller serves Identify, Get Log Page, features, AER and Keep Alive.

use super::queue::QueuePair;
use super::request::NvmeRequest;
use super::{aer, features, identify, log};
use ferry_nvme::spec::{admin, sc, Status};

/// Runs admin command `req` (not a fabrics command) on the admin queue `qp`. None for an
/// AER held until an event.
pub fn execute(qp: &QueuePair, mut req: Box<NvmeRequest>) -> Option<Box<NvmeRequest>> {
    let discovery = qp.controller().is_discovery();
    match req.cmd.opcode() {
        admin::IDENTIFY => identify::execute(qp, &mut req),
        admin::GET_LOG_PAGE => log::execute(qp, &mut req),
        admin::GET_FEATURES => features::get(qp, &mut req),
        admin::SET_FEATURES => features::set(qp, &mut req),
        admin::ASYNC_EVENT_REQUEST => return aer::execute(qp, req),
        admin::KEEP_ALIVE => qp.controller().keep_alive(),
        admin::ABORT if !discovery => {
            // Commands in flight cannot be recalled from the bdev: "not aborted" (dw0 bit 0).
            req.cpl.dw0 = 1;
        }
        _ => req.set_status(Status::generic(sc::INVALID_OPCODE).dnr()),
    }
    Some(req)
}
