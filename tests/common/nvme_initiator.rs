//! Helpers for the tests of Ferry's NVMe/TCP initiator (`tests/nvme_loopback.rs` against
//! Ferry's target, `guest-tests/nvme_host.rs` against Linux's nvmet-tcp): attaching a
//! controller, reading its state, verifying data with `ferry-bdevperf`, and waiting on a
//! vhost-user-blk client's completions.

#![allow(dead_code)]

use super::Ferryd;
use ferry_vhost_initiator::{Client, Completion, Request};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// `bdev_nvme_attach_controller` to `subnqn` on 127.0.0.1:`port` (header and data digests
/// both on or both off), reconnecting every second for up to two minutes; the bdev names.
pub fn attach(d: &Ferryd, name: &str, port: u16, subnqn: &str, digests: bool) -> Value {
    d.ok(
        "bdev_nvme_attach_controller",
        json!({
            "name": name, "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1",
            "trsvcid": port.to_string(), "subnqn": subnqn, "hdgst": digests, "ddgst": digests,
            "ctrlr_loss_timeout_sec": 120, "reconnect_delay_sec": 1,
        }),
    )
}

/// The first path of controller `name` as `bdev_nvme_get_controllers` shows it.
pub fn controller(d: &Ferryd, name: &str) -> Value {
    d.ok("bdev_nvme_get_controllers", json!({ "name": name }))[0]["ctrlrs"][0].clone()
}

/// `ferry-bdevperf -w verify` on `bdev` of the configuration `config` (a save_config).
pub fn bdevperf_verify(config: &Path, bdev: &str, io_size: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-bdevperf"))
        .args(["-c", config.to_str().unwrap(), "--no-pin", "-m", "0x3", "-w", "verify", "-q", "16"])
        .args(["-o", io_size, "-t", "2", "--json-summary", "-T", bdev])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "verify of {bdev} ({io_size} B) failed:\n{stdout}\n{stderr}");
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["miscompares"], 0, "{stdout}");
    assert_eq!(summary["errors"], 0, "{stdout}");
    assert!(summary["iops"].as_f64().unwrap() > 0.0, "{stdout}");
}

/// Polls queue 0 of `c` until `n` completions arrived, within `secs`.
pub fn completions(c: &mut Client, n: usize, secs: u64) -> Vec<Completion> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while out.len() < n {
        assert!(Instant::now() < deadline, "only {} of {n} completions arrived: {out:?}", out.len());
        if c.queue(0).poll(&mut out) == 0 {
            c.queue(0).wait(10);
        }
    }
    out
}

/// Submits `req` on queue 0 and waits for its completion.
pub fn one(c: &mut Client, req: &Request<'_>, tag: u64) -> Completion {
    c.queue(0).submit(req, tag).unwrap();
    c.queue(0).kick();
    completions(c, 1, 30).remove(0)
}
