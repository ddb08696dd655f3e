//! Get Log Page (NVMe Base 2.0 §5.16): error information, SMART / health, firmware slot,
//! changed namespace list (cleared when read), commands supported and effects, ANA (with
//! ANA reporting), and the discovery log (0x70) on a discovery controller.
//!
//! Each page is built whole, then the host's window of it (LPOL/LPOU offset, NUMDL/NUMDU
//! length) is copied out, zero-padded past the page's end: a host that reads a header and
//! then the entries at an offset sees one consistent layout. A window that is not dword
//! aligned, starts past the page, or is longer than the data buffer or the transfer limit
//! is Invalid Field.

use super::controller::{Controller, CHANGED_NS_MAX, ELPE};
use super::features::temperature_warning;
use super::identify::{FIRMWARE, TEMPERATURE};
use super::io;
use super::queue::QueuePair;
use super::request::NvmeRequest;
use super::subsystem::{self, ListenAddress, Subsystem, SubsystemKind};
use ferry_nvme::spec::{admin, csc, io as iop, put16, put32, put64, put_ascii_padded, put_nul_padded, sc, Status};
use std::sync::Arc;

/// Log page identifiers.
pub mod lid {
    /// Error Information.
    pub const ERROR: u8 = 0x01;
    /// SMART / Health Information.
    pub const SMART: u8 = 0x02;
    /// Firmware Slot Information.
    pub const FIRMWARE_SLOT: u8 = 0x03;
    /// Changed Namespace List.
    pub const CHANGED_NS: u8 = 0x04;
    /// Commands Supported and Effects.
    pub const COMMAND_EFFECTS: u8 = 0x05;
    /// Asymmetric Namespace Access.
    pub const ANA: u8 = 0x0c;
    /// Discovery.
    pub const DISCOVERY: u8 = 0x70;
}

/// Discovery log: header and entry size.
pub const DISCOVERY_ENTRY_LEN: usize = 1024;

fn invalid(req: &mut NvmeRequest) {
    req.set_status(Status::generic(sc::INVALID_FIELD).dnr());
}

/// Get Log Page.
pub fn execute(qp: &QueuePair, req: &mut NvmeRequest) {
    let ctrlr = qp.controller();
    let cdw10 = req.cmd.cdw10();
    let lid_ = (cdw10 & 0xff) as u8;
    let lsp = ((cdw10 >> 8) & 0x7f) as u8;
    let rae = cdw10 & (1 << 15) != 0;
    let numd = ((((req.cmd.cdw11() & 0xffff) as u64) << 16) | (cdw10 >> 16) as u64) + 1;
    let len = numd * 4;
    let offset = ((req.cmd.cdw13() as u64) << 32) | req.cmd.cdw12() as u64;
    // Admin data moves within the transfer limit too (MDTS), whatever buffer was given.
    let max = (ctrlr.limits().max_io_size as u64).max(8192);
    if offset & 3 != 0 || len > req.data_len() || len > max {
        return invalid(req);
    }
    let page = match (lid_, ctrlr.is_discovery()) {
        (lid::DISCOVERY, true) => discovery_page(ctrlr),
        (lid::ERROR, false) => error_page(ctrlr),
        (lid::SMART, false) => {
            let nsid = req.cmd.nsid();
            if nsid != 0 && nsid != 0xffff_ffff {
                // Controller-wide only (LPA bit 0 clear).
                return invalid(req);
            }
            smart_page(ctrlr)
        }
        (lid::FIRMWARE_SLOT, false) => {
            let mut d = vec![0u8; 512];
            d[0] = 1; // slot 1 active
            put_ascii_padded(&mut d[8..16], FIRMWARE);
            d
        }
        (lid::CHANGED_NS, false) => changed_ns_page(ctrlr),
        (lid::COMMAND_EFFECTS, false) => effects_page(),
        (lid::ANA, false) if ctrlr.subsystem().config().ana_reporting => ana_page(ctrlr, lsp & 1 != 0),
        _ => {
            req.set_status(Status::command(csc::INVALID_LOG_PAGE).dnr());
            return;
        }
    };
    if offset > page.len() as u64 {
        return invalid(req);
    }
    let mut out = vec![0u8; len as usize];
    let from = &page[offset as usize..];
    let n = from.len().min(out.len());
    out[..n].copy_from_slice(&from[..n]);
    req.copy_to_host(&out);
    if !rae {
        ctrlr.log_read(lid_);
    }
}

