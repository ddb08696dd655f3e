//! `malloc`: a RAM disk. Data lives in an anonymous private mapping on huge pages, populated at
//! creation (as SPDK's malloc memory is real, and so a guest's writes never meet an OOM later);
//! reads and writes are `memcpy` on the reactor.

use super::format_params::*;
use super::{available_memory, delete_bdev, next_free_name};
use crate::bdev::{registry, BackendChannel, Bdev, BdevBackend, BdevError, BdevIo, BdevProps, IoStatus, IoType};
use crate::rpc::spdk_params::ParamType::Bool;
use crate::rpc::{parse, RpcError, RpcMethod, SpdkParam, I32, U32};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

/// The module's RPC methods.
pub const METHODS: &[RpcMethod] = &[
    RpcMethod::runtime("bdev_malloc_create", bdev_malloc_create).accepting(&[
        MD_SIZE,
        SpdkParam::any("md_interleave", Bool),
        DIF_TYPE,
        DIF_IS_HEAD_OF_MD,
        DIF_PI_FORMAT,
        // A hint to split I/O at this boundary: Ferry's RAM disk has no boundaries.
        SpdkParam::any("optimal_io_boundary", U32),
        // The NUMA node of the memory: Ferry takes it from the kernel's policy.
        SpdkParam::any("numa_id", I32),
    ]),
    RpcMethod::runtime("bdev_malloc_delete", bdev_malloc_delete),
];

/// An anonymous mapping owned by one malloc bdev.
struct Region {
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by the region; concurrent access from several
// reactors is the semantics of a disk (racing writes to one block leave one of them), done
// only through raw-pointer copies, never through Rust references.
unsafe impl Send for Region {}
// SAFETY: see Send: shared access is only through raw-pointer copies.
unsafe impl Sync for Region {}

impl Region {
    fn new(len: usize) -> std::io::Result<Region> {
        // SAFETY: an anonymous private mapping with no address hint touches no existing memory.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let region = Region { base: base.cast(), len };
        // Huge pages (as SPDK's hugepage memory): random I/O over a large disk would otherwise
        // miss the TLB on nearly every request. Advisory: without THP we still work.
        // SAFETY: advice on the mapping we just made.
        unsafe { libc::madvise(base, len, libc::MADV_HUGEPAGE) };
        // Populate now, writably, so memory is really there (a guest's write must never meet
        // an OOM later) and reads do not all land on the shared zero page.
        // SAFETY: as above; MADV_POPULATE_WRITE only faults in pages of our own mapping.
        if unsafe { libc::madvise(base, len, libc::MADV_POPULATE_WRITE) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(e);
            }
            // Kernels before 5.14 lack MADV_POPULATE_WRITE: touch one byte per page instead.
            for off in (0..len).step_by(4096) {
                // SAFETY: off < len, inside the mapping.
                unsafe { region.base.add(off).write_volatile(0) };
            }
        }
        Ok(region)
    }

