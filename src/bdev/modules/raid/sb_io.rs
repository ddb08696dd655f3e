//! Superblock I/O, on the metadata reactor: every write of an array's superblock runs there,
//! one at a time per array (a reactor-local mutex), so an older image never lands after a
//! newer one. Writers waiting for their write-intent bits share one write (group commit).

use super::array::{Array, RaidState};
use super::members;
use super::superblock::{Superblock, DATA_OFFSET, HEADER_BYTES, MAX_BITMAP_BYTES};
use crate::bdev::buf::DmaBuf;
use crate::bdev::{BdevChannel, IoType};
use crate::blobstore::dev::channel_io;
use crate::framework::task::LocalMutex;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use uuid::Uuid;

thread_local! {
    static LOCKS: RefCell<HashMap<Uuid, Rc<LocalMutex>>> = RefCell::new(HashMap::new());
}

fn sb_lock(uuid: Uuid) -> Rc<LocalMutex> {
    LOCKS.with(|l| l.borrow_mut().entry(uuid).or_insert_with(|| Rc::new(LocalMutex::default())).clone())
}

/// Makes sure the write-intent bits set up to generation `g` are on disk.
pub async fn persist(array: &Arc<Array>, g: u64) {
    let lock = sb_lock(array.uuid);
    let _held = lock.lock().await;
    let Some(wi) = array.intent() else { return };
    if wi.persisted_gen.load(Ordering::Acquire) >= g {
        return; // another writer's superblock write covered these bits
    }
    write_now(array, false).await;
}

/// Writes the array's superblock (as it is now) to every present member.
pub async fn write(array: &Arc<Array>, clean: bool) {
    let lock = sb_lock(array.uuid);
    let _held = lock.lock().await;
    write_now(array, clean).await;
}

/// Writes zeroes over the superblock of every present member (`bdev_raid_delete` with
/// `clear_sb`).
pub async fn clear(array: &Arc<Array>) {
    let lock = sb_lock(array.uuid);
    let _held = lock.lock().await;
    for (_, _, chan) in member_channels(array) {
        let bs = chan.bdev().block_size() as usize;
        let len = (HEADER_BYTES + 2 * MAX_BITMAP_BYTES).div_ceil(bs) * bs;
        let Some(buf) = DmaBuf::new(len, chan.bdev().backend().buf_align().max(4096)) else { continue };
        let iov = libc::iovec { iov_base: buf.as_ptr().cast(), iov_len: len };
        // SAFETY: `buf` lives until the awaited I/O is done.
        if let Err(e) = unsafe { channel_io(&chan, IoType::Write, 0, len as u64, &[iov]).await } {
            tracing::warn!(member = chan.bdev().name(), errno = e, "raid superblock not cleared");
        }
    }
}

fn member_channels(array: &Array) -> Vec<(usize, u64, BdevChannel)> {
    let ctl = array.ctl();
    ctl.slots.iter().enumerate().filter_map(|(i, s)| Some((i, s.epoch, s.desc.as_ref()?.channel().ok()?))).collect()
}

async fn write_now(array: &Arc<Array>, clean: bool) {
    let covers = array.intent().map(|w| w.set_gen.load(Ordering::Acquire));
    let seq = array.sb_seq.fetch_add(1, Ordering::AcqRel) + 1;
    let image = {
        let ctl = array.ctl();
        if ctl.state == RaidState::Offline && !clean {
            return;
        }
        array.superblock_image(&ctl, seq, clean)
    };
    let Some(image) = image else { return };
    let bytes = image.encode();
    let mut written = 0;
    for (slot, epoch, chan) in member_channels(array) {
        let align = chan.bdev().backend().buf_align().max(4096);
        let Some(mut buf) = DmaBuf::new(bytes.len(), align) else { continue };
        buf.as_mut_slice().copy_from_slice(&bytes);
        let iov = libc::iovec { iov_base: buf.as_ptr().cast(), iov_len: bytes.len() };
        // SAFETY: `buf` lives until the awaited I/O is done.
        let r = unsafe { channel_io(&chan, IoType::Write, 0, bytes.len() as u64, &[iov]).await };
        let r = match r {
            Ok(()) if chan.bdev().backend().write_cache() && chan.bdev().supports(IoType::Flush) => {
                // SAFETY: a flush carries no buffers.
                unsafe { channel_io(&chan, IoType::Flush, 0, 0, &[]).await }
            }
            other => other,
        };
        match r {
            Ok(()) => written += 1,
            Err(e) => {
                tracing::warn!(array = %array.name, member = chan.bdev().name(), errno = e, "superblock write failed: member fails");
                members::member_failed(array, slot, epoch);
            }
        }
    }
    if written == 0 {
        tracing::error!(array = %array.name, "superblock written to no member");
    }
    if let (Some(wi), Some(g)) = (array.intent(), covers) {
        wi.persisted_gen.fetch_max(g, Ordering::AcqRel);
    }
}

/// Reads and decodes the superblock at the start of `chan`'s bdev (None: not a member, or
/// too small to be one).
pub async fn read(chan: &BdevChannel) -> Option<Result<Superblock, super::superblock::SbError>> {
    let bdev = chan.bdev();
    let bs = bdev.block_size() as usize;
    if bdev.size_bytes() < DATA_OFFSET + bs as u64 {
        return None;
    }
    let len = (HEADER_BYTES + 2 * MAX_BITMAP_BYTES).div_ceil(bs) * bs;
    let buf = DmaBuf::new(len, bdev.backend().buf_align().max(4096))?;
    let iov = libc::iovec { iov_base: buf.as_ptr().cast(), iov_len: len };
    // SAFETY: `buf` lives until the awaited I/O is done.
    unsafe { probe_read(chan, len as u64, iov).await.ok()? };
    Some(Superblock::decode(buf.as_slice()))
}

/// Reads `len` bytes at offset 0 into `iov`, kept out of the bdev's statistics: examine
/// looks at every bdev of its own accord, nobody asked for this I/O.
///
/// # Safety
/// `iov` must stay valid until the returned future is done.
async unsafe fn probe_read(chan: &BdevChannel, len: u64, iov: libc::iovec) -> Result<(), i32> {
    let bs = chan.bdev().block_size() as u64;
    let slot: crate::framework::task::Slot<(bool, i32)> = crate::framework::task::Slot::new();
    let s = slot.clone();
    let mut io =
        crate::bdev::BdevIo::new(Rc::new(move |io: Box<crate::bdev::BdevIo>| s.fill((io.succeeded(), io.errno()))));
    io.set_uncounted(true);
    io.prepare(IoType::Read, 0, len / bs);
    // SAFETY: the caller keeps `iov` valid until this future is done, after the callback.
    unsafe { io.push_iov(iov.iov_base.cast(), iov.iov_len) };
    chan.submit(io);
    match slot.await {
        (true, _) => Ok(()),
        (false, e) => Err(e.max(libc::EIO)),
    }
}
