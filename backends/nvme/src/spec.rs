//! NVMe command, completion and status formats (NVM Express Base Specification 2.0 §4.2,
//! §4.6, §3.3.3.2; NVMe over Fabrics 1.1 §6 for the fabrics commands).

/// Little-endian field access on a byte array (every NVMe structure is little endian).
macro_rules! le_fields {
    ($($get:ident, $set:ident, $t:ty, $off:expr;)*) => {
        $(
            #[doc = concat!("The field at byte ", stringify!($off), ".")]
            pub fn $get(&self) -> $t {
                const N: usize = std::mem::size_of::<$t>();
                let mut b = [0u8; N];
                b.copy_from_slice(&self.0[$off..$off + N]);
                <$t>::from_le_bytes(b)
            }
            #[doc = concat!("Sets the field at byte ", stringify!($off), ".")]
            pub fn $set(&mut self, v: $t) {
                const N: usize = std::mem::size_of::<$t>();
                self.0[$off..$off + N].copy_from_slice(&v.to_le_bytes());
            }
        )*
    };
}

/// Reads a little-endian u16 at `off` (bounds checked by the caller's slice).
pub fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

/// Reads a little-endian u32 at `off`.
pub fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Reads a little-endian u64 at `off`.
pub fn le64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// Writes a little-endian u16 at `off`.
pub fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

/// Writes a little-endian u32 at `off`.
pub fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// Writes a little-endian u64 at `off`.
pub fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Copies `s` into a fixed-width, space-padded ASCII field (serial, model, firmware).
pub fn put_ascii_padded(b: &mut [u8], s: &str) {
    for (i, slot) in b.iter_mut().enumerate() {
        *slot = s.as_bytes().get(i).copied().unwrap_or(b' ');
    }
}

