//! NVMe subsystems: the registry (the discovery subsystem always first), each subsystem's
//! namespaces on bdevs, allowed hosts, listeners and live controllers.
//!
//! Callable from any thread (RPC workers, reactors, a bdev's event callback). Locks are taken
//! in one order: the registry, then one subsystem, then one controller; a controller is told
//! of namespace changes after the subsystem's lock is released.

use super::controller::{AenKind, Controller};
use super::error::NvmeError;
use super::namespace::Namespace;
use crate::bdev::{self, BdevEvent};
use ferry_nvme::spec::DISCOVERY_NQN;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};
use uuid::Uuid;

/// SPDK's default maximum number of namespaces of a subsystem.
pub const DEFAULT_MAX_NAMESPACES: u32 = 32;
/// SPDK's default serial number.
pub const DEFAULT_SERIAL: &str = "00000000000000000000";
/// SPDK's default model number.
pub const DEFAULT_MODEL: &str = "SPDK bdev Controller";
/// Longest NQN (NVMe Base 2.0 §4.5: 223 bytes).
pub const MAX_NQN_LEN: usize = 223;
/// SPDK_NVMF_NQN_MIN_LEN.
const NQN_MIN_LEN: usize = 11;
/// SPDK_NVMF_NQN_UUID_PRE.
const NQN_UUID_PREFIX: &str = "nqn.2014-08.org.nvmexpress:uuid:";
/// SPDK_DOMAIN_LABEL_MAX_LEN.
const DOMAIN_LABEL_MAX_LEN: usize = 63;
/// Highest controller ID a subsystem may hand out (0xFFF0.. are reserved).
pub const MAX_CNTLID: u16 = 0xffef;

/// What a subsystem serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubsystemKind {
    /// An NVM subsystem with namespaces.
    Nvme,
    /// The discovery service (`nqn.2014-08.org.nvmexpress.discovery`).
    Discovery,
}

/// `nvmf_create_subsystem`'s parameters, with SPDK's defaults from [`SubsystemConfig::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubsystemConfig {
    /// The subsystem NQN.
    pub nqn: String,
    /// Serial number (Identify Controller SN, at most 20 ASCII characters).
    pub serial_number: String,
    /// Model number (Identify Controller MN, at most 40 ASCII characters).
    pub model_number: String,
    /// Most namespaces (0: SPDK's default, 32).
    pub max_namespaces: u32,
    /// Any host may connect.
    pub allow_any_host: bool,
    /// ANA reporting (CMIC bit 3, log page 0x0C).
    pub ana_reporting: bool,
    /// Lowest controller ID handed out.
    pub min_cntlid: u16,
    /// Highest controller ID handed out.
    pub max_cntlid: u16,
}

impl SubsystemConfig {
    /// SPDK's defaults for `nqn`.
    pub fn new(nqn: &str) -> SubsystemConfig {
        SubsystemConfig {
            nqn: nqn.to_string(),
            serial_number: DEFAULT_SERIAL.to_string(),
            model_number: DEFAULT_MODEL.to_string(),
            max_namespaces: 0,
            allow_any_host: false,
            ana_reporting: false,
            min_cntlid: 1,
            max_cntlid: MAX_CNTLID,
        }
    }

    /// The namespace limit with 0 meaning the default.
    pub fn effective_max_namespaces(&self) -> u32 {
        if self.max_namespaces == 0 {
            DEFAULT_MAX_NAMESPACES
        } else {
            self.max_namespaces
        }
    }
}

/// A transport address a subsystem listens on (`listen_address` of the RPCs).
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct ListenAddress {
    /// Transport type ("TCP").
    pub trtype: String,
    /// Address family ("IPv4", "IPv6").
    pub adrfam: String,
    /// Transport address.
    pub traddr: String,
    /// Transport service id (the port).
    pub trsvcid: String,
}

