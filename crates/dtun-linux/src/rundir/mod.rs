//! dtun's runtime directory, `/run/dtun`: the one place for every lock, control socket and
//! state file of ours, and the rules that make it safe to trust.
//!
//! - **Who may write there.** Root and the system user dtun only: the package's tmpfiles.d
//!   entry makes it `root:dtun 1770` (the sticky bit: nobody removes or renames another's
//!   file); a root dtun that finds no directory makes it `root:root 0755`. Before using it,
//!   dtun checks that it is a real directory (not a symlink), owned by root (or by dtun's own
//!   user when dtun does not run as root), and writable by nobody else but its group, and by
//!   the group only with the sticky bit. So no unprivileged process can take a name, a lock or
//!   a socket of ours.
//! - **Per network namespace.** A path under /run belongs to the mount namespace, while dtun's
//!   instances (TUN devices, routes, nftables) belong to the network namespace. Names of
//!   per-namespace things start with the namespace's inode number (`/run/dtun/4026531840.NAME`),
//!   so two namespaces never collide and `ip netns exec NS dtun status` finds the instances of
//!   NS. Things of the mount namespace (resolv.conf's backup) use [`RunDir::global`] names.
//! - **Locks** are `flock`s on `NAME.lock` files ([`RunDir::lock`]): the kernel drops them when
//!   their holder dies, so state a live dtun owns is never taken for a crash's left-overs, and
//!   recovery happens only when the owner is gone. The holder writes who it is into the file,
//!   for the message a second comer prints. Lock files stay (removing one would race a
//!   newcomer locking the old inode).
//! - **Who may lock.** `flock` needs only an open descriptor, a read-only one too, so a lock
//!   file's mode decides who can take (squat) a lock: lock files are `0660` with the
//!   directory's group (forced with fchown/fchmod after the open), and dtun opens them
//!   read-write only, never falling back to read-only. So only root, the file's owner and the
//!   directory's group (dtun's, in the package's layout) can hold one. An older lock file that
//!   others may read or write (0644, from before) is made 0660 when it is ours or we are root,
//!   and refused otherwise, with the command that fixes it.
//! - **State files** are written to a fresh temporary name with `O_EXCL | O_NOFOLLOW` and
//!   renamed into place, and read with `O_NOFOLLOW`, only when they are regular files owned by
//!   dtun's own user: a symlink or a file planted by another user is never followed or
//!   believed ([`RunDir::write_state`], [`RunDir::read_state`]).

mod lock;

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use lock::{Lock, LockError};

/// Where dtun keeps its runtime files.
pub const BASE: &str = "/run/dtun";

#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error(
        "cannot create {0}: {1} (run dtun as root once, or install the package, whose tmpfiles.d entry creates it)"
    )]
    Create(PathBuf, io::Error),
    #[error("cannot use {0}: {1}")]
    Io(PathBuf, io::Error),
    #[error(
        "{path} is not safe to use: {why}; make it root's: chown root:dtun {path} && chmod 1770 {path} (or remove it and let dtun make it)"
    )]
    Untrusted { path: PathBuf, why: String },
    #[error("cannot tell this network namespace's identity from /proc/self/ns/net: {0}")]
    Netns(io::Error),
}

/// The checked runtime directory, for this process's network namespace.
#[derive(Debug, Clone)]
pub struct RunDir {
    base: PathBuf,
    netns: u64,
}

impl RunDir {
    /// [`BASE`], made if missing (root only) and checked.
    pub fn open() -> Result<RunDir, RunDirError> {
        RunDir::at(BASE)
    }

    /// A runtime directory at `base` (tests use a directory of their own), made if missing and
    /// checked like [`BASE`].
    pub fn at(base: impl Into<PathBuf>) -> Result<RunDir, RunDirError> {
        let base = base.into();
        match std::fs::DirBuilder::new().mode(0o755).create(&base) {
            Ok(()) => {
                // The umask may have taken bits away; say exactly what we mean.
                std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| RunDirError::Io(base.clone(), e))?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(RunDirError::Create(base, e)),
        }
        check_dir(&base, crate::sys::euid())?;
        let netns = std::fs::metadata("/proc/self/ns/net")
            .map_err(RunDirError::Netns)?
            .ino();
        Ok(RunDir { base, netns })
    }

    /// The directory itself.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// This network namespace's identity (the inode number of /proc/self/ns/net).
    pub fn netns(&self) -> u64 {
        self.netns
    }

