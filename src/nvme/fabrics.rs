//! PLACEHOLDER written by the tcp part so the NVMe/TCP target compiles and its tests run:
//! replaced at merge by the model's `src/nvme/fabrics.rs`. Connect succeeds for any subsystem
//! the placeholder registry holds (I/O queues of a controller an admin Connect made) and is
//! refused otherwise; no real logic lives here.

use super::queue::QueuePair;
use super::subsystem::{self, ListenAddress};
use ferry_nvme::spec::{csc, fabrics, le16, nul_terminated, Command, Completion, Status};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Mutex, OnceLock};

/// What a fabrics transport gives Connect.
#[derive(Clone, Debug)]
pub struct TransportLimits {
    /// Deepest I/O queue.
    pub max_queue_depth: u16,
    /// Deepest admin queue.
    pub max_aq_depth: u16,
    /// I/O queues per controller.
    pub max_io_qpairs_per_ctrlr: u16,
    /// In-capsule data of I/O queues.
    pub in_capsule_data_size: u32,
    /// Largest transfer.
    pub max_io_size: u32,
    /// The address this connection came in on.
    pub listen: ListenAddress,
    /// The peer's address.
    pub host_addr: String,
}

fn controllers() -> &'static Mutex<HashMap<u16, String>> {
    static C: OnceLock<Mutex<HashMap<u16, String>>> = OnceLock::new();
    C.get_or_init(|| Mutex::new(HashMap::new()))
}

fn invalid(ipo: u16) -> Completion {
    Completion {
        dw0: 1 << 16 | ipo as u32,
        status: Status::command(csc::CONNECT_INVALID_PARAMETERS),
        ..Default::default()
    }
}

/// A Connect command on a new transport queue (placeholder).
pub fn connect(
    cmd: &Command,
    data: &[u8],
    limits: &TransportLimits,
    on_disconnect: Rc<dyn Fn()>,
) -> Result<(Rc<QueuePair>, Completion), Completion> {
    if data.len() < fabrics::CONNECT_DATA_LEN {
        return Err(Completion { status: Status::generic(ferry_nvme::spec::sc::INVALID_FIELD), ..Default::default() });
    }
    let qid = le16(&cmd.0, fabrics::CONNECT_QID);
    let sqsize = le16(&cmd.0, fabrics::CONNECT_SQSIZE);
    let cattr = cmd.0[fabrics::CONNECT_CATTR];
    let subnqn = nul_terminated(&data[fabrics::CONNECT_DATA_SUBNQN..fabrics::CONNECT_DATA_SUBNQN + 256]).unwrap_or("");
    let hostnqn =
        nul_terminated(&data[fabrics::CONNECT_DATA_HOSTNQN..fabrics::CONNECT_DATA_HOSTNQN + 256]).unwrap_or("");
    let Some(sub) = subsystem::subsystem(subnqn) else {
        return Err(invalid(fabrics::CONNECT_DATA_SUBNQN as u16));
    };
    if !sub.host_allowed(hostnqn) {
        return Err(Completion { status: Status::command(csc::CONNECT_INVALID_HOST), ..Default::default() });
    }
    let max = if qid == 0 { limits.max_aq_depth } else { limits.max_queue_depth };
    if sqsize == 0 || sqsize >= max {
        return Err(Completion {
            status: Status::command(csc::CONNECT_INVALID_PARAMETERS),
            dw0: fabrics::CONNECT_SQSIZE as u32,
            ..Default::default()
        });
    }
    let cntlid = if qid == 0 {
        static NEXT: AtomicU16 = AtomicU16::new(1);
        let c = NEXT.fetch_add(1, Ordering::Relaxed);
        controllers().lock().unwrap().insert(c, subnqn.to_string());
        c
    } else {
        let c = le16(data, fabrics::CONNECT_DATA_CNTLID);
        if controllers().lock().unwrap().get(&c).map(String::as_str) != Some(subnqn) {
            return Err(invalid(fabrics::CONNECT_DATA_CNTLID as u16));
        }
        c
    };
    let qp = QueuePair::placeholder(qid, sqsize + 1, cntlid, sub, cattr & 0x4 != 0, on_disconnect);
    Ok((Rc::new(qp), Completion { dw0: cntlid as u32, ..Default::default() }))
}
