//! Listening Unix sockets the daemon owns (the RPC socket, vhost controller sockets).
//!
//! - **Permissions never come from the umask.** `bind(2)` creates the socket file with mode
//!   `0777 & ~umask`, and `fchmod` on a socket fd does not reach the file. So the socket is
//!   bound inside a fresh private directory (mode 0700: nobody else can reach it there), given
//!   its owner and mode, and only then renamed into place: at its real path it never has a
//!   wider mode than asked for. The umask is not touched (it is per process, and other threads
//!   create files).
//! - **One owner per path.** `<path>.lock` is locked (`flock`) for the socket's whole life, so two
//!   daemons (or `ferry-bdevperf` replaying a saved configuration) never fight over one path.
//! - **A live socket is never replaced.** An existing path is replaced only if it is a socket
//!   nobody answers on (a dead process's leftover); one that accepts a connection is refused as
//!   in use, and anything that is not a socket is refused.
//! - **Only our own socket is removed.** On release the path is unlinked only if it is still
//!   the inode we created (while we still hold its lock).
//! - Paths this process already serves are refused up front with a clear message (e.g. a vhost
//!   controller named like the RPC socket).

use super::lockfile::{LockError, LockFile};
use std::os::fd::RawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use thiserror::Error;

/// The most bytes in a socket path (sun_path without its terminating NUL).
const MAX_PATH: usize = 107;

/// Owner and mode a socket file is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketPerms {
    /// Permission bits (connecting needs write permission).
    pub mode: u32,
    /// Owner, if not the daemon's user.
    pub uid: Option<u32>,
    /// Group, if not the daemon's group.
    pub gid: Option<u32>,
}

impl Default for SocketPerms {
    /// 0600, owned by the daemon's user: only it (root, normally) can connect.
    fn default() -> Self {
        SocketPerms { mode: 0o600, uid: None, gid: None }
    }
}

impl SocketPerms {
    /// Parses an octal mode (`0660`, `660`); only permission bits are allowed.
    pub fn parse_mode(text: &str) -> Result<u32, String> {
        let mode = u32::from_str_radix(text.trim_start_matches("0o"), 8)
            .map_err(|_| format!("socket mode {text:?} is not an octal number"))?;
        if mode > 0o777 {
            return Err(format!("socket mode {text:?} has bits beyond 0777"));
        }
        Ok(mode)
    }

    /// Parses `USER[:GROUP]` (`:GROUP` alone keeps the owner; names or numeric ids). A user
    /// given without a group keeps the daemon's group, as chown(1) does.
    pub fn parse_owner(text: &str) -> Result<(Option<u32>, Option<u32>), String> {
        let (user, group) = match text.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (text, None),
        };
        let uid = match user {
            "" => None,
            u => Some(u.parse::<u32>().ok().or_else(|| lookup_user(u)).ok_or_else(|| format!("no user {u:?}"))?),
        };
        let gid = match group {
            None | Some("") => None,
            Some(g) => {
                Some(g.parse::<u32>().ok().or_else(|| lookup_group(g)).ok_or_else(|| format!("no group {g:?}"))?)
            }
        };
        if uid.is_none() && gid.is_none() {
            return Err(format!("socket owner {text:?} names neither a user nor a group"));
        }
        Ok((uid, gid))
    }
}

fn lookup_user(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 << 10];
    // SAFETY: passwd is plain data; all-zero is a valid (empty) value for it.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: the NUL-terminated name, the passwd struct,
    // the scratch buffer with its true length, and the result slot.
    let rc = unsafe { libc::getpwnam_r(cname.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    (rc == 0 && !result.is_null()).then_some(pwd.pw_uid)
}

fn lookup_group(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 64 << 10];
    // SAFETY: group is plain data; all-zero is a valid (empty) value for it.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as in lookup_user: valid name, struct, buffer with its length, result slot.
    let rc = unsafe { libc::getgrnam_r(cname.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut result) };
    (rc == 0 && !result.is_null()).then_some(grp.gr_gid)
}

