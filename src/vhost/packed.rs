//! The device side of a packed virtqueue (virtio 1.2, 2.8), hand-written (virtio-queue
//! implements split rings only; Ferry's split ring is hand-written too, see split.rs).
//!
//! One ring of 16-byte descriptors `{addr u64, len u32, id u16, flags u16}` serves both
//! directions: a descriptor is available when its AVAIL bit equals our avail wrap counter and
//! its USED bit does not; we return a buffer by writing `{id, len}` at our used position and
//! then its flags with both bits set to the used wrap counter, advancing by the number of
//! descriptors the buffer took. Event suppression: the device area (ours) tells the driver
//! whether to kick, the driver area whether it wants interrupts.

use super::memory::{read_shared, GuestMemory};
use super::ring::Chain;
use std::sync::atomic::{fence, Ordering};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
pub(crate) const F_AVAIL: u16 = 1 << 7;
pub(crate) const F_USED: u16 = 1 << 15;
const EVENT_ENABLE: u16 = 0;
const EVENT_DISABLE: u16 = 1;

/// What looking at the ring found.
pub enum PackedPop {
    /// A buffer, flattened into the chain.
    Chain,
    /// Nothing available.
    Empty,
    /// The ring is inconsistent (a chain longer than the ring, memory outside the table).
    Broken,
}

/// A position in the ring: a slot index and the wrap counter that goes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Slot index (below the ring size).
    pub idx: u16,
    /// Wrap counter.
    pub wrap: bool,
}

impl Position {
    /// Where a fresh ring starts (both wrap counters start at 1).
    pub const START: Position = Position { idx: 0, wrap: true };

    /// The position `n` slots further on a ring of `size`, flipping the wrap counter each
    /// time it passes the end.
    pub fn advance(self, n: u32, size: u16) -> Position {
        let total = self.idx as u32 + n;
        let laps = total / size as u32;
        Position { idx: (total % size as u32) as u16, wrap: self.wrap ^ (laps % 2 == 1) }
    }
}

/// A packed ring's device-side state.
pub struct PackedRing {
    size: u16,
    desc: u64,
    driver_area: u64,
    device_area: u64,
    next_avail: u16,
    avail_wrap: bool,
    next_used: u16,
    used_wrap: bool,
    /// Descriptors each in-flight buffer took, by buffer id.
    ndescs: Vec<u16>,
    /// The descriptors of the buffer popped last, as read from the ring (for inflight
    /// tracking, which must keep copies: the ring's slots are reused for used elements).
    popped: Vec<PackedDesc>,
}

/// One packed-ring descriptor as the driver wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedDesc {
    /// Buffer address (guest-physical).
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// Buffer id (meaningful in a buffer's last descriptor).
    pub id: u16,
    /// NEXT, WRITE, INDIRECT, AVAIL, USED.
    pub flags: u16,
}

fn read_desc(mem: &GuestMemory, gpa: u64) -> Option<PackedDesc> {
    let p = mem.host_range(gpa, 16).ok()?;
    let mut raw = [0u8; 16];
    // SAFETY: host_range checked the 16 bytes lie inside guest memory; we copy a snapshot.
    unsafe { read_shared(p, &mut raw) };
    Some(PackedDesc {
        addr: u64::from_le_bytes(raw[0..8].try_into().unwrap()),
        len: u32::from_le_bytes(raw[8..12].try_into().unwrap()),
        id: u16::from_le_bytes(raw[12..14].try_into().unwrap()),
        flags: u16::from_le_bytes(raw[14..16].try_into().unwrap()),
    })
}

fn load_u16(mem: &GuestMemory, gpa: u64) -> Option<u16> {
    let p = mem.host_range(gpa, 2).ok()?;
    // SAFETY: host_range checked the two bytes; ring fields are 2-byte aligned.
    Some(u16::from_le(unsafe { p.cast::<u16>().read_volatile() }))
}

