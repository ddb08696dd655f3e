//! NVMe wire formats shared by Ferry's NVMe controller model, its NVMe-oF/TCP target and its
//! NVMe/TCP initiator: the 64-byte submission queue entry ([`spec::Command`]), the 16-byte
//! completion ([`spec::Completion`]), status codes, opcodes, fabrics command layouts, and the
//! NVMe/TCP PDU codec ([`tcp`]). Pure data: no sockets, no bdevs, no reactors, so both ends of
//! the wire and the fuzz targets use the same, tested code.
//!
//! Hand-written: no maintained crate in the registry covers NVMe/TCP PDUs, and the NVMe
//! structures are a few fixed offsets (NVM Express Base Specification 2.0, NVMe/TCP Transport
//! Specification 1.0).

pub mod host;
pub mod spec;
pub mod tcp;
