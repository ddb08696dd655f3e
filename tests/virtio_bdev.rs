//! The virtio bdev (`bdev_virtio_attach_controller`): one Ferry attaches another Ferry's
//! vhost-user-blk controller as a bdev; data is checked end to end with ferry-bdevperf.

mod common;

use common::{write_config, Ferryd};
use serde_json::{json, Value};
use std::process::Command;

#[test]
fn a_vhost_user_blk_device_becomes_a_bdev_that_verifies_on_one_and_two_reactors() {
    let dir = common::scratch_dir("virtio");
    let target = Ferryd::start_in(dir.clone(), &["-m", "0x3", "-S", dir.to_str().unwrap()]);
    target.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 65536, "block_size": 512}));
    target.ok("vhost_create_blk_controller", json!({"ctrlr": "v0", "dev_name": "M"}));
    let sock = dir.join("v0");

    // Over RPC, in a second daemon.
    let host = Ferryd::start(&["-m", "0x3"]);
    let attach = json!({"name": "VirtioBlk0", "trtype": "user", "traddr": sock, "dev_type": "blk", "vq_count": 2});
    assert_eq!(host.ok("bdev_virtio_attach_controller", attach.clone()), json!(["VirtioBlk0"]));
    let b = &host.ok("bdev_get_bdevs", json!({"name": "VirtioBlk0"}))[0];
    assert_eq!((b["block_size"].as_u64(), b["num_blocks"].as_u64()), (Some(512), Some(65536)));
    assert_eq!(b["supported_io_types"]["unmap"], true);
    let saved = host.ok("save_config", Value::Null);
    assert!(saved.to_string().contains("bdev_virtio_attach_controller"));
    assert_eq!(host.err("bdev_virtio_attach_controller", attach).code, -17);
    let bad = json!({"name": "X", "trtype": "user", "traddr": "/nonexistent", "dev_type": "blk"});
    assert_eq!(host.err("bdev_virtio_attach_controller", bad).code, -5);
    let bad = json!({"name": "X", "trtype": "pci", "traddr": "0000:00:01.0", "dev_type": "blk"});
    assert_eq!(host.err("bdev_virtio_attach_controller", bad).code, -32602);
    assert_eq!(host.ok("bdev_virtio_detach_controller", json!({"name": "VirtioBlk0"})), true);
    drop(host);

    // In ferry-bdevperf, with data verification, on one and two reactors.
    let config = write_config(
        &dir,
        "virtio.json",
        json!([{"method": "bdev_virtio_attach_controller",
                "params": {"name": "VirtioBlk0", "trtype": "user", "traddr": sock, "dev_type": "blk", "vq_count": 2}}]),
    );
    for mask in ["0x1", "0x3"] {
        let out = Command::new(env!("CARGO_BIN_EXE_ferry-bdevperf"))
            .args([
                "-c",
                config.to_str().unwrap(),
                "--no-pin",
                "-m",
                mask,
                "-w",
                "verify",
                "-q",
                "16",
                "-o",
                "8192",
                "-t",
                "1",
            ])
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "verify through the virtio bdev failed on {mask}:\n{text}");
        assert!(text.contains("VirtioBlk0"));
    }
    let stats = target.ok("bdev_get_iostat", json!({"name": "M"}));
    assert!(stats["bdevs"][0]["num_read_ops"].as_u64().unwrap() > 100, "the I/O reached the target's bdev");
}

/// A peer that accepts and then says nothing: the attach fails after its timeout with a clear
/// error, and meanwhile every other RPC is answered (no RPC blocks on a peer under the lock).
#[test]
fn a_silent_peer_times_the_attach_out_without_freezing_other_rpcs() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::time::Duration;
    let dir = common::scratch_dir("virtio-silent");
    let host = Ferryd::start(&[]);
    let peer_sock = dir.join("silent");
    let listener = UnixListener::bind(&peer_sock).unwrap();
    let (accepted_tx, accepted) = std::sync::mpsc::channel();
    let peer = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        accepted_tx.send(()).unwrap();
        // Silent until the attach gives up (it closes its end).
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut &conn, &mut buf);
    });
    let sock = host.sock.clone();
    let attach = std::thread::spawn(move || {
        common::rpc_at(
            &sock,
            "bdev_virtio_attach_controller",
            json!({"name": "V", "trtype": "user", "traddr": peer_sock, "dev_type": "blk", "timeout_ms": 15000}),
        )
    });
    accepted.recv_timeout(Duration::from_secs(10)).expect("the attach connected to the peer");
    // The attach now waits on the peer; other clients are answered well within its timeout.
    for _ in 0..3 {
        let mut s = UnixStream::connect(&host.sock).unwrap();
        // Three of these fit in the attach's 15 s even on a loaded machine.
        s.set_read_timeout(Some(Duration::from_secs(4))).unwrap();
        s.write_all(br#"{"jsonrpc":"2.0","id":1,"method":"spdk_get_version"}"#).unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).expect("spdk_get_version answered while an attach waits");
        assert!(line.contains("\"version\""), "{line}");
    }
    assert!(!attach.is_finished(), "the attach should still be waiting on the silent peer");
    let e = attach.join().unwrap().expect_err("attaching to a silent peer must fail");
    assert_eq!(e.code, -libc::ETIMEDOUT as i64, "{e:?}");
    assert!(e.message.contains("did not answer within"), "{e:?}");
    peer.join().unwrap();
    assert!(host.rpc("bdev_get_bdevs", json!({"name": "V"})).is_err(), "no bdev was registered");
}

/// A vhost controller served from a virtio bdev, whose frontend comes and goes: every
/// connection starts a queue on a new channel of the virtio bdev (the old one went with the
/// last queue using it), and each must get the bounce buffers its predecessor gave back.
#[test]
fn a_virtio_bdev_serves_a_controller_through_reconnections() {
    use ferry_vhost_initiator::blk::status;
    use ferry_vhost_initiator::{Client, Options, Request};
    let (back, back_dir) = common::held_backend("virtio-back");
    let dir = common::scratch_dir("virtio-front");
    let d = Ferryd::start_in(dir.clone(), &["-m", "0x1", "-S", dir.to_str().unwrap()]);
    common::attach_held(&d, &back_dir, "V");
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "front", "dev_name": "V"}));
    let opts = Options { num_queues: 1, queue_size: 64, mem_size: 4 << 20, hugetlbfs: None };
    for round in 0..4u8 {
        let mut c = Client::connect(&dir.join("front"), &opts).expect("connect");
        let buf = c.mem().alloc(4096, 4096).unwrap();
        c.mem().write(buf, &[round; 4096]);
        c.queue(0).submit(&Request::Write { sector: 8, bufs: &[(buf, 4096)] }, 1).unwrap();
        c.queue(0).submit(&Request::Read { sector: 8, bufs: &[(buf, 4096)] }, 2).unwrap();
        c.queue(0).kick();
        let done = common::wait_completions(&mut c, 0, 2);
        assert!(done.iter().all(|x| x.status == status::OK), "connection {round}: {done:?}\n{}", d.log_text());
        drop(c);
        // The controller is listening again once the session's queue (and its channel) went.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !d.ok("vhost_get_controllers", json!({"name": "front"}))[0]["sessions"].as_array().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "the frontend never went away");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    assert!(back.ok("bdev_get_iostat", json!({"name": "M"}))["bdevs"][0]["num_write_ops"].as_u64() >= Some(4));
}
