//! Guest test for Ferry's NVMe/TCP initiator against Linux's own target: `nvmet-tcp` in a
//! real Linux guest under QEMU (TCG) serves two RAM disks (`brd`) as namespaces 1 and 2 of one
//! subsystem, reached through QEMU's user network (`hostfwd` from a port on the host's
//! 127.0.0.1 to the guest's 4420). ferryd attaches it with `bdev_nvme_attach_controller`
//! without and with header and data digests; data is written, read and verified through the
//! bdevs (`ferry-bdevperf -w verify` on the attach `save_config` wrote, and vhost-user-blk
//! requests through ferryd: write, read, flush, write zeroes, discard); the guest's target is
//! stopped and started again while a write waits (the controller reconnects, the write
//! completes without error, and the data is there); then both controllers are detached.
//!
//! The guest is steered over a second serial port (`ttyS1`, a Unix socket on the host): it
//! reads `stop`/`start`/`quit` lines and answers on its console. Needs root, QEMU and the
//! cached guest (`scripts/guest/setup.sh`); `initrd.sh` adds the nvmet modules.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "guest/mod.rs"]
mod guest;
#[path = "../tests/common/nvme_initiator.rs"]
mod nvme_initiator;

use common::{free_port, scratch_dir, Ferryd};
use ferry_vhost_initiator::blk::status;
use ferry_vhost_initiator::{Client, Completion, Options, Request};
use guest::{spawn_guest, wait_for_console, wait_until, Running, ONE_GUEST};
use nvme_initiator::{attach, bdevperf_verify, completions, controller, one};
use serde_json::{json, Value};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;

const NQN: &str = "nqn.2025-01.io.ferry:nvmet";
/// Each RAM disk: 64 MiB (`brd rd_size` is in KiB).
const DISK_BYTES: u64 = 64 << 20;

/// The guest: nvmet-tcp serving /dev/ram0 and /dev/ram1, its port taken down and up on
/// command from ttyS1.
fn script() -> String {
    format!(
        r#"
set -e
for m in $(cat /lib/modules/nvmet/order); do
    case "$m" in */brd.ko) insmod "$m" rd_nr=2 rd_size={kib} ;; *) insmod "$m" 2>/dev/null || true ;; esac
done
mount -t configfs none /sys/kernel/config
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
T=/sys/kernel/config/nvmet
S=$T/subsystems/{NQN}
mkdir $S
echo 1 >$S/attr_allow_any_host
for n in 1 2; do
    mkdir $S/namespaces/$n
    echo /dev/ram$((n - 1)) >$S/namespaces/$n/device_path
    echo 1 >$S/namespaces/$n/enable
done
port_up() {{
    mkdir $T/ports/1
    echo tcp >$T/ports/1/addr_trtype
    echo ipv4 >$T/ports/1/addr_adrfam
    echo 0.0.0.0 >$T/ports/1/addr_traddr
    echo 4420 >$T/ports/1/addr_trsvcid
    ln -s $S $T/ports/1/subsystems/{NQN}
}}
port_down() {{
    rm $T/ports/1/subsystems/{NQN}
    rmdir $T/ports/1
}}
port_up
echo NVMET-UP
while read -r c; do
    case "$c" in
        stop) port_down; echo NVMET-STOPPED ;;
        start) port_up; echo NVMET-STARTED ;;
        quit) break ;;
    esac
done </dev/ttyS1
dmesg | grep -i nvmet | tail -n 20 | sed 's/^/KERNEL /'
echo NVMET-DONE
"#,
        kib = DISK_BYTES >> 10
    )
}

/// The guest's command port (its ttyS1).
struct Control(UnixStream);

impl Control {
    fn connect(path: &Path) -> Control {
        Control(wait_until(60, "QEMU never made the control socket", || UnixStream::connect(path).ok()))
    }

