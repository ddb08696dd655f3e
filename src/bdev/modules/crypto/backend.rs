//! The crypto bdev: AES-XTS per logical block over a claimed base bdev, as SPDK's
//! `vbdev_crypto`. Reads go to the base straight into the caller's buffers and are
//! decrypted there in place; writes are encrypted into a bounce buffer (the caller's data is
//! never modified) and that is written. Flush and reset pass through. Write-zeroes is
//! written as encrypted zeroes (in chunks); unmap is not offered: a block unmapped on the
//! base would read back as the decryption of zeroes, not as zeroes, which every Ferry bdev
//! promises (docs/security.md).

use super::keys::CryptoKey;
use crate::bdev::buf::DmaBuf;
use crate::bdev::device::lock;
use crate::bdev::{BackendChannel, Bdev, BdevBackend, BdevChannel, BdevDesc, BdevError, BdevIo, IoCallback, IoType};
use serde_json::{json, Value};
use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::sync::{Arc, Mutex};

/// Largest write-zeroes chunk encrypted and written at once, in bytes.
const ZEROES_CHUNK: usize = 1 << 20;
/// Bounce buffers a channel keeps for reuse (each at most [`POOLED_MAX`] bytes).
const POOLED: usize = 16;
/// Largest bounce buffer kept for reuse.
const POOLED_MAX: usize = 1 << 20;
/// Bounce buffers are allocated in multiples of this, so that sizes reuse each other.
const BOUNCE_GRAIN: usize = 64 << 10;

/// What a crypto bdev shares with the module's table: its base descriptor (holding the
/// claim) and its key.
pub struct CryptoShared {
    /// The crypto bdev's name.
    pub name: String,
    /// The base bdev's name.
    pub base_name: String,
    /// The key it encrypts with.
    pub key: Arc<CryptoKey>,
    /// Whether the key was made by `bdev_crypto_create` itself (SPDK's deprecated inline
    /// key) and goes with the bdev.
    pub key_owner: bool,
    /// The open, claimed base; taken when the crypto bdev goes.
    pub desc: Mutex<Option<BdevDesc>>,
}

impl CryptoShared {
    /// Releases the base (its claim) and the key: the crypto bdev is gone.
    pub fn close(&self) {
        drop(lock(&self.desc).take());
        self.key.remove_user(&self.name);
        if self.key_owner {
            if let Err(e) = super::keys::destroy(self.key.name()) {
                tracing::warn!(bdev = %self.name, error = %e, "the crypto bdev's own key stays");
            }
        }
    }
}

/// The crypto bdev's backend.
pub struct CryptoBackend {
    /// Shared with the module's table.
    pub shared: Arc<CryptoShared>,
    /// The base bdev (its geometry and capabilities).
    pub base: Bdev,
}

impl BdevBackend for CryptoBackend {
    fn module(&self) -> &'static str {
        "crypto"
    }

    fn product_name(&self) -> &'static str {
        "crypto"
    }

    fn supports(&self, io_type: IoType) -> bool {
        match io_type {
            IoType::Read | IoType::Write | IoType::Flush | IoType::Reset => self.base.supports(io_type),
            IoType::WriteZeroes => self.base.supports(IoType::Write),
            IoType::Unmap => false,
        }
    }

    fn create_channel(&self, bdev: &Bdev) -> Result<Box<dyn BackendChannel>, BdevError> {
        let base = match lock(&self.shared.desc).as_ref() {
            Some(desc) => desc.channel()?,
            None => return Err(BdevError::Removed(bdev.name().to_string())),
        };
        Ok(Box::new(CryptoChannel::new(base, self.shared.key.clone(), bdev.block_size() as usize, self.buf_align())))
    }

    fn config(&self, _bdev: &Bdev) -> Option<(&'static str, Value)> {
        Some(("bdev_crypto_create", self.describe()))
    }

    fn driver_specific(&self) -> Option<(&'static str, Value)> {
        Some(("crypto", self.describe()))
    }

    fn write_cache(&self) -> bool {
        self.base.backend().write_cache()
    }

    fn buf_align(&self) -> usize {
        self.base.backend().buf_align()
    }

    fn physical_block_size(&self) -> Option<u32> {
        self.base.backend().physical_block_size()
    }

    fn resize(&self, num_blocks: u64) -> Result<(), BdevError> {
        // Follows its base (SPDK's vbdev_crypto_base_bdev_resize_cb), nothing else.
        if num_blocks == self.base.num_blocks() {
            Ok(())
        } else {
            Err(BdevError::InvalidParam(format!(
                "a crypto bdev has its base's size: resize {} instead",
                self.shared.base_name
            )))
        }
    }
}

impl CryptoBackend {
    /// SPDK's `driver_specific.crypto` and `bdev_crypto_create` parameters.
    fn describe(&self) -> Value {
        json!({
            "base_bdev_name": self.shared.base_name,
            "name": self.shared.name,
            "key_name": self.shared.key.name(),
        })
    }
}

