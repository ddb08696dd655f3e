//! Cluster connections: the clusters registered by name (`bdev_rbd_register_cluster`) and
//! the unnamed ones `bdev_rbd_create` makes from its own `user_id` and `config`, shared by
//! every image that asks for the same cluster as the same user.
//!
//! Connecting waits on the monitors, so it runs on a thread of its own with a deadline
//! ([`bounded`]): an unreachable cluster costs its caller a clear error after
//! [`CONNECT_TIMEOUT`], never a hung RPC. librados starts its own threads from the connecting
//! one, which is why that thread is first given the cluster's `core_mask` (SPDK's meaning of
//! the parameter) or, without one, every online CPU.

use super::error::RbdError;
use super::ffi::{self, Api, RadosT};
use crate::app::config::entry;
use crate::framework::cpumask::{pin_current_thread, Cpumask};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::sync::{mpsc, Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

/// How long librados may try to reach the monitors (`client_mount_timeout`, unless the
/// caller's configuration sets it).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How a cluster is reached: SPDK's parameters of `bdev_rbd_register_cluster` (and, for an
/// unnamed cluster, `user_id` and `config` of `bdev_rbd_create`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterSpec {
    /// The Ceph user without `client.` (librados's default, `admin`, when None).
    pub user_id: Option<String>,
    /// Configuration options set after the file is read (`mon_host`, `key`, ...).
    pub config: BTreeMap<String, String>,
    /// A ceph.conf to read (librados's default search path when None).
    pub config_file: Option<String>,
    /// A keyring file.
    pub key_file: Option<String>,
    /// Cores librados's threads may run on.
    pub core_mask: Option<String>,
    /// Whether librados's default ceph.conf (`/etc/ceph/ceph.conf`, ...) is read when
    /// `config_file` is absent: for a registered cluster always, for `bdev_rbd_create`'s own
    /// only without `config` (as SPDK does).
    pub default_conf: bool,
}

/// Configuration options whose value is a secret: shown masked, never logged.
const SECRET_OPTIONS: &[&str] = &["key"];

/// `config` as SPDK reports it, secrets masked (`save_config` alone keeps them, to replay).
pub fn masked(config: &BTreeMap<String, String>) -> Value {
    let map: Map<String, Value> = config
        .iter()
        .map(|(k, v)| {
            let shown = if SECRET_OPTIONS.contains(&k.as_str()) { "***" } else { v.as_str() };
            (k.clone(), json!(shown))
        })
        .collect();
    Value::Object(map)
}

/// An open cluster connection. librados handles are safe to use from any thread.
pub struct Rados {
    api: &'static Api,
    handle: RadosT,
}

// SAFETY: librados documents its cluster handle as thread-safe; Ferry only shares it
// read-only (pool contexts are created from it) and shuts it down once, in Drop.
unsafe impl Send for Rados {}
// SAFETY: as above.
unsafe impl Sync for Rados {}

impl Rados {
    /// The raw handle, for creating pool contexts.
    pub fn handle(&self) -> RadosT {
        self.handle
    }

    /// The library table.
    pub fn api(&self) -> &'static Api {
        self.api
    }
}

impl Drop for Rados {
    fn drop(&mut self) {
        // SAFETY: the handle came from rados_create and is shut down exactly once; every pool
        // context and image made from it holds an Arc<Rados>, so none outlives it.
        unsafe { (self.api.rados_shutdown)(self.handle) };
    }
}

/// Runs `job` on a thread of its own and waits at most `limit` for its answer. On a timeout
/// the caller gets [`RbdError::Timeout`] and whatever the job returns later is dropped (its
/// Drop releases what it made).
pub fn bounded<T: Send + 'static>(
    what: String,
    limit: Duration,
    job: impl FnOnce() -> Result<T, RbdError> + Send + 'static,
) -> Result<T, RbdError> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("rbd-ctl".into())
        .spawn(move || {
            // Nobody waits any more after a timeout: the result is dropped with the send error.
            let _ = tx.send(job());
        })
        .map_err(|e| RbdError::Os { what: "starting a thread".into(), source: e })?;
    match rx.recv_timeout(limit) {
        Ok(result) => result,
        Err(_) => Err(RbdError::Timeout { what, limit }),
    }
}

fn cstring(what: &str, s: &str) -> Result<CString, RbdError> {
    CString::new(s).map_err(|_| RbdError::Invalid(format!("{what} must not contain a NUL byte")))
}

