//! The raid bdev and its data path. Each reactor's channel keeps a view of the members (their
//! channels on this reactor, readable / writable), rebuilt when the array's generation
//! changes. A raid1 read, and a raid0/concat I/O inside one member, is the caller's own
//! `BdevIo` forwarded to the member (`BdevChannel::forward`). Other array I/O becomes child
//! I/O on member channels carrying slices of the parent's iovecs (zero copy): raid0 and concat
//! split at strip and member boundaries, raid1 writes to every writable member. raid1 reads go
//! to the readable member with the fewest reads in flight on this channel, and a failed read
//! is retried on another member.

use super::array::{Array, SlotState, WriteIntent};
use super::layout::{Layout, Piece, RaidLevel};
use super::members;
use crate::bdev::{BackendChannel, Bdev, BdevBackend, BdevChannel, BdevError, BdevIo, IoCallback, IoStatus, IoType};
use crate::blobstore::blob_io::slice_iovs;
use crate::framework;
use serde_json::{json, Value};
use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The raid module's backend of one online array.
pub struct RaidBackend {
    /// The array.
    pub array: Arc<Array>,
    /// Its geometry.
    pub layout: Arc<Layout>,
    /// Buffer alignment the members need.
    pub align: usize,
    /// Whether a member has a volatile write cache.
    pub write_cache: bool,
}

impl BdevBackend for RaidBackend {
    fn module(&self) -> &'static str {
        "raid"
    }

    fn product_name(&self) -> &'static str {
        "Raid Volume"
    }

    fn supports(&self, io_type: IoType) -> bool {
        match io_type {
            IoType::Read | IoType::Write | IoType::Reset => true,
            other => self.array.supports(other),
        }
    }

    fn create_channel(&self, _bdev: &Bdev) -> Result<Box<dyn BackendChannel>, BdevError> {
        Ok(Box::new(RaidChannel(ChanState::new(self.array.clone(), self.layout.clone()))))
    }

    fn config(&self, bdev: &Bdev) -> Option<(&'static str, Value)> {
        // As SPDK: an array with a superblock is described by it and comes back by examine.
        if self.array.superblock {
            return None;
        }
        let ctl = self.array.ctl();
        let bases: Vec<String> = ctl
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| s.name.clone().unwrap_or_else(|| format!("removed_base_bdev_{i}")))
            .collect();
        let mut p = json!({"name": bdev.name(), "uuid": bdev.uuid().to_string()});
        if self.array.strip_size_kb != 0 {
            p["strip_size_kb"] = json!(self.array.strip_size_kb);
        }
        p["raid_level"] = json!(self.array.level.name());
        p["base_bdevs"] = json!(bases);
        Some(("bdev_raid_create", p))
    }

    fn driver_specific(&self) -> Option<(&'static str, Value)> {
        Some(("raid", self.array.info_json()))
    }

    fn write_cache(&self) -> bool {
        self.write_cache
    }

    fn buf_align(&self) -> usize {
        self.align
    }

    fn io_hints(&self) -> crate::bdev::IoHints {
        let strip = self.layout.strip_blocks as u32;
        crate::bdev::IoHints { write_alignment: strip, optimal_write_size: strip, ..Default::default() }
    }
}

/// A member as one reactor sees it.
struct MemberChan {
    chan: BdevChannel,
    readable: bool,
    epoch: u64,
    reads: Cell<u32>,
}

struct View {
    generation: u64,
    members: Vec<Option<MemberChan>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// raid0/concat pieces, or a flush/reset of every member: all must succeed.
    AllOf,
    /// raid1 write/unmap/write-zeroes/flush/reset: one online member's success suffices.
    Mirror,
    /// raid1 read: one member at a time.
    Read,
}

struct Parent {
    io: Box<BdevIo>,
    kind: Kind,
    remaining: u32,
    errno: i32,
    ok_online: u32,
    failed_member: bool,
    tried: u128,
}