fn store_u16(mem: &GuestMemory, gpa: u64, v: u16) -> bool {
    let Ok(p) = mem.host_range(gpa, 2) else { return false };
    // SAFETY: as in load_u16.
    unsafe { p.cast::<u16>().write_volatile(v.to_le()) };
    true
}

impl PackedRing {
    /// A ring of `size` at these guest addresses, resuming at `base` (vhost-user's packed
    /// format: bits 0-14 avail index, 15 avail wrap, 16-30 used index, 31 used wrap).
    pub fn new(size: u16, desc: u64, driver_area: u64, device_area: u64, base: u32) -> Result<PackedRing, String> {
        if size == 0 || size > 1 << 15 {
            return Err(format!("packed ring size {size} is out of range"));
        }
        // virtio 1.2 2.8.10.1: the ring is 16-aligned, the event suppression areas 4-aligned.
        // The ring's u16 fields are accessed in place (volatile), which must be aligned.
        if !desc.is_multiple_of(16) || !driver_area.is_multiple_of(4) || !device_area.is_multiple_of(4) {
            return Err(format!(
                "packed ring at {desc:#x} (driver area {driver_area:#x}, device area {device_area:#x}) is misaligned"
            ));
        }
        let wrap = |bit: u32| base & (1 << bit) != 0;
        let next_avail = (base & 0x7fff) as u16 % size;
        let next_used = ((base >> 16) & 0x7fff) as u16 % size;
        // A fresh ring starts with both wrap counters set (base 0 from frontends means "start").
        let (avail_wrap, used_wrap) = if base == 0 { (true, true) } else { (wrap(15), wrap(31)) };
        Ok(PackedRing {
            size,
            desc,
            driver_area,
            device_area,
            next_avail,
            avail_wrap,
            next_used,
            used_wrap,
            ndescs: vec![0; size as usize],
            popped: Vec::new(),
        })
    }

    /// Moves the ring to where a recovered inflight area says it was.
    pub fn set_position(&mut self, avail: Position, used: Position) {
        (self.next_avail, self.avail_wrap) = (avail.idx % self.size, avail.wrap);
        (self.next_used, self.used_wrap) = (used.idx % self.size, used.wrap);
    }

    /// The next used slot and its wrap counter.
    pub fn used_position(&self) -> Position {
        Position { idx: self.next_used, wrap: self.used_wrap }
    }

    /// The flags of ring slot `idx` (None if the ring is outside guest memory).
    pub fn slot_flags(&self, mem: &GuestMemory, idx: u16) -> Option<u16> {
        load_u16(mem, self.desc + 16 * (idx % self.size) as u64 + 14)
    }

    /// The descriptors of the buffer the last successful [`PackedRing::pop`] returned.
    pub fn popped(&self) -> &[PackedDesc] {
        &self.popped
    }

    /// Rebuilds a buffer fetched before a restart from its saved descriptors (the ring's
    /// slots may hold used elements by now). False if they do not form a buffer.
    pub fn resume(&mut self, mem: &GuestMemory, descs: &[PackedDesc], chain: &mut Chain) -> bool {
        let Some(last) = descs.last() else { return false };
        if last.id >= self.size || descs.len() > self.size as usize {
            return false;
        }
        flatten(mem, self.size, descs, chain);
        chain.head = last.id;
        self.ndescs[last.id as usize] = descs.len() as u16;
        true
    }

    /// Where to resume, in vhost-user's packed format.
    pub fn base(&self) -> u32 {
        self.next_avail as u32
            | (self.avail_wrap as u32) << 15
            | (self.next_used as u32) << 16
            | (self.used_wrap as u32) << 31
    }

    /// Ring size.
    pub fn size(&self) -> u16 {
        self.size
    }

    fn available(&self, mem: &GuestMemory) -> Option<bool> {
        let flags = load_u16(mem, self.desc + 16 * self.next_avail as u64 + 14)?;
        Some((flags & F_AVAIL != 0) == self.avail_wrap && (flags & F_USED != 0) != self.avail_wrap)
    }

