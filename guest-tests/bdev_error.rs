//! Guest test for the error-injection bdev: a real Linux guest under QEMU (TCG) with a
//! vhost-user-blk disk on `EE_Malloc0` and a vhost-user-scsi disk on `EE_Malloc1`. Read
//! failures injected with `bdev_error_inject_error` reach the guest as I/O errors on the
//! virtio-blk disk (status VIRTIO_BLK_S_IOERR) and as CHECK CONDITION with MEDIUM ERROR /
//! UNRECOVERED READ ERROR sense on the SCSI disk; once the rule is cleared, reads work again.
//! One guest boot covers both frontends. Needs root, QEMU and the cached guest
//! (`scripts/guest/setup.sh`, run by scripts/test.sh).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "guest/mod.rs"]
mod guest;

use common::{scratch_dir, Ferryd};
use guest::{console_of, field, spawn_guest, wait_for_console, ONE_GUEST};
use serde_json::json;

/// The guest's script: `vda` is the virtio-blk disk, `sda` the SCSI one. It signals READY,
/// then reads each disk until a read fails (the host injects the failures after READY),
/// shows the sense the kernel's SCSI disk driver logged, signals ERRORS-SEEN and waits for
/// reads to work again (the host clears the rules).
const SCRIPT: &str = r#"
echo "DISKS $(cat /sys/block/vda/size) $(cat /sys/block/sda/size)"
echo READY
fails() { ! dd if=$1 of=/dev/null bs=4096 count=1 iflag=direct 2>/tmp/err; }
i=0
until fails /dev/vda; do i=$((i + 1)); [ $i -lt 1500 ] || { echo "no vda error"; exit 1; }; sleep 0.2; done
echo "VDA-READ $(sed 's/.*: //' /tmp/err | head -n 1)"
i=0
until fails /dev/sda; do i=$((i + 1)); [ $i -lt 1500 ] || { echo "no sda error"; exit 1; }; sleep 0.2; done
echo "SDA-READ $(sed 's/.*: //' /tmp/err | head -n 1)"
dmesg | grep -E "sd .*(Sense Key|Add\. Sense|ASC=)" | sed 's/^/KERNEL /'
echo "SENSE-KEY $(dmesg | grep -o -E 'Sense Key : (Medium Error|0x3)' | head -n 1 | sed 's/Sense Key : //')"
echo "SENSE-ASC $(dmesg | grep -o -E 'Add\. Sense: Unrecovered read error|ASC=0x11 ASCQ=0x0' | head -n 1)"
echo ERRORS-SEEN
i=0
while fails /dev/vda || fails /dev/sda; do i=$((i + 1)); [ $i -lt 1500 ] || { echo "never recovered"; exit 1; }; sleep 0.2; done
echo RECOVERED
"#;

#[test]
fn injected_read_failures_reach_the_guest_on_vhost_blk_and_vhost_scsi() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch_dir("guest-bdev-error");
    let d = Ferryd::start_in(dir.clone(), &["-m", "0x3", "-S", dir.to_str().unwrap()]);
    for (m, e) in [("Malloc0", "EE_Malloc0"), ("Malloc1", "EE_Malloc1")] {
        d.ok("bdev_malloc_create", json!({"name": m, "num_blocks": 65536, "block_size": 512}));
        d.ok("bdev_error_create", json!({"base_name": m}));
        assert_eq!(d.ok("bdev_get_bdevs", json!({"name": e}))[0]["name"], e);
    }
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "vhost.blk", "dev_name": "EE_Malloc0"}));
    d.ok("vhost_create_scsi_controller", json!({"ctrlr": "vhost.scsi"}));
    d.ok(
        "vhost_scsi_controller_add_target",
        json!({"ctrlr": "vhost.scsi", "scsi_target_num": 0, "bdev_name": "EE_Malloc1"}),
    );
    let args: Vec<String> = [
        "-chardev".to_string(),
        format!("socket,id=cb,path={}", dir.join("vhost.blk").display()),
        "-device".to_string(),
        "vhost-user-blk-pci,chardev=cb,num-queues=1".to_string(),
        "-chardev".to_string(),
        format!("socket,id=cs,path={}", dir.join("vhost.scsi").display()),
        "-device".to_string(),
        "vhost-user-scsi-pci,chardev=cs,num_queues=1".to_string(),
    ]
    .to_vec();
    let log = dir.join("console.log");
    let guest = spawn_guest(SCRIPT, &dir, "--memfd", &args, &log);

    wait_for_console(&log, "READY", 300);
    // Many failures, so retries by the guest's block layer all fail too.
    for e in ["EE_Malloc0", "EE_Malloc1"] {
        d.ok("bdev_error_inject_error", json!({"name": e, "io_type": "read", "error_type": "failure", "num": 100000}));
    }
    wait_for_console(&log, "ERRORS-SEEN", 300);
    for e in ["EE_Malloc0", "EE_Malloc1"] {
        d.ok("bdev_error_inject_error", json!({"name": e, "io_type": "clear", "error_type": "failure"}));
    }
    let out = guest.wait_with_output().unwrap();
    let console = format!("{}{}", std::fs::read_to_string(&log).unwrap_or_default(), console_of(&out));
    assert!(out.status.success(), "guest script failed:\n{console}\nferryd:\n{}", d.log_text());
    assert_eq!(field(&console, "DISKS"), "65536 65536", "both disks seen:\n{console}");
    assert_eq!(field(&console, "VDA-READ"), "Input/output error", "virtio-blk read failed with EIO:\n{console}");
    // Linux turns MEDIUM ERROR into BLK_STS_MEDIUM, which reaches user space as ENODATA.
    assert_eq!(field(&console, "SDA-READ"), "No data available", "SCSI read failed as a medium error:\n{console}");
    let key = field(&console, "SENSE-KEY");
    assert!(key == "Medium Error" || key == "0x3", "sense key MEDIUM ERROR:\n{console}");
    assert!(!field(&console, "SENSE-ASC").is_empty(), "ASC/ASCQ 11/00 UNRECOVERED READ ERROR:\n{console}");
    assert!(console.contains("RECOVERED"), "reads work again once cleared:\n{console}");
}
