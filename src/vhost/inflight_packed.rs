//! Inflight tracking for packed rings, as vhost-user.rst ("Inflight I/O tracking") lays it
//! out: a 32-byte header `features u64, version u16, desc_num u16, free_head u16,
//! old_free_head u16, used_idx u16, old_used_idx u16, used_wrap_counter u8,
//! old_used_wrap_counter u8` and `desc_num` 32-byte `DescStatePacked` entries `inflight u8,
//! padding u8, next u16, last u16, num u16, counter u64, id u16, flags u16, len u32, addr u64`.
//!
//! A packed ring's slots are overwritten by used elements, so each fetched descriptor is
//! copied into an entry taken from a free list; a buffer's entries are linked by `next`, its
//! head entry holds `num`, `last`, `counter` and the in-flight flag. Completing a buffer
//! returns its entries to the free list and advances the used position; the `old_*` copies
//! are the last consistent state, so a restart can roll a half-done update back (or commit it
//! when the used descriptor reached the ring). The tracker keeps all of this in process memory
//! and only writes the shared region at run time; the region is read, and checked, only when
//! recovering.

use super::inflight::{InflightArea, InflightError, QueueView, H_DESC_NUM, H_VERSION, VERSION};
use super::packed::{PackedDesc, Position, F_AVAIL, F_USED};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

/// Header size (the C struct's 29 bytes padded to the entries' 8-byte alignment).
pub(crate) const HEADER: usize = 32;
/// `DescStatePacked` size.
pub(crate) const ENTRY: usize = 32;

const FREE_HEAD: usize = 12;
const OLD_FREE_HEAD: usize = 14;
const USED_IDX: usize = 16;
const OLD_USED_IDX: usize = 18;
const USED_WRAP: usize = 20;
const OLD_USED_WRAP: usize = 21;

const E_INFLIGHT: usize = 0;
const E_NEXT: usize = 2;
const E_LAST: usize = 4;
const E_NUM: usize = 6;
const E_COUNTER: usize = 8;
const E_ID: usize = 16;
const E_FLAGS: usize = 18;
const E_LEN: usize = 20;
const E_ADDR: usize = 24;

fn entry(i: u16) -> usize {
    HEADER + ENTRY * i as usize
}

/// What recovering a queue's region found.
#[derive(Debug)]
pub enum Recovery {
    /// The region was not initialised yet (a new area): start where the frontend says.
    Fresh,
    /// The region describes where the ring was: resume there and resubmit `chains` (each
    /// buffer's descriptors as fetched), oldest first.
    Resume {
        /// Next descriptor to fetch.
        avail: Position,
        /// Next used slot.
        used: Position,
        /// Buffers in flight, in the order they were fetched.
        chains: Vec<Vec<PackedDesc>>,
    },
}

/// One packed queue's tracking, used by the reactor serving that queue.
pub struct PackedTracking {
    area: Arc<InflightArea>,
    queue: u16,
    size: u16,
    /// Free-list and chain links (mirrored to the region's `next` fields).
    next: Vec<u16>,
    /// For head entries: the entry holding the buffer's last descriptor, and how many.
    last: Vec<u16>,
    num: Vec<u16>,
    /// Head entry of each in-flight buffer id.
    head_of_id: Vec<u16>,
    free_head: u16,
    old_free_head: u16,
    used: Position,
    counter: u64,
}

impl PackedTracking {
    /// Tracking for `queue` of `area` (laid out for packed rings of the area's queue size).
    pub(crate) fn new(area: Arc<InflightArea>, queue: u16) -> PackedTracking {
        let size = area.queue_size();
        PackedTracking {
            area,
            queue,
            size,
            next: (1..=size).collect(),
            last: vec![0; size as usize],
            num: vec![0; size as usize],
            head_of_id: vec![0; size as usize],
            free_head: 0,
            old_free_head: 0,
            used: Position::START,
            counter: 0,
        }
    }