/// Why a socket could not be set up.
#[derive(Debug, Error)]
pub enum SocketError {
    /// A process answers on the path.
    #[error("socket {0} is in use by a live process")]
    InUse(PathBuf),
    /// This process already serves the path.
    #[error("socket {path} is already this daemon's {purpose}")]
    Ours {
        /// The path.
        path: PathBuf,
        /// What it serves there.
        purpose: String,
    },
    /// The path exists and is not a socket.
    #[error("{0} exists and is not a socket; not replacing it")]
    NotASocket(PathBuf),
    /// Another process owns the path.
    #[error("socket {path} belongs to another process ({source})")]
    Locked {
        /// The path.
        path: PathBuf,
        /// The lock refusal.
        source: LockError,
    },
    /// The path does not fit a socket address.
    #[error("socket path {0} is too long (at most {MAX_PATH} bytes, with room for a private bind directory)")]
    TooLong(PathBuf),
    /// A system call failed.
    #[error("socket {path}: {what}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

/// Paths this process serves, with what it serves there.
static OURS: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());

fn ours() -> std::sync::MutexGuard<'static, Vec<(PathBuf, String)>> {
    OURS.lock().unwrap_or_else(|e| e.into_inner())
}

/// `path` with its directory resolved, so two spellings of one path compare equal.
fn normalise(path: &Path) -> PathBuf {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    match (dir.canonicalize(), path.file_name()) {
        (Ok(d), Some(name)) => d.join(name),
        _ => path.to_path_buf(),
    }
}

/// A socket path this process owns; dropping it removes the socket file (if it is still ours)
/// and releases the path's lock. Drop it after the listener is closed.
#[derive(Debug)]
pub struct OwnedSocket {
    path: PathBuf,
    key: PathBuf,
    dev: u64,
    ino: u64,
    _lock: LockFile,
}

impl OwnedSocket {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for OwnedSocket {
    fn drop(&mut self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => {
                let _ = std::fs::remove_file(&self.path);
            }
            Ok(_) => {
                tracing::warn!(path = %self.path.display(), "socket path was replaced by someone else; leaving it")
            }
            Err(_) => {}
        }
        ours().retain(|(p, _)| *p != self.key);
    }
}

/// Listens on `path` with `perms`, for `purpose` (named in errors: "RPC socket", "vhost
/// controller vhost.0"). See the module documentation for what is checked.
pub fn bind(path: &Path, perms: SocketPerms, purpose: &str) -> Result<(UnixListener, OwnedSocket), SocketError> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let io_err = |what, source| SocketError::Io { path: path.to_path_buf(), what, source };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let bind_dir = dir.join(format!(".ferry-bind-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
    let bind_path = bind_dir.join("s");
    if path.as_os_str().len() > MAX_PATH || bind_path.as_os_str().len() > MAX_PATH {
        return Err(SocketError::TooLong(path.to_path_buf()));
    }
    let key = normalise(path);
    {
        let mut ours = ours();
        if let Some((_, by)) = ours.iter().find(|(p, _)| *p == key) {
            return Err(SocketError::Ours { path: path.to_path_buf(), purpose: by.clone() });
        }
        // Reserve the path while binding, so two threads of ours cannot race for it.
        ours.push((key.clone(), purpose.to_string()));
    }
    let result = bind_locked(path, perms, &bind_dir, &bind_path, key.clone());
    if result.is_err() {
        ours().retain(|(p, _)| *p != key);
    }
    result.map_err(|e| match e {
        BindError::Socket(e) => e,
        BindError::Io(what, source) => io_err(what, source),
    })
}

enum BindError {
    Socket(SocketError),
    Io(&'static str, std::io::Error),
}

fn bind_locked(
    path: &Path,
    perms: SocketPerms,
    bind_dir: &Path,
    bind_path: &Path,
    key: PathBuf,
) -> Result<(UnixListener, OwnedSocket), BindError> {
    let mut lock_name = path.as_os_str().to_owned();
    lock_name.push(".lock");
    let lock = LockFile::try_lock(Path::new(&lock_name), true).map_err(|e| match e {
        LockError::Io { source, .. } => BindError::Io("taking its lock file", source),
        held => BindError::Socket(SocketError::Locked { path: path.to_path_buf(), source: held }),
    })?;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(BindError::Io("inspecting the existing path", e)),
        Ok(m) if !m.file_type().is_socket() => {
            return Err(BindError::Socket(SocketError::NotASocket(path.to_path_buf())))
        }
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => return Err(BindError::Socket(SocketError::InUse(path.to_path_buf()))),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNREFUSED) | Some(libc::ENOENT)) => {
                tracing::info!(path = %path.display(), "replacing a stale socket nobody listens on");
            }
            Err(e) => return Err(BindError::Io("probing the existing socket", e)),
        },
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(bind_dir)
        .map_err(|e| BindError::Io("creating a private bind directory", e))?;
    let placed = place(path, perms, bind_path);
    let _ = std::fs::remove_file(bind_path);
    let _ = std::fs::remove_dir(bind_dir);
    let (listener, dev, ino) = placed?;
    Ok((listener, OwnedSocket { path: path.to_path_buf(), key, dev, ino, _lock: lock }))
}

