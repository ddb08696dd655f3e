//! Get Features and Set Features (NVMe Base 2.0 §5.27, §5.21): the set a Linux host and
//! nvme-cli use (number of queues, arbitration, power management, temperature threshold,
//! error recovery, volatile write cache, write atomicity, async event configuration, keep
//! alive timer, host identifier, software progress marker, reservation mask/persistence).
//! Nothing is saveable; a discovery controller has only the async event configuration and
//! the keep alive timer, as SPDK's.

use super::controller::{Controller, KAS};
use super::identify::{CCTEMP, TEMPERATURE, WCTEMP};
use super::queue::QueuePair;
use super::request::NvmeRequest;
use ferry_nvme::spec::{csc, sc, Status};

/// Feature identifiers.
pub mod fid {
    /// Arbitration.
    pub const ARBITRATION: u8 = 0x01;
    /// Power Management.
    pub const POWER_MANAGEMENT: u8 = 0x02;
    /// Temperature Threshold.
    pub const TEMPERATURE_THRESHOLD: u8 = 0x04;
    /// Error Recovery.
    pub const ERROR_RECOVERY: u8 = 0x05;
    /// Volatile Write Cache.
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    /// Number of Queues.
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    /// Interrupt Coalescing (PCIe).
    pub const INTERRUPT_COALESCING: u8 = 0x08;
    /// Interrupt Vector Configuration (PCIe).
    pub const INTERRUPT_VECTOR: u8 = 0x09;
    /// Write Atomicity Normal.
    pub const WRITE_ATOMICITY: u8 = 0x0a;
    /// Asynchronous Event Configuration.
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0b;
    /// Autonomous Power State Transition.
    pub const APST: u8 = 0x0c;
    /// Keep Alive Timer.
    pub const KEEP_ALIVE_TIMER: u8 = 0x0f;
    /// Software Progress Marker.
    pub const SOFTWARE_PROGRESS_MARKER: u8 = 0x80;
    /// Host Identifier.
    pub const HOST_IDENTIFIER: u8 = 0x81;
    /// Reservation Notification Mask.
    pub const RESERVATION_NOTIFICATION_MASK: u8 = 0x82;
    /// Reservation Persistence.
    pub const RESERVATION_PERSISTENCE: u8 = 0x83;
}

/// The asynchronous events a controller can report (OAES bits Ferry sets).
pub const AEC_SUPPORTED: u32 = (1 << 8) | (1 << 11) | (1 << 31);

/// A controller's feature values.
#[derive(Debug, Clone)]
pub struct Features {
    /// Arbitration (dword 11 as set).
    pub arbitration: u32,
    /// Power state (only 0 exists).
    pub power_management: u32,
    /// Over temperature threshold (Kelvin) of the composite temperature.
    pub temp_over: u16,
    /// Under temperature threshold (Kelvin).
    pub temp_under: u16,
    /// Error recovery (TLER).
    pub error_recovery: u32,
    /// Volatile write cache enabled.
    pub write_cache: bool,
    /// Write atomicity normal (DN bit).
    pub write_atomicity: u32,
    /// Asynchronous event configuration.
    pub async_event_config: u32,
    /// Software progress marker.
    pub software_progress_marker: u32,
    /// Reservation notification mask.
    pub reservation_mask: u32,
}

impl Default for Features {
    fn default() -> Self {
        Features {
            arbitration: 0,
            power_management: 0,
            temp_over: WCTEMP,
            temp_under: 0,
            error_recovery: 0,
            write_cache: true,
            write_atomicity: 0,
            async_event_config: 0,
            software_progress_marker: 0,
            reservation_mask: 0,
        }
    }
}

fn invalid(req: &mut NvmeRequest) {
    req.set_status(Status::generic(sc::INVALID_FIELD).dnr());
}

/// Whether a discovery controller has feature `fid`.
fn discovery_has(fid: u8) -> bool {
    matches!(fid, fid::ASYNC_EVENT_CONFIG | fid::KEEP_ALIVE_TIMER)
}

/// Rounds a keep-alive timeout up to the KAS granularity.
pub fn round_kato(ms: u32) -> u32 {
    let unit = KAS as u32 * 100;
    ms.div_ceil(unit).saturating_mul(unit)
}

