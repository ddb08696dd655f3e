//! Cutting PDUs out of a connection's byte stream (RFC 7143 §11.2): the basic header, the
//! additional header segments, the header digest, the data segment with its padding and the
//! data digest. Everything the peer states is checked against what was negotiated before a
//! byte of it is trusted: an AHS or data segment longer than allowed, or a digest that does
//! not match, is an error here, never an allocation or an out-of-bounds read.

use super::pdu::{Bhs, BHS_LEN};

/// The longest AHS the field can state (255 words).
pub const MAX_AHS: usize = 255 * 4;

/// What the receiver accepts on this connection now.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A CRC32C follows the header.
    pub header_digest: bool,
    /// A CRC32C follows a non-empty data segment.
    pub data_digest: bool,
    /// The most data one PDU may carry (the MaxRecvDataSegmentLength we declared).
    pub max_data: u32,
}

/// Why a PDU cannot be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The data segment is longer than we declared we receive.
    #[error("data segment of {len} bytes, more than the {max} negotiated")]
    DataTooLong {
        /// Stated length.
        len: u32,
        /// Our limit.
        max: u32,
    },
    /// The header digest does not match: nothing in the header can be trusted, including its
    /// lengths, so the connection must go (RFC 7143 §7.8).
    #[error("header digest mismatch")]
    HeaderDigest,
}

/// A complete PDU's position in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Bytes of AHS after the BHS.
    pub ahs_len: usize,
    /// Offset of the data segment from the PDU's start.
    pub data_off: usize,
    /// Data segment length (unpadded).
    pub data_len: usize,
    /// Offset of the data digest, if one is present.
    pub data_digest_off: Option<usize>,
    /// Total bytes of the PDU on the wire.
    pub total: usize,
}

/// The digest of `parts` as iSCSI sends it: CRC32C, least significant byte first (RFC 7143
/// §13.1 with RFC 3720 Appendix B.4's byte order).
pub fn digest(parts: &[&[u8]]) -> [u8; 4] {
    let mut crc = 0;
    for p in parts {
        crc = crc32c::crc32c_append(crc, p);
    }
    crc.to_le_bytes()
}

/// Padding after a data segment of `len` bytes.
pub fn pad(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// The layout of the PDU at the start of `buf`, if all of it is there: `Ok(None)` means read
/// more. Checks the header digest (over BHS + AHS) once the header is complete, and the data
/// length against `limits`. The data digest is left to the caller, which may want the data
/// first (`check_data_digest`).
pub fn parse(buf: &[u8], limits: &Limits) -> Result<Option<Layout>, FrameError> {
    Ok(parse_header(buf, limits)?.filter(|l| buf.len() >= l.total))
}

/// As [`parse`], but as soon as the header (and its digest) is complete, whether or not the
/// data segment has arrived: a receiver may then put the data straight where it belongs.
pub fn parse_header(buf: &[u8], limits: &Limits) -> Result<Option<Layout>, FrameError> {
    if buf.len() < BHS_LEN {
        return Ok(None);
    }
    let bhs = Bhs(buf[..BHS_LEN].try_into().expect("48 bytes"));
    let ahs_len = bhs.ahs_len();
    let hd = if limits.header_digest { 4 } else { 0 };
    let header = BHS_LEN + ahs_len;
    if buf.len() < header + hd {
        return Ok(None);
    }
    if limits.header_digest && digest(&[&buf[..header]]) != buf[header..header + 4] {
        return Err(FrameError::HeaderDigest);
    }
    let data_len = bhs.data_len();
    if data_len > limits.max_data {
        return Err(FrameError::DataTooLong { len: data_len, max: limits.max_data });
    }
    let data_len = data_len as usize;
    let data_off = header + hd;
    let mut total = data_off + data_len + pad(data_len);
    let data_digest_off = (limits.data_digest && data_len > 0).then_some(total);
    if data_digest_off.is_some() {
        total += 4;
    }
    Ok(Some(Layout { ahs_len, data_off, data_len, data_digest_off, total }))
}

/// Whether the data digest of the PDU laid out as `l` at the start of `buf` matches (true when
/// there is none).
pub fn check_data_digest(buf: &[u8], l: &Layout) -> bool {
    match l.data_digest_off {
        None => true,
        Some(off) => digest(&[&buf[l.data_off..off]]) == buf[off..off + 4],
    }
}

/// The most bytes one PDU can occupy under `limits` (the receive buffer holds at least one).
pub fn max_pdu(limits: &Limits) -> usize {
    BHS_LEN + MAX_AHS + 4 + limits.max_data as usize + 3 + 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::pdu::op;

    fn pdu(data: &[u8], limits: &Limits) -> Vec<u8> {
        let mut b = Bhs::new(op::NOP_OUT);
        b.set_data_len(data.len() as u32);
        let mut v = b.0.to_vec();
        if limits.header_digest {
            v.extend_from_slice(&digest(&[&b.0]));
        }
        let start = v.len();
        v.extend_from_slice(data);
        v.resize(v.len() + pad(data.len()), 0);
        if limits.data_digest && !data.is_empty() {
            let d = digest(&[&v[start..]]);
            v.extend_from_slice(&d);
        }
        v
    }

    #[test]
    fn digest_is_crc32c_least_significant_byte_first() {
        // RFC 3720 B.4: 32 bytes of zeroes give CRC 0x8a9136aa, sent as aa 36 91 8a.
        assert_eq!(digest(&[&[0u8; 32]]), [0xaa, 0x36, 0x91, 0x8a]);
        // ...and 32 bytes of 0xff give 0x62a8ab43.
        assert_eq!(digest(&[&[0xffu8; 32]]), [0x43, 0xab, 0xa8, 0x62]);
    }

    #[test]
    fn a_pdu_is_complete_only_with_padding_and_digests() {
        let l = Limits { header_digest: true, data_digest: true, max_data: 8192 };
        let v = pdu(b"hello", &l);
        assert_eq!(v.len(), 48 + 4 + 8 + 4);
        for cut in 0..v.len() {
            assert_eq!(parse(&v[..cut], &l), Ok(None), "cut at {cut}");
        }
        let layout = parse(&v, &l).unwrap().unwrap();
        assert_eq!(layout.total, v.len());
        assert_eq!(&v[layout.data_off..layout.data_off + layout.data_len], b"hello");
        assert!(check_data_digest(&v, &layout));
        let mut bad = v.clone();
        bad[layout.data_off] ^= 1;
        assert!(!check_data_digest(&bad, &layout));
    }

    #[test]
    fn a_damaged_header_or_an_oversized_segment_is_refused_before_reading_on() {
        let l = Limits { header_digest: true, data_digest: false, max_data: 4 };
        let mut v = pdu(b"abcd", &l);
        v[20] ^= 1;
        assert_eq!(parse(&v, &l), Err(FrameError::HeaderDigest));
        let v = pdu(b"abcde", &Limits { max_data: 8, ..l });
        assert_eq!(parse(&v[..52], &l), Err(FrameError::DataTooLong { len: 5, max: 4 }));
    }
}
