//! Guest test for NVMe over TCP: Linux's NVMe/TCP host (nvme-tcp, nvme-fabrics, nvme-core and
//! Debian's nvme-cli) in a real guest under QEMU (TCG) against an NVMe-oF/TCP target.
//!
//! The scenario, the same for every target: `nvme discover` lists the subsystem; `nvme connect
//! -t tcp` without digests, where `id-ctrl`, `id-ns`, `smart-log` and `list` answer with the
//! subsystem's serial, model and the namespace's size, and fio writes and verifies; disconnect;
//! `nvme connect` again with header and data digests (`-g -G`) and a controller-loss timeout,
//! where fio verifies the data written over the first connection and writes more; a namespace
//! added while connected appears in the guest; the target goes away under fio (ferryd: killed
//! with -9 with writes provably in flight, restarted from its `save_config`) and the host
//! reconnects with no I/O error reaching fio; the namespace removed while connected disappears;
//! disconnect.
//!
//! Two targets: ferryd on the host, configured with SPDK's `nvmf_*` RPCs and reached through
//! QEMU's user network (the guest's 10.0.2.2 is the host's 127.0.0.1); and Linux's own nvmet-tcp
//! target in the same guest on 127.0.0.1 (configfs), the reference that proves the guest's tools
//! and this test's parsing. Needs root, QEMU and the cached guest (`scripts/guest/setup.sh`).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "guest/mod.rs"]
mod guest;

use common::{scratch_dir, Ferryd, Scratch};
use guest::{
    blocked_threads, console_of, field, fio_failed, modified, spawn_guest, wait_for_marker, wait_until, HeldDisk,
    Running, ONE_GUEST,
};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

/// The subsystem the guest connects to.
const NQN: &str = "nqn.2016-06.io.ferry:cnode1";
/// Its serial and model numbers (Identify Controller SN, MN).
const SERIAL: &str = "FERRY0000000000001";
const MODEL: &str = "Ferry NVMe-oF test controller";
/// The guest's host NQN (`/etc/nvme/hostnqn`, written by `scripts/guest/setup.sh`).
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:7e7d0a1b-3c55-4f0e-9a35-6e0f6572e7a1";
/// Namespace 1, served from the start; namespace 2, added and removed while connected.
const NS1_BYTES: u64 = 64 << 20;
const NS2_BYTES: u64 = 48 << 20;

/// What differs between targets: where the guest finds it, and the shell run at each point
/// the target changes (for a target on the host: a marker the test reacts to).
struct Variant {
    /// The address and ports the guest connects to (I/O listener, discovery listener).
    addr: &'static str,
    port: u16,
    disc_port: u16,
    /// Run first (configures an in-guest target).
    setup: String,
    /// Adds namespace 2 (`NS2_BYTES`) to the subsystem.
    add_ns: String,
    /// Removes namespace 2.
    remove_ns: String,
    /// Run in the background once fio runs on namespace 2 (`$dev2`): takes the target away
    /// and brings it back (an in-guest target; ferryd is killed by the test).
    outage: String,
}

