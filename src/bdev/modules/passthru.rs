//! `passthru`: a virtual bdev that hands every I/O to the bdev below it, unchanged.
//!
//! It does nothing useful, on purpose: it is the smallest complete virtual bdev, the one to
//! copy when writing a new module, and its cost per I/O is the floor every virtual bdev pays
//! (`scripts/bench/vbdev.sh` measures it). Everything a stacked module needs is here:
//!
//! 1. **Claim the base.** [`BaseBdev::open`] opens the bdev below writable and takes its
//!    exclusive write claim for the module, so nobody else can stack on it or write to it
//!    behind our back (SPDK's `spdk_bdev_module_claim_bdev`).
//! 2. **Forward I/O.** Each reactor's channel of the virtual bdev holds that reactor's channel
//!    of the base and a [`Forwarder`], which hands the submitter's own `BdevIo` to the base
//!    with [`BdevChannel::forward`]: no child I/O, no copy of the iovecs, no allocation. A
//!    frame saved inside the I/O remembers our level (range, channel, callback, `ctx`); the
//!    base counts and times the I/O as its own. While it is forwarded, `io.ctx` is ours to use.
//! 3. **Complete.** When the base completes it, the forwarder's callback first calls
//!    [`BdevIo::unforward`] (the I/O is ours again, carrying the base's status and errno),
//!    then passthru completes it at once with [`BdevIo::complete_inline`] (the reactor loop
//!    is below, so this cannot recurse), which saves a second trip through the completion
//!    queue and counts it in our statistics too.
//! 4. **Hot-remove unwinds.** When the base goes (its descriptor gets `Remove`), the virtual
//!    bdev is unregistered, which sends `Remove` to whoever has *it* open, and the claim is
//!    released. The configuration is kept: if a bdev of the base's name comes back, examine
//!    builds the passthru bdev on it again (as SPDK's module does).
//! 5. **Configuration.** `save_config` replays `bdev_passthru_create` with the uuid, after
//!    the base (registration order); a create whose base does not exist yet succeeds and
//!    waits for it (SPDK: "vbdev creation deferred pending base bdev arrival").
//! 6. **`bdev_get_bdevs`** shows `driver_specific.passthru` = `{name, base_bdev_name}`.
//! 7. **Properties.** [`BdevBackend::stacked_on`] names the base, so write cache, alignment,
//!    hints, read-only, physical block size and the I/O types supported are the base's without a
//!    line of our own.
//!
//! The pieces [`BaseBdev`] and [`Forwarder`] are public: split, delay and error use them too.

use super::delete_bdev;
use crate::bdev::{
    registry, BackendChannel, Bdev, BdevBackend, BdevChannel, BdevDesc, BdevError, BdevEvent, BdevIo, BdevProps,
    IoCallback, IoStatus,
};
use crate::rpc::{parse, RpcError, RpcMethod};
use serde::Deserialize;
use serde_json::{json, Value};
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use uuid::Uuid;

/// The module's RPC methods.
pub const METHODS: &[RpcMethod] = &[
    RpcMethod::runtime("bdev_passthru_create", bdev_passthru_create),
    RpcMethod::runtime("bdev_passthru_delete", bdev_passthru_delete),
];

const MODULE: &str = "passthru";

// ------------------------------------------------------------------------------------------
// The reusable part: a claimed base and forwarding I/O onto it.
// ------------------------------------------------------------------------------------------