/// Copies `s` into a fixed-width, NUL-padded field (NQNs, transport addresses).
pub fn put_nul_padded(b: &mut [u8], s: &str) {
    b.fill(0);
    let n = s.len().min(b.len().saturating_sub(1));
    b[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// A NUL-terminated (or full-width) string field, if it is UTF-8.
pub fn nul_terminated(b: &[u8]) -> Option<&str> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    std::str::from_utf8(&b[..end]).ok()
}

/// One submission queue entry: 64 bytes, as a host sends it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Command(pub [u8; 64]);

impl Default for Command {
    fn default() -> Self {
        Command([0; 64])
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Command")
            .field("opcode", &format_args!("{:#04x}", self.opcode()))
            .field("cid", &self.cid())
            .field("nsid", &self.nsid())
            .field("cdw10", &format_args!("{:#x}", self.cdw10()))
            .field("cdw11", &format_args!("{:#x}", self.cdw11()))
            .field("cdw12", &format_args!("{:#x}", self.cdw12()))
            .finish()
    }
}

impl Command {
    /// A command from its 64 bytes (`bytes` must hold at least 64).
    pub fn from_bytes(bytes: &[u8]) -> Command {
        let mut c = [0u8; 64];
        c.copy_from_slice(&bytes[..64]);
        Command(c)
    }

    /// A zeroed command with this opcode and command identifier.
    pub fn new(opcode: u8, cid: u16) -> Command {
        let mut c = Command::default();
        c.0[0] = opcode;
        c.set_cid(cid);
        c
    }

    /// The opcode (CDW0 bits 7:0).
    pub fn opcode(&self) -> u8 {
        self.0[0]
    }

    /// Fused operation (CDW0 bits 9:8): 0 normal, 1 first of a fused pair, 2 second.
    pub fn fuse(&self) -> u8 {
        self.0[1] & 0x3
    }

    /// Sets the fused operation bits.
    pub fn set_fuse(&mut self, fuse: u8) {
        self.0[1] = (self.0[1] & !0x3) | (fuse & 0x3);
    }

    /// PRP or SGL for data transfer (CDW0 bits 15:14): 0 PRP, 1 or 2 SGL.
    pub fn psdt(&self) -> u8 {
        self.0[1] >> 6
    }

    /// Sets PSDT.
    pub fn set_psdt(&mut self, psdt: u8) {
        self.0[1] = (self.0[1] & 0x3f) | (psdt << 6);
    }

    /// The fabrics command type (byte 4 of a fabrics command, opcode 0x7F).
    pub fn fctype(&self) -> u8 {
        self.0[4]
    }

    /// The data pointer as an SGL descriptor (bytes 24..40).
    pub fn sgl(&self) -> SglDescriptor {
        SglDescriptor::from_bytes(&self.0[24..40])
    }

    /// Sets the data pointer to an SGL descriptor (and PSDT to SGL).
    pub fn set_sgl(&mut self, d: &SglDescriptor) {
        self.0[24..40].copy_from_slice(&d.to_bytes());
        self.set_psdt(1);
    }

    /// The starting LBA of a read, write, compare, write zeroes or verify (CDW10-11).
    pub fn slba(&self) -> u64 {
        le64(&self.0, 40)
    }

    /// Sets the starting LBA.
    pub fn set_slba(&mut self, lba: u64) {
        put64(&mut self.0, 40, lba)
    }

    /// The number of logical blocks of a read, write, compare, write zeroes or verify
    /// (CDW12 bits 15:0 plus one).
    pub fn nlb(&self) -> u32 {
        (self.cdw12() & 0xffff) + 1
    }

    /// Force Unit Access (CDW12 bit 30).
    pub fn fua(&self) -> bool {
        self.cdw12() & (1 << 30) != 0
    }

    le_fields! {
        cid, set_cid, u16, 2;
        nsid, set_nsid, u32, 4;
        cdw2, set_cdw2, u32, 8;
        cdw3, set_cdw3, u32, 12;
        mptr, set_mptr, u64, 16;
        prp1, set_prp1, u64, 24;
        prp2, set_prp2, u64, 32;
        cdw10, set_cdw10, u32, 40;
        cdw11, set_cdw11, u32, 44;
        cdw12, set_cdw12, u32, 48;
        cdw13, set_cdw13, u32, 52;
        cdw14, set_cdw14, u32, 56;
        cdw15, set_cdw15, u32, 60;
    }
}

/// SGL descriptor types (high nibble of byte 15) and subtypes (low nibble).
pub mod sgl {
    /// Data Block descriptor.
    pub const DATA_BLOCK: u8 = 0x0;
    /// Keyed Data Block descriptor (RDMA).
    pub const KEYED_DATA_BLOCK: u8 = 0x4;
    /// Transport SGL Data Block descriptor (NVMe/TCP: data moved by H2CData/C2HData).
    pub const TRANSPORT_DATA_BLOCK: u8 = 0x5;
    /// Subtype: the address is an address.
    pub const SUB_ADDRESS: u8 = 0x0;
    /// Subtype: the address is an offset (in-capsule data: offset into the capsule's data).
    pub const SUB_OFFSET: u8 = 0x1;
    /// Subtype: transport specific (NVMe/TCP uses 0xA for the transport data block).
    pub const SUB_TRANSPORT: u8 = 0xA;
}

/// One 16-byte SGL descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SglDescriptor {
    /// Address or offset.
    pub address: u64,
    /// Length in bytes (for a keyed descriptor, the low 24 bits).
    pub length: u32,
    /// Descriptor type (`sgl::*`).
    pub kind: u8,
    /// Descriptor subtype (`sgl::SUB_*`).
    pub subtype: u8,
}

impl SglDescriptor {
    /// Decodes 16 bytes.
    pub fn from_bytes(b: &[u8]) -> SglDescriptor {
        SglDescriptor { address: le64(b, 0), length: le32(b, 8), kind: b[15] >> 4, subtype: b[15] & 0xf }
    }

    /// Encodes 16 bytes.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        put64(&mut b, 0, self.address);
        put32(&mut b, 8, self.length);
        b[15] = (self.kind << 4) | (self.subtype & 0xf);
        b
    }

    /// In-capsule data: a Data Block with an offset into the capsule's data.
    pub fn in_capsule(offset: u64, length: u32) -> SglDescriptor {
        SglDescriptor { address: offset, length, kind: sgl::DATA_BLOCK, subtype: sgl::SUB_OFFSET }
    }

    /// Data moved by the transport (NVMe/TCP R2T/H2CData or C2HData).
    pub fn transport(length: u32) -> SglDescriptor {
        SglDescriptor { address: 0, length, kind: sgl::TRANSPORT_DATA_BLOCK, subtype: sgl::SUB_TRANSPORT }
    }
}

