//! Guest test for hot-removal under the virtual bdevs (issue 12): one real Linux guest under
//! QEMU (TCG) with eleven disks, each on its own stack: split, delay, error, raid0, concat,
//! lvol, raid1 and a control disk on vhost-user-blk controllers, and passthru, crypto and a
//! second control disk as targets of one vhost-user-scsi controller. fio runs in the guest on
//! every disk at once (verified, except on the delay disk whose base is a null bdev); while
//! it runs the host deletes one base after the other (`bdev_uring_delete`,
//! `bdev_malloc_delete`, `bdev_null_delete`) with the guest's I/O on it provably in flight:
//! for bases that are files, writes held in the kernel (each file is alone on a file system
//! the test freezes, `HeldDisk`) until the stack has unwound; for the delay bdev, I/O its base
//! completed and it still holds. Then it checks, for each, that the stack unwound:
//!
//! - raid1 (a member's bdev deleted): the array stays online, degraded, with one member
//!   missing (`bdev_raid_get_bdevs`); the guest's verified fio sees no error, before or after;
//! - every other kind: the virtual bdev (and what stood on it) leaves `bdev_get_bdevs`, the
//!   guest's fio on that disk ends with an I/O error within a bounded wait (vhost-blk:
//!   VIRTIO_BLK_S_IOERR; vhost-scsi: the target's removal reaches the guest, which detaches
//!   the disk, and commands caught in between fail with NOT READY / LOGICAL UNIT NOT READY or
//!   BAD_TARGET, never as a medium error), a further read of the disk fails too, and no
//!   read ever returned wrong data (fio's verification);
//! - meanwhile ferryd serves the other disks (the control disks' and raid1's I/O goes on,
//!   verified), answers `vhost_get_controllers`, and afterwards every controller is deleted.
//!
//! Every wait is bounded and on an observable event (a console marker, RPC state). One guest
//! boot. Needs root, QEMU and the cached guest (`scripts/guest/setup.sh`, run by
//! scripts/test.sh).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "guest/mod.rs"]
mod guest;

use common::{scratch_dir, Ferryd};
use guest::{blocked_threads, spawn_guest, wait_for_marker, wait_until, Guest, HeldDisk, Running, ONE_GUEST};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;
/// AES-XTS key halves for the crypto disk.
const K1: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const K2: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// One disk of the guest: its stack's top bdev, how it is served, and what removing its base
/// must do.
struct Disk {
    /// Its name in the guest's reports.
    name: &'static str,
    /// The bdev served to the guest.
    top: &'static str,
    /// vhost-user-scsi target number; None: its own vhost-user-blk controller `vhost.<name>`.
    scsi: Option<u32>,
    /// The base the host deletes under it (RPC method, bdev); None for a control disk.
    remove: Option<(&'static str, &'static str)>,
    /// The bdevs that must leave `bdev_get_bdevs` with the base (beyond the base itself).
    gone: &'static [&'static str],
    /// Whether the guest verifies its data (not on a null base).
    verify: bool,
    /// Whether its I/O must survive the removal (raid1, the control disks).
    survives: bool,
    /// Whether its base is a file alone on a file system the test freezes: its writes are held
    /// in flight
    /// (blocked in the kernel) while the base is deleted.
    held: bool,
}