/// A base bdev under a virtual bdev: open for writing, claimed by the module, watched for
/// removal. Shared by the virtual bdev's backend (which makes base channels from it) and the
/// module's bookkeeping (which releases it on delete).
pub struct BaseBdev {
    bdev: Bdev,
    /// The open descriptor; `None` once released (the claim goes with it).
    desc: Mutex<Option<BdevDesc>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // These locks guard plain bookkeeping: a panic elsewhere leaves it consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl BaseBdev {
    /// Opens bdev `name` writable and claims it for `module`. `on_remove` runs (on whatever
    /// thread unregisters the base) when the base is removed; the claim is released after it.
    pub fn open(
        name: &str,
        module: &'static str,
        on_remove: impl Fn() + Send + Sync + 'static,
    ) -> Result<Arc<BaseBdev>, BdevError> {
        // The event callback must reach the BaseBdev, which exists only after `open` returns.
        let me: Arc<OnceLock<std::sync::Weak<BaseBdev>>> = Arc::default();
        let target = me.clone();
        let on_event = Box::new(move |event: BdevEvent, bdev: &Bdev| match event {
            BdevEvent::Remove => {
                tracing::info!(base = bdev.name(), module, "base bdev removed: unwinding the virtual bdev");
                on_remove();
                if let Some(base) = target.get().and_then(std::sync::Weak::upgrade) {
                    base.release();
                }
            }
            BdevEvent::Resize => tracing::info!(base = bdev.name(), module, "base bdev resized; size kept"),
        });
        let mut desc = crate::bdev::open(name, true, on_event)?;
        desc.claim(module)?;
        let base = Arc::new(BaseBdev { bdev: desc.bdev().clone(), desc: Mutex::new(Some(desc)) });
        let _ = me.set(Arc::downgrade(&base));
        Ok(base)
    }

    /// The base bdev.
    pub fn bdev(&self) -> &Bdev {
        &self.bdev
    }

    /// This reactor's channel of the base (reactor threads only).
    pub fn channel(&self) -> Result<BdevChannel, BdevError> {
        match lock(&self.desc).as_ref() {
            Some(desc) => desc.channel(),
            None => Err(BdevError::Removed(self.bdev.name().to_string())),
        }
    }

    /// Closes the descriptor and drops the claim (idempotent). Channels already made keep
    /// working until they go; I/O on a removed base fails with `ENODEV`.
    pub fn release(&self) {
        drop(lock(&self.desc).take());
    }

    /// Geometry of a virtual bdev called `name` covering `num_blocks` of the base.
    pub fn props(&self, name: &str, uuid: Option<Uuid>, num_blocks: u64) -> BdevProps {
        BdevProps { name: name.to_string(), uuid, block_size: self.bdev.block_size(), num_blocks }
    }
}

