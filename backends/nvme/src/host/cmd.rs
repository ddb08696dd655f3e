//! The commands a host sends, built from their fields (CIDs are filled in by the queue pair).

use crate::spec::{admin, fabrics, io, put16, put32, put64, put_nul_padded, Command};

/// CC: enable, NVM command set, 4 KiB pages, round robin, 64-byte SQEs, 16-byte CQEs.
pub const CC_ENABLE: u32 = 1 | (6 << 16) | (4 << 20);
/// CC.SHN = normal shutdown, with the queue entry sizes kept.
pub const CC_SHUTDOWN: u32 = (1 << 14) | (6 << 16) | (4 << 20) | 1;

/// A fabrics Connect command for queue `qid` with `sqsize` entries (sent 0's based) and its
/// 1024 bytes of data.
pub fn connect(
    qid: u16,
    sqsize: u16,
    kato_ms: u32,
    cntlid: u16,
    hostid: &[u8; 16],
    subnqn: &str,
    hostnqn: &str,
) -> (Command, Vec<u8>) {
    let mut c = Command::new(admin::FABRICS, 0);
    c.0[4] = fabrics::CONNECT;
    put16(&mut c.0, fabrics::CONNECT_RECFMT, 0);
    put16(&mut c.0, fabrics::CONNECT_QID, qid);
    put16(&mut c.0, fabrics::CONNECT_SQSIZE, sqsize.saturating_sub(1));
    // Ferry's queue pairs bound what is in flight by their own slots and never read SQHD, so
    // SQ flow control is turned off: a target may then answer a read with one PDU, not two.
    c.0[fabrics::CONNECT_CATTR] = fabrics::CATTR_SQ_FLOW_CONTROL_DISABLED;
    put32(&mut c.0, fabrics::CONNECT_KATO, kato_ms);
    let mut d = vec![0u8; fabrics::CONNECT_DATA_LEN];
    d[fabrics::CONNECT_DATA_HOSTID..fabrics::CONNECT_DATA_HOSTID + 16].copy_from_slice(hostid);
    put16(&mut d, fabrics::CONNECT_DATA_CNTLID, cntlid);
    put_nul_padded(&mut d[fabrics::CONNECT_DATA_SUBNQN..fabrics::CONNECT_DATA_SUBNQN + 256], subnqn);
    put_nul_padded(&mut d[fabrics::CONNECT_DATA_HOSTNQN..fabrics::CONNECT_DATA_HOSTNQN + 256], hostnqn);
    (c, d)
}

/// Property Get of `offset` (`eight`: an 8-byte property such as CAP).
pub fn property_get(offset: u32, eight: bool) -> Command {
    let mut c = Command::new(admin::FABRICS, 0);
    c.0[4] = fabrics::PROPERTY_GET;
    c.0[fabrics::PROPERTY_ATTRIB] = eight as u8;
    put32(&mut c.0, fabrics::PROPERTY_OFFSET, offset);
    c
}

/// Property Set of the 4-byte property at `offset`.
pub fn property_set(offset: u32, value: u32) -> Command {
    let mut c = Command::new(admin::FABRICS, 0);
    c.0[4] = fabrics::PROPERTY_SET;
    put32(&mut c.0, fabrics::PROPERTY_OFFSET, offset);
    put64(&mut c.0, fabrics::PROPERTY_VALUE, value as u64);
    c
}

/// Identify with `cns` for `nsid` (4096 bytes of data).
pub fn identify(cns: u8, nsid: u32) -> Command {
    let mut c = Command::new(admin::IDENTIFY, 0);
    c.set_nsid(nsid);
    c.set_cdw10(cns as u32);
    c
}

/// Set Features Number of Queues asking for `n` submission and completion queues.
pub fn set_num_queues(n: u16) -> Command {
    let mut c = Command::new(admin::SET_FEATURES, 0);
    c.set_cdw10(0x07);
    let v = n.saturating_sub(1) as u32;
    c.set_cdw11(v | (v << 16));
    c
}

/// Keep Alive.
pub fn keep_alive() -> Command {
    Command::new(admin::KEEP_ALIVE, 0)
}

/// Read or Write of `nlb` blocks (1..=65536) at `slba`.
pub fn rw(write: bool, nsid: u32, slba: u64, nlb: u32) -> Command {
    let mut c = Command::new(if write { io::WRITE } else { io::READ }, 0);
    c.set_nsid(nsid);
    c.set_slba(slba);
    c.set_cdw12(nlb - 1);
    c
}

/// Write Zeroes of `nlb` blocks (1..=65536) at `slba`.
pub fn write_zeroes(nsid: u32, slba: u64, nlb: u32) -> Command {
    let mut c = Command::new(io::WRITE_ZEROES, 0);
    c.set_nsid(nsid);
    c.set_slba(slba);
    c.set_cdw12(nlb - 1);
    c
}

/// Flush.
pub fn flush(nsid: u32) -> Command {
    let mut c = Command::new(io::FLUSH, 0);
    c.set_nsid(nsid);
    c
}

/// Dataset Management (deallocate) of `ranges` (slba, nlb), at most 256: the command and its
/// range list.
pub fn deallocate(nsid: u32, ranges: &[(u64, u32)]) -> (Command, Vec<u8>) {
    let mut c = Command::new(io::DATASET_MANAGEMENT, 0);
    c.set_nsid(nsid);
    c.set_cdw10(ranges.len().saturating_sub(1) as u32);
    c.set_cdw11(1 << 2);
    let mut d = vec![0u8; ranges.len() * 16];
    for (i, &(slba, nlb)) in ranges.iter().enumerate() {
        put32(&mut d, i * 16 + 4, nlb);
        put64(&mut d, i * 16 + 8, slba);
    }
    (c, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{le16, le32, le64, nul_terminated};

    #[test]
    fn connect_carries_its_fields_where_the_target_reads_them() {
        let (c, d) = connect(3, 128, 10_000, 7, &[9; 16], "nqn.sub", "nqn.host");
        assert_eq!((c.opcode(), c.fctype()), (0x7f, 0x01));
        assert_eq!(le16(&c.0, 42), 3);
        assert_eq!(le16(&c.0, 44), 127, "0's based");
        assert_eq!(le32(&c.0, 48), 10_000);
        assert_eq!(le16(&d, 16), 7);
        assert_eq!(nul_terminated(&d[256..512]), Some("nqn.sub"));
        assert_eq!(nul_terminated(&d[512..768]), Some("nqn.host"));
        let (c, d) = deallocate(1, &[(10, 5), (100, 1)]);
        assert_eq!((c.cdw10(), c.cdw11()), (1, 4));
        assert_eq!((le32(&d, 4), le64(&d, 8), le32(&d, 20), le64(&d, 24)), (5, 10, 1, 100));
        assert_eq!(property_get(0, true).0[40], 1);
    }
}
