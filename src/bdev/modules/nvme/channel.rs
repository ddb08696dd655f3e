//! One controller's I/O queue pair on one reactor, shared by its namespaces' bdev channels.
//!
//! The queue pair is connected when the controller is enabled (lazily: the first bdev channel
//! on the reactor makes this channel), with a queue id of the controller's current
//! generation. A bdev I/O becomes one or more NVMe commands (split at MDTS and at the
//! commands' block-count limits), issued as queue slots free up. When the queue fails, or the
//! controller reconnects (a new generation), every unfinished I/O is started again on the new
//! queue: NVMe reads, writes, write zeroes and deallocates may be repeated. While the
//! controller is away I/O waits; it fails once the controller says so (fast_io_fail_timeout_sec
//! passed, or the controller was deleted).

use super::ctrlr::NvmeCtrlr;
use super::options;
use crate::bdev::{BackendChannel, BdevIo, IoStatus, IoType};
use crate::framework::{self, ticks, InterruptSource, IoDeviceId, PollStatus, Poller};
use ferry_nvme::host::ctrlr::{CtrlrState, IoView};
use ferry_nvme::host::{cmd, BoxQpair, Dir, QpCompletion, Seg};
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// Most blocks one Read, Write or Write Zeroes command carries (NLB is 16 bits, 0's based).
const MAX_NLB: u64 = 1 << 16;

/// A namespace's bdev channel on one reactor: the controller's channel and the namespace.
pub struct NsChannel {
    pub ch: Rc<CtrlrChannel>,
    pub nsid: u32,
}

impl BackendChannel for NsChannel {
    fn submit(&self, io: Box<BdevIo>) {
        self.ch.submit(self.nsid, io);
    }
}

/// The controller's channel on this reactor.
pub struct CtrlrChannel {
    state: Rc<RefCell<ChanState>>,
    _poller: Poller,
}

impl CtrlrChannel {
    pub fn new(ctrlr: Arc<NvmeCtrlr>) -> CtrlrChannel {
        let state = Rc::new(RefCell::new(ChanState {
            ctrlr,
            queue: None,
            reqs: Vec::new(),
            free_reqs: Vec::new(),
            active: VecDeque::new(),
            resets: Vec::new(),
            cpls: Vec::new(),
            no_qid_warned: false,
            last_timeout_scan: 0,
        }));
        let s = state.clone();
        let poller = framework::poller_register("nvme_io_qpair", Duration::ZERO, move || s.borrow_mut().poll());
        CtrlrChannel { state, _poller: poller }
    }

    fn submit(&self, nsid: u32, io: Box<BdevIo>) {
        self.state.borrow_mut().submit(nsid, io);
    }
}

struct Req {
    io: Box<BdevIo>,
    nsid: u32,
    /// The next block (from the I/O's first) to issue a command for.
    next: u64,
    issued_all: bool,
    inflight: u32,
    errno: i32,
    /// When its first command went out (ticks; 0: none out, or timeouts off).
    issued_at: u64,
}

struct Queue {
    qp: BoxQpair,
    generation: u64,
    qid: u16,
    ctrlr: Arc<NvmeCtrlr>,
    _irq: Option<InterruptSource>,
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.ctrlr.shared.put_qid(self.generation, self.qid);
    }
}

thread_local! {
    /// Each controller's I/O queue pair on this reactor while no channel uses it: bdev
    /// channels come and go (examine, a vhost queue restarting), the queue stays connected,
    /// so its id is never connected twice while the target still tears the old one down.
    static IDLE: RefCell<HashMap<IoDeviceId, Queue>> = RefCell::new(HashMap::new());
}

/// Drops this reactor's idle queue pair of a detached controller.
pub fn forget_idle(device: IoDeviceId) {
    IDLE.with(|i| i.borrow_mut().remove(&device));
}

