//! Every vhost-user frontend Ferry must serve, as each one attaches: QEMU, SPDK's virtio-user,
//! DPDK's virtio-user, cloud-hypervisor and crosvm, replayed message by message (orders,
//! payload sizes, the checks each makes on replies) by `ferry_vhost_initiator::frontends`,
//! on a one-core controller with QEMU's default queue count for a 4-vCPU guest. Each then
//! moves verified data through every queue it enabled.

mod common;

use common::Ferryd;
use ferry_vhost_initiator::blk::status;
use ferry_vhost_initiator::frontends::{connect_blk, sizes};
use ferry_vhost_initiator::wire::req;
use ferry_vhost_initiator::{Client, Completion, FrontendKind, Options, Request};
use serde_json::json;
use std::time::{Duration, Instant};

/// QEMU's `num-queues` default for a 4-vCPU guest (one request queue per vCPU).
const VCPUS: u16 = 4;

fn one_core_controller() -> Ferryd {
    let dir = common::scratch_dir("vfront");
    let d = Ferryd::start_in(dir.clone(), &["-m", "0x1", "-S", dir.to_str().unwrap()]);
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 16384, "block_size": 512}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "c0", "dev_name": "M", "cpumask": "0x1"}));
    d
}

fn wait(client: &mut Client, q: usize) -> Completion {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    while out.is_empty() {
        assert!(Instant::now() < deadline, "queue {q}: no completion");
        if client.queue(q).poll(&mut out) == 0 {
            client.queue(q).wait(10);
        }
    }
    out[0]
}

/// Writes a pattern through queue `q` and reads it back through the same queue.
fn round_trip(client: &mut Client, q: usize) {
    let mem = client.mem().clone();
    let (a, b) = (mem.alloc(4096, 4096).unwrap(), mem.alloc(4096, 4096).unwrap());
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 13 + q as u32) as u8).collect();
    mem.write(a, &pattern);
    let sector = 64 * q as u64;
    client.queue(q).submit(&Request::Write { sector, bufs: &[(a, 4096)] }, 1).unwrap();
    client.queue(q).kick();
    assert_eq!(wait(client, q), Completion { tag: 1, status: status::OK, len: 1 }, "queue {q}: write");
    client.queue(q).submit(&Request::Read { sector, bufs: &[(b, 4096)] }, 2).unwrap();
    client.queue(q).kick();
    assert_eq!(wait(client, q), Completion { tag: 2, status: status::OK, len: 4097 }, "queue {q}: read");
    let mut back = vec![0u8; 4096];
    mem.read(b, &mut back);
    assert!(back == pattern, "queue {q}: data read back differs");
}

#[test]
fn every_frontend_attaches_with_its_own_message_sizes_and_moves_data_on_every_queue() {
    let d = one_core_controller();
    let opts = Options { num_queues: VCPUS, queue_size: 128, mem_size: 8 << 20, hugetlbfs: None };
    for kind in FrontendKind::ALL {
        let (mut client, log) = connect_blk(&d.dir.join("c0"), kind, &opts).unwrap_or_else(|e| panic!("{e}"));
        // Every GET_CONFIG reply has exactly the request's payload size (the spec's MUST).
        let configs = sizes(&log, req::GET_CONFIG);
        assert!(kind == FrontendKind::Dpdk || !configs.is_empty(), "{kind:?} reads the config space");
        for (sent, replied) in &configs {
            assert_eq!(Some(*sent), *replied, "{kind:?}: GET_CONFIG reply size");
        }
        if kind == FrontendKind::Spdk {
            assert!(configs.iter().all(|c| *c == (268, Some(268))), "SPDK's 12 + 256 bytes: {configs:?}");
        }
        let cfg = client.config();
        if kind != FrontendKind::Dpdk {
            assert_eq!((cfg.capacity, cfg.blk_size), (16384, 512), "{kind:?}: config space");
            assert!(cfg.num_queues >= VCPUS, "{kind:?}: config num_queues {}", cfg.num_queues);
        }
        if let Some(n) = client.device_queues() {
            assert!(n >= VCPUS as u64, "{kind:?}: GET_QUEUE_NUM {n} < {VCPUS}");
        }
        // DPDK enables queue pair 0 only; the others start every queue.
        let enabled = if kind == FrontendKind::Dpdk { 2 } else { VCPUS as usize };
        for q in 0..enabled {
            round_trip(&mut client, q);
        }
        for q in 0..VCPUS as usize {
            client.stop_queue(q).unwrap_or_else(|e| panic!("{kind:?}: GET_VRING_BASE {q}: {e}"));
        }
        drop(client);
        // The controller listens again for the next frontend.
        let deadline = Instant::now() + Duration::from_secs(10);
        while d.ok("vhost_get_controllers", json!({"name": "c0"}))[0]["sessions"]
            .as_array()
            .is_some_and(|s| !s.is_empty())
        {
            assert!(Instant::now() < deadline, "{kind:?}: the session never ended");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
