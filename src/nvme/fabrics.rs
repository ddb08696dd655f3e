//! Fabrics commands (NVMe over Fabrics 1.1 §3): Connect, which makes a controller (admin
//! queue) or joins one (I/O queue); Property Get/Set, the registers of a fabrics
//! controller; Disconnect of an I/O queue.
//!
//! Connect is checked as SPDK's `nvmf_ctrlr_cmd_connect` does, and a refusal says which
//! field was wrong: Connect Invalid Parameters carries IATTR (0: the command, 1: the data)
//! and IPO (the byte offset) in dword 0.

use super::controller::{cc, Association, Controller, DISCOVERY_KATO_MS};
use super::features::round_kato;
use super::queue::QueuePair;
use super::request::NvmeRequest;
use super::subsystem::{self, ListenAddress, SubsystemKind};
use crate::framework;
use ferry_nvme::spec::{admin, csc, fabrics as f, le16, le32, le64, nul_terminated, sc, Command, Completion, Status};
use std::rc::Rc;

/// What a fabrics transport gives Connect.
#[derive(Debug, Clone)]
pub struct TransportLimits {
    /// Largest I/O queue (entries).
    pub max_queue_depth: u16,
    /// Largest admin queue (entries).
    pub max_aq_depth: u16,
    /// Most I/O queues per controller.
    pub max_io_qpairs_per_ctrlr: u16,
    /// In-capsule data size of I/O queues (bytes).
    pub in_capsule_data_size: u32,
    /// Largest transfer (bytes; Identify MDTS).
    pub max_io_size: u32,
    /// The address this connection came in on (discovery log, ANA, listener checks).
    pub listen: ListenAddress,
    /// The peer's address, for queue listings and logs.
    pub host_addr: String,
    /// A PCIe function (the vfio-user transport), not a fabrics controller: what differs
    /// in Identify Controller (no SGLs or fabrics fields; Doorbell Buffer Config).
    pub pcie: Option<PcieFunction>,
}

/// What a PCIe transport tells the model about its function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcieFunction {
    /// PCI vendor ID (Identify VID and SSVID).
    pub vendor_id: u16,
    /// Doorbell Buffer Config is offered (OACS bit 8).
    pub shadow_doorbells: bool,
}

/// IATTR: the invalid parameter is in the command.
const IN_COMMAND: u32 = 0;
/// IATTR: the invalid parameter is in the data.
const IN_DATA: u32 = 1;

fn completion(cmd: &Command, status: Status, dw0: u32) -> Completion {
    Completion { dw0, status, cid: cmd.cid(), ..Default::default() }
}

/// Connect Invalid Parameters pointing at byte `ipo` of the command or the data.
fn invalid_param(cmd: &Command, iattr: u32, ipo: usize) -> Completion {
    completion(cmd, Status::command(csc::CONNECT_INVALID_PARAMETERS).dnr(), (ipo as u32) | (iattr << 16))
}

/// A NUL-terminated UTF-8 NQN field of the Connect data (possibly empty), or None.
fn nqn_field(b: &[u8]) -> Option<&str> {
    if !b.contains(&0) {
        return None;
    }
    nul_terminated(b)
}