/// Error Information: the newest entries first, ELPE+1 slots.
fn error_page(ctrlr: &Controller) -> Vec<u8> {
    let mut d = vec![0u8; 64 * (ELPE as usize + 1)];
    for (i, e) in ctrlr.lock().errors.iter().enumerate() {
        d[i * 64..(i + 1) * 64].copy_from_slice(e);
    }
    d
}

/// SMART / Health Information, from the namespaces' bdev statistics.
fn smart_page(ctrlr: &Controller) -> Vec<u8> {
    let mut d = vec![0u8; 512];
    let (mut rd_bytes, mut wr_bytes, mut rd_ops, mut wr_ops) = (0u64, 0u64, 0u64, 0u64);
    for ns in ctrlr.subsystem().namespaces() {
        let s = ns.bdev().stats();
        rd_bytes += s.read.bytes.get();
        wr_bytes += s.write.bytes.get();
        rd_ops += s.read.ops.get();
        wr_ops += s.write.ops.get();
    }
    // Data units are thousands of 512-byte units, rounded up.
    let units = |bytes: u64| (bytes / 512).div_ceil(1000) as u128;
    d[0] = if temperature_warning(ctrlr) { 0x2 } else { 0 };
    put16(&mut d, 1, TEMPERATURE);
    d[3] = 100; // available spare
    d[4] = 10; // available spare threshold
    d[5] = 0; // percentage used
    d[32..48].copy_from_slice(&units(rd_bytes).to_le_bytes());
    d[48..64].copy_from_slice(&units(wr_bytes).to_le_bytes());
    d[64..80].copy_from_slice(&(rd_ops as u128).to_le_bytes());
    d[80..96].copy_from_slice(&(wr_ops as u128).to_le_bytes());
    d[112..128].copy_from_slice(&1u128.to_le_bytes()); // power cycles
    let hours = (ctrlr.age().as_secs() / 3600) as u128;
    d[128..144].copy_from_slice(&hours.to_le_bytes());
    let errors = ctrlr.lock().error_count as u128;
    d[176..192].copy_from_slice(&errors.to_le_bytes());
    d
}

/// Changed Namespace List (cleared by reading it).
fn changed_ns_page(ctrlr: &Controller) -> Vec<u8> {
    let mut d = vec![0u8; CHANGED_NS_MAX * 4];
    let mut st = ctrlr.lock();
    if st.changed_overflow {
        put32(&mut d, 0, 0xffff_ffff);
    } else {
        for (i, nsid) in st.changed_ns.iter().enumerate() {
            put32(&mut d, i * 4, *nsid);
        }
    }
    st.changed_ns.clear();
    st.changed_overflow = false;
    d
}

/// Commands Supported and Effects: the admin commands served and the I/O commands ONCS
/// announces (logical block content change where they write).
fn effects_page() -> Vec<u8> {
    const CSUPP: u32 = 1;
    const LBCC: u32 = 1 << 1;
    let mut d = vec![0u8; 4096];
    for op in [
        admin::GET_LOG_PAGE,
        admin::IDENTIFY,
        admin::ABORT,
        admin::SET_FEATURES,
        admin::GET_FEATURES,
        admin::ASYNC_EVENT_REQUEST,
        admin::KEEP_ALIVE,
    ] {
        put32(&mut d, op as usize * 4, CSUPP);
    }
    let oncs = io::oncs();
    let mut io_ops = vec![(iop::READ, CSUPP), (iop::WRITE, CSUPP | LBCC), (iop::FLUSH, CSUPP | LBCC)];
    if oncs & 1 != 0 {
        io_ops.push((iop::COMPARE, CSUPP));
    }
    if oncs & (1 << 2) != 0 {
        io_ops.push((iop::DATASET_MANAGEMENT, CSUPP | LBCC));
    }
    if oncs & (1 << 3) != 0 {
        io_ops.push((iop::WRITE_ZEROES, CSUPP | LBCC));
    }
    if oncs & (1 << 5) != 0 {
        for op in
            [iop::RESERVATION_REGISTER, iop::RESERVATION_REPORT, iop::RESERVATION_ACQUIRE, iop::RESERVATION_RELEASE]
        {
            io_ops.push((op, CSUPP));
        }
    }
    if oncs & (1 << 7) != 0 {
        io_ops.push((iop::VERIFY, CSUPP));
    }
    for (op, e) in io_ops {
        put32(&mut d, 1024 + op as usize * 4, e);
    }
    d
}

