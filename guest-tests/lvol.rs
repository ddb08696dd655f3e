//! Guest test for logical volumes: a real Linux guest under QEMU (TCG) on a thin lvol served
//! over vhost-user-blk (an lvstore on a uring bdev over a file), snapshotted while it writes,
//! with a clone of the snapshot hot-plugged as a second disk, and ferryd killed with -9 under
//! verified fio and restarted from its configuration (the lvstore comes back by examine).
//! Needs root, QEMU and the cached guest (`scripts/guest/setup.sh`, run by scripts/test.sh).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "guest/mod.rs"]
mod guest;

use common::{scratch_dir, Ferryd};
use guest::{
    field, kill_and_restart_under_fio, spawn_guest, vhost_user_device, wait_for_console, wait_until, HeldDisk, Qmp,
    ONE_GUEST,
};
use serde_json::{json, Value};

/// The guest's script. `vda` is the lvol. Before the snapshot it writes a 4 MiB random pattern
/// at 48 MiB and 8 MiB of fio blocks with checksummed headers at 0 (region A); then fio writes
/// 16..32 MiB (region B) in the background while the host takes the snapshot, clones it and
/// hot-plugs the clone as `vdb`. Once `vdb` appears the guest overwrites the pattern on `vda`,
/// reads the clone's pattern and verifies region A on it. Then the restart phase (FIO-START ..
/// FIO-END, see `guest::kill_and_restart_under_fio`), and every check again on both disks.
const SCRIPT: &str = r#"
set -e
echo "cache $(cat /sys/block/vda/queue/write_cache)"
dd if=/dev/urandom of=/tmp/pat bs=1M count=4 2>/dev/null
dd if=/tmp/pat of=/dev/vda bs=1M seek=48 oflag=direct 2>/dev/null
echo "PATTERN $(md5sum </tmp/pat | cut -c1-32)"
A="--name=a --bs=4k --size=8M --iodepth=8 --ioengine=libaio --direct=1 --verify=crc32c"
fio $A --filename=/dev/vda --rw=write --do_verify=0 2>&1 | grep -E "err=|fio:|verify:"
B="--name=b --filename=/dev/vda --offset=16M --size=16M --bs=4k --iodepth=8 --ioengine=libaio --direct=1 --verify=crc32c"
fio $B --rw=randwrite --verify_backlog=64 --time_based --runtime=20 >/tmp/bg.log 2>&1 &
bg=$!
echo SNAP-WRITES
i=0
while [ ! -e /sys/block/vdb ]; do
    i=$((i + 1)); [ $i -lt 1500 ] || { echo "no vdb"; exit 1; }
    sleep 0.2
done
echo "VDB $(cat /sys/block/vdb/size)"
dd if=/dev/urandom of=/tmp/new bs=1M count=4 2>/dev/null
dd if=/tmp/new of=/dev/vda bs=1M seek=48 oflag=direct 2>/dev/null
echo "OVERWRITTEN $(md5sum </tmp/new | cut -c1-32)"
echo "VDA-PATTERN $(dd if=/dev/vda bs=1M skip=48 count=4 iflag=direct 2>/dev/null | md5sum | cut -c1-32)"
echo "CLONE-PATTERN $(dd if=/dev/vdb bs=1M skip=48 count=4 iflag=direct 2>/dev/null | md5sum | cut -c1-32)"
echo "CLONE-REGION-A"
fio $A --filename=/dev/vdb --rw=write --verify_only 2>&1 | grep -E "err=|fio:|verify:"
wait $bg
grep -E "err=|fio:|verify:" /tmp/bg.log
echo BG-END
echo FIO-START
fio $B --rw=randwrite --verify_backlog=64 --time_based --runtime=25 2>&1 | grep -E "err=|fio:|verify:"
echo FIO-END
echo "AFTER-VDA-PATTERN $(dd if=/dev/vda bs=1M skip=48 count=4 iflag=direct 2>/dev/null | md5sum | cut -c1-32)"
echo "AFTER-CLONE-PATTERN $(dd if=/dev/vdb bs=1M skip=48 count=4 iflag=direct 2>/dev/null | md5sum | cut -c1-32)"
echo "AFTER-REGION-A"
fio $A --filename=/dev/vda --rw=write --verify_only 2>&1 | grep -E "err=|fio:|verify:"
fio $A --filename=/dev/vdb --rw=write --verify_only 2>&1 | grep -E "err=|fio:|verify:"
"#;

/// Writes `bdev`'s count of completed writes.
fn writes(d: &Ferryd, bdev: &str) -> u64 {
    d.ok("bdev_get_iostat", json!({ "name": bdev }))["bdevs"][0]["num_write_ops"].as_u64().unwrap_or(0)
}

