//! The attached controllers: attach (bring-up on the RPC thread, then the admin queue handed to
//! reactor 0's poller), detach, and the table the RPCs read.

use super::backend::NsBackend;
use crate::bdev::{registry, BdevError, BdevProps};
use crate::framework::{self, IoDeviceId, PollStatus, Poller};
use crate::rpc::{self, RpcError};
use ferry_nvme::host::ctrlr::{Controller, CtrlrOpts, CtrlrState, Driver, Shared};
use ferry_nvme::host::pcie::{Layout, PciFunction, PcieTransport};
use ferry_nvme::host::reconnect::ReconnectPolicy;
use ferry_nvme::host::tcp::TcpTransport;
use ferry_nvme::host::{HostError, IoConnect};
use ferry_nvme::spec::{Command, Completion};
use ferry_nvme::tcp::Digests;
use serde::Deserialize;
use serde_json::{json, Value};
use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// NVMe/TCP's well-known I/O port.
pub const DEFAULT_PORT: &str = "4420";
/// How long the first bring-up may take unless `fabrics_connect_timeout_us` says.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);
/// Keep-alive timeout asked for (SPDK's default `keep_alive_timeout_ms`).
const KATO_MS: u32 = 10_000;
/// I/O queue entries asked for (SPDK's default `io_queue_requests` per queue is larger; the
/// controller's CAP.MQES and MAXCMD bound it).
const IO_QUEUE_SIZE: u16 = 128;
/// What a controller is reached through, from `trtype` and `traddr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// NVMe/TCP at this address.
    Tcp(SocketAddr),
    /// An NVMe PCI function served over vfio-user: the endpoint's directory (SPDK's traddr;
    /// the socket is `<traddr>/cntrl`).
    VfioUser(PathBuf),
    /// An NVMe PCI function bound to vfio-pci.
    Pcie(String),
}

/// How often the admin queue is polled.
const ADMIN_POLL: Duration = Duration::from_millis(5);

/// `bdev_nvme_attach_controller`'s parameters (SPDK's names). `priority`,
/// `allow_unrecognized_csi` and `multipath_opts` are accepted and have no effect (one path,
/// NVM command set only).
#[derive(Deserialize, Clone, Debug)]
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
pub struct AttachParams {
    pub name: String,
    pub trtype: String,
    pub traddr: String,
    pub adrfam: Option<String>,
    pub trsvcid: Option<String>,
    pub priority: Option<String>,
    #[serde(default)]
    pub subnqn: String,
    pub hostnqn: Option<String>,
    pub hostaddr: Option<String>,
    pub hostsvcid: Option<String>,
    #[serde(default)]
    pub prchk_reftag: bool,
    #[serde(default)]
    pub prchk_guard: bool,
    #[serde(default)]
    pub hdgst: bool,
    #[serde(default)]
    pub ddgst: bool,
    pub fabrics_connect_timeout_us: Option<u64>,
    pub multipath: Option<String>,
    pub num_io_queues: Option<u32>,
    #[serde(default)]
    pub ctrlr_loss_timeout_sec: i32,
    #[serde(default)]
    pub reconnect_delay_sec: u32,
    #[serde(default)]
    pub fast_io_fail_timeout_sec: u32,
    pub psk: Option<String>,
    pub max_bdevs: Option<u32>,
    pub dhchap_key: Option<String>,
    pub dhchap_ctrlr_key: Option<String>,
    #[serde(default)]
    pub allow_unrecognized_csi: bool,
    pub multipath_opts: Option<Value>,
    #[serde(default)]
    pub disable_sq_flow_control: bool,
}

impl AttachParams {
    /// SPDK's transport id of the controller.
    pub fn trid(&self) -> Value {
        if !self.is_tcp() {
            return json!({ "trtype": self.trtype_name(), "traddr": self.traddr, "subnqn": self.subnqn });
        }
        json!({
            "trtype": "TCP",
            "adrfam": if self.adrfam.as_deref().is_some_and(|a| a.eq_ignore_ascii_case("ipv6")) { "IPv6" } else { "IPv4" },
            "traddr": self.traddr,
            "trsvcid": self.trsvcid.as_deref().unwrap_or(DEFAULT_PORT),
            "subnqn": self.subnqn,
        })
    }

