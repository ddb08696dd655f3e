//! Live migration of vhost-user-blk and vhost-user-scsi guests: a real Linux guest under QEMU
//! (TCG) reads and verifies data on a Ferry disk while QEMU migrates it to a second QEMU on
//! the same host, each QEMU on its own controller of one ferryd, both on the same bdev (as
//! SPDK users do: controllers do not claim their bdevs). The migration happens with the
//! guest's reads held in flight, so the source's vhost device is stopped mid-I/O and the reads
//! land in guest memory after the source's vCPUs stopped: only Ferry's dirty log brings their
//! data to the destination (`guest::migrate_mid_io`). Needs root, QEMU and the cached guest
//! (`scripts/guest/setup.sh`, run by scripts/test.sh).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "guest/mod.rs"]
mod guest;

use common::{attach_held_queues, held_backend_of, scratch_dir, Ferryd};
use guest::{field, fio_failed, migrate_mid_io, migration_script, vhost_user_device, Migrated, ONE_GUEST};
use serde_json::json;

/// ferryd under test (two reactors) with virtio bdev `V` on a held backend of 64 MiB (two
/// virtqueues, one per reactor), and the backend.
fn ferryd_on_held_bdev() -> (Ferryd, Ferryd) {
    let (back, back_dir) = held_backend_of("guest-mig-back", 131072);
    let dir = scratch_dir("guest-mig");
    let d = Ferryd::start_in(dir.clone(), &["-m", "0x3", "-S", dir.to_str().unwrap()]);
    attach_held_queues(&d, &back_dir, "V", 2);
    (d, back)
}

/// Migrates the guest running `script` from controller `mig.src` to `mig.dst` of `d` (QEMU
/// device `device_args` on each).
fn migrate(d: &Ferryd, back: &Ferryd, device_args: &str, script: &str) -> Migrated {
    let device = |c: &str| vhost_user_device(&d.dir.join(c), device_args, false);
    migrate_mid_io(d, back, script, "mig.src", &device("mig.src"), "mig.dst", &device("mig.dst"))
}

/// What every test checks once the guest finished on the destination.
fn check(m: &Migrated, d: &Ferryd) {
    let (src, dst) = (&m.src_console, &m.dst_console);
    let all = format!("source:\n{src}\ndestination:\n{dst}\nferryd:\n{}", d.log_text());
    assert!(
        m.dst_progressed,
        "the guest stalled on the destination: the completions of the requests drained at the \
         switch never reached it (the used ring or its interrupt lost):\n{all}"
    );
    assert!(m.dst_passed, "the guest's script failed on the destination:\n{all}");
    assert!(m.drained > 0, "the source's queue drained nothing:\n{all}");
    // The destination resumed from the vring bases QEMU migrated, with a fresh inflight area:
    // the source finished everything before answering GET_VRING_BASE, so none to resubmit.
    let s = &m.dst_session;
    assert_eq!((&s["inflight_tracking"], &s["resubmitted"]), (&json!(true), &json!(0)), "{s}\n{all}");
    // Read phase 1 began on the source and ended on the destination.
    assert!(src.contains("READ-PHASE 1") && !src.contains("READ-END 1"), "{all}");
    assert!(dst.contains("READ-END 1") && dst.contains("READ-END 2"), "{all}");
    assert!(
        !fio_failed(dst),
        "fio's verification failed on the destination (data the source's vhost device wrote at \
         the switch never reached it: dirty log?):\n{all}"
    );
    assert_eq!(dst.matches("err= 0").count(), 3, "two read phases and a write phase without error:\n{all}");
    assert!(!dst.contains("I/O error") && !src.contains("I/O error"), "the guest kernel logged an I/O error:\n{all}");
    assert_eq!(field(src, "PATTERN"), field(dst, "PATTERN-AFTER"), "the pattern written on the source:\n{all}");
    eprintln!(
        "migrated with {} requests drained at the switch: total {} ms, downtime {} ms",
        m.drained, m.stats["total-time"], m.stats["downtime"]
    );
}

#[test]
fn a_vhost_user_blk_guest_migrates_mid_io_between_two_controllers_on_one_bdev() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let (d, back) = ferryd_on_held_bdev();
    for c in ["mig.src", "mig.dst"] {
        d.ok("vhost_create_blk_controller", json!({"ctrlr": c, "dev_name": "V"}));
    }
    let m = migrate(&d, &back, "vhost-user-blk-pci,num-queues=2", &migration_script("vda", ""));
    check(&m, &d);
}

#[test]
fn a_vhost_user_scsi_guest_migrates_mid_io_between_two_controllers_on_one_bdev() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let (d, back) = ferryd_on_held_bdev();
    for c in ["mig.src", "mig.dst"] {
        d.ok("vhost_create_scsi_controller", json!({"ctrlr": c}));
        d.ok("vhost_scsi_controller_add_target", json!({"ctrlr": c, "scsi_target_num": 0, "bdev_name": "V"}));
    }
    // The reads are held for as long as the migration takes: no SCSI command timeout (30 s
    // by default, then aborts and resets) may fire meanwhile on a loaded machine.
    let setup = "echo 600 > /sys/block/sda/device/timeout";
    let m = migrate(&d, &back, "vhost-user-scsi-pci,num_queues=2", &migration_script("sda", setup));
    check(&m, &d);
}

#[test]
fn a_vhost_user_blk_guest_on_a_packed_ring_migrates_mid_io() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let (d, back) = ferryd_on_held_bdev();
    for c in ["mig.src", "mig.dst"] {
        d.ok("vhost_create_blk_controller", json!({"ctrlr": c, "dev_name": "V", "packed_ring": true}));
    }
    let script =
        format!("echo \"packed $(cut -c35 /sys/bus/virtio/devices/*/features)\"\n{}", migration_script("vda", ""));
    let m = migrate(&d, &back, "vhost-user-blk-pci,num-queues=2,packed=on", &script);
    assert!(m.src_console.contains("packed 1"), "VIRTIO_F_RING_PACKED negotiated:\n{}", m.src_console);
    check(&m, &d);
}
