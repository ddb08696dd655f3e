//! MODE SENSE (6/10) and MODE SELECT (6/10) (SPC-4 6.11-6.14) with the caching, control and
//! read-write error recovery pages.

use super::sense::Sense;
use super::LunInfo;

/// The unit's current mode parameters.
#[derive(Debug, Clone)]
pub struct ModePages {
    /// WCE in the caching page.
    pub write_cache: bool,
}

impl ModePages {
    /// The defaults for a unit.
    pub fn new(info: &LunInfo) -> ModePages {
        ModePages { write_cache: info.flush }
    }

    /// The MODE SENSE (6 or 10, from the opcode) response.
    pub fn sense(&self, _cdb: &[u8], _info: &LunInfo) -> Result<Vec<u8>, Sense> {
        Err(Sense::invalid_opcode())
    }

    /// Applies a MODE SELECT (6 or 10) parameter list.
    pub fn select(&mut self, _cdb: &[u8], _params: &[u8], _info: &LunInfo) -> Result<(), Sense> {
        Err(Sense::invalid_opcode())
    }
}
