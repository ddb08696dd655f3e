//! The bdev core on real reactors: I/O validation, read-only descriptors, claims, hot remove,
//! resize events, statistics, and the modules' data paths (including O_DIRECT bounces).

use super::*;
use crate::bdev::buf::DmaBuf;
use crate::bdev::modules::{malloc, null};
use crate::framework::{self, testing};
use std::cell::RefCell;
use std::collections::HashMap;
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

/// What the stacked test bdev saw at the base level of a forwarded I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BaseView {
    ctx: u64,
    offset_blocks: u64,
    num_blocks: u64,
    block_size: u32,
    errno: i32,
}

thread_local! {
    /// Base views by base bdev name: the tests run in parallel on the same reactors, so each
    /// stacked bdev pair keeps its own.
    static BASE_VIEWS: RefCell<HashMap<String, Vec<BaseView>>> = RefCell::new(HashMap::new());
}

/// A stacked bdev `SHIFT` base blocks into its base, `scale` base blocks per block of its own
/// (8: 4 KiB blocks over 512-byte ones), passing I/O on with `BdevChannel::forward` (the
/// pattern passthru and lvol use), or first trying `BdevChannel::remap` (`remap`: an lvol's
/// owned cluster).
struct StackedBackend {
    base: String,
    scale: u64,
    remap: bool,
}
const SHIFT: u64 = 16;
const MODULE_CTX: u64 = 0xfeed;

struct StackedChannel {
    base: BdevChannel,
    _desc: BdevDesc,
    on_done: IoCallback,
    scale: u64,
    remap: bool,
}

impl BackendChannel for StackedChannel {
    fn submit(&self, io: Box<BdevIo>) {
        let at = io.offset_blocks * self.scale + SHIFT;
        let io = if self.remap {
            match self.base.remap(io, at) {
                Ok(()) => return,
                Err(io) => io,
            }
        } else {
            io
        };
        // io.ctx is the module's (MODULE_CTX) while forwarded.
        self.base.forward(io, at, MODULE_CTX, self.on_done.clone());
    }
}

impl BdevBackend for StackedBackend {
    fn module(&self) -> &'static str {
        "t_stacked"
    }
    fn product_name(&self) -> &'static str {
        "stacked test bdev"
    }
    fn supports(&self, _io_type: IoType) -> bool {
        true
    }
    fn create_channel(&self, _bdev: &Bdev) -> Result<Box<dyn BackendChannel>, BdevError> {
        let desc = open(&self.base, true, Box::new(|_, _| {}))?;
        let base = desc.channel()?;
        let base_name = self.base.clone();
        let on_done: IoCallback = Rc::new(move |mut io: Box<BdevIo>| {
            let view = BaseView {
                ctx: io.ctx,
                offset_blocks: io.offset_blocks,
                num_blocks: io.num_blocks,
                block_size: io.block_size(),
                errno: io.errno(),
            };
            BASE_VIEWS.with(|v| v.borrow_mut().entry(base_name.clone()).or_default().push(view));
            assert!(io.unforward(), "a forwarded I/O unforwards");
            let status = io.status();
            io.complete_inline(status);
        });
        Ok(Box::new(StackedChannel { base, _desc: desc, on_done, scale: self.scale, remap: self.remap }))
    }
    fn config(&self, _bdev: &Bdev) -> Option<(&'static str, serde_json::Value)> {
        None
    }
}

/// Submits one I/O with `ctx` on reactor 0 to `bdev`; returns what its callback saw
/// (status, errno, ctx, offset, blocks, block size) and the buffer.
/// What a submitter's callback saw: status, errno, ctx, offset, blocks, block size.
type Seen = (IoStatus, i32, u64, u64, u64, u32);

fn run_ctx(bdev: &str, req: Req, ctx: u64) -> (Seen, Vec<u8>) {
    let name = bdev.to_string();
    let (tx, rx) = mpsc::channel();
    framework::call(0, move || {
        let desc = open(&name, true, Box::new(|_, _| {})).unwrap();
        let channel = desc.channel().unwrap();
        let len = req.data.len();
        let mut buf = DmaBuf::new(len.max(1), 4096).expect("buffer");
        buf.as_mut_slice()[..len].copy_from_slice(&req.data);
        let ptr = buf.as_ptr();
        let keep = RefCell::new(Some((buf, desc)));
        let mut io = BdevIo::new(Rc::new(move |io: Box<BdevIo>| {
            let (buf, _d) = keep.borrow_mut().take().expect("one completion");
            let seen = (io.status(), io.errno(), io.ctx, io.offset_blocks, io.num_blocks, io.block_size());
            let _ = tx.send((seen, buf.as_slice()[..len].to_vec()));
        }));
        io.prepare(req.io_type, req.offset, req.blocks);
        io.ctx = ctx;
        if len > 0 {
            // SAFETY: the buffer lives in the callback's captured state until the I/O completes.
            unsafe { io.push_iov(ptr, len) };
        }
        channel.submit(io);
    })
    .unwrap();
    rx.recv_timeout(Duration::from_secs(10)).expect("I/O completes")
}

