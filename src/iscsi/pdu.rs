//! The basic header segment (BHS, RFC 7143 §11.2): 48 bytes at the start of every PDU, read
//! and written in place. Opcode-specific fields are accessed by their byte offsets through the
//! named accessors below; each is documented with the PDUs that carry it.

/// Length of the basic header segment.
pub const BHS_LEN: usize = 48;

/// Opcodes an initiator sends (RFC 7143 §11.1.1).
pub mod op {
    /// NOP-Out.
    pub const NOP_OUT: u8 = 0x00;
    /// SCSI Command.
    pub const SCSI_CMD: u8 = 0x01;
    /// SCSI Task Management Function Request.
    pub const TMF_REQ: u8 = 0x02;
    /// Login Request.
    pub const LOGIN_REQ: u8 = 0x03;
    /// Text Request.
    pub const TEXT_REQ: u8 = 0x04;
    /// SCSI Data-Out.
    pub const DATA_OUT: u8 = 0x05;
    /// Logout Request.
    pub const LOGOUT_REQ: u8 = 0x06;
    /// SNACK Request.
    pub const SNACK: u8 = 0x10;
    /// NOP-In.
    pub const NOP_IN: u8 = 0x20;
    /// SCSI Response.
    pub const SCSI_RSP: u8 = 0x21;
    /// SCSI Task Management Function Response.
    pub const TMF_RSP: u8 = 0x22;
    /// Login Response.
    pub const LOGIN_RSP: u8 = 0x23;
    /// Text Response.
    pub const TEXT_RSP: u8 = 0x24;
    /// SCSI Data-In.
    pub const DATA_IN: u8 = 0x25;
    /// Logout Response.
    pub const LOGOUT_RSP: u8 = 0x26;
    /// Ready To Transfer.
    pub const R2T: u8 = 0x31;
    /// Asynchronous Message.
    pub const ASYNC_MSG: u8 = 0x32;
    /// Reject.
    pub const REJECT: u8 = 0x3f;
}

/// Flag bits of byte 1.
pub mod flag {
    /// Final (F) bit: the last PDU of a sequence.
    pub const FINAL: u8 = 0x80;
    /// SCSI Command: read (R) bit.
    pub const READ: u8 = 0x40;
    /// SCSI Command: write (W) bit.
    pub const WRITE: u8 = 0x20;
    /// Login: transit (T) bit.
    pub const TRANSIT: u8 = 0x80;
    /// Login / Text: continue (C) bit.
    pub const CONTINUE: u8 = 0x40;
    /// Data-In: acknowledge (A) bit.
    pub const ACK: u8 = 0x40;
    /// Data-In / SCSI Response: residual overflow (O) bit.
    pub const OVERFLOW: u8 = 0x04;
    /// Data-In / SCSI Response: residual underflow (U) bit.
    pub const UNDERFLOW: u8 = 0x02;
    /// Data-In: status present (S) bit.
    pub const STATUS: u8 = 0x01;
    /// Byte 0: immediate delivery (I) bit.
    pub const IMMEDIATE: u8 = 0x40;
}

/// The reserved Initiator/Target Task Tag value (RFC 7143 §11.2.1.8).
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// A basic header segment, in wire byte order.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bhs(pub [u8; BHS_LEN]);

impl Default for Bhs {
    fn default() -> Self {
        Bhs([0; BHS_LEN])
    }
}

impl std::fmt::Debug for Bhs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bhs")
            .field("opcode", &format_args!("{:#04x}", self.opcode()))
            .field("flags", &format_args!("{:#04x}", self.flags()))
            .field("ahs_len", &self.ahs_len())
            .field("data_len", &self.data_len())
            .field("itt", &format_args!("{:#x}", self.itt()))
            .finish()
    }
}

impl Bhs {
    /// A header with `opcode` (target opcodes carry no I bit) and everything else zero.
    pub fn new(opcode: u8) -> Bhs {
        let mut b = Bhs::default();
        b.0[0] = opcode & 0x3f;
        b
    }

    /// The opcode (6 bits).
    pub fn opcode(&self) -> u8 {
        self.0[0] & 0x3f
    }

    /// The immediate-delivery (I) bit of a request.
    pub fn immediate(&self) -> bool {
        self.0[0] & flag::IMMEDIATE != 0
    }

    /// Byte 1: the final bit and opcode-specific flags.
    pub fn flags(&self) -> u8 {
        self.0[1]
    }

    /// Sets byte 1.
    pub fn set_flags(&mut self, f: u8) {
        self.0[1] = f;
    }

    /// Byte `i` (opcode-specific fields of one byte: login versions, status, response).
    pub fn byte(&self, i: usize) -> u8 {
        self.0[i]
    }

    /// Sets byte `i`.
    pub fn set_byte(&mut self, i: usize, v: u8) {
        self.0[i] = v;
    }

    /// TotalAHSLength in bytes (the field counts 4-byte words).
    pub fn ahs_len(&self) -> usize {
        self.0[4] as usize * 4
    }

    /// DataSegmentLength in bytes (without padding).
    pub fn data_len(&self) -> u32 {
        u32::from_be_bytes([0, self.0[5], self.0[6], self.0[7]])
    }

