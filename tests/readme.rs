//! README's "Using it" block runs as written on a fresh machine: the block is taken from
//! README.md and run by bash in an empty scratch directory, with three substitutions only:
//! the binaries this test was built with for `target/release/` (so no `cargo build --release`),
//! the scratch directory for `/var/tmp` (the paths the block writes; the defaults it relies on
//! point there through FERRY_RPC_SOCKET, FERRY_VHOST_SOCK_DIR and FERRY_CPU_LOCK_DIR), and a
//! one-second benchmark for the ten-second one.

mod common;

use std::path::Path;
use std::process::Command;

/// The first ```sh block under `## Using it`.
fn using_it_block(readme: &str) -> &str {
    let section = &readme[readme.find("\n## Using it\n").expect("README has a \"Using it\" section")..];
    let start = section.find("```sh\n").expect("a sh block in \"Using it\"") + "```sh\n".len();
    let len = section[start..].find("```\n").expect("the block ends");
    &section[start..start + len]
}

/// The block with this test's substitutions; each must apply exactly where expected.
fn as_test_script(block: &str, bin: &Path, scratch: &Path) -> String {
    let build = "cargo build --release\n";
    assert!(block.starts_with(build), "the block starts by building the binaries:\n{block}");
    let benchmark = " -t 10 ";
    assert_eq!(block.matches(benchmark).count(), 1, "one ten-second benchmark:\n{block}");
    // The standard iSCSI port may be taken on the machine running the tests.
    let portal = "127.0.0.1:3260";
    assert_eq!(block.matches(portal).count(), 1, "one iSCSI portal:\n{block}");
    let body = block[build.len()..]
        .replace("target/release/", &format!("{}/", bin.display()))
        .replace("/var/tmp", scratch.to_str().unwrap())
        .replace(benchmark, " -t 1 ")
        .replace(portal, &format!("127.0.0.1:{}", common::free_port()));
    assert!(!body.contains("target/release"), "{body}");
    // A failing step fails the run, and no daemon outlives it.
    format!("set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{body}")
}

#[test]
fn readmes_using_it_block_runs_as_written() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let dir = common::scratch_dir("readme");
    let bin = Path::new(env!("CARGO_BIN_EXE_ferryd")).parent().unwrap();
    let script = as_test_script(using_it_block(&readme), bin, &dir);
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&*dir)
        .env("FERRY_RPC_SOCKET", dir.join("ferry.sock"))
        .env("FERRY_VHOST_SOCK_DIR", &*dir)
        .env("FERRY_CPU_LOCK_DIR", &*dir)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the block failed:\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    // Both bdevs, both controllers, saved and replayed.
    for name in ["\"Malloc0\"", "\"Disk0\"", "\"vhost.0\"", "\"vhost.1\""] {
        assert!(stdout.contains(name), "{name} missing from the output:\n{stdout}");
    }
    let saved = std::fs::read_to_string(dir.join("ferry.json")).unwrap();
    assert!(saved.contains("vhost_scsi_controller_add_target") && saved.contains("bdev_uring_create"), "{saved}");
    // The benchmark ran on both bdevs and left no controller socket behind.
    assert!(stdout.contains("Malloc0") && stdout.lines().any(|l| l.starts_with("Disk0")), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("Total")), "{stdout}");
    assert!(stderr.contains("skipping vhost_create_blk_controller"), "{stderr}");
    for sock in ["vhost.0", "vhost.1", "ferry.sock"] {
        assert!(!dir.join(sock).exists(), "{sock} was left behind");
    }
}