/// What the stacked bdev over `base` saw of its forwarded I/O since the last call.
fn take_base_views(base: &'static str) -> Vec<BaseView> {
    framework::call(0, move || BASE_VIEWS.with(|v| v.borrow_mut().remove(base).unwrap_or_default())).unwrap()
}

#[test]
fn forwarded_io_is_counted_twice_keeps_ctx_and_comes_back_as_submitted() {
    testing::reactors();
    malloc::create("t_fwd_base", 1024, 512, None).unwrap();
    let props = BdevProps { name: "t_fwd_top".into(), uuid: None, block_size: 4096, num_blocks: 64 };
    // It tries remap first, which gives every I/O back here (another block size): forwarded.
    let stacked = StackedBackend { base: "t_fwd_base".into(), scale: 8, remap: true };
    registry::register(props, Box::new(stacked)).unwrap();
    let _ = take_base_views("t_fwd_base");

    // A write of 2 upper blocks at upper block 3 lands at base block 3*8+16, 16 base blocks.
    let data = pattern(8192, 3);
    let (seen, _) = run_ctx("t_fwd_top", Req::new(IoType::Write, 3, 2, data.clone()), 77);
    assert_eq!(seen, (IoStatus::Success, 0, 77, 3, 2, 4096), "the submitter gets its own I/O back");
    let views = take_base_views("t_fwd_base");
    assert_eq!(
        views,
        vec![BaseView { ctx: MODULE_CTX, offset_blocks: 40, num_blocks: 16, block_size: 512, errno: 0 }],
        "the base saw its own geometry and the module's ctx"
    );
    let (seen, got) =
        run("t_fwd_base", false, Req::new(IoType::Read, 40, 16, vec![0; 8192])).map(|(s, e, b)| ((s, e), b)).unwrap();
    assert_eq!((seen, got == data), ((IoStatus::Success, 0), true), "data landed at the shifted place");
    let (seen, got) = run_ctx("t_fwd_top", Req::new(IoType::Read, 3, 2, vec![0; 8192]), 5);
    assert_eq!((seen, got == data), ((IoStatus::Success, 0, 5, 3, 2, 4096), true));
    let _ = take_base_views("t_fwd_base");

    let top = registry::get("t_fwd_top").unwrap().stats();
    let base = registry::get("t_fwd_base").unwrap().stats();
    assert_eq!((top.write.ops.get(), top.write.bytes.get()), (1, 8192), "upper bdev counts the write");
    assert_eq!((base.write.ops.get(), base.write.bytes.get()), (1, 8192), "base counts it too");
    assert_eq!((top.read.ops.get(), top.read.bytes.get()), (1, 8192));
    assert_eq!((base.read.ops.get(), base.read.bytes.get()), (2, 16384), "the forwarded read and ours");

    // A range lock on the upper bdev waits for a forwarded I/O that is still at the base:
    // hold the base range with a lock of our own so the forwarded read queues there.
    let (ev_tx, ev_rx) = mpsc::channel::<&'static str>();
    hold_base_lock("t_fwd_base", 1024);
    let io_tx = ev_tx.clone();
    let reader = std::thread::spawn(move || {
        let r = run_ctx("t_fwd_top", Req::new(IoType::Read, 3, 2, vec![0; 8192]), 9);
        let _ = io_tx.send("io done");
        r
    });
    // Observable: the forwarded read waits in the base channel for our base lock.
    wait_queued_for_locks("t_fwd_base", "forwarded read never reached the base");
    // When the upper lock is granted, how many reads the upper bdev has completed: the
    // forwarded read counts there (in its completion, before the lock can be granted) only if
    // the lock waited for it. (The reader thread's "io done" may arrive after the grant: it is
    // sent once the completion has crossed to that thread.)
    let (locked_tx, locked_rx) = mpsc::channel::<u64>();
    framework::call(1, move || {
        let desc = open("t_fwd_top", false, Box::new(|_, _| {})).unwrap();
        desc.channel().unwrap().lock_range(0, 64, move |lock| {
            let _ = locked_tx.send(registry::get("t_fwd_top").unwrap().stats().read.ops.get());
            drop(lock);
            drop(desc);
        });
    })
    .unwrap();
    // Let the lock's messages go round every reactor before the base lets the read go.
    reactors_go_round(3);
    release_base_lock("t_fwd_base");
    let reads_at_lock = locked_rx.recv_timeout(Duration::from_secs(10)).expect("upper lock granted");
    assert_eq!(reads_at_lock, 2, "the upper lock waited for the forwarded read");
    assert_eq!(ev_rx.recv_timeout(Duration::from_secs(10)), Ok("io done"));
    let (seen, got) = reader.join().unwrap();
    assert_eq!((seen, got == data), ((IoStatus::Success, 0, 9, 3, 2, 4096), true));
    let _ = take_base_views("t_fwd_base");

    // A failure at the base arrives with the base's errno: the base is gone (ENODEV), the
    // upper bdev is not, so nobody but the base can have said so. A channel of the upper
    // bdev is kept open on reactor 0 so its base channel outlives the base.
    keep_open("t_fwd_top", true);
    registry::unregister("t_fwd_base", None).unwrap();
    let (seen, _) = run_ctx("t_fwd_top", Req::new(IoType::Read, 0, 1, vec![0; 4096]), 11);
    assert_eq!(seen, (IoStatus::Failed, libc::ENODEV, 11, 0, 1, 4096));
    let views = take_base_views("t_fwd_base");
    assert_eq!(views.len(), 1);
    assert_eq!((views[0].errno, views[0].offset_blocks, views[0].num_blocks), (libc::ENODEV, 16, 8));
    let top = registry::get("t_fwd_top").unwrap().stats();
    assert_eq!(top.errors.get(), 1, "the upper bdev counts the failure");
    keep_open("t_fwd_top", false);
    registry::unregister("t_fwd_top", None).unwrap();
}

