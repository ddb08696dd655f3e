//! One endpoint's queues on one reactor (a "group"): the submission and completion queues
//! in guest memory that run here, one poller for all of them, and the reactor's wake-up
//! eventfd for the endpoint as an interrupt source.
//!
//! A poll takes each submission queue's new entries (the tail from the trapped doorbell, or
//! from the shadow doorbell once the host gave a Doorbell Buffer Config), builds an
//! `NvmeRequest` whose data iovecs point into guest memory (PRPs walked and checked, zero
//! copy), runs it on the queue's model `QueuePair`, and posts completions (phase bit last)
//! with one MSI-X interrupt per completion queue per poll. The PCIe-only admin commands
//! (queue creation and deletion, Doorbell Buffer Config) are handled here before the model.
//!
//! Guest memory is reached only through the group's DMA table: a queue's ring pointers are
//! resolved from the table the group holds, and every request in flight holds the table its
//! data iovecs came from, so a region the client unmaps stays mapped until those requests
//! are done. Anything a guest gets wrong (a doorbell past the queue size, a queue on memory
//! it did not map, PRPs outside it) is an NVMe error status or the controller's fatal
//! status, never an access outside the mapped memory.

use super::prp::{map_prps, PAGE};
use super::shared::{csts, CqEntry, Shared, SqEntry, Teardown};
use crate::framework::notifier::Notifier;
use crate::framework::{self, ticks, InterruptSource, PollStatus, Poller};
use crate::nvme::queue::QueuePair;
use crate::nvme::{fabrics, features};
use crate::nvme::{DataDir, NvmeRequest, RequestDone};
use crate::vfio_user::DmaTable;
use crate::vhost::memory::{read_shared, write_shared};
use ferry_nvme::spec::{admin, csc, fabrics as fab, io, put16, sc, Command, Completion, Status};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::os::fd::AsRawFd;
use std::rc::{Rc, Weak};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The table a group translates with; requests hold a clone while in flight.
type TableRef = Rc<Arc<DmaTable>>;

/// Entries taken from one submission queue per poll (fairness between queues).
const BUDGET: usize = 64;
/// After this long without work a group arms its shadow doorbells' event indexes, so the
/// host rings the (trapped) doorbell and wakes the reactor once it sleeps. As late as can be
/// before the reactor goes to sleep (`IDLE_BEFORE_SLEEP`, 500 µs without work on any of its
/// pollers, so never before this group's 300 µs): the reactor polls until then anyway, and
/// every submission after the arm traps.
const ARM_AFTER: Duration = Duration::from_micros(300);
/// An event index beyond every queue index. Crossed only by a doorbell wrapping from the
/// queue's last entry to 0 (the 16-bit comparison of Linux's driver and the specification's
/// example reads a wrap as a move past every index): used where nothing better is known yet.
const EVENTIDX_NEVER: u32 = u32::MAX;

/// While Ferry polls, a submission queue's event index sits just behind its head: the host's
/// tail can approach it but never move past it (that would fill the queue beyond its last
/// free entry), so neither a step nor a wrap ever traps. Refreshed as the head moves.
fn behind(sq: &Sq) -> u32 {
    (if sq.head == 0 { sq.size - 1 } else { sq.head - 1 }) as u32
}
/// Requests kept for reuse per queue.
const SPARE_MAX: usize = 64;
/// A request's ctx when it holds no slot (no data, or an AER).
const NO_SLOT: u64 = 0xffff;

thread_local! {
    static GROUPS: RefCell<HashMap<u64, Rc<Group>>> = RefCell::new(HashMap::new());
}

/// Something to post on a completion queue.
pub(super) enum Done {
    /// A request the model finished (ctx: qid << 16 | slot).
    Req(Box<NvmeRequest>),
    /// A transport-made admin completion (queue creation/deletion finished on its reactor).
    Admin { cid: u16, status: Status },
}

/// Where a queue's doorbell value comes from.
#[derive(Clone, Copy)]
enum Db {
    /// The trapped BAR0 doorbell (`Shared::doorbells[idx]`).
    Trapped(usize),
    /// The shadow doorbell and its event index in guest memory (Doorbell Buffer Config).
    Shadow { idx: usize, shadow: *mut u32, eventidx: *mut u32 },
}

struct Cq {
    qid: u16,
    gpa: u64,
    size: u16,
    base: *mut u8,
    tail: u16,
    phase: bool,
    head: u16,
    ien: bool,
    iv: u16,
    db: Db,
    /// Completions waiting for room (the host has not consumed the queue).
    pending: VecDeque<Completion>,
    irq_due: bool,
    /// Entries posted since the last interrupt (Interrupt Coalescing's threshold counts them).
    unsignalled: u32,
    /// When the oldest of them was first held back (0: none held back).
    held_since: u64,
    interrupts: u64,
}

struct Sq {
    qid: u16,
    gpa: u64,
    size: u16,
    base: *mut u8,
    head: u16,
    cqid: u16,
    db: Db,
    qp: Rc<QueuePair>,
    /// The table each in-flight request's data came from (None: free).
    slots: Vec<Option<TableRef>>,
    free: Vec<u16>,
    /// Requests handed to the model and not back (AERs excepted: the model keeps those).
    inflight: u32,
    /// What the model calls with a finished request of this queue. Every request handed to
    /// the model holds a clone, so the count of clones tells what is still out, whether the
    /// model finishes a request or drops it (AERs and an unpaired fused command when the
    /// queue closes).
    done_cb: RequestDone,
    #[allow(clippy::vec_box)]
    spare: Vec<Box<NvmeRequest>>,
    /// A Delete I/O SQ waits for the in-flight requests (its cid).
    deleting: Option<u16>,
    fetched: u64,
    completed: u64,
}

struct State {
    table: TableRef,
    sqs: Vec<Sq>,
    cqs: Vec<Cq>,
    notifiers: Vec<Option<Notifier>>,
    notifiers_gen: u64,
    teardown: Option<Arc<Teardown>>,
    last_work: u64,
    armed: bool,
    arm_after: u64,
    /// Block sizes of namespaces by NSID, valid for `ns_gen`.
    ns_cache: Vec<(u32, u32)>,
    ns_gen: u64,
    iovs: Vec<libc::iovec>,
}

/// One endpoint's queues on this reactor. See the module documentation.
pub(super) struct Group {
    shared: Arc<Shared>,
    reactor: usize,
    st: RefCell<State>,
    done: Rc<RefCell<Vec<Done>>>,
    poller: RefCell<Option<Poller>>,
    _wake: InterruptSource,
    finished: Cell<bool>,
}

