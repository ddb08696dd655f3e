//! virtio-scsi requests (virtio 1.2, 5.6) on split queues: commands on the request queues
//! (virtqueues 2..), task management and asynchronous-notification requests on the control
//! queue (0), and event buffers on the event queue (1). Each request takes descriptors from its
//! queue's free list and a per-head slot of shared memory for its header and response, as in
//! [`crate::blk`]. Also: the wire encodings (LUN field, headers, responses, events) and CDB
//! builders, public so hostile tests can write anything into the raw ring ([`ScsiQueue::ring`]).
//!
//! Knows nothing about bdevs or Ferry's SCSI target; CDBs are opaque bytes to the queue.

use super::memory::SharedMemory;
use super::split::{flags, SplitQueue};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use virtio_bindings::virtio_scsi as vs;

/// Virtqueue indices.
pub mod queue {
    /// The control queue (task management, asynchronous notification).
    pub const CONTROL: u16 = 0;
    /// The event queue (the driver posts buffers, the device fills them).
    pub const EVENT: u16 = 1;
    /// The first request queue.
    pub const REQUEST: u16 = 2;
}

/// virtio-scsi feature bits (as masks over the 64-bit feature word).
pub mod feature {
    use super::vs;
    /// Commands with both data-out and data-in buffers.
    pub const INOUT: u64 = 1 << vs::VIRTIO_SCSI_F_INOUT;
    /// The device reports hot-plugged and hot-unplugged LUNs on the event queue.
    pub const HOTPLUG: u64 = 1 << vs::VIRTIO_SCSI_F_HOTPLUG;
    /// The device reports parameter changes (PARAM_CHANGE events).
    pub const CHANGE: u64 = 1 << vs::VIRTIO_SCSI_F_CHANGE;
    /// T10 protection information in requests.
    pub const T10_PI: u64 = 1 << vs::VIRTIO_SCSI_F_T10_PI;
}

/// The `response` byte of a command, TMF or AN response.
pub mod response {
    use super::vs;
    /// Completed (for a command: see `status`); for a TMF, FUNCTION COMPLETE.
    pub const OK: u8 = vs::VIRTIO_SCSI_S_OK as u8;
    /// The data did not fit the buffers.
    pub const OVERRUN: u8 = vs::VIRTIO_SCSI_S_OVERRUN as u8;
    /// Aborted by a TMF.
    pub const ABORTED: u8 = vs::VIRTIO_SCSI_S_ABORTED as u8;
    /// No such target.
    pub const BAD_TARGET: u8 = vs::VIRTIO_SCSI_S_BAD_TARGET as u8;
    /// Aborted by a reset.
    pub const RESET: u8 = vs::VIRTIO_SCSI_S_RESET as u8;
    /// Retry later.
    pub const BUSY: u8 = vs::VIRTIO_SCSI_S_BUSY as u8;
    /// Transport failure (retry on another path).
    pub const TRANSPORT_FAILURE: u8 = vs::VIRTIO_SCSI_S_TRANSPORT_FAILURE as u8;
    /// Target failure (do not retry).
    pub const TARGET_FAILURE: u8 = vs::VIRTIO_SCSI_S_TARGET_FAILURE as u8;
    /// Nexus failure (do not retry on this path).
    pub const NEXUS_FAILURE: u8 = vs::VIRTIO_SCSI_S_NEXUS_FAILURE as u8;
    /// Any other failure.
    pub const FAILURE: u8 = vs::VIRTIO_SCSI_S_FAILURE as u8;
    /// TMF: FUNCTION SUCCEEDED (a query found what it asked about).
    pub const FUNCTION_SUCCEEDED: u8 = vs::VIRTIO_SCSI_S_FUNCTION_SUCCEEDED as u8;
    /// TMF: FUNCTION REJECTED.
    pub const FUNCTION_REJECTED: u8 = vs::VIRTIO_SCSI_S_FUNCTION_REJECTED as u8;
    /// TMF: INCORRECT LOGICAL UNIT NUMBER.
    pub const INCORRECT_LUN: u8 = vs::VIRTIO_SCSI_S_INCORRECT_LUN as u8;
}

/// SCSI status bytes (SAM-5).
pub mod status {
    /// GOOD.
    pub const GOOD: u8 = 0x00;
    /// CHECK CONDITION (sense data follows).
    pub const CHECK_CONDITION: u8 = 0x02;
    /// CONDITION MET.
    pub const CONDITION_MET: u8 = 0x04;
    /// BUSY.
    pub const BUSY: u8 = 0x08;
    /// RESERVATION CONFLICT.
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    /// TASK SET FULL.
    pub const TASK_SET_FULL: u8 = 0x28;
    /// ACA ACTIVE.
    pub const ACA_ACTIVE: u8 = 0x30;
    /// TASK ABORTED.
    pub const TASK_ABORTED: u8 = 0x40;
}

/// Task attributes of a command.
pub mod task_attr {
    use super::vs;
    /// SIMPLE (what Linux sends).
    pub const SIMPLE: u8 = vs::VIRTIO_SCSI_S_SIMPLE as u8;
    /// ORDERED.
    pub const ORDERED: u8 = vs::VIRTIO_SCSI_S_ORDERED as u8;
    /// HEAD OF QUEUE.
    pub const HEAD: u8 = vs::VIRTIO_SCSI_S_HEAD as u8;
    /// ACA.
    pub const ACA: u8 = vs::VIRTIO_SCSI_S_ACA as u8;
}

/// Control-queue request types and TMF subtypes.
pub mod ctrl {
    use super::vs;
    /// Task management function.
    pub const T_TMF: u32 = vs::VIRTIO_SCSI_T_TMF;
    /// Asynchronous notification query.
    pub const T_AN_QUERY: u32 = vs::VIRTIO_SCSI_T_AN_QUERY;
    /// Asynchronous notification subscription.
    pub const T_AN_SUBSCRIBE: u32 = vs::VIRTIO_SCSI_T_AN_SUBSCRIBE;
    /// ABORT TASK (the command whose `id` is given).
    pub const TMF_ABORT_TASK: u32 = vs::VIRTIO_SCSI_T_TMF_ABORT_TASK;
    /// ABORT TASK SET.
    pub const TMF_ABORT_TASK_SET: u32 = vs::VIRTIO_SCSI_T_TMF_ABORT_TASK_SET;
    /// CLEAR ACA.
    pub const TMF_CLEAR_ACA: u32 = vs::VIRTIO_SCSI_T_TMF_CLEAR_ACA;
    /// CLEAR TASK SET.
    pub const TMF_CLEAR_TASK_SET: u32 = vs::VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET;
    /// I_T NEXUS RESET (target reset, as Linux sends it).
    pub const TMF_I_T_NEXUS_RESET: u32 = vs::VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET;
    /// LOGICAL UNIT RESET.
    pub const TMF_LOGICAL_UNIT_RESET: u32 = vs::VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET;
    /// QUERY TASK.
    pub const TMF_QUERY_TASK: u32 = vs::VIRTIO_SCSI_T_TMF_QUERY_TASK;
    /// QUERY TASK SET.
    pub const TMF_QUERY_TASK_SET: u32 = vs::VIRTIO_SCSI_T_TMF_QUERY_TASK_SET;
}

