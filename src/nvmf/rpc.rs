//! The NVMe-oF target's RPC methods (SPDK's names, parameters, results and errors; see SPDK's
//! `lib/nvmf/nvmf_rpc.c`, `subsystem.c`, `transport.c`, `tcp.c` and `schema/schema.yaml`)
//! and the `nvmf` subsystem's saved configuration (SPDK's `spdk_nvmf_tgt_write_config_json`).
//!
//! The subsystems live in the controller model's registry (`crate::nvme::subsystem`), the
//! listening sockets in the TCP transport (`super::tcp`); this module checks parameters as
//! SPDK does, calls them, and writes SPDK's JSON. Where SPDK answers only "Invalid
//! parameters" (or "Internal error"), Ferry keeps that text and code and says what was wrong
//! after it. Parameters Ferry cannot honour (TLS, DH-HMAC-CHAP, RDMA, passthrough, ...) are
//! refused with -32602 naming them, never silently dropped.
//!
//! Ferry has one NVMe-oF target, SPDK's default `nvmf_tgt`; a `tgt_name` naming another is
//! refused as SPDK refuses an unknown target.

use super::config::{self, GenericOptions};
use super::tcp::{self, TcpTransportOptions};
use super::vfio_user::{self, VfioUserOptions};
use crate::app::config::entry;
use crate::nvme::subsystem::{
    self as model, check_nqn, ListenAddress, NamespaceConfig, Subsystem, SubsystemConfig, SubsystemKind,
};
use crate::rpc::error::{INTERNAL_ERROR, INVALID_PARAMS};
use crate::rpc::{parse, RpcError, RpcMethod};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// The name of Ferry's one target (SPDK's default target).
const TARGET_NAME: &str = "nvmf_tgt";
/// Serial and model number fields of Identify Controller (without SPDK's terminator).
const SN_MAX_LEN: usize = 20;
const MN_MAX_LEN: usize = 40;
/// SPDK's defaults of `nvmf_create_subsystem`.
const DEFAULT_SN: &str = "00000000000000000000";
const DEFAULT_MN: &str = "SPDK bdev Controller";
const DEFAULT_MAX_NAMESPACES: u32 = 32;
/// NVMF_MIN_CNTLID / NVMF_MAX_CNTLID (FFF0h..FFFFh are reserved).
const MIN_CNTLID: u16 = 1;
const MAX_CNTLID: u16 = 0xffef;
/// SPDK's dmrsl (1 GiB in 512-byte blocks) and wzsl (2^12 pages) defaults, the only values
/// the controller model reports.
const DEFAULT_DMRSL: u32 = 2_097_152;
const DEFAULT_WZSL: u8 = 12;
/// Ferry's bound on `max_namespaces`: SPDK sizes per-namespace and per-listener ANA arrays by
/// it (and `nvmf_subsystem_get_listeners` lists one ANA state per possible group), so an
/// unbounded value is an unbounded allocation.
pub const MAX_NAMESPACES: u32 = 4096;
/// NVMF_DEFAULT_KAS (100 ms units) and NVMF_DEFAULT_MIN_KATO (ms): the keep-alive the
/// controller model implements.
const DEFAULT_KAS: u16 = 100;
const DEFAULT_MIN_KATO: u32 = 10_000;
/// SPDK's TCP iobuf cache default: computed per poll group.
const IOBUF_CACHE_AUTO: u32 = u32::MAX;
/// SPDK_NVMF_MIN_ADMIN_MAX_SQ_SIZE.
const MIN_ADMIN_SQ_SIZE: u32 = 32;
/// spdk_nvme_transport_id's traddr and trsvcid buffers (less the terminator).
const TRADDR_MAX_LEN: usize = 256;
const TRSVCID_MAX_LEN: usize = 32;
/// SPDK_NVME_GLOBAL_NS_TAG: the broadcast NSID, never a namespace's.
const NSID_BROADCAST: u32 = u32::MAX;

/// The NVMe-oF methods.
pub const METHODS: &[RpcMethod] = &[
    RpcMethod::runtime("nvmf_create_transport", nvmf_create_transport),
    RpcMethod::runtime("nvmf_get_transports", nvmf_get_transports),
    RpcMethod::runtime("nvmf_create_subsystem", nvmf_create_subsystem),
    RpcMethod::runtime("nvmf_delete_subsystem", nvmf_delete_subsystem),
    RpcMethod::runtime("nvmf_subsystem_add_listener", nvmf_subsystem_add_listener),
    RpcMethod::runtime("nvmf_subsystem_remove_listener", nvmf_subsystem_remove_listener),
    RpcMethod::runtime("nvmf_subsystem_add_ns", nvmf_subsystem_add_ns),
    RpcMethod::runtime("nvmf_subsystem_remove_ns", nvmf_subsystem_remove_ns),
    RpcMethod::runtime("nvmf_subsystem_add_host", nvmf_subsystem_add_host),
    RpcMethod::runtime("nvmf_subsystem_remove_host", nvmf_subsystem_remove_host),
    RpcMethod::runtime("nvmf_subsystem_allow_any_host", nvmf_subsystem_allow_any_host),
    RpcMethod::runtime("nvmf_get_subsystems", nvmf_get_subsystems),
    RpcMethod::runtime("nvmf_subsystem_get_controllers", nvmf_subsystem_get_controllers),
    RpcMethod::runtime("nvmf_subsystem_get_qpairs", nvmf_subsystem_get_qpairs),
    RpcMethod::runtime("nvmf_subsystem_get_listeners", nvmf_subsystem_get_listeners),
    RpcMethod::runtime("nvmf_get_stats", nvmf_get_stats),
];

// ----- errors -----

/// SPDK's "Invalid parameters" (-32602), with what was wrong after it.
fn invalid(why: impl std::fmt::Display) -> RpcError {
    RpcError::invalid_params(why)
}

/// -32602 with SPDK's own message.
fn spdk_invalid(message: impl Into<String>) -> RpcError {
    RpcError::new(INVALID_PARAMS, message)
}

/// -32603 with SPDK's message.
fn internal(message: impl Into<String>) -> RpcError {
    RpcError::new(INTERNAL_ERROR, message)
}

