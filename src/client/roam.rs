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
/// The path is looked at this often without events too (a lost event, a re-bind that failed
/// for a moment): a socket connect, no packet.
const LOOK_EVERY: Duration = Duration::from_secs(5);
/// ... and this soon after a re-bind failed.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// What the session watches of its path.
pub(super) struct Roam {
    events: Option<PathEvents>,
    /// The firewall mark of the socket (`-route`), so the kernel is asked about its routes.
    mark: Option<u32>,
    /// Never re-bind to these: the tunnel's own addresses (a route to the server through the
    /// tunnel is a misconfiguration, not a new path).
    avoid: Vec<IpAddr>,
    pinged: Option<Instant>,
    /// When to look again without an event.
    look_at: tokio::time::Instant,
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
            look_at: tokio::time::Instant::now() + LOOK_EVERY,
        }
    }

    /// Waits for the next burst of address, route or link events (true), or the time to
    /// look again without one (false).
    pub(super) async fn changed(&mut self) -> bool {
        let look = tokio::time::sleep_until(self.look_at);
        match self.events.as_mut() {
            Some(e) => tokio::select! {
                more = e.changed() => {
                    if !more {
                        self.events = None;
                    }
                    more
                }
                () = look => false,
            },
            None => {
                look.await;
                false
            }
        }
    }

    /// After a burst of events (`event`) or a look without one: re-binds `udp` if the kernel
    /// would send from another address now, and says whether to tell the server (a look that
    /// moved nothing tells it nothing).
    pub(super) async fn follow(
        &mut self,
        udp: &Udp,
        server: SocketAddr,
        event: bool,
        now: Instant,
    ) -> Change {
        self.look_at = tokio::time::Instant::now() + LOOK_EVERY;
        match udp.rebind_if_moved(server, self.mark, &self.avoid).await {
            Ok(Some(local)) => {
                self.pinged = Some(now);
                return Change::Rebound(local);
            }
            Ok(None) => {}
            Err(e) => {
                self.look_at = tokio::time::Instant::now() + RETRY_AFTER;
                tracing::warn!(
                    "roaming: re-binding the socket to the server failed: {e}; trying again"
                );
            }
        }
        if !event
            || self
                .pinged
                .is_some_and(|t| now.saturating_duration_since(t) < QUIET_PING_EVERY)
        {
            return Change::Nothing;
        }
        self.pinged = Some(now);
        Change::Tell
    }
}