/// Event types and reasons (the event queue).
pub mod event {
    use super::vs;
    /// No event.
    pub const NO_EVENT: u32 = vs::VIRTIO_SCSI_T_NO_EVENT;
    /// A LUN was added, removed or a target reset (reason says which).
    pub const TRANSPORT_RESET: u32 = vs::VIRTIO_SCSI_T_TRANSPORT_RESET;
    /// An asynchronous notification.
    pub const ASYNC_NOTIFY: u32 = vs::VIRTIO_SCSI_T_ASYNC_NOTIFY;
    /// A parameter changed (reason: ASC | ASCQ << 8).
    pub const PARAM_CHANGE: u32 = vs::VIRTIO_SCSI_T_PARAM_CHANGE;
    /// Flag: the device dropped events for want of buffers.
    pub const EVENTS_MISSED: u32 = vs::VIRTIO_SCSI_T_EVENTS_MISSED;
    /// TRANSPORT_RESET reason: hard reset.
    pub const RESET_HARD: u32 = vs::VIRTIO_SCSI_EVT_RESET_HARD;
    /// TRANSPORT_RESET reason: a LUN appeared (rescan).
    pub const RESET_RESCAN: u32 = vs::VIRTIO_SCSI_EVT_RESET_RESCAN;
    /// TRANSPORT_RESET reason: a LUN went away.
    pub const RESET_REMOVED: u32 = vs::VIRTIO_SCSI_EVT_RESET_REMOVED;
}

/// Sizes and byte offsets of the wire structures (all little-endian, packed).
pub mod layout {
    /// virtio_scsi_cmd_req: lun[8], id u64, task_attr, prio, crn, cdb[32].
    pub const CMD_REQ_SIZE: usize = 51;
    /// Offset of `lun`.
    pub const CMD_REQ_LUN: usize = 0;
    /// Offset of `id` (the tag a TMF names).
    pub const CMD_REQ_ID: usize = 8;
    /// Offset of `task_attr`.
    pub const CMD_REQ_TASK_ATTR: usize = 16;
    /// Offset of `prio`.
    pub const CMD_REQ_PRIO: usize = 17;
    /// Offset of `crn`.
    pub const CMD_REQ_CRN: usize = 18;
    /// Offset of `cdb`.
    pub const CMD_REQ_CDB: usize = 19;
    /// CDB bytes in a request.
    pub const CDB_SIZE: usize = 32;
    /// virtio_scsi_cmd_resp: sense_len u32, resid u32, status_qualifier u16, status, response,
    /// sense[96].
    pub const CMD_RESP_SIZE: usize = 108;
    /// Offset of `sense_len`.
    pub const CMD_RESP_SENSE_LEN: usize = 0;
    /// Offset of `resid`.
    pub const CMD_RESP_RESID: usize = 4;
    /// Offset of `status_qualifier`.
    pub const CMD_RESP_STATUS_QUALIFIER: usize = 8;
    /// Offset of `status`.
    pub const CMD_RESP_STATUS: usize = 10;
    /// Offset of `response`.
    pub const CMD_RESP_RESPONSE: usize = 11;
    /// Offset of `sense`.
    pub const CMD_RESP_SENSE: usize = 12;
    /// Sense bytes in a response.
    pub const SENSE_SIZE: usize = 96;
    /// virtio_scsi_ctrl_tmf_req: type u32, subtype u32, lun[8], id u64.
    pub const TMF_REQ_SIZE: usize = 24;
    /// virtio_scsi_ctrl_tmf_resp: response.
    pub const TMF_RESP_SIZE: usize = 1;
    /// virtio_scsi_ctrl_an_req: type u32, lun[8], event_requested u32.
    pub const AN_REQ_SIZE: usize = 16;
    /// virtio_scsi_ctrl_an_resp: event_actual u32, response.
    pub const AN_RESP_SIZE: usize = 5;
    /// virtio_scsi_event: event u32, lun[8], reason u32.
    pub const EVENT_SIZE: usize = 16;
}

use layout::*;

/// The 8-byte LUN field as Linux sends it: single-level flat addressing of `lun` (low 14 bits)
/// on `target`: `[1, target, 0x40 | lun >> 8, lun & 0xff, 0, 0, 0, 0]`.
pub fn lun_field(target: u8, lun: u16) -> [u8; 8] {
    [1, target, 0x40 | ((lun >> 8) as u8 & 0x3f), lun as u8, 0, 0, 0, 0]
}

/// (target, lun) of a LUN field as Linux reads one (byte 0 must be 1), e.g. from an event.
pub fn parse_lun_field(f: &[u8; 8]) -> Option<(u8, u16)> {
    (f[0] == 1).then(|| (f[1], u16::from_be_bytes([f[2], f[3]]) & 0x3fff))
}

/// Why a request could not be submitted or completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ScsiError {
    /// The ring had too few free descriptors.
    #[error("the virtqueue is full")]
    QueueFull,
    /// A CDB longer than the 32 bytes a request holds.
    #[error("a {0}-byte CDB does not fit the request header (32 bytes)")]
    CdbTooLong(usize),
    /// No completion came in time ([`ScsiQueue::run`]).
    #[error("no completion in time")]
    Timeout,
}

/// A command header (virtio_scsi_cmd_req), with every field settable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CmdReq {
    /// LUN field (see [`lun_field`]).
    pub lun: [u8; 8],
    /// Command identifier (what ABORT TASK names).
    pub id: u64,
    /// Task attribute ([`task_attr`]).
    pub task_attr: u8,
    /// Priority.
    pub prio: u8,
    /// Command reference number.
    pub crn: u8,
    /// CDB, zero-padded.
    pub cdb: [u8; CDB_SIZE],
}

impl CmdReq {
    /// A SIMPLE command `cdb` to `target`/`lun` with identifier `id`.
    pub fn new(target: u8, lun: u16, id: u64, cdb: &[u8]) -> Result<CmdReq, ScsiError> {
        if cdb.len() > CDB_SIZE {
            return Err(ScsiError::CdbTooLong(cdb.len()));
        }
        let mut padded = [0u8; CDB_SIZE];
        padded[..cdb.len()].copy_from_slice(cdb);
        Ok(CmdReq { lun: lun_field(target, lun), id, task_attr: task_attr::SIMPLE, prio: 0, crn: 0, cdb: padded })
    }