    /// Zeroes `[offset, offset+len)`. With stores, not `MADV_DONTNEED`: the memory stays
    /// populated (a guest's later write must never meet an OOM or a page fault with huge-page
    /// compaction: an lvstore created with `clear_method` unmap did exactly that, 100x slower).
    fn zero(&self, offset: usize, len: usize) {
        // SAFETY: callers checked offset+len <= self.len: the range lies inside the mapping.
        unsafe { std::ptr::write_bytes(self.base.add(offset), 0, len) };
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: base/len are exactly the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// Most deallocated extents a malloc bdev remembers: a hostile pattern of alternating
/// unmaps cannot make the map grow without bound. Beyond it new holes are not recorded
/// (reported mapped: always a safe answer, the blocks read back as zeroes either way).
const MAX_HOLES: usize = 1 << 16;

/// Most chunks the write path's summary of holes has: at most 128 KiB of bits per bdev.
const MAX_CHUNKS: u64 = 1 << 20;

/// The blocks unmapped and not written since (for GET LBA STATUS): RAM stays allocated, but
/// an initiator that deallocated blocks (UNMAP, SANITIZE BLOCK ERASE) is told they are.
///
/// Every write must forget the holes it fills, so the write path first reads one bit per
/// chunk it touches (a chunk may hold a hole) and takes the lock only when one is set: a
/// bdev with holes somewhere (an lvstore's unused tail, say) costs writes elsewhere nothing.
struct Holes {
    /// One bit per chunk of `1 << chunk_shift` blocks, set while a hole may lie in it
    /// (changed only under `map`'s lock).
    chunks: Box<[std::sync::atomic::AtomicU64]>,
    chunk_shift: u32,
    /// Extents, start block -> end block (exclusive), disjoint and not adjacent.
    map: std::sync::Mutex<std::collections::BTreeMap<u64, u64>>,
}

impl Holes {
    /// The holes of a bdev of `num_blocks` blocks: none.
    fn new(num_blocks: u64) -> Self {
        let mut chunk_shift = 8;
        while num_blocks >> chunk_shift > MAX_CHUNKS {
            chunk_shift += 1;
        }
        let chunks = (num_blocks >> chunk_shift) + 1;
        Holes {
            chunks: (0..chunks.div_ceil(64)).map(|_| Default::default()).collect(),
            chunk_shift,
            map: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<u64, u64>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The chunks blocks `start..end` (non-empty) touch.
    fn chunks_of(&self, start: u64, end: u64) -> std::ops::RangeInclusive<u64> {
        (start >> self.chunk_shift)..=((end - 1) >> self.chunk_shift)
    }

    fn chunk_bit(&self, c: u64) -> (&std::sync::atomic::AtomicU64, u64) {
        (&self.chunks[(c / 64) as usize], 1 << (c % 64))
    }

    /// Whether a hole may lie in blocks `start..end`.
    fn may_have_holes(&self, start: u64, end: u64) -> bool {
        self.chunks_of(start, end).any(|c| {
            let (word, bit) = self.chunk_bit(c);
            word.load(std::sync::atomic::Ordering::Acquire) & bit != 0
        })
    }

    /// Blocks `start..end` are deallocated.
    fn punch(&self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        let mut m = self.lock();
        // Merge with every extent overlapping or adjacent.
        let touching: Vec<(u64, u64)> =
            m.range(..=end).rev().take_while(|&(_, &e)| e >= start).map(|(&s, &e)| (s, e)).collect();
        if touching.is_empty() && m.len() >= MAX_HOLES {
            return;
        }
        for (s, e) in touching {
            m.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        m.insert(start, end);
        for c in self.chunks_of(start, end) {
            let (word, bit) = self.chunk_bit(c);
            word.fetch_or(bit, std::sync::atomic::Ordering::Release);
        }
    }

    /// Blocks `start..end` hold data again.
    fn fill(&self, start: u64, end: u64) {
        if start >= end || !self.may_have_holes(start, end) {
            return;
        }
        let mut m = self.lock();
        let overlapping: Vec<(u64, u64)> =
            m.range(..end).rev().take_while(|&(_, &e)| e > start).map(|(&s, &e)| (s, e)).collect();
        for (s, e) in overlapping {
            m.remove(&s);
            if s < start {
                m.insert(s, start);
            }
            if e > end {
                m.insert(end, e);
            }
        }
        // Clear the bits of the chunks no hole is left in.
        for c in self.chunks_of(start, end) {
            let (lo, hi) = (c << self.chunk_shift, (c + 1) << self.chunk_shift);
            let holed = m.range(..hi).next_back().is_some_and(|(_, &e)| e > lo);
            if !holed {
                let (word, bit) = self.chunk_bit(c);
                word.fetch_and(!bit, std::sync::atomic::Ordering::Release);
            }
        }
    }

    /// Whether block `lba` is allocated, and for how many blocks (at most `max`) that holds.
    fn run(&self, lba: u64, max: u64) -> (bool, u64) {
        let m = self.lock();
        if let Some((_, &e)) = m.range(..=lba).next_back().filter(|&(_, &e)| e > lba) {
            return (false, (e - lba).min(max));
        }
        let next = m.range(lba..).next().map_or(u64::MAX, |(&s, _)| s);
        (true, (next - lba).min(max))
    }
}

/// Copies `n` bytes from `src` to `dst` for a write: whole 64-byte lines with non-temporal
/// stores where `dst` is 64-byte aligned, the copy at least a page and the CPU has AVX-512
/// (one store per line) or AVX2 (two per line). A RAM disk's written data is seldom read back
/// soon, and a cached copy first reads every line it writes (read-for-ownership): measured
/// here, streaming makes a 4 KiB random write to a large malloc bdev about 40% cheaper.
///
/// # Safety
/// `src` must be readable and `dst` writable for `n` bytes, and they must not overlap.
unsafe fn stream_copy(dst: *mut u8, src: *const u8, n: usize) {
    #[cfg(target_arch = "x86_64")]
    if n >= 4096 && (dst as usize).is_multiple_of(64) {
        let lines = n / 64;
        let streamed = if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked above), dst is 64-byte aligned and both
            // buffers hold `lines` whole lines (the caller's contract, lines * 64 <= n).
            unsafe { stream_lines_avx512(dst, src, lines) };
            true
        } else if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: as above, with AVX2.
            unsafe { stream_lines_avx2(dst, src, lines) };
            true
        } else {
            false
        };
        if streamed {
            // SAFETY: the tail, after the whole lines, lies inside both buffers.
            unsafe { std::ptr::copy_nonoverlapping(src.add(64 * lines), dst.add(64 * lines), n - 64 * lines) };
            // The streaming stores are weakly ordered: they must be fenced before anything
            // tells another thread the write is done. That is the I/O's completion, which runs
            // from the thread's completion queue, so one fence there covers every write of the
            // batch; a fence here made the next store wait for this write's 4 KiB to reach
            // memory.
            crate::bdev::io::fence_streaming_stores_before_completions();
            return;
        }
    }
    // SAFETY: the caller's contract.
    unsafe { crate::bdev::buf::copy_bytes(dst, src, n) };
}

/// [`stream_copy`]'s AVX2 loop: a line is two 32-byte streaming stores, which the CPU's
/// write-combining buffer joins into one full-line write.
///
/// # Safety
/// `src` readable and `dst` (64-byte aligned) writable for `lines` 64-byte lines, not
/// overlapping, on a CPU with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn stream_lines_avx2(dst: *mut u8, src: *const u8, lines: usize) {
    use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_stream_si256};
    for l in 0..lines {
        // SAFETY: line l lies inside both buffers (l < lines), and dst + 64 * l is 64-byte
        // aligned as dst is (so both halves are 32-byte aligned, as streaming needs).
        unsafe {
            let s = src.add(64 * l).cast::<__m256i>();
            let d = dst.add(64 * l).cast::<__m256i>();
            let (a, b) = (_mm256_loadu_si256(s), _mm256_loadu_si256(s.add(1)));
            _mm256_stream_si256(d, a);
            _mm256_stream_si256(d.add(1), b);
        }
    }
}

