//! Differential checks of the hand-written ring walkers (`split.rs`, `packed.rs`): the same
//! guest memory is handed to Ferry's walker and to an oracle, and every pop and completion
//! must agree. Used by the randomized tests in `ring_oracle_tests.rs` and by the `split_ring`
//! and `packed_ring` fuzz targets (`ferry::fuzz_api`), so a disagreement either finds is a
//! panic with the case in its message.
//!
//! Split rings: the oracle is rust-vmm's `virtio-queue` (`Queue` and its `DescriptorChain`
//! iterator). Its iterator silently stops where Ferry marks a chain malformed, so "malformed"
//! is derived from what it yields: a chain is complete when its last descriptor has no NEXT
//! flag. Where the two differ by design the check allows exactly that difference:
//! - D1: Ferry resolves a whole indirect table up front (it must lie inside one memory region
//!   and hold at most 4096 entries), virtio-queue reads entries lazily and only fails on an
//!   entry it reaches. Such a chain must be malformed for Ferry; virtio-queue may accept it.
//! - D2: virtio-queue stops a chain whose total length overflows a u32; Ferry sums in u64
//!   and leaves the bound to the device. virtio-queue's descriptors must then be a prefix of
//!   Ferry's.
//! - D3: virtio-queue refuses to complete a head past the ring (`InvalidDescriptorIndex`);
//!   Ferry completes whatever head it popped (a malformed chain is failed back to the guest).
//!   Completions are compared for heads inside the ring only.
//! - D4: virtio-queue takes an avail ring at guest address 0 as "not configured".
//!
//! Packed rings: virtio-queue 0.18 has packed descriptor types but no packed queue, so the
//! oracle is [`PackedModel`] below, an independent reading of virtio 1.2 section 2.8: it
//! first collects a buffer's descriptors, then interprets them, where `packed.rs` interprets
//! as it walks.

use super::memory::{GuestMemory, RegionInfo};
use super::packed::{PackedPop, PackedRing};
use super::ring::Chain;
use super::split::{RingLayout, SplitPop, SplitRing};
use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend as _, GuestMemoryRegion as _};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
const F_AVAIL: u16 = 1 << 7;
const F_USED: u16 = 1 << 15;
/// Ferry's bound on one indirect table (split.rs `MAX_INDIRECT`).
const MAX_INDIRECT: u64 = 4096;

/// The test memory: two regions with a hole between them, (guest address, size).
pub const REGIONS: [(u64, u64); 2] = [(0, 0x10000), (0x20000, 0x4000)];

/// Guest memory laid out as [`REGIONS`], filled from `contents` (the first region first; the
/// rest zero). Backed by one sealed memfd, as QEMU shares guest RAM.
pub fn memory(contents: &[u8]) -> GuestMemory {
    let total: u64 = REGIONS.iter().map(|r| r.1).sum();
    // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(c"ferry-ring-oracle".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh fd that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(total).expect("size the memfd");
    let n = contents.len().min(total as usize);
    file.write_all_at(&contents[..n], 0).expect("fill the memfd");
    // SAFETY: fcntl on our own fd with an integer argument.
    let sealed = unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW) };
    assert_eq!(sealed, 0, "sealing the memfd: {}", std::io::Error::last_os_error());
    let mut offset = 0;
    let regions: Vec<_> = REGIONS
        .iter()
        .map(|&(gpa, size)| {
            let r = (RegionInfo { gpa, size, user_addr: gpa }, offset, file.try_clone().expect("dup memfd"));
            offset += size;
            r
        })
        .collect();
    GuestMemory::map(&regions).expect("map the test memory")
}

/// Every byte of `mem`'s regions, in address order (to compare two memories).
fn snapshot(mem: &GuestMemory) -> Vec<u8> {
    let mut out = Vec::new();
    for r in mem.mmap().iter() {
        let mut buf = vec![0u8; r.len() as usize];
        mem.mmap().read_slice(&mut buf, r.start_addr()).expect("read a whole region");
        out.extend_from_slice(&buf);
    }
    out
}

/// Whether `gpa..gpa+len` lies inside one region.
fn in_one_region(gpa: u64, len: u64) -> bool {
    REGIONS.iter().any(|&(start, size)| gpa >= start && gpa.checked_add(len).is_some_and(|end| end <= start + size))
}

