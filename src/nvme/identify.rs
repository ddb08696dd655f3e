//! Identify (NVMe Base 2.0 §5.17): CNS 00h namespace, 01h controller, 02h active namespace
//! list, 03h namespace identification descriptors, 06h I/O command set specific controller
//! (NVM: all limits 0). Any other CNS is Invalid Field, which Linux takes as "not supported"
//! and falls back from. A discovery controller answers CNS 01h only.
//!
//! The controller data carries what Linux checks on a fabrics controller (IOCCSZ >= 4,
//! IORCSZ >= 1, ICDOFF 0, SGLS non-zero, MAXCMD non-zero, CNTLID equal to Connect's) with
//! SPDK's values (`lib/nvmf/ctrlr.c`); a PCIe function (vfio-user) has PCI IDs, PRPs only
//! and Doorbell Buffer Config instead.

use super::controller::{Controller, AERL, ELPE, KAS, VERSION};
use super::features::AEC_SUPPORTED;
use super::io;
use super::queue::QueuePair;
use super::request::NvmeRequest;
use crate::bdev::IoType;
use ferry_nvme::spec::{put16, put32, put64, put_ascii_padded, put_nul_padded, sc, Status};

/// Identify data size.
pub const IDENTIFY_LEN: usize = 4096;
/// Warning composite temperature threshold (Kelvin): 70 °C.
pub const WCTEMP: u16 = 343;
/// Critical composite temperature threshold (Kelvin): 100 °C.
pub const CCTEMP: u16 = 373;
/// The composite temperature reported (Kelvin): 38 °C, a plausible idle drive.
pub const TEMPERATURE: u16 = 311;
/// Firmware revision (Identify FR, firmware slot 1).
pub const FIRMWARE: &str = env!("CARGO_PKG_VERSION");
/// Number of I/O queue entry sizes (SQES/CQES): required 64/16, max 64/16.
const SQES: u8 = 0x66;
const CQES: u8 = 0x44;

/// CNS values.
pub mod cns {
    /// Identify Namespace.
    pub const NAMESPACE: u8 = 0x00;
    /// Identify Controller.
    pub const CONTROLLER: u8 = 0x01;
    /// Active Namespace ID list.
    pub const ACTIVE_NS_LIST: u8 = 0x02;
    /// Namespace Identification Descriptor list.
    pub const NS_DESCRIPTORS: u8 = 0x03;
    /// I/O Command Set specific Identify Controller.
    pub const CSI_CONTROLLER: u8 = 0x06;
}

fn status(req: &mut NvmeRequest, sc_: u8) {
    req.set_status(Status::generic(sc_).dnr());
}

/// Identify.
pub fn execute(qp: &QueuePair, req: &mut NvmeRequest) {
    let ctrlr = qp.controller();
    let cns_ = (req.cmd.cdw10() & 0xff) as u8;
    if ctrlr.is_discovery() && cns_ != cns::CONTROLLER {
        return status(req, sc::INVALID_FIELD);
    }
    let mut data = vec![0u8; IDENTIFY_LEN];
    match cns_ {
        cns::CONTROLLER => controller_data(ctrlr, &mut data),
        cns::NAMESPACE => {
            if let Err(s) = namespace_data(ctrlr, req.cmd.nsid(), &mut data) {
                return status(req, s);
            }
        }
        cns::ACTIVE_NS_LIST => {
            let after = req.cmd.nsid();
            if after >= 0xffff_fffe {
                return status(req, sc::INVALID_NS);
            }
            let all = ctrlr.subsystem().namespaces();
            let ids = all.iter().map(|n| n.nsid).filter(|n| *n > after).take(1024);
            for (i, id) in ids.enumerate() {
                put32(&mut data, i * 4, id);
            }
        }
        cns::NS_DESCRIPTORS => {
            let Some(ns) = ctrlr.subsystem().namespace(req.cmd.nsid()) else {
                return status(req, sc::INVALID_NS);
            };
            let mut at = 0;
            let mut put = |kind: u8, id: &[u8]| {
                data[at] = kind;
                data[at + 1] = id.len() as u8;
                data[at + 4..at + 4 + id.len()].copy_from_slice(id);
                at += 4 + id.len();
            };
            if ns.eui64 != [0; 8] {
                put(1, &ns.eui64);
            }
            if ns.nguid != [0; 16] {
                put(2, &ns.nguid);
            }
            if !ns.uuid.is_nil() {
                put(3, ns.uuid.as_bytes());
            }
            put(4, &[0]); // command set identifier: NVM
        }
        cns::CSI_CONTROLLER => {
            // CSI in CDW11 bits 31:24; only the NVM command set (0), whose limits are all 0.
            if req.cmd.cdw11() >> 24 != 0 {
                return status(req, sc::INVALID_FIELD);
            }
        }
        _ => return status(req, sc::INVALID_FIELD),
    }
    req.copy_to_host(&data);
}