/// [`stream_copy`]'s AVX-512 loop: one streaming store per line.
///
/// # Safety
/// As [`stream_lines_avx2`], on a CPU with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn stream_lines_avx512(dst: *mut u8, src: *const u8, lines: usize) {
    use std::arch::x86_64::{_mm512_loadu_si512, _mm512_stream_si512};
    for l in 0..lines {
        // SAFETY: line l lies inside both buffers (l < lines), and dst + 64 * l is 64-byte
        // aligned as dst is.
        unsafe {
            let v = _mm512_loadu_si512(src.add(64 * l).cast());
            _mm512_stream_si512(dst.add(64 * l).cast(), v);
        }
    }
}

struct MallocBackend {
    region: std::sync::Arc<Region>,
    holes: std::sync::Arc<Holes>,
    /// The physical block size reported (SPDK's `physical_block_size`): RAM has no physical
    /// blocks, so this is only what the bdev tells its users (e.g. SCSI's LBPPBE).
    physical_block_size: Option<u32>,
}

struct MallocChannel {
    region: std::sync::Arc<Region>,
    holes: std::sync::Arc<Holes>,
}

impl BackendChannel for MallocChannel {
    fn submit(&self, io: Box<BdevIo>) {
        // The core validated the range against the bdev, and the bdev's size is the region's.
        let offset = io.offset_bytes() as usize;
        let len = io.len_bytes() as usize;
        debug_assert!(offset + len <= self.region.len);
        match io.io_type {
            IoType::Read => {
                // SAFETY: [offset, offset+len) is inside the region (validated range), which
                // this channel keeps alive, and the I/O holds the channel until its callback.
                return unsafe { io.complete_with_copy(self.region.base.add(offset), len) };
            }
            IoType::Write => {
                let mut at = offset;
                for v in io.iovs() {
                    let n = v.iov_len.min(offset + len - at);
                    // SAFETY: [at, at+n) lies inside [offset, offset+len), inside the region
                    // (validated range); the iovec is readable for iov_len >= n bytes
                    // (push_iov's contract) and is the submitter's memory, not the region's.
                    unsafe { stream_copy(self.region.base.add(at), v.iov_base.cast::<u8>(), n) };
                    at += n;
                }
                self.holes.fill(io.offset_blocks, io.offset_blocks + io.num_blocks);
            }
            IoType::Unmap => {
                self.region.zero(offset, len);
                self.holes.punch(io.offset_blocks, io.offset_blocks + io.num_blocks);
            }
            IoType::WriteZeroes => {
                self.region.zero(offset, len);
                self.holes.fill(io.offset_blocks, io.offset_blocks + io.num_blocks);
            }
            IoType::Flush | IoType::Reset => {}
        }
        io.complete(IoStatus::Success);
    }
}

