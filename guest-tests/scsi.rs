//! Guest tests for vhost-user-scsi: a real Linux guest under QEMU (TCG) with
//! `vhost-user-scsi-pci` on a running `ferryd`, checked through what the guest prints
//! (sysfs, sg3-utils, fio). Needs root, QEMU and the cached guest (`scripts/guest/setup.sh`).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "guest/mod.rs"]
mod guest;

use common::{scratch_dir, Ferryd};
use guest::{
    console_of, field, fio_failed, kill_and_restart_under_fio, vhost_user_device, wait_for_console, HeldDisk, ONE_GUEST,
};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Child;

/// The QEMU arguments attaching controller socket `sock` as a vhost-user-scsi HBA.
fn scsi_device(sock: &Path, queues: u32, reconnect: bool) -> Vec<String> {
    vhost_user_device(sock, &format!("vhost-user-scsi-pci,num_queues={queues}"), reconnect)
}

/// Runs `script` in a guest on shared memfd memory (see `guest::run_guest`).
fn run_guest(d: &Ferryd, script: &str, qemu_args: &[String]) -> String {
    guest::run_guest(script, &d.dir, "--memfd", qemu_args)
}

/// Starts a guest on shared memfd memory (see `guest::spawn_guest`).
fn spawn_guest(script: &str, dir: &Path, qemu_args: &[String], log: &Path) -> Child {
    guest::spawn_guest(script, dir, "--memfd", qemu_args, log)
}

fn start_ferryd() -> Ferryd {
    let dir = scratch_dir("guest-scsi");
    Ferryd::start_in(dir.clone(), &["-m", "0x3", "-S", dir.to_str().unwrap()])
}

/// A controller `name` with `bdevs` as targets 0, 1...; returns its socket.
fn controller(d: &Ferryd, name: &str, bdevs: &[&str]) -> PathBuf {
    d.ok("vhost_create_scsi_controller", json!({"ctrlr": name}));
    for (i, b) in bdevs.iter().enumerate() {
        let t = d.ok("vhost_scsi_controller_add_target", json!({"ctrlr": name, "scsi_target_num": i, "bdev_name": b}));
        assert_eq!(t, json!(i));
    }
    d.dir.join(name)
}

/// The virtio feature bits the guest's driver negotiated, as sysfs shows them (bit i is
/// character i + 1), for the one virtio device.
const FEATURES: &str = r#"echo "features $(cat /sys/bus/virtio/devices/*/features)""#;

fn feature_bit(console: &str, bit: usize) -> bool {
    field(console, "features").as_bytes().get(bit) == Some(&b'1')
}

