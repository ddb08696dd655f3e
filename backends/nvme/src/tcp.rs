//! The NVMe/TCP PDU codec (NVMe/TCP Transport Specification 1.0 §3.6): the 8-byte common
//! header, the layout checks every received PDU passes before anything in it is trusted, the
//! PDU-specific headers, and the CRC32C header and data digests.
//!
//! Received PDUs are parsed in two steps, so a connection never buffers more than it has
//! checked: [`Layout::parse`] reads the common header and says how long the PDU-specific
//! header and the data are; the caller reads that much and decodes the specific header with
//! the typed parsers here. Sent PDUs are built as a header (with its digest) to which the
//! caller appends the data (possibly as iovecs: zero copy) and [`data_digest`].

use crate::spec::{le16, le32, put16, put32, Command, Completion};
use thiserror::Error;

/// PDU types.
pub mod pdu_type {
    /// Initialize Connection Request (host to controller).
    pub const IC_REQ: u8 = 0x00;
    /// Initialize Connection Response.
    pub const IC_RESP: u8 = 0x01;
    /// Host to controller termination request.
    pub const H2C_TERM_REQ: u8 = 0x02;
    /// Controller to host termination request.
    pub const C2H_TERM_REQ: u8 = 0x03;
    /// Command capsule.
    pub const CAPSULE_CMD: u8 = 0x04;
    /// Response capsule.
    pub const CAPSULE_RESP: u8 = 0x05;
    /// Host to controller data.
    pub const H2C_DATA: u8 = 0x06;
    /// Controller to host data.
    pub const C2H_DATA: u8 = 0x07;
    /// Ready to transfer.
    pub const R2T: u8 = 0x09;
}

/// Common header flags.
pub mod flag {
    /// A header digest follows the PDU header.
    pub const HDGSTF: u8 = 0x01;
    /// A data digest follows the PDU data.
    pub const DDGSTF: u8 = 0x02;
    /// Last data PDU of a transfer (H2CData, C2HData).
    pub const LAST_PDU: u8 = 0x04;
    /// C2HData: the command succeeded; no response capsule follows.
    pub const SUCCESS: u8 = 0x08;
}

/// Length of the common header.
pub const COMMON_HEADER_LEN: usize = 8;
/// Length of a header digest and of a data digest.
pub const DIGEST_LEN: usize = 4;
/// ICReq and ICResp length (they never carry digests or data).
pub const IC_LEN: usize = 128;
/// CapsuleCmd header length: common header and the 64-byte command.
pub const CAPSULE_CMD_HLEN: usize = 72;
/// CapsuleResp header length: common header and the 16-byte completion.
pub const CAPSULE_RESP_HLEN: usize = 24;
/// H2CData, C2HData and R2T header length.
pub const DATA_HLEN: usize = 24;
/// Termination request header length.
pub const TERM_REQ_HLEN: usize = 24;
/// The most of the offending PDU header a termination request carries.
pub const TERM_REQ_MAX_DATA: usize = 128;
/// The smallest MAXH2CDATA a Linux host accepts.
pub const MIN_MAXH2CDATA: u32 = 4096;

/// Fatal error status of a termination request (§3.6.2.4).
pub mod fes {
    /// Invalid PDU header field (FEI: the byte offset of the field).
    pub const INVALID_HEADER_FIELD: u16 = 0x01;
    /// PDU sequence error.
    pub const PDU_SEQUENCE_ERROR: u16 = 0x02;
    /// Header digest error.
    pub const HEADER_DIGEST_ERROR: u16 = 0x03;
    /// Data transfer out of range.
    pub const DATA_OUT_OF_RANGE: u16 = 0x04;
    /// Data transfer limit exceeded.
    pub const DATA_LIMIT_EXCEEDED: u16 = 0x05;
    /// Unsupported parameter (FEI: the byte offset of the field).
    pub const UNSUPPORTED_PARAMETER: u16 = 0x06;
}

/// Why a received PDU is refused: what the termination request says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("NVMe/TCP PDU refused: fatal error status {fes:#x} (field information {fei})")]
pub struct TermError {
    /// Fatal error status (`fes::*`).
    pub fes: u16,
    /// Fatal error information: for a bad field, its byte offset in the header.
    pub fei: u32,
}

