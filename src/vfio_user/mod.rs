//! A vfio-user server (QEMU's `docs/interop/vfio-user.rst`) on Ferry's own event loop: the
//! protocol side of a PCI device emulated in Ferry and driven by a VMM's `vfio-user-pci`
//! (QEMU >= 10.1) or any other client.
//!
//! The rust-vmm `vfio_user` crate's `Server` blocks its thread in `run` and takes one
//! connection; Ferry instead serves every endpoint from the control plane's event loop
//! (no thread per device), as its vhost-user controllers do: whole messages are gathered off
//! a non-blocking socket and handled one at a time per connection on a control-plane
//! worker, replies leave through a bounded outbox. A device's doorbell writes take a fast
//! path on the loop itself.
//!
//! | module | job |
//! |---|---|
//! | `wire` | the header, requests and replies, every length checked |
//! | `dma` | DMA_MAP regions checked and mapped, translation snapshots for the data path |
//! | `session` | one client's protocol state: version, DMA maps, dispatch to the [`Device`] |
//! | `connection` | one client socket on the event loop: framing with fds, outbox, workers |
//! | `server` | an endpoint's listening socket: one client at a time, listening again after |

pub mod client;
pub mod connection;
pub mod dma;
pub mod server;
pub mod session;
pub mod wire;

pub use dma::{BadAddress, DmaTable};
pub use server::Server;
pub use wire::{Errno, RegionInfo};

use std::fs::File;
use std::sync::Arc;

/// What a PCI device served over vfio-user implements. Every method runs on a control-plane
/// worker (one call at a time per connection) and may wait for reactors, within the
/// client's reply timeout (QEMU: 5 s), except [`Device::region_write_fast`], which runs on
/// the event loop and must not block.
pub trait Device: Send + Sync + 'static {
    /// `VFIO_DEVICE_FLAGS_*` (PCI, RESET).
    fn device_flags(&self) -> u32;
    /// Regions (9 for a PCI device).
    fn num_regions(&self) -> u32;
    /// Interrupt types (5 for a PCI device).
    fn num_irqs(&self) -> u32;
    /// Region `index`, and the fd to mmap it (or its sparse areas) with.
    fn region_info(&self, index: u32) -> Result<(RegionInfo, Option<File>), Errno>;
    /// Interrupt type `index`: its `VFIO_IRQ_INFO_*` flags and vector count.
    fn irq_info(&self, index: u32) -> Result<(u32, u32), Errno>;
    /// Reads `buf.len()` bytes of region `index` at `offset`.
    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), Errno>;
    /// Writes `data` to region `index` at `offset`.
    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno>;
    /// A write the loop thread can finish itself without waiting on anything (a doorbell);
    /// None sends it to [`Device::region_write`] on a worker.
    fn region_write_fast(&self, _index: u32, _offset: u64, _data: &[u8]) -> Option<Result<(), Errno>> {
        None
    }
    /// DEVICE_SET_IRQS (the flags are `wire::irq_set`; `fds` the eventfds sent with it).
    fn set_irqs(
        &self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        data: &[u8],
        fds: Vec<File>,
    ) -> Result<(), Errno>;
    /// The client's mappings changed: `table` translates what is mapped now. Returns once
    /// the device no longer starts DMA through the previous table.
    fn dma_changed(&self, table: Arc<DmaTable>);
    /// DEVICE_RESET.
    fn reset(&self) -> Result<(), Errno>;
    /// A client connected (after the previous one's `disconnected`).
    fn connected(&self) {}
    /// The client went away: its DMA mappings and interrupt fds are dropped (the device's
    /// own state may stay, as the specification asks, or be reset).
    fn disconnected(&self);
}
