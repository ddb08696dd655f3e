//! `error`: a bdev `EE_<base>` that forwards to its base, except for the I/Os the operator
//! asks it to break (SPDK's `bdev_error_create` / `bdev_error_inject_error`), to test how a
//! stack and its guests cope with a failing disk.
//!
//! Rules are per I/O type (read, write, unmap, flush): the next `num` I/Os of that type
//! (counted across every reactor, as SPDK's atomic counter), once at least `queue_depth` of
//! the channel's I/Os are in flight, meet the error:
//! - `failure`: completed as failed (`EIO`); `nvme_failure` the same (Ferry's bdev I/O
//!   carries an errno, not an NVMe status: the sct/sc pair is checked as SPDK does and logged).
//! - `pending`: held in the channel until `bdev_error_resume_pending` (then resubmitted) or a
//!   reset of the error bdev (then aborted).
//! - `corrupt_data`: a write reaches the base with byte `corrupt_offset` XORed with
//!   `corrupt_value` (in a copy: the submitter's buffer is untouched); a read returns the
//!   base's data with that byte XORed.
//! - `nomem`: SPDK completes the I/O with NOMEM and its bdev layer queues and retries it when
//!   another I/O completes. Ferry's bdev layer has no NOMEM queue, so this module does the
//!   same thing itself: the I/O waits in the channel and is retried (through the rules again,
//!   so `num` NOMEMs are spent) when one of the channel's I/Os completes, or after 1 ms when
//!   none is in flight. The submitter sees only a later success, as with SPDK.
//!
//! Hot-removing the base unregisters the error bdev (and drops its configuration, as SPDK's
//! destruct does) and fails the I/O it holds with `ENODEV`, so nothing waits forever.

use super::passthru::{complete_like_child, BaseBdev, Forwarder};
use super::split::strerror;
use crate::bdev::buf::DmaBuf;
use crate::bdev::{registry, BackendChannel, Bdev, BdevBackend, BdevError, BdevIo, IoStatus, IoType};
use crate::framework::{self, PollStatus, Poller};
use crate::rpc::{parse, RpcError, RpcMethod};
use serde::Deserialize;
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use uuid::Uuid;

/// The module's RPC methods.
pub const METHODS: &[RpcMethod] = &[
    RpcMethod::runtime("bdev_error_create", bdev_error_create),
    RpcMethod::runtime("bdev_error_delete", bdev_error_delete),
    RpcMethod::runtime("bdev_error_inject_error", bdev_error_inject_error),
    RpcMethod::runtime("bdev_error_resume_pending", bdev_error_resume_pending),
];

const MODULE: &str = "error";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What an injected error does (SPDK's `bdev_error_inject_error_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ErrorType {
    Failure,
    NvmeFailure,
    Pending,
    CorruptData,
    Nomem,
}

/// Which I/O a rule applies to (SPDK's `bdev_error_inject_io_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum InjectIoType {
    Clear,
    Read,
    Write,
    Unmap,
    Flush,
    All,
}

/// The I/O types rules exist for, in the order of `ErrorDisk::rules`.
const RULE_TYPES: [IoType; 4] = [IoType::Read, IoType::Write, IoType::Unmap, IoType::Flush];

fn rule_index(t: IoType) -> Option<usize> {
    RULE_TYPES.iter().position(|r| *r == t)
}

/// A rule's parameters besides its count.
#[derive(Debug, Clone, Copy)]
struct Spec {
    error_type: ErrorType,
    queue_depth: u64,
    corrupt_offset: u64,
    corrupt_value: u8,
}

/// One I/O type's rule: how many more I/Os to break, and how.
struct Rule {
    num: AtomicU32,
    spec: Mutex<Spec>,
}

/// The state of one error bdev shared by its channels on every reactor.
struct ErrorDisk {
    id: u64,
    rules: [Rule; 4],
}

impl ErrorDisk {
    fn new() -> Arc<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let rule = || Rule {
            num: AtomicU32::new(0),
            spec: Mutex::new(Spec {
                error_type: ErrorType::Failure,
                queue_depth: 0,
                corrupt_offset: 0,
                corrupt_value: 0,
            }),
        };
        Arc::new(ErrorDisk { id: NEXT.fetch_add(1, Ordering::Relaxed), rules: [rule(), rule(), rule(), rule()] })
    }

    /// The error the next I/O of `io_type` meets with `inflight` I/Os of its channel in
    /// flight, spending one of its rule's count (SPDK's `vbdev_error_get_error_type`).
    fn take_error(&self, io_type: IoType, inflight: u64) -> Option<Spec> {
        let rule = &self.rules[rule_index(io_type)?];
        if rule.num.load(Ordering::Relaxed) == 0 {
            return None; // the common case: no lock
        }
        let spec = *lock(&rule.spec);
        if inflight < spec.queue_depth {
            return None;
        }
        rule.num.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).ok()?;
        Some(spec)
    }
}