    /// The wire bytes.
    pub fn encode(&self) -> [u8; CMD_REQ_SIZE] {
        let mut b = [0u8; CMD_REQ_SIZE];
        b[CMD_REQ_LUN..CMD_REQ_LUN + 8].copy_from_slice(&self.lun);
        b[CMD_REQ_ID..CMD_REQ_ID + 8].copy_from_slice(&self.id.to_le_bytes());
        b[CMD_REQ_TASK_ATTR] = self.task_attr;
        b[CMD_REQ_PRIO] = self.prio;
        b[CMD_REQ_CRN] = self.crn;
        b[CMD_REQ_CDB..].copy_from_slice(&self.cdb);
        b
    }
}

/// A command's response (virtio_scsi_cmd_resp).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CmdResp {
    /// Sense bytes the device wrote (may exceed [`layout::SENSE_SIZE`] if it had more).
    pub sense_len: u32,
    /// Bytes of data not transferred.
    pub resid: u32,
    /// Status qualifier.
    pub status_qualifier: u16,
    /// SCSI status ([`status`]); meaningful when `response` is OK.
    pub status: u8,
    /// virtio-scsi response ([`response`]).
    pub response: u8,
    /// Sense buffer; the first `min(sense_len, 96)` bytes are valid.
    pub sense: [u8; SENSE_SIZE],
}

impl CmdResp {
    /// Decodes the wire bytes.
    pub fn decode(b: &[u8; CMD_RESP_SIZE]) -> CmdResp {
        let mut resp = Self::decode_header(b[..CMD_RESP_SENSE].try_into().unwrap());
        resp.sense.copy_from_slice(&b[CMD_RESP_SENSE..]);
        resp
    }

    /// Decodes the 12 bytes before the sense buffer (sense left zero).
    fn decode_header(b: &[u8; CMD_RESP_SENSE]) -> CmdResp {
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        CmdResp {
            sense_len: u32_at(CMD_RESP_SENSE_LEN),
            resid: u32_at(CMD_RESP_RESID),
            status_qualifier: u16::from_le_bytes([b[CMD_RESP_STATUS_QUALIFIER], b[CMD_RESP_STATUS_QUALIFIER + 1]]),
            status: b[CMD_RESP_STATUS],
            response: b[CMD_RESP_RESPONSE],
            sense: [0; SENSE_SIZE],
        }
    }

    /// The valid sense bytes.
    pub fn sense(&self) -> &[u8] {
        &self.sense[..(self.sense_len as usize).min(SENSE_SIZE)]
    }

    /// Response OK and status GOOD.
    pub fn is_good(&self) -> bool {
        self.response == response::OK && self.status == status::GOOD
    }

    /// (sense key, ASC, ASCQ) of the sense data, if any.
    pub fn sense_key(&self) -> Option<(u8, u8, u8)> {
        sense_key(self.sense())
    }
}

/// (sense key, ASC, ASCQ) of fixed- (0x70/0x71) or descriptor-format (0x72/0x73) sense data.
pub fn sense_key(sense: &[u8]) -> Option<(u8, u8, u8)> {
    match sense.first()? & 0x7f {
        0x70 | 0x71 if sense.len() >= 14 => Some((sense[2] & 0x0f, sense[12], sense[13])),
        0x72 | 0x73 if sense.len() >= 4 => Some((sense[1] & 0x0f, sense[2], sense[3])),
        _ => None,
    }
}

/// A TMF request (virtio_scsi_ctrl_tmf_req) on `target`/`lun`; `id` names the command for
/// ABORT TASK and QUERY TASK.
pub fn encode_tmf(subtype: u32, target: u8, lun: u16, id: u64) -> [u8; TMF_REQ_SIZE] {
    let mut b = [0u8; TMF_REQ_SIZE];
    b[0..4].copy_from_slice(&ctrl::T_TMF.to_le_bytes());
    b[4..8].copy_from_slice(&subtype.to_le_bytes());
    b[8..16].copy_from_slice(&lun_field(target, lun));
    b[16..24].copy_from_slice(&id.to_le_bytes());
    b
}

/// An AN request (virtio_scsi_ctrl_an_req) of type `kind` (query or subscribe).
pub fn encode_an(kind: u32, target: u8, lun: u16, event_requested: u32) -> [u8; AN_REQ_SIZE] {
    let mut b = [0u8; AN_REQ_SIZE];
    b[0..4].copy_from_slice(&kind.to_le_bytes());
    b[4..12].copy_from_slice(&lun_field(target, lun));
    b[12..16].copy_from_slice(&event_requested.to_le_bytes());
    b
}

/// An event the device wrote into an event buffer (virtio_scsi_event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Event {
    /// Type ([`event`]), possibly with [`event::EVENTS_MISSED`] set.
    pub event: u32,
    /// LUN field the event is about.
    pub lun: [u8; 8],
    /// Reason ([`event`] RESET_*; for PARAM_CHANGE, ASC | ASCQ << 8).
    pub reason: u32,
}

impl Event {
    /// Decodes the wire bytes.
    pub fn decode(b: &[u8; EVENT_SIZE]) -> Event {
        Event {
            event: u32::from_le_bytes(b[0..4].try_into().unwrap()),
            lun: b[4..12].try_into().unwrap(),
            reason: u32::from_le_bytes(b[12..16].try_into().unwrap()),
        }
    }

    /// The event type without the EVENTS_MISSED flag.
    pub fn kind(&self) -> u32 {
        self.event & !event::EVENTS_MISSED
    }

    /// Whether the device dropped events before this one.
    pub fn missed(&self) -> bool {
        self.event & event::EVENTS_MISSED != 0
    }

    /// (target, lun) the event is about.
    pub fn address(&self) -> Option<(u8, u16)> {
        parse_lun_field(&self.lun)
    }
}

/// A request to submit. Data buffers are (guest address, length) ranges of shared memory.
#[derive(Debug, Clone)]
pub enum ScsiRequest<'a> {
    /// A SIMPLE command to `target`/`lun` (request queues); its `id` is the submit tag.
    /// Both `data_out` and `data_in` non-empty needs [`feature::INOUT`].
    Command {
        /// Target (byte 1 of the LUN field).
        target: u8,
        /// LUN (flat addressing, below 16384).
        lun: u16,
        /// CDB (at most 32 bytes).
        cdb: &'a [u8],
        /// Device-readable data (a write's payload).
        data_out: &'a [(u64, u32)],
        /// Device-writable data (a read's buffers).
        data_in: &'a [(u64, u32)],
    },
    /// A command with a header given field by field (any LUN bytes, task attribute, id).
    RawCommand {
        /// The header.
        req: CmdReq,
        /// Device-readable data.
        data_out: &'a [(u64, u32)],
        /// Device-writable data.
        data_in: &'a [(u64, u32)],
    },
    /// A task management function (control queue).
    Tmf {
        /// Subtype ([`ctrl`] TMF_*).
        subtype: u32,
        /// Target.
        target: u8,
        /// LUN.
        lun: u16,
        /// The command it names (ABORT TASK, QUERY TASK).
        id: u64,
    },
    /// An asynchronous notification query or subscription (control queue).
    An {
        /// [`ctrl::T_AN_QUERY`] or [`ctrl::T_AN_SUBSCRIBE`].
        kind: u32,
        /// Target.
        target: u8,
        /// LUN.
        lun: u16,
        /// Event classes asked for (a bit mask).
        event_requested: u32,
    },
    /// An empty event buffer for the device to fill (event queue).
    EventBuffer,
}

