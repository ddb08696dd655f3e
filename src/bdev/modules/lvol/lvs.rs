//! Open lvstores: the reactor-local stores with their registered lvol bdevs, a thread-safe
//! description of each for RPC threads, lvol views, and examine (finding stores on new bdevs).

use super::backend::LvolBackend;
use super::{MD_REACTOR, XATTR_LVS_NAME, XATTR_NAME, XATTR_UUID};
use crate::bdev::{self, registry, Bdev, BdevError, BdevEvent, BdevProps};
use crate::blobstore::blob_io::Esnap;
use crate::blobstore::format::Parent;
use crate::blobstore::state::State;
use crate::blobstore::{Store, StoreError};
use crate::framework::{self, task};
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// The super block type of lvol stores.
pub const BSTYPE: [u8; 16] = *b"LVOLSTORE\0\0\0\0\0\0\0";

/// What any thread may know of an open lvstore.
#[derive(Debug)]
pub struct LvsShared {
    /// The store's uuid.
    pub uuid: Uuid,
    /// Its name (renamable).
    pub name: Mutex<String>,
    /// The base bdev's name.
    pub base_bdev: String,
    /// Bytes per cluster.
    pub cluster_size: u64,
    /// Block size of its lvols.
    pub block_size: u32,
}

impl LvsShared {
    /// Its current name.
    pub fn name(&self) -> String {
        self.name.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

static STORES: Mutex<Vec<Arc<LvsShared>>> = Mutex::new(Vec::new());

fn stores() -> std::sync::MutexGuard<'static, Vec<Arc<LvsShared>>> {
    STORES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every open lvstore.
pub fn list() -> Vec<Arc<LvsShared>> {
    stores().clone()
}

/// The open lvstore of that uuid or name.
pub fn find(uuid_or_name: &str) -> Option<Arc<LvsShared>> {
    stores().iter().find(|s| s.uuid.to_string() == uuid_or_name || s.name() == uuid_or_name).cloned()
}

/// An open store on the metadata reactor.
pub struct OpenLvs {
    /// Its description.
    pub shared: Arc<LvsShared>,
    /// The blobstore.
    pub store: Rc<Store>,
    /// Registered lvol bdevs by blob id.
    pub lvols: RefCell<HashMap<u64, Bdev>>,
    /// Serialises the store's management operations (they await I/O between their steps).
    pub ops: Rc<task::LocalMutex>,
}

thread_local! {
    static OPEN: RefCell<HashMap<Uuid, Rc<OpenLvs>>> = RefCell::new(HashMap::new());
}

/// The open store `uuid` (on the metadata reactor).
pub fn open_store(uuid: Uuid) -> Option<Rc<OpenLvs>> {
    OPEN.with(|o| o.borrow().get(&uuid).cloned())
}

/// Every open store (on the metadata reactor).
pub fn open_stores() -> Vec<Rc<OpenLvs>> {
    OPEN.with(|o| o.borrow().values().cloned().collect())
}

/// One lvol as `bdev_lvol_get_lvols` and `driver_specific` describe it.
#[derive(Debug, Clone)]
pub struct LvolView {
    /// Its blob.
    pub blob: u64,
    /// Its name.
    pub name: String,
    /// Its uuid.
    pub uuid: Uuid,
    /// Thin provisioned.
    pub thin: bool,
    /// Read-only.
    pub read_only: bool,
    /// A snapshot (made by `bdev_lvol_snapshot`).
    pub snapshot: bool,
    /// Its parent.
    pub parent: Parent,
    /// Name of its parent snapshot (clones).
    pub parent_name: Option<String>,
    /// Names of its clones (snapshots).
    pub clones: Vec<String>,
    /// Allocated clusters.
    pub allocated: u64,
    /// Size in clusters.
    pub num_clusters: u64,
    /// Registered as a bdev (false: degraded, its external snapshot is missing).
    pub registered: bool,
}

/// The xattr marking snapshots.
pub const XATTR_SNAPSHOT: &str = "snapshot";

/// Views of every lvol of a store state.
pub fn views(state: &State, registered: &HashMap<u64, Bdev>) -> Vec<LvolView> {
    let name_of = |id: u64| state.blobs.get(&id).and_then(|b| b.xattr_str(XATTR_NAME)).unwrap_or("").to_string();
    state
        .blobs
        .values()
        .map(|b| LvolView {
            blob: b.id,
            name: name_of(b.id),
            uuid: b.xattr_str(XATTR_UUID).and_then(|u| u.parse().ok()).unwrap_or_default(),
            thin: b.thin(),
            read_only: b.read_only(),
            snapshot: b.xattrs.contains_key(XATTR_SNAPSHOT),
            parent: b.parent,
            parent_name: match b.parent {
                Parent::Blob(p) => Some(name_of(p)),
                _ => None,
            },
            clones: state.blobs.values().filter(|c| c.parent == Parent::Blob(b.id)).map(|c| name_of(c.id)).collect(),
            allocated: b.allocated(),
            num_clusters: b.num_clusters,
            registered: registered.contains_key(&b.id),
        })
        .collect()
}

impl OpenLvs {
    /// Views of its lvols.
    pub fn views(&self) -> Vec<LvolView> {
        let lvols = self.lvols.borrow();
        self.store.with_state(|s| views(s, &lvols))
    }

    /// The blob of lvol `name` (its name in this store, or its uuid).
    pub fn blob_named(&self, name: &str) -> Option<u64> {
        self.store.with_state(|s| {
            s.blobs
                .values()
                .find(|b| b.xattr_str(XATTR_NAME) == Some(name) || b.xattr_str(XATTR_UUID) == Some(name))
                .map(|b| b.id)
        })
    }

    /// Registers blob `blob` as an lvol bdev (opening its external snapshot if it has one).
    /// A missing external snapshot leaves it degraded and unregistered (not an error).
    pub fn register_lvol(&self, blob: u64) -> Result<Option<Bdev>, BdevError> {
        let (name, uuid, num_clusters, parent) = self
            .store
            .with_state(|s| {
                s.blobs.get(&blob).map(|b| {
                    (
                        b.xattr_str(XATTR_NAME).unwrap_or("").to_string(),
                        b.xattr_str(XATTR_UUID).and_then(|u| u.parse::<Uuid>().ok()),
                        b.num_clusters,
                        b.parent,
                    )
                })
            })
            .ok_or_else(|| BdevError::NotFound(format!("blob {blob}")))?;
        let uuid = uuid.ok_or_else(|| BdevError::InvalidParam(format!("lvol {name} has no uuid")))?;
        if let Parent::External(ext) = parent {
            if !self.open_esnap(ext) {
                tracing::warn!(lvol = %name, external = %ext, "lvol degraded: its external snapshot is missing");
                return Ok(None);
            }
        }
        let bs = self.shared.block_size;
        let props = BdevProps {
            name: uuid.to_string(),
            uuid: Some(uuid),
            block_size: bs,
            num_blocks: num_clusters * self.shared.cluster_size / bs as u64,
        };
        let bdev = registry::register(
            props,
            Box::new(LvolBackend::new(self.shared.clone(), blob, self.store.alloc_share.clone())),
        )?;
        let alias = format!("{}/{name}", self.shared.name());
        if let Err(e) = registry::add_alias(&bdev, &alias) {
            let _ = registry::unregister(bdev.name(), Some("lvol"));
            return Err(e);
        }
        self.lvols.borrow_mut().insert(blob, bdev.clone());
        Ok(Some(bdev))
    }

    /// Opens external snapshot bdev `uuid` for reads (once); false if it is not there.
    pub fn open_esnap(&self, uuid: Uuid) -> bool {
        if self.store.io.esnaps.borrow().contains_key(&uuid) {
            return true;
        }
        let store_uuid = self.shared.uuid;
        let on_event = Box::new(move |ev: BdevEvent, _: &Bdev| {
            if ev == BdevEvent::Remove {
                esnap_removed(store_uuid, uuid);
            }
        });
        let Ok(desc) = bdev::open(&uuid.to_string(), false, on_event) else { return false };
        let Ok(chan) = desc.channel() else { return false };
        self.store.io.esnaps.borrow_mut().insert(uuid, Esnap { desc, chan });
        true
    }

    /// Unregisters lvol bdev of `blob` (if registered).
    pub fn unregister_lvol(&self, blob: u64) {
        if let Some(b) = self.lvols.borrow_mut().remove(&blob) {
            let _ = registry::unregister(b.name(), Some("lvol"));
        }
    }
}

/// An external snapshot went away: its clones degrade (their bdevs go).
fn esnap_removed(store: Uuid, esnap: Uuid) {
    let Some(open) = open_store(store) else { return };
    open.store.io.esnaps.borrow_mut().remove(&esnap);
    let clones: Vec<u64> = open
        .store
        .with_state(|s| s.blobs.values().filter(|b| b.parent == Parent::External(esnap)).map(|b| b.id).collect());
    for blob in clones {
        open.unregister_lvol(blob);
    }
}

/// Makes `store` an open lvstore: describes it, registers its lvols.
pub fn adopt(store: Rc<Store>, name: String, base_bdev: String) -> Result<Rc<OpenLvs>, StoreError> {
    let sb = store.super_block();
    let shared = Arc::new(LvsShared {
        uuid: sb.uuid,
        name: Mutex::new(name.clone()),
        base_bdev,
        cluster_size: sb.cluster_size,
        block_size: store.dev.block_size as u32,
    });
    {
        let mut all = stores();
        if all.iter().any(|s| s.uuid == sb.uuid || s.name() == name) {
            return Err(StoreError::Busy(format!("an lvstore named {name} or with uuid {} exists", sb.uuid)));
        }
        all.push(shared.clone());
    }
    let open = Rc::new(OpenLvs { shared, store, lvols: RefCell::new(HashMap::new()), ops: Default::default() });
    OPEN.with(|o| o.borrow_mut().insert(sb.uuid, open.clone()));
    let blobs: Vec<u64> = open.store.with_state(|s| s.blobs.keys().copied().collect());
    for blob in blobs {
        if let Err(e) = open.register_lvol(blob) {
            tracing::error!(blob, error = %e, "lvol not registered");
        }
    }
    Ok(open)
}

/// Forgets an open store (its lvol bdevs are unregistered first).
pub fn forget(uuid: Uuid) -> Option<Rc<OpenLvs>> {
    let open = OPEN.with(|o| o.borrow_mut().remove(&uuid))?;
    let blobs: Vec<u64> = open.lvols.borrow().keys().copied().collect();
    for b in blobs {
        open.unregister_lvol(b);
    }
    stores().retain(|s| s.uuid != uuid);
    // I/O still in flight on the base (a hot remove) completes into the store: keep it until
    // then, or its lvol I/O would never complete.
    let store = open.store.clone();
    task::spawn_local(async move { store.io_drained().await });
    Some(open)
}

/// The examine hook: looks for an lvstore on every bdev that appears, and registers the lvols
/// of one it finds; also brings back clones whose external snapshot just appeared.
pub fn examine(bdev: &Bdev) {
    if bdev.module() == "lvol" {
        return;
    }
    let name = bdev.name().to_string();
    let uuid = bdev.uuid();
    let guard = crate::bdev::registry::ExamineGuard::new();
    let job = move || async move {
        let _guard = guard;
        revive_esnap_clones(uuid);
        if let Err(e) = load_store(&name).await {
            tracing::error!(bdev = %name, error = %e, "lvstore not loaded");
        }
    };
    match framework::current_index() {
        None => {
            if task::block_on(MD_REACTOR, job).is_err() {
                tracing::debug!("no reactors: examine skipped");
            }
        }
        Some(MD_REACTOR) => task::spawn_local(job()),
        Some(_) => {
            let _ = framework::send(MD_REACTOR, move || task::spawn_local(job()));
        }
    }
}

fn revive_esnap_clones(esnap: Uuid) {
    for open in open_stores() {
        let degraded: Vec<u64> = open
            .store
            .with_state(|s| s.blobs.values().filter(|b| b.parent == Parent::External(esnap)).map(|b| b.id).collect());
        for blob in degraded {
            if !open.lvols.borrow().contains_key(&blob) {
                let _ = open.register_lvol(blob);
            }
        }
    }
}

/// The base-bdev event handler of a store: hot remove closes it (its lvols go away).
pub fn base_event_handler(store_uuid: Arc<Mutex<Option<Uuid>>>) -> crate::bdev::desc::EventCallback {
    Box::new(move |ev, bdev| {
        if ev != BdevEvent::Remove {
            return;
        }
        let uuid = *store_uuid.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(uuid) = uuid {
            tracing::warn!(base = bdev.name(), lvstore = %uuid, "base bdev removed: closing its lvstore");
            forget(uuid);
        }
    })
}

/// Opens the store on bdev `name`, if it holds an lvstore.
async fn load_store(name: &str) -> Result<(), StoreError> {
    let cell = Arc::new(Mutex::new(None));
    let mut desc = match bdev::open(name, true, base_event_handler(cell.clone())) {
        Ok(d) => d,
        Err(BdevError::Claimed { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if desc.bdev().block_size() as usize > crate::blobstore::format::BLOCK {
        return Ok(());
    }
    desc.claim("lvol")?;
    let (store, loaded) = match Store::open(desc).await {
        Ok(s) => s,
        Err(StoreError::NotAStore) => return Ok(()),
        Err(e) => return Err(e),
    };
    if loaded.sb.bstype != BSTYPE {
        return Ok(());
    }
    let lvs_name = store.with_state(|s| {
        s.store_xattrs.get(XATTR_LVS_NAME).and_then(|v| String::from_utf8(v.clone()).ok()).unwrap_or_default()
    });
    *cell.lock().unwrap_or_else(|e| e.into_inner()) = Some(loaded.sb.uuid);
    tracing::info!(
        bdev = name,
        lvstore = %lvs_name,
        replayed = loaded.replayed,
        quarantined = loaded.state.quarantined.len(),
        "lvstore loaded"
    );
    adopt(store, lvs_name, name.to_string())?;
    Ok(())
}

/// `bdev_lvol_get_lvstores` entry of an open store (on the metadata reactor).
pub fn lvstore_json(open: &OpenLvs) -> Value {
    let sb = open.store.super_block();
    let (free, data) = open.store.with_state(|s| (s.free_clusters(), s.data_clusters()));
    json!({
        "uuid": open.shared.uuid.to_string(),
        "name": open.shared.name(),
        "base_bdev": open.shared.base_bdev,
        "total_data_clusters": data,
        "free_clusters": free,
        "block_size": open.shared.block_size,
        "cluster_size": sb.cluster_size,
        "max_growable_size": sb.max_clusters * sb.cluster_size,
    })
}