impl TermError {
    /// A bad header field at byte `offset`.
    pub fn field(offset: u32) -> TermError {
        TermError { fes: fes::INVALID_HEADER_FIELD, fei: offset }
    }
}

/// Which digests a connection negotiated (ICReq/ICResp DGST bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Digests {
    /// Header digest.
    pub header: bool,
    /// Data digest.
    pub data: bool,
}

impl Digests {
    /// From the DGST byte of an ICReq/ICResp.
    pub fn from_bits(b: u8) -> Digests {
        Digests { header: b & 1 != 0, data: b & 2 != 0 }
    }

    /// The DGST byte.
    pub fn bits(&self) -> u8 {
        self.header as u8 | ((self.data as u8) << 1)
    }
}

/// The common header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommonHeader {
    /// PDU type (`pdu_type::*`).
    pub pdu_type: u8,
    /// Flags (`flag::*`).
    pub flags: u8,
    /// PDU header length (common and specific, without digest).
    pub hlen: u8,
    /// PDU data offset from the start of the PDU (0 without data).
    pub pdo: u8,
    /// Total PDU length, digests included.
    pub plen: u32,
}

impl CommonHeader {
    /// Decodes the first 8 bytes of a PDU (`b` must hold at least 8).
    pub fn parse(b: &[u8]) -> CommonHeader {
        CommonHeader { pdu_type: b[0], flags: b[1], hlen: b[2], pdo: b[3], plen: le32(b, 4) }
    }

    /// Encodes the 8 bytes.
    pub fn to_bytes(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.pdu_type;
        b[1] = self.flags;
        b[2] = self.hlen;
        b[3] = self.pdo;
        put32(&mut b, 4, self.plen);
        b
    }
}

/// Where each part of a received PDU lies, after the common header passed its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The common header.
    pub ch: CommonHeader,
    /// PDU header length (common and specific, without digest).
    pub hlen: usize,
    /// A header digest follows the header.
    pub header_digest: bool,
    /// Offset of the data from the start of the PDU (header, digest and padding before it).
    pub data_offset: usize,
    /// Bytes of data (0 if none).
    pub data_len: usize,
    /// A data digest follows the data.
    pub data_digest: bool,
    /// Total PDU length.
    pub plen: usize,
}

/// Which side parses: a controller receives host-to-controller PDUs, a host the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Ferry's target: ICReq, H2CTermReq, CapsuleCmd, H2CData.
    Controller,
    /// Ferry's initiator: ICResp, C2HTermReq, CapsuleResp, C2HData, R2T.
    Host,
}

