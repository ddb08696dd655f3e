//! READ CAPACITY (10/16), REPORT LUNS, REPORT SUPPORTED OPERATION CODES and GET LBA STATUS.

use super::cdb::{be16, be32, be64, encode_lun, op};
use super::sense::Sense;
use super::LunInfo;

/// READ CAPACITY (10) parameter data (SBC-3 5.15.2): the last LBA, saturated to FFFFFFFFh
/// (which tells the initiator to use READ CAPACITY (16)), and the block length.
pub fn read_capacity_10(info: &LunInfo) -> Vec<u8> {
    let last = info.num_blocks.saturating_sub(1).min(0xFFFF_FFFF) as u32;
    let mut d = Vec::with_capacity(8);
    d.extend_from_slice(&last.to_be_bytes());
    d.extend_from_slice(&info.block_size.to_be_bytes());
    d
}

/// READ CAPACITY (16) parameter data (SBC-3 5.16.2), 32 bytes: no protection information, one
/// logical block per physical block, and LBPME/LBPRZ when the unit is thin provisioned.
pub fn read_capacity_16(info: &LunInfo) -> Vec<u8> {
    let mut d = vec![0u8; 32];
    d[0..8].copy_from_slice(&info.num_blocks.saturating_sub(1).to_be_bytes());
    d[8..12].copy_from_slice(&info.block_size.to_be_bytes());
    // Byte 12: P_TYPE and PROT_EN 0. Byte 13: P_I_EXPONENT 0 and LOGICAL BLOCKS PER PHYSICAL
    // BLOCK EXPONENT. Bytes 14-15: LOWEST ALIGNED LOGICAL BLOCK ADDRESS 0.
    d[13] = info.lbppbe & 0x0F;
    if info.unmap {
        d[14] = 0x80 | 0x40; // LBPME, LBPRZ (unmapped blocks read as zeroes)
    }
    d
}

/// The SELECT REPORT values of REPORT LUNS (SPC-5 6.33).
pub mod select_report {
    /// Every logical unit except the well-known ones.
    pub const ALL_BUT_WELL_KNOWN: u8 = 0x00;
    /// Only well-known logical units.
    pub const WELL_KNOWN: u8 = 0x01;
    /// Every logical unit.
    pub const ALL: u8 = 0x02;
    /// Only administrative logical units.
    pub const ADMINISTRATIVE: u8 = 0x10;
    /// The addressed administrative logical unit and its subsidiary logical units.
    pub const ADMINISTRATIVE_AND_SUBSIDIARY: u8 = 0x11;
    /// The subsidiary logical units of the addressed administrative logical unit.
    pub const SUBSIDIARY: u8 = 0x12;
}

/// REPORT LUNS parameter data for the LUNs of a target (SPC-4 6.33): LUN LIST LENGTH, 4
/// reserved bytes, then the 8-byte LUN of each of `luns`, in the order given.
///
/// Ferry has no well-known logical units and no LU conglomerates (hence no administrative or
/// subsidiary logical units): SELECT REPORT 00h and 02h list every LUN, 01h and 10h-12h an empty
/// list. Errors (ILLEGAL REQUEST / INVALID FIELD IN CDB): any other SELECT REPORT (byte 2),
/// an ALLOCATION LENGTH below 16 (byte 6).
pub fn report_luns(cdb: &[u8], luns: &[u64]) -> Result<Vec<u8>, Sense> {
    use select_report::*;
    if cdb.len() < 12 {
        return Err(Sense::invalid_opcode());
    }
    let listed: &[u64] = match cdb[2] {
        ALL_BUT_WELL_KNOWN | ALL => luns,
        WELL_KNOWN | ADMINISTRATIVE | ADMINISTRATIVE_AND_SUBSIDIARY | SUBSIDIARY => &[],
        _ => return Err(Sense::invalid_cdb_field(2, None)),
    };
    // SPC-4 requires room for at least the header and one LUN.
    if be32(cdb, 6) < 16 {
        return Err(Sense::invalid_cdb_field(6, None));
    }
    let mut d = Vec::with_capacity(8 + 8 * listed.len());
    d.extend_from_slice(&((8 * listed.len()) as u32).to_be_bytes());
    d.extend_from_slice(&[0; 4]);
    for &lun in listed {
        d.extend_from_slice(&encode_lun(lun));
    }
    Ok(d)
}

/// One command Ferry serves, as REPORT SUPPORTED OPERATION CODES describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandInfo {
    /// Operation code.
    pub opcode: u8,
    /// Service action, for the operation codes that have them.
    pub service_action: Option<u16>,
    /// CDB USAGE DATA (SPC-4 6.35.3): as long as the CDB; byte 0 is the operation code, the
    /// service action (if any) sits where the CDB has it, every other bit is 1 where the
    /// device server looks at that bit of the CDB.
    pub usage: &'static [u8],
}

impl CommandInfo {
    /// The CDB length.
    pub fn cdb_len(&self) -> usize {
        self.usage.len()
    }
}

const fn cmd(opcode: u8, usage: &'static [u8]) -> CommandInfo {
    CommandInfo { opcode, service_action: None, usage }
}