/// A completed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScsiCompletion {
    /// A command ([`ScsiRequest::Command`] or [`ScsiRequest::RawCommand`]).
    Command {
        /// The caller's tag.
        tag: u64,
        /// Bytes the device says it wrote (response and data-in).
        len: u32,
        /// The response.
        resp: CmdResp,
    },
    /// A TMF.
    Tmf {
        /// The caller's tag.
        tag: u64,
        /// Bytes written.
        len: u32,
        /// [`response`] byte.
        response: u8,
    },
    /// An AN query or subscription.
    An {
        /// The caller's tag.
        tag: u64,
        /// Bytes written.
        len: u32,
        /// Event classes the device reports.
        event_actual: u32,
        /// [`response`] byte.
        response: u8,
    },
    /// A filled event buffer.
    Event {
        /// The caller's tag.
        tag: u64,
        /// Bytes written.
        len: u32,
        /// The event.
        event: Event,
    },
}

impl ScsiCompletion {
    /// The caller's tag.
    pub fn tag(&self) -> u64 {
        match *self {
            ScsiCompletion::Command { tag, .. }
            | ScsiCompletion::Tmf { tag, .. }
            | ScsiCompletion::An { tag, .. }
            | ScsiCompletion::Event { tag, .. } => tag,
        }
    }

    /// Bytes the device says it wrote (the used element's length).
    pub fn used_len(&self) -> u32 {
        match *self {
            ScsiCompletion::Command { len, .. }
            | ScsiCompletion::Tmf { len, .. }
            | ScsiCompletion::An { len, .. }
            | ScsiCompletion::Event { len, .. } => len,
        }
    }

    /// The response byte (none for events).
    pub fn response(&self) -> Option<u8> {
        match *self {
            ScsiCompletion::Command { resp, .. } => Some(resp.response),
            ScsiCompletion::Tmf { response, .. } | ScsiCompletion::An { response, .. } => Some(response),
            ScsiCompletion::Event { .. } => None,
        }
    }

    /// A command's response, if this is one.
    pub fn command(&self) -> Option<&CmdResp> {
        match self {
            ScsiCompletion::Command { resp, .. } => Some(resp),
            _ => None,
        }
    }

    /// A command that completed with response OK and status GOOD.
    pub fn is_good(&self) -> bool {
        self.command().is_some_and(CmdResp::is_good)
    }
}

/// Data buffers: (guest address, length).
type Bufs<'a> = &'a [(u64, u32)];

/// Per-head slot: request header at 0, response at [`RESP`].
const SLOT: u64 = 192;
const RESP: u64 = 64;

/// What a head carries, to decode its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Command,
    Tmf,
    An,
    Event,
}

/// A virtio-scsi virtqueue (control, event or request), driver side.
pub struct ScsiQueue {
    ring: SplitQueue,
    mem: Arc<SharedMemory>,
    slots: u64,
    tags: Vec<(u64, Kind)>,
    /// Completions [`ScsiQueue::run`] took off the ring for others; [`ScsiQueue::poll`] hands
    /// them out first.
    stash: Vec<ScsiCompletion>,
}

impl ScsiQueue {
    /// Wraps a split queue; allocates the per-head request slots.
    pub fn new(ring: SplitQueue, mem: Arc<SharedMemory>) -> Option<ScsiQueue> {
        let size = ring.size() as usize;
        let slots = mem.alloc(SLOT as usize * size, 64)?;
        Some(ScsiQueue { ring, mem, slots, tags: vec![(0, Kind::Command); size], stash: Vec::new() })
    }

    /// The underlying ring (raw access for hostile tests).
    pub fn ring(&mut self) -> &mut SplitQueue {
        &mut self.ring
    }

    /// The shared memory.
    pub fn mem(&self) -> &Arc<SharedMemory> {
        &self.mem
    }

    /// Interrupts the device sent since the last call (reads the call eventfd's counter).
    pub fn take_interrupts(&self) -> u64 {
        self.ring.call_fd().read().unwrap_or(0)
    }

