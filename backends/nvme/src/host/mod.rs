//! Ferry's NVMe host (initiator) side: the driver half that attaches a remote controller.
//!
//! - [`qpair::TcpQpair`]: one NVMe/TCP queue pair on a non-blocking socket (ICReq/ICResp,
//!   fabrics Connect, capsules with in-capsule data, R2T/H2CData, C2HData, completions by CID),
//!   driven entirely by [`Qpair::poll`]. A hostile target fails the queue pair with a
//!   [`HostError`]; nothing it sends can make it panic or write outside a command's buffer.
//! - [`ctrlr::Controller`]: the controller bring-up (Connect, CAP/VS, CC.EN, CSTS.RDY,
//!   Identify, namespaces, Number of Queues), keep alive, and the reset/reconnect state machine
//!   ([`reconnect`]), written against the [`Transport`] and [`Qpair`] traits so that a later
//!   PCIe or vfio-user transport reuses it.
//! - [`ctrlr::Shared`]: what the controller publishes to the threads that run I/O queue pairs
//!   (generation, CNTLID, limits, state), so they reconnect their own queues after a reset.
//!
//! Knows nothing about bdevs or reactors: callers poll.

pub mod cmd;
pub mod ctrlr;
pub mod health;
pub mod identify;
pub mod pcie;
pub mod qpair;
pub mod reconnect;
mod sock;
pub mod tcp;
#[cfg(test)]
mod tests;

use crate::spec::{Command, Completion, Status};
use crate::tcp::TermError;
use thiserror::Error;

/// Why a queue pair or a controller failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HostError {
    /// A socket operation failed.
    #[error("{context}: {message}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The OS error.
        message: String,
    },
    /// The target closed the connection.
    #[error("the target closed the connection")]
    Closed,
    /// A PDU from the target broke the protocol (what a termination request would say).
    #[error("bad PDU from the target: {0}")]
    Protocol(TermError),
    /// The target terminated the connection with a C2HTermReq.
    #[error("the target terminated the connection: fatal error status {fes:#x}, information {fei}")]
    Terminated {
        /// Fatal error status.
        fes: u16,
        /// Fatal error information.
        fei: u32,
    },
    /// The ICResp was unacceptable.
    #[error("bad ICResp: {0}")]
    IcResp(String),
    /// Fabrics Connect failed.
    #[error("Connect refused with status {status:?} (dw0 {dw0:#x})")]
    ConnectRefused {
        /// The completion's status.
        status: Status,
        /// DW0 (IATTR/IPO for invalid parameters).
        dw0: u32,
    },
    /// Something the target sent did not match any command or went beyond its buffer.
    #[error("target sent {0}")]
    Unexpected(String),
    /// A data digest did not match.
    #[error("data digest mismatch on command {cid}")]
    DataDigest {
        /// The command identifier.
        cid: u16,
    },
    /// A step did not finish in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A controller bring-up command failed or reported something unusable.
    #[error("{step}: {reason}")]
    Bringup {
        /// The step.
        step: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// The controller is being reset (a bdev reset, or one of its I/O queues failed).
    #[error("reset: {0}")]
    Reset(String),
    /// The queue pair has no free command slot.
    #[error("queue full")]
    QueueFull,
    /// The request cannot be carried (too large, bad length).
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl HostError {
    /// An I/O error while `context`.
    pub fn io(context: &'static str, e: std::io::Error) -> HostError {
        HostError::Io { context, message: e.to_string() }
    }
}

/// Data direction of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// No data.
    None,
    /// Host to controller (writes).
    ToCtrlr,
    /// Controller to host (reads).
    FromCtrlr,
}

/// One piece of a caller's data buffer.
#[derive(Debug, Clone, Copy)]
pub struct Seg {
    /// Start.
    pub ptr: *mut u8,
    /// Length in bytes.
    pub len: usize,
}

/// A command's completion as a queue pair returns it.
#[derive(Debug)]
pub struct QpCompletion {
    /// The tag the command was submitted with.
    pub tag: u64,
    /// The completion (for a C2HData with SUCCESS, a made-up successful one).
    pub cpl: Completion,
    /// The buffer of a command submitted with [`Qpair::submit_owned`].
    pub data: Option<Vec<u8>>,
}

/// One queue pair of any transport, as the controller and I/O channels use it.
pub trait Qpair {
    /// Queues `cmd` with an owned buffer (`data` for a write, or a zeroed buffer of the length
    /// to read); the CID is chosen here. The buffer comes back in the completion.
    fn submit_owned(&mut self, cmd: Command, dir: Dir, data: Vec<u8>, tag: u64) -> Result<(), HostError>;