/// Asymmetric Namespace Access: one group per ANA group ID in use, in the state of the
/// controller's listener; `groups_only` (LSP bit 0, RGO) leaves out the NSID lists.
fn ana_page(ctrlr: &Controller, groups_only: bool) -> Vec<u8> {
    let sub = ctrlr.subsystem();
    let state = sub.ana_state(ctrlr.listen()).code();
    let chgcnt = ctrlr.lock().ana_chgcnt;
    let mut groups: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
    for ns in sub.namespaces() {
        groups.entry(ns.anagrpid).or_default().push(ns.nsid);
    }
    let mut d = vec![0u8; 16];
    put64(&mut d, 0, chgcnt);
    put16(&mut d, 8, groups.len() as u16);
    for (grp, nsids) in groups {
        let mut g = vec![0u8; 32];
        put32(&mut g, 0, grp);
        put32(&mut g, 4, if groups_only { 0 } else { nsids.len() as u32 });
        put64(&mut g, 8, chgcnt);
        g[16] = state;
        if !groups_only {
            for n in nsids {
                g.extend_from_slice(&n.to_le_bytes());
            }
        }
        d.extend_from_slice(&g);
    }
    d
}

/// The discovery log: one entry per listener of every subsystem this host may connect to
/// (the discovery subsystem's own listeners as "current discovery subsystem"), in SPDK's
/// layout (`spdk_nvmf_discovery_log_page_entry`).
fn discovery_page(ctrlr: &Controller) -> Vec<u8> {
    // GENCTR first: a change racing with the build makes the host read again.
    let genctr = subsystem::discovery_generation();
    let mut entries: Vec<[u8; DISCOVERY_ENTRY_LEN]> = Vec::new();
    for sub in subsystem::subsystems() {
        if !sub.host_allowed(ctrlr.hostnqn()) {
            continue;
        }
        // A VFIOUSER endpoint is a local PCI function, not an address a fabrics host can
        // connect to.
        for l in sub.listeners().iter().filter(|l| !l.trtype.eq_ignore_ascii_case("VFIOUSER")) {
            entries.push(discovery_entry(&sub, l, ctrlr.limits().max_aq_depth));
        }
    }
    let mut d = vec![0u8; DISCOVERY_ENTRY_LEN * (1 + entries.len())];
    put64(&mut d, 0, genctr);
    put64(&mut d, 8, entries.len() as u64);
    put16(&mut d, 16, 0); // RECFMT
    for (i, e) in entries.iter().enumerate() {
        d[(i + 1) * DISCOVERY_ENTRY_LEN..(i + 2) * DISCOVERY_ENTRY_LEN].copy_from_slice(e);
    }
    d
}

/// Transport type code of `trtype`.
fn trtype_code(t: &str) -> u8 {
    match t.to_ascii_uppercase().as_str() {
        "RDMA" => 1,
        "FC" => 2,
        "TCP" => 3,
        "VFIOUSER" => 0xfe,
        _ => 0xff,
    }
}

/// Address family code of `adrfam`.
fn adrfam_code(a: &str) -> u8 {
    match a.to_ascii_uppercase().as_str() {
        "IPV4" => 1,
        "IPV6" => 2,
        "IB" => 3,
        "FC" => 4,
        _ => 0xfe, // intra host
    }
}

fn discovery_entry(sub: &Arc<Subsystem>, l: &ListenAddress, asqsz: u16) -> [u8; DISCOVERY_ENTRY_LEN] {
    let mut e = [0u8; DISCOVERY_ENTRY_LEN];
    e[0] = trtype_code(&l.trtype);
    e[1] = adrfam_code(&l.adrfam);
    let discovery = sub.kind() == SubsystemKind::Discovery;
    e[2] = if discovery { 3 } else { 2 }; // SUBTYPE: current discovery subsystem / NVM
    e[3] = 0x2; // TREQ: secure channel not required
    put16(&mut e, 4, subsystem::port_id(l));
    put16(&mut e, 6, 0xffff); // CNTLID: dynamic
    put16(&mut e, 8, asqsz);
    // EFLAGS for the discovery subsystem: duplicate returned information, explicit
    // persistent connection support (as SPDK).
    put16(&mut e, 10, if discovery { 0x3 } else { 0 });
    put_nul_padded(&mut e[32..64], &l.trsvcid);
    put_nul_padded(&mut e[256..512], sub.nqn());
    put_nul_padded(&mut e[512..768], &l.traddr);
    // TSAS for TCP: SECTYPE 0 (no security).
    e
}
