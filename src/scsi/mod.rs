//! The SCSI device model (SPC-4 / SBC-3), shared by every SCSI transport: vhost-user-scsi now,
//! the iSCSI target later. It knows nothing about virtio or sockets: a transport decodes its
//! own framing into a [`task::ScsiTask`] (CDB, LUN, data iovecs, direction), hands it to a
//! [`lun::ScsiLun`] on a reactor, and reports the status, sense data and residual it gets back.
//!
//! | module | job |
//! |---|---|
//! | `sense` | status codes and fixed-format sense data |
//! | `cdb` | opcodes and CDB field decoding |
//! | `inquiry` | INQUIRY: standard data and the VPD pages |
//! | `mode` | MODE SENSE / MODE SELECT and the pages they carry |
//! | `report` | READ CAPACITY, REPORT LUNS, REPORT SUPPORTED OPERATION CODES, GET LBA STATUS |
//! | `pr` | persistent reservations and SPC-2 RESERVE/RELEASE |
//! | `sanitize` | SANITIZE: overwrite and erase of the whole medium as a background operation |
//! | `task` | one command as a transport submits it |
//! | `blockcmd` | READ/WRITE and the other commands that move bdev data, as bdev I/O sequences |
//! | `xcopy` | EXTENDED COPY (LID1) and RECEIVE COPY RESULTS: copies between units by NAA |
//! | `tmf` | task management: aborts and resets |
//! | `lun` | a logical unit on a bdev: dispatch, the data path, unit attentions, task management |
//! | `target` | a SCSI target device: its LUNs and LUN addressing |

mod blockcmd;
pub mod cdb;
pub mod inquiry;
pub mod lun;
pub mod mode;
pub mod pr;
pub mod report;
mod sanitize;
pub mod sense;
pub mod target;
pub mod task;
#[cfg(test)]
mod tests;
pub mod tmf;
mod xcopy;

pub(crate) use blockcmd::{io_error_sense, PlainIo};
pub use lun::ScsiLun;
pub use sense::{Failure, Sense};
pub use target::ScsiTarget;
pub use task::{DataDir, Residual, ScsiTask, TaskDone};

use uuid::Uuid;

/// What the command handlers know about a logical unit: a snapshot taken when a command runs
/// (the capacity can change under a running LUN).
#[derive(Debug, Clone)]
pub struct LunInfo {
    /// The LUN number as REPORT LUNS gives it.
    pub lun_id: u64,
    /// The target's name (for designators), e.g. `vhost.0.Target0`.
    pub target_name: String,
    /// The target's relative port identifier (1-based).
    pub relative_port: u16,
    /// The bdev's name.
    pub bdev_name: String,
    /// The bdev's product name (INQUIRY PRODUCT IDENTIFICATION, truncated to 16 bytes).
    pub product: String,
    /// The bdev's uuid (NAA and unit serial are derived from it: stable across restarts).
    pub uuid: Uuid,
    /// Logical block size in bytes.
    pub block_size: u32,
    /// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT (SBC-3 5.16.2): the bdev's physical block is
    /// `block_size << lbppbe` bytes.
    pub lbppbe: u8,
    /// Number of logical blocks.
    pub num_blocks: u64,
    /// UNMAP (and WRITE SAME with UNMAP) is supported.
    pub unmap: bool,
    /// Writing zeroes without a buffer is supported.
    pub write_zeroes: bool,
    /// SYNCHRONIZE CACHE does something (the bdev has a volatile cache to flush).
    pub flush: bool,
    /// The unit refuses writes.
    pub readonly: bool,
    /// The medium is removable (standard INQUIRY's RMB): START STOP UNIT ejects and loads it.
    pub removable: bool,
    /// Largest transfer, in blocks, for one READ/WRITE (block limits VPD).
    pub max_transfer_blocks: u32,
    /// Largest UNMAP, in blocks per descriptor (block limits VPD).
    pub max_unmap_blocks: u32,
    /// Most descriptors in one UNMAP parameter list (block limits VPD).
    pub max_unmap_descriptors: u32,
}

/// An I_T nexus: who is talking to the unit, through which target port. Reservations and
/// unit attentions are kept per nexus.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nexus {
    /// The initiator port's name (an iSCSI `iqn...,i,0x<isid>`, or a vhost controller's
    /// session for vhost-user-scsi). Also reported as an iSCSI-format TransportID.
    pub initiator: String,
    /// The target port's relative identifier.
    pub target_port: u16,
}
