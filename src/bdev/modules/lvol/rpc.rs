//! The `bdev_lvol_*` RPC methods, with SPDK's names, parameters, results and errors. Each runs
//! its work as a task on the metadata reactor; the RPC worker waits for the answer.

use super::lvs::{self, OpenLvs, XATTR_SNAPSHOT};
use super::{MD_REACTOR, NAME_MAX, XATTR_CLEAR, XATTR_LVS_CLEAR, XATTR_LVS_NAME, XATTR_NAME, XATTR_UUID};
use crate::bdev::{self, registry, BdevError, IoType};
use crate::blobstore::format::{Parent, FLAG_READ_ONLY, FLAG_THIN, STORE_ID};
use crate::blobstore::{CreateOpts, Store, StoreError};
use crate::framework::task;
use crate::rpc::{parse, RpcError, RpcMethod, SpdkParam, U32};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// The module's RPC methods.
pub const METHODS: &[RpcMethod] = &[
    RpcMethod::runtime_unlocked("bdev_lvol_create_lvstore", create_lvstore).accepting(&[
        // Ferry sizes its metadata from the device (docs/blobstore.md); its md block is 4 KiB.
        SpdkParam::any("num_md_pages_per_cluster_ratio", U32),
        SpdkParam::any("md_page_size", U32),
    ]),
    RpcMethod::runtime_unlocked("bdev_lvol_delete_lvstore", delete_lvstore),
    RpcMethod::runtime_unlocked("bdev_lvol_get_lvstores", get_lvstores),
    RpcMethod::runtime_unlocked("bdev_lvol_rename_lvstore", rename_lvstore),
    RpcMethod::runtime_unlocked("bdev_lvol_grow_lvstore", grow_lvstore),
    RpcMethod::runtime_unlocked("bdev_lvol_create", create),
    RpcMethod::runtime_unlocked("bdev_lvol_snapshot", snapshot),
    RpcMethod::runtime_unlocked("bdev_lvol_clone", clone),
    RpcMethod::runtime_unlocked("bdev_lvol_clone_bdev", clone_bdev),
    RpcMethod::runtime_unlocked("bdev_lvol_rename", rename),
    RpcMethod::runtime_unlocked("bdev_lvol_resize", resize),
    RpcMethod::runtime_unlocked("bdev_lvol_set_read_only", set_read_only),
    RpcMethod::runtime_unlocked("bdev_lvol_delete", delete),
    RpcMethod::runtime_unlocked("bdev_lvol_inflate", inflate),
    RpcMethod::runtime_unlocked("bdev_lvol_decouple_parent", decouple_parent),
    RpcMethod::runtime_unlocked("bdev_lvol_get_lvols", get_lvols),
    RpcMethod::runtime_unlocked("bdev_lvol_set_parent", set_parent),
    RpcMethod::runtime_unlocked("bdev_lvol_set_parent_bdev", set_parent_bdev),
    RpcMethod::runtime_unlocked("bdev_lvol_start_shallow_copy", start_shallow_copy),
    RpcMethod::runtime_unlocked("bdev_lvol_check_shallow_copy", check_shallow_copy),
    // Ferry's: the bandwidth of inflate, decouple-parent and shallow copy.
    RpcMethod::always("bdev_lvol_set_options", super::copy::set_options),
];

const MIB: u64 = 1 << 20;

fn errno(e: i32, what: impl std::fmt::Display) -> RpcError {
    RpcError::errno(e, format!("{what}: {}", std::io::Error::from_raw_os_error(e)))
}

fn store_err(e: StoreError) -> RpcError {
    RpcError::errno(e.errno(), e.to_string())
}

fn bdev_err(e: BdevError) -> RpcError {
    RpcError::from(e)
}

