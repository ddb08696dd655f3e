//! READ CAPACITY (10/16), REPORT LUNS, REPORT SUPPORTED OPERATION CODES and GET LBA STATUS.

use super::sense::Sense;
use super::LunInfo;

/// READ CAPACITY (10) parameter data.
pub fn read_capacity_10(_info: &LunInfo) -> Vec<u8> {
    Vec::new()
}

/// READ CAPACITY (16) parameter data.
pub fn read_capacity_16(_info: &LunInfo) -> Vec<u8> {
    Vec::new()
}

/// REPORT LUNS parameter data for the LUNs of a target.
pub fn report_luns(_cdb: &[u8], _luns: &[u64]) -> Result<Vec<u8>, Sense> {
    Err(Sense::invalid_opcode())
}

/// REPORT SUPPORTED OPERATION CODES parameter data.
pub fn supported_opcodes(_cdb: &[u8]) -> Result<Vec<u8>, Sense> {
    Err(Sense::invalid_opcode())
}

/// GET LBA STATUS parameter data.
pub fn get_lba_status(_cdb: &[u8], _info: &LunInfo) -> Result<Vec<u8>, Sense> {
    Err(Sense::invalid_opcode())
}
