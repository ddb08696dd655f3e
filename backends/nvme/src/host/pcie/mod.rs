//! The NVMe PCIe transport, host side: queues in memory the function reaches by DMA,
//! doorbells in BAR0 (or shadowed in memory with Doorbell Buffer Config), over any carrier of
//! a PCI function ([`function::PciFunction`]: VFIO or vfio-user).

pub mod function;
