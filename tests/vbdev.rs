//! The split, passthru, delay and error-injection bdevs against a real `ferryd`: every RPC
//! with SPDK's parameters, errors and `driver_specific`, stacks several modules deep saved by
//! `save_config` and replayed (in a second daemon and in `ferry-bdevperf`, whose `verify`
//! workload checks the data through every module), creation deferred until the base appears,
//! hot-removal of a base while I/O runs, and error injection seen by a frontend.

mod common;

use common::{Ferryd, RpcErr};
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

fn start() -> Ferryd {
    let dir = common::scratch_dir("vbdev");
    Ferryd::start_in(dir.clone(), &["-m", "0x3", "-S", dir.to_str().unwrap()])
}

fn malloc(d: &Ferryd, name: &str, mib: u64) {
    d.ok("bdev_malloc_create", json!({"name": name, "num_blocks": mib * 256, "block_size": 4096}));
}

fn bdev(d: &Ferryd, name: &str) -> Value {
    d.ok("bdev_get_bdevs", json!({"name": name}))[0].clone()
}

fn names(d: &Ferryd) -> Vec<String> {
    let all = d.ok("bdev_get_bdevs", json!({}));
    all.as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap().to_string()).collect()
}

fn exists(d: &Ferryd, name: &str) -> bool {
    names(d).iter().any(|n| n == name)
}

/// The `bdev` subsystem's entries of `save_config`.
fn saved_bdev_config(d: &Ferryd) -> Value {
    let cfg = d.ok("save_config", json!({}));
    let subsystems = cfg["subsystems"].as_array().unwrap();
    subsystems.iter().find(|s| s["subsystem"] == "bdev").unwrap()["config"].clone()
}

/// Runs `ferry-bdevperf -w verify` on the unclaimed bdevs of config `doc` (the tops of its
/// stacks) and returns its JSON summary, after checking every target ran without error.
fn verify(doc: &Value, expect_targets: &[&str]) -> Value {
    let dir = common::scratch_dir("vbdev-verify");
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_vec(doc).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-bdevperf"))
        .args(["-c", path.to_str().unwrap(), "--no-pin", "-m", "0x3", "-w", "verify", "-q", "32"])
        .args(["-o", "4096", "-t", "1", "--json-summary"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "verify failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["miscompares"], 0, "{stdout}");
    assert_eq!(summary["errors"], 0, "{stdout}");
    for t in expect_targets {
        assert_eq!(stdout.lines().filter(|l| l.starts_with(t)).count(), 2, "{t} ran on both reactors:\n{stdout}");
    }
    assert_eq!(summary["jobs"], 2 * expect_targets.len(), "only the stacks' tops ran:\n{stdout}");
    summary
}

#[test]
fn passthru_on_split_on_malloc_is_saved_replayed_and_verified() {
    let d = start();
    malloc(&d, "Malloc0", 16);
    let parts = d.ok("bdev_split_create", json!({"base_bdev": "Malloc0", "split_count": 4}));
    assert_eq!(parts, json!(["Malloc0p0", "Malloc0p1", "Malloc0p2", "Malloc0p3"]));
    assert_eq!(d.ok("bdev_passthru_create", json!({"name": "PT0", "base_bdev_name": "Malloc0p1"})), json!("PT0"));
    let p1 = bdev(&d, "Malloc0p1");
    assert_eq!(p1["num_blocks"], 1024);
    assert_eq!(p1["product_name"], "Split Disk");
    assert_eq!(p1["driver_specific"]["split"], json!({"base_bdev": "Malloc0", "offset_blocks": 1024}));
    assert_eq!(p1["claimed"], true);
    let pt = bdev(&d, "PT0");
    assert_eq!(pt["driver_specific"]["passthru"], json!({"name": "PT0", "base_bdev_name": "Malloc0p1"}));
    assert_eq!(pt["product_name"], "passthru");
    assert_eq!(pt["num_blocks"], 1024);
    assert_eq!(bdev(&d, "Malloc0")["claimed"], true);

    let saved = saved_bdev_config(&d);
    let methods: Vec<&str> = saved.as_array().unwrap().iter().filter_map(|e| e["method"].as_str()).collect();
    let pos = |m: &str| methods.iter().position(|x| *x == m).unwrap_or_else(|| panic!("{m} saved: {methods:?}"));
    assert!(pos("bdev_malloc_create") < pos("bdev_split_create"));
    assert!(pos("bdev_split_create") < pos("bdev_passthru_create"));
    assert_eq!(methods.iter().filter(|m| **m == "bdev_split_create").count(), 1, "one entry per split base");

    // Replayed in a second daemon: the same bdevs, the same uuid for the passthru bdev.
    let dir = common::scratch_dir("vbdev-replay");
    let file = common::write_config(&dir, "c.json", saved.clone());
    let d2 = Ferryd::start_in(dir.clone(), &["-m", "0x1", "-c", file.to_str().unwrap()]);
    assert_eq!(bdev(&d2, "PT0")["uuid"], pt["uuid"]);
    assert_eq!(bdev(&d2, "Malloc0p3")["driver_specific"]["split"]["offset_blocks"], 3072);

    // And in bdevperf: data written through passthru-on-split and the other parts reads back.
    let doc = json!({"subsystems": [{"subsystem": "bdev", "config": saved}]});
    verify(&doc, &["PT0", "Malloc0p0", "Malloc0p2", "Malloc0p3"]);
}
