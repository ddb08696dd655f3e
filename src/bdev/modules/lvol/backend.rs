//! The lvol bdev: a blob behind the bdev interface. On the metadata reactor I/O goes straight
//! into the store; on any other reactor the channel forwards it there by message (the iovecs
//! travel as addresses: the submitter keeps them valid until completion, as for any bdev) and
//! the completion comes back the same way.

use super::lvs::{self, LvsShared};
use super::MD_REACTOR;
use crate::bdev::{BackendChannel, Bdev, BdevBackend, BdevError, BdevIo, IoStatus, IoType};
use crate::blobstore::WriteTargets;
use crate::framework;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

/// The lvol module's backend of one lvol.
pub struct LvolBackend {
    lvs: Arc<LvsShared>,
    blob: u64,
    alloc: Arc<crate::blobstore::alloc_share::AllocShare>,
}

impl LvolBackend {
    /// The backend of blob `blob` of `lvs`, whose store publishes allocations in `alloc`.
    pub fn new(lvs: Arc<LvsShared>, blob: u64, alloc: Arc<crate::blobstore::alloc_share::AllocShare>) -> Self {
        LvolBackend { lvs, blob, alloc }
    }

    /// Its store's description.
    pub fn lvs(&self) -> &Arc<LvsShared> {
        &self.lvs
    }

    /// Its blob id.
    pub fn blob(&self) -> u64 {
        self.blob
    }

    /// Runs `f` on the open store on the metadata reactor (directly if this is it).
    fn on_store<R: Send + 'static>(&self, f: impl FnOnce(&lvs::OpenLvs) -> R + Send + 'static) -> Option<R> {
        let uuid = self.lvs.uuid;
        let run = move || lvs::open_store(uuid).map(|o| f(&o));
        match framework::current_index() {
            Some(MD_REACTOR) => run(),
            Some(_) => None,
            None => framework::call(MD_REACTOR, run).ok().flatten(),
        }
    }

    fn view(&self) -> Option<lvs::LvolView> {
        let blob = self.blob;
        self.on_store(move |o| o.views().into_iter().find(|v| v.blob == blob)).flatten()
    }
}

impl BdevBackend for LvolBackend {
    fn module(&self) -> &'static str {
        "lvol"
    }

    fn product_name(&self) -> &'static str {
        "Logical Volume"
    }

    fn supports(&self, _io_type: IoType) -> bool {
        true
    }

    fn supports_every_io_type(&self) -> bool {
        true
    }

    fn create_channel(&self, _bdev: &Bdev) -> Result<Box<dyn BackendChannel>, BdevError> {
        // On the metadata reactor the channel keeps (weakly) the store itself, no lookup per
        // I/O, and the blob's write targets.
        let local = match framework::current_index() {
            Some(MD_REACTOR) => {
                lvs::open_store(self.lvs.uuid).map(|o| (Rc::downgrade(&o.store), o.store.write_targets()))
            }
            _ => None,
        };
        Ok(Box::new(LvolChannel { store: self.lvs.uuid, blob: self.blob, local }))
    }

    fn config(&self, _bdev: &Bdev) -> Option<(&'static str, Value)> {
        // Lvols live on disk and come back by examine, as SPDK's (empty write_config_json).
        None
    }

    fn driver_specific(&self) -> Option<(&'static str, Value)> {
        let v = self.view()?;
        let mut d = json!({
            "lvol_store_uuid": self.lvs.uuid.to_string(),
            "base_bdev": self.lvs.base_bdev,
            "thin_provision": v.thin,
            "num_allocated_clusters": v.allocated,
            "snapshot": v.snapshot,
            "clone": matches!(v.parent, crate::blobstore::Parent::Blob(_)),
            "esnap_clone": matches!(v.parent, crate::blobstore::Parent::External(_)),
        });
        if let Some(p) = &v.parent_name {
            d["base_snapshot"] = json!(p);
        }
        // As SPDK: `clones` only on a snapshot that has some.
        if v.snapshot && !v.clones.is_empty() {
            d["clones"] = json!(v.clones);
        }
        if let crate::blobstore::Parent::External(u) = v.parent {
            // SPDK shows the esnap id, which is the external bdev's uuid.
            d["external_snapshot_name"] = json!(u.to_string());
        }
        Some(("lvol", d))
    }

    /// Acknowledged writes survive a crash of the process, but only FLUSH makes them (and the
    /// metadata naming them) survive a power loss: a volatile cache, as guests should know.
    fn write_cache(&self) -> bool {
        true
    }

    fn read_only(&self) -> bool {
        self.view().is_some_and(|v| v.read_only)
    }

    /// The lvol RPC resizes the blob first; the bdev core then updates the size.
    fn resize(&self, _num_blocks: u64) -> Result<(), BdevError> {
        Ok(())
    }

    fn allocation_run(&self, offset_blocks: u64, max_blocks: u64) -> Option<(bool, u64)> {
        let (bs, cs) = (self.lvs.block_size as u64, self.lvs.cluster_size);
        let first = offset_blocks * bs / cs;
        let max_clusters = (offset_blocks + max_blocks).saturating_mul(bs).div_ceil(cs).saturating_sub(first).max(1);
        let (allocated, clusters) = self.alloc.run(self.blob, first, max_clusters)?;
        let end = (first + clusters) * cs / bs;
        Some((allocated, (end - offset_blocks).min(max_blocks)))
    }
}

