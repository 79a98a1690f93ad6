//! The one place dtun talks to the Linux kernel about links, addresses and routes, over rtnetlink
//! (never by running `ip`); every failure names the operation and the link it was aimed at.
//! Links and addresses are here; routes and policy rules in `routes.rs`.

mod host;
mod routes;
mod watch;

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::RouteHeader;
use rtnetlink::{Handle, LinkUnspec};

pub(crate) use routes::{route_destination, route_table};
pub use watch::PathEvents;

/// What the user is told when the kernel refuses a change for lack of privilege.
use crate::privilege::GRANT_NET_ADMIN;

/// The main routing table's number.
pub const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// A failed netlink operation. The message says what was being done and to which link; the
/// kernel's errno (if any) is reachable through [`NetlinkError::errno`] and the `is_*` helpers,
/// so callers can treat "already exists" or "not found" as benign where that makes sense.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The netlink socket could not be opened, or there was no tokio runtime to drive it.
    #[error("failed to open a netlink socket: {0}")]
    Socket(std::io::Error),
    /// The kernel answered EPERM or EACCES: the process lacks CAP_NET_ADMIN.
    #[error("failed to {op}: dtun needs CAP_NET_ADMIN: {GRANT_NET_ADMIN}")]
    PermissionDenied {
        /// What was being attempted, e.g. `add route 10.0.0.0/24 on dtun0`.
        op: String,
        /// EPERM or EACCES, kept so the original answer is not lost.
        errno: i32,
    },
    /// The kernel refused the request with some other errno.
    #[error("failed to {op}: {}", std::io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// What was being attempted, e.g. `add route 10.0.0.0/24 on dtun0`.
        op: String,
        /// The positive errno the kernel answered with.
        errno: i32,
    },
    /// The request was invalid before it reached the kernel, the connection task is gone, or
    /// the kernel's answer made no sense.
    #[error("failed to {op}: {reason}")]
    Other {
        /// What was being attempted.
        op: String,
        /// Why it failed.
        reason: String,
    },
}

impl NetlinkError {
    /// Wraps an rtnetlink error with a description of the operation.
    pub(crate) fn new(op: String, err: rtnetlink::Error) -> Self {
        match raw_errno(&err) {
            Some(errno) if errno == libc::EPERM || errno == libc::EACCES => {
                NetlinkError::PermissionDenied { op, errno }
            }
            Some(errno) => NetlinkError::Kernel { op, errno },
            None => NetlinkError::Other {
                op,
                reason: match err {
                    rtnetlink::Error::RequestFailed => "the netlink connection is closed".into(),
                    other => other.to_string(),
                },
            },
        }
    }

    /// The errno the kernel answered with, if the kernel answered at all.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::PermissionDenied { errno, .. } | NetlinkError::Kernel { errno, .. } => {
                Some(*errno)
            }
            NetlinkError::Socket(e) => e.raw_os_error(),
            NetlinkError::Other { .. } => None,
        }
    }

    /// True when the kernel said the thing being created is already there (EEXIST).
    pub fn is_already_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// True when the kernel said the link, route or address does not exist
    /// (ENOENT, ESRCH or ENODEV).
    pub fn is_not_found(&self) -> bool {
        self.errno().is_some_and(is_not_found_errno)
    }

    /// True when the kernel refused for lack of CAP_NET_ADMIN (EPERM or EACCES).
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, NetlinkError::PermissionDenied { .. })
    }
}

/// The positive errno inside an rtnetlink error, if it carries one.
pub(crate) fn raw_errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|code| code.get().abs()),
        _ => None,
    }
}

pub(crate) fn is_not_found_errno(errno: i32) -> bool {
    matches!(errno, libc::ENOENT | libc::ESRCH | libc::ENODEV)
}

/// A handle on one rtnetlink socket. Cheap to clone; all clones share the socket and its
/// connection task, which ends when the last clone is dropped.
#[derive(Clone)]
pub struct Netlink {
    /// Requests go through this; the connection task spawned in [`Netlink::new`] does the I/O.
    handle: Handle,
}

