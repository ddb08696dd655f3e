//! One controller: the association of one host with one subsystem, made by an admin queue
//! Connect and ended by its admin queue closing, keep-alive expiry, a listener, host or
//! subsystem going away. It holds the controller's registers (CAP, VS, CC, CSTS), feature
//! values, error log, changed-namespace list and pending asynchronous events, and knows on
//! which reactor each of its queues runs, so anything (an RPC, a bdev event) can reach them.
//!
//! Shared by the reactors of its queues and by management threads, so its state sits behind
//! a mutex; only admin commands and events take it, never the I/O path.

use super::fabrics::TransportLimits;
use super::features::Features;
use super::queue;
use super::subsystem::{AnaState, ControllerInfo, ListenAddress, Subsystem, SubsystemKind};
use crate::framework;
use ferry_nvme::spec::{put16, put32, put64, Status};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// NVMe version reported (VS and Identify VER): 1.3.
pub const VERSION: u32 = 0x0001_0300;
/// Keep Alive Support granularity in 100 ms units (SPDK's default `kas` 10: one second).
pub const KAS: u16 = 10;
/// Keep-alive timeout given to a discovery controller that asked for none (SPDK's
/// NVMF_DISC_KATO_IN_MS): a host that vanished without disconnecting is reaped.
pub const DISCOVERY_KATO_MS: u32 = 120_000;
/// Outstanding Asynchronous Event Requests allowed, minus one (Identify AERL).
pub const AERL: u8 = 3;
/// Error log entries kept, minus one (Identify ELPE).
pub const ELPE: u8 = 63;
/// Most entries of the Changed Namespace List log.
pub const CHANGED_NS_MAX: usize = 1024;
/// CAP.TO: worst-case time to ready, in 500 ms units.
const CAP_TO: u64 = 15;

/// CC fields.
pub mod cc {
    /// Enable.
    pub const EN: u32 = 1;
    /// Shutdown notification (bits 15:14).
    pub const SHN_SHIFT: u32 = 14;
    /// I/O submission queue entry size (bits 19:16, log2).
    pub const IOSQES_SHIFT: u32 = 16;
    /// I/O completion queue entry size (bits 23:20, log2).
    pub const IOCQES_SHIFT: u32 = 20;
    /// The bits that exist (EN, CSS, MPS, AMS, SHN, IOSQES, IOCQES).
    pub const WRITABLE: u32 = 0x00ff_fff1;
}

/// CSTS fields.
pub mod csts {
    /// Ready.
    pub const RDY: u32 = 1;
    /// Shutdown status (bits 3:2).
    pub const SHST_MASK: u32 = 0x3 << 2;
    /// Shutdown processing complete.
    pub const SHST_COMPLETE: u32 = 0x2 << 2;
}

/// The asynchronous events this model raises (all of type Notice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AenKind {
    /// Namespace attribute changed (log page 0x04 says which).
    NsAttrChanged,
    /// ANA change (log page 0x0C).
    AnaChange,
    /// Discovery log page change (log page 0x70).
    DiscoveryLogChange,
}

impl AenKind {
    /// The Asynchronous Event Configuration bit enabling it.
    pub fn aec_bit(self) -> u32 {
        match self {
            AenKind::NsAttrChanged => 1 << 8,
            AenKind::AnaChange => 1 << 11,
            AenKind::DiscoveryLogChange => 1 << 31,
        }
    }

    /// The log page that clears it.
    pub fn log_page(self) -> u8 {
        match self {
            AenKind::NsAttrChanged => 0x04,
            AenKind::AnaChange => 0x0c,
            AenKind::DiscoveryLogChange => 0x70,
        }
    }

    /// The AER completion's dword 0: type Notice (2), the event information, the log page.
    pub fn dw0(self) -> u32 {
        let info: u32 = match self {
            AenKind::NsAttrChanged => 0x00,
            AenKind::AnaChange => 0x03,
            AenKind::DiscoveryLogChange => 0xf0,
        };
        0x2 | (info << 8) | ((self.log_page() as u32) << 16)
    }

    fn bit(self) -> u8 {
        match self {
            AenKind::NsAttrChanged => 1,
            AenKind::AnaChange => 2,
            AenKind::DiscoveryLogChange => 4,
        }
    }
}

