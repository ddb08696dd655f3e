//! Guest tests of Ferry's userspace NVMe driver over VFIO: a Debian 12 guest on a q35 machine
//! with an emulated Intel IOMMU (interrupt remapping on) and QEMU's emulated NVMe controller
//! (`run.sh --vfio-nvme`), with the build's ferryd, ferryctl and ferry-bdevperf added to its
//! initramfs at boot.
//!
//! `guest_hands_nvme_to_vfio_and_runs_ferryd`: `scripts/vfio-bind.sh` loads the VFIO modules
//! and moves the NVMe function from the kernel's `nvme` driver to `vfio-pci` (twice: the
//! second run changes nothing), `/dev/vfio/<group>` appears, ferryd starts in the guest and
//! answers RPCs, and `vfio-bind.sh reset` gives the function back to `nvme` (its disk comes
//! back).
//!
//! `userspace_driver_verifies_on_qemus_nvme`: the kernel's `nvme` driver first writes a
//! pattern; the function then goes to vfio-pci and Ferry's driver (`src/vfio/` carrying the
//! PCIe transport) runs `ferry-bdevperf -w verify` on it (4 KiB, and 128 KiB through PRP
//! lists); ferryd attaches it with `bdev_nvme_attach_controller -t PCIe -a 0000:00:04.0` and
//! exports the namespace over NVMe/TCP on the guest's loopback, where the guest kernel's own
//! initiator reads the pattern back and runs fio with verification; detaching the controller
//! releases the function (ferry-bdevperf opens it again while ferryd runs), and after
//! `vfio-bind.sh reset` the kernel reads the pattern again. No DMA fault is logged by the
//! emulated IOMMU throughout.
//!
//! `userspace_driver_resets_under_io`: the same export with fio writing and verifying through
//! it while `bdev_nvme_reset_controller` resets the PCIe controller twice; fio sees no error,
//! and `bdev_nvme_get_controller_health_info` answers with the controller's SMART data.
//!
//! Needs root, QEMU and the cached guest (`scripts/guest/setup.sh`).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "guest/mod.rs"]
mod guest;

use common::scratch_dir;
use ferry::vfio::ARENA_IOVA;
use guest::{console_of, json_line, spawn_guest_vfio_nvme, Running, ONE_GUEST, VFIO_NVME_BDF};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The emulated controller's disk (a sparse raw file).
const DISK_BYTES: u64 = 256 << 20;

/// What every guest script starts with (after `guest::SHELL_WAIT`): fail on the first error,
/// show the kernel's log and ferryd's when the script fails.
const PRELUDE: &str = r#"
set -e
trap 'rc=$?; [ $rc = 0 ] || { echo "--- dmesg"; dmesg | tail -n 40; echo "--- ferryd"; tail -n 60 /tmp/ferryd.log 2>/dev/null; }' EXIT
"#;

