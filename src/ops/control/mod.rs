//! The control sockets behind `dtun status` and `dtun reload`. Every running dtun holds the
//! flock `INSTANCE` of its runtime directory ([`dtun_linux::rundir`]) and listens on two Unix
//! stream sockets there, per network namespace (`/run/dtun/NETNS.INSTANCE…`):
//!
//! - `NETNS.INSTANCE.sock`, mode 0660, group of `/run/dtun` (dtun's group when the package
//!   made it): `status` and `status json` only;
//! - `NETNS.INSTANCE.admin.sock`, mode 0600, owned by the user dtun runs as: `status`,
//!   `status json` and `reload`; a peer whose uid is neither 0 nor dtun's own is closed at
//!   once, even when the file mode let it connect.
//!
//! So the file system is the authorisation: who may open the file may ask, which keeps out
//! an unprivileged user (it cannot connect, nor make a file in `/run/dtun` to take a name) and
//! a uid-0 process without CAP_DAC_OVERRIDE when dtun runs as its own user (a rootful
//! container sharing the network namespace also has its own `/run`). The lock, not the socket,
//! is what stops a second dtun of the same instance in a namespace; it dies with its holder,
//! so the holder replaces a socket file left by a `kill -9`.
//!
//! Protocol: one request line, one reply, then the socket closes. A reply that starts with
//! `error: ` is an error. A local client cannot block or crash dtun: each socket has its own
//! [`MAX_CONNECTIONS`] slots (the status socket's users cannot take the admin socket's), more
//! are closed at once, a request line of at most [`MAX_REQUEST`] bytes within
//! [`READ_TIMEOUT`], a whole connection within [`CONNECTION_TIMEOUT`], one task each. The
//! asking side (`query`) checks who answers.

mod query;

use crate::ops::reload::ReloadHandle;
use dtun_linux::rundir::{Lock, LockError, RunDir, RunDirError};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use super::Source;

pub use query::{QueryError, list, query, running, sanitize};

/// Connections served at once on each socket; more are closed unanswered.
pub const MAX_CONNECTIONS: usize = 8;
/// Longest request line.
pub const MAX_REQUEST: usize = 128;
/// Time to send the request line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Time for a whole connection, the reply included.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// What a refused peer reads (and `dtun status` recognises).
const REFUSED: &str = "error: refused: only root and the user dtun runs as may ask";
/// The status socket's file name after `NETNS.INSTANCE`.
pub const STATUS_SUFFIX: &str = ".sock";
/// The admin socket's.
pub const ADMIN_SUFFIX: &str = ".admin.sock";

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "another dtun named {0} runs in this network namespace ({1}): give this one another -instance NAME"
    )]
    InUse(String, String),
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error("cannot take the instance lock of {0}: {1}")]
    Lock(String, String),
    #[error(
        "cannot replace {0}, left by a dtun that did not exit cleanly: {1} (remove it as root)"
    )]
    Stale(PathBuf, std::io::Error),
    #[error("cannot open the control socket {0}: {1}")]
    Bind(PathBuf, std::io::Error),
}

/// The control sockets of a running instance, with the lock that makes the name ours. The
/// socket files are removed when it is dropped, before the lock goes.
pub struct Control {
    status: Option<UnixListener>,
    admin: Option<UnixListener>,
    paths: [PathBuf; 2],
    _lock: Lock,
}

