//! Background processes of raid1: the rebuild of a member added to an online array, and the
//! resync after an unclean shutdown. Each copies in windows from an online member under an
//! LBA range lock of the raid bdev (I/O to the window waits, I/O elsewhere goes on), on the
//! metadata reactor, and publishes its progress as SPDK's `process`. SPDK's
//! `bdev_raid_set_options` sets the window and a bandwidth cap per process, which runs as
//! a QoS limit of its own (`bdev::qos::gate::Pacer`): the process waits for its tokens
//! before it locks a window, and the array's own I/O is never metered by it.

use super::array::{self as arrays, Array, Process, RaidState, SlotState, WriteIntent};
use super::{members, sb_io, MD_REACTOR};
use crate::bdev::buf::DmaBuf;
use crate::bdev::qos::gate::{LimitSlot, Pacer};
use crate::bdev::qos::spec::{QosSpec, RateLimits};
use crate::bdev::{self, BdevChannel, IoType, RangeLock};
use crate::blobstore::dev::channel_io;
use crate::framework::{self, task};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// SPDK's `bdev_raid_set_options`: what background processes copy at a time, and how fast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessOptions {
    /// KiB copied per step (SPDK's default: 1024).
    pub process_window_size_kb: u32,
    /// MiB per second each process may copy (0: no limit, SPDK's default).
    pub process_max_bandwidth_mb_sec: u32,
}

/// SPDK's defaults (`RAID_BDEV_PROCESS_WINDOW_SIZE_KB_DEFAULT`, no bandwidth limit).
pub const DEFAULT_OPTIONS: ProcessOptions =
    ProcessOptions { process_window_size_kb: 1024, process_max_bandwidth_mb_sec: 0 };

/// The largest window a process copies at once (its buffer): larger settings are taken as
/// this, so a hostile setting cannot make a process allocate gigabytes.
const MAX_WINDOW_BYTES: u64 = 64 << 20;

static OPTIONS: Mutex<ProcessOptions> = Mutex::new(DEFAULT_OPTIONS);

