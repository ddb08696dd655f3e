//! Operation codes and CDB field decoding.

/// Operation codes Ferry serves (SPC-4 / SBC-3).
pub mod op {
    #![allow(missing_docs)]
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0A;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const RESERVE_6: u8 = 0x16;
    pub const RELEASE_6: u8 = 0x17;
    pub const MODE_SENSE_6: u8 = 0x1A;
    pub const START_STOP_UNIT: u8 = 0x1B;
    pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1E;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2A;
    pub const WRITE_AND_VERIFY_10: u8 = 0x2E;
    pub const VERIFY_10: u8 = 0x2F;
    pub const PRE_FETCH_10: u8 = 0x34;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const READ_DEFECT_DATA_10: u8 = 0x37;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const SANITIZE: u8 = 0x48;
    pub const MODE_SELECT_10: u8 = 0x55;
    pub const RESERVE_10: u8 = 0x56;
    pub const RELEASE_10: u8 = 0x57;
    pub const MODE_SENSE_10: u8 = 0x5A;
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5E;
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5F;
    /// EXTENDED COPY (LID1 is service action 0).
    pub const EXTENDED_COPY: u8 = 0x83;
    pub const RECEIVE_COPY_RESULTS: u8 = 0x84;
    pub const READ_16: u8 = 0x88;
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    pub const WRITE_16: u8 = 0x8A;
    pub const ORWRITE_16: u8 = 0x8B;
    pub const WRITE_AND_VERIFY_16: u8 = 0x8E;
    pub const VERIFY_16: u8 = 0x8F;
    pub const PRE_FETCH_16: u8 = 0x90;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const WRITE_ATOMIC_16: u8 = 0x9C;
    /// SERVICE ACTION IN (16): READ CAPACITY (16) and GET LBA STATUS.
    pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
    pub const REPORT_LUNS: u8 = 0xA0;
    /// MAINTENANCE IN: REPORT SUPPORTED OPERATION CODES.
    pub const MAINTENANCE_IN: u8 = 0xA3;
    pub const READ_12: u8 = 0xA8;
    pub const WRITE_12: u8 = 0xAA;
    pub const WRITE_AND_VERIFY_12: u8 = 0xAE;
    pub const VERIFY_12: u8 = 0xAF;
    pub const READ_DEFECT_DATA_12: u8 = 0xB7;

    /// SERVICE ACTION IN (16) service actions.
    pub const SAI_READ_CAPACITY_16: u8 = 0x10;
    pub const SAI_GET_LBA_STATUS: u8 = 0x12;
    /// MAINTENANCE IN service action.
    pub const MI_REPORT_SUPPORTED_OPCODES: u8 = 0x0C;
    /// SANITIZE service actions.
    pub const SANITIZE_OVERWRITE: u8 = 0x01;
    pub const SANITIZE_BLOCK_ERASE: u8 = 0x02;
    pub const SANITIZE_CRYPTO_ERASE: u8 = 0x03;
    pub const SANITIZE_EXIT_FAILURE_MODE: u8 = 0x1F;
}

/// The length of the CDB that `opcode` starts, from its group code (SPC-4 4.2.5.1); None for
/// the reserved and vendor-specific groups.
pub fn cdb_len(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

/// Big-endian u16 at `at` (the caller has checked the CDB's length).
pub fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Big-endian 24-bit value at `at`.
pub fn be24(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([0, b[at], b[at + 1], b[at + 2]])
}

/// Big-endian u32 at `at`.
pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Big-endian u64 at `at`.
pub fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The allocation length of a data-in command: how many bytes the initiator accepts.
pub fn allocation_length(cdb: &[u8]) -> usize {
    use op::*;
    match cdb[0] {
        INQUIRY => be16(cdb, 3) as usize,
        MODE_SENSE_6 | REQUEST_SENSE => cdb[4] as usize,
        MODE_SENSE_10 | PERSISTENT_RESERVE_IN | READ_DEFECT_DATA_10 => be16(cdb, 7) as usize,
        READ_DEFECT_DATA_12 => be32(cdb, 6) as usize,
        SERVICE_ACTION_IN_16 => be32(cdb, 10) as usize,
        REPORT_LUNS | MAINTENANCE_IN => be32(cdb, 6) as usize,
        RECEIVE_COPY_RESULTS => be32(cdb, 10) as usize,
        READ_CAPACITY_10 => 8,
        _ => usize::MAX,
    }
}

/// The 8-byte LUN structure (SAM-5 4.7) for `lun`: peripheral device addressing below 256,
/// flat space addressing up to 16383.
pub fn encode_lun(lun: u64) -> [u8; 8] {
    let mut out = [0u8; 8];
    if lun < 256 {
        out[1] = lun as u8;
    } else {
        out[0] = 0x40 | ((lun >> 8) as u8 & 0x3F);
        out[1] = lun as u8;
    }
    out
}

/// The LUN number in the first level of an 8-byte LUN structure, in peripheral (00b) or flat
/// (01b) addressing; None for other methods or a multi-level address.
pub fn decode_lun(lun: &[u8]) -> Option<u64> {
    if lun.len() < 8 || lun[2..8].iter().any(|&b| b != 0) {
        return None;
    }
    match lun[0] >> 6 {
        0 if lun[0] == 0 => Some(lun[1] as u64),
        1 => Some((((lun[0] & 0x3F) as u64) << 8) | lun[1] as u64),
        _ => None,
    }
}
