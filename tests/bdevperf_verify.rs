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
    for args in [
        &["-w", "sideways"][..],
        &["-q", "0"],
        &["-o", "1000"],
        &["-m", "zz"],
        &["-T", "Nope"],
        &["--interleave", "0"],
        &["--interleave", "500"],
        &["-w", "fill", "--interleave", "10"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_ferry-bdevperf"))
            .args(["-c", config.to_str().unwrap(), "--no-pin", "-t", "0.2"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
    }
}

/// `--interleave`: the targets take turns (their active times add up to the run, not twice
/// it), each reports its turns, and verify's write-then-read-back survives a slice ending
/// between the two.
#[test]
fn interleaved_targets_take_turns_and_report_each_turn() {
    let dir = common::scratch_dir("interleave");
    let config = common::write_config(
        &dir,
        "c.json",
        json!([
            {"method": "bdev_malloc_create", "params": {"name": "M0", "num_blocks": 4096, "block_size": 4096}},
            {"method": "bdev_malloc_create", "params": {"name": "M1", "num_blocks": 4096, "block_size": 4096}}
        ]),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-bdevperf"))
        .args(["-c", config.to_str().unwrap(), "--no-pin", "-w", "verify", "-q", "16", "-t", "1"])
        .args(["-T", "M1", "-T", "M0", "--interleave", "20", "--json-summary"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["miscompares"], 0);
    assert_eq!(summary["errors"], 0);
    let jobs = summary["per_job"].as_array().unwrap();
    let names: Vec<&str> = jobs.iter().map(|j| j["bdev"].as_str().unwrap()).collect();
    assert_eq!(names, ["M1", "M0"], "per_job in the order of -T");
    let turns: Vec<usize> = jobs.iter().map(|j| j["turn_iops"].as_array().unwrap().len()).collect();
    assert!(turns[0] >= 2 && turns[1] >= 2, "both took several turns: {turns:?}");
    assert!(turns[0].abs_diff(turns[1]) <= 1, "turns alternate: {turns:?}");
    for j in jobs {
        assert!(j["ios"].as_u64().unwrap() > 0, "{j}");
    }
    // Run together, each would be active the whole second.
    let active: f64 = jobs.iter().map(|j| j["seconds"].as_f64().unwrap()).sum();
    assert!(active < 1.5, "the jobs' active times overlap: {active} s in a 1 s run");
}
