//! PLACEHOLDER written by the tcp part so the NVMe/TCP target compiles and its tests run:
//! replaced at merge by the model's `src/nvme/subsystem.rs`. Only the items the transport and
//! its bare-bones RPCs call, with the interface's signatures; namespaces are just numbers
//! here (the placeholder queue pair keeps their data in memory).

use super::error::NvmeError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// A subsystem's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubsystemKind {
    /// Namespaces on bdevs.
    Nvme,
    /// The discovery service.
    Discovery,
}

/// nvmf_create_subsystem's parameters.
#[derive(Clone, Debug)]
pub struct SubsystemConfig {
    /// NQN.
    pub nqn: String,
    /// Serial number.
    pub serial_number: String,
    /// Model number.
    pub model_number: String,
    /// Namespaces at most (0 = 32).
    pub max_namespaces: u32,
    /// Any host may connect.
    pub allow_any_host: bool,
    /// ANA reporting.
    pub ana_reporting: bool,
    /// Lowest controller id.
    pub min_cntlid: u16,
    /// Highest controller id.
    pub max_cntlid: u16,
}

/// A transport address a subsystem listens on.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct ListenAddress {
    /// "TCP".
    pub trtype: String,
    /// "IPv4" or "IPv6".
    pub adrfam: String,
    /// Address.
    pub traddr: String,
    /// Port.
    pub trsvcid: String,
}

/// nvmf_subsystem_add_ns's parameters.
#[derive(Clone, Debug)]
pub struct NamespaceConfig {
    /// NSID (None: the lowest free).
    pub nsid: Option<u32>,
    /// The bdev.
    pub bdev_name: String,
    /// NGUID.
    pub nguid: Option<[u8; 16]>,
    /// EUI-64.
    pub eui64: Option<[u8; 8]>,
    /// UUID.
    pub uuid: Option<uuid::Uuid>,
    /// ANA group.
    pub anagrpid: Option<u32>,
}

/// A subsystem (placeholder).
pub struct Subsystem {
    cfg: SubsystemConfig,
    kind: SubsystemKind,
    listeners: Mutex<Vec<ListenAddress>>,
    pub(crate) nsids: Mutex<Vec<u32>>,
    /// Placeholder data: 512-byte blocks written, by (nsid, lba).
    pub(crate) blocks: Mutex<HashMap<(u32, u64), Vec<u8>>>,
}

fn registry() -> &'static Mutex<Vec<Arc<Subsystem>>> {
    static R: OnceLock<Mutex<Vec<Arc<Subsystem>>>> = OnceLock::new();
    R.get_or_init(|| {
        let cfg = SubsystemConfig {
            nqn: ferry_nvme::spec::DISCOVERY_NQN.to_string(),
            serial_number: String::new(),
            model_number: String::new(),
            max_namespaces: 0,
            allow_any_host: true,
            ana_reporting: false,
            min_cntlid: 1,
            max_cntlid: 0xffef,
        };
        Mutex::new(vec![Arc::new(Subsystem::new(cfg, SubsystemKind::Discovery))])
    })
}

impl Subsystem {
    fn new(cfg: SubsystemConfig, kind: SubsystemKind) -> Subsystem {
        Subsystem {
            cfg,
            kind,
            listeners: Mutex::new(Vec::new()),
            nsids: Mutex::new(Vec::new()),
            blocks: Mutex::new(HashMap::new()),
        }
    }

    /// NQN.
    pub fn nqn(&self) -> &str {
        &self.cfg.nqn
    }

    /// Kind.
    pub fn kind(&self) -> SubsystemKind {
        self.kind
    }

    /// Adds a namespace (placeholder: the bdev must exist; its data is kept in memory).
    pub fn add_namespace(&self, ns: NamespaceConfig) -> Result<u32, NvmeError> {
        if crate::bdev::registry::get(&ns.bdev_name).is_none() {
            return Err(NvmeError::NotFound(ns.bdev_name));
        }
        let mut nsids = self.nsids.lock().unwrap();
        let nsid = ns.nsid.unwrap_or_else(|| (1..).find(|n| !nsids.contains(n)).unwrap_or(1));
        if nsids.contains(&nsid) {
            return Err(NvmeError::Exists(format!("nsid {nsid}")));
        }
        nsids.push(nsid);
        Ok(nsid)
    }

    /// Whether `hostnqn` may connect.
    pub fn host_allowed(&self, _hostnqn: &str) -> bool {
        self.cfg.allow_any_host
    }

    /// Adds a listener.
    pub fn add_listener(&self, a: ListenAddress) -> Result<(), NvmeError> {
        let mut l = self.listeners.lock().unwrap();
        if l.contains(&a) {
            return Err(NvmeError::Exists(format!("listener {}:{}", a.traddr, a.trsvcid)));
        }
        l.push(a);
        Ok(())
    }

    /// Listeners.
    pub fn listeners(&self) -> Vec<ListenAddress> {
        self.listeners.lock().unwrap().clone()
    }
}

/// Creates a subsystem.
pub fn create_subsystem(cfg: SubsystemConfig) -> Result<Arc<Subsystem>, NvmeError> {
    let mut r = registry().lock().unwrap();
    if r.iter().any(|s| s.nqn() == cfg.nqn) {
        return Err(NvmeError::Exists(cfg.nqn));
    }
    let s = Arc::new(Subsystem::new(cfg, SubsystemKind::Nvme));
    r.push(s.clone());
    Ok(s)
}

/// The subsystem called `nqn`.
pub fn subsystem(nqn: &str) -> Option<Arc<Subsystem>> {
    registry().lock().unwrap().iter().find(|s| s.nqn() == nqn).cloned()
}