/// The group of `shared`'s endpoint on this reactor, made on first use.
fn group(shared: &Arc<Shared>) -> Result<Rc<Group>, String> {
    if let Some(g) = existing(shared.uid) {
        return Ok(g);
    }
    let reactor = framework::current_index().ok_or("not on a reactor")?;
    let wake = framework::register_interrupt(shared.kicks[reactor].as_raw_fd()).map_err(|e| e.to_string())?;
    let done: Rc<RefCell<Vec<Done>>> = Rc::new(RefCell::new(Vec::new()));
    let st = State {
        table: Rc::new(shared.table()),
        sqs: Vec::new(),
        cqs: Vec::new(),
        notifiers: Vec::new(),
        notifiers_gen: u64::MAX,
        teardown: None,
        last_work: ticks::now(),
        armed: false,
        arm_after: ticks::from_duration(ARM_AFTER),
        ns_cache: Vec::new(),
        ns_gen: u64::MAX,
        iovs: Vec::new(),
    };
    let g = Rc::new(Group {
        shared: shared.clone(),
        reactor,
        st: RefCell::new(st),
        done,
        poller: RefCell::new(None),
        _wake: wake,
        finished: Cell::new(false),
    });
    let weak: Weak<Group> = Rc::downgrade(&g);
    *g.poller.borrow_mut() = Some(framework::poller_register("nvmf_vfio_user", Duration::ZERO, move || {
        weak.upgrade().map_or(PollStatus::Idle, |g| g.poll())
    }));
    GROUPS.with(|m| m.borrow_mut().insert(shared.uid, g.clone()));
    Ok(g)
}

fn existing(uid: u64) -> Option<Rc<Group>> {
    GROUPS.with(|m| m.borrow().get(&uid).cloned())
}

fn generic(code: u8) -> Status {
    Status::generic(code).dnr()
}

fn specific(code: u8) -> Status {
    Status::command(code).dnr()
}

/// The CDW10/11 fields of Create I/O SQ/CQ.
struct CreateQ {
    qid: u16,
    size: u16,
    pc: bool,
    gpa: u64,
    cdw11: u32,
}

impl CreateQ {
    fn of(cmd: &Command) -> CreateQ {
        let cdw10 = cmd.cdw10();
        CreateQ {
            qid: cdw10 as u16,
            size: ((cdw10 >> 16) as u16).wrapping_add(1),
            pc: cmd.cdw11() & 1 != 0,
            gpa: cmd.prp1(),
            cdw11: cmd.cdw11(),
        }
    }
}

/// A fabrics Connect command and its data, as the model takes a new queue (the PCIe
/// function makes its controller and queues through the model's one entry point, as SPDK's
/// vfio-user transport does).
fn connect_command(shared: &Shared, qid: u16, size: u16, cntlid: u16) -> (Command, Vec<u8>) {
    let mut cmd = Command::new(admin::FABRICS, 0);
    cmd.0[4] = fab::CONNECT; // fctype
    put16(&mut cmd.0, fab::CONNECT_QID, qid);
    put16(&mut cmd.0, fab::CONNECT_SQSIZE, size - 1);
    let mut data = vec![0u8; fab::CONNECT_DATA_LEN];
    data[fab::CONNECT_DATA_HOSTID..fab::CONNECT_DATA_HOSTID + 16].copy_from_slice(&shared.hostid);
    put16(&mut data, fab::CONNECT_DATA_CNTLID, cntlid);
    let sub = shared.nqn.as_bytes();
    data[fab::CONNECT_DATA_SUBNQN..fab::CONNECT_DATA_SUBNQN + sub.len()].copy_from_slice(sub);
    let host = shared.hostnqn.as_bytes();
    data[fab::CONNECT_DATA_HOSTNQN..fab::CONNECT_DATA_HOSTNQN + host.len()].copy_from_slice(host);
    (cmd, data)
}

/// What the model calls when it ends one of our queues on its own (subsystem, host or
/// listener removed): the function fails until the host resets it.
fn on_model_disconnect(shared: &Arc<Shared>) -> Rc<dyn Fn()> {
    let shared = shared.clone();
    Rc::new(move || {
        if !shared.stopping.load(Ordering::Acquire) {
            shared.fail("the NVMe controller was ended (subsystem, host or listener removed)");
        }
    })
}

/// CC.EN 0 to 1, on the admin reactor: the model's controller (a Connect of queue 0) and the
/// admin queues at ASQ/ACQ.
pub(super) fn enable_admin(
    shared: Arc<Shared>,
    asq: u64,
    acq: u64,
    sq_size: u16,
    cq_size: u16,
    cc: u32,
) -> Result<(), String> {
    let g = group(&shared)?;
    let (cmd, data) = connect_command(&shared, 0, sq_size, 0xffff);
    let qp = match fabrics::connect(&cmd, &data, &shared.limits, on_model_disconnect(&shared)) {
        Ok((qp, _)) => qp,
        Err(cpl) => {
            return Err(format!(
                "the subsystem refused the controller (status {:?}); is host {} allowed (allow_any_host)?",
                cpl.status, shared.hostnqn
            ))
        }
    };
    // The model's own CC (its admin commands need CC.EN and CSTS.RDY).
    if let Err(s) = qp.controller().property_set(ferry_nvme::spec::prop::CC, false, cc as u64) {
        qp.close();
        return Err(format!("the model refused CC {cc:#x}: {s:?}"));
    }
    let mut st = g.st.borrow_mut();
    let cq = make_cq(&st.table, 0, acq, cq_size, true, 0, Db::Trapped(1)).map_err(|_| {
        qp.close();
        format!("ACQ {acq:#x} ({cq_size} entries) is not in mapped guest memory")
    })?;
    let sq = make_sq(&g, &st.table, 0, asq, sq_size, 0, Db::Trapped(0), qp.clone()).map_err(|_| {
        qp.close();
        format!("ASQ {asq:#x} ({sq_size} entries) is not in mapped guest memory")
    })?;
    st.cqs.push(cq);
    st.sqs.push(sq);
    let mut q = shared.queues.lock().unwrap_or_else(|e| e.into_inner());
    q.sq[0] = Some(SqEntry { reactor: g.reactor });
    q.cq[0] = Some(CqEntry { reactor: g.reactor, refs: 1 });
    shared.qreactor[0].store(g.reactor + 1, Ordering::Release);
    Ok(())
}

fn make_cq(table: &DmaTable, qid: u16, gpa: u64, size: u16, ien: bool, iv: u16, db: Db) -> Result<Cq, ()> {
    let base = table.translate(gpa, size as u64 * Completion::LEN as u64, true).map_err(|_| ())?;
    Ok(Cq {
        qid,
        gpa,
        size,
        base,
        tail: 0,
        phase: true,
        head: 0,
        ien,
        iv,
        db,
        pending: VecDeque::new(),
        irq_due: false,
        unsignalled: 0,
        held_since: 0,
        interrupts: 0,
    })
}

#[allow(clippy::too_many_arguments)]
fn make_sq(
    g: &Group,
    table: &DmaTable,
    qid: u16,
    gpa: u64,
    size: u16,
    cqid: u16,
    db: Db,
    qp: Rc<QueuePair>,
) -> Result<Sq, ()> {
    let base = table.translate(gpa, size as u64 * 64, false).map_err(|_| ())?;
    let done = g.done.clone();
    // Only queues: the model may finish a request from anywhere on this reactor.
    let done_cb: RequestDone = Rc::new(move |req| done.borrow_mut().push(Done::Req(req)));
    Ok(Sq {
        done_cb,
        qid,
        gpa,
        size,
        base,
        head: 0,
        cqid,
        db,
        qp,
        slots: (0..size).map(|_| None).collect(),
        free: (0..size).rev().collect(),
        inflight: 0,
        spare: Vec::new(),
        deleting: None,
        fetched: 0,
        completed: 0,
    })
}

