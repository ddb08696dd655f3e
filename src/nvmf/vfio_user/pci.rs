//! The PCI function the guest sees: configuration space (an NVMe controller: class code
//! 01/08/02, with Power Management, PCI Express and MSI-X capabilities) and the layout of
//! its BARs (BAR0 registers and doorbells, BAR4 the MSI-X table, BAR5 the pending bits; the
//! VMM emulates the table itself and gives Ferry an eventfd per vector).
//!
//! SPDK's vfio-user function is the model (`lib/nvmf/vfio_user.c`, `vfio_user_dev_info_fill`):
//! the same IDs (Nutanix's vendor ID, which SPDK's and Linux's drivers know) and capabilities.

/// PCI vendor ID (Nutanix, as SPDK's vfio-user controller).
pub const VENDOR_ID: u16 = 0x4e58;
/// PCI device ID.
pub const DEVICE_ID: u16 = 0x0001;
/// Configuration space size (PCI Express: 4 KiB).
pub const CONFIG_SIZE: usize = 0x1000;
/// Queue pairs (admin included) the function has doorbells for.
pub const MAX_QPAIRS: usize = 128;
/// MSI-X vectors: one per queue pair.
pub const MSIX_VECTORS: usize = MAX_QPAIRS;
/// Where BAR0's doorbells start.
pub const DOORBELLS: u64 = 0x1000;
/// BAR0: registers and a doorbell page (a power of two, as BARs are).
pub const BAR0_SIZE: u64 = 0x4000;
/// BAR4: the MSI-X table (16 bytes a vector), page aligned.
pub const BAR4_SIZE: u64 = ((MSIX_VECTORS as u64 * 16) + 0xfff) & !0xfff;
/// BAR5: the pending bit array, page aligned.
pub const BAR5_SIZE: u64 = 0x1000;

const CAP_PM: usize = 0x40;
const CAP_PCIE: usize = 0x50;
const CAP_MSIX: usize = 0x90;

/// The configuration space: its bytes and which bits the guest may write.
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SIZE],
    writable: [u8; CONFIG_SIZE],
}

impl Default for ConfigSpace {
    fn default() -> Self {
        ConfigSpace::new()
    }
}

impl ConfigSpace {
    /// The function as it is after reset.
    pub fn new() -> ConfigSpace {
        let mut c = ConfigSpace { bytes: [0; CONFIG_SIZE], writable: [0; CONFIG_SIZE] };
        c.put16(0x00, VENDOR_ID);
        c.put16(0x02, DEVICE_ID);
        // Status: capabilities list.
        c.put16(0x06, 1 << 4);
        // Revision 0; class code: mass storage (01), non-volatile memory (08), NVMe (02).
        c.bytes[0x09] = 0x02;
        c.bytes[0x0a] = 0x08;
        c.bytes[0x0b] = 0x01;
        // BAR0/1: 64-bit memory BAR, not prefetchable (the VMM sizes it from the region).
        c.put32(0x10, 0x4);
        // BAR4 and BAR5: 32-bit memory BARs for the MSI-X table and pending bits.
        c.put32(0x20, 0x0);
        c.put32(0x24, 0x0);
        c.put16(0x2c, VENDOR_ID);
        c.put16(0x2e, 0);
        c.bytes[0x34] = CAP_PM as u8;
        // Interrupt pin 0: no INTx, MSI-X only (Linux's nvme driver asks for MSI-X first).
        c.bytes[0x3d] = 0;
        // Command: memory space, bus master, interrupt disable; cache line, latency, line.
        c.writable[0x04] = 0x06;
        c.writable[0x05] = 0x04;
        c.writable[0x0c] = 0xff;
        c.writable[0x0d] = 0xff;
        c.writable[0x3c] = 0xff;
        // Power Management (version 3), No_Soft_Reset; PMCSR power state writable.
        c.bytes[CAP_PM] = 0x01;
        c.bytes[CAP_PM + 1] = CAP_PCIE as u8;
        c.put16(CAP_PM + 2, 0x0003);
        c.put16(CAP_PM + 4, 1 << 3);
        c.writable[CAP_PM + 4] = 0x03;
        // PCI Express (version 2, endpoint): FLR and role-based error reporting in Device
        // Capabilities, completion timeout disable in Device Capabilities 2.
        c.bytes[CAP_PCIE] = 0x10;
        c.bytes[CAP_PCIE + 1] = CAP_MSIX as u8;
        c.put16(CAP_PCIE + 2, 0x0002);
        c.put32(CAP_PCIE + 0x04, (1 << 28) | (1 << 15));
        c.put32(CAP_PCIE + 0x0c, 0x0000_0011); // Link Capabilities: 2.5 GT/s x1
        c.put16(CAP_PCIE + 0x12, 0x0011); // Link Status: 2.5 GT/s x1
        c.put32(CAP_PCIE + 0x24, 1 << 4);
        // Device Control and Device Control 2, Link Control: writable.
        for off in [0x08, 0x09, 0x10, 0x11, 0x28, 0x29] {
            c.writable[CAP_PCIE + off] = 0xff;
        }
        // MSI-X: table size, the table in BAR4 at 0, the pending bits in BAR5 at 0; enable
        // and function mask writable.
        c.bytes[CAP_MSIX] = 0x11;
        c.bytes[CAP_MSIX + 1] = 0;
        c.put16(CAP_MSIX + 2, (MSIX_VECTORS - 1) as u16);
        c.writable[CAP_MSIX + 3] = 0xc0;
        c.put32(CAP_MSIX + 4, 4);
        c.put32(CAP_MSIX + 8, 5);
        c
    }