#[test]
fn the_guest_sees_both_targets_and_sg3_utils_answer() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let d = start_ferryd();
    d.ok("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 65536, "block_size": 512}));
    d.ok("bdev_malloc_create", json!({"name": "Malloc1", "num_blocks": 12288, "block_size": 4096}));
    let uuid = d.ok("bdev_get_bdevs", json!({"name": "Malloc0"}))[0]["uuid"].as_str().unwrap().replace('-', "");
    let sock = controller(&d, "scsi.0", &["Malloc0", "Malloc1"]);
    let script = format!(
        "{FEATURES}\n{}",
        r#"
echo "devices $(ls /sys/class/scsi_device/ | tr '\n' ' ')"
# Disk names follow probe order, which is not stable: find each target's disk.
for b in /sys/block/sd*; do
    case $(ls $b/device/scsi_device/) in 0:0:0:0) A=${b##*/} ;; 0:0:1:0) B=${b##*/} ;; esac
done
for s in $A $B; do
    echo "disk $(ls /sys/block/$s/device/scsi_device/) size $(cat /sys/block/$s/size) lbs $(cat /sys/block/$s/queue/logical_block_size) rot $(cat /sys/block/$s/queue/rotational) cache $(cat /sys/block/$s/queue/write_cache | tr ' ' _)"
done
echo "== inq"; sg_inq /dev/$A
echo "== vpd-sv"; sg_vpd -p 0x00 /dev/$A
echo "== vpd-sn"; sg_vpd -p sn /dev/$A
echo "== vpd-di"; sg_vpd -p di /dev/$A
echo "== vpd-bl"; sg_vpd -p bl /dev/$A
echo "== vpd-bdc"; sg_vpd -p bdc /dev/$A
echo "== vpd-lbpv"; sg_vpd -p lbpv /dev/$A
echo "== readcap-a"; sg_readcap -l /dev/$A
echo "== readcap-b"; sg_readcap -l /dev/$B
echo "== luns"; sg_luns /dev/$B
echo "== end"
dd if=/dev/urandom of=/dev/$A bs=1M count=2 oflag=direct 2>/dev/null
sg_unmap --force --lba=0 --num=2048 /dev/$A >/dev/null && echo unmap-ok
echo "after-unmap $(dd if=/dev/$A bs=1M count=1 iflag=direct 2>/dev/null | md5sum | cut -c1-32)"
echo "kept $(dd if=/dev/$A bs=1M count=1 skip=1 iflag=direct 2>/dev/null | md5sum | cut -c1-32)"
echo "zeroes $(dd if=/dev/zero bs=1M count=1 2>/dev/null | md5sum | cut -c1-32)"
sg_sync /dev/$A && echo sync-ok
echo "== pr"
sg_persist -n --out --register --param-sark=0x123abc /dev/$A && echo register-ok
sg_persist -n --out --reserve --param-rk=0x123abc --prout-type=1 /dev/$A && echo reserve-ok
sg_persist -n --in --read-keys /dev/$A
sg_persist -n --in --read-reservation /dev/$A
sg_persist -n --out --release --param-rk=0x123abc --prout-type=1 /dev/$A && echo release-ok
sg_persist -n --out --register --param-rk=0x123abc --param-sark=0 /dev/$A && echo unregister-ok
sg_persist -n --in --read-keys /dev/$A
sg_persist -n --in --read-reservation /dev/$A
echo "== pr-end"
echo "== dmesg"
dmesg | grep -E "sd |scsi"
echo "== reset"
sg_reset -d /dev/$A && echo reset-ok
# The reset is a unit attention for every nexus, the issuer's too (SAM-5 6.3.3): a TEST UNIT
# READY may report it first (unless the kernel's own commands took it); the next one is good.
sg_turs /dev/$A >/dev/null 2>&1
sg_turs /dev/$A && echo tur-ok
dd if=/dev/$A of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null && echo read-after-reset-ok
dmesg | grep -E "sd |scsi" | tail -n 5
echo "== end"
"#
    );
    let console = run_guest(&d, &script, &scsi_device(&sock, 2, false));
    let section = |name: &str| {
        let start = console.find(&format!("== {name}\n")).unwrap_or_else(|| panic!("no section {name}:\n{console}"));
        let rest = &console[start..];
        let end = rest[3..].find("\n== ").map_or(rest.len(), |e| e + 4);
        rest[..end].to_string()
    };
    // Hot-plug and capacity-change events were negotiated (VIRTIO_SCSI_F_HOTPLUG, _CHANGE).
    assert!(feature_bit(&console, 1) && feature_bit(&console, 2), "HOTPLUG and CHANGE negotiated:\n{console}");
    // Targets 0 and 1 with LUN 0 each; nothing else (no phantom LUNs or targets).
    assert_eq!(field(&console, "devices"), "0:0:0:0 0:0:1:0", "{console}");
    let disks: Vec<&str> = console.lines().filter_map(|l| l.strip_prefix("disk ")).collect();
    assert_eq!(
        disks,
        ["0:0:0:0 size 65536 lbs 512 rot 0 cache write_back", "0:0:1:0 size 98304 lbs 4096 rot 0 cache write_back"],
        "{console}"
    );

    let inq = section("inq");
    assert!(inq.contains("Vendor identification: FERRY"), "{inq}");
    assert!(inq.contains("Product identification: Malloc disk"), "{inq}");
    assert!(inq.contains("Peripheral device type: disk"), "{inq}");
    assert!(inq.contains("PQual=0"), "{inq}");
    let sv = section("vpd-sv");
    for page in ["[sv]", "[sn]", "[di]", "[bl]", "[bdc]", "[lbpv]"] {
        assert!(sv.contains(page), "supported VPD pages list {page}:\n{sv}");
    }
    let sn = section("vpd-sn");
    assert!(sn.contains(&format!("Unit serial number: {uuid}")), "serial is the bdev uuid ({uuid}):\n{sn}");
    let di = section("vpd-di");
    assert!(di.contains("designator type: NAA,  code set: Binary"), "{di}");
    assert!(
        di.lines().any(|l| l.trim().starts_with("0x6") && l.trim().len() == 34),
        "a 16-byte NAA IEEE Registered Extended designator:\n{di}"
    );
    assert!(di.contains("Relative target port: 0x1"), "{di}");
    let bl = section("vpd-bl");
    assert!(bl.contains("Maximum transfer length: 65536 blocks"), "32 MiB of 512-byte blocks:\n{bl}");
    assert!(bl.contains("Maximum unmap LBA count: 1048576"), "{bl}");
    assert!(bl.contains("Maximum unmap block descriptor count: 256"), "{bl}");
    let bdc = section("vpd-bdc");
    assert!(bdc.contains("Non-rotating medium"), "{bdc}");
    let lbpv = section("vpd-lbpv");
    assert!(lbpv.contains("Unmap command supported (LBPU): 1"), "{lbpv}");
    let rc = section("readcap-a");
    assert!(rc.contains("Last LBA=65535 (0xffff), Number of logical blocks=65536"), "{rc}");
    assert!(rc.contains("Logical block length=512 bytes"), "{rc}");
    assert!(rc.contains("lbpme=1"), "thin provisioning is reported:\n{rc}");
    let rc = section("readcap-b");
    assert!(rc.contains("Number of logical blocks=12288"), "{rc}");
    assert!(rc.contains("Logical block length=4096 bytes"), "{rc}");
    let luns = section("luns");
    assert!(luns.contains("1 lun entry") && luns.contains("0000000000000000"), "REPORT LUNS lists LUN 0:\n{luns}");

    assert!(console.contains("unmap-ok"), "{console}");
    assert_eq!(field(&console, "after-unmap"), field(&console, "zeroes"), "unmapped blocks read back as zeroes");
    assert_ne!(field(&console, "kept"), field(&console, "zeroes"), "blocks past the unmapped range were kept");
    assert!(console.contains("sync-ok"), "{console}");

    let pr = section("pr");
    for ok in ["register-ok", "reserve-ok", "release-ok", "unregister-ok"] {
        assert!(pr.contains(ok), "{ok}:\n{pr}");
    }
    assert!(pr.contains("PR generation=0x1, 1 registered reservation key follows:\n    0x123abc"), "{pr}");
    assert!(pr.contains("Key=0x123abc\n    scope: LU_SCOPE,  type: Write Exclusive"), "{pr}");
    assert!(pr.contains("there are NO registered reservation keys"), "{pr}");
    assert!(pr.contains("there is NO reservation held"), "{pr}");
    let dmesg = section("dmesg");
    for bad in ["I/O error", "abort", "reset", "Sense Key", "failed", "Unit Attention"] {
        assert!(!dmesg.contains(bad), "the guest kernel logged {bad:?}:\n{dmesg}");
    }
    // sg_reset -d: the kernel's error handler sends LOGICAL UNIT RESET on the control queue.
    let reset = section("reset");
    for ok in ["reset-ok", "tur-ok", "read-after-reset-ok"] {
        assert!(reset.contains(ok), "{ok}:\n{reset}\nferryd:\n{}", d.log_text());
    }
    assert!(d.log_text().contains("LogicalUnitReset"), "the TMF reached ferryd:\n{}", d.log_text());
    let stats = d.ok("bdev_get_iostat", json!({"name": "Malloc0"}));
    assert!(stats["bdevs"][0]["num_unmap_ops"].as_u64().unwrap() >= 1, "the UNMAP reached the bdev");
    assert!(stats["bdevs"][0]["num_other_ops"].as_u64().unwrap() >= 1, "SYNCHRONIZE CACHE reached the bdev");
}

