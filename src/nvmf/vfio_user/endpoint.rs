//! One vfio-user endpoint: the NVMe PCIe function a client sees at `<traddr>/cntrl`, as a
//! [`Device`] of the vfio-user server. It holds the PCI configuration space and the NVMe
//! controller registers (CAP, VS, INTMS/INTMC, CC, CSTS, AQA, ASQ, ACQ); doorbell writes are
//! stored and wake the queue's reactor straight from the event loop; CC.EN brings the
//! controller up (the model's controller and the admin queues, on the admin reactor) and
//! down (queues drained on their reactors, then CSTS.RDY clears).

use super::pci::{self, ConfigSpace, BAR0_SIZE, BAR4_SIZE, BAR5_SIZE, DOORBELLS, MAX_QPAIRS};
use super::queue;
use super::shared::{csts, Shared, Teardown};
use crate::framework;
use crate::nvme::controller::VERSION;
use crate::vfio_user::wire::{device_flags, irq, irq_info_flags, irq_set, region, region_flags};
use crate::vfio_user::{Device, DmaTable, Errno, RegionInfo};
use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// CAP.TO: worst-case time to ready, in 500 ms units (the model's).
const CAP_TO: u64 = 15;
/// How long a reset or a disconnect waits for the queues to drain.
const DRAIN_WAIT: Duration = Duration::from_secs(4);

/// The controller registers the client writes.
#[derive(Debug, Default, Clone, Copy)]
struct Regs {
    cc: u32,
    intms: u32,
    aqa: u32,
    asq: u64,
    acq: u64,
}

/// One endpoint. See the module documentation.
pub struct Endpoint {
    pub(super) shared: Arc<Shared>,
    regs: Mutex<Regs>,
    config: Mutex<ConfigSpace>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn inval() -> Errno {
    Errno(libc::EINVAL)
}

impl Endpoint {
    /// The function for `shared`.
    pub(super) fn new(shared: Arc<Shared>) -> Endpoint {
        Endpoint { shared, regs: Mutex::new(Regs::default()), config: Mutex::new(ConfigSpace::new()) }
    }

    fn cap(&self) -> u64 {
        let mqes = (self.shared.opts.max_queue_depth.max(2) - 1) as u64;
        // MQES, CQR (contiguous queues required), TO, DSTRD 0, CSS: NVM, MPSMIN = MPSMAX = 4 KiB.
        mqes | (1 << 16) | (CAP_TO << 24) | (1 << 37)
    }

    /// The first 0x40 bytes of BAR0 as the host reads them.
    fn register_image(&self) -> [u8; 0x40] {
        let r = *lock(&self.regs);
        let mut b = [0u8; 0x40];
        b[0x00..0x08].copy_from_slice(&self.cap().to_le_bytes());
        b[0x08..0x0c].copy_from_slice(&VERSION.to_le_bytes());
        b[0x0c..0x10].copy_from_slice(&r.intms.to_le_bytes());
        b[0x10..0x14].copy_from_slice(&r.intms.to_le_bytes());
        b[0x14..0x18].copy_from_slice(&r.cc.to_le_bytes());
        b[0x1c..0x20].copy_from_slice(&self.shared.csts.load(Ordering::Acquire).to_le_bytes());
        b[0x24..0x28].copy_from_slice(&r.aqa.to_le_bytes());
        b[0x28..0x30].copy_from_slice(&r.asq.to_le_bytes());
        b[0x30..0x38].copy_from_slice(&r.acq.to_le_bytes());
        b
    }

    fn bar0_read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let end = offset.checked_add(buf.len() as u64).filter(|&e| e <= BAR0_SIZE).ok_or_else(inval)?;
        buf.fill(0);
        if offset < 0x40 {
            let img = self.register_image();
            let n = (end.min(0x40) - offset) as usize;
            buf[..n].copy_from_slice(&img[offset as usize..offset as usize + n]);
        }
        // Other registers read as zero; doorbells are write-only (zero, as SPDK's).
        Ok(())
    }

    fn bar0_write(&self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let end = offset.checked_add(data.len() as u64).filter(|&e| e <= BAR0_SIZE).ok_or_else(inval)?;
        if offset >= DOORBELLS {
            return self.doorbell(offset, data);
        }
        if end > 0x40 {
            // Past the registers Ferry has (CMB, boot partitions, ...): ignored.
            return Ok(());
        }
        let mut img = self.register_image();
        img[offset as usize..end as usize].copy_from_slice(data);
        let touched = |a: u64, b: u64| offset < b && end > a;
        let le32 = |at: usize| u32::from_le_bytes(img[at..at + 4].try_into().expect("4"));
        let le64 = |at: usize| u64::from_le_bytes(img[at..at + 8].try_into().expect("8"));
        let mut new_cc = None;
        {
            let mut r = lock(&self.regs);
            if touched(0x0c, 0x10) {
                r.intms |= le32(0x0c); // INTMS: write 1 to set
            }
            if touched(0x10, 0x14) {
                r.intms &= !le32(0x10); // INTMC: write 1 to clear
            }
            if touched(0x24, 0x28) {
                r.aqa = le32(0x24) & 0x0fff_0fff;
            }
            if touched(0x28, 0x30) {
                r.asq = le64(0x28) & !0xfff;
            }
            if touched(0x30, 0x38) {
                r.acq = le64(0x30) & !0xfff;
            }
            if touched(0x14, 0x18) {
                new_cc = Some(le32(0x14));
            }
        }
        if let Some(cc) = new_cc {
            self.cc_write(cc);
        }
        Ok(())
    }

