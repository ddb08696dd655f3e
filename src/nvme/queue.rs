//! One queue pair of one controller, owned by the reactor its transport connection runs on:
//! it dispatches the admin command set (qid 0) and hands I/O to the I/O command set
//! (`io::execute`) through this reactor's channel to each namespace.
//!
//! Each reactor keeps a table of its queues by (controller, qid), so that a controller,
//! from any thread, can reach them with a message: to complete an AER when an event comes,
//! or to end a queue (its transport's `on_disconnect`). Completions that become due while a
//! command executes (the second of two, a Disconnect's end) are deferred to this reactor's
//! loop, so a transport's callbacks never run inside its own `execute`.

use super::controller::Controller;
use super::io::{self, HostRef, NsChannel};
use super::request::NvmeRequest;
use super::subsystem::Subsystem;
use super::{admin, fabrics};
use crate::framework::{self, PollStatus, Poller};
use ferry_nvme::spec::{admin as aop, fuse, io as iop, sc, Status};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

/// How often the admin queue's reactor looks at the keep-alive timer.
const KEEP_ALIVE_CHECK: Duration = Duration::from_millis(100);

thread_local! {
    /// This reactor's queues by (controller uid, qid).
    static QUEUES: RefCell<HashMap<(u64, u16), Weak<QueuePair>>> = RefCell::new(HashMap::new());
    /// Work deferred to the reactor loop.
    static DEFERRED: RefCell<VecDeque<Box<dyn FnOnce()>>> = RefCell::new(VecDeque::new());
    static DEFER_POLLER: RefCell<Option<Poller>> = const { RefCell::new(None) };
}

/// Runs `f` from this reactor's loop, after the current command returns.
fn defer(f: impl FnOnce() + 'static) {
    DEFERRED.with(|d| d.borrow_mut().push_back(Box::new(f)));
    DEFER_POLLER.with(|p| {
        let mut p = p.borrow_mut();
        if p.is_none() {
            *p = Some(framework::poller_register("nvme_deferred", Duration::ZERO, || {
                let n = DEFERRED.with(|d| d.borrow().len());
                for _ in 0..n {
                    let Some(f) = DEFERRED.with(|d| d.borrow_mut().pop_front()) else { break };
                    f();
                }
                PollStatus::from(n > 0)
            }));
        }
    });
}

/// Finishes `req` from the reactor loop.
fn finish_later(req: Box<NvmeRequest>) {
    defer(move || req.finish());
}

fn lookup(uid: u64, qid: u16) -> Option<Rc<QueuePair>> {
    QUEUES.with(|q| q.borrow().get(&(uid, qid)).and_then(Weak::upgrade))
}

/// Hands waiting events of controller `uid` to its outstanding AERs (on its admin reactor).
pub(crate) fn deliver_events(uid: u64) {
    let Some(qp) = lookup(uid, 0) else { return };
    loop {
        if qp.aers.borrow().is_empty() {
            return;
        }
        let Some(kind) = qp.ctrlr.take_event() else { return };
        let Some(mut req) = qp.aers.borrow_mut().pop_front() else { return };
        req.cpl.dw0 = kind.dw0();
        req.set_status(Status::SUCCESS);
        req.finish();
    }
}

/// The model ends queue `qid` of controller `uid` (on the queue's reactor).
pub(crate) fn disconnect_from_model(uid: u64, qid: u16) {
    if let Some(qp) = lookup(uid, qid) {
        qp.end_by_model();
    }
}

/// One queue of one controller. See the module documentation.
pub struct QueuePair {
    qid: u16,
    sq_size: u16,
    ctrlr: Arc<Controller>,
    sqfc_disabled: bool,
    on_disconnect: Rc<dyn Fn()>,
    closed: Cell<bool>,
    host: HostRef,
    /// This reactor's channels to the namespaces used so far, valid for `ns_generation`.
    channels: RefCell<HashMap<u32, Rc<NsChannel>>>,
    ns_generation: Cell<u64>,
    /// Outstanding AERs (admin queue).
    aers: RefCell<VecDeque<Box<NvmeRequest>>>,
    /// The first command of a fused pair, waiting for its second.
    fused: RefCell<Option<Box<NvmeRequest>>>,
    keep_alive: RefCell<Option<Poller>>,
}

