//! PLACEHOLDER written by the tcp part so the NVMe/TCP target compiles and its tests run:
//! replaced at merge by the model's `src/nvme/queue.rs`. Admin: Property Get (CSTS.RDY set)
//! and Set, Keep Alive and Disconnect succeed, everything else is Invalid Opcode. I/O: Read
//! and Write of 512-byte blocks on a namespace the placeholder subsystem holds, kept in
//! memory (unwritten blocks read as a pattern of their LBA), completed later on the reactor
//! (as a bdev would) so the transport's deferred path runs.

use super::request::NvmeRequest;
use super::subsystem::Subsystem;
use crate::framework::{self, PollStatus, Poller};
use ferry_nvme::spec::{admin, fabrics, io, prop, sc, Status};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// One queue of one controller (placeholder).
pub struct QueuePair {
    qid: u16,
    sq_size: u16,
    cntlid: u16,
    subsystem: Arc<Subsystem>,
    sqfc_disabled: bool,
    _on_disconnect: Rc<dyn Fn()>,
}

thread_local! {
    static LATER: RefCell<(VecDeque<Box<NvmeRequest>>, Option<Poller>)> = const { RefCell::new((VecDeque::new(), None)) };
}

fn later(req: Box<NvmeRequest>) {
    LATER.with(|l| {
        let mut l = l.borrow_mut();
        l.0.push_back(req);
        if l.1.is_none() {
            l.1 = Some(framework::poller_register("nvme_placeholder", Duration::ZERO, || {
                let reqs: Vec<_> = LATER.with(|l| l.borrow_mut().0.drain(..).collect());
                let busy = !reqs.is_empty();
                for r in reqs {
                    r.finish();
                }
                if busy {
                    PollStatus::Busy
                } else {
                    PollStatus::Idle
                }
            }));
        }
    });
}

impl QueuePair {
    pub(crate) fn placeholder(
        qid: u16,
        sq_size: u16,
        cntlid: u16,
        subsystem: Arc<Subsystem>,
        sqfc_disabled: bool,
        on_disconnect: Rc<dyn Fn()>,
    ) -> QueuePair {
        QueuePair { qid, sq_size, cntlid, subsystem, sqfc_disabled, _on_disconnect: on_disconnect }
    }

    /// Queue id.
    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// Entries of the submission queue (SQSIZE + 1).
    pub fn sq_size(&self) -> u16 {
        self.sq_size
    }

    /// Controller id.
    pub fn cntlid(&self) -> u16 {
        self.cntlid
    }

    /// Its subsystem.
    pub fn subsystem(&self) -> &Arc<Subsystem> {
        &self.subsystem
    }

    /// SQ flow control disabled at Connect.
    pub fn sq_flow_control_disabled(&self) -> bool {
        self.sqfc_disabled
    }

    /// Executes a command (placeholder).
    pub fn execute(self: &Rc<Self>, mut req: Box<NvmeRequest>) -> Option<Box<NvmeRequest>> {
        let cmd = req.cmd;
        if self.qid == 0 {
            let status = match (cmd.opcode(), cmd.fctype()) {
                (admin::FABRICS, fabrics::PROPERTY_GET) => {
                    if cmd.cdw11() == prop::CSTS {
                        req.cpl.dw0 = 1;
                    }
                    sc::SUCCESS
                }
                (admin::FABRICS, fabrics::PROPERTY_SET | fabrics::DISCONNECT) | (admin::KEEP_ALIVE, _) => sc::SUCCESS,
                _ => sc::INVALID_OPCODE,
            };
            req.set_status(Status::generic(status));
            return Some(req);
        }
        if !self.subsystem.nsids.lock().unwrap().contains(&cmd.nsid()) {
            req.set_status(Status::generic(sc::INVALID_NS).dnr());
            return Some(req);
        }
        let len = cmd.nlb() as u64 * 512;
        match cmd.opcode() {
            io::READ | io::WRITE if req.data_len() != len => {
                req.set_status(Status::generic(sc::DATA_SGL_LENGTH_INVALID).dnr());
                return Some(req);
            }
            io::READ => {
                let mut data = vec![0u8; len as usize];
                let blocks = self.subsystem.blocks.lock().unwrap();
                for (i, chunk) in data.chunks_mut(512).enumerate() {
                    let lba = cmd.slba() + i as u64;
                    match blocks.get(&(cmd.nsid(), lba)) {
                        Some(b) => chunk.copy_from_slice(b),
                        None => chunk.iter_mut().enumerate().for_each(|(j, x)| *x = (lba as u8) ^ (j as u8)),
                    }
                }
                drop(blocks);
                req.copy_to_host(&data);
            }
            io::WRITE => {
                let mut data = vec![0u8; len as usize];
                req.copy_from_host(&mut data);
                let mut blocks = self.subsystem.blocks.lock().unwrap();
                for (i, chunk) in data.chunks(512).enumerate() {
                    blocks.insert((cmd.nsid(), cmd.slba() + i as u64), chunk.to_vec());
                }
            }
            io::FLUSH => {}
            _ => {
                req.set_status(Status::generic(sc::INVALID_OPCODE).dnr());
                return Some(req);
            }
        }
        req.set_status(Status::SUCCESS);
        later(req);
        None
    }

    /// The transport connection is gone.
    pub fn close(&self) {}
}