/// One reactor's channel state of one array.
pub(super) struct ChanState {
    array: Arc<Array>,
    layout: Arc<Layout>,
    data_offset: u64,
    intent: Option<Arc<WriteIntent>>,
    view: RefCell<View>,
    parents: RefCell<Vec<Option<Parent>>>,
    free: RefCell<Vec<usize>>,
    #[allow(clippy::vec_box)] // I/Os travel as boxes; these are the boxes, kept for reuse
    pool: RefCell<Vec<Box<BdevIo>>>,
    #[allow(clippy::vec_box)]
    staged: RefCell<Vec<(usize, Box<BdevIo>)>>,
    pieces: RefCell<Vec<Piece>>,
    callback: OnceCell<IoCallback>,
    /// Completion of a raid1 read forwarded to one member (the caller's own `BdevIo`).
    read_done: OnceCell<IoCallback>,
    /// Completion of a raid0/concat I/O inside one member, forwarded whole.
    piece_done: OnceCell<IoCallback>,
    me: OnceCell<Weak<ChanState>>,
}

struct RaidChannel(Rc<ChanState>);

impl BackendChannel for RaidChannel {
    fn submit(&self, io: Box<BdevIo>) {
        self.0.submit(io);
    }
}

/// ctx of a child: parent slot, member slot, whether the member was readable, its epoch.
fn child_ctx(parent: usize, member: usize, online: bool, epoch: u64) -> u64 {
    ((parent as u64) << 32) | ((epoch & 0x7f_ffff) << 9) | ((online as u64) << 8) | member as u64
}

fn decode_ctx(ctx: u64) -> (usize, usize, bool, u64) {
    ((ctx >> 32) as usize, (ctx & 0xff) as usize, ctx & 0x100 != 0, (ctx >> 9) & 0x7f_ffff)
}

/// Members a forwarded raid1 read can remember having tried (the high half of its ctx); larger
/// arrays read through child I/O.
const FORWARD_MEMBERS: usize = 32;

/// ctx of a forwarded I/O: the members tried so far (raid1 reads), its member and epoch.
fn forward_ctx(tried: u32, member: usize, epoch: u64) -> u64 {
    ((tried as u64) << 32) | ((epoch & 0x7f_ffff) << 9) | member as u64
}

fn decode_forward_ctx(ctx: u64) -> (u32, usize, u64) {
    ((ctx >> 32) as u32, (ctx & 0xff) as usize, (ctx >> 9) & 0x7f_ffff)
}

impl ChanState {
    fn new(array: Arc<Array>, layout: Arc<Layout>) -> Rc<ChanState> {
        let st = Rc::new(ChanState {
            data_offset: array.data_offset.load(Ordering::Acquire),
            intent: array.intent(),
            array,
            layout,
            view: RefCell::new(View { generation: 0, members: Vec::new() }),
            parents: RefCell::default(),
            free: RefCell::default(),
            pool: RefCell::default(),
            staged: RefCell::default(),
            pieces: RefCell::default(),
            callback: OnceCell::new(),
            read_done: OnceCell::new(),
            piece_done: OnceCell::new(),
            me: OnceCell::new(),
        });
        let weak = Rc::downgrade(&st);
        let _ = st.me.set(weak.clone());
        let w = weak.clone();
        let _ = st.callback.set(Rc::new(move |child: Box<BdevIo>| {
            if let Some(st) = w.upgrade() {
                st.child_done(child);
            }
        }));
        let w = weak.clone();
        let _ = st.read_done.set(Rc::new(move |io: Box<BdevIo>| match w.upgrade() {
            Some(st) => st.forwarded_read_done(io),
            None => forwarded_orphan(io),
        }));
        let _ = st.piece_done.set(Rc::new(move |io: Box<BdevIo>| match weak.upgrade() {
            Some(st) => st.forwarded_piece_done(io),
            None => forwarded_orphan(io),
        }));
        st
    }