/// A parameter Ferry does not implement: -32602 naming it and why.
fn unsupported(param: &str, why: &str) -> RpcError {
    invalid(format!("{param} is not supported: {why}"))
}

/// `tgt_name`: Ferry's one target answers to SPDK's default name; any other is unknown, with
/// the error SPDK gives for an unknown target in the method at hand.
fn check_target(tgt_name: &Option<String>, unknown: fn(&str) -> RpcError) -> Result<(), RpcError> {
    match tgt_name.as_deref() {
        None => Ok(()),
        Some(TARGET_NAME) => Ok(()),
        Some(other) => Err(unknown(other)),
    }
}

/// `_rpc_nvmf_get_subsystem`'s unknown target (-32602).
fn target_not_found(name: &str) -> RpcError {
    spdk_invalid(format!("NVMf target '{name}' not found"))
}

/// "Unable to find a target." (-32603), as the transport and stats methods answer.
fn no_target(_: &str) -> RpcError {
    internal("Unable to find a target.")
}

/// The subsystem called `nqn` (after the target check), or SPDK's "not found" (-32602).
fn find_subsystem(tgt_name: &Option<String>, nqn: &str) -> Result<Arc<Subsystem>, RpcError> {
    check_target(tgt_name, target_not_found)?;
    model::subsystem(nqn).ok_or_else(|| spdk_invalid(format!("Subsystem with NQN '{nqn}' not found")))
}

// ----- pure checks (SPDK's) -----

/// SPDK's `nvmf_valid_ascii_string` and length check of SN/MN (printable ASCII, at most
/// `max` bytes).
fn check_ascii_field(what: &str, v: &str, max: usize) -> Result<(), RpcError> {
    if v.len() > max {
        return Err(invalid(format!("{what} {v:?} is longer than {max} characters")));
    }
    if !v.bytes().all(|c| (0x20..=0x7e).contains(&c)) {
        return Err(invalid(format!("{what} {v:?} holds characters other than printable ASCII")));
    }
    Ok(())
}

/// SPDK's `decode_hex_string_be`: exactly `N` bytes as hex digits.
fn hex_bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// SPDK's JSON byte arrays and saved NGUID/EUI-64: upper-case hex.
fn hex_upper(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

// ----- transports -----

/// `nvmf_create_transport`'s parameters (schema.yaml), every one decoded so that each is
/// either honoured, reported, or refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTransport {
    trtype: String,
    tgt_name: Option<String>,
    max_queue_depth: Option<u16>,
    max_io_qpairs_per_ctrlr: Option<u16>,
    in_capsule_data_size: Option<u32>,
    max_io_size: Option<u32>,
    max_aq_depth: Option<u32>,
    abort_timeout_sec: Option<u32>,
    ack_timeout: Option<u32>,
    zcopy: Option<bool>,
    dif_insert_or_strip: Option<bool>,
    // TCP's own.
    c2h_success: Option<bool>,
    sock_priority: Option<u32>,
    control_msg_num: Option<u16>,
    // Buffer pools (Ferry has none: reported, or taken as the transport's hint).
    io_unit_size: Option<u32>,
    num_shared_buffers: Option<u32>,
    buf_cache_size: Option<u32>,
    iobuf_small_cache_size: Option<u32>,
    iobuf_large_cache_size: Option<u32>,
    acceptor_poll_rate: Option<u32>,
    disable_command_passthru: Option<bool>,
    kas: Option<u16>,
    min_kato: Option<u32>,
    masked_oncs: Option<Vec<String>>,
    masked_fuses: Option<Vec<String>>,
    // RDMA's: SPDK's TCP and VFIOUSER transports ignore them, and so do Ferry's.
    #[allow(dead_code)]
    num_cqe: Option<i32>,
    #[allow(dead_code)]
    max_srq_depth: Option<u32>,
    #[allow(dead_code)]
    no_srq: Option<bool>,
    #[allow(dead_code)]
    acceptor_backlog: Option<i32>,
    #[allow(dead_code)]
    no_wr_batching: Option<bool>,
    data_wr_pool_size: Option<u32>,
    // VFIOUSER's (TCP ignores them).
    disable_mappable_bar0: Option<bool>,
    // VFIOUSER's (TCP ignores them).
    disable_adaptive_irq: Option<bool>,
    // VFIOUSER's (TCP ignores them).
    disable_shadow_doorbells: Option<bool>,
}

