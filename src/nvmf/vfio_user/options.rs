//! `nvmf_create_transport -t VFIOUSER`'s options, with SPDK's defaults (`lib/nvmf/vfio_user.c`
//! `nvmf_vfio_user_opts_init`).

use super::pci::MAX_QPAIRS;
use serde::Serialize;

/// The VFIOUSER transport's options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VfioUserOptions {
    /// Largest I/O queue (entries): CAP.MQES + 1.
    pub max_queue_depth: u16,
    /// Most I/O queues per controller.
    pub max_io_qpairs_per_ctrlr: u16,
    /// In-capsule data (none on PCIe; reported).
    pub in_capsule_data_size: u32,
    /// Largest transfer (MDTS).
    pub max_io_size: u32,
    /// I/O unit size (reported).
    pub io_unit_size: u32,
    /// SPDK's admin queue depth (reported: a PCIe host sizes its admin queue through AQA,
    /// up to 4096 entries).
    pub max_aq_depth: u16,
    /// Whether BAR0 may be mmap'ed by the client (SPDK's option; Ferry traps BAR0 either way).
    pub disable_mappable_bar0: bool,
    /// SPDK's adaptive interrupts (reported; Ferry sends one interrupt per completion queue
    /// per poll).
    pub disable_adaptive_irq: bool,
    /// Doorbell Buffer Config (shadow doorbells) not offered.
    pub disable_shadow_doorbells: bool,
}

impl Default for VfioUserOptions {
    fn default() -> Self {
        VfioUserOptions {
            max_queue_depth: 256,
            max_io_qpairs_per_ctrlr: (MAX_QPAIRS - 1) as u16,
            in_capsule_data_size: 0,
            max_io_size: 131072,
            io_unit_size: 131072,
            max_aq_depth: 32,
            disable_mappable_bar0: false,
            disable_adaptive_irq: false,
            disable_shadow_doorbells: false,
        }
    }
}

impl VfioUserOptions {
    /// Checks what the function can honour.
    pub fn check(&self) -> Result<(), String> {
        if self.max_queue_depth < 2 || self.max_queue_depth > 4096 {
            return Err(format!("max_queue_depth {} is not within 2..=4096", self.max_queue_depth));
        }
        if self.max_aq_depth < 2 || self.max_aq_depth > 4096 {
            return Err(format!("max_aq_depth {} is not within 2..=4096", self.max_aq_depth));
        }
        if self.max_io_qpairs_per_ctrlr == 0 || self.max_io_qpairs_per_ctrlr as usize >= MAX_QPAIRS {
            return Err(format!(
                "max_io_qpairs_per_ctrlr {} is not within 1..={}",
                self.max_io_qpairs_per_ctrlr,
                MAX_QPAIRS - 1
            ));
        }
        if self.max_io_size < 4096 || !self.max_io_size.is_power_of_two() || self.max_io_size > (2 << 20) {
            return Err(format!("max_io_size {} must be a power of two in 4096..=2097152", self.max_io_size));
        }
        Ok(())
    }
}
