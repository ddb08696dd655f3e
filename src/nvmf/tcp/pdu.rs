//! Cutting received PDUs out of a connection's byte stream, before anything in them is
//! trusted: the types allowed in the connection's state (ICReq first and only once, then
//! command capsules, H2CData and H2CTermReq), the data limit of each type, lengths that agree
//! with the type (`ferry_nvme::tcp::Layout`), and the header digest. A refusal is the
//! termination request to send.

use ferry_nvme::spec::le32;
use ferry_nvme::tcp::{check_header_digest, data_digest, fes, pdu_type, Digests, Layout, Side, TermError};

/// What a connection accepts next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvLimits {
    /// The ICReq/ICResp exchange is done.
    pub ic_done: bool,
    /// Digests negotiated.
    pub digests: Digests,
    /// In-capsule data a command capsule may carry.
    pub capsule_data: usize,
    /// Data one H2CData PDU may carry (MAXH2CDATA).
    pub h2c_data: usize,
}

/// The next PDU of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// More bytes are needed: this many from the PDU's start (bounded by the limits).
    NeedMore(usize),
    /// A whole PDU of this layout is at the front, its header digest checked.
    Pdu(Layout),
}

/// The longest PDU `limits` let a peer send.
pub fn max_pdu(limits: &RecvLimits) -> usize {
    let header = ferry_nvme::tcp::CAPSULE_CMD_HLEN + 4;
    ferry_nvme::tcp::IC_LEN.max(header + limits.capsule_data.max(limits.h2c_data) + 4)
}

/// Looks at the front of `buf`.
pub fn next(buf: &[u8], limits: &RecvLimits) -> Result<Next, TermError> {
    if buf.len() < ferry_nvme::tcp::COMMON_HEADER_LEN {
        return Ok(Next::NeedMore(ferry_nvme::tcp::COMMON_HEADER_LEN));
    }
    let t = buf[0];
    let sequence = TermError { fes: fes::PDU_SEQUENCE_ERROR, fei: 0 };
    let layout = if !limits.ic_done {
        if t != pdu_type::IC_REQ {
            return Err(sequence);
        }
        Layout::parse(buf, Side::Controller, Digests::default(), 0)?
    } else {
        let max = match t {
            pdu_type::IC_REQ => return Err(sequence),
            pdu_type::CAPSULE_CMD => limits.capsule_data,
            pdu_type::H2C_DATA => limits.h2c_data,
            _ => 0,
        };
        Layout::parse(buf, Side::Controller, limits.digests, max)?
    };
    if buf.len() < layout.plen {
        return Ok(Next::NeedMore(layout.plen));
    }
    check_header_digest(buf, &layout)?;
    Ok(Next::Pdu(layout))
}

/// Whether the data digest of a whole PDU (if it has one) is right.
pub fn data_digest_ok(pdu: &[u8], layout: &Layout) -> bool {
    if !layout.data_digest {
        return true;
    }
    let data = &pdu[layout.data_offset..layout.data_offset + layout.data_len];
    data_digest([data]) == le32(pdu, layout.data_offset + layout.data_len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_nvme::tcp::{IcReq, TermReq};

    const RUNNING: RecvLimits =
        RecvLimits { ic_done: true, digests: Digests { header: true, data: true }, capsule_data: 4096, h2c_data: 8192 };

    #[test]
    fn icreq_comes_first_and_only_once() {
        let ic = IcReq { pfv: 0, hpda: 0, digests: Digests::default(), maxr2t: 0 }.build();
        let fresh = RecvLimits { ic_done: false, ..RUNNING };
        assert!(matches!(next(&ic[..20], &fresh), Ok(Next::NeedMore(128))));
        assert!(matches!(next(&ic, &fresh), Ok(Next::Pdu(_))));
        assert_eq!(next(&ic, &RUNNING).unwrap_err().fes, fes::PDU_SEQUENCE_ERROR);
        let term = TermReq::build(pdu_type::H2C_TERM_REQ, TermError::field(0), &[]);
        assert_eq!(next(&term, &fresh).unwrap_err().fes, fes::PDU_SEQUENCE_ERROR);
    }
}