#[test]
fn an_lvol_snapshotted_while_a_guest_writes_clones_its_data_and_survives_kill_9() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch_dir("guest-lvol");
    let d = Ferryd::start_in(dir.clone(), &["-m", "0x3", "-S", dir.to_str().unwrap()]);
    // The base file on a file system the restart scenario can freeze (writes held in flight).
    let mut disk = HeldDisk::new(&dir, 384);
    let file = disk.path("base.img");
    std::fs::File::create(&file).unwrap().set_len(256 << 20).unwrap();
    d.ok("bdev_uring_create", json!({"name": "Base", "filename": file}));
    d.ok("bdev_lvol_create_lvstore", json!({"bdev_name": "Base", "lvs_name": "lvs"}));
    d.ok("bdev_lvol_create", json!({"lvs_name": "lvs", "lvol_name": "vol", "size_in_mib": 64, "thin_provision": true}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "vhost.lvol", "dev_name": "lvs/vol"}));
    let qmp_path = dir.join("qmp.sock");
    let mut args = vec!["-qmp".to_string(), format!("unix:{},server=on,wait=off", qmp_path.display())];
    args.extend(vhost_user_device(&dir.join("vhost.lvol"), "vhost-user-blk-pci,num-queues=1", true));
    let log = dir.join("console.log");
    let guest = spawn_guest(SCRIPT, &dir, "--memfd", &args, &log);
    let mut qmp = Qmp::connect(&qmp_path, 60);

    // The snapshot, while the guest's background fio writes region B.
    wait_for_console(&log, "SNAP-WRITES", 300);
    let before = writes(&d, "lvs/vol");
    wait_until(60, "the guest's background writes never reached the lvol", || {
        (writes(&d, "lvs/vol") > before + 50).then_some(())
    });
    d.ok("bdev_lvol_snapshot", json!({"lvol_name": "lvs/vol", "snapshot_name": "snap"}));
    let after = writes(&d, "lvs/vol");
    wait_until(60, "the guest stopped writing at the snapshot", || (writes(&d, "lvs/vol") > after + 50).then_some(()));
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!console.contains("BG-END"), "the snapshot was not taken while the guest wrote:\n{console}");

    // Its clone on a second controller, hot-plugged into the guest (redialling a restart too).
    d.ok("bdev_lvol_clone", json!({"snapshot_name": "lvs/snap", "clone_name": "clone"}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "vhost.clone", "dev_name": "lvs/clone"}));
    let clone_sock = dir.join("vhost.clone");
    let chardev = json!({"id": "c1", "backend": {"type": "socket", "data": {
        "addr": {"type": "unix", "data": {"path": clone_sock}}, "server": false, "reconnect-ms": 500}}});
    qmp.execute("chardev-add", chardev).expect("chardev-add");
    qmp.execute("device_add", json!({"driver": "vhost-user-blk-pci", "id": "d1", "chardev": "c1", "num-queues": 1}))
        .expect("device_add");
    // The restart replays this: the base bdev, both controllers (their lvols by examine).
    let config = dir.join("config.json");
    std::fs::write(&config, serde_json::to_vec(&d.ok("save_config", Value::Null)).unwrap()).unwrap();
    let saved = std::fs::read_to_string(&config).unwrap();
    assert!(!saved.contains("bdev_lvol"), "no lvol RPC is saved: the lvstore is found by examine:\n{saved}");

    wait_for_console(&log, "BG-END", 300);
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(field(&console, "cache"), "write back", "the lvol advertises a volatile write cache");
    assert_eq!(field(&console, "VDB"), "131072", "the clone has the lvol's size:\n{console}");
    assert_eq!(field(&console, "VDA-PATTERN"), field(&console, "OVERWRITTEN"), "vda reads its new data");
    assert_eq!(
        field(&console, "CLONE-PATTERN"),
        field(&console, "PATTERN"),
        "the clone reads the pattern as of the snapshot, not the overwrite:\n{console}"
    );

    // kill -9 under verified fio and restart from the configuration.
    kill_and_restart_under_fio(d, guest, &log, &config, "vhost.lvol", "lvs/vol", &mut disk);
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(field(&console, "AFTER-VDA-PATTERN"), field(&console, "OVERWRITTEN"), "{console}");
    assert_eq!(field(&console, "AFTER-CLONE-PATTERN"), field(&console, "PATTERN"), "{console}");
    // Region A verified on the clone before the kill, and on both disks after it: fio printed
    // one "err= 0" per run (A write, A on vdb, B background, B restart, A twice after).
    assert_eq!(console.matches("err= 0").count(), 6, "every fio run finished without error:\n{console}");
}
