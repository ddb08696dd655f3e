//! Dirty logging for live migration (LOG_SHMFD, SET_LOG_BASE, VHOST_F_LOG_ALL), driven by the
//! project's initiator as QEMU drives it: while logging is on, a read's data pages, its
//! status byte's page and the used ring's page are marked, and nothing else; while it is
//! off, nothing is marked.

mod common;

use common::Ferryd;
use ferry_vhost_initiator::blk::status;
use ferry_vhost_initiator::{Client, Completion, Options, Request};
use serde_json::json;
use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

const PAGE: u64 = 4096;
const MEM: usize = 16 << 20;
/// One bit per 4 KiB page of the shared memory.
const LOG_BYTES: u64 = (MEM as u64 / PAGE) / 8;

/// A sealed memfd, as QEMU's vhost log.
fn log_memfd(len: u64) -> File {
    // SAFETY: memfd_create with a static name.
    let fd = unsafe { libc::memfd_create(c"vhost-log".as_ptr(), libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0);
    // SAFETY: a fresh fd we own.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len).unwrap();
    // SAFETY: F_ADD_SEALS on our own memfd.
    assert_eq!(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW) }, 0);
    f
}

/// The pages whose bits are set (and clears the log, as QEMU's sync does).
fn take_dirty(log: &File) -> BTreeSet<u64> {
    let mut bytes = vec![0u8; LOG_BYTES as usize];
    log.read_exact_at(&mut bytes, 0).unwrap();
    log.write_all_at(&vec![0u8; bytes.len()], 0).unwrap();
    let mut pages = BTreeSet::new();
    for (i, b) in bytes.iter().enumerate() {
        for bit in 0..8 {
            if b & (1 << bit) != 0 {
                pages.insert(i as u64 * 8 + bit);
            }
        }
    }
    pages
}

fn read(c: &mut Client, sector: u64, buf: u64, len: u32, tag: u64) -> u16 {
    let head = c.queue(0).submit(&Request::Read { sector, bufs: &[(buf, len)] }, tag).unwrap();
    c.queue(0).kick();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    while out.is_empty() {
        assert!(Instant::now() < deadline, "no completion");
        if c.queue(0).poll(&mut out) == 0 {
            c.queue(0).wait(10);
        }
    }
    assert_eq!(out[0], Completion { tag, status: status::OK, len: len + 1 });
    head
}

fn pages(gpa: u64, len: u64) -> impl Iterator<Item = u64> {
    gpa / PAGE..=(gpa + len - 1) / PAGE
}

#[test]
fn a_write_while_logging_sets_exactly_its_pages_and_nothing_when_off() {
    let dir = common::scratch_dir("vlog");
    let d = Ferryd::start_in(dir.clone(), &["-m", "0x1", "-S", dir.to_str().unwrap()]);
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 16384, "block_size": 512}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "c0", "dev_name": "M"}));
    let opts = Options { num_queues: 1, queue_size: 64, mem_size: MEM, hugetlbfs: None };
    let mut c = Client::connect(&dir.join("c0"), &opts).unwrap();
    let used = c.queue(0).ring().addresses().2;
    let buf = c.mem().alloc(3 * PAGE as usize, PAGE as usize).unwrap() + 100; // straddles 3 pages
    let len = 2 * PAGE as u32;

    let log = log_memfd(LOG_BYTES);
    read(&mut c, 0, buf, len, 1);
    c.start_dirty_log(&log, LOG_BYTES, 0).unwrap();
    assert!(take_dirty(&log).is_empty(), "nothing is logged before logging starts");

    let head = read(&mut c, 8, buf, len, 2);
    let status = c.queue(0).status_addr(head);
    let want: BTreeSet<u64> = pages(buf, len as u64).chain(pages(status, 1)).chain(pages(used, 6 + 8 * 64)).collect();
    assert_eq!(take_dirty(&log), want, "data pages, the status byte's page and the used ring, nothing else");

    c.set_log_all(false).unwrap();
    read(&mut c, 16, buf, len, 3);
    assert!(take_dirty(&log).is_empty(), "nothing is logged once logging is off");
}