/// Guest functions of the driver tests: `json WHAT CMD...` prints CMD's JSON answer on one
/// console line; `attach_and_export` attaches Nvme0 through ferryd (already started) and exports
/// Nvme0n1 over NVMe/TCP on 127.0.0.1 to the guest kernel's initiator, setting `$dev`;
/// `writes` reads the bdev's write count; `dmar_faults` counts the IOMMU's fault reports.
const DRIVER_FUNCS: &str = r#"
BDF=0000:00:04.0
NQN=nqn.2016-06.io.ferry:pcie0
json() {
    local what=$1
    shift
    "$@" >/tmp/json 2>/tmp/err || { echo "FAILED $what:"; cat /tmp/err; exit 1; }
    printf 'JSON %s ' "$what"; tr -d '\n' </tmp/json; echo
}
rpc() { ferryctl call "$@" >/tmp/rpc 2>&1 || { echo "FAILED $*:"; cat /tmp/rpc; exit 1; }; }
start_ferryd() {
    ferryd -m 0x3 --log-level INFO >/tmp/ferryd.log 2>&1 &
    FERRYD=$!
    ferryctl -r 300 spdk_get_version >/dev/null
}
stop_ferryd() { kill -TERM $FERRYD; wait $FERRYD; }
exported_disk() {
    for d in /sys/block/nvme*n1; do
        case $(basename $d) in *c*n1) continue ;; esac # a multipath head's hidden path
        [ "$(cat $d/device/subsysnqn 2>/dev/null)" = $NQN ] && { basename $d; return 0; }
    done
    return 1
}
attach_and_export() {
    json attach ferryctl bdev_nvme_attach_controller -b Nvme0 -t PCIe -a $BDF
    ip link set lo up
    rpc nvmf_create_transport '{"trtype":"TCP"}'
    rpc nvmf_create_subsystem '{"nqn":"'$NQN'","allow_any_host":true}'
    rpc nvmf_subsystem_add_ns '{"nqn":"'$NQN'","namespace":{"bdev_name":"Nvme0n1"}}'
    rpc nvmf_subsystem_add_listener '{"nqn":"'$NQN'","listen_address":{"trtype":"TCP","adrfam":"IPv4","traddr":"127.0.0.1","trsvcid":"4420"}}'
    nvme connect -t tcp -a 127.0.0.1 -s 4420 -n $NQN >/tmp/out 2>&1 || { echo "nvme connect failed:"; cat /tmp/out; exit 1; }
    wait_until 60 "the exported namespace" exported_disk
    dev=$(exported_disk)
}
writes() { ferryctl call bdev_get_iostat '{"name":"Nvme0n1"}' | sed -n 's/.*"num_write_ops": *\([0-9]*\).*/\1/p'; }
more_writes() { [ "$(writes)" -ge "$1" ]; }
dmar_faults() { dmesg | grep -ciE 'DMAR:.*(fault|DMA (read|write))' || true; }
"#;

const VERIFY_SCRIPT: &str = r#"
# The kernel's driver writes a pattern Ferry's driver must read back.
dd if=/dev/urandom of=/tmp/pat bs=1M count=2 2>/dev/null
dd if=/tmp/pat of=/dev/nvme0n1 bs=1M seek=200 oflag=direct 2>/dev/null
echo "PATTERN $(md5sum </tmp/pat | cut -c1-32)"
echo "BIND $(vfio-bind.sh $BDF)"
start_ferryd
attach_and_export
json controllers ferryctl bdev_nvme_get_controllers
json bdev ferryctl call bdev_get_bdevs '{"name":"Nvme0n1"}'
ferryctl call save_config '{}' | tr -d '\n ' | grep -o '{"method":"bdev_nvme_attach_controller","params":{[^}]*}}' | sed 's/^/SAVED /'
# One process at a time: ferry-bdevperf cannot open the function ferryd holds.
printf '{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_nvme_attach_controller","params":{"name":"Nvme0","trtype":"PCIe","traddr":"%s"}}]}]}' $BDF >/tmp/pcie.json
if ferry-bdevperf -c /tmp/pcie.json -m 0x1 --no-pin -w verify -t 1 -T Nvme0n1 >/tmp/busy.log 2>&1; then
    echo "opened a function another process holds"; exit 1
fi
echo "BUSY $(grep -o 'open /dev/vfio/[0-9]* (busy[^)]*)' /tmp/busy.log | head -n1)"
echo "EXPORTED $(dd if=/dev/$dev bs=1M skip=200 count=2 iflag=direct 2>/dev/null | md5sum | cut -c1-32)"
timeout 300 fio --name=v --filename=/dev/$dev --size=32M --bsrange=4k-128k --rw=randwrite --ioengine=libaio \
    --direct=1 --iodepth=16 --verify=crc32c --verify_fatal=1 >/tmp/fio.log 2>&1 || { echo "fio failed"; cat /tmp/fio.log; exit 1; }