impl Drop for Control {
    fn drop(&mut self) {
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Takes the instance `instance` in this network namespace (refused while another dtun holds
/// it) and opens its two sockets.
pub fn bind(instance: &str) -> Result<Control, ControlError> {
    bind_in(&RunDir::open()?, instance)
}

/// [`bind`] in the runtime directory `dir`.
pub fn bind_in(dir: &RunDir, instance: &str) -> Result<Control, ControlError> {
    crate::config::check_name(instance).map_err(|e| ControlError::Lock(instance.to_string(), e))?;
    let who = format!("dtun pid {}, instance {instance}", std::process::id());
    let lock = dir.lock(instance, &who).map_err(|e| match e {
        LockError::Held { holder } => ControlError::InUse(instance.to_string(), holder),
        e => ControlError::Lock(instance.to_string(), e.to_string()),
    })?;
    // Ours, also the group's: the directory's group (dtun's, as the package makes it).
    let group = std::fs::metadata(dir.base()).map(|m| m.gid()).ok();
    let status_path = dir.path(&format!("{instance}{STATUS_SUFFIX}"));
    let admin_path = dir.path(&format!("{instance}{ADMIN_SUFFIX}"));
    let status = listen(&status_path, 0o660, group)?;
    let admin = listen(&admin_path, 0o600, None)?;
    Ok(Control {
        status: Some(status),
        admin: Some(admin),
        paths: [status_path, admin_path],
        _lock: lock,
    })
}

/// A listening socket at `path` with `mode` (and `group`), set before it listens: nobody the
/// mode keeps out can connect, not even in between. A file already there is a crash's left-over
/// (we hold the lock): it is replaced.
fn listen(path: &Path, mode: u32, group: Option<u32>) -> Result<UnixListener, ControlError> {
    use socket2::{Domain, SockAddr, Socket, Type};
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(ControlError::Stale(path.to_path_buf(), e));
        }
        _ => {}
    }
    let err = |e| ControlError::Bind(path.to_path_buf(), e);
    let sock = Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None).map_err(err)?;
    sock.bind(&SockAddr::unix(path).map_err(err)?)
        .map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    // A root dtun gives the file to the directory's group (the socket has root's otherwise);
    // under the units dtun's own group already is that group (and chown is not in their
    // system call filter).
    if let Some(gid) = group
        && dtun_linux::sys::euid() == 0
        && gid != 0
    {
        let _ = std::os::unix::fs::chown(path, None, Some(gid));
    }
    sock.listen(64).map_err(err)?;
    sock.set_nonblocking(true).map_err(err)?;
    UnixListener::from_std(std::os::unix::net::UnixListener::from(
        std::os::fd::OwnedFd::from(sock),
    ))
    .map_err(err)
}

/// A request line, parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Status {
        json: bool,
    },
    /// As SIGHUP: the server reads its configuration again (`crate::ops::reload`).
    Reload,
}

impl Request {
    pub fn parse(line: &str) -> Result<Request, String> {
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        match words.as_slice() {
            ["status"] => Ok(Request::Status { json: false }),
            ["status", "json"] => Ok(Request::Status { json: true }),
            ["reload"] => Ok(Request::Reload),
            _ => Err(format!(
                "error: unknown request {:?}: this dtun answers `status`, `status json` and `reload`\n",
                line.escape_debug().to_string()
            )),
        }
    }
}

/// Which socket a connection came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// Status only; the file mode decided who may connect.
    Status,
    /// Also reload; root and dtun's own user only.
    Admin,
}

/// Serves both control sockets for ever (until the task is aborted).
pub async fn serve(mut control: Control, source: Source, reload: Option<ReloadHandle>) {
    let status = control.status.take().expect("serve takes the sockets once");
    let admin = control.admin.take().expect("serve takes the sockets once");
    // Owns the lock and removes the files when this task ends.
    let _control = control;
    tokio::join!(
        serve_one(status, Side::Status, source.clone(), reload.clone()),
        serve_one(admin, Side::Admin, source, reload),
    );
}

async fn serve_one(
    listener: UnixListener,
    side: Side,
    source: Source,
    reload: Option<ReloadHandle>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let own = dtun_linux::sys::euid();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors, say: wait instead of spinning.
                tracing::debug!("control socket: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Who it is, before it gets a slot: a refused peer is closed at once.
        let uid = stream.peer_cred().map(|c| c.uid()).ok();
        if side == Side::Admin && !matches!(uid, Some(u) if u == 0 || u == own) {
            tracing::debug!(
                "control socket: refused a peer with uid {uid:?} (only 0 and {own} may ask)"
            );
            // Best effort, never waiting: the socket buffer takes a line at once.
            let _ = stream.try_write(format!("{REFUSED}\n").as_bytes());
            continue;
        }
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!("control socket: {MAX_CONNECTIONS} connections open, one more closed");
            continue;
        };
        let source = source.clone();
        let reload = reload.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let handled = handle(stream, side, &source, reload.as_ref());
            match tokio::time::timeout(CONNECTION_TIMEOUT, handled).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("control socket: {e}"),
                Err(_) => tracing::debug!("control socket: a connection took too long, closed"),
            }
        });
    }
}

