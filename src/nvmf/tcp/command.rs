//! One command's data transfer on NVMe/TCP: which way and how its data moves (the SGL
//! descriptor: in-capsule data block with an offset, or a transport data block moved by
//! R2T/H2CData or C2HData), and the window an H2CData PDU must fit (the R2T it answers).

use crate::nvme::DataDir;
use ferry_nvme::spec::{sc, sgl, Command, Status};
use ferry_nvme::tcp::{fes, DataHeader, TermError};

/// How a command's data moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SglPlan {
    /// No data.
    None,
    /// `len` bytes came in the capsule.
    InCapsule(u32),
    /// `len` bytes to fetch by R2T (to the controller) or send by C2HData (to the host).
    Transport(u32),
}

/// Decodes the data pointer of `cmd` (direction `dir`) whose capsule carried `capsule_data`
/// bytes, with `icd_limit` bytes allowed in a capsule and `max_io` per command. A refusal is
/// the status to complete the command with.
pub fn decode_sgl(
    cmd: &Command,
    dir: DataDir,
    capsule_data: usize,
    icd_limit: usize,
    max_io: u32,
) -> Result<SglPlan, Status> {
    let invalid = |code| Err(Status::generic(code).dnr());
    if dir == DataDir::None {
        return if capsule_data == 0 { Ok(SglPlan::None) } else { invalid(sc::INVALID_FIELD) };
    }
    if dir == DataDir::Both {
        return invalid(sc::INVALID_FIELD);
    }
    // NVMe/TCP carries SGLs only (PSDT 1 or 2; PRPs mean nothing on a fabric).
    if cmd.psdt() == 0 {
        return invalid(sc::INVALID_FIELD);
    }
    let d = cmd.sgl();
    match (d.kind, d.subtype) {
        (sgl::DATA_BLOCK, sgl::SUB_OFFSET) => {
            if dir != DataDir::ToController {
                return invalid(sc::SGL_DESCRIPTOR_TYPE_INVALID);
            }
            // ICDOFF is 0: the data starts the capsule's data.
            if d.address != 0 {
                return invalid(sc::INVALID_SGL_OFFSET);
            }
            if d.length as usize > icd_limit || d.length as usize != capsule_data {
                return invalid(sc::DATA_SGL_LENGTH_INVALID);
            }
            Ok(SglPlan::InCapsule(d.length))
        }
        (sgl::TRANSPORT_DATA_BLOCK, sgl::SUB_TRANSPORT) => {
            if capsule_data != 0 {
                return invalid(sc::INVALID_FIELD);
            }
            if d.length > max_io {
                return invalid(sc::DATA_SGL_LENGTH_INVALID);
            }
            Ok(SglPlan::Transport(d.length))
        }
        _ => invalid(sc::SGL_DESCRIPTOR_TYPE_INVALID),
    }
}

/// The R2T outstanding for a command: H2CData must name it and fill it in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The command's identifier.
    pub cccid: u16,
    /// The transfer tag the R2T gave.
    pub ttag: u16,
    /// Bytes the R2T asked for (from offset 0).
    pub total: u32,
    /// Bytes received so far.
    pub received: u32,
}

/// Byte offsets of the H2CData header fields (the FEI of a termination request).
mod field {
    pub const CCCID: u32 = 8;
    pub const DATAO: u32 = 12;
    pub const DATAL: u32 = 16;
}

impl Window {
    /// Checks an H2CData header `h` whose PDU carries `data_len` bytes (the ttag already
    /// matched this window).
    pub fn check(&self, h: &DataHeader, data_len: usize) -> Result<(), TermError> {
        if h.cccid != self.cccid {
            return Err(TermError::field(field::CCCID));
        }
        if h.length as usize != data_len {
            return Err(TermError::field(field::DATAL));
        }
        if h.offset != self.received {
            return Err(TermError { fes: fes::DATA_OUT_OF_RANGE, fei: field::DATAO });
        }
        if h.offset.checked_add(h.length).is_none_or(|end| end > self.total) {
            return Err(TermError { fes: fes::DATA_OUT_OF_RANGE, fei: field::DATAL });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_nvme::spec::{io, SglDescriptor};

    #[test]
    fn sgls_are_decoded_and_bounded() {
        let mut w = Command::new(io::WRITE, 1);
        w.set_sgl(&SglDescriptor::in_capsule(0, 512));
        assert_eq!(decode_sgl(&w, DataDir::ToController, 512, 4096, 1 << 17), Ok(SglPlan::InCapsule(512)));
        assert_eq!(
            decode_sgl(&w, DataDir::ToController, 100, 4096, 1 << 17).unwrap_err().sc,
            sc::DATA_SGL_LENGTH_INVALID
        );
        w.set_sgl(&SglDescriptor::in_capsule(8, 512));
        assert_eq!(decode_sgl(&w, DataDir::ToController, 512, 4096, 1 << 17).unwrap_err().sc, sc::INVALID_SGL_OFFSET);
        w.set_sgl(&SglDescriptor::transport(1 << 20));
        assert_eq!(
            decode_sgl(&w, DataDir::ToController, 0, 4096, 1 << 17).unwrap_err().sc,
            sc::DATA_SGL_LENGTH_INVALID
        );
        w.set_sgl(&SglDescriptor::transport(8192));
        assert_eq!(decode_sgl(&w, DataDir::ToController, 0, 4096, 1 << 17), Ok(SglPlan::Transport(8192)));
        w.set_psdt(0);
        assert!(decode_sgl(&w, DataDir::ToController, 0, 4096, 1 << 17).is_err(), "PRPs");
    }

    #[test]
    fn h2c_data_must_fill_the_window_in_order() {
        let win = Window { cccid: 5, ttag: 0, total: 8192, received: 4096 };
        let h = |cccid, offset, length| DataHeader { cccid, ttag: 0, offset, length };
        assert!(win.check(&h(5, 4096, 4096), 4096).is_ok());
        assert_eq!(win.check(&h(6, 4096, 4096), 4096).unwrap_err(), TermError::field(8));
        assert_eq!(win.check(&h(5, 0, 4096), 4096).unwrap_err().fes, fes::DATA_OUT_OF_RANGE);
        assert_eq!(win.check(&h(5, 4096, 8192), 8192).unwrap_err().fes, fes::DATA_OUT_OF_RANGE);
        assert_eq!(win.check(&h(5, 4096, 4096), 100).unwrap_err(), TermError::field(16));
    }
}