/// The guest's script: the scenario in the module's documentation, printing what the test
/// checks (`JSON <what> <nvme-cli's JSON on one line>`, `CONNECTED`, `NS-ADDED`, `LOST`,
/// `RECONNECTED`, `NS-REMOVED`, `DISCONNECTED`, fio's result lines).
fn script(v: &Variant) -> String {
    const SCRIPT: &str = r#"
set -e
trap 'rc=$?; [ $rc = 0 ] || { echo "--- fio"; cat /tmp/fio-r.log 2>/dev/null; echo "--- dmesg"; dmesg | tail -n 60; }' EXIT
NQN=@NQN@
A=@ADDR@
P=@PORT@
D=@DISC_PORT@
ip link set lo up
if [ "$A" != 127.0.0.1 ]; then
    ip link set eth0 up
    ip addr add 10.0.2.15/24 dev eth0
fi

@SHELL_WAIT@
# The controller of $NQN (nvmeN), and the block device of its namespace NSID.
ctrl() {
    local d
    for d in /sys/class/nvme/nvme*; do
        [ "$(cat "$d/subsysnqn" 2>/dev/null)" = "$NQN" ] && { echo "${d##*/}"; return 0; }
    done
    return 1
}
no_ctrl() { ! ctrl >/dev/null; }
ns_dev() {
    local b n
    for b in /sys/block/nvme*; do
        n=${b##*/}
        case $n in *c*) continue ;; esac # a multipath head's hidden path device
        [ "$(cat "$b/device/subsysnqn" 2>/dev/null)" = "$NQN" ] && [ "$(cat "$b/nsid" 2>/dev/null)" = "$1" ] \
            && { echo "$n"; return 0; }
    done
    return 1
}
has_ns() { ns_dev "$1" >/dev/null; }
no_ns() { ! ns_dev "$1" >/dev/null; }
state() { cat "/sys/class/nvme/$c/state"; }
live() { [ "$(state)" = live ]; }
not_live() { [ "$(state)" != live ]; }
# Writes completed on namespace device DEV (nvmeXnY): a multipath head (bio-based) counts
# none itself, its paths (nvmeXcZnY) do.
writes() {
    local s=0 p
    for p in "/sys/block/${1%n*}"c*"n${1##*n}" "/sys/block/$1"; do
        [ -e "$p/stat" ] && s=$((s + $(awk '{print $5}' "$p/stat")))
    done
    echo $s
}
wrote_more() { [ "$(writes "$1")" -ge $(($2 + $3)) ]; }
# json WHAT CMD...: CMD -o json on one console line.
json() {
    local what=$1
    shift
    "$@" -o json >/tmp/json 2>/tmp/err || { echo "FAILED $what:"; cat /tmp/err; exit 1; }
    printf 'JSON %s ' "$what"; tr -d '\n' </tmp/json; echo
}
# connect ARGS...: nvme connect to $NQN; sets $c and $dev (namespace 1).
connect() {
    nvme connect -t tcp -a "$A" -s "$P" -n "$NQN" --ctrl-loss-tmo=60 --reconnect-delay=1 "$@" >/tmp/out 2>&1 \
        || { echo "nvme connect $* failed:"; cat /tmp/out; exit 1; }
    wait_until 60 "the controller of $NQN" ctrl
    c=$(ctrl)
    wait_until 60 "namespace 1" has_ns 1
    dev=$(ns_dev 1)
}
disconnect() {
    nvme disconnect -n "$NQN" >/tmp/out 2>&1 || { echo "nvme disconnect failed:"; cat /tmp/out; exit 1; }
    sed 's/^/DISCONNECT /' /tmp/out
    wait_until 60 "the controller to go" no_ctrl
    wait_until 60 "namespace 1 to go" no_ns 1
}

@SETUP@

json discover nvme discover -t tcp -a "$A" -s "$D"

# Without digests: what the host reads of the controller and namespace, then fio.
connect
echo "CONNECTED plain $c $dev $(state)"
json id-ctrl nvme id-ctrl "/dev/$c"
json id-ns nvme id-ns "/dev/$dev"
json smart-log nvme smart-log "/dev/$c"
json list nvme list
echo "SIZE $dev $(($(cat "/sys/block/$dev/size") * 512))"
F="--name=v --filename=/dev/$dev --size=32M --bsrange=4k-128k --rw=randwrite --ioengine=libaio --direct=1 --iodepth=16 --verify=crc32c"
fio $F 2>&1 | grep -E "err=|fio:|verify:"
disconnect

# With header and data digests: the first connection's data read back and verified, more written.
connect -g -G
echo "CONNECTED digests $c $dev $(state)"
echo "TIMEOUTS $(cat "/sys/class/nvme/$c/ctrl_loss_tmo") $(cat "/sys/class/nvme/$c/reconnect_delay")"
json id-ctrl-digests nvme id-ctrl "/dev/$c"
fio $F --verify_only 2>&1 | grep -E "err=|fio:|verify:"
fio --name=w --filename="/dev/$dev" --offset=32M --size=32M --bsrange=4k-256k --rw=randwrite --ioengine=libaio \
    --direct=1 --iodepth=32 --verify=crc32c 2>&1 | grep -E "err=|fio:|verify:"

# A namespace added while connected: the host hears of it (changed-namespace event) and scans.
@ADD_NS@
wait_until 120 "namespace 2 to appear" has_ns 2
dev2=$(ns_dev 2)
echo "NS-ADDED $dev2 $(($(cat "/sys/block/$dev2/size") * 512))"

# The target goes away under fio and comes back: the host reconnects (reconnect delay 1 s,
# controller-loss timeout 60 s), holding I/O meanwhile; fio must see no error.
fio --name=r --filename="/dev/$dev2" --size=40M --bs=4k --rw=randwrite --ioengine=libaio --direct=1 --iodepth=16 \
    --verify=crc32c --verify_backlog=64 --time_based --runtime=600 >/tmp/fio-r.log 2>&1 &
fpid=$!
echo FIO-START
( @OUTAGE@ ) &
wait_until 120 "the controller to lose its connection" not_live
echo "LOST $(state)"
wait_until 120 "the controller to reconnect" live
w=$(writes "$dev2")
echo RECONNECTED
# fio goes on over the new connection before it is stopped.
wait_until 120 "fio's writes after the reconnection" wrote_more "$dev2" "$w" 1000
kill -INT $fpid 2>/dev/null || true
wait $fpid || true
grep -E "err=|fio:|verify:" /tmp/fio-r.log
echo FIO-END

# The namespace removed while connected: its block device goes.
@REMOVE_NS@
wait_until 120 "namespace 2 to disappear" no_ns 2
[ ! -e "/dev/$dev2" ] || { echo "/dev/$dev2 is left"; exit 1; }
echo "NS-REMOVED $dev2"
echo "STILL $(ns_dev 1) $(state)"

disconnect
echo DISCONNECTED
dmesg | grep -E "nvme nvme[0-9]+:" | grep -vE "new ctrl|creating|mapped" | sed 's/^/KERNEL /' || true
if dmesg | grep -E "I/O error|critical (medium|target) error"; then echo KERNEL-IO-ERROR; exit 1; fi
"#;
    SCRIPT
        .replace("@SHELL_WAIT@", guest::SHELL_WAIT)
        .replace("@NQN@", NQN)
        .replace("@ADDR@", v.addr)
        .replace("@PORT@", &v.port.to_string())
        .replace("@DISC_PORT@", &v.disc_port.to_string())
        .replace("@SETUP@", &v.setup)
        .replace("@ADD_NS@", &v.add_ns)
        .replace("@REMOVE_NS@", &v.remove_ns)
        .replace("@OUTAGE@", &v.outage)
}

