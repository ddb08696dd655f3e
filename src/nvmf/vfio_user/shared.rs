//! What every thread of one endpoint shares: the controller's status register, the trapped
//! doorbells and their counters, where each queue runs, the current DMA table, the MSI-X
//! eventfds, and the controller-wide queue table admin commands check against.
//!
//! The event loop (doorbell writes), the endpoint's worker (registers, interrupts, DMA) and
//! the reactors (queues) meet here; the data path touches only atomics.

use super::options::VfioUserOptions;
use super::pci::MAX_QPAIRS;
use crate::nvme::fabrics::TransportLimits;
use crate::vfio_user::DmaTable;
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use vmm_sys_util::eventfd::EventFd;

/// CSTS bits.
pub mod csts {
    /// Ready.
    pub const RDY: u32 = 1;
    /// Controller fatal status.
    pub const CFS: u32 = 1 << 1;
    /// Shutdown processing complete.
    pub const SHST_COMPLETE: u32 = 0x2 << 2;
    /// Shutdown status bits.
    pub const SHST_MASK: u32 = 0x3 << 2;
}

/// A submission queue as admin commands see it.
#[derive(Debug, Clone, Copy)]
pub struct SqEntry {
    /// Its reactor.
    pub reactor: usize,
}

/// A completion queue as admin commands see it.
#[derive(Debug, Clone, Copy)]
pub struct CqEntry {
    /// Its reactor.
    pub reactor: usize,
    /// Submission queues posting to it.
    pub refs: u16,
}

/// The controller's queues (qid-indexed), kept by admin commands on the admin reactor.
#[derive(Debug)]
pub struct QueueTable {
    /// Submission queues.
    pub sq: Vec<Option<SqEntry>>,
    /// Completion queues.
    pub cq: Vec<Option<CqEntry>>,
}

impl Default for QueueTable {
    fn default() -> Self {
        QueueTable { sq: vec![None; MAX_QPAIRS], cq: vec![None; MAX_QPAIRS] }
    }
}

/// A controller disable in progress: groups left to drain, and who waits.
pub struct Teardown {
    /// Reactors that have not finished yet.
    pub remaining: AtomicUsize,
    /// Shutdown (SHST complete) rather than reset afterwards.
    pub shutdown: bool,
    done: Mutex<bool>,
    cv: std::sync::Condvar,
}

impl Teardown {
    /// A teardown over `n` reactors.
    pub fn new(n: usize, shutdown: bool) -> Arc<Teardown> {
        Arc::new(Teardown { remaining: AtomicUsize::new(n), shutdown, done: Mutex::new(false), cv: Default::default() })
    }

    /// Marks it done and wakes waiters.
    pub fn set_done(&self) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }

    /// Waits up to `timeout`; whether it finished.
    pub fn wait(&self, timeout: std::time::Duration) -> bool {
        let g = self.done.lock().unwrap_or_else(|e| e.into_inner());
        let (g, _) = self.cv.wait_timeout_while(g, timeout, |d| !*d).unwrap_or_else(|e| e.into_inner());
        *g
    }
}