    fn is_tcp(&self) -> bool {
        self.trtype.eq_ignore_ascii_case("tcp")
    }

    /// SPDK's spelling of the transport type given.
    pub fn trtype_name(&self) -> &'static str {
        if self.is_tcp() {
            "TCP"
        } else if self.trtype.eq_ignore_ascii_case("pcie") {
            "PCIe"
        } else {
            "VFIOUSER"
        }
    }

    /// The parameters `save_config` writes to attach the controller again.
    pub fn saved(&self) -> Value {
        if !self.is_tcp() {
            let mut v = json!({
                "name": self.name,
                "trtype": self.trtype_name(),
                "traddr": self.traddr,
                "ctrlr_loss_timeout_sec": self.ctrlr_loss_timeout_sec,
                "reconnect_delay_sec": self.reconnect_delay_sec,
                "fast_io_fail_timeout_sec": self.fast_io_fail_timeout_sec,
            });
            if !self.subnqn.is_empty() {
                v["subnqn"] = json!(self.subnqn);
            }
            if let Some(n) = self.num_io_queues {
                v["num_io_queues"] = json!(n);
            }
            return v;
        }
        let mut v = json!({
            "name": self.name,
            "trtype": "TCP",
            "adrfam": self.trid()["adrfam"],
            "traddr": self.traddr,
            "trsvcid": self.trsvcid.as_deref().unwrap_or(DEFAULT_PORT),
            "subnqn": self.subnqn,
            "prchk_reftag": false,
            "prchk_guard": false,
            "hdgst": self.hdgst,
            "ddgst": self.ddgst,
            "ctrlr_loss_timeout_sec": self.ctrlr_loss_timeout_sec,
            "reconnect_delay_sec": self.reconnect_delay_sec,
            "fast_io_fail_timeout_sec": self.fast_io_fail_timeout_sec,
        });
        if let Some(h) = &self.hostnqn {
            v["hostnqn"] = json!(h);
        }
        if let Some(n) = self.num_io_queues {
            v["num_io_queues"] = json!(n);
        }
        v
    }

    fn policy(&self) -> ReconnectPolicy {
        ReconnectPolicy {
            ctrlr_loss_timeout_sec: self.ctrlr_loss_timeout_sec,
            reconnect_delay_sec: self.reconnect_delay_sec,
            fast_io_fail_timeout_sec: self.fast_io_fail_timeout_sec,
        }
    }

    /// Refuses what Ferry cannot do, and resolves the address.
    fn check(&self) -> Result<Target, RpcError> {
        let unsupported = |what: &str| Err(RpcError::invalid_params(format!("{what} is not supported")));
        let vfio_user = self.trtype.eq_ignore_ascii_case("vfiouser");
        let pcie = self.trtype.eq_ignore_ascii_case("pcie");
        if !self.is_tcp() && !vfio_user && !pcie {
            return Err(RpcError::invalid_params(format!(
                "trtype {:?} is not supported (tcp, pcie or vfiouser)",
                self.trtype
            )));
        }
        if self.prchk_reftag || self.prchk_guard {
            return unsupported("protection information checking (prchk_reftag, prchk_guard)");
        }
        if self.psk.is_some() || self.dhchap_key.is_some() || self.dhchap_ctrlr_key.is_some() {
            return unsupported("TLS and DH-HMAC-CHAP (psk, dhchap_key, dhchap_ctrlr_key)");
        }
        if self.hostaddr.is_some() || self.hostsvcid.is_some() {
            return unsupported("choosing the local address (hostaddr, hostsvcid)");
        }
        if self.disable_sq_flow_control {
            return unsupported("disable_sq_flow_control");
        }
        if let Some(m) = &self.multipath {
            if !matches!(m.as_str(), "disable" | "failover" | "multipath") {
                return Err(RpcError::invalid_params(format!(
                    "multipath {m:?} must be disable, failover or multipath"
                )));
            }
        }
        if (self.is_tcp() && self.subnqn.is_empty()) || self.subnqn.len() > 223 {
            return Err(RpcError::invalid_params("subnqn is required (at most 223 bytes)"));
        }
        if self.hostnqn.as_ref().is_some_and(|h| h.is_empty() || h.len() > 223) {
            return Err(RpcError::invalid_params("hostnqn must be 1 to 223 bytes"));
        }
        if let Some(n) = self.num_io_queues {
            if n == 0 || n > 65536 {
                return Err(RpcError::invalid_params("num_io_queues must be 1 to 65536"));
            }
        }
        self.policy().validate().map_err(RpcError::invalid_params)?;
        if (vfio_user || pcie)
            && (self.hdgst || self.ddgst || self.adrfam.is_some() || self.trsvcid.as_deref().is_some_and(|s| s != "0"))
        {
            return unsupported("digests, adrfam and trsvcid on a PCIe or vfio-user controller");
        }
        if pcie {
            let bdf = crate::vfio::parse_bdf(&self.traddr).map_err(|e| RpcError::invalid_params(e.to_string()))?;
            return Ok(Target::Pcie(bdf));
        }
        if vfio_user {
            let dir = PathBuf::from(&self.traddr);
            if !dir.is_absolute() {
                return Err(RpcError::invalid_params(format!(
                    "traddr {:?} must be an absolute directory",
                    self.traddr
                )));
            }
            return Ok(Target::VfioUser(dir));
        }
        let v6 = match self.adrfam.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("ipv4") => false,
            Some("ipv6") => true,
            Some(other) => return Err(RpcError::invalid_params(format!("adrfam {other:?} is not supported"))),
        };
        let ip: IpAddr = self
            .traddr
            .parse()
            .map_err(|_| RpcError::invalid_params(format!("traddr {:?} is not an IP address", self.traddr)))?;
        if ip.is_ipv6() != v6 {
            return Err(RpcError::invalid_params(format!("traddr {} does not match adrfam", self.traddr)));
        }
        let port: u16 = self
            .trsvcid
            .as_deref()
            .unwrap_or(DEFAULT_PORT)
            .parse()
            .map_err(|_| RpcError::invalid_params("trsvcid must be a port number"))?;
        Ok(Target::Tcp(SocketAddr::new(ip, port)))
    }
}

