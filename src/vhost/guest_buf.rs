//! Moving bytes between Ferry and a request's guest buffers, given as (guest-physical
//! address, length) segments: bounds-checked copies for headers and small replies, and
//! translation to host iovecs for zero-copy data.

use super::memory::{read_shared, write_shared, GuestMemory};

/// A request's segments reach outside guest memory (or are too short for the copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("request buffer outside guest memory")]
pub struct OutsideGuestMemory;

/// The pieces `(gpa, len)` of `len` bytes of the segments, starting `skip` bytes in, in order;
/// `Err` if an address wraps. Yields fewer than `len` bytes when the segments are too short.
fn pieces(
    segs: &[(u64, u32)],
    mut skip: u64,
    mut len: u64,
) -> impl Iterator<Item = Result<(u64, u64), OutsideGuestMemory>> + '_ {
    segs.iter().filter_map(move |&(gpa, seg_len)| {
        let seg_len = seg_len as u64;
        if len == 0 {
            return None;
        }
        if skip >= seg_len {
            skip -= seg_len;
            return None;
        }
        let n = (seg_len - skip).min(len);
        let start = gpa.checked_add(skip).ok_or(OutsideGuestMemory);
        skip = 0;
        len -= n;
        Some(start.map(|s| (s, n)))
    })
}

/// Where `len` bytes starting `skip` bytes into the segments are, if they lie in the first
/// segment (a request header or response: the common case), as one checked host range; `None`
/// if they do not (or `len` is 0).
#[inline]
fn in_first_segment(
    mem: &GuestMemory,
    segs: &[(u64, u32)],
    skip: u64,
    len: usize,
) -> Option<Result<*mut u8, OutsideGuestMemory>> {
    let &(gpa, seg_len) = segs.first()?;
    skip.checked_add(len as u64).filter(|&end| len > 0 && end <= seg_len as u64)?;
    let start = gpa.checked_add(skip);
    Some(start.and_then(|start| mem.host_range(start, len as u64).ok()).ok_or(OutsideGuestMemory))
}

/// Hands `copy` each piece of the `len` bytes starting `skip` bytes into the segments: a host
/// pointer checked to lie inside guest memory for the piece's length, and the piece's place in
/// the caller's buffer. Fails, having handed over only whole checked pieces, if the segments
/// are too short or reach outside guest memory. Inlined, so a caller with a fixed-size header
/// in one segment (the common case) copies a constant size; bytes spread over several
/// segments take the loop below.
#[inline]
fn for_each_piece(
    mem: &GuestMemory,
    segs: &[(u64, u32)],
    skip: u64,
    len: usize,
    mut copy: impl FnMut(*mut u8, std::ops::Range<usize>),
) -> Result<(), OutsideGuestMemory> {
    if let Some(host) = in_first_segment(mem, segs, skip, len) {
        copy(host?, 0..len);
        return Ok(());
    }
    for_each_piece_of_several(mem, segs, skip, len, &mut copy)
}

/// [`for_each_piece`] for bytes spread over several segments (one copy of the loop for every
/// caller).
fn for_each_piece_of_several(
    mem: &GuestMemory,
    segs: &[(u64, u32)],
    skip: u64,
    len: usize,
    copy: &mut dyn FnMut(*mut u8, std::ops::Range<usize>),
) -> Result<(), OutsideGuestMemory> {
    let mut done = 0;
    for piece in pieces(segs, skip, len as u64) {
        let (gpa, n) = piece?;
        let host = mem.host_range(gpa, n).map_err(|_| OutsideGuestMemory)?;
        copy(host, done..done + n as usize);
        done += n as usize;
    }
    if done == len {
        Ok(())
    } else {
        Err(OutsideGuestMemory)
    }
}

/// Copies `out.len()` bytes starting `skip` bytes into the segments.
#[inline]
pub fn copy_from_guest(
    mem: &GuestMemory,
    segs: &[(u64, u32)],
    skip: u64,
    out: &mut [u8],
) -> Result<(), OutsideGuestMemory> {
    let len = out.len();
    for_each_piece(mem, segs, skip, len, |src, at| {
        // SAFETY: for_each_piece checked that `src` has `at.len()` bytes inside the mapped
        // guest memory; `at` lies inside `out` (the pieces add up to at most its length). The
        // guest may change the bytes concurrently: we take a snapshot and validate that.
        unsafe { read_shared(src, &mut out[at]) }
    })
}

/// Copies `data` into the segments, starting `skip` bytes in.
#[inline]
pub fn copy_to_guest(mem: &GuestMemory, segs: &[(u64, u32)], skip: u64, data: &[u8]) -> Result<(), OutsideGuestMemory> {
    for_each_piece(mem, segs, skip, data.len(), |dst, at| {
        // SAFETY: for_each_piece checked that `dst` has `at.len()` bytes inside the mapped
        // guest memory; `at` lies inside `data`.
        unsafe { write_shared(dst, &data[at]) }
    })
}

