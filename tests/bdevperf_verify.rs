//! `ferry-bdevperf -w verify` on every bdev type, with one and two reactors.

mod common;

use serde_json::json;
use std::process::Command;

fn run_verify(mask: &str) {
    let dir = common::scratch_dir("verify");
    let file_a = dir.join("a.img");
    let file_b = dir.join("b.img");
    for f in [&file_a, &file_b] {
        std::fs::File::create(f).unwrap().set_len(32 << 20).unwrap();
    }
    let config = common::write_config(
        &dir,
        "bdevs.json",
        json!([
            {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 65536, "block_size": 512}},
            {"method": "bdev_null_create", "params": {"name": "Null0", "num_blocks": 65536, "block_size": 512}},
            {"method": "bdev_uring_create", "params": {"name": "Uring0", "filename": file_a.to_str().unwrap()}},
            {"method": "bdev_aio_create", "params": {"name": "Aio0", "filename": file_b.to_str().unwrap(), "block_size": 4096}}
        ]),
    );
    for io_size in ["4096", "65536"] {
        let out = Command::new(env!("CARGO_BIN_EXE_ferry-bdevperf"))
            .args(["-c", config.to_str().unwrap(), "--no-pin", "-m", mask, "-w", "verify", "-q", "32"])
            .args(["-o", io_size, "-t", "1", "--json-summary"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "verify failed on {mask}:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        let reactors = if mask == "0x1" { 1 } else { 2 };
        assert_eq!(summary["jobs"], 4 * reactors, "one job per bdev per reactor");
        assert_eq!(summary["miscompares"], 0);
        assert_eq!(summary["errors"], 0);
        assert!(summary["iops"].as_f64().unwrap() > 0.0);
        for bdev in ["Malloc0", "Null0", "Uring0", "Aio0"] {
            assert!(stdout.lines().filter(|l| l.starts_with(bdev)).count() == reactors, "{bdev} ran on every reactor");
        }
    }
}

#[test]
fn verify_passes_on_every_bdev_type_with_one_reactor() {
    run_verify("0x1");
}

#[test]
fn verify_passes_on_every_bdev_type_with_two_reactors() {
    run_verify("0x3");
}

#[test]
fn bad_arguments_are_refused() {
    let dir = common::scratch_dir("bpargs");
    let config = common::write_config(
        &dir,
        "c.json",
        json!([{"method": "bdev_malloc_create", "params": {"name": "M", "num_blocks": 64, "block_size": 512}}]),
    );
    for args in [&["-w", "sideways"][..], &["-q", "0"], &["-o", "1000"], &["-m", "zz"], &["-T", "Nope"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_ferry-bdevperf"))
            .args(["-c", config.to_str().unwrap(), "--no-pin", "-t", "0.2"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
    }
}
