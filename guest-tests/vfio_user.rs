//! Guest test for the VFIOUSER transport: a Debian 12 guest under QEMU 11 (`vfio-user-pci`, from
//! the cached Debian 13 tree: `run.sh --qemu11`) whose ordinary Linux NVMe PCI driver finds
//! Ferry's emulated NVMe function.
//!
//! The scenario: the guest's `nvme` driver binds the function (MSI-X, two I/O queues for two
//! vCPUs, shadow doorbells through Doorbell Buffer Config); `nvme id-ctrl`, `id-ns` and
//! `smart-log` answer with the subsystem's serial, model and the namespace's size; fio writes
//! and verifies with one job on each vCPU. While the guest then idles, the host checks what
//! Ferry saw (two I/O queues with commands, shadow doorbells in use and doorbell traps far
//! below one per command) and that ferryd sleeps (under 2% of a core), then adds a namespace,
//! which appears in the guest (asynchronous event, rescan), and removes it again.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "guest/mod.rs"]
mod guest;

use common::{scratch_dir, Ferryd};
use guest::{console_of, json_line, spawn_guest_qemu11, wait_for_marker, Running, ONE_GUEST};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const NQN: &str = "nqn.2016-06.io.ferry:vfio0";
const SERIAL: &str = "FERRYVFIOUSER0001";
const MODEL: &str = "Ferry vfio-user NVMe";
const NS1_BLOCKS: u64 = 131072; // 64 MiB of 512-byte blocks
const NS2_BLOCKS: u64 = 98304; // 48 MiB

const SCRIPT: &str = r#"
set -e
trap 'rc=$?; [ $rc = 0 ] || { echo "--- dmesg"; dmesg | tail -n 60; }' EXIT
json() {
    local what=$1
    shift
    "$@" -o json >/tmp/json 2>/tmp/err || { echo "FAILED $what:"; cat /tmp/err; exit 1; }
    printf 'JSON %s ' "$what"; tr -d '\n' </tmp/json; echo
}
no_n2() { ! test -b /dev/nvme0n2; }
wait_until 60 "the NVMe controller" test -e /sys/class/nvme/nvme0
wait_until 60 "namespace 1" test -b /dev/nvme0n1
echo "CTRL $(cat /sys/class/nvme/nvme0/transport) $(cat /sys/class/nvme/nvme0/state) $(cat /sys/class/nvme/nvme0/subsysnqn)"
# With native multipath the disk is a head (nvme0n1) over its path device (nvme0c0n1).
mq=/sys/block/nvme0c0n1/mq
[ -d $mq ] || mq=/sys/block/nvme0n1/mq
echo "QUEUES $(ls $mq | wc -l)"
grep -q nvme /proc/interrupts && echo "MSIX $(grep -c nvme /proc/interrupts)"
json id-ctrl nvme id-ctrl /dev/nvme0
json id-ns nvme id-ns /dev/nvme0n1
json smart-log nvme smart-log /dev/nvme0
echo "SIZE $(($(cat /sys/block/nvme0n1/size) * 512))"
timeout 200 fio --name=v --filename=/dev/nvme0n1 --size=24M --offset_increment=32M --numjobs=2 --cpus_allowed=0-1 \
    --cpus_allowed_policy=split --bsrange=4k-128k --rw=randwrite --ioengine=libaio --direct=1 --iodepth=16 \
    --verify=crc32c --verify_fatal=1 >/tmp/fio.log 2>&1 || { echo "fio failed"; cat /tmp/fio.log; exit 1; }
