//! MODE SENSE (6/10) and MODE SELECT (6/10) (SPC-4 6.11-6.14) with the caching, control and
//! read-write error recovery pages.
//!
//! Only WCE (caching page) and SWP (control page) can be changed; nothing can be saved (PS is 0 in every page, saved
//! values are refused). MODE SELECT checks the whole parameter list before it applies anything,
//! so a refused list changes nothing.

use super::cdb::{be16, be24, be32, be64, op};
use super::sense::{asc, key, Field, Sense};
use super::LunInfo;

/// Mode page codes served.
pub mod page {
    /// Read-write error recovery (SBC-3 6.4.7).
    pub const RW_ERROR_RECOVERY: u8 = 0x01;
    /// Caching (SBC-3 6.4.5).
    pub const CACHING: u8 = 0x08;
    /// Control (SPC-4 7.5.8).
    pub const CONTROL: u8 = 0x0A;
    /// Return all pages (MODE SENSE only).
    pub const ALL: u8 = 0x3F;
    /// The pages "all pages" returns, in ascending order.
    pub const SERVED: [u8; 3] = [RW_ERROR_RECOVERY, CACHING, CONTROL];
}

/// The PAGE CONTROL field of MODE SENSE (bits 7:6 of byte 2), saved values excepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pc {
    Current,
    Changeable,
    Default,
}

/// WCE in byte 2 of the caching page.
const WCE: u8 = 0x04;
/// SWP in byte 4 of the control page.
const SWP: u8 = 0x08;

/// The unit's current mode parameters.
#[derive(Debug, Clone)]
pub struct ModePages {
    /// WCE in the caching page.
    pub write_cache: bool,
    /// SWP in the control page: software write protection of the whole unit.
    pub swp: bool,
}

impl ModePages {
    /// The defaults for a unit.
    pub fn new(info: &LunInfo) -> ModePages {
        ModePages { write_cache: info.flush, swp: false }
    }

    /// Whether the initiator wants the volatile write cache used (WCE); with it off, writes
    /// must be durable when they complete.
    pub fn write_cache_enabled(&self) -> bool {
        self.write_cache
    }

    /// Mode page `code` (one of [`page::SERVED`]) with its 2-byte header, as `pc` asks.
    fn page(&self, code: u8, pc: Pc, info: &LunInfo) -> Vec<u8> {
        match code {
            page::RW_ERROR_RECOVERY => {
                // Nothing to recover or retry at this layer: every field 0, none changeable.
                let mut p = vec![0u8; 12];
                p[0] = code;
                p[1] = 0x0A;
                p
            }
            page::CACHING => {
                let mut p = vec![0u8; 20];
                p[0] = code;
                p[1] = 0x12;
                let wce = match pc {
                    Pc::Current => self.write_cache,
                    Pc::Changeable => true, // the mask: WCE is the one changeable bit
                    Pc::Default => ModePages::new(info).write_cache,
                };
                if wce {
                    p[2] |= WCE;
                }
                // RCD 0: the read cache (the page cache of a bdev module, if any) is not
                // controllable from here, and reads are never served stale.
                p
            }
            page::CONTROL => {
                let mut p = vec![0u8; 12];
                p[0] = code;
                p[1] = 0x0A;
                // SWP: changeable; while set the unit refuses writes with WRITE PROTECTED.
                if (pc == Pc::Current && self.swp) || pc == Pc::Changeable {
                    p[4] |= SWP;
                }
                if pc != Pc::Changeable {
                    // TST 000b (one task set), D_SENSE 0 (fixed format sense), GLTSD 1 (no log
                    // parameters are saved).
                    p[2] = 0x02;
                    // QUEUE ALGORITHM MODIFIER 1: commands may be reordered (queues run on
                    // several reactors); QERR 00b.
                    p[3] = 0x10;
                    // TAS 0, UA_INTLCK_CTRL 00b.
                    // BUSY TIMEOUT PERIOD FFFFh: unlimited.
                    p[8] = 0xFF;
                    p[9] = 0xFF;
                }
                p
            }
            _ => unreachable!("mode page {code:#x} is not served"),
        }
    }