grep -E "err=|verify:" /tmp/fio.log
echo "FIO-WRITES $(writes)"
# The function's MSI-X vectors, through VFIO's eventfds: how many, and what they delivered.
grep vfio-msix /proc/interrupts || true
echo "MSIX $(grep -c vfio-msix /proc/interrupts) $(awk '/vfio-msix/ {t += $2 + $3} END {print t + 0}' /proc/interrupts)"
# Ferry's driver writes a pattern the kernel's must read back.
dd if=/dev/urandom of=/tmp/pat2 bs=1M count=2 2>/dev/null
dd if=/tmp/pat2 of=/dev/$dev bs=1M seek=220 oflag=direct 2>/dev/null
echo "PATTERN2 $(md5sum </tmp/pat2 | cut -c1-32)"
nvme disconnect -n $NQN >/dev/null
rpc nvmf_delete_subsystem '{"nqn":"'$NQN'"}'
json detach ferryctl bdev_nvme_detach_controller Nvme0
stop_ferryd
echo "RESET $(vfio-bind.sh reset $BDF)"
wait_until 60 "the kernel's disk" test -b /dev/nvme0n1
echo "KERNEL-READS $(dd if=/dev/nvme0n1 bs=1M skip=220 count=2 iflag=direct 2>/dev/null | md5sum | cut -c1-32)"
# Back to Ferry: ferryd attaches and detaches, and while it still runs ferry-bdevperf opens the
# released function and verifies through it (writing all over the disk).
echo "BIND-AGAIN $(vfio-bind.sh $BDF)"
start_ferryd
json attach-again ferryctl bdev_nvme_attach_controller -b Nvme0 -t PCIe -a $BDF
json detach-again ferryctl bdev_nvme_detach_controller Nvme0
# The detach answers once the function is released: ferryd holds no VFIO group then.
echo "VFIO-FDS-AFTER-DETACH $(ls -l /proc/$FERRYD/fd | grep -c '/dev/vfio/[0-9]')"
perf() {
    ferry-bdevperf -c /tmp/pcie.json -m 0x3 --no-pin -w verify -q 32 -o $1 -t 4 --json-summary -T Nvme0n1 >/tmp/perf.log 2>&1 \
        || { echo "ferry-bdevperf -o $1 failed:"; cat /tmp/perf.log; exit 1; }
    echo "BDEVPERF $1 $(tail -n1 /tmp/perf.log)"
}
perf 4096
perf 131072
stop_ferryd
echo "DMAR-FAULTS $(dmar_faults)"
"#;

const RESET_SCRIPT: &str = r#"
echo "BIND $(vfio-bind.sh $BDF)"
start_ferryd
attach_and_export
timeout 400 fio --name=r --filename=/dev/$dev --size=48M --bsrange=4k-64k --rw=randwrite --ioengine=libaio     --direct=1 --iodepth=16 --verify=crc32c --verify_fatal=1 >/tmp/fio.log 2>&1 &
FIO=$!
for i in 1 2; do
    # Each reset once fio's writes are flowing again.
    w=$(writes)
    wait_until 120 "writes before reset $i" more_writes $((w + 100))
    json reset$i ferryctl call bdev_nvme_reset_controller '{"name":"Nvme0"}'
    kill -0 $FIO 2>/dev/null && echo "RESET-UNDER-IO $i $(writes)"