/// A command's outcome: status code type, status code, and the More and Do Not Retry bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Status {
    /// Status Code Type (`sct::*`).
    pub sct: u8,
    /// Status Code.
    pub sc: u8,
    /// More information in the error log.
    pub more: bool,
    /// Do Not Retry.
    pub dnr: bool,
}

impl Status {
    /// Successful completion.
    pub const SUCCESS: Status = Status { sct: 0, sc: 0, more: false, dnr: false };

    /// A generic (SCT 0) status.
    pub const fn generic(sc: u8) -> Status {
        Status { sct: sct::GENERIC, sc, more: false, dnr: false }
    }

    /// A command-specific (SCT 1) status.
    pub const fn command(sc: u8) -> Status {
        Status { sct: sct::COMMAND_SPECIFIC, sc, more: false, dnr: false }
    }

    /// A media and data integrity (SCT 2) status.
    pub const fn media(sc: u8) -> Status {
        Status { sct: sct::MEDIA, sc, more: false, dnr: false }
    }

    /// A path-related (SCT 3) status.
    pub const fn path(sc: u8) -> Status {
        Status { sct: sct::PATH, sc, more: false, dnr: false }
    }

    /// The same status with Do Not Retry set.
    pub const fn dnr(mut self) -> Status {
        self.dnr = true;
        self
    }

    /// Whether the command succeeded.
    pub fn is_success(&self) -> bool {
        self.sct == 0 && self.sc == 0
    }

    /// The 15-bit status field as a completion carries it (bits 15:1 of DW3's upper half,
    /// without the phase bit).
    pub fn to_field(&self) -> u16 {
        ((self.sc as u16) << 1)
            | (((self.sct & 0x7) as u16) << 9)
            | ((self.more as u16) << 14)
            | ((self.dnr as u16) << 15)
    }

    /// Decodes the status field of a completion (the phase bit is ignored).
    pub fn from_field(f: u16) -> Status {
        Status { sc: (f >> 1) as u8, sct: ((f >> 9) & 0x7) as u8, more: f & (1 << 14) != 0, dnr: f & (1 << 15) != 0 }
    }
}

/// Status code types.
pub mod sct {
    /// Generic command status.
    pub const GENERIC: u8 = 0;
    /// Command specific status.
    pub const COMMAND_SPECIFIC: u8 = 1;
    /// Media and data integrity errors.
    pub const MEDIA: u8 = 2;
    /// Path related status.
    pub const PATH: u8 = 3;
}