impl BdevBackend for MallocBackend {
    fn module(&self) -> &'static str {
        "malloc"
    }

    fn physical_block_size(&self) -> Option<u32> {
        self.physical_block_size
    }

    fn product_name(&self) -> &'static str {
        "Malloc disk"
    }

    fn supports(&self, _io_type: IoType) -> bool {
        true
    }

    fn supports_every_io_type(&self) -> bool {
        true
    }

    fn create_channel(&self, _bdev: &Bdev) -> Result<Box<dyn BackendChannel>, BdevError> {
        Ok(Box::new(MallocChannel { region: self.region.clone(), holes: self.holes.clone() }))
    }

    fn allocation_run(&self, offset_blocks: u64, max_blocks: u64) -> Option<(bool, u64)> {
        Some(self.holes.run(offset_blocks, max_blocks))
    }

    fn config(&self, bdev: &Bdev) -> Option<(&'static str, Value)> {
        Some((
            "bdev_malloc_create",
            json!({
                "name": bdev.name(),
                "num_blocks": bdev.num_blocks(),
                "block_size": bdev.block_size(),
                "physical_block_size": bdev.physical_block_size(),
                "uuid": bdev.uuid().to_string(),
            }),
        ))
    }
}

/// Creates a malloc bdev of `num_blocks` x `block_size` bytes.
pub fn create(name: &str, num_blocks: u64, block_size: u32, uuid: Option<Uuid>) -> Result<Bdev, BdevError> {
    create_with_physical(name, num_blocks, block_size, 0, uuid)
}