/// The error bdev's backend.
struct ErrorBackend {
    base: Arc<BaseBdev>,
    disk: Arc<ErrorDisk>,
}

type Done = Box<dyn Fn(Box<BdevIo>, IoStatus, i32)>;

/// One reactor's channel of an error bdev.
struct ErrorChannel {
    disk: Arc<ErrorDisk>,
    /// Forwards as it is.
    plain: Forwarder<Done>,
    /// Forwards a read whose data is corrupted on the way back.
    corrupting: Forwarder<Done>,
    /// This channel's I/Os at the base.
    inflight: Cell<u64>,
    /// I/Os held by `pending` rules.
    pending: RefCell<VecDeque<Box<BdevIo>>>,
    /// I/Os that met `nomem`, waiting for a retry.
    nomem: RefCell<VecDeque<Box<BdevIo>>>,
    /// The 1 ms retry timer, registered only while `nomem` holds I/O and none is in flight.
    retry: RefCell<Option<Poller>>,
    me: Weak<ErrorChannel>,
}

thread_local! {
    /// This reactor's error channels, for resume and reset (which reach every reactor).
    static CHANNELS: RefCell<Vec<Weak<ErrorChannel>>> = const { RefCell::new(Vec::new()) };
}

/// This reactor's live channels of disk `id`.
fn local_channels(id: u64) -> Vec<Rc<ErrorChannel>> {
    CHANNELS.with(|c| {
        let mut c = c.borrow_mut();
        c.retain(|w| w.strong_count() > 0);
        c.iter().filter_map(Weak::upgrade).filter(|ch| ch.disk.id == id).collect()
    })
}

/// Sends `f(channel)` for every channel of disk `id` on every reactor, without waiting.
fn on_every_channel(id: u64, f: fn(&ErrorChannel)) {
    for r in 0..framework::reactors().len() {
        let _ = framework::send(r, move || local_channels(id).iter().for_each(|ch| f(ch)));
    }
}

impl ErrorChannel {
    fn new(base: crate::bdev::BdevChannel, disk: Arc<ErrorDisk>) -> Rc<Self> {
        Rc::new_cyclic(|me: &Weak<ErrorChannel>| {
            let w = me.clone();
            let plain: Done = Box::new(move |io, status, errno| {
                if let Some(ch) = w.upgrade() {
                    ch.base_done();
                }
                complete_like_child(io, status, errno);
            });
            let w = me.clone();
            let corrupting: Done = Box::new(move |mut io, status, errno| {
                if let Some(ch) = w.upgrade() {
                    ch.base_done();
                    if status == IoStatus::Success {
                        let spec = *lock(&ch.disk.rules[0].spec);
                        corrupt_iovs(&mut io, spec.corrupt_offset, spec.corrupt_value);
                    }
                }
                complete_like_child(io, status, errno);
            });
            ErrorChannel {
                disk,
                plain: Forwarder::new(base.clone(), plain),
                corrupting: Forwarder::new(base, corrupting),
                inflight: Cell::new(0),
                pending: RefCell::default(),
                nomem: RefCell::default(),
                retry: RefCell::new(None),
                me: me.clone(),
            }
        })
    }

    fn submit(&self, io: Box<BdevIo>) {
        if io.io_type == IoType::Reset {
            // As SPDK: a reset aborts the held I/O (here and, by message, on other reactors).
            on_every_channel(self.disk.id, |ch| ch.fail_held(IoStatus::Aborted, 0));
            self.fail_held(IoStatus::Aborted, 0);
            return io.complete(IoStatus::Success);
        }
        let Some(spec) = self.disk.take_error(io.io_type, self.inflight.get()) else {
            return self.forward(&self.plain, io);
        };
        match spec.error_type {
            ErrorType::Failure | ErrorType::NvmeFailure => io.fail(libc::EIO),
            ErrorType::Pending => self.pending.borrow_mut().push_back(io),
            ErrorType::Nomem => {
                self.nomem.borrow_mut().push_back(io);
                if self.inflight.get() == 0 {
                    self.arm_retry();
                }
            }
            ErrorType::CorruptData => match io.io_type {
                IoType::Write => self.write_corrupted(io, spec),
                IoType::Read => self.forward(&self.corrupting, io),
                _ => self.forward(&self.plain, io),
            },
        }
    }

