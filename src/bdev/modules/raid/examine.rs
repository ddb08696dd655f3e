//! Examine: every new bdev is looked at. A configuring array waiting for a member of that
//! name takes it; a bdev carrying a RAID superblock joins (or creates) its array, which goes
//! online once every member the superblock counts is present. A member that left an online
//! array and comes back is added back and rebuilt.

use super::array::{self, Array, RaidState, Slot, WriteIntent};
use super::layout::Layout;
use super::superblock::{SlotMark, Superblock};
use super::{members, sb_io, MD_REACTOR};
use crate::bdev::{self, Bdev};
use crate::framework::{self, task};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The examine hook.
pub fn examine(bdev: &Bdev) {
    if bdev.module() == "raid" {
        return;
    }
    let name = bdev.name().to_string();
    let guard = crate::bdev::registry::ExamineGuard::new();
    let job = move || async move {
        let _guard = guard;
        examine_name(&name).await
    };
    match framework::current_index() {
        None => {
            if task::block_on(MD_REACTOR, job).is_err() {
                tracing::debug!("no reactors: raid examine skipped");
            }
        }
        Some(MD_REACTOR) => task::spawn_local(job()),
        Some(_) => {
            let _ = framework::send(MD_REACTOR, move || task::spawn_local(job()));
        }
    }
}

async fn examine_name(name: &str) {
    // Arrays created by name, waiting for this member.
    for a in array::list() {
        let slot = {
            let ctl = a.ctl();
            if ctl.state != RaidState::Configuring {
                continue;
            }
            ctl.slots.iter().position(|s| !s.present() && s.name.as_deref() == Some(name))
        };
        if let Some(slot) = slot {
            match members::attach(&a, slot, name) {
                Ok(()) if members::complete(&a) => {
                    if let Err(e) = members::go_online(&a).await {
                        tracing::error!(array = %a.name, error = %e, "raid bdev not brought online");
                    }
                }
                Ok(()) => {}
                Err(e) => tracing::error!(array = %a.name, member = name, error = %e, "raid member not attached"),
            }
            return;
        }
    }
    let Ok(desc) = bdev::open(name, false, Box::new(|_, _| {})) else { return };
    let Ok(ch) = desc.channel() else { return };
    let sb = match sb_io::read(&ch).await {
        Some(Ok(sb)) => sb,
        Some(Err(super::superblock::SbError::NoMagic)) | None => return,
        Some(Err(e)) => {
            tracing::warn!(bdev = name, error = %e, "raid superblock ignored");
            return;
        }
    };
    let uuid = desc.bdev().uuid();
    drop(ch);
    drop(desc);
    assemble(sb, name, uuid).await;
}

async fn assemble(sb: Superblock, name: &str, member: uuid::Uuid) {
    let Some(pos) = sb.slots.iter().position(|s| s.uuid == member) else {
        tracing::debug!(bdev = name, "raid superblock does not list this bdev");
        return;
    };
    let mut released = Vec::new();
    let array = match array::find_uuid(sb.uuid) {
        Some(a) => {
            let state = a.ctl().state;
            let seq = a.sb_seq.load(Ordering::Acquire);
            if state == RaidState::Online {
                // A member that left comes back: add it again (rebuilt).
                if sb.seq < seq {
                    tracing::info!(array = %a.name, member = name, "re-adding bdev to raid bdev");
                    if let Err(e) = members::add(&a, name).await {
                        tracing::warn!(array = %a.name, member = name, error = %e, "member not re-added");
                    }
                }
                return;
            }
            if state == RaidState::Configuring && sb.seq > seq {
                // A newer superblock: the array is what it says.
                released = a.ctl().slots.iter().filter(|s| s.present()).filter_map(|s| s.name.clone()).collect();
                members::discard(&a);
                match from_superblock(&sb) {
                    Some(a) => a,
                    None => return,
                }
            } else {
                a
            }
        }
        None => match from_superblock(&sb) {
            Some(a) => a,
            None => return,
        },
    };
    if sb.slots[pos].mark != SlotMark::Configured && sb.seq >= array.sb_seq.load(Ordering::Acquire) {
        tracing::info!(bdev = name, array = %array.name, "bdev is not an active member of raid bdev: ignored");
        return;
    }
    let slot = {
        let ctl = array.ctl();
        ctl.slots.iter().position(|s| !s.present() && s.uuid == Some(member))
    };
    if let Some(slot) = slot {
        if let Err(e) = members::attach(&array, slot, name) {
            tracing::error!(array = %array.name, member = name, error = %e, "raid member not attached");
            return;
        }
        if members::complete(&array) {
            if let Err(e) = members::go_online(&array).await {
                tracing::error!(array = %array.name, error = %e, "raid bdev not brought online");
            }
        }
    }
    for n in released.into_iter().filter(|n| n != name) {
        Box::pin(examine_name(&n)).await;
    }
}

/// A configuring array as a superblock describes it (listed).
fn from_superblock(sb: &Superblock) -> Option<Arc<Array>> {
    let slots = sb
        .slots
        .iter()
        .map(|s| match s.mark {
            SlotMark::Configured => Slot::expecting(s.uuid, s.data_blocks),
            _ => Slot::vacated((!s.uuid.is_nil()).then_some((s.uuid, s.delta_ok)), s.data_blocks),
        })
        .collect();
    let a = Array::new(&sb.name, sb.uuid, sb.level, sb.strip_size_kb, true, slots);
    let bs = sb.block_size as u64;
    a.block_size.store(bs, Ordering::Release);
    a.data_offset.store(super::superblock::DATA_OFFSET / bs, Ordering::Release);
    a.sb_seq.store(sb.seq, Ordering::Release);
    let strip = sb.strip_size_kb as u64 * 1024 / bs;
    let member_blocks: Vec<u64> = sb.slots.iter().map(|s| s.data_blocks).collect();
    let layout = Layout { level: sb.level, strip_blocks: strip, member_blocks, num_blocks: sb.num_blocks };
    {
        let mut ctl = a.ctl();
        ctl.layout = Some(Arc::new(layout));
        ctl.unclean = !sb.clean;
    }
    if sb.level.redundant() && sb.bits > 0 {
        *crate::bdev::device::lock(&a.intent) =
            Some(Arc::new(WriteIntent::new(sb.region_blocks, sb.bits, &sb.degraded, &sb.active)));
    }
    let a = Arc::new(a);
    match array::insert(a.clone()) {
        Ok(()) => Some(a),
        Err(e) => {
            tracing::warn!(array = %sb.name, error = %e, "raid bdev from superblock not created");
            None
        }
    }
}