/// Generic status codes (SCT 0).
pub mod sc {
    /// Successful completion.
    pub const SUCCESS: u8 = 0x00;
    /// Invalid command opcode.
    pub const INVALID_OPCODE: u8 = 0x01;
    /// Invalid field in command.
    pub const INVALID_FIELD: u8 = 0x02;
    /// Command ID conflict.
    pub const CID_CONFLICT: u8 = 0x03;
    /// Data transfer error.
    pub const DATA_TRANSFER_ERROR: u8 = 0x04;
    /// Internal error.
    pub const INTERNAL: u8 = 0x06;
    /// Command abort requested.
    pub const ABORTED_BY_REQUEST: u8 = 0x07;
    /// Command aborted due to SQ deletion.
    pub const ABORTED_SQ_DELETION: u8 = 0x08;
    /// Command aborted due to failed fused command.
    pub const ABORTED_FAILED_FUSED: u8 = 0x09;
    /// Command aborted due to missing fused command.
    pub const ABORTED_MISSING_FUSED: u8 = 0x0a;
    /// Invalid namespace or format.
    pub const INVALID_NS: u8 = 0x0b;
    /// Command sequence error.
    pub const COMMAND_SEQUENCE_ERROR: u8 = 0x0c;
    /// Invalid SGL segment descriptor.
    pub const INVALID_SGL_SEG_DESC: u8 = 0x0d;
    /// Invalid number of SGL descriptors.
    pub const INVALID_NUM_SGL_DESC: u8 = 0x0e;
    /// Data SGL length invalid.
    pub const DATA_SGL_LENGTH_INVALID: u8 = 0x0f;
    /// SGL descriptor type invalid.
    pub const SGL_DESCRIPTOR_TYPE_INVALID: u8 = 0x11;
    /// Invalid use of controller memory buffer.
    pub const INVALID_CMB_USE: u8 = 0x12;
    /// PRP offset invalid.
    pub const PRP_OFFSET_INVALID: u8 = 0x13;
    /// SGL offset invalid.
    pub const INVALID_SGL_OFFSET: u8 = 0x16;
    /// Host identifier inconsistent format.
    pub const HOSTID_INCONSISTENT: u8 = 0x18;
    /// Keep alive timer expired.
    pub const KEEP_ALIVE_EXPIRED: u8 = 0x19;
    /// Keep alive timeout invalid.
    pub const KEEP_ALIVE_INVALID: u8 = 0x1a;
    /// Command aborted due to preempt and abort.
    pub const ABORTED_PREEMPT: u8 = 0x1b;
    /// Namespace is write protected.
    pub const NS_WRITE_PROTECTED: u8 = 0x20;
    /// Command interrupted (retry).
    pub const COMMAND_INTERRUPTED: u8 = 0x21;
    /// Transient transport error.
    pub const TRANSIENT_TRANSPORT_ERROR: u8 = 0x22;
    /// LBA out of range.
    pub const LBA_OUT_OF_RANGE: u8 = 0x80;
    /// Capacity exceeded.
    pub const CAPACITY_EXCEEDED: u8 = 0x81;
    /// Namespace not ready.
    pub const NS_NOT_READY: u8 = 0x82;
    /// Reservation conflict.
    pub const RESERVATION_CONFLICT: u8 = 0x83;
}

/// Command specific status codes (SCT 1).
pub mod csc {
    /// Completion queue invalid.
    pub const INVALID_CQ: u8 = 0x00;
    /// Invalid queue identifier.
    pub const INVALID_QID: u8 = 0x01;
    /// Invalid queue size.
    pub const INVALID_QUEUE_SIZE: u8 = 0x02;
    /// Abort command limit exceeded.
    pub const ABORT_LIMIT_EXCEEDED: u8 = 0x03;
    /// Asynchronous event request limit exceeded.
    pub const ASYNC_EVENT_LIMIT_EXCEEDED: u8 = 0x05;
    /// Invalid interrupt vector (Create I/O Completion Queue).
    pub const INVALID_INTERRUPT_VECTOR: u8 = 0x08;
    /// Invalid queue deletion (a completion queue with submission queues on it).
    pub const INVALID_QUEUE_DELETION: u8 = 0x0c;
    /// Invalid firmware slot.
    pub const INVALID_FIRMWARE_SLOT: u8 = 0x06;
    /// Invalid log page.
    pub const INVALID_LOG_PAGE: u8 = 0x09;
    /// Feature identifier not saveable.
    pub const FEATURE_NOT_SAVEABLE: u8 = 0x0d;
    /// Feature not changeable.
    pub const FEATURE_NOT_CHANGEABLE: u8 = 0x0e;
    /// Feature not namespace specific.
    pub const FEATURE_NOT_NS_SPECIFIC: u8 = 0x0f;
    /// Namespace already attached.
    pub const NS_ALREADY_ATTACHED: u8 = 0x18;
    /// Namespace not attached.
    pub const NS_NOT_ATTACHED: u8 = 0x1a;
    /// Conflicting attributes (I/O command set specific).
    pub const CONFLICTING_ATTRIBUTES: u8 = 0x80;
    /// Attempted write to a read-only range.
    pub const WRITE_TO_READ_ONLY: u8 = 0x82;