fn nvmf_create_transport(params: Option<Value>) -> Result<Value, RpcError> {
    let p: CreateTransport = parse(params)?;
    check_target(&p.tgt_name, no_target)?;
    if p.trtype.eq_ignore_ascii_case(vfio_user::TRTYPE) {
        return create_vfio_user_transport(p);
    }
    if !p.trtype.eq_ignore_ascii_case("TCP") {
        return Err(spdk_invalid(format!(
            "Invalid transport type '{}' (Ferry's NVMe-oF target serves TCP and VFIOUSER)",
            p.trtype
        )));
    }
    let max_io_qpairs = p.max_io_qpairs_per_ctrlr.unwrap_or(127);
    if max_io_qpairs > u16::MAX - 1 {
        return Err(spdk_invalid("max_io_qpairs_per_ctrlr too large"));
    }
    if p.masked_oncs.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(unsupported("masked_oncs", "the controller model's ONCS cannot be masked"));
    }
    if p.masked_fuses.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(unsupported("masked_fuses", "the controller model's FUSES cannot be masked"));
    }
    let kas = p.kas.unwrap_or(DEFAULT_KAS);
    let min_kato = p.min_kato.unwrap_or(DEFAULT_MIN_KATO);
    // SPDK's generic checks (transport.c): a failed one is "create failed" (-32603).
    let failed = |why: String| internal(format!("Transport type 'TCP' create failed: {why}"));
    let max_io_size = p.max_io_size.unwrap_or(131072);
    if max_io_size != 0 && (!max_io_size.is_power_of_two() || max_io_size < 8192) {
        return Err(failed(format!("max_io_size {max_io_size} must be a power of 2 and at least 8192")));
    }
    if kas == 0 {
        return Err(failed("kas cannot be 0".into()));
    }
    if min_kato == 0 {
        return Err(failed("min_kato cannot be 0".into()));
    }
    if kas != DEFAULT_KAS {
        return Err(unsupported("kas", "the keep-alive granularity is fixed at 100 (10 s)"));
    }
    let min_kato = min_kato.div_ceil(kas as u32 * 100) * (kas as u32 * 100);
    if min_kato != DEFAULT_MIN_KATO {
        return Err(unsupported("min_kato", "the smallest keep-alive timeout is fixed at 10000 ms"));
    }
    if tcp::transport_options().is_some() {
        return Err(internal("Transport type 'TCP' already exists"));
    }
    let iobuf_small = p.buf_cache_size.filter(|&n| n != 0).or(p.iobuf_small_cache_size).unwrap_or(IOBUF_CACHE_AUTO);
    let opts = TcpTransportOptions {
        max_queue_depth: p.max_queue_depth.unwrap_or(128),
        max_io_qpairs_per_ctrlr: max_io_qpairs,
        in_capsule_data_size: p.in_capsule_data_size.unwrap_or(4096),
        max_io_size,
        io_unit_size: p.io_unit_size.unwrap_or(131072),
        max_aq_depth: u16::try_from(p.max_aq_depth.unwrap_or(128).max(MIN_ADMIN_SQ_SIZE)).unwrap_or(u16::MAX),
        num_shared_buffers: p.num_shared_buffers.unwrap_or(511),
        buf_cache_size: p.buf_cache_size.unwrap_or(32),
        dif_insert_or_strip: p.dif_insert_or_strip.unwrap_or(false),
        c2h_success: p.c2h_success.unwrap_or(true),
        sock_priority: p.sock_priority.unwrap_or(0),
        abort_timeout_sec: p.abort_timeout_sec.unwrap_or(1),
        ack_timeout: p.ack_timeout.unwrap_or(0),
        control_msg_num: u32::from(p.control_msg_num.unwrap_or(32)),
        zcopy: p.zcopy.unwrap_or(false),
    };
    tcp::create_transport(opts).map_err(|e| internal(format!("Failed to create transport. {e}")))?;
    config::set_generic(GenericOptions {
        iobuf_small_cache_size: iobuf_small,
        iobuf_large_cache_size: p.iobuf_large_cache_size.unwrap_or(IOBUF_CACHE_AUTO),
        data_wr_pool_size: p.data_wr_pool_size.unwrap_or(0),
        disable_command_passthru: p.disable_command_passthru.unwrap_or(false),
        kas,
        min_kato,
    });
    let _ = p.acceptor_poll_rate; // Ferry accepts on epoll readiness: there is no polling interval.
    tracing::info!("nvmf: TCP transport created");
    Ok(json!(true))
}

/// `nvmf_create_transport -t VFIOUSER`: SPDK's generic options the PCIe function uses
/// (queue depths, queue pairs, MDTS) and the VFIOUSER ones; TCP's and RDMA's, which SPDK's
/// rpc.py sends with their defaults whatever the transport, are ignored as SPDK's VFIOUSER
/// transport ignores them.
fn create_vfio_user_transport(p: CreateTransport) -> Result<Value, RpcError> {
    if p.masked_oncs.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(unsupported("masked_oncs", "the controller model's ONCS cannot be masked"));
    }
    if p.masked_fuses.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(unsupported("masked_fuses", "the controller model's FUSES cannot be masked"));
    }
    if p.zcopy == Some(true) {
        return Err(unsupported("zcopy", "VFIOUSER moves data in place in guest memory already"));
    }
    if p.dif_insert_or_strip == Some(true) {
        return Err(unsupported("dif_insert_or_strip", "Ferry's bdevs have no protection information"));
    }
    if p.kas.is_some_and(|k| k != DEFAULT_KAS) || p.min_kato.is_some_and(|k| k != DEFAULT_MIN_KATO) {
        return Err(unsupported("kas/min_kato", "the keep-alive timer is fixed (and PCIe hosts do not use it)"));
    }
    let d = VfioUserOptions::default();
    let opts = VfioUserOptions {
        max_queue_depth: p.max_queue_depth.unwrap_or(d.max_queue_depth),
        max_io_qpairs_per_ctrlr: p.max_io_qpairs_per_ctrlr.unwrap_or(d.max_io_qpairs_per_ctrlr),
        in_capsule_data_size: p.in_capsule_data_size.unwrap_or(d.in_capsule_data_size),
        max_io_size: p.max_io_size.unwrap_or(d.max_io_size),
        io_unit_size: p.io_unit_size.unwrap_or(d.io_unit_size),
        max_aq_depth: u16::try_from(p.max_aq_depth.unwrap_or(d.max_aq_depth as u32)).unwrap_or(u16::MAX),
        disable_mappable_bar0: p.disable_mappable_bar0.unwrap_or(false),
        disable_adaptive_irq: p.disable_adaptive_irq.unwrap_or(false),
        disable_shadow_doorbells: p.disable_shadow_doorbells.unwrap_or(false),
    };
    let failed = |why: String| internal(format!("Transport type 'VFIOUSER' create failed: {why}"));
    if let Err(why) = opts.check() {
        return Err(failed(why));
    }
    vfio_user::create_transport(opts).map_err(|e| match e {
        vfio_user::VfioUserError::TransportExists => internal("Transport type 'VFIOUSER' already exists"),
        e => failed(e.to_string()),
    })?;
    Ok(json!(true))
}

/// The VFIOUSER transport as `nvmf_get_transports` shows it (SPDK's generic options, and
/// Ferry's VFIOUSER ones so `save_config` replays them).
fn vfio_user_transport_json() -> Option<Value> {
    let o = vfio_user::transport_options()?;
    Some(json!({
        "trtype": vfio_user::TRTYPE,
        "max_queue_depth": o.max_queue_depth,
        "max_io_qpairs_per_ctrlr": o.max_io_qpairs_per_ctrlr,
        "in_capsule_data_size": o.in_capsule_data_size,
        "max_io_size": o.max_io_size,
        "io_unit_size": o.io_unit_size,
        "max_aq_depth": o.max_aq_depth,
        "disable_mappable_bar0": o.disable_mappable_bar0,
        "disable_adaptive_irq": o.disable_adaptive_irq,
        "disable_shadow_doorbells": o.disable_shadow_doorbells,
    }))
}