/// The shadow doorbell and event index of doorbell `idx`, when the host configured them.
fn shadow_db(shared: &Shared, table: &DmaTable, idx: usize) -> Option<Db> {
    let (shadow, eventidx) = (*shared.dbbuf.lock().unwrap_or_else(|e| e.into_inner()))?;
    let off = idx as u64 * 4;
    let s = table.translate(shadow + off, 4, true).ok()?;
    let e = table.translate(eventidx + off, 4, true).ok()?;
    Some(Db::Shadow { idx, shadow: s.cast::<u32>(), eventidx: e.cast::<u32>() })
}

impl Sq {
    /// Requests of this queue the model still has (finished ones waiting in the group's
    /// list count until the poll takes them; spares hold the callback too).
    fn outstanding(&self) -> usize {
        Rc::strong_count(&self.done_cb) - 1 - self.spare.len()
    }
}

impl Db {
    /// The doorbell's value (a host-written index; checked by the caller).
    #[inline]
    fn read(&self, shared: &Shared) -> u32 {
        match *self {
            Db::Trapped(idx) => shared.doorbells[idx].load(Ordering::Acquire),
            Db::Shadow { shadow, .. } => {
                // SAFETY: `shadow` was translated from the group's current table, which keeps
                // the region mapped; the host writes it concurrently, hence volatile.
                let v = unsafe { std::ptr::read_volatile(shadow) };
                fence(Ordering::Acquire);
                u32::from_le(v)
            }
        }
    }

    /// Sets the event index (shadow doorbells only).
    #[inline]
    fn set_eventidx(&self, v: u32) {
        if let Db::Shadow { eventidx, .. } = *self {
            // SAFETY: as in `read`; the event index page is mapped writable.
            unsafe { std::ptr::write_volatile(eventidx, v.to_le()) };
        }
    }

    fn is_shadow(&self) -> bool {
        matches!(self, Db::Shadow { .. })
    }

    /// The same doorbell resolved in `table` (after the DMA table changed).
    fn rebase(&self, shared: &Shared, table: &DmaTable) -> Option<Db> {
        match *self {
            Db::Trapped(i) => Some(Db::Trapped(i)),
            Db::Shadow { idx, .. } => shadow_db(shared, table, idx),
        }
    }
}

impl Group {
    fn poll(self: &Rc<Self>) -> PollStatus {
        if self.finished.get() {
            return PollStatus::Idle;
        }
        let mut busy = false;
        let done: Vec<Done> = std::mem::take(&mut *self.done.borrow_mut());
        let mut st = self.st.borrow_mut();
        for d in done {
            busy = true;
            self.complete(&mut st, d);
        }
        if let Some(t) = st.teardown.clone() {
            drop(st);
            self.try_finish(&t);
            // A request still out wakes the reactor when it finishes (its bdev's completion).
            return PollStatus::from(busy);
        }
        self.finish_deletions(&mut st);
        if !self.shared.failed() {
            for i in 0..st.sqs.len() {
                busy |= self.fetch(&mut st, i);
            }
        }
        busy |= self.flush_pending(&mut st);
        // An interrupt held back by Interrupt Coalescing keeps the reactor polling until it
        // is sent (at most the aggregation time, 25.5 ms).
        busy |= self.interrupts(&mut st);
        let now = ticks::now();
        if busy {
            st.last_work = now;
            if st.armed {
                st.armed = false;
                for sq in &st.sqs {
                    sq.db.set_eventidx(behind(sq));
                }
            }
        } else if !st.armed && now.wrapping_sub(st.last_work) > st.arm_after {
            busy = self.arm(&mut st);
        }
        PollStatus::from(busy)
    }

    /// Going idle with shadow doorbells: each queue's event index becomes its tail, so the
    /// host's next submission rings the trapped doorbell (waking a sleeping reactor). A
    /// submission that raced with this is seen by the second look (true: work).
    fn arm(&self, st: &mut State) -> bool {
        st.armed = true;
        let mut any = false;
        for sq in &st.sqs {
            if sq.db.is_shadow() {
                sq.db.set_eventidx(sq.head as u32);
                any = true;
            }
        }
        if !any {
            return false;
        }
        fence(Ordering::SeqCst);
        st.sqs.iter().any(|sq| sq.db.is_shadow() && sq.db.read(&self.shared) != sq.head as u32)
    }

    /// Takes new entries from submission queue `i`; whether it did anything.
    fn fetch(&self, st: &mut State, i: usize) -> bool {
        let shared = &self.shared;
        let (tail, size) = {
            let sq = &st.sqs[i];
            if sq.deleting.is_some() {
                return false;
            }
            (sq.db.read(shared), sq.size)
        };
        if tail >= size as u32 {
            shared.fail(&format!("SQ {} tail doorbell {tail} beyond its {size} entries", st.sqs[i].qid));
            return false;
        }
        let mut n = 0;
        while st.sqs[i].head as u32 != tail && n < BUDGET {
            let sq = &st.sqs[i];
            // Room for the completion: not while the queue's CQ holds completions back, and
            // no more in flight than the queue has entries.
            let cq_blocked = st.cqs.iter().any(|c| c.qid == sq.cqid && !c.pending.is_empty());
            if cq_blocked || sq.free.is_empty() {
                break;
            }
            let mut raw = [0u8; 64];
            // SAFETY: `base` was translated for `size` entries from the group's table (kept
            // alive in `st.table`); head < size.
            unsafe { read_shared(sq.base.add(sq.head as usize * 64), &mut raw) };
            let sq = &mut st.sqs[i];
            sq.head = if sq.head + 1 == sq.size { 0 } else { sq.head + 1 };
            sq.fetched += 1;
            n += 1;
            let cmd = Command::from_bytes(&raw);
            self.submit(st, i, cmd);
        }
        if n > 0 && !st.armed {
            st.sqs[i].db.set_eventidx(behind(&st.sqs[i]));
        }
        n > 0
    }