/// An I/O of the crypto bdev waiting for its child on the base.
struct Pending {
    parent: Box<BdevIo>,
    bounce: Option<DmaBuf>,
    /// Write-zeroes: the next block to write and the end.
    zeroes: Option<(u64, u64)>,
}

struct ChanState {
    base: BdevChannel,
    key: Arc<CryptoKey>,
    block_size: usize,
    align: usize,
    callback: IoCallback,
    slots: RefCell<Vec<Option<Pending>>>,
    free: RefCell<Vec<usize>>,
    #[allow(clippy::vec_box)] // I/Os travel as boxes; these are the boxes, kept for reuse
    idle: RefCell<Vec<Box<BdevIo>>>,
    bounces: RefCell<Vec<DmaBuf>>,
    /// One block, for blocks that straddle the caller's segments.
    scratch: RefCell<Vec<u8>>,
}

/// A reactor's channel of a crypto bdev: its base's channel and the I/O in flight.
struct CryptoChannel(Rc<ChanState>);

impl CryptoChannel {
    fn new(base: BdevChannel, key: Arc<CryptoKey>, block_size: usize, align: usize) -> Self {
        CryptoChannel(Rc::new_cyclic(|me: &Weak<ChanState>| {
            let me = me.clone();
            let callback: IoCallback = Rc::new(move |child: Box<BdevIo>| {
                if let Some(st) = me.upgrade() {
                    st.child_done(child);
                }
            });
            ChanState {
                base,
                key,
                block_size,
                align: align.max(8),
                callback,
                slots: RefCell::default(),
                free: RefCell::default(),
                idle: RefCell::default(),
                bounces: RefCell::default(),
                scratch: RefCell::new(vec![0; block_size]),
            }
        }))
    }
}

impl BackendChannel for CryptoChannel {
    fn submit(&self, parent: Box<BdevIo>) {
        self.0.start(parent);
    }
}

impl ChanState {
    fn child(&self) -> Box<BdevIo> {
        let mut io = self.idle.borrow_mut().pop().unwrap_or_else(|| BdevIo::new(self.callback.clone()));
        io.clear_iovs();
        io
    }

    /// A bounce buffer of at least `len` bytes.
    fn bounce(&self, len: usize) -> Option<DmaBuf> {
        let mut pool = self.bounces.borrow_mut();
        if let Some(i) = pool.iter().position(|b| b.len() >= len) {
            return Some(pool.swap_remove(i));
        }
        drop(pool);
        DmaBuf::new(len.div_ceil(BOUNCE_GRAIN) * BOUNCE_GRAIN, self.align)
    }

    fn give_back(&self, buf: DmaBuf) {
        let mut pool = self.bounces.borrow_mut();
        if buf.len() <= POOLED_MAX && pool.len() < POOLED {
            pool.push(buf);
        }
    }

    fn park(&self, p: Pending) -> u64 {
        let mut slots = self.slots.borrow_mut();
        match self.free.borrow_mut().pop() {
            Some(i) => {
                slots[i] = Some(p);
                i as u64
            }
            None => {
                slots.push(Some(p));
                (slots.len() - 1) as u64
            }
        }
    }

    fn start(&self, parent: Box<BdevIo>) {
        let bs = self.block_size;
        let (lba, blocks) = (parent.offset_blocks, parent.num_blocks);
        let mut child = self.child();
        let (mut bounce, mut zeroes) = (None, None);
        match parent.io_type {
            IoType::Read => {
                child.prepare(IoType::Read, lba, blocks);
                for v in parent.iovs() {
                    // SAFETY: the caller's segments stay valid until the parent completes,
                    // which happens only after this child's callback (push_iov's contract
                    // passed down).
                    unsafe { child.push_iov(v.iov_base.cast(), v.iov_len) };
                }
            }
            IoType::Write => {
                let len = parent.len_bytes() as usize;
                let Some(mut buf) = self.bounce(len) else {
                    self.idle.borrow_mut().push(child);
                    parent.fail(libc::ENOMEM);
                    return;
                };
                let data = &mut buf.as_mut_slice()[..len];
                parent.copy_from_iovs(data);
                self.key.xts().encrypt_blocks(data, bs, lba);
                child.prepare(IoType::Write, lba, blocks);
                // SAFETY: the bounce buffer lives in the pending entry until the child's
                // callback, and nobody else touches it meanwhile.
                unsafe { child.push_iov(buf.as_ptr(), len) };
                bounce = Some(buf);
            }
            IoType::WriteZeroes => {
                let chunk = blocks.min((ZEROES_CHUNK / bs) as u64);
                let Some(mut buf) = self.bounce(chunk as usize * bs) else {
                    self.idle.borrow_mut().push(child);
                    parent.fail(libc::ENOMEM);
                    return;
                };
                self.encrypted_zeroes(&mut child, &mut buf, lba, chunk);
                bounce = Some(buf);
                zeroes = Some((lba + chunk, lba + blocks));
            }
            IoType::Flush | IoType::Reset => child.prepare(parent.io_type, lba, blocks),
            IoType::Unmap => {
                self.idle.borrow_mut().push(child);
                parent.fail(libc::ENOTSUP);
                return;
            }
        }
        child.ctx = self.park(Pending { parent, bounce, zeroes });
        self.base.submit(child);
    }

