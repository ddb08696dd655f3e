//! A SIGBUS safety net for guest memory a frontend can shrink under us.
//!
//! A file behind a guest memory region (hugetlbfs, tmpfs, a plain file) can be truncated by
//! the frontend after we mapped it; touching a page past the new end raises SIGBUS, which
//! would kill the daemon and every VM it serves. Memfds are refused unless sealed against
//! shrinking (see [`super::memory`]), but hugetlbfs files (QEMU's usual
//! `memory-backend-file`) cannot be sealed at all. So every mapped region is registered here;
//! a SIGBUS inside one replaces the whole region with anonymous zero pages (the faulting
//! access then completes on zeros), marks the region poisoned, and the queues of that session
//! stop when they next look. A SIGBUS anywhere else goes to the previous handler (Rust's
//! stack-overflow handler, or the default action).
//!
//! The handler must be async-signal-safe: the registry is a fixed table of atomics, and the
//! only system call it makes is `mmap`.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Once};

/// Registered regions at most (a region per guest memory slot per session).
const SLOTS: usize = 16384;

struct Slot {
    /// Host start address; 0 when free.
    start: AtomicUsize,
    len: AtomicUsize,
    /// The owning table's flag (an `Arc<Poison>` kept alive by the owner while registered).
    poison: AtomicPtr<Poison>,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot =
    Slot { start: AtomicUsize::new(0), len: AtomicUsize::new(0), poison: AtomicPtr::new(std::ptr::null_mut()) };
static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];
/// Serialises registration (never taken by the handler, which only reads the atomics).
static REGISTER: std::sync::Mutex<()> = std::sync::Mutex::new(());
static INSTALL: Once = Once::new();
static FAULTS: AtomicU64 = AtomicU64::new(0);
/// The handler that was installed before ours (a `libc::sigaction`, written once).
static mut PREVIOUS: std::mem::MaybeUninit<libc::sigaction> = std::mem::MaybeUninit::uninit();

/// Set when a region of one memory table was truncated under us.
#[derive(Debug, Default)]
pub struct Poison(AtomicBool);

impl Poison {
    /// Whether a region of this table faulted.
    #[inline]
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Guest memory faults absorbed since start (for tests and diagnostics).
pub fn faults() -> u64 {
    FAULTS.load(Ordering::Relaxed)
}

/// Registered host ranges of one memory table; unregistered when dropped (before the
/// mappings are unmapped, as the owner declares this field first).
pub struct Registration {
    slots: Vec<usize>,
    poison: Arc<Poison>,
}

impl Registration {
    /// The table's poison flag.
    pub fn poison(&self) -> &Arc<Poison> {
        &self.poison
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _guard = REGISTER.lock().unwrap_or_else(|e| e.into_inner());
        for &i in &self.slots {
            // Length first, start last: a handler reading concurrently sees either the whole
            // entry or a free slot (start 0 never matches).
            TABLE[i].start.store(0, Ordering::SeqCst);
            TABLE[i].len.store(0, Ordering::SeqCst);
            TABLE[i].poison.store(std::ptr::null_mut(), Ordering::SeqCst);
        }
    }
}

/// Too many regions mapped at once.
#[derive(Debug, thiserror::Error)]
#[error("more than {SLOTS} guest memory regions mapped")]
pub struct TableFull;

/// Registers the host ranges `(start, len)` of one memory table.
pub fn register(ranges: &[(usize, usize)]) -> Result<Registration, TableFull> {
    INSTALL.call_once(install);
    let poison = Arc::new(Poison::default());
    let mut reg = Registration { slots: Vec::with_capacity(ranges.len()), poison };
    let _guard = REGISTER.lock().unwrap_or_else(|e| e.into_inner());
    for &(start, len) in ranges {
        let Some(i) = (0..SLOTS).find(|&i| TABLE[i].start.load(Ordering::Relaxed) == 0) else {
            drop(_guard);
            return Err(TableFull);
        };
        TABLE[i].poison.store(Arc::as_ptr(&reg.poison).cast_mut(), Ordering::SeqCst);
        TABLE[i].len.store(len, Ordering::SeqCst);
        TABLE[i].start.store(start, Ordering::SeqCst);
        reg.slots.push(i);
    }
    Ok(reg)
}

fn install() {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; we fill in the
    // handler and flags, and sigaction writes the previous action into PREVIOUS, which no
    // one reads before this Once completes.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
        libc::sigemptyset(&mut action.sa_mask);
        let previous = (&raw mut PREVIOUS).cast::<libc::sigaction>();
        if libc::sigaction(libc::SIGBUS, &action, previous) != 0 {
            tracing::error!(error = %std::io::Error::last_os_error(), "cannot install the SIGBUS guard");
        }
    }
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    for slot in TABLE.iter() {
        let start = slot.start.load(Ordering::SeqCst);
        let len = slot.len.load(Ordering::SeqCst);
        if start == 0 || addr < start || addr - start >= len {
            continue;
        }
        // SAFETY: [start, start+len) is a live mapping of ours (registered until its owner
        // unregisters it, which happens before the munmap). Replacing it with private
        // anonymous memory at the same address is what makes the faulting access succeed;
        // mmap is async-signal-safe.
        let p = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            break;
        }
        let poison = slot.poison.load(Ordering::SeqCst);
        if !poison.is_null() {
            // SAFETY: the owner keeps the Arc alive while the slot is registered.
            unsafe { (*poison).0.store(true, Ordering::SeqCst) };
        }
        FAULTS.fetch_add(1, Ordering::Relaxed);
        return;
    }
    // Not ours: hand it to whoever handled SIGBUS before us.
    // SAFETY: PREVIOUS was written by sigaction before our handler could run. Calling a
    // SA_SIGINFO handler with our arguments, or restoring the default action (the access
    // then faults again and terminates the process as it would have without us).
    unsafe {
        let previous = (&raw const PREVIOUS).cast::<libc::sigaction>().read();
        if previous.sa_flags & libc::SA_SIGINFO != 0 && previous.sa_sigaction > libc::SIG_IGN {
            let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(previous.sa_sigaction);
            handler(sig, info, ctx);
        } else {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_truncated_registered_mapping_reads_zeros_and_is_poisoned() {
        let f = tempfile_of(2 << 20);
        // SAFETY: a fresh shared mapping of our file, unmapped at the end of the test.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 << 20,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        } as *mut u8;
        assert_ne!(p as *mut libc::c_void, libc::MAP_FAILED);
        let reg = register(&[(p as usize, 2 << 20)]).unwrap();
        // SAFETY: inside the mapping, before truncation.
        unsafe { p.add(1 << 20).write_volatile(7) };
        f.set_len(4096).unwrap();
        let before = faults();
        // SAFETY: inside the mapping; the page is gone from the file, so this faults and the
        // guard replaces the region with zero pages.
        let v = unsafe { p.add(1 << 20).read_volatile() };
        assert_eq!(v, 0);
        assert!(reg.poison().is_set());
        assert!(faults() > before);
        drop(reg);
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(p.cast(), 2 << 20) };
    }

    fn tempfile_of(size: u64) -> std::fs::File {
        let path = std::env::temp_dir().join(format!("ferry-sigbus-{}", std::process::id()));
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f.set_len(size).unwrap();
        f
    }
}