impl Netlink {
    /// Opens a netlink socket in the calling thread's network namespace and spawns its connection
    /// task on the current tokio runtime.
    pub fn new() -> Result<Netlink, NetlinkError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            NetlinkError::Socket(std::io::Error::other(
                "not called from inside a tokio runtime",
            ))
        })?;
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        runtime.spawn(connection);
        Ok(Netlink { handle })
    }

    /// The rtnetlink handle, for the modules that build their own requests (src/routes.rs).
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The interface index of the link called `name`.
    pub async fn link_index(&self, name: &str) -> Result<u32, NetlinkError> {
        let op = || format!("look up link {name}");
        let link = self
            .handle
            .link()
            .get()
            .match_name(name)
            .execute()
            .try_next()
            .await
            .map_err(|e| NetlinkError::new(op(), e))?;
        match link {
            Some(link) => Ok(link.header.index),
            // The kernel answers a named get with ENODEV, so this is only a fallback.
            None => Err(NetlinkError::Kernel {
                op: op(),
                errno: libc::ENODEV,
            }),
        }
    }

    /// Sets the MTU and brings the link up.
    pub async fn set_link_up(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index).mtu(mtu).up().build();
        if let Err(e) = self.handle.link().change(message).execute().await {
            let op = format!("set MTU {mtu} and bring up {}", self.link_name(index).await);
            return Err(NetlinkError::new(op, e));
        }
        Ok(())
    }

    /// Point-to-point IPv4 address, like `ip addr add LOCAL peer PEER/32 dev X` (IFA_LOCAL=local,
    /// IFA_ADDRESS=peer, prefix 32). Succeeds if that exact address is already there.
    pub async fn add_p2p_address(
        &self,
        index: u32,
        local: Ipv4Addr,
        peer: Ipv4Addr,
    ) -> Result<(), NetlinkError> {
        let mut request = self.handle.address().add(index, local.into(), 32);
        // The builder sets IFA_ADDRESS = IFA_LOCAL; a point-to-point address puts the peer there.
        for attribute in &mut request.message_mut().attributes {
            if let AddressAttribute::Address(address) = attribute {
                *address = peer.into();
            }
        }
        match request.execute().await {
            Ok(()) => Ok(()),
            // EEXIST from RTM_NEWADDR means same local, same peer and same prefix on this link.
            Err(e) if raw_errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => {
                let op = format!(
                    "add address {local} peer {peer}/32 on {}",
                    self.link_name(index).await
                );
                Err(NetlinkError::new(op, e))
            }
        }
    }

    /// Removes every IPv4 address on the link (used when a device's addresses change).
    pub async fn flush_addresses(&self, index: u32) -> Result<(), NetlinkError> {
        let messages = match self.ipv4_address_messages(index).await {
            Ok(messages) => messages,
            Err(e) => {
                let op = format!("list addresses on {}", self.link_name(index).await);
                return Err(NetlinkError::new(op, e));
            }
        };
        for message in messages {
            let (local, _) = local_and_peer(&message);
            match self.handle.address().del(message).execute().await {
                Ok(()) => {}
                // Deleting a primary address takes its secondaries with it, so a later delete in
                // this loop may find its address already gone.
                Err(e)
                    if raw_errno(&e)
                        .is_some_and(|n| n == libc::EADDRNOTAVAIL || is_not_found_errno(n)) => {}
                Err(e) => {
                    let local = local.map_or_else(|| "?".to_string(), |ip| ip.to_string());
                    let op = format!("delete address {local} on {}", self.link_name(index).await);
                    return Err(NetlinkError::new(op, e));
                }
            }
        }
        Ok(())
    }

    /// IPv4 addresses on the link as (local, peer) pairs; peer == local when the address is not
    /// point-to-point.
    pub async fn addresses(&self, index: u32) -> Result<Vec<(Ipv4Addr, Ipv4Addr)>, NetlinkError> {
        let messages = match self.ipv4_address_messages(index).await {
            Ok(messages) => messages,
            Err(e) => {
                let op = format!("list addresses on {}", self.link_name(index).await);
                return Err(NetlinkError::new(op, e));
            }
        };
        Ok(messages
            .iter()
            .filter_map(|message| match local_and_peer(message) {
                (Some(IpAddr::V4(local)), Some(IpAddr::V4(peer))) => Some((local, peer)),
                _ => None,
            })
            .collect())
    }

    /// Deletes a link; Ok(()) if already gone.
    pub async fn del_link(&self, index: u32) -> Result<(), NetlinkError> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if raw_errno(&e).is_some_and(is_not_found_errno) => Ok(()),
            Err(e) => {
                let op = format!("delete link {}", self.link_name(index).await);
                Err(NetlinkError::new(op, e))
            }
        }
    }

    /// Every IPv4 address message on the link.
    async fn ipv4_address_messages(
        &self,
        index: u32,
    ) -> Result<Vec<AddressMessage>, rtnetlink::Error> {
        let mut request = self.handle.address().get().set_link_index_filter(index);
        request.message_mut().header.family = AddressFamily::Inet;
        let messages: Vec<AddressMessage> = request.execute().try_collect().await?;
        Ok(messages
            .into_iter()
            .filter(|message| message.header.family == AddressFamily::Inet)
            .collect())
    }

    /// The link's name for an error message, or `ifindex N` if it cannot be found. Only called
    /// once something has already failed, so the happy path costs no extra request.
    async fn link_name(&self, index: u32) -> String {
        let link = self
            .handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_next()
            .await;
        link.ok()
            .flatten()
            .and_then(|link| {
                link.attributes
                    .into_iter()
                    .find_map(|attribute| match attribute {
                        LinkAttribute::IfName(name) => Some(name),
                        _ => None,
                    })
            })
            .unwrap_or_else(|| format!("ifindex {index}"))
    }
}