/// The JSON nvme-cli printed for `what`.
fn json_of(console: &str, what: &str) -> Value {
    let line = field(console, &format!("JSON {what}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("nvme-cli's {what} output is not JSON ({e}): {line}"))
}

/// A string field of nvme-cli's JSON, without the space padding of Identify's ASCII fields.
fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("no {key:?} in {v}")).trim_end()
}

/// A number field of nvme-cli's JSON (some are printed as strings).
fn number(v: &Value, key: &str) -> u64 {
    match &v[key] {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .unwrap_or_else(|| panic!("no number {key:?} in {v}"))
}

/// What every target must have shown the guest (see the module's documentation), on the
/// console of a finished script.
fn check_console(console: &str, port: u16) {
    // Discovery lists the subsystem at its listener.
    let discover = json_of(console, "discover");
    let records = discover["records"].as_array().unwrap_or_else(|| panic!("no discovery records: {discover}"));
    assert!(
        records.iter().any(|r| r["subnqn"] == NQN
            && r["trtype"] == "tcp"
            && r["adrfam"] == "ipv4"
            && r["subtype"] == "nvme subsystem"
            && r["traddr"] == "127.0.0.1"
            && r["trsvcid"].as_str() == Some(port.to_string().as_str())),
        "the discovery log does not list {NQN} at 127.0.0.1:{port}: {discover}"
    );

    // Identify Controller, over both connections.
    for what in ["id-ctrl", "id-ctrl-digests"] {
        let id = json_of(console, what);
        assert_eq!(text(&id, "sn"), SERIAL, "{what}: {id}");
        assert_eq!(text(&id, "mn"), MODEL, "{what}: {id}");
        assert_eq!(text(&id, "subnqn"), NQN, "{what}: {id}");
        let cntlid = number(&id, "cntlid");
        assert!((1..0xfff0).contains(&cntlid), "{what}: controller ID {cntlid}");
        assert_eq!(number(&id, "cntrltype"), 1, "{what}: not an I/O controller: {id}");
    }
    // Identify Namespace: size in blocks of the format in use.
    let ns = json_of(console, "id-ns");
    let lbaf = (number(&ns, "flbas") & 0xf) as usize;
    let ds = ns["lbafs"][lbaf]["ds"].as_u64().unwrap_or_else(|| panic!("no LBA format {lbaf}: {ns}"));
    assert_eq!(number(&ns, "nsze") << ds, NS1_BYTES, "id-ns: {ns}");
    assert_eq!(number(&ns, "ncap"), number(&ns, "nsze"), "id-ns: {ns}");
    // SMART / health log: answered, nothing critical.
    let smart = json_of(console, "smart-log");
    assert_eq!(number(&smart, "critical_warning"), 0, "smart-log: {smart}");
    number(&smart, "temperature");
    number(&smart, "data_units_written");
    // nvme list: the namespace with the subsystem's identity and size.
    let list = json_of(console, "list");
    let plain = field(console, "CONNECTED plain");
    let dev = plain.split_whitespace().nth(1).unwrap();
    let path = format!("/dev/{dev}");
    let entry = list["Devices"]
        .as_array()
        .and_then(|d| d.iter().find(|e| e["DevicePath"] == path.as_str()))
        .unwrap_or_else(|| panic!("nvme list has no {path}: {list}"));
    assert_eq!(text(entry, "SerialNumber"), SERIAL, "{entry}");
    assert_eq!(text(entry, "ModelNumber"), MODEL, "{entry}");
    assert_eq!(number(entry, "PhysicalSize"), NS1_BYTES, "{entry}");
    assert_eq!(number(entry, "NameSpace"), 1, "{entry}");
    assert_eq!(field(console, "SIZE"), format!("{dev} {NS1_BYTES}"), "{console}");

    assert!(plain.ends_with(" live"), "{plain}");
    assert!(field(console, "CONNECTED digests").ends_with(" live"), "{console}");
    assert_eq!(field(console, "TIMEOUTS"), "60 1", "ctrl-loss-tmo and reconnect-delay were not applied");
    assert_eq!(console.matches("DISCONNECT NQN:").count(), 2, "{console}");
    assert!(console.contains("disconnected 1 controller(s)"), "{console}");

    // fio: written and verified, verified again over the digest connection, more written and
    // verified, and the run across the outage.
    assert_eq!(console.matches("err= 0").count(), 4, "fio saw an error:\n{console}");
    assert!(!fio_failed(console), "{console}");

    let added = field(console, "NS-ADDED");
    assert!(added.ends_with(&format!(" {NS2_BYTES}")), "namespace 2's size: {added}");
    let dev2 = added.split_whitespace().next().unwrap();
    let lost = field(console, "LOST");
    assert!(["connecting", "resetting"].contains(&lost), "the controller was {lost} while the target was away");
    assert!(console.contains("RECONNECTED"), "{console}");
    assert!(console.contains("FIO-END"), "{console}");
    assert_eq!(field(console, "NS-REMOVED"), dev2, "{console}");
    assert_eq!(field(console, "STILL"), format!("{dev} live"), "namespace 1 went with namespace 2:\n{console}");
    assert!(console.contains("DISCONNECTED"), "{console}");
    assert!(!console.contains("I/O error"), "an I/O error reached the guest:\n{console}");
}

/// Linux's nvmet (configfs) serving files on the guest's tmpfs (`buffered_io`: tmpfs has no
/// O_DIRECT) on 127.0.0.1:4420, discovery on the same port; the outage takes the subsystem off
/// its port and links it back once the host noticed.
fn nvmet_variant() -> Variant {
    let setup = format!(
        r#"
for m in $(cat /lib/modules/nvmet/order); do
    case "$m" in */brd.ko) ;; *) insmod "$m" 2>/dev/null || true ;; esac
done
mount -t configfs none /sys/kernel/config
C=/sys/kernel/config/nvmet
S=$C/subsystems/$NQN
nvmet_ns() {{
    dd if=/dev/zero of=/tmp/ns$1.img bs=1M count=0 seek=$2 2>/dev/null
    mkdir $S/namespaces/$1
    echo /tmp/ns$1.img >$S/namespaces/$1/device_path
    echo 1 >$S/namespaces/$1/buffered_io
    echo 1 >$S/namespaces/$1/enable
}}
mkdir $S
echo 1 >$S/attr_allow_any_host
echo {SERIAL} >$S/attr_serial
echo "{MODEL}" >$S/attr_model
nvmet_ns 1 {}
mkdir $C/ports/1
echo tcp >$C/ports/1/addr_trtype
echo ipv4 >$C/ports/1/addr_adrfam
echo 127.0.0.1 >$C/ports/1/addr_traddr
echo $P >$C/ports/1/addr_trsvcid
ln -s $S $C/ports/1/subsystems/
"#,
        NS1_BYTES >> 20
    );
    Variant {
        addr: "127.0.0.1",
        port: 4420,
        disc_port: 4420,
        setup,
        add_ns: format!("nvmet_ns 2 {}", NS2_BYTES >> 20),
        remove_ns: "echo 0 >$S/namespaces/2/enable; rmdir $S/namespaces/2".into(),
        outage: r#"
w=$(writes "$dev2"); wait_until 60 "fio's writes" wrote_more "$dev2" "$w" 200
rm $C/ports/1/subsystems/$NQN
wait_until 60 "the host to lose the controller" not_live
ln -s $S $C/ports/1/subsystems/
"#
        .into(),
    }
}

