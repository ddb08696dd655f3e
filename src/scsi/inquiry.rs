//! INQUIRY (SPC-4 6.6): standard data and the VPD pages.

use super::sense::Sense;
use super::LunInfo;

/// The full INQUIRY response for `cdb` (the caller truncates it to the allocation length).
pub fn inquiry(_cdb: &[u8], _info: &LunInfo) -> Result<Vec<u8>, Sense> {
    Err(Sense::invalid_opcode())
}