impl Drop for ChanState {
    fn drop(&mut self) {
        // The bdev layer keeps a channel while any of its I/O lives: nothing is in flight.
        // A detached controller's queue is not kept: detach already emptied this reactor's
        // idle slot, and a queue parked now would hold the device (a VFIO group, a vfio-user
        // connection) for the life of the process.
        if let Some(q) = self.queue.take() {
            let v = q.ctrlr.shared.io_view();
            if q.qp.is_ready() && v.state != CtrlrState::Deleted && v.generation == q.generation {
                IDLE.with(|i| i.borrow_mut().insert(self.ctrlr.io_device, q));
            }
        }
    }
}

struct ChanState {
    ctrlr: Arc<NvmeCtrlr>,
    queue: Option<Queue>,
    reqs: Vec<Option<Req>>,
    free_reqs: Vec<usize>,
    /// Requests with commands left to issue, oldest first.
    active: VecDeque<usize>,
    /// Reset I/Os with the generation they reset.
    resets: Vec<(Box<BdevIo>, u64)>,
    cpls: Vec<QpCompletion>,
    no_qid_warned: bool,
    last_timeout_scan: u64,
}

impl ChanState {
    fn submit(&mut self, nsid: u32, io: Box<BdevIo>) {
        if io.io_type == IoType::Reset {
            let v = self.ctrlr.shared.io_view();
            self.ctrlr.shared.request_reset(v.generation);
            self.resets.push((io, v.generation));
            return;
        }
        if io.num_blocks == 0 && io.io_type != IoType::Flush {
            io.complete(IoStatus::Success);
            return;
        }
        let req = Req { io, nsid, next: 0, issued_all: false, inflight: 0, errno: 0, issued_at: 0 };
        let id = match self.free_reqs.pop() {
            Some(i) => {
                self.reqs[i] = Some(req);
                i
            }
            None => {
                self.reqs.push(Some(req));
                self.reqs.len() - 1
            }
        };
        self.active.push_back(id);
        self.pump();
    }

    /// Issues commands of the active requests, in order, while the queue has room.
    fn pump(&mut self) -> bool {
        let Some(q) = self.queue.as_mut() else { return false };
        if !q.qp.is_ready() {
            return false;
        }
        let v = self.ctrlr.shared.io_view();
        if q.generation != v.generation {
            // The controller is being reset: this queue is dead on the device, and a command
            // written into it now (its SQ memory, its shadow doorbell) would be found there by
            // the queue that replaces it. The next poll requeues everything onto that one.
            return false;
        }
        let limits = v.limits;
        // The clock is read only when a command timeout is set.
        let stamp = if options::io_timeout_ticks() != 0 { ticks::now() } else { 0 };
        let mut issued = false;
        let mut finished = Vec::new();
        while let Some(&id) = self.active.front() {
            let Some(req) = self.reqs[id].as_mut() else {
                self.active.pop_front();
                continue;
            };
            while !req.issued_all && req.errno == 0 && q.qp.free_slots() > 0 {
                if req.issued_at == 0 {
                    req.issued_at = stamp;
                }
                if let Err(e) = issue(&mut q.qp, req, id as u64, limits.max_transfer) {
                    tracing::warn!("NVMe command not submitted: {e}");
                    req.errno = libc::EIO;
                }
                issued = true;
            }
            if req.issued_all || req.errno != 0 {
                self.active.pop_front();
                if req.inflight == 0 {
                    finished.push(id);
                }
            } else {
                break;
            }
        }
        for id in finished {
            self.finish(id);
        }
        issued
    }

    fn finish(&mut self, id: usize) {
        let Some(req) = self.reqs[id].take() else { return };
        self.free_reqs.push(id);
        if req.errno != 0 {
            req.io.fail(req.errno);
        } else {
            req.io.complete(IoStatus::Success);
        }
    }

    fn on_completion(&mut self, c: QpCompletion) {
        let id = c.tag as usize;
        let Some(Some(req)) = self.reqs.get_mut(id) else { return };
        req.inflight = req.inflight.saturating_sub(1);
        if !c.cpl.status.is_success() {
            tracing::debug!(status = ?c.cpl.status, "NVMe I/O command failed");
            req.errno = libc::EIO;
        }
        if req.inflight == 0 && (req.issued_all || req.errno != 0) {
            // Not in `active` any more unless it failed with commands left: drop it from there.
            self.active.retain(|&a| a != id);
            self.finish(id);
        }
    }

