//! Data buffers of commands (iSCSI, NVMe/TCP): aligned (O_DIRECT bdevs use them in place), pooled per
//! reactor by power-of-two size class so a command in steady state allocates nothing, and
//! shared (`Rc`) between a command and the data PDUs that send from it without a copy.

use crate::bdev::buf::DmaBuf;
use std::cell::RefCell;
use std::rc::Rc;

/// Alignment of every buffer (the largest logical block size a bdev may have).
const ALIGN: usize = 4096;
/// Smallest class.
const MIN_CLASS: usize = 4096;
/// Buffers kept per class for reuse.
const KEEP_PER_CLASS: usize = 256;
/// Classes up to 2^CLASSES * MIN_CLASS.
const CLASSES: usize = 16;

thread_local! {
    static POOL: RefCell<Vec<Vec<DmaBuf>>> = RefCell::new((0..CLASSES).map(|_| Vec::new()).collect());
}

fn class_of(len: usize) -> Option<(usize, usize)> {
    let size = len.max(MIN_CLASS).checked_next_power_of_two()?;
    let class = (size / MIN_CLASS).trailing_zeros() as usize;
    (class < CLASSES).then_some((class, size))
}

/// A command's data buffer of `len` bytes (its allocation may be larger).
pub struct DataBuf {
    buf: Option<DmaBuf>,
    len: usize,
    class: Option<usize>,
}

impl DataBuf {
    /// A buffer for `len` bytes, from the pool when one is free; None if the allocation fails.
    pub fn get(len: usize) -> Option<DataBuf> {
        let Some((class, size)) = class_of(len) else {
            return DmaBuf::new(len, ALIGN).map(|b| DataBuf { buf: Some(b), len, class: None });
        };
        let pooled = POOL.with(|p| p.borrow_mut()[class].pop());
        let buf = match pooled {
            Some(b) => b,
            None => DmaBuf::new(size, ALIGN)?,
        };
        Some(DataBuf { buf: Some(buf), len, class: Some(class) })
    }

    /// The usable length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Its start.
    pub fn as_ptr(&self) -> *mut u8 {
        self.buf.as_ref().expect("present until dropped").as_ptr()
    }

    /// The bytes (only while no I/O writes into them: the caller's ordering).
    pub fn as_slice(&self) -> &[u8] {
        &self.buf.as_ref().expect("present until dropped").as_slice()[..self.len]
    }
}

impl Drop for DataBuf {
    fn drop(&mut self) {
        if let (Some(class), Some(b)) = (self.class, self.buf.take()) {
            // try_with: a buffer dropped during thread exit just frees.
            let _ = POOL.try_with(|p| {
                let mut p = p.borrow_mut();
                if p[class].len() < KEEP_PER_CLASS {
                    p[class].push(b);
                }
            });
        }
    }
}

/// A shared buffer.
pub type SharedBuf = Rc<DataBuf>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_reused_and_sized_by_class() {
        let a = DataBuf::get(5000).unwrap();
        assert_eq!(a.len(), 5000);
        assert_eq!(a.as_ptr() as usize % ALIGN, 0);
        let p = a.as_ptr();
        drop(a);
        let b = DataBuf::get(8192).unwrap();
        assert_eq!(b.as_ptr(), p, "the 8 KiB class buffer is reused");
        assert!(class_of(usize::MAX).is_none());
    }
}
