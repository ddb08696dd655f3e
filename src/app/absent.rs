//! Options methods of SPDK subsystems and modules Ferry does not have.
//!
//! A configuration saved by SPDK sets the options of every subsystem it runs (`iobuf`,
//! `sock`, `accel`, `nvmf`, the NVMe and RAID bdev modules, the scheduler, ...), and rpc.py's
//! `load_config` refuses a document naming a method the server does not list. Ferry serves
//! these methods so such a document loads: each parameter SPDK's schema defines is checked
//! for its type and then accepted, and the call is logged; none changes what Ferry does
//! (Ferry has no buffer pools, socket layer, accel engine, NVMe driver, ... to apply them to).
//! Their parameters come from SPDK's `schema/schema.yaml`.

use crate::rpc::spdk_params::ParamType::{Array, Bool, Object, Str};
use crate::rpc::{no_params, RpcError, RpcMethod, SpdkParam, U16, U32, U64, U8};
use serde_json::{json, Value};

/// `SpdkParam::any`, short.
const fn p(name: &'static str, ty: crate::rpc::spdk_params::ParamType) -> SpdkParam {
    SpdkParam::any(name, ty)
}

/// An options method: always callable (SPDK allows most only before `framework_start_init`;
/// Ferry has nothing to initialise later, so a configuration replays in either state).
const fn options(name: &'static str, params: &'static [SpdkParam]) -> RpcMethod {
    RpcMethod::always(name, accepted).accepting(params)
}

/// The handler of every options method: the dispatcher has checked and removed each SPDK
/// parameter (and logged them), so anything left is a parameter SPDK does not define.
fn accepted(params: Option<Value>) -> Result<Value, RpcError> {
    no_params(params)?;
    Ok(json!(true))
}

/// The options methods.
pub const METHODS: &[RpcMethod] = &[
    // iobuf
    options(
        "iobuf_set_options",
        &[
            p("small_pool_count", U64),
            p("large_pool_count", U64),
            p("small_bufsize", U32),
            p("large_bufsize", U32),
            p("enable_numa", Bool),
        ],
    ),
    // sock
    options("sock_set_default_impl", &[p("impl_name", Str)]),
    options(
        "sock_impl_set_options",
        &[
            p("impl_name", Str),
            p("recv_buf_size", U32),
            p("send_buf_size", U32),
            p("enable_recv_pipe", Bool),
            p("enable_quickack", Bool),
            p("enable_placement_id", U32),
            p("enable_zerocopy_send_server", Bool),
            p("enable_zerocopy_send_client", Bool),
            p("zerocopy_threshold", U32),
            p("tls_version", U32),
            p("enable_ktls", Bool),
        ],
    ),
    // accel
    options(
        "accel_set_options",
        &[
            p("small_cache_size", U32),
            p("large_cache_size", U32),
            p("task_count", U32),
            p("sequence_count", U32),
            p("buf_count", U32),
        ],
    ),
    options("accel_assign_opc", &[p("opname", Str), p("module", Str)]),
    options("accel_set_driver", &[p("name", Str)]),
    // bdev layer and bdev modules Ferry does not have
    options(
        "bdev_set_options",
        &[
            p("bdev_io_pool_size", U32),
            p("bdev_io_cache_size", U32),
            p("bdev_auto_examine", Bool),
            p("iobuf_small_cache_size", U32),
            p("iobuf_large_cache_size", U32),
        ],
    ),
    options("bdev_nvme_set_hotplug", &[p("enable", Bool), p("period_us", U64)]),
    options("bdev_iscsi_set_options", &[p("timeout_sec", U64)]),
    // NVMe-oF target
    options(
        "nvmf_set_config",
        &[
            p("admin_cmd_passthru", Object),
            p("poll_groups_mask", Str),
            // The older spelling of discovery_filters, which SPDK still accepts.
            p("discovery_filter", Str),
            p("discovery_filters", Array),
            p("dhchap_digests", Array),
            p("dhchap_dhgroups", Array),
            p("dup_host_policy", Str),
        ],
    ),
    options("nvmf_set_max_subsystems", &[p("max_subsystems", U32)]),
    options("nvmf_set_crdt", &[p("crdt1", U16), p("crdt2", U16), p("crdt3", U16)]),
    // scheduler: Ferry's reactors are always pinned one thread per core (SPDK's `static`).
    options(
        "framework_set_scheduler",
        &[
            p("name", Str),
            p("period", U64),
            p("load_limit", U8),
            p("core_limit", U8),
            p("core_busy", U8),
            p("mappings", Str),
        ],
    ),
    // fsdev, keyring
    options("fsdev_set_opts", &[p("fsdev_io_pool_size", U32), p("fsdev_io_cache_size", U32)]),
    options("keyring_linux_set_options", &[p("enable", Bool)]),
];

#[cfg(test)]
mod tests {
    use crate::rpc::spdk_params::strip;
    use serde_json::json;

    #[test]
    fn options_are_checked_for_type_and_unknown_names_refused() {
        let m = super::METHODS.iter().find(|m| m.name == "bdev_set_options").unwrap();
        let (rest, taken) = strip(m.spdk_params, Some(json!({"bdev_io_pool_size": 65535}))).unwrap();
        assert_eq!(taken, ["bdev_io_pool_size"]);
        assert_eq!((m.handler)(rest).unwrap(), json!(true));
        let e = strip(m.spdk_params, Some(json!({"bdev_io_pool_size": -1}))).unwrap_err();
        assert!(e.message.contains("bdev_io_pool_size"), "{}", e.message);
        let (rest, _) = strip(m.spdk_params, Some(json!({"no_such_option": 1}))).unwrap();
        let e = (m.handler)(rest).unwrap_err();
        assert!(e.message.contains("no_such_option"), "{}", e.message);
    }
}