    /// Runs one command of submission queue `i`.
    fn submit(&self, st: &mut State, i: usize, cmd: Command) {
        let qid = st.sqs[i].qid;
        let cid = cmd.cid();
        if cmd.opcode() == admin::FABRICS || cmd.psdt() != 0 {
            // No fabrics commands and no SGLs on a PCIe function (SGLS is 0).
            let code = if cmd.opcode() == admin::FABRICS { sc::INVALID_OPCODE } else { sc::INVALID_FIELD };
            return self.post(st, i, cid, generic(code), 0, 0);
        }
        if qid == 0 {
            match cmd.opcode() {
                admin::CREATE_IO_CQ => return self.create_cq(st, cmd),
                admin::CREATE_IO_SQ => return self.create_sq(st, cmd),
                admin::DELETE_IO_SQ => return self.delete_sq(st, cmd),
                admin::DELETE_IO_CQ => return self.delete_cq(st, cmd),
                admin::DOORBELL_BUFFER_CONFIG => return self.doorbell_buffer_config(st, &cmd),
                admin::SET_FEATURES | admin::GET_FEATURES
                    if matches!(
                        (cmd.cdw10() & 0xff) as u8,
                        features::fid::INTERRUPT_COALESCING | features::fid::INTERRUPT_VECTOR
                    ) =>
                {
                    return self.interrupt_features(st, &cmd)
                }
                _ => {}
            }
        }
        let (len, dir) = match self.data_len(st, qid, &cmd) {
            Ok(v) => v,
            Err(s) => return self.post(st, i, cid, s, 0, 0),
        };
        let mut iovs = std::mem::take(&mut st.iovs);
        iovs.clear();
        if len > 0 {
            let write = dir == DataDir::ToHost;
            if let Err(s) = map_prps(&**st.table, cmd.prp1(), cmd.prp2(), len, write, &mut iovs) {
                st.iovs = iovs;
                return self.post(st, i, cid, s, 0, 0);
            }
        }
        let table = st.table.clone();
        let sq = &mut st.sqs[i];
        let mut req = sq.spare.pop().unwrap_or_else(NvmeRequest::new);
        req.reset();
        req.cmd = cmd;
        req.qid = qid;
        req.set_done(sq.done_cb.clone());
        let aer = qid == 0 && cmd.opcode() == admin::ASYNC_EVENT_REQUEST;
        let slot = if len > 0 {
            // Non-empty: fetch() checked `free` before taking the entry.
            let slot = sq.free.pop().expect("a free slot");
            sq.slots[slot as usize] = Some(table);
            slot as u64
        } else {
            NO_SLOT
        };
        if !aer {
            sq.inflight += 1;
        }
        req.ctx = ((qid as u64) << 16) | slot;
        for iov in &iovs {
            // SAFETY: the iovec points into a region of `table`, which the slot holds until
            // the request completes (and the region stays mapped as long as that table).
            unsafe { req.push_iov(iov.iov_base.cast(), iov.iov_len) };
        }
        st.iovs = iovs;
        let qp = sq.qp.clone();
        if let Some(req) = qp.execute(req) {
            self.complete(st, Done::Req(req));
        }
    }

    /// The bytes a command's PRPs describe, and which way they move (PCIe has no length
    /// in the command: it follows from the opcode and its fields, as SPDK's vfio-user
    /// transport computes it).
    fn data_len(&self, st: &mut State, qid: u16, cmd: &Command) -> Result<(u64, DataDir), Status> {
        let dir = DataDir::of(cmd);
        if dir == DataDir::None {
            return Ok((0, dir));
        }
        if dir == DataDir::Both {
            return Err(generic(sc::INVALID_OPCODE));
        }
        let len: u64 = if qid == 0 {
            match cmd.opcode() {
                admin::IDENTIFY => 4096,
                admin::GET_LOG_PAGE => {
                    let numd = (((cmd.cdw11() & 0xffff) as u64) << 16 | (cmd.cdw10() >> 16) as u64) + 1;
                    numd * 4
                }
                admin::GET_FEATURES | admin::SET_FEATURES => match (cmd.cdw10() & 0xff) as u8 {
                    // Host Identifier: 16 bytes (extended) or 8.
                    0x81 => {
                        if cmd.cdw11() & 1 != 0 {
                            16
                        } else {
                            8
                        }
                    }
                    0x03 => 4096, // LBA range type
                    0x0c => 256,  // autonomous power state transition
                    0x0e => 8,    // timestamp
                    _ => 0,
                },
                _ => 0,
            }
        } else {
            match cmd.opcode() {
                io::DATASET_MANAGEMENT => ((cmd.cdw10() & 0xff) as u64 + 1) * 16,
                io::RESERVATION_REGISTER => crate::nvme::reservation::REGISTER_DATA_LEN as u64,
                io::RESERVATION_ACQUIRE => crate::nvme::reservation::ACQUIRE_DATA_LEN as u64,
                io::RESERVATION_RELEASE => crate::nvme::reservation::RELEASE_DATA_LEN as u64,
                io::RESERVATION_REPORT => (cmd.cdw10() as u64 + 1) * 4,
                io::READ | io::WRITE | io::COMPARE => {
                    let bs = self.block_size(st, cmd.nsid()).ok_or(generic(sc::INVALID_NS))?;
                    (cmd.nlb() as u64) * bs as u64
                }
                _ => 0,
            }
        };
        // PCIe hosts size transfers by MDTS (and admin data by its page): larger is refused
        // before any PRP is read.
        let max = (self.shared.opts.max_io_size as u64).max(8192);
        if len > max {
            return Err(generic(sc::INVALID_FIELD));
        }
        Ok((len, dir))
    }

    /// The block size of namespace `nsid` (cached per namespace generation: the I/O path
    /// takes no lock).
    fn block_size(&self, st: &mut State, nsid: u32) -> Option<u32> {
        let sub = st.sqs.first()?.qp.subsystem().clone();
        let gen = sub.ns_generation();
        if gen != st.ns_gen {
            st.ns_cache.clear();
            st.ns_gen = gen;
        }
        if let Some(&(_, bs)) = st.ns_cache.iter().find(|(id, _)| *id == nsid) {
            return Some(bs);
        }
        let bs = sub.namespace(nsid)?.block_size();
        if st.ns_cache.len() < 64 {
            st.ns_cache.push((nsid, bs));
        }
        Some(bs)
    }

    /// A finished request or admin completion: posted on its completion queue.
    fn complete(&self, st: &mut State, d: Done) {
        match d {
            Done::Admin { cid, status } => {
                if let Some(i) = st.sqs.iter().position(|s| s.qid == 0) {
                    self.post(st, i, cid, status, 0, 0);
                }
            }
            Done::Req(req) => {
                let qid = (req.ctx >> 16) as u16;
                let slot = req.ctx & 0xffff;
                let Some(i) = st.sqs.iter().position(|s| s.qid == qid) else { return };
                let sq = &mut st.sqs[i];
                if slot != NO_SLOT {
                    if let Some(t) = sq.slots.get_mut(slot as usize) {
                        if t.take().is_some() {
                            sq.free.push(slot as u16);
                        }
                    }
                }
                let aer = qid == 0 && req.cmd.opcode() == admin::ASYNC_EVENT_REQUEST;
                if !aer {
                    sq.inflight = sq.inflight.saturating_sub(1);
                }
                sq.completed += 1;
                let (cid, status, dw0, dw1) = (req.cmd.cid(), req.cpl.status, req.cpl.dw0, req.cpl.dw1);
                if sq.spare.len() < SPARE_MAX {
                    sq.spare.push(req);
                }
                if st.teardown.is_none() {
                    self.post(st, i, cid, status, dw0, dw1);
                }
            }
        }
    }