    /// The queue is gone: every unfinished request starts again from its first block.
    fn requeue_all(&mut self) {
        if let Some(mut q) = self.queue.take() {
            q.qp.take_unfinished();
        }
        self.active.clear();
        for (id, r) in self.reqs.iter_mut().enumerate() {
            if let Some(r) = r {
                r.next = 0;
                r.issued_all = false;
                r.inflight = 0;
                r.errno = 0;
                r.issued_at = 0;
                self.active.push_back(id);
            }
        }
    }

    fn fail_all(&mut self, errno: i32) {
        self.active.clear();
        for id in 0..self.reqs.len() {
            if let Some(r) = self.reqs[id].as_mut() {
                r.errno = errno;
                self.finish(id);
            }
        }
        for (io, _) in self.resets.drain(..) {
            io.fail(errno);
        }
    }

    fn connect(&mut self, v: &IoView) {
        if let Some(q) = IDLE.with(|i| i.borrow_mut().remove(&self.ctrlr.io_device)) {
            if q.generation == v.generation {
                self.queue = Some(q);
                return;
            }
        }
        let shared = &self.ctrlr.shared;
        let Some(qid) = shared.take_qid(v.generation) else {
            if !self.no_qid_warned {
                tracing::warn!(ctrlr = %self.ctrlr.name, "no I/O queue left for this reactor");
                self.no_qid_warned = true;
            }
            return;
        };
        match self.ctrlr.transport.connect_io_boxed(qid, v.io_queue_size, v.cntlid, &v.limits) {
            Ok(qp) => {
                let irq = if framework::current_index().is_some() {
                    qp.raw_fd().and_then(|fd| framework::register_interrupt(fd).ok())
                } else {
                    None
                };
                self.queue = Some(Queue { qp, generation: v.generation, qid, ctrlr: self.ctrlr.clone(), _irq: irq });
            }
            Err(e) => {
                tracing::warn!(ctrlr = %self.ctrlr.name, qid, "connecting an I/O queue: {e}");
                shared.put_qid(v.generation, qid);
                shared.request_reset(v.generation);
            }
        }
    }

    fn poll(&mut self) -> PollStatus {
        let v = self.ctrlr.shared.io_view();
        let mut progress = false;
        if self.queue.as_ref().is_some_and(|q| q.generation != v.generation) {
            self.requeue_all();
            progress = true;
        }
        if let Some(q) = self.queue.as_mut() {
            let mut cpls = std::mem::take(&mut self.cpls);
            let polled = q.qp.poll(&mut cpls);
            for c in cpls.drain(..) {
                self.on_completion(c);
                progress = true;
            }
            self.cpls = cpls;
            match polled {
                Ok(p) => progress |= p,
                Err(_) => {
                    // The queue pair logged why. The controller resets; the I/O waits for it.
                    let g = self.queue.as_ref().map(|q| q.generation).unwrap_or(v.generation);
                    self.ctrlr.shared.request_reset(g);
                    self.requeue_all();
                    progress = true;
                }
            }
        }
        if self.timed_out() {
            let g = self.queue.as_ref().map(|q| q.generation).unwrap_or(v.generation);
            tracing::warn!(ctrlr = %self.ctrlr.name, "an NVMe command timed out (bdev_nvme_set_options timeout_us): resetting the controller");
            self.ctrlr.shared.request_reset(g);
            self.requeue_all();
            progress = true;
        }
        if self.queue.is_none() && v.state == CtrlrState::Enabled {
            self.connect(&v);
        }
        if self.queue.is_none() && v.fail_io && (!self.active.is_empty() || !self.resets.is_empty()) {
            let errno = if v.state == CtrlrState::Deleted { libc::ENXIO } else { libc::EIO };
            self.fail_all(errno);
            progress = true;
        }
        if self.queue.is_none() && v.state == CtrlrState::Enabled && self.no_qid_warned && !self.active.is_empty() {
            self.fail_all(libc::EBUSY);
        }
        progress |= self.pump();
        if !self.resets.is_empty() && v.state == CtrlrState::Enabled {
            let (done, wait): (Vec<_>, Vec<_>) = self.resets.drain(..).partition(|(_, g)| *g < v.generation);
            self.resets = wait;
            for (io, _) in done {
                io.complete(IoStatus::Success);
                progress = true;
            }
        }
        let waiting = !self.active.is_empty()
            || !self.resets.is_empty()
            || self.reqs.iter().any(Option::is_some)
            || self.queue.as_ref().is_some_and(|q| !q.qp.is_ready());
        PollStatus::from(progress || waiting)
    }
}

