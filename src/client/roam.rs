//! A roaming client's side of a path change: the kernel's address, route and link events
//! ([`PathEvents`]) wake it; when the kernel would now reach the server from another source
//! address (ours went away, another network is preferred), the socket is re-bound; either way
//! the session then tells the server at once (a keepalive), so the server challenges the new
//! address and moves the session there without waiting for our next packet.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use dtun_linux::netlink::PathEvents;
use dtun_linux::udp::Udp;

/// At most one keepalive per this much time for events that did not move the socket (route
/// churn on a busy host, the client's own routes at setup).
const QUIET_PING_EVERY: Duration = Duration::from_secs(2);

/// What the session watches of its path.
pub(super) struct Roam {
    events: Option<PathEvents>,
    /// The firewall mark of the socket (`-route`), so the kernel is asked about its routes.
    mark: Option<u32>,
    /// Never re-bind to these: the tunnel's own addresses (a route to the server through the
    /// tunnel is a misconfiguration, not a new path).
    avoid: Vec<IpAddr>,
    pinged: Option<Instant>,
}

/// What a path change came to.
pub(super) enum Change {
    /// Nothing to tell the server.
    Nothing,
    /// Tell the server (a keepalive from where we are).
    Tell,
    /// The socket now sends from here; tell the server.
    Rebound(SocketAddr),
}

impl Roam {
    pub(super) fn new(mark: Option<u32>, avoid: Vec<IpAddr>) -> Roam {
        let events = match PathEvents::new() {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::warn!(
                    "roaming: cannot watch address and route changes ({e}); the session follows a new address only when the server hears from it"
                );
                None
            }
        };
        Roam {
            events,
            mark,
            avoid,
            pinged: None,
        }
    }

    /// Waits for the next burst of address, route or link events (forever, without a
    /// subscription).
    pub(super) async fn changed(&mut self) {
        match self.events.as_mut() {
            Some(e) => {
                if !e.changed().await {
                    self.events = None;
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }

    /// After a burst: re-binds `udp` if the kernel would send from another address now, and
    /// says whether to tell the server.
    pub(super) async fn follow(&mut self, udp: &Udp, server: SocketAddr, now: Instant) -> Change {
        match udp.rebind_if_moved(server, self.mark, &self.avoid).await {
            Ok(Some(local)) => {
                self.pinged = Some(now);
                return Change::Rebound(local);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("roaming: re-binding the socket to the server failed: {e}"),
        }
        if self
            .pinged
            .is_some_and(|t| now.saturating_duration_since(t) < QUIET_PING_EVERY)
        {
            return Change::Nothing;
        }
        self.pinged = Some(now);
        Change::Tell
    }
}
