//! The iSCSI target (RFC 7143) on the SCSI device model: the same logical units that
//! vhost-user-scsi serves to guests, served over TCP to any initiator.
//!
//! | module | job |
//! |---|---|
//! | `pdu` | the 48-byte basic header segment: opcodes and fields, read and written in place |
//! | `frame` | cutting PDUs out of a byte stream: lengths checked against what was negotiated, digests |
//! | `config` | portal groups, initiator groups, auth groups, target nodes and the global options (what the RPCs change, what a login reads) |
//! | `rpc` | SPDK's `iscsi_*` methods on that model, and the `iscsi` subsystem's saved configuration |
//! | `portal` | listening sockets, accepting on reactor 0 |
//! | `group` | each reactor's connections: an epoll set polled without waiting; placement on the reactor with the fewest |
//! | `conn` | one connection: bytes in, login phase, full feature phase (NOP, text, logout, Reject), closing |
//! | `direct` | large Data-Out segments received straight into their command's buffer |
//! | `command` | SCSI commands: immediate data, unsolicited Data-Out, R2Ts, Data-In with status, residuals |
//! | `tmf` | task management requests on the SCSI model's functions |
//! | `async_event` | asynchronous messages: LUNs added or removed, capacity changed |
//! | `outbox` | iSCSI PDUs (digests, padding) onto the shared outbox (`crate::net::outbox`), Data-In straight from command buffers |
//! | `session` | the session table: TSIH, reinstatement |
//! | `text` | `key=value` texts of Login/Text PDUs: bounded parsing, building, C-bit continuation |
//! | `negotiate` | operational keys (RFC 7143 §13): defaults, ranges, result rules, the negotiated [`negotiate::SessionParams`] |
//! | `chap` | CHAP (MD5, SHA1, SHA-256, SHA3-256), one-way and mutual, against the auth groups |
//! | `login` | the login state machine of one connection: stages, identity, target lookup, authentication, status codes |
//! | `textreq` | Text Requests in full feature phase: SendTargets and its continuation over several responses |
//!
//! Connections live on the reactors: a portal's listener accepts on reactor 0 and hands each
//! connection to the reactor with the fewest, which then polls it (no thread per connection).

mod async_event;
use crate::net::buffers;
pub mod chap;
pub mod command;
pub mod config;
pub mod conn;
mod direct;
pub mod error;
pub mod frame;
mod group;
pub mod login;
pub mod negotiate;
mod outbox;
pub mod pdu;
pub mod portal;
pub mod rpc;
pub mod session;
#[cfg(any(test, feature = "fuzz"))]
pub mod testkit;
pub mod text;
pub mod textreq;
mod tmf;

pub use error::IscsiError;
