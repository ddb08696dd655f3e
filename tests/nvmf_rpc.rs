//! The NVMe-oF target's management against a real `ferryd`: every `nvmf_*` method with SPDK's
//! keys and values, every error with SPDK's code and message, listeners really listening (and
//! freeing their port when removed), namespaces claiming their bdevs, `ferryctl` with rpc.py's
//! command lines, and `save_config` -> `ferryd -c` reproducing every `nvmf_get_*` answer.

mod common;

use common::{free_port, Ferryd, RpcErr};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

const INVALID_PARAMS: i64 = -32602;
const INTERNAL_ERROR: i64 = -32603;
const DISCOVERY: &str = "nqn.2014-08.org.nvmexpress.discovery";
const NQN1: &str = "nqn.2016-06.io.spdk:cnode1";
const NQN2: &str = "nqn.2016-06.io.spdk:cnode2";
const HOST1: &str = "nqn.2014-08.org.nvmexpress:uuid:9a2a9b4c-0b7e-4c51-8a6f-1f2d3e4c5b6a";

fn malloc(d: &Ferryd, name: &str) {
    d.ok("bdev_malloc_create", json!({"name": name, "num_blocks": 2048, "block_size": 512}));
}

fn transport(d: &Ferryd) {
    assert_eq!(d.ok("nvmf_create_transport", json!({"trtype": "TCP"})), true);
}

fn subsystem(d: &Ferryd, nqn: &str) {
    assert_eq!(d.ok("nvmf_create_subsystem", json!({"nqn": nqn})), true);
}

fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), Duration::from_secs(5)).is_ok()
}

fn listen_address(port: u16) -> Value {
    json!({"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()})
}

fn add_listener(d: &Ferryd, nqn: &str, port: u16) {
    let params =
        json!({"nqn": nqn, "listen_address": {"trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": port.to_string()}});
    assert_eq!(d.ok("nvmf_subsystem_add_listener", params), true);
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object().unwrap_or_else(|| panic!("{v} is not an object")).keys().map(String::as_str).collect()
}

fn set<'a>(names: &[&'a str]) -> BTreeSet<&'a str> {
    names.iter().copied().collect()
}

fn assert_err(e: RpcErr, code: i64, wanted: &str) {
    assert_eq!(e.code, code, "{e:?}");
    assert!(e.message.contains(wanted), "{:?} does not contain {wanted:?}", e.message);
}

/// SPDK's `nvmf_transport_dump_opts` + TCP's `dump_opts` keys.
const TRANSPORT_KEYS: &[&str] = &[
    "trtype",
    "max_queue_depth",
    "max_io_qpairs_per_ctrlr",
    "in_capsule_data_size",
    "max_io_size",
    "max_aq_depth",
    "iobuf_small_cache_size",
    "iobuf_large_cache_size",
    "dif_insert_or_strip",
    "zcopy",
    "c2h_success",
    "sock_priority",
    "abort_timeout_sec",
    "ack_timeout",
    "data_wr_pool_size",
    "disable_command_passthru",
    "kas",
    "min_kato",
];

/// SPDK's `dump_nvmf_subsystem` keys of an NVMe subsystem (no admin_label).
const NVME_SUBSYSTEM_KEYS: &[&str] = &[
    "nqn",
    "subtype",
    "listen_addresses",
    "allow_any_host",
    "hosts",
    "serial_number",
    "model_number",
    "max_namespaces",
    "passthrough",
    "min_cntlid",
    "max_cntlid",
    "dmrsl",
    "wzsl",
    "namespaces",
];

