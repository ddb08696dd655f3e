//! Cache prefetch hints for the data path.

/// Asks the CPU to start loading the cache line at `p` (a hint: never faults, whatever `p`).
#[inline(always)]
pub fn line(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch only hints the cache; it dereferences nothing and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Asks the CPU to start loading every cache line of `p..p+len`.
#[inline(always)]
pub fn read_lines(p: *const u8, len: usize) {
    let mut at = 0;
    while at < len {
        line(p.wrapping_add(at));
        at += 64;
    }
}