/// Lets every reactor handle what was sent to it, `times` round (a range lock's messages).
fn reactors_go_round(times: usize) {
    for _ in 0..times {
        for r in 0..framework::reactors().len() {
            framework::call(r, || ()).unwrap();
        }
    }
}

/// Takes a range lock on blocks `0..blocks` of `bdev` from reactor 0 and keeps it (in
/// `BASE_LOCK`, by bdev name: tests run in parallel) until [`release_base_lock`].
fn hold_base_lock(bdev: &'static str, blocks: u64) {
    let (held_tx, held_rx) = mpsc::channel();
    framework::call(0, move || {
        let desc = open(bdev, false, Box::new(|_, _| {})).unwrap();
        desc.channel().unwrap().lock_range(0, blocks, move |lock| {
            let _ = held_tx.send(());
            BASE_LOCK.with(|l| l.borrow_mut().insert(bdev, (lock, desc)));
        });
    })
    .unwrap();
    held_rx.recv_timeout(Duration::from_secs(10)).expect("base lock granted");
}

fn release_base_lock(bdev: &'static str) {
    framework::call(0, move || BASE_LOCK.with(|l| drop(l.borrow_mut().remove(bdev)))).unwrap();
}

/// Waits (bounded) until one I/O waits in `bdev`'s channel on reactor 0 for a range lock.
fn wait_queued_for_locks(bdev: &'static str, what: &str) {
    super::test_gate::wait_until(what, || {
        let queued = framework::call(0, move || {
            let d = open(bdev, false, Box::new(|_, _| {})).unwrap();
            d.channel().unwrap().queued_for_locks()
        });
        queued.unwrap() == 1
    });
}

/// Asks for a range lock on `bdev` from reactor 1; the receiver gets a message once it is
/// granted (the lock is dropped at once).
fn lock_granted(bdev: &'static str, offset: u64, blocks: u64) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel();
    framework::call(1, move || {
        let desc = open(bdev, false, Box::new(|_, _| {})).unwrap();
        desc.channel().unwrap().lock_range(offset, blocks, move |lock| {
            let _ = tx.send(());
            drop(lock);
            drop(desc);
        });
    })
    .unwrap();
    rx
}

