//! Pieces shared by Ferry's TCP targets (iSCSI, NVMe-oF/TCP): pooled command buffers, the
//! outgoing PDU queue sent with one `sendmsg`, and the per-reactor poll group of connections.
//!
//! | module | job |
//! |---|---|
//! | `buffers` | pooled, aligned command buffers shared with the PDUs sending from them |
//! | `outbox` | queued PDUs (header, data owned or borrowed, tail) sent with one `sendmsg` |
//! | `poll_group` | one reactor's connections: an epoll set polled without waiting, placement on the least loaded reactor |

pub mod buffers;
pub mod outbox;
pub mod poll_group;