/// Get Features.
pub fn get(qp: &QueuePair, req: &mut NvmeRequest) {
    let ctrlr = qp.controller();
    let fid = (req.cmd.cdw10() & 0xff) as u8;
    let sel = (req.cmd.cdw10() >> 8) & 0x7;
    if ctrlr.is_discovery() && !discovery_has(fid) {
        return invalid(req);
    }
    let reservation = matches!(fid, fid::RESERVATION_NOTIFICATION_MASK | fid::RESERVATION_PERSISTENCE);
    // Before taking the controller's lock: locks go subsystem, then controller.
    if reservation && ctrlr.subsystem().namespace(req.cmd.nsid()).is_none() {
        req.set_status(Status::generic(sc::INVALID_NS).dnr());
        return;
    }
    let defaults = Features::default();
    let st = ctrlr.lock();
    let f = if sel == 0 { &st.feat } else { &defaults };
    // Supported capabilities (SEL 3): bit 2 changeable, bit 1 namespace specific.
    let caps: u32 = match fid {
        fid::RESERVATION_NOTIFICATION_MASK | fid::RESERVATION_PERSISTENCE => 0x6,
        fid::HOST_IDENTIFIER | fid::APST => 0,
        _ => 0x4,
    };
    let dw0 = match fid {
        fid::ARBITRATION => f.arbitration,
        fid::POWER_MANAGEMENT => f.power_management,
        fid::TEMPERATURE_THRESHOLD => {
            let cdw11 = req.cmd.cdw11();
            let (tmpsel, thsel) = ((cdw11 >> 16) & 0xf, (cdw11 >> 20) & 0x3);
            if tmpsel != 0 || thsel > 1 {
                drop(st);
                return invalid(req);
            }
            let t = if thsel == 0 { f.temp_over } else { f.temp_under };
            t as u32 | (thsel << 20)
        }
        fid::ERROR_RECOVERY => f.error_recovery,
        fid::VOLATILE_WRITE_CACHE => f.write_cache as u32,
        fid::NUMBER_OF_QUEUES => {
            let n = if sel == 0 { st.io_queues } else { ctrlr.limits().max_io_qpairs_per_ctrlr };
            let n = n.max(1) as u32 - 1;
            n | (n << 16)
        }
        fid::WRITE_ATOMICITY => f.write_atomicity,
        fid::ASYNC_EVENT_CONFIG => f.async_event_config,
        fid::APST => 0,
        fid::KEEP_ALIVE_TIMER => {
            if sel == 0 {
                st.kato_ms
            } else {
                0
            }
        }
        fid::SOFTWARE_PROGRESS_MARKER => f.software_progress_marker,
        fid::HOST_IDENTIFIER => {
            // Only the 128-bit form (CTRATT bit 0): EXHID must be set.
            if req.cmd.cdw11() & 1 == 0 {
                drop(st);
                return invalid(req);
            }
            drop(st);
            let id = ctrlr.hostid();
            req.copy_to_host(&id);
            req.cpl.dw0 = if sel == 3 { caps } else { 0 };
            return;
        }
        fid::RESERVATION_NOTIFICATION_MASK | fid::RESERVATION_PERSISTENCE => {
            if fid == fid::RESERVATION_NOTIFICATION_MASK {
                f.reservation_mask
            } else {
                0
            }
        }
        _ => {
            drop(st);
            return invalid(req);
        }
    };
    drop(st);
    req.cpl.dw0 = match sel {
        0..=2 => dw0,
        3 => caps,
        _ => return invalid(req),
    };
}