/// Runs `make()`'s future on the metadata reactor and returns its answer.
fn on_md<T, F>(make: impl FnOnce() -> F + Send + 'static) -> Result<T, RpcError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, RpcError>> + 'static,
{
    task::block_on(MD_REACTOR, make).map_err(|e| RpcError::errno(libc::EIO, e.to_string()))?
}

fn check_name(what: &str, name: &str) -> Result<(), RpcError> {
    if name.is_empty() || name.len() > NAME_MAX {
        return Err(errno(libc::EINVAL, format!("{what} name must be 1 to {NAME_MAX} characters, got {}", name.len())));
    }
    if name.contains('/') || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(errno(
            libc::EINVAL,
            format!("{what} name {name:?} contains '/', whitespace or control characters"),
        ));
    }
    Ok(())
}

/// The store answering to a uuid or a name (exactly one given).
fn pick_store(uuid: Option<String>, name: Option<String>) -> Result<Arc<lvs::LvsShared>, RpcError> {
    let key = match (uuid, name) {
        (Some(u), None) => u,
        (None, Some(n)) => n,
        // SPDK: -EINVAL (vbdev_get_lvol_store_by_uuid_xor_name).
        _ => return Err(errno(libc::EINVAL, "exactly one of uuid and lvs_name is required")),
    };
    lvs::find(&key).ok_or_else(|| errno(libc::ENODEV, format!("lvstore {key} not found")))
}

/// Every open store (neither given), or the one a uuid or name picks (listing methods).
fn stores_named(uuid: Option<String>, name: Option<String>) -> Result<Vec<Uuid>, RpcError> {
    match (uuid, name) {
        (None, None) => Ok(lvs::list().iter().map(|s| s.uuid).collect()),
        (u, n) => Ok(vec![pick_store(u, n)?.uuid]),
    }
}

fn open_of(uuid: Uuid) -> Result<Rc<OpenLvs>, RpcError> {
    lvs::open_store(uuid).ok_or_else(|| errno(libc::ENODEV, format!("lvstore {uuid} is gone")))
}

/// The lvol answering to `name`: `lvs/lvol`, or its uuid (on the metadata reactor).
fn find_lvol(name: &str) -> Result<(Rc<OpenLvs>, u64), RpcError> {
    if let Some((lvs_name, lvol)) = name.split_once('/') {
        if let Some(open) = lvs::open_stores().into_iter().find(|o| o.shared.name() == lvs_name) {
            if let Some(b) = open.blob_named(lvol) {
                return Ok((open, b));
            }
        }
    } else {
        for open in lvs::open_stores() {
            let hit = open
                .store
                .with_state(|s| s.blobs.values().find(|b| b.xattr_str(XATTR_UUID) == Some(name)).map(|b| b.id));
            if let Some(b) = hit {
                return Ok((open, b));
            }
        }
    }
    Err(errno(libc::ENODEV, format!("lvol {name} not found")))
}

/// The lvol `name` with its store's operation lock held (looked up again under the lock:
/// an operation that ran meanwhile may have renamed or deleted it).
async fn lvol_for_op(name: &str) -> Result<(Rc<OpenLvs>, u64, task::OwnedGuard), RpcError> {
    let (open, _) = find_lvol(name)?;
    let guard = open.ops.clone().lock_owned().await;
    match find_lvol(name) {
        Ok((again, blob)) if Rc::ptr_eq(&open, &again) => Ok((again, blob, guard)),
        Ok(_) | Err(_) => Err(errno(libc::ENODEV, format!("lvol {name} not found"))),
    }
}

/// The open store `uuid` with its operation lock held.
async fn store_for_op(uuid: Uuid) -> Result<(Rc<OpenLvs>, task::OwnedGuard), RpcError> {
    let open = open_of(uuid)?;
    let guard = open.ops.clone().lock_owned().await;
    let again = open_of(uuid)?;
    Ok((again, guard))
}

fn lvol_xattrs(name: &str, uuid: Uuid, clear: Option<&str>) -> Vec<(String, Vec<u8>)> {
    let mut x = vec![
        (XATTR_NAME.to_string(), name.as_bytes().to_vec()),
        (XATTR_UUID.to_string(), uuid.to_string().into_bytes()),
    ];
    if let Some(c) = clear {
        x.push((XATTR_CLEAR.to_string(), c.as_bytes().to_vec()));
    }
    x
}

