//! The iSCSI target (RFC 7143) on the SCSI device model: the same logical units that
//! vhost-user-scsi serves to guests, served over TCP to any initiator.
//!
//! | module | job |
//! |---|---|
//! | `pdu` | the 48-byte basic header segment: opcodes and fields, read and written in place |
//! | `config` | portal groups, initiator groups, auth groups, target nodes and the global options (what the RPCs change, what a login reads) |
//! | `text` | `key=value` texts of Login/Text PDUs: bounded parsing, building, C-bit continuation |
//! | `negotiate` | operational keys (RFC 7143 §13): defaults, ranges, result rules, the negotiated [`negotiate::SessionParams`] |
//! | `chap` | CHAP (MD5, SHA1, SHA-256, SHA3-256), one-way and mutual, against the auth groups |
//! | `login` | the login state machine of one connection: stages, identity, target lookup, authentication, status codes |
//! | `textreq` | Text Requests in full feature phase: SendTargets and its continuation over several responses |
//!
//! Connections live on the reactors: a portal's listener accepts on reactor 0 and hands each
//! connection to the reactor with the fewest, which then polls it (no thread per connection).

pub mod chap;
pub mod config;
pub mod conn;
pub mod error;
pub mod login;
pub mod negotiate;
pub mod pdu;
pub mod portal;
#[cfg(any(test, feature = "fuzz"))]
pub mod testkit;
pub mod text;
pub mod textreq;

pub use error::IscsiError;
