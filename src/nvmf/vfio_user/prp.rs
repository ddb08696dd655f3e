//! Physical Region Page lists (NVMe Base 2.0 §4.1.1): a command's data buffer as PRP1, PRP2
//! and PRP list pages in guest memory, turned into host iovecs that point into the mapped
//! guest memory (zero copy).
//!
//! Every entry is checked before it is used: the first entry's offset dword aligned, every
//! later one page aligned, list pointers quadword aligned, each page inside memory the
//! client mapped (writable when the device writes it), and the walk bounded by the
//! transfer's length: a list that points back at itself or runs past the transfer ends in
//! an error status, never a loop or an access outside guest memory.

use crate::vfio_user::{BadAddress, DmaTable};
use crate::vhost::memory::read_shared;
use ferry_nvme::spec::{sc, Status};

/// The memory page size (CC.MPS 0).
pub const PAGE: u64 = 4096;
/// PRP entries in one list page.
const ENTRIES_PER_PAGE: usize = (PAGE / 8) as usize;

/// Guest memory as the walker sees it.
pub trait GuestMemory {
    /// Appends iovecs covering `gpa..gpa+len` (nothing on error).
    fn iovecs(&self, gpa: u64, len: u64, write: bool, out: &mut Vec<libc::iovec>) -> Result<(), BadAddress>;
    /// Reads `out.len()` little-endian quadwords at `gpa`.
    fn read_u64s(&self, gpa: u64, out: &mut [u64]) -> Result<(), BadAddress>;
}

impl GuestMemory for DmaTable {
    fn iovecs(&self, gpa: u64, len: u64, write: bool, out: &mut Vec<libc::iovec>) -> Result<(), BadAddress> {
        DmaTable::iovecs(self, gpa, len, write, out)
    }

    fn read_u64s(&self, gpa: u64, out: &mut [u64]) -> Result<(), BadAddress> {
        let len = (out.len() * 8) as u64;
        let host = self.translate(gpa, len, false)?;
        let mut bytes = [0u8; PAGE as usize];
        let bytes = &mut bytes[..len as usize];
        // SAFETY: translate checked that gpa..gpa+len lies in one mapped region, which this
        // table keeps mapped while it lives (it is borrowed for the call).
        unsafe { read_shared(host, bytes) };
        for (o, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
            *o = u64::from_le_bytes(b.try_into().expect("8 bytes"));
        }
        Ok(())
    }
}

fn offset_invalid() -> Status {
    Status::generic(sc::PRP_OFFSET_INVALID).dnr()
}

fn transfer_error(_: BadAddress) -> Status {
    Status::generic(sc::DATA_TRANSFER_ERROR).dnr()
}