impl Layout {
    /// Checks the common header `b` (at least 8 bytes) of a PDU received by `side`, with the
    /// digests negotiated so far (none before the ICReq/ICResp exchange), and data at most
    /// `max_data` bytes (in-capsule data size, MAXH2CDATA, or what the receiver buffers).
    /// The header length, data offset and total length must agree with the type exactly.
    pub fn parse(b: &[u8], side: Side, digests: Digests, max_data: usize) -> Result<Layout, TermError> {
        let ch = CommonHeader::parse(b);
        let allowed = match side {
            Side::Controller => {
                matches!(
                    ch.pdu_type,
                    pdu_type::IC_REQ | pdu_type::H2C_TERM_REQ | pdu_type::CAPSULE_CMD | pdu_type::H2C_DATA
                )
            }
            Side::Host => matches!(
                ch.pdu_type,
                pdu_type::IC_RESP
                    | pdu_type::C2H_TERM_REQ
                    | pdu_type::CAPSULE_RESP
                    | pdu_type::C2H_DATA
                    | pdu_type::R2T
            ),
        };
        if !allowed {
            return Err(TermError::field(0));
        }
        let (hlen, may_digest, data) = match ch.pdu_type {
            pdu_type::IC_REQ | pdu_type::IC_RESP => (IC_LEN, false, DataRule::None),
            pdu_type::H2C_TERM_REQ | pdu_type::C2H_TERM_REQ => (TERM_REQ_HLEN, false, DataRule::Optional),
            pdu_type::CAPSULE_CMD => (CAPSULE_CMD_HLEN, true, DataRule::Optional),
            pdu_type::CAPSULE_RESP | pdu_type::R2T => (ch_specific_len(ch.pdu_type), true, DataRule::None),
            _ => (DATA_HLEN, true, DataRule::Required),
        };
        if ch.hlen as usize != hlen {
            return Err(TermError::field(2));
        }
        let header_digest = may_digest && digests.header;
        if (ch.flags & flag::HDGSTF != 0) != header_digest {
            return Err(TermError::field(1));
        }
        let plen = ch.plen as usize;
        let header_end = hlen + if header_digest { DIGEST_LEN } else { 0 };
        if plen < header_end {
            return Err(TermError::field(4));
        }
        let has_data = plen > header_end;
        match data {
            DataRule::None if has_data => return Err(TermError::field(4)),
            DataRule::Required if !has_data => return Err(TermError::field(4)),
            _ => {}
        }
        if !has_data {
            if ch.pdo != 0 || ch.flags & flag::DDGSTF != 0 {
                return Err(TermError::field(if ch.pdo != 0 { 3 } else { 1 }));
            }
            return Ok(Layout {
                ch,
                hlen,
                header_digest,
                data_offset: header_end,
                data_len: 0,
                data_digest: false,
                plen,
            });
        }
        // Termination requests carry the offending header, never a digest; other data PDUs
        // carry a data digest exactly when it was negotiated.
        let data_digest = may_digest && digests.data;
        if (ch.flags & flag::DDGSTF != 0) != data_digest {
            return Err(TermError::field(1));
        }
        // Ferry asks for no padding (CPDA/HPDA 0), so data starts right after the header.
        if ch.pdo as usize != header_end {
            return Err(TermError::field(3));
        }
        let tail = if data_digest { DIGEST_LEN } else { 0 };
        if plen < header_end + tail + 1 {
            return Err(TermError::field(4));
        }
        let data_len = plen - header_end - tail;
        let limit = if matches!(ch.pdu_type, pdu_type::H2C_TERM_REQ | pdu_type::C2H_TERM_REQ) {
            TERM_REQ_MAX_DATA
        } else {
            max_data
        };
        if data_len > limit {
            return Err(TermError { fes: fes::DATA_LIMIT_EXCEEDED, fei: 0 });
        }
        Ok(Layout { ch, hlen, header_digest, data_offset: header_end, data_len, data_digest, plen })
    }
}

enum DataRule {
    None,
    Optional,
    Required,
}

fn ch_specific_len(t: u8) -> usize {
    match t {
        pdu_type::CAPSULE_RESP => CAPSULE_RESP_HLEN,
        _ => DATA_HLEN,
    }
}

/// CRC32C of a header, as its digest carries it.
pub fn header_digest(header: &[u8]) -> u32 {
    crc32c::crc32c(header)
}

/// CRC32C over data given in pieces (iovecs of a zero-copy buffer).
pub fn data_digest<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u32 {
    parts.into_iter().fold(0, crc32c::crc32c_append)
}

/// Checks the header digest of a received header (`pdu` holds at least
/// `layout.hlen + 4` bytes).
pub fn check_header_digest(pdu: &[u8], layout: &Layout) -> Result<(), TermError> {
    if !layout.header_digest {
        return Ok(());
    }
    let want = le32(pdu, layout.hlen);
    if header_digest(&pdu[..layout.hlen]) != want {
        return Err(TermError { fes: fes::HEADER_DIGEST_ERROR, fei: 0 });
    }
    Ok(())
}

