//! What the iSCSI RPCs configure and what a login consults: the global options, portal
//! groups (where to listen), initiator groups (who may connect), auth groups (CHAP secrets)
//! and target nodes (a name, its LUNs, who may see it through which portals, its CHAP and
//! digest policy). One process-wide table behind a mutex: it changes only by RPC and is read
//! once per login, never on the data path.
//!
//! Never hold the lock while waiting for a reactor (`framework::call`): logins take it on the
//! reactors, so that would deadlock. Gather what you need, drop the guard, then call.

use crate::scsi::ScsiTarget;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// SPDK's default prefix for node names given without `iqn.`/`eui.`/`naa.`.
pub const DEFAULT_NODE_BASE: &str = "iqn.2016-06.io.spdk";

/// The global options (`iscsi_set_options`, `iscsi_get_options`), SPDK's keys and defaults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IscsiOptions {
    /// SPDK's CHAP file (accepted, unused: auth groups come by RPC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_file: Option<String>,
    /// Prefix of node names.
    pub node_base: String,
    /// Seconds a NOP-In ping may stay unanswered before the connection is dropped.
    pub nop_timeout: u32,
    /// Seconds of silence after which the target pings (NOP-In), 0 = never.
    pub nop_in_interval: u32,
    /// Discovery sessions: no CHAP.
    pub disable_chap: bool,
    /// Discovery sessions: CHAP required.
    pub require_chap: bool,
    /// Discovery sessions: mutual CHAP.
    pub mutual_chap: bool,
    /// Discovery sessions: the auth group (0 = none).
    pub chap_group: u32,
    /// Most sessions at once.
    pub max_sessions: u32,
    /// Most commands in flight per session (MaxCmdSN - ExpCmdSN + 1).
    pub max_queue_depth: u32,
    /// MaxConnections offered (1: no MC/S).
    pub max_connections_per_session: u32,
    /// DefaultTime2Wait offered.
    pub default_time2wait: u32,
    /// DefaultTime2Retain offered.
    pub default_time2retain: u32,
    /// FirstBurstLength offered.
    pub first_burst_length: u32,
    /// ImmediateData offered.
    pub immediate_data: bool,
    /// ErrorRecoveryLevel offered (Ferry implements 0).
    pub error_recovery_level: u32,
    /// Accept a second session with an ISID already in use by the same initiator (instead of
    /// reinstating it).
    pub allow_duplicated_isid: bool,
    /// SPDK's pool size of large Data-In tasks (accepted).
    pub max_large_datain_per_connection: u32,
    /// SPDK's R2Ts in flight per connection (accepted; MaxOutstandingR2T is negotiated).
    pub max_r2t_per_connection: u32,
    /// SPDK's PDU pool size (accepted, unused: Ferry sizes per connection).
    pub pdu_pool_size: u32,
    /// SPDK's immediate-data pool size (accepted, unused).
    pub immediate_data_pool_size: u32,
    /// SPDK's Data-Out pool size (accepted, unused).
    pub data_out_pool_size: u32,
}

impl Default for IscsiOptions {
    fn default() -> Self {
        IscsiOptions {
            auth_file: None,
            node_base: DEFAULT_NODE_BASE.to_string(),
            nop_timeout: 60,
            nop_in_interval: 30,
            disable_chap: false,
            require_chap: false,
            mutual_chap: false,
            chap_group: 0,
            max_sessions: 128,
            max_queue_depth: 64,
            max_connections_per_session: 2,
            default_time2wait: 2,
            default_time2retain: 20,
            first_burst_length: 8192,
            immediate_data: true,
            error_recovery_level: 0,
            allow_duplicated_isid: false,
            max_large_datain_per_connection: 64,
            max_r2t_per_connection: 4,
            // SPDK's PDU_POOL_SIZE of the defaults: 128 sessions * 2 * (64 + 64 + 2 * 4 + 8).
            pdu_pool_size: 36864,
            immediate_data_pool_size: 16384,
            data_out_pool_size: 2048,
        }
    }
}

