//! Guest test for RAID: a real Linux guest under QEMU (TCG) on a raid1 (with a superblock)
//! over two uring bdevs on files, served over vhost-user-blk. fio writes and verifies in the
//! guest while one member is removed (`bdev_raid_remove_base_bdev`) and added back
//! (`bdev_raid_add_base_bdev`); the guest sees no error, the rebuild completes while fio
//! still runs, and afterwards both member files hold the same bytes in their data areas.
//! One guest boot. Needs root, QEMU and the cached guest (`scripts/guest/setup.sh`, run by
//! scripts/test.sh).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "guest/mod.rs"]
mod guest;

use common::{scratch_dir, Ferryd};
use guest::{console_of, fio_failed, spawn_guest, vhost_user_device, wait_for_console, wait_until, ONE_GUEST};
use serde_json::{json, Value};
use std::path::Path;

/// The guest's script, on `vda` (the raid): region A (0..16 MiB) written sequentially with
/// checksummed blocks; then verified random writes over region B (16..32 MiB) for 40 s while
/// the host removes a member and adds it back (FIO-START .. FIO-END); then region A verified.
const SCRIPT: &str = r#"
set -e
echo "DISK $(cat /sys/block/vda/size)"
A="--name=a --filename=/dev/vda --size=16M --bs=4k --iodepth=8 --ioengine=libaio --direct=1 --verify=crc32c"
fio $A --rw=write --do_verify=0 2>&1 | grep -E "err=|fio:|verify:"
B="--name=b --filename=/dev/vda --offset=16M --size=16M --bs=4k --iodepth=8 --ioengine=libaio --direct=1 --verify=crc32c"
echo FIO-START
fio $B --rw=randwrite --verify_backlog=64 --time_based --runtime=40 2>&1 | grep -E "err=|fio:|verify:"
echo FIO-END
fio $A --rw=write --verify_only 2>&1 | grep -E "err=|fio:|verify:"
echo "IO-ERRORS $(dmesg | grep -c -i -E 'I/O error|blk_update_request' || true)"
"#;

const FILE_BYTES: u64 = 64 << 20;

fn writes(d: &Ferryd) -> u64 {
    d.ok("bdev_get_iostat", json!({"name": "r"}))["bdevs"][0]["num_write_ops"].as_u64().unwrap_or(0)
}

fn raid(d: &Ferryd) -> Value {
    d.ok("bdev_raid_get_bdevs", json!({"category": "all"}))[0].clone()
}

/// Waits until the guest's writes reach the raid again (at least `n` more).
fn more_writes(d: &Ferryd, n: u64, what: &str) {
    let from = writes(d);
    wait_until(120, what, || (writes(d) >= from + n).then_some(()));
}

/// The data area of a member file: `data_size` blocks from `data_offset`, both in 512-byte
/// blocks as `base_bdevs_list` gives them.
fn data_area(path: &Path, member: &Value) -> Vec<u8> {
    let all = std::fs::read(path).unwrap();
    let off = member["data_offset"].as_u64().unwrap() as usize * 512;
    let len = member["data_size"].as_u64().unwrap() as usize * 512;
    all[off..off + len].to_vec()
}

#[test]
fn raid1_member_removed_and_added_back_under_guest_fio_rebuilds_to_identical_members() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch_dir("guest-raid");
    let d = Ferryd::start_in(dir.clone(), &["-m", "0x3", "-S", dir.to_str().unwrap()]);
    let files: Vec<_> = ["A", "B"].iter().map(|n| dir.join(format!("{n}.img"))).collect();
    for (name, path) in ["A", "B"].iter().zip(&files) {
        std::fs::File::create(path).unwrap().set_len(FILE_BYTES).unwrap();
        d.ok("bdev_uring_create", json!({"name": name, "filename": path, "block_size": 512}));
    }
    d.ok("bdev_raid_create", json!({"name": "r", "raid_level": "raid1", "base_bdevs": ["A", "B"], "superblock": true}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "vhost.raid", "dev_name": "r"}));
    let args = vhost_user_device(&dir.join("vhost.raid"), "vhost-user-blk-pci,num-queues=1", false);
    let log = dir.join("console.log");
    let guest = spawn_guest(SCRIPT, &dir, "--memfd", &args, &log);

    wait_for_console(&log, "FIO-START", 400);
    more_writes(&d, 100, "the guest's fio never wrote to the raid");
    d.ok("bdev_raid_remove_base_bdev", json!({"name": "B"}));
    let r = raid(&d);
    assert_eq!((r["state"].as_str(), r["num_base_bdevs_discovered"].as_u64()), (Some("online"), Some(1)), "{r}");
    more_writes(&d, 200, "the guest's writes stopped on the degraded raid");
    let degraded = raid(&d)["write_intent"]["degraded_regions"].as_u64().unwrap();
    assert!(degraded > 0, "writes while B was away are in the bitmap");
    let rebuilt_before = raid(&d)["rebuilt_bytes"].as_u64().unwrap();
    d.ok("bdev_raid_add_base_bdev", json!({"raid_bdev": "r", "base_bdev": "B"}));
    let r = wait_until(300, "the rebuild never completed", || {
        let r = raid(&d);
        (r.get("process").is_none() && r["num_base_bdevs_discovered"] == 2).then_some(r)
    });
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!console.contains("FIO-END"), "the rebuild ended after the guest's fio:\n{console}");
    more_writes(&d, 100, "the guest's writes stopped after the rebuild");
    let copied = r["rebuilt_bytes"].as_u64().unwrap() - rebuilt_before;
    let region = r["write_intent"]["region_size_kb"].as_u64().unwrap() * 1024;
    assert!(copied >= region && copied < FILE_BYTES / 2, "the bitmap limited the rebuild: {copied} bytes, {r}");

    let out = guest.wait_with_output().unwrap();
    // The console once (run.sh's output repeats the log file).
    let console = std::fs::read_to_string(&log).unwrap_or_default().replace("\r\n", "\n");
    assert!(out.status.success(), "guest script failed:\n{}\nferryd:\n{}", console_of(&out), d.log_text());
    assert!(!fio_failed(&console), "fio saw an error:\n{console}");
    assert_eq!(console.matches("err= 0").count(), 3, "every fio run finished without error:\n{console}");
    assert!(console.contains("IO-ERRORS 0"), "the guest kernel logged no I/O error:\n{console}");
    let r = raid(&d);
    assert_eq!(r["write_intent"]["degraded_regions"], 0, "{r}");
    let members = r["base_bdevs_list"].as_array().unwrap().clone();
    assert!(d.stop().success());

    let a = data_area(&files[0], &members[0]);
    let b = data_area(&files[1], &members[1]);
    assert!(a.len() as u64 > FILE_BYTES / 2, "the data area: {members:?}");
    let (ca, cb) = (crc32c::crc32c(&a), crc32c::crc32c(&b));
    assert_eq!(ca, cb, "the members' data areas differ (crc32c {ca:#x} vs {cb:#x})");
    assert!(a == b, "the members' data areas differ");
    assert!(a.iter().any(|&x| x != 0), "the guest's data reached the members");
}