impl QueuePair {
    /// A connected queue on this reactor (`reactor`); an admin queue also watches the
    /// keep-alive timer.
    pub(crate) fn new(
        ctrlr: Arc<Controller>,
        qid: u16,
        sq_size: u16,
        sqfc_disabled: bool,
        reactor: usize,
        on_disconnect: Rc<dyn Fn()>,
    ) -> Rc<QueuePair> {
        debug_assert_eq!(framework::current_index(), Some(reactor));
        let host = HostRef { hostid: ctrlr.hostid(), cntlid: ctrlr.cntlid() };
        let qp = Rc::new(QueuePair {
            qid,
            sq_size,
            sqfc_disabled,
            on_disconnect,
            closed: Cell::new(false),
            host,
            channels: RefCell::new(HashMap::new()),
            ns_generation: Cell::new(ctrlr.subsystem().ns_generation()),
            aers: RefCell::new(VecDeque::new()),
            fused: RefCell::new(None),
            keep_alive: RefCell::new(None),
            ctrlr,
        });
        QUEUES.with(|q| {
            let mut q = q.borrow_mut();
            q.retain(|_, w| w.strong_count() > 0);
            q.insert((qp.ctrlr.uid(), qid), Rc::downgrade(&qp));
        });
        if qid == 0 {
            let ctrlr = qp.ctrlr.clone();
            *qp.keep_alive.borrow_mut() =
                Some(framework::poller_register("nvme_keep_alive", KEEP_ALIVE_CHECK, move || {
                    if ctrlr.keep_alive_expired() {
                        tracing::warn!(
                            nqn = ctrlr.subsystem().nqn(),
                            cntlid = ctrlr.cntlid(),
                            "nvme: keep alive timeout"
                        );
                        ctrlr.end("keep alive timeout");
                        return PollStatus::Busy;
                    }
                    PollStatus::Idle
                }));
        }
        qp
    }

    /// Queue ID (0: admin).
    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// Submission queue size (entries).
    pub fn sq_size(&self) -> u16 {
        self.sq_size
    }

    /// Its controller's ID.
    pub fn cntlid(&self) -> u16 {
        self.ctrlr.cntlid()
    }

    /// Its controller.
    pub fn controller(&self) -> &Arc<Controller> {
        &self.ctrlr
    }

    /// Its subsystem.
    pub fn subsystem(&self) -> &Arc<Subsystem> {
        self.ctrlr.subsystem()
    }

    /// SQ flow control disabled at Connect (CATTR bit 2): C2HData SUCCESS is then allowed.
    pub fn sq_flow_control_disabled(&self) -> bool {
        self.sqfc_disabled
    }

    /// Whether the queue was closed or ended.
    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Any command but Connect: admin (qid 0) or I/O (through `io::execute`). Some(req) when
    /// done at once; otherwise `req.finish()` later on this reactor. AERs stay pending until
    /// an event; `close` drops them.
    pub fn execute(self: &Rc<Self>, mut req: Box<NvmeRequest>) -> Option<Box<NvmeRequest>> {
        req.cpl.dw0 = 0;
        req.cpl.dw1 = 0;
        req.set_status(Status::SUCCESS);
        if self.closed.get() {
            req.set_status(Status::generic(sc::ABORTED_SQ_DELETION));
            return Some(req);
        }
        let out = if req.cmd.opcode() == aop::FABRICS {
            fabrics::execute(self, req)
        } else if self.qid == 0 {
            if !self.ctrlr.ready() {
                req.set_status(Status::generic(sc::COMMAND_SEQUENCE_ERROR).dnr());
                Some(req)
            } else {
                admin::execute(self, req)
            }
        } else {
            self.execute_io(req)
        };
        if let Some(r) = &out {
            if !r.cpl.status.is_success() {
                self.ctrlr.record_error(self.qid, r.cmd.cid(), r.cpl.status, r.cmd.nsid());
            }
        }
        out
    }

    fn execute_io(self: &Rc<Self>, mut req: Box<NvmeRequest>) -> Option<Box<NvmeRequest>> {
        // The path's ANA state (one atomic load; nothing when ANA reporting is off).
        if let Some(s) = self.ctrlr.ana_io_status() {
            req.set_status(s);
            return Some(req);
        }
        let held = self.fused.borrow_mut().take();
        if let Some(mut first) = held {
            let pairs =
                req.cmd.fuse() == fuse::SECOND && req.cmd.opcode() == iop::WRITE && req.cmd.nsid() == first.cmd.nsid();
            if pairs {
                let nc = match self.ns_channel(req.cmd.nsid()) {
                    Ok(nc) => nc,
                    Err(s) => {
                        first.set_status(s);
                        finish_later(first);
                        req.set_status(Status::generic(sc::ABORTED_FAILED_FUSED));
                        return Some(req);
                    }
                };
                return match io::execute_compare_and_write(&nc, &self.host, first, req) {
                    Some((cmp, write)) => {
                        finish_later(cmp);
                        Some(write)
                    }
                    None => None,
                };
            }
            // The first of a pair not followed by its second.
            first.set_status(Status::generic(sc::ABORTED_MISSING_FUSED));
            finish_later(first);
        }
        match req.cmd.fuse() {
            fuse::FIRST => {
                if req.cmd.opcode() != iop::COMPARE {
                    req.set_status(Status::generic(sc::INVALID_FIELD).dnr());
                    return Some(req);
                }
                *self.fused.borrow_mut() = Some(req);
                return None;
            }
            fuse::SECOND => {
                req.set_status(Status::generic(sc::ABORTED_MISSING_FUSED));
                return Some(req);
            }
            fuse::NONE => {}
            _ => {
                req.set_status(Status::generic(sc::INVALID_FIELD).dnr());
                return Some(req);
            }
        }
        match self.ns_channel(req.cmd.nsid()) {
            Ok(nc) => io::execute(&nc, &self.host, req),
            Err(s) => {
                req.set_status(s);
                Some(req)
            }
        }
    }

