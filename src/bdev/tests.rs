//! The bdev core on real reactors: I/O validation, read-only descriptors, claims, hot remove,
//! resize events, statistics, and the modules' data paths (including O_DIRECT bounces).

use super::*;
use crate::bdev::buf::DmaBuf;
use crate::bdev::modules::{malloc, null};
use crate::framework::{self, testing};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

/// An I/O to run: type, range, and data to write (or the read buffer's size).
struct Req {
    io_type: IoType,
    offset: u64,
    blocks: u64,
    data: Vec<u8>,
    /// Misalign the buffer by this many bytes (tests O_DIRECT bounces).
    misalign: usize,
}

impl Req {
    fn new(io_type: IoType, offset: u64, blocks: u64, data: Vec<u8>) -> Self {
        Req { io_type, offset, blocks, data, misalign: 0 }
    }
}

/// Runs `req` on reactor 0 through a fresh descriptor; returns (status, errno, buffer after).
fn run(bdev: &str, writable: bool, req: Req) -> Result<(IoStatus, i32, Vec<u8>), BdevError> {
    let name = bdev.to_string();
    let (tx, rx) = mpsc::channel();
    framework::call(0, move || -> Result<(), BdevError> {
        let desc = open(&name, writable, Box::new(|_, _| {}))?;
        let channel = desc.channel()?;
        let len = req.data.len();
        let mut buf = DmaBuf::new(len + req.misalign, 4096).expect("buffer");
        buf.as_mut_slice()[req.misalign..].copy_from_slice(&req.data);
        let keep: RefCell<Option<(DmaBuf, BdevDesc)>> = RefCell::new(Some((buf, desc)));
        let ptr = keep.borrow().as_ref().map(|(b, _)| b.as_ptr()).unwrap();
        let misalign = req.misalign;
        let mut io = BdevIo::new(Rc::new(move |io: Box<BdevIo>| {
            let (buf, _desc) = keep.borrow_mut().take().expect("one completion");
            let _ = tx.send((io.status(), io.errno(), buf.as_slice()[misalign..].to_vec()));
        }));
        io.prepare(req.io_type, req.offset, req.blocks);
        if len > 0 {
            // SAFETY: the buffer lives in the callback's captured state until the I/O completes.
            unsafe { io.push_iov(ptr.wrapping_add(misalign), len) };
        }
        channel.submit(io);
        Ok(())
    })
    .expect("reactor call")?;
    Ok(rx.recv_timeout(Duration::from_secs(10)).expect("I/O completes"))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn malloc_reads_back_writes_and_unmap_zeroes() {
    testing::reactors();
    malloc::create("t_malloc_rw", 256, 512, None).unwrap();
    let data = pattern(4096, 7);
    let (st, _, _) = run("t_malloc_rw", true, Req::new(IoType::Write, 8, 8, data.clone())).unwrap();
    assert_eq!(st, IoStatus::Success);
    let (st, _, got) = run("t_malloc_rw", false, Req::new(IoType::Read, 8, 8, vec![0; 4096])).unwrap();
    assert_eq!((st, got == data), (IoStatus::Success, true));
    let (st, _, _) = run("t_malloc_rw", true, Req::new(IoType::Unmap, 8, 4, vec![])).unwrap();
    assert_eq!(st, IoStatus::Success);
    let (_, _, got) = run("t_malloc_rw", false, Req::new(IoType::Read, 8, 8, vec![1; 4096])).unwrap();
    assert!(got[..2048].iter().all(|&b| b == 0), "unmapped blocks read zeroes");
    assert_eq!(&got[2048..], &data[2048..], "blocks after the unmap are untouched");
    let (st, _, _) = run("t_malloc_rw", true, Req::new(IoType::Flush, 0, 0, vec![])).unwrap();
    assert_eq!(st, IoStatus::Success);
    let stats = registry::get("t_malloc_rw").unwrap().stats();
    assert_eq!(stats.write.ops.get(), 1);
    assert_eq!(stats.read.ops.get(), 2);
    assert_eq!(stats.read.bytes.get(), 8192);
    assert_eq!(stats.unmap.ops.get(), 1);
    // Every counted I/O is in its type's latency histogram (summed over channels).
    for op in [&stats.read, &stats.write, &stats.unmap, &stats.other] {
        assert_eq!(op.latency.counts().iter().sum::<u64>(), op.ops.get());
    }
    registry::unregister("t_malloc_rw", None).unwrap();
}

#[test]
fn bad_requests_fail_with_an_errno_and_never_reach_the_module() {
    testing::reactors();
    malloc::create("t_bad", 64, 512, None).unwrap();
    let cases = [
        (Req::new(IoType::Read, 60, 8, vec![0; 4096]), libc::EINVAL, "past the end"),
        (Req::new(IoType::Read, u64::MAX - 2, 8, vec![0; 4096]), libc::EINVAL, "offset overflow"),
        (Req::new(IoType::Read, 0, 8, vec![0; 512]), libc::EINVAL, "buffer shorter than the transfer"),
        (Req::new(IoType::Read, 0, 1, vec![0; 1024]), libc::EINVAL, "buffer longer than the transfer"),
        (Req::new(IoType::Read, 0, 0, vec![]), libc::EINVAL, "zero-length read"),
        (Req::new(IoType::Unmap, 0, u64::MAX, vec![]), libc::EINVAL, "huge unmap"),
        (Req::new(IoType::Write, 0, u64::MAX / 256, vec![0; 512]), libc::EINVAL, "length overflow"),
    ];
    for (req, errno, why) in cases {
        let (st, e, _) = run("t_bad", true, req).unwrap();
        assert_eq!((st, e), (IoStatus::Failed, errno), "{why}");
    }
    let (st, e, _) = run("t_bad", false, Req::new(IoType::Write, 0, 1, vec![0; 512])).unwrap();
    assert_eq!((st, e), (IoStatus::Failed, libc::EPERM), "write through a read-only descriptor");
    let stats = registry::get("t_bad").unwrap().stats();
    assert_eq!(stats.read.ops.get() + stats.write.ops.get(), 0);
    assert_eq!(stats.errors.get(), 8);
    registry::unregister("t_bad", None).unwrap();
}

#[test]
fn claims_are_exclusive_for_writers() {
    testing::reactors();
    null::create("t_claim", 64, 512, None).unwrap();
    let mut first = open("t_claim", true, Box::new(|_, _| {})).unwrap();
    first.claim("test_vbdev").unwrap();
    assert_eq!(registry::get("t_claim").unwrap().claimed_by().as_deref(), Some("test_vbdev"));
    assert!(matches!(open("t_claim", true, Box::new(|_, _| {})), Err(BdevError::Claimed { .. })));
    let mut reader = open("t_claim", false, Box::new(|_, _| {})).expect("readers may still open it");
    assert!(matches!(reader.claim("other"), Err(BdevError::Claimed { .. })));
    drop(first);
    assert!(registry::get("t_claim").unwrap().claimed_by().is_none());
    open("t_claim", true, Box::new(|_, _| {})).expect("writable again once released");
    registry::unregister("t_claim", None).unwrap();
}

#[test]
fn removal_and_resize_reach_open_descriptors_and_fail_new_io() {
    testing::reactors();
    null::create("t_remove", 64, 512, None).unwrap();
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let desc = framework::call(1, move || {
        open(
            "t_remove",
            true,
            Box::new(move |ev, b| {
                let _ = tx.lock().unwrap().send((ev, b.name().to_string(), framework::current_index()));
            }),
        )
        .unwrap()
    })
    .unwrap();
    registry::get("t_remove").unwrap().resize(128).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), (BdevEvent::Resize, "t_remove".into(), Some(1)));
    let removed = registry::unregister("t_remove", None).unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        (BdevEvent::Remove, "t_remove".into(), Some(1)),
        "the event runs on the reactor that opened the descriptor"
    );
    assert!(registry::get("t_remove").is_none());
    assert!(removed.is_removed());
    assert!(matches!(run("t_remove", false, Req::new(IoType::Read, 0, 1, vec![0; 512])), Err(BdevError::NotFound(_))));
    let err = framework::call(0, move || desc.channel().err()).unwrap();
    assert!(matches!(err, Some(BdevError::Removed(_))));
}

