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

/// Copies `out.len()` bytes starting `skip` bytes into the segments.
pub fn copy_from_guest(
    mem: &GuestMemory,
    segs: &[(u64, u32)],
    skip: u64,
    out: &mut [u8],
) -> Result<(), OutsideGuestMemory> {
    let mut done = 0;
    for piece in pieces(segs, skip, out.len() as u64) {
        let (gpa, n) = piece?;
        let src = mem.host_range(gpa, n).map_err(|_| OutsideGuestMemory)?;
        // SAFETY: host_range checked that [src, src+n) lies inside the mapped guest memory;
        // `out[done..done+n]` exists (the pieces add up to at most out.len()). The guest may
        // change the bytes concurrently: we take a snapshot and validate that.
        unsafe { read_shared(src, &mut out[done..done + n as usize]) };
        done += n as usize;
    }
    if done == out.len() {
        Ok(())
    } else {
        Err(OutsideGuestMemory)
    }
}

/// Copies `data` into the segments, starting `skip` bytes in.
pub fn copy_to_guest(mem: &GuestMemory, segs: &[(u64, u32)], skip: u64, data: &[u8]) -> Result<(), OutsideGuestMemory> {
    let mut done = 0;
    for piece in pieces(segs, skip, data.len() as u64) {
        let (gpa, n) = piece?;
        let dst = mem.host_range(gpa, n).map_err(|_| OutsideGuestMemory)?;
        // SAFETY: host_range checked the destination lies inside the mapped guest memory;
        // `data[done..done+n]` exists (the pieces add up to at most data.len()).
        unsafe { write_shared(dst, &data[done..done + n as usize]) };
        done += n as usize;
    }
    if done == data.len() {
        Ok(())
    } else {
        Err(OutsideGuestMemory)
    }
}

/// Appends to `host` the host iovecs of `len` bytes of the segments, starting `skip` bytes
/// in. False if any part lies outside guest memory or the segments are too short.
pub fn translate(mem: &GuestMemory, segs: &[(u64, u32)], skip: u64, len: u64, host: &mut Vec<libc::iovec>) -> bool {
    host.clear();
    let mut done = 0;
    for piece in pieces(segs, skip, len) {
        let Ok((gpa, n)) = piece else { return false };
        if mem.iovecs(gpa, n, host).is_err() {
            return false;
        }
        done += n;
    }
    done == len
}
