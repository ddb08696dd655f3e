//! The virtio-scsi device (virtio 1.2, 5.6) served over vhost-user: a second device type on
//! the same session, rings and reactors as virtio-blk. SCSI itself is `crate::scsi`; this
//! module only speaks virtio-scsi's framing.
//!
//! Queue 0 is the control queue (task management, asynchronous notification), queue 1 the
//! event queue (hot-plug and parameter-change events), queues 2.. carry requests, spread over
//! the controller's reactors like virtio-blk's. Targets 0..8 each have LUN 0 on a bdev; they
//! come and go while a guest runs, announced on the event queue.

mod control;
mod events;
mod request;
pub mod rpc;

pub use events::EventQueueState;

use super::device::{RunningQueue, VirtioDevice};
use super::ring::{Vring, VringSetup};
use crate::bdev::qos::gate::LimitSlot;
use crate::scsi::{Nexus, ScsiTarget};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use virtio_bindings::virtio_scsi as vs;
use vmm_sys_util::eventfd::EventFd;

/// Targets per controller (SPDK's limit, and what orchestrators expect).
pub const MAX_TARGETS: usize = 8;
/// Request queues offered (QEMU's `num_queues` may ask for up to this many): every
/// virtqueue but the control and event queues.
pub const MAX_REQUEST_QUEUES: u16 = super::device::MAX_VIRTQUEUES - 2;
/// Bytes of virtio_scsi_cmd_req with the default 32-byte CDB.
pub(crate) const REQ_HEADER: u64 = 51;
/// Bytes of virtio_scsi_cmd_resp with the default 96-byte sense area.
pub(crate) const RESP_HEADER: u64 = 108;
/// Largest data segment count we accept in one request (past it the request fails).
pub(crate) const SEG_MAX: u32 = 254;

/// Feature bits as masks.
pub mod feature {
    use virtio_bindings::virtio_scsi as vs;
    /// Hot-plug events on the event queue.
    pub const HOTPLUG: u64 = 1 << vs::VIRTIO_SCSI_F_HOTPLUG;
    /// Parameter-change events (capacity changes).
    pub const CHANGE: u64 = 1 << vs::VIRTIO_SCSI_F_CHANGE;
}

/// The targets of a controller, swapped as a whole when one is added or removed; request
/// queues notice the generation change and refresh their cached channels.
#[derive(Default)]
pub struct TargetTable {
    slots: Mutex<[Option<Arc<ScsiTarget>>; MAX_TARGETS]>,
    generation: AtomicU64,
}

impl TargetTable {
    /// The target in slot `id`.
    pub fn get(&self, id: usize) -> Option<Arc<ScsiTarget>> {
        self.lock().get(id).cloned().flatten()
    }

    /// Every slot.
    pub fn snapshot(&self) -> [Option<Arc<ScsiTarget>>; MAX_TARGETS] {
        self.lock().clone()
    }

    /// Puts `target` in its slot; false if the slot is taken.
    pub fn insert(&self, target: Arc<ScsiTarget>) -> bool {
        let mut slots = self.lock();
        let slot = &mut slots[target.id as usize];
        if slot.is_some() {
            return false;
        }
        *slot = Some(target);
        self.generation.fetch_add(1, Ordering::AcqRel);
        drop(slots);
        wake_reactors();
        true
    }

    /// Empties slot `id`, returning what was there.
    pub fn remove(&self, id: usize) -> Option<Arc<ScsiTarget>> {
        let taken = self.lock().get_mut(id)?.take();
        self.generation.fetch_add(1, Ordering::AcqRel);
        wake_reactors();
        taken
    }

    /// Bumped on every change.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [Option<Arc<ScsiTarget>>; MAX_TARGETS]> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Wakes every reactor once, so idle request queues notice a target change at once (and a
/// removed target's unit, with its bdev descriptor, is released without waiting for I/O).
fn wake_reactors() {
    for i in 0..crate::framework::reactors().len() {
        let _ = crate::framework::send(i, || {});
    }
}

/// A virtio-scsi device: its targets, and the event queue they announce themselves on.
pub struct ScsiDevice {
    name: String,
    targets: Arc<TargetTable>,
    events: Arc<EventQueueState>,
    qos: Arc<LimitSlot>,
}

impl ScsiDevice {
    /// A device for controller `name`.
    pub fn new(name: &str, targets: Arc<TargetTable>, events: Arc<EventQueueState>) -> ScsiDevice {
        ScsiDevice { name: name.to_string(), targets, events, qos: Arc::new(LimitSlot::default()) }
    }