#[test]
fn names_aliases_and_uuids_are_unique() {
    testing::reactors();
    let a = null::create("t_names", 8, 512, None).unwrap();
    assert!(matches!(null::create("t_names", 8, 512, None), Err(BdevError::AlreadyExists(_))));
    registry::add_alias(&a, "t_names_alias").unwrap();
    assert!(matches!(null::create("t_names_alias", 8, 512, None), Err(BdevError::AlreadyExists(_))));
    assert!(matches!(null::create("t_other", 8, 512, Some(a.uuid())), Err(BdevError::AlreadyExists(_))));
    assert!(registry::get(&a.uuid().to_string()).unwrap().same(&a));
    assert!(registry::get("t_names_alias").unwrap().same(&a));
    for bad in ["", "has space", "tab\t", &"x".repeat(256)] {
        assert!(matches!(null::create(bad, 8, 512, None), Err(BdevError::InvalidParam(_))), "{bad:?}");
    }
    for (blocks, bs) in [(0, 512), (8, 0), (8, 1000), (8, 256), (8, 1 << 17), (u64::MAX, 4096)] {
        assert!(matches!(null::create("t_geom", blocks, bs, None), Err(BdevError::InvalidParam(_))), "{blocks}x{bs}");
    }
    registry::unregister("t_names", None).unwrap();
}