    /// The raw call eventfd (to wait on with epoll while no completion is expected).
    pub fn call_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(self.ring.call_fd())
    }

    /// Guest addresses of head `head`'s request header and response in its slot (to inspect
    /// or corrupt them in hostile tests).
    pub fn slot(&self, head: u16) -> (u64, u64) {
        let s = self.slots + SLOT * head as u64;
        (s, s + RESP)
    }

    /// Queues a request (not yet kicked); returns its head descriptor.
    pub fn submit(&mut self, request: &ScsiRequest<'_>, tag: u64) -> Result<u16, ScsiError> {
        // The request header, built on the stack (no allocation on the hot path).
        let mut hdr = [0u8; CMD_REQ_SIZE];
        let (hdr_len, resp, data_out, data_in, kind): (usize, u32, Bufs<'_>, Bufs<'_>, Kind) = match request {
            ScsiRequest::Command { target, lun, cdb, data_out, data_in } => {
                hdr = CmdReq::new(*target, *lun, tag, cdb)?.encode();
                (CMD_REQ_SIZE, CMD_RESP_SIZE as u32, data_out, data_in, Kind::Command)
            }
            ScsiRequest::RawCommand { req, data_out, data_in } => {
                hdr = req.encode();
                (CMD_REQ_SIZE, CMD_RESP_SIZE as u32, data_out, data_in, Kind::Command)
            }
            ScsiRequest::Tmf { subtype, target, lun, id } => {
                hdr[..TMF_REQ_SIZE].copy_from_slice(&encode_tmf(*subtype, *target, *lun, *id));
                (TMF_REQ_SIZE, TMF_RESP_SIZE as u32, &[], &[], Kind::Tmf)
            }
            ScsiRequest::An { kind, target, lun, event_requested } => {
                hdr[..AN_REQ_SIZE].copy_from_slice(&encode_an(*kind, *target, *lun, *event_requested));
                (AN_REQ_SIZE, AN_RESP_SIZE as u32, &[], &[], Kind::An)
            }
            ScsiRequest::EventBuffer => (0, EVENT_SIZE as u32, &[], &[], Kind::Event),
        };
        let req = &hdr[..hdr_len];
        let n = usize::from(!req.is_empty()) + data_out.len() + 1 + data_in.len();
        let descs = self.ring.alloc_descriptors(n).ok_or(ScsiError::QueueFull)?;
        let head = descs[0];
        let (req_at, resp_at) = self.slot(head);
        self.mem.write(req_at, req);
        // A response the device never wrote shows as 0xFF response and status.
        let mut blank = [0u8; CMD_RESP_SENSE];
        blank[CMD_RESP_STATUS] = 0xFF;
        blank[CMD_RESP_RESPONSE] = 0xFF;
        match kind {
            Kind::Command => self.mem.write(resp_at, &blank),
            Kind::Tmf => self.mem.store_u8(resp_at, 0xFF),
            Kind::An => self.mem.write(resp_at, &[0, 0, 0, 0, 0xFF]),
            Kind::Event => self.mem.write(resp_at, &[0; EVENT_SIZE]),
        }
        // Device-readable parts first, then device-writable (virtio 2.7.4.2).
        let mut chain: Vec<(u64, u32, u16)> = Vec::with_capacity(n);
        if !req.is_empty() {
            chain.push((req_at, req.len() as u32, 0));
        }
        chain.extend(data_out.iter().map(|&(a, l)| (a, l, 0)));
        chain.push((resp_at, resp, flags::WRITE));
        chain.extend(data_in.iter().map(|&(a, l)| (a, l, flags::WRITE)));
        for (k, (addr, len, f)) in chain.iter().enumerate() {
            let last = k + 1 == chain.len();
            let next = if last { 0 } else { descs[k + 1] };
            self.ring.write_descriptor(descs[k], *addr, *len, f | if last { 0 } else { flags::NEXT }, next);
        }
        self.tags[head as usize] = (tag, kind);
        self.ring.publish(head);
        Ok(head)
    }

    /// Notifies the device of what was submitted.
    pub fn kick(&self) {
        self.ring.kick();
    }

    /// Takes the next used entry off the ring and decodes it: (head, completion).
    fn pop(&mut self) -> Option<(u16, ScsiCompletion)> {
        let (head, len) = self.ring.pop_used()?;
        let head = head % self.ring.size();
        let (tag, kind) = self.tags[head as usize];
        let (_, at) = self.slot(head);
        let c = match kind {
            Kind::Command => {
                let mut h = [0u8; CMD_RESP_SENSE];
                self.mem.read(at, &mut h);
                let mut resp = CmdResp::decode_header(&h);
                // Sense only when there is some: the hot path reads 12 bytes.
                let n = (resp.sense_len as usize).min(SENSE_SIZE);
                if n > 0 {
                    self.mem.read(at + CMD_RESP_SENSE as u64, &mut resp.sense[..n]);
                }
                ScsiCompletion::Command { tag, len, resp }
            }
            Kind::Tmf => ScsiCompletion::Tmf { tag, len, response: self.mem.load_u8(at) },
            Kind::An => {
                ScsiCompletion::An { tag, len, event_actual: self.mem.load_u32(at), response: self.mem.load_u8(at + 4) }
            }
            Kind::Event => {
                let mut b = [0u8; EVENT_SIZE];
                self.mem.read(at, &mut b);
                ScsiCompletion::Event { tag, len, event: Event::decode(&b) }
            }
        };
        self.ring.free_descriptors_of(head);
        Some((head, c))
    }

    /// Collects completions into `out`; returns how many.
    pub fn poll(&mut self, out: &mut Vec<ScsiCompletion>) -> usize {
        let mut n = self.stash.len();
        out.append(&mut self.stash);
        while let Some((_, c)) = self.pop() {
            out.push(c);
            n += 1;
        }
        n
    }

    /// Submits `request` (tag 0), kicks, and waits up to `timeout` for its completion; other
    /// completions arriving meanwhile are kept for the next [`ScsiQueue::poll`].
    pub fn run(&mut self, request: &ScsiRequest<'_>, timeout: Duration) -> Result<ScsiCompletion, ScsiError> {
        let head = self.submit(request, 0)?;
        self.kick();
        let deadline = Instant::now() + timeout;
        loop {
            while let Some((h, c)) = self.pop() {
                if h == head {
                    return Ok(c);
                }
                self.stash.push(c);
            }
            if Instant::now() >= deadline {
                return Err(ScsiError::Timeout);
            }
            self.ring.wait(1);
        }
    }

    /// Waits (up to `timeout_ms`) for the device's interrupt.
    pub fn wait(&self, timeout_ms: i32) {
        self.ring.wait(timeout_ms);
    }
}

/// CDB builders and parsers for the commands a benchmark or test needs (SBC-4, SPC-6).
pub mod cdb {
    /// TEST UNIT READY.
    pub const TEST_UNIT_READY: u8 = 0x00;
    /// REQUEST SENSE.
    pub const REQUEST_SENSE: u8 = 0x03;
    /// INQUIRY.
    pub const INQUIRY: u8 = 0x12;
    /// READ CAPACITY (10).
    pub const READ_CAPACITY_10: u8 = 0x25;
    /// READ (10).
    pub const READ_10: u8 = 0x28;
    /// WRITE (10).
    pub const WRITE_10: u8 = 0x2a;
    /// SYNCHRONIZE CACHE (10).
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    /// READ (16).
    pub const READ_16: u8 = 0x88;
    /// WRITE (16).
    pub const WRITE_16: u8 = 0x8a;
    /// SERVICE ACTION IN (16) (READ CAPACITY (16) is its service action 0x10).
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    /// READ CAPACITY (16) service action.
    pub const SAI_READ_CAPACITY_16: u8 = 0x10;
    /// REPORT LUNS.
    pub const REPORT_LUNS: u8 = 0xa0;

    fn rw10(op: u8, lba: u32, blocks: u16) -> [u8; 10] {
        let mut c = [0u8; 10];
        c[0] = op;
        c[2..6].copy_from_slice(&lba.to_be_bytes());
        c[7..9].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    fn rw16(op: u8, lba: u64, blocks: u32) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = op;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..14].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    /// READ (10) of `blocks` logical blocks at `lba`.
    pub fn read10(lba: u32, blocks: u16) -> [u8; 10] {
        rw10(READ_10, lba, blocks)
    }

    /// WRITE (10) of `blocks` logical blocks at `lba`.
    pub fn write10(lba: u32, blocks: u16) -> [u8; 10] {
        rw10(WRITE_10, lba, blocks)
    }

