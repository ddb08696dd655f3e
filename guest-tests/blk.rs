//! Guest tests for vhost-user-blk: a real Linux guest under QEMU (TCG) with
//! `vhost-user-blk-pci` on a running `ferryd`, checked through what the guest prints.
//! Needs root, QEMU and the cached guest (`scripts/guest/setup.sh`, run by scripts/test.sh).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "guest/mod.rs"]
mod guest;

use common::{scratch_dir, Ferryd};
use guest::{
    console_of, fio_failed, kill_and_restart_under_fio, run_guest, spawn_guest, vhost_user_device, HeldDisk, ONE_GUEST,
};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The QEMU arguments attaching controller socket `sock` as a vhost-user-blk disk.
fn blk_device(sock: &Path, queues: u32, reconnect: bool) -> Vec<String> {
    vhost_user_device(sock, &format!("vhost-user-blk-pci,num-queues={queues}"), reconnect)
}

fn controller(d: &Ferryd, name: &str, bdev: &str, extra: Value) -> PathBuf {
    let mut params = json!({"ctrlr": name, "dev_name": bdev});
    params.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    d.ok("vhost_create_blk_controller", params);
    d.dir.join(name)
}

fn start_ferryd() -> Ferryd {
    let dir = scratch_dir("guest");
    Ferryd::start_in(dir.clone(), &["-m", "0x3", "-S", dir.to_str().unwrap()])
}

#[test]
fn fio_verify_and_data_round_trip_on_two_queues() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    for memory in ["--memfd", "--hugepages"] {
        let d = start_ferryd();
        d.ok("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 131072, "block_size": 512}));
        let sock = controller(&d, "vhost.0", "Malloc0", json!({}));
        let console = run_guest(
            r#"
set -e
echo "size $(cat /sys/block/vda/size) queues $(ls /sys/block/vda/mq | wc -l) ro $(cat /sys/block/vda/ro)"
dd if=/dev/urandom of=/tmp/x bs=1M count=4 2>/dev/null
dd if=/tmp/x of=/dev/vda bs=1M count=4 seek=3 oflag=direct 2>/dev/null
dd if=/dev/vda of=/tmp/y bs=1M count=4 skip=3 iflag=direct 2>/dev/null
echo "md5 $(md5sum </tmp/x | cut -c1-32) $(md5sum </tmp/y | cut -c1-32)"
fio --name=v --filename=/dev/vda --rw=randwrite --bs=4k --size=24M --offset_increment=24M --iodepth=16 \
    --ioengine=libaio --direct=1 --verify=crc32c --numjobs=2 --group_reporting 2>&1 | grep -E "err=|fio:|verify:"
"#,
            &d.dir,
            memory,
            &blk_device(&sock, 2, false),
        );
        assert!(console.contains("size 131072 queues 2 ro 0"), "{memory}: geometry and queues:\n{console}");
        let md5 = console.lines().find(|l| l.starts_with("md5 ")).expect("md5 line");
        let sums: Vec<&str> = md5.split_whitespace().skip(1).collect();
        assert_eq!(sums[0], sums[1], "{memory}: data read back differs:\n{console}");
        assert!(console.contains("err= 0"), "{memory}: fio verify failed:\n{console}");
        assert!(!fio_failed(&console), "{memory}:\n{console}");
        let stats = d.ok("bdev_get_iostat", json!({"name": "Malloc0"}));
        assert!(stats["bdevs"][0]["num_write_ops"].as_u64().unwrap() >= 6144, "the guest's writes reached the bdev");
    }
}