    /// The path of a per-network-namespace file: `BASE/NETNS.NAME`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.base.join(format!("{}.{name}", self.netns))
    }

    /// The path of a file of the whole mount namespace: `BASE/NAME`.
    pub fn global(&self, name: &str) -> PathBuf {
        self.base.join(name)
    }

    /// The names (less the `NETNS.` prefix) of this namespace's files that end in `suffix`,
    /// sorted: e.g. the instances that have a control socket.
    pub fn list(&self, suffix: &str) -> io::Result<Vec<String>> {
        let prefix = format!("{}.", self.netns);
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.base)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(rest) = name.strip_prefix(&prefix)
                && rest.ends_with(suffix)
            {
                names.push(rest.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Writes `data` to `path` (a path from [`RunDir::path`] or [`RunDir::global`]) atomically,
    /// mode 0600: a fresh temporary file (`O_CREAT | O_EXCL | O_NOFOLLOW`), synced, renamed over
    /// `path`. Nothing already at either name is followed or written through.
    pub fn write_state(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let tmp = tmp_name(path);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        let written = f.write_all(data).and_then(|()| f.sync_all());
        if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(())
    }

    /// Reads a state file written by [`RunDir::write_state`]: `None` when there is none, or when
    /// what is there is not a regular file owned by dtun's own user (a symlink, a planted file),
    /// which is never believed.
    pub fn read_state(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        let mut f = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            // O_NOFOLLOW on a symlink.
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = f.metadata()?;
        if !meta.file_type().is_file() || meta.uid() != crate::sys::euid() {
            return Ok(None);
        }
        let mut data = Vec::new();
        Read::by_ref(&mut f).take(1 << 20).read_to_end(&mut data)?;
        Ok(Some(data))
    }

    /// Removes a state file (nothing there is fine).
    pub fn remove_state(&self, path: &Path) -> io::Result<()> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// A temporary name beside `path`, unique to this process and call.
fn tmp_name(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".tmp{}.{n}", std::process::id()));
    PathBuf::from(name)
}

/// The checks of the module header: a real directory, owned by root (or by `euid`), writable by
/// nobody else but its group, and by the group only with the sticky bit.
fn check_dir(path: &Path, euid: u32) -> Result<(), RunDirError> {
    let untrusted = |why: String| RunDirError::Untrusted {
        path: path.to_path_buf(),
        why,
    };
    let meta = std::fs::symlink_metadata(path).map_err(|e| RunDirError::Io(path.into(), e))?;
    if meta.file_type().is_symlink() {
        return Err(untrusted("it is a symbolic link".into()));
    }
    if !meta.is_dir() {
        return Err(untrusted("it is not a directory".into()));
    }
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(untrusted(format!("it belongs to uid {}", meta.uid())));
    }
    let mode = meta.mode();
    if mode & 0o002 != 0 {
        return Err(untrusted(format!(
            "anyone may write to it (mode {:o})",
            mode & 0o7777
        )));
    }
    if mode & 0o020 != 0 && mode & 0o1000 == 0 {
        return Err(untrusted(format!(
            "its group may write to it without the sticky bit (mode {:o})",
            mode & 0o7777
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("dtun-rundir-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn makes_and_trusts_its_own_directory() {
        let p = tempdir("own");
        let d = RunDir::at(&p).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o755);
        assert!(
            d.path("x")
                .to_str()
                .unwrap()
                .ends_with(&format!("{}.x", d.netns()))
        );
        std::fs::remove_dir_all(&p).unwrap();
    }

    #[test]
    fn refuses_writable_or_linked_directories() {
        let p = tempdir("bad");
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = RunDir::at(&p).unwrap_err().to_string();
        assert!(e.contains("anyone may write"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o770)).unwrap();
        let e = RunDir::at(&p).unwrap_err().to_string();
        assert!(e.contains("sticky"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o1770)).unwrap();
        RunDir::at(&p).unwrap();
        let link = tempdir("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        let e = RunDir::at(&link).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_dir_all(&p).unwrap();
    }

    #[test]
    fn a_lock_is_held_until_dropped_and_names_its_holder() {
        let p = tempdir("lock");
        let d = RunDir::at(&p).unwrap();
        let held = d.lock("routes", "dtun pid 1, instance a").unwrap();
        match d.lock("routes", "dtun pid 2, instance b") {
            Err(LockError::Held { holder }) => assert_eq!(holder, "dtun pid 1, instance a"),
            other => panic!("{other:?}"),
        }
        drop(held);
        d.lock("routes", "dtun pid 2, instance b").unwrap();
        std::fs::remove_dir_all(&p).unwrap();
    }

    #[test]
    fn the_last_shared_holder_knows_it() {
        let p = tempdir("shared");
        let d = RunDir::at(&p).unwrap();
        let a = d.lock_shared("lans").unwrap();
        let b = d.lock_shared("lans").unwrap();
        assert!(!b.last_holder().unwrap(), "a holds it too");
        drop(b);
        assert!(a.last_holder().unwrap());
        // Now exclusive: nobody else gets it until it is dropped.
        assert!(matches!(d.lock("lans", "x"), Err(LockError::Held { .. })));
        drop(a);
        d.lock("lans", "x").unwrap();
        std::fs::remove_dir_all(&p).unwrap();
    }

    #[test]
    fn state_files_never_follow_links() {
        let p = tempdir("state");
        let d = RunDir::at(&p).unwrap();
        let target = p.join("victim");
        std::fs::write(&target, b"precious").unwrap();
        let state = d.path("nat6");
        std::os::unix::fs::symlink(&target, &state).unwrap();
        assert_eq!(
            d.read_state(&state).unwrap(),
            None,
            "a symlink is not believed"
        );
        d.write_state(&state, b"1").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
        assert_eq!(d.read_state(&state).unwrap().as_deref(), Some(&b"1"[..]));
        d.remove_state(&state).unwrap();
        assert_eq!(d.read_state(&state).unwrap(), None);
        std::fs::remove_dir_all(&p).unwrap();
    }
}