#[test]
fn every_method_answers_with_spdks_keys() {
    let d = Ferryd::start(&["-m", "0x3"]);
    malloc(&d, "Malloc0");
    malloc(&d, "Malloc1");

    // Before any transport: no transports, the discovery subsystem alone.
    assert_eq!(d.ok("nvmf_get_transports", Value::Null), json!([]));
    let subs = d.ok("nvmf_get_subsystems", Value::Null);
    assert_eq!(
        subs,
        json!([{"nqn": DISCOVERY, "subtype": "Discovery", "listen_addresses": [], "allow_any_host": true, "hosts": []}])
    );

    transport(&d);
    let t = d.ok("nvmf_get_transports", Value::Null);
    assert_eq!(t.as_array().unwrap().len(), 1, "{t}");
    assert_eq!(keys(&t[0]), set(TRANSPORT_KEYS), "{t}");
    // SPDK's TCP defaults (lib/nvmf/tcp.c, transport.c).
    for (k, v) in [
        ("trtype", json!("TCP")),
        ("max_queue_depth", json!(128)),
        ("max_io_qpairs_per_ctrlr", json!(127)),
        ("in_capsule_data_size", json!(4096)),
        ("max_io_size", json!(131072)),
        ("max_aq_depth", json!(128)),
        ("iobuf_small_cache_size", json!(u32::MAX)),
        ("iobuf_large_cache_size", json!(u32::MAX)),
        ("c2h_success", json!(true)),
        ("zcopy", json!(false)),
        ("sock_priority", json!(0)),
        ("abort_timeout_sec", json!(1)),
        ("kas", json!(100)),
        ("min_kato", json!(10000)),
    ] {
        assert_eq!(t[0][k], v, "{k}: {t}");
    }
    assert_eq!(d.ok("nvmf_get_transports", json!({"trtype": "tcp", "tgt_name": "nvmf_tgt"})), t);

    subsystem(&d, NQN1);
    assert_eq!(
        d.ok(
            "nvmf_create_subsystem",
            json!({"nqn": NQN2, "serial_number": "SPDK00000000000001", "model_number": "Ferry Controller",
                   "allow_any_host": true, "ana_reporting": true, "max_namespaces": 4, "min_cntlid": 5, "max_cntlid": 10})
        ),
        true
    );
    let subs = d.ok("nvmf_get_subsystems", Value::Null);
    let nqns: Vec<&str> = subs.as_array().unwrap().iter().map(|s| s["nqn"].as_str().unwrap()).collect();
    assert_eq!(nqns, [DISCOVERY, NQN1, NQN2], "discovery first, then creation order");
    let s1 = &subs[1];
    assert_eq!(keys(s1), set(NVME_SUBSYSTEM_KEYS), "{s1}");
    assert_eq!(
        (&s1["subtype"], &s1["serial_number"], &s1["model_number"], &s1["max_namespaces"]),
        (&json!("NVMe"), &json!("00000000000000000000"), &json!("SPDK bdev Controller"), &json!(32)),
        "SPDK's defaults: {s1}"
    );
    assert_eq!(
        (&s1["min_cntlid"], &s1["max_cntlid"], &s1["dmrsl"], &s1["wzsl"], &s1["allow_any_host"], &s1["passthrough"]),
        (&json!(1), &json!(0xffef), &json!(2097152), &json!(12), &json!(false), &json!(false)),
        "{s1}"
    );
    let s2 = d.ok("nvmf_get_subsystems", json!({"nqn": NQN2}));
    assert_eq!(
        (&s2[0]["serial_number"], &s2[0]["model_number"], &s2[0]["allow_any_host"], &s2[0]["max_namespaces"]),
        (&json!("SPDK00000000000001"), &json!("Ferry Controller"), &json!(true), &json!(4))
    );
    assert_eq!((&s2[0]["min_cntlid"], &s2[0]["max_cntlid"]), (&json!(5), &json!(10)));

    // Namespaces: the lowest free NSID, or the one asked for; identifiers from the bdev or given.
    assert_eq!(d.ok("nvmf_subsystem_add_ns", json!({"nqn": NQN1, "namespace": {"bdev_name": "Malloc0"}})), 1);
    let uuid = "ceccf520-691e-4b46-9546-34af789907c5";
    let ns = json!({"bdev_name": "Malloc1", "nsid": 7, "nguid": "000102030405060708090a0b0c0d0e0f",
                    "eui64": "1122334455667788", "uuid": uuid});
    assert_eq!(d.ok("nvmf_subsystem_add_ns", json!({"nqn": NQN1, "namespace": ns})), 7);
    let s1 = d.ok("nvmf_get_subsystems", json!({"nqn": NQN1}));
    let nss = s1[0]["namespaces"].as_array().unwrap();
    let bdev_uuid = d.ok("bdev_get_bdevs", json!({"name": "Malloc0"}))[0]["uuid"].as_str().unwrap().to_string();
    assert_eq!(keys(&nss[0]), set(&["nsid", "bdev_name", "name", "nguid", "uuid"]), "{s1}");
    assert_eq!(
        (&nss[0]["nsid"], &nss[0]["bdev_name"], &nss[0]["name"], &nss[0]["uuid"]),
        (&json!(1), &json!("Malloc0"), &json!("Malloc0"), &json!(bdev_uuid))
    );
    assert_eq!(nss[0]["nguid"], bdev_uuid.replace('-', "").to_uppercase(), "the NGUID is the bdev's uuid");
    assert_eq!(
        nss[1],
        json!({"nsid": 7, "bdev_name": "Malloc1", "name": "Malloc1", "nguid": "000102030405060708090A0B0C0D0E0F",
               "eui64": "1122334455667788", "uuid": uuid})
    );
    assert_eq!(d.ok("bdev_get_bdevs", json!({"name": "Malloc0"}))[0]["claimed"], true, "the namespace claims it");

    // ANA reporting: anagrpid shown, defaulting to the NSID.
    malloc(&d, "Malloc2");
    d.ok("nvmf_subsystem_add_ns", json!({"nqn": NQN2, "namespace": {"bdev_name": "Malloc2", "nsid": 2}}));
    let s2 = d.ok("nvmf_get_subsystems", json!({"nqn": NQN2}));
    assert_eq!(s2[0]["namespaces"][0]["anagrpid"], 2, "{s2}");

    // Hosts.
    assert_eq!(d.ok("nvmf_subsystem_add_host", json!({"nqn": NQN1, "host": HOST1})), true);
    d.ok("nvmf_subsystem_add_host", json!({"nqn": NQN1, "host": "nqn.2016-06.io.spdk:host2"}));
    let s1 = d.ok("nvmf_get_subsystems", json!({"nqn": NQN1}));
    let hosts: BTreeSet<&str> = s1[0]["hosts"].as_array().unwrap().iter().map(|h| h["nqn"].as_str().unwrap()).collect();
    assert_eq!(hosts, set(&[HOST1, "nqn.2016-06.io.spdk:host2"]));
    assert_eq!(keys(&s1[0]["hosts"][0]), set(&["nqn"]));
    assert_eq!(d.ok("nvmf_subsystem_remove_host", json!({"nqn": NQN1, "host": "nqn.2016-06.io.spdk:host2"})), true);
    assert_eq!(d.ok("nvmf_get_subsystems", json!({"nqn": NQN1}))[0]["hosts"], json!([{"nqn": HOST1}]));
    assert_eq!(d.ok("nvmf_subsystem_allow_any_host", json!({"nqn": NQN1, "allow_any_host": true})), true);
    assert_eq!(d.ok("nvmf_get_subsystems", json!({"nqn": NQN1}))[0]["allow_any_host"], true);
    d.ok("nvmf_subsystem_allow_any_host", json!({"nqn": NQN1, "allow_any_host": false}));
    assert_eq!(d.ok("nvmf_get_subsystems", json!({"nqn": NQN1}))[0]["allow_any_host"], false);

    // Listeners: canonical addresses, and ANA states with ANA reporting.
    let port = free_port();
    add_listener(&d, NQN1, port);
    add_listener(&d, NQN2, port);
    add_listener(&d, DISCOVERY, port);
    let l1 = d.ok("nvmf_subsystem_get_listeners", json!({"nqn": NQN1}));
    assert_eq!(l1, json!([{"address": listen_address(port)}]));
    let l2 = d.ok("nvmf_subsystem_get_listeners", json!({"nqn": NQN2}));
    let states = l2[0]["ana_states"].as_array().unwrap();
    assert_eq!(states.len(), 4, "one per possible ANA group (max_namespaces): {l2}");
    assert_eq!(states[3], json!({"ana_group": 4, "ana_state": "optimized"}));
    let subs = d.ok("nvmf_get_subsystems", Value::Null);
    for s in subs.as_array().unwrap() {
        assert_eq!(s["listen_addresses"], json!([listen_address(port)]), "{s}");
    }

    // Controllers, queue pairs (none connected), stats.
    assert_eq!(d.ok("nvmf_subsystem_get_controllers", json!({"nqn": NQN1})), json!([]));
    assert_eq!(d.ok("nvmf_subsystem_get_qpairs", json!({"nqn": NQN1})), json!([]));
    assert_eq!(d.ok("nvmf_subsystem_get_controllers", json!({"nqn": DISCOVERY})), json!([]));
    let stats = d.ok("nvmf_get_stats", Value::Null);
    assert_eq!(keys(&stats), set(&["tick_rate", "poll_groups"]), "{stats}");
    assert!(stats["tick_rate"].as_u64().unwrap() > 0);
    let groups = stats["poll_groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "one poll group per reactor: {stats}");
    for g in groups {
        for k in ["name", "admin_qpairs", "io_qpairs", "current_admin_qpairs", "current_io_qpairs", "transports"] {
            assert!(g.get(k).is_some(), "poll group lacks {k}: {g}");
        }
    }

    // Removal.
    assert_eq!(d.ok("nvmf_subsystem_remove_ns", json!({"nqn": NQN1, "nsid": 7})), true);
    assert_eq!(d.ok("bdev_get_bdevs", json!({"name": "Malloc1"}))[0]["claimed"], false, "released");
    let s1 = d.ok("nvmf_get_subsystems", json!({"nqn": NQN1}));
    assert_eq!(s1[0]["namespaces"].as_array().unwrap().len(), 1);
    assert_eq!(
        d.ok("nvmf_subsystem_remove_listener", json!({"nqn": NQN1, "listen_address": listen_address(port)})),
        true
    );
    assert_eq!(d.ok("nvmf_subsystem_get_listeners", json!({"nqn": NQN1})), json!([]));
    assert_eq!(d.ok("nvmf_delete_subsystem", json!({"nqn": NQN1})), true);
    assert_eq!(d.ok("bdev_get_bdevs", json!({"name": "Malloc0"}))[0]["claimed"], false, "released with it");
    // The bdev is free for another subsystem.
    assert_eq!(d.ok("nvmf_subsystem_add_ns", json!({"nqn": NQN2, "namespace": {"bdev_name": "Malloc0"}})), 1);
    let nqns: Vec<String> = d
        .ok("nvmf_get_subsystems", Value::Null)
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["nqn"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(nqns, [DISCOVERY, NQN2]);
}

#[test]
fn errors_are_spdks() {
    let d = Ferryd::start(&[]);
    malloc(&d, "Malloc0");
    malloc(&d, "Malloc1");

    // Transports: the type, twice, SPDK's generic checks, values Ferry cannot honour.
    assert_err(
        d.err("nvmf_create_transport", json!({"trtype": "RDMA"})),
        INVALID_PARAMS,
        "Invalid transport type 'RDMA'",
    );
    assert_err(
        d.err("nvmf_create_transport", json!({"trtype": "PCIe"})),
        INVALID_PARAMS,
        "Invalid transport type 'PCIe'",
    );
    assert_err(
        d.err("nvmf_create_transport", json!({"trtype": "TCP", "max_io_size": 100000})),
        INTERNAL_ERROR,
        "Transport type 'TCP' create failed",
    );
    assert_err(d.err("nvmf_create_transport", json!({"trtype": "TCP", "kas": 0})), INTERNAL_ERROR, "create failed");
    assert_err(d.err("nvmf_create_transport", json!({"trtype": "TCP", "kas": 5})), INVALID_PARAMS, "kas");
    assert_err(
        d.err("nvmf_create_transport", json!({"trtype": "TCP", "masked_oncs": ["nvmcmps"]})),
        INVALID_PARAMS,
        "masked_oncs",
    );
    assert_err(
        d.err("nvmf_create_transport", json!({"trtype": "TCP", "max_queue_depth": 70000})),
        INVALID_PARAMS,
        "Invalid parameters",
    );
    assert_err(d.err("nvmf_create_transport", json!({"trtype": "TCP", "bogus": 1})), INVALID_PARAMS, "bogus");
    assert_err(
        d.err("nvmf_create_transport", json!({"trtype": "TCP", "tgt_name": "other"})),
        INTERNAL_ERROR,
        "Unable to find a target.",
    );
    assert_eq!(d.ok("nvmf_get_transports", Value::Null), json!([]), "nothing was created by the failures");
    assert_err(d.err("nvmf_get_transports", json!({"trtype": "TCP"})), -19, "No such device");
    transport(&d);
    assert_err(
        d.err("nvmf_create_transport", json!({"trtype": "tcp"})),
        INTERNAL_ERROR,
        "Transport type 'TCP' already exists",
    );
    assert_err(d.err("nvmf_get_transports", json!({"trtype": "RDMA"})), -19, "No such device");

    // Subsystems: duplicates, NQN format (SPDK's nvmf_nqn_is_valid), SN/MN, cntlid range.
    subsystem(&d, NQN1);
    assert_err(
        d.err("nvmf_create_subsystem", json!({"nqn": NQN1})),
        INTERNAL_ERROR,
        &format!("Unable to create subsystem {NQN1}"),
    );
    assert_err(d.err("nvmf_create_subsystem", json!({"nqn": DISCOVERY})), INTERNAL_ERROR, "Unable to create subsystem");
    for bad in [
        "nqn.2016",
        "iqn.2016-06.io.spdk:x",
        "nqn.16-06.io.spdk:x",
        "nqn.2016-06.io.spdk",
        "nqn.2016-06.9io.spdk:x",
        "nqn.2016-06.io-.spdk:x",
        "nqn.2014-08.org.nvmexpress:uuid:1234",
    ] {
        assert_err(d.err("nvmf_create_subsystem", json!({"nqn": bad})), INTERNAL_ERROR, "Unable to create subsystem");
    }
    let long = format!("nqn.2016-06.io.spdk:{}", "x".repeat(220));
    assert_err(d.err("nvmf_create_subsystem", json!({"nqn": long})), INTERNAL_ERROR, "Unable to create subsystem");
    assert_err(
        d.err("nvmf_create_subsystem", json!({"nqn": NQN2, "serial_number": "123456789012345678901"})),
        INVALID_PARAMS,
        "Invalid parameters",
    );
    assert_err(
        d.err("nvmf_create_subsystem", json!({"nqn": NQN2, "model_number": "bad\u{7}"})),
        INVALID_PARAMS,
        "Invalid parameters",
    );
    assert_err(
        d.err("nvmf_create_subsystem", json!({"nqn": NQN2, "min_cntlid": 10, "max_cntlid": 5})),
        INVALID_PARAMS,
        "Invalid cntlid range [10-5]",
    );
    assert_err(
        d.err("nvmf_create_subsystem", json!({"nqn": NQN2, "max_cntlid": 0xfff0})),
        INVALID_PARAMS,
        "Invalid cntlid range [1-65520]",
    );
    assert_err(
        d.err("nvmf_create_subsystem", json!({"nqn": NQN2, "passthrough": true})),
        INVALID_PARAMS,
        "passthrough",
    );
    assert_err(
        d.err("nvmf_create_subsystem", json!({"nqn": NQN2, "max_namespaces": 100000})),
        INVALID_PARAMS,
        "max_namespaces",
    );
    assert_err(
        d.err("nvmf_create_subsystem", json!({"nqn": NQN2, "tgt_name": "t2"})),
        INTERNAL_ERROR,
        "Unable to find target t2",
    );
    assert_eq!(d.ok("nvmf_get_subsystems", Value::Null).as_array().unwrap().len(), 2, "no failure created one");

    // An unknown subsystem, for every method naming one.
    let unknown = "nqn.2016-06.io.spdk:nope";
    let not_found = format!("Subsystem with NQN '{unknown}' not found");
    for (method, params) in [
        ("nvmf_delete_subsystem", json!({"nqn": unknown})),
        ("nvmf_get_subsystems", json!({"nqn": unknown})),
        ("nvmf_subsystem_add_listener", json!({"nqn": unknown, "listen_address": listen_address(4420)})),
        ("nvmf_subsystem_remove_listener", json!({"nqn": unknown, "listen_address": listen_address(4420)})),
        ("nvmf_subsystem_add_ns", json!({"nqn": unknown, "namespace": {"bdev_name": "Malloc0"}})),
        ("nvmf_subsystem_remove_ns", json!({"nqn": unknown, "nsid": 1})),
        ("nvmf_subsystem_add_host", json!({"nqn": unknown, "host": HOST1})),
        ("nvmf_subsystem_remove_host", json!({"nqn": unknown, "host": HOST1})),
        ("nvmf_subsystem_allow_any_host", json!({"nqn": unknown, "allow_any_host": true})),
        ("nvmf_subsystem_get_controllers", json!({"nqn": unknown})),
        ("nvmf_subsystem_get_qpairs", json!({"nqn": unknown})),
        ("nvmf_subsystem_get_listeners", json!({"nqn": unknown})),
    ] {
        let e = d.err(method, params);
        assert_eq!((e.code, e.message.as_str()), (INVALID_PARAMS, not_found.as_str()), "{method}");
    }
    assert_err(d.err("nvmf_get_subsystems", json!({"tgt_name": "t2"})), INVALID_PARAMS, "NVMf target 't2' not found");
    assert_err(d.err("nvmf_get_stats", json!({"tgt_name": "t2"})), INTERNAL_ERROR, "Unable to find a target.");
    assert_err(d.err("nvmf_delete_subsystem", json!({"nqn": DISCOVERY})), INVALID_PARAMS, "discovery");
    for method in ["nvmf_subsystem_get_controllers", "nvmf_delete_subsystem", "nvmf_subsystem_remove_ns"] {
        assert_err(d.err(method, json!({})), INVALID_PARAMS, "Invalid parameters");
    }

    // Namespaces: NSIDs, identifiers, bdevs unknown and claimed.
    let add_ns = |ns: Value| d.rpc("nvmf_subsystem_add_ns", json!({"nqn": NQN1, "namespace": ns}));
    assert_eq!(add_ns(json!({"bdev_name": "Malloc0", "nsid": 3})), Ok(json!(3)));
    assert_err(
        add_ns(json!({"bdev_name": "Malloc1", "nsid": 3})).unwrap_err(),
        INVALID_PARAMS,
        "NSID 3 already in use",
    );
    assert_err(add_ns(json!({"bdev_name": "Malloc1", "nsid": 33})).unwrap_err(), INVALID_PARAMS, "max_namespaces");
    assert_err(
        add_ns(json!({"bdev_name": "Malloc1", "nsid": u32::MAX})).unwrap_err(),
        INVALID_PARAMS,
        "Invalid parameters",
    );
    assert_err(add_ns(json!({"bdev_name": "Malloc1", "anagrpid": 40})).unwrap_err(), INVALID_PARAMS, "ANAGRPID");
    assert_err(add_ns(json!({"bdev_name": "Nope"})).unwrap_err(), INVALID_PARAMS, "Nope");
    assert_err(add_ns(json!({"bdev_name": "Malloc0"})).unwrap_err(), INVALID_PARAMS, "claimed");
    let e = add_ns(json!({"bdev_name": "Malloc1", "nguid": "0011"})).unwrap_err();
    assert_eq!((e.code, e.message.as_str()), (INVALID_PARAMS, "Invalid nguid"));
    let e = add_ns(json!({"bdev_name": "Malloc1", "eui64": "001122334455667g"})).unwrap_err();
    assert_eq!((e.code, e.message.as_str()), (INVALID_PARAMS, "Invalid eui64"));
    assert_err(add_ns(json!({"bdev_name": "Malloc1", "uuid": "not-a-uuid"})).unwrap_err(), INVALID_PARAMS, "uuid");
    assert_err(
        add_ns(json!({"bdev_name": "Malloc1", "ptpl_file": "/tmp/x"})).unwrap_err(),
        INVALID_PARAMS,
        "ptpl_file",
    );
    assert_err(
        add_ns(json!({"bdev_name": "Malloc1", "no_auto_visible": true})).unwrap_err(),
        INVALID_PARAMS,
        "no_auto_visible",
    );
    // A bdev another module claimed (an lvstore's base).
    d.ok("bdev_malloc_create", json!({"name": "Base", "num_blocks": 65536, "block_size": 512}));
    d.ok("bdev_lvol_create_lvstore", json!({"bdev_name": "Base", "lvs_name": "lvs0", "cluster_sz": 1 << 20}));
    assert_err(add_ns(json!({"bdev_name": "Base"})).unwrap_err(), INVALID_PARAMS, "claimed by lvol");
    assert_err(
        d.err("nvmf_subsystem_add_ns", json!({"nqn": DISCOVERY, "namespace": {"bdev_name": "Malloc1"}})),
        INVALID_PARAMS,
        "Invalid parameters",
    );
    assert_err(
        d.err("nvmf_subsystem_remove_ns", json!({"nqn": NQN1, "nsid": 9})),
        INVALID_PARAMS,
        "Invalid parameters",
    );
    let nss = d.ok("nvmf_get_subsystems", json!({"nqn": NQN1}))[0]["namespaces"].clone();
    assert_eq!(nss.as_array().unwrap().len(), 1, "no failure added one: {nss}");
    assert_eq!(d.ok("bdev_get_bdevs", json!({"name": "Malloc1"}))[0]["claimed"], false, "no failure kept a claim");

    // Hosts: SPDK answers "Internal error" for an invalid or duplicate host and an unknown one.
    d.ok("nvmf_subsystem_add_host", json!({"nqn": NQN1, "host": HOST1}));
    assert_err(d.err("nvmf_subsystem_add_host", json!({"nqn": NQN1, "host": HOST1})), INTERNAL_ERROR, "Internal error");
    assert_err(
        d.err("nvmf_subsystem_add_host", json!({"nqn": NQN1, "host": "host1"})),
        INTERNAL_ERROR,
        "Internal error",
    );
    assert_err(
        d.err("nvmf_subsystem_remove_host", json!({"nqn": NQN1, "host": "nqn.2016-06.io.spdk:h9"})),
        INTERNAL_ERROR,
        "Internal error",
    );
    assert_err(
        d.err("nvmf_subsystem_add_host", json!({"nqn": NQN1, "host": "nqn.2016-06.io.spdk:h2", "psk": "key0"})),
        INVALID_PARAMS,
        "psk",
    );
    assert_err(
        d.err("nvmf_subsystem_add_host", json!({"nqn": NQN1, "host": "nqn.2016-06.io.spdk:h2", "dhchap_key": "key0"})),
        INVALID_PARAMS,
        "dhchap_key",
    );
    assert_err(d.err("nvmf_subsystem_allow_any_host", json!({"nqn": NQN1})), INVALID_PARAMS, "allow_any_host");

    // Listeners: the address, TLS, a taken port, a second add, an unknown one.
    let port = free_port();
    let listener = |a: Value| json!({"nqn": NQN1, "listen_address": a});
    for (addr, wanted) in [
        (json!({"trtype": "RDMA", "traddr": "127.0.0.1", "trsvcid": port.to_string()}), "RDMA"),
        (json!({"trtype": "TCP", "adrfam": "IB", "traddr": "127.0.0.1", "trsvcid": port.to_string()}), "adrfam"),
        (json!({"trtype": "TCP", "traddr": "127.0.0.1"}), "trsvcid"),
        (json!({"trtype": "TCP", "traddr": "127.0.0.1", "trsvcid": "0"}), "trsvcid"),
        (json!({"trtype": "TCP", "traddr": "127.0.0.1", "trsvcid": "70000"}), "trsvcid"),
        (json!({"trtype": "TCP", "traddr": "no.such.host.invalid", "trsvcid": port.to_string()}), "Invalid parameters"),
    ] {
        assert_err(d.err("nvmf_subsystem_add_listener", listener(addr.clone())), INVALID_PARAMS, wanted);
    }
    let mut secure = listener(listen_address(port));
    secure["secure_channel"] = json!(true);
    assert_err(d.err("nvmf_subsystem_add_listener", secure.clone()), INVALID_PARAMS, "secure_channel");
    d.ok("nvmf_subsystem_allow_any_host", json!({"nqn": NQN1, "allow_any_host": true}));
    assert_err(
        d.err("nvmf_subsystem_add_listener", secure),
        INTERNAL_ERROR,
        "Cannot establish secure channel, when 'allow_any_host' is set",
    );
    let mut ana = listener(listen_address(port));
    ana["ana_state"] = json!("inaccessible");
    assert_err(d.err("nvmf_subsystem_add_listener", ana), INVALID_PARAMS, "ana_state");
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let busy = taken.local_addr().unwrap().port();
    assert_err(
        d.err("nvmf_subsystem_add_listener", listener(listen_address(busy))),
        INVALID_PARAMS,
        "Invalid parameters",
    );
    add_listener(&d, NQN1, port);
    assert_err(d.err("nvmf_subsystem_add_listener", listener(listen_address(port))), INVALID_PARAMS, "already exists");
    assert_err(
        d.err("nvmf_subsystem_remove_listener", listener(listen_address(busy))),
        INVALID_PARAMS,
        "Invalid parameters",
    );
    assert_eq!(d.ok("nvmf_subsystem_get_listeners", json!({"nqn": NQN1})), json!([{"address": listen_address(port)}]));
    drop(taken);
}

#[test]
fn a_listener_needs_the_transport() {
    let d = Ferryd::start(&[]);
    subsystem(&d, NQN1);
    let port = free_port();
    let e = d.err("nvmf_subsystem_add_listener", json!({"nqn": NQN1, "listen_address": listen_address(port)}));
    assert_err(e, INVALID_PARAMS, "nvmf_create_transport");
    assert!(!accepts(port));
}

#[test]
fn listeners_listen_and_free_their_port() {
    let d = Ferryd::start(&[]);
    transport(&d);
    subsystem(&d, NQN1);
    subsystem(&d, NQN2);
    let port = free_port();
    assert!(!accepts(port), "nothing listens on {port} yet");
    add_listener(&d, NQN1, port);
    assert!(accepts(port), "listening on {port} once the call answered");
    // The same address for another subsystem and for discovery (rpc.py's `discovery`): one socket.
    add_listener(&d, NQN2, port);
    add_listener(&d, DISCOVERY, port);
    let remove = |nqn: &str| {
        d.ok("nvmf_subsystem_remove_listener", json!({"nqn": nqn, "listen_address": listen_address(port)}));
    };
    remove(NQN1);
    assert!(accepts(port), "NQN2 and discovery still listen");
    remove(DISCOVERY);
    assert!(accepts(port), "NQN2 still listens");
    // Deleting the subsystem stops its listeners: the port is free before the answer.
    d.ok("nvmf_delete_subsystem", json!({"nqn": NQN2}));
    assert!(!accepts(port), "the port is closed");
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("the port can be bound again");

    // Removing the last listener frees its port too.
    let port2 = free_port();
    add_listener(&d, NQN1, port2);
    assert!(accepts(port2));
    d.ok("nvmf_subsystem_remove_listener", json!({"nqn": NQN1, "listen_address": listen_address(port2)}));
    assert!(!accepts(port2), "the port is closed after the last listener");
}

/// Everything the `nvmf_get_*` methods show.
fn snapshot(d: &Ferryd) -> Value {
    let subs = d.ok("nvmf_get_subsystems", Value::Null);
    let mut per = serde_json::Map::new();
    for s in subs.as_array().unwrap() {
        let nqn = s["nqn"].as_str().unwrap();
        let p = json!({"nqn": nqn});
        per.insert(
            nqn.to_string(),
            json!({
                "listeners": d.ok("nvmf_subsystem_get_listeners", p.clone()),
                "controllers": d.ok("nvmf_subsystem_get_controllers", p.clone()),
                "qpairs": d.ok("nvmf_subsystem_get_qpairs", p),
            }),
        );
    }
    json!({"transports": d.ok("nvmf_get_transports", Value::Null), "subsystems": subs, "per": per})
}

fn nvmf_config(d: &Ferryd, batches: bool) -> Value {
    d.ok("framework_get_config", json!({"name": "nvmf", "with_batches": batches}))
}

#[test]
fn save_config_and_ferryd_c_reproduce_the_target() {
    let dir = common::scratch_dir("nvmf-save");
    let d = Ferryd::start_in(dir.clone(), &[]);
    malloc(&d, "Malloc0");
    malloc(&d, "Malloc1");
    malloc(&d, "Malloc2");
    d.ok(
        "nvmf_create_transport",
        json!({"trtype": "TCP", "max_queue_depth": 64, "in_capsule_data_size": 8192, "c2h_success": false,
               "zcopy": true, "iobuf_small_cache_size": 16, "sock_priority": 2}),
    );
    subsystem(&d, NQN1);
    d.ok(
        "nvmf_create_subsystem",
        json!({"nqn": NQN2, "serial_number": "SN2", "model_number": "MN2", "allow_any_host": true,
               "ana_reporting": true, "max_namespaces": 8, "min_cntlid": 3, "max_cntlid": 300}),
    );
    d.ok("nvmf_subsystem_add_host", json!({"nqn": NQN1, "host": HOST1}));
    d.ok("nvmf_subsystem_add_ns", json!({"nqn": NQN1, "namespace": {"bdev_name": "Malloc0"}}));
    d.ok(
        "nvmf_subsystem_add_ns",
        json!({"nqn": NQN1, "namespace": {"bdev_name": "Malloc1", "nsid": 5, "eui64": "0102030405060708",
               "nguid": "FFEEDDCCBBAA99887766554433221100", "uuid": "ceccf520-691e-4b46-9546-34af789907c5"}}),
    );
    d.ok("nvmf_subsystem_add_ns", json!({"nqn": NQN2, "namespace": {"bdev_name": "Malloc2", "anagrpid": 3}}));
    let (p1, p2) = (free_port(), free_port());
    add_listener(&d, NQN1, p1);
    add_listener(&d, NQN2, p2);
    add_listener(&d, DISCOVERY, p1);
    let before = snapshot(&d);
    assert_eq!(before["transports"][0]["max_queue_depth"], 64, "{before}");

    // SPDK's order and batches.
    let flat = nvmf_config(&d, false);
    let methods: Vec<&str> = flat.as_array().unwrap().iter().map(|e| e["method"].as_str().unwrap()).collect();
    assert_eq!(
        methods,
        [
            "nvmf_create_transport",
            "nvmf_create_subsystem",
            "nvmf_create_subsystem",
            "nvmf_subsystem_add_host",
            "nvmf_subsystem_add_ns",
            "nvmf_subsystem_add_ns",
            "nvmf_subsystem_add_ns",
            "nvmf_subsystem_add_listener",
            "nvmf_subsystem_add_listener",
            "nvmf_subsystem_add_listener",
        ]
    );
    let batched = nvmf_config(&d, true);
    let shape: Vec<usize> = batched.as_array().unwrap().iter().map(|e| e.as_array().map_or(0, Vec::len)).collect();
    assert_eq!(shape, [0, 2, 1, 3, 3], "one batch per kind of call, as SPDK: {batched}");
    let saved = d.ok("save_config", Value::Null);
    let names: Vec<&str> =
        saved["subsystems"].as_array().unwrap().iter().map(|s| s["subsystem"].as_str().unwrap()).collect();
    let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
    assert!(pos("bdev") < pos("nvmf") && pos("iscsi") < pos("nvmf") && pos("nvmf") < pos("vhost_scsi"), "{names:?}");
    let path = dir.join("saved.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&saved).unwrap()).unwrap();
    d.stop();
    assert!(!accepts(p1) && !accepts(p2), "the first daemon's listeners are gone");

    let d2 = Ferryd::start_in(common::scratch_dir("nvmf-restart"), &["-c", path.to_str().unwrap()]);
    assert_eq!(snapshot(&d2), before);
    assert_eq!(nvmf_config(&d2, false), flat);
    assert!(accepts(p1) && accepts(p2), "the saved listeners listen again");

    // The batched form loads too (as SPDK's load_config sends it).
    drop(d2);
    let dir3 = common::scratch_dir("nvmf-batched");
    let mut doc = saved.clone();
    for s in doc["subsystems"].as_array_mut().unwrap() {
        if s["subsystem"] == "nvmf" {
            s["config"] = batched.clone();
        }
    }
    let path3 = dir3.join("batched.json");
    std::fs::write(&path3, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let d3 = Ferryd::start_in(dir3.clone(), &["-c", path3.to_str().unwrap()]);
    assert_eq!(snapshot(&d3), before);
}

#[test]
fn ferryctl_drives_the_target_with_rpc_py_s_command_lines() {
    let d = Ferryd::start(&[]);
    malloc(&d, "Malloc0");
    let ctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ferryctl")).arg("-s").arg(&d.sock).args(args).output().unwrap();
        assert!(out.status.success(), "ferryctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let port = free_port().to_string();
    ctl(&["nvmf_create_transport", "-t", "tcp", "-q", "64", "-o"]);
    let t = d.ok("nvmf_get_transports", Value::Null);
    assert_eq!((&t[0]["max_queue_depth"], &t[0]["c2h_success"]), (&json!(64), &json!(false)), "{t}");
    ctl(&["nvmf_create_subsystem", NQN1, "-s", "SPDK001", "-a", "-m", "4"]);
    assert_eq!(ctl(&["nvmf_subsystem_add_ns", NQN1, "Malloc0", "-n", "2"]).trim(), "2");
    ctl(&["nvmf_subsystem_add_host", NQN1, HOST1]);
    ctl(&["nvmf_subsystem_allow_any_host", NQN1, "--no-allow-any-host"]);
    ctl(&["nvmf_subsystem_add_listener", NQN1, "-t", "tcp", "-a", "127.0.0.1", "-s", &port]);
    ctl(&["nvmf_subsystem_add_listener", "discovery", "-t", "tcp", "-a", "127.0.0.1", "-s", &port, "-f", "ipv4"]);
    let subs: Value = serde_json::from_str(&ctl(&["nvmf_get_subsystems"])).unwrap();
    assert_eq!(subs[0]["listen_addresses"][0]["trsvcid"], port.as_str(), "discovery listens: {subs}");
    let s1 = &subs[1];
    assert_eq!(
        (&s1["serial_number"], &s1["allow_any_host"], &s1["max_namespaces"], &s1["namespaces"][0]["nsid"]),
        (&json!("SPDK001"), &json!(false), &json!(4), &json!(2)),
        "{s1}"
    );
    assert_eq!(s1["hosts"], json!([{"nqn": HOST1}]));
    let listeners: Value = serde_json::from_str(&ctl(&["nvmf_subsystem_get_listeners", NQN1])).unwrap();
    assert_eq!(listeners[0]["address"]["trsvcid"], port.as_str());
    for args in [
        &["nvmf_subsystem_get_controllers", NQN1][..],
        &["nvmf_subsystem_get_qpairs", NQN1],
        &["nvmf_get_stats"],
        &["nvmf_get_transports"],
    ] {
        serde_json::from_str::<Value>(&ctl(args)).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    }
    ctl(&["nvmf_subsystem_remove_listener", "discovery", "-t", "tcp", "-a", "127.0.0.1", "-s", &port]);
    ctl(&["nvmf_subsystem_remove_host", NQN1, HOST1]);
    ctl(&["nvmf_subsystem_remove_ns", NQN1, "2"]);
    ctl(&["nvmf_delete_subsystem", NQN1]);
    assert_eq!(d.ok("nvmf_get_subsystems", Value::Null).as_array().unwrap().len(), 1);
    assert!(!accepts(port.parse().unwrap()), "the port is closed");
}