    /// The MODE SENSE (6 or 10, from the opcode) response.
    ///
    /// Errors: saved values (PC 11b) → SAVING PARAMETERS NOT SUPPORTED (byte 2 bit 7); an
    /// unknown page (byte 2 bit 5) or a subpage (byte 3) → INVALID FIELD IN CDB.
    pub fn sense(&self, cdb: &[u8], info: &LunInfo) -> Result<Vec<u8>, Sense> {
        let six = cdb.first() == Some(&op::MODE_SENSE_6);
        if cdb.len() < if six { 6 } else { 10 } {
            return Err(Sense::invalid_opcode());
        }
        let dbd = cdb[1] & 0x08 != 0;
        let llbaa = !six && cdb[1] & 0x10 != 0;
        let code = cdb[2] & 0x3F;
        let subpage = cdb[3];
        let pc = match cdb[2] >> 6 {
            0 => Pc::Current,
            1 => Pc::Changeable,
            2 => Pc::Default,
            _ => {
                return Err(Sense::new(key::ILLEGAL_REQUEST, asc::SAVING_NOT_SUPPORTED)
                    .with_field(Field::Cdb { byte: 2, bit: Some(7) }))
            }
        };
        let codes: &[u8] = match code {
            page::ALL => &page::SERVED,
            page::RW_ERROR_RECOVERY => &[page::RW_ERROR_RECOVERY],
            page::CACHING => &[page::CACHING],
            page::CONTROL => &[page::CONTROL],
            _ => return Err(Sense::invalid_cdb_field(2, Some(5))),
        };
        // No page has subpages; "all subpages" (FFh) of "all pages" is simply all pages.
        if subpage != 0 && !(code == page::ALL && subpage == 0xFF) {
            return Err(Sense::invalid_cdb_field(3, None));
        }

        let header_len = if six { 4 } else { 8 };
        let mut out = vec![0u8; header_len];
        // DEVICE-SPECIFIC PARAMETER (SBC-3 6.4.1): WP, and DPOFUA as DPO and FUA are honoured.
        let dsp = (if info.readonly { 0x80 } else { 0 }) | 0x10;
        if !dbd {
            if llbaa {
                out.extend_from_slice(&info.num_blocks.to_be_bytes());
                out.extend_from_slice(&[0; 4]);
                out.extend_from_slice(&info.block_size.to_be_bytes());
            } else {
                out.extend_from_slice(&(info.num_blocks.min(0xFFFF_FFFF) as u32).to_be_bytes());
                out.push(0);
                out.extend_from_slice(&info.block_size.to_be_bytes()[1..]);
            }
        }
        let bd_len = out.len() - header_len;
        for &c in codes {
            out.extend_from_slice(&self.page(c, pc, info));
        }
        if six {
            out[0] = (out.len() - 1) as u8;
            out[2] = dsp;
            out[3] = bd_len as u8;
        } else {
            let len = (out.len() - 2) as u16;
            out[0..2].copy_from_slice(&len.to_be_bytes());
            out[3] = dsp;
            out[4] = if !dbd && llbaa { 0x01 } else { 0 }; // LONGLBA
            out[6..8].copy_from_slice(&(bd_len as u16).to_be_bytes());
        }
        Ok(out)
    }