fn name_taken(open: &OpenLvs, name: &str) -> Result<(), RpcError> {
    if open.blob_named(name).is_some() {
        return Err(errno(libc::EEXIST, format!("lvol {name} exists in lvstore {}", open.shared.name())));
    }
    let alias = format!("{}/{name}", open.shared.name());
    if registry::get(&alias).is_some() {
        return Err(errno(libc::EEXIST, format!("bdev {alias} exists")));
    }
    Ok(())
}

/// Whether deleting or resizing the blob's clusters should clear them.
fn clears(open: &OpenLvs, blob: u64) -> bool {
    open.store.with_state(|s| {
        let own = s.blobs.get(&blob).and_then(|b| b.xattr_str(XATTR_CLEAR).map(str::to_string));
        let lvs = s.store_xattrs.get(XATTR_LVS_CLEAR).and_then(|v| String::from_utf8(v.clone()).ok());
        own.as_deref().filter(|c| *c != "default").or(lvs.as_deref()) != Some("none")
    })
}

fn register(open: &OpenLvs, blob: u64) -> Result<(), RpcError> {
    open.register_lvol(blob).map_err(bdev_err)?;
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateLvstore {
    bdev_name: String,
    lvs_name: String,
    cluster_sz: Option<u32>,
    clear_method: Option<String>,
}

fn create_lvstore(params: Option<Value>) -> Result<Value, RpcError> {
    let p: CreateLvstore = parse(params)?;
    check_name("lvstore", &p.lvs_name)?;
    let clear = p.clear_method.unwrap_or_else(|| "unmap".into());
    if !["unmap", "write_zeroes", "none"].contains(&clear.as_str()) {
        return Err(RpcError::invalid_params(format!("clear_method {clear} is not unmap, write_zeroes or none")));
    }
    if lvs::find(&p.lvs_name).is_some() {
        return Err(errno(libc::EEXIST, format!("lvstore {} exists", p.lvs_name)));
    }
    let cluster = p.cluster_sz.map(u64::from).unwrap_or(4 * MIB);
    on_md(move || async move {
        let cell = Arc::new(Mutex::new(None));
        let mut desc = bdev::open(&p.bdev_name, true, lvs::base_event_handler(cell.clone())).map_err(bdev_err)?;
        desc.claim("lvol").map_err(bdev_err)?;
        let opts = CreateOpts { cluster_size: cluster, bstype: lvs::BSTYPE, unmap_device: clear != "none", growth: 4 };
        let store = Store::create(desc, opts).await.map_err(store_err)?;
        store.set_xattr(STORE_ID, XATTR_LVS_NAME, Some(p.lvs_name.clone().into_bytes())).await.map_err(store_err)?;
        store.set_xattr(STORE_ID, XATTR_LVS_CLEAR, Some(clear.into_bytes())).await.map_err(store_err)?;
        let uuid = store.super_block().uuid;
        *cell.lock().unwrap_or_else(|e| e.into_inner()) = Some(uuid);
        lvs::adopt(store, p.lvs_name, p.bdev_name).map_err(store_err)?;
        Ok(json!(uuid.to_string()))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreRef {
    uuid: Option<String>,
    lvs_name: Option<String>,
}

fn delete_lvstore(params: Option<Value>) -> Result<Value, RpcError> {
    let p: StoreRef = parse(params)?;
    let shared = pick_store(p.uuid, p.lvs_name)?;
    on_md(move || async move {
        let (_, _op) = store_for_op(shared.uuid).await?;
        let open = lvs::forget(shared.uuid).ok_or_else(|| errno(libc::ENODEV, "lvstore is gone"))?;
        let store = open.store.clone();
        drop(open);
        store.sync().await.map_err(|e| errno(e, "lvstore sync"))?;
        // Both super block copies gone: the device holds no store any more.
        store
            .dev
            .write_bytes(0, &[0u8; 2 * crate::blobstore::format::BLOCK])
            .await
            .map_err(|e| errno(e, "wiping the lvstore"))?;
        store.dev.flush().await.map_err(|e| errno(e, "flushing"))?;
        Ok(json!(true))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetLvstores {
    uuid: Option<String>,
    lvs_name: Option<String>,
}

fn get_lvstores(params: Option<Value>) -> Result<Value, RpcError> {
    let p: GetLvstores = parse(params.or(Some(json!({}))))?;
    let wanted = stores_named(p.uuid, p.lvs_name)?;
    on_md(move || async move {
        Ok(Value::Array(wanted.into_iter().filter_map(lvs::open_store).map(|o| lvs::lvstore_json(&o)).collect()))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rename {
    old_name: String,
    new_name: String,
}

fn rename_lvstore(params: Option<Value>) -> Result<Value, RpcError> {
    let p: Rename = parse(params)?;
    check_name("lvstore", &p.new_name)?;
    let shared = lvs::find(&p.old_name)
        .filter(|s| s.name() == p.old_name)
        .ok_or_else(|| errno(libc::ENODEV, format!("lvstore {} not found", p.old_name)))?;
    if p.new_name != p.old_name && lvs::find(&p.new_name).is_some() {
        return Err(errno(libc::EEXIST, format!("lvstore {} exists", p.new_name)));
    }
    on_md(move || async move {
        let open = open_of(shared.uuid)?;
        open.store
            .set_xattr(STORE_ID, XATTR_LVS_NAME, Some(p.new_name.clone().into_bytes()))
            .await
            .map_err(store_err)?;
        *open.shared.name.lock().unwrap_or_else(|e| e.into_inner()) = p.new_name.clone();
        for v in open.views() {
            if let Some(b) = open.lvols.borrow().get(&v.blob) {
                let _ = registry::replace_alias(
                    b,
                    &format!("{}/{}", p.old_name, v.name),
                    &format!("{}/{}", p.new_name, v.name),
                );
            }
        }
        Ok(json!(true))
    })
}

fn grow_lvstore(params: Option<Value>) -> Result<Value, RpcError> {
    let p: StoreRef = parse(params)?;
    let shared = pick_store(p.uuid, p.lvs_name)?;
    on_md(move || async move {
        let (open, _op) = store_for_op(shared.uuid).await?;
        open.store.grow().await.map_err(store_err)?;
        Ok(json!(true))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    lvol_name: String,
    size_in_mib: u64,
    thin_provision: Option<bool>,
    uuid: Option<String>,
    lvs_name: Option<String>,
    clear_method: Option<String>,
}

fn create(params: Option<Value>) -> Result<Value, RpcError> {
    let p: Create = parse(params)?;
    check_name("lvol", &p.lvol_name)?;
    if let Some(c) = &p.clear_method {
        if !["default", "none", "unmap", "write_zeroes"].contains(&c.as_str()) {
            return Err(RpcError::invalid_params(format!(
                "clear_method {c} is not default, none, unmap or write_zeroes"
            )));
        }
    }
    if p.size_in_mib == 0 {
        return Err(errno(libc::EINVAL, "size_in_mib must be greater than 0"));
    }
    let shared = pick_store(p.uuid, p.lvs_name)?;
    on_md(move || async move {
        let (open, _op) = store_for_op(shared.uuid).await?;
        name_taken(&open, &p.lvol_name)?;
        let clusters = p.size_in_mib.saturating_mul(MIB).div_ceil(shared.cluster_size);
        let flags = if p.thin_provision.unwrap_or(false) { FLAG_THIN } else { 0 };
        let uuid = Uuid::new_v4();
        let x = lvol_xattrs(&p.lvol_name, uuid, p.clear_method.as_deref());
        let blob = open.store.create_blob(clusters, flags, Parent::None, x).await.map_err(store_err)?;
        register(&open, blob)?;
        Ok(json!(uuid.to_string()))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Snapshot {
    lvol_name: String,
    snapshot_name: String,
}

fn snapshot(params: Option<Value>) -> Result<Value, RpcError> {
    let p: Snapshot = parse(params)?;
    check_name("snapshot", &p.snapshot_name)?;
    on_md(move || async move {
        let (open, blob, _op) = lvol_for_op(&p.lvol_name).await?;
        name_taken(&open, &p.snapshot_name)?;
        let uuid = Uuid::new_v4();
        let mut x = lvol_xattrs(&p.snapshot_name, uuid, None);
        x.push((XATTR_SNAPSHOT.to_string(), b"1".to_vec()));
        let snap = open.store.snapshot(blob, x).await.map_err(store_err)?;
        register(&open, snap)?;
        Ok(json!(uuid.to_string()))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Clone {
    snapshot_name: String,
    clone_name: String,
}

fn clone(params: Option<Value>) -> Result<Value, RpcError> {
    let p: Clone = parse(params)?;
    check_name("clone", &p.clone_name)?;
    on_md(move || async move {
        let (open, snap, _op) = lvol_for_op(&p.snapshot_name).await?;
        let (ro, clusters) = open.store.with_state(|s| (s.blobs[&snap].read_only(), s.blobs[&snap].num_clusters));
        if !ro {
            return Err(errno(libc::EINVAL, format!("{} is not a snapshot or read-only lvol", p.snapshot_name)));
        }
        name_taken(&open, &p.clone_name)?;
        let uuid = Uuid::new_v4();
        let blob = open
            .store
            .create_blob(clusters, FLAG_THIN, Parent::Blob(snap), lvol_xattrs(&p.clone_name, uuid, None))
            .await
            .map_err(store_err)?;
        register(&open, blob)?;
        Ok(json!(uuid.to_string()))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CloneBdev {
    bdev: String,
    lvs_name: String,
    clone_name: String,
}

fn clone_bdev(params: Option<Value>) -> Result<Value, RpcError> {
    let p: CloneBdev = parse(params)?;
    check_name("clone", &p.clone_name)?;
    let ext = registry::get(&p.bdev).ok_or_else(|| errno(libc::ENODEV, format!("bdev {} not found", p.bdev)))?;
    let shared = lvs::find(&p.lvs_name)
        .filter(|s| s.name() == p.lvs_name)
        .ok_or_else(|| errno(libc::ENODEV, format!("lvstore {} not found", p.lvs_name)))?;
    if ext.block_size() != shared.block_size {
        return Err(errno(
            libc::EINVAL,
            format!("bdev {} has {}-byte blocks, the lvstore {}", p.bdev, ext.block_size(), shared.block_size),
        ));
    }
    let (ext_uuid, ext_bytes) = (ext.uuid(), ext.size_bytes());
    on_md(move || async move {
        let (open, _op) = store_for_op(shared.uuid).await?;
        name_taken(&open, &p.clone_name)?;
        let clusters = ext_bytes.div_ceil(shared.cluster_size);
        let uuid = Uuid::new_v4();
        let x = lvol_xattrs(&p.clone_name, uuid, None);
        let blob =
            open.store.create_blob(clusters, FLAG_THIN, Parent::External(ext_uuid), x).await.map_err(store_err)?;
        register(&open, blob)?;
        Ok(json!(uuid.to_string()))
    })
}

fn rename(params: Option<Value>) -> Result<Value, RpcError> {
    let p: Rename = parse(params)?;
    check_name("lvol", &p.new_name)?;
    on_md(move || async move {
        let (open, blob, _op) = lvol_for_op(&p.old_name).await?;
        let old = open.store.with_state(|s| s.blobs[&blob].xattr_str(XATTR_NAME).unwrap_or("").to_string());
        if old == p.new_name {
            return Ok(json!(true));
        }
        name_taken(&open, &p.new_name)?;
        open.store.set_xattr(blob, XATTR_NAME, Some(p.new_name.clone().into_bytes())).await.map_err(store_err)?;
        if let Some(b) = open.lvols.borrow().get(&blob) {
            let lvs = open.shared.name();
            registry::replace_alias(b, &format!("{lvs}/{old}"), &format!("{lvs}/{}", p.new_name)).map_err(bdev_err)?;
        }
        Ok(json!(true))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Resize {
    name: String,
    size_in_mib: u64,
}

fn resize(params: Option<Value>) -> Result<Value, RpcError> {
    let p: Resize = parse(params)?;
    if p.size_in_mib == 0 {
        return Err(errno(libc::EINVAL, "size_in_mib must be greater than 0"));
    }
    on_md(move || async move {
        let (open, blob, _op) = lvol_for_op(&p.name).await?;
        let cs = open.shared.cluster_size;
        let clusters = p.size_in_mib.saturating_mul(MIB).div_ceil(cs);
        let (ro, thin, old) =
            open.store.with_state(|s| (s.blobs[&blob].read_only(), s.blobs[&blob].thin(), s.blobs[&blob].num_clusters));
        if ro {
            return Err(errno(libc::EPERM, format!("lvol {} is read-only", p.name)));
        }
        if !thin && clusters > old && clusters - old > open.store.with_state(|s| s.free_clusters()) {
            return Err(errno(libc::ENOSPC, format!("lvstore {} has too few free clusters", open.shared.name())));
        }
        let clear = clears(&open, blob);
        open.store.resize_blob(blob, clusters, clear).await.map_err(store_err)?;
        if let Some(b) = open.lvols.borrow().get(&blob) {
            b.resize(clusters * cs / b.block_size() as u64).map_err(bdev_err)?;
        }
        Ok(json!(true))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Name {
    name: String,
}

fn set_read_only(params: Option<Value>) -> Result<Value, RpcError> {
    let p: Name = parse(params)?;
    on_md(move || async move {
        let (open, blob, _op) = lvol_for_op(&p.name).await?;
        let flags = open.store.with_state(|s| s.blobs[&blob].flags);
        open.store.set_flags(blob, flags | FLAG_READ_ONLY).await.map_err(store_err)?;
        Ok(json!(true))
    })
}

fn delete(params: Option<Value>) -> Result<Value, RpcError> {
    let p: Name = parse(params)?;
    on_md(move || async move {
        let (open, blob, _op) = lvol_for_op(&p.name).await?;
        let clones = open.store.children(blob).len();
        if clones > 1 {
            return Err(errno(libc::EPERM, format!("lvol {} has {clones} clones; delete them first", p.name)));
        }
        let clear = clears(&open, blob);
        open.unregister_lvol(blob);
        open.store.delete_blob(blob, clear).await.map_err(store_err)?;
        Ok(json!(true))
    })
}

fn inflate(params: Option<Value>) -> Result<Value, RpcError> {
    let p: Name = parse(params)?;
    on_md(move || async move {
        let (open, blob, _op) = lvol_for_op(&p.name).await?;
        if open.store.with_state(|s| s.blobs[&blob].read_only()) {
            return Err(errno(libc::EPERM, format!("lvol {} is read-only", p.name)));
        }
        let cs = open.shared.cluster_size;
        let need = open.store.with_state(|s| {
            let b = &s.blobs[&blob];
            b.num_clusters - b.allocated()
        });
        if need > open.store.with_state(|s| s.free_clusters()) {
            return Err(errno(libc::ENOSPC, format!("inflating needs {} bytes", need * cs)));
        }
        open.store.inflate(blob, Some(&super::copy::pacer())).await.map_err(store_err)?;
        Ok(json!(true))
    })
}

fn decouple_parent(params: Option<Value>) -> Result<Value, RpcError> {
    let p: Name = parse(params)?;
    on_md(move || async move {
        let (open, blob, _op) = lvol_for_op(&p.name).await?;
        if open.store.with_state(|s| s.blobs[&blob].parent) == Parent::None {
            return Err(errno(libc::EINVAL, format!("lvol {} has no parent", p.name)));
        }
        open.store.decouple_parent(blob, Some(&super::copy::pacer())).await.map_err(store_err)?;
        Ok(json!(true))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetLvols {
    lvs_uuid: Option<String>,
    lvs_name: Option<String>,
}

fn get_lvols(params: Option<Value>) -> Result<Value, RpcError> {
    let p: GetLvols = parse(params.or(Some(json!({}))))?;
    let wanted = stores_named(p.lvs_uuid, p.lvs_name)?;
    on_md(move || async move {
        let mut out = Vec::new();
        for open in wanted.into_iter().filter_map(lvs::open_store) {
            let lvs_name = open.shared.name();
            for v in open.views() {
                out.push(json!({
                    "alias": format!("{lvs_name}/{}", v.name),
                    "uuid": v.uuid.to_string(),
                    "name": v.name,
                    "is_thin_provisioned": v.thin,
                    "is_snapshot": v.snapshot,
                    "is_clone": matches!(v.parent, Parent::Blob(_)),
                    "is_esnap_clone": matches!(v.parent, Parent::External(_)),
                    "is_degraded": !v.registered,
                    "num_allocated_clusters": v.allocated,
                    "lvs": { "name": lvs_name, "uuid": open.shared.uuid.to_string() },
                }));
            }
            for (id, why) in open.store.with_state(|s| s.quarantined.clone()) {
                out.push(json!({
                    "alias": format!("{lvs_name}/quarantined-blob-{id}"),
                    "uuid": "",
                    "name": format!("quarantined-blob-{id}"),
                    "is_thin_provisioned": true,
                    "is_snapshot": false,
                    "is_clone": false,
                    "is_esnap_clone": false,
                    "is_degraded": true,
                    "degraded_reason": why,
                    "num_allocated_clusters": 0,
                    "lvs": { "name": lvs_name, "uuid": open.shared.uuid.to_string() },
                }));
            }
        }
        Ok(Value::Array(out))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetParent {
    lvol_name: String,
    parent_name: String,
}

fn set_parent(params: Option<Value>) -> Result<Value, RpcError> {
    let p: SetParent = parse(params)?;
    on_md(move || async move {
        let (open, blob, _op) = lvol_for_op(&p.lvol_name).await?;
        let (popen, parent) = find_lvol(&p.parent_name)?;
        if !Rc::ptr_eq(&open, &popen) {
            return Err(errno(libc::EINVAL, "the parent must be in the same lvstore"));
        }
        let (thin, size, psize, pro, cycle) = open.store.with_state(|s| {
            let b = &s.blobs[&blob];
            let pb = &s.blobs[&parent];
            let mut cur = Parent::Blob(parent);
            let mut cycle = false;
            while let Parent::Blob(id) = cur {
                if id == blob {
                    cycle = true;
                    break;
                }
                cur = s.blobs.get(&id).map(|x| x.parent).unwrap_or(Parent::None);
            }
            (b.thin(), b.num_clusters, pb.num_clusters, pb.read_only(), cycle)
        });
        if !thin {
            return Err(errno(libc::EINVAL, format!("lvol {} is not thin provisioned", p.lvol_name)));
        }
        if !pro || !open.store.with_state(|s| s.blobs[&parent].xattrs.contains_key(XATTR_SNAPSHOT)) {
            return Err(errno(libc::EINVAL, format!("{} is not a snapshot", p.parent_name)));
        }
        if size != psize {
            return Err(errno(libc::EINVAL, "the snapshot and the lvol differ in size"));
        }
        if cycle {
            return Err(errno(libc::EINVAL, "the snapshot descends from the lvol"));
        }
        open.store.set_parent(blob, Parent::Blob(parent)).await.map_err(store_err)?;
        Ok(json!(true))
    })
}

fn set_parent_bdev(params: Option<Value>) -> Result<Value, RpcError> {
    let p: SetParent = parse(params)?;
    let ext = registry::get(&p.parent_name)
        .ok_or_else(|| errno(libc::ENODEV, format!("bdev {} not found", p.parent_name)))?;
    let (ext_uuid, ext_bytes, ext_bs) = (ext.uuid(), ext.size_bytes(), ext.block_size());
    on_md(move || async move {
        let (open, blob, _op) = lvol_for_op(&p.lvol_name).await?;
        if ext_bytes % open.shared.cluster_size != 0 || ext_bs != open.shared.block_size {
            return Err(errno(
                libc::EINVAL,
                "the bdev's size must be a multiple of the cluster size, with the lvstore's block size",
            ));
        }
        if !open.store.with_state(|s| s.blobs[&blob].thin()) {
            return Err(errno(libc::EINVAL, format!("lvol {} is not thin provisioned", p.lvol_name)));
        }
        if !open.open_esnap(ext_uuid) {
            return Err(errno(libc::ENODEV, format!("bdev {} cannot be opened", p.parent_name)));
        }
        open.store.set_parent(blob, Parent::External(ext_uuid)).await.map_err(store_err)?;
        Ok(json!(true))
    })
}

/// A shallow copy's progress, by operation id.
#[derive(Debug, Clone)]
struct CopyOp {
    state: &'static str,
    copied: u64,
    total: u64,
    error: Option<String>,
}

static COPIES: Mutex<(u32, Option<HashMap<u32, CopyOp>>)> = Mutex::new((0, None));

fn with_copies<R>(f: impl FnOnce(&mut u32, &mut HashMap<u32, CopyOp>) -> R) -> R {
    let mut g = COPIES.lock().unwrap_or_else(|e| e.into_inner());
    let (next, map) = &mut *g;
    f(next, map.get_or_insert_with(HashMap::new))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartCopy {
    src_lvol_name: String,
    dst_bdev_name: String,
}

fn start_shallow_copy(params: Option<Value>) -> Result<Value, RpcError> {
    let p: StartCopy = parse(params)?;
    on_md(move || async move {
        let (open, blob, _op) = lvol_for_op(&p.src_lvol_name).await?;
        let (ro, size) =
            open.store.with_state(|s| (s.blobs[&blob].read_only(), s.blobs[&blob].num_clusters * s.cluster_size));
        if !ro {
            return Err(errno(libc::EINVAL, format!("lvol {} must be read-only", p.src_lvol_name)));
        }
        let dst = bdev::open(&p.dst_bdev_name, true, Box::new(|_, _| {})).map_err(bdev_err)?;
        if dst.bdev().size_bytes() < size
            || dst.bdev().block_size() != open.shared.block_size
            || !dst.bdev().supports(IoType::Write)
        {
            return Err(errno(
                libc::EINVAL,
                format!("bdev {} is smaller than the lvol or has another block size", p.dst_bdev_name),
            ));
        }
        let chan = dst.channel().map_err(bdev_err)?;
        let id = with_copies(|next, map| {
            *next += 1;
            map.insert(*next, CopyOp { state: "in progress", copied: 0, total: 0, error: None });
            *next
        });
        let store = open.store.clone();
        let pacer = super::copy::pacer();
        task::spawn_local(async move {
            let progress = |done, total| {
                with_copies(|_, m| {
                    if let Some(op) = m.get_mut(&id) {
                        op.copied = done;
                        op.total = total;
                    }
                })
            };
            let r = store.copy_allocated_to(blob, &chan, Some(&pacer), progress).await;
            drop(dst);
            with_copies(|_, m| {
                if let Some(op) = m.get_mut(&id) {
                    match r {
                        Ok(()) => op.state = "complete",
                        Err(e) => {
                            op.state = "error";
                            op.error = Some(e.to_string());
                        }
                    }
                }
            });
        });
        Ok(json!({ "operation_id": id }))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckCopy {
    operation_id: u32,
}

fn check_shallow_copy(params: Option<Value>) -> Result<Value, RpcError> {
    let p: CheckCopy = parse(params)?;
    let op = with_copies(|_, m| {
        let op = m.get(&p.operation_id).cloned();
        if op.as_ref().is_some_and(|o| o.state != "in progress") {
            m.remove(&p.operation_id);
        }
        op
    })
    .ok_or_else(|| errno(libc::ENOENT, format!("no shallow copy with id {}", p.operation_id)))?;
    let mut v = json!({ "state": op.state, "copied_clusters": op.copied, "total_clusters": op.total });
    if let Some(e) = op.error {
        v["error"] = json!(e);
    }
    Ok(v)
}