/// Connects to the cluster `spec` describes, within a bounded time.
pub fn connect(spec: &ClusterSpec) -> Result<Arc<Rados>, RbdError> {
    let api = ffi::api().map_err(RbdError::Library)?;
    let cores = match &spec.core_mask {
        Some(mask) => Cpumask::parse(mask).map_err(|e| RbdError::Invalid(e.to_string()))?.cores().to_vec(),
        None => all_cpus(),
    };
    // Checked here, before any thread: a bad parameter is the caller's error, at once.
    let user = spec.user_id.as_deref().map(|u| cstring("user_id", u)).transpose()?;
    let file = spec.config_file.as_deref().map(|f| cstring("config_file", f)).transpose()?;
    let mut options = Vec::new();
    for (k, v) in &spec.config {
        options.push((cstring("a config key", k)?, cstring("a config value", v)?));
    }
    if let Some(keyring) = &spec.key_file {
        options.push((cstring("key_file", "keyring")?, cstring("key_file", keyring)?));
    }
    let has = |opt: &str| spec.config.keys().any(|k| k.replace(' ', "_") == opt);
    if !has("client_mount_timeout") {
        options.push((cstring("", "client_mount_timeout")?, cstring("", &CONNECT_TIMEOUT.as_secs().to_string())?));
    }
    let who = spec.user_id.clone().unwrap_or_else(|| "admin".into());
    let default_conf = spec.default_conf;
    let limit = CONNECT_TIMEOUT + Duration::from_secs(5);
    bounded("connecting to the Ceph cluster".into(), limit, move || {
        if let Err(e) = pin_current_thread(&cores) {
            tracing::warn!(error = %e, "could not set the CPU set of librados's threads");
        }
        let mut handle: RadosT = std::ptr::null_mut();
        // SAFETY: rados_create writes a handle through the valid out pointer; `user` is a
        // NUL-terminated string or null (librados's default user).
        let rc = unsafe { (api.rados_create)(&mut handle, user.as_ref().map_or(std::ptr::null(), |u| u.as_ptr())) };
        if rc < 0 {
            return Err(RbdError::call("rados_create", rc));
        }
        let rados = Rados { api, handle };
        if file.is_some() || default_conf {
            // SAFETY: a valid handle and a NUL-terminated path or null (the default search path).
            let rc =
                unsafe { (api.rados_conf_read_file)(handle, file.as_ref().map_or(std::ptr::null(), |f| f.as_ptr())) };
            // No default file is no error: the options may say everything.
            if rc < 0 && file.is_some() {
                return Err(RbdError::call(format!("reading config_file {:?}", file.unwrap_or_default()), rc));
            }
        }
        for (k, v) in &options {
            // SAFETY: a valid handle and two NUL-terminated strings librados copies.
            let rc = unsafe { (api.rados_conf_set)(handle, k.as_ptr(), v.as_ptr()) };
            if rc < 0 {
                // The value may be a secret: only the option's name goes in the message.
                return Err(RbdError::call(format!("setting Ceph option {}", k.to_string_lossy()), rc));
            }
        }
        // SAFETY: a configured handle; rados_connect blocks until the monitors answer or
        // client_mount_timeout passes.
        let rc = unsafe { (api.rados_connect)(handle) };
        if rc < 0 {
            let hint = match -rc {
                libc::EACCES => " (the cluster refused the user's key)",
                // A refused key looks the same when librados goes on to the monitor's other
                // address forms (a bare `IP:PORT` mon_host) until the timeout.
                libc::ETIMEDOUT => " (no monitor accepted the connection: check mon_host and the key)",
                libc::ENOENT => " (no keyring or key found)",
                _ => "",
            };
            return Err(RbdError::call(format!("connecting to the Ceph cluster as client.{who}{hint}"), rc));
        }
        Ok(Arc::new(rados))
    })
}

/// Every online CPU (librados's threads are not tied to the reactors' cores by default).
fn all_cpus() -> Vec<u32> {
    // SAFETY: sysconf reads a system value.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as u32;
    (0..n).collect()
}

/// A cluster registered with `bdev_rbd_register_cluster`.
struct Registered {
    name: String,
    spec: ClusterSpec,
    conn: Arc<Rados>,
    /// One clone per `bdev_rbd_create` between finding the cluster and registering its bdev;
    /// a registered bdev counts by itself (see [`unregister`]). Not the connection's own
    /// count: an image being closed after its bdev is gone still holds the connection, not
    /// the cluster.
    users: Arc<()>,
}

/// Held by a `bdev_rbd_create` of a registered cluster until its bdev is registered: the
/// cluster cannot be unregistered meanwhile.
pub type ClusterUse = Arc<()>;

#[derive(Default)]
struct Registry {
    named: Vec<Registered>,
    /// Unnamed connections, shared while some image uses them.
    unnamed: Vec<(ClusterSpec, Weak<Rados>)>,
}

fn registry() -> MutexGuard<'static, Registry> {
    static REGISTRY: Mutex<Registry> = Mutex::new(Registry { named: Vec::new(), unnamed: Vec::new() });
    // Nothing panics while holding it; a poisoned lock still holds consistent data.
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Connects to and registers cluster `name`.
pub fn register(name: &str, spec: ClusterSpec) -> Result<(), RbdError> {
    if name.is_empty() {
        return Err(RbdError::Invalid("the cluster name must not be empty".into()));
    }
    let exists = || RbdError::Exists(format!("cluster {name} is already registered"));
    if registry().named.iter().any(|r| r.name == name) {
        return Err(exists());
    }
    // Connecting waits on the cluster: without the registry's lock.
    let conn = connect(&spec)?;
    let mut reg = registry();
    if reg.named.iter().any(|r| r.name == name) {
        return Err(exists());
    }
    reg.named.push(Registered { name: name.to_string(), spec, conn, users: Arc::new(()) });
    tracing::info!(cluster = name, "Ceph cluster registered");
    Ok(())
}

