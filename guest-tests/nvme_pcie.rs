//! Guest tests of Ferry's userspace NVMe driver over VFIO: a Debian 12 guest on a q35 machine
//! with an emulated Intel IOMMU (interrupt remapping on) and QEMU's emulated NVMe controller
//! (`run.sh --vfio-nvme`), with the build's ferryd, ferryctl and ferry-bdevperf added to its
//! initramfs at boot.
//!
//! `guest_hands_nvme_to_vfio_and_runs_ferryd`: `scripts/vfio-bind.sh` loads the VFIO modules
//! and moves the NVMe function from the kernel's `nvme` driver to `vfio-pci` (twice: the
//! second run changes nothing), `/dev/vfio/<group>` appears, ferryd starts in the guest and
//! answers RPCs, and `vfio-bind.sh reset` gives the function back to `nvme` (its disk comes
//! back). Needs root, QEMU and the cached guest (`scripts/guest/setup.sh`).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "guest/mod.rs"]
mod guest;

use common::scratch_dir;
use guest::{console_of, console_within, spawn_guest_vfio_nvme, stop_guest, Running, ONE_GUEST, VFIO_NVME_BDF};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The emulated controller's disk (a sparse raw file).
const DISK_BYTES: u64 = 256 << 20;

/// What every guest script starts with: fail on the first error, show the kernel's log and
/// ferryd's when the script fails, and deadlines on the guest's clock (`/proc/uptime`: under
/// TCG a fork costs tens of milliseconds, so loop counts say nothing about time).
const PRELUDE: &str = r#"
set -e
trap 'rc=$?; [ $rc = 0 ] || { echo "--- dmesg"; dmesg | tail -n 40; echo "--- ferryd"; tail -n 60 /tmp/ferryd.log 2>/dev/null; }' EXIT
uptime_s() { local up rest; read -r up rest </proc/uptime; echo "${up%.*}"; }
wait_until() {
    local end=$(($(uptime_s) + $1)) what=$2
    shift 2
    while ! "$@" >/dev/null 2>&1; do
        [ "$(uptime_s)" -lt $end ] || { echo "TIMEOUT waiting for $what"; exit 1; }
        sleep 0.2
    done
}
"#;

/// The build's programs the guest runs.
fn ferry_bins() -> [&'static str; 3] {
    [env!("CARGO_BIN_EXE_ferryd"), env!("CARGO_BIN_EXE_ferryctl"), env!("CARGO_BIN_EXE_ferry-bdevperf")]
}

fn disk(dir: &Path) -> PathBuf {
    let img = dir.join("nvme.img");
    std::fs::File::create(&img).unwrap().set_len(DISK_BYTES).unwrap();
    img
}

/// Boots the VFIO guest with `script` (after [`PRELUDE`]) and waits (bounded) for it to end:
/// whether it passed, and its console.
fn run_vfio_guest(dir: &Path, script: &str, secs: u64) -> (bool, String) {
    let log = dir.join("console.log");
    let img = disk(dir);
    let mut guest =
        Running(Some(spawn_guest_vfio_nvme(&format!("{PRELUDE}\n{script}"), dir, &img, &ferry_bins(), &log)));
    let finished = console_within(&log, "FERRY-GUEST-EXIT=", secs);
    let child = guest.0.take().unwrap();
    if !finished {
        stop_guest(&child);
    }
    let out = child.wait_with_output().unwrap();
    (finished && out.status.success(), console_of(&out))
}

const BIND_SCRIPT: &str = r#"
BDF=0000:00:04.0
echo "BEFORE $(vfio-bind.sh status $BDF)"
test -b /dev/nvme0n1 && echo "KERNEL-DISK"
for i in 1 2; do echo "BIND$i $(vfio-bind.sh)"; done
group=$(basename "$(readlink /sys/bus/pci/devices/$BDF/iommu_group)")
test -c /dev/vfio/$group && echo "GROUP-NODE /dev/vfio/$group"
test ! -e /dev/nvme0n1 && echo "KERNEL-DISK-GONE"
for m in vfio vfio_iommu_type1 vfio_pci_core vfio_pci; do test -d /sys/module/$m && echo "MODULE $m"; done
ferryd -m 0x1 --log-level INFO >/tmp/ferryd.log 2>&1 &
echo "VERSION $(ferryctl -r 300 spdk_get_version | tr -d '\n ')"
echo "METHODS $(ferryctl rpc_get_methods | tr -d '\n "')"
ferryctl spdk_kill_instance SIGTERM >/dev/null
wait
echo "RESET $(vfio-bind.sh reset)"
wait_until 60 "the kernel's disk to come back" test -b /dev/nvme0n1
echo "KERNEL-DISK-BACK"
echo "AFTER $(vfio-bind.sh status $BDF)"
"#;

#[test]
fn guest_hands_nvme_to_vfio_and_runs_ferryd() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch_dir("guest-vfio-bind");
    let (passed, console) = run_vfio_guest(&dir, BIND_SCRIPT, 300);
    assert!(passed, "guest script failed:\n{console}");
    let bdf = VFIO_NVME_BDF;
    let line = |prefix: &str| guest::field(&console, prefix).to_string();
    assert!(line("BEFORE").starts_with(&format!("{bdf} nvme ")), "the kernel's nvme driver had it first:\n{console}");
    assert!(console.contains("KERNEL-DISK\n"), "{console}");
    let group = line("BEFORE").rsplit(' ').next().unwrap().to_string();
    let bound = format!("{bdf} vfio-pci {group} /dev/vfio/{group}");
    assert_eq!(line("BIND1"), bound, "{console}");
    assert_eq!(line("BIND2"), bound, "binding again changes nothing:\n{console}");
    assert_eq!(line("GROUP-NODE"), format!("/dev/vfio/{group}"));
    assert!(console.contains("KERNEL-DISK-GONE"), "{console}");
    for m in ["vfio", "vfio_iommu_type1", "vfio_pci_core", "vfio_pci"] {
        assert!(console.contains(&format!("MODULE {m}\n")), "{m} loaded:\n{console}");
    }
    assert!(line("VERSION").contains(r#""version":"Ferryv"#), "spdk_get_version:\n{console}");
    assert!(line("METHODS").contains("bdev_nvme_attach_controller"), "{console}");
    assert_eq!(line("RESET"), format!("{bdf} nvme"), "{console}");
    assert!(console.contains("KERNEL-DISK-BACK"), "{console}");
    assert_eq!(line("AFTER"), format!("{bdf} nvme {group}"), "{console}");
}

/// `vfio-bind.sh` refuses what it cannot do, on the host too (nothing is bound here).
#[test]
fn vfio_bind_refuses_bad_addresses() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/vfio-bind.sh");
    for (args, want) in [
        (&["0000:ff:1f.7"][..], "no PCI function 0000:ff:1f.7"),
        (&["status", "not-a-bdf"][..], "not a PCI address"),
        (&["reset", "12:34"][..], "not a PCI address"),
    ] {
        let out = Command::new("sh").arg(&script).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}
