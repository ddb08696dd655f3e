//! The control plane runs on a fixed set of threads: hundreds of controllers with a frontend
//! connected to each add no thread, and a frontend that stalls half-way through a message
//! holds nothing but its own connection.

mod common;

use common::Ferryd;
use ferry_vhost_initiator::blk::status;
use ferry_vhost_initiator::{Client, Options, Request};
use serde_json::json;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

fn start() -> Ferryd {
    let dir = common::scratch_dir("ctrlplane");
    Ferryd::start_in(dir.clone(), &["-m", "0x3", "-S", dir.to_str().unwrap()])
}

fn read_one(c: &mut Client) -> u8 {
    let buf = c.mem().alloc(4096, 4096).unwrap();
    c.queue(0).submit(&Request::Read { sector: 0, bufs: &[(buf, 4096)] }, 1).unwrap();
    c.queue(0).kick();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    while c.queue(0).poll(&mut out) == 0 {
        assert!(Instant::now() < deadline, "no completion");
        c.queue(0).wait(10);
    }
    out[0].status
}

#[test]
fn hundreds_of_connected_controllers_add_no_threads() {
    const N: usize = 200;
    let d = start();
    // The first controller starts the control plane's threads.
    d.ok("bdev_null_create", json!({"name": "N0", "num_blocks": 1024, "block_size": 512}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "c0", "dev_name": "N0"}));
    let opts = Options { num_queues: 1, queue_size: 16, mem_size: 256 << 10, hugetlbfs: None };
    let mut first = Client::connect(&d.dir.join("c0"), &opts).unwrap();
    assert_eq!(read_one(&mut first), status::OK);
    let base = common::thread_names(d.pid());
    let mut clients = vec![first];
    for i in 1..N {
        d.ok("bdev_null_create", json!({"name": format!("N{i}"), "num_blocks": 1024, "block_size": 512}));
        d.ok("vhost_create_blk_controller", json!({"ctrlr": format!("c{i}"), "dev_name": format!("N{i}")}));
        clients.push(Client::connect(&d.dir.join(format!("c{i}")), &opts).unwrap());
    }
    for c in clients.iter_mut() {
        assert_eq!(read_one(c), status::OK);
    }
    // RPC workers come and go with the calls running at once (tests/rpc_protocol.rs bounds
    // them); every other thread is fixed.
    common::threads_settle_to(d.pid(), &base);
    let listed = d.ok("vhost_get_controllers", json!(null));
    assert_eq!(listed.as_array().unwrap().len(), N);
    assert!(listed.as_array().unwrap().iter().all(|c| c["sessions"].as_array().unwrap().len() == 1));
    // Disconnect them all at once; every controller listens again.
    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = d.ok("vhost_get_controllers", json!(null));
        if listed.as_array().unwrap().iter().all(|c| c["sessions"].as_array().unwrap().is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "sessions did not all end");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut again = Client::connect(&d.dir.join(format!("c{}", N - 1)), &opts).unwrap();
    assert_eq!(read_one(&mut again), status::OK);
}

#[test]
fn a_frontend_stalled_mid_message_holds_only_its_own_connection() {
    let d = start();
    for name in ["A", "B", "C"] {
        d.ok("bdev_null_create", json!({"name": name, "num_blocks": 1024, "block_size": 512}));
    }
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "stalled", "dev_name": "A"}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "fine", "dev_name": "B"}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "stalled2", "dev_name": "C"}));
    // Half a header, then silence, with the connection kept open.
    let mut stalled = UnixStream::connect(d.dir.join("stalled")).unwrap();
    stalled.write_all(&[3, 0, 0, 0, 1, 0]).unwrap();
    // A header announcing a payload that never comes, on another controller.
    let mut second = UnixStream::connect(d.dir.join("stalled2")).unwrap();
    second.write_all(&[5, 0, 0, 0, 1, 0, 0, 0, 0x28, 0, 0, 0]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.ok("vhost_get_controllers", json!({"name": "stalled"}))[0]["sessions"].as_array().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the stalled frontend was never accepted");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Everything else goes on: another controller's frontend connects and does I/O, and
    // management answers (including about the stalled controller).
    let opts = Options { num_queues: 1, queue_size: 16, mem_size: 256 << 10, hugetlbfs: None };
    let mut fine = Client::connect(&d.dir.join("fine"), &opts).unwrap();
    assert_eq!(read_one(&mut fine), status::OK);
    d.ok("vhost_controller_set_coalescing", json!({"ctrlr": "stalled", "delay_base_us": 10, "iops_threshold": 100}));
    // Deleting it is refused at once (a guest is connected), not after waiting on it.
    assert_eq!(d.err("vhost_delete_controller", json!({"ctrlr": "stalled"})).code, -libc::EBUSY as i64);
    // Once its frontend leaves, the controller is free again and goes away cleanly.
    drop(stalled);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.ok("vhost_get_controllers", json!({"name": "stalled"}))[0]["sessions"].as_array().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the stalled sessions never ended");
        std::thread::sleep(Duration::from_millis(5));
    }
    d.ok("vhost_delete_controller", json!({"ctrlr": "stalled"}));
    assert_eq!(read_one(&mut fine), status::OK);
    drop(second);
}

/// A queue whose I/O is held (its bdev is a virtio bdev on a second, stopped ferryd) drains
/// for as long as that lasts when the frontend stops it (GET_VRING_BASE). Management of that
/// very controller answers meanwhile: coalescing changes and listings never wait for the
/// draining session.
#[test]
fn management_answers_while_a_queue_drains_held_io() {
    let (back, back_dir) = common::held_backend("drain-back");
    let d = start();
    common::attach_held(&d, &back_dir, "V");
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "slow", "dev_name": "V"}));
    let opts = Options { num_queues: 1, queue_size: 16, mem_size: 256 << 10, hugetlbfs: None };
    let mut c = Client::connect(&d.dir.join("slow"), &opts).unwrap();
    assert_eq!(read_one(&mut c), status::OK, "a read through the virtio bdev");

    common::signal_and_wait(back.pid(), libc::SIGSTOP, true);
    let buf = c.mem().alloc(4096, 4096).unwrap();
    c.queue(0).submit(&Request::Read { sector: 8, bufs: &[(buf, 4096)] }, 2).unwrap();
    c.queue(0).kick();
    // The queue has taken the read (its poller ran since) and it cannot finish.
    d.wait_polled(0, "vhost_blk_q0");
    // The frontend stops the queue; its drain waits for the held read.
    let stopper = std::thread::spawn(move || {
        let base = c.stop_queue(0);
        (c, base)
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.log_text().contains("virtqueue draining in-flight I/O") {
        assert!(Instant::now() < deadline, "the queue never started draining:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(5));
    }
    for delay in [20, 30, 40] {
        d.ok(
            "vhost_controller_set_coalescing",
            json!({"ctrlr": "slow", "delay_base_us": delay, "iops_threshold": 1000}),
        );
        let listed = d.ok("vhost_get_controllers", json!({"name": "slow"}));
        assert_eq!(listed[0]["delay_base_us"], delay);
    }
    // The answers came while the drain still waited (the read is held until SIGCONT below):
    // they did not wait for it.
    assert!(!stopper.is_finished(), "the drain ended while the read was still held");
    common::signal_and_wait(back.pid(), libc::SIGCONT, false);
    let (_c, base) = stopper.join().unwrap();
    assert!(base.is_ok(), "GET_VRING_BASE after the drain: {base:?}");
}