    /// Posts a completion of submission queue `i` on its completion queue (held back while
    /// the queue is full).
    fn post(&self, st: &mut State, i: usize, cid: u16, status: Status, dw0: u32, dw1: u32) {
        let sq = &st.sqs[i];
        let cpl = Completion { dw0, dw1, sqhd: sq.head, sqid: sq.qid, cid, status, phase: false };
        let cqid = sq.cqid;
        let Some(cq) = st.cqs.iter_mut().find(|c| c.qid == cqid) else { return };
        if !cq.pending.is_empty() || !self.write_cqe(cq, &cpl) {
            if cq.pending.is_empty() {
                // Full: the host's next head update must ring (with shadow doorbells).
                cq.db.set_eventidx(cq.head as u32);
            }
            cq.pending.push_back(cpl);
        }
    }

    /// Writes `cpl` at the tail if there is room; false when the queue is full.
    fn write_cqe(&self, cq: &mut Cq, cpl: &Completion) -> bool {
        let next = if cq.tail + 1 == cq.size { 0 } else { cq.tail + 1 };
        if next == cq.head {
            let head = cq.db.read(&self.shared);
            if head >= cq.size as u32 {
                self.shared.fail(&format!("CQ {} head doorbell {head} beyond its {} entries", cq.qid, cq.size));
                return false;
            }
            cq.head = head as u16;
            if next == cq.head {
                return false;
            }
        }
        // The host's head can reach `next` once it saw this entry, never pass it: an event
        // index there is never crossed, wraps included (set before the entry is visible).
        cq.db.set_eventidx(next as u32);
        let mut b = cpl.to_bytes();
        put16(&mut b, 14, cpl.status.to_field() | cq.phase as u16);
        // SAFETY: `base` covers `size` entries of a writable region of the group's table;
        // tail < size. The first 12 bytes go first, then (after a release fence) the dword
        // holding the phase bit, so the host never sees a new phase with old contents.
        unsafe {
            let at = cq.base.add(cq.tail as usize * Completion::LEN);
            write_shared(at, &b[..12]);
            fence(Ordering::Release);
            std::ptr::write_volatile(at.add(12).cast::<u32>(), u32::from_le_bytes(b[12..16].try_into().expect("4")));
        }
        cq.tail = next;
        if next == 0 {
            cq.phase = !cq.phase;
        }
        cq.irq_due = true;
        cq.unsignalled += 1;
        true
    }

    /// Posts what full completion queues held back, now that the host made room.
    fn flush_pending(&self, st: &mut State) -> bool {
        let mut moved = false;
        for cq in st.cqs.iter_mut() {
            while let Some(cpl) = cq.pending.front().copied() {
                if !self.write_cqe(cq, &cpl) {
                    break;
                }
                cq.pending.pop_front();
                moved = true;
            }
        }
        moved
    }

    /// One MSI-X interrupt per completion queue that got entries in this poll, or, with
    /// Interrupt Coalescing set, once an I/O queue's vector has the threshold's entries or the
    /// oldest has waited the aggregation time. Whether an interrupt is held back.
    fn interrupts(&self, st: &mut State) -> bool {
        let gen = self.shared.vectors_gen.load(Ordering::Acquire);
        if gen != st.notifiers_gen {
            st.notifiers.clear();
            st.notifiers_gen = gen;
        }
        let coalescing = self.shared.coalescing.load(Ordering::Relaxed);
        let (threshold, time, now) = if coalescing == 0 {
            (1, 0, 0)
        } else {
            let time = ticks::from_duration(Duration::from_micros(100 * ((coalescing >> 8) & 0xff) as u64));
            ((coalescing & 0xff) + 1, time, ticks::now())
        };
        let mut held = false;
        let State { cqs, notifiers, .. } = st;
        for cq in cqs.iter_mut() {
            if !cq.irq_due || !cq.ien {
                cq.irq_due = false;
                continue;
            }
            // The admin queue's interrupts are never aggregated (NVMe Base 2.0, 5.27.1.8).
            let coalesce = coalescing != 0
                && cq.qid != 0
                && !self.shared.coalescing_off.get(cq.iv as usize).is_some_and(|o| o.load(Ordering::Relaxed));
            if coalesce {
                if cq.held_since == 0 {
                    cq.held_since = now.max(1);
                }
                if cq.unsignalled < threshold && now.wrapping_sub(cq.held_since) < time {
                    held = true;
                    continue;
                }
            }
            cq.irq_due = false;
            cq.unsignalled = 0;
            cq.held_since = 0;
            let v = cq.iv as usize;
            if notifiers.len() <= v {
                notifiers.resize_with(v + 1, || None);
            }
            if notifiers[v].is_none() {
                notifiers[v] = self.shared.vector(cq.iv).and_then(|f| Notifier::new(&f).ok());
            }
            if let Some(n) = notifiers[v].as_mut() {
                let _ = n.notify();
                cq.interrupts += 1;
            }
        }
        held
    }

    /// Set and Get Features Interrupt Coalescing (08h) and Interrupt Vector Configuration
    /// (09h): PCIe-only features, kept by the transport, which sends the interrupts.
    fn interrupt_features(&self, st: &mut State, cmd: &Command) {
        let cid = cmd.cid();
        let (cdw10, cdw11) = (cmd.cdw10(), cmd.cdw11());
        let fid = (cdw10 & 0xff) as u8;
        let set = cmd.opcode() == admin::SET_FEATURES;
        if set && cdw10 & (1 << 31) != 0 {
            return self.post(st, 0, cid, specific(csc::FEATURE_NOT_SAVEABLE), 0, 0);
        }
        let sel = (cdw10 >> 8) & 0x7;
        if !set && sel == 3 {
            // Supported capabilities: changeable, neither saveable nor per namespace.
            return self.post(st, 0, cid, Status::SUCCESS, 0b100, 0);
        }
        // Current (SEL 0) or default and saved (1, 2: the defaults, nothing is saved).
        let current = set || sel == 0;
        let shared = &self.shared;
        if fid == features::fid::INTERRUPT_COALESCING {
            if set {
                shared.coalescing.store(cdw11 & 0xffff, Ordering::Relaxed);
                return self.post(st, 0, cid, Status::SUCCESS, 0, 0);
            }
            let v = if current { shared.coalescing.load(Ordering::Relaxed) } else { 0 };
            return self.post(st, 0, cid, Status::SUCCESS, v, 0);
        }
        let iv = (cdw11 & 0xffff) as usize;
        let Some(off) = shared.coalescing_off.get(iv) else {
            return self.post(st, 0, cid, generic(sc::INVALID_FIELD), 0, 0);
        };
        if set {
            off.store(cdw11 & (1 << 16) != 0, Ordering::Relaxed);
            return self.post(st, 0, cid, Status::SUCCESS, 0, 0);
        }
        let cd = current && off.load(Ordering::Relaxed);
        self.post(st, 0, cid, Status::SUCCESS, iv as u32 | (cd as u32) << 16, 0)
    }