    /// Rebuilds the member view if the array changed.
    fn refresh(&self) {
        let g = self.array.generation.load(Ordering::Acquire);
        if self.view.borrow().generation == g {
            return;
        }
        let ctl = self.array.ctl();
        let generation = self.array.generation.load(Ordering::Acquire);
        let members = ctl
            .slots
            .iter()
            .map(|s| {
                let chan = s.desc.as_ref()?.channel().ok()?;
                Some(MemberChan { chan, readable: s.state == SlotState::Online, epoch: s.epoch, reads: Cell::new(0) })
            })
            .collect();
        drop(ctl);
        *self.view.borrow_mut() = View { generation, members };
    }

    fn child(&self, parent: usize, member: usize, online: bool, epoch: u64) -> Box<BdevIo> {
        let mut c = self
            .pool
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| BdevIo::new(self.callback.get().expect("set at creation").clone()));
        c.clear_iovs();
        c.ctx = child_ctx(parent, member, online, epoch);
        c
    }

    fn reserve(&self, p: Parent) -> usize {
        match self.free.borrow_mut().pop() {
            Some(i) => {
                self.parents.borrow_mut()[i] = Some(p);
                i
            }
            None => {
                let mut v = self.parents.borrow_mut();
                v.push(Some(p));
                v.len() - 1
            }
        }
    }

    fn parent(io: Box<BdevIo>, kind: Kind, remaining: u32) -> Parent {
        Parent { io, kind, remaining, errno: 0, ok_online: 0, failed_member: false, tried: 0 }
    }

    pub(super) fn submit(&self, io: Box<BdevIo>) {
        self.refresh();
        match (self.layout.level, io.io_type) {
            (RaidLevel::Raid1, IoType::Read) => self.mirror_read(io),
            (RaidLevel::Raid1, t) => {
                if t.is_write() {
                    if let Some(wi) = &self.intent {
                        if let Some(g) = wi.mark(io.offset_blocks, io.num_blocks) {
                            return self
                                .after_persist(g, Resume::Submit(self.me.get().cloned().unwrap_or_default(), io));
                        }
                    }
                }
                self.mirror_write(io)
            }
            (_, IoType::Flush | IoType::Reset) => self.broadcast(io),
            _ => self.striped(io),
        }
    }

    /// Holds `what` until the write-intent bits up to generation `g` are on disk.
    fn after_persist(&self, g: u64, what: Resume) {
        let Some(origin) = framework::current_index() else {
            return what.fail(libc::EIO);
        };
        let key = PENDING.with(|p| {
            let mut p = p.borrow_mut();
            p.0 += 1;
            let key = p.0;
            p.1.insert(key, what);
            key
        });
        let array = self.array.clone();
        let sent = framework::send(super::MD_REACTOR, move || {
            framework::task::spawn_local(async move {
                super::sb_io::persist(&array, g).await;
                if framework::send(origin, move || resume(key)).is_err() {
                    tracing::error!("raid I/O waiting for its bitmap lost its reactor");
                }
            })
        });
        if sent.is_err() {
            if let Some(w) = PENDING.with(|p| p.borrow_mut().1.remove(&key)) {
                w.fail(libc::EIO);
            }
        }
    }

    fn striped(&self, io: Box<BdevIo>) {
        let bs = io.block_size() as u64;
        let mut pieces = self.pieces.borrow_mut();
        self.layout.split(io.offset_blocks, io.num_blocks, &mut pieces);
        let view = self.view.borrow();
        if let [p] = pieces[..] {
            // Inside one member: the caller's own I/O goes there (no child, no parent slot).
            return match view.members.get(p.member).and_then(|m| m.as_ref()) {
                Some(member) => {
                    let ctx = forward_ctx(0, p.member, member.epoch);
                    let done = self.piece_done.get().expect("set at creation").clone();
                    member.chan.forward(io, self.data_offset + p.member_block, ctx, done);
                }
                None => io.fail(libc::ENODEV),
            };
        }
        let slot = self.free.borrow().last().copied().unwrap_or(self.parents.borrow().len());
        let mut staged = self.staged.borrow_mut();
        for p in pieces.iter() {
            let epoch = view.members.get(p.member).and_then(|m| m.as_ref()).map_or(0, |m| m.epoch);
            let mut c = self.child(slot, p.member, true, epoch);
            c.prepare(io.io_type, self.data_offset + p.member_block, p.blocks);
            if io.io_type.has_data() {
                for v in slice_iovs(io.iovs(), p.io_block * bs, p.blocks * bs) {
                    // SAFETY: the parent's submitter keeps its iovecs valid until the parent
                    // completes, which is after every child's callback ran.
                    unsafe { c.push_iov(v.iov_base.cast(), v.iov_len) };
                }
            }
            staged.push((p.member, c));
        }
        let n = staged.len() as u32;
        drop(pieces);
        let got = self.reserve(Self::parent(io, Kind::AllOf, n));
        debug_assert_eq!(got, slot);
        for (m, c) in staged.drain(..) {
            match view.members.get(m).and_then(|x| x.as_ref()) {
                Some(member) => member.chan.submit(c),
                None => c.fail(libc::ENODEV),
            }
        }
    }

    /// Flush or reset: every present member.
    fn broadcast(&self, io: Box<BdevIo>) {
        let view = self.view.borrow();
        let targets: Vec<usize> = (0..view.members.len()).filter(|&m| view.members[m].is_some()).collect();
        if targets.is_empty() {
            return io.fail(libc::ENODEV);
        }
        self.fan_out(io, &view, &targets, Kind::AllOf);
    }

    fn mirror_write(&self, io: Box<BdevIo>) {
        let view = self.view.borrow();
        let targets: Vec<usize> = (0..view.members.len()).filter(|&m| view.members[m].is_some()).collect();
        if !targets.iter().any(|&m| view.members[m].as_ref().is_some_and(|x| x.readable)) {
            return io.fail(libc::EIO);
        }
        self.fan_out(io, &view, &targets, Kind::Mirror);
    }

    /// The same request (its whole range and iovecs) on each of `targets`.
    fn fan_out(&self, io: Box<BdevIo>, view: &View, targets: &[usize], kind: Kind) {
        let slot = self.free.borrow().last().copied().unwrap_or(self.parents.borrow().len());
        let mut staged = self.staged.borrow_mut();
        for &m in targets {
            let member = view.members[m].as_ref().expect("filtered");
            let mut c = self.child(slot, m, member.readable, member.epoch);
            let offset = if io.io_type == IoType::Flush { 0 } else { self.data_offset + io.offset_blocks };
            c.prepare(io.io_type, offset, io.num_blocks);
            for v in io.iovs() {
                // SAFETY: as in `striped`: valid until the parent completes, after every child.
                unsafe { c.push_iov(v.iov_base.cast(), v.iov_len) };
            }
            staged.push((m, c));
        }
        let got = self.reserve(Self::parent(io, kind, targets.len() as u32));
        debug_assert_eq!(got, slot);
        for (m, c) in staged.drain(..) {
            view.members[m].as_ref().expect("filtered").chan.submit(c);
        }
    }

    /// The readable member not in `tried` with the fewest reads in flight here.
    fn pick_reader(view: &View, tried: u128) -> Option<usize> {
        (0..view.members.len())
            .filter(|&m| m >= 128 || tried & (1 << m) == 0)
            .filter_map(|m| view.members[m].as_ref().filter(|x| x.readable).map(|x| (x.reads.get(), m)))
            .min()
            .map(|(_, m)| m)
    }

    fn mirror_read(&self, io: Box<BdevIo>) {
        let view = self.view.borrow();
        let Some(m) = Self::pick_reader(&view, 0) else { return io.fail(libc::EIO) };
        let member = view.members[m].as_ref().expect("picked");
        if view.members.len() <= FORWARD_MEMBERS {
            return self.forward_read(member, m, 0, io);
        }
        let slot = self.free.borrow().last().copied().unwrap_or(self.parents.borrow().len());
        let mut c = self.child(slot, m, true, member.epoch);
        c.prepare(IoType::Read, self.data_offset + io.offset_blocks, io.num_blocks);
        for v in io.iovs() {
            // SAFETY: as in `striped`: valid until the parent completes, after every child.
            unsafe { c.push_iov(v.iov_base.cast(), v.iov_len) };
        }
        let mut p = Self::parent(io, Kind::Read, 1);
        p.tried = 1u128.checked_shl(m as u32).unwrap_or(0);
        let got = self.reserve(p);
        debug_assert_eq!(got, slot);
        member.reads.set(member.reads.get() + 1);
        member.chan.submit(c);
    }

    /// Sends raid1 read `io` (at the array's level) to member `m`, `tried` the members that
    /// failed it already.
    fn forward_read(&self, member: &MemberChan, m: usize, tried: u32, io: Box<BdevIo>) {
        member.reads.set(member.reads.get() + 1);
        let ctx = forward_ctx(tried, m, member.epoch);
        let offset = self.data_offset + io.offset_blocks;
        member.chan.forward(io, offset, ctx, self.read_done.get().expect("set at creation").clone());
    }

    /// A forwarded raid1 read came back: done, or the member fails and the next one is tried.
    fn forwarded_read_done(&self, mut io: Box<BdevIo>) {
        let (tried, m, epoch) = decode_forward_ctx(io.ctx);
        io.unforward();
        self.refresh();
        let view = self.view.borrow();
        if let Some(member) = view.members.get(m).and_then(|x| x.as_ref()) {
            member.reads.set(member.reads.get().saturating_sub(1));
        }
        if io.succeeded() {
            drop(view);
            return io.complete_inline(IoStatus::Success);
        }
        let errno = io.errno();
        tracing::warn!(array = %self.array.name, member = m, errno, "raid1 read failed: member fails, read retried");
        drop(view);
        members::member_failed(&self.array, m, epoch);
        self.refresh();
        let view = self.view.borrow();
        let tried = tried | 1u32.checked_shl(m as u32).unwrap_or(0);
        match Self::pick_reader(&view, tried as u128) {
            Some(next) => self.forward_read(view.members[next].as_ref().expect("picked"), next, tried, io),
            None => {
                drop(view);
                io.set_errno(errno.max(libc::EIO));
                io.complete_inline(IoStatus::Failed);
            }
        }
    }

    /// A raid0/concat I/O forwarded whole to one member came back: its outcome is the array's.
    fn forwarded_piece_done(&self, mut io: Box<BdevIo>) {
        io.unforward();
        if io.succeeded() {
            return io.complete_inline(IoStatus::Success);
        }
        // As a failed child makes its parent fail: Failed, with the member's errno or EIO.
        io.set_errno(io.errno().max(libc::EIO));
        io.complete_inline(IoStatus::Failed);
    }

    fn child_done(&self, mut child: Box<BdevIo>) {
        let (slot, m, online, epoch) = decode_ctx(child.ctx);
        let (ok, errno) = (child.succeeded(), child.errno());
        let kind = match self.parents.borrow().get(slot).and_then(|p| p.as_ref()) {
            Some(p) => p.kind,
            None => {
                tracing::error!(slot, "raid child completed without its parent");
                return;
            }
        };
        if kind == Kind::Read {
            self.refresh();
            let view = self.view.borrow();
            if let Some(member) = view.members.get(m).and_then(|x| x.as_ref()) {
                member.reads.set(member.reads.get().saturating_sub(1));
            }
            drop(view);
            if ok {
                self.pool.borrow_mut().push(child);
                return self.finish(slot, 0);
            }
            tracing::warn!(array = %self.array.name, member = m, errno, "raid1 read failed: member fails, read retried");
            members::member_failed(&self.array, m, epoch);
            self.refresh();
            let view = self.view.borrow();
            let tried = {
                let mut parents = self.parents.borrow_mut();
                let p = parents[slot].as_mut().expect("checked");
                p.tried |= 1u128.checked_shl(m as u32).unwrap_or(0);
                p.tried
            };
            match Self::pick_reader(&view, tried) {
                Some(next) => {
                    let member = view.members[next].as_ref().expect("picked");
                    child.ctx = child_ctx(slot, next, true, member.epoch);
                    let (off, n) = (child.offset_blocks, child.num_blocks);
                    child.prepare(IoType::Read, off, n);
                    member.reads.set(member.reads.get() + 1);
                    member.chan.submit(child);
                }
                None => {
                    drop(view);
                    self.pool.borrow_mut().push(child);
                    self.finish(slot, errno.max(libc::EIO));
                }
            }
            return;
        }
        let io_type = child.io_type;
        self.pool.borrow_mut().push(child);
        if !ok && kind == Kind::Mirror && io_type.is_write() {
            tracing::warn!(array = %self.array.name, member = m, errno, "raid1 write failed on a member: it fails");
            members::member_failed(&self.array, m, epoch);
        }
        let done = {
            let mut parents = self.parents.borrow_mut();
            let p = parents[slot].as_mut().expect("checked");
            p.remaining -= 1;
            if ok && online {
                p.ok_online += 1;
            }
            if !ok {
                p.errno = errno.max(libc::EIO);
                p.failed_member |= io_type.is_write();
            }
            p.remaining == 0
        };
        if !done {
            return;
        }
        let (errno, ok_online, failed_member) = {
            let parents = self.parents.borrow();
            let p = parents[slot].as_ref().expect("checked");
            (p.errno, p.ok_online, p.failed_member)
        };
        match kind {
            Kind::AllOf => self.finish(slot, errno),
            _ if ok_online == 0 => self.finish(slot, errno.max(libc::EIO)),
            _ => {
                // A member missed this write: its regions must be in the degraded bitmap, on
                // disk, before the write counts as done (the member may come back).
                let pending = match (&self.intent, failed_member) {
                    (Some(wi), true) => {
                        let p = self.parents.borrow();
                        let io = &p[slot].as_ref().expect("checked").io;
                        wi.mark_degraded(io.offset_blocks, io.num_blocks)
                    }
                    _ => None,
                };
                match pending {
                    Some(g) => {
                        let p = self.take(slot);
                        self.after_persist(g, Resume::Complete(p.io));
                    }
                    None => self.finish(slot, 0),
                }
            }
        }
    }

    fn take(&self, slot: usize) -> Parent {
        let p = self.parents.borrow_mut()[slot].take().expect("live parent");
        self.free.borrow_mut().push(slot);
        p
    }

    /// Completes parent `slot` (errno 0: success) from a child's completion callback.
    fn finish(&self, slot: usize, errno: i32) {
        let mut io = self.take(slot).io;
        if errno == 0 {
            io.complete_inline(IoStatus::Success);
        } else {
            io.set_errno(errno);
            io.complete_inline(IoStatus::Failed);
        }
    }
}