    /// A doorbell write: stored, counted, and the queue's reactor woken. Runs on the event
    /// loop (never blocks); the value is checked by the queue when it reads it.
    fn doorbell(&self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let rel = offset - DOORBELLS;
        if data.len() != 4 || !rel.is_multiple_of(4) {
            return Err(inval());
        }
        let idx = (rel / 4) as usize;
        if idx >= 2 * MAX_QPAIRS {
            // Past the doorbells of the queues the function has: ignored.
            return Ok(());
        }
        let v = u32::from_le_bytes(data.try_into().expect("4"));
        self.shared.doorbells[idx].store(v, Ordering::Release);
        self.shared.traps[idx].fetch_add(1, Ordering::Relaxed);
        self.shared.kick(idx / 2);
        Ok(())
    }

    fn cc_write(&self, new: u32) {
        let (old, r) = {
            let mut r = lock(&self.regs);
            let old = r.cc;
            r.cc = new;
            (old, *r)
        };
        let (was, is) = (old & 1 != 0, new & 1 != 0);
        if !was && is {
            self.enable(r);
        } else if was && !is {
            self.disable(false);
        } else if is && (new >> 14) & 3 != 0 && (old >> 14) & 3 == 0 {
            // Shutdown notification: nothing volatile to write back (a completed bdev write
            // is on the bdev); queues keep running until the host disables the controller.
            let cur = self.shared.csts.load(Ordering::Acquire);
            self.shared.csts.store((cur & !csts::SHST_MASK) | csts::SHST_COMPLETE, Ordering::Release);
            tracing::info!(traddr = %self.shared.traddr, "vfio-user: controller shut down by the host");
        }
    }

    fn enable(&self, r: Regs) {
        let shared = &self.shared;
        if shared.csts.load(Ordering::Acquire) & csts::RDY != 0 || shared.stopping.load(Ordering::Acquire) {
            shared.fail("CC.EN set while the controller was still ready or resetting");
            return;
        }
        // Admin queues of up to 4096 entries (AQA's fields): hosts size them themselves
        // (SeaBIOS asks for 64 and 256).
        let asqs = (r.aqa & 0xfff) + 1;
        let acqs = ((r.aqa >> 16) & 0xfff) + 1;
        let css = (r.cc >> 4) & 7;
        let mps = (r.cc >> 7) & 0xf;
        let ams = (r.cc >> 11) & 7;
        let why = if asqs < 2 || acqs < 2 {
            Some(format!("admin queue sizes {asqs}/{acqs} below 2"))
        } else if css != 0 || mps != 0 || ams != 0 {
            Some(format!("CC {:#x}: only the NVM command set, 4 KiB pages and round robin", r.cc))
        } else {
            None
        };
        if let Some(why) = why {
            return shared.fail(&why);
        }
        let s = shared.clone();
        let cc = r.cc;
        let result = framework::call(shared.admin_reactor, move || {
            queue::enable_admin(s, r.asq, r.acq, asqs as u16, acqs as u16, cc)
        });
        match result {
            Ok(Ok(())) => {
                shared.csts.store(csts::RDY, Ordering::Release);
                tracing::info!(traddr = %shared.traddr, nqn = %shared.nqn, "vfio-user: controller enabled");
            }
            Ok(Err(why)) => {
                // Whatever enable_admin made goes again (before CFS is set: the end of a
                // disable clears CSTS).
                self.disable(false).wait(DRAIN_WAIT);
                shared.fail(&why);
            }
            Err(e) => shared.fail(&format!("the admin reactor: {e}")),
        }
    }

    /// CC.EN 1 to 0 (or a reset): every reactor drains and drops the endpoint's queues;
    /// CSTS goes to 0 (or shutdown complete) once the last is done.
    fn disable(&self, shutdown: bool) -> Arc<Teardown> {
        let shared = &self.shared;
        shared.stopping.store(true, Ordering::Release);
        let n = framework::reactors().len();
        let t = Teardown::new(n, shutdown);
        *lock(&shared.teardown) = Some(t.clone());
        for i in 0..n {
            let (s, t2) = (shared.clone(), t.clone());
            if framework::send(i, move || queue::stop_here(s, t2)).is_err() {
                // A stopped reactor has nothing running: count it done.
                if t.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    shared.csts.store(0, Ordering::Release);
                    shared.stopping.store(false, Ordering::Release);
                    t.set_done();
                }
            }
        }
        t
    }

    /// A function-level reset: the controller disabled (waiting for its queues), the
    /// registers and configuration space as after power-on.
    fn reset_all(&self) {
        let t = self.disable(false);
        if !t.wait(DRAIN_WAIT) {
            tracing::warn!(traddr = %self.shared.traddr, "vfio-user: queues still draining after a reset");
        }
        *lock(&self.regs) = Regs::default();
        *lock(&self.config) = ConfigSpace::new();
    }
}

