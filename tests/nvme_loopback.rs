//! Ferry's NVMe/TCP initiator against Ferry's own NVMe-oF/TCP target on 127.0.0.1: two real
//! ferryd processes. The target (T) serves a malloc bdev as namespace 1 and a uring bdev on a
//! file as namespace 2 of one subsystem, and a second malloc bdev in another subsystem; the
//! initiator (I) attaches the first without and the second with header and data digests
//! (`bdev_nvme_attach_controller`), and checks the bdevs' sizes. Data is verified
//! through the bdevs with `ferry-bdevperf -w verify` (4 KiB in-capsule, 64 KiB through R2T,
//! 256 KiB split at MDTS) and through a vhost-user-blk controller on I (write, flush, read,
//! write zeroes, discard). T is then killed with SIGKILL while I's controller keeps a write
//! waiting, restarted from its `save_config` on the same port, and the write completes and
//! reads back, next to the data written before the kill. Detach removes the bdevs.
//!
//! `guest-tests/nvme_host.rs` runs the same initiator against Linux's nvmet-tcp in a guest.

mod common;
#[path = "common/nvme_initiator.rs"]
mod nvme_initiator;

use common::{free_port, scratch_dir, Ferryd, Scratch};
use ferry_vhost_initiator::blk::status;
use ferry_vhost_initiator::{Client, Completion, Options, Request};
use nvme_initiator::{attach, bdevperf_verify, completions, controller, one};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const NQN: &str = "nqn.2016-06.io.spdk:loopback";
/// A second subsystem (Malloc1), for the controller with digests: a namespace reached through
/// two controllers would give two bdevs of the same uuid (its NGUID), which the bdev layer
/// refuses, as SPDK's does.
const NQN2: &str = "nqn.2016-06.io.spdk:loopback-digests";
/// Namespace 1: a malloc bdev of 32 MiB.
const NS1_BYTES: u64 = 32 << 20;
/// Namespace 2: a file of 16 MiB (survives the target's restart).
const NS2_BYTES: u64 = 16 << 20;

/// Polls `f` until it gives a value, for at most `secs`.
#[track_caller]
fn wait_until<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The target: its ferryd (absent while killed) and the configuration it restarts from.
struct Target {
    d: Option<Ferryd>,
    dir: Scratch,
    args: Vec<String>,
    config: PathBuf,
}