/// A Connect command (`cmd`, with its 1024 bytes of `data`) on a new transport queue. On
/// success the queue pair this connection now serves and the Connect completion (dw0 =
/// CNTLID); on failure the completion to send. `on_disconnect` is called on this reactor
/// when the model ends the queue (keep-alive timeout, subsystem, host or listener removal,
/// controller reset or shutdown): the transport then closes the connection. Call it on the
/// reactor that will run the queue.
pub fn connect(
    cmd: &Command,
    data: &[u8],
    limits: &TransportLimits,
    on_disconnect: Rc<dyn Fn()>,
) -> Result<(Rc<QueuePair>, Completion), Completion> {
    if cmd.opcode() != admin::FABRICS || cmd.fctype() != f::CONNECT {
        return Err(completion(cmd, Status::generic(sc::INVALID_OPCODE).dnr(), 0));
    }
    if le16(&cmd.0, f::CONNECT_RECFMT) != 0 {
        return Err(completion(cmd, Status::command(csc::CONNECT_INCOMPATIBLE_FORMAT).dnr(), 0));
    }
    if data.len() < f::CONNECT_DATA_LEN {
        return Err(completion(cmd, Status::generic(sc::DATA_SGL_LENGTH_INVALID).dnr(), 0));
    }
    let Some(reactor) = framework::current_index() else {
        return Err(completion(cmd, Status::generic(sc::INTERNAL).dnr(), 0));
    };
    let qid = le16(&cmd.0, f::CONNECT_QID);
    let sqsize = le16(&cmd.0, f::CONNECT_SQSIZE);
    let cattr = cmd.0[f::CONNECT_CATTR];
    let kato = le32(&cmd.0, f::CONNECT_KATO);
    let mut hostid = [0u8; 16];
    hostid.copy_from_slice(&data[f::CONNECT_DATA_HOSTID..f::CONNECT_DATA_HOSTID + 16]);
    let cntlid = le16(data, f::CONNECT_DATA_CNTLID);
    let Some(subnqn) = nqn_field(&data[f::CONNECT_DATA_SUBNQN..f::CONNECT_DATA_SUBNQN + 256]).filter(|s| !s.is_empty())
    else {
        return Err(invalid_param(cmd, IN_DATA, f::CONNECT_DATA_SUBNQN));
    };
    // An empty host NQN is accepted, as SPDK's and Linux's targets do: SPDK's own perf tool
    // sends one unless told a NQN. Only a subsystem that allows any host lets it in.
    let Some(hostnqn) = nqn_field(&data[f::CONNECT_DATA_HOSTNQN..f::CONNECT_DATA_HOSTNQN + 256]) else {
        return Err(invalid_param(cmd, IN_DATA, f::CONNECT_DATA_HOSTNQN));
    };
    if hostid == [0; 16] {
        return Err(invalid_param(cmd, IN_DATA, f::CONNECT_DATA_HOSTID));
    }
    let Some(sub) = subsystem::subsystem(subnqn) else {
        tracing::info!(subnqn, hostnqn, "nvme: connect to an unknown subsystem");
        return Err(invalid_param(cmd, IN_DATA, f::CONNECT_DATA_SUBNQN));
    };
    if !sub.host_allowed(hostnqn) || !sub.listener_allowed(&limits.listen) {
        tracing::info!(subnqn, hostnqn, listen = %limits.listen.traddr, "nvme: connect refused: host not allowed here");
        return Err(completion(cmd, Status::command(csc::CONNECT_INVALID_HOST).dnr(), 0));
    }
    let max_depth = if qid == 0 { limits.max_aq_depth } else { limits.max_queue_depth };
    if sqsize == 0 || sqsize >= max_depth {
        return Err(invalid_param(cmd, IN_COMMAND, f::CONNECT_SQSIZE));
    }
    let sqfc_disabled = cattr & f::CATTR_SQ_FLOW_CONTROL_DISABLED != 0;
    let ok = |qp: Rc<QueuePair>| {
        let cpl = completion(cmd, Status::SUCCESS, qp.cntlid() as u32);
        Ok((qp, cpl))
    };
    if qid == 0 {
        if cntlid != 0xffff {
            // Only the dynamic controller model.
            return Err(invalid_param(cmd, IN_DATA, f::CONNECT_DATA_CNTLID));
        }
        let kato_ms = match (kato, sub.kind()) {
            (0, SubsystemKind::Discovery) => DISCOVERY_KATO_MS,
            (0, SubsystemKind::Nvme) => 0,
            (k, _) => round_kato(k),
        };
        let ana = if sub.config().ana_reporting { sub.ana_state(&limits.listen).code() } else { 0 };
        let assoc = Association { hostnqn, hostid, limits, admin_reactor: reactor, kato_ms, ana };
        let made = sub.add_controller(|id| Controller::new(id, sub.clone(), &assoc));
        let ctrlr = match made {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(subnqn, hostnqn, "nvme: connect refused: {e}");
                return Err(completion(cmd, Status::command(csc::CONNECT_CONTROLLER_BUSY), 0));
            }
        };
        tracing::info!(subnqn, hostnqn, cntlid = ctrlr.cntlid(), peer = %limits.host_addr, kato_ms, "nvme: controller created");
        return ok(QueuePair::new(ctrlr, 0, sqsize + 1, sqfc_disabled, reactor, on_disconnect));
    }
    if sub.kind() == SubsystemKind::Discovery {
        return Err(invalid_param(cmd, IN_COMMAND, f::CONNECT_QID));
    }
    let Some(ctrlr) = sub.controller(cntlid) else {
        return Err(invalid_param(cmd, IN_DATA, f::CONNECT_DATA_CNTLID));
    };
    if ctrlr.hostnqn() != hostnqn {
        return Err(invalid_param(cmd, IN_DATA, f::CONNECT_DATA_HOSTNQN));
    }
    if ctrlr.hostid() != hostid {
        return Err(invalid_param(cmd, IN_DATA, f::CONNECT_DATA_HOSTID));
    }
    let (ccv, granted) = {
        let st = ctrlr.lock();
        (st.cc, st.io_queues)
    };
    if !ctrlr.ready() {
        return Err(completion(cmd, Status::generic(sc::COMMAND_SEQUENCE_ERROR).dnr(), 0));
    }
    if (ccv >> cc::IOSQES_SHIFT) & 0xf != 6 || (ccv >> cc::IOCQES_SHIFT) & 0xf != 4 {
        return Err(invalid_param(cmd, IN_COMMAND, f::CONNECT_QID));
    }
    if qid > granted {
        return Err(invalid_param(cmd, IN_COMMAND, f::CONNECT_QID));
    }
    if !ctrlr.register_queue(qid, reactor) {
        return Err(invalid_param(cmd, IN_COMMAND, f::CONNECT_QID));
    }
    ok(QueuePair::new(ctrlr, qid, sqsize + 1, sqfc_disabled, reactor, on_disconnect))
}