impl ChanState {
    /// Whether a command of this channel has waited longer than the command timeout
    /// (`bdev_nvme_set_options`; looked at an eighth of the timeout apart).
    fn timed_out(&mut self) -> bool {
        let limit = options::io_timeout_ticks();
        if limit == 0 || self.queue.is_none() {
            return false;
        }
        let now = ticks::now();
        if now.wrapping_sub(self.last_timeout_scan) < limit / 8 {
            return false;
        }
        self.last_timeout_scan = now;
        self.reqs.iter().flatten().any(|r| r.inflight > 0 && r.issued_at != 0 && now.wrapping_sub(r.issued_at) > limit)
    }
}

/// Issues the next command of `req` on `qp`.
fn issue(qp: &mut BoxQpair, req: &mut Req, tag: u64, max_transfer: u32) -> Result<(), ferry_nvme::host::HostError> {
    let io = &req.io;
    let bs = io.block_size() as u64;
    let total = io.num_blocks;
    let lba = io.offset_blocks + req.next;
    let left = total - req.next;
    let n = match io.io_type {
        IoType::Read | IoType::Write => {
            let n = left.min((max_transfer as u64 / bs).clamp(1, MAX_NLB));
            let write = io.io_type == IoType::Write;
            let segs = slice_iovs(io.iovs(), req.next * bs, n * bs);
            let dir = if write { Dir::ToCtrlr } else { Dir::FromCtrlr };
            // SAFETY: the bdev layer's push_iov contract keeps the I/O's iovecs valid and
            // ours until it completes; the request (and its I/O) lives until every command
            // issued for it completed or the queue pair was drained (`requeue_all`).
            unsafe { qp.submit_segs(cmd::rw(write, req.nsid, lba, n as u32), dir, &segs, tag)? };
            n
        }
        IoType::WriteZeroes => {
            let n = left.min(MAX_NLB);
            qp.submit_owned(cmd::write_zeroes(req.nsid, lba, n as u32), Dir::None, Vec::new(), tag)?;
            n
        }
        IoType::Unmap => {
            let n = left.min(u32::MAX as u64);
            let (c, ranges) = cmd::deallocate(req.nsid, &[(lba, n as u32)]);
            qp.submit_owned(c, Dir::ToCtrlr, ranges, tag)?;
            n
        }
        IoType::Flush => {
            qp.submit_owned(cmd::flush(req.nsid), Dir::None, Vec::new(), tag)?;
            left
        }
        IoType::Reset => unreachable!("resets never become requests"),
    };
    req.next += n;
    req.inflight += 1;
    req.issued_all = req.next >= total;
    Ok(())
}

/// The segments of `iovs` covering bytes `off..off + len`.
fn slice_iovs(iovs: &[libc::iovec], mut off: u64, mut len: u64) -> Vec<Seg> {
    let mut out = Vec::with_capacity(iovs.len().min(4));
    for v in iovs {
        if len == 0 {
            break;
        }
        let l = v.iov_len as u64;
        if off >= l {
            off -= l;
            continue;
        }
        let n = (l - off).min(len);
        // The pointer arithmetic stays within the iovec (off < iov_len).
        out.push(Seg { ptr: v.iov_base.cast::<u8>().wrapping_add(off as usize), len: n as usize });
        off = 0;
        len -= n;
    }
    out
}
