//! `DmaBuf`: an aligned, zero-initialised heap buffer that I/O can point into (O_DIRECT
//! bounces, tools, tests).

use std::alloc::Layout;

/// An aligned heap buffer. Its address never changes, so iovecs may point into it.
pub struct DmaBuf {
    ptr: *mut u8,
    len: usize,
    layout: Layout,
}

// SAFETY: DmaBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for DmaBuf {}

impl DmaBuf {
    /// `len` zeroed bytes aligned to `align` (a power of two); `None` if the allocation
    /// fails or the layout is invalid.
    pub fn new(len: usize, align: usize) -> Option<DmaBuf> {
        let layout = Layout::from_size_align(len.max(1), align.max(1)).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        (!ptr.is_null()).then_some(DmaBuf { ptr, len, layout })
    }

    /// The buffer's address.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The contents.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is a live allocation of at least `len` initialised (zeroed) bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The contents, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

/// Copies `data` into the buffers `iovs` describe, in order, stopping at whichever ends first;
/// returns the bytes copied.
///
/// # Safety
/// Every iovec must be valid for writes of `iov_len` bytes and not overlap `data`.
pub unsafe fn copy_to_iovecs(iovs: &[libc::iovec], mut data: &[u8]) -> usize {
    let mut done = 0;
    for v in iovs {
        if data.is_empty() {
            break;
        }
        let n = v.iov_len.min(data.len());
        // SAFETY: the caller guarantees the iovec is writable for iov_len >= n bytes.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), v.iov_base.cast::<u8>(), n) };
        data = &data[n..];
        done += n;
    }
    done
}

/// Copies the buffers `iovs` describe, in order, into `out`, stopping at whichever ends first;
/// returns the bytes copied.
///
/// # Safety
/// Every iovec must be valid for reads of `iov_len` bytes and not overlap `out`.
pub unsafe fn copy_from_iovecs(iovs: &[libc::iovec], mut out: &mut [u8]) -> usize {
    let mut done = 0;
    for v in iovs {
        if out.is_empty() {
            break;
        }
        let n = v.iov_len.min(out.len());
        // SAFETY: the caller guarantees the iovec is readable for iov_len >= n bytes.
        unsafe { std::ptr::copy_nonoverlapping(v.iov_base.cast::<u8>(), out.as_mut_ptr(), n) };
        out = &mut out[n..];
        done += n;
    }
    done
}