/// Builds a PDU header: common header with `pdo` and `plen` for `data_len` bytes of data,
/// the specific header bytes (`specific`, hlen - 8 long), and the header digest if
/// negotiated. The caller sends the data and, if `digests.data` and `data_len > 0`, the data
/// digest (little endian) after it.
pub fn build_header(pdu_type: u8, mut flags: u8, specific: &[u8], data_len: usize, digests: Digests) -> Vec<u8> {
    let hlen = COMMON_HEADER_LEN + specific.len();
    let digestible =
        !matches!(pdu_type, pdu_type::IC_REQ | pdu_type::IC_RESP | pdu_type::H2C_TERM_REQ | pdu_type::C2H_TERM_REQ);
    let hd = digestible && digests.header;
    let dd = digestible && digests.data && data_len > 0;
    let header_end = hlen + if hd { DIGEST_LEN } else { 0 };
    if hd {
        flags |= flag::HDGSTF;
    }
    if dd {
        flags |= flag::DDGSTF;
    }
    let pdo = if data_len > 0 { header_end as u8 } else { 0 };
    let plen = header_end + data_len + if dd { DIGEST_LEN } else { 0 };
    let ch = CommonHeader { pdu_type, flags, hlen: hlen as u8, pdo, plen: plen as u32 };
    let mut out = Vec::with_capacity(header_end);
    out.extend_from_slice(&ch.to_bytes());
    out.extend_from_slice(specific);
    if hd {
        let d = header_digest(&out);
        out.extend_from_slice(&d.to_le_bytes());
    }
    out
}

/// An Initialize Connection Request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcReq {
    /// PDU format version (0).
    pub pfv: u16,
    /// Host PDU data alignment (0's based dwords).
    pub hpda: u8,
    /// Digests the host asks for.
    pub digests: Digests,
    /// Maximum outstanding R2Ts per command, 0's based.
    pub maxr2t: u32,
}

impl IcReq {
    /// Decodes a whole ICReq PDU (128 bytes).
    pub fn parse(pdu: &[u8]) -> IcReq {
        IcReq { pfv: le16(pdu, 8), hpda: pdu[10], digests: Digests::from_bits(pdu[11]), maxr2t: le32(pdu, 12) }
    }

    /// Encodes the whole PDU.
    pub fn build(&self) -> Vec<u8> {
        let mut s = [0u8; IC_LEN - COMMON_HEADER_LEN];
        put16(&mut s, 0, self.pfv);
        s[2] = self.hpda;
        s[3] = self.digests.bits();
        put32(&mut s, 4, self.maxr2t);
        build_header(pdu_type::IC_REQ, 0, &s, 0, Digests::default())
    }
}

/// An Initialize Connection Response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcResp {
    /// PDU format version (0).
    pub pfv: u16,
    /// Controller PDU data alignment (0's based dwords; Ferry uses 0).
    pub cpda: u8,
    /// Digests granted (a Linux host requires exactly what it asked).
    pub digests: Digests,
    /// Largest H2CData data the controller accepts, in bytes (≥ 4096, a multiple of 4).
    pub maxh2cdata: u32,
}

impl IcResp {
    /// Decodes a whole ICResp PDU (128 bytes).
    pub fn parse(pdu: &[u8]) -> IcResp {
        IcResp { pfv: le16(pdu, 8), cpda: pdu[10], digests: Digests::from_bits(pdu[11]), maxh2cdata: le32(pdu, 12) }
    }

    /// Encodes the whole PDU.
    pub fn build(&self) -> Vec<u8> {
        let mut s = [0u8; IC_LEN - COMMON_HEADER_LEN];
        put16(&mut s, 0, self.pfv);
        s[2] = self.cpda;
        s[3] = self.digests.bits();
        put32(&mut s, 4, self.maxh2cdata);
        build_header(pdu_type::IC_RESP, 0, &s, 0, Digests::default())
    }
}

/// A termination request (either direction): the fatal error and the offending header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TermReq {
    /// Fatal error status and information.
    pub error: TermError,
    /// Up to 128 bytes of the PDU header that caused it.
    pub header: Vec<u8>,
}

impl TermReq {
    /// Decodes a whole termination request PDU.
    pub fn parse(pdu: &[u8], layout: &Layout) -> TermReq {
        TermReq {
            error: TermError { fes: le16(pdu, 8), fei: le32(pdu, 10) },
            header: pdu[layout.data_offset..layout.data_offset + layout.data_len].to_vec(),
        }
    }

