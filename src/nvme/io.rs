//! PLACEHOLDER, replaced at merge by the nvmeio part's I/O command set: only Read and Write
//! through the bdev channel, so that the controller model compiles and its tests move data.
//! The signatures are the interface's (`/work/nvme-interfaces.md`, "The I/O command set").

use super::namespace::Namespace;
use super::request::NvmeRequest;
use crate::bdev::{BdevChannel, BdevIo, IoCallback, IoStatus, IoType};
use ferry_nvme::spec::{io as op, sc, Status};
use std::rc::Rc;
use std::sync::Arc;

/// One namespace as one queue pair sees it: the namespace and this reactor's bdev channel.
pub struct NsChannel {
    /// The namespace.
    pub ns: Arc<Namespace>,
    /// This reactor's channel to its bdev.
    pub ch: BdevChannel,
}

/// Who sends the command (reservations are per host identifier).
pub struct HostRef {
    /// The host identifier from Connect.
    pub hostid: [u8; 16],
    /// The controller.
    pub cntlid: u16,
}

thread_local! {
    static IO_DONE: IoCallback = Rc::new(|io: Box<BdevIo>| io_done(&io));
}

fn io_done(io: &BdevIo) {
    // SAFETY: ctx came from Box::into_raw in `execute`, and each I/O completes exactly once.
    let mut req = unsafe { Box::from_raw(io.ctx as *mut NvmeRequest) };
    match io.status() {
        IoStatus::Success => {
            if io.io_type == IoType::Read {
                req.set_transferred(io.len_bytes());
            }
        }
        _ => req.set_status(Status::generic(sc::INTERNAL)),
    }
    req.finish();
}

/// Read and Write on one namespace; everything else is Invalid Opcode (placeholder).
pub fn execute(nc: &Rc<NsChannel>, _host: &HostRef, mut req: Box<NvmeRequest>) -> Option<Box<NvmeRequest>> {
    let io_type = match req.cmd.opcode() {
        op::READ => IoType::Read,
        op::WRITE => IoType::Write,
        _ => {
            req.set_status(Status::generic(sc::INVALID_OPCODE).dnr());
            return Some(req);
        }
    };
    let (slba, nlb) = (req.cmd.slba(), req.cmd.nlb() as u64);
    if slba.checked_add(nlb).is_none_or(|end| end > nc.ns.num_blocks()) {
        req.set_status(Status::generic(sc::LBA_OUT_OF_RANGE).dnr());
        return Some(req);
    }
    if req.data_len() != nlb * nc.ns.block_size() as u64 {
        req.set_status(Status::generic(sc::DATA_SGL_LENGTH_INVALID).dnr());
        return Some(req);
    }
    if io_type == IoType::Write && nc.ns.read_only() {
        req.set_status(Status::generic(sc::NS_WRITE_PROTECTED).dnr());
        return Some(req);
    }
    let mut io = BdevIo::new(IO_DONE.with(Rc::clone));
    io.prepare(io_type, slba, nlb);
    for v in req.iovs() {
        // SAFETY: the transport promised (NvmeRequest::push_iov) that the request's buffers
        // stay valid and untouched until it completes, which is after this I/O.
        unsafe { io.push_iov(v.iov_base.cast::<u8>(), v.iov_len) };
    }
    io.ctx = Box::into_raw(req) as u64;
    nc.ch.submit(io);
    None
}

/// A fused Compare and Write pair: not in the placeholder (both Invalid Opcode).
pub fn execute_compare_and_write(
    _nc: &Rc<NsChannel>,
    _host: &HostRef,
    mut cmp: Box<NvmeRequest>,
    mut write: Box<NvmeRequest>,
) -> Option<(Box<NvmeRequest>, Box<NvmeRequest>)> {
    cmp.set_status(Status::generic(sc::INVALID_OPCODE).dnr());
    write.set_status(Status::generic(sc::ABORTED_FAILED_FUSED));
    Some((cmp, write))
}

/// ONCS: none of the optional commands in the placeholder.
pub fn oncs() -> u16 {
    0
}

/// FUSES: no fused operations in the placeholder.
pub fn fuses() -> u16 {
    0
}
