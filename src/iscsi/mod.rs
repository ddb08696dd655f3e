//! The iSCSI target (RFC 7143) on the SCSI device model: the same logical units that
//! vhost-user-scsi serves to guests, served over TCP to any initiator.
//!
//! | module | job |
//! |---|---|
//! | `pdu` | the 48-byte basic header segment: opcodes and fields, read and written in place |
//! | `config` | portal groups, initiator groups, auth groups, target nodes and the global options (what the RPCs change, what a login reads) |
//! | `rpc` | SPDK's `iscsi_*` methods on that model, and the `iscsi` subsystem's saved configuration |
//!
//! Connections live on the reactors: a portal's listener accepts on reactor 0 and hands each
//! connection to the reactor with the fewest, which then polls it (no thread per connection).

pub mod config;
pub mod conn;
pub mod error;
pub mod pdu;
pub mod portal;
pub mod rpc;

pub use error::IscsiError;
mod async_event;
mod buffers;
mod command;
pub mod frame;
mod group;
pub mod login;
mod outbox;
pub mod session;
pub mod textreq;
mod tmf;