    fn forward(&self, fwd: &Forwarder<Done>, io: Box<BdevIo>) {
        self.inflight.set(self.inflight.get() + 1);
        fwd.forward(io, 0);
    }

    /// An I/O at the base finished (forwarded, or a corrupted write's copy): one fewer in
    /// flight, and I/O waiting after NOMEM gets its retry (as SPDK's bdev layer retries on a
    /// completion).
    fn base_done(&self) {
        self.inflight.set(self.inflight.get().saturating_sub(1));
        self.retry_nomem();
    }

    fn retry_nomem(&self) {
        let waiting = std::mem::take(&mut *self.nomem.borrow_mut());
        for io in waiting {
            self.submit(io);
        }
    }

    fn arm_retry(&self) {
        if self.retry.borrow().is_some() {
            return;
        }
        let w = self.me.clone();
        let poller = framework::poller_register("bdev_error_nomem_retry", Duration::from_millis(1), move || {
            let Some(ch) = w.upgrade() else { return PollStatus::Idle };
            // Drop the timer first: a retry that meets NOMEM again with nothing in flight
            // arms a new one.
            drop(ch.retry.borrow_mut().take());
            let any = !ch.nomem.borrow().is_empty();
            ch.retry_nomem();
            PollStatus::from(any)
        });
        *self.retry.borrow_mut() = Some(poller);
    }

    /// Resubmits the held I/O (after `bdev_error_resume_pending` set the counts to 0).
    fn resume(&self) {
        let held = std::mem::take(&mut *self.pending.borrow_mut());
        for io in held {
            self.submit(io);
        }
    }

    /// Completes every held I/O (pending and NOMEM) with `status`.
    fn fail_held(&self, status: IoStatus, errno: i32) {
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        let nomem = std::mem::take(&mut *self.nomem.borrow_mut());
        drop(self.retry.borrow_mut().take());
        for mut io in pending.into_iter().chain(nomem) {
            io.set_errno(errno);
            io.complete(status);
        }
    }

    /// Writes a corrupted copy of the data (the submitter's buffer stays as it was).
    fn write_corrupted(&self, parent: Box<BdevIo>, spec: Spec) {
        let len = parent.iov_bytes() as usize;
        let (offset_blocks, num_blocks) = (parent.offset_blocks, parent.num_blocks);
        let align = self.plain.base().bdev().backend().buf_align().max(8);
        let Some(mut buf) = DmaBuf::new(len, align) else { return parent.fail(libc::ENOMEM) };
        parent.copy_from_iovs(buf.as_mut_slice());
        if let Some(b) = buf.as_mut_slice().get_mut(spec.corrupt_offset as usize) {
            *b ^= spec.corrupt_value;
        }
        let ptr = buf.as_ptr();
        let parent = RefCell::new(Some(parent));
        let buf = RefCell::new(Some(buf));
        let w = self.me.clone();
        let mut child = BdevIo::new(Rc::new(move |child: Box<BdevIo>| {
            drop(buf.borrow_mut().take()); // the copy lived until the write was done
            if let Some(ch) = w.upgrade() {
                ch.base_done();
            }
            if let Some(p) = parent.borrow_mut().take() {
                complete_like_child(p, child.status(), child.errno());
            }
        }));
        // SAFETY: the copy is owned by the child's callback, which frees it only once the
        // child has completed; nobody else touches it meanwhile.
        unsafe { child.push_iov(ptr, len) };
        child.prepare(IoType::Write, offset_blocks, num_blocks);
        self.inflight.set(self.inflight.get() + 1);
        self.plain.base().submit(child);
    }
}

/// XORs byte `offset` of the I/O's data with `value` (SPDK's `vbdev_error_corrupt_io_data`).
fn corrupt_iovs(io: &mut BdevIo, mut offset: u64, value: u8) {
    for v in io.iovs() {
        if (v.iov_len as u64) > offset {
            // SAFETY: the iovec is valid for writes until the I/O completes (push_iov's
            // contract) and `offset` lies inside it.
            unsafe { *v.iov_base.cast::<u8>().add(offset as usize) ^= value };
            return;
        }
        offset -= v.iov_len as u64;
    }
}

/// The backend channel is the shared `ErrorChannel` (resume and reset reach it by message).
struct ChannelHandle(Rc<ErrorChannel>);

impl BackendChannel for ChannelHandle {
    fn submit(&self, io: Box<BdevIo>) {
        self.0.submit(io);
    }
}