    /// Encodes the whole PDU: `pdu_type` is `H2C_TERM_REQ` or `C2H_TERM_REQ`; at most 128
    /// bytes of `offending` are carried.
    pub fn build(pdu_type: u8, error: TermError, offending: &[u8]) -> Vec<u8> {
        let mut s = [0u8; TERM_REQ_HLEN - COMMON_HEADER_LEN];
        put16(&mut s, 0, error.fes);
        put32(&mut s, 2, error.fei);
        let data = &offending[..offending.len().min(TERM_REQ_MAX_DATA)];
        let mut out = build_header(pdu_type, 0, &s, data.len(), Digests::default());
        out.extend_from_slice(data);
        out
    }
}

/// The header of a command capsule PDU: the whole command. The caller sends `data_len` bytes
/// of in-capsule data (and its digest) after it.
pub fn capsule_cmd_header(cmd: &Command, data_len: usize, digests: Digests) -> Vec<u8> {
    build_header(pdu_type::CAPSULE_CMD, 0, &cmd.0, data_len, digests)
}

/// The command of a received command capsule (`pdu` holds at least 72 bytes).
pub fn capsule_cmd(pdu: &[u8]) -> Command {
    Command::from_bytes(&pdu[COMMON_HEADER_LEN..CAPSULE_CMD_HLEN])
}

/// A whole response capsule PDU (with its header digest if negotiated).
pub fn capsule_resp(cqe: &Completion, digests: Digests) -> Vec<u8> {
    build_header(pdu_type::CAPSULE_RESP, 0, &cqe.to_bytes(), 0, digests)
}

/// The completion of a received response capsule (`pdu` holds at least 24 bytes).
pub fn capsule_resp_cqe(pdu: &[u8]) -> Completion {
    Completion::from_bytes(&pdu[COMMON_HEADER_LEN..CAPSULE_RESP_HLEN])
}

/// The specific header of H2CData, C2HData and R2T PDUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DataHeader {
    /// The command's identifier (CCCID).
    pub cccid: u16,
    /// Transfer tag (H2CData and R2T; 0 in C2HData).
    pub ttag: u16,
    /// Offset of this data in the command's buffer (DATAO, R2TO).
    pub offset: u32,
    /// Length of this data (DATAL, R2TL).
    pub length: u32,
}

impl DataHeader {
    /// Decodes the specific header of a received H2CData, C2HData or R2T.
    pub fn parse(pdu: &[u8]) -> DataHeader {
        DataHeader { cccid: le16(pdu, 8), ttag: le16(pdu, 10), offset: le32(pdu, 12), length: le32(pdu, 16) }
    }

    fn specific(&self) -> [u8; DATA_HLEN - COMMON_HEADER_LEN] {
        let mut s = [0u8; DATA_HLEN - COMMON_HEADER_LEN];
        put16(&mut s, 0, self.cccid);
        put16(&mut s, 2, self.ttag);
        put32(&mut s, 4, self.offset);
        put32(&mut s, 8, self.length);
        s
    }

    /// The header of a data PDU (`pdu_type` H2C_DATA or C2H_DATA) carrying `self.length`
    /// bytes; `flags` may hold LAST_PDU and SUCCESS.
    pub fn data_pdu_header(&self, pdu_type: u8, flags: u8, digests: Digests) -> Vec<u8> {
        build_header(pdu_type, flags, &self.specific(), self.length as usize, digests)
    }