/// The disks, in the order their bases are deleted (raid1 first, so its degraded I/O runs
/// while the others go; the SCSI ones not last, so the guest has time to detach them).
const DISKS: &[Disk] = &[
    Disk {
        name: "raid1",
        top: "R1",
        scsi: None,
        remove: Some(("bdev_uring_delete", "R1b")),
        gone: &[],
        verify: true,
        survives: true,
        held: true,
    },
    Disk {
        name: "passthru",
        top: "P",
        scsi: Some(0),
        remove: Some(("bdev_uring_delete", "UP")),
        gone: &["P"],
        verify: true,
        survives: false,
        held: true,
    },
    Disk {
        name: "split",
        top: "MSp0",
        scsi: None,
        remove: Some(("bdev_uring_delete", "MS")),
        gone: &["MSp0", "MSp1"],
        verify: true,
        survives: false,
        held: true,
    },
    Disk {
        name: "delay",
        top: "D",
        scsi: None,
        remove: Some(("bdev_null_delete", "ND")),
        gone: &["D"],
        verify: false,
        survives: false,
        held: false,
    },
    Disk {
        name: "crypto",
        top: "C",
        scsi: Some(1),
        remove: Some(("bdev_uring_delete", "UC")),
        gone: &["C"],
        verify: true,
        survives: false,
        held: true,
    },
    Disk {
        name: "error",
        top: "EE_ME",
        scsi: None,
        remove: Some(("bdev_uring_delete", "ME")),
        gone: &["EE_ME"],
        verify: true,
        survives: false,
        held: true,
    },
    Disk {
        name: "raid0",
        top: "R0",
        scsi: None,
        remove: Some(("bdev_malloc_delete", "R0b")),
        gone: &["R0"],
        verify: true,
        survives: false,
        held: false,
    },
    Disk {
        name: "concat",
        top: "CC",
        scsi: None,
        remove: Some(("bdev_uring_delete", "CCa")),
        gone: &["CC"],
        verify: true,
        survives: false,
        held: true,
    },
    Disk {
        name: "lvol",
        top: "lvs/vol",
        scsi: None,
        remove: Some(("bdev_uring_delete", "ML")),
        gone: &["lvs/vol"],
        verify: true,
        survives: false,
        held: true,
    },
    Disk { name: "ctlblk", top: "K1", scsi: None, remove: None, gone: &[], verify: true, survives: true, held: false },
    Disk {
        name: "ctlscsi",
        top: "K2",
        scsi: Some(2),
        remove: None,
        gone: &[],
        verify: true,
        survives: true,
        held: false,
    },
];

/// The guest's script. `DISKS` lists `name:sectors:role:verify` (role `fail` or `keep`); the
/// guest finds each disk by its size. Every verified disk gets region A (0..2 MiB) written
/// sequentially with checksummed blocks; then one fio per disk runs at once from FIO-START:
/// on a `fail` disk verified random writes over 2..8 MiB until the first error (GONE, then
/// one more read, AFTER); on a `keep` disk repeated verified runs until every `fail` disk is
/// gone (KEPT), then region A verified (VERIFY). The kernel's view of the errors closes it.
const SCRIPT: &str = r#"
set -u
up() { cut -d. -f1 /proc/uptime; }
f() { echo "$1" | cut -d: -f"$2"; }
dev_of() {
    for b in /sys/block/vd* /sys/block/sd*; do
        [ -e "$b/size" ] && [ "$(cat "$b/size")" = "$1" ] && { echo "/dev/${b##*/}"; return 0; }
    done
    return 1
}
FIO="--bs=4k --iodepth=8 --ioengine=libaio --direct=1"
errors() { grep -E '^fio: pid=|^verify:|bad (magic|header)|error=' "$1" | head -n 5 | sed "s/^/FIO $2 /"; }

