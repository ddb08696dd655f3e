//! INQUIRY (SPC-4 6.6): standard data and the VPD pages.
//!
//! Everything an initiator learns about a unit's identity comes from here, so the identifiers
//! are derived only from the bdev's uuid: they survive restarts and moves between targets,
//! which is what multipath and udev's `/dev/disk/by-id` links rely on.

use super::sense::Sense;
use super::LunInfo;

/// T10 VENDOR IDENTIFICATION (standard data and the T10 vendor ID designator).
pub const VENDOR_ID: &[u8; 8] = b"FERRY   ";

/// PRODUCT REVISION LEVEL.
pub const PRODUCT_REVISION: &[u8; 4] = b"0001";

/// The IEEE COMPANY_ID in the NAA designator. Ferry has no company ID registered with the IEEE,
/// so this is a fixed placeholder; the designator's uniqueness comes from the 100 bits derived
/// from the uuid (see [`naa_designator`]).
pub const NAA_COMPANY_ID: u32 = 0x00_00_00;

/// Length of the standard INQUIRY data built here.
pub const STANDARD_LEN: usize = 96;

/// VPD page codes served (SPC-4 7.8, SBC-3 6.5).
pub mod vpd {
    /// Supported VPD pages.
    pub const SUPPORTED_PAGES: u8 = 0x00;
    /// Unit serial number.
    pub const UNIT_SERIAL_NUMBER: u8 = 0x80;
    /// Device identification.
    pub const DEVICE_IDENTIFICATION: u8 = 0x83;
    /// Block limits (SBC-3).
    pub const BLOCK_LIMITS: u8 = 0xB0;
    /// Block device characteristics (SBC-3).
    pub const BLOCK_DEVICE_CHARACTERISTICS: u8 = 0xB1;
    /// Logical block provisioning (SBC-3).
    pub const LOGICAL_BLOCK_PROVISIONING: u8 = 0xB2;

    /// Every page served, in ascending order as the supported pages page lists them.
    pub const ALL: [u8; 6] = [
        SUPPORTED_PAGES,
        UNIT_SERIAL_NUMBER,
        DEVICE_IDENTIFICATION,
        BLOCK_LIMITS,
        BLOCK_DEVICE_CHARACTERISTICS,
        LOGICAL_BLOCK_PROVISIONING,
    ];
}

/// Byte 0 of every response: peripheral qualifier 000b (connected), device type 00h (direct
/// access block device).
const PERIPHERAL: u8 = 0x00;

/// The full INQUIRY response for `cdb` (the caller truncates it to the allocation length).
///
/// Errors: CMDDT set (byte 1 bit 1), a page code with EVPD clear (byte 2), an unknown VPD page
/// (byte 2), all ILLEGAL REQUEST / INVALID FIELD IN CDB.
pub fn inquiry(cdb: &[u8], info: &LunInfo) -> Result<Vec<u8>, Sense> {
    if cdb.len() < 6 {
        return Err(Sense::invalid_opcode());
    }
    // CMDDT is obsolete since SPC-3; a device server that does not support it rejects it.
    if cdb[1] & 0x02 != 0 {
        return Err(Sense::invalid_cdb_field(1, Some(1)));
    }
    let evpd = cdb[1] & 0x01 != 0;
    let page = cdb[2];
    if !evpd {
        if page != 0 {
            return Err(Sense::invalid_cdb_field(2, None));
        }
        return Ok(standard(info));
    }
    let body = match page {
        vpd::SUPPORTED_PAGES => vpd::ALL.to_vec(),
        vpd::UNIT_SERIAL_NUMBER => unit_serial(info).into_bytes(),
        vpd::DEVICE_IDENTIFICATION => device_identification(info),
        vpd::BLOCK_LIMITS => block_limits(info),
        vpd::BLOCK_DEVICE_CHARACTERISTICS => block_device_characteristics(),
        vpd::LOGICAL_BLOCK_PROVISIONING => logical_block_provisioning(info),
        _ => return Err(Sense::invalid_cdb_field(2, None)),
    };
    let mut out = Vec::with_capacity(4 + body.len());
    out.push(PERIPHERAL);
    out.push(page);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Standard INQUIRY data (SPC-4 6.6.2).
fn standard(info: &LunInfo) -> Vec<u8> {
    let mut d = vec![0u8; STANDARD_LEN];
    d[0] = PERIPHERAL;
    d[1] = if info.removable { 0x80 } else { 0x00 }; // RMB
    d[2] = 0x06; // VERSION: SPC-4
    d[3] = 0x10 | 0x02; // HISUP (hierarchical LUNs), RESPONSE DATA FORMAT 2
    d[4] = (STANDARD_LEN - 5) as u8; // ADDITIONAL LENGTH: the bytes after byte 4
    d[5] = 0x00; // no SCCS, ACC, TPGS (no ALUA), 3PC, PROTECT
    d[6] = 0x00;
    d[7] = 0x02; // CMDQUE: full task management model
    d[8..16].copy_from_slice(VENDOR_ID);
    d[16..32].copy_from_slice(&padded::<16>(info.product.as_bytes()));
    d[32..36].copy_from_slice(PRODUCT_REVISION);
    // Version descriptors (SPC-4 table 146): SAM-5, SPC-4, SBC-3, each "no version claimed".
    for (i, v) in [0x00A0u16, 0x0460, 0x04C0].iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d
}

/// `s` truncated or space padded to `N` bytes, with anything that is not printable ASCII
/// replaced by a space (SPC-4 4.4.1: these fields hold printable ASCII only).
fn padded<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut out = [b' '; N];
    for (o, &c) in out.iter_mut().zip(s) {
        *o = if (0x20..0x7F).contains(&c) { c } else { b' ' };
    }
    out
}