impl BdevBackend for ErrorBackend {
    fn module(&self) -> &'static str {
        MODULE
    }

    fn product_name(&self) -> &'static str {
        "Error Injection Disk"
    }

    fn supports(&self, io_type: IoType) -> bool {
        io_type == IoType::Reset || self.base.bdev().supports(io_type)
    }

    fn stacked_on(&self) -> Option<&Bdev> {
        Some(self.base.bdev())
    }

    fn create_channel(&self, _bdev: &Bdev) -> Result<Box<dyn BackendChannel>, BdevError> {
        let ch = ErrorChannel::new(self.base.channel()?, self.disk.clone());
        CHANNELS.with(|c| c.borrow_mut().push(Rc::downgrade(&ch)));
        Ok(Box::new(ChannelHandle(ch)))
    }

    fn config(&self, bdev: &Bdev) -> Option<(&'static str, Value)> {
        Some(("bdev_error_create", json!({"base_name": self.base.bdev().name(), "uuid": bdev.uuid().to_string()})))
    }

    fn driver_specific(&self) -> Option<(&'static str, Value)> {
        Some(("error_disk", json!({"base_bdev": self.base.bdev().name()})))
    }
}

/// An error bdev asked for, per base (SPDK's `g_error_config`).
struct Config {
    base: String,
    uuid: Option<Uuid>,
    /// The claimed base and the shared state while `EE_<base>` exists.
    live: Option<(Arc<BaseBdev>, Arc<ErrorDisk>)>,
}

static CONFIGS: Mutex<Vec<Config>> = Mutex::new(Vec::new());

fn vbdev_name(base: &str) -> String {
    format!("EE_{base}")
}

/// Claims `base_name` and registers `EE_<base>` on it; nothing is left behind on failure.
fn build(base_name: &str, uuid: Option<Uuid>) -> Result<(Arc<BaseBdev>, Arc<ErrorDisk>), BdevError> {
    let owner = base_name.to_string();
    let base = BaseBdev::open(base_name, MODULE, move || {
        // As SPDK's destruct: the configuration goes with the bdev.
        let config = {
            let mut configs = lock(&CONFIGS);
            let i = configs.iter().position(|c| c.base == owner);
            i.map(|i| configs.remove(i))
        };
        if let Some((_, disk)) = config.and_then(|c| c.live) {
            on_every_channel(disk.id, |ch| ch.fail_held(IoStatus::Failed, libc::ENODEV));
        }
        let _ = registry::unregister(&vbdev_name(&owner), Some(MODULE));
    })?;
    let disk = ErrorDisk::new();
    let props = base.props(&vbdev_name(base_name), uuid, base.bdev().num_blocks());
    if let Err(e) = registry::register(props, Box::new(ErrorBackend { base: base.clone(), disk: disk.clone() })) {
        base.release();
        return Err(e);
    }
    Ok((base, disk))
}

fn examine(bdev: &Bdev) {
    let waiting = lock(&CONFIGS).iter().find(|c| c.live.is_none() && c.base == bdev.name()).map(|c| c.uuid);
    let Some(uuid) = waiting else { return };
    match build(bdev.name(), uuid) {
        Ok(live) => set_live(bdev.name(), live),
        Err(e) => tracing::error!(base = bdev.name(), "could not create error bdev at examine: {e}"),
    }
}

fn set_live(base: &str, live: (Arc<BaseBdev>, Arc<ErrorDisk>)) {
    match lock(&CONFIGS).iter_mut().find(|c| c.base == base) {
        Some(c) => c.live = Some(live),
        None => {
            let _ = registry::unregister(&vbdev_name(base), Some(MODULE));
            live.0.release();
        }
    }
}

fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| registry::register_examine(examine));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateParams {
    base_name: String,
    uuid: Option<Uuid>,
}

fn errno_error(errno: i32) -> RpcError {
    RpcError::errno(errno, strerror(errno))
}

fn bdev_error_create(params: Option<Value>) -> Result<Value, RpcError> {
    let p: CreateParams = parse(params)?;
    init();
    {
        let mut configs = lock(&CONFIGS);
        if configs.iter().any(|c| c.base == p.base_name) {
            return Err(errno_error(libc::EEXIST));
        }
        configs.push(Config { base: p.base_name.clone(), uuid: p.uuid, live: None });
    }
    match build(&p.base_name, p.uuid) {
        Ok(live) => set_live(&p.base_name, live),
        // As SPDK: the base may come later.
        Err(BdevError::NotFound(_)) => {}
        Err(e) => {
            lock(&CONFIGS).retain(|c| c.base != p.base_name);
            return Err(RpcError::errno(e.errno(), format!("{}: {e}", strerror(e.errno()))));
        }
    }
    Ok(json!(true))
}