/// One endpoint's shared state. See the module documentation.
pub struct Shared {
    /// Process-unique id (keys the reactors' tables).
    pub uid: u64,
    /// The subsystem served.
    pub nqn: String,
    /// The endpoint's directory (traddr).
    pub traddr: String,
    /// Transport options.
    pub opts: Arc<VfioUserOptions>,
    /// What Connect is given for this endpoint's queues.
    pub limits: TransportLimits,
    /// Host NQN and identifier the controller is made with.
    pub hostnqn: String,
    /// Host identifier.
    pub hostid: [u8; 16],
    /// The reactor of the admin queue.
    pub admin_reactor: usize,
    /// CSTS.
    pub csts: AtomicU32,
    /// A disable is running (the model ending queues is then not a fatal error).
    pub stopping: AtomicBool,
    /// Trapped doorbell values (SQ y tail at 2y, CQ y head at 2y+1).
    pub doorbells: Box<[AtomicU32]>,
    /// Trapped doorbell writes, per doorbell.
    pub traps: Box<[AtomicU64]>,
    /// Reactor + 1 of each queue pair's group (0: none), for waking it.
    pub qreactor: Box<[AtomicUsize]>,
    /// One wake-up eventfd per reactor, registered by the endpoint's group there.
    pub kicks: Vec<EventFd>,
    /// The current DMA table.
    table: Mutex<Arc<DmaTable>>,
    /// MSI-X vectors' eventfds.
    vectors: Mutex<Vec<Option<Arc<File>>>>,
    /// Bumped on every change of `vectors`.
    pub vectors_gen: AtomicU64,
    /// Doorbell Buffer Config: (shadow doorbells, event indexes) guest addresses.
    pub dbbuf: Mutex<Option<(u64, u64)>>,
    /// Set Features Interrupt Coalescing (08h): aggregation threshold (bits 7:0, 0's based)
    /// and time (bits 15:8, 100 µs units); 0 aggregates nothing.
    pub coalescing: AtomicU32,
    /// Set Features Interrupt Vector Configuration (09h): vectors with Coalescing Disable set.
    pub coalescing_off: Box<[AtomicBool]>,
    /// The controller's queues.
    pub queues: Mutex<QueueTable>,
    /// The disable in progress.
    pub teardown: Mutex<Option<Arc<Teardown>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// A new endpoint's state; its host identity is new, its admin queue runs on reactor
    /// `uid % reactors`.
    pub fn new(
        uid: u64,
        nqn: &str,
        traddr: &str,
        opts: Arc<VfioUserOptions>,
        limits: TransportLimits,
        reactors: usize,
    ) -> std::io::Result<Shared> {
        let hostid = *uuid::Uuid::new_v4().as_bytes();
        let admin_reactor = (uid as usize) % reactors.max(1);
        let kicks = (0..reactors).map(|_| EventFd::new(libc::EFD_NONBLOCK)).collect::<Result<Vec<_>, _>>()?;
        Ok(Shared {
            uid,
            nqn: nqn.to_string(),
            traddr: traddr.to_string(),
            opts,
            limits,
            hostnqn: format!("nqn.2014-08.org.nvmexpress:uuid:{}", uuid::Uuid::from_bytes(hostid)),
            hostid,
            admin_reactor,
            csts: AtomicU32::new(0),
            stopping: AtomicBool::new(false),
            doorbells: (0..2 * MAX_QPAIRS).map(|_| AtomicU32::new(0)).collect(),
            traps: (0..2 * MAX_QPAIRS).map(|_| AtomicU64::new(0)).collect(),
            qreactor: (0..MAX_QPAIRS).map(|_| AtomicUsize::new(0)).collect(),
            kicks,
            table: Mutex::new(Arc::new(DmaTable::default())),
            vectors: Mutex::new(vec![None; super::pci::MSIX_VECTORS]),
            vectors_gen: AtomicU64::new(0),
            dbbuf: Mutex::new(None),
            coalescing: AtomicU32::new(0),
            coalescing_off: (0..super::pci::MSIX_VECTORS).map(|_| AtomicBool::new(false)).collect(),
            queues: Mutex::new(QueueTable::default()),
            teardown: Mutex::new(None),
        })
    }

    /// The reactor of queue pair `qid` (Ferry spreads them: qid y on the admin reactor + y).
    pub fn reactor_of(&self, qid: u16) -> usize {
        (self.admin_reactor + qid as usize) % self.kicks.len().max(1)
    }

    /// Records a fatal controller error (CSTS.CFS): the queues stop fetching commands until
    /// the host resets the controller.
    pub fn fail(&self, why: &str) {
        let old = self.csts.fetch_or(super::shared::csts::CFS, Ordering::AcqRel);
        if old & csts::CFS == 0 {
            tracing::warn!(traddr = %self.traddr, nqn = %self.nqn, why, "vfio-user: controller fatal status");
        }
    }

    /// Whether CSTS.CFS is set.
    #[inline]
    pub fn failed(&self) -> bool {
        self.csts.load(Ordering::Acquire) & csts::CFS != 0
    }

    /// Wakes the reactor of queue pair `qid`, if it has one.
    #[inline]
    pub fn kick(&self, qid: usize) {
        let Some(r) = self.qreactor.get(qid) else { return };
        let r = r.load(Ordering::Acquire);
        if r != 0 {
            // Our own non-blocking eventfd: a full counter means the reactor is awake anyway.
            let _ = self.kicks[r - 1].write(1);
        }
    }

    /// The current DMA table.
    pub fn table(&self) -> Arc<DmaTable> {
        lock(&self.table).clone()
    }

    /// Replaces the DMA table.
    pub fn set_table(&self, t: Arc<DmaTable>) {
        *lock(&self.table) = t;
    }

    /// The eventfd of MSI-X vector `v`.
    pub fn vector(&self, v: u16) -> Option<Arc<File>> {
        lock(&self.vectors).get(v as usize).cloned().flatten()
    }

    /// Sets (or clears) vectors `start..start+fds.len()`.
    pub fn set_vectors(&self, start: usize, fds: Vec<Option<File>>) {
        let mut v = lock(&self.vectors);
        for (i, f) in fds.into_iter().enumerate() {
            if let Some(slot) = v.get_mut(start + i) {
                *slot = f.map(Arc::new);
            }
        }
        drop(v);
        self.vectors_gen.fetch_add(1, Ordering::AcqRel);
    }

    /// Forgets every vector.
    pub fn clear_vectors(&self) {
        lock(&self.vectors).iter_mut().for_each(|v| *v = None);
        self.vectors_gen.fetch_add(1, Ordering::AcqRel);
    }
}