    /// Applies a MODE SELECT (6 or 10) parameter list: `params` is the data-out buffer as
    /// received, the CDB's PARAMETER LIST LENGTH says how much of it counts.
    ///
    /// The caller compares WCE and SWP before and after to decide on a MODE PARAMETERS
    /// CHANGED unit attention for the other I_T nexuses.
    ///
    /// Errors (all ILLEGAL REQUEST): PF 0 (byte 1 bit 4) or SP 1 (byte 1 bit 0) → INVALID
    /// FIELD IN CDB; a list shorter than announced or cut inside a header, a block descriptor
    /// or a page → PARAMETER LIST LENGTH ERROR; a non-zero medium type, a bad block descriptor
    /// length, a block descriptor that changes the block size or the capacity, an unknown
    /// page, a subpage, a wrong page length or a change to a field that is not changeable →
    /// INVALID FIELD IN PARAMETER LIST pointing at it.
    pub fn select(&mut self, cdb: &[u8], params: &[u8], info: &LunInfo) -> Result<(), Sense> {
        let six = cdb.first() == Some(&op::MODE_SELECT_6);
        if cdb.len() < if six { 6 } else { 10 } {
            return Err(Sense::invalid_opcode());
        }
        if cdb[1] & 0x10 == 0 {
            // PF 0 would mean vendor-specific (SCSI-1) pages.
            return Err(Sense::invalid_cdb_field(1, Some(4)));
        }
        if cdb[1] & 0x01 != 0 {
            return Err(Sense::invalid_cdb_field(1, Some(0)));
        }
        let len = if six { cdb[4] as usize } else { be16(cdb, 7) as usize };
        if len == 0 {
            return Ok(()); // an empty list is not an error (SPC-4 6.13)
        }
        let p = params.get(..len).ok_or(Sense::param_list_length())?;

        // Mode parameter header. MODE DATA LENGTH is reserved for MODE SELECT, and so are WP
        // and DPOFUA in the device-specific parameter: ignored.
        let header_len = if six { 4 } else { 8 };
        if len < header_len {
            return Err(Sense::param_list_length());
        }
        let (medium_at, bd_len_at) = if six { (1, 3) } else { (2, 6) };
        if p[medium_at] != 0 {
            return Err(Sense::invalid_param_field(medium_at as u16, None));
        }
        let (bd_len, long) = if six { (p[3] as usize, false) } else { (be16(p, 6) as usize, p[4] & 0x01 != 0) };
        let desc_len = if long { 16 } else { 8 };
        if bd_len % desc_len != 0 {
            return Err(Sense::invalid_param_field(bd_len_at as u16, None));
        }
        if header_len + bd_len > len {
            return Err(Sense::param_list_length());
        }
        for at in (header_len..header_len + bd_len).step_by(desc_len) {
            let (blocks, current, block_len, block_len_at) = if long {
                (be64(p, at), info.num_blocks, be32(p, at + 12), at + 12)
            } else {
                (be32(p, at) as u64, info.num_blocks.min(0xFFFF_FFFF), be24(p, at + 5), at + 5)
            };
            // Neither the capacity nor the block size can be changed: 0 blocks means "keep".
            if blocks != 0 && blocks != current {
                return Err(Sense::invalid_param_field(at as u16, None));
            }
            if block_len != info.block_size {
                return Err(Sense::invalid_param_field(block_len_at as u16, None));
            }
        }

        let mut write_cache = self.write_cache;
        let mut swp = self.swp;
        let mut at = header_len + bd_len;
        while at < len {
            if len - at < 2 {
                return Err(Sense::param_list_length());
            }
            // PS (bit 7) is reserved in MODE SELECT; ignored as initiators echo MODE SENSE data.
            if p[at] & 0x40 != 0 {
                return Err(Sense::invalid_param_field(at as u16, Some(6))); // SPF: no subpages
            }
            let code = p[at] & 0x3F;
            if !page::SERVED.contains(&code) {
                return Err(Sense::invalid_param_field(at as u16, Some(5)));
            }
            let current = self.page(code, Pc::Current, info);
            let changeable = self.page(code, Pc::Changeable, info);
            let page_len = p[at + 1] as usize;
            if page_len != current[1] as usize {
                return Err(Sense::invalid_param_field(at as u16 + 1, None));
            }
            if len - at < 2 + page_len {
                return Err(Sense::param_list_length());
            }
            for i in 2..2 + page_len {
                let wrong = (p[at + i] ^ current[i]) & !changeable[i];
                if wrong != 0 {
                    let bit = 7 - wrong.leading_zeros() as u8;
                    return Err(Sense::invalid_param_field((at + i) as u16, Some(bit)));
                }
            }
            if code == page::CACHING {
                write_cache = p[at + 2] & WCE != 0;
            }
            if code == page::CONTROL {
                swp = p[at + 4] & SWP != 0;
            }
            at += 2 + page_len;
        }
        self.write_cache = write_cache;
        self.swp = swp;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::inquiry::test_info;

    fn sense6(dbd: bool, pc: u8, code: u8, sub: u8) -> [u8; 6] {
        [0x1A, if dbd { 0x08 } else { 0 }, (pc << 6) | code, sub, 0xFF, 0]
    }

    fn sense10(llbaa: bool, dbd: bool, pc: u8, code: u8, sub: u8) -> [u8; 10] {
        let b1 = (if llbaa { 0x10 } else { 0 }) | (if dbd { 0x08 } else { 0 });
        [0x5A, b1, (pc << 6) | code, sub, 0, 0, 0, 0xFF, 0xFF, 0]
    }

    fn select6(len: u8) -> [u8; 6] {
        [0x15, 0x10, 0, 0, len, 0]
    }

    fn select10(len: u16) -> [u8; 10] {
        let l = len.to_be_bytes();
        [0x55, 0x10, 0, 0, 0, 0, 0, l[0], l[1], 0]
    }

    fn check(r: Result<impl std::fmt::Debug, Sense>, code: asc::Code, field: Option<Field>) {
        let s = r.unwrap_err();
        assert_eq!(s.key, key::ILLEGAL_REQUEST);
        assert_eq!((s.asc, s.ascq), code);
        assert_eq!(s.field, field);
    }

    fn cdb_field(byte: u16, bit: Option<u8>) -> Option<Field> {
        Some(Field::Cdb { byte, bit })
    }

    fn param_field(byte: u16, bit: Option<u8>) -> Option<Field> {
        Some(Field::Param { byte, bit })
    }

    /// A MODE SELECT (6) list: header without block descriptors, then `pages`.
    fn list6(pages: &[&[u8]]) -> Vec<u8> {
        let mut v = vec![0, 0, 0, 0];
        for p in pages {
            v.extend_from_slice(p);
        }
        v
    }

    fn caching_page(pages: &ModePages, wce: bool) -> Vec<u8> {
        let mut p = pages.page(page::CACHING, Pc::Current, &test_info());
        p[2] = (p[2] & !WCE) | if wce { WCE } else { 0 };
        p
    }

    #[test]
    fn mode_sense_6_caching_with_block_descriptor() {
        let info = test_info();
        let m = ModePages::new(&info);
        let d = m.sense(&sense6(false, 0, 0x08, 0), &info).unwrap();
        assert_eq!(d.len(), 4 + 8 + 20);
        assert_eq!(d[0] as usize, d.len() - 1);
        assert_eq!(d[1], 0);
        assert_eq!(d[2], 0x10);
        assert_eq!(d[3], 8);
        assert_eq!(&d[4..8], &131072u32.to_be_bytes());
        assert_eq!(&d[8..12], &[0, 0, 0x02, 0x00]);
        assert_eq!(&d[12..15], &[0x08, 0x12, 0x04]);
    }

    #[test]
    fn mode_sense_readonly_and_dbd() {
        let mut info = test_info();
        info.readonly = true;
        info.flush = false;
        let m = ModePages::new(&info);
        let d = m.sense(&sense6(true, 0, 0x08, 0), &info).unwrap();
        assert_eq!(d.len(), 4 + 20);
        assert_eq!(d[2], 0x90);
        assert_eq!(d[3], 0);
        assert_eq!(&d[4..7], &[0x08, 0x12, 0x00]);
    }

    #[test]
    fn mode_sense_all_pages_in_order() {
        let info = test_info();
        let m = ModePages::new(&info);
        for sub in [0x00, 0xFF] {
            let d = m.sense(&sense6(true, 0, 0x3F, sub), &info).unwrap();
            assert_eq!(d.len(), 4 + 12 + 20 + 12);
            assert_eq!(d[0] as usize, d.len() - 1);
            assert_eq!(&d[4..6], &[0x01, 0x0A]);
            assert_eq!(&d[16..18], &[0x08, 0x12]);
            assert_eq!(&d[36..38], &[0x0A, 0x0A]);
            assert_eq!(&d[38..40], &[0x02, 0x10]);
            assert_eq!(&d[44..46], &[0xFF, 0xFF]);
        }
    }

    #[test]
    fn mode_sense_10_short_and_long_descriptors() {
        let mut info = test_info();
        info.num_blocks = 0x1_2345_6789;
        info.block_size = 4096;
        let m = ModePages::new(&info);
        let d = m.sense(&sense10(false, false, 0, 0x0A, 0), &info).unwrap();
        assert_eq!(d.len(), 8 + 8 + 12);
        assert_eq!(u16::from_be_bytes([d[0], d[1]]) as usize, d.len() - 2);
        assert_eq!(d[3], 0x10);
        assert_eq!(d[4], 0);
        assert_eq!(&d[6..8], &[0, 8]);
        assert_eq!(&d[8..12], &[0xFF; 4]); // saturated
        assert_eq!(&d[13..16], &[0x00, 0x10, 0x00]);
        assert_eq!(&d[16..18], &[0x0A, 0x0A]);

        let d = m.sense(&sense10(true, false, 0, 0x0A, 0), &info).unwrap();
        assert_eq!(d.len(), 8 + 16 + 12);
        assert_eq!(u16::from_be_bytes([d[0], d[1]]) as usize, d.len() - 2);
        assert_eq!(d[4], 0x01);
        assert_eq!(&d[6..8], &[0, 16]);
        assert_eq!(&d[8..16], &0x1_2345_6789u64.to_be_bytes());
        assert_eq!(&d[20..24], &4096u32.to_be_bytes());

        let d = m.sense(&sense10(true, true, 0, 0x0A, 0), &info).unwrap();
        assert_eq!(d.len(), 8 + 12);
        assert_eq!(d[4], 0);
        assert_eq!(&d[6..8], &[0, 0]);
    }

    #[test]
    fn mode_sense_changeable_and_default() {
        let info = test_info();
        let mut m = ModePages::new(&info);
        m.write_cache = false;
        let d = m.sense(&sense6(true, 1, 0x3F, 0), &info).unwrap();
        let pages = &d[4..];
        assert!(pages[2..12].iter().all(|&b| b == 0)); // error recovery
        assert_eq!(pages[14], WCE); // caching: only WCE
        assert!(pages[15..32].iter().all(|&b| b == 0));
        assert_eq!(pages[34..44], [0, 0, SWP, 0, 0, 0, 0, 0, 0, 0]); // control: only SWP
        let d = m.sense(&sense6(true, 2, 0x08, 0), &info).unwrap();
        assert_eq!(d[6], WCE); // default follows the bdev (flush)
        let d = m.sense(&sense6(true, 0, 0x08, 0), &info).unwrap();
        assert_eq!(d[6], 0);
    }

    #[test]
    fn mode_sense_errors() {
        let info = test_info();
        let m = ModePages::new(&info);
        check(m.sense(&sense6(false, 3, 0x08, 0), &info), asc::SAVING_NOT_SUPPORTED, cdb_field(2, Some(7)));
        check(m.sense(&sense10(false, false, 3, 0x3F, 0), &info), asc::SAVING_NOT_SUPPORTED, cdb_field(2, Some(7)));
        check(m.sense(&sense6(false, 0, 0x1C, 0), &info), asc::INVALID_FIELD_IN_CDB, cdb_field(2, Some(5)));
        check(m.sense(&sense6(false, 0, 0x00, 0), &info), asc::INVALID_FIELD_IN_CDB, cdb_field(2, Some(5)));
        check(m.sense(&sense6(false, 0, 0x08, 1), &info), asc::INVALID_FIELD_IN_CDB, cdb_field(3, None));
        check(m.sense(&sense6(false, 0, 0x08, 0xFF), &info), asc::INVALID_FIELD_IN_CDB, cdb_field(3, None));
        check(m.sense(&sense10(false, false, 0, 0x3F, 1), &info), asc::INVALID_FIELD_IN_CDB, cdb_field(3, None));
        assert_eq!(m.sense(&[0x5A, 0, 0x08, 0, 0, 0], &info), Err(Sense::invalid_opcode()));
    }

    #[test]
    fn mode_select_toggles_wce() {
        let info = test_info();
        let mut m = ModePages::new(&info);
        assert!(m.write_cache_enabled());
        let list = list6(&[&caching_page(&m, false)]);
        m.select(&select6(list.len() as u8), &list, &info).unwrap();
        assert!(!m.write_cache_enabled());
        let d = m.sense(&sense6(true, 0, 0x08, 0), &info).unwrap();
        assert_eq!(d[6] & WCE, 0);

        // MODE SELECT (10), with a short block descriptor and every page, as echoed from
        // MODE SENSE (10) with PS and the reserved header fields left in.
        let mut list = m.sense(&sense10(false, false, 0, 0x3F, 0), &info).unwrap();
        let caching = 8 + 8 + 12;
        list[caching] |= 0x80; // PS
        list[caching + 2] |= WCE;
        m.select(&select10(list.len() as u16), &list, &info).unwrap();
        assert!(m.write_cache_enabled());
    }

    #[test]
    fn mode_select_long_descriptor_and_trailing_data_ignored() {
        let info = test_info();
        let mut m = ModePages::new(&info);
        let mut list = vec![0, 0, 0, 0, 0x01, 0, 0, 16];
        list.extend_from_slice(&info.num_blocks.to_be_bytes());
        list.extend_from_slice(&[0, 0, 0, 0]);
        list.extend_from_slice(&info.block_size.to_be_bytes());
        list.extend_from_slice(&caching_page(&m, false));
        let n = list.len() as u16;
        list.extend_from_slice(&[0xAA; 7]); // beyond the parameter list length
        m.select(&select10(n), &list, &info).unwrap();
        assert!(!m.write_cache_enabled());
    }

    #[test]
    fn mode_select_empty_list_is_fine() {
        let info = test_info();
        let mut m = ModePages::new(&info);
        m.select(&select6(0), &[], &info).unwrap();
        m.select(&select10(0), &[], &info).unwrap();
        assert!(m.write_cache_enabled());
    }

    #[test]
    fn mode_select_cdb_errors() {
        let info = test_info();
        let mut m = ModePages::new(&info);
        let list = list6(&[&caching_page(&m, false)]);
        let mut cdb = select6(list.len() as u8);
        cdb[1] = 0x00;
        check(m.select(&cdb, &list, &info), asc::INVALID_FIELD_IN_CDB, cdb_field(1, Some(4)));
        cdb[1] = 0x11;
        check(m.select(&cdb, &list, &info), asc::INVALID_FIELD_IN_CDB, cdb_field(1, Some(0)));
        let mut cdb = select10(list.len() as u16);
        cdb[1] = 0x11;
        check(m.select(&cdb, &list, &info), asc::INVALID_FIELD_IN_CDB, cdb_field(1, Some(0)));
        assert_eq!(m.select(&[0x55, 0x10, 0, 0, 0, 0], &list, &info), Err(Sense::invalid_opcode()));
        assert!(m.write_cache_enabled());
    }

    #[test]
    fn mode_select_length_errors() {
        let info = test_info();
        let mut m = ModePages::new(&info);
        let list = list6(&[&caching_page(&m, false)]);
        // The CDB announces more than the data-out buffer holds.
        check(m.select(&select6(list.len() as u8 + 1), &list, &info), asc::PARAM_LIST_LENGTH, None);
        // Cut inside the header.
        check(m.select(&select6(3), &list, &info), asc::PARAM_LIST_LENGTH, None);
        check(m.select(&select10(7), &[0; 8], &info), asc::PARAM_LIST_LENGTH, None);
        // Cut inside a page, and inside a page header.
        check(m.select(&select6(list.len() as u8 - 1), &list, &info), asc::PARAM_LIST_LENGTH, None);
        check(m.select(&select6(5), &list, &info), asc::PARAM_LIST_LENGTH, None);
        // Block descriptor length beyond the list.
        let bd = [0, 0, 0, 8, 0, 0, 0, 0];
        check(m.select(&select6(8), &bd, &info), asc::PARAM_LIST_LENGTH, None);
        assert!(m.write_cache_enabled());
    }

    #[test]
    fn mode_select_parameter_errors() {
        let info = test_info();
        let mut m = ModePages::new(&info);
        let caching = caching_page(&m, false);

        // Medium type.
        let mut l = list6(&[&caching]);
        l[1] = 1;
        check(m.select(&select6(l.len() as u8), &l, &info), asc::INVALID_FIELD_IN_PARAM, param_field(1, None));
        // Block descriptor length not a multiple of 8.
        let l = [0, 0, 0, 4, 0, 0, 0, 0];
        check(m.select(&select6(8), &l, &info), asc::INVALID_FIELD_IN_PARAM, param_field(3, None));
        // Block descriptor with another block size, or another capacity.
        let mut l = vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x10, 0];
        check(m.select(&select6(12), &l, &info), asc::INVALID_FIELD_IN_PARAM, param_field(9, None));
        l[7] = 1;
        l[10] = 0x02;
        check(m.select(&select6(12), &l, &info), asc::INVALID_FIELD_IN_PARAM, param_field(4, None));
        // Unknown page, subpage format, wrong page length.
        let l = list6(&[&caching, &[0x1C, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]);
        check(m.select(&select6(l.len() as u8), &l, &info), asc::INVALID_FIELD_IN_PARAM, param_field(24, Some(5)));
        let l = list6(&[&[0x48, 0x00, 0x00, 0x12]]);
        check(m.select(&select6(l.len() as u8), &l, &info), asc::INVALID_FIELD_IN_PARAM, param_field(4, Some(6)));
        let mut c = caching.clone();
        c[1] = 0x0A;
        c.truncate(12);
        let l = list6(&[&c]);
        check(m.select(&select6(l.len() as u8), &l, &info), asc::INVALID_FIELD_IN_PARAM, param_field(5, None));
        // A field that cannot change: RCD in the caching page, D_SENSE in the control page,
        // the busy timeout.
        let mut c = caching.clone();
        c[2] |= 0x01;
        let l = list6(&[&c]);
        check(m.select(&select6(l.len() as u8), &l, &info), asc::INVALID_FIELD_IN_PARAM, param_field(6, Some(0)));
        let mut ctl = m.page(page::CONTROL, Pc::Current, &info);
        ctl[2] |= 0x04;
        let l = list6(&[&caching, &ctl]);
        check(m.select(&select6(l.len() as u8), &l, &info), asc::INVALID_FIELD_IN_PARAM, param_field(26, Some(2)));
        let mut ctl = m.page(page::CONTROL, Pc::Current, &info);
        ctl[8] = 0x7F;
        let l = list6(&[&ctl]);
        check(m.select(&select6(l.len() as u8), &l, &info), asc::INVALID_FIELD_IN_PARAM, param_field(12, Some(7)));
        // Nothing applied by a refused list, even though its caching page came first.
        assert!(m.write_cache_enabled());
    }
}
