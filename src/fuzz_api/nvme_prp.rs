//! The PRP walker of the VFIOUSER transport (`nvmf::vfio_user::prp::map_prps`) over guest
//! memory the input makes: PRP1, PRP2 and a transfer length from the input, PRP list pages
//! from its memory image. Whatever it walks, every iovec it returns lies inside the memory,
//! they add up to exactly the length when it succeeds, and the walk ends.

use super::Input;
use crate::nvmf::vfio_user::prp::{map_prps, GuestMemory};
use crate::vfio_user::BadAddress;

/// Guest memory: the input's image at guest address `base`.
struct Image<'a> {
    base: u64,
    bytes: &'a [u8],
}

impl Image<'_> {
    fn offset(&self, gpa: u64, len: u64) -> Result<usize, BadAddress> {
        let bad = BadAddress { gpa, len };
        let off = gpa.checked_sub(self.base).ok_or(bad)?;
        let end = off.checked_add(len).ok_or(bad)?;
        if end > self.bytes.len() as u64 {
            return Err(bad);
        }
        Ok(off as usize)
    }
}

impl GuestMemory for Image<'_> {
    fn iovecs(&self, gpa: u64, len: u64, _write: bool, out: &mut Vec<libc::iovec>) -> Result<(), BadAddress> {
        let off = self.offset(gpa, len)?;
        out.push(libc::iovec {
            iov_base: (self.bytes.as_ptr() as usize + off) as *mut libc::c_void,
            iov_len: len as usize,
        });
        Ok(())
    }

    fn read_u64s(&self, gpa: u64, out: &mut [u64]) -> Result<(), BadAddress> {
        let off = self.offset(gpa, out.len() as u64 * 8)?;
        for (i, o) in out.iter_mut().enumerate() {
            let at = off + 8 * i;
            *o = u64::from_le_bytes(self.bytes[at..at + 8].try_into().expect("8 bytes"));
        }
        Ok(())
    }
}

/// Input: PRP1 and PRP2 (u32 page numbers and a u16 offset each, so they land in or near the
/// image), a u32 length (up to 2 MiB), a u8 write flag, then the memory image (at guest
/// address 0x10000). Returns the bytes mapped.
pub fn nvme_prp(data: &[u8]) -> u64 {
    let mut input = Input(data);
    let base = 0x10000u64;
    let prp1 = ((input.u16() as u64) << 12) + input.u16() as u64;
    let prp2 = ((input.u16() as u64) << 12) + input.u16() as u64;
    let len = (input.u32() % (2 << 20)) as u64;
    let write = input.u8() & 1 != 0;
    let bytes = input.rest();
    let mem = Image { base, bytes };
    let mut out = Vec::new();
    let start = bytes.as_ptr() as usize;
    let end = start + bytes.len();
    match map_prps(&mem, prp1, prp2, len, write, &mut out) {
        Ok(()) => {
            assert_eq!(out.iter().map(|i| i.iov_len as u64).sum::<u64>(), len, "the whole transfer");
        }
        Err(s) => assert!(!s.is_success()),
    }
    for iov in &out {
        let a = iov.iov_base as usize;
        assert!(a >= start && a + iov.iov_len <= end, "an iovec outside guest memory");
    }
    out.iter().map(|i| i.iov_len as u64).sum()
}
