//! Core claims between processes, as SPDK's `spdk_cpu_lock_NNN`: a daemon whose reactors are
//! pinned locks `<dir>/ferry_cpu_lock_NNN` for each of its cores (`flock`, held for the
//! process's life), so a second daemon pinned to the same core refuses to start instead of
//! halving both. `ferryd --disable-cpumask-locks` skips them; unpinned reactors (`--no-pin`)
//! do not own their cores, so they take no locks either.
//!
//! The files are left in place on exit (removing a lock file races with the next owner's
//! open); a lock is released by the holder's exit whatever its cause, even `kill -9`.

use super::lockfile::{LockError, LockFile};
use super::Cpumask;
use std::path::{Path, PathBuf};

/// The default directory of core lock files (SPDK uses /var/tmp too).
pub const DEFAULT_DIR: &str = "/var/tmp";

/// Locks held on cores; dropping it releases them.
#[derive(Debug)]
pub struct CpuLocks {
    _locks: Vec<LockFile>,
}

/// The lock file of `core` in `dir`.
pub fn lock_path(dir: &Path, core: u32) -> PathBuf {
    dir.join(format!("ferry_cpu_lock_{core:03}"))
}

/// Claims every core of `mask`, or names the first one another process holds.
pub fn claim(mask: &Cpumask, dir: &Path) -> Result<CpuLocks, String> {
    let mut locks = Vec::new();
    for &core in mask.cores() {
        match LockFile::try_lock(&lock_path(dir, core), false) {
            Ok(l) => locks.push(l),
            Err(LockError::Held { path, holder }) => {
                return Err(format!(
                    "core {core} is claimed by another Ferry process ({holder}, lock file {}); \
                     use other cores or pass --disable-cpumask-locks to share it",
                    path.display()
                ))
            }
            Err(e) => return Err(format!("cannot claim core {core}: {e}")),
        }
    }
    Ok(CpuLocks { _locks: locks })
}