/// The transport as SPDK's `nvmf_transport_dump_opts` (with TCP's `dump_opts`) writes it;
/// also the params that recreate it.
fn transport_json() -> Option<Value> {
    let opts = serde_json::to_value(tcp::transport_options()?).ok()?;
    let g = config::generic().unwrap_or(GenericOptions {
        iobuf_small_cache_size: IOBUF_CACHE_AUTO,
        iobuf_large_cache_size: IOBUF_CACHE_AUTO,
        data_wr_pool_size: 0,
        disable_command_passthru: false,
        kas: DEFAULT_KAS,
        min_kato: DEFAULT_MIN_KATO,
    });
    let mut v = Map::new();
    v.insert("trtype".into(), json!("TCP"));
    for key in ["max_queue_depth", "max_io_qpairs_per_ctrlr", "in_capsule_data_size", "max_io_size", "max_aq_depth"] {
        v.insert(key.into(), opts[key].clone());
    }
    v.insert("iobuf_small_cache_size".into(), json!(g.iobuf_small_cache_size));
    v.insert("iobuf_large_cache_size".into(), json!(g.iobuf_large_cache_size));
    for key in ["dif_insert_or_strip", "zcopy", "c2h_success", "sock_priority", "abort_timeout_sec", "ack_timeout"] {
        v.insert(key.into(), opts[key].clone());
    }
    v.insert("data_wr_pool_size".into(), json!(g.data_wr_pool_size));
    v.insert("disable_command_passthru".into(), json!(g.disable_command_passthru));
    v.insert("kas".into(), json!(g.kas));
    v.insert("min_kato".into(), json!(g.min_kato));
    Some(Value::Object(v))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetTransports {
    tgt_name: Option<String>,
    trtype: Option<String>,
}

fn nvmf_get_transports(params: Option<Value>) -> Result<Value, RpcError> {
    let p: GetTransports = parse(params)?;
    check_target(&p.tgt_name, no_target)?;
    let all: Vec<(&str, Value)> = [("TCP", transport_json()), (vfio_user::TRTYPE, vfio_user_transport_json())]
        .into_iter()
        .filter_map(|(n, t)| Some((n, t?)))
        .collect();
    if let Some(trtype) = &p.trtype {
        let one: Vec<Value> = all.into_iter().filter(|(n, _)| n.eq_ignore_ascii_case(trtype)).map(|(_, t)| t).collect();
        if one.is_empty() {
            return Err(RpcError::errno(libc::ENODEV, "No such device"));
        }
        return Ok(Value::Array(one));
    }
    Ok(Value::Array(all.into_iter().map(|(_, t)| t).collect()))
}

// ----- subsystems -----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSubsystem {
    nqn: String,
    tgt_name: Option<String>,
    serial_number: Option<String>,
    model_number: Option<String>,
    admin_label: Option<String>,
    max_namespaces: Option<u32>,
    #[serde(default)]
    allow_any_host: bool,
    #[serde(default)]
    ana_reporting: bool,
    min_cntlid: Option<u16>,
    max_cntlid: Option<u16>,
    dmrsl: Option<u32>,
    wzsl: Option<u8>,
    #[serde(default)]
    passthrough: bool,
    #[serde(default)]
    enable_nssr: bool,
}

fn nvmf_create_subsystem(params: Option<Value>) -> Result<Value, RpcError> {
    let p: CreateSubsystem = parse(params)?;
    check_target(&p.tgt_name, |name| internal(format!("Unable to find target {name}")))?;
    let sn = p.serial_number.unwrap_or_else(|| DEFAULT_SN.to_string());
    check_ascii_field("serial_number", &sn, SN_MAX_LEN)?;
    let mn = p.model_number.unwrap_or_else(|| DEFAULT_MN.to_string());
    check_ascii_field("model_number", &mn, MN_MAX_LEN)?;
    if p.admin_label.as_ref().is_some_and(|l| !l.is_empty()) {
        return Err(unsupported("admin_label", "the discovery log has no extended entries"));
    }
    if p.passthrough {
        return Err(unsupported("passthrough", "Ferry serves namespaces through its own controller model"));
    }
    if p.enable_nssr {
        return Err(unsupported("enable_nssr", "NVM subsystem reset is not implemented"));
    }
    if p.dmrsl.is_some_and(|v| v != DEFAULT_DMRSL) {
        return Err(unsupported("dmrsl", &format!("the controller model reports {DEFAULT_DMRSL}")));
    }
    if p.wzsl.is_some_and(|v| v != DEFAULT_WZSL) {
        return Err(unsupported("wzsl", &format!("the controller model reports {DEFAULT_WZSL}")));
    }
    let max_namespaces = match p.max_namespaces.unwrap_or(0) {
        0 => DEFAULT_MAX_NAMESPACES,
        n if n > MAX_NAMESPACES => {
            return Err(invalid(format!("max_namespaces {n} is more than Ferry's {MAX_NAMESPACES}")));
        }
        n => n,
    };
    let unable = |why: String| internal(format!("Unable to create subsystem {}: {why}", p.nqn));
    if model::subsystem(&p.nqn).is_some() {
        return Err(unable("the NQN already exists".into()));
    }
    check_nqn(&p.nqn).map_err(unable)?;
    let (min, max) = (p.min_cntlid.unwrap_or(MIN_CNTLID), p.max_cntlid.unwrap_or(MAX_CNTLID));
    if min > max || !(MIN_CNTLID..=MAX_CNTLID).contains(&min) || !(MIN_CNTLID..=MAX_CNTLID).contains(&max) {
        return Err(spdk_invalid(format!("Invalid cntlid range [{min}-{max}]")));
    }
    let cfg = SubsystemConfig {
        nqn: p.nqn.clone(),
        serial_number: sn,
        model_number: mn,
        max_namespaces,
        allow_any_host: p.allow_any_host,
        ana_reporting: p.ana_reporting,
        min_cntlid: min,
        max_cntlid: max,
    };
    model::create_subsystem(cfg).map_err(|e| unable(e.to_string()))?;
    tracing::info!(nqn = %p.nqn, "nvmf: subsystem created");
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubsystemRef {
    nqn: String,
    tgt_name: Option<String>,
}

fn nvmf_delete_subsystem(params: Option<Value>) -> Result<Value, RpcError> {
    let p: SubsystemRef = parse(params)?;
    let s = find_subsystem(&p.tgt_name, &p.nqn)?;
    if s.kind() == SubsystemKind::Discovery {
        return Err(invalid("the discovery subsystem cannot be deleted"));
    }
    // As SPDK: its listeners go first (nvmf_subsystem_remove_all_listeners), then it.
    for a in s.listeners() {
        let _ = s.remove_listener(&a);
        stop_listening(&a);
    }
    model::delete_subsystem(&p.nqn).map_err(|e| internal(format!("Subsystem destruction failed: {e}")))?;
    tracing::info!(nqn = %p.nqn, "nvmf: subsystem deleted");
    Ok(json!(true))
}

// ----- listeners -----

/// `rpc_nvmf_listen_address`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenAddressParam {
    trtype: String,
    adrfam: Option<String>,
    traddr: String,
    trsvcid: Option<String>,
}

