//! The resolv.conf method: /etc/resolv.conf rewritten *in place* (truncated and written, never
//! renamed over: `ip netns exec` and containers bind-mount a file there, and a rename onto a
//! mount point fails), its original kept in dtun's runtime directory ([`crate::rundir`]).
//!
//! - **One owner.** The file is identified by its device and inode (a rewrite in place keeps
//!   them; `ip netns exec` gives each namespace its own file). The dtun whose content is in
//!   place holds the mount-namespace-wide lock `resolv.conf.DEV-INO`
//!   ([`RunDir::lock_global`]); a second dtun finds it held, names the holder and leaves the
//!   file alone. A backup (`resolv.conf.DEV-INO.bak`) is taken for a crash's left-over, and
//!   restored at start, only when that lock is free: its owner is gone.
//! - **Nothing planted is followed.** The backup is a state file ([`RunDir::write_state`],
//!   [`RunDir::read_state`]). The path to resolv.conf is walked link by link
//!   ([`trusted_target`]): a link, a directory or the file itself that belongs to another
//!   user, or a directory others may write to without the sticky bit, is refused (anyone
//!   could have put a link there); resolv.conf as root's link to systemd-resolved's stub, or
//!   to /run/resolvconf/resolv.conf, is normal and followed. The file is then opened with
//!   `O_NOFOLLOW`.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use super::MARKER;
use crate::rundir::{Lock, LockError, RunDir, RunDirError};

/// Where systemd-resolved keeps the files resolv.conf links to when it manages DNS.
const RESOLVED_DIR: &str = "/run/systemd/resolve";
/// Most symbolic links followed on the way to resolv.conf.
const MAX_LINKS: u32 = 16;

/// Why the servers were not written.
#[derive(Debug, thiserror::Error)]
pub(super) enum SetError {
    /// A live dtun owns the file (the holder's note).
    #[error(
        "it is in use by another live dtun ({0}); one dtun at a time sets it: give -dns/-accept-dns to one client only, or use systemd-resolved (DNS per link)"
    )]
    Owned(String),
    #[error("it is systemd-resolved's ({0})")]
    Stub(PathBuf),
    #[error("it is not safe to write: {0}")]
    Untrusted(String),
    /// The runtime directory is unusable; `.1`: for lack of permission.
    #[error("{0}")]
    RunDir(String, bool),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl SetError {
    pub(super) fn permission_denied(&self) -> bool {
        match self {
            SetError::Io(e) => e.kind() == io::ErrorKind::PermissionDenied,
            SetError::RunDir(_, denied) => *denied,
            _ => false,
        }
    }
}

/// Our content in place: the owner lock, the backup and the file written.
struct Owned {
    _lock: Lock,
    backup: PathBuf,
    target: PathBuf,
}

pub(super) struct ResolvFile {
    /// The path configured (/etc/resolv.conf).
    pub(super) path: PathBuf,
    /// The runtime directory, or why it cannot be used (and whether for lack of permission).
    run: Result<RunDir, (String, bool)>,
    owned: Option<Owned>,
}

impl ResolvFile {
    /// For the file at `path`, backups in the runtime directory `run_dir`.
    pub(super) fn new(path: &Path, run_dir: &Path) -> ResolvFile {
        ResolvFile {
            path: path.to_path_buf(),
            run: RunDir::at(run_dir).map_err(|e| {
                let denied = matches!(&e, RunDirError::Create(_, io) | RunDirError::Io(_, io)
                    if io.kind() == io::ErrorKind::PermissionDenied);
                (e.to_string(), denied)
            }),
            owned: None,
        }
    }

    pub(super) fn is_set(&self) -> bool {
        self.owned.is_some()
    }

    /// The file behind the path, its stem for lock and backup names (`resolv.conf.DEV-INO`).
    fn identify(&self) -> Result<(PathBuf, String), SetError> {
        let target = trusted_target(&self.path).map_err(SetError::Untrusted)?;
        let m = fs::symlink_metadata(&target)?;
        Ok((target, format!("resolv.conf.{}-{}", m.dev(), m.ino())))
    }