/// The reference run: the guest's tools and this test's checks against Linux's own target
/// (about 25 s under TCG on an idle machine). When the ferryd variant fails, this tells a
/// guest-side problem from a target-side one: `cargo test -p ferry --test guest_nvmf -- nvmet`.
#[test]
fn linux_nvme_tcp_against_nvmet_in_the_guest() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch_dir("guest-nvmf-nvmet");
    let v = nvmet_variant();
    let console = guest::run_guest(&script(&v), &dir, "--memfd", &[]);
    check_console(&console, v.port);
}

/// ferryd serving the subsystem: namespace 1 a malloc bdev, namespace 2 (added while the host
/// is connected) a uring bdev on a file whose writes the test can hold, so that the kill -9
/// provably interrupts I/O and the data survives it; restarted from `save_config`.
struct FerrydTarget {
    d: Option<Ferryd>,
    config: PathBuf,
}

impl FerrydTarget {
    /// SPDK's sequence: transport, subsystem, namespace, listener, discovery listener.
    fn start(dir: &Scratch, port: u16, disc_port: u16) -> FerrydTarget {
        let d = Ferryd::start_in(dir.clone(), &["-m", "0x3"]);
        d.ok("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": NS1_BYTES / 512, "block_size": 512}));
        d.ok("nvmf_create_transport", json!({"trtype": "TCP"}));
        d.ok(
            "nvmf_create_subsystem",
            json!({"nqn": NQN, "allow_any_host": true, "serial_number": SERIAL, "model_number": MODEL}),
        );
        let nsid = d.ok("nvmf_subsystem_add_ns", json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}}));
        assert_eq!(nsid, 1, "the first namespace's ID");
        // The discovery subsystem by its NQN: "discovery" is a shortcut of rpc.py's, not the server's.
        for (nqn, port) in [(NQN, port), ("nqn.2014-08.org.nvmexpress.discovery", disc_port)] {
            d.ok(
                "nvmf_subsystem_add_listener",
                json!({"nqn": nqn, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1",
                                                       "trsvcid": port.to_string()}}),
            );
        }
        FerrydTarget { d: Some(d), config: dir.join("config.json") }
    }

    fn d(&self) -> &Ferryd {
        self.d.as_ref().expect("running")
    }

    /// Adds namespace 2 on `file` and saves the configuration a restart replays.
    fn add_ns(&self, file: &Path) {
        let d = self.d();
        d.ok("bdev_uring_create", json!({"name": "Disk2", "filename": file, "block_size": 512}));
        let nsid = d.ok("nvmf_subsystem_add_ns", json!({"nqn": NQN, "namespace": {"bdev_name": "Disk2", "nsid": 2}}));
        assert_eq!(nsid, 2);
        std::fs::write(&self.config, serde_json::to_vec(&d.ok("save_config", Value::Null)).unwrap()).unwrap();
    }

    /// After the process was killed: reaps it and starts ferryd again the same way, from the
    /// saved configuration.
    fn restart(&mut self) {
        let d = self.d.take().unwrap();
        let dir = d.dir.clone();
        let mut args = d.args.clone();
        args.extend(["-c".into(), self.config.to_str().unwrap().into()]);
        drop(d);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.d = Some(Ferryd::start_with(dir, &args, |_| {}));
    }

    fn log_text(&self) -> String {
        self.d.as_ref().map(Ferryd::log_text).unwrap_or_default()
    }
}