/// What a differential run saw, so callers can prove their cases reached the deep paths.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Rings whose layout both sides refused.
    pub refused: usize,
    /// Chains both popped whole.
    pub chains: usize,
    /// Chains both found malformed.
    pub malformed: usize,
    /// Chains that went through an indirect table.
    pub indirect: usize,
    /// Rings both found broken.
    pub broken: usize,
    /// Completions compared.
    pub completed: usize,
    /// Cases that hit a documented difference (D1-D4, see the module doc).
    pub documented: usize,
}

/// One split ring to check: where it is and where both sides resume.
#[derive(Debug, Clone, Copy)]
pub struct SplitCase {
    /// The ring.
    pub layout: RingLayout,
    /// Next avail index.
    pub next_avail: u16,
    /// Next used index.
    pub next_used: u16,
}

/// One descriptor as virtio-queue yielded it: (addr, len, flags).
type Desc = (u64, u32, u16);

/// The first indirect descriptor Ferry would meet in the main table starting at `head`, as
/// (table address, table length); None if the chain has none (or ends first).
fn first_indirect(mem: &GuestMemory, desc: u64, size: u16, head: u16) -> Option<(u64, u32)> {
    let mut index = head;
    for _ in 0..size {
        if index >= size {
            return None;
        }
        let raw: [u8; 16] = mem.mmap().read_obj(GuestAddress(desc + 16 * index as u64)).ok()?;
        let flags = u16::from_le_bytes([raw[12], raw[13]]);
        if flags & F_INDIRECT != 0 {
            return Some((
                u64::from_le_bytes(raw[0..8].try_into().unwrap()),
                u32::from_le_bytes(raw[8..12].try_into().unwrap()),
            ));
        }
        if flags & F_NEXT == 0 {
            return None;
        }
        index = u16::from_le_bytes([raw[14], raw[15]]);
    }
    None
}

/// Runs `case` on Ferry's `SplitRing` and on virtio-queue over two copies of the memory
/// `contents`: pops until the ring is empty or broken, then completes every popped head with
/// the lengths of `completions` (cycled) and compares the memories. Panics on a disagreement.
pub fn check_split(contents: &[u8], case: SplitCase, completions: &[u32], stats: &mut Stats) {
    let (mem_f, mem_o) = (memory(contents), memory(contents));
    let RingLayout { size, desc, avail, used } = case.layout;
    let ferry = SplitRing::new(&mem_f, case.layout, case.next_avail, case.next_used, false);
    let mut q = Queue::new(u16::MAX / 2 + 1).expect("max queue size");
    let configured = q.try_set_size(size).is_ok()
        && q.try_set_desc_table_address(GuestAddress(desc)).is_ok()
        && q.try_set_avail_ring_address(GuestAddress(avail)).is_ok()
        && q.try_set_used_ring_address(GuestAddress(used)).is_ok();
    q.set_ready(true);
    q.set_next_avail(case.next_avail);
    q.set_next_used(case.next_used);
    let valid = configured && q.is_valid(mem_o.mmap());
    assert_eq!(ferry.is_ok(), valid, "{case:?}: Ferry {:?} vs virtio-queue valid={valid}", ferry.as_ref().err());
    let Ok(mut ferry) = ferry else {
        stats.refused += 1;
        return;
    };
    if avail == 0 {
        stats.documented += 1; // D4
        return;
    }
    let mut popped = Vec::new();
    for _ in 0..=size as usize + 1 {
        let mut chain = Chain::default();
        let f = ferry.pop(&mem_f, &mut chain);
        let o = match q.iter(mem_o.mmap()) {
            Err(virtio_queue::Error::InvalidAvailRingIndex) => None,
            Err(e) => panic!("{case:?}: virtio-queue failed unexpectedly: {e}"),
            Ok(mut it) => Some(
                it.next()
                    .map(|dc| (dc.head_index(), dc.map(|d| (d.addr().0, d.len(), d.flags())).collect::<Vec<Desc>>())),
            ),
        };
        match (f, o) {
            (SplitPop::Broken, None) => {
                stats.broken += 1;
                break;
            }
            (SplitPop::Empty, Some(None)) => break,
            (SplitPop::Chain, Some(Some((head, descs)))) => {
                assert_eq!(chain.head, head, "{case:?}: heads");
                compare_split_chain(&mem_o, case, &chain, &descs, stats);
                popped.push(head);
            }
            (f, o) => panic!("{case:?}: Ferry popped {f:?}, virtio-queue {:?}", o.map(|c| c.map(|c| c.0))),
        }
    }
    assert_eq!(ferry.next_avail(), q.next_avail(), "{case:?}: next avail index");
    for (i, &head) in popped.iter().enumerate() {
        if head >= size {
            stats.documented += 1; // D3
            continue;
        }
        let len = completions.get(i % completions.len().max(1)).copied().unwrap_or(0);
        ferry.add_used(head, len);
        q.add_used(mem_o.mmap(), head, len).expect("virtio-queue completes a head inside the ring");
        stats.completed += 1;
    }
    assert_eq!(ferry.next_used(), q.next_used(), "{case:?}: next used index");
    assert!(snapshot(&mem_f) == snapshot(&mem_o), "{case:?}: guest memory differs after the completions");
}

