//! The framework's RPC methods: discovery, version, start-up, reactors and threads,
//! configuration, logging.

use super::config;
use super::cpu_stat;
use crate::framework::{self, reactor, ticks};
use crate::rpc::{self, no_params, parse, Allowed, RpcError, RpcMethod};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Mutex;

/// A configuration waiting for `framework_start_init` (`ferryd -c FILE --wait-for-rpc`).
static PENDING_CONFIG: Mutex<Option<Value>> = Mutex::new(None);

/// Keeps `doc` to replay when `framework_start_init` is called.
pub fn defer_config(doc: Value) {
    *PENDING_CONFIG.lock().unwrap_or_else(|e| e.into_inner()) = Some(doc);
}

/// The framework's methods.
pub const METHODS: &[RpcMethod] = &[
    RpcMethod::always("rpc_get_methods", rpc_get_methods),
    RpcMethod::always("spdk_get_version", spdk_get_version),
    RpcMethod::runtime("spdk_kill_instance", spdk_kill_instance),
    RpcMethod::always("framework_start_init", framework_start_init).when(Allowed::Startup).unlocked(),
    RpcMethod::always("framework_wait_init", framework_wait_init).unlocked(),
    RpcMethod::always("framework_get_reactors", framework_get_reactors),
    RpcMethod::always("framework_get_subsystems", framework_get_subsystems),
    RpcMethod::always("framework_get_config", framework_get_config),
    RpcMethod::always("thread_get_stats", thread_get_stats),
    RpcMethod::always("thread_get_pollers", thread_get_pollers),
    RpcMethod::always("save_config", save_config),
    // Unlocked: it calls each entry through the dispatcher, which takes the lock per call.
    RpcMethod::always("load_config", load_config).unlocked(),
    RpcMethod::always("log_set_level", log_set_level),
    RpcMethod::always("log_get_level", log_get_level),
    RpcMethod::always("log_set_print_level", log_set_level),
    RpcMethod::always("log_get_print_level", log_get_level),
    RpcMethod::always("log_set_flag", log_set_flag),
    RpcMethod::always("log_clear_flag", log_clear_flag),
    RpcMethod::always("log_get_flags", log_get_flags),
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetMethods {
    #[serde(default)]
    current: bool,
    #[serde(default)]
    include_aliases: bool,
}

fn rpc_get_methods(params: Option<Value>) -> Result<Value, RpcError> {
    let p: GetMethods = parse(params)?;
    let _ = p.include_aliases; // Ferry registers no deprecated aliases.
    let initialised = super::is_initialised();
    let names: Vec<&str> = rpc::table::all()
        .filter(|m| {
            !p.current
                || match m.allowed {
                    Allowed::Always => true,
                    Allowed::Runtime => initialised,
                    Allowed::Startup => !initialised,
                }
        })
        .map(|m| m.name)
        .collect();
    Ok(json!(names))
}

fn spdk_get_version(params: Option<Value>) -> Result<Value, RpcError> {
    no_params(params)?;
    let mut parts = super::VERSION.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let (major, minor, patch) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    Ok(json!({
        "version": format!("Ferry v{}", super::VERSION),
        "fields": { "major": major, "minor": minor, "patch": patch, "suffix": "" }
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KillInstance {
    sig_name: String,
}

/// The signals `spdk_kill_instance` sends (SPDK's `kill_signal`).
const KILL_SIGNALS: &[(&str, i32)] = &[
    ("SIGINT", libc::SIGINT),
    ("SIGTERM", libc::SIGTERM),
    ("SIGQUIT", libc::SIGQUIT),
    ("SIGHUP", libc::SIGHUP),
    ("SIGKILL", libc::SIGKILL),
    ("SIGUSR1", libc::SIGUSR1),
];

/// Sends the daemon a signal, as SPDK does: SIGINT and SIGTERM shut it down cleanly.
fn spdk_kill_instance(params: Option<Value>) -> Result<Value, RpcError> {
    let p: KillInstance = parse(params)?;
    let &(_, signal) = KILL_SIGNALS.iter().find(|(name, _)| *name == p.sig_name).ok_or_else(|| {
        let names: Vec<&str> = KILL_SIGNALS.iter().map(|(n, _)| *n).collect();
        RpcError::invalid_params(format!("sig_name {:?} is not one of {names:?}", p.sig_name))
    })?;
    tracing::info!(signal = %p.sig_name, "spdk_kill_instance");
    // SAFETY: kill(2) on our own pid with a valid signal number; no memory is involved.
    if unsafe { libc::kill(libc::getpid(), signal) } != 0 {
        return Err(RpcError::errno(
            libc::EPERM,
            format!("sending {}: {}", p.sig_name, std::io::Error::last_os_error()),
        ));
    }
    Ok(json!(true))
}

fn framework_start_init(params: Option<Value>) -> Result<Value, RpcError> {
    no_params(params)?;
    super::mark_initialised();
    let pending = PENDING_CONFIG.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(doc) = pending {
        config::load_at_start(&doc)?;
    }
    Ok(json!(true))
}

fn framework_wait_init(params: Option<Value>) -> Result<Value, RpcError> {
    no_params(params)?;
    super::wait_initialised();
    Ok(json!(true))
}

fn internal(e: framework::FrameworkError) -> RpcError {
    RpcError::new(crate::rpc::error::INTERNAL_ERROR, e.to_string())
}

fn thread_name(core: u32) -> String {
    format!("reactor_{core}")
}

/// A core mask as SPDK prints a thread's (`spdk_cpuset_fmt`): hex digits without `0x`.
fn spdk_cpuset_fmt(core: u32) -> String {
    let mask = framework::Cpumask::single(core).to_string();
    mask.trim_start_matches("0x").to_string()
}

/// SPDK's reactor objects, exactly the members spdk_top decodes (it refuses unknown ones):
/// one lightweight thread per reactor, since Ferry's thread is its reactor.
fn framework_get_reactors(params: Option<Value>) -> Result<Value, RpcError> {
    no_params(params)?;
    // Read from outside: a message to each reactor would wake it and spoil `in_interrupt`.
    let tids = cpu_stat::thread_ids();
    let reactors: Vec<Value> = framework::reactors()
        .iter()
        .map(|r| {
            let s = r.stats();
            let cpu = cpu_stat::times(s.core);
            let tid = tids.get(&thread_name(s.core)).copied().unwrap_or(0);
            json!({
                "lcore": s.core,
                "numa_id": cpu_stat::numa_node(s.core),
                "tid": tid,
                "busy": s.busy_ticks,
                "idle": s.idle_ticks,
                "in_interrupt": s.sleeping,
                "irq": cpu.irq,
                "sys": cpu.sys,
                "usr": cpu.usr,
                "lw_threads": [{
                    "name": thread_name(s.core),
                    "id": s.index + 1,
                    "cpumask": spdk_cpuset_fmt(s.core),
                    "elapsed": s.elapsed_ticks,
                }]
            })
        })
        .collect();
    Ok(json!({ "tick_rate": ticks::tick_rate(), "pid": std::process::id(), "reactors": reactors }))
}

fn thread_get_stats(params: Option<Value>) -> Result<Value, RpcError> {
    no_params(params)?;
    let threads: Vec<Value> = framework::reactors()
        .iter()
        .map(|r| {
            let s = r.stats();
            json!({
                "name": thread_name(s.core),
                "id": s.index + 1,
                "cpumask": spdk_cpuset_fmt(s.core),
                "busy": s.busy_ticks,
                "idle": s.idle_ticks,
                "active_pollers_count": s.active_pollers,
                "timed_pollers_count": s.timed_pollers,
                "paused_pollers_count": 0,
            })
        })
        .collect();
    Ok(json!({ "tick_rate": ticks::tick_rate(), "threads": threads }))
}

fn thread_get_pollers(params: Option<Value>) -> Result<Value, RpcError> {
    no_params(params)?;
    let per_reactor =
        framework::call_on_each(|| (framework::current_index().unwrap_or(0), reactor::pollers())).map_err(internal)?;
    let threads: Vec<Value> = per_reactor
        .into_iter()
        .map(|(index, pollers)| {
            let core = framework::reactors().get(index).map(|r| r.core()).unwrap_or(0);
            // A poller's id is its place in its thread's list, counted from 1 as SPDK does.
            let describe = |(i, p): (usize, &reactor::PollerInfo)| {
                json!({ "name": p.name, "id": i + 1, "state": "waiting", "run_count": p.run_count,
                        "busy_count": p.busy_count, "period_ticks": p.period_ticks })
            };
            let (active, timed): (Vec<_>, Vec<_>) = pollers.iter().enumerate().partition(|(_, p)| p.period_ticks == 0);
            json!({
                "name": thread_name(core),
                "id": index + 1,
                "active_pollers": active.into_iter().map(describe).collect::<Vec<_>>(),
                "timed_pollers": timed.into_iter().map(describe).collect::<Vec<_>>(),
                "paused_pollers": [],
            })
        })
        .collect();
    Ok(json!({ "tick_rate": ticks::tick_rate(), "threads": threads }))
}

fn framework_get_subsystems(params: Option<Value>) -> Result<Value, RpcError> {
    no_params(params)?;
    Ok(json!(config::SUBSYSTEMS
        .iter()
        .map(|s| json!({ "subsystem": s.name, "depends_on": s.depends_on }))
        .collect::<Vec<_>>()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetConfig {
    name: String,
    /// Keep SPDK's batch arrays (groups of create calls) instead of flattening them.
    #[serde(default)]
    with_batches: bool,
}

fn framework_get_config(params: Option<Value>) -> Result<Value, RpcError> {
    let p: GetConfig = parse(params)?;
    config::subsystem_config(&p.name, p.with_batches)
        .map(Value::from)
        .ok_or_else(|| RpcError::invalid_params(format!("subsystem {} not found", p.name)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SaveConfig {
    /// As `framework_get_config`'s.
    #[serde(default)]
    with_batches: bool,
}

fn save_config(params: Option<Value>) -> Result<Value, RpcError> {
    let p: SaveConfig = parse(params)?;
    Ok(config::save(p.with_batches))
}

fn load_config(params: Option<Value>) -> Result<Value, RpcError> {
    let doc = params.ok_or_else(|| RpcError::invalid_params("load_config needs the configuration document"))?;
    config::load(&doc)?;
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Level {
    level: String,
}

fn log_set_level(params: Option<Value>) -> Result<Value, RpcError> {
    let p: Level = parse(params)?;
    if !super::log::set_level(&p.level) {
        return Err(RpcError::invalid_params(format!(
            "unknown log level {:?}, expected one of {:?}",
            p.level,
            super::log::LEVELS
        )));
    }
    Ok(json!(true))
}

fn log_get_level(params: Option<Value>) -> Result<Value, RpcError> {
    no_params(params)?;
    Ok(json!(super::log::level()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Flag {
    flag: String,
}

fn set_flag(params: Option<Value>, on: bool) -> Result<Value, RpcError> {
    let p: Flag = parse(params)?;
    if !super::log::set_flag(&p.flag, on) {
        return Err(RpcError::invalid_params(format!("unknown log flag {:?}", p.flag)));
    }
    Ok(json!(true))
}

fn log_set_flag(params: Option<Value>) -> Result<Value, RpcError> {
    set_flag(params, true)
}

fn log_clear_flag(params: Option<Value>) -> Result<Value, RpcError> {
    set_flag(params, false)
}

fn log_get_flags(params: Option<Value>) -> Result<Value, RpcError> {
    no_params(params)?;
    let map: serde_json::Map<String, Value> =
        super::log::flags().into_iter().map(|(f, on)| (f.to_string(), Value::Bool(on))).collect();
    Ok(Value::Object(map))
}