impl ListenAddress {
    /// Whether two addresses name the same listener (types and families compare without case,
    /// as SPDK's `spdk_nvme_transport_id_compare`).
    pub fn same(&self, other: &ListenAddress) -> bool {
        self.trtype.eq_ignore_ascii_case(&other.trtype)
            && self.adrfam.eq_ignore_ascii_case(&other.adrfam)
            && self.traddr == other.traddr
            && self.trsvcid == other.trsvcid
    }
}

/// `nvmf_subsystem_add_ns`'s namespace.
#[derive(Debug, Clone, Default)]
pub struct NamespaceConfig {
    /// The NSID wanted (None: the lowest free).
    pub nsid: Option<u32>,
    /// The bdev served.
    pub bdev_name: String,
    /// NGUID (default: from the uuid).
    pub nguid: Option<[u8; 16]>,
    /// EUI-64 (default: none).
    pub eui64: Option<[u8; 8]>,
    /// UUID (default: the bdev's).
    pub uuid: Option<Uuid>,
    /// ANA group (default: the nsid).
    pub anagrpid: Option<u32>,
}

/// Asymmetric namespace access state of a listener (ANA log page 0x0C state codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnaState {
    /// Optimized (1).
    Optimized,
    /// Non-optimized (2).
    NonOptimized,
    /// Inaccessible (3).
    Inaccessible,
    /// Persistent loss (4).
    PersistentLoss,
    /// Change (0xF).
    Change,
}

impl AnaState {
    /// The state code of the ANA log page.
    pub fn code(self) -> u8 {
        match self {
            AnaState::Optimized => 0x1,
            AnaState::NonOptimized => 0x2,
            AnaState::Inaccessible => 0x3,
            AnaState::PersistentLoss => 0x4,
            AnaState::Change => 0xf,
        }
    }
}

/// One live controller, as `nvmf_subsystem_get_controllers` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ControllerInfo {
    /// Controller ID.
    pub cntlid: u16,
    /// The host's NQN.
    pub hostnqn: String,
    /// The host identifier in UUID form.
    pub hostid: String,
    /// I/O queues connected.
    pub num_io_qpairs: u32,
}

struct NsEntry {
    ns: Arc<Namespace>,
    /// Which add this entry came from: a bdev event of an earlier namespace on the same
    /// NSID must not remove a later one.
    token: u64,
}

struct State {
    cfg: SubsystemConfig,
    namespaces: BTreeMap<u32, NsEntry>,
    hosts: Vec<String>,
    listeners: Vec<ListenAddress>,
    controllers: Vec<Arc<Controller>>,
    ana: Vec<(ListenAddress, AnaState)>,
    next_cntlid: u16,
}