impl Device for Endpoint {
    fn device_flags(&self) -> u32 {
        device_flags::PCI | device_flags::RESET
    }

    fn num_regions(&self) -> u32 {
        region::COUNT
    }

    fn num_irqs(&self) -> u32 {
        irq::COUNT
    }

    fn region_info(&self, index: u32) -> Result<(RegionInfo, Option<File>), Errno> {
        let rw = region_flags::READ | region_flags::WRITE;
        let info = |size: u64| RegionInfo { flags: rw, size, offset: 0, sparse: Vec::new() };
        let i = match index {
            region::CONFIG => info(pci::CONFIG_SIZE as u64),
            region::BAR0 => info(BAR0_SIZE),
            region::BAR4 => info(BAR4_SIZE),
            region::BAR5 => info(BAR5_SIZE),
            i if i < region::COUNT => RegionInfo::default(),
            _ => return Err(inval()),
        };
        Ok((i, None))
    }

    fn irq_info(&self, index: u32) -> Result<(u32, u32), Errno> {
        match index {
            irq::MSIX => Ok((irq_info_flags::EVENTFD, pci::MSIX_VECTORS as u32)),
            i if i < irq::COUNT => Ok((0, 0)),
            _ => Err(inval()),
        }
    }

    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        match index {
            region::CONFIG => lock(&self.config).read(offset, buf).then_some(()).ok_or_else(inval),
            region::BAR0 => self.bar0_read(offset, buf),
            region::BAR4 | region::BAR5 => {
                let size = if index == region::BAR4 { BAR4_SIZE } else { BAR5_SIZE };
                offset.checked_add(buf.len() as u64).filter(|&e| e <= size).ok_or_else(inval)?;
                // The VMM emulates the MSI-X table; no vector is ever pending here.
                buf.fill(0);
                Ok(())
            }
            _ => Err(inval()),
        }
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        match index {
            region::CONFIG => lock(&self.config).write(offset, data).then_some(()).ok_or_else(inval),
            region::BAR0 => self.bar0_write(offset, data),
            region::BAR4 | region::BAR5 => {
                let size = if index == region::BAR4 { BAR4_SIZE } else { BAR5_SIZE };
                offset.checked_add(data.len() as u64).filter(|&e| e <= size).ok_or_else(inval)?;
                Ok(())
            }
            _ => Err(inval()),
        }
    }

    fn region_write_fast(&self, index: u32, offset: u64, data: &[u8]) -> Option<Result<(), Errno>> {
        (index == region::BAR0 && offset >= DOORBELLS).then(|| self.bar0_write(offset, data))
    }

    fn set_irqs(
        &self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        _data: &[u8],
        fds: Vec<File>,
    ) -> Result<(), Errno> {
        let data_kind = flags & irq_set::DATA_MASK;
        let action = flags & irq_set::ACTION_MASK_ALL;
        if index != irq::MSIX {
            // No INTx, MSI, error or request interrupts: only "disable all" is meaningful.
            return if count == 0 && index < irq::COUNT { Ok(()) } else { Err(inval()) };
        }
        let end = start.checked_add(count).filter(|&e| e as usize <= pci::MSIX_VECTORS).ok_or_else(inval)?;
        match (data_kind, action) {
            (irq_set::DATA_NONE, irq_set::ACTION_TRIGGER) if count == 0 => {
                // start 0, count 0: every vector off.
                self.shared.clear_vectors();
            }
            (irq_set::DATA_EVENTFD, irq_set::ACTION_TRIGGER) => {
                if !fds.is_empty() && fds.len() != count as usize {
                    return Err(inval());
                }
                let files: Vec<Option<File>> = if fds.is_empty() {
                    (start..end).map(|_| None).collect()
                } else {
                    fds.into_iter().map(Some).collect()
                };
                self.shared.set_vectors(start as usize, files);
            }
            // Triggering or masking from the client side: nothing for Ferry to do (the VMM
            // masks MSI-X vectors itself).
            _ => {}
        }
        Ok(())
    }

    fn dma_changed(&self, table: Arc<DmaTable>) {
        self.shared.set_table(table.clone());
        let uid = self.shared.uid;
        let _ = framework::call_on_each(move || queue::set_table_here(uid, table.clone()));
    }

    fn reset(&self) -> Result<(), Errno> {
        tracing::info!(traddr = %self.shared.traddr, "vfio-user: device reset");
        self.reset_all();
        Ok(())
    }

    fn disconnected(&self) {
        self.reset_all();
        self.shared.clear_vectors();
    }
}
