//! The NVMe PCIe transport, host side: queues in memory the function reaches by DMA,
//! doorbells in BAR0 (or shadowed in memory with Doorbell Buffer Config), over any carrier of
//! a PCI function ([`function::PciFunction`]: VFIO or vfio-user).

pub mod function;
pub mod layout;
pub mod qpair;
pub mod transport;

pub use function::{DmaArena, PciFunction, RegAccess, RegOp};
pub use layout::Layout;
pub use qpair::PcieQpair;
pub use transport::PcieTransport;