grep -E "err=|verify:" /tmp/fio.log || true
echo FIO-DONE
# Idle (no I/O on the device) until the host adds namespace 2.
wait_until 300 "namespace 2" test -b /dev/nvme0n2
echo "NS-ADDED $(($(cat /sys/block/nvme0n2/size) * 512))"
dd if=/dev/nvme0n2 of=/dev/null bs=1M count=4 iflag=direct 2>/dev/null && echo "NS2-READ"
echo WANT-REMOVE-NS
wait_until 300 "namespace 2 to go" no_n2
echo NS-REMOVED
"#;

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn linux_nvme_pci_driver_on_ferrys_vfio_user_function() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let began = Instant::now();
    let dir = scratch_dir("guest-vfio-user");
    let d = Ferryd::start_in(dir.clone(), &["-m", "0x3"]);
    d.ok("bdev_malloc_create", json!({ "name": "Malloc0", "num_blocks": NS1_BLOCKS, "block_size": 512 }));
    d.ok("bdev_malloc_create", json!({ "name": "Malloc1", "num_blocks": NS2_BLOCKS, "block_size": 512 }));
    d.ok("nvmf_create_transport", json!({ "trtype": "VFIOUSER" }));
    d.ok(
        "nvmf_create_subsystem",
        json!({ "nqn": NQN, "allow_any_host": true, "serial_number": SERIAL, "model_number": MODEL }),
    );
    d.ok("nvmf_subsystem_add_ns", json!({ "nqn": NQN, "namespace": { "bdev_name": "Malloc0" } }));
    let ep = dir.join("vfu");
    std::fs::create_dir_all(&ep).unwrap();
    let la = json!({ "trtype": "VFIOUSER", "traddr": ep.to_str().unwrap(), "trsvcid": "0" });
    d.ok("nvmf_subsystem_add_listener", json!({ "nqn": NQN, "listen_address": la }));

    let device = json!({ "driver": "vfio-user-pci", "socket": { "path": ep.join("cntrl"), "type": "unix" } });
    let args = ["-M", "q35", "-device", &device.to_string()].map(String::from);
    let log = dir.join("console.log");
    let mut guest = Running(Some(spawn_guest_qemu11(&format!("{}{SCRIPT}", guest::SHELL_WAIT), &dir, &args, &log)));

    wait_for_marker(&log, "FIO-DONE", 400, || format!("ferryd:\n{}", d.log_text()));
    eprintln!("guest bound the function and ran fio: {:?}", began.elapsed());
    // What Ferry saw of the guest's queues while it is still up.
    let qpairs = d.ok("nvmf_subsystem_get_qpairs", json!({ "nqn": NQN }));
    eprintln!("qpairs: {qpairs}");
    let io: Vec<&Value> = qpairs.as_array().unwrap().iter().filter(|q| q["qid"].as_u64() > Some(0)).collect();
    assert_eq!(io.len(), 2, "two I/O queues for two vCPUs: {qpairs}");
    let (mut commands, mut traps, mut cq_traps) = (0, 0, 0);
    for q in &io {
        let v = &q["vfio_user"];
        assert!(v["commands"].as_u64().unwrap() > 0, "fio used both queues: {qpairs}");
        assert_eq!(v["shadow_doorbells"], true, "the guest gave a Doorbell Buffer Config: {qpairs}");
        assert!(v["interrupts"].as_u64().unwrap() > 0, "MSI-X interrupts: {qpairs}");
        commands += v["commands"].as_u64().unwrap();
        traps += v["sq_doorbell_traps"].as_u64().unwrap() + v["cq_doorbell_traps"].as_u64().unwrap();
        cq_traps += v["cq_doorbell_traps"].as_u64().unwrap();
    }
    eprintln!("{commands} I/O commands, {traps} trapped doorbell writes");
    // Without shadow doorbells every submission traps and so do most completion-queue head
    // updates (875 for 2,149 commands measured). With them, a submission traps only when it
    // finds its queue idle (event index armed after 300 us): how often that happens depends
    // on how fast the TCG guest submits (0.35 traps per command on a quiet host, more than
    // one when the host is loaded), so the submission side is proven with a client of known
    // pace (tests/vfio_user.rs: one trap per batch of 32). The completion side does not depend
    // on pace: the guest's head updates go to the shadow buffer.
    assert!(cq_traps * 10 <= commands, "shadow doorbells keep CQ head writes off the socket: {qpairs}");

    // The guest idles: ferryd sleeps.
    std::thread::sleep(Duration::from_millis(500));
    let (t0, s0) = (cpu_ticks(d.pid()), Instant::now());
    std::thread::sleep(Duration::from_secs(5));
    let hz = 100.0; // CLK_TCK on Linux
    let share = (cpu_ticks(d.pid()) - t0) as f64 / hz / s0.elapsed().as_secs_f64() * 100.0;
    eprintln!("ferryd with an idle guest: {share:.2}% of a core");
    assert!(share < 2.0, "ferryd used {share:.2}% of a core while the guest idled");

    // Namespace hot add and remove reach the guest.
    d.ok("nvmf_subsystem_add_ns", json!({ "nqn": NQN, "namespace": { "bdev_name": "Malloc1", "nsid": 2 } }));
    wait_for_marker(&log, "WANT-REMOVE-NS", 300, || format!("ferryd:\n{}", d.log_text()));
    d.ok("nvmf_subsystem_remove_ns", json!({ "nqn": NQN, "nsid": 2 }));

    let (finished, out) = guest.finish(&log, 300);
    let console = console_of(&out);
    let ferryd = d.log_text();
    assert!(finished && out.status.success(), "the guest script failed:\n{console}\nferryd:\n{ferryd}");
    eprintln!("guest done: {:?}", began.elapsed());

    assert!(console.contains(&format!("CTRL pcie live {NQN}")), "{console}");
    let queues: u32 = guest::field(&console, "QUEUES").parse().unwrap();
    assert_eq!(queues, 2, "blk-mq queues of nvme0n1");
    let id = json_line(&console, "id-ctrl");
    assert_eq!(id["vid"], 0x4e58, "{id}");
    assert_eq!(id["sn"].as_str().unwrap().trim(), SERIAL);
    assert_eq!(id["mn"].as_str().unwrap().trim(), MODEL);
    assert_eq!(id["subnqn"], NQN);
    assert_eq!(id["oacs"].as_u64().unwrap() & (1 << 8), 1 << 8, "Doorbell Buffer Config offered");
    let ns = json_line(&console, "id-ns");
    assert_eq!(ns["nsze"], NS1_BLOCKS, "{ns}");
    let smart = json_line(&console, "smart-log");
    assert!(smart.get("critical_warning").is_some(), "{smart}");
    assert_eq!(guest::field(&console, "SIZE"), (NS1_BLOCKS * 512).to_string());
    assert!(!guest::fio_failed(&console), "fio failed:\n{console}");
    assert_eq!(guest::field(&console, "NS-ADDED"), (NS2_BLOCKS * 512).to_string());
    assert!(console.contains("NS2-READ") && console.contains("NS-REMOVED"), "{console}");
}