    /// This reactor's channel to namespace `nsid` (made on first use, dropped when the
    /// namespace set changed and it is not the same namespace any more).
    fn ns_channel(&self, nsid: u32) -> Result<Rc<NsChannel>, Status> {
        if nsid == 0 || nsid == 0xffff_ffff {
            return Err(Status::generic(sc::INVALID_NS).dnr());
        }
        let sub = self.ctrlr.subsystem();
        let generation = sub.ns_generation();
        if generation != self.ns_generation.get() {
            self.channels.borrow_mut().retain(|id, nc| sub.namespace(*id).is_some_and(|ns| Arc::ptr_eq(&ns, &nc.ns)));
            self.ns_generation.set(generation);
        }
        if let Some(nc) = self.channels.borrow().get(&nsid) {
            return Ok(nc.clone());
        }
        let ns = sub.namespace(nsid).ok_or(Status::generic(sc::INVALID_NS).dnr())?;
        let ch = ns.channel().map_err(|_| Status::generic(sc::NS_NOT_READY))?;
        let nc = Rc::new(NsChannel { ns, ch });
        self.channels.borrow_mut().insert(nsid, nc.clone());
        Ok(nc)
    }

    /// Outstanding AERs.
    pub(crate) fn outstanding_aers(&self) -> usize {
        self.aers.borrow().len()
    }

    /// Keeps an AER until an event comes.
    pub(crate) fn hold_aer(&self, req: Box<NvmeRequest>) {
        self.aers.borrow_mut().push_back(req);
    }

    /// A controller reset: outstanding AERs complete as aborted (SQ deletion).
    pub(crate) fn abort_aers(&self) {
        let aers: Vec<Box<NvmeRequest>> = self.aers.borrow_mut().drain(..).collect();
        for mut r in aers {
            r.set_status(Status::generic(sc::ABORTED_SQ_DELETION));
            finish_later(r);
        }
    }

    /// Ends this (I/O) queue after the current command's completion went out (Disconnect).
    pub(crate) fn disconnect_later(self: &Rc<Self>) {
        let me = self.clone();
        defer(move || me.end_by_model());
    }

    /// Drops what the queue holds and forgets it; true the first time.
    fn teardown(&self) -> bool {
        if self.closed.replace(true) {
            return false;
        }
        self.aers.borrow_mut().clear();
        self.fused.borrow_mut().take();
        self.keep_alive.borrow_mut().take();
        self.channels.borrow_mut().clear();
        let key = (self.ctrlr.uid(), self.qid);
        // try_with: a queue dropped while the reactor thread exits outlives the table.
        let _ = QUEUES.try_with(|q| {
            let mut q = q.borrow_mut();
            if q.get(&key).is_some_and(|w| std::ptr::eq(w.as_ptr(), self)) {
                q.remove(&key);
            }
        });
        true
    }

    /// The model ends the queue: the transport is told through `on_disconnect`.
    fn end_by_model(&self) {
        if !self.teardown() {
            return;
        }
        self.ctrlr.unregister_queue(self.qid);
        if self.qid == 0 {
            // An admin queue ended by the model (keep-alive, a reset of the association)
            // takes its controller with it.
            self.ctrlr.end("admin queue ended");
        }
        (self.on_disconnect)();
    }

    /// The transport connection is gone: pending AERs are dropped; an admin queue ends its
    /// controller (its I/O queues are told through their `on_disconnect`).
    pub fn close(&self) {
        if !self.teardown() {
            return;
        }
        if self.qid == 0 {
            self.ctrlr.end("admin queue closed");
        } else {
            self.ctrlr.unregister_queue(self.qid);
        }
    }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        self.close();
    }
}