/// SPDK's uuid for a virtual bdev created without one: a v5 (SHA-1) uuid of the module's
/// namespace and the base's uuid, so the same stack gets the same uuid every time.
pub fn derived_uuid(namespace: Uuid, base: &Bdev) -> Uuid {
    use sha2::Digest;
    let mut h = sha1::Sha1::new();
    h.update(namespace.as_bytes());
    h.update(base.uuid().as_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

/// Forwards a virtual bdev's I/Os to its base on one reactor with
/// [`BdevChannel::forward`]: the submitter's own `BdevIo` goes down (no child I/O, no copy of
/// the iovecs, no allocation per I/O) and comes back to `C` with the base's status.
///
/// How forwarding works, step by step:
/// - `forward` saves this level of the I/O (range, channel, callback, `ctx`) in a frame
///   inside the I/O and submits it on the base channel at the base's offset. The base
///   validates, counts and times it as any I/O of its own.
/// - When the base completes it, our callback (made once per forwarder, cloned per I/O: an
///   `Rc`, no allocation) calls [`BdevIo::unforward`] *first*: the I/O is again the one the
///   submitter gave us, with the base's status and errno. Only then is it handed to `C`.
/// - `C` completes it as our own (so our bdev's statistics and range locks see it too), or
///   keeps it and completes it later (delay).
pub struct Forwarder<C> {
    base: BdevChannel,
    /// Runs when the base completes a forwarded I/O; made once, cloned for each I/O.
    on_done: IoCallback,
    _done: std::marker::PhantomData<C>,
}

impl<C: Fn(Box<BdevIo>, IoStatus, i32) + 'static> Forwarder<C> {
    /// A forwarder onto `base` (this reactor's channel of the base). `done(io, status,
    /// errno)` runs from the base's completion callback with the I/O already unforwarded: it
    /// may complete it with [`BdevIo::complete_inline`], or keep it (delay) and complete it
    /// later.
    pub fn new(base: BdevChannel, done: C) -> Self {
        let on_done: IoCallback = Rc::new(move |mut io: Box<BdevIo>| {
            // Back to our level before anything else: our range, channel, callback and ctx.
            io.unforward();
            let (status, errno) = (io.status(), io.errno());
            done(io, status, errno);
        });
        Forwarder { base, on_done, _done: std::marker::PhantomData }
    }

    /// The base channel.
    pub fn base(&self) -> &BdevChannel {
        &self.base
    }

    /// Sends `io` itself to the base, `shift` blocks further on (a split's offset; 0 for
    /// most). The virtual bdev and its base have the same block size here.
    #[inline]
    pub fn forward(&self, io: Box<BdevIo>, shift: u64) {
        let at = io.offset_blocks + shift;
        self.base.forward(io, at, 0, self.on_done.clone());
    }

    /// As [`Self::forward`], remapped in the bdev layer's one pass where it can be
    /// ([`BdevChannel::remap`]): for a module whose `done` is [`complete_like_child`], which a
    /// remapped I/O skips (it completes as the base completes it).
    #[inline]
    pub fn remap_or_forward(&self, io: Box<BdevIo>, shift: u64) {
        let at = io.offset_blocks + shift;
        if let Err(io) = self.base.remap(io, at) {
            self.base.forward(io, at, 0, self.on_done.clone());
        }
    }
}

/// Completes a forwarded I/O (already unforwarded) with the base's outcome, from the base's
/// completion callback (the reactor loop is below, so completing inline cannot recurse).
#[inline]
pub fn complete_like_child(mut io: Box<BdevIo>, status: IoStatus, errno: i32) {
    if status != IoStatus::Success {
        io.set_errno(errno);
    }
    io.complete_inline(status);
}

// ------------------------------------------------------------------------------------------
// The passthru bdev.
// ------------------------------------------------------------------------------------------

/// SPDK's namespace for passthru uuids (vbdev_passthru.c, BDEV_PASSTHRU_NAMESPACE_UUID).
const NAMESPACE: Uuid = uuid::uuid!("7e25812e-c8c0-4d3f-8599-16d790555b85");

/// One passthru bdev: its base, nothing else.
struct PassthruBackend {
    base: Arc<BaseBdev>,
}

/// One reactor's channel: forwarding onto the base's channel of that reactor.
struct PassthruChannel {
    fwd: Forwarder<fn(Box<BdevIo>, IoStatus, i32)>,
}

impl BackendChannel for PassthruChannel {
    #[inline]
    fn submit(&self, io: Box<BdevIo>) {
        self.fwd.remap_or_forward(io, 0);
    }
}

impl BdevBackend for PassthruBackend {
    fn module(&self) -> &'static str {
        MODULE
    }

    fn product_name(&self) -> &'static str {
        "passthru"
    }

    fn stacked_on(&self) -> Option<&Bdev> {
        Some(self.base.bdev())
    }

    fn create_channel(&self, _bdev: &Bdev) -> Result<Box<dyn BackendChannel>, BdevError> {
        let base = self.base.channel()?;
        Ok(Box::new(PassthruChannel { fwd: Forwarder::new(base, complete_like_child) }))
    }

    fn config(&self, bdev: &Bdev) -> Option<(&'static str, Value)> {
        Some((
            "bdev_passthru_create",
            json!({
                "base_bdev_name": self.base.bdev().name(),
                "name": bdev.name(),
                "uuid": bdev.uuid().to_string(),
            }),
        ))
    }

    fn driver_specific(&self) -> Option<(&'static str, Value)> {
        // SPDK's dump_info_json writes the passthru bdev's own name here too; the bdev is
        // not at hand, so it comes from the module's table.
        let name = lock(&NODES)
            .iter()
            .find(|n| n.live.as_ref().is_some_and(|b| Arc::ptr_eq(b, &self.base)))
            .map(|n| n.name.clone());
        Some((MODULE, json!({"name": name, "base_bdev_name": self.base.bdev().name()})))
    }

    fn allocation_run(&self, offset_blocks: u64, max_blocks: u64) -> Option<(bool, u64)> {
        self.base.bdev().allocation_run(offset_blocks, max_blocks)
    }
}

/// A passthru bdev the operator asked for: built now, or when its base appears.
struct Node {
    name: String,
    base_name: String,
    uuid: Option<Uuid>,
    /// The claimed base while the passthru bdev exists.
    live: Option<Arc<BaseBdev>>,
}