fn compare_split_chain(mem: &GuestMemory, case: SplitCase, chain: &Chain, descs: &[Desc], stats: &mut Stats) {
    let why = format!("{case:?}, head {}: virtio-queue {descs:x?}", chain.head);
    let complete = descs.last().is_some_and(|d| d.2 & F_NEXT == 0);
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    let mut out_of_order = false;
    for &(addr, len, flags) in descs {
        if flags & F_WRITE != 0 {
            writable.push((addr, len));
        } else if writable.is_empty() {
            readable.push((addr, len));
        } else {
            out_of_order = true;
        }
    }
    let indirect = first_indirect(mem, case.layout.desc, case.layout.size, chain.head);
    if indirect.is_some() {
        stats.indirect += 1;
    }
    // D1: a table Ferry cannot resolve whole makes the chain malformed, whatever the oracle.
    if let Some((addr, len)) = indirect {
        let entries = len as u64 / 16;
        if len % 16 == 0 && (entries > MAX_INDIRECT || !in_one_region(addr, len as u64)) && complete {
            assert!(chain.malformed, "{why}: an unresolvable indirect table (D1) must be malformed for Ferry");
            stats.documented += 1;
            return;
        }
    }
    // D2: virtio-queue stops where the chain's total length overflows a u32.
    let total: u64 = chain.readable_len() + chain.writable_len();
    if !complete && !chain.malformed && total > u32::MAX as u64 {
        let ours: Vec<(u64, u32)> = chain.readable.iter().chain(&chain.writable).copied().collect();
        let theirs: Vec<(u64, u32)> = descs.iter().map(|d| (d.0, d.1)).collect();
        assert!(ours.starts_with(&theirs), "{why}: D2, virtio-queue's descriptors are a prefix of Ferry's {ours:x?}");
        stats.documented += 1;
        return;
    }
    let malformed = !complete || out_of_order;
    assert_eq!(chain.malformed, malformed, "{why}: malformed (Ferry {:x?} / {:x?})", chain.readable, chain.writable);
    if malformed {
        stats.malformed += 1;
        return;
    }
    assert_eq!(chain.readable, readable, "{why}: readable segments");
    assert_eq!(chain.writable, writable, "{why}: writable segments");
    stats.chains += 1;
}

/// One packed ring to check.
#[derive(Debug, Clone, Copy)]
pub struct PackedCase {
    /// Ring size.
    pub size: u16,
    /// Descriptor ring.
    pub desc: u64,
    /// Driver event suppression area.
    pub driver: u64,
    /// Device event suppression area.
    pub device: u64,
    /// Where to resume, in vhost-user's packed base format.
    pub base: u32,
}

/// What the model found at the ring's avail position.
#[derive(Debug, PartialEq, Eq)]
enum ModelPop {
    Empty,
    Broken,
    Buffer { id: u16, readable: Vec<(u64, u32)>, writable: Vec<(u64, u32)>, malformed: bool },
}