/// A channel of an lvol on one reactor.
///
/// Aligned to a cache line: what a remembered write reads (the base channel, the run and the
/// version counter's address) then lies in one line, not across two (see `ChannelInner`).
#[repr(align(64))]
struct LvolChannel {
    store: uuid::Uuid,
    blob: u64,
    /// On the metadata reactor: the store, and where writes of the blob's own clusters go.
    local: Option<(std::rc::Weak<crate::blobstore::Store>, WriteTargets)>,
}

impl BackendChannel for LvolChannel {
    fn submit(&self, io: Box<BdevIo>) {
        // Every path but the run's remap is out of line (the cluster entries' lookup too), so
        // that the remap's frame saves no register at all (see `remap_checked` in the bdev
        // layer): a thick lvol's writes all take the run.
        match &self.local {
            // A write whose target is remembered goes to the base without reaching the store.
            Some((_, targets)) => match targets.try_write_run(io) {
                Ok(()) => {}
                Err(io) => self.submit_past_run(io),
            },
            None => self.submit_unremembered(io),
        }
    }
}

impl LvolChannel {
    /// Submits an I/O its targets' run did not take: a write or read by the target that
    /// covers it if there is one (a read by the run too), anything else through the store.
    #[inline(never)]
    fn submit_past_run(&self, io: Box<BdevIo>) {
        let Some((_, targets)) = &self.local else { return self.submit_unremembered(io) };
        let tried = match io.io_type {
            IoType::Write => targets.try_write(io),
            IoType::Read => targets.try_read(io),
            _ => Err(io),
        };
        if let Err(io) = tried {
            self.submit_through_store(io);
        }
    }

    /// Submits `io` through the store on its own reactor; a write remembers its target.
    /// It finds the store and targets in `self.local` again rather than taking them as
    /// arguments, which would make its callers' frames save registers.
    #[inline(never)]
    fn submit_through_store(&self, io: Box<BdevIo>) {
        let Some((store, targets)) = &self.local else { return self.submit_unremembered(io) };
        match store.upgrade() {
            Some(store) => store.submit_remembering(self.blob, targets, io),
            None => self.submit_unremembered(io),
        }
    }

    /// Submits `io` through the store found by its id: on the metadata reactor directly,
    /// from any other by message.
    #[inline(never)]
    fn submit_unremembered(&self, io: Box<BdevIo>) {
        if framework::current_index() == Some(MD_REACTOR) {
            match lvs::open_store(self.store) {
                Some(open) => open.store.submit(self.blob, io),
                None => io.fail(libc::ENODEV),
            }
        } else {
            forward(self.store, self.blob, io);
        }
    }
}

thread_local! {
    /// I/O forwarded to the metadata reactor, waiting for its answer, by key.
    static FORWARDED: RefCell<(u64, HashMap<u64, Box<BdevIo>>)> = RefCell::new((0, HashMap::new()));
}

/// What crosses to the metadata reactor: the request, its buffers as addresses, and where to
/// send the answer.
struct Remote {
    io_type: IoType,
    offset_blocks: u64,
    num_blocks: u64,
    block_size: u32,
    iovs: Vec<(usize, usize)>,
    origin: usize,
    key: u64,
}

fn forward(store: uuid::Uuid, blob: u64, io: Box<BdevIo>) {
    let Some(origin) = framework::current_index() else { return io.fail(libc::EINVAL) };
    let remote = Remote {
        io_type: io.io_type,
        offset_blocks: io.offset_blocks,
        num_blocks: io.num_blocks,
        block_size: io.block_size(),
        iovs: io.iovs().iter().map(|v| (v.iov_base as usize, v.iov_len)).collect(),
        origin,
        key: 0,
    };
    let key = FORWARDED.with(|f| {
        let mut f = f.borrow_mut();
        f.0 += 1;
        let key = f.0;
        f.1.insert(key, io);
        key
    });
    let remote = Remote { key, ..remote };
    if framework::send(MD_REACTOR, move || run_remote(store, blob, remote)).is_err() {
        finish_forwarded(key, false, libc::ENODEV);
    }
}

fn run_remote(store: uuid::Uuid, blob: u64, r: Remote) {
    let (origin, key) = (r.origin, r.key);
    let mut io = BdevIo::new(Rc::new(move |io: Box<BdevIo>| {
        let (ok, errno) = (io.succeeded(), io.errno());
        if framework::send(origin, move || finish_forwarded(key, ok, errno)).is_err() {
            tracing::error!(key, "forwarded lvol I/O completed after its reactor stopped");
        }
    }));
    io.prepare(r.io_type, r.offset_blocks, r.num_blocks);
    io.set_block_size(r.block_size);
    for (base, len) in r.iovs {
        // SAFETY: the original I/O's submitter keeps its iovecs valid until that I/O completes,
        // which happens only after this one's answer arrives on its reactor.
        unsafe { io.push_iov(base as *mut u8, len) };
    }
    match lvs::open_store(store) {
        Some(open) => open.store.submit(blob, io),
        None => io.fail(libc::ENODEV),
    }
}

fn finish_forwarded(key: u64, ok: bool, errno: i32) {
    let Some(io) = FORWARDED.with(|f| f.borrow_mut().1.remove(&key)) else { return };
    if ok {
        io.complete(IoStatus::Success);
    } else {
        io.fail(errno);
    }
}
