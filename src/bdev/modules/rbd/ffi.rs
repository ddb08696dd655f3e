//! librados and librbd, loaded at run time: the C declarations Ferry uses, by hand.
//!
//! Why by hand: no maintained crate binds librbd (`ceph` covers librados only, `librbd-sys`
//! dates from 2016), and Ferry needs about twenty functions of two stable C APIs. Why loaded
//! at run time (`dlopen`, through `libloading`) rather than linked: ferryd builds and runs on
//! hosts without Ceph's libraries, and only `bdev_rbd_*` need them; those methods say clearly
//! when the libraries are missing. The signatures are those of Ceph's `rados/librados.h` and
//! `rbd/librbd.h`, unchanged since Luminous for everything used here.

use libloading::Library;
use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;

/// `rados_t`: a cluster handle.
pub type RadosT = *mut c_void;
/// `rados_ioctx_t`: a pool context.
pub type IoctxT = *mut c_void;
/// `rbd_image_t`: an open image.
pub type ImageT = *mut c_void;
/// `rbd_completion_t`: one asynchronous operation.
pub type CompletionT = *mut c_void;
/// `rbd_callback_t`: called on a librados thread when an operation completes.
pub type CompletionCb = unsafe extern "C" fn(c: CompletionT, arg: *mut c_void);
/// `rbd_update_callback_t`: called on a librados thread when the image header changes.
pub type UpdateCb = unsafe extern "C" fn(arg: *mut c_void);

/// The runtime names of the two libraries (their Debian 12 sonames).
const LIBRADOS: &str = "librados.so.2";
const LIBRBD: &str = "librbd.so.1";

macro_rules! api {
    ($($name:ident: fn($($arg:ty),*) $(-> $ret:ty)?;)*) => {
        /// The functions of librados and librbd Ferry calls.
        #[allow(missing_docs)]
        pub struct Api {
            $(pub $name: unsafe extern "C" fn($($arg),*) $(-> $ret)?,)*
            _rados: Library,
            _rbd: Library,
        }

        impl Api {
            fn load() -> Result<Api, String> {
                // SAFETY: loading runs the libraries' initialisers; librados and librbd are
                // ordinary shared libraries whose initialisers only set up their own state.
                let rados = unsafe { Library::new(LIBRADOS) }.map_err(|e| format!("{LIBRADOS}: {e}"))?;
                // SAFETY: as above.
                let rbd = unsafe { Library::new(LIBRBD) }.map_err(|e| format!("{LIBRBD}: {e}"))?;
                $(
                    let name = concat!(stringify!($name), "\0");
                    let lib = if name.starts_with("rados_") { &rados } else { &rbd };
                    // SAFETY: the symbol's type is its C prototype from librados.h / librbd.h
                    // (see the module comment); the pointer is copied out and used only while
                    // the library stays loaded, which is forever (the Api lives in a static).
                    let $name = unsafe {
                        *lib.get::<unsafe extern "C" fn($($arg),*) $(-> $ret)?>(name.as_bytes())
                            .map_err(|e| format!("{}: {e}", stringify!($name)))?
                    };
                )*
                Ok(Api { $($name,)* _rados: rados, _rbd: rbd })
            }
        }
    };
}

api! {
    rados_create: fn(*mut RadosT, *const c_char) -> c_int;
    rados_conf_read_file: fn(RadosT, *const c_char) -> c_int;
    rados_conf_set: fn(RadosT, *const c_char, *const c_char) -> c_int;
    rados_conf_get: fn(RadosT, *const c_char, *mut c_char, usize) -> c_int;
    rados_connect: fn(RadosT) -> c_int;
    rados_shutdown: fn(RadosT);
    rados_ioctx_create: fn(RadosT, *const c_char, *mut IoctxT) -> c_int;
    rados_ioctx_destroy: fn(IoctxT);
    rbd_version: fn(*mut c_int, *mut c_int, *mut c_int);
    rbd_open: fn(IoctxT, *const c_char, *mut ImageT, *const c_char) -> c_int;
    rbd_open_read_only: fn(IoctxT, *const c_char, *mut ImageT, *const c_char) -> c_int;
    rbd_close: fn(ImageT) -> c_int;
    rbd_get_size: fn(ImageT, *mut u64) -> c_int;
    rbd_get_features: fn(ImageT, *mut u64) -> c_int;
    rbd_resize: fn(ImageT, u64) -> c_int;
    rbd_update_watch: fn(ImageT, *mut u64, UpdateCb, *mut c_void) -> c_int;
    rbd_update_unwatch: fn(ImageT, u64) -> c_int;
    rbd_aio_create_completion: fn(*mut c_void, CompletionCb, *mut CompletionT) -> c_int;
    rbd_aio_get_return_value: fn(CompletionT) -> isize;
    rbd_aio_release: fn(CompletionT);
    rbd_aio_readv: fn(ImageT, *const libc::iovec, c_int, u64, CompletionT) -> c_int;
    rbd_aio_writev: fn(ImageT, *const libc::iovec, c_int, u64, CompletionT) -> c_int;
    rbd_aio_flush: fn(ImageT, CompletionT) -> c_int;
    rbd_aio_discard: fn(ImageT, u64, u64, CompletionT) -> c_int;
    rbd_aio_write_zeroes: fn(ImageT, u64, usize, CompletionT, c_int, c_int) -> c_int;
}

/// The loaded libraries, or why they could not be loaded (the same answer every time).
pub fn api() -> Result<&'static Api, String> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(Api::load)
        .as_ref()
        .map_err(|e| format!("Ceph's client libraries are not available ({e}): install librbd1"))
}

/// librbd's version, as `major.minor.extra`.
pub fn version(api: &Api) -> String {
    let (mut major, mut minor, mut extra) = (0, 0, 0);
    // SAFETY: rbd_version writes three ints through the pointers, which are valid.
    unsafe { (api.rbd_version)(&mut major, &mut minor, &mut extra) };
    format!("{major}.{minor}.{extra}")
}

/// librbd's image feature bits (`rbd/features.h`) with their names, for reports.
pub const FEATURE_NAMES: &[(u64, &str)] = &[
    (1 << 0, "layering"),
    (1 << 1, "striping"),
    (1 << 2, "exclusive-lock"),
    (1 << 3, "object-map"),
    (1 << 4, "fast-diff"),
    (1 << 5, "deep-flatten"),
    (1 << 6, "journaling"),
    (1 << 7, "data-pool"),
    (1 << 8, "operations"),
    (1 << 9, "migrating"),
    (1 << 10, "non-primary"),
    (1 << 11, "dirty-cache"),
];