/// IFA_LOCAL and IFA_ADDRESS of an address message, local falling back to address.
fn local_and_peer(message: &AddressMessage) -> (Option<IpAddr>, Option<IpAddr>) {
    let mut local = None;
    let mut address = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    (local.or(address), address.or(local))
}

#[cfg(test)]
mod tests {
    use super::routes::{describe_route, route_message};
    use super::*;
    use ipnet::IpNet;
    use rtnetlink::packet_core::ErrorMessage;

    fn kernel_error(errno: i32) -> rtnetlink::Error {
        let mut message = ErrorMessage::default();
        message.code = std::num::NonZeroI32::new(-errno);
        rtnetlink::Error::NetlinkError(message)
    }

    #[test]
    fn eexist_message_names_op_and_errno() {
        let dst: IpNet = "10.0.0.0/24".parse().unwrap();
        let gw: IpAddr = "10.86.0.2".parse().unwrap();
        let op = describe_route("add", dst, Some(gw), "dtun0");
        let err = NetlinkError::new(op, kernel_error(libc::EEXIST));
        assert_eq!(
            err.to_string(),
            "failed to add route 10.0.0.0/24 via 10.86.0.2 on dtun0: File exists (os error 17)"
        );
        assert!(err.is_already_exists());
        assert!(!err.is_not_found());
    }

    #[test]
    fn eperm_and_eacces_ask_for_cap_net_admin() {
        for errno in [libc::EPERM, libc::EACCES] {
            let err = NetlinkError::new("delete link dtun0".into(), kernel_error(errno));
            assert_eq!(
                err.to_string(),
                format!("failed to delete link dtun0: dtun needs CAP_NET_ADMIN: {GRANT_NET_ADMIN}")
            );
            assert!(err.is_permission_denied());
            assert_eq!(err.errno(), Some(errno));
        }
    }

    #[test]
    fn not_found_errnos() {
        for errno in [libc::ENOENT, libc::ESRCH, libc::ENODEV] {
            assert!(NetlinkError::new("x".into(), kernel_error(errno)).is_not_found());
        }
        let closed = NetlinkError::new("x".into(), rtnetlink::Error::RequestFailed);
        assert_eq!(closed.errno(), None);
        assert_eq!(
            closed.to_string(),
            "failed to x: the netlink connection is closed"
        );
    }

    #[test]
    fn ipv6_route_with_ipv4_gateway_is_refused_before_the_kernel() {
        let dst: IpNet = "fd00::/64".parse().unwrap();
        assert!(route_message(dst, Some("10.0.0.1".parse().unwrap()), 1, MAIN_TABLE).is_err());
    }
}
