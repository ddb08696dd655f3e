//! The initiator against a real peer: qemu-storage-daemon's vhost-user-blk export on a file.
//! Fails (does not skip) when qemu-storage-daemon is missing: scripts/setup.sh installs it.

use ferry_vhost_initiator::blk::status;
use ferry_vhost_initiator::{Client, Completion, Options, Request};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Qsd(Child);

/// The test's directory, removed when dropped (also when the test fails).
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Qsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait(c: &mut Client, q: usize, n: usize) -> Vec<Completion> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        assert!(Instant::now() < deadline, "only {} of {n} completions", out.len());
        if c.queue(q).poll(&mut out) == 0 {
            c.queue(q).wait(10);
        }
    }
    out
}

#[test]
fn reads_writes_flushes_and_discards_against_qemu_storage_daemon() {
    let dir = std::env::temp_dir().join(format!("ferry-qsd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let scratch = Scratch(dir.clone());
    let img = dir.join("disk.img");
    std::fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
    let sock = dir.join("qsd.sock");
    let child = Command::new("qemu-storage-daemon")
        .arg("--blockdev")
        .arg(format!("driver=file,node-name=file0,filename={},discard=unmap", img.display()))
        .args(["--blockdev", "driver=raw,node-name=disk0,file=file0,discard=unmap"])
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path={},writable=on,num-queues=2",
            sock.display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-storage-daemon must be installed (package qemu-utils)");
    let qsd = Qsd(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "qemu-storage-daemon did not create its socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut c = Client::connect(&sock, &Options { num_queues: 2, queue_size: 128, mem_size: 8 << 20, hugetlbfs: None })
        .expect("connect to qemu-storage-daemon");
    assert_eq!(c.config().capacity, (64 << 20) / 512);
    let mem = c.mem().clone();
    let (a, b) = (mem.alloc(16384, 4096).unwrap(), mem.alloc(16384, 4096).unwrap());
    let pattern: Vec<u8> = (0..16384u32).map(|i| (i % 253) as u8).collect();
    mem.write(a, &pattern);
    c.queue(0).submit(&Request::Write { sector: 64, bufs: &[(a, 8192), (a + 8192, 8192)] }, 1).unwrap();
    c.queue(0).kick();
    assert_eq!(wait(&mut c, 0, 1)[0].status, status::OK);
    c.queue(1).submit(&Request::Flush, 2).unwrap();
    c.queue(1).submit(&Request::Read { sector: 64, bufs: &[(b, 16384)] }, 3).unwrap();
    c.queue(1).kick();
    let done = wait(&mut c, 1, 2);
    assert!(done.iter().all(|x| x.status == status::OK), "{done:?}");
    let mut back = vec![0u8; 16384];
    mem.read(b, &mut back);
    assert!(back == pattern, "read back differs");
    let on_disk = std::fs::read(&img).unwrap();
    assert!(on_disk[64 * 512..64 * 512 + 16384] == pattern[..], "the file holds what was written");
    c.queue(0).submit(&Request::Discard { sector: 64, sectors: 8 }, 4).unwrap();
    c.queue(0).kick();
    assert_eq!(wait(&mut c, 0, 1)[0].status, status::OK);
    c.queue(0).submit(&Request::Read { sector: 1 << 30, bufs: &[(b, 512)] }, 5).unwrap();
    c.queue(0).kick();
    assert_eq!(wait(&mut c, 0, 1)[0].status, status::IOERR, "past the end");
    // The daemon goes before its directory.
    drop(c);
    drop(qsd);
    drop(scratch);
}
