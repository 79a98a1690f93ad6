//! One check of the files dtun trusts, at start and in `-check`: secrets (key files, the
//! credentials file, the master key, the `-metrics-token`, a config file that holds keys, a
//! `[clients.ID] key_file`) and, when dtun runs as root, the `-up`/`-down` scripts.
//!
//! - A secret readable by other users is a warning; by its group too, unless that group is
//!   the one dtun runs as (the packaged units read `root:dtun` files of mode 0640).
//! - A secret writable by anyone but its owner, or owned by someone other than root or the
//!   user dtun runs as, is refused: whoever can write it can choose the key.
//! - A script dtun runs as root is refused unless root owns it and its directories up to `/`
//!   and none of them is writable by group or others (a root-owned sticky directory such as
//!   /tmp excepted: nobody else can rename what root owns in it), as sudo and OpenSSH check
//!   their files: whoever can change or replace it runs code as root.
//!
//! Each message says what to do (`chmod 600 FILE`, `chown root FILE`). The warnings are
//! returned, not logged, so the caller logs them once logging is set up.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::file::Loaded;

/// The secret files of a configuration, with what each is.
fn secrets(l: &Loaded) -> Vec<(&'static str, PathBuf)> {
    let c = &l.cli;
    let mut v = Vec::new();
    let flags = [
        ("-key-file", &c.key_file),
        ("-clients", &c.clients),
        ("-master-key-file", &c.master_key_file),
        ("-metrics-token", &c.metrics_token),
    ];
    for (what, p) in flags {
        if let Some(p) = p {
            v.push((what, p.clone()));
        }
    }
    v.extend(l.secrets.iter().map(|p| ("key file", p.clone())));
    v
}

/// Checks every secret and script of `l`: the warnings to log, or why it is refused.
pub fn check(l: &Loaded) -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    for (what, p) in secrets(l) {
        if let Some(w) = secret(what, &p, dtun_linux::sys::euid(), dtun_linux::sys::egid())? {
            warnings.push(w);
        }
    }
    if dtun_linux::sys::euid() == 0 {
        for (flag, p) in [("-up", &l.cli.up), ("-down", &l.cli.down)] {
            if let Some(p) = p {
                script(flag, p)?;
            }
        }
    }
    Ok(warnings)
}

/// Checks one secret for a process of `euid`/`egid`: Ok(Some(warning)), Ok(None) when it is
/// fine (or missing: its reader says so), Err when it must be refused.
pub fn secret(what: &str, path: &Path, euid: u32, egid: u32) -> Result<Option<String>, String> {
    let Ok(m) = std::fs::metadata(path) else {
        return Ok(None);
    };
    let p = path.display();
    let mode = m.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "{what} {p} is writable by {} (mode {mode:04o}): whoever can write it can choose the key; chmod 600 {p}",
            if mode & 0o002 != 0 {
                "every user"
            } else {
                "its group"
            }
        ));
    }
    if m.uid() != 0 && m.uid() != euid {
        return Err(format!(
            "{what} {p} belongs to uid {}, who can change it: chown root {p} (or to the user dtun runs as)",
            m.uid()
        ));
    }
    if mode & 0o004 != 0 {
        return Ok(Some(format!(
            "{what} {p} is readable by every user: chmod 600 {p} (or 0640 with group dtun for the packaged units)"
        )));
    }
    if mode & 0o040 != 0 && m.gid() != egid {
        return Ok(Some(format!(
            "{what} {p} is readable by its group {}: chmod 600 {p}, or chgrp it to the group dtun runs as",
            m.gid()
        )));
    }
    Ok(None)
}

/// Checks a script run as root: it and every directory above it belong to root and are
/// writable by nobody else (a root-owned sticky directory may be world-writable).
pub fn script(flag: &str, path: &Path) -> Result<(), String> {
    let Ok(full) = std::fs::canonicalize(path) else {
        return Ok(()); // missing: the executable check says so
    };
    let m =
        std::fs::metadata(&full).map_err(|e| format!("{flag} script {}: {e}", full.display()))?;
    let p = full.display();
    if m.uid() != 0 {
        return Err(format!(
            "{flag} script {p} belongs to uid {} but runs as root: chown root {p}",
            m.uid()
        ));
    }
    if m.mode() & 0o022 != 0 {
        return Err(format!(
            "{flag} script {p} runs as root but others can write it (mode {:04o}): chmod go-w {p}",
            m.mode() & 0o7777
        ));
    }
    dirs(flag, &p.to_string(), full.parent())?;
    // A symlink's own directory too: whoever can write it can point the link elsewhere.
    let link_dir = std::path::absolute(path)
        .ok()
        .and_then(|a| a.parent().and_then(|d| std::fs::canonicalize(d).ok()));
    dirs(flag, &p.to_string(), link_dir.as_deref())
}

/// `start` and every directory above it: root's, and not writable by others unless sticky.
fn dirs(flag: &str, p: &str, start: Option<&Path>) -> Result<(), String> {
    for dir in start.into_iter().flat_map(Path::ancestors) {
        let d = dir.display();
        let m = std::fs::metadata(dir).map_err(|e| format!("{flag} script {p}: {d}: {e}"))?;
        let mode = m.mode() & 0o7777;
        if m.uid() != 0 {
            return Err(format!(
                "{flag} script {p} runs as root but its directory {d} belongs to uid {}, who could replace it: chown root {d}, or move the script",
                m.uid()
            ));
        }
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            return Err(format!(
                "{flag} script {p} runs as root but its directory {d} is writable by others (mode {mode:04o}), who could replace it: chmod go-w {d}, or move the script"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, "secret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    /// Modes of a secret for a process of the file's own user and group, and of another
    /// group: what warns and what is refused.
    #[test]
    fn secret_modes() {
        let dir = std::env::temp_dir().join(format!("dtun-perms-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (uid, gid) = (dtun_linux::sys::euid(), dtun_linux::sys::egid());
        let ok = file(&dir, "ok", 0o600);
        assert_eq!(secret("k", &ok, uid, gid), Ok(None));
        let group = file(&dir, "group", 0o640);
        assert_eq!(
            secret("k", &group, uid, gid),
            Ok(None),
            "read by our own group"
        );
        let w = secret("k", &group, uid, gid + 1).unwrap().unwrap();
        assert!(
            w.contains("readable by its group") && w.contains("chmod 600"),
            "{w}"
        );
        let world = file(&dir, "world", 0o644);
        let w = secret("k", &world, uid, gid).unwrap().unwrap();
        assert!(w.contains("every user") && w.contains("chmod 600"), "{w}");
        for mode in [0o620, 0o602, 0o666] {
            let p = file(&dir, &format!("w{mode:o}"), mode);
            let e = secret("k", &p, uid, gid).unwrap_err();
            assert!(e.contains("writable") && e.contains("chmod 600"), "{e}");
        }
        // Owned by another user (as root the test can make one): refused.
        let theirs = if uid == 0 {
            std::os::unix::fs::chown(&ok, Some(4242), None).unwrap();
            secret("k", &ok, uid, gid)
        } else {
            secret("k", &ok, uid + 1, gid)
        };
        let e = theirs.unwrap_err();
        assert!(
            e.contains("belongs to uid") && e.contains("chown root"),
            "{e}"
        );
        assert_eq!(secret("k", &dir.join("missing"), uid, gid), Ok(None));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
