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

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// A live process holds the lock; `holder` is what it wrote about itself.
    #[error("{holder}")]
    Held { holder: String },
    #[error("cannot take the lock {0}: {1}")]
    Io(PathBuf, io::Error),
}

/// The checked runtime directory, for this process's network namespace.
#[derive(Debug, Clone)]
pub struct RunDir {
    base: PathBuf,
    netns: u64,
}

/// An exclusive lock (or a shared one, [`RunDir::lock_shared`]), held until it is dropped (or
/// the process dies).
#[derive(Debug)]
pub struct Lock {
    file: File,
    path: PathBuf,
}

impl Lock {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// For a shared lock at its holder's exit: whether no other process holds it, found by
    /// making it exclusive without waiting. When another does, the kernel may have dropped this
    /// holder's share in the attempt (flock's conversion is not atomic): call it last.
    pub fn last_holder(&self) -> io::Result<bool> {
        match self.file.try_lock() {
            Ok(()) => Ok(true),
            Err(TryLockError::WouldBlock) => Ok(false),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }
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

    /// Takes the per-namespace lock `NAME` ([`RunDir::path`]`(NAME.lock)`) without waiting;
    /// `who` (e.g. "dtun pid 1234, instance client") is written into it for a second comer's
    /// message.
    pub fn lock(&self, name: &str, who: &str) -> Result<Lock, LockError> {
        take_lock(self.path(&format!("{name}.lock")), who)
    }

    /// Takes the per-namespace lock `NAME` shared with other holders, without waiting
    /// ([`LockError::Held`] while someone holds it exclusively): for state that several live
    /// dtuns use together and the last one removes ([`Lock::last_holder`]). No holder's note is
    /// written.
    pub fn lock_shared(&self, name: &str) -> Result<Lock, LockError> {
        let path = self.path(&format!("{name}.lock"));
        let mut file = open_lock_file(&path).map_err(|e| LockError::Io(path.clone(), e))?;
        match file.try_lock_shared() {
            Ok(()) => Ok(Lock { file, path }),
            Err(TryLockError::WouldBlock) => Err(LockError::Held {
                holder: holder_note(&mut file),
            }),
            Err(TryLockError::Error(e)) => Err(LockError::Io(path, e)),
        }
    }

    /// Like [`RunDir::lock`], but waits up to `timeout` while another process holds it: for
    /// short steps every dtun of the namespace takes in turn (deciding what IPv4 forwarding
    /// was before any of them).
    pub fn lock_wait(&self, name: &str, who: &str, timeout: Duration) -> Result<Lock, LockError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.lock(name, who) {
                Err(LockError::Held { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                r => return r,
            }
        }
    }

    /// Takes the mount-namespace-wide lock `NAME` ([`RunDir::global`]`(NAME.lock)`).
    pub fn lock_global(&self, name: &str, who: &str) -> Result<Lock, LockError> {
        take_lock(self.global(&format!("{name}.lock")), who)
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

/// The mode of a lock file: root, its owner and the directory's group may lock it, nobody else
/// may even open it (module header).
const LOCK_MODE: u32 = 0o660;

/// Opens (or makes) a lock file read-write (only a descriptor that can write may lock: module
/// header): a regular file, never through a symlink, mode [`LOCK_MODE`] with the directory's
/// group.
fn open_lock_file(path: &Path) -> io::Result<File> {
    open_lock_file_as(path, crate::sys::euid())
}

/// [`open_lock_file`] for a process of effective uid `euid`.
fn open_lock_file_as(path: &Path, euid: u32) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(LOCK_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::PermissionDenied => io::Error::new(
                e.kind(),
                format!(
                    "{e}: it is another user's lock file; as root, give it the group of its directory and mode 660 (chgrp GROUP {0}; chmod 660 {0}), or remove it while no dtun runs",
                    path.display()
                ),
            ),
            _ => e,
        })?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mode = meta.mode() & 0o7777;
    if meta.uid() == euid || euid == 0 {
        // Ours (or we are root): the directory's group, and exactly our mode (the umask took
        // bits away from a new file; an old one may give too many).
        let dir_gid = path
            .parent()
            .map(std::fs::metadata)
            .transpose()?
            .map(|m| m.gid());
        if let Some(gid) = dir_gid
            && gid != meta.gid()
        {
            // Not fatal: a group we are not in leaves the file to root and its owner.
            let _ = std::os::unix::fs::fchown(&file, None, Some(gid));
        }
        if mode != LOCK_MODE {
            file.set_permissions(std::fs::Permissions::from_mode(LOCK_MODE))?;
        }
    } else if mode & 0o007 != 0 {
        return Err(io::Error::other(format!(
            "others may open it (mode {mode:o}), so anyone could hold the lock; as root: chmod 660 {}",
            path.display()
        )));
    }
    Ok(file)
}

/// What the holder of a lock wrote about itself, for a second comer's message.
fn holder_note(file: &mut File) -> String {
    let mut holder = String::new();
    let _ = Read::by_ref(file).take(256).read_to_string(&mut holder);
    let holder = holder.trim();
    if holder.is_empty() {
        "another process".to_string()
    } else {
        holder.escape_debug().to_string()
    }
}

fn take_lock(path: PathBuf, who: &str) -> Result<Lock, LockError> {
    let io_err = |e| LockError::Io(path.clone(), e);
    let mut file = open_lock_file(&path).map_err(io_err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(LockError::Held {
                holder: holder_note(&mut file),
            });
        }
        Err(TryLockError::Error(e)) => return Err(io_err(e)),
    }
    file.set_len(0).map_err(io_err)?;
    file.write_all(who.as_bytes()).map_err(io_err)?;
    Ok(Lock { file, path })
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

#[cfg(test)]
mod lock_file_tests {
    //! Who may take a lock (the review's probes p1/p1b/p8): not a stranger with a read-only
    //! descriptor.
    use super::*;
    use std::process::{Command, Stdio};