# Synchronous I/O (four jobs, each on its own 1.5 MiB) on the disks that go: once Linux
# detaches a removed SCSI disk its size is 0, and an asynchronous read there completes with 0
# bytes, which fio (libaio) would verify as if it had read a stale buffer; psync calls it an
# error ("full resid"), as it is. It runs until its disk fails, however long the host takes to
# get there (under a slow TCG a fixed 330 s ran out before the later bases went, and the host
# then saw no I/O on them); every wait on the host side is bounded.
fail_job() { # name dev verify
    if [ "$3" = 1 ]; then mode="--rw=randwrite --verify=crc32c --verify_backlog=16"; else mode="--rw=randrw"; fi
    fio --name="$1" --filename="$2" --offset=2M --size=1536k --numjobs=4 --offset_increment=1536k --bs=4k \
        --ioengine=psync --direct=1 $mode --time_based --runtime=86400 >/tmp/out.$1 2>&1
    rc=$?
    errors /tmp/out.$1 "$1"
    echo "GONE $1 rc=$rc err=$(grep -o 'error=[^,]*' /tmp/out.$1 | head -n 1 | cut -d= -f2)"
    if dd if="$2" of=/dev/null bs=4096 count=1 iflag=direct 2>/tmp/dd.$1; then
        echo "AFTER $1 ok"
    else
        echo "AFTER $1 failed: $(sed 's/.*: //' /tmp/dd.$1 | head -n 1)"
    fi
}

keep_job() { # name dev
    runs=0 bad=0
    while [ ! -e /tmp/stop ]; do
        fio --name="$1" --filename="$2" --offset=2M --size=2M $FIO --rw=randwrite --verify=crc32c \
            --verify_backlog=16 >/tmp/out.$1 2>&1 || bad=$((bad + 1))
        grep -q -E '^fio: pid=|^verify:|bad (magic|header)' /tmp/out.$1 && { bad=$((bad + 1)); errors /tmp/out.$1 "$1"; }
        runs=$((runs + 1))
    done
    echo "KEPT $1 runs=$runs bad=$bad"
}

DISKS="@DISKS@"
# The SCSI disks appear once the HBA's scan is done: wait for every disk (bounded).
end=$(( $(up) + 120 ))
for s in $DISKS; do
    until dev_of "$(f $s 2)" >/dev/null; do
        [ "$(up)" -lt "$end" ] || { echo "MISSING $(f $s 1)"; ls /sys/block; exit 1; }
        sleep 1
    done
    echo "DEV $(f $s 1) $(dev_of "$(f $s 2)")"
done
for s in $DISKS; do
    [ "$(f $s 4)" = 1 ] || continue
    fio --name="A$(f $s 1)" --filename="$(dev_of "$(f $s 2)")" --size=2M --rw=write $FIO --verify=crc32c \
        --do_verify=0 >/tmp/a 2>&1 || { echo "PREP-FAILED $(f $s 1)"; cat /tmp/a; exit 1; }
done
: >/tmp/fail.pids
: >/tmp/keep.pids
for s in $DISKS; do
    n=$(f $s 1)
    dev=$(dev_of "$(f $s 2)")
    echo "$n $dev $(f $s 3)" >>/tmp/devs
    case "$(f $s 3)" in
        fail) fail_job "$n" "$dev" "$(f $s 4)" & echo $! >>/tmp/fail.pids ;;
        keep) keep_job "$n" "$dev" & echo $! >>/tmp/keep.pids ;;
    esac
done
echo FIO-START
for p in $(cat /tmp/fail.pids); do wait "$p"; done
echo ALL-GONE
touch /tmp/stop
for p in $(cat /tmp/keep.pids); do wait "$p"; done
# Region A of every surviving disk still holds what was written before the removals.
while read -r n dev role; do
    [ "$role" = keep ] || continue
    fio --name="A$n" --filename="$dev" --size=2M --rw=write $FIO --verify=crc32c --verify_only >/tmp/v.$n 2>&1
    rc=$?
    errors /tmp/v.$n "$n"
    echo "VERIFY $n rc=$rc"
done </tmp/devs
# A removed SCSI target's disk leaves the guest (the hot-remove event): wait for it (bounded).
end=$(( $(up) + 60 ))
while read -r n dev role; do
    case "$dev" in /dev/sd*) ;; *) continue ;; esac
    [ "$role" = fail ] || continue
    while [ -e "/sys/block/${dev#/dev/}" ] && [ "$(up)" -lt "$end" ]; do sleep 1; done
    if [ -e "/sys/block/${dev#/dev/}" ]; then echo "DETACHED $n no"; else echo "DETACHED $n yes"; fi
