//! The iSCSI target's RPC methods (SPDK's names, parameters, results and errors; see SPDK's
//! `lib/iscsi/iscsi_rpc.c`, `tgt_node.c`, `portal_grp.c`, `init_grp.c`) and the `iscsi`
//! subsystem's saved configuration.
//!
//! Where SPDK answers only "Invalid parameters", Ferry keeps that text and code (-32602) and
//! says what was wrong after it. Secrets are never logged.
//!
//! The configuration lock is never held across a reactor call: listening (and dropping a
//! listener) waits on reactor 0, where logins take that lock.

use super::config::{
    self, AuthGroup, AuthSecret, ChapPolicy, IscsiConfig, IscsiOptions, NodeLun, Portal, PortalGroup, TargetNode,
};
use super::{conn, portal};
use crate::app::config::entry;
use crate::bdev;
use crate::rpc::error::{INTERNAL_ERROR, INVALID_PARAMS};
use crate::rpc::{no_params, parse, Allowed, RpcError, RpcMethod};
use crate::scsi::{ScsiLun, ScsiTarget};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// SPDK_SCSI_DEV_MAX_LUN: LUN ids are 0..=255.
pub const MAX_LUN: i64 = 256;
/// SPDK_SCSI_DEV_MAX_PORTS: portal groups mapped to one node.
pub const MAX_PORTAL_GROUPS_PER_NODE: usize = 4;
/// MAX_TARGET_NAME: longest node name and alias.
const MAX_TARGET_NAME: usize = 223;
/// MAX_INITIATOR / MAX_NETMASK: entries per initiator group.
const MAX_INITIATORS: usize = 256;
/// MAX_INITIATOR_NAME.
const MAX_INITIATOR_NAME: usize = 223;
/// ISCSI_CHAP_MAX_USER_LEN / ISCSI_CHAP_MAX_SECRET_LEN.
const MAX_CHAP_LEN: usize = 255;
/// MAX_PORTAL_ADDR / MAX_PORTAL_PORT.
const MAX_PORTAL_ADDR: usize = 256;
const MAX_PORTAL_PORT: usize = 32;
/// SPDK_ISCSI_MAX_BURST_LENGTH (64 KiB * 16) and SPDK_ISCSI_MIN_FIRST_BURST_LENGTH.
const MAX_BURST_LENGTH: u32 = 65536 * 16;
const MIN_FIRST_BURST_LENGTH: u32 = 512;

/// The iSCSI methods.
pub const METHODS: &[RpcMethod] = &[
    // SPDK_RPC_STARTUP: before framework_start_init, or from the start-up configuration.
    RpcMethod::always("iscsi_set_options", iscsi_set_options).when(Allowed::Startup),
    RpcMethod::runtime("iscsi_get_options", iscsi_get_options),
    RpcMethod::runtime("iscsi_set_discovery_auth", iscsi_set_discovery_auth),
    RpcMethod::runtime("iscsi_create_auth_group", iscsi_create_auth_group),
    RpcMethod::runtime("iscsi_delete_auth_group", iscsi_delete_auth_group),
    RpcMethod::runtime("iscsi_auth_group_add_secret", iscsi_auth_group_add_secret),
    RpcMethod::runtime("iscsi_auth_group_remove_secret", iscsi_auth_group_remove_secret),
    RpcMethod::runtime("iscsi_get_auth_groups", iscsi_get_auth_groups),
    RpcMethod::runtime("iscsi_create_portal_group", iscsi_create_portal_group),
    RpcMethod::runtime("iscsi_start_portal_group", iscsi_start_portal_group),
    RpcMethod::runtime("iscsi_delete_portal_group", iscsi_delete_portal_group),
    RpcMethod::runtime("iscsi_portal_group_set_auth", iscsi_portal_group_set_auth),
    RpcMethod::runtime("iscsi_get_portal_groups", iscsi_get_portal_groups),
    RpcMethod::runtime("iscsi_create_initiator_group", iscsi_create_initiator_group),
    RpcMethod::runtime("iscsi_initiator_group_add_initiators", iscsi_initiator_group_add_initiators),
    RpcMethod::runtime("iscsi_initiator_group_remove_initiators", iscsi_initiator_group_remove_initiators),
    RpcMethod::runtime("iscsi_delete_initiator_group", iscsi_delete_initiator_group),
    RpcMethod::runtime("iscsi_get_initiator_groups", iscsi_get_initiator_groups),
    RpcMethod::runtime("iscsi_create_target_node", iscsi_create_target_node),
    RpcMethod::runtime("iscsi_target_node_add_lun", iscsi_target_node_add_lun),
    RpcMethod::runtime("iscsi_target_node_set_auth", iscsi_target_node_set_auth),
    RpcMethod::runtime("iscsi_target_node_add_pg_ig_maps", iscsi_target_node_add_pg_ig_maps),
    RpcMethod::runtime("iscsi_target_node_remove_pg_ig_maps", iscsi_target_node_remove_pg_ig_maps),
    RpcMethod::runtime("iscsi_delete_target_node", iscsi_delete_target_node),
    RpcMethod::runtime("iscsi_get_target_nodes", iscsi_get_target_nodes),
    RpcMethod::runtime("iscsi_get_connections", iscsi_get_connections),
    RpcMethod::runtime("iscsi_get_stats", iscsi_get_stats),
];

// ----- errors -----

/// SPDK's bare "Invalid parameters" (-32602), with what was wrong after it.
fn invalid(why: impl std::fmt::Display) -> RpcError {
    RpcError::invalid_params(why)
}

/// -32602 with SPDK's own message.
fn spdk(message: impl Into<String>) -> RpcError {
    RpcError::new(INVALID_PARAMS, message)
}

/// SPDK's `iscsi_check_chap_params`: Auto, None, CHAP or CHAP+mutual, and a group >= 0.
fn chap_policy(disable: bool, require: bool, mutual: bool, group: i64) -> Option<ChapPolicy> {
    let valid = matches!((disable, require, mutual), (false, false, false) | (true, false, false) | (false, true, _));
    let group = u32::try_from(group).ok()?;
    valid.then_some(ChapPolicy { disable, require, mutual, group })
}

/// A group tag: SPDK's int32 "integer > 0".
fn tag_of(what: &str, tag: i64) -> Result<u32, RpcError> {
    match u32::try_from(tag) {
        Ok(t) if t > 0 && tag <= i32::MAX as i64 => Ok(t),
        _ => Err(invalid(format!("{what} tag {tag} must be an integer greater than 0"))),
    }
}