    // ---- PCIe admin commands -----------------------------------------------------------

    fn admin_done_later(&self, cid: u16) -> impl FnOnce(Status) + Send + 'static {
        let uid = self.shared.uid;
        let admin = self.shared.admin_reactor;
        move |status| {
            let _ = framework::send(admin, move || {
                if let Some(g) = existing(uid) {
                    g.done.borrow_mut().push(Done::Admin { cid, status });
                }
            });
        }
    }

    fn create_cq(&self, st: &mut State, cmd: Command) {
        let cid = cmd.cid();
        let c = CreateQ::of(&cmd);
        let shared = &self.shared;
        let (ien, iv) = (c.cdw11 & 2 != 0, (c.cdw11 >> 16) as u16);
        let check = || -> Result<usize, Status> {
            let mut q = shared.queues.lock().unwrap_or_else(|e| e.into_inner());
            let granted = st.sqs.first().map_or(0, |s| s.qp.controller().lock().io_queues);
            if c.qid == 0 || c.qid > granted || c.qid as usize >= q.cq.len() || q.cq[c.qid as usize].is_some() {
                return Err(specific(csc::INVALID_QID));
            }
            if c.size < 2 || c.size > shared.opts.max_queue_depth {
                return Err(specific(csc::INVALID_QUEUE_SIZE));
            }
            if !c.pc {
                return Err(generic(sc::INVALID_FIELD));
            }
            if iv as usize >= super::pci::MSIX_VECTORS {
                return Err(specific(csc::INVALID_INTERRUPT_VECTOR));
            }
            if !c.gpa.is_multiple_of(PAGE) {
                return Err(generic(sc::PRP_OFFSET_INVALID));
            }
            if st.table.translate(c.gpa, c.size as u64 * Completion::LEN as u64, true).is_err() {
                return Err(generic(sc::INVALID_FIELD));
            }
            let reactor = shared.reactor_of(c.qid);
            q.cq[c.qid as usize] = Some(CqEntry { reactor, refs: 0 });
            Ok(reactor)
        };
        let reactor = match check() {
            Ok(r) => r,
            Err(s) => return self.post(st, 0, cid, s, 0, 0),
        };
        let shared = shared.clone();
        let reply = self.admin_done_later(cid);
        let (qid, gpa, size) = (c.qid, c.gpa, c.size);
        let sent = framework::send(reactor, move || {
            let status = match group(&shared) {
                Err(_) => generic(sc::INTERNAL),
                Ok(g) => {
                    let mut st = g.st.borrow_mut();
                    let idx = 2 * qid as usize + 1;
                    let db = shadow_db(&shared, &st.table, idx).unwrap_or(Db::Trapped(idx));
                    match make_cq(&st.table, qid, gpa, size, ien, iv, db) {
                        Ok(cq) => {
                            cq.db.set_eventidx(EVENTIDX_NEVER);
                            if cq.db.is_shadow() {
                                // Linux may leave an old value there across resets (SPDK too).
                                zero_shadow(&cq.db);
                            }
                            shared.doorbells[idx].store(0, Ordering::Release);
                            st.cqs.push(cq);
                            shared.qreactor[qid as usize].store(g.reactor + 1, Ordering::Release);
                            Status::SUCCESS
                        }
                        Err(()) => generic(sc::INVALID_FIELD),
                    }
                }
            };
            if !status.is_success() {
                shared.queues.lock().unwrap_or_else(|e| e.into_inner()).cq[qid as usize] = None;
            }
            reply(status);
        });
        if sent.is_err() {
            self.post(st, 0, cid, generic(sc::INTERNAL), 0, 0);
        }
    }

    fn create_sq(&self, st: &mut State, cmd: Command) {
        let cid = cmd.cid();
        let c = CreateQ::of(&cmd);
        let cqid = (c.cdw11 >> 16) as u16;
        let shared = &self.shared;
        let check = || -> Result<usize, Status> {
            let mut q = shared.queues.lock().unwrap_or_else(|e| e.into_inner());
            let granted = st.sqs.first().map_or(0, |s| s.qp.controller().lock().io_queues);
            if c.qid == 0 || c.qid > granted || c.qid as usize >= q.sq.len() || q.sq[c.qid as usize].is_some() {
                return Err(specific(csc::INVALID_QID));
            }
            let Some(cq) = q.cq.get(cqid as usize).copied().flatten().filter(|_| cqid != 0) else {
                return Err(specific(csc::INVALID_CQ));
            };
            if c.size < 2 || c.size > shared.opts.max_queue_depth {
                return Err(specific(csc::INVALID_QUEUE_SIZE));
            }
            if !c.pc {
                return Err(generic(sc::INVALID_FIELD));
            }
            if !c.gpa.is_multiple_of(PAGE) {
                return Err(generic(sc::PRP_OFFSET_INVALID));
            }
            if st.table.translate(c.gpa, c.size as u64 * 64, false).is_err() {
                return Err(generic(sc::INVALID_FIELD));
            }
            // A submission queue runs where its completion queue does.
            q.sq[c.qid as usize] = Some(SqEntry { reactor: cq.reactor });
            if let Some(e) = q.cq[cqid as usize].as_mut() {
                e.refs += 1;
            }
            Ok(cq.reactor)
        };
        let reactor = match check() {
            Ok(r) => r,
            Err(s) => return self.post(st, 0, cid, s, 0, 0),
        };
        let shared = shared.clone();
        let reply = self.admin_done_later(cid);
        let (qid, gpa, size) = (c.qid, c.gpa, c.size);
        let sent = framework::send(reactor, move || {
            let status = create_sq_here(&shared, qid, gpa, size, cqid);
            if !status.is_success() {
                let mut q = shared.queues.lock().unwrap_or_else(|e| e.into_inner());
                q.sq[qid as usize] = None;
                if let Some(e) = q.cq[cqid as usize].as_mut() {
                    e.refs = e.refs.saturating_sub(1);
                }
            }
            reply(status);
        });
        if sent.is_err() {
            self.post(st, 0, cid, generic(sc::INTERNAL), 0, 0);
        }
    }

    fn delete_sq(&self, st: &mut State, cmd: Command) {
        let cid = cmd.cid();
        let qid = cmd.cdw10() as u16;
        let entry = {
            let mut q = self.shared.queues.lock().unwrap_or_else(|e| e.into_inner());
            match q.sq.get(qid as usize).copied().flatten().filter(|_| qid != 0) {
                None => None,
                Some(e) => {
                    q.sq[qid as usize] = None;
                    Some(e)
                }
            }
        };
        let Some(e) = entry else { return self.post(st, 0, cid, specific(csc::INVALID_QID), 0, 0) };
        let shared = self.shared.clone();
        let reply = self.admin_done_later(cid);
        let sent = framework::send(e.reactor, move || {
            let Some(g) = existing(shared.uid) else { return reply(Status::SUCCESS) };
            let mut st = g.st.borrow_mut();
            match st.sqs.iter_mut().find(|s| s.qid == qid) {
                // The model's queue closes now (what it holds unfinished goes); the deletion
                // completes once the requests in flight are done (`finish_deletions`).
                Some(sq) => {
                    sq.deleting = Some(cid);
                    sq.qp.close();
                }
                None => {
                    drop(st);
                    reply(Status::SUCCESS)
                }
            }
        });
        if sent.is_err() {
            self.post(st, 0, cid, generic(sc::INTERNAL), 0, 0);
        }
    }

    /// Submission queues being deleted whose requests are all done go, and their Delete
    /// I/O SQ completes.
    fn finish_deletions(&self, st: &mut State) {
        while let Some(i) = st.sqs.iter().position(|s| s.deleting.is_some() && s.outstanding() == 0) {
            let sq = st.sqs.remove(i);
            let cid = sq.deleting.unwrap_or(0);
            {
                let mut q = self.shared.queues.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(e) = q.cq.get_mut(sq.cqid as usize).and_then(|e| e.as_mut()) {
                    e.refs = e.refs.saturating_sub(1);
                }
            }
            if !st.cqs.iter().any(|c| c.qid == sq.qid) {
                self.shared.qreactor[sq.qid as usize].store(0, Ordering::Release);
            }
            (self.admin_done_later(cid))(Status::SUCCESS);
        }
    }

    fn delete_cq(&self, st: &mut State, cmd: Command) {
        let cid = cmd.cid();
        let qid = cmd.cdw10() as u16;
        let entry = {
            let mut q = self.shared.queues.lock().unwrap_or_else(|e| e.into_inner());
            match q.cq.get(qid as usize).copied().flatten().filter(|_| qid != 0) {
                None => Err(specific(csc::INVALID_QID)),
                Some(e) if e.refs > 0 => Err(specific(csc::INVALID_QUEUE_DELETION)),
                Some(e) => {
                    q.cq[qid as usize] = None;
                    Ok(e)
                }
            }
        };
        let e = match entry {
            Ok(e) => e,
            Err(s) => return self.post(st, 0, cid, s, 0, 0),
        };
        let shared = self.shared.clone();
        let reply = self.admin_done_later(cid);
        let sent = framework::send(e.reactor, move || {
            if let Some(g) = existing(shared.uid) {
                let mut st = g.st.borrow_mut();
                st.cqs.retain(|c| c.qid != qid);
                if !st.sqs.iter().any(|s| s.qid == qid) {
                    shared.qreactor[qid as usize].store(0, Ordering::Release);
                }
            }
            reply(Status::SUCCESS);
        });
        if sent.is_err() {
            self.post(st, 0, cid, generic(sc::INTERNAL), 0, 0);
        }
    }

    /// Doorbell Buffer Config (NVMe 1.3 §5.7): PRP1 the shadow doorbells, PRP2 the event
    /// indexes, each a page of mapped guest memory. Every I/O queue, existing ones too
    /// (Linux sends it after creating its I/O queues), then takes its doorbells from there;
    /// the command completes once every reactor switched its queues.
    fn doorbell_buffer_config(&self, st: &mut State, cmd: &Command) {
        let cid = cmd.cid();
        if self.shared.opts.disable_shadow_doorbells {
            return self.post(st, 0, cid, generic(sc::INVALID_OPCODE), 0, 0);
        }
        let (shadow, eventidx) = (cmd.prp1(), cmd.prp2());
        let ok = shadow.is_multiple_of(PAGE)
            && eventidx.is_multiple_of(PAGE)
            && shadow != eventidx
            && st.table.translate(shadow, PAGE, true).is_ok()
            && st.table.translate(eventidx, PAGE, true).is_ok();
        if !ok {
            return self.post(st, 0, cid, generic(sc::INVALID_FIELD), 0, 0);
        }
        *self.shared.dbbuf.lock().unwrap_or_else(|e| e.into_inner()) = Some((shadow, eventidx));
        tracing::debug!(traddr = %self.shared.traddr, shadow, eventidx, "vfio-user: shadow doorbells configured");
        let uid = self.shared.uid;
        let reply = self.admin_done_later(cid);
        framework::for_each_reactor(
            move || {
                if let Some(g) = existing(uid) {
                    g.use_shadow_doorbells();
                }
            },
            move || reply(Status::SUCCESS),
        );
    }

    /// This reactor's I/O queues move to the shadow doorbells, starting from the values last
    /// written to their trapped doorbells (copied into the shadow buffer, as SPDK does).
    fn use_shadow_doorbells(&self) {
        let mut st = self.st.borrow_mut();
        let shared = &self.shared;
        let State { table, sqs, cqs, armed, .. } = &mut *st;
        for (qid, db) in sqs.iter_mut().map(|q| (q.qid, &mut q.db)).chain(cqs.iter_mut().map(|q| (q.qid, &mut q.db))) {
            let Db::Trapped(idx) = *db else { continue };
            if qid == 0 {
                // Linux never uses shadow doorbells for the admin queue.
                continue;
            }
            if let Some(new) = shadow_db(shared, table, idx) {
                if let Db::Shadow { shadow, .. } = new {
                    let v = shared.doorbells[idx].load(Ordering::Acquire);
                    // SAFETY: translated writable from the group's current table.
                    unsafe { std::ptr::write_volatile(shadow, v.to_le()) };
                }
                new.set_eventidx(EVENTIDX_NEVER);
                *db = new;
            }
        }
        *armed = false;
    }

    // ---- teardown ----------------------------------------------------------------------

    /// Stops fetching and closes the model's queues; the group goes once its requests are
    /// done (the DMA table stays mapped for them until then).
    fn stop(self: &Rc<Self>, t: Arc<Teardown>) {
        {
            let mut st = self.st.borrow_mut();
            st.teardown = Some(t.clone());
            for sq in &st.sqs {
                sq.qp.close();
            }
        }
        self.try_finish(&t);
    }

    fn try_finish(self: &Rc<Self>, t: &Arc<Teardown>) {
        if self.finished.get() || self.st.borrow().sqs.iter().any(|s| s.outstanding() > 0) {
            return;
        }
        self.finished.set(true);
        GROUPS.with(|m| {
            let mut m = m.borrow_mut();
            if m.get(&self.shared.uid).is_some_and(|g| Rc::ptr_eq(g, self)) {
                m.remove(&self.shared.uid);
            }
        });
        // The poller goes with the group (dropping it from inside its own run is fine: the
        // reactor only marks it inactive).
        self.poller.borrow_mut().take();
        finish_one(&self.shared, t);
    }

    /// The DMA table changed: ring pointers are resolved again (a queue whose memory went is
    /// a fatal error); requests in flight keep the table they were built with.
    fn set_table(&self, table: Arc<DmaTable>) {
        let mut st = self.st.borrow_mut();
        let t: TableRef = Rc::new(table);
        let shared = &self.shared;
        let mut lost = None;
        for sq in st.sqs.iter_mut() {
            match (t.translate(sq.gpa, sq.size as u64 * 64, false), sq.db.rebase(shared, &t)) {
                (Ok(b), Some(db)) => {
                    sq.base = b;
                    sq.db = db;
                }
                _ => lost = Some(sq.qid),
            }
        }
        for cq in st.cqs.iter_mut() {
            match (t.translate(cq.gpa, cq.size as u64 * Completion::LEN as u64, true), cq.db.rebase(shared, &t)) {
                (Ok(b), Some(db)) => {
                    cq.base = b;
                    cq.db = db;
                }
                _ => lost = Some(cq.qid),
            }
        }
        if let Some(qid) = lost {
            // Keep the old table: the rings' pointers still point into it.
            shared.fail(&format!("queue {qid}'s memory was unmapped while the controller runs"));
            return;
        }
        st.table = t;
    }
}

