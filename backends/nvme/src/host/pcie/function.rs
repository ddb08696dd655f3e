//! What the driver needs of an NVMe PCI function, whatever carries it: BAR0 register access,
//! doorbell writes, memory the function reaches by DMA, and MSI-X vectors as eventfds.
//!
//! Two carriers implement [`PciFunction`]: a real (or QEMU-emulated) function bound to
//! `vfio-pci`, whose BAR0 is mapped and whose DMA goes through the IOMMU, and a vfio-user
//! client, whose register accesses are messages on a socket and whose DMA memory is a memfd
//! shared with the server. Register accesses are therefore split in two halves
//! ([`PciFunction::start_reg`], [`PciFunction::poll_reg`]) so that a message round trip never
//! blocks the thread that drives the controller.

use super::super::HostError;
use std::os::fd::RawFd;

/// One BAR0 register access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegAccess {
    /// Read 4 bytes at the offset.
    Read32(u32),
    /// Read 8 bytes at the offset (CAP, ASQ, ACQ).
    Read64(u32),
    /// Write 4 bytes at the offset.
    Write32(u32, u32),
    /// Write 8 bytes at the offset.
    Write64(u32, u64),
}

/// A register access in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegOp {
    /// Finished at once (MMIO): the value read (0 for a write).
    Done(u64),
    /// Finishes later: ask [`PciFunction::poll_reg`] with this ticket.
    Pending(u64),
}

/// The memory the driver lays its queues and buffers in: mapped in this process at `vaddr`,
/// reached by the function at `iova`, for the function's whole life.
#[derive(Debug, Clone, Copy)]
pub struct DmaArena {
    /// Where this process sees it.
    pub vaddr: *mut u8,
    /// Where the function sees it (what goes into queue base registers and PRPs).
    pub iova: u64,
    /// Its length in bytes (a multiple of 4 KiB).
    pub len: usize,
}

// SAFETY: the arena is plain shared memory; who writes which part of it is the driver's
// layout's business (each queue pair owns its own area), not the pointer's.
unsafe impl Send for DmaArena {}
// SAFETY: as above.
unsafe impl Sync for DmaArena {}

/// An NVMe PCI function as the driver drives it. Implementations are shared by the thread
/// that drives the controller (registers) and the reactors that run I/O queues (doorbells).
pub trait PciFunction: Send + Sync + 'static {
    /// The DMA arena (mapped once, when the function was opened, for its whole life).
    fn arena(&self) -> DmaArena;

    /// Starts a BAR0 register access. Only the controller's thread calls it, one access at a
    /// time.
    fn start_reg(&self, access: RegAccess) -> Result<RegOp, HostError>;

    /// The value of a [`RegOp::Pending`] access once it finished (`None`: not yet). Never
    /// blocks.
    fn poll_reg(&self, ticket: u64) -> Result<Option<u64>, HostError>;

    /// Writes doorbell register `offset` (in BAR0) with `value`, without waiting for anything.
    /// A carrier that cannot send it now keeps the latest value per doorbell and sends it on
    /// the next call of this or [`PciFunction::flush_doorbells`]: a doorbell holds a position,
    /// so only the last value written matters.
    fn ring(&self, offset: u32, value: u32) -> Result<(), HostError>;

    /// Sends doorbell writes [`PciFunction::ring`] had to keep; returns whether any are left.
    fn flush_doorbells(&self) -> Result<bool, HostError> {
        Ok(false)
    }

    /// The eventfd MSI-X vector `vector` signals, if the carrier set one up (a reactor sleeps
    /// on it while its queue waits for the device).
    fn irq_fd(&self, vector: u16) -> Option<RawFd>;

    /// A short description for logs and `bdev_nvme_get_controllers` (PCI address, socket).
    fn describe(&self) -> String;
}