    /// Fills `buf` with the encryption of `blocks` zero blocks at `lba` and points `child`
    /// (a write) at it.
    fn encrypted_zeroes(&self, child: &mut BdevIo, buf: &mut DmaBuf, lba: u64, blocks: u64) {
        let len = blocks as usize * self.block_size;
        let data = &mut buf.as_mut_slice()[..len];
        data.fill(0);
        self.key.xts().encrypt_blocks(data, self.block_size, lba);
        child.clear_iovs();
        child.prepare(IoType::Write, lba, blocks);
        // SAFETY: `buf` is kept in the pending entry until the child's callback.
        unsafe { child.push_iov(buf.as_ptr(), len) };
    }

    fn child_done(&self, mut child: Box<BdevIo>) {
        let slot = child.ctx as usize;
        let Some(mut p) = self.slots.borrow_mut().get_mut(slot).and_then(Option::take) else {
            tracing::error!("crypto: a base I/O completed for no pending I/O");
            return;
        };
        // Write-zeroes: the next chunk, in the same child and buffer.
        if let (true, Some((next, end))) = (child.succeeded(), p.zeroes) {
            if next < end {
                let chunk = (end - next).min((ZEROES_CHUNK / self.block_size) as u64);
                let mut buf = p.bounce.take().expect("write-zeroes keeps its buffer");
                self.encrypted_zeroes(&mut child, &mut buf, next, chunk);
                p.bounce = Some(buf);
                p.zeroes = Some((next + chunk, end));
                self.slots.borrow_mut()[slot] = Some(p);
                self.base.submit(child);
                return;
            }
        }
        self.free.borrow_mut().push(slot);
        let (status, errno) = (child.status(), child.errno());
        child.clear_iovs();
        self.idle.borrow_mut().push(child);
        if let Some(buf) = p.bounce.take() {
            self.give_back(buf);
        }
        let mut parent = p.parent;
        if status == crate::bdev::IoStatus::Success && parent.io_type == IoType::Read {
            // SAFETY: the parent's segments are valid for reads and writes until it completes
            // (push_iov's contract); the base has finished with them.
            unsafe { self.decrypt_in_place(parent.iovs(), parent.offset_blocks) };
        }
        parent.set_errno(errno);
        // No borrow is held: the callback may submit to this channel again.
        parent.complete_inline(status);
    }

    /// Decrypts the blocks the caller's segments hold, in place; a block split across
    /// segments is gathered into scratch, decrypted and scattered back.
    ///
    /// # Safety
    /// Every iovec must be valid for reads and writes, and hold a whole number of blocks in
    /// all.
    unsafe fn decrypt_in_place(&self, iovs: &[libc::iovec], mut lba: u64) {
        let bs = self.block_size;
        let xts = self.key.xts();
        let mut scratch = self.scratch.borrow_mut();
        let (mut i, mut off) = (0usize, 0usize);
        while i < iovs.len() {
            let (base, len) = (iovs[i].iov_base.cast::<u8>(), iovs[i].iov_len);
            let whole = (len - off) / bs;
            if whole > 0 {
                // SAFETY: [off, off + whole*bs) lies inside this iovec (caller's promise).
                let run = unsafe { std::slice::from_raw_parts_mut(base.add(off), whole * bs) };
                xts.decrypt_blocks(run, bs, lba);
                lba += whole as u64;
                off += whole * bs;
            }
            if off == len {
                (i, off) = (i + 1, 0);
                continue;
            }
            // A block straddling segments: gather, decrypt, scatter.
            let mut pieces = Vec::new();
            let mut got = 0;
            while got < bs && i < iovs.len() {
                let n = (iovs[i].iov_len - off).min(bs - got);
                // SAFETY: [off, off + n) lies inside iovec i.
                let src = unsafe { iovs[i].iov_base.cast::<u8>().add(off) };
                // SAFETY: as above; scratch is our own block-sized buffer.
                unsafe { std::ptr::copy_nonoverlapping(src, scratch.as_mut_ptr().add(got), n) };
                pieces.push((src, got, n));
                got += n;
                off += n;
                if off == iovs[i].iov_len {
                    (i, off) = (i + 1, 0);
                }
            }
            if got < bs {
                break; // validation guarantees whole blocks; never decrypt a partial one
            }
            xts.decrypt_blocks(&mut scratch[..bs], bs, lba);
            for (dst, at, n) in pieces {
                // SAFETY: the same bytes that were gathered, inside the caller's segments.
                unsafe { std::ptr::copy_nonoverlapping(scratch.as_ptr().add(at), dst, n) };
            }
            lba += 1;
        }
    }
}
