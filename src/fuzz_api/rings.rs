//! The ring targets: guest memory made of the fuzzer's bytes, chains popped and completed by
//! Ferry's walkers and by their oracles (`vhost::ring_oracle`), which must agree.

use super::Input;
use crate::vhost::ring_oracle::{check_packed, check_split, PackedCase, SplitCase, Stats};
use crate::vhost::split::RingLayout;

/// Where the fuzzer's memory bytes start: the descriptor table of the usual layout, so a
/// short input is a ring.
const IMAGE_AT: usize = 0x1000;

fn image(bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; IMAGE_AT];
    v.extend_from_slice(bytes);
    v
}

fn reached(s: &Stats) -> u64 {
    (s.chains + s.malformed + s.broken + s.completed) as u64
}

/// Split ring. Input: size exponent, layout mode, next avail, next used, three addresses
/// (used when the mode's top bits are set), four completion lengths, then guest memory from
/// 0x1000 (the descriptor table of the usual layout: avail ring right after it, used ring
/// after that, 4-aligned).
pub fn split_ring(data: &[u8]) -> u64 {
    let mut input = Input(data);
    let size = 1u16 << (input.u8() % 16);
    let mode = input.u8();
    let (next_avail, next_used) = (input.u16(), input.u16());
    let explicit = [input.u32() as u64, input.u32() as u64, input.u32() as u64];
    let completions: Vec<u32> = (0..4).map(|_| input.u32()).collect();
    let n = size as u64;
    let desc = IMAGE_AT as u64;
    let layout = if mode >= 0xC0 {
        RingLayout { size, desc: explicit[0], avail: explicit[1], used: explicit[2] }
    } else {
        RingLayout { size, desc, avail: desc + 16 * n, used: (desc + 16 * n + 6 + 2 * n + 3) & !3 }
    };
    let mut stats = Stats::default();
    check_split(&image(input.rest()), SplitCase { layout, next_avail, next_used }, &completions, &mut stats);
    reached(&stats)
}

/// Packed ring. Input: size, resume base, descriptor ring mode, four completion lengths, 16
/// bytes choosing the completion order, then guest memory from 0x1000 (the descriptor ring
/// unless the mode moves it).
pub fn packed_ring(data: &[u8]) -> u64 {
    let mut input = Input(data);
    let size = input.u16() % 1024;
    let base = input.u32();
    let desc = match input.u8() {
        0xF0..=0xFF => 0x10000 - 16 * (size as u64 / 2), // runs over region A's end
        0xE0..=0xEF => 0x20000,                          // region B
        0xD0..=0xDF => 0x40000,                          // outside memory
        _ => IMAGE_AT as u64,
    };
    let completions: Vec<u32> = (0..4).map(|_| input.u32()).collect();
    let order = input.bytes(16).to_vec();
    let case = PackedCase { size, desc, driver: 0x800, device: 0x900, base };
    let mut stats = Stats::default();
    check_packed(&image(input.rest()), case, &order, &completions, &mut stats);
    reached(&stats)
}