    fn tempdir(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("dtun-lockfile-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    /// uid 4242 (no groups) tries to flock `path` exclusively through a read-only descriptor,
    /// as `hold.py` did: "took" when it got the lock (then keeps it until killed), else why not.
    fn stranger_tries(path: &Path) -> (std::process::Child, String) {
        let script = r#"
import fcntl, sys, time
try:
    f = open(sys.argv[1], "rb")
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError as e:
    print("refused", e, flush=True); sys.exit(0)
print("took", flush=True)
time.sleep(30)
"#;
        let mut child = Command::new("setpriv")
            .args(["--reuid", "4242", "--regid", "4242", "--clear-groups"])
            .args(["/usr/bin/python3", "-c", script])
            .arg(path)
            .stdout(Stdio::piped())
            .spawn()
            .expect("setpriv and python3");
        let mut line = String::new();
        let mut out = io::BufReader::new(child.stdout.take().unwrap());
        io::BufRead::read_line(&mut out, &mut line).unwrap();
        (child, line)
    }

    #[test]
    fn a_stranger_cannot_take_a_lock_through_a_read_only_descriptor() {
        let p = tempdir("stranger");
        let d = RunDir::at(&p).unwrap();
        drop(d.lock("dtun", "dtun pid 1, instance dtun").unwrap());
        let path = d.path("dtun.lock");
        let (mut child, said) = stranger_tries(&path);
        let got = d.lock("dtun", "dtun pid 2, instance dtun");
        let _ = child.kill();
        let _ = child.wait();
        assert!(said.starts_with("refused"), "uid 4242: {said}");
        got.unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o660, "lock file mode");
        assert_eq!(
            meta.gid(),
            std::fs::metadata(&p).unwrap().gid(),
            "the directory's group"
        );
        std::fs::remove_dir_all(&p).unwrap();
    }

    #[test]
    fn an_old_world_readable_lock_file_is_tightened_or_refused() {
        let p = tempdir("old");
        let d = RunDir::at(&p).unwrap();
        let path = d.path("routes.lock");
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        // Ours (root's): made 0660.
        drop(d.lock("routes", "x").unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o660);
        // Another user's, world-readable, and we are neither it nor root: refused, untouched.
        std::os::unix::fs::chown(&path, Some(4242), None).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = open_lock_file_as(&path, 4343).unwrap_err().to_string();
        assert!(e.contains("chmod 660"), "{e}");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o644);
        // Root tightens it.
        open_lock_file_as(&path, 0).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o660);
        std::fs::remove_dir_all(&p).unwrap();
    }
}
