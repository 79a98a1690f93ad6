//! The asking side of the control sockets (`dtun status`, `dtun reload`): find the instance's
//! socket in this network namespace, check who answers, and never print its bytes raw.
//!
//! Who is believed: an answer from uid 0, from the system user `dtun` (its uid from
//! /etc/passwd: the packaged units run dtun as that user), or from the asking user itself (a
//! user asking its own dtun). Not "the socket file's owner": in the package's layout
//! (/run/dtun `root:dtun 1770`) any member of the group may create a socket file there, and
//! would own it.

use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::Duration;

use super::{ADMIN_SUFFIX, CONNECTION_TIMEOUT, REFUSED, STATUS_SUFFIX};
use dtun_linux::rundir::{RunDir, RunDirError};

/// Why `dtun status` got no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(
        "no dtun named {0} is running in this network namespace: start it, or name the one you mean (dtun status NAME, its -instance)"
    )]
    NotRunning(String),
    #[error("dtun {0} refused to answer: {1} needs root or the user dtun runs as{2} (try sudo)")]
    Refused(String, &'static str, &'static str),
    #[error(
        "{path} is answered by uid {uid}, which is neither root, nor the system user dtun, nor you: not believing it (remove the file if no dtun of yours runs there)"
    )]
    Impostor { path: String, uid: u32 },
    #[error("dtun {0}: {1}")]
    Failed(String, String),
    #[error("cannot ask dtun {0} over {1}: {2}")]
    Io(String, String, std::io::Error),
    #[error(transparent)]
    RunDir(RunDirError),
}

/// `text` safe for a terminal: control characters other than newline and tab escaped, as
/// `\u{1b}` say, so a reply cannot move the cursor, recolour or retitle anything.
pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// The instances with a control socket in this network namespace, sorted (a socket left by a
/// `kill -9` is listed until its instance starts again; asking it says it is not running).
pub fn list(dir: &RunDir) -> std::io::Result<Vec<String>> {
    Ok(dir
        .list(ADMIN_SUFFIX)?
        .into_iter()
        .filter_map(|n| n.strip_suffix(ADMIN_SUFFIX).map(str::to_string))
        .filter(|n| crate::config::check_name(n).is_ok())
        .collect())
}

/// The instances running in this network namespace, sorted (for `dtun status` and `dtun
/// reload` without a name): those with a socket file that takes connections (one left by a
/// `kill -9` refuses them). Connecting costs a running dtun nothing: a connection closed
/// without a request ends at once. One whose sockets we may not open is listed (it may run;
/// asking it says who may ask).
pub fn running() -> Vec<String> {
    let Ok(dir) = RunDir::open() else {
        return Vec::new();
    };
    let alive = |path: &Path| match std::os::unix::net::UnixStream::connect(path) {
        // A socket someone else answers for is not a dtun.
        Ok(s) => Some(dtun_linux::sys::peer_uid(&s).is_ok_and(|uid| believed(uid, &dtun_uid()))),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => None,
        Err(_) => Some(false),
    };
    list(&dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|name| {
            let admin = dir.path(&format!("{name}{ADMIN_SUFFIX}"));
            let status = dir.path(&format!("{name}{STATUS_SUFFIX}"));
            alive(&admin).or_else(|| alive(&status)).unwrap_or(true)
        })
        .collect()
}

/// Sends `request` to the dtun named `instance` in this network namespace and returns its
/// reply, sanitised (blocking; for `dtun status` and `dtun reload`). The admin socket is tried
/// first; `status` falls back to the status socket when the file mode keeps us out of it.
pub fn query(instance: &str, request: &str) -> Result<String, QueryError> {
    let dir = match RunDir::open() {
        Ok(d) => d,
        // No /run/dtun (and no right to make it): nothing runs.
        Err(RunDirError::Create(..)) => return Err(QueryError::NotRunning(instance.to_string())),
        Err(e) => return Err(QueryError::RunDir(e)),
    };
    query_in(&dir, instance, request)
}

