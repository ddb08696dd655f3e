//! The iSCSI target's PDU framing and header decoding: the fuzzer's bytes as a TCP stream cut
//! into PDUs by `frame::parse` under limits the input picks (digests on or off, any segment
//! limit), each PDU's layout checked to lie inside the bytes it came from, its data digest
//! checked, and the fields the engine decodes from a header (LUN, extended CDB) decoded.

use super::Input;
use crate::iscsi::command::{cdb_from, decode_lun};
use crate::iscsi::frame::{self, Limits};
use crate::iscsi::pdu::{op, Bhs, BHS_LEN};

/// Input: one byte of flags (bit 0 header digest, bit 1 data digest), a u16 segment limit,
/// then the stream. Returns the number of whole PDUs cut.
pub fn iscsi_pdu(data: &[u8]) -> u64 {
    let mut input = Input(data);
    let flags = input.u8();
    let max_data = input.u16() as u32 * 16;
    let limits = Limits { header_digest: flags & 1 != 0, data_digest: flags & 2 != 0, max_data };
    let stream = input.0;
    let mut off = 0;
    let mut cut = 0;
    while off < stream.len() {
        let buf = &stream[off..];
        let l = match frame::parse(buf, &limits) {
            Ok(Some(l)) => l,
            // Incomplete, or refused (the engine drops the connection): the stream ends here.
            Ok(None) | Err(_) => break,
        };
        assert!(l.total <= buf.len() && l.total >= BHS_LEN, "a PDU inside its bytes");
        assert!(l.data_off + l.data_len <= l.total);
        assert!(l.data_len as u32 <= limits.max_data, "no segment beyond the limit");
        let _ = frame::check_data_digest(buf, &l);
        let bhs = Bhs(buf[..BHS_LEN].try_into().expect("48 bytes"));
        let _ = decode_lun(bhs.lun_field());
        if bhs.opcode() == op::SCSI_CMD {
            if let Some((_, len)) = cdb_from(&bhs, &buf[BHS_LEN..BHS_LEN + l.ahs_len]) {
                assert!((16..=32).contains(&len));
            }
        }
        off += l.total;
        cut += 1;
    }
    cut
}
