//! PLACEHOLDER written in the rpc worktree so that `src/nvmf/rpc.rs` compiles and its tests
//! run before the parts merge: replaced at merge by the model's own `src/nvme/subsystem.rs`
//! (the signatures are those fixed in nvme-interfaces.md). A plain in-memory registry: it
//! stores what the RPCs set and opens (and claims) the bdev of a namespace; it has no
//! controllers. No RPC logic lives here.

use super::error::NvmeError;
use super::namespace::Namespace;
use crate::bdev;
use ferry_nvme::spec::DISCOVERY_NQN;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// SPDK's default namespace count of a subsystem (`max_namespaces` 0).
const DEFAULT_MAX_NAMESPACES: u32 = 32;

/// What a subsystem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubsystemKind {
    /// An NVM subsystem with namespaces.
    Nvme,
    /// The discovery subsystem.
    Discovery,
}

/// `nvmf_create_subsystem`'s parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubsystemConfig {
    /// Its NQN.
    pub nqn: String,
    /// Serial number.
    pub serial_number: String,
    /// Model number.
    pub model_number: String,
    /// Namespaces it may hold (0 = 32).
    pub max_namespaces: u32,
    /// Whether any host may connect.
    pub allow_any_host: bool,
    /// ANA reporting.
    pub ana_reporting: bool,
    /// Lowest controller ID.
    pub min_cntlid: u16,
    /// Highest controller ID.
    pub max_cntlid: u16,
}

/// A transport address a subsystem listens on.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct ListenAddress {
    /// "TCP".
    pub trtype: String,
    /// "IPv4" or "IPv6".
    pub adrfam: String,
    /// The address.
    pub traddr: String,
    /// The port.
    pub trsvcid: String,
}

/// `nvmf_subsystem_add_ns`'s namespace.
#[derive(Debug, Clone)]
pub struct NamespaceConfig {
    /// The NSID wanted (None: the lowest free one).
    pub nsid: Option<u32>,
    /// The bdev served.
    pub bdev_name: String,
    /// NGUID (default: the bdev's uuid).
    pub nguid: Option<[u8; 16]>,
    /// EUI-64 (default: none).
    pub eui64: Option<[u8; 8]>,
    /// UUID (default: the bdev's).
    pub uuid: Option<uuid::Uuid>,
    /// ANA group (default: the NSID).
    pub anagrpid: Option<u32>,
}

/// One controller as `nvmf_subsystem_get_controllers` shows it.
#[derive(Debug, Clone)]
pub struct ControllerInfo {
    /// Controller ID.
    pub cntlid: u16,
    /// Its host's NQN.
    pub hostnqn: String,
    /// Its host identifier (uuid form).
    pub hostid: String,
    /// I/O queues connected.
    pub num_io_qpairs: u32,
}

struct State {
    config: SubsystemConfig,
    namespaces: BTreeMap<u32, Arc<Namespace>>,
    hosts: Vec<String>,
    listeners: Vec<ListenAddress>,
}

/// A subsystem.
pub struct Subsystem {
    nqn: String,
    kind: SubsystemKind,
    state: Mutex<State>,
}

fn registry() -> MutexGuard<'static, Vec<Arc<Subsystem>>> {
    static REGISTRY: OnceLock<Mutex<Vec<Arc<Subsystem>>>> = OnceLock::new();
    let m = REGISTRY.get_or_init(|| {
        let config = SubsystemConfig {
            nqn: DISCOVERY_NQN.to_string(),
            serial_number: String::new(),
            model_number: String::new(),
            max_namespaces: 0,
            allow_any_host: true,
            ana_reporting: false,
            min_cntlid: 1,
            max_cntlid: 0xffef,
        };
        Mutex::new(vec![Arc::new(Subsystem::new(config, SubsystemKind::Discovery))])
    });
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Creates an NVM subsystem.
pub fn create_subsystem(cfg: SubsystemConfig) -> Result<Arc<Subsystem>, NvmeError> {
    let mut r = registry();
    if r.iter().any(|s| s.nqn == cfg.nqn) {
        return Err(NvmeError::Exists(format!("subsystem {}", cfg.nqn)));
    }
    let s = Arc::new(Subsystem::new(cfg, SubsystemKind::Nvme));
    r.push(s.clone());
    Ok(s)
}

/// Deletes an NVM subsystem.
pub fn delete_subsystem(nqn: &str) -> Result<(), NvmeError> {
    let mut r = registry();
    let i = r
        .iter()
        .position(|s| s.nqn == nqn && s.kind == SubsystemKind::Nvme)
        .ok_or_else(|| NvmeError::NotFound(format!("subsystem {nqn}")))?;
    r.remove(i);
    Ok(())
}

/// The subsystem called `nqn`.
pub fn subsystem(nqn: &str) -> Option<Arc<Subsystem>> {
    registry().iter().find(|s| s.nqn == nqn).cloned()
}

