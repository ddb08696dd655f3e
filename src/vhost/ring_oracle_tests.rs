//! Differential tests of the ring walkers: thousands of random and hostile rings, each run
//! through Ferry's walker and the oracle of `ring_oracle.rs` (virtio-queue for split rings, an
//! independent model for packed ones). Deterministic seeds, so a failure names a case that
//! reproduces.

use super::ring_oracle::{check_packed, check_split, PackedCase, SplitCase, Stats, REGIONS};
use super::split::RingLayout;
use crate::test_rng::Rng;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
const F_AVAIL: u16 = 1 << 7;
const F_USED: u16 = 1 << 15;

/// The bytes behind both regions of [`REGIONS`], addressed by guest address.
struct Image(Vec<u8>);

impl Image {
    fn new(rng: &mut Rng, random: bool) -> Image {
        let total: u64 = REGIONS.iter().map(|r| r.1).sum();
        let mut v = vec![0u8; total as usize];
        if random {
            v.iter_mut().for_each(|b| *b = rng.next() as u8);
        }
        Image(v)
    }

    fn offset(gpa: u64) -> Option<usize> {
        let mut base = 0;
        for &(start, size) in &REGIONS {
            if gpa >= start && gpa < start + size {
                return Some((base + gpa - start) as usize);
            }
            base += size;
        }
        None
    }

    /// Writes `bytes` at `gpa`, dropping what falls outside memory.
    fn write(&mut self, gpa: u64, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            if let Some(o) = gpa.checked_add(i as u64).and_then(Image::offset) {
                self.0[o] = *b;
            }
        }
    }

    fn split_desc(&mut self, table: u64, i: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = addr.to_le_bytes().to_vec();
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&flags.to_le_bytes());
        d.extend_from_slice(&next.to_le_bytes());
        self.write(table + 16 * i, &d);
    }

    fn packed_desc(&mut self, table: u64, i: u64, addr: u64, len: u32, id: u16, flags: u16) {
        let mut d = addr.to_le_bytes().to_vec();
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&id.to_le_bytes());
        d.extend_from_slice(&flags.to_le_bytes());
        self.write(table + 16 * i, &d);
    }
}

/// A data address: mostly inside memory, sometimes anywhere.
fn data_addr(rng: &mut Rng) -> u64 {
    match rng.below(8) {
        0 => rng.next(),
        1 => 0x20000 + rng.below(0x4000),
        _ => 0x4000 + rng.below(0xC000),
    }
}

fn data_len(rng: &mut Rng) -> u32 {
    match rng.below(16) {
        0 => 0,
        1 => u32::MAX - rng.below(16) as u32,
        _ => 1 + rng.below(8192) as u32,
    }
}

/// An indirect table address and byte length, valid or one of the hostile kinds.
fn indirect_table(rng: &mut Rng, entries: u64) -> (u64, u32, bool) {
    let len = (16 * entries) as u32;
    match rng.below(12) {
        0 => (0x20000 + 0x4000 - 16 * entries.saturating_sub(1).max(1), len, false), // past region B's end
        1 => (u64::MAX - 15 - rng.below(4) * 16, len, false),                        // wraps past 2^64
        2 => (0x8000, len + 1 + rng.below(15) as u32, false),                        // ragged
        3 => (0x8000, 0, false),                                                     // empty
        4 => (0x8000, 16 * (4097 + rng.below(100) as u32), false),                   // huge
        5 => (0xF000 + 16 * rng.below(0x100), len, true),                            // maybe over region A's end
        6 => (0x20000 + 16 * rng.below(0x100), len, true),                           // region B
        _ => (0x8000 + 16 * rng.below(0x600), len, true),
    }
}