#[test]
fn fio_verifies_on_two_targets_and_data_round_trips() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let d = start_ferryd();
    d.ok("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 65536, "block_size": 512}));
    d.ok("bdev_malloc_create", json!({"name": "Malloc1", "num_blocks": 12288, "block_size": 4096}));
    let sock = controller(&d, "scsi.1", &["Malloc0", "Malloc1"]);
    let console = run_guest(
        &d,
        r#"
set -e
dd if=/dev/urandom of=/tmp/x bs=1M count=4 2>/dev/null
for s in sda sdb; do
    dd if=/tmp/x of=/dev/$s bs=1M count=4 seek=3 oflag=direct 2>/dev/null
    dd if=/dev/$s of=/tmp/y bs=1M count=4 skip=3 iflag=direct 2>/dev/null
    echo "md5-$s $(md5sum </tmp/x | cut -c1-32) $(md5sum </tmp/y | cut -c1-32)"
done
fio --ioengine=libaio --direct=1 --iodepth=16 --rw=randwrite --verify=crc32c --group_reporting \
    --name=a --filename=/dev/sda --bs=4k --size=16M \
    --name=b --filename=/dev/sdb --bsrange=4k-64k --size=24M 2>&1 | grep -E "err=|fio:|verify:"
echo FIO-DONE
"#,
        &scsi_device(&sock, 2, false),
    );
    for s in ["md5-sda", "md5-sdb"] {
        let sums: Vec<&str> = field(&console, s).split_whitespace().collect();
        assert_eq!(sums[0], sums[1], "{s}: data read back differs:\n{console}");
    }
    assert!(console.contains("FIO-DONE") && console.contains("err= 0"), "fio verify failed:\n{console}");
    assert!(!fio_failed(&console), "{console}");
    for b in ["Malloc0", "Malloc1"] {
        let stats = d.ok("bdev_get_iostat", json!({"name": b}));
        assert!(stats["bdevs"][0]["num_write_ops"].as_u64().unwrap() >= 300, "the guest's writes reached {b}");
    }
}