    fn put16(&mut self, at: usize, v: u16) {
        self.bytes[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn put32(&mut self, at: usize, v: u32) {
        self.bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// Reads `buf.len()` bytes at `offset`; false when out of range.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> bool {
        match range(offset, buf.len()) {
            Some(r) => {
                buf.copy_from_slice(&self.bytes[r]);
                true
            }
            None => false,
        }
    }

    /// Writes `data` at `offset`, changing only writable bits (the rest, including BARs,
    /// which the VMM emulates, stays as it is); false when out of range.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> bool {
        let Some(r) = range(offset, data.len()) else { return false };
        for (i, &v) in r.zip(data) {
            let m = self.writable[i];
            self.bytes[i] = (self.bytes[i] & !m) | (v & m);
        }
        true
    }

    /// Whether MSI-X is enabled (message control bit 15).
    pub fn msix_enabled(&self) -> bool {
        self.bytes[CAP_MSIX + 3] & 0x80 != 0
    }
}

fn range(offset: u64, len: usize) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(len)?;
    (end <= CONFIG_SIZE).then_some(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le16(b: &[u8]) -> u16 {
        u16::from_le_bytes([b[0], b[1]])
    }

    #[test]
    fn an_nvme_function_with_its_capabilities() {
        let c = ConfigSpace::new();
        let mut b = [0u8; 4];
        assert!(c.read(0x08, &mut b));
        assert_eq!(&b[1..4], &[0x02, 0x08, 0x01], "class code 01/08/02");
        // Walk the capability list: PM, PCIe, MSI-X, end.
        let mut ids = Vec::new();
        let mut at = c.bytes[0x34] as usize;
        while at != 0 {
            ids.push(c.bytes[at]);
            at = c.bytes[at + 1] as usize;
        }
        assert_eq!(ids, [0x01, 0x10, 0x11]);
        assert_eq!(le16(&c.bytes[CAP_MSIX + 2..]) as usize + 1, MSIX_VECTORS);
        assert!(!c.read(0xffe, &mut b), "past the end");
        assert!(!c.read(u64::MAX, &mut b));
    }

    #[test]
    fn only_writable_bits_change() {
        let mut c = ConfigSpace::new();
        assert!(c.write(0x00, &[0xff, 0xff, 0xff, 0xff]));
        assert_eq!(le16(&c.bytes[0..]), VENDOR_ID);
        assert!(c.write(0x04, &[0xff, 0xff]));
        assert_eq!(le16(&c.bytes[4..]), 0x0406);
        assert!(!c.msix_enabled());
        assert!(c.write((CAP_MSIX + 2) as u64, &[0xff, 0xff]));
        assert!(c.msix_enabled());
        assert_eq!(le16(&c.bytes[CAP_MSIX + 2..]) & 0x7ff, (MSIX_VECTORS - 1) as u16, "table size is read-only");
        assert!(!c.write(0xfff, &[1, 2]));
    }
}