    /// A whole R2T PDU.
    pub fn r2t(&self, digests: Digests) -> Vec<u8> {
        build_header(pdu_type::R2T, 0, &self.specific(), 0, digests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{io, SglDescriptor, Status};

    const BOTH: Digests = Digests { header: true, data: true };

    #[test]
    fn ic_exchange_round_trips_without_digests_or_data() {
        let req = IcReq { pfv: 0, hpda: 0, digests: BOTH, maxr2t: 0 };
        let b = req.build();
        assert_eq!(b.len(), 128);
        let l = Layout::parse(&b, Side::Controller, Digests::default(), 0).unwrap();
        assert_eq!((l.hlen, l.data_len, l.plen), (128, 0, 128));
        assert_eq!(IcReq::parse(&b), req);
        let resp = IcResp { pfv: 0, cpda: 0, digests: BOTH, maxh2cdata: 131072 };
        assert_eq!(IcResp::parse(&resp.build()), resp);
        assert!(Layout::parse(&resp.build(), Side::Controller, Digests::default(), 0).is_err(), "wrong direction");
    }

    #[test]
    fn capsule_with_in_capsule_data_and_digests_lays_out_as_linux_sends_it() {
        let mut cmd = Command::new(io::WRITE, 9);
        cmd.set_sgl(&SglDescriptor::in_capsule(0, 512));
        let h = capsule_cmd_header(&cmd, 512, BOTH);
        assert_eq!(h.len(), 76);
        let ch = CommonHeader::parse(&h);
        assert_eq!((ch.flags, ch.hlen, ch.pdo, ch.plen), (0x03, 72, 76, 76 + 512 + 4));
        let l = Layout::parse(&h, Side::Controller, BOTH, 8192).unwrap();
        assert_eq!((l.data_offset, l.data_len, l.data_digest), (76, 512, true));
        check_header_digest(&h, &l).unwrap();
        let mut bad = h.clone();
        bad[20] ^= 1;
        assert_eq!(check_header_digest(&bad, &l).unwrap_err().fes, fes::HEADER_DIGEST_ERROR);
        assert_eq!(capsule_cmd(&h), cmd);
        // Over the in-capsule limit, digests not as negotiated, data offset not where it goes.
        assert_eq!(Layout::parse(&h, Side::Controller, BOTH, 256).unwrap_err().fes, fes::DATA_LIMIT_EXCEEDED);
        assert_eq!(Layout::parse(&h, Side::Controller, Digests::default(), 8192).unwrap_err(), TermError::field(1));
        let mut moved = h.clone();
        moved[3] = 80;
        assert_eq!(Layout::parse(&moved, Side::Controller, BOTH, 8192).unwrap_err(), TermError::field(3));
    }

    #[test]
    fn lengths_that_disagree_with_the_type_are_refused() {
        let resp =
            capsule_resp(&Completion { cid: 3, status: Status::SUCCESS, ..Default::default() }, Digests::default());
        assert_eq!(resp.len(), 24);
        assert!(Layout::parse(&resp, Side::Host, Digests::default(), 0).is_ok());
        let mut long = resp.clone();
        long[4] = 30;
        assert!(Layout::parse(&long, Side::Host, Digests::default(), 0).is_err(), "a response has no data");
        let mut short = resp;
        short[4] = 4;
        assert!(Layout::parse(&short, Side::Host, Digests::default(), 0).is_err(), "plen below the header");
        let h2c = DataHeader { cccid: 1, ttag: 2, offset: 0, length: 0 }.data_pdu_header(
            pdu_type::H2C_DATA,
            flag::LAST_PDU,
            Digests::default(),
        );
        assert!(Layout::parse(&h2c, Side::Controller, Digests::default(), 4096).is_err(), "H2CData needs data");
        let mut unknown = h2c;
        unknown[0] = 0x08;
        assert_eq!(
            Layout::parse(&unknown, Side::Controller, Digests::default(), 4096).unwrap_err(),
            TermError::field(0)
        );
    }

    #[test]
    fn data_pdus_and_term_requests_round_trip() {
        let d = DataHeader { cccid: 7, ttag: 1, offset: 4096, length: 8192 };
        let h = d.data_pdu_header(pdu_type::C2H_DATA, flag::LAST_PDU, BOTH);
        let l = Layout::parse(&h, Side::Host, BOTH, 1 << 20).unwrap();
        assert_eq!((l.data_offset, l.data_len), (28, 8192));
        assert_eq!(DataHeader::parse(&h), d);
        let r2t = d.r2t(Digests::default());
        assert_eq!(DataHeader::parse(&r2t), d);
        let t = TermReq::build(pdu_type::C2H_TERM_REQ, TermError::field(2), &[0xaa; 200]);
        let l = Layout::parse(&t, Side::Host, BOTH, 0).unwrap();
        assert_eq!((l.data_len, l.data_digest), (128, false), "the offending header, capped, no digest");
        assert_eq!(TermReq::parse(&t, &l).error, TermError::field(2));
        assert_eq!(data_digest([&b"12"[..], &b"3456789"[..]]), 0xe306_9283, "CRC32C check value");
    }
}
