//! An open RBD image: opened and closed off the reactors (both wait on the cluster), shared
//! by the bdev's channels, watched for size changes made by other clients.

use super::cluster::{bounded, Rados};
use super::error::RbdError;
use super::ffi::{Api, ImageT, IoctxT};
use crate::bdev::registry;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use uuid::Uuid;

/// How long opening an image may wait on the cluster (librados itself would wait forever for
/// an OSD that does not answer).
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// The raw handles of an open image, closed by whoever drops the last [`Image`].
struct Handles {
    api: &'static Api,
    ioctx: IoctxT,
    image: ImageT,
    /// The size watch: librbd's handle and the context its callback receives.
    watch: Option<(u64, *mut WatchCtx)>,
    /// Keeps the cluster connection up while the image is open.
    _conn: Arc<Rados>,
}

// SAFETY: librbd image handles and pool contexts may be used from any thread (librbd takes
// its own locks); the watch context is only freed after the watch is removed.
unsafe impl Send for Handles {}

impl Handles {
    /// Removes the watch and closes the image and its pool context. Blocks on the cluster.
    fn close(self) {
        let api = self.api;
        if let Some((handle, ctx)) = self.watch {
            // SAFETY: the watch was registered on this image; rbd_update_unwatch returns after
            // any callback in progress has finished, so `ctx` is unused afterwards.
            unsafe { (api.rbd_update_unwatch)(self.image, handle) };
            // SAFETY: `ctx` came from Box::into_raw in `Image::watch` and is freed once.
            drop(unsafe { Box::from_raw(ctx) });
        }
        // SAFETY: the image is open and nothing else uses it (its last owner is gone):
        // rbd_close waits for its own operations, and the pool context goes after it.
        unsafe {
            (api.rbd_close)(self.image);
            (api.rados_ioctx_destroy)(self.ioctx);
        }
    }
}

/// An open image.
pub struct Image {
    handles: Mutex<Option<Handles>>,
    raw: ImageT,
    api: &'static Api,
    /// The image's feature bits at open.
    pub features: u64,
    /// Opened read-only.
    pub read_only: bool,
}

// SAFETY: see `Handles`; `raw` is the same image handle, valid while `handles` holds it,
// which is until Drop.
unsafe impl Send for Image {}
// SAFETY: as above: librbd's image operations are safe to call concurrently.
unsafe impl Sync for Image {}

/// What the size watch's callback needs: the image (weakly: the watch must not keep it open)
/// and the bdev to tell, found again by name and uuid.
struct WatchCtx {
    image: Weak<Image>,
    bdev_name: String,
    bdev_uuid: Uuid,
}

impl Image {
    /// Opens image `name` of pool `pool` on `conn`, within [`OPEN_TIMEOUT`].
    pub fn open(conn: Arc<Rados>, pool: &str, name: &str, read_only: bool) -> Result<Arc<Image>, RbdError> {
        let c_pool =
            CString::new(pool).map_err(|_| RbdError::Invalid("pool_name must not contain a NUL byte".into()))?;
        let c_name =
            CString::new(name).map_err(|_| RbdError::Invalid("rbd_name must not contain a NUL byte".into()))?;
        let (pool, name) = (pool.to_string(), name.to_string());
        let what = format!("opening image {pool}/{name}");
        bounded(what, OPEN_TIMEOUT, move || {
            let api = conn.api();
            let mut ioctx: IoctxT = std::ptr::null_mut();
            // SAFETY: a connected cluster handle, a NUL-terminated pool name, a valid out pointer.
            let rc = unsafe { (api.rados_ioctx_create)(conn.handle(), c_pool.as_ptr(), &mut ioctx) };
            if rc == -libc::ENOENT {
                return Err(RbdError::NotFound(format!("pool {pool} does not exist")));
            } else if rc < 0 {
                return Err(RbdError::call(format!("opening pool {pool}"), rc));
            }
            let mut image: ImageT = std::ptr::null_mut();
            let open = if read_only { api.rbd_open_read_only } else { api.rbd_open };
            // SAFETY: a valid pool context, a NUL-terminated image name, no snapshot (null),
            // a valid out pointer.
            let rc = unsafe { open(ioctx, c_name.as_ptr(), &mut image, std::ptr::null()) };
            if rc < 0 {
                // SAFETY: the context is ours and nothing was opened from it.
                unsafe { (api.rados_ioctx_destroy)(ioctx) };
                return Err(if rc == -libc::ENOENT {
                    RbdError::NotFound(format!("image {name} does not exist in pool {pool}"))
                } else {
                    RbdError::call(format!("opening image {pool}/{name}"), rc)
                });
            }
            let handles = Handles { api, ioctx, image, watch: None, _conn: conn };
            let mut features = 0u64;
            // SAFETY: an open image and a valid out pointer.
            let rc = unsafe { (api.rbd_get_features)(image, &mut features) };
            if rc < 0 {
                handles.close();
                return Err(RbdError::call("reading the image's features", rc));
            }
            Ok(Arc::new(Image { handles: Mutex::new(Some(handles)), raw: image, api, features, read_only }))
        })
    }

