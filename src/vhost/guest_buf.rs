//! Moving bytes between Ferry and a request's guest buffers, given as (guest-physical
//! address, length) segments: bounds-checked copies for headers and small replies, and
//! translation to host iovecs for zero-copy data.

use super::memory::GuestMemory;

/// A request's segments reach outside guest memory (or are too short for the copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("request buffer outside guest memory")]
pub struct OutsideGuestMemory;

/// Copies `out.len()` bytes starting `skip` bytes into the segments.
pub fn copy_from_guest(
    mem: &GuestMemory,
    segs: &[(u64, u32)],
    mut skip: u64,
    out: &mut [u8],
) -> Result<(), OutsideGuestMemory> {
    let mut done = 0;
    for &(gpa, len) in segs {
        if done == out.len() {
            break;
        }
        let len = len as u64;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = ((len - skip) as usize).min(out.len() - done);
        let src = mem
            .host_range(gpa.checked_add(skip).ok_or(OutsideGuestMemory)?, n as u64)
            .map_err(|_| OutsideGuestMemory)?;
        // SAFETY: host_range checked that [src, src+n) lies inside the mapped guest memory;
        // `out[done..done+n]` is ours. The guest may change the bytes concurrently: we take a
        // snapshot and validate that, never the live memory.
        unsafe { std::ptr::copy_nonoverlapping(src, out[done..].as_mut_ptr(), n) };
        done += n;
        skip = 0;
    }
    if done == out.len() {
        Ok(())
    } else {
        Err(OutsideGuestMemory)
    }
}

/// Copies `data` into the segments, starting `skip` bytes in.
pub fn copy_to_guest(
    mem: &GuestMemory,
    segs: &[(u64, u32)],
    mut skip: u64,
    data: &[u8],
) -> Result<(), OutsideGuestMemory> {
    let mut done = 0;
    for &(gpa, len) in segs {
        if done == data.len() {
            break;
        }
        let len = len as u64;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = ((len - skip) as usize).min(data.len() - done);
        let dst = mem
            .host_range(gpa.checked_add(skip).ok_or(OutsideGuestMemory)?, n as u64)
            .map_err(|_| OutsideGuestMemory)?;
        skip = 0;
        // SAFETY: host_range checked the destination lies inside the mapped guest memory.
        unsafe { std::ptr::copy_nonoverlapping(data[done..].as_ptr(), dst, n) };
        done += n;
    }
    if done == data.len() {
        Ok(())
    } else {
        Err(OutsideGuestMemory)
    }
}

/// Appends to `host` the host iovecs of `len` bytes of the segments, starting `skip` bytes
/// in. False if any part lies outside guest memory or the segments are too short.
pub fn translate(
    mem: &GuestMemory,
    segs: &[(u64, u32)],
    mut skip: u64,
    mut len: u64,
    host: &mut Vec<libc::iovec>,
) -> bool {
    host.clear();
    for &(gpa, seg_len) in segs {
        if len == 0 {
            break;
        }
        let seg_len = seg_len as u64;
        if skip >= seg_len {
            skip -= seg_len;
            continue;
        }
        let n = (seg_len - skip).min(len);
        let Some(start) = gpa.checked_add(skip) else { return false };
        if mem.iovecs(start, n, host).is_err() {
            return false;
        }
        len -= n;
        skip = 0;
    }
    len == 0
}