/// One attached controller, as the RPCs and its bdevs see it.
pub struct NvmeCtrlr {
    pub name: String,
    pub params: AttachParams,
    pub hostnqn: String,
    pub shared: Arc<Shared>,
    pub transport: Arc<dyn IoConnect>,
    /// What holds the device itself (the PCI function with its VFIO group, or the transport),
    /// alive until the last queue pair on any reactor lets go: detach waits for it.
    pub device: Weak<dyn Any + Send + Sync>,
    /// The per-reactor I/O channel (queue pair) shared by the namespaces' bdevs.
    pub io_device: IoDeviceId,
    /// The first namespace's id: its bdev carries the controller in `save_config`.
    pub first_nsid: u32,
    pub bdevs: Vec<String>,
}

impl NvmeCtrlr {
    /// One entry of `bdev_nvme_get_controllers`.
    pub fn info(&self) -> Value {
        let s = self.shared.snapshot();
        json!({
            "name": self.name,
            "ctrlrs": [{
                "state": s.state.spdk_name(),
                "trid": self.params.trid(),
                "cntlid": s.cntlid,
                "host": { "nqn": self.hostnqn, "addr": "", "svcid": "" },
            }],
        })
    }
}

static CTRLRS: Mutex<Vec<Arc<NvmeCtrlr>>> = Mutex::new(Vec::new());

fn table() -> MutexGuard<'static, Vec<Arc<NvmeCtrlr>>> {
    CTRLRS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The controller called `name`.
pub fn find(name: &str) -> Option<Arc<NvmeCtrlr>> {
    table().iter().find(|c| c.name == name).cloned()
}

/// Every attached controller, in attach order.
pub fn list() -> Vec<Arc<NvmeCtrlr>> {
    table().clone()
}

/// A controller's admin side on reactor 0: its driver and the poller that drives it.
struct Admin {
    driver: Rc<RefCell<Box<dyn Driver>>>,
    _poller: Poller,
}

thread_local! {
    /// Reactor 0's controllers, by name.
    static ADMIN_POLLERS: RefCell<HashMap<String, Admin>> = RefCell::new(HashMap::new());
}