/// One listening address of a portal group.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Portal {
    /// Host address (IPv4, or IPv6 with or without brackets).
    pub host: String,
    /// Port, a string as SPDK takes it.
    pub port: String,
}

/// A portal group: addresses that share a target portal group tag.
#[derive(Debug, Clone)]
pub struct PortalGroup {
    /// The tag (TargetPortalGroupTag), 1..=65535.
    pub tag: u32,
    /// Where it listens.
    pub portals: Vec<Portal>,
    /// Private groups are not listed by SendTargets (login redirection).
    pub private: bool,
    /// CHAP policy of discovery through this group (`iscsi_portal_group_set_auth`); None = the global one.
    pub discovery_auth: Option<ChapPolicy>,
    /// Its listeners, once started (`wait` delays them to `iscsi_start_portal_group`).
    pub listener: Option<Arc<super::portal::Listener>>,
}

/// An initiator group: which initiator names from which networks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitiatorGroup {
    /// The tag.
    pub tag: u32,
    /// Initiator names, `ANY`, or a name prefixed with `!` to deny it.
    pub initiators: Vec<String>,
    /// Networks: `ANY`, an address, or `address/prefix`.
    pub netmasks: Vec<String>,
}

/// One CHAP secret of an auth group.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuthSecret {
    /// The initiator's CHAP name.
    pub user: String,
    /// The secret the initiator proves it knows.
    pub secret: String,
    /// The target's CHAP name for mutual CHAP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub muser: Option<String>,
    /// The secret the target proves it knows (mutual CHAP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msecret: Option<String>,
}

/// An auth group: a tag and its secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthGroup {
    /// The tag (referenced as `chap_group`).
    pub tag: u32,
    /// The secrets.
    pub secrets: Vec<AuthSecret>,
}

/// Who must prove what, for a target node or for discovery.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChapPolicy {
    /// CHAP is refused (AuthMethod=None only).
    pub disable: bool,
    /// CHAP is required.
    pub require: bool,
    /// The target proves itself too.
    pub mutual: bool,
    /// The auth group with the secrets (0 = none).
    pub group: u32,
}

impl ChapPolicy {
    /// The AuthMethod values the target accepts, in preference order.
    pub fn methods(&self) -> &'static [&'static str] {
        match (self.disable, self.require) {
            (true, _) => &["None"],
            (false, true) => &["CHAP"],
            (false, false) => &["CHAP", "None"],
        }
    }
}

/// A LUN of a target node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLun {
    /// The LUN number.
    pub lun_id: u64,
    /// The bdev behind it.
    pub bdev_name: String,
    /// The unit's medium is removable (a Ferry extension; SPDK has no such LUN option).
    pub removable: bool,
}

/// A target node: a name, its LUNs, who may log in through which portals.
pub struct TargetNode {
    /// The full name (`iqn....`).
    pub name: String,
    /// The alias (TargetAlias).
    pub alias: String,
    /// (portal group tag, initiator group tag) pairs: an initiator in the group may log in
    /// through the portal group.
    pub pg_ig_maps: Vec<(u32, u32)>,
    /// The LUNs as configured.
    pub luns: Vec<NodeLun>,
    /// Most commands in flight per session.
    pub queue_depth: u32,
    /// CHAP policy.
    pub auth: ChapPolicy,
    /// HeaderDigest=CRC32C required.
    pub header_digest: bool,
    /// DataDigest=CRC32C required.
    pub data_digest: bool,
    /// The SCSI target device, swapped whole when a LUN is added (connections re-read it
    /// when `generation` moves).
    pub scsi: Mutex<Arc<ScsiTarget>>,
    /// Bumped on every change connections must notice (a LUN added or removed).
    pub generation: std::sync::atomic::AtomicU64,
}

