//! The control socket: every running dtun listens on the abstract Unix stream socket
//! `@dtun/INSTANCE`. An abstract name belongs to the network namespace (as dtun's TUN devices
//! do), so instances in different namespaces never collide, and it vanishes with the process:
//! no directory, no stale file. Taking the name is also what stops a second dtun of the same
//! instance in one namespace.
//!
//! Protocol: one request line, one reply, then the socket closes. Requests: `status` (the
//! human view), `status json`. A reply that starts with `error: ` is an error. Only root and
//! dtun's own user are answered (SO_PEERCRED). A local client cannot block or crash dtun: at
//! most [`MAX_CONNECTIONS`] at once (more are closed at once), a request line of at most
//! [`MAX_REQUEST`] bytes within [`READ_TIMEOUT`], a whole connection within
//! [`CONNECTION_TIMEOUT`], one task each.

use crate::ops::reload::ReloadHandle;
use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use super::Source;

/// Connections served at once; more are closed unanswered.
pub const MAX_CONNECTIONS: usize = 8;
/// Longest request line.
pub const MAX_REQUEST: usize = 128;
/// Time to send the request line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Time for a whole connection, the reply included.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// What a refused peer reads (and `dtun status` recognises).
const REFUSED: &str = "error: refused: only root and the user dtun runs as may ask";

/// The abstract socket name of an instance (without the leading NUL).
pub fn socket_name(instance: &str) -> String {
    format!("dtun/{instance}")
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "another dtun named {0} runs in this network namespace: give this one another -instance NAME"
    )]
    InUse(String),
    #[error("cannot open the status socket @dtun/{0}: {1}")]
    Bind(String, std::io::Error),
}

/// Checks an instance name (the rule of `crate::nft::check_instance`, which a server's table
/// name shares), with a message about the status socket.
pub fn check_name(name: &str) -> Result<(), String> {
    crate::nft::check_instance(name).map_err(|_| {
        format!(
            "-instance {name:?}: use 1 to 32 letters, digits, '-' or '_' (it names the status socket @dtun/NAME)"
        )
    })
}

/// Takes `@dtun/INSTANCE`; refuses if another dtun holds it in this network namespace.
pub fn bind(instance: &str) -> Result<UnixListener, ControlError> {
    let err = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::AddrInUse => ControlError::InUse(instance.to_string()),
        _ => ControlError::Bind(instance.to_string(), e),
    };
    let addr =
        std::os::unix::net::SocketAddr::from_abstract_name(socket_name(instance)).map_err(err)?;
    let l = std::os::unix::net::UnixListener::bind_addr(&addr).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    UnixListener::from_std(l).map_err(err)
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

/// Serves the control socket for ever (until the task is aborted).
pub async fn serve(listener: UnixListener, source: Source, reload: Option<ReloadHandle>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let own = crate::sys::euid();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors, say: wait instead of spinning.
                tracing::debug!("status socket: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!("status socket: {MAX_CONNECTIONS} connections open, one more closed");
            continue;
        };
        let source = source.clone();
        let reload = reload.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let handled = handle(stream, &source, reload.as_ref(), own);
            match tokio::time::timeout(CONNECTION_TIMEOUT, handled).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("status socket: {e}"),
                Err(_) => tracing::debug!("status socket: a connection took too long, closed"),
            }
        });
    }
}

async fn handle(
    mut stream: UnixStream,
    source: &Source,
    reload: Option<&ReloadHandle>,
    own: u32,
) -> std::io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    // Read first, also from a peer about to be refused: a socket closed with unread input
    // resets the connection, and the peer would lose the reply that says why.
    let line = read_line(&mut stream).await?;
    if uid != 0 && uid != own {
        tracing::debug!("status socket: refused a peer with uid {uid} (only 0 and {own} may ask)");
        stream.write_all(format!("{REFUSED}\n").as_bytes()).await?;
        return stream.shutdown().await;
    }
    let reply = match Request::parse(&line) {
        Ok(Request::Status { json }) => match source.snapshot().await {
            Some(s) if json => s.json(),
            Some(s) => s.human(),
            None => "error: dtun is too busy to answer: try again\n".to_string(),
        },
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

/// Why `dtun status` got no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(
        "no dtun named {0} is running in this network namespace: start it, or name the one you mean (dtun status NAME, its -instance)"
    )]
    NotRunning(String),
    #[error(
        "dtun {0} refused to answer: dtun status needs root or the user dtun runs as (try sudo)"
    )]
    Refused(String),
    #[error("dtun {0}: {1}")]
    Failed(String, String),
    #[error("cannot ask dtun {0} over @dtun/{0}: {1}")]
    Io(String, std::io::Error),
}

/// Sends `request` to the dtun named `instance` in this network namespace and returns its
/// reply (blocking; for the `dtun status` command).
pub fn query(instance: &str, request: &str) -> Result<String, QueryError> {
    let io = |e: std::io::Error| QueryError::Io(instance.to_string(), e);
    let addr =
        std::os::unix::net::SocketAddr::from_abstract_name(socket_name(instance)).map_err(io)?;
    let mut s = match std::os::unix::net::UnixStream::connect_addr(&addr) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            ) =>
        {
            return Err(QueryError::NotRunning(instance.to_string()));
        }
        Err(e) => return Err(io(e)),
    };
    let limit = Some(CONNECTION_TIMEOUT + Duration::from_secs(1));
    s.set_read_timeout(limit).map_err(io)?;
    s.set_write_timeout(limit).map_err(io)?;
    // A write error (the socket closed at once: dtun at its limit) shows in the reply.
    let _ = s.write_all(format!("{request}\n").as_bytes());
    // What came before an error (a reset) still counts.
    let mut buf = Vec::new();
    if let Err(e) = s.read_to_end(&mut buf)
        && buf.is_empty()
    {
        return Err(io(e));
    }
    let reply = String::from_utf8_lossy(&buf).into_owned();
    if reply.starts_with(REFUSED) {
        return Err(QueryError::Refused(instance.to_string()));
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
        assert!(check_name("office_2-b").is_ok());
        for bad in ["", "a b", "../x", &"x".repeat(33)] {
            let e = check_name(bad).unwrap_err();
            assert!(e.contains("-instance") && e.contains("@dtun/NAME"), "{e}");
        }
        assert_eq!(socket_name("edge"), "dtun/edge");
    }
}