const fn cmd_sa(opcode: u8, sa: u8, usage: &'static [u8]) -> CommandInfo {
    CommandInfo { opcode, service_action: Some(sa as u16), usage }
}

/// Every command Ferry serves, in ascending operation code then service action order.
///
/// The CONTROL byte is always 00h: NACA is not supported (and LINK is obsolete). Byte 1 of the
/// READ/WRITE family is 18h: DPO and FUA; the protect fields are 0 as there is no protection
/// information; VERIFY and WRITE AND VERIFY also honour BYTCHK. GROUP NUMBER is ignored.
pub static SUPPORTED_COMMANDS: &[CommandInfo] = &[
    cmd(op::TEST_UNIT_READY, &[op::TEST_UNIT_READY, 0, 0, 0, 0, 0]),
    cmd(op::REQUEST_SENSE, &[op::REQUEST_SENSE, 0, 0, 0, 0xFF, 0]),
    cmd(op::READ_6, &[op::READ_6, 0x1F, 0xFF, 0xFF, 0xFF, 0]),
    cmd(op::WRITE_6, &[op::WRITE_6, 0x1F, 0xFF, 0xFF, 0xFF, 0]),
    // EVPD, PAGE CODE, ALLOCATION LENGTH.
    cmd(op::INQUIRY, &[op::INQUIRY, 0x01, 0xFF, 0xFF, 0xFF, 0]),
    // PF, SP (refused), PARAMETER LIST LENGTH.
    cmd(op::MODE_SELECT_6, &[op::MODE_SELECT_6, 0x11, 0, 0, 0xFF, 0]),
    cmd(op::RESERVE_6, &[op::RESERVE_6, 0, 0, 0, 0, 0]),
    cmd(op::RELEASE_6, &[op::RELEASE_6, 0, 0, 0, 0, 0]),
    // DBD, PC and PAGE CODE, SUBPAGE CODE, ALLOCATION LENGTH.
    cmd(op::MODE_SENSE_6, &[op::MODE_SENSE_6, 0x08, 0xFF, 0xFF, 0xFF, 0]),
    // IMMED; LOEJ and START.
    cmd(op::START_STOP_UNIT, &[op::START_STOP_UNIT, 0x01, 0, 0, 0x03, 0]),
    // PREVENT.
    cmd(op::PREVENT_ALLOW_MEDIUM_REMOVAL, &[op::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 0x03, 0]),
    cmd(op::READ_CAPACITY_10, &[op::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    cmd(op::READ_10, &[op::READ_10, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0]),
    cmd(op::WRITE_10, &[op::WRITE_10, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0]),
    // DPO, BYTCHK.
    cmd(op::WRITE_AND_VERIFY_10, &[op::WRITE_AND_VERIFY_10, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0]),
    // DPO, BYTCHK (2 bits).
    cmd(op::VERIFY_10, &[op::VERIFY_10, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0]),
    // IMMED (ignored: nothing to wait for); LBA; PREFETCH LENGTH.
    cmd(op::PRE_FETCH_10, &[op::PRE_FETCH_10, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0]),
    cmd(op::SYNCHRONIZE_CACHE_10, &[op::SYNCHRONIZE_CACHE_10, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0]),
    // REQ_PLIST, REQ_GLIST, DEFECT LIST FORMAT; ALLOCATION LENGTH.
    cmd(op::READ_DEFECT_DATA_10, &[op::READ_DEFECT_DATA_10, 0, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF, 0]),
    // UNMAP.
    cmd(op::WRITE_SAME_10, &[op::WRITE_SAME_10, 0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0]),
    // PARAMETER LIST LENGTH.
    cmd(op::UNMAP, &[op::UNMAP, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0]),
    // SANITIZE: IMMED, AUSE; OVERWRITE takes a parameter list, the others none.
    cmd_sa(op::SANITIZE, op::SANITIZE_OVERWRITE, &[op::SANITIZE, 0xA1, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0]),
    cmd_sa(op::SANITIZE, op::SANITIZE_BLOCK_ERASE, &[op::SANITIZE, 0xA2, 0, 0, 0, 0, 0, 0, 0, 0]),
    cmd_sa(op::SANITIZE, op::SANITIZE_CRYPTO_ERASE, &[op::SANITIZE, 0xA3, 0, 0, 0, 0, 0, 0, 0, 0]),
    cmd_sa(op::SANITIZE, op::SANITIZE_EXIT_FAILURE_MODE, &[op::SANITIZE, 0xBF, 0, 0, 0, 0, 0, 0, 0, 0]),
    cmd(op::MODE_SELECT_10, &[op::MODE_SELECT_10, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0]),
    cmd(op::RESERVE_10, &[op::RESERVE_10, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    cmd(op::RELEASE_10, &[op::RELEASE_10, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    // LLBAA, DBD, PC and PAGE CODE, SUBPAGE CODE, ALLOCATION LENGTH.
    cmd(op::MODE_SENSE_10, &[op::MODE_SENSE_10, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0]),
    // READ KEYS, READ RESERVATION, REPORT CAPABILITIES, READ FULL STATUS: ALLOCATION LENGTH.
    cmd_sa(op::PERSISTENT_RESERVE_IN, 0, &[op::PERSISTENT_RESERVE_IN, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0]),
    cmd_sa(op::PERSISTENT_RESERVE_IN, 1, &[op::PERSISTENT_RESERVE_IN, 1, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0]),
    cmd_sa(op::PERSISTENT_RESERVE_IN, 2, &[op::PERSISTENT_RESERVE_IN, 2, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0]),
    cmd_sa(op::PERSISTENT_RESERVE_IN, 3, &[op::PERSISTENT_RESERVE_IN, 3, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0]),
    // REGISTER, CLEAR and REGISTER AND IGNORE EXISTING KEY ignore SCOPE and TYPE; RESERVE,
    // RELEASE, PREEMPT and PREEMPT AND ABORT use them. PARAMETER LIST LENGTH is 4 bytes.
    // REGISTER AND MOVE (7) is not served.
    cmd_sa(op::PERSISTENT_RESERVE_OUT, 0, &[op::PERSISTENT_RESERVE_OUT, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0]),
    cmd_sa(op::PERSISTENT_RESERVE_OUT, 1, &[op::PERSISTENT_RESERVE_OUT, 1, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0]),
    cmd_sa(op::PERSISTENT_RESERVE_OUT, 2, &[op::PERSISTENT_RESERVE_OUT, 2, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0]),
    cmd_sa(op::PERSISTENT_RESERVE_OUT, 3, &[op::PERSISTENT_RESERVE_OUT, 3, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0]),
    cmd_sa(op::PERSISTENT_RESERVE_OUT, 4, &[op::PERSISTENT_RESERVE_OUT, 4, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0]),
    cmd_sa(op::PERSISTENT_RESERVE_OUT, 5, &[op::PERSISTENT_RESERVE_OUT, 5, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0]),
    cmd_sa(op::PERSISTENT_RESERVE_OUT, 6, &[op::PERSISTENT_RESERVE_OUT, 6, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0]),
    // EXTENDED COPY (LID1): PARAMETER LIST LENGTH.
    cmd_sa(op::EXTENDED_COPY, 0, &[op::EXTENDED_COPY, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0]),
    // RECEIVE COPY RESULTS: COPY STATUS (LIST IDENTIFIER) and OPERATING PARAMETERS.
    cmd_sa(
        op::RECEIVE_COPY_RESULTS,
        0,
        &[op::RECEIVE_COPY_RESULTS, 0, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0],
    ),
    cmd_sa(
        op::RECEIVE_COPY_RESULTS,
        3,
        &[op::RECEIVE_COPY_RESULTS, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0],
    ),
    cmd(
        op::READ_16,
        &[op::READ_16, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0],
    ),
    // DPO, FUA; LBA; NUMBER OF LOGICAL BLOCKS (byte 13).
    cmd(
        op::COMPARE_AND_WRITE,
        &[op::COMPARE_AND_WRITE, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0, 0],
    ),
    cmd(
        op::WRITE_16,
        &[op::WRITE_16, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0],
    ),
    // DPO, FUA; LBA; TRANSFER LENGTH.
    cmd(
        op::ORWRITE_16,
        &[op::ORWRITE_16, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0],
    ),
    cmd(
        op::WRITE_AND_VERIFY_16,
        &[op::WRITE_AND_VERIFY_16, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0],
    ),
    cmd(
        op::VERIFY_16,
        &[op::VERIFY_16, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0],
    ),
    cmd(
        op::PRE_FETCH_16,
        &[op::PRE_FETCH_16, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0],
    ),
    cmd(
        op::SYNCHRONIZE_CACHE_16,
        &[op::SYNCHRONIZE_CACHE_16, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0],
    ),
    cmd(
        // UNMAP and NDOB (byte 1); LBA; NUMBER OF LOGICAL BLOCKS.
        op::WRITE_SAME_16,
        &[op::WRITE_SAME_16, 0x09, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0],
    ),
    // DPO, FUA; LBA; TRANSFER LENGTH (ATOMIC BOUNDARY must be 0, WRPROTECT is not offered).
    cmd(
        op::WRITE_ATOMIC_16,
        &[op::WRITE_ATOMIC_16, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0xFF, 0xFF, 0, 0],
    ),
    // READ CAPACITY (16): ALLOCATION LENGTH only (LBA and PMI are obsolete).
    cmd_sa(
        op::SERVICE_ACTION_IN_16,
        op::SAI_READ_CAPACITY_16,
        &[op::SERVICE_ACTION_IN_16, op::SAI_READ_CAPACITY_16, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0],
    ),
    // GET LBA STATUS: STARTING LBA, ALLOCATION LENGTH.
    cmd_sa(
        op::SERVICE_ACTION_IN_16,
        op::SAI_GET_LBA_STATUS,
        &[
            op::SERVICE_ACTION_IN_16,
            op::SAI_GET_LBA_STATUS,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            0,
        ],
    ),
    // SELECT REPORT, ALLOCATION LENGTH.
    cmd(op::REPORT_LUNS, &[op::REPORT_LUNS, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0]),
    // RCTD and REPORTING OPTIONS, REQUESTED OPERATION CODE and SERVICE ACTION, ALLOCATION
    // LENGTH.
    cmd_sa(
        op::MAINTENANCE_IN,
        op::MI_REPORT_SUPPORTED_OPCODES,
        &[op::MAINTENANCE_IN, op::MI_REPORT_SUPPORTED_OPCODES, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0],
    ),
    cmd(op::READ_12, &[op::READ_12, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0]),
    cmd(op::WRITE_12, &[op::WRITE_12, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0]),
    cmd(
        op::WRITE_AND_VERIFY_12,
        &[op::WRITE_AND_VERIFY_12, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0],
    ),
    cmd(op::VERIFY_12, &[op::VERIFY_12, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0]),
    cmd(op::READ_DEFECT_DATA_12, &[op::READ_DEFECT_DATA_12, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0]),
];

/// Whether `opcode` is one Ferry serves with service actions.
fn has_service_actions(opcode: u8) -> bool {
    SUPPORTED_COMMANDS.iter().any(|c| c.opcode == opcode && c.service_action.is_some())
}

/// The command timeouts descriptor (SPC-4 6.35.4): no nominal or recommended timeout is
/// reported (0: not specified), as they depend on the bdev behind the unit.
const TIMEOUTS_DESCRIPTOR: [u8; 12] = [0x00, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// REPORT SUPPORTED OPERATION CODES parameter data (SPC-4 6.35).
///
/// REPORTING OPTIONS 000b lists [`SUPPORTED_COMMANDS`]; 001b-011b describe one command, with
/// SUPPORT 011b and its CDB usage data, or SUPPORT 001b (not supported) and no usage data.
/// RCTD appends a command timeouts descriptor to each supported command.
///
/// Errors (ILLEGAL REQUEST / INVALID FIELD IN CDB, byte 2 bit 2): REPORTING OPTIONS above 011b;
/// 001b for an operation code that has service actions; 010b for one served without.
pub fn supported_opcodes(cdb: &[u8]) -> Result<Vec<u8>, Sense> {
    if cdb.len() < 12 {
        return Err(Sense::invalid_opcode());
    }
    let rctd = cdb[2] & 0x80 != 0;
    let options = cdb[2] & 0x07;
    let opcode = cdb[3];
    let sa = be16(cdb, 4);
    let bad_options = Sense::invalid_cdb_field(2, Some(2));

    if options == 0 {
        let per = if rctd { 8 + TIMEOUTS_DESCRIPTOR.len() } else { 8 };
        let mut d = Vec::with_capacity(4 + per * SUPPORTED_COMMANDS.len());
        d.extend_from_slice(&((per * SUPPORTED_COMMANDS.len()) as u32).to_be_bytes());
        for c in SUPPORTED_COMMANDS {
            d.push(c.opcode);
            d.push(0);
            d.extend_from_slice(&c.service_action.unwrap_or(0).to_be_bytes());
            d.push(0);
            // CTDP, SERVACTV.
            d.push((if rctd { 0x02 } else { 0 }) | (if c.service_action.is_some() { 0x01 } else { 0 }));
            d.extend_from_slice(&(c.cdb_len() as u16).to_be_bytes());
            if rctd {
                d.extend_from_slice(&TIMEOUTS_DESCRIPTOR);
            }
        }
        return Ok(d);
    }

    // One command. An operation code that Ferry does not serve is "not supported" whatever
    // the option, as whether it would have service actions is unknown.
    let with_sa = has_service_actions(opcode);
    let use_sa = match options {
        1 if with_sa => return Err(bad_options),
        1 => false,
        2 if !with_sa && SUPPORTED_COMMANDS.iter().any(|c| c.opcode == opcode) => return Err(bad_options),
        2 => true,
        3 => with_sa,
        _ => return Err(bad_options),
    };
    let found = SUPPORTED_COMMANDS.iter().find(|c| c.opcode == opcode && (!use_sa || c.service_action == Some(sa)));
    let mut d = vec![0u8; 4];
    match found {
        Some(c) => {
            d[1] = (if rctd { 0x80 } else { 0 }) | 0x03; // CTDP, SUPPORT: as the standard says
            d[2..4].copy_from_slice(&(c.cdb_len() as u16).to_be_bytes());
            d.extend_from_slice(c.usage);
            if rctd {
                d.extend_from_slice(&TIMEOUTS_DESCRIPTOR);
            }
        }
        None => d[1] = 0x01, // SUPPORT: not supported; CDB SIZE 0
    }
    Ok(d)
}

/// READ DEFECT DATA (10) or (12) parameter data (SBC-3 5.17, 5.18): an empty defect list
/// (Ferry's bdevs remap nothing they would report) in the format asked for, with PLISTV and
/// GLISTV saying the lists asked for are there: the header alone.
pub fn read_defect_data(cdb: &[u8]) -> Vec<u8> {
    let twelve = cdb[0] == op::READ_DEFECT_DATA_12;
    // REQ_PLIST, REQ_GLIST and DEFECT LIST FORMAT: byte 2 in the 10-byte CDB, byte 1 in the 12.
    let asked = if twelve { cdb[1] } else { cdb[2] } & 0x1F;
    // Header: byte 1 PLISTV, GLISTV, format; then the DEFECT LIST LENGTH (2 bytes in the
    // 10-byte form; a generation and 4 bytes in the 12-byte form), 0.
    let mut d = vec![0u8; if twelve { 8 } else { 4 }];
    d[1] = asked;
    d
}

/// Most LBA status descriptors one GET LBA STATUS returns (each may cost the bdev a
/// metadata look-up, e.g. two `lseek`s on a file).
pub const MAX_LBA_STATUS_DESCRIPTORS: usize = 256;

/// GET LBA STATUS parameter data (SBC-4 5.6): LBA status descriptors from the STARTING LBA,
/// as many as the ALLOCATION LENGTH holds (at least one, at most
/// [`MAX_LBA_STATUS_DESCRIPTORS`]), each a run of blocks with one provisioning status:
/// 0h mapped (or unknown), 1h deallocated. `run(lba, max)` is the bdev's answer
/// ([`Bdev::allocation_run`](crate::bdev::Bdev::allocation_run)): whether blocks from `lba`
/// are allocated and for how many; None (the bdev keeps no map) reports the rest mapped,
/// which is always a safe answer (an initiator only skips reading deallocated blocks).
/// A unit that is not thin provisioned (LBPME clear in READ CAPACITY (16)) is fully
/// mapped whatever the bdev says, so its `run` is not asked.
///
/// Errors: a STARTING LBA at or past the end of the unit → LOGICAL BLOCK ADDRESS OUT OF RANGE.
pub fn get_lba_status(
    cdb: &[u8],
    info: &LunInfo,
    mut run: impl FnMut(u64, u64) -> Option<(bool, u64)>,
) -> Result<Vec<u8>, Sense> {
    if cdb.len() < 16 {
        return Err(Sense::invalid_opcode());
    }
    let start = be64(cdb, 2);
    if start >= info.num_blocks {
        return Err(Sense::lba_out_of_range());
    }
    let alloc = be32(cdb, 10) as usize;
    let room = (alloc.saturating_sub(8) / 16).clamp(1, MAX_LBA_STATUS_DESCRIPTORS);
    let mut d = vec![0u8; 8];
    let mut lba = start;
    // A bdev answering in small pieces of one status must not keep us here for long.
    let mut asks = 0;
    while lba < info.num_blocks && (d.len() - 8) / 16 < room && asks < 4 * room {
        asks += 1;
        // One descriptor's NUMBER OF LOGICAL BLOCKS is 32 bits: longer runs take several.
        let max = (info.num_blocks - lba).min(u32::MAX as u64);
        let (allocated, n) = match info.unmap.then(|| run(lba, max)).flatten() {
            Some((allocated, n)) => (allocated, n.clamp(1, max)),
            // Unknown: one "mapped" descriptor says it all.
            None if d.len() == 8 => (true, max),
            None => break,
        };
        // A run like the one before extends it (a bdev may answer in pieces).
        let status = if allocated { 0x00 } else { 0x01 };
        let last = d.len().checked_sub(16).filter(|&at| at >= 8);
        match last {
            Some(at) if d[at + 12] == status && be32(&d, at + 8) as u64 + n <= u32::MAX as u64 => {
                let total = be32(&d, at + 8) + n as u32;
                d[at + 8..at + 12].copy_from_slice(&total.to_be_bytes());
            }
            _ => {
                let mut desc = [0u8; 16];
                desc[0..8].copy_from_slice(&lba.to_be_bytes());
                desc[8..12].copy_from_slice(&(n as u32).to_be_bytes());
                desc[12] = status; // PROVISIONING STATUS
                d.extend_from_slice(&desc);
            }
        }
        lba += n;
    }
    let len = (d.len() - 4) as u32;
    d[0..4].copy_from_slice(&len.to_be_bytes()); // PARAMETER DATA LENGTH: the bytes after it
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::cdb::cdb_len;
    use crate::scsi::inquiry::test_info;
    use crate::scsi::sense::{asc, key, Field};

    fn assert_invalid_cdb(r: Result<Vec<u8>, Sense>, byte: u16, bit: Option<u8>) {
        let s = r.unwrap_err();
        assert_eq!(s.key, key::ILLEGAL_REQUEST);
        assert_eq!((s.asc, s.ascq), asc::INVALID_FIELD_IN_CDB);
        assert_eq!(s.field, Some(Field::Cdb { byte, bit }));
    }

    #[test]
    fn read_capacity_10_small_and_saturated() {
        let info = test_info();
        assert_eq!(read_capacity_10(&info), vec![0, 0x01, 0xFF, 0xFF, 0, 0, 0x02, 0]);
        let mut big = test_info();
        big.num_blocks = 0x1_0000_0000; // last LBA FFFFFFFFh still fits
        assert_eq!(&read_capacity_10(&big)[0..4], &[0xFF; 4]);
        big.num_blocks = 0x1_0000_0001;
        big.block_size = 4096;
        assert_eq!(read_capacity_10(&big), vec![0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x10, 0]);
    }

    #[test]
    fn read_capacity_16_fields() {
        let mut info = test_info();
        info.num_blocks = 0x1_0000_0001;
        let d = read_capacity_16(&info);
        assert_eq!(d.len(), 32);
        assert_eq!(&d[0..8], &0x1_0000_0000u64.to_be_bytes());
        assert_eq!(&d[8..12], &512u32.to_be_bytes());
        assert_eq!(d[12], 0);
        assert_eq!(d[13], 0);
        assert_eq!(&d[14..16], &[0xC0, 0]);
        assert!(d[16..].iter().all(|&b| b == 0));
        info.unmap = false;
        assert_eq!(&read_capacity_16(&info)[14..16], &[0, 0]);
    }

    fn report_luns_cdb(select: u8, alloc: u32) -> [u8; 12] {
        let a = alloc.to_be_bytes();
        [0xA0, 0, select, 0, 0, 0, a[0], a[1], a[2], a[3], 0, 0]
    }

    #[test]
    fn report_luns_lists_every_lun() {
        for select in [0x00, 0x02] {
            let d = report_luns(&report_luns_cdb(select, 4096), &[0, 1, 300]).unwrap();
            assert_eq!(d.len(), 8 + 24);
            assert_eq!(&d[0..8], &[0, 0, 0, 24, 0, 0, 0, 0]);
            assert_eq!(&d[8..16], &[0, 0, 0, 0, 0, 0, 0, 0]);
            assert_eq!(&d[16..24], &[0, 1, 0, 0, 0, 0, 0, 0]);
            assert_eq!(&d[24..32], &[0x41, 0x2C, 0, 0, 0, 0, 0, 0]);
        }
        let d = report_luns(&report_luns_cdb(0, 16), &[]).unwrap();
        assert_eq!(d, vec![0; 8]);
    }

    #[test]
    fn report_luns_without_well_known_or_administrative_units() {
        for select in [0x01, 0x10, 0x11, 0x12] {
            let d = report_luns(&report_luns_cdb(select, 16), &[0, 1]).unwrap();
            assert_eq!(d, vec![0; 8], "select report {select:#x}");
        }
    }

    #[test]
    fn report_luns_errors() {
        for select in [0x03, 0x0F, 0x13, 0xF8, 0xFF] {
            assert_invalid_cdb(report_luns(&report_luns_cdb(select, 4096), &[0]), 2, None);
        }
        assert_invalid_cdb(report_luns(&report_luns_cdb(0, 15), &[0]), 6, None);
        assert_invalid_cdb(report_luns(&report_luns_cdb(0, 0), &[0]), 6, None);
        assert_eq!(report_luns(&[0xA0, 0, 0, 0, 0, 0], &[0]), Err(Sense::invalid_opcode()));
    }

    #[test]
    fn command_table_is_consistent() {
        let mut prev: Option<(u8, u16)> = None;
        for c in SUPPORTED_COMMANDS {
            assert_eq!(c.usage[0], c.opcode, "{c:?}");
            assert_eq!(Some(c.cdb_len()), cdb_len(c.opcode), "{c:?}");
            if let Some(sa) = c.service_action {
                assert_eq!((c.usage[1] & 0x1F) as u16, sa, "{c:?}");
            }
            let key = (c.opcode, c.service_action.unwrap_or(0));
            assert!(prev.is_none_or(|p| p < key), "{c:?} out of order or duplicated");
            prev = Some(key);
            // Opcodes with service actions list them all as such.
            assert_eq!(c.service_action.is_some(), has_service_actions(c.opcode), "{c:?}");
        }
    }

    #[test]
    fn command_table_covers_every_opcode() {
        use crate::scsi::cdb::op::*;
        let plain = [
            TEST_UNIT_READY,
            REQUEST_SENSE,
            READ_6,
            WRITE_6,
            INQUIRY,
            MODE_SELECT_6,
            RESERVE_6,
            RELEASE_6,
            MODE_SENSE_6,
            START_STOP_UNIT,
            READ_CAPACITY_10,
            READ_10,
            WRITE_10,
            WRITE_AND_VERIFY_10,
            VERIFY_10,
            SYNCHRONIZE_CACHE_10,
            WRITE_SAME_10,
            UNMAP,
            MODE_SELECT_10,
            RESERVE_10,
            RELEASE_10,
            MODE_SENSE_10,
            READ_16,
            COMPARE_AND_WRITE,
            WRITE_16,
            WRITE_AND_VERIFY_16,
            VERIFY_16,
            SYNCHRONIZE_CACHE_16,
            WRITE_SAME_16,
            WRITE_ATOMIC_16,
            REPORT_LUNS,
            READ_12,
            WRITE_12,
            PREVENT_ALLOW_MEDIUM_REMOVAL,
            PRE_FETCH_10,
            PRE_FETCH_16,
            READ_DEFECT_DATA_10,
            READ_DEFECT_DATA_12,
            VERIFY_12,
            WRITE_AND_VERIFY_12,
            ORWRITE_16,
        ];
        for o in plain {
            assert!(SUPPORTED_COMMANDS.iter().any(|c| c.opcode == o && c.service_action.is_none()), "{o:#x}");
        }
        let with_sa: &[(u8, &[u16])] = &[
            (PERSISTENT_RESERVE_IN, &[0, 1, 2, 3]),
            (PERSISTENT_RESERVE_OUT, &[0, 1, 2, 3, 4, 5, 6]),
            (SERVICE_ACTION_IN_16, &[SAI_READ_CAPACITY_16 as u16, SAI_GET_LBA_STATUS as u16]),
            (MAINTENANCE_IN, &[MI_REPORT_SUPPORTED_OPCODES as u16]),
            (SANITIZE, &[1, 2, 3, 0x1F]),
            (EXTENDED_COPY, &[0]),
            (RECEIVE_COPY_RESULTS, &[0, 3]),
        ];
        for (o, sas) in with_sa {
            let listed: Vec<u16> =
                SUPPORTED_COMMANDS.iter().filter(|c| c.opcode == *o).map(|c| c.service_action.unwrap()).collect();
            assert_eq!(&listed, sas, "{o:#x}");
        }
        assert_eq!(SUPPORTED_COMMANDS.len(), plain.len() + 4 + 7 + 2 + 1 + 4 + 1 + 2);
    }

    fn rsoc(rctd: bool, options: u8, opcode: u8, sa: u16) -> [u8; 12] {
        let s = sa.to_be_bytes();
        [0xA3, 0x0C, (if rctd { 0x80 } else { 0 }) | options, opcode, s[0], s[1], 0, 0, 0x10, 0, 0, 0]
    }

    #[test]
    fn all_commands() {
        let d = supported_opcodes(&rsoc(false, 0, 0, 0)).unwrap();
        let n = SUPPORTED_COMMANDS.len();
        assert_eq!(d.len(), 4 + 8 * n);
        assert_eq!(be32(&d, 0) as usize, 8 * n);
        // The first descriptor: TEST UNIT READY, no service action, 6 bytes.
        assert_eq!(&d[4..12], &[0x00, 0, 0, 0, 0, 0x00, 0, 6]);
        // READ CAPACITY (16): SERVACTV, service action 10h, 16 bytes.
        let at = 4 + 8 * SUPPORTED_COMMANDS
            .iter()
            .position(|c| c.opcode == op::SERVICE_ACTION_IN_16 && c.service_action == Some(0x10))
            .unwrap();
        assert_eq!(&d[at..at + 8], &[0x9E, 0, 0, 0x10, 0, 0x01, 0, 16]);
    }

    #[test]
    fn all_commands_with_timeouts() {
        let d = supported_opcodes(&rsoc(true, 0, 0, 0)).unwrap();
        let n = SUPPORTED_COMMANDS.len();
        assert_eq!(d.len(), 4 + 20 * n);
        assert_eq!(be32(&d, 0) as usize, 20 * n);
        for (i, c) in SUPPORTED_COMMANDS.iter().enumerate() {
            let at = 4 + 20 * i;
            assert_eq!(d[at], c.opcode);
            assert_eq!(d[at + 5] & 0x02, 0x02); // CTDP
            assert_eq!(&d[at + 8..at + 10], &[0, 0x0A]);
        }
    }

    #[test]
    fn one_command() {
        // READ (10) without service action, options 1 and 3 (service action ignored).
        for (options, sa) in [(1, 0), (3, 0x1234)] {
            let d = supported_opcodes(&rsoc(false, options, op::READ_10, sa)).unwrap();
            assert_eq!(&d[0..4], &[0, 0x03, 0, 10]);
            assert_eq!(&d[4..], &[0x28, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0]);
        }
        // GET LBA STATUS with its service action, options 2 and 3.
        for options in [2, 3] {
            let d = supported_opcodes(&rsoc(false, options, 0x9E, 0x12)).unwrap();
            assert_eq!(&d[0..4], &[0, 0x03, 0, 16]);
            assert_eq!(&d[4..6], &[0x9E, 0x12]);
            assert_eq!(d.len(), 4 + 16);
        }
        // With timeouts.
        let d = supported_opcodes(&rsoc(true, 1, op::INQUIRY, 0)).unwrap();
        assert_eq!(&d[0..4], &[0, 0x83, 0, 6]);
        assert_eq!(d.len(), 4 + 6 + 12);
        assert_eq!(&d[10..12], &[0, 0x0A]);
    }

    #[test]
    fn one_command_not_supported() {
        let unsupported = [0, 0x01, 0, 0];
        // An opcode Ferry does not serve, whatever the option.
        for options in [1, 2, 3] {
            assert_eq!(supported_opcodes(&rsoc(false, options, 0x04, 0)).unwrap(), unsupported);
            assert_eq!(supported_opcodes(&rsoc(true, options, 0x7F, 9)).unwrap(), unsupported);
        }
        // A service action that is not served: REGISTER AND MOVE, SERVICE ACTION IN 11h.
        assert_eq!(supported_opcodes(&rsoc(false, 2, 0x5F, 7)).unwrap(), unsupported);
        assert_eq!(supported_opcodes(&rsoc(false, 3, 0x9E, 0x11)).unwrap(), unsupported);
    }

    #[test]
    fn supported_opcodes_errors() {
        for options in 4..8 {
            assert_invalid_cdb(supported_opcodes(&rsoc(false, options, 0, 0)), 2, Some(2));
        }
        // Options 1 for an opcode with service actions, 2 for one served without.
        assert_invalid_cdb(supported_opcodes(&rsoc(false, 1, 0x9E, 0x10)), 2, Some(2));
        assert_invalid_cdb(supported_opcodes(&rsoc(false, 1, 0x5E, 0)), 2, Some(2));
        assert_invalid_cdb(supported_opcodes(&rsoc(false, 2, op::READ_16, 0)), 2, Some(2));
        assert_eq!(supported_opcodes(&[0xA3, 0x0C, 0, 0, 0, 0]), Err(Sense::invalid_opcode()));
    }

    fn lba_status_cdb(lba: u64) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = 0x9E;
        c[1] = 0x12;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..14].copy_from_slice(&4096u32.to_be_bytes());
        c
    }

    #[test]
    fn get_lba_status_reports_mapped_to_the_end() {
        let info = test_info();
        let d = get_lba_status(&lba_status_cdb(100), &info, |_, _| None).unwrap();
        assert_eq!(d.len(), 24);
        assert_eq!(&d[0..8], &[0, 0, 0, 20, 0, 0, 0, 0]);
        assert_eq!(&d[8..16], &100u64.to_be_bytes());
        assert_eq!(&d[16..20], &(131072u32 - 100).to_be_bytes());
        assert_eq!(&d[20..24], &[0, 0, 0, 0]);
        let d = get_lba_status(&lba_status_cdb(131071), &info, |_, _| None).unwrap();
        assert_eq!(&d[16..20], &1u32.to_be_bytes());

        let mut big = test_info();
        big.num_blocks = 1 << 40;
        let d = get_lba_status(&lba_status_cdb(0), &big, |_, _| None).unwrap();
        assert_eq!(&d[16..20], &[0xFF; 4]);
    }

    /// A map of runs: (allocated, blocks) from LBA 0, answered in pieces of at most `piece`.
    fn map_runs(runs: &'static [(bool, u64)], piece: u64) -> impl FnMut(u64, u64) -> Option<(bool, u64)> {
        move |lba, max| {
            let mut at = 0;
            for &(allocated, n) in runs {
                if lba < at + n {
                    return Some((allocated, (at + n - lba).min(max).min(piece)));
                }
                at += n;
            }
            Some((true, max))
        }
    }

    fn descriptors(d: &[u8]) -> Vec<(u64, u32, u8)> {
        assert_eq!(be32(d, 0) as usize, d.len() - 4, "PARAMETER DATA LENGTH");
        d[8..].chunks(16).map(|c| (be64(c, 0), be32(c, 8), c[12])).collect()
    }

    #[test]
    fn get_lba_status_reports_each_run_of_a_thin_unit() {
        let mut info = test_info();
        info.unmap = true;
        const RUNS: &[(bool, u64)] = &[(true, 8), (false, 100), (true, 1), (false, 131072 - 109)];
        let d = get_lba_status(&lba_status_cdb(4), &info, map_runs(RUNS, u64::MAX)).unwrap();
        assert_eq!(descriptors(&d), vec![(4, 4, 0), (8, 100, 1), (108, 1, 0), (109, 131072 - 109, 1)]);
        // Pieces of one status are merged into one descriptor.
        let d = get_lba_status(&lba_status_cdb(0), &info, map_runs(RUNS, 1000)).unwrap();
        assert_eq!(descriptors(&d), vec![(0, 8, 0), (8, 100, 1), (108, 1, 0), (109, 131072 - 109, 1)]);
        // As many descriptors as the allocation length holds.
        let mut cdb = lba_status_cdb(0);
        cdb[10..14].copy_from_slice(&(8u32 + 2 * 16).to_be_bytes());
        let d = get_lba_status(&cdb, &info, map_runs(RUNS, u64::MAX)).unwrap();
        assert_eq!(descriptors(&d), vec![(0, 8, 0), (8, 100, 1)]);
        // A unit that is not thin provisioned is mapped whatever the bdev says.
        info.unmap = false;
        let d = get_lba_status(&lba_status_cdb(0), &info, map_runs(RUNS, u64::MAX)).unwrap();
        assert_eq!(descriptors(&d), vec![(0, 131072, 0)]);
        // A bdev answering one block at a time cannot keep the reactor: the asks are bounded.
        let mut info = test_info();
        info.unmap = true;
        info.num_blocks = 1 << 40;
        let mut asks = 0u64;
        let d = get_lba_status(&lba_status_cdb(0), &info, |_, _| {
            asks += 1;
            Some((true, 1))
        })
        .unwrap();
        assert_eq!(descriptors(&d), vec![(0, asks as u32, 0)]);
        assert!(asks <= 4 * MAX_LBA_STATUS_DESCRIPTORS as u64);
    }

    #[test]
    fn get_lba_status_out_of_range() {
        let info = test_info();
        for lba in [131072, u64::MAX] {
            let s = get_lba_status(&lba_status_cdb(lba), &info, |_, _| None).unwrap_err();
            assert_eq!(s.key, key::ILLEGAL_REQUEST);
            assert_eq!((s.asc, s.ascq), asc::LBA_OUT_OF_RANGE);
        }
        assert_eq!(
            get_lba_status(&[0x9E, 0x12, 0, 0, 0, 0, 0, 0, 0, 0], &info, |_, _| None),
            Err(Sense::invalid_opcode())
        );
    }
}