/// Zeroes a new queue's shadow doorbell: the specification leaves the buffer to the host,
/// but older Linux drivers leave stale values there across resets (SPDK does the same).
fn zero_shadow(db: &Db) {
    if let Db::Shadow { shadow, .. } = *db {
        // SAFETY: translated writable from the group's current table, which keeps it mapped.
        unsafe { std::ptr::write_volatile(shadow, 0) };
    }
}

/// One reactor finished its part of a teardown; the last one resets the registers.
fn finish_one(shared: &Arc<Shared>, t: &Arc<Teardown>) {
    if t.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
        return;
    }
    for d in shared.doorbells.iter() {
        d.store(0, Ordering::Release);
    }
    for r in shared.qreactor.iter() {
        r.store(0, Ordering::Release);
    }
    *shared.queues.lock().unwrap_or_else(|e| e.into_inner()) = Default::default();
    *shared.dbbuf.lock().unwrap_or_else(|e| e.into_inner()) = None;
    // A controller reset brings the features back to their defaults.
    shared.coalescing.store(0, Ordering::Relaxed);
    for o in shared.coalescing_off.iter() {
        o.store(false, Ordering::Relaxed);
    }
    let shst = if t.shutdown { csts::SHST_COMPLETE } else { 0 };
    shared.csts.store(shst, Ordering::Release);
    shared.stopping.store(false, Ordering::Release);
    t.set_done();
}