/// Unregisters cluster `name`, unless a registered rbd bdev is on it or one is being made.
///
/// A bdev already deleted does not count, whether or not it is gone yet: its last channel may
/// still be closing on a reactor, and its image closing on a thread, a moment after
/// `bdev_rbd_delete` returned, and SPDK's clients unregister the cluster right after the
/// delete. Such a bdev keeps its own hold on the connection until it is gone.
pub fn unregister(name: &str) -> Result<(), RbdError> {
    let mut reg = registry();
    let at = reg.named.iter().position(|r| r.name == name).ok_or_else(|| no_cluster(name))?;
    // The creations in flight first, under the lock (`named` takes it): one that has
    // registered its bdev let go of its use after, so the bdev registry then shows it.
    if Arc::strong_count(&reg.named[at].users) > 1 || super::registered_on(name) {
        return Err(RbdError::Busy(format!("cluster {name} is still used by rbd bdevs")));
    }
    let gone = reg.named.remove(at);
    drop(reg);
    // rados_shutdown joins librados's threads: outside the lock (and only once the images
    // still closing let go of the connection).
    drop(gone);
    Ok(())
}

fn no_cluster(name: &str) -> RbdError {
    RbdError::NotFound(format!("cluster {name} is not registered"))
}

/// The connection of registered cluster `name`, and a use of the cluster for the bdev.
pub fn named(name: &str) -> Result<(Arc<Rados>, ClusterUse), RbdError> {
    let reg = registry();
    let r = reg.named.iter().find(|r| r.name == name).ok_or_else(|| no_cluster(name))?;
    Ok((r.conn.clone(), r.users.clone()))
}

/// A connection for an unnamed cluster: the one already open for the same `spec`, or a new one.
pub fn shared(spec: &ClusterSpec) -> Result<Arc<Rados>, RbdError> {
    let find = |reg: &mut Registry| {
        reg.unnamed.retain(|(_, w)| w.strong_count() > 0);
        reg.unnamed.iter().find(|(s, _)| s == spec).and_then(|(_, w)| w.upgrade())
    };
    if let Some(conn) = find(&mut registry()) {
        return Ok(conn);
    }
    let conn = connect(spec)?;
    let mut reg = registry();
    // Another caller may have connected meanwhile: keep one connection.
    if let Some(existing) = find(&mut reg) {
        return Ok(existing);
    }
    reg.unnamed.push((spec.clone(), Arc::downgrade(&conn)));
    Ok(conn)
}

/// SPDK's description of a registered cluster (`bdev_rbd_get_clusters_info`), secrets
/// masked; `with_name` adds `cluster_name`.
fn describe(r: &Registered, with_name: bool) -> Map<String, Value> {
    let mut m = Map::new();
    if with_name {
        m.insert("cluster_name".into(), json!(r.name));
    }
    if let Some(u) = &r.spec.user_id {
        m.insert("user_id".into(), json!(u));
    }
    if !r.spec.config.is_empty() {
        m.insert("config_param".into(), masked(&r.spec.config));
    }
    if let Some(f) = &r.spec.config_file {
        m.insert("config_file".into(), json!(f));
    }
    if let Some(f) = &r.spec.key_file {
        m.insert("key_file".into(), json!(f));
    }
    if let Some(c) = &r.spec.core_mask {
        m.insert("core_mask".into(), json!(c));
    }
    m
}

/// `bdev_rbd_get_clusters_info`: one cluster, or all of them.
pub fn info(name: Option<&str>) -> Result<Value, RbdError> {
    let reg = registry();
    match name {
        Some(n) => {
            let r = reg.named.iter().find(|r| r.name == n).ok_or_else(|| no_cluster(n))?;
            Ok(Value::Object(describe(r, true)))
        }
        None => Ok(Value::Array(reg.named.iter().map(|r| Value::Object(describe(r, true))).collect())),
    }
}

/// What `bdev_get_bdevs` shows of the cluster an image of registered cluster `name` uses
/// (SPDK's fields of `driver_specific.rbd`).
pub fn describe_named(name: &str) -> Map<String, Value> {
    registry().named.iter().find(|r| r.name == name).map(|r| describe(r, false)).unwrap_or_default()
}

/// `save_config`'s registrations, before the bdevs that use them. The configuration is kept
/// whole (secrets too, as SPDK saves them): the document must connect again when replayed.
pub fn config_entries() -> Vec<Value> {
    registry()
        .named
        .iter()
        .map(|r| {
            let mut p = describe(r, false);
            p.insert("name".into(), json!(r.name));
            if !r.spec.config.is_empty() {
                p.insert("config_param".into(), json!(r.spec.config));
            }
            entry("bdev_rbd_register_cluster", Value::Object(p))
        })
        .collect()
}