/// How long an admin command of an RPC may take.
const ADMIN_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs admin command `cmd` (reading `len` bytes) on controller `name` and waits for it.
pub fn admin_command(name: &str, cmd: Command, len: usize) -> Result<(Completion, Vec<u8>), RpcError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let n = name.to_string();
    let sent = framework::call(0, move || {
        let driver = ADMIN_POLLERS.with(|p| p.borrow().get(&n).map(|a| a.driver.clone()));
        match driver {
            Some(d) => d.borrow_mut().admin_command(cmd, len, Box::new(move |r| drop(tx.send(r)))),
            None => drop(tx.send(Err(HostError::Closed))),
        }
    });
    sent.map_err(|e| RpcError::errno(libc::EIO, format!("reaching the admin queue: {e}")))?;
    match rx.recv_timeout(ADMIN_COMMAND_TIMEOUT) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(RpcError::errno(libc::EIO, format!("controller {name}: {e}"))),
        Err(_) => Err(RpcError::errno(libc::ETIMEDOUT, format!("controller {name}: no answer within 30 s"))),
    }
}

/// A host NQN of SPDK's form for this process, when the caller gives none.
fn default_hostnqn() -> String {
    static NQN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NQN.get_or_init(|| format!("nqn.2014-08.org.nvmexpress:uuid:{}", uuid::Uuid::new_v4())).clone()
}

/// The host identifier: the uuid of a `...:uuid:<uuid>` NQN, or a new one (kept for the
/// controller's life, so every reconnect presents the same host).
fn hostid(hostnqn: &str) -> [u8; 16] {
    match hostnqn.rsplit_once(":uuid:").and_then(|(_, u)| uuid::Uuid::parse_str(u).ok()) {
        Some(u) => *u.as_bytes(),
        None => *uuid::Uuid::new_v4().as_bytes(),
    }
}