/// A random split ring: chains built by a (sometimes hostile) driver, or random bytes.
fn split_case(rng: &mut Rng) -> (Vec<u8>, SplitCase, Vec<u32>) {
    let size = 1u16 << rng.below(9);
    let n = size as u64;
    let mut layout =
        RingLayout { size, desc: 0x1000, avail: 0x1000 + 16 * n, used: (0x1000 + 16 * n + 6 + 2 * n + 3) & !3 };
    if rng.one_in(10) {
        // A hostile layout: misaligned, outside memory, over a region's end, in region B, at 0.
        match rng.below(6) {
            0 => layout.desc += 8,
            1 => layout.avail += 1,
            2 => layout.used = 0x10000 - 4,
            3 => layout.desc = 0x18000,
            4 => layout = RingLayout { size, desc: 0x20000, avail: 0x21000, used: 0x22000 },
            _ => layout.avail = 0,
        }
    }
    let random = rng.one_in(6);
    let mut img = Image::new(rng, random);
    let next_avail = if rng.one_in(3) { u16::MAX - rng.below(4) as u16 } else { rng.next() as u16 };
    let next_used = rng.next() as u16;
    let mut free: Vec<u16> = (0..size).collect();
    // Shuffle so chains link descriptors in any order.
    for i in (1..free.len()).rev() {
        free.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut heads = Vec::new();
    while !free.is_empty() && heads.len() < size as usize && !random {
        let want = 1 + rng.below(4.min(free.len() as u64)) as usize;
        let ids: Vec<u16> = free.drain(..want).collect();
        let writes_from = rng.below(want as u64 + 1) as usize;
        for (k, &id) in ids.iter().enumerate() {
            let last = k + 1 == ids.len();
            let mut flags = if last { 0 } else { F_NEXT };
            if k >= writes_from {
                flags |= F_WRITE;
            }
            let mut next = if last { rng.next() as u16 } else { ids[k + 1] };
            match rng.below(40) {
                0 => next = ids[rng.below(k as u64 + 1) as usize], // a loop
                1 => next = size + rng.below(100) as u16,          // past the table
                2 => flags ^= F_WRITE,                             // read after write, maybe
                3 => flags |= F_NEXT,                              // runs on into whatever
                _ => {}
            }
            let (mut addr, mut len) = (data_addr(rng), data_len(rng));
            if last && rng.one_in(5) {
                // This descriptor points at an indirect table instead.
                let entries = 1 + rng.below(6);
                let (t, tlen, valid) = indirect_table(rng, entries);
                flags |= F_INDIRECT;
                (addr, len) = (t, tlen);
                if valid {
                    let w = rng.below(entries + 1);
                    for e in 0..entries {
                        let mut f = if e + 1 < entries { F_NEXT } else { 0 };
                        if e >= w {
                            f |= F_WRITE;
                        }
                        let mut nx = (e + 1) as u16;
                        match rng.below(30) {
                            0 => f |= F_INDIRECT,          // nested
                            1 => nx = rng.below(3) as u16, // a loop, maybe
                            2 => nx = 100,                 // past the table
                            _ => {}
                        }
                        img.split_desc(t, e, data_addr(rng), data_len(rng), f, nx);
                    }
                }
            }
            img.split_desc(layout.desc, id as u64, addr, len, flags, next);
        }
        heads.push(if rng.one_in(50) { size + rng.below(10) as u16 } else { ids[0] });
        if rng.one_in(3) {
            break;
        }
    }
    let mut published = heads.len() as u16;
    if random {
        published = rng.below(n + 1) as u16;
        heads = (0..published).map(|_| rng.next() as u16 % (2 * size)).collect();
    }
    if rng.one_in(12) {
        published = size + 1 + rng.below(1000) as u16; // more than the ring holds: broken
    }
    for (j, h) in heads.iter().enumerate() {
        let slot = (next_avail.wrapping_add(j as u16) % size) as u64;
        img.write(layout.avail + 4 + 2 * slot, &h.to_le_bytes());
    }
    img.write(layout.avail + 2, &next_avail.wrapping_add(published).to_le_bytes());
    let completions = (0..8).map(|_| rng.next() as u32).collect();
    (img.0, SplitCase { layout, next_avail, next_used }, completions)
}

/// A random packed ring: buffers placed by a (sometimes hostile) driver from the device's
/// resume position, or random bytes.
fn packed_case(rng: &mut Rng) -> (Vec<u8>, PackedCase, Vec<u8>, Vec<u32>) {
    let max = if rng.one_in(4) { 256 } else { 16 };
    let size = 1 + rng.below(max) as u16;
    let desc = match rng.below(16) {
        0 => 0x10000 - 16 * rng.below(size as u64 + 1), // runs over region A's end
        1 => 0x40000,                                   // outside memory
        2 => 0x20000,
        _ => 0x1000,
    };
    let position = rng.below(size as u64) as u16;
    let wrap = rng.one_in(2);
    let base = position as u32 | (wrap as u32) << 15 | (position as u32) << 16 | (wrap as u32) << 31;
    let random = rng.one_in(8);
    let mut img = Image::new(rng, random);
    // The driver's view: the next descriptor it writes and its wrap counter (base 0 is a
    // fresh ring: both counters start set).
    let (mut at, mut w) = if base == 0 { (0u16, true) } else { (position, wrap) };
    let mut placed = 0u16;
    while !random && placed < size {
        let room = size - placed;
        let k = 1 + rng.below(3.min(room as u64)) as u16;
        let id = match rng.below(30) {
            0 => size + rng.below(5) as u16,
            _ => rng.below(size as u64) as u16,
        };
        let writes_from = rng.below(k as u64 + 1) as u16;
        for j in 0..k {
            let last = j + 1 == k;
            let mut flags = if last { 0 } else { F_NEXT };
            if j >= writes_from {
                flags |= F_WRITE;
            }
            match rng.below(40) {
                0 => flags |= F_NEXT, // runs on
                1 => flags ^= F_WRITE,
                _ => {}
            }
            let (mut addr, mut len) = (data_addr(rng), data_len(rng));
            if (k == 1 && rng.one_in(4)) || rng.one_in(40) {
                let entries = 1 + rng.below(6);
                let (t, tlen, valid) = indirect_table(rng, entries);
                flags |= F_INDIRECT;
                (addr, len) = (t, tlen);
                if valid {
                    let wr = rng.below(entries + 1);
                    for e in 0..entries {
                        let f = if e >= wr { F_WRITE } else { 0 } | if rng.one_in(20) { F_NEXT } else { 0 };
                        img.packed_desc(addr, e, data_addr(rng), data_len(rng), rng.next() as u16, f);
                    }
                }
            }
            // Only the last descriptor's id counts; the others get noise.
            let this_id = if last { id } else { rng.next() as u16 };
            let avail = if w { F_AVAIL } else { F_USED };
            img.packed_desc(desc, at as u64, addr, len, this_id, flags | avail);
            at += 1;
            if at == size {
                at = 0;
                w = !w;
            }
        }
        placed += k;
        if rng.one_in(3) {
            break;
        }
    }
    let order = (0..64).map(|_| rng.next() as u8).collect();
    let completions = (0..8).map(|_| rng.next() as u32).collect();
    (img.0, PackedCase { size, desc, driver: 0x3000, device: 0x3100, base }, order, completions)
}

#[test]
fn split_walker_agrees_with_virtio_queue_on_random_and_hostile_rings() {
    let mut rng = Rng(0x0ddb_a11c_affe_0001);
    let mut stats = Stats::default();
    for case in 0..3000 {
        let (contents, ring, completions) = split_case(&mut rng);
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_split(&contents, ring, &completions, &mut stats)
        }));
        assert!(run.is_ok(), "split case {case} disagreed (see the panic above)");
    }
    eprintln!("split: {stats:?}");
    // Every kind of outcome happened, so the cases reached past the easy paths.
    for (what, n) in [
        ("whole chains", stats.chains),
        ("malformed chains", stats.malformed),
        ("indirect chains", stats.indirect),
        ("broken rings", stats.broken),
        ("refused layouts", stats.refused),
        ("completions", stats.completed),
        ("documented differences", stats.documented),
    ] {
        assert!(n > 0, "no {what} in the split cases: {stats:?}");
    }
}

#[test]
fn packed_walker_agrees_with_the_reference_model_on_random_and_hostile_rings() {
    let mut rng = Rng(0x0ddb_a11c_affe_0002);
    let mut stats = Stats::default();
    for case in 0..3000 {
        let (contents, ring, order, completions) = packed_case(&mut rng);
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_packed(&contents, ring, &order, &completions, &mut stats)
        }));
        assert!(run.is_ok(), "packed case {case} disagreed (see the panic above)");
    }
    eprintln!("packed: {stats:?}");
    for (what, n) in [
        ("whole buffers", stats.chains),
        ("malformed buffers", stats.malformed),
        ("broken rings", stats.broken),
        ("completions", stats.completed),
    ] {
        assert!(n > 0, "no {what} in the packed cases: {stats:?}");
    }
}