#[test]
fn null_reads_zeroes_and_discards_writes() {
    testing::reactors();
    null::create("t_null", 64, 512, None).unwrap();
    let (st, _, _) = run("t_null", true, Req::new(IoType::Write, 0, 1, vec![9; 512])).unwrap();
    assert_eq!(st, IoStatus::Success);
    let (st, _, got) = run("t_null", false, Req::new(IoType::Read, 0, 1, vec![0xff; 512])).unwrap();
    assert_eq!(st, IoStatus::Success);
    assert!(got.iter().all(|&b| b == 0));
    registry::unregister("t_null", None).unwrap();
}

fn uring_bdev(name: &str, mib: u64) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("ferry-unit-{name}-{}.img", std::process::id()));
    std::fs::File::create(&path).unwrap().set_len(mib << 20).unwrap();
    crate::rpc::call("bdev_uring_create", Some(serde_json::json!({"name": name, "filename": path})))
        .map_err(|e| e.message)
        .unwrap();
    path
}

#[test]
fn uring_moves_data_with_aligned_and_unaligned_buffers() {
    testing::reactors();
    crate::app::mark_initialised();
    let path = uring_bdev("t_uring", 4);
    for (misalign, seed) in [(0, 1u8), (1, 2), (7, 3)] {
        let data = pattern(8192, seed);
        let mut w = Req::new(IoType::Write, 16, 16, data.clone());
        w.misalign = misalign;
        assert_eq!(run("t_uring", true, w).unwrap().0, IoStatus::Success, "write misaligned by {misalign}");
        let mut r = Req::new(IoType::Read, 16, 16, vec![0; 8192]);
        r.misalign = misalign;
        let (st, _, got) = run("t_uring", false, r).unwrap();
        assert_eq!(st, IoStatus::Success);
        assert!(got == data, "read back misaligned by {misalign}");
    }
    assert_eq!(run("t_uring", true, Req::new(IoType::Flush, 0, 0, vec![])).unwrap().0, IoStatus::Success);
    let (st, _, _) = run("t_uring", true, Req::new(IoType::WriteZeroes, 16, 8, vec![])).unwrap();
    assert_eq!(st, IoStatus::Success);
    let (_, _, got) = run("t_uring", false, Req::new(IoType::Read, 16, 16, vec![1; 8192])).unwrap();
    assert!(got[..4096].iter().all(|&b| b == 0), "write-zeroes range reads zeroes");
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(&on_disk[16 * 512 + 4096..32 * 512], &pattern(8192, 3)[4096..], "the data is in the file");
    registry::unregister("t_uring", None).unwrap();
    let _ = std::fs::remove_file(path);
}