done
wait $FIO || { echo "fio failed"; cat /tmp/fio.log; exit 1; }
grep -E "err=|verify:" /tmp/fio.log
echo "FIO-WRITES $(writes)"
json controllers ferryctl bdev_nvme_get_controllers
json health ferryctl call bdev_nvme_get_controller_health_info '{"name":"Nvme0"}'
nvme disconnect -n $NQN >/dev/null
stop_ferryd
echo "DMAR-FAULTS $(dmar_faults)"
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
fn run_vfio_guest(dir: &Path, script: &str, qemu_args: &[String], secs: u64) -> (bool, String) {
    let log = dir.join("console.log");
    let img = disk(dir);
    let script = format!("{}{PRELUDE}\n{script}", guest::SHELL_WAIT);
    let mut guest = Running(Some(spawn_guest_vfio_nvme(&script, dir, &img, &ferry_bins(), qemu_args, &log)));
    let (finished, out) = guest.finish(&log, secs);
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
    let (passed, console) = run_vfio_guest(&dir, BIND_SCRIPT, &[], 300);
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

/// A `ferry-bdevperf --json-summary` line (`BDEVPERF <io size> {...}`): passed, with I/O.
fn bdevperf_passed(console: &str, io_size: &str) -> serde_json::Value {
    let s: serde_json::Value = serde_json::from_str(guest::field(console, &format!("BDEVPERF {io_size}")))
        .unwrap_or_else(|e| panic!("bdevperf summary: {e}\n{console}"));
    assert_eq!(s["errors"], 0, "{s}");
    assert_eq!(s["miscompares"], 0, "{s}");
    assert!(s["ios"].as_u64().unwrap() > 0, "{s}");
    s
}

/// fio's result lines in the console: no error, no verify failure.
fn fio_passed(console: &str) {
    assert!(console.contains("err= 0"), "fio's result:\n{console}");
    assert!(!guest::fio_failed(console), "fio failed:\n{console}");
}

#[test]
fn userspace_driver_verifies_on_qemus_nvme() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch_dir("guest-nvme-pcie");
    // QEMU traces the NVMe controller's Doorbell Buffer Config and its trapped doorbell writes.
    let trace = dir.join("qemu-trace.log");
    let mut qemu_args = Vec::new();
    for event in ["pci_nvme_dbbuf_config", "pci_nvme_mmio_doorbell_sq", "pci_nvme_mmio_doorbell_cq"] {
        qemu_args.extend(["-trace".to_string(), event.to_string()]);
    }
    qemu_args.extend(["-D".to_string(), trace.to_str().unwrap().to_string()]);
    let (passed, console) = run_vfio_guest(&dir, &format!("{DRIVER_FUNCS}\n{VERIFY_SCRIPT}"), &qemu_args, 600);
    assert!(passed, "guest script failed:\n{console}");
    let bdf = VFIO_NVME_BDF;
    assert!(guest::field(&console, "BIND").starts_with(&format!("{bdf} vfio-pci ")), "{console}");
    assert_eq!(json_line(&console, "attach"), serde_json::json!(["Nvme0n1"]));
    let ctrls = json_line(&console, "controllers");
    let c = &ctrls[0]["ctrlrs"][0];
    assert_eq!(ctrls[0]["name"], "Nvme0", "{ctrls}");
    assert_eq!(c["state"], "enabled", "{ctrls}");
    assert_eq!(c["trid"]["trtype"], "PCIe", "{ctrls}");
    assert_eq!(c["trid"]["traddr"], bdf, "{ctrls}");
    let b = &json_line(&console, "bdev")[0];
    assert_eq!(b["block_size"].as_u64().unwrap() * b["num_blocks"].as_u64().unwrap(), DISK_BYTES, "{b}");
    assert_eq!(b["driver_specific"]["nvme"][0]["ctrlr_data"]["serial_number"], "ferry0", "{b}");
    let saved: serde_json::Value = serde_json::from_str(guest::field(&console, "SAVED")).unwrap();
    assert_eq!(saved["params"]["trtype"], "PCIe", "save_config replays the attach: {saved}");
    assert_eq!(saved["params"]["traddr"], bdf, "{saved}");
    let busy = guest::field(&console, "BUSY");
    eprintln!("a second opener is told: {busy}");
    assert!(busy.starts_with("open /dev/vfio/"), "the second opener is told why:\n{console}");
    let pattern = guest::field(&console, "PATTERN");
    assert_eq!(guest::field(&console, "EXPORTED"), pattern, "Ferry's driver reads what the kernel's wrote");
    fio_passed(&console);
    assert!(guest::field(&console, "FIO-WRITES").parse::<u64>().unwrap() > 0, "{console}");
    // MSI-X through VFIO (interrupt remapping on): a vector for the admin queue and each of
    // the two I/O queues (one per reactor), which the device signalled.
    let msix: Vec<u64> = guest::field(&console, "MSIX").split(' ').map(|n| n.parse().unwrap()).collect();
    eprintln!("MSI-X through VFIO: {} vectors, {} interrupts delivered", msix[0], msix[1]);
    assert_eq!(msix[0], 3, "MSI-X vectors enabled:\n{console}");
    assert!(msix[1] > 0, "no MSI-X interrupt was delivered:\n{console}");
    assert_eq!(json_line(&console, "detach"), serde_json::json!(true));
    assert_eq!(guest::field(&console, "RESET"), format!("{bdf} nvme"), "{console}");
    let pattern2 = guest::field(&console, "PATTERN2");
    assert_eq!(guest::field(&console, "KERNEL-READS"), pattern2, "the kernel's driver reads what Ferry's wrote");
    assert!(guest::field(&console, "BIND-AGAIN").starts_with(&format!("{bdf} vfio-pci ")), "{console}");
    assert_eq!(json_line(&console, "attach-again"), serde_json::json!(["Nvme0n1"]));
    assert_eq!(json_line(&console, "detach-again"), serde_json::json!(true));
    assert_eq!(guest::field(&console, "VFIO-FDS-AFTER-DETACH"), "0", "the detach answered before the group was closed");
    let runs: Vec<serde_json::Value> = ["4096", "131072"].iter().map(|size| bdevperf_passed(&console, size)).collect();
    for (size, s) in ["4096", "131072"].iter().zip(&runs) {
        eprintln!("ferry-bdevperf verify, {size} B, through VFIO (TCG guest): {} IOPS", s["iops"]);
    }

    // Every bring-up of Ferry's driver (ferryd twice, ferry-bdevperf twice) gave QEMU's
    // controller a Doorbell Buffer Config in its arena: shadow doorbells at the arena's first
    // page, event indexes at the second (the kernel's own driver, before, used its own IOVAs).
    let trace = std::fs::read_to_string(&trace).expect("QEMU's trace log");
    let ferry_dbbuf = format!("dbs_addr={ARENA_IOVA:#x} eis_addr={:#x}", ARENA_IOVA + 0x1000);
    let configs: Vec<usize> = trace
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("pci_nvme_dbbuf_config") && l.contains(&ferry_dbbuf))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(configs.len(), 4, "one Doorbell Buffer Config per bring-up at {ferry_dbbuf}:\n{}", {
        trace.lines().filter(|l| l.contains("dbbuf")).collect::<Vec<_>>().join("\n")
    });
    // What the 4 KiB run trapped (from its bring-up to the next one's): measured, not asserted,
    // as it depends on how fast the TCG guest runs.
    let run: Vec<&str> = trace.lines().skip(configs[2]).take(configs[3] - configs[2]).collect();
    let (sq, cq) = (
        run.iter().filter(|l| l.contains("mmio_doorbell_sq")).count(),
        run.iter().filter(|l| l.contains("mmio_doorbell_cq")).count(),
    );
    eprintln!("4 KiB verify run: {} I/Os, {sq} SQ and {cq} CQ doorbell writes trapped", runs[0]["ios"]);
    assert_eq!(guest::field(&console, "DMAR-FAULTS"), "0", "the emulated IOMMU reported DMA faults:\n{console}");
}