/// An independent device-side model of a packed ring (virtio 1.2 2.8), with Ferry's policy
/// for what the spec leaves to the device: a buffer as long as the ring or a buffer id past
/// the ring breaks the ring; an indirect descriptor that is not its buffer's only descriptor
/// (2.8.19: "MUST NOT write direct descriptors with DESC_F_INDIRECT set in a scatter-gather
/// list linked by NEXT"), an indirect table of zero, ragged or more than `size` entries, an
/// unreadable entry or a readable segment after a writable one make the buffer malformed.
/// Flags other than WRITE inside an indirect table are ignored (the spec forbids drivers to
/// set them and says nothing of devices).
pub struct PackedModel {
    size: u16,
    desc: u64,
    avail: (u16, bool),
    used: (u16, bool),
    /// Descriptors each outstanding buffer took, by id.
    taken: std::collections::HashMap<u16, u16>,
}

impl PackedModel {
    /// The model of `case`'s ring.
    pub fn new(case: &PackedCase) -> PackedModel {
        let position = |bits: u32| ((bits & 0x7fff) as u16 % case.size, bits & 0x8000 != 0);
        let (avail, used) =
            if case.base == 0 { ((0, true), (0, true)) } else { (position(case.base), position(case.base >> 16)) };
        PackedModel { size: case.size, desc: case.desc, avail, used, taken: Default::default() }
    }

    fn read(mem: &GuestMemory, gpa: u64) -> Option<(u64, u32, u16, u16)> {
        let raw: [u8; 16] = mem.mmap().read_obj(GuestAddress(gpa)).ok()?;
        let le16 = |i: usize| u16::from_le_bytes([raw[i], raw[i + 1]]);
        Some((
            u64::from_le_bytes(raw[0..8].try_into().unwrap()),
            u32::from_le_bytes(raw[8..12].try_into().unwrap()),
            le16(12),
            le16(14),
        ))
    }

    fn pop(&mut self, mem: &GuestMemory) -> ModelPop {
        let Some(head) = Self::read(mem, self.desc + 16 * self.avail.0 as u64) else { return ModelPop::Broken };
        let wrap = self.avail.1;
        if (head.3 & F_AVAIL != 0) != wrap || (head.3 & F_USED != 0) == wrap {
            return ModelPop::Empty;
        }
        // Collect the buffer's descriptors first.
        let mut list = Vec::new();
        let mut at = self.avail;
        loop {
            if list.len() == self.size as usize {
                return ModelPop::Broken;
            }
            let Some(d) = Self::read(mem, self.desc + 16 * at.0 as u64) else { return ModelPop::Broken };
            list.push(d);
            at = if at.0 + 1 == self.size { (0, !at.1) } else { (at.0 + 1, at.1) };
            if d.3 & F_NEXT == 0 {
                break;
            }
        }
        let id = list.last().expect("one descriptor at least").2;
        if id >= self.size {
            return ModelPop::Broken;
        }
        // Then interpret them.
        let mut segments: Vec<(u64, u32, bool)> = Vec::new();
        let mut malformed = false;
        for d in &list {
            if d.3 & F_INDIRECT == 0 {
                segments.push((d.0, d.1, d.3 & F_WRITE != 0));
                continue;
            }
            let entries = d.1 / 16;
            if list.len() != 1 || d.1 == 0 || d.1 % 16 != 0 || entries > self.size as u32 {
                malformed = true;
                continue;
            }
            for i in 0..entries as u64 {
                match Self::read(mem, d.0.wrapping_add(16 * i)).filter(|_| d.0.checked_add(16 * i + 16).is_some()) {
                    Some(e) => segments.push((e.0, e.1, e.3 & F_WRITE != 0)),
                    None => {
                        malformed = true;
                        break;
                    }
                }
            }
        }
        let first_write = segments.iter().position(|s| s.2).unwrap_or(segments.len());
        if segments[first_write..].iter().any(|s| !s.2) || segments.is_empty() {
            malformed = true;
        }
        let readable = segments[..first_write].iter().map(|s| (s.0, s.1)).collect();
        let writable = segments[first_write..].iter().filter(|s| s.2).map(|s| (s.0, s.1)).collect();
        self.avail = at;
        self.taken.insert(id, list.len() as u16);
        ModelPop::Buffer { id, readable, writable, malformed }
    }

