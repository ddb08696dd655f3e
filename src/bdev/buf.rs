//! `DmaBuf`: an aligned, zero-initialised heap buffer that I/O can point into (O_DIRECT
//! bounces, tools, tests), and the copies of I/O data between buffers and iovecs.

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
        // SAFETY: the caller guarantees the iovec is writable for iov_len >= n bytes and
        // does not overlap `data`.
        unsafe { copy_bytes(v.iov_base.cast::<u8>(), data.as_ptr(), n) };
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
        // SAFETY: the caller guarantees the iovec is readable for iov_len >= n bytes and
        // does not overlap `out`.
        unsafe { copy_bytes(out.as_mut_ptr(), v.iov_base.cast::<u8>(), n) };
        out = &mut out[n..];
        done += n;
    }
    done
}

/// Copies of at least this many bytes take [`copy_bytes`]' vector loop (where the CPU has one).
const VECTOR_COPY_MIN: usize = 512;

/// Copies `n` bytes of I/O data (usually whole blocks) from `src` to `dst`.
///
/// Why not libc's `memcpy`: glibc copies anything from 2 KiB up to its non-temporal threshold
/// with `rep movsb` on CPUs that announce fast string moves (ERMS, FSRM). On this machine
/// class (AMD EPYC, Zen 3) that is the slower way to copy a 4 KiB block out of a large RAM
/// disk: ferry-bdevperf's 4 KiB random reads of a 512 MiB malloc bdev ran 9-12% faster with
/// glibc told not to (`GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=1000000`), and a
/// loop of 32-byte loads and stores does the same. Below [`VECTOR_COPY_MIN`] (headers,
/// sense data) and without AVX2, libc's copy is used.
///
/// # Safety
/// `src` must be readable and `dst` writable for `n` bytes, and they must not overlap.
#[inline]
pub unsafe fn copy_bytes(dst: *mut u8, src: *const u8, n: usize) {
    #[cfg(target_arch = "x86_64")]
    if n >= VECTOR_COPY_MIN && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked above); the rest is the caller's contract.
        return unsafe { copy_bytes_avx2(dst, src, n) };
    }
    // SAFETY: the caller's contract.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, n) };
}

/// [`copy_bytes`]' loop: 128 bytes at a time, all four loads before the stores (so that the
/// misses of a cold source are in flight together), then libc for the tail.
///
/// # Safety
/// As [`copy_bytes`], on a CPU with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn copy_bytes_avx2(dst: *mut u8, src: *const u8, n: usize) {
    use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_storeu_si256};
    const CHUNK: usize = 128;
    let mut at = 0;
    while at + CHUNK <= n {
        // SAFETY: bytes at..at + CHUNK lie inside both buffers (at + CHUNK <= n); unaligned
        // loads and stores have no alignment requirement.
        unsafe {
            let s = src.add(at).cast::<__m256i>();
            let d = dst.add(at).cast::<__m256i>();
            let (a, b, c, e) = (
                _mm256_loadu_si256(s),
                _mm256_loadu_si256(s.add(1)),
                _mm256_loadu_si256(s.add(2)),
                _mm256_loadu_si256(s.add(3)),
            );
            _mm256_storeu_si256(d, a);
            _mm256_storeu_si256(d.add(1), b);
            _mm256_storeu_si256(d.add(2), c);
            _mm256_storeu_si256(d.add(3), e);
        }
        at += CHUNK;
    }
    // SAFETY: the tail, at..n, lies inside both buffers.
    unsafe { std::ptr::copy_nonoverlapping(src.add(at), dst.add(at), n - at) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_bytes_copies_every_length_and_alignment_exactly() {
        let src: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in (0..=1100).chain([4096, 4096 + 31, 4999 - 64]) {
            for (so, dof) in [(0, 0), (1, 0), (0, 3), (33, 17)] {
                let mut dst = vec![0xAAu8; 5100];
                // SAFETY: both ranges lie inside their vectors, which do not overlap.
                unsafe { copy_bytes(dst.as_mut_ptr().add(dof), src.as_ptr().add(so), len) };
                assert_eq!(&dst[dof..dof + len], &src[so..so + len], "len {len} src+{so} dst+{dof}");
                assert!(dst[..dof].iter().chain(&dst[dof + len..]).all(|&b| b == 0xAA), "wrote outside: len {len}");
            }
        }
    }
}