/// SPDK's `rpc_listen_address_to_trid` and TCP's canonical listen address
/// (`nvmf_tcp_canon_listen_trid`): trtype upper-case, adrfam IPv4 unless given, the port as
/// a decimal number in 1..=65535.
fn listen_address(a: &ListenAddressParam) -> Result<ListenAddress, RpcError> {
    let trtype = a.trtype.to_ascii_uppercase();
    if trtype == vfio_user::TRTYPE {
        // A directory (the endpoint's socket is `<traddr>/cntrl`); adrfam and trsvcid are
        // kept as given (SPDK's examples pass `-s 0`).
        if a.traddr.len() > TRADDR_MAX_LEN {
            return Err(invalid(format!("traddr is longer than {TRADDR_MAX_LEN} characters")));
        }
        let svc = a.trsvcid.clone().unwrap_or_default();
        if svc.len() > TRSVCID_MAX_LEN {
            return Err(invalid(format!("trsvcid is longer than {TRSVCID_MAX_LEN} characters")));
        }
        return Ok(ListenAddress {
            trtype,
            adrfam: a.adrfam.clone().unwrap_or_default(),
            traddr: a.traddr.clone(),
            trsvcid: svc,
        });
    }
    if trtype != "TCP" {
        return Err(invalid(format!(
            "trtype {}: Ferry's NVMe-oF target has the TCP and VFIOUSER transports",
            a.trtype
        )));
    }
    let adrfam = match a.adrfam.as_deref() {
        None => "IPv4",
        Some(f) if f.eq_ignore_ascii_case("IPv4") => "IPv4",
        Some(f) if f.eq_ignore_ascii_case("IPv6") => "IPv6",
        Some(f) => return Err(invalid(format!("adrfam {f} is not an address family of TCP (IPv4 or IPv6)"))),
    };
    if a.traddr.len() > TRADDR_MAX_LEN {
        return Err(invalid(format!("traddr is longer than {TRADDR_MAX_LEN} characters")));
    }
    let svc = a.trsvcid.as_deref().unwrap_or_default();
    if svc.len() > TRSVCID_MAX_LEN {
        return Err(invalid(format!("trsvcid is longer than {TRSVCID_MAX_LEN} characters")));
    }
    let port = match svc.parse::<u64>() {
        Ok(p @ 1..=65535) => p,
        _ => return Err(invalid(format!("trsvcid {svc:?} is not a TCP port (1 to 65535)"))),
    };
    Ok(ListenAddress { trtype, adrfam: adrfam.to_string(), traddr: a.traddr.clone(), trsvcid: port.to_string() })
}

/// A listen address as SPDK's `nvmf_transport_listen_dump_trid` writes it.
fn address_json(a: &ListenAddress) -> Value {
    if a.adrfam.is_empty() {
        // A VFIOUSER address given without one (SPDK writes "unknown", which it cannot
        // read back).
        return json!({ "trtype": a.trtype, "traddr": a.traddr, "trsvcid": a.trsvcid });
    }
    json!({ "trtype": a.trtype, "adrfam": a.adrfam, "traddr": a.traddr, "trsvcid": a.trsvcid })
}