#[test]
fn remapped_io_is_counted_at_both_levels_in_one_pass_and_comes_back_as_submitted() {
    use super::test_gate;
    testing::reactors();
    let gate = test_gate::create_with("t_remap_base", 1024, 512, false);
    let props = BdevProps { name: "t_remap_top".into(), uuid: None, block_size: 512, num_blocks: 512 };
    let stacked = StackedBackend { base: "t_remap_base".into(), scale: 1, remap: true };
    registry::register(props, Box::new(stacked)).unwrap();
    let _ = take_base_views("t_remap_base");
    // The upper channel on reactor 0 stays open throughout, so its remapped I/O's counters
    // are live ones (a channel's close retires them into both bdevs, as the forwarded read
    // at the end checks).
    keep_open("t_remap_top", true);

    // A write of 16 blocks at block 3 lands at base block 3 + SHIFT; no module callback runs
    // (the bdev layer completes both levels), and the submitter gets its own I/O back.
    let data = pattern(8192, 5);
    let (seen, _) = run_ctx("t_remap_top", Req::new(IoType::Write, 3, 16, data.clone()), 77);
    assert_eq!(seen, (IoStatus::Success, 0, 77, 3, 16, 512), "the submitter gets its own I/O back");
    assert_eq!(take_base_views("t_remap_base"), vec![], "remapped, not forwarded: no module callback");
    assert_eq!(gate.arrivals().last().copied(), Some((IoType::Write, 3 + SHIFT, 16)));
    assert!(gate.contents(3 + SHIFT, 16) == data, "the data is at the remapped place");
    let (seen, got) = run_ctx("t_remap_top", Req::new(IoType::Read, 3, 16, vec![0; 8192]), 6);
    assert_eq!((seen, got == data), ((IoStatus::Success, 0, 6, 3, 16, 512), true));
    let top = registry::get("t_remap_top").unwrap().stats();
    let base = registry::get("t_remap_base").unwrap().stats();
    assert_eq!((top.write.ops.get(), top.write.bytes.get()), (1, 8192), "the upper bdev counts the write");
    assert_eq!((base.write.ops.get(), base.write.bytes.get()), (1, 8192), "the base counts it too");
    assert_eq!((top.read.ops.get(), base.read.ops.get()), (1, 1));
    for (name, s) in [("upper", &top), ("base", &base)] {
        let w = &s.write;
        assert_eq!(w.latency.counts().iter().sum::<u64>(), 1, "the {name}'s histogram holds the write");
        assert!(w.max_latency_ticks.get() > 0 && w.min_latency_ticks.get() == w.max_latency_ticks.get(), "{name}");
    }
    assert_eq!(top.write.latency_ticks.get(), base.write.latency_ticks.get(), "one latency, both levels");
    // Recorded once, in counters both bdevs list. Per channel the base shows one entry per
    // reactor, as SPDK's one per thread; a reset through the base leaves the upper bdev's view.
    let per_channel =
        super::rpc::bdev_get_iostat(Some(serde_json::json!({"name": "t_remap_base", "per_channel": true})))
            .expect("bdev_get_iostat");
    let channels = per_channel["channels"].as_array().expect("channels");
    let mut threads: Vec<u64> = channels.iter().map(|c| c["thread_id"].as_u64().unwrap()).collect();
    threads.dedup();
    assert_eq!(threads.len(), channels.len(), "one entry per reactor: {per_channel}");
    assert_eq!(channels.iter().map(|c| c["num_write_ops"].as_u64().unwrap()).sum::<u64>(), 1, "{per_channel}");
    let base_bdev = registry::get("t_remap_base").unwrap();
    base_bdev.take_stats(super::stats::ResetMode::All).unwrap();
    assert_eq!(
        (base_bdev.stats().write.ops.get(), base_bdev.stats().read.ops.get()),
        (0, 0),
        "the base's view is reset"
    );
    let top = registry::get("t_remap_top").unwrap().stats();
    assert_eq!((top.write.ops.get(), top.read.ops.get(), top.write.bytes.get()), (1, 1, 8192), "the upper's is not");
    assert!(top.write.max_latency_ticks.get() > 0, "nor its extremes");

    // A remapped write held at the base is in flight at both levels: a range lock on either
    // waits for it.
    gate.hold(IoType::Write, true);
    let writer =
        std::thread::spawn(move || run_ctx("t_remap_top", Req::new(IoType::Write, 3, 16, pattern(8192, 6)), 8));
    test_gate::wait_until("the remapped write is held at the base", || gate.parked() == 1);
    let top_lock = lock_granted("t_remap_top", 0, 512);
    let base_lock = lock_granted("t_remap_base", 0, 1024);
    // Let the locks' messages go round every reactor before looking.
    reactors_go_round(3);
    assert!(top_lock.try_recv().is_err(), "the upper lock waits for the remapped write");
    assert!(base_lock.try_recv().is_err(), "the base lock waits for it too");
    assert_eq!(take_base_views("t_remap_base"), vec![], "it was remapped, not forwarded");
    gate.hold(IoType::Write, false);
    gate.release(0);
    top_lock.recv_timeout(Duration::from_secs(10)).expect("upper lock granted once the write is done");
    base_lock.recv_timeout(Duration::from_secs(10)).expect("base lock granted once the write is done");
    let (seen, _) = writer.join().unwrap();
    assert_eq!(seen, (IoStatus::Success, 0, 8, 3, 16, 512));
    let writes = |name: &str| registry::get(name).unwrap().stats().write.ops.get();
    assert_eq!((writes("t_remap_top"), writes("t_remap_base")), (2, 1), "both levels count on after the reset");

    // Where the base range is locked by someone else, the I/O is forwarded instead (and waits
    // there for the lock).
    hold_base_lock("t_remap_base", 1024);
    let reader = std::thread::spawn(|| run_ctx("t_remap_top", Req::new(IoType::Read, 3, 16, vec![0; 8192]), 9));
    wait_queued_for_locks("t_remap_base", "the read never waited at the base for the lock");
    release_base_lock("t_remap_base");
    let (seen, got) = reader.join().unwrap();
    assert_eq!((seen, got == pattern(8192, 6)), ((IoStatus::Success, 0, 9, 3, 16, 512), true));
    assert_eq!(take_base_views("t_remap_base").len(), 1, "that read was forwarded");
    // So it is while any range of the base is locked (the remap checks no more than that):
    // forwarded, and not held back by a lock elsewhere.
    hold_base_lock("t_remap_base", SHIFT);
    let (seen, got) = run_ctx("t_remap_top", Req::new(IoType::Read, 3, 16, vec![0; 8192]), 10);
    assert_eq!((seen, got == pattern(8192, 6)), ((IoStatus::Success, 0, 10, 3, 16, 512), true));
    assert_eq!(take_base_views("t_remap_base").len(), 1, "forwarded past a lock on other blocks");
    release_base_lock("t_remap_base");
    let (seen, _) = run_ctx("t_remap_top", Req::new(IoType::Read, 3, 16, vec![0; 8192]), 11);
    assert_eq!(seen, (IoStatus::Success, 0, 11, 3, 16, 512));
    assert_eq!(take_base_views("t_remap_base"), vec![], "remapped again once no range is locked");
    keep_open("t_remap_top", false);
    assert_eq!((writes("t_remap_top"), writes("t_remap_base")), (2, 1), "kept at both levels once closed");
    registry::unregister("t_remap_top", None).unwrap();
    registry::unregister("t_remap_base", None).unwrap();
}