/// Attaches the controller and registers a bdev per namespace; returns their names.
pub fn attach(p: AttachParams) -> Result<Vec<String>, RpcError> {
    let target = p.check()?;
    registry::validate_name(&p.name)?;
    if find(&p.name).is_some() {
        return Err(RpcError::errno(libc::EEXIST, format!("A controller named {} already exists", p.name)));
    }
    let hostnqn = p.hostnqn.clone().unwrap_or_else(default_hostnqn);
    let timeout =
        p.fabrics_connect_timeout_us.filter(|&us| us > 0).map(Duration::from_micros).unwrap_or(ATTACH_TIMEOUT);
    let reactors = framework::reactors().len().max(1);
    let num_io_queues = p.num_io_queues.map(|n| n.min(u16::MAX as u32) as u16).unwrap_or(reactors as u16);
    let mut opts = CtrlrOpts {
        kato_ms: KATO_MS,
        num_io_queues,
        io_queue_size: IO_QUEUE_SIZE,
        policy: p.policy(),
        bringup_timeout: timeout,
        quiesce_io_threads: true,
    };
    let Attached { driver: mut c, transport, device } = match &target {
        Target::Tcp(addr) => {
            let t = Arc::new(TcpTransport {
                addr: *addr,
                subnqn: p.subnqn.clone(),
                hostnqn: hostnqn.clone(),
                hostid: hostid(&hostnqn),
                digests: Digests { header: p.hdgst, data: p.ddgst },
                connect_timeout: timeout,
            });
            let device = Arc::downgrade(&t) as Weak<dyn Any + Send + Sync>;
            Attached { driver: Box::new(Controller::new(t.clone(), opts)), transport: t, device }
        }
        Target::Pcie(bdf) => {
            let layout = pcie_opts(&mut opts, num_io_queues);
            let f = crate::vfio::open_pci(bdf, layout.len(), opts.num_io_queues + 1)
                .map_err(|e| RpcError::errno(libc::EIO, format!("attaching {}: {e}", p.name)))?;
            pcie_driver(f, layout, opts, &p.name)?
        }
        Target::VfioUser(dir) => {
            let layout = pcie_opts(&mut opts, num_io_queues);
            let socket = crate::nvmf::vfio_user::socket_path(&dir.display().to_string());
            let f = crate::vfio_user::client::VfioUserFunction::connect(
                &socket,
                layout.len(),
                opts.num_io_queues + 1,
                None,
                timeout,
            )
            .map_err(|e| RpcError::errno(libc::EIO, format!("attaching {} at {}: {e}", p.name, socket.display())))?;
            pcie_driver(f, layout, opts, &p.name)?
        }
    };
    // The first bring-up runs here, on the RPC's thread, without the call lock.
    loop {
        let progress = c.poll(Instant::now());
        match c.state() {
            CtrlrState::Enabled => break,
            CtrlrState::Deleted => {
                let e = c.error().map(ToString::to_string).unwrap_or_default();
                return Err(RpcError::errno(libc::EIO, format!("attaching {} ({}): {e}", p.name, p.traddr)));
            }
            _ if !progress => std::thread::sleep(Duration::from_millis(1)),
            _ => {}
        }
    }
    let max_bdevs = p.max_bdevs.unwrap_or(128) as usize;
    let namespaces: Vec<_> = c.namespaces().iter().take(max_bdevs).cloned().collect();
    let ctrlr = Arc::new(NvmeCtrlr {
        name: p.name.clone(),
        hostnqn,
        shared: c.shared().clone(),
        transport,
        device,
        io_device: IoDeviceId::new(),
        first_nsid: namespaces.first().map(|n| n.nsid).unwrap_or(0),
        bdevs: namespaces.iter().map(|n| format!("{}n{}", p.name, n.nsid)).collect(),
        params: p,
    });
    let registered = rpc::serialized(|| {
        let mut t = table();
        if t.iter().any(|o| o.name == ctrlr.name) {
            return Err(RpcError::errno(libc::EEXIST, format!("A controller named {} already exists", ctrlr.name)));
        }
        let mut done = Vec::new();
        for ns in &namespaces {
            let props = BdevProps {
                name: format!("{}n{}", ctrlr.name, ns.nsid),
                uuid: uuid_of(&ns.data.nguid),
                block_size: ns.data.block_size,
                num_blocks: ns.data.nsze,
            };
            match registry::register(props, Box::new(NsBackend { ctrlr: ctrlr.clone(), nsid: ns.nsid })) {
                Ok(b) => done.push(b.name().to_string()),
                Err(e) => {
                    for n in &done {
                        let _ = registry::unregister(n, Some("nvme"));
                    }
                    return Err(RpcError::from(e));
                }
            }
        }
        t.push(ctrlr.clone());
        Ok(done)
    });
    let names = match registered {
        Ok(n) => n,
        Err(e) => {
            c.shutdown();
            return Err(e);
        }
    };
    let name = ctrlr.name.clone();
    let started = framework::call(0, move || {
        let driver = Rc::new(RefCell::new(c));
        let c = driver.clone();
        let mut reported = false;
        let mut quiesce_sent = None;
        let poller_name = name.clone();
        let poller = framework::poller_register("nvme_ctrlr_admin", ADMIN_POLL, move || {
            let mut c = c.borrow_mut();
            let progress = c.poll(Instant::now());
            if let Some(generation) = c.shared().quiesce_wanted() {
                if quiesce_sent != Some(generation) {
                    quiesce_sent = Some(generation);
                    quiesce_reactors(c.shared().clone(), generation);
                }
            }
            if c.state() == CtrlrState::Deleted && !reported {
                reported = true;
                // Lost for good (ctrlr_loss_timeout_sec): detach as the RPC would, off the reactor.
                let n = poller_name.clone();
                std::thread::spawn(move || {
                    if let Err(e) = detach(&n) {
                        tracing::warn!("deleting lost NVMe controller {n}: {}", e.message);
                    }
                });
            }
            PollStatus::from(progress)
        });
        ADMIN_POLLERS.with(|p| p.borrow_mut().insert(name, Admin { driver, _poller: poller }));
    });
    if let Err(e) = started {
        // Dropped first: detach waits for the last reference to the device.
        let name = ctrlr.name.clone();
        drop(ctrlr);
        let _ = detach(&name);
        return Err(RpcError::errno(libc::EIO, format!("starting the admin poller: {e}")));
    }
    Ok(names)
}

/// Tells the controller once every reactor has seen generation `generation`. A reactor runs
/// messages between pollers, so once each has run one sent now, none is still inside a
/// channel's poll or submission that read an older generation (and could ring an old queue's
/// doorbell after the new queues exist); later ones read the new generation and leave the old
/// queue alone. (SPDK's bdev_nvme does the same with `spdk_for_each_channel` before it resets a
/// controller.)
fn quiesce_reactors(shared: Arc<Shared>, generation: u64) {
    framework::for_each_reactor(|| {}, move || shared.mark_quiesced(generation));
}