    /// At start: a backup whose lock is free is a dead dtun's; its original goes back.
    pub(super) fn recover(&mut self) {
        let Ok(run) = &self.run else { return };
        let Ok((target, stem)) = self.identify() else {
            return;
        };
        let _lock = match run.lock_global(&stem, &format!("dtun pid {}", std::process::id())) {
            Ok(l) => l,
            Err(LockError::Held { holder }) => {
                tracing::debug!(
                    "{} is owned by a live dtun ({holder}): nothing to recover",
                    self.path.display()
                );
                return;
            }
            Err(e) => {
                tracing::debug!("no DNS recovery: {e}");
                return;
            }
        };
        let backup = run.global(&format!("{stem}.bak"));
        let Ok(Some(original)) = run.read_state(&backup) else {
            return;
        };
        tracing::info!(
            "{} holds DNS a dtun that did not exit cleanly left behind: restoring it from {}",
            self.path.display(),
            backup.display()
        );
        put_back(&self.path, &target, &original);
        let _ = run.remove_state(&backup);
    }

    /// Writes our content (`servers`, for the tunnel `tun`), taking ownership first if we do
    /// not have it; on an error nothing is left changed. Returns the backup's path.
    pub(super) fn set(&mut self, servers: &[IpAddr], tun: &str) -> Result<PathBuf, SetError> {
        let run = self
            .run
            .as_ref()
            .map_err(|(e, denied)| SetError::RunDir(e.clone(), *denied))?;
        if self.owned.is_none() {
            let (target, stem) = self.identify()?;
            if target.starts_with(RESOLVED_DIR) {
                return Err(SetError::Stub(target));
            }
            let who = format!("dtun pid {} on tunnel {tun}", std::process::id());
            let lock = match run.lock_global(&stem, &who) {
                Ok(l) => l,
                Err(LockError::Held { holder }) => return Err(SetError::Owned(holder)),
                // A lock file we may not open read-write (another user's, or a directory not
                // ours to write): permission denied, as with NotFound on older dtuns.
                Err(LockError::Io(p, e)) => {
                    let kind = match e.kind() {
                        io::ErrorKind::NotFound => io::ErrorKind::PermissionDenied,
                        k => k,
                    };
                    return Err(SetError::Io(io::Error::new(
                        kind,
                        format!("cannot take the lock {}: {e}", p.display()),
                    )));
                }
            };
            let backup = run.global(&format!("{stem}.bak"));
            self.owned = Some(Owned {
                _lock: lock,
                backup,
                target,
            });
        }
        let Some(o) = &self.owned else {
            return Err(SetError::Io(io::Error::other("not owned")));
        };
        let current = read_nofollow(&o.target)?;
        // Ours already (this run's, or a dead dtun's whose lock we now hold): the original is
        // the backup. Else (first time, or rewritten by someone else since): what is there.
        let kept = if current.starts_with(MARKER.as_bytes()) {
            run.read_state(&o.backup)?
        } else {
            None
        };
        let fresh = kept.is_none();
        let original = match kept {
            Some(b) => b,
            None => {
                if let Err(e) = run.write_state(&o.backup, &current) {
                    self.owned = None;
                    return Err(e.into());
                }
                current
            }
        };
        let text = render(&original, servers, tun, &o.backup);
        if let Err(e) = write_nofollow(&o.target, text.as_bytes()) {
            if fresh {
                let _ = write_nofollow(&o.target, &original);
                let _ = run.remove_state(&o.backup);
                self.owned = None;
            }
            return Err(e.into());
        }
        Ok(o.backup.clone())
    }

    /// Puts the original back (unless someone else rewrote the file meanwhile), removes the
    /// backup and gives up ownership.
    pub(super) fn restore(&mut self) {
        let Some(o) = self.owned.take() else { return };
        let Ok(run) = &self.run else { return };
        match run.read_state(&o.backup) {
            Ok(Some(original)) => {
                if put_back(&self.path, &o.target, &original) {
                    let _ = run.remove_state(&o.backup);
                }
            }
            Ok(None) => tracing::warn!(
                "cannot restore {}: its backup {} is gone (or not ours)",
                self.path.display(),
                o.backup.display()
            ),
            Err(e) => tracing::warn!(
                "cannot restore {}: its backup {} is unreadable: {e}",
                self.path.display(),
                o.backup.display()
            ),
        }
    }

    /// As a `kill -9` would leave it: the lock is released, the content and backup stay.
    #[cfg(test)]
    pub(super) fn crash(&mut self) {
        if let Some(o) = self.owned.take() {
            drop(o._lock);
        }
    }
}