/// Stops whichever transport listens on `a`.
fn stop_listening(a: &ListenAddress) {
    if vfio_user::is_vfio_user(a) {
        vfio_user::stop_listening(a);
    } else {
        tcp::stop_listening(a);
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddListener {
    nqn: String,
    tgt_name: Option<String>,
    listen_address: ListenAddressParam,
    #[serde(default)]
    secure_channel: bool,
    ana_state: Option<String>,
    sock_impl: Option<String>,
    #[allow(dead_code)]
    numa_id: Option<i32>,
}

fn nvmf_subsystem_add_listener(params: Option<Value>) -> Result<Value, RpcError> {
    let p: AddListener = parse(params)?;
    let s = find_subsystem(&p.tgt_name, &p.nqn)?;
    let addr = listen_address(&p.listen_address)?;
    if p.secure_channel {
        if s.config().allow_any_host {
            return Err(internal("Cannot establish secure channel, when 'allow_any_host' is set"));
        }
        return Err(unsupported("secure_channel", "Ferry's NVMe/TCP has no TLS"));
    }
    match p.ana_state.as_deref() {
        None | Some("optimized") => {}
        Some(s @ ("non_optimized" | "inaccessible")) => {
            return Err(unsupported("ana_state", &format!("{s}: every listener is optimized")));
        }
        Some(other) => return Err(invalid(format!("ana_state {other:?} is not an ANA state"))),
    }
    if let Some(i) = p.sock_impl.as_deref().filter(|i| *i != "posix") {
        return Err(unsupported("sock_impl", &format!("{i}: Ferry's sockets are posix")));
    }
    if s.listeners().contains(&addr) {
        return Err(invalid(format!("listener {}:{} already exists", addr.traddr, addr.trsvcid)));
    }
    if vfio_user::is_vfio_user(&addr) {
        if s.kind() == SubsystemKind::Discovery {
            return Err(invalid("the discovery subsystem has no VFIOUSER endpoints"));
        }
        // The model knows the listener before a client can reach the endpoint.
        s.add_listener(addr.clone()).map_err(invalid)?;
        if let Err(e) = vfio_user::listen(&p.nqn, &addr) {
            let _ = s.remove_listener(&addr);
            return Err(invalid(e));
        }
        tracing::info!(nqn = %p.nqn, traddr = %addr.traddr, "nvmf: VFIOUSER listener added");
        return Ok(json!(true));
    }
    if tcp::transport_options().is_none() {
        return Err(invalid("the TCP transport must be created first (nvmf_create_transport)"));
    }
    tcp::listen(&addr).map_err(invalid)?;
    if let Err(e) = s.add_listener(addr.clone()) {
        tcp::stop_listening(&addr);
        return Err(invalid(e));
    }
    tracing::info!(nqn = %p.nqn, traddr = %addr.traddr, trsvcid = %addr.trsvcid, "nvmf: listener added");
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveListener {
    nqn: String,
    tgt_name: Option<String>,
    listen_address: ListenAddressParam,
}

fn nvmf_subsystem_remove_listener(params: Option<Value>) -> Result<Value, RpcError> {
    let p: RemoveListener = parse(params)?;
    let s = find_subsystem(&p.tgt_name, &p.nqn)?;
    let addr = listen_address(&p.listen_address)?;
    if vfio_user::is_vfio_user(&addr) {
        s.remove_listener(&addr).map_err(invalid)?;
        vfio_user::stop_listening(&addr);
        tracing::info!(nqn = %p.nqn, traddr = %addr.traddr, "nvmf: VFIOUSER listener removed");
        return Ok(json!(true));
    }
    if tcp::transport_options().is_none() {
        return Err(invalid("the TCP transport does not exist"));
    }
    s.remove_listener(&addr).map_err(invalid)?;
    tcp::stop_listening(&addr);
    tracing::info!(nqn = %p.nqn, traddr = %addr.traddr, trsvcid = %addr.trsvcid, "nvmf: listener removed");
    Ok(json!(true))
}

/// One listener as SPDK's `dump_nvmf_subsystem_listener` writes it: its address, and with
/// ANA reporting the state of every ANA group the subsystem may have (all optimized).
fn listener_json(s: &Subsystem, a: &ListenAddress) -> Value {
    let mut v = json!({ "address": address_json(a) });
    let cfg = s.config();
    if cfg.ana_reporting {
        let states: Vec<Value> = (1..=cfg.max_namespaces.min(MAX_NAMESPACES))
            .map(|g| json!({ "ana_group": g, "ana_state": "optimized" }))
            .collect();
        v["ana_states"] = Value::Array(states);
    }
    v
}

fn nvmf_subsystem_get_listeners(params: Option<Value>) -> Result<Value, RpcError> {
    let p: SubsystemRef = parse(params)?;
    let s = find_subsystem(&p.tgt_name, &p.nqn)?;
    Ok(Value::Array(s.listeners().iter().map(|a| listener_json(&s, a)).collect()))
}

// ----- namespaces -----

/// `rpc_nvmf_namespace`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NamespaceParam {
    nsid: Option<u32>,
    bdev_name: String,
    nguid: Option<String>,
    eui64: Option<String>,
    uuid: Option<String>,
    ptpl_file: Option<String>,
    anagrpid: Option<u32>,
    #[serde(default)]
    no_auto_visible: bool,
    // Ferry's bdevs have no metadata: there is nothing to hide.
    #[allow(dead_code)]
    hide_metadata: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddNs {
    nqn: String,
    namespace: NamespaceParam,
    tgt_name: Option<String>,
}

fn nvmf_subsystem_add_ns(params: Option<Value>) -> Result<Value, RpcError> {
    let p: AddNs = parse(params)?;
    let s = find_subsystem(&p.tgt_name, &p.nqn)?;
    let ns = p.namespace;
    let nguid = match ns.nguid.as_deref() {
        None => None,
        Some(h) => Some(hex_bytes::<16>(h).ok_or_else(|| spdk_invalid("Invalid nguid"))?),
    };
    let eui64 = match ns.eui64.as_deref() {
        None => None,
        Some(h) => Some(hex_bytes::<8>(h).ok_or_else(|| spdk_invalid("Invalid eui64"))?),
    };
    let uuid = match ns.uuid.as_deref() {
        None => None,
        Some(u) => {
            let parsed = uuid::Uuid::try_parse(u).ok().filter(|_| u.len() == 36);
            Some(parsed.ok_or_else(|| invalid(format!("uuid {u:?} is not an RFC 4122 UUID")))?)
        }
    }
    .filter(|u| !u.is_nil());
    if ns.ptpl_file.is_some() {
        return Err(unsupported("ptpl_file", "reservations are not persisted to a file"));
    }
    if ns.no_auto_visible {
        return Err(unsupported("no_auto_visible", "namespaces are visible to every controller"));
    }
    // SPDK's spdk_nvmf_subsystem_add_ns_ext checks, with their reasons.
    let cfg = s.config();
    let max = if s.kind() == SubsystemKind::Discovery { 0 } else { cfg.max_namespaces };
    let nsid = match ns.nsid.unwrap_or(0) {
        0 => None,
        NSID_BROADCAST => return Err(invalid(format!("NSID {NSID_BROADCAST} is the broadcast NSID"))),
        n if n > max => return Err(invalid(format!("NSID {n} is greater than max_namespaces {max}"))),
        n if s.namespace(n).is_some() => return Err(invalid(format!("Requested NSID {n} already in use"))),
        n => Some(n),
    };
    if nsid.is_none() && (1..=max).all(|n| s.namespace(n).is_some()) {
        return Err(invalid("No free namespace slot available in the subsystem"));
    }
    let anagrpid = ns.anagrpid.filter(|&g| g != 0);
    if let Some(g) = anagrpid.filter(|&g| g > max) {
        return Err(invalid(format!("ANAGRPID {g} greater than maximum NSID {max} not allowed")));
    }
    let cfg_ns = NamespaceConfig { nsid, bdev_name: ns.bdev_name.clone(), nguid, eui64, uuid, anagrpid };
    let nsid = s
        .add_namespace(cfg_ns)
        .map_err(|e| invalid(format!("Subsystem {}: bdev {} cannot be added: {e}", p.nqn, ns.bdev_name)))?;
    tracing::info!(nqn = %p.nqn, nsid, bdev = %ns.bdev_name, "nvmf: namespace added");
    Ok(json!(nsid))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveNs {
    nqn: String,
    nsid: u32,
    tgt_name: Option<String>,
}

fn nvmf_subsystem_remove_ns(params: Option<Value>) -> Result<Value, RpcError> {
    let p: RemoveNs = parse(params)?;
    let s = find_subsystem(&p.tgt_name, &p.nqn)?;
    if s.namespace(p.nsid).is_none() {
        return Err(invalid(format!("Unable to remove namespace ID {}: no such namespace", p.nsid)));
    }
    s.remove_namespace(p.nsid).map_err(|e| invalid(format!("Unable to remove namespace ID {}: {e}", p.nsid)))?;
    tracing::info!(nqn = %p.nqn, nsid = p.nsid, "nvmf: namespace removed");
    Ok(json!(true))
}

/// A namespace as SPDK's `dump_nvmf_subsystem` writes it.
fn namespace_json(ana_reporting: bool, ns: &crate::nvme::Namespace) -> Value {
    let name = ns.bdev().name().to_string();
    let mut v = json!({ "nsid": ns.nsid, "bdev_name": name, "name": name });
    if ns.nguid != [0; 16] {
        v["nguid"] = json!(hex_upper(&ns.nguid));
    }
    if ns.eui64 != [0; 8] {
        v["eui64"] = json!(hex_upper(&ns.eui64));
    }
    if !ns.uuid.is_nil() {
        v["uuid"] = json!(ns.uuid.to_string());
    }
    if ana_reporting {
        v["anagrpid"] = json!(ns.anagrpid);
    }
    v
}

// ----- hosts -----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddHost {
    nqn: String,
    host: String,
    tgt_name: Option<String>,
    psk: Option<String>,
    dhchap_key: Option<String>,
    dhchap_ctrlr_key: Option<String>,
}

fn nvmf_subsystem_add_host(params: Option<Value>) -> Result<Value, RpcError> {
    let p: AddHost = parse(params)?;
    let s = find_subsystem(&p.tgt_name, &p.nqn)?;
    if p.psk.is_some() {
        return Err(unsupported("psk", "Ferry's NVMe/TCP has no TLS"));
    }
    if p.dhchap_key.is_some() || p.dhchap_ctrlr_key.is_some() {
        return Err(unsupported("dhchap_key", "Ferry has no DH-HMAC-CHAP authentication"));
    }
    // SPDK: an invalid or already allowed host is -EINVAL, answered as "Internal error".
    check_nqn(&p.host).map_err(|e| internal(format!("Internal error: {e}")))?;
    if s.hosts().contains(&p.host) {
        return Err(internal(format!("Internal error: host {} is already allowed", p.host)));
    }
    s.add_host(&p.host).map_err(|e| internal(format!("Internal error: {e}")))?;
    tracing::info!(nqn = %p.nqn, host = %p.host, "nvmf: host allowed");
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveHost {
    nqn: String,
    host: String,
    tgt_name: Option<String>,
    #[allow(dead_code)]
    timeout_ms: Option<u64>,
}

fn nvmf_subsystem_remove_host(params: Option<Value>) -> Result<Value, RpcError> {
    let p: RemoveHost = parse(params)?;
    let s = find_subsystem(&p.tgt_name, &p.nqn)?;
    if !s.hosts().contains(&p.host) {
        return Err(internal(format!("Internal error: host {} is not allowed", p.host)));
    }
    // The model disconnects the host's controllers.
    s.remove_host(&p.host).map_err(|e| internal(format!("Internal error: {e}")))?;
    tracing::info!(nqn = %p.nqn, host = %p.host, "nvmf: host removed");
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowAnyHost {
    nqn: String,
    allow_any_host: bool,
    tgt_name: Option<String>,
}

fn nvmf_subsystem_allow_any_host(params: Option<Value>) -> Result<Value, RpcError> {
    let p: AllowAnyHost = parse(params)?;
    let s = find_subsystem(&p.tgt_name, &p.nqn)?;
    s.set_allow_any_host(p.allow_any_host);
    tracing::info!(nqn = %p.nqn, allow = p.allow_any_host, "nvmf: allow_any_host set");
    Ok(json!(true))
}

// ----- listings -----

/// A subsystem as SPDK's `dump_nvmf_subsystem` writes it.
fn subsystem_json(s: &Subsystem) -> Value {
    let cfg = s.config();
    let mut v = json!({
        "nqn": s.nqn(),
        "subtype": if s.kind() == SubsystemKind::Nvme { "NVMe" } else { "Discovery" },
        "listen_addresses": s.listeners().iter().map(address_json).collect::<Vec<_>>(),
        "allow_any_host": cfg.allow_any_host,
        "hosts": s.hosts().iter().map(|h| json!({ "nqn": h })).collect::<Vec<_>>(),
    });
    if s.kind() == SubsystemKind::Nvme {
        v["serial_number"] = json!(cfg.serial_number);
        v["model_number"] = json!(cfg.model_number);
        v["max_namespaces"] = json!(cfg.max_namespaces);
        v["passthrough"] = json!(false);
        v["min_cntlid"] = json!(cfg.min_cntlid);
        v["max_cntlid"] = json!(cfg.max_cntlid);
        v["dmrsl"] = json!(DEFAULT_DMRSL);
        v["wzsl"] = json!(DEFAULT_WZSL);
        v["namespaces"] = s.namespaces().iter().map(|ns| namespace_json(cfg.ana_reporting, ns)).collect();
    }
    v
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetSubsystems {
    nqn: Option<String>,
    tgt_name: Option<String>,
}

fn nvmf_get_subsystems(params: Option<Value>) -> Result<Value, RpcError> {
    let p: GetSubsystems = parse(params)?;
    check_target(&p.tgt_name, target_not_found)?;
    let list = match &p.nqn {
        Some(nqn) => vec![find_subsystem(&p.tgt_name, nqn)?],
        None => model::subsystems(),
    };
    Ok(Value::Array(list.iter().map(|s| subsystem_json(s)).collect()))
}

fn nvmf_subsystem_get_controllers(params: Option<Value>) -> Result<Value, RpcError> {
    let p: SubsystemRef = parse(params)?;
    let s = find_subsystem(&p.tgt_name, &p.nqn)?;
    let cntrltype = if s.kind() == SubsystemKind::Nvme { "io" } else { "discovery" };
    let list: Vec<Value> = s
        .controllers()
        .iter()
        .map(|c| {
            json!({ "cntlid": c.cntlid, "cntrltype": cntrltype, "hostnqn": c.hostnqn, "hostid": c.hostid,
                    "num_io_qpairs": c.num_io_qpairs })
        })
        .collect();
    Ok(Value::Array(list))
}

fn nvmf_subsystem_get_qpairs(params: Option<Value>) -> Result<Value, RpcError> {
    let p: SubsystemRef = parse(params)?;
    let s = find_subsystem(&p.tgt_name, &p.nqn)?;
    let v = serde_json::to_value(tcp::qpairs(s.nqn())).map_err(|e| internal(format!("Internal error: {e}")))?;
    let mut all = match v {
        Value::Array(a) => a,
        _ => Vec::new(),
    };
    // VFIOUSER queues, with Ferry's counters under "vfio_user" (doorbell traps per queue:
    // what shadow doorbells save).
    let listeners = s.listeners();
    for q in vfio_user::qpairs(s.nqn()) {
        let listen = listeners.iter().find(|l| vfio_user::is_vfio_user(l) && l.traddr == q.traddr);
        all.push(json!({
            "cntlid": q.cntlid,
            "qid": q.qid,
            "state": q.state,
            "listen_address": listen.map(address_json),
            "peer_address": vfio_user::socket_path(&q.traddr).display().to_string(),
            "vfio_user": {
                "size": q.size,
                "commands": q.commands,
                "completions": q.completions,
                "inflight": q.inflight,
                "sq_doorbell_traps": q.sq_doorbell_traps,
                "cq_doorbell_traps": q.cq_doorbell_traps,
                "shadow_doorbells": q.shadow_doorbells,
                "interrupts": q.interrupts,
            },
        }));
    }
    Ok(Value::Array(all))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetRef {
    tgt_name: Option<String>,
}

fn nvmf_get_stats(params: Option<Value>) -> Result<Value, RpcError> {
    let p: TargetRef = parse(params)?;
    check_target(&p.tgt_name, no_target)?;
    Ok(tcp::stats())
}

// ----- saved configuration -----

/// The `nvmf` subsystem's configuration, in SPDK's order: the transport, then the
/// subsystems, their hosts, their namespaces, and every listener (the discovery
/// subsystem's too), each as the call that recreates it.
pub fn write_config() -> Vec<Value> {
    let mut out = Vec::new();
    if let Some(t) = transport_json() {
        out.push(entry("nvmf_create_transport", t));
    }
    if let Some(t) = vfio_user_transport_json() {
        out.push(entry("nvmf_create_transport", t));
    }
    let all = model::subsystems();
    let nvme: Vec<&Arc<Subsystem>> = all.iter().filter(|s| s.kind() == SubsystemKind::Nvme).collect();
    for s in &nvme {
        let c = s.config();
        out.push(entry(
            "nvmf_create_subsystem",
            json!({
                "nqn": s.nqn(), "allow_any_host": c.allow_any_host, "serial_number": c.serial_number,
                "model_number": c.model_number, "max_namespaces": c.max_namespaces,
                "min_cntlid": c.min_cntlid, "max_cntlid": c.max_cntlid, "ana_reporting": c.ana_reporting,
                "dmrsl": DEFAULT_DMRSL, "wzsl": DEFAULT_WZSL, "passthrough": false, "enable_nssr": false,
            }),
        ));
    }
    for s in &nvme {
        for h in s.hosts() {
            out.push(entry("nvmf_subsystem_add_host", json!({ "nqn": s.nqn(), "host": h })));
        }
    }
    for s in &nvme {
        let ana = s.config().ana_reporting;
        for ns in s.namespaces() {
            let mut n = namespace_json(ana, &ns);
            if let Some(o) = n.as_object_mut() {
                o.remove("name");
            }
            n["no_auto_visible"] = json!(false);
            out.push(entry("nvmf_subsystem_add_ns", json!({ "nqn": s.nqn(), "namespace": n })));
        }
    }
    for s in &all {
        for a in s.listeners() {
            out.push(entry(
                "nvmf_subsystem_add_listener",
                json!({ "nqn": s.nqn(), "listen_address": address_json(&a), "secure_channel": false }),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_nvme::spec::DISCOVERY_NQN;

    #[test]
    fn nqns_are_checked_as_spdk_does() {
        for ok in [
            "nqn.2016-06.io.spdk:cnode1",
            DISCOVERY_NQN,
            "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555",
            "nqn.2014-08.com.a-b.c:x",
            "nqn.2014-08.a:ü",
        ] {
            assert_eq!(check_nqn(ok), Ok(()), "{ok}");
        }
        for bad in [
            "nqn.2016",
            "iqn.2016-06.io.spdk:cnode1",
            "nqn.16-06.io.spdk:cnode1",
            "nqn.2016-06.io.spdk",
            "nqn.2016-06.io.spdk:",
            "nqn.2016-06.1o.spdk:x",
            "nqn.2016-06.io-.spdk:x",
            "nqn.2016-06.io.spdk-:x",
            "nqn.2016-06.io_x.spdk:x",
            "nqn.2014-08.org.nvmexpress:uuid:1111",
            "nqn.2014-08.org.nvmexpress:uuid:zzzzzzzz-2222-3333-4444-555555555555",
        ] {
            assert!(check_nqn(bad).is_err(), "{bad}");
        }
        let long = format!("nqn.2016-06.io.spdk:{}", "x".repeat(model::MAX_NQN_LEN));
        assert!(check_nqn(&long).unwrap_err().contains("length"));
        let label = format!("nqn.2016-06.{}.io:x", "a".repeat(70));
        assert!(check_nqn(&label).unwrap_err().contains("too long"));
    }

    #[test]
    fn hex_identifiers_decode_exactly_their_size() {
        assert_eq!(hex_bytes::<8>("0123456789abcDEF"), Some([0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]));
        assert_eq!(hex_bytes::<8>("0123456789abcdef00"), None);
        assert_eq!(hex_bytes::<8>("0123456789abcdeg"), None);
        assert_eq!(hex_bytes::<8>("+123456789abcdef"), None);
        assert_eq!(hex_upper(&[0xab, 0x01]), "AB01");
    }
}