/// The PRODUCT SERIAL NUMBER (unit serial number page): the uuid's 32 hex digits, stable for
/// as long as the bdev keeps its uuid.
pub fn unit_serial(info: &LunInfo) -> String {
    info.uuid.simple().to_string()
}

/// The 16-byte NAA IEEE Registered Extended designator (NAA 6h, SPC-4 7.8.6.6.5) for the
/// unit: NAA, [`NAA_COMPANY_ID`], then 100 bits derived from the uuid.
///
/// The uuid's version and variant bits (fixed in generated uuids) are dropped, leaving 122
/// bits; the 22 that do not fit are folded (XOR) into the others so that every uuid bit still
/// counts, whatever the uuid's version.
pub fn naa_designator(info: &LunInfo) -> [u8; 16] {
    let v = info.uuid.as_u128();
    let low = v & ((1u128 << 62) - 1); // below the variant bits (byte 8 bits 7:6)
    let mid = (v >> 64) & 0xFFF; // between the variant and the version (byte 6 bits 7:4)
    let high = v >> 80; // above the version
    let bits = (high << 74) | (mid << 62) | low; // 122 bits
    let mask100 = (1u128 << 100) - 1;
    let id = (bits & mask100) ^ (bits >> 100);
    ((6u128 << 124) | ((NAA_COMPANY_ID as u128 & 0xFF_FFFF) << 100) | id).to_be_bytes()
}

/// One designation descriptor (SPC-4 7.8.6.1): code set, association and designator type
/// as given, PIV 0 (no protocol identifier).
fn designator(out: &mut Vec<u8>, code_set: u8, association: u8, kind: u8, value: &[u8]) {
    out.push(code_set & 0x0F);
    out.push(((association & 0x3) << 4) | (kind & 0x0F));
    out.push(0);
    out.push(value.len() as u8);
    out.extend_from_slice(value);
}

/// Device identification VPD page body (SPC-4 7.8.6).
///
/// No SCSI name string designator: its value must be an `iqn.`, `eui.` or `naa.` name, and a
/// vhost target's name is none of these; the NAA designator already names the unit.
fn device_identification(info: &LunInfo) -> Vec<u8> {
    const BINARY: u8 = 0x1;
    const ASCII: u8 = 0x2;
    const LOGICAL_UNIT: u8 = 0;
    const TARGET_PORT: u8 = 1;
    const T10_VENDOR_ID: u8 = 0x1;
    const NAA: u8 = 0x3;
    const RELATIVE_TARGET_PORT: u8 = 0x4;

    let mut out = Vec::with_capacity(96);
    designator(&mut out, BINARY, LOGICAL_UNIT, NAA, &naa_designator(info));
    let mut t10 = VENDOR_ID.to_vec();
    t10.extend_from_slice(info.uuid.hyphenated().to_string().as_bytes());
    designator(&mut out, ASCII, LOGICAL_UNIT, T10_VENDOR_ID, &t10);
    let mut port = [0u8; 4];
    port[2..4].copy_from_slice(&info.relative_port.to_be_bytes());
    designator(&mut out, BINARY, TARGET_PORT, RELATIVE_TARGET_PORT, &port);
    out
}

