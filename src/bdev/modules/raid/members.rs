//! Control operations on arrays: attaching members (open + claim), bringing an array online,
//! members failing or leaving (raid1 degrades, raid0/concat go offline), adding a member back
//! (rebuilt), and deleting. Operations that write superblocks run on the metadata reactor.

use super::array::{self, Array, RaidState, Slot, SlotState, WriteIntent};
use super::io::RaidBackend;
use super::layout::Layout;
use super::superblock::{self, DATA_OFFSET};
use super::{rebuild, sb_io, MD_REACTOR};
use crate::bdev::{self, registry, BdevError, BdevEvent, BdevProps};
use crate::framework;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use uuid::Uuid;

static EPOCHS: AtomicU64 = AtomicU64::new(1);

/// Opens and claims bdev `name` as the member of `slot`; checks its block size and size.
pub fn attach(array: &Arc<Array>, slot: usize, name: &str) -> Result<(), BdevError> {
    let epoch = EPOCHS.fetch_add(1, Ordering::Relaxed);
    let weak: Weak<Array> = Arc::downgrade(array);
    let on_event = Box::new(move |ev: BdevEvent, b: &crate::bdev::Bdev| {
        if ev == BdevEvent::Remove {
            if let Some(a) = weak.upgrade() {
                tracing::warn!(array = %a.name, member = b.name(), "raid member removed");
                member_failed(&a, slot, epoch);
            }
        }
    });
    let mut desc = bdev::open(name, true, on_event)?;
    desc.claim("raid")?;
    let b = desc.bdev().clone();
    let bs = b.block_size() as u64;
    let known = array.block_size.load(Ordering::Acquire);
    if known != 0 && known != bs {
        return Err(BdevError::InvalidParam(format!(
            "Raid bdev '{}' blocklen {known} differs from base bdev '{name}' blocklen {bs}",
            array.name
        )));
    }
    let offset = if array.superblock { DATA_OFFSET / bs } else { 0 };
    let mut ctl = array.ctl();
    let need = ctl.slots[slot].data_blocks;
    if b.num_blocks() <= offset || (need > 0 && b.num_blocks() - offset < need) {
        return Err(BdevError::InvalidParam(format!("base bdev '{name}' is too small for raid bdev '{}'", array.name)));
    }
    array.block_size.store(bs, Ordering::Release);
    array.data_offset.store(offset, Ordering::Release);
    let online = ctl.state == RaidState::Online;
    let s = &mut ctl.slots[slot];
    s.name = Some(name.to_string());
    s.uuid = Some(b.uuid());
    s.desc = Some(desc);
    s.epoch = epoch;
    s.state = if online { SlotState::Rebuilding } else { SlotState::Online };
    array.changed(&ctl);
    Ok(())
}

/// Releases every member and forgets the array (a failed create).
pub fn discard(array: &Arc<Array>) {
    let descs: Vec<_> = array.ctl().slots.iter_mut().filter_map(|s| s.desc.take()).collect();
    drop(descs);
    array::forget(array);
}

/// Whether every slot the array waits for has its member.
pub fn complete(array: &Array) -> bool {
    let ctl = array.ctl();
    ctl.slots.iter().all(|s| s.present() || (s.name.is_none() && s.uuid.is_none()))
        && ctl.slots.iter().any(|s| s.present())
}

type OnlineParts = (BdevProps, RaidBackend, bool);

/// Brings a configuring array whose members are all present online: geometry (unless a
/// superblock gave it), superblock, registration; a resync if it was not closed cleanly.
/// On the metadata reactor (examine, add).
pub async fn go_online(array: &Arc<Array>) -> Result<(), BdevError> {
    let parts = prepare_online(array)?;
    if array.superblock {
        sb_io::write(array, false).await;
    }
    register_online(array, parts)
}

/// As [`go_online`], from a control thread (an RPC): the bdev is registered here, so the
/// examine hooks run before the call returns, as for every bdev an RPC creates.
pub fn go_online_blocking(array: &Arc<Array>) -> Result<(), BdevError> {
    let parts = prepare_online(array)?;
    if array.superblock {
        let a = array.clone();
        framework::task::block_on(MD_REACTOR, move || async move { sb_io::write(&a, false).await })?;
    }
    register_online(array, parts)
}