    /// Takes the next available buffer into `chain` (its `head` is the buffer id).
    pub fn pop(&mut self, mem: &GuestMemory, chain: &mut Chain) -> PackedPop {
        match self.available(mem) {
            None => return PackedPop::Broken,
            Some(false) => return PackedPop::Empty,
            Some(true) => {}
        }
        fence(Ordering::Acquire);
        let (mut index, mut wrap) = (self.next_avail, self.avail_wrap);
        self.popped.clear();
        loop {
            if self.popped.len() == self.size as usize {
                return PackedPop::Broken; // a chain as long as the ring never ends
            }
            let Some(d) = read_desc(mem, self.desc + 16 * index as u64) else { return PackedPop::Broken };
            index += 1;
            if index == self.size {
                index = 0;
                wrap = !wrap;
            }
            self.popped.push(d);
            if d.flags & F_NEXT == 0 {
                break;
            }
        }
        let id = self.popped.last().expect("one descriptor at least").id;
        if id >= self.size {
            // Buffer ids index our per-buffer bookkeeping; an id past the ring would alias
            // another buffer's, so the driver is broken.
            return PackedPop::Broken;
        }
        flatten(mem, self.size, &self.popped, chain);
        chain.head = id;
        self.next_avail = index;
        self.avail_wrap = wrap;
        self.ndescs[id as usize] = self.popped.len() as u16;
        PackedPop::Chain
    }

    /// Returns buffer `id` with `len` bytes written. False if the ring is outside memory.
    pub fn complete(&mut self, mem: &GuestMemory, id: u16, len: u32) -> bool {
        let at = self.desc + 16 * self.next_used as u64;
        let Ok(p) = mem.host_range(at, 16) else { return false };
        // SAFETY: host_range checked the descriptor lies in guest memory; id and len are
        // written before the flags that hand the descriptor back (release fence between).
        unsafe {
            p.add(8).cast::<u32>().write_volatile(len.to_le());
            p.add(12).cast::<u16>().write_volatile(id.to_le());
        }
        fence(Ordering::Release);
        let flags = if self.used_wrap { F_AVAIL | F_USED } else { 0 };
        // SAFETY: as above.
        unsafe { p.add(14).cast::<u16>().write_volatile(flags.to_le()) };
        let n = self.ndescs[(id % self.size) as usize].max(1);
        let next = self.next_used as u32 + n as u32;
        if next >= self.size as u32 {
            self.used_wrap = !self.used_wrap;
        }
        self.next_used = (next % self.size as u32) as u16;
        true
    }

    /// Whether the driver wants an interrupt (DESC mode is treated as "yes": an extra
    /// interrupt is harmless, a missing one is not).
    pub fn needs_notification(&self, mem: &GuestMemory) -> bool {
        // Our used descriptors must be visible before we read the driver's wishes, as on the
        // split ring: the driver enables notifications and then looks for used descriptors, so
        // with the two reordered here each side could miss the other and an interrupt be lost.
        fence(Ordering::SeqCst);
        load_u16(mem, self.driver_area + 2).is_none_or(|f| f != EVENT_DISABLE)
    }

    /// Asks the driver not to kick.
    pub fn notifications_off(&self, mem: &GuestMemory) {
        store_u16(mem, self.device_area + 2, EVENT_DISABLE);
    }

    /// Asks the driver to kick again; true if a buffer became available meanwhile.
    pub fn notifications_on(&self, mem: &GuestMemory) -> bool {
        store_u16(mem, self.device_area + 2, EVENT_ENABLE);
        fence(Ordering::SeqCst);
        self.available(mem).unwrap_or(false)
    }
}