    /// Fabrics Connect: incompatible format.
    pub const CONNECT_INCOMPATIBLE_FORMAT: u8 = 0x80;
    /// Fabrics Connect: controller busy.
    pub const CONNECT_CONTROLLER_BUSY: u8 = 0x81;
    /// Fabrics Connect: invalid parameters (DW0 of the completion says which: IATTR, IPO).
    pub const CONNECT_INVALID_PARAMETERS: u8 = 0x82;
    /// Fabrics Connect: restart discovery.
    pub const CONNECT_RESTART_DISCOVERY: u8 = 0x83;
    /// Fabrics Connect: invalid host.
    pub const CONNECT_INVALID_HOST: u8 = 0x84;
}

/// Media and data integrity status codes (SCT 2).
pub mod msc {
    /// Write fault.
    pub const WRITE_FAULT: u8 = 0x80;
    /// Unrecovered read error.
    pub const UNRECOVERED_READ_ERROR: u8 = 0x81;
    /// Compare failure.
    pub const COMPARE_FAILURE: u8 = 0x85;
    /// Access denied.
    pub const ACCESS_DENIED: u8 = 0x86;
    /// Deallocated or unwritten logical block.
    pub const DEALLOCATED_OR_UNWRITTEN: u8 = 0x87;
}

/// Path related status codes (SCT 3).
pub mod psc {
    /// Internal path error.
    pub const INTERNAL_PATH_ERROR: u8 = 0x00;
    /// Asymmetric access persistent loss.
    pub const ANA_PERSISTENT_LOSS: u8 = 0x01;
    /// Asymmetric access inaccessible.
    pub const ANA_INACCESSIBLE: u8 = 0x02;
    /// Asymmetric access transition.
    pub const ANA_TRANSITION: u8 = 0x03;
}

/// Admin command opcodes.
pub mod admin {
    /// Delete I/O Submission Queue.
    pub const DELETE_IO_SQ: u8 = 0x00;
    /// Create I/O Submission Queue.
    pub const CREATE_IO_SQ: u8 = 0x01;
    /// Get Log Page.
    pub const GET_LOG_PAGE: u8 = 0x02;
    /// Delete I/O Completion Queue.
    pub const DELETE_IO_CQ: u8 = 0x04;
    /// Create I/O Completion Queue.
    pub const CREATE_IO_CQ: u8 = 0x05;
    /// Identify.
    pub const IDENTIFY: u8 = 0x06;
    /// Abort.
    pub const ABORT: u8 = 0x08;
    /// Set Features.
    pub const SET_FEATURES: u8 = 0x09;
    /// Get Features.
    pub const GET_FEATURES: u8 = 0x0a;
    /// Asynchronous Event Request.
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0c;
    /// Namespace Management.
    pub const NS_MANAGEMENT: u8 = 0x0d;
    /// Firmware Commit.
    pub const FIRMWARE_COMMIT: u8 = 0x10;
    /// Firmware Image Download.
    pub const FIRMWARE_DOWNLOAD: u8 = 0x11;
    /// Device Self-test.
    pub const DEVICE_SELF_TEST: u8 = 0x14;
    /// Namespace Attachment.
    pub const NS_ATTACHMENT: u8 = 0x15;
    /// Keep Alive.
    pub const KEEP_ALIVE: u8 = 0x18;
    /// Doorbell Buffer Config.
    pub const DOORBELL_BUFFER_CONFIG: u8 = 0x7c;
    /// Fabrics commands (fctype in byte 4).
    pub const FABRICS: u8 = 0x7f;
    /// Format NVM.
    pub const FORMAT_NVM: u8 = 0x80;
    /// Sanitize.
    pub const SANITIZE: u8 = 0x84;
}