fn prepare_online(array: &Arc<Array>) -> Result<OnlineParts, BdevError> {
    let mut ctl = array.ctl();
    let bs = array.block_size.load(Ordering::Acquire);
    let offset = array.data_offset.load(Ordering::Acquire);
    let layout = match &ctl.layout {
        Some(l) => l.clone(),
        None => {
            let strip = array.strip_size_kb as u64 * 1024;
            if array.level != super::layout::RaidLevel::Raid1 && strip < bs {
                return Err(BdevError::InvalidParam("Strip size cannot be smaller than the device block size".into()));
            }
            let avail: Vec<u64> = ctl
                .slots
                .iter()
                .map(|s| s.desc.as_ref().map_or(0, |d| d.bdev().num_blocks().saturating_sub(offset)))
                .collect();
            let l = Layout::new(array.level, (strip / bs).max(1), &avail)
                .ok_or_else(|| BdevError::InvalidParam("base bdevs are too small".into()))?;
            Arc::new(l)
        }
    };
    for (i, s) in ctl.slots.iter_mut().enumerate() {
        s.data_blocks = layout.member_blocks[i];
    }
    if array.superblock && array.level.redundant() && array.intent().is_none() {
        let region = superblock::region_blocks_for(layout.num_blocks, bs as u32);
        let bits = layout.num_blocks.div_ceil(region);
        *crate::bdev::device::lock(&array.intent) = Some(Arc::new(WriteIntent::new(region, bits, &[], &[])));
    }
    ctl.layout = Some(layout.clone());
    let descs: Vec<_> = ctl.slots.iter().filter_map(|s| s.desc.as_ref()).collect();
    let align = descs.iter().map(|d| d.bdev().backend().buf_align()).max().unwrap_or(1);
    let write_cache = descs.iter().any(|d| d.bdev().backend().write_cache());
    let props = BdevProps {
        name: array.name.clone(),
        uuid: Some(array.uuid),
        block_size: bs as u32,
        num_blocks: layout.num_blocks,
    };
    ctl.state = RaidState::Online;
    array.changed(&ctl);
    Ok((props, RaidBackend { array: array.clone(), layout, align, write_cache }, ctl.unclean))
}

fn register_online(array: &Arc<Array>, (props, backend, resync): OnlineParts) -> Result<(), BdevError> {
    match registry::register(props, Box::new(backend)) {
        Ok(b) => array.ctl().bdev = Some(b),
        Err(e) => {
            array.ctl().state = RaidState::Configuring;
            return Err(e);
        }
    }
    if resync && array.level.redundant() {
        rebuild::start_resync(array);
    }
    Ok(())
}

/// Member `slot` (attached as `epoch`) failed or went away. raid1 carries on without it
/// (degraded); an array that cannot goes offline (its bdev is unregistered).
pub fn member_failed(array: &Arc<Array>, slot: usize, epoch: u64) {
    let (desc, unregister, online) = {
        let mut ctl = array.ctl();
        let Some(s) = ctl.slots.get_mut(slot) else { return };
        if s.epoch != epoch || s.desc.is_none() {
            return;
        }
        let was_online = s.state == SlotState::Online;
        let left = s.uuid.map(|u| (u, was_online));
        let desc = s.desc.take();
        let data_blocks = s.data_blocks;
        *s = Slot::vacated(left, data_blocks);
        if let Some(p) = &ctl.process {
            if p.target == slot {
                p.cancel.store(true, Ordering::Release);
            }
        }
        let mut unregister = None;
        if ctl.state == RaidState::Online {
            let readable = ctl.slots.iter().any(|s| s.state == SlotState::Online);
            if !array.level.redundant() || !readable {
                tracing::error!(array = %array.name, "raid bdev lost a member it cannot do without: offline");
                ctl.state = RaidState::Offline;
                if let Some(p) = &ctl.process {
                    p.cancel.store(true, Ordering::Release);
                }
                unregister = ctl.bdev.take();
            } else {
                tracing::warn!(array = %array.name, slot, "raid bdev degraded");
            }
        }
        array.changed(&ctl);
        if ctl.state == RaidState::Offline && ctl.slots.iter().all(|s| !s.present()) {
            array::forget(array);
        }
        (desc, unregister, ctl.state == RaidState::Online)
    };
    drop(desc);
    if let Some(b) = unregister {
        let _ = registry::unregister(b.name(), Some("raid"));
    }
    if online && array.superblock {
        let a = array.clone();
        let _ = framework::send(MD_REACTOR, move || {
            framework::task::spawn_local(async move { sb_io::write(&a, false).await })
        });
    }
}

