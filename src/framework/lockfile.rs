//! Exclusive lock files (`flock`), held for as long as their [`LockFile`] lives: one owner per
//! core (`ferry_cpu_lock_NNN`) and per socket path (`<socket>.lock`).
//!
//! A lock file is opened without following symlinks (it often lives in a shared directory such
//! as /var/tmp) and holds the owner's pid, so a refusal can name the process in the way.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a lock could not be taken.
#[derive(Debug, Error)]
pub enum LockError {
    /// Another process (or another part of this one) holds it.
    #[error("{path} is locked by {holder}")]
    Held {
        /// The lock file.
        path: PathBuf,
        /// Who holds it, as far as the file says ("pid N", or "another process").
        holder: String,
    },
    /// The file could not be opened or locked.
    #[error("lock file {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// A held lock; dropping it releases the lock (and removes the file if asked to).
#[derive(Debug)]
pub struct LockFile {
    path: PathBuf,
    file: File,
    remove_on_drop: bool,
}

impl LockFile {
    /// Takes the exclusive lock on `path` without waiting, creating the file (mode 0600) if
    /// needed. With `remove_on_drop` the file is unlinked when released (while still held, and
    /// only if the path is still this file), so no stale lock files are left behind.
    pub fn try_lock(path: &Path, remove_on_drop: bool) -> Result<LockFile, LockError> {
        let io_err = |source| LockError::Io { path: path.to_path_buf(), source };
        // A holder that removes its file on release may do so between our open and our flock:
        // then we hold a lock on an unlinked file. Check, and try again on the new file.
        for _ in 0..8 {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(path)
                .map_err(io_err)?;
            // SAFETY: flock on an fd we own; no memory is involved.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                    return Err(io_err(e));
                }
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = match text.trim().parse::<u32>() {
                    Ok(pid) => format!("pid {pid}"),
                    Err(_) => "another process".to_string(),
                };
                return Err(LockError::Held { path: path.to_path_buf(), holder });
            }
            let ours = file.metadata().map_err(io_err)?;
            match std::fs::symlink_metadata(path) {
                Ok(now) if now.dev() == ours.dev() && now.ino() == ours.ino() => {}
                _ => continue,
            }
            file.set_len(0).map_err(io_err)?;
            file.rewind().map_err(io_err)?;
            writeln!(file, "{}", std::process::id()).map_err(io_err)?;
            return Ok(LockFile { path: path.to_path_buf(), file, remove_on_drop });
        }
        Err(io_err(std::io::Error::other("the lock file keeps being replaced")))
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        if !self.remove_on_drop {
            return;
        }
        let Ok(ours) = self.file.metadata() else { return };
        if let Ok(now) = std::fs::symlink_metadata(&self.path) {
            if now.dev() == ours.dev() && now.ino() == ours.ino() {
                let _ = std::fs::remove_file(&self.path);
            }
        }
        // The lock itself goes with the fd.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_even_within_a_process() {
        let dir = std::env::temp_dir().join(format!("ferry-lockfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.lock");
        let held = LockFile::try_lock(&path, true).unwrap();
        match LockFile::try_lock(&path, true) {
            Err(LockError::Held { holder, .. }) => assert_eq!(holder, format!("pid {}", std::process::id())),
            other => panic!("expected Held, got {other:?}"),
        }
        drop(held);
        assert!(!path.exists(), "released and removed");
        let again = LockFile::try_lock(&path, false).unwrap();
        drop(again);
        assert!(path.exists(), "kept when asked");
        // A symlink is never followed.
        let link = dir.join("link.lock");
        std::os::unix::fs::symlink(dir.join("target"), &link).unwrap();
        assert!(matches!(LockFile::try_lock(&link, false), Err(LockError::Io { .. })));
        assert!(!dir.join("target").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
