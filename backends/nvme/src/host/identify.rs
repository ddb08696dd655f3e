//! The parts of Identify data the host uses (NVMe Base 2.0 Figures 275 and 280), each
//! bounds-checked: the data comes from the target.

use crate::spec::{le16, le32, le64, nul_terminated};

/// Size of every Identify data structure.
pub const LEN: usize = 4096;

/// Identify Controller, the fields the host needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CtrlrData {
    /// PCI vendor id.
    pub vid: u16,
    /// Serial number.
    pub serial: String,
    /// Model number.
    pub model: String,
    /// Firmware revision.
    pub firmware: String,
    /// Maximum data transfer size (power of two of CAP.MPSMIN pages; 0 none).
    pub mdts: u8,
    /// Controller id.
    pub cntlid: u16,
    /// Version.
    pub ver: u32,
    /// Optional admin command support (bit 8: Doorbell Buffer Config).
    pub oacs: u16,
    /// Keep alive support granularity (100 ms units; 0 unsupported).
    pub kas: u16,
    /// Maximum outstanding commands (fabrics).
    pub maxcmd: u16,
    /// Number of namespaces.
    pub nn: u32,
    /// Optional NVM command support.
    pub oncs: u16,
    /// Volatile write cache present.
    pub vwc: bool,
    /// SGL support.
    pub sgls: u32,
    /// I/O queue command capsule supported size (16-byte units).
    pub ioccsz: u32,
    /// I/O queue response capsule supported size.
    pub iorcsz: u32,
    /// In-capsule data offset (16-byte units).
    pub icdoff: u16,
    /// Subsystem NQN.
    pub subnqn: String,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim_end_matches([' ', '\0']).to_string()
}

impl CtrlrData {
    /// Decodes 4096 bytes (shorter data is refused by the caller).
    pub fn parse(d: &[u8; LEN]) -> CtrlrData {
        CtrlrData {
            vid: le16(d, 0),
            serial: text(&d[4..24]),
            model: text(&d[24..64]),
            firmware: text(&d[64..72]),
            mdts: d[77],
            cntlid: le16(d, 78),
            ver: le32(d, 80),
            oacs: le16(d, 256),
            kas: le16(d, 320),
            maxcmd: le16(d, 514),
            nn: le32(d, 516),
            oncs: le16(d, 520),
            vwc: d[525] & 1 != 0,
            sgls: le32(d, 536),
            subnqn: nul_terminated(&d[768..1024]).unwrap_or_default().to_string(),
            ioccsz: le32(d, 1792),
            iorcsz: le32(d, 1796),
            icdoff: le16(d, 1798),
        }
    }

    /// Whether Write Zeroes is supported (ONCS bit 3).
    pub fn write_zeroes(&self) -> bool {
        self.oncs & (1 << 3) != 0
    }

    /// Whether Dataset Management is supported (ONCS bit 2).
    pub fn dsm(&self) -> bool {
        self.oncs & (1 << 2) != 0
    }
}

/// Identify Namespace, the fields the host needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NsData {
    /// Size in logical blocks.
    pub nsze: u64,
    /// Logical block size in bytes (of the format in use).
    pub block_size: u32,
    /// Metadata bytes per block of the format in use (Ferry supports none).
    pub metadata: u16,
    /// Namespace globally unique identifier.
    pub nguid: [u8; 16],
    /// IEEE extended unique identifier.
    pub eui64: [u8; 8],
}

impl NsData {
    /// Decodes 4096 bytes; None when the format in use is out of range or its block size is
    /// not 512 B to 64 KiB.
    pub fn parse(d: &[u8; LEN]) -> Option<NsData> {
        let nlbaf = d[25] as usize;
        let flbas = (d[26] & 0xf) as usize;
        if flbas > nlbaf || flbas > 15 {
            return None;
        }
        let lbaf = 128 + 4 * flbas;
        let lbads = d[lbaf + 2];
        if !(9..=16).contains(&lbads) {
            return None;
        }
        let mut nguid = [0u8; 16];
        nguid.copy_from_slice(&d[104..120]);
        let mut eui64 = [0u8; 8];
        eui64.copy_from_slice(&d[120..128]);
        Some(NsData { nsze: le64(d, 0), block_size: 1 << lbads, metadata: le16(d, lbaf), nguid, eui64 })
    }
}

/// The active namespace list (CNS 02h): the non-zero ids, in order, as far as they increase.
pub fn active_ns_list(d: &[u8; LEN]) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    for i in 0..LEN / 4 {
        let id = le32(d, i * 4);
        // The list is increasing and ends at the first 0; anything else is the target's error.
        if id == 0 || id == u32::MAX || out.last().is_some_and(|&l| id <= l) {
            break;
        }
        out.push(id);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::put32;

    #[test]
    fn namespace_formats_out_of_range_are_refused() {
        let mut d = [0u8; LEN];
        d[0] = 100;
        d[130] = 12;
        assert_eq!(NsData::parse(&d).unwrap().block_size, 4096);
        d[26] = 3;
        assert!(NsData::parse(&d).is_none(), "FLBAS beyond NLBAF");
        d[26] = 0;
        d[130] = 40;
        assert!(NsData::parse(&d).is_none(), "absurd block size");
    }

    #[test]
    fn the_active_list_stops_at_zero_and_at_disorder() {
        let mut d = [0u8; LEN];
        for (i, v) in [1, 2, 5, 3, 9].iter().enumerate() {
            put32(&mut d, i * 4, *v);
        }
        assert_eq!(active_ns_list(&d), [1, 2, 5]);
    }
}