/// The options now.
pub fn options() -> ProcessOptions {
    *OPTIONS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sets the options: the window applies to processes that start from now (as SPDK), the
/// bandwidth to running ones too (SPDK: from the next process).
pub fn set_options(o: ProcessOptions) -> Result<(), String> {
    if o.process_window_size_kb == 0 {
        return Err("process_window_size_kb must not be 0".into());
    }
    if o.process_window_size_kb as u64 * 1024 > MAX_WINDOW_BYTES {
        tracing::warn!(process_window_size_kb = o.process_window_size_kb, "raid process window taken as 64 MiB");
    }
    *OPTIONS.lock().unwrap_or_else(|e| e.into_inner()) = o;
    for a in arrays::list() {
        if let Some(p) = &a.ctl().process {
            p.limit.set(bandwidth(o))?;
        }
    }
    Ok(())
}

/// A process's own limit: its bandwidth as a read/write MiB/s limit.
fn bandwidth(o: ProcessOptions) -> QosSpec {
    QosSpec::spdk(RateLimits { rw_mbytes_per_sec: o.process_max_bandwidth_mb_sec as u64, ..Default::default() })
}

/// Locks array blocks `[offset, offset + n)` through `ch` and returns the lock once held.
pub async fn lock(ch: &BdevChannel, offset: u64, n: u64) -> RangeLock {
    let slot: task::Slot<RangeLock> = task::Slot::new();
    let s = slot.clone();
    ch.lock_range(offset, n, move |l| s.fill(l));
    slot.await
}

/// Starts rebuilding slot `target` (whole, or only the degraded bitmap's regions).
pub fn start_rebuild(array: &Arc<Array>, target: usize, delta: bool) {
    start(array, "rebuild", vec![target], delta);
}

/// Starts the resync of the regions written since the last clean close: the first online
/// member is copied to the others.
pub fn start_resync(array: &Arc<Array>) {
    let targets: Vec<usize> = {
        let ctl = array.ctl();
        let online: Vec<usize> = (0..ctl.slots.len()).filter(|&i| ctl.slots[i].state == SlotState::Online).collect();
        online.into_iter().skip(1).collect()
    };
    if !targets.is_empty() {
        start(array, "resync", targets, true);
    }
}

fn start(array: &Arc<Array>, kind: &'static str, targets: Vec<usize>, only_marked: bool) {
    let progress = Arc::new(AtomicU64::new(0));
    let cancel = Arc::new(AtomicBool::new(false));
    let opts = options();
    let limit = Arc::new(LimitSlot::new(bandwidth(opts)));
    let window = (opts.process_window_size_kb as u64 * 1024).min(MAX_WINDOW_BYTES);
    {
        let mut ctl = array.ctl();
        let target_name = ctl.slots[targets[0]].name.clone().unwrap_or_default();
        ctl.process = Some(Process {
            kind,
            target: targets[0],
            target_name,
            progress: progress.clone(),
            cancel: cancel.clone(),
            limit: limit.clone(),
        });
    }
    tracing::info!(array = %array.name, kind, only_marked, ?opts, "raid process started");
    let a = array.clone();
    let job = move || {
        task::spawn_local(async move {
            let how = How { targets, only_marked, window, pacer: Pacer::new(limit, "raid_process_qos") };
            run(a, kind, how, progress, cancel).await
        })
    };
    if framework::current_index() == Some(MD_REACTOR) {
        job();
    } else if framework::send(MD_REACTOR, job).is_err() {
        array.ctl().process = None;
    }
}

/// What a process copies and how: its targets, whether only marked regions, its window (in
/// bytes) and the pacer of its bandwidth limit.
struct How {
    targets: Vec<usize>,
    only_marked: bool,
    window: u64,
    pacer: Pacer,
}

/// The array block ranges to copy, at most `window` bytes each.
fn ranges(array: &Array, kind: &str, only_marked: bool, num_blocks: u64, window: u64) -> Vec<(u64, u64)> {
    let chunk = (window / array.block_size.load(Ordering::Acquire).max(1)).max(1);
    let mut out = Vec::new();
    let mut push = |start: u64, end: u64| {
        let mut at = start;
        while at < end {
            let n = chunk.min(end - at);
            out.push((at, n));
            at += n;
        }
    };
    match (array.intent(), only_marked) {
        (Some(wi), true) => {
            let words = if kind == "resync" { &wi.active } else { &wi.degraded };
            for r in WriteIntent::regions(words, wi.bits) {
                let start = r * wi.region_blocks;
                push(start, (start + wi.region_blocks).min(num_blocks));
            }
        }
        _ => push(0, num_blocks),
    }
    out
}

async fn run(array: Arc<Array>, kind: &'static str, how: How, progress: Arc<AtomicU64>, cancel: Arc<AtomicBool>) {
    let ok = copy(&array, kind, &how, &progress, &cancel).await;
    let targets = how.targets;
    let finished = {
        let mut ctl = array.ctl();
        let ours = ctl.process.as_ref().is_some_and(|p| Arc::ptr_eq(&p.cancel, &cancel));
        if ours {
            ctl.process = None;
        }
        if ok && ours && !cancel.load(Ordering::Acquire) && ctl.state == RaidState::Online {
            for &t in &targets {
                if ctl.slots[t].present() {
                    ctl.slots[t].state = SlotState::Online;
                }
            }
            let all = ctl.slots.iter().all(|s| s.state == SlotState::Online);
            array.changed(&ctl);
            if let Some(wi) = array.intent() {
                if all {
                    WriteIntent::clear(&wi.degraded);
                }
                if kind == "resync" {
                    // The members agree again; the bits of writes since start stay set.
                    ctl.unclean = false;
                }
            }
            true
        } else {
            false
        }
    };
    tracing::info!(array = %array.name, kind, finished, "raid process ended");
    if array.superblock && array.ctl().state == RaidState::Online {
        sb_io::write(&array, false).await;
    }
}

/// Copies every range to the targets; false if it had to stop.
async fn copy(array: &Arc<Array>, kind: &str, how: &How, progress: &AtomicU64, cancel: &AtomicBool) -> bool {
    let targets = &how.targets[..];
    let Some(raid) = array.ctl().bdev.clone() else { return false };
    let Ok(desc) = bdev::open(raid.name(), false, Box::new(|_, _| {})) else { return false };
    let Ok(ch) = desc.channel() else { return false };
    // Every I/O submitted before the targets became writable completes first: from here on
    // every write reaches them, so only what was written before needs copying.
    drop(lock(&ch, 0, raid.num_blocks()).await);
    let bs = array.block_size.load(Ordering::Acquire);
    let offset = array.data_offset.load(Ordering::Acquire);
    for (start, n) in ranges(array, kind, how.only_marked, raid.num_blocks(), how.window) {
        if cancel.load(Ordering::Acquire) {
            return false;
        }
        // Tokens first, the range lock after: a process waiting for its bandwidth holds up
        // no I/O of the array.
        how.pacer.pace(n * bs).await;
        if cancel.load(Ordering::Acquire) {
            return false;
        }
        let held = lock(&ch, start, n).await;
        let len = (n * bs) as usize;
        let Some(buf) = DmaBuf::new(len, raid.backend().buf_align().max(4096)) else { return false };
        let iov = [libc::iovec { iov_base: buf.as_ptr().cast(), iov_len: len }];
        // Read from an online member (another one if it fails).
        loop {
            let src = {
                let ctl = array.ctl();
                (0..ctl.slots.len())
                    .filter(|i| !targets.contains(i) && ctl.slots[*i].state == SlotState::Online)
                    .find_map(|i| Some((i, ctl.slots[i].epoch, ctl.slots[i].desc.as_ref()?.channel().ok()?)))
            };
            let Some((i, epoch, src)) = src else { return false };
            // SAFETY: `buf` lives until the awaited I/O is done.
            match unsafe { channel_io(&src, IoType::Read, (offset + start) * bs, len as u64, &iov).await } {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(array = %array.name, errno = e, "raid process: source read failed");
                    members::member_failed(array, i, epoch);
                }
            }
        }
        for &t in targets {
            let dst = {
                let ctl = array.ctl();
                let s = &ctl.slots[t];
                s.desc.as_ref().and_then(|d| d.channel().ok()).map(|c| (c, s.epoch))
            };
            let Some((dst, epoch)) = dst else { return false };
            // SAFETY: as above.
            if let Err(e) = unsafe { channel_io(&dst, IoType::Write, (offset + start) * bs, len as u64, &iov).await } {
                tracing::warn!(array = %array.name, errno = e, "raid process: target write failed");
                members::member_failed(array, t, epoch);
                return false;
            }
        }
        drop(held);
        array.rebuilt_bytes.fetch_add(len as u64 * targets.len() as u64, Ordering::AcqRel);
        progress.store(start + n, Ordering::Release);
    }
    true
}