    /// Sets DataSegmentLength (24 bits: larger values are a caller's bug and are truncated).
    pub fn set_data_len(&mut self, len: u32) {
        debug_assert!(len < 1 << 24);
        let b = len.to_be_bytes();
        self.0[5..8].copy_from_slice(&b[1..4]);
    }

    /// The data segment's length on the wire, padded to 4 bytes.
    pub fn padded_data_len(&self) -> usize {
        (self.data_len() as usize + 3) & !3
    }

    /// Bytes 8..16: the LUN of SCSI commands, TMFs, Data and R2T; the ISID+TSIH of login.
    pub fn lun_field(&self) -> u64 {
        self.u64_at(8)
    }

    /// Sets bytes 8..16.
    pub fn set_lun_field(&mut self, v: u64) {
        self.set_u64_at(8, v)
    }

    /// Initiator Task Tag (bytes 16..20).
    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }

    /// Sets the Initiator Task Tag.
    pub fn set_itt(&mut self, v: u32) {
        self.set_u32_at(16, v)
    }

    /// The big-endian u32 at byte `off` (opcode-specific words: TTT, CmdSN, StatSN, ...).
    pub fn u32_at(&self, off: usize) -> u32 {
        u32::from_be_bytes(self.0[off..off + 4].try_into().expect("4 bytes"))
    }

    /// Sets the big-endian u32 at byte `off`.
    pub fn set_u32_at(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_be_bytes());
    }

    /// The big-endian u16 at byte `off`.
    pub fn u16_at(&self, off: usize) -> u16 {
        u16::from_be_bytes([self.0[off], self.0[off + 1]])
    }

    /// Sets the big-endian u16 at byte `off`.
    pub fn set_u16_at(&mut self, off: usize, v: u16) {
        self.0[off..off + 2].copy_from_slice(&v.to_be_bytes());
    }

    /// The big-endian u64 at byte `off`.
    pub fn u64_at(&self, off: usize) -> u64 {
        u64::from_be_bytes(self.0[off..off + 8].try_into().expect("8 bytes"))
    }

    /// Sets the big-endian u64 at byte `off`.
    pub fn set_u64_at(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_be_bytes());
    }
}

/// Byte offsets of the opcode-specific words (RFC 7143 §11), named where several PDUs share
/// one position.
pub mod at {
    /// Target Transfer Tag (NOP, Data-Out/In, R2T, Text, Login-less PDUs).
    pub const TTT: usize = 20;
    /// SCSI Command: Expected Data Transfer Length.
    pub const EDTL: usize = 20;
    /// CmdSN of a request (SCSI Command, NOP-Out, TMF, Text, Login, Logout).
    pub const CMDSN: usize = 24;
    /// StatSN of a response; ExpStatSN of a request.
    pub const STATSN: usize = 24;
    /// ExpStatSN of a request.
    pub const EXP_STATSN: usize = 28;
    /// ExpCmdSN of a response.
    pub const EXP_CMDSN: usize = 28;
    /// MaxCmdSN of a response.
    pub const MAX_CMDSN: usize = 32;
    /// SCSI Command: the CDB (16 bytes).
    pub const CDB: usize = 32;
    /// Data-In / Data-Out / R2T: DataSN or R2TSN.
    pub const DATASN: usize = 36;
    /// Data-In / Data-Out: Buffer Offset; R2T: Buffer Offset.
    pub const BUFFER_OFFSET: usize = 40;
    /// R2T: Desired Data Transfer Length; SCSI Response / Data-In: Residual Count.
    pub const RESIDUAL: usize = 44;
    /// R2T: Desired Data Transfer Length.
    pub const DESIRED_LEN: usize = 44;
    /// SCSI Response: ExpDataSN.
    pub const EXP_DATASN: usize = 36;
    /// SCSI Response: Bidirectional Read Residual Count.
    pub const BIDI_RESIDUAL: usize = 40;
    /// TMF Request: Referenced Task Tag.
    pub const REF_TASK_TAG: usize = 20;
    /// TMF Request: RefCmdSN.
    pub const REF_CMDSN: usize = 32;
    /// Login: ISID (6 bytes at 8) and TSIH (2 bytes at 14).
    pub const ISID: usize = 8;
    /// Login: TSIH.
    pub const TSIH: usize = 14;
    /// Login: CID (2 bytes); Logout: CID.
    pub const CID: usize = 20;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_in_wire_order() {
        let mut b = Bhs::new(op::SCSI_RSP);
        b.set_flags(flag::FINAL | flag::UNDERFLOW);
        b.set_data_len(0x01_02_03);
        b.set_itt(0xdead_beef);
        b.set_u32_at(at::RESIDUAL, 512);
        assert_eq!(b.0[0], 0x21);
        assert_eq!(&b.0[5..8], &[1, 2, 3]);
        assert_eq!(b.data_len(), 0x010203);
        assert_eq!(b.padded_data_len(), 0x010204);
        assert_eq!(b.itt(), 0xdead_beef);
        assert_eq!(&b.0[44..48], &[0, 0, 2, 0]);
    }

    #[test]
    fn immediate_bit_is_not_part_of_the_opcode() {
        let mut b = Bhs::default();
        b.0[0] = flag::IMMEDIATE | op::NOP_OUT;
        assert!(b.immediate());
        assert_eq!(b.opcode(), op::NOP_OUT);
        b.0[4] = 3;
        assert_eq!(b.ahs_len(), 12);
    }
}