#[test]
fn a_packed_ring_carries_verified_io() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let d = start_ferryd();
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 131072, "block_size": 512}));
    let sock = controller(&d, "packed.0", "M", json!({"packed_ring": true}));
    let mut args = blk_device(&sock, 2, false);
    args[3].push_str(",packed=on");
    let console = run_guest(
        r#"
set -e
echo "packed $(cut -c35 /sys/bus/virtio/devices/*/features)"
dd if=/dev/urandom of=/tmp/x bs=1M count=4 2>/dev/null
dd if=/tmp/x of=/dev/vda bs=1M count=4 oflag=direct 2>/dev/null
dd if=/dev/vda of=/tmp/y bs=1M count=4 iflag=direct 2>/dev/null
echo "md5 $(md5sum </tmp/x | cut -c1-32) $(md5sum </tmp/y | cut -c1-32)"
fio --name=p --filename=/dev/vda --rw=randrw --bs=4k --size=24M --offset_increment=24M --iodepth=32 \
    --ioengine=libaio --direct=1 --verify=crc32c --numjobs=2 --group_reporting 2>&1 | grep -E "err=|fio:|verify:"
"#,
        &d.dir,
        "--memfd",
        &args,
    );
    assert!(console.contains("packed 1"), "VIRTIO_F_RING_PACKED was negotiated:\n{console}");
    let md5 = console.lines().find(|l| l.starts_with("md5 ")).expect("md5 line");
    let sums: Vec<&str> = md5.split_whitespace().skip(1).collect();
    assert_eq!(sums[0], sums[1], "data read back differs:\n{console}");
    assert!(console.contains("err= 0") && !fio_failed(&console), "fio on the packed ring failed:\n{console}");
}

#[test]
fn discard_flush_and_get_id_work() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let d = start_ferryd();
    let file = d.dir.join("disk.img");
    std::fs::File::create(&file).unwrap().set_len(64 << 20).unwrap();
    d.ok("bdev_uring_create", json!({"name": "Disk", "filename": file}));
    let uuid = d.ok("bdev_get_bdevs", json!({"name": "Disk"}))[0]["uuid"].as_str().unwrap().replace('-', "");
    let sock = controller(&d, "vhost.1", "Disk", json!({}));
    let console = run_guest(
        r#"
set -e
echo "discard_max $(cat /sys/block/vda/queue/discard_max_bytes) wzeroes $(cat /sys/block/vda/queue/write_zeroes_max_bytes)"
echo "cache $(cat /sys/block/vda/queue/write_cache)"
echo "serial $(cat /sys/block/vda/serial)"
dd if=/dev/urandom of=/dev/vda bs=1M count=2 oflag=direct 2>/dev/null
/usr/bin/blkdiscard -o 0 -l 1048576 /dev/vda
echo "after-discard $(dd if=/dev/vda bs=1M count=1 iflag=direct 2>/dev/null | md5sum | cut -c1-32)"
echo "zeroes $(dd if=/dev/zero bs=1M count=1 2>/dev/null | md5sum | cut -c1-32)"
/usr/bin/blkdiscard -z -o 1048576 -l 1048576 /dev/vda
echo "after-zeroout $(dd if=/dev/vda bs=1M count=1 skip=1 iflag=direct 2>/dev/null | md5sum | cut -c1-32)"
fio --name=f --filename=/dev/vda --rw=write --bs=64k --size=8M --fsync=4 --ioengine=psync --direct=1 2>&1 | grep -E "err="
"#,
        &d.dir,
        "--memfd",
        &blk_device(&sock, 1, false),
    );
    let field = |name: &str| {
        console
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name}:\n{console}"))
    };
    assert_ne!(field("discard_max"), "0", "discard is offered:\n{console}");
    assert_eq!(field("cache"), "write back", "a volatile cache is advertised, so flushes are sent");
    assert_eq!(field("serial"), &uuid[..20], "GET_ID returns the stable serial");
    assert_eq!(field("after-discard"), field("zeroes"), "discarded blocks read back as zeroes");
    assert_eq!(field("after-zeroout"), field("zeroes"), "write-zeroes blocks read back as zeroes");
    assert!(console.contains("err= 0"), "fio with fsync failed:\n{console}");
    let stats = d.ok("bdev_get_iostat", json!({"name": "Disk"}));
    assert!(stats["bdevs"][0]["num_unmap_ops"].as_u64().unwrap() >= 1);
    assert!(stats["bdevs"][0]["num_other_ops"].as_u64().unwrap() >= 2, "flushes reached the bdev");
}