/// Appends iovecs for the `len` bytes PRP1/PRP2 describe (`write`: the device writes them).
/// On error `out` may hold part of the buffer; the caller discards it.
pub fn map_prps(
    mem: &impl GuestMemory,
    prp1: u64,
    prp2: u64,
    len: u64,
    write: bool,
    out: &mut Vec<libc::iovec>,
) -> Result<(), Status> {
    if len == 0 {
        return Ok(());
    }
    let off = prp1 % PAGE;
    if off & 3 != 0 {
        return Err(offset_invalid());
    }
    let first = len.min(PAGE - off);
    mem.iovecs(prp1, first, write, out).map_err(transfer_error)?;
    let mut left = len - first;
    if left == 0 {
        return Ok(());
    }
    if left <= PAGE {
        // PRP2 is the second (and last) page.
        if !prp2.is_multiple_of(PAGE) {
            return Err(offset_invalid());
        }
        return mem.iovecs(prp2, left, write, out).map_err(transfer_error);
    }
    // PRP2 points at a list; a list page's last entry chains to the next list page when
    // more entries are needed than the page holds.
    if prp2 & 7 != 0 {
        return Err(offset_invalid());
    }
    let mut list = prp2;
    let mut entries = [0u64; ENTRIES_PER_PAGE];
    // Each list page yields at least one data page, so this many pages at most.
    let mut pages_allowed = left.div_ceil(PAGE);
    while left > 0 {
        if pages_allowed == 0 {
            return Err(offset_invalid());
        }
        pages_allowed -= 1;
        let in_page = ((PAGE - list % PAGE) / 8) as usize;
        let data_pages = left.div_ceil(PAGE) as usize;
        let chained = data_pages > in_page;
        let (n_data, n_read) = if chained { (in_page - 1, in_page) } else { (data_pages, data_pages) };
        if n_data == 0 {
            // A list page with nothing but a pointer to the next: never needed, and the way
            // a loop would be built.
            return Err(offset_invalid());
        }
        mem.read_u64s(list, &mut entries[..n_read]).map_err(transfer_error)?;
        for &e in &entries[..n_data] {
            if !e.is_multiple_of(PAGE) {
                return Err(offset_invalid());
            }
            let n = left.min(PAGE);
            mem.iovecs(e, n, write, out).map_err(transfer_error)?;
            left -= n;
        }
        if chained {
            list = entries[in_page - 1];
            if list & 7 != 0 {
                return Err(offset_invalid());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Guest memory as a flat byte array at address 0, for tests and the fuzz target.
    pub(crate) struct Flat(pub RefCell<Vec<u8>>);

    impl GuestMemory for Flat {
        fn iovecs(&self, gpa: u64, len: u64, _write: bool, out: &mut Vec<libc::iovec>) -> Result<(), BadAddress> {
            let mem = self.0.borrow();
            let end = gpa.checked_add(len).filter(|&e| e <= mem.len() as u64).ok_or(BadAddress { gpa, len })?;
            let _ = end;
            out.push(libc::iovec {
                iov_base: (mem.as_ptr() as usize + gpa as usize) as *mut libc::c_void,
                iov_len: len as usize,
            });
            Ok(())
        }

        fn read_u64s(&self, gpa: u64, out: &mut [u64]) -> Result<(), BadAddress> {
            let mem = self.0.borrow();
            let len = out.len() as u64 * 8;
            let end = gpa.checked_add(len).filter(|&e| e <= mem.len() as u64).ok_or(BadAddress { gpa, len })?;
            for (i, o) in out.iter_mut().enumerate() {
                let at = gpa as usize + i * 8;
                *o = u64::from_le_bytes(mem[at..at + 8].try_into().unwrap());
            }
            let _ = end;
            Ok(())
        }
    }

    fn put(m: &Flat, at: u64, v: u64) {
        m.0.borrow_mut()[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
    }

    fn total(v: &[libc::iovec]) -> usize {
        v.iter().map(|i| i.iov_len).sum()
    }

    #[test]
    fn one_and_two_pages_and_lists() {
        let m = Flat(RefCell::new(vec![0; 64 * 4096]));
        let mut v = Vec::new();
        map_prps(&m, 0x1100, 0, 0x100, false, &mut v).unwrap();
        assert_eq!(total(&v), 0x100);
        v.clear();
        // Crossing into a second page through PRP2.
        map_prps(&m, 0x1800, 0x5000, 0x1000, false, &mut v).unwrap();
        assert_eq!((v[0].iov_len, v[1].iov_len), (0x800, 0x800));
        v.clear();
        assert_eq!(map_prps(&m, 0x1800, 0x5008, 0x1000, false, &mut v).unwrap_err().sc, sc::PRP_OFFSET_INVALID);
        // A list at 0x3000 with three data pages.
        for (i, p) in [0x8000u64, 0x9000, 0xa000].iter().enumerate() {
            put(&m, 0x3000 + 8 * i as u64, *p);
        }
        v.clear();
        map_prps(&m, 0x7000, 0x3000, 0x4000, true, &mut v).unwrap();
        assert_eq!(total(&v), 0x4000);
        assert_eq!(v.len(), 4);
        // A misaligned data entry.
        put(&m, 0x3008, 0x9010);
        v.clear();
        assert_eq!(map_prps(&m, 0x7000, 0x3000, 0x4000, true, &mut v).unwrap_err().sc, sc::PRP_OFFSET_INVALID);
        // A data page outside memory.
        put(&m, 0x3008, 1 << 40);
        v.clear();
        assert_eq!(map_prps(&m, 0x7000, 0x3000, 0x4000, true, &mut v).unwrap_err().sc, sc::DATA_TRANSFER_ERROR);
        // The first entry's offset must be dword aligned.
        assert_eq!(map_prps(&m, 0x7001, 0, 8, true, &mut v).unwrap_err().sc, sc::PRP_OFFSET_INVALID);
    }

    #[test]
    fn chained_lists_are_followed_and_loops_end() {
        let m = Flat(RefCell::new(vec![0; 2048 * 4096]));
        // 600 data pages after PRP1: the first list page holds 511 and a chain pointer.
        for i in 0..511u64 {
            put(&m, 0x10000 + 8 * i, 0x100000 + 0x1000 * i);
        }
        put(&m, 0x10000 + 8 * 511, 0x20000);
        for i in 0..89u64 {
            put(&m, 0x20000 + 8 * i, 0x400000 + 0x1000 * i);
        }
        let mut v = Vec::new();
        map_prps(&m, 0x5000, 0x10000, 601 * 4096, false, &mut v).unwrap();
        assert_eq!(total(&v), 601 * 4096);
        // A chain pointing back at its own page: the walk is bounded by the transfer (it
        // reads the same list page again, as a host may, and stops at the length).
        put(&m, 0x10000 + 8 * 511, 0x10000);
        v.clear();
        map_prps(&m, 0x5000, 0x10000, 2000 * 4096, false, &mut v).unwrap();
        assert_eq!(total(&v), 2000 * 4096);
        // A list starting at the last quadword of a page holds only a chain pointer.
        put(&m, 0x30ff8, 0x30ff8);
        v.clear();
        assert_eq!(map_prps(&m, 0x5000, 0x30ff8, 3 * 4096, false, &mut v).unwrap_err().sc, sc::PRP_OFFSET_INVALID);
    }
}