    fn complete(&mut self, mem: &GuestMemory, id: u16, len: u32) -> bool {
        let at = GuestAddress(self.desc + 16 * self.used.0 as u64);
        let flags: u16 = if self.used.1 { F_AVAIL | F_USED } else { 0 };
        let mut entry = [0u8; 8];
        entry[0..4].copy_from_slice(&len.to_le_bytes());
        entry[4..6].copy_from_slice(&id.to_le_bytes());
        entry[6..8].copy_from_slice(&flags.to_le_bytes());
        // The whole descriptor must be guest memory, not just the half written.
        if Self::read(mem, at.0).is_none() || mem.mmap().write_slice(&entry, GuestAddress(at.0 + 8)).is_err() {
            return false;
        }
        // An id completed twice (a driver reusing an id while it is outstanding) advances by
        // the count of the id's latest buffer again: the position is the driver's problem then.
        let n = self.taken.get(&id).copied().unwrap_or(1).max(1);
        let next = self.used.0 as u32 + n as u32;
        self.used =
            ((next % self.size as u32) as u16, if next >= self.size as u32 { !self.used.1 } else { self.used.1 });
        true
    }

    fn base(&self) -> u32 {
        self.avail.0 as u32 | (self.avail.1 as u32) << 15 | (self.used.0 as u32) << 16 | (self.used.1 as u32) << 31
    }
}

/// Runs `case` on Ferry's `PackedRing` and on [`PackedModel`] over two copies of `contents`:
/// pops until empty or broken, completes the popped buffers in the order `order` picks
/// (each byte chooses among the outstanding ones) with lengths from `completions`, and
/// compares positions and memories. Panics on a disagreement.
pub fn check_packed(contents: &[u8], case: PackedCase, order: &[u8], completions: &[u32], stats: &mut Stats) {
    let (mem_f, mem_m) = (memory(contents), memory(contents));
    let Ok(mut ferry) = PackedRing::new(case.size, case.desc, case.driver, case.device, case.base) else {
        assert!(case.size == 0 || case.size > 1 << 15, "{case:?}: Ferry refused a valid size");
        stats.refused += 1;
        return;
    };
    let mut model = PackedModel::new(&case);
    assert_eq!(ferry.base(), model.base(), "{case:?}: positions after setup");
    let mut outstanding = Vec::new();
    for _ in 0..=case.size as usize {
        let mut chain = Chain::default();
        let f = ferry.pop(&mem_f, &mut chain);
        let m = model.pop(&mem_m);
        let why = format!("{case:?}: model {m:x?}");
        match (f, m) {
            (PackedPop::Empty, ModelPop::Empty) => break,
            (PackedPop::Broken, ModelPop::Broken) => {
                stats.broken += 1;
                break;
            }
            (PackedPop::Chain, ModelPop::Buffer { id, readable, writable, malformed }) => {
                assert_eq!(chain.head, id, "{why}: buffer id");
                assert_eq!(
                    chain.malformed, malformed,
                    "{why}: malformed (Ferry {:x?} / {:x?})",
                    chain.readable, chain.writable
                );
                if malformed {
                    stats.malformed += 1;
                } else {
                    assert_eq!((&chain.readable, &chain.writable), (&readable, &writable), "{why}: segments");
                    stats.chains += 1;
                }
                outstanding.push(id);
            }
            (f, _) => panic!(
                "{why}: Ferry popped {}",
                match f {
                    PackedPop::Chain => format!("buffer {}", chain.head),
                    PackedPop::Empty => "nothing".into(),
                    PackedPop::Broken => "a broken ring".into(),
                }
            ),
        }
        assert_eq!(ferry.base(), model.base(), "{case:?}: positions after a pop");
    }
    let mut i = 0;
    while !outstanding.is_empty() {
        let pick = order.get(i).copied().unwrap_or(0) as usize % outstanding.len();
        let id = outstanding.remove(pick);
        let len = completions.get(i % completions.len().max(1)).copied().unwrap_or(0);
        let (f, m) = (ferry.complete(&mem_f, id, len), model.complete(&mem_m, id, len));
        assert_eq!(f, m, "{case:?}: completing {id}");
        assert_eq!(ferry.base(), model.base(), "{case:?}: positions after completing {id}");
        stats.completed += 1;
        i += 1;
    }
    assert!(snapshot(&mem_f) == snapshot(&mem_m), "{case:?}: guest memory differs after the completions");
}