impl Target {
    /// SPDK's sequence: bdevs, transport, subsystem, namespaces, listener on 127.0.0.1:`port`.
    fn start(port: u16) -> Target {
        let dir = scratch_dir("nvme-loop-target");
        let file = dir.join("ns2.img");
        std::fs::File::create(&file).unwrap().set_len(NS2_BYTES).unwrap();
        let d = Ferryd::start_in(dir.clone(), &["-m", "0x1"]);
        d.ok("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": NS1_BYTES / 512, "block_size": 512}));
        d.ok("bdev_malloc_create", json!({"name": "Malloc1", "num_blocks": NS1_BYTES / 512, "block_size": 512}));
        d.ok("bdev_uring_create", json!({"name": "Disk1", "filename": file, "block_size": 512}));
        d.ok("nvmf_create_transport", json!({"trtype": "TCP"}));
        d.ok("nvmf_create_subsystem", json!({"nqn": NQN, "allow_any_host": true}));
        assert_eq!(d.ok("nvmf_subsystem_add_ns", json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}})), 1);
        assert_eq!(d.ok("nvmf_subsystem_add_ns", json!({"nqn": NQN, "namespace": {"bdev_name": "Disk1"}})), 2);
        d.ok("nvmf_create_subsystem", json!({"nqn": NQN2, "allow_any_host": true}));
        assert_eq!(d.ok("nvmf_subsystem_add_ns", json!({"nqn": NQN2, "namespace": {"bdev_name": "Malloc1"}})), 1);
        let la = json!({"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()});
        for nqn in [NQN, NQN2] {
            d.ok("nvmf_subsystem_add_listener", json!({"nqn": nqn, "listen_address": la}));
        }
        let config = dir.join("config.json");
        std::fs::write(&config, serde_json::to_vec(&d.ok("save_config", Value::Null)).unwrap()).unwrap();
        let args = d.args.clone();
        Target { d: Some(d), dir, args, config }
    }

    /// SIGKILL, and reaped.
    fn kill(&mut self) {
        let d = self.d.take().expect("running");
        // SAFETY: kill(2) on our own child process; no memory is involved.
        assert_eq!(unsafe { libc::kill(d.pid() as i32, libc::SIGKILL) }, 0);
        drop(d); // waits for it
    }

    /// Started again the same way, from the saved configuration.
    fn restart(&mut self) {
        let mut args = self.args.clone();
        args.extend(["-c".into(), self.config.to_str().unwrap().into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.d = Some(Ferryd::start_with(self.dir.clone(), &args, |_| {}));
    }

    fn log_text(&self) -> String {
        self.d.as_ref().map(Ferryd::log_text).unwrap_or_default()
    }
}

fn bdev_bytes(d: &Ferryd, name: &str) -> u64 {
    let b = &d.ok("bdev_get_bdevs", json!({ "name": name }))[0];
    b["block_size"].as_u64().unwrap() * b["num_blocks"].as_u64().unwrap()
}

#[track_caller]
fn ok(x: Completion) {
    assert_eq!(x.status, status::OK, "{x:?}");
}

/// A vhost-user-blk client on I's controller `ctrlr`.
fn vhost_client(dir: &Path, ctrlr: &str) -> Client {
    Client::connect(&dir.join(ctrlr), &Options { num_queues: 1, queue_size: 128, mem_size: 16 << 20, hugetlbfs: None })
        .unwrap_or_else(|e| panic!("connect to {ctrlr}: {e}"))
}

/// How many failed connection attempts I's log shows so far.
fn failed_attempts(d: &Ferryd) -> usize {
    d.log_text().matches("NVMe controller: ").count()
}

#[test]
fn ferry_initiator_against_ferry_target() {
    let port = free_port();
    let mut t = Target::start(port);
    let idir = scratch_dir("nvme-loop-initiator");
    let d = Ferryd::start_in(idir.clone(), &["-m", "0x3", "-S", idir.to_str().unwrap()]);

    // Attach without and with digests: one bdev per namespace, of the namespace's size.
    assert_eq!(attach(&d, "Nvme0", port, NQN, false), json!(["Nvme0n1", "Nvme0n2"]));
    assert_eq!(attach(&d, "Nvme1", port, NQN2, true), json!(["Nvme1n1"]));
    for (n, nqn) in [("Nvme0", NQN), ("Nvme1", NQN2)] {
        let c = controller(&d, n);
        assert_eq!(c["state"], "enabled", "{c}");
        assert_eq!(c["trid"]["subnqn"], nqn, "{c}");
        assert_eq!(c["trid"]["trsvcid"], port.to_string(), "{c}");
        assert_eq!(bdev_bytes(&d, &format!("{n}n1")), NS1_BYTES);
        let hosts = t.d.as_ref().unwrap().ok("nvmf_subsystem_get_controllers", json!({ "nqn": nqn }));
        assert_eq!(hosts.as_array().unwrap().len(), 1, "T sees the controller: {hosts}");
    }
    assert_eq!(bdev_bytes(&d, "Nvme0n2"), NS2_BYTES);

    // (a) ferry-bdevperf attaches to T from I's save_config and verifies data: in-capsule
    // (4 KiB), through R2T (64 KiB), split at MDTS (256 KiB over a 128 KiB max_io_size).
    let config = idir.join("initiator.json");
    std::fs::write(&config, serde_json::to_vec(&d.ok("save_config", Value::Null)).unwrap()).unwrap();
    for io_size in ["4096", "65536", "262144"] {
        bdevperf_verify(&config, "Nvme0n1", io_size);
        bdevperf_verify(&config, "Nvme1n1", io_size);
    }

    // (b) Through I: vhost-user-blk controllers on Nvme0n1 and on Nvme1n1 (digests).
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "vb0", "dev_name": "Nvme0n1"}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "vb1", "dev_name": "Nvme1n1"}));
    let mut c = vhost_client(&idir, "vb0");
    let mut c1 = vhost_client(&idir, "vb1");
    let mem = c.mem().clone();
    let mem1 = c1.mem().clone();
    let (wbuf, rbuf) = (mem.alloc(65536, 4096).unwrap(), mem.alloc(65536, 4096).unwrap());
    let rbuf1 = mem1.alloc(65536, 4096).unwrap();
    let pattern: Vec<u8> = (0..65536u32).map(|i| (i * 13 % 253) as u8).collect();
    let mut back = vec![0u8; 65536];
    mem.write(wbuf, &pattern);
    ok(one(&mut c, &Request::Write { sector: 2048, bufs: &[(wbuf, 4096), (wbuf + 4096, 61440)] }, 1));
    ok(one(&mut c, &Request::Flush, 2));
    ok(one(&mut c, &Request::Read { sector: 2048, bufs: &[(rbuf, 65536)] }, 3));
    mem.read(rbuf, &mut back);
    assert!(back == pattern, "data read back through Nvme0n1 differs");
    let wbuf1 = mem1.alloc(65536, 4096).unwrap();
    mem1.write(wbuf1, &pattern);
    ok(one(&mut c1, &Request::Write { sector: 2048, bufs: &[(wbuf1, 65536)] }, 1));
    ok(one(&mut c1, &Request::Read { sector: 2048, bufs: &[(rbuf1, 65536)] }, 2));
    mem1.read(rbuf1, &mut back);
    assert!(back == pattern, "data read back through the digest controller differs");
    ok(one(&mut c, &Request::WriteZeroes { sector: 2048, sectors: 16 }, 4));
    ok(one(&mut c, &Request::Read { sector: 2048, bufs: &[(rbuf, 65536)] }, 5));
    mem.read(rbuf, &mut back);
    assert!(back[..8192].iter().all(|&x| x == 0), "write zeroes did not zero");
    assert!(back[8192..] == pattern[8192..], "write zeroes went beyond its range");
    ok(one(&mut c, &Request::Discard { sector: 4096, sectors: 64 }, 6));
    let st = &d.ok("bdev_get_iostat", json!({"name": "Nvme0n1"}))["bdevs"][0];
    assert!(st["num_unmap_ops"].as_u64().unwrap() >= 1, "{st}");
    let ts = &t.d.as_ref().unwrap().ok("bdev_get_iostat", json!({"name": "Malloc0"}))["bdevs"][0];
    assert!(ts["num_unmap_ops"].as_u64().unwrap() >= 1, "the discard reached T's bdev: {ts}");

    // (c) Namespace 2 (a file on T) through a vhost controller on I: data before the kill.
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "vb2", "dev_name": "Nvme0n2"}));
    let mut c2 = vhost_client(&idir, "vb2");
    let mem2 = c2.mem().clone();
    let (wbuf2, rbuf2) = (mem2.alloc(65536, 4096).unwrap(), mem2.alloc(65536, 4096).unwrap());
    mem2.write(wbuf2, &pattern);
    ok(one(&mut c2, &Request::Write { sector: 1024, bufs: &[(wbuf2, 65536)] }, 1));
    ok(one(&mut c2, &Request::Flush, 2));

    // T is killed; I notices and keeps reconnecting.
    t.kill();
    wait_until(30, "Nvme0 never noticed the target was gone", || {
        (controller(&d, "Nvme0")["state"] != "enabled").then_some(())
    });
    let second: Vec<u8> = pattern.iter().map(|b| b ^ 0x5a).collect();
    mem2.write(wbuf2, &second);
    c2.queue(0).submit(&Request::Write { sector: 8192, bufs: &[(wbuf2, 65536)] }, 3).unwrap();
    c2.queue(0).kick();
    // Proof that the write waits: two more reconnect attempts failed after it was submitted
    // (so it reached the nvme bdev and was not failed), and it has not completed.
    let attempts = failed_attempts(&d);
    wait_until(30, "I never tried to reconnect", || (failed_attempts(&d) >= attempts + 2).then_some(()));
    let mut early = Vec::new();
    c2.queue(0).poll(&mut early);
    assert!(early.is_empty(), "the write completed while the target was down: {early:?}");
    let state = controller(&d, "Nvme0")["state"].clone();
    assert!(state == "reconnect_is_delayed" || state == "resetting", "{state}");

    // T comes back on the same port from its saved configuration; the write completes.
    t.restart();
    let held = completions(&mut c2, 1, 60).remove(0);
    assert_eq!((held.tag, held.status), (3, status::OK), "the write held across the reconnect failed");
    wait_until(30, "Nvme0 never came back", || (controller(&d, "Nvme0")["state"] == "enabled").then_some(()));
    ok(one(&mut c2, &Request::Read { sector: 8192, bufs: &[(rbuf2, 65536)] }, 4));
    mem2.read(rbuf2, &mut back);
    assert!(back == second, "the write made across the reconnect is not there");
    ok(one(&mut c2, &Request::Read { sector: 1024, bufs: &[(rbuf2, 65536)] }, 5));
    mem2.read(rbuf2, &mut back);
    assert!(back == pattern, "data written before the target's restart is gone");
    // The digest controller reconnected too (its malloc namespace is new: write, read back).
    wait_until(30, "Nvme1 never came back", || (controller(&d, "Nvme1")["state"] == "enabled").then_some(()));
    mem1.write(wbuf1, &second);
    ok(one(&mut c1, &Request::Write { sector: 4096, bufs: &[(wbuf1, 65536)] }, 3));
    ok(one(&mut c1, &Request::Read { sector: 4096, bufs: &[(rbuf1, 65536)] }, 4));
    mem1.read(rbuf1, &mut back);
    assert!(back == second, "the digest controller reads other data after the reconnect");

    // (d) Detach: the bdevs go with their controller.
    drop((c, c1, c2));
    for vb in ["vb0", "vb1", "vb2"] {
        // The session ends asynchronously once the frontend is gone.
        wait_until(30, "a vhost controller could not be deleted", || {
            d.rpc("vhost_delete_controller", json!({ "ctrlr": vb })).ok()
        });
    }
    assert_eq!(d.ok("bdev_nvme_detach_controller", json!({"name": "Nvme0"})), json!(true));
    for b in ["Nvme0n1", "Nvme0n2"] {
        assert!(d.rpc("bdev_get_bdevs", json!({ "name": b })).is_err(), "{b} outlived its controller");
    }
    assert!(d.rpc("bdev_nvme_get_controllers", json!({"name": "Nvme0"})).is_err());
    assert_eq!(d.ok("bdev_nvme_detach_controller", json!({"name": "Nvme1"})), json!(true));
    assert!(d.rpc("bdev_get_bdevs", json!({"name": "Nvme1n1"})).is_err(), "Nvme1n1 outlived its controller");
    assert_eq!(d.ok("bdev_nvme_get_controllers", Value::Null), json!([]));
    // T saw the hosts go away.
    let target = t.d.as_ref().unwrap();
    for nqn in [NQN, NQN2] {
        wait_until(30, &format!("T kept controllers of {nqn} after detach:\n{}", t.log_text()), || {
            let hosts = target.ok("nvmf_subsystem_get_controllers", json!({ "nqn": nqn }));
            hosts.as_array().unwrap().is_empty().then_some(())
        });
    }
}
