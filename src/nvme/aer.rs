//! Asynchronous Event Request (NVMe Base 2.0 §5.2): up to AERL+1 outstanding per controller,
//! each completed by the next event the host enabled (namespace attribute change, ANA change,
//! discovery log change). An event type, once reported, stays masked until the host reads
//! its log page without Retain Asynchronous Event, so a storm of changes is one completion.

use super::controller::AERL;
use super::queue::QueuePair;
use super::request::NvmeRequest;
use ferry_nvme::spec::{csc, Status};

/// Asynchronous Event Request: completed at once if an event waits, else held on the admin
/// queue (None).
pub fn execute(qp: &QueuePair, mut req: Box<NvmeRequest>) -> Option<Box<NvmeRequest>> {
    if qp.outstanding_aers() > AERL as usize {
        req.set_status(Status::command(csc::ASYNC_EVENT_LIMIT_EXCEEDED).dnr());
        return Some(req);
    }
    if let Some(kind) = qp.controller().take_event() {
        req.cpl.dw0 = kind.dw0();
        return Some(req);
    }
    qp.hold_aer(req);
    None
}