/// Block limits VPD page body (SBC-3 6.5.3); page length 3Ch.
fn block_limits(info: &LunInfo) -> Vec<u8> {
    let mut b = vec![0u8; 0x3C];
    // Offsets below are page offsets minus the 4-byte header.
    // WSNZ 0: WRITE SAME with NUMBER OF LOGICAL BLOCKS 0 writes to the end of the medium.
    b[1] = super::blockcmd::MAX_COMPARE_AND_WRITE_BLOCKS as u8; // MAXIMUM COMPARE AND WRITE LENGTH
                                                                // OPTIMAL TRANSFER LENGTH GRANULARITY: one physical block.
    b[2..4].copy_from_slice(&(1u16 << info.lbppbe).to_be_bytes());
    b[4..8].copy_from_slice(&info.max_transfer_blocks.to_be_bytes()); // MAXIMUM TRANSFER LENGTH
    b[8..12].copy_from_slice(&info.max_transfer_blocks.to_be_bytes()); // OPTIMAL TRANSFER LENGTH
    if info.unmap {
        b[16..20].copy_from_slice(&info.max_unmap_blocks.to_be_bytes()); // MAXIMUM UNMAP LBA COUNT
        b[20..24].copy_from_slice(&info.max_unmap_descriptors.to_be_bytes()); // ... BLOCK DESCRIPTOR COUNT
                                                                              // OPTIMAL UNMAP GRANULARITY: one physical block (UNMAP ALIGNMENT 0, UGAVALID 0).
        b[24..28].copy_from_slice(&(1u32 << info.lbppbe).to_be_bytes());
    }
    b[32..40].copy_from_slice(&max_write_same_blocks(info).to_be_bytes()); // MAXIMUM WRITE SAME LENGTH
    if !info.readonly {
        // MAXIMUM ATOMIC TRANSFER LENGTH; ATOMIC ALIGNMENT and ATOMIC TRANSFER LENGTH
        // GRANULARITY 0 (none); no atomic boundaries (both boundary fields 0).
        let atomic = super::blockcmd::max_atomic_blocks(info.block_size as u64).min(info.max_transfer_blocks as u64);
        b[40..44].copy_from_slice(&(atomic as u32).to_be_bytes());
    }
    b
}

/// MAXIMUM WRITE SAME LENGTH, in blocks: what WRITE SAME accepts (also when its NUMBER OF
/// LOGICAL BLOCKS is 0, "to the end of the medium"). Every WRITE SAME runs in chunks, so this
/// only keeps one command from occupying the unit for long: as much as one UNMAP may take
/// when the unit can unmap, one transfer otherwise.
pub(crate) fn max_write_same_blocks(info: &LunInfo) -> u64 {
    if info.unmap {
        info.max_unmap_blocks as u64
    } else {
        info.max_transfer_blocks as u64
    }
}

/// Block device characteristics VPD page body (SBC-3 6.5.2); page length 3Ch.
fn block_device_characteristics() -> Vec<u8> {
    let mut b = vec![0u8; 0x3C];
    b[0..2].copy_from_slice(&1u16.to_be_bytes()); // MEDIUM ROTATION RATE 1: non-rotating
                                                  // PRODUCT TYPE 0 and NOMINAL FORM FACTOR 0: not reported.
                                                  // WABEREQ and WACEREQ 01b: after a SANITIZE BLOCK ERASE or CRYPTO ERASE, reads succeed
                                                  // (and return zeroes: the blocks are deallocated, LBPRZ).
    b[3] = 0x50;
    b
}

/// Logical block provisioning VPD page body (SBC-3 6.5.4); page length 4.
fn logical_block_provisioning(info: &LunInfo) -> Vec<u8> {
    let mut b = vec![0u8; 4];
    b[0] = 0; // THRESHOLD EXPONENT: no thresholds
              // LBPRZ: an unmapped (or never written) block reads back as zeroes on every Ferry bdev.
    b[1] = 0x04;
    if info.unmap {
        b[1] |= 0x80 | 0x40 | 0x20; // LBPU, LBPWS, LBPWS10
        b[2] = 0x02; // PROVISIONING TYPE: thin
    }
    b
}