/// Writes `original` back if our content is still there; returns false if it could not.
fn put_back(path: &Path, target: &Path, original: &[u8]) -> bool {
    let current = read_nofollow(target).unwrap_or_default();
    if !current.starts_with(MARKER.as_bytes()) {
        tracing::warn!(
            "{} was rewritten by something else since dtun set it: left as it is",
            path.display()
        );
        return true;
    }
    match write_nofollow(target, original) {
        Ok(()) => {
            tracing::info!(
                "{}: {} is back as it was",
                super::LOG_DNS_RESTORED,
                path.display()
            );
            true
        }
        Err(e) => {
            tracing::warn!("cannot restore {}: {e}", path.display());
            false
        }
    }
}

fn open_nofollow(path: &Path, write: bool) -> io::Result<fs::File> {
    let f = OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.file_type().is_file() {
        return Err(io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok(f)
}

fn read_nofollow(path: &Path) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    open_nofollow(path, false)?
        .take(1 << 20)
        .read_to_end(&mut data)?;
    Ok(data)
}

/// Truncates and writes `path` in place (a bind-mounted file cannot be renamed over); the file
/// was checked by [`trusted_target`] and is opened without following a link.
fn write_nofollow(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = open_nofollow(path, true)?;
    f.set_len(0)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The regular file `path` leads to, following only links nobody else can have planted:
/// every link, directory and the file itself owned by root or by us, every directory walked
/// through writable by nobody else (by others or a group other than root's only with the
/// sticky bit, which keeps them from replacing our entries). The error says what is wrong.
pub(super) fn trusted_target(path: &Path) -> Result<PathBuf, String> {
    let euid = crate::sys::euid();
    let ours = |m: &fs::Metadata| m.uid() == 0 || m.uid() == euid;
    let mut todo: Vec<OsString> = Vec::new();
    let push = |todo: &mut Vec<OsString>, p: &Path| {
        for c in p.components().rev() {
            match c {
                Component::Normal(n) => todo.push(n.to_os_string()),
                Component::ParentDir => todo.push("..".into()),
                _ => {}
            }
        }
    };
    if !path.is_absolute() {
        return Err(format!("{} is not an absolute path", path.display()));
    }
    push(&mut todo, path);
    let mut at = PathBuf::from("/");
    let mut links = 0;
    check_walked_dir(&at, &fs::metadata(&at).map_err(|e| e.to_string())?)?;
    while let Some(name) = todo.pop() {
        if name == ".." {
            at.pop();
            continue;
        }
        let next = at.join(&name);
        let m = fs::symlink_metadata(&next).map_err(|e| format!("{}: {e}", next.display()))?;
        if !ours(&m) {
            return Err(format!(
                "{} belongs to uid {}, not to root",
                next.display(),
                m.uid()
            ));
        }
        if m.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return Err(format!(
                    "more than {MAX_LINKS} links from {}",
                    path.display()
                ));
            }
            let dest = fs::read_link(&next).map_err(|e| format!("{}: {e}", next.display()))?;
            if dest.is_absolute() {
                at = PathBuf::from("/");
            }
            push(&mut todo, &dest);
        } else if m.is_dir() {
            check_walked_dir(&next, &m)?;
            at = next;
        } else if todo.is_empty() && m.file_type().is_file() {
            return Ok(next);
        } else {
            return Err(format!("{} is not a regular file", next.display()));
        }
    }
    Err(format!("{} leads to a directory", path.display()))
}

fn check_walked_dir(dir: &Path, m: &fs::Metadata) -> Result<(), String> {
    let mode = m.mode();
    let sticky = mode & 0o1000 != 0;
    if !sticky && (mode & 0o002 != 0 || (mode & 0o020 != 0 && m.gid() != 0)) {
        return Err(format!(
            "others may write to {} (mode {:o}) and could have put a link there",
            dir.display(),
            mode & 0o7777
        ));
    }
    Ok(())
}

/// Our resolv.conf: the marker line, the servers, and the original's `options` lines.
fn render(original: &[u8], servers: &[IpAddr], tun: &str, backup: &Path) -> String {
    let mut s = format!(
        "{MARKER}DNS of the tunnel {tun}, set while it is up; the original is restored on exit (copy in {})\n",
        backup.display()
    );
    for ip in servers {
        s.push_str(&format!("nameserver {ip}\n"));
    }
    for line in String::from_utf8_lossy(original).lines() {
        if line.trim_start().starts_with("options") {
            s.push_str(line);
            s.push('\n');
        }
    }
    s
}