#[test]
fn a_resized_bdev_reaches_the_guest() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let d = start_ferryd();
    d.ok("bdev_null_create", json!({"name": "N", "num_blocks": 131072, "block_size": 512}));
    let sock = controller(&d, "grow.0", "N", json!({}));
    let log = d.dir.join("console.log");
    let guest = spawn_guest(
        r#"
echo "SIZE1 $(cat /sys/block/vda/size)"
for i in $(seq 120); do
    s=$(cat /sys/block/vda/size)
    if [ "$s" != 131072 ]; then echo "SIZE2 $s"; break; fi
    sleep 0.5
done
dd if=/dev/vda of=/dev/null bs=1M count=1 skip=100 iflag=direct 2>/dev/null && echo read-beyond-old-end-ok
"#,
        &d.dir,
        "--memfd",
        &blk_device(&sock, 1, false),
        &log,
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("SIZE1") {
        assert!(Instant::now() < deadline, "the guest never printed its first size");
        std::thread::sleep(Duration::from_millis(100));
    }
    let info = d.ok("vhost_get_controllers", json!({"name": "grow.0"}));
    assert_eq!(info[0]["sessions"][0]["config_change_notifications"], true, "QEMU set up the backend channel");
    d.ok("bdev_null_resize", json!({"name": "N", "new_size": 128}));
    let out = guest.wait_with_output().unwrap();
    let console = console_of(&out);
    assert!(out.status.success(), "{console}");
    assert!(console.contains("SIZE2 262144"), "the guest sees the new size:\n{console}");
    assert!(console.contains("read-beyond-old-end-ok"), "{console}");
}

#[test]
fn a_read_only_controller_refuses_writes() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let d = start_ferryd();
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 32768, "block_size": 512}));
    let sock = controller(&d, "ro.0", "M", json!({"readonly": true}));
    let info = d.ok("vhost_get_controllers", json!({"name": "ro.0"}));
    assert_eq!(info[0]["backend_specific"]["block"]["readonly"], true);
    let console = run_guest(
        r#"
echo "ro $(cat /sys/block/vda/ro)"
dd if=/dev/vda of=/dev/null bs=1M count=1 iflag=direct 2>/dev/null && echo read-ok
if dd if=/dev/zero of=/dev/vda bs=4k count=1 oflag=direct 2>/tmp/err; then echo write-accepted; else echo write-refused; fi
true
"#,
        &d.dir,
        "--memfd",
        &blk_device(&sock, 1, false),
    );
    assert!(console.contains("ro 1"), "the guest sees a read-only disk:\n{console}");
    assert!(console.contains("read-ok"), "{console}");
    assert!(console.contains("write-refused") && !console.contains("write-accepted"), "{console}");
    let stats = d.ok("bdev_get_iostat", json!({"name": "M"}));
    assert_eq!(stats["bdevs"][0]["num_write_ops"], 0);
}

#[test]
fn deleting_a_connected_controller_is_refused_until_the_guest_leaves() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let d = start_ferryd();
    d.ok("bdev_null_create", json!({"name": "N", "num_blocks": 8192, "block_size": 512}));
    let sock = controller(&d, "busy.0", "N", json!({}));
    let log = d.dir.join("console.log");
    let mut guest = spawn_guest("sleep 8; echo done", &d.dir, "--memfd", &blk_device(&sock, 1, false), &log);
    let deadline = Instant::now() + Duration::from_secs(120);
    while d.ok("vhost_get_controllers", json!({"name": "busy.0"}))[0]["sessions"].as_array().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the guest never connected");
        std::thread::sleep(Duration::from_millis(100));
    }
    let e = d.err("vhost_delete_controller", json!({"ctrlr": "busy.0"}));
    assert_eq!(e.code, -16, "{e:?}");
    assert!(guest.wait().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.rpc("vhost_delete_controller", json!({"ctrlr": "busy.0"})).is_err() {
        assert!(Instant::now() < deadline, "delete still refused after the guest left");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!sock.exists(), "the socket is removed with the controller");
}