#[test]
fn targets_hot_added_and_removed_while_the_guest_runs() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let d = start_ferryd();
    d.ok("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 65536, "block_size": 512}));
    d.ok("bdev_malloc_create", json!({"name": "Malloc1", "num_blocks": 20480, "block_size": 512}));
    d.ok("bdev_null_create", json!({"name": "Null2", "num_blocks": 4096, "block_size": 4096}));
    let sock = controller(&d, "hot.0", &["Malloc0"]);
    let log = d.dir.join("console.log");
    let script = format!(
        "{FEATURES}\n{}",
        r#"
# Waits (bounded) until /sys/block/$1 exists (want=1) or is gone (want=0).
wait_disk() {
    for i in $(seq 600); do
        if [ -e /sys/block/$1 ]; then have=1; else have=0; fi
        [ $have = $2 ] && return 0
        sleep 0.1
    done
    return 1
}
echo "disks $(ls /sys/block | grep sd | tr '\n' ' ')"
echo WAIT-ADD
wait_disk sdb 1 && echo "added $(ls /sys/block/sdb/device/scsi_device/) size $(cat /sys/block/sdb/size)"
dd if=/dev/urandom of=/tmp/x bs=1M count=2 2>/dev/null
dd if=/tmp/x of=/dev/sdb bs=1M count=2 oflag=direct 2>/dev/null
dd if=/dev/sdb of=/tmp/y bs=1M count=2 iflag=direct 2>/dev/null
echo "md5 $(md5sum </tmp/x | cut -c1-32) $(md5sum </tmp/y | cut -c1-32)"
fio --name=bg --filename=/dev/sda --rw=randwrite --bs=4k --size=16M --iodepth=16 --ioengine=libaio \
    --direct=1 --verify=crc32c --verify_backlog=64 --time_based --runtime=14 >/tmp/fio.out 2>&1 &
fio_pid=$!
sleep 2
echo WAIT-REMOVE
wait_disk sdb 0 && echo "removed; devices $(ls /sys/class/scsi_device/ | tr '\n' ' ')"
echo WAIT-READD
wait_disk sdb 1 && echo "readded $(ls /sys/block/sdb/device/scsi_device/) size $(cat /sys/block/sdb/size) lbs $(cat /sys/block/sdb/queue/logical_block_size)"
dd if=/dev/sdb of=/dev/null bs=1M count=4 iflag=direct 2>/dev/null && echo readded-read-ok
echo WAIT-RESIZE
for i in $(seq 600); do
    s=$(cat /sys/block/sdb/size)
    if [ "$s" != 32768 ]; then break; fi
    sleep 0.1
done
echo "resized $s"
dd if=/dev/sdb of=/dev/null bs=1M count=1 skip=20 iflag=direct 2>/dev/null && echo read-beyond-old-end-ok
wait $fio_pid; echo "fio-rc $?"
grep -E "err=|fio:|verify:" /tmp/fio.out
dmesg | grep -E "sd |scsi" | tail -n 30
"#
    );
    let guest = spawn_guest(&script, &d.dir, &scsi_device(&sock, 2, false), &log);
    wait_for_console(&log, "WAIT-ADD", 120);
    assert_eq!(
        d.ok(
            "vhost_scsi_controller_add_target",
            json!({"ctrlr": "hot.0", "scsi_target_num": 1, "bdev_name": "Malloc1"})
        ),
        json!(1)
    );
    wait_for_console(&log, "WAIT-REMOVE", 120);
    d.ok("vhost_scsi_controller_remove_target", json!({"ctrlr": "hot.0", "scsi_target_num": 1}));
    wait_for_console(&log, "WAIT-READD", 120);
    let info = d.ok("vhost_get_controllers", json!({"name": "hot.0"}));
    let targets: Vec<&Value> = info[0]["backend_specific"]["scsi"].as_array().unwrap().iter().collect();
    assert_eq!(targets.len(), 1, "only target 0 is left: {info}");
    let t = d
        .ok("vhost_scsi_controller_add_target", json!({"ctrlr": "hot.0", "scsi_target_num": -1, "bdev_name": "Null2"}));
    assert_eq!(t, json!(1), "the freed slot is reused");
    wait_for_console(&log, "WAIT-RESIZE", 120);
    d.ok("bdev_null_resize", json!({"name": "Null2", "new_size": 32}));
    let out = guest.wait_with_output().unwrap();
    let console = console_of(&out);
    assert!(out.status.success(), "guest failed:\n{console}\nferryd:\n{}", d.log_text());
    assert!(feature_bit(&console, 1) && feature_bit(&console, 2), "HOTPLUG and CHANGE negotiated:\n{console}");
    assert_eq!(field(&console, "disks"), "sda", "{console}");
    assert_eq!(field(&console, "added"), "0:0:1:0 size 20480", "the hot-added target appeared:\n{console}");
    let sums: Vec<&str> = field(&console, "md5").split_whitespace().collect();
    assert_eq!(sums[0], sums[1], "data read back from the hot-added disk differs:\n{console}");
    assert_eq!(field(&console, "removed; devices"), "0:0:0:0", "the removed target is gone:\n{console}");
    assert_eq!(field(&console, "readded"), "0:0:1:0 size 32768 lbs 4096", "{console}");
    assert!(console.contains("readded-read-ok"), "{console}");
    // PARAM_CHANGE (capacity data has changed) made the guest re-read the capacity.
    assert_eq!(field(&console, "resized"), "65536", "the guest sees the grown disk:\n{console}");
    assert!(console.contains("read-beyond-old-end-ok"), "{console}");
    assert_eq!(field(&console, "fio-rc"), "0", "fio on the other disk failed:\n{console}");
    assert!(console.contains("err= 0") && !fio_failed(&console), "{console}");
}