/// One subsystem. See the module documentation.
pub struct Subsystem {
    nqn: String,
    kind: SubsystemKind,
    me: Weak<Subsystem>,
    state: Mutex<State>,
    /// Bumped on every namespace change: queue pairs compare it to drop stale channels.
    ns_generation: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Registry {
    subsystems: Vec<Arc<Subsystem>>,
    /// Discovery log generation counter (GENCTR).
    genctr: u64,
    /// Port IDs of listen addresses, stable for the process's life.
    port_ids: HashMap<ListenAddress, u16>,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(|| {
    let mut cfg = SubsystemConfig::new(DISCOVERY_NQN);
    cfg.allow_any_host = true;
    cfg.max_namespaces = 0;
    Mutex::new(Registry {
        subsystems: vec![Subsystem::new(cfg, SubsystemKind::Discovery)],
        genctr: 0,
        port_ids: HashMap::new(),
    })
});

static NS_TOKEN: AtomicU64 = AtomicU64::new(1);

/// Checks an NQN as SPDK does (`nvmf_nqn_is_valid`), refusing control characters too.
pub fn validate_nqn(nqn: &str) -> Result<(), NvmeError> {
    if nqn.bytes().any(|b| b.is_ascii_control()) {
        return Err(NvmeError::InvalidParam(format!("invalid NQN \"{nqn}\": control characters")));
    }
    check_nqn(nqn).map_err(NvmeError::InvalidParam)
}

/// SPDK's `nvmf_nqn_is_valid` (NVMe Base 2.0 §4.5: `nqn.yyyy-mm.reverse.domain:name`, the
/// uuid form, or the discovery NQN); Err says what is wrong.
pub fn check_nqn(nqn: &str) -> Result<(), String> {
    let b = nqn.as_bytes();
    let len = b.len();
    if len > MAX_NQN_LEN {
        return Err(format!("NQN \"{nqn}\": length {len} > max {MAX_NQN_LEN}"));
    }
    if len < NQN_MIN_LEN {
        return Err(format!("NQN \"{nqn}\": length {len} < min {NQN_MIN_LEN}"));
    }
    if nqn == DISCOVERY_NQN {
        return Ok(());
    }
    if let Some(u) = nqn.strip_prefix(NQN_UUID_PREFIX) {
        if u.len() != 36 || Uuid::try_parse(u).is_err() {
            return Err(format!("NQN \"{nqn}\": the uuid is not formatted correctly"));
        }
        return Ok(());
    }
    if !nqn.starts_with("nqn.") {
        return Err(format!("NQN \"{nqn}\" must begin with \"nqn.\""));
    }
    let d = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    if !(d(4) && d(5) && d(6) && d(7) && b.get(8) == Some(&b'-') && d(9) && d(10) && b.get(11) == Some(&b'.')) {
        return Err(format!("invalid date code in NQN \"{nqn}\""));
    }
    let end = match nqn.find(':') {
        Some(i) if i < len - 1 => i,
        _ => return Err(format!("NQN \"{nqn}\" must contain a user specified name with a ':' as a prefix")),
    };
    // The reverse domain: labels start with a letter, hold letters, digits and '-', and end
    // with a letter or digit.
    #[derive(PartialEq)]
    enum S {
        Letter,
        Ldh,
        Any,
    }
    let bad = |what: &str| Err(format!("invalid domain name in NQN \"{nqn}\": {what}"));
    let mut state = S::Letter;
    let mut label = 0usize;
    for (i, &c) in b.iter().enumerate().take(end).skip(12) {
        if label > DOMAIN_LABEL_MAX_LEN {
            return bad("a label is too long");
        }
        match state {
            S::Letter if c.is_ascii_alphabetic() => {
                state = S::Any;
                label += 1;
            }
            S::Letter => return bad("labels must start with a letter"),
            _ if c.is_ascii_alphanumeric() => {
                state = S::Any;
                label += 1;
            }
            _ if c == b'-' => {
                if i == end - 1 {
                    return bad("labels must end with an alphanumeric symbol");
                }
                state = S::Ldh;
                label += 1;
            }
            S::Ldh if c == b'.' => return bad("labels must end with an alphanumeric symbol"),
            S::Any if c == b'.' => {
                state = S::Letter;
                label = 0;
            }
            _ => return bad("labels may contain only [a-z,A-Z,0-9,'-','.']"),
        }
    }
    Ok(())
}

fn validate_config(cfg: &SubsystemConfig) -> Result<(), NvmeError> {
    validate_nqn(&cfg.nqn)?;
    let printable = |s: &str| s.bytes().all(|b| (0x20..0x7f).contains(&b));
    if cfg.serial_number.len() > 20 || !printable(&cfg.serial_number) {
        return Err(NvmeError::InvalidParam(format!("invalid serial number \"{}\"", cfg.serial_number)));
    }
    if cfg.model_number.len() > 40 || !printable(&cfg.model_number) {
        return Err(NvmeError::InvalidParam(format!("invalid model number \"{}\"", cfg.model_number)));
    }
    if cfg.min_cntlid == 0 || cfg.max_cntlid > MAX_CNTLID || cfg.min_cntlid > cfg.max_cntlid {
        return Err(NvmeError::InvalidParam(format!("invalid cntlid range [{}-{}]", cfg.min_cntlid, cfg.max_cntlid)));
    }
    if cfg.max_namespaces > 0xffff_fffe {
        return Err(NvmeError::InvalidParam("max_namespaces too large".into()));
    }
    Ok(())
}

/// Creates a subsystem (`nvmf_create_subsystem`).
pub fn create_subsystem(cfg: SubsystemConfig) -> Result<Arc<Subsystem>, NvmeError> {
    validate_config(&cfg)?;
    let sub = {
        let mut r = lock(&REGISTRY);
        if r.subsystems.iter().any(|s| s.nqn == cfg.nqn) {
            return Err(NvmeError::Exists(format!("subsystem {}", cfg.nqn)));
        }
        let sub = Subsystem::new(cfg, SubsystemKind::Nvme);
        r.subsystems.push(sub.clone());
        sub
    };
    tracing::info!(nqn = %sub.nqn, "nvme: subsystem created");
    discovery_changed();
    Ok(sub)
}

/// Deletes a subsystem (`nvmf_delete_subsystem`): its controllers end (their transports are
/// told), its namespaces close once their last queue lets go.
pub fn delete_subsystem(nqn: &str) -> Result<(), NvmeError> {
    if nqn == DISCOVERY_NQN {
        return Err(NvmeError::InvalidParam("the discovery subsystem cannot be deleted".into()));
    }
    let sub = {
        let mut r = lock(&REGISTRY);
        let i = r
            .subsystems
            .iter()
            .position(|s| s.nqn == nqn)
            .ok_or_else(|| NvmeError::NotFound(format!("subsystem {nqn}")))?;
        r.subsystems.remove(i)
    };
    let ctrlrs = std::mem::take(&mut lock(&sub.state).controllers);
    for c in ctrlrs {
        c.end("subsystem deleted");
    }
    lock(&sub.state).namespaces.clear();
    sub.ns_generation.fetch_add(1, Ordering::AcqRel);
    tracing::info!(nqn, "nvme: subsystem deleted");
    discovery_changed();
    Ok(())
}

/// The subsystem called `nqn` (the discovery subsystem always exists).
pub fn subsystem(nqn: &str) -> Option<Arc<Subsystem>> {
    lock(&REGISTRY).subsystems.iter().find(|s| s.nqn == nqn).cloned()
}

/// Every subsystem: discovery first, then in creation order.
pub fn subsystems() -> Vec<Arc<Subsystem>> {
    lock(&REGISTRY).subsystems.clone()
}

/// The discovery log's generation counter (GENCTR).
pub fn discovery_generation() -> u64 {
    lock(&REGISTRY).genctr
}

/// The port ID the discovery log gives `addr` (assigned on first sight, then stable).
pub fn port_id(addr: &ListenAddress) -> u16 {
    let mut r = lock(&REGISTRY);
    if let Some((_, id)) = r.port_ids.iter().find(|(a, _)| a.same(addr)) {
        return *id;
    }
    let id = r.port_ids.len() as u16;
    r.port_ids.insert(addr.clone(), id);
    id
}

/// Something the discovery log shows changed: a new GENCTR, and a discovery log change
/// notice to every discovery controller that asked for it.
fn discovery_changed() {
    let disc = {
        let mut r = lock(&REGISTRY);
        r.genctr += 1;
        r.subsystems[0].clone()
    };
    for c in disc.live_controllers() {
        c.raise(AenKind::DiscoveryLogChange);
    }
}

impl Subsystem {
    fn new(cfg: SubsystemConfig, kind: SubsystemKind) -> Arc<Subsystem> {
        let nqn = cfg.nqn.clone();
        let next_cntlid = cfg.min_cntlid;
        Arc::new_cyclic(|me| Subsystem {
            nqn,
            kind,
            me: me.clone(),
            state: Mutex::new(State {
                cfg,
                namespaces: BTreeMap::new(),
                hosts: Vec::new(),
                listeners: Vec::new(),
                controllers: Vec::new(),
                ana: Vec::new(),
                next_cntlid,
            }),
            ns_generation: AtomicU64::new(0),
        })
    }

    /// Its NQN.
    pub fn nqn(&self) -> &str {
        &self.nqn
    }

    /// NVM or discovery.
    pub fn kind(&self) -> SubsystemKind {
        self.kind
    }

    /// Its configuration (with the current allow_any_host).
    pub fn config(&self) -> SubsystemConfig {
        lock(&self.state).cfg.clone()
    }

    /// Generation of the namespace set (changes on every add, remove or resize).
    pub fn ns_generation(&self) -> u64 {
        self.ns_generation.load(Ordering::Acquire)
    }

    /// Adds a namespace on `nc.bdev_name` (opened writable, without a claim, as SPDK's
    /// frontends do) and returns its NSID. Live controllers get a changed-namespace notice.
    pub fn add_namespace(&self, nc: NamespaceConfig) -> Result<u32, NvmeError> {
        if self.kind == SubsystemKind::Discovery {
            return Err(NvmeError::InvalidParam("the discovery subsystem has no namespaces".into()));
        }
        let token = NS_TOKEN.fetch_add(1, Ordering::Relaxed);
        let ctrlrs;
        let nsid;
        {
            let mut st = lock(&self.state);
            let max = st.cfg.effective_max_namespaces();
            nsid = match nc.nsid {
                Some(0) | Some(0xffff_ffff) => {
                    return Err(NvmeError::InvalidParam(format!("invalid NSID {}", nc.nsid.unwrap_or(0))))
                }
                Some(n) if n > max => {
                    return Err(NvmeError::InvalidParam(format!("NSID {n} above max_namespaces {max}")))
                }
                Some(n) if st.namespaces.contains_key(&n) => {
                    return Err(NvmeError::Exists(format!("namespace {n} of {}", self.nqn)))
                }
                Some(n) => n,
                None => (1..=max)
                    .find(|n| !st.namespaces.contains_key(n))
                    .ok_or_else(|| NvmeError::NoResources(format!("subsystem {} has {max} namespaces", self.nqn)))?,
            };
            if let Some(anagrpid) = nc.anagrpid {
                if anagrpid == 0 || anagrpid > max {
                    return Err(NvmeError::InvalidParam(format!("invalid ANA group ID {anagrpid}")));
                }
            }
            let weak = self.me.clone();
            let mut desc = bdev::open(
                &nc.bdev_name,
                true,
                Box::new(move |ev, _b| {
                    if let Some(sub) = weak.upgrade() {
                        sub.bdev_event(nsid, token, ev);
                    }
                }),
            )?;
            // As SPDK's target: the namespace holds the bdev's write claim (released when the
            // descriptor closes), so no other module writes under a host's feet.
            desc.claim("NVMe-oF Target")?;
            let ns = Namespace::new(nsid, desc, nc.nguid, nc.eui64, nc.uuid, nc.anagrpid);
            for e in st.namespaces.values() {
                if e.ns.uuid == ns.uuid || e.ns.nguid == ns.nguid {
                    return Err(NvmeError::Exists(format!(
                        "a namespace with the UUID or NGUID of bdev {} in {}",
                        nc.bdev_name, self.nqn
                    )));
                }
            }
            st.namespaces.insert(nsid, NsEntry { ns: Arc::new(ns), token });
            self.ns_generation.fetch_add(1, Ordering::AcqRel);
            ctrlrs = st.controllers.clone();
        }
        tracing::info!(nqn = %self.nqn, nsid, bdev = %nc.bdev_name, "nvme: namespace added");
        for c in ctrlrs {
            c.namespace_changed(nsid);
        }
        Ok(nsid)
    }

    /// Removes namespace `nsid`; live controllers get a changed-namespace notice.
    pub fn remove_namespace(&self, nsid: u32) -> Result<(), NvmeError> {
        self.remove_ns_where(nsid, None)
    }

    fn remove_ns_where(&self, nsid: u32, token: Option<u64>) -> Result<(), NvmeError> {
        let ctrlrs = {
            let mut st = lock(&self.state);
            match st.namespaces.get(&nsid) {
                Some(e) if token.is_none_or(|t| t == e.token) => {}
                _ => return Err(NvmeError::NotFound(format!("namespace {nsid} of {}", self.nqn))),
            }
            st.namespaces.remove(&nsid);
            self.ns_generation.fetch_add(1, Ordering::AcqRel);
            st.controllers.clone()
        };
        tracing::info!(nqn = %self.nqn, nsid, "nvme: namespace removed");
        for c in ctrlrs {
            c.namespace_changed(nsid);
        }
        Ok(())
    }

    fn bdev_event(&self, nsid: u32, token: u64, ev: BdevEvent) {
        match ev {
            BdevEvent::Remove => {
                tracing::warn!(nqn = %self.nqn, nsid, "nvme: bdev hot-removed; removing the namespace");
                let _ = self.remove_ns_where(nsid, Some(token));
            }
            BdevEvent::Resize => {
                let ctrlrs = {
                    let st = lock(&self.state);
                    if st.namespaces.get(&nsid).is_none_or(|e| e.token != token) {
                        return;
                    }
                    self.ns_generation.fetch_add(1, Ordering::AcqRel);
                    st.controllers.clone()
                };
                for c in ctrlrs {
                    c.namespace_changed(nsid);
                }
            }
        }
    }

    /// Its namespaces by NSID.
    pub fn namespaces(&self) -> Vec<Arc<Namespace>> {
        lock(&self.state).namespaces.values().map(|e| e.ns.clone()).collect()
    }

    /// Namespace `nsid`, if active.
    pub fn namespace(&self, nsid: u32) -> Option<Arc<Namespace>> {
        lock(&self.state).namespaces.get(&nsid).map(|e| e.ns.clone())
    }

    /// Allows `hostnqn` to connect.
    pub fn add_host(&self, hostnqn: &str) -> Result<(), NvmeError> {
        validate_nqn(hostnqn)?;
        {
            let mut st = lock(&self.state);
            if st.hosts.iter().any(|h| h == hostnqn) {
                return Err(NvmeError::Exists(format!("host {hostnqn} of {}", self.nqn)));
            }
            st.hosts.push(hostnqn.to_string());
        }
        discovery_changed();
        Ok(())
    }

    /// Stops allowing `hostnqn`; its controllers end (unless any host is allowed), as SPDK's.
    pub fn remove_host(&self, hostnqn: &str) -> Result<(), NvmeError> {
        let gone = {
            let mut st = lock(&self.state);
            let i = st
                .hosts
                .iter()
                .position(|h| h == hostnqn)
                .ok_or_else(|| NvmeError::NotFound(format!("host {hostnqn} of {}", self.nqn)))?;
            st.hosts.remove(i);
            if st.cfg.allow_any_host {
                Vec::new()
            } else {
                st.controllers.iter().filter(|c| c.hostnqn() == hostnqn).cloned().collect()
            }
        };
        for c in gone {
            c.end("host removed from the subsystem");
        }
        discovery_changed();
        Ok(())
    }

    /// The allowed hosts.
    pub fn hosts(&self) -> Vec<String> {
        lock(&self.state).hosts.clone()
    }

    /// Lets any host connect (or only the listed ones).
    pub fn set_allow_any_host(&self, allow: bool) {
        lock(&self.state).cfg.allow_any_host = allow;
        discovery_changed();
    }

    /// Whether `hostnqn` may connect.
    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        let st = lock(&self.state);
        st.cfg.allow_any_host || st.hosts.iter().any(|h| h == hostnqn)
    }

    /// Adds a listener (what the discovery log lists and where hosts may connect).
    pub fn add_listener(&self, a: ListenAddress) -> Result<(), NvmeError> {
        {
            let mut st = lock(&self.state);
            if st.listeners.iter().any(|l| l.same(&a)) {
                return Err(NvmeError::Exists(format!("listener {}:{} of {}", a.traddr, a.trsvcid, self.nqn)));
            }
            st.listeners.push(a);
        }
        discovery_changed();
        Ok(())
    }

    /// Removes a listener; the controllers connected through it end, as SPDK's.
    pub fn remove_listener(&self, a: &ListenAddress) -> Result<(), NvmeError> {
        let gone = {
            let mut st = lock(&self.state);
            let i =
                st.listeners.iter().position(|l| l.same(a)).ok_or_else(|| {
                    NvmeError::NotFound(format!("listener {}:{} of {}", a.traddr, a.trsvcid, self.nqn))
                })?;
            st.listeners.remove(i);
            st.ana.retain(|(l, _)| !l.same(a));
            if self.kind == SubsystemKind::Nvme {
                st.controllers.iter().filter(|c| c.listen().same(a)).cloned().collect()
            } else {
                Vec::new()
            }
        };
        for c in gone {
            c.end("listener removed");
        }
        discovery_changed();
        Ok(())
    }

    /// Its listeners, in the order added.
    pub fn listeners(&self) -> Vec<ListenAddress> {
        lock(&self.state).listeners.clone()
    }

    /// Whether a host connecting through `a` may reach this subsystem: the discovery service
    /// is reachable on every address; an NVM subsystem only on its listeners.
    pub fn listener_allowed(&self, a: &ListenAddress) -> bool {
        self.kind == SubsystemKind::Discovery || lock(&self.state).listeners.iter().any(|l| l.same(a))
    }

    /// Sets the ANA state the namespaces have through listener `a`; controllers connected
    /// through it get an ANA change notice.
    pub fn set_ana_state(&self, a: &ListenAddress, state: AnaState) -> Result<(), NvmeError> {
        let ctrlrs: Vec<Arc<Controller>> = {
            let mut st = lock(&self.state);
            if !st.listeners.iter().any(|l| l.same(a)) {
                return Err(NvmeError::NotFound(format!("listener {}:{} of {}", a.traddr, a.trsvcid, self.nqn)));
            }
            st.ana.retain(|(l, _)| !l.same(a));
            st.ana.push((a.clone(), state));
            st.controllers.iter().filter(|c| c.listen().same(a)).cloned().collect()
        };
        for c in ctrlrs {
            c.ana_changed(state);
        }
        Ok(())
    }

    /// The ANA state through listener `a` (Optimized unless set).
    pub fn ana_state(&self, a: &ListenAddress) -> AnaState {
        lock(&self.state).ana.iter().find(|(l, _)| l.same(a)).map_or(AnaState::Optimized, |(_, s)| *s)
    }

    /// The live controllers (`nvmf_subsystem_get_controllers`).
    pub fn controllers(&self) -> Vec<ControllerInfo> {
        self.live_controllers().iter().map(|c| c.info()).collect()
    }

    pub(crate) fn live_controllers(&self) -> Vec<Arc<Controller>> {
        lock(&self.state).controllers.clone()
    }

    /// Registers a new controller with a free controller ID from the subsystem's range
    /// (handed out round robin, as SPDK's, so a reconnecting host does not get the ID it
    /// had a moment ago). `make` builds it with the ID.
    pub(crate) fn add_controller(
        &self,
        make: impl FnOnce(u16) -> Arc<Controller>,
    ) -> Result<Arc<Controller>, NvmeError> {
        let mut st = lock(&self.state);
        let (min, max) = (st.cfg.min_cntlid, st.cfg.max_cntlid);
        let span = (max - min) as u32 + 1;
        let mut id = st.next_cntlid.clamp(min, max);
        for _ in 0..span {
            if !st.controllers.iter().any(|c| c.cntlid() == id) {
                let c = make(id);
                st.next_cntlid = if id == max { min } else { id + 1 };
                st.controllers.push(c.clone());
                return Ok(c);
            }
            id = if id == max { min } else { id + 1 };
        }
        Err(NvmeError::NoResources(format!("no free controller ID in {}", self.nqn)))
    }

    /// Forgets an ended controller.
    pub(crate) fn remove_controller(&self, c: &Controller) {
        lock(&self.state).controllers.retain(|x| !std::ptr::eq(Arc::as_ptr(x), c));
    }

    /// The live controller `cntlid`.
    pub(crate) fn controller(&self, cntlid: u16) -> Option<Arc<Controller>> {
        lock(&self.state).controllers.iter().find(|c| c.cntlid() == cntlid).cloned()
    }
}