/// Binds at `bind_path` (in the private directory), sets owner and mode, moves it to `path`.
fn place(path: &Path, perms: SocketPerms, bind_path: &Path) -> Result<(UnixListener, u64, u64), BindError> {
    let listener = UnixListener::bind(bind_path).map_err(|e| BindError::Io("binding", e))?;
    if perms.uid.is_some() || perms.gid.is_some() {
        std::os::unix::fs::chown(bind_path, perms.uid, perms.gid).map_err(|e| BindError::Io("setting its owner", e))?;
    }
    std::fs::set_permissions(bind_path, std::fs::Permissions::from_mode(perms.mode))
        .map_err(|e| BindError::Io("setting its mode", e))?;
    let m = std::fs::symlink_metadata(bind_path).map_err(|e| BindError::Io("inspecting the new socket", e))?;
    // rename() replaces a stale socket atomically: the path never points at nothing.
    std::fs::rename(bind_path, path).map_err(|e| BindError::Io("moving it into place", e))?;
    Ok((listener, m.dev(), m.ino()))
}

/// The connected peer's process credentials (`SO_PEERCRED`: pid, uid, gid as of connect).
pub fn peer_credentials(fd: RawFd) -> std::io::Result<libc::ucred> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a writable ucred and `len` holds its size, as SO_PEERCRED requires.
    let rc = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, (&mut cred as *mut libc::ucred).cast(), &mut len)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_owners_parse() {
        assert_eq!(SocketPerms::parse_mode("0660"), Ok(0o660));
        assert_eq!(SocketPerms::parse_mode("600"), Ok(0o600));
        assert!(SocketPerms::parse_mode("0999").is_err());
        assert!(SocketPerms::parse_mode("4777").is_err());
        assert_eq!(SocketPerms::parse_owner("0:0"), Ok((Some(0), Some(0))));
        assert_eq!(SocketPerms::parse_owner("root"), Ok((Some(0), None)));
        assert_eq!(SocketPerms::parse_owner(":root"), Ok((None, Some(0))));
        assert!(SocketPerms::parse_owner("no-such-user-here").is_err());
        assert!(SocketPerms::parse_owner(":").is_err());
    }

    #[test]
    fn a_path_is_bound_once_and_removed_only_while_ours() {
        let dir = std::env::temp_dir().join(format!("ferry-socket-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let (l, owned) = bind(&path, SocketPerms::default(), "test socket").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = bind(&dir.join(".").join("s.sock"), SocketPerms::default(), "other");
        assert!(matches!(again, Err(SocketError::Ours { purpose, .. }) if purpose == "test socket"));
        // Someone replaces the socket file: dropping ours must leave theirs alone.
        drop(l);
        std::fs::remove_file(&path).unwrap();
        let theirs = UnixListener::bind(&path).unwrap();
        drop(owned);
        assert!(path.exists(), "another's socket was removed");
        assert!(!dir.join("s.sock.lock").exists(), "the lock file is cleaned up");
        drop(theirs);
        // A stale socket is replaced; a regular file is not.
        let (l, owned) = bind(&path, SocketPerms::default(), "test socket").unwrap();
        assert!(UnixStream::connect(&path).is_ok());
        drop((l, owned));
        assert!(!path.exists());
        std::fs::write(&path, b"data").unwrap();
        assert!(matches!(bind(&path, SocketPerms::default(), "x"), Err(SocketError::NotASocket(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