    /// The library table.
    pub fn api(&self) -> &'static Api {
        self.api
    }

    /// The image handle, for submitting I/O.
    pub fn raw(&self) -> ImageT {
        self.raw
    }

    /// The image's size in bytes as librbd knows it now (may wait on the cluster to refresh
    /// the header after a change: never call it on a reactor).
    pub fn size(&self) -> Result<u64, RbdError> {
        let mut size = 0u64;
        // SAFETY: an open image (self is alive) and a valid out pointer.
        let rc = unsafe { (self.api.rbd_get_size)(self.raw, &mut size) };
        if rc < 0 {
            return Err(RbdError::call("reading the image's size", rc));
        }
        Ok(size)
    }

    /// Grows the image to `bytes`. Waits on the cluster.
    pub fn resize(&self, bytes: u64) -> Result<(), RbdError> {
        // SAFETY: an open image.
        let rc = unsafe { (self.api.rbd_resize)(self.raw, bytes) };
        if rc < 0 {
            return Err(RbdError::call("resizing the image", rc));
        }
        Ok(())
    }

    /// Watches the image's header: when another client (or `bdev_rbd_resize`) changes its
    /// size, bdev `bdev_name` is resized and its users told (a guest sees a capacity change).
    pub fn watch(self: &Arc<Image>, bdev_name: &str, bdev_uuid: Uuid) -> Result<(), RbdError> {
        let ctx =
            Box::into_raw(Box::new(WatchCtx { image: Arc::downgrade(self), bdev_name: bdev_name.into(), bdev_uuid }));
        let mut handle = 0u64;
        // SAFETY: an open image; `ctx` stays allocated until the watch is removed (Handles::close).
        let rc = unsafe { (self.api.rbd_update_watch)(self.raw, &mut handle, on_header_update, ctx.cast()) };
        if rc < 0 {
            // SAFETY: the watch was not registered: `ctx` is still ours alone.
            drop(unsafe { Box::from_raw(ctx) });
            return Err(RbdError::call("watching the image's header", rc));
        }
        if let Some(h) = self.handles.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            h.watch = Some((handle, ctx));
        }
        Ok(())
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let Some(handles) = self.handles.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        // Closing waits on the cluster, and the last owner may be a reactor (a channel):
        // close on a thread of its own.
        let closer = move || handles.close();
        if let Err(e) = std::thread::Builder::new().name("rbd-close".into()).spawn(closer) {
            tracing::error!(error = %e, "cannot start a thread to close an RBD image: it stays open");
        }
    }
}

/// librbd's header-update callback, on a librados thread: hands the work to a thread of its
/// own (reading the new size may wait on the cluster, and librbd's callback thread must not).
unsafe extern "C" fn on_header_update(arg: *mut c_void) {
    // SAFETY: `arg` is the WatchCtx registered with this watch, alive until the watch is
    // removed, which waits for this callback to return.
    let ctx = unsafe { &*(arg as *const WatchCtx) };
    let (image, name, uuid) = (ctx.image.clone(), ctx.bdev_name.clone(), ctx.bdev_uuid);
    let _ = std::thread::Builder::new().name("rbd-resize".into()).spawn(move || follow_size(image, &name, uuid));
}

/// Gives bdev `name` the image's current size, if the bdev and the image still exist.
fn follow_size(image: Weak<Image>, name: &str, uuid: Uuid) {
    let Some(image) = image.upgrade() else { return };
    let Some(bdev) = registry::get(name).filter(|b| b.uuid() == uuid) else { return };
    let size = match image.size() {
        Ok(size) => size,
        Err(e) => {
            tracing::warn!(bdev = name, error = %e, "image header changed but its size could not be read");
            return;
        }
    };
    let blocks = size / bdev.block_size() as u64;
    if blocks != bdev.num_blocks() && blocks > 0 {
        tracing::info!(bdev = name, from = bdev.num_blocks(), to = blocks, "RBD image resized: following");
        if let Err(e) = bdev.resize(blocks) {
            tracing::warn!(bdev = name, error = %e, "could not follow the image's new size");
        }
    }
}
