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