/// `bdev_raid_add_base_bdev`: fills a slot of `array` with bdev `name`; an online array
/// rebuilds it (only the regions written meanwhile, when it is the member that left that slot
/// in sync and the bitmap covers its absence). On the metadata reactor.
pub async fn add(array: &Arc<Array>, name: &str) -> Result<(), BdevError> {
    let state = array.ctl().state;
    if array.ctl().process.is_some() {
        return Err(BdevError::Claimed { bdev: array.name.clone(), module: "raid (in process)".into() });
    }
    let bdev = registry::get(name);
    let slot = {
        let ctl = array.ctl();
        let by_uuid = match (state, &bdev) {
            (RaidState::Configuring, Some(b)) => {
                ctl.slots.iter().position(|s| !s.present() && s.name.is_none() && s.uuid == Some(b.uuid()))
            }
            _ => None,
        };
        by_uuid.or_else(|| ctl.slots.iter().position(|s| !s.present() && s.name.is_none() && s.uuid.is_none()))
    };
    let Some(slot) = slot else {
        return Err(BdevError::InvalidParam(format!(
            "no empty slot found in raid bdev '{}' for new base bdev '{name}'",
            array.name
        )));
    };
    if state != RaidState::Online {
        if bdev.is_none() {
            array.ctl().slots[slot].name = Some(name.to_string());
            return Ok(());
        }
        attach(array, slot, name)?;
        if complete(array) {
            go_online(array).await?;
        }
        return Ok(());
    }
    let Some(b) = bdev else { return Err(BdevError::NotFound(name.to_string())) };
    // Its old superblock says whether it is the member that left (before it is overwritten).
    let left = array.ctl().slots[slot].left;
    let delta = match (array.intent(), left) {
        (Some(_), Some((u, true))) if u == b.uuid() => {
            let d = bdev::open(name, false, Box::new(|_, _| {}))?;
            match d.channel() {
                Ok(ch) => matches!(sb_io::read(&ch).await, Some(Ok(sb)) if sb.uuid == array.uuid),
                Err(_) => false,
            }
        }
        _ => false,
    };
    attach(array, slot, name)?;
    if array.superblock {
        sb_io::write(array, false).await;
    }
    rebuild::start_rebuild(array, slot, delta);
    Ok(())
}

/// `bdev_raid_remove_base_bdev` of member bdev `name`.
pub fn remove(name: &str) -> Result<(), BdevError> {
    let b = registry::get(name).ok_or_else(|| BdevError::NotFound(name.to_string()))?;
    let (array, slot) = array::owner_of(&b).ok_or_else(|| BdevError::NotFound(name.to_string()))?;
    let epoch = array.ctl().slots[slot].epoch;
    let state = array.ctl().state;
    if state != RaidState::Online {
        // Not registered: the member just goes (SPDK frees a configuring array's resources).
        let desc = {
            let mut ctl = array.ctl();
            let s = &mut ctl.slots[slot];
            s.name = None;
            s.uuid = None;
            s.state = SlotState::Empty;
            let d = s.desc.take();
            array.changed(&ctl);
            if ctl.slots.iter().all(|s| !s.present()) && ctl.state == RaidState::Offline {
                array::forget(&array);
            }
            d
        };
        drop(desc);
        return Ok(());
    }
    member_failed(&array, slot, epoch);
    Ok(())
}

/// Deletes an array: drains its I/O, unregisters it, marks its superblock clean (or clears
/// it), releases its members. On the metadata reactor.
pub async fn delete(array: &Arc<Array>, clear_sb: bool) {
    let (bdev, process) = {
        let ctl = array.ctl();
        (ctl.bdev.clone(), ctl.process.as_ref().map(|p| p.cancel.clone()))
    };
    if let Some(c) = process {
        c.store(true, Ordering::Release);
    }
    // Every I/O submitted before now completes before the superblock says "clean".
    let drained = match &bdev {
        Some(b) => match bdev::open(b.name(), false, Box::new(|_, _| {})).and_then(|d| Ok((d.channel()?, d))) {
            Ok((ch, d)) => Some((rebuild::lock(&ch, 0, b.num_blocks()).await, d)),
            Err(_) => None,
        },
        None => None,
    };
    if let Some(b) = &bdev {
        let _ = registry::unregister(b.name(), Some("raid"));
    }
    {
        let mut ctl = array.ctl();
        ctl.bdev = None;
        if ctl.state == RaidState::Online {
            ctl.state = RaidState::Offline;
        }
    }
    if array.superblock {
        if clear_sb {
            sb_io::clear(array).await;
        } else {
            sb_io::write(array, true).await;
        }
    }
    drop(drained);
    let descs: Vec<_> = {
        let mut ctl = array.ctl();
        let d = ctl.slots.iter_mut().filter_map(|s| s.desc.take()).collect();
        array.changed(&ctl);
        d
    };
    drop(descs);
    array::forget(array);
}

/// A new array's uuid, or the one asked for.
pub fn uuid_or_new(u: Option<Uuid>) -> Uuid {
    u.unwrap_or_else(Uuid::new_v4)
}