/// A controller being attached.
struct Attached {
    /// Its driver, polled on reactor 0.
    driver: Box<dyn Driver>,
    /// What the reactors open I/O queues with.
    transport: Arc<dyn IoConnect>,
    /// What owns the device: queue pairs hold it past the transport (see [`NvmeCtrlr::device`]).
    device: Weak<dyn Any + Send + Sync>,
}

/// Options of a PCIe controller (no keep alive: no KATO was set; at most the I/O queues one
/// shadow doorbell page holds) and the DMA arena its queues need.
fn pcie_opts(opts: &mut CtrlrOpts, num_io_queues: u16) -> Layout {
    opts.kato_ms = 0;
    opts.num_io_queues = num_io_queues.min(ferry_nvme::host::pcie::transport::MAX_IO_QUEUES);
    Layout::new(opts.num_io_queues, IO_QUEUE_SIZE)
}

/// The controller over PCI function `f` (VFIO or vfio-user), shadow doorbells on.
fn pcie_driver<F: PciFunction>(f: Arc<F>, layout: Layout, opts: CtrlrOpts, name: &str) -> Result<Attached, RpcError> {
    let device = Arc::downgrade(&f) as Weak<dyn Any + Send + Sync>;
    let t = PcieTransport::new(f, layout, true)
        .map_err(|e| RpcError::errno(libc::EIO, format!("attaching {name}: {e}")))?;
    let t = Arc::new(t);
    Ok(Attached { driver: Box::new(Controller::new(t.clone(), opts)), transport: t, device })
}

/// A bdev uuid from the namespace's NGUID, when it has one.
fn uuid_of(nguid: &[u8; 16]) -> Option<uuid::Uuid> {
    (nguid.iter().any(|&b| b != 0)).then(|| uuid::Uuid::from_bytes(*nguid))
}

/// Unregisters the controller's bdevs and stops its admin queue.
pub fn detach(name: &str) -> Result<(), RpcError> {
    let c = {
        let mut t = table();
        let i = t
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| RpcError::errno(libc::ENODEV, format!("No such device: {name}")))?;
        t.remove(i)
    };
    for b in &c.bdevs {
        match registry::unregister(b, Some("nvme")) {
            Ok(_) | Err(BdevError::NotFound(_)) => {}
            Err(e) => tracing::warn!("unregistering {b}: {e}"),
        }
    }
    let n = name.to_string();
    framework::call(0, move || ADMIN_POLLERS.with(|p| p.borrow_mut().remove(&n)).is_some())
        .map_err(|e| RpcError::errno(libc::EIO, format!("stopping the admin poller: {e}")))?;
    // Dropping the poller dropped the controller (its admin connection); channels still open
    // see the controller deleted and fail their I/O; idle I/O queue pairs are closed.
    c.shared.mark_deleted();
    let device = c.io_device;
    if let Err(e) = framework::call_on_each(move || super::channel::forget_idle(device)) {
        tracing::warn!("closing {name}'s idle I/O queues: {e}");
    }
    // The function (its VFIO group, BARs and DMA mappings) goes with the last queue pair that
    // holds it, which the bdevs' channels drop as the reactors close them; the transport
    // object itself may be gone earlier. Answer once the device has gone, as SPDK's detach
    // answers after the controller is destructed, so that whoever detached can open the
    // function again at once. Bounded: a channel a frontend keeps open releases it later, and
    // this thread must not wait on that for long.
    let device = c.device.clone();
    drop(c);
    let deadline = Instant::now() + DETACH_RELEASE_WAIT;
    while device.strong_count() > 0 {
        if Instant::now() >= deadline {
            tracing::warn!(controller = name, "detached; its device is still in use and is released when that ends");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // The count reaches zero when the last holder lets go, before the device's own drop has
    // closed its VFIO group and unmapped its DMA (a guest test saw the group still open after
    // the answer). That holder is a reactor closing a channel: once every reactor has run a
    // message sent now, the drop it was in has finished.
    if let Err(e) = framework::call_on_each(|| {}) {
        tracing::warn!("waiting for {name}'s device to close: {e}");
    }
    Ok(())
}

/// How long a detach waits for the controller's device to be released.
const DETACH_RELEASE_WAIT: Duration = Duration::from_secs(5);