/// The restart test on a split or a packed ring: fio with verification runs in the guest
/// while ferryd is killed with requests provably in flight (see `kill_and_restart_under_fio`).
fn killed_and_restarted_under_fio(packed: bool) {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let d = start_ferryd();
    let dir = d.dir.clone();
    let mut disk = HeldDisk::new(&dir, 128);
    let file = disk.path("disk.img");
    std::fs::File::create(&file).unwrap().set_len(64 << 20).unwrap();
    d.ok("bdev_uring_create", json!({"name": "Disk", "filename": file}));
    let sock = controller(&d, "vhost.r", "Disk", json!({ "packed_ring": packed }));
    let config = dir.join("config.json");
    std::fs::write(&config, serde_json::to_vec(&d.ok("save_config", Value::Null)).unwrap()).unwrap();
    let log = dir.join("console.log");
    let mut args = blk_device(&sock, 2, true);
    if packed {
        args[3].push_str(",packed=on");
    }
    let guest = spawn_guest(
        r#"
echo "packed $(cut -c35 /sys/bus/virtio/devices/*/features)"
echo FIO-START
fio --name=r --filename=/dev/vda --rw=randwrite --bs=4k --size=16M --offset_increment=16M --numjobs=2 \
    --iodepth=8 --ioengine=libaio --direct=1 --verify=crc32c --verify_backlog=64 --time_based --runtime=25 \
    --group_reporting 2>&1 | grep -E "err=|fio:|verify:"
echo FIO-END
"#,
        &dir,
        "--memfd",
        &args,
        &log,
    );
    guest::wait_for_console(&log, "FIO-START", 120);
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    let want = if packed { "packed 1" } else { "packed 0" };
    assert!(console.contains(want), "VIRTIO_F_RING_PACKED negotiation: expected {want:?}:\n{console}");
    kill_and_restart_under_fio(d, guest, &log, &config, "vhost.r", "Disk", &mut disk);
}

#[test]
fn ferryd_killed_and_restarted_under_fio_loses_nothing() {
    killed_and_restarted_under_fio(false);
}

#[test]
fn ferryd_killed_and_restarted_under_fio_on_a_packed_ring_loses_nothing() {
    killed_and_restarted_under_fio(true);
}

#[test]
fn a_four_vcpu_guest_with_qemus_default_queue_count_runs_on_a_one_core_controller() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch_dir("guest");
    let d = Ferryd::start_in(dir.clone(), &["-m", "0x1", "-S", dir.to_str().unwrap()]);
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 131072, "block_size": 512}));
    let sock = controller(&d, "vcpu4.0", "M", json!({"cpumask": "0x1"}));
    // No num-queues: QEMU gives the device one queue per vCPU (4), as libvirt does without
    // a `queues` attribute. `-smp 4` after run.sh's own `-smp 2` wins.
    let mut args = vec!["-smp".to_string(), "4".to_string()];
    args.extend(vhost_user_device(&sock, "vhost-user-blk-pci", false));
    let console = run_guest(
        r#"
set -e
echo "cpus $(grep -c ^processor /proc/cpuinfo) queues $(ls /sys/block/vda/mq | wc -l)"
fio --name=q --filename=/dev/vda --rw=randwrite --bs=4k --size=16M --offset_increment=16M --iodepth=8 \
    --ioengine=libaio --direct=1 --verify=crc32c --numjobs=4 --cpus_allowed_policy=split --cpus_allowed=0-3 \
    --group_reporting 2>&1 | grep -E "err=|fio:|verify:"
"#,
        &d.dir,
        "--memfd",
        &args,
    );
    assert!(console.contains("cpus 4 queues 4"), "4 vCPUs, one queue each:\n{console}");
    assert!(console.contains("err= 0") && !fio_failed(&console), "fio verify failed:\n{console}");
    // Every queue ran, all on the controller's one reactor.
    let log = d.log_text();
    for q in 0..4 {
        assert!(
            log.lines().any(|l| l.contains("virtqueue started") && l.contains(&format!("queue={q} reactor=0"))),
            "queue {q} never started on reactor 0:\n{log}"
        );
    }
}