/// Keeps a descriptor and channel of `bdev` open on reactor 0 (`open_it`), or closes them
/// (by bdev name: tests run in parallel).
fn keep_open(bdev: &'static str, open_it: bool) {
    framework::call(0, move || {
        let kept = open_it.then(|| {
            let desc = open(bdev, true, Box::new(|_, _| {})).unwrap();
            (desc.channel().unwrap(), desc)
        });
        KEEP_OPEN.with(|k| match kept {
            Some(kept) => drop(k.borrow_mut().insert(bdev, kept)),
            None => drop(k.borrow_mut().remove(bdev)),
        });
    })
    .unwrap();
}

thread_local! {
    #[allow(clippy::type_complexity)]
    static BASE_LOCK: RefCell<HashMap<&'static str, (RangeLock, BdevDesc)>> = RefCell::new(HashMap::new());
    #[allow(clippy::type_complexity)]
    static KEEP_OPEN: RefCell<HashMap<&'static str, (BdevChannel, BdevDesc)>> = RefCell::new(HashMap::new());
}

#[test]
fn null_reads_zeroes_unless_told_to_leave_buffers_alone() {
    testing::reactors();
    null::create("t_null_zeroes", 8, 512, None).unwrap();
    let (st, _, out) = run("t_null_zeroes", false, Req::new(IoType::Read, 0, 1, vec![0xAA; 512])).unwrap();
    assert_eq!(st, IoStatus::Success);
    assert!(out.iter().all(|&b| b == 0), "zeroes by default");

    // `read_zeroes: false`: SPDK's null bdev, no data work, the buffer as it was.
    let b = null::create_with_hints("t_null_nodata", 8, 512, None, IoHints::default(), false).unwrap();
    let (st, _, out) = run("t_null_nodata", false, Req::new(IoType::Read, 0, 1, vec![0xAA; 512])).unwrap();
    assert_eq!(st, IoStatus::Success);
    assert!(out.iter().all(|&b| b == 0xAA), "the buffer untouched");
    let (_, params) = b.backend().config(&b).unwrap();
    assert_eq!(params["read_zeroes"], false, "saved, so a replay keeps it: {params}");
    let (_, params) = registry::get("t_null_zeroes").unwrap().backend().config(&b).unwrap();
    assert!(params.get("read_zeroes").is_none(), "the default is saved as SPDK writes it: {params}");
}