/// NVM command set I/O opcodes.
pub mod io {
    /// Flush.
    pub const FLUSH: u8 = 0x00;
    /// Write.
    pub const WRITE: u8 = 0x01;
    /// Read.
    pub const READ: u8 = 0x02;
    /// Write Uncorrectable.
    pub const WRITE_UNCORRECTABLE: u8 = 0x04;
    /// Compare.
    pub const COMPARE: u8 = 0x05;
    /// Write Zeroes.
    pub const WRITE_ZEROES: u8 = 0x08;
    /// Dataset Management.
    pub const DATASET_MANAGEMENT: u8 = 0x09;
    /// Verify.
    pub const VERIFY: u8 = 0x0c;
    /// Reservation Register.
    pub const RESERVATION_REGISTER: u8 = 0x0d;
    /// Reservation Report.
    pub const RESERVATION_REPORT: u8 = 0x0e;
    /// Reservation Acquire.
    pub const RESERVATION_ACQUIRE: u8 = 0x11;
    /// Reservation Release.
    pub const RESERVATION_RELEASE: u8 = 0x15;
    /// Copy.
    pub const COPY: u8 = 0x19;
}

/// Fused operation values (CDW0 bits 9:8).
pub mod fuse {
    /// Not fused.
    pub const NONE: u8 = 0;
    /// First command of a fused pair (Compare of Compare and Write).
    pub const FIRST: u8 = 1;
    /// Second command of a fused pair (Write of Compare and Write).
    pub const SECOND: u8 = 2;
}

/// Fabrics command types (byte 4 of opcode 0x7F).
pub mod fabrics {
    /// Property Set.
    pub const PROPERTY_SET: u8 = 0x00;
    /// Connect.
    pub const CONNECT: u8 = 0x01;
    /// Property Get.
    pub const PROPERTY_GET: u8 = 0x04;
    /// Authentication Send.
    pub const AUTH_SEND: u8 = 0x05;
    /// Authentication Receive.
    pub const AUTH_RECV: u8 = 0x06;
    /// Disconnect.
    pub const DISCONNECT: u8 = 0x08;

    /// Connect SQE: record format (u16 at byte 40).
    pub const CONNECT_RECFMT: usize = 40;
    /// Connect SQE: queue id (u16 at byte 42).
    pub const CONNECT_QID: usize = 42;
    /// Connect SQE: submission queue size, 0's based (u16 at byte 44).
    pub const CONNECT_SQSIZE: usize = 44;
    /// Connect SQE: connect attributes (byte 46; bit 2 disables SQ flow control).
    pub const CONNECT_CATTR: usize = 46;
    /// Connect CATTR bit: SQ flow control disabled (the host never reads SQHD; a TCP target
    /// may then end a read with a C2HData PDU flagged SUCCESS and no response capsule).
    pub const CATTR_SQ_FLOW_CONTROL_DISABLED: u8 = 1 << 2;
    /// Connect SQE: keep alive timeout in ms (u32 at byte 48).
    pub const CONNECT_KATO: usize = 48;
    /// Connect data: size in bytes.
    pub const CONNECT_DATA_LEN: usize = 1024;
    /// Connect data: host identifier (16 bytes at 0).
    pub const CONNECT_DATA_HOSTID: usize = 0;
    /// Connect data: controller id (u16 at 16; 0xFFFF asks for a dynamic one).
    pub const CONNECT_DATA_CNTLID: usize = 16;
    /// Connect data: subsystem NQN (256 bytes at 256).
    pub const CONNECT_DATA_SUBNQN: usize = 256;
    /// Connect data: host NQN (256 bytes at 512).
    pub const CONNECT_DATA_HOSTNQN: usize = 512;
    /// Property Get/Set SQE: attributes (byte 40; bits 2:0 size: 0 = 4 bytes, 1 = 8 bytes).
    pub const PROPERTY_ATTRIB: usize = 40;
    /// Property Get/Set SQE: property offset (u32 at byte 44).
    pub const PROPERTY_OFFSET: usize = 44;
    /// Property Set SQE: value (u64 at byte 48).
    pub const PROPERTY_VALUE: usize = 48;
}