    /// Queues `cmd` with the caller's buffer `segs`.
    ///
    /// # Safety
    /// Every segment must stay valid for reads (writes) and writes (reads) and untouched by
    /// anyone else until its completion is returned by `poll` or the queue pair is dropped
    /// or drained with [`Qpair::take_unfinished`].
    unsafe fn submit_segs(&mut self, cmd: Command, dir: Dir, segs: &[Seg], tag: u64) -> Result<(), HostError>;

    /// Moves the connection forward without blocking: sends what is queued, reads what has
    /// arrived, and appends finished commands to `out`. Returns whether anything happened;
    /// an error means the queue pair has failed (and keeps failing).
    fn poll(&mut self, out: &mut Vec<QpCompletion>) -> Result<bool, HostError>;

    /// Whether Connect finished and commands flow.
    fn is_ready(&self) -> bool;

    /// The controller id the Connect response gave (valid once ready).
    fn cntlid(&self) -> u16;

    /// Commands that can still be submitted.
    fn free_slots(&self) -> usize;

    /// Commands submitted and not completed (for a failed queue pair: the ones to fail or
    /// retry); their tags, leaving the queue pair empty.
    fn take_unfinished(&mut self) -> Vec<u64>;

    /// The file descriptor to wait on for readiness, if any.
    fn raw_fd(&self) -> Option<i32>;
}

/// What a transport gives the controller: ways to open its queue pairs.
pub trait Transport: Send + Sync {
    /// The queue pair type.
    type Qpair: Qpair + Send;

    /// Starts connecting the admin queue (returns at once; the queue pair connects as it is
    /// polled). `kato_ms` is the keep-alive timeout to ask for.
    fn connect_admin(&self, kato_ms: u32) -> Result<Self::Qpair, HostError>;

    /// Starts connecting I/O queue `qid` of controller `cntlid` with `sqsize` entries.
    fn connect_io(&self, qid: u16, sqsize: u16, cntlid: u16, limits: &IoLimits) -> Result<Self::Qpair, HostError>;

    /// A short description for logs and `bdev_nvme_get_controllers` (address).
    fn describe(&self) -> String;

    /// Whether this is a fabrics transport (Connect makes the queues, capsules carry data):
    /// Identify's fabrics fields (IOCCSZ, ICDOFF) are checked only then.
    fn is_fabrics(&self) -> bool {
        true
    }

    /// Admin commands the controller runs after Set Features Number of Queues, before it is
    /// ready, to make `io_queues` I/O queues of `qsize` entries exist (PCIe: Doorbell Buffer
    /// Config, Create I/O Completion and Submission Queues). Fabrics need none: Connect makes
    /// a queue.
    fn queue_setup(&self, _data: &identify::CtrlrData, _io_queues: u16, _qsize: u16) -> Vec<SetupCmd> {
        Vec::new()
    }

    /// The most I/O queues this transport can open (PCIe: what its DMA arena holds).
    fn max_io_queues(&self) -> u16 {
        u16::MAX
    }

    /// The most entries per I/O queue this transport can open.
    fn max_queue_size(&self) -> u16 {
        u16::MAX
    }
}

/// An admin command a transport needs run during bring-up (see [`Transport::queue_setup`]).
#[derive(Debug, Clone)]
pub struct SetupCmd {
    /// The command (its data pointers filled in; no data buffer).
    pub cmd: Command,
    /// Whether bring-up fails when it fails (an optional feature's command does not).
    pub required: bool,
    /// What it is, for errors and logs.
    pub what: &'static str,
}

/// A queue pair of any transport, boxed (what a caller holding several transports keeps).
pub type BoxQpair = Box<dyn Qpair + Send>;

/// The part of a transport the I/O threads use, object safe: [`Transport`] with its queue
/// pairs boxed, so one I/O channel serves controllers of any transport.
pub trait IoConnect: Send + Sync {
    /// [`Transport::connect_io`], boxed.
    fn connect_io_boxed(&self, qid: u16, sqsize: u16, cntlid: u16, limits: &IoLimits) -> Result<BoxQpair, HostError>;
    /// [`Transport::describe`].
    fn describe_transport(&self) -> String;
}

impl<T: Transport> IoConnect for T
where
    T::Qpair: 'static,
{
    fn connect_io_boxed(&self, qid: u16, sqsize: u16, cntlid: u16, limits: &IoLimits) -> Result<BoxQpair, HostError> {
        Ok(Box::new(self.connect_io(qid, sqsize, cntlid, limits)?))
    }

    fn describe_transport(&self) -> String {
        self.describe()
    }
}

/// What Identify Controller told about carrying I/O, for the I/O queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IoLimits {
    /// Largest in-capsule data on I/O queues (IOCCSZ × 16 − 64).
    pub in_capsule: u32,
    /// Largest transfer in bytes (MDTS; a Ferry default when the controller sets none).
    pub max_transfer: u32,
}
