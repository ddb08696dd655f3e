//! The device side of a split virtqueue (virtio 1.2, 2.7) on host pointers.
//!
//! Hand-written rather than virtio-queue's `Queue`: there every ring access goes through
//! vm-memory's generic `GuestMemory` (a region lookup and bounds checks per field read), which
//! perf showed as about 15% of a request's cost on the reactor. A running queue's rings do not
//! move, so their host addresses are resolved once when the queue starts, each ring checked to
//! lie inside one mapped region and to be aligned as the spec requires; the mapping is kept
//! alive by the queue (`Vring` holds the `Arc<GuestMemory>` next to this). Descriptors are
//! copied out of guest memory before they are looked at, and every index the guest gives is
//! bounded, so a driver changing the rings under us can confuse only its own queue.

use super::memory::{read_shared, GuestMemory};
use super::ring::Chain;
use std::sync::atomic::{fence, Ordering};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
/// used->flags: the device does not want kicks (without EVENT_IDX).
const USED_F_NO_NOTIFY: u16 = 1;
/// avail->flags: the driver wants no interrupts (without EVENT_IDX).
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Most descriptors in one indirect table (the spec bounds a chain by the queue size; Linux
/// never goes near this). Bounds the work a hostile table can cause.
const MAX_INDIRECT: u32 = 4096;
/// Most avail entries copied out of the ring at once (see [`SplitRing::pop`]).
const HEAD_BATCH: usize = 32;

use crate::framework::prefetch::line as prefetch;

/// What looking at the avail ring found.
#[derive(Debug, PartialEq, Eq)]
pub enum SplitPop {
    /// A chain, flattened into the caller's `Chain`.
    Chain,
    /// Nothing available.
    Empty,
    /// The avail index moved by more than the queue size: the driver is broken.
    Broken,
}

/// Where a ring's three parts are, in guest-physical addresses, and its size.
#[derive(Debug, Clone, Copy)]
pub struct RingLayout {
    /// Entries (a power of two).
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Avail (driver) ring.
    pub avail: u64,
    /// Used (device) ring.
    pub used: u64,
}

/// One split ring's device-side state.
pub struct SplitRing {
    size: u16,
    desc: *const u8,
    avail: *const u8,
    used: *mut u8,
    next_avail: u16,
    /// The driver's avail index as last read: entries up to it were seen published (after an
    /// acquire fence), so a batch of pops reads the shared index once, not once per entry.
    avail_seen: u16,
    /// Heads copied out of the avail ring, for avail indexes `heads_from..heads_from +
    /// heads_len`: the driver keeps writing that line (its index and the next entries), so
    /// reading one entry per pop would miss on it again and again; a batch reads it once.
    /// Published entries do not change until they are used, so the copy stays true.
    heads: [u16; HEAD_BATCH],
    heads_from: u16,
    heads_len: u16,
    /// `size - 1`: indexes wrap with a mask, not a division (`size` is a power of two).
    mask: u16,
    next_used: u16,
    /// The used index the driver can see (written to the ring); entries between it and
    /// `next_used` are written but not yet published.
    published_used: u16,
    event_idx: bool,
    /// The used index when we last decided about an interrupt (event-index suppression).
    signalled_used: Option<u16>,
    /// The last chain popped: its head descriptor and the guest address of its first
    /// segment, the guesses [`SplitRing::predicted_lines`] makes for the next one.
    last_head: u16,
    last_first: Option<(u64, u32)>,
}

/// Resolves `len` bytes at `gpa` aligned to `align` to a host pointer.
fn resolve(mem: &GuestMemory, gpa: u64, len: u64, align: u64, what: &str) -> Result<*mut u8, String> {
    if !gpa.is_multiple_of(align) {
        return Err(format!("{what} at {gpa:#x} is not {align}-byte aligned"));
    }
    mem.host_range(gpa, len)
        .map_err(|_| format!("{what} at {gpa:#x} (+{len}) is not inside one region of guest memory"))
}

impl SplitRing {
    /// The ring laid out as `at`, resuming at `next_avail` and `next_used`. Fails if a part is
    /// outside guest memory or misaligned.
    pub fn new(
        mem: &GuestMemory,
        at: RingLayout,
        next_avail: u16,
        next_used: u16,
        event_idx: bool,
    ) -> Result<SplitRing, String> {
        let RingLayout { size, desc, avail, used } = at;
        if size == 0 || !size.is_power_of_two() {
            return Err(format!("queue size {size} is not a power of two"));
        }
        let n = size as u64;
        Ok(SplitRing {
            size,
            desc: resolve(mem, desc, 16 * n, 16, "descriptor table")?,
            avail: resolve(mem, avail, 6 + 2 * n, 2, "avail ring")?,
            used: resolve(mem, used, 6 + 8 * n, 4, "used ring")?,
            next_avail,
            avail_seen: next_avail,
            heads: [0; HEAD_BATCH],
            heads_from: next_avail,
            heads_len: 0,
            mask: size - 1,
            next_used,
            published_used: next_used,
            event_idx,
            signalled_used: None,
            last_head: 0,
            last_first: None,
        })
    }

    /// Ring size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The next avail index we will read (vhost-user's vring base).
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    /// The next used index we will write.
    pub fn next_used(&self) -> u16 {
        self.next_used
    }

    fn avail_u16(&self, offset: usize) -> u16 {
        // SAFETY: every offset used lies inside the avail ring resolved in `new` (6 + 2*size
        // bytes, 2-aligned); the guest may write it concurrently, hence the volatile read.
        u16::from_le(unsafe { self.avail.add(offset).cast::<u16>().read_volatile() })
    }

    fn avail_idx(&self) -> u16 {
        self.avail_u16(2)
    }

    fn set_used_u16(&self, offset: usize, v: u16) {
        // SAFETY: every offset used lies inside the used ring resolved in `new` (6 + 8*size
        // bytes, 4-aligned); it is device-written memory the guest only reads.
        unsafe { self.used.add(offset).cast::<u16>().write_volatile(v.to_le()) };
    }

    /// Pops the next available chain into `chain` (cleared by the caller).
    pub fn pop(&mut self, mem: &GuestMemory, chain: &mut Chain) -> SplitPop {
        let mut at = self.next_avail.wrapping_sub(self.heads_from);
        if at >= self.heads_len {
            match self.published(mem) {
                Some(0) => return SplitPop::Empty,
                Some(_) => {}
                None => return SplitPop::Broken,
            }
            self.copy_heads();
            at = 0;
        }
        let head = self.heads[at as usize];
        self.next_avail = self.next_avail.wrapping_add(1);
        self.walk(mem, head, chain);
        self.last_head = head;
        self.last_first = chain.readable.first().or(chain.writable.first()).copied();
        self.prefetch_ahead(mem);
        SplitPop::Chain
    }

    /// How many chains the driver has published and we have not popped, reading its avail
    /// index only when every chain seen published before was popped (the driver keeps
    /// writing that line: each read is a cache miss). `None` if the index moved by more than
    /// the ring's size (a broken driver).
    pub fn published(&mut self, mem: &GuestMemory) -> Option<u16> {
        if self.next_avail == self.avail_seen {
            let idx = self.avail_idx();
            let pending = idx.wrapping_sub(self.next_avail);
            if pending == 0 {
                return Some(0);
            }
            if pending > self.size {
                return None;
            }
            // Read the ring entries and the descriptors only after seeing the index.
            fence(Ordering::Acquire);
            self.avail_seen = idx;
            if pending == 1 {
                // One new request after the ring ran dry: the low queue depth case.
                for line in self.predicted_lines(mem).into_iter().flatten() {
                    prefetch(line);
                }
            }
        }
        Some(self.avail_seen.wrapping_sub(self.next_avail))
    }

    /// Copies the published heads from `next_avail` on (at most [`HEAD_BATCH`]) out of the
    /// avail ring.
    fn copy_heads(&mut self) {
        let n = (self.avail_seen.wrapping_sub(self.next_avail) as usize).min(HEAD_BATCH);
        for k in 0..n {
            let slot = self.next_avail.wrapping_add(k as u16) & self.mask;
            self.heads[k] = self.avail_u16(4 + 2 * slot as usize);
        }
        self.heads_from = self.next_avail;
        self.heads_len = n as u16;
    }

    /// The lines the next chain most likely reads first, for a pop that finds one new entry
    /// after the ring ran dry: the descriptor of the last chain's head and both ends of that
    /// chain's first buffer (the request header; virtio-scsi's 51 bytes may straddle two
    /// lines). Drivers keep free descriptors as a stack (Linux's virtio_ring, SPDK's virtio)
    /// and reuse request memory the same way, so at queue depth 1 the next request is built
    /// in the descriptors and header the last one used. The driver has just written them on
    /// its core, so each is a cache miss; without the guess the avail entry, the descriptor
    /// and the header are three misses one after the other (each address is read from the
    /// one before), with it they are in flight together. A wrong guess costs three prefetches.
    /// Measured with `scripts/bench/vhost-ab.sh`: blk at QD1 +7-8% IOPS (median of 30-60
    /// paired runs), scsi within the noise, QD128 unchanged (this never runs there in steady
    /// state).
    fn predicted_lines(&self, mem: &GuestMemory) -> [Option<*const u8>; 3] {
        // SAFETY: masked below `size`: inside the descriptor table resolved in `new`.
        let desc = unsafe { self.desc.add(16 * (self.last_head & self.mask) as usize) };
        let header = self.last_first.and_then(|(addr, len)| {
            let len = len.clamp(1, 64) as u64;
            mem.host_range(addr, len).ok().map(|p| (p.cast_const(), len as usize))
        });
        [Some(desc), header.map(|(p, _)| p), header.map(|(p, len)| p.wrapping_add(len - 1))]
    }

    /// Starts loading what later pops will read, while this chain is handled: the descriptor
    /// of the chain three ahead, and the first buffer (the request header) and the second
    /// descriptor of the chain two ahead, whose descriptor the pop before fetched. The driver
    /// wrote all of these on another core, so each first touch is a cache miss (100 ns and
    /// more here, the largest single cost of a request at high queue depth); issued two
    /// requests ahead they complete while the work in between runs. Only hints: the
    /// descriptor read here is a snapshot used for nothing but an address to prefetch, and a
    /// prefetch never faults.
    fn prefetch_ahead(&self, mem: &GuestMemory) {
        // Only heads already copied: reading the ring for more would touch its line again.
        let at = self.next_avail.wrapping_sub(self.heads_from);
        let ahead = self.heads_len - at;
        let entry = |k: u16| self.heads[(at + k) as usize] & self.mask;
        if ahead >= 3 {
            // SAFETY: an entry is `< size`: the address lies inside the descriptor table.
            prefetch(unsafe { self.desc.add(16 * entry(2) as usize) });
        }
        if ahead < 2 {
            return;
        }
        let mut raw = [0u8; 16];
        // SAFETY: an entry is `< size`, inside the descriptor table resolved in `new`; a
        // snapshot.
        unsafe { read_shared(self.desc.add(16 * entry(1) as usize), &mut raw) };
        let addr = u64::from_le_bytes(raw[0..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes")).clamp(1, 64) as u64;
        let flags = u16::from_le_bytes(raw[12..14].try_into().expect("2 bytes"));
        let following = u16::from_le_bytes(raw[14..16].try_into().expect("2 bytes")) & self.mask;
        // Both lines of a header that straddles two (virtio-scsi's is 51 bytes).
        if let Ok(p) = mem.host_range(addr, len) {
            prefetch(p);
            prefetch(p.wrapping_add(len as usize - 1));
        }
        if flags & F_NEXT != 0 && flags & F_INDIRECT == 0 {
            // SAFETY: `following < size`: inside the descriptor table.
            prefetch(unsafe { self.desc.add(16 * following as usize) });
        }
    }

    /// Flattens the chain starting at descriptor `head` into `chain`: readable segments, then
    /// writable ones. Loops, indices past the table, nested or oversized indirect tables and a
    /// readable segment after a writable one mark the chain malformed.
    pub fn walk(&self, mem: &GuestMemory, head: u16, chain: &mut Chain) {
        chain.head = head;
        let mut table = self.desc;
        let mut table_len = self.size as u32;
        let mut index = head as u32;
        // At most one table's worth of descriptors: a longer walk is a loop.
        let mut budget = table_len;
        let mut indirect = false;
        loop {
            if index >= table_len || budget == 0 {
                chain.malformed = true;
                return;
            }
            budget -= 1;
            let mut raw = [0u8; 16];
            // SAFETY: `index < table_len` and `table` covers `16 * table_len` bytes of guest
            // memory (the descriptor table resolved in `new`, or an indirect table resolved
            // below); we copy a snapshot and never act on the live bytes.
            unsafe { read_shared(table.add(16 * index as usize), &mut raw) };
            let addr = u64::from_le_bytes(raw[0..8].try_into().expect("8 bytes"));
            let len = u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes"));
            let flags = u16::from_le_bytes(raw[12..14].try_into().expect("2 bytes"));
            let next = u16::from_le_bytes(raw[14..16].try_into().expect("2 bytes"));
            if flags & F_INDIRECT != 0 {
                let entries = len / 16;
                if indirect || len == 0 || len % 16 != 0 || entries > MAX_INDIRECT {
                    chain.malformed = true;
                    return;
                }
                let Ok(p) = mem.host_range(addr, len as u64) else {
                    chain.malformed = true;
                    return;
                };
                (table, table_len, index, budget, indirect) = (p, entries, 0, entries, true);
                continue;
            }
            chain.push_segment(addr, len, flags & F_WRITE != 0);
            if flags & F_NEXT == 0 {
                if chain.readable.is_empty() && chain.writable.is_empty() {
                    chain.malformed = true;
                }
                return;
            }
            index = next as u32;
        }
    }

    /// Returns chain `head` with `len` bytes written, published at once.
    pub fn add_used(&mut self, head: u16, len: u32) {
        self.add_used_entry(head, len);
        self.publish_used();
    }

    /// Writes chain `head`'s used entry without publishing it: the driver sees it at the
    /// next [`Self::publish_used`], with every entry written before.
    pub fn add_used_entry(&mut self, head: u16, len: u32) {
        let slot = 4 + 8 * (self.next_used & self.mask) as usize;
        let mut entry = [0u8; 8];
        entry[0..4].copy_from_slice(&(head as u32).to_le_bytes());
        entry[4..8].copy_from_slice(&len.to_le_bytes());
        // SAFETY: `slot + 8 <= 4 + 8*size`, inside the used ring resolved in `new`; `entry` is
        // ours. A plain copy, not `write_shared`'s volatile one: the driver reads no entry
        // before the used index that publishes it, written after a release fence
        // (`publish_used`), so no width needs to be atomic. The constant 8 bytes inline into
        // one store; through vm-memory they were a call of about 30 instructions per request.
        unsafe { std::ptr::copy_nonoverlapping(entry.as_ptr(), self.used.add(slot), entry.len()) };
        self.next_used = self.next_used.wrapping_add(1);
    }

    /// Chains popped and not yet returned to the used ring.
    pub fn in_flight(&self) -> u16 {
        self.next_avail.wrapping_sub(self.next_used)
    }

    /// Used entries written and not yet published.
    pub fn unpublished(&self) -> u16 {
        self.next_used.wrapping_sub(self.published_used)
    }

    /// Publishes the used entries written so far (the used index), if any is new.
    pub fn publish_used(&mut self) {
        if self.published_used == self.next_used {
            return;
        }
        // The entries must be visible before the index that publishes them.
        fence(Ordering::Release);
        self.set_used_u16(2, self.next_used);
        self.published_used = self.next_used;
    }

    /// Whether the driver wants an interrupt for what was used since the last decision.
    pub fn needs_notification(&mut self) -> bool {
        // Our used index must be visible before we read the driver's wishes.
        fence(Ordering::SeqCst);
        if !self.event_idx {
            return self.avail_u16(0) & AVAIL_F_NO_INTERRUPT == 0;
        }
        let used_event = self.avail_u16(4 + 2 * self.size as usize);
        let new = self.next_used;
        let old = self.signalled_used.replace(new);
        match old {
            // virtio 1.2 2.7.10: interrupt if used_event lies in [old, new).
            Some(old) => new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(old),
            None => true,
        }
    }

    /// Asks the driver not to kick: without EVENT_IDX a flag; with it, the avail event is
    /// simply left behind, so the driver's next index never crosses it.
    pub fn notifications_off(&mut self) {
        if !self.event_idx {
            self.set_used_u16(0, USED_F_NO_NOTIFY);
        }
    }

    /// Asks the driver to kick again; true if requests arrived meanwhile (so the caller polls
    /// again instead of sleeping on a kick that will not come).
    pub fn notifications_on(&mut self) -> bool {
        if self.event_idx {
            self.set_used_u16(4 + 8 * self.size as usize, self.next_avail);
        } else {
            self.set_used_u16(0, 0);
        }
        // Publish our wish before looking at the index again.
        fence(Ordering::SeqCst);
        self.avail_idx() != self.next_avail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;

    fn write(mem: &GuestMemory, gpa: u64, bytes: &[u8]) {
        let p = mem.host_range(gpa, bytes.len() as u64).unwrap();
        // SAFETY: host_range checked the range lies in the test's own mapping.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) };
    }

    fn read16(mem: &GuestMemory, gpa: u64) -> u16 {
        let p = mem.host_range(gpa, 2).unwrap();
        // SAFETY: as in write.
        u16::from_le(unsafe { p.cast::<u16>().read_unaligned() })
    }

    fn desc(mem: &GuestMemory, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = addr.to_le_bytes().to_vec();
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&flags.to_le_bytes());
        d.extend_from_slice(&next.to_le_bytes());
        write(mem, table + 16 * i as u64, &d);
    }

    #[test]
    fn a_drained_ring_guesses_the_next_request_reuses_the_last_ones_descriptor_and_header() {
        let mem = GuestMemory::for_tests(1 << 20);
        let mut r =
            SplitRing::new(&mem, RingLayout { size: 8, desc: DESC, avail: AVAIL, used: USED }, 0, 0, false).unwrap();
        let host = |gpa: u64| mem.host_range(gpa, 1).unwrap().cast_const();
        let mut c = Chain::default();
        assert_eq!(r.pop(&mem, &mut c), SplitPop::Empty);
        // A request in descriptors 5 -> 6: a 51-byte header straddling two lines, a status.
        desc(&mem, DESC, 5, 0x10030, 51, F_NEXT, 6);
        desc(&mem, DESC, 6, 0x11000, 1, F_WRITE, 0);
        write(&mem, AVAIL + 4, &5u16.to_le_bytes());
        write(&mem, AVAIL + 2, &1u16.to_le_bytes());
        assert_eq!(r.pop(&mem, &mut c), SplitPop::Chain);
        let [d, first, last] = r.predicted_lines(&mem);
        assert_eq!(d, Some(host(DESC + 16 * 5)), "the last head's descriptor");
        assert_eq!(first, Some(host(0x10030)), "the header's first byte");
        assert_eq!(last, Some(host(0x10030 + 50)), "the header's last byte, on the next line");
        // A header outside guest memory is no guess (and no fault).
        c = Chain::default();
        desc(&mem, DESC, 2, (1 << 20) + 0x1000, 16, F_NEXT, 6);
        write(&mem, AVAIL + 6, &2u16.to_le_bytes());
        write(&mem, AVAIL + 2, &2u16.to_le_bytes());
        assert_eq!(r.pop(&mem, &mut c), SplitPop::Chain);
        assert_eq!(r.predicted_lines(&mem), [Some(host(DESC + 16 * 2)), None, None]);
    }

    #[test]
    fn heads_are_copied_out_of_the_avail_ring_a_batch_at_a_time_across_the_index_wrap() {
        let mem = GuestMemory::for_tests(1 << 20);
        let start = u16::MAX - 4;
        let mut r =
            SplitRing::new(&mem, RingLayout { size: 64, desc: DESC, avail: AVAIL, used: USED }, start, start, false)
                .unwrap();
        let slot = |k: u16| AVAIL + 4 + 2 * (start.wrapping_add(k) & 63) as u64;
        for d in 0..64 {
            desc(&mem, DESC, d, 0x10000 + 64 * d as u64, 16, 0, 0);
        }
        for k in 0..40 {
            write(&mem, slot(k), &k.to_le_bytes());
        }
        write(&mem, AVAIL + 2, &start.wrapping_add(40).to_le_bytes());
        let mut c = Chain::default();
        assert_eq!(r.pop(&mem, &mut c), SplitPop::Chain);
        assert_eq!(c.head, 0);
        // A driver rewriting published entries (which the spec forbids) shows which entries
        // were already copied: the first batch of HEAD_BATCH, not the eight after it.
        for k in 1..40 {
            write(&mem, slot(k), &(k + 20).to_le_bytes());
        }
        for k in 1..40u16 {
            c.clear();
            assert_eq!(r.pop(&mem, &mut c), SplitPop::Chain);
            let copied = (k as usize) < HEAD_BATCH;
            assert_eq!(c.head, if copied { k } else { k + 20 }, "entry {k}");
        }
        assert_eq!(r.pop(&mem, &mut c), SplitPop::Empty);
        assert_eq!(r.next_avail(), start.wrapping_add(40));
    }

    #[test]
    fn chains_indices_and_notifications() {
        let mem = GuestMemory::for_tests(1 << 20);
        assert!(
            SplitRing::new(&mem, RingLayout { size: 6, desc: DESC, avail: AVAIL, used: USED }, 0, 0, false).is_err(),
            "size not a power of two"
        );
        assert!(
            SplitRing::new(&mem, RingLayout { size: 8, desc: DESC + 8, avail: AVAIL, used: USED }, 0, 0, false)
                .is_err(),
            "misaligned table"
        );
        assert!(
            SplitRing::new(&mem, RingLayout { size: 8, desc: DESC, avail: AVAIL, used: (1 << 20) - 8 }, 0, 0, false)
                .is_err(),
            "used ring past memory"
        );
        let mut r =
            SplitRing::new(&mem, RingLayout { size: 8, desc: DESC, avail: AVAIL, used: USED }, 0, 0, true).unwrap();
        let mut c = Chain::default();
        assert_eq!(r.pop(&mem, &mut c), SplitPop::Empty);
        // Head 0: readable, writable; head 3: indirect table with two entries.
        desc(&mem, DESC, 0, 0x10000, 16, F_NEXT, 1);
        desc(&mem, DESC, 1, 0x11000, 1, F_WRITE, 0);
        desc(&mem, DESC, 3, 0x20000, 32, F_INDIRECT, 0);
        desc(&mem, 0x20000, 0, 0x12000, 8, F_NEXT, 1);
        desc(&mem, 0x20000, 1, 0x13000, 4, F_WRITE, 0);
        write(&mem, AVAIL + 4, &0u16.to_le_bytes());
        write(&mem, AVAIL + 6, &3u16.to_le_bytes());
        write(&mem, AVAIL + 2, &2u16.to_le_bytes());
        assert_eq!(r.pop(&mem, &mut c), SplitPop::Chain);
        assert_eq!(
            (c.head, c.readable.clone(), c.writable.clone(), c.malformed),
            (0, vec![(0x10000, 16)], vec![(0x11000, 1)], false)
        );
        assert_eq!((c.readable_len(), c.writable_len()), (16, 1));
        // Cleared (as Vring::pop does), the totals start again from zero.
        c.clear();
        assert_eq!((c.readable_len(), c.writable_len()), (0, 0));
        assert_eq!(r.pop(&mem, &mut c), SplitPop::Chain);
        assert_eq!(
            (c.head, c.readable.clone(), c.writable.clone(), c.malformed),
            (3, vec![(0x12000, 8)], vec![(0x13000, 4)], false)
        );
        assert_eq!((c.readable_len(), c.writable_len()), (8, 4));
        assert_eq!(r.pop(&mem, &mut c), SplitPop::Empty);
        // Used entries and index.
        r.add_used(3, 4);
        assert_eq!(read16(&mem, USED + 2), 1);
        assert_eq!(read16(&mem, USED + 4), 3);
        assert_eq!(read16(&mem, USED + 8), 4, "the used entry's length");
        // Event index: the first decision interrupts; then only when used_event is crossed.
        write(&mem, AVAIL + 4 + 16, &5u16.to_le_bytes());
        assert!(r.needs_notification());
        r.add_used(0, 1);
        assert!(!r.needs_notification(), "used_event 5 not reached");
        for _ in 0..4 {
            r.add_used(0, 1);
        }
        assert!(r.needs_notification(), "used_event 5 crossed");
        // Turning notifications on writes avail_event and sees nothing new.
        assert!(!r.notifications_on());
        assert_eq!(read16(&mem, USED + 4 + 64), 2);
        // A loop, an index past the table, nested indirection: malformed.
        desc(&mem, DESC, 4, 0x10000, 16, F_NEXT, 4);
        desc(&mem, DESC, 5, 0x10000, 16, F_NEXT, 9);
        desc(&mem, DESC, 6, 0x20000, 32, F_INDIRECT, 0);
        desc(&mem, 0x20000, 0, 0x20000, 32, F_INDIRECT, 0);
        for (i, h) in [4u16, 5, 6].iter().enumerate() {
            write(&mem, AVAIL + 4 + 2 * (2 + i as u64), &h.to_le_bytes());
        }
        write(&mem, AVAIL + 2, &5u16.to_le_bytes());
        for head in [4, 5, 6] {
            c = Chain::default();
            assert_eq!(r.pop(&mem, &mut c), SplitPop::Chain);
            assert!(c.malformed && c.head == head, "head {head} is malformed");
        }
        // An avail index jumping by more than the size is broken.
        write(&mem, AVAIL + 2, &100u16.to_le_bytes());
        assert_eq!(r.pop(&mem, &mut c), SplitPop::Broken);
    }
}
