//! A SCSI target device: a name, a relative port, and its logical units.

use super::cdb::op;
use super::lun::{self, LunChannel, ScsiLun};
use super::task::ScsiTask;
use std::rc::Rc;
use std::sync::Arc;

/// A target with its LUNs (vhost-user-scsi gives each target LUN 0; iSCSI target nodes may
/// have several).
pub struct ScsiTarget {
    /// Target number on its transport (virtio-scsi's target, an iSCSI node's index).
    pub id: u32,
    /// Name, e.g. `vhost.0.Target0`.
    pub name: String,
    luns: Vec<Arc<ScsiLun>>,
}

impl ScsiTarget {
    /// A target with `luns`.
    pub fn new(id: u32, name: &str, luns: Vec<Arc<ScsiLun>>) -> ScsiTarget {
        ScsiTarget { id, name: name.to_string(), luns }
    }

    /// The unit numbered `id`.
    pub fn lun(&self, id: u64) -> Option<&Arc<ScsiLun>> {
        self.luns.iter().find(|l| l.id == id)
    }

    /// Every unit.
    pub fn luns(&self) -> &[Arc<ScsiLun>] {
        &self.luns
    }

    /// The LUN numbers, ascending.
    pub fn lun_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.luns.iter().map(|l| l.id).collect();
        ids.sort_unstable();
        ids
    }
}

/// Runs `task` against LUN `lun_id` of `target`, with `channel` the transport's cached
/// channel for that unit (None when the LUN does not exist). REPORT LUNS is the target's;
/// commands to a missing LUN get the answers SPC-4 prescribes. Returns the task if it
/// finished at once.
#[inline]
pub fn dispatch(target: &ScsiTarget, channel: Option<&Rc<LunChannel>>, task: Box<ScsiTask>) -> Option<Box<ScsiTask>> {
    match channel {
        Some(c) if task.cdb_len == 0 || task.cdb[0] != op::REPORT_LUNS => lun::execute(c, task),
        _ => Some(report_luns_or_absent(target, channel, task)),
    }
}

/// REPORT LUNS (answered by the target), or any other command to a missing LUN.
#[cold]
fn report_luns_or_absent(target: &ScsiTarget, channel: Option<&Rc<LunChannel>>, task: Box<ScsiTask>) -> Box<ScsiTask> {
    if task.cdb_len > 0 && task.cdb[0] == op::REPORT_LUNS {
        return lun::report_luns(channel.map(|c| &*c.lun), task, &target.lun_ids());
    }
    lun::absent_lun(task)
}
