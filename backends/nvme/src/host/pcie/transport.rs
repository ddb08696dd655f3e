//! The PCIe transport: what the controller state machine opens its queue pairs with, over a
//! [`PciFunction`].
//!
//! The admin queue pair prepares the function (see [`super::qpair`]); after Set Features
//! Number of Queues the controller runs the commands [`Transport::queue_setup`] gives:
//! Doorbell Buffer Config when the controller offers it (OACS bit 8), then Create I/O
//! Completion Queue and Create I/O Submission Queue for every I/O queue, each on its fixed
//! area of the arena, its completion queue signalling MSI-X vector `qid` when the carrier set
//! one up. I/O queue pairs are then opened on the reactors with [`Transport::connect_io`].

use super::function::{DmaArena, PciFunction};
use super::layout::Layout;
use super::qpair::PcieQpair;
use crate::host::identify::CtrlrData;
use crate::host::{HostError, IoLimits, SetupCmd, Transport};
use crate::spec::{admin, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// OACS bit 8: Doorbell Buffer Config supported.
const OACS_DBBUF: u16 = 1 << 8;
/// Most I/O queues: the shadow doorbells of 256 queues (with the admin queue's) fill the one
/// page Doorbell Buffer Config points at.
pub const MAX_IO_QUEUES: u16 = 255;

/// What the transport and its queue pairs share.
pub struct Inner<F: PciFunction> {
    pub(super) f: Arc<F>,
    pub(super) layout: Layout,
    pub(super) arena: DmaArena,
    shadow_wanted: bool,
    shadow_active: AtomicBool,
    cap: AtomicU64,
}

impl<F: PciFunction> Inner<F> {
    /// Doorbell stride in bytes (4 << CAP.DSTRD; 4 until CAP was read).
    pub(super) fn doorbell_stride(&self) -> u32 {
        4 << ((self.cap.load(Ordering::Relaxed) >> 32) & 0xf)
    }

    pub(super) fn set_cap(&self, cap: u64) {
        self.cap.store(cap, Ordering::Relaxed);
    }

    pub(super) fn shadow_active(&self) -> bool {
        self.shadow_active.load(Ordering::Acquire)
    }

    pub(super) fn set_shadow_active(&self) {
        self.shadow_active.store(true, Ordering::Release);
    }

    /// The MSI-X vector of queue `qid`'s completion queue, when the carrier has one for it.
    pub(super) fn vector_of(&self, qid: u16) -> Option<u16> {
        (qid > 0 && self.f.irq_fd(qid).is_some()).then_some(qid)
    }

    /// Doorbell `index` (2·qid for an SQ tail, 2·qid + 1 for a CQ head) in the shadow buffers.
    pub(super) fn shadow_of(&self, index: usize) -> super::qpair::ShadowRef {
        let stride = self.doorbell_stride() as usize;
        // SAFETY: index < 2 · (MAX_IO_QUEUES + 1) and the stride is 4 (checked before
        // Doorbell Buffer Config is sent), so both words lie in the doorbell pages.
        unsafe {
            super::qpair::ShadowRef {
                value: self.arena.vaddr.add(self.layout.shadow + index * stride).cast(),
                eventidx: self.arena.vaddr.add(self.layout.eventidx + index * stride).cast_const().cast(),
            }
        }
    }
}

/// The NVMe PCIe transport over function `F`.
pub struct PcieTransport<F: PciFunction> {
    inner: Arc<Inner<F>>,
}

impl<F: PciFunction> PcieTransport<F> {
    /// The transport over `f`, whose arena must hold `layout` (`Layout::len`).
    /// `shadow_doorbells`: use Doorbell Buffer Config when the controller offers it.
    pub fn new(f: Arc<F>, layout: Layout, shadow_doorbells: bool) -> Result<PcieTransport<F>, HostError> {
        let arena = f.arena();
        if arena.len < layout.len() || arena.vaddr.is_null() {
            return Err(HostError::Invalid(format!(
                "the DMA arena holds {} bytes, the queues need {}",
                arena.len,
                layout.len()
            )));
        }
        if layout.io_queues > MAX_IO_QUEUES {
            return Err(HostError::Invalid(format!("{} I/O queues (at most {MAX_IO_QUEUES})", layout.io_queues)));
        }
        let inner = Inner {
            f,
            layout,
            arena,
            shadow_wanted: shadow_doorbells,
            shadow_active: AtomicBool::new(false),
            cap: AtomicU64::new(0),
        };
        Ok(PcieTransport { inner: Arc::new(inner) })
    }

    /// The function.
    pub fn function(&self) -> &Arc<F> {
        &self.inner.f
    }

    /// Whether the current controller generation uses shadow doorbells.
    pub fn shadow_doorbells_active(&self) -> bool {
        self.inner.shadow_active()
    }
}

impl<F: PciFunction> Transport for PcieTransport<F> {
    type Qpair = PcieQpair<F>;

    fn connect_admin(&self, _kato_ms: u32) -> Result<PcieQpair<F>, HostError> {
        // A (re)connection disables the controller first, which forgets any Doorbell Buffer
        // Config: the admin queue pair rings BAR0 until it is sent again. The shadow words
        // are zeroed only then (`queue_setup`), not here: the controller is still enabled
        // until the admin queue pair's bring-up clears CC.EN, and it reads the shadow SQ
        // tails while it runs. Zeroed now, an I/O SQ's tail would jump back behind its head
        // and the controller would run the previous lap's entries again, with CIDs whose
        // bounce buffers newer commands had filled: their data written at old LBAs.
        self.inner.shadow_active.store(false, Ordering::Release);
        Ok(PcieQpair::admin(self.inner.clone()))
    }

    fn connect_io(&self, qid: u16, sqsize: u16, _cntlid: u16, _limits: &IoLimits) -> Result<PcieQpair<F>, HostError> {
        PcieQpair::io(self.inner.clone(), qid, sqsize)
    }

    fn describe(&self) -> String {
        self.inner.f.describe()
    }

    fn is_fabrics(&self) -> bool {
        false
    }

    fn queue_setup(&self, data: &CtrlrData, io_queues: u16, qsize: u16) -> Vec<SetupCmd> {
        let l = &self.inner.layout;
        let iova = self.inner.arena.iova;
        let mut cmds = Vec::new();
        // The controller was reset (CC.EN cleared, so it forgot any Doorbell Buffer Config and
        // reads no shadow word) and has no I/O queue yet: start the shadow doorbells and event
        // indexes over at zero. A queue's shadow SQ tail is read when it is created; a stale
        // one would make the controller run old entries left in that SQ's memory. (Linux
        // clears its shadow doorbells on reset for the same reason.)
        // SAFETY: both doorbell areas lie at the arena's start (the layout), inside it.
        unsafe { std::ptr::write_bytes(self.inner.arena.vaddr, 0, l.eventidx * 2) };
        if self.inner.shadow_wanted && data.oacs & OACS_DBBUF != 0 && self.inner.doorbell_stride() == 4 {
            let mut c = Command::new(admin::DOORBELL_BUFFER_CONFIG, 0);
            c.set_prp1(iova + l.shadow as u64);
            c.set_prp2(iova + l.eventidx as u64);
            cmds.push(SetupCmd { cmd: c, required: false, what: "Doorbell Buffer Config" });
        }
        for qid in 1..=io_queues.min(l.io_queues) {
            let Some(area) = l.queue(qid, qsize) else { break };
            // The completion queue starts zeroed (phase 0) before the controller posts in it.
            // SAFETY: the CQ lies in the area, inside the arena; no queue pair of this
            // generation exists yet.
            unsafe { std::ptr::write_bytes(self.inner.arena.vaddr.add(area.cq), 0, qsize as usize * 16) };
            let size = (qsize as u32 - 1) << 16 | qid as u32;
            let mut cq = Command::new(admin::CREATE_IO_CQ, 0);
            cq.set_prp1(iova + area.cq as u64);
            cq.set_cdw10(size);
            // Physically contiguous; interrupts on vector qid when there is one.
            cq.set_cdw11(match self.inner.vector_of(qid) {
                Some(v) => (v as u32) << 16 | 0b11,
                None => 0b01,
            });
            cmds.push(SetupCmd { cmd: cq, required: true, what: "Create I/O Completion Queue" });
            let mut sq = Command::new(admin::CREATE_IO_SQ, 0);
            sq.set_prp1(iova + area.sq as u64);
            sq.set_cdw10(size);
            sq.set_cdw11((qid as u32) << 16 | 0b01);
            cmds.push(SetupCmd { cmd: sq, required: true, what: "Create I/O Submission Queue" });
        }
        cmds
    }

    fn max_io_queues(&self) -> u16 {
        self.inner.layout.io_queues
    }

    fn max_queue_size(&self) -> u16 {
        self.inner.layout.io_qsize
    }
}