#[test]
fn ferryd_killed_and_restarted_under_fio_loses_nothing() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let d = start_ferryd();
    let dir = d.dir.clone();
    let mut disk = HeldDisk::new(&dir, 160);
    for i in 0..2 {
        let file = disk.path(&format!("disk{i}.img"));
        std::fs::File::create(&file).unwrap().set_len(48 << 20).unwrap();
        d.ok("bdev_uring_create", json!({"name": format!("Disk{i}"), "filename": file}));
    }
    let sock = controller(&d, "scsi.r", &["Disk0", "Disk1"]);
    let config = dir.join("config.json");
    std::fs::write(&config, serde_json::to_vec(&d.ok("save_config", Value::Null)).unwrap()).unwrap();
    let log = dir.join("console.log");
    let guest = spawn_guest(
        r#"
echo FIO-START
fio --ioengine=libaio --direct=1 --iodepth=8 --rw=randwrite --bs=4k --verify=crc32c --verify_backlog=64 \
    --time_based --runtime=25 --group_reporting \
    --name=a --filename=/dev/sda --size=16M --name=b --filename=/dev/sdb --size=16M 2>&1 | grep -E "err=|fio:|verify:"
echo FIO-END
dmesg | grep -E "sd |scsi|virtio" | tail -n 30
"#,
        &dir,
        &scsi_device(&sock, 2, true),
        &log,
    );
    kill_and_restart_under_fio(d, guest, &log, &config, "scsi.r", "Disk0", &mut disk);
}
