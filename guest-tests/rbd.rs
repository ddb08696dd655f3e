//! A Linux guest on a Ceph RBD image: vhost-user-blk on Ferry's RBD bdev, the image on a real
//! cluster the test starts (`scripts/ceph-dev.sh`). fio verifies in the guest while ferryd is
//! killed with -9 and restarted with the guest's writes provably in flight (held in librados
//! by a stopped OSD); afterwards `rbd export` holds what the guest wrote last. Before that,
//! the image is grown with Ceph's CLI and the guest sees its disk's new capacity.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "guest/mod.rs"]
mod guest;

use common::ceph::CephCluster;
use common::{scratch_dir, Ferryd};
use guest::{field, kill_and_restart_under_fio, spawn_guest, vhost_user_device, HoldWrites, ONE_GUEST};
use md5::{Digest, Md5};
use serde_json::{json, Value};

/// Holds an RBD bdev's writes by stopping the cluster's OSD (SIGSTOP): librados keeps them
/// in flight until it continues.
struct StoppedOsd<'a>(&'a CephCluster, bool);

impl HoldWrites for StoppedOsd<'_> {
    fn hold(&mut self) {
        self.0.pause_osd();
        self.1 = true;
    }

    fn release(&mut self) {
        if self.1 {
            self.0.resume_osd();
            self.1 = false;
        }
    }
}

#[test]
fn a_guest_on_rbd_keeps_its_data_across_ferryd_killed_under_fio() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let c = CephCluster::up("rbd-guest");
    c.create_image("vm0", 64);
    let dir = scratch_dir("guest-rbd");
    let d = Ferryd::start_in(dir.clone(), &["-m", "0x3", "-S", dir.to_str().unwrap()]);
    let config = json!({ "mon_host": c.mon_addr(), "key": c.key() });
    d.ok(
        "bdev_rbd_create",
        json!({ "name": "Disk", "pool_name": "rbd", "rbd_name": "vm0", "block_size": 512, "config": config }),
    );
    d.ok("vhost_create_blk_controller", json!({ "ctrlr": "vhost.r", "dev_name": "Disk" }));
    let saved = dir.join("config.json");
    std::fs::write(&saved, serde_json::to_vec(&d.ok("save_config", Value::Null)).unwrap()).unwrap();
    let log = dir.join("console.log");
    let args = vhost_user_device(&dir.join("vhost.r"), "vhost-user-blk-pci,num-queues=2", true);
    let guest = spawn_guest(
        r#"
echo "SIZE-BEFORE $(cat /sys/block/vda/size)"
for i in $(seq 600); do [ "$(cat /sys/block/vda/size)" != 131072 ] && break; sleep 0.1; done
echo "SIZE-AFTER $(cat /sys/block/vda/size)"
echo FIO-START
fio --name=r --filename=/dev/vda --rw=randwrite --bs=4k --size=16M --offset_increment=16M --numjobs=2 \
    --iodepth=8 --ioengine=libaio --direct=1 --verify=crc32c --verify_backlog=64 --time_based --runtime=25 \
    --group_reporting 2>&1 | grep -E "err=|fio:|verify:"
echo FIO-END
head -c 4194304 /dev/urandom > /tmp/last
dd if=/tmp/last of=/dev/vda bs=1M seek=60 oflag=direct conv=fsync 2>/dev/null
echo "LAST-MD5 $(md5sum < /tmp/last | cut -d' ' -f1)"
"#,
        &dir,
        "--memfd",
        &args,
        &log,
    );
    // The image grown by another client (Ceph's CLI) reaches the guest as a capacity change.
    guest::wait_for_console(&log, "SIZE-BEFORE", 120);
    c.rbd_ok(&["resize", "--size", "96", "rbd/vm0"]);
    let mut osd = StoppedOsd(&c, false);
    let console = kill_and_restart_under_fio(d, guest, &log, &saved, "vhost.r", "Disk", &mut osd);

    assert_eq!(field(&console, "SIZE-BEFORE"), "131072", "64 MiB in 512-byte sectors");
    assert_eq!(field(&console, "SIZE-AFTER"), "196608", "the guest saw the image grow to 96 MiB");

    // The image itself holds the guest's last 4 MiB, as Ceph's own tool reads it.
    let export = dir.join("vm0.raw");
    c.rbd_ok(&["export", "rbd/vm0", export.to_str().unwrap()]);
    let image = std::fs::read(&export).unwrap();
    let tail: String = Md5::digest(&image[60 << 20..64 << 20]).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(tail, field(&console, "LAST-MD5"), "rbd export holds what the guest wrote");
}