/// A controller's mutable state.
pub(crate) struct CtrlState {
    /// Controller Configuration.
    pub cc: u32,
    /// Controller Status.
    pub csts: u32,
    /// Feature values.
    pub feat: Features,
    /// Error log, newest first.
    pub errors: VecDeque<[u8; 64]>,
    /// Errors ever logged (the entries' error count).
    pub error_count: u64,
    /// Changed namespaces since the log was last read (sorted).
    pub changed_ns: Vec<u32>,
    /// More than [`CHANGED_NS_MAX`] changed.
    pub changed_overflow: bool,
    /// Events waiting for an AER.
    aen_pending: VecDeque<AenKind>,
    /// Events reported and not yet cleared by reading their log page (bits of `AenKind::bit`).
    aen_masked: u8,
    /// Connected queues: qid to reactor.
    queues: BTreeMap<u16, usize>,
    /// Last Keep Alive (or Connect).
    last_keep_alive: Instant,
    /// Keep-alive timeout in ms (0: none).
    pub kato_ms: u32,
    /// I/O queues granted by Set Features Number of Queues.
    pub io_queues: u16,
    /// ANA change count (ANA log CHGCNT).
    pub ana_chgcnt: u64,
}

/// One controller. See the module documentation.
pub struct Controller {
    uid: u64,
    cntlid: u16,
    subsystem: Arc<Subsystem>,
    hostnqn: String,
    hostid: [u8; 16],
    limits: TransportLimits,
    admin_reactor: usize,
    ended: AtomicBool,
    /// The ANA state of the namespaces through this controller's listener (as
    /// `AnaState::code`), read on the I/O path without a lock; 0 when ANA reporting is off.
    ana: AtomicU8,
    created: Instant,
    st: Mutex<CtrlState>,
}

static NEXT_UID: AtomicU64 = AtomicU64::new(1);

impl Controller {
    /// A new controller `cntlid` of `subsystem` for the association `a`. Called under the
    /// subsystem's lock: it must not take it.
    pub(crate) fn new(cntlid: u16, subsystem: Arc<Subsystem>, a: &Association<'_>) -> Arc<Controller> {
        let Association { hostnqn, hostid, limits, admin_reactor, kato_ms, ana } = *a;
        let mut queues = BTreeMap::new();
        queues.insert(0, admin_reactor);
        Arc::new(Controller {
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            cntlid,
            subsystem,
            hostnqn: hostnqn.to_string(),
            hostid,
            limits: limits.clone(),
            admin_reactor,
            ended: AtomicBool::new(false),
            ana: AtomicU8::new(ana),
            created: Instant::now(),
            st: Mutex::new(CtrlState {
                cc: 0,
                csts: 0,
                feat: Features::default(),
                errors: VecDeque::new(),
                error_count: 0,
                changed_ns: Vec::new(),
                changed_overflow: false,
                aen_pending: VecDeque::new(),
                aen_masked: 0,
                queues,
                last_keep_alive: Instant::now(),
                kato_ms,
                io_queues: limits.max_io_qpairs_per_ctrlr,
                ana_chgcnt: 0,
            }),
        })
    }

    /// A process-unique id (controller IDs repeat across subsystems).
    pub fn uid(&self) -> u64 {
        self.uid
    }

    /// Controller ID.
    pub fn cntlid(&self) -> u16 {
        self.cntlid
    }

    /// Its subsystem.
    pub fn subsystem(&self) -> &Arc<Subsystem> {
        &self.subsystem
    }

    /// Whether it is a discovery controller.
    pub fn is_discovery(&self) -> bool {
        self.subsystem.kind() == SubsystemKind::Discovery
    }

    /// The host's NQN.
    pub fn hostnqn(&self) -> &str {
        &self.hostnqn
    }

    /// The host identifier.
    pub fn hostid(&self) -> [u8; 16] {
        self.hostid
    }

    /// What the admin queue's transport allows.
    pub fn limits(&self) -> &TransportLimits {
        &self.limits
    }

    /// The address the host connected through.
    pub fn listen(&self) -> &ListenAddress {
        &self.limits.listen
    }

    /// The reactor of its admin queue.
    pub fn admin_reactor(&self) -> usize {
        self.admin_reactor
    }

    /// Whether it has ended.
    pub fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Seconds since it was created (SMART power-on hours).
    pub fn age(&self) -> Duration {
        self.created.elapsed()
    }

    /// Its state.
    pub(crate) fn lock(&self) -> MutexGuard<'_, CtrlState> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What `nvmf_subsystem_get_controllers` shows.
    pub fn info(&self) -> ControllerInfo {
        let st = self.lock();
        ControllerInfo {
            cntlid: self.cntlid,
            hostnqn: self.hostnqn.clone(),
            hostid: Uuid::from_bytes(self.hostid).to_string(),
            num_io_qpairs: st.queues.keys().filter(|q| **q != 0).count() as u32,
        }
    }

    /// Whether CC.EN and CSTS.RDY are set and no shutdown happened.
    pub fn ready(&self) -> bool {
        let st = self.lock();
        st.cc & cc::EN != 0 && st.csts & csts::RDY != 0 && st.csts & csts::SHST_MASK == 0
    }