/// A unit description for the tests of the SCSI response builders.
#[cfg(test)]
pub(crate) fn test_info() -> LunInfo {
    LunInfo {
        lun_id: 0,
        target_name: "vhost.0.Target0".into(),
        relative_port: 1,
        bdev_name: "Malloc0".into(),
        product: "Malloc disk".into(),
        uuid: uuid::Uuid::parse_str("0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0ff").unwrap(),
        block_size: 512,
        lbppbe: 0,
        num_blocks: 131072,
        unmap: true,
        write_zeroes: true,
        flush: true,
        readonly: false,
        removable: false,
        max_transfer_blocks: 2048,
        max_unmap_blocks: 65536,
        max_unmap_descriptors: 16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::sense::{asc, key, Field};

    fn cdb(evpd: bool, page: u8) -> [u8; 6] {
        [0x12, evpd as u8, page, 0xFF, 0xFF, 0]
    }

    fn vpd_page(page: u8, info: &LunInfo) -> Vec<u8> {
        let d = inquiry(&cdb(true, page), info).unwrap();
        assert_eq!(d[0], 0);
        assert_eq!(d[1], page);
        assert_eq!(u16::from_be_bytes([d[2], d[3]]) as usize, d.len() - 4, "page length of {page:#x}");
        d
    }

    fn assert_invalid_cdb(r: Result<Vec<u8>, Sense>, byte: u16, bit: Option<u8>) {
        let s = r.unwrap_err();
        assert_eq!(s.key, key::ILLEGAL_REQUEST);
        assert_eq!((s.asc, s.ascq), asc::INVALID_FIELD_IN_CDB);
        assert_eq!(s.field, Some(Field::Cdb { byte, bit }));
    }

    #[test]
    fn standard_data() {
        let d = inquiry(&cdb(false, 0), &test_info()).unwrap();
        assert_eq!(d.len(), 96);
        assert_eq!(d[0], 0x00);
        assert_eq!(d[1], 0x00);
        assert_eq!(d[2], 0x06);
        assert_eq!(d[3], 0x12);
        assert_eq!(d[4] as usize, d.len() - 5);
        assert_eq!(d[7], 0x02);
        assert_eq!(&d[8..16], b"FERRY   ");
        assert_eq!(&d[16..32], b"Malloc disk     ");
        assert_eq!(&d[32..36], b"0001");
        assert_eq!(&d[58..64], &[0x00, 0xA0, 0x04, 0x60, 0x04, 0xC0]);
        assert!(d[64..].iter().all(|&b| b == 0));
    }

    #[test]
    fn product_is_truncated_and_sanitised() {
        let mut info = test_info();
        info.product = "A very long product name\u{e9}".into();
        let d = inquiry(&cdb(false, 0), &info).unwrap();
        assert_eq!(&d[16..32], b"A very long prod");
        info.product = "x\ty".into();
        let d = inquiry(&cdb(false, 0), &info).unwrap();
        assert_eq!(&d[16..32], b"x y             ");
    }

    #[test]
    fn supported_pages() {
        let d = vpd_page(0x00, &test_info());
        assert_eq!(&d[4..], &[0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]);
    }

    #[test]
    fn every_listed_page_is_served() {
        for p in vpd::ALL {
            vpd_page(p, &test_info());
        }
    }

    #[test]
    fn unit_serial_is_the_uuid_hex() {
        let d = vpd_page(0x80, &test_info());
        assert_eq!(&d[4..], b"0f1e2d3c4b5a49788695a4b3c2d1e0ff");
    }

    /// The designators of a device identification page: (byte 0, byte 1, value).
    fn designators(d: &[u8]) -> Vec<(u8, u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 4;
        while at < d.len() {
            let len = d[at + 3] as usize;
            out.push((d[at], d[at + 1], d[at + 4..at + 4 + len].to_vec()));
            at += 4 + len;
        }
        assert_eq!(at, d.len());
        out
    }

    #[test]
    fn device_identification() {
        let info = test_info();
        let d = vpd_page(0x83, &info);
        let ds = designators(&d);
        assert_eq!(ds.len(), 3);
        // NAA 6, binary, logical unit.
        assert_eq!((ds[0].0, ds[0].1), (0x01, 0x03));
        assert_eq!(ds[0].2.len(), 16);
        assert_eq!(ds[0].2[0] >> 4, 6);
        assert_eq!(ds[0].2, naa_designator(&info).to_vec());
        // T10 vendor ID, ASCII, logical unit.
        assert_eq!((ds[1].0, ds[1].1), (0x02, 0x01));
        assert_eq!(ds[1].2, b"FERRY   0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0ff".to_vec());
        // Relative target port, binary, target port.
        assert_eq!((ds[2].0, ds[2].1), (0x01, 0x14));
        assert_eq!(ds[2].2, vec![0, 0, 0, 1]);
    }

    #[test]
    fn naa_is_stable_and_depends_on_every_variable_uuid_bit() {
        let info = test_info();
        let naa = naa_designator(&info);
        assert_eq!(naa, naa_designator(&info.clone()));
        assert_eq!(naa[0] >> 4, 6);
        let fixed: u128 = (0xF << 76) | (0x3 << 62); // version and variant bits
        for bit in 0..128 {
            if fixed & (1 << bit) != 0 {
                continue;
            }
            let mut other = info.clone();
            other.uuid = uuid::Uuid::from_u128(info.uuid.as_u128() ^ (1 << bit));
            assert_ne!(naa_designator(&other), naa, "uuid bit {bit}");
        }
    }

    #[test]
    fn relative_port_is_reported() {
        let mut info = test_info();
        info.relative_port = 0x1234;
        let d = vpd_page(0x83, &info);
        assert_eq!(designators(&d)[2].2, vec![0, 0, 0x12, 0x34]);
    }

    #[test]
    fn block_limits_with_unmap() {
        let d = vpd_page(0xB0, &test_info());
        assert_eq!(d.len(), 64);
        assert_eq!(&d[2..4], &[0x00, 0x3C]);
        assert_eq!(d[4], 0x00, "WSNZ 0");
        assert_eq!(d[5], 1);
        assert_eq!(&d[6..8], &1u16.to_be_bytes());
        assert_eq!(&d[8..12], &2048u32.to_be_bytes());
        assert_eq!(&d[12..16], &2048u32.to_be_bytes());
        assert_eq!(&d[20..24], &65536u32.to_be_bytes());
        assert_eq!(&d[24..28], &16u32.to_be_bytes());
        assert_eq!(&d[28..32], &1u32.to_be_bytes());
        assert_eq!(&d[36..44], &65536u64.to_be_bytes());
    }

    #[test]
    fn block_limits_without_unmap() {
        let mut info = test_info();
        info.unmap = false;
        let d = vpd_page(0xB0, &info);
        assert_eq!(&d[20..32], &[0; 12]);
        assert_eq!(&d[36..44], &2048u64.to_be_bytes());
    }

    #[test]
    fn block_device_characteristics_non_rotating() {
        let d = vpd_page(0xB1, &test_info());
        assert_eq!(d.len(), 64);
        assert_eq!(&d[4..6], &[0x00, 0x01]);
        assert_eq!(d[7] & 0x0F, 0);
        assert_eq!(d[7] >> 4, 0b0101, "WABEREQ and WACEREQ 01b: reads after an erase succeed");
    }

    #[test]
    fn logical_block_provisioning() {
        let d = vpd_page(0xB2, &test_info());
        assert_eq!(d.len(), 8);
        assert_eq!(d[4], 0);
        assert_eq!(d[5], 0x80 | 0x40 | 0x20 | 0x04);
        assert_eq!(d[6] & 0x07, 2);
        let mut info = test_info();
        info.unmap = false;
        let d = vpd_page(0xB2, &info);
        assert_eq!(d[5], 0x04);
        assert_eq!(d[6] & 0x07, 0);
    }

    #[test]
    fn errors() {
        let info = test_info();
        assert_invalid_cdb(inquiry(&cdb(true, 0x81), &info), 2, None);
        assert_invalid_cdb(inquiry(&cdb(true, 0xB3), &info), 2, None);
        assert_invalid_cdb(inquiry(&cdb(false, 0x80), &info), 2, None);
        assert_invalid_cdb(inquiry(&[0x12, 0x02, 0, 0, 0xFF, 0], &info), 1, Some(1));
        assert_invalid_cdb(inquiry(&[0x12, 0x03, 0x00, 0, 0xFF, 0], &info), 1, Some(1));
        assert_eq!(inquiry(&[0x12, 0, 0], &info), Err(Sense::invalid_opcode()));
    }
}