    fn view(&self) -> QueueView<'_> {
        self.area.queue(self.queue)
    }

    /// Initialises the region for a ring whose next used slot is `used`, nothing in flight.
    pub fn reset(&mut self, used: Position) {
        let fresh = PackedTracking::new(self.area.clone(), self.queue);
        *self = PackedTracking { used, ..fresh };
        let v = self.view();
        v.clear();
        v.write_u16(H_DESC_NUM, self.size);
        for i in 0..self.size {
            v.write_u16(entry(i) + E_NEXT, i + 1);
        }
        v.write_u16(USED_IDX, used.idx);
        v.write_u16(OLD_USED_IDX, used.idx);
        v.write_u8(USED_WRAP, used.wrap as u8);
        v.write_u8(OLD_USED_WRAP, used.wrap as u8);
        fence(Ordering::Release);
        v.write_u16(H_VERSION, VERSION);
    }

    /// Recovers after a restart. `fallback` is the used position from the frontend's vring
    /// base (used only for a region never initialised); `ring_flags(i)` reads the flags of
    /// ring slot `i` (None if outside guest memory). A region that is inconsistent in any way
    /// is an error and nothing is resubmitted from it (the caller resets it).
    pub fn recover(
        &mut self,
        fallback: Position,
        ring_flags: impl Fn(u16) -> Option<u16>,
    ) -> Result<Recovery, InflightError> {
        let size = self.size;
        let queue = self.queue;
        let bad = |what: String| InflightError::BadRegion { queue, what };
        let v = self.view();
        let (version, desc_num) = (v.read_u16(H_VERSION), v.read_u16(H_DESC_NUM));
        if version == 0 {
            self.reset(fallback);
            return Ok(Recovery::Fresh);
        }
        if version != VERSION || desc_num != size {
            return Err(bad(format!("version {version}, desc_num {desc_num} (expected {VERSION}, {size})")));
        }
        // Every header field is read once and checked before it is used as an index.
        let free_head = v.read_u16(FREE_HEAD);
        let old_free_head = v.read_u16(OLD_FREE_HEAD);
        let (used_idx, old_used_idx) = (v.read_u16(USED_IDX), v.read_u16(OLD_USED_IDX));
        let (used_wrap, old_used_wrap) = (v.read_u8(USED_WRAP), v.read_u8(OLD_USED_WRAP));
        if free_head > size || old_free_head > size {
            return Err(bad(format!("free_head {free_head} / old_free_head {old_free_head} past the ring ({size})")));
        }
        if used_idx >= size || old_used_idx >= size {
            return Err(bad(format!("used_idx {used_idx} / old_used_idx {old_used_idx} past the ring ({size})")));
        }
        if used_wrap > 1 || old_used_wrap > 1 {
            return Err(bad(format!("wrap counters {used_wrap} / {old_used_wrap} are not 0 or 1")));
        }
        let current = (free_head, Position { idx: used_idx, wrap: used_wrap == 1 });
        let mut old = (old_free_head, Position { idx: old_used_idx, wrap: old_used_wrap == 1 });
        if current.1 != old.1 {
            // A completion was under way. If its used descriptor reached the ring (the slot
            // no longer looks available for the old wrap counter), commit it; else roll back.
            let flags =
                ring_flags(old.1.idx).ok_or_else(|| bad("the descriptor ring is outside guest memory".into()))?;
            let still_available = if old.1.wrap { F_AVAIL } else { F_USED };
            if flags & (F_AVAIL | F_USED) != still_available {
                old = current;
            }
        }
        let (free_head, used) = old;
        // Snapshot the links and flags once; the frontend may change the region meanwhile.
        let next: Vec<u16> = (0..size).map(|i| v.read_u16(entry(i) + E_NEXT)).collect();
        let mut claimed = vec![false; size as usize];
        // Entries on the free list are not in flight (a buffer whose fetch was cut short is
        // at its head, and so forgotten: the ring still offers it).
        let mut e = free_head;
        while e < size {
            if claimed[e as usize] {
                return Err(bad(format!("the free list loops at entry {e}")));
            }
            claimed[e as usize] = true;
            v.write_u8(entry(e) + E_INFLIGHT, 0);
            e = next[e as usize];
        }
        let mut heads: Vec<(u64, u16)> = (0..size)
            .filter(|&h| !claimed[h as usize] && v.read_u8(entry(h) + E_INFLIGHT) == 1)
            .map(|h| (v.read_u64(entry(h) + E_COUNTER), h))
            .collect();
        heads.sort_unstable();
        let mut chains = Vec::with_capacity(heads.len());
        let mut state = PackedTracking::new(self.area.clone(), queue);
        let mut in_flight: u32 = 0;
        let mut id_seen = vec![false; size as usize];
        for &(counter, h) in &heads {
            let num = v.read_u16(entry(h) + E_NUM);
            let last = v.read_u16(entry(h) + E_LAST);
            if num == 0 || num > size {
                return Err(bad(format!("entry {h} is in flight with {num} descriptors")));
            }
            let mut descs = Vec::with_capacity(num as usize);
            let mut e = h;
            for k in 0..num {
                if e >= size || claimed[e as usize] {
                    return Err(bad(format!("the buffer at entry {h} links to entry {e}, not its own")));
                }
                claimed[e as usize] = true;
                let at = entry(e);
                descs.push(PackedDesc {
                    addr: v.read_u64(at + E_ADDR),
                    len: v.read_u32(at + E_LEN),
                    id: v.read_u16(at + E_ID),
                    flags: v.read_u16(at + E_FLAGS),
                });
                if k + 1 < num {
                    e = next[e as usize];
                }
            }
            if last != e {
                return Err(bad(format!("entry {h}: last is {last}, its chain ends at {e}")));
            }
            let id = descs.last().expect("num >= 1").id;
            if id >= size || std::mem::replace(&mut id_seen[id as usize], true) {
                return Err(bad(format!("entry {h}: buffer id {id} is past the ring or in flight twice")));
            }
            state.last[h as usize] = last;
            state.num[h as usize] = num;
            state.head_of_id[id as usize] = h;
            state.counter = state.counter.max(counter);
            in_flight += num as u32;
            chains.push(descs);
        }
        if let Some(lost) = claimed.iter().position(|c| !c) {
            return Err(bad(format!("entry {lost} is neither free nor part of a buffer in flight")));
        }
        // Commit the repaired state: what was consistent last, with the free list cleared.
        v.write_u16(FREE_HEAD, free_head);
        v.write_u16(OLD_FREE_HEAD, free_head);
        v.write_u16(USED_IDX, used.idx);
        v.write_u16(OLD_USED_IDX, used.idx);
        v.write_u8(USED_WRAP, used.wrap as u8);
        v.write_u8(OLD_USED_WRAP, used.wrap as u8);
        state.next = next;
        state.free_head = free_head;
        state.old_free_head = free_head;
        state.used = used;
        *self = state;
        self.area.count_resubmitted(chains.len());
        // Every descriptor between the used and the avail position belongs to a buffer in
        // flight (each completion advanced the used position by its buffer's descriptors).
        Ok(Recovery::Resume { avail: used.advance(in_flight, size), used, chains })
    }

    /// Records a buffer fetched from the ring (its descriptors in ring order). False if the
    /// free list ran out: the driver has more descriptors in flight than the ring holds.
    pub fn fetched(&mut self, descs: &[PackedDesc]) -> bool {
        let Some(id) = descs.last().map(|d| d.id) else { return true };
        if id >= self.size {
            return false;
        }
        // Check there are enough free entries before touching anything.
        let mut e = self.free_head;
        for k in 0..descs.len() {
            if e >= self.size {
                return false;
            }
            if k + 1 < descs.len() {
                e = self.next[e as usize];
            }
        }
        let h = self.old_free_head;
        let n = descs.len();
        self.counter += 1;
        let v = self.area.queue(self.queue);
        v.write_u16(entry(h) + E_NUM, 0);
        v.write_u64(entry(h) + E_COUNTER, self.counter);
        fence(Ordering::Release);
        v.write_u8(entry(h) + E_INFLIGHT, 1);
        for (k, d) in descs.iter().enumerate() {
            let f = self.free_head;
            if k + 1 == n {
                v.write_u16(entry(h) + E_LAST, f);
                self.last[h as usize] = f;
            }
            v.write_u16(entry(h) + E_NUM, k as u16 + 1);
            let at = entry(f);
            v.write_u64(at + E_ADDR, d.addr);
            v.write_u32(at + E_LEN, d.len);
            v.write_u16(at + E_ID, d.id);
            v.write_u16(at + E_FLAGS, d.flags);
            fence(Ordering::Release);
            self.free_head = self.next[f as usize];
            v.write_u16(FREE_HEAD, self.free_head);
        }
        fence(Ordering::Release);
        self.old_free_head = self.free_head;
        v.write_u16(OLD_FREE_HEAD, self.old_free_head);
        self.num[h as usize] = n as u16;
        self.head_of_id[id as usize] = h;
        true
    }

    /// Before buffer `id`'s used descriptor is written: return its entries to the free list
    /// and advance the used position.
    pub fn before_used(&mut self, id: u16) {
        let h = self.head_of_id[(id % self.size) as usize];
        let last = self.last[h as usize];
        let v = self.area.queue(self.queue);
        self.next[last as usize] = self.free_head;
        v.write_u16(entry(last) + E_NEXT, self.free_head);
        self.free_head = h;
        v.write_u16(FREE_HEAD, h);
        self.used = self.used.advance(self.num[h as usize] as u32, self.size);
        v.write_u16(USED_IDX, self.used.idx);
        v.write_u8(USED_WRAP, self.used.wrap as u8);
        fence(Ordering::Release);
    }

    /// After buffer `id`'s used descriptor was written: clear its flag and record the new
    /// consistent state.
    pub fn after_used(&mut self, id: u16) {
        let h = self.head_of_id[(id % self.size) as usize];
        let v = self.area.queue(self.queue);
        fence(Ordering::Release);
        v.write_u8(entry(h) + E_INFLIGHT, 0);
        self.old_free_head = self.free_head;
        v.write_u16(OLD_FREE_HEAD, self.free_head);
        v.write_u16(OLD_USED_IDX, self.used.idx);
        v.write_u8(OLD_USED_WRAP, self.used.wrap as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vhost::inflight::{InflightQueue, RingFormat};

    const SIZE: u16 = 8;

    fn area() -> Arc<InflightArea> {
        Arc::new(InflightArea::create(RingFormat::Packed, 1, SIZE).unwrap())
    }

    fn tracking(area: &Arc<InflightArea>) -> PackedTracking {
        match InflightQueue::new(area.clone(), 0, SIZE, true).unwrap() {
            InflightQueue::Packed(p) => p,
            InflightQueue::Split(_) => unreachable!(),
        }
    }

    fn buf(id: u16, n: u16) -> Vec<PackedDesc> {
        (0..n)
            .map(|k| PackedDesc {
                addr: 0x1000 * (id as u64 + 1) + k as u64,
                len: 512,
                id,
                flags: if k + 1 < n { 1 } else { 2 },
            })
            .collect()
    }

    /// Ring slots that look available for wrap counter 1 (a fresh ring).
    fn available(_: u16) -> Option<u16> {
        Some(F_AVAIL)
    }

    #[test]
    fn region_layout_matches_the_spec() {
        assert_eq!(crate::vhost::inflight::queue_region_size(RingFormat::Packed, 8), 320);
        assert_eq!(crate::vhost::inflight::queue_region_size(RingFormat::Packed, 256), 8256);
    }

    #[test]
    fn in_flight_buffers_come_back_oldest_first_with_their_descriptors() {
        let area = area();
        let mut t = tracking(&area);
        assert!(matches!(t.recover(Position::START, available), Ok(Recovery::Fresh)));
        // Buffers 3 (2 descriptors), 1 (1), 5 (3) fetched; 1 completes.
        assert!(t.fetched(&buf(3, 2)));
        assert!(t.fetched(&buf(1, 1)));
        assert!(t.fetched(&buf(5, 3)));
        t.before_used(1);
        t.after_used(1);
        assert_eq!(area.inflight_now(), 2);
        // Restart: a new tracker on the same memory.
        let mut t2 = tracking(&area);
        let Ok(Recovery::Resume { avail, used, chains }) = t2.recover(Position::START, available) else {
            panic!("resume expected")
        };
        assert_eq!(used, Position { idx: 1, wrap: true }, "one used descriptor (buffer 1)");
        assert_eq!(avail, Position { idx: 6, wrap: true }, "2 + 1 + 3 descriptors fetched");
        assert_eq!(chains, vec![buf(3, 2), buf(5, 3)]);
        assert_eq!(area.resubmitted(), 2);
        // Completing them after the restart leaves nothing in flight, and fetching reuses
        // the freed entries across the wrap.
        t2.before_used(5);
        t2.after_used(5);
        t2.before_used(3);
        t2.after_used(3);
        for i in 0..8 {
            assert!(t2.fetched(&buf(i, 1)), "entry {i}");
            t2.before_used(i);
            t2.after_used(i);
        }
        let mut t3 = tracking(&area);
        let Ok(Recovery::Resume { avail, used, chains }) = t3.recover(Position::START, available) else { panic!() };
        assert!(chains.is_empty());
        assert_eq!((used, avail), (Position { idx: 6, wrap: false }, Position { idx: 6, wrap: false }));
    }

    #[test]
    fn a_half_done_completion_is_rolled_back_or_committed_by_the_ring() {
        for reached_ring in [false, true] {
            let area = area();
            let mut t = tracking(&area);
            t.recover(Position::START, available).unwrap();
            assert!(t.fetched(&buf(2, 2)));
            assert!(t.fetched(&buf(4, 1)));
            t.before_used(4); // crash before after_used
            let flags = move |i: u16| {
                assert_eq!(i, 0, "the slot of the completion under way");
                Some(if reached_ring { F_AVAIL | F_USED } else { F_AVAIL })
            };
            let Ok(Recovery::Resume { used, chains, avail }) = tracking(&area).recover(Position::START, flags) else {
                panic!()
            };
            if reached_ring {
                assert_eq!((used.idx, chains), (1, vec![buf(2, 2)]), "committed: buffer 4 is done");
            } else {
                assert_eq!((used.idx, chains), (0, vec![buf(2, 2), buf(4, 1)]), "rolled back: 4 is redone");
            }
            assert_eq!(avail.idx, 3);
        }
        // A fetch cut short (crash before old_free_head moved) is forgotten: the ring still
        // offers that buffer.
        let area = area();
        let mut t = tracking(&area);
        t.recover(Position::START, available).unwrap();
        assert!(t.fetched(&buf(0, 1)));
        let v = area.queue(0);
        v.write_u8(entry(1) + E_INFLIGHT, 1);
        v.write_u16(entry(1) + E_NUM, 1);
        v.write_u16(FREE_HEAD, 2);
        let Ok(Recovery::Resume { avail, chains, .. }) = tracking(&area).recover(Position::START, available) else {
            panic!()
        };
        assert_eq!((avail.idx, chains.len()), (1, 1));
        assert_eq!(v.read_u8(entry(1) + E_INFLIGHT), 0, "cleared on the free list");
    }

    #[test]
    fn inconsistent_regions_are_refused() {
        type Corrupt = fn(&QueueView<'_>);
        let cases: &[(&str, Corrupt)] = &[
            ("version", |v| v.write_u16(H_VERSION, 2)),
            ("desc_num", |v| v.write_u16(H_DESC_NUM, 4)),
            ("free_head", |v| v.write_u16(FREE_HEAD, 100)),
            ("old_free_head", |v| v.write_u16(OLD_FREE_HEAD, 9)),
            ("used_idx", |v| v.write_u16(USED_IDX, 8)),
            ("old_used_idx", |v| v.write_u16(OLD_USED_IDX, 0xffff)),
            ("wrap", |v| v.write_u8(USED_WRAP, 2)),
            ("free list loop", |v| v.write_u16(entry(5) + E_NEXT, 3)),
            ("num 0", |v| v.write_u16(entry(0) + E_NUM, 0)),
            ("num too large", |v| v.write_u16(entry(0) + E_NUM, 9)),
            ("chain into the free list", |v| v.write_u16(entry(0) + E_NEXT, 4)),
            ("last", |v| v.write_u16(entry(0) + E_LAST, 0)),
            ("id past the ring", |v| v.write_u16(entry(1) + E_ID, 8)),
            ("duplicate id", |v| v.write_u16(entry(2) + E_ID, 3)),
            // Entry 3 is free but the list now starts past it: neither free nor in flight.
            ("lost entry", |v| {
                v.write_u16(FREE_HEAD, 4);
                v.write_u16(OLD_FREE_HEAD, 4);
            }),
        ];
        for (what, corrupt) in cases {
            let area = area();
            let mut t = tracking(&area);
            t.recover(Position::START, available).unwrap();
            assert!(t.fetched(&buf(3, 2))); // entries 0, 1
            assert!(t.fetched(&buf(6, 1))); // entry 2
            corrupt(&area.queue(0));
            let r = tracking(&area).recover(Position::START, available);
            assert!(matches!(r, Err(InflightError::BadRegion { .. })), "{what}: {r:?}");
        }
        // The ring itself outside memory while a completion was under way.
        let area = area();
        let mut t = tracking(&area);
        t.recover(Position::START, available).unwrap();
        assert!(t.fetched(&buf(1, 1)));
        t.before_used(1);
        assert!(matches!(tracking(&area).recover(Position::START, |_| None), Err(InflightError::BadRegion { .. })));
    }

    #[test]
    fn a_driver_with_more_in_flight_than_the_ring_holds_is_refused() {
        let area = area();
        let mut t = tracking(&area);
        t.recover(Position::START, available).unwrap();
        assert!(t.fetched(&buf(0, 5)));
        assert!(!t.fetched(&buf(1, 4)), "only 3 entries left");
        assert!(t.fetched(&buf(1, 3)));
        assert!(!t.fetched(&buf(2, 1)));
        assert!(!t.fetched(&buf(8, 1)), "buffer id past the ring");
    }
}