    /// The status I/O gets through this controller's listener in its ANA state (None:
    /// accessible).
    pub(crate) fn ana_io_status(&self) -> Option<Status> {
        use ferry_nvme::spec::psc;
        match self.ana.load(Ordering::Acquire) {
            0x3 => Some(Status::path(psc::ANA_INACCESSIBLE)),
            0x4 => Some(Status::path(psc::ANA_PERSISTENT_LOSS)),
            0xf => Some(Status::path(psc::ANA_TRANSITION)),
            _ => None,
        }
    }

    /// Records a queue connected on `reactor`; false if `qid` is taken.
    pub(crate) fn register_queue(&self, qid: u16, reactor: usize) -> bool {
        let mut st = self.lock();
        if st.queues.contains_key(&qid) {
            return false;
        }
        st.queues.insert(qid, reactor);
        true
    }

    /// Forgets queue `qid`.
    pub(crate) fn unregister_queue(&self, qid: u16) {
        self.lock().queues.remove(&qid);
    }

    /// The keep-alive timer restarts (a Keep Alive command, or a new KATO).
    pub(crate) fn keep_alive(&self) {
        self.lock().last_keep_alive = Instant::now();
    }

    /// Whether the keep-alive timeout passed without a Keep Alive.
    pub(crate) fn keep_alive_expired(&self) -> bool {
        if self.is_ended() {
            return false;
        }
        let st = self.lock();
        st.kato_ms != 0 && st.last_keep_alive.elapsed() > Duration::from_millis(st.kato_ms as u64)
    }

    /// CAP: MQES from the transport's queue depth, CQR, TO, NVM command set, 4 KiB pages.
    pub fn cap(&self) -> u64 {
        let mqes = (self.limits.max_queue_depth.max(2) - 1) as u64;
        mqes | (1 << 16) | (CAP_TO << 24) | (1 << 37)
    }

    /// Reads a property (fabrics Property Get). `eight` is the 8-byte size attribute.
    pub fn property_get(&self, offset: u32, eight: bool) -> Result<u64, Status> {
        use ferry_nvme::spec::prop;
        let st = self.lock();
        let (value, is_eight) = match offset {
            prop::CAP => (self.cap(), true),
            prop::VS => (VERSION as u64, false),
            prop::CC => (st.cc as u64, false),
            prop::CSTS => (st.csts as u64, false),
            _ => return Err(Status::generic(ferry_nvme::spec::sc::INVALID_FIELD).dnr()),
        };
        if is_eight != eight {
            return Err(Status::generic(ferry_nvme::spec::sc::INVALID_FIELD).dnr());
        }
        Ok(value)
    }

    /// Writes a property (fabrics Property Set): only CC is writable. Returns what the write
    /// asked of the queues.
    pub(crate) fn property_set(&self, offset: u32, eight: bool, value: u64) -> Result<CcChange, Status> {
        use ferry_nvme::spec::{prop, sc};
        if offset != prop::CC || eight {
            return Err(Status::generic(sc::INVALID_FIELD).dnr());
        }
        let new = value as u32;
        let mut st = self.lock();
        let old = st.cc;
        let mut change = CcChange::default();
        if new & !cc::WRITABLE != 0 {
            return Err(Status::generic(sc::INVALID_FIELD).dnr());
        }
        let shn = (new >> cc::SHN_SHIFT) & 3;
        if shn == 3 {
            return Err(Status::generic(sc::INVALID_FIELD).dnr());
        }
        if new & cc::EN != 0 && old & cc::EN == 0 {
            st.csts |= csts::RDY;
        }
        if new & cc::EN == 0 && old & cc::EN != 0 {
            // A controller reset: I/O queues go, AERs are aborted, the admin queue stays.
            st.csts &= !(csts::RDY | csts::SHST_MASK);
            change.reset = true;
        }
        if shn != 0 && (old >> cc::SHN_SHIFT) & 3 == 0 {
            // Nothing volatile to write back (bdev writes complete when durable to the bdev):
            // shutdown processing is complete at once.
            st.csts = (st.csts & !csts::SHST_MASK) | csts::SHST_COMPLETE;
            change.shutdown = true;
        }
        st.cc = new;
        Ok(change)
    }

    /// Adds `nsid` to the changed-namespace list and raises the namespace attribute notice.
    pub(crate) fn namespace_changed(&self, nsid: u32) {
        {
            let mut st = self.lock();
            if !st.changed_overflow {
                if let Err(i) = st.changed_ns.binary_search(&nsid) {
                    if st.changed_ns.len() >= CHANGED_NS_MAX {
                        st.changed_overflow = true;
                        st.changed_ns.clear();
                    } else {
                        st.changed_ns.insert(i, nsid);
                    }
                }
            }
        }
        self.raise(AenKind::NsAttrChanged);
    }