/// Every subsystem, discovery first, then in creation order.
pub fn subsystems() -> Vec<Arc<Subsystem>> {
    registry().clone()
}

impl Subsystem {
    fn new(config: SubsystemConfig, kind: SubsystemKind) -> Subsystem {
        let state =
            State { config: config.clone(), namespaces: BTreeMap::new(), hosts: Vec::new(), listeners: Vec::new() };
        Subsystem { nqn: config.nqn, kind, state: Mutex::new(state) }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Its NQN.
    pub fn nqn(&self) -> &str {
        &self.nqn
    }

    /// What it is.
    pub fn kind(&self) -> SubsystemKind {
        self.kind
    }

    /// Its configuration (allow_any_host as it is now).
    pub fn config(&self) -> SubsystemConfig {
        self.state().config.clone()
    }

    /// Adds a namespace on an opened and claimed bdev; returns its NSID.
    pub fn add_namespace(&self, ns: NamespaceConfig) -> Result<u32, NvmeError> {
        let mut st = self.state();
        let max = match (self.kind, st.config.max_namespaces) {
            (SubsystemKind::Discovery, _) => 0,
            (_, 0) => DEFAULT_MAX_NAMESPACES,
            (_, n) => n,
        };
        let nsid = match ns.nsid {
            Some(n) => n,
            None => (1..=max)
                .find(|n| !st.namespaces.contains_key(n))
                .ok_or_else(|| NvmeError::InvalidParam("no free namespace ID".into()))?,
        };
        if nsid == 0 || nsid > max {
            return Err(NvmeError::InvalidParam(format!("NSID {nsid} is not in 1..={max}")));
        }
        if st.namespaces.contains_key(&nsid) {
            return Err(NvmeError::Exists(format!("NSID {nsid}")));
        }
        let mut desc = bdev::open(&ns.bdev_name, true, Box::new(|_, _| {}))?;
        desc.claim("NVMe-oF Target")?;
        let n = Namespace::new(nsid, desc, ns.nguid, ns.eui64, ns.uuid, ns.anagrpid);
        st.namespaces.insert(nsid, Arc::new(n));
        Ok(nsid)
    }

    /// Removes namespace `nsid`.
    pub fn remove_namespace(&self, nsid: u32) -> Result<(), NvmeError> {
        self.state().namespaces.remove(&nsid).map(|_| ()).ok_or_else(|| NvmeError::NotFound(format!("NSID {nsid}")))
    }

    /// Its namespaces, by NSID.
    pub fn namespaces(&self) -> Vec<Arc<Namespace>> {
        self.state().namespaces.values().cloned().collect()
    }

    /// Namespace `nsid`.
    pub fn namespace(&self, nsid: u32) -> Option<Arc<Namespace>> {
        self.state().namespaces.get(&nsid).cloned()
    }

    /// Allows a host.
    pub fn add_host(&self, hostnqn: &str) -> Result<(), NvmeError> {
        let mut st = self.state();
        if st.hosts.iter().any(|h| h == hostnqn) {
            return Err(NvmeError::Exists(format!("host {hostnqn}")));
        }
        st.hosts.push(hostnqn.to_string());
        Ok(())
    }

    /// Disallows a host.
    pub fn remove_host(&self, hostnqn: &str) -> Result<(), NvmeError> {
        let mut st = self.state();
        let i =
            st.hosts.iter().position(|h| h == hostnqn).ok_or_else(|| NvmeError::NotFound(format!("host {hostnqn}")))?;
        st.hosts.remove(i);
        Ok(())
    }

    /// The allowed hosts.
    pub fn hosts(&self) -> Vec<String> {
        self.state().hosts.clone()
    }

    /// Lets any host connect, or only the allowed ones.
    pub fn set_allow_any_host(&self, allow: bool) {
        self.state().config.allow_any_host = allow;
    }

    /// Whether `hostnqn` may connect.
    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        let st = self.state();
        st.config.allow_any_host || st.hosts.iter().any(|h| h == hostnqn)
    }

    /// Adds a listener.
    pub fn add_listener(&self, a: ListenAddress) -> Result<(), NvmeError> {
        let mut st = self.state();
        if st.listeners.contains(&a) {
            return Err(NvmeError::Exists(format!("listener {}:{}", a.traddr, a.trsvcid)));
        }
        st.listeners.push(a);
        Ok(())
    }

    /// Removes a listener.
    pub fn remove_listener(&self, a: &ListenAddress) -> Result<(), NvmeError> {
        let mut st = self.state();
        let i = st
            .listeners
            .iter()
            .position(|l| l == a)
            .ok_or_else(|| NvmeError::NotFound(format!("listener {}:{}", a.traddr, a.trsvcid)))?;
        st.listeners.remove(i);
        Ok(())
    }

    /// Its listeners.
    pub fn listeners(&self) -> Vec<ListenAddress> {
        self.state().listeners.clone()
    }

    /// Its controllers (none in this placeholder).
    pub fn controllers(&self) -> Vec<ControllerInfo> {
        Vec::new()
    }
}
