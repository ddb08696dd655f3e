//! QoS groups (Ferry's extension, as QEMU's throttle groups): several bdevs, e.g. every
//! disk of one VM, share one limit. A bdev belongs to at most one group; its own SPDK limit
//! (if any) applies as well.

use super::spec::QosSpec;
use super::Limit;
use crate::bdev::device::{lock, Bdev, BdevInner};
use std::sync::{Arc, Mutex, Weak};
use thiserror::Error;

/// Why a group operation failed.
#[derive(Debug, Error)]
pub enum QosError {
    /// A group of that name exists.
    #[error("QoS group {0} already exists")]
    GroupExists(String),
    /// No group of that name.
    #[error("QoS group {0} not found")]
    GroupNotFound(String),
    /// The bdev belongs to a group already.
    #[error("bdev {bdev} is already in QoS group {group}")]
    InGroup {
        /// The bdev.
        bdev: String,
        /// Its group.
        group: String,
    },
    /// The bdev is not a member of that group.
    #[error("bdev {bdev} is not in QoS group {group}")]
    NotMember {
        /// The bdev.
        bdev: String,
        /// The group.
        group: String,
    },
    /// A limit or name is out of range; the message names it.
    #[error("{0}")]
    Invalid(String),
}

impl QosError {
    /// The errno reported for it (positive).
    pub fn errno(&self) -> i32 {
        match self {
            QosError::GroupExists(_) => libc::EEXIST,
            QosError::GroupNotFound(_) | QosError::NotMember { .. } => libc::ENOENT,
            QosError::InGroup { .. } => libc::EBUSY,
            QosError::Invalid(_) => libc::EINVAL,
        }
    }
}

static GROUPS: Mutex<Vec<Arc<Group>>> = Mutex::new(Vec::new());

/// A named limit shared by its member bdevs.
pub struct Group {
    name: String,
    state: Mutex<GroupState>,
}

struct GroupState {
    spec: QosSpec,
    limit: Option<Arc<Limit>>,
    members: Vec<Weak<BdevInner>>,
}

impl Group {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its limits.
    pub fn spec(&self) -> QosSpec {
        lock(&self.state).spec
    }

    /// The shared limit (`None` while it limits nothing).
    pub(crate) fn limit(&self) -> Option<Arc<Limit>> {
        lock(&self.state).limit.clone()
    }

    /// The member bdevs still registered, in the order they joined.
    pub fn members(&self) -> Vec<Bdev> {
        lock(&self.state).members.iter().filter_map(Weak::upgrade).map(Bdev).filter(|b| !b.is_removed()).collect()
    }

    /// Drops `bdev` from the member list (it is going away or leaving).
    pub(crate) fn forget(&self, bdev: &Bdev) {
        let me = Arc::as_ptr(&bdev.0);
        lock(&self.state).members.retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), me));
    }

    /// Replaces its limits (fresh, full buckets) and tells every member's channels.
    pub fn set_spec(&self, spec: QosSpec) -> Result<(), QosError> {
        spec.validate().map_err(QosError::Invalid)?;
        {
            let mut s = lock(&self.state);
            s.spec = spec;
            s.limit = Limit::new(&spec);
        }
        for b in self.members() {
            b.0.qos.changed();
        }
        Ok(())
    }
}

/// Checks a group name: as a bdev name, 1 to 255 bytes without whitespace or controls.
fn validate_name(name: &str) -> Result<(), QosError> {
    if name.is_empty() || name.len() > 255 || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(QosError::Invalid(format!(
            "QoS group name {name:?} must be 1 to 255 bytes without whitespace or control characters"
        )));
    }
    Ok(())
}

/// Creates group `name` with `spec`.
pub fn create(name: &str, spec: QosSpec) -> Result<Arc<Group>, QosError> {
    validate_name(name)?;
    spec.validate().map_err(QosError::Invalid)?;
    let mut groups = lock(&GROUPS);
    if groups.iter().any(|g| g.name == name) {
        return Err(QosError::GroupExists(name.to_string()));
    }
    let group = Arc::new(Group {
        name: name.to_string(),
        state: Mutex::new(GroupState { spec, limit: Limit::new(&spec), members: Vec::new() }),
    });
    groups.push(group.clone());
    tracing::info!(group = name, "QoS group created");
    Ok(group)
}

/// The group called `name`.
pub fn get(name: &str) -> Option<Arc<Group>> {
    lock(&GROUPS).iter().find(|g| g.name == name).cloned()
}

/// Every group, in creation order.
pub fn list() -> Vec<Arc<Group>> {
    lock(&GROUPS).clone()
}

/// Deletes group `name`; its members go on without it.
pub fn delete(name: &str) -> Result<(), QosError> {
    let group = {
        let mut groups = lock(&GROUPS);
        let pos = groups.iter().position(|g| g.name == name).ok_or_else(|| QosError::GroupNotFound(name.into()))?;
        groups.remove(pos)
    };
    for b in group.members() {
        b.0.qos.set_group(None);
    }
    tracing::info!(group = name, "QoS group deleted");
    Ok(())
}

/// Puts `bdev` in `group`; a bdev in a group already is refused (`EBUSY`).
pub fn add(group: &Arc<Group>, bdev: &Bdev) -> Result<(), QosError> {
    if let Some(other) = bdev.0.qos.group() {
        return Err(QosError::InGroup { bdev: bdev.name().into(), group: other.name.clone() });
    }
    lock(&group.state).members.push(Arc::downgrade(&bdev.0));
    bdev.0.qos.set_group(Some(group.clone()));
    Ok(())
}

/// Takes `bdev` out of `group` (`ENOENT` when it is not a member).
pub fn remove(group: &Arc<Group>, bdev: &Bdev) -> Result<(), QosError> {
    match bdev.0.qos.group() {
        Some(g) if Arc::ptr_eq(&g, group) => {
            group.forget(bdev);
            bdev.0.qos.set_group(None);
            Ok(())
        }
        _ => Err(QosError::NotMember { bdev: bdev.name().into(), group: group.name.clone() }),
    }
}