    /// The ANA state of its listener changed.
    pub(crate) fn ana_changed(&self, state: AnaState) {
        if self.subsystem.config().ana_reporting {
            self.ana.store(state.code(), Ordering::Release);
        }
        self.lock().ana_chgcnt += 1;
        self.raise(AenKind::AnaChange);
    }

    /// Queues event `kind` if the host enabled it and the same kind is neither waiting nor
    /// reported-and-uncleared, then has the admin reactor hand it to an outstanding AER.
    pub(crate) fn raise(&self, kind: AenKind) {
        if self.is_ended() {
            return;
        }
        {
            let mut st = self.lock();
            if st.feat.async_event_config & kind.aec_bit() == 0
                || st.aen_masked & kind.bit() != 0
                || st.aen_pending.contains(&kind)
            {
                return;
            }
            st.aen_pending.push_back(kind);
        }
        let uid = self.uid;
        if framework::send(self.admin_reactor, move || queue::deliver_events(uid)).is_err() {
            tracing::debug!(cntlid = self.cntlid, "nvme: event raised after the reactors stopped");
        }
    }

    /// The next waiting event (now masked until its log page is read).
    pub(crate) fn take_event(&self) -> Option<AenKind> {
        let mut st = self.lock();
        let kind = st.aen_pending.pop_front()?;
        st.aen_masked |= kind.bit();
        Some(kind)
    }

    /// Log page `lid` was read without Retain Asynchronous Event: its event may be reported
    /// again.
    pub(crate) fn log_read(&self, lid: u8) {
        for kind in [AenKind::NsAttrChanged, AenKind::AnaChange, AenKind::DiscoveryLogChange] {
            if kind.log_page() == lid {
                self.lock().aen_masked &= !kind.bit();
            }
        }
    }

    /// Logs a failed command in the error log.
    pub(crate) fn record_error(&self, sqid: u16, cid: u16, status: Status, nsid: u32) {
        let mut st = self.lock();
        st.error_count += 1;
        let mut e = [0u8; 64];
        put64(&mut e, 0, st.error_count);
        put16(&mut e, 8, sqid);
        put16(&mut e, 10, cid);
        put16(&mut e, 12, status.to_field());
        put16(&mut e, 14, 0xffff); // parameter error location: not given
        put32(&mut e, 24, nsid);
        // Transport type: PCIe (1) or TCP (3).
        e[29] = if self.limits.pcie.is_some() { 1 } else { 3 };
        st.errors.push_front(e);
        st.errors.truncate(ELPE as usize + 1);
    }

    /// Ends the controller (idempotent): it leaves its subsystem and every queue's transport
    /// is told on its reactor (the queues' `on_disconnect`).
    pub fn end(&self, why: &str) {
        if self.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::info!(nqn = self.subsystem.nqn(), cntlid = self.cntlid, host = %self.hostnqn, why, "nvme: controller ended");
        self.subsystem.remove_controller(self);
        let queues: Vec<(u16, usize)> = std::mem::take(&mut self.lock().queues).into_iter().collect();
        for (qid, reactor) in queues {
            let uid = self.uid;
            let _ = framework::send(reactor, move || queue::disconnect_from_model(uid, qid));
        }
    }

    /// Tells every I/O queue's transport to close (a controller reset or shutdown).
    pub(crate) fn disconnect_io_queues(&self) {
        let queues: Vec<(u16, usize)> = {
            let mut st = self.lock();
            let io: Vec<(u16, usize)> = st.queues.iter().filter(|(q, _)| **q != 0).map(|(q, r)| (*q, *r)).collect();
            st.queues.retain(|q, _| *q == 0);
            io
        };
        for (qid, reactor) in queues {
            let uid = self.uid;
            let _ = framework::send(reactor, move || queue::disconnect_from_model(uid, qid));
        }
    }
}

/// What an admin queue Connect establishes.
#[derive(Clone, Copy)]
pub(crate) struct Association<'a> {
    /// The host's NQN.
    pub hostnqn: &'a str,
    /// The host identifier.
    pub hostid: [u8; 16],
    /// What the transport allows.
    pub limits: &'a TransportLimits,
    /// The admin queue's reactor.
    pub admin_reactor: usize,
    /// Keep-alive timeout (ms; 0: none).
    pub kato_ms: u32,
    /// The listener's ANA state code (0: no ANA reporting).
    pub ana: u8,
}

/// What a CC write asks for beyond the registers.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CcChange {
    /// CC.EN went 1 to 0.
    pub reset: bool,
    /// A shutdown notification.
    pub shutdown: bool,
}