/// Set Features.
pub fn set(qp: &QueuePair, req: &mut NvmeRequest) {
    let ctrlr = qp.controller();
    let cdw10 = req.cmd.cdw10();
    let fid = (cdw10 & 0xff) as u8;
    let cdw11 = req.cmd.cdw11();
    if ctrlr.is_discovery() && !discovery_has(fid) {
        return invalid(req);
    }
    if cdw10 & (1 << 31) != 0 {
        req.set_status(Status::command(csc::FEATURE_NOT_SAVEABLE).dnr());
        return;
    }
    let mut st = ctrlr.lock();
    match fid {
        fid::ARBITRATION => st.feat.arbitration = cdw11,
        fid::POWER_MANAGEMENT => {
            // One power state (NPSS 0); workload hint bits 7:5 are kept.
            if cdw11 & 0x1f != 0 {
                drop(st);
                return invalid(req);
            }
            st.feat.power_management = cdw11 & 0xff;
        }
        fid::TEMPERATURE_THRESHOLD => {
            let (tmpsel, thsel) = ((cdw11 >> 16) & 0xf, (cdw11 >> 20) & 0x3);
            if tmpsel != 0 || thsel > 1 {
                drop(st);
                return invalid(req);
            }
            let t = (cdw11 & 0xffff) as u16;
            if thsel == 0 {
                st.feat.temp_over = t;
            } else {
                st.feat.temp_under = t;
            }
        }
        fid::ERROR_RECOVERY => {
            // Deallocated or unwritten logical block error (DULBE) is not supported.
            if cdw11 & (1 << 16) != 0 {
                drop(st);
                return invalid(req);
            }
            st.feat.error_recovery = cdw11 & 0xffff;
        }
        fid::VOLATILE_WRITE_CACHE => st.feat.write_cache = cdw11 & 1 != 0,
        fid::NUMBER_OF_QUEUES => {
            let (nsqr, ncqr) = (cdw11 & 0xffff, cdw11 >> 16);
            if nsqr == 0xffff || ncqr == 0xffff {
                drop(st);
                return invalid(req);
            }
            drop(st);
            if ctrlr.info().num_io_qpairs != 0 {
                // SPDK's rule: the count is fixed once I/O queues exist.
                req.set_status(Status::generic(sc::COMMAND_SEQUENCE_ERROR).dnr());
                return;
            }
            let max = ctrlr.limits().max_io_qpairs_per_ctrlr.max(1) as u32;
            let granted = (nsqr.max(ncqr) + 1).min(max);
            ctrlr.lock().io_queues = granted as u16;
            req.cpl.dw0 = (granted - 1) | ((granted - 1) << 16);
        }
        fid::WRITE_ATOMICITY => st.feat.write_atomicity = cdw11 & 1,
        fid::ASYNC_EVENT_CONFIG => st.feat.async_event_config = cdw11 & AEC_SUPPORTED,
        fid::KEEP_ALIVE_TIMER => {
            if cdw11 == 0 {
                drop(st);
                req.set_status(Status::generic(sc::KEEP_ALIVE_INVALID).dnr());
                return;
            }
            st.kato_ms = round_kato(cdw11);
            drop(st);
            ctrlr.keep_alive();
        }
        fid::SOFTWARE_PROGRESS_MARKER => st.feat.software_progress_marker = cdw11 & 0xff,
        fid::HOST_IDENTIFIER => {
            // Fabrics hosts give it at Connect (NVMe-oF 1.1 §3.3).
            drop(st);
            req.set_status(Status::generic(sc::COMMAND_SEQUENCE_ERROR).dnr());
        }
        fid::RESERVATION_NOTIFICATION_MASK | fid::RESERVATION_PERSISTENCE => {
            let nsid = req.cmd.nsid();
            drop(st);
            if nsid != 0xffff_ffff && ctrlr.subsystem().namespace(nsid).is_none() {
                req.set_status(Status::generic(sc::INVALID_NS).dnr());
                return;
            }
            if fid == fid::RESERVATION_PERSISTENCE {
                // No persistence file: Persist Through Power Loss cannot be turned on.
                if cdw11 & 1 != 0 {
                    req.set_status(Status::command(csc::FEATURE_NOT_CHANGEABLE).dnr());
                }
                return;
            }
            ctrlr.lock().feat.reservation_mask = cdw11 & 0xe;
        }
        fid::APST => {
            // APSTA is 0.
            if cdw11 & 1 != 0 {
                drop(st);
                invalid(req);
            }
        }
        _ => {
            drop(st);
            invalid(req);
        }
    }
}

/// Whether the composite temperature crosses a threshold (SMART critical warning bit 1).
pub fn temperature_warning(ctrlr: &Controller) -> bool {
    let st = ctrlr.lock();
    TEMPERATURE > st.feat.temp_over || TEMPERATURE < st.feat.temp_under || TEMPERATURE >= CCTEMP
}
