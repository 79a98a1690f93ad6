//! The kernel's news of addresses, routes and links (rtnetlink multicast groups), for a client
//! that roams: any of them may change the path to its server (an address gone, a new default
//! route, Wi-Fi to LTE). What changed is not parsed: the caller asks the kernel again which
//! source address it would use ([`crate::udp::Udp::rebind_if_moved`]).

use std::time::Duration;

use futures::StreamExt;
use rtnetlink::sys::AsyncSocket;

use super::NetlinkError;

/// RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR |
/// RTMGRP_IPV6_ROUTE (linux/rtnetlink.h).
const GROUPS: u32 = 0x1 | 0x10 | 0x40 | 0x100 | 0x400;
/// Events come in bursts (an address goes, its routes follow): one wake-up per burst.
const SETTLE: Duration = Duration::from_millis(50);

/// A subscription to address, route and link events; its connection task ends with it.
pub struct PathEvents {
    messages: futures::channel::mpsc::UnboundedReceiver<(
        rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>,
        rtnetlink::sys::SocketAddr,
    )>,
    task: tokio::task::JoinHandle<()>,
    /// A burst began at this instant and is settling (kept here, so a `changed` dropped
    /// halfway, as in a `select!`, loses nothing).
    pending: Option<tokio::time::Instant>,
    closed: bool,
}

impl PathEvents {
    /// Subscribes in the calling thread's network namespace (needs a tokio runtime).
    pub fn new() -> Result<PathEvents, NetlinkError> {
        let (mut connection, _handle, messages) =
            rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        connection
            .socket_mut()
            .socket_mut()
            .bind(&rtnetlink::sys::SocketAddr::new(0, GROUPS))
            .map_err(NetlinkError::Socket)?;
        let task = tokio::spawn(connection);
        Ok(PathEvents {
            messages,
            task,
            pending: None,
            closed: false,
        })
    }

    /// Waits for the next burst of events, 50 ms (`SETTLE`) after its first. False: the subscription
    /// ended (never again). Cancel-safe: a call dropped before it returns (another branch of
    /// a `select!` won) loses no event; the next call goes on with the burst.
    pub async fn changed(&mut self) -> bool {
        loop {
            if self.closed {
                return false;
            }
            let Some(since) = self.pending else {
                match self.messages.next().await {
                    Some(_) => self.pending = Some(tokio::time::Instant::now()),
                    None => self.closed = true,
                }
                continue;
            };
            tokio::select! {
                () = tokio::time::sleep_until(since + SETTLE) => {
                    self.pending = None;
                    return true;
                }
                m = self.messages.next() => if m.is_none() {
                    self.closed = true;
                    self.pending = None;
                    return true;
                },
            }
        }
    }
}

impl Drop for PathEvents {
    fn drop(&mut self) {
        self.task.abort();
    }
}