done </tmp/devs
while read -r n dev role; do
    echo "KERNEL-IO-ERRORS $n $(dmesg | grep -c "I/O error, dev ${dev#/dev/}, ")"
    dmesg | grep -E "\[${dev#/dev/}\]" | grep -E 'Sense Key|Add\. Sense|hostbyte|Result' | head -n 4 | sed "s/^/KERNEL $n /"
done </tmp/devs
echo DONE
"#;

fn malloc(d: &Ferryd, name: &str, mib: u64) {
    d.ok("bdev_malloc_create", json!({"name": name, "num_blocks": mib * MIB / 512, "block_size": 512}));
}

/// A uring bdev `name` on a new file of `mib` MiB in `dir`.
fn uring(d: &Ferryd, dir: &Path, name: &str, mib: u64) {
    let path = dir.join(format!("{name}.img"));
    std::fs::File::create(&path).unwrap().set_len(mib * MIB).unwrap();
    d.ok("bdev_uring_create", json!({"name": name, "filename": path, "block_size": 512}));
}

/// Builds every disk's stack (sizes all different: the guest tells its disks apart by size);
/// the file of uring bdev `name` goes in directory `at(name)`.
fn build_stacks(d: &Ferryd, at: &dyn Fn(&str) -> PathBuf) {
    // raid1 over two files, with a superblock; the one deleted is on a held file system.
    uring(d, &at("R1a"), "R1a", 21);
    uring(d, &at("R1b"), "R1b", 21);
    let r1 = json!({"name": "R1", "raid_level": "raid1", "base_bdevs": ["R1a", "R1b"], "superblock": true});
    d.ok("bdev_raid_create", r1);
    // passthru on a file.
    uring(d, &at("UP"), "UP", 13);
    d.ok("bdev_passthru_create", json!({"name": "P", "base_bdev_name": "UP"}));
    // split of a file in two: MSp0 served, MSp1 goes with it.
    uring(d, &at("MS"), "MS", 24);
    d.ok("bdev_split_create", json!({"base_bdev": "MS", "split_count": 2}));
    // delay on a null bdev, with latencies under a millisecond (held by a poller that runs
    // every reactor iteration: the reactor must not sleep meanwhile).
    d.ok("bdev_null_create", json!({"name": "ND", "num_blocks": 14 * MIB / 512, "block_size": 512}));
    let lat = json!({"name": "D", "base_bdev_name": "ND", "avg_read_latency": 100, "p99_read_latency": 900,
                     "avg_write_latency": 100, "p99_write_latency": 900});
    d.ok("bdev_delay_create", lat);
    // crypto on a file.
    uring(d, &at("UC"), "UC", 18);
    d.ok("accel_crypto_key_create", json!({"name": "k", "cipher": "AES_XTS", "key": K1, "key2": K2}));
    d.ok("bdev_crypto_create", json!({"base_bdev_name": "UC", "name": "C", "key_name": "k"}));
    // error on a file.
    uring(d, &at("ME"), "ME", 15);
    d.ok("bdev_error_create", json!({"base_name": "ME"}));
    // raid0 over two malloc bdevs.
    malloc(d, "R0a", 8);
    malloc(d, "R0b", 8);
    let r0 = json!({"name": "R0", "raid_level": "raid0", "strip_size_kb": 64, "base_bdevs": ["R0a", "R0b"]});
    d.ok("bdev_raid_create", r0);
    // concat of a file and a malloc bdev; the file goes.
    uring(d, &at("CCa"), "CCa", 8);
    malloc(d, "CCb", 9);
    let cc = json!({"name": "CC", "raid_level": "concat", "strip_size_kb": 64, "base_bdevs": ["CCa", "CCb"]});
    d.ok("bdev_raid_create", cc);
    // A thin lvol on an lvstore on a file.
    uring(d, &at("ML"), "ML", 24);
    d.ok("bdev_lvol_create_lvstore", json!({"bdev_name": "ML", "lvs_name": "lvs", "cluster_sz": MIB}));
    let vol = json!({"lvs_name": "lvs", "lvol_name": "vol", "size_in_mib": 19, "thin_provision": true});
    d.ok("bdev_lvol_create", vol);
    // The control disks, never touched.
    malloc(d, "K1", 10);
    malloc(d, "K2", 11);
}

fn exists(d: &Ferryd, name: &str) -> bool {
    d.rpc("bdev_get_bdevs", json!({ "name": name })).is_ok()
}

/// Reads and writes the bdev completed so far (0 once it is gone).
fn ios(d: &Ferryd, name: &str) -> u64 {
    d.rpc("bdev_get_iostat", json!({ "name": name }))
        .ok()
        .map(|s| {
            let b = &s["bdevs"][0];
            b["num_read_ops"].as_u64().unwrap_or(0) + b["num_write_ops"].as_u64().unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Waits until `name` completed at least `n` more I/Os (its guest I/O runs).
fn more_ios(d: &Ferryd, name: &str, n: u64, what: &str) {
    let from = ios(d, name);
    wait_until(120, what, || (ios(d, name) >= from + n).then_some(()));
}

fn raid(d: &Ferryd, name: &str) -> Value {
    let all = d.ok("bdev_raid_get_bdevs", json!({"category": "all"}));
    all.as_array().unwrap().iter().find(|r| r["name"] == name).cloned().unwrap_or(Value::Null)
}

/// The rest of the console line starting with `prefix` (None if there is none).
fn line<'a>(console: &'a str, prefix: &str) -> Option<&'a str> {
    console.lines().find_map(|l| l.strip_prefix(prefix)).map(str::trim_end)
}

/// The `vhost_get_controllers` answer, which must list every controller made.
fn controllers(d: &Ferryd) -> Value {
    let all = d.ok("vhost_get_controllers", Value::Null);
    let names: HashSet<&str> = all.as_array().unwrap().iter().filter_map(|c| c["ctrlr"].as_str()).collect();
    for disk in DISKS.iter().filter(|x| x.scsi.is_none()) {
        assert!(names.contains(format!("vhost.{}", disk.name).as_str()), "{all}");
    }
    assert!(names.contains("vhost.scsi"), "{all}");
    all
}

/// The SCSI targets the controller lists.
fn scsi_targets(d: &Ferryd) -> Vec<u64> {
    let c = d.ok("vhost_get_controllers", json!({"name": "vhost.scsi"}));
    let targets = c[0]["backend_specific"]["scsi"].as_array().cloned().unwrap_or_default();
    targets.iter().filter_map(|t| t["scsi_dev_num"].as_u64()).collect()
}

#[test]
fn hot_removing_the_base_of_each_virtual_bdev_under_guest_io_unwinds_the_stack() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch_dir("guest-vbdev-hotremove");
    let d = Ferryd::start_in(dir.clone(), &["-m", "0x3", "-S", dir.to_str().unwrap()]);
    // A file system of its own for each held base (so a write blocked there is one of that
    // stack's); dropped (thawed) before ferryd, whose held writes must finish for it to exit.
    let mut held: HashMap<&str, HeldDisk> = DISKS
        .iter()
        .filter(|x| x.held)
        .filter_map(|x| x.remove)
        .map(|(_, base)| {
            let sub = dir.join(format!("held-{base}"));
            std::fs::create_dir_all(&sub).unwrap();
            (base, HeldDisk::new(&sub, 48))
        })
        .collect();
    build_stacks(&d, &|name| held.get(name).map_or_else(|| dir.to_path_buf(), |h| h.path("")));

    // The frontends, and the guest's list of disks with their sizes.
    let mut args: Vec<String> = Vec::new();
    let mut spec = Vec::new();
    let mut sizes = HashSet::new();
    d.ok("vhost_create_scsi_controller", json!({"ctrlr": "vhost.scsi"}));
    for (i, disk) in DISKS.iter().enumerate() {
        let sectors = d.ok("bdev_get_bdevs", json!({"name": disk.top}))[0]["num_blocks"].as_u64().unwrap();
        assert!(sizes.insert(sectors), "{} has the size of another disk", disk.name);
        let role = if disk.survives { "keep" } else { "fail" };
        spec.push(format!("{}:{sectors}:{role}:{}", disk.name, u8::from(disk.verify)));
        match disk.scsi {
            Some(t) => {
                let p = json!({"ctrlr": "vhost.scsi", "scsi_target_num": t, "bdev_name": disk.top});
                assert_eq!(d.ok("vhost_scsi_controller_add_target", p), json!(t));
            }
            None => {
                let ctrlr = format!("vhost.{}", disk.name);
                d.ok("vhost_create_blk_controller", json!({"ctrlr": ctrlr, "dev_name": disk.top}));
                args.extend([
                    "-chardev".into(),
                    format!("socket,id=c{i},path={}", dir.join(&ctrlr).display()),
                    "-device".into(),
                    format!("vhost-user-blk-pci,chardev=c{i},num-queues=1"),
                ]);
            }
        }
    }
    args.extend([
        "-chardev".into(),
        format!("socket,id=cs,path={}", dir.join("vhost.scsi").display()),
        "-device".into(),
        "vhost-user-scsi-pci,chardev=cs,num_queues=1".into(),
    ]);
    let script = SCRIPT.replace("@DISKS@", &spec.join(" "));
    let log = dir.join("console.log");
    let mut guest = Running(Some(spawn_guest(&script, &dir, "--memfd", &args, &log)));
    let ctx = || format!("ferryd:\n{}", d.log_text());

    wait_for_marker(&log, "FIO-START", 300, ctx);
    for disk in DISKS {
        more_ios(&d, disk.top, 32, &format!("the guest's fio never ran on {}", disk.name));
    }
    let keepers: Vec<&Disk> = DISKS.iter().filter(|x| x.survives).collect();
    for disk in DISKS {
        let Some((method, base)) = disk.remove else { continue };
        // Its I/O is running right now ...
        more_ios(&d, disk.top, 16, &format!("no I/O on {} before its base went", disk.name));
        if let Some(h) = held.get_mut(base) {
            // ... and some of it is provably in flight: writes blocked in the kernel below
            // the base ...
            h.hold();
            let n = wait_until(60, &format!("no write to {} was ever held", disk.name), || {
                Some(blocked_threads(d.pid())).filter(|&n| n > 0)
            });
            eprintln!("{}: {n} writes held in flight when {base} goes", disk.name);
        }
        if disk.top == "D" {
            // ... and some of it is provably held in the delay bdev: completed by the base
            // (counted there first) and not yet by the delay bdev, with two seconds to go.
            for t in ["avg_read", "p99_read", "avg_write", "p99_write"] {
                let p = json!({"delay_bdev_name": "D", "latency_type": t, "latency_us": 2_000_000});
                d.ok("bdev_delay_update_latency", p);
            }
            let n = wait_until(60, "no I/O was ever held in the delay bdev", || {
                let below = ios(&d, "ND");
                Some(below.saturating_sub(ios(&d, "D"))).filter(|&n| n > 0)
            });
            eprintln!("{}: {n} I/Os held in the delay bdev when {base} goes", disk.name);
        }
        // ... when the base goes.
        assert_eq!(d.ok(method, json!({ "name": base })), true);
        assert!(!exists(&d, base), "{base} was deleted");
        if disk.survives {
            // raid1: degraded, still online, one member missing.
            let r = wait_until(30, "raid1 never noticed its member's removal", || {
                let r = raid(&d, disk.top);
                (r["num_base_bdevs_discovered"] == 1).then_some(r)
            });
            assert_eq!(r["state"], "online", "{r}");
            assert_eq!(r["num_base_bdevs"], 2, "{r}");
            let members = r["base_bdevs_list"].as_array().unwrap();
            assert_eq!(members.iter().filter(|m| m["is_configured"] == true).count(), 1, "{r}");
            assert!(members.iter().all(|m| m["name"] != base), "{base} still listed as a member: {r}");
            assert!(exists(&d, disk.top), "raid1 stays registered");
            // The writes held on the gone member finish now: the guest sees no error.
            held.get_mut(base).expect("held").release();
            more_ios(&d, disk.top, 64, "the guest's I/O stopped on the degraded raid1");
        } else {
            // The removal propagated up: everything on the base left bdev_get_bdevs.
            for name in disk.gone {
                wait_until(30, &format!("{name} lingers after its base {base} went"), || {
                    (!exists(&d, name)).then_some(())
                });
            }
            // An array that lost a member it cannot do without is offline.
            let r = raid(&d, disk.top);
            assert!(r.is_null() || r["state"] == "offline", "{r}");
            if let Some(t) = disk.scsi {
                wait_until(30, &format!("target {t} outlived its bdev"), || {
                    (!scsi_targets(&d).contains(&(t as u64))).then_some(())
                });
            }
            // Writes held in flight finish now, after their bdevs went.
            if let Some(h) = held.get_mut(base) {
                h.release();
            }
            // The guest's I/O on it ended with an error: not a hang.
            wait_for_marker(&log, &format!("GONE {} ", disk.name), 120, ctx);
        }
        // ferryd still answers and still serves the other disks.
        controllers(&d);
        for k in &keepers {
            more_ios(&d, k.top, 16, &format!("{} stopped after {}'s base went", k.name, disk.name));
        }
    }
    assert!(!exists(&d, "lvs/vol") && !exists(&d, "lvs"), "the lvstore closed with its base");
    assert!(d.ok("bdev_lvol_get_lvstores", Value::Null).as_array().unwrap().is_empty(), "the lvstore closed");
    // The removed SCSI targets left the controller; the control target stayed.
    assert_eq!(scsi_targets(&d), vec![2], "{}", controllers(&d));

    wait_for_marker(&log, "DONE", 240, ctx);
    let (succeeded, _) = guest.0.take().expect("running").finish();
    let console = std::fs::read_to_string(&log).unwrap_or_default().replace("\r\n", "\n");
    assert!(succeeded, "guest script failed:\n{console}\n{}", ctx());

    // What the guest saw, disk by disk (printed for the record).
    let prefixes = ["GONE ", "AFTER ", "KEPT ", "VERIFY ", "DETACHED ", "KERNEL"];
    let summary: Vec<&str> = console.lines().filter(|l| prefixes.iter().any(|p| l.starts_with(p))).collect();
    eprintln!("{}", summary.join("\n"));
    for disk in DISKS {
        let n = disk.name;
        if disk.survives {
            let errs = line(&console, &format!("KERNEL-IO-ERRORS {n} ")).unwrap_or_else(|| panic!("{console}"));
            assert_eq!(line(&console, &format!("VERIFY {n} ")), Some("rc=0"), "{n}: region A verified:\n{console}");
            let kept = line(&console, &format!("KEPT {n} ")).unwrap_or_else(|| panic!("{n} never stopped:\n{console}"));
            assert!(kept.ends_with(" bad=0") && !kept.starts_with("runs=0 "), "{n}: {kept}\n{console}");
            assert_eq!(errs, "0", "{n}: the guest kernel logged I/O errors:\n{console}");
            assert!(line(&console, &format!("FIO {n} ")).is_none(), "{n}: fio reported an error:\n{console}");
            continue;
        }
        let gone = line(&console, &format!("GONE {n} ")).unwrap();
        assert!(!gone.starts_with("rc=0 "), "{n}: fio ended without an error: {gone}\n{console}");
        // An I/O error, never wrong data (fio's verify: EILSEQ, "bad header", "bad magic"). On
        // SCSI, BAD_TARGET is EIO; once the guest drops the removed disk its commands are
        // refused as to an offline device (ENODEV), and with its size 0 reads find nothing
        // (fio: "full resid", EIO) and writes no room (ENOSPC).
        let err = gone.split("err=").nth(1).unwrap_or("");
        let expected: &[&str] = match disk.scsi {
            None => &["Input/output error"],
            Some(_) => &["Input/output error", "No such device", "No space left on device"],
        };
        assert!(expected.contains(&err), "{n}: fio ended with {err:?}, not a device error:\n{console}");
        let fio_lines: Vec<&str> = console.lines().filter(|l| l.starts_with(&format!("FIO {n} "))).collect();
        assert!(!fio_lines.iter().any(|l| l.contains("verify:") || l.contains("bad ")), "{n}: {fio_lines:?}");
        let after = line(&console, &format!("AFTER {n} ")).unwrap();
        assert!(after.starts_with("failed"), "{n}: a read after the removal succeeded: {after}\n{console}");
        let kernel: Vec<&str> = console.lines().filter(|l| l.starts_with(&format!("KERNEL {n} "))).collect();
        if disk.scsi.is_some() {
            // The target's removal reached the guest, which detached the disk; commands caught
            // in between failed as NOT READY or BAD_TARGET, not as a medium error.
            assert_eq!(line(&console, &format!("DETACHED {n} ")), Some("yes"), "{n}:\n{console}");
            assert!(!kernel.iter().any(|l| l.contains("Medium Error")), "{n}: {kernel:?}");
            assert!(
                kernel.iter().all(|l| !l.contains("Sense Key") || l.contains("Not Ready")),
                "{n}: a sense other than NOT READY: {kernel:?}"
            );
        }
        // (No check of the kernel's "I/O error, dev vdX" lines here: they are rate-limited
        // across devices; fio's error is the proof.)
    }

    // What was left below the stacks is free again: the members an offline array kept go with
    // bdev_raid_delete, and the crypto bdev's key has no user.
    for (array, left) in [("R0", "R0a"), ("CC", "CCb")] {
        assert_eq!(raid(&d, array)["state"], "offline", "{}", raid(&d, array));
        assert_eq!(d.ok("bdev_get_bdevs", json!({ "name": left }))[0]["claimed"], true);
        assert_eq!(d.ok("bdev_raid_delete", json!({ "name": array })), true);
        assert_eq!(d.ok("bdev_get_bdevs", json!({ "name": left }))[0]["claimed"], false, "{array} released {left}");
    }
    assert_eq!(d.ok("accel_crypto_key_destroy", json!({"key_name": "k"})), true);

    // The controllers are deleted once the guest is gone: the blk ones of removed bdevs too,
    // the SCSI one once its control target is removed.
    controllers(&d);
    for disk in DISKS.iter().filter(|x| x.scsi.is_none()) {
        assert_eq!(d.ok("vhost_delete_controller", json!({"ctrlr": format!("vhost.{}", disk.name)})), true);
    }
    let e = d.err("vhost_scsi_controller_remove_target", json!({"ctrlr": "vhost.scsi", "scsi_target_num": 0}));
    assert_eq!(e.code, -libc::ENODEV as i64, "target 0 went with its bdev: {e:?}");
    d.ok("vhost_scsi_controller_remove_target", json!({"ctrlr": "vhost.scsi", "scsi_target_num": 2}));
    assert_eq!(d.ok("vhost_delete_controller", json!({"ctrlr": "vhost.scsi"})), true);
    assert_eq!(d.ok("vhost_get_controllers", Value::Null), json!([]));
    assert!(d.stop().success(), "ferryd stopped cleanly");
}