#[test]
fn userspace_driver_resets_under_io() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch_dir("guest-nvme-pcie-reset");
    let (passed, console) = run_vfio_guest(&dir, &format!("{DRIVER_FUNCS}\n{RESET_SCRIPT}"), &[], 600);
    assert!(passed, "guest script failed:\n{console}");
    // QEMU's SMART log through the driver's admin queue: its identity, and the writes fio made.
    let health = json_line(&console, "health");
    assert_eq!(health["serial_number"], "ferry0", "{health}");
    assert_eq!(health["model_number"], "QEMU NVMe Ctrl", "{health}");
    assert_eq!(health["traddr"], VFIO_NVME_BDF, "{health}");
    assert!(health["host_write_commands"].as_u64().unwrap() > 0, "{health}");
    assert!(health["data_units_written"].as_u64().unwrap() > 0, "{health}");
    for k in ["temperature_celsius", "available_spare_percentage", "percentage_used", "critical_warning"] {
        assert!(health.get(k).is_some(), "health info has {k}: {health}");
    }
    for i in [1, 2] {
        assert_eq!(json_line(&console, &format!("reset{i}")), serde_json::json!(true), "{console}");
        let at = guest::field(&console, &format!("RESET-UNDER-IO {i}"));
        eprintln!("reset {i} done while fio ran, {at} writes into Nvme0n1 by then");
    }
    eprintln!("fio finished after {} writes", guest::field(&console, "FIO-WRITES"));
    fio_passed(&console);
    let ctrls = json_line(&console, "controllers");
    assert_eq!(ctrls[0]["ctrlrs"][0]["state"], "enabled", "{ctrls}");
    assert_eq!(guest::field(&console, "DMAR-FAULTS"), "0", "the emulated IOMMU reported DMA faults:\n{console}");
}