/// Every passthru bdev asked for, built or waiting for its base (SPDK's `g_bdev_names`).
static NODES: Mutex<Vec<Node>> = Mutex::new(Vec::new());

/// Builds passthru bdev `name` on `base_name`: claim, register. Nothing is left behind on
/// failure. Called without `NODES` held: registering runs examine hooks, ours included.
fn build(name: &str, base_name: &str, uuid: Option<Uuid>) -> Result<Arc<BaseBdev>, BdevError> {
    let vname = name.to_string();
    let base = BaseBdev::open(base_name, MODULE, move || {
        // The base went: unregister the passthru bdev (its users get Remove) and forget the
        // base, keeping the configuration for the base's return.
        if let Some(n) = lock(&NODES).iter_mut().find(|n| n.name == vname) {
            n.live = None;
        }
        let _ = registry::unregister(&vname, Some(MODULE));
    })?;
    let uuid = uuid.unwrap_or_else(|| derived_uuid(NAMESPACE, base.bdev()));
    let props = base.props(name, Some(uuid), base.bdev().num_blocks());
    if let Err(e) = registry::register(props, Box::new(PassthruBackend { base: base.clone() })) {
        base.release();
        return Err(e);
    }
    Ok(base)
}

/// Examine: builds the passthru bdevs waiting for `bdev`.
fn examine(bdev: &Bdev) {
    let waiting: Vec<(String, Option<Uuid>)> = lock(&NODES)
        .iter()
        .filter(|n| n.live.is_none() && n.base_name == bdev.name())
        .map(|n| (n.name.clone(), n.uuid))
        .collect();
    for (name, uuid) in waiting {
        match build(&name, bdev.name(), uuid) {
            Ok(base) => set_live(&name, base),
            Err(e) => tracing::error!(name, base = bdev.name(), "could not create passthru bdev at examine: {e}"),
        }
    }
}

fn set_live(name: &str, base: Arc<BaseBdev>) {
    match lock(&NODES).iter_mut().find(|n| n.name == name) {
        Some(n) => n.live = Some(base),
        // Deleted meanwhile: undo.
        None => {
            let _ = registry::unregister(name, Some(MODULE));
            base.release();
        }
    }
}

/// Installs the examine hook once (the first create, or `load_config`).
fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| registry::register_examine(examine));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateParams {
    name: String,
    base_bdev_name: String,
    uuid: Option<Uuid>,
}

fn bdev_passthru_create(params: Option<Value>) -> Result<Value, RpcError> {
    let p: CreateParams = parse(params)?;
    registry::validate_name(&p.name)?;
    init();
    {
        let mut nodes = lock(&NODES);
        if nodes.iter().any(|n| n.name == p.name) {
            return Err(RpcError::errno(libc::EEXIST, format!("passthru bdev {} already exists", p.name)));
        }
        nodes.push(Node { name: p.name.clone(), base_name: p.base_bdev_name.clone(), uuid: p.uuid, live: None });
    }
    match build(&p.name, &p.base_bdev_name, p.uuid) {
        Ok(base) => set_live(&p.name, base),
        // As SPDK: not an error, the base may show up later.
        Err(BdevError::NotFound(_)) => {
            tracing::info!(
                name = p.name,
                base = p.base_bdev_name,
                "passthru creation deferred pending base bdev arrival"
            )
        }
        Err(e) => {
            lock(&NODES).retain(|n| n.name != p.name);
            return Err(RpcError::errno(e.errno(), format!("could not create passthru bdev {}: {e}", p.name)));
        }
    }
    Ok(json!(p.name))
}

fn bdev_passthru_delete(params: Option<Value>) -> Result<Value, RpcError> {
    let p: super::DeleteParams = parse(params.clone())?;
    let result = delete_bdev(params, MODULE)?;
    // The association goes too, so the bdev is not built again when the base comes back.
    let node = {
        let mut nodes = lock(&NODES);
        let i = nodes.iter().position(|n| n.name == p.name);
        i.map(|i| nodes.remove(i))
    };
    if let Some(base) = node.and_then(|n| n.live) {
        base.release();
    }
    Ok(result)
}