/// Flattens a buffer's descriptors (and the indirect table one of them may point to) into
/// `chain`'s readable and writable segments, marking it malformed where the layout is wrong.
fn flatten(mem: &GuestMemory, size: u16, descs: &[PackedDesc], chain: &mut Chain) {
    for d in descs {
        if d.flags & F_INDIRECT != 0 {
            // An indirect descriptor is its buffer's only one (virtio 1.2 2.8.19: never in a
            // list linked by NEXT).
            if d.flags & F_NEXT != 0
                || d.len == 0
                || d.len % 16 != 0
                || d.len / 16 > size as u32
                || !chain.readable.is_empty()
                || !chain.writable.is_empty()
            {
                chain.malformed = true;
            } else {
                for i in 0..(d.len / 16) as u64 {
                    // The table's address is the guest's: it may wrap past 2^64.
                    match d.addr.checked_add(16 * i).and_then(|at| read_desc(mem, at)) {
                        Some(e) => chain.push_segment(e.addr, e.len, e.flags & F_WRITE != 0),
                        None => {
                            chain.malformed = true;
                            break;
                        }
                    }
                }
            }
        } else {
            chain.push_segment(d.addr, d.len, d.flags & F_WRITE != 0);
        }
    }
    if chain.readable.is_empty() && chain.writable.is_empty() {
        chain.malformed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESC: u64 = 0x1000;
    const DRIVER: u64 = 0x2000;
    const DEVICE: u64 = 0x3000;
    const SIZE: u16 = 4;

    fn memory() -> GuestMemory {
        GuestMemory::for_tests(1 << 20)
    }

    /// Makes descriptor `i` available for driver wrap counter `wrap`.
    fn offer(mem: &GuestMemory, i: u16, addr: u64, len: u32, id: u16, flags: u16, wrap: bool) {
        let avail = if wrap { F_AVAIL } else { F_USED };
        let mut d = addr.to_le_bytes().to_vec();
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&id.to_le_bytes());
        d.extend_from_slice(&(flags | avail).to_le_bytes());
        let p = mem.host_range(DESC + 16 * i as u64, 16).unwrap();
        // SAFETY: inside the test's mapping.
        unsafe { std::ptr::copy_nonoverlapping(d.as_ptr(), p, 16) };
    }

    fn used_flags(mem: &GuestMemory, i: u16) -> u16 {
        load_u16(mem, DESC + 16 * i as u64 + 14).unwrap()
    }

    /// Found by the vhost_user fuzz target: a device area at an odd address was written with
    /// a misaligned volatile u16 store (undefined behaviour; a panic in debug builds).
    #[test]
    fn misaligned_areas_are_refused() {
        assert!(PackedRing::new(SIZE, DESC, DRIVER, DEVICE, 0).is_ok());
        assert!(PackedRing::new(SIZE, DESC + 8, DRIVER, DEVICE, 0).is_err(), "ring not 16-aligned");
        assert!(PackedRing::new(SIZE, DESC, DRIVER + 2, DEVICE, 0).is_err(), "driver area not 4-aligned");
        assert!(PackedRing::new(SIZE, DESC, DRIVER, DEVICE + 1, 0).is_err(), "device area not 4-aligned");
    }

    /// Found by the differential test against the reference model (ring_oracle.rs): an
    /// indirect descriptor with NEXT set was taken, with the descriptors after it appended.
    #[test]
    fn an_indirect_descriptor_linked_by_next_is_malformed() {
        let mem = memory();
        let mut ring = PackedRing::new(SIZE, DESC, DRIVER, DEVICE, 0).unwrap();
        offer(&mem, 0, 0x20000, 16, 0, F_INDIRECT | F_NEXT, true);
        offer(&mem, 1, 0x11000, 1, 1, F_WRITE, true);
        let mut chain = Chain::default();
        assert!(matches!(ring.pop(&mem, &mut chain), PackedPop::Chain));
        assert!(chain.malformed, "INDIRECT with NEXT: {:x?} / {:x?}", chain.readable, chain.writable);
        assert_eq!((chain.head, ring.base() & 0x7fff), (1, 2), "both descriptors are consumed");
    }

    #[test]
    fn buffers_flow_across_the_wrap_and_hostile_rings_are_caught() {
        let mem = memory();
        let mut ring = PackedRing::new(SIZE, DESC, DRIVER, DEVICE, 0).unwrap();
        let mut chain = Chain::default();
        assert!(matches!(ring.pop(&mem, &mut chain), PackedPop::Empty));
        // Buffer 7: two descriptors (header, status); buffer 3: one descriptor.
        offer(&mem, 0, 0x10000, 16, 0, F_NEXT, true);
        offer(&mem, 1, 0x11000, 1, 2, F_WRITE, true);
        offer(&mem, 2, 0x12000, 16, 3, 0, true);
        assert!(matches!(ring.pop(&mem, &mut chain), PackedPop::Chain));
        assert_eq!(
            (chain.head, chain.readable.clone(), chain.writable.clone()),
            (2, vec![(0x10000, 16)], vec![(0x11000, 1)])
        );
        assert!(!chain.malformed);
        chain = Chain::default();
        assert!(matches!(ring.pop(&mem, &mut chain), PackedPop::Chain));
        assert_eq!(chain.head, 3);
        // Completing 3 first (out of order) writes it at used position 0 and advances by 1.
        assert!(ring.complete(&mem, 3, 1));
        assert_eq!(used_flags(&mem, 0), F_AVAIL | F_USED);
        assert!(ring.complete(&mem, 2, 1));
        assert_eq!(ring.base() >> 16 & 0x7fff, 3, "used index advanced by 1 + 2 descriptors");
        // Descriptor 3, then the wrap: the driver's counter flips at index 0.
        offer(&mem, 3, 0x13000, 16, 1, F_NEXT, true);
        offer(&mem, 0, 0x14000, 1, 1, F_WRITE, false);
        chain = Chain::default();
        assert!(matches!(ring.pop(&mem, &mut chain), PackedPop::Chain));
        assert_eq!((chain.head, chain.writable.clone()), (1, vec![(0x14000, 1)]));
        assert_eq!(ring.base() & 0x8000, 0, "the avail wrap counter flipped");
        assert!(ring.complete(&mem, 1, 1));
        assert_eq!(used_flags(&mem, 3), F_AVAIL | F_USED, "written with the old wrap counter");
        let resumed = PackedRing::new(SIZE, DESC, DRIVER, DEVICE, ring.base()).unwrap();
        assert_eq!(resumed.base(), ring.base(), "GET_VRING_BASE round-trips");

        // A chain whose every descriptor says NEXT never ends: the ring is broken.
        let mem = memory();
        let mut ring = PackedRing::new(SIZE, DESC, DRIVER, DEVICE, 0).unwrap();
        for i in 0..SIZE {
            offer(&mem, i, 0x10000, 16, 0, F_NEXT, true);
        }
        assert!(matches!(ring.pop(&mem, &mut Chain::default()), PackedPop::Broken));
        // A buffer id past the ring is broken (it would alias another buffer's bookkeeping).
        let mut ring2 = PackedRing::new(SIZE, DESC, DRIVER, DEVICE, 0).unwrap();
        let mem2 = memory();
        offer(&mem2, 0, 0x10000, 16, 9, 0, true);
        assert!(matches!(ring2.pop(&mem2, &mut Chain::default()), PackedPop::Broken));
        // A descriptor table outside guest memory is broken too.
        let mut far = PackedRing::new(SIZE, 1 << 40, DRIVER, DEVICE, 0).unwrap();
        assert!(matches!(far.pop(&mem, &mut Chain::default()), PackedPop::Broken));
        // Notification suppression is written where the driver reads it.
        ring.notifications_off(&mem);
        assert_eq!(load_u16(&mem, DEVICE + 2), Some(EVENT_DISABLE));
        assert!(ring.needs_notification(&mem));
        store_u16(&mem, DRIVER + 2, EVENT_DISABLE);
        assert!(!ring.needs_notification(&mem));
    }
}