/// The configuration entry and live disk of error bdev `name` (name, alias or uuid).
fn find_disk(name: &str) -> Option<(String, Arc<ErrorDisk>)> {
    let bdev = registry::get(name)?;
    let configs = lock(&CONFIGS);
    let c = configs.iter().find(|c| vbdev_name(&c.base) == bdev.name() && bdev.module() == MODULE)?;
    Some((c.base.clone(), c.live.as_ref()?.1.clone()))
}

fn bdev_error_delete(params: Option<Value>) -> Result<Value, RpcError> {
    let p: super::DeleteParams = parse(params)?;
    let Some((base, _)) = find_disk(&p.name) else { return Err(errno_error(libc::ENODEV)) };
    let config = {
        let mut configs = lock(&CONFIGS);
        let i = configs.iter().position(|c| c.base == base);
        i.map(|i| configs.remove(i))
    };
    let _ = registry::unregister(&vbdev_name(&base), Some(MODULE));
    if let Some((base, disk)) = config.and_then(|c| c.live) {
        on_every_channel(disk.id, |ch| ch.fail_held(IoStatus::Failed, libc::ENODEV));
        base.release();
    }
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InjectParams {
    name: String,
    io_type: InjectIoType,
    error_type: ErrorType,
    #[serde(default)]
    nvme_sct: u32,
    #[serde(default)]
    nvme_sc: u32,
    #[serde(default = "one")]
    num: u32,
    #[serde(default)]
    queue_depth: u64,
    #[serde(default)]
    corrupt_offset: u64,
    #[serde(default)]
    corrupt_value: u8,
}

fn one() -> u32 {
    1
}

fn bdev_error_inject_error(params: Option<Value>) -> Result<Value, RpcError> {
    let p: InjectParams = parse(params)?;
    let nvme = p.error_type == ErrorType::NvmeFailure;
    if (nvme && p.nvme_sct == 0 && p.nvme_sc == 0) || (!nvme && (p.nvme_sct != 0 || p.nvme_sc != 0)) {
        return Err(RpcError::errno(libc::EINVAL, "nvme_sct or nvme_sc should be specified for NVMe error injection"));
    }
    if p.error_type == ErrorType::CorruptData && p.corrupt_value == 0 {
        return Err(RpcError::errno(libc::EINVAL, "corrupt_value should be non-zero"));
    }
    let Some((_, disk)) = find_disk(&p.name) else { return Err(errno_error(libc::ENODEV)) };
    if nvme {
        tracing::info!(name = p.name, sct = p.nvme_sct, sc = p.nvme_sc, "nvme_failure injected as EIO");
    }
    let spec = Spec {
        error_type: p.error_type,
        queue_depth: p.queue_depth,
        corrupt_offset: p.corrupt_offset,
        corrupt_value: p.corrupt_value,
    };
    let set = |rule: &Rule| {
        *lock(&rule.spec) = spec;
        rule.num.store(p.num, Ordering::Relaxed);
    };
    match p.io_type {
        InjectIoType::Clear => disk.rules.iter().for_each(|r| r.num.store(0, Ordering::Relaxed)),
        InjectIoType::All => disk.rules.iter().for_each(set),
        InjectIoType::Read => set(&disk.rules[0]),
        InjectIoType::Write => set(&disk.rules[1]),
        InjectIoType::Unmap => set(&disk.rules[2]),
        InjectIoType::Flush => set(&disk.rules[3]),
    }
    tracing::info!(name = p.name, io_type = ?p.io_type, error_type = ?p.error_type, num = p.num, "error injected");
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResumeParams {
    name: String,
}

fn bdev_error_resume_pending(params: Option<Value>) -> Result<Value, RpcError> {
    let p: ResumeParams = parse(params)?;
    if registry::get(&p.name).is_none() {
        return Err(errno_error(libc::ENODEV));
    }
    let Some((_, disk)) = find_disk(&p.name) else { return Err(errno_error(libc::ENODEV)) };
    for rule in &disk.rules {
        if lock(&rule.spec).error_type == ErrorType::Pending {
            rule.num.store(0, Ordering::Relaxed);
        }
    }
    let id = disk.id;
    framework::call_on_each(move || local_channels(id).iter().for_each(|ch| ch.resume()))
        .map_err(|e| RpcError::errno(libc::EIO, e.to_string()))?;
    Ok(json!(true))
}