    /// READ (16) of `blocks` logical blocks at `lba`.
    pub fn read16(lba: u64, blocks: u32) -> [u8; 16] {
        rw16(READ_16, lba, blocks)
    }

    /// WRITE (16) of `blocks` logical blocks at `lba`.
    pub fn write16(lba: u64, blocks: u32) -> [u8; 16] {
        rw16(WRITE_16, lba, blocks)
    }

    /// SYNCHRONIZE CACHE (10) of `blocks` at `lba` (0, 0: the whole medium).
    pub fn synchronize_cache10(lba: u32, blocks: u16) -> [u8; 10] {
        rw10(SYNCHRONIZE_CACHE_10, lba, blocks)
    }

    /// TEST UNIT READY.
    pub fn test_unit_ready() -> [u8; 6] {
        [TEST_UNIT_READY, 0, 0, 0, 0, 0]
    }

    /// REQUEST SENSE for `alloc_len` bytes.
    pub fn request_sense(alloc_len: u8) -> [u8; 6] {
        [REQUEST_SENSE, 0, 0, 0, alloc_len, 0]
    }

    /// INQUIRY for `alloc_len` bytes: standard data, or the VPD page `vpd`.
    pub fn inquiry(vpd: Option<u8>, alloc_len: u16) -> [u8; 6] {
        let [hi, lo] = alloc_len.to_be_bytes();
        [INQUIRY, u8::from(vpd.is_some()), vpd.unwrap_or(0), hi, lo, 0]
    }

    /// READ CAPACITY (10) (8 bytes of data-in).
    pub fn read_capacity10() -> [u8; 10] {
        [READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    }

    /// READ CAPACITY (16) for `alloc_len` bytes (32 is the full answer).
    pub fn read_capacity16(alloc_len: u32) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = SERVICE_ACTION_IN_16;
        c[1] = SAI_READ_CAPACITY_16;
        c[10..14].copy_from_slice(&alloc_len.to_be_bytes());
        c
    }