    /// The I_T nexus of this controller's guest with target `id`: one initiator port per
    /// controller, one relative target port per target.
    pub fn nexus(ctrlr: &str, target: u32) -> Nexus {
        Nexus { initiator: format!("vhost-user-scsi:{ctrlr}"), target_port: target as u16 + 1 }
    }
}

/// Decodes virtio-scsi's 8-byte LUN field: (target, LUN). Target addressing is lun[0] == 1,
/// lun[1] the target; the LUN follows in SAM single-level peripheral or flat format (as
/// Linux sends it, 0x40|hi, lo). `Err(true)` means a bad target field, `Err(false)` a LUN
/// format Ferry does not accept.
pub(crate) fn decode_lun(lun: &[u8; 8]) -> Result<(usize, u64), bool> {
    if lun[0] != 1 || lun[1] as usize >= MAX_TARGETS {
        return Err(true);
    }
    let mut rest = [0u8; 8];
    rest[..6].copy_from_slice(&lun[2..8]);
    crate::scsi::cdb::decode_lun(&rest).map(|l| (lun[1] as usize, l)).ok_or(false)
}

impl VirtioDevice for ScsiDevice {
    fn features(&self) -> u64 {
        use super::blk::feature as f;
        f::VERSION_1 | f::INDIRECT_DESC | f::EVENT_IDX | feature::HOTPLUG | feature::CHANGE
    }

    fn num_queues(&self) -> u16 {
        2 + MAX_REQUEST_QUEUES
    }

    fn config_from_backend(&self) -> bool {
        // QEMU's vhost-user-scsi fills virtio_scsi_config itself; the config below serves
        // initiators that ask (Ferry's own, through GET_CONFIG without the feature).
        false
    }

    fn config(&self) -> Vec<u8> {
        let mut c = Vec::with_capacity(36);
        for v in [
            MAX_REQUEST_QUEUES as u32,
            SEG_MAX,
            0xFFFF,                             // max_sectors
            128,                                // cmd_per_lun
            16,                                 // event_info_size
            vs::VIRTIO_SCSI_SENSE_DEFAULT_SIZE, // sense_size
            vs::VIRTIO_SCSI_CDB_DEFAULT_SIZE,   // cdb_size
        ] {
            c.extend_from_slice(&v.to_le_bytes());
        }
        c.extend_from_slice(&0u16.to_le_bytes()); // max_channel
        c.extend_from_slice(&(MAX_TARGETS as u16 - 1).to_le_bytes());
        c.extend_from_slice(&0u32.to_le_bytes()); // max_lun: LUN 0 per target
        c
    }

    fn write_config(&self, offset: u32, data: &[u8]) -> bool {
        // sense_size (20) and cdb_size (24) may be written, but only with the values we use:
        // the request and response layouts are fixed.
        let value = match <[u8; 4]>::try_from(data) {
            Ok(b) => u32::from_le_bytes(b),
            Err(_) => return false,
        };
        matches!((offset, value), (20, vs::VIRTIO_SCSI_SENSE_DEFAULT_SIZE) | (24, vs::VIRTIO_SCSI_CDB_DEFAULT_SIZE))
    }

    fn qos(&self) -> &Arc<LimitSlot> {
        &self.qos
    }

    fn start_queue(&self, setup: VringSetup, kick: EventFd) -> Result<Box<dyn RunningQueue>, String> {
        let index = setup.index;
        let ring = Vring::new(setup)?;
        match index {
            0 => control::ControlQueue::start(ring, kick, self.name.clone(), self.targets.clone()),
            1 => events::EventQueue::start(ring, kick, self.events.clone()),
            _ => request::RequestQueue::start(ring, kick, self.name.clone(), self.targets.clone(), self.qos.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lun_fields_decode_as_linux_and_sam_send_them() {
        assert_eq!(decode_lun(&[1, 3, 0x40, 0, 0, 0, 0, 0]), Ok((3, 0)));
        assert_eq!(decode_lun(&[1, 0, 0, 0, 0, 0, 0, 0]), Ok((0, 0)));
        assert_eq!(decode_lun(&[1, 0, 0x40, 5, 0, 0, 0, 0]), Ok((0, 5)));
        assert_eq!(decode_lun(&[1, 0, 0x41, 5, 0, 0, 0, 0]), Ok((0, 0x105)));
        assert_eq!(decode_lun(&[0, 0, 0, 0, 0, 0, 0, 0]), Err(true), "not target addressing");
        assert_eq!(decode_lun(&[1, 8, 0x40, 0, 0, 0, 0, 0]), Err(true), "target out of range");
        assert_eq!(decode_lun(&[1, 0, 0x80, 0, 0, 0, 0, 0]), Err(false), "logical unit addressing");
        assert_eq!(decode_lun(&[1, 0, 0x40, 0, 0x40, 1, 0, 0]), Err(false), "two levels");
    }
}