/// Appends to `host` the host iovecs of `len` bytes of the segments, starting `skip` bytes
/// in. False if any part lies outside guest memory or the segments are too short.
pub fn translate(mem: &GuestMemory, segs: &[(u64, u32)], skip: u64, len: u64, host: &mut Vec<libc::iovec>) -> bool {
    host.clear();
    let mut found = 0;
    for piece in pieces(segs, skip, len) {
        let Ok((start, n)) = piece else { return false };
        found += n;
        // A piece inside one region (nearly all) is one inlined `host_range`: per request about
        // 60 instructions fewer than `GuestMemory::iovecs`, which splits a piece crossing
        // regions.
        match mem.host_range(start, n) {
            Ok(p) => host.push(libc::iovec { iov_base: p.cast(), iov_len: n as usize }),
            Err(_) => {
                if mem.iovecs(start, n, host).is_err() {
                    return false;
                }
            }
        }
    }
    found == len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_copied_from_one_segment_or_across_several_and_never_from_outside_memory() {
        let mem = GuestMemory::for_tests(1 << 16);
        let bytes: Vec<u8> = (0..=255).collect();
        copy_to_guest(&mem, &[(0x1000, 256)], 0, &bytes).unwrap();
        let mut out = [0u8; 16];
        // Inside the first segment, at its start and further in.
        copy_from_guest(&mem, &[(0x1000, 64)], 0, &mut out).unwrap();
        assert_eq!(out.to_vec(), bytes[..16].to_vec());
        copy_from_guest(&mem, &[(0x1000, 64)], 40, &mut out).unwrap();
        assert_eq!(out.to_vec(), bytes[40..56].to_vec());
        // Across segments, one of them skipped.
        copy_from_guest(&mem, &[(0x1000, 4), (0x1010, 8), (0x1080, 64)], 6, &mut out).unwrap();
        let mut want = bytes[0x12..0x18].to_vec();
        want.extend_from_slice(&bytes[0x80..0x8a]);
        assert_eq!(out.to_vec(), want);
        // Segments too short, a segment past the end of memory, an address that wraps.
        assert_eq!(copy_from_guest(&mem, &[(0x1000, 8), (0x2000, 4)], 0, &mut out), Err(OutsideGuestMemory));
        assert_eq!(copy_from_guest(&mem, &[((1 << 16) - 8, 64)], 0, &mut out), Err(OutsideGuestMemory));
        assert_eq!(copy_from_guest(&mem, &[(u64::MAX - 4, 64)], 8, &mut out), Err(OutsideGuestMemory));
        // Nothing to copy is no access at all.
        assert_eq!(copy_from_guest(&mem, &[(1 << 40, 64)], 0, &mut []), Ok(()));
    }

    #[test]
    fn replies_are_written_into_one_segment_or_across_several_and_never_outside_memory() {
        let mem = GuestMemory::for_tests(1 << 16);
        let reply: Vec<u8> = (1..=12).collect();
        let read = |gpa: u64, n: usize| {
            let mut out = vec![0u8; n];
            copy_from_guest(&mem, &[(gpa, n as u32)], 0, &mut out).unwrap();
            out
        };
        copy_to_guest(&mem, &[(0x2000, 64)], 8, &reply).unwrap();
        assert_eq!(read(0x2000, 24), [vec![0; 8], reply.clone(), vec![0; 4]].concat());
        copy_to_guest(&mem, &[(0x3000, 5), (0x3100, 64)], 2, &reply).unwrap();
        assert_eq!(read(0x3000, 5), [vec![0; 2], reply[..3].to_vec()].concat());
        assert_eq!(read(0x3100, 10), [reply[3..].to_vec(), vec![0]].concat());
        assert_eq!(copy_to_guest(&mem, &[(0x1000, 8)], 0, &reply), Err(OutsideGuestMemory));
        assert_eq!(copy_to_guest(&mem, &[((1 << 16) - 4, 64)], 0, &reply), Err(OutsideGuestMemory));
        assert_eq!(copy_to_guest(&mem, &[(u64::MAX - 4, 64)], 8, &reply), Err(OutsideGuestMemory));
    }

    #[test]
    fn buffers_translate_to_one_iovec_per_region_and_never_outside_memory() {
        // Two regions, adjacent in guest memory, each a mapping of its own.
        let mem = GuestMemory::for_tests_regions(&[(0, 1 << 16), (1 << 16, 1 << 16)]);
        let host = |gpa: u64| mem.host_range(gpa, 1).unwrap() as usize;
        let iovs = |v: &Vec<libc::iovec>| v.iter().map(|i| (i.iov_base as usize, i.iov_len)).collect::<Vec<_>>();
        let mut out = Vec::new();
        // A header segment skipped, the data segment whole: one iovec, in place.
        assert!(translate(&mem, &[(0x100, 16), (0x2000, 4096)], 16, 4096, &mut out));
        assert_eq!(iovs(&out), vec![(host(0x2000), 4096)]);
        // Skipping into a segment, across two segments, zero-length segments ignored.
        assert!(translate(&mem, &[(0x100, 16), (0x3000, 0), (0x4000, 8)], 8, 16, &mut out));
        assert_eq!(iovs(&out), vec![(host(0x108), 8), (host(0x4000), 8)]);
        // A segment crossing the regions' border: one iovec in each mapping.
        assert!(translate(&mem, &[((1 << 16) - 512, 4096)], 0, 4096, &mut out));
        assert_eq!(iovs(&out), vec![(host((1 << 16) - 512), 512), (host(1 << 16), 3584)]);
        // Outside memory, past its end, wrapping, or segments shorter than asked: refused.
        assert!(!translate(&mem, &[(1 << 17, 512)], 0, 512, &mut out));
        assert!(!translate(&mem, &[((1 << 17) - 256, 512)], 0, 512, &mut out));
        assert!(!translate(&mem, &[(u64::MAX - 8, 64)], 16, 32, &mut out));
        assert!(!translate(&mem, &[(0x2000, 512)], 0, 1024, &mut out));
        // Nothing asked: nothing to translate, and no iovec.
        assert!(translate(&mem, &[(0x2000, 512)], 0, 0, &mut out));
        assert!(out.is_empty());
    }
}