async fn handle(
    mut stream: UnixStream,
    side: Side,
    source: &Source,
    reload: Option<&ReloadHandle>,
) -> std::io::Result<()> {
    let line = read_line(&mut stream).await?;
    let reply = match Request::parse(&line) {
        Ok(Request::Status { json }) => match source.snapshot().await {
            Some(s) if json => s.json(),
            Some(s) => s.human(),
            None => "error: dtun is too busy to answer: try again\n".to_string(),
        },
        Ok(Request::Reload) if side == Side::Status => format!("{REFUSED}\n"),
        Ok(Request::Reload) => match reload {
            Some(r) => match r.reload_logged("dtun reload").await {
                Ok(summary) => format!("reloaded: {summary}\n"),
                Err(e) => format!("error: reload failed, keeping the running configuration: {e}\n"),
            },
            None => {
                "error: reload is a server feature: restart the client to change its settings\n"
                    .to_string()
            }
        },
        Err(e) => e,
    };
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

/// One request line: at most [`MAX_REQUEST`] bytes up to a newline (or the end of input),
/// within [`READ_TIMEOUT`].
async fn read_line(stream: &mut UnixStream) -> std::io::Result<String> {
    let mut buf = [0u8; MAX_REQUEST];
    let mut len = 0;
    let read = async {
        loop {
            if let Some(end) = buf[..len].iter().position(|b| *b == b'\n') {
                return Ok(end);
            }
            if len == buf.len() {
                return Err(std::io::Error::other("request line too long"));
            }
            match stream.read(&mut buf[len..]).await? {
                0 => return Ok(len),
                n => len += n,
            }
        }
    };
    let end = tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .map_err(|_| std::io::Error::other("no request line in time"))??;
    Ok(String::from_utf8_lossy(&buf[..end]).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(
            Request::parse("status"),
            Ok(Request::Status { json: false })
        );
        assert_eq!(
            Request::parse(" status  json "),
            Ok(Request::Status { json: true })
        );
        let e = Request::parse("reload\u{1b}").unwrap_err();
        assert!(
            e.starts_with("error: unknown request") && e.contains("status json"),
            "{e}"
        );
        assert!(!e.contains('\u{1b}'));
    }

    #[test]
    fn names() {
        assert!(crate::config::check_name("office_2-b").is_ok());
        for bad in ["", "a b", "../x", "a.b", &"x".repeat(33)] {
            let e = crate::config::check_name(bad).unwrap_err();
            assert!(
                e.contains("-instance") && e.contains("NETNS.NAME.sock"),
                "{e}"
            );
        }
    }

    #[tokio::test]
    async fn one_instance_per_name_and_files_that_say_who_may_ask() {
        let base = std::env::temp_dir().join(format!("dtun-control-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dir = RunDir::at(&base).unwrap();
        // A crash's left-over at the name is replaced.
        std::fs::write(dir.path("edge.sock"), b"stale").unwrap();
        let c = bind_in(&dir, "edge").unwrap();
        let mode = |s: &str| std::fs::metadata(dir.path(s)).unwrap().mode() & 0o7777;
        assert_eq!(mode("edge.sock"), 0o660);
        assert_eq!(mode("edge.admin.sock"), 0o600);
        match bind_in(&dir, "edge") {
            Err(ControlError::InUse(name, holder)) => {
                assert_eq!(name, "edge");
                assert!(
                    holder.contains(&format!("pid {}", std::process::id())),
                    "{holder}"
                );
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a second dtun took the name"),
        }
        assert_eq!(list(&dir).unwrap(), vec!["edge".to_string()]);
        drop(c);
        assert!(!dir.path("edge.sock").exists() && !dir.path("edge.admin.sock").exists());
        assert!(list(&dir).unwrap().is_empty());
        bind_in(&dir, "edge").unwrap();
        std::fs::remove_dir_all(&base).unwrap();
    }
}
