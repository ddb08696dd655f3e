//! BARE-BONES, replaced later by the rpc part (its `src/nvmf/rpc.rs`): just enough of
//! SPDK's `nvmf_*` methods for the TCP target's tests to start the transport and serve a
//! subsystem. They call the transport's functions and the model's registry as they are;
//! SPDK's full parameters, errors and outputs are the rpc part's job.

use crate::nvme::subsystem::{self, ListenAddress, NamespaceConfig, SubsystemConfig};
use crate::nvmf::tcp::{self, TcpTransportOptions};
use crate::rpc::{no_params, parse, RpcError, RpcMethod};
use serde::Deserialize;
use serde_json::{json, Value};

/// The methods.
pub const METHODS: &[RpcMethod] = &[
    RpcMethod::runtime("nvmf_create_transport", nvmf_create_transport),
    RpcMethod::runtime("nvmf_create_subsystem", nvmf_create_subsystem),
    RpcMethod::runtime("nvmf_subsystem_add_listener", nvmf_subsystem_add_listener),
    RpcMethod::runtime("nvmf_subsystem_add_ns", nvmf_subsystem_add_ns),
    RpcMethod::runtime("nvmf_get_stats", nvmf_get_stats),
];

fn failed(e: impl std::fmt::Display) -> RpcError {
    RpcError::new(crate::rpc::error::INTERNAL_ERROR, e.to_string())
}

#[derive(Deserialize)]
struct CreateTransport {
    trtype: String,
    #[serde(flatten)]
    opts: TcpTransportOptions,
}

fn nvmf_create_transport(params: Option<Value>) -> Result<Value, RpcError> {
    let p: CreateTransport = parse(params)?;
    if !p.trtype.eq_ignore_ascii_case("tcp") {
        return Err(RpcError::invalid_params(format!("transport type {} is not supported", p.trtype)));
    }
    tcp::create_transport(p.opts).map_err(failed)?;
    Ok(json!(true))
}

#[derive(Deserialize)]
struct CreateSubsystem {
    nqn: String,
    #[serde(default)]
    serial_number: Option<String>,
    #[serde(default)]
    model_number: Option<String>,
    #[serde(default)]
    allow_any_host: bool,
    #[serde(default)]
    max_namespaces: u32,
}

fn nvmf_create_subsystem(params: Option<Value>) -> Result<Value, RpcError> {
    let p: CreateSubsystem = parse(params)?;
    subsystem::create_subsystem(SubsystemConfig {
        nqn: p.nqn,
        serial_number: p.serial_number.unwrap_or_else(|| "00000000000000000000".into()),
        model_number: p.model_number.unwrap_or_else(|| "SPDK bdev Controller".into()),
        max_namespaces: p.max_namespaces,
        allow_any_host: p.allow_any_host,
        ana_reporting: false,
        min_cntlid: 1,
        max_cntlid: 0xffef,
    })
    .map_err(failed)?;
    Ok(json!(true))
}

#[derive(Deserialize)]
struct AddListener {
    nqn: String,
    listen_address: ListenAddress,
}

fn nvmf_subsystem_add_listener(params: Option<Value>) -> Result<Value, RpcError> {
    let p: AddListener = parse(params)?;
    let s = subsystem::subsystem(&p.nqn).ok_or_else(|| failed(format!("subsystem {} not found", p.nqn)))?;
    let bound = tcp::listen(&p.listen_address).map_err(failed)?;
    if let Err(e) = s.add_listener(bound.clone()) {
        tcp::stop_listening(&bound);
        return Err(failed(e));
    }
    Ok(json!(true))
}

#[derive(Deserialize)]
struct NsParams {
    bdev_name: String,
    #[serde(default)]
    nsid: Option<u32>,
}

#[derive(Deserialize)]
struct AddNs {
    nqn: String,
    namespace: NsParams,
}

fn nvmf_subsystem_add_ns(params: Option<Value>) -> Result<Value, RpcError> {
    let p: AddNs = parse(params)?;
    let s = subsystem::subsystem(&p.nqn).ok_or_else(|| failed(format!("subsystem {} not found", p.nqn)))?;
    let nsid = s
        .add_namespace(NamespaceConfig {
            nsid: p.namespace.nsid,
            bdev_name: p.namespace.bdev_name,
            nguid: None,
            eui64: None,
            uuid: None,
            anagrpid: None,
        })
        .map_err(failed)?;
    Ok(json!(nsid))
}

fn nvmf_get_stats(params: Option<Value>) -> Result<Value, RpcError> {
    no_params(params)?;
    Ok(tcp::stats())
}
