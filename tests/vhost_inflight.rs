//! The inflight area (INFLIGHT_SHMFD) as a hostile frontend hands it over: files smaller than
//! announced (which used to SIGBUS ferryd), unsealed memfds, files that are not memfds, and
//! areas whose headers lie. Each is refused with a clear error while ferryd keeps answering
//! RPCs and serving I/O on the same connection; a well-formed area is still accepted.

mod common;

use common::Ferryd;
use ferry_vhost_initiator::blk::status;
use ferry_vhost_initiator::{Client, Completion, Inflight, Options, Request};
use serde_json::{json, Value};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

const QUEUE_SIZE: u16 = 128;

fn memfd(len: u64, seals: i32) -> File {
    // SAFETY: memfd_create with a static NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"hostile-inflight".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a new fd we own.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len).unwrap();
    if seals != 0 {
        // SAFETY: F_ADD_SEALS takes an integer.
        assert_eq!(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, seals) }, 0);
    }
    f
}

/// One write through queue 0 must complete OK (the session is still served).
fn io_works(c: &mut Client, tag: u64) {
    let mem = c.mem().clone();
    let buf = mem.alloc(4096, 4096).unwrap();
    mem.write(buf, &[tag as u8; 4096]);
    c.queue(0).submit(&Request::Write { sector: tag * 8, bufs: &[(buf, 4096)] }, tag).unwrap();
    c.queue(0).kick();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.is_empty() {
        assert!(Instant::now() < deadline, "the write with tag {tag} never completed");
        if c.queue(0).poll(&mut out) == 0 {
            c.queue(0).wait(10);
        }
    }
    assert_eq!(out, vec![Completion { tag, status: status::OK, len: 1 }]);
}

/// The `n`th "SET_INFLIGHT_FD refused" line of ferryd's log (waited for, with a deadline).
fn refusal(d: &mut Ferryd, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(d.is_running(), "ferryd died (an unchecked inflight fd SIGBUSes it):\n{}", d.log_text());
        let log = d.log_text();
        if let Some(line) = log.lines().filter(|l| l.contains("SET_INFLIGHT_FD refused")).nth(n - 1) {
            return line.to_string();
        }
        assert!(Instant::now() < deadline, "no refusal number {n} in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn hostile_inflight_fds_are_refused_and_ferryd_keeps_serving() {
    let dir = common::scratch_dir("inflight");
    let mut d = Ferryd::start_in(dir.clone(), &["-m", "0x3", "-S", dir.to_str().unwrap()]);
    d.ok("bdev_malloc_create", json!({"name": "M", "num_blocks": 16384, "block_size": 512}));
    d.ok("vhost_create_blk_controller", json!({"ctrlr": "c0", "dev_name": "M"}));
    let opts = Options { num_queues: 1, queue_size: QUEUE_SIZE, mem_size: 16 << 20, hugetlbfs: None };
    let mut c = Client::connect(&dir.join("c0"), &opts).expect("connect");
    io_works(&mut c, 1);

    // What ferryd hands out: a sealed memfd sized for one split queue of 128.
    let (good, good_file) = c.get_inflight_fd(1, QUEUE_SIZE).expect("GET_INFLIGHT_FD");
    assert_eq!((good.mmap_offset, good.num_queues, good.queue_size), (0, 1, QUEUE_SIZE));
    // SAFETY: no pointer arguments.
    let seals = unsafe { libc::fcntl(good_file.as_raw_fd(), libc::F_GET_SEALS) };
    assert_ne!(seals & libc::F_SEAL_SHRINK, 0, "ferryd's own inflight memfd is sealed");
    let size = good.mmap_size;
    let announced = |mmap_size: u64, mmap_offset: u64| Inflight { mmap_size, mmap_offset, ..good };

    let on_disk = dir.join("inflight.img");
    let disk_file = File::options().read(true).write(true).create(true).truncate(true).open(&on_disk).unwrap();
    disk_file.set_len(size).unwrap();
    let bad_version = memfd(size, libc::F_SEAL_SHRINK);
    bad_version.write_all_at(&[9, 0], 8).unwrap();
    let bad_desc_num = memfd(size, libc::F_SEAL_SHRINK);
    bad_desc_num.write_all_at(&1u16.to_le_bytes(), 8).unwrap();
    bad_desc_num.write_all_at(&64u16.to_le_bytes(), 10).unwrap();
    let cases: Vec<(&str, File, Inflight, &str)> = vec![
        (
            "an empty memfd announced as 4096 bytes",
            memfd(0, libc::F_SEAL_SHRINK),
            announced(4096, 0),
            "exceeds the file's size",
        ),
        (
            "a memfd smaller than announced",
            memfd(size / 2, libc::F_SEAL_SHRINK),
            announced(size, 0),
            "exceeds the file's size",
        ),
        (
            "an area past the file's end",
            memfd(size, libc::F_SEAL_SHRINK),
            announced(size, 4096),
            "exceeds the file's size",
        ),
        ("an unsealed memfd", memfd(size, 0), announced(size, 0), "F_SEAL_SHRINK"),
        ("a file that cannot be sealed", disk_file, announced(size, 0), "F_SEAL_SHRINK"),
        ("not a regular file", File::open("/dev/null").unwrap(), announced(size, 0), "not a regular file"),
        ("an area too small for its queues", memfd(size, libc::F_SEAL_SHRINK), announced(64, 0), "too small"),
        ("an unknown header version", bad_version, announced(size, 0), "version 9"),
        ("a header for another ring size", bad_desc_num, announced(size, 0), "desc_num 64"),
    ];
    for (i, (what, file, area, message)) in cases.into_iter().enumerate() {
        let refused = c.set_inflight_fd(&area, &file);
        assert!(refused.is_err(), "{what}: accepted");
        let line = refusal(&mut d, i + 1);
        assert!(line.contains(message), "{what}: the error does not say {message:?}: {line}");
        let info: Value = d.ok("vhost_get_controllers", json!({"name": "c0"}));
        assert_eq!(info[0]["sessions"][0]["running_queues"], 1, "{what}");
        io_works(&mut c, 2 + i as u64);
    }
    // The well-formed area ferryd made is accepted back.
    c.set_inflight_fd(&good, &good_file).expect("the area ferryd made is accepted");
    let info = d.ok("vhost_get_controllers", json!({"name": "c0"}));
    assert_eq!(info[0]["sessions"][0]["inflight_tracking"], true);
    io_works(&mut c, 40);
    drop(c);
    assert!(d.is_running());
}