#[test]
fn linux_nvme_tcp_against_ferryd() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let began = Instant::now();
    let dir = scratch_dir("guest-nvmf-ferryd");
    let mut disk = HeldDisk::new(&dir, 96);
    let file = disk.path("ns2.img");
    std::fs::File::create(&file).unwrap().set_len(NS2_BYTES).unwrap();
    let (port, disc_port) = (common::free_port(), common::free_port());
    let mut target = FerrydTarget::start(&dir, port, disc_port);
    let v = Variant {
        addr: "10.0.2.2",
        port,
        disc_port,
        setup: String::new(),
        add_ns: "echo WANT-ADD-NS".into(),
        remove_ns: "echo WANT-REMOVE-NS".into(),
        outage: "true".into(),
    };
    let log = dir.join("console.log");
    let net = ["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,romfile="].map(String::from);
    let mut guest = Running(Some(spawn_guest(&script(&v), &dir, "--memfd", &net, &log)));

    // Connected with digests: the target knows the guest's host, then namespace 2 comes.
    wait_for_marker(&log, "WANT-ADD-NS", 400, || format!("ferryd:\n{}", target.log_text()));
    eprintln!("guest connected twice and verified fio: {:?}", began.elapsed());
    let ctrlrs = target.d().ok("nvmf_subsystem_get_controllers", json!({"nqn": NQN}));
    assert!(
        ctrlrs.as_array().is_some_and(|c| c.iter().any(|c| c["hostnqn"] == HOSTNQN)),
        "nvmf_subsystem_get_controllers does not show the guest ({HOSTNQN}): {ctrlrs}"
    );
    target.add_ns(&file);

    // Killed with writes provably in flight, restarted from the saved configuration.
    wait_for_marker(&log, "FIO-START", 300, || format!("ferryd:\n{}", target.log_text()));
    let fio_started = SystemTime::now();
    wait_until(60, "the guest's fio never wrote to namespace 2", || (modified(&file) > fio_started).then_some(()));
    disk.hold();
    let pid = target.d().pid();
    let deadline = Instant::now() + Duration::from_secs(60);
    let held = loop {
        match blocked_threads(pid) {
            0 if Instant::now() > deadline => {
                disk.release();
                panic!("no write of the guest's was ever held in ferryd");
            }
            0 => std::thread::sleep(Duration::from_millis(50)),
            n => break n,
        }
    };
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    // The killed process's held writes must finish before it can be reaped.
    disk.release();
    let killed = Instant::now();
    target.restart();
    let restarted = SystemTime::now();
    eprintln!("killed with {held} writes held, restarted in {:?}", killed.elapsed());
    // The host's reconnected writes reach the restarted ferryd.
    wait_until(120, "the reconnected host never wrote to the restarted ferryd", || {
        (modified(&file) > restarted).then_some(())
    });
    eprintln!("the guest wrote to the restarted ferryd {:?} after the kill", killed.elapsed());

    wait_for_marker(&log, "WANT-REMOVE-NS", 300, || format!("ferryd:\n{}", target.log_text()));
    target.d().ok("nvmf_subsystem_remove_ns", json!({"nqn": NQN, "nsid": 2}));

    let (finished, out) = guest.finish(&log, 300);
    let console = console_of(&out);
    let ferryd = target.log_text();
    assert!(finished, "the guest never finished:\n{console}\nferryd:\n{ferryd}");
    assert!(out.status.success(), "guest script failed:\n{console}\nferryd:\n{ferryd}");
    eprintln!("whole scenario: {:?}", began.elapsed());
    check_console(&console, port);
}