    /// REPORT LUNS for `alloc_len` bytes.
    pub fn report_luns(alloc_len: u32) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[0] = REPORT_LUNS;
        c[6..10].copy_from_slice(&alloc_len.to_be_bytes());
        c
    }

    /// (last LBA, block length) from READ CAPACITY (16) data.
    pub fn parse_read_capacity16(d: &[u8]) -> Option<(u64, u32)> {
        Some((u64::from_be_bytes(d.get(0..8)?.try_into().ok()?), u32::from_be_bytes(d.get(8..12)?.try_into().ok()?)))
    }

    /// (last LBA, block length) from READ CAPACITY (10) data (0xFFFFFFFF: ask READ CAPACITY (16)).
    pub fn parse_read_capacity10(d: &[u8]) -> Option<(u32, u32)> {
        Some((u32::from_be_bytes(d.get(0..4)?.try_into().ok()?), u32::from_be_bytes(d.get(4..8)?.try_into().ok()?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn lun_field_is_linux_flat_addressing() {
        assert_eq!(lun_field(0, 0), [1, 0, 0x40, 0, 0, 0, 0, 0]);
        assert_eq!(lun_field(3, 5), [1, 3, 0x40, 5, 0, 0, 0, 0]);
        assert_eq!(lun_field(255, 0x1234), [1, 255, 0x52, 0x34, 0, 0, 0, 0]);
        assert_eq!(lun_field(1, 0x3fff), [1, 1, 0x7f, 0xff, 0, 0, 0, 0]);
        // Only 14 bits fit; the address method bits stay 01.
        assert_eq!(lun_field(1, 0xffff), lun_field(1, 0x3fff));
        for (t, l) in [(0, 0), (7, 1), (255, 16383), (2, 256)] {
            assert_eq!(parse_lun_field(&lun_field(t, l)), Some((t, l)));
        }
        assert_eq!(parse_lun_field(&[0, 1, 0x40, 0, 0, 0, 0, 0]), None);
    }

    #[test]
    fn layouts_match_the_linux_headers() {
        use vs::*;
        assert_eq!(size_of::<virtio_scsi_cmd_req>(), CMD_REQ_SIZE);
        assert_eq!(offset_of!(virtio_scsi_cmd_req, lun), CMD_REQ_LUN);
        assert_eq!(offset_of!(virtio_scsi_cmd_req, tag), CMD_REQ_ID);
        assert_eq!(offset_of!(virtio_scsi_cmd_req, task_attr), CMD_REQ_TASK_ATTR);
        assert_eq!(offset_of!(virtio_scsi_cmd_req, prio), CMD_REQ_PRIO);
        assert_eq!(offset_of!(virtio_scsi_cmd_req, crn), CMD_REQ_CRN);
        assert_eq!(offset_of!(virtio_scsi_cmd_req, cdb), CMD_REQ_CDB);
        assert_eq!(CDB_SIZE, VIRTIO_SCSI_CDB_SIZE as usize);
        assert_eq!(size_of::<virtio_scsi_cmd_resp>(), CMD_RESP_SIZE);
        assert_eq!(offset_of!(virtio_scsi_cmd_resp, sense_len), CMD_RESP_SENSE_LEN);
        assert_eq!(offset_of!(virtio_scsi_cmd_resp, resid), CMD_RESP_RESID);
        assert_eq!(offset_of!(virtio_scsi_cmd_resp, status_qualifier), CMD_RESP_STATUS_QUALIFIER);
        assert_eq!(offset_of!(virtio_scsi_cmd_resp, status), CMD_RESP_STATUS);
        assert_eq!(offset_of!(virtio_scsi_cmd_resp, response), CMD_RESP_RESPONSE);
        assert_eq!(offset_of!(virtio_scsi_cmd_resp, sense), CMD_RESP_SENSE);
        assert_eq!(SENSE_SIZE, VIRTIO_SCSI_SENSE_SIZE as usize);
        assert_eq!(size_of::<virtio_scsi_ctrl_tmf_req>(), TMF_REQ_SIZE);
        assert_eq!(offset_of!(virtio_scsi_ctrl_tmf_req, subtype), 4);
        assert_eq!(offset_of!(virtio_scsi_ctrl_tmf_req, lun), 8);
        assert_eq!(offset_of!(virtio_scsi_ctrl_tmf_req, tag), 16);
        assert_eq!(size_of::<virtio_scsi_ctrl_tmf_resp>(), TMF_RESP_SIZE);
        assert_eq!(size_of::<virtio_scsi_ctrl_an_req>(), AN_REQ_SIZE);
        assert_eq!(offset_of!(virtio_scsi_ctrl_an_req, event_requested), 12);
        assert_eq!(size_of::<virtio_scsi_ctrl_an_resp>(), AN_RESP_SIZE);
        assert_eq!(offset_of!(virtio_scsi_ctrl_an_resp, response), 4);
        assert_eq!(size_of::<virtio_scsi_event>(), EVENT_SIZE);
        assert_eq!(offset_of!(virtio_scsi_event, lun), 4);
        assert_eq!(offset_of!(virtio_scsi_event, reason), 12);
        assert_eq!(size_of::<virtio_scsi_config>(), crate::client::ScsiConfig::SIZE);
        // Header and response fit their slot halves.
        const { assert!(CMD_REQ_SIZE as u64 <= RESP && RESP + CMD_RESP_SIZE as u64 <= SLOT) };
    }

    #[test]
    fn cmd_req_encoding() {
        let cdb = cdb::read16(0x0102_0304_0506_0708, 8);
        let r = CmdReq::new(2, 0x105, 0xAABB_CCDD_EEFF_0011, &cdb).unwrap();
        let b = r.encode();
        assert_eq!(&b[0..8], &[1, 2, 0x41, 0x05, 0, 0, 0, 0]);
        assert_eq!(&b[8..16], &0xAABB_CCDD_EEFF_0011u64.to_le_bytes());
        assert_eq!(&b[16..19], &[task_attr::SIMPLE, 0, 0]);
        assert_eq!(&b[19..35], &cdb);
        assert!(b[35..].iter().all(|&x| x == 0));
        assert_eq!(CmdReq::new(0, 0, 0, &[0; 33]), Err(ScsiError::CdbTooLong(33)));
        assert!(CmdReq::new(0, 0, 0, &[0xEE; 32]).unwrap().encode()[19..].iter().all(|&x| x == 0xEE));
    }

    #[test]
    fn cmd_resp_decoding() {
        let mut b = [0u8; CMD_RESP_SIZE];
        b[0..4].copy_from_slice(&18u32.to_le_bytes());
        b[4..8].copy_from_slice(&512u32.to_le_bytes());
        b[8..10].copy_from_slice(&0x1234u16.to_le_bytes());
        b[10] = status::CHECK_CONDITION;
        b[11] = response::OK;
        // Fixed-format sense: ILLEGAL REQUEST, LBA OUT OF RANGE.
        b[12] = 0x70;
        b[14] = 0x05;
        b[24] = 0x21;
        b[25] = 0x00;
        let r = CmdResp::decode(&b);
        assert_eq!((r.sense_len, r.resid, r.status_qualifier), (18, 512, 0x1234));
        assert_eq!((r.status, r.response), (status::CHECK_CONDITION, response::OK));
        assert_eq!(r.sense().len(), 18);
        assert_eq!(r.sense_key(), Some((0x05, 0x21, 0x00)));
        assert!(!r.is_good());
        // sense_len beyond the buffer is clamped.
        b[0..4].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(CmdResp::decode(&b).sense().len(), SENSE_SIZE);
        // Descriptor format: UNIT ATTENTION, POWER ON OCCURRED.
        assert_eq!(sense_key(&[0x72, 0x06, 0x29, 0x00, 0, 0, 0, 0]), Some((0x06, 0x29, 0x00)));
        assert_eq!(sense_key(&[]), None);
        assert_eq!(sense_key(&[0x70, 0, 5]), None);
        let good = [0u8; CMD_RESP_SIZE];
        assert!(CmdResp::decode(&good).is_good());
    }

    #[test]
    fn ctrl_and_event_encoding() {
        let t = encode_tmf(ctrl::TMF_ABORT_TASK, 1, 2, 0x55);
        assert_eq!(&t[0..4], &0u32.to_le_bytes());
        assert_eq!(&t[4..8], &ctrl::TMF_ABORT_TASK.to_le_bytes());
        assert_eq!(&t[8..16], &lun_field(1, 2));
        assert_eq!(&t[16..24], &0x55u64.to_le_bytes());
        assert_eq!(ctrl::TMF_LOGICAL_UNIT_RESET, 5);
        assert_eq!(ctrl::TMF_I_T_NEXUS_RESET, 4);
        let a = encode_an(ctrl::T_AN_QUERY, 0, 0, 0x10);
        assert_eq!(&a[0..4], &1u32.to_le_bytes());
        assert_eq!(&a[4..12], &lun_field(0, 0));
        assert_eq!(&a[12..16], &0x10u32.to_le_bytes());
        let mut e = [0u8; EVENT_SIZE];
        e[0..4].copy_from_slice(&(event::TRANSPORT_RESET | event::EVENTS_MISSED).to_le_bytes());
        e[4..12].copy_from_slice(&lun_field(0, 3));
        e[12..16].copy_from_slice(&event::RESET_REMOVED.to_le_bytes());
        let ev = Event::decode(&e);
        assert!(ev.missed());
        assert_eq!(ev.kind(), event::TRANSPORT_RESET);
        assert_eq!(ev.reason, event::RESET_REMOVED);
        assert_eq!(ev.address(), Some((0, 3)));
    }

    #[test]
    fn cdb_builders() {
        assert_eq!(cdb::read10(0x0102_0304, 0x0506), [0x28, 0, 1, 2, 3, 4, 0, 5, 6, 0]);
        assert_eq!(cdb::write10(7, 1), [0x2a, 0, 0, 0, 0, 7, 0, 0, 1, 0]);
        assert_eq!(
            cdb::read16(0x0102_0304_0506_0708, 0x090a_0b0c),
            [0x88, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0, 0]
        );
        assert_eq!(cdb::write16(1, 8), [0x8a, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0]);
        assert_eq!(cdb::read_capacity16(32), [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]);
        assert_eq!(cdb::read_capacity10(), [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(cdb::inquiry(None, 96), [0x12, 0, 0, 0, 96, 0]);
        assert_eq!(cdb::inquiry(Some(0x83), 0x100), [0x12, 1, 0x83, 1, 0, 0]);
        assert_eq!(cdb::test_unit_ready(), [0; 6]);
        assert_eq!(cdb::request_sense(18), [3, 0, 0, 0, 18, 0]);
        assert_eq!(cdb::report_luns(4096), [0xa0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0]);
        assert_eq!(cdb::synchronize_cache10(0, 0), [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let mut rc = [0u8; 32];
        rc[0..8].copy_from_slice(&0x1_0000_0000u64.to_be_bytes());
        rc[8..12].copy_from_slice(&4096u32.to_be_bytes());
        assert_eq!(cdb::parse_read_capacity16(&rc), Some((0x1_0000_0000, 4096)));
        assert_eq!(cdb::parse_read_capacity16(&rc[..11]), None);
        assert_eq!(cdb::parse_read_capacity10(&[0, 0, 0xff, 0xff, 0, 0, 2, 0]), Some((0xffff, 512)));
    }

    #[test]
    fn config_decoding() {
        let mut b = [0u8; crate::client::ScsiConfig::SIZE];
        for (i, v) in [4u32, 126, 0xffff, 128, 16, 96, 32].iter().enumerate() {
            b[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        b[30..32].copy_from_slice(&255u16.to_le_bytes());
        b[32..36].copy_from_slice(&16383u32.to_le_bytes());
        let c = crate::client::ScsiConfig::decode(&b);
        assert_eq!((c.num_queues, c.seg_max, c.max_sectors, c.cmd_per_lun), (4, 126, 0xffff, 128));
        assert_eq!((c.event_info_size, c.sense_size, c.cdb_size), (16, 96, 32));
        assert_eq!((c.max_channel, c.max_target, c.max_lun), (0, 255, 16383));
    }

    /// Submits every request kind on a queue in plain memory and checks the chains the device
    /// would see, then plays the device: writes responses and used entries, and polls.
    #[test]
    fn chains_and_completions() {
        let mem = Arc::new(SharedMemory::new(1 << 20, None).unwrap());
        let ring = SplitQueue::new(mem.clone(), 16).unwrap();
        let (desc, avail, used) = ring.addresses();
        let mut q = ScsiQueue::new(ring, mem.clone()).unwrap();
        let desc_at = |i: u16| {
            let mut d = [0u8; 16];
            mem.read(desc + 16 * i as u64, &mut d);
            let addr = u64::from_le_bytes(d[0..8].try_into().unwrap());
            let len = u32::from_le_bytes(d[8..12].try_into().unwrap());
            (addr, len, u16::from_le_bytes([d[12], d[13]]), u16::from_le_bytes([d[14], d[15]]))
        };
        let chain = |head: u16| {
            let mut out = vec![];
            let mut i = head;
            loop {
                let d = desc_at(i);
                out.push((d.0, d.1, d.2 & flags::WRITE != 0));
                if d.2 & flags::NEXT == 0 {
                    return out;
                }
                i = d.3;
            }
        };
        let out = [(0x8000u64, 512u32)];
        let inb = [(0x9000u64, 4096u32), (0xA000, 4096)];
        let cdb = cdb::write16(9, 1);
        let w = ScsiRequest::Command { target: 0, lun: 1, cdb: &cdb, data_out: &out, data_in: &[] };
        let h_w = q.submit(&w, 7).unwrap();
        let cdb_r = cdb::read16(0, 16);
        let r = ScsiRequest::Command { target: 0, lun: 1, cdb: &cdb_r, data_out: &[], data_in: &inb };
        let h_r = q.submit(&r, 8).unwrap();
        let h_t = q.submit(&ScsiRequest::Tmf { subtype: ctrl::TMF_ABORT_TASK, target: 0, lun: 1, id: 7 }, 9).unwrap();
        let h_e = q.submit(&ScsiRequest::EventBuffer, 10).unwrap();
        assert_eq!(mem.load_u16(avail + 2), 4);
        let (wreq, wresp) = q.slot(h_w);
        assert_eq!(chain(h_w), vec![(wreq, 51, false), (0x8000, 512, false), (wresp, 108, true)]);
        let mut hdr = [0u8; CMD_REQ_SIZE];
        mem.read(wreq, &mut hdr);
        assert_eq!(hdr, CmdReq::new(0, 1, 7, &cdb).unwrap().encode());
        let (rreq, rresp) = q.slot(h_r);
        assert_eq!(chain(h_r), vec![(rreq, 51, false), (rresp, 108, true), (0x9000, 4096, true), (0xA000, 4096, true)]);
        let (treq, tresp) = q.slot(h_t);
        assert_eq!(chain(h_t), vec![(treq, 24, false), (tresp, 1, true)]);
        let (_, eresp) = q.slot(h_e);
        assert_eq!(chain(h_e), vec![(eresp, 16, true)]);
        assert_eq!(q.ring().free_descriptors(), 16 - 3 - 4 - 2 - 1);

        // The device: the write fails with sense, the read succeeds, the TMF completes, an
        // event arrives.
        let mut resp = [0u8; CMD_RESP_SIZE];
        resp[0] = 18;
        resp[10] = status::CHECK_CONDITION;
        resp[12] = 0x70;
        resp[14] = 0x07;
        resp[24] = 0x27;
        mem.write(wresp, &resp);
        mem.write(rresp, &[0u8; CMD_RESP_SIZE]);
        mem.store_u8(tresp, response::FUNCTION_SUCCEEDED);
        let mut ev = [0u8; EVENT_SIZE];
        ev[0] = event::TRANSPORT_RESET as u8;
        ev[4..12].copy_from_slice(&lun_field(0, 2));
        ev[12] = event::RESET_RESCAN as u8;
        mem.write(eresp, &ev);
        for (k, (h, len)) in [(h_w, 108u32), (h_r, 108 + 8192), (h_t, 1), (h_e, 16)].into_iter().enumerate() {
            let e = used + 4 + 8 * k as u64;
            mem.write(e, &(h as u32).to_le_bytes());
            mem.write(e + 4, &len.to_le_bytes());
        }
        mem.store_u16(used + 2, 4);
        let mut done = vec![];
        assert_eq!(q.poll(&mut done), 4);
        assert_eq!(done[0].tag(), 7);
        assert!(!done[0].is_good());
        assert_eq!(done[0].command().unwrap().sense_key(), Some((0x07, 0x27, 0)));
        assert!(done[1].is_good());
        assert_eq!((done[1].tag(), done[1].used_len()), (8, 108 + 8192));
        assert_eq!(done[2], ScsiCompletion::Tmf { tag: 9, len: 1, response: response::FUNCTION_SUCCEEDED });
        let ScsiCompletion::Event { tag: 10, event: got, .. } = done[3] else { panic!("{:?}", done[3]) };
        assert_eq!((got.kind(), got.reason, got.address()), (event::TRANSPORT_RESET, 1, Some((0, 2))));
        assert_eq!(q.ring().free_descriptors(), 16);
        // A response the device never wrote shows as 0xFF.
        let h = q.submit(&w, 11).unwrap();
        mem.write(used + 4 + 8 * 4, &(h as u32).to_le_bytes());
        mem.store_u16(used + 2, 5);
        done.clear();
        q.poll(&mut done);
        assert_eq!(done[0].response(), Some(0xFF));
        // Too long a CDB, and a full ring.
        let long = [0u8; 40];
        let bad = ScsiRequest::Command { target: 0, lun: 0, cdb: &long, data_out: &[], data_in: &[] };
        assert_eq!(q.submit(&bad, 0), Err(ScsiError::CdbTooLong(40)));
        let many = [(0u64, 512u32); 16];
        let big = ScsiRequest::Command { target: 0, lun: 0, cdb: &cdb_r, data_out: &[], data_in: &many };
        assert_eq!(q.submit(&big, 0), Err(ScsiError::QueueFull));
    }
}