/// A forwarded I/O whose channel state is gone (cannot happen while the channel lives, and
/// it lives while it has I/O): given back failed rather than lost.
fn forwarded_orphan(mut io: Box<BdevIo>) {
    io.unforward();
    io.set_errno(libc::ENODEV);
    io.complete_inline(IoStatus::Failed);
}

/// What waits for the bitmap.
enum Resume {
    /// A write to submit again on its channel.
    Submit(Weak<ChanState>, Box<BdevIo>),
    /// A write done on the members, to complete.
    Complete(Box<BdevIo>),
}

impl Resume {
    fn fail(self, errno: i32) {
        match self {
            Resume::Submit(_, io) | Resume::Complete(io) => io.fail(errno),
        }
    }
}

thread_local! {
    /// I/O of this reactor waiting for a superblock write, by key.
    static PENDING: RefCell<(u64, HashMap<u64, Resume>)> = RefCell::new((0, HashMap::new()));
}

fn resume(key: u64) {
    let Some(what) = PENDING.with(|p| p.borrow_mut().1.remove(&key)) else { return };
    match what {
        Resume::Submit(ch, io) => match ch.upgrade() {
            Some(st) => st.submit(io),
            None => io.fail(libc::ENODEV),
        },
        Resume::Complete(io) => io.complete(IoStatus::Success),
    }
}