/// A Create I/O SQ on this (its completion queue's) reactor: the model's queue (a Connect),
/// then the ring.
fn create_sq_here(shared: &Arc<Shared>, qid: u16, gpa: u64, size: u16, cqid: u16) -> Status {
    let Ok(g) = group(shared) else { return generic(sc::INTERNAL) };
    let mut st = g.st.borrow_mut();
    if !st.cqs.iter().any(|c| c.qid == cqid) || st.teardown.is_some() {
        return specific(csc::INVALID_CQ);
    }
    let Some(cntlid) = st.sqs.first().map(|s| s.qp.cntlid()).or_else(|| admin_cntlid(shared)) else {
        return generic(sc::INTERNAL);
    };
    let (cmd, data) = connect_command(shared, qid, size, cntlid);
    let qp = match fabrics::connect(&cmd, &data, &shared.limits, on_model_disconnect(shared)) {
        Ok((qp, _)) => qp,
        Err(cpl) => {
            tracing::warn!(traddr = %shared.traddr, qid, status = ?cpl.status, "vfio-user: the model refused an I/O queue");
            return generic(sc::INTERNAL);
        }
    };
    let idx = 2 * qid as usize;
    let db = shadow_db(shared, &st.table, idx).unwrap_or(Db::Trapped(idx));
    match make_sq(&g, &st.table, qid, gpa, size, cqid, db, qp.clone()) {
        Ok(sq) => {
            sq.db.set_eventidx(EVENTIDX_NEVER);
            zero_shadow(&sq.db);
            shared.doorbells[idx].store(0, Ordering::Release);
            st.sqs.push(sq);
            st.armed = false;
            shared.qreactor[qid as usize].store(g.reactor + 1, Ordering::Release);
            Status::SUCCESS
        }
        Err(()) => {
            qp.close();
            generic(sc::INVALID_FIELD)
        }
    }
}

/// The controller ID, from the model's controllers of the subsystem whose host is ours.
fn admin_cntlid(shared: &Shared) -> Option<u16> {
    let sub = crate::nvme::subsystem(&shared.nqn)?;
    sub.controllers().iter().find(|c| c.hostnqn == shared.hostnqn).map(|c| c.cntlid)
}

/// A disable on this reactor: the endpoint's group (if any) drains and goes.
pub(super) fn stop_here(shared: Arc<Shared>, t: Arc<Teardown>) {
    match existing(shared.uid) {
        Some(g) => g.stop(t),
        None => finish_one(&shared, &t),
    }
}

/// The DMA table changed, on this reactor.
pub(super) fn set_table_here(uid: u64, table: Arc<DmaTable>) {
    if let Some(g) = existing(uid) {
        g.set_table(table);
    }
}

/// One queue pair as `nvmf_subsystem_get_qpairs` lists it (with Ferry's counters).
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueueInfo {
    /// Controller ID.
    pub cntlid: u16,
    /// Queue ID.
    pub qid: u16,
    /// "active", or "deleting" while it drains.
    pub state: String,
    /// The endpoint's directory.
    pub traddr: String,
    /// Entries.
    pub size: u16,
    /// Commands taken from the queue.
    pub commands: u64,
    /// Completions posted.
    pub completions: u64,
    /// Requests in flight.
    pub inflight: u32,
    /// Trapped writes of the SQ tail doorbell.
    pub sq_doorbell_traps: u64,
    /// Trapped writes of the CQ head doorbell.
    pub cq_doorbell_traps: u64,
    /// Whether it uses shadow doorbells.
    pub shadow_doorbells: bool,
    /// MSI-X interrupts sent for its completion queue.
    pub interrupts: u64,
}

/// The queues of endpoints of subsystem `nqn` on this reactor.
pub(super) fn queues_here(nqn: &str) -> Vec<QueueInfo> {
    GROUPS.with(|m| {
        let m = m.borrow();
        let mut out = Vec::new();
        for g in m.values().filter(|g| g.shared.nqn == nqn) {
            let st = g.st.borrow();
            for sq in &st.sqs {
                let cq = st.cqs.iter().find(|c| c.qid == sq.cqid);
                out.push(QueueInfo {
                    cntlid: sq.qp.cntlid(),
                    qid: sq.qid,
                    state: if sq.deleting.is_some() || st.teardown.is_some() { "deleting" } else { "active" }.into(),
                    traddr: g.shared.traddr.clone(),
                    size: sq.size,
                    commands: sq.fetched,
                    completions: sq.completed,
                    inflight: sq.inflight,
                    sq_doorbell_traps: g.shared.traps[2 * sq.qid as usize].load(Ordering::Relaxed),
                    cq_doorbell_traps: g.shared.traps[2 * sq.cqid as usize + 1].load(Ordering::Relaxed),
                    shadow_doorbells: sq.db.is_shadow(),
                    interrupts: cq.map_or(0, |c| c.interrupts),
                });
            }
        }
        out
    })
}
