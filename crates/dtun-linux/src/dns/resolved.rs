//! DNS through systemd-resolved: per-link DNS on the TUN over D-Bus (`org.freedesktop.resolve1`,
//! the calls `resolvectl dns`/`domain`/`default-route`/`revert` make), used when that name has
//! an owner on the system bus (`DBUS_SYSTEM_BUS_ADDRESS`, else the standard socket).
//!
//! The calls run in one task of their own, in order ([`Cmd`]), so the session's task never
//! waits for the bus. A set that fails part way is reverted (`RevertLink`) and logged: the link
//! is never left half configured, and the tunnel stays up with the system's DNS. Nothing needs
//! recovering after a `kill -9`: resolved forgets a link's settings when the TUN goes.

use std::net::IpAddr;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{LOG_DNS_RESTORED, LOG_DNS_SET, join};

/// The bus name of systemd-resolved.
pub const BUS_NAME: &str = "org.freedesktop.resolve1";
const PATH: &str = "/org/freedesktop/resolve1";
const MANAGER: &str = "org.freedesktop.resolve1.Manager";
/// The routing domain that sends every query to the link.
pub const ROUTE_ALL_DOMAIN: &str = "~.";
/// Longest wait for the bus (connecting, one call).
const BUS_TIMEOUT: Duration = Duration::from_secs(3);

/// One method call on resolved's manager, bounded in time (a macro: the body's serde bound
/// is zbus's own, which it does not export).
macro_rules! call {
    ($conn:expr, $method:expr, $body:expr) => {
        match tokio::time::timeout(
            BUS_TIMEOUT,
            $conn.call_method(Some(BUS_NAME), PATH, Some(MANAGER), $method, $body),
        )
        .await
        {
            Ok(Ok(_)) => Ok::<(), String>(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {BUS_TIMEOUT:?}")),
        }
    };
}

/// Work for the resolved task.
pub(super) enum Cmd {
    Set {
        index: u32,
        tun: String,
        servers: Vec<IpAddr>,
        route_all: bool,
        from: String,
    },
    Revert {
        index: u32,
        tun: String,
    },
    /// Answered once everything sent before it is done.
    Flush(oneshot::Sender<()>),
}

/// Connects to the system bus and returns the connection if systemd-resolved is on it.
pub(super) async fn detect() -> Option<zbus::Connection> {
    let conn = match tokio::time::timeout(BUS_TIMEOUT, zbus::Connection::system()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::info!("no system bus ({e}): DNS goes into /etc/resolv.conf");
            return None;
        }
        Err(_) => {
            tracing::warn!(
                "the system bus did not answer within {BUS_TIMEOUT:?}: DNS goes into /etc/resolv.conf"
            );
            return None;
        }
    };
    let owned = tokio::time::timeout(
        BUS_TIMEOUT,
        conn.call_method(
            Some("org.freedesktop.DBus"),
            "/org/freedesktop/DBus",
            Some("org.freedesktop.DBus"),
            "NameHasOwner",
            &(BUS_NAME,),
        ),
    )
    .await;
    match owned {
        Ok(Ok(reply)) if reply.body().deserialize::<bool>().unwrap_or(false) => Some(conn),
        Ok(Ok(_)) => {
            tracing::info!("{BUS_NAME} is not on the system bus: DNS goes into /etc/resolv.conf");
            None
        }
        Ok(Err(e)) => {
            tracing::warn!(
                "cannot ask the system bus for {BUS_NAME} ({e}): DNS goes into /etc/resolv.conf"
            );
            None
        }
        Err(_) => {
            tracing::warn!(
                "the system bus did not answer within {BUS_TIMEOUT:?}: DNS goes into /etc/resolv.conf"
            );
            None
        }
    }
}

/// Starts the task that talks to resolved over `conn`.
pub(super) fn spawn(conn: zbus::Connection) -> mpsc::UnboundedSender<Cmd> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(conn, rx));
    tx
}

async fn run(conn: zbus::Connection, mut rx: mpsc::UnboundedReceiver<Cmd>) {
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Cmd::Set {
                index,
                tun,
                servers,
                route_all,
                from,
            } => match set_link(&conn, index, &servers, route_all).await {
                Ok(()) => tracing::info!(
                    "{LOG_DNS_SET}: {} from {from}, through systemd-resolved (per-link DNS on {tun}, ifindex {index}{}; reverted on exit; /etc/resolv.conf not touched)",
                    join(&servers),
                    if route_all {
                        ", routing domain ~. and default route: every query goes to these servers"
                    } else {
                        ""
                    }
                ),
                Err(e) => {
                    let undo = match call!(conn, "RevertLink", &(index as i32,)) {
                        Ok(()) => "the link's DNS settings were reverted".to_string(),
                        Err(r) => format!("reverting the link failed too ({r})"),
                    };
                    tracing::error!(
                        "cannot set DNS {} from {from} on {tun} through systemd-resolved: {e}; {undo}; the tunnel stays up with the system's DNS (resolvectl dns {tun} ... sets it by hand)",
                        join(&servers)
                    );
                }
            },
            Cmd::Revert { index, tun } => match call!(conn, "RevertLink", &(index as i32,)) {
                Ok(()) => tracing::info!(
                    "{LOG_DNS_RESTORED}: systemd-resolved's settings of {tun} reverted (RevertLink)"
                ),
                Err(e) => tracing::warn!(
                    "cannot revert systemd-resolved's settings of {tun}: {e} (they go with the TUN)"
                ),
            },
            Cmd::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// SetLinkDNS, then with `route_all` SetLinkDomains `~.` and SetLinkDefaultRoute true.
async fn set_link(
    conn: &zbus::Connection,
    index: u32,
    servers: &[IpAddr],
    route_all: bool,
) -> Result<(), String> {
    let ifindex = index as i32;
    let addrs: Vec<(i32, Vec<u8>)> = servers.iter().map(|ip| address(*ip)).collect();
    call!(conn, "SetLinkDNS", &(ifindex, addrs)).map_err(|e| format!("SetLinkDNS: {e}"))?;
    if route_all {
        call!(
            conn,
            "SetLinkDomains",
            &(ifindex, vec![(ROUTE_ALL_DOMAIN, true)])
        )
        .map_err(|e| format!("SetLinkDomains: {e}"))?;
        call!(conn, "SetLinkDefaultRoute", &(ifindex, true))
            .map_err(|e| format!("SetLinkDefaultRoute: {e}"))?;
    }
    Ok(())
}

/// An address as resolved takes it: (address family, bytes).
fn address(ip: IpAddr) -> (i32, Vec<u8>) {
    match ip {
        IpAddr::V4(a) => (libc::AF_INET, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6, a.octets().to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_carry_their_family() {
        assert_eq!(
            address("192.0.2.53".parse().unwrap()),
            (libc::AF_INET, vec![192, 0, 2, 53])
        );
        let (family, bytes) = address("2001:db8::53".parse().unwrap());
        assert_eq!((family, bytes.len(), bytes[15]), (libc::AF_INET6, 16, 0x53));
    }
}