// ----- options -----

fn iscsi_set_options(params: Option<Value>) -> Result<Value, RpcError> {
    let opts: IscsiOptions = parse(params)?;
    verify_options(&opts)?;
    let mut c = config::lock();
    if c.options_set {
        return Err(RpcError::new(INTERNAL_ERROR, "Must not call more than once"));
    }
    c.options = opts;
    c.options_set = true;
    tracing::info!(node_base = %c.options.node_base, "iscsi: options set");
    Ok(json!(true))
}

/// SPDK's `iscsi_opts_verify`, with its messages (SPDK checks at subsystem start; Ferry at
/// the call, so a bad value is refused where it was given).
fn verify_options(o: &IscsiOptions) -> Result<(), RpcError> {
    let bad = |m: String| Err(invalid(m));
    if o.max_sessions == 0 || o.max_sessions > 65535 {
        return bad(format!("{} is invalid. MaxSessions must be more than 0 and no more than 65535", o.max_sessions));
    }
    if o.max_connections_per_session == 0 || o.max_connections_per_session > 65535 {
        return bad(format!(
            "{} is invalid. MaxConnectionsPerSession must be more than 0 and no more than 65535",
            o.max_connections_per_session
        ));
    }
    if o.max_queue_depth == 0 || o.max_queue_depth > 256 {
        return bad(format!(
            "{} is invalid. MaxQueueDepth must be more than 0 and no more than 256",
            o.max_queue_depth
        ));
    }
    if o.default_time2wait > 3600 {
        return bad(format!("{} is invalid. DefaultTime2Wait must be no more than 3600", o.default_time2wait));
    }
    if o.default_time2retain > 3600 {
        return bad(format!("{} is invalid. DefaultTime2Retain must be no more than 3600", o.default_time2retain));
    }
    if o.first_burst_length < MIN_FIRST_BURST_LENGTH {
        return bad(format!(
            "FirstBurstLength {} shall be no less than {MIN_FIRST_BURST_LENGTH}",
            o.first_burst_length
        ));
    }
    if o.first_burst_length > MAX_BURST_LENGTH {
        return bad(format!(
            "FirstBurstLength {} shall not exceed MaxBurstLength {MAX_BURST_LENGTH}",
            o.first_burst_length
        ));
    }
    if o.error_recovery_level > 2 {
        return bad(format!("ErrorRecoveryLevel {} is not supported.", o.error_recovery_level));
    }
    if o.nop_in_interval > 60 {
        return bad(format!("{} is invalid. nopinterval must be between 0 and 60", o.nop_in_interval));
    }
    if chap_policy(o.disable_chap, o.require_chap, o.mutual_chap, o.chap_group as i64).is_none() {
        return bad("CHAP params in opts are illegal combination".into());
    }
    for (name, v) in [
        ("MaxLargeDataInPerConnection", o.max_large_datain_per_connection),
        ("MaxR2TPerConnection", o.max_r2t_per_connection),
        ("pdu_pool_size", o.pdu_pool_size),
        ("immediate_data_pool_size", o.immediate_data_pool_size),
        ("data_out_pool_size", o.data_out_pool_size),
    ] {
        if v == 0 {
            return bad(format!("0 is invalid. {name} must be more than 0"));
        }
    }
    if o.node_base.is_empty() || check_iscsi_name(&o.node_base).is_err() {
        return bad(format!("node_base {:?} is not a valid iSCSI name", o.node_base));
    }
    Ok(())
}

fn options_json(o: &IscsiOptions) -> Value {
    serde_json::to_value(o).expect("options serialise")
}

fn iscsi_get_options(params: Option<Value>) -> Result<Value, RpcError> {
    no_params(params)?;
    Ok(options_json(&config::lock().options))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiscoveryAuth {
    #[serde(default)]
    disable_chap: bool,
    #[serde(default)]
    require_chap: bool,
    #[serde(default)]
    mutual_chap: bool,
    #[serde(default)]
    chap_group: i64,
}

fn iscsi_set_discovery_auth(params: Option<Value>) -> Result<Value, RpcError> {
    let p: DiscoveryAuth = parse(params)?;
    let policy = chap_policy(p.disable_chap, p.require_chap, p.mutual_chap, p.chap_group)
        .ok_or_else(|| spdk("Invalid combination of CHAP params"))?;
    let mut c = config::lock();
    c.options.disable_chap = policy.disable;
    c.options.require_chap = policy.require;
    c.options.mutual_chap = policy.mutual;
    c.options.chap_group = policy.group;
    Ok(json!(true))
}

// ----- auth groups -----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateAuthGroup {
    tag: i64,
    #[serde(default)]
    secrets: Vec<AuthSecret>,
}

/// SPDK's `iscsi_auth_group_add_secret` checks; Err is the errno SPDK would give.
fn add_secret(group: &mut AuthGroup, s: AuthSecret) -> Result<(), i32> {
    if s.muser.is_some() && s.msecret.is_none() {
        return Err(libc::EINVAL); // msecret must be specified with muser
    }
    if group.secrets.iter().any(|x| x.user == s.user) {
        return Err(libc::EEXIST);
    }
    let too_long = |v: &Option<String>| v.as_ref().is_some_and(|v| v.len() > MAX_CHAP_LEN);
    if s.user.len() > MAX_CHAP_LEN || s.secret.len() > MAX_CHAP_LEN || too_long(&s.muser) || too_long(&s.msecret) {
        return Err(libc::EINVAL);
    }
    // SPDK keeps the mutual secret only with a mutual user.
    let msecret = if s.muser.is_some() { s.msecret } else { None };
    group.secrets.push(AuthSecret { msecret, ..s });
    Ok(())
}

fn strerror(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string().split(" (os error").next().unwrap_or_default().to_string()
}