/// Creates a malloc bdev of `num_blocks` x `block_size` bytes whose physical blocks are
/// `physical_block_size` bytes (0: the block size), as SPDK's `bdev_malloc_create` does.
pub fn create_with_physical(
    name: &str,
    num_blocks: u64,
    block_size: u32,
    physical_block_size: u32,
    uuid: Option<Uuid>,
) -> Result<Bdev, BdevError> {
    registry::validate_name(name)?;
    registry::validate_geometry(block_size, num_blocks)?;
    let physical_block_size = match physical_block_size {
        0 => None,
        p if p == block_size => None,
        // SPDK: a multiple of the block size. SCSI reports the ratio as a 4-bit exponent.
        p if p > block_size && p.is_power_of_two() && p / block_size <= 1 << 15 => Some(p),
        p => {
            return Err(BdevError::InvalidParam(format!(
                "physical_block_size {p} must be a power of two multiple of block_size {block_size} \
                 (at most 2^15 blocks)"
            )))
        }
    };
    let bytes = num_blocks * block_size as u64;
    if let Some(avail) = available_memory() {
        if bytes > avail {
            return Err(BdevError::NoMemory(format!(
                "malloc bdev {name} needs {bytes} bytes but only {avail} bytes of memory are available"
            )));
        }
    }
    if registry::get(name).is_some() {
        return Err(BdevError::AlreadyExists(name.to_string()));
    }
    let region =
        Region::new(bytes as usize).map_err(|e| BdevError::os(format!("mapping {bytes} bytes for {name}"), e))?;
    let backend = MallocBackend {
        region: std::sync::Arc::new(region),
        holes: std::sync::Arc::new(Holes::new(num_blocks)),
        physical_block_size,
    };
    registry::register(BdevProps { name: name.to_string(), uuid, block_size, num_blocks }, Box::new(backend))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateParams {
    name: Option<String>,
    num_blocks: u64,
    block_size: u32,
    #[serde(default)]
    physical_block_size: u32,
    uuid: Option<Uuid>,
}

fn bdev_malloc_create(params: Option<Value>) -> Result<Value, RpcError> {
    let p: CreateParams = parse(params)?;
    let name = p.name.unwrap_or_else(|| next_free_name("Malloc"));
    let bdev = create_with_physical(&name, p.num_blocks, p.block_size, p.physical_block_size, p.uuid)?;
    Ok(json!(bdev.name()))
}

fn bdev_malloc_delete(params: Option<Value>) -> Result<Value, RpcError> {
    delete_bdev(params, "malloc")
}

#[cfg(test)]
mod copy_tests {
    #[test]
    fn stream_copy_copies_every_byte_aligned_or_not() {
        let src: Vec<u8> = (0..3 * 4096 + 77).map(|i| (i * 7 + 3) as u8).collect();
        let mut dst = vec![0u8; src.len() + 128];
        let aligned = dst.as_ptr().align_offset(64);
        for (skew, n) in [(0, src.len()), (0, 4096), (1, 4096 + 5), (0, 100)] {
            dst.fill(0);
            let at = aligned + skew;
            // SAFETY: both buffers hold at + n bytes and do not overlap.
            unsafe { super::stream_copy(dst.as_mut_ptr().add(at), src.as_ptr(), n) };
            assert_eq!(&dst[at..at + n], &src[..n], "skew {skew}, {n} bytes");
            assert!(dst[..at].iter().chain(&dst[at + n..]).all(|&b| b == 0), "nothing outside");
        }
    }
}

#[cfg(test)]
mod hole_tests {
    use super::{Holes, MAX_CHUNKS};

    #[test]
    fn holes_merge_split_and_report_runs() {
        let h = Holes::new(100_000);
        assert_eq!(h.run(0, 100), (true, 100), "nothing unmapped");
        h.punch(10, 20);
        h.punch(20, 30); // adjacent: merged
        h.punch(50, 60);
        assert_eq!(h.run(0, 100), (true, 10));
        assert_eq!(h.run(15, 100), (false, 15));
        assert_eq!(h.run(30, 100), (true, 20));
        h.fill(12, 14); // splits the hole
        assert_eq!(h.run(10, 100), (false, 2));
        assert_eq!(h.run(12, 100), (true, 2));
        assert_eq!(h.run(14, 100), (false, 16));
        h.punch(0, 100); // swallows everything
        assert_eq!(h.run(0, 1000), (false, 100));
        h.fill(0, 100);
        assert_eq!(h.run(0, 1000), (true, 1000));
        assert!(!h.may_have_holes(0, 100_000), "no holes left");
    }

    #[test]
    fn the_chunk_summary_tells_writes_where_holes_may_be() {
        let h = Holes::new(1 << 20); // 4096 chunks of 256 blocks
        h.punch(1000, 1010);
        assert!(h.may_have_holes(1005, 1006));
        assert!(h.may_have_holes(768, 1024), "same chunk: checked under the lock");
        assert!(!h.may_have_holes(0, 768) && !h.may_have_holes(1024, 1 << 20));
        h.fill(1000, 1005);
        assert!(h.may_have_holes(1005, 1010), "a hole is left in the chunk");
        assert_eq!(h.run(1005, 100), (false, 5));
        h.fill(1005, 1010);
        assert!(!h.may_have_holes(0, 1 << 20), "the last hole in the chunk went");
        // A hole over several chunks, partly filled: only the emptied chunks clear.
        h.punch(0, 2048);
        h.fill(0, 1024);
        assert!(!h.may_have_holes(0, 1024) && h.may_have_holes(1024, 2048));
        assert_eq!(h.run(0, 5000), (true, 1024));
        // A bdev too large for 256-block chunks gets larger ones.
        let big = Holes::new(1 << 40);
        assert!(big.chunks.len() as u64 * 64 <= 2 * MAX_CHUNKS);
        big.punch((1 << 40) - 8, 1 << 40);
        assert!(big.may_have_holes((1 << 40) - 1, 1 << 40) && !big.may_have_holes(0, 1 << 30));
    }
}