/// A fabrics command on an established queue.
pub fn execute(qp: &Rc<QueuePair>, mut req: Box<NvmeRequest>) -> Option<Box<NvmeRequest>> {
    let admin_q = qp.qid() == 0;
    match req.cmd.fctype() {
        f::CONNECT => req.set_status(Status::generic(sc::COMMAND_SEQUENCE_ERROR).dnr()),
        f::PROPERTY_GET if admin_q => {
            let eight = req.cmd.0[f::PROPERTY_ATTRIB] & 0x7 == 1;
            match qp.controller().property_get(le32(&req.cmd.0, f::PROPERTY_OFFSET), eight) {
                Ok(v) => {
                    req.cpl.dw0 = v as u32;
                    req.cpl.dw1 = (v >> 32) as u32;
                }
                Err(s) => req.set_status(s),
            }
        }
        f::PROPERTY_SET if admin_q => {
            let eight = req.cmd.0[f::PROPERTY_ATTRIB] & 0x7 == 1;
            let value = le64(&req.cmd.0, f::PROPERTY_VALUE);
            match qp.controller().property_set(le32(&req.cmd.0, f::PROPERTY_OFFSET), eight, value) {
                Ok(change) => {
                    if change.reset || change.shutdown {
                        qp.controller().disconnect_io_queues();
                    }
                    if change.reset {
                        qp.abort_aers();
                    }
                }
                Err(s) => req.set_status(s),
            }
        }
        f::DISCONNECT if !admin_q => {
            // Completed first; the transport hears of the end right after.
            qp.disconnect_later();
        }
        f::DISCONNECT => req.set_status(Status::generic(sc::INVALID_FIELD).dnr()),
        _ => req.set_status(Status::generic(sc::INVALID_OPCODE).dnr()),
    }
    Some(req)
}