fn iscsi_create_auth_group(params: Option<Value>) -> Result<Value, RpcError> {
    let p: CreateAuthGroup = parse(params)?;
    let tag = tag_of("auth group", p.tag)?;
    let mut c = config::lock();
    if c.auth_group(tag).is_some() {
        return Err(spdk(format!("Could not add auth group ({tag}), {}", strerror(libc::EEXIST))));
    }
    let mut group = AuthGroup { tag, secrets: Vec::new() };
    for s in p.secrets {
        add_secret(&mut group, s)
            .map_err(|e| spdk(format!("Could not add secret to auth group ({tag}), {}", strerror(e))))?;
    }
    tracing::info!(tag, secrets = group.secrets.len(), "iscsi: auth group created");
    c.auth_groups.push(group);
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthTag {
    tag: i64,
}

fn find_auth_group(c: &mut IscsiConfig, tag: i64) -> Result<&mut AuthGroup, RpcError> {
    c.auth_groups
        .iter_mut()
        .find(|g| g.tag as i64 == tag)
        .ok_or_else(|| spdk(format!("Could not find auth group ({tag})")))
}

fn iscsi_delete_auth_group(params: Option<Value>) -> Result<Value, RpcError> {
    let p: AuthTag = parse(params)?;
    let mut c = config::lock();
    find_auth_group(&mut c, p.tag)?;
    // As SPDK: nodes and discovery naming the group keep the tag; logins then find no secret.
    c.auth_groups.retain(|g| g.tag as i64 != p.tag);
    tracing::info!(tag = p.tag, "iscsi: auth group deleted");
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddSecret {
    tag: i64,
    user: String,
    secret: String,
    muser: Option<String>,
    msecret: Option<String>,
}

fn iscsi_auth_group_add_secret(params: Option<Value>) -> Result<Value, RpcError> {
    let p: AddSecret = parse(params)?;
    let mut c = config::lock();
    let group = find_auth_group(&mut c, p.tag)?;
    let tag = group.tag;
    let user = p.user.clone();
    add_secret(group, AuthSecret { user: p.user, secret: p.secret, muser: p.muser, msecret: p.msecret })
        .map_err(|e| spdk(format!("Could not add secret to auth group ({tag}), {}", strerror(e))))?;
    tracing::info!(tag, user = %user, "iscsi: CHAP secret added");
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveSecret {
    tag: i64,
    user: String,
}

fn iscsi_auth_group_remove_secret(params: Option<Value>) -> Result<Value, RpcError> {
    let p: RemoveSecret = parse(params)?;
    let mut c = config::lock();
    let group = find_auth_group(&mut c, p.tag)?;
    let before = group.secrets.len();
    group.secrets.retain(|s| s.user != p.user);
    if group.secrets.len() == before {
        return Err(spdk(format!(
            "Could not delete secret from CHAP group ({}), {}",
            group.tag,
            strerror(libc::ENODEV)
        )));
    }
    tracing::info!(tag = group.tag, user = %p.user, "iscsi: CHAP secret removed");
    Ok(json!(true))
}

fn auth_group_json(g: &AuthGroup) -> Value {
    json!({ "tag": g.tag, "secrets": g.secrets })
}

fn iscsi_get_auth_groups(params: Option<Value>) -> Result<Value, RpcError> {
    no_params(params)?;
    Ok(Value::Array(config::lock().auth_groups.iter().map(auth_group_json).collect()))
}

// ----- portal groups -----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreatePortalGroup {
    tag: i64,
    portals: Vec<Portal>,
    #[serde(default)]
    private: bool,
    #[serde(default)]
    wait: bool,
}

/// SPDK's `iscsi_portal_create` normalisation: `*` and `[*]` are the wildcards.
fn normalise_portal(p: Portal) -> Result<Portal, RpcError> {
    if p.host.len() > MAX_PORTAL_ADDR || p.port.len() > MAX_PORTAL_PORT {
        return Err(invalid(format!("portal host or port too long (at most {MAX_PORTAL_ADDR} and {MAX_PORTAL_PORT})")));
    }
    let host = match p.host.as_str() {
        "*" => "0.0.0.0".to_string(),
        "[*]" => "[::]".to_string(),
        _ => p.host,
    };
    let portal = Portal { host, port: p.port };
    portal::resolve(&portal).map_err(invalid)?;
    Ok(portal)
}

/// Starts listening on `portals` of group `tag` (without the config lock: it waits on
/// reactor 0) and returns the listener with the portals as bound (port 0 becomes the port
/// the kernel chose).
fn open_portals(tag: u32, portals: &[Portal]) -> Result<(Arc<portal::Listener>, Vec<Portal>), RpcError> {
    let listener = portal::listen(tag, portals).map_err(invalid)?;
    let bound = portals
        .iter()
        .zip(listener.addrs())
        .map(|(p, a)| Portal { host: p.host.clone(), port: a.port().to_string() })
        .collect();
    Ok((Arc::new(listener), bound))
}

fn iscsi_create_portal_group(params: Option<Value>) -> Result<Value, RpcError> {
    let p: CreatePortalGroup = parse(params)?;
    let tag = match tag_of("portal group", p.tag)? {
        t if t <= u16::MAX as u32 => t,
        t => return Err(invalid(format!("portal group tag {t} must be at most 65535"))),
    };
    let portals = p.portals.into_iter().map(normalise_portal).collect::<Result<Vec<_>, _>>()?;
    {
        let c = config::lock();
        if c.portal_group(tag).is_some() {
            return Err(invalid(format!("portal group {tag} already exists")));
        }
        for (i, pt) in portals.iter().enumerate() {
            let taken = c.portal_groups.iter().flat_map(|g| &g.portals).chain(&portals[..i]).any(|q| q == pt);
            if taken && pt.port != "0" {
                return Err(invalid(format!("portal ({}, {}) already exists", pt.host, pt.port)));
            }
        }
    }
    let (listener, portals) =
        if p.wait { (None, portals) } else { open_portals(tag, &portals).map(|(l, b)| (Some(l), b))? };
    let group = PortalGroup { tag, portals, private: p.private, discovery_auth: None, listener };
    tracing::info!(tag, portals = ?group.portals, private = p.private, listening = group.listener.is_some(), "iscsi: portal group created");
    config::lock().portal_groups.push(group);
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortalTag {
    tag: i64,
}

fn no_portal_group(tag: i64) -> RpcError {
    invalid(format!("portal group {tag} does not exist"))
}

fn iscsi_start_portal_group(params: Option<Value>) -> Result<Value, RpcError> {
    let p: PortalTag = parse(params)?;
    let (tag, portals) = {
        let c = config::lock();
        let g = c.portal_groups.iter().find(|g| g.tag as i64 == p.tag).ok_or_else(|| no_portal_group(p.tag))?;
        if g.listener.is_some() {
            return Ok(json!(true)); // already started: SPDK succeeds too
        }
        (g.tag, g.portals.clone())
    };
    let (listener, bound) = open_portals(tag, &portals)?;
    let mut c = config::lock();
    match c.portal_groups.iter_mut().find(|g| g.tag == tag) {
        Some(g) => {
            g.listener = Some(listener);
            g.portals = bound;
        }
        None => {
            drop(c); // deleted meanwhile; the listener is dropped without the lock
            drop(listener);
            return Err(no_portal_group(p.tag));
        }
    }
    tracing::info!(tag, "iscsi: portal group started");
    Ok(json!(true))
}

/// Removes every map naming portal group `pg` (Some) or initiator group `ig` (Some) from the
/// nodes, as SPDK's `iscsi_tgt_node_delete_map` does when a group is deleted.
fn delete_maps(c: &mut IscsiConfig, pg: Option<u32>, ig: Option<u32>) {
    for i in 0..c.nodes.len() {
        let maps: Vec<(u32, u32)> =
            c.nodes[i].pg_ig_maps.iter().copied().filter(|(p, g)| Some(*p) != pg && Some(*g) != ig).collect();
        if maps.len() != c.nodes[i].pg_ig_maps.len() {
            let mut n = copy_node(&c.nodes[i]);
            n.pg_ig_maps = maps;
            replace_node(c, i, n);
        }
    }
}

fn iscsi_delete_portal_group(params: Option<Value>) -> Result<Value, RpcError> {
    let p: PortalTag = parse(params)?;
    let group = {
        let mut c = config::lock();
        let pos = c.portal_groups.iter().position(|g| g.tag as i64 == p.tag).ok_or_else(|| no_portal_group(p.tag))?;
        let g = c.portal_groups.remove(pos);
        delete_maps(&mut c, Some(g.tag), None);
        g
    };
    // Dropped without the lock: stopping the listener waits on reactor 0.
    drop(group);
    tracing::info!(tag = p.tag, "iscsi: portal group deleted");
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortalGroupAuth {
    tag: i64,
    #[serde(default)]
    disable_chap: bool,
    #[serde(default)]
    require_chap: bool,
    #[serde(default)]
    mutual_chap: bool,
    #[serde(default)]
    chap_group: i64,
}

fn iscsi_portal_group_set_auth(params: Option<Value>) -> Result<Value, RpcError> {
    let p: PortalGroupAuth = parse(params)?;
    let mut c = config::lock();
    let g = c
        .portal_groups
        .iter_mut()
        .find(|g| g.tag as i64 == p.tag)
        .ok_or_else(|| spdk(format!("Could not find portal group {}", p.tag)))?;
    let policy = chap_policy(p.disable_chap, p.require_chap, p.mutual_chap, p.chap_group)
        .ok_or_else(|| spdk("Invalid combination of auth params"))?;
    g.discovery_auth = Some(policy);
    Ok(json!(true))
}

fn portal_group_json(g: &PortalGroup) -> Value {
    json!({ "tag": g.tag, "portals": g.portals, "private": g.private })
}

fn iscsi_get_portal_groups(params: Option<Value>) -> Result<Value, RpcError> {
    no_params(params)?;
    Ok(Value::Array(config::lock().portal_groups.iter().map(portal_group_json).collect()))
}

// ----- initiator groups -----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InitiatorGroupParams {
    tag: i64,
    #[serde(default)]
    initiators: Vec<String>,
    #[serde(default)]
    netmasks: Vec<String>,
}

/// An initiator rule as SPDK stores it (`ALL` becomes `ANY`).
fn initiator_rule(name: &str) -> Result<String, RpcError> {
    if name.is_empty() || name.len() > MAX_INITIATOR_NAME {
        return Err(invalid(format!("initiator name {name:?} must have 1 to {MAX_INITIATOR_NAME} bytes")));
    }
    Ok(match name {
        "ALL" => "ANY".to_string(),
        "!ALL" => "!ANY".to_string(),
        n => n.to_string(),
    })
}

/// A network rule: `ANY`, an address, or `address/prefix` (IPv6 possibly in brackets).
fn netmask_rule(mask: &str) -> Result<String, RpcError> {
    let m = if mask == "ALL" { "ANY" } else { mask };
    if m.eq_ignore_ascii_case("ANY") {
        return Ok(m.to_string());
    }
    let (net, prefix) = match m.split_once('/') {
        Some((n, p)) => (n, Some(p)),
        None => (m, None),
    };
    let addr: Option<std::net::IpAddr> = net.trim_start_matches('[').trim_end_matches(']').parse().ok();
    let max = match addr {
        Some(std::net::IpAddr::V4(_)) => 32,
        Some(std::net::IpAddr::V6(_)) => 128,
        None => return Err(invalid(format!("netmask {mask:?} is not ANY, an address or address/prefix"))),
    };
    if let Some(p) = prefix {
        if !p.parse::<u32>().is_ok_and(|p| p <= max) {
            return Err(invalid(format!("netmask {mask:?}: the prefix must be 0 to {max}")));
        }
    }
    Ok(m.to_string())
}

/// Adds `items` to `list` (all or nothing, no duplicates, at most MAX_INITIATORS).
fn add_rules(list: &mut Vec<String>, items: Vec<String>, what: &str) -> Result<(), RpcError> {
    let mut next = list.clone();
    for it in items {
        if next.contains(&it) {
            return Err(invalid(format!("{what} {it} is already in the group")));
        }
        next.push(it);
    }
    if next.len() > MAX_INITIATORS {
        return Err(invalid(format!("> MAX_{}(={MAX_INITIATORS}) is not allowed", what.to_ascii_uppercase())));
    }
    *list = next;
    Ok(())
}

/// Removes `items` from `list` (all or nothing).
fn remove_rules(list: &mut Vec<String>, items: &[String], what: &str) -> Result<(), RpcError> {
    let mut next = list.clone();
    for it in items {
        let pos =
            next.iter().position(|x| x == it).ok_or_else(|| invalid(format!("{what} {it} is not in the group")))?;
        next.remove(pos);
    }
    *list = next;
    Ok(())
}

fn iscsi_create_initiator_group(params: Option<Value>) -> Result<Value, RpcError> {
    let p: InitiatorGroupParams = parse(params)?;
    let tag = tag_of("initiator group", p.tag)?;
    if p.initiators.is_empty() || p.netmasks.is_empty() {
        return Err(invalid("an initiator group needs at least one initiator and one netmask"));
    }
    let inames = p.initiators.iter().map(|n| initiator_rule(n)).collect::<Result<Vec<_>, _>>()?;
    let masks = p.netmasks.iter().map(|m| netmask_rule(m)).collect::<Result<Vec<_>, _>>()?;
    let mut g = config::InitiatorGroup { tag, initiators: Vec::new(), netmasks: Vec::new() };
    add_rules(&mut g.initiators, inames, "initiator")?;
    add_rules(&mut g.netmasks, masks, "netmask")?;
    let mut c = config::lock();
    if c.initiator_group(tag).is_some() {
        return Err(invalid(format!("initiator group {tag} already exists")));
    }
    tracing::info!(tag, initiators = ?g.initiators, netmasks = ?g.netmasks, "iscsi: initiator group created");
    c.initiator_groups.push(g);
    Ok(json!(true))
}

fn no_initiator_group(tag: i64) -> RpcError {
    invalid(format!("initiator group ({tag}) is not found"))
}

fn iscsi_initiator_group_add_initiators(params: Option<Value>) -> Result<Value, RpcError> {
    let p: InitiatorGroupParams = parse(params)?;
    let inames = p.initiators.iter().map(|n| initiator_rule(n)).collect::<Result<Vec<_>, _>>()?;
    let masks = p.netmasks.iter().map(|m| netmask_rule(m)).collect::<Result<Vec<_>, _>>()?;
    let mut c = config::lock();
    let g = c.initiator_groups.iter_mut().find(|g| g.tag as i64 == p.tag).ok_or_else(|| no_initiator_group(p.tag))?;
    let mut next = g.clone();
    add_rules(&mut next.initiators, inames, "initiator")?;
    add_rules(&mut next.netmasks, masks, "netmask")?;
    *g = next;
    Ok(json!(true))
}

fn iscsi_initiator_group_remove_initiators(params: Option<Value>) -> Result<Value, RpcError> {
    let p: InitiatorGroupParams = parse(params)?;
    let mut c = config::lock();
    let g = c.initiator_groups.iter_mut().find(|g| g.tag as i64 == p.tag).ok_or_else(|| no_initiator_group(p.tag))?;
    let mut next = g.clone();
    let inames: Vec<String> = p.initiators.iter().map(|n| if n == "ALL" { "ANY".into() } else { n.clone() }).collect();
    let masks: Vec<String> = p.netmasks.iter().map(|n| if n == "ALL" { "ANY".into() } else { n.clone() }).collect();
    remove_rules(&mut next.initiators, &inames, "initiator")?;
    remove_rules(&mut next.netmasks, &masks, "netmask")?;
    *g = next;
    Ok(json!(true))
}

fn iscsi_delete_initiator_group(params: Option<Value>) -> Result<Value, RpcError> {
    let p: PortalTag = parse(params)?;
    let mut c = config::lock();
    let pos = c.initiator_groups.iter().position(|g| g.tag as i64 == p.tag).ok_or_else(|| no_initiator_group(p.tag))?;
    let g = c.initiator_groups.remove(pos);
    delete_maps(&mut c, None, Some(g.tag));
    tracing::info!(tag = p.tag, "iscsi: initiator group deleted");
    Ok(json!(true))
}

fn iscsi_get_initiator_groups(params: Option<Value>) -> Result<Value, RpcError> {
    no_params(params)?;
    let c = config::lock();
    Ok(Value::Array(
        c.initiator_groups
            .iter()
            .map(|g| json!({ "tag": g.tag, "initiators": g.initiators, "netmasks": g.netmasks }))
            .collect(),
    ))
}

// ----- target nodes -----

/// SPDK's `check_iscsi_name`: at most 223 bytes, no characters outside those RFC 3722 allows,
/// and `iqn.YYYY-MM.` for iqn names.
fn check_iscsi_name(name: &str) -> Result<(), String> {
    if name.len() > MAX_TARGET_NAME {
        return Err(format!("longer than {MAX_TARGET_NAME} bytes"));
    }
    for &b in name.as_bytes() {
        let bad = matches!(b, 0x01..=0x2c | 0x2f | 0x3b..=0x40 | 0x5b..=0x60 | 0x7b..=0x7f) || b.is_ascii_whitespace();
        if bad {
            return Err(format!("contains an invalid character {:?}", b as char));
        }
    }
    let u = name.as_bytes();
    if name.len() >= 4 && name[..4].eq_ignore_ascii_case("iqn.") {
        let d = |i: usize| u.get(i).is_some_and(u8::is_ascii_digit);
        let ok = d(4) && d(5) && d(6) && d(7) && u.get(8) == Some(&b'-') && d(9) && d(10) && u.get(11) == Some(&b'.');
        if !ok {
            return Err("invalid iqn format. expect \"iqn.YYYY-MM.reversed.domain.name\"".into());
        }
    }
    Ok(())
}

/// A new version of `n` with the same fields (and the same SCSI target), to change.
fn copy_node(n: &TargetNode) -> TargetNode {
    TargetNode {
        name: n.name.clone(),
        alias: n.alias.clone(),
        pg_ig_maps: n.pg_ig_maps.clone(),
        luns: n.luns.clone(),
        queue_depth: n.queue_depth,
        auth: n.auth,
        header_digest: n.header_digest,
        data_digest: n.data_digest,
        scsi: Mutex::new(n.scsi_target()),
        generation: AtomicU64::new(n.generation.load(Ordering::Acquire)),
    }
}

/// Makes `new` the current version of node `i`; the old one stays reachable for LUN changes
/// while sessions hold it.
fn replace_node(c: &mut IscsiConfig, i: usize, new: TargetNode) {
    let old = std::mem::replace(&mut c.nodes[i], Arc::new(new));
    c.superseded.retain(|w| w.strong_count() > 0);
    c.superseded.push(Arc::downgrade(&old));
}

/// Adds the (pg, ig) maps to `maps` as SPDK orders them (grouped by portal group, in the
/// order each group was first mapped): all or nothing.
fn add_maps(c: &IscsiConfig, node: &str, maps: &mut Vec<(u32, u32)>, add: &[MapParam]) -> Result<(), RpcError> {
    let mut next = maps.clone();
    for m in add {
        let (pg, ig) = (m.pg_tag, m.ig_tag);
        if c.portal_groups.iter().all(|g| g.tag as i64 != pg) {
            return Err(invalid(format!("{node}: PortalGroup{pg} not found")));
        }
        if c.initiator_groups.iter().all(|g| g.tag as i64 != ig) {
            return Err(invalid(format!("{node}: InitiatorGroup{ig} not found")));
        }
        let (pg, ig) = (pg as u32, ig as u32);
        if next.contains(&(pg, ig)) {
            return Err(invalid(format!("{node}: map {pg}:{ig} already exists")));
        }
        match next.iter().rposition(|(p, _)| *p == pg) {
            Some(last) => next.insert(last + 1, (pg, ig)),
            None => {
                let groups = next.iter().map(|(p, _)| *p).collect::<std::collections::BTreeSet<_>>().len();
                if groups >= MAX_PORTAL_GROUPS_PER_NODE {
                    return Err(invalid(format!(
                        "Number of PG maps is more than allowed (max={MAX_PORTAL_GROUPS_PER_NODE})"
                    )));
                }
                next.push((pg, ig));
            }
        }
    }
    *maps = next;
    Ok(())
}

#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct MapParam {
    pg_tag: i64,
    ig_tag: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LunParam {
    bdev_name: String,
    lun_id: i64,
    /// Ferry extension: a removable medium (INQUIRY RMB=1, eject and load by START STOP UNIT).
    #[serde(default)]
    removable: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTargetNode {
    name: String,
    alias_name: String,
    pg_ig_maps: Vec<MapParam>,
    luns: Vec<LunParam>,
    queue_depth: i64,
    #[serde(default)]
    disable_chap: bool,
    #[serde(default)]
    require_chap: bool,
    #[serde(default)]
    mutual_chap: bool,
    #[serde(default)]
    chap_group: i64,
    #[serde(default)]
    header_digest: bool,
    #[serde(default)]
    data_digest: bool,
}

/// Opens `bdev_name` as LUN `lun_id` of node `node` (SCSI target id `target_id`), with a
/// removable medium if `removable`. A hot-removed bdev drops its LUN from the node, as SPDK's
/// SCSI layer does.
fn open_lun(
    node: &str,
    target_id: u32,
    lun_id: u64,
    bdev_name: &str,
    removable: bool,
) -> Result<Arc<ScsiLun>, RpcError> {
    let slot: Arc<Mutex<Weak<ScsiLun>>> = Arc::new(Mutex::new(Weak::new()));
    let on_event = {
        let (slot, node) = (slot.clone(), node.to_string());
        Box::new(move |ev: bdev::BdevEvent, b: &bdev::Bdev| {
            let lun = slot.lock().unwrap_or_else(|e| e.into_inner()).upgrade();
            let Some(lun) = lun else { return };
            match ev {
                bdev::BdevEvent::Remove => {
                    tracing::warn!(node = %node, lun = lun_id, bdev = b.name(), "iscsi: bdev removed; dropping the LUN");
                    drop_lun(&node, target_id, &lun);
                }
                bdev::BdevEvent::Resize => lun.capacity_changed(),
            }
        })
    };
    // No claim, as SPDK's SCSI LUNs: other frontends may serve the bdev too.
    let desc = bdev::open(bdev_name, true, on_event)?;
    let lun = Arc::new(ScsiLun::new(lun_id, desc, node, 1, false).with_removable(removable));
    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Arc::downgrade(&lun);
    Ok(lun)
}

/// Removes `lun` (hot-removed) from the node called `name` whose SCSI target is `target_id`.
fn drop_lun(name: &str, target_id: u32, lun: &Arc<ScsiLun>) {
    let mut c = config::lock();
    let Some(i) = c.nodes.iter().position(|n| n.name == name && n.scsi_target().id == target_id) else { return };
    let current = c.nodes[i].scsi_target();
    if !current.luns().iter().any(|l| Arc::ptr_eq(l, lun)) {
        return;
    }
    let luns: Vec<Arc<ScsiLun>> = current.luns().iter().filter(|l| !Arc::ptr_eq(l, lun)).cloned().collect();
    let scsi = Arc::new(ScsiTarget::new(target_id, name, luns));
    let mut n = copy_node(&c.nodes[i]);
    n.luns.retain(|l| l.lun_id != lun.id);
    replace_node(&mut c, i, n);
    c.set_node_scsi(name, scsi);
}

fn iscsi_create_target_node(params: Option<Value>) -> Result<Value, RpcError> {
    let p: CreateTargetNode = parse(params)?;
    let auth = chap_policy(p.disable_chap, p.require_chap, p.mutual_chap, p.chap_group).ok_or_else(|| {
        invalid(format!(
            "Invalid combination of CHAP params (d={},r={},m={}) or auth group {}",
            p.disable_chap, p.require_chap, p.mutual_chap, p.chap_group
        ))
    })?;
    if p.pg_ig_maps.is_empty() {
        return Err(invalid("pg_ig_maps is empty"));
    }
    let (name, target_id, maps, queue_depth) = {
        let mut c = config::lock();
        let name = c.full_name(&p.name);
        check_iscsi_name(&name).map_err(|e| invalid(format!("TargetName {} {e}", p.name)))?;
        if p.alias_name.len() > MAX_TARGET_NAME {
            return Err(invalid(format!("alias_name is longer than {MAX_TARGET_NAME} bytes")));
        }
        if c.node(&name).is_some() {
            return Err(invalid(format!("target node {name} already exists")));
        }
        let mut maps = Vec::new();
        add_maps(&c, &name, &mut maps, &p.pg_ig_maps)?;
        // As SPDK: a depth out of 1..=max_queue_depth silently becomes max_queue_depth.
        let max = c.options.max_queue_depth as i64;
        let qd = if p.queue_depth > 0 && p.queue_depth <= max { p.queue_depth as u32 } else { max as u32 };
        let id = c.next_node_id;
        c.next_node_id = c.next_node_id.wrapping_add(1);
        (name, id, maps, qd)
    };
    // SPDK's spdk_scsi_dev_construct checks.
    if p.luns.is_empty() {
        return Err(invalid(format!("device {name}: no LUNs specified")));
    }
    if !p.luns.iter().any(|l| l.lun_id == 0) {
        return Err(invalid(format!("device {name}: no LUN 0 specified")));
    }
    let mut node_luns: Vec<NodeLun> = Vec::new();
    for l in &p.luns {
        if !(0..MAX_LUN).contains(&l.lun_id) {
            return Err(invalid(format!("LUN ID {} is out of range (0 to {})", l.lun_id, MAX_LUN - 1)));
        }
        if node_luns.iter().any(|n| n.lun_id == l.lun_id as u64) {
            return Err(invalid(format!("LUN ID {} is duplicated", l.lun_id)));
        }
        node_luns.push(NodeLun { lun_id: l.lun_id as u64, bdev_name: l.bdev_name.clone(), removable: l.removable });
    }
    node_luns.sort_by_key(|l| l.lun_id);
    let luns = node_luns
        .iter()
        .map(|l| open_lun(&name, target_id, l.lun_id, &l.bdev_name, l.removable))
        .collect::<Result<Vec<_>, _>>()?;
    let node = TargetNode {
        name: name.clone(),
        alias: p.alias_name,
        pg_ig_maps: maps,
        luns: node_luns,
        queue_depth,
        auth,
        header_digest: p.header_digest,
        data_digest: p.data_digest,
        scsi: Mutex::new(Arc::new(ScsiTarget::new(target_id, &name, luns))),
        generation: AtomicU64::new(0),
    };
    let mut c = config::lock();
    if c.node(&name).is_some() {
        return Err(invalid(format!("target node {name} already exists")));
    }
    c.nodes.push(Arc::new(node));
    tracing::info!(node = %name, "iscsi: target node created");
    Ok(json!(true))
}

fn find_node(c: &IscsiConfig, name: &str) -> Option<usize> {
    let full = c.full_name(name);
    c.nodes.iter().position(|n| n.name.eq_ignore_ascii_case(&full))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddLun {
    name: String,
    bdev_name: String,
    #[serde(default = "minus_one")]
    lun_id: i64,
    /// Ferry extension, as in a node's LUN entry.
    #[serde(default)]
    removable: bool,
}

fn minus_one() -> i64 {
    -1
}

fn iscsi_target_node_add_lun(params: Option<Value>) -> Result<Value, RpcError> {
    let p: AddLun = parse(params)?;
    let (name, target_id, lun_id) = {
        let c = config::lock();
        let i = find_node(&c, &p.name).ok_or_else(|| invalid(format!("target {} is not found", p.name)))?;
        let n = &c.nodes[i];
        let used: Vec<u64> = n.luns.iter().map(|l| l.lun_id).collect();
        let lun_id = match p.lun_id {
            -1 => (0..MAX_LUN as u64).find(|i| !used.contains(i)).ok_or_else(|| invalid("Free LUN ID is not found"))?,
            id if id < -1 => return Err(invalid(format!("Specified LUN ID ({id}) is negative"))),
            id if id >= MAX_LUN => return Err(invalid(format!("LUN ID {id} is more than the maximum."))),
            id if used.contains(&(id as u64)) => return Err(invalid("LUN ID is duplicated")),
            id => id as u64,
        };
        (n.name.clone(), n.scsi_target().id, lun_id)
    };
    let lun = open_lun(&name, target_id, lun_id, &p.bdev_name, p.removable)?;
    let mut c = config::lock();
    let Some(i) = c.nodes.iter().position(|n| n.name == name && n.scsi_target().id == target_id) else {
        return Err(invalid(format!("target {} is not found", p.name)));
    };
    if c.nodes[i].luns.iter().any(|l| l.lun_id == lun_id) {
        return Err(invalid("LUN ID is duplicated"));
    }
    let mut luns = c.nodes[i].scsi_target().luns().to_vec();
    luns.push(lun);
    luns.sort_by_key(|l| l.id);
    let mut n = copy_node(&c.nodes[i]);
    n.luns.push(NodeLun { lun_id, bdev_name: p.bdev_name.clone(), removable: p.removable });
    n.luns.sort_by_key(|l| l.lun_id);
    replace_node(&mut c, i, n);
    c.set_node_scsi(&name, Arc::new(ScsiTarget::new(target_id, &name, luns)));
    tracing::info!(node = %name, lun = lun_id, bdev = %p.bdev_name, "iscsi: LUN added");
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeAuth {
    name: String,
    #[serde(default)]
    disable_chap: bool,
    #[serde(default)]
    require_chap: bool,
    #[serde(default)]
    mutual_chap: bool,
    #[serde(default)]
    chap_group: i64,
}

fn iscsi_target_node_set_auth(params: Option<Value>) -> Result<Value, RpcError> {
    let p: NodeAuth = parse(params)?;
    let mut c = config::lock();
    let i = find_node(&c, &p.name).ok_or_else(|| spdk(format!("Could not find target {}", p.name)))?;
    let auth = chap_policy(p.disable_chap, p.require_chap, p.mutual_chap, p.chap_group)
        .ok_or_else(|| spdk("Invalid combination of auth params"))?;
    let mut n = copy_node(&c.nodes[i]);
    n.auth = auth;
    replace_node(&mut c, i, n);
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeMaps {
    name: String,
    pg_ig_maps: Vec<MapParam>,
}

fn iscsi_target_node_add_pg_ig_maps(params: Option<Value>) -> Result<Value, RpcError> {
    let p: NodeMaps = parse(params)?;
    let mut c = config::lock();
    let i = find_node(&c, &p.name).ok_or_else(|| invalid(format!("target {} is not found", p.name)))?;
    let mut n = copy_node(&c.nodes[i]);
    add_maps(&c, &n.name.clone(), &mut n.pg_ig_maps, &p.pg_ig_maps)?;
    replace_node(&mut c, i, n);
    Ok(json!(true))
}

fn iscsi_target_node_remove_pg_ig_maps(params: Option<Value>) -> Result<Value, RpcError> {
    let p: NodeMaps = parse(params)?;
    let mut c = config::lock();
    let i = find_node(&c, &p.name).ok_or_else(|| invalid(format!("target {} is not found", p.name)))?;
    let mut n = copy_node(&c.nodes[i]);
    for m in &p.pg_ig_maps {
        let node = &n.name;
        if c.portal_groups.iter().all(|g| g.tag as i64 != m.pg_tag) {
            return Err(invalid(format!("{node}: PortalGroup{} not found", m.pg_tag)));
        }
        if c.initiator_groups.iter().all(|g| g.tag as i64 != m.ig_tag) {
            return Err(invalid(format!("{node}: InitiatorGroup{} not found", m.ig_tag)));
        }
        let pos = n
            .pg_ig_maps
            .iter()
            .position(|(pg, ig)| *pg as i64 == m.pg_tag && *ig as i64 == m.ig_tag)
            .ok_or_else(|| invalid(format!("{node}: map {}:{} is not mapped", m.pg_tag, m.ig_tag)))?;
        n.pg_ig_maps.remove(pos);
    }
    replace_node(&mut c, i, n);
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeName {
    name: String,
}

fn iscsi_delete_target_node(params: Option<Value>) -> Result<Value, RpcError> {
    let p: NodeName = parse(params)?;
    let node = {
        let mut c = config::lock();
        let i = find_node(&c, &p.name).ok_or_else(|| RpcError::errno(libc::ENOENT, strerror(libc::ENOENT)))?;
        c.nodes.remove(i)
    };
    // Without the lock: the engine drops the sessions on their reactors.
    conn::drop_target_sessions(&node.name);
    tracing::info!(node = %node.name, "iscsi: target node deleted");
    Ok(json!(true))
}

/// A LUN entry as SPDK writes it; `removable` (a Ferry extension) only when set, so that
/// SPDK's clients see exactly SPDK's keys.
fn lun_json(l: &NodeLun) -> Value {
    let mut v = json!({"bdev_name": l.bdev_name, "lun_id": l.lun_id});
    if l.removable {
        v["removable"] = json!(true);
    }
    v
}

/// A node as SPDK's `iscsi_tgt_node_info_json` writes it (also the params that recreate it).
fn node_json(n: &TargetNode) -> Value {
    let mut v = json!({
        "name": n.name,
        "pg_ig_maps": n.pg_ig_maps.iter().map(|(pg, ig)| json!({"pg_tag": pg, "ig_tag": ig})).collect::<Vec<_>>(),
        "luns": n.luns.iter().map(lun_json).collect::<Vec<_>>(),
        "queue_depth": n.queue_depth,
        "disable_chap": n.auth.disable,
        "require_chap": n.auth.require,
        "mutual_chap": n.auth.mutual,
        "chap_group": n.auth.group,
        "header_digest": n.header_digest,
        "data_digest": n.data_digest,
    });
    if !n.alias.is_empty() {
        v["alias_name"] = json!(n.alias);
    }
    v
}

fn iscsi_get_target_nodes(params: Option<Value>) -> Result<Value, RpcError> {
    no_params(params)?;
    Ok(Value::Array(config::lock().nodes.iter().map(|n| node_json(n)).collect()))
}

fn iscsi_get_connections(params: Option<Value>) -> Result<Value, RpcError> {
    no_params(params)?;
    Ok(serde_json::to_value(conn::connections()).expect("connections serialise"))
}

fn iscsi_get_stats(params: Option<Value>) -> Result<Value, RpcError> {
    no_params(params)?;
    Ok(serde_json::to_value(conn::stats()).expect("stats serialise"))
}

// ----- saved configuration -----

/// The `iscsi` subsystem's configuration: the options, auth groups, portal groups (with the
/// ports they really listen on, their discovery auth, and `wait` if not started), initiator
/// groups and target nodes, each as the call that recreates it.
pub fn write_config() -> Vec<Value> {
    let c = config::lock();
    let mut out = vec![entry("iscsi_set_options", options_json(&c.options))];
    out.extend(c.auth_groups.iter().map(|g| entry("iscsi_create_auth_group", auth_group_json(g))));
    for g in &c.portal_groups {
        let mut params = portal_group_json(g);
        if g.listener.is_none() {
            params["wait"] = json!(true);
        }
        out.push(entry("iscsi_create_portal_group", params));
        if let Some(a) = g.discovery_auth {
            out.push(entry(
                "iscsi_portal_group_set_auth",
                json!({ "tag": g.tag, "disable_chap": a.disable, "require_chap": a.require,
                        "mutual_chap": a.mutual, "chap_group": a.group }),
            ));
        }
    }
    out.extend(c.initiator_groups.iter().map(|g| {
        entry(
            "iscsi_create_initiator_group",
            json!({ "tag": g.tag, "initiators": g.initiators, "netmasks": g.netmasks }),
        )
    }));
    out.extend(c.nodes.iter().map(|n| entry("iscsi_create_target_node", node_json(n))));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chap_combinations_are_spdks() {
        assert!(chap_policy(false, false, false, 0).is_some());
        assert!(chap_policy(true, false, false, 0).is_some());
        assert!(chap_policy(false, true, false, 1).is_some());
        assert!(chap_policy(false, true, true, 1).is_some());
        assert!(chap_policy(true, true, false, 0).is_none(), "disable with require");
        assert!(chap_policy(false, false, true, 0).is_none(), "mutual without require");
        assert!(chap_policy(true, false, true, 0).is_none());
        assert!(chap_policy(false, false, false, -1).is_none(), "negative group");
    }

    #[test]
    fn iscsi_names_are_checked_as_spdk_does() {
        assert!(check_iscsi_name("iqn.2016-06.io.spdk:disk1").is_ok());
        assert!(check_iscsi_name("iqn.16-06.io.spdk:disk1").is_err());
        assert!(check_iscsi_name("iqn.2016-06.io.spdk:disk 1").is_err());
        assert!(check_iscsi_name("iqn.2016-06.io.spdk:a/b").is_err());
        assert!(check_iscsi_name(&format!("iqn.2016-06.io.spdk:{}", "a".repeat(230))).is_err());
        assert!(check_iscsi_name("eui.0123456789ABCDEF").is_ok());
    }

    #[test]
    fn netmasks_are_checked() {
        assert_eq!(netmask_rule("ALL").unwrap(), "ANY");
        assert!(netmask_rule("127.0.0.1/32").is_ok());
        assert!(netmask_rule("[::1]/128").is_ok());
        assert!(netmask_rule("127.0.0.1/33").is_err());
        assert!(netmask_rule("nonsense").is_err());
    }

    #[test]
    fn default_options_pass_spdks_checks() {
        verify_options(&IscsiOptions::default()).unwrap();
        let o = IscsiOptions { max_queue_depth: 257, ..Default::default() };
        assert!(verify_options(&o).unwrap_err().message.contains("MaxQueueDepth"));
    }
}
