//! A real `ferryd` driven over its socket: every bdev type created and deleted,
//! `bdev_get_bdevs` with SPDK's fields, `save_config` replayed with `-c`, and a uring bdev's
//! data surviving restarts.

mod common;

use common::{write_config, Ferryd};
use serde_json::{json, Value};
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

const SPDK_BDEV_FIELDS: &[&str] = &[
    "name",
    "aliases",
    "product_name",
    "block_size",
    "num_blocks",
    "uuid",
    "assigned_rate_limits",
    "claimed",
    "zoned",
    "supported_io_types",
    "driver_specific",
];

fn bdev(d: &Ferryd, name: &str) -> Value {
    let list = d.ok("bdev_get_bdevs", json!({"name": name}));
    assert_eq!(list.as_array().unwrap().len(), 1);
    list[0].clone()
}

fn make_file(dir: &std::path::Path, name: &str, mib: u64) -> String {
    let path = dir.join(name);
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(mib << 20).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn every_bdev_type_is_created_listed_and_deleted() {
    let d = Ferryd::start(&["-m", "0x3"]);
    let file = make_file(&d.dir, "disk.img", 16);
    assert_eq!(
        d.ok("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 8192, "block_size": 512})),
        "Malloc0"
    );
    assert_eq!(d.ok("bdev_malloc_create", json!({"num_blocks": 64, "block_size": 4096})), "Malloc1", "auto name");
    assert_eq!(d.ok("bdev_null_create", json!({"name": "Null0", "num_blocks": 1024, "block_size": 4096})), "Null0");
    assert_eq!(d.ok("bdev_uring_create", json!({"name": "Uring0", "filename": file, "block_size": 512})), "Uring0");
    assert_eq!(d.ok("bdev_aio_create", json!({"name": "Aio0", "filename": file, "readonly": true})), "Aio0");

    let all = d.ok("bdev_get_bdevs", json!({}));
    let names: Vec<&str> = all.as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Malloc0", "Malloc1", "Null0", "Uring0", "Aio0"]);
    for b in all.as_array().unwrap() {
        for field in SPDK_BDEV_FIELDS {
            assert!(b.get(*field).is_some(), "bdev {} lacks SPDK field {field}: {b}", b["name"]);
        }
        for io in ["read", "write", "flush", "unmap", "reset", "write_zeroes", "nvme_admin", "nvme_io"] {
            assert!(b["supported_io_types"][io].is_boolean(), "{io} missing in {b}");
        }
        assert_eq!(b["claimed"], false);
        assert_eq!(b["uuid"].as_str().unwrap().len(), 36);
    }

    let m = bdev(&d, "Malloc0");
    assert_eq!((m["block_size"].as_u64(), m["num_blocks"].as_u64()), (Some(512), Some(8192)));
    assert_eq!(m["product_name"], "Malloc disk");
    let n = bdev(&d, "Null0");
    assert_eq!(n["product_name"], "Null disk");
    let u = bdev(&d, "Uring0");
    assert_eq!(u["num_blocks"], 16 * 2048);
    assert_eq!(u["driver_specific"]["uring"]["filename"], file.as_str());
    let a = bdev(&d, "Aio0");
    assert_eq!(a["product_name"], "AIO disk");
    assert_eq!(a["supported_io_types"]["write"], false, "a read-only aio bdev refuses writes");
    assert_eq!(a["driver_specific"]["aio"]["readonly"], true);

    // Lookup by uuid answers too.
    let by_uuid = d.ok("bdev_get_bdevs", json!({"name": m["uuid"]}));
    assert_eq!(by_uuid[0]["name"], "Malloc0");

    d.ok("bdev_null_resize", json!({"name": "Null0", "new_size": 8}));
    assert_eq!(bdev(&d, "Null0")["num_blocks"], 2048);

    for (method, name) in [
        ("bdev_malloc_delete", "Malloc0"),
        ("bdev_malloc_delete", "Malloc1"),
        ("bdev_null_delete", "Null0"),
        ("bdev_uring_delete", "Uring0"),
        ("bdev_aio_delete", "Aio0"),
    ] {
        assert_eq!(d.ok(method, json!({"name": name})), true);
        let e = d.err("bdev_get_bdevs", json!({"name": name}));
        assert_eq!(e.code, -19, "{name} still listed after {method}");
    }
    assert_eq!(d.ok("bdev_get_bdevs", json!({})), json!([]));
    // Names are free again after delete.
    d.ok("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 8, "block_size": 512}));
    assert!(d.stop().success());
}

/// Waits (up to 10 s) until ferryd's log contains `text` `n` times.
#[track_caller]
fn wait_for_log(d: &Ferryd, text: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.log_text().matches(text).count() < n {
        assert!(Instant::now() < deadline, "ferryd never logged {text:?} ({n}x); log:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether an answer is waiting to be read on `s` (without blocking or consuming it).
fn answered(s: &UnixStream) -> bool {
    let mut byte = 0u8;
    // SAFETY: a one-byte peek into a live local; the fd is open for the call.
    let n = unsafe { libc::recv(s.as_raw_fd(), (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "peek: {e}");
    }
    n > 0
}

#[test]
fn get_bdevs_waits_for_a_bdev_with_timeout() {
    let d = Ferryd::start(&[]);
    let e = d.err("bdev_get_bdevs", json!({"name": "Late", "timeout": 100}));
    assert_eq!(e.code, -19);
    // The waiter's request goes out before the bdev exists, and ferryd says it is waiting
    // (its second such notice: the first was the 100 ms call above) before the bdev is made:
    // so the answer below can only come from a waiter that blocked and was woken.
    let mut waiter = common::connect(&d.sock);
    waiter
        .write_all(json!({"jsonrpc": "2.0", "id": 7, "method": "bdev_get_bdevs", "params": {"name": "Late", "timeout": 10000}}).to_string().as_bytes())
        .unwrap();
    wait_for_log(&d, "waiting for the bdev to appear", 2);
    assert!(!answered(&waiter), "the waiter answered while still waiting");
    d.ok("bdev_null_create", json!({"name": "Late", "num_blocks": 8, "block_size": 512}));
    let got = common::read_response(&mut waiter);
    assert_eq!(got["id"], 7);
    assert_eq!(got["result"][0]["name"], "Late", "the waiting call sees the new bdev: {got}");
}

#[test]
fn save_config_then_restart_with_it_gives_the_same_bdevs() {
    let d = Ferryd::start(&["-m", "0x3"]);
    let file = make_file(&d.dir, "disk.img", 8);
    d.ok("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 4096, "block_size": 512}));
    d.ok("bdev_null_create", json!({"name": "Null0", "num_blocks": 100, "block_size": 4096}));
    d.ok("bdev_uring_create", json!({"name": "Uring0", "filename": file}));
    d.ok("bdev_aio_create", json!({"name": "Aio0", "filename": file, "block_size": 4096, "readonly": true}));
    let saved = d.ok("save_config", Value::Null);
    let before = d.ok("bdev_get_bdevs", Value::Null);
    let bdev_section = saved["subsystems"].as_array().unwrap().iter().find(|s| s["subsystem"] == "bdev").unwrap();
    let methods: Vec<&str> =
        bdev_section["config"].as_array().unwrap().iter().map(|e| e["method"].as_str().unwrap()).collect();
    assert_eq!(
        methods,
        ["bdev_malloc_create", "bdev_null_create", "bdev_uring_create", "bdev_aio_create", "bdev_wait_for_examine"]
    );
    let dir = d.dir.clone();
    assert!(d.stop().success());
    assert!(!dir.join("ferry.sock").exists(), "socket removed on shutdown");

    let config = dir.join("saved.json");
    std::fs::write(&config, serde_json::to_vec(&saved).unwrap()).unwrap();
    let d2 = Ferryd::start_in(dir, &["-c", config.to_str().unwrap()]);
    assert_eq!(d2.ok("bdev_get_bdevs", Value::Null), before, "same bdevs, uuids and geometry after replay");
    assert_eq!(d2.ok("save_config", Value::Null), saved, "the replayed configuration saves identically");
}

#[test]
fn load_config_rpc_replays_and_reports_the_failing_entry() {
    let d = Ferryd::start(&[]);
    let doc = json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_malloc_create", "params": {"name": "M0", "num_blocks": 64, "block_size": 512}},
        {"method": "bdev_malloc_create", "params": {"name": "M0", "num_blocks": 64, "block_size": 512}}
    ]}]});
    let e = d.err("load_config", doc);
    assert_eq!(e.code, -17);
    assert!(e.message.contains("entry 1") && e.message.contains("already exists"), "{}", e.message);
    assert_eq!(bdev(&d, "M0")["num_blocks"], 64);
    let e = d.err("load_config", json!({"nope": []}));
    assert_eq!(e.code, -32602);
}

#[test]
fn a_bad_config_file_stops_ferryd_with_a_message() {
    let dir = common::scratch_dir("badcfg");
    let cfg = write_config(&dir, "bad.json", json!([{"method": "bdev_malloc_create", "params": {"name": "X"}}]));
    let out = Command::new(env!("CARGO_BIN_EXE_ferryd"))
        .args(["-r", dir.join("s").to_str().unwrap(), "--no-pin", "-c", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("num_blocks"), "stderr names the missing parameter: {err}");
    std::fs::write(dir.join("garbage.json"), "{ not json").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferryd"))
        .args(["-r", dir.join("s").to_str().unwrap(), "--no-pin", "-c", dir.join("garbage.json").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid JSON"));
}

#[test]
fn wait_for_rpc_defers_runtime_methods_until_start_init() {
    let dir = common::scratch_dir("wait");
    let cfg = write_config(
        &dir,
        "c.json",
        json!([{"method": "bdev_null_create", "params": {"name": "N", "num_blocks": 8, "block_size": 512}}]),
    );
    let d = Ferryd::start_in(dir, &["--wait-for-rpc", "-c", cfg.to_str().unwrap()]);
    let e = d.err("bdev_get_bdevs", Value::Null);
    assert_eq!(e.code, -1, "runtime methods wait for framework_start_init");
    let current: Vec<String> = serde_json::from_value(d.ok("rpc_get_methods", json!({"current": true}))).unwrap();
    assert!(current.contains(&"framework_start_init".to_string()));
    assert!(!current.contains(&"bdev_malloc_create".to_string()));
    // framework_wait_init blocks until start_init: sent first, seen waiting, then woken.
    let mut waiter = common::connect(&d.sock);
    waiter.write_all(br#"{"jsonrpc":"2.0","id":3,"method":"framework_wait_init"}"#).unwrap();
    wait_for_log(&d, "framework_wait_init: waiting for framework_start_init", 1);
    assert!(!answered(&waiter), "framework_wait_init answered before framework_start_init");
    assert_eq!(d.ok("framework_start_init", Value::Null), true);
    assert_eq!(common::read_response(&mut waiter), json!({"jsonrpc": "2.0", "id": 3, "result": true}));
    assert_eq!(d.ok("framework_wait_init", Value::Null), true, "no wait once initialised");
    assert_eq!(bdev(&d, "N")["num_blocks"], 8, "the deferred configuration ran at start_init");
    assert_eq!(d.err("framework_start_init", Value::Null).code, -1);
}

#[test]
fn framework_methods_answer_with_spdk_shapes() {
    let d = Ferryd::start(&["-m", "0x3"]);
    let v = d.ok("spdk_get_version", Value::Null);
    assert!(v["version"].as_str().unwrap().starts_with("Ferry v"));
    assert!(v["fields"]["major"].is_u64());
    let r = d.ok("framework_get_reactors", Value::Null);
    assert!(r["tick_rate"].as_u64().unwrap() > 0);
    let lcores: Vec<u64> = r["reactors"].as_array().unwrap().iter().map(|x| x["lcore"].as_u64().unwrap()).collect();
    assert_eq!(lcores, [0, 1]);
    let t = d.ok("thread_get_stats", Value::Null);
    assert_eq!(t["threads"].as_array().unwrap().len(), 2);
    for th in t["threads"].as_array().unwrap() {
        for f in ["name", "id", "cpumask", "busy", "idle", "active_pollers_count", "timed_pollers_count"] {
            assert!(th.get(f).is_some(), "thread_get_stats lacks {f}");
        }
    }
    assert!(d.ok("thread_get_pollers", Value::Null)["threads"].is_array());
    // SPDK's order: accel (crypto keys) before bdev, which depends on it.
    let subsystems = d.ok("framework_get_subsystems", Value::Null);
    assert_eq!((&subsystems[0]["subsystem"], &subsystems[1]["subsystem"]), (&json!("accel"), &json!("bdev")));
    assert_eq!(subsystems[1]["depends_on"], json!(["accel"]));
    d.ok("bdev_null_create", json!({"name": "N", "num_blocks": 8, "block_size": 512}));
    let cfg = d.ok("framework_get_config", json!({"name": "bdev"}));
    assert_eq!(cfg[0]["method"], "bdev_null_create");
    assert_eq!(d.err("framework_get_config", json!({"name": "nope"})).code, -32602);
    assert_eq!(d.ok("log_set_level", json!({"level": "DEBUG"})), true);
    assert_eq!(d.ok("log_get_level", Value::Null), "DEBUG");
    assert_eq!(d.err("log_set_level", json!({"level": "LOUD"})).code, -32602);
    assert_eq!(d.ok("log_set_flag", json!({"flag": "bdev"})), true);
    assert_eq!(d.ok("log_get_flags", Value::Null)["bdev"], true);
    assert_eq!(d.ok("log_clear_flag", json!({"flag": "bdev"})), true);
    assert_eq!(d.err("log_set_flag", json!({"flag": "nope"})).code, -32602);
    let iostat = d.ok("bdev_get_iostat", json!({"name": "N"}));
    assert_eq!(iostat["bdevs"][0]["name"], "N");
    assert!(iostat["bdevs"][0]["num_read_ops"].is_u64());
    assert!(iostat["tick_rate"].is_u64());
}

/// Runs ferry-bdevperf on `config` with `args`; returns (success, stdout+stderr).
fn bdevperf(config: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-bdevperf"))
        .args(["-c", config.to_str().unwrap(), "--no-pin"])
        .args(args)
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn a_uring_bdev_keeps_its_data_across_restarts() {
    let d = Ferryd::start(&[]);
    let file = make_file(&d.dir, "persist.img", 8);
    d.ok("bdev_uring_create", json!({"name": "Disk", "filename": file}));
    let saved = d.ok("save_config", Value::Null);
    let before = bdev(&d, "Disk");
    let dir = d.dir.clone();
    assert!(d.stop().success());
    let config = dir.join("saved.json");
    std::fs::write(&config, serde_json::to_vec(&saved).unwrap()).unwrap();

    // Write a pattern through the uring bdev (the same module ferryd runs), in another process.
    let (ok, out) = bdevperf(&config, &["-w", "fill", "--seed", "77", "-q", "16", "-m", "0x3"]);
    assert!(ok, "fill failed: {out}");

    // ferryd comes back with the same bdev from the saved configuration ...
    let d2 = Ferryd::start_in(dir.clone(), &["-c", config.to_str().unwrap()]);
    assert_eq!(bdev(&d2, "Disk"), before);
    assert!(d2.stop().success());

    // ... and the data is all there, in a third process; a wrong seed is caught.
    let (ok, out) = bdevperf(&config, &["-w", "check", "--seed", "77", "-q", "16"]);
    assert!(ok, "check failed: {out}");
    assert!(out.contains("Total"));
    let (ok, out) = bdevperf(&config, &["-w", "check", "--seed", "78", "-q", "16"]);
    assert!(!ok && out.contains("miscompares"), "a wrong pattern must be detected: {out}");
}