    /// Sends `cmd` and waits for the guest's answer `marker` on the console (the n-th one).
    fn send(&mut self, cmd: &str, log: &Path, marker: &str, nth: usize) {
        self.0.write_all(format!("{cmd}\n").as_bytes()).unwrap();
        wait_until(60, &format!("the guest never answered {cmd:?}"), || {
            (std::fs::read_to_string(log).unwrap_or_default().matches(marker).count() >= nth).then_some(())
        });
    }
}

fn iostat(d: &Ferryd, bdev: &str) -> Value {
    d.ok("bdev_get_iostat", json!({ "name": bdev }))["bdevs"][0].clone()
}

#[test]
fn ferry_initiator_against_nvmet_tcp_in_a_guest() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch_dir("guest-nvme-host");
    let port = free_port();
    let log = dir.join("console.log");
    let ctl = dir.join("ctl.sock");
    let qemu = [
        "-netdev".to_string(),
        format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-10.0.2.15:4420"),
        "-device".into(),
        "virtio-net-pci,netdev=n0,romfile=".into(),
        "-chardev".into(),
        format!("socket,id=ctl,path={},server=on,wait=off", ctl.display()),
        "-serial".into(),
        "chardev:ctl".into(),
    ];
    let mut guest = Running(Some(spawn_guest(&script(), &dir, "--memfd", &qemu, &log)));
    wait_for_console(&log, "NVMET-UP", 300);
    let mut control = Control::connect(&ctl);

    let d = Ferryd::start_in(dir.clone(), &["-m", "0x3", "-S", dir.to_str().unwrap()]);
    // Without digests: one bdev per namespace, SPDK's names and answer.
    let names = attach(&d, "Nvme0", port, NQN, false);
    assert_eq!(names, json!(["Nvme0n1", "Nvme0n2"]));
    let c0 = controller(&d, "Nvme0");
    assert_eq!(c0["state"], "enabled", "{c0}");
    assert_eq!(c0["trid"]["trtype"], "TCP");
    assert_eq!(c0["trid"]["subnqn"], NQN);
    assert_eq!(c0["trid"]["trsvcid"], port.to_string());
    assert!(c0["cntlid"].as_u64().unwrap() > 0, "{c0}");
    assert!(c0["host"]["nqn"].as_str().unwrap().starts_with("nqn.2014-08.org.nvmexpress:uuid:"), "{c0}");
    let e = d.err(
        "bdev_nvme_attach_controller",
        json!({"name": "Nvme0", "trtype": "tcp", "traddr": "127.0.0.1",
        "trsvcid": port.to_string(), "subnqn": NQN}),
    );
    assert!(e.message.contains("already exists"), "{e:?}");
    let e = d.err(
        "bdev_nvme_attach_controller",
        json!({"name": "Bad", "trtype": "tcp", "traddr": "127.0.0.1",
        "trsvcid": port.to_string(), "subnqn": "nqn.2025-01.io.ferry:nothing-here"}),
    );
    assert!(e.message.contains("Connect refused"), "an unknown subsystem is refused at Connect: {e:?}");
    let b = &d.ok("bdev_get_bdevs", json!({"name": "Nvme0n1"}))[0];
    assert_eq!(b["block_size"].as_u64().unwrap() * b["num_blocks"].as_u64().unwrap(), DISK_BYTES, "{b}");
    assert_eq!(b["product_name"], "NVMe disk");
    for t in ["read", "write", "flush", "unmap", "write_zeroes", "reset"] {
        assert_eq!(b["supported_io_types"][t], true, "{t}: {b}");
    }

    // With header and data digests, a second controller on the same subsystem.
    assert_eq!(attach(&d, "Nvme1", port, NQN, true), json!(["Nvme1n1", "Nvme1n2"]));
    assert_ne!(controller(&d, "Nvme1")["cntlid"], controller(&d, "Nvme0")["cntlid"]);
    assert_eq!(d.ok("bdev_nvme_get_controllers", Value::Null).as_array().unwrap().len(), 2);

    // save_config replays the attach: ferry-bdevperf loads it and verifies data through each
    // controller, in-capsule (4 KiB) and through R2T (64 KiB, and 256 KiB split at 128 KiB).
    let config = dir.join("config.json");
    let saved = d.ok("save_config", Value::Null);
    std::fs::write(&config, serde_json::to_vec(&saved).unwrap()).unwrap();
    let attaches: Vec<Value> = saved["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["config"].as_array())
        .flatten()
        .filter(|e| e["method"] == "bdev_nvme_attach_controller")
        .cloned()
        .collect();
    assert_eq!(attaches.len(), 2, "one entry per controller: {saved}");
    assert_eq!(attaches[1]["params"]["hdgst"], true);
    for io_size in ["4096", "65536", "262144"] {
        bdevperf_verify(&config, "Nvme0n1", io_size);
    }
    bdevperf_verify(&config, "Nvme1n2", "65536");

    // Through ferryd: a vhost-user-blk controller on Nvme0n1.
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "vb0", "dev_name": "Nvme0n1"}));
    let mut c = Client::connect(
        &dir.join("vb0"),
        &Options { num_queues: 1, queue_size: 128, mem_size: 16 << 20, hugetlbfs: None },
    )
    .expect("connect to vb0");
    let mem = c.mem().clone();
    let (wbuf, rbuf) = (mem.alloc(65536, 4096).unwrap(), mem.alloc(65536, 4096).unwrap());
    let pattern: Vec<u8> = (0..65536u32).map(|i| (i * 13 % 253) as u8).collect();
    mem.write(wbuf, &pattern);
    let ok = |x: Completion| assert_eq!(x.status, status::OK, "{x:?}");
    ok(one(&mut c, &Request::Write { sector: 2048, bufs: &[(wbuf, 4096), (wbuf + 4096, 61440)] }, 1));
    ok(one(&mut c, &Request::Flush, 2));
    ok(one(&mut c, &Request::Read { sector: 2048, bufs: &[(rbuf, 65536)] }, 3));
    let mut back = vec![0u8; 65536];
    mem.read(rbuf, &mut back);
    assert!(back == pattern, "data read back through Nvme0n1 differs");
    // The same blocks through the other controller (with digests), over vhost as well.
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "vb1", "dev_name": "Nvme1n1"}));
    let mut c1 = Client::connect(
        &dir.join("vb1"),
        &Options { num_queues: 1, queue_size: 128, mem_size: 16 << 20, hugetlbfs: None },
    )
    .expect("connect to vb1");
    let mem1 = c1.mem().clone();
    let rbuf1 = mem1.alloc(65536, 4096).unwrap();
    ok(one(&mut c1, &Request::Read { sector: 2048, bufs: &[(rbuf1, 65536)] }, 1));
    mem1.read(rbuf1, &mut back);
    assert!(back == pattern, "data read through the digest controller differs");
    // Write zeroes reads back as zeroes; discard succeeds and reaches the controller as DSM.
    ok(one(&mut c, &Request::WriteZeroes { sector: 2048, sectors: 16 }, 4));
    ok(one(&mut c, &Request::Read { sector: 2048, bufs: &[(rbuf, 65536)] }, 5));
    mem.read(rbuf, &mut back);
    assert!(back[..8192].iter().all(|&x| x == 0), "write zeroes did not zero");
    assert!(back[8192..] == pattern[8192..], "write zeroes went beyond its range");
    ok(one(&mut c, &Request::Discard { sector: 4096, sectors: 64 }, 6));
    let st = iostat(&d, "Nvme0n1");
    assert!(st["num_unmap_ops"].as_u64().unwrap() >= 1, "{st}");
    assert!(st["num_write_ops"].as_u64().unwrap() >= 1, "{st}");

    // Up to here no queue pair failed (the unknown subsystem's admin queue aside): channels
    // made and dropped (examine, vhost) reuse their reactor's queue instead of connecting
    // the same queue id again.
    let before = d.log_text();
    let failures: Vec<&str> =
        before.lines().filter(|l| l.contains("queue pair failed") && !l.contains("qid=0")).collect();
    assert!(failures.is_empty(), "I/O queue pairs failed with the target up:\n{}", failures.join("\n"));

    // The guest's target goes away and comes back while a write waits.
    control.send("stop", &log, "NVMET-STOPPED", 1);
    wait_until(30, "Nvme0 never noticed the target was gone", || {
        (controller(&d, "Nvme0")["state"] != "enabled").then_some(())
    });
    let second: Vec<u8> = pattern.iter().map(|b| b ^ 0x5a).collect();
    mem.write(wbuf, &second);
    c.queue(0).submit(&Request::Write { sector: 8192, bufs: &[(wbuf, 65536)] }, 7).unwrap();
    c.queue(0).kick();
    let state = controller(&d, "Nvme0")["state"].clone();
    assert!(state == "reconnect_is_delayed" || state == "resetting", "{state}");
    control.send("start", &log, "NVMET-STARTED", 1);
    let held = completions(&mut c, 1, 60).remove(0);
    assert_eq!((held.tag, held.status), (7, status::OK), "the write waiting for the reconnect failed");
    wait_until(30, "Nvme0 never came back", || (controller(&d, "Nvme0")["state"] == "enabled").then_some(()));
    ok(one(&mut c, &Request::Read { sector: 8192, bufs: &[(rbuf, 65536)] }, 8));
    mem.read(rbuf, &mut back);
    assert!(back == second, "the write made across the reconnect is not there");
    ok(one(&mut c, &Request::Read { sector: 2048, bufs: &[(rbuf, 65536)] }, 9));
    mem.read(rbuf, &mut back);
    assert!(back[8192..] == pattern[8192..], "data written before the target restart is gone");
    // The digest controller reconnected too.
    wait_until(30, "Nvme1 never came back", || (controller(&d, "Nvme1")["state"] == "enabled").then_some(()));
    ok(one(&mut c1, &Request::Read { sector: 8192, bufs: &[(rbuf1, 65536)] }, 2));
    mem1.read(rbuf1, &mut back);
    assert!(back == second, "the digest controller reads other data after the reconnect");

    // Detach: the bdevs go with their controller.
    drop(c);
    drop(c1);
    for vb in ["vb0", "vb1"] {
        // The session ends asynchronously once the frontend is gone.
        wait_until(30, "a vhost controller could not be deleted", || {
            d.rpc("vhost_delete_controller", json!({ "ctrlr": vb })).ok()
        });
    }
    let e = d.err("bdev_nvme_detach_controller", json!({"name": "Nvme0", "traddr": "10.9.9.9"}));
    assert!(e.message.contains("No such path"), "{e:?}");
    assert_eq!(d.ok("bdev_nvme_detach_controller", json!({"name": "Nvme0"})), json!(true));
    assert!(d.rpc("bdev_get_bdevs", json!({"name": "Nvme0n1"})).is_err(), "Nvme0n1 outlived its controller");
    assert_eq!(d.ok("bdev_nvme_get_controllers", Value::Null).as_array().unwrap().len(), 1);
    assert!(d.rpc("bdev_nvme_get_controllers", json!({"name": "Nvme0"})).is_err());
    assert_eq!(d.ok("bdev_nvme_detach_controller", json!({"name": "Nvme1"})), json!(true));
    assert_eq!(d.ok("bdev_nvme_get_controllers", Value::Null), json!([]));
    assert!(d.rpc("bdev_nvme_detach_controller", json!({"name": "Nvme1"})).is_err());

    control.send("quit", &log, "NVMET-DONE", 1);
    let child = guest.0.take().unwrap();
    let out = child.wait_with_output().unwrap();
    let console = guest::console_of(&out);
    assert!(out.status.success(), "guest script failed:\n{console}\nferryd:\n{}", d.log_text());
}