impl TargetNode {
    /// The SCSI target as of now.
    pub fn scsi_target(&self) -> Arc<ScsiTarget> {
        self.scsi.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Everything configured.
#[derive(Default)]
pub struct IscsiConfig {
    /// Global options.
    pub options: IscsiOptions,
    /// Portal groups by tag, in creation order.
    pub portal_groups: Vec<PortalGroup>,
    /// Initiator groups, in creation order.
    pub initiator_groups: Vec<InitiatorGroup>,
    /// Auth groups, in creation order.
    pub auth_groups: Vec<AuthGroup>,
    /// Target nodes, in creation order.
    pub nodes: Vec<Arc<TargetNode>>,
    /// Whether `iscsi_set_options` has been called (SPDK takes it once).
    pub options_set: bool,
    /// Earlier versions of nodes, replaced by a change to a plain field (maps, auth, LUN
    /// list) while sessions may still hold them: a LUN change reaches them too (see
    /// [`IscsiConfig::set_node_scsi`]).
    pub superseded: Vec<std::sync::Weak<TargetNode>>,
    /// The next `ScsiTarget::id` given to a new node (identifies a node across its versions).
    pub next_node_id: u32,
}

static CONFIG: Mutex<Option<IscsiConfig>> = Mutex::new(None);

/// The configuration, locked (RPC handlers and logins only).
pub fn lock() -> ConfigGuard {
    let mut g = CONFIG.lock().unwrap_or_else(|e| e.into_inner());
    if g.is_none() {
        *g = Some(IscsiConfig::default());
    }
    ConfigGuard(g)
}

/// A locked configuration.
pub struct ConfigGuard(MutexGuard<'static, Option<IscsiConfig>>);

impl std::ops::Deref for ConfigGuard {
    type Target = IscsiConfig;
    fn deref(&self) -> &IscsiConfig {
        self.0.as_ref().expect("initialised by lock()")
    }
}

impl std::ops::DerefMut for ConfigGuard {
    fn deref_mut(&mut self) -> &mut IscsiConfig {
        self.0.as_mut().expect("initialised by lock()")
    }
}

/// Why a login to a target is refused (mapped to login status 0x0203 / 0x0202).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No such target (status 0x0203, Not Found).
    NotFound,
    /// The initiator may not see it through this portal group (0x0202, Authorization Failure).
    NotAllowed,
}

impl IscsiConfig {
    /// The node called `name` (full name, or short name under `node_base`).
    pub fn node(&self, name: &str) -> Option<&Arc<TargetNode>> {
        let full = self.full_name(name);
        self.nodes.iter().find(|n| n.name.eq_ignore_ascii_case(&full))
    }

    /// `name` with `node_base` prefixed unless it already is an iqn/eui/naa name.
    pub fn full_name(&self, name: &str) -> String {
        let lower = name.to_ascii_lowercase();
        if lower.starts_with("iqn.") || lower.starts_with("eui.") || lower.starts_with("naa.") {
            name.to_string()
        } else {
            format!("{}:{}", self.options.node_base, name)
        }
    }

    /// Makes `scsi` the SCSI target of node `name` (its current version and every earlier
    /// version a session still holds) and bumps their `generation`, so that connections
    /// re-read it.
    pub fn set_node_scsi(&mut self, name: &str, scsi: Arc<ScsiTarget>) {
        self.superseded.retain(|w| w.strong_count() > 0);
        let id = scsi.id;
        let versions = self
            .nodes
            .iter()
            .cloned()
            .chain(self.superseded.iter().filter_map(std::sync::Weak::upgrade))
            .filter(|n| n.name == name && n.scsi_target().id == id);
        for n in versions {
            *n.scsi.lock().unwrap_or_else(|e| e.into_inner()) = scsi.clone();
            n.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
    }

    /// The portal group with `tag`.
    pub fn portal_group(&self, tag: u32) -> Option<&PortalGroup> {
        self.portal_groups.iter().find(|g| g.tag == tag)
    }

    /// The initiator group with `tag`.
    pub fn initiator_group(&self, tag: u32) -> Option<&InitiatorGroup> {
        self.initiator_groups.iter().find(|g| g.tag == tag)
    }

    /// The auth group with `tag`.
    pub fn auth_group(&self, tag: u32) -> Option<&AuthGroup> {
        self.auth_groups.iter().find(|g| g.tag == tag)
    }

    /// The secret of CHAP name `user` in auth group `group`.
    pub fn secret(&self, group: u32, user: &str) -> Option<AuthSecret> {
        self.auth_group(group)?.secrets.iter().find(|s| s.user == user).cloned()
    }

    /// Whether `initiator` at `addr` may use `node` through portal group `pg_tag`.
    pub fn allowed(&self, node: &TargetNode, pg_tag: u32, initiator: &str, addr: IpAddr) -> bool {
        node.pg_ig_maps
            .iter()
            .filter(|(pg, _)| *pg == pg_tag)
            .any(|(_, ig)| self.initiator_group(*ig).is_some_and(|g| group_allows(g, initiator, addr)))
    }

    /// The node a normal-session login names, if it exists and the initiator may use it here.
    pub fn target_for_login(
        &self,
        target: &str,
        pg_tag: u32,
        initiator: &str,
        addr: IpAddr,
    ) -> Result<Arc<TargetNode>, Refusal> {
        let node = self.node(target).ok_or(Refusal::NotFound)?;
        if self.allowed(node, pg_tag, initiator, addr) {
            Ok(node.clone())
        } else {
            Err(Refusal::NotAllowed)
        }
    }

    /// SendTargets: each node `initiator` at `addr` may see, with the portals (as
    /// `host:port,tag`) of every non-private group it may use. `which` is `All`, or one name
    /// (RFC 7143 §12.3; an empty `which` is the session's own target, given as `current`).
    pub fn send_targets(
        &self,
        which: &str,
        current: Option<&str>,
        initiator: &str,
        addr: IpAddr,
    ) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        for node in &self.nodes {
            let wanted = match which {
                "All" => true,
                "" => current.is_some_and(|c| c.eq_ignore_ascii_case(&node.name)),
                name => name.eq_ignore_ascii_case(&node.name),
            };
            if !wanted {
                continue;
            }
            let mut addrs = Vec::new();
            for (pg_tag, _) in &node.pg_ig_maps {
                let Some(pg) = self.portal_group(*pg_tag) else { continue };
                if pg.private || !self.allowed(node, *pg_tag, initiator, addr) {
                    continue;
                }
                for p in &pg.portals {
                    let a = format!("{},{}", format_host_port(&p.host, &p.port), pg.tag);
                    if !addrs.contains(&a) {
                        addrs.push(a);
                    }
                }
            }
            if !addrs.is_empty() {
                out.push((node.name.clone(), addrs));
            }
        }
        out
    }

    /// The CHAP policy of discovery through portal group `pg_tag`.
    pub fn discovery_auth(&self, pg_tag: u32) -> ChapPolicy {
        self.portal_group(pg_tag).and_then(|g| g.discovery_auth).unwrap_or(ChapPolicy {
            disable: self.options.disable_chap,
            require: self.options.require_chap,
            mutual: self.options.mutual_chap,
            group: self.options.chap_group,
        })
    }
}

/// `host:port`, with IPv6 hosts in brackets.
pub fn format_host_port(host: &str, port: &str) -> String {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if h.contains(':') {
        format!("[{h}]:{port}")
    } else {
        format!("{h}:{port}")
    }
}

/// Whether initiator group `g` admits `initiator` at `addr`: a name rule (an exact name,
/// case-insensitive as iSCSI names are, or `ANY`; a `!name` denies and wins) and a network
/// rule must both match.
pub fn group_allows(g: &InitiatorGroup, initiator: &str, addr: IpAddr) -> bool {
    let mut name_ok = false;
    for rule in &g.initiators {
        if let Some(denied) = rule.strip_prefix('!') {
            if denied.eq_ignore_ascii_case("ANY") || denied.eq_ignore_ascii_case(initiator) {
                return false;
            }
        } else if rule.eq_ignore_ascii_case("ANY") || rule.eq_ignore_ascii_case(initiator) {
            name_ok = true;
        }
    }
    name_ok && g.netmasks.iter().any(|m| netmask_allows(m, addr))
}

/// Whether network rule `mask` (`ANY`, an address, or `address/prefix`, IPv6 possibly in
/// brackets) contains `addr`. An IPv4-mapped IPv6 peer is compared as IPv4.
pub fn netmask_allows(mask: &str, addr: IpAddr) -> bool {
    if mask.eq_ignore_ascii_case("ANY") {
        return true;
    }
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        a => a,
    };
    let (net, prefix) = match mask.split_once('/') {
        Some((n, p)) => (n, p.parse::<u32>().ok()),
        None => (mask, None),
    };
    let net = net.trim_start_matches('[').trim_end_matches(']');
    let Ok(net) = net.parse::<IpAddr>() else { return false };
    match (net, addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let p = prefix.unwrap_or(32);
            if p > 32 {
                return false;
            }
            let m = if p == 0 { 0 } else { u32::MAX << (32 - p) };
            u32::from(n) & m == u32::from(a) & m
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let p = prefix.unwrap_or(128);
            if p > 128 {
                return false;
            }
            let m = if p == 0 { 0 } else { u128::MAX << (128 - p) };
            u128::from(n) & m == u128::from(a) & m
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ig(initiators: &[&str], netmasks: &[&str]) -> InitiatorGroup {
        InitiatorGroup {
            tag: 1,
            initiators: initiators.iter().map(|s| s.to_string()).collect(),
            netmasks: netmasks.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn netmasks_match_prefixes() {
        let a: IpAddr = "192.168.1.7".parse().unwrap();
        assert!(netmask_allows("ANY", a));
        assert!(netmask_allows("192.168.1.0/24", a));
        assert!(!netmask_allows("192.168.2.0/24", a));
        assert!(netmask_allows("192.168.1.7", a));
        assert!(netmask_allows("0.0.0.0/0", a));
        assert!(!netmask_allows("192.168.1.0/33", a));
        assert!(!netmask_allows("garbage", a));
        let mapped: IpAddr = "::ffff:192.168.1.7".parse().unwrap();
        assert!(netmask_allows("192.168.1.0/24", mapped));
        assert!(netmask_allows("[fe80::]/16", "fe80::1".parse().unwrap()));
    }

    #[test]
    fn initiator_rules_need_a_name_and_a_network_and_denials_win() {
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(group_allows(&ig(&["ANY"], &["ANY"]), "iqn.x", a));
        assert!(group_allows(&ig(&["IQN.X"], &["127.0.0.0/8"]), "iqn.x", a));
        assert!(!group_allows(&ig(&["iqn.y"], &["ANY"]), "iqn.x", a));
        assert!(!group_allows(&ig(&["ANY", "!iqn.x"], &["ANY"]), "iqn.x", a));
        assert!(!group_allows(&ig(&["ANY"], &["10.0.0.0/8"]), "iqn.x", a));
    }

    #[test]
    fn short_names_get_the_node_base() {
        let c = IscsiConfig::default();
        assert_eq!(c.full_name("disk1"), "iqn.2016-06.io.spdk:disk1");
        assert_eq!(c.full_name("iqn.2001-04.com.example:d"), "iqn.2001-04.com.example:d");
        assert_eq!(format_host_port("::1", "3260"), "[::1]:3260");
        assert_eq!(format_host_port("[::1]", "3260"), "[::1]:3260");
    }
}