/// Identify Controller data.
pub fn controller_data(ctrlr: &Controller, d: &mut [u8]) {
    let sub = ctrlr.subsystem();
    let cfg = sub.config();
    let limits = ctrlr.limits();
    let discovery = ctrlr.is_discovery();
    put_ascii_padded(&mut d[4..24], &cfg.serial_number);
    put_ascii_padded(&mut d[24..64], &cfg.model_number);
    put_ascii_padded(&mut d[64..72], FIRMWARE);
    d[72] = 6; // RAB
               // CMIC: more than one port and controller; ANA reporting when asked.
    d[76] = if discovery { 0 } else { 0x3 | if cfg.ana_reporting { 0x8 } else { 0 } };
    // MDTS in units of the 4 KiB minimum page size, a power of two.
    let pages = (limits.max_io_size / 4096).max(1);
    d[77] = pages.ilog2() as u8;
    put16(d, 78, ctrlr.cntlid());
    put32(d, 80, VERSION);
    let oaes = if discovery { 1 << 31 } else { (1 << 8) | if cfg.ana_reporting { 1 << 11 } else { 0 } };
    put32(d, 92, oaes & AEC_SUPPORTED);
    put32(d, 96, 1); // CTRATT: 128-bit host identifier
    d[111] = if discovery { 2 } else { 1 }; // CNTRLTYPE
    put16(d, 256, 0); // OACS: no namespace management, no doorbell buffer config on fabrics
    d[258] = 3; // ACL: four Aborts
    d[259] = AERL;
    d[260] = 0x3; // FRMW: slot 1 read-only, one slot
                  // LPA: extended data for Get Log Page (bit 2); commands supported and effects (bit 1)
                  // on NVM controllers only (Linux reads that log whenever the bit is set, and a
                  // discovery controller has only the discovery log).
    d[261] = if discovery { 0x4 } else { 0x6 };
    d[262] = ELPE;
    d[263] = 0; // NPSS: one power state
    if !discovery {
        put16(d, 266, WCTEMP);
        put16(d, 268, CCTEMP);
    }
    put16(d, 320, KAS);
    if cfg.ana_reporting && !discovery {
        d[342] = 10; // ANATT (s)
                     // ANACAP: every state reportable (bits 0-4), group ID fixed while attached (bit 6).
        d[343] = 0x1f | 0x40;
        let max = cfg.effective_max_namespaces();
        put32(d, 344, max); // ANAGRPMAX
        put32(d, 348, max); // NANAGRPID
    }
    d[512] = SQES;
    d[513] = CQES;
    put16(d, 514, limits.max_queue_depth);
    if !discovery {
        put32(d, 516, cfg.effective_max_namespaces()); // NN
        put16(d, 520, io::oncs());
        put16(d, 522, io::fuses());
        // VWC present; flush with NSID FFFFFFFFh not supported (10b), as SPDK.
        d[525] = 0x1 | (0x2 << 1);
        put32(d, 540, cfg.effective_max_namespaces()); // MNAN
    }
    put_nul_padded(&mut d[768..1024], sub.nqn());
    if let Some(pcie) = limits.pcie {
        // A PCIe function: PCI IDs, PRPs only (SGLS 0, so hosts never build SGLs), no
        // fabrics attributes, and Doorbell Buffer Config when shadow doorbells are offered.
        put16(d, 0, pcie.vendor_id);
        put16(d, 2, pcie.vendor_id);
        if pcie.shadow_doorbells {
            put16(d, 256, 1 << 8);
        }
    } else {
        // SGLS: supported, keyed data block, address as offset (SPDK's bits).
        put32(d, 536, 0x1 | (1 << 2) | (1 << 20));
        // NVMe over Fabrics attributes.
        put32(d, 1792, (64 + limits.in_capsule_data_size) / 16); // IOCCSZ
        put32(d, 1796, 1); // IORCSZ
        put16(d, 1800, 0); // ICDOFF
        d[1802] = 0; // FCATT: dynamic controller model
        d[1803] = 1; // MSDBD
    }
    // Power state 0: 25 W (in 0.01 W), entry and exit latency 0.
    put16(d, 2048, 2500);
}

/// Identify Namespace data for `nsid`; an inactive NSID within NN gets zeroes.
fn namespace_data(ctrlr: &Controller, nsid: u32, d: &mut [u8]) -> Result<(), u8> {
    let sub = ctrlr.subsystem();
    let cfg = sub.config();
    if nsid == 0 || nsid > cfg.effective_max_namespaces() {
        return Err(sc::INVALID_NS);
    }
    let Some(ns) = sub.namespace(nsid) else { return Ok(()) };
    let blocks = ns.num_blocks();
    put64(d, 0, blocks); // NSZE
    put64(d, 8, blocks); // NCAP
    put64(d, 16, blocks); // NUSE
    d[25] = 0; // NLBAF: one format
    d[26] = 0; // FLBAS: format 0
    d[30] = 1; // NMIC: may be shared
    if io::oncs() & (1 << 5) != 0 {
        d[31] = 0x7e; // RESCAP: every reservation type, no persistence through power loss
    }
    if ns.bdev().supports(IoType::Unmap) {
        d[33] = 0x1; // DLFEAT: deallocated blocks read as zeroes
    }
    let bytes = (blocks as u128) * ns.block_size() as u128;
    d[48..64].copy_from_slice(&bytes.to_le_bytes()); // NVMCAP
    if cfg.ana_reporting {
        put32(d, 92, ns.anagrpid);
    }
    d[99] = ns.read_only() as u8; // NSATTR: write protected
    d[104..120].copy_from_slice(&ns.nguid);
    d[120..128].copy_from_slice(&ns.eui64);
    // LBA format 0: no metadata, LBADS = log2(block size), best relative performance.
    put32(d, 128, (ns.block_size().ilog2()) << 16);
    Ok(())
}