/// [`query`] in the runtime directory `dir`.
pub fn query_in(dir: &RunDir, instance: &str, request: &str) -> Result<String, QueryError> {
    let reload = request == "reload";
    let admin = dir.path(&format!("{instance}{ADMIN_SUFFIX}"));
    let mut s = match connect(instance, &admin)? {
        Ok(s) => s,
        Err(()) if reload => {
            return Err(QueryError::Refused(instance.to_string(), "dtun reload", ""));
        }
        Err(()) => {
            let status = dir.path(&format!("{instance}{STATUS_SUFFIX}"));
            connect(instance, &status)?.map_err(|()| {
                QueryError::Refused(
                    instance.to_string(),
                    "dtun status",
                    ", or membership in the group of its socket",
                )
            })?
        }
    };
    let io =
        |e: std::io::Error| QueryError::Io(instance.to_string(), admin.display().to_string(), e);
    let limit = Some(CONNECTION_TIMEOUT + Duration::from_secs(1));
    s.set_read_timeout(limit).map_err(io)?;
    s.set_write_timeout(limit).map_err(io)?;
    // A write error (the socket closed at once: dtun at its limit) shows in the reply.
    let _ = s.write_all(format!("{request}\n").as_bytes());
    // What came before an error (a reset) still counts.
    let mut buf = Vec::new();
    if let Err(e) = Read::by_ref(&mut s).take(1 << 20).read_to_end(&mut buf)
        && buf.is_empty()
    {
        return Err(io(e));
    }
    let reply = sanitize(&String::from_utf8_lossy(&buf));
    if reply.starts_with(REFUSED) {
        return Err(QueryError::Refused(
            instance.to_string(),
            if reload { "dtun reload" } else { "dtun status" },
            "",
        ));
    }
    if let Some(e) = reply.strip_prefix("error: ") {
        return Err(QueryError::Failed(
            instance.to_string(),
            e.trim().to_string(),
        ));
    }
    if reply.is_empty() {
        return Err(QueryError::Failed(
            instance.to_string(),
            "closed without an answer (at its limit of connections?): try again".to_string(),
        ));
    }
    Ok(reply)
}

/// Connects to the socket file at `path`, answered by a uid we believe only ([`believed`]):
/// Ok(Err) when the file's mode keeps us out.
fn connect(
    instance: &str,
    path: &Path,
) -> Result<Result<std::os::unix::net::UnixStream, ()>, QueryError> {
    let io =
        |e: std::io::Error| QueryError::Io(instance.to_string(), path.display().to_string(), e);
    let not_running = || QueryError::NotRunning(instance.to_string());
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_running()),
        Err(e) => return Err(io(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(io(std::io::Error::other("not a socket")));
    }
    let s = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Ok(Err(())),
        // A socket file left by a `kill -9`.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            ) =>
        {
            return Err(not_running());
        }
        Err(e) => return Err(io(e)),
    };
    let uid = dtun_linux::sys::peer_uid(&s).map_err(io)?;
    if !believed(uid, &dtun_uid()) {
        return Err(QueryError::Impostor {
            path: path.display().to_string(),
            uid,
        });
    }
    Ok(Ok(s))
}

/// Whether an answer from `uid` is believed (module header): root, the system user dtun
/// (`dtun`, its uid if it has one), or ourselves.
fn believed(uid: u32, dtun: &Option<u32>) -> bool {
    uid == 0 || uid == dtun_linux::sys::euid() || *dtun == Some(uid)
}

/// The uid of the system user `dtun`, from /etc/passwd (system users live there, not in a
/// directory service); `None` when there is none.
fn dtun_uid() -> Option<u32> {
    passwd_uid(&std::fs::read_to_string("/etc/passwd").ok()?, "dtun")
}

/// The uid of `user` in the text of an /etc/passwd (`name:password:uid:…` lines).
fn passwd_uid(passwd: &str, user: &str) -> Option<u32> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == user).then_some(())?;
        fields.nth(1)?.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dtun_user_is_found_in_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\n+dtunx:x:5:5::/:/bin/false\n\ndtun:x:998:998:dtun:/nonexistent:/usr/sbin/nologin\n";
        assert_eq!(passwd_uid(passwd, "dtun"), Some(998));
        assert_eq!(passwd_uid(passwd, "root"), Some(0));
        assert_eq!(passwd_uid(passwd, "dtu"), None);
        assert_eq!(passwd_uid("dtun:x:notanumber:1::/:", "dtun"), None);
        assert!(believed(0, &None) && believed(998, &Some(998)));
        assert!(believed(dtun_linux::sys::euid(), &None));
        assert!(!believed(4242, &Some(998)) || dtun_linux::sys::euid() == 4242);
    }

    #[test]
    fn replies_cannot_drive_the_terminal() {
        assert_eq!(sanitize("ok\n\tx"), "ok\n\tx");
        let s = sanitize("\u{1b}]0;owned\u{7}\u{1b}[2Jreloaded\r");
        assert!(!s.chars().any(|c| c.is_control() && c != '\n'), "{s}");
        assert!(s.contains("\\u{1b}") && s.contains("reloaded"), "{s}");
    }
}
