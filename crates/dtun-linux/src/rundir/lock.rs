//! Locks in the runtime directory (the module header of [`super`] says who may take one):
//! `flock`s on `0660` lock files of the directory's group, opened read-write only.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::RunDir;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// A live process holds the lock; `holder` is what it wrote about itself.
    #[error("{holder}")]
    Held { holder: String },
    #[error("cannot take the lock {0}: {1}")]
    Io(PathBuf, io::Error),
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

#[cfg(test)]
mod tests {
    // Who may take a lock (the review's probes p1/p1b/p8): not a stranger with a read-only
    // descriptor.
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
        dtun_testgate::need_root!();
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
        dtun_testgate::need_root!();
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