/// Controller properties (registers) by offset.
pub mod prop {
    /// Controller Capabilities (8 bytes).
    pub const CAP: u32 = 0x00;
    /// Version.
    pub const VS: u32 = 0x08;
    /// Interrupt Mask Set.
    pub const INTMS: u32 = 0x0c;
    /// Interrupt Mask Clear.
    pub const INTMC: u32 = 0x10;
    /// Controller Configuration.
    pub const CC: u32 = 0x14;
    /// Controller Status.
    pub const CSTS: u32 = 0x1c;
    /// NVM Subsystem Reset.
    pub const NSSR: u32 = 0x20;
    /// Admin Queue Attributes.
    pub const AQA: u32 = 0x24;
    /// Admin Submission Queue base address (8 bytes).
    pub const ASQ: u32 = 0x28;
    /// Admin Completion Queue base address (8 bytes).
    pub const ACQ: u32 = 0x30;
}

/// The discovery subsystem's well-known NQN.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// One completion queue entry: 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Completion {
    /// Command specific DW0 (e.g. the controller id of a Connect, a feature's value).
    pub dw0: u32,
    /// Command specific DW1.
    pub dw1: u32,
    /// Submission queue head pointer.
    pub sqhd: u16,
    /// Submission queue identifier.
    pub sqid: u16,
    /// The command's identifier.
    pub cid: u16,
    /// The outcome.
    pub status: Status,
    /// Phase tag (PCIe queues only; fabrics ignore it).
    pub phase: bool,
}

impl Completion {
    /// Size in bytes.
    pub const LEN: usize = 16;

    /// Encodes the 16 bytes.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        put32(&mut b, 0, self.dw0);
        put32(&mut b, 4, self.dw1);
        put16(&mut b, 8, self.sqhd);
        put16(&mut b, 10, self.sqid);
        put16(&mut b, 12, self.cid);
        put16(&mut b, 14, self.status.to_field() | self.phase as u16);
        b
    }

    /// Decodes 16 bytes (`b` must hold at least 16).
    pub fn from_bytes(b: &[u8]) -> Completion {
        let f = le16(b, 14);
        Completion {
            dw0: le32(b, 0),
            dw1: le32(b, 4),
            sqhd: le16(b, 8),
            sqid: le16(b, 10),
            cid: le16(b, 12),
            status: Status::from_field(f),
            phase: f & 1 != 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_fields_sit_at_their_offsets() {
        let mut c = Command::new(io::WRITE, 0xbeef);
        c.set_nsid(7);
        c.set_slba(0x1122_3344_5566_7788);
        c.set_cdw12((1 << 30) | 7);
        c.set_fuse(fuse::FIRST);
        c.set_sgl(&SglDescriptor::in_capsule(0, 4096));
        assert_eq!(c.0[0], 0x01);
        assert_eq!(&c.0[2..4], &[0xef, 0xbe]);
        assert_eq!(c.nsid(), 7);
        assert_eq!(c.cdw10(), 0x5566_7788);
        assert_eq!(c.cdw11(), 0x1122_3344);
        assert_eq!((c.nlb(), c.fua(), c.fuse(), c.psdt()), (8, true, 1, 1));
        assert_eq!(c.0[39], 0x01, "data block, offset subtype");
        assert_eq!(c.sgl(), SglDescriptor::in_capsule(0, 4096));
        assert_eq!(SglDescriptor::transport(8192).to_bytes()[15], 0x5a, "what Linux sends for R2T data");
    }

    #[test]
    fn completion_round_trips_with_the_status_above_the_phase_bit() {
        let c = Completion {
            dw0: 1,
            dw1: 2,
            sqhd: 3,
            sqid: 4,
            cid: 5,
            status: Status::generic(sc::INVALID_FIELD).dnr(),
            phase: true,
        };
        let b = c.to_bytes();
        assert_eq!(le16(&b, 14), (0x02 << 1) | (1 << 15) | 1);
        assert_eq!(Completion::from_bytes(&b), c);
        assert_eq!(Status::from_field(Status::media(msc::COMPARE_FAILURE).to_field()).sct, 2);
    }

    #[test]
    fn string_fields_pad_and_stop_at_nul() {
        let mut b = [0u8; 8];
        put_ascii_padded(&mut b, "abc");
        assert_eq!(&b, b"abc     ");
        put_nul_padded(&mut b, "0123456789");
        assert_eq!(&b, b"0123456\0");
        assert_eq!(nul_terminated(&b), Some("0123456"));
    }
}
