//! `ferryctl` against a real `ferryd`: a command for every served method, rpc.py-shaped
//! arguments, raw calls, configuration round trips, and errors reported with a non-zero exit.

mod common;

use common::Ferryd;
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn ferryctl(d: &Ferryd, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferryctl")).arg("-s").arg(&d.sock).args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn every_served_method_has_a_command() {
    let d = Ferryd::start(&[]);
    let methods: Vec<String> = serde_json::from_value(d.ok("rpc_get_methods", Value::Null)).unwrap();
    assert!(methods.len() > 20);
    for m in &methods {
        let out = Command::new(env!("CARGO_BIN_EXE_ferryctl")).args([m.as_str(), "--help"]).output().unwrap();
        assert!(out.status.success(), "ferryctl has no command for {m}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn ferryctl_drives_ferryd_like_rpc_py() {
    let d = Ferryd::start(&[]);
    let out = ferryctl(&d, &["bdev_malloc_create", "-b", "Malloc0", "8", "512"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out).trim(), "Malloc0");
    let out = ferryctl(&d, &["bdev_get_bdevs", "-b", "Malloc0"]);
    let list: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(list[0]["num_blocks"], 16384);

    // An error: non-zero exit, and the server's message on stderr.
    let out = ferryctl(&d, &["bdev_malloc_create", "-b", "Malloc0", "8", "512"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Got JSON-RPC error response") && err.contains("already exists") && err.contains("-17"),
        "{err}"
    );

    // Raw calls.
    let out = ferryctl(&d, &["call", "bdev_null_create", r#"{"name":"N","num_blocks":8,"block_size":512}"#]);
    assert!(out.status.success());
    assert_eq!(stdout(&out).trim(), "N");
    let out = ferryctl(&d, &["call", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("-32601"));

    // save_config, then load_config from standard input into a second daemon.
    let saved = stdout(&ferryctl(&d, &["save_config"]));
    let d2 = Ferryd::start(&[]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferryctl"))
        .arg("-s")
        .arg(&d2.sock)
        .arg("load_config")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(saved.as_bytes()).unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    assert_eq!(d2.ok("bdev_get_bdevs", Value::Null), d.ok("bdev_get_bdevs", Value::Null));
    assert_eq!(d2.ok("bdev_get_bdevs", json!({"name": "N"}))[0]["num_blocks"], 8);
}

#[test]
fn usage_and_connection_errors_are_clear() {
    let d = Ferryd::start(&[]);
    let out = ferryctl(&d, &["bdev_malloc_create", "notanumber", "512"]);
    assert_eq!(out.status.code(), Some(2), "bad usage exits 2");
    let out = Command::new(env!("CARGO_BIN_EXE_ferryctl"))
        .args(["-s", "/nonexistent/sock", "spdk_get_version"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/sock"));
}
